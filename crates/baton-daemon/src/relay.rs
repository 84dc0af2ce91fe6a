//! Relay mode: the front proxies a connection's bytes instead of handing
//! the connection off. Used for back-ends that are plain HTTP servers
//! (`mode = "relay"`), when a handoff is refused or fails and the back-end
//! has a `relay_address`, and when the front may not or must not touch the
//! kernel (`handoff = false`, no CAP_NET_ADMIN/CAP_BPF).
//!
//! The back-end is chosen on the first request head like a handoff: later
//! requests on a keep-alive connection go to the same back-end, as with a
//! handoff. Two ways to relay:
//!
//! - HTTP exchanges with kept back-end connections (the default,
//!   `relay.upstream_keepalive > 0`; [`HttpRelay`]): the relay reads each
//!   request and response head, frames the bodies, and sends each request on
//!   an idle connection from [`Upstreams`] (or a new one), which goes back
//!   there afterwards if it can carry another request. As nginx with
//!   `keepalive` upstreams: no connect per client connection.
//! - A byte pump ([`run`]; `upstream_keepalive = 0`, and for the rest of a
//!   connection that switches protocols): one back-end connection per client
//!   connection. The relay writes the bytes read already, then copies both
//!   directions until both are closed. A side that closes its sending half
//!   (FIN) has the other side's sending half shut down in turn, so
//!   half-closes pass through and a back-end that closes early gives the
//!   client what it sent and then EOF. An error on either side, or
//!   `idle_timeout` without a byte moving, ends the relay and closes both.
//!
//! Copying is `splice(2)` through a pipe per direction (the bytes stay in
//! the kernel; [`baton_sys::splice`]), or a userspace buffer
//! (`relay.copy = "userspace"`), both driven by tokio's readiness. The HTTP
//! relay splices response bodies of known length and close-delimited ones;
//! heads, request bodies and chunked bodies go through userspace buffers.

mod exchange;
mod upstream;

pub use exchange::{Event, HttpRelay};
pub use upstream::{UpstreamStats, Upstreams};

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use baton_sys::splice::{Pipe, PIPE_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use baton_proto::http::HeadLimits;

use crate::config::{ms, RelayConfig, RelayCopy};
use crate::stats::Counter;

/// The userspace copy's buffer per direction.
const USER_BUF: usize = 64 * 1024;

/// Empty pipes kept for the next relays: opening and sizing a pipe costs
/// three system calls, which a one-request connection would pay twice.
#[derive(Debug)]
pub struct PipePool {
    pipes: std::sync::Mutex<Vec<Pipe>>,
    max: usize,
}

impl PipePool {
    /// A pool that keeps at most `max` idle pipes.
    pub fn new(max: usize) -> Self {
        PipePool {
            pipes: std::sync::Mutex::new(Vec::new()),
            max,
        }
    }

    fn take(&self) -> baton_sys::Result<Pipe> {
        let pooled = self.pipes.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match pooled {
            Some(p) => Ok(p),
            None => Pipe::new(PIPE_BYTES),
        }
    }

    /// Only an empty pipe may come back: bytes left in it would be
    /// spliced into another connection.
    fn give_empty(&self, p: Pipe) {
        let mut pipes = self.pipes.lock().unwrap_or_else(|e| e.into_inner());
        if pipes.len() < self.max {
            pipes.push(p);
        }
    }

    /// Idle pipes held now.
    pub fn idle(&self) -> usize {
        self.pipes.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A relay's limits and copy method.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// Connecting to the back-end.
    pub connect_timeout: Duration,
    /// No byte moved in either direction for this long: the relay ends.
    pub idle_timeout: Duration,
    /// How bytes are moved.
    pub copy: RelayCopy,
    /// Limits on the request heads the HTTP relay reads after the first
    /// (the front's, which read the first).
    pub head: HeadLimits,
    /// A later request head must be complete this long after its first
    /// byte arrived (as the front's `limits.head_timeout_ms` for the first).
    pub head_timeout: Duration,
}

impl RelayLimits {
    /// The limits of `[relay]`, and the front's request-head limits.
    pub fn new(c: &RelayConfig, head: HeadLimits, head_timeout: Duration) -> Self {
        RelayLimits {
            connect_timeout: ms(c.connect_timeout_ms),
            idle_timeout: ms(c.idle_timeout_ms),
            copy: c.copy,
            head,
            head_timeout,
        }
    }
}

/// Why the back-end could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Refused, unreachable, or any other error from `connect`.
    #[error("connecting to {addr}: {source}")]
    Failed {
        /// The back-end's address.
        addr: SocketAddr,
        /// What the kernel answered.
        #[source]
        source: io::Error,
    },
    /// No answer within the connect timeout.
    #[error("connecting to {addr}: no answer within {after:?}")]
    TimedOut {
        /// The back-end's address.
        addr: SocketAddr,
        /// The timeout.
        after: Duration,
    },
}

impl ConnectError {
    /// The back-end did not answer at all (a gateway timeout, not a bad gateway).
    pub fn timed_out(&self) -> bool {
        matches!(self, ConnectError::TimedOut { .. })
    }
}

/// Connects to a back-end within `timeout`, with Nagle off (the relay
/// writes what it has; holding a response's tail back would add latency).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(ConnectError::Failed { addr, source }),
        Err(_) => {
            return Err(ConnectError::TimedOut {
                addr,
                after: timeout,
            })
        }
    };
    stream
        .set_nodelay(true)
        .map_err(|source| ConnectError::Failed { addr, source })?;
    Ok(stream)
}

