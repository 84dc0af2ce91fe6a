//! Response bodies: nothing, bytes held in memory (a cached object, a shared response, a
//! message), or an origin body streamed through.
//!
//! A body dropped before its end means the client connection ended under it; that is counted
//! as an aborted response, as the static server counts it. A streamed body that the origin
//! cuts, or that stalls past the idle timeout, fails, which makes hyper cut the client's
//! connection: `Content-Length` is already on the wire and padding would corrupt the object.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use baton_serve::Counters;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::proxy::CachingProxy;

/// The body of every response the proxy sends.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Empty,
    Memory(MemoryBody),
    Stream(Box<StreamBody>),
}

#[derive(Debug)]
struct MemoryBody {
    /// What is still owed; frames are cut from its front without copying.
    rest: Bytes,
    chunk: usize,
    counters: Arc<Counters>,
}

#[derive(Debug)]
struct StreamBody {
    /// Bytes read from the origin before the decision to stream (the cache tried to buffer).
    prefix: Option<Bytes>,
    incoming: Incoming,
    idle: Duration,
    /// Allocated on the first stall and re-armed afterwards.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    counters: Arc<Counters>,
    proxy: Arc<CachingProxy>,
    ended: bool,
    failed: bool,
}

impl ProxyBody {
    pub(crate) fn empty() -> Self {
        ProxyBody { kind: Kind::Empty }
    }

    /// `data`, sent `chunk` bytes per frame at most.
    pub(crate) fn memory(data: Bytes, chunk: usize, counters: Arc<Counters>) -> Self {
        if data.is_empty() {
            return ProxyBody::empty();
        }
        ProxyBody {
            kind: Kind::Memory(MemoryBody {
                rest: data,
                chunk: chunk.max(1),
                counters,
            }),
        }
    }

    /// `prefix`, then the rest of an origin body as it arrives.
    pub(crate) fn stream(
        prefix: Bytes,
        incoming: Incoming,
        idle: Duration,
        counters: Arc<Counters>,
        proxy: Arc<CachingProxy>,
    ) -> Self {
        ProxyBody {
            kind: Kind::Stream(Box::new(StreamBody {
                prefix: (!prefix.is_empty()).then_some(prefix),
                incoming,
                idle,
                timer: None,
                armed: false,
                counters,
                proxy,
                ended: false,
                failed: false,
            })),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Memory(m) => {
                if m.rest.is_empty() {
                    return Poll::Ready(None);
                }
                let n = m.chunk.min(m.rest.len());
                let frame = m.rest.split_to(n);
                m.counters.add_body_bytes(n as u64);
                Poll::Ready(Some(Ok(Frame::data(frame))))
            }
            Kind::Stream(s) => s.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Memory(m) => m.rest.is_empty(),
            Kind::Stream(s) => s.finished(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Memory(m) => SizeHint::with_exact(m.rest.len() as u64),
            Kind::Stream(s) => {
                let prefix = s.prefix.as_ref().map_or(0, |p| p.len() as u64);
                let inner = s.incoming.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(prefix));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(prefix));
                }
                hint
            }
        }
    }
}

impl StreamBody {
    fn finished(&self) -> bool {
        self.failed || self.ended || (self.prefix.is_none() && self.incoming.is_end_stream())
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.failed || self.ended {
            return Poll::Ready(None);
        }
        if let Some(prefix) = self.prefix.take() {
            self.counters.add_body_bytes(prefix.len() as u64);
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        // Each turn consumes one frame; only trailers are skipped, and they end the body.
        loop {
            match Pin::new(&mut self.incoming).poll_frame(cx) {
                Poll::Pending => return self.stalled(cx),
                Poll::Ready(None) => {
                    self.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    self.failed = true;
                    self.proxy.note_origin_error();
                    tracing::debug!(error = %e, "origin body failed while streaming");
                    return Poll::Ready(Some(Err(io::Error::other(e))));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    self.armed = false;
                    if let Ok(data) = frame.into_data() {
                        let n = data.len() as u64;
                        self.proxy.note_origin_bytes(n);
                        self.counters.add_body_bytes(n);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
        }
    }

    /// The origin has nothing for us yet: run the idle clock.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let deadline = Instant::now() + self.idle;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            self.armed = true;
            timer.as_mut().reset(deadline);
        }
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.failed = true;
                self.proxy.note_origin_error();
                tracing::debug!("origin body stalled past the idle timeout");
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "origin sent nothing within the idle timeout",
                ))))
            }
        }
    }
}

impl Drop for MemoryBody {
    fn drop(&mut self) {
        if !self.rest.is_empty() {
            self.counters.add_aborted();
        }
    }
}

impl Drop for StreamBody {
    fn drop(&mut self) {
        if !self.finished() {
            self.counters.add_aborted();
        }
    }
}
