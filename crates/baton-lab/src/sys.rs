//! The lab's only `unsafe`: signals, reaping and `setsid` for the daemons it
//! starts. Kept here so the rest of the crate stays `deny(unsafe_code)`.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Whom a signal goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// One process.
    Process(u32),
    /// A whole process group (the daemons lead their own).
    Group(u32),
}

/// Sends `sig` to `target`.
///
/// Refuses ids that `kill(2)` would read as "everyone" or "my own group"
/// (0, 1, anything that does not fit a `pid_t`) and our own process or group:
/// a corrupt state file must never make `down` signal the wrong processes.
pub(crate) fn signal(target: Target, sig: libc::c_int) -> io::Result<()> {
    let (id, group) = match target {
        Target::Process(id) => (id, false),
        Target::Group(id) => (id, true),
    };
    let pid = libc::pid_t::try_from(id)
        .ok()
        .filter(|&p| p > 1 && id != std::process::id())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "refusing to signal pid"))?;
    // SAFETY: getpgrp(2) takes no arguments and cannot fail.
    let own_group = unsafe { libc::getpgrp() };
    if group && pid == own_group {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to signal our own process group",
        ));
    }
    let pid = if group { -pid } else { pid };
    // SAFETY: kill(2) only reads its two integer arguments; pid was checked
    // above so it never means "all processes" (-1) or "our group" (0).
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reaps `pid` if it is a zombie child of ours; a no-op otherwise.
pub(crate) fn reap(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 1 {
        return;
    }
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid(2) writes one c_int through the pointer, which points to
    // a live local; WNOHANG keeps it from blocking and ECHILD for processes
    // that are not our children is harmless.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
}

/// Makes the child lead a new session (and so its own process group), so a
/// daemon outlives the terminal of `baton lab up` and `down` can signal its
/// whole group.
pub(crate) fn detach(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec; it calls only
    // setsid(2), which is async-signal-safe, and does not allocate.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
    }
}
