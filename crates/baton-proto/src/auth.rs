//! Mutual authentication of the control channel with a pre-shared key, and
//! per-frame authentication afterwards. Sans-IO: the caller supplies fresh
//! random nonces and moves the bytes.
//!
//! # Handshake
//!
//! Three unsealed messages, each with the same `u32` length prefix as frames
//! (type bytes 0x80..=0x82, so they can never be mistaken for a [`Frame`]):
//!
//! ```text
//! front                                                      back
//!   | Hello     { version, nonce_f }                          |
//!   |-------------------------------------------------------->|
//!   | Challenge { version, nonce_b,                           |
//!   |             proof_b = HMAC(psk, "baton-v1 back"         |
//!   |                            || nonce_f || nonce_b) }     |
//!   |<--------------------------------------------------------|
//!   | (front checks proof_b: no client data ever goes to a     |
//!   |  peer that does not hold the key)                        |
//!   | Proof     { proof_f = HMAC(psk, "baton-v1 front"        |
//!   |                            || nonce_b || nonce_f) }     |
//!   |-------------------------------------------------------->|
//!   |                                     (back checks proof_f)|
//!   |============ sealed frames, both directions ==============|
//! ```
//!
//! The two proofs use different labels, so a proof cannot be reflected back
//! to the side that asked for it. A version mismatch is reported on both
//! sides with both numbers: the back answers a foreign `Hello` with a
//! `Challenge` that carries only its own version (zero nonce and proof), then
//! closes.
//!
//! Each side then derives one key per direction,
//! `k_f2b = HMAC(psk, "baton-v1 f2b" || nonce_f || nonce_b)` and `k_b2f`
//! likewise with `"baton-v1 b2f"`, and every [`Frame`] carries a 16-byte tag:
//! the first 16 bytes of `HMAC(k_dir, seq || type || body)`, where `seq` is a
//! `u64` counting the frames of that direction from 0. `seq` is not sent, so a
//! replayed, reordered, dropped or injected frame fails the next check. Fresh
//! nonces on both sides make every session's keys new, so frames of an old
//! session cannot be replayed into a new one: nonces must come from a CSPRNG.
//!
//! # Driving the state machines
//!
//! Both sides use the "poll before reading" pattern: call `handle` with the
//! receive buffer, and read more bytes only when it says it needs them.
//!
//! ```
//! # use baton_proto::auth::*;
//! # use bytes::BytesMut;
//! let psk = Psk::new(*b"correct horse battery staple")?;
//! let (mut front, hello) = FrontHandshake::start(psk.clone(), [1; 32]);
//! let mut back = BackHandshake::new(psk, [2; 32]);
//!
//! let mut to_back = BytesMut::from(&hello[..]);
//! let BackStep::Send(challenge) = back.handle(&mut to_back)? else { unreachable!() };
//! let mut to_front = BytesMut::from(&challenge[..]);
//! let done = front.handle(&mut to_front)?.expect("challenge was complete");
//! to_back.extend_from_slice(&done.proof);
//! let BackStep::Done { .. } = back.handle(&mut to_back)? else { unreachable!() };
//! # Ok::<(), AuthError>(())
//! ```
//!
//! Bytes left in the buffer after the handshake completes are the first
//! sealed frames (the front may send them right behind its proof): hand the
//! same buffer to the [`Opener`].

use std::fmt;

use bytes::{BufMut, BytesMut};
use hmac::digest::{Key, KeyInit};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

use crate::frame::{self, Frame, FrameLimits, ProtoError, PROTOCOL_VERSION};
use crate::wire::{self, Reader};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the per-frame authentication tag.
pub const TAG_LEN: usize = 16;
/// Bytes of each handshake nonce.
pub const NONCE_LEN: usize = 32;
/// Shortest accepted pre-shared key.
pub const MIN_PSK_LEN: usize = 16;

/// Handshake messages are small; an unauthenticated peer must not be able to
/// make us buffer more than this.
const MAX_HANDSHAKE_LEN: usize = 1024;
const PROOF_LEN: usize = 32;

const TY_HELLO: u8 = 0x80;
const TY_CHALLENGE: u8 = 0x81;
const TY_PROOF: u8 = 0x82;

const LABEL_BACK: &[u8] = b"baton-v1 back";
const LABEL_FRONT: &[u8] = b"baton-v1 front";
const LABEL_F2B: &[u8] = b"baton-v1 f2b";
const LABEL_B2F: &[u8] = b"baton-v1 b2f";

