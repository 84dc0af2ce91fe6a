//! The front-end's handoff engine: every flow the front has parked, offered
//! or forwards, every flow another front handed to one of its back-ends
//! (mirrored), what to do next with each, and every deadline.
//!
//! # Mirrored flows
//!
//! A back-end tells every front but the origin about the connections it
//! serves (`Mirror`, `Unmirror`, and `Mirroring` at the start of each
//! channel), so that any front the routers send a client's packets to
//! steers them to the right back-end. A mirrored flow is a record like the
//! front's own, with its own id (bit 63 set: [`MIRROR_ID_BIT`]; own ids
//! never have it), and ages the same way: `Unmirror` marks it closing and
//! it goes after `closed_grace` once quiet; a channel that goes down
//! orphans it until that back-end lists it again or `orphan_timeout`.
//! Its identity is (back-end, origin front, origin's id) plus its 4-tuple:
//! a frame about another identity never acts on it.
//!
//! One 4-tuple has one forwarder entry, so one record *holds* it and the
//! others on that 4-tuple wait (kept, without an entry, until they end or
//! the holder does). A client has one connection per 4-tuple at a time, so
//! two records on one 4-tuple mean one of them ended and the front has not
//! heard yet; which one is newer cannot be told from the reports (they
//! come on different channels, with no common clock). The rule: **the
//! holder keeps the 4-tuple as long as the front believes it served**
//! (own: parking, offered, live, orphaned or inherited; mirrored: live or
//! orphaned), and a report about another connection on it (`Mirror` or a
//! listing) waits; **a closing holder gives way at once** (as to a new
//! SYN); **when the holder ends, the first waiting record takes the
//! entry at once** (live ones before orphaned ones).
//!
//! | the 4-tuple is held by                    | a `Mirror` for another connection on it |
//! |-------------------------------------------|-----------------------------------------|
//! | nothing                                   | takes it                                |
//! | an own or mirrored flow that is closing   | takes it                                |
//! | an own flow not closing                   | waits                                   |
//! | a mirrored flow live or orphaned          | waits                                   |
//!
//! So a late report about an older connection (its channel lagging) never
//! moves the entry of a newer connection the front believes served, and a
//! newer connection whose report overtook the older one's end waits at
//! most until that end arrives (which its back-end sent before the newer
//! connection existed). A closing entry only protects the tail of a
//! connection that ended (its last ACKs): it gives way even to a late
//! report about an older connection, whose own end follows on the same
//! channel. When an
//! own handoff fails (given back or reset), the records waiting on its
//! 4-tuple are dropped: they are older than the connection the front just
//! accepted. A new connection on the 4-tuple (`start`) drops every record
//! of it. The idle sweep leaves live mirrored entries alone: their
//! client's packets reach another front, so they are idle here by nature;
//! their back-end reports their end.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::flow::FlowKey;
use crate::frame::{Handoff, MirrorFlow, MirrorRef, ToBack, ToFront, MAX_HINT};
use crate::tcp::TcpState;

/// A back-end, by its position in the front's configuration.
pub type BackendId = usize;

/// Set in the id of every mirrored flow (and so in its pinned entry's
/// `handoff_id`), never in the id of a handoff: a front that restarts
/// tells the two apart in its pinned flow table.
pub const MIRROR_ID_BIT: u64 = 1 << 63;

/// Whether an id (a flow's, or a pinned entry's `handoff_id`) is a
/// mirrored flow's.
pub fn is_mirror_id(id: u64) -> bool {
    id & MIRROR_ID_BIT != 0
}

/// The deadlines of the front's side of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontTimers {
    /// From writing `Handoff` to `Live` or `Refused`; past it the client is
    /// reset and the back-end leaves rotation.
    pub handoff_timeout: Duration,
    /// A flow's entry outlives the back-end's `Closed` by this much, and
    /// goes only once it has carried no packet for as long (the back-end's
    /// kernel may still be sending a response's tail, which the client ACKs
    /// through the entry).
    pub closed_grace: Duration,
    /// The flows of a back-end whose channel went down are removed after
    /// this, unless the channel comes back first and the back-end lists them.
    pub orphan_timeout: Duration,
    /// How often the driver looks for entries idle past its idle timeout.
    pub idle_sweep: Duration,
}

/// Every deadline the front engine keeps, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// The back-end must answer handoff `id` by then.
    Answer(u64),
    /// Flow `id` was reported closed: its entry may go then, if quiet.
    Grace(u64),
    /// The flows a back-end's channel orphaned at `epoch` go then.
    Orphans { backend: BackendId, epoch: u64 },
    /// Time to look for idle entries.
    IdleSweep,
}

/// What the driver must do, in the order handed out.
///
/// For a mirrored flow, `id` is its own id on this front (bit 63 set):
/// write it in the entry as the handoff id, as for any flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontAction {
    /// Keep the client's packets from the local socket (forwarder PARK);
    /// answer with [`FrontEngine::handle_parked`].
    Park {
        id: u64,
        flow: FlowKey,
        backend: BackendId,
    },
    /// Dump the socket with TCP_REPAIR (the flow is parked); answer with
    /// [`FrontEngine::handle_dumped`].
    Dump { id: u64 },
    /// Write a frame on the back-end's channel. Frames handed out together
    /// should go in one write.
    Send { backend: BackendId, frame: ToBack },
    /// The back-end serves the flow: steer it there (forwarder FORWARD),
    /// deliver the frames kept while parked, close the local socket while
    /// still in repair mode (nothing reaches the client).
    Forward {
        id: u64,
        flow: FlowKey,
        backend: BackendId,
    },
    /// The handoff did not happen and never will: remove the entry, take
    /// the socket out of repair mode if `dumped`, answer the client with
    /// `status` (or relay the connection).
    GiveBack {
        id: u64,
        flow: FlowKey,
        status: u16,
        dumped: bool,
    },
    /// Whether the back-end serves the client is unknown: remove the entry
    /// and reset the client's connection.
    Reset { id: u64, flow: FlowKey },
    /// Let a new connection's SYN on this 4-tuple replace the entry
    /// (forwarder FORWARD_CLOSING); it still forwards to `backend`. Only
    /// an entry that is there is marked.
    MarkClosing {
        id: u64,
        flow: FlowKey,
        backend: BackendId,
    },
    /// An orphaned flow is still served by its back-end: forward it again
    /// without the closing mark.
    Resteer {
        id: u64,
        flow: FlowKey,
        backend: BackendId,
    },
    /// A flow another front handed to `backend` (mirrored flow `id`) takes
    /// this 4-tuple's entry: forward it there (forwarder FORWARD, replacing
    /// any entry). Nothing is kept for it and no socket is involved.
    Steer {
        id: u64,
        flow: FlowKey,
        backend: BackendId,
    },
    /// Remove the entry if it carried no packet for `quiet`; answer with
    /// [`FrontEngine::handle_removal`].
    RemoveIfQuiet {
        id: u64,
        flow: FlowKey,
        quiet: Duration,
    },
    /// Remove the entry (and anything kept for it) now.
    Remove { flow: FlowKey },
    /// Report the entries idle past the idle timeout with
    /// [`FrontEngine::handle_idle`].
    SweepIdle,
}

/// What happened, for counters, logs and back-end health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontEvent {
    /// The back-end serves flow `id`. `control_rtt`: `Handoff` written to
    /// `Live` handled.
    HandedOff {
        id: u64,
        backend: BackendId,
        control_rtt: Duration,
        restore_us: u32,
    },
    /// The handoff failed before the point of no return, or was refused.
    GaveBack {
        id: u64,
        backend: BackendId,
        status: u16,
        why: String,
    },
    /// The back-end refused (included in `GaveBack` too). `backend_fault`:
    /// it cannot restore anything now (pause it).
    Refused {
        backend: BackendId,
        backend_fault: bool,
    },
    /// No answer in time: the client was reset; the back-end is stuck (drop
    /// its channel).
    TimedOut { id: u64, backend: BackendId },
    /// The channel went down with the handoff unanswered: the client was reset.
    Lost { id: u64, backend: BackendId },
    /// The back-end no longer serves flow `id` (it said `Closed`, or did not
    /// list it in `Holding`). Own flows only.
    Closed { id: u64, backend: BackendId },
    /// A forwarding entry is gone (own or mirrored).
    Removed { cause: RemoveCause },
    /// A frame about a handoff this front does not know or no longer waits
    /// for (late, repeated, or for another flow on the 4-tuple): ignored, or
    /// answered with `Abort` if it was a `Live`. Also a `Mirror`,
    /// `Unmirror` or `Mirroring` about a mirrored flow that does not match
    /// (kinds "mirror", "unmirror", "mirroring").
    Stale {
        backend: BackendId,
        kind: &'static str,
    },
    /// `backend` serves a connection another front (`origin`) handed off:
    /// this front now knows it (from `Mirror`, or its back-end's listing
    /// after a channel or this front started). `hint` is what the origin
    /// front's policy put in its `Handoff` (empty if none).
    Mirrored {
        backend: BackendId,
        origin: IpAddr,
        flow: FlowKey,
        hint: Bytes,
    },
    /// A mirrored flow ended (`Unmirror`, or its back-end's listing left it
    /// out); its entry, if it had one, goes after the grace.
    Unmirrored { backend: BackendId },
}

/// Why an entry was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveCause {
    /// Closed, past the grace and quiet.
    Closed,
    /// No packet for the idle timeout.
    Idle,
    /// Its back-end's channel stayed down for the orphan timeout.
    Orphaned,
}

/// Why parking failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkFailure {
    /// The forwarder's flow table is full (503).
    TableFull,
    /// Anything else (502).
    Other,
}

