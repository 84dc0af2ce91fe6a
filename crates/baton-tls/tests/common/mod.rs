//! rustls set-up shared by the interop tests: a self-signed certificate made at test time, a
//! client and a server config limited to one version and suite, secret capture through the
//! key log, and the conversion of rustls' extracted secrets into a [`SessionState`] (what the
//! front-end does before a handoff).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use baton_tls::{Direction, SessionState, Suite, Version};
use rustls::crypto::ring::{self as ring_provider, cipher_suite};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, ConnectionTrafficSecrets, ExtractedSecrets, KeyLog,
    RootCertStore, ServerConfig, ServerConnection, SupportedProtocolVersion,
};

pub const VERSIONS: [Version; 2] = [Version::Tls13, Version::Tls12];
pub const SUITES: [Suite; 3] = [Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::Chacha20Poly1305];
pub const SERVER_NAME: &str = "baton.test";

/// Traffic secrets as the key log reports them.
#[derive(Debug, Default)]
pub struct SecretLog(Mutex<Vec<(String, Vec<u8>)>>);

impl KeyLog for SecretLog {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        self.0
            .lock()
            .expect("not poisoned")
            .push((label.to_string(), secret.to_vec()));
    }
}

impl SecretLog {
    pub fn get(&self, label: &str) -> Vec<u8> {
        self.0
            .lock()
            .expect("not poisoned")
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }
}

pub struct Configs {
    pub client: Arc<ClientConfig>,
    pub server: Arc<ServerConfig>,
    pub log: Arc<SecretLog>,
}

/// Configs for one version and suite (TLS 1.2: ECDHE_ECDSA, the certificate being ECDSA P-256).
pub fn configs(version: Version, suite: Suite) -> Configs {
    let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()]).expect("rcgen");
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key: PrivateKeyDer<'static> =
        PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()).into();
    let cs = match (version, suite) {
        (Version::Tls13, Suite::Aes128Gcm) => cipher_suite::TLS13_AES_128_GCM_SHA256,
        (Version::Tls13, Suite::Aes256Gcm) => cipher_suite::TLS13_AES_256_GCM_SHA384,
        (Version::Tls13, Suite::Chacha20Poly1305) => cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        (Version::Tls12, Suite::Aes128Gcm) => cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        (Version::Tls12, Suite::Aes256Gcm) => cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        (Version::Tls12, Suite::Chacha20Poly1305) => {
            cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
    };
    // ring's default provider is deprecated since rustls 0.23.48 (no post-quantum key
    // exchange); the front uses ring too, and key exchange does not matter here.
    #[allow(deprecated)]
    let provider = Arc::new(CryptoProvider {
        cipher_suites: vec![cs],
        ..ring_provider::default_provider()
    });
    let versions: &[&SupportedProtocolVersion] = match version {
        Version::Tls12 => &[&rustls::version::TLS12],
        Version::Tls13 => &[&rustls::version::TLS13],
    };
    let log = Arc::new(SecretLog::default());
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server cert");
    server.enable_secret_extraction = true;
    server.key_log = log.clone();
    let mut roots = RootCertStore::empty();
    roots.add(cert).expect("root");
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Configs {
        client: Arc::new(client),
        server: Arc::new(server),
        log,
    }
}

pub fn new_client(cfg: &Configs) -> ClientConnection {
    let mut c = ClientConnection::new(
        cfg.client.clone(),
        ServerName::try_from(SERVER_NAME).expect("name"),
    )
    .expect("client");
    c.set_buffer_limit(None);
    c
}

fn key_iv(s: ConnectionTrafficSecrets) -> (Suite, Vec<u8>, [u8; 12]) {
    let (suite, key, iv) = match s {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Suite::Aes128Gcm, key, iv),
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Suite::Aes256Gcm, key, iv),
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            (Suite::Chacha20Poly1305, key, iv)
        }
        _ => panic!("unexpected suite"),
    };
    (
        suite,
        key.as_ref().to_vec(),
        iv.as_ref().try_into().expect("12-byte iv"),
    )
}

