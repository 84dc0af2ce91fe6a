//! `baton front`: accepts clients on VIP:port, reads each request head, picks
//! a back-end and hands the TCP connection to it (the upper module, UTCP);
//! drives the BPF forwarder (the bottom module, BTCP) that steers the
//! client's later packets to the back-end.
//!
//! Every handoff decision and deadline is made by the sans-IO
//! [`FrontEngine`] (`baton_proto::handoff`, which documents the sequence and
//! the failure semantics); this module carries out its actions: the BPF map
//! writes, the TCP_REPAIR dump, the control-channel writes, and the client
//! socket's fate (closed silently, answered, relayed or reset).
//!
//! Relay mode (`crate::relay`): the same head reading, routing and policy,
//! but the front proxies the bytes to a back-end's plain HTTP address. For
//! `mode = "relay"` back-ends, as the fallback of a failed handoff, and for
//! everything when `handoff = false` or when the front lacks the privileges
//! for TCP_REPAIR and BPF (it then says why once, at start).

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use baton_bpf::{ForwardTarget, Forwarder, Owner, ParkedRing, VipGuard};
use baton_policy::{BackendView, Policy, Request};
use baton_proto::frame::Frame;
use baton_proto::handoff::{
    is_mirror_id, BackendId, Dump, DumpFailure, Entry, FrontAction, FrontEngine, FrontEvent,
    FrontTimers, ParkFailure, Quiet, RemoveCause,
};
use baton_proto::http::{error_response, parse_request_head, HeadLimits, RequestHead};
use baton_proto::FlowKey;
use baton_proto::{Incoming, Link, ToFront};
use baton_sys::packet::PacketSender;
use baton_sys::repair;
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::config::{ms, BackendMode, FrontConfig, UnknownFlows};
use crate::control::{self, FrameWriter};
use crate::relay::{self, RelayLimits};
use crate::stats::{Counter, Samples, Summary};
use crate::tls::{Failure as TlsFailure, ServerTls};

/// What became of a client's connection once its handoff ended.
#[derive(Debug)]
enum Outcome {
    /// The back-end serves it; the socket, in repair mode, is closed silently.
    Live,
    /// The front answers (or relays); take the socket out of repair mode
    /// first if `dumped`.
    GiveBack { status: u16, dumped: bool },
    /// Unknown whether the back-end serves it: reset the client.
    Reset,
}

/// A back-end and what the front knows of it.
#[derive(Debug)]
struct Backend {
    name: String,
    mode: BackendMode,
    /// Handoff back-ends only.
    control: Option<SocketAddrV4>,
    /// Where a relayed connection goes: `address` (relay back-ends) or
    /// `relay_address` (handoff back-ends), resolved at start.
    relay_to: Mutex<Option<SocketAddr>>,
    weight: AtomicU32,
    /// Gone from the configuration (a reload): no new connections; its
    /// channel stays until its handed-off flows are done, then closes.
    removed: AtomicBool,
    st: Mutex<BackendState>,
    writer: tokio::sync::Mutex<Option<FrameWriter>>,
    /// Frames the engine queued for this back-end, in its order; whoever
    /// holds `writer` next writes them all in one write.
    outbox: Mutex<Vec<Frame>>,
    /// Wakes this back-end's writer task: frames queued meanwhile by other
    /// connections go in the same write (one wake-up of the back-end for
    /// several handoffs).
    write_wake: tokio::sync::Notify,
    handoffs: Counter,
    failures: Counter,
    relayed: Counter,
    relay_failures: Counter,
    /// Connections being relayed to it now (part of its load).
    relay_active: AtomicU32,
}

impl Backend {
    fn relay_to(&self) -> Option<SocketAddr> {
        *self.relay_to.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    fn removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }
}

/// What a reload swaps in one step: the configuration in force (limits,
/// flow and control timers are read from it), the groups with their
/// policies, the routing rules and the relay's limits.
struct Routing {
    cfg: Arc<FrontConfig>,
    groups: Vec<Group>,
    rules: baton_policy::Rules,
    relay_limits: RelayLimits,
}

impl Routing {
    /// The routing of `cfg`, whose `k`th back-end is slot `slots[k]`.
    /// A group of `old` whose definition and members are unchanged keeps
    /// its policy object (and the state it learnt, such as LARD's
    /// assignments).
    fn build(cfg: &FrontConfig, slots: &[usize], old: Option<&Routing>) -> Result<Routing> {
        let rules = cfg.routing_rules()?;
        let mut groups = Vec::new();
        for gc in cfg.group_configs() {
            let members: Vec<usize> = cfg
                .backends
                .iter()
                .zip(slots)
                .filter(|(b, _)| b.group == gc.name)
                .map(|(_, &slot)| slot)
                .collect();
            let kept = old.and_then(|o| {
                o.groups
                    .iter()
                    .find(|g| g.config == gc && g.members == members)
            });
            let policy = match kept {
                Some(g) => Arc::clone(&g.policy),
                None => Arc::new(Mutex::new(
                    gc.policy_config()?
                        .build()
                        .with_context(|| format!("group {}", gc.name))?,
                )),
            };
            groups.push(Group {
                name: gc.name.clone(),
                config: gc,
                members,
                policy,
            });
        }
        let relay_limits = RelayLimits::new(
            &cfg.relay,
            HeadLimits {
                max_bytes: cfg.limits.head_max_bytes,
                max_headers: cfg.limits.head_max_headers,
            },
            ms(cfg.limits.head_timeout_ms),
        );
        Ok(Routing {
            cfg: Arc::new(cfg.clone()),
            groups,
            rules,
            relay_limits,
        })
    }
}

/// The engine's deadlines from a configuration.
fn timers_of(cfg: &FrontConfig) -> FrontTimers {
    FrontTimers {
        handoff_timeout: ms(cfg.limits.handoff_timeout_ms),
        closed_grace: ms(cfg.flows.closed_grace_ms),
        orphan_timeout: ms(cfg.flows.orphan_timeout_ms),
        idle_sweep: ms(cfg.flows.idle_timeout_ms / 4).max(ms(cfg.flows.sweep_interval_ms)),
    }
}

/// Reloads so far and the outcome of the last one.
#[derive(Debug, Default)]
struct Reloads {
    ok: u64,
    failed: u64,
    /// Unix seconds of the last successful reload (or of the start).
    last_ok_unix: u64,
    last: Option<std::result::Result<String, String>>,
}

/// What a reload does to one configured back-end.
enum SlotPlan {
    /// The same back-end (name, mode, control address): new weight and relay address.
    Keep {
        slot: BackendId,
        weight: u32,
        relay_to: Option<SocketAddr>,
    },
    /// A new one, appended.
    Add(Arc<Backend>),
}

/// Re-reads the configuration (the file, with the command line's overrides).
pub type ConfigSource = Box<dyn Fn() -> Result<FrontConfig> + Send + Sync>;

/// How the front serves a back-end's connections right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Handoff,
    Relay(SocketAddr),
    /// A handoff back-end without `relay_address` while the front relays.
    Unusable,
}

#[derive(Debug, Default)]
struct BackendState {
    up: bool,
    draining: bool,
    paused_until: Option<Instant>,
    reported_load: u32,
    /// Handed off since the last load report (the report does not know them yet).
    handed_since_report: u32,
    /// `Closed` reports since the last load report.
    closed_since_report: u32,
    mac: Option<[u8; 6]>,
    connects: u64,
    last_error: Option<String>,
}

impl BackendState {
    /// Active connections: the last report, corrected by what this front
    /// handed off and heard closed since.
    fn load(&self) -> u32 {
        self.reported_load
            .saturating_add(self.handed_since_report)
            .saturating_sub(self.closed_since_report)
    }
}

/// A back-end group: the back-ends that serve it, in configuration order
/// (policies identify back-ends by position), and its policy.
#[derive(Debug)]
struct Group {
    name: String,
    config: crate::config::GroupConfig,
    members: Vec<usize>,
    policy: Arc<Mutex<Box<dyn Policy>>>,
}

/// Frames kept while flows are parked, and the ring they arrive on.
struct ParkedStore {
    ring: ParkedRing,
    kept: HashMap<FlowKey, Vec<Vec<u8>>>,
}

/// What a handoff needs from the kernel: the forwarder on the NIC, its
/// parked-frame ring and a packet socket. A front without it relays.
struct HandoffKit {
    iface: baton_sys::iface::IfaceInfo,
    forwarder: Mutex<Forwarder>,
    parked: Mutex<ParkedStore>,
    sender: PacketSender,
}

/// Why a handoff kit could not be opened.
enum KitError {
    /// The kernel refused for lack of privileges (or support): relay instead.
    Denied(String),
    /// Anything else is a configuration or system problem: do not start.
    Other(anyhow::Error),
}

impl HandoffKit {
    /// Checks that TCP_REPAIR is allowed, attaches the forwarder to
    /// `interface` (pinned under `pins` if given; `true`: required),
    /// guarding `guard` from its first packet, and opens the packet socket.
    fn open(
        interface: &str,
        pins: Option<(PathBuf, bool)>,
        guard: Option<&VipGuard>,
    ) -> std::result::Result<HandoffKit, KitError> {
        let iface = baton_sys::iface::iface_info(interface)
            .with_context(|| format!("interface {interface}"))
            .map_err(KitError::Other)?;
        if let Err(e) = repair::probe() {
            return Err(match denied(&e) {
                Some(_) => KitError::Denied(format!(
                    "TCP_REPAIR is not permitted ({e}; it needs CAP_NET_ADMIN)"
                )),
                None => KitError::Other(anyhow::Error::new(e).context("probing TCP_REPAIR")),
            });
        }
        let attached = match pins {
            Some((dir, required)) => match Forwarder::attach_pinned_guarded(interface, &dir, guard)
            {
                Err(e @ baton_bpf::BpfError::NotBpffs { .. }) if !required => {
                    warn!(
                        "{e}; handed-off connections will not survive a restart of the front (set pin_dir = \"\" to silence this)"
                    );
                    Forwarder::attach_guarded(interface, guard)
                }
                other => other,
            },
            None => Forwarder::attach_guarded(interface, guard),
        };
        let mut forwarder = match attached {
            Ok(f) => f,
            Err(e) => {
                return Err(match denied(&e) {
                    Some(errno) => KitError::Denied(format!(
                        "attaching the BPF forwarder to {interface} is not permitted ({}; it needs CAP_BPF and CAP_NET_ADMIN)",
                        std::io::Error::from_raw_os_error(errno)
                    )),
                    None => KitError::Other(anyhow::Error::new(e).context(format!(
                        "attaching the BPF forwarder to {interface}"
                    ))),
                })
            }
        };
        let ring = forwarder
            .parked()
            .context("opening the parked-frame ring")
            .map_err(KitError::Other)?;
        let sender = match PacketSender::open(iface.ifindex) {
            Ok(s) => s,
            Err(e) => {
                return Err(match denied(&e) {
                    Some(_) => KitError::Denied(format!(
                        "opening a packet socket on {interface} is not permitted ({e}; it needs CAP_NET_RAW)"
                    )),
                    None => KitError::Other(anyhow::Error::new(e).context("opening the packet socket")),
                })
            }
        };
        Ok(HandoffKit {
            iface,
            forwarder: Mutex::new(forwarder),
            parked: Mutex::new(ParkedStore {
                ring,
                kept: HashMap::new(),
            }),
            sender,
        })
    }

    fn lock_forwarder(&self) -> std::sync::MutexGuard<'_, Forwarder> {
        self.forwarder.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_parked(&self) -> std::sync::MutexGuard<'_, ParkedStore> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The errno of a refusal that means "not allowed here" (a missing
/// capability: EPERM, EACCES; a kernel without the feature: ENOSYS, or
/// ENOPROTOOPT for TCP_REPAIR), found anywhere in the chain of causes.
fn denied(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(n) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            if matches!(
                n,
                libc::EPERM | libc::EACCES | libc::ENOSYS | libc::ENOPROTOOPT
            ) {
                return Some(n);
            }
        }
        cur = err.source();
    }
    None
}

/// Front-end counters.
#[derive(Debug, Default)]
struct FrontCounters {
    accepted: Counter,
    handoffs_ok: Counter,
    handoffs_failed: Counter,
    bad_requests: Counter,
    head_timeouts: Counter,
    no_backend: Counter,
    /// Handoffs refused because the forwarder's flow table was full.
    flow_table_full: Counter,
    client_gone: Counter,
    /// Connections answered 503 at once: `limits.max_pending` were pending.
    shed: Counter,
    frames_resent: Counter,
    /// Kept pure ACKs replaced by a later frame of their flow.
    frames_superseded: Counter,
    frames_dropped: Counter,
    entries_removed_closed: Counter,
    entries_removed_idle: Counter,
    entries_removed_orphaned: Counter,
    /// Handoffs whose client was reset (no answer in time, channel lost).
    handoffs_reset: Counter,
    /// Frames about handoffs this front no longer tracks.
    stale_frames: Counter,
    /// Flows taken over from the pinned flow table at start.
    flows_adopted: Counter,
    /// Flows other fronts handed off, as their back-ends told this one.
    mirror: MirrorCounters,
    relayed: Counter,
    relay_fallbacks: Counter,
    relay_failures: Counter,
    relay_idle_timeouts: Counter,
    relay_bytes_up: Counter,
    relay_bytes_down: Counter,
    tls_accepted: Counter,
    tls_handshakes: Counter,
    tls_resumed: Counter,
    tls_handshake_failures: Counter,
    tls_plain_http: Counter,
    tls_misdirected: Counter,
    tls_handoffs: Counter,
}

/// What this front heard of other fronts' flows (`Mirror`, `Unmirror`,
/// `Mirroring`; see `baton_proto::handoff`'s mirrored flows).
#[derive(Debug, Default)]
struct MirrorCounters {
    /// Frames read.
    frames_in: Counter,
    /// Flows learnt (`FrontEvent::Mirrored`).
    mirrored: Counter,
    /// Flows that ended (`FrontEvent::Unmirrored`).
    unmirrored: Counter,
    /// Entries about a flow that did not match what this front knows.
    stale: Counter,
    /// Forwarding entries written for them.
    steered: Counter,
    /// Policy placements learnt from their hints.
    placements_learnt: Counter,
    /// Hints no policy of this front can read (another format).
    placements_unreadable: Counter,
    /// The other fronts, as the back-ends name them in `Mirror`: flows
    /// learnt from each and when the last one came.
    peers: Mutex<BTreeMap<std::net::IpAddr, PeerSeen>>,
}

/// What this front heard about another front.
#[derive(Debug, Clone, Copy)]
struct PeerSeen {
    flows: u64,
    last: Instant,
}

/// At most this many other fronts are listed (the least recently heard go
/// first): the names come from back-ends, and memory stays bounded.
const MAX_PEERS: usize = 256;

/// The shared state of one front-end.
pub struct Front {
    cfg: FrontConfig,
    /// None: every connection is relayed.
    kit: Option<HandoffKit>,
    /// Every back-end ever configured, by `BackendId` (a reload only
    /// appends; removed ones stay, marked). Swapped whole by a reload.
    backends: std::sync::RwLock<Arc<Vec<Arc<Backend>>>>,
    /// Swapped whole by a reload.
    routing: std::sync::RwLock<Arc<Routing>>,
    /// One reload at a time; the outcome of the last one.
    reloads: Mutex<Reloads>,
    /// Where a reload reads the configuration from.
    source: Mutex<Option<ConfigSource>>,
    /// The control channels' key, once `run` loaded it (for back-ends a
    /// reload adds).
    psk: std::sync::OnceLock<baton_proto::auth::Psk>,
    /// The tasks that speak to the back-ends and read the ring: a takeover
    /// stops them before handing over.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The handoff protocol's state. A leaf lock: held only to feed it an
    /// input and take its actions out.
    engine: Mutex<FrontEngine>,
    /// Serialises carrying out the engine's actions, so their effects
    /// (map writes, frames queued) happen in the order it decided them.
    /// Lock order: exec, then parked, forwarder, engine.
    exec: Mutex<()>,
    /// The client tasks waiting for their handoff's outcome, by id.
    waiting: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
    /// The timer task's sleep, re-armed after each input.
    timer: crate::deadline::DeadlineTimer,
    /// One permit per relayed connection (`relay.max_connections`).
    relay_slots: Semaphore,
    /// Empty splice pipes for the next relays.
    pipes: relay::PipePool,
    /// Idle back-end connections kept for the next relayed requests.
    upstreams: Arc<relay::Upstreams>,
    started: Instant,
    counters: FrontCounters,
    lat_dump: Samples,
    lat_rtt: Samples,
    lat_restore: Samples,
    lat_total: Samples,
    lat_send: Samples,
    shutting_down: AtomicBool,
    /// `POST /drain` (until `POST /resume`): `/serving` says 503 so that
    /// the announcer withdraws this front, which goes on serving.
    admin_drained: AtomicBool,
    /// SIGTERM or SIGINT arrived: `/serving` says 503 from then on.
    stopping: AtomicBool,
    /// Woken whenever a control channel comes up.
    channel_up: tokio::sync::Notify,
    /// HTTPS (`[tls]`); swapped whole by a reload (new certificates).
    tls: std::sync::RwLock<Option<Arc<ServerTls>>>,
}

