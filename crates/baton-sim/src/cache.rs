//! A byte-bounded LRU cache of whole objects, as one back-end's memory.

use std::collections::HashMap;

use crate::workload::FixedState;

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Slot {
    target: u32,
    size: u64,
    /// When the object is in memory (its disk read completes); a request
    /// arriving earlier waits for that read instead of issuing another.
    ready_at: u64,
    prev: u32,
    next: u32,
}

/// LRU over objects; `used <= capacity` always. Objects larger than the
/// whole cache are never inserted.
#[derive(Debug, Clone)]
pub(crate) struct Lru {
    capacity: u64,
    used: u64,
    index: HashMap<u32, u32, FixedState>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
}

/// The outcome of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// In memory from `ready_at` on (maybe in the future: read in flight).
    Hit {
        ready_at: u64,
    },
    Miss,
}

impl Lru {
    pub(crate) fn new(capacity: u64) -> Self {
        Self {
            capacity,
            used: 0,
            index: HashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }

    #[cfg(test)]
    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    /// Looks `target` up and, on a hit, makes it most recently used.
    pub(crate) fn lookup(&mut self, target: u32) -> Lookup {
        match self.index.get(&target) {
            Some(&s) => {
                self.unlink(s);
                self.push_front(s);
                Lookup::Hit {
                    ready_at: self.slots[s as usize].ready_at,
                }
            }
            None => Lookup::Miss,
        }
    }

    /// Inserts `target` (not present) as most recently used, evicting from
    /// the LRU end until it fits. No-op if it can never fit.
    pub(crate) fn insert(&mut self, target: u32, size: u64, ready_at: u64) {
        if size > self.capacity {
            return;
        }
        while self.used + size > self.capacity && self.tail != NIL {
            let t = self.tail;
            self.unlink(t);
            let slot = &self.slots[t as usize];
            self.used -= slot.size;
            self.index.remove(&slot.target);
            self.free.push(t);
        }
        let slot = Slot {
            target,
            size,
            ready_at,
            prev: NIL,
            next: NIL,
        };
        let s = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = slot;
                s
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(target, s);
        self.used += size;
        self.push_front(s);
    }

    fn unlink(&mut self, s: u32) {
        let (prev, next) = {
            let slot = &self.slots[s as usize];
            (slot.prev, slot.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
    }

    fn push_front(&mut self, s: u32) {
        let old = self.head;
        {
            let slot = &mut self.slots[s as usize];
            slot.prev = NIL;
            slot.next = old;
        }
        if old == NIL {
            self.tail = s;
        } else {
            self.slots[old as usize].prev = s;
        }
        self.head = s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_and_respects_capacity() {
        let mut c = Lru::new(100);
        c.insert(1, 40, 0);
        c.insert(2, 40, 5);
        assert_eq!(c.lookup(1), Lookup::Hit { ready_at: 0 });
        // 3 needs room: 2 is the LRU one now.
        c.insert(3, 40, 0);
        assert_eq!(c.lookup(2), Lookup::Miss);
        assert_eq!(c.lookup(1), Lookup::Hit { ready_at: 0 });
        assert_eq!(c.lookup(3), Lookup::Hit { ready_at: 0 });
        assert_eq!(c.used(), 80);
        // Too big for the cache: not inserted, nothing evicted.
        c.insert(4, 101, 0);
        assert_eq!(c.lookup(4), Lookup::Miss);
        assert_eq!(c.used(), 80);
        // Exactly the capacity: evicts everything else.
        c.insert(5, 100, 0);
        assert_eq!(c.used(), 100);
        assert_eq!(c.lookup(1), Lookup::Miss);
        assert_eq!(c.lookup(3), Lookup::Miss);
        for t in 10..1000 {
            c.insert(t, u64::from(t % 37 + 1), 0);
            assert!(c.used() <= 100);
        }
    }
}
