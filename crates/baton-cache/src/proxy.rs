//! [`CachingProxy`]: answers GET and HEAD from the [`ObjectCache`], filling it from the origin
//! with one fetch per key at a time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use baton_serve::conditional::{not_modified, range_plan, RangePlan, Validators};
use baton_serve::{Counters, Limits};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::response::Parts;
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::body::ProxyBody;
use crate::cache::{CachedObject, ObjectCache};
use crate::origin::{self, Capped, FetchFailure, Origin};
use crate::Error;

const SERVER: HeaderValue = HeaderValue::from_static("baton");
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const ALLOW: HeaderValue = HeaderValue::from_static("GET, HEAD");
const BYTES: HeaderValue = HeaderValue::from_static("bytes");
const X_CACHE: &str = "x-cache";
const HIT: HeaderValue = HeaderValue::from_static("HIT");
const MISS: HeaderValue = HeaderValue::from_static("MISS");

/// Largest body of a non-`200` origin response (an error page, a redirect) that is buffered
/// and handed to every request waiting on the same fetch. Larger ones go to one of them.
const SHARED_BODY_MAX: u64 = 64 * 1024;

/// Extra time a coalesced request waits beyond the fetch timeout before giving up with 504:
/// the fetch is bounded by that timeout already; this only guards against a lost wake-up.
const WAIT_SLACK: Duration = Duration::from_secs(1);

/// Limits of the proxy: the client side as for the static server, and the origin side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyLimits {
    /// Client connections, as for [`baton_serve::StaticFiles`]; `chunk_size` is also the
    /// frame size for bodies sent from memory.
    pub serve: Limits,
    /// TCP connect to the origin. Default 2 s.
    pub connect_timeout: Duration,
    /// A whole fetch that fills the cache: waiting for a fill slot, connect, the response head
    /// and the whole body (at most the cache's maximum object size). Also bounds the response
    /// head of a fetch streamed through, and how long coalesced requests wait. Default 30 s.
    pub fetch_timeout: Duration,
    /// Longest wait for the next piece of an origin body streamed through to a client (objects
    /// too large to cache). Default 30 s.
    pub origin_idle_timeout: Duration,
    /// Cache fills in progress at once. Each buffers up to the maximum object size, so this
    /// bounds their memory. Default 64.
    pub max_concurrent_fills: usize,
    /// Idle keep-alive connections kept to the origin. Default 32.
    pub origin_idle_connections: usize,
    /// How long an idle origin connection is kept. Default 30 s.
    pub origin_keepalive: Duration,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            serve: Limits::default(),
            connect_timeout: Duration::from_secs(2),
            fetch_timeout: Duration::from_secs(30),
            origin_idle_timeout: Duration::from_secs(30),
            max_concurrent_fills: 64,
            origin_idle_connections: 32,
            origin_keepalive: Duration::from_secs(30),
        }
    }
}