/// The client listeners: plain HTTP on `port`, HTTPS on `[tls] port`.
#[derive(Debug)]
pub struct Listeners {
    pub http: std::net::TcpListener,
    pub https: Option<std::net::TcpListener>,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("vip", &self.cfg.vip)
            .finish_non_exhaustive()
    }
}

const SAMPLES: usize = 100_000;
/// Idle splice pipes kept (two per connection in flight; pages are
/// allocated only while bytes are in a pipe, so an idle one costs little).
const PIPES_KEPT: usize = 512;

impl Front {
    /// Attaches the forwarder (unless every connection is relayed) and
    /// prepares everything; does not accept yet.
    ///
    /// A front that may hand off but lacks the privileges for it (no
    /// CAP_NET_ADMIN or CAP_BPF: the kernel answers EPERM) says so in one
    /// line and relays every connection instead.
    pub fn new(cfg: FrontConfig) -> Result<Arc<Self>> {
        let kit = if cfg.uses_handoff() {
            match HandoffKit::open(&cfg.interface, cfg.pins(), guard_of(&cfg).as_ref()) {
                Ok(kit) => {
                    let f = kit.lock_forwarder();
                    let pins = f.pin_dir().map(|p| p.display().to_string());
                    match f.adoption() {
                        baton_bpf::Adoption::Adopted => {
                            info!(iface = %cfg.interface, pins = pins.as_deref().unwrap_or(""), "BPF forwarder replaced the pinned one on its link (no packet missed)")
                        }
                        baton_bpf::Adoption::StaleLink(why) => {
                            warn!(iface = %cfg.interface, %why, "the pinned link was unusable; attached a new one")
                        }
                        baton_bpf::Adoption::Fresh => {
                            info!(iface = %cfg.interface, ifindex = kit.iface.ifindex, pins = pins.as_deref().unwrap_or("none"), "BPF forwarder attached")
                        }
                    }
                    drop(f);
                    Some(kit)
                }
                Err(KitError::Denied(why)) => {
                    warn!("cannot hand connections off: {why}; relaying every connection instead (to each back-end's relay_address)");
                    None
                }
                Err(KitError::Other(e)) => return Err(e),
            }
        } else {
            if cfg.handoff {
                info!("no handoff back-ends: relaying every connection");
            } else {
                info!(
                    "handoff = false: relaying every connection (no BPF forwarder, no TCP_REPAIR)"
                );
            }
            None
        };
        let mut backends = Vec::with_capacity(cfg.backends.len());
        for b in &cfg.backends {
            let relay_to = match b.address.as_deref().or(b.relay_address.as_deref()) {
                Some(a) => Some(resolve(a).with_context(|| format!("backend {}", b.name))?),
                None => None,
            };
            backends.push(Arc::new(Backend {
                name: b.name.clone(),
                mode: b.mode,
                control: b.control,
                relay_to: Mutex::new(relay_to),
                weight: AtomicU32::new(b.weight),
                removed: AtomicBool::new(false),
                st: Mutex::default(),
                writer: tokio::sync::Mutex::new(None),
                outbox: Mutex::default(),
                write_wake: tokio::sync::Notify::new(),
                handoffs: Counter::default(),
                failures: Counter::default(),
                relayed: Counter::default(),
                relay_failures: Counter::default(),
                relay_active: AtomicU32::new(0),
            }));
        }
        if kit.is_none() {
            let unusable: Vec<&str> = backends
                .iter()
                .filter(|b| b.relay_to().is_none())
                .map(|b| b.name.as_str())
                .collect();
            if unusable.len() == backends.len() {
                bail!("no back-end can be relayed to: give the handoff back-ends a relay_address");
            }
            if !unusable.is_empty() {
                warn!(backends = %unusable.join(", "), "back-ends without relay_address are out of rotation while the front relays");
            }
        }
        let slots: Vec<usize> = (0..cfg.backends.len()).collect();
        let routing = Routing::build(&cfg, &slots, None)?;
        let now = Instant::now();
        let timers = timers_of(&cfg);
        // Ids never repeat across restarts of the front: a back-end's
        // reports about an earlier process's handoffs match nothing.
        let mut seed = [0u8; 8];
        getrandom::getrandom(&mut seed)
            .map_err(|e| anyhow::anyhow!("no randomness for handoff ids: {e}"))?;
        let first_id = u64::from_le_bytes(seed) >> 1;
        let engine = FrontEngine::new(timers, backends.len(), first_id, now);
        let tls = match &cfg.tls {
            Some(t) => {
                let tls = ServerTls::load(t).context("[tls]")?;
                for c in &tls.certificates {
                    info!(certificate = %c, "TLS certificate loaded");
                }
                for w in &tls.warnings {
                    warn!("TLS certificate: {w}");
                }
                Some(Arc::new(tls))
            }
            None => None,
        };
        Ok(Arc::new(Front {
            tls: std::sync::RwLock::new(tls),
            kit,
            backends: std::sync::RwLock::new(Arc::new(backends)),
            routing: std::sync::RwLock::new(Arc::new(routing)),
            reloads: Mutex::default(),
            source: Mutex::new(None),
            psk: std::sync::OnceLock::new(),
            tasks: Mutex::default(),
            engine: Mutex::new(engine),
            exec: Mutex::new(()),
            waiting: Mutex::default(),
            timer: crate::deadline::DeadlineTimer::default(),
            relay_slots: Semaphore::new(cfg.relay.max_connections),
            pipes: relay::PipePool::new(PIPES_KEPT),
            upstreams: relay::Upstreams::new(&cfg.relay),
            started: now,
            counters: FrontCounters::default(),
            lat_dump: Samples::new(SAMPLES),
            lat_rtt: Samples::new(SAMPLES),
            lat_restore: Samples::new(SAMPLES),
            lat_total: Samples::new(SAMPLES),
            lat_send: Samples::new(SAMPLES),
            shutting_down: AtomicBool::new(false),
            admin_drained: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            channel_up: tokio::sync::Notify::new(),
            cfg,
        }))
    }

    /// Binds the client listener (privileged below port 1024: before
    /// [`crate::privs::keep_only`]). Call inside a tokio runtime.
    pub fn listen(&self) -> Result<Listeners> {
        Ok(Listeners {
            http: self.listen_port(self.cfg.port)?,
            https: self.listen_https()?,
        })
    }

    /// Binds the HTTPS listener, if `[tls]` asks for one (for a successor
    /// whose predecessor served no HTTPS).
    pub fn listen_https(&self) -> Result<Option<std::net::TcpListener>> {
        match &self.cfg.tls {
            Some(t) => self.listen_port(t.port).map(Some),
            None => Ok(None),
        }
    }

    fn listen_port(&self, port: u16) -> Result<std::net::TcpListener> {
        let addr = SocketAddr::from((self.cfg.vip, port));
        // Bound to the NIC only for handoffs: the forwarder sees that NIC
        // alone. A relay serves wherever the address is.
        let device = self.kit.as_ref().map(|_| self.cfg.interface.as_str());
        let l = listen_on(addr, device).with_context(|| {
            format!(
                "binding {addr} on {} (is the VIP configured there?)",
                self.cfg.interface
            )
        })?;
        l.into_std().context("the listener")
    }

    /// Whether this front hands connections off (it has the forwarder).
    pub fn hands_off(&self) -> bool {
        self.kit.is_some()
    }

