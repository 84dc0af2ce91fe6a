//! The encrypted control channel against an active attacker: a real
//! handshake and session with fixed keys, one of whose messages the fuzzer
//! edits on the way (flip, insert, delete, truncate, replay a prefix).
//! Whatever the edits, the receiving side either fails or gets exactly what
//! was sent: a handshake completes only on the message as sent, and an
//! opener yields only the frames that were sealed, in sealing order.
//!
//! Input: one byte choosing the message (hello, challenge, proof, sealed
//! stream), then edits of four bytes each: op, position (u16), value.
#![no_main]

use std::sync::OnceLock;

use baton_proto::auth::{BackHandshake, BackStep, EphemeralKey, FrontHandshake, Opener, Psk};
use baton_proto::Frame;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fn psk() -> Psk {
    Psk::new([7u8; 32]).expect("long enough")
}

fn front() -> (FrontHandshake, Vec<u8>) {
    FrontHandshake::start(psk(), EphemeralKey::from_bytes([1; 32]))
}

fn back() -> BackHandshake {
    BackHandshake::new(psk(), EphemeralKey::from_bytes([2; 32]))
}

fn sent() -> Vec<Frame> {
    vec![
        Frame::Ping { nonce: 1 },
        Frame::Abort { id: 2 },
        Frame::Goodbye {
            reason: "drain".into(),
        },
    ]
}

/// The messages of one untouched session, and the back's opener.
struct Session {
    hello: Vec<u8>,
    challenge: Vec<u8>,
    proof: Vec<u8>,
    stream: Vec<u8>,
    opener: Opener,
}

fn session() -> &'static Session {
    static SESSION: OnceLock<Session> = OnceLock::new();
    SESSION.get_or_init(|| {
        let (mut f, hello) = front();
        let mut b = back();
        let Ok(BackStep::Send(challenge)) = b.handle(&mut BytesMut::from(&hello[..])) else {
            panic!("valid hello refused");
        };
        let Ok(Some(mut done)) = f.handle(&mut BytesMut::from(&challenge[..])) else {
            panic!("valid challenge refused");
        };
        let Ok(BackStep::Done { opener, .. }) = b.handle(&mut BytesMut::from(&done.proof[..]))
        else {
            panic!("valid proof refused");
        };
        let mut stream = BytesMut::new();
        for frame in sent() {
            done.sealer.seal(&frame, &mut stream).expect("fits");
        }
        Session {
            hello,
            challenge,
            proof: done.proof,
            stream: stream.to_vec(),
            opener,
        }
    })
}

fn edit(original: &[u8], edits: &[u8]) -> Vec<u8> {
    let mut out = original.to_vec();
    for e in edits.chunks_exact(4).take(16) {
        let (op, value) = (e[0], e[3]);
        let pos = usize::from(u16::from_be_bytes([e[1], e[2]])) % (out.len() + 1);
        match op % 5 {
            0 if pos < out.len() => out[pos] ^= value.max(1),
            1 => out.insert(pos, value),
            2 if pos < out.len() => {
                out.remove(pos);
            }
            3 => out.truncate(pos),
            4 => out.extend_from_slice(&original[..pos.min(original.len())]),
            _ => {}
        }
    }
    out
}

/// Feeds `bytes` to a handshake step; returns the bytes the step consumed.
fn consumed<T>(bytes: &[u8], step: impl FnOnce(&mut BytesMut) -> T) -> (T, Vec<u8>) {
    let mut buf = BytesMut::from(bytes);
    let result = step(&mut buf);
    let used = bytes.len() - buf.len();
    (result, bytes[..used].to_vec())
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, edits)) = data.split_first() else {
        return;
    };
    let s = session();
    match which % 4 {
        0 => {
            let hello = edit(&s.hello, edits);
            let mut b = back();
            let (step, used) = consumed(&hello, |buf| b.handle(buf));
            if let Ok(BackStep::Send(challenge)) = step {
                let (mut f, _) = front();
                let done = f.handle(&mut BytesMut::from(&challenge[..]));
                assert!(
                    done.is_err() || used == s.hello,
                    "an edited hello completed the handshake"
                );
            }
        }
        1 => {
            let challenge = edit(&s.challenge, edits);
            let (mut f, _) = front();
            let (done, used) = consumed(&challenge, |buf| f.handle(buf));
            assert!(
                !matches!(done, Ok(Some(_))) || used == s.challenge,
                "an edited challenge was accepted"
            );
        }
        2 => {
            let proof = edit(&s.proof, edits);
            let mut b = back();
            let Ok(BackStep::Send(_)) = b.handle(&mut BytesMut::from(&s.hello[..])) else {
                panic!("valid hello refused");
            };
            let (step, used) = consumed(&proof, |buf| b.handle(buf));
            assert!(
                !matches!(step, Ok(BackStep::Done { .. })) || used == s.proof,
                "an edited proof was accepted"
            );
        }
        _ => {
            let stream = edit(&s.stream, edits);
            let mut opener = s.opener.clone();
            let mut buf = BytesMut::from(&stream[..]);
            let sent = sent();
            let mut i = 0;
            while let Ok(Some(frame)) = opener.open(&mut buf) {
                assert_eq!(
                    sent.get(i),
                    Some(&frame),
                    "frame {i} forged or out of order"
                );
                i += 1;
            }
        }
    }
});
