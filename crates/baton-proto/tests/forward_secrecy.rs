//! What a recording of a control channel gives an attacker who later learns
//! the pre-shared key: nothing of the frames.
//!
//! The test records both directions of a session that hands off a
//! connection carrying a recognizable secret, then plays an attacker who
//! holds the PSK and every byte on the wire. The attacker's derivation is
//! written here from the key schedule documented in `baton_proto::auth`,
//! independently of the implementation: given the real X25519 shared secret
//! (which only the two ephemeral secrets give) it opens every frame, which
//! shows the attack code is right; with every value it can compute from the
//! wire and the PSK in place of that secret, it opens nothing.

use std::net::{Ipv4Addr, SocketAddrV4};

use baton_proto::auth::{BackHandshake, BackStep, EphemeralKey, FrontHandshake, Psk};
use baton_proto::{FlowKey, Frame, Handoff, LoadReport, RepairWindow, TcpState};
use bytes::{Bytes, BytesMut};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use x25519_dalek::{x25519, X25519_BASEPOINT_BYTES};

const PSK: &[u8] = b"the cluster key, leaked a year later";
/// What the front hands over: think of a TLS session's traffic secret.
const SECRET: &[u8] = b"TLS13-TRAFFIC-SECRET:5f1e0c7a9b3d2e4f6a8c0e1d3b5a7c9e";
/// The two ephemeral secrets, as the daemons would draw them from the
/// CSPRNG. The attacker never sees them.
const FRONT_EPHEMERAL: [u8; 32] = [0xa7; 32];
const BACK_EPHEMERAL: [u8; 32] = [0x3c; 32];

/// Both directions of one session, as a tap on the segment saw them.
struct Recording {
    to_back: Vec<u8>,
    to_front: Vec<u8>,
}

fn handoff() -> Frame {
    Frame::Handoff(Handoff {
        id: 42,
        flow: FlowKey {
            client: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 51234),
            vip: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 443),
        },
        state: TcpState {
            snd_seq: 1,
            rcv_seq: 2,
            mss: 1460,
            wscale_ok: false,
            snd_wscale: 0,
            rcv_wscale: 0,
            timestamps_ok: false,
            sack_ok: false,
            ts_val: 0,
            window: RepairWindow::default(),
        },
        data: Bytes::new(),
        sent: Bytes::new(),
        // Where a TLS session's keys travel.
        tls: Bytes::from_static(SECRET),
        hint: Bytes::new(),
    })
}

fn record_session(
    front_ephemeral: [u8; 32],
    back_ephemeral: [u8; 32],
) -> (Recording, Vec<Frame>, Vec<Frame>) {
    let psk = Psk::new(PSK).expect("long enough");
    let (mut front, hello) =
        FrontHandshake::start(psk.clone(), EphemeralKey::from_bytes(front_ephemeral));
    let mut back = BackHandshake::new(psk, EphemeralKey::from_bytes(back_ephemeral));
    let mut rec = Recording {
        to_back: hello.clone(),
        to_front: Vec::new(),
    };
    let Ok(BackStep::Send(challenge)) = back.handle(&mut BytesMut::from(&hello[..])) else {
        panic!("hello refused");
    };
    rec.to_front.extend_from_slice(&challenge);
    let done = front
        .handle(&mut BytesMut::from(&challenge[..]))
        .expect("challenge ok")
        .expect("complete");
    rec.to_back.extend_from_slice(&done.proof);
    let Ok(BackStep::Done {
        sealer: mut back_sealer,
        opener: mut back_opener,
    }) = back.handle(&mut BytesMut::from(&done.proof[..]))
    else {
        panic!("proof refused");
    };
    let (mut front_sealer, mut front_opener) = (done.sealer, done.opener);

    let sent_to_back = vec![handoff(), Frame::Ping { nonce: 7 }, Frame::Abort { id: 3 }];
    let sent_to_front = vec![
        Frame::Live {
            id: 42,
            restore_us: 35,
        },
        Frame::Load(LoadReport {
            active: 1,
            total: 1,
        }),
        Frame::Pong { nonce: 7 },
    ];
    let mut wire = BytesMut::new();
    for f in &sent_to_back {
        front_sealer.seal(f, &mut wire).expect("fits");
    }
    rec.to_back.extend_from_slice(&wire);
    // The session works: the back reads what the front sent.
    for f in &sent_to_back {
        assert_eq!(back_opener.open(&mut wire).as_ref(), Ok(&Some(f.clone())));
    }
    let mut wire = BytesMut::new();
    for f in &sent_to_front {
        back_sealer.seal(f, &mut wire).expect("fits");
    }
    rec.to_front.extend_from_slice(&wire);
    for f in &sent_to_front {
        assert_eq!(front_opener.open(&mut wire).as_ref(), Ok(&Some(f.clone())));
    }
    (rec, sent_to_back, sent_to_front)
}

