//! `TCP_REPAIR`: dump an established socket on the front-end and restore it
//! on the back-end, in the order the kernel requires (see `shared/DESIGN.md`).
//!
//! Ordering rules the kernel enforces (and that each function follows):
//! `TCP_QUEUE_SEQ` only before `connect` (else EPERM); `TCP_REPAIR_OPTIONS`
//! only after `connect` (else EPERM); `TCP_REPAIR_WINDOW` only after the
//! receive-queue bytes are queued (else EINVAL); `TCP_TIMESTAMP` only in repair
//! mode (else EPERM); `TCP_REPAIR` before any `SO_REUSEADDR` (which would
//! cancel the forced address reuse that lets many restored sockets share
//! VIP:port).

use std::net::SocketAddrV4;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use baton_proto::{RepairWindow, TcpState};

use crate::sockopt::{self, OptVal};
use crate::{cvt, Result, SysError};

const TCP_REPAIR_ON: libc::c_int = 1;
const TCP_REPAIR_OFF: libc::c_int = 0;
/// Leave repair mode without sending a window probe.
const TCP_REPAIR_OFF_NO_WP: libc::c_int = -1;

const TCP_NO_QUEUE: libc::c_int = 0;
const TCP_RECV_QUEUE: libc::c_int = 1;
const TCP_SEND_QUEUE: libc::c_int = 2;

const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;

const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;

/// `tcpi_state` of an established connection (`TCP_ESTABLISHED`).
const TCP_ESTABLISHED: u8 = 1;

/// How often the receive queue is read again when a segment slipped in
/// while it was being dumped.
const DUMP_ATTEMPTS: usize = 8;

/// The largest value `TCP_MAXSEG` accepts.
const MAX_USER_MSS: u16 = 32767;

/// The most unread bytes a handoff carries. More than this means the client
/// sent a large body before we handed off; the front then refuses the handoff.
pub const MAX_UNREAD: usize = 4 << 20;

/// The most send-queue bytes a handoff carries. The front writes only its
/// own TLS handshake and session tickets to a connection it hands off (a
/// few KiB); more means the client stopped reading.
pub const MAX_SENT: usize = 256 << 10;

/// `struct tcp_repair_opt`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct RepairOpt {
    code: u32,
    val: u32,
}
// SAFETY: two u32, no padding, valid for every bit pattern.
unsafe impl OptVal for RepairOpt {}

/// `struct tcp_repair_window`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RawWindow {
    snd_wl1: u32,
    snd_wnd: u32,
    max_window: u32,
    rcv_wnd: u32,
    rcv_wup: u32,
}
// SAFETY: five u32, no padding, valid for every bit pattern.
unsafe impl OptVal for RawWindow {}
const _: () = assert!(std::mem::size_of::<RawWindow>() == 20);
const _: () = assert!(std::mem::size_of::<RepairOpt>() == 8);

/// A dumped connection: its state, the bytes the client sent that the
/// back-end's HTTP server must still read, and the bytes sent to the client
/// that it has not acknowledged yet.
#[derive(Debug, Clone)]
pub struct Dumped {
    /// The TCP state (with `ts_val` as read at dump time; `snd_seq` is the
    /// sequence number after the last byte in `sent`).
    pub state: TcpState,
    /// Bytes still in the kernel's receive queue (peeked, not consumed).
    pub unread: Vec<u8>,
    /// The send queue (peeked): written by this socket, not acknowledged by
    /// the client yet (in flight, or not sent yet for want of window).
    pub sent: Vec<u8>,
}

fn tcp(fd: BorrowedFd<'_>, name: libc::c_int, val: libc::c_int, call: &'static str) -> Result<()> {
    sockopt::set_int(fd, libc::IPPROTO_TCP, name, val, call)
}

/// Whether this process may use `TCP_REPAIR` (it needs CAP_NET_ADMIN in
/// the socket's network namespace): tries it on a fresh, unconnected socket.
/// A front without it cannot hand connections off; the error says why
/// (EPERM for a missing capability).
pub fn probe() -> Result<()> {
    // SAFETY: plain socket(2); the fd is owned immediately below.
    let raw = cvt(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) },
        "socket(AF_INET)",
    )?;
    // SAFETY: a fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_repair(fd.as_fd(), true)
}

/// Puts the socket into repair mode (or takes it out).
pub fn set_repair(fd: BorrowedFd<'_>, on: bool) -> Result<()> {
    let val = if on { TCP_REPAIR_ON } else { TCP_REPAIR_OFF };
    tcp(fd, libc::TCP_REPAIR, val, "setsockopt(TCP_REPAIR)")
}

