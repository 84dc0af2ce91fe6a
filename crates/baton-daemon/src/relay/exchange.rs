//! The HTTP/1.1-aware relay: one client connection, a loop of exchanges
//! (request, response), each on a back-end connection taken from the pool
//! ([`Upstreams`]) and given back when the exchange left it reusable.
//!
//! Invariants:
//! - The relay and both HTTP servers agree on where every message ends:
//!   requests are framed as `parse_request_head` frames them (strict), and a
//!   response whose end is in doubt is refused (502) or ends its connection.
//! - A back-end connection goes back to the pool only between exchanges:
//!   its response complete with known framing, HTTP/1.1 without
//!   `Connection: close`, the request body sent whole, no byte beyond the
//!   response read.
//! - Bytes are passed on as received, except the hop-by-hop fields of the
//!   request head (so that the back-end keeps the connection open) and a
//!   `Connection: close` put into the response head of the client
//!   connection's last exchange.
//! - A request that changes protocols (`Upgrade`, `CONNECT`), or a 101
//!   answer, turns the rest of the connection into the byte pump
//!   ([`super::run`]).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_proto::http::{
    canonical_reason, error_response, parse_request_head, parse_response_head,
    response_head_with_close, response_head_without_keep_alive, upstream_request_head, BodyFraming,
    ChunkedDecoder, HeadError, RequestHead, RESPONSE_HEAD_MAX_BYTES,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use crate::config::YOUNG_CONNECTION_BYTES;

use super::{
    count, Clock, ConnectError, Dir, Done, End, Meter, PipePool, RelayCopy, RelayLimits, Side,
    Upstreams, USER_BUF,
};

/// What the front counts as the relay goes.
#[derive(Debug)]
pub enum Event<'e> {
    /// The client connection got its first back-end connection: it counts
    /// as one relayed connection.
    Relaying,
    /// Connecting to the back-end failed; the client got 502 or 504.
    ConnectFailed(&'e ConnectError),
}

/// Everything a front's HTTP relays share.
pub struct HttpRelay<'a> {
    /// Timeouts, copy method, request-head limits.
    pub limits: &'a RelayLimits,
    /// The front's byte totals.
    pub meter: Meter<'a>,
    /// Splice pipes.
    pub pipes: &'a PipePool,
    /// Kept back-end connections.
    pub upstreams: &'a Arc<Upstreams>,
    /// Told of what the front counts.
    pub report: &'a (dyn Fn(Event<'_>) + Sync),
}

impl std::fmt::Debug for HttpRelay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRelay")
            .field("limits", self.limits)
            .finish_non_exhaustive()
    }
}

/// A client connection's state that the concurrent halves of an exchange
/// share (all behind `&`).
struct Session<'s> {
    client: &'s TcpStream,
    to: SocketAddr,
    clock: Clock,
    up_total: AtomicU64,
    down_total: AtomicU64,
    meter: Meter<'s>,
}

impl Session<'_> {
    fn upstream(&self) -> Dir<'_> {
        Dir {
            from: Side::Client,
            to: Side::Back,
            total: &self.up_total,
            meter: self.meter.up,
        }
    }

    fn downstream(&self) -> Dir<'_> {
        Dir {
            from: Side::Back,
            to: Side::Client,
            total: &self.down_total,
            meter: self.meter.down,
        }
    }
}

/// A client connection's buffers, kept across its exchanges.
#[derive(Default)]
struct Bufs {
    /// Read from the client, not yet sent on: the next request head, body
    /// bytes, pipelined requests.
    client: Vec<u8>,
    /// The request head as the back-end gets it (kept for a retry).
    head: Vec<u8>,
    /// Read from the back-end.
    back: Vec<u8>,
    /// A rewritten response head and the body bytes that go with it.
    out: Vec<u8>,
}

impl Bufs {
    /// Between requests, a waiting connection holds no buffer it can do
    /// without (there may be thousands of idle keep-alive connections).
    fn release(&mut self) {
        if self.client.is_empty() {
            self.client = Vec::new();
        }
        if self.head.capacity() > HEAD_READ {
            // It carried body bytes along with a head.
            self.head = Vec::new();
        }
        self.back = Vec::new();
        self.out = Vec::new();
    }
}

/// How a client connection's exchanges ended.
enum Finish {
    /// Close the client connection now.
    Close(End),
    /// Close after a lingering read: the client may still be sending, and
    /// closing with unread bytes would reset the connection and could make
    /// its kernel drop the response's tail.
    Linger(End),
    /// Pump bytes from here on; `Bufs::client` goes to the back-end first.
    Pump(TcpStream),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestBody {
    Empty,
    Length(u64),
    Chunked,
}

/// What an exchange needs to know of its request.
#[derive(Debug, Clone, Copy)]
struct Request {
    body: RequestBody,
    head_request: bool,
    /// The client asked to close after this response (or speaks HTTP/1.0,
    /// whose keep-alive the back-end, asked in 1.0, need not honour).
    close: bool,
    /// Safe to send twice (RFC 9110 9.2.2): only such a request is sent
    /// again when a kept connection turns out dead.
    idempotent: bool,
    /// An HTTP/1.0 request: the back-end may close after answering it.
    http10: bool,
}

/// How far a failed exchange got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// No byte of a response arrived: a kept connection may be stale.
    Nothing,
    /// Response bytes arrived, none went to the client: it can get a 502.
    Received,
    /// Response bytes went to the client: it can only be closed.
    Sent,
}

#[derive(Debug)]
struct Failure {
    side: Side,
    stage: Stage,
    error: io::Error,
}

/// A response relayed whole.
enum Response {
    Complete {
        /// Framing known, complete, no byte beyond it, the back-end keeps
        /// the connection open.
        reusable: bool,
        /// The client connection ends with it.
        close: bool,
    },
    /// 101: the connection is a tunnel from here on.
    Switched,
}

enum Outcome {
    Complete {
        reusable: bool,
        close: bool,
        /// Close with a lingering read (see [`Finish::Linger`]).
        linger: bool,
    },
    Switched,
    Failed(Failure),
}

/// Lingering close: how long a client that is still sending may take to
/// finish (nginx's lingering_timeout is 5 s).
const LINGER: Duration = Duration::from_secs(2);
/// Room made in the client buffer for reading a request head.
const HEAD_READ: usize = 4096;
/// The back-end buffer: response heads and bodies copied in userspace.
const BACK_BUF: usize = 16 * 1024;

