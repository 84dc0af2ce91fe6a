//! Transport wrappers: [`SendTimeout`] fails writes which make no progress for too long;
//! [`Lingering`] closes gracefully.
//!
//! hyper bounds how long a request head may take, but nothing bounds a response that the
//! client stops reading (zero window, or a peer that vanished without a RST). Like nginx's
//! `send_timeout`, the clock runs only while a write or flush is blocked, and restarts whenever
//! one completes, so a slow but moving reader is never cut off.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

#[derive(Debug)]
pub(crate) struct SendTimeout<I> {
    inner: I,
    timeout: Duration,
    /// Allocated once and re-armed, not per stall.
    timer: Pin<Box<Sleep>>,
    armed: bool,
}

impl<I> SendTimeout<I> {
    pub(crate) fn new(inner: I, timeout: Duration) -> Self {
        SendTimeout {
            inner,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            armed: false,
        }
    }

    /// Called with the inner result of a write-side operation.
    fn track<T>(&mut self, cx: &mut Context<'_>, res: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if res.is_ready() {
            self.armed = false;
            return res;
        }
        if !self.armed {
            self.armed = true;
            let deadline = Instant::now() + self.timeout;
            self.timer.as_mut().reset(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.armed = false;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client did not accept response data within the send timeout",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SendTimeout<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SendTimeout<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.track(cx, res)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.track(cx, res)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_flush(cx);
        this.track(cx, res)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.track(cx, res)
    }
}

/// Ends a connection gracefully, as nginx's lingering close: at shutdown (after the last
/// answer) it ends the sending direction, then reads and discards what the client still sends,
/// until the client closes, [`LINGER`] passes or [`LINGER_BYTES`] were discarded. Closing
/// with unread input (a request body the answer did not need, a pipelined request after
/// `Connection: close`) would send a reset, and the client's kernel may drop the answer with it.
#[derive(Debug)]
pub struct Lingering<I> {
    inner: I,
    state: Linger,
}

/// How long a closing connection keeps discarding what the client sends.
pub const LINGER: Duration = Duration::from_secs(2);
/// The most a closing connection discards.
pub const LINGER_BYTES: usize = 1 << 20;

#[derive(Debug)]
enum Linger {
    Open,
    Draining {
        until: Pin<Box<Sleep>>,
        discarded: usize,
    },
    Closed,
}

impl<I> Lingering<I> {
    /// Wraps `inner`; its `poll_shutdown` lingers.
    pub fn new(inner: I) -> Self {
        Lingering {
            inner,
            state: Linger::Open,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Lingering<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                Linger::Open => {
                    let r = std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx));
                    if r.is_err() {
                        this.state = Linger::Closed;
                        return Poll::Ready(r);
                    }
                    this.state = Linger::Draining {
                        until: Box::pin(tokio::time::sleep(LINGER)),
                        discarded: 0,
                    };
                }
                Linger::Draining { until, discarded } => {
                    if until.as_mut().poll(cx).is_ready() || *discarded >= LINGER_BYTES {
                        this.state = Linger::Closed;
                        continue;
                    }
                    let mut space = [0u8; 8192];
                    let mut buf = ReadBuf::new(&mut space);
                    match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                            *discarded += buf.filled().len();
                        }
                        // The client closed, or is gone: nothing left to wait for.
                        Poll::Ready(_) => this.state = Linger::Closed,
                    }
                }
                Linger::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// The answer reaches a client that is still sending, and the connection then ends
    /// with its end of stream, not a reset.
    #[tokio::test]
    async fn lingering_close_reads_out_what_the_client_still_sends() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            // Input the server never reads as a request (under the lingering cap).
            c.write_all(&vec![b'x'; 512 << 10]).await.unwrap();
            let mut answer = Vec::new();
            let end = c.read_to_end(&mut answer).await.map_err(|e| e.kind());
            (answer, end)
        });
        let (s, _) = listener.accept().await.unwrap();
        let mut s = Lingering::new(s);
        s.write_all(b"405").await.unwrap();
        s.shutdown().await.unwrap();
        drop(s);
        let (answer, end) = client.await.unwrap();
        assert_eq!(answer, b"405");
        assert_eq!(end, Ok(3));
    }

    #[tokio::test]
    async fn blocked_writer_times_out() {
        // A 64-byte pipe whose reader never reads: the second write blocks forever.
        let (mut a, _b) = tokio::io::duplex(64);
        let mut guarded = SendTimeout::new(&mut a, Duration::from_millis(50));
        guarded.write_all(&[0u8; 64]).await.ok();
        let err = tokio::time::timeout(Duration::from_secs(5), guarded.write_all(&[0u8; 1]))
            .await
            .map(|r| r.map_err(|e| e.kind()));
        assert_eq!(err, Ok(Err(io::ErrorKind::TimedOut)));
    }

    #[tokio::test]
    async fn slow_reader_keeps_the_connection() {
        let (mut a, mut b) = tokio::io::duplex(16);
        let reader = tokio::spawn(async move {
            let mut total = 0usize;
            let mut buf = [0u8; 16];
            while total < 256 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                match tokio::io::AsyncReadExt::read(&mut b, &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
            total
        });
        // Each 16-byte step takes ~50 ms, the whole transfer ~800 ms: longer than the timeout,
        // but no single write waits that long.
        let mut guarded = SendTimeout::new(&mut a, Duration::from_millis(400));
        let res = guarded.write_all(&[7u8; 256]).await;
        assert!(res.is_ok(), "{res:?}");
        assert_eq!(reader.await.ok(), Some(256));
    }
}
