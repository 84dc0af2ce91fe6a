//! Response bodies: nothing, a small in-memory message, or a file streamed in chunks.
//!
//! File chunks are read on the connection's task, with plain `read(2)`, not through tokio's
//! blocking pool (`tokio::fs`), as nginx reads files in its event loop unless told to use
//! threads. From the page cache a 128 KiB read takes tens of microseconds; a trip through the
//! pool costs two thread wake-ups per read, and on a small busy host (the lab: 2 CPUs for the
//! client, the front and two back-ends) the scheduler left pool threads runnable for tens of
//! milliseconds. With keep-alive that made a p99 of 30-50 ms at every size, for handed-off and
//! direct connections alike; reading here, 4-19 ms. The cost: a docroot on a slow or remote
//! file system stalls the runtime thread while it reads.
//!
//! A file body holds the open file and the number of bytes still owed. Dropping it while bytes
//! are still owed means the connection ended under it (the client went away, or a send
//! timeout), and is counted as an aborted response; the file is closed by that same drop.

use std::io::{self, Read};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
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
    file: std::fs::File,
    remaining: u64,
    chunk: usize,
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
        file: std::fs::File,
        len: u64,
        chunk: usize,
        counters: Arc<Counters>,
    ) -> Self {
        ResponseBody {
            kind: Kind::File(FileStream {
                file,
                remaining: len,
                chunk: chunk.max(1),
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
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Message(msg, counters) => Poll::Ready(msg.take().map(|b| {
                counters.add_body_bytes(b.len() as u64);
                Ok(Frame::data(b))
            })),
            Kind::File(stream) => Poll::Ready(stream.next_chunk()),
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
    /// Reads the next chunk: `chunk` bytes, fewer at the end of the body or of the file.
    fn next_chunk(&mut self) -> Option<Result<Frame<Bytes>, io::Error>> {
        if self.remaining == 0 || self.failed {
            return None;
        }
        // `chunk` is a usize, so the minimum fits one.
        let want = usize::try_from(self.remaining).map_or(self.chunk, |r| r.min(self.chunk));
        let mut buf = Vec::with_capacity(want);
        // `take` stops at `want` without another read; `read_to_end` retries EINTR and short
        // reads until then or the end of the file.
        let n = match (&mut self.file).take(want as u64).read_to_end(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        };
        if n == 0 {
            // Content-Length is already on the wire; the only honest way out is to cut the
            // connection, which hyper does when the body errors.
            self.failed = true;
            tracing::warn!(missing = self.remaining, "file shrank while being served");
            return Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than its announced length",
            )));
        }
        self.remaining -= n as u64;
        self.counters.add_body_bytes(n as u64);
        Some(Ok(Frame::data(Bytes::from(buf))))
    }
}

impl Drop for FileStream {
    fn drop(&mut self) {
        if self.remaining > 0 && !self.failed {
            self.counters.add_aborted();
        }
    }
}
