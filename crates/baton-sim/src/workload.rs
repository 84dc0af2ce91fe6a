//! Workloads: a generated Zipf stream, or a trace (Common Log Format or
//! `target,size` lines).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use serde::Serialize;

use crate::rng::Rng;
use crate::SimError;

/// A deterministic hasher for maps: behaviour must not depend on a
/// per-process seed (we never iterate these maps, but stay on the safe side).
pub(crate) type FixedState = BuildHasherDefault<std::hash::DefaultHasher>;

/// How target sizes are drawn for a generated workload (bytes; every draw
/// is clamped to [1, `max`] where a `max` applies).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SizeDist {
    /// Every target has this size.
    Fixed {
        /// Bytes.
        bytes: u64,
    },
    /// `exp(mu + sigma * N(0,1))`. Barford and Crovella's fit of the body of
    /// web file sizes (SURGE, SIGMETRICS 1998) is mu = 9.357, sigma = 1.318:
    /// median 11.6 KB, mean 27.6 KB.
    LogNormal {
        /// Mean of the logarithm.
        mu: f64,
        /// Standard deviation of the logarithm.
        sigma: f64,
        /// Upper clamp in bytes.
        max: u64,
    },
    /// `min / U^(1/alpha)`, heavy-tailed (SURGE's tail: alpha = 1.1,
    /// min = 133 KB).
    Pareto {
        /// Tail index.
        alpha: f64,
        /// Smallest size, bytes.
        min: u64,
        /// Upper clamp in bytes.
        max: u64,
    },
}

impl Default for SizeDist {
    /// SURGE's lognormal body, clamped at 1 MiB so that one huge file does
    /// not dominate a small simulated run.
    fn default() -> Self {
        SizeDist::LogNormal {
            mu: 9.357,
            sigma: 1.318,
            max: 1 << 20,
        }
    }
}

impl SizeDist {
    pub(crate) fn validate(&self) -> Result<(), SimError> {
        let ok = match *self {
            SizeDist::Fixed { bytes } => bytes > 0,
            SizeDist::LogNormal { mu, sigma, max } => {
                mu.is_finite() && sigma.is_finite() && sigma >= 0.0 && max > 0
            }
            SizeDist::Pareto { alpha, min, max } => {
                alpha.is_finite() && alpha > 0.0 && min > 0 && max >= min
            }
        };
        if ok {
            Ok(())
        } else {
            Err(SimError::Config(format!("bad size distribution {self:?}")))
        }
    }

    fn draw(&self, rng: &mut Rng) -> u64 {
        let x = match *self {
            SizeDist::Fixed { bytes } => return bytes,
            SizeDist::LogNormal { mu, sigma, max } => {
                (mu + sigma * rng.normal()).exp().min(max as f64)
            }
            SizeDist::Pareto { alpha, min, max } => {
                (min as f64 / rng.unit_open0().powf(1.0 / alpha)).min(max as f64)
            }
        };
        // Finite and within [0, max] here; the cast saturates anyway.
        (x.round() as u64).max(1)
    }
}

/// A parsed trace: one entry per request, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trace {
    /// (target, bytes) per request.
    pub requests: Vec<(String, u64)>,
    /// Well-formed log lines left out: methods other than GET, statuses
    /// other than 200.
    pub skipped: usize,
}

/// Parses a trace. Each line is either
/// - `target,size` (size in bytes; the target may not contain a comma), or
/// - a Common Log Format line:
///   `host ident user [date] "GET /path HTTP/1.0" status bytes`
///   (Combined Log Format's extra fields are ignored); only `GET`s answered
///   `200` are kept, the rest counted in [`Trace::skipped`]; bytes `-` is 0.
///
/// Empty lines and lines starting with `#` are ignored. Any other line is an
/// error naming its number.
pub fn parse_trace(text: &str) -> Result<Trace, SimError> {
    let mut trace = Trace::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: &str| SimError::Trace {
            line: i + 1,
            reason: reason.to_owned(),
        };
        if line.contains('"') {
            match parse_clf(line).map_err(bad)? {
                Some(r) => trace.requests.push(r),
                None => trace.skipped += 1,
            }
        } else {
            let (target, size) = line
                .rsplit_once(',')
                .ok_or_else(|| bad("neither `target,size` nor Common Log Format"))?;
            let size = size
                .trim()
                .parse::<u64>()
                .map_err(|_| bad("size is not a byte count"))?;
            let target = target.trim();
            if target.is_empty() {
                return Err(bad("empty target"));
            }
            trace.requests.push((target.to_owned(), size));
        }
    }
    Ok(trace)
}