impl ProxyLimits {
    /// Checks that the limits can work.
    pub fn validate(&self) -> Result<(), Error> {
        self.serve.validate()?;
        if self.connect_timeout.is_zero()
            || self.fetch_timeout.is_zero()
            || self.origin_idle_timeout.is_zero()
        {
            return Err(Error::InvalidLimits("origin timeouts must be positive"));
        }
        if self.max_concurrent_fills == 0 || self.max_concurrent_fills > Semaphore::MAX_PERMITS {
            return Err(Error::InvalidLimits(
                "max_concurrent_fills must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Counters of a [`CachingProxy`], for the back-end's reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// Capacity of the cache in bytes (see [`crate::charge`]).
    pub capacity: u64,
    /// Largest body that is cached.
    pub max_object_size: u64,
    /// Bytes held, by the same measure as the capacity.
    pub bytes_cached: u64,
    /// Objects held.
    pub objects: u64,
    /// Cache lookups: one per GET or HEAD with a valid target; `hits + misses`.
    pub lookups: u64,
    pub hits: u64,
    /// Lookups that found nothing, whether they started a fetch or joined one.
    pub misses: u64,
    pub inserts: u64,
    pub evictions: u64,
    /// Objects served but not cached because of their size.
    pub too_large: u64,
    /// Body bytes received from the origin.
    pub origin_bytes: u64,
    /// Origin fetches that failed (refused, timed out, cut short, unparsable).
    pub origin_errors: u64,
    /// Requests sent to the origin.
    pub origin_requests: u64,
    /// Misses that waited for a fetch already in flight instead of starting one.
    pub coalesced: u64,
    /// Requests fetched on their own because the object could not be cached or shared with
    /// them (a range or conditional request for an object too large to cache, or a second
    /// waiter for one).
    pub passed_through: u64,
    /// Client connections served.
    pub connections: u64,
    /// Client requests answered, every method and status.
    pub requests: u64,
    /// Response body bytes sent to clients.
    pub bytes_sent: u64,
    pub responses_2xx: u64,
    pub responses_3xx: u64,
    pub responses_4xx: u64,
    pub responses_5xx: u64,
    /// Responses cut short because the client went away or stopped reading.
    pub aborted: u64,
}

/// The result of one origin fetch, handed to every request waiting on it.
#[derive(Debug, Clone)]
enum Outcome {
    /// A `200` small enough to cache (and cached, unless the cache refused it).
    Object(Arc<CachedObject>),
    /// A small non-`200` answer, shared but not cached (404 included: see the crate doc).
    Shared(Arc<SharedResponse>),
    /// An answer that cannot be buffered: the first plain request to take it streams it, the
    /// others fetch on their own.
    Stream(Arc<Mutex<Option<Handover>>>),
    Failed(FetchFailure),
}

#[derive(Debug)]
struct SharedResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// An origin response whose body is still on the wire.
#[derive(Debug)]
struct Handover {
    parts: Parts,
    prefix: Bytes,
    body: Incoming,
}

type FlightRx = watch::Receiver<Option<Outcome>>;

#[derive(Debug)]
struct State {
    cache: ObjectCache,
    /// Fetches in flight, by cache key. Guarded with the cache so that a request either finds
    /// the object, or joins the fetch, or starts the only one.
    flights: HashMap<Arc<str>, FlightRx>,
}

enum Step {
    Hit(Arc<CachedObject>),
    Wait(FlightRx),
}

/// A caching reverse proxy in front of one plain-HTTP origin.
#[derive(Debug)]
pub struct CachingProxy {
    origin: Origin,
    origin_uri: Uri,
    limits: ProxyLimits,
    state: Mutex<State>,
    fills: Semaphore,
    serve_counters: Arc<Counters>,
    origin_requests: AtomicU64,
    coalesced: AtomicU64,
    passed_through: AtomicU64,
}

impl CachingProxy {
    /// A proxy for `origin` (`http://host[:port]`; https is refused, since the cache talks
    /// to its origin over a trusted network in plain HTTP) that keeps objects in `cache`.
    pub fn new(origin: Uri, cache: ObjectCache, limits: ProxyLimits) -> Result<Self, Error> {
        limits.validate()?;
        Ok(CachingProxy {
            origin: Origin::new(&origin, &limits)?,
            origin_uri: origin,
            fills: Semaphore::new(limits.max_concurrent_fills),
            limits,
            state: Mutex::new(State {
                cache,
                flights: HashMap::new(),
            }),
            serve_counters: Arc::default(),
            origin_requests: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            passed_through: AtomicU64::new(0),
        })
    }

    /// The origin, as given.
    pub fn origin(&self) -> &Uri {
        &self.origin_uri
    }

    pub fn limits(&self) -> &ProxyLimits {
        &self.limits
    }

    /// A snapshot of every counter.
    pub fn stats(&self) -> CacheStats {
        let c = self.state().cache.stats();
        let s = self.serve_counters.snapshot();
        CacheStats {
            capacity: c.capacity,
            max_object_size: c.max_object_size,
            bytes_cached: c.bytes_cached,
            objects: c.objects,
            lookups: c.lookups,
            hits: c.hits,
            misses: c.misses,
            inserts: c.inserts,
            evictions: c.evictions,
            too_large: c.too_large,
            origin_bytes: c.origin_bytes,
            origin_errors: c.origin_errors,
            origin_requests: self.origin_requests.load(Ordering::Relaxed),
            coalesced: self.coalesced.load(Ordering::Relaxed),
            passed_through: self.passed_through.load(Ordering::Relaxed),
            connections: s.connections,
            requests: s.requests,
            bytes_sent: s.bytes_sent,
            responses_2xx: s.responses_2xx,
            responses_3xx: s.responses_3xx,
            responses_4xx: s.responses_4xx,
            responses_5xx: s.responses_5xx,
            aborted: s.aborted,
        }
    }

    pub(crate) fn serve_counters(&self) -> &Arc<Counters> {
        &self.serve_counters
    }

    // The lock is never held across an await, and nothing under it panics by design; a
    // poisoned lock still holds consistent counters, so it is used as is.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn note_origin_bytes(&self, n: u64) {
        self.state().cache.record_origin_bytes(n);
    }

    pub(crate) fn note_origin_error(&self) {
        self.state().cache.record_origin_error();
    }

    /// Answers one request; the entry point of the HTTP service.
    pub(crate) async fn respond<B>(self: Arc<Self>, req: Request<B>) -> Response<ProxyBody> {
        let resp = self.respond_inner(&req).await;
        self.serve_counters.add_response(resp.status());
        resp
    }

    async fn respond_inner<B>(self: &Arc<Self>, req: &Request<B>) -> Response<ProxyBody> {
        let is_head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => {
                let mut resp = self.message(StatusCode::METHOD_NOT_ALLOWED, false);
                resp.headers_mut().insert(header::ALLOW, ALLOW);
                return resp;
            }
        };
        // The cache key is the target as sent (an absolute-form request counts by its path).
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        if !target.starts_with('/') {
            return self.message(StatusCode::BAD_REQUEST, is_head);
        }
        match self.lookup(target) {
            Step::Hit(object) => self.serve_object(&object, req, is_head, HIT),
            Step::Wait(rx) => match self.wait(rx).await {
                Ok(Outcome::Object(object)) => self.serve_object(&object, req, is_head, MISS),
                Ok(Outcome::Shared(shared)) => self.serve_shared(&shared, is_head),
                Ok(Outcome::Stream(slot)) => {
                    let taken = if is_plain(req) {
                        slot.lock().unwrap_or_else(PoisonError::into_inner).take()
                    } else {
                        None
                    };
                    // Holding the slot would keep an untaken origin response (and its
                    // connection) alive for the whole pass-through fetch.
                    drop(slot);
                    match taken {
                        Some(handover) => self.stream(handover, is_head),
                        None => self.pass_through(req, target, is_head).await,
                    }
                }
                Ok(Outcome::Failed(failure)) | Err(failure) => {
                    self.message(failure.status(), is_head)
                }
            },
        }
    }

    /// Finds the object, or the fetch in flight for it, or starts that fetch.
    fn lookup(self: &Arc<Self>, target: &str) -> Step {
        let (key, tx, rx) = {
            let mut state = self.state();
            if let Some(object) = state.cache.get(target) {
                return Step::Hit(object);
            }
            if let Some(rx) = state.flights.get(target) {
                self.coalesced.fetch_add(1, Ordering::Relaxed);
                return Step::Wait(rx.clone());
            }
            let (tx, rx) = watch::channel(None);
            let key: Arc<str> = Arc::from(target);
            state.flights.insert(Arc::clone(&key), rx.clone());
            (key, tx, rx)
        };
        // The fill runs on its own task, so that a client going away does not waste the
        // fetch for the others waiting, nor for the next request.
        tokio::spawn(Arc::clone(self).fill(key, tx));
        Step::Wait(rx)
    }

    async fn wait(&self, mut rx: FlightRx) -> Result<Outcome, FetchFailure> {
        let limit = self.limits.fetch_timeout + WAIT_SLACK;
        match tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome.clone().ok_or(FetchFailure::BadGateway),
            // The fill task ended without an outcome: it panicked or the runtime is stopping.
            Ok(Err(_)) => Err(FetchFailure::BadGateway),
            Err(_) => Err(FetchFailure::Timeout),
        }
    }

    /// Fetches `key` for the cache and publishes the outcome to the requests waiting on it.
    async fn fill(self: Arc<Self>, key: Arc<str>, tx: watch::Sender<Option<Outcome>>) {
        let guard = FlightGuard {
            proxy: &self,
            key: &key,
            own: tx.subscribe(),
        };
        let outcome = self.fetch_for_cache(&key).await;
        {
            let mut state = self.state();
            if let Outcome::Object(object) = &outcome {
                state.cache.insert(&key, Arc::clone(object));
            }
            // In the same critical section as the insert: a request arriving now finds the
            // object, never a gap in which it would start a second fetch.
            guard.remove_flight(&mut state);
        }
        tx.send_replace(Some(outcome));
    }

    async fn fetch_for_cache(&self, key: &str) -> Outcome {
        let deadline = Instant::now() + self.limits.fetch_timeout;
        let fetched = tokio::time::timeout_at(deadline, async {
            let _permit = self.fills.acquire().await;
            self.origin_requests.fetch_add(1, Ordering::Relaxed);
            let resp = self.origin.send(Method::GET, key, HeaderMap::new()).await?;
            Ok(self.classify(key, resp).await)
        })
        .await;
        match fetched {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(failure)) => {
                self.note_origin_error();
                Outcome::Failed(failure)
            }
            Err(_) => {
                self.note_origin_error();
                Outcome::Failed(FetchFailure::Timeout)
            }
        }
    }

