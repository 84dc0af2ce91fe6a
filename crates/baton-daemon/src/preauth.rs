//! The back-end's handshake slots: how many connections to the control
//! port may be authenticating at once, shared fairly among the addresses
//! they come from.
//!
//! A connection holds a slot from its accept until its handshake ends
//! (authenticated, rejected, or the handshake timeout). When every slot is
//! taken, a new connection is still let in: the oldest handshake of the
//! address that holds the most slots gives its slot up (it may be the
//! newcomer's own address). So a stranger who keeps connections open without
//! the key only ever pushes out its own, as long as it comes from fewer
//! addresses than there are slots; a front, which holds one slot for the
//! millisecond its handshake takes, gets in at once instead of waiting for
//! the stranger's handshakes to time out.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// See the module's documentation.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    total: usize,
    /// Per address, its handshakes oldest first: (id, eviction notice).
    held: HashMap<IpAddr, VecDeque<(u64, oneshot::Sender<()>)>>,
}

/// One handshake's slot; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
    id: u64,
    evicted: oneshot::Receiver<()>,
}

impl Slots {
    /// `max` slots (at least one).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            inner: Mutex::default(),
        })
    }

    /// A slot for a handshake from `ip`. If all were taken, one was taken
    /// back first (see the module's documentation); returns whether so.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> (Slot, bool) {
        let mut inner = self.lock();
        let mut evicted = false;
        if inner.total >= self.max {
            inner.evict_one();
            evicted = true;
        }
        let id = inner.next;
        inner.next += 1;
        let (tx, rx) = oneshot::channel();
        inner.held.entry(ip).or_default().push_back((id, tx));
        inner.total += 1;
        let slot = Slot {
            slots: Arc::clone(self),
            ip,
            id,
            evicted: rx,
        };
        (slot, evicted)
    }

    /// Handshakes in progress.
    pub fn in_use(&self) -> usize {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// Takes back the oldest slot of the address holding the most (of
    /// those, the one whose oldest handshake is oldest).
    fn evict_one(&mut self) {
        let victim = self
            .held
            .iter()
            .filter_map(|(ip, q)| {
                q.front()
                    .map(|(id, _)| (q.len(), std::cmp::Reverse(*id), *ip))
            })
            .max()
            .map(|(_, _, ip)| ip);
        let Some(ip) = victim else {
            return;
        };
        if let Some(q) = self.held.get_mut(&ip) {
            if let Some((_, tx)) = q.pop_front() {
                // The handshake may have ended a moment ago: then nobody hears.
                let _ = tx.send(());
                self.total -= 1;
            }
            if q.is_empty() {
                self.held.remove(&ip);
            }
        }
    }
}

impl Slot {
    /// Resolves when this slot was taken back for a newer connection; never
    /// otherwise.
    pub async fn evicted(&mut self) {
        if (&mut self.evicted).await.is_err() {
            // Only `Slots` holds the sender; dropped without a word means
            // the slot was not taken back.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut guard = self.slots.lock();
        let inner = &mut *guard;
        if let Some(q) = inner.held.get_mut(&self.ip) {
            if let Some(at) = q.iter().position(|(id, _)| *id == self.id) {
                q.remove(at);
                inner.total -= 1;
            }
            if q.is_empty() {
                inner.held.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([198, 18, 0, last])
    }

    /// Whether `slot` has been told it was evicted.
    fn is_evicted(slot: &mut Slot) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let fut = std::pin::pin!(slot.evicted());
        matches!(fut.poll(&mut cx), Poll::Ready(()))
    }

    #[test]
    fn a_stranger_filling_every_slot_cannot_keep_a_front_out() {
        let slots = Slots::new(16);
        let mut stranger: Vec<Slot> = (0..16).map(|_| slots.acquire(ip(2)).0).collect();
        assert_eq!(slots.in_use(), 16);
        let (mut front, evicted) = slots.acquire(ip(3));
        assert!(evicted);
        assert!(is_evicted(&mut stranger[0]), "the stranger's oldest goes");
        assert!(stranger[1..].iter_mut().all(|s| !is_evicted(s)));
        // The stranger keeps reconnecting: it only ever pushes out its own.
        for _ in 0..100 {
            stranger.push(slots.acquire(ip(2)).0);
            assert!(!is_evicted(&mut front));
        }
        assert_eq!(slots.in_use(), 16);
        drop(front);
        assert_eq!(slots.in_use(), 15);
    }

    #[test]
    fn strangers_from_many_addresses_push_out_the_oldest_handshake() {
        let slots = Slots::new(4);
        let mut held: Vec<Slot> = (0..4).map(|i| slots.acquire(ip(10 + i)).0).collect();
        let (_newest, evicted) = slots.acquire(ip(20));
        assert!(evicted);
        assert!(is_evicted(&mut held[0]));
        assert!(held[1..].iter_mut().all(|s| !is_evicted(s)));
        // Dropping an evicted slot gives back nothing more.
        held.remove(0);
        assert_eq!(slots.in_use(), 4);
    }

    #[test]
    fn slots_are_given_back_and_never_evicted_while_free_ones_remain() {
        let slots = Slots::new(3);
        let (mut a, ea) = slots.acquire(ip(2));
        let (b, eb) = slots.acquire(ip(2));
        assert!(!ea && !eb);
        drop(b);
        let (_c, ec) = slots.acquire(ip(2));
        let (_d, ed) = slots.acquire(ip(3));
        assert!(!ec && !ed);
        assert!(!is_evicted(&mut a));
        assert_eq!(slots.in_use(), 3);
    }
}
