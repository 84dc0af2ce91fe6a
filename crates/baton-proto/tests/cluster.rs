//! A simulated cluster for the handoff engines (quinn's `Pair`, grown to
//! several fronts and N back-ends): a simulated clock, per-channel delay,
//! channels that die after any frame, back-ends that stall or restart,
//! fronts that restart on their pinned flow table, a fake forwarder map per
//! front, routers that may send a client's packets to another front
//! (ECMP), and clients whose ACKs keep entries fresh. Property tests check
//! what a user would notice: one answer per connection, no hang, no entry
//! left behind on any front, deadlines on time, no stale report acting on
//! a newer connection, and every front steering every live connection once
//! its back-end had time to say so.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use baton_proto::handoff::{
    BackAction, BackEngine, Dump, Entry as AdoptedEntry, FrontAction, FrontEngine, FrontEvent,
    FrontTimers, Holder, Quiet, Refusal,
};
use baton_proto::{FlowKey, ToBack, ToFront};
use proptest::prelude::*;

const MS: Duration = Duration::from_millis(1);

fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const IDLE: Duration = Duration::from_secs(60);
/// How long a back-end's reports wait to share a write.
const BATCH: Duration = Duration::from_millis(5);

fn timers() -> FrontTimers {
    FrontTimers {
        handoff_timeout: 500 * MS,
        closed_grace: 200 * MS,
        orphan_timeout: 5000 * MS,
        idle_sweep: IDLE / 4,
    }
}

fn key(port: u16) -> FlowKey {
    FlowKey {
        client: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), port),
        vip: SocketAddrV4::new(VIP, 80),
    }
}

/// Front `f`'s address (front 0 is 198.18.0.3).
fn front_ip(f: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3 + f as u8))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Park,
    Forward(usize),
    Closing(usize),
}

#[derive(Debug)]
enum Msg {
    ToBack(ToBack),
    ToFront(ToFront),
}

/// A connection a back-end serves: it ends by itself at `ends`.
#[derive(Debug, Clone, Copy)]
struct Conn {
    id: u64,
    /// The front that handed it off.
    origin: usize,
    ends: Instant,
    /// When it went live, or when the connection before it on its 4-tuple
    /// ended, if later: what the other fronts may have heard of by then.
    since: Instant,
}

/// A handoff, cluster-wide: (front, id). Ids never repeat on one front,
/// across its restarts too.
type Ident = (usize, u64);

/// One front process and what it left in its (pinned) forwarder map.
struct Front {
    engine: FrontEngine,
    /// The current channel to each back-end, if up, and since when.
    chan: Vec<Option<(u64, Instant)>>,
    fwd: HashMap<FlowKey, (Entry, Instant)>,
    /// What the forwarder's entries record of their owner: (id, back-end).
    owners: HashMap<FlowKey, (u64, usize)>,
    /// Processes started so far (each draws ids from its own range).
    processes: u64,
}

struct Sim {
    now: Instant,
    fronts: Vec<Front>,
    backs: Vec<BackEngine>,
    next_chan: u64,
    /// Every channel ever opened: (front, back-end).
    chans: HashMap<u64, (usize, usize)>,
    delay: Vec<Duration>,
    /// Extra delay of the frames from back-end `b` to front `f`
    /// (`lag[f][b]`): a channel whose TCP stream lags (losses,
    /// retransmissions), so that reports from different back-ends arrive
    /// out of the order they were sent in. Frames on one channel never
    /// overtake each other.
    lag: Vec<Vec<Duration>>,
    /// The largest lag any of a front's channels ever had.
    lag_max: Vec<Duration>,
    /// When the last frame on each channel to a front is delivered.
    last_at: HashMap<u64, Instant>,
    /// A stalled back-end reads nothing before this.
    stalled_until: Vec<Instant>,
    /// (deliver at, sequence) -> (front, back-end, channel, frame)
    net: BTreeMap<(Instant, u64), (usize, usize, u64, Msg)>,
    seq: u64,
    conns: Vec<HashMap<FlowKey, Conn>>,
    /// The front each 4-tuple's packets reach (ECMP).
    route: HashMap<FlowKey, usize>,
    /// When the last connection on a 4-tuple ended.
    last_end: HashMap<FlowKey, Instant>,
    /// Connections that ended, for the check that every front lets go of
    /// them: (4-tuple, back-end, handoff, when).
    ended: Vec<(FlowKey, usize, Ident, Instant)>,
    /// A client opens one connection per 4-tuple at a time (several
    /// fronts); off, a new connection may reach a front while a back-end
    /// still serves the old one (the single-front cases of old).
    one_per_tuple: bool,
    // Outcomes, by handoff.
    started: HashSet<Ident>,
    /// Creation order of every handoff.
    order: HashMap<Ident, u64>,
    pending: HashMap<FlowKey, HashSet<Ident>>,
    answered_by_front: HashSet<Ident>,
    reset: HashSet<Ident>,
    forwarded: HashSet<Ident>,
    went_live: HashSet<Ident>,
    sent_at: HashMap<Ident, Instant>,
    /// Times the steering property was checked and held (a test that
    /// cannot fail is a defect: the property tests look at this).
    steer_checks: u64,
    /// Times a report about an older connection reached a front where a
    /// newer one held the 4-tuple (and changed nothing).
    stale_checks: u64,
}

