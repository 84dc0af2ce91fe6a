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
//!
//! For the front's relay mode, which keeps back-end connections open across
//! clients, it also parses response heads ([`parse_response_head`]), finds
//! the end of chunked bodies ([`ChunkedDecoder`]) and rewrites the
//! hop-by-hop fields of heads ([`upstream_request_head`],
//! [`response_head_with_close`]), leaving every other byte as received.

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

// ---- Relaying: response heads, body framing and hop-by-hop fields ----
//
// A relay that keeps upstream connections open across clients must know
// where every message ends, in both directions, exactly as the two HTTP
// servers at either end will: one byte of disagreement and the next
// exchange on the connection is read out of someone else's bytes.

/// The largest response head a relay accepts (status line, fields, the
/// empty line).
pub const RESPONSE_HEAD_MAX_BYTES: usize = 64 << 10;
/// The most header fields in a response head a relay accepts.
const RESPONSE_MAX_HEADERS: usize = 256;

/// What a relay needs from a response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code (100 to 999).
    pub status: u16,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Bytes of the head including the final empty line.
    pub head_len: usize,
    /// Whether the server keeps the connection open after this response by
    /// its own account: HTTP/1.1 without `Connection: close`, or HTTP/1.0
    /// with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// The `Content-Length`, if sent.
    pub content_length: Option<u64>,
    /// `Transfer-Encoding` was sent.
    pub transfer_encoding: bool,
    /// `Transfer-Encoding` ends in `chunked`.
    pub chunked: bool,
}

/// How the body of a message is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding: [`ChunkedDecoder`] finds the end.
    Chunked,
    /// Everything until the server closes the connection.
    UntilClose,
}

impl ResponseHead {
    /// Whether this is an interim (1xx) response: a final one follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }

    /// How this response's body is delimited; `head_request`: it answers a
    /// HEAD request. Only for final responses (an interim one has no body).
    pub fn framing(&self, head_request: bool) -> BodyFraming {
        if head_request || self.is_interim() || self.status == 204 || self.status == 304 {
            BodyFraming::Empty
        } else if self.transfer_encoding {
            // A coding other than chunked last can only end with the
            // connection (RFC 9112 6.3, rule 4).
            if self.chunked {
                BodyFraming::Chunked
            } else {
                BodyFraming::UntilClose
            }
        } else {
            match self.content_length {
                Some(n) => BodyFraming::Length(n),
                None => BodyFraming::UntilClose,
            }
        }
    }
}

