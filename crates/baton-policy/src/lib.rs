//! baton-policy: request distribution policies and routing rules, pure.
//!
//! Layer: called by the front-end between reading a request head and handing
//! the connection off. No I/O, no clock, no randomness: time comes in as
//! `now_ms`, so every policy is deterministic and testable (the simulator in
//! `baton-sim` drives the very same code).
//!
//! Invariants every policy keeps: it never picks a back-end that is not
//! [`BackendView::available`]; when none is, it answers `None` and the front
//! answers 503; the same sequence of calls gives the same answers. State a
//! policy keeps per target is bounded (targets come from clients).
//!
//! A back-end is identified by its index in the `cluster` slice: the front
//! must pass its back-ends in a stable order (its configured order) on every
//! call. The hashing policies rely on it.
//!
//! | name | type | source |
//! |---|---|---|
//! | `round-robin` | [`RoundRobin`] | |
//! | `wrr` | [`WeightedRoundRobin`] | nginx smooth weighted round-robin |
//! | `least-conn` | [`LeastConnections`] | weighted least-connections |
//! | `lard` | [`Lard`] | Pai et al., ASPLOS 1998, §2.3 |
//! | `lard-r` | [`LardReplicated`] | Pai et al., ASPLOS 1998, §2.4 |
//! | `maglev` | [`Maglev`] | Eisenbud et al., NSDI 2016, §3.4 |
//! | `bounded-ch` | [`BoundedLoadConsistentHash`] | Mirrokni, Thorup, Zadimoghaddam, SODA 2018 |
#![forbid(unsafe_code)]

mod bounded;
mod classic;
mod common;
mod hash;
mod lard;
mod maglev;
pub mod rules;

pub use bounded::{BoundedLoadConfig, BoundedLoadConsistentHash};
pub use classic::{LeastConnections, WeightedRoundRobin};
pub use common::TargetKey;
pub use lard::{Lard, LardConfig, LardReplicated, LardReplicatedConfig};
pub use maglev::{Maglev, MaglevConfig, MAGLEV_MAX_TABLE};
pub use rules::{HostMatch, PathMatch, Rule, RuleError, Rules};

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
    /// The most connections the front should have outstanding on `cluster`
    /// in total before it holds (or refuses) new ones, if the policy has
    /// such a limit. LARD's guarantees assume the front enforces it.
    fn admission_limit(&self, _cluster: &[BackendView]) -> Option<u64> {
        None
    }
    /// What this front decided for `req`'s target, to be told to the other
    /// fronts (after a [`pick`](Self::pick) that chose a node for `req`).
    /// Locality policies keep per-target state that fronts must agree on;
    /// the others need no sharing and answer `None`.
    fn placement(&mut self, _req: &Request<'_>) -> Option<Placement> {
        None
    }
    /// Another front placed target `placement.target` on `node` (an index
    /// into the same `cluster` slice `pick` gets). Idempotent; a placement
    /// older than what this front knows is ignored, so every front converges
    /// on the newest whatever order the notices arrive in.
    fn learn(&mut self, _placement: Placement, _node: usize, _now_ms: u64) {}
}

/// A locality policy's decision about one target, as fronts share it.
///
/// `version` orders the decisions about a target: a front that moves a
/// target gives it the next version, and a front that learns a placement
/// keeps the higher version (ties, two fronts placing a new target at the
/// same moment, go to the lower node index, which every front with the same
/// configuration agrees on). `version` 0 means "the node serves the target"
/// without ordering (LARD/R's server sets grow by union).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Placement {
    /// [`TargetKey::hash`] of the request: the same on every front.
    pub target: u64,
    /// See above.
    pub version: u64,
}

impl Placement {
    /// Its size on the wire.
    pub const LEN: usize = 17;
    const TAG: u8 = 1;

    /// Tag, target and version, big-endian: what a front puts in a
    /// handoff's hint for the back-end to echo to the other fronts.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = Self::TAG;
        b[1..9].copy_from_slice(&self.target.to_be_bytes());
        b[9..17].copy_from_slice(&self.version.to_be_bytes());
        b
    }

    /// The inverse of [`encode`](Self::encode); `None` for anything else
    /// (another front's format, an empty hint, junk).
    pub fn decode(b: &[u8]) -> Option<Placement> {
        let b: &[u8; Self::LEN] = b.try_into().ok()?;
        if b[0] != Self::TAG {
            return None;
        }
        let mut t = [0u8; 8];
        t.copy_from_slice(&b[1..9]);
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[9..17]);
        Some(Placement {
            target: u64::from_be_bytes(t),
            version: u64::from_be_bytes(v),
        })
    }
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

