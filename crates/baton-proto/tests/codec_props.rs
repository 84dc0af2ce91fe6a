//! Property tests of the control-channel codec: round trips (unsealed and
//! sealed) and "never panics" on arbitrary input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4};

use baton_proto::auth::{
    BackHandshake, BackStep, EphemeralKey, FrontHandshake, Opener, Psk, Sealer,
};
use baton_proto::{
    FlowKey, Frame, FrameLimits, Handoff, LoadReport, MirrorFlow, MirrorRef, RepairWindow,
    TcpState, MAX_HINT, MIRROR_CHUNK,
};
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

fn flow() -> impl Strategy<Value = FlowKey> {
    (any::<u32>(), any::<u16>(), any::<u32>(), any::<u16>()).prop_map(|(c, cp, v, vp)| FlowKey {
        client: SocketAddrV4::new(Ipv4Addr::from(c), cp),
        vip: SocketAddrV4::new(Ipv4Addr::from(v), vp),
    })
}

fn tcp_state() -> impl Strategy<Value = TcpState> {
    (
        (
            any::<u32>(),
            any::<u32>(),
            any::<u16>(),
            any::<[bool; 3]>(),
            any::<u8>(),
            any::<u8>(),
            any::<u32>(),
        ),
        any::<[u32; 5]>(),
    )
        .prop_map(
            |((snd_seq, rcv_seq, mss, [w, t, s], snd_wscale, rcv_wscale, ts_val), win)| TcpState {
                snd_seq,
                rcv_seq,
                mss,
                wscale_ok: w,
                snd_wscale,
                rcv_wscale,
                timestamps_ok: t,
                sack_ok: s,
                ts_val,
                window: RepairWindow {
                    snd_wl1: win[0],
                    snd_wnd: win[1],
                    max_window: win[2],
                    rcv_wnd: win[3],
                    rcv_wup: win[4],
                },
            },
        )
}

/// Strings within the default string limit (longer ones are truncated by
/// design, which a round trip would not preserve).
fn reason() -> impl Strategy<Value = String> {
    ".{0,200}".prop_filter("within the string limit", |s| {
        s.len() <= FrameLimits::default().max_string_len
    })
}

/// A front's address as a back-end names it: IPv4, or IPv6 that is not
/// an IPv4-mapped address (those decode as IPv4 by design).
fn origin() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<u128>()
            .prop_map(Ipv6Addr::from)
            .prop_filter("not IPv4-mapped", |a| a.to_ipv4_mapped().is_none())
            .prop_map(IpAddr::V6),
    ]
}

fn hint() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..=MAX_HINT).prop_map(Bytes::from)
}

fn mirrored() -> impl Strategy<Value = MirrorFlow> {
    (origin(), any::<u64>(), flow(), hint()).prop_map(|(origin, id, flow, hint)| MirrorFlow {
        origin,
        id,
        flow,
        hint,
    })
}

fn mirror_ref() -> impl Strategy<Value = MirrorRef> {
    (origin(), any::<u64>(), flow()).prop_map(|(origin, id, flow)| MirrorRef { origin, id, flow })
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            (any::<u64>(), flow(), tcp_state()),
            proptest::collection::vec(any::<u8>(), 0..2048),
            proptest::collection::vec(any::<u8>(), 0..512),
            proptest::collection::vec(any::<u8>(), 0..256),
            hint(),
        )
            .prop_map(|((id, flow, state), data, sent, tls, hint)| Frame::Handoff(
                Handoff {
                    id,
                    flow,
                    state,
                    data: Bytes::from(data),
                    sent: Bytes::from(sent),
                    tls: Bytes::from(tls),
                    hint,
                }
            )),
        proptest::collection::vec(mirrored(), 0..16).prop_map(|flows| Frame::Mirror { flows }),
        proptest::collection::vec(mirror_ref(), 0..16).prop_map(|flows| Frame::Unmirror { flows }),
        (proptest::collection::vec(mirrored(), 0..16), any::<bool>())
            .prop_map(|(flows, done)| Frame::Mirroring { flows, done }),
        (any::<u64>(), any::<u32>()).prop_map(|(id, restore_us)| Frame::Live { id, restore_us }),
        (any::<u64>(), reason(), any::<bool>()).prop_map(|(id, reason, backend_fault)| {
            Frame::Refused {
                id,
                reason,
                backend_fault,
            }
        }),
        any::<u64>().prop_map(|id| Frame::Abort { id }),
        (
            proptest::collection::vec(any::<u64>(), 0..64),
            any::<bool>()
        )
            .prop_map(|(ids, done)| Frame::Holding { ids, done }),
        (any::<u64>(), flow()).prop_map(|(id, flow)| Frame::Closed { id, flow }),
        (any::<u32>(), any::<u64>())
            .prop_map(|(active, total)| Frame::Load(LoadReport { active, total })),
        any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
        reason().prop_map(|reason| Frame::Goodbye { reason }),
    ]
}

/// A completed in-memory handshake: (front sealer, back opener).
fn channel(eph_f: [u8; 32], eph_b: [u8; 32]) -> (Sealer, Opener) {
    let key = Psk::new(b"property-test pre-shared key").expect("long enough");
    let (mut front, hello) = FrontHandshake::start(key.clone(), EphemeralKey::from_bytes(eph_f));
    let mut back = BackHandshake::new(key, EphemeralKey::from_bytes(eph_b));
    let Ok(BackStep::Send(challenge)) = back.handle(&mut BytesMut::from(&hello[..])) else {
        panic!("back refused the hello");
    };
    let Ok(Some(done)) = front.handle(&mut BytesMut::from(&challenge[..])) else {
        panic!("front refused the challenge");
    };
    let Ok(BackStep::Done { opener, .. }) = back.handle(&mut BytesMut::from(&done.proof[..]))
    else {
        panic!("back refused the proof");
    };
    (done.sealer, opener)
}

