//! Interfaces and neighbours: what the front needs to address frames to a
//! back-end on the same L2 segment.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{cvt, Result, SysError};

/// A network interface's index and hardware address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfaceInfo {
    /// The interface index.
    pub ifindex: u32,
    /// The interface's MAC address.
    pub mac: [u8; 6],
}

/// Looks up an interface by name (in the caller's network namespace).
pub fn iface_info(name: &str) -> Result<IfaceInfo> {
    let invalid = |msg: &str| SysError {
        call: "if_nametoindex",
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{name:?}: {msg}")),
    };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(invalid("interface names are 1 to 15 bytes"));
    }
    let cname = CString::new(name).map_err(|_| invalid("NUL in interface name"))?;
    // SAFETY: `cname` is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(SysError::last("if_nametoindex"));
    }

    // SAFETY: plain socket(2), owned at once.
    let raw = cvt(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) },
        "socket",
    )?;
    // SAFETY: fresh fd owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads ifr_name and writes ifr_hwaddr within `req`.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    cvt(ret, "ioctl(SIOCGIFHWADDR)")?;
    // SAFETY: after a successful SIOCGIFHWADDR the union holds ifru_hwaddr.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *dst = *src as u8;
    }
    Ok(IfaceInfo { ifindex, mac })
}

/// The MAC address the kernel's neighbour table holds for `ip` on `iface`,
/// if it has a complete entry. Reads `/proc/net/arp`, which lists the
/// caller's network namespace.
pub fn neighbor_mac(ip: Ipv4Addr, iface: &str) -> std::io::Result<Option<[u8; 6]>> {
    let table = std::fs::read_to_string("/proc/net/arp")?;
    Ok(parse_arp_table(&table, ip, iface))
}

/// Parses `/proc/net/arp` text (pure, for tests).
pub fn parse_arp_table(table: &str, ip: Ipv4Addr, iface: &str) -> Option<[u8; 6]> {
    const ATF_COM: u32 = 0x02;
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let [addr, _hw_type, flags, mac, _mask, dev] = cols.as_slice() else {
            return None;
        };
        if addr.parse::<Ipv4Addr>().ok()? != ip || *dev != iface {
            return None;
        }
        let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
        if flags & ATF_COM == 0 {
            return None;
        }
        parse_mac(mac).filter(|m| *m != [0; 6])
    })
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_table_complete_entries_only() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 198.18.0.11      0x1         0x2         1a:2b:3c:4d:5e:6f     *        eth0\n\
                 198.18.0.12      0x1         0x0         00:00:00:00:00:00     *        eth0\n";
        let ip = |s: &str| s.parse().unwrap();
        assert_eq!(
            parse_arp_table(t, ip("198.18.0.11"), "eth0"),
            Some([0x1a, 0x2b, 0x3c, 0x4d, 0x5e, 0x6f])
        );
        assert_eq!(parse_arp_table(t, ip("198.18.0.11"), "eth1"), None);
        assert_eq!(parse_arp_table(t, ip("198.18.0.12"), "eth0"), None);
        assert_eq!(parse_arp_table(t, ip("198.18.0.13"), "eth0"), None);
    }

    #[test]
    fn mac_parse() {
        assert_eq!(parse_mac("01:02:03:04:05:0a"), Some([1, 2, 3, 4, 5, 10]));
        assert_eq!(parse_mac("01:02:03:04:05"), None);
        assert_eq!(parse_mac("01:02:03:04:05:06:07"), None);
        assert_eq!(parse_mac("zz:02:03:04:05:06"), None);
    }

    #[test]
    fn loopback_exists() {
        let lo = iface_info("lo").unwrap();
        assert!(lo.ifindex > 0);
        assert!(iface_info("no-such-if0").is_err());
        assert!(iface_info("").is_err());
    }
}
