//! The daemons' admin endpoint (keep it on loopback). The front serves
//! `GET /ready` (200 once every back-end's control channel is up, else 503),
//! `GET /serving` (200 while the front should be announced: not draining,
//! not stopping, some back-end usable; else 503 and the reason, which
//! `baton announce` polls), `POST /drain` and `POST /resume` (ask to be
//! withdrawn, and undo it; the front serves whatever reaches it either
//! way), `GET /stats` (JSON), `GET /metrics` (Prometheus) and
//! `POST /stats/reset-latency` (forget latency samples) and `POST /reload`
//! (re-read the configuration file); a back-end serves
//! `GET /stats` and `GET /metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::front::Front;

/// A client must send its request head within this (else the connection
/// is closed), so idle connections cannot pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (EMFILE and the like): the condition does not
/// clear by retrying at once, and spinning would starve the front's tasks.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves the front's admin endpoint until the task is aborted.
pub async fn serve(addr: SocketAddr, front: Arc<Front>) {
    serve_with(addr, move |req| route(&front, req)).await
}

/// Serves `route` on `addr` until the task is aborted: the one HTTP admin
/// server both daemons use.
pub async fn serve_with<R>(addr: SocketAddr, route: R)
where
    R: Fn(hyper::Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let route = Arc::new(route);
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(%addr, error = %e, "admin endpoint unavailable");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let route = Arc::clone(&route);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let route = Arc::clone(&route);
                async move { Ok::<_, Infallible>(route(req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn route(front: &Arc<Front>, req: hyper::Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ready") => {
            if front.ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: a back-end channel is down\n",
                )
            }
        }
        (&Method::GET, "/serving") => match front.serving() {
            Ok(()) => text(StatusCode::OK, "serving\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("{}\n", why.as_str()),
            ),
        },
        (&Method::POST, "/drain") => {
            front.set_drained(true);
            text(
                StatusCode::OK,
                "drained: /serving answers 503 until POST /resume\n",
            )
        }
        (&Method::POST, "/resume") => {
            front.set_drained(false);
            text(StatusCode::OK, "resumed\n")
        }
        (&Method::GET, "/stats") => json(&front.snapshot()),
        (&Method::GET, "/metrics") => metrics(crate::front::Metrics(Arc::clone(front))),
        (&Method::POST, "/stats/reset-latency") => {
            front.reset_latency();
            text(StatusCode::OK, "reset\n")
        }
        (&Method::POST, "/reload") => match front.reload() {
            Ok(summary) => text(StatusCode::OK, &format!("reloaded: {summary}\n")),
            Err(why) => text(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("not reloaded: {why}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "try GET /ready, /serving, /stats or /metrics, POST /reload, /drain or /resume\n",
        ),
    }
}

/// A JSON response of `value`.
pub fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response\n")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    }
}

/// The Prometheus exposition of `collector`.
pub fn metrics(collector: impl prometheus_client::collector::Collector) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(crate::metrics::render(collector))));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    r
}

/// A plain-text response.
pub fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r
}
