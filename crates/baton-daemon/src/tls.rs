//! The front-end's TLS: the rustls configuration built from `[tls]`, the
//! handshake and request head read so that nothing is left half-read inside
//! rustls, and the session's secrets taken out for the handoff.
//!
//! # Why whole records
//!
//! rustls' buffered reader takes whatever bytes it is given; a record split
//! across two reads waits inside it, and `dangerous_extract_secrets` does not
//! look there. The front therefore keeps its own input buffer and gives
//! rustls only whole records, one at a time, and stops as soon as the request
//! head is complete. What it read beyond the last record it fed (the next
//! records, a partial one) is still ciphertext: it travels as TCP data (the
//! restored socket's receive queue), and the back-end decrypts it.
//!
//! # What the back-end gets
//!
//! The protocol version and suite, both directions' key, IV and next record
//! sequence number (`dangerous_extract_secrets`), and for TLS 1.3 both
//! traffic secrets, so the back-end can answer a KeyUpdate. rustls hands the
//! traffic secrets out only through its key log. Each connection gets its
//! own key log ([`ConnSecrets`], in its own copy of the configuration, which
//! shares everything else, session cache included), so no connection can
//! see, take or overwrite another's secrets, whatever its ClientHello looks
//! like; they are wiped when the connection ends.
//!
//! The session tickets rustls writes after the handshake may not be
//! acknowledged yet at the handoff: the dump carries the send queue, so the
//! handoff never waits for the client.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use baton_proto::{parse_request_head, HeadLimits, RequestHead};
use baton_tls::{Carried, Direction, SessionState, Suite, Version};
use bytes::{Bytes, BytesMut};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ResolvesServerCertUsingSni};
use rustls::sign::CertifiedKey;
use rustls::{ConnectionTrafficSecrets, ProtocolVersion, ServerConfig, ServerConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use crate::config::TlsConfig;

/// The ALPN protocols offered: the back-ends speak HTTP/1.1 (and 1.0). A
/// client that offers only `h2` gets a `no_application_protocol` alert.
const ALPN: [&[u8]; 2] = [b"http/1.1", b"http/1.0"];

/// TLS record header: type, version, length.
const HEADER: usize = 5;
/// The largest record a peer may send (TLS 1.2's ciphertext bound; TLS 1.3's
/// is smaller).
const MAX_RECORD: usize = HEADER + (1 << 14) + 2048;

/// A certificate that expires within this is reported with a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// The front's TLS configuration, ready to accept connections.
#[derive(Debug)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    /// Connections holding TLS 1.3 traffic secrets now.
    held: Arc<AtomicUsize>,
    session_cache: usize,
    /// One line per certificate: name, subject, expiry.
    pub certificates: Vec<String>,
    /// Certificates that expire soon.
    pub warnings: Vec<String>,
}

impl ServerTls {
    /// Reads, matches and dates every certificate and key of `[tls]`; any
    /// problem is an error naming the file.
    pub fn load(cfg: &TlsConfig) -> Result<ServerTls> {
        Self::load_keeping(cfg, None)
    }

