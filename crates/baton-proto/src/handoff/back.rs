//! The back-end's handoff engine: which handoffs to restore, which
//! connections it serves for which front, where their `Closed` reports go,
//! and what every other front is told about them (`Mirror`, `Unmirror`,
//! `Mirroring`: every front can steer every flow).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::flow::FlowKey;
use crate::frame::{Handoff, MirrorFlow, MirrorRef, ToBack, ToFront, HOLDING_CHUNK, MIRROR_CHUNK};

/// A control channel, numbered by the driver (never reused).
pub type ChannelId = u64;

/// Why a restore was refused, and whose fault it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    /// The back-end cannot restore anything now (the front pauses it);
    /// otherwise only this connection could not be restored.
    pub backend_fault: bool,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackAction {
    /// Restore the socket, take it out of repair mode and serve it; answer
    /// with [`BackEngine::handle_restored`].
    Restore {
        channel: ChannelId,
        handoff: Handoff,
    },
    /// Write a frame on a channel. Frames handed out together should go in
    /// one write.
    Send { channel: ChannelId, frame: ToFront },
    /// The front gave up on a connection this back-end already serves:
    /// reset it.
    Reset { front: IpAddr, id: u64 },
}

/// What happened, for counters and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackEvent {
    /// A handoff was refused before any syscall (wrong VIP, repeated id,
    /// draining).
    Refused { id: u64, reason: String },
    /// An `Abort` cancelled a handoff before it was restored.
    Cancelled { id: u64 },
    /// An `Abort` for a connection already live: it is reset.
    Aborted { id: u64 },
    /// `Closed` could not be reported: no channel to that front. Its next
    /// channel's `Holding` will not list the connection.
    Unreported { id: u64 },
    /// A frame about a handoff this back-end does not know: ignored.
    Stale { kind: &'static str },
}

#[derive(Debug)]
struct Chan {
    front: IpAddr,
    /// Reports waiting for the batch deadline.
    batch: Batch,
}

/// What waits up to the batch delay to share one write: `Closed` reports
/// for this channel's front, and what other fronts' connections did.
#[derive(Debug, Default)]
struct Batch {
    closed: Vec<ToFront>,
    mirror: Vec<MirrorFlow>,
    unmirror: Vec<MirrorRef>,
}

impl Batch {
    fn len(&self) -> usize {
        self.closed.len() + self.mirror.len() + self.unmirror.len()
    }
}

#[derive(Debug, Clone)]
struct Held {
    flow: FlowKey,
    channel: ChannelId,
    /// The `Handoff`'s hint, echoed to the other fronts.
    hint: Bytes,
}

/// Deadlines of the back-end engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Write the reports queued on a channel.
    Batch(ChannelId),
}

/// The back-end's handoffs and restored connections.
///
/// Inputs: `handle_channel_up`/`_down`, `handle_frame` (feed every frame of
/// one read before polling actions: an `Abort` read together with its
/// `Handoff` cancels it before anything is restored), `handle_restored`,
/// `handle_closed`, `handle_timeout`. Outputs: `poll_action`, `poll_event`,
/// `poll_timeout`.
///
/// # Every front hears of every connection
///
/// A connection handed off by front A and live here is told to every other
/// front with a channel (`Mirror`, in the next batch), and its end too
/// (`Unmirror`); a front's new channel lists them after `Holding`
/// (`Mirroring`). A `Mirror` still waiting for its batch when its
/// connection ends is taken back instead of followed by an `Unmirror`: a
/// connection shorter than the batch delay is never mirrored, unless its
/// `Handoff` carried a hint (a locality policy's placement, which the other
/// fronts need whatever the connection's length): then the `Mirror` goes
/// and its `Unmirror` follows in the same batch. Fronts are told apart by
/// the address of their channel's peer.
#[derive(Debug)]
pub struct BackEngine {
    vip: Ipv4Addr,
    closed_batch: Duration,
    draining: bool,
    channels: HashMap<ChannelId, Chan>,
    /// Connections served, by (front, handoff id).
    held: HashMap<(IpAddr, u64), Held>,
    /// Handoffs handed out as `Restore` and not answered yet, with their hint.
    restoring: HashMap<(IpAddr, u64), (ChannelId, Bytes)>,
    timers: BTreeSet<(Instant, Timer)>,
    actions: VecDeque<BackAction>,
    events: VecDeque<BackEvent>,
    restored_total: u64,
}

