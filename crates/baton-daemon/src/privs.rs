//! Least privilege after start-up: once the forwarder is loaded and
//! attached, the packet socket open and the listener bound, a daemon keeps
//! only the capabilities it uses for every connection.
//!
//! Capabilities belong to threads: call [`keep_only`] on the main thread
//! before the async runtime starts its workers, which then inherit the
//! reduced sets.
//!
//! | daemon | kept | why |
//! |---|---|---|
//! | front (handing off) | `CAP_NET_ADMIN` | `TCP_REPAIR` on each connection it hands off |
//! | front (relaying) | none | |
//! | back | `CAP_NET_ADMIN`, `CAP_NET_BIND_SERVICE` | `TCP_REPAIR`, and binding each restored socket to the VIP's port (80) |
//!
//! Dropped by the front after start: `CAP_BPF` and `CAP_PERFMON` (the
//! program is loaded; its maps are used through descriptors it holds),
//! `CAP_NET_RAW` (the packet socket is open), `CAP_NET_BIND_SERVICE` (the
//! listener is bound, or was handed over), and anything else a root-run
//! daemon had.

use anyhow::{Context, Result};
use caps::{CapSet, Capability, CapsHashSet};

/// Reduces the calling thread's permitted, effective and inheritable sets
/// to `keep` (as far as it had them) and clears the ambient set. Returns
/// the names of the capabilities dropped from the permitted set.
pub fn keep_only(keep: &[Capability]) -> Result<Vec<String>> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    let permitted = caps::read(None, CapSet::Permitted).context("reading capabilities")?;
    let mut dropped: Vec<String> = permitted.difference(&keep).map(|c| c.to_string()).collect();
    dropped.sort();
    caps::clear(None, CapSet::Ambient).context("clearing the ambient capabilities")?;
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        let now = caps::read(None, set).context("reading capabilities")?;
        let next: CapsHashSet = now.intersection(&keep).copied().collect();
        caps::set(None, set, &next).with_context(|| format!("setting the {set:?} capabilities"))?;
    }
    Ok(dropped)
}

/// What a front keeps once started: `CAP_NET_ADMIN` if it hands
/// connections off, and `CAP_NET_BIND_SERVICE` only if its admin address
/// (bound later) is a privileged port.
pub fn for_front(hands_off: bool, admin: std::net::SocketAddr) -> Vec<Capability> {
    let mut keep = Vec::new();
    if hands_off {
        keep.push(Capability::CAP_NET_ADMIN);
    }
    if admin.port() < 1024 {
        keep.push(Capability::CAP_NET_BIND_SERVICE);
    }
    keep
}

/// What a back-end keeps: `TCP_REPAIR`, and binding restored sockets to
/// the VIP's port.
pub fn for_back() -> Vec<Capability> {
    vec![Capability::CAP_NET_ADMIN, Capability::CAP_NET_BIND_SERVICE]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_only_what_it_asked_for_and_others_keep_theirs() {
        // In a thread of its own: capabilities are per thread.
        let before = caps::read(None, CapSet::Permitted).expect("read");
        let (dropped, after, effective) = std::thread::spawn(|| {
            let dropped = keep_only(&[Capability::CAP_NET_ADMIN]).expect("keep_only");
            (
                dropped,
                caps::read(None, CapSet::Permitted).expect("read"),
                caps::read(None, CapSet::Effective).expect("read"),
            )
        })
        .join()
        .expect("thread");
        assert!(
            after.iter().all(|c| *c == Capability::CAP_NET_ADMIN),
            "{after:?}"
        );
        assert!(effective.is_subset(&after));
        assert_eq!(dropped.len(), before.len() - after.len());
        // This thread is untouched.
        assert_eq!(caps::read(None, CapSet::Permitted).expect("read"), before);
    }
}
