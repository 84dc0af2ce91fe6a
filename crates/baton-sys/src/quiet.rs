//! Whether an idle connection kept for reuse is still quiet: nothing to
//! read, no end of stream, no error. A proxy that hands such a connection
//! to the next request must know with a system call, not from a readiness
//! cache: a stray byte or a close that arrived meanwhile would otherwise be
//! read as the start of the next response.

use std::os::fd::{AsRawFd, BorrowedFd};

/// True if a non-blocking `recv(MSG_PEEK)` finds nothing waiting on the
/// stream socket `fd` (it would block); false on data, end of stream, or
/// any error (reset included).
pub fn is_quiet(fd: BorrowedFd<'_>) -> bool {
    let mut probe = [0u8; 1];
    // SAFETY: `probe` is a writable buffer of `probe.len()` bytes that
    // outlives the call; MSG_PEEK leaves the socket's queue as it was.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            probe.as_mut_ptr().cast(),
            probe.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0
        && matches!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EAGAIN)
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    #[test]
    fn quiet_until_bytes_or_close_arrive() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (b, _) = l.accept().expect("accept");
        assert!(is_quiet(b.as_fd()), "a fresh connection is quiet");
        a.write_all(b"x").expect("write");
        // Loopback delivers within the write: the byte is queued now.
        assert!(!is_quiet(b.as_fd()), "a byte is waiting");
        let mut c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (d, _) = l.accept().expect("accept");
        c.flush().expect("flush");
        drop(c);
        assert!(!is_quiet(d.as_fd()), "the peer closed");
    }
}