/// Parses the response head at the start of `buf`: `Ok(None)` while it is
/// incomplete and within [`RESPONSE_HEAD_MAX_BYTES`].
///
/// Refuses what would leave the end of the body in doubt: conflicting
/// `Content-Length` values, `Content-Length` together with
/// `Transfer-Encoding` (nginx refuses it too), a status below 100.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<ResponseHead>, HeadError> {
    let window = buf.get(..RESPONSE_HEAD_MAX_BYTES).unwrap_or(buf);
    let mut headers = [httparse::EMPTY_HEADER; RESPONSE_MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if window.len() >= RESPONSE_HEAD_MAX_BYTES => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(httparse::Error::Version) => {
            return Err(HeadError::Malformed("not an HTTP/1.0 or HTTP/1.1 response"))
        }
        Err(_) => return Err(HeadError::Malformed("invalid response head")),
    };
    let (Some(status), Some(minor_version)) = (resp.code, resp.version) else {
        return Err(HeadError::Malformed("incomplete status line"));
    };
    if status < 100 {
        return Err(HeadError::Malformed("invalid status code"));
    }
    let mut content_length: Option<u64> = None;
    let (mut transfer_encoding, mut chunked) = (false, false);
    let (mut close, mut keep_alive_token) = (false, false);
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(HeadError::Malformed("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            // Only the last coding of the last field decides.
            if let Some(last) = list_elements(h.value).last() {
                chunked = last.eq_ignore_ascii_case(b"chunked");
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for option in list_elements(h.value) {
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive_token |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    if transfer_encoding && content_length.is_some() {
        return Err(HeadError::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    Ok(Some(ResponseHead {
        status,
        minor_version,
        head_len,
        keep_alive: !close && (minor_version == 1 || keep_alive_token),
        content_length,
        transfer_encoding,
        chunked,
    }))
}

/// The lines of a complete head (as validated by one of the parsers here),
/// each with its line ending: the start line, the field lines, the empty line.
fn head_lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    head.split_inclusive(|&b| b == b'\n')
}

/// A field line's name, `None` for the start line and the empty line
/// (neither has a colon before any space: validated heads have no
/// whitespace in names).
fn field_name(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line.get(..colon)?;
    (!name.is_empty() && is_token(name)).then_some(name)
}

/// A field line's value without surrounding whitespace and line ending.
fn field_value(line: &[u8]) -> &[u8] {
    let after = line
        .iter()
        .position(|&b| b == b':')
        .and_then(|i| line.get(i + 1..))
        .unwrap_or_default();
    let mut v = after;
    while let [rest @ .., b'\r' | b'\n'] = v {
        v = rest;
    }
    trim_ows(v)
}

/// Fields a client's `Connection` header may not remove: they decide where
/// the request goes and where it ends, which the front decided already.
fn protected_field(name: &[u8]) -> bool {
    [&b"host"[..], b"content-length", b"transfer-encoding"]
        .iter()
        .any(|p| name.eq_ignore_ascii_case(p))
}

/// What [`upstream_request_head`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHops {
    /// The request asks to switch protocols (an `Upgrade` field): it must
    /// reach the server with its `Connection` field intact, and the
    /// connection may become a tunnel.
    pub upgrade: bool,
}

/// Writes the complete request head `head` into `out` (cleared first) for a
/// server connection that a relay keeps open across requests: without the
/// hop-by-hop fields `Connection`, `Keep-Alive`, `Proxy-Connection` and those
/// the `Connection` field names (except `Host`, `Content-Length` and
/// `Transfer-Encoding`); every other byte as received, but for line ends,
/// which all become CRLF. As nginx's
/// `proxy_set_header Connection ""`: a client's `Connection: close` must not
/// make the server close a connection the relay wants to reuse.
pub fn upstream_request_head(head: &[u8], out: &mut Vec<u8>) -> RequestHops {
    out.clear();
    let mut upgrade = false;
    let connection_lines = || {
        head_lines(head)
            .filter(|l| field_name(l).is_some_and(|n| n.eq_ignore_ascii_case(b"connection")))
    };
    // Mostly `close` or `keep-alive` only: then no field is named, and the
    // per-field search below is skipped.
    let names_fields = connection_lines().any(|l| {
        list_elements(field_value(l))
            .any(|t| !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive"))
    });
    let named_by_connection = |name: &[u8]| {
        names_fields
            && !protected_field(name)
            && connection_lines()
                .any(|l| list_elements(field_value(l)).any(|t| t.eq_ignore_ascii_case(name)))
    };
    for line in head_lines(head) {
        if let Some(name) = field_name(line) {
            upgrade |= name.eq_ignore_ascii_case(b"upgrade");
            let hop = [&b"connection"[..], b"keep-alive", b"proxy-connection"]
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h));
            if hop || named_by_connection(name) {
                continue;
            }
        }
        // Every line ends in CRLF: a server reading a bare LF as part of a
        // field would frame the body differently from the relay, and what
        // it left unread would reach the next client on a kept connection.
        match line {
            [rest @ .., b'\r', b'\n'] | [rest @ .., b'\n'] => {
                out.extend_from_slice(rest);
                out.extend_from_slice(b"\r\n");
            }
            _ => out.extend_from_slice(line),
        }
    }
    RequestHops { upgrade }
}

/// Writes the complete response head `head` into `out` (cleared first)
/// with `Connection: close` in place of its `Connection` and `Keep-Alive`
/// fields; every other byte as received. For a client that asked to close,
/// or whose connection the relay closes after this response.
pub fn response_head_with_close(head: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut lines = head_lines(head).peekable();
    while let Some(line) = lines.next() {
        if lines.peek().is_none() {
            // The empty line that ends the head: the new field goes before it.
            out.extend_from_slice(b"Connection: close\r\n");
        } else if field_name(line).is_some_and(|n| {
            n.eq_ignore_ascii_case(b"connection") || n.eq_ignore_ascii_case(b"keep-alive")
        }) {
            continue;
        }
        out.extend_from_slice(line);
    }
}

/// Writes the complete response head `head` into `out` (cleared first)
/// without its `Keep-Alive` fields, and returns true, if it has any;
/// returns false (and leaves `out` empty) if not. `Keep-Alive: timeout=..`
/// describes the server's connection to the relay, not the relay's to the
/// client, whose idle limit is the relay's own.
pub fn response_head_without_keep_alive(head: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let is_keep_alive =
        |l: &[u8]| field_name(l).is_some_and(|n| n.eq_ignore_ascii_case(b"keep-alive"));
    if !head_lines(head).any(is_keep_alive) {
        return false;
    }
    for line in head_lines(head).filter(|l| !is_keep_alive(l)) {
        out.extend_from_slice(line);
    }
    true
}

/// Why a chunked body was refused.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    #[error("invalid chunk size line")]
    Size,
    #[error("chunk size out of range")]
    TooLarge,
    #[error("chunk line too long")]
    LineTooLong,
    #[error("invalid chunked framing: {0}")]
    Framing(&'static str),
}

/// The longest chunk-size line (with extensions) or trailer line accepted.
const CHUNK_LINE_MAX: usize = 8 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    /// Hex digits of a chunk size.
    #[default]
    Size,
    /// Whitespace after the size, before `;` or the line end.
    SizeWs,
    /// A chunk extension, up to the line end.
    Ext,
    /// CR of the size line seen.
    SizeLf,
    /// Chunk data, this many bytes left.
    Data(u64),
    /// CRLF after chunk data.
    DataCr,
    DataLf,
    /// At the start of a trailer line or of the final empty line.
    LineStart,
    /// In a trailer field line.
    Trailer,
    TrailerLf,
    /// CR of the final empty line seen.
    EndLf,
    Done,
}

/// Finds the end of a chunked body fed to it in pieces of any size, so
/// that a relay can copy the body unchanged (extensions and trailers
/// included) and know where it ends. Strict about line endings (CRLF,
/// never a bare LF): leniency there is where request smuggling lives.
#[derive(Debug, Clone, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    digits: u8,
    /// Bytes in the current size or trailer line.
    line: usize,
}

