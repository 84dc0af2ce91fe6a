//! The loader's error type: every variant names the interface and the step.

use std::io;

use aya::maps::MapError;
use aya::programs::ProgramError;
use baton_proto::FlowKey;
use thiserror::Error;

/// A failure of the forwarder loader, naming the interface and the failing step.
///
/// Loader errors are always on the front's side (kernel or configuration),
/// never caused by a client.
#[derive(Debug, Error)]
pub enum BpfError {
    /// The embedded object could not be loaded (maps, BTF, relocations).
    #[error("{iface}: loading the BPF object failed")]
    LoadObject {
        /// Interface the forwarder was meant for.
        iface: String,
        /// aya's error.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// The embedded object lacks a program or map the loader expects (a build defect).
    #[error("{iface}: the BPF object has no {what} `{name}`")]
    Missing {
        /// Interface the forwarder was meant for.
        iface: String,
        /// "program" or "map".
        what: &'static str,
        /// Its name in the object.
        name: &'static str,
    },
    /// A program operation failed (verifier rejection, info query).
    #[error("{iface}: {step} failed")]
    Program {
        /// Interface the forwarder was meant for.
        iface: String,
        /// What was being done.
        step: &'static str,
        /// aya's error, with the verifier log for load failures.
        #[source]
        source: Box<ProgramError>,
    },
    /// Attaching at tc ingress failed.
    #[error("{iface}: attaching at tc ingress failed ({step})")]
    Attach {
        /// The interface.
        iface: String,
        /// Which attachment was tried last, and the earlier failure if any.
        step: String,
        /// The error of the last attempt (aya's, or the OS's).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A map operation failed.
    #[error("{iface}: {step} on map {map} failed")]
    Map {
        /// The interface the forwarder is attached to.
        iface: String,
        /// What was being done.
        step: &'static str,
        /// The map's name.
        map: &'static str,
        /// aya's error.
        #[source]
        source: Box<MapError>,
    },
    /// A system call made by this crate itself failed.
    #[error("{iface}: {step} failed")]
    Sys {
        /// The interface the forwarder is attached to.
        iface: String,
        /// The call.
        step: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A forward target that would misroute or flood packets.
    #[error("{iface}: invalid forward target for {key}: {reason}")]
    InvalidTarget {
        /// The interface the forwarder is attached to.
        iface: String,
        /// The flow.
        key: FlowKey,
        /// What is wrong with the target.
        reason: &'static str,
    },
    /// A guard that would protect nothing, or everything.
    #[error("{iface}: invalid VIP guard: {reason}")]
    InvalidGuard {
        /// The interface the forwarder is for.
        iface: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A FLOWS entry that this loader did not write (another writer, or ABI drift).
    #[error("{iface}: FLOWS entry for {key} has unknown action {action}")]
    UnknownAction {
        /// The interface the forwarder is attached to.
        iface: String,
        /// The flow.
        key: FlowKey,
        /// The raw action value.
        action: u32,
    },
    /// [`crate::Forwarder::parked`] was called a second time.
    #[error("{iface}: the parked-frame ring was already taken")]
    RingTaken {
        /// The interface the forwarder is attached to.
        iface: String,
    },
    /// The pin directory cannot hold pins: not on a bpf filesystem.
    #[error("{iface}: {dir} is not on a bpf filesystem (mount one: mkdir -p {dir} && mount -t bpf bpf {dir})")]
    NotBpffs {
        /// The interface the forwarder is for.
        iface: String,
        /// The directory given.
        dir: String,
    },
    /// Pins of another ABI version are in the way: this binary would misread them.
    #[error("{iface}: {dir} holds the pins of forwarder ABI v{found}, this binary speaks v{expected}; \
             drain and stop the front that made them, then remove them with `baton unpin` (their flows are lost), \
             or run a binary of ABI v{found}")]
    OtherAbi {
        /// The interface the forwarder is for.
        iface: String,
        /// The interface's pin directory.
        dir: String,
        /// The version of the pins found.
        found: String,
        /// This binary's version.
        expected: u32,
    },
    /// A pinned map does not have the layout this binary expects.
    #[error("{iface}: the pinned map {path} is {found}, this binary expects {expected}; remove it with `baton unpin` (its flows are lost)")]
    PinMismatch {
        /// The interface the forwarder is for.
        iface: String,
        /// The pin.
        path: String,
        /// Its type and sizes.
        found: String,
        /// This binary's.
        expected: String,
    },
}

impl BpfError {
    /// The flow table is full (`E2BIG`/`ENOSPC` from a map write): a
    /// capacity limit, not a defect, so a front answers 503 and counts it.
    pub fn is_map_full(&self) -> bool {
        match self {
            BpfError::Map { source, .. } => match source.as_ref() {
                MapError::SyscallError(e) => matches!(
                    e.io_error.raw_os_error(),
                    Some(libc::E2BIG) | Some(libc::ENOSPC)
                ),
                _ => false,
            },
            _ => false,
        }
    }
}
