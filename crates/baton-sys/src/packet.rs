//! An `AF_PACKET` socket for sending complete Ethernet frames out of one
//! interface: the front uses it to deliver the frames it kept while a flow
//! was parked.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{cvt, Result, SysError};

/// A send-only raw packet socket bound to one interface.
#[derive(Debug)]
pub struct PacketSender {
    fd: OwnedFd,
}

impl PacketSender {
    /// Opens the socket. Protocol 0 means it receives nothing, so it costs
    /// nothing per packet on the hot path.
    pub fn open(ifindex: u32) -> Result<Self> {
        // SAFETY: plain socket(2), owned at once.
        let raw = cvt(
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) },
            "socket(AF_PACKET)",
        )?;
        // SAFETY: fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let addr = Self::addr(ifindex)?;
        // SAFETY: `addr` is a valid sockaddr_ll of the given length.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        cvt(ret, "bind(AF_PACKET)")?;
        Ok(PacketSender { fd })
    }

    fn addr(ifindex: u32) -> Result<libc::sockaddr_ll> {
        // SAFETY: sockaddr_ll is plain data; zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = i32::try_from(ifindex).map_err(|_| SysError {
            call: "bind(AF_PACKET)",
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        Ok(addr)
    }

    /// Sends one complete Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: `frame` is a readable buffer of `frame.len()` bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(SysError::last("send(AF_PACKET)"));
        }
        Ok(())
    }
}
