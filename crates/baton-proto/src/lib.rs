//! baton-proto: the sans-IO core of Baton's handoff protocol.
#![forbid(unsafe_code)]

pub mod flow;
pub mod tcp;

pub use flow::FlowKey;
pub use tcp::{RepairWindow, TcpState};
