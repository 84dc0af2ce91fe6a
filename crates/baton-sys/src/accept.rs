//! Accepting a connection as a plain non-blocking socket.
//!
//! An event loop's `accept` also registers the new socket with its poller
//! (and the socket's close unregisters it): two system calls per connection
//! that a front handing the connection off never needs, since it reads the
//! request head at once (the listener defers accepting until the first
//! bytes arrived) and then never waits on the socket again. The front
//! registers a socket only when it has to wait for it.

use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::{cvt, Result, SysError};

/// `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)`: the next connection waiting on
/// `listener`, non-blocking, and its peer's address. With none waiting on a
/// non-blocking listener the error's source is `WouldBlock`.
pub fn accept(listener: BorrowedFd<'_>) -> Result<(TcpStream, SocketAddr)> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` is writable for `len` bytes, and `len` is a valid
    // in/out length.
    let fd = cvt(
        unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                storage.as_mut_ptr().cast(),
                &mut len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        },
        "accept4",
    )?;
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    let stream = TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: zero-initialised and then (partly) written by the kernel:
    // every bit pattern is a valid sockaddr_storage.
    let storage = unsafe { storage.assume_init() };
    let peer = peer_of(&storage, len).ok_or_else(|| SysError {
        call: "accept4",
        source: std::io::Error::other(format!(
            "unexpected peer address (family {}, {len} bytes)",
            storage.ss_family
        )),
    })?;
    Ok((stream, peer))
}

fn peer_of(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = usize::try_from(len).ok()?;
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the kernel wrote a sockaddr_in, which
            // fits in (and is no more aligned than) sockaddr_storage.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn accepts_non_blocking_with_the_peer_address() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = std::net::TcpListener::bind(bind) else {
                continue; // no IPv6 loopback here
            };
            listener.set_nonblocking(true).unwrap();
            let none = accept(listener.as_fd()).unwrap_err();
            assert_eq!(none.source.kind(), ErrorKind::WouldBlock, "{none}");

            let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (mut server, peer) = loop {
                match accept(listener.as_fd()) {
                    Ok(a) => break a,
                    // The handshake completes in the kernel; poll until it did.
                    Err(e) if e.source.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            };
            assert_eq!(peer, client.local_addr().unwrap());
            let mut buf = [0u8; 8];
            let empty = server.read(&mut buf).unwrap_err();
            assert_eq!(empty.kind(), ErrorKind::WouldBlock, "the socket blocks");
            client.write_all(b"hi").unwrap();
            client.shutdown(std::net::Shutdown::Write).unwrap();
            let mut got = Vec::new();
            loop {
                match server.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(got, b"hi");
        }
    }
}