    /// Runs until `shutdown` resolves, or a successor takes the listener
    /// over; then stops accepting and returns once its connections are
    /// done (bounded by `drain_timeout_ms`).
    ///
    /// `listener`: from [`Front::listen`], or the one a predecessor handed
    /// over (see [`crate::upgrade`]); the flows a predecessor left in the
    /// pinned flow table are adopted first.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()>,
        listeners: Listeners,
        predecessor: Option<std::os::unix::net::UnixStream>,
    ) -> Result<()> {
        let addr = SocketAddr::from((self.cfg.vip, self.cfg.port));
        let listener = register(listeners.http, addr)?;
        let https = match (&self.cfg.tls, listeners.https) {
            (Some(t), Some(l)) => Some(register(l, SocketAddr::from((self.cfg.vip, t.port)))?),
            (None, None) => None,
            (Some(_), None) => bail!("[tls] is configured but no HTTPS listener was given"),
            (None, Some(_)) => bail!("an HTTPS listener was given but [tls] is not configured"),
        };
        if self.kit.is_some() {
            let Some(key_file) = &self.cfg.key_file else {
                bail!("key_file is required to hand connections off");
            };
            let psk = crate::config::load_key(key_file)?;
            let _ = self.psk.set(psk);
            self.adopt_pinned().await;
        }
        self.start_machinery();
        let mut admin = tokio::spawn(crate::admin::serve(
            self.cfg.admin_listen,
            Arc::clone(&self),
        ));
        self.wait_channels().await;
        let mut upgrades = UpgradeDoor::open(&self.cfg.upgrade_socket)?;
        if let Some(mut p) = predecessor {
            // The predecessor keeps its copy of the listener (and can take
            // over again) until it hears this.
            use std::io::Write;
            if let Err(e) = p.write_all(crate::upgrade::SERVING) {
                warn!(error = %e, "could not tell the predecessor this front serves");
            }
        }
        info!(%addr, backends = self.backends().len(), "front-end serving");
        let limit = Arc::new(Semaphore::new(self.cfg.limits.max_pending));
        // Stopping starts with saying so on `/serving` while still
        // accepting, for `drain_withdraw_ms`: the announcer withdraws the
        // route and the router stops sending new connections here first.
        let shutdown = async {
            shutdown.await;
            self.stopping.store(true, Ordering::Relaxed);
            let withdraw = ms(self.routing().cfg.drain_withdraw_ms);
            if !withdraw.is_zero() {
                info!(
                    withdraw_ms = withdraw.as_millis(),
                    "stopping: /serving says 503 while still accepting, so the announcement is withdrawn first"
                );
                tokio::time::sleep(withdraw).await;
            }
        };
        tokio::pin!(shutdown);
        loop {
            let successor = loop {
                let (r, secure) = tokio::select! {
                    _ = &mut shutdown => break None,
                    Some(s) = upgrades.rx.recv() => break Some(s),
                    r = accept(&listener) => (r, false),
                    r = accept_opt(https.as_ref()) => (r, true),
                };
                match r {
                    Ok((stream, peer)) => {
                        self.counters.accepted.inc();
                        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                            // Over the limit: shed at once rather than queue
                            // (a TLS client cannot read a plain 503: closed).
                            self.counters.shed.inc();
                            if !secure {
                                tokio::spawn(reject(Conn::Plain(stream), 503));
                            }
                            continue;
                        };
                        let front = Arc::clone(&self);
                        if secure {
                            self.counters.tls_accepted.inc();
                            tokio::spawn(async move {
                                front.client_tls(stream, peer, permit).await;
                            });
                        } else {
                            tokio::spawn(async move {
                                front.client(Conn::Plain(stream), peer, permit).await;
                            });
                        }
                    }
                    Err(e) => {
                        // EMFILE and the like: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            };
            let Some(successor) = successor else {
                break;
            };
            info!("a successor asked for the listener: letting the handoffs in progress finish");
            // Every connection being read or handed off holds a permit
            // (a relay gives its back); wait until all are back, bounded.
            let limit_wait = ms(self.cfg.limits.head_timeout_ms)
                .saturating_add(ms(self.cfg.limits.handoff_timeout_ms));
            let all = u32::try_from(self.cfg.limits.max_pending).unwrap_or(u32::MAX);
            let permits =
                match tokio::time::timeout(limit_wait, Arc::clone(&limit).acquire_many_owned(all))
                    .await
                {
                    Ok(Ok(permits)) => Some(permits),
                    _ => {
                        warn!(
                            "handoffs still in progress at the takeover: they will fail with 503"
                        );
                        None
                    }
                };
            // The successor adopts the flows from the pinned table; it must
            // be the only one to change it, read the ring, or speak to the
            // back-ends from now on. Awaited, so that the ring reader has
            // stopped and the admin address is free before it starts.
            self.stop_machinery().await;
            admin.abort();
            let _ = (&mut admin).await;
            upgrades.close();
            let mut fds = vec![listener.get_ref().as_fd()];
            if let Some(l) = &https {
                fds.push(l.get_ref().as_fd());
            }
            let handed = match successor.hand_over(&fds) {
                Ok(h) => {
                    // It serves once it says so; until then this front
                    // keeps the listener and takes over again if it fails.
                    let wait =
                        crate::upgrade::serving_wait(ms(self.cfg.control.connect_timeout_ms));
                    tokio::task::spawn_blocking(move || h.wait_serving(wait))
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                }
                Err(e) => Err(e),
            };
            match handed {
                Ok(()) => {
                    self.shutting_down.store(true, Ordering::Relaxed);
                    info!("listener handed over; the successor serves from now on");
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "the successor did not take over: serving again");
                    drop(permits);
                    // Its channels were closed: the flows they carried wait
                    // for the next channels' `Holding`, as after any loss.
                    if let Some(kit) = self.kit.as_ref() {
                        let n = self.backends().len();
                        let fx = self.drive(kit, None, |e, now| {
                            for i in 0..n {
                                e.handle_channel_down(now, i);
                            }
                            Feed::Nothing
                        });
                        self.apply(fx).await;
                    }
                    self.start_machinery();
                    admin = tokio::spawn(crate::admin::serve(
                        self.cfg.admin_listen,
                        Arc::clone(&self),
                    ));
                    upgrades = UpgradeDoor::open(&self.cfg.upgrade_socket)?;
                    self.wait_channels().await;
                }
            }
        }
        self.shutting_down.store(true, Ordering::Relaxed);
        upgrades.close();
        drop(listener);
        drop(https);
        let pinned = self
            .kit
            .as_ref()
            .is_some_and(|k| k.lock_forwarder().pin_dir().is_some());
        // Drain: without pins, the forwarder must stay attached while
        // handed-off connections live (detaching it would make the front's
        // kernel reset them). Pinned, the program and the flow table stay
        // in the kernel after this process, and the next front adopts them:
        // only relayed connections, which live in this process, are waited
        // for. None only for a timeout beyond the clock's range (validation
        // caps it): then no wait at all rather than a panic.
        let deadline = Instant::now().checked_add(ms(self.routing().cfg.drain_timeout_ms));
        let live = || {
            let handed = if pinned {
                0
            } else {
                self.lock_engine().handed()
            };
            handed.saturating_add(usize::try_from(self.relay_active()).unwrap_or(usize::MAX))
        };
        info!(
            connections = live(),
            pinned, "front-end stopped accepting; draining"
        );
        while live() > 0 && deadline.is_some_and(|d| Instant::now() < d) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = live();
        if left > 0 {
            warn!(left, "drain timeout: stopping with connections still open");
        }
        for task in self.lock_tasks().drain(..) {
            task.abort();
        }
        admin.abort();
        if pinned {
            info!("front-end stopped; the pinned forwarder keeps steering handed-off connections (`baton unpin` removes it)");
        } else {
            info!("front-end stopped");
        }
        Ok(())
    }

    /// One client connection: read the head, pick, hand off or relay.
    /// `pending` is the connection's slot among those being read or handed
    /// off; a relay gives it back, since it may last long.
    async fn client(
        self: &Arc<Self>,
        mut stream: Conn,
        peer: SocketAddr,
        pending: OwnedSemaphorePermit,
    ) {
        let tun = self.routing();
        let limits = HeadLimits {
            max_bytes: tun.cfg.limits.head_max_bytes,
            max_headers: tun.cfg.limits.head_max_headers,
        };
        let head_timeout = ms(tun.cfg.limits.head_timeout_ms);
        drop(tun);
        let mut buf = Vec::with_capacity(1024);
        let head =
            match tokio::time::timeout(head_timeout, read_head(&mut stream, &mut buf, &limits))
                .await
            {
                Err(_) => {
                    self.counters.head_timeouts.inc();
                    debug!(%peer, "request head timeout");
                    drop(pending);
                    stream.answer(408).await;
                    return;
                }
                Ok(Err(HeadFailure::Closed)) => {
                    self.counters.client_gone.inc();
                    return;
                }
                Ok(Err(HeadFailure::Bad(status, why))) => {
                    self.counters.bad_requests.inc();
                    debug!(%peer, status, why, "bad request head");
                    drop(pending);
                    stream.answer(status).await;
                    return;
                }
                Ok(Ok(h)) => h,
            };
        let t_head = Instant::now();
        let (bi, hint) = match self.pick(&head) {
            Ok(picked) => picked,
            Err(why) => {
                self.counters.no_backend.inc();
                debug!(%peer, why, "no back-end for the request");
                drop(pending);
                stream.answer(503).await;
                return;
            }
        };
        let route = self.route_of(&self.backends()[bi]);
        match route {
            Route::Handoff => {}
            Route::Relay(to) => {
                drop(pending);
                match stream.into_polled() {
                    Ok(s) => self.relay(s, bi, to, &buf, true).await,
                    Err(e) => debug!(%peer, error = %e, "client connection lost before the relay"),
                }
                return;
            }
            Route::Unusable => {
                // `pick` offers no such back-end; kept total all the same.
                self.counters.no_backend.inc();
                drop(pending);
                stream.answer(503).await;
                return;
            }
        }
        // The listener is bound to the VIP: no need to ask the kernel.
        let local = if self.cfg.vip.is_unspecified() {
            stream.local_addr()
        } else {
            Ok(SocketAddr::from((self.cfg.vip, self.cfg.port)))
        };
        let (SocketAddr::V4(client), Ok(SocketAddr::V4(vip))) = (peer, local) else {
            debug!(%peer, "not IPv4; not handed off");
            drop(pending);
            stream.answer(505).await;
            return;
        };
        let key = FlowKey { client, vip };
        let Some(fd) = stream.fd() else {
            return;
        };
        let outcome = self
            .handoff(fd, key, bi, &buf, bytes::Bytes::new(), hint, t_head)
            .await;
        let Some((status, relay_to)) = self.settle(fd, &key, bi, outcome) else {
            drop(stream);
            return;
        };
        drop(pending);
        match relay_to {
            // The socket is in normal mode and the unread bytes are still in
            // its queue (the dump only peeked): the connection can be
            // relayed as if never offered.
            Some(to) => match stream.into_polled() {
                Ok(s) => self.relay(s, bi, to, &buf, false).await,
                Err(e) => debug!(%key, error = %e, "client connection lost before the relay"),
            },
            None => stream.answer(status).await,
        }
    }

    /// What a handoff's outcome leaves to do with the client's socket:
    /// nothing (handed off: closed still in repair mode, which sends
    /// nothing; or prepared for the reset that closing it sends), or the
    /// front's own answer `status`, by a relay to the address given if the
    /// back-end has one (the socket is out of repair mode again).
    fn settle(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        key: &FlowKey,
        bi: usize,
        outcome: Outcome,
    ) -> Option<(u16, Option<SocketAddr>)> {
        match outcome {
            Outcome::Live => None,
            Outcome::Reset => {
                // The back-end may or may not serve this client: a reset is
                // the one answer that cannot collide with its own.
                if let Err(e) = repair::set_repair(fd, false)
                    .and_then(|()| baton_sys::sockopt::set_linger_zero(fd))
                {
                    debug!(%key, error = %e, "could not prepare the reset");
                }
                None
            }
            Outcome::GiveBack { status, dumped } => {
                if dumped {
                    if let Err(e) = repair::set_repair(fd, false) {
                        warn!(%key, error = %e, "could not leave repair mode");
                        return None;
                    }
                }
                let b = Arc::clone(&self.backends()[bi]);
                let to = b.relay_to();
                if to.is_some() {
                    self.counters.relay_fallbacks.inc();
                    debug!(%key, backend = %b.name, status, "handoff failed; relaying the connection instead");
                }
                Some((status, to))
            }
        }
    }

    /// The TLS configuration now (a reload may swap it).
    fn server_tls(&self) -> Option<Arc<ServerTls>> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One HTTPS client connection: the TLS handshake and the request head
    /// (whole records only, see [`crate::tls`]), then the same choice as for
    /// plain HTTP. A handoff carries the TLS session with the connection;
    /// until the secrets are taken out of rustls, the front answers errors
    /// itself over TLS; after, through the same record layer the back-ends
    /// use.
    async fn client_tls(
        self: &Arc<Self>,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        pending: OwnedSemaphorePermit,
    ) {
        let Some(tls) = self.server_tls() else {
            return;
        };
        let mut io = match TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "registering a client connection failed");
                return;
            }
        };
        // The handshake flights must not wait for the client's ACKs.
        let _ = io.set_nodelay(true);
        let mut session = match tls.session() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "no TLS session could be made");
                return;
            }
        };
        let tun = self.routing();
        let limits = HeadLimits {
            max_bytes: tun.cfg.limits.head_max_bytes,
            max_headers: tun.cfg.limits.head_max_headers,
        };
        let head_timeout = ms(tun.cfg.limits.head_timeout_ms);
        drop(tun);
        let read = tokio::time::timeout(
            head_timeout,
            crate::tls::read_request(&mut io, &mut session.conn, &limits),
        )
        .await;
        let req = match read {
            Err(_) => {
                self.counters.head_timeouts.inc();
                debug!(%peer, "TLS handshake or request head timeout");
                drop(pending);
                if !session.conn.is_handshaking() {
                    crate::tls::answer(&mut io, session.conn, 408).await;
                }
                return;
            }
            Ok(Err(TlsFailure::Closed)) => {
                self.counters.client_gone.inc();
                return;
            }
            Ok(Err(TlsFailure::PlainHttp)) => {
                self.counters.tls_plain_http.inc();
                debug!(%peer, "plain HTTP on the TLS port");
                return;
            }
            Ok(Err(TlsFailure::Handshake(why))) => {
                self.counters.tls_handshake_failures.inc();
                debug!(%peer, why, "TLS handshake failed");
                return;
            }
            Ok(Err(TlsFailure::Bad(status, why))) => {
                self.counters.bad_requests.inc();
                debug!(%peer, status, why, "bad request head");
                drop(pending);
                crate::tls::answer(&mut io, session.conn, status).await;
                return;
            }
            Ok(Ok(r)) => r,
        };
        let mut req = req;
        self.counters.tls_handshakes.inc();
        if session.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            self.counters.tls_resumed.inc();
        }
        let t_head = Instant::now();
        // RFC 9110 7.4: a request for a name this connection was not set up
        // for (its certificate may not even cover it) is misdirected.
        if let (Some(sni), Some(host)) = (&req.sni, req.head.host_name()) {
            // A fully qualified name's trailing dot names the same host.
            let bare = |n: &str| n.strip_suffix('.').unwrap_or(n).to_ascii_lowercase();
            if bare(host) != bare(sni) {
                self.counters.tls_misdirected.inc();
                debug!(%peer, sni, host, "Host does not match SNI: 421");
                drop(pending);
                crate::tls::answer(&mut io, session.conn, 421).await;
                return;
            }
        }
        // Routing rules match on the host: the SNI stands in for a missing
        // Host (HTTP/1.0).
        if req.head.host.is_none() {
            req.head.host = req.sni.clone();
        }
        let (bi, hint) = match self.pick(&req.head) {
            Ok(picked) => picked,
            Err(why) => {
                self.counters.no_backend.inc();
                debug!(%peer, why, "no back-end for the request");
                drop(pending);
                crate::tls::answer(&mut io, session.conn, 503).await;
                return;
            }
        };
        let route = self.route_of(&self.backends()[bi]);
        if matches!(route, Route::Unusable) {
            self.counters.no_backend.inc();
            drop(pending);
            crate::tls::answer(&mut io, session.conn, 503).await;
            return;
        }
        let carried = match crate::tls::extract(session, &req) {
            Ok(c) => c,
            Err(why) => {
                // rustls is gone and nothing else holds the keys: close.
                self.counters.tls_handshake_failures.inc();
                warn!(%peer, why, "could not take the TLS session out of rustls");
                return;
            }
        };
        let first = carried.plaintext.clone();
        if let Route::Relay(to) = route {
            drop(pending);
            self.relay_tls(io, &carried, &req.ciphertext, bi, to, &first, true)
                .await;
            return;
        }
        let (SocketAddr::V4(client), Some(t)) = (peer, self.cfg.tls.as_ref()) else {
            debug!(%peer, "not IPv4; not handed off");
            drop(pending);
            answer_tls(io, &carried, &req.ciphertext, 505).await;
            return;
        };
        let key = FlowKey {
            client,
            vip: SocketAddrV4::new(self.cfg.vip, t.port),
        };
        let blob = {
            let enc = carried.encode();
            // The keys are wiped when the frame that carries them is dropped.
            bytes::Bytes::from_owner(enc)
        };
        let fd = io.as_fd();
        let outcome = self
            .handoff(fd, key, bi, &req.ciphertext, blob, hint, t_head)
            .await;
        if matches!(outcome, Outcome::Live) {
            self.counters.tls_handoffs.inc();
        }
        let Some((status, relay_to)) = self.settle(fd, &key, bi, outcome) else {
            drop(io);
            return;
        };
        drop(pending);
        match relay_to {
            Some(to) => {
                self.relay_tls(io, &carried, &req.ciphertext, bi, to, &first, false)
                    .await
            }
            None => answer_tls(io, &carried, &req.ciphertext, status).await,
        }
    }

    /// Relays a TLS connection whose session left rustls: this front
    /// decrypts what the client sends and encrypts what the back-end
    /// answers, with the record layer the back-ends use. `first`: the
    /// plaintext read already; `ciphertext`: read from the socket but not
    /// decrypted yet.
    #[allow(clippy::too_many_arguments)]
    async fn relay_tls(
        self: &Arc<Self>,
        io: TcpStream,
        carried: &baton_tls::Carried,
        ciphertext: &[u8],
        bi: usize,
        to: SocketAddr,
        first: &[u8],
        primary: bool,
    ) {
        let b = Arc::clone(&self.backends()[bi]);
        let routing = self.routing();
        let mut client = match tls_stream(io, carried, ciphertext) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "the TLS session cannot continue here");
                return;
            }
        };
        let Ok(_slot) = self.relay_slots.try_acquire() else {
            self.counters.relay_failures.inc();
            debug!(backend = %b.name, "relay.max_connections reached");
            let _ = client.write_all(&plain_error(503)).await;
            let _ = client.shutdown().await;
            return;
        };
        let _active = ActiveRelay::enter(&b.relay_active);
        let back = match self
            .upstreams
            .connect(to, routing.relay_limits.connect_timeout)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                self.relay_connect_failed(&b, primary, &e);
                let status = if e.timed_out() { 504 } else { 502 };
                let _ = client.write_all(&plain_error(status)).await;
                let _ = client.shutdown().await;
                return;
            }
        };
        self.counters.relayed.inc();
        b.relayed.inc();
        let meter = relay::Meter {
            up: &self.counters.relay_bytes_up,
            down: &self.counters.relay_bytes_down,
        };
        let done = relay::run_stream(client, back, first, &routing.relay_limits, &meter).await;
        if done.end == relay::End::Idle {
            self.counters.relay_idle_timeouts.inc();
        }
        debug!(backend = %b.name, up = done.up, down = done.down, end = ?done.end, "TLS relay done");
    }

    /// How back-end `b` is served now: handed off, relayed, or not at all.
    fn route_of(&self, b: &Backend) -> Route {
        match (b.mode, &self.kit, b.relay_to()) {
            (BackendMode::Handoff, Some(_), _) => Route::Handoff,
            (_, _, Some(to)) => Route::Relay(to),
            (_, _, None) => Route::Unusable,
        }
    }

    /// Connections being relayed now.
    fn relay_active(&self) -> u64 {
        self.backends()
            .iter()
            .map(|b| u64::from(b.relay_active.load(Ordering::Relaxed)))
            .sum()
    }

    /// Relays the connection to `to` (back-end `bi`) until both directions
    /// are done. `first`: what was read from the client already. `primary`:
    /// relaying is how this back-end is served (not a fallback from a failed
    /// handoff), so a failed connect takes it out of rotation for
    /// `control.refused_pause_ms`.
    async fn relay(
        self: &Arc<Self>,
        mut stream: TcpStream,
        bi: usize,
        to: SocketAddr,
        first: &[u8],
        primary: bool,
    ) {
        let b = Arc::clone(&self.backends()[bi]);
        let routing = self.routing();
        let Ok(_slot) = self.relay_slots.try_acquire() else {
            self.counters.relay_failures.inc();
            debug!(backend = %b.name, "relay.max_connections reached");
            answer_on(&mut stream, 503).await;
            return;
        };
        let _active = ActiveRelay::enter(&b.relay_active);
        // As nginx's tcp_nodelay: the tail of a response must not wait for
        // the ACK of what went before it.
        let _ = stream.set_nodelay(true);
        let meter = relay::Meter {
            up: &self.counters.relay_bytes_up,
            down: &self.counters.relay_bytes_down,
        };
        let done = if self.upstreams.pooling() {
            let report = |event: relay::Event<'_>| match event {
                relay::Event::Relaying => {
                    self.counters.relayed.inc();
                    b.relayed.inc();
                }
                relay::Event::ConnectFailed(e) => self.relay_connect_failed(&b, primary, e),
            };
            let http = relay::HttpRelay {
                limits: &routing.relay_limits,
                meter,
                pipes: &self.pipes,
                upstreams: &self.upstreams,
                report: &report,
            };
            http.serve(stream, to, first).await
        } else {
            let connect = self
                .upstreams
                .connect(to, routing.relay_limits.connect_timeout);
            let back = match connect.await {
                Ok(s) => s,
                Err(e) => {
                    self.relay_connect_failed(&b, primary, &e);
                    let status = if e.timed_out() { 504 } else { 502 };
                    answer_on(&mut stream, status).await;
                    return;
                }
            };
            self.counters.relayed.inc();
            b.relayed.inc();
            relay::run(
                stream,
                back,
                first,
                &routing.relay_limits,
                &meter,
                &self.pipes,
            )
            .await
        };
        if done.end == relay::End::Idle {
            self.counters.relay_idle_timeouts.inc();
        }
        debug!(backend = %b.name, up = done.up, down = done.down, end = ?done.end, "relay done");
    }

    /// A relay could not connect to back-end `b`: counted, logged, and a
    /// primary relay back-end leaves rotation for a while.
    fn relay_connect_failed(&self, b: &Backend, primary: bool, e: &relay::ConnectError) {
        self.counters.relay_failures.inc();
        b.relay_failures.inc();
        {
            let mut st = b.st.lock().unwrap_or_else(|e| e.into_inner());
            if primary {
                let pause = ms(self.routing().cfg.control.refused_pause_ms);
                st.paused_until = Instant::now().checked_add(pause);
            }
            st.last_error = Some(e.to_string());
        }
        warn!(backend = %b.name, error = %e, "relay failed");
    }

    /// Routes the request to a group and lets the group's policy pick a
    /// back-end; returns the back-end's index and the hint for the other
    /// fronts (the policy's placement of the target, empty for policies
    /// that keep no per-target state), or why no back-end can take it.
    fn pick(&self, head: &RequestHead) -> std::result::Result<(usize, bytes::Bytes), &'static str> {
        let host = head.host_name();
        let routing = self.routing();
        let backends = self.backends();
        let group = routing.rules.route(host, &head.path);
        let Some(g) = routing.groups.iter().find(|g| g.name == group) else {
            return Err("no back-end group for this request");
        };
        let now = Instant::now();
        let views: Vec<BackendView> = g
            .members
            .iter()
            .map(|&i| {
                let b = &backends[i];
                let route = self.route_of(b);
                let st = b.st.lock().unwrap_or_else(|e| e.into_inner());
                let paused = st.paused_until.is_some_and(|t| t > now);
                let reachable = match route {
                    Route::Handoff => st.up && st.mac.is_some(),
                    // Learnt from connecting: a failed connect pauses it.
                    Route::Relay(_) => true,
                    Route::Unusable => false,
                };
                BackendView {
                    up: reachable && !paused,
                    draining: st.draining,
                    load: st
                        .load()
                        .saturating_add(b.relay_active.load(Ordering::Relaxed)),
                    weight: b.weight(),
                }
            })
            .collect();
        let req = Request {
            method: &head.method,
            host,
            path: &head.path,
        };
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut policy = g.policy.lock().unwrap_or_else(|e| e.into_inner());
        // Pai's admission control: beyond S connections in the group, new
        // ones wait rather than overload a node; a front answers 503 instead.
        if let Some(limit) = policy.admission_limit(&views) {
            let total: u64 = views
                .iter()
                .filter(|v| v.available())
                .map(|v| u64::from(v.load))
                .sum();
            if total >= limit {
                return Err("over the admission limit of the back-end group");
            }
        }
        let bi = policy
            .pick(&req, &views, now_ms)
            .and_then(|k| g.members.get(k).copied())
            .ok_or("no back-end available")?;
        let hint = policy.placement(&req).map_or_else(bytes::Bytes::new, |p| {
            bytes::Bytes::copy_from_slice(&p.encode())
        });
        Ok((bi, hint))
    }

    /// Hands the connection off: the engine decides, this carries it out.
    /// Returns what became of the client's socket.
    /// `hint` travels in the `Handoff` and reaches the other fronts
    /// ([`FrontEvent::Mirrored`]); empty for now (the policy's target
    /// assignment goes there).
    #[allow(clippy::too_many_arguments)]
    async fn handoff(
        self: &Arc<Self>,
        fd: std::os::fd::BorrowedFd<'_>,
        key: FlowKey,
        bi: usize,
        already_read: &[u8],
        tls: bytes::Bytes,
        hint: bytes::Bytes,
        t0: Instant,
    ) -> Outcome {
        let Some(kit) = self.kit.as_ref() else {
            return Outcome::GiveBack {
                status: 503,
                dumped: false,
            };
        };
        let (tx, rx) = oneshot::channel();
        let local = Local {
            fd,
            already_read,
            tls,
            tx: Some(tx),
        };
        let fx = self.drive(kit, Some(local), |e, _| {
            Feed::Start(e.start_with_hint(key, bi, hint))
        });
        self.lat_send.record_us(t0.elapsed().as_micros() as u64);
        self.apply(fx).await;
        // The engine hands out an outcome by the answer deadline at the
        // latest; a closed sender means the front is going away.
        let outcome = rx.await.unwrap_or(Outcome::Reset);
        if matches!(outcome, Outcome::Live) {
            self.lat_total.record_us(t0.elapsed().as_micros() as u64);
        }
        outcome
    }

    /// Feeds the engine one input and carries out everything it asks for,
    /// feeding back each result, until it has nothing left to do. Returns
    /// what needs an `.await` (channel writes, channels to drop): pass it to
    /// [`Front::apply`].
    fn drive(
        &self,
        kit: &HandoffKit,
        mut local: Option<Local<'_>>,
        input: impl FnOnce(&mut FrontEngine, Instant) -> Feed,
    ) -> Effects {
        let _exec = self.exec.lock().unwrap_or_else(|e| e.into_inner());
        let mut fx = Effects::default();
        let mut queue = std::collections::VecDeque::new();
        let mut events = Vec::new();
        let first = {
            let mut e = self.lock_engine();
            let r = input(&mut e, Instant::now());
            drain_engine(&mut e, &mut queue, &mut events);
            r
        };
        if let (Feed::Start(id), Some(l)) = (&first, local.as_mut()) {
            if let Some(tx) = l.tx.take() {
                self.lock_waiting().insert(*id, tx);
            }
        }
        while let Some(action) = queue.pop_front() {
            let feed = self.carry_out(kit, action, local.as_ref(), &mut fx);
            if matches!(feed, Feed::Nothing | Feed::Start(_)) {
                continue;
            }
            let mut e = self.lock_engine();
            let now = Instant::now();
            match feed {
                Feed::Parked(id, r) => e.handle_parked(id, r),
                Feed::Dumped(id, r) => e.handle_dumped(now, id, r),
                Feed::ForwardFailed(id) => e.handle_forward_failed(id),
                Feed::Removal(id, q) => e.handle_removal(now, id, q),
                Feed::Idle(keys) => e.handle_idle(&keys),
                Feed::Nothing | Feed::Start(_) => {}
            }
            drain_engine(&mut e, &mut queue, &mut events);
        }
        for ev in events {
            self.on_event(ev, &mut fx);
        }
        self.timer.rearm(self.lock_engine().poll_timeout());
        fx
    }

    /// Carries out one action; returns the result the engine must hear.
    fn carry_out(
        &self,
        kit: &HandoffKit,
        action: FrontAction,
        local: Option<&Local<'_>>,
        fx: &mut Effects,
    ) -> Feed {
        match action {
            FrontAction::Park { id, flow, backend } => {
                let owner = self.owner(backend, id);
                let r = kit.lock_forwarder().park(&flow, owner).map_err(|e| {
                    debug!(%flow, error = %e, "park failed");
                    if e.is_map_full() {
                        self.counters.flow_table_full.inc();
                        ParkFailure::TableFull
                    } else {
                        ParkFailure::Other
                    }
                });
                Feed::Parked(id, r)
            }
            FrontAction::Dump { id } => {
                // Only the task that started a handoff is handed its Dump.
                let Some(l) = local else {
                    return Feed::Dumped(id, Err(DumpFailure("no socket".into())));
                };
                let td = Instant::now();
                let r = match repair::dump(l.fd) {
                    Ok(d) => {
                        let mut data = Vec::with_capacity(l.already_read.len() + d.unread.len());
                        data.extend_from_slice(l.already_read);
                        data.extend_from_slice(&d.unread);
                        let mut state = d.state;
                        // What elapsed since the dump is added here (in the
                        // socket's own unit); the back-end adds the transit.
                        state.ts_val = repair::advance_timestamp(state.ts_val, td.elapsed());
                        self.lat_dump.record_us(td.elapsed().as_micros() as u64);
                        Ok(Dump {
                            state,
                            data: bytes::Bytes::from(data),
                            sent: bytes::Bytes::from(d.sent),
                            tls: l.tls.clone(),
                        })
                    }
                    Err(e) => Err(DumpFailure(e.to_string())),
                };
                Feed::Dumped(id, r)
            }
            FrontAction::Send { backend, frame } => {
                if let Some(b) = self.backend(backend) {
                    b.outbox
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(frame.into());
                    fx.flush.insert(backend);
                }
                Feed::Nothing
            }
            FrontAction::Forward { id, flow, backend } => {
                let Some(target) = self.target(kit, backend) else {
                    return Feed::ForwardFailed(id);
                };
                let owner = self.owner(backend, id);
                if let Err(e) = kit.lock_forwarder().forward(&flow, &target, owner) {
                    warn!(%flow, error = %e, "forward failed");
                    return Feed::ForwardFailed(id);
                }
                self.flush_parked(kit, &flow, &target);
                self.notify(id, Outcome::Live);
                Feed::Nothing
            }
            FrontAction::GiveBack {
                id,
                flow,
                status,
                dumped,
            } => {
                self.unsteer(kit, &flow);
                self.notify(id, Outcome::GiveBack { status, dumped });
                Feed::Nothing
            }
            FrontAction::Reset { id, flow } => {
                self.unsteer(kit, &flow);
                self.notify(id, Outcome::Reset);
                Feed::Nothing
            }
            FrontAction::MarkClosing { id, flow, backend } => {
                if let Some(t) = self.target(kit, backend) {
                    let owner = self.owner(backend, id);
                    if let Err(e) = kit.lock_forwarder().mark_closing(&flow, &t, owner) {
                        warn!(key = %flow, error = %e, "could not mark a forwarding entry closing");
                    }
                }
                Feed::Nothing
            }
            FrontAction::Resteer { id, flow, backend }
            | FrontAction::Steer { id, flow, backend } => {
                if is_mirror_id(id) {
                    self.counters.mirror.steered.inc();
                }
                if let Some(t) = self.target(kit, backend) {
                    let owner = self.owner(backend, id);
                    if let Err(e) = kit.lock_forwarder().forward(&flow, &t, owner) {
                        warn!(key = %flow, error = %e, "could not steer a flow again");
                    }
                }
                Feed::Nothing
            }
            FrontAction::RemoveIfQuiet { id, flow, quiet } => {
                let entry = kit.lock_forwarder().entry(&flow);
                let q = match entry {
                    Ok(Some(e)) => {
                        let idle = Duration::from_nanos(
                            Forwarder::now_ns().saturating_sub(e.last_seen_ns),
                        );
                        if idle < quiet {
                            Quiet::Busy { idle }
                        } else {
                            self.unsteer(kit, &flow);
                            Quiet::Removed
                        }
                    }
                    // Gone already: a new connection's SYN replaced it.
                    Ok(None) => {
                        kit.lock_parked().kept.remove(&flow);
                        Quiet::Removed
                    }
                    Err(e) => {
                        debug!(%flow, error = %e, "looking up a forwarding entry failed");
                        Quiet::Busy {
                            idle: Duration::ZERO,
                        }
                    }
                };
                Feed::Removal(id, q)
            }
            FrontAction::Remove { flow } => {
                self.unsteer(kit, &flow);
                Feed::Nothing
            }
            FrontAction::SweepIdle => {
                let idle_ns = self
                    .routing()
                    .cfg
                    .flows
                    .idle_timeout_ms
                    .saturating_mul(1_000_000);
                let now_ns = Forwarder::now_ns();
                match kit.lock_forwarder().entries() {
                    Ok(entries) => Feed::Idle(
                        entries
                            .into_iter()
                            .filter(|(_, e)| now_ns.saturating_sub(e.last_seen_ns) > idle_ns)
                            .map(|(k, _)| k)
                            .collect(),
                    ),
                    Err(e) => {
                        warn!(error = %e, "listing forwarding entries failed");
                        Feed::Nothing
                    }
                }
            }
        }
    }

    fn on_event(&self, ev: FrontEvent, fx: &mut Effects) {
        match ev {
            FrontEvent::HandedOff {
                backend,
                control_rtt,
                restore_us,
                ..
            } => {
                self.counters.handoffs_ok.inc();
                self.lat_rtt.record_us(control_rtt.as_micros() as u64);
                self.lat_restore.record_us(u64::from(restore_us));
                if let Some(b) = self.backend(backend) {
                    b.handoffs.inc();
                    let mut st = b.st.lock().unwrap_or_else(|e| e.into_inner());
                    st.handed_since_report = st.handed_since_report.saturating_add(1);
                }
            }
            FrontEvent::GaveBack {
                backend,
                status,
                why,
                ..
            } => {
                self.counters.handoffs_failed.inc();
                if let Some(b) = self.backend(backend) {
                    b.failures.inc();
                    if b.relay_to().is_some() {
                        warn!(backend = %b.name, error = %why, "handoff not done; relaying the connection instead");
                    } else {
                        warn!(backend = %b.name, status, error = %why, "handoff not done; the front answers");
                    }
                }
            }
            FrontEvent::Refused {
                backend,
                backend_fault,
            } => {
                // Only a back-end that cannot restore anything leaves the
                // rotation; one connection it could not take (a 4-tuple
                // still in use there) says nothing about the next.
                if backend_fault {
                    if let Some(b) = self.backend(backend) {
                        let pause = ms(self.routing().cfg.control.refused_pause_ms);
                        b.st.lock().unwrap_or_else(|e| e.into_inner()).paused_until =
                            Instant::now().checked_add(pause);
                    }
                }
            }
            FrontEvent::TimedOut { backend, .. } => {
                self.counters.handoffs_failed.inc();
                self.counters.handoffs_reset.inc();
                if let Some(b) = self.backend(backend) {
                    b.failures.inc();
                    warn!(backend = %b.name, "back-end did not answer a handoff in time; client reset, back-end out of rotation");
                }
                // Out of rotation until its channel is re-established.
                fx.drop.push(backend);
            }
            FrontEvent::Lost { backend, .. } => {
                self.counters.handoffs_failed.inc();
                self.counters.handoffs_reset.inc();
                if let Some(b) = self.backend(backend) {
                    b.failures.inc();
                }
            }
            FrontEvent::Closed { backend, .. } => {
                if let Some(b) = self.backend(backend) {
                    let mut st = b.st.lock().unwrap_or_else(|e| e.into_inner());
                    st.closed_since_report = st.closed_since_report.saturating_add(1);
                }
            }
            FrontEvent::Removed { cause } => match cause {
                RemoveCause::Closed => self.counters.entries_removed_closed.inc(),
                RemoveCause::Idle => self.counters.entries_removed_idle.inc(),
                RemoveCause::Orphaned => self.counters.entries_removed_orphaned.inc(),
            },
            FrontEvent::Mirrored {
                backend,
                origin,
                hint,
                ..
            } => {
                self.counters.mirror.mirrored.inc();
                self.heard_from(origin);
                self.learn_hint(backend, &hint);
            }
            FrontEvent::Unmirrored { .. } => self.counters.mirror.unmirrored.inc(),
            FrontEvent::Stale { backend, kind } => {
                if matches!(kind, "mirror" | "unmirror" | "mirroring") {
                    self.counters.mirror.stale.inc();
                }
                self.counters.stale_frames.inc();
                debug!(
                    backend,
                    kind, "frame about a handoff this front no longer tracks"
                );
            }
        }
    }

    /// What another front's policy decided for a connection it handed to
    /// `backend`: the placement of the request's target, which this front's
    /// policy of the back-end's group learns, so that a target goes to the
    /// same back-end (set) whichever front receives it. A hint this front
    /// cannot read (empty, another format) is ignored; a back-end in no
    /// group of this front's configuration teaches nothing.
    fn learn_hint(&self, backend: BackendId, hint: &bytes::Bytes) {
        let Some(placement) = baton_policy::Placement::decode(hint) else {
            if !hint.is_empty() {
                self.counters.mirror.placements_unreadable.inc();
            }
            return;
        };
        let routing = self.routing();
        let Some((g, member)) = routing
            .groups
            .iter()
            .find_map(|g| g.members.iter().position(|&m| m == backend).map(|k| (g, k)))
        else {
            return;
        };
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        g.policy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .learn(placement, member, now_ms);
        self.counters.mirror.placements_learnt.inc();
    }

    /// Another front handed off a flow a back-end told this one about.
    fn heard_from(&self, front: std::net::IpAddr) {
        let mut peers = self
            .counters
            .mirror
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !peers.contains_key(&front) && peers.len() >= MAX_PEERS {
            if let Some(oldest) = peers.iter().min_by_key(|(_, p)| p.last).map(|(ip, _)| *ip) {
                peers.remove(&oldest);
            }
        }
        let p = peers.entry(front).or_insert(PeerSeen {
            flows: 0,
            last: Instant::now(),
        });
        p.flows += 1;
        p.last = Instant::now();
    }

    /// Writes the queued frames and drops the channels the engine gave up on.
    async fn apply(&self, fx: Effects) {
        for b in fx.flush {
            if let Some(b) = self.backend(b) {
                b.write_wake.notify_one();
            }
        }
        for b in fx.drop {
            if let Some(b) = self.backend(b) {
                self.drop_channel(&b, "handoff timed out").await;
            }
        }
    }

    /// Writes what the engine queued for back-end `i`, whenever woken.
    async fn writer(self: Arc<Self>, i: BackendId) {
        let b = Arc::clone(&self.backends()[i]);
        loop {
            b.write_wake.notified().await;
            if self.gone(i, &b) {
                return;
            }
            if let Err(e) = self.flush(&b).await {
                debug!(backend = %b.name, error = %e, "control-channel write failed");
            }
        }
    }

    /// Where to steer a flow handed to `backend`.
    fn target(&self, kit: &HandoffKit, backend: BackendId) -> Option<ForwardTarget> {
        let b = self.backend(backend)?;
        let mac = b.st.lock().unwrap_or_else(|e| e.into_inner()).mac?;
        Some(ForwardTarget {
            ifindex: kit.iface.ifindex,
            dst_mac: mac,
            src_mac: kit.iface.mac,
        })
    }

    /// Takes over the flows a previous front process left in the pinned
    /// flow table (see [`FrontEngine::adopt`]). Once, before the control
    /// channels start, and after any predecessor stopped changing the map.
    async fn adopt_pinned(&self) {
        let Some(kit) = self.kit.as_ref() else {
            return;
        };
        let entries = {
            let f = kit.lock_forwarder();
            if f.pin_dir().is_none() {
                return;
            }
            f.entries()
        };
        let entries = match entries {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "reading the pinned flow table failed; its entries age out");
                return;
            }
        };
        if entries.is_empty() {
            return;
        }
        let by_ip: HashMap<std::net::Ipv4Addr, BackendId> = self
            .backends()
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.control.map(|a| (*a.ip(), i)))
            .collect();
        let (mut adopted, mut unknown, mut refused, mut mirrored) = (0u64, 0u64, 0u64, 0u64);
        let fx = self.drive(kit, None, |e, now| {
            for (key, entry) in &entries {
                let Some(&backend) = by_ip.get(&entry.owner.backend) else {
                    // Its back-end left the configuration: the entry keeps
                    // steering until it is idle.
                    unknown += 1;
                    continue;
                };
                let kind = match entry.action {
                    baton_bpf::Action::Park => Entry::Parked,
                    baton_bpf::Action::Forward => Entry::Forwarding,
                    baton_bpf::Action::ForwardClosing => Entry::Closing,
                };
                if e.adopt(now, *key, entry.owner.id, backend, kind) {
                    adopted += 1;
                    // Another front's flow this one steered (the id says so).
                    mirrored += u64::from(is_mirror_id(entry.owner.id));
                } else {
                    refused += 1;
                }
            }
            Feed::Nothing
        });
        self.apply(fx).await;
        self.counters.flows_adopted.add(adopted);
        info!(
            adopted,
            mirrored,
            unknown_backend = unknown,
            duplicates = refused,
            "adopted the flows of the previous front process"
        );
    }

    /// What a flow's entry records of its owner, for a successor to adopt.
    fn owner(&self, backend: BackendId, id: u64) -> Owner {
        let ip = self
            .backend(backend)
            .and_then(|b| b.control)
            .map_or(std::net::Ipv4Addr::UNSPECIFIED, |a| *a.ip());
        Owner { backend: ip, id }
    }

    /// Removes a flow's entry and the frames kept for it.
    fn unsteer(&self, kit: &HandoffKit, flow: &FlowKey) {
        let mut store = kit.lock_parked();
        if let Err(e) = kit.lock_forwarder().remove(flow) {
            debug!(%flow, error = %e, "removing a forwarding entry failed");
        }
        store.kept.remove(flow);
    }

    fn notify(&self, id: u64, outcome: Outcome) {
        if let Some(tx) = self.lock_waiting().remove(&id) {
            let _ = tx.send(outcome);
        }
    }

    fn lock_engine(&self) -> std::sync::MutexGuard<'_, FrontEngine> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Outcome>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes every frame queued for `b`, in one write, within the handoff
    /// timeout (waiting for the writer included). A write that does not
    /// finish in time may have left half a frame on the wire, so the channel
    /// is dropped: the control loop then reconnects.
    async fn flush(&self, b: &Backend) -> Result<()> {
        let limit = ms(self.cfg.limits.handoff_timeout_ms);
        let sent = tokio::time::timeout(limit, async {
            let mut w = b.writer.lock().await;
            let frames = std::mem::take(&mut *b.outbox.lock().unwrap_or_else(|e| e.into_inner()));
            if frames.is_empty() {
                return Ok(());
            }
            match w.as_mut() {
                Some(w) => w.send_all(&frames).await,
                None => bail!("not connected"),
            }
        })
        .await;
        match sent {
            Ok(r) => r,
            Err(_) => {
                self.drop_channel(b, "a control-channel write timed out")
                    .await;
                bail!("control-channel write timed out after {limit:?}")
            }
        }
    }

    /// Sends one housekeeping frame after whatever the engine queued.
    async fn send(&self, b: &Backend, frame: Frame) -> Result<()> {
        b.outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(frame);
        self.flush(b).await
    }

    async fn drop_channel(&self, b: &Backend, why: &str) {
        if let Some(mut w) = b.writer.lock().await.take() {
            let _ = w.shutdown().await;
        }
        let mut st = b.st.lock().unwrap_or_else(|e| e.into_inner());
        st.up = false;
        st.last_error = Some(why.to_string());
    }

    /// Moves frames from the ring into the store (or straight on, for flows
    /// that already forward). Returns how many were read.
    fn drain_ring(&self, kit: &HandoffKit, store: &mut ParkedStore) -> usize {
        let mut n = 0;
        while let Some(pf) = store.ring.next() {
            n += 1;
            let steer = self.lock_engine().steer(&pf.key);
            match steer {
                Some(None) => {
                    let q = store.kept.entry(pf.key).or_default();
                    self.keep(q, pf.frame);
                }
                Some(Some(backend)) => {
                    let Some(t) = self.target(kit, backend) else {
                        self.counters.frames_dropped.inc();
                        continue;
                    };
                    // Frames kept while parked and not yet flushed (the
                    // handoff is between FORWARD and its flush) go first:
                    // queue behind them rather than overtake them.
                    if let Some(q) = store.kept.get_mut(&pf.key) {
                        self.keep(q, pf.frame);
                    } else {
                        let mut frame = pf.frame;
                        self.resend(kit, &mut frame, &t);
                    }
                }
                None => self.counters.frames_dropped.inc(),
            }
        }
        n
    }

    fn keep(&self, q: &mut Vec<Vec<u8>>, frame: Vec<u8>) {
        // Every resend runs through the back-end's stack: a kept pure ACK
        // need not go when this later frame of its flow says again what it
        // said (see `baton_bpf::supersedes`: duplicate ACKs all go).
        if q.last().is_some_and(|f| baton_bpf::supersedes(&frame, f)) {
            q.pop();
            self.counters.frames_superseded.inc();
        }
        if q.len() < self.routing().cfg.limits.max_parked_frames {
            q.push(frame);
        } else {
            self.counters.frames_dropped.inc();
        }
    }

    fn resend(&self, kit: &HandoffKit, frame: &mut [u8], t: &ForwardTarget) {
        match baton_bpf::prepare_for_resend(frame, t.dst_mac, t.src_mac) {
            Ok(()) => match kit.sender.send(frame) {
                Ok(()) => self.counters.frames_resent.inc(),
                Err(e) => {
                    self.counters.frames_dropped.inc();
                    debug!(error = %e, "resending a kept frame failed");
                }
            },
            Err(e) => {
                self.counters.frames_dropped.inc();
                debug!(error = %e, "kept frame not resendable");
            }
        }
    }

    /// After the entry forwards: deliver what was kept for the flow, in
    /// order. The kept frames are older than anything still in the ring, so
    /// they go first; the ring's frames of this flow then go straight on.
    fn flush_parked(&self, kit: &HandoffKit, key: &FlowKey, t: &ForwardTarget) {
        let mut store = kit.lock_parked();
        if let Some(frames) = store.kept.remove(key) {
            for mut f in frames {
                self.resend(kit, &mut f, t);
            }
        }
        self.drain_ring(kit, &mut store);
    }

    /// Reads the parked-frame ring whenever the kernel signals it.
    async fn parked_reader(self: Arc<Self>) {
        let Some(kit) = self.kit.as_ref() else {
            return;
        };
        // A duplicate of the ring's fd, owned by the poller, so the
        // registration can never outlive the descriptor it watches.
        let fd = match kit.lock_parked().ring.poll_fd() {
            Ok(fd) => fd,
            Err(e) => {
                warn!(error = %e, "cannot poll the parked ring; parked frames will be flushed at handoff only");
                return;
            }
        };
        // `AsyncFd::new` is deprecated because a borrowed fd could be closed
        // while registered; an `OwnedFd` rules that out.
        #[allow(deprecated)]
        let afd = match AsyncFd::with_interest(fd, tokio::io::Interest::READABLE) {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "cannot poll the parked ring; parked frames will be flushed at handoff only");
                return;
            }
        };
        loop {
            let Ok(mut guard) = afd.readable().await else {
                return;
            };
            let n = {
                let mut store = kit.lock_parked();
                self.drain_ring(kit, &mut store)
            };
            if n == 0 {
                guard.clear_ready();
            }
        }
    }

    /// Fires the engine's deadlines when they are due.
    async fn timers(self: Arc<Self>) {
        let Some(kit) = self.kit.as_ref() else {
            return;
        };
        loop {
            let next = self.lock_engine().poll_timeout();
            if self.timer.sleep(next).await {
                let fx = self.drive(kit, None, |e, now| {
                    e.handle_timeout(now);
                    Feed::Nothing
                });
                self.apply(fx).await;
            }
        }
    }

    /// Keeps the control channel to back-end `i` up: connect, authenticate,
    /// read its frames; on failure take it out of rotation and retry with
    /// backoff.
    async fn control_loop(self: Arc<Self>, i: usize, psk: baton_proto::auth::Psk) {
        let b = Arc::clone(&self.backends()[i]);
        let Some(control_addr) = b.control else {
            return;
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.shutting_down.load(Ordering::Relaxed) || self.gone(i, &b) {
                return;
            }
            let timers = self.routing().cfg.control.clone();
            let r = control::connect(control_addr, &psk, ms(timers.connect_timeout_ms)).await;
            let (writer, mut reader) = match r {
                Ok(pair) => pair,
                Err(e) => {
                    {
                        let mut st = b.st.lock().unwrap_or_else(|e| e.into_inner());
                        st.last_error = Some(format!("{e:#}"));
                    }
                    debug!(backend = %b.name, error = %format!("{e:#}"), "control connect failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ms(timers.max_backoff_ms));
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            // The channel's TCP connection taught the kernel the back-end's MAC.
            let mac = self.neighbor_mac(&b);
            if mac.is_none() {
                warn!(backend = %b.name, "back-end is not on the front's L2 segment (no neighbour entry on {}); not using it", self.cfg.interface);
            }
            b.outbox.lock().unwrap_or_else(|e| e.into_inner()).clear();
            *b.writer.lock().await = Some(writer);
            if let Some(kit) = self.kit.as_ref() {
                let fx = self.drive(kit, None, |e, _| {
                    e.handle_channel_up(i);
                    Feed::Nothing
                });
                self.apply(fx).await;
            }
            {
                let mut st = b.st.lock().unwrap_or_else(|e| e.into_inner());
                st.up = true;
                st.draining = false;
                st.paused_until = None;
                st.mac = mac;
                st.connects += 1;
                st.last_error = None;
            }
            info!(backend = %b.name, addr = %control_addr, "control channel up");
            self.channel_up.notify_waiters();
            let why = self.read_channel(i, &b, &mut reader, &timers).await;
            if self.gone(i, &b) {
                info!(backend = %b.name, "removed back-end drained: control channel closed");
                // Its writer task ends too.
                b.write_wake.notify_one();
                let _ = self
                    .send(
                        &b,
                        Frame::Goodbye {
                            reason: "removed from the front's configuration".into(),
                        },
                    )
                    .await;
            } else {
                warn!(backend = %b.name, reason = %why, "control channel down; back-end out of rotation");
            }
            self.drop_channel(&b, &why).await;
            // Handoffs waiting on this channel are reset; its live flows
            // wait for the next channel's `Holding` (or the orphan timeout).
            if let Some(kit) = self.kit.as_ref() {
                let fx = self.drive(kit, None, |e, now| {
                    e.handle_channel_down(now, i);
                    Feed::Nothing
                });
                self.apply(fx).await;
            }
        }
    }

    /// Where [`Front::reload`] reads the configuration from.
    pub fn set_source(&self, source: ConfigSource) {
        *self.source.lock().unwrap_or_else(|e| e.into_inner()) = Some(source);
        let mut r = self.reloads.lock().unwrap_or_else(|e| e.into_inner());
        r.last_ok_unix = unix_now();
    }

    /// Re-reads the configuration, validates it and swaps it in at once
    /// (SIGHUP, `POST /reload`, `baton reload`): back-ends added, removed
    /// (they drain: no new connection, their flows go on), re-weighted or
    /// re-addressed; groups, policies, rules, limits and timers. Flows in
    /// progress are untouched. On any error nothing changes and the error
    /// says why. Returns a one-line summary.
    pub fn reload(self: &Arc<Self>) -> std::result::Result<String, String> {
        let mut reloads = self.reloads.lock().unwrap_or_else(|e| e.into_inner());
        let r = self.try_reload();
        match &r {
            Ok(summary) => {
                reloads.ok += 1;
                reloads.last_ok_unix = unix_now();
                info!(%summary, "configuration reloaded");
            }
            Err(why) => {
                reloads.failed += 1;
                warn!(%why, "configuration not reloaded; the one in force stays");
            }
        }
        reloads.last = Some(r.clone());
        r
    }

    fn try_reload(self: &Arc<Self>) -> std::result::Result<String, String> {
        let new = {
            let source = self.source.lock().unwrap_or_else(|e| e.into_inner());
            let Some(load) = source.as_ref() else {
                return Err("this front has no configuration file to reload".into());
            };
            load().map_err(|e| format!("{e:#}"))?
        };
        let routing = self.routing();
        let old = &routing.cfg;
        let mut fixed = Vec::new();
        let mut differs = |name: &'static str, same: bool| {
            if !same {
                fixed.push(name);
            }
        };
        differs("vip", new.vip == old.vip);
        differs("port", new.port == old.port);
        differs("interface", new.interface == old.interface);
        differs("key_file", new.key_file == old.key_file);
        differs("admin_listen", new.admin_listen == old.admin_listen);
        differs("handoff", new.handoff == old.handoff);
        differs("workers", new.workers == old.workers);
        differs("pin_dir", new.pin_dir == old.pin_dir);
        differs("upgrade_socket", new.upgrade_socket == old.upgrade_socket);
        differs(
            "limits.max_pending",
            new.limits.max_pending == old.limits.max_pending,
        );
        differs(
            "[relay]",
            format!("{:?}", new.relay) == format!("{:?}", old.relay),
        );
        differs(
            "[tls] port (or [tls] added or removed)",
            new.tls.as_ref().map(|t| t.port) == old.tls.as_ref().map(|t| t.port),
        );
        if !fixed.is_empty() {
            return Err(format!(
                "{} cannot change without a restart (baton front --takeover); nothing changed",
                fixed.join(", ")
            ));
        }
        // Certificates are read again every time (a renewal replaces the
        // files in place); a bad one refuses the whole reload.
        let new_tls = match &new.tls {
            Some(t) => Some(Arc::new(
                ServerTls::load_keeping(t, self.server_tls().as_deref())
                    .map_err(|e| format!("[tls]: {e:#}"))?,
            )),
            None => None,
        };
        let current = self.backends();
        // Plan first, change nothing until everything is known to work.
        let mut plan = Vec::with_capacity(new.backends.len());
        let mut slots = Vec::with_capacity(new.backends.len());
        let mut next_slot = current.len();
        let mut summary = Vec::new();
        for bc in &new.backends {
            let relay_to = match bc.address.as_deref().or(bc.relay_address.as_deref()) {
                Some(a) => Some(resolve(a).map_err(|e| format!("backend {}: {e:#}", bc.name))?),
                None => None,
            };
            let same = current.iter().position(|b| {
                !b.removed() && b.name == bc.name && b.mode == bc.mode && b.control == bc.control
            });
            match same {
                Some(slot) => {
                    let b = &current[slot];
                    if b.weight() != bc.weight {
                        summary.push(format!("{} weight {} -> {}", b.name, b.weight(), bc.weight));
                    }
                    if b.relay_to() != relay_to {
                        summary.push(format!("{} relay address changed", b.name));
                    }
                    slots.push(slot);
                    plan.push(SlotPlan::Keep {
                        slot,
                        weight: bc.weight,
                        relay_to,
                    });
                }
                None => {
                    summary.push(format!("{} added", bc.name));
                    slots.push(next_slot);
                    next_slot += 1;
                    plan.push(SlotPlan::Add(Arc::new(Backend {
                        name: bc.name.clone(),
                        mode: bc.mode,
                        control: bc.control,
                        relay_to: Mutex::new(relay_to),
                        weight: AtomicU32::new(bc.weight),
                        removed: AtomicBool::new(false),
                        st: Mutex::default(),
                        writer: tokio::sync::Mutex::new(None),
                        outbox: Mutex::default(),
                        write_wake: tokio::sync::Notify::new(),
                        handoffs: Counter::default(),
                        failures: Counter::default(),
                        relayed: Counter::default(),
                        relay_failures: Counter::default(),
                        relay_active: AtomicU32::new(0),
                    })));
                }
            }
        }
        let removed: Vec<BackendId> = (0..current.len())
            .filter(|k| !current[*k].removed() && !slots.contains(k))
            .collect();
        let next_routing =
            Routing::build(&new, &slots, Some(&routing)).map_err(|e| format!("{e:#}"))?;
        let relayable = plan.iter().any(|p| match p {
            SlotPlan::Keep { relay_to, .. } => relay_to.is_some(),
            SlotPlan::Add(b) => b.relay_to().is_some(),
        });
        if self.kit.is_none() && !relayable {
            return Err(
                "no back-end could be relayed to: give the back-ends a relay_address".into(),
            );
        }
        // The last step that can fail: the forwarder's guard (one map write).
        let guard = guard_of(&new);
        if let Some(kit) = &self.kit {
            if guard != guard_of(old) {
                kit.lock_forwarder()
                    .set_guard(guard.as_ref())
                    .map_err(|e| format!("flows.unknown: {e}"))?;
                summary.push(format!(
                    "flows.unknown {} -> {}",
                    old.flows.unknown.as_str(),
                    new.flows.unknown.as_str()
                ));
            }
        }
        // Swap: back-ends first (the routing refers to their slots).
        let mut all: Vec<Arc<Backend>> = current.as_ref().clone();
        let mut added = Vec::new();
        for p in plan {
            match p {
                SlotPlan::Keep {
                    slot,
                    weight,
                    relay_to,
                } => {
                    let b = &all[slot];
                    b.weight.store(weight, Ordering::Relaxed);
                    *b.relay_to.lock().unwrap_or_else(|e| e.into_inner()) = relay_to;
                }
                SlotPlan::Add(b) => {
                    added.push((all.len(), b.mode));
                    all.push(b);
                }
            }
        }
        for &k in &removed {
            all[k].removed.store(true, Ordering::Relaxed);
            let flows = self.lock_engine().flows_on(k);
            summary.push(format!("{} removed (draining {flows} flows)", all[k].name));
        }
        {
            let mut e = self.lock_engine();
            for &(k, _) in &added {
                let id = e.add_backend();
                debug_assert_eq!(id, k);
            }
            e.set_timers(timers_of(&new));
        }
        *self.backends.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(all);
        *self.routing.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next_routing);
        if let Some(t) = &new_tls {
            for w in &t.warnings {
                warn!("TLS certificate: {w}");
            }
            summary.push(format!(
                "TLS certificates read again ({})",
                t.certificates.len()
            ));
        }
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = new_tls;
        for (k, mode) in added {
            if mode == BackendMode::Handoff && self.kit.is_some() {
                self.spawn_channel(k);
            }
        }
        for (what, same) in [
            (
                "groups or policies",
                format!("{:?}", new.group_configs()) == format!("{:?}", old.group_configs()),
            ),
            (
                "rules",
                format!("{:?}", new.rules) == format!("{:?}", old.rules),
            ),
            (
                "[limits]",
                format!("{:?}", new.limits) == format!("{:?}", old.limits),
            ),
            (
                "[flows]",
                format!("{:?}", new.flows) == format!("{:?}", old.flows),
            ),
            (
                "[control]",
                format!("{:?}", new.control) == format!("{:?}", old.control),
            ),
            (
                "drain_timeout_ms",
                new.drain_timeout_ms == old.drain_timeout_ms,
            ),
            (
                "drain_withdraw_ms",
                new.drain_withdraw_ms == old.drain_withdraw_ms,
            ),
        ] {
            if !same {
                summary.push(format!("{what} changed"));
            }
        }
        if summary.is_empty() {
            summary.push("nothing changed".into());
        }
        Ok(format!(
            "{}; {} groups, {} back-ends in rotation",
            summary.join(", "),
            new.group_configs().len(),
            slots.len()
        ))
    }

    /// Starts what speaks to the back-ends and reads the parked ring (once
    /// at start, and again if a takeover failed).
    fn start_machinery(self: &Arc<Self>) {
        if self.kit.is_none() {
            return;
        }
        self.shutting_down.store(false, Ordering::Relaxed);
        for (i, b) in self.backends().iter().enumerate() {
            if b.mode == BackendMode::Handoff && !b.removed() {
                self.spawn_channel(i);
            }
        }
        let mut tasks = self.lock_tasks();
        tasks.push(tokio::spawn(Arc::clone(self).parked_reader()));
        tasks.push(tokio::spawn(Arc::clone(self).timers()));
    }

    /// Stops it, closing the control channels (the back-ends send their
    /// reports to the successor's channels from then on).
    async fn stop_machinery(&self) {
        let tasks: Vec<_> = self.lock_tasks().drain(..).collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        for b in self.backends().iter() {
            *b.writer.lock().await = None;
            let mut st = b.st.lock().unwrap_or_else(|e| e.into_inner());
            st.up = false;
        }
    }

    /// Waits (up to `connect_timeout_ms`) until every back-end's channel is
    /// up: connections wait in the listen queue meanwhile (a restart or a
    /// takeover: a few milliseconds) rather than meeting a 503 for a
    /// channel still connecting.
    async fn wait_channels(&self) {
        if self.kit.is_none() {
            return;
        }
        let deadline =
            tokio::time::Instant::now() + ms(self.routing().cfg.control.connect_timeout_ms);
        loop {
            let up = self.channel_up.notified();
            tokio::pin!(up);
            up.as_mut().enable();
            if self.ready() {
                return;
            }
            tokio::select! {
                _ = up => {}
                _ = tokio::time::sleep_until(deadline) => {
                    warn!("not every back-end's control channel is up; serving with those that are");
                    return;
                }
            }
        }
    }

    /// A back-end removed by a reload whose handed-off flows are all done.
    fn gone(&self, i: BackendId, b: &Backend) -> bool {
        b.removed() && self.lock_engine().flows_on(i) == 0
    }

    /// Starts the tasks that keep back-end `i`'s control channel (once the
    /// key is loaded).
    fn spawn_channel(self: &Arc<Self>, i: BackendId) {
        let Some(psk) = self.psk.get() else {
            return;
        };
        let mut tasks = self.lock_tasks();
        tasks.push(tokio::spawn(Arc::clone(self).control_loop(i, psk.clone())));
        tasks.push(tokio::spawn(Arc::clone(self).writer(i)));
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<tokio::task::JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        Arc::clone(&self.backends.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn backend(&self, i: BackendId) -> Option<Arc<Backend>> {
        self.backends().get(i).cloned()
    }

    fn routing(&self) -> Arc<Routing> {
        Arc::clone(&self.routing.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The back-end's MAC as the kernel's neighbour table has it now.
    fn neighbor_mac(&self, b: &Backend) -> Option<[u8; 6]> {
        baton_sys::iface::neighbor_mac(*b.control?.ip(), &self.cfg.interface)
            .ok()
            .flatten()
    }

    /// Re-reads the back-end's MAC: a NIC failover on the back-end keeps
    /// the channel's TCP connection but moves its address. New handoffs use
    /// the new MAC; a missing neighbour entry (being re-resolved) keeps the
    /// old one.
    fn refresh_mac(&self, b: &Backend) {
        let Some(mac) = self.neighbor_mac(b) else {
            return;
        };
        let mut st = b.st.lock().unwrap_or_else(|e| e.into_inner());
        if st.mac != Some(mac) {
            info!(backend = %b.name, old = ?st.mac, new = ?mac, "back-end MAC changed");
            st.mac = Some(mac);
        }
    }

    async fn read_channel(
        &self,
        i: BackendId,
        b: &Backend,
        reader: &mut control::FrameReader,
        timers: &crate::config::ControlTimers,
    ) -> String {
        let mut heartbeat = tokio::time::interval(ms(timers.heartbeat_ms));
        let mut last_heard = Instant::now();
        let mut nonce = 0u64;
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > ms(timers.dead_after_ms) {
                        return "no heartbeat".into();
                    }
                    if self.gone(i, b) {
                        return "removed from the configuration, no flow left".into();
                    }
                    nonce += 1;
                    // Bounded (see `send`), so a stuck channel cannot keep
                    // this loop from reading for long.
                    if let Err(e) = self.send(b, Frame::Ping { nonce }).await {
                        return format!("sending heartbeat: {e}");
                    }
                    self.refresh_mac(b);
                }
                r = reader.next() => {
                    let frame = match r {
                        Ok(Some(f)) => f,
                        Ok(None) => return "closed by the back-end".into(),
                        Err(e) => return format!("{e:#}"),
                    };
                    last_heard = Instant::now();
                    // Every frame this read brought goes to the engine in one
                    // drive: one lock round and one write for all their effects.
                    let mut handoff = Vec::new();
                    let mut next = Some(frame);
                    while let Some(frame) = next {
                        match frame.into_front() {
                            Ok(Incoming::Handoff(f)) => handoff.push(f),
                            Ok(Incoming::Link(l)) => self.link_frame(b, l),
                            Err(e) => return format!("{e}"),
                        }
                        next = match reader.buffered() {
                            Ok(f) => f,
                            Err(e) => return format!("{e:#}"),
                        };
                    }
                    if !handoff.is_empty() {
                        self.handoff_frames(i, handoff).await;
                    }
                }
            }
        }
    }

    async fn handoff_frames(&self, i: BackendId, frames: Vec<ToFront>) {
        let Some(kit) = self.kit.as_ref() else {
            return;
        };
        let mirrors = frames
            .iter()
            .filter(|f| {
                matches!(
                    f,
                    ToFront::Mirror { .. } | ToFront::Unmirror { .. } | ToFront::Mirroring { .. }
                )
            })
            .count();
        self.counters.mirror.frames_in.add(mirrors as u64);
        let fx = self.drive(kit, None, |e, now| {
            for f in frames {
                e.handle_frame(now, i, f);
            }
            Feed::Nothing
        });
        self.apply(fx).await;
    }

    fn link_frame(&self, b: &Backend, frame: Link) {
        match frame {
            Link::Load(l) => {
                let mut st = b.st.lock().unwrap_or_else(|e| e.into_inner());
                st.reported_load = l.active;
                st.handed_since_report = 0;
                st.closed_since_report = 0;
            }
            Link::Goodbye { reason } => {
                info!(backend = %b.name, %reason, "back-end is draining");
                b.st.lock().unwrap_or_else(|e| e.into_inner()).draining = true;
            }
            // Back-ends do not ping; the channel's liveness is ours to probe.
            Link::Pong { .. } | Link::Ping { .. } => {}
        }
    }

    /// Every back-end that hands off has its channel up (relay targets
    /// count as ready: their health is learnt from connecting), and some
    /// back-end can serve at all (the lab's readiness check).
    pub fn ready(&self) -> bool {
        let mut usable = false;
        let all = self
            .backends()
            .iter()
            .filter(|b| !b.removed())
            .all(|b| match self.route_of(b) {
                Route::Handoff => {
                    usable = true;
                    let st = b.st.lock().unwrap_or_else(|e| e.into_inner());
                    st.up && st.mac.is_some()
                }
                Route::Relay(_) => {
                    usable = true;
                    true
                }
                Route::Unusable => true,
            });
        all && usable
    }

    /// Whether this front should be announced (`GET /serving`): not
    /// stopping, not drained by `POST /drain`, and some back-end usable (a
    /// handoff back-end with its channel up, or a relay target not paused
    /// after a failed connect). `/ready` is stricter: every channel up.
    pub fn serving(&self) -> std::result::Result<(), NotServing> {
        if self.stopping.load(Ordering::Relaxed) || self.shutting_down.load(Ordering::Relaxed) {
            return Err(NotServing::Stopping);
        }
        if self.admin_drained.load(Ordering::Relaxed) {
            return Err(NotServing::Draining);
        }
        let usable = self.backends().iter().filter(|b| !b.removed()).any(|b| {
            // Before the state's lock: `route_of` takes the relay address's.
            let route = self.route_of(b);
            let st = b.st.lock().unwrap_or_else(|e| e.into_inner());
            match route {
                Route::Handoff => st.up && st.mac.is_some() && !st.draining,
                Route::Relay(_) => st.paused_until.is_none_or(|t| t <= Instant::now()),
                Route::Unusable => false,
            }
        });
        if usable {
            Ok(())
        } else {
            Err(NotServing::NoBackend)
        }
    }

    /// `POST /drain` (`true`) or `POST /resume` (`false`): whether this
    /// front asks to be withdrawn. It serves whatever reaches it either
    /// way. Returns whether that changed (both are idempotent).
    pub fn set_drained(&self, drained: bool) -> bool {
        let was = self.admin_drained.swap(drained, Ordering::Relaxed);
        if was != drained {
            info!(
                drained,
                "{}",
                if drained {
                    "drained by the admin endpoint: /serving says 503 (still serving)"
                } else {
                    "resumed by the admin endpoint"
                }
            );
        }
        was != drained
    }

    /// A snapshot for `/stats`.
    pub fn snapshot(&self) -> FrontStats {
        let c = &self.counters;
        let bpf = self
            .kit
            .as_ref()
            .and_then(|k| k.lock_forwarder().stats().ok());
        let bpf_program_id = self
            .kit
            .as_ref()
            .and_then(|k| k.lock_forwarder().program_id().ok());
        // As the program has it (read back from its map), not as configured.
        let unknown_flows = self
            .kit
            .as_ref()
            .and_then(|k| k.lock_forwarder().guard().ok())
            .map(|g| match g {
                Some(_) => UnknownFlows::Drop.as_str(),
                None => UnknownFlows::Pass.as_str(),
            });
        let entries = self.kit.as_ref().map_or(0, |k| {
            k.lock_forwarder().entries().map(|e| e.len()).unwrap_or(0)
        });
        let reloads = {
            let r = self.reloads.lock().unwrap_or_else(|e| e.into_inner());
            let last = r.last.clone().map(|l| match l {
                Ok(s) => format!("ok: {s}"),
                Err(e) => format!("refused: {e}"),
            });
            (r.ok, r.failed, r.last_ok_unix, last)
        };
        let pin_dir = self.kit.as_ref().and_then(|k| {
            k.lock_forwarder()
                .pin_dir()
                .map(|p| p.display().to_string())
        });
        // One lock at a time: guards taken inside the struct literal below
        // would all live until its end (and the flows lock is not reentrant).
        let (flows_tracked, flows_parked, flows_mirrored) = {
            let e = self.lock_engine();
            (e.flows(), e.parked(), e.mirrored())
        };
        let (kept_frames, parked_malformed) = self.kit.as_ref().map_or((0, 0), |k| {
            let store = k.lock_parked();
            let kept: usize = store.kept.values().map(Vec::len).sum();
            (kept, store.ring.malformed())
        });
        let upstream = self.upstreams.stats();
        FrontStats {
            uptime_s: self.started.elapsed().as_secs_f64(),
            serving: self.serving().is_ok(),
            admin_drained: self.admin_drained.load(Ordering::Relaxed),
            handoff: self.kit.is_some(),
            relayed: c.relayed.get(),
            relay_fallbacks: c.relay_fallbacks.get(),
            relay_failures: c.relay_failures.get(),
            relay_idle_timeouts: c.relay_idle_timeouts.get(),
            tls: self.cfg.tls.as_ref().map(|t| TlsStats {
                port: t.port,
                accepted: c.tls_accepted.get(),
                handshakes: c.tls_handshakes.get(),
                resumed: c.tls_resumed.get(),
                handshake_failures: c.tls_handshake_failures.get(),
                plain_http: c.tls_plain_http.get(),
                misdirected: c.tls_misdirected.get(),
                handoffs: c.tls_handoffs.get(),
                secrets_held: self.server_tls().map_or(0, |t| t.secrets_held()),
            }),
            relay_active: self.relay_active(),
            relay_bytes_up: c.relay_bytes_up.get(),
            relay_bytes_down: c.relay_bytes_down.get(),
            relay_upstream_opened: upstream.opened,
            relay_upstream_reused: upstream.reused,
            relay_upstream_retried: upstream.retried,
            relay_upstream_idle: upstream.idle,
            accepted: c.accepted.get(),
            handoffs_ok: c.handoffs_ok.get(),
            handoffs_failed: c.handoffs_failed.get(),
            bad_requests: c.bad_requests.get(),
            head_timeouts: c.head_timeouts.get(),
            no_backend: c.no_backend.get(),
            flow_table_full: c.flow_table_full.get(),
            client_gone: c.client_gone.get(),
            shed: c.shed.get(),
            frames_resent: c.frames_resent.get(),
            frames_superseded: c.frames_superseded.get(),
            frames_dropped: c.frames_dropped.get(),
            entries_removed_closed: c.entries_removed_closed.get(),
            entries_removed_idle: c.entries_removed_idle.get(),
            entries_removed_orphaned: c.entries_removed_orphaned.get(),
            handoffs_reset: c.handoffs_reset.get(),
            stale_frames: c.stale_frames.get(),
            flows_adopted: c.flows_adopted.get(),
            mirror: MirrorStats {
                flows: flows_mirrored,
                mirrored: c.mirror.mirrored.get(),
                unmirrored: c.mirror.unmirrored.get(),
                frames_in: c.mirror.frames_in.get(),
                stale: c.mirror.stale.get(),
                steered: c.mirror.steered.get(),
                placements_learnt: c.mirror.placements_learnt.get(),
                placements_unreadable: c.mirror.placements_unreadable.get(),
                peers: c
                    .mirror
                    .peers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|(ip, p)| PeerFront {
                        front: ip.to_string(),
                        flows: p.flows,
                        last_heard_ms: u64::try_from(p.last.elapsed().as_millis())
                            .unwrap_or(u64::MAX),
                    })
                    .collect(),
            },
            reloads_ok: reloads.0,
            reloads_failed: reloads.1,
            last_reload_ok_unix: reloads.2,
            last_reload: reloads.3,
            pinned: pin_dir.is_some(),
            pin_dir,
            forwarding_entries: entries,
            flows_tracked,
            flows_parked,
            kept_frames,
            parked_malformed,
            bpf_forwarded: bpf.as_ref().map_or(0, |s| s.forwarded),
            bpf_parked: bpf.as_ref().map_or(0, |s| s.parked),
            bpf_park_lost: bpf.as_ref().map_or(0, |s| s.park_lost),
            bpf_syn_replaced: bpf.as_ref().map_or(0, |s| s.syn_replaced),
            bpf_errors: bpf.as_ref().map_or(0, |s| s.errors),
            unknown_flows,
            bpf_unknown_dropped: bpf.as_ref().map_or(0, |s| s.unknown_dropped),
            bpf_no_listener_dropped: bpf.as_ref().map_or(0, |s| s.no_listener_dropped),
            bpf_syncookie_passed: bpf.as_ref().map_or(0, |s| s.syncookie_passed),
            bpf_program_id,
            latency_us: Latency {
                dump: self.lat_dump.summary(),
                control_rtt: self.lat_rtt.summary(),
                restore: self.lat_restore.summary(),
                total: self.lat_total.summary(),
                to_send: self.lat_send.summary(),
            },
            backends: self
                .backends()
                .iter()
                .filter(|b| !b.removed() || b.st.lock().unwrap_or_else(|e| e.into_inner()).up)
                .map(|b| {
                    let route = self.route_of(b);
                    let st = b.st.lock().unwrap_or_else(|e| e.into_inner());
                    let paused = st.paused_until.is_some_and(|t| t > Instant::now());
                    BackendStats {
                        name: b.name.clone(),
                        mode: match b.mode {
                            BackendMode::Handoff => "handoff",
                            BackendMode::Relay => "relay",
                        },
                        control: b.control.map(|c| c.to_string()),
                        relay_address: b.relay_to().map(|a| a.to_string()),
                        removed: b.removed(),
                        up: match route {
                            Route::Handoff => st.up,
                            Route::Relay(_) => !paused,
                            Route::Unusable => false,
                        },
                        draining: st.draining,
                        weight: b.weight(),
                        load: st
                            .load()
                            .saturating_add(b.relay_active.load(Ordering::Relaxed)),
                        handoffs: b.handoffs.get(),
                        failures: b.failures.get(),
                        relayed: b.relayed.get(),
                        relay_failures: b.relay_failures.get(),
                        connects: st.connects,
                        last_error: st.last_error.clone(),
                    }
                })
                .collect(),
        }
    }

    /// Forgets latency samples (between benchmark phases).
    pub fn reset_latency(&self) {
        self.lat_dump.clear();
        self.lat_rtt.clear();
        self.lat_restore.clear();
        self.lat_total.clear();
        self.lat_send.clear();
    }
}