impl BackEngine {
    /// An engine for a back-end that serves `vip`; `Closed` reports wait up
    /// to `closed_batch` to share a write.
    pub fn new(vip: Ipv4Addr, closed_batch: Duration) -> Self {
        BackEngine {
            vip,
            closed_batch,
            draining: false,
            channels: HashMap::new(),
            held: HashMap::new(),
            restoring: HashMap::new(),
            timers: BTreeSet::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            restored_total: 0,
        }
    }

    // ---- getters ----

    /// Connections served now.
    pub fn active(&self) -> usize {
        self.held.len()
    }

    /// Connections restored since start.
    pub fn total(&self) -> u64 {
        self.restored_total
    }

    /// The front-end a channel comes from.
    pub fn front_of(&self, channel: ChannelId) -> Option<IpAddr> {
        self.channels.get(&channel).map(|c| c.front)
    }

    /// Channels up.
    pub fn channels(&self) -> usize {
        self.channels.len()
    }

    /// Reports queued and not yet handed out (`Closed`, and mirrored flows
    /// for other fronts: a drain waits).
    pub fn pending_reports(&self) -> usize {
        self.channels.values().map(|c| c.batch.len()).sum()
    }

    /// Connections served for fronts other than `front` (what a new channel
    /// of `front` lists in `Mirroring`).
    pub fn mirrored_for(&self, front: IpAddr) -> usize {
        self.held.keys().filter(|(f, _)| *f != front).count()
    }

    // ---- outputs ----