impl HttpRelay<'_> {
    /// Serves the client connection `client` from back-end `to` until
    /// either side closes, an error, or `idle_timeout` without a byte
    /// moving. `first`: the bytes read from the client already, starting
    /// with a complete request head.
    pub async fn serve(&self, client: TcpStream, to: SocketAddr, first: &[u8]) -> Done {
        let mut bufs = Bufs {
            client: first.to_vec(),
            ..Bufs::default()
        };
        let (finish, up, down) = {
            let s = Session {
                client: &client,
                to,
                clock: Clock {
                    start: Instant::now(),
                    last_ms: AtomicU64::new(0),
                },
                up_total: AtomicU64::new(0),
                down_total: AtomicU64::new(0),
                meter: self.meter,
            };
            let finish = tokio::select! {
                f = self.exchanges(&s, &mut bufs) => f,
                _ = s.clock.idle(self.limits.idle_timeout) => Finish::Close(End::Idle),
            };
            let up = s.up_total.load(Ordering::Relaxed);
            let down = s.down_total.load(Ordering::Relaxed);
            (finish, up, down)
        };
        match finish {
            Finish::Close(end) => Done { up, down, end },
            Finish::Linger(end) => {
                linger(client, self.limits.idle_timeout.min(LINGER)).await;
                Done { up, down, end }
            }
            Finish::Pump(back) => {
                let d = super::run(
                    client,
                    back,
                    &bufs.client,
                    self.limits,
                    &self.meter,
                    self.pipes,
                )
                .await;
                Done {
                    up: up.saturating_add(d.up),
                    down: down.saturating_add(d.down),
                    end: d.end,
                }
            }
        }
    }

    async fn exchanges(&self, s: &Session<'_>, b: &mut Bufs) -> Finish {
        let mut relaying = false;
        loop {
            let head = match self.request_head(s, b).await {
                Ok(Some(h)) => h,
                Ok(None) => return Finish::Close(End::Closed),
                Err(HeadRead::Bad(e)) => {
                    let _ = send(s.client, &e.response(), &s.downstream(), &s.clock).await;
                    return Finish::Linger(End::Closed);
                }
                Err(HeadRead::TimedOut) => {
                    let _ = send(s.client, &gateway_error(408), &s.downstream(), &s.clock).await;
                    return Finish::Linger(End::Closed);
                }
                Err(HeadRead::Io) => return Finish::Close(End::Error(Side::Client)),
            };
            let raw = b.client.get(..head.head_len).unwrap_or_default();
            let hops = upstream_request_head(raw, &mut b.head);
            if hops.upgrade || head.method == "CONNECT" {
                // A tunnel cannot go back to the pool: a new connection,
                // and the request as sent.
                return match self.connect(s, &mut relaying).await {
                    Ok(back) => Finish::Pump(back),
                    Err(f) => f,
                };
            }
            let req = Request {
                body: if head.chunked {
                    RequestBody::Chunked
                } else {
                    match head.content_length {
                        Some(n) if n > 0 => RequestBody::Length(n),
                        _ => RequestBody::Empty,
                    }
                },
                head_request: head.method == "HEAD",
                close: !head.keep_alive || head.minor_version == 0,
                idempotent: matches!(
                    head.method.as_str(),
                    "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
                ),
                http10: head.minor_version == 0,
            };
            b.client.drain(..head.head_len.min(b.client.len()));

            let (mut back, mut reused) = match self.upstreams.take(s.to) {
                Some(c) => (c, true),
                None => match self.connect(s, &mut relaying).await {
                    Ok(c) => (c, false),
                    Err(f) => return f,
                },
            };
            if !relaying {
                relaying = true;
                (self.report)(Event::Relaying);
            }
            let outcome = loop {
                match self.exchange(s, &back, &req, b).await {
                    // A kept connection the back-end closed meanwhile:
                    // nothing was lost, so the request goes again on a new
                    // one (as nginx does; only an idempotent one, since
                    // the back-end may have acted on it before dying, and
                    // only without a body, which was read and is gone).
                    Outcome::Failed(f)
                        if f.stage == Stage::Nothing
                            && f.side == Side::Back
                            && reused
                            && req.idempotent
                            && req.body == RequestBody::Empty =>
                    {
                        tracing::debug!(to = %s.to, error = %f.error, "kept connection failed; retrying on a new one");
                        self.upstreams.count_retry();
                        reused = false;
                        back = match self.connect(s, &mut relaying).await {
                            Ok(c) => c,
                            Err(f) => return f,
                        };
                    }
                    other => break other,
                }
            };
            match outcome {
                Outcome::Complete {
                    reusable,
                    close,
                    linger,
                } => {
                    if reusable {
                        self.upstreams.put(s.to, back);
                    }
                    if close {
                        return if linger {
                            Finish::Linger(End::Closed)
                        } else {
                            Finish::Close(End::Closed)
                        };
                    }
                }
                Outcome::Switched => return Finish::Pump(back),
                Outcome::Failed(f) => {
                    tracing::debug!(to = %s.to, side = ?f.side, stage = ?f.stage, error = %f.error, "exchange failed");
                    if f.side != Side::Client && f.stage < Stage::Sent {
                        let _ =
                            send(s.client, &gateway_error(502), &s.downstream(), &s.clock).await;
                        return Finish::Linger(End::Error(f.side));
                    }
                    return Finish::Close(End::Error(f.side));
                }
            }
        }
    }

    /// A new back-end connection; on failure the client gets 502 or 504
    /// and the front hears of it.
    async fn connect(&self, s: &Session<'_>, relaying: &mut bool) -> Result<TcpStream, Finish> {
        match self
            .upstreams
            .connect(s.to, self.limits.connect_timeout)
            .await
        {
            Ok(c) => {
                if !*relaying {
                    *relaying = true;
                    (self.report)(Event::Relaying);
                }
                Ok(c)
            }
            Err(e) => {
                (self.report)(Event::ConnectFailed(&e));
                let status = if e.timed_out() { 504 } else { 502 };
                let _ = send(s.client, &gateway_error(status), &s.downstream(), &s.clock).await;
                Err(Finish::Linger(End::Error(Side::Back)))
            }
        }
    }

    /// The next request head, from the bytes buffered or the client.
    /// `Ok(None)`: the client closed between requests.
    async fn request_head(
        &self,
        s: &Session<'_>,
        b: &mut Bufs,
    ) -> Result<Option<RequestHead>, HeadRead> {
        let limits = &self.limits.head;
        let mut fresh_newline = true;
        // Set once the head's first byte is here: a head trickled a byte at
        // a time must not hold the connection for idle_timeout per byte.
        let mut deadline = None;
        loop {
            if deadline.is_none() && !b.client.is_empty() {
                deadline = Some(tokio::time::Instant::now() + self.limits.head_timeout);
            }
            // A head ends with a newline: without a new one, the parse
            // would only say "incomplete" again (a head sent a byte per
            // segment must not cost quadratic time).
            if !b.client.is_empty() && (fresh_newline || b.client.len() >= limits.max_bytes) {
                match parse_request_head(&b.client, limits) {
                    Ok(Some(h)) => return Ok(Some(h)),
                    Ok(None) => {}
                    Err(e) => return Err(HeadRead::Bad(e)),
                }
            }
            if b.client.is_empty() {
                // Between requests: an idle keep-alive connection holds no
                // buffers (tokio's cached readiness cannot tell whether the
                // next request is there, so they go either way).
                b.release();
            }
            let before = b.client.len();
            let read = read_some(s.client, &mut b.client, HEAD_READ);
            let n = match deadline {
                Some(d) => tokio::time::timeout_at(d, read)
                    .await
                    .map_err(|_| HeadRead::TimedOut)?,
                None => read.await,
            }
            .map_err(|_| HeadRead::Io)?;
            if n == 0 {
                // EOF in the middle of a head: nothing to answer either.
                return Ok(None);
            }
            s.clock.touch();
            fresh_newline = b
                .client
                .get(before..)
                .is_some_and(|new| new.contains(&b'\n'));
        }
    }

    /// One request and its response on `back`: the request body is copied
    /// while the response head is awaited (so that `Expect: 100-continue`
    /// and a back-end answering before the body ended both work).
    async fn exchange(
        &self,
        s: &Session<'_>,
        back: &TcpStream,
        req: &Request,
        b: &mut Bufs,
    ) -> Outcome {
        let body_sent = AtomicBool::new(false);
        let Bufs {
            client: cbuf,
            head,
            back: bbuf,
            out,
        } = b;
        let sending = send_request(s, back, req, head, cbuf, &body_sent);
        let receiving = self.relay_response(s, back, req, bbuf, out, &body_sent);
        tokio::pin!(sending, receiving);
        let mut sending_done = false;
        loop {
            tokio::select! {
                biased;
                r = &mut sending, if !sending_done => {
                    sending_done = true;
                    match r {
                        Ok(()) => {}
                        Err(f) if f.side == Side::Client => return Outcome::Failed(f),
                        // The back-end stopped reading: it may still answer
                        // (an early error); the response decides.
                        Err(_) => {}
                    }
                }
                r = &mut receiving => {
                    return match r {
                        Ok(Response::Complete { reusable, close }) => {
                            let sent = body_sent.load(Ordering::Relaxed);
                            Outcome::Complete {
                                reusable: reusable && sent,
                                close: close || !sent,
                                // A client that did not ask to close may
                                // have sent more (a body, pipelined requests).
                                linger: !sent || !req.close,
                            }
                        }
                        Ok(Response::Switched) => {
                            if !sending_done {
                                if let Err(f) = (&mut sending).await {
                                    return Outcome::Failed(f);
                                }
                            }
                            Outcome::Switched
                        }
                        Err(f) => Outcome::Failed(f),
                    };
                }
            }
        }
    }

    /// Reads the response (interim ones too) from `back` and passes it on
    /// to the client.
    async fn relay_response(
        &self,
        s: &Session<'_>,
        back: &TcpStream,
        req: &Request,
        bbuf: &mut Vec<u8>,
        out: &mut Vec<u8>,
        body_sent: &AtomicBool,
    ) -> Result<Response, Failure> {
        let down = s.downstream();
        let mut stage = Stage::Nothing;
        bbuf.clear();
        let fail = |side: Side, stage: Stage, error: io::Error| Failure { side, stage, error };
        loop {
            // As for request heads: parse again only once a new line ended
            // (or the limit is reached), not after every segment.
            let mut fresh_newline = !bbuf.is_empty();
            let head = loop {
                if fresh_newline || bbuf.len() >= RESPONSE_HEAD_MAX_BYTES {
                    match parse_response_head(bbuf) {
                        Ok(Some(h)) => break h,
                        Ok(None) => {}
                        Err(e) => {
                            return Err(fail(
                                Side::Back,
                                stage.max(Stage::Received),
                                io::Error::new(io::ErrorKind::InvalidData, e),
                            ))
                        }
                    }
                }
                let before = bbuf.len();
                let n = read_some(back, bbuf, BACK_BUF)
                    .await
                    .map_err(|e| fail(Side::Back, stage, e))?;
                if n == 0 {
                    return Err(fail(Side::Back, stage, io::ErrorKind::UnexpectedEof.into()));
                }
                fresh_newline = bbuf.get(before..).is_some_and(|new| new.contains(&b'\n'));
                stage = stage.max(Stage::Received);
                s.clock.touch();
            };
            let head_len = head.head_len.min(bbuf.len());
            if head.status == 101 {
                // Switching protocols: the rest is the new protocol's.
                send(s.client, bbuf, &down, &s.clock)
                    .await
                    .map_err(|e| fail(Side::Client, Stage::Sent, e))?;
                return Ok(Response::Switched);
            }
            if head.is_interim() {
                // 100 Continue, 103 Early Hints: passed on; the final
                // response follows.
                let interim = bbuf.get(..head_len).unwrap_or_default();
                send(s.client, interim, &down, &s.clock)
                    .await
                    .map_err(|e| fail(Side::Client, Stage::Sent, e))?;
                stage = Stage::Sent;
                bbuf.drain(..head_len);
                continue;
            }

            let framing = head.framing(req.head_request);
            // The request body still going out when the final head came:
            // the back-end answered early and may never read the rest, so
            // the connection cannot be trusted with another request even if
            // the body finishes before the response does.
            let early = !body_sent.load(Ordering::Relaxed);
            // The client connection ends with this response if the client
            // asked, if the back-end closes (its word, or a body that only
            // its close ends), or if the request body is still coming (the
            // back-end answered early: what is left of it will never be
            // read, so the connection cannot carry another request).
            let close =
                req.close || !head.keep_alive || framing == BodyFraming::UntilClose || early;
            let buffered = bbuf.get(head_len..).unwrap_or_default();
            let mut chunks = ChunkedDecoder::new();
            let (in_buf, mut left) = match framing {
                BodyFraming::Empty => (0, 0),
                BodyFraming::Length(n) => {
                    let here = usize::try_from(n).map_or(buffered.len(), |n| n.min(buffered.len()));
                    (here, n - here as u64)
                }
                BodyFraming::Chunked => {
                    let p = chunks.feed(buffered, |_| {}).map_err(|e| {
                        fail(
                            Side::Back,
                            Stage::Received,
                            io::Error::new(io::ErrorKind::InvalidData, e),
                        )
                    })?;
                    (p.used, 0)
                }
                BodyFraming::UntilClose => (buffered.len(), 0),
            };
            let mut extra = buffered.len() > in_buf;
            let now = bbuf.get(..head_len + in_buf).unwrap_or_default();
            let head_bytes = now.get(..head_len).unwrap_or_default();
            let first: &[u8] = if close {
                response_head_with_close(head_bytes, out);
                out.extend_from_slice(now.get(head_len..).unwrap_or_default());
                out
            } else if response_head_without_keep_alive(head_bytes, out) {
                out.extend_from_slice(now.get(head_len..).unwrap_or_default());
                out
            } else {
                now
            };
            send(s.client, first, &down, &s.clock)
                .await
                .map_err(|e| fail(Side::Client, Stage::Sent, e))?;

            let copy = match self.limits.copy {
                RelayCopy::Auto
                    if s.down_total.load(Ordering::Relaxed) < YOUNG_CONNECTION_BYTES =>
                {
                    RelayCopy::Userspace
                }
                RelayCopy::Auto => RelayCopy::Splice,
                other => other,
            };
            let body = match framing {
                BodyFraming::Empty => Ok(()),
                BodyFraming::Length(_) if left == 0 => Ok(()),
                BodyFraming::Length(_) => match copy {
                    RelayCopy::Splice | RelayCopy::Auto => {
                        splice_body(back, s.client, Some(left), &down, &s.clock, self.pipes).await
                    }
                    RelayCopy::Userspace => {
                        user_body(back, s.client, Some(&mut left), bbuf, &down, &s.clock)
                            .await
                            .map(|more| extra |= more)
                    }
                },
                BodyFraming::Chunked if chunks.is_done() => Ok(()),
                BodyFraming::Chunked => {
                    chunked_body(back, s.client, &mut chunks, bbuf, &down, &s.clock)
                        .await
                        .map(|more| extra |= more)
                }
                BodyFraming::UntilClose => match copy {
                    RelayCopy::Splice | RelayCopy::Auto => {
                        splice_body(back, s.client, None, &down, &s.clock, self.pipes).await
                    }
                    RelayCopy::Userspace => user_body(back, s.client, None, bbuf, &down, &s.clock)
                        .await
                        .map(|_| ()),
                },
            };
            body.map_err(|(side, error)| fail(side, Stage::Sent, error))?;
            let reusable = !extra
                && !early
                && !req.http10
                && head.keep_alive
                && head.minor_version == 1
                && framing != BodyFraming::UntilClose;
            return Ok(Response::Complete { reusable, close });
        }
    }
}

