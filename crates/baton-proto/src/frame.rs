//! Control-channel messages and their wire codec.
//!
//! # Wire format (version [`PROTOCOL_VERSION`])
//!
//! ```text
//! +----------------+------+-----------------+
//! | len: u32 BE    | type | body            |
//! +----------------+------+-----------------+
//!                  |<------ len bytes ----->|
//! ```
//!
//! All integers are big-endian and fixed-width. Strings are a `u16` byte
//! length followed by UTF-8; byte blobs are a `u32` length followed by the
//! bytes. [`Frame::encode`]/[`Frame::decode`] are this clear form (tests,
//! tools, fuzzing). On a channel that completed the [`auth`](crate::auth)
//! handshake, `type || body` is encrypted with ChaCha20-Poly1305 and `len`
//! also counts the 16-byte tag behind it: [`Sealer`](crate::auth::Sealer)
//! and [`Opener`](crate::auth::Opener) (layout in [`auth`](crate::auth)).
//!
//! | type | frame      | direction | body                                   |
//! |------|------------|-----------|----------------------------------------|
//! | 1    | `Handoff`  | to back   | id u64, flow, state, data, sent, tls, hint |
//! | 2    | `Live`     | to front  | id u64, restore_us u32                 |
//! | 3    | `Refused`  | to front  | id u64, backend_fault u8 (0/1), reason |
//! | 5    | `Abort`    | to back   | id u64                                 |
//! | 6    | `Closed`   | to front  | id u64, flow                           |
//! | 7    | `Load`     | to front  | active u32, total u64                  |
//! | 8    | `Ping`     | both      | nonce u64                              |
//! | 9    | `Pong`     | both      | nonce u64                              |
//! | 10   | `Goodbye`  | both      | reason string                          |
//! | 11   | `Holding`  | to front  | done u8 (0/1), count u32, count x u64  |
//! | 12   | `Mirror`   | to front  | count u32, count x mirrored            |
//! | 13   | `Unmirror` | to front  | count u32, count x (origin, id u64, flow) |
//! | 14   | `Mirroring`| to front  | done u8 (0/1), count u32, count x mirrored |
//!
//! Type 4 was version 1's `Go`; it is not reused.
//!
//! `mirrored` is origin, id u64, flow, hint. `origin` is the origin front's
//! address as 16 bytes (an IPv4 address as `::ffff:a.b.c.d`; decoded back
//! to IPv4). `hint` is a `u16` length and at most [`MAX_HINT`] bytes.
//!
//! `flow` is client IPv4 (4), client port (2), VIP (4), VIP port (2).
//! `state` is snd_seq u32, rcv_seq u32, mss u16, flags u8 (bit 0 window
//! scaling, bit 1 timestamps, bit 2 SACK; other bits must be zero),
//! snd_wscale u8, rcv_wscale u8, ts_val u32, then the five `u32` of
//! [`RepairWindow`] in declaration order. `data`, `sent` and `tls` are
//! byte blobs (see [`Handoff`]); `hint` is a `u16` length and at most
//! [`MAX_HINT`] bytes.
//!
//! # Limits
//!
//! The decoder rejects a claimed length above [`FrameLimits::max_frame_len`]
//! as soon as the four prefix bytes arrive, and reserves at most the claimed
//! length while waiting for the rest. A hint longer than [`MAX_HINT`], or a
//! `Holding`, `Mirror`, `Unmirror` or `Mirroring` that claims more entries
//! than one chunk ([`HOLDING_CHUNK`], [`MIRROR_CHUNK`]) or than its bytes
//! hold, is refused before anything is reserved for it. A decode error
//! leaves the stream at an unknown position: the channel must be closed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4};

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::flow::FlowKey;
use crate::tcp::{RepairWindow, TcpState};
use crate::wire::{self, Reader, LEN_PREFIX};

/// The version both ends announce in the handshake; bump it on any change to
/// the wire format or to the meaning of a frame.
pub const PROTOCOL_VERSION: u16 = 4;

/// A control-channel message.
///
/// The id of a handoff is chosen by the front-end and is unique on one
/// channel; every later frame about that connection carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Front to back: restore this connection.
    Handoff(Handoff),
    /// Back to front: the socket is restored and live; the back-end serves
    /// the client from now on.
    Live { id: u64, restore_us: u32 },
    /// Back to front: the handoff was not accepted; the front still owns the
    /// connection.
    ///
    /// `backend_fault`: the back-end itself cannot restore connections now
    /// (the front takes it out of rotation for a while); otherwise only this
    /// connection could not be restored.
    Refused {
        id: u64,
        reason: String,
        backend_fault: bool,
    },
    /// Front to back: the front gave up on this handoff (it reset the
    /// client). A back-end that has not restored it yet never will; one
    /// that has resets the connection.
    Abort { id: u64 },
    /// Back to front: the connection finished on the back-end.
    Closed { id: u64, flow: FlowKey },
    /// Back to front, periodic: how busy the back-end is.
    Load(LoadReport),
    /// Either direction: liveness probe; answered with the same nonce.
    Ping { nonce: u64 },
    /// Answer to [`Frame::Ping`].
    Pong { nonce: u64 },
    /// Either direction: orderly shutdown; no new handoffs after this.
    Goodbye { reason: String },
    /// Back to front, first thing on every channel: the handoffs of this
    /// front (by id) that the back-end still serves, in chunks; `done` on
    /// the last. The front forgets the flows it thought lived there and
    /// that are not listed.
    Holding { ids: Vec<u64>, done: bool },
    /// Back to every front but the origin: these connections, handed to
    /// this back-end by another front, are live here (steer their packets
    /// here if they reach you).
    Mirror { flows: Vec<MirrorFlow> },
    /// Back to every front told of them by `Mirror` or `Mirroring`: these
    /// connections ended.
    Unmirror { flows: Vec<MirrorRef> },
    /// Back to front, on every channel right after `Holding`: every
    /// connection this back-end serves for other fronts, in chunks; `done`
    /// on the last. The front forgets the mirrored flows of this back-end
    /// that are not listed.
    Mirroring { flows: Vec<MirrorFlow>, done: bool },
}