    /// Decides what to do with an origin response, reading its body if it is to be buffered.
    async fn classify(&self, key: &str, resp: Response<Incoming>) -> Outcome {
        let (parts, body) = resp.into_parts();
        let declared = origin::content_length(&parts.headers);
        let cacheable = origin::cacheable(parts.status, &parts.headers);
        let (cap, too_large) = if cacheable {
            let max = self.state().cache.max_object_size();
            let too_large = declared.is_some_and(|len| self.state().cache.too_large(key, len));
            (max, too_large)
        } else if origin::shareable(&parts.headers) && parts.status != StatusCode::OK {
            (
                SHARED_BODY_MAX,
                declared.is_some_and(|len| len > SHARED_BODY_MAX),
            )
        } else {
            // A 200 that must not be stored: one client streams it, the others fetch anew.
            return stream_outcome(parts, Bytes::new(), body);
        };
        if too_large {
            if cacheable {
                self.state().cache.record_too_large();
            }
            return stream_outcome(parts, Bytes::new(), body);
        }
        let read = match origin::read_capped(body, cap, declared).await {
            Ok(read) => read,
            Err(e) => {
                tracing::debug!(key, error = %e, "origin body failed");
                self.note_origin_error();
                return Outcome::Failed(FetchFailure::BadGateway);
            }
        };
        match read {
            Capped::Over(prefix, rest) => {
                self.note_origin_bytes(prefix.len() as u64);
                if cacheable {
                    self.state().cache.record_too_large();
                }
                stream_outcome(parts, prefix, rest)
            }
            Capped::Whole(body) => {
                self.note_origin_bytes(body.len() as u64);
                if cacheable {
                    Outcome::Object(Arc::new(cached_object(&parts.headers, body)))
                } else {
                    let mut headers = origin::end_to_end(&parts.headers);
                    headers.remove(header::CONTENT_LENGTH);
                    Outcome::Shared(Arc::new(SharedResponse {
                        status: parts.status,
                        headers,
                        body,
                    }))
                }
            }
        }
    }

