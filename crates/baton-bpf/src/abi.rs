//! The Rust mirror of `bpf/abi.h` and the crate's only `unsafe`: `Pod`
//! impls for the mirrored structs, the `BPF_PROG_TEST_RUN` syscall that aya
//! 0.13 does not wrap, and the monotonic clock the program stamps flows with.
//!
//! Constants come from the header itself (build.rs generates them); struct
//! layouts are written by hand and pinned by compile-time size and offset
//! assertions against the header's numbers.
#![allow(unsafe_code)]

use std::io;
use std::mem::{offset_of, size_of};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd};

use baton_proto::FlowKey;

include!(concat!(env!("OUT_DIR"), "/abi_consts.rs"));

/// `struct flow_key`: addresses and ports in network byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct RawFlowKey {
    client_ip: u32,
    vip: u32,
    client_port: u16,
    vip_port: u16,
}

/// `struct flow_val`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RawFlowVal {
    pub action: u32,
    pub ifindex: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// Network byte order, as `Ipv4Addr::octets` in memory order.
    pub backend_ip: u32,
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    pub handoff_id: u64,
}

/// `struct btcp_config`: the VIP and its ports in network byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RawConfig {
    vip: u32,
    flags: u32,
    ports: [u16; MAX_SERVICE_PORTS as usize],
}

impl RawConfig {
    /// Guards `vip`'s `ports` (at most [`MAX_SERVICE_PORTS`]; more are the caller's error).
    pub(crate) fn guarding(vip: Ipv4Addr, ports: &[u16]) -> Self {
        let mut raw = RawConfig {
            vip: u32::from_ne_bytes(vip.octets()),
            flags: CONFIG_DROP_UNKNOWN,
            ports: [0; MAX_SERVICE_PORTS as usize],
        };
        for (slot, port) in raw.ports.iter_mut().zip(ports) {
            *slot = u16::from_ne_bytes(port.to_be_bytes());
        }
        raw
    }

    /// The guarded VIP and its ports, or `None` when nothing is guarded.
    pub(crate) fn guarded(&self) -> Option<(Ipv4Addr, Vec<u16>)> {
        if self.flags & CONFIG_DROP_UNKNOWN == 0 || self.vip == 0 {
            return None;
        }
        let ports = self
            .ports
            .iter()
            .filter(|p| **p != 0)
            .map(|p| u16::from_be_bytes(p.to_ne_bytes()))
            .collect();
        Some((Ipv4Addr::from(self.vip.to_ne_bytes()), ports))
    }
}

const _: () = assert!(size_of::<RawFlowKey>() == SIZEOF_FLOW_KEY as usize);
const _: () = assert!(size_of::<RawFlowVal>() == SIZEOF_FLOW_VAL as usize);
const _: () = assert!(offset_of!(RawFlowVal, dst_mac) == 8);
const _: () = assert!(offset_of!(RawFlowVal, src_mac) == 14);
const _: () = assert!(offset_of!(RawFlowVal, backend_ip) == 20);
const _: () = assert!(offset_of!(RawFlowVal, last_seen_ns) == 24);
const _: () = assert!(offset_of!(RawFlowVal, handoff_id) == 48);
// The ring must be a power-of-two number of pages; Stats reads every index.
const _: () = assert!(RING_BYTES.is_power_of_two() && RING_BYTES % 4096 == 0);
const _: () = assert!(STAT_COUNT == 11);
const _: () = assert!(size_of::<RawConfig>() == SIZEOF_CONFIG as usize);
const _: () = assert!(offset_of!(RawConfig, ports) == 8);

// SAFETY: repr(C), integer fields only, no padding (size asserted equal to the
// sum of the fields above), so every bit pattern is a valid value and the
// struct can be copied to and from the kernel as bytes.
unsafe impl aya::Pod for RawFlowKey {}
// SAFETY: as for RawFlowKey; `backend_ip` fills what would be the only gap.
unsafe impl aya::Pod for RawFlowVal {}
// SAFETY: repr(C), integer fields only, no padding (size asserted equal to
// the sum of the fields), so every bit pattern is a valid value.
unsafe impl aya::Pod for RawConfig {}

impl From<&FlowKey> for RawFlowKey {
    fn from(key: &FlowKey) -> Self {
        // from_ne_bytes keeps the octets in memory order: network order, as in the packet.
        Self {
            client_ip: u32::from_ne_bytes(key.client.ip().octets()),
            vip: u32::from_ne_bytes(key.vip.ip().octets()),
            client_port: u16::from_ne_bytes(key.client.port().to_be_bytes()),
            vip_port: u16::from_ne_bytes(key.vip.port().to_be_bytes()),
        }
    }
}

impl From<RawFlowKey> for FlowKey {
    fn from(raw: RawFlowKey) -> Self {
        FlowKey {
            client: SocketAddrV4::new(
                Ipv4Addr::from(raw.client_ip.to_ne_bytes()),
                u16::from_be_bytes(raw.client_port.to_ne_bytes()),
            ),
            vip: SocketAddrV4::new(
                Ipv4Addr::from(raw.vip.to_ne_bytes()),
                u16::from_be_bytes(raw.vip_port.to_ne_bytes()),
            ),
        }
    }
}

