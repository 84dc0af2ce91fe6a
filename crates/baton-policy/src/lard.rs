//! LARD and LARD/R: Pai, Aron, Banga, Svendsen, Druschel, Zwaenepoel, Nahum,
//! "Locality-Aware Request Distribution in Cluster-based Network Servers",
//! ASPLOS 1998, section 2.3 (basic LARD, figure 3) and section 2.4 (LARD
//! with replication, figure 5).
//!
//! Load is a back-end's number of active connections ([`BackendView::load`]).
//! The paper's cluster is homogeneous, so weights play no part beyond
//! weight 0 meaning "unavailable".

use crate::common::{any_below, least_loaded, TargetKey, TargetTable};
use crate::{BackendView, ConfigError, Placement, Policy, Request};

/// Parameters of [`Lard`] (and of the growth rule of [`LardReplicated`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LardConfig {
    /// Below this load a node counts as underused (Pai: T_low = 25).
    pub t_low: u32,
    /// Above this load a node counts as overloaded (Pai: T_high = 65).
    pub t_high: u32,
    /// What a target is.
    pub key: TargetKey,
    /// How many targets the front remembers; least recently used ones are
    /// forgotten beyond this (clients choose paths, memory must stay bounded).
    pub max_targets: usize,
}

impl Default for LardConfig {
    fn default() -> Self {
        Self {
            t_low: 25,
            t_high: 65,
            key: TargetKey::Path,
            max_targets: 100_000,
        }
    }
}

impl LardConfig {
    /// Checks `0 < t_low < t_high` (so that `2 * t_high` fits) and a
    /// non-empty target table.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.t_low == 0 || self.t_low >= self.t_high || self.t_high > u32::MAX / 2 {
            return Err(ConfigError::LardThresholds {
                t_low: self.t_low,
                t_high: self.t_high,
            });
        }
        if self.max_targets == 0 {
            return Err(ConfigError::ZeroMaxTargets);
        }
        Ok(())
    }

    /// Pai's admission limit S = (n-1)*T_high + T_low - 1 for `n` available
    /// back-ends: the front holds (or refuses) connections beyond S in total,
    /// which keeps every node at or below 2*T_high (section 2.3). `None` when
    /// no back-end is available.
    pub fn admission_limit(&self, cluster: &[BackendView]) -> Option<u64> {
        let n = cluster.iter().filter(|b| b.available()).count() as u64;
        if n == 0 {
            return None;
        }
        Some((n - 1) * u64::from(self.t_high) + u64::from(self.t_low) - 1)
    }

    /// Pai's reassignment test for a target currently on a node of load
    /// `load`: move when `load > T_high` while some node is below `T_low`,
    /// or when `load >= 2*T_high`.
    fn overloaded(&self, load: u32, cluster: &[BackendView]) -> bool {
        (load > self.t_high && any_below(cluster, self.t_low)) || load >= 2 * self.t_high
    }
}

/// Basic LARD (Pai et al. 1998, figure 3).
///
/// Each target is assigned to one node. A new target goes to the least
/// loaded node. A target moves to the least loaded node when its node's
/// load exceeds T_high while some node is below T_low, or reaches 2*T_high.
/// A target whose node is unavailable (down, draining, removed) is treated
/// as new.
///
/// Invariant (given the front admits at most [`Lard::admission_limit`]
/// connections in total): no node ever goes above 2*T_high, and no request
/// is sent to a node above T_high while some node is below T_low.
///
/// With several fronts, each assignment carries a version (see
/// [`Placement`]): a move takes the next version, and an assignment learnt
/// from another front replaces this front's when its version is higher (or
/// equal with a lower node index), so all fronts send a target to one node.
#[derive(Debug, Clone)]
pub struct Lard {
    cfg: LardConfig,
    server: TargetTable<Assigned>,
    cursor: usize,
}

/// A target's node and the version of that decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Assigned {
    node: u32,
    version: u64,
}

impl Assigned {
    /// Whether `other` is the newer decision (higher version; equal
    /// versions: the lower node, which every front agrees on).
    fn older_than(&self, other: &Assigned) -> bool {
        (other.version, std::cmp::Reverse(other.node))
            > (self.version, std::cmp::Reverse(self.node))
    }
}

impl Default for Lard {
    fn default() -> Self {
        Self::from_valid(LardConfig::default())
    }
}

