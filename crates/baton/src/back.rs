//! `baton back`: accepts authenticated control channels from front-ends,
//! restores each handed-off connection with TCP_REPAIR and serves HTTP on it
//! (the response goes straight to the client from the VIP on `lo`); reports
//! `Closed` for every connection and its load, periodically.
//!
//! Content comes from a docroot (static files) or, in caching mode, from an
//! in-memory cache in front of an origin server.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use baton_cache::{CachingProxy, ObjectCache, ProxyLimits};
use baton_proto::frame::{Frame, Handoff, LoadReport};
use baton_proto::FlowKey;
use baton_serve::StaticFiles;
use baton_sys::repair;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore};
use tracing::{debug, info, warn};

use crate::config::{ms, BackConfig};
use crate::control::{self, FrameWriter};
use crate::stats::Counter;

/// How long an unauthenticated peer may take to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Handshakes in progress at once: peers that have not proved the key
/// cannot take the slots of real front-ends (`max_fronts`).
const MAX_HANDSHAKES: usize = 16;
/// A frame that cannot be written within this ends the channel.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Back-end counters.
#[derive(Debug, Default)]
pub struct BackCounters {
    pub restored: Counter,
    pub refused: Counter,
    pub live: Counter,
    pub aborted: Counter,
    pub go_timeouts: Counter,
    pub go_failures: Counter,
    pub closed: Counter,
    pub closed_unreported: Counter,
    pub auth_failures: Counter,
}

/// What the back-end serves.
#[derive(Debug, Clone)]
enum Content {
    Files(Arc<StaticFiles>),
    Cache(Arc<CachingProxy>),
}

