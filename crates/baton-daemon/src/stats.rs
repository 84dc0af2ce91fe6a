//! Counters and latency samples the daemons expose on their admin endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Latency samples in microseconds, kept in HDR histograms (the
/// `hdrhistogram` crate): 3 significant digits (values below 2048 µs are
/// exact, larger ones within 0.1%), from 0 up to [`Samples::HIGHEST_US`];
/// a larger value counts as that bound (it saturates, never panics).
///
/// Recording takes a mutex for one counter increment; the memory is fixed
/// (about 140 KiB per histogram, two per `Samples`), whatever the count.
///
/// Recent samples only: the histogram being written is set aside once it
/// holds `cap` samples, and the one set aside before it is dropped, so a
/// [`summary`](Samples::summary) covers the newest `cap` to `2 * cap`
/// samples (all of them until `2 * cap` were recorded).
#[derive(Debug)]
pub struct Samples {
    inner: Mutex<Window>,
    /// Every sample since start, in seconds, for `/metrics` (never cleared).
    cumulative: prometheus_client::metrics::histogram::Histogram,
}

/// The two halves of the window: `cur` is written, `prev` only read.
#[derive(Debug)]
struct Window {
    cur: Part,
    prev: Part,
    cap: u64,
}

/// A histogram and the exact largest value recorded in it (the histogram
/// itself only knows the top of that value's bucket).
#[derive(Debug, Clone)]
struct Part {
    hist: Histogram<u64>,
    max: u64,
}

impl Part {
    fn new() -> Part {
        Part {
            hist: Histogram::new_with_bounds(1, Samples::HIGHEST_US, SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid"),
            max: 0,
        }
    }

    fn reset(&mut self) {
        self.hist.reset();
        self.max = 0;
    }
}

/// Precision of the latency histograms: 3 significant digits.
const SIGNIFICANT_DIGITS: u8 = 3;

/// Percentiles of a set of samples, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Samples summarised.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Samples {
    /// The largest value told apart: 60 s. Larger samples count as this.
    pub const HIGHEST_US: u64 = 60_000_000;

    /// Summarises the newest `cap` to `2 * cap` samples (see [`Samples`]);
    /// `cap` below 1 counts as 1.
    pub fn new(cap: usize) -> Self {
        Samples {
            inner: Mutex::new(Window {
                cur: Part::new(),
                prev: Part::new(),
                cap: u64::try_from(cap.max(1)).unwrap_or(u64::MAX),
            }),
            // 10 µs to about 10 s, doubling.
            cumulative: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1e-5, 2.0, 21),
            ),
        }
    }

    /// Every sample since start, in seconds (for `/metrics`).
    pub fn cumulative(&self) -> &prometheus_client::metrics::histogram::Histogram {
        &self.cumulative
    }

    /// Records one sample in microseconds (above [`Self::HIGHEST_US`]: as that).
    pub fn record_us(&self, us: u64) {
        let us = us.min(Self::HIGHEST_US);
        self.cumulative.observe(us as f64 / 1e6);
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        w.cur.hist.saturating_record(us);
        w.cur.max = w.cur.max.max(us);
        if w.cur.hist.len() >= w.cap {
            let w = &mut *w;
            std::mem::swap(&mut w.cur, &mut w.prev);
            w.cur.reset();
        }
    }

    /// Forgets everything (used between benchmark phases).
    pub fn clear(&self) {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        w.cur.reset();
        w.prev.reset();
    }

    /// Percentiles (nearest rank, to the histogram's precision) of the
    /// samples in the window.
    pub fn summary(&self) -> Summary {
        // Copied under the lock, merged outside it: recording never waits
        // for more than two copies.
        let (mut both, cur) = {
            let w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            (w.prev.clone(), w.cur.clone())
        };
        // Same bounds on both sides: adding cannot fail.
        let _ = both.hist.add(&cur.hist);
        summarize_hist(&both.hist, both.max.max(cur.max))
    }
}

/// Percentiles of `h`, whose exact largest value is `max`: a percentile is
/// the top of its bucket, never above `max`.
fn summarize_hist(h: &Histogram<u64>, max: u64) -> Summary {
    if h.is_empty() {
        return Summary::default();
    }
    let at = |q: f64| h.value_at_quantile(q).min(max) as f64;
    Summary {
        count: usize::try_from(h.len()).unwrap_or(usize::MAX),
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: max as f64,
    }
}

