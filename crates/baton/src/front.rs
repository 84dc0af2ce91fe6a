//! `baton front`: accepts clients on VIP:port, reads each request head, picks
//! a back-end and hands the TCP connection to it (the upper module, UTCP);
//! drives the BPF forwarder (the bottom module, BTCP) that steers the
//! client's later packets to the back-end.
//!
//! One handoff (see `shared/DESIGN.md`): PARK the flow in the forwarder, dump
//! the socket with TCP_REPAIR, send `Handoff`, wait for `Ready`, switch the
//! entry to FORWARD, deliver the frames kept while parked, close the socket in
//! repair mode (nothing reaches the client), send `Go`. Any failure before
//! `Ready` puts the socket back into normal mode and answers 502/503 on it,
//! or relays the connection if the back-end has a `relay_address`.
//!
//! Relay mode (`crate::relay`): the same head reading, routing and policy,
//! but the front proxies the bytes to a back-end's plain HTTP address. For
//! `mode = "relay"` back-ends, as the fallback of a failed handoff, and for
//! everything when `handoff = false` or when the front lacks the privileges
//! for TCP_REPAIR and BPF (it then says why once, at start).

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use baton_bpf::{ForwardTarget, Forwarder, ParkedRing};
use baton_policy::{BackendView, Policy, Request};
use baton_proto::frame::{Frame, Handoff};
use baton_proto::http::{error_response, parse_request_head, HeadLimits, RequestHead};
use baton_proto::FlowKey;
use baton_sys::packet::PacketSender;
use baton_sys::repair;
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::config::{ms, BackendMode, FrontConfig};
use crate::control::{self, FrameWriter};
use crate::relay::{self, RelayLimits};
use crate::stats::{Counter, Samples, Summary};

/// How a back-end answered a handoff.
#[derive(Debug)]
enum Reply {
    Ready { restore_us: u32 },
    Refused { why: String, backend_fault: bool },
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
    relay_to: Option<SocketAddr>,
    weight: u32,
    st: Mutex<BackendState>,
    writer: tokio::sync::Mutex<Option<FrameWriter>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    handoffs: Counter,
    failures: Counter,
    relayed: Counter,
    relay_failures: Counter,
    /// Connections being relayed to it now (part of its load).
    relay_active: AtomicU32,
}

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

#[derive(Debug, Clone, Copy)]
enum Phase {
    Parked,
    Forwarding(ForwardTarget),
    Closed { at: Instant, target: ForwardTarget },
}

#[derive(Debug, Clone, Copy)]
struct FlowInfo {
    id: u64,
    phase: Phase,
}

