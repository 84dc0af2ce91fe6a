//! Maglev consistent hashing: Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, section 3.4 (lookup table
//! population, pseudocode 1).

use crate::common::TargetKey;
use crate::hash::{hash_parts, next_prime};
use crate::{BackendView, ConfigError, Policy, Request};

/// Parameters of [`Maglev`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaglevConfig {
    /// What a target is (hashed to a table slot).
    pub key: TargetKey,
    /// The table size M is the smallest prime >= `table_factor * back-ends`
    /// and >= `min_table_size`. The paper wants M much larger than N (its
    /// default M is 65537): each back-end's share is then within about N/M
    /// of 1/N, and the disturbance when a back-end leaves (slots that change
    /// owner beyond the leaver's own) shrinks as M/N grows.
    pub table_factor: u32,
    /// Lower bound on M (the paper's 65537 by default).
    pub min_table_size: u32,
}

impl Default for MaglevConfig {
    fn default() -> Self {
        Self {
            key: TargetKey::Path,
            table_factor: 100,
            min_table_size: 65_537,
        }
    }
}

/// Upper bound on the table (entries), whatever the cluster size.
pub const MAGLEV_MAX_TABLE: u64 = 1 << 24;

/// Maglev lookup-table hashing.
///
/// Each back-end `i` (identified by its index in the cluster slice, which
/// the front keeps stable: its configured order) has a preference
/// permutation of the M table slots, `(offset_i + j * skip_i) mod M`. The
/// available back-ends take turns claiming their next preferred free slot
/// until the table is full; a target goes to the owner of slot
/// `hash(target) mod M`. M depends on the configured cluster size only, so
/// when a back-end leaves, the others keep almost all their slots: about
/// 1/N of the targets move, those of the leaver plus a small disturbance.
///
/// The table is rebuilt whenever the set of available back-ends changes
/// (O(M log M) expected); lookups are O(1).
#[derive(Debug, Clone)]
pub struct Maglev {
    cfg: MaglevConfig,
    /// Availability the table was built for.
    built_for: Vec<bool>,
    table: Vec<u32>,
}

impl Default for Maglev {
    fn default() -> Self {
        Self::from_valid(MaglevConfig::default())
    }
}

impl Maglev {
    /// A Maglev policy with `cfg`; `table_factor` must be at least 1.
    pub fn new(cfg: MaglevConfig) -> Result<Self, ConfigError> {
        if cfg.table_factor == 0 {
            return Err(ConfigError::MaglevTableFactor);
        }
        Ok(Self::from_valid(cfg))
    }

    fn from_valid(cfg: MaglevConfig) -> Self {
        Self {
            cfg,
            built_for: Vec::new(),
            table: Vec::new(),
        }
    }

    /// The lookup table (slot -> back-end index) for the last cluster seen;
    /// empty when no back-end was available.
    pub fn table(&self) -> &[u32] {
        &self.table
    }

    /// Rebuilds the table if the available set differs from the last one.
    pub fn refresh(&mut self, cluster: &[BackendView]) {
        let avail = cluster.iter().map(BackendView::available);
        if self.built_for.len() == cluster.len() && self.built_for.iter().copied().eq(avail) {
            return;
        }
        self.built_for = cluster.iter().map(BackendView::available).collect();
        self.table = populate(&self.built_for, &self.cfg);
    }
}

/// Table size for `n` configured back-ends.
pub(crate) fn table_size(n: usize, cfg: &MaglevConfig) -> u64 {
    let want = (n as u64)
        .saturating_mul(u64::from(cfg.table_factor))
        .max(u64::from(cfg.min_table_size))
        .max(2);
    next_prime(want.min(MAGLEV_MAX_TABLE))
}

/// Pseudocode 1 of the paper, over the available back-ends.
fn populate(avail: &[bool], cfg: &MaglevConfig) -> Vec<u32> {
    let members: Vec<usize> = (0..avail.len()).filter(|&i| avail[i]).collect();
    if members.is_empty() {
        return Vec::new();
    }
    let m = table_size(avail.len(), cfg);
    // (position, skip) per member: position walks the member's preference
    // permutation (offset + j * skip) mod M by repeated addition. The hashes
    // name the back-end by its index so its preferences survive others
    // coming and going.
    let mut prefs: Vec<(u64, u64)> = members
        .iter()
        .map(|&i| {
            let id = (i as u64).to_le_bytes();
            let offset = hash_parts(0x6d61_676c, &[&id]) % m;
            let skip = hash_parts(0x736b_6970, &[&id]) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    const EMPTY: u32 = u32::MAX;
    let mut table = vec![EMPTY; m as usize];
    let mut filled = 0u64;
    let step = |pos: &mut u64, skip: u64| {
        *pos += skip;
        if *pos >= m {
            *pos -= m;
        }
    };
    'fill: loop {
        for (k, &i) in members.iter().enumerate() {
            let (pos, skip) = &mut prefs[k];
            // M is prime and 1 <= skip < M, so the permutation visits every
            // slot: this loop ends while a free slot remains.
            while table[*pos as usize] != EMPTY {
                step(pos, *skip);
            }
            table[*pos as usize] = i as u32;
            step(pos, *skip);
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    table
}

impl Policy for Maglev {
    fn name(&self) -> &'static str {
        "maglev"
    }

    fn pick(&mut self, req: &Request<'_>, cluster: &[BackendView], _now_ms: u64) -> Option<usize> {
        self.refresh(cluster);
        if self.table.is_empty() {
            return None;
        }
        let slot = self.cfg.key.hash(req) % self.table.len() as u64;
        self.table.get(slot as usize).map(|&i| i as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views(n: usize) -> Vec<BackendView> {
        vec![
            BackendView {
                up: true,
                draining: false,
                load: 0,
                weight: 1,
            };
            n
        ]
    }

    #[test]
    fn table_is_prime_sized_and_balanced() {
        let mut m = Maglev::new(MaglevConfig {
            min_table_size: 0,
            ..MaglevConfig::default()
        })
        .unwrap();
        m.refresh(&views(7));
        assert_eq!(m.table().len(), 701);
        let mut counts = [0usize; 7];
        for &i in m.table() {
            counts[i as usize] += 1;
        }
        // Round-robin claiming gives each back-end floor or ceil of M/N.
        assert!(counts.iter().all(|&c| c == 100 || c == 101), "{counts:?}");
        let mut big = Maglev::default();
        big.refresh(&views(7));
        assert_eq!(big.table().len(), 65_537);
        big.refresh(&views(1000));
        assert_eq!(big.table().len(), 100_003);
    }

    #[test]
    fn same_input_same_table() {
        let mut a = Maglev::default();
        let mut b = Maglev::default();
        a.refresh(&views(5));
        b.refresh(&views(5));
        assert_eq!(a.table(), b.table());
    }
}