    pub fn poll_action(&mut self) -> Option<BackAction> {
        self.actions.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<BackEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    // ---- inputs ----

    /// A front authenticated on `channel`: tell it which of its handoffs
    /// this back-end still serves (`Holding`), then which connections of
    /// other fronts (`Mirroring`).
    pub fn handle_channel_up(&mut self, channel: ChannelId, front: IpAddr) {
        self.channels.insert(
            channel,
            Chan {
                front,
                batch: Batch::default(),
            },
        );
        // The newest channel of a front carries the reports of everything
        // held for it: an older channel of the same front (a front process
        // that handed over to a successor) may stay open, unread, for a while.
        for ((f, _), h) in self.held.iter_mut() {
            if *f == front {
                h.channel = channel;
            }
        }
        let mut ids: Vec<u64> = self
            .held
            .keys()
            .filter(|(f, _)| *f == front)
            .map(|(_, id)| *id)
            .collect();
        ids.sort_unstable();
        let mut chunks = ids.chunks(HOLDING_CHUNK).peekable();
        if chunks.peek().is_none() {
            self.send(
                channel,
                ToFront::Holding {
                    ids: vec![],
                    done: true,
                },
            );
        }
        while let Some(chunk) = chunks.next() {
            let done = chunks.peek().is_none();
            self.send(
                channel,
                ToFront::Holding {
                    ids: chunk.to_vec(),
                    done,
                },
            );
        }
        let mut others: Vec<MirrorFlow> = self
            .held
            .iter()
            .filter(|((f, _), _)| *f != front)
            .map(|((origin, id), h)| MirrorFlow {
                origin: *origin,
                id: *id,
                flow: h.flow,
                hint: h.hint.clone(),
            })
            .collect();
        others.sort_unstable_by_key(|m| (m.origin, m.id));
        if others.is_empty() {
            self.send(
                channel,
                ToFront::Mirroring {
                    flows: vec![],
                    done: true,
                },
            );
        }
        let mut chunks = others.chunks(MIRROR_CHUNK).peekable();
        while let Some(chunk) = chunks.next() {
            let done = chunks.peek().is_none();
            self.send(
                channel,
                ToFront::Mirroring {
                    flows: chunk.to_vec(),
                    done,
                },
            );
        }
    }

    /// `channel` is gone. `Closed` reports queued on it move to the newest
    /// channel of the same front, if any; mirrored flows not yet told are
    /// dropped (that front's next channel lists what is left).
    pub fn handle_channel_down(&mut self, now: Instant, channel: ChannelId) {
        let Some(chan) = self.channels.remove(&channel) else {
            return;
        };
        for h in self.held.values_mut().filter(|h| h.channel == channel) {
            h.channel = ChannelId::MAX;
        }
        for frame in chan.batch.closed {
            self.report(now, chan.front, None, frame);
        }
    }

    /// No new handoffs from now on (they are refused); the ones in flight
    /// complete.
    pub fn handle_drain(&mut self) {
        self.draining = true;
    }

    /// A handoff frame from a front on `channel`.
    pub fn handle_frame(&mut self, now: Instant, channel: ChannelId, frame: ToBack) {
        let Some(front) = self.channels.get(&channel).map(|c| c.front) else {
            return;
        };
        match frame {
            ToBack::Handoff(h) => self.on_handoff(channel, front, h),
            ToBack::Abort { id } => self.on_abort(now, front, id),
        }
    }

    /// The result of `Restore`: live (`Ok(restore_us)`) or refused. A live
    /// connection is mirrored to every other front in the next batch.
    pub fn handle_restored(
        &mut self,
        now: Instant,
        channel: ChannelId,
        front: IpAddr,
        id: u64,
        flow: FlowKey,
        result: Result<u32, Refusal>,
    ) {
        let Some((_, hint)) = self.restoring.remove(&(front, id)) else {
            return;
        };
        let frame = match result {
            Ok(restore_us) => {
                self.held.insert(
                    (front, id),
                    Held {
                        flow,
                        channel,
                        hint: hint.clone(),
                    },
                );
                self.restored_total += 1;
                let m = MirrorFlow {
                    origin: front,
                    id,
                    flow,
                    hint,
                };
                for c in self.others(front) {
                    self.queue(now, c, |b| b.mirror.push(m.clone()));
                }
                ToFront::Live { id, restore_us }
            }
            Err(r) => ToFront::Refused {
                id,
                reason: r.reason,
                backend_fault: r.backend_fault,
            },
        };
        if self.channels.contains_key(&channel) {
            self.send(channel, frame);
        } else if let ToFront::Live { .. } = frame {
            // The channel went while restoring: the front reset the client.
            // The next channel's `Holding` lists the connection until it
            // ends; nothing else to do.
        }
    }

    /// A served connection ended: `Closed` to its front, `Unmirror` to
    /// the others.
    pub fn handle_closed(&mut self, now: Instant, front: IpAddr, id: u64) {
        let Some(h) = self.held.remove(&(front, id)) else {
            return;
        };
        let channel = self.channels.contains_key(&h.channel).then_some(h.channel);
        self.report(now, front, channel, ToFront::Closed { id, flow: h.flow });
        self.unmirror(now, front, id, h.flow);
    }

    /// Fires every deadline up to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, timer));
            let Timer::Batch(channel) = timer;
            let Some(chan) = self.channels.get_mut(&channel) else {
                continue;
            };
            let batch = std::mem::take(&mut chan.batch);
            for frame in batch.closed {
                self.actions.push_back(BackAction::Send { channel, frame });
            }
            for chunk in batch.mirror.chunks(MIRROR_CHUNK) {
                let frame = ToFront::Mirror {
                    flows: chunk.to_vec(),
                };
                self.actions.push_back(BackAction::Send { channel, frame });
            }
            for chunk in batch.unmirror.chunks(MIRROR_CHUNK) {
                let frame = ToFront::Unmirror {
                    flows: chunk.to_vec(),
                };
                self.actions.push_back(BackAction::Send { channel, frame });
            }
        }
    }

    // ---- transitions ----

    fn on_handoff(&mut self, channel: ChannelId, front: IpAddr, h: Handoff) {
        let id = h.id;
        let refuse = |reason: String, backend_fault: bool| ToFront::Refused {
            id,
            reason,
            backend_fault,
        };
        let refusal = if *h.flow.vip.ip() != self.vip {
            // A front configured for another VIP: nothing it hands us works.
            Some(refuse(
                format!(
                    "flow {} is for {}, this back-end serves VIP {}",
                    h.flow,
                    h.flow.vip.ip(),
                    self.vip
                ),
                true,
            ))
        } else if self.draining {
            Some(refuse("back-end draining".into(), true))
        } else if self.held.contains_key(&(front, id)) || self.restoring.contains_key(&(front, id))
        {
            Some(refuse(format!("handoff id {id} is in use"), false))
        } else {
            None
        };
        if let Some(frame) = refusal {
            if let ToFront::Refused { reason, .. } = &frame {
                self.events.push_back(BackEvent::Refused {
                    id,
                    reason: reason.clone(),
                });
            }
            return self.send(channel, frame);
        }
        self.restoring
            .insert((front, id), (channel, h.hint.clone()));
        self.actions.push_back(BackAction::Restore {
            channel,
            handoff: h,
        });
    }

    fn on_abort(&mut self, now: Instant, front: IpAddr, id: u64) {
        if self.restoring.remove(&(front, id)).is_some() {
            // Not carried out yet: take the `Restore` back.
            self.actions
                .retain(|a| !matches!(a, BackAction::Restore { handoff, .. } if handoff.id == id));
            self.events.push_back(BackEvent::Cancelled { id });
        } else if let Some(h) = self.held.remove(&(front, id)) {
            self.actions.push_back(BackAction::Reset { front, id });
            self.events.push_back(BackEvent::Aborted { id });
            self.unmirror(now, front, id, h.flow);
        } else {
            self.events.push_back(BackEvent::Stale { kind: "abort" });
        }
    }

    /// Queues a `Closed` report for `channel`, or the newest channel of the
    /// same front.
    fn report(&mut self, now: Instant, front: IpAddr, channel: Option<ChannelId>, frame: ToFront) {
        let channel = channel.or_else(|| {
            self.channels
                .iter()
                .filter(|(_, c)| c.front == front)
                .map(|(id, _)| *id)
                .max()
        });
        let Some(chan_id) = channel else {
            if let ToFront::Closed { id, .. } = frame {
                self.events.push_back(BackEvent::Unreported { id });
            }
            return;
        };
        self.queue(now, chan_id, |b| b.closed.push(frame));
    }

    /// The channels of fronts other than `origin`, in order.
    fn others(&self, origin: IpAddr) -> Vec<ChannelId> {
        let mut ids: Vec<ChannelId> = self
            .channels
            .iter()
            .filter(|(_, c)| c.front != origin)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Tells every other front that a mirrored connection ended, or takes
    /// back a `Mirror` that has not gone yet (one without a hint: the hint
    /// of a locality policy must reach the other fronts all the same).
    fn unmirror(&mut self, now: Instant, origin: IpAddr, id: u64, flow: FlowKey) {
        for c in self.others(origin) {
            self.queue(now, c, |b| {
                let waiting = b
                    .mirror
                    .iter()
                    .position(|m| m.origin == origin && m.id == id);
                match waiting {
                    Some(i) if b.mirror[i].hint.is_empty() => {
                        b.mirror.remove(i);
                    }
                    _ => b.unmirror.push(MirrorRef { origin, id, flow }),
                }
            });
        }
    }

    /// Adds to a channel's batch; the first report of a batch arms its deadline.
    fn queue(&mut self, now: Instant, channel: ChannelId, add: impl FnOnce(&mut Batch)) {
        let Some(chan) = self.channels.get_mut(&channel) else {
            return;
        };
        let was_empty = chan.batch.len() == 0;
        add(&mut chan.batch);
        if was_empty && chan.batch.len() > 0 {
            self.timers
                .insert((now + self.closed_batch, Timer::Batch(channel)));
        }
    }

    fn send(&mut self, channel: ChannelId, frame: ToFront) {
        self.actions.push_back(BackAction::Send { channel, frame });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::TcpState;
    use bytes::Bytes;
    use std::net::SocketAddrV4;

    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
    const FRONT: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3));

    fn handoff(id: u64, port: u16) -> Handoff {
        Handoff {
            id,
            flow: FlowKey {
                client: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), port),
                vip: SocketAddrV4::new(VIP, 80),
            },
            state: TcpState::default(),
            data: Bytes::new(),
            sent: Bytes::new(),
            tls: Bytes::new(),
            hint: Bytes::new(),
        }
    }

    /// A clock for inputs whose time does not matter to the test.
    fn t() -> Instant {
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *T0.get_or_init(Instant::now)
    }

    fn actions(e: &mut BackEngine) -> Vec<BackAction> {
        std::iter::from_fn(|| e.poll_action()).collect()
    }

    fn engine() -> BackEngine {
        let mut e = BackEngine::new(VIP, Duration::from_millis(5));
        e.handle_channel_up(1, FRONT);
        actions(&mut e);
        e
    }

    const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 4));

    fn send(channel: ChannelId, frame: ToFront) -> BackAction {
        BackAction::Send { channel, frame }
    }

    fn mirrored(id: u64, port: u16, hint: &'static [u8]) -> MirrorFlow {
        MirrorFlow {
            origin: FRONT,
            id,
            flow: handoff(id, port).flow,
            hint: Bytes::from_static(hint),
        }
    }

    /// Restores handoff `id` from FRONT on channel 1 (with a hint).
    fn restore(e: &mut BackEngine, now: Instant, id: u64, port: u16) {
        let mut h = handoff(id, port);
        h.hint = Bytes::from_static(b"/x");
        e.handle_frame(now, 1, ToBack::Handoff(h.clone()));
        e.handle_restored(now, 1, FRONT, id, h.flow, Ok(1));
        // Restore, then Live to the origin only: the others wait for the batch.
        let a = actions(e);
        assert!(
            matches!(
                &a[..],
                [
                    BackAction::Restore { .. },
                    BackAction::Send {
                        channel: 1,
                        frame: ToFront::Live { .. }
                    }
                ]
            ),
            "{a:?}"
        );
    }

    #[test]
    fn a_new_channel_starts_with_what_is_held() {
        let mut e = engine();
        let h = handoff(9, 1);
        e.handle_frame(t(), 1, ToBack::Handoff(h.clone()));
        actions(&mut e);
        e.handle_restored(t(), 1, FRONT, 9, h.flow, Ok(12));
        assert_eq!(
            actions(&mut e),
            [BackAction::Send {
                channel: 1,
                frame: ToFront::Live {
                    id: 9,
                    restore_us: 12
                }
            }]
        );
        e.handle_channel_down(Instant::now(), 1);
        e.handle_channel_up(2, FRONT);
        assert_eq!(
            actions(&mut e),
            [
                send(
                    2,
                    ToFront::Holding {
                        ids: vec![9],
                        done: true
                    }
                ),
                send(
                    2,
                    ToFront::Mirroring {
                        flows: vec![],
                        done: true
                    }
                )
            ]
        );
        // Another front's channel hears of it as a mirrored flow.
        e.handle_channel_up(3, OTHER);
        assert_eq!(
            actions(&mut e),
            [
                send(
                    3,
                    ToFront::Holding {
                        ids: vec![],
                        done: true
                    }
                ),
                send(
                    3,
                    ToFront::Mirroring {
                        flows: vec![mirrored(9, 1, b"")],
                        done: true
                    }
                )
            ]
        );
        assert_eq!(e.mirrored_for(OTHER), 1);
        assert_eq!(e.mirrored_for(FRONT), 0);
    }

    #[test]
    fn other_fronts_hear_of_restores_and_closes_in_the_next_batch() {
        let mut e = engine();
        let t0 = Instant::now();
        e.handle_channel_up(2, OTHER);
        e.handle_channel_up(3, IpAddr::V4(Ipv4Addr::new(198, 18, 0, 5)));
        actions(&mut e);
        restore(&mut e, t0, 1, 1);
        restore(&mut e, t0 + Duration::from_millis(1), 2, 2);
        assert_eq!(e.pending_reports(), 4);
        assert_eq!(e.poll_timeout(), Some(t0 + Duration::from_millis(5)));
        e.handle_timeout(t0 + Duration::from_millis(5));
        let both = vec![mirrored(1, 1, b"/x"), mirrored(2, 2, b"/x")];
        assert_eq!(
            actions(&mut e),
            [
                send(
                    2,
                    ToFront::Mirror {
                        flows: both.clone()
                    }
                ),
                send(3, ToFront::Mirror { flows: both })
            ]
        );
        // The close: Closed to the origin, Unmirror to the others.
        let t1 = t0 + Duration::from_millis(10);
        e.handle_closed(t1, FRONT, 1);
        e.handle_timeout(t1 + Duration::from_millis(5));
        let gone = vec![mirrored(1, 1, b"").as_ref()];
        assert_eq!(
            actions(&mut e),
            [
                send(
                    1,
                    ToFront::Closed {
                        id: 1,
                        flow: handoff(1, 1).flow
                    }
                ),
                send(
                    2,
                    ToFront::Unmirror {
                        flows: gone.clone()
                    }
                ),
                send(3, ToFront::Unmirror { flows: gone })
            ]
        );
        // An Abort of a live connection ends it for the others too.
        e.handle_frame(t1, 1, ToBack::Abort { id: 2 });
        e.handle_timeout(t1 + Duration::from_millis(10));
        let sent = actions(&mut e);
        assert_eq!(sent.len(), 3, "{sent:?}");
        assert!(matches!(sent[0], BackAction::Reset { id: 2, .. }));
        assert_eq!(
            sent[1],
            send(
                2,
                ToFront::Unmirror {
                    flows: vec![mirrored(2, 2, b"").as_ref()]
                }
            )
        );
    }

    #[test]
    fn a_connection_shorter_than_the_batch_is_never_mirrored_unless_it_has_a_hint() {
        let mut e = engine();
        let t0 = Instant::now();
        e.handle_channel_up(2, OTHER);
        actions(&mut e);
        // Without a hint: nothing for the other front.
        let h = handoff(1, 1);
        e.handle_frame(t0, 1, ToBack::Handoff(h.clone()));
        e.handle_restored(t0, 1, FRONT, 1, h.flow, Ok(1));
        actions(&mut e);
        e.handle_closed(t0 + Duration::from_millis(2), FRONT, 1);
        e.handle_timeout(t0 + Duration::from_millis(7));
        assert_eq!(
            actions(&mut e),
            [send(
                1,
                ToFront::Closed {
                    id: 1,
                    flow: h.flow
                }
            )]
        );
        assert_eq!(e.pending_reports(), 0);
        // With a hint (a placement): Mirror then Unmirror, in one batch.
        let t1 = t0 + Duration::from_millis(10);
        restore(&mut e, t1, 2, 2);
        e.handle_closed(t1 + Duration::from_millis(2), FRONT, 2);
        e.handle_timeout(t1 + Duration::from_millis(7));
        assert_eq!(
            actions(&mut e),
            [
                send(
                    2,
                    ToFront::Mirror {
                        flows: vec![mirrored(2, 2, b"/x")]
                    }
                ),
                send(
                    2,
                    ToFront::Unmirror {
                        flows: vec![mirrored(2, 2, b"").as_ref()]
                    }
                ),
                send(
                    1,
                    ToFront::Closed {
                        id: 2,
                        flow: handoff(2, 2).flow
                    }
                ),
            ]
        );
        assert_eq!(e.pending_reports(), 0);
    }

    #[test]
    fn mirrors_not_yet_told_die_with_their_channel_and_listings_are_chunked() {
        let mut e = engine();
        let t0 = Instant::now();
        e.handle_channel_up(2, OTHER);
        actions(&mut e);
        for id in 0..(MIRROR_CHUNK as u64 + 1) {
            restore(&mut e, t0, id, 1000 + id as u16);
        }
        actions(&mut e);
        e.handle_channel_down(t0, 2);
        e.handle_timeout(t0 + Duration::from_millis(5));
        assert_eq!(actions(&mut e), []);
        e.handle_channel_up(4, OTHER);
        let listing = actions(&mut e);
        assert_eq!(listing.len(), 3, "Holding and two Mirroring chunks");
        assert!(matches!(
            &listing[1],
            BackAction::Send { channel: 4, frame: ToFront::Mirroring { flows, done: false } } if flows.len() == MIRROR_CHUNK
        ));
        assert!(matches!(
            &listing[2],
            BackAction::Send { channel: 4, frame: ToFront::Mirroring { flows, done: true } } if flows.len() == 1 && flows[0].hint[..] == b"/x"[..]
        ));
    }

    #[test]
    fn an_abort_read_with_its_handoff_cancels_the_restore() {
        let mut e = engine();
        e.handle_frame(t(), 1, ToBack::Handoff(handoff(5, 1)));
        e.handle_frame(t(), 1, ToBack::Abort { id: 5 });
        assert_eq!(actions(&mut e), []);
        assert_eq!(e.poll_event(), Some(BackEvent::Cancelled { id: 5 }));
    }

    #[test]
    fn an_abort_after_live_resets_the_connection() {
        let mut e = engine();
        let h = handoff(5, 1);
        e.handle_frame(t(), 1, ToBack::Handoff(h.clone()));
        actions(&mut e);
        e.handle_restored(t(), 1, FRONT, 5, h.flow, Ok(1));
        actions(&mut e);
        e.handle_frame(t(), 1, ToBack::Abort { id: 5 });
        assert_eq!(
            actions(&mut e),
            [BackAction::Reset {
                front: FRONT,
                id: 5
            }]
        );
        assert_eq!(e.active(), 0);
    }

    #[test]
    fn closed_reports_are_batched_and_follow_the_front_to_its_new_channel() {
        let mut e = engine();
        let t0 = Instant::now();
        for id in 1..=3 {
            let h = handoff(id, id as u16);
            e.handle_frame(t(), 1, ToBack::Handoff(h.clone()));
            e.handle_restored(t(), 1, FRONT, id, h.flow, Ok(1));
        }
        actions(&mut e);
        e.handle_closed(t0, FRONT, 1);
        e.handle_closed(t0 + Duration::from_millis(1), FRONT, 2);
        assert_eq!(e.poll_timeout(), Some(t0 + Duration::from_millis(5)));
        e.handle_channel_up(2, FRONT);
        actions(&mut e);
        e.handle_channel_down(t0, 1);
        e.handle_timeout(t0 + Duration::from_millis(5));
        let sent = actions(&mut e);
        assert_eq!(sent.len(), 2);
        assert!(sent.iter().all(|a| matches!(
            a,
            BackAction::Send {
                channel: 2,
                frame: ToFront::Closed { .. }
            }
        )));
        // No channel at all: unreported, and not listed next time.
        e.handle_channel_down(t0, 2);
        e.handle_closed(t0, FRONT, 3);
        assert_eq!(
            std::iter::from_fn(|| e.poll_event()).last(),
            Some(BackEvent::Unreported { id: 3 })
        );
    }

    #[test]
    fn a_front_s_newer_channel_gets_the_reports_while_the_old_one_is_still_open() {
        // A front process handed over to a successor whose channel came up
        // before the old one closed: the successor adopted the flows.
        let mut e = engine();
        let t0 = Instant::now();
        let h = handoff(7, 7);
        e.handle_frame(t(), 1, ToBack::Handoff(h.clone()));
        e.handle_restored(t(), 1, FRONT, 7, h.flow, Ok(1));
        actions(&mut e);
        e.handle_channel_up(2, FRONT);
        actions(&mut e);
        e.handle_closed(t0, FRONT, 7);
        e.handle_timeout(t0 + Duration::from_millis(5));
        assert_eq!(
            actions(&mut e),
            [BackAction::Send {
                channel: 2,
                frame: ToFront::Closed {
                    id: 7,
                    flow: h.flow
                }
            }]
        );
    }

    #[test]
    fn wrong_vip_draining_and_repeated_ids_are_refused_without_a_syscall() {
        let mut e = engine();
        let mut h = handoff(1, 1);
        h.flow.vip = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 99), 80);
        e.handle_frame(t(), 1, ToBack::Handoff(h));
        assert!(matches!(
            &actions(&mut e)[..],
            [BackAction::Send {
                frame: ToFront::Refused {
                    backend_fault: true,
                    ..
                },
                ..
            }]
        ));
        e.handle_frame(t(), 1, ToBack::Handoff(handoff(2, 2)));
        e.handle_frame(t(), 1, ToBack::Handoff(handoff(2, 3)));
        let a = actions(&mut e);
        assert!(matches!(&a[0], BackAction::Restore { .. }));
        assert!(matches!(
            &a[1],
            BackAction::Send {
                frame: ToFront::Refused {
                    backend_fault: false,
                    ..
                },
                ..
            }
        ));
        e.handle_drain();
        e.handle_frame(t(), 1, ToBack::Handoff(handoff(3, 4)));
        assert!(matches!(
            &actions(&mut e)[..],
            [BackAction::Send {
                frame: ToFront::Refused { .. },
                ..
            }]
        ));
    }
}
