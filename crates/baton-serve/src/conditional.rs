//! Validators (ETag, Last-Modified), conditional requests and byte ranges (RFC 9110 §8.8, §13,
//! §14).
//!
//! Pure functions over header values the client sent; a value that does not parse is treated
//! as absent, which always leads to the full, unconditional answer and never to an error.
//! Multi-range requests are answered with the whole representation (200), which RFC 9110
//! allows and which spares us `multipart/byteranges`.
//!
//! Public so that other servers of in-memory or proxied objects (the caching back-end) answer
//! conditionals and ranges exactly as the file server does.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The validators of one representation: a file version, or an object copied from an origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validators {
    /// For a file, the weak tag `W/"<size>-<mtime s>.<mtime ns>"` in hex: weak because a file
    /// can change within one timestamp tick without changing size. `None` when an origin sent
    /// no `ETag`; then only `If-None-Match: *` matches.
    etag: Option<String>,
    /// Modification time in whole seconds since the epoch (HTTP dates have no finer unit);
    /// `None` for times before the epoch, which then never validate.
    mtime_secs: Option<u64>,
}

impl Validators {
    /// The validators of a file of `len` bytes last modified at `mtime`.
    pub fn new(len: u64, mtime: Option<SystemTime>) -> Self {
        let since_epoch = mtime.and_then(|t| t.duration_since(UNIX_EPOCH).ok());
        let (secs, nanos) = since_epoch.map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()));
        Validators {
            etag: Some(format!("W/\"{len:x}-{secs:x}.{nanos:x}\"")),
            mtime_secs: since_epoch.map(|d| d.as_secs()),
        }
    }

    /// The validators an origin sent with a representation (`ETag`, `Last-Modified` header
    /// values). An unparsable date counts as absent.
    pub fn from_headers(etag: Option<&str>, last_modified: Option<&str>) -> Self {
        Validators {
            etag: etag.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()),
            mtime_secs: last_modified.and_then(http_date_secs),
        }
    }

    /// The entity tag, as it goes into an `ETag` header.
    pub fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }

    /// The `Last-Modified` value, if the representation has a representable time.
    pub fn last_modified(&self) -> Option<String> {
        self.mtime_secs
            .map(|s| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s)))
    }

    /// The opaque part of our tag, quotes included, as compared by the weak comparison.
    fn opaque(&self) -> Option<&str> {
        let tag = self.etag.as_deref()?;
        Some(tag.strip_prefix("W/").unwrap_or(tag))
    }
}

fn http_date_secs(value: &str) -> Option<u64> {
    let t = httpdate::parse_http_date(value.trim()).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Whether a GET/HEAD should be answered with 304 Not Modified (RFC 9110 §13.2.2: If-None-Match
/// wins over If-Modified-Since when both are present).
pub fn not_modified(
    v: &Validators,
    if_none_match: Option<&str>,
    if_modified_since: Option<&str>,
) -> bool {
    if let Some(inm) = if_none_match {
        return inm
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || Some(tag.strip_prefix("W/").unwrap_or(tag)) == v.opaque());
    }
    match (if_modified_since.and_then(http_date_secs), v.mtime_secs) {
        (Some(since), Some(mtime)) => mtime <= since,
        _ => false,
    }
}

/// What part of the representation to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangePlan {
    /// 200 with the whole file.
    Full,
    /// 206 with `len` bytes from `start`; `len >= 1` and the range lies inside the file.
    Partial { start: u64, len: u64 },
    /// 416 with `Content-Range: bytes */<file length>`.
    Unsatisfiable,
}

/// Interprets `Range` (and `If-Range`) for a GET of a representation of `file_len` bytes.
/// An `If-Range` entity tag never matches (see the comment inside): the answer is then the
/// whole representation, which is always allowed.
pub fn range_plan(
    range: Option<&str>,
    if_range: Option<&str>,
    v: &Validators,
    file_len: u64,
) -> RangePlan {
    let Some(range) = range else {
        return RangePlan::Full;
    };
    if let Some(if_range) = if_range {
        // Entity tags in If-Range need the strong comparison, which a weak tag never passes
        // (and an origin's strong tag is not trusted to be byte-exact for our copy); a date
        // must equal Last-Modified exactly.
        let if_range = if_range.trim();
        let is_tag = if_range.starts_with('"') || if_range.starts_with("W/");
        let same_date = v.mtime_secs.is_some() && http_date_secs(if_range) == v.mtime_secs;
        if is_tag || !same_date {
            return RangePlan::Full;
        }
    }
    parse_single_range(range, file_len)
}

fn parse_single_range(value: &str, file_len: u64) -> RangePlan {
    let value = value.trim();
    let Some((unit, spec)) = value.split_once('=') else {
        return RangePlan::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangePlan::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangePlan::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range: the last `n` bytes.
        let Some(n) = digits(last) else {
            return RangePlan::Full;
        };
        if n == 0 || file_len == 0 {
            return RangePlan::Unsatisfiable;
        }
        let len = n.min(file_len);
        return RangePlan::Partial {
            start: file_len - len,
            len,
        };
    }
    let Some(start) = digits(first) else {
        return RangePlan::Full;
    };
    let end = if last.is_empty() {
        None
    } else {
        match digits(last) {
            Some(end) if end >= start => Some(end),
            // `a-b` with b < a, or garbage: an invalid range is ignored (RFC 9110 §14.2).
            _ => return RangePlan::Full,
        }
    };
    if start >= file_len {
        return RangePlan::Unsatisfiable;
    }
    let last_byte = end.map_or(file_len - 1, |e| e.min(file_len - 1));
    RangePlan::Partial {
        start,
        len: last_byte - start + 1,
    }
}

