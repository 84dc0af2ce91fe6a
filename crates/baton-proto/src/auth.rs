//! The control channel's security: a handshake that authenticates both ends
//! with a pre-shared key and agrees fresh session keys by an ephemeral
//! X25519 exchange, then every frame encrypted and authenticated with
//! ChaCha20-Poly1305. Sans-IO: the caller supplies the randomness (one
//! [`EphemeralKey`] per handshake) and moves the bytes.
//!
//! # Properties
//!
//! - **Mutual authentication.** Each side proves it holds the PSK before the
//!   other trusts it; the front checks the back's proof before it sends
//!   anything but its `Hello`, so no client data reaches an impostor.
//! - **Confidentiality with forward secrecy.** The frame keys depend on an
//!   X25519 shared secret of two ephemeral keys that exist only for the
//!   duration of the handshake (they are zeroized as soon as the shared
//!   secret is computed). A recording of a channel plus a later leak of the
//!   PSK does not reveal any frame: that needs an ephemeral secret too. A
//!   leaked PSK does let its holder impersonate either side in *future*
//!   handshakes (and so also read those channels it takes part in).
//! - **Integrity and order.** Every frame is sealed with a per-direction key
//!   and a nonce that is the frame's sequence number in that direction
//!   (never sent): a tampered, truncated, replayed, reordered, dropped,
//!   injected or reflected frame fails to open and closes the channel.
//!
//! # Handshake
//!
//! Three unencrypted messages, each with the same `u32` length prefix as
//! frames (type bytes 0x80..=0x82, so they can never be mistaken for a
//! [`Frame`]). `e_f`, `e_b` are the sides' ephemeral X25519 public keys.
//!
//! ```text
//! front                                                      back
//!   | Hello     { version, e_f }                              |
//!   |-------------------------------------------------------->|
//!   | Challenge { version, e_b, proof_b }                     |
//!   |<--------------------------------------------------------|
//!   | (front checks proof_b: no client data ever goes to a     |
//!   |  peer that does not hold the key)                        |
//!   | Proof     { proof_f }                                   |
//!   |-------------------------------------------------------->|
//!   |                                     (back checks proof_f)|
//!   |=========== encrypted frames, both directions ===========|
//! ```
//!
//! Key schedule (`||` is concatenation; HKDF is HKDF-SHA256 of RFC 5869):
//!
//! ```text
//! hello_msg = 0x80 || version || e_f            (the Hello after its prefix)
//! chal_head = 0x81 || version || e_b            (the Challenge up to proof_b)
//! th        = SHA-256("baton control channel v3" || hello_msg || chal_head)
//! dh        = X25519(own ephemeral secret, peer's ephemeral public key)
//!             (all zero, i.e. a low-order peer key: the handshake fails)
//! prk       = HKDF-Extract(salt = th, ikm = psk || dh)
//! proof_b   = HKDF-Expand(prk, "baton v3 back proof",  32)
//! proof_f   = HKDF-Expand(prk, "baton v3 front proof", 32)
//! k_f2b     = HKDF-Expand(prk, "baton v3 key f2b",     32)
//! k_b2f     = HKDF-Expand(prk, "baton v3 key b2f",     32)
//! ```
//!
//! The transcript hash binds both ephemeral keys and the version to the
//! proofs, so an attacker without the PSK cannot substitute its own key (the
//! proofs would not verify). The proofs also depend on `dh`, so each is a key
//! confirmation: a side that verifies the peer's proof knows the peer derived
//! the same frame keys; and a passive observer cannot even test PSK guesses
//! against a recording. The two proofs and the two frame keys use distinct
//! labels, so a proof or a frame cannot be reflected back to its sender. The
//! ephemeral public keys are fresh random values in every handshake, so they
//! also serve as the handshake's nonces: every session's keys are new and
//! frames of one session cannot be replayed into another. Proofs are
//! compared in constant time.
//!
//! A version mismatch is reported on both sides with both numbers: every
//! version starts its `Hello` and `Challenge` with the version, and the back
//! answers a foreign `Hello` with a `Challenge` that carries only its own
//! version (zero key and proof), then closes.
//!
//! # Sealed frames
//!
//! ```text
//! +-------------+--------------------------------------+----------+
//! | len: u32 BE | ChaCha20-Poly1305(type || body)      | tag (16) |
//! +-------------+--------------------------------------+----------+
//!               |<-------------------------- len ---------------->|
//! key   = k_f2b or k_b2f (the sender's direction)
//! nonce = 0x00000000 || seq (u64 BE), seq = frames sealed before in that direction
//! aad   = the four length bytes
//! ```
//!
//! `seq` is never sent and never wraps: after 2^64 - 1 frames a direction
//! refuses to seal or open more ([`ProtoError::SequenceExhausted`]). The tag
//! is checked before anything is decrypted or parsed, so only the
//! authenticated peer can reach the frame parser. The length prefix is in
//! clear (an observer learns frame sizes and timing, not contents).
//!
//! # Key material
//!
//! The PSK bytes, the ephemeral secrets, the X25519 shared secret, the
//! derived proofs and the frame keys are zeroized when dropped (`zeroize`,
//! `x25519-dalek`'s and `chacha20poly1305`'s own zeroize-on-drop). Not
//! wiped: the HMAC states inside `hkdf` during the derivation (the crate does
//! not zeroize them), stack copies the compiler makes when values move, and
//! decrypted frames (a `Handoff`'s `data` belongs to its receiver).
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
//! // In the daemons: EphemeralKey::generate(getrandom::getrandom).
//! let (mut front, hello) = FrontHandshake::start(psk.clone(), EphemeralKey::from_bytes([1; 32]));
//! let mut back = BackHandshake::new(psk, EphemeralKey::from_bytes([2; 32]));
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