impl Sim {
    fn new(fronts: usize, backends: usize, delays: &[u8]) -> Sim {
        let t0 = Instant::now();
        let mut s = Sim {
            now: t0,
            fronts: (0..fronts)
                .map(|f| Front {
                    engine: FrontEngine::new(timers(), backends, id_base(f, 1), t0),
                    chan: vec![None; backends],
                    fwd: HashMap::new(),
                    owners: HashMap::new(),
                    processes: 1,
                })
                .collect(),
            backs: (0..backends).map(|_| BackEngine::new(VIP, BATCH)).collect(),
            next_chan: 1,
            chans: HashMap::new(),
            delay: (0..backends)
                .map(|i| millis(u64::from(delays.get(i).copied().unwrap_or(1))) / 4)
                .collect(),
            lag: vec![vec![Duration::ZERO; backends]; fronts],
            lag_max: vec![Duration::ZERO; fronts],
            last_at: HashMap::new(),
            stalled_until: vec![t0; backends],
            net: BTreeMap::new(),
            seq: 0,
            conns: vec![HashMap::new(); backends],
            route: HashMap::new(),
            last_end: HashMap::new(),
            ended: Vec::new(),
            one_per_tuple: fronts > 1,
            started: HashSet::new(),
            order: HashMap::new(),
            pending: HashMap::new(),
            answered_by_front: HashSet::new(),
            reset: HashSet::new(),
            forwarded: HashSet::new(),
            went_live: HashSet::new(),
            sent_at: HashMap::new(),
            steer_checks: 0,
            stale_checks: 0,
        };
        for f in 0..fronts {
            for b in 0..backends {
                s.connect(f, b);
            }
        }
        s.run();
        s
    }

    fn max_delay(&self) -> Duration {
        self.delay.iter().copied().max().unwrap_or_default()
    }

    fn connect(&mut self, f: usize, b: usize) {
        if self.fronts[f].chan[b].is_some() {
            return;
        }
        let c = self.next_chan;
        self.next_chan += 1;
        self.chans.insert(c, (f, b));
        self.fronts[f].chan[b] = Some((c, self.now));
        self.fronts[f].engine.handle_channel_up(b);
        self.backs[b].handle_channel_up(c, front_ip(f));
    }

    fn cut(&mut self, f: usize, b: usize) {
        let Some((c, _)) = self.fronts[f].chan[b].take() else {
            return;
        };
        self.net.retain(|_, (_, _, ch, _)| *ch != c);
        self.fronts[f].engine.handle_channel_down(self.now, b);
        self.backs[b].handle_channel_down(self.now, c);
    }

    /// The back-end process dies and starts again: its connections end
    /// without reports (its kernel resets them).
    fn restart(&mut self, b: usize) {
        for f in 0..self.fronts.len() {
            self.cut(f, b);
        }
        self.backs[b] = BackEngine::new(VIP, BATCH);
        let now = self.now;
        for (k, _) in self.conns[b].drain() {
            self.last_end.insert(k, now);
        }
    }

    /// Front `f`'s process dies (or is upgraded) and a new one starts on
    /// the pinned flow table: what it had written to its channels still
    /// reaches the back-ends, then the channels close; the new engine
    /// adopts every entry and connects again.
    fn restart_front(&mut self, f: usize) {
        let mut in_flight: Vec<(Instant, u64)> = self
            .net
            .iter()
            .filter(|(_, (to, _, _, msg))| *to == f && matches!(msg, Msg::ToBack(_)))
            .map(|(k, _)| *k)
            .collect();
        // In the order written (a stall may have put an earlier frame
        // behind a later one's delivery time): a channel is a TCP stream.
        in_flight.sort_by_key(|k| k.1);
        for k in in_flight {
            if let Some((_, b, ch, Msg::ToBack(frame))) = self.net.remove(&k) {
                self.backs[b].handle_frame(self.now, ch, frame);
            }
        }
        self.run_backs();
        for b in 0..self.backs.len() {
            if let Some((c, _)) = self.fronts[f].chan[b].take() {
                self.net.retain(|_, (_, _, ch, _)| *ch != c);
                self.backs[b].handle_channel_down(self.now, c);
            }
        }
        let fr = &mut self.fronts[f];
        fr.processes += 1;
        fr.engine = FrontEngine::new(
            timers(),
            self.backs.len(),
            id_base(f, fr.processes),
            self.now,
        );
        let mut entries: Vec<(FlowKey, Entry)> =
            fr.fwd.iter().map(|(k, (e, _))| (*k, *e)).collect();
        entries.sort_by_key(|(k, _)| k.client.port());
        for (k, e) in entries {
            let (id, b) = fr.owners[&k];
            let entry = match e {
                Entry::Park => AdoptedEntry::Parked,
                Entry::Forward(_) => AdoptedEntry::Forwarding,
                Entry::Closing(_) => AdoptedEntry::Closing,
            };
            assert!(fr.engine.adopt(self.now, k, id, b, entry), "adopt {id}");
        }
        self.run();
        for b in 0..self.backs.len() {
            self.connect(f, b);
        }
    }

    fn run_backs(&mut self) {
        for b in 0..self.backs.len() {
            while let Some(a) = self.backs[b].poll_action() {
                self.back_action(b, a);
            }
            while self.backs[b].poll_event().is_some() {}
        }
    }

    /// Whether the client may open a new connection on `k`: none of its
    /// connections on it is being handed off or served.
    fn in_use(&self, k: &FlowKey) -> bool {
        self.pending.get(k).is_some_and(|p| !p.is_empty())
            || self.conns.iter().any(|m| m.contains_key(k))
    }

