//! HTTP/1.x request-head parsing for routing.
//!
//! The front-end reads a client's bytes until the request head is complete,
//! routes on what [`parse_request_head`] returns, and hands the raw bytes on
//! unchanged: the back-end's HTTP server parses them again. Two parsers
//! reading the same bytes must agree on where the body ends, or a client can
//! smuggle a second request past the routing decision. So this parser is
//! strict where framing is concerned: it refuses conflicting or duplicate
//! `Content-Length` values, `Content-Length` together with
//! `Transfer-Encoding`, a `Transfer-Encoding` that does not end in `chunked`,
//! `Transfer-Encoding` in HTTP/1.0, missing or repeated `Host` in HTTP/1.1,
//! and anything that is not HTTP/1.0 or HTTP/1.1.

use thiserror::Error;

/// Bounds on a request head, enforced before the head is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Largest head (request line, header fields and the empty line).
    pub max_bytes: usize,
    /// Most header fields.
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self {
            max_bytes: 16 << 10,
            max_headers: 100,
        }
    }
}

/// What routing needs from a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method as sent (methods are case-sensitive).
    pub method: String,
    /// The request target's path and query (`/a?b`), or `*`. For an
    /// absolute-form target (`http://host/a`) the path part only.
    pub path: String,
    /// The target host in lower case, port included if one was sent: from an
    /// absolute-form target, else from the `Host` header. `None` if absent
    /// or empty.
    pub host: Option<String>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Bytes of the head including the final empty line; the body, or the
    /// next pipelined request, starts here.
    pub head_len: usize,
    /// Whether the client expects the connection to stay open afterwards.
    pub keep_alive: bool,
    /// The `Content-Length`, if sent.
    pub content_length: Option<u64>,
    /// The body is chunked (`Transfer-Encoding` ends in `chunked`).
    pub chunked: bool,
}

impl RequestHead {
    /// [`RequestHead::host`] without the port, for matching host names.
    pub fn host_name(&self) -> Option<&str> {
        let host = self.host.as_deref()?;
        if host.starts_with('[') {
            // IPv6 literal: the port, if any, follows the closing bracket.
            return Some(host.split_inclusive(']').next().unwrap_or(host));
        }
        Some(host.split_once(':').map_or(host, |(name, _port)| name))
    }
}

/// Why a request head was refused; the front answers with
/// [`HeadError::response`] and closes.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HeadError {
    #[error("request head exceeds the size limit")]
    TooLarge,
    #[error("request has too many header fields")]
    TooManyHeaders,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

impl HeadError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => 431,
            HeadError::Malformed(_) => 400,
        }
    }

    /// A complete `Connection: close` response for this error.
    pub fn response(&self) -> Vec<u8> {
        let status = self.status();
        error_response(status, canonical_reason(status))
    }
}