/// What the forwarder guards for `cfg`: the VIP's client ports (`port` and
/// `[tls] port`), unless `flows.unknown = "pass"`. Only those: the front's
/// own traffic on the NIC (control channels, admin, other services on the
/// VIP) never meets the guard.
fn guard_of(cfg: &FrontConfig) -> Option<VipGuard> {
    match cfg.flows.unknown {
        UnknownFlows::Pass => None,
        UnknownFlows::Drop => {
            let mut ports = vec![cfg.port];
            ports.extend(cfg.tls.as_ref().map(|t| t.port));
            Some(VipGuard {
                vip: cfg.vip,
                ports,
            })
        }
    }
}

/// Counts a relayed connection in its back-end's load while it lives.
struct ActiveRelay<'a>(&'a AtomicU32);

impl<'a> ActiveRelay<'a> {
    fn enter(n: &'a AtomicU32) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        ActiveRelay(n)
    }
}

impl Drop for ActiveRelay<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves `host:port` once, at start (IPv4 preferred: the front listens
/// on IPv4 only, and so do the lab's back-ends).
fn resolve(a: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = a
        .to_socket_addrs()
        .with_context(|| format!("resolving {a:?}"))?
        .collect();
    addrs
        .iter()
        .find(|s| s.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .with_context(|| format!("{a:?} resolves to no address"))
}

/// The HTTPS part of `/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct TlsStats {
    /// The HTTPS port on the VIP.
    pub port: u16,
    /// Connections accepted on it.
    pub accepted: u64,
    /// Handshakes that completed and delivered a request head.
    pub handshakes: u64,
    /// Of those, resumed sessions.
    pub resumed: u64,
    /// Handshakes that failed (bad client, no common version, suite or
    /// ALPN protocol; or the session could not be taken out of rustls).
    pub handshake_failures: u64,
    /// Plain HTTP sent to the HTTPS port (answered 400).
    pub plain_http: u64,
    /// Requests whose Host did not match their SNI (answered 421).
    pub misdirected: u64,
    /// TLS connections handed off with their session.
    pub handoffs: u64,
    /// TLS 1.3 traffic secrets held for handshakes in progress.
    pub secrets_held: usize,
}

/// Why a front asks not to be announced (`GET /serving` answers 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotServing {
    /// `POST /drain` (until `POST /resume`).
    Draining,
    /// SIGTERM or SIGINT: the front is stopping.
    Stopping,
    /// No back-end can take a connection.
    NoBackend,
}

