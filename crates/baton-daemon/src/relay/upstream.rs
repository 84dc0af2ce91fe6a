//! Idle back-end connections kept for the next requests, per back-end
//! address (nginx's `keepalive` in an upstream block).
//!
//! Taken last-in first-out: the most recently used connection is the least
//! likely to have been closed by the back-end's keep-alive timeout, and the
//! oldest ones age out. A connection is only ever put back between two
//! exchanges (no request outstanding, no byte of a response unread), so
//! readable while idle means the back-end closed it or broke the protocol:
//! either way it is discarded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::TcpStream;

use super::{connect, ConnectError};
use crate::config::{ms, RelayConfig};
use crate::stats::Counter;

#[derive(Debug)]
struct Idle {
    stream: TcpStream,
    since: Instant,
}

/// The pool of idle back-end connections, and how it fared.
#[derive(Debug)]
pub struct Upstreams {
    /// Per address, oldest first.
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    keep: usize,
    idle_timeout: Duration,
    opened: Counter,
    reused: Counter,
    retried: Counter,
    sweeper: AtomicBool,
}

/// `/stats` of the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UpstreamStats {
    /// Back-end connections opened by the relay.
    pub opened: u64,
    /// Requests sent on a kept connection instead of a new one.
    pub reused: u64,
    /// Requests sent again on a new connection because a kept one had been
    /// closed by the back-end.
    pub retried: u64,
    /// Idle connections kept now.
    pub idle: u64,
}

impl Upstreams {
    /// A pool as `[relay]` configures it (`upstream_keepalive = 0`: none).
    pub fn new(cfg: &RelayConfig) -> Arc<Self> {
        Arc::new(Upstreams {
            idle: Mutex::default(),
            keep: cfg.upstream_keepalive,
            idle_timeout: ms(cfg.upstream_idle_timeout_ms),
            opened: Counter::default(),
            reused: Counter::default(),
            retried: Counter::default(),
            sweeper: AtomicBool::new(false),
        })
    }

    /// Whether connections are kept at all (and so whether the relay reads
    /// HTTP, or copies bytes blindly).
    pub fn pooling(&self) -> bool {
        self.keep > 0
    }

    /// Opens a new connection to `addr` (counted).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<TcpStream, ConnectError> {
        let s = connect(addr, timeout).await?;
        self.opened.inc();
        Ok(s)
    }

    /// The most recently kept live connection to `addr`, if any.
    pub(super) fn take(&self, addr: SocketAddr) -> Option<TcpStream> {
        let mut idle = self.lock();
        let list = idle.get_mut(&addr)?;
        expire(list, self.idle_timeout, Instant::now());
        while let Some(c) = list.pop() {
            if still_open(&c.stream) {
                self.reused.inc();
                return Some(c.stream);
            }
        }
        None
    }

    /// Keeps `stream` for the next request to `addr`, unless the pool for
    /// that address is full.
    pub(super) fn put(self: &Arc<Self>, addr: SocketAddr, stream: TcpStream) {
        if !self.pooling() {
            return;
        }
        {
            let mut idle = self.lock();
            let list = idle.entry(addr).or_default();
            if list.len() >= self.keep {
                return;
            }
            list.push(Idle {
                stream,
                since: Instant::now(),
            });
        }
        self.start_sweeper();
    }

    /// Counts a request sent again on a new connection.
    pub(super) fn count_retry(&self) {
        self.retried.inc();
    }

    /// The counters and the idle connections kept now.
    pub fn stats(&self) -> UpstreamStats {
        let idle = self.lock().values().map(Vec::len).sum::<usize>();
        UpstreamStats {
            opened: self.opened.get(),
            reused: self.reused.get(),
            retried: self.retried.get(),
            idle: u64::try_from(idle).unwrap_or(u64::MAX),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the connections that aged out or that the back-end closed, so
    /// that neither side holds them (in CLOSE_WAIT here) when no request
    /// comes to take them.
    fn sweep(&self) {
        let now = Instant::now();
        let mut idle = self.lock();
        for list in idle.values_mut() {
            expire(list, self.idle_timeout, now);
            list.retain(|c| still_open(&c.stream));
        }
        idle.retain(|_, list| !list.is_empty());
    }

    /// One sweeper task per pool, started with the first kept connection;
    /// it holds the pool weakly and ends with it.
    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeper.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.sweeper.store(false, Ordering::Relaxed);
            return;
        };
        let every =
            (self.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let pool: Weak<Self> = Arc::downgrade(self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                pool.sweep();
            }
        });
    }
}

/// Drops the connections idle longer than `timeout` (the oldest come first).
fn expire(list: &mut Vec<Idle>, timeout: Duration, now: Instant) {
    let old = list
        .iter()
        .take_while(|c| now.saturating_duration_since(c.since) > timeout)
        .count();
    list.drain(..old);
}

/// Whether an idle connection is still usable: nothing readable (no EOF,
/// no reset, no stray bytes), asked of the kernel (one `recv(MSG_PEEK)`):
/// tokio's cached readiness may not have seen bytes that just arrived, and
/// those would be taken for the next response. A close still in flight
/// passes; the retry covers that.
fn still_open(s: &TcpStream) -> bool {
    baton_sys::quiet::is_quiet(s.as_fd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    fn pool(keep: usize, idle_ms: u64) -> Arc<Upstreams> {
        Upstreams::new(&RelayConfig {
            upstream_keepalive: keep,
            upstream_idle_timeout_ms: idle_ms,
            ..RelayConfig::default()
        })
    }

    #[tokio::test]
    async fn kept_connections_come_back_newest_first_and_only_while_open() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let p = pool(2, 60_000);
        let t = Duration::from_secs(1);
        let mut conns = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..3 {
            conns.push(p.connect(addr, t).await.expect("connect"));
            peers.push(l.accept().await.expect("accept").0);
        }
        let port = |s: &TcpStream| s.local_addr().expect("addr").port();
        let ports: Vec<u16> = conns.iter().map(port).collect();
        for c in conns {
            p.put(addr, c); // the third is beyond upstream_keepalive: closed
        }
        assert_eq!(p.stats().idle, 2);
        let b = p.take(addr).expect("kept");
        assert_eq!(port(&b), ports[1], "the newest comes first");
        // b's server closes it while b is idle: b is discarded, a comes out.
        peers[1].shutdown().await.expect("close");
        b.readable().await.expect("the FIN arrives");
        p.put(addr, b);
        let a = p.take(addr).expect("a is kept");
        assert_eq!(port(&a), ports[0]);
        assert!(p.take(addr).is_none(), "nothing else");
        let s = p.stats();
        assert_eq!((s.opened, s.reused, s.idle), (3, 2, 0));
    }

    #[tokio::test]
    async fn idle_connections_age_out_and_no_pool_keeps_nothing() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let p = pool(4, 50);
        let s = p
            .connect(addr, Duration::from_secs(1))
            .await
            .expect("connect");
        let (mut peer, _) = l.accept().await.expect("accept");
        p.put(addr, s);
        assert_eq!(p.stats().idle, 1);
        // The sweeper closes it after the idle timeout: the peer reads EOF.
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut peer, &mut buf),
        )
        .await
        .expect("closed by the sweeper")
        .expect("read");
        assert_eq!(n, 0);
        assert_eq!(p.stats().idle, 0);
        assert!(p.take(addr).is_none());

        let none = pool(0, 50);
        assert!(!none.pooling());
        let s = none
            .connect(addr, Duration::from_secs(1))
            .await
            .expect("connect");
        none.put(addr, s);
        assert_eq!(none.stats().idle, 0);
    }
}
