//! The origin side: the pooled HTTP/1.1 client, error classes, what may be cached or shared,
//! and reading a body under a size cap.

use std::error::Error as StdError;
use std::io;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::{Error, ProxyLimits};

/// Why a fetch from the origin failed, as the client will be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FetchFailure {
    /// Connection refused or reset, bad response, body cut short: 502.
    BadGateway,
    /// Connect or fetch deadline passed: 504.
    Timeout,
}

impl FetchFailure {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            FetchFailure::BadGateway => StatusCode::BAD_GATEWAY,
            FetchFailure::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn of(e: &hyper_util::client::legacy::Error) -> Self {
        // The connector reports its connect timeout as an io::Error of kind TimedOut.
        let mut source: Option<&(dyn StdError + 'static)> = e.source();
        let mut depth = 0;
        while let Some(err) = source {
            if err
                .downcast_ref::<io::Error>()
                .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
            {
                return FetchFailure::Timeout;
            }
            depth += 1;
            if depth > 16 {
                break;
            }
            source = err.source();
        }
        FetchFailure::BadGateway
    }
}

/// The origin server and the pooled client that talks to it.
#[derive(Debug)]
pub(crate) struct Origin {
    authority: Authority,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Origin {
    /// Accepts `http://host[:port][/]` only.
    pub(crate) fn new(uri: &Uri, limits: &ProxyLimits) -> Result<Self, Error> {
        let bad = |why| Error::BadOrigin {
            uri: uri.to_string(),
            why,
        };
        match uri.scheme_str() {
            Some("http") => {}
            Some(s) if s.eq_ignore_ascii_case("https") => {
                return Err(Error::HttpsOrigin(uri.to_string()))
            }
            _ => return Err(bad("the origin must be an http:// URL")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?.clone();
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the origin URL are not supported"));
        }
        if authority.host().is_empty() {
            return Err(bad("no host"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad(
                "the origin is http://host:port; requests keep their own path",
            ));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(limits.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(limits.origin_keepalive)
            .pool_max_idle_per_host(limits.origin_idle_connections)
            .build(connector);
        Ok(Origin { authority, client })
    }

    #[cfg(test)]
    fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Sends `method target` with the `forward` headers and returns the response head. The
    /// connect timeout applies; the caller bounds the rest.
    pub(crate) async fn send(
        &self,
        method: Method,
        target: &str,
        forward: HeaderMap,
    ) -> Result<Response<Incoming>, FetchFailure> {
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(target)
            .build()
            .map_err(|e| {
                tracing::debug!(target, error = %e, "request target not usable upstream");
                FetchFailure::BadGateway
            })?;
        let mut req = Request::new(Empty::new());
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = forward;
        self.client.request(req).await.map_err(|e| {
            tracing::debug!(origin = %self.authority, error = ?e, "origin fetch failed");
            FetchFailure::of(&e)
        })
    }
}

/// Header names that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// ones the `Connection` header lists.
pub(crate) fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    const HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if HOP.contains(&name.as_str()) || listed.contains(name) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

fn has_token(headers: &HeaderMap, name: HeaderName, tokens: &[&str]) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.split('=').next().unwrap_or_default().trim())
        .any(|d| tokens.iter().any(|t| d.eq_ignore_ascii_case(t)))
}

/// Whether a response may be shared with other clients at all: nothing private to one client.
pub(crate) fn shareable(headers: &HeaderMap) -> bool {
    !headers.contains_key(header::SET_COOKIE)
        && !has_token(headers, header::CACHE_CONTROL, &["no-store", "private"])
}

/// Whether a response may be stored: a shareable `200` that needs no revalidation, does not
/// vary beyond what this cache sends (nothing), and is not content-coded (the fill request
/// asks for the identity coding by sending no `Accept-Encoding`).
pub(crate) fn cacheable(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::OK
        && shareable(headers)
        && !has_token(headers, header::CACHE_CONTROL, &["no-cache"])
        && !has_token(headers, header::VARY, &["*"])
        && headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .all(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// The declared body length, if there is exactly one valid `Content-Length`.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()?.trim().parse().ok()
}

/// A body read under a cap.
#[derive(Debug)]
pub(crate) enum Capped {
    /// The whole body, in an allocation of exactly its size.
    Whole(Bytes),
    /// More than the cap: what was read so far (at most one frame over) and the rest.
    Over(Bytes, Incoming),
}

/// Reads `body` until its end or until it exceeds `cap` bytes. `declared` (already checked to
/// be at most `cap`) sizes the buffer.
pub(crate) async fn read_capped(
    mut body: Incoming,
    cap: u64,
    declared: Option<u64>,
) -> Result<Capped, hyper::Error> {
    let reserve = declared
        .filter(|&d| d <= cap)
        .and_then(|d| usize::try_from(d).ok())
        .unwrap_or(0);
    let mut buf = BytesMut::with_capacity(reserve);
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        if buf.len() as u64 > cap {
            return Ok(Capped::Over(buf.freeze(), body));
        }
    }
    // A body without a declared length grew by doubling: copy it so that the cache holds
    // (and charges) no more memory than the body's length.
    let whole = if buf.capacity() > buf.len() {
        Bytes::copy_from_slice(&buf)
    } else {
        buf.freeze()
    };
    Ok(Capped::Whole(whole))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let h = headers(&[
            ("connection", "close, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/plain"),
            ("content-length", "5"),
            ("etag", "\"a\""),
        ]);
        let e = end_to_end(&h);
        let names: Vec<&str> = e.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type", "content-length", "etag"]);
    }

    #[test]
    fn what_may_be_cached() {
        let ok = StatusCode::OK;
        assert!(cacheable(ok, &headers(&[("content-type", "text/html")])));
        assert!(cacheable(
            ok,
            &headers(&[("cache-control", "public, max-age=60")])
        ));
        assert!(cacheable(ok, &headers(&[("content-encoding", "identity")])));
        assert!(cacheable(ok, &headers(&[("vary", "Accept-Encoding")])));
        assert!(!cacheable(StatusCode::NOT_FOUND, &HeaderMap::new()));
        assert!(!cacheable(StatusCode::PARTIAL_CONTENT, &HeaderMap::new()));
        for h in [
            ("cache-control", "no-store"),
            ("cache-control", "max-age=0, Private"),
            ("cache-control", "no-cache=\"set-cookie\""),
            ("set-cookie", "a=b"),
            ("vary", "accept, *"),
            ("content-encoding", "gzip"),
        ] {
            assert!(!cacheable(ok, &headers(&[h])), "{h:?}");
        }
        assert!(shareable(&headers(&[("cache-control", "no-cache")])));
        assert!(!shareable(&headers(&[("set-cookie", "a=b")])));
    }

    #[test]
    fn content_length_must_be_single_and_numeric() {
        assert_eq!(
            content_length(&headers(&[("content-length", "42")])),
            Some(42)
        );
        assert_eq!(content_length(&headers(&[("content-length", "x")])), None);
        assert_eq!(
            content_length(&headers(&[
                ("content-length", "1"),
                ("content-length", "1")
            ])),
            None
        );
        assert_eq!(content_length(&HeaderMap::new()), None);
    }

    #[test]
    fn origin_url_forms() {
        let limits = ProxyLimits::default();
        let ok = |s: &str| {
            Origin::new(&s.parse().expect("uri"), &limits).map(|o| o.authority().to_string())
        };
        assert_eq!(
            ok("http://127.0.0.1:8080").ok().as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(ok("http://origin/").ok().as_deref(), Some("origin"));
        assert!(matches!(ok("https://origin"), Err(Error::HttpsOrigin(_))));
        assert!(matches!(
            ok("HTTPS://origin:443/"),
            Err(Error::HttpsOrigin(_))
        ));
        for bad in [
            "ftp://origin",
            "/path",
            "http://origin/sub",
            "http://o/?q",
            "http://u:p@origin",
        ] {
            assert!(matches!(ok(bad), Err(Error::BadOrigin { .. })), "{bad}");
        }
    }
}