/// Exact percentiles (nearest rank) of `v`, which is sorted in place: for a
/// complete set of samples held in memory (the benchmarks' client side).
pub fn summarize(v: &mut [u32]) -> Summary {
    if v.is_empty() {
        return Summary::default();
    }
    v.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        f64::from(v[rank - 1])
    };
    Summary {
        count: v.len(),
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: at(1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `got` is within `rel` of `want`, relatively.
    fn close(got: f64, want: f64, rel: f64) -> bool {
        (got - want).abs() <= want.abs() * rel
    }

    fn fields(s: &Summary) -> (usize, f64, f64, f64, f64) {
        (s.count, s.p50, s.p90, s.p99, s.max)
    }

    #[test]
    fn percentiles_nearest_rank() {
        let mut v: Vec<u32> = (1..=100).rev().collect();
        let s = summarize(&mut v);
        assert_eq!(fields(&s), (100, 50.0, 90.0, 99.0, 100.0));
        assert_eq!(summarize(&mut []), Summary::default());
    }

    #[test]
    fn small_values_are_exact() {
        // Below 2048 µs the histogram has a bucket per microsecond: the
        // same nearest-rank answers as sorting.
        let s = Samples::new(1000);
        for us in (1..=100).rev() {
            s.record_us(us);
        }
        assert_eq!(fields(&s.summary()), (100, 50.0, 90.0, 99.0, 100.0));
        let s = Samples::new(1000);
        s.record_us(0);
        assert_eq!(fields(&s.summary()), (1, 0.0, 0.0, 0.0, 0.0));
    }

    #[test]
    fn uniform_distribution() {
        // 1..=100,000 µs once each, shuffled by a stride coprime to n.
        let n = 100_000u64;
        let s = Samples::new(1_000_000);
        for i in 0..n {
            s.record_us((i * 7919) % n + 1);
        }
        let sum = s.summary();
        assert_eq!(sum.count, 100_000);
        for (got, want) in [
            (sum.p50, 50_000.0),
            (sum.p90, 90_000.0),
            (sum.p99, 99_000.0),
        ] {
            // Never below the true value, at most one bucket (0.1%) above.
            assert!(got >= want && close(got, want, 1e-3), "{got} vs {want}");
        }
        assert_eq!(sum.max, 100_000.0, "the largest value is exact");
    }

    #[test]
    fn exponential_distribution() {
        // Deterministic quantiles of an exponential with mean 1 ms:
        // p50 = ln 2, p90 = ln 10, p99 = ln 100 (ms).
        let n = 20_000;
        let mean = 1000.0f64;
        let mut exact = Vec::with_capacity(n);
        let s = Samples::new(n);
        for i in 0..n {
            let u = (i as f64 + 0.5) / n as f64;
            let us = (-(1.0 - u).ln() * mean).round() as u32;
            exact.push(us);
            s.record_us(u64::from(us));
        }
        let h = s.summary();
        let e = summarize(&mut exact);
        assert_eq!(h.count, n);
        for (got, exact, theory) in [
            (h.p50, e.p50, mean * 2f64.ln()),
            (h.p90, e.p90, mean * 10f64.ln()),
            (h.p99, e.p99, mean * 100f64.ln()),
        ] {
            assert!(got >= exact && close(got, exact, 1e-3), "{got} vs {exact}");
            assert!(close(got, theory, 5e-3), "{got} vs {theory}");
        }
        assert_eq!(h.max, e.max);
    }

    #[test]
    fn bimodal_tail() {
        // 1% slow: p99 is still the fast mode (nearest rank 990 of 1000);
        // 2% slow: p99 is the slow mode.
        let s = Samples::new(10_000);
        for i in 0..1000 {
            s.record_us(if i % 100 == 0 { 25_000 } else { 150 });
        }
        assert_eq!(fields(&s.summary()), (1000, 150.0, 150.0, 150.0, 25_000.0));
        s.clear();
        for i in 0..1000 {
            s.record_us(if i % 50 == 0 { 25_000 } else { 150 });
        }
        let sum = s.summary();
        assert_eq!((sum.p90, sum.max), (150.0, 25_000.0));
        assert!(close(sum.p99, 25_000.0, 1e-3), "{}", sum.p99);
        assert!(sum.p99 <= sum.max);
    }

    #[test]
    fn huge_values_saturate() {
        let s = Samples::new(10);
        s.record_us(u64::MAX);
        s.record_us(Samples::HIGHEST_US + 1);
        s.record_us(5);
        let sum = s.summary();
        let top = Samples::HIGHEST_US as f64;
        assert_eq!(fields(&sum), (3, top, top, top, top));
    }

    #[test]
    fn window_keeps_the_newest() {
        let s = Samples::new(3);
        for us in [1, 2, 3, 100, 200] {
            s.record_us(us);
        }
        // Fewer than 2 * cap so far: all of them.
        assert_eq!(fields(&s.summary()), (5, 3.0, 200.0, 200.0, 200.0));
        s.record_us(300);
        // The oldest 3 are gone; the newest 3 remain.
        assert_eq!(fields(&s.summary()), (3, 200.0, 300.0, 300.0, 300.0));
        s.record_us(7);
        assert_eq!(s.summary().count, 4);
        let one = Samples::new(0);
        for us in [10, 20, 30] {
            one.record_us(us);
        }
        assert_eq!(one.summary().count, 1, "cap 0 counts as 1");
    }

    #[test]
    fn clear_forgets_everything() {
        let s = Samples::new(2);
        for us in [1, 2, 3] {
            s.record_us(us);
        }
        s.clear();
        assert_eq!(s.summary(), Summary::default());
        s.record_us(42);
        assert_eq!(fields(&s.summary()), (1, 42.0, 42.0, 42.0, 42.0));
    }
}