impl NotServing {
    /// The reason as `/serving` says it.
    pub fn as_str(self) -> &'static str {
        match self {
            NotServing::Draining => "draining",
            NotServing::Stopping => "stopping",
            NotServing::NoBackend => "no back-end",
        }
    }
}

/// `/stats` of a front-end.
#[derive(Debug, Serialize)]
pub struct FrontStats {
    pub uptime_s: f64,
    /// What `GET /serving` says: whether the front asks to be announced.
    pub serving: bool,
    /// `POST /drain` is in force (until `POST /resume`).
    pub admin_drained: bool,
    /// Whether connections are handed off (false: every one is relayed,
    /// by configuration or for lack of privileges).
    pub handoff: bool,
    /// Connections relayed (to a relay back-end, or instead of a handoff).
    pub relayed: u64,
    /// Of those, handoffs that failed and were relayed instead.
    pub relay_fallbacks: u64,
    /// Connections that could not be relayed (connect refused or timed
    /// out): the client got 502 or 504.
    pub relay_failures: u64,
    /// Relayed connections closed for lack of traffic.
    pub relay_idle_timeouts: u64,
    /// HTTPS (with `[tls]` only).
    pub tls: Option<TlsStats>,
    /// Connections being relayed now.
    pub relay_active: u64,
    /// Bytes relayed from clients to back-ends (the request heads included).
    pub relay_bytes_up: u64,
    /// Bytes relayed from back-ends to clients.
    pub relay_bytes_down: u64,
    /// Back-end connections the relay opened.
    pub relay_upstream_opened: u64,
    /// Relayed requests sent on a kept back-end connection.
    pub relay_upstream_reused: u64,
    /// Relayed requests sent again on a new connection because the kept
    /// one had been closed by the back-end.
    pub relay_upstream_retried: u64,
    /// Idle back-end connections kept now.
    pub relay_upstream_idle: u64,
    pub accepted: u64,
    pub handoffs_ok: u64,
    pub handoffs_failed: u64,
    pub bad_requests: u64,
    pub head_timeouts: u64,
    pub no_backend: u64,
    /// Handoffs answered 503 because the forwarder's flow table was full.
    pub flow_table_full: u64,
    pub client_gone: u64,
    /// Connections answered 503 without being read because
    /// `limits.max_pending` connections were being read or handed off.
    pub shed: u64,
    pub frames_resent: u64,
    /// Kept pure ACKs not resent because a later frame of their flow
    /// carries the same acknowledgement (or a newer one).
    pub frames_superseded: u64,
    pub frames_dropped: u64,
    pub entries_removed_closed: u64,
    pub entries_removed_idle: u64,
    /// Entries of flows whose back-end's channel stayed down for
    /// `flows.orphan_timeout_ms`.
    pub entries_removed_orphaned: u64,
    /// Handoffs whose client was reset: the back-end did not answer within
    /// the handoff timeout, or its channel went down before it answered.
    pub handoffs_reset: u64,
    /// Frames about handoffs this front no longer tracks (late answers).
    pub stale_frames: u64,
    /// Flows a previous front process handed off, adopted from the pinned
    /// flow table at start.
    pub flows_adopted: u64,
    /// Flows other fronts handed off (every front steers every flow).
    pub mirror: MirrorStats,
    /// Configuration reloads that took effect, and those refused.
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Unix seconds of the last reload that took effect (or of the start).
    pub last_reload_ok_unix: u64,
    /// What the last reload did, or why it was refused.
    pub last_reload: Option<String>,
    /// Whether the forwarder's maps and link are pinned (flows outlive
    /// this process).
    pub pinned: bool,
    /// Where they are pinned.
    pub pin_dir: Option<String>,
    pub forwarding_entries: usize,
    pub flows_tracked: usize,
    /// Handoffs in progress (flows parked in the forwarder).
    pub flows_parked: usize,
    pub kept_frames: usize,
    /// Parked-ring records shorter than their header said (an ABI defect).
    pub parked_malformed: u64,
    pub bpf_forwarded: u64,
    pub bpf_parked: u64,
    pub bpf_park_lost: u64,
    /// Closing entries a new connection's SYN replaced.
    pub bpf_syn_replaced: u64,
    /// Helper failures and unknown actions in the program.
    pub bpf_errors: u64,
    /// `flows.unknown` in force ("drop" or "pass"), as the forwarder's map
    /// holds it; `None` when not handing off (no forwarder).
    pub unknown_flows: Option<&'static str>,
    /// Packets to the VIP that matched no entry and that no socket took
    /// (the kernel would have reset them): dropped, the client retransmits.
    pub bpf_unknown_dropped: u64,
    /// SYNs to the VIP while no listener ran (the kernel would have
    /// refused them): dropped, the client retries.
    pub bpf_no_listener_dropped: u64,
    /// ACKs to the VIP that the listener took by their SYN cookie.
    pub bpf_syncookie_passed: u64,
    /// The forwarder's kernel id (as `bpftool prog show id N`); `None`
    /// when not handing off.
    pub bpf_program_id: Option<u32>,
    pub latency_us: Latency,
    pub backends: Vec<BackendStats>,
}