/// A non-empty run of ASCII digits; values beyond `u64` saturate, which keeps their meaning
/// ("past the end of any file").
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> Validators {
        Validators::new(1000, Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5)))
    }

    fn plan(range: &str, len: u64) -> RangePlan {
        range_plan(Some(range), None, &v(), len)
    }

    #[test]
    fn single_ranges() {
        use RangePlan::*;
        assert_eq!(plan("bytes=0-99", 1000), Partial { start: 0, len: 100 });
        assert_eq!(
            plan("bytes=10-", 1000),
            Partial {
                start: 10,
                len: 990
            }
        );
        assert_eq!(
            plan("bytes=-100", 1000),
            Partial {
                start: 900,
                len: 100
            }
        );
        assert_eq!(
            plan("bytes=-5000", 1000),
            Partial {
                start: 0,
                len: 1000
            }
        );
        assert_eq!(
            plan("bytes=990-5000", 1000),
            Partial {
                start: 990,
                len: 10
            }
        );
        assert_eq!(plan("BYTES = 5-5", 1000), Partial { start: 5, len: 1 });
        assert_eq!(
            plan("bytes=0-99999999999999999999999", 1000),
            Partial {
                start: 0,
                len: 1000
            }
        );
    }

    #[test]
    fn unsatisfiable_ranges() {
        use RangePlan::*;
        assert_eq!(plan("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(plan("bytes=5000-6000", 1000), Unsatisfiable);
        assert_eq!(plan("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(plan("bytes=0-", 0), Unsatisfiable);
        assert_eq!(plan("bytes=-1", 0), Unsatisfiable);
        assert_eq!(plan("bytes=99999999999999999999999-", 1000), Unsatisfiable);
    }

    #[test]
    fn invalid_or_multi_ranges_serve_the_whole_file() {
        for r in [
            "bytes=5-1",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=-",
            "bytes=1",
            "items=0-1",
            "bytes=0-1,5-6",
            "0-1",
            "",
        ] {
            assert_eq!(plan(r, 1000), RangePlan::Full, "{r:?}");
        }
    }

    #[test]
    fn if_range_only_honours_an_exact_date() {
        let v = v();
        let lm = v.last_modified();
        let full = RangePlan::Full;
        let part = RangePlan::Partial { start: 0, len: 1 };
        assert_eq!(range_plan(Some("bytes=0-0"), lm.as_deref(), &v, 1000), part);
        assert_eq!(range_plan(Some("bytes=0-0"), v.etag(), &v, 1000), full);
        let other = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(range_plan(Some("bytes=0-0"), Some(other), &v, 1000), full);
        assert_eq!(range_plan(Some("bytes=0-0"), Some("junk"), &v, 1000), full);
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let v = v();
        let etag = v.etag().unwrap_or_default().to_owned();
        let strong = etag.trim_start_matches("W/").to_owned();
        assert!(not_modified(&v, Some(&etag), None));
        assert!(not_modified(&v, Some(&strong), None));
        assert!(not_modified(&v, Some(&format!("\"x\", {etag}")), None));
        assert!(not_modified(&v, Some("*"), None));
        assert!(!not_modified(&v, Some("\"other\""), None));
        // If-None-Match takes precedence over a matching If-Modified-Since.
        assert!(!not_modified(
            &v,
            Some("\"other\""),
            v.last_modified().as_deref()
        ));
    }

    #[test]
    fn if_modified_since_compares_whole_seconds() {
        let v = v();
        assert!(not_modified(&v, None, v.last_modified().as_deref()));
        assert!(not_modified(
            &v,
            None,
            Some("Fri, 01 Jan 2100 00:00:00 GMT")
        ));
        assert!(!not_modified(
            &v,
            None,
            Some("Sun, 06 Nov 1994 08:49:37 GMT")
        ));
        assert!(!not_modified(&v, None, Some("not a date")));
        // The obsolete formats are accepted too (RFC 9110 §5.6.7).
        assert!(not_modified(&v, None, Some("Fri Jan  1 00:00:00 2100")));
    }

    #[test]
    fn etag_changes_with_size_and_mtime() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        let a = Validators::new(1, Some(t));
        assert_ne!(a.etag(), Validators::new(2, Some(t)).etag());
        assert_ne!(
            a.etag(),
            Validators::new(1, Some(t + Duration::from_nanos(1))).etag()
        );
        assert!(a.etag().is_some_and(|e| e.starts_with("W/\"")));
        assert_eq!(
            Validators::new(1, Some(UNIX_EPOCH - Duration::from_secs(1))).last_modified(),
            None
        );
    }

    #[test]
    fn origin_validators_without_a_tag_match_only_the_wildcard() {
        let lm = "Tue, 14 Nov 2023 22:13:20 GMT";
        let v = Validators::from_headers(None, Some(lm));
        assert_eq!(v.etag(), None);
        assert!(!not_modified(&v, Some(","), None));
        assert!(!not_modified(&v, Some("\"\""), None));
        assert!(not_modified(&v, Some("*"), None));
        assert!(not_modified(&v, None, Some(lm)));
        assert_eq!(v.last_modified().as_deref(), Some(lm));
        let tagged = Validators::from_headers(Some(" \"abc\" "), None);
        assert!(not_modified(&tagged, Some("W/\"abc\""), None));
        assert!(!not_modified(&tagged, Some("\"abd\""), None));
        assert!(!not_modified(&tagged, None, Some(lm)));
        assert_eq!(Validators::from_headers(Some(""), None).etag(), None);
    }
}