/// The most ids one `Holding` frame carries (64 KiB of ids).
pub const HOLDING_CHUNK: usize = 8192;

/// The most flows one `Mirror`, `Unmirror` or `Mirroring` frame carries
/// (at most 300 KiB with the longest hints; about 40 KiB without).
pub const MIRROR_CHUNK: usize = 1024;

/// The longest `hint` a `Handoff` (and so a `Mirror`) carries.
pub const MAX_HINT: usize = 256;

/// A connection a back-end serves for another front, as told to the other
/// fronts (`Mirror`, `Mirroring`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorFlow {
    /// The front that handed it off, as the back-end sees its channel.
    pub origin: IpAddr,
    /// The origin front's handoff id.
    pub id: u64,
    pub flow: FlowKey,
    /// The `hint` of its `Handoff`, echoed (opaque to the back-end).
    pub hint: Bytes,
}

impl MirrorFlow {
    /// Its identity, as `Unmirror` names it.
    pub fn as_ref(&self) -> MirrorRef {
        MirrorRef {
            origin: self.origin,
            id: self.id,
            flow: self.flow,
        }
    }
}

/// A mirrored connection's identity: the origin front, its handoff id
/// there, and the 4-tuple (`Unmirror`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MirrorRef {
    pub origin: IpAddr,
    pub id: u64,
    pub flow: FlowKey,
}

/// Handoff frames a front-end sends: the input of the back-end's
/// [`BackEngine`](crate::handoff::BackEngine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToBack {
    Handoff(Handoff),
    Abort { id: u64 },
}

/// Handoff frames a back-end sends: the input of the front-end's
/// [`FrontEngine`](crate::handoff::FrontEngine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToFront {
    Live {
        id: u64,
        restore_us: u32,
    },
    Refused {
        id: u64,
        reason: String,
        backend_fault: bool,
    },
    Closed {
        id: u64,
        flow: FlowKey,
    },
    Holding {
        ids: Vec<u64>,
        done: bool,
    },
    Mirror {
        flows: Vec<MirrorFlow>,
    },
    Unmirror {
        flows: Vec<MirrorRef>,
    },
    Mirroring {
        flows: Vec<MirrorFlow>,
        done: bool,
    },
}

/// Channel housekeeping, handled by the channel itself, not by a handoff
/// engine. `Load` goes from back to front only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    Load(LoadReport),
    Ping { nonce: u64 },
    Pong { nonce: u64 },
    Goodbye { reason: String },
}

/// A received frame, sorted by who handles it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming<T> {
    /// For the handoff engine.
    Handoff(T),
    /// For the channel.
    Link(Link),
}

/// A frame that only the other side may send (a peer that sends it is
/// broken or hostile: the channel is closed).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("a {0} frame is not sent in this direction")]
pub struct WrongDirection(pub &'static str);

impl From<ToBack> for Frame {
    fn from(f: ToBack) -> Frame {
        match f {
            ToBack::Handoff(h) => Frame::Handoff(h),
            ToBack::Abort { id } => Frame::Abort { id },
        }
    }
}

impl From<ToFront> for Frame {
    fn from(f: ToFront) -> Frame {
        match f {
            ToFront::Live { id, restore_us } => Frame::Live { id, restore_us },
            ToFront::Refused {
                id,
                reason,
                backend_fault,
            } => Frame::Refused {
                id,
                reason,
                backend_fault,
            },
            ToFront::Closed { id, flow } => Frame::Closed { id, flow },
            ToFront::Holding { ids, done } => Frame::Holding { ids, done },
            ToFront::Mirror { flows } => Frame::Mirror { flows },
            ToFront::Unmirror { flows } => Frame::Unmirror { flows },
            ToFront::Mirroring { flows, done } => Frame::Mirroring { flows, done },
        }
    }
}

impl From<Link> for Frame {
    fn from(f: Link) -> Frame {
        match f {
            Link::Load(l) => Frame::Load(l),
            Link::Ping { nonce } => Frame::Ping { nonce },
            Link::Pong { nonce } => Frame::Pong { nonce },
            Link::Goodbye { reason } => Frame::Goodbye { reason },
        }
    }
}

impl Frame {
    /// Sorts a frame a front-end received.
    pub fn into_front(self) -> Result<Incoming<ToFront>, WrongDirection> {
        Ok(match self {
            Frame::Live { id, restore_us } => Incoming::Handoff(ToFront::Live { id, restore_us }),
            Frame::Refused {
                id,
                reason,
                backend_fault,
            } => Incoming::Handoff(ToFront::Refused {
                id,
                reason,
                backend_fault,
            }),
            Frame::Closed { id, flow } => Incoming::Handoff(ToFront::Closed { id, flow }),
            Frame::Holding { ids, done } => Incoming::Handoff(ToFront::Holding { ids, done }),
            Frame::Mirror { flows } => Incoming::Handoff(ToFront::Mirror { flows }),
            Frame::Unmirror { flows } => Incoming::Handoff(ToFront::Unmirror { flows }),
            Frame::Mirroring { flows, done } => {
                Incoming::Handoff(ToFront::Mirroring { flows, done })
            }
            Frame::Load(l) => Incoming::Link(Link::Load(l)),
            Frame::Ping { nonce } => Incoming::Link(Link::Ping { nonce }),
            Frame::Pong { nonce } => Incoming::Link(Link::Pong { nonce }),
            Frame::Goodbye { reason } => Incoming::Link(Link::Goodbye { reason }),
            other @ (Frame::Handoff(_) | Frame::Abort { .. }) => {
                return Err(WrongDirection(other.kind()))
            }
        })
    }

    /// Sorts a frame a back-end received.
    pub fn into_back(self) -> Result<Incoming<ToBack>, WrongDirection> {
        Ok(match self {
            Frame::Handoff(h) => Incoming::Handoff(ToBack::Handoff(h)),
            Frame::Abort { id } => Incoming::Handoff(ToBack::Abort { id }),
            Frame::Ping { nonce } => Incoming::Link(Link::Ping { nonce }),
            Frame::Pong { nonce } => Incoming::Link(Link::Pong { nonce }),
            Frame::Goodbye { reason } => Incoming::Link(Link::Goodbye { reason }),
            other @ (Frame::Live { .. }
            | Frame::Refused { .. }
            | Frame::Closed { .. }
            | Frame::Holding { .. }
            | Frame::Mirror { .. }
            | Frame::Unmirror { .. }
            | Frame::Mirroring { .. }
            | Frame::Load(_)) => return Err(WrongDirection(other.kind())),
        })
    }
}

/// One connection handed from the front-end to a back-end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    /// Chosen by the front, echoed in `Live`/`Refused`/`Abort`/`Closed`.
    pub id: u64,
    /// The connection's addresses.
    pub flow: FlowKey,
    /// The dumped kernel state.
    pub state: TcpState,
    /// Bytes the client sent that the back-end's application has not read
    /// yet: the request head the front read, then the unread receive queue.
    /// On a TLS connection: the ciphertext the front read but did not
    /// decrypt, then the unread receive queue (the decrypted head is in
    /// `tls`).
    pub data: Bytes,
    /// Bytes the front sent that the client has not acknowledged yet (the
    /// socket's send queue, such as TLS 1.3 session tickets): the back-end
    /// restores them as sent and unacknowledged, and its kernel retransmits
    /// them if they were lost. Empty for plain HTTP (the front never
    /// writes to a connection it hands off).
    pub sent: Bytes,
    /// The TLS session to continue (`baton_tls::Carried`: the session state
    /// with its keys, then the application data the front already
    /// decrypted); empty for plain HTTP.
    pub tls: Bytes,
    /// Opaque to the back-end, at most [`MAX_HINT`] bytes: echoed to the
    /// other fronts in `Mirror` and `Mirroring` (the front's policy puts
    /// what the other fronts' policies should learn there, such as the
    /// request's target). Empty by default.
    pub hint: Bytes,
}