/// A policy parameter is out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// LARD needs `0 < t_low < t_high <= u32::MAX / 2`.
    #[error("LARD thresholds: need 0 < t_low < t_high, got t_low = {t_low}, t_high = {t_high}")]
    LardThresholds {
        /// As configured.
        t_low: u32,
        /// As configured.
        t_high: u32,
    },
    /// The target table must hold at least one target.
    #[error("max_targets must be at least 1")]
    ZeroMaxTargets,
    /// Maglev's table factor must be at least 1.
    #[error("maglev table_factor must be at least 1")]
    MaglevTableFactor,
    /// The bounded-load factor must be a number in [1, 1000].
    #[error("bounded-load factor c must be in [1, 1000], got {0}")]
    BoundedLoadFactor(f64),
    /// The ring needs at least one point per back-end.
    #[error("replicas must be at least 1")]
    ZeroReplicas,
}

/// A policy and its parameters, as a config file names them. Fill it from
/// TOML (or anything) and [`PolicyConfig::build`] it.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyConfig {
    /// `round-robin` (alias `rr`).
    RoundRobin,
    /// `wrr`.
    WeightedRoundRobin,
    /// `least-conn`.
    LeastConnections,
    /// `lard`.
    Lard(LardConfig),
    /// `lard-r`.
    LardReplicated(LardReplicatedConfig),
    /// `maglev`.
    Maglev(MaglevConfig),
    /// `bounded-ch`.
    BoundedLoad(BoundedLoadConfig),
}

/// Every policy name [`by_name`] and [`PolicyConfig::from_name`] know
/// (aliases aside).
pub const POLICY_NAMES: [&str; 7] = [
    "round-robin",
    "wrr",
    "least-conn",
    "lard",
    "lard-r",
    "maglev",
    "bounded-ch",
];

impl PolicyConfig {
    /// The policy called `name`, with its default parameters.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "round-robin" | "rr" => PolicyConfig::RoundRobin,
            "wrr" => PolicyConfig::WeightedRoundRobin,
            "least-conn" => PolicyConfig::LeastConnections,
            "lard" => PolicyConfig::Lard(LardConfig::default()),
            "lard-r" => PolicyConfig::LardReplicated(LardReplicatedConfig::default()),
            "maglev" => PolicyConfig::Maglev(MaglevConfig::default()),
            "bounded-ch" => PolicyConfig::BoundedLoad(BoundedLoadConfig::default()),
            _ => return None,
        })
    }

    /// The canonical name.
    pub fn name(&self) -> &'static str {
        match self {
            PolicyConfig::RoundRobin => "round-robin",
            PolicyConfig::WeightedRoundRobin => "wrr",
            PolicyConfig::LeastConnections => "least-conn",
            PolicyConfig::Lard(_) => "lard",
            PolicyConfig::LardReplicated(_) => "lard-r",
            PolicyConfig::Maglev(_) => "maglev",
            PolicyConfig::BoundedLoad(_) => "bounded-ch",
        }
    }

    /// Checks the parameters without building.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.build().map(drop)
    }

    /// A fresh policy with these parameters.
    pub fn build(&self) -> Result<Box<dyn Policy>, ConfigError> {
        Ok(match self {
            PolicyConfig::RoundRobin => Box::new(RoundRobin::default()),
            PolicyConfig::WeightedRoundRobin => Box::new(WeightedRoundRobin::default()),
            PolicyConfig::LeastConnections => Box::new(LeastConnections::default()),
            PolicyConfig::Lard(c) => Box::new(Lard::new(*c)?),
            PolicyConfig::LardReplicated(c) => Box::new(LardReplicated::new(*c)?),
            PolicyConfig::Maglev(c) => Box::new(Maglev::new(*c)?),
            PolicyConfig::BoundedLoad(c) => Box::new(BoundedLoadConsistentHash::new(*c)?),
        })
    }
}

/// Builds a policy from its configuration name, with default parameters.
pub fn by_name(name: &str) -> Option<Box<dyn Policy>> {
    PolicyConfig::from_name(name).and_then(|c| c.build().ok())
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
        for name in POLICY_NAMES {
            let p = by_name(name).unwrap();
            assert_eq!(p.name(), name);
            assert_eq!(PolicyConfig::from_name(name).unwrap().name(), name);
        }
        assert_eq!(by_name("rr").unwrap().name(), "round-robin");
        assert!(by_name("nope").is_none());
    }

    #[test]
    fn build_checks_parameters() {
        let bad = PolicyConfig::Lard(LardConfig {
            t_low: 70,
            ..LardConfig::default()
        });
        assert_eq!(
            bad.validate(),
            Err(ConfigError::LardThresholds {
                t_low: 70,
                t_high: 65
            })
        );
        let c = vec![up(); 3];
        assert_eq!(by_name("lard").unwrap().admission_limit(&c), Some(154));
        assert_eq!(by_name("lard-r").unwrap().admission_limit(&c), Some(154));
        assert_eq!(by_name("wrr").unwrap().admission_limit(&c), None);
    }
}