    /// A client's SYN and request on `port` reach front `f`, whose policy
    /// picks back-end `b`.
    fn new_conn(&mut self, port: u16, b: usize, f: usize) {
        let k = key(port);
        if self.one_per_tuple && self.in_use(&k) {
            return;
        }
        self.route.insert(k, f);
        let fr = &mut self.fronts[f];
        match fr.fwd.get(&k) {
            // A SYN on a live entry goes to the back-end, not the front.
            Some((Entry::Forward(_) | Entry::Park, _)) => return,
            Some((Entry::Closing(_), _)) => {
                fr.fwd.remove(&k);
            }
            None => {}
        }
        let id = fr.engine.start(k, b);
        let ident = (f, id);
        self.started.insert(ident);
        self.order.insert(ident, self.seq);
        self.seq += 1;
        self.pending.entry(k).or_default().insert(ident);
    }

    /// Handoff `ident` on `flow` is settled one way or another.
    fn settled(&mut self, flow: FlowKey, ident: Ident) {
        if let Some(p) = self.pending.get_mut(&flow) {
            p.remove(&ident);
        }
    }

    /// Back-end `b` reads nothing before `until`. A stall that ends
    /// earlier than one already set also releases the frames held for the
    /// old end, in their order: a channel is a TCP stream, and a frame
    /// sent later must never be read before one sent earlier.
    fn stall(&mut self, b: usize, until: Instant) {
        if until < self.stalled_until[b] {
            let held: Vec<(Instant, u64)> = self
                .net
                .iter()
                .filter(|((at, _), (_, to, _, msg))| {
                    *to == b && *at > until && matches!(msg, Msg::ToBack(_))
                })
                .map(|(k, _)| *k)
                .collect();
            for k in held {
                if let Some(v) = self.net.remove(&k) {
                    self.net.insert((until, k.1), v);
                }
            }
        }
        self.stalled_until[b] = until;
    }

    fn push(&mut self, f: usize, b: usize, ch: u64, msg: Msg) {
        let mut at = self.now + self.delay[b];
        if matches!(msg, Msg::ToFront(_)) {
            at += self.lag[f][b];
            let last = self.last_at.entry(ch).or_insert(at);
            at = at.max(*last);
            *last = at;
        }
        self.seq += 1;
        self.net.insert((at, self.seq), (f, b, ch, msg));
    }

    fn set_lag(&mut self, f: usize, b: usize, lag: Duration) {
        self.lag[f][b] = lag;
        self.lag_max[f] = self.lag_max[f].max(lag);
    }

    /// Carries out everything the engines asked for, until quiet.
    fn run(&mut self) {
        loop {
            let mut busy = false;
            for f in 0..self.fronts.len() {
                while let Some(a) = self.fronts[f].engine.poll_action() {
                    busy = true;
                    self.front_action(f, a);
                }
                while let Some(e) = self.fronts[f].engine.poll_event() {
                    if let FrontEvent::TimedOut { id, .. } = e {
                        let sent = self.sent_at[&(f, id)];
                        assert_eq!(
                            self.now,
                            sent + timers().handoff_timeout,
                            "answer deadline of {id}"
                        );
                    }
                }
            }
            for b in 0..self.backs.len() {
                while let Some(a) = self.backs[b].poll_action() {
                    busy = true;
                    self.back_action(b, a);
                }
                while self.backs[b].poll_event().is_some() {}
            }
            if !busy {
                return;
            }
        }
    }

    fn front_action(&mut self, f: usize, a: FrontAction) {
        let now = self.now;
        match a {
            FrontAction::Park { id, flow, backend } => {
                let fr = &mut self.fronts[f];
                fr.fwd.insert(flow, (Entry::Park, now));
                fr.owners.insert(flow, (id, backend));
                fr.engine.handle_parked(id, Ok(()));
            }
            FrontAction::Dump { id } => {
                self.fronts[f]
                    .engine
                    .handle_dumped(now, id, Ok(Dump::default()));
            }
            FrontAction::Send { backend, frame } => {
                if let ToBack::Handoff(h) = &frame {
                    self.sent_at.insert((f, h.id), now);
                }
                if let Some((c, _)) = self.fronts[f].chan[backend] {
                    self.push(f, backend, c, Msg::ToBack(frame));
                }
            }
            FrontAction::Forward { id, flow, backend } => {
                assert!(
                    self.went_live.contains(&(f, id)),
                    "forwarded {id} that never went live"
                );
                let fr = &mut self.fronts[f];
                fr.fwd.insert(flow, (Entry::Forward(backend), now));
                fr.owners.insert(flow, (id, backend));
                self.forwarded.insert((f, id));
                self.settled(flow, (f, id));
            }
            FrontAction::GiveBack { id, flow, .. } => {
                self.fronts[f].fwd.remove(&flow);
                self.answered_by_front.insert((f, id));
                self.settled(flow, (f, id));
            }
            FrontAction::Reset { id, flow } => {
                self.fronts[f].fwd.remove(&flow);
                self.reset.insert((f, id));
                self.settled(flow, (f, id));
            }
            FrontAction::MarkClosing { id, flow, backend } => {
                let fr = &mut self.fronts[f];
                if let Some(e) = fr.fwd.get_mut(&flow) {
                    e.0 = Entry::Closing(backend);
                    fr.owners.insert(flow, (id, backend));
                }
            }
            FrontAction::Resteer { id, flow, backend } => {
                let fr = &mut self.fronts[f];
                if let Some(e) = fr.fwd.get_mut(&flow) {
                    e.0 = Entry::Forward(backend);
                    fr.owners.insert(flow, (id, backend));
                }
            }
            FrontAction::Steer { id, flow, backend } => {
                let fr = &mut self.fronts[f];
                fr.fwd.insert(flow, (Entry::Forward(backend), now));
                fr.owners.insert(flow, (id, backend));
            }
            FrontAction::RemoveIfQuiet { id, flow, quiet } => {
                let fr = &mut self.fronts[f];
                let q = match fr.fwd.get(&flow) {
                    Some((_, seen)) if now.duration_since(*seen) < quiet => Quiet::Busy {
                        idle: now.duration_since(*seen),
                    },
                    _ => {
                        fr.fwd.remove(&flow);
                        Quiet::Removed
                    }
                };
                fr.engine.handle_removal(now, id, q);
            }
            FrontAction::Remove { flow } => {
                self.fronts[f].fwd.remove(&flow);
            }
            FrontAction::SweepIdle => {
                let fr = &mut self.fronts[f];
                let idle: Vec<FlowKey> = fr
                    .fwd
                    .iter()
                    .filter(|(_, (_, seen))| now.duration_since(*seen) > IDLE)
                    .map(|(k, _)| *k)
                    .collect();
                fr.engine.handle_idle(&idle);
            }
        }
    }