/// A back-end group: the back-ends that serve it, in configuration order
/// (policies identify back-ends by position), and its policy.
#[derive(Debug)]
struct Group {
    name: String,
    members: Vec<usize>,
    policy: Mutex<Box<dyn Policy>>,
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
    /// `interface` and opens the packet socket.
    fn open(interface: &str) -> std::result::Result<HandoffKit, KitError> {
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
        let mut forwarder = match Forwarder::attach(interface) {
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
    frames_resent: Counter,
    frames_dropped: Counter,
    entries_removed_closed: Counter,
    entries_removed_idle: Counter,
    relayed: Counter,
    relay_fallbacks: Counter,
    relay_failures: Counter,
    relay_idle_timeouts: Counter,
    relay_bytes_up: Counter,
    relay_bytes_down: Counter,
}

/// The shared state of one front-end.
pub struct Front {
    cfg: FrontConfig,
    /// None: every connection is relayed.
    kit: Option<HandoffKit>,
    backends: Vec<Arc<Backend>>,
    groups: Vec<Group>,
    rules: baton_policy::Rules,
    flows: Mutex<HashMap<FlowKey, FlowInfo>>,
    relay_limits: RelayLimits,
    /// One permit per relayed connection (`relay.max_connections`).
    relay_slots: Semaphore,
    /// Empty splice pipes for the next relays.
    pipes: relay::PipePool,
    /// Idle back-end connections kept for the next relayed requests.
    upstreams: Arc<relay::Upstreams>,
    next_id: AtomicU64,
    started: Instant,
    counters: FrontCounters,
    lat_dump: Samples,
    lat_rtt: Samples,
    lat_restore: Samples,
    lat_total: Samples,
    lat_send: Samples,
    shutting_down: AtomicBool,
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
            match HandoffKit::open(&cfg.interface) {
                Ok(kit) => {
                    info!(iface = %cfg.interface, ifindex = kit.iface.ifindex, "BPF forwarder attached");
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
        let rules = cfg.routing_rules()?;
        let mut groups = Vec::new();
        for gc in cfg.group_configs() {
            let policy = gc
                .policy_config()?
                .build()
                .with_context(|| format!("group {}", gc.name))?;
            let members = cfg
                .backends
                .iter()
                .enumerate()
                .filter(|(_, b)| b.group == gc.name)
                .map(|(i, _)| i)
                .collect();
            groups.push(Group {
                name: gc.name.clone(),
                members,
                policy: Mutex::new(policy),
            });
        }
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
                relay_to,
                weight: b.weight,
                st: Mutex::default(),
                writer: tokio::sync::Mutex::new(None),
                pending: Mutex::default(),
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
                .filter(|b| b.relay_to.is_none())
                .map(|b| b.name.as_str())
                .collect();
            if unusable.len() == backends.len() {
                bail!("no back-end can be relayed to: give the handoff back-ends a relay_address");
            }
            if !unusable.is_empty() {
                warn!(backends = %unusable.join(", "), "back-ends without relay_address are out of rotation while the front relays");
            }
        }
        let relay_limits = RelayLimits::new(
            &cfg.relay,
            HeadLimits {
                max_bytes: cfg.limits.head_max_bytes,
                max_headers: cfg.limits.head_max_headers,
            },
            ms(cfg.limits.head_timeout_ms),
        );
        Ok(Arc::new(Front {
            kit,
            backends,
            groups,
            rules,
            flows: Mutex::default(),
            relay_limits,
            relay_slots: Semaphore::new(cfg.relay.max_connections),
            pipes: relay::PipePool::new(PIPES_KEPT),
            upstreams: relay::Upstreams::new(&cfg.relay),
            next_id: AtomicU64::new(1),
            started: Instant::now(),
            counters: FrontCounters::default(),
            lat_dump: Samples::new(SAMPLES),
            lat_rtt: Samples::new(SAMPLES),
            lat_restore: Samples::new(SAMPLES),
            lat_total: Samples::new(SAMPLES),
            lat_send: Samples::new(SAMPLES),
            shutting_down: AtomicBool::new(false),
            cfg,
        }))
    }

    /// Runs until `shutdown` resolves; then stops accepting and returns (the
    /// forwarder is detached when the last reference drops).
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        let addr = SocketAddr::from((self.cfg.vip, self.cfg.port));
        // Bound to the NIC only for handoffs: the forwarder sees that NIC
        // alone. A relay serves wherever the address is.
        let device = self.kit.as_ref().map(|_| self.cfg.interface.as_str());
        let listener = listen_on(addr, device).with_context(|| {
            format!(
                "binding {addr} on {} (is the VIP configured there?)",
                self.cfg.interface
            )
        })?;
        if self.kit.is_some() {
            let Some(key_file) = &self.cfg.key_file else {
                bail!("key_file is required to hand connections off");
            };
            let psk = crate::config::load_key(key_file)?;
            for (i, b) in self.backends.iter().enumerate() {
                if b.mode == BackendMode::Handoff {
                    tokio::spawn(Arc::clone(&self).control_loop(i, psk.clone()));
                }
            }
            tokio::spawn(Arc::clone(&self).parked_reader());
            tokio::spawn(Arc::clone(&self).sweeper());
        }
        let admin = tokio::spawn(crate::admin::serve(
            self.cfg.admin_listen,
            Arc::clone(&self),
        ));
        info!(%addr, backends = self.backends.len(), "front-end serving");
        let limit = Arc::new(Semaphore::new(self.cfg.limits.max_pending));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok((stream, peer)) => {
                        self.counters.accepted.inc();
                        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                            // Over the limit: answer at once rather than queue.
                            tokio::spawn(reject(stream, 503));
                            continue;
                        };
                        let front = Arc::clone(&self);
                        tokio::spawn(async move {
                            front.client(stream, peer, permit).await;
                        });
                    }
                    Err(e) => {
                        // EMFILE and the like: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }
        self.shutting_down.store(true, Ordering::Relaxed);
        drop(listener);
        // Drain: the forwarder stays attached while handed-off connections
        // live, since detaching it would make the front's kernel reset them.
        // None only for a timeout beyond the clock's range (validation caps
        // it): then no wait at all rather than a panic.
        let deadline = Instant::now().checked_add(ms(self.cfg.drain_timeout_ms));
        let live = || {
            let handed = self
                .lock_flows()
                .values()
                .filter(|f| !matches!(f.phase, Phase::Closed { .. }))
                .count();
            handed.saturating_add(usize::try_from(self.relay_active()).unwrap_or(usize::MAX))
        };
        info!(
            connections = live(),
            "front-end stopped accepting; draining"
        );
        while live() > 0 && deadline.is_some_and(|d| Instant::now() < d) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = live();
        if left > 0 {
            warn!(left, "drain timeout: stopping with connections still open");
        }
        admin.abort();
        info!("front-end stopped");
        Ok(())
    }

    /// One client connection: read the head, pick, hand off or relay.
    /// `pending` is the connection's slot among those being read or handed
    /// off; a relay gives it back, since it may last long.
    async fn client(
        self: &Arc<Self>,
        mut stream: TcpStream,
        peer: SocketAddr,
        pending: OwnedSemaphorePermit,
    ) {
        let limits = HeadLimits {
            max_bytes: self.cfg.limits.head_max_bytes,
            max_headers: self.cfg.limits.head_max_headers,
        };
        let head_timeout = ms(self.cfg.limits.head_timeout_ms);
        let mut buf = Vec::with_capacity(1024);
        let head =
            match tokio::time::timeout(head_timeout, read_head(&mut stream, &mut buf, &limits))
                .await
            {
                Err(_) => {
                    self.counters.head_timeouts.inc();
                    debug!(%peer, "request head timeout");
                    let _ = stream.write_all(&plain_error(408)).await;
                    return;
                }
                Ok(Err(HeadFailure::Closed)) => {
                    self.counters.client_gone.inc();
                    return;
                }
                Ok(Err(HeadFailure::Bad(status, why))) => {
                    self.counters.bad_requests.inc();
                    debug!(%peer, status, why, "bad request head");
                    let _ = stream.write_all(&plain_error(status)).await;
                    return;
                }
                Ok(Ok(h)) => h,
            };
        let t_head = Instant::now();
        let bi = match self.pick(&head) {
            Ok(bi) => bi,
            Err(why) => {
                self.counters.no_backend.inc();
                debug!(%peer, why, "no back-end for the request");
                let _ = stream.write_all(&plain_error(503)).await;
                return;
            }
        };
        match self.route_of(&self.backends[bi]) {
            Route::Handoff => {}
            Route::Relay(to) => {
                drop(pending);
                self.relay(stream, bi, to, &buf, true).await;
                return;
            }
            Route::Unusable => {
                // `pick` offers no such back-end; kept total all the same.
                self.counters.no_backend.inc();
                let _ = stream.write_all(&plain_error(503)).await;
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
            let _ = stream.write_all(&plain_error(505)).await;
            return;
        };
        let key = FlowKey { client, vip };
        match self.handoff(&stream, key, bi, &buf, t_head).await {
            Ok(Handed::Live) => {
                // Still in repair mode: closing sends nothing to the client.
                drop(stream);
                self.counters.handoffs_ok.inc();
            }
            Ok(Handed::Lost) => {
                // Also closed in repair mode; the client's next segment finds
                // no socket and gets a reset.
                drop(stream);
                self.counters.handoffs_failed.inc();
                self.backends[bi].failures.inc();
            }
            Err(f) => {
                self.counters.handoffs_failed.inc();
                let b = &self.backends[bi];
                b.failures.inc();
                match b.relay_to {
                    // The socket is back in normal mode and the unread bytes
                    // are still in its queue (the dump only peeked): the
                    // connection can be relayed as if it had never been
                    // offered. Not after a timeout: that back-end is stuck,
                    // and a relay to it would leave the client waiting too.
                    Some(to) if f.status != 504 => {
                        self.counters.relay_fallbacks.inc();
                        debug!(%key, backend = %b.name, status = f.status, error = %f.why, "handoff failed; relaying the connection instead");
                        drop(pending);
                        self.relay(stream, bi, to, &buf, false).await;
                    }
                    _ => {
                        warn!(%key, backend = %b.name, status = f.status, error = %f.why, "handoff failed");
                        let _ = stream.write_all(&plain_error(f.status)).await;
                        let _ = stream.shutdown().await;
                    }
                }
            }
        }
    }

    /// How back-end `b` is served now: handed off, relayed, or not at all.
    fn route_of(&self, b: &Backend) -> Route {
        match (b.mode, &self.kit, b.relay_to) {
            (BackendMode::Handoff, Some(_), _) => Route::Handoff,
            (_, _, Some(to)) => Route::Relay(to),
            (_, _, None) => Route::Unusable,
        }
    }

    /// Connections being relayed now.
    fn relay_active(&self) -> u64 {
        self.backends
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
        let b = &self.backends[bi];
        let Ok(_slot) = self.relay_slots.try_acquire() else {
            self.counters.relay_failures.inc();
            debug!(backend = %b.name, "relay.max_connections reached");
            let _ = stream.write_all(&plain_error(503)).await;
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
                relay::Event::ConnectFailed(e) => self.relay_connect_failed(b, primary, e),
            };
            let http = relay::HttpRelay {
                limits: &self.relay_limits,
                meter,
                pipes: &self.pipes,
                upstreams: &self.upstreams,
                report: &report,
            };
            http.serve(stream, to, first).await
        } else {
            let connect = self
                .upstreams
                .connect(to, self.relay_limits.connect_timeout);
            let back = match connect.await {
                Ok(s) => s,
                Err(e) => {
                    self.relay_connect_failed(b, primary, &e);
                    let status = if e.timed_out() { 504 } else { 502 };
                    let _ = stream.write_all(&plain_error(status)).await;
                    let _ = stream.shutdown().await;
                    return;
                }
            };
            self.counters.relayed.inc();
            b.relayed.inc();
            relay::run(stream, back, first, &self.relay_limits, &meter, &self.pipes).await
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
                st.paused_until = Instant::now().checked_add(ms(self.cfg.control.refused_pause_ms));
            }
            st.last_error = Some(e.to_string());
        }
        warn!(backend = %b.name, error = %e, "relay failed");
    }

