//! [`ObjectCache`]: a byte-bounded in-memory object cache with SIEVE eviction.
//!
//! Pure and synchronous: no I/O, no clock, no locks. The proxy wraps it in a mutex.
//!
//! # Why SIEVE
//!
//! SIEVE (Zhang et al., "SIEVE is Simpler than LRU", NSDI 2024) keeps objects in one FIFO
//! queue with one "visited" bit each. A hit only sets the bit: nothing moves, unlike LRU's
//! move-to-front. To make room, a hand walks from the oldest object towards the newest,
//! clearing set bits and evicting the first object whose bit is clear; it keeps its place
//! between evictions. New objects enter at the newest end, so an object requested once
//! ("one-hit wonder", a large share of web and CDN traffic) is the first candidate when the
//! hand reaches it, while an object hit since the hand last passed survives. On the web and
//! CDN traces of that paper it has a lower miss ratio than LRU on most traces, at the cost of
//! ten lines more than a FIFO. It is not scan-resistant in general, which matters for block
//! storage, not for a web cache in front of an origin.
//!
//! # Accounting
//!
//! Each entry is charged [`charge`] bytes: its body, its key, its stored header values, and
//! [`ENTRY_OVERHEAD`] for the bookkeeping around them. The key and headers are charged too,
//! beyond a fixed overhead, because keys come from clients: without it, many distinct long
//! query strings on empty bodies would hold far more memory than the capacity says.
//!
//! # Invariants (checked by the property tests)
//!
//! - `bytes_cached() <= capacity()` after every operation, and equals the sum of the charges
//!   of the entries.
//! - `lookups == hits + misses`; a hit returns exactly the object last inserted under the key.
//! - An object larger than [`ObjectCache::max_object_size`], or whose charge exceeds the
//!   capacity, is never stored (and is counted in `too_large`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use serde::Serialize;

/// Bytes charged per entry on top of its body, key and header values: the queue node, the
/// index slot, the shared object and the reference-counted key and body allocations, about
/// 330 bytes on a 64-bit target, rounded up for allocator slack. A unit test checks that it
/// covers the sizes of those structures.
pub const ENTRY_OVERHEAD: u64 = 384;

/// One cached response: the body of a `200 OK` and the headers that describe it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CachedObject {
    pub body: Bytes,
    pub content_type: Option<HeaderValue>,
    pub etag: Option<HeaderValue>,
    pub last_modified: Option<HeaderValue>,
}

impl CachedObject {
    /// An object with a body and no headers.
    pub fn new(body: Bytes) -> Self {
        CachedObject {
            body,
            ..CachedObject::default()
        }
    }

    fn header_bytes(&self) -> u64 {
        [&self.content_type, &self.etag, &self.last_modified]
            .into_iter()
            .flatten()
            .map(|v| v.len() as u64)
            .sum()
    }
}

/// The bytes an entry counts against the capacity (see the module doc).
pub fn charge(key: &str, object: &CachedObject) -> u64 {
    ENTRY_OVERHEAD
        .saturating_add(key.len() as u64)
        .saturating_add(object.body.len() as u64)
        .saturating_add(object.header_bytes())
}

/// A snapshot of the cache's counters and occupancy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheCounters {
    /// Capacity in bytes (charges, see [`charge`]).
    pub capacity: u64,
    /// Largest body that is cached; larger ones are served but not stored.
    pub max_object_size: u64,
    /// Sum of the charges of the entries, never above `capacity`.
    pub bytes_cached: u64,
    /// Entries.
    pub objects: u64,
    /// Calls to [`ObjectCache::get`]; always `hits + misses`.
    pub lookups: u64,
    pub hits: u64,
    pub misses: u64,
    /// Objects stored (a replacement of a key counts again).
    pub inserts: u64,
    /// Entries removed to make room.
    pub evictions: u64,
    /// Objects refused because of their size.
    pub too_large: u64,
    /// Body bytes received from the origin, cached or not.
    pub origin_bytes: u64,
    /// Origin fetches that failed: refused, timed out, cut short, unparsable.
    pub origin_errors: u64,
}

