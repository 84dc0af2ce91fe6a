//! Size-checked socket option helpers: the choke point for `setsockopt` and
//! `getsockopt`.

use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::{cvt, Result, SysError};

/// Plain-old-data values that may be passed to the kernel as option values.
///
/// # Safety
/// Implementors must be `repr(C)` (or primitive) with no padding that the
/// kernel could read uninitialised and valid for every bit pattern, because
/// `get` fills them from kernel memory.
pub unsafe trait OptVal: Copy {}

// SAFETY: primitive integers are valid for every bit pattern.
unsafe impl OptVal for libc::c_int {}
// SAFETY: as above.
unsafe impl OptVal for u32 {}
// SAFETY: a byte array is valid for every bit pattern and has no padding.
unsafe impl<const N: usize> OptVal for [u8; N] {}

/// `setsockopt(fd, level, name, &val, sizeof val)`.
pub fn set<T: OptVal>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    val: &T,
    call: &'static str,
) -> Result<()> {
    set_slice(fd, level, name, std::slice::from_ref(val), call)
}

/// `setsockopt` with an array of values (e.g. `TCP_REPAIR_OPTIONS`).
pub fn set_slice<T: OptVal>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    vals: &[T],
    call: &'static str,
) -> Result<()> {
    let len = std::mem::size_of_val(vals);
    let len = libc::socklen_t::try_from(len).map_err(|_| SysError {
        call,
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })?;
    // SAFETY: the pointer and length describe `vals`, which is live for the
    // call; `OptVal` guarantees the kernel may read it as plain bytes.
    let ret = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, vals.as_ptr().cast(), len) };
    cvt(ret, call).map(drop)
}

/// `getsockopt` into a `T`; fails if the kernel wrote fewer bytes than `T`
/// unless `allow_short` (used for `TCP_INFO`, which grows across kernels).
pub fn get<T: OptVal>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    call: &'static str,
    allow_short: bool,
) -> Result<T> {
    let mut val = MaybeUninit::<T>::zeroed();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `val` is a writable buffer of `len` bytes; the kernel writes at
    // most `len` bytes and reports how many in `len`.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            val.as_mut_ptr().cast(),
            &mut len,
        )
    };
    cvt(ret, call)?;
    if !allow_short && (len as usize) != size_of::<T>() {
        return Err(SysError {
            call,
            source: std::io::Error::other(format!(
                "kernel returned {len} bytes, expected {}",
                size_of::<T>()
            )),
        });
    }
    // SAFETY: zero-initialised above and `OptVal` types are valid for every
    // bit pattern, so whatever the kernel wrote (or did not) is a valid `T`.
    Ok(unsafe { val.assume_init() })
}

/// Sets an `int` option.
pub fn set_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    val: libc::c_int,
    call: &'static str,
) -> Result<()> {
    set(fd, level, name, &val, call)
}

/// Reads an `int` option.
pub fn get_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    call: &'static str,
) -> Result<libc::c_int> {
    get(fd, level, name, call, false)
}

/// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before the
/// kernel gives up on the connection (rounded up to whole milliseconds; at
/// least 1 ms, since 0 would mean the system default).
pub fn set_tcp_user_timeout(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> Result<()> {
    let ms = timeout.as_micros().div_ceil(1000).max(1);
    let ms = libc::c_uint::try_from(ms).unwrap_or(libc::c_uint::MAX);
    set(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        &ms,
        "setsockopt(TCP_USER_TIMEOUT)",
    )
}

// SAFETY: `struct linger` is two ints, no padding, valid for every bit pattern.
unsafe impl OptVal for libc::linger {}

/// `SO_LINGER` {on, 0 s}: closing the socket then sends a RST, not a FIN
/// (tests use it to play a client that resets).
pub fn set_linger_zero(fd: BorrowedFd<'_>) -> Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    set(
        fd,
        libc::SOL_SOCKET,
        libc::SO_LINGER,
        &l,
        "setsockopt(SO_LINGER)",
    )
}

/// Whether the kernel has TLS (`CONFIG_TLS`, the "tls" upper-layer
/// protocol): `Ok(())` if so, else why not. Asked on a fresh, unconnected
/// socket: a kernel with TLS answers that the socket is not connected
/// (ENOTCONN), one without it that the protocol does not exist (ENOENT).
pub fn kernel_tls() -> std::result::Result<(), String> {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); owned immediately below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    let raw = crate::cvt(raw, "socket").map_err(|e| e.to_string())?;
    // SAFETY: a fresh fd nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    match set(
        fd.as_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_ULP,
        b"tls",
        "setsockopt(TCP_ULP)",
    ) {
        Ok(()) => Ok(()),
        Err(e) if e.errno() == Some(libc::ENOTCONN) => Ok(()),
        Err(e) if e.errno() == Some(libc::ENOENT) => {
            Err("the kernel has no TLS (CONFIG_TLS is not set)".into())
        }
        Err(e) => Err(e.to_string()),
    }
}
