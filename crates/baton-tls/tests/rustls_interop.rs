//! The back-end's [`RecordLayer`] continues sessions that rustls 0.23 established, against
//! the still-live rustls client: every version and suite, application data of many sizes
//! both ways, key updates from either side (TLS 1.3), close_notify both ways.

mod common;

use std::io::Write;

use baton_tls::{RecordLayer, SessionState, Suite, TlsError, Version};
use bytes::BytesMut;
use common::{client_input, client_output, handshake, SUITES, VERSIONS};
use rustls::ClientConnection;

const REQUEST: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: baton.test\r\n\r\n";
const SIZES: [usize; 7] = [0, 1, 100, 16383, 16384, 16385, 1 << 20];

fn data(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

/// The back-end's side, reading what the client sends in awkward pieces (partial records
/// must stay buffered until they are whole).
struct Back {
    layer: RecordLayer,
    input: BytesMut,
}

impl Back {
    fn new(state: &SessionState) -> Back {
        Back {
            layer: RecordLayer::new(state).expect("state from rustls is valid"),
            input: BytesMut::new(),
        }
    }

    fn receive(&mut self, tls: &[u8]) -> (Vec<u8>, bool) {
        let mut plain = BytesMut::new();
        let mut closed = false;
        for piece in tls.chunks(7001) {
            self.input.extend_from_slice(piece);
            let st = self
                .layer
                .read(&mut self.input, &mut plain)
                .expect("authentic");
            closed |= st.peer_closed;
        }
        assert!(
            self.input.is_empty(),
            "a whole flight leaves nothing behind"
        );
        (plain.to_vec(), closed)
    }

    fn send(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        self.layer.write(data, &mut out).expect("seals");
        out.to_vec()
    }
}

fn client_sends(client: &mut ClientConnection, back: &mut Back, msg: &[u8]) {
    client.writer().write_all(msg).expect("buffered");
    let tls = client_output(client);
    let (got, closed) = back.receive(&tls);
    assert!(!closed);
    assert_eq!(got.len(), msg.len());
    assert!(got == msg, "client to server data differs");
}

fn server_sends(client: &mut ClientConnection, back: &mut Back, msg: &[u8]) {
    let tls = back.send(msg);
    if msg.is_empty() {
        assert!(tls.is_empty(), "nothing to send, no record");
    }
    let (got, closed) = client_input(client, &tls);
    assert!(!closed);
    assert_eq!(got.len(), msg.len());
    assert!(got == msg, "server to client data differs");
}

fn exchange_all_sizes(client: &mut ClientConnection, back: &mut Back, salt: u8) {
    for (i, &n) in SIZES.iter().enumerate() {
        client_sends(client, back, &data(n, salt.wrapping_add(i as u8)));
        server_sends(client, back, &data(n, salt.wrapping_add(100 + i as u8)));
    }
}

fn continue_session(version: Version, suite: Suite) {
    let (mut client, state, req) = handshake(version, suite, REQUEST);
    assert_eq!(req, REQUEST);
    let mut back = Back::new(&state);
    assert_eq!(back.layer.version(), version);
    assert_eq!(back.layer.suite(), suite);
    if version == Version::Tls13 {
        // rustls sent its session tickets under the application keys before the handoff.
        assert!(state.tx.seq > 0);
    }

    server_sends(
        &mut client,
        &mut back,
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
    );
    exchange_all_sizes(&mut client, &mut back, 1);

    match version {
        Version::Tls13 => {
            // The client rekeys and asks us to: we answer before our next data record.
            client.refresh_traffic_keys().expect("TLS 1.3");
            client_sends(&mut client, &mut back, b"after the client's key update");
            assert_eq!(back.layer.key_updates().rx, 1);
            assert_eq!(back.layer.key_updates().tx, 1);
            assert_eq!(back.layer.rx_seq(), 1, "the new key starts at 0");
            assert!(back.layer.wants_write());
            server_sends(&mut client, &mut back, b"answered under our new key");
            assert!(!back.layer.wants_write());
            exchange_all_sizes(&mut client, &mut back, 2);

            // We rekey and ask the client to: it answers before its next data record.
            let mut out = BytesMut::new();
            back.layer.update_keys(true, &mut out).expect("TLS 1.3");
            let (got, closed) = client_input(&mut client, &out);
            assert!(got.is_empty() && !closed);
            assert_eq!(back.layer.tx_seq(), 0);
            client_sends(&mut client, &mut back, b"after the server's key update");
            assert_eq!(back.layer.key_updates().rx, 2);
            assert_eq!(back.layer.key_updates().tx, 2);
            assert!(!back.layer.wants_write(), "an answer needs no answer");
            server_sends(&mut client, &mut back, b"both sides on their third keys");

            // And one without asking for an answer.
            let mut out = BytesMut::new();
            back.layer.update_keys(false, &mut out).expect("TLS 1.3");
            let (got, _) = client_input(&mut client, &out);
            assert!(got.is_empty());
            exchange_all_sizes(&mut client, &mut back, 3);
            assert_eq!(back.layer.key_updates().tx, 3);
            assert_eq!(back.layer.key_updates().rx, 2);
        }
        Version::Tls12 => {
            assert!(client.refresh_traffic_keys().is_err());
            let mut out = BytesMut::new();
            assert!(matches!(
                back.layer.update_keys(true, &mut out),
                Err(TlsError::Unsupported(_))
            ));
            assert!(out.is_empty());
            // The refusal did not hurt the session.
            exchange_all_sizes(&mut client, &mut back, 4);
        }
    }

    // The client closes first; we may still send, then close too.
    client.send_close_notify();
    let tls = client_output(&mut client);
    let (got, closed) = back.receive(&tls);
    assert!(got.is_empty() && closed);
    assert!(back.layer.peer_closed());
    server_sends(
        &mut client,
        &mut back,
        b"last words after the client's close",
    );
    let mut out = BytesMut::new();
    back.layer.close_notify(&mut out);
    let (got, closed) = client_input(&mut client, &out);
    assert!(got.is_empty());
    assert!(closed, "the client saw our close_notify");
    assert!(matches!(
        back.layer.write(b"too late", &mut out),
        Err(TlsError::Closed)
    ));
}

macro_rules! interop {
    ($name:ident, $version:expr, $suite:expr) => {
        #[test]
        fn $name() {
            continue_session($version, $suite);
        }
    };
}

interop!(tls13_aes128_gcm, Version::Tls13, Suite::Aes128Gcm);
interop!(tls13_aes256_gcm, Version::Tls13, Suite::Aes256Gcm);
interop!(
    tls13_chacha20_poly1305,
    Version::Tls13,
    Suite::Chacha20Poly1305
);
interop!(
    tls12_ecdhe_ecdsa_aes128_gcm,
    Version::Tls12,
    Suite::Aes128Gcm
);
interop!(
    tls12_ecdhe_ecdsa_aes256_gcm,
    Version::Tls12,
    Suite::Aes256Gcm
);
interop!(
    tls12_ecdhe_ecdsa_chacha20_poly1305,
    Version::Tls12,
    Suite::Chacha20Poly1305
);

#[test]
fn the_server_closes_first() {
    for version in VERSIONS {
        for suite in SUITES {
            let (mut client, state, _) = handshake(version, suite, REQUEST);
            let mut back = Back::new(&state);
            let mut out = BytesMut::new();
            back.layer.write(b"bye", &mut out).expect("seals");
            back.layer.close_notify(&mut out);
            let (got, closed) = client_input(&mut client, &out);
            assert_eq!(got, b"bye");
            assert!(closed);
            // The client may still send until it closes too.
            client_sends(&mut client, &mut back, b"the client's last words");
            client.send_close_notify();
            let tls = client_output(&mut client);
            let (_, closed) = back.receive(&tls);
            assert!(closed);
        }
    }
}

#[test]
fn a_tampered_record_from_rustls_is_bad_record_mac() {
    for version in VERSIONS {
        for suite in SUITES {
            let (mut client, state, _) = handshake(version, suite, REQUEST);
            let mut layer = RecordLayer::new(&state).expect("valid");
            client.writer().write_all(b"important").expect("buffered");
            let mut tls = client_output(&mut client);
            let last = tls.len() - 1;
            tls[last] ^= 0x80;
            let mut input = BytesMut::from(&tls[..]);
            let mut plain = BytesMut::new();
            assert_eq!(
                layer.read(&mut input, &mut plain),
                Err(TlsError::BadRecordMac)
            );
            assert!(plain.is_empty());
            // The bad_record_mac alert is pending, and the client understands it.
            assert!(layer.wants_write());
            let mut out = BytesMut::new();
            layer.take_pending(&mut out);
            client.read_tls(&mut &out[..]).expect("read_tls");
            let err = client.process_new_packets().expect_err("fatal alert");
            assert!(
                format!("{err:?}").contains("BadRecordMac"),
                "client saw {err:?}"
            );
        }
    }
}