/// The handshake as seen on the wire.
struct Observed {
    hello_msg: Vec<u8>,
    chal_head: Vec<u8>,
    e_f: [u8; 32],
    e_b: [u8; 32],
    proof_b: Vec<u8>,
    proof_f: Vec<u8>,
    /// The sealed frames behind the handshake, prefix included.
    frames_to_back: Vec<Vec<u8>>,
    frames_to_front: Vec<Vec<u8>>,
}

fn messages(mut stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while stream.len() >= 4 {
        let len = u32::from_be_bytes(stream[..4].try_into().expect("4 bytes")) as usize;
        out.push(stream[..4 + len].to_vec());
        stream = &stream[4 + len..];
    }
    assert!(stream.is_empty());
    out
}

fn observe(rec: &Recording) -> Observed {
    let to_back = messages(&rec.to_back);
    let to_front = messages(&rec.to_front);
    let (hello, proof) = (&to_back[0], &to_back[1]);
    let challenge = &to_front[0];
    Observed {
        hello_msg: hello[4..].to_vec(),
        chal_head: challenge[4..39].to_vec(),
        e_f: hello[7..39].try_into().expect("32 bytes"),
        e_b: challenge[7..39].try_into().expect("32 bytes"),
        proof_b: challenge[39..].to_vec(),
        proof_f: proof[5..].to_vec(),
        frames_to_back: to_back[2..].to_vec(),
        frames_to_front: to_front[1..].to_vec(),
    }
}

/// The documented key schedule, from `psk` and a candidate `dh`.
struct Derived {
    proof_b: [u8; 32],
    proof_f: [u8; 32],
    k_f2b: [u8; 32],
    k_b2f: [u8; 32],
}

fn transcript(o: &Observed) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"baton control channel v3")
        .chain_update(&o.hello_msg)
        .chain_update(&o.chal_head)
        .finalize()
        .into()
}

fn derive(salt: Option<&[u8]>, ikm: &[u8]) -> Derived {
    let hk = Hkdf::<Sha256>::new(salt, ikm);
    let expand = |info: &[u8]| {
        let mut out = [0u8; 32];
        hk.expand(info, &mut out).expect("32 bytes");
        out
    };
    Derived {
        proof_b: expand(b"baton v3 back proof"),
        proof_f: expand(b"baton v3 front proof"),
        k_f2b: expand(b"baton v3 key f2b"),
        k_b2f: expand(b"baton v3 key b2f"),
    }
}

fn derive_from_dh(o: &Observed, psk: &[u8], dh: &[u8; 32]) -> Derived {
    derive(Some(&transcript(o)), &[psk, dh].concat())
}

/// Opens sealed frame number `seq` with `key` as documented.
fn open(key: &[u8; 32], seq: u64, sealed: &[u8]) -> Option<Vec<u8>> {
    let (prefix, rest) = sealed.split_at(4);
    let (ciphertext, tag) = rest.split_at(rest.len() - 16);
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&seq.to_be_bytes());
    let mut plain = ciphertext.to_vec();
    ChaCha20Poly1305::new(Key::from_slice(key))
        .decrypt_in_place_detached(
            &Nonce::from(nonce),
            prefix,
            &mut plain,
            Tag::from_slice(tag),
        )
        .ok()?;
    Some(plain)
}

/// Whether `keys` open any recorded frame, in either direction, under any
/// sequence number up to the number of frames recorded.
fn opens_anything(o: &Observed, k_f2b: &[u8; 32], k_b2f: &[u8; 32]) -> bool {
    let n = o.frames_to_back.len().max(o.frames_to_front.len()) as u64;
    let all = o.frames_to_back.iter().chain(&o.frames_to_front);
    all.clone()
        .any(|f| (0..n).any(|seq| [k_f2b, k_b2f].iter().any(|k| open(k, seq, f).is_some())))
}

fn decode_plain(plain: Vec<u8>) -> Frame {
    let mut framed = BytesMut::from(&(plain.len() as u32).to_be_bytes()[..]);
    framed.extend_from_slice(&plain);
    Frame::decode(&mut framed, &Default::default())
        .expect("valid frame")
        .expect("complete")
}

