//! Unit tests of the record layer against a mirrored layer playing the client (same keys,
//! directions swapped), which can also seal records no well-behaved client would send.

use super::*;
use proptest::prelude::*;

const VERSIONS: [Version; 2] = [Version::Tls13, Version::Tls12];
const SUITES: [Suite; 3] = [Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::Chacha20Poly1305];

fn direction(version: Version, suite: Suite, fill: u8, seq: u64) -> Direction {
    match version {
        Version::Tls13 => {
            let secret = vec![fill; suite.secret_len()];
            let (key, iv) = derive_key_iv(suite, &secret).expect("derives");
            Direction {
                key: key.to_vec(),
                iv: *iv,
                seq,
                secret,
            }
        }
        Version::Tls12 => Direction {
            key: vec![fill; suite.key_len()],
            iv: [fill.wrapping_add(1); 12],
            seq,
            secret: Vec::new(),
        },
    }
}

fn state(version: Version, suite: Suite) -> SessionState {
    SessionState {
        version,
        suite,
        rx: direction(version, suite, 0x11, 3),
        tx: direction(version, suite, 0x22, 7),
    }
}

fn mirror_of(s: &SessionState) -> SessionState {
    SessionState {
        version: s.version,
        suite: s.suite,
        rx: s.tx.clone(),
        tx: s.rx.clone(),
    }
}

/// (server, client) for a state.
fn pair_from(s: &SessionState) -> (RecordLayer, RecordLayer) {
    (
        RecordLayer::new(s).expect("server"),
        RecordLayer::new(&mirror_of(s)).expect("client"),
    )
}

fn pair(version: Version, suite: Suite) -> (RecordLayer, RecordLayer) {
    pair_from(&state(version, suite))
}

fn all() -> impl Iterator<Item = (Version, Suite)> {
    VERSIONS
        .into_iter()
        .flat_map(|v| SUITES.into_iter().map(move |s| (v, s)))
}

/// Client seals one record of `content_type` around `data`.
fn craft(client: &mut RecordLayer, content_type: u8, data: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    client
        .seal_record(content_type, data, &mut out)
        .expect("seals");
    out
}

fn read_all(layer: &mut RecordLayer, bytes: &[u8]) -> Result<(Vec<u8>, ReadStatus), TlsError> {
    let mut input = BytesMut::from(bytes);
    let mut plain = BytesMut::new();
    let st = layer.read(&mut input, &mut plain)?;
    Ok((plain.to_vec(), st))
}

/// The fatal alert the server queued, as the client reads it.
fn pending_alert(server: &mut RecordLayer, client: &mut RecordLayer) -> Option<u8> {
    let mut out = BytesMut::new();
    server.take_pending(&mut out);
    match read_all(client, &out) {
        Err(TlsError::PeerAlert(a)) => Some(a),
        Ok(_) => None,
        Err(e) => panic!("client could not read the alert: {e}"),
    }
}

#[test]
fn round_trips_every_size_in_every_mode() {
    for (v, s) in all() {
        let (mut server, mut client) = pair(v, s);
        for len in [0usize, 1, 255, 16383, 16384, 16385, 40000] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut wire = BytesMut::new();
            server.write(&data, &mut wire).expect("seals");
            let records = len.div_ceil(MAX_PLAINTEXT);
            let (got, st) = read_all(&mut client, &wire).expect("opens");
            assert_eq!(got, data);
            assert_eq!(st.records, records);
            let mut wire = BytesMut::new();
            client.write(&data, &mut wire).expect("seals");
            let (got, _) = read_all(&mut server, &wire).expect("opens");
            assert_eq!(got, data);
        }
    }
}