/// What [`ObjectCache::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// Stored, after evicting `evicted` other entries.
    Stored { evicted: u64 },
    /// Not stored: the body exceeds the maximum object size, or the charge the capacity. Any
    /// older entry under the key is removed, since it no longer describes the origin's object.
    TooLarge,
}

#[derive(Debug)]
struct Node {
    key: Arc<str>,
    object: Arc<CachedObject>,
    charge: u64,
    visited: bool,
    /// Towards the newest end of the queue.
    newer: Option<usize>,
    /// Towards the oldest end.
    older: Option<usize>,
}

/// A byte-bounded object cache keyed by request target (path and query), with SIEVE eviction.
#[derive(Debug)]
pub struct ObjectCache {
    capacity: u64,
    max_object_size: u64,
    used: u64,
    index: HashMap<Arc<str>, usize>,
    /// Queue nodes in a slab; `None` slots are listed in `free`.
    slots: Vec<Option<Node>>,
    free: Vec<usize>,
    newest: Option<usize>,
    oldest: Option<usize>,
    /// SIEVE's hand: the next eviction candidate; `None` means start at the oldest.
    hand: Option<usize>,
    counters: CacheCounters,
}

impl ObjectCache {
    /// A cache of `capacity` bytes, caching objects up to `capacity / 8` bytes. A capacity of
    /// 0 caches nothing (every object is too large) but still counts.
    pub fn new(capacity: u64) -> Self {
        ObjectCache {
            capacity,
            max_object_size: capacity / 8,
            used: 0,
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            newest: None,
            oldest: None,
            hand: None,
            counters: CacheCounters::default(),
        }
    }