use bytes::{Buf, BufMut, BytesMut};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce, Tag};
use hkdf::HkdfExtract;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use crate::frame::{self, Frame, FrameLimits, ProtoError, PROTOCOL_VERSION};
use crate::wire::{self, Reader, LEN_PREFIX};

/// Bytes of the per-frame authentication tag.
pub const TAG_LEN: usize = 16;
/// Bytes of an X25519 key, secret or public.
pub const KEY_LEN: usize = 32;
/// Shortest accepted pre-shared key.
pub const MIN_PSK_LEN: usize = 16;

/// Handshake messages are small; an unauthenticated peer must not be able to
/// make us buffer more than this.
const MAX_HANDSHAKE_LEN: usize = 1024;
const PROOF_LEN: usize = 32;
/// `Hello` after its prefix, and the head of a `Challenge`: type, version,
/// ephemeral public key.
const GREETING_LEN: usize = 1 + 2 + KEY_LEN;

const TY_HELLO: u8 = 0x80;
const TY_CHALLENGE: u8 = 0x81;
const TY_PROOF: u8 = 0x82;

const TRANSCRIPT_LABEL: &[u8] = b"baton control channel v3";
const INFO_BACK_PROOF: &[u8] = b"baton v3 back proof";
const INFO_FRONT_PROOF: &[u8] = b"baton v3 front proof";
const INFO_F2B: &[u8] = b"baton v3 key f2b";
const INFO_B2F: &[u8] = b"baton v3 key b2f";

/// Why the handshake failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("pre-shared key has {len} bytes, at least {min} are required")]
    KeyTooShort { len: usize, min: usize },
    #[error("protocol version mismatch: this side speaks version {ours}, the peer speaks version {theirs}")]
    VersionMismatch { ours: u16, theirs: u16 },
    #[error("the {peer}'s proof does not verify: the pre-shared keys differ, or the peer is an impostor")]
    BadProof { peer: &'static str },
    #[error("the {peer} sent a low-order ephemeral key (no shared secret): the peer is broken or hostile")]
    WeakKey { peer: &'static str },
    #[error("expected a handshake {expected} message, got message type {got:#04x}")]
    UnexpectedMessage { expected: &'static str, got: u8 },
    #[error("malformed handshake message: {0}")]
    Proto(#[from] ProtoError),
    #[error("session key derivation failed")]
    KeyDerivation,
    #[error("the handshake already finished or failed")]
    Finished,
}

/// The pre-shared key both ends of a control channel hold. Its bytes are
/// zeroized when the last copy is dropped and never printed.
#[derive(Clone)]
pub struct Psk {
    key: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Psk")
            .field("len", &self.key.len())
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
        Ok(Psk {
            key: Zeroizing::new(bytes.to_vec()),
        })
    }
}

/// The secret half of one handshake's ephemeral X25519 key pair: 32 bytes
/// from a CSPRNG, used for exactly one handshake (the handshake consumes it)
/// and zeroized on drop. Never reuse the bytes: forward secrecy and the
/// freshness of session keys rest on them.
pub struct EphemeralKey {
    secret: StaticSecret,
}

impl fmt::Debug for EphemeralKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EphemeralKey").finish_non_exhaustive()
    }
}

impl EphemeralKey {
    /// The key for these secret bytes (clamped as X25519 specifies). For
    /// tests and test vectors; the daemons use [`EphemeralKey::generate`].
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> EphemeralKey {
        EphemeralKey {
            secret: StaticSecret::from(bytes),
        }
    }

    /// A key from `fill`, which must fill its buffer from a CSPRNG (for
    /// example `getrandom::getrandom`). The buffer is zeroized afterwards.
    pub fn generate<E>(fill: impl FnOnce(&mut [u8]) -> Result<(), E>) -> Result<EphemeralKey, E> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        fill(&mut bytes[..])?;
        Ok(EphemeralKey::from_bytes(*bytes))
    }

    fn public(&self) -> [u8; KEY_LEN] {
        PublicKey::from(&self.secret).to_bytes()
    }
}