/// What the back-ends told this front of other fronts' flows (`/stats`
/// `mirror`).
#[derive(Debug, Serialize)]
pub struct MirrorStats {
    /// Mirrored flows tracked now (with an entry or waiting for one).
    pub flows: usize,
    /// Mirrored flows learnt (`Mirror`, or a listing after a channel or
    /// this front started).
    pub mirrored: u64,
    /// Mirrored flows that ended (`Unmirror`, or left out of a listing).
    pub unmirrored: u64,
    /// `Mirror`, `Unmirror` and `Mirroring` frames read.
    pub frames_in: u64,
    /// Entries of those frames about flows that did not match (repeats,
    /// or already ended): ignored. Also counted in `stale_frames`.
    pub stale: u64,
    /// Forwarding entries written (or written again) for mirrored flows.
    pub steered: u64,
    /// Placements of a locality policy (LARD, LARD/R) learnt from the
    /// hints of mirrored flows.
    pub placements_learnt: u64,
    /// Hints of mirrored flows no policy here reads (a front configured
    /// differently).
    pub placements_unreadable: u64,
    /// The other fronts this one heard of through the back-ends.
    pub peers: Vec<PeerFront>,
}

/// Another front, as the back-ends report its flows.
#[derive(Debug, Serialize)]
pub struct PeerFront {
    /// Its address, as the back-ends see its control channels.
    pub front: String,
    /// Flows it handed off that this front learnt.
    pub flows: u64,
    /// Since the last one.
    pub last_heard_ms: u64,
}