/// Where relayed bytes are counted as they move (the front's totals).
#[derive(Debug, Clone, Copy)]
pub struct Meter<'a> {
    /// Client to back-end.
    pub up: &'a Counter,
    /// Back-end to client.
    pub down: &'a Counter,
}

/// Which side an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client's connection.
    Client,
    /// The back-end's connection.
    Back,
    /// The front itself (no pipe could be opened).
    Front,
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both directions closed.
    Closed,
    /// Nothing moved for `idle_timeout`.
    Idle,
    /// A read or write failed (a reset, mostly) on this side.
    Error(Side),
}

/// What a relay carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// Bytes from the client to the back-end, `first` included.
    pub up: u64,
    /// Bytes from the back-end to the client.
    pub down: u64,
    /// How it ended.
    pub end: End,
}

/// One direction: where it reads, where it writes, where it counts.
#[derive(Clone, Copy)]
struct Dir<'a> {
    from: Side,
    to: Side,
    total: &'a AtomicU64,
    meter: &'a Counter,
}

/// The state both directions share: when a byte last moved.
struct Clock {
    start: Instant,
    /// Milliseconds after `start`.
    last_ms: AtomicU64,
}

impl Clock {
    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `limit`.
    async fn idle(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

type Flow = Result<(), (Side, io::Error)>;

/// Relays between `client` and `back` until both directions closed, one
/// failed, or nothing moved for the idle timeout; `first` (the bytes read
/// from the client already) goes to the back-end first. Both sockets are
/// closed when it returns.
pub async fn run(
    mut client: TcpStream,
    mut back: TcpStream,
    first: &[u8],
    limits: &RelayLimits,
    meter: &Meter<'_>,
    pipes: &PipePool,
) -> Done {
    let pump = Pump::new();
    let (upstream, downstream) = pump.dirs(meter);
    let clock = &pump.clock;
    let copy = limits.copy;
    let work = async {
        back.write_all(first).await.map_err(|e| (Side::Back, e))?;
        count(&upstream, clock, first.len());
        let (cr, cw) = client.split();
        let (br, bw) = back.split();
        match copy {
            RelayCopy::Splice | RelayCopy::Auto => {
                tokio::try_join!(
                    splice_copy(cr, bw, upstream, clock, pipes),
                    splice_copy(br, cw, downstream, clock, pipes)
                )
            }
            RelayCopy::Userspace => {
                tokio::try_join!(
                    user_copy(cr, bw, upstream, clock),
                    user_copy(br, cw, downstream, clock)
                )
            }
        }
    };
    pump.finish(work, limits.idle_timeout).await
}

/// [`run`] for a client connection that is not a plain socket (a TLS
/// session this front decrypts): copies in userspace, one back-end
/// connection for the client connection.
pub async fn run_stream<C>(
    client: C,
    mut back: TcpStream,
    first: &[u8],
    limits: &RelayLimits,
    meter: &Meter<'_>,
) -> Done
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let pump = Pump::new();
    let (upstream, downstream) = pump.dirs(meter);
    let clock = &pump.clock;
    let work = async {
        back.write_all(first).await.map_err(|e| (Side::Back, e))?;
        count(&upstream, clock, first.len());
        let (cr, cw) = tokio::io::split(client);
        let (br, bw) = back.split();
        tokio::try_join!(
            stream_copy(cr, bw, upstream, clock),
            stream_copy(br, cw, downstream, clock)
        )
    };
    pump.finish(work, limits.idle_timeout).await
}

/// What the two directions of one relay share: the bytes each carried and
/// when a byte last moved.
struct Pump {
    clock: Clock,
    up: AtomicU64,
    down: AtomicU64,
}

impl Pump {
    fn new() -> Pump {
        Pump {
            clock: Clock {
                start: Instant::now(),
                last_ms: AtomicU64::new(0),
            },
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
        }
    }