#[test]
fn record_framing_matches_each_version() {
    for (v, s) in all() {
        let st = state(v, s);
        let (mut server, _) = pair_from(&st);
        let mut wire = BytesMut::new();
        server.write(b"abc", &mut wire).expect("seals");
        let len = usize::from(u16::from_be_bytes([wire[3], wire[4]]));
        assert_eq!(&wire[1..3], &[3, 3]);
        assert_eq!(wire.len(), HEADER_LEN + len);
        match (v, s) {
            (Version::Tls13, _) => {
                assert_eq!(wire[0], CT_APPLICATION_DATA);
                assert_eq!(len, 3 + 1 + TAG_LEN);
            }
            (Version::Tls12, Suite::Chacha20Poly1305) => {
                assert_eq!(wire[0], CT_APPLICATION_DATA);
                assert_eq!(len, 3 + TAG_LEN);
            }
            (Version::Tls12, _) => {
                assert_eq!(wire[0], CT_APPLICATION_DATA);
                assert_eq!(len, GCM_EXPLICIT_LEN + 3 + TAG_LEN);
                // The explicit nonce is the IV's low 8 bytes XOR the sequence number, as rustls
                // sends it.
                let mut want = [0u8; 8];
                for (i, b) in want.iter_mut().enumerate() {
                    *b = st.tx.iv[4 + i] ^ st.tx.seq.to_be_bytes()[i];
                }
                assert_eq!(&wire[5..13], &want);
            }
        }
    }
}

#[test]
fn a_truncated_record_stays_buffered_until_whole() {
    for (v, s) in all() {
        let (mut server, mut client) = pair(v, s);
        let mut wire = BytesMut::new();
        client.write(b"hello there", &mut wire).expect("seals");
        for cut in 0..wire.len() {
            let mut input = BytesMut::from(&wire[..cut]);
            let mut plain = BytesMut::new();
            let st = server.read(&mut input, &mut plain).expect("just waits");
            assert_eq!(st, ReadStatus::default());
            assert_eq!(&input[..], &wire[..cut]);
            assert!(plain.is_empty());
        }
        assert_eq!(server.rx_seq(), 3, "nothing consumed");
        let (got, _) = read_all(&mut server, &wire).expect("opens");
        assert_eq!(got, b"hello there");
    }
}

#[test]
fn any_flipped_bit_is_refused() {
    for (v, s) in all() {
        let (_, mut client) = pair(v, s);
        let mut wire = BytesMut::new();
        client.write(b"GET / HTTP/1.1", &mut wire).expect("seals");
        for i in 0..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= 0x01;
            let (mut server, _) = pair(v, s);
            let mut input = bad;
            let mut plain = BytesMut::new();
            match server.read(&mut input, &mut plain) {
                Err(_) => {}
                // A longer length field: the record now looks partial.
                Ok(st) => assert!(st.records == 0 && (i == 3 || i == 4), "byte {i} accepted"),
            }
            assert!(plain.is_empty());
        }
        // The body and tag are authenticated: bad_record_mac, answered with the alert.
        let (mut server, mut client) = pair(v, s);
        let mut bad = wire.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        assert_eq!(read_all(&mut server, &bad), Err(TlsError::BadRecordMac));
        assert_eq!(
            pending_alert(&mut server, &mut client),
            Some(alert::BAD_RECORD_MAC)
        );
        // The layer is finished.
        assert_eq!(read_all(&mut server, &wire), Err(TlsError::BadRecordMac));
        let mut out = BytesMut::new();
        assert_eq!(server.write(b"x", &mut out), Err(TlsError::BadRecordMac));
        assert!(out.is_empty());
    }
}

#[test]
fn empty_application_data_records_are_legal() {
    for (v, s) in all() {
        let (mut server, mut client) = pair(v, s);
        let mut wire = craft(&mut client, CT_APPLICATION_DATA, b"");
        wire.extend_from_slice(&craft(&mut client, CT_APPLICATION_DATA, b"x"));
        let (got, st) = read_all(&mut server, &wire).expect("legal");
        assert_eq!(got, b"x");
        assert_eq!(st.records, 2);
    }
}