impl Content {
    async fn serve(&self, stream: TcpStream) -> std::result::Result<(), String> {
        match self {
            Content::Files(f) => baton_serve::serve_connection(stream, Arc::clone(f))
                .await
                .map_err(|e| e.to_string()),
            Content::Cache(c) => baton_cache::serve_connection(stream, Arc::clone(c))
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

/// One control channel from a front-end.
#[derive(Debug)]
struct Channel {
    writer: Arc<Mutex<FrameWriter>>,
    /// Cleared when the session ends.
    alive: std::sync::atomic::AtomicBool,
    /// `Closed` reports waiting for the next batch (see [`CLOSED_BATCH`]).
    closed: std::sync::Mutex<Vec<Frame>>,
}

impl Channel {
    fn new(writer: FrameWriter) -> Self {
        Channel {
            writer: Arc::new(Mutex::new(writer)),
            alive: std::sync::atomic::AtomicBool::new(true),
            closed: std::sync::Mutex::new(Vec::new()),
        }
    }
}

/// How long a `Closed` report may wait for others to share its write. The
/// front needs them only to age its forwarding entries (after a grace of
/// seconds) and to correct its load estimate; one write per report would
/// wake the front once more per connection.
const CLOSED_BATCH: Duration = Duration::from_millis(5);

/// The live channels of each front-end address, oldest first. A connection
/// reports `Closed` on the channel that handed it over; if that one is gone
/// (the front reconnected), on the newest channel from the same address, so
/// a reconnect does not lose the reports of connections handed off before it.
type Fronts = std::sync::Mutex<HashMap<IpAddr, Vec<Arc<Channel>>>>;

#[derive(Debug)]
struct Back {
    cfg: BackConfig,
    content: Content,
    active: AtomicU32,
    total: AtomicU64,
    counters: BackCounters,
    fronts: Fronts,
    /// `Closed` batches waiting to be written (a drain waits for them).
    flushing: AtomicU32,
}

/// Runs the back-end until `shutdown` resolves.
pub async fn run(cfg: BackConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let psk = crate::config::load_key(&cfg.key_file)?;
    let content = match &cfg.origin {
        None => Content::Files(Arc::new(
            StaticFiles::new(&cfg.docroot)
                .with_context(|| format!("docroot {}", cfg.docroot.display()))?,
        )),
        Some(origin) => {
            let uri: http::Uri = origin
                .parse()
                .with_context(|| format!("origin {origin:?}"))?;
            let proxy = CachingProxy::new(
                uri,
                ObjectCache::new(cfg.cache_bytes),
                ProxyLimits::default(),
            )
            .with_context(|| format!("origin {origin}"))?;
            info!(%origin, cache_bytes = cfg.cache_bytes, "caching mode");
            Content::Cache(Arc::new(proxy))
        }
    };
    check_vip_local(cfg.vip)?;
    let listener = TcpListener::bind(cfg.control_listen)
        .await
        .with_context(|| format!("binding the control address {}", cfg.control_listen))?;
    let back = Arc::new(Back {
        content,
        active: AtomicU32::new(0),
        total: AtomicU64::new(0),
        counters: BackCounters::default(),
        fronts: std::sync::Mutex::default(),
        flushing: AtomicU32::new(0),
        cfg,
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let direct = match back.cfg.direct_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the direct address {addr}"))?;
            info!(%addr, "serving plain HTTP (direct)");
            Some(tokio::spawn(Arc::clone(&back).direct(l, stop_rx.clone())))
        }
        None => None,
    };
    let admin = back
        .cfg
        .admin_listen
        .map(|addr| tokio::spawn(Arc::clone(&back).admin(addr)));
    info!(control = %back.cfg.control_listen, vip = %back.cfg.vip, "back-end ready for handoffs");
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let fronts = Arc::new(Semaphore::new(back.cfg.max_fronts));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let Ok(hs) = Arc::clone(&handshakes).try_acquire_owned() else {
                        warn!(%peer, "too many handshakes in progress; closing the new channel");
                        continue;
                    };
                    let back = Arc::clone(&back);
                    let psk = psk.clone();
                    let stop = stop_rx.clone();
                    let fronts = Arc::clone(&fronts);
                    tokio::spawn(async move {
                        let pair = control::accept(stream, &psk, HANDSHAKE_TIMEOUT).await;
                        drop(hs);
                        let (writer, reader) = match pair {
                            Ok(p) => p,
                            Err(e) => {
                                back.counters.auth_failures.inc();
                                warn!(%peer, error = %format!("{e:#}"), "control channel rejected");
                                return;
                            }
                        };
                        // Only authenticated peers count against max_fronts.
                        let Ok(permit) = fronts.try_acquire_owned() else {
                            warn!(%peer, "too many front-ends; closing the new channel");
                            return;
                        };
                        back.session(writer, reader, peer, stop).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    // Drain: the fronts hear Goodbye and send no new handoffs; connections
    // already here finish, up to the drain timeout.
    drop(listener);
    let _ = stop_tx.send(true);
    let active = back.active.load(Ordering::Relaxed);
    info!(active, "back-end draining");
    let deadline = Instant::now() + ms(back.cfg.drain_timeout_ms);
    let busy =
        || back.active.load(Ordering::Relaxed) > 0 || back.flushing.load(Ordering::Relaxed) > 0;
    while busy() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = back.active.load(Ordering::Relaxed);
    if left > 0 {
        warn!(left, "drain timeout: closing the remaining connections");
    }
    if let Some(d) = direct {
        let _ = d.await;
    }
    if let Some(a) = admin {
        a.abort();
    }
    info!("back-end stopped");
    Ok(())
}

/// Restored sockets bind to the VIP: it must be a local address (on `lo`).
fn check_vip_local(vip: std::net::Ipv4Addr) -> Result<()> {
    match std::net::TcpListener::bind(SocketAddr::from((vip, 0))) {
        Ok(_) => Ok(()),
        Err(e) => bail!(
            "the VIP {vip} is not a local address ({e}); add it to lo: ip addr add {vip}/32 dev lo"
        ),
    }
}

/// A restored socket waiting for `Go`.
struct Waiting {
    fd: OwnedFd,
    flow: FlowKey,
    since: Instant,
}

/// `/stats` of a back-end.
#[derive(Debug, Serialize)]
pub struct BackStats {
    pub active: u32,
    pub total: u64,
    pub restored: u64,
    pub refused: u64,
    pub live: u64,
    pub aborted: u64,
    pub go_timeouts: u64,
    pub go_failures: u64,
    pub closed: u64,
    pub closed_unreported: u64,
    pub auth_failures: u64,
    pub fronts: usize,
    /// Caching mode only.
    pub cache: Option<baton_cache::CacheStats>,
    /// Static-file mode only.
    pub files: Option<FileStats>,
}

/// The static file server's counters.
#[derive(Debug, Serialize)]
pub struct FileStats {
    pub requests: u64,
    pub bytes_sent: u64,
    pub responses_2xx: u64,
    pub responses_4xx: u64,
    pub aborted: u64,
}

impl Back {
    fn snapshot(&self) -> BackStats {
        let c = &self.counters;
        let (cache, files) = match &self.content {
            Content::Cache(p) => (Some(p.stats()), None),
            Content::Files(f) => {
                let s = f.stats();
                (
                    None,
                    Some(FileStats {
                        requests: s.requests,
                        bytes_sent: s.bytes_sent,
                        responses_2xx: s.responses_2xx,
                        responses_4xx: s.responses_4xx,
                        aborted: s.aborted,
                    }),
                )
            }
        };
        BackStats {
            active: self.active.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            restored: c.restored.get(),
            refused: c.refused.get(),
            live: c.live.get(),
            aborted: c.aborted.get(),
            go_timeouts: c.go_timeouts.get(),
            go_failures: c.go_failures.get(),
            closed: c.closed.get(),
            closed_unreported: c.closed_unreported.get(),
            auth_failures: c.auth_failures.get(),
            fronts: self
                .fronts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .map(Vec::len)
                .sum(),
            cache,
            files,
        }
    }

    /// `GET /stats` on the admin address.
    async fn admin(self: Arc<Self>, addr: SocketAddr) {
        crate::admin::serve_with(addr, move |req| {
            if req.method() == http::Method::GET && req.uri().path() == "/stats" {
                crate::admin::json(&self.snapshot())
            } else {
                crate::admin::text(http::StatusCode::NOT_FOUND, "try /stats\n")
            }
        })
        .await
    }

    /// The plain HTTP port (a baseline for benchmarks): same content.
    async fn direct(
        self: Arc<Self>,
        listener: TcpListener,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                // The only change ever made is to `true` (stop).
                _ = stop.changed() => return,
                r = listener.accept() => match r {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        let content = self.content.clone();
                        tokio::spawn(async move {
                            let _ = content.serve(stream).await;
                        });
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }
    }

    async fn session(
        self: &Arc<Self>,
        writer: FrameWriter,
        mut reader: control::FrameReader,
        peer: SocketAddr,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        info!(%peer, "front-end connected");
        let chan = Arc::new(Channel::new(writer));
        let writer = Arc::clone(&chan.writer);
        self.fronts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(peer.ip())
            .or_default()
            .push(Arc::clone(&chan));
        let mut waiting: HashMap<u64, Waiting> = HashMap::new();
        let mut load = tokio::time::interval(ms(self.cfg.load_report_ms));
        let go_timeout = ms(self.cfg.go_timeout_ms);
        let silence = ms(self.cfg.front_silence_ms);
        let mut last_heard = Instant::now();
        let mut said_goodbye = false;
        let why = loop {
            tokio::select! {
                r = stop.changed(), if !said_goodbye => {
                    said_goodbye = true;
                    if r.is_ok() {
                        // Keep the channel: Closed reports of draining
                        // connections still have to reach the front.
                        let _ = send(&writer, &Frame::Goodbye { reason: "back-end shutting down".into() }).await;
                    }
                }
                _ = load.tick() => {
                    if last_heard.elapsed() > silence {
                        break format!("silent for {silence:?}");
                    }
                    waiting.retain(|id, w| {
                        let keep = w.since.elapsed() < go_timeout;
                        if !keep {
                            self.counters.go_timeouts.inc();
                            warn!(id, flow = %w.flow, "no Go in time; dropping the restored socket");
                        }
                        keep
                    });
                    let report = LoadReport {
                        active: self.active.load(Ordering::Relaxed),
                        total: self.total.load(Ordering::Relaxed),
                    };
                    if let Err(e) = send(&writer, &Frame::Load(report)).await {
                        break format!("{e:#}");
                    }
                }
                r = reader.next() => match r {
                    Ok(Some(frame)) => {
                        last_heard = Instant::now();
                        if let Err(e) = self.handle(frame, &chan, &mut waiting, peer.ip()).await {
                            break format!("{e:#}");
                        }
                    }
                    Ok(None) => break "closed by the front-end".into(),
                    Err(e) => break format!("{e:#}"),
                }
            }
        };
        {
            chan.alive.store(false, Ordering::Relaxed);
            let mut fronts = self.fronts.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = fronts.get_mut(&peer.ip()) {
                v.retain(|c| !Arc::ptr_eq(c, &chan));
                if v.is_empty() {
                    fronts.remove(&peer.ip());
                }
            }
        }
        // Sockets never told to Go are dropped in repair mode: nothing is sent.
        let dropped = waiting.len();
        info!(%peer, reason = %why, dropped, "front-end channel closed");
    }

    async fn handle(
        self: &Arc<Self>,
        frame: Frame,
        chan: &Arc<Channel>,
        waiting: &mut HashMap<u64, Waiting>,
        front: IpAddr,
    ) -> Result<()> {
        let writer = &chan.writer;
        match frame {
            Frame::Handoff(h) => {
                let received = Instant::now();
                let id = h.id;
                let reply = match self.restore(&h, received) {
                    Ok(fd) => {
                        self.counters.restored.inc();
                        let restore_us =
                            u32::try_from(received.elapsed().as_micros()).unwrap_or(u32::MAX);
                        waiting.insert(
                            id,
                            Waiting {
                                fd,
                                flow: h.flow,
                                since: received,
                            },
                        );
                        let delay = self.cfg.fault.ready_delay_ms;
                        if delay > 0 {
                            let writer = Arc::clone(writer);
                            tokio::spawn(async move {
                                tokio::time::sleep(ms(delay)).await;
                                let _ = send(&writer, &Frame::Ready { id, restore_us }).await;
                            });
                            return Ok(());
                        }
                        Frame::Ready { id, restore_us }
                    }
                    Err(refusal) => {
                        self.counters.refused.inc();
                        warn!(id, flow = %h.flow, error = %refusal.reason, backend_fault = refusal.backend_fault, "refusing handoff");
                        Frame::Refused {
                            id,
                            reason: refusal.reason,
                            backend_fault: refusal.backend_fault,
                        }
                    }
                };
                send(writer, &reply).await?;
            }
            Frame::Go { id } => match waiting.remove(&id) {
                Some(w) => self.go(id, w, Arc::clone(chan), front).await,
                None => debug!(id, "Go for an unknown handoff"),
            },
            Frame::Abort { id } => {
                if waiting.remove(&id).is_some() {
                    self.counters.aborted.inc();
                }
            }
            Frame::Ping { nonce } => send(writer, &Frame::Pong { nonce }).await?,
            Frame::Pong { .. } => {}
            Frame::Goodbye { reason } => debug!(%reason, "front-end says goodbye"),
            other => warn!(
                frame = other.kind(),
                "unexpected frame from a front-end; ignored"
            ),
        }
        Ok(())
    }

    fn restore(&self, h: &Handoff, received: Instant) -> std::result::Result<OwnedFd, Refusal> {
        if *h.flow.vip.ip() != self.cfg.vip {
            // A front configured for another VIP: nothing it hands us can work.
            return Err(Refusal {
                reason: format!(
                    "flow {} is for {}, this back-end serves VIP {}",
                    h.flow,
                    h.flow.vip.ip(),
                    self.cfg.vip
                ),
                backend_fault: true,
            });
        }
        // What elapsed since the front sent the state, plus 2 ms so our first
        // segment never carries an older TSval than the front's last.
        let advance = received.elapsed() + Duration::from_millis(2);
        let local = SocketAddrV4::new(*h.flow.vip.ip(), h.flow.vip.port());
        repair::restore(&h.state, local, h.flow.client, &h.data, advance).map_err(|e| {
            // These concern this connection only: its 4-tuple is still in use
            // here (TIME_WAIT), or its bytes do not fit the receive buffer.
            let flow_only = matches!(
                e.errno(),
                Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE | libc::ENOMEM | libc::ENOBUFS)
            );
            Refusal {
                reason: format!("restore: {e}"),
                backend_fault: !flow_only,
            }
        })
    }

    /// The front let go: the connection is ours. Serve it, then report `Closed`.
    async fn go(self: &Arc<Self>, id: u64, w: Waiting, chan: Arc<Channel>, front: IpAddr) {
        let flow = w.flow;
        if let Err(e) =
            repair::go_live(w.fd.as_fd()).and_then(|()| repair::set_nonblocking(w.fd.as_fd()))
        {
            self.counters.go_failures.inc();
            warn!(id, %flow, error = %e, "could not take the socket live");
            // Dropping it in repair mode sends nothing; tell the front so it
            // stops steering the flow.
            self.report_closed(id, flow, &chan, front);
            return;
        }
        let stream = match TcpStream::from_std(std::net::TcpStream::from(w.fd)) {
            Ok(s) => s,
            Err(e) => {
                self.counters.go_failures.inc();
                warn!(id, error = %e, "registering the restored socket failed");
                self.report_closed(id, flow, &chan, front);
                return;
            }
        };
        // Responses are written whole by hyper; don't let Nagle hold the tail.
        let _ = stream.set_nodelay(true);
        self.counters.live.inc();
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        let back = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = back.content.serve(stream).await {
                debug!(id, %flow, error = %e, "connection ended with an error");
            }
            // Queued before the count drops: a drain that sees no active
            // connection also sees the batch still to be written.
            back.report_closed(id, flow, &chan, front);
            back.active.fetch_sub(1, Ordering::Relaxed);
            back.counters.closed.inc();
        });
    }

    /// Queues `Closed` for the channel that handed the connection over, or
    /// the newest channel of the same front; without one, the front ages the
    /// entry out. Reports queued within [`CLOSED_BATCH`] go in one write, by
    /// a task of their own: the caller never waits.
    fn report_closed(self: &Arc<Self>, id: u64, flow: FlowKey, chan: &Arc<Channel>, front: IpAddr) {
        let chan = if chan.alive.load(Ordering::Relaxed) {
            Some(Arc::clone(chan))
        } else {
            self.fronts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&front)
                .and_then(|v| v.last())
                .map(Arc::clone)
        };
        let Some(chan) = chan else {
            self.counters.closed_unreported.inc();
            return;
        };
        let first = {
            let mut q = chan.closed.lock().unwrap_or_else(|e| e.into_inner());
            q.push(Frame::Closed { id, flow });
            q.len() == 1
        };
        if !first {
            // The flush the first report scheduled takes this one too.
            return;
        }
        // Counted before the task starts, so a drain never misses it.
        self.flushing.fetch_add(1, Ordering::Relaxed);
        let back = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(CLOSED_BATCH).await;
            let batch = std::mem::take(&mut *chan.closed.lock().unwrap_or_else(|e| e.into_inner()));
            if send_all(&chan.writer, &batch).await.is_err() {
                back.counters.closed_unreported.add(batch.len() as u64);
            }
            back.flushing.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Why a handoff was refused, and whose fault it is.
struct Refusal {
    reason: String,
    backend_fault: bool,
}

/// Writes frames in one write, bounded in time like [`send`].
async fn send_all(writer: &Arc<Mutex<FrameWriter>>, frames: &[Frame]) -> Result<()> {
    match tokio::time::timeout(SEND_TIMEOUT, async {
        writer.lock().await.send_all(frames).await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => bail!("the front-end did not take frames within {SEND_TIMEOUT:?}"),
    }
}

/// Writes one frame, bounded in time: a front that stops reading must not
/// stall this back-end.
async fn send(writer: &Arc<Mutex<FrameWriter>>, frame: &Frame) -> Result<()> {
    match tokio::time::timeout(SEND_TIMEOUT, async {
        writer.lock().await.send(frame).await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => bail!("the front-end did not take a frame within {SEND_TIMEOUT:?}"),
    }
}