    fn back_action(&mut self, b: usize, a: BackAction) {
        let now = self.now;
        match a {
            BackAction::Restore { channel, handoff } => {
                let f = self.chans[&channel].0;
                let port = handoff.flow.client.port();
                // Some connections cannot be restored (a 4-tuple in use:
                // modelled for every seventh port, and as the kernel does
                // for a 4-tuple this back-end still serves).
                let result = if port % 7 == 0 || self.conns[b].contains_key(&handoff.flow) {
                    Err(Refusal {
                        reason: "in use".into(),
                        backend_fault: false,
                    })
                } else {
                    self.went_live.insert((f, handoff.id));
                    let life = millis(u64::from(port % 50) * 20);
                    let since = self
                        .last_end
                        .get(&handoff.flow)
                        .map_or(now, |t| now.max(*t));
                    self.conns[b].insert(
                        handoff.flow,
                        Conn {
                            id: handoff.id,
                            origin: f,
                            ends: now + life,
                            since,
                        },
                    );
                    Ok(15)
                };
                self.backs[b].handle_restored(
                    now,
                    channel,
                    front_ip(f),
                    handoff.id,
                    handoff.flow,
                    result,
                );
            }
            BackAction::Send { channel, frame } => {
                let (f, _) = self.chans[&channel];
                if self.fronts[f].chan[b].map(|c| c.0) == Some(channel) {
                    self.push(f, b, channel, Msg::ToFront(frame));
                }
            }
            BackAction::Reset { front, id } => {
                let gone: Vec<FlowKey> = self.conns[b]
                    .iter()
                    .filter(|(_, c)| front_ip(c.origin) == front && c.id == id)
                    .map(|(k, _)| *k)
                    .collect();
                for k in gone {
                    if let Some(c) = self.conns[b].remove(&k) {
                        self.last_end.insert(k, now);
                        self.ended.push((k, b, (c.origin, c.id), now));
                    }
                }
            }
        }
    }

    /// Moves the clock to `until`, delivering frames, firing deadlines,
    /// ending connections and letting clients ACK through live entries.
    fn advance(&mut self, until: Instant) {
        loop {
            self.run();
            let next_frame = self.net.keys().next().map(|(at, _)| *at);
            let next_end = self
                .conns
                .iter()
                .flat_map(|m| m.values().map(|c| c.ends))
                .min();
            let next = [next_frame, next_end]
                .into_iter()
                .chain(self.fronts.iter().map(|f| f.engine.poll_timeout()))
                .chain(self.backs.iter().map(|b| b.poll_timeout()))
                .flatten()
                .filter(|t| *t <= until)
                .min();
            let Some(t) = next else {
                self.now = until;
                self.touch();
                self.run();
                self.check_steering();
                return;
            };
            self.now = self.now.max(t);
            self.touch();
            self.step();
            self.run();
            self.check_steering();
        }
    }

    /// Clients of live connections send packets (ACKs) through the entry
    /// of the front the routers send them to.
    fn touch(&mut self) {
        let now = self.now;
        for (b, conns) in self.conns.iter().enumerate() {
            for (k, c) in conns {
                let f = self.route.get(k).copied().unwrap_or(c.origin);
                if let Some((Entry::Forward(to) | Entry::Closing(to), seen)) =
                    self.fronts[f].fwd.get_mut(k)
                {
                    if *to == b {
                        *seen = now;
                    }
                }
            }
        }
    }

    /// Who holds `flow` on front `f`, cluster-wide, if the front believes
    /// that connection served (not closing).
    fn served_holder_of(&self, f: usize, flow: &FlowKey) -> Option<Ident> {
        match self.fronts[f].engine.holder(flow)? {
            Holder::Own { closing: true, .. } | Holder::Mirror { closing: true, .. } => None,
            _ => self.holder_of(f, flow),
        }
    }

    /// Who holds `flow` on front `f`, cluster-wide (`None`: nothing, or a
    /// mirrored flow adopted at a restart whose origin is not known yet).
    fn holder_of(&self, f: usize, flow: &FlowKey) -> Option<Ident> {
        match self.fronts[f].engine.holder(flow)? {
            Holder::Own { id, .. } => Some((f, id)),
            Holder::Mirror {
                origin: Some((ip, id)),
                ..
            } => (0..self.fronts.len())
                .find(|g| front_ip(*g) == ip)
                .map(|g| (g, id)),
            Holder::Mirror { origin: None, .. } => None,
        }
    }