/// One CLF line: `Ok(None)` for a well-formed line we do not replay.
fn parse_clf(line: &str) -> Result<Option<(String, u64)>, &'static str> {
    let (_, rest) = line.split_once('"').ok_or("no request line")?;
    let (request, rest) = rest.split_once('"').ok_or("unterminated request line")?;
    let mut fields = rest.split_ascii_whitespace();
    let status = fields.next().ok_or("no status")?;
    let bytes = fields.next().ok_or("no byte count")?;
    let status: u16 = status.parse().map_err(|_| "status is not a number")?;
    let bytes: u64 = if bytes == "-" {
        0
    } else {
        bytes.parse().map_err(|_| "byte count is not a number")?
    };
    let mut parts = request.split_ascii_whitespace();
    let method = parts.next().unwrap_or("");
    let Some(target) = parts.next() else {
        // Garbage request lines ("-", scanners) are logged with a 400: skip.
        return Ok(None);
    };
    if method != "GET" || status != 200 {
        return Ok(None);
    }
    Ok(Some((target.to_owned(), bytes)))
}

/// The simulator's view of a workload: interned targets with their sizes,
/// and the request stream as target numbers.
#[derive(Debug, Clone)]
pub(crate) struct Stream {
    pub(crate) names: Vec<String>,
    pub(crate) sizes: Vec<u64>,
    pub(crate) requests: Vec<u32>,
}

impl Stream {
    /// The sum of the sizes of all distinct targets.
    pub(crate) fn working_set(&self) -> u64 {
        self.sizes.iter().sum()
    }

    /// A trace replayed `len` requests long (cycling if it is shorter). A
    /// target's size is the largest byte count the trace shows for it (a
    /// cache holds the whole object).
    pub(crate) fn from_trace(trace: &Trace, len: Option<usize>) -> Result<Self, SimError> {
        if trace.requests.is_empty() {
            return Err(SimError::Config(
                "the trace has no request to replay".into(),
            ));
        }
        let mut ids: HashMap<&str, u32, FixedState> = HashMap::default();
        let mut names = Vec::new();
        let mut sizes: Vec<u64> = Vec::new();
        let mut once = Vec::with_capacity(trace.requests.len());
        for (target, size) in &trace.requests {
            let id = *ids.entry(target.as_str()).or_insert_with(|| {
                names.push(target.clone());
                sizes.push(0);
                (names.len() - 1) as u32
            });
            if let Some(s) = sizes.get_mut(id as usize) {
                *s = (*s).max(*size);
            }
            once.push(id);
        }
        let len = len.unwrap_or(once.len());
        let requests = once.iter().copied().cycle().take(len).collect();
        Ok(Self {
            names,
            sizes,
            requests,
        })
    }