/// A back-end's periodic load report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadReport {
    /// Connections open right now.
    pub active: u32,
    /// Connections accepted since the back-end started.
    pub total: u64,
}

/// Size limits applied when encoding and decoding frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest accepted value of the length prefix (type, body and tag).
    /// The wire caps it at `u32::MAX`.
    pub max_frame_len: usize,
    /// Longest accepted string, in bytes. The wire caps it at `u16::MAX`.
    /// Longer strings are truncated (at a character boundary) when encoding:
    /// strings are human-readable reasons, and a long one must not kill a
    /// channel carrying other connections.
    pub max_string_len: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            max_frame_len: 16 << 20,
            max_string_len: 1024,
        }
    }
}

impl FrameLimits {
    pub(crate) fn frame_max(&self) -> usize {
        self.max_frame_len.min(u32::MAX as usize)
    }

    fn string_max(&self) -> usize {
        self.max_string_len.min(u16::MAX as usize)
    }
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtoError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("frame of {len} bytes is shorter than the minimum of {min} bytes")]
    FrameTooShort { len: usize, min: usize },
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    #[error("frame truncated while reading {0}")]
    Truncated(&'static str),
    #[error("{0} unexpected bytes after the end of the frame body")]
    TrailingBytes(usize),
    #[error("string of {len} bytes exceeds the limit of {max} bytes")]
    StringTooLong { len: usize, max: usize },
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    #[error("unknown TCP option flags {0:#04x}")]
    InvalidFlags(u8),
    #[error("{what}: {len} exceeds the limit of {max}")]
    OverLimit {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error(
        "frame #{seq} failed authentication: tampered, truncated, replayed, reordered or injected"
    )]
    BadTag { seq: u64 },
    #[error("the channel used up its 2^64 - 1 frame numbers in one direction and must be re-established")]
    SequenceExhausted,
    #[error("the channel failed earlier and must be closed")]
    Poisoned,
}

mod ty {
    pub const HANDOFF: u8 = 1;
    pub const LIVE: u8 = 2;
    pub const REFUSED: u8 = 3;
    pub const ABORT: u8 = 5;
    pub const CLOSED: u8 = 6;
    pub const LOAD: u8 = 7;
    pub const PING: u8 = 8;
    pub const PONG: u8 = 9;
    pub const GOODBYE: u8 = 10;
    pub const HOLDING: u8 = 11;
    pub const MIRROR: u8 = 12;
    pub const UNMIRROR: u8 = 13;
    pub const MIRRORING: u8 = 14;
}

const FLOW_LEN: usize = 12;
const ORIGIN_LEN: usize = 16;
/// An `Unmirror` entry; a mirrored flow is this plus the hint.
const MIRROR_REF_LEN: usize = ORIGIN_LEN + 8 + FLOW_LEN;
const STATE_LEN: usize = 4 + 4 + 2 + 1 + 1 + 1 + 4 + 5 * 4;
const FLAG_WSCALE: u8 = 1 << 0;
const FLAG_TIMESTAMPS: u8 = 1 << 1;
const FLAG_SACK: u8 = 1 << 2;
const KNOWN_FLAGS: u8 = FLAG_WSCALE | FLAG_TIMESTAMPS | FLAG_SACK;