/// Why the handshake failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("pre-shared key has {len} bytes, at least {min} are required")]
    KeyTooShort { len: usize, min: usize },
    #[error("protocol version mismatch: this side speaks version {ours}, the peer speaks version {theirs}")]
    VersionMismatch { ours: u16, theirs: u16 },
    #[error("the {peer}'s proof does not verify: the pre-shared keys differ, or the peer is an impostor")]
    BadProof { peer: &'static str },
    #[error("expected a handshake {expected} message, got message type {got:#04x}")]
    UnexpectedMessage { expected: &'static str, got: u8 },
    #[error("malformed handshake message: {0}")]
    Proto(#[from] ProtoError),
    #[error("the handshake already finished or failed")]
    Finished,
}

/// The pre-shared key both ends of a control channel hold.
#[derive(Clone)]
pub struct Psk {
    mac: HmacSha256,
    len: usize,
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Psk")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Psk {
    /// A key of at least [`MIN_PSK_LEN`] bytes (raw bytes, not text to be
    /// stretched: use a random key, not a password).
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<Psk, AuthError> {
        let bytes = bytes.as_ref();
        if bytes.len() < MIN_PSK_LEN {
            return Err(AuthError::KeyTooShort {
                len: bytes.len(),
                min: MIN_PSK_LEN,
            });
        }
        // HMAC accepts keys of any length, so this never fails.
        let mac =
            <HmacSha256 as KeyInit>::new_from_slice(bytes).map_err(|_| AuthError::KeyTooShort {
                len: bytes.len(),
                min: MIN_PSK_LEN,
            })?;
        Ok(Psk {
            mac,
            len: bytes.len(),
        })
    }

    fn hmac(&self, label: &[u8], a: &[u8; NONCE_LEN], b: &[u8; NONCE_LEN]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(label);
        mac.update(a);
        mac.update(b);
        mac
    }

    fn proof(&self, label: &[u8], a: &[u8; NONCE_LEN], b: &[u8; NONCE_LEN]) -> [u8; PROOF_LEN] {
        self.hmac(label, a, b).finalize().into_bytes().into()
    }

    fn verify(&self, label: &[u8], a: &[u8; NONCE_LEN], b: &[u8; NONCE_LEN], proof: &[u8]) -> bool {
        self.hmac(label, a, b).verify_slice(proof).is_ok()
    }

    /// The keyed MAC of one direction of one session.
    fn direction(
        &self,
        label: &[u8],
        nonce_f: &[u8; NONCE_LEN],
        nonce_b: &[u8; NONCE_LEN],
    ) -> HmacSha256 {
        let derived = self.proof(label, nonce_f, nonce_b);
        // HMAC zero-pads keys shorter than its block to the block size, so
        // the padded 64-byte key is the 32-byte key, without a fallible call.
        let mut key = Key::<HmacSha256>::default();
        for (dst, src) in key.iter_mut().zip(derived) {
            *dst = src;
        }
        <HmacSha256 as KeyInit>::new(&key)
    }
}

/// Seals outgoing frames of one direction. Owned by the writer task.
#[derive(Clone)]
pub struct Sealer {
    mac: HmacSha256,
    seq: u64,
    limits: FrameLimits,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("seq", &self.seq)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// Uses `limits` instead of [`FrameLimits::default`]; they should match
    /// the peer's decoding limits.
    pub fn with_limits(mut self, limits: FrameLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Frames sealed so far.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Appends `frame`, sealed, to `out`.
    ///
    /// Fails only with [`ProtoError::FrameTooLarge`]; then nothing was written
    /// and the sequence number did not advance, so the channel stays usable
    /// (refuse that one handoff).
    pub fn seal(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), ProtoError> {
        let start = out.len();
        frame::encode_with_trailer(frame, &self.limits, TAG_LEN, out)?;
        let mut mac = self.mac.clone();
        mac.update(&self.seq.to_be_bytes());
        mac.update(out.get(start + wire::LEN_PREFIX..).unwrap_or_default());
        let tag = mac.finalize().into_bytes();
        out.put_slice(tag.get(..TAG_LEN).unwrap_or_default());
        // 2^64 frames are out of reach (584 years at 10^9 frames/s).
        self.seq = self.seq.wrapping_add(1);
        Ok(())
    }
}

/// Opens incoming sealed frames of one direction. Owned by the reader task.
///
/// Any error poisons the opener: the stream position or the peer is no
/// longer trustworthy, so the channel must be closed.
#[derive(Clone)]
pub struct Opener {
    mac: HmacSha256,
    seq: u64,
    limits: FrameLimits,
    poisoned: bool,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("seq", &self.seq)
            .field("limits", &self.limits)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Opener {
    /// Uses `limits` instead of [`FrameLimits::default`].
    pub fn with_limits(mut self, limits: FrameLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Frames opened so far.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Takes one sealed frame off the front of `buf`, checks its tag and
    /// decodes it. `Ok(None)` means more bytes are needed.
    ///
    /// The tag is checked before the body is parsed, so only the
    /// authenticated peer can reach the body parser.
    pub fn open(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, ProtoError> {
        if self.poisoned {
            return Err(ProtoError::Poisoned);
        }
        let result = self.open_inner(buf);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn open_inner(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, ProtoError> {
        let max = self.limits.max_frame_len.min(u32::MAX as usize);
        let Some(mut payload) = wire::take_message(buf, 1 + TAG_LEN, max)? else {
            return Ok(None);
        };
        let body_len = payload.len().saturating_sub(TAG_LEN);
        let tag = payload.split_off(body_len);
        let mut mac = self.mac.clone();
        mac.update(&self.seq.to_be_bytes());
        mac.update(&payload);
        mac.verify_truncated_left(&tag)
            .map_err(|_| ProtoError::BadTag { seq: self.seq })?;
        self.seq = self.seq.wrapping_add(1);
        frame::decode_payload(payload, &self.limits).map(Some)
    }
}

/// The front-end's side of the handshake.
pub struct FrontHandshake {
    state: FrontState,
}

enum FrontState {
    AwaitChallenge { psk: Psk, nonce_f: [u8; NONCE_LEN] },
    Finished,
}

impl fmt::Debug for FrontHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            FrontState::AwaitChallenge { .. } => "awaiting challenge",
            FrontState::Finished => "finished",
        };
        f.debug_struct("FrontHandshake")
            .field("state", &state)
            .finish()
    }
}

/// What the front-end has once the back-end proved it holds the key.
#[derive(Debug)]
pub struct FrontDone {
    /// The `Proof` message: send it before any sealed frame.
    pub proof: Vec<u8>,
    /// Seals front-to-back frames.
    pub sealer: Sealer,
    /// Opens back-to-front frames.
    pub opener: Opener,
}

impl FrontHandshake {
    /// Starts a handshake with a fresh random `nonce_f`; returns the `Hello`
    /// message to send.
    pub fn start(psk: Psk, nonce_f: [u8; NONCE_LEN]) -> (FrontHandshake, Vec<u8>) {
        let mut hello = BytesMut::with_capacity(wire::LEN_PREFIX + 3 + NONCE_LEN);
        put_message(
            &mut hello,
            TY_HELLO,
            &[&PROTOCOL_VERSION.to_be_bytes(), &nonce_f],
        );
        (
            FrontHandshake {
                state: FrontState::AwaitChallenge { psk, nonce_f },
            },
            hello.to_vec(),
        )
    }

    /// Feeds the bytes received so far. `Ok(None)`: read more and call again.
    /// `Ok(Some(done))`: send `done.proof`, then use the sealer and opener;
    /// bytes left in `buf` belong to the sealed stream.
    ///
    /// After an error or completion, further calls return
    /// [`AuthError::Finished`].
    pub fn handle(&mut self, buf: &mut BytesMut) -> Result<Option<FrontDone>, AuthError> {
        let FrontState::AwaitChallenge { psk, nonce_f } = &self.state else {
            return Err(AuthError::Finished);
        };
        let result = match take_handshake(buf) {
            Ok(None) => return Ok(None),
            Ok(Some(mut r)) => Self::on_challenge(psk, nonce_f, &mut r),
            Err(e) => Err(e),
        };
        self.state = FrontState::Finished;
        result.map(Some)
    }

    fn on_challenge(
        psk: &Psk,
        nonce_f: &[u8; NONCE_LEN],
        r: &mut Reader,
    ) -> Result<FrontDone, AuthError> {
        expect_type(r, TY_CHALLENGE, "challenge")?;
        check_version(r)?;
        let nonce_b = r.array::<NONCE_LEN>("back nonce")?;
        let proof_b = r.array::<PROOF_LEN>("back proof")?;
        r.finish()?;
        if !psk.verify(LABEL_BACK, nonce_f, &nonce_b, &proof_b) {
            return Err(AuthError::BadProof { peer: "back-end" });
        }
        let proof_f = psk.proof(LABEL_FRONT, &nonce_b, nonce_f);
        let mut proof = BytesMut::with_capacity(wire::LEN_PREFIX + 1 + PROOF_LEN);
        put_message(&mut proof, TY_PROOF, &[&proof_f]);
        Ok(FrontDone {
            proof: proof.to_vec(),
            sealer: sealer(psk.direction(LABEL_F2B, nonce_f, &nonce_b)),
            opener: opener(psk.direction(LABEL_B2F, nonce_f, &nonce_b)),
        })
    }
}

/// The back-end's side of the handshake.
pub struct BackHandshake {
    state: BackState,
}

enum BackState {
    AwaitHello {
        psk: Psk,
        nonce_b: [u8; NONCE_LEN],
    },
    AwaitProof {
        psk: Psk,
        nonce_f: [u8; NONCE_LEN],
        nonce_b: [u8; NONCE_LEN],
    },
    Finished,
}

impl fmt::Debug for BackHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            BackState::AwaitHello { .. } => "awaiting hello",
            BackState::AwaitProof { .. } => "awaiting proof",
            BackState::Finished => "finished",
        };
        f.debug_struct("BackHandshake")
            .field("state", &state)
            .finish()
    }
}

/// What the back-end does next.
// Returned a few times per channel lifetime: boxing `Done` would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum BackStep {
    /// Read more bytes, then call [`BackHandshake::handle`] again.
    NeedMore,
    /// Send this `Challenge`, then call `handle` again (before reading).
    Send(Vec<u8>),
    /// The front-end proved it holds the key. Bytes left in the buffer belong
    /// to the sealed stream.
    Done {
        /// Seals back-to-front frames.
        sealer: Sealer,
        /// Opens front-to-back frames.
        opener: Opener,
    },
    /// The front speaks another protocol version: send `reply` (so the front
    /// can name both versions), then close and report `error`.
    Reject { reply: Vec<u8>, error: AuthError },
}

impl BackHandshake {
    /// Waits for a `Hello`; `nonce_b` must be fresh and random.
    pub fn new(psk: Psk, nonce_b: [u8; NONCE_LEN]) -> BackHandshake {
        BackHandshake {
            state: BackState::AwaitHello { psk, nonce_b },
        }
    }

    /// Feeds the bytes received so far; see [`BackStep`] for what to do next.
    /// After an error, a rejection or completion, further calls return
    /// [`AuthError::Finished`].
    pub fn handle(&mut self, buf: &mut BytesMut) -> Result<BackStep, AuthError> {
        let state = std::mem::replace(&mut self.state, BackState::Finished);
        let (next, step) = Self::step(state, buf)?;
        self.state = next;
        Ok(step)
    }

    fn step(state: BackState, buf: &mut BytesMut) -> Result<(BackState, BackStep), AuthError> {
        match state {
            BackState::AwaitHello { psk, nonce_b } => {
                let Some(mut r) = take_handshake(buf)? else {
                    return Ok((BackState::AwaitHello { psk, nonce_b }, BackStep::NeedMore));
                };
                expect_type(&mut r, TY_HELLO, "hello")?;
                if let Err(error) = check_version(&mut r) {
                    let mut reply = BytesMut::new();
                    let zero = [0u8; NONCE_LEN];
                    put_message(
                        &mut reply,
                        TY_CHALLENGE,
                        &[&PROTOCOL_VERSION.to_be_bytes(), &zero, &zero],
                    );
                    return Ok((
                        BackState::Finished,
                        BackStep::Reject {
                            reply: reply.to_vec(),
                            error,
                        },
                    ));
                }
                let nonce_f = r.array::<NONCE_LEN>("front nonce")?;
                r.finish()?;
                let proof_b = psk.proof(LABEL_BACK, &nonce_f, &nonce_b);
                let mut challenge =
                    BytesMut::with_capacity(wire::LEN_PREFIX + 3 + NONCE_LEN + PROOF_LEN);
                put_message(
                    &mut challenge,
                    TY_CHALLENGE,
                    &[&PROTOCOL_VERSION.to_be_bytes(), &nonce_b, &proof_b],
                );
                Ok((
                    BackState::AwaitProof {
                        psk,
                        nonce_f,
                        nonce_b,
                    },
                    BackStep::Send(challenge.to_vec()),
                ))
            }
            BackState::AwaitProof {
                psk,
                nonce_f,
                nonce_b,
            } => {
                let Some(mut r) = take_handshake(buf)? else {
                    return Ok((
                        BackState::AwaitProof {
                            psk,
                            nonce_f,
                            nonce_b,
                        },
                        BackStep::NeedMore,
                    ));
                };
                expect_type(&mut r, TY_PROOF, "proof")?;
                let proof_f = r.array::<PROOF_LEN>("front proof")?;
                r.finish()?;
                if !psk.verify(LABEL_FRONT, &nonce_b, &nonce_f, &proof_f) {
                    return Err(AuthError::BadProof { peer: "front-end" });
                }
                let step = BackStep::Done {
                    sealer: sealer(psk.direction(LABEL_B2F, &nonce_f, &nonce_b)),
                    opener: opener(psk.direction(LABEL_F2B, &nonce_f, &nonce_b)),
                };
                Ok((BackState::Finished, step))
            }
            BackState::Finished => Err(AuthError::Finished),
        }
    }
}

fn sealer(mac: HmacSha256) -> Sealer {
    Sealer {
        mac,
        seq: 0,
        limits: FrameLimits::default(),
    }
}

fn opener(mac: HmacSha256) -> Opener {
    Opener {
        mac,
        seq: 0,
        limits: FrameLimits::default(),
        poisoned: false,
    }
}

fn put_message(out: &mut BytesMut, ty: u8, parts: &[&[u8]]) {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    // Handshake messages are a few dozen bytes.
    out.put_u32(len as u32);
    out.put_u8(ty);
    for part in parts {
        out.put_slice(part);
    }
}

fn take_handshake(buf: &mut BytesMut) -> Result<Option<Reader>, AuthError> {
    Ok(wire::take_message(buf, 1, MAX_HANDSHAKE_LEN)?.map(Reader::new))
}

fn expect_type(r: &mut Reader, ty: u8, expected: &'static str) -> Result<(), AuthError> {
    match r.u8("handshake message type")? {
        got if got == ty => Ok(()),
        got => Err(AuthError::UnexpectedMessage { expected, got }),
    }
}

/// Reads the version first, so a peer of another version is named as such
/// even if the rest of its message has another layout.
fn check_version(r: &mut Reader) -> Result<(), AuthError> {
    match r.u16("protocol version")? {
        PROTOCOL_VERSION => Ok(()),
        theirs => Err(AuthError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::LoadReport;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn psk(key: &[u8]) -> Psk {
        Psk::new(key).expect("long enough")
    }

    struct Channel {
        front_sealer: Sealer,
        front_opener: Opener,
        back_sealer: Sealer,
        back_opener: Opener,
    }

    /// Runs both sides in memory with the "poll before reading" loop the
    /// daemons use, one byte at a time, so every partial state is visited.
    fn handshake(
        front_key: &[u8],
        back_key: &[u8],
        nonce_f: u8,
        nonce_b: u8,
    ) -> Result<Channel, (&'static str, AuthError)> {
        let (mut front, hello) = FrontHandshake::start(psk(front_key), [nonce_f; NONCE_LEN]);
        let mut back = BackHandshake::new(psk(back_key), [nonce_b; NONCE_LEN]);
        let (mut to_back, mut to_front) = (BytesMut::new(), BytesMut::new());
        let mut wire_to_back: Vec<u8> = hello;
        let mut wire_to_front: Vec<u8> = Vec::new();
        let mut front_done: Option<FrontDone> = None;
        for _ in 0..1000 {
            if front_done.is_none() {
                if let Some(b) = (!wire_to_front.is_empty()).then(|| wire_to_front.remove(0)) {
                    to_front.put_u8(b);
                }
                if let Some(done) = front.handle(&mut to_front).map_err(|e| ("front", e))? {
                    wire_to_back.extend_from_slice(&done.proof);
                    front_done = Some(done);
                }
            }
            if let Some(b) = (!wire_to_back.is_empty()).then(|| wire_to_back.remove(0)) {
                to_back.put_u8(b);
            }
            match back.handle(&mut to_back).map_err(|e| ("back", e))? {
                BackStep::NeedMore => {}
                BackStep::Send(challenge) => wire_to_front.extend_from_slice(&challenge),
                BackStep::Reject { error, .. } => return Err(("back", error)),
                BackStep::Done { sealer, opener } => {
                    let done = front_done.take().ok_or(("front", AuthError::Finished))?;
                    assert!(to_back.is_empty() && to_front.is_empty());
                    return Ok(Channel {
                        front_sealer: done.sealer,
                        front_opener: done.opener,
                        back_sealer: sealer,
                        back_opener: opener,
                    });
                }
            }
        }
        panic!("handshake did not finish in 1000 steps");
    }

    fn seal(sealer: &mut Sealer, frame: &Frame) -> BytesMut {
        let mut out = BytesMut::new();
        sealer.seal(frame, &mut out).expect("fits");
        out
    }

    #[test]
    fn both_sides_complete_and_frames_flow_both_ways() {
        let mut ch = handshake(KEY, KEY, 1, 2).expect("same key");
        let mut wire = BytesMut::new();
        for id in 0..3 {
            wire.extend_from_slice(&seal(&mut ch.front_sealer, &Frame::Abort { id }));
        }
        for id in 0..3 {
            assert_eq!(
                ch.back_opener.open(&mut wire),
                Ok(Some(Frame::Abort { id }))
            );
        }
        assert_eq!(ch.back_opener.open(&mut wire), Ok(None));
        let load = Frame::Load(LoadReport {
            active: 1,
            total: 2,
        });
        let mut back_wire = seal(&mut ch.back_sealer, &load);
        assert_eq!(ch.front_opener.open(&mut back_wire), Ok(Some(load)));
        assert_eq!((ch.front_sealer.seq(), ch.back_opener.seq()), (3, 3));
    }

    #[test]
    fn frames_pipelined_behind_the_proof_stay_in_the_buffer_for_the_opener() {
        let (mut front, hello) = FrontHandshake::start(psk(KEY), [3; NONCE_LEN]);
        let mut back = BackHandshake::new(psk(KEY), [4; NONCE_LEN]);
        let BackStep::Send(challenge) = back
            .handle(&mut BytesMut::from(&hello[..]))
            .expect("hello ok")
        else {
            panic!("expected a challenge");
        };
        let mut done = front
            .handle(&mut BytesMut::from(&challenge[..]))
            .expect("challenge ok")
            .expect("complete");
        let mut to_back = BytesMut::from(&done.proof[..]);
        done.sealer
            .seal(&Frame::Ping { nonce: 9 }, &mut to_back)
            .expect("fits");
        let BackStep::Done { mut opener, .. } = back.handle(&mut to_back).expect("proof ok") else {
            panic!("expected completion");
        };
        assert_eq!(
            opener.open(&mut to_back),
            Ok(Some(Frame::Ping { nonce: 9 }))
        );
    }

    #[test]
    fn wrong_key_is_caught_by_the_front_before_it_sends_anything() {
        let err = handshake(KEY, b"another key, 16+ bytes", 1, 2).err();
        assert_eq!(
            err,
            Some(("front", AuthError::BadProof { peer: "back-end" }))
        );
    }

    #[test]
    fn wrong_key_is_caught_by_the_back() {
        let (_, hello) = FrontHandshake::start(psk(KEY), [5; NONCE_LEN]);
        let mut back = BackHandshake::new(psk(KEY), [6; NONCE_LEN]);
        assert!(matches!(
            back.handle(&mut BytesMut::from(&hello[..])),
            Ok(BackStep::Send(_))
        ));
        // An impostor front that saw the challenge but holds another key.
        let forged =
            psk(b"impostor key material").proof(LABEL_FRONT, &[6; NONCE_LEN], &[5; NONCE_LEN]);
        let mut proof = BytesMut::new();
        put_message(&mut proof, TY_PROOF, &[&forged]);
        assert_eq!(
            back.handle(&mut proof).err(),
            Some(AuthError::BadProof { peer: "front-end" })
        );
        assert_eq!(
            back.handle(&mut BytesMut::new()).err(),
            Some(AuthError::Finished)
        );
    }

    #[test]
    fn a_proof_cannot_be_reflected() {
        // The back's proof over the same nonces, sent back as the front's proof.
        let (_, hello) = FrontHandshake::start(psk(KEY), [7; NONCE_LEN]);
        let mut back = BackHandshake::new(psk(KEY), [7; NONCE_LEN]);
        let Ok(BackStep::Send(challenge)) = back.handle(&mut BytesMut::from(&hello[..])) else {
            panic!("expected a challenge");
        };
        let proof_b = &challenge[4 + 1 + 2 + NONCE_LEN..];
        let mut reflected = BytesMut::new();
        put_message(&mut reflected, TY_PROOF, &[proof_b]);
        assert_eq!(
            back.handle(&mut reflected).err(),
            Some(AuthError::BadProof { peer: "front-end" })
        );
    }

    #[test]
    fn version_mismatch_is_named_on_both_sides() {
        let mut back = BackHandshake::new(psk(KEY), [1; NONCE_LEN]);
        // A version-9 hello with a different layout: only the version is read.
        let mut hello = BytesMut::new();
        put_message(&mut hello, TY_HELLO, &[&9u16.to_be_bytes(), b"v9 body"]);
        let Ok(BackStep::Reject { reply, error }) = back.handle(&mut hello) else {
            panic!("expected a rejection");
        };
        assert_eq!(
            error,
            AuthError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: 9
            }
        );
        assert_eq!(
            error.to_string(),
            "protocol version mismatch: this side speaks version 3, the peer speaks version 9"
        );
        // The reply carries the back's version where any front reads it.
        assert_eq!(&reply[4..5], &[TY_CHALLENGE]);
        assert_eq!(&reply[5..7], &PROTOCOL_VERSION.to_be_bytes());

        let (mut front, _) = FrontHandshake::start(psk(KEY), [1; NONCE_LEN]);
        let mut challenge = BytesMut::new();
        put_message(&mut challenge, TY_CHALLENGE, &[&99u16.to_be_bytes()]);
        assert_eq!(
            front.handle(&mut challenge).err(),
            Some(AuthError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: 99
            })
        );
    }

    #[test]
    fn out_of_order_or_oversized_handshake_messages_fail() {
        let mut back = BackHandshake::new(psk(KEY), [1; NONCE_LEN]);
        let mut proof = BytesMut::new();
        put_message(&mut proof, TY_PROOF, &[&[0; PROOF_LEN]]);
        assert_eq!(
            back.handle(&mut proof).err(),
            Some(AuthError::UnexpectedMessage {
                expected: "hello",
                got: TY_PROOF
            })
        );

        let (mut front, _) = FrontHandshake::start(psk(KEY), [1; NONCE_LEN]);
        let mut huge = BytesMut::from(&[0, 1, 0, 0][..]);
        assert!(matches!(
            front.handle(&mut huge),
            Err(AuthError::Proto(ProtoError::FrameTooLarge { .. }))
        ));
        assert_eq!(
            front.handle(&mut BytesMut::new()).err(),
            Some(AuthError::Finished)
        );
    }

    #[test]
    fn truncated_handshake_messages_need_more() {
        let (mut front, hello) = FrontHandshake::start(psk(KEY), [1; NONCE_LEN]);
        let mut back = BackHandshake::new(psk(KEY), [2; NONCE_LEN]);
        for cut in 0..hello.len() {
            let mut buf = BytesMut::from(&hello[..cut]);
            assert!(
                matches!(back.handle(&mut buf), Ok(BackStep::NeedMore)),
                "hello cut at {cut}"
            );
        }
        let Ok(BackStep::Send(challenge)) = back.handle(&mut BytesMut::from(&hello[..])) else {
            panic!("expected a challenge");
        };
        for cut in 0..challenge.len() {
            let mut buf = BytesMut::from(&challenge[..cut]);
            assert!(
                matches!(front.handle(&mut buf), Ok(None)),
                "challenge cut at {cut}"
            );
        }
    }

    #[test]
    fn every_tampered_byte_is_detected() {
        let ch = handshake(KEY, KEY, 1, 2).expect("same key");
        let mut sealer = ch.front_sealer;
        let frame = Frame::Refused {
            id: 7,
            reason: "busy".into(),
            backend_fault: false,
        };
        let good = seal(&mut sealer, &frame);
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            let mut opener = ch.back_opener.clone();
            let result = opener.open(&mut bad);
            if i < 4 {
                // A changed length either waits for bytes that never come
                // or fails; it never yields a frame.
                assert!(!matches!(result, Ok(Some(_))), "byte {i}: {result:?}");
            } else {
                assert_eq!(result, Err(ProtoError::BadTag { seq: 0 }), "byte {i}");
            }
        }
        let mut opener = ch.back_opener;
        assert_eq!(opener.open(&mut good.clone()), Ok(Some(frame)));
    }

    #[test]
    fn replayed_reordered_and_reflected_frames_are_detected() {
        let mut ch = handshake(KEY, KEY, 1, 2).expect("same key");
        let first = seal(&mut ch.front_sealer, &Frame::Abort { id: 1 });
        let second = seal(&mut ch.front_sealer, &Frame::Abort { id: 2 });

        let mut replay = ch.back_opener.clone();
        assert_eq!(
            replay.open(&mut first.clone()),
            Ok(Some(Frame::Abort { id: 1 }))
        );
        assert_eq!(
            replay.open(&mut first.clone()),
            Err(ProtoError::BadTag { seq: 1 })
        );
        // Once failed, the opener stays failed even for the right frame.
        assert_eq!(replay.open(&mut second.clone()), Err(ProtoError::Poisoned));

        let mut reorder = ch.back_opener.clone();
        assert_eq!(
            reorder.open(&mut second.clone()),
            Err(ProtoError::BadTag { seq: 0 })
        );

        // A front frame fed back to the front (other direction's key).
        assert_eq!(
            ch.front_opener.open(&mut first.clone()),
            Err(ProtoError::BadTag { seq: 0 })
        );
    }

    #[test]
    fn frames_from_another_session_are_rejected() {
        let mut old = handshake(KEY, KEY, 1, 2).expect("same key");
        let mut new = handshake(KEY, KEY, 1, 3).expect("same key");
        let recorded = seal(&mut old.front_sealer, &Frame::Abort { id: 1 });
        assert_eq!(
            new.back_opener.open(&mut recorded.clone()),
            Err(ProtoError::BadTag { seq: 0 })
        );
    }

    #[test]
    fn truncated_sealed_frame_needs_more() {
        let mut ch = handshake(KEY, KEY, 1, 2).expect("same key");
        let good = seal(
            &mut ch.front_sealer,
            &Frame::Goodbye {
                reason: "drain".into(),
            },
        );
        for cut in 0..good.len() {
            assert_eq!(
                ch.back_opener.open(&mut BytesMut::from(&good[..cut])),
                Ok(None),
                "cut at {cut}"
            );
        }
        assert_eq!(ch.back_opener.seq(), 0);
    }

    #[test]
    fn oversized_frame_is_refused_without_desynchronising_the_channel() {
        let mut ch = handshake(KEY, KEY, 1, 2).expect("same key");
        let limits = FrameLimits {
            max_frame_len: 64,
            ..FrameLimits::default()
        };
        let mut sealer = ch.front_sealer.with_limits(limits);
        let big = Frame::Refused {
            id: 1,
            reason: "x".repeat(100),
            backend_fault: false,
        };
        let mut out = BytesMut::new();
        assert!(matches!(
            sealer.seal(&big, &mut out),
            Err(ProtoError::FrameTooLarge { .. })
        ));
        assert!(out.is_empty());
        sealer
            .seal(&Frame::Abort { id: 2 }, &mut out)
            .expect("fits");
        assert_eq!(
            ch.back_opener.open(&mut out),
            Ok(Some(Frame::Abort { id: 2 }))
        );
    }

    #[test]
    fn short_keys_are_refused_and_keys_never_printed() {
        assert_eq!(
            Psk::new([0u8; 15]).err(),
            Some(AuthError::KeyTooShort { len: 15, min: 16 })
        );
        let shown = format!("{:?}", psk(b"SECRETSECRETSECRET"));
        assert!(
            !shown.contains("SECRET") && !shown.contains("83, 69"),
            "{shown}"
        );
        let ch = handshake(KEY, KEY, 1, 2).expect("same key");
        let shown = format!("{:?} {:?}", ch.front_sealer, ch.back_opener);
        assert!(shown.contains("seq"), "{shown}");
    }

    #[test]
    fn direction_key_matches_plain_hmac_with_the_derived_key() {
        // The zero-padding shortcut in Psk::direction must equal HMAC keyed
        // with the 32-byte derived key, as the protocol specifies.
        let p = psk(KEY);
        let (nf, nb) = ([1; NONCE_LEN], [2; NONCE_LEN]);
        let derived = p.proof(LABEL_F2B, &nf, &nb);
        let mut expected = <HmacSha256 as KeyInit>::new_from_slice(&derived).expect("any length");
        expected.update(b"msg");
        let mut got = p.direction(LABEL_F2B, &nf, &nb);
        got.update(b"msg");
        assert_eq!(
            got.finalize().into_bytes(),
            expected.finalize().into_bytes()
        );
    }
}