/// Splits a PARKED ring record into its key and frame bytes; `None` if the
/// record is shorter than its header claims.
pub(crate) fn parse_parked_record(record: &[u8]) -> Option<(FlowKey, &[u8])> {
    let hdr_len = SIZEOF_PARKED_HDR as usize;
    let (hdr, rest) = record.split_at_checked(hdr_len)?;
    let word = |at: usize| -> Option<[u8; 4]> { hdr.get(at..at + 4)?.try_into().ok() };
    let half = |at: usize| -> Option<[u8; 2]> { hdr.get(at..at + 2)?.try_into().ok() };
    let key = RawFlowKey {
        client_ip: u32::from_ne_bytes(word(0)?),
        vip: u32::from_ne_bytes(word(4)?),
        client_port: u16::from_ne_bytes(half(8)?),
        vip_port: u16::from_ne_bytes(half(10)?),
    };
    let len = usize::try_from(u32::from_ne_bytes(word(12)?)).ok()?;
    Some((key.into(), rest.get(..len)?))
}

/// Result of one `BPF_PROG_TEST_RUN`.
#[derive(Debug)]
pub(crate) struct RawTestRun {
    pub retval: u32,
    pub data_out: Vec<u8>,
    pub duration_ns: u32,
}

/// The `test` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: u32,
}

const _: () = assert!(size_of::<TestRunAttr>() == 80);

const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// Room for a program that grows the frame; ours never does.
const TEST_RUN_HEADROOM: usize = 256;

/// Runs a loaded program once per `repeat` on `frame` without attaching it.
pub(crate) fn prog_test_run(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    repeat: u32,
) -> io::Result<RawTestRun> {
    let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "test frame too large");
    let mut out = vec![
        0u8;
        frame
            .len()
            .checked_add(TEST_RUN_HEADROOM)
            .ok_or_else(too_big)?
    ];
    let mut attr = TestRunAttr {
        prog_fd: u32::try_from(prog.as_raw_fd())
            .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
        data_size_in: u32::try_from(frame.len()).map_err(|_| too_big())?,
        data_size_out: u32::try_from(out.len()).map_err(|_| too_big())?,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` is a fully initialised, zero-padded bpf_attr prefix of
    // the size passed; data_in points at frame.len() readable bytes and
    // data_out at out.len() writable bytes, both alive for the whole call;
    // the kernel writes only into `attr` and `out`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            size_of::<TestRunAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    out.truncate(
        usize::try_from(attr.data_size_out)
            .unwrap_or(usize::MAX)
            .min(out.len()),
    );
    Ok(RawTestRun {
        retval: attr.retval,
        data_out: out,
        duration_ns: attr.duration,
    })
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) cannot fail");
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Moves the calling thread into the network namespace behind `ns`.
#[cfg(test)]
pub(crate) fn enter_netns(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns only reads the fd, which `BorrowedFd` keeps open for the
    // call; it changes the namespace of this thread alone.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Registers the parked ring with the current tokio reactor.
#[cfg(test)]
pub(crate) fn register_ring(
    ring: crate::ParkedRing,
) -> io::Result<tokio::io::unix::AsyncFd<crate::ParkedRing>> {
    use tokio::io::{unix::AsyncFd, Interest};
    // SAFETY: a ParkedRing owns its map fd (aya's MapData holds it as an
    // OwnedFd) and never replaces it, so as_raw_fd() returns the same open fd
    // for as long as the AsyncFd owns the ring.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(io::Error::from)
}

/// The `f_type` of the filesystem holding `path` (`statfs(2)`).
pub(crate) fn statfs_type(path: &std::path::Path) -> io::Result<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `buf` a writable statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs returned 0, so it filled `buf`.
    let st = unsafe { buf.assume_init() };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    Ok(st.f_type as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_key_is_laid_out_in_network_order() {
        let key = FlowKey {
            client: "198.18.0.2:40000".parse().expect("literal"),
            vip: "198.18.0.100:80".parse().expect("literal"),
        };
        let raw = RawFlowKey::from(&key);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&raw.client_ip.to_ne_bytes());
        bytes.extend_from_slice(&raw.vip.to_ne_bytes());
        bytes.extend_from_slice(&raw.client_port.to_ne_bytes());
        bytes.extend_from_slice(&raw.vip_port.to_ne_bytes());
        assert_eq!(bytes, [198, 18, 0, 2, 198, 18, 0, 100, 0x9c, 0x40, 0, 80]);
        assert_eq!(FlowKey::from(raw), key);
    }

    #[test]
    fn config_is_laid_out_in_network_order_and_read_back() {
        let raw = RawConfig::guarding(Ipv4Addr::new(198, 18, 0, 100), &[80, 443]);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&raw.vip.to_ne_bytes());
        bytes.extend_from_slice(&raw.flags.to_ne_bytes());
        for p in raw.ports {
            bytes.extend_from_slice(&p.to_ne_bytes());
        }
        let flags = CONFIG_DROP_UNKNOWN.to_ne_bytes();
        assert_eq!(bytes[..4], [198, 18, 0, 100]);
        assert_eq!(bytes[4..8], flags);
        assert_eq!(bytes[8..], [0, 80, 1, 187, 0, 0, 0, 0]);
        assert_eq!(
            raw.guarded(),
            Some((Ipv4Addr::new(198, 18, 0, 100), vec![80, 443]))
        );
        assert_eq!(RawConfig::default().guarded(), None);
    }

    #[test]
    fn parked_record_rejects_a_length_past_the_record() {
        let mut record = vec![0u8; SIZEOF_PARKED_HDR as usize];
        record[12..16].copy_from_slice(&5u32.to_ne_bytes());
        record.extend_from_slice(&[1, 2, 3, 4]);
        assert!(parse_parked_record(&record).is_none());
        record.push(5);
        let (_, frame) = parse_parked_record(&record).expect("complete record");
        assert_eq!(frame, [1, 2, 3, 4, 5]);
        assert!(parse_parked_record(&record[..10]).is_none());
    }
}
