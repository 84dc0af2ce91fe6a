//! baton-serve: the back-end's HTTP/1.1 static file server.
//!
//! Layer: async I/O glue above the kernel handoff. The back-end daemon restores a handed-off
//! TCP connection (the request bytes the front-end already read are back in the socket's
//! receive queue) and passes it to [`serve_connection`], which answers it and any further
//! keep-alive or pipelined requests on it, like nginx serving a directory would. The same code
//! serves the back-end's plain "direct" port through [`serve_listener`], the baseline in
//! benchmarks.
//!
//! Invariants:
//! - No response ever carries bytes from outside the root: the request path is percent-decoded,
//!   refused if it contains NUL or climbs above the root, then every candidate file is
//!   canonicalized and must still lie under the canonical root (so symlinks leading out are
//!   404). A rename racing between that check and `open` is not defended against; the root is
//!   assumed to be writable only by its operator.
//! - Bodies are streamed from the open file in chunks of [`Limits::chunk_size`], never read
//!   whole, and the announced `Content-Length` is exact: if the file shrinks meanwhile, the
//!   connection is cut rather than padded.
//! - A request never waits for tokio's blocking pool: the path lookup and the file reads run on
//!   the connection's task (see `body` for why: pool threads were the keep-alive tail).
//! - A connection whose client goes away, or stops reading for [`Limits::send_timeout`], ends
//!   promptly; its file is closed when the response is dropped, and the response is counted in
//!   [`ServeStats::aborted`]. Nothing the client sends can make the server panic.
//!
//! Behaviour: GET and HEAD; other methods get 405 with `Allow: GET, HEAD`. A directory is
//! served as its `index.html` (no listings) and, when named without its trailing slash,
//! redirected with 301 to the slashed path, as nginx does. Query strings are ignored.
//! `Content-Type` comes from the extension (`application/octet-stream` when unknown). Weak
//! `ETag`s (size and mtime) and `Last-Modified` drive `If-None-Match` / `If-Modified-Since`
//! (304) and `If-Range`. One byte range (`a-b`, `a-`, `-n`) gets 206; an unsatisfiable one 416
//! with `Content-Range: bytes */len`; a multi-range request gets the whole file with 200
//! (allowed by RFC 9110, and simpler than `multipart/byteranges`). `If-Match` and
//! `If-Unmodified-Since` are not implemented (they matter for writes, and this server is
//! read-only).

mod body;
pub mod conditional;
mod handler;
mod io;
mod path;
mod stats;

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{service_fn, HttpService};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use io::{Lingering, LINGER, LINGER_BYTES};
pub use stats::{Counters, ServeStats};

use crate::io::SendTimeout;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The document root cannot be resolved or read.
    #[error("document root {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The document root exists but is not a directory.
    #[error("document root {path} is not a directory")]
    RootNotDirectory { path: PathBuf },
    /// A [`Limits`] value that cannot work.
    #[error("invalid limits: {0}")]
    InvalidLimits(&'static str),
    /// The connection ended with an error. Almost always the client's doing: it reset or closed
    /// mid-response, sent an unparsable request, or was silent past a timeout
    /// (`hyper::Error::is_timeout`). Worth a debug line, not an alarm.
    #[error("HTTP connection: {0}")]
    Connection(#[from] hyper::Error),
}

/// Per-connection limits. The defaults follow nginx where it has an equivalent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time allowed for a whole request head, counted from when the server starts waiting for
    /// it; the same clock closes idle keep-alive connections. Default 30 s.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) in bytes; larger gets 431 from hyper.
    /// Default 16 KiB.
    pub max_header_size: usize,
    /// Most header fields in a request; more gets 431. Default 100.
    pub max_headers: usize,
    /// Longest time one write may stay blocked on a client that does not read (nginx's
    /// `send_timeout`). Default 60 s.
    pub send_timeout: Duration,
    /// Body chunk size read from the file per frame. Default 128 KiB.
    pub chunk_size: usize,
    /// In [`serve_listener`], how long in-flight connections may finish after shutdown before
    /// they are dropped. Default 10 s.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(30),
            max_header_size: 16 * 1024,
            max_headers: 100,
            send_timeout: Duration::from_secs(60),
            chunk_size: 128 * 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// Checks that the limits can work (positive timeouts, sane sizes).
    pub fn validate(&self) -> Result<(), ServeError> {
        if self.header_read_timeout.is_zero() || self.send_timeout.is_zero() {
            return Err(ServeError::InvalidLimits("timeouts must be positive"));
        }
        if self.max_header_size < 256 || self.max_headers == 0 {
            return Err(ServeError::InvalidLimits("request head limits too small"));
        }
        if !(4096..=16 * 1024 * 1024).contains(&self.chunk_size) {
            return Err(ServeError::InvalidLimits(
                "chunk_size must be 4 KiB..16 MiB",
            ));
        }
        Ok(())
    }
}