enum HeadRead {
    Bad(HeadError),
    /// Not complete within `head_timeout` of its first byte.
    TimedOut,
    Io,
}

/// Sends the request head and body to `back`: the head as rewritten, then
/// the body bytes buffered already, then the rest from the client, framed
/// as the head says. Bytes after the body stay in `cbuf` (the next request).
async fn send_request(
    s: &Session<'_>,
    back: &TcpStream,
    req: &Request,
    head: &mut Vec<u8>,
    cbuf: &mut Vec<u8>,
    body_sent: &AtomicBool,
) -> Result<(), Failure> {
    let up = s.upstream();
    let to_back = |error| Failure {
        side: Side::Back,
        stage: Stage::Nothing,
        error,
    };
    let from_client = |error| Failure {
        side: Side::Client,
        stage: Stage::Nothing,
        error,
    };
    match req.body {
        RequestBody::Empty => {
            // `head` stays as it is: a retry sends it again.
            send(back, head, &up, &s.clock).await.map_err(to_back)?;
        }
        RequestBody::Length(n) => {
            // With the body bytes read already, in one write.
            let here = usize::try_from(n).map_or(cbuf.len(), |n| n.min(cbuf.len()));
            head.extend_from_slice(cbuf.get(..here).unwrap_or_default());
            cbuf.drain(..here);
            send(back, head, &up, &s.clock).await.map_err(to_back)?;
            let mut left = n - here as u64;
            while left > 0 {
                // `cbuf` is empty here: all of it was body.
                let got = read_some(s.client, cbuf, USER_BUF)
                    .await
                    .map_err(from_client)?;
                if got == 0 {
                    return Err(from_client(io::ErrorKind::UnexpectedEof.into()));
                }
                s.clock.touch();
                let take = usize::try_from(left).map_or(cbuf.len(), |l| l.min(cbuf.len()));
                send(back, cbuf.get(..take).unwrap_or_default(), &up, &s.clock)
                    .await
                    .map_err(to_back)?;
                cbuf.drain(..take);
                left -= take as u64;
            }
        }
        RequestBody::Chunked => {
            let mut chunks = ChunkedDecoder::new();
            let bad = |e| from_client(io::Error::new(io::ErrorKind::InvalidData, e));
            let p = chunks.feed(cbuf, |_| {}).map_err(bad)?;
            head.extend_from_slice(cbuf.get(..p.used).unwrap_or_default());
            cbuf.drain(..p.used);
            send(back, head, &up, &s.clock).await.map_err(to_back)?;
            while !chunks.is_done() {
                let got = read_some(s.client, cbuf, USER_BUF)
                    .await
                    .map_err(from_client)?;
                if got == 0 {
                    return Err(from_client(io::ErrorKind::UnexpectedEof.into()));
                }
                s.clock.touch();
                let p = chunks.feed(cbuf, |_| {}).map_err(bad)?;
                send(back, cbuf.get(..p.used).unwrap_or_default(), &up, &s.clock)
                    .await
                    .map_err(to_back)?;
                cbuf.drain(..p.used);
            }
        }
    }
    body_sent.store(true, Ordering::Relaxed);
    Ok(())
}

