//! The persistent control channel, I/O side: TCP, the authenticated key
//! exchange and encrypted frames from `baton_proto::auth`. All protocol logic
//! lives in `baton-proto`; this is the glue that moves its bytes.

use std::net::SocketAddrV4;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use baton_proto::auth::{
    BackHandshake, BackStep, EphemeralKey, FrontHandshake, Opener, Psk, Sealer,
};
use baton_proto::frame::Frame;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Writes sealed (encrypted) frames.
#[derive(Debug)]
pub struct FrameWriter {
    sealer: Sealer,
    half: OwnedWriteHalf,
    buf: BytesMut,
}

/// Reads sealed (encrypted) frames.
#[derive(Debug)]
pub struct FrameReader {
    opener: Opener,
    half: OwnedReadHalf,
    buf: BytesMut,
}

impl FrameWriter {
    /// Seals and writes one frame.
    pub async fn send(&mut self, frame: &Frame) -> Result<()> {
        self.send_all(std::slice::from_ref(frame)).await
    }

    /// Seals several frames and writes them with one write: the peer reads
    /// them with one wake-up.
    pub async fn send_all(&mut self, frames: &[Frame]) -> Result<()> {
        self.buf.clear();
        for frame in frames {
            self.sealer
                .seal(frame, &mut self.buf)
                .context("sealing a frame")?;
        }
        self.half
            .write_all(&self.buf)
            .await
            .context("writing to the control channel")
    }

    /// Closes the sending direction.
    pub async fn shutdown(&mut self) -> Result<()> {
        self.half
            .shutdown()
            .await
            .context("closing the control channel")
    }
}

impl FrameReader {
    /// The next frame if one is complete in the buffer already, without
    /// reading: the rest of what one read brought.
    pub fn buffered(&mut self) -> Result<Option<Frame>> {
        self.opener.open(&mut self.buf).context("control channel")
    }

    /// The next frame; `Ok(None)` when the peer closed the channel cleanly.
    /// Cancel-safe: a frame is only taken out of the buffer once complete.
    pub async fn next(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(f) = self.opener.open(&mut self.buf).context("control channel")? {
                return Ok(Some(f));
            }
            let n = self
                .half
                .read_buf(&mut self.buf)
                .await
                .context("reading the control channel")?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                bail!("control channel closed in the middle of a frame");
            }
        }
    }
}

/// A fresh ephemeral key for one handshake, from the OS CSPRNG.
fn ephemeral() -> Result<EphemeralKey> {
    EphemeralKey::generate(getrandom::getrandom)
        .map_err(|e| anyhow!("no randomness for an ephemeral key: {e}"))
}

fn prepare(stream: &TcpStream) -> Result<()> {
    // Frames are small and latency-critical.
    stream.set_nodelay(true).context("TCP_NODELAY")
}

/// Front side: connects to a back-end and authenticates both ways within `timeout`.
pub async fn connect(
    addr: SocketAddrV4,
    psk: &Psk,
    timeout: Duration,
) -> Result<(FrameWriter, FrameReader)> {
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        prepare(&stream)?;
        // Unacknowledged frames fail the channel within the connect timeout,
        // not after ~15 minutes of retransmissions.
        baton_sys::sockopt::set_tcp_user_timeout(std::os::fd::AsFd::as_fd(&stream), timeout)
            .context("TCP_USER_TIMEOUT")?;
        let (mut hs, hello) = FrontHandshake::start(psk.clone(), ephemeral()?);
        stream.write_all(&hello).await.context("sending hello")?;
        let mut buf = BytesMut::with_capacity(4096);
        let done = loop {
            if let Some(done) = hs
                .handle(&mut buf)
                .with_context(|| format!("authenticating {addr}"))?
            {
                break done;
            }
            if stream
                .read_buf(&mut buf)
                .await
                .context("reading the challenge")?
                == 0
            {
                bail!("{addr} closed the channel during the handshake");
            }
        };
        stream
            .write_all(&done.proof)
            .await
            .context("sending proof")?;
        Ok(split(stream, done.sealer, done.opener, buf))
    })
    .await
    .map_err(|_| anyhow!("connecting to {addr}: no authenticated channel within {timeout:?}"))?
}

/// Back side: authenticates a front-end that connected, within `timeout`.
pub async fn accept(
    mut stream: TcpStream,
    psk: &Psk,
    timeout: Duration,
) -> Result<(FrameWriter, FrameReader)> {
    let peer = stream.peer_addr().context("peer address")?;
    tokio::time::timeout(timeout, async {
        prepare(&stream)?;
        let mut hs = BackHandshake::new(psk.clone(), ephemeral()?);
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            match hs
                .handle(&mut buf)
                .with_context(|| format!("authenticating front-end {peer}"))?
            {
                BackStep::NeedMore => {
                    if stream
                        .read_buf(&mut buf)
                        .await
                        .context("reading handshake")?
                        == 0
                    {
                        bail!("front-end {peer} closed the channel during the handshake");
                    }
                }
                BackStep::Send(bytes) => stream
                    .write_all(&bytes)
                    .await
                    .context("sending challenge")?,
                BackStep::Done { sealer, opener } => return Ok(split(stream, sealer, opener, buf)),
                BackStep::Reject { reply, error } => {
                    let _ = stream.write_all(&reply).await;
                    return Err(anyhow!(error).context(format!("front-end {peer}")));
                }
            }
        }
    })
    .await
    .map_err(|_| anyhow!("front-end {peer}: no authenticated channel within {timeout:?}"))?
}

fn split(
    stream: TcpStream,
    sealer: Sealer,
    opener: Opener,
    leftover: BytesMut,
) -> (FrameWriter, FrameReader) {
    let (r, w) = stream.into_split();
    (
        FrameWriter {
            sealer,
            half: w,
            buf: BytesMut::with_capacity(4096),
        },
        FrameReader {
            opener,
            half: r,
            buf: leftover,
        },
    )
}
