//! `baton back`: accepts authenticated control channels from front-ends,
//! restores each handed-off connection with TCP_REPAIR, takes it live at
//! once and serves HTTP on it (the response goes straight to the client from
//! the VIP on `lo`); reports `Live`, then `Closed` for every connection, and
//! its load, periodically. The decisions (what to restore, which channel
//! hears which report, what a new channel is told it holds) are the sans-IO
//! [`BackEngine`]'s; this module carries them out.
//!
//! Content comes from a docroot (static files) or, in caching mode, from an
//! in-memory cache in front of an origin server.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use baton_cache::{CachingProxy, ObjectCache, ProxyLimits};
use baton_proto::frame::{Frame, Handoff, LoadReport};
use baton_proto::handoff::{BackAction, BackEngine, BackEvent, ChannelId, Refusal};
use baton_proto::{Incoming, Link, ToFront};
use baton_serve::StaticFiles;
use baton_sys::repair;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore};
use tracing::{debug, info, warn};

use crate::config::{ms, BackConfig};
use crate::control::{self, FrameWriter};
use crate::stats::Counter;

/// How long an unauthenticated peer may take to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Handshakes in progress at once: peers that have not proved the key
/// cannot take the slots of real front-ends (`max_fronts`), and share
/// these fairly by address (see `preauth`).
const MAX_HANDSHAKES: usize = 16;
/// A frame that cannot be written within this ends the channel.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Back-end counters.
#[derive(Debug, Default)]
pub struct BackCounters {
    pub restored: Counter,
    pub refused: Counter,
    pub live: Counter,
    /// Live connections reset because the front had given up on them.
    pub aborted: Counter,
    /// Handoffs cancelled by an `Abort` read with them (never restored).
    pub cancelled: Counter,
    pub closed: Counter,
    pub closed_unreported: Counter,
    pub auth_failures: Counter,
    /// Handshakes closed unfinished to make room for a newer connection
    /// (every slot was taken; see `preauth`).
    pub handshakes_evicted: Counter,
    /// Handed-off connections that continue a TLS session.
    pub tls_sessions: Counter,
    /// TLS 1.3 key updates in ended sessions: the client's (its sending
    /// keys, which this side receives with) and this side's.
    pub tls_key_updates_rx: Counter,
    pub tls_key_updates_tx: Counter,
    /// `Mirror`, `Unmirror` and `Mirroring` frames written: what other
    /// fronts were told of each front's connections.
    pub mirror_frames: Counter,
}

/// What the back-end serves.
#[derive(Debug, Clone)]
enum Content {
    Files(Arc<StaticFiles>),
    Cache(Arc<CachingProxy>),
}

impl Content {
    async fn serve<I>(&self, stream: I) -> std::result::Result<(), String>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
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
    writer: Mutex<FrameWriter>,
    /// Frames the engine queued, in its order; whoever holds `writer` next
    /// writes them all in one write.
    outbox: std::sync::Mutex<Vec<Frame>>,
}

/// How long a `Closed` report may wait for others to share its write. The
/// front needs them only to age its forwarding entries (after a grace of
/// seconds) and to correct its load estimate; one write per report would
/// wake the front once more per connection.
const CLOSED_BATCH: Duration = Duration::from_millis(5);