/// Why the dump failed; the socket is out of repair mode again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpFailure(pub String);

/// A dumped connection, the answer to [`FrontAction::Dump`]: what the
/// `Handoff` frame carries besides its id and flow (see
/// [`Handoff`](crate::Handoff) for each field).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dump {
    pub state: TcpState,
    pub data: Bytes,
    pub sent: Bytes,
    pub tls: Bytes,
}

impl Dump {
    /// A plain HTTP connection: nothing sent, no TLS session.
    pub fn plain(state: TcpState, data: Bytes) -> Dump {
        Dump {
            state,
            data,
            ..Dump::default()
        }
    }
}

/// The answer to [`FrontAction::RemoveIfQuiet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiet {
    /// Removed (or already gone: a new connection's SYN replaced it).
    Removed,
    /// Not removed: its last packet was `idle` ago.
    Busy { idle: Duration },
}

/// Who holds a 4-tuple's forwarder entry, for tests and introspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// This front's handoff `id` to `backend` (`closing`: reported closed).
    Own {
        id: u64,
        backend: BackendId,
        closing: bool,
    },
    /// Mirrored flow `id` (this front's id for it): a connection another
    /// front handed to `backend`. `origin` is that front and its handoff
    /// id; unknown for a flow adopted from the pinned table until its
    /// back-end lists it.
    Mirror {
        id: u64,
        backend: BackendId,
        origin: Option<(IpAddr, u64)>,
        closing: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Being parked and dumped by the driver.
    Parking,
    /// `Handoff` written at `sent`; the answer is due at `due`.
    Offered { sent: Instant, due: Instant },
    /// The back-end serves it; the entry forwards.
    Live,
    /// Its back-end's channel went down at `epoch`; it may still serve it.
    Orphaned { epoch: u64 },
    /// Reported closed; the entry may go at `due` if quiet.
    Closing { due: Instant },
    /// Found parked in the flow table at start: a previous front process
    /// stopped in the middle of this handoff, so whether the back-end took
    /// it is unknown until its `Holding` (or the orphan timeout, at `epoch`).
    Inherited { epoch: u64 },
}

/// What a flow's entry in the pinned flow table says, for
/// [`FrontEngine::adopt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// It forwards to the back-end: the back-end served the client.
    Forwarding,
    /// It forwards and is marked closing: the back-end reported the close.
    Closing,
    /// It is parked: a handoff was in progress.
    Parked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// This front handed it off.
    Own,
    /// Another front did (`origin`: that front and its id; `None` for one
    /// adopted from the pinned table until its back-end lists it). Only
    /// `Live`, `Orphaned` and `Closing`.
    Mirror { origin: Option<(IpAddr, u64)> },
}

#[derive(Debug, Clone, Copy)]
struct Flow {
    key: FlowKey,
    backend: BackendId,
    phase: Phase,
    /// Set once the flow has been parked (there is an entry to remove).
    parked: bool,
    kind: Kind,
}

impl Flow {
    fn is_own(&self) -> bool {
        self.kind == Kind::Own
    }

    /// A mirrored flow its back-end serves (or may: orphaned).
    fn mirror_served(&self) -> bool {
        !self.is_own() && matches!(self.phase, Phase::Live | Phase::Orphaned { .. })
    }
}

#[derive(Debug, Default)]
struct Peer {
    up: bool,
    /// Counts the times the channel went down.
    epoch: u64,
    /// Ids listed by `Holding` so far on the current channel; `None` once
    /// the last chunk arrived (or while down).
    holding: Option<HashSet<u64>>,
    /// The current channel's `Mirroring` listing has not ended yet.
    listing: bool,
}

/// The front-end's flows and their deadlines.
///
/// Method groups, as in quinn-proto's `Connection`:
/// - getters: [`flows`](Self::flows), [`mirrored`](Self::mirrored),
///   [`parked`](Self::parked), [`is_up`](Self::is_up),
///   [`live_on`](Self::live_on), [`holder`](Self::holder),
///   [`steer`](Self::steer);
/// - inputs: [`start`](Self::start), [`start_with_hint`](Self::start_with_hint),
///   [`adopt`](Self::adopt), `handle_*`;
/// - outputs: [`poll_action`](Self::poll_action),
///   [`poll_event`](Self::poll_event), [`poll_timeout`](Self::poll_timeout).
///
/// After any input, drain `poll_action` (carry each out, in order, feeding
/// the results back) and `poll_event`, then sleep until `poll_timeout` and
/// call `handle_timeout`.
#[derive(Debug)]
pub struct FrontEngine {
    timers_cfg: FrontTimers,
    flows: HashMap<u64, Flow>,
    /// The record that holds each 4-tuple's forwarder entry.
    by_key: HashMap<FlowKey, u64>,
    /// Mirrored flows served on a 4-tuple another record holds.
    waiting: HashMap<FlowKey, Vec<u64>>,
    /// Mirrored flows by (back-end, origin front, origin's id).
    mirror_ids: HashMap<(BackendId, IpAddr, u64), u64>,
    /// Hints of handoffs not yet written.
    hints: HashMap<u64, Bytes>,
    peers: Vec<Peer>,
    next_id: u64,
    timers: BTreeSet<(Instant, Timer)>,
    actions: VecDeque<FrontAction>,
    events: VecDeque<FrontEvent>,
}

impl FrontEngine {
    /// An engine for `backends` back-ends, all channels down. Handoff ids
    /// start at `first_id` (pick it at random per process, so ids never
    /// repeat across restarts of the front; bit 63 is ignored). The first
    /// idle sweep is due one `idle_sweep` after `now`.
    pub fn new(timers: FrontTimers, backends: usize, first_id: u64, now: Instant) -> Self {
        let mut e = FrontEngine {
            timers_cfg: timers,
            flows: HashMap::new(),
            by_key: HashMap::new(),
            waiting: HashMap::new(),
            mirror_ids: HashMap::new(),
            hints: HashMap::new(),
            peers: (0..backends).map(|_| Peer::default()).collect(),
            next_id: first_id,
            timers: BTreeSet::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
        };
        e.arm(now + timers.idle_sweep, Timer::IdleSweep);
        e
    }

    /// A back-end added to the configuration (a reload): its id, the next
    /// position; its channel is down.
    pub fn add_backend(&mut self) -> BackendId {
        self.peers.push(Peer::default());
        self.peers.len() - 1
    }

    /// New deadlines (a reload): they apply to deadlines armed from now
    /// on; those already armed keep theirs.
    pub fn set_timers(&mut self, timers: FrontTimers) {
        self.timers_cfg = timers;
    }

    // ---- getters ----

    /// This front's flows on `backend` (any phase; mirrored flows not
    /// counted): a back-end removed from the configuration keeps its
    /// channel until this is 0.
    pub fn flows_on(&self, backend: BackendId) -> usize {
        self.flows
            .values()
            .filter(|f| f.backend == backend && f.is_own())
            .count()
    }

    /// Flows tracked (own: parking, offered, live, orphaned or closing;
    /// and mirrored).
    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// Mirrored flows tracked (any phase, with or without an entry).
    pub fn mirrored(&self) -> usize {
        self.flows.values().filter(|f| !f.is_own()).count()
    }

    /// Handoffs in progress (parking or offered, or inherited parked).
    pub fn parked(&self) -> usize {
        self.flows
            .values()
            .filter(|f| {
                matches!(
                    f.phase,
                    Phase::Parking | Phase::Offered { .. } | Phase::Inherited { .. }
                )
            })
            .count()
    }

    /// Flows handed off and not reported closed (live or orphaned): a
    /// drain waits for them. Own flows only.
    pub fn handed(&self) -> usize {
        self.flows
            .values()
            .filter(|f| f.is_own() && matches!(f.phase, Phase::Live | Phase::Orphaned { .. }))
            .count()
    }

    /// Whether the channel to `backend` is up.
    pub fn is_up(&self, backend: BackendId) -> bool {
        self.peers.get(backend).is_some_and(|p| p.up)
    }

    /// The own flow id currently tracked for a 4-tuple and whether its
    /// back-end serves it (live or orphaned), for tests and introspection.
    pub fn live_on(&self, flow: &FlowKey) -> Option<(u64, BackendId)> {
        let id = *self.by_key.get(flow)?;
        let f = self.flows.get(&id)?;
        (f.is_own() && matches!(f.phase, Phase::Live | Phase::Orphaned { .. }))
            .then_some((id, f.backend))
    }

    /// The record that holds a 4-tuple's entry.
    pub fn holder(&self, flow: &FlowKey) -> Option<Holder> {
        let id = *self.by_key.get(flow)?;
        let f = self.flows.get(&id)?;
        Some(match f.kind {
            Kind::Own => Holder::Own {
                id,
                backend: f.backend,
                closing: matches!(f.phase, Phase::Closing { .. }),
            },
            Kind::Mirror { origin } => Holder::Mirror {
                id,
                backend: f.backend,
                origin,
                closing: matches!(f.phase, Phase::Closing { .. }),
            },
        })
    }

    /// Where the forwarder should steer a flow's packets now: `None` if the
    /// front does not track it, `Some(None)` while they are kept (a handoff
    /// in progress), `Some(Some(backend))` once they go to `backend`.
    pub fn steer(&self, flow: &FlowKey) -> Option<Option<BackendId>> {
        let f = self.flows.get(self.by_key.get(flow)?)?;
        Some(match f.phase {
            Phase::Parking | Phase::Offered { .. } | Phase::Inherited { .. } => None,
            Phase::Live | Phase::Orphaned { .. } | Phase::Closing { .. } => Some(f.backend),
        })
    }

