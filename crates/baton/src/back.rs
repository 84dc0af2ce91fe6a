//! `baton back`: accepts authenticated control channels from front-ends,
//! restores each handed-off connection with TCP_REPAIR and serves HTTP on it
//! (the response goes straight to the client from the VIP on `lo`); reports
//! `Closed` for every connection and its load, periodically.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use baton_proto::frame::{Frame, Handoff, LoadReport};
use baton_proto::FlowKey;
use baton_serve::StaticFiles;
use baton_sys::repair;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore};
use tracing::{debug, info, warn};

use crate::config::{ms, BackConfig};
use crate::control::{self, FrameWriter};
use crate::stats::Counter;

/// Back-end counters.
#[derive(Debug, Default)]
pub struct BackCounters {
    pub restored: Counter,
    pub refused: Counter,
    pub live: Counter,
    pub aborted: Counter,
    pub go_timeouts: Counter,
    pub closed: Counter,
    pub auth_failures: Counter,
}

#[derive(Debug)]
struct Back {
    cfg: BackConfig,
    files: Arc<StaticFiles>,
    active: AtomicU32,
    total: std::sync::atomic::AtomicU64,
    counters: BackCounters,
}

/// Runs the back-end until `shutdown` resolves.
pub async fn run(cfg: BackConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let psk = crate::config::load_key(&cfg.key_file)?;
    let files = Arc::new(
        StaticFiles::new(&cfg.docroot)
            .with_context(|| format!("docroot {}", cfg.docroot.display()))?,
    );
    check_vip_local(cfg.vip)?;
    let listener = TcpListener::bind(cfg.control_listen)
        .await
        .with_context(|| format!("binding the control address {}", cfg.control_listen))?;
    let back = Arc::new(Back {
        files: Arc::clone(&files),
        active: AtomicU32::new(0),
        total: Default::default(),
        counters: BackCounters::default(),
        cfg,
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let direct = match back.cfg.direct_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the direct address {addr}"))?;
            info!(%addr, "serving plain HTTP (direct)");
            let mut rx = stop_rx.clone();
            Some(tokio::spawn(baton_serve::serve_listener(
                l,
                Arc::clone(&files),
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
            )))
        }
        None => None,
    };
    info!(control = %back.cfg.control_listen, vip = %back.cfg.vip, "back-end ready for handoffs");
    let fronts = Arc::new(Semaphore::new(back.cfg.max_fronts));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let Ok(permit) = Arc::clone(&fronts).try_acquire_owned() else {
                        warn!(%peer, "too many front-ends; closing the new channel");
                        continue;
                    };
                    let back = Arc::clone(&back);
                    let psk = psk.clone();
                    let stop = stop_rx.clone();
                    tokio::spawn(async move {
                        back.session(stream, peer, &psk, stop).await;
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
    while back.active.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = back.active.load(Ordering::Relaxed);
    if left > 0 {
        warn!(left, "drain timeout: closing the remaining connections");
    }
    if let Some(d) = direct {
        let _ = d.await;
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

impl Back {
    async fn session(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        psk: &baton_proto::auth::Psk,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let (writer, mut reader) = match control::accept(stream, psk, Duration::from_secs(5)).await
        {
            Ok(pair) => pair,
            Err(e) => {
                self.counters.auth_failures.inc();
                warn!(%peer, error = %format!("{e:#}"), "control channel rejected");
                return;
            }
        };
        info!(%peer, "front-end connected");
        let writer = Arc::new(Mutex::new(writer));
        let mut waiting: HashMap<u64, Waiting> = HashMap::new();
        let mut load = tokio::time::interval(ms(self.cfg.load_report_ms));
        let go_timeout = ms(self.cfg.go_timeout_ms);
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
                        if let Err(e) = self.handle(frame, &writer, &mut waiting).await {
                            break format!("{e:#}");
                        }
                    }
                    Ok(None) => break "closed by the front-end".into(),
                    Err(e) => break format!("{e:#}"),
                }
            }
        };
        // Sockets never told to Go are dropped in repair mode: nothing is sent.
        let dropped = waiting.len();
        info!(%peer, reason = %why, dropped, "front-end channel closed");
    }

    async fn handle(
        self: &Arc<Self>,
        frame: Frame,
        writer: &Arc<Mutex<FrameWriter>>,
        waiting: &mut HashMap<u64, Waiting>,
    ) -> Result<()> {
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
                    Err(e) => {
                        self.counters.refused.inc();
                        warn!(id, flow = %h.flow, error = %format!("{e:#}"), "refusing handoff");
                        Frame::Refused {
                            id,
                            reason: format!("{e:#}"),
                        }
                    }
                };
                send(writer, &reply).await?;
            }
            Frame::Go { id } => match waiting.remove(&id) {
                Some(w) => self.go(id, w, Arc::clone(writer)),
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

    fn restore(&self, h: &Handoff, received: Instant) -> Result<OwnedFd> {
        if *h.flow.vip.ip() != self.cfg.vip {
            bail!(
                "flow {} is for {}, this back-end serves VIP {}",
                h.flow,
                h.flow.vip.ip(),
                self.cfg.vip
            );
        }
        // What elapsed since the front read the timestamp, rounded up, plus 1 ms
        // so our first segment never carries an older TSval than the front's last.
        let advance = u32::try_from(received.elapsed().as_millis())
            .unwrap_or(u32::MAX)
            .saturating_add(2);
        let local = SocketAddrV4::new(*h.flow.vip.ip(), h.flow.vip.port());
        repair::restore(&h.state, local, h.flow.client, &h.data, advance).context("restore")
    }

    /// The front let go: the connection is ours. Serve it, then report `Closed`.
    fn go(self: &Arc<Self>, id: u64, w: Waiting, writer: Arc<Mutex<FrameWriter>>) {
        if let Err(e) =
            repair::go_live(w.fd.as_fd()).and_then(|()| repair::set_nonblocking(w.fd.as_fd()))
        {
            warn!(id, flow = %w.flow, error = %e, "could not take the socket live");
            return;
        }
        let std_stream = std::net::TcpStream::from(w.fd);
        let stream = match TcpStream::from_std(std_stream) {
            Ok(s) => s,
            Err(e) => {
                warn!(id, error = %e, "registering the restored socket failed");
                return;
            }
        };
        // Responses are written whole by hyper; don't let Nagle hold the tail.
        let _ = stream.set_nodelay(true);
        self.counters.live.inc();
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        let back = Arc::clone(self);
        let flow = w.flow;
        tokio::spawn(async move {
            if let Err(e) = baton_serve::serve_connection(stream, Arc::clone(&back.files)).await {
                debug!(id, %flow, error = %e, "connection ended with an error");
            }
            back.active.fetch_sub(1, Ordering::Relaxed);
            back.counters.closed.inc();
            // If the channel is gone the front ages the entry out instead.
            let _ = send(&writer, &Frame::Closed { id, flow }).await;
        });
    }
}

async fn send(writer: &Arc<Mutex<FrameWriter>>, frame: &Frame) -> Result<()> {
    writer.lock().await.send(frame).await
}