/// Parses the request head at the start of `buf`.
///
/// `Ok(None)`: the head is incomplete and still within `limits`; read more
/// and call again with the whole buffer. Bytes after the head (body,
/// pipelined requests) are allowed and ignored.
pub fn parse_request_head(
    buf: &[u8],
    limits: &HeadLimits,
) -> Result<Option<RequestHead>, HeadError> {
    // Never look past the limit: a complete head must fit in it anyway.
    let window = buf.get(..limits.max_bytes).unwrap_or(buf);
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(window) {
        Ok(httparse::Status::Complete(head_len)) => interpret(&req, head_len).map(Some),
        Ok(httparse::Status::Partial) if window.len() >= limits.max_bytes => {
            Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(match e {
            httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
            httparse::Error::Version => HeadError::Malformed("not an HTTP/1.0 or HTTP/1.1 request"),
            httparse::Error::HeaderName => HeadError::Malformed("invalid header name"),
            httparse::Error::HeaderValue => HeadError::Malformed("invalid header value"),
            httparse::Error::NewLine => HeadError::Malformed("invalid line ending"),
            httparse::Error::Token => HeadError::Malformed("invalid request line"),
            httparse::Error::Status => HeadError::Malformed("invalid request line"),
        }),
    }
}

fn interpret(req: &httparse::Request<'_, '_>, head_len: usize) -> Result<RequestHead, HeadError> {
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version)
    else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    let mut host_header: Option<&[u8]> = None;
    let mut content_length: Option<u64> = None;
    let mut codings: Vec<String> = Vec::new();
    let mut has_te = false;
    let (mut close, mut keep_alive_token) = (false, false);

    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if host_header.is_some() {
                return Err(HeadError::Malformed("more than one Host header"));
            }
            host_header = Some(trim_ows(h.value));
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(HeadError::Malformed("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            has_te = true;
            for coding in list_elements(h.value) {
                if !is_token(coding) {
                    return Err(HeadError::Malformed("invalid Transfer-Encoding"));
                }
                codings.push(String::from_utf8_lossy(coding).to_ascii_lowercase());
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for option in list_elements(h.value) {
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive_token |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }

    let chunked = if has_te {
        if minor_version == 0 {
            return Err(HeadError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if content_length.is_some() {
            return Err(HeadError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        let chunked_count = codings.iter().filter(|c| *c == "chunked").count();
        if codings.last().map(String::as_str) != Some("chunked") || chunked_count != 1 {
            return Err(HeadError::Malformed(
                "Transfer-Encoding does not end in chunked",
            ));
        }
        true
    } else {
        false
    };

    if minor_version == 1 && host_header.is_none() {
        return Err(HeadError::Malformed("HTTP/1.1 request without Host"));
    }
    let header_host = match host_header {
        Some(raw) => valid_host(raw)?,
        None => None,
    };
    let (path, host) = match split_absolute(target)? {
        Some((authority, path)) => (path, valid_host(authority.as_bytes())?),
        None => (target.to_owned(), header_host),
    };

    let keep_alive = !close && (minor_version == 1 || keep_alive_token);
    Ok(RequestHead {
        method: method.to_owned(),
        path,
        host,
        minor_version,
        head_len,
        keep_alive,
        content_length,
        chunked,
    })
}

/// Splits an absolute-form target (`http://authority/path`) into authority
/// and path; `None` for origin-form and asterisk-form targets.
fn split_absolute(target: &str) -> Result<Option<(&str, String)>, HeadError> {
    if target.starts_with('/') || target == "*" {
        return Ok(None);
    }
    // Neither origin nor asterisk form: absolute form, or the authority form
    // of CONNECT (kept as the path; routing decides what to do with it).
    let Some((scheme, rest)) = target.split_once("://") else {
        return Ok(None);
    };
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return Err(HeadError::Malformed("unsupported request-target scheme"));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at_checked(end).unwrap_or((rest, ""));
    if authority.contains('@') {
        return Err(HeadError::Malformed("user information in request target"));
    }
    let path = match tail.chars().next() {
        Some('/') => tail.to_owned(),
        Some('?') => format!("/{tail}"),
        _ => "/".to_owned(),
    };
    Ok(Some((authority, path)))
}

fn valid_host(raw: &[u8]) -> Result<Option<String>, HeadError> {
    if raw.is_empty() {
        return Ok(None);
    }
    let ok = raw
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b));
    if !ok {
        return Err(HeadError::Malformed("invalid Host"));
    }
    Ok(Some(String::from_utf8_lossy(raw).to_ascii_lowercase()))
}

fn parse_content_length(value: &[u8]) -> Result<u64, HeadError> {
    let digits = trim_ows(value);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::Malformed("invalid Content-Length"));
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or(HeadError::Malformed("Content-Length out of range"))
    })
}

/// The non-empty elements of a comma-separated header list, trimmed.
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn is_token(v: &[u8]) -> bool {
    !v.is_empty()
        && v.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The standard reason phrase for the statuses the front-end sends.
pub fn canonical_reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// A complete HTTP/1.1 response with `Connection: close` and a one-line
/// text body. A status outside 100..=599 becomes 500; characters of `reason`
/// that may not appear in a status line (control characters, non-ASCII) are
/// dropped, so a reason built from untrusted text cannot inject headers.
pub fn error_response(status: u16, reason: &str) -> Vec<u8> {
    let status = if (100..=599).contains(&status) {
        status
    } else {
        500
    };
    let reason: String = reason
        .chars()
        .filter(|c| *c == ' ' || *c == '\t' || c.is_ascii_graphic())
        .collect();
    let body = format!("{status} {reason}\n");
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request_head(raw.as_bytes(), &HeadLimits::default())
    }

    fn head(raw: &str) -> RequestHead {
        match parse(raw) {
            Ok(Some(h)) => h,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    fn malformed(raw: &str) -> &'static str {
        match parse(raw) {
            Err(HeadError::Malformed(why)) => why,
            other => panic!("{raw:?}: expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn simple_get_with_a_body_and_a_pipelined_request_behind_it() {
        let raw = "GET /img/a.png?x=1 HTTP/1.1\r\nHost: WWW.Example.com:8080\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n";
        let h = head(raw);
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/img/a.png?x=1");
        assert_eq!(h.host.as_deref(), Some("www.example.com:8080"));
        assert_eq!(h.host_name(), Some("www.example.com"));
        assert_eq!(h.minor_version, 1);
        assert_eq!(&raw[h.head_len..h.head_len + 3], "abc");
        assert!(h.keep_alive);
        assert_eq!(h.content_length, Some(3));
        assert!(!h.chunked);
    }

    #[test]
    fn keep_alive_follows_version_and_connection_tokens() {
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(
            !head("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade, CLOSE\r\n\r\n").keep_alive
        );
        assert!(head("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n").keep_alive);
    }

    #[test]
    fn host_forms() {
        assert_eq!(head("GET / HTTP/1.0\r\n\r\n").host, None);
        assert_eq!(head("GET / HTTP/1.1\r\nHost:\r\n\r\n").host, None);
        let v6 = head("GET / HTTP/1.1\r\nHost: [2001:db8::1]:81\r\n\r\n");
        assert_eq!(v6.host_name(), Some("[2001:db8::1]"));
        let abs = head("GET HTTP://Other.Example/p?q HTTP/1.1\r\nHost: ignored\r\n\r\n");
        assert_eq!(
            (abs.host.as_deref(), abs.path.as_str()),
            (Some("other.example"), "/p?q")
        );
        let abs = head("GET http://h.example?q HTTP/1.1\r\nHost: h.example\r\n\r\n");
        assert_eq!(abs.path, "/?q");
        // "://" inside an origin-form query is not an absolute target.
        assert_eq!(
            head("GET /r?to=http://x/ HTTP/1.1\r\nHost: a\r\n\r\n")
                .host
                .as_deref(),
            Some("a")
        );
        assert_eq!(head("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").path, "*");
    }

    #[test]
    fn host_errors() {
        assert_eq!(
            malformed("GET / HTTP/1.1\r\n\r\n"),
            "HTTP/1.1 request without Host"
        );
        assert_eq!(
            malformed("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
            "more than one Host header"
        );
        assert_eq!(
            malformed("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
            "invalid Host"
        );
        assert_eq!(
            malformed("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"),
            "invalid Host"
        );
        assert_eq!(
            malformed("GET http://u@h/ HTTP/1.1\r\nHost: h\r\n\r\n"),
            "user information in request target"
        );
        assert_eq!(
            malformed("GET ftp://h/ HTTP/1.1\r\nHost: h\r\n\r\n"),
            "unsupported request-target scheme"
        );
    }

    #[test]
    fn chunked_framing() {
        let h = head("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n");
        assert!(h.chunked);
        assert_eq!(h.content_length, None);
        assert!(head("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n").chunked);
    }

    #[test]
    fn smuggling_vectors_are_refused() {
        let te_not_last = "Transfer-Encoding does not end in chunked";
        let cases = [
            (
                "Content-Length: 1\r\nTransfer-Encoding: chunked",
                "both Content-Length and Transfer-Encoding",
            ),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 1",
                "both Content-Length and Transfer-Encoding",
            ),
            (
                "Content-Length: 1\r\nContent-Length: 2",
                "conflicting Content-Length headers",
            ),
            ("Content-Length: 1, 1", "invalid Content-Length"),
            ("Content-Length: +1", "invalid Content-Length"),
            ("Content-Length: 0x10", "invalid Content-Length"),
            ("Content-Length:", "invalid Content-Length"),
            (
                "Content-Length: 99999999999999999999",
                "Content-Length out of range",
            ),
            ("Transfer-Encoding: chunked, gzip", te_not_last),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
                te_not_last,
            ),
            ("Transfer-Encoding: xchunked", te_not_last),
            (
                "Transfer-Encoding: chunked;q=1",
                "invalid Transfer-Encoding",
            ),
            ("Transfer-Encoding:", te_not_last),
        ];
        for (header, why) in cases {
            let raw = format!("POST / HTTP/1.1\r\nHost: a\r\n{header}\r\n\r\n");
            assert_eq!(malformed(&raw), why, "{header}");
        }
        assert_eq!(
            malformed("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            "Transfer-Encoding in an HTTP/1.0 request"
        );
        // Identical duplicates are harmless (RFC 9110 8.6).
        let dup =
            head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(dup.content_length, Some(5));
        // Whitespace before the colon and obsolete line folding.
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn only_http_1x_is_accepted() {
        assert_eq!(
            malformed("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            "not an HTTP/1.0 or HTTP/1.1 request"
        );
        assert_eq!(
            malformed("GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
            "not an HTTP/1.0 or HTTP/1.1 request"
        );
        // A TLS ClientHello sent to the plain-HTTP port.
        let tls = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        assert!(matches!(
            parse_request_head(tls, &HeadLimits::default()),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn incomplete_heads_need_more_until_the_limit() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        let limits = HeadLimits {
            max_bytes: 32,
            max_headers: 2,
        };
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(40));
        assert_eq!(
            parse_request_head(&long.as_bytes()[..31], &limits),
            Ok(None)
        );
        let err = parse_request_head(long.as_bytes(), &limits).expect_err("too large");
        assert_eq!((err.clone(), err.status()), (HeadError::TooLarge, 431));
        // A complete head that ends exactly at the limit is fine.
        let exact = "GET / HTTP/1.0\r\nA: 123456789\r\n\r\n";
        assert_eq!(exact.len(), 32);
        assert!(matches!(
            parse_request_head(exact.as_bytes(), &limits),
            Ok(Some(_))
        ));
        let many = "GET / HTTP/1.0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        let err = parse_request_head(
            many.as_bytes(),
            &HeadLimits {
                max_headers: 2,
                ..HeadLimits::default()
            },
        );
        assert_eq!(err.map_err(|e| e.status()), Err(431));
        assert_eq!(HeadError::Malformed("x").status(), 400);
    }

    #[test]
    fn error_responses_are_complete_http_and_cannot_inject_headers() {
        let raw = error_response(502, "Bad Gateway\r\nSet-Cookie: x=1");
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = resp.parse(&raw) else {
            panic!("not a complete response: {raw:?}");
        };
        assert_eq!(resp.code, Some(502));
        assert_eq!(resp.reason, Some("Bad GatewaySet-Cookie: x=1"));
        let get = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        assert_eq!(get("connection"), Some(&b"close"[..]));
        assert_eq!(get("set-cookie"), None);
        let body = &raw[n..];
        assert_eq!(
            get("content-length"),
            Some(body.len().to_string().as_bytes())
        );
        assert!(body.starts_with(b"502 "));

        let from_error = HeadError::TooLarge.response();
        assert!(from_error.starts_with(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(error_response(7, "odd").starts_with(b"HTTP/1.1 500 odd\r\n"));
    }
}