    /// Routes the request to a group and lets the group's policy pick a
    /// back-end; returns the back-end's index, or why none can take it.
    fn pick(&self, head: &RequestHead) -> std::result::Result<usize, &'static str> {
        let host = head.host_name();
        let group = self.rules.route(host, &head.path);
        let Some(g) = self.groups.iter().find(|g| g.name == group) else {
            return Err("no back-end group for this request");
        };
        let now = Instant::now();
        let views: Vec<BackendView> = g
            .members
            .iter()
            .map(|&i| {
                let b = &self.backends[i];
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
                    weight: b.weight,
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
        policy
            .pick(&req, &views, now_ms)
            .and_then(|k| g.members.get(k).copied())
            .ok_or("no back-end available")
    }

    /// The handoff proper. On error the socket is back in normal mode and
    /// the forwarder no longer knows the flow.
    async fn handoff(
        self: &Arc<Self>,
        stream: &TcpStream,
        key: FlowKey,
        bi: usize,
        already_read: &[u8],
        t0: Instant,
    ) -> std::result::Result<Handed, Failure> {
        let Some(kit) = self.kit.as_ref() else {
            return Err(Failure::unavailable("handoff is off".into()));
        };
        let b = &self.backends[bi];
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock_flows().insert(
            key,
            FlowInfo {
                id,
                phase: Phase::Parked,
            },
        );
        let parked = kit.lock_forwarder().park(&key);
        if let Err(e) = parked {
            self.forget(kit, &key, id);
            if e.is_map_full() {
                self.counters.flow_table_full.inc();
                return Err(Failure::unavailable(format!("forwarder: {e}")));
            }
            return Err(Failure::bad_gateway(format!("forwarder: {e}")));
        }
        let td = Instant::now();
        let dumped = match repair::dump(stream.as_fd()) {
            Ok(d) => d,
            Err(e) => {
                self.unpark(kit, &key, id);
                return Err(Failure::bad_gateway(format!("dump: {e}")));
            }
        };
        let mut data = Vec::with_capacity(already_read.len() + dumped.unread.len());
        data.extend_from_slice(already_read);
        data.extend_from_slice(&dumped.unread);
        let mut state = dumped.state;
        let dump_us = td.elapsed().as_micros();
        // What elapsed since the dump is added here (in the socket's own
        // timestamp unit), what elapses in transit is added by the back-end.
        state.ts_val = repair::advance_timestamp(state.ts_val, td.elapsed());
        let (tx, rx) = oneshot::channel();
        b.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let frame = Frame::Handoff(Handoff {
            id,
            flow: key,
            state,
            data: data.into(),
        });
        let tr = Instant::now();
        let send_us = tr.duration_since(t0).as_micros();
        let target = match self.exchange(kit, b, id, frame, rx).await {
            Ok(t) => t,
            Err(f) => {
                b.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                self.resume(kit, stream, &key, id);
                return Err(f);
            }
        };
        let rtt_us = tr.elapsed().as_micros();
        let forwarded = kit.lock_forwarder().forward(&key, &target);
        if let Err(e) = forwarded {
            let _ = self.send(b, Frame::Abort { id }).await;
            self.resume(kit, stream, &key, id);
            return Err(Failure::bad_gateway(format!("forwarder: {e}")));
        }
        if let Some(f) = self.lock_flows().get_mut(&key) {
            if f.id == id {
                f.phase = Phase::Forwarding(target);
            }
        }
        // Go before delivering the kept frames: the back-end can start
        // answering while they are on their way (it would accept them in
        // repair mode too), which takes them off the latency path.
        if let Err(e) = self.send(b, Frame::Go { id }).await {
            // The back-end holds a socket that will never go live; its Go
            // timer drops it. The client's connection is lost: make the
            // forwarder forget it so the front kernel answers with a reset.
            let _ = kit.lock_forwarder().remove(&key);
            self.forget(kit, &key, id);
            warn!(%key, backend = %b.name, error = %e, "Go not delivered; connection lost");
            return Ok(Handed::Lost);
        }
        self.flush_parked(kit, &key, &target);
        {
            let mut st = b.st.lock().unwrap_or_else(|e| e.into_inner());
            st.handed_since_report = st.handed_since_report.saturating_add(1);
        }
        b.handoffs.inc();
        self.lat_dump.record_us(dump_us as u64);
        self.lat_rtt.record_us(rtt_us as u64);
        self.lat_send.record_us(send_us as u64);
        self.lat_total.record_us(t0.elapsed().as_micros() as u64);
        Ok(Handed::Live)
    }

    /// Sends the handoff and waits for the answer, both within the handoff
    /// timeout; returns where to forward.
    async fn exchange(
        &self,
        kit: &HandoffKit,
        b: &Backend,
        id: u64,
        frame: Frame,
        rx: oneshot::Receiver<Reply>,
    ) -> std::result::Result<ForwardTarget, Failure> {
        let mac = b.st.lock().unwrap_or_else(|e| e.into_inner()).mac;
        let Some(dst_mac) = mac else {
            return Err(Failure::unavailable("back-end address unknown".into()));
        };
        let limit = ms(self.cfg.limits.handoff_timeout_ms);
        // Measured from before the send: a slow write eats into the wait.
        let started = tokio::time::Instant::now();
        if let Err(e) = self.send(b, frame).await {
            return Err(Failure::unavailable(format!("control channel: {e}")));
        }
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, rx).await {
            Ok(Ok(Reply::Ready { restore_us })) => {
                self.lat_restore.record_us(u64::from(restore_us));
                Ok(ForwardTarget {
                    ifindex: kit.iface.ifindex,
                    dst_mac,
                    src_mac: kit.iface.mac,
                })
            }
            Ok(Ok(Reply::Refused { why, backend_fault })) => {
                // Only a back-end that cannot restore anything leaves the
                // rotation; one connection it could not take (a 4-tuple still
                // in use there, a body too large) says nothing about the next.
                if backend_fault {
                    let pause = ms(self.cfg.control.refused_pause_ms);
                    b.st.lock().unwrap_or_else(|e| e.into_inner()).paused_until =
                        Instant::now().checked_add(pause);
                }
                Err(Failure::bad_gateway(format!(
                    "back-end {} refused: {why}",
                    b.name
                )))
            }
            Ok(Err(_)) => Err(Failure::bad_gateway(format!(
                "control channel to {} went down",
                b.name
            ))),
            Err(_) => {
                let _ = self.send(b, Frame::Abort { id }).await;
                // A back-end that does not answer in time is out of rotation
                // until its channel is re-established.
                self.drop_channel(b, "handoff timed out").await;
                Err(Failure::gateway_timeout(format!(
                    "back-end {} did not answer in time",
                    b.name
                )))
            }
        }
    }