    /// Fetches for one request only, forwarding its range and conditional headers, and
    /// streams the answer through.
    async fn pass_through<B>(
        self: &Arc<Self>,
        req: &Request<B>,
        target: &str,
        is_head: bool,
    ) -> Response<ProxyBody> {
        self.passed_through.fetch_add(1, Ordering::Relaxed);
        self.origin_requests.fetch_add(1, Ordering::Relaxed);
        let mut forward = HeaderMap::new();
        for name in [
            header::RANGE,
            header::IF_RANGE,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
        ] {
            for value in req.headers().get_all(&name) {
                forward.append(name.clone(), value.clone());
            }
        }
        let method = if is_head { Method::HEAD } else { Method::GET };
        let sent = tokio::time::timeout(
            self.limits.fetch_timeout,
            self.origin.send(method, target, forward),
        )
        .await;
        match sent {
            Ok(Ok(resp)) => {
                let (parts, body) = resp.into_parts();
                self.stream(
                    Handover {
                        parts,
                        prefix: Bytes::new(),
                        body,
                    },
                    is_head,
                )
            }
            Ok(Err(failure)) => {
                self.note_origin_error();
                self.message(failure.status(), is_head)
            }
            Err(_) => {
                self.note_origin_error();
                self.message(StatusCode::GATEWAY_TIMEOUT, is_head)
            }
        }
    }