/// Takes a restored socket out of repair mode without the window probe the
/// kernel would otherwise send: the connection is live from here on.
pub fn go_live(fd: BorrowedFd<'_>) -> Result<()> {
    tcp(
        fd,
        libc::TCP_REPAIR,
        TCP_REPAIR_OFF_NO_WP,
        "setsockopt(TCP_REPAIR, OFF_NO_WP)",
    )
}

/// Dumps an established socket. Leaves it in repair mode: the caller then
/// either closes it (nothing is sent to the client) or, if the handoff fails,
/// calls [`set_repair`]`(fd, false)` and keeps serving on it.
///
/// The caller must have stopped the client's packets from reaching this
/// socket first (the forwarder's PARK entry): in repair mode the kernel still
/// ACKs incoming data, and those bytes would not be in the dump.
pub fn dump(fd: BorrowedFd<'_>) -> Result<Dumped> {
    set_repair(fd, true)?;
    let r = dump_in_repair(fd);
    if r.is_err() {
        // Best effort: leave the socket usable so the caller can answer 502.
        let _ = set_repair(fd, false);
    }
    r
}

fn dump_in_repair(fd: BorrowedFd<'_>) -> Result<Dumped> {
    let p = libc::IPPROTO_TCP;
    tcp(
        fd,
        libc::TCP_REPAIR_QUEUE,
        TCP_SEND_QUEUE,
        "setsockopt(TCP_REPAIR_QUEUE, send)",
    )?;
    let snd_seq: u32 = sockopt::get(
        fd,
        p,
        libc::TCP_QUEUE_SEQ,
        "getsockopt(TCP_QUEUE_SEQ, send)",
        false,
    )?;
    // What the client has not acknowledged yet (a TLS front's session
    // tickets, usually): carried along as CRIU does, so that the handoff
    // never waits for the client's ACK.
    // An ACK already past the forwarder can still shrink the queue while it
    // is read (the bytes it acknowledges leave its head; `snd_seq`, its
    // end, holds still): read until the length holds still too.
    let (_, sent) = until_stable(
        "recv(MSG_PEEK)",
        "the send queue",
        || outq(fd),
        |queued| peek_queue(fd, queued, MAX_SENT, "the send queue"),
        |sent: &Vec<u8>, queued| sent.len() == queued,
    )?;
    tcp(
        fd,
        libc::TCP_REPAIR_QUEUE,
        TCP_RECV_QUEUE,
        "setsockopt(TCP_REPAIR_QUEUE, recv)",
    )?;
    // The forwarder parks the client's packets before the dump, but a segment
    // already past it (in the backlog, or processed on another CPU) can still
    // land in the queue while it is read. The restore puts the bytes at
    // rcv_seq - len, so a sequence number and bytes from different moments
    // would shift the stream: read until the sequence number holds still.
    let (rcv_seq, unread) = until_stable(
        "getsockopt(TCP_QUEUE_SEQ, recv)",
        "the receive queue",
        || -> Result<u32> {
            sockopt::get(
                fd,
                p,
                libc::TCP_QUEUE_SEQ,
                "getsockopt(TCP_QUEUE_SEQ, recv)",
                false,
            )
        },
        |_| {
            let n = ioctl_int(fd, libc::FIONREAD, "ioctl(SIOCINQ)")?;
            peek_queue(fd, n, MAX_UNREAD, "the receive queue")
        },
        |_: &Vec<u8>, _| true,
    )?;
    // The queue selection stays on `recv`: the reads below do not use it,
    // and the kernel consults it only in repair mode, which the socket
    // leaves by closing (handed off) or by `set_repair(false)` (kept).

    // In repair mode TCP_MAXSEG reports the MSS clamp (what the peer offered).
    let mss = sockopt::get_int(fd, p, libc::TCP_MAXSEG, "getsockopt(TCP_MAXSEG)")?;
    let info: [u8; 8] = sockopt::get(fd, p, libc::TCP_INFO, "getsockopt(TCP_INFO)", true)?;
    // tcpi_state: a connection the client already half-closed (CLOSE_WAIT)
    // or that is going away must not be handed off; the caller keeps it.
    if info[0] != TCP_ESTABLISHED {
        return Err(SysError {
            call: "getsockopt(TCP_INFO)",
            source: std::io::Error::other(format!(
                "the connection is not established (tcpi_state {})",
                info[0]
            )),
        });
    }
    let options = info[5];
    let ts_val: u32 = sockopt::get(
        fd,
        p,
        libc::TCP_TIMESTAMP,
        "getsockopt(TCP_TIMESTAMP)",
        false,
    )?;
    let w: RawWindow = sockopt::get(
        fd,
        p,
        libc::TCP_REPAIR_WINDOW,
        "getsockopt(TCP_REPAIR_WINDOW)",
        false,
    )?;

    let state = TcpState {
        snd_seq,
        rcv_seq,
        mss: u16::try_from(mss).unwrap_or(u16::MAX),
        wscale_ok: options & TCPI_OPT_WSCALE != 0,
        // tcpi_snd_wscale is the low nibble, tcpi_rcv_wscale the high one.
        snd_wscale: info[6] & 0x0f,
        rcv_wscale: info[6] >> 4,
        timestamps_ok: options & TCPI_OPT_TIMESTAMPS != 0,
        sack_ok: options & TCPI_OPT_SACK != 0,
        ts_val,
        window: RepairWindow {
            snd_wl1: w.snd_wl1,
            snd_wnd: w.snd_wnd,
            max_window: w.max_window,
            rcv_wnd: w.rcv_wnd,
            rcv_wup: w.rcv_wup,
        },
    };
    Ok(Dumped {
        state,
        unread,
        sent,
    })
}

