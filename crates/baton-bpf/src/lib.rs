//! BTCP, the bottom module of Baton's TCP handoff: a tc-BPF program on the
//! front's NIC that steers the packets of handed-off connections in the
//! kernel, and its typed loader.
//!
//! Layer: kernel data path plus the user-space handle on it. `bpf/` holds the
//! C program (compiled by build.rs with clang, embedded in this crate) and
//! `bpf/abi.h`, the one header whose structs both sides share.
//!
//! Invariants:
//! - A flow without a FLOWS entry is the front's own business: its packets
//!   pass, except those to a port of the [`VipGuard`] that no socket of this
//!   host would take (the kernel would reset them): those are dropped, so no
//!   front resets a flow it does not know. Nothing else is ever dropped for
//!   lack of an entry: the front's own traffic is untouched.
//! - A PARKED flow's packets never reach the front's stack: each is copied into
//!   the ring and dropped, or, when it cannot be kept, dropped and counted in
//!   [`Stats::park_lost`] (the client retransmits). IPv4 fragments are the
//!   exception: without trustworthy ports they always pass ([`Stats::fragments`]).
//! - A FORWARDED flow's packets leave with the back-end's MAC as destination
//!   and the front's MAC as source.
//! - A bare SYN deletes an entry only once it is closing
//!   ([`Forwarder::mark_closing`], after the back-end reported the close);
//!   on a live flow it is forwarded like any packet, so a blind attacker who
//!   guesses the 4-tuple cannot hand the connection back to the front's kernel.
//! - All `unsafe` lives in the `abi` module; the rest of the crate cannot use it.
//!
//! The tests load real programs and create network namespaces: run them as root.
#![deny(unsafe_code)]

mod abi;
mod error;
pub(crate) mod forwarder;
mod frame;
mod runstats;
#[cfg(test)]
mod tests;

pub use error::BpfError;
pub use forwarder::{
    on_bpffs, Action, Adoption, AttachMode, FlowEntry, ForwardTarget, Forwarder, Owner,
    ParkedFrame, ParkedRing, Stats, TestRun, Verdict, VipGuard,
};
pub use frame::{is_pure_ack, prepare_for_resend, supersedes, FrameError};
pub use runstats::{enable_run_time_stats, program_run_time, RunStatsGuard, RunTime};

/// The version of the pinned maps' layouts and meanings (pins live under `v<ABI_VERSION>`).
pub const ABI_VERSION: u32 = abi::ABI_VERSION;
/// Capacity of the flow table: writes beyond it fail with a map error.
pub const MAX_FLOWS: u32 = abi::MAX_FLOWS;
/// The largest frame that can be parked; larger ones count as [`Stats::park_lost`].
pub const PARK_MAX_FRAME: u32 = abi::PARK_MAX_FRAME;
/// The most service ports a [`VipGuard`] holds.
pub const MAX_SERVICE_PORTS: u32 = abi::MAX_SERVICE_PORTS;
