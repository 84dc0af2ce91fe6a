//! A restored socket whose first reads and writes go straight to the kernel.
//!
//! Tokio learns a socket's readiness from its event loop only: a socket
//! registered a moment ago counts as "not ready" until the loop has polled
//! the kernel once more, although a restored connection has its request in
//! the receive queue and room in its send buffer from the start. Serving it
//! through a plain [`TcpStream`] costs one trip through the event loop (and,
//! with several worker threads, often a wake-up of another thread) before
//! the first byte of the response leaves.
//!
//! [`Eager`] tries the system call first, until the first time the kernel
//! says "would block" in that direction; from then on it is the plain
//! stream, readiness and all. A failed attempt costs one system call.

use std::io::{self, IoSlice, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// See the module's documentation.
#[derive(Debug)]
pub struct Eager {
    io: TcpStream,
    read: bool,
    write: bool,
}

impl Eager {
    pub fn new(io: TcpStream) -> Self {
        Self {
            io,
            read: true,
            write: true,
        }
    }

    /// One attempt straight at the socket; `None`: go through tokio.
    fn attempt<T>(
        eager: &mut bool,
        io: &TcpStream,
        f: impl FnOnce(&mut &socket2::Socket) -> io::Result<T>,
    ) -> Option<io::Result<T>> {
        if !*eager {
            return None;
        }
        let sock = SockRef::from(io);
        match f(&mut &*sock) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                *eager = false;
                None
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
            r => Some(r),
        }
    }
}

impl AsyncRead for Eager {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let got = Self::attempt(&mut this.read, &this.io, |s| {
            s.read(buf.initialize_unfilled())
        });
        match got {
            Some(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Some(Err(e)) => Poll::Ready(Err(e)),
            None => Pin::new(&mut this.io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Eager {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Self::attempt(&mut this.write, &this.io, |s| s.write(buf)) {
            Some(r) => Poll::Ready(r),
            None => Pin::new(&mut this.io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Self::attempt(&mut this.write, &this.io, |s| s.write_vectored(bufs)) {
            Some(r) => Poll::Ready(r),
            None => Pin::new(&mut this.io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes already queued are read without a trip through the event loop,
    /// and the stream still works as a normal one afterwards (a read that
    /// has to wait for data, a write, end of stream).
    #[tokio::test(flavor = "current_thread")]
    async fn reads_queued_bytes_then_behaves_as_a_stream() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(b"queued").unwrap();
        // Wait until the bytes are in the server's receive queue.
        let mut peek = [0u8; 6];
        server.peek(&mut peek).unwrap();
        server.set_nonblocking(true).unwrap();
        let mut s = Eager::new(TcpStream::from_std(server).unwrap());

        let mut got = [0u8; 16];
        let n = std::future::poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut got);
            // One poll must do it: no readiness from the loop yet.
            match Pin::new(&mut s).poll_read(cx, &mut rb) {
                Poll::Ready(r) => Poll::Ready(r.map(|()| rb.filled().len())),
                Poll::Pending => panic!("a queued read waited for the event loop"),
            }
        })
        .await
        .unwrap();
        assert_eq!(&got[..n], b"queued");

        s.write_all(b"answer").await.unwrap();
        let mut back = [0u8; 6];
        client.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"answer");

        // Nothing queued: the first attempt finds the socket empty and the
        // stream waits through tokio from then on.
        let mut empty = [0u8; 4];
        std::future::poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut empty);
            assert!(Pin::new(&mut s).poll_read(cx, &mut rb).is_pending());
            Poll::Ready(())
        })
        .await;
        client.write_all(b"later").unwrap();
        drop(client);
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"later");
    }
}