/// Handoff latency, front side.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// TCP_REPAIR on + state reads.
    pub dump: Summary,
    /// `Handoff` written to `Live` handled (includes the back-end's restore).
    pub control_rtt: Summary,
    /// The back-end's restore, as it reported it in `Live`.
    pub restore: Summary,
    /// Request head complete to the flow forwarding: the front's whole handoff.
    pub total: Summary,
    /// Request head complete to `Handoff` sent (pick, park, dump, send).
    pub to_send: Summary,
}

/// One back-end in `/stats`.
#[derive(Debug, Serialize)]
pub struct BackendStats {
    pub name: String,
    /// "handoff" or "relay".
    pub mode: &'static str,
    /// The control address (handoff back-ends).
    pub control: Option<String>,
    /// Where relayed connections go (`address` or `relay_address`).
    pub relay_address: Option<String>,
    /// Removed by a reload: takes no new connection; listed while its
    /// channel stays up for the flows it still serves.
    pub removed: bool,
    pub up: bool,
    pub draining: bool,
    /// Relative capacity (`weight` in the configuration).
    pub weight: u32,
    pub load: u32,
    pub handoffs: u64,
    /// Handoffs that failed.
    pub failures: u64,
    /// Connections relayed to it.
    pub relayed: u64,
    /// Relay connects to it that failed.
    pub relay_failures: u64,
    pub connects: u64,
    pub last_error: Option<String>,
}

/// The client socket of the handoff a `drive` starts: only its own task
/// can dump it.
struct Local<'a> {
    fd: std::os::fd::BorrowedFd<'a>,
    already_read: &'a [u8],
    /// The TLS session to carry (encoded `baton_tls::Carried`); empty for
    /// plain HTTP.
    tls: bytes::Bytes,
    tx: Option<oneshot::Sender<Outcome>>,
}

/// A result the engine must hear, from an input or an action.
#[derive(Debug)]
enum Feed {
    Nothing,
    Start(u64),
    Parked(u64, std::result::Result<(), ParkFailure>),
    Dumped(u64, std::result::Result<Dump, DumpFailure>),
    ForwardFailed(u64),
    Removal(u64, Quiet),
    Idle(Vec<FlowKey>),
}

/// What a `drive` leaves to do with `.await`.
#[derive(Debug, Default)]
struct Effects {
    /// Back-ends with frames queued.
    flush: std::collections::BTreeSet<BackendId>,
    /// Back-ends whose channel to drop (stuck).
    drop: Vec<BackendId>,
}

fn drain_engine(
    e: &mut FrontEngine,
    queue: &mut std::collections::VecDeque<FrontAction>,
    events: &mut Vec<FrontEvent>,
) {
    queue.extend(std::iter::from_fn(|| e.poll_action()));
    events.extend(std::iter::from_fn(|| e.poll_event()));
}

enum HeadFailure {
    Closed,
    Bad(u16, String),
}

async fn read_head(
    stream: &mut Conn,
    buf: &mut Vec<u8>,
    limits: &HeadLimits,
) -> std::result::Result<RequestHead, HeadFailure> {
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| HeadFailure::Closed)?;
        if n == 0 {
            return Err(HeadFailure::Closed);
        }
        let new = chunk.get(..n).unwrap_or_default();
        buf.extend_from_slice(new);
        // A head ends with a newline, so one can only be complete (or a
        // line wrong) once a newline arrived: re-parsing on every byte of a
        // head sent a byte per segment would cost quadratic time. Past the
        // size limit the parser answers "too large" either way.
        if !new.contains(&b'\n') && buf.len() < limits.max_bytes {
            continue;
        }
        match parse_request_head(buf, limits) {
            Ok(Some(h)) => return Ok(h),
            Ok(None) => continue,
            Err(e) => return Err(HeadFailure::Bad(e.status(), e.to_string())),
        }
    }
}

/// Registers a client listener with the event loop, after checking it is
/// bound to `addr`.
fn register(
    listener: std::net::TcpListener,
    addr: SocketAddr,
) -> Result<AsyncFd<std::net::TcpListener>> {
    let got = listener.local_addr().context("the listener")?;
    ensure!(
        got == addr,
        "the listener is bound to {got}, this configuration serves {addr}"
    );
    listener.set_nonblocking(true)?;
    // Accepted sockets stay plain until they have to wait (see `Conn`).
    // `with_interest` is deprecated as unsound without I/O safety (a
    // borrowed descriptor could be closed while registered); this one
    // is owned by the `AsyncFd`, and this crate has no `unsafe` for
    // `register_with_interest`.
    #[allow(deprecated)]
    let l = AsyncFd::with_interest(listener, tokio::io::Interest::READABLE)
        .context("registering the listener")?;
    Ok(l)
}

/// [`accept`] on a listener that may not exist (then never ready).
async fn accept_opt(
    listener: Option<&AsyncFd<std::net::TcpListener>>,
) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    match listener {
        Some(l) => accept(l).await,
        None => std::future::pending().await,
    }
}