    fn step(&mut self) {
        let now = self.now;
        // Frames due now, in order; a stalled back-end reads later.
        let due: Vec<(Instant, u64)> = self
            .net
            .range(..=(now, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            let Some((f, b, ch, msg)) = self.net.remove(&k) else {
                continue;
            };
            match msg {
                Msg::ToBack(frame) => {
                    if self.stalled_until[b] > now {
                        let at = self.stalled_until[b];
                        self.net.insert((at, k.1), (f, b, ch, Msg::ToBack(frame)));
                        continue;
                    }
                    self.backs[b].handle_frame(now, ch, frame);
                }
                Msg::ToFront(frame) => self.deliver(f, b, frame),
            }
        }
        for f in 0..self.fronts.len() {
            self.fronts[f].engine.handle_timeout(now);
        }
        for b in &mut self.backs {
            b.handle_timeout(now);
        }
        for b in 0..self.conns.len() {
            let ended: Vec<FlowKey> = self.conns[b]
                .iter()
                .filter(|(_, c)| c.ends <= now)
                .map(|(k, _)| *k)
                .collect();
            for k in ended {
                if let Some(c) = self.conns[b].remove(&k) {
                    self.last_end.insert(k, now);
                    self.ended.push((k, b, (c.origin, c.id), now));
                    self.backs[b].handle_closed(now, front_ip(c.origin), c.id);
                }
            }
        }
    }

    /// A frame from back-end `b` reaches front `f`. A report about one
    /// connection never acts on a newer one on the same 4-tuple: a `Closed`
    /// for another id leaves the own flow alone, and a `Mirror`, `Unmirror`
    /// or `Mirroring` entry about a connection older than the one holding
    /// the 4-tuple, which the front believes served, leaves the holder and
    /// its entry alone. (A closing entry gives way to any report.)
    fn deliver(&mut self, f: usize, b: usize, frame: ToFront) {
        let now = self.now;
        // (4-tuple, its holder, the holder's entry) before the frame.
        let mut protect: Vec<(FlowKey, Ident, Option<Entry>)> = Vec::new();
        let mentioned: Vec<(FlowKey, Ident)> = match &frame {
            ToFront::Mirror { flows } | ToFront::Mirroring { flows, .. } => flows
                .iter()
                .map(|m| (m.flow, self.ident_of(m.origin, m.id)))
                .collect(),
            ToFront::Unmirror { flows } => flows
                .iter()
                .map(|m| (m.flow, self.ident_of(m.origin, m.id)))
                .collect(),
            _ => Vec::new(),
        };
        for (flow, about) in &mentioned {
            let Some(holder) = self.served_holder_of(f, flow) else {
                continue;
            };
            let newer = |x: &Ident, than: &Ident| self.order.get(x) > self.order.get(than);
            let holder_is_newest = mentioned
                .iter()
                .filter(|(k, _)| k == flow)
                .all(|(_, m)| *m == holder || newer(&holder, m));
            if holder != *about && newer(&holder, about) && holder_is_newest {
                protect.push((*flow, holder, self.fronts[f].fwd.get(flow).map(|e| e.0)));
            }
        }
        let closed = match &frame {
            ToFront::Closed { id, flow } => Some((*id, *flow, self.fronts[f].engine.live_on(flow))),
            _ => None,
        };
        self.fronts[f].engine.handle_frame(now, b, frame);
        // This front's actions only: frames other back-ends read in this
        // same step must all be fed before theirs run.
        while let Some(a) = self.fronts[f].engine.poll_action() {
            self.front_action(f, a);
        }
        if let Some((cid, flow, Some((live_id, _)))) = closed {
            if live_id != cid {
                assert_eq!(
                    self.fronts[f].engine.live_on(&flow).map(|x| x.0),
                    Some(live_id)
                );
            }
        }
        self.stale_checks += protect.len() as u64;
        for (flow, holder, entry) in protect {
            assert_eq!(
                self.holder_of(f, &flow),
                Some(holder),
                "front {f}: a report about an older connection on {flow} moved it"
            );
            assert_eq!(
                self.fronts[f].fwd.get(&flow).map(|e| e.0),
                entry,
                "front {f}: a report about an older connection on {flow} changed its entry"
            );
        }
    }

    fn ident_of(&self, origin: IpAddr, id: u64) -> Ident {
        let f = (0..self.fronts.len())
            .find(|g| front_ip(*g) == origin)
            .expect("a front of the cluster");
        (f, id)
    }

    /// Since when front `f` has had every channel up, if it has.
    fn all_up_since(&self, f: usize) -> Option<Instant> {
        self.fronts[f]
            .chan
            .iter()
            .map(|c| c.map(|(_, t)| t))
            .collect::<Option<Vec<Instant>>>()
            .map(|ts| ts.into_iter().max().unwrap_or(self.now))
    }

    /// Every connection live on a back-end is steered there by every
    /// front but its origin, once that front's channels have been up for
    /// one batch delay plus the channel delay since the connection went
    /// live (or since the one before it on the 4-tuple ended, whose end
    /// that front must hear of first). And every front lets go of a
    /// connection that ended once it could have heard of it, plus the
    /// grace.
    fn check_steering(&mut self) {
        let base = BATCH + self.max_delay() + MS;
        let lag_max = self.lag_max.clone();
        let bound = |f: usize| base + lag_max[f];
        let grace = timers().closed_grace;
        let now = self.now;
        let mut checks = 0;
        for (b, conns) in self.conns.iter().enumerate() {
            for (k, c) in conns {
                for f in (0..self.fronts.len()).filter(|f| *f != c.origin) {
                    let Some(up) = self.all_up_since(f) else {
                        continue;
                    };
                    if now < c.since.max(up) + bound(f) {
                        continue;
                    }
                    let fr = &self.fronts[f];
                    assert_eq!(
                        fr.fwd.get(k).map(|e| e.0),
                        Some(Entry::Forward(b)),
                        "front {f} does not steer {k} (handoff {} of front {}, back-end {b}) at {:?}",
                        c.id,
                        c.origin,
                        now.duration_since(c.since)
                    );
                    assert_eq!(self.holder_of(f, k), Some((c.origin, c.id)));
                    checks += 1;
                }
            }
        }
        self.steer_checks += checks;
        for (k, _, ident, at) in &self.ended {
            for f in (0..self.fronts.len()).filter(|f| *f != ident.0) {
                let Some(up) = self.all_up_since(f) else {
                    continue;
                };
                if up > *at || now < *at + bound(f) + grace {
                    continue;
                }
                // A closing entry also waits for a grace without packets
                // (a newer connection on the 4-tuple may use it meanwhile).
                let seen = self.fronts[f].fwd.get(k).map(|e| e.1);
                if seen.is_some_and(|t| now < t + grace + MS) {
                    continue;
                }
                assert_ne!(
                    self.holder_of(f, k),
                    Some(*ident),
                    "front {f} still holds {k} for the ended handoff {ident:?}"
                );
            }
        }
        let lag = self.lag_max.iter().copied().max().unwrap_or_default();
        let horizon = BATCH + self.max_delay() + lag + grace + 2 * MS;
        self.ended.retain(|e| now < e.3 + horizon);
    }

    /// After the script: every channel back, every connection over, long
    /// enough for every deadline.
    fn settle(&mut self) {
        for b in 0..self.backs.len() {
            self.stall(b, self.now);
            for f in 0..self.fronts.len() {
                self.connect(f, b);
            }
        }
        // Every connection ends within a second, the orphan timeout is 5 s:
        // 10 s later nothing may be left, without waiting for the idle sweep.
        let until = self.now + Duration::from_secs(10);
        self.advance(until);
    }

    fn check(&self) {
        for id in &self.started {
            let outcomes = [
                self.answered_by_front.contains(id),
                self.reset.contains(id),
                self.forwarded.contains(id),
            ];
            assert_eq!(
                outcomes.iter().filter(|o| **o).count(),
                1,
                "handoff {id:?} must end exactly one way (front answer, reset, forwarded): {outcomes:?}"
            );
            assert!(
                !(self.answered_by_front.contains(id) && self.went_live.contains(id)),
                "handoff {id:?}: the front answered a client the back-end serves"
            );
        }
        for (f, fr) in self.fronts.iter().enumerate() {
            assert!(fr.fwd.is_empty(), "front {f}: entries left: {:?}", fr.fwd);
            assert_eq!(fr.engine.flows(), 0, "front {f}: flow records left");
        }
    }
}

/// The first id of front `f`'s `process`th process.
fn id_base(f: usize, process: u64) -> u64 {
    ((f as u64) << 40) | (process << 32)
}

#[derive(Debug, Clone)]
enum Op {
    Conn {
        port: u16,
        backend: usize,
        front: usize,
    },
    Advance {
        ms: u16,
    },
    Cut {
        front: usize,
        backend: usize,
    },
    Reconnect {
        front: usize,
        backend: usize,
    },
    Restart {
        backend: usize,
    },
    Stall {
        backend: usize,
        ms: u16,
    },
    RestartFront {
        front: usize,
    },
    /// The routers send the client's packets on `port` to another front.
    Reroute {
        port: u16,
        front: usize,
    },
    /// Frames from `backend` to `front` take `ms` longer from now on.
    Lag {
        front: usize,
        backend: usize,
        ms: u16,
    },
}

fn op(fronts: usize, backends: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u16..60, 0..backends, 0..fronts)
            .prop_map(|(port, backend, front)| Op::Conn { port, backend, front }),
        4 => (0u16..400).prop_map(|ms| Op::Advance { ms }),
        1 => (0..fronts, 0..backends).prop_map(|(front, backend)| Op::Cut { front, backend }),
        2 => (0..fronts, 0..backends)
            .prop_map(|(front, backend)| Op::Reconnect { front, backend }),
        1 => (0..backends).prop_map(|backend| Op::Restart { backend }),
        1 => (0..backends, 0u16..2000).prop_map(|(backend, ms)| Op::Stall { backend, ms }),
        1 => (0..fronts).prop_map(|front| Op::RestartFront { front }),
        1 => (1u16..60, 0..fronts).prop_map(|(port, front)| Op::Reroute { port, front }),
        1 => (0..fronts, 0..backends, prop_oneof![Just(0u16), 0u16..1500])
            .prop_map(|(front, backend, ms)| Op::Lag { front, backend, ms }),
    ]
}