    // ---- outputs ----

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<FrontAction> {
        self.actions.pop_front()
    }

    /// The next thing that happened.
    pub fn poll_event(&mut self) -> Option<FrontEvent> {
        self.events.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    // ---- inputs ----

    /// A client's request is read and `backend` picked: begin a handoff.
    /// Returns the handoff's id; the first action is `Park`. A back-end
    /// whose channel is down is answered at once with `GiveBack` (503).
    pub fn start(&mut self, flow: FlowKey, backend: BackendId) -> u64 {
        self.start_with_hint(flow, backend, Bytes::new())
    }

    /// [`start`](Self::start), with a hint for the other fronts: it travels
    /// in the `Handoff` and the back-end echoes it to them (`Mirror`; see
    /// [`FrontEvent::Mirrored`]). A hint over [`MAX_HINT`] bytes is dropped
    /// (not cut: an opaque value cut short would mean something else).
    pub fn start_with_hint(&mut self, flow: FlowKey, backend: BackendId, hint: Bytes) -> u64 {
        let id = self.alloc(false);
        // A new connection on this 4-tuple: the kernel only let it reach the
        // local listener because the old entry is gone (a SYN replaced a
        // closing entry, or it was removed). Every record of it goes.
        self.drop_all_on(flow);
        self.by_key.insert(flow, id);
        self.flows.insert(
            id,
            Flow {
                key: flow,
                backend,
                phase: Phase::Parking,
                parked: false,
                kind: Kind::Own,
            },
        );
        if !hint.is_empty() && hint.len() <= MAX_HINT {
            self.hints.insert(id, hint);
        }
        if self.is_up(backend) {
            self.actions
                .push_back(FrontAction::Park { id, flow, backend });
        } else {
            self.give_back(id, 503, "control channel down".into());
        }
        id
    }

    /// A flow found in the pinned flow table when this front started: a
    /// previous front process (killed, restarted or upgraded) handed it to
    /// `backend` as handoff `id`, or mirrored it (`id` has
    /// [`MIRROR_ID_BIT`]). Call before any channel is up, once per entry,
    /// with one `now`. A forwarding flow is orphaned (its back-end's
    /// `Holding`, or for a mirrored one its `Mirroring`, keeps it, or the
    /// orphan timeout removes it), a closing one gets its grace, a parked
    /// one waits for `Holding` to say whether the back-end took it (then it
    /// forwards, its kept frames delivered) or not (then it is reset).
    /// Returns false (and adopts nothing) for an id or a 4-tuple already
    /// tracked, an unknown back-end, or a parked mirrored flow (there is no
    /// such thing).
    pub fn adopt(
        &mut self,
        now: Instant,
        flow: FlowKey,
        id: u64,
        backend: BackendId,
        entry: Entry,
    ) -> bool {
        let Some(p) = self.peers.get(backend) else {
            return false;
        };
        if self.flows.contains_key(&id) || self.by_key.contains_key(&flow) {
            return false;
        }
        let kind = if is_mirror_id(id) {
            if entry == Entry::Parked {
                return false;
            }
            Kind::Mirror { origin: None }
        } else {
            Kind::Own
        };
        let epoch = p.epoch;
        let phase = match entry {
            Entry::Forwarding => {
                self.actions
                    .push_back(FrontAction::MarkClosing { id, flow, backend });
                Phase::Orphaned { epoch }
            }
            Entry::Parked => Phase::Inherited { epoch },
            Entry::Closing => {
                let due = now + self.timers_cfg.closed_grace;
                self.arm(due, Timer::Grace(id));
                Phase::Closing { due }
            }
        };
        if entry != Entry::Closing {
            self.arm(
                now + self.timers_cfg.orphan_timeout,
                Timer::Orphans { backend, epoch },
            );
        }
        self.by_key.insert(flow, id);
        self.flows.insert(
            id,
            Flow {
                key: flow,
                backend,
                phase,
                parked: true,
                kind,
            },
        );
        true
    }

    /// The result of `Park`.
    pub fn handle_parked(&mut self, id: u64, result: Result<(), ParkFailure>) {
        let Some(f) = self.flow_in(id, |p| matches!(p, Phase::Parking)) else {
            return;
        };
        match result {
            Ok(()) => {
                f.parked = true;
                self.actions.push_back(FrontAction::Dump { id });
            }
            Err(ParkFailure::TableFull) => {
                self.give_back(id, 503, "forwarder flow table full".into())
            }
            Err(ParkFailure::Other) => self.give_back(id, 502, "forwarder park failed".into()),
        }
    }

    /// The result of `Dump`: the state and every byte the back-end's
    /// application must read (the request the front read plus the unread
    /// receive queue). On success this is the point of no return.
    pub fn handle_dumped(&mut self, now: Instant, id: u64, result: Result<Dump, DumpFailure>) {
        let Some(f) = self.flow_in(id, |p| matches!(p, Phase::Parking)) else {
            return;
        };
        let (flow, backend) = (f.key, f.backend);
        let Dump {
            state,
            data,
            sent,
            tls,
        } = match result {
            Ok(d) => d,
            Err(DumpFailure(why)) => return self.give_back(id, 502, format!("dump: {why}")),
        };
        if !self.is_up(backend) {
            // Nothing was sent: the front still owns the connection.
            return self.give_back_dumped(id, 503, "control channel down".into());
        }
        let due = now + self.timers_cfg.handoff_timeout;
        if let Some(f) = self.flows.get_mut(&id) {
            f.phase = Phase::Offered { sent: now, due };
        }
        self.arm(due, Timer::Answer(id));
        let hint = self.hints.remove(&id).unwrap_or_default();
        self.actions.push_back(FrontAction::Send {
            backend,
            frame: ToBack::Handoff(Handoff {
                id,
                flow,
                state,
                data,
                sent,
                tls,
                hint,
            }),
        });
    }

    /// `Forward` failed (the forwarder could not steer the flow): the
    /// back-end serves a client whose packets cannot reach it. Reset the
    /// client and tell the back-end.
    pub fn handle_forward_failed(&mut self, id: u64) {
        let Some(f) = self.flow_in(id, |p| p == Phase::Live) else {
            return;
        };
        if !f.is_own() {
            return;
        }
        let backend = f.backend;
        self.actions.push_back(FrontAction::Send {
            backend,
            frame: ToBack::Abort { id },
        });
        self.events.push_back(FrontEvent::Lost { id, backend });
        self.reset(id);
    }

    /// A handoff frame from `backend`'s channel.
    pub fn handle_frame(&mut self, now: Instant, backend: BackendId, frame: ToFront) {
        match frame {
            ToFront::Live { id, restore_us } => self.on_live(now, backend, id, restore_us),
            ToFront::Refused {
                id,
                reason,
                backend_fault,
            } => self.on_refused(backend, id, reason, backend_fault),
            ToFront::Closed { id, flow } => self.on_closed(now, backend, id, flow),
            ToFront::Holding { ids, done } => self.on_holding(now, backend, ids, done),
            ToFront::Mirror { flows } => {
                for m in flows {
                    self.on_mirror(backend, m);
                }
            }
            ToFront::Unmirror { flows } => {
                for m in flows {
                    self.on_unmirror(now, backend, m);
                }
            }
            ToFront::Mirroring { flows, done } => self.on_mirroring(now, backend, flows, done),
        }
    }

    /// `backend`'s channel is up (authenticated). Its first frames will be
    /// `Holding`, then `Mirroring`.
    pub fn handle_channel_up(&mut self, backend: BackendId) {
        if let Some(p) = self.peers.get_mut(backend) {
            p.up = true;
            p.holding = Some(HashSet::new());
            p.listing = true;
        }
    }

    /// `backend`'s channel is down. Unanswered handoffs on it are reset;
    /// its live flows, own and mirrored, are orphaned.
    pub fn handle_channel_down(&mut self, now: Instant, backend: BackendId) {
        let Some(p) = self.peers.get_mut(backend) else {
            return;
        };
        if !p.up {
            return;
        }
        p.up = false;
        p.holding = None;
        p.listing = false;
        p.epoch += 1;
        let epoch = p.epoch;
        let ids = self.ids_on(backend, |_| true);
        let mut orphaned = false;
        for id in ids {
            let holds = self.holds(id);
            let Some(f) = self.flows.get_mut(&id) else {
                continue;
            };
            match f.phase {
                Phase::Offered { due, .. } => {
                    self.timers.remove(&(due, Timer::Answer(id)));
                    self.events.push_back(FrontEvent::Lost { id, backend });
                    self.reset(id);
                }
                Phase::Live => {
                    f.phase = Phase::Orphaned { epoch };
                    orphaned = true;
                    if holds {
                        self.actions.push_back(FrontAction::MarkClosing {
                            id,
                            flow: f.key,
                            backend,
                        });
                    }
                }
                // Parking: the dump's result finds the channel down.
                Phase::Parking
                | Phase::Orphaned { .. }
                | Phase::Closing { .. }
                | Phase::Inherited { .. } => {}
            }
        }
        if orphaned {
            self.arm(
                now + self.timers_cfg.orphan_timeout,
                Timer::Orphans { backend, epoch },
            );
        }
    }

    /// The answer to `RemoveIfQuiet`.
    pub fn handle_removal(&mut self, now: Instant, id: u64, quiet: Quiet) {
        let grace = self.timers_cfg.closed_grace;
        let Some(f) = self.flow_in(id, |p| matches!(p, Phase::Closing { .. })) else {
            return;
        };
        match quiet {
            Quiet::Removed => {
                let key = f.key;
                self.forget(id);
                self.events.push_back(FrontEvent::Removed {
                    cause: RemoveCause::Closed,
                });
                self.promote(key);
            }
            Quiet::Busy { idle } => {
                let wait = grace.saturating_sub(idle).max(Duration::from_millis(1));
                f.phase = Phase::Closing { due: now + wait };
                self.arm(now + wait, Timer::Grace(id));
            }
        }
    }

    /// The answer to `SweepIdle`: entries that carried no packet for the
    /// idle timeout. Handoffs in progress keep theirs (they have their own
    /// deadline), and so do live mirrored flows (their packets reach
    /// another front; their back-end reports their end); the rest go,
    /// whether the front knows them or not.
    pub fn handle_idle(&mut self, idle: &[FlowKey]) {
        for key in idle {
            let id = self.by_key.get(key).copied();
            if let Some(f) = id.and_then(|id| self.flows.get(&id)) {
                let keep = match f.kind {
                    Kind::Own => matches!(f.phase, Phase::Parking | Phase::Offered { .. }),
                    Kind::Mirror { .. } => f.phase == Phase::Live,
                };
                if keep {
                    continue;
                }
            }
            if let Some(id) = id {
                self.forget(id);
            }
            self.actions.push_back(FrontAction::Remove { flow: *key });
            self.events.push_back(FrontEvent::Removed {
                cause: RemoveCause::Idle,
            });
            self.promote(*key);
        }
    }

    /// Fires every deadline up to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, timer));
            match timer {
                Timer::Answer(id) => self.on_answer_due(id),
                Timer::Grace(id) => {
                    let quiet = self.timers_cfg.closed_grace;
                    if let Some(f) = self.flow_in(id, |p| matches!(p, Phase::Closing { .. })) {
                        let flow = f.key;
                        self.actions
                            .push_back(FrontAction::RemoveIfQuiet { id, flow, quiet });
                    }
                }
                Timer::Orphans { backend, epoch } => self.on_orphans_due(backend, epoch),
                Timer::IdleSweep => {
                    self.actions.push_back(FrontAction::SweepIdle);
                    self.arm(now + self.timers_cfg.idle_sweep, Timer::IdleSweep);
                }
            }
        }
    }

    // ---- transitions ----

    fn on_live(&mut self, now: Instant, backend: BackendId, id: u64, restore_us: u32) {
        match self.flows.get_mut(&id) {
            Some(f) if f.backend == backend && f.is_own() => {
                if let Phase::Offered { sent, due } = f.phase {
                    f.phase = Phase::Live;
                    let flow = f.key;
                    self.timers.remove(&(due, Timer::Answer(id)));
                    self.actions
                        .push_back(FrontAction::Forward { id, flow, backend });
                    self.events.push_back(FrontEvent::HandedOff {
                        id,
                        backend,
                        control_rtt: now.saturating_duration_since(sent),
                        restore_us,
                    });
                    return;
                }
                self.stale(backend, "live");
            }
            _ => {
                // A handoff this front gave up on (and reset): the back-end
                // serves a dead connection; tell it to drop it.
                self.stale(backend, "live");
                self.actions.push_back(FrontAction::Send {
                    backend,
                    frame: ToBack::Abort { id },
                });
            }
        }
    }

    fn on_refused(&mut self, backend: BackendId, id: u64, reason: String, backend_fault: bool) {
        match self.flows.get(&id) {
            Some(f) if f.backend == backend && f.is_own() => {
                if let Phase::Offered { due, .. } = f.phase {
                    self.timers.remove(&(due, Timer::Answer(id)));
                    self.events.push_back(FrontEvent::Refused {
                        backend,
                        backend_fault,
                    });
                    self.give_back_dumped(id, 502, format!("refused: {reason}"));
                    return;
                }
                self.stale(backend, "refused");
            }
            _ => self.stale(backend, "refused"),
        }
    }

    fn on_closed(&mut self, now: Instant, backend: BackendId, id: u64, flow: FlowKey) {
        let known = self.flows.get(&id).is_some_and(|f| {
            f.backend == backend
                && f.key == flow
                && f.is_own()
                && matches!(f.phase, Phase::Live | Phase::Orphaned { .. })
        });
        if !known {
            return self.stale(backend, "closed");
        }
        self.close(now, id);
    }

    fn on_holding(&mut self, now: Instant, backend: BackendId, ids: Vec<u64>, done: bool) {
        let Some(p) = self.peers.get_mut(backend) else {
            return;
        };
        let Some(held) = p.holding.as_mut() else {
            // Only the start of a channel carries `Holding`.
            return self.stale(backend, "holding");
        };
        held.extend(ids);
        if !done {
            return;
        }
        let held = p.holding.take().unwrap_or_default();
        let orphans = self.ids_on(backend, |f| {
            f.is_own() && matches!(f.phase, Phase::Orphaned { .. } | Phase::Inherited { .. })
        });
        for id in orphans {
            let Some(f) = self.flows.get_mut(&id) else {
                continue;
            };
            let inherited = matches!(f.phase, Phase::Inherited { .. });
            let flow = f.key;
            match (held.contains(&id), inherited) {
                (true, false) => {
                    f.phase = Phase::Live;
                    self.actions
                        .push_back(FrontAction::Resteer { id, flow, backend });
                }
                // The back-end took the handoff before the last front
                // process stopped: steer it there, kept frames first.
                (true, true) => {
                    f.phase = Phase::Live;
                    self.actions
                        .push_back(FrontAction::Forward { id, flow, backend });
                }
                (false, false) => self.close(now, id),
                // Nobody serves it: the client's connection is dead.
                (false, true) => {
                    self.events.push_back(FrontEvent::Lost { id, backend });
                    self.reset(id);
                }
            }
        }
    }

    /// A flow another front handed to `backend` is live there (news, or
    /// the channel's opening listing).
    fn on_mirror(&mut self, backend: BackendId, m: MirrorFlow) {
        if backend >= self.peers.len() || is_mirror_id(m.id) {
            // Fronts never give a handoff such an id.
            return self.stale(backend, "mirror");
        }
        let identity = (backend, m.origin, m.id);
        if let Some(&id) = self.mirror_ids.get(&identity) {
            let holds = self.holds(id);
            let Some(f) = self.flows.get_mut(&id) else {
                return;
            };
            if f.key != m.flow || !matches!(f.phase, Phase::Orphaned { .. }) {
                // Another 4-tuple under the same identity, already live
                // (a repeat), or already ended.
                return self.stale(backend, "mirror");
            }
            f.phase = Phase::Live;
            if holds {
                self.actions.push_back(FrontAction::Resteer {
                    id,
                    flow: m.flow,
                    backend,
                });
            }
            return;
        }
        // Adopted at start: its pinned entry knew the back-end and the
        // 4-tuple, not the origin. Its back-end's listing names it.
        if let Some(id) = self.adopted_on(backend, m.flow) {
            let holds = self.holds(id);
            if let Some(f) = self.flows.get_mut(&id) {
                f.phase = Phase::Live;
                f.kind = Kind::Mirror {
                    origin: Some((m.origin, m.id)),
                };
            }
            self.mirror_ids.insert(identity, id);
            if holds {
                self.actions.push_back(FrontAction::Resteer {
                    id,
                    flow: m.flow,
                    backend,
                });
            }
            self.events.push_back(FrontEvent::Mirrored {
                backend,
                origin: m.origin,
                flow: m.flow,
                hint: m.hint,
            });
            return;
        }
        let id = self.alloc(true);
        self.flows.insert(
            id,
            Flow {
                key: m.flow,
                backend,
                phase: Phase::Live,
                parked: false,
                kind: Kind::Mirror {
                    origin: Some((m.origin, m.id)),
                },
            },
        );
        self.mirror_ids.insert(identity, id);
        self.events.push_back(FrontEvent::Mirrored {
            backend,
            origin: m.origin,
            flow: m.flow,
            hint: m.hint,
        });
        let takes = match self.by_key.get(&m.flow).and_then(|h| self.flows.get(h)) {
            None => true,
            Some(h) => matches!(h.phase, Phase::Closing { .. }),
        };
        if takes {
            self.take(m.flow, id);
        } else {
            self.waiting.entry(m.flow).or_default().push(id);
        }
    }

    fn on_unmirror(&mut self, now: Instant, backend: BackendId, m: MirrorRef) {
        let found = self
            .mirror_ids
            .get(&(backend, m.origin, m.id))
            .copied()
            .filter(|id| {
                self.flows
                    .get(id)
                    .is_some_and(|f| f.key == m.flow && f.mirror_served())
            });
        match found {
            Some(id) => self.end_mirror(now, id),
            None => self.stale(backend, "unmirror"),
        }
    }

    fn on_mirroring(
        &mut self,
        now: Instant,
        backend: BackendId,
        flows: Vec<MirrorFlow>,
        done: bool,
    ) {
        if !self.peers.get(backend).is_some_and(|p| p.listing) {
            // Only the start of a channel carries `Mirroring`.
            return self.stale(backend, "mirroring");
        }
        for m in flows {
            self.on_mirror(backend, m);
        }
        if !done {
            return;
        }
        if let Some(p) = self.peers.get_mut(backend) {
            p.listing = false;
        }
        // Listed ones are live again; what is still orphaned was not listed.
        let gone = self.ids_on(backend, |f| {
            !f.is_own() && matches!(f.phase, Phase::Orphaned { .. })
        });
        for id in gone {
            self.end_mirror(now, id);
        }
    }

    fn on_answer_due(&mut self, id: u64) {
        let Some(f) = self.flow_in(id, |p| matches!(p, Phase::Offered { .. })) else {
            return;
        };
        let backend = f.backend;
        if self.is_up(backend) {
            self.actions.push_back(FrontAction::Send {
                backend,
                frame: ToBack::Abort { id },
            });
        }
        self.events.push_back(FrontEvent::TimedOut { id, backend });
        self.reset(id);
    }

    fn on_orphans_due(&mut self, backend: BackendId, epoch: u64) {
        let ids = self.ids_on(backend, |f| {
            f.phase == Phase::Orphaned { epoch } || f.phase == Phase::Inherited { epoch }
        });
        for id in ids {
            let holds = self.holds(id);
            let Some(f) = self.flows.get(&id).copied() else {
                continue;
            };
            if matches!(f.phase, Phase::Inherited { .. }) {
                // Whether the back-end took it is still unknown: as when its
                // `Holding` does not list it (the connection it was handing
                // off is newer than whatever waits on its 4-tuple).
                self.events.push_back(FrontEvent::Lost { id, backend });
                self.reset(id);
                continue;
            }
            match (f.kind, f.phase) {
                (Kind::Own, Phase::Orphaned { .. }) => {
                    self.events.push_back(FrontEvent::Closed { id, backend });
                }
                (Kind::Mirror { .. }, _) => {
                    self.events.push_back(FrontEvent::Unmirrored { backend });
                }
                _ => {}
            }
            self.forget(id);
            if !holds {
                continue;
            }
            self.actions.push_back(FrontAction::Remove { flow: f.key });
            self.events.push_back(FrontEvent::Removed {
                cause: RemoveCause::Orphaned,
            });
            self.promote(f.key);
        }
    }

    /// The back-end no longer serves own flow `id`: mark its entry closing
    /// (unless already marked) and let it go after the grace. If a mirrored
    /// flow served by another back-end waits for the 4-tuple, it takes the
    /// entry at once instead.
    fn close(&mut self, now: Instant, id: u64) {
        let Some(f) = self.flows.get(&id).copied() else {
            return;
        };
        let (flow, backend) = (f.key, f.backend);
        self.events.push_back(FrontEvent::Closed { id, backend });
        if self.waiting.contains_key(&flow) {
            self.forget(id);
            self.promote(flow);
            return;
        }
        self.closing(now, id);
    }

    /// A mirrored flow ended: as `close`, for a mirrored flow (one that
    /// does not hold its 4-tuple just goes).
    fn end_mirror(&mut self, now: Instant, id: u64) {
        let Some(f) = self.flows.get(&id).copied() else {
            return;
        };
        self.events
            .push_back(FrontEvent::Unmirrored { backend: f.backend });
        if !self.holds(id) {
            return self.forget(id);
        }
        if self.waiting.contains_key(&f.key) {
            self.forget(id);
            self.promote(f.key);
            return;
        }
        self.closing(now, id);
    }

    /// Marks a flow that holds its entry closing and arms its grace.
    fn closing(&mut self, now: Instant, id: u64) {
        let Some(f) = self.flows.get_mut(&id) else {
            return;
        };
        let was_live = f.phase == Phase::Live;
        let due = now + self.timers_cfg.closed_grace;
        f.phase = Phase::Closing { due };
        let (flow, backend) = (f.key, f.backend);
        if was_live {
            self.actions
                .push_back(FrontAction::MarkClosing { id, flow, backend });
        }
        self.arm(due, Timer::Grace(id));
    }

    /// Mirrored flow `id` takes `flow`'s entry (free, or held by a closing
    /// flow, which goes; a mirrored one still served would wait).
    fn take(&mut self, flow: FlowKey, id: u64) {
        if let Some(old) = self.by_key.get(&flow).copied() {
            let served = self.flows.get(&old).is_some_and(Flow::mirror_served);
            self.by_key.remove(&flow);
            if served {
                self.waiting.entry(flow).or_default().push(old);
            } else {
                self.forget(old);
            }
        }
        self.by_key.insert(flow, id);
        if let Some(f) = self.flows.get(&id) {
            let (backend, phase) = (f.backend, f.phase);
            self.actions
                .push_back(FrontAction::Steer { id, flow, backend });
            if matches!(phase, Phase::Orphaned { .. }) {
                self.actions
                    .push_back(FrontAction::MarkClosing { id, flow, backend });
            }
        }
    }

    /// Nothing holds `flow` any more: the first mirrored flow that waited
    /// for it (a live one before an orphaned one) takes its entry.
    fn promote(&mut self, flow: FlowKey) {
        if self.by_key.contains_key(&flow) {
            return;
        }
        let Some(mut ids) = self.waiting.remove(&flow) else {
            return;
        };
        ids.retain(|id| self.flows.get(id).is_some_and(Flow::mirror_served));
        let live = |id: &u64| self.flows.get(id).is_some_and(|f| f.phase == Phase::Live);
        let Some(first) = ids.iter().copied().find(live).or(ids.first().copied()) else {
            return;
        };
        ids.retain(|id| *id != first);
        if !ids.is_empty() {
            self.waiting.insert(flow, ids);
        }
        self.take(flow, first);
    }

    /// Before the point of no return (nothing dumped, or the dump undone).
    fn give_back(&mut self, id: u64, status: u16, why: String) {
        self.give_back_as(id, status, why, false);
    }

    /// After the dump; the back-end never took the connection.
    fn give_back_dumped(&mut self, id: u64, status: u16, why: String) {
        self.give_back_as(id, status, why, true);
    }

    fn give_back_as(&mut self, id: u64, status: u16, why: String, dumped: bool) {
        let Some(f) = self.flows.get(&id).copied() else {
            return;
        };
        self.forget(id);
        self.drop_waiting(f.key);
        self.actions.push_back(FrontAction::GiveBack {
            id,
            flow: f.key,
            status,
            dumped,
        });
        self.events.push_back(FrontEvent::GaveBack {
            id,
            backend: f.backend,
            status,
            why,
        });
    }

    fn reset(&mut self, id: u64) {
        if let Some(f) = self.flows.get(&id).copied() {
            self.forget(id);
            self.drop_waiting(f.key);
            self.actions
                .push_back(FrontAction::Reset { id, flow: f.key });
        }
    }

    fn stale(&mut self, backend: BackendId, kind: &'static str) {
        self.events.push_back(FrontEvent::Stale { backend, kind });
    }

    /// A new id, never one tracked: own ids without [`MIRROR_ID_BIT`],
    /// mirrored ones with it.
    fn alloc(&mut self, mirror: bool) -> u64 {
        loop {
            let id = if mirror {
                self.next_id | MIRROR_ID_BIT
            } else {
                self.next_id & !MIRROR_ID_BIT
            };
            self.next_id = self.next_id.wrapping_add(1);
            // Never an adopted flow's id (they came from another process's range).
            if !self.flows.contains_key(&id) {
                return id;
            }
        }
    }

    /// Whether flow `id` holds its 4-tuple's entry.
    fn holds(&self, id: u64) -> bool {
        self.flows
            .get(&id)
            .is_some_and(|f| self.by_key.get(&f.key) == Some(&id))
    }

    /// The ids of `backend`'s flows that match, in order.
    fn ids_on(&self, backend: BackendId, pick: impl Fn(&Flow) -> bool) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .flows
            .iter()
            .filter(|(_, f)| f.backend == backend && pick(f))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// An adopted mirrored flow of `backend` on `flow` whose origin is not
    /// known yet.
    fn adopted_on(&self, backend: BackendId, flow: FlowKey) -> Option<u64> {
        let waiting = self.waiting.get(&flow).into_iter().flatten();
        self.by_key
            .get(&flow)
            .into_iter()
            .chain(waiting)
            .copied()
            .find(|id| {
                self.flows.get(id).is_some_and(|f| {
                    f.backend == backend
                        && f.kind == Kind::Mirror { origin: None }
                        && matches!(f.phase, Phase::Orphaned { .. })
                })
            })
    }

    /// Forgets the mirrored flows waiting for `flow` (their entry never
    /// existed).
    fn drop_waiting(&mut self, flow: FlowKey) {
        for id in self.waiting.remove(&flow).unwrap_or_default() {
            self.forget(id);
        }
    }

    /// Forgets every record of `flow`, holder and waiting ones.
    fn drop_all_on(&mut self, flow: FlowKey) {
        if let Some(old) = self.by_key.remove(&flow) {
            self.forget(old);
        }
        self.drop_waiting(flow);
    }

    /// Drops a flow's record and its timers. Whoever waited for its entry
    /// is the caller's to promote or drop.
    fn forget(&mut self, id: u64) {
        let Some(f) = self.flows.remove(&id) else {
            return;
        };
        self.hints.remove(&id);
        if self.by_key.get(&f.key) == Some(&id) {
            self.by_key.remove(&f.key);
        } else if let Some(w) = self.waiting.get_mut(&f.key) {
            w.retain(|x| *x != id);
            if w.is_empty() {
                self.waiting.remove(&f.key);
            }
        }
        if let Kind::Mirror {
            origin: Some((origin, oid)),
        } = f.kind
        {
            let identity = (f.backend, origin, oid);
            if self.mirror_ids.get(&identity) == Some(&id) {
                self.mirror_ids.remove(&identity);
            }
        }
        match f.phase {
            Phase::Offered { due, .. } => {
                self.timers.remove(&(due, Timer::Answer(id)));
            }
            Phase::Closing { due } => {
                self.timers.remove(&(due, Timer::Grace(id)));
            }
            Phase::Parking | Phase::Live | Phase::Orphaned { .. } | Phase::Inherited { .. } => {}
        }
    }

    fn flow_in(&mut self, id: u64, phase: impl Fn(Phase) -> bool) -> Option<&mut Flow> {
        self.flows.get_mut(&id).filter(|f| phase(f.phase))
    }

    fn arm(&mut self, at: Instant, timer: Timer) {
        self.timers.insert((at, timer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    const MS: Duration = Duration::from_millis(1);

    fn timers() -> FrontTimers {
        FrontTimers {
            handoff_timeout: 1000 * MS,
            closed_grace: 2000 * MS,
            orphan_timeout: 30_000 * MS,
            idle_sweep: 75_000 * MS,
        }
    }

    fn key(port: u16) -> FlowKey {
        FlowKey {
            client: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), port),
            vip: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80),
        }
    }

    fn actions(e: &mut FrontEngine) -> Vec<FrontAction> {
        std::iter::from_fn(|| e.poll_action()).collect()
    }

    /// Runs a handoff up to `Handoff` written; returns its id.
    fn offer(e: &mut FrontEngine, now: Instant, port: u16, backend: BackendId) -> u64 {
        let id = e.start(key(port), backend);
        assert_eq!(
            actions(e),
            [FrontAction::Park {
                id,
                flow: key(port),
                backend
            }]
        );
        e.handle_parked(id, Ok(()));
        assert_eq!(actions(e), [FrontAction::Dump { id }]);
        e.handle_dumped(
            now,
            id,
            Ok(Dump::plain(
                TcpState::default(),
                Bytes::from_static(b"GET /"),
            )),
        );
        let sent = actions(e);
        assert!(
            matches!(&sent[..], [FrontAction::Send { frame: ToBack::Handoff(h), .. }] if h.id == id),
            "{sent:?}"
        );
        id
    }

    fn engine(now: Instant) -> FrontEngine {
        let mut e = FrontEngine::new(timers(), 2, 100, now);
        e.handle_channel_up(0);
        e.handle_channel_up(1);
        for b in 0..2 {
            e.handle_frame(
                now,
                b,
                ToFront::Holding {
                    ids: vec![],
                    done: true,
                },
            );
            e.handle_frame(
                now,
                b,
                ToFront::Mirroring {
                    flows: vec![],
                    done: true,
                },
            );
        }
        e
    }

    #[test]
    fn live_forwards_and_reports_the_round_trip() {
        let t0 = Instant::now();
        let mut e = engine(t0);
        let id = offer(&mut e, t0, 1000, 1);
        e.handle_frame(t0 + 3 * MS, 1, ToFront::Live { id, restore_us: 20 });
        assert_eq!(
            actions(&mut e),
            [FrontAction::Forward {
                id,
                flow: key(1000),
                backend: 1
            }]
        );
        assert_eq!(
            e.poll_event(),
            Some(FrontEvent::HandedOff {
                id,
                backend: 1,
                control_rtt: 3 * MS,
                restore_us: 20
            })
        );
        assert_eq!(e.live_on(&key(1000)), Some((id, 1)));
    }

    #[test]
    fn the_answer_deadline_resets_exactly_on_time() {
        let t0 = Instant::now();
        let mut e = engine(t0);
        let id = offer(&mut e, t0, 1000, 0);
        assert_eq!(e.poll_timeout(), Some(t0 + 1000 * MS));
        e.handle_timeout(t0 + 999 * MS);
        assert_eq!(actions(&mut e), []);
        e.handle_timeout(t0 + 1000 * MS);
        assert_eq!(
            actions(&mut e),
            [
                FrontAction::Send {
                    backend: 0,
                    frame: ToBack::Abort { id }
                },
                FrontAction::Reset {
                    id,
                    flow: key(1000)
                }
            ]
        );
        // A late Live is answered with Abort and changes nothing else.
        e.handle_frame(t0 + 1500 * MS, 0, ToFront::Live { id, restore_us: 1 });
        assert_eq!(
            actions(&mut e),
            [FrontAction::Send {
                backend: 0,
                frame: ToBack::Abort { id }
            }]
        );
        assert_eq!(e.flows(), 0);
    }

    #[test]
    fn refusal_gives_the_connection_back() {
        let t0 = Instant::now();
        let mut e = engine(t0);
        let id = offer(&mut e, t0, 1000, 0);
        e.handle_frame(
            t0,
            0,
            ToFront::Refused {
                id,
                reason: "busy".into(),
                backend_fault: true,
            },
        );
        assert_eq!(
            actions(&mut e),
            [FrontAction::GiveBack {
                id,
                flow: key(1000),
                status: 502,
                dumped: true
            }]
        );
        assert_eq!(e.flows(), 0);
        assert_eq!(
            e.poll_timeout(),
            Some(t0 + 75_000 * MS),
            "only the sweep is left"
        );
    }

    #[test]
    fn a_down_channel_is_answered_by_the_front_before_anything_is_sent() {
        let t0 = Instant::now();
        let mut e = engine(t0);
        e.handle_channel_down(t0, 0);
        let id = e.start(key(1), 0);
        assert!(matches!(
            &actions(&mut e)[..],
            [FrontAction::GiveBack {
                status: 503,
                dumped: false,
                ..
            }]
        ));
        // Down between the park and the dump's result: still the front's.
        e.handle_channel_up(0);
        let id2 = e.start(key(2), 0);
        assert!(id2 > id);
        e.handle_parked(id2, Ok(()));
        e.handle_channel_down(t0, 0);
        e.handle_dumped(t0, id2, Ok(Dump::default()));
        assert_eq!(
            actions(&mut e).last(),
            Some(&FrontAction::GiveBack {
                id: id2,
                flow: key(2),
                status: 503,
                dumped: true
            })
        );
    }

    #[test]
    fn channel_loss_resets_offers_and_orphans_live_flows() {
        let t0 = Instant::now();
        let mut e = engine(t0);
        let live = offer(&mut e, t0, 1, 0);
        e.handle_frame(
            t0,
            0,
            ToFront::Live {
                id: live,
                restore_us: 1,
            },
        );
        actions(&mut e);
        let waiting = offer(&mut e, t0, 2, 0);
        actions(&mut e);
        e.handle_channel_down(t0 + MS, 0);
        assert_eq!(
            actions(&mut e),
            [
                FrontAction::MarkClosing {
                    id: live,
                    flow: key(1),
                    backend: 0
                },
                FrontAction::Reset {
                    id: waiting,
                    flow: key(2)
                },
            ]
        );
        // Back within the orphan timeout, still holding the live flow.
        e.handle_channel_up(0);
        e.handle_frame(
            t0 + 5 * MS,
            0,
            ToFront::Holding {
                ids: vec![live],
                done: false,
            },
        );
        assert_eq!(actions(&mut e), []);
        e.handle_frame(
            t0 + 5 * MS,
            0,
            ToFront::Holding {
                ids: vec![],
                done: true,
            },
        );
        assert_eq!(
            actions(&mut e),
            [FrontAction::Resteer {
                id: live,
                flow: key(1),
                backend: 0
            }]
        );
        // The orphan deadline of that epoch finds nothing to remove.
        e.handle_timeout(t0 + 31_000 * MS);
        assert_eq!(actions(&mut e), []);
        assert_eq!(e.live_on(&key(1)), Some((live, 0)));
    }

    #[test]
    fn a_restarted_back_end_lists_nothing_and_its_flows_close() {
        let t0 = Instant::now();
        let mut e = engine(t0);
        let id = offer(&mut e, t0, 1, 0);
        e.handle_frame(t0, 0, ToFront::Live { id, restore_us: 1 });
        e.handle_channel_down(t0, 0);
        actions(&mut e);
        e.handle_channel_up(0);
        e.handle_frame(
            t0 + 100 * MS,
            0,
            ToFront::Holding {
                ids: vec![],
                done: true,
            },
        );
        // Already marked closing when orphaned: only the grace timer is armed.
        assert_eq!(actions(&mut e), []);
        e.handle_timeout(t0 + 2100 * MS);
        assert_eq!(
            actions(&mut e),
            [FrontAction::RemoveIfQuiet {
                id,
                flow: key(1),
                quiet: 2000 * MS
            }]
        );
        e.handle_removal(t0 + 2100 * MS, id, Quiet::Removed);
        assert_eq!(e.flows(), 0);
    }

    #[test]
    fn orphans_go_when_the_channel_stays_down() {
        let t0 = Instant::now();
        let mut e = engine(t0);
        let id = offer(&mut e, t0, 1, 1);
        e.handle_frame(t0, 1, ToFront::Live { id, restore_us: 1 });
        e.handle_channel_down(t0, 1);
        actions(&mut e);
        e.handle_timeout(t0 + 30_000 * MS);
        assert_eq!(actions(&mut e), [FrontAction::Remove { flow: key(1) }]);
        assert_eq!(e.flows(), 0);
    }

    #[test]
    fn a_stale_closed_never_touches_a_newer_flow_on_the_same_tuple() {
        let t0 = Instant::now();
        let mut e = engine(t0);
        let old = offer(&mut e, t0, 7, 0);
        e.handle_frame(
            t0,
            0,
            ToFront::Live {
                id: old,
                restore_us: 1,
            },
        );
        e.handle_frame(
            t0,
            0,
            ToFront::Closed {
                id: old,
                flow: key(7),
            },
        );
        actions(&mut e);
        // A SYN replaced the closing entry: a new connection, same 4-tuple.
        let new = offer(&mut e, t0, 7, 1);
        e.handle_frame(
            t0,
            1,
            ToFront::Live {
                id: new,
                restore_us: 1,
            },
        );
        actions(&mut e);
        e.handle_frame(
            t0,
            0,
            ToFront::Closed {
                id: old,
                flow: key(7),
            },
        );
        e.handle_frame(
            t0,
            1,
            ToFront::Closed {
                id: old,
                flow: key(7),
            },
        );
        e.handle_timeout(t0 + 10_000 * MS);
        assert_eq!(actions(&mut e), []);
        assert_eq!(e.live_on(&key(7)), Some((new, 1)));
    }

    #[test]
    fn a_busy_closed_entry_waits_for_quiet() {
        let t0 = Instant::now();
        let mut e = engine(t0);
        let id = offer(&mut e, t0, 1, 0);
        e.handle_frame(t0, 0, ToFront::Live { id, restore_us: 1 });
        e.handle_frame(t0, 0, ToFront::Closed { id, flow: key(1) });
        actions(&mut e);
        e.handle_timeout(t0 + 2000 * MS);
        actions(&mut e);
        e.handle_removal(t0 + 2000 * MS, id, Quiet::Busy { idle: 500 * MS });
        assert_eq!(e.poll_timeout(), Some(t0 + 3500 * MS));
    }

    #[test]
    fn idle_entries_go_but_handoffs_in_progress_keep_theirs() {
        let t0 = Instant::now();
        let mut e = engine(t0);
        let live = offer(&mut e, t0, 1, 0);
        e.handle_frame(
            t0,
            0,
            ToFront::Live {
                id: live,
                restore_us: 1,
            },
        );
        actions(&mut e);
        offer(&mut e, t0, 2, 0);
        actions(&mut e);
        e.handle_idle(&[key(1), key(2), key(3)]);
        assert_eq!(
            actions(&mut e),
            [
                FrontAction::Remove { flow: key(1) },
                FrontAction::Remove { flow: key(3) }
            ]
        );
        assert_eq!(e.flows(), 1);
        // The sweep comes round again every idle_sweep.
        e.handle_timeout(t0 + 75_000 * MS);
        assert_eq!(actions(&mut e).last(), Some(&FrontAction::SweepIdle));
        assert_eq!(e.poll_timeout(), Some(t0 + 150_000 * MS));
    }

    // ---- mirrored flows ----

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 101));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 102));

    fn m(origin: IpAddr, id: u64, port: u16) -> MirrorFlow {
        MirrorFlow {
            origin,
            id,
            flow: key(port),
            hint: Bytes::from_static(b"/t"),
        }
    }

    fn mirror(e: &mut FrontEngine, now: Instant, backend: BackendId, flows: Vec<MirrorFlow>) {
        e.handle_frame(now, backend, ToFront::Mirror { flows });
    }

    fn unmirror(e: &mut FrontEngine, now: Instant, backend: BackendId, flows: &[MirrorFlow]) {
        e.handle_frame(
            now,
            backend,
            ToFront::Unmirror {
                flows: flows.iter().map(MirrorFlow::as_ref).collect(),
            },
        );
    }

    fn listing(e: &mut FrontEngine, now: Instant, backend: BackendId, flows: Vec<MirrorFlow>) {
        e.handle_frame(
            now,
            backend,
            ToFront::Holding {
                ids: vec![],
                done: true,
            },
        );
        e.handle_frame(now, backend, ToFront::Mirroring { flows, done: true });
    }

    fn events(e: &mut FrontEngine) -> Vec<FrontEvent> {
        std::iter::from_fn(|| e.poll_event()).collect()
    }

    /// A mirrored flow holding an entry: its id, back-end and origin.
    type Held = (u64, BackendId, Option<(IpAddr, u64)>);

    /// The mirrored flow holding `port`'s entry.
    fn mirror_holder(e: &FrontEngine, port: u16) -> Option<Held> {
        match e.holder(&key(port))? {
            Holder::Mirror {
                id,
                backend,
                origin,
                ..
            } => Some((id, backend, origin)),
            Holder::Own { .. } => None,
        }
    }

    #[test]
    fn a_mirrored_flow_is_steered_then_ages_out_like_an_own_one() {
        let t0 = Instant::now();
        let mut e = engine(t0);
        events(&mut e);
        mirror(&mut e, t0, 1, vec![m(A, 7, 1)]);
        let (id, backend, origin) = mirror_holder(&e, 1).expect("held");
        assert!(is_mirror_id(id));
        assert_eq!((backend, origin), (1, Some((A, 7))));
        assert_eq!(
            actions(&mut e),
            [FrontAction::Steer {
                id,
                flow: key(1),
                backend: 1
            }]
        );
        assert_eq!(
            events(&mut e),
            [FrontEvent::Mirrored {
                backend: 1,
                origin: A,
                flow: key(1),
                hint: Bytes::from_static(b"/t")
            }]
        );
        assert_eq!(e.steer(&key(1)), Some(Some(1)));
        assert_eq!((e.mirrored(), e.handed(), e.flows_on(1)), (1, 0, 0));
        // The same flow again is a repeat: nothing changes.
        mirror(&mut e, t0, 1, vec![m(A, 7, 1)]);
        assert_eq!(actions(&mut e), []);
        assert_eq!(
            events(&mut e),
            [FrontEvent::Stale {
                backend: 1,
                kind: "mirror"
            }]
        );
        // Another back-end, or another origin, cannot end it.
        unmirror(&mut e, t0, 0, &[m(A, 7, 1)]);
        unmirror(&mut e, t0, 1, &[m(B, 7, 1)]);
        unmirror(&mut e, t0, 1, &[m(A, 7, 2)]);
        assert_eq!(actions(&mut e), []);
        assert_eq!(events(&mut e).len(), 3);
        unmirror(&mut e, t0 + MS, 1, &[m(A, 7, 1)]);
        assert_eq!(
            actions(&mut e),
            [FrontAction::MarkClosing {
                id,
                flow: key(1),
                backend: 1
            }]
        );
        assert_eq!(events(&mut e), [FrontEvent::Unmirrored { backend: 1 }]);
        e.handle_timeout(t0 + 2001 * MS);
        assert_eq!(
            actions(&mut e),
            [FrontAction::RemoveIfQuiet {
                id,
                flow: key(1),
                quiet: 2000 * MS
            }]
        );
        e.handle_removal(t0 + 2001 * MS, id, Quiet::Removed);
        assert_eq!(e.flows(), 0);
        // A late repeat of the Unmirror finds nothing.
        unmirror(&mut e, t0, 1, &[m(A, 7, 1)]);
        assert_eq!(actions(&mut e), []);
    }

    #[test]
    fn a_channel_listing_keeps_what_it_names_and_ends_the_rest() {
        let t0 = Instant::now();
        let mut e = engine(t0);
        mirror(&mut e, t0, 0, vec![m(A, 1, 1), m(B, 1, 2)]);
        actions(&mut e);
        let (kept, _, _) = mirror_holder(&e, 1).expect("held");
        let (gone, _, _) = mirror_holder(&e, 2).expect("held");
        e.handle_channel_down(t0, 0);
        assert_eq!(
            actions(&mut e),
            [
                FrontAction::MarkClosing {
                    id: kept,
                    flow: key(1),
                    backend: 0
                },
                FrontAction::MarkClosing {
                    id: gone,
                    flow: key(2),
                    backend: 0
                }
            ]
        );
        // Mirroring only at the start of a channel.
        e.handle_frame(
            t0,
            1,
            ToFront::Mirroring {
                flows: vec![m(A, 9, 9)],
                done: true,
            },
        );
        assert_eq!(e.holder(&key(9)), None);
        e.handle_channel_up(0);
        events(&mut e);
        listing(&mut e, t0 + 10 * MS, 0, vec![m(A, 1, 1)]);
        assert_eq!(
            actions(&mut e),
            [FrontAction::Resteer {
                id: kept,
                flow: key(1),
                backend: 0
            }]
        );
        assert_eq!(events(&mut e), [FrontEvent::Unmirrored { backend: 0 }]);
        e.handle_timeout(t0 + 2010 * MS);
        assert_eq!(
            actions(&mut e),
            [FrontAction::RemoveIfQuiet {
                id: gone,
                flow: key(2),
                quiet: 2000 * MS
            }]
        );
        // The orphan deadline of the old channel finds nothing to remove.
        e.handle_removal(t0 + 2010 * MS, gone, Quiet::Removed);
        e.handle_timeout(t0 + 31_000 * MS);
        assert_eq!(actions(&mut e), []);
        assert_eq!(e.mirrored(), 1);
    }

    #[test]
    fn mirrored_flows_of_a_channel_that_stays_down_go_at_the_orphan_timeout() {
        let t0 = Instant::now();
        let mut e = engine(t0);
        mirror(&mut e, t0, 0, vec![m(A, 1, 1)]);
        e.handle_channel_down(t0, 0);
        actions(&mut e);
        events(&mut e);
        e.handle_timeout(t0 + 30_000 * MS);
        assert_eq!(actions(&mut e), [FrontAction::Remove { flow: key(1) }]);
        assert_eq!(
            events(&mut e),
            [
                FrontEvent::Unmirrored { backend: 0 },
                FrontEvent::Removed {
                    cause: RemoveCause::Orphaned
                }
            ]
        );
        assert_eq!(e.flows(), 0);
    }

    #[test]
    fn an_own_flow_being_served_keeps_its_tuple_and_a_waiting_mirror_takes_it_at_the_close() {
        let t0 = Instant::now();
        let mut e = engine(t0);
        let own = offer(&mut e, t0, 5, 0);
        // Mirrored while the own handoff is offered, then live: it waits.
        mirror(&mut e, t0, 1, vec![m(A, 3, 5)]);
        e.handle_frame(
            t0,
            0,
            ToFront::Live {
                id: own,
                restore_us: 1,
            },
        );
        mirror(&mut e, t0 + MS, 1, vec![m(B, 4, 5)]);
        let a = actions(&mut e);
        assert!(
            a.iter().all(|a| !matches!(a, FrontAction::Steer { .. })),
            "{a:?}"
        );
        assert_eq!(e.live_on(&key(5)), Some((own, 0)));
        assert_eq!(e.mirrored(), 2);
        // The own flow closes: the first waiting mirror takes the entry at
        // once; the own record goes (its entry is the mirror's now).
        e.handle_frame(
            t0 + MS,
            0,
            ToFront::Closed {
                id: own,
                flow: key(5),
            },
        );
        let (id, backend, origin) = mirror_holder(&e, 5).expect("held");
        assert_eq!((backend, origin), (1, Some((A, 3))));
        assert_eq!(
            actions(&mut e),
            [FrontAction::Steer {
                id,
                flow: key(5),
                backend: 1
            }]
        );
        // Its end hands the entry to the other one still served.
        unmirror(&mut e, t0 + 2 * MS, 1, &[m(A, 3, 5)]);
        let (id2, _, origin) = mirror_holder(&e, 5).expect("held");
        assert_eq!(origin, Some((B, 4)));
        assert_eq!(
            actions(&mut e),
            [FrontAction::Steer {
                id: id2,
                flow: key(5),
                backend: 1
            }]
        );
        // Nothing is left behind by the grace of anything.
        e.handle_timeout(t0 + 10_000 * MS);
        assert_eq!(actions(&mut e), []);
        assert_eq!(e.flows(), 1);
    }

    #[test]
    fn a_mirror_replaces_a_closing_entry_and_a_new_connection_drops_every_record() {
        let t0 = Instant::now();
        let mut e = engine(t0);
        let own = offer(&mut e, t0, 5, 0);
        e.handle_frame(
            t0,
            0,
            ToFront::Live {
                id: own,
                restore_us: 1,
            },
        );
        e.handle_frame(
            t0,
            0,
            ToFront::Closed {
                id: own,
                flow: key(5),
            },
        );
        actions(&mut e);
        // The client's next connection on the tuple went to another front.
        mirror(&mut e, t0 + MS, 1, vec![m(A, 3, 5)]);
        let (id, _, _) = mirror_holder(&e, 5).expect("held");
        assert_eq!(
            actions(&mut e),
            [FrontAction::Steer {
                id,
                flow: key(5),
                backend: 1
            }]
        );
        // The own flow's grace is gone with it.
        e.handle_timeout(t0 + 2500 * MS);
        assert_eq!(actions(&mut e), []);
        // A new connection reaches this front on the tuple (its entry was
        // removed): the mirror is forgotten, its late Unmirror is stale.
        e.handle_removal(t0, id, Quiet::Removed);
        let new = offer(&mut e, t0 + 3000 * MS, 5, 0);
        assert_eq!(e.mirrored(), 0);
        unmirror(&mut e, t0 + 3001 * MS, 1, &[m(A, 3, 5)]);
        assert_eq!(actions(&mut e), []);
        assert_eq!(
            e.holder(&key(5)),
            Some(Holder::Own {
                id: new,
                backend: 0,
                closing: false
            })
        );
    }

    #[test]
    fn the_holder_keeps_the_tuple_until_it_ends_and_stale_reports_touch_nothing() {
        let t0 = Instant::now();
        let mut e = engine(t0);
        mirror(&mut e, t0, 0, vec![m(A, 1, 5)]);
        let (old, _, _) = mirror_holder(&e, 5).expect("held");
        actions(&mut e);
        // Another connection on the tuple, mirrored by another back-end:
        // whichever is newer, the holder keeps its entry until it ends.
        mirror(&mut e, t0, 1, vec![m(B, 2, 5)]);
        assert_eq!(actions(&mut e), []);
        assert_eq!(mirror_holder(&e, 5).map(|h| h.0), Some(old));
        // The holder's end: the waiting one takes the entry at once.
        unmirror(&mut e, t0 + MS, 0, &[m(A, 1, 5)]);
        let (new, backend, _) = mirror_holder(&e, 5).expect("held");
        assert_eq!(backend, 1);
        assert_eq!(
            actions(&mut e),
            [FrontAction::Steer {
                id: new,
                flow: key(5),
                backend: 1
            }]
        );
        assert!(!e.flows.contains_key(&old));
        // A repeat of anything about the old identity, or of the new one, is
        // stale.
        unmirror(&mut e, t0 + MS, 0, &[m(A, 1, 5)]);
        mirror(&mut e, t0 + MS, 1, vec![m(B, 2, 5)]);
        assert_eq!(actions(&mut e), []);
        assert_eq!(mirror_holder(&e, 5).map(|h| h.0), Some(new));
        // A late report of an older connection on it (a lagging channel),
        // or a listing naming one, waits behind the holder.
        mirror(&mut e, t0 + 2 * MS, 0, vec![m(A, 0, 5)]);
        e.handle_channel_down(t0, 0);
        e.handle_channel_up(0);
        listing(&mut e, t0 + 2 * MS, 0, vec![m(A, 0, 5), m(A, 9, 5)]);
        assert_eq!(actions(&mut e), []);
        assert_eq!(mirror_holder(&e, 5).map(|h| h.0), Some(new));
        assert_eq!(e.mirrored(), 3);
        // Orphaned, the holder keeps it too.
        e.handle_channel_down(t0, 1);
        mirror(&mut e, t0 + 3 * MS, 0, vec![m(A, 10, 5)]);
        assert_eq!(mirror_holder(&e, 5).map(|h| h.0), Some(new));
    }

    #[test]
    fn a_failed_own_handoff_drops_the_mirrors_waiting_on_its_tuple() {
        let t0 = Instant::now();
        let mut e = engine(t0);
        let own = offer(&mut e, t0, 5, 0);
        mirror(&mut e, t0, 1, vec![m(A, 3, 5)]);
        e.handle_frame(
            t0,
            0,
            ToFront::Refused {
                id: own,
                reason: "in use".into(),
                backend_fault: false,
            },
        );
        let a = actions(&mut e);
        assert!(matches!(&a[..], [FrontAction::GiveBack { .. }]), "{a:?}");
        assert_eq!(e.flows(), 0);
    }

    #[test]
    fn a_restarted_front_adopts_mirrored_entries_and_its_back_end_names_them() {
        let t0 = Instant::now();
        let mut e = FrontEngine::new(timers(), 2, 100, t0);
        let pinned = MIRROR_ID_BIT | 55;
        assert!(e.adopt(t0, key(1), pinned, 1, Entry::Forwarding));
        assert!(e.adopt(t0, key(2), MIRROR_ID_BIT | 56, 1, Entry::Forwarding));
        assert!(!e.adopt(t0, key(3), MIRROR_ID_BIT | 57, 1, Entry::Parked));
        assert_eq!(
            actions(&mut e),
            [
                FrontAction::MarkClosing {
                    id: pinned,
                    flow: key(1),
                    backend: 1
                },
                FrontAction::MarkClosing {
                    id: MIRROR_ID_BIT | 56,
                    flow: key(2),
                    backend: 1
                }
            ]
        );
        assert_eq!(mirror_holder(&e, 1), Some((pinned, 1, None)));
        // New ids never take an adopted one's.
        assert!(!is_mirror_id(e.start(key(4), 0)));
        actions(&mut e);
        e.handle_channel_up(1);
        // The back-end lists the first by its 4-tuple; the second is over.
        listing(&mut e, t0 + MS, 1, vec![m(A, 77, 1)]);
        assert_eq!(
            actions(&mut e),
            [FrontAction::Resteer {
                id: pinned,
                flow: key(1),
                backend: 1
            }]
        );
        assert_eq!(mirror_holder(&e, 1), Some((pinned, 1, Some((A, 77)))));
        assert_eq!(
            events(&mut e)
                .iter()
                .filter(|e| matches!(e, FrontEvent::Mirrored { origin: A, .. }))
                .count(),
            1
        );
        // From now on its identity is known: its Unmirror ends it.
        unmirror(&mut e, t0 + 2 * MS, 1, &[m(A, 77, 1)]);
        assert_eq!(
            actions(&mut e),
            [FrontAction::MarkClosing {
                id: pinned,
                flow: key(1),
                backend: 1
            }]
        );
    }

    #[test]
    fn the_idle_sweep_leaves_live_mirrors_alone() {
        let t0 = Instant::now();
        let mut e = engine(t0);
        mirror(&mut e, t0, 0, vec![m(A, 1, 1), m(A, 2, 2)]);
        unmirror(&mut e, t0, 0, &[m(A, 2, 2)]);
        actions(&mut e);
        e.handle_idle(&[key(1), key(2)]);
        assert_eq!(actions(&mut e), [FrontAction::Remove { flow: key(2) }]);
        assert_eq!(e.mirrored(), 1);
    }

    #[test]
    fn a_hint_travels_in_the_handoff_and_an_oversized_one_is_dropped() {
        let t0 = Instant::now();
        let mut e = engine(t0);
        for (hint, sent) in [
            (
                Bytes::from_static(b"/img/a.png"),
                Bytes::from_static(b"/img/a.png"),
            ),
            (Bytes::from(vec![1; MAX_HINT + 1]), Bytes::new()),
        ] {
            let id = e.start_with_hint(key(1), 0, hint);
            e.handle_parked(id, Ok(()));
            actions(&mut e);
            e.handle_dumped(t0, id, Ok(Dump::default()));
            let a = actions(&mut e);
            assert!(
                matches!(&a[..], [FrontAction::Send { frame: ToBack::Handoff(h), .. }] if h.hint == sent),
                "{a:?}"
            );
        }
        // Ids of mirrored flows are not handoff ids.
        mirror(&mut e, t0, 0, vec![m(A, MIRROR_ID_BIT | 1, 9)]);
        assert_eq!(e.holder(&key(9)), None);
    }
}