    /// Sends one frame, within the handoff timeout (waiting for the writer
    /// included). A write that does not finish in time may have left half a
    /// frame on the wire, so the channel is dropped: the control loop then
    /// notices (its heartbeat finds no writer) and reconnects.
    async fn send(&self, b: &Backend, frame: Frame) -> Result<()> {
        let limit = ms(self.cfg.limits.handoff_timeout_ms);
        let sent = tokio::time::timeout(limit, async {
            let mut w = b.writer.lock().await;
            match w.as_mut() {
                Some(w) => w.send(&frame).await,
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

    async fn drop_channel(&self, b: &Backend, why: &str) {
        if let Some(mut w) = b.writer.lock().await.take() {
            let _ = w.shutdown().await;
        }
        let mut st = b.st.lock().unwrap_or_else(|e| e.into_inner());
        st.up = false;
        st.last_error = Some(why.to_string());
    }

    /// Undo a park after a failure before the dump.
    fn unpark(&self, kit: &HandoffKit, key: &FlowKey, id: u64) {
        let _ = kit.lock_forwarder().remove(key);
        self.forget(kit, key, id);
    }

    /// Undo a park after the dump: the socket leaves repair mode and the
    /// front answers on it itself. Frames kept meanwhile are dropped; the
    /// client retransmits them.
    fn resume(&self, kit: &HandoffKit, stream: &TcpStream, key: &FlowKey, id: u64) {
        let _ = kit.lock_forwarder().remove(key);
        if let Err(e) = repair::set_repair(stream.as_fd(), false) {
            warn!(%key, error = %e, "could not leave repair mode");
        }
        self.forget(kit, key, id);
    }

    fn forget(&self, kit: &HandoffKit, key: &FlowKey, id: u64) {
        let mut flows = self.lock_flows();
        if flows.get(key).is_some_and(|f| f.id == id) {
            flows.remove(key);
        }
        drop(flows);
        kit.lock_parked().kept.remove(key);
    }

    fn lock_flows(&self) -> std::sync::MutexGuard<'_, HashMap<FlowKey, FlowInfo>> {
        self.flows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves frames from the ring into the store (or straight on, for flows
    /// that already forward). Returns how many were read.
    fn drain_ring(&self, kit: &HandoffKit, store: &mut ParkedStore) -> usize {
        let mut n = 0;
        while let Some(pf) = store.ring.next() {
            n += 1;
            let phase = self.lock_flows().get(&pf.key).map(|f| f.phase);
            match phase {
                Some(Phase::Parked) => {
                    let q = store.kept.entry(pf.key).or_default();
                    self.keep(q, pf.frame);
                }
                Some(Phase::Forwarding(t)) | Some(Phase::Closed { target: t, .. }) => {
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
        if q.len() < self.cfg.limits.max_parked_frames {
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

    /// Removes forwarding entries whose connection is over.
    async fn sweeper(self: Arc<Self>) {
        let Some(kit) = self.kit.as_ref() else {
            return;
        };
        let limits = SweepLimits::new(&self.cfg);
        let mut tick = tokio::time::interval(ms(self.cfg.flows.sweep_interval_ms));
        // Walking the whole map costs two system calls per entry under the
        // forwarder lock (handoffs wait meanwhile), so it only runs often
        // enough to catch idle entries (a quarter of the idle timeout);
        // the sweeps between look up just the flows that may be done.
        let full_every =
            ms(self.cfg.flows.idle_timeout_ms / 4).max(ms(self.cfg.flows.sweep_interval_ms));
        let mut last_full = Instant::now();
        loop {
            tick.tick().await;
            let full = last_full.elapsed() >= full_every;
            if full {
                last_full = Instant::now();
            }
            self.sweep(kit, &limits, full);
        }
    }

    fn sweep(&self, kit: &HandoffKit, limits: &SweepLimits, full: bool) {
        let now = Instant::now();
        let now_ns = Forwarder::now_ns();
        // Handoffs from this id on may start after the snapshot below: their
        // records must survive even though the snapshot lacks their entries.
        let first_unseen = self.next_id.load(Ordering::Relaxed);
        let entries = if full {
            match kit.lock_forwarder().entries() {
                Ok(e) => e,
                Err(e) => {
                    warn!(error = %e, "listing forwarding entries failed");
                    return;
                }
            }
        } else {
            // Only flows whose entry may be due: closed past the grace, or
            // parked (a handoff that may be stuck).
            let keys: Vec<FlowKey> = self
                .lock_flows()
                .iter()
                .filter(|(_, f)| match f.phase {
                    Phase::Closed { at, .. } => now.saturating_duration_since(at) >= limits.grace,
                    Phase::Parked => true,
                    Phase::Forwarding(_) => false,
                })
                .map(|(k, _)| *k)
                .collect();
            let fwd = kit.lock_forwarder();
            let mut found = Vec::with_capacity(keys.len());
            let mut gone = Vec::new();
            for key in keys {
                match fwd.entry(&key) {
                    Ok(Some(e)) => found.push((key, e)),
                    Ok(None) => gone.push(key),
                    Err(e) => debug!(%key, error = %e, "looking up a forwarding entry failed"),
                }
            }
            drop(fwd);
            // Closed flows whose entry a new SYN replaced: nothing to steer.
            let mut store = kit.lock_parked();
            let mut flows = self.lock_flows();
            for key in gone {
                if flows
                    .get(&key)
                    .is_some_and(|f| f.id < first_unseen && matches!(f.phase, Phase::Closed { .. }))
                {
                    flows.remove(&key);
                    store.kept.remove(&key);
                }
            }
            drop(flows);
            drop(store);
            found
        };
        // Each removal names the handoff it was judged on (None: no record),
        // so that a new handoff on the same 4-tuple since then is spared.
        let mut remove: Vec<(FlowKey, Option<u64>, bool)> = Vec::new();
        {
            let flows = self.lock_flows();
            for (key, e) in &entries {
                let idle_ns = now_ns.saturating_sub(e.last_seen_ns);
                let flow = flows.get(key);
                if let Some(closed) = limits.verdict(flow.map(|f| f.phase), idle_ns, now) {
                    remove.push((*key, flow.map(|f| f.id), closed));
                }
            }
        }
        let live: std::collections::HashSet<FlowKey> = entries.iter().map(|(k, _)| *k).collect();
        // Lock order: parked, forwarder, flows (drain_ring takes parked then
        // flows; everything else takes forwarder then flows). The kept frames
        // go under the same locks, so a new handoff's frames are never taken.
        let mut store = kit.lock_parked();
        let mut fwd = kit.lock_forwarder();
        let mut flows = self.lock_flows();
        for (key, id, closed) in remove {
            if flows.get(&key).map(|f| f.id) != id {
                continue;
            }
            if let Err(e) = fwd.remove(&key) {
                // Record kept: the next sweep tries again.
                debug!(%key, error = %e, "removing a forwarding entry failed");
                continue;
            }
            if closed {
                self.counters.entries_removed_closed.inc();
            } else {
                self.counters.entries_removed_idle.inc();
            }
            flows.remove(&key);
            store.kept.remove(&key);
        }
        if !full {
            return;
        }
        // Flow records the kernel no longer has (e.g. replaced by a new SYN).
        flows.retain(|k, f| {
            let keep = live.contains(k) || f.id >= first_unseen || matches!(f.phase, Phase::Parked);
            if !keep {
                store.kept.remove(k);
            }
            keep
        });
    }

    /// Keeps the control channel to back-end `i` up: connect, authenticate,
    /// read its frames; on failure take it out of rotation and retry with
    /// backoff.
    async fn control_loop(self: Arc<Self>, i: usize, psk: baton_proto::auth::Psk) {
        let b = Arc::clone(&self.backends[i]);
        let Some(control_addr) = b.control else {
            return;
        };
        let timers = self.cfg.control.clone();
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.shutting_down.load(Ordering::Relaxed) {
                return;
            }
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
            *b.writer.lock().await = Some(writer);
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
            let why = self.read_channel(&b, &mut reader, &timers).await;
            warn!(backend = %b.name, reason = %why, "control channel down; back-end out of rotation");
            self.drop_channel(&b, &why).await;
            // Wake every handoff waiting on this channel: they answer 502.
            b.pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
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
                    self.handle_frame(b, frame);
                }
            }
        }
    }

    fn handle_frame(&self, b: &Backend, frame: Frame) {
        match frame {
            Frame::Ready { id, restore_us } => self.answer(b, id, Reply::Ready { restore_us }),
            Frame::Refused {
                id,
                reason,
                backend_fault,
            } => self.answer(
                b,
                id,
                Reply::Refused {
                    why: reason,
                    backend_fault,
                },
            ),
            Frame::Closed { id, flow } => {
                // Channels only run while handoff is on.
                let Some(kit) = self.kit.as_ref() else {
                    return;
                };
                let matched = {
                    // Lock order: forwarder, then flows.
                    let mut fwd = kit.lock_forwarder();
                    let mut flows = self.lock_flows();
                    match flows.get_mut(&flow) {
                        Some(f) if f.id == id => {
                            if let Phase::Forwarding(target) = f.phase {
                                f.phase = Phase::Closed {
                                    at: Instant::now(),
                                    target,
                                };
                                // Only now may a bare SYN on this 4-tuple
                                // replace the entry (a new connection).
                                if let Err(e) = fwd.mark_closing(&flow, &target) {
                                    warn!(key = %flow, error = %e, "could not mark a forwarding entry closing");
                                }
                                true
                            } else {
                                false
                            }
                        }
                        _ => false,
                    }
                };
                // A report for a flow this front does not know (a stale id,
                // swept already, a repeat) must not skew the load estimate.
                if matched {
                    let mut st = b.st.lock().unwrap_or_else(|e| e.into_inner());
                    st.closed_since_report = st.closed_since_report.saturating_add(1);
                }
            }
            Frame::Load(l) => {
                let mut st = b.st.lock().unwrap_or_else(|e| e.into_inner());
                st.reported_load = l.active;
                st.handed_since_report = 0;
                st.closed_since_report = 0;
            }
            Frame::Goodbye { reason } => {
                info!(backend = %b.name, %reason, "back-end is draining");
                b.st.lock().unwrap_or_else(|e| e.into_inner()).draining = true;
            }
            Frame::Pong { .. } => {}
            other => {
                debug!(backend = %b.name, frame = ?other, "unexpected frame from a back-end; ignored")
            }
        }
    }

    fn answer(&self, b: &Backend, id: u64, reply: Reply) {
        if let Some(tx) = b
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
        {
            let _ = tx.send(reply);
        }
    }

    /// Every back-end that hands off has its channel up (relay targets
    /// count as ready: their health is learnt from connecting), and some
    /// back-end can serve at all (the lab's readiness check).
    pub fn ready(&self) -> bool {
        let mut usable = false;
        let all = self.backends.iter().all(|b| match self.route_of(b) {
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
        let entries = self.kit.as_ref().map_or(0, |k| {
            k.lock_forwarder().entries().map(|e| e.len()).unwrap_or(0)
        });
        // One lock at a time: guards taken inside the struct literal below
        // would all live until its end (and the flows lock is not reentrant).
        let (flows_tracked, flows_parked) = {
            let flows = self.lock_flows();
            let parked = flows
                .values()
                .filter(|f| matches!(f.phase, Phase::Parked))
                .count();
            (flows.len(), parked)
        };
        let (kept_frames, parked_malformed) = self.kit.as_ref().map_or((0, 0), |k| {
            let store = k.lock_parked();
            let kept: usize = store.kept.values().map(Vec::len).sum();
            (kept, store.ring.malformed())
        });
        let upstream = self.upstreams.stats();
        FrontStats {
            uptime_s: self.started.elapsed().as_secs_f64(),
            handoff: self.kit.is_some(),
            relayed: c.relayed.get(),
            relay_fallbacks: c.relay_fallbacks.get(),
            relay_failures: c.relay_failures.get(),
            relay_idle_timeouts: c.relay_idle_timeouts.get(),
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
            frames_resent: c.frames_resent.get(),
            frames_dropped: c.frames_dropped.get(),
            entries_removed_closed: c.entries_removed_closed.get(),
            entries_removed_idle: c.entries_removed_idle.get(),
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
            bpf_program_id,
            latency_us: Latency {
                dump: self.lat_dump.summary(),
                control_rtt: self.lat_rtt.summary(),
                restore: self.lat_restore.summary(),
                total: self.lat_total.summary(),
                to_send: self.lat_send.summary(),
            },
            backends: self
                .backends
                .iter()
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
                        relay_address: b.relay_to.map(|a| a.to_string()),
                        up: match route {
                            Route::Handoff => st.up,
                            Route::Relay(_) => !paused,
                            Route::Unusable => false,
                        },
                        draining: st.draining,
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

/// When the sweeper removes a forwarding entry.
#[derive(Debug, Clone, Copy)]
struct SweepLimits {
    /// How long an entry outlives the back-end's `Closed` report.
    grace: Duration,
    /// An entry with no packet for this long goes, whatever its state.
    idle_ns: u64,
    /// A handoff stuck this long in PARK is given up.
    parked_max_ns: u64,
}

impl SweepLimits {
    fn new(cfg: &FrontConfig) -> Self {
        SweepLimits {
            grace: ms(cfg.flows.closed_grace_ms),
            idle_ns: cfg.flows.idle_timeout_ms.saturating_mul(1_000_000),
            parked_max_ns: cfg
                .limits
                .handoff_timeout_ms
                .saturating_mul(4)
                .saturating_add(1000)
                .saturating_mul(1_000_000),
        }
    }

    /// Whether to remove an entry: `Some(true)` as closed, `Some(false)`
    /// as idle, `None` not yet. `phase` is the flow's record (None: the front
    /// has none), `idle_ns` the time since the forwarder saw its last packet.
    fn verdict(&self, phase: Option<Phase>, idle_ns: u64, now: Instant) -> Option<bool> {
        let grace_ns = u64::try_from(self.grace.as_nanos()).unwrap_or(u64::MAX);
        match phase {
            // After the close the back-end's kernel may still be sending a
            // large response that the client ACKs through this entry: it goes
            // once the grace has passed since the report and since the last
            // packet.
            Some(Phase::Closed { at, .. })
                if now.saturating_duration_since(at) >= self.grace && idle_ns >= grace_ns =>
            {
                Some(true)
            }
            Some(Phase::Parked) if idle_ns > self.parked_max_ns => Some(false),
            // A handoff in progress owns its entry.
            Some(Phase::Parked) => None,
            _ if idle_ns > self.idle_ns => Some(false),
            _ => None,
        }
    }
}

/// `/stats` of a front-end.
#[derive(Debug, Serialize)]
pub struct FrontStats {
    pub uptime_s: f64,
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
    pub frames_resent: u64,
    pub frames_dropped: u64,
    pub entries_removed_closed: u64,
    pub entries_removed_idle: u64,
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
    /// The forwarder's kernel id (as `bpftool prog show id N`); `None`
    /// when not handing off.
    pub bpf_program_id: Option<u32>,
    pub latency_us: Latency,
    pub backends: Vec<BackendStats>,
}

/// Handoff latency, front side.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// TCP_REPAIR on + state reads.
    pub dump: Summary,
    /// `Handoff` sent to `Ready` received (includes the back-end's restore).
    pub control_rtt: Summary,
    /// The back-end's restore, as it reported it in `Ready`.
    pub restore: Summary,
    /// Request head complete to `Go` sent: the front's whole handoff.
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
    pub up: bool,
    pub draining: bool,
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

/// Why a handoff failed, and what the client is told.
#[derive(Debug)]
struct Failure {
    status: u16,
    why: String,
}

/// How a handoff that got past `Ready` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handed {
    /// The back-end serves the connection.
    Live,
    /// `Go` could not be delivered: the connection is lost, and the socket,
    /// in repair mode, can tell the client nothing.
    Lost,
}

impl Failure {
    fn unavailable(why: String) -> Self {
        Failure { status: 503, why }
    }
    fn bad_gateway(why: String) -> Self {
        Failure { status: 502, why }
    }
    fn gateway_timeout(why: String) -> Self {
        Failure { status: 504, why }
    }
}

enum HeadFailure {
    Closed,
    Bad(u16, String),
}

async fn read_head(
    stream: &mut TcpStream,
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

async fn reject(mut stream: TcpStream, status: u16) {
    let _ = stream.write_all(&plain_error(status)).await;
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

/// `TCP_DEFER_ACCEPT`'s wait for a silent client's first bytes.
const DEFER_ACCEPT_SECS: libc::c_int = 5;

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn limits() -> SweepLimits {
        SweepLimits {
            grace: Duration::from_millis(200),
            idle_ns: 300_000 * MS,
            parked_max_ns: 5_000 * MS,
        }
    }

    fn closed(ago: Duration, now: Instant) -> Option<Phase> {
        Some(Phase::Closed {
            at: now.checked_sub(ago).expect("a monotonic clock this old"),
            target: ForwardTarget {
                ifindex: 1,
                dst_mac: [2, 0, 0, 0, 0, 1],
                src_mac: [2, 0, 0, 0, 0, 2],
            },
        })
    }

    #[test]
    fn a_closed_flow_still_carrying_packets_is_kept() {
        // The back-end reported the close long ago, but its kernel is still
        // sending the tail of a response and the client's ACKs keep coming.
        let now = Instant::now();
        let l = limits();
        assert_eq!(
            l.verdict(closed(Duration::from_secs(10), now), MS, now),
            None
        );
        assert_eq!(
            l.verdict(closed(Duration::from_secs(10), now), 199 * MS, now),
            None
        );
    }

    #[test]
    fn a_closed_flow_goes_once_quiet_and_past_the_grace() {
        let now = Instant::now();
        let l = limits();
        assert_eq!(
            l.verdict(closed(Duration::from_millis(200), now), 200 * MS, now),
            Some(true)
        );
        // Quiet, but the report is too recent: the last FIN/ACK may follow.
        assert_eq!(
            l.verdict(closed(Duration::from_millis(100), now), 10_000 * MS, now),
            None
        );
    }

    #[test]
    fn parked_and_live_flows_age_by_their_own_limits() {
        let now = Instant::now();
        let l = limits();
        let live = Some(Phase::Forwarding(ForwardTarget {
            ifindex: 1,
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
        }));
        assert_eq!(l.verdict(Some(Phase::Parked), 4_000 * MS, now), None);
        assert_eq!(l.verdict(Some(Phase::Parked), 6_000 * MS, now), Some(false));
        assert_eq!(l.verdict(live, 200_000 * MS, now), None);
        assert_eq!(l.verdict(live, 300_001 * MS, now), Some(false));
        assert_eq!(l.verdict(None, 300_001 * MS, now), Some(false));
        assert_eq!(l.verdict(None, MS, now), None);
    }
}