/// What one handshake derives, all zeroized on drop.
struct Schedule {
    back_proof: Zeroizing<[u8; PROOF_LEN]>,
    front_proof: Zeroizing<[u8; PROOF_LEN]>,
    f2b: Zeroizing<[u8; KEY_LEN]>,
    b2f: Zeroizing<[u8; KEY_LEN]>,
}

impl Schedule {
    /// Runs the key schedule of the module documentation. `ours` is consumed
    /// and dropped (zeroized) as soon as the shared secret exists.
    fn derive(
        psk: &Psk,
        ours: EphemeralKey,
        theirs: &[u8; KEY_LEN],
        th: &[u8; 32],
        peer: &'static str,
    ) -> Result<Schedule, AuthError> {
        let shared = ours.secret.diffie_hellman(&PublicKey::from(*theirs));
        drop(ours);
        if !shared.was_contributory() {
            return Err(AuthError::WeakKey { peer });
        }
        let mut extract = HkdfExtract::<Sha256>::new(Some(th));
        extract.input_ikm(&psk.key);
        extract.input_ikm(shared.as_bytes());
        drop(shared);
        let (mut prk, hkdf) = extract.finalize();
        prk.zeroize();
        let expand = |info: &[u8]| -> Result<Zeroizing<[u8; 32]>, AuthError> {
            let mut out = Zeroizing::new([0u8; 32]);
            hkdf.expand(info, &mut out[..])
                .map_err(|_| AuthError::KeyDerivation)?;
            Ok(out)
        };
        Ok(Schedule {
            back_proof: expand(INFO_BACK_PROOF)?,
            front_proof: expand(INFO_FRONT_PROOF)?,
            f2b: expand(INFO_F2B)?,
            b2f: expand(INFO_B2F)?,
        })
    }
}

/// `type || version || ephemeral public key`, as sent.
fn greeting(ty: u8, public: &[u8; KEY_LEN]) -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    let (head, key) = g.split_at_mut(3);
    head.copy_from_slice(&[ty, (PROTOCOL_VERSION >> 8) as u8, PROTOCOL_VERSION as u8]);
    key.copy_from_slice(public);
    g
}

fn transcript(hello: &[u8; GREETING_LEN], challenge_head: &[u8; GREETING_LEN]) -> [u8; 32] {
    Sha256::new()
        .chain_update(TRANSCRIPT_LABEL)
        .chain_update(hello)
        .chain_update(challenge_head)
        .finalize()
        .into()
}

fn proof_ok(expected: &[u8; PROOF_LEN], got: &[u8; PROOF_LEN]) -> bool {
    bool::from(expected.ct_eq(got))
}

/// The AEAD nonce of frame `seq`: four zero bytes, then `seq` big-endian.
fn frame_nonce(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    let (_, counter) = n.split_at_mut(4);
    counter.copy_from_slice(&seq.to_be_bytes());
    Nonce::from(n)
}

fn cipher(key: &[u8; KEY_LEN]) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(Key::from_slice(key))
}

/// Seals outgoing frames of one direction. Owned by the writer task.
///
/// Not `Clone`: two sealers with the same key would reuse nonces.
pub struct Sealer {
    aead: ChaCha20Poly1305,
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
    fn new(key: &[u8; KEY_LEN]) -> Sealer {
        Sealer {
            aead: cipher(key),
            seq: 0,
            limits: FrameLimits::default(),
        }
    }

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

    /// Appends `frame`, encrypted and authenticated, to `out`. Encrypts in
    /// place: no allocation beyond growing `out`.
    ///
    /// Fails with [`ProtoError::FrameTooLarge`]; then nothing was written and
    /// the sequence number did not advance, so the channel stays usable
    /// (refuse that one handoff). Fails with
    /// [`ProtoError::SequenceExhausted`] after 2^64 - 1 frames.
    pub fn seal(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), ProtoError> {
        if self.seq == u64::MAX {
            return Err(ProtoError::SequenceExhausted);
        }
        let start = out.len();
        frame::encode_with_trailer(frame, &self.limits, TAG_LEN, out)?;
        let sealed = out
            .get_mut(start..)
            .and_then(|m| m.split_first_chunk_mut::<LEN_PREFIX>())
            .map(|(prefix, payload)| {
                self.aead
                    .encrypt_in_place_detached(&frame_nonce(self.seq), &prefix[..], payload)
            });
        match sealed {
            Some(Ok(tag)) => out.put_slice(&tag),
            // Only a payload beyond ChaCha20's 256 GiB can fail, far above
            // any frame limit.
            _ => {
                let len = out.len() - start;
                out.truncate(start);
                return Err(ProtoError::FrameTooLarge {
                    len,
                    max: self.limits.frame_max(),
                });
            }
        }
        self.seq += 1;
        Ok(())
    }
}