fn play(fronts: usize, backends: usize, delays: &[u8], ops: &[Op]) -> Sim {
    let mut s = Sim::new(fronts, backends, delays);
    for o in ops {
        match *o {
            Op::Conn {
                port,
                backend,
                front,
            } => s.new_conn(port, backend, front),
            Op::Advance { ms } => {
                let until = s.now + millis(u64::from(ms));
                s.advance(until);
            }
            Op::Cut { front, backend } => s.cut(front, backend),
            Op::Reconnect { front, backend } => s.connect(front, backend),
            Op::Restart { backend } => s.restart(backend),
            Op::Stall { backend, ms } => {
                let until = s.now + millis(u64::from(ms));
                s.stall(backend, until);
            }
            Op::RestartFront { front } => s.restart_front(front),
            Op::Reroute { port, front } => {
                s.route.insert(key(port), front);
            }
            Op::Lag { front, backend, ms } => s.set_lag(front, backend, millis(u64::from(ms))),
        }
        s.run();
    }
    s.settle();
    s.check();
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// One front. Whatever happens to channels and back-ends: every
    /// connection ends exactly one way, the front never answers one a
    /// back-end serves, the answer deadline fires exactly on time, a stale
    /// `Closed` never acts on a newer connection, and nothing is left in
    /// the forwarder at the end.
    #[test]
    fn every_flow_ends_once_and_nothing_leaks(
        delays in proptest::collection::vec(1u8..40, 3),
        ops in proptest::collection::vec(op(1, 3), 1..120),
    ) {
        play(1, 3, &delays, &ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Three fronts behind routers that may move a client to another front,
    /// three back-ends; channels die, back-ends stall and restart, fronts
    /// restart on their pinned tables. On top of the above, on every front:
    /// every live connection is steered by every other front within one
    /// batch delay plus the channel delay of its going live (or of its
    /// channels coming up), every mirrored entry goes once its connection
    /// ended (within the grace after the back-end could say so; nothing is
    /// left at the end), and a report about an older connection never moves
    /// a newer one's entry it believes served.
    #[test]
    fn every_front_steers_every_flow_and_nothing_leaks(
        delays in proptest::collection::vec(1u8..40, 3),
        ops in proptest::collection::vec(op(3, 3), 1..120),
    ) {
        play(3, 3, &delays, &ops);
    }
}

/// The multi-front property above is not vacuous: a typical script checks
/// the steering of many connections on other fronts.
#[test]
fn the_steering_property_is_checked_on_ordinary_runs() {
    let mut ops = Vec::new();
    for i in 0..40u16 {
        ops.push(Op::Conn {
            port: 1 + i,
            backend: usize::from(i % 3),
            front: usize::from(i % 3),
        });
        ops.push(Op::Advance { ms: 30 });
    }
    let s = play(3, 3, &[4, 8, 20], &ops);
    assert!(s.steer_checks > 500, "{}", s.steer_checks);
    assert!(s.forwarded.len() > 20);
}

#[test]
fn a_stalled_back_end_gets_its_handoff_reset_on_time_and_serves_after() {
    let ops = [
        Op::Stall {
            backend: 0,
            ms: 2000,
        },
        Op::Conn {
            port: 1,
            backend: 0,
            front: 0,
        },
        Op::Advance { ms: 600 },
    ];
    let s = play(1, 1, &[4], &ops);
    assert_eq!(s.reset.len(), 1, "the stalled handoff is reset");
    // The back-end read Handoff and Abort together after the stall: it
    // never went live.
    assert!(s.went_live.is_empty());
}

#[test]
fn a_channel_that_dies_after_the_handoff_leaves_nothing_hanging() {
    let ops = [
        Op::Conn {
            port: 1,
            backend: 0,
            front: 0,
        },
        Op::Cut {
            front: 0,
            backend: 0,
        },
        Op::Advance { ms: 10 },
        Op::Reconnect {
            front: 0,
            backend: 0,
        },
        Op::Conn {
            port: 2,
            backend: 0,
            front: 0,
        },
        Op::Advance { ms: 100 },
    ];
    let s = play(1, 1, &[4], &ops);
    assert!(s.reset.contains(&(0, 1 << 32)), "the cut handoff is reset");
    assert!(
        s.forwarded.contains(&(0, (1 << 32) + 1)),
        "the next one is served"
    );
}

#[test]
fn a_restarted_back_end_frees_its_flows_at_reconnect() {
    let mut s = Sim::new(1, 1, &[4]);
    s.new_conn(48, 0, 0);
    let until = s.now + millis(50);
    s.advance(until);
    s.restart(0);
    s.connect(0, 0);
    let until = s.now + millis(250);
    s.advance(until);
    // Well before the orphan timeout: reconciliation removed it.
    assert!(s.fronts[0].fwd.is_empty(), "{:?}", s.fronts[0].fwd);
    assert_eq!(s.fronts[0].engine.flows(), 0);
}

#[test]
fn a_front_restart_keeps_served_flows_steered_and_settles_the_rest() {
    let mut s = Sim::new(1, 1, &[4]);
    // Port 48 lives ~1 s on the back-end; port 3 is mid-handoff at the
    // restart (its Handoff is on the wire).
    s.new_conn(48, 0, 0);
    s.run();
    let until = s.now + millis(20);
    s.advance(until);
    let long = (0, 1 << 32);
    assert!(s.forwarded.contains(&long));
    s.new_conn(3, 0, 0);
    s.run();
    let mid = (0, (1 << 32) + 1);
    assert!(!s.went_live.contains(&mid), "still on the wire");
    s.restart_front(0);
    // The new front adopted both; the back-end restored the one on the wire.
    assert!(s.went_live.contains(&mid));
    let until = s.now + millis(50);
    s.advance(until);
    // Reconciled by Holding, long before the orphan timeout: both forward.
    let fwd = &s.fronts[0].fwd;
    assert_eq!(fwd.get(&key(48)).map(|e| e.0), Some(Entry::Forward(0)));
    assert_eq!(fwd.get(&key(3)).map(|e| e.0), Some(Entry::Forward(0)));
    assert!(s.forwarded.contains(&mid), "the inherited handoff forwards");
    assert!(s.reset.is_empty(), "nothing reset: {:?}", s.reset);
    s.settle();
    s.check();
}

#[test]
fn a_front_restart_resets_a_parked_flow_no_back_end_took() {
    let mut s = Sim::new(1, 1, &[4]);
    s.stall(0, s.now + millis(5000));
    s.new_conn(5, 0, 0);
    s.run();
    // The back-end is stalled: its Handoff is delivered by the restart,
    // and the back-end restores it.  A second back-end process restart
    // loses it: nobody serves it any more.
    s.restart_front(0);
    s.restart(0);
    s.stall(0, s.now);
    s.connect(0, 0);
    let until = s.now + millis(50);
    s.advance(until);
    assert!(
        s.reset.contains(&(0, 1 << 32)),
        "reset once Holding said no"
    );
    assert!(s.fronts[0].fwd.is_empty(), "{:?}", s.fronts[0].fwd);
    s.settle();
    s.check();
}

// ---- several fronts ----

#[test]
fn a_flow_handed_off_by_one_front_is_steered_by_the_others_then_let_go() {
    let mut s = Sim::new(3, 2, &[4, 8]);
    // Port 48 lives 960 ms.
    s.new_conn(48, 1, 0);
    let until = s.now + millis(10);
    s.advance(until);
    let ident = (0, id_base(0, 1));
    assert!(s.forwarded.contains(&ident));
    for f in [1, 2] {
        assert_eq!(
            s.fronts[f].fwd.get(&key(48)).map(|e| e.0),
            Some(Entry::Forward(1)),
            "front {f}"
        );
        assert_eq!(s.fronts[f].engine.mirrored(), 1);
    }
    // The routers move the client to front 2: its ACKs keep that entry
    // fresh, and the connection goes on there.
    s.route.insert(key(48), 2);
    let until = s.now + millis(1000);
    s.advance(until);
    assert!(s.conns[1].is_empty(), "over");
    // Closed reached front 0, Unmirror fronts 1 and 2; the graces end.
    let until = s.now + millis(300);
    s.advance(until);
    for f in 0..3 {
        assert!(
            s.fronts[f].fwd.is_empty(),
            "front {f}: {:?}",
            s.fronts[f].fwd
        );
        assert_eq!(s.fronts[f].engine.flows(), 0);
    }
    s.settle();
    s.check();
}

#[test]
fn a_front_that_restarts_adopts_its_mirrored_entries_and_the_listing_names_them() {
    let mut s = Sim::new(2, 1, &[4]);
    s.new_conn(48, 0, 0);
    let until = s.now + millis(10);
    s.advance(until);
    let (mirror_id, _) = s.fronts[1].owners[&key(48)];
    assert!(baton_proto::handoff::is_mirror_id(mirror_id));
    s.restart_front(1);
    // Adopted (marked closing until its back-end speaks), then listed.
    let until = s.now + millis(5);
    s.advance(until);
    assert_eq!(
        s.fronts[1].fwd.get(&key(48)).map(|e| e.0),
        Some(Entry::Forward(0))
    );
    assert_eq!(
        s.holder_of(1, &key(48)),
        Some((0, id_base(0, 1))),
        "the listing named the adopted entry"
    );
    s.settle();
    s.check();
}

#[test]
fn a_front_whose_channel_was_down_learns_the_flows_from_the_listing() {
    let mut s = Sim::new(2, 1, &[4]);
    s.cut(1, 0);
    s.new_conn(48, 0, 0);
    let until = s.now + millis(10);
    s.advance(until);
    assert!(s.fronts[1].fwd.is_empty());
    s.connect(1, 0);
    let until = s.now + millis(2);
    s.advance(until);
    assert_eq!(
        s.fronts[1].fwd.get(&key(48)).map(|e| e.0),
        Some(Entry::Forward(0))
    );
    s.settle();
    s.check();
}

#[test]
fn a_late_report_of_an_older_connection_waits_behind_the_newer_one() {
    let mut s = Sim::new(3, 2, &[4, 4]);
    // Front 1 hears back-end 0 a second late (its channel lags).
    s.set_lag(1, 0, millis(1000));
    // Port 48 lives 960 ms: the first connection on it goes through front
    // 0 to back-end 0, the next one through front 2 to back-end 1.
    s.new_conn(48, 0, 0);
    // Over at 960 ms; front 2 hears so 6 ms later (its entry is then
    // closing, and the client's next SYN there replaces it).
    let until = s.now + millis(970);
    s.advance(until);
    assert!(s.conns[0].is_empty(), "the first one is over");
    s.new_conn(48, 1, 2);
    assert_eq!(s.started.len(), 2);
    let until = s.now + millis(20);
    s.advance(until);
    let newer = *s.started.iter().find(|i| i.0 == 2).expect("started");
    assert_eq!(s.holder_of(1, &key(48)), Some(newer));
    // The first one's Mirror reaches front 1 now (its Unmirror a second
    // later): the newer one keeps the entry (checked at each delivery).
    let until = s.now + millis(30);
    s.advance(until);
    assert_eq!(s.stale_checks, 1);
    assert_eq!(s.fronts[1].engine.mirrored(), 2);
    assert_eq!(s.holder_of(1, &key(48)), Some(newer));
    assert_eq!(
        s.fronts[1].fwd.get(&key(48)).map(|e| e.0),
        Some(Entry::Forward(1))
    );
    s.settle();
    s.check();
}
