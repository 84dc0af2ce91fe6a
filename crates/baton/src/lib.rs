//! The `baton` binary's library half: the daemons (`front`, `back`), their
//! configuration and control-channel glue, and the tools that drive a lab
//! (demo, benchmarks, integration tests).
//!
//! Layer: the top. Protocol logic lives in `baton-proto`, policies in
//! `baton-policy`, kernel calls in `baton-sys` and `baton-bpf`, the testbed
//! in `baton-lab`; this crate wires them together with tokio.

pub mod admin;
pub mod back;
pub mod bench;
pub mod compare;
pub mod config;
pub mod control;
pub mod deadline;
pub mod demo;
pub mod front;
pub mod labcmd;
pub mod labtools;
pub mod relay;
pub mod simcmd;
pub mod stats;