/// A TLS session being served; its key updates are counted when it ends.
struct CountedTls<S: AsyncRead + AsyncWrite + Unpin> {
    inner: baton_tls::TlsStream<S>,
    back: Arc<Back>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Drop for CountedTls<S> {
    fn drop(&mut self) {
        let k = self.inner.layer().key_updates();
        self.back.counters.tls_key_updates_rx.add(k.rx);
        self.back.counters.tls_key_updates_tx.add(k.tx);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for CountedTls<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for CountedTls<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A connection being served: what it takes to reset it.
#[derive(Debug)]
struct Serving {
    /// A second descriptor of the socket, to set a zero linger on.
    fd: OwnedFd,
    task: tokio::task::AbortHandle,
}

#[derive(Debug)]
struct Back {
    /// The configuration at start (addresses, key, limits fixed for the
    /// process's life).
    cfg: BackConfig,
    /// The configuration in force: a reload replaces it (`docroot`,
    /// `load_report_ms`, `front_silence_ms`, `drain_timeout_ms`).
    live: std::sync::RwLock<Arc<BackConfig>>,
    /// What is served; a reload of `docroot` replaces it.
    content: std::sync::RwLock<Content>,
    reloads_ok: crate::stats::Counter,
    reloads_failed: crate::stats::Counter,
    source: std::sync::Mutex<Option<Source>>,
    counters: BackCounters,
    /// The handoff protocol's state; a leaf lock.
    engine: std::sync::Mutex<BackEngine>,
    /// Serialises carrying out the engine's actions (lock order: exec, then
    /// channels/serving, then engine).
    exec: std::sync::Mutex<()>,
    channels: std::sync::Mutex<HashMap<ChannelId, Arc<Channel>>>,
    serving: std::sync::Mutex<HashMap<(IpAddr, u64), Serving>>,
    next_channel: AtomicU64,
    timer: crate::deadline::DeadlineTimer,
    /// The kernel TLS probe at start. Sessions continue in userspace either
    /// way for now (see `docs/tls.md`).
    kernel_tls: std::result::Result<(), String>,
}

/// Re-reads the back-end's configuration (the file, with the command
/// line's overrides, validated).
pub type BackSource = Box<dyn Fn() -> Result<BackConfig> + Send + Sync>;

/// A [`BackSource`], for the `Debug` of the back-end's state.
struct Source(BackSource);

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Source(..)")
    }
}

/// Runs the back-end until `shutdown` resolves. With `source`, SIGHUP (and
/// `POST /reload` on the admin address) reloads the configuration.
pub async fn run(
    cfg: BackConfig,
    shutdown: impl std::future::Future<Output = ()>,
    source: Option<BackSource>,
) -> Result<()> {
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
        live: std::sync::RwLock::new(Arc::new(cfg.clone())),
        content: std::sync::RwLock::new(content),
        reloads_ok: crate::stats::Counter::default(),
        reloads_failed: crate::stats::Counter::default(),
        source: std::sync::Mutex::new(source.map(Source)),
        counters: BackCounters::default(),
        engine: std::sync::Mutex::new(BackEngine::new(cfg.vip, CLOSED_BATCH)),
        exec: std::sync::Mutex::new(()),
        channels: std::sync::Mutex::default(),
        serving: std::sync::Mutex::default(),
        next_channel: AtomicU64::new(1),
        timer: crate::deadline::DeadlineTimer::default(),
        kernel_tls: baton_sys::sockopt::kernel_tls(),
        cfg,
    });
    let timers = tokio::spawn(Arc::clone(&back).timers());
    let hup = tokio::spawn({
        let back = Arc::clone(&back);
        async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                let _ = back.reload();
            }
        }
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
    let direct_tls = match &back.cfg.direct_tls {
        Some(t) => {
            let tls = crate::direct_tls::server_config(t)?;
            let l = TcpListener::bind(t.listen)
                .await
                .with_context(|| format!("binding the direct TLS address {}", t.listen))?;
            info!(addr = %t.listen, "serving HTTPS (direct)");
            Some(tokio::spawn(Arc::clone(&back).direct_tls(
                l,
                tls,
                stop_rx.clone(),
            )))
        }
        None => None,
    };
    let admin = back
        .cfg
        .admin_listen
        .map(|addr| tokio::spawn(Arc::clone(&back).admin(addr)));
    info!(control = %back.cfg.control_listen, vip = %back.cfg.vip, "back-end ready for handoffs");
    let handshakes = crate::preauth::Slots::new(MAX_HANDSHAKES);
    let fronts = Arc::new(Semaphore::new(back.cfg.max_fronts));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    // All slots taken: the address holding the most gives its
                    // oldest handshake up (see `preauth`).
                    let (mut slot, evicted) = handshakes.acquire(peer.ip());
                    if evicted {
                        back.counters.handshakes_evicted.inc();
                    }
                    let back = Arc::clone(&back);
                    let psk = psk.clone();
                    let stop = stop_rx.clone();
                    let fronts = Arc::clone(&fronts);
                    tokio::spawn(async move {
                        let pair = tokio::select! {
                            r = control::accept(stream, &psk, HANDSHAKE_TIMEOUT) => Some(r),
                            () = slot.evicted() => None,
                        };
                        drop(slot);
                        let (writer, reader) = match pair {
                            Some(Ok(p)) => p,
                            Some(Err(e)) => {
                                back.counters.auth_failures.inc();
                                warn!(%peer, error = %format!("{e:#}"), "control channel rejected");
                                return;
                            }
                            None => {
                                debug!(%peer, "handshake closed to make room for a newer one");
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
    let active = back.lock_engine().active();
    info!(active, "back-end draining");
    hup.abort();
    let deadline = Instant::now() + ms(back.live_cfg().drain_timeout_ms);
    let busy = || {
        let e = back.lock_engine();
        e.active() > 0 || e.pending_reports() > 0
    };
    while busy() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = back.lock_engine().active();
    if left > 0 {
        warn!(left, "drain timeout: closing the remaining connections");
    }
    if let Some(d) = direct {
        let _ = d.await;
    }
    if let Some(d) = direct_tls {
        let _ = d.await;
    }
    if let Some(a) = admin {
        a.abort();
    }
    timers.abort();
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

/// `/stats` of a back-end.
#[derive(Debug, Serialize)]
pub struct BackStats {
    pub active: u32,
    pub total: u64,
    pub restored: u64,
    pub refused: u64,
    pub live: u64,
    pub aborted: u64,
    pub cancelled: u64,
    pub closed: u64,
    pub closed_unreported: u64,
    pub auth_failures: u64,
    pub handshakes_evicted: u64,
    /// Handed-off connections that continued a TLS session.
    pub tls_sessions: u64,
    /// TLS 1.3 key updates in sessions that ended: received, and sent.
    pub tls_key_updates_rx: u64,
    pub tls_key_updates_tx: u64,
    /// `Mirror`, `Unmirror` and `Mirroring` frames written (every front
    /// hears of every connection served here).
    pub mirror_frames: u64,
    /// How TLS sessions are continued: "userspace" (the record layer in
    /// this process). Kernel TLS is probed at start; see `tls_kernel`.
    pub tls_record_layer: &'static str,
    /// The kernel TLS probe: "available", or why not.
    pub tls_kernel: String,
    /// Configuration reloads that took effect, and those refused.
    pub reloads_ok: u64,
    pub reloads_failed: u64,
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
    fn content(&self) -> Content {
        self.content
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn live_cfg(&self) -> Arc<BackConfig> {
        Arc::clone(&self.live.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Re-reads the configuration and swaps in what may change while
    /// serving (`docroot`, `load_report_ms`, `front_silence_ms`,
    /// `drain_timeout_ms`), or keeps the one in force and says why.
    /// Connections being served keep the content they started with.
    fn reload(&self) -> std::result::Result<String, String> {
        let r = self.try_reload();
        match &r {
            Ok(s) => {
                self.reloads_ok.inc();
                info!(summary = %s, "configuration reloaded");
            }
            Err(why) => {
                self.reloads_failed.inc();
                warn!(%why, "configuration not reloaded; the one in force stays");
            }
        }
        r
    }

    fn try_reload(&self) -> std::result::Result<String, String> {
        let new = {
            let source = self.source.lock().unwrap_or_else(|e| e.into_inner());
            let Some(Source(load)) = source.as_ref() else {
                return Err("this back-end has no configuration file to reload".into());
            };
            load().map_err(|e| format!("{e:#}"))?
        };
        let old = &self.cfg;
        let mut fixed = Vec::new();
        for (name, same) in [
            ("control_listen", new.control_listen == old.control_listen),
            ("vip", new.vip == old.vip),
            ("key_file", new.key_file == old.key_file),
            ("direct_listen", new.direct_listen == old.direct_listen),
            ("direct_tls", new.direct_tls == old.direct_tls),
            ("max_fronts", new.max_fronts == old.max_fronts),
            ("workers", new.workers == old.workers),
            ("origin", new.origin == old.origin),
            ("cache_bytes", new.cache_bytes == old.cache_bytes),
            ("admin_listen", new.admin_listen == old.admin_listen),
        ] {
            if !same {
                fixed.push(name);
            }
        }
        if !fixed.is_empty() {
            return Err(format!(
                "{} cannot change without a restart; nothing changed",
                fixed.join(", ")
            ));
        }
        let live = self.live_cfg();
        let mut changed = Vec::new();
        let content = if new.docroot != live.docroot && new.origin.is_none() {
            let files = StaticFiles::new(&new.docroot)
                .map_err(|e| format!("docroot {}: {e:#}", new.docroot.display()))?;
            changed.push(format!("docroot {}", new.docroot.display()));
            Some(Content::Files(Arc::new(files)))
        } else {
            None
        };
        for (name, a, b) in [
            ("load_report_ms", live.load_report_ms, new.load_report_ms),
            (
                "front_silence_ms",
                live.front_silence_ms,
                new.front_silence_ms,
            ),
            (
                "drain_timeout_ms",
                live.drain_timeout_ms,
                new.drain_timeout_ms,
            ),
            (
                "tls_key_update_bytes",
                live.tls_key_update_bytes,
                new.tls_key_update_bytes,
            ),
        ] {
            if a != b {
                changed.push(format!("{name} {a} -> {b}"));
            }
        }
        if let Some(c) = content {
            *self.content.write().unwrap_or_else(|e| e.into_inner()) = c;
        }
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        if changed.is_empty() {
            changed.push("nothing changed".into());
        }
        Ok(changed.join(", "))
    }

    fn snapshot(&self) -> BackStats {
        let c = &self.counters;
        let (cache, files) = match &self.content() {
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
        let (active, total) = {
            let e = self.lock_engine();
            (u32::try_from(e.active()).unwrap_or(u32::MAX), e.total())
        };
        BackStats {
            active,
            total,
            restored: c.restored.get(),
            refused: c.refused.get(),
            live: c.live.get(),
            aborted: c.aborted.get(),
            cancelled: c.cancelled.get(),
            closed: c.closed.get(),
            closed_unreported: c.closed_unreported.get(),
            auth_failures: c.auth_failures.get(),
            handshakes_evicted: c.handshakes_evicted.get(),
            tls_sessions: c.tls_sessions.get(),
            tls_key_updates_rx: c.tls_key_updates_rx.get(),
            tls_key_updates_tx: c.tls_key_updates_tx.get(),
            mirror_frames: c.mirror_frames.get(),
            tls_record_layer: "userspace",
            tls_kernel: match &self.kernel_tls {
                Ok(()) => "available".into(),
                Err(why) => why.clone(),
            },
            reloads_ok: self.reloads_ok.get(),
            reloads_failed: self.reloads_failed.get(),
            fronts: self.lock_engine().channels(),
            cache,
            files,
        }
    }

    /// `GET /stats` on the admin address.
    async fn admin(self: Arc<Self>, addr: SocketAddr) {
        crate::admin::serve_with(addr, move |req| {
            match (req.method() == http::Method::GET, req.uri().path()) {
                (true, "/stats") => crate::admin::json(&self.snapshot()),
                (true, "/metrics") => crate::admin::metrics(Metrics(Arc::clone(&self))),
                (false, "/reload") if req.method() == http::Method::POST => match self.reload() {
                    Ok(s) => crate::admin::text(http::StatusCode::OK, &format!("reloaded: {s}\n")),
                    Err(why) => crate::admin::text(
                        http::StatusCode::UNPROCESSABLE_ENTITY,
                        &format!("not reloaded: {why}\n"),
                    ),
                },
                _ => crate::admin::text(
                    http::StatusCode::NOT_FOUND,
                    "try GET /stats or /metrics, POST /reload\n",
                ),
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
                        let content = self.content();
                        tokio::spawn(async move {
                            let _ = content.serve(stream).await;
                        });
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }
    }

    /// The direct HTTPS port (`[direct_tls]`, a baseline for benchmarks):
    /// same content, TLS terminated here.
    async fn direct_tls(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                r = listener.accept() => match r {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        let content = self.content();
                        let tls = Arc::clone(&tls);
                        tokio::spawn(async move {
                            match crate::direct_tls::DirectTlsStream::accept(stream, tls).await {
                                Ok(s) => {
                                    let _ = content.serve(s).await;
                                }
                                Err(e) => debug!(error = %e, "direct TLS handshake failed"),
                            }
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
        let id = self.next_channel.fetch_add(1, Ordering::Relaxed);
        let chan = Arc::new(Channel {
            writer: Mutex::new(writer),
            outbox: std::sync::Mutex::default(),
        });
        self.lock_channels().insert(id, Arc::clone(&chan));
        // Fronts are told apart by address (IPv4 seen through a dual-stack
        // socket is the same front as IPv4).
        let front = peer.ip().to_canonical();
        // First thing on the channel: which of this front's handoffs we hold,
        // then which connections of other fronts.
        let flush = self.drive(|e, _| e.handle_channel_up(id, front));
        self.apply(flush).await;
        let live = self.live_cfg();
        let mut load = tokio::time::interval(ms(live.load_report_ms));
        let silence = ms(live.front_silence_ms);
        let mut last_heard = Instant::now();
        let mut said_goodbye = false;
        let why = loop {
            tokio::select! {
                r = stop.changed(), if !said_goodbye => {
                    said_goodbye = true;
                    if r.is_ok() {
                        // Keep the channel: Closed reports of draining
                        // connections still have to reach the front.
                        let flush = self.drive(|e, _| e.handle_drain());
                        self.apply(flush).await;
                        let _ = self.send(&chan, Frame::Goodbye { reason: "back-end shutting down".into() }).await;
                    }
                }
                _ = load.tick() => {
                    if last_heard.elapsed() > silence {
                        break format!("silent for {silence:?}");
                    }
                    let report = {
                        let e = self.lock_engine();
                        LoadReport {
                            active: u32::try_from(e.active()).unwrap_or(u32::MAX),
                            total: e.total(),
                        }
                    };
                    if let Err(e) = self.send(&chan, Frame::Load(report)).await {
                        break format!("{e:#}");
                    }
                }
                r = reader.next() => match r {
                    Ok(Some(frame)) => {
                        last_heard = Instant::now();
                        // Every frame already read goes to the engine before
                        // anything is carried out: an Abort read with its
                        // Handoff cancels it before the restore.
                        let mut frames = vec![frame];
                        loop {
                            match reader.buffered() {
                                Ok(Some(f)) => frames.push(f),
                                Ok(None) => break,
                                Err(e) => return self.end_session(id, peer, &format!("{e:#}")).await,
                            }
                        }
                        if let Err(e) = self.frames(id, &chan, frames).await {
                            break format!("{e:#}");
                        }
                    }
                    Ok(None) => break "closed by the front-end".into(),
                    Err(e) => break format!("{e:#}"),
                }
            }
        };
        self.end_session(id, peer, &why).await;
    }

    async fn end_session(self: &Arc<Self>, id: ChannelId, peer: SocketAddr, why: &str) {
        self.lock_channels().remove(&id);
        let flush = self.drive(|e, now| e.handle_channel_down(now, id));
        self.apply(flush).await;
        info!(%peer, reason = %why, "front-end channel closed");
    }

    /// Frames from one read of a channel.
    async fn frames(
        self: &Arc<Self>,
        id: ChannelId,
        chan: &Channel,
        frames: Vec<Frame>,
    ) -> Result<()> {
        let mut handoff = Vec::new();
        for f in frames {
            match f.into_back()? {
                Incoming::Handoff(f) => handoff.push(f),
                Incoming::Link(Link::Ping { nonce }) => {
                    self.send(chan, Frame::Pong { nonce }).await?
                }
                Incoming::Link(Link::Goodbye { reason }) => {
                    debug!(%reason, "front-end says goodbye")
                }
                Incoming::Link(Link::Pong { .. } | Link::Load(_)) => {}
            }
        }
        if !handoff.is_empty() {
            let flush = self.drive(|e, now| {
                for f in handoff {
                    e.handle_frame(now, id, f);
                }
            });
            // The connections just restored answer their clients first (their
            // first read and write need no trip through the event loop), then
            // `Live` goes: on a virtual link, sending it runs the front's
            // receive path on this CPU, before the client's first byte.
            tokio::task::yield_now().await;
            self.apply(flush).await;
        }
        Ok(())
    }

    /// Feeds the engine one input and carries out everything it asks for.
    /// Returns the channels with frames queued (write them with `apply`).
    fn drive(
        self: &Arc<Self>,
        input: impl FnOnce(&mut BackEngine, Instant),
    ) -> std::collections::BTreeSet<ChannelId> {
        let _exec = self.exec.lock().unwrap_or_else(|e| e.into_inner());
        let mut flush = std::collections::BTreeSet::new();
        let mut queue = std::collections::VecDeque::new();
        {
            let mut e = self.lock_engine();
            input(&mut e, Instant::now());
            queue.extend(std::iter::from_fn(|| e.poll_action()));
        }
        while let Some(action) = queue.pop_front() {
            match action {
                BackAction::Restore { channel, handoff } => {
                    let front = self.front_of(channel);
                    let result = self.restore_and_serve(&handoff, front);
                    if let Err(r) = &result {
                        self.counters.refused.inc();
                        warn!(id = handoff.id, flow = %handoff.flow, error = %r.reason, backend_fault = r.backend_fault, "refusing handoff");
                    }
                    let mut e = self.lock_engine();
                    if let Some(front) = front {
                        let now = Instant::now();
                        e.handle_restored(now, channel, front, handoff.id, handoff.flow, result);
                    }
                    queue.extend(std::iter::from_fn(|| e.poll_action()));
                }
                BackAction::Send { channel, frame } => {
                    if matches!(
                        frame,
                        ToFront::Mirror { .. }
                            | ToFront::Unmirror { .. }
                            | ToFront::Mirroring { .. }
                    ) {
                        self.counters.mirror_frames.inc();
                    }
                    if let Some(c) = self.lock_channels().get(&channel) {
                        c.outbox
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(frame.into());
                        flush.insert(channel);
                    }
                }
                BackAction::Reset { front, id } => {
                    if let Some(s) = self.lock_serving().remove(&(front, id)) {
                        // The last descriptor closes with a zero linger: a reset.
                        let _ = baton_sys::sockopt::set_linger_zero(s.fd.as_fd());
                        s.task.abort();
                    }
                }
            }
        }
        let mut e = self.lock_engine();
        while let Some(ev) = e.poll_event() {
            match ev {
                BackEvent::Refused { id, reason } => {
                    self.counters.refused.inc();
                    warn!(id, %reason, "refusing handoff");
                }
                BackEvent::Cancelled { .. } => self.counters.cancelled.inc(),
                BackEvent::Aborted { .. } => self.counters.aborted.inc(),
                BackEvent::Unreported { .. } => self.counters.closed_unreported.inc(),
                BackEvent::Stale { kind } => debug!(kind, "frame about an unknown handoff"),
            }
        }
        self.timer.rearm(e.poll_timeout());
        flush
    }

    /// Writes the frames queued on these channels.
    async fn apply(&self, flush: std::collections::BTreeSet<ChannelId>) {
        for id in flush {
            let chan = self.lock_channels().get(&id).map(Arc::clone);
            if let Some(c) = chan {
                if let Err(e) = self.flush(&c).await {
                    debug!(channel = id, error = %format!("{e:#}"), "control-channel write failed");
                }
            }
        }
    }

    /// Fires the engine's deadlines (the `Closed` batches).
    async fn timers(self: Arc<Self>) {
        loop {
            let next = self.lock_engine().poll_timeout();
            if self.timer.sleep(next).await {
                let flush = self.drive(|e, now| e.handle_timeout(now));
                self.apply(flush).await;
            }
        }
    }

    fn front_of(&self, channel: ChannelId) -> Option<IpAddr> {
        self.lock_engine().front_of(channel)
    }

    /// Restores the connection, takes it live and starts serving it.
    fn restore_and_serve(
        self: &Arc<Self>,
        h: &Handoff,
        front: Option<IpAddr>,
    ) -> std::result::Result<u32, Refusal> {
        let received = Instant::now();
        let front = front.ok_or_else(|| Refusal {
            reason: "channel gone".into(),
            backend_fault: false,
        })?;
        // A TLS session is checked before anything is restored: a blob
        // that does not decode is this connection's problem only.
        let tls = if h.tls.is_empty() {
            None
        } else {
            let layer = baton_tls::Carried::decode(&h.tls)
                .and_then(|c| baton_tls::RecordLayer::new(&c.state).map(|l| (l, c.plaintext)))
                .map_err(|e| Refusal {
                    reason: format!("TLS session: {e}"),
                    backend_fault: false,
                })?;
            Some(layer)
        };
        // What elapsed in transit is not known here; 2 ms keeps our first
        // segment's TSval from going backwards against the front's last.
        let advance = Duration::from_millis(2);
        let local = SocketAddrV4::new(*h.flow.vip.ip(), h.flow.vip.port());
        let fd = repair::restore(&h.state, local, h.flow.client, &h.data, &h.sent, advance)
            .map_err(|e| {
                // These concern this connection only: its 4-tuple is still in
                // use here (TIME_WAIT), or its bytes do not fit the buffer.
                let flow_only = matches!(
                    e.errno(),
                    Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE | libc::ENOMEM | libc::ENOBUFS)
                );
                Refusal {
                    reason: format!("restore: {e}"),
                    backend_fault: !flow_only,
                }
            })?;
        // Still in repair mode until here: a failure sends nothing.
        let refusal = |what: &str, e: String| Refusal {
            reason: format!("{what}: {e}"),
            backend_fault: false,
        };
        let dup = fd.try_clone().map_err(|e| refusal("dup", e.to_string()))?;
        repair::go_live(fd.as_fd())
            .and_then(|()| repair::set_nonblocking(fd.as_fd()))
            .map_err(|e| refusal("going live", e.to_string()))?;
        let restore_us = u32::try_from(received.elapsed().as_micros()).unwrap_or(u32::MAX);
        self.counters.restored.inc();
        let stream = match TcpStream::from_std(std::net::TcpStream::from(fd)) {
            Ok(s) => s,
            Err(e) => {
                // Live already: the engine must count it, and report Closed.
                warn!(id = h.id, error = %e, "registering the restored socket failed");
                let back = Arc::clone(self);
                let id = h.id;
                tokio::spawn(async move { back.closed(front, id).await });
                return Ok(restore_us);
            }
        };
        // Responses are written whole by hyper; don't let Nagle hold the tail.
        let _ = stream.set_nodelay(true);
        self.counters.live.inc();
        let back = Arc::clone(self);
        let (id, flow) = (h.id, h.flow);
        let task = tokio::spawn(async move {
            let content = back.content();
            let stream = crate::eager::Eager::new(stream);
            let served = match tls {
                None => content.serve(stream).await,
                Some((layer, plaintext)) => {
                    back.counters.tls_sessions.inc();
                    let mut tls = baton_tls::TlsStream::new(stream, layer, plaintext);
                    tls.set_key_update_interval(back.live_cfg().tls_key_update_bytes);
                    content
                        .serve(CountedTls {
                            inner: tls,
                            back: Arc::clone(&back),
                        })
                        .await
                }
            };
            if let Err(e) = served {
                debug!(id, %flow, error = %e, "connection ended with an error");
            }
            back.closed(front, id).await;
        });
        self.lock_serving().insert(
            (front, id),
            Serving {
                fd: dup,
                task: task.abort_handle(),
            },
        );
        Ok(restore_us)
    }

    /// A served connection ended: the engine queues its `Closed` report.
    async fn closed(self: &Arc<Self>, front: IpAddr, id: u64) {
        self.counters.closed.inc();
        let flush = self.drive(|e, now| e.handle_closed(now, front, id));
        // After the drive: the one that restored it has finished (exec).
        self.lock_serving().remove(&(front, id));
        self.apply(flush).await;
    }

    /// Sends one housekeeping frame after whatever the engine queued.
    async fn send(&self, chan: &Channel, frame: Frame) -> Result<()> {
        chan.outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(frame);
        self.flush(chan).await
    }

    /// Writes every queued frame in one write, bounded in time: a front
    /// that stops reading must not stall this back-end.
    async fn flush(&self, chan: &Channel) -> Result<()> {
        match tokio::time::timeout(SEND_TIMEOUT, async {
            let mut w = chan.writer.lock().await;
            let frames =
                std::mem::take(&mut *chan.outbox.lock().unwrap_or_else(|e| e.into_inner()));
            if frames.is_empty() {
                return Ok(());
            }
            w.send_all(&frames).await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => bail!("the front-end did not take frames within {SEND_TIMEOUT:?}"),
        }
    }

    fn lock_engine(&self) -> std::sync::MutexGuard<'_, BackEngine> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_channels(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelId, Arc<Channel>>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_serving(&self) -> std::sync::MutexGuard<'_, HashMap<(IpAddr, u64), Serving>> {
        self.serving.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The back-end's `/metrics` (see [`crate::metrics`]), read from
/// [`Back::snapshot`] at each scrape.
#[derive(Debug)]
struct Metrics(Arc<Back>);

impl prometheus_client::collector::Collector for Metrics {
    fn encode(&self, mut enc: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use crate::metrics::{as_gauge, counter, counters_by, gauge};
        let s = self.0.snapshot();
        let e = &mut enc;
        counters_by(
            e,
            "baton_back_handoffs",
            "Handoffs by what became of them",
            "result",
            &[
                ("restored", s.restored),
                ("refused", s.refused),
                ("live", s.live),
                ("aborted", s.aborted),
                ("cancelled", s.cancelled),
            ],
        )?;
        counter(
            e,
            "baton_back_connections_closed",
            "Handed-off connections that ended",
            s.closed,
        )?;
        counter(
            e,
            "baton_back_connections_closed_unreported",
            "Ended connections whose Closed report found no channel",
            s.closed_unreported,
        )?;
        gauge(
            e,
            "baton_back_connections_active",
            "Handed-off connections being served now",
            i64::from(s.active),
        )?;
        counter(
            e,
            "baton_back_control_auth_failures",
            "Control connections that failed to authenticate",
            s.auth_failures,
        )?;
        counter(
            e,
            "baton_back_control_handshakes_evicted",
            "Unfinished handshakes closed to make room for newer connections",
            s.handshakes_evicted,
        )?;
        counter(
            e,
            "baton_back_tls_sessions",
            "Handed-off connections that continued a TLS session",
            s.tls_sessions,
        )?;
        counters_by(
            e,
            "baton_back_tls_key_updates",
            "TLS 1.3 key updates in ended sessions, by direction",
            "direction",
            &[("rx", s.tls_key_updates_rx), ("tx", s.tls_key_updates_tx)],
        )?;
        counter(
            e,
            "baton_back_mirror_frames",
            "Mirror, Unmirror and Mirroring frames written to the fronts",
            s.mirror_frames,
        )?;
        counters_by(
            e,
            "baton_back_config_reloads",
            "Configuration reloads, by result",
            "result",
            &[("ok", s.reloads_ok), ("failed", s.reloads_failed)],
        )?;
        gauge(
            e,
            "baton_back_fronts_connected",
            "Front-ends with a control channel now",
            as_gauge(s.fronts),
        )?;
        if let Some(f) = &s.files {
            counter(
                e,
                "baton_back_http_requests",
                "HTTP requests served from files",
                f.requests,
            )?;
            counter(
                e,
                "baton_back_http_response_bytes",
                "Response body bytes sent",
                f.bytes_sent,
            )?;
            counters_by(
                e,
                "baton_back_http_responses",
                "HTTP responses by class",
                "class",
                &[("2xx", f.responses_2xx), ("4xx", f.responses_4xx)],
            )?;
            counter(
                e,
                "baton_back_http_aborted",
                "Responses cut short by the client",
                f.aborted,
            )?;
        }
        if let Some(c) = &s.cache {
            counters_by(
                e,
                "baton_back_cache_lookups",
                "Cache lookups by result",
                "result",
                &[("hit", c.hits), ("miss", c.misses)],
            )?;
            counter(
                e,
                "baton_back_cache_inserts",
                "Objects stored in the cache",
                c.inserts,
            )?;
            counter(
                e,
                "baton_back_cache_evictions",
                "Objects evicted from the cache",
                c.evictions,
            )?;
            counter(
                e,
                "baton_back_cache_too_large",
                "Objects too large to cache",
                c.too_large,
            )?;
            gauge(
                e,
                "baton_back_cache_bytes",
                "Bytes cached now",
                as_gauge(c.bytes_cached),
            )?;
            gauge(
                e,
                "baton_back_cache_capacity_bytes",
                "The cache's size",
                as_gauge(c.capacity),
            )?;
            gauge(
                e,
                "baton_back_cache_objects",
                "Objects cached now",
                as_gauge(c.objects),
            )?;
            counter(
                e,
                "baton_back_origin_requests",
                "Requests to the origin",
                c.origin_requests,
            )?;
            counter(
                e,
                "baton_back_origin_errors",
                "Failed requests to the origin",
                c.origin_errors,
            )?;
            counter(
                e,
                "baton_back_origin_bytes",
                "Bytes fetched from the origin",
                c.origin_bytes,
            )?;
        }
        Ok(())
    }
}