impl Frame {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Handoff(_) => "handoff",
            Frame::Live { .. } => "live",
            Frame::Refused { .. } => "refused",
            Frame::Abort { .. } => "abort",
            Frame::Closed { .. } => "closed",
            Frame::Load(_) => "load",
            Frame::Ping { .. } => "ping",
            Frame::Pong { .. } => "pong",
            Frame::Goodbye { .. } => "goodbye",
            Frame::Holding { .. } => "holding",
            Frame::Mirror { .. } => "mirror",
            Frame::Unmirror { .. } => "unmirror",
            Frame::Mirroring { .. } => "mirroring",
        }
    }

    /// The handoff this frame is about, if any.
    pub fn handoff_id(&self) -> Option<u64> {
        match self {
            Frame::Handoff(h) => Some(h.id),
            Frame::Live { id, .. }
            | Frame::Refused { id, .. }
            | Frame::Abort { id }
            | Frame::Closed { id, .. } => Some(*id),
            Frame::Load(_)
            | Frame::Ping { .. }
            | Frame::Pong { .. }
            | Frame::Goodbye { .. }
            | Frame::Holding { .. }
            | Frame::Mirror { .. }
            | Frame::Unmirror { .. }
            | Frame::Mirroring { .. } => None,
        }
    }

    /// Appends the unsealed encoding (length prefix, type, body) to `out`.
    ///
    /// Fails only with [`ProtoError::FrameTooLarge`], in which case nothing
    /// was written.
    pub fn encode(&self, limits: &FrameLimits, out: &mut BytesMut) -> Result<(), ProtoError> {
        encode_with_trailer(self, limits, 0, out)
    }

    /// Takes one unsealed frame off the front of `buf`. `Ok(None)` means
    /// more bytes are needed; `buf` is then unchanged.
    pub fn decode(buf: &mut BytesMut, limits: &FrameLimits) -> Result<Option<Frame>, ProtoError> {
        match wire::take_message(buf, 1, limits.frame_max())? {
            Some(payload) => decode_payload(payload, limits).map(Some),
            None => Ok(None),
        }
    }

    /// Length of type byte plus body, with strings as they will be encoded.
    fn payload_len(&self, limits: &FrameLimits) -> usize {
        let string = |s: &str| 2 + truncated(s, limits.string_max()).len();
        1 + match self {
            Frame::Handoff(h) => {
                8 + FLOW_LEN
                    + STATE_LEN
                    + 12
                    + h.data.len()
                    + h.sent.len()
                    + h.tls.len()
                    + hint_len(&h.hint)
            }
            Frame::Live { .. } => 8 + 4,
            Frame::Abort { .. } => 8,
            Frame::Refused { reason, .. } => 8 + 1 + string(reason),
            Frame::Closed { .. } => 8 + FLOW_LEN,
            Frame::Load(_) => 4 + 8,
            Frame::Ping { .. } | Frame::Pong { .. } => 8,
            Frame::Goodbye { reason } => string(reason),
            Frame::Holding { ids, .. } => 1 + 4 + 8 * ids.len(),
            Frame::Mirror { flows } => 4 + mirrored_len(flows),
            Frame::Unmirror { flows } => 4 + MIRROR_REF_LEN * flows.len(),
            Frame::Mirroring { flows, .. } => 1 + 4 + mirrored_len(flows),
        }
    }
}

/// Writes length prefix, type and body, leaving room in the length for a
/// `trailer` (the seal tag) that the caller appends. Checks the limit before
/// writing anything, so an oversized frame leaves `out` untouched.
pub(crate) fn encode_with_trailer(
    frame: &Frame,
    limits: &FrameLimits,
    trailer: usize,
    out: &mut BytesMut,
) -> Result<(), ProtoError> {
    let len = frame.payload_len(limits).saturating_add(trailer);
    let max = limits.frame_max();
    let prefix = match u32::try_from(len) {
        Ok(prefix) if len <= max => prefix,
        _ => return Err(ProtoError::FrameTooLarge { len, max }),
    };
    out.reserve(LEN_PREFIX + len);
    out.put_u32(prefix);
    encode_payload(frame, limits, out);
    Ok(())
}

fn encode_payload(frame: &Frame, limits: &FrameLimits, out: &mut BytesMut) {
    let max_str = limits.string_max();
    match frame {
        Frame::Handoff(h) => {
            out.put_u8(ty::HANDOFF);
            out.put_u64(h.id);
            put_flow(out, &h.flow);
            put_state(out, &h.state);
            // The caller checked the total against the frame limit, which is
            // capped at u32::MAX, so the length fits.
            for blob in [&h.data, &h.sent, &h.tls] {
                out.put_u32(blob.len() as u32);
                out.put_slice(blob);
            }
            put_hint(out, &h.hint);
        }
        Frame::Live { id, restore_us } => {
            put_id(out, ty::LIVE, *id);
            out.put_u32(*restore_us);
        }
        Frame::Refused {
            id,
            reason,
            backend_fault,
        } => {
            put_id(out, ty::REFUSED, *id);
            out.put_u8(u8::from(*backend_fault));
            put_str(out, reason, max_str);
        }
        Frame::Abort { id } => put_id(out, ty::ABORT, *id),
        Frame::Closed { id, flow } => {
            put_id(out, ty::CLOSED, *id);
            put_flow(out, flow);
        }
        Frame::Load(load) => {
            out.put_u8(ty::LOAD);
            out.put_u32(load.active);
            out.put_u64(load.total);
        }
        Frame::Ping { nonce } => put_id(out, ty::PING, *nonce),
        Frame::Pong { nonce } => put_id(out, ty::PONG, *nonce),
        Frame::Goodbye { reason } => {
            out.put_u8(ty::GOODBYE);
            put_str(out, reason, max_str);
        }
        Frame::Holding { ids, done } => {
            out.put_u8(ty::HOLDING);
            out.put_u8(u8::from(*done));
            // Senders chunk by HOLDING_CHUNK; the frame limit bounds it too.
            out.put_u32(u32::try_from(ids.len()).unwrap_or(u32::MAX));
            for id in ids {
                out.put_u64(*id);
            }
        }
        Frame::Mirror { flows } => {
            out.put_u8(ty::MIRROR);
            put_mirrored(out, flows);
        }
        Frame::Unmirror { flows } => {
            out.put_u8(ty::UNMIRROR);
            out.put_u32(u32::try_from(flows.len()).unwrap_or(u32::MAX));
            for m in flows {
                put_mirror_ref(out, m.origin, m.id, &m.flow);
            }
        }
        Frame::Mirroring { flows, done } => {
            out.put_u8(ty::MIRRORING);
            out.put_u8(u8::from(*done));
            put_mirrored(out, flows);
        }
    }
}

