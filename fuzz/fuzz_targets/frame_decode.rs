//! The control-channel decoders (unsealed frames, sealed frames, handshake
//! messages) on arbitrary bytes: no panic, whatever decodes re-encodes to the
//! same frame, and nothing unauthenticated gets through.
#![no_main]

use std::sync::OnceLock;

use baton_proto::auth::{BackHandshake, BackStep, EphemeralKey, FrontHandshake, Opener, Psk};
use baton_proto::{Frame, FrameLimits};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fn psk() -> Psk {
    Psk::new([7u8; 32]).expect("long enough")
}

/// The back's opener of a channel whose handshake ran in memory (once: the
/// X25519 operations would dominate each run).
fn back_opener() -> Opener {
    static OPENER: OnceLock<Opener> = OnceLock::new();
    OPENER.get_or_init(handshake).clone()
}

fn handshake() -> Opener {
    let (mut front, hello) = FrontHandshake::start(psk(), EphemeralKey::from_bytes([1; 32]));
    let mut back = BackHandshake::new(psk(), EphemeralKey::from_bytes([2; 32]));
    let Ok(BackStep::Send(challenge)) = back.handle(&mut BytesMut::from(&hello[..])) else {
        panic!("valid hello refused");
    };
    let Ok(Some(done)) = front.handle(&mut BytesMut::from(&challenge[..])) else {
        panic!("valid challenge refused");
    };
    let Ok(BackStep::Done { opener, .. }) = back.handle(&mut BytesMut::from(&done.proof[..]))
    else {
        panic!("valid proof refused");
    };
    opener
}

fuzz_target!(|data: &[u8]| {
    let small = FrameLimits {
        max_frame_len: 512,
        max_string_len: 16,
    };
    for limits in [FrameLimits::default(), small] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(frame)) = Frame::decode(&mut buf, &limits) {
            let mut again = BytesMut::new();
            frame
                .encode(&limits, &mut again)
                .expect("a decoded frame fits its own limits");
            assert_eq!(Frame::decode(&mut again, &limits), Ok(Some(frame)));
            assert!(again.is_empty());
        }
    }

    let mut sealed = BytesMut::from(data);
    assert!(
        !matches!(back_opener().open(&mut sealed), Ok(Some(_))),
        "forged tag accepted"
    );

    let (mut front, _) = FrontHandshake::start(psk(), EphemeralKey::from_bytes([1; 32]));
    assert!(
        !matches!(front.handle(&mut BytesMut::from(data)), Ok(Some(_))),
        "forged challenge accepted"
    );
    let mut back = BackHandshake::new(psk(), EphemeralKey::from_bytes([2; 32]));
    let mut buf = BytesMut::from(data);
    for _ in 0..3 {
        match back.handle(&mut buf) {
            Ok(BackStep::Send(_)) => {}
            Ok(BackStep::Done { .. }) => panic!("forged proof accepted"),
            _ => break,
        }
    }
});