/// A directory served read-only, with the counters of everything served from it.
#[derive(Debug)]
pub struct StaticFiles {
    /// Canonical (absolute, symlink-free) at construction; every served file lies under it.
    root: PathBuf,
    limits: Limits,
    counters: Arc<Counters>,
}

impl StaticFiles {
    /// Serves the directory `root` with default [`Limits`]. Fails if it does not exist, is not
    /// a directory or cannot be listed.
    pub fn new(root: impl AsRef<Path>) -> Result<Self, ServeError> {
        let path = root.as_ref();
        let root_err = |source| ServeError::Root {
            path: path.to_path_buf(),
            source,
        };
        let root = std::fs::canonicalize(path).map_err(root_err)?;
        if !std::fs::metadata(&root).map_err(root_err)?.is_dir() {
            return Err(ServeError::RootNotDirectory {
                path: path.to_path_buf(),
            });
        }
        std::fs::read_dir(&root).map_err(root_err)?;
        Ok(StaticFiles {
            root,
            limits: Limits::default(),
            counters: Arc::default(),
        })
    }

    /// Replaces the limits.
    pub fn with_limits(mut self, limits: Limits) -> Result<Self, ServeError> {
        limits.validate()?;
        self.limits = limits;
        Ok(self)
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ServeStats {
        self.counters.snapshot()
    }
}

/// Serves one connection with HTTP/1.1 (HTTP/1.0 too), keep-alive and pipelining, until the
/// client closes it, asks for `Connection: close`, stays idle past
/// [`Limits::header_read_timeout`], or fails.
///
/// For a TCP socket the caller should set `TCP_NODELAY`, as [`serve_listener`] does: a
/// response's last partial segment otherwise waits for the client's delayed ACK.
pub async fn serve_connection<I>(io: I, files: Arc<StaticFiles>) -> Result<(), ServeError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    run_connection(io, files, std::future::pending()).await
}

/// Like [`serve_connection`]; when `stop` completes, the connection finishes the response in
/// flight (if any) and closes instead of waiting for another request.
async fn run_connection<I, S>(io: I, files: Arc<StaticFiles>, stop: S) -> Result<(), ServeError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Future<Output = ()>,
{
    files.counters.add_connection();
    let limits = files.limits;
    let service = service_fn(move |req| {
        let files = Arc::clone(&files);
        async move { Ok::<_, Infallible>(handler::respond(files, req).await) }
    });
    serve_http1(io, &limits, service, stop).await
}

/// Serves one connection with any hyper `service`, with the connection behaviour of
/// [`serve_connection`]: HTTP/1.1 and 1.0, keep-alive, pipelining, half-close, the head and
/// send timeouts and head size limits of `limits`. When `stop` completes, the response in
/// flight (if any) finishes and the connection closes instead of waiting for another request.
/// Public for the back-end's other HTTP handlers (the caching proxy), so that every port of
/// the back-end behaves alike; the caller counts the connection.
pub async fn serve_http1<I, S, St>(
    io: I,
    limits: &Limits,
    service: S,
    stop: St,
) -> Result<(), ServeError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    St: Future<Output = ()>,
{
    let io = TokioIo::new(Lingering::new(SendTimeout::new(io, limits.send_timeout)));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_size)
        .max_headers(limits.max_headers)
        .keep_alive(true)
        // A client may shut down its sending side after the request and still read the answer.
        .half_close(true)
        // Not `pipeline_flush(true)`: with it, hyper 1.12 never flushes its automatic 400/431
        // answer to an unparsable request, and it queued ~60 MiB of a file body in memory for
        // a client that did not read. Pipelining works without it, one flush per response.
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::pin!(stop);
    let result = tokio::select! {
        res = conn.as_mut() => res,
        () = &mut stop => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    Ok(result?)
}

/// Pause after a failed `accept` (typically EMFILE), so that the loop does not spin while the
/// condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections and serves each on its own task until `shutdown` completes. Then it
/// stops accepting (closing the listener), lets connections finish the response in flight for
/// up to [`Limits::shutdown_grace`], drops the rest, and returns.
pub async fn serve_listener(listener: TcpListener, files: Arc<StaticFiles>, shutdown: impl Future) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, error = %e, "TCP_NODELAY failed");
                    }
                    let files = Arc::clone(&files);
                    let mut stop_rx = stop_rx.clone();
                    conns.spawn(async move {
                        let stop = async move {
                            // A dropped sender means shutdown too.
                            let _ = stop_rx.wait_for(|stop| *stop).await;
                        };
                        if let Err(e) = run_connection(stream, files, stop).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        tracing::error!(error = %e, "connection task panicked");
                    }
                }
            }
        }
    }
    drop(listener);
    // Receivers may all be gone already; that is fine.
    let _ = stop_tx.send(true);
    let grace = files.limits.shutdown_grace;
    let drained =
        tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            remaining = conns.len(),
            "connections still busy after the shutdown grace period; dropping them"
        );
        conns.shutdown().await;
    }
}