/// The hint as encoded: longer ones are cut at [`MAX_HINT`] (the engines
/// never make one; the cut keeps the frame decodable).
fn hint_of(hint: &Bytes) -> &[u8] {
    hint.get(..MAX_HINT).unwrap_or(hint)
}

fn hint_len(hint: &Bytes) -> usize {
    2 + hint_of(hint).len()
}

fn mirrored_len(flows: &[MirrorFlow]) -> usize {
    flows
        .iter()
        .map(|m| MIRROR_REF_LEN + hint_len(&m.hint))
        .sum()
}

fn put_hint(out: &mut BytesMut, hint: &Bytes) {
    let h = hint_of(hint);
    // At most MAX_HINT, which fits u16.
    out.put_u16(h.len() as u16);
    out.put_slice(h);
}

fn put_mirror_ref(out: &mut BytesMut, origin: IpAddr, id: u64, flow: &FlowKey) {
    let v6 = match origin {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    };
    out.put_slice(&v6.octets());
    out.put_u64(id);
    put_flow(out, flow);
}

fn put_mirrored(out: &mut BytesMut, flows: &[MirrorFlow]) {
    // Senders chunk by MIRROR_CHUNK; the frame limit bounds it too.
    out.put_u32(u32::try_from(flows.len()).unwrap_or(u32::MAX));
    for m in flows {
        put_mirror_ref(out, m.origin, m.id, &m.flow);
        put_hint(out, &m.hint);
    }
}

fn put_id(out: &mut BytesMut, ty: u8, id: u64) {
    out.put_u8(ty);
    out.put_u64(id);
}

fn put_flow(out: &mut BytesMut, flow: &FlowKey) {
    out.put_slice(&flow.client.ip().octets());
    out.put_u16(flow.client.port());
    out.put_slice(&flow.vip.ip().octets());
    out.put_u16(flow.vip.port());
}

fn put_state(out: &mut BytesMut, s: &TcpState) {
    out.put_u32(s.snd_seq);
    out.put_u32(s.rcv_seq);
    out.put_u16(s.mss);
    let mut flags = 0;
    if s.wscale_ok {
        flags |= FLAG_WSCALE;
    }
    if s.timestamps_ok {
        flags |= FLAG_TIMESTAMPS;
    }
    if s.sack_ok {
        flags |= FLAG_SACK;
    }
    out.put_u8(flags);
    out.put_u8(s.snd_wscale);
    out.put_u8(s.rcv_wscale);
    out.put_u32(s.ts_val);
    let w = &s.window;
    for v in [w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, w.rcv_wup] {
        out.put_u32(v);
    }
}

/// The longest prefix of `s` that is at most `max` bytes and ends on a
/// character boundary.
fn truncated(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.get(..cut).unwrap_or_default()
}