/// Reads a queue (`read`, given the marker read just before) until a
/// marker of it (a sequence number, a length) is the same before and after
/// the read and `fits` the bytes read, at most [`DUMP_ATTEMPTS`] times.
fn until_stable<M: PartialEq + Copy>(
    call: &'static str,
    what: &str,
    mut marker: impl FnMut() -> Result<M>,
    mut read: impl FnMut(M) -> Result<Vec<u8>>,
    fits: impl Fn(&Vec<u8>, M) -> bool,
) -> Result<(M, Vec<u8>)> {
    let mut before = marker()?;
    for _ in 0..DUMP_ATTEMPTS {
        let bytes = read(before)?;
        let after = marker()?;
        if after == before && fits(&bytes, after) {
            return Ok((after, bytes));
        }
        before = after;
    }
    Err(SysError {
        call,
        source: std::io::Error::other(format!("{what} kept changing over {DUMP_ATTEMPTS} reads")),
    })
}

fn ioctl_int(fd: BorrowedFd<'_>, req: libc::c_ulong, call: &'static str) -> Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCINQ/SIOCOUTQ write one int through the pointer.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut n) };
    cvt(ret, call)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

fn outq(fd: BorrowedFd<'_>) -> Result<usize> {
    ioctl_int(fd, libc::TIOCOUTQ, "ioctl(SIOCOUTQ)")
}

/// Peeks the `n` bytes of the selected queue (repair mode: the kernel only
/// allows `MSG_PEEK` then, and reads the queue chosen with
/// `TCP_REPAIR_QUEUE`).
fn peek_queue(fd: BorrowedFd<'_>, n: usize, max: usize, what: &str) -> Result<Vec<u8>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if n > max {
        return Err(SysError {
            call: "recv(MSG_PEEK)",
            source: std::io::Error::other(format!(
                "{n} bytes in {what} exceed the handoff limit of {max}"
            )),
        });
    }
    let mut buf = vec![0u8; n];
    // SAFETY: `buf` is a writable buffer of `n` bytes.
    let got = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            n,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if got < 0 {
        return Err(SysError::last("recv(MSG_PEEK)"));
    }
    buf.truncate(got as usize);
    Ok(buf)
}