type Moved = Result<(), (Side, io::Error)>;

/// Moves a response body from `back` to `client` through a pipe: exactly
/// `limit` bytes (never one of whatever may follow), or to EOF if `None`.
async fn splice_body(
    back: &TcpStream,
    client: &TcpStream,
    limit: Option<u64>,
    dir: &Dir<'_>,
    clock: &Clock,
    pipes: &PipePool,
) -> Moved {
    let pipe = pipes.take().map_err(|e| (Side::Front, e.source))?;
    let cap = pipe.capacity();
    // Bytes still to read from the back-end (`None`: until it closes).
    let mut left = limit;
    let mut eof = false;
    let mut in_pipe = 0usize;
    // Reading goes on while the client drains, so that a client still in
    // slow start (a new connection) does not stop the back-end's stream.
    // But a pipe counts slots, not bytes: one that holds bytes may be full
    // while the socket still has data, and both say "would block". After
    // such an answer the pipe is drained empty before reading again, so
    // that a "would block" from the socket is never mistaken for a full
    // pipe (which would clear a readiness no new packet may set again).
    let mut fill_paused = false;
    loop {
        let room = cap.saturating_sub(in_pipe);
        let want = match left {
            _ if eof || fill_paused => 0,
            Some(l) => usize::try_from(l).map_or(room, |l| l.min(room)),
            None => room,
        };
        if want == 0 && in_pipe == 0 {
            if fill_paused {
                fill_paused = false;
                continue;
            }
            break;
        }
        tokio::select! {
            biased;
            w = client.writable(), if in_pipe > 0 => {
                w.map_err(|e| (Side::Client, e))?;
                match client.try_io(Interest::WRITABLE, || pipe.drain_to(client.as_fd(), in_pipe)) {
                    Ok(0) => return Err((Side::Client, io::ErrorKind::WriteZero.into())),
                    Ok(m) => {
                        in_pipe = in_pipe.saturating_sub(m);
                        count(dir, clock, m);
                        if in_pipe == 0 {
                            fill_paused = false;
                        }
                    }
                    // The pipe holds bytes: only the socket can be full.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err((Side::Client, e)),
                }
            }
            r = back.readable(), if want > 0 => {
                r.map_err(|e| (Side::Back, e))?;
                let filled = if in_pipe == 0 {
                    // Empty pipe: a "would block" can only be the socket's,
                    // and clearing its readiness is right.
                    back.try_io(Interest::READABLE, || pipe.fill_from(back.as_fd(), want))
                } else {
                    pipe.fill_from(back.as_fd(), want)
                };
                match filled {
                    Ok(0) if left.is_none() => eof = true,
                    Ok(0) => return Err((Side::Back, io::ErrorKind::UnexpectedEof.into())),
                    Ok(n) => {
                        in_pipe = in_pipe.saturating_add(n);
                        if let Some(l) = left.as_mut() {
                            *l = l.saturating_sub(n as u64);
                        }
                        clock.touch();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if in_pipe > 0 {
                            // Socket empty or pipe full: drain first.
                            fill_paused = true;
                        }
                    }
                    Err(e) => return Err((Side::Back, e)),
                }
            }
        }
    }
    // Only an empty pipe goes back (an early return drops it instead).
    pipes.give_empty(pipe);
    Ok(())
}

