//! The back-end's TLS record layer on arbitrary bytes from a client: no panic; whatever it
//! does not reject stays buffered as less than one record; a failure is final and leaves a
//! fatal alert (or nothing) to send; a closed peer reads nothing more.
//!
//! Input: the first byte picks the version and suite (modulo 6, see `MODES`), the rest is
//! what the client sent. The keys are fixed and must match the seed generator
//! (`cargo test -p baton-tls --test fuzz_seeds -- --ignored`).
#![no_main]

use baton_tls::{Direction, RecordLayer, SessionState, Suite, Version};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

const MODES: [(Version, Suite); 6] = [
    (Version::Tls13, Suite::Aes128Gcm),
    (Version::Tls13, Suite::Aes256Gcm),
    (Version::Tls13, Suite::Chacha20Poly1305),
    (Version::Tls12, Suite::Aes128Gcm),
    (Version::Tls12, Suite::Aes256Gcm),
    (Version::Tls12, Suite::Chacha20Poly1305),
];

/// Client to server: secret 0x11.., server to client: 0x22.. (TLS 1.3); TLS 1.2 keys 0x11..
/// and 0x22.., IVs 0x33.. and 0x44..; the client starts at record 1, the server at 2.
fn state(version: Version, suite: Suite) -> SessionState {
    let dir = |fill: u8, iv: u8, seq: u64| match version {
        Version::Tls13 => {
            Direction::tls13(suite, &vec![fill; suite.secret_len()], seq).expect("fixed secret")
        }
        Version::Tls12 => Direction {
            key: vec![fill; suite.key_len()],
            iv: [iv; 12],
            seq,
            secret: Vec::new(),
        },
    };
    SessionState {
        version,
        suite,
        rx: dir(0x11, 0x33, 1),
        tx: dir(0x22, 0x44, 2),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, sent)) = data.split_first() else {
        return;
    };
    let (version, suite) = MODES[usize::from(mode) % MODES.len()];
    let mut layer = RecordLayer::new(&state(version, suite)).expect("fixed state is valid");
    let mut input = BytesMut::from(sent);
    let mut plain = BytesMut::new();
    match layer.read(&mut input, &mut plain) {
        Ok(status) => {
            assert_eq!(status.plaintext, plain.len());
            if status.peer_closed {
                assert!(input.is_empty(), "bytes after close_notify are dropped");
            } else {
                // Less than a whole record is left; reading again changes nothing.
                let left = input.len();
                let again = layer.read(&mut input, &mut plain).expect("still fine");
                assert_eq!(again.records, 0);
                assert_eq!(input.len(), left);
            }
            let mut out = BytesMut::new();
            layer.take_pending(&mut out);
            layer.write(b"response", &mut out).expect("still writable");
            layer.close_notify(&mut out);
        }
        Err(e) => {
            assert!(layer.error().is_some());
            let mut out = BytesMut::new();
            layer.take_pending(&mut out);
            if e.alert().is_some() {
                assert!(!out.is_empty(), "the fatal alert is pending");
            }
            assert!(layer.read(&mut input, &mut plain).is_err(), "failure is final");
            assert!(layer.write(b"x", &mut out).is_err());
        }
    }
});