/// Recreates a dumped connection on this host, bound to `local` (the VIP,
/// which must be a local address) and connected to `peer` (the client), with
/// `data` (what the client sent that the server has not read yet) in its
/// receive queue and `sent` (what the client has not acknowledged, see
/// [`Dumped::sent`]) in its send queue, as sent: the kernel retransmits it
/// if the client never got it (after the retransmission timeout, or sooner
/// when the client's SACKs show the hole). The dumped timestamp is advanced by `ts_advance` (see
/// [`advance_timestamp`]) to cover the time since the dump (a stale
/// timestamp trips the client's PAWS check). `ts_advance` is a [`Duration`];
/// plain milliseconds (`u32`) are still accepted through [`TsAdvance`].
///
/// The socket is returned still in repair mode: nothing has been sent. Call
/// [`go_live`] to start it, or drop it to discard it silently.
pub fn restore(
    state: &TcpState,
    local: SocketAddrV4,
    peer: SocketAddrV4,
    data: &[u8],
    sent: &[u8],
    ts_advance: impl Into<TsAdvance>,
) -> Result<OwnedFd> {
    let ts_advance = ts_advance.into().0;
    let p = libc::IPPROTO_TCP;
    // SAFETY: plain socket(2); the fd is owned immediately below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    let raw = cvt(raw, "socket")?;
    // SAFETY: `raw` is a fresh, valid fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let fd = sock.as_fd();

    // Repair mode first: it forces address reuse for bind.
    set_repair(fd, true)?;
    tcp(
        fd,
        libc::TCP_REPAIR_QUEUE,
        TCP_SEND_QUEUE,
        "setsockopt(TCP_REPAIR_QUEUE, send)",
    )?;
    let sent_len = u32::try_from(sent.len()).map_err(|_| SysError {
        call: "restore",
        source: std::io::Error::other("send queue too large"),
    })?;
    // The queue starts where the first unacknowledged byte was.
    sockopt::set(
        fd,
        p,
        libc::TCP_QUEUE_SEQ,
        &state.snd_seq.wrapping_sub(sent_len),
        "setsockopt(TCP_QUEUE_SEQ, send)",
    )?;
    tcp(
        fd,
        libc::TCP_REPAIR_QUEUE,
        TCP_RECV_QUEUE,
        "setsockopt(TCP_REPAIR_QUEUE, recv)",
    )?;
    let len = u32::try_from(data.len()).map_err(|_| SysError {
        call: "restore",
        source: std::io::Error::other("handoff data too large"),
    })?;
    let rcv_start = state.rcv_seq.wrapping_sub(len);
    sockopt::set(
        fd,
        p,
        libc::TCP_QUEUE_SEQ,
        &rcv_start,
        "setsockopt(TCP_QUEUE_SEQ, recv)",
    )?;
    // Before connect, or the socket starts with MSS 536. The kernel caps a
    // user MSS at 32767 (MAX_TCP_WINDOW); the exact clamp (65483 on loopback)
    // is restored by TCP_REPAIR_OPTIONS below.
    let user_mss = libc::c_int::from(state.mss.min(MAX_USER_MSS));
    sockopt::set_int(fd, p, libc::TCP_MAXSEG, user_mss, "setsockopt(TCP_MAXSEG)")?;

    sys_bind_connect(fd, local, peer)?;

    let mut opts = Vec::with_capacity(4);
    opts.push(RepairOpt {
        code: TCPOPT_MSS,
        val: u32::from(state.mss),
    });
    if state.wscale_ok {
        let val = u32::from(state.snd_wscale) | (u32::from(state.rcv_wscale) << 16);
        opts.push(RepairOpt {
            code: TCPOPT_WINDOW,
            val,
        });
    }
    if state.sack_ok {
        opts.push(RepairOpt {
            code: TCPOPT_SACK_PERM,
            val: 0,
        });
    }
    if state.timestamps_ok {
        opts.push(RepairOpt {
            code: TCPOPT_TIMESTAMP,
            val: 0,
        });
    }
    sockopt::set_slice(
        fd,
        p,
        libc::TCP_REPAIR_OPTIONS,
        &opts,
        "setsockopt(TCP_REPAIR_OPTIONS)",
    )?;
    if state.timestamps_ok {
        let ts = advance_timestamp(state.ts_val, ts_advance);
        sockopt::set(fd, p, libc::TCP_TIMESTAMP, &ts, "setsockopt(TCP_TIMESTAMP)")?;
    }

    // The receive queue is still selected: send() queues into it.
    queue_in_repair(fd, data, "send(receive queue)")?;
    if !sent.is_empty() {
        // In repair mode, data written to the send queue counts as sent
        // without going on the wire.
        tcp(
            fd,
            libc::TCP_REPAIR_QUEUE,
            TCP_SEND_QUEUE,
            "setsockopt(TCP_REPAIR_QUEUE, send)",
        )?;
        queue_in_repair(fd, sent, "send(send queue)")?;
    }
    tcp(
        fd,
        libc::TCP_REPAIR_QUEUE,
        TCP_NO_QUEUE,
        "setsockopt(TCP_REPAIR_QUEUE, none)",
    )?;

    let w = RawWindow {
        snd_wl1: state.window.snd_wl1,
        snd_wnd: state.window.snd_wnd,
        max_window: state.window.max_window,
        rcv_wnd: state.window.rcv_wnd,
        rcv_wup: state.window.rcv_wup,
    };
    sockopt::set(
        fd,
        p,
        libc::TCP_REPAIR_WINDOW,
        &w,
        "setsockopt(TCP_REPAIR_WINDOW)",
    )?;
    Ok(sock)
}

