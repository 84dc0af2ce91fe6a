//! baton-cache: the back-end's caching mode, an HTTP/1.1 caching reverse proxy in front of one
//! origin server.
//!
//! Layer: async I/O glue beside `baton-serve`. In caching mode the back-end answers handed-off
//! (and direct) connections with [`serve_connection`] instead of serving a directory: GET and
//! HEAD are answered from a bounded in-memory [`ObjectCache`]; a miss is fetched from the
//! origin, cached and served. Under content-aware distribution (LARD) each back-end's cache
//! then holds its share of the working set, and misses cost an origin fetch, as in real life.
//!
//! Invariants:
//! - The cache never holds more than its capacity in bytes, counted as [`charge`] says (body,
//!   key, stored headers and a fixed per-entry overhead). Bodies larger than the maximum
//!   object size (default capacity/8) are served but never stored; a fill buffers at most that
//!   much, and at most [`ProxyLimits::max_concurrent_fills`] fills run at once.
//! - One origin fetch per key at a time: concurrent misses for the same key wait for the fetch
//!   in flight (single-flight) and are answered from its result. The fetch runs on its own
//!   task, so a client going away does not cancel it for the others.
//! - Every origin interaction is bounded: connect ([`ProxyLimits::connect_timeout`]), the
//!   whole fill ([`ProxyLimits::fetch_timeout`]), each stall of a streamed body
//!   ([`ProxyLimits::origin_idle_timeout`]). An unreachable origin gives 502, a timeout 504.
//! - Client connections behave as `baton-serve`'s (same code: keep-alive, pipelining,
//!   half-close, head and send timeouts); a client going away ends its connection promptly and
//!   is counted in `aborted`. Nothing a client or the origin sends can make the proxy panic.
//!
//! Behaviour:
//! - Methods other than GET and HEAD get 405. The cache key is the request target, path and
//!   query, as sent. A HEAD miss fetches the object with GET, so that it fills the cache (as
//!   nginx's `proxy_cache_convert_head` does).
//! - Fills ask the origin for the whole object with no client headers (so the identity coding,
//!   no ranges, no conditionals). A `200` is cached, with its `Content-Type`, `ETag` and
//!   `Last-Modified`, unless it carries `Set-Cookie`, `Cache-Control: no-store, private or
//!   no-cache`, `Vary: *` or a content coding. Cached objects are answered like files by
//!   `baton-serve`, with its code: `If-None-Match`/`If-Modified-Since` (304) and one byte
//!   range (206, or 416 with `Content-Range: bytes */len`); `If-Range` honours dates only.
//! - Objects stay until evicted: there is no expiry or revalidation. That fits an origin of
//!   immutable content (the lab's); an origin whose objects change needs a TTL (future work).
//! - Other origin statuses (404 included) are passed on and not cached: a 404 that later turns
//!   into a file would otherwise need invalidation, and concurrent requests for the same
//!   missing object already share one fetch, since a small non-200 answer (up to 64 KiB of
//!   body) is handed to all of them.
//! - A response that cannot be buffered (too large to cache, or private to one client) is
//!   streamed through to one waiting request; the others, and range or conditional requests
//!   for it, fetch it on their own with their `Range`/`If-*` headers forwarded
//!   (`passed_through`).
//! - Responses carry `X-Cache: HIT` when served from the cache, `MISS` otherwise.
//! - The origin is plain HTTP (`http://host:port`); https is refused at construction. Requests
//!   to it carry its own authority as `Host`, not the client's.

mod body;
mod cache;
mod origin;
mod proxy;

use std::convert::Infallible;
use std::sync::Arc;

use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncWrite};

pub use body::ProxyBody;
pub use cache::{charge, CacheCounters, CachedObject, Insert, ObjectCache, ENTRY_OVERHEAD};
pub use proxy::{CacheStats, CachingProxy, ProxyLimits};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The origin URL is https; the caching tier fetches over plain HTTP only.
    #[error("origin {0}: https is not supported; give an http://host:port origin")]
    HttpsOrigin(String),
    /// The origin URL is not of the form `http://host[:port]`.
    #[error("origin {uri}: {why}")]
    BadOrigin { uri: String, why: &'static str },
    /// A [`ProxyLimits`] value that cannot work.
    #[error("invalid limits: {0}")]
    InvalidLimits(&'static str),
    /// Invalid client-side limits, or a client connection that ended with an error (almost
    /// always the client's doing; see [`baton_serve::ServeError::Connection`]).
    #[error(transparent)]
    Serve(#[from] baton_serve::ServeError),
}

/// Serves one client connection through the proxy: HTTP/1.1 (and 1.0), keep-alive and
/// pipelining, until the client closes it, asks for `Connection: close`, stays idle past the
/// header timeout, or fails. Set `TCP_NODELAY` on a TCP socket first, as for
/// [`baton_serve::serve_connection`].
pub async fn serve_connection<I>(io: I, proxy: Arc<CachingProxy>) -> Result<(), Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    proxy.serve_counters().add_connection();
    let limits = proxy.limits().serve;
    let service = service_fn(move |req| {
        let proxy = Arc::clone(&proxy);
        async move { Ok::<_, Infallible>(proxy.respond(req).await) }
    });
    baton_serve::serve_http1(io, &limits, service, std::future::pending()).await?;
    Ok(())
}
