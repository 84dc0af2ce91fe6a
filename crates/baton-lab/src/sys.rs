//! The lab's only `unsafe`: signals, reaping and `setsid` for the daemons it
//! starts, and `statfs`, `mount` and `flock` for the bpffs the fronts pin to.
//! Kept here so the rest of the crate stays `deny(unsafe_code)`.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
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

/// `path` as a C string for a system call.
fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// The magic number (`f_type` of `statfs(2)`) of the file system holding `path`.
pub(crate) fn fs_magic(path: &Path) -> io::Result<u64> {
    let c = c_path(path)?;
    // SAFETY: an all-zero `statfs` is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated string that outlives the call, and `st`
    // is a live, writable `statfs` the kernel fills in.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // `f_type`'s C type differs by architecture; magic numbers are 32 bits.
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as u64 & 0xffff_ffff)
}

/// Mounts a fresh bpffs on `path` (`mount -t bpf bpf PATH`), in this
/// process's mount namespace.
pub(crate) fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = c_path(path)?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the
    // call, or null for the (optional) mount data.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Unmounts `path` (`umount PATH`), in this process's mount namespace.
pub(crate) fn umount(path: &Path) -> io::Result<()> {
    let target = c_path(path)?;
    // SAFETY: `target` is a NUL-terminated string that outlives the call.
    let rc = unsafe { libc::umount2(target.as_ptr(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Takes an exclusive `flock(2)` on `file`: waits for it if `wait`, else
/// fails with `WouldBlock` when another process holds it. The lock goes with
/// the file's last descriptor.
pub(crate) fn lock(file: &File, wait: bool) -> io::Result<()> {
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    loop {
        // SAFETY: flock(2) only takes the descriptor number and flags; the
        // descriptor is open for as long as `file` lives.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
