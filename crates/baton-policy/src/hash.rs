//! Stable hashing and small number theory shared by the policies.
//!
//! The hashes are fixed functions (no per-process keys) so that the same
//! target maps to the same back-end across restarts and across fronts, which
//! is what consistent hashing is for. An attacker who can choose paths can
//! make targets collide; for a locality policy that only means two targets
//! share a node, never a crash or unbounded work.

/// The SplitMix64 finalizer: a bijective 64-bit avalanche mix.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a, fed part by part; each part ends with a 0xff separator so that
/// `("ab","c")` and `("a","bc")` differ. Finished with [`mix64`] because
/// FNV's low bits alone are too weak for `% table_size`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv(u64);

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Fnv {
    pub(crate) fn new(seed: u64) -> Self {
        Self(0xcbf2_9ce4_8422_2325 ^ seed)
    }

    fn byte(&mut self, b: u8) {
        self.0 ^= u64::from(b);
        self.0 = self.0.wrapping_mul(FNV_PRIME);
    }

    pub(crate) fn part(mut self, bytes: &[u8]) -> Self {
        bytes.iter().for_each(|&b| self.byte(b));
        self.byte(0xff);
        self
    }

    /// Like [`Fnv::part`], ASCII case-folded.
    pub(crate) fn part_lower(mut self, bytes: &[u8]) -> Self {
        bytes
            .iter()
            .for_each(|&b| self.byte(b.to_ascii_lowercase()));
        self.byte(0xff);
        self
    }

    pub(crate) fn finish(self) -> u64 {
        mix64(self.0)
    }
}

/// [`Fnv`] over `parts`.
pub(crate) fn hash_parts(seed: u64, parts: &[&[u8]]) -> u64 {
    parts.iter().fold(Fnv::new(seed), |h, p| h.part(p)).finish()
}

/// Smallest prime >= `n` (n >= 2). Trial division: the tables we size are
/// at most a few million entries, so this is microseconds.
pub(crate) fn next_prime(n: u64) -> u64 {
    let mut c = n.max(2);
    while !is_prime(c) {
        c += 1;
    }
    c
}

fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 {
        return false;
    }
    let mut d = 3;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        assert_eq!(next_prime(0), 2);
        assert_eq!(next_prime(100), 101);
        assert_eq!(next_prime(800), 809);
        assert_eq!(next_prime(65536), 65537);
    }

    #[test]
    fn parts_are_separated() {
        assert_ne!(hash_parts(0, &[b"ab", b"c"]), hash_parts(0, &[b"a", b"bc"]));
        assert_eq!(hash_parts(7, &[b"/x"]), hash_parts(7, &[b"/x"]));
        assert_ne!(hash_parts(7, &[b"/x"]), hash_parts(8, &[b"/x"]));
    }
}
