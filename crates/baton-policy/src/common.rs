//! Pieces several policies share: what a "target" is, the least-loaded
//! choice, and a bounded per-target table.

use std::collections::BTreeMap;

use crate::hash::{hash_parts, Fnv};
use crate::{BackendView, Request};

/// What identifies a target, the unit a locality policy assigns to nodes.
///
/// Pai et al. use the requested URL. With several virtual hosts on one
/// cluster, `/index.html` of two sites are different documents: use
/// [`TargetKey::HostPath`] then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetKey {
    /// The request path as received (query included: it names a different
    /// object to a cache).
    #[default]
    Path,
    /// The `Host` header (lower-cased, without port) and the path.
    HostPath,
}

impl TargetKey {
    /// The 64-bit identity of `req`'s target under this key.
    pub fn hash(self, req: &Request<'_>) -> u64 {
        match self {
            TargetKey::Path => hash_parts(0, &[req.path.as_bytes()]),
            TargetKey::HostPath => {
                let host = req.host.map(crate::rules::normalize_host).unwrap_or("");
                Fnv::new(1)
                    .part_lower(host.as_bytes())
                    .part(req.path.as_bytes())
                    .finish()
            }
        }
    }
}

/// Least-loaded available back-end; ties go to the first one at or after
/// `*cursor` (cyclically), and the cursor moves past the winner. The
/// rotation spreads new targets over an idle cluster instead of piling them
/// on back-end 0, and it is still a pure function of the call sequence.
pub(crate) fn least_loaded(cluster: &[BackendView], cursor: &mut usize) -> Option<usize> {
    let n = cluster.len();
    if n == 0 {
        return None;
    }
    let start = *cursor % n;
    let mut best: Option<(usize, u32)> = None;
    for i in (0..n).map(|k| (start + k) % n) {
        let b = &cluster[i];
        if b.available() && best.is_none_or(|(_, l)| b.load < l) {
            best = Some((i, b.load));
        }
    }
    let (i, _) = best?;
    *cursor = (i + 1) % n;
    Some(i)
}

/// Some available back-end has load strictly below `t`.
pub(crate) fn any_below(cluster: &[BackendView], t: u32) -> bool {
    cluster.iter().any(|b| b.available() && b.load < t)
}

/// A map from target hash to per-target state with a hard size bound.
///
/// Targets come from clients, so the table must not grow without limit.
/// When full, the least recently used half is dropped in one O(n) pass
/// (amortised O(1) per insertion). A dropped target is simply new again
/// the next time it is asked for. A `BTreeMap` keeps iteration order and
/// memory use independent of any hasher seed.
#[derive(Debug, Clone)]
pub(crate) struct TargetTable<V> {
    map: BTreeMap<u64, (V, u64)>,
    tick: u64,
    cap: usize,
}

impl<V> TargetTable<V> {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            map: BTreeMap::new(),
            tick: 0,
            cap: cap.max(1),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The entry for `key`, marked as just used.
    pub(crate) fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(&key).map(|(v, t)| {
            *t = tick;
            v
        })
    }

    pub(crate) fn insert(&mut self, key: u64, v: V) {
        if !self.map.contains_key(&key) && self.map.len() >= self.cap {
            self.evict_half();
        }
        self.tick += 1;
        self.map.insert(key, (v, self.tick));
    }

    fn evict_half(&mut self) {
        let mut ticks: Vec<u64> = self.map.values().map(|(_, t)| *t).collect();
        let mid = ticks.len() / 2;
        let (_, median, _) = ticks.select_nth_unstable(mid);
        let median = *median;
        // Ticks are unique, so this keeps exactly the newer half.
        self.map.retain(|_, (_, t)| *t >= median);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_stays_bounded_and_keeps_recent_entries() {
        let mut t = TargetTable::new(4);
        for k in 0..4 {
            t.insert(k, k);
        }
        // Touch 0 so that it survives the eviction.
        assert_eq!(t.get_mut(0).copied(), Some(0));
        t.insert(10, 10);
        assert!(t.len() <= 4);
        assert_eq!(t.get_mut(0).copied(), Some(0));
        assert_eq!(t.get_mut(10).copied(), Some(10));
        assert!(t.get_mut(1).is_none());
        for k in 100..1000 {
            t.insert(k, k);
            assert!(t.len() <= 4);
        }
    }

    #[test]
    fn host_path_key_ignores_case_and_port() {
        fn r<'a>(host: &'a str, path: &'a str) -> Request<'a> {
            Request {
                method: "GET",
                host: Some(host),
                path,
            }
        }
        let k = TargetKey::HostPath;
        assert_eq!(
            k.hash(&r("Example.COM:8080", "/a")),
            k.hash(&r("example.com", "/a"))
        );
        assert_ne!(
            k.hash(&r("example.com", "/a")),
            k.hash(&r("example.org", "/a"))
        );
        assert_ne!(
            k.hash(&r("example.com", "/a")),
            k.hash(&r("example.com", "/A"))
        );
        let long = "x".repeat(100);
        let upper = long.to_ascii_uppercase();
        assert_eq!(k.hash(&r(&upper, "/a")), k.hash(&r(&long, "/a")));
        let p = TargetKey::Path;
        assert_eq!(p.hash(&r("a", "/a")), p.hash(&r("b", "/a")));
    }
}
