//! baton-daemon: the two daemons, `baton front` and `baton back`, their
//! configuration and control-channel glue.
//!
//! Layer: the daemons, above proto / policy / sys / bpf / serve / cache and
//! below the CLI (`baton`). Protocol logic lives in `baton-proto`, policies in
//! `baton-policy`, kernel calls in `baton-sys` and `baton-bpf`, HTTP serving
//! in `baton-serve` and `baton-cache`; this crate wires them together with
//! tokio. The benchmarks, the lab and the demo are in `baton-tools`, above.
//!
//! Invariants:
//! - The daemons link no test, benchmark or plotting code: this crate does
//!   not depend on `baton-lab`, `baton-sim`, `baton-tools` or `plotters`
//!   (check: `cargo tree -p baton-daemon -e normal`).
//! - No `unsafe` here: it is all in `baton-sys` (and `baton-bpf`).
//! - The handoff's decisions and deadlines are made by the sans-IO engines of
//!   `baton_proto::handoff`; [`front`] and [`back`] only carry out their
//!   actions and feed back the results.
#![forbid(unsafe_code)]

pub mod admin;
pub mod announce;
pub mod back;
pub mod bird;
pub mod config;
pub mod control;
pub mod deadline;
pub mod direct_tls;
mod eager;
pub mod front;
pub mod hostcheck;
pub mod metrics;
pub mod preauth;
pub mod privs;
pub mod relay;
pub mod stats;
pub mod tls;
pub mod upgrade;