/// Moves a response body through `buf`: `left` bytes (counted down), or
/// to EOF if `None`. `Ok(true)`: the back-end sent bytes beyond the body.
async fn user_body(
    back: &TcpStream,
    client: &TcpStream,
    mut left: Option<&mut u64>,
    buf: &mut Vec<u8>,
    dir: &Dir<'_>,
    clock: &Clock,
) -> Result<bool, (Side, io::Error)> {
    loop {
        if left.as_deref() == Some(&0) {
            return Ok(false);
        }
        buf.clear();
        let n = read_some(back, buf, USER_BUF)
            .await
            .map_err(|e| (Side::Back, e))?;
        if n == 0 {
            return match left {
                None => Ok(false),
                Some(_) => Err((Side::Back, io::ErrorKind::UnexpectedEof.into())),
            };
        }
        clock.touch();
        let take = match left.as_deref_mut() {
            Some(l) => {
                let take = usize::try_from(*l).map_or(n, |l| l.min(n));
                *l -= take as u64;
                take
            }
            None => n,
        };
        send(client, buf.get(..take).unwrap_or_default(), dir, clock)
            .await
            .map_err(|e| (Side::Client, e))?;
        if take < n {
            return Ok(true);
        }
    }
}

/// Moves the rest of a chunked response body through `buf`, parsing its
/// framing to find the end. `Ok(true)`: bytes beyond the body arrived.
async fn chunked_body(
    back: &TcpStream,
    client: &TcpStream,
    chunks: &mut ChunkedDecoder,
    buf: &mut Vec<u8>,
    dir: &Dir<'_>,
    clock: &Clock,
) -> Result<bool, (Side, io::Error)> {
    while !chunks.is_done() {
        buf.clear();
        let n = read_some(back, buf, USER_BUF)
            .await
            .map_err(|e| (Side::Back, e))?;
        if n == 0 {
            return Err((Side::Back, io::ErrorKind::UnexpectedEof.into()));
        }
        clock.touch();
        let p = chunks
            .feed(buf, |_| {})
            .map_err(|e| (Side::Back, io::Error::new(io::ErrorKind::InvalidData, e)))?;
        send(client, buf.get(..p.used).unwrap_or_default(), dir, clock)
            .await
            .map_err(|e| (Side::Client, e))?;
        if p.done {
            return Ok(p.used < n);
        }
    }
    Ok(false)
}