fn put_str(out: &mut BytesMut, s: &str, max: usize) {
    let s = truncated(s, max);
    // `max` is capped at u16::MAX by FrameLimits::string_max.
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

/// Parses type byte and body (the tag, if any, already removed).
pub(crate) fn decode_payload(payload: Bytes, limits: &FrameLimits) -> Result<Frame, ProtoError> {
    let mut r = Reader::new(payload);
    let frame = match r.u8("frame type")? {
        ty::HANDOFF => {
            let id = r.u64("handoff id")?;
            let flow = read_flow(&mut r)?;
            let state = read_state(&mut r)?;
            let mut blob = |what| -> Result<Bytes, ProtoError> {
                let len = r.u32(what)?;
                let len = usize::try_from(len).map_err(|_| ProtoError::Truncated(what))?;
                r.bytes(len, what)
            };
            let data = blob("handoff data")?;
            let sent = blob("handoff send queue")?;
            let tls = blob("handoff TLS session")?;
            let hint = read_hint(&mut r)?;
            Frame::Handoff(Handoff {
                id,
                flow,
                state,
                data,
                sent,
                tls,
                hint,
            })
        }
        ty::LIVE => Frame::Live {
            id: r.u64("id")?,
            restore_us: r.u32("restore time")?,
        },
        ty::REFUSED => Frame::Refused {
            id: r.u64("id")?,
            backend_fault: match r.u8("refusal scope")? {
                0 => false,
                1 => true,
                other => return Err(ProtoError::InvalidFlags(other)),
            },
            reason: read_str(&mut r, limits, "refusal reason")?,
        },
        ty::ABORT => Frame::Abort { id: r.u64("id")? },
        ty::CLOSED => Frame::Closed {
            id: r.u64("id")?,
            flow: read_flow(&mut r)?,
        },
        ty::LOAD => Frame::Load(LoadReport {
            active: r.u32("active connections")?,
            total: r.u64("total connections")?,
        }),
        ty::PING => Frame::Ping {
            nonce: r.u64("ping nonce")?,
        },
        ty::PONG => Frame::Pong {
            nonce: r.u64("pong nonce")?,
        },
        ty::GOODBYE => Frame::Goodbye {
            reason: read_str(&mut r, limits, "goodbye reason")?,
        },
        ty::HOLDING => {
            let done = match r.u8("holding done")? {
                0 => false,
                1 => true,
                other => return Err(ProtoError::InvalidFlags(other)),
            };
            let count = r.u32("holding count")?;
            // Checked against what the frame holds before anything is
            // reserved: a claimed count cannot make us allocate.
            let count = usize::try_from(count).unwrap_or(usize::MAX);
            if count > HOLDING_CHUNK || count.saturating_mul(8) > r.remaining() {
                return Err(ProtoError::Truncated("holding ids"));
            }
            let mut ids = Vec::with_capacity(count);
            for _ in 0..count {
                ids.push(r.u64("holding id")?);
            }
            Frame::Holding { ids, done }
        }
        ty::MIRROR => Frame::Mirror {
            flows: read_mirrored(&mut r)?,
        },
        ty::UNMIRROR => {
            let count = read_count(&mut r, MIRROR_REF_LEN, "unmirror count")?;
            let mut flows = Vec::with_capacity(count);
            for _ in 0..count {
                flows.push(read_mirror_ref(&mut r)?);
            }
            Frame::Unmirror { flows }
        }
        ty::MIRRORING => {
            let done = match r.u8("mirroring done")? {
                0 => false,
                1 => true,
                other => return Err(ProtoError::InvalidFlags(other)),
            };
            Frame::Mirroring {
                flows: read_mirrored(&mut r)?,
                done,
            }
        }
        other => return Err(ProtoError::UnknownType(other)),
    };
    r.finish()?;
    Ok(frame)
}

fn read_flow(r: &mut Reader) -> Result<FlowKey, ProtoError> {
    let client_ip = Ipv4Addr::from(r.array::<4>("client address")?);
    let client_port = r.u16("client port")?;
    let vip = Ipv4Addr::from(r.array::<4>("virtual address")?);
    let vip_port = r.u16("virtual port")?;
    Ok(FlowKey {
        client: SocketAddrV4::new(client_ip, client_port),
        vip: SocketAddrV4::new(vip, vip_port),
    })
}

fn read_hint(r: &mut Reader) -> Result<Bytes, ProtoError> {
    let len = usize::from(r.u16("hint length")?);
    if len > MAX_HINT {
        return Err(ProtoError::OverLimit {
            what: "hint bytes",
            len,
            max: MAX_HINT,
        });
    }
    r.bytes(len, "hint")
}

/// A chunk's entry count, checked against [`MIRROR_CHUNK`] and against
/// what the frame holds (at least `min_entry` bytes each) before anything
/// is reserved: a claimed count cannot make us allocate.
fn read_count(r: &mut Reader, min_entry: usize, what: &'static str) -> Result<usize, ProtoError> {
    let count = usize::try_from(r.u32(what)?).unwrap_or(usize::MAX);
    if count > MIRROR_CHUNK {
        return Err(ProtoError::OverLimit {
            what,
            len: count,
            max: MIRROR_CHUNK,
        });
    }
    if count.saturating_mul(min_entry) > r.remaining() {
        return Err(ProtoError::Truncated(what));
    }
    Ok(count)
}

fn read_mirror_ref(r: &mut Reader) -> Result<MirrorRef, ProtoError> {
    let origin = Ipv6Addr::from(r.array::<16>("origin front")?).to_canonical();
    let id = r.u64("origin handoff id")?;
    let flow = read_flow(r)?;
    Ok(MirrorRef { origin, id, flow })
}

fn read_mirrored(r: &mut Reader) -> Result<Vec<MirrorFlow>, ProtoError> {
    let count = read_count(r, MIRROR_REF_LEN + 2, "mirror count")?;
    let mut flows = Vec::with_capacity(count);
    for _ in 0..count {
        let MirrorRef { origin, id, flow } = read_mirror_ref(r)?;
        let hint = read_hint(r)?;
        flows.push(MirrorFlow {
            origin,
            id,
            flow,
            hint,
        });
    }
    Ok(flows)
}

fn read_state(r: &mut Reader) -> Result<TcpState, ProtoError> {
    let snd_seq = r.u32("snd_seq")?;
    let rcv_seq = r.u32("rcv_seq")?;
    let mss = r.u16("mss")?;
    let flags = r.u8("tcp option flags")?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(ProtoError::InvalidFlags(flags));
    }
    let snd_wscale = r.u8("snd_wscale")?;
    let rcv_wscale = r.u8("rcv_wscale")?;
    let ts_val = r.u32("ts_val")?;
    let window = RepairWindow {
        snd_wl1: r.u32("snd_wl1")?,
        snd_wnd: r.u32("snd_wnd")?,
        max_window: r.u32("max_window")?,
        rcv_wnd: r.u32("rcv_wnd")?,
        rcv_wup: r.u32("rcv_wup")?,
    };
    Ok(TcpState {
        snd_seq,
        rcv_seq,
        mss,
        wscale_ok: flags & FLAG_WSCALE != 0,
        snd_wscale,
        rcv_wscale,
        timestamps_ok: flags & FLAG_TIMESTAMPS != 0,
        sack_ok: flags & FLAG_SACK != 0,
        ts_val,
        window,
    })
}

