//! Counters and latency samples the daemons expose on their admin endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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

/// The most recent latency samples (microseconds), bounded.
#[derive(Debug)]
pub struct Samples {
    inner: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    buf: Vec<u32>,
    next: usize,
    cap: usize,
}

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
    /// Keeps at most `cap` samples (the newest).
    pub fn new(cap: usize) -> Self {
        Samples {
            inner: Mutex::new(Ring {
                buf: Vec::new(),
                next: 0,
                cap: cap.max(1),
            }),
        }
    }

    /// Records one sample in microseconds.
    pub fn record_us(&self, us: u64) {
        let v = u32::try_from(us).unwrap_or(u32::MAX);
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if r.buf.len() < r.cap {
            r.buf.push(v);
        } else {
            let i = r.next;
            r.buf[i] = v;
            r.next = (i + 1) % r.cap;
        }
    }

    /// Forgets everything (used between benchmark phases).
    pub fn clear(&self) {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        r.buf.clear();
        r.next = 0;
    }

    /// Percentiles of what is kept.
    pub fn summary(&self) -> Summary {
        let mut v = self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .buf
            .clone();
        summarize(&mut v)
    }
}

/// Percentiles (nearest rank) of `v`, which is sorted in place.
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

    #[test]
    fn percentiles_nearest_rank() {
        let mut v: Vec<u32> = (1..=100).rev().collect();
        let s = summarize(&mut v);
        assert_eq!(
            (s.count, s.p50, s.p90, s.p99, s.max),
            (100, 50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(summarize(&mut []), Summary::default());
    }

    #[test]
    fn ring_keeps_newest() {
        let s = Samples::new(3);
        for us in [1, 2, 3, 100, 200] {
            s.record_us(us);
        }
        let sum = s.summary();
        assert_eq!((sum.count, sum.max, sum.p50), (3, 200.0, 100.0));
    }
}