    /// [`ServerTls::load`] for a reload: the resumable sessions of `prev`
    /// stay valid when the cache size is the same (a certificate renewal
    /// does not make every returning client do a full handshake).
    pub fn load_keeping(cfg: &TlsConfig, prev: Option<&ServerTls>) -> Result<ServerTls> {
        // ring: no C toolchain needed. It offers no post-quantum key
        // exchange (rustls deprecates it for that); clients fall back to X25519.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut warnings = Vec::new();
        let mut certificates = Vec::new();
        let default = load_pair(&cfg.cert, &cfg.key, &provider, &mut warnings)
            .with_context(|| format!("certificate {}", cfg.cert.display()))?;
        certificates.push(format!("default: {}", describe(&default)));
        let mut by_name = HashMap::new();
        for s in &cfg.sni {
            let ck = load_pair(&s.cert, &s.key, &provider, &mut warnings)
                .with_context(|| format!("[[tls.sni]] {}: {}", s.name, s.cert.display()))?;
            // rustls' own check: a valid DNS name that the certificate covers.
            let mut check = ResolvesServerCertUsingSni::new();
            check.add(&s.name, ck.clone()).map_err(|e| {
                anyhow::anyhow!(
                    "[[tls.sni]] {}: {} does not cover this name ({e})",
                    s.name,
                    s.cert.display()
                )
            })?;
            let name = s.name.to_ascii_lowercase();
            certificates.push(format!("{name}: {}", describe(&ck)));
            ensure!(
                by_name.insert(name, Arc::new(ck)).is_none(),
                "[[tls.sni]] {} is listed twice",
                s.name
            );
        }
        let resolver = Arc::new(Resolver {
            by_name,
            default: Arc::new(default),
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS versions")?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        config.enable_secret_extraction = true;
        config.session_storage = match prev {
            Some(p) if p.session_cache == cfg.session_cache => {
                Arc::clone(&p.config.session_storage)
            }
            _ if cfg.session_cache == 0 => Arc::new(rustls::server::NoServerSessionStorage {}),
            _ => rustls::server::ServerSessionMemoryCache::new(cfg.session_cache),
        };
        config.send_tls13_tickets = cfg.tickets;
        // No early data: a replayable request must not reach a back-end.
        config.max_early_data_size = 0;
        Ok(ServerTls {
            config: Arc::new(config),
            held: Arc::default(),
            session_cache: cfg.session_cache,
            certificates,
            warnings,
        })
    }

    /// A new server-side session, with its own key log (see the module
    /// doc).
    pub fn session(&self) -> std::result::Result<Session, rustls::Error> {
        let secrets = Arc::new(ConnSecrets {
            traffic: Mutex::default(),
            held: Arc::clone(&self.held),
            counted: std::sync::atomic::AtomicBool::new(false),
        });
        let mut config = ServerConfig::clone(&self.config);
        config.key_log = Arc::clone(&secrets) as Arc<dyn rustls::KeyLog>;
        Ok(Session {
            conn: ServerConnection::new(Arc::new(config))?,
            secrets,
        })
    }

    /// Connections holding TLS 1.3 traffic secrets now (for stats and
    /// tests: with no handshake in progress it must be 0).
    pub fn secrets_held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// A connection's rustls session and its key log.
#[derive(Debug)]
pub struct Session {
    pub conn: ServerConnection,
    secrets: Arc<ConnSecrets>,
}

fn describe(ck: &CertifiedKey) -> String {
    let Some(leaf) = ck.cert.first() else {
        return "empty chain".into();
    };
    match x509_parser::parse_x509_certificate(leaf) {
        Ok((_, c)) => format!(
            "{} (expires {})",
            c.subject(),
            c.validity().not_after.to_datetime()
        ),
        Err(e) => format!("unparsable ({e})"),
    }
}

fn load_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
    warnings: &mut Vec<String>,
) -> Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let Some(leaf) = chain.first() else {
        bail!("{} holds no certificate", cert.display());
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| anyhow::anyhow!("{}: not an X.509 certificate ({e})", cert.display()))?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let validity = parsed.validity();
    let (from, to) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    ensure!(
        now >= from,
        "{} is not valid before {}",
        cert.display(),
        validity.not_before.to_datetime()
    );
    ensure!(
        now <= to,
        "{} expired on {}",
        cert.display(),
        validity.not_after.to_datetime()
    );
    if to - now < EXPIRY_WARNING.as_secs() as i64 {
        warnings.push(format!(
            "{} expires on {}",
            cert.display(),
            validity.not_after.to_datetime()
        ));
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("reading the private key {}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, der, provider).map_err(|e| {
        anyhow::anyhow!(
            "{} and {} do not belong together ({e})",
            cert.display(),
            key.display()
        )
    })
}

/// Picks the certificate by SNI, else the default.
#[derive(Debug)]
struct Resolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let by_sni = hello
            .server_name()
            .and_then(|n| self.by_name.get(&n.to_ascii_lowercase()));
        Some(Arc::clone(by_sni.unwrap_or(&self.default)))
    }
}

/// Both TLS 1.3 application traffic secrets of one handshake.
#[derive(Default)]
struct Traffic {
    client: Zeroizing<Vec<u8>>,
    server: Zeroizing<Vec<u8>>,
}

/// One connection's key log: keeps the two TLS 1.3 application traffic
/// secrets (nothing else) until [`extract`] takes them or the connection
/// ends; wiped either way.
pub struct ConnSecrets {
    traffic: Mutex<Traffic>,
    held: Arc<AtomicUsize>,
    counted: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for ConnSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnSecrets")
    }
}