    /// Client to back-end, and back-end to client.
    fn dirs<'a>(&'a self, meter: &Meter<'a>) -> (Dir<'a>, Dir<'a>) {
        (
            Dir {
                from: Side::Client,
                to: Side::Back,
                total: &self.up,
                meter: meter.up,
            },
            Dir {
                from: Side::Back,
                to: Side::Client,
                total: &self.down,
                meter: meter.down,
            },
        )
    }

    /// Runs `work` (both directions) until it ends or nothing moved for
    /// `idle`.
    async fn finish<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, (Side, io::Error)>>,
        idle: Duration,
    ) -> Done {
        let end = tokio::select! {
            r = work => match r {
                Ok(_) => End::Closed,
                Err((side, _)) => End::Error(side),
            },
            _ = self.clock.idle(idle) => End::Idle,
        };
        Done {
            up: self.up.load(Ordering::Relaxed),
            down: self.down.load(Ordering::Relaxed),
            end,
        }
    }
}

/// One direction of [`run_stream`]; at the source's end, shuts the
/// destination's sending half down.
async fn stream_copy<R, W>(mut src: R, mut dst: W, dir: Dir<'_>, clock: &Clock) -> Flow
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = src.read(&mut buf).await.map_err(|e| (dir.from, e))?;
        if n == 0 {
            let _ = dst.shutdown().await;
            return Ok(());
        }
        dst.write_all(buf.get(..n).unwrap_or_default())
            .await
            .map_err(|e| (dir.to, e))?;
        count(&dir, clock, n);
    }
}

fn count(dir: &Dir<'_>, clock: &Clock, n: usize) {
    let n = n as u64;
    dir.total.fetch_add(n, Ordering::Relaxed);
    dir.meter.add(n);
    clock.touch();
}

/// Copies one direction through a userspace buffer; at the source's EOF,
/// shuts down the destination's sending half.
async fn user_copy(
    mut src: ReadHalf<'_>,
    mut dst: WriteHalf<'_>,
    dir: Dir<'_>,
    clock: &Clock,
) -> Flow {
    // Not before the first byte: an idle keep-alive connection holds no buffer.
    src.as_ref().readable().await.map_err(|e| (dir.from, e))?;
    let mut buf = vec![0u8; USER_BUF];
    loop {
        let n = src.read(&mut buf).await.map_err(|e| (dir.from, e))?;
        let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
            break;
        };
        clock.touch();
        dst.write_all(chunk).await.map_err(|e| (dir.to, e))?;
        count(&dir, clock, n);
    }
    // The peer may be gone already (ENOTCONN): nothing left to tell it.
    let _ = dst.shutdown().await;
    Ok(())
}