/// Opens incoming sealed frames of one direction. Owned by the reader task.
///
/// Any error poisons the opener: the stream position or the peer is no
/// longer trustworthy, so the channel must be closed.
#[derive(Clone)]
pub struct Opener {
    aead: ChaCha20Poly1305,
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
    fn new(key: &[u8; KEY_LEN]) -> Opener {
        Opener {
            aead: cipher(key),
            seq: 0,
            limits: FrameLimits::default(),
            poisoned: false,
        }
    }

    /// Uses `limits` instead of [`FrameLimits::default`].
    pub fn with_limits(mut self, limits: FrameLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Frames opened so far.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Takes one sealed frame off the front of `buf`, checks its tag,
    /// decrypts it in place and decodes it. `Ok(None)` means more bytes are
    /// needed.
    ///
    /// The tag is checked before anything is decrypted or parsed, so only
    /// the authenticated peer can reach the frame parser.
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
        let max = self.limits.frame_max();
        let Some(mut message) = wire::take_message_with_prefix(buf, 1 + TAG_LEN, max)? else {
            return Ok(None);
        };
        if self.seq == u64::MAX {
            return Err(ProtoError::SequenceExhausted);
        }
        let bad = ProtoError::BadTag { seq: self.seq };
        let (prefix, rest) = message
            .split_first_chunk_mut::<LEN_PREFIX>()
            .ok_or(bad.clone())?;
        let (ciphertext, tag) = rest.split_last_chunk_mut::<TAG_LEN>().ok_or(bad.clone())?;
        let tag = Tag::from(*tag);
        self.aead
            .decrypt_in_place_detached(&frame_nonce(self.seq), &prefix[..], ciphertext, &tag)
            .map_err(|_| bad)?;
        self.seq += 1;
        let plain_len = message.len().saturating_sub(LEN_PREFIX + TAG_LEN);
        message.advance(LEN_PREFIX);
        message.truncate(plain_len);
        frame::decode_payload(message.freeze(), &self.limits).map(Some)
    }
}

/// The front-end's side of the handshake.
pub struct FrontHandshake {
    state: FrontState,
}

enum FrontState {
    AwaitChallenge {
        psk: Psk,
        ephemeral: EphemeralKey,
        hello: [u8; GREETING_LEN],
    },
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
    /// Starts a handshake with a fresh `ephemeral` key; returns the `Hello`
    /// message to send.
    pub fn start(psk: Psk, ephemeral: EphemeralKey) -> (FrontHandshake, Vec<u8>) {
        let hello = greeting(TY_HELLO, &ephemeral.public());
        let mut msg = BytesMut::with_capacity(wire::LEN_PREFIX + GREETING_LEN);
        put_message(&mut msg, &[&hello]);
        (
            FrontHandshake {
                state: FrontState::AwaitChallenge {
                    psk,
                    ephemeral,
                    hello,
                },
            },
            msg.to_vec(),
        )
    }

    /// Feeds the bytes received so far. `Ok(None)`: read more and call again.
    /// `Ok(Some(done))`: send `done.proof`, then use the sealer and opener;
    /// bytes left in `buf` belong to the sealed stream.
    ///
    /// After an error or completion, further calls return
    /// [`AuthError::Finished`].
    pub fn handle(&mut self, buf: &mut BytesMut) -> Result<Option<FrontDone>, AuthError> {
        if matches!(self.state, FrontState::Finished) {
            return Err(AuthError::Finished);
        }
        let mut r = match take_handshake(buf) {
            Ok(None) => return Ok(None),
            Ok(Some(r)) => r,
            Err(e) => {
                self.state = FrontState::Finished;
                return Err(e);
            }
        };
        match std::mem::replace(&mut self.state, FrontState::Finished) {
            FrontState::AwaitChallenge {
                psk,
                ephemeral,
                hello,
            } => Self::on_challenge(&psk, ephemeral, &hello, &mut r).map(Some),
            FrontState::Finished => Err(AuthError::Finished),
        }
    }

    fn on_challenge(
        psk: &Psk,
        ephemeral: EphemeralKey,
        hello: &[u8; GREETING_LEN],
        r: &mut Reader,
    ) -> Result<FrontDone, AuthError> {
        expect_type(r, TY_CHALLENGE, "challenge")?;
        check_version(r)?;
        let e_b = r.array::<KEY_LEN>("back ephemeral key")?;
        let proof_b = r.array::<PROOF_LEN>("back proof")?;
        r.finish()?;
        let th = transcript(hello, &greeting(TY_CHALLENGE, &e_b));
        let keys = Schedule::derive(psk, ephemeral, &e_b, &th, "back-end")?;
        if !proof_ok(&keys.back_proof, &proof_b) {
            return Err(AuthError::BadProof { peer: "back-end" });
        }
        let mut proof = BytesMut::with_capacity(wire::LEN_PREFIX + 1 + PROOF_LEN);
        put_message(&mut proof, &[&[TY_PROOF], &keys.front_proof[..]]);
        Ok(FrontDone {
            proof: proof.to_vec(),
            sealer: Sealer::new(&keys.f2b),
            opener: Opener::new(&keys.b2f),
        })
    }
}