/// Feeds `wire` to `step` in chunks cut at `cuts`, collecting what comes out.
fn feed_in_chunks<T, E: std::fmt::Debug>(
    wire: &[u8],
    cuts: &[usize],
    mut step: impl FnMut(&mut BytesMut) -> Result<Option<T>, E>,
) -> Vec<T> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.push(wire.len());
    points.sort_unstable();
    let (mut buf, mut out, mut at) = (BytesMut::new(), Vec::new(), 0);
    for p in points {
        buf.extend_from_slice(&wire[at..p]);
        at = p;
        while let Some(item) = step(&mut buf).expect("valid stream") {
            out.push(item);
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    out
}

proptest! {
    #[test]
    fn unsealed_round_trip_at_any_chunking(
        frames in proptest::collection::vec(frame(), 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let limits = FrameLimits::default();
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&limits, &mut wire).expect("fits");
        }
        let decoded = feed_in_chunks(&wire, &cuts, |buf| Frame::decode(buf, &limits));
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn sealed_round_trip_at_any_chunking(
        frames in proptest::collection::vec(frame(), 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        eph_f in any::<[u8; 32]>(),
        eph_b in any::<[u8; 32]>(),
    ) {
        let (mut sealer, mut opener) = channel(eph_f, eph_b);
        let mut wire = BytesMut::new();
        for f in &frames {
            sealer.seal(f, &mut wire).expect("fits");
        }
        let decoded = feed_in_chunks(&wire, &cuts, |buf| opener.open(buf));
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn unsealed_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let small = FrameLimits { max_frame_len: 256, max_string_len: 16 };
        for limits in [FrameLimits::default(), small] {
            let mut buf = BytesMut::from(&bytes[..]);
            // Bounded: each Ok(Some) consumes at least five bytes.
            while let Ok(Some(frame)) = Frame::decode(&mut buf, &limits) {
                // Whatever decodes re-encodes to a frame that decodes the same.
                let mut again = BytesMut::new();
                frame.encode(&limits, &mut again).expect("decoded frames fit");
                prop_assert_eq!(Frame::decode(&mut again, &limits), Ok(Some(frame)));
            }
        }
    }

    #[test]
    fn structured_garbage_never_panics(ty in 0u8..=15, body in proptest::collection::vec(any::<u8>(), 0..128)) {
        // A valid length prefix and type byte get the body parser exercised.
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(body.len() as u32 + 1).to_be_bytes());
        buf.extend_from_slice(&[ty]);
        buf.extend_from_slice(&body);
        let result = Frame::decode(&mut buf, &FrameLimits::default());
        prop_assert!(!matches!(result, Ok(None)));
    }

    /// Mirror frames whose claimed count or hint lengths lie: an error,
    /// never a panic or an allocation of the claimed size.
    #[test]
    fn lying_mirror_counts_and_hints_are_refused(
        ty in 12u8..=14,
        count in any::<u32>(),
        hint_len in any::<u16>(),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut body = Vec::new();
        if ty == 14 {
            body.push(1);
        }
        body.extend_from_slice(&count.to_be_bytes());
        body.extend_from_slice(&[0; 36]);
        body.extend_from_slice(&hint_len.to_be_bytes());
        body.extend_from_slice(&tail);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(body.len() as u32 + 1).to_be_bytes());
        buf.extend_from_slice(&[ty]);
        buf.extend_from_slice(&body);
        match Frame::decode(&mut buf, &FrameLimits::default()) {
            Ok(Some(Frame::Mirror { flows } | Frame::Mirroring { flows, .. })) => {
                prop_assert!(flows.len() <= 1 && flows.iter().all(|m| m.hint.len() <= MAX_HINT));
            }
            Ok(Some(Frame::Unmirror { flows })) => prop_assert!(flows.len() <= MIRROR_CHUNK),
            Ok(other) => prop_assert!(false, "{other:?}"),
            Err(_) => {}
        }
    }

    #[test]
    fn opener_and_handshakes_never_panic_and_never_accept_garbage(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let (_, mut opener) = channel([1; 32], [2; 32]);
        let mut buf = BytesMut::from(&bytes[..]);
        // Forging a 16-byte tag by chance is out of reach.
        prop_assert!(!matches!(opener.open(&mut buf), Ok(Some(_))));

        let key = Psk::new([9u8; 32]).expect("long enough");
        let (mut front, _) = FrontHandshake::start(key.clone(), EphemeralKey::from_bytes([1; 32]));
        prop_assert!(!matches!(front.handle(&mut BytesMut::from(&bytes[..])), Ok(Some(_))));
        let mut back = BackHandshake::new(key, EphemeralKey::from_bytes([2; 32]));
        let mut buf = BytesMut::from(&bytes[..]);
        for _ in 0..3 {
            match back.handle(&mut buf) {
                Ok(BackStep::Done { .. }) => prop_assert!(false, "garbage completed the handshake"),
                Ok(BackStep::Send(_)) => {}
                _ => break,
            }
        }
    }
}