/// Copies one direction with `splice(2)` through a pipe: into the (empty)
/// pipe when the source is readable, out of it when the destination is
/// writable, until the pipe is empty again. At the source's EOF, shuts down
/// the destination's sending half.
async fn splice_copy(
    src: ReadHalf<'_>,
    mut dst: WriteHalf<'_>,
    dir: Dir<'_>,
    clock: &Clock,
    pipes: &PipePool,
) -> Flow {
    let s: &TcpStream = src.as_ref();
    s.readable().await.map_err(|e| (dir.from, e))?;
    // Not before the first byte: an idle keep-alive connection holds no pipe.
    // On an early return the pipe may hold bytes: it is closed, not pooled.
    let pipe = pipes.take().map_err(|e| (Side::Front, e.source))?;
    let cap = pipe.capacity();
    {
        let d: &TcpStream = dst.as_ref();
        loop {
            s.readable().await.map_err(|e| (dir.from, e))?;
            // The pipe is empty here, so WouldBlock can only mean the socket.
            let n = match s.try_io(Interest::READABLE, || pipe.fill_from(s.as_fd(), cap)) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err((dir.from, e)),
            };
            clock.touch();
            let mut left = n;
            while left > 0 {
                d.writable().await.map_err(|e| (dir.to, e))?;
                match d.try_io(Interest::WRITABLE, || pipe.drain_to(d.as_fd(), left)) {
                    Ok(0) => return Err((dir.to, io::ErrorKind::WriteZero.into())),
                    Ok(m) => {
                        left = left.saturating_sub(m);
                        count(&dir, clock, m);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err((dir.to, e)),
                }
            }
        }
    }
    pipes.give_empty(pipe);
    let _ = dst.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Both copy methods over loopback: byte-exact both ways, half-closes
    //! passed on, an early close seen as EOF, idle connections closed.
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    fn limits(copy: RelayCopy, idle: Duration) -> RelayLimits {
        RelayLimits {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: idle,
            copy,
            head: HeadLimits::default(),
            head_timeout: Duration::from_secs(5),
        }
    }

    /// client <-> (c | front-client) relay (front-back | b) <-> back-end
    async fn relay_both_ways(copy: RelayCopy) {
        let (mut client, front_client) = pair().await;
        let (front_back, mut backend) = pair().await;
        let up_total = Counter::default();
        let down_total = Counter::default();
        let request: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let response: Vec<u8> = (0..5_000_000u32).map(|i| (i % 241) as u8).collect();
        let first = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        let lim = limits(copy, Duration::from_secs(10));
        let pool = PipePool::new(4);
        let relay = async {
            let meter = Meter {
                up: &up_total,
                down: &down_total,
            };
            run(front_client, front_back, &first, &lim, &meter, &pool).await
        };
        let client_side = async {
            let (mut r, mut w) = client.split();
            let send = async {
                w.write_all(&request).await.expect("client write");
                w.shutdown().await.expect("client shutdown");
            };
            let recv = async {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.expect("client read");
                got
            };
            tokio::join!(send, recv).1
        };
        let back_side = async {
            let (mut r, mut w) = backend.split();
            let recv = async {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.expect("back read");
                got
            };
            let send = async {
                w.write_all(&response).await.expect("back write");
                w.shutdown().await.expect("back shutdown");
            };
            tokio::join!(recv, send).0
        };
        let (done, at_client, at_back) = tokio::join!(relay, client_side, back_side);
        let mut want_up = first.clone();
        want_up.extend_from_slice(&request);
        assert!(at_back == want_up, "the back-end got other bytes");
        assert!(at_client == response, "the client got other bytes");
        assert_eq!(done.end, End::Closed);
        assert_eq!(done.up, want_up.len() as u64);
        assert_eq!(done.down, response.len() as u64);
        assert_eq!(up_total.get(), done.up);
        assert_eq!(down_total.get(), done.down);
        // Both pipes came back empty for the next relay.
        let pooled = if copy == RelayCopy::Splice { 2 } else { 0 };
        assert_eq!(pool.idle(), pooled);
    }

    #[tokio::test]
    async fn splice_relays_both_ways_byte_exact() {
        relay_both_ways(RelayCopy::Splice).await;
    }

    #[tokio::test]
    async fn userspace_relays_both_ways_byte_exact() {
        relay_both_ways(RelayCopy::Userspace).await;
    }

    async fn early_close(copy: RelayCopy) {
        let (mut client, front_client) = pair().await;
        let (front_back, mut backend) = pair().await;
        let c = Counter::default();
        let lim = limits(copy, Duration::from_secs(30));
        let relay = tokio::spawn(async move {
            let c = Counter::default();
            let meter = Meter { up: &c, down: &c };
            run(
                front_client,
                front_back,
                b"GET /",
                &lim,
                &meter,
                &PipePool::new(4),
            )
            .await
        });
        let mut head = [0u8; 5];
        backend.read_exact(&mut head).await.expect("request");
        backend.write_all(b"partial").await.expect("write");
        drop(backend);
        let mut got = Vec::new();
        // The client keeps its side open: EOF must come anyway.
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got))
            .await
            .expect("EOF after the back-end closed")
            .expect("read");
        assert_eq!(got, b"partial");
        drop(client);
        let done = tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .expect("the relay ends once the client closes too")
            .expect("join");
        assert_eq!(done.down, 7);
        let _ = c.get();
    }

    #[tokio::test]
    async fn splice_passes_an_early_close_on() {
        early_close(RelayCopy::Splice).await;
    }

    #[tokio::test]
    async fn userspace_passes_an_early_close_on() {
        early_close(RelayCopy::Userspace).await;
    }

    #[tokio::test]
    async fn an_idle_relay_is_closed() {
        let (mut client, front_client) = pair().await;
        let (front_back, mut backend) = pair().await;
        let lim = limits(RelayCopy::Splice, Duration::from_millis(200));
        let c = Counter::default();
        let meter = Meter { up: &c, down: &c };
        let t = Instant::now();
        let done = run(
            front_client,
            front_back,
            b"x",
            &lim,
            &meter,
            &PipePool::new(4),
        )
        .await;
        let took = t.elapsed();
        assert_eq!(done.end, End::Idle);
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(3),
            "{took:?}"
        );
        // Both sides see the relay gone.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("client EOF");
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.expect("back EOF");
        assert_eq!(got, b"x");
    }
}