#[test]
fn the_documented_schedule_with_the_ephemeral_secrets_opens_the_session() {
    // The two endpoints compute the same X25519 secret, and the independent
    // derivation reproduces the proofs on the wire and opens every frame:
    // the implementation follows its documentation.
    let (rec, to_back, to_front) = record_session(FRONT_EPHEMERAL, BACK_EPHEMERAL);
    let o = observe(&rec);
    let dh = x25519(FRONT_EPHEMERAL, o.e_b);
    assert_eq!(dh, x25519(BACK_EPHEMERAL, o.e_f));
    assert_eq!(o.e_f, x25519(FRONT_EPHEMERAL, X25519_BASEPOINT_BYTES));
    let keys = derive_from_dh(&o, PSK, &dh);
    assert_eq!(&keys.proof_b[..], &o.proof_b[..]);
    assert_eq!(&keys.proof_f[..], &o.proof_f[..]);
    for (seq, (sealed, sent)) in o.frames_to_back.iter().zip(&to_back).enumerate() {
        let plain = open(&keys.k_f2b, seq as u64, sealed).expect("opens");
        assert_eq!(&decode_plain(plain), sent);
    }
    for (seq, (sealed, sent)) in o.frames_to_front.iter().zip(&to_front).enumerate() {
        let plain = open(&keys.k_b2f, seq as u64, sealed).expect("opens");
        assert_eq!(&decode_plain(plain), sent);
    }
}

#[test]
fn a_recording_plus_the_leaked_psk_reveals_no_frame() {
    let (rec, _, _) = record_session(FRONT_EPHEMERAL, BACK_EPHEMERAL);

    // 1. The secret is not on the wire, not even in part.
    let on_wire = [&rec.to_back[..], &rec.to_front[..]].concat();
    for window in SECRET.windows(8) {
        assert!(
            !on_wire.windows(8).any(|w| w == window),
            "plaintext {:?} appears in the recording",
            String::from_utf8_lossy(window)
        );
    }

    // 2. The attacker knows the PSK and every byte recorded. It tries the
    //    documented derivation with every value it can compute in place of
    //    the X25519 secret, and the PSK (and the handshake values) directly
    //    as keys. Nothing opens a frame.
    let o = observe(&rec);
    let th = transcript(&o);
    let mut scalars: Vec<[u8; 32]> = vec![
        o.e_f,
        o.e_b,
        th,
        o.proof_b.clone().try_into().expect("32 bytes"),
        o.proof_f.clone().try_into().expect("32 bytes"),
        PSK[..32].try_into().expect("32 bytes"),
        Sha256::digest(PSK).into(),
        [0; 32],
        [1; 32],
    ];
    // What the old, unencrypted protocol derived from the key (HMAC of the
    // PSK over labels and the public values).
    scalars.push(derive(None, PSK).k_f2b);
    let mut dh_candidates: Vec<[u8; 32]> = vec![[0; 32], o.e_f, o.e_b, th];
    for s in &scalars {
        dh_candidates.push(*s);
        // s·e_f, s·e_b, s·G: every "shared secret" the attacker can make.
        dh_candidates.push(x25519(*s, o.e_f));
        dh_candidates.push(x25519(*s, o.e_b));
        dh_candidates.push(x25519(*s, X25519_BASEPOINT_BYTES));
    }
    let mut tried = 0;
    for dh in &dh_candidates {
        for derived in [
            derive_from_dh(&o, PSK, dh),
            derive(None, &[PSK, dh].concat()),
            derive(Some(&th), dh),
        ] {
            tried += 1;
            assert!(
                !opens_anything(&o, &derived.k_f2b, &derived.k_b2f),
                "a frame opened without the ephemeral secrets (candidate {})",
                hex::encode(dh)
            );
            assert_ne!(&derived.proof_b[..], &o.proof_b[..]);
        }
    }
    for (salt, ikm) in [(None, PSK), (Some(&th[..]), PSK)] {
        let derived = derive(salt, ikm);
        assert!(!opens_anything(&o, &derived.k_f2b, &derived.k_b2f));
    }
    for raw in &scalars {
        assert!(!opens_anything(&o, raw, raw));
    }
    assert!(tried > 100, "{tried} derivations tried");

    // 3. Control: the same attack code with the secret only the ephemeral
    //    keys give opens everything. What the attacker lacks is exactly that.
    let real = derive_from_dh(&o, PSK, &x25519(BACK_EPHEMERAL, o.e_f));
    assert!(opens_anything(&o, &real.k_f2b, &real.k_b2f));
    let first = open(&real.k_f2b, 0, &o.frames_to_back[0]).expect("opens");
    assert!(first.windows(SECRET.len()).any(|w| w == SECRET));
}

#[test]
fn two_sessions_with_the_same_psk_share_no_keys() {
    // Same PSK, fresh ephemeral keys: one session's keys (say, extracted
    // from a compromised process) open none of another session's frames.
    let (first, _, _) = record_session(FRONT_EPHEMERAL, BACK_EPHEMERAL);
    let (second, _, _) = record_session([0x55; 32], [0x66; 32]);
    let (o1, o2) = (observe(&first), observe(&second));
    let k1 = derive_from_dh(&o1, PSK, &x25519(FRONT_EPHEMERAL, o1.e_b));
    assert!(opens_anything(&o1, &k1.k_f2b, &k1.k_b2f));
    assert!(!opens_anything(&o2, &k1.k_f2b, &k1.k_b2f));
    assert_ne!(first.to_back[..], second.to_back[..]);
}
