//! One request in, one response out: method check, path resolution under the root,
//! conditionals, ranges, headers.

use std::fs::{self, File, Metadata};
use std::io::{self, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::body::ResponseBody;
use crate::conditional::{not_modified, range_plan, RangePlan, Validators};
use crate::path::{normalize, CleanPath};
use crate::StaticFiles;

const SERVER: HeaderValue = HeaderValue::from_static("baton");
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");
const ALLOW: HeaderValue = HeaderValue::from_static("GET, HEAD");
const BYTES: HeaderValue = HeaderValue::from_static("bytes");

/// The outcome of looking a path up under the root.
enum Lookup {
    File {
        file: File,
        meta: Metadata,
        /// The path as the client named it (plus `index.html`): its extension picks the type.
        served: PathBuf,
    },
    /// A directory named without its trailing slash; the value is the corrected location.
    Redirect(String),
    NotFound,
    Forbidden,
    Failed(io::Error),
}

pub(crate) async fn respond<B>(files: Arc<StaticFiles>, req: Request<B>) -> Response<ResponseBody> {
    let response = respond_inner(&files, &req).await;
    files.counters.add_response(response.status());
    response
}

async fn respond_inner<B>(files: &Arc<StaticFiles>, req: &Request<B>) -> Response<ResponseBody> {
    let is_head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut resp = error(files, StatusCode::METHOD_NOT_ALLOWED, false);
            resp.headers_mut().insert(header::ALLOW, ALLOW);
            return resp;
        }
    };
    let clean = match normalize(req.uri().path()) {
        Ok(clean) => clean,
        Err(why) => {
            tracing::debug!(path = req.uri().path(), ?why, "refused request path");
            return error(files, StatusCode::BAD_REQUEST, is_head);
        }
    };
    // On the connection's own task, like the body's reads (see `body`): a docroot in the page
    // cache answers these calls in microseconds.
    let lookup = lookup(&files.root, &clean);
    let (mut file, meta, served) = match lookup {
        Lookup::File { file, meta, served } => (file, meta, served),
        Lookup::Redirect(location) => return redirect(files, &location, is_head),
        Lookup::NotFound => return error(files, StatusCode::NOT_FOUND, is_head),
        Lookup::Forbidden => return error(files, StatusCode::FORBIDDEN, is_head),
        Lookup::Failed(e) => {
            tracing::warn!(path = req.uri().path(), error = %e, "file lookup failed");
            return error(files, StatusCode::INTERNAL_SERVER_ERROR, is_head);
        }
    };

    let len = meta.len();
    let validators = Validators::new(len, meta.modified().ok());
    let mut resp = Response::new(ResponseBody::empty());
    let headers = resp.headers_mut();
    headers.insert(header::SERVER, SERVER);
    headers.insert(header::ACCEPT_RANGES, BYTES);
    if let Some(v) = validators
        .etag()
        .and_then(|e| HeaderValue::from_str(e).ok())
    {
        headers.insert(header::ETAG, v);
    }
    if let Some(v) = validators
        .last_modified()
        .and_then(|s| HeaderValue::from_str(&s).ok())
    {
        headers.insert(header::LAST_MODIFIED, v);
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

    let content_type = mime_guess::from_path(&served)
        .first_raw()
        .and_then(|m| HeaderValue::from_str(m).ok())
        .unwrap_or(OCTET_STREAM);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, content_type);

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
    let (start, body_len) = match plan {
        RangePlan::Full => (0, len),
        RangePlan::Partial { start, len: part } => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            let range = format!("bytes {}-{}/{}", start, start + part - 1, len);
            if let Ok(v) = HeaderValue::from_str(&range) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            (start, part)
        }
        RangePlan::Unsatisfiable => {
            let mut resp = error(files, StatusCode::RANGE_NOT_SATISFIABLE, false);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return resp;
        }
    };
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    if is_head || body_len == 0 {
        return resp;
    }

    if start > 0 {
        if let Err(e) = file.seek(io::SeekFrom::Start(start)) {
            tracing::warn!(error = %e, "seek failed");
            return error(files, StatusCode::INTERNAL_SERVER_ERROR, false);
        }
    }
    let status = resp.status();
    let headers = std::mem::take(resp.headers_mut());
    let mut resp = Response::new(ResponseBody::file(
        file,
        body_len,
        files.limits.chunk_size,
        Arc::clone(&files.counters),
    ));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// Resolves a normalized path under `root` (canonical). Every candidate is canonicalized and
