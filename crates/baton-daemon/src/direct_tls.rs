//! The back-end's optional direct HTTPS listener (`[direct_tls]`): the same
//! content as `direct_listen`, over TLS terminated by the back-end itself
//! with rustls. A baseline for benchmarks (what one server does over HTTPS
//! with nothing in front of it); handed-off TLS sessions do not use it.
//!
//! [`DirectTlsStream`] drives a rustls [`ServerConnection`] over a tokio
//! [`TcpStream`] with non-blocking reads and writes, so the static file
//! server can run on it unchanged.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::DirectTlsConfig;

/// The only ALPN protocol offered: the static file server speaks HTTP/1.1.
const ALPN: &[u8] = b"http/1.1";
/// How long a client may take to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The rustls configuration of `[direct_tls]`: TLS 1.3 and 1.2 with the
/// ring provider, ALPN `http/1.1`, `tickets` TLS 1.3 tickets per handshake
/// (rustls' in-memory session cache).
/// Any problem with the files is an error naming them.
pub fn server_config(cfg: &DirectTlsConfig) -> Result<Arc<ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .with_context(|| format!("[direct_tls] cert: reading {}", cfg.cert.display()))?
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("[direct_tls] cert: parsing {}", cfg.cert.display()))?;
    if chain.is_empty() {
        bail!(
            "[direct_tls] cert: {} holds no PEM certificate",
            cfg.cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key).with_context(|| {
        format!(
            "[direct_tls] key: {} holds no readable PEM private key (PKCS#8, PKCS#1 or SEC1)",
            cfg.key.display()
        )
    })?;
    // The same provider as the front's: no C toolchain needed.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("[direct_tls] TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .with_context(|| {
            format!(
                "[direct_tls] {} and {} are not a certificate and its key",
                cfg.cert.display(),
                cfg.key.display()
            )
        })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.max_early_data_size = 0;
    config.send_tls13_tickets = cfg.tickets;
    Ok(Arc::new(config))
}

/// A TLS server session over a TCP connection, as an async byte stream.
#[derive(Debug)]
pub struct DirectTlsStream {
    io: TcpStream,
    conn: ServerConnection,
    /// `close_notify` was queued by `poll_shutdown`.
    closing: bool,
}

/// Non-blocking `Read`/`Write` for rustls: `WouldBlock` when the socket is
/// not ready (the caller then waits for readiness).
struct Nb<'a>(&'a TcpStream);

impl Read for Nb<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Nb<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl DirectTlsStream {
    /// Completes the handshake on `io`, within [`HANDSHAKE_TIMEOUT`].
    pub async fn accept(io: TcpStream, config: Arc<ServerConfig>) -> io::Result<DirectTlsStream> {
        let conn = ServerConnection::new(config).map_err(tls_err)?;
        let mut s = DirectTlsStream {
            io,
            conn,
            closing: false,
        };
        tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            std::future::poll_fn(|cx| s.poll_handshake(cx)),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        Ok(s)
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.is_handshaking() {
            ready!(self.poll_flush_tls(cx))?;
            if !self.conn.is_handshaking() {
                break;
            }
            if self.conn.wants_read() {
                match ready!(self.poll_read_tls(cx))? {
                    0 => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the client closed during the handshake",
                        )))
                    }
                    _ => continue,
                }
            }
        }
        // The server's last flight (and tickets) go out with the first response.
        Poll::Ready(Ok(()))
    }

    /// Reads TLS bytes into rustls and processes them; `Ok(0)` at the end of
    /// the TCP stream. A protocol error queues rustls' alert and sends what
    /// it can of it before failing.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            match self.conn.read_tls(&mut Nb(&self.io)) {
                Ok(n) => {
                    if let Err(e) = self.conn.process_new_packets() {
                        let _ = self.conn.write_tls(&mut Nb(&self.io));
                        return Poll::Ready(Err(tls_err(e)));
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.io.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes every TLS byte rustls holds.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut Nb(&self.io)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.io.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for DirectTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.conn.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    // 0: the client sent close_notify (or buf is full).
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The TCP stream ended without close_notify: an end all the same
                // for HTTP/1.1, whose messages are delimited.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Handshake messages after the handshake (a KeyUpdate) may want
            // an answer; it is sent with the next write, or now if it can be.
            if this.conn.wants_write() {
                if let Poll::Ready(Err(e)) = this.poll_flush_tls(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            ready!(this.poll_read_tls(cx))?;
        }
    }
}

impl AsyncWrite for DirectTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            // rustls encrypts at once, up to its buffer limit (64 KiB by default).
            let n = this.conn.writer().write(buf)?;
            // Push out what it can without waiting: the socket's buffer is
            // the real queue.
            match this.poll_flush_tls(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) | Poll::Pending if n > 0 => return Poll::Ready(Ok(n)),
                Poll::Ready(Ok(())) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_tls(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.conn.send_close_notify();
            this.closing = true;
        }
        ready!(this.poll_flush_tls(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client (rustls, blocking) sends a request; the server reads it
    /// through the stream, answers 1 MiB in uneven writes and closes with
    /// close_notify; the client gets every byte and a clean end.
    #[test]
    fn serves_a_request_and_closes_cleanly() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ck = rcgen::generate_simple_self_signed(vec!["baton.test".to_string()])
            .expect("certificate");
        let cfg = DirectTlsConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            cert: dir.path().join("c.pem"),
            key: dir.path().join("k.pem"),
            tickets: 0,
        };
        std::fs::write(&cfg.cert, ck.cert.pem()).expect("cert");
        std::fs::write(&cfg.key, ck.signing_key.serialize_pem()).expect("key");
        let server_cfg = server_config(&cfg).expect("config");
        let body: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ck.cert.der().clone()).expect("root");
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = std::thread::spawn(move || {
            let name = rustls::pki_types::ServerName::try_from("baton.test").expect("name");
            let conn = rustls::ClientConnection::new(Arc::new(client_cfg), name).expect("client");
            let sock = std::net::TcpStream::connect(addr).expect("connect");
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut s = rustls::StreamOwned::new(conn, sock);
            s.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("request");
            let mut got = Vec::new();
            // A clean end (close_notify) reads as Ok(0); a truncation fails.
            s.read_to_end(&mut got).expect("a clean end");
            got
        });

        let expected = body.clone();
        rt.block_on(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut s = DirectTlsStream::accept(tcp, server_cfg)
                .await
                .expect("handshake");
            let mut head = Vec::new();
            let mut buf = [0u8; 64];
            while !head.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).await.expect("read");
                assert!(n > 0, "the request ended early");
                head.extend_from_slice(&buf[..n]);
            }
            assert_eq!(head, b"GET / HTTP/1.1\r\n\r\n");
            for chunk in body.chunks(100_003) {
                s.write_all(chunk).await.expect("write");
            }
            s.shutdown().await.expect("shutdown");
        });
        assert!(client.join().expect("client") == expected);
    }
}
