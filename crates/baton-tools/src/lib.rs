//! baton-tools: what drives a lab from outside the daemons: the lab commands
//! (`baton lab`), the demo (`baton demo`), the benchmarks (`baton bench`,
//! with their SVG charts), the simulator's command line (`baton sim`), and
//! the lab helpers the integration tests share ([`labtools`]).
//!
//! Layer: tools, above `baton-daemon` (it reads the daemons' configuration
//! and speaks their control channel) and `baton-lab`, `baton-sim` and
//! `plotters`, below the CLI (`baton`). Nothing in the daemons depends on it.
//!
//! Invariants:
//! - It starts the daemons as processes of the `baton` binary (its own
//!   executable, or the one the tests name), never in-process: what is
//!   measured is what runs.
//! - Every lab it brings up is torn down again, also on error or panic
//!   ([`labtools::Lab`] is a guard); traffic stays in the lab's namespaces.
//! - No `unsafe` here.
#![forbid(unsafe_code)]

pub mod bench;
pub mod compare;
pub mod demo;
pub mod ecmp;
pub mod labcmd;
pub mod labtools;
pub mod simcmd;
pub mod status;
