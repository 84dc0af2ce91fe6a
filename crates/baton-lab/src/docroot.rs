//! The sample document root: files of known sizes with deterministic
//! pseudo-random content, so a checksum of a download proves the bytes are right.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// The binary files of the sample docroot and their sizes.
pub const SAMPLE_FILES: &[(&str, u64)] = &[
    ("empty.bin", 0),
    ("1k.bin", 1024),
    ("1m.bin", 1024 * 1024),
    ("64m.bin", 64 * 1024 * 1024),
];

/// The sample `index.html`.
pub const INDEX_HTML: &str = "<!doctype html>
<html><head><title>baton lab</title></head>
<body><h1>baton lab</h1>
<ul>
<li><a href=\"empty.bin\">empty.bin</a> (0 B)</li>
<li><a href=\"1k.bin\">1k.bin</a> (1 KiB)</li>
<li><a href=\"1m.bin\">1m.bin</a> (1 MiB)</li>
<li><a href=\"64m.bin\">64m.bin</a> (64 MiB)</li>
</ul>
</body></html>
";

/// Writes the sample docroot into `dir` (created if missing; existing sample
/// files are overwritten): `index.html`, `empty.bin`, `1k.bin`, `1m.bin`, `64m.bin`.
pub fn sample_docroot(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join("index.html"), INDEX_HTML)?;
    for (name, len) in SAMPLE_FILES {
        write_content(&dir.join(name), name, *len)?;
    }
    Ok(())
}

/// The name of target `i` of [`zipf_docroot`], relative to its root: `t/0000.bin`...
pub fn zipf_target(i: usize) -> String {
    format!("t/{i:04}.bin")
}

/// Writes a docroot for policy benchmarks into `dir` (created if missing):
/// `targets` files [`zipf_target`]`(0)`.. of `size` bytes each, file `name`
/// holding [`sample_content`]`(name, size)`, plus an `index.html` so a lab
/// can serve it. The popularity (Zipf or other) is the client's choice; the
/// files only have to exist and be checkable. Existing files are overwritten,
/// others are left alone.
pub fn zipf_docroot(dir: &Path, targets: usize, size: usize) -> io::Result<()> {
    fs::create_dir_all(dir.join("t"))?;
    fs::write(
        dir.join("index.html"),
        format!(
            "<!doctype html>\n<html><head><title>baton lab</title></head>\n\
             <body><p>{targets} targets of {size} bytes under t/</p></body></html>\n"
        ),
    )?;
    for i in 0..targets {
        let name = zipf_target(i);
        write_content(&dir.join(&name), &name, size as u64)?;
    }
    Ok(())
}

/// Writes `sample_content(name, len)` to `path`, a chunk at a time.
fn write_content(path: &Path, name: &str, len: u64) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 16, File::create(path)?);
    let mut rng = XorShift::for_name(name);
    let mut left = len;
    let mut chunk = [0u8; 1 << 16];
    while left > 0 {
        rng.fill(&mut chunk);
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        out.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    out.into_inner()
        .map_err(io::IntoInnerError::into_error)?
        .sync_all()
}

/// The content `sample_docroot` writes for a file called `name` of `len` bytes.
pub fn sample_content(name: &str, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    XorShift::for_name(name).fill(&mut v);
    v
}

/// xorshift64*: not cryptographic, only reproducible.
struct XorShift(u64);

impl XorShift {
    fn for_name(name: &str) -> Self {
        // FNV-1a of the name; never zero, which xorshift could not leave.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        XorShift(h | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fills `buf` with the stream; the stream is the same however `buf` is sized,
    /// as long as every call but the last uses a multiple of 8 bytes.
    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    fn temp(tag: &str) -> TempDir {
        TempDir(std::env::temp_dir().join(format!("baton-lab-{tag}-{}", std::process::id())))
    }

    #[test]
    fn sizes_and_content_are_as_promised() {
        let d = temp("sizes");
        sample_docroot(&d.0).expect("write docroot");
        for (name, len) in SAMPLE_FILES {
            let bytes = fs::read(d.0.join(name)).expect("read");
            assert_eq!(bytes.len() as u64, *len, "{name}");
            let want = sample_content(name, bytes.len());
            assert!(bytes == want, "{name} differs from sample_content");
        }
        let index = fs::read_to_string(d.0.join("index.html")).expect("index");
        assert!(index.contains("64m.bin"));
    }

    #[test]
    fn zipf_docroot_holds_every_target_with_its_own_content() {
        let d = temp("zipf");
        zipf_docroot(&d.0, 12, 3000).expect("write zipf docroot");
        assert_eq!(zipf_target(7), "t/0007.bin");
        let mut names: Vec<String> = fs::read_dir(d.0.join("t"))
            .expect("t/")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 12);
        assert_eq!(names.first().map(String::as_str), Some("0000.bin"));
        assert_eq!(names.last().map(String::as_str), Some("0011.bin"));
        let first = fs::read(d.0.join("t/0000.bin")).expect("t/0000.bin");
        let last = fs::read(d.0.join("t/0011.bin")).expect("t/0011.bin");
        assert!(first == sample_content("t/0000.bin", 3000));
        assert!(last == sample_content("t/0011.bin", 3000));
        assert_ne!(first, last, "targets must be told apart by their bytes");
        assert!(d.0.join("index.html").is_file(), "a lab needs / to answer");
    }

    #[test]
    fn content_is_deterministic_and_differs_per_file() {
        let (a, b) = (temp("det-a"), temp("det-b"));
        sample_docroot(&a.0).expect("a");
        sample_docroot(&b.0).expect("b");
        for (name, _) in SAMPLE_FILES {
            assert!(
                fs::read(a.0.join(name)).ok() == fs::read(b.0.join(name)).ok(),
                "{name}"
            );
        }
        let one_k = fs::read(a.0.join("1k.bin")).expect("1k");
        let one_m = fs::read(a.0.join("1m.bin")).expect("1m");
        assert_ne!(one_k[..], one_m[..1024], "files must not share a prefix");
        // Not a constant fill: a corrupted range would go unnoticed otherwise.
        let distinct: std::collections::BTreeSet<u8> = one_k.iter().copied().collect();
        assert!(distinct.len() > 200);
    }
}
