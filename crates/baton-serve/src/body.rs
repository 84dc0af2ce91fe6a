//! Response bodies: nothing, a small in-memory message, or a file streamed in chunks.
//!
//! A file body holds the open file and the number of bytes still owed. Dropping it while bytes
//! are still owed means the connection ended under it (the client went away, or a send
//! timeout), and is counted as an aborted response; the file is closed by that same drop.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};

use crate::stats::Counters;

#[derive(Debug)]
pub(crate) struct ResponseBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Empty,
    Message(Option<Bytes>, Arc<Counters>),
    File(FileStream),
}

#[derive(Debug)]
struct FileStream {
    file: tokio::fs::File,
    remaining: u64,
    chunk: usize,
    buf: BytesMut,
    counters: Arc<Counters>,
    /// The file ended early (it shrank while being served): the connection is cut, but that is
    /// our failure, not the client's.
    failed: bool,
}

impl ResponseBody {
    pub(crate) fn empty() -> Self {
        ResponseBody { kind: Kind::Empty }
    }

    pub(crate) fn message(text: &'static str, counters: Arc<Counters>) -> Self {
        ResponseBody {
            kind: Kind::Message(Some(Bytes::from_static(text.as_bytes())), counters),
        }
    }

    /// Streams `len` bytes from the file's current position, `chunk` bytes per frame at most.
    pub(crate) fn file(
        file: tokio::fs::File,
        len: u64,
        chunk: usize,
        counters: Arc<Counters>,
    ) -> Self {
        ResponseBody {
            kind: Kind::File(FileStream {
                file,
                remaining: len,
                chunk: chunk.max(1),
                buf: BytesMut::new(),
                counters,
                failed: false,
            }),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Message(msg, counters) => Poll::Ready(msg.take().map(|b| {
                counters.add_body_bytes(b.len() as u64);
                Ok(Frame::data(b))
            })),
            Kind::File(stream) => stream.poll_chunk(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Message(msg, _) => msg.is_none(),
            Kind::File(stream) => stream.remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Message(msg, _) => {
                SizeHint::with_exact(msg.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::File(stream) => SizeHint::with_exact(stream.remaining),
        }
    }
}

impl FileStream {
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.remaining == 0 || self.failed {
            return Poll::Ready(None);
        }
        // `chunk` is a usize, so the minimum fits one.
        let want = usize::try_from(self.remaining).map_or(self.chunk, |r| r.min(self.chunk));
        self.buf.reserve(want);
        let mut limited = (&mut self.buf).limit(want);
        let n = match tokio_util::io::poll_read_buf(Pin::new(&mut self.file), cx, &mut limited) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => {
                self.failed = true;
                return Poll::Ready(Some(Err(e)));
            }
        };
        if n == 0 {
            // Content-Length is already on the wire; the only honest way out is to cut the
            // connection, which hyper does when the body errors.
            self.failed = true;
            tracing::warn!(missing = self.remaining, "file shrank while being served");
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than its announced length",
            ))));
        }
        self.remaining -= n as u64;
        self.counters.add_body_bytes(n as u64);
        Poll::Ready(Some(Ok(Frame::data(self.buf.split().freeze()))))
    }
}

impl Drop for FileStream {
    fn drop(&mut self) {
        if self.remaining > 0 && !self.failed {
            self.counters.add_aborted();
        }
    }
}
