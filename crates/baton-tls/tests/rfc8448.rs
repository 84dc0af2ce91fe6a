//! Known-answer tests from RFC 8448 ("Example Handshake Traces for TLS 1.3"), section 3
//! ("Simple 1-RTT Handshake"): TLS_AES_128_GCM_SHA256.
//!
//! In that trace the server first sends a NewSessionTicket under its application keys (server
//! record 0), then the client sends application data (client record 0), the server answers
//! with application data (server record 1), and both close with a close_notify alert
//! (client record 1, server record 2). The payload of both application data records is the 50
//! bytes 00 01 .. 31.

use baton_tls::{Direction, RecordLayer, SessionState, Suite, TlsError, Version};
use bytes::BytesMut;

/// Section 3, `{server}  derive secret "tls13 c ap traffic"`.
const CLIENT_AP_SECRET: &str = "9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5";
/// Section 3, `{server}  derive secret "tls13 s ap traffic"`.
const SERVER_AP_SECRET: &str = "a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643";
/// Section 3, `{client}  derive write traffic keys for application data`: key, iv.
const CLIENT_AP_KEY: &str = "17422dda596ed5d9acd890e3c63f5051";
const CLIENT_AP_IV: &str = "5b78923dee08579033e523d9";
/// Section 3, `{server}  derive write traffic keys for application data`: key, iv.
const SERVER_AP_KEY: &str = "9f02283b6c9c07efc26bb9f2ac92e356";
const SERVER_AP_IV: &str = "cf782b88dd83549aadf1e984";

/// Section 3, `{client}  send application_data record`, complete record (72 octets).
const CLIENT_APP_RECORD: &str =
    "17030300 43a23f7054b62c94d0affafe8228ba55cbefacea42f914aa66bcab3f2b\
     9819a8a5b46b395bd54a9a20441e2b62974e1f5a6292a2977014bd1e3deae63aeebb21694915e4";
/// Section 3, `{server}  send application_data record`, complete record (72 octets).
const SERVER_APP_RECORD: &str =
    "17030300 432e937e11ef4ac740e538ad36005fc4a46932fc3225d05f82aa1b36e3\
     0efaf97d90e6dffc602dcb501a59a8fcc49c4bf2e5f0a21c0047c2abf332540dd032e167c2955d";
/// Section 3, `{client}  send alert record`, complete record (24 octets): close_notify.
const CLIENT_ALERT_RECORD: &str = "1703030013c987276065566 6b74d7ff1153efd6db6d0b0e3";
/// Section 3, `{server}  send alert record`, complete record (24 octets): close_notify.
const SERVER_ALERT_RECORD: &str = "1703030013b58fd67166ebf599d24720cfbe7efa7a8864a9";

fn h(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(s).expect("valid hex")
}

fn iv(s: &str) -> [u8; 12] {
    h(s).try_into().expect("12 bytes")
}

fn payload() -> Vec<u8> {
    (0u8..0x32).collect()
}

/// The server's state right after it sent the NewSessionTicket (server seq 1, client seq 0).
fn server_state() -> SessionState {
    SessionState {
        version: Version::Tls13,
        suite: Suite::Aes128Gcm,
        rx: Direction {
            key: h(CLIENT_AP_KEY),
            iv: iv(CLIENT_AP_IV),
            seq: 0,
            secret: h(CLIENT_AP_SECRET),
        },
        tx: Direction {
            key: h(SERVER_AP_KEY),
            iv: iv(SERVER_AP_IV),
            seq: 1,
            secret: h(SERVER_AP_SECRET),
        },
    }
}

#[test]
fn the_traffic_secrets_yield_the_rfc_keys_and_ivs() {
    // RecordLayer::new derives key and iv from each secret and refuses a mismatch.
    RecordLayer::new(&server_state()).expect("RFC keys match their secrets");
    let mut wrong = server_state();
    wrong.rx.iv[0] ^= 1;
    assert!(matches!(
        RecordLayer::new(&wrong),
        Err(TlsError::BadState(_))
    ));
    let mut wrong = server_state();
    wrong.tx.key[15] ^= 1;
    assert!(matches!(
        RecordLayer::new(&wrong),
        Err(TlsError::BadState(_))
    ));
}

#[test]
fn key_and_iv_derivation_matches_the_rfc() {
    for (secret, key, iv_hex) in [
        (CLIENT_AP_SECRET, CLIENT_AP_KEY, CLIENT_AP_IV),
        (SERVER_AP_SECRET, SERVER_AP_KEY, SERVER_AP_IV),
    ] {
        let d = Direction::tls13(Suite::Aes128Gcm, &h(secret), 5).expect("derives");
        assert_eq!(hex::encode(&d.key), key);
        assert_eq!(d.iv, iv(iv_hex));
        assert_eq!(d.seq, 5);
        assert_eq!(d.secret, h(secret));
    }
    assert!(Direction::tls13(Suite::Aes256Gcm, &h(CLIENT_AP_SECRET), 0).is_err());
}

#[test]
fn decrypts_the_clients_records() {
    let mut layer = RecordLayer::new(&server_state()).expect("valid");
    let mut input = BytesMut::from(&h(CLIENT_APP_RECORD)[..]);
    input.extend_from_slice(&h(CLIENT_ALERT_RECORD));
    let mut plain = BytesMut::new();
    let status = layer.read(&mut input, &mut plain).expect("authentic");
    assert_eq!(&plain[..], &payload()[..]);
    assert_eq!(status.records, 2);
    assert_eq!(status.plaintext, 50);
    assert!(status.peer_closed);
    assert_eq!(layer.rx_seq(), 2);
    assert!(input.is_empty());
}

#[test]
fn encrypts_the_servers_records_byte_for_byte() {
    let mut layer = RecordLayer::new(&server_state()).expect("valid");
    let mut out = BytesMut::new();
    layer.write(&payload(), &mut out).expect("seals");
    assert_eq!(hex::encode(&out), hex::encode(h(SERVER_APP_RECORD)));
    out.clear();
    layer.close_notify(&mut out);
    assert_eq!(hex::encode(&out), hex::encode(h(SERVER_ALERT_RECORD)));
    assert_eq!(layer.tx_seq(), 3);
}