/// must still lie under the root, so a symlink cannot lead out of it.
fn lookup(root: &Path, clean: &CleanPath) -> Lookup {
    let rel = clean.relative();
    let real = match canonical_under(root, &root.join(&rel)) {
        Ok(Some(real)) => real,
        Ok(None) => return Lookup::NotFound,
        Err(e) => return resolve_error(e),
    };
    let meta = match fs::metadata(&real) {
        Ok(meta) => meta,
        Err(e) => return resolve_error(e),
    };
    if !meta.is_dir() {
        // `/file.txt/` names a directory that does not exist.
        return if clean.trailing_slash {
            Lookup::NotFound
        } else {
            open_regular(&real, rel)
        };
    }
    if !clean.trailing_slash {
        return Lookup::Redirect(clean.directory_location());
    }
    match canonical_under(root, &real.join("index.html")) {
        Ok(Some(index)) => open_regular(&index, rel.join("index.html")),
        Ok(None) => Lookup::NotFound,
        Err(e) => resolve_error(e),
    }
}

/// The canonical form of `path` if it exists and lies under `root`.
fn canonical_under(root: &Path, path: &Path) -> io::Result<Option<PathBuf>> {
    let real = fs::canonicalize(path)?;
    Ok(real.starts_with(root).then_some(real))
}

/// Opens a regular file. Anything else (FIFO, device, socket) is "not found": opening a FIFO
/// would block a thread, and devices are not content.
fn open_regular(real: &Path, served: PathBuf) -> Lookup {
    match fs::metadata(real) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Lookup::NotFound,
        Err(e) => return open_error(e),
    }
    let file = match File::open(real) {
        Ok(file) => file,
        Err(e) => return open_error(e),
    };
    // Size and time come from the open file, so they describe the bytes we will send.
    match file.metadata() {
        Ok(meta) if meta.is_file() => Lookup::File { file, meta, served },
        Ok(_) => Lookup::NotFound,
        Err(e) => Lookup::Failed(e),
    }
}

/// While resolving, any failure but a permission problem means the name does not lead to a
/// file (missing, not a directory, symlink loop, name too long).
fn resolve_error(e: io::Error) -> Lookup {
    match e.kind() {
        io::ErrorKind::PermissionDenied => Lookup::Forbidden,
        _ => Lookup::NotFound,
    }
}

fn open_error(e: io::Error) -> Lookup {
    match e.kind() {
        io::ErrorKind::PermissionDenied => Lookup::Forbidden,
        io::ErrorKind::NotFound => Lookup::NotFound,
        _ => Lookup::Failed(e),
    }
}

fn error(files: &StaticFiles, status: StatusCode, is_head: bool) -> Response<ResponseBody> {
    let text = match status {
        StatusCode::BAD_REQUEST => "400 Bad Request\n",
        StatusCode::FORBIDDEN => "403 Forbidden\n",
        StatusCode::NOT_FOUND => "404 Not Found\n",
        StatusCode::METHOD_NOT_ALLOWED => "405 Method Not Allowed\n",
        StatusCode::RANGE_NOT_SATISFIABLE => "416 Range Not Satisfiable\n",
        StatusCode::MOVED_PERMANENTLY => "301 Moved Permanently\n",
        _ => "500 Internal Server Error\n",
    };
    let body = if is_head {
        ResponseBody::empty()
    } else {
        ResponseBody::message(text, Arc::clone(&files.counters))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::SERVER, SERVER);
    headers.insert(header::CONTENT_TYPE, TEXT_PLAIN);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    resp
}

fn redirect(files: &StaticFiles, location: &str, is_head: bool) -> Response<ResponseBody> {
    match HeaderValue::from_str(location) {
        Ok(v) => {
            let mut resp = error(files, StatusCode::MOVED_PERMANENTLY, is_head);
            resp.headers_mut().insert(header::LOCATION, v);
            resp
        }
        Err(_) => error(files, StatusCode::NOT_FOUND, is_head),
    }
}
