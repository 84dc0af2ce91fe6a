//! Seeds for the `tls_record` fuzz target (`fuzz/corpus/tls_record/` at the repository root):
//! valid client flights under the target's fixed keys, one file per mode and case, each
//! starting with the mode byte. Regenerate with
//! `cargo test -p baton-tls --test fuzz_seeds -- --ignored`.

use std::path::PathBuf;

use baton_tls::{Direction, RecordLayer, SessionState, Suite, Version};
use bytes::BytesMut;

/// Must match `fuzz/fuzz_targets/tls_record.rs`.
const MODES: [(Version, Suite); 6] = [
    (Version::Tls13, Suite::Aes128Gcm),
    (Version::Tls13, Suite::Aes256Gcm),
    (Version::Tls13, Suite::Chacha20Poly1305),
    (Version::Tls12, Suite::Aes128Gcm),
    (Version::Tls12, Suite::Aes256Gcm),
    (Version::Tls12, Suite::Chacha20Poly1305),
];

/// Must match `fuzz/fuzz_targets/tls_record.rs`.
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

/// The client's side: the server's state with the directions swapped.
fn client(version: Version, suite: Suite) -> RecordLayer {
    let s = state(version, suite);
    RecordLayer::new(&SessionState {
        version,
        suite,
        rx: s.tx.clone(),
        tx: s.rx.clone(),
    })
    .expect("valid")
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: baton.test\r\n\r\n";

fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (mode, &(version, suite)) in MODES.iter().enumerate() {
        let name = |case: &str| format!("{mode}_{version:?}_{suite:?}_{case}").to_lowercase();
        let flight = |f: &dyn Fn(&mut RecordLayer, &mut BytesMut)| {
            let mut c = client(version, suite);
            let mut wire = BytesMut::new();
            wire.extend_from_slice(&[mode as u8]);
            f(&mut c, &mut wire);
            wire.to_vec()
        };
        out.push((
            name("request"),
            flight(&|c, w| c.write(REQUEST, w).expect("seals")),
        ));
        out.push((
            name("two_records"),
            flight(&|c, w| c.write(&[b'a'; 20000], w).expect("seals")),
        ));
        out.push((
            name("close"),
            flight(&|c, w| {
                c.write(REQUEST, w).expect("seals");
                c.close_notify(w);
            }),
        ));
        out.push((name("fatal_alert"), flight(&|c, w| c.send_alert(40, w))));
        out.push((
            name("partial"),
            flight(&|c, w| {
                c.write(REQUEST, w).expect("seals");
                w.truncate(w.len() - 3);
            }),
        ));
        if version == Version::Tls13 {
            out.push((
                name("key_update"),
                flight(&|c, w| {
                    c.write(b"before", w).expect("seals");
                    c.update_keys(true, w).expect("1.3");
                    c.write(b"after", w).expect("seals");
                }),
            ));
        }
    }
    out
}

#[test]
fn seeds_are_what_the_fuzz_target_accepts() {
    for (name, seed) in seeds() {
        let (version, suite) = MODES[usize::from(seed[0])];
        let mut server = RecordLayer::new(&state(version, suite)).expect("valid");
        let mut input = BytesMut::from(&seed[1..]);
        let mut plain = BytesMut::new();
        let result = server.read(&mut input, &mut plain);
        if name.ends_with("fatal_alert") {
            assert_eq!(result, Err(baton_tls::TlsError::PeerAlert(40)), "{name}");
        } else {
            let st = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(st.records > 0, !name.ends_with("partial"), "{name}");
        }
    }
}

#[test]
#[ignore = "writes the fuzz corpus; run by hand when the record format or fixed keys change"]
fn write_seed_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/tls_record");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    for (name, seed) in seeds() {
        std::fs::write(dir.join(name), seed).expect("write seed");
    }
}