fn read_str(
    r: &mut Reader,
    limits: &FrameLimits,
    what: &'static str,
) -> Result<String, ProtoError> {
    let len = usize::from(r.u16(what)?);
    let max = limits.string_max();
    if len > max {
        return Err(ProtoError::StringTooLong { len, max });
    }
    let raw = r.bytes(len, what)?;
    String::from_utf8(raw.to_vec()).map_err(|_| ProtoError::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> FlowKey {
        FlowKey {
            client: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 10), 40000),
            vip: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 80),
        }
    }

    fn handoff() -> Frame {
        Frame::Handoff(Handoff {
            id: 42,
            flow: flow(),
            state: TcpState {
                snd_seq: 1,
                rcv_seq: 2,
                mss: 1460,
                wscale_ok: true,
                snd_wscale: 7,
                rcv_wscale: 9,
                timestamps_ok: true,
                sack_ok: false,
                ts_val: 123_456,
                window: RepairWindow {
                    snd_wl1: 3,
                    snd_wnd: 4,
                    max_window: 5,
                    rcv_wnd: 6,
                    rcv_wup: 7,
                },
            },
            data: Bytes::from_static(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            sent: Bytes::from_static(b"ticket"),
            tls: Bytes::from_static(b"session"),
            hint: Bytes::from_static(b"/a"),
        })
    }

    fn mirrored(id: u64, hint: &'static [u8]) -> MirrorFlow {
        MirrorFlow {
            origin: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 102)),
            id,
            flow: flow(),
            hint: Bytes::from_static(hint),
        }
    }

    fn all_frames() -> Vec<Frame> {
        vec![
            handoff(),
            Frame::Live {
                id: 1,
                restore_us: 15,
            },
            Frame::Refused {
                id: 2,
                reason: "no capacity: 503 ✓".into(),
                backend_fault: true,
            },
            Frame::Holding {
                ids: vec![3, u64::MAX],
                done: true,
            },
            Frame::Holding {
                ids: Vec::new(),
                done: false,
            },
            Frame::Abort { id: u64::MAX },
            Frame::Closed {
                id: 4,
                flow: flow(),
            },
            Frame::Load(LoadReport {
                active: 5,
                total: 6,
            }),
            Frame::Ping { nonce: 7 },
            Frame::Pong { nonce: 8 },
            Frame::Goodbye {
                reason: String::new(),
            },
            Frame::Mirror {
                flows: vec![mirrored(9, b"target"), mirrored(u64::MAX, b"")],
            },
            Frame::Mirror { flows: vec![] },
            Frame::Unmirror {
                flows: vec![
                    mirrored(9, b"").as_ref(),
                    MirrorRef {
                        origin: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
                        id: 1,
                        flow: flow(),
                    },
                ],
            },
            Frame::Mirroring {
                flows: vec![mirrored(3, &[0xff; MAX_HINT])],
                done: true,
            },
            Frame::Mirroring {
                flows: vec![],
                done: false,
            },
        ]
    }

    fn encode(frame: &Frame) -> BytesMut {
        let mut out = BytesMut::new();
        frame
            .encode(&FrameLimits::default(), &mut out)
            .expect("encodes");
        out
    }

    fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, ProtoError> {
        Frame::decode(buf, &FrameLimits::default())
    }

    #[test]
    fn every_frame_round_trips_and_consumes_exactly_its_bytes() {
        let mut stream = BytesMut::new();
        for f in all_frames() {
            stream.extend_from_slice(&encode(&f));
        }
        for expected in all_frames() {
            assert_eq!(decode(&mut stream), Ok(Some(expected)));
        }
        assert!(stream.is_empty());
        assert_eq!(decode(&mut stream), Ok(None));
    }

    #[test]
    fn wire_layout_is_stable() {
        // Golden bytes: a change here is a protocol change (bump PROTOCOL_VERSION).
        assert_eq!(
            &encode(&Frame::Live {
                id: 0x0102,
                restore_us: 0x0304
            })[..],
            &[0, 0, 0, 13, 2, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 3, 4]
        );
        assert_eq!(
            &encode(&Frame::Goodbye {
                reason: "ab".into()
            })[..],
            &[0, 0, 0, 5, 10, 0, 2, b'a', b'b']
        );
        let closed = encode(&Frame::Closed {
            id: 1,
            flow: flow(),
        });
        assert_eq!(
            &closed[13..],
            &[198, 18, 0, 10, 0x9c, 0x40, 198, 18, 0, 1, 0, 80]
        );
        let h = encode(&handoff());
        assert_eq!(
            h.len(),
            4 + 1 + 8 + FLOW_LEN + STATE_LEN + (4 + 27) + (4 + 6) + (4 + 7) + (2 + 2)
        );
        // The three blobs in order: data, send queue, TLS session; then the hint.
        assert_eq!(&h[h.len() - 4..], b"\0\x02/a");
        assert_eq!(&h[h.len() - 15..h.len() - 4], b"\0\0\0\x07session");
        assert_eq!(&h[h.len() - 25..h.len() - 15], b"\0\0\0\x06ticket");
        // A mirrored flow: origin as a v4-mapped IPv6 address, id, flow, hint.
        let m = encode(&Frame::Mirror {
            flows: vec![mirrored(0x0102, b"xy")],
        });
        let mut expected = vec![0, 0, 0, 45, 12, 0, 0, 0, 1];
        expected.extend_from_slice(&[0; 10]);
        expected.extend_from_slice(&[0xff, 0xff, 198, 18, 0, 102]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 2]);
        expected.extend_from_slice(&[198, 18, 0, 10, 0x9c, 0x40, 198, 18, 0, 1, 0, 80]);
        expected.extend_from_slice(&[0, 2, b'x', b'y']);
        assert_eq!(&m[..], &expected[..]);
        // flags byte: window scaling and timestamps
        assert_eq!(h[4 + 1 + 8 + FLOW_LEN + 10], FLAG_WSCALE | FLAG_TIMESTAMPS);
    }

    #[test]
    fn every_proper_prefix_needs_more_and_leaves_the_buffer_alone() {
        for f in all_frames() {
            let full = encode(&f);
            for cut in 0..full.len() {
                let mut buf = BytesMut::from(&full[..cut]);
                assert_eq!(decode(&mut buf), Ok(None), "{} cut at {cut}", f.kind());
                assert_eq!(&buf[..], &full[..cut]);
            }
        }
    }

    #[test]
    fn oversized_claim_is_rejected_from_the_prefix_alone_without_reserving() {
        let limits = FrameLimits {
            max_frame_len: 1000,
            ..FrameLimits::default()
        };
        let mut buf = BytesMut::from(&1001u32.to_be_bytes()[..]);
        let before = buf.capacity();
        assert_eq!(
            Frame::decode(&mut buf, &limits),
            Err(ProtoError::FrameTooLarge {
                len: 1001,
                max: 1000
            })
        );
        assert_eq!(buf.capacity(), before);
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(matches!(
            decode(&mut buf),
            Err(ProtoError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn malformed_frames_get_specific_errors() {
        let cases: &[(&[u8], ProtoError)] = &[
            (&[0, 0, 0, 0], ProtoError::FrameTooShort { len: 0, min: 1 }),
            (&[0, 0, 0, 1, 0xee], ProtoError::UnknownType(0xee)),
            (&[0, 0, 0, 5, 2, 0, 0, 0, 0], ProtoError::Truncated("id")),
            (
                &[0, 0, 0, 10, 2, 0, 0, 0, 0, 0, 0, 0, 1, 9],
                ProtoError::Truncated("restore time"),
            ),
            (
                &[0, 0, 0, 14, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 9],
                ProtoError::TrailingBytes(1),
            ),
            (&[0, 0, 0, 4, 10, 0, 1, 0xff], ProtoError::InvalidUtf8),
            (
                &[0, 0, 0, 5, 10, 0, 9, b'a', b'b'],
                ProtoError::Truncated("goodbye reason"),
            ),
        ];
        for (bytes, err) in cases {
            assert_eq!(
                decode(&mut BytesMut::from(*bytes)),
                Err(err.clone()),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn hints_and_mirror_counts_are_limited_on_decode() {
        // A hint one byte over the limit (the encoder would cut it).
        let mut buf = encode(&Frame::Mirror {
            flows: vec![mirrored(1, &[7; MAX_HINT])],
        });
        let at = buf.len() - MAX_HINT - 2;
        buf[at..at + 2].copy_from_slice(&((MAX_HINT + 1) as u16).to_be_bytes());
        buf.extend_from_slice(&[7]);
        let len = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            decode(&mut buf),
            Err(ProtoError::OverLimit {
                what: "hint bytes",
                len: MAX_HINT + 1,
                max: MAX_HINT
            })
        );
        // More entries than a chunk, or than the frame holds.
        let mut buf = BytesMut::from(&[0, 0, 0, 5, 13, 0, 0, 4, 1][..]);
        assert_eq!(
            decode(&mut buf),
            Err(ProtoError::OverLimit {
                what: "unmirror count",
                len: MIRROR_CHUNK + 1,
                max: MIRROR_CHUNK
            })
        );
        let mut buf = BytesMut::from(&[0, 0, 0, 6, 14, 1, 0, 0, 0, 2][..]);
        assert_eq!(decode(&mut buf), Err(ProtoError::Truncated("mirror count")));
        // The encoder cuts an over-long hint to one that decodes.
        let long = Frame::Mirror {
            flows: vec![MirrorFlow {
                hint: Bytes::from(vec![1; MAX_HINT + 10]),
                ..mirrored(1, b"")
            }],
        };
        let Ok(Some(Frame::Mirror { flows })) = decode(&mut encode(&long)) else {
            panic!("decodes");
        };
        assert_eq!(flows[0].hint.len(), MAX_HINT);
    }

    #[test]
    fn unknown_tcp_flags_are_refused() {
        let mut buf = encode(&handoff());
        buf[4 + 1 + 8 + FLOW_LEN + 10] |= 0x80;
        assert_eq!(decode(&mut buf), Err(ProtoError::InvalidFlags(0x83)));
    }

    #[test]
    fn handoff_data_longer_than_the_frame_is_truncated_not_trusted() {
        let mut buf = encode(&handoff());
        let at = 4 + 1 + 8 + FLOW_LEN + STATE_LEN;
        buf[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&mut buf), Err(ProtoError::Truncated("handoff data")));
    }

    #[test]
    fn string_limit_applies_on_decode_and_truncates_on_encode() {
        let small = FrameLimits {
            max_string_len: 4,
            ..FrameLimits::default()
        };
        let mut buf = encode(&Frame::Goodbye {
            reason: "abcdef".into(),
        });
        assert_eq!(
            Frame::decode(&mut buf, &small),
            Err(ProtoError::StringTooLong { len: 6, max: 4 })
        );

        // "ab✓" is 5 bytes; cutting at 4 would split the check mark.
        let mut out = BytesMut::new();
        Frame::Refused {
            id: 1,
            reason: "ab✓".into(),
            backend_fault: false,
        }
        .encode(&small, &mut out)
        .expect("encodes");
        assert_eq!(
            Frame::decode(&mut out, &small),
            Ok(Some(Frame::Refused {
                id: 1,
                reason: "ab".into(),
                backend_fault: false,
            }))
        );
    }

    #[test]
    fn oversized_frame_is_not_encoded_and_leaves_output_untouched() {
        let limits = FrameLimits {
            max_frame_len: 64,
            ..FrameLimits::default()
        };
        let mut out = BytesMut::from(&b"prior"[..]);
        let err = handoff().encode(&limits, &mut out);
        assert!(matches!(
            err,
            Err(ProtoError::FrameTooLarge { max: 64, .. })
        ));
        assert_eq!(&out[..], b"prior");
    }

    #[test]
    fn handoff_ids_and_kinds() {
        assert_eq!(handoff().handoff_id(), Some(42));
        assert_eq!(Frame::Ping { nonce: 1 }.handoff_id(), None);
        assert_eq!(
            Frame::Closed {
                id: 4,
                flow: flow()
            }
            .kind(),
            "closed"
        );
    }
}
