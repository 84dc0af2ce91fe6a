//! Consistent hashing with bounded loads: Mirrokni, Thorup, Zadimoghaddam,
//! "Consistent Hashing with Bounded Loads", SODA 2018, section 2 (the
//! algorithm: a ball goes to the first bin clockwise from its hash whose
//! load is below the capacity ceil(c * m / n)).

use crate::common::TargetKey;
use crate::hash::hash_parts;
use crate::{BackendView, ConfigError, Policy, Request};

/// Parameters of [`BoundedLoadConsistentHash`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundedLoadConfig {
    /// The balance factor c = 1 + epsilon; at least 1 (the paper's
    /// experiments and Google's deployment use 1.25).
    pub c: f64,
    /// Points per back-end on the ring.
    pub replicas: u32,
    /// What a target is.
    pub key: TargetKey,
}

impl Default for BoundedLoadConfig {
    fn default() -> Self {
        Self {
            c: 1.25,
            replicas: 100,
            key: TargetKey::Path,
        }
    }
}

/// Fixed-point scale of `c`: capacities are computed in integers so that
/// the bound is exact (no float rounding across a `ceil`).
const C_SCALE: u64 = 1_000_000;

/// Consistent hashing with bounded loads.
///
/// A ring holds `replicas` points per back-end (by index, stable across
/// availability changes). A request for a target walks clockwise from the
/// target's hash and takes the first available back-end whose load is
/// below its capacity `ceil(c * (m + 1) * w_i / W)`, where `m` is the sum of
/// the available back-ends' loads (the `+ 1` counts this request, as the
/// paper counts the ball being placed) and `W` their total weight. With
/// equal weights that is `ceil(c * average)`, the paper's bound; weights
/// scale each back-end's share.
///
/// Such a back-end always exists: the capacities add up to at least
/// `c * (m + 1) > m`, so some back-end is below its own. Hence the
/// invariant: the chosen back-end's load, counting this request, is at most
/// its capacity.
#[derive(Debug, Clone)]
pub struct BoundedLoadConsistentHash {
    cfg: BoundedLoadConfig,
    c_fixed: u64,
    ring_for: usize,
    ring: Vec<(u64, u32)>,
}

impl Default for BoundedLoadConsistentHash {
    fn default() -> Self {
        Self::from_valid(BoundedLoadConfig::default())
    }
}

impl BoundedLoadConsistentHash {
    /// A bounded-load policy with `cfg`: `c` finite and in [1, 1000],
    /// `replicas` at least 1.
    pub fn new(cfg: BoundedLoadConfig) -> Result<Self, ConfigError> {
        if !(1.0..=1000.0).contains(&cfg.c) {
            return Err(ConfigError::BoundedLoadFactor(cfg.c));
        }
        if cfg.replicas == 0 {
            return Err(ConfigError::ZeroReplicas);
        }
        Ok(Self::from_valid(cfg))
    }

    fn from_valid(cfg: BoundedLoadConfig) -> Self {
        Self {
            // In [1e6, 1e9] after validation: exact enough, and no overflow
            // below for loads and weights that fit in u32.
            c_fixed: (cfg.c * C_SCALE as f64).round() as u64,
            cfg,
            ring_for: usize::MAX,
            ring: Vec::new(),
        }
    }

    /// The capacity of a back-end of weight `w` when the available
    /// back-ends carry `total_load` (before this request) and weigh
    /// `total_weight` in all.
    pub fn capacity(&self, w: u32, total_load: u64, total_weight: u64) -> u64 {
        let num = u128::from(self.c_fixed) * u128::from(total_load + 1) * u128::from(w);
        let den = u128::from(C_SCALE) * u128::from(total_weight.max(1));
        u64::try_from(num.div_ceil(den)).unwrap_or(u64::MAX)
    }

    fn rebuild(&mut self, n: usize) {
        let mut ring = Vec::with_capacity(n * self.cfg.replicas as usize);
        for i in 0..n {
            let id = (i as u64).to_le_bytes();
            for r in 0..self.cfg.replicas {
                ring.push((hash_parts(0x7269_6e67, &[&id, &r.to_le_bytes()]), i as u32));
            }
        }
        ring.sort_unstable();
        self.ring = ring;
        self.ring_for = n;
    }
}

impl Policy for BoundedLoadConsistentHash {
    fn name(&self) -> &'static str {
        "bounded-ch"
    }

    fn pick(&mut self, req: &Request<'_>, cluster: &[BackendView], _now_ms: u64) -> Option<usize> {
        if self.ring_for != cluster.len() {
            self.rebuild(cluster.len());
        }
        let (total_load, total_weight) = cluster
            .iter()
            .filter(|b| b.available())
            .fold((0u64, 0u64), |(l, w), b| {
                (l + u64::from(b.load), w + u64::from(b.weight))
            });
        if total_weight == 0 {
            return None;
        }
        let h = self.cfg.key.hash(req);
        let start = self.ring.partition_point(|&(p, _)| p < h);
        let len = self.ring.len();
        (0..len)
            .map(|k| self.ring[(start + k) % len].1 as usize)
            .find(|&i| {
                cluster.get(i).is_some_and(|b| {
                    b.available()
                        && u64::from(b.load) < self.capacity(b.weight, total_load, total_weight)
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_exact() {
        let p = BoundedLoadConsistentHash::default();
        // ceil(1.25 * 4 / 5) = 1 exactly, no float slop.
        assert_eq!(p.capacity(1, 3, 5), 1);
        assert_eq!(p.capacity(1, 4, 5), 2);
        assert_eq!(p.capacity(1, 0, 1), 2);
        assert_eq!(p.capacity(2, 9, 4), 7);
    }

    #[test]
    fn overflow_spills_clockwise() {
        let mut p = BoundedLoadConsistentHash::default();
        let mut c = vec![
            BackendView {
                up: true,
                draining: false,
                load: 0,
                weight: 1,
            };
            4
        ];
        let req = Request {
            method: "GET",
            host: None,
            path: "/hot",
        };
        let home = p.pick(&req, &c, 0).unwrap();
        // Same target, same home while it has room.
        assert_eq!(p.pick(&req, &c, 0), Some(home));
        // Full home (cap = ceil(1.25 * 11 / 4) = 4): the request spills.
        c[home].load = 10;
        let spill = p.pick(&req, &c, 0).unwrap();
        assert_ne!(spill, home);
    }

    #[test]
    fn bad_factor_refused() {
        for c in [0.5, f64::NAN, f64::INFINITY] {
            let cfg = BoundedLoadConfig {
                c,
                ..BoundedLoadConfig::default()
            };
            assert!(BoundedLoadConsistentHash::new(cfg).is_err());
        }
    }
}
