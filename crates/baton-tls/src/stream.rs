//! [`TlsStream`]: a [`RecordLayer`] on an async byte stream, for hyper and friends.
//!
//! Reading: the plaintext the front-end already decrypted (the request head) comes first; then
//! records are read from the socket (including any ciphertext the front had received but not
//! decrypted: the connection restore put it back into the receive queue) and decrypted in
//! place. After the client's close_notify reads return end of file. A socket that ends without
//! close_notify also reads as end of file if it ends between records (clients often just
//! close; HTTP framing tells a truncated request apart), and as `UnexpectedEof` inside a
//! record.
//!
//! Writing: `poll_write` seals up to 64 KiB per call straight into the send buffer (one copy,
//! then encryption in place) and writes out what it can without waiting; it only returns
//! `Pending` when the send buffer is over its high-water mark and the socket is not writable,
//! so memory stays bounded. `poll_flush` writes everything, `poll_shutdown` sends close_notify,
//! writes everything and shuts the socket's write side.
//!
//! Errors: a record that fails to authenticate or breaks the protocol, or a fatal alert from
//! the client, is an `io::Error` of kind `InvalidData` wrapping the [`TlsError`]; the matching
//! fatal alert is sent best-effort (without waiting) and the session is over. Writing after
//! shutdown is `BrokenPipe`. Every `Pending` comes from the socket, which registered the
//! waker.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::record::RecordLayer;
use crate::state::TlsError;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 32 * 1024;
/// Most plaintext one `poll_write` accepts.
const MAX_WRITE: usize = 64 * 1024;
/// Above this many sealed bytes waiting, `poll_write` waits for the socket first.
const HIGH_WATER: usize = 64 * 1024;

/// A TLS session continued on `S`. See the module docs.
#[derive(Debug)]
pub struct TlsStream<S> {
    io: S,
    layer: RecordLayer,
    /// Ciphertext read from `io`, not yet decrypted (at most one partial record after a read).
    rbuf: BytesMut,
    /// Plaintext not yet handed to the reader.
    plain: BytesMut,
    /// Sealed records not yet written to `io`.
    wbuf: BytesMut,
    /// `io` reported end of file.
    io_eof: bool,
    /// TLS 1.3: send a KeyUpdate after this many plaintext bytes (0: only at
    /// the AEAD limits, which the record layer keeps by itself).
    rekey_every: u64,
    /// Plaintext bytes sealed under the current sending keys.
    since_rekey: u64,
}

fn to_io(e: TlsError) -> io::Error {
    let kind = match e {
        TlsError::Closed => io::ErrorKind::BrokenPipe,
        _ => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Continues the session of `layer` on `io`. `plaintext_prefix` is application data the
    /// front-end already decrypted; it is read before anything from `io`.
    pub fn new(io: S, layer: RecordLayer, plaintext_prefix: Bytes) -> TlsStream<S> {
        TlsStream {
            io,
            layer,
            rbuf: BytesMut::new(),
            plain: BytesMut::from(plaintext_prefix),
            wbuf: BytesMut::new(),
            io_eof: false,
            rekey_every: 0,
            since_rekey: 0,
        }
    }

    /// As [`TlsStream::new`], with `ciphertext`: bytes read from `io` already and not
    /// decrypted yet (they come before anything read from `io` from now on).
    pub fn with_ciphertext(
        io: S,
        layer: RecordLayer,
        plaintext_prefix: Bytes,
        ciphertext: Bytes,
    ) -> TlsStream<S> {
        let mut s = TlsStream::new(io, layer, plaintext_prefix);
        s.rbuf = BytesMut::from(ciphertext);
        s
    }

    /// TLS 1.3: moves the sending keys on (a KeyUpdate that does not ask the
    /// client for one) after every `bytes` of plaintext written, so that no
    /// key protects more than that; 0 (the default) leaves it to the AEAD
    /// limits. No effect on TLS 1.2, which has no KeyUpdate.
    pub fn set_key_update_interval(&mut self, bytes: u64) {
        self.rekey_every = bytes;
    }

    /// The record layer (version, suite, sequence numbers, key updates, close state).
    pub fn layer(&self) -> &RecordLayer {
        &self.layer
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The underlying stream, mutably (reading or writing it directly breaks the session).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// Writes once from the send buffer.
    fn poll_write_some(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.wbuf.advance(n);
        Poll::Ready(Ok(()))
    }

    /// Writes the whole send buffer (after the layer's pending output).
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.layer.take_pending(&mut self.wbuf);
        while !self.wbuf.is_empty() {
            ready!(self.poll_write_some(cx))?;
        }
        self.wbuf.clear();
        Poll::Ready(Ok(()))
    }

    /// Reads more ciphertext from `io` into `rbuf`.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let start = self.rbuf.len();
        self.rbuf.resize(start + READ_CHUNK, 0);
        let mut buf = ReadBuf::new(&mut self.rbuf[start..]);
        let res = Pin::new(&mut self.io).poll_read(cx, &mut buf);
        let n = buf.filled().len();
        self.rbuf.truncate(start + n);
        ready!(res)?;
        if n == 0 {
            self.io_eof = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = buf.remaining().min(this.plain.len());
                buf.put_slice(&this.plain[..n]);
                this.plain.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.layer.peer_closed() || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match this.layer.read(&mut this.rbuf, &mut this.plain) {
                Ok(status) => {
                    if this.layer.wants_write() || !this.wbuf.is_empty() {
                        // A KeyUpdate answer (or data a write left behind): send it now if the
                        // socket takes it; if not, the socket wakes us when it can, and a later
                        // read or write carries on.
                        if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                            return Poll::Ready(Err(e));
                        }
                    }
                    if status.plaintext > 0 || status.peer_closed {
                        continue;
                    }
                }
                Err(e) => {
                    // Best effort: the fatal alert goes out if the socket takes it now.
                    let _ = this.poll_write_out(cx);
                    return Poll::Ready(Err(to_io(e)));
                }
            }
            if this.io_eof {
                return if this.rbuf.is_empty() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "TLS connection ended inside a record",
                    )))
                };
            }
            ready!(this.poll_fill(cx))?;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.layer.take_pending(&mut this.wbuf);
        while this.wbuf.len() >= HIGH_WATER {
            ready!(this.poll_write_some(cx))?;
        }
        let n = data.len().min(MAX_WRITE);
        this.layer
            .write(&data[..n], &mut this.wbuf)
            .map_err(to_io)?;
        this.since_rekey += n as u64;
        if this.rekey_every > 0
            && this.since_rekey >= this.rekey_every
            && this.layer.version() == crate::state::Version::Tls13
        {
            this.layer
                .update_keys(false, &mut this.wbuf)
                .map_err(to_io)?;
            this.since_rekey = 0;
        }
        // Start sending without waiting: the data is accepted either way.
        while !this.wbuf.is_empty() {
            match this.poll_write_some(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.layer.close_notify(&mut this.wbuf);
        ready!(this.poll_write_out(cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