impl ConnSecrets {
    fn take(&self) -> Traffic {
        std::mem::take(&mut *self.traffic.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for ConnSecrets {
    fn drop(&mut self) {
        if self.counted.load(Ordering::Relaxed) {
            self.held.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl rustls::KeyLog for ConnSecrets {
    fn will_log(&self, label: &str) -> bool {
        matches!(label, "CLIENT_TRAFFIC_SECRET_0" | "SERVER_TRAFFIC_SECRET_0")
    }

    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let mut t = self.traffic.lock().unwrap_or_else(|e| e.into_inner());
        let slot = match label {
            "CLIENT_TRAFFIC_SECRET_0" => &mut t.client,
            "SERVER_TRAFFIC_SECRET_0" => &mut t.server,
            // rustls' TLS 1.2 code logs without asking `will_log` first.
            _ => return,
        };
        *slot = Zeroizing::new(secret.to_vec());
        if !self.counted.swap(true, Ordering::Relaxed) {
            self.held.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A request read over TLS; the session is still in rustls.
#[derive(Debug)]
pub struct Request {
    pub head: RequestHead,
    /// The server name the client asked for (SNI), lower case.
    pub sni: Option<String>,
    /// Application data decrypted so far: the head and what followed it in
    /// its records.
    pub plaintext: Vec<u8>,
    /// Bytes read from the socket and not given to rustls: whole or partial
    /// records after the head.
    pub ciphertext: Vec<u8>,
}

/// Why no request could be read.
#[derive(Debug)]
pub enum Failure {
    /// The client closed or reset before a whole request.
    Closed,
    /// Plain HTTP on the TLS port (the front answered 400 in plain text).
    PlainHttp,
    /// The handshake failed (rustls sent the alert, if any).
    Handshake(String),
    /// A malformed head: answer `status` over TLS.
    Bad(u16, String),
}

/// The length of the whole record at the front of `buf`, if all of it is
/// there.
fn whole_record(buf: &[u8]) -> Option<usize> {
    let len = usize::from(u16::from_be_bytes([*buf.get(3)?, *buf.get(4)?]));
    let total = HEADER + len;
    (buf.len() >= total).then_some(total)
}

/// Whether the first bytes look like plain HTTP (an upper-case method and a
/// space) rather than a TLS record.
fn looks_like_http(buf: &[u8]) -> bool {
    let method_len = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
    (3..=7).contains(&method_len) && buf.get(method_len) == Some(&b' ')
}

/// Runs the handshake and reads the request head, feeding rustls whole
/// records only, and writing every byte rustls produces (the handshake
/// flight, alerts, session tickets) before returning.
pub async fn read_request(
    io: &mut TcpStream,
    sc: &mut ServerConnection,
    limits: &HeadLimits,
) -> std::result::Result<Request, Failure> {
    let mut inbuf = BytesMut::with_capacity(4096);
    let mut plaintext = Vec::new();
    let mut out = Vec::new();
    let mut fed_any = false;
    loop {
        while let Some(n) = whole_record(&inbuf) {
            let record = inbuf.split_to(n);
            fed_any = true;
            let mut rest = &record[..];
            while !rest.is_empty() {
                if let Err(e) = sc.read_tls(&mut rest) {
                    return Err(Failure::Handshake(e.to_string()));
                }
                let state = sc.process_new_packets();
                // Alerts included: write what rustls has to say.
                flush(io, sc, &mut out).await?;
                let state = state.map_err(|e| Failure::Handshake(e.to_string()))?;
                let want = state.plaintext_bytes_to_read();
                if want > 0 {
                    let at = plaintext.len();
                    plaintext.resize(at + want, 0);
                    let got = sc
                        .reader()
                        .read(&mut plaintext[at..])
                        .map_err(|e| Failure::Handshake(e.to_string()))?;
                    plaintext.truncate(at + got);
                }
            }
            if sc.is_handshaking() || plaintext.is_empty() {
                continue;
            }
            match parse_request_head(&plaintext, limits) {
                Ok(Some(head)) => {
                    return Ok(Request {
                        head,
                        sni: sc.server_name().map(str::to_ascii_lowercase),
                        plaintext,
                        ciphertext: inbuf.to_vec(),
                    })
                }
                Ok(None) => {}
                Err(e) => return Err(Failure::Bad(e.status(), e.to_string())),
            }
        }
        if inbuf.len() >= HEADER && whole_record(&inbuf).is_none() {
            let len = usize::from(u16::from_be_bytes([inbuf[3], inbuf[4]]));
            if HEADER + len > MAX_RECORD {
                if looks_like_http(&inbuf) {
                    let _ = io.write_all(PLAIN_HTTP_ANSWER).await;
                    let _ = io.shutdown().await;
                    return Err(Failure::PlainHttp);
                }
                return Err(Failure::Handshake("record too large".into()));
            }
        }
        inbuf.reserve(4096);
        match io.read_buf(&mut inbuf).await {
            Ok(0) | Err(_) => return Err(Failure::Closed),
            Ok(_) => {}
        }
        if !fed_any {
            // A TLS connection starts with a handshake record (type 22).
            // Anything else is not TLS: plain HTTP gets its readable 400 at
            // once, whatever its method looks like, rather than the wait for
            // a "record" as long as its third and fourth bytes say.
            let printable = |b: &u8| b.is_ascii_graphic() || b.is_ascii_whitespace();
            if looks_like_http(&inbuf)
                || (inbuf.first().is_some_and(|&b| b != 22) && inbuf.iter().take(16).all(printable))
            {
                let _ = io.write_all(PLAIN_HTTP_ANSWER).await;
                let _ = io.shutdown().await;
                return Err(Failure::PlainHttp);
            }
            if inbuf.first().is_some_and(|&b| b != 22) {
                return Err(Failure::Handshake("not a TLS handshake record".into()));
            }
        }
    }
}

/// nginx's answer to plain HTTP on an HTTPS port, in our words.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\nContent-Length: 41\r\nConnection: close\r\n\r\n\
This port speaks HTTPS, not plain HTTP.\r\n";

/// Writes everything rustls has queued.
async fn flush(
    io: &mut TcpStream,
    sc: &mut ServerConnection,
    out: &mut Vec<u8>,
) -> std::result::Result<(), Failure> {
    while sc.wants_write() {
        out.clear();
        if sc.write_tls(out).is_err() {
            return Err(Failure::Closed);
        }
        io.write_all(out).await.map_err(|_| Failure::Closed)?;
    }
    Ok(())
}

/// Answers `status` over the session (before its secrets were taken out),
/// with close_notify, and closes.
pub async fn answer(io: &mut TcpStream, mut sc: ServerConnection, status: u16) {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let body = baton_proto::http::error_response(status, reason);
    if sc.writer().write_all(&body).is_err() {
        return;
    }
    sc.send_close_notify();
    let mut out = Vec::new();
    if flush(io, &mut sc, &mut out).await.is_ok() {
        // Lingering: closing with the client's bytes unread would send a
        // reset, and its kernel could drop the answer unread.
        let _ = baton_serve::Lingering::new(&mut *io).shutdown().await;
    }
}

/// Takes the session out of rustls for the handoff: keys, IVs, sequence
/// numbers, TLS 1.3 traffic secrets, and the plaintext read so far.
pub fn extract(session: Session, req: &Request) -> std::result::Result<Carried, String> {
    let Session { conn: sc, secrets } = session;
    if sc.wants_write() {
        return Err("rustls still has bytes to write".into());
    }
    let version = match sc.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => Version::Tls13,
        Some(ProtocolVersion::TLSv1_2) => Version::Tls12,
        other => return Err(format!("unsupported protocol version {other:?}")),
    };
    let traffic = secrets.take();
    if version == Version::Tls13 && (traffic.client.is_empty() || traffic.server.is_empty()) {
        return Err("the TLS 1.3 traffic secrets were not logged".into());
    }
    let ex = sc
        .dangerous_extract_secrets()
        .map_err(|e| format!("extracting the session secrets: {e}"))?;
    let (suite, rx) = direction(ex.rx, traffic.client.to_vec())?;
    let (tx_suite, tx) = direction(ex.tx, traffic.server.to_vec())?;
    // The log's copies are wiped here; `Direction` wipes its own.
    drop(traffic);
    if suite != tx_suite {
        return Err("the two directions use different suites".into());
    }
    let state = SessionState {
        version,
        suite,
        rx,
        tx,
    };
    state.validate().map_err(|e| e.to_string())?;
    Ok(Carried {
        state,
        plaintext: Bytes::copy_from_slice(&req.plaintext),
    })
}

fn direction(
    (seq, secrets): (u64, ConnectionTrafficSecrets),
    secret: Vec<u8>,
) -> std::result::Result<(Suite, Direction), String> {
    let (suite, key, iv) = match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Suite::Aes128Gcm, key, iv),
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Suite::Aes256Gcm, key, iv),
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            (Suite::Chacha20Poly1305, key, iv)
        }
        _ => return Err("an AEAD this back-end cannot continue".into()),
    };
    let iv: [u8; 12] = iv
        .as_ref()
        .try_into()
        .map_err(|_| "an IV that is not 12 bytes".to_string())?;
    Ok((
        suite,
        Direction {
            key: key.as_ref().to_vec(),
            iv,
            seq,
            secret,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_records_are_found() {
        assert_eq!(whole_record(&[22, 3, 1, 0]), None);
        assert_eq!(whole_record(&[22, 3, 1, 0, 2, 9]), None);
        assert_eq!(whole_record(&[22, 3, 1, 0, 2, 9, 9, 7]), Some(7));
    }

    #[test]
    fn plain_http_is_recognised() {
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"OPTIONS * HTTP/1.1\r\n"));
        assert!(!looks_like_http(&[22, 3, 1, 2, 0]));
        assert!(!looks_like_http(b"get / HTTP/1.1"));
    }
}