/// The next connection on the listener, not yet registered with the
/// event loop (see [`Conn`]).
async fn accept(
    listener: &AsyncFd<std::net::TcpListener>,
) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    loop {
        let mut ready = listener.readable().await?;
        match ready.try_io(|l| baton_sys::accept::accept(l.get_ref().as_fd()).map_err(|e| e.source))
        {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

/// A client connection. Accepted plain: the request head is usually queued
/// already (the listener defers accepting until the first bytes arrived),
/// and a handed-off connection is never waited on again, so registering
/// it with the event loop (and unregistering it at close) would be two
/// system calls per connection for nothing. It is registered the first
/// time it has to wait: a head in several segments, an answer, a relay.
#[derive(Debug)]
enum Conn {
    Plain(std::net::TcpStream),
    Polled(TcpStream),
    /// Only while switching from `Plain` to `Polled` failed.
    Gone,
}

impl Conn {
    fn polled(&mut self) -> std::io::Result<&mut TcpStream> {
        if let Conn::Plain(_) = self {
            let Conn::Plain(s) = std::mem::replace(self, Conn::Gone) else {
                unreachable!("checked above")
            };
            match TcpStream::from_std(s) {
                Ok(s) => *self = Conn::Polled(s),
                Err(e) => {
                    // Out of memory or descriptors for the poller: the
                    // connection closes unanswered, as a failed accept would.
                    warn!(error = %e, "registering a client connection failed");
                    return Err(e);
                }
            }
        }
        match self {
            Conn::Polled(s) => Ok(s),
            Conn::Plain(_) | Conn::Gone => Err(std::io::Error::other("connection lost")),
        }
    }

    fn into_polled(mut self) -> std::io::Result<TcpStream> {
        self.polled()?;
        match self {
            Conn::Polled(s) => Ok(s),
            Conn::Plain(_) | Conn::Gone => Err(std::io::Error::other("connection lost")),
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Conn::Plain(s) = self {
            match std::io::Read::read(&mut &*s, buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                r => return r,
            }
        }
        self.polled()?.read(buf).await
    }

    /// Answers `status` itself and closes gracefully (see [`answer_on`]).
    /// Callers give their `max_pending` slot back first: a lingering
    /// connection is not being read or handed off.
    async fn answer(mut self, status: u16) {
        if let Ok(s) = self.polled() {
            answer_on(s, status).await;
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Conn::Plain(s) => s.local_addr(),
            Conn::Polled(s) => s.local_addr(),
            Conn::Gone => Err(std::io::Error::other("connection lost")),
        }
    }

    /// The descriptor (`None` only after a failed registration).
    fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match self {
            Conn::Plain(s) => Some(s.as_fd()),
            Conn::Polled(s) => Some(s.as_fd()),
            Conn::Gone => None,
        }
    }
}

/// The client side of a TLS session that left rustls: the record layer
/// over the socket, primed with the ciphertext read already.
fn tls_stream<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: S,
    carried: &baton_tls::Carried,
    ciphertext: &[u8],
) -> std::result::Result<baton_tls::TlsStream<S>, baton_tls::TlsError> {
    let layer = baton_tls::RecordLayer::new(&carried.state)?;
    Ok(baton_tls::TlsStream::with_ciphertext(
        io,
        layer,
        bytes::Bytes::new(),
        bytes::Bytes::copy_from_slice(ciphertext),
    ))
}

/// Answers `status` on a TLS connection whose session left rustls, with
/// close_notify.
async fn answer_tls(io: TcpStream, carried: &baton_tls::Carried, ciphertext: &[u8], status: u16) {
    // Lingering, as `answer_on`: the shutdown reads out what the client
    // still sends before closing.
    if let Ok(mut s) = tls_stream(baton_serve::Lingering::new(io), carried, ciphertext) {
        if s.write_all(&plain_error(status)).await.is_ok() {
            let _ = s.shutdown().await;
        }
    }
}

async fn reject(stream: Conn, status: u16) {
    stream.answer(status).await;
}

/// Writes the front's own answer `status` and closes gracefully: ends the
/// sending direction, then reads and discards what the client still sends
/// for a while (`baton_serve::Lingering`, as nginx's lingering close).
/// Closing with unread input sends a reset, and the client's kernel may
/// then drop the answer unread.
async fn answer_on(stream: &mut TcpStream, status: u16) {
    let mut s = baton_serve::Lingering::new(stream);
    if s.write_all(&plain_error(status)).await.is_ok() {
        let _ = s.shutdown().await;
    }
}

/// What a client is told when the front answers itself: the status and its
/// standard reason phrase only. The detail goes to the log; it would tell a
/// client about back-ends and internals.
fn plain_error(status: u16) -> Vec<u8> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    error_response(status, reason)
}

/// The client listener. When handing off, bound to the front's interface
/// (SO_BINDTODEVICE): the forwarder only sees that NIC, so a connection
/// arriving on another one could be parked but its packets never steered.
fn listen_on(addr: SocketAddr, interface: Option<&str>) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // As TcpListener::bind does: a restarted front must not wait for TIME_WAIT.
    socket.set_reuseaddr(true)?;
    if let Some(interface) = interface {
        socket.bind_device(Some(interface.as_bytes()))?;
    }
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    // As nginx's `listen ... deferred`: the kernel hands a connection over
    // only once its first bytes arrived, so accepting and reading the request
    // cost one wake-up, not two. A client that sends nothing is accepted
    // after about this many seconds anyway, and then meets head_timeout.
    baton_sys::sockopt::set_int(
        listener.as_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
        DEFER_ACCEPT_SECS,
        "setsockopt(TCP_DEFER_ACCEPT)",
    )
    .map_err(|e| e.source)?;
    Ok(listener)
}

/// The upgrade socket and the task that vets successors on it (a task of
/// its own: vetting a peer must not be cancelled by the accept loop).
struct UpgradeDoor {
    server: Arc<crate::upgrade::Server>,
    rx: tokio::sync::mpsc::Receiver<crate::upgrade::Successor>,
    task: tokio::task::JoinHandle<()>,
}

impl UpgradeDoor {
    fn open(path: &std::path::Path) -> Result<Self> {
        let server = Arc::new(
            crate::upgrade::Server::bind(path).context("the upgrade socket (upgrade_socket)")?,
        );
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn({
            let server = Arc::clone(&server);
            async move {
                let s = server.next().await;
                let _ = tx.send(s).await;
            }
        });
        Ok(UpgradeDoor { server, rx, task })
    }

    /// Stops vetting and removes the path (a successor binds it next).
    fn close(&self) {
        self.task.abort();
        self.server.unlink();
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `TCP_DEFER_ACCEPT`'s wait for a silent client's first bytes.
const DEFER_ACCEPT_SECS: libc::c_int = 5;

/// The front's `/metrics` (see [`crate::metrics`]): read from
/// [`Front::snapshot`] at each scrape, plus the handoff step histograms.
#[derive(Debug)]
pub struct Metrics(pub Arc<Front>);

impl prometheus_client::collector::Collector for Metrics {
    fn encode(&self, mut enc: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use crate::metrics::{as_gauge, counter, counters_by, gauge, gauges_by, histogram};
        let f = &self.0;
        let s = f.snapshot();
        let e = &mut enc;
        gauge(
            e,
            "baton_front_serving",
            "Whether the front asks to be announced (GET /serving answers 200)",
            i64::from(s.serving),
        )?;
        gauge(
            e,
            "baton_front_admin_drained",
            "Whether POST /drain is in force (until POST /resume)",
            i64::from(s.admin_drained),
        )?;
        counter(
            e,
            "baton_front_connections_accepted",
            "Client connections accepted",
            s.accepted,
        )?;
        counter(
            e,
            "baton_front_connections_shed",
            "Connections answered 503 at once because limits.max_pending were pending",
            s.shed,
        )?;
        counters_by(
            e,
            "baton_front_handoffs",
            "Handoffs by result (failed includes reset)",
            "result",
            &[("ok", s.handoffs_ok), ("failed", s.handoffs_failed)],
        )?;
        counter(
            e,
            "baton_front_handoffs_reset",
            "Handed-off clients reset: no Live in time, or the channel dropped first",
            s.handoffs_reset,
        )?;
        counters_by(
            e,
            "baton_front_requests_answered_by_front",
            "Requests the front answered itself, by cause",
            "cause",
            &[
                ("bad_request", s.bad_requests),
                ("head_timeout", s.head_timeouts),
                ("no_backend", s.no_backend),
                ("flow_table_full", s.flow_table_full),
            ],
        )?;
        counter(
            e,
            "baton_front_clients_gone",
            "Clients that closed before their head was read",
            s.client_gone,
        )?;
        counter(
            e,
            "baton_front_stale_frames",
            "Control frames about handoffs already settled",
            s.stale_frames,
        )?;
        counters_by(
            e,
            "baton_front_config_reloads",
            "Configuration reloads, by result",
            "result",
            &[("ok", s.reloads_ok), ("failed", s.reloads_failed)],
        )?;
        gauge(
            e,
            "baton_front_config_last_reload_success_timestamp_seconds",
            "When the configuration in force was loaded (Unix time)",
            i64::try_from(s.last_reload_ok_unix).unwrap_or(i64::MAX),
        )?;
        counter(
            e,
            "baton_front_flows_adopted",
            "Flows adopted from the pinned flow table at start (a restart or upgrade)",
            s.flows_adopted,
        )?;
        gauge(
            e,
            "baton_front_mirrored_flows",
            "Flows other fronts handed off that this front tracks now",
            as_gauge(s.mirror.flows),
        )?;
        counters_by(
            e,
            "baton_front_mirror_flows",
            "Flows other fronts handed off, by what this front heard",
            "event",
            &[
                ("mirrored", s.mirror.mirrored),
                ("unmirrored", s.mirror.unmirrored),
                ("stale", s.mirror.stale),
                ("steered", s.mirror.steered),
            ],
        )?;
        counter(
            e,
            "baton_front_mirror_frames",
            "Mirror, Unmirror and Mirroring frames read",
            s.mirror.frames_in,
        )?;
        counters_by(
            e,
            "baton_front_placements",
            "Locality-policy placements in the hints of mirrored flows, by fate",
            "result",
            &[
                ("learnt", s.mirror.placements_learnt),
                ("unreadable", s.mirror.placements_unreadable),
            ],
        )?;
        let peers: Vec<(&str, u64)> = s
            .mirror
            .peers
            .iter()
            .map(|p| (p.front.as_str(), p.flows))
            .collect();
        counters_by(
            e,
            "baton_front_peer_flows",
            "Flows each other front handed off, as the back-ends told this one",
            "peer",
            &peers,
        )?;
        gauge(
            e,
            "baton_front_pinned",
            "Whether the forwarder's flow table and link are pinned (flows outlive the process)",
            i64::from(s.pinned),
        )?;
        counters_by(
            e,
            "baton_front_kept_frames",
            "Client frames kept while their flow was parked, by fate",
            "fate",
            &[
                ("resent", s.frames_resent),
                ("superseded", s.frames_superseded),
                ("dropped", s.frames_dropped),
            ],
        )?;
        gauge(
            e,
            "baton_front_kept_frames_held",
            "Client frames held now for parked flows",
            as_gauge(s.kept_frames),
        )?;
        gauge(
            e,
            "baton_front_flows_parked",
            "Flows parked now (handoff in progress)",
            as_gauge(s.flows_parked),
        )?;
        gauge(
            e,
            "baton_front_flows_tracked",
            "Flows the handoff engine tracks now",
            as_gauge(s.flows_tracked),
        )?;
        gauge(
            e,
            "baton_front_forwarding_entries",
            "Entries in the forwarder's flow table",
            as_gauge(s.forwarding_entries),
        )?;
        gauge(
            e,
            "baton_front_forwarding_entries_capacity",
            "Size of the forwarder's flow table",
            i64::from(baton_bpf::MAX_FLOWS),
        )?;
        counters_by(
            e,
            "baton_front_forwarding_entries_removed",
            "Forwarding entries removed, by cause",
            "cause",
            &[
                ("closed", s.entries_removed_closed),
                ("idle", s.entries_removed_idle),
                ("orphaned", s.entries_removed_orphaned),
            ],
        )?;
        counters_by(
            e,
            "baton_front_bpf_packets",
            "Client packets by the forwarder's verdict",
            "verdict",
            &[
                ("forwarded", s.bpf_forwarded),
                ("parked", s.bpf_parked),
                ("park_lost", s.bpf_park_lost),
                ("syn_replaced", s.bpf_syn_replaced),
                ("error", s.bpf_errors),
                ("unknown_dropped", s.bpf_unknown_dropped),
                ("no_listener_dropped", s.bpf_no_listener_dropped),
                ("syncookie_passed", s.bpf_syncookie_passed),
            ],
        )?;
        counter(
            e,
            "baton_front_parked_malformed",
            "Parked records that could not be read",
            s.parked_malformed,
        )?;
        counter(e, "baton_front_relayed", "Connections relayed", s.relayed)?;
        counter(
            e,
            "baton_front_relay_fallbacks",
            "Failed handoffs relayed instead",
            s.relay_fallbacks,
        )?;
        counter(
            e,
            "baton_front_relay_failures",
            "Relays that could not reach their back-end",
            s.relay_failures,
        )?;
        counter(
            e,
            "baton_front_relay_idle_timeouts",
            "Relays ended by the idle timeout",
            s.relay_idle_timeouts,
        )?;
        if let Some(t) = &s.tls {
            counters_by(
                e,
                "baton_front_tls_connections",
                "HTTPS connections, by what became of them",
                "result",
                &[
                    ("accepted", t.accepted),
                    ("handshake", t.handshakes),
                    ("resumed", t.resumed),
                    ("handshake_failed", t.handshake_failures),
                    ("plain_http", t.plain_http),
                    ("misdirected", t.misdirected),
                    ("handed_off", t.handoffs),
                ],
            )?;
        }
        gauge(
            e,
            "baton_front_relay_active",
            "Connections being relayed now",
            as_gauge(s.relay_active),
        )?;
        counters_by(
            e,
            "baton_front_relay_bytes",
            "Bytes relayed, by direction",
            "direction",
            &[("up", s.relay_bytes_up), ("down", s.relay_bytes_down)],
        )?;
        counters_by(
            e,
            "baton_front_relay_upstream_connections",
            "Relay connections to back-ends, by event",
            "event",
            &[
                ("opened", s.relay_upstream_opened),
                ("reused", s.relay_upstream_reused),
                ("retried", s.relay_upstream_retried),
                ("idle_closed", s.relay_upstream_idle),
            ],
        )?;
        let per = |v: fn(&BackendStats) -> u64| -> Vec<(String, u64)> {
            s.backends.iter().map(|b| (b.name.clone(), v(b))).collect()
        };
        let per_gauge = |v: fn(&BackendStats) -> i64| -> Vec<(String, i64)> {
            s.backends.iter().map(|b| (b.name.clone(), v(b))).collect()
        };
        counters_by(
            e,
            "baton_front_backend_handoffs",
            "Handoffs to each back-end",
            "backend",
            &per(|b| b.handoffs),
        )?;
        counters_by(
            e,
            "baton_front_backend_failures",
            "Failed handoffs to each back-end",
            "backend",
            &per(|b| b.failures),
        )?;
        counters_by(
            e,
            "baton_front_backend_relayed",
            "Connections relayed to each back-end",
            "backend",
            &per(|b| b.relayed),
        )?;
        counters_by(
            e,
            "baton_front_backend_relay_failures",
            "Relays that could not reach each back-end",
            "backend",
            &per(|b| b.relay_failures),
        )?;
        counters_by(
            e,
            "baton_front_backend_control_connects",
            "Control channels established to each back-end",
            "backend",
            &per(|b| b.connects),
        )?;
        gauges_by(
            e,
            "baton_front_backend_up",
            "Whether each back-end's control channel is up (1) or not (0)",
            "backend",
            &per_gauge(|b| i64::from(b.up)),
        )?;
        gauges_by(
            e,
            "baton_front_backend_draining",
            "Whether each back-end is draining",
            "backend",
            &per_gauge(|b| i64::from(b.draining)),
        )?;
        gauges_by(
            e,
            "baton_front_backend_load",
            "Each back-end's load as the front estimates it",
            "backend",
            &per_gauge(|b| i64::from(b.load)),
        )?;
        for (name, help, h) in [
            (
                "baton_front_handoff_dump_seconds",
                "Dump of a connection's TCP state",
                &f.lat_dump,
            ),
            (
                "baton_front_handoff_restore_seconds",
                "Restore on the back-end, as it reports",
                &f.lat_restore,
            ),
            (
                "baton_front_handoff_live_seconds",
                "Handoff written to Live read (restore and first answer included)",
                &f.lat_rtt,
            ),
            (
                "baton_front_handoff_queue_seconds",
                "Request head read to Handoff queued",
                &f.lat_send,
            ),
            (
                "baton_front_handoff_seconds",
                "Request head read to forwarding",
                &f.lat_total,
            ),
        ] {
            histogram(e, name, help, h.cumulative())?;
        }
        gauge(
            e,
            "baton_front_uptime_seconds",
            "Seconds since the front started",
            s.uptime_s as i64,
        )
    }
}
