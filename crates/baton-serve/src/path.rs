//! Request-path handling: percent-decoding and lexical normalization.
//!
//! Pure functions over untrusted bytes; nothing here touches the file system. The result of
//! [`normalize`] is a relative path made only of ordinary components (no `..`, no `.`, no root,
//! no NUL), so joining it to the root can at worst reach the root itself. Symlinks are the
//! file-system layer's concern: it canonicalizes and checks the prefix again.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Why a request path was refused (answered with 400 Bad Request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadPath {
    /// Not an origin-form path (`*`, authority form, empty).
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// A NUL byte, raw or `%00`.
    Nul,
    /// More `..` segments than there are directories above them.
    Escapes,
}

/// A request path reduced to the components the file system will see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CleanPath {
    /// Ordinary components, decoded, in order; empty for the root.
    segments: Vec<Vec<u8>>,
    /// The decoded path ended with `/`, i.e. the client asked for a directory.
    pub(crate) trailing_slash: bool,
}

impl CleanPath {
    /// The path relative to the served root.
    pub(crate) fn relative(&self) -> PathBuf {
        self.segments.iter().map(|s| OsStr::from_bytes(s)).collect()
    }

    /// The absolute URL path of this directory, percent-encoded, ending in `/`. Built from the
    /// normalized segments (never the raw request), so it cannot start with `//` and turn into
    /// a redirect to another host.
    pub(crate) fn directory_location(&self) -> String {
        let mut out = String::from("/");
        for seg in &self.segments {
            encode_segment(seg, &mut out);
            out.push('/');
        }
        out
    }
}

/// Decodes `%XX` escapes. The whole path is decoded before it is split, as nginx does, so
/// `%2F` separates segments and `%2e%2e` is a `..` segment subject to the same check.
pub(crate) fn percent_decode(raw: &str) -> Result<Vec<u8>, BadPath> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        let decoded = if b == b'%' {
            let hi = bytes.next().and_then(hex_value).ok_or(BadPath::BadEscape)?;
            let lo = bytes.next().and_then(hex_value).ok_or(BadPath::BadEscape)?;
            (hi << 4) | lo
        } else {
            b
        };
        if decoded == 0 {
            return Err(BadPath::Nul);
        }
        out.push(decoded);
    }
    Ok(out)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes and normalizes the path of a request URI (the query is not part of it).
pub(crate) fn normalize(raw_path: &str) -> Result<CleanPath, BadPath> {
    if !raw_path.starts_with('/') {
        return Err(BadPath::NotAbsolute);
    }
    let decoded = percent_decode(raw_path)?;
    let mut segments: Vec<Vec<u8>> = Vec::new();
    for seg in decoded.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                // Going above the root is refused outright rather than clamped, so that a
                // probing client learns nothing from the answer.
                if segments.pop().is_none() {
                    return Err(BadPath::Escapes);
                }
            }
            _ => segments.push(seg.to_vec()),
        }
    }
    // `/a/..` names a directory even without a final slash.
    let trailing_slash =
        decoded.ends_with(b"/") || decoded.ends_with(b"/.") || decoded.ends_with(b"/..");
    Ok(CleanPath {
        segments,
        trailing_slash,
    })
}

fn encode_segment(seg: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in seg {
        let keep = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        if keep {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn rel(p: &str) -> Result<PathBuf, BadPath> {
        normalize(p).map(|c| c.relative())
    }

    #[test]
    fn plain_paths_map_to_relative_components() {
        assert_eq!(rel("/"), Ok(PathBuf::new()));
        assert_eq!(rel("/a/b.txt"), Ok(Path::new("a/b.txt").to_path_buf()));
        assert_eq!(rel("//a///b/./c"), Ok(Path::new("a/b/c").to_path_buf()));
        assert_eq!(rel("/a/../b"), Ok(Path::new("b").to_path_buf()));
    }

    #[test]
    fn traversal_above_root_is_refused_in_every_spelling() {
        for p in [
            "/..",
            "/../etc/passwd",
            "/a/../../etc/passwd",
            "/%2e%2e/%2e%2e/etc/passwd",
            "/%2E%2E%2Fetc%2Fpasswd",
            "/a%2f..%2f..%2fetc",
            "/./../x",
        ] {
            assert_eq!(rel(p), Err(BadPath::Escapes), "{p}");
        }
    }

    #[test]
    fn nul_and_bad_escapes_are_refused() {
        assert_eq!(rel("/a%00b"), Err(BadPath::Nul));
        assert_eq!(rel("/a%0"), Err(BadPath::BadEscape));
        assert_eq!(rel("/a%zz"), Err(BadPath::BadEscape));
        assert_eq!(rel("*"), Err(BadPath::NotAbsolute));
        assert_eq!(rel(""), Err(BadPath::NotAbsolute));
    }

    #[test]
    fn escapes_decode_to_bytes() {
        assert_eq!(
            rel("/hello%20world%C3%A9.txt"),
            Ok(PathBuf::from("hello world\u{e9}.txt"))
        );
        // Dots that are not a whole segment are ordinary names.
        assert_eq!(rel("/...").map(|p| p.into_os_string()), Ok("...".into()));
        assert_eq!(rel("/..a").map(|p| p.into_os_string()), Ok("..a".into()));
    }

    #[test]
    fn trailing_slash_is_recorded() {
        assert!(normalize("/dir/").is_ok_and(|c| c.trailing_slash));
        assert!(normalize("/dir/x/..").is_ok_and(|c| c.trailing_slash));
        assert!(normalize("/dir").is_ok_and(|c| !c.trailing_slash));
    }

    #[test]
    fn directory_location_cannot_point_to_another_host() {
        let loc = normalize("//evil.example/x").map(|c| c.directory_location());
        assert_eq!(loc, Ok("/evil.example/x/".to_owned()));
        let loc = normalize("/a b/%2F/c").map(|c| c.directory_location());
        assert_eq!(loc, Ok("/a%20b/c/".to_owned()));
    }
}