/// What the front-end does: extracts the server's secrets (after writing out everything it
/// had to send) and fills a [`SessionState`], the TLS 1.3 secrets coming from the key log.
pub fn extract(server: ServerConnection, version: Version, log: &SecretLog) -> SessionState {
    assert!(!server.wants_write(), "flush the server before extracting");
    let secrets: ExtractedSecrets = server.dangerous_extract_secrets().expect("extractable");
    let (suite, rx_key, rx_iv) = key_iv(secrets.rx.1);
    let (_, tx_key, tx_iv) = key_iv(secrets.tx.1);
    let (rx_secret, tx_secret) = match version {
        Version::Tls12 => (Vec::new(), Vec::new()),
        Version::Tls13 => (
            log.get("CLIENT_TRAFFIC_SECRET_0"),
            log.get("SERVER_TRAFFIC_SECRET_0"),
        ),
    };
    SessionState {
        version,
        suite,
        rx: Direction {
            key: rx_key,
            iv: rx_iv,
            seq: secrets.rx.0,
            secret: rx_secret,
        },
        tx: Direction {
            key: tx_key,
            iv: tx_iv,
            seq: secrets.tx.0,
            secret: tx_secret,
        },
    }
}

/// Moves everything `client` wants to send into a buffer.
pub fn client_output(client: &mut ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).expect("write_tls to a Vec");
    }
    out
}

/// Moves everything `server` wants to send into a buffer.
pub fn server_output(server: &mut ServerConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while server.wants_write() {
        server.write_tls(&mut out).expect("write_tls to a Vec");
    }
    out
}

/// Feeds `tls` to the client; returns the plaintext it yields and whether the server closed.
pub fn client_input(client: &mut ClientConnection, mut tls: &[u8]) -> (Vec<u8>, bool) {
    let mut plain = Vec::new();
    let mut closed = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !tls.is_empty() {
            client.read_tls(&mut tls).expect("read_tls");
        }
        client
            .process_new_packets()
            .expect("client accepts our records");
        loop {
            match client.reader().read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => plain.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("client read: {e}"),
            }
        }
        if tls.is_empty() {
            return (plain, closed);
        }
    }
}

/// Feeds `tls` to the server (during the handshake); returns the plaintext it yields.
pub fn server_input(server: &mut ServerConnection, mut tls: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !tls.is_empty() {
        server.read_tls(&mut tls).expect("read_tls");
        server.process_new_packets().expect("server accepts");
        loop {
            match server.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => plain.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("server read: {e}"),
            }
        }
    }
    plain
}

/// Runs a handshake in memory; the client sends `request` as soon as it can. Returns the
/// live client, the session state the front would hand off, and the request as the front
/// decrypted it.
pub fn handshake(
    version: Version,
    suite: Suite,
    request: &[u8],
) -> (ClientConnection, SessionState, Vec<u8>) {
    let cfg = configs(version, suite);
    let mut client = new_client(&cfg);
    let mut server = ServerConnection::new(cfg.server.clone()).expect("server");
    client.writer().write_all(request).expect("buffered");
    let mut got = Vec::new();
    for _ in 0..10 {
        let c = client_output(&mut client);
        got.extend(server_input(&mut server, &c));
        let s = server_output(&mut server);
        let (p, _) = client_input(&mut client, &s);
        assert!(p.is_empty());
        if !client.is_handshaking() && !server.is_handshaking() && got.len() >= request.len() {
            break;
        }
    }
    assert_eq!(got, request);
    assert!(!client.wants_write());
    assert_eq!(
        client.protocol_version(),
        Some(match version {
            Version::Tls12 => rustls::ProtocolVersion::TLSv1_2,
            Version::Tls13 => rustls::ProtocolVersion::TLSv1_3,
        })
    );
    let state = extract(server, version, &cfg.log);
    (client, state, got)
}