    /// `len` requests over `targets` targets, target `i` (0-based) asked
    /// with probability proportional to `1 / (i+1)^alpha`, sizes from
    /// `sizes`. Sizes are drawn first, then the stream, from one seeded
    /// generator, so popularity and size are independent.
    pub(crate) fn zipf(
        alpha: f64,
        targets: usize,
        sizes: &SizeDist,
        len: usize,
        seed: u64,
    ) -> Result<Self, SimError> {
        if !(alpha.is_finite() && alpha >= 0.0) {
            return Err(SimError::Config(format!(
                "zipf alpha must be >= 0, got {alpha}"
            )));
        }
        if targets == 0 || targets > u32::MAX as usize {
            return Err(SimError::Config(format!(
                "targets must be in 1..2^32, got {targets}"
            )));
        }
        sizes.validate()?;
        let mut rng = Rng::new(seed);
        let names = (0..targets).map(|i| format!("/t/{i}")).collect();
        let sizes: Vec<u64> = (0..targets).map(|_| sizes.draw(&mut rng)).collect();
        let mut cdf = Vec::with_capacity(targets);
        let mut acc = 0.0;
        for i in 0..targets {
            acc += 1.0 / ((i + 1) as f64).powf(alpha);
            cdf.push(acc);
        }
        let requests = (0..len)
            .map(|_| {
                let u = rng.unit() * acc;
                // First index whose cumulative weight exceeds u.
                cdf.partition_point(|&c| c <= u).min(targets - 1) as u32
            })
            .collect();
        Ok(Self {
            names,
            sizes,
            requests,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_formats() {
        let text = r#"
# comment
/a.html,1000
/b.gif, 20
198.18.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET /c.html HTTP/1.0" 200 2326
198.18.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /d HTTP/1.1" 200 - "http://x/" "curl"
198.18.0.1 - - [10/Oct/2000:13:55:36 -0700] "POST /c.html HTTP/1.0" 200 10
198.18.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET /c.html HTTP/1.0" 304 0
198.18.0.1 - - [10/Oct/2000:13:55:36 -0700] "-" 400 0
"#;
        let t = parse_trace(text).unwrap();
        assert_eq!(
            t.requests,
            vec![
                ("/a.html".to_owned(), 1000),
                ("/b.gif".to_owned(), 20),
                ("/c.html".to_owned(), 2326),
                ("/d".to_owned(), 0),
            ]
        );
        assert_eq!(t.skipped, 3);
    }

    #[test]
    fn malformed_lines_are_named() {
        let e = parse_trace("/a,1\n/b,xyz\n").unwrap_err();
        assert_eq!(e.to_string(), "trace line 2: size is not a byte count");
        let e = parse_trace("just words\n").unwrap_err();
        assert!(e.to_string().starts_with("trace line 1:"), "{e}");
        let e = parse_trace("h - - [d] \"GET / HTTP/1.0\" ok 1\n").unwrap_err();
        assert_eq!(e.to_string(), "trace line 1: status is not a number");
    }

    #[test]
    fn trace_stream_interns_and_takes_max_size() {
        let t = parse_trace("/a,10\n/b,5\n/a,30\n").unwrap();
        let s = Stream::from_trace(&t, Some(5)).unwrap();
        assert_eq!(s.names, ["/a", "/b"]);
        assert_eq!(s.sizes, [30, 5]);
        assert_eq!(s.requests, [0, 1, 0, 0, 1]);
        assert_eq!(s.working_set(), 35);
    }

    #[test]
    fn zipf_follows_its_law() {
        let s = Stream::zipf(1.0, 100, &SizeDist::Fixed { bytes: 7 }, 200_000, 1).unwrap();
        let mut counts = [0u32; 100];
        for &r in &s.requests {
            counts[r as usize] += 1;
        }
        let h100: f64 = (1..=100).map(|i| 1.0 / i as f64).sum();
        for (i, &c) in counts.iter().enumerate().take(5) {
            let expect = 200_000.0 / h100 / (i + 1) as f64;
            assert!(
                (f64::from(c) - expect).abs() < 0.03 * expect,
                "rank {i}: {c} vs {expect}"
            );
        }
        assert_eq!(s.working_set(), 700);
    }

    #[test]
    fn size_distributions_are_sane() {
        let mut rng = Rng::new(3);
        let d = SizeDist::default();
        let mut xs: Vec<u64> = (0..20_001).map(|_| d.draw(&mut rng)).collect();
        xs.sort_unstable();
        let median = xs[10_000] as f64;
        assert!((median / 11_590.0 - 1.0).abs() < 0.05, "median {median}");
        assert!(xs.iter().all(|&x| (1..=1 << 20).contains(&x)));
        let p = SizeDist::Pareto {
            alpha: 1.1,
            min: 1000,
            max: 10_000_000,
        };
        assert!((0..1000).all(|_| (1000..=10_000_000).contains(&p.draw(&mut rng))));
    }
}