    /// Sets the largest body that is cached.
    pub fn with_max_object_size(mut self, bytes: u64) -> Self {
        self.max_object_size = bytes;
        self
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn max_object_size(&self) -> u64 {
        self.max_object_size
    }

    /// Sum of the charges of the entries.
    pub fn bytes_cached(&self) -> u64 {
        self.used
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether `key` is cached, without counting a lookup or marking it visited.
    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheCounters {
        CacheCounters {
            capacity: self.capacity,
            max_object_size: self.max_object_size,
            bytes_cached: self.used,
            objects: self.index.len() as u64,
            ..self.counters
        }
    }

    /// Looks `key` up, counting a hit or a miss; a hit marks the entry visited.
    pub fn get(&mut self, key: &str) -> Option<Arc<CachedObject>> {
        self.counters.lookups += 1;
        let found = self
            .index
            .get(key)
            .copied()
            .and_then(|i| self.node_mut(i))
            .map(|node| {
                node.visited = true;
                Arc::clone(&node.object)
            });
        match found {
            Some(_) => self.counters.hits += 1,
            None => self.counters.misses += 1,
        }
        found
    }

    /// Whether an object of `body_len` bytes under `key` would be refused as too large,
    /// judged before its headers are known.
    pub fn too_large(&self, key: &str, body_len: u64) -> bool {
        let min_charge = ENTRY_OVERHEAD
            .saturating_add(key.len() as u64)
            .saturating_add(body_len);
        body_len > self.max_object_size || min_charge > self.capacity
    }

    /// Stores `object` under `key` as the newest entry, evicting as SIEVE picks until it fits.
    /// A previous entry under the key is replaced (not counted as an eviction).
    pub fn insert(&mut self, key: &str, object: Arc<CachedObject>) -> Insert {
        let charge = charge(key, &object);
        if object.body.len() as u64 > self.max_object_size || charge > self.capacity {
            self.remove(key);
            self.counters.too_large += 1;
            return Insert::TooLarge;
        }
        self.remove(key);
        let mut evicted = 0;
        while self.used.saturating_add(charge) > self.capacity {
            if !self.evict_one() {
                break;
            }
            evicted += 1;
        }
        // Unreachable while the accounting holds (an empty cache has room for any charge up
        // to the capacity); refusing keeps the capacity bound even if it did not.
        if self.used.saturating_add(charge) > self.capacity {
            debug_assert!(false, "cache accounting drifted");
            self.counters.too_large += 1;
            return Insert::TooLarge;
        }
        let key: Arc<str> = Arc::from(key);
        let node = Node {
            key: Arc::clone(&key),
            object,
            charge,
            visited: false,
            newer: None,
            older: self.newest,
        };
        let slot = match self.free.pop() {
            Some(i) => {
                if let Some(s) = self.slots.get_mut(i) {
                    *s = Some(node);
                }
                i
            }
            None => {
                self.slots.push(Some(node));
                self.slots.len() - 1
            }
        };
        if let Some(prev) = self.newest.and_then(|i| self.node_mut(i)) {
            prev.newer = Some(slot);
        }
        self.newest = Some(slot);
        if self.oldest.is_none() {
            self.oldest = Some(slot);
        }
        self.index.insert(key, slot);
        self.used += charge;
        self.counters.inserts += 1;
        self.counters.evictions += evicted;
        Insert::Stored { evicted }
    }

    /// Removes `key`; returns whether it was cached. Not counted as an eviction.
    pub fn remove(&mut self, key: &str) -> bool {
        match self.index.get(key).copied() {
            Some(i) => self.unlink(i).is_some(),
            None => false,
        }
    }

    /// Counts body bytes received from the origin.
    pub fn record_origin_bytes(&mut self, bytes: u64) {
        self.counters.origin_bytes = self.counters.origin_bytes.saturating_add(bytes);
    }

    /// Counts a failed origin fetch.
    pub fn record_origin_error(&mut self) {
        self.counters.origin_errors += 1;
    }

    /// Counts an object refused for its size without being offered to [`Self::insert`] (the
    /// proxy learns it from `Content-Length`, or while reading, and streams it through).
    pub fn record_too_large(&mut self) {
        self.counters.too_large += 1;
    }

    #[cfg(test)]
    fn node(&self, i: usize) -> Option<&Node> {
        self.slots.get(i).and_then(Option::as_ref)
    }

    fn node_mut(&mut self, i: usize) -> Option<&mut Node> {
        self.slots.get_mut(i).and_then(Option::as_mut)
    }

    /// Evicts one entry as SIEVE picks it. Returns false if the cache is empty.
    fn evict_one(&mut self) -> bool {
        let Some(mut at) = self.hand.or(self.oldest) else {
            return false;
        };
        // One full pass clears every bit, so the hand stops within len + 1 steps.
        let bound = 2 * self.index.len() + 2;
        for _ in 0..bound {
            let oldest = self.oldest;
            let Some(node) = self.node_mut(at) else {
                break;
            };
            if !node.visited {
                break;
            }
            node.visited = false;
            match node.newer.or(oldest) {
                Some(next) => at = next,
                None => break,
            }
        }
        match self.unlink(at) {
            Some(node) => {
                self.hand = node.newer;
                true
            }
            None => false,
        }
    }

    /// Takes node `i` out of the queue, the index and the accounting.
    fn unlink(&mut self, i: usize) -> Option<Node> {
        let node = self.slots.get_mut(i)?.take()?;
        match node.older.and_then(|o| self.node_mut(o)) {
            Some(older) => older.newer = node.newer,
            None => self.oldest = node.newer,
        }
        match node.newer.and_then(|n| self.node_mut(n)) {
            Some(newer) => newer.older = node.older,
            None => self.newest = node.older,
        }
        if self.hand == Some(i) {
            self.hand = node.newer;
        }
        self.free.push(i);
        self.index.remove(&node.key);
        self.used -= node.charge;
        Some(node)
    }

    /// Keys from the oldest to the newest, with their visited bits.
    #[cfg(test)]
    fn queue(&self) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        let mut at = self.oldest;
        while let Some(node) = at.and_then(|i| self.node(i)) {
            out.push((node.key.to_string(), node.visited));
            at = node.newer;
            if out.len() > self.slots.len() {
                break;
            }
        }
        out
    }

    #[cfg(test)]
    fn hand_key(&self) -> Option<String> {
        self.hand
            .and_then(|i| self.node(i))
            .map(|n| n.key.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn obj(len: usize, fill: u8) -> Arc<CachedObject> {
        Arc::new(CachedObject::new(Bytes::from(vec![fill; len])))
    }

    /// Capacity for `n` entries of `len`-byte bodies under one-character keys.
    fn room_for(n: u64, len: u64) -> u64 {
        n * (ENTRY_OVERHEAD + 1 + len)
    }

    #[test]
    fn overhead_covers_the_bookkeeping() {
        use std::mem::size_of;
        let per_entry = size_of::<Option<Node>>()          // slab slot
            + size_of::<(Arc<str>, usize)>() + 1           // index slot and control byte
            + 2 * size_of::<usize>()                       // Arc<str> counts
            + 2 * size_of::<usize>() + size_of::<CachedObject>() // Arc<CachedObject>
            + size_of::<usize>(); // free-list slot
        assert!(
            (per_entry as u64) <= ENTRY_OVERHEAD,
            "{per_entry} bytes of bookkeeping"
        );
    }

    #[test]
    fn hit_returns_the_stored_bytes_and_counts() {
        let mut c = ObjectCache::new(1 << 20);
        assert!(c.get("/a").is_none());
        let a = Arc::new(CachedObject {
            body: Bytes::from_static(b"hello"),
            content_type: Some(HeaderValue::from_static("text/plain")),
            etag: Some(HeaderValue::from_static("\"x\"")),
            last_modified: None,
        });
        assert_eq!(
            c.insert("/a", Arc::clone(&a)),
            Insert::Stored { evicted: 0 }
        );
        assert_eq!(c.get("/a").as_deref(), Some(&*a));
        let s = c.stats();
        assert_eq!((s.lookups, s.hits, s.misses, s.inserts), (2, 1, 1, 1));
        assert_eq!(s.bytes_cached, ENTRY_OVERHEAD + 2 + 5 + 10 + 3);
        assert_eq!(s.objects, 1);
        assert!(c.get("/a?v=2").is_none(), "the query is part of the key");
    }

    #[test]
    fn replacing_a_key_keeps_one_entry() {
        let mut c = ObjectCache::new(1 << 20);
        c.insert("/a", obj(10, 1));
        c.insert("/a", obj(20, 2));
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes_cached(), ENTRY_OVERHEAD + 2 + 20);
        assert_eq!(c.get("/a").map(|o| o.body.len()), Some(20));
        assert_eq!(c.stats().evictions, 0);
    }

    #[test]
    fn too_large_objects_are_refused_and_drop_a_stale_copy() {
        let mut c = ObjectCache::new(8000);
        assert_eq!(c.max_object_size(), 1000);
        assert!(c.too_large("/a", 1001));
        assert!(!c.too_large("/a", 1000));
        c.insert("/a", obj(1000, 1));
        assert_eq!(c.insert("/a", obj(1001, 2)), Insert::TooLarge);
        assert!(!c.contains("/a"));
        assert_eq!(c.bytes_cached(), 0);
        // A key so long that the charge alone exceeds the capacity.
        let long = format!("/{}", "k".repeat(8000));
        assert!(c.too_large(&long, 0));
        assert_eq!(c.insert(&long, obj(0, 0)), Insert::TooLarge);
        assert_eq!(c.stats().too_large, 2);
        let mut zero = ObjectCache::new(0);
        assert_eq!(zero.insert("/", obj(0, 0)), Insert::TooLarge);
    }

    #[test]
    fn eviction_makes_exactly_enough_room() {
        let mut c = ObjectCache::new(room_for(4, 100)).with_max_object_size(1000);
        for k in ["a", "b", "c", "d"] {
            c.insert(k, obj(100, 0));
        }
        assert_eq!(c.bytes_cached(), c.capacity());
        // Twice the size: two entries go, the two oldest unvisited ones.
        assert_eq!(
            c.insert("e", obj(201 + ENTRY_OVERHEAD as usize, 0)),
            Insert::Stored { evicted: 2 }
        );
        assert_eq!(
            c.queue()
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            ["c", "d", "e"]
        );
        assert_eq!(c.stats().evictions, 2);
    }

    #[test]
    fn sieve_spares_a_visited_object_that_lru_would_evict() {
        // Four slots; "hot" is requested once, then a scan of cold one-hit wonders arrives.
        let mut c = ObjectCache::new(room_for(4, 10));
        for k in ["h", "a", "b", "c"] {
            c.insert(k, obj(10, 0));
        }
        assert!(c.get("h").is_some());
        // LRU would now hold h as most recent and evict a, b, c, then h on the fourth cold
        // insert. SIEVE clears h's bit once and evicts the unvisited objects around it.
        for k in ["1", "2", "3", "4"] {
            c.insert(k, obj(10, 0));
        }
        assert!(c.contains("h"), "{:?}", c.queue());
        // Once everything newer has been requested since the hand passed h, and h has not,
        // the hand wraps around to h and evicts it.
        let others: Vec<String> = c
            .queue()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k != "h")
            .collect();
        for k in &others {
            assert!(c.get(k).is_some());
        }
        c.insert("5", obj(10, 0));
        assert!(!c.contains("h"), "{:?}", c.queue());
        assert!(others.iter().all(|k| c.contains(k)));
    }

    #[test]
    fn hand_stays_between_evictions() {
        let mut c = ObjectCache::new(room_for(3, 10));
        for k in ["a", "b", "c"] {
            c.insert(k, obj(10, 0));
        }
        c.get("a");
        c.get("b");
        c.insert("d", obj(10, 0)); // clears a and b, evicts c; the hand wraps (c was newest)
        assert_eq!(c.hand_key(), None);
        assert_eq!(
            c.queue(),
            [
                ("a".into(), false),
                ("b".into(), false),
                ("d".into(), false)
            ]
        );
        c.get("d");
        c.insert("e", obj(10, 0)); // evicts a (oldest, bit clear); hand moves to b
        assert_eq!(c.hand_key().as_deref(), Some("b"));
        c.remove("b"); // the hand moves on to the next newer entry
        assert_eq!(c.hand_key().as_deref(), Some("d"));
    }

    #[test]
    fn remove_unlinks_anywhere() {
        let mut c = ObjectCache::new(room_for(5, 1));
        for k in ["a", "b", "c", "d", "e"] {
            c.insert(k, obj(1, 0));
        }
        assert!(c.remove("c") && c.remove("a") && c.remove("e"));
        assert!(!c.remove("a"));
        assert_eq!(
            c.queue()
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            ["b", "d"]
        );
        assert_eq!(c.bytes_cached(), room_for(2, 1));
        // Freed slots are reused.
        c.insert("f", obj(1, 0));
        assert_eq!(c.slots.len(), 5);
    }

    /// The reference SIEVE: a vector from the oldest to the newest, O(n) per operation.
    #[derive(Debug, Default)]
    struct Naive {
        queue: Vec<(String, u64, bool, u8)>,
        hand: Option<usize>,
        used: u64,
    }

    impl Naive {
        fn position(&self, key: &str) -> Option<usize> {
            self.queue.iter().position(|e| e.0 == key)
        }

        fn remove_at(&mut self, i: usize) {
            let e = self.queue.remove(i);
            self.used -= e.1;
            self.hand = match self.hand {
                Some(h) if h > i => Some(h - 1),
                Some(h) if h == i => (i < self.queue.len()).then_some(i),
                other => other,
            };
        }

        fn evict(&mut self) {
            let mut i = self.hand.unwrap_or(0);
            while self.queue[i].2 {
                self.queue[i].2 = false;
                i = if i + 1 < self.queue.len() { i + 1 } else { 0 };
            }
            let e = self.queue.remove(i);
            self.used -= e.1;
            self.hand = (i < self.queue.len()).then_some(i);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Get(u8),
        Insert(u8, u16, u8),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..24).prop_map(Op::Get),
            3 => (0u8..24, 0u16..3000, any::<u8>()).prop_map(|(k, l, f)| Op::Insert(k, l, f)),
            1 => (0u8..24).prop_map(Op::Remove),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn matches_reference_sieve_and_keeps_invariants(
            capacity in 0u64..12_000,
            max_object in 0u64..3000,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let mut c = ObjectCache::new(capacity).with_max_object_size(max_object);
            let mut naive = Naive::default();
            let mut gets = 0u64;
            let mut hits = 0u64;
            for op in ops {
                match op {
                    Op::Get(k) => {
                        let key = format!("/k{k}");
                        gets += 1;
                        let got = c.get(&key);
                        let want = naive.position(&key);
                        prop_assert_eq!(got.is_some(), want.is_some());
                        if let (Some(got), Some(i)) = (got, want) {
                            hits += 1;
                            naive.queue[i].2 = true;
                            let (_, charge, _, fill) = naive.queue[i];
                            let len = charge - ENTRY_OVERHEAD - key.len() as u64;
                            prop_assert_eq!(got.body.len() as u64, len);
                            prop_assert!(got.body.iter().all(|&b| b == fill), "wrong bytes on hit");
                        }
                    }
                    Op::Insert(k, len, fill) => {
                        let key = format!("/k{k}");
                        let o = obj(usize::from(len), fill);
                        let ch = charge(&key, &o);
                        let result = c.insert(&key, o);
                        if let Some(i) = naive.position(&key) {
                            naive.remove_at(i);
                        }
                        if u64::from(len) > max_object || ch > capacity {
                            prop_assert_eq!(result, Insert::TooLarge);
                        } else {
                            let mut evicted = 0;
                            while naive.used + ch > capacity {
                                naive.evict();
                                evicted += 1;
                            }
                            naive.queue.push((key.clone(), ch, false, fill));
                            naive.used += ch;
                            prop_assert_eq!(result, Insert::Stored { evicted });
                        }
                    }
                    Op::Remove(k) => {
                        let key = format!("/k{k}");
                        let was = naive.position(&key);
                        if let Some(i) = was {
                            naive.remove_at(i);
                        }
                        prop_assert_eq!(c.remove(&key), was.is_some());
                    }
                }
                let s = c.stats();
                prop_assert!(s.bytes_cached <= capacity);
                prop_assert_eq!(s.bytes_cached, naive.used);
                prop_assert_eq!(s.objects as usize, naive.queue.len());
                let entries: u64 = c.slots.iter().flatten().map(|n| n.charge).sum();
                prop_assert_eq!(s.bytes_cached, entries);
                prop_assert_eq!(s.lookups, s.hits + s.misses);
                prop_assert_eq!((s.lookups, s.hits), (gets, hits));
                let order: Vec<(String, bool)> =
                    naive.queue.iter().map(|e| (e.0.clone(), e.2)).collect();
                prop_assert_eq!(c.queue(), order);
                let naive_hand = naive.hand.map(|i| naive.queue[i].0.clone());
                prop_assert_eq!(c.hand_key(), naive_hand);
            }
        }
    }
}