/// Writes `data` into the queue selected with `TCP_REPAIR_QUEUE`.
fn queue_in_repair(fd: BorrowedFd<'_>, data: &[u8], call: &'static str) -> Result<()> {
    let mut off = 0;
    while off < data.len() {
        let rest = &data[off..];
        // SAFETY: `rest` is a readable buffer of `rest.len()` bytes.
        let n = unsafe { libc::send(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len(), 0) };
        if n <= 0 {
            return Err(SysError::last(call));
        }
        off += n as usize;
    }
    Ok(())
}

/// How far [`restore`] advances the dumped timestamp.
///
/// Transitional: built from a [`Duration`] (the interface) or from whole
/// milliseconds (`u32`, the former `ts_advance_ms` argument) so callers can
/// move to `Duration` one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TsAdvance(pub Duration);

impl From<Duration> for TsAdvance {
    fn from(d: Duration) -> Self {
        TsAdvance(d)
    }
}

impl From<u32> for TsAdvance {
    fn from(ms: u32) -> Self {
        TsAdvance(Duration::from_millis(u64::from(ms)))
    }
}

/// Advances a `TCP_TIMESTAMP` value read from a socket by `by`, in the
/// socket's own unit, keeping the unit.
///
/// Since Linux 6.7 bit 0 of the value selects the clock: set, microseconds
/// (a connection that negotiated usec timestamps); clear, milliseconds. The
/// kernel reports the bit that way and takes it back from `setsockopt`, so
/// adding milliseconds to a dumped value could switch a restored socket's
/// clock. The result is rounded up to the right parity: a timestamp must
/// never run backwards (the client's PAWS check). Before 6.7 the bit is an
/// ordinary part of a millisecond clock; an odd value then gets advanced by
/// microseconds, a jump forward that PAWS accepts.
pub fn advance_timestamp(ts_val: u32, by: Duration) -> u32 {
    // The clock wraps at 2^32 like the value itself, so truncation is the
    // arithmetic TCP uses.
    if ts_val & 1 == 1 {
        let us = by.as_micros() as u32;
        ts_val.wrapping_add(us) | 1
    } else {
        let ms = by.as_millis() as u32;
        let ts = ts_val.wrapping_add(ms);
        ts.wrapping_add(ts & 1)
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn sys_bind_connect(fd: BorrowedFd<'_>, local: SocketAddrV4, peer: SocketAddrV4) -> Result<()> {
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let l = sockaddr(local);
    // SAFETY: `l` is a valid sockaddr_in of `len` bytes.
    let ret = unsafe { libc::bind(fd.as_raw_fd(), (&l as *const libc::sockaddr_in).cast(), len) };
    cvt(ret, "bind(VIP)")?;
    let r = sockaddr(peer);
    // SAFETY: as above; in repair mode connect sends no SYN and returns at once.
    let ret =
        unsafe { libc::connect(fd.as_raw_fd(), (&r as *const libc::sockaddr_in).cast(), len) };
    cvt(ret, "connect(client)").map(drop)
}

/// Sets `O_NONBLOCK` (for handing the fd to an async runtime).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: fcntl on a valid fd.
    let flags = cvt(
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) },
        "fcntl(F_GETFL)",
    )?;
    // SAFETY: as above.
    cvt(
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) },
        "fcntl(F_SETFL)",
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_millisecond_timestamp_advances_in_ms_and_stays_even() {
        // 7 ms would make it odd, which a 6.7+ kernel reads as "usec clock".
        assert_eq!(advance_timestamp(1000, Duration::from_millis(7)), 1008);
        assert_eq!(advance_timestamp(1000, Duration::from_millis(8)), 1008);
        assert_eq!(advance_timestamp(1000, Duration::from_micros(999)), 1000);
        assert_eq!(advance_timestamp(u32::MAX - 1, Duration::from_millis(3)), 2);
    }

    #[test]
    fn a_microsecond_timestamp_advances_in_us_and_stays_odd() {
        assert_eq!(advance_timestamp(1001, Duration::from_millis(7)), 8001);
        assert_eq!(advance_timestamp(1001, Duration::from_micros(3)), 1005);
        // Rounded up, never down: the client's PAWS check rejects older values.
        assert_eq!(advance_timestamp(1001, Duration::from_micros(1)), 1003);
        assert_eq!(advance_timestamp(u32::MAX, Duration::from_micros(2)), 1);
    }

    #[test]
    fn milliseconds_and_durations_advance_alike() {
        assert_eq!(
            TsAdvance::from(5u32),
            TsAdvance::from(Duration::from_millis(5))
        );
    }
}