/// The back-end's side of the handshake.
pub struct BackHandshake {
    state: BackState,
}

enum BackState {
    AwaitHello { psk: Psk, ephemeral: EphemeralKey },
    AwaitProof { keys: Box<Schedule> },
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
    /// Waits for a `Hello`; `ephemeral` must be fresh.
    pub fn new(psk: Psk, ephemeral: EphemeralKey) -> BackHandshake {
        BackHandshake {
            state: BackState::AwaitHello { psk, ephemeral },
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
            BackState::AwaitHello { psk, ephemeral } => {
                let Some(mut r) = take_handshake(buf)? else {
                    return Ok((BackState::AwaitHello { psk, ephemeral }, BackStep::NeedMore));
                };
                expect_type(&mut r, TY_HELLO, "hello")?;
                if let Err(error) = check_version(&mut r) {
                    let mut reply = BytesMut::new();
                    let zero = [0u8; KEY_LEN + PROOF_LEN];
                    put_message(
                        &mut reply,
                        &[&[TY_CHALLENGE], &PROTOCOL_VERSION.to_be_bytes(), &zero],
                    );
                    return Ok((
                        BackState::Finished,
                        BackStep::Reject {
                            reply: reply.to_vec(),
                            error,
                        },
                    ));
                }
                let e_f = r.array::<KEY_LEN>("front ephemeral key")?;
                r.finish()?;
                let head = greeting(TY_CHALLENGE, &ephemeral.public());
                let th = transcript(&greeting(TY_HELLO, &e_f), &head);
                let keys = Schedule::derive(&psk, ephemeral, &e_f, &th, "front-end")?;
                let mut challenge =
                    BytesMut::with_capacity(wire::LEN_PREFIX + GREETING_LEN + PROOF_LEN);
                put_message(&mut challenge, &[&head, &keys.back_proof[..]]);
                Ok((
                    BackState::AwaitProof {
                        keys: Box::new(keys),
                    },
                    BackStep::Send(challenge.to_vec()),
                ))
            }
            BackState::AwaitProof { keys } => {
                let Some(mut r) = take_handshake(buf)? else {
                    return Ok((BackState::AwaitProof { keys }, BackStep::NeedMore));
                };
                expect_type(&mut r, TY_PROOF, "proof")?;
                let proof_f = r.array::<PROOF_LEN>("front proof")?;
                r.finish()?;
                if !proof_ok(&keys.front_proof, &proof_f) {
                    return Err(AuthError::BadProof { peer: "front-end" });
                }
                let step = BackStep::Done {
                    sealer: Sealer::new(&keys.b2f),
                    opener: Opener::new(&keys.f2b),
                };
                Ok((BackState::Finished, step))
            }
            BackState::Finished => Err(AuthError::Finished),
        }
    }
}