impl Lard {
    /// A LARD policy with `cfg`, after [`LardConfig::validate`].
    pub fn new(cfg: LardConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self::from_valid(cfg))
    }

    fn from_valid(cfg: LardConfig) -> Self {
        Self {
            server: TargetTable::new(cfg.max_targets),
            cfg,
            cursor: 0,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &LardConfig {
        &self.cfg
    }

    /// See [`LardConfig::admission_limit`].
    pub fn admission_limit(&self, cluster: &[BackendView]) -> Option<u64> {
        self.cfg.admission_limit(cluster)
    }

    /// Number of targets currently remembered.
    pub fn targets(&self) -> usize {
        self.server.len()
    }
}

impl Policy for Lard {
    fn name(&self) -> &'static str {
        "lard"
    }

    fn pick(&mut self, req: &Request<'_>, cluster: &[BackendView], _now_ms: u64) -> Option<usize> {
        let key = self.cfg.key.hash(req);
        let known = self.server.get_mut(key).copied();
        let current = known
            .map(|a| a.node as usize)
            .filter(|&n| cluster.get(n).is_some_and(BackendView::available));
        if let Some(n) = current {
            if !self.cfg.overloaded(cluster[n].load, cluster) {
                return Some(n);
            }
        }
        let n = least_loaded(cluster, &mut self.cursor)?;
        // A new target is version 1; a move (or a node gone) the next one.
        let version = known.map_or(1, |a| a.version.saturating_add(1));
        self.server.insert(
            key,
            Assigned {
                node: n as u32,
                version,
            },
        );
        Some(n)
    }

    fn admission_limit(&self, cluster: &[BackendView]) -> Option<u64> {
        self.cfg.admission_limit(cluster)
    }

    fn placement(&mut self, req: &Request<'_>) -> Option<Placement> {
        let target = self.cfg.key.hash(req);
        let a = self.server.get_mut(target)?;
        Some(Placement {
            target,
            version: a.version,
        })
    }

    fn learn(&mut self, placement: Placement, node: usize, _now_ms: u64) {
        let Ok(node) = u32::try_from(node) else {
            return;
        };
        let learnt = Assigned {
            node,
            version: placement.version,
        };
        match self.server.get_mut(placement.target) {
            Some(a) if a.older_than(&learnt) => *a = learnt,
            Some(_) => {}
            None => self.server.insert(placement.target, learnt),
        }
    }
}

/// Parameters of [`LardReplicated`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LardReplicatedConfig {
    /// Thresholds, target key and table bound, as for [`Lard`].
    pub lard: LardConfig,
    /// A server set unchanged for longer than this loses its most loaded
    /// node (Pai: K = 20 s).
    pub k_ms: u64,
}

impl Default for LardReplicatedConfig {
    fn default() -> Self {
        Self {
            lard: LardConfig::default(),
            k_ms: 20_000,
        }
    }
}

#[derive(Debug, Clone)]
struct ServerSet {
    nodes: Vec<u32>,
    last_mod_ms: u64,
}

/// LARD with replication, LARD/R (Pai et al. 1998, figure 5).
///
/// Each target has a server set. A request goes to the least loaded node of
/// its target's set. When that node is overloaded by the LARD rule, the
/// least loaded node of the cluster joins the set and gets the request. When
/// a set with more than one node has not changed for K, its most loaded node
/// leaves it. Nodes that become unavailable are dropped from every set they
/// are found in.
///
/// One refinement over figure 5: the node that leaves is the most loaded one
/// other than the node this request goes to (figure 5 picks the most loaded
/// before growing the set, which can be the same node when loads tie).
#[derive(Debug, Clone)]
pub struct LardReplicated {
    cfg: LardReplicatedConfig,
    sets: TargetTable<ServerSet>,
    cursor: usize,
}

impl Default for LardReplicated {
    fn default() -> Self {
        Self::from_valid(LardReplicatedConfig::default())
    }
}

impl LardReplicated {
    /// A LARD/R policy with `cfg`, after validation.
    pub fn new(cfg: LardReplicatedConfig) -> Result<Self, ConfigError> {
        cfg.lard.validate()?;
        Ok(Self::from_valid(cfg))
    }

