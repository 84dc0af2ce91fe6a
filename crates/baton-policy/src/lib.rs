//! baton-policy: request distribution policies, pure.
//!
//! Layer: called by the front-end between reading a request head and handing
//! the connection off. No I/O, no clock, no randomness: time comes in as
//! `now_ms`, so every policy is deterministic and testable.
//!
//! Invariant every policy keeps: it never picks a back-end that is not
//! [`BackendView::available`]; when none is, it answers `None` and the front
//! answers 503.
#![forbid(unsafe_code)]

/// What a policy may look at in a request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The method, e.g. `GET`.
    pub method: &'a str,
    /// The `Host` header, if any.
    pub host: Option<&'a str>,
    /// The request target's path (with the query).
    pub path: &'a str,
}

/// One back-end as the front sees it at the moment of the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendView {
    /// Its control channel is up and it has not refused us lately.
    pub up: bool,
    /// It asked for no new connections (orderly shutdown).
    pub draining: bool,
    /// Active connections: its last report plus what we handed it since.
    pub load: u32,
    /// Relative capacity (1 = normal).
    pub weight: u32,
}

impl BackendView {
    /// May receive a new connection.
    pub fn available(&self) -> bool {
        self.up && !self.draining && self.weight > 0
    }
}

/// A distribution policy: picks the index of a back-end in `cluster`.
pub trait Policy: Send + std::fmt::Debug {
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;
    /// Picks a back-end for `req`, or `None` when no back-end can take it.
    fn pick(&mut self, req: &Request<'_>, cluster: &[BackendView], now_ms: u64) -> Option<usize>;
}

/// Plain round-robin over the available back-ends, ignoring weights and load.
#[derive(Debug, Default, Clone)]
pub struct RoundRobin {
    next: usize,
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }

    fn pick(&mut self, _req: &Request<'_>, cluster: &[BackendView], _now_ms: u64) -> Option<usize> {
        let n = cluster.len();
        (0..n)
            .map(|i| (self.next + i) % n)
            .find(|&i| cluster[i].available())
            .inspect(|&i| self.next = (i + 1) % n)
    }
}

/// Builds a policy from its configuration name.
pub fn by_name(name: &str) -> Option<Box<dyn Policy>> {
    match name {
        "round-robin" | "rr" => Some(Box::new(RoundRobin::default())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> BackendView {
        BackendView {
            up: true,
            draining: false,
            load: 0,
            weight: 1,
        }
    }

    const REQ: Request<'static> = Request {
        method: "GET",
        host: None,
        path: "/",
    };

    #[test]
    fn round_robin_cycles_and_skips_unavailable() {
        let mut rr = RoundRobin::default();
        let mut c = vec![up(), up(), up()];
        let picks: Vec<_> = (0..6).map(|_| rr.pick(&REQ, &c, 0).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        c[1].up = false;
        c[2].draining = true;
        let picks: Vec<_> = (0..3).map(|_| rr.pick(&REQ, &c, 0).unwrap()).collect();
        assert_eq!(picks, [0, 0, 0]);
        c[0].weight = 0;
        assert_eq!(rr.pick(&REQ, &c, 0), None);
        assert_eq!(rr.pick(&REQ, &[], 0), None);
    }

    #[test]
    fn names_resolve() {
        assert_eq!(by_name("round-robin").unwrap().name(), "round-robin");
        assert!(by_name("nope").is_none());
    }
}
