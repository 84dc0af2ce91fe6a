//! Entering a network namespace (for the calling thread only).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::{cvt, Result, SysError};

/// Moves the calling thread into the network namespace at `path` (e.g.
/// `/run/netns/NAME`). Namespaces are per thread: spawn a dedicated thread
/// for work that must run inside one.
pub fn enter(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(|source| SysError {
        call: "open(netns)",
        source,
    })?;
    // SAFETY: setns on a valid fd; CLONE_NEWNET restricts it to net namespaces.
    let ret = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    cvt(ret, "setns(CLONE_NEWNET)").map(drop)
}

/// Enters the named namespace (`/run/netns/NAME`).
pub fn enter_named(name: &str) -> Result<()> {
    enter(&Path::new("/run/netns").join(name))
}