/// Writes all of `bytes`, counting them as they go.
async fn send(s: &TcpStream, mut bytes: &[u8], dir: &Dir<'_>, clock: &Clock) -> io::Result<()> {
    while !bytes.is_empty() {
        s.writable().await?;
        match s.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                count(dir, clock, n);
                bytes = bytes.get(n..).unwrap_or_default();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads what is there (at least one byte, or 0 at EOF) onto the end of
/// `buf`, making room for `room` bytes if it has less.
async fn read_some(s: &TcpStream, buf: &mut Vec<u8>, room: usize) -> io::Result<usize> {
    if buf.capacity() - buf.len() < room / 2 {
        buf.reserve(room);
    }
    loop {
        s.readable().await?;
        match s.try_read_buf(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// An error response from the front itself (408, 502, 504).
fn gateway_error(status: u16) -> Vec<u8> {
    error_response(status, canonical_reason(status))
}

/// Half-closes `client` and reads what it still sends, until it closes or
/// `within` passed, so that closing does not reset the connection while the
/// response may still be in flight.
async fn linger(mut client: TcpStream, within: Duration) {
    let _ = client.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(within, async {
        loop {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    //! The HTTP relay over loopback against small scripted back-ends:
    //! framing in both directions, head rewriting, reuse and retry, interim
    //! responses, early answers, bad responses, protocol switches.
    use super::*;
    use crate::config::RelayConfig;
    use crate::stats::Counter;
    use tokio::net::TcpListener;

    /// A request as the back-end saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        head: String,
        body: Vec<u8>,
    }

    impl Seen {
        fn path(&self) -> &str {
            self.head.split(' ').nth(1).unwrap_or("")
        }
    }

    /// What the back-end does with the `n`th request of a connection.
    enum Reply {
        /// Write these bytes, keep the connection.
        Send(Vec<u8>),
        /// Write these bytes, then close.
        SendClose(Vec<u8>),
        /// Close without answering.
        Close,
    }

    type Script = fn(usize, &Seen) -> Reply;

    /// Serves every connection on `l` with `script`. Requests under
    /// /early are answered as soon as their head arrived, body unread;
    /// `Expect: 100-continue` gets its 100 before the body is read.
    async fn backend(l: TcpListener, script: Script) {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let _ = serve_conn(s, script).await;
            });
        }
    }

    async fn serve_conn(mut s: TcpStream, script: Script) -> io::Result<()> {
        let mut buf = Vec::new();
        for n in 0.. {
            let head = loop {
                if let Ok(Some(h)) = parse_request_head(&buf, &Default::default()) {
                    break h;
                }
                let mut chunk = [0u8; 4096];
                let got = s.read(&mut chunk).await?;
                if got == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..got]);
            };
            let text = String::from_utf8_lossy(&buf[..head.head_len]).into_owned();
            buf.drain(..head.head_len);
            let mut seen = Seen {
                head: text,
                body: Vec::new(),
            };
            if seen.path().starts_with("/early") {
                s.write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
                    .await?;
                return Ok(());
            }
            if seen
                .head
                .to_ascii_lowercase()
                .contains("expect: 100-continue")
            {
                s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            }
            let mut chunks = head.chunked.then(ChunkedDecoder::new);
            let mut want = head.content_length.unwrap_or(0) as usize;
            loop {
                if let Some(d) = chunks.as_mut() {
                    let p = d
                        .feed(&buf, |c| seen.body.extend_from_slice(c))
                        .map_err(io::Error::other)?;
                    buf.drain(..p.used);
                    if p.done {
                        break;
                    }
                } else {
                    let take = want.min(buf.len());
                    seen.body.extend(buf.drain(..take));
                    want -= take;
                    if want == 0 {
                        break;
                    }
                }
                let mut chunk = vec![0u8; 65536];
                let got = s.read(&mut chunk).await?;
                if got == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..got]);
            }
            match script(n, &seen) {
                Reply::Send(b) => s.write_all(&b).await?,
                Reply::SendClose(b) => {
                    s.write_all(&b).await?;
                    return Ok(());
                }
                Reply::Close => return Ok(()),
            }
        }
        Ok(())
    }

    /// 200 with a body that says what the back-end saw.
    fn digest(_: usize, seen: &Seen) -> Reply {
        let hop = seen.head.to_ascii_lowercase().contains("\r\nconnection:");
        let text = format!("{} len={} connection={hop}", seen.path(), seen.body.len());
        Reply::Send(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            )
            .into_bytes(),
        )
    }

    struct Rig {
        limits: RelayLimits,
        pipes: PipePool,
        upstreams: Arc<Upstreams>,
        up: Counter,
        down: Counter,
        connect_failures: AtomicU64,
        relaying: AtomicU64,
        back: SocketAddr,
    }

    impl Rig {
        async fn new(copy: RelayCopy, script: Script) -> Rig {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let back = l.local_addr().expect("addr");
            tokio::spawn(backend(l, script));
            let cfg = RelayConfig {
                copy,
                idle_timeout_ms: 10_000,
                ..RelayConfig::default()
            };
            Rig {
                limits: RelayLimits::new(&cfg, Default::default(), Duration::from_secs(5)),
                pipes: PipePool::new(8),
                upstreams: Upstreams::new(&cfg),
                up: Counter::default(),
                down: Counter::default(),
                connect_failures: AtomicU64::new(0),
                relaying: AtomicU64::new(0),
                back,
            }
        }

        /// Relays one client connection on which `client` runs; returns
        /// what `client` returned and how the relay ended.
        async fn run<T>(
            &self,
            client: impl std::future::Future<Output = T>,
            client_side: TcpStream,
        ) -> (T, Done) {
            let report = |e: Event<'_>| match e {
                Event::Relaying => {
                    self.relaying.fetch_add(1, Ordering::Relaxed);
                }
                Event::ConnectFailed(_) => {
                    self.connect_failures.fetch_add(1, Ordering::Relaxed);
                }
            };
            let relay = HttpRelay {
                limits: &self.limits,
                meter: Meter {
                    up: &self.up,
                    down: &self.down,
                },
                pipes: &self.pipes,
                upstreams: &self.upstreams,
                report: &report,
            };
            let front = async {
                // As the front: read up to a complete first head.
                let mut first = Vec::new();
                loop {
                    if let Ok(Some(_)) = parse_request_head(&first, &Default::default()) {
                        break;
                    }
                    let n = read_some(&client_side, &mut first, 4096)
                        .await
                        .expect("read");
                    assert!(n > 0, "client closed before a request");
                }
                relay.serve(client_side, self.back, &first).await
            };
            let within = Duration::from_secs(20);
            tokio::time::timeout(within, async { tokio::join!(client, front) })
                .await
                .expect("relay and client finish")
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    /// Reads one response from `c` (`buf` keeps what follows it): its
    /// raw bytes. Understands Content-Length, chunked, and EOF.
    async fn response(c: &mut TcpStream, buf: &mut Vec<u8>, head_request: bool) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let h = loop {
                if let Ok(Some(h)) = parse_response_head(buf) {
                    break h;
                }
                let mut chunk = vec![0u8; 65536];
                let n = c.read(&mut chunk).await.expect("read");
                assert!(
                    n > 0,
                    "EOF inside a head: {:?}",
                    String::from_utf8_lossy(buf)
                );
                buf.extend_from_slice(&chunk[..n]);
            };
            out.extend(buf.drain(..h.head_len));
            if h.status == 101 {
                return out;
            }
            if h.is_interim() {
                continue;
            }
            let mut chunks = ChunkedDecoder::new();
            let mut need = match h.framing(head_request) {
                BodyFraming::Empty => return out,
                BodyFraming::Length(n) => Some(n as usize),
                BodyFraming::Chunked => None,
                BodyFraming::UntilClose => {
                    c.read_to_end(buf).await.expect("read to EOF");
                    out.append(buf);
                    return out;
                }
            };
            loop {
                match need.as_mut() {
                    Some(n) => {
                        let take = (*n).min(buf.len());
                        out.extend(buf.drain(..take));
                        *n -= take;
                        if *n == 0 {
                            return out;
                        }
                    }
                    None => {
                        let p = chunks.feed(buf, |_| {}).expect("chunked");
                        out.extend(buf.drain(..p.used));
                        if p.done {
                            return out;
                        }
                    }
                }
                let mut chunk = vec![0u8; 65536];
                let n = c.read(&mut chunk).await.expect("read");
                assert!(n > 0, "EOF inside a body");
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }

    fn get(path: &str, close: bool) -> String {
        let conn = if close { "Connection: close\r\n" } else { "" };
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n{conn}\r\n")
    }

    async fn eof(c: &mut TcpStream) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await,
            Ok(Ok(0))
        )
    }

    #[tokio::test]
    async fn requests_of_all_framings_reuse_one_backend_connection() {
        for copy in [RelayCopy::Auto, RelayCopy::Splice, RelayCopy::Userspace] {
            let rig = Rig::new(copy, digest).await;
            let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
            let mut chunked = Vec::new();
            for piece in big.chunks(7_000) {
                chunked.extend_from_slice(format!("{:x};e=1\r\n", piece.len()).as_bytes());
                chunked.extend_from_slice(piece);
                chunked.extend_from_slice(b"\r\n");
            }
            chunked.extend_from_slice(b"0\r\nT: 1\r\n\r\n");
            for round in 0..2 {
                let (mut c, f) = pair().await;
                let client = async {
                    let mut buf = Vec::new();
                    let mut got = Vec::new();
                    c.write_all(get("/a", false).as_bytes())
                        .await
                        .expect("send");
                    got.push(response(&mut c, &mut buf, false).await);
                    let post = format!(
                        "POST /cl HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                        big.len()
                    );
                    c.write_all(post.as_bytes()).await.expect("send");
                    // The body in pieces, as a slow client sends it.
                    for piece in big.chunks(100_000) {
                        c.write_all(piece).await.expect("send");
                        tokio::task::yield_now().await;
                    }
                    got.push(response(&mut c, &mut buf, false).await);
                    // A chunked POST and a GET pipelined behind it.
                    let mut wire =
                        b"POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                            .to_vec();
                    wire.extend_from_slice(&chunked);
                    wire.extend_from_slice(get("/last", true).as_bytes());
                    c.write_all(&wire).await.expect("send");
                    got.push(response(&mut c, &mut buf, false).await);
                    got.push(response(&mut c, &mut buf, false).await);
                    (got, eof(&mut c).await)
                };
                let ((got, closed), done) = rig.run(client, f).await;
                let text: Vec<String> = got
                    .iter()
                    .map(|r| String::from_utf8_lossy(r).into_owned())
                    .collect();
                let n = big.len();
                assert!(
                    text[0].ends_with("/a len=0 connection=false"),
                    "{copy:?} {}",
                    text[0]
                );
                assert!(
                    text[1].ends_with(&format!("/cl len={n} connection=false")),
                    "{}",
                    text[1]
                );
                assert!(
                    text[2].ends_with(&format!("/chunked len={n} connection=false")),
                    "{}",
                    text[2]
                );
                // The client asked to close: the response says so, the
                // back-end never heard of it, and the client gets EOF.
                assert!(text[3].contains("\r\nConnection: close\r\n"), "{}", text[3]);
                assert!(
                    text[3].ends_with("/last len=0 connection=false"),
                    "{}",
                    text[3]
                );
                assert!(closed, "the client connection was not closed");
                assert_eq!(done.end, End::Closed);
                assert_eq!(rig.relaying.load(Ordering::Relaxed), round + 1);
            }
            let st = rig.upstreams.stats();
            assert_eq!(
                (st.opened, st.reused, st.idle),
                (1, 7, 1),
                "{copy:?}: {st:?}"
            );
        }
    }

    fn framings(n: usize, seen: &Seen) -> Reply {
        let raw: &[u8] = match seen.path() {
            "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;x=y\r\n!\r\n0\r\nT: v\r\n\r\n",
            "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
            "/204" => b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            "/304" => b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
            "/hints" => b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            "/until-close" => {
                return Reply::SendClose(b"HTTP/1.1 200 OK\r\nServer: old\r\n\r\nall of this, then EOF".to_vec())
            }
            "/garbage" => b"SMTP ready\r\n\r\n",
            _ => return digest(n, seen),
        };
        Reply::Send(raw.to_vec())
    }

    #[tokio::test]
    async fn responses_pass_through_byte_exact_whatever_their_framing() {
        for copy in [RelayCopy::Auto, RelayCopy::Splice, RelayCopy::Userspace] {
            let rig = Rig::new(copy, framings).await;
            let (mut c, f) = pair().await;
            let client = async {
                let mut buf = Vec::new();
                let mut got = Vec::new();
                for (method, path) in [
                    ("GET", "/chunked"),
                    ("HEAD", "/head"),
                    ("GET", "/204"),
                    ("GET", "/304"),
                    ("GET", "/hints"),
                    ("GET", "/until-close"),
                ] {
                    let req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n");
                    c.write_all(req.as_bytes()).await.expect("send");
                    got.push(response(&mut c, &mut buf, method == "HEAD").await);
                }
                got
            };
            let (got, done) = rig.run(client, f).await;
            for (i, path) in ["/chunked", "/head", "/204", "/304", "/hints"]
                .iter()
                .enumerate()
            {
                let Reply::Send(want) = framings(
                    0,
                    &Seen {
                        head: format!("GET {path} HTTP"),
                        body: Vec::new(),
                    },
                ) else {
                    panic!("script")
                };
                assert_eq!(
                    String::from_utf8_lossy(&got[i]),
                    String::from_utf8_lossy(&want),
                    "{copy:?} {path}"
                );
            }
            // A body that only the back-end's close ends: the client
            // connection ends too, and is told so.
            assert_eq!(
                String::from_utf8_lossy(&got[5]),
                "HTTP/1.1 200 OK\r\nServer: old\r\nConnection: close\r\n\r\nall of this, then EOF"
            );
            assert_eq!(done.end, End::Closed);
            let st = rig.upstreams.stats();
            assert_eq!(
                (st.opened, st.reused, st.idle),
                (1, 5, 0),
                "{copy:?}: {st:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_bad_response_is_a_502_and_a_refused_connect_too() {
        let rig = Rig::new(RelayCopy::Splice, framings).await;
        let (mut c, f) = pair().await;
        let client = async {
            c.write_all(get("/garbage", false).as_bytes())
                .await
                .expect("send");
            let mut all = Vec::new();
            c.read_to_end(&mut all).await.expect("read");
            all
        };
        let (got, done) = rig.run(client, f).await;
        assert!(
            got.starts_with(b"HTTP/1.1 502 Bad Gateway\r\n"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        assert_eq!(done.end, End::Error(Side::Back));
        assert_eq!(rig.upstreams.stats().idle, 0);

        let mut rig = Rig::new(RelayCopy::Splice, framings).await;
        // Nobody listens there any more.
        rig.back = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr")
        };
        let (mut c, f) = pair().await;
        let client = async {
            c.write_all(get("/", false).as_bytes()).await.expect("send");
            let mut all = Vec::new();
            c.read_to_end(&mut all).await.expect("read");
            all
        };
        let (got, _) = rig.run(client, f).await;
        assert!(got.starts_with(b"HTTP/1.1 502 Bad Gateway\r\n"));
        assert_eq!(rig.connect_failures.load(Ordering::Relaxed), 1);
        assert_eq!(
            rig.relaying.load(Ordering::Relaxed),
            0,
            "not counted as relayed"
        );
    }

    /// Answers the first request of each connection, closes at the second:
    /// every kept connection is stale when it is used.
    fn one_per_connection(n: usize, seen: &Seen) -> Reply {
        if n == 0 {
            digest(n, seen)
        } else {
            Reply::Close
        }
    }

    #[tokio::test]
    async fn a_stale_kept_connection_is_retried_on_a_new_one() {
        let rig = Rig::new(RelayCopy::Splice, one_per_connection).await;
        let (mut c, f) = pair().await;
        let client = async {
            let mut buf = Vec::new();
            let mut got = Vec::new();
            for i in 0..10 {
                c.write_all(get(&format!("/{i}"), false).as_bytes())
                    .await
                    .expect("send");
                got.push(response(&mut c, &mut buf, false).await);
            }
            // With a body there is no retry: the body is gone. 502.
            c.write_all(b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
                .await
                .expect("send");
            let mut last = Vec::new();
            c.read_to_end(&mut last).await.expect("read");
            (got, last)
        };
        let ((got, last), _) = rig.run(client, f).await;
        for (i, r) in got.iter().enumerate() {
            assert!(
                String::from_utf8_lossy(r).ends_with(&format!("/{i} len=0 connection=false")),
                "{i}"
            );
        }
        assert!(
            last.starts_with(b"HTTP/1.1 502 "),
            "{}",
            String::from_utf8_lossy(&last)
        );
        let st = rig.upstreams.stats();
        assert_eq!((st.opened, st.reused, st.retried), (10, 10, 9), "{st:?}");
    }

    #[tokio::test]
    async fn a_post_on_a_stale_connection_is_not_sent_twice() {
        let rig = Rig::new(RelayCopy::Splice, one_per_connection).await;
        let (mut c, f) = pair().await;
        let client = async {
            let mut buf = Vec::new();
            c.write_all(get("/0", false).as_bytes())
                .await
                .expect("send");
            let first = response(&mut c, &mut buf, false).await;
            // No body, but not idempotent: the dead back-end may have acted
            // on it, so it is not sent again.
            c.write_all(b"POST /once HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
                .await
                .expect("send");
            let mut last = Vec::new();
            c.read_to_end(&mut last).await.expect("read");
            (first, last)
        };
        let ((first, last), _) = rig.run(client, f).await;
        assert!(first.starts_with(b"HTTP/1.1 200 "));
        assert!(
            last.starts_with(b"HTTP/1.1 502 "),
            "{}",
            String::from_utf8_lossy(&last)
        );
        let st = rig.upstreams.stats();
        assert_eq!((st.opened, st.reused, st.retried), (1, 1, 0), "{st:?}");
    }

    #[tokio::test]
    async fn a_later_head_trickled_past_head_timeout_gets_408() {
        let mut rig = Rig::new(RelayCopy::Splice, digest).await;
        rig.limits.head_timeout = Duration::from_millis(300);
        let (mut c, f) = pair().await;
        let client = async {
            let mut buf = Vec::new();
            c.write_all(get("/a", false).as_bytes())
                .await
                .expect("send");
            let first = response(&mut c, &mut buf, false).await;
            // Idle between requests is fine (idle_timeout is 10 s)...
            tokio::time::sleep(Duration::from_millis(400)).await;
            // ...but a head that starts must end within head_timeout.
            let t = Instant::now();
            c.write_all(b"GET /b HTTP/1.1\r\nHo").await.expect("send");
            let mut last = Vec::new();
            c.read_to_end(&mut last).await.expect("read");
            (first, last, t.elapsed())
        };
        let ((first, last, took), _) = rig.run(client, f).await;
        assert!(first.starts_with(b"HTTP/1.1 200 "));
        assert!(
            last.starts_with(b"HTTP/1.1 408 "),
            "{}",
            String::from_utf8_lossy(&last)
        );
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    #[tokio::test]
    async fn a_kept_connection_loses_keep_alive_fields_and_bare_lf() {
        /// Says what it got, with a Keep-Alive field meant for the relay.
        fn with_keep_alive(_: usize, seen: &Seen) -> Reply {
            let bare_lf = seen.head.replace("\r\n", "").contains('\n');
            let text = format!("bare_lf={bare_lf}");
            Reply::Send(
                format!(
                    "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1000\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                )
                .into_bytes(),
            )
        }
        let rig = Rig::new(RelayCopy::Splice, with_keep_alive).await;
        let (mut c, f) = pair().await;
        let client = async {
            let mut buf = Vec::new();
            c.write_all(b"GET /lf HTTP/1.1\nHost: t\nX-A: 1\n\n")
                .await
                .expect("send");
            let r = response(&mut c, &mut buf, false).await;
            drop(c);
            r
        };
        let (r, _) = rig.run(client, f).await;
        let text = String::from_utf8_lossy(&r).into_owned();
        assert!(text.ends_with("bare_lf=false"), "{text}");
        assert!(!text.to_ascii_lowercase().contains("keep-alive:"), "{text}");
    }

    #[tokio::test]
    async fn expect_100_continue_and_an_early_answer() {
        let rig = Rig::new(RelayCopy::Splice, digest).await;
        let (mut c, f) = pair().await;
        let client = async {
            c.write_all(
                b"PUT /up HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            )
            .await
            .expect("send");
            let mut buf = Vec::new();
            // The 100 must come through before the body is sent.
            let interim = loop {
                if let Ok(Some(h)) = parse_response_head(&buf) {
                    break h;
                }
                let mut chunk = [0u8; 1024];
                let n = c.read(&mut chunk).await.expect("read");
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            };
            assert_eq!(interim.status, 100);
            buf.drain(..interim.head_len);
            c.write_all(b"hello").await.expect("body");
            let ok = response(&mut c, &mut buf, false).await;
            // An answer before the body: the client gets it with
            // Connection: close, then EOF, though it is still sending.
            c.write_all(b"POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n")
                .await
                .expect("send");
            let (mut r, mut w) = c.split();
            let sending = async {
                let zeros = vec![0u8; 64 * 1024];
                for _ in 0..10 {
                    if w.write_all(&zeros).await.is_err() {
                        break;
                    }
                }
            };
            let mut rest = Vec::new();
            let reading = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut rest));
            let (_, read) = tokio::join!(sending, reading);
            assert!(
                matches!(read, Ok(Ok(_))),
                "EOF after the early answer: {read:?}"
            );
            (ok, rest)
        };
        let ((ok, early), _) = rig.run(client, f).await;
        let ok = String::from_utf8_lossy(&ok);
        assert!(ok.ends_with("/up len=5 connection=false"), "{ok}");
        let early = String::from_utf8_lossy(&early);
        assert!(
            early.starts_with("HTTP/1.1 413 ") && early.contains("\r\nConnection: close\r\n"),
            "{early}"
        );
        assert_eq!(
            rig.upstreams.stats().idle,
            0,
            "a connection with an unread body is not kept"
        );
    }

    fn tunnel(_: usize, _: &Seen) -> Reply {
        Reply::Send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
                .to_vec(),
        )
    }

    #[tokio::test]
    async fn an_upgrade_becomes_a_tunnel_with_its_head_intact() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let back = l.local_addr().expect("addr");
        let mut rig = Rig::new(RelayCopy::Splice, tunnel).await;
        rig.back = back;
        let server = async {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.expect("head");
                head.push(b[0]);
            }
            s.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n",
            )
            .await
            .expect("101");
            let mut ping = [0u8; 4];
            s.read_exact(&mut ping).await.expect("ping");
            s.write_all(b"pong").await.expect("pong");
            String::from_utf8_lossy(&head).into_owned()
        };
        let (mut c, f) = pair().await;
        let client = async {
            c.write_all(
                b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
            )
            .await
            .expect("send");
            let mut buf = Vec::new();
            let head = response(&mut c, &mut buf, false).await;
            c.write_all(b"ping").await.expect("ping");
            let mut pong = [0u8; 4];
            c.read_exact(&mut pong).await.expect("pong");
            drop(c);
            (head, pong)
        };
        let (((head, pong), _), seen) = tokio::join!(rig.run(client, f), server);
        assert!(head.starts_with(b"HTTP/1.1 101 "));
        assert_eq!(&pong, b"pong");
        assert!(seen.contains("\r\nConnection: Upgrade\r\n"), "{seen}");
        assert_eq!(rig.upstreams.stats().idle, 0);
    }
}