#[test]
fn tls13_padding_is_stripped_and_a_typeless_record_refused() {
    for s in SUITES {
        let (mut server, mut client) = pair(Version::Tls13, s);
        // Inner plaintext "hi" || 23 || six zeros of padding.
        let wire = craft(&mut client, 0, b"hi\x17\0\0\0\0\0");
        let (got, _) = read_all(&mut server, &wire).expect("padding is fine");
        assert_eq!(got, b"hi");
        // Only zeros: no content type.
        let wire = craft(&mut client, 0, b"\0\0\0");
        assert!(matches!(
            read_all(&mut server, &wire),
            Err(TlsError::Protocol(_))
        ));
        assert_eq!(
            pending_alert(&mut server, &mut client),
            Some(alert::UNEXPECTED_MESSAGE)
        );
        // Zero-length inner plaintext (a bare tag).
        let (mut server, client) = pair(Version::Tls13, s);
        let mut wire = BytesMut::new();
        let nonce = client.tx.nonce();
        let header = [CT_APPLICATION_DATA, 3, 3, 0, TAG_LEN as u8];
        let tag = client
            .tx
            .cipher
            .seal(&nonce, &header, &mut [])
            .expect("seals");
        wire.extend_from_slice(&header);
        wire.extend_from_slice(&tag);
        assert!(matches!(
            read_all(&mut server, &wire),
            Err(TlsError::Protocol(_))
        ));
    }
}

#[test]
fn change_cipher_spec_after_the_handshake_is_refused() {
    for (v, s) in all() {
        let (mut server, _) = pair(v, s);
        let plain_ccs = [CT_CHANGE_CIPHER_SPEC, 3, 3, 0, 1, 1];
        assert!(matches!(
            read_all(&mut server, &plain_ccs),
            Err(TlsError::Protocol(_))
        ));
    }
    for s in SUITES {
        let (mut server, mut client) = pair(Version::Tls13, s);
        let wire = craft(&mut client, CT_CHANGE_CIPHER_SPEC, &[1]);
        assert!(matches!(
            read_all(&mut server, &wire),
            Err(TlsError::Protocol(_))
        ));
    }
}

#[test]
fn unknown_and_unprotected_record_types_are_refused() {
    for (v, s) in all() {
        let (mut server, _) = pair(v, s);
        assert!(matches!(
            read_all(&mut server, &[0x42, 3, 3, 0, 1, 0]),
            Err(TlsError::Protocol(_))
        ));
    }
    let (mut server, _) = pair(Version::Tls13, Suite::Aes128Gcm);
    assert!(matches!(
        read_all(&mut server, &[CT_ALERT, 3, 3, 0, 2, 1, 0]),
        Err(TlsError::Protocol(_))
    ));
    let (mut server, _) = pair(Version::Tls12, Suite::Aes128Gcm);
    assert!(matches!(
        read_all(&mut server, &[CT_APPLICATION_DATA, 3, 1, 0, 1, 0]),
        Err(TlsError::Decode(_))
    ));
}

