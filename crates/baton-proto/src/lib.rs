//! baton-proto: the sans-IO core of Baton's handoff protocol.
//!
//! **Layer:** pure protocol. No sockets, no clock, no randomness (nonces are
//! passed in), no `unsafe`. The daemons move bytes; this crate decides what
//! they mean. **Invariant:** every parser here takes untrusted bytes and
//! answers with a value, "need more bytes" (`Ok(None)`) or an error; none
//! panics, and none buffers more than its configured limit.
//!
//! # The control channel
//!
//! Each front-end keeps one long-lived TCP connection to each back-end. It
//! opens with a handshake ([`auth`]) that proves the pre-shared key both ways
//! and agrees fresh session keys by an ephemeral X25519 exchange; after that
//! every message is a [`Frame`] ([`frame`]) encrypted with ChaCha20-Poly1305
//! under a per-direction key and an implicit sequence number, so the channel
//! is confidential (with forward secrecy: a later leak of the PSK does not
//! open a recorded session) and rejects tampered, replayed, reordered and
//! injected frames. Any error closes the channel.
//!
//! ```text
//! front                                                         back
//!   |-- Hello {version, e_f} ----------------------------------->|
//!   |<------------------------- Challenge {version, e_b, proof_b} -|
//!   |-- Proof {proof_f} ----------------------------------------->|
//!   |             (encrypted frames from here on)                 |
//! ```
//!
//! The front checks the back's proof before it sends anything else, so a
//! client's request never reaches a peer that lacks the key.
//!
//! # One handoff
//!
//! ```text
//! front                                                         back
//!  accept, read the request head (http::parse_request_head),
//!  pick a back-end, park the flow, dump the TCP state
//!   |-- Handoff {id, flow, state, data, sent, tls} -------------->|
//!   |                       restore the socket, still in repair mode
//!   |<------------------------------------ Ready {id, restore_us} -|
//!  steer the flow to the back,
//!  close the local socket in repair mode (nothing reaches the client)
//!   |-- Go {id} -------------------------------------------------->|
//!   |                leave repair mode: the connection is live; the
//!   |                back's HTTP server reads `data` and answers the
//!   |                client directly
//!   |              ...                                             |
//!   |<------------------------------------ Closed {id, flow} ------|
//!  remove the steering entry after a grace period
//! ```
//!
//! Failure paths:
//! - The back cannot restore: it answers `Refused {id, reason}` instead of
//!   `Ready`. The front still owns the socket (it never closed it): it
//!   un-parks the flow and serves or rejects the client itself.
//! - The front cannot complete after `Ready` (steering failed, timeout): it
//!   sends `Abort {id}`; the back closes the restored socket while still in
//!   repair mode, so the client sees nothing from it.
//! - The channel dies between `Ready` and `Go`: the back must treat a
//!   restored socket that never got `Go` as aborted.
//!
//! `Handoff.data` is every byte the client sent that the back's application
//! has not read yet: the head the front read plus the unread receive queue.
//! [`TcpState::rcv_seq`] is the sequence number after them.
//!
//! # Housekeeping
//!
//! - `Load {active, total}`: the back reports periodically; the front's
//!   policy uses it.
//! - `Ping {nonce}` / `Pong {nonce}`: either side probes liveness; a peer
//!   that does not answer within the caller's timeout is declared dead.
//! - `Goodbye {reason}`: orderly shutdown or draining; no new handoffs are
//!   sent after it, handoffs in flight still complete.
//!
//! # Request heads
//!
//! [`http`] parses just enough of an HTTP/1.x request to route it, strictly
//! enough that the back-end's parser cannot disagree about where the request
//! ends, and builds the small error responses the front sends itself.
#![forbid(unsafe_code)]

pub mod auth;
pub mod flow;
pub mod frame;
pub mod handoff;
pub mod http;
pub mod tcp;
mod wire;

pub use auth::{
    BackHandshake, BackStep, EphemeralKey, FrontDone, FrontHandshake, Opener, Psk, Sealer,
};
pub use flow::FlowKey;
pub use frame::{
    Frame, FrameLimits, Handoff, Incoming, Link, LoadReport, MirrorFlow, MirrorRef, ProtoError,
    ToBack, ToFront, WrongDirection, MAX_HINT, MIRROR_CHUNK, PROTOCOL_VERSION,
};
pub use http::{parse_request_head, HeadError, HeadLimits, RequestHead};
pub use tcp::{RepairWindow, TcpState};
