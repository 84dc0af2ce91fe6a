//! baton-sys: the one place where Baton's userspace talks to the kernel
//! through `unsafe` FFI.
//!
//! Layer: below the daemons, above libc. Everything here is synchronous and
//! thin. Invariants:
//! - every raw `setsockopt`/`getsockopt` goes through [`sockopt::set`] and
//!   [`sockopt::get`], which check sizes, so the rest of the crate cannot pass
//!   a wrongly sized buffer to the kernel;
//! - every failure is a [`SysError`] that names the call that failed;
//! - file descriptors are owned (`OwnedFd`) from the moment they exist, so an
//!   early return never leaks one.
//!
//! [`splice::Pipe`] is the zero-copy path of the front's relay mode.
//!
//! The TCP handoff sequence implemented by [`repair::dump`] and
//! [`repair::restore`] is the one in `shared/DESIGN.md`; the order of the
//! steps matters and is documented at each step.

pub mod accept;
pub mod iface;
pub mod netns;
pub mod packet;
pub mod quiet;
pub mod repair;
pub mod sockopt;
pub mod splice;

use std::io;

/// A failed system call, with the name of the call (and option) that failed.
#[derive(Debug, thiserror::Error)]
#[error("{call}: {source}")]
pub struct SysError {
    /// The call that failed, e.g. `setsockopt(TCP_REPAIR)`.
    pub call: &'static str,
    /// What the kernel answered.
    #[source]
    pub source: io::Error,
}

impl SysError {
    /// The error of the last failed libc call.
    pub fn last(call: &'static str) -> Self {
        SysError {
            call,
            source: io::Error::last_os_error(),
        }
    }

    /// The OS error number, if any.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, SysError>;

/// Turns a libc return value into a result.
pub(crate) fn cvt(ret: libc::c_int, call: &'static str) -> Result<libc::c_int> {
    if ret < 0 {
        Err(SysError::last(call))
    } else {
        Ok(ret)
    }
}

/// Ignores SIGHUP until a daemon installs its reload handler: the default
/// action would end a daemon that is still starting (or a successor waiting
/// for the listener) when `systemctl reload` comes early.
pub fn ignore_sighup() -> Result<()> {
    // SAFETY: installing SIG_IGN for one signal has no memory effects.
    let prev = unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    if prev == libc::SIG_ERR {
        return Err(SysError {
            call: "signal(SIGHUP, SIG_IGN)",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard limit (a front holds one
/// descriptor per connection in progress, a back-end one per connection).
/// Returns the new soft limit.
pub fn raise_nofile_limit() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through the pointer.
    cvt(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) },
        "getrlimit(RLIMIT_NOFILE)",
    )?;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads one rlimit through the pointer.
        cvt(
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) },
            "setrlimit(RLIMIT_NOFILE)",
        )?;
    }
    Ok(lim.rlim_cur)
}
