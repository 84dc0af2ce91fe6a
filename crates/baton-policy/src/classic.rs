//! The classic, content-blind policies: smooth weighted round-robin and
//! weighted least-connections.

use crate::{BackendView, Policy, Request};

/// Smooth weighted round-robin, as nginx implements it
/// (`ngx_http_upstream_get_peer` in `ngx_http_upstream_round_robin.c`,
/// 2012 onwards).
///
/// Each available back-end's current weight grows by its weight; the one
/// with the largest current weight wins (the lowest index on ties) and
/// loses the total. Over any window of `sum(weights)` picks, each back-end
/// gets exactly its weight, and the picks of heavy back-ends are spread out
/// rather than bunched (weights 5,1,1 give a,a,b,a,c,a,a).
#[derive(Debug, Default, Clone)]
pub struct WeightedRoundRobin {
    current: Vec<i64>,
}

impl Policy for WeightedRoundRobin {
    fn name(&self) -> &'static str {
        "wrr"
    }

    fn pick(&mut self, _req: &Request<'_>, cluster: &[BackendView], _now_ms: u64) -> Option<usize> {
        if self.current.len() != cluster.len() {
            self.current = vec![0; cluster.len()];
        }
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for (i, b) in cluster.iter().enumerate() {
            if !b.available() {
                continue;
            }
            let w = i64::from(b.weight);
            self.current[i] += w;
            total += w;
            if best.is_none_or(|j| self.current[i] > self.current[j]) {
                best = Some(i);
            }
        }
        let i = best?;
        self.current[i] -= total;
        Some(i)
    }
}

/// Weighted least-connections: the available back-end with the smallest
/// `load / weight` (compared exactly, by cross-multiplication). Ties go to
/// the first tied back-end at or after a cursor that moves past each
/// winner, so an idle cluster is filled in turn rather than from index 0.
#[derive(Debug, Default, Clone)]
pub struct LeastConnections {
    cursor: usize,
}

impl Policy for LeastConnections {
    fn name(&self) -> &'static str {
        "least-conn"
    }

    fn pick(&mut self, _req: &Request<'_>, cluster: &[BackendView], _now_ms: u64) -> Option<usize> {
        let n = cluster.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor % n;
        let mut best: Option<usize> = None;
        for i in (0..n).map(|k| (start + k) % n) {
            let b = &cluster[i];
            if !b.available() {
                continue;
            }
            let better = best.is_none_or(|j| {
                let c = &cluster[j];
                u64::from(b.load) * u64::from(c.weight) < u64::from(c.load) * u64::from(b.weight)
            });
            if better {
                best = Some(i);
            }
        }
        let i = best?;
        self.cursor = (i + 1) % n;
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(load: u32, weight: u32) -> BackendView {
        BackendView {
            up: true,
            draining: false,
            load,
            weight,
        }
    }

    const REQ: Request<'static> = Request {
        method: "GET",
        host: None,
        path: "/",
    };

    #[test]
    fn wrr_matches_nginx_sequence() {
        let mut p = WeightedRoundRobin::default();
        let c = [view(0, 5), view(0, 1), view(0, 1)];
        let picks: Vec<_> = (0..7).map(|_| p.pick(&REQ, &c, 0).unwrap()).collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn wrr_shares_follow_weights_and_skip_unavailable() {
        let mut p = WeightedRoundRobin::default();
        let mut c = [view(0, 3), view(0, 2), view(0, 1)];
        let mut counts = [0; 3];
        for _ in 0..60 {
            counts[p.pick(&REQ, &c, 0).unwrap()] += 1;
        }
        assert_eq!(counts, [30, 20, 10]);
        c[0].draining = true;
        for _ in 0..30 {
            assert_ne!(p.pick(&REQ, &c, 0), Some(0));
        }
    }

    #[test]
    fn least_conn_weighs_and_rotates_ties() {
        let mut p = LeastConnections::default();
        // 4/2 = 2 < 3/1: the heavier back-end wins despite more connections.
        assert_eq!(p.pick(&REQ, &[view(3, 1), view(4, 2)], 0), Some(1));
        let c = [view(0, 1), view(0, 1), view(0, 1)];
        let picks: Vec<_> = (0..4).map(|_| p.pick(&REQ, &c, 0).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0]);
    }
}