    /// Sends an origin response on to the client as it arrives.
    fn stream(self: &Arc<Self>, handover: Handover, is_head: bool) -> Response<ProxyBody> {
        let Handover {
            parts,
            prefix,
            body,
        } = handover;
        let mut headers = origin::end_to_end(&parts.headers);
        headers.insert(header::SERVER, SERVER);
        headers.insert(X_CACHE, MISS);
        let body = if is_head {
            ProxyBody::empty()
        } else {
            ProxyBody::stream(
                prefix,
                body,
                self.limits.origin_idle_timeout,
                Arc::clone(&self.serve_counters),
                Arc::clone(self),
            )
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = parts.status;
        *resp.headers_mut() = headers;
        resp
    }

    fn serve_shared(&self, shared: &SharedResponse, is_head: bool) -> Response<ProxyBody> {
        let mut headers = shared.headers.clone();
        headers.insert(header::SERVER, SERVER);
        headers.insert(X_CACHE, MISS);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(shared.body.len()));
        let mut resp = Response::new(self.body(shared.body.clone(), is_head));
        *resp.status_mut() = shared.status;
        *resp.headers_mut() = headers;
        resp
    }

    /// Serves a cached object with conditionals and ranges, as the static server serves files.
    fn serve_object<B>(
        &self,
        object: &CachedObject,
        req: &Request<B>,
        is_head: bool,
        x_cache: HeaderValue,
    ) -> Response<ProxyBody> {
        let validators = Validators::from_headers(
            header_value_str(object.etag.as_ref()),
            header_value_str(object.last_modified.as_ref()),
        );
        let mut resp = Response::new(ProxyBody::empty());
        let headers = resp.headers_mut();
        headers.insert(header::SERVER, SERVER);
        headers.insert(header::ACCEPT_RANGES, BYTES);
        headers.insert(X_CACHE, x_cache);
        if let Some(v) = &object.etag {
            headers.insert(header::ETAG, v.clone());
        }
        if let Some(v) = &object.last_modified {
            headers.insert(header::LAST_MODIFIED, v.clone());
        }
        let header_str = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
        if not_modified(
            &validators,
            header_str(header::IF_NONE_MATCH),
            header_str(header::IF_MODIFIED_SINCE),
        ) {
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            return resp;
        }
        if let Some(v) = &object.content_type {
            resp.headers_mut().insert(header::CONTENT_TYPE, v.clone());
        }
        let len = object.body.len() as u64;
        // Range is defined for GET only (RFC 9110 §14.2), so HEAD describes the full 200.
        let plan = if is_head {
            RangePlan::Full
        } else {
            range_plan(
                header_str(header::RANGE),
                header_str(header::IF_RANGE),
                &validators,
                len,
            )
        };
        let body = match plan {
            RangePlan::Full => object.body.clone(),
            RangePlan::Partial { start, len: part } => {
                let slice = usize::try_from(start)
                    .ok()
                    .zip(usize::try_from(start.saturating_add(part)).ok())
                    .and_then(|(a, b)| object.body.get(a..b).map(|_| object.body.slice(a..b)));
                let Some(slice) = slice else {
                    return self.message(StatusCode::INTERNAL_SERVER_ERROR, false);
                };
                *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                let range = format!("bytes {}-{}/{}", start, start + part - 1, len);
                if let Ok(v) = HeaderValue::from_str(&range) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                slice
            }
            RangePlan::Unsatisfiable => {
                let mut resp = self.message(StatusCode::RANGE_NOT_SATISFIABLE, false);
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return resp;
            }
        };
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        *resp.body_mut() = self.body(body, is_head);
        resp
    }

