//! A transport wrapper that fails writes which make no progress for too long.
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

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