#[test]
fn oversized_records_are_record_overflow() {
    for (v, s) in all() {
        let (mut server, mut client) = pair(v, s);
        let max = match v {
            Version::Tls13 => MAX_CIPHERTEXT_13,
            Version::Tls12 => MAX_CIPHERTEXT_12,
        };
        // Judged from the header alone, before the body arrives.
        let len = (max + 1) as u16;
        let header = [CT_APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        assert_eq!(
            read_all(&mut server, &header),
            Err(TlsError::RecordOverflow)
        );
        assert_eq!(
            pending_alert(&mut server, &mut client),
            Some(alert::RECORD_OVERFLOW)
        );
        // The largest legal length just waits for its body.
        let (mut server, mut client) = pair(v, s);
        let len = max as u16;
        let header = [CT_APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        assert!(read_all(&mut server, &header).is_ok());
        // A plaintext over 2^14 inside a record that is not too long.
        let wire = craft(
            &mut client,
            CT_APPLICATION_DATA,
            &vec![1u8; MAX_PLAINTEXT + 1],
        );
        assert_eq!(read_all(&mut server, &wire), Err(TlsError::RecordOverflow));
    }
}

#[test]
fn alerts() {
    for (v, s) in all() {
        // close_notify: peer closed, what follows is ignored.
        let (mut server, mut client) = pair(v, s);
        let mut wire = BytesMut::new();
        client.write(b"last", &mut wire).expect("seals");
        client.close_notify(&mut wire);
        wire.extend_from_slice(b"garbage after the close");
        let (got, st) = read_all(&mut server, &wire).expect("fine");
        assert_eq!(got, b"last");
        assert!(st.peer_closed && server.peer_closed());
        assert_eq!(st.records, 2);
        assert!(
            read_all(&mut server, b"more")
                .expect("closed")
                .1
                .peer_closed
        );
        // We can still write after the peer closed.
        let mut out = BytesMut::new();
        server.write(b"still here", &mut out).expect("half close");

        // A fatal alert: PeerAlert, and we do not answer it.
        let (mut server, mut client) = pair(v, s);
        let wire = craft(&mut client, CT_ALERT, &[ALERT_FATAL, 40]);
        assert_eq!(read_all(&mut server, &wire), Err(TlsError::PeerAlert(40)));
        assert!(!server.wants_write());

        // user_canceled as a warning is ignored.
        let (mut server, mut client) = pair(v, s);
        let wire = craft(
            &mut client,
            CT_ALERT,
            &[ALERT_WARNING, alert::USER_CANCELED],
        );
        assert!(read_all(&mut server, &wire).is_ok());

        // Other warnings: ignored in TLS 1.2 (a few), fatal in TLS 1.3.
        let wire = craft(&mut client, CT_ALERT, &[ALERT_WARNING, 42]);
        match v {
            Version::Tls12 => assert!(read_all(&mut server, &wire).is_ok()),
            Version::Tls13 => {
                assert_eq!(read_all(&mut server, &wire), Err(TlsError::PeerAlert(42)))
            }
        }

        // An alert of the wrong length.
        let (mut server, mut client) = pair(v, s);
        let wire = craft(&mut client, CT_ALERT, &[ALERT_FATAL, 40, 0]);
        assert!(matches!(
            read_all(&mut server, &wire),
            Err(TlsError::Decode(_))
        ));
        assert_eq!(
            pending_alert(&mut server, &mut client),
            Some(alert::DECODE_ERROR)
        );
    }
}

#[test]
fn too_many_warnings_in_a_row_fail() {
    let (mut server, mut client) = pair(Version::Tls12, Suite::Aes128Gcm);
    for _ in 0..MAX_WARNINGS_IN_A_ROW {
        let wire = craft(&mut client, CT_ALERT, &[ALERT_WARNING, 42]);
        read_all(&mut server, &wire).expect("tolerated");
    }
    let wire = craft(&mut client, CT_ALERT, &[ALERT_WARNING, 42]);
    assert!(matches!(
        read_all(&mut server, &wire),
        Err(TlsError::Protocol(_))
    ));
}

#[test]
fn handshake_messages_a_client_must_not_send() {
    for s in SUITES {
        // NewSessionTicket only comes from servers.
        let (mut server, mut client) = pair(Version::Tls13, s);
        let wire = craft(&mut client, CT_HANDSHAKE, &[HS_NEW_SESSION_TICKET, 0, 0, 0]);
        assert_eq!(
            read_all(&mut server, &wire),
            Err(TlsError::Protocol("NewSessionTicket from a client"))
        );
        // Nor anything else but KeyUpdate, whole or not.
        let (mut server, mut client) = pair(Version::Tls13, s);
        let wire = craft(&mut client, CT_HANDSHAKE, &[20, 0]);
        assert!(matches!(
            read_all(&mut server, &wire),
            Err(TlsError::Protocol(_))
        ));
        // Empty handshake records.
        let (mut server, mut client) = pair(Version::Tls13, s);
        let wire = craft(&mut client, CT_HANDSHAKE, &[]);
        assert!(matches!(
            read_all(&mut server, &wire),
            Err(TlsError::Protocol(_))
        ));
    }
}

#[test]
fn key_update_from_the_client() {
    for s in SUITES {
        // Not requested: only our receive keys move.
        let (mut server, mut client) = pair(Version::Tls13, s);
        let mut wire = BytesMut::new();
        client.update_keys(false, &mut wire).expect("1.3");
        client.write(b"new keys", &mut wire).expect("seals");
        let (got, _) = read_all(&mut server, &wire).expect("follows");
        assert_eq!(got, b"new keys");
        assert_eq!(server.key_updates(), KeyUpdates { rx: 1, tx: 0 });
        assert!(!server.wants_write());

        // Requested, twice before we answer: one answer, sealed before our send keys move.
        let mut wire = BytesMut::new();
        client.update_keys(true, &mut wire).expect("1.3");
        client.update_keys(true, &mut wire).expect("1.3");
        read_all(&mut server, &wire).expect("follows");
        assert_eq!(server.key_updates(), KeyUpdates { rx: 3, tx: 1 });
        assert!(server.wants_write());
        let mut out = BytesMut::new();
        server.write(b"answer", &mut out).expect("seals");
        assert!(!server.wants_write());
        let (got, _) = read_all(&mut client, &out).expect("client follows");
        assert_eq!(got, b"answer");
        assert_eq!(client.key_updates().rx, 1);

        // Split across records: the header in one, the body in the next.
        let (mut server, mut client) = pair(Version::Tls13, s);
        let mut wire = craft(&mut client, CT_HANDSHAKE, &[HS_KEY_UPDATE, 0]);
        wire.extend_from_slice(&craft(&mut client, CT_HANDSHAKE, &[0, 1, 0]));
        client.tx.update(s).expect("rekeys");
        client.write(b"after", &mut wire).expect("seals");
        let (got, _) = read_all(&mut server, &wire).expect("reassembled");
        assert_eq!(got, b"after");
        assert_eq!(server.key_updates().rx, 1);
    }
}

#[test]
fn malformed_key_updates() {
    let s = Suite::Aes128Gcm;
    let cases: [(&[u8], TlsError); 4] = [
        (
            &[HS_KEY_UPDATE, 0, 0, 1, 2],
            TlsError::IllegalParameter("KeyUpdate request"),
        ),
        (
            &[HS_KEY_UPDATE, 0, 0, 2, 0, 0],
            TlsError::Decode("KeyUpdate of the wrong length"),
        ),
        (
            &[HS_KEY_UPDATE, 0, 0, 1, 0, HS_KEY_UPDATE],
            TlsError::Protocol("handshake data past a key change"),
        ),
        (
            &[HS_KEY_UPDATE, 0, 0, 1, 0, 0],
            TlsError::Protocol("handshake data past a key change"),
        ),
    ];
    for (msg, want) in cases {
        let (mut server, mut client) = pair(Version::Tls13, s);
        let wire = craft(&mut client, CT_HANDSHAKE, msg);
        assert_eq!(read_all(&mut server, &wire), Err(want.clone()));
        assert_eq!(pending_alert(&mut server, &mut client), want.alert());
    }
    // Application data in the middle of a handshake message.
    let (mut server, mut client) = pair(Version::Tls13, s);
    let mut wire = craft(&mut client, CT_HANDSHAKE, &[HS_KEY_UPDATE, 0]);
    wire.extend_from_slice(&craft(&mut client, CT_APPLICATION_DATA, b"x"));
    assert!(matches!(
        read_all(&mut server, &wire),
        Err(TlsError::Protocol(_))
    ));
}

#[test]
fn too_many_key_updates_without_data_fail() {
    let (mut server, mut client) = pair(Version::Tls13, Suite::Chacha20Poly1305);
    let mut wire = BytesMut::new();
    for _ in 0..MAX_KEY_UPDATES_IN_A_ROW {
        client.update_keys(false, &mut wire).expect("1.3");
    }
    read_all(&mut server, &wire).expect("tolerated");
    let mut wire = BytesMut::new();
    client
        .write(b"data resets the count", &mut wire)
        .expect("seals");
    for _ in 0..MAX_KEY_UPDATES_IN_A_ROW {
        client.update_keys(false, &mut wire).expect("1.3");
    }
    read_all(&mut server, &wire).expect("tolerated");
    let mut wire = BytesMut::new();
    client.update_keys(false, &mut wire).expect("1.3");
    assert_eq!(
        read_all(&mut server, &wire),
        Err(TlsError::Protocol("too many KeyUpdates"))
    );
}

#[test]
fn tls12_renegotiation_is_refused_with_a_warning() {
    for s in SUITES {
        let (mut server, mut client) = pair(Version::Tls12, s);
        let hello = [HS_CLIENT_HELLO, 0, 0, 3, 3, 3, 0];
        for _ in 0..MAX_RENEGOTIATIONS_IN_A_ROW {
            let wire = craft(&mut client, CT_HANDSHAKE, &hello);
            let (got, _) = read_all(&mut server, &wire).expect("refused politely");
            assert!(got.is_empty());
            assert!(server.wants_write());
            let mut out = BytesMut::new();
            server.take_pending(&mut out);
            // The client reads a warning it may ignore; the session goes on.
            let (got, st) = read_all(&mut client, &out).expect("a warning");
            assert!(got.is_empty() && !st.peer_closed);
            assert_eq!(out[0], CT_ALERT);
        }
        let wire = craft(&mut client, CT_HANDSHAKE, &hello);
        assert_eq!(
            read_all(&mut server, &wire),
            Err(TlsError::Protocol("repeated renegotiation attempts"))
        );
        // Anything but a whole ClientHello is an error straight away.
        let (mut server, mut client) = pair(Version::Tls12, s);
        let wire = craft(&mut client, CT_HANDSHAKE, &hello[..5]);
        assert!(matches!(
            read_all(&mut server, &wire),
            Err(TlsError::Protocol(_))
        ));
    }
}

#[test]
fn tls12_stops_at_the_aes_gcm_record_limit() {
    for s in [Suite::Aes128Gcm, Suite::Aes256Gcm] {
        let mut st = state(Version::Tls12, s);
        st.tx.seq = AES_GCM_RECORD_LIMIT - 1;
        let (mut server, mut client) = pair_from(&st);
        let mut out = BytesMut::new();
        server
            .write(b"the last one", &mut out)
            .expect("still allowed");
        let (got, _) = read_all(&mut client, &out).expect("opens");
        assert_eq!(got, b"the last one");
        let mut out = BytesMut::new();
        assert_eq!(
            server.write(b"one too many", &mut out),
            Err(TlsError::SequenceLimit)
        );
        // The failure is fatal and says so (internal_error) where a record can still go.
        assert!(out.is_empty());
    }
}

#[test]
fn sequence_numbers_never_wrap() {
    // TLS 1.2 ChaCha20: no AEAD limit, but the sequence number ends.
    let mut st = state(Version::Tls12, Suite::Chacha20Poly1305);
    st.tx.seq = u64::MAX - 1;
    st.rx.seq = u64::MAX - 1;
    let (mut server, mut client) = pair_from(&st);
    let mut out = BytesMut::new();
    server.write(b"last", &mut out).expect("allowed");
    read_all(&mut client, &out).expect("opens");
    assert_eq!(
        server.write(b"wraps", &mut out),
        Err(TlsError::SequenceLimit)
    );
    // The failed write finished the server; the receive side on a fresh one.
    let (mut server, mut client) = pair_from(&st);
    let mut wire = BytesMut::new();
    client.write(b"last", &mut wire).expect("allowed");
    read_all(&mut server, &wire).expect("opens");
    // Our rx is now at u64::MAX: nothing more can be opened.
    assert_eq!(server.rx_seq(), u64::MAX);
    st.rx.seq = u64::MAX;
    let (mut server, _) = pair_from(&st);
    let wire = [CT_APPLICATION_DATA, 3, 3, 0, 16];
    let mut input = BytesMut::from(&wire[..]);
    input.extend_from_slice(&[0u8; 16]);
    let mut plain = BytesMut::new();
    assert_eq!(
        server.read(&mut input, &mut plain),
        Err(TlsError::SequenceLimit)
    );
}

#[test]
fn tls13_rekeys_on_its_own_before_the_limit() {
    let cases = [
        (Suite::Aes128Gcm, TLS13_AES_GCM_REKEY_AT - 1),
        (Suite::Aes256Gcm, TLS13_AES_GCM_REKEY_AT - 1),
        (Suite::Chacha20Poly1305, u64::MAX - 2),
    ];
    for (s, seq) in cases {
        let mut st = state(Version::Tls13, s);
        st.tx.seq = seq;
        let (mut server, mut client) = pair_from(&st);
        let data = vec![9u8; 3 * MAX_PLAINTEXT];
        let mut out = BytesMut::new();
        server
            .write(&data, &mut out)
            .expect("rekeys instead of failing");
        assert_eq!(server.key_updates().tx, 1);
        assert_eq!(server.tx_seq(), 2, "two records after the KeyUpdate");
        let (got, st) = read_all(&mut client, &out).expect("client follows");
        assert_eq!(got, data);
        assert_eq!(st.records, 4);
        assert_eq!(client.key_updates().rx, 1);
        assert!(!client.wants_write(), "our KeyUpdate asks for no answer");
    }
}

#[test]
fn update_keys_and_close_are_ordered_after_pending_output() {
    let (mut server, mut client) = pair(Version::Tls13, Suite::Aes256Gcm);
    let mut wire = BytesMut::new();
    client.update_keys(true, &mut wire).expect("1.3");
    read_all(&mut server, &wire).expect("fine");
    assert!(server.wants_write());
    // Our own update goes after the pending answer, close_notify after both.
    let mut out = BytesMut::new();
    server.update_keys(false, &mut out).expect("1.3");
    server.close_notify(&mut out);
    assert_eq!(server.key_updates().tx, 2);
    let (_, st) = read_all(&mut client, &out).expect("in order");
    assert!(st.peer_closed);
    assert_eq!(client.key_updates().rx, 2);
    // Closed for sending.
    assert_eq!(server.update_keys(true, &mut out), Err(TlsError::Closed));
    let mut out = BytesMut::new();
    server.close_notify(&mut out);
    assert!(out.is_empty(), "one close_notify only");
}

#[test]
fn send_alert_ends_the_session() {
    let (mut server, mut client) = pair(Version::Tls12, Suite::Aes128Gcm);
    let mut out = BytesMut::new();
    server.send_alert(alert::INTERNAL_ERROR, &mut out);
    assert_eq!(read_all(&mut client, &out), Err(TlsError::PeerAlert(80)));
    assert_eq!(server.write(b"x", &mut out), Err(TlsError::Closed));
    let mut plain = BytesMut::new();
    assert_eq!(
        server.read(&mut BytesMut::new(), &mut plain),
        Err(TlsError::Closed)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes never panic: they fail, or wait as a partial record.
    #[test]
    fn arbitrary_input_errors_or_buffers(bytes in proptest::collection::vec(any::<u8>(), 0..2048),
                                         mode in 0usize..6) {
        let (v, s) = all().nth(mode).expect("six modes");
        let (mut server, _) = pair(v, s);
        let mut input = BytesMut::from(&bytes[..]);
        let mut plain = BytesMut::new();
        match server.read(&mut input, &mut plain) {
            Ok(st) => {
                prop_assert_eq!(st.records, 0);
                prop_assert!(plain.is_empty());
                prop_assert_eq!(&input[..], &bytes[..]);
            }
            Err(_) => prop_assert!(plain.is_empty()),
        }
    }

    /// Arbitrary bytes after a valid header and a valid record prefix never panic either.
    #[test]
    fn arbitrary_bodies_under_a_plausible_header(body in proptest::collection::vec(any::<u8>(), 0..600),
                                                 content_type in 20u8..24, mode in 0usize..6) {
        let (v, s) = all().nth(mode).expect("six modes");
        let (mut server, _) = pair(v, s);
        let mut input = BytesMut::new();
        input.put_u8(content_type);
        input.put_u16(0x0303);
        input.put_u16(body.len() as u16);
        input.extend_from_slice(&body);
        let mut plain = BytesMut::new();
        prop_assert!(server.read(&mut input, &mut plain).is_err());
    }

    /// A valid stream cut anywhere decrypts to the same data.
    #[test]
    fn any_split_of_a_valid_stream_reads_the_same(len in 0usize..40000, cuts in proptest::collection::vec(any::<u16>(), 0..8), mode in 0usize..6) {
        let (v, s) = all().nth(mode).expect("six modes");
        let (mut server, mut client) = pair(v, s);
        let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let mut wire = BytesMut::new();
        client.write(&data, &mut wire).expect("seals");
        client.update_keys(true, &mut wire).ok();
        client.write(b"tail", &mut wire).expect("seals");
        let mut points: Vec<usize> = cuts.iter().map(|&c| usize::from(c) % (wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let mut input = BytesMut::new();
        let mut plain = BytesMut::new();
        let mut at = 0;
        for p in points {
            input.extend_from_slice(&wire[at..p]);
            at = p;
            server.read(&mut input, &mut plain).expect("valid");
        }
        prop_assert!(input.is_empty());
        prop_assert_eq!(&plain[..len], &data[..]);
        prop_assert_eq!(&plain[len..], b"tail");
    }
}