/// Appends a length prefix and the concatenated `parts` (the first part
/// starts with the message type).
fn put_message(out: &mut BytesMut, parts: &[&[u8]]) {
    let len = parts.iter().map(|p| p.len()).sum::<usize>();
    // Handshake messages are a few dozen bytes.
    out.put_u32(len as u32);
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
    const OTHER_KEY: &[u8] = b"another key, 16+ bytes";

    fn psk(key: &[u8]) -> Psk {
        Psk::new(key).expect("long enough")
    }

    fn eph(seed: u8) -> EphemeralKey {
        EphemeralKey::from_bytes([seed; KEY_LEN])
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
        eph_f: u8,
        eph_b: u8,
    ) -> Result<Channel, (&'static str, AuthError)> {
        let (mut front, hello) = FrontHandshake::start(psk(front_key), eph(eph_f));
        let mut back = BackHandshake::new(psk(back_key), eph(eph_b));
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

    fn challenge_for(back: &mut BackHandshake, hello: &[u8]) -> Vec<u8> {
        match back.handle(&mut BytesMut::from(hello)) {
            Ok(BackStep::Send(challenge)) => challenge,
            other => panic!("expected a challenge, got {other:?}"),
        }
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

    /// Fixed inputs, expected bytes: any change of the construction (labels,
    /// transcript, key schedule, nonce layout, AAD) changes these. The
    /// ephemeral secrets are RFC 7748's (section 6.1) Alice (front) and Bob
    /// (back), so the public keys in Hello and Challenge are the RFC's.
    #[test]
    fn test_vectors() {
        let secret = |h: &str| {
            let mut b = [0u8; KEY_LEN];
            hex::decode_to_slice(h, &mut b).expect("hex");
            EphemeralKey::from_bytes(b)
        };
        let alice = secret("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let bob = secret("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
        let key = psk(b"baton test vector pre-shared key");
        let (mut front, hello) = FrontHandshake::start(key.clone(), alice);
        let mut back = BackHandshake::new(key, bob);
        let challenge = challenge_for(&mut back, &hello);
        let done = front
            .handle(&mut BytesMut::from(&challenge[..]))
            .expect("challenge ok")
            .expect("complete");
        let BackStep::Done {
            sealer: mut back_sealer,
            opener: mut back_opener,
        } = back
            .handle(&mut BytesMut::from(&done.proof[..]))
            .expect("proof ok")
        else {
            panic!("expected completion");
        };
        let (mut front_sealer, mut front_opener) = (done.sealer, done.opener);
        let ping = seal(&mut front_sealer, &Frame::Ping { nonce: 1 });
        let pong = seal(&mut back_sealer, &Frame::Pong { nonce: 1 });

        assert_eq!(
            hex::encode(&hello),
            concat!(
                "00000023",
                "80",
                "0004",
                "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
            )
        );
        assert_eq!(
            hex::encode(&challenge),
            concat!(
                "00000043",
                "81",
                "0004",
                "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
                "0fbfa6129e49aeb36fbfae378d94bf5ac9aaceba909fc4f9d54ba2a7dac3eff7",
            )
        );
        assert_eq!(
            hex::encode(&done.proof),
            concat!(
                "00000021",
                "82",
                "c033fed490a9460892906176cbd52701482776280ec7a45524fe1e47463705d7"
            )
        );
        assert_eq!(
            hex::encode(&ping),
            concat!(
                "00000019",
                "e7e23f16bbd91520e2c7fd56bfc1b6bd913619ad620417de02"
            )
        );
        assert_eq!(
            hex::encode(&pong),
            concat!(
                "00000019",
                "23060c3f4a25eec52f0738a54aff07157a27e5a0c801eb5c80"
            )
        );
        assert_eq!(
            back_opener.open(&mut ping.clone()),
            Ok(Some(Frame::Ping { nonce: 1 }))
        );
        assert_eq!(
            front_opener.open(&mut pong.clone()),
            Ok(Some(Frame::Pong { nonce: 1 }))
        );
    }

    #[test]
    fn frames_pipelined_behind_the_proof_stay_in_the_buffer_for_the_opener() {
        let (mut front, hello) = FrontHandshake::start(psk(KEY), eph(3));
        let mut back = BackHandshake::new(psk(KEY), eph(4));
        let challenge = challenge_for(&mut back, &hello);
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
        let err = handshake(KEY, OTHER_KEY, 1, 2).err();
        assert_eq!(
            err,
            Some(("front", AuthError::BadProof { peer: "back-end" }))
        );
    }

    /// A front with another key that goes on regardless (computes its proof
    /// with its key) is refused by the back. Neither side learns which key
    /// is "right": both only see a proof that does not verify.
    #[test]
    fn wrong_key_is_caught_by_the_back() {
        let (mut front, hello) = FrontHandshake::start(psk(OTHER_KEY), eph(5));
        let mut back = BackHandshake::new(psk(KEY), eph(6));
        let challenge = challenge_for(&mut back, &hello);
        assert_eq!(
            front.handle(&mut BytesMut::from(&challenge[..])).err(),
            Some(AuthError::BadProof { peer: "back-end" })
        );
        // The impostor's proof, derived as the protocol says with its key.
        let e_b: [u8; KEY_LEN] = challenge[7..7 + KEY_LEN].try_into().expect("32 bytes");
        let th = transcript(
            &greeting(TY_HELLO, &eph(5).public()),
            &greeting(TY_CHALLENGE, &e_b),
        );
        let keys =
            Schedule::derive(&psk(OTHER_KEY), eph(5), &e_b, &th, "back-end").expect("contributory");
        let mut proof = BytesMut::new();
        put_message(&mut proof, &[&[TY_PROOF], &keys.front_proof[..]]);
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
        // The back's proof, sent back as the front's proof.
        let (_, hello) = FrontHandshake::start(psk(KEY), eph(7));
        let mut back = BackHandshake::new(psk(KEY), eph(7));
        let challenge = challenge_for(&mut back, &hello);
        let proof_b = &challenge[4 + GREETING_LEN..];
        let mut reflected = BytesMut::new();
        put_message(&mut reflected, &[&[TY_PROOF], proof_b]);
        assert_eq!(
            back.handle(&mut reflected).err(),
            Some(AuthError::BadProof { peer: "front-end" })
        );
    }

    #[test]
    fn a_substituted_ephemeral_key_fails_the_proofs() {
        // A man in the middle without the PSK replaces the back's key with
        // its own: the front's transcript differs, so the proof fails.
        let (mut front, hello) = FrontHandshake::start(psk(KEY), eph(1));
        let mut back = BackHandshake::new(psk(KEY), eph(2));
        let mut challenge = challenge_for(&mut back, &hello);
        challenge[7..7 + KEY_LEN].copy_from_slice(&eph(66).public());
        assert_eq!(
            front.handle(&mut BytesMut::from(&challenge[..])).err(),
            Some(AuthError::BadProof { peer: "back-end" })
        );
        // Likewise the front's key, towards the back.
        let (mut front, mut hello) = FrontHandshake::start(psk(KEY), eph(1));
        let mut back = BackHandshake::new(psk(KEY), eph(2));
        hello[7..7 + KEY_LEN].copy_from_slice(&eph(66).public());
        let challenge = challenge_for(&mut back, &hello);
        assert_eq!(
            front.handle(&mut BytesMut::from(&challenge[..])).err(),
            Some(AuthError::BadProof { peer: "back-end" })
        );
    }

    /// The u-coordinates of the points of small order on Curve25519 (and
    /// their non-canonical encodings): X25519 with any of them is all zero.
    const LOW_ORDER: [&str; 7] = [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ];

    #[test]
    fn low_order_ephemeral_keys_are_refused_on_both_sides() {
        for point in LOW_ORDER {
            let mut key = [0u8; KEY_LEN];
            hex::decode_to_slice(point, &mut key).expect("hex");

            let mut back = BackHandshake::new(psk(KEY), eph(2));
            let mut hello = BytesMut::new();
            put_message(&mut hello, &[&greeting(TY_HELLO, &key)]);
            assert_eq!(
                back.handle(&mut hello).err(),
                Some(AuthError::WeakKey { peer: "front-end" }),
                "{point}"
            );

            let (mut front, _) = FrontHandshake::start(psk(KEY), eph(1));
            let mut challenge = BytesMut::new();
            put_message(
                &mut challenge,
                &[&greeting(TY_CHALLENGE, &key), &[0x5a; PROOF_LEN]],
            );
            assert_eq!(
                front.handle(&mut challenge).err(),
                Some(AuthError::WeakKey { peer: "back-end" }),
                "{point}"
            );
        }
    }

    #[test]
    fn version_mismatch_is_named_on_both_sides() {
        let mut back = BackHandshake::new(psk(KEY), eph(1));
        // A version-9 hello with a different layout: only the version is read.
        let mut hello = BytesMut::new();
        put_message(&mut hello, &[&[TY_HELLO], &9u16.to_be_bytes(), b"v9 body"]);
        let Ok(BackStep::Reject { reply, error }) = back.handle(&mut hello) else {
            panic!("expected a rejection");
        };
        assert_eq!(error, AuthError::VersionMismatch { ours: 4, theirs: 9 });
        assert_eq!(
            error.to_string(),
            "protocol version mismatch: this side speaks version 4, the peer speaks version 9"
        );
        // The reply carries the back's version where any front reads it.
        assert_eq!(&reply[4..7], &[TY_CHALLENGE, 0, 4]);

        let (mut front, _) = FrontHandshake::start(psk(KEY), eph(1));
        let mut challenge = BytesMut::new();
        put_message(&mut challenge, &[&[TY_CHALLENGE], &5u16.to_be_bytes()]);
        assert_eq!(
            front.handle(&mut challenge).err(),
            Some(AuthError::VersionMismatch { ours: 4, theirs: 5 })
        );
    }

    /// Version 2 (HMAC only, no encryption) sent `Hello {2, nonce}` and
    /// answered a foreign hello with `Challenge {2, 0…, 0…}`: both ends name
    /// both versions against it.
    #[test]
    fn a_version_2_peer_gets_the_version_mismatch_error() {
        let mut v2_hello = vec![0, 0, 0, 35, TY_HELLO, 0, 2];
        v2_hello.extend_from_slice(&[0x11; 32]);
        let mut back = BackHandshake::new(psk(KEY), eph(1));
        let Ok(BackStep::Reject { error, .. }) = back.handle(&mut BytesMut::from(&v2_hello[..]))
        else {
            panic!("expected a rejection");
        };
        assert_eq!(error, AuthError::VersionMismatch { ours: 4, theirs: 2 });

        let mut v2_reject = vec![0, 0, 0, 67, TY_CHALLENGE, 0, 2];
        v2_reject.extend_from_slice(&[0; 64]);
        let (mut front, _) = FrontHandshake::start(psk(KEY), eph(1));
        assert_eq!(
            front.handle(&mut BytesMut::from(&v2_reject[..])).err(),
            Some(AuthError::VersionMismatch { ours: 4, theirs: 2 })
        );
    }

    #[test]
    fn out_of_order_or_oversized_handshake_messages_fail() {
        let mut back = BackHandshake::new(psk(KEY), eph(1));
        let mut proof = BytesMut::new();
        put_message(&mut proof, &[&[TY_PROOF], &[0; PROOF_LEN]]);
        assert_eq!(
            back.handle(&mut proof).err(),
            Some(AuthError::UnexpectedMessage {
                expected: "hello",
                got: TY_PROOF
            })
        );

        let (mut front, _) = FrontHandshake::start(psk(KEY), eph(1));
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
        let (mut front, hello) = FrontHandshake::start(psk(KEY), eph(1));
        let mut back = BackHandshake::new(psk(KEY), eph(2));
        for cut in 0..hello.len() {
            let mut buf = BytesMut::from(&hello[..cut]);
            assert!(
                matches!(back.handle(&mut buf), Ok(BackStep::NeedMore)),
                "hello cut at {cut}"
            );
        }
        let challenge = challenge_for(&mut back, &hello);
        for cut in 0..challenge.len() {
            let mut buf = BytesMut::from(&challenge[..cut]);
            assert!(
                matches!(front.handle(&mut buf), Ok(None)),
                "challenge cut at {cut}"
            );
        }
    }

    #[test]
    fn every_tampered_handshake_byte_fails_the_handshake() {
        let (_, hello) = FrontHandshake::start(psk(KEY), eph(1));
        let challenge = challenge_for(&mut BackHandshake::new(psk(KEY), eph(2)), &hello);
        for i in 4..hello.len() {
            let mut bad = hello.clone();
            bad[i] ^= 0x01;
            let (mut front, _) = FrontHandshake::start(psk(KEY), eph(1));
            let mut back = BackHandshake::new(psk(KEY), eph(2));
            if let Ok(BackStep::Send(c)) = back.handle(&mut BytesMut::from(&bad[..])) {
                assert!(
                    front.handle(&mut BytesMut::from(&c[..])).is_err(),
                    "hello byte {i}"
                );
            }
        }
        for i in 4..challenge.len() {
            let mut bad = challenge.clone();
            bad[i] ^= 0x01;
            let (mut front, _) = FrontHandshake::start(psk(KEY), eph(1));
            assert!(
                front.handle(&mut BytesMut::from(&bad[..])).is_err(),
                "challenge byte {i}"
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
    fn a_frame_cut_short_with_a_matching_length_is_rejected() {
        // Truncation that also rewrites the length prefix (so the frame
        // looks complete) fails authentication: the prefix is the AAD and
        // the tag covers the ciphertext length.
        let mut ch = handshake(KEY, KEY, 1, 2).expect("same key");
        let good = seal(
            &mut ch.front_sealer,
            &Frame::Goodbye {
                reason: "drain".into(),
            },
        );
        for cut in 1 + TAG_LEN..good.len() - 4 {
            let mut bad = BytesMut::from(&(cut as u32).to_be_bytes()[..]);
            bad.extend_from_slice(&good[4..4 + cut]);
            assert_eq!(
                ch.back_opener.clone().open(&mut bad),
                Err(ProtoError::BadTag { seq: 0 }),
                "cut to {cut}"
            );
        }
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
        // A claimed length above the opener's limit fails at the prefix.
        let mut small = ch.back_opener.with_limits(limits);
        let mut huge = BytesMut::from(&[0, 0, 1, 0][..]);
        assert!(matches!(
            small.open(&mut huge),
            Err(ProtoError::FrameTooLarge { len: 256, max: 64 })
        ));
    }

    #[test]
    fn sequence_numbers_never_wrap() {
        let ch = handshake(KEY, KEY, 1, 2).expect("same key");
        let (mut sealer, mut opener) = (ch.front_sealer, ch.back_opener);
        sealer.seq = u64::MAX - 1;
        opener.seq = u64::MAX - 1;
        let mut wire = seal(&mut sealer, &Frame::Ping { nonce: 1 });
        let mut out = BytesMut::new();
        assert_eq!(
            sealer.seal(&Frame::Ping { nonce: 2 }, &mut out),
            Err(ProtoError::SequenceExhausted)
        );
        assert!(out.is_empty());
        assert_eq!(opener.open(&mut wire), Ok(Some(Frame::Ping { nonce: 1 })));
        // Whatever comes next is refused, not opened under nonce 0.
        let mut next = wire.clone();
        next.extend_from_slice(&[0, 0, 0, 17]);
        next.extend_from_slice(&[0; 17]);
        assert_eq!(opener.open(&mut next), Err(ProtoError::SequenceExhausted));
    }

    #[test]
    fn short_keys_are_refused_and_secrets_never_printed() {
        assert_eq!(
            Psk::new([0u8; 15]).err(),
            Some(AuthError::KeyTooShort { len: 15, min: 16 })
        );
        let shown = format!("{:?}", psk(b"SECRETSECRETSECRET"));
        assert!(
            !shown.contains("SECRET") && !shown.contains("83, 69"),
            "{shown}"
        );
        let shown = format!("{:?}", eph(0x41));
        assert!(!shown.contains("65") && !shown.contains('A'), "{shown}");
        let ch = handshake(KEY, KEY, 1, 2).expect("same key");
        let shown = format!("{:?} {:?}", ch.front_sealer, ch.back_opener);
        assert!(shown.contains("seq") && !shown.contains("key"), "{shown}");
    }
}