    fn body(&self, data: Bytes, is_head: bool) -> ProxyBody {
        if is_head {
            ProxyBody::empty()
        } else {
            ProxyBody::memory(
                data,
                self.limits.serve.chunk_size,
                Arc::clone(&self.serve_counters),
            )
        }
    }

    /// A short plain-text answer of our own.
    fn message(&self, status: StatusCode, is_head: bool) -> Response<ProxyBody> {
        let text: &'static str = match status {
            StatusCode::BAD_REQUEST => "400 Bad Request\n",
            StatusCode::METHOD_NOT_ALLOWED => "405 Method Not Allowed\n",
            StatusCode::RANGE_NOT_SATISFIABLE => "416 Range Not Satisfiable\n",
            StatusCode::BAD_GATEWAY => "502 Bad Gateway\n",
            StatusCode::GATEWAY_TIMEOUT => "504 Gateway Timeout\n",
            _ => "500 Internal Server Error\n",
        };
        let mut resp = Response::new(self.body(Bytes::from_static(text.as_bytes()), is_head));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(header::SERVER, SERVER);
        headers.insert(header::CONTENT_TYPE, TEXT_PLAIN);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
        resp
    }
}

fn header_value_str(v: Option<&HeaderValue>) -> Option<&str> {
    v.and_then(|v| v.to_str().ok())
}

fn stream_outcome(parts: Parts, prefix: Bytes, body: Incoming) -> Outcome {
    Outcome::Stream(Arc::new(Mutex::new(Some(Handover {
        parts,
        prefix,
        body,
    }))))
}

/// A request that the unconditional, unranged origin response answers as it is.
fn is_plain<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    !(h.contains_key(header::RANGE)
        || h.contains_key(header::IF_RANGE)
        || h.contains_key(header::IF_NONE_MATCH)
        || h.contains_key(header::IF_MODIFIED_SINCE))
}

/// The object to cache from a `200`'s headers. Header values are copied, so that the cache
/// does not keep the origin's whole response head alive through them.
fn cached_object(headers: &HeaderMap, body: Bytes) -> CachedObject {
    let copy = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| HeaderValue::from_bytes(v.as_bytes()).ok())
    };
    CachedObject {
        body,
        content_type: copy(header::CONTENT_TYPE),
        etag: copy(header::ETAG),
        last_modified: copy(header::LAST_MODIFIED),
    }
}

/// Removes the flight's entry when the fill ends, however it ends (a panic included), unless
/// a newer flight for the same key has replaced it.
struct FlightGuard<'a> {
    proxy: &'a CachingProxy,
    key: &'a Arc<str>,
    own: FlightRx,
}

impl FlightGuard<'_> {
    fn remove_flight(&self, state: &mut State) {
        if state
            .flights
            .get(&**self.key)
            .is_some_and(|rx| rx.same_channel(&self.own))
        {
            state.flights.remove(&**self.key);
        }
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.proxy.state();
        self.remove_flight(&mut state);
    }
}