    fn from_valid(cfg: LardReplicatedConfig) -> Self {
        Self {
            sets: TargetTable::new(cfg.lard.max_targets),
            cfg,
            cursor: 0,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &LardReplicatedConfig {
        &self.cfg
    }

    /// See [`LardConfig::admission_limit`].
    pub fn admission_limit(&self, cluster: &[BackendView]) -> Option<u64> {
        self.cfg.lard.admission_limit(cluster)
    }

    /// The server set of `req`'s target, for inspection.
    pub fn server_set(&mut self, req: &Request<'_>) -> Vec<usize> {
        let key = self.cfg.lard.key.hash(req);
        self.sets
            .get_mut(key)
            .map(|s| s.nodes.iter().map(|&n| n as usize).collect())
            .unwrap_or_default()
    }
}

/// The node of `nodes` with the least load (first wins ties).
fn set_least(nodes: &[u32], cluster: &[BackendView]) -> Option<usize> {
    nodes
        .iter()
        .map(|&n| n as usize)
        .min_by_key(|&n| cluster[n].load)
}

impl Policy for LardReplicated {
    fn name(&self) -> &'static str {
        "lard-r"
    }

    fn pick(&mut self, req: &Request<'_>, cluster: &[BackendView], now_ms: u64) -> Option<usize> {
        let key = self.cfg.lard.key.hash(req);
        let lard = self.cfg.lard;
        let Some(set) = self.sets.get_mut(key) else {
            let n = least_loaded(cluster, &mut self.cursor)?;
            self.sets.insert(
                key,
                ServerSet {
                    nodes: vec![n as u32],
                    last_mod_ms: now_ms,
                },
            );
            return Some(n);
        };
        let before = set.nodes.len();
        set.nodes
            .retain(|&n| cluster.get(n as usize).is_some_and(BackendView::available));
        let mut changed = set.nodes.len() != before;
        let n = match set_least(&set.nodes, cluster) {
            Some(n) if !lard.overloaded(cluster[n].load, cluster) => n,
            _ => {
                // Empty set, or its best node is overloaded: grow the set.
                let p = least_loaded(cluster, &mut self.cursor)?;
                if !set.nodes.contains(&(p as u32)) {
                    set.nodes.push(p as u32);
                    changed = true;
                }
                p
            }
        };
        if set.nodes.len() > 1 && now_ms.saturating_sub(set.last_mod_ms) > self.cfg.k_ms {
            let most = set
                .nodes
                .iter()
                .enumerate()
                .filter(|&(_, &m)| m as usize != n)
                .max_by_key(|&(_, &m)| cluster[m as usize].load)
                .map(|(i, _)| i);
            if let Some(i) = most {
                set.nodes.remove(i);
                changed = true;
            }
        }
        if changed {
            set.last_mod_ms = now_ms;
        }
        Some(n)
    }

    fn admission_limit(&self, cluster: &[BackendView]) -> Option<u64> {
        self.cfg.lard.admission_limit(cluster)
    }

    fn placement(&mut self, req: &Request<'_>) -> Option<Placement> {
        let target = self.cfg.lard.key.hash(req);
        self.sets.get_mut(target)?;
        Some(Placement { target, version: 0 })
    }

    /// Another front sent the target to `node`: it joins the target's
    /// server set (sets grow by union across fronts; each front shrinks its
    /// own by the K rule, and a node another front still uses comes back
    /// with its next notice).
    fn learn(&mut self, placement: Placement, node: usize, now_ms: u64) {
        let Ok(node) = u32::try_from(node) else {
            return;
        };
        match self.sets.get_mut(placement.target) {
            Some(set) if set.nodes.contains(&node) => {}
            Some(set) => {
                set.nodes.push(node);
                set.last_mod_ms = now_ms;
            }
            None => self.sets.insert(
                placement.target,
                ServerSet {
                    nodes: vec![node],
                    last_mod_ms: now_ms,
                },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TargetKey;

    fn view(load: u32) -> BackendView {
        BackendView {
            up: true,
            draining: false,
            load,
            weight: 1,
        }
    }

    fn req(path: &str) -> Request<'_> {
        Request {
            method: "GET",
            host: None,
            path,
        }
    }

    #[test]
    fn admission_limit_is_pais_formula() {
        let l = Lard::default();
        let mut c = vec![view(0); 4];
        assert_eq!(l.admission_limit(&c), Some(3 * 65 + 25 - 1));
        c[0].up = false;
        assert_eq!(l.admission_limit(&c), Some(2 * 65 + 25 - 1));
        assert_eq!(l.admission_limit(&[]), None);
    }

    #[test]
    fn lard_sticks_then_moves_by_the_rule() {
        let mut l = Lard::default();
        let mut c = vec![view(10), view(5), view(30)];
        assert_eq!(l.pick(&req("/a"), &c, 0), Some(1));
        // Stays on node 1 although it is now the busiest.
        c[1].load = 65;
        assert_eq!(l.pick(&req("/a"), &c, 0), Some(1));
        // Above T_high while node 0 is below T_low: moves to node 0.
        c[1].load = 66;
        assert_eq!(l.pick(&req("/a"), &c, 0), Some(0));
        // On node 0 above T_high, but nobody is below T_low: stays.
        c = vec![view(100), view(30), view(40)];
        assert_eq!(l.pick(&req("/a"), &c, 0), Some(0));
        // At 2*T_high it moves regardless.
        c[0].load = 130;
        assert_eq!(l.pick(&req("/a"), &c, 0), Some(1));
    }

    #[test]
    fn lard_r_grows_and_shrinks() {
        let mut l = LardReplicated::default();
        let mut c = vec![view(0), view(0), view(0)];
        let first = l.pick(&req("/a"), &c, 0).unwrap();
        c[first].load = 70;
        c[(first + 1) % 3].load = 10;
        c[(first + 2) % 3].load = 20;
        // Overloaded: the least loaded node joins the set.
        assert_eq!(l.pick(&req("/a"), &c, 1), Some((first + 1) % 3));
        assert_eq!(l.server_set(&req("/a")).len(), 2);
        // Within K: the set is kept, the request goes to its least loaded.
        assert_eq!(l.pick(&req("/a"), &c, 10_000), Some((first + 1) % 3));
        assert_eq!(l.server_set(&req("/a")).len(), 2);
        // Unchanged for more than K: the most loaded member leaves.
        assert_eq!(l.pick(&req("/a"), &c, 20_002), Some((first + 1) % 3));
        assert_eq!(l.server_set(&req("/a")), vec![(first + 1) % 3]);
    }

    #[test]
    fn lard_r_drops_unavailable_members() {
        let mut l = LardReplicated::default();
        let mut c = vec![view(0), view(1)];
        assert_eq!(l.pick(&req("/a"), &c, 0), Some(0));
        c[0].draining = true;
        assert_eq!(l.pick(&req("/a"), &c, 0), Some(1));
        assert_eq!(l.server_set(&req("/a")), vec![1]);
        c[1].up = false;
        assert_eq!(l.pick(&req("/a"), &c, 0), None);
    }

    #[test]
    fn lard_learns_the_newer_placement_only() {
        let mut a = Lard::default();
        let mut b = Lard::default();
        let c = vec![view(0), view(0), view(0)];
        // Two fronts place a new target at the same moment on different nodes.
        b.pick(&req("/x"), &[view(9), view(0), view(9)], 0);
        assert_eq!(a.pick(&req("/x"), &c, 0), Some(0));
        let pa = a.placement(&req("/x")).unwrap();
        let pb = b.placement(&req("/x")).unwrap();
        assert_eq!((pa.version, pb.version), (1, 1));
        // Each learns the other's: both settle on the lower node index.
        a.learn(pb, 1, 0);
        b.learn(pa, 0, 0);
        assert_eq!(a.pick(&req("/x"), &c, 0), Some(0));
        assert_eq!(b.pick(&req("/x"), &c, 0), Some(0));
        // A move on b is version 2 and wins on a, whatever a had.
        let hot = vec![view(130), view(0), view(3)];
        assert_eq!(b.pick(&req("/x"), &hot, 0), Some(1));
        let moved = b.placement(&req("/x")).unwrap();
        assert_eq!(moved.version, 2);
        a.learn(moved, 1, 0);
        // A late, older notice changes nothing.
        a.learn(pa, 0, 0);
        assert_eq!(a.pick(&req("/x"), &c, 0), Some(1));
        // An unknown target is learnt as is; a node index out of range is
        // never picked.
        a.learn(
            Placement {
                target: TargetKey::Path.hash(&req("/y")),
                version: 1,
            },
            7,
            0,
        );
        assert_eq!(a.pick(&req("/y"), &c, 0).map(|n| n < 3), Some(true));
    }

    #[test]
    fn lard_r_sets_grow_by_union() {
        let mut a = LardReplicated::default();
        let c = vec![view(0), view(0), view(0)];
        let first = a.pick(&req("/x"), &c, 0).unwrap();
        let p = a.placement(&req("/x")).unwrap();
        let other = (first + 1) % 3;
        a.learn(p, other, 5);
        a.learn(p, other, 6);
        let mut set = a.server_set(&req("/x"));
        set.sort_unstable();
        let mut want = vec![first, other];
        want.sort_unstable();
        assert_eq!(set, want);
        assert_eq!(
            Placement::decode(&p.encode()),
            Some(p),
            "the hint round-trips"
        );
        assert_eq!(Placement::decode(b""), None);
        assert_eq!(Placement::decode(&[9; Placement::LEN]), None);
    }

    #[test]
    fn bad_thresholds_are_refused() {
        for (t_low, t_high) in [(0, 10), (10, 10), (20, 10), (1, u32::MAX)] {
            let cfg = LardConfig {
                t_low,
                t_high,
                ..LardConfig::default()
            };
            assert!(Lard::new(cfg).is_err(), "{t_low} {t_high}");
        }
    }
}
