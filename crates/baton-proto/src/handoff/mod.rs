//! The handoff protocol as two sans-IO state machines: [`FrontEngine`] for
//! the front-end's flows, [`BackEngine`] for the back-end's restored
//! connections. They own every decision and every deadline of a handoff;
//! the daemons only carry out their [`FrontAction`]s and [`BackAction`]s
//! (socket options, BPF map writes, channel writes) and report the results.
//!
//! Both follow quinn-proto's shape: `handle_*` methods take inputs (a frame,
//! a syscall's result, a channel going up or down, the clock), `poll_*`
//! methods hand out what to do next, `poll_timeout` says when to call
//! `handle_timeout`. Time is passed in as `now`; nothing here reads a clock,
//! touches a socket or draws a random number.
//!
//! # One handoff
//!
//! ```text
//!  front engine                      driver             back engine
//!  start ──Park──────────────────▶ BPF PARK
//!        ◀─handle_parked──────────
//!        ──Dump──────────────────▶ TCP_REPAIR dump
//!        ◀─handle_dumped──────────
//!        ──Send(Handoff)─────────▶ channel ═══════════▶ handle_frame
//!  (point of no return: the back-end may                ──Restore──▶ restore,
//!   go live from here on)                                            leave repair
//!                                                       ◀handle_restored
//!        ◀─handle_frame(Live)──── channel ◀═══════════ ──Send(Live)
//!        ──Forward──────────────▶ BPF FORWARD, kept
//!                                 frames delivered,
//!                                 socket closed in
//!                                 repair mode
//!        ...                                            handle_closed
//!        ◀─handle_frame(Closed)── channel ◀═══════════ ──Send(Closed), batched
//!        ──MarkClosing, then after the grace RemoveIfQuiet──▶ BPF
//! ```
//!
//! One control hop is on the latency path: the back-end goes live as soon
//! as the socket is restored, and answers the client while `Live` travels
//! to the front. Until the front forwards, the client's packets (its ACKs)
//! are kept by the forwarder and delivered afterwards.
//!
//! # Failure semantics
//!
//! Writing `Handoff` is the point of no return: from then on the back-end
//! may serve the client at any moment, so the front never answers on the
//! connection itself unless the back-end said it will not (`Refused`).
//!
//! | what happens                                        | the client sees              |
//! |-----------------------------------------------------|------------------------------|
//! | no channel to the back-end when the handoff starts   | 503 from the front (or relay)|
//! | park or dump fails                                  | 502/503 from the front       |
//! | the back-end refuses                                | 502 from the front (or relay)|
//! | no `Live` within `handoff_timeout`                  | a reset; `Abort` is sent     |
//! | the channel drops before `Live`                     | a reset                      |
//! | `Live` arrives                                      | the back-end's answer        |
//! | the channel drops after `Live`                      | the back-end's answer: the flow stays, orphaned, until the channel is back and the back-end lists what it holds (`Holding`), or `orphan_timeout` |
//! | the back-end dies after `Live`                      | what its kernel sends; the entry goes at reconciliation or `orphan_timeout` |
//! | the front process dies or is replaced after `Live`  | the back-end's answer: the pinned entry keeps forwarding; the next front adopts it ([`FrontEngine::adopt`]) and reconciles it with `Holding` |
//! | the front process dies between `Handoff` and `Live` | the back-end's answer if it took the handoff (the next front forwards once `Holding` lists it); else a reset |
//!
//! # Several fronts
//!
//! The back-end tells every front but the origin about each connection it
//! serves (`Mirror` once live, `Unmirror` once ended, `Mirroring` at the
//! start of every channel); the front engine keeps them as mirrored flows
//! beside its own and steers them the same way, so any front the routers
//! send a client's packets to knows where its connection lives. The
//! rules for two records on one 4-tuple are in `docs/handoff.md` (and the
//! head of `src/handoff/front.rs`);
//! `docs/fronts.md` says why the back-ends, not the fronts, share them.
//!
//! A back-end that reads `Abort` in the same batch as its `Handoff` never
//! restores it; one that already went live resets that connection. Every
//! frame about a handoff names its id; ids are unique per front process,
//! so a late or repeated frame can never act on a newer flow on the same
//! 4-tuple.

mod back;
mod front;

pub use back::{BackAction, BackEngine, BackEvent, ChannelId, Refusal};
pub use front::{
    is_mirror_id, BackendId, Dump, DumpFailure, Entry, FrontAction, FrontEngine, FrontEvent,
    FrontTimers, Holder, ParkFailure, Quiet, RemoveCause, Timer, MIRROR_ID_BIT,
};