/// What one [`ChunkedDecoder::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkProgress {
    /// Bytes of the input that belong to the body; past them (when `done`)
    /// starts the next message.
    pub used: usize,
    /// The body ended (last chunk and trailers complete).
    pub done: bool,
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the body ended.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes the next bytes of the body; `on_data` receives the chunk
    /// data in order. Stops at the end of the body.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<ChunkProgress, ChunkError> {
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            if let ChunkState::Data(left) = self.state {
                let avail = input.len() - i;
                let take = usize::try_from(left).map_or(avail, |l| l.min(avail));
                if let Some(data) = input.get(i..i + take) {
                    on_data(data);
                }
                i += take;
                let left = left - take as u64;
                self.state = if left == 0 {
                    ChunkState::DataCr
                } else {
                    ChunkState::Data(left)
                };
                continue;
            }
            i += 1;
            self.step(b)?;
            if self.state == ChunkState::Done {
                break;
            }
        }
        Ok(ChunkProgress {
            used: i,
            done: self.is_done(),
        })
    }

    /// One framing byte.
    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        use ChunkState::*;
        let line_state = matches!(self.state, Size | SizeWs | Ext | Trailer);
        if line_state {
            self.line += 1;
            if self.line > CHUNK_LINE_MAX {
                return Err(ChunkError::LineTooLong);
            }
        }
        self.state = match (self.state, b) {
            (Size, _) if b.is_ascii_hexdigit() => {
                self.digits += 1;
                if self.digits > 16 {
                    return Err(ChunkError::TooLarge);
                }
                let d = u64::from(char::from(b).to_digit(16).unwrap_or(0));
                self.size = (self.size << 4) | d;
                Size
            }
            (Size, _) if self.digits == 0 => return Err(ChunkError::Size),
            (Size | SizeWs, b' ' | b'\t') => SizeWs,
            (Size | SizeWs, b';') => Ext,
            (Size | SizeWs | Ext, b'\r') => SizeLf,
            (Size | SizeWs, _) => return Err(ChunkError::Size),
            (Ext, b'\t') => Ext,
            (Ext, _) if b < 0x20 || b == 0x7f => {
                return Err(ChunkError::Framing(
                    "control character in a chunk extension",
                ))
            }
            (Ext, _) => Ext,
            (SizeLf, b'\n') => {
                let size = self.size;
                (self.size, self.digits, self.line) = (0, 0, 0);
                if size == 0 {
                    LineStart
                } else {
                    Data(size)
                }
            }
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size,
            (LineStart, b'\r') => EndLf,
            (Trailer, b'\r') => TrailerLf,
            (LineStart | Trailer, b'\t') => Trailer,
            (LineStart | Trailer, _) if b < 0x20 || b == 0x7f => {
                return Err(ChunkError::Framing("control character in a trailer"))
            }
            (LineStart, _) => {
                self.line = 1;
                Trailer
            }
            (Trailer, _) => Trailer,
            (TrailerLf, b'\n') => {
                self.line = 0;
                LineStart
            }
            (EndLf, b'\n') => Done,
            (Done, _) => Done,
            (SizeLf | DataCr | DataLf | TrailerLf | EndLf, _) => {
                return Err(ChunkError::Framing("expected CRLF"))
            }
            (Data(_), _) => return Err(ChunkError::Framing("internal: data as framing")),
        };
        Ok(())
    }
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

    // ---- relaying ----

    fn response(raw: &str) -> ResponseHead {
        match parse_response_head(raw.as_bytes()) {
            Ok(Some(h)) => h,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    #[test]
    fn response_heads_and_their_body_framing() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let h = response(raw);
        assert_eq!((h.status, h.minor_version, h.keep_alive), (200, 1, true));
        assert_eq!(&raw[h.head_len..], "hello");
        assert_eq!(h.framing(false), BodyFraming::Length(5));
        assert_eq!(h.framing(true), BodyFraming::Empty, "an answer to HEAD");
        for status in ["204 No Content", "304 Not Modified", "100 Continue"] {
            let h = response(&format!("HTTP/1.1 {status}\r\nContent-Length: 9\r\n\r\n"));
            assert_eq!(h.framing(false), BodyFraming::Empty, "{status}");
        }
        assert!(response("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n").is_interim());
        let chunked = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(chunked.framing(false), BodyFraming::Chunked);
        let gzip = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
        );
        assert_eq!(gzip.framing(false), BodyFraming::UntilClose);
        let bare = response("HTTP/1.1 200 OK\r\nServer: x\r\n\r\n");
        assert_eq!(bare.framing(false), BodyFraming::UntilClose);
        // Who keeps the connection open.
        assert!(!response("HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n").keep_alive);
        assert!(!response("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(response("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        // Needs more, then refused beyond the limit.
        assert_eq!(
            parse_response_head(b"HTTP/1.1 200 OK\r\nA: b\r\n"),
            Ok(None)
        );
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        while huge.len() < RESPONSE_HEAD_MAX_BYTES {
            huge.extend_from_slice(format!("X-Filler: {}\r\n", "f".repeat(1000)).as_bytes());
        }
        assert_eq!(parse_response_head(&huge), Err(HeadError::TooLarge));
    }

    #[test]
    fn responses_with_an_ambiguous_end_are_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 099 Odd\r\n\r\n",
            "HTTP/2.0 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        ] {
            assert!(
                matches!(
                    parse_response_head(raw.as_bytes()),
                    Err(HeadError::Malformed(_))
                ),
                "{raw:?}"
            );
        }
    }

    fn upstream(raw: &str) -> (String, RequestHops) {
        let mut out = Vec::new();
        let hops = upstream_request_head(raw.as_bytes(), &mut out);
        (String::from_utf8(out).expect("ascii"), hops)
    }

    #[test]
    fn hop_by_hop_fields_are_removed_and_the_rest_kept_byte_exact() {
        let (out, hops) = upstream(
            "GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX-A:  spaced\t\r\nKeep-Alive: 5\r\nproxy-connection: x\r\nX-B: 2\r\n\r\n",
        );
        assert_eq!(
            out,
            "GET /a HTTP/1.1\r\nHost: h\r\nX-A:  spaced\t\r\nX-B: 2\r\n\r\n"
        );
        assert!(!hops.upgrade);
        // Fields the Connection header names go too; framing and routing stay.
        let (out, _) = upstream(
            "POST / HTTP/1.1\r\nHost: h\r\nX-Hop: 1\r\nConnection: x-hop, Host,\r\nConnection: content-length , keep-alive\r\nContent-Length: 2\r\nX-End: 3\r\n\r\n",
        );
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nX-End: 3\r\n\r\n"
        );
        // Nothing to remove: the same bytes.
        let plain = "GET /x?y=a:b HTTP/1.1\r\nHost: h:8080\r\nAccept: */*\r\n\r\n";
        assert_eq!(upstream(plain).0, plain);
        let (_, hops) = upstream(
            "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert!(hops.upgrade);
    }

    #[test]
    fn a_closing_response_head_says_close_once() {
        let mut out = Vec::new();
        response_head_with_close(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\nKeep-Alive: timeout=5\r\nX: y\r\n\r\n",
            &mut out,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX: y\r\nConnection: close\r\n\r\n"
        );
        response_head_with_close(b"HTTP/1.1 204 No Content\r\n\r\n", &mut out);
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        let h = response(std::str::from_utf8(&out).expect("ascii"));
        assert!(!h.keep_alive);
    }

    /// Feeds `wire` whole; returns (used, done, data).
    fn dechunk(wire: &[u8]) -> Result<(usize, bool, Vec<u8>), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut data = Vec::new();
        let p = d.feed(wire, |c| data.extend_from_slice(c))?;
        Ok((p.used, p.done, data))
    }

    #[test]
    fn chunked_bodies_end_exactly_where_they_end() {
        let body = "5;name=\"v a\"\r\nhello\r\n6 \r\n world\r\n0\r\nX-Sum: 1\r\nY: 2\r\n\r\n";
        let wire = format!("{body}GET /next HTTP/1.1\r\n");
        assert_eq!(
            dechunk(wire.as_bytes()),
            Ok((body.len(), true, b"hello world".to_vec()))
        );
        assert_eq!(dechunk(b"0\r\n\r\n"), Ok((5, true, Vec::new())));
        assert_eq!(dechunk(b"A\r\n0123"), Ok((7, false, b"0123".to_vec())));
        assert_eq!(
            dechunk(b"ffffffffffffffff\r\n"),
            Ok((18, false, Vec::new())),
            "the largest size is accepted"
        );
        let refused: [(&[u8], ChunkError); 9] = [
            (b"\r\n", ChunkError::Size),
            (b"x\r\n", ChunkError::Size),
            (b"5 5\r\n", ChunkError::Size),
            (b"-1\r\n", ChunkError::Size),
            (b"10000000000000000\r\n", ChunkError::TooLarge),
            (b"5\nhello\r\n", ChunkError::Size),
            (b"5\r\nhelloX\r\n", ChunkError::Framing("expected CRLF")),
            (
                b"0\r\n\n",
                ChunkError::Framing("control character in a trailer"),
            ),
            (
                b"1;a\nb\r\n",
                ChunkError::Framing("control character in a chunk extension"),
            ),
        ];
        for (wire, want) in refused {
            assert_eq!(
                dechunk(wire),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let long = format!("1;{}\r\n", "e".repeat(CHUNK_LINE_MAX));
        assert_eq!(dechunk(long.as_bytes()), Err(ChunkError::LineTooLong));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn chunk_ext() -> impl Strategy<Value = String> {
            prop_oneof![
                Just(String::new()),
                Just(";a=b".to_owned()),
                Just(" ;q=\"x y\"".to_owned()),
                Just(";flag".to_owned()),
            ]
        }

        proptest! {
            /// However the bytes arrive, the decoder ends exactly after the
            /// body, yields exactly its data, and leaves what follows.
            #[test]
            fn chunked_split_anywhere(
                chunks in proptest::collection::vec(
                    (proptest::collection::vec(any::<u8>(), 1..300), chunk_ext(), any::<bool>()),
                    0..6,
                ),
                trailers in proptest::collection::vec("[A-Za-z-]{1,8}: [ -~]{0,12}", 0..3),
                cuts in proptest::collection::vec(any::<usize>(), 0..8),
            ) {
                let mut wire = Vec::new();
                let mut want = Vec::new();
                for (data, ext, upper) in &chunks {
                    let size = if *upper { format!("{:X}", data.len()) } else { format!("{:x}", data.len()) };
                    wire.extend_from_slice(format!("{size}{ext}\r\n").as_bytes());
                    wire.extend_from_slice(data);
                    wire.extend_from_slice(b"\r\n");
                    want.extend_from_slice(data);
                }
                wire.extend_from_slice(b"0\r\n");
                for t in &trailers {
                    wire.extend_from_slice(format!("{t}\r\n").as_bytes());
                }
                wire.extend_from_slice(b"\r\n");
                let body_len = wire.len();
                wire.extend_from_slice(b"GET / HTTP/1.1\r\n");
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
                cuts.push(wire.len());
                cuts.sort_unstable();
                let mut d = ChunkedDecoder::new();
                let mut got = Vec::new();
                let (mut pos, mut ended_at) = (0, None);
                for cut in cuts {
                    if cut < pos || ended_at.is_some() {
                        continue;
                    }
                    let p = d.feed(&wire[pos..cut], |c| got.extend_from_slice(c)).expect("valid body");
                    pos += p.used;
                    if p.done {
                        ended_at = Some(pos);
                    } else {
                        prop_assert_eq!(pos, cut, "an unfinished body consumes all it is given");
                    }
                }
                prop_assert_eq!(ended_at, Some(body_len));
                prop_assert_eq!(got, want);
            }

            #[test]
            fn chunked_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), cut in any::<usize>()) {
                let mut d = ChunkedDecoder::new();
                let cut = cut % (bytes.len() + 1);
                if let Ok(p) = d.feed(&bytes[..cut], |_| {}) {
                    prop_assert!(p.used <= cut);
                    if !p.done {
                        let _ = d.feed(&bytes[cut..], |_| {});
                    }
                }
            }

            #[test]
            fn response_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
                if let Ok(Some(h)) = parse_response_head(&bytes) {
                    prop_assert!(h.head_len <= bytes.len());
                    let _ = h.framing(false);
                }
            }

            /// The rewritten head parses to the same request, without any
            /// hop-by-hop field, and keeps every other field line as sent.
            #[test]
            fn hop_by_hop_rewrite_keeps_the_request(
                fields in proptest::collection::vec(
                    (prop_oneof![
                        Just("Connection"), Just("keep-alive"), Just("Proxy-Connection"),
                        Just("X-Named"), Just("Accept"), Just("X-Other"), Just("Cookie"),
                    ], prop_oneof![
                        "[ -~]{0,16}".boxed(),
                        Just("x-named, close".to_owned()).boxed(),
                        Just(" Accept ,keep-alive".to_owned()).boxed(),
                        Just("content-length, x-other".to_owned()).boxed(),
                    ]),
                    0..8,
                ),
                length in proptest::option::of(0u64..100_000),
            ) {
                let mut raw = String::from("POST /p HTTP/1.1\r\nHost: h\r\n");
                if let Some(n) = length {
                    raw.push_str(&format!("Content-Length: {n}\r\n"));
                }
                for (name, value) in &fields {
                    raw.push_str(&format!("{name}: {}\r\n", value.replace(['\r', '\n'], "")));
                }
                raw.push_str("\r\n");
                let Ok(Some(before)) = parse_request_head(raw.as_bytes(), &HeadLimits::default()) else {
                    return Ok(());
                };
                let mut out = Vec::new();
                upstream_request_head(raw.as_bytes(), &mut out);
                let after = parse_request_head(&out, &HeadLimits::default())
                    .expect("the rewrite parses")
                    .expect("complete");
                prop_assert_eq!(after.content_length, before.content_length);
                prop_assert_eq!(&after.host, &before.host);
                prop_assert_eq!(after.head_len, out.len());
                let text = String::from_utf8_lossy(&out).into_owned();
                for line in text.split("\r\n") {
                    let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
                    prop_assert!(!["connection", "keep-alive", "proxy-connection"].contains(&name.as_str()), "{}", line);
                    prop_assert!(raw.contains(line), "{} was not in the request", line);
                }
            }
        }
    }
}
