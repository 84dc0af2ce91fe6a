//! Making a parked frame fit to be sent again, from user space, to its back-end.
//!
//! Frames parked from a veth arrive with `CHECKSUM_PARTIAL`: their TCP
//! checksum field holds only the pseudo-header sum, which the sender's NIC
//! would have completed. An AF_PACKET send does not complete it, so both
//! checksums are recomputed here. Every read is bounds-checked; the frame is
//! validated whole before the first byte is written.

use thiserror::Error;

const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const IPV4_MIN_HLEN: usize = 20;
const IPPROTO_TCP: u8 = 6;
const TCP_MIN_HLEN: usize = 20;
/// The MF flag and the fragment offset.
const IPV4_FRAG_MASK: u16 = 0x3fff;
const IPV4_CHECK_AT: usize = 10;
const TCP_CHECK_AT: usize = 16;

/// Why a frame cannot be prepared for resending.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The frame ends before a header it announces.
    #[error("frame truncated: {what} needs {need} bytes, the frame has {have}")]
    Truncated {
        /// The header or field that does not fit.
        what: &'static str,
        /// Bytes needed from the start of the frame.
        need: usize,
        /// Bytes in the frame.
        have: usize,
    },
    /// Not an untagged Ethernet/IPv4 frame.
    #[error("not an IPv4 frame (ethertype {0:#06x})")]
    NotIpv4(u16),
    /// The IPv4 header is inconsistent.
    #[error("bad IPv4 header: {0}")]
    BadIpv4(&'static str),
    /// The IPv4 payload is not TCP.
    #[error("not TCP (IP protocol {0})")]
    NotTcp(u8),
    /// An IPv4 fragment: its TCP checksum cannot be computed from it alone.
    #[error("IPv4 fragment: the TCP checksum covers the whole segment")]
    Fragment,
    /// The TCP header is inconsistent.
    #[error("bad TCP header: {0}")]
    BadTcp(&'static str),
}

/// Rewrites the Ethernet addresses of an Ethernet/IPv4/TCP `frame` and
/// recomputes its IPv4 header checksum and full TCP checksum.
///
/// Bytes past the IPv4 total length (Ethernet padding) are left alone. The
/// frame is not modified when an error is returned. Frames larger than the
/// egress MTU (GRO super-frames) still need segmenting by the caller.
pub fn prepare_for_resend(
    frame: &mut [u8],
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
) -> Result<(), FrameError> {
    let layout = Layout::parse(frame)?;

    write(frame, 0, &dst_mac, "Ethernet destination")?;
    write(frame, 6, &src_mac, "Ethernet source")?;

    let ip_check_at = ETH_HLEN + IPV4_CHECK_AT;
    write(frame, ip_check_at, &[0, 0], "IPv4 checksum")?;
    let ip_header = slice(frame, ETH_HLEN, ETH_HLEN + layout.ip_hlen, "IPv4 header")?;
    let ip_check = finish(sum_words(0, ip_header));
    write(frame, ip_check_at, &ip_check.to_be_bytes(), "IPv4 checksum")?;

    let tcp_check_at = layout.tcp_start + TCP_CHECK_AT;
    write(frame, tcp_check_at, &[0, 0], "TCP checksum")?;
    let addresses = slice(frame, ETH_HLEN + 12, ETH_HLEN + 20, "IPv4 addresses")?;
    let segment = slice(frame, layout.tcp_start, layout.tcp_end, "TCP segment")?;
    let tcp_len = u16::try_from(segment.len())
        .map_err(|_| FrameError::BadTcp("segment longer than 65535"))?;
    let mut sum = sum_words(0, addresses);
    sum += u32::from(IPPROTO_TCP);
    sum += u32::from(tcp_len);
    let tcp_check = finish(sum_words(sum, segment));
    write(
        frame,
        tcp_check_at,
        &tcp_check.to_be_bytes(),
        "TCP checksum",
    )?;
    Ok(())
}

/// Whether `frame` is a valid Ethernet/IPv4/TCP segment that carries
/// nothing but an acknowledgement: flags exactly ACK, no payload.
pub fn is_pure_ack(frame: &[u8]) -> bool {
    ack_of(frame).is_some_and(|a| a.flags == TCP_ACK && a.payload_empty)
}

/// Whether `later`, a frame of the same flow sent after the pure ACK
/// `earlier`, makes `earlier` redundant: `later` acknowledges at least as
/// much (and, being later, carries the newer window and SACK blocks).
/// Not when `later` is a pure ACK of the same number: two of those are
/// duplicate ACKs (or a window update), which the sender counts. Not when
/// `later` acknowledges less (frames parked out of order) or nothing (a RST
/// without ACK).
pub fn supersedes(later: &[u8], earlier: &[u8]) -> bool {
    let (Some(l), Some(e)) = (ack_of(later), ack_of(earlier)) else {
        return false;
    };
    if e.flags != TCP_ACK || !e.payload_empty || l.flags & TCP_ACK == 0 {
        return false;
    }
    // Serial-number arithmetic: how far `later`'s ACK is past `earlier`'s.
    let ahead = l.ack.wrapping_sub(e.ack) as i32;
    let duplicate = ahead == 0 && l.flags == TCP_ACK && l.payload_empty;
    ahead >= 0 && !duplicate
}

const TCP_ACK: u8 = 0x10;

/// What [`supersedes`] needs of a TCP segment.
struct AckInfo {
    flags: u8,
    ack: u32,
    payload_empty: bool,
}

fn ack_of(frame: &[u8]) -> Option<AckInfo> {
    let layout = Layout::parse(frame).ok()?;
    let offset = read_u8(frame, layout.tcp_start + 12, "TCP header").ok()?;
    let header_end = layout.tcp_start + usize::from(offset >> 4) * 4;
    let flags = read_u8(frame, layout.tcp_start + 13, "TCP flags").ok()?;
    let ack = slice(
        frame,
        layout.tcp_start + 8,
        layout.tcp_start + 12,
        "TCP ack",
    )
    .ok()?;
    Some(AckInfo {
        flags,
        ack: u32::from_be_bytes(ack.try_into().ok()?),
        payload_empty: header_end == layout.tcp_end,
    })
}

/// Offsets of a validated frame.
struct Layout {
    ip_hlen: usize,
    tcp_start: usize,
    tcp_end: usize,
}

impl Layout {
    fn parse(frame: &[u8]) -> Result<Self, FrameError> {
        let ethertype = read_u16(frame, 12, "Ethernet header")?;
        if ethertype != ETHERTYPE_IPV4 {
            return Err(FrameError::NotIpv4(ethertype));
        }
        let version_ihl = read_u8(frame, ETH_HLEN, "IPv4 header")?;
        if version_ihl >> 4 != 4 {
            return Err(FrameError::BadIpv4("version is not 4"));
        }
        let ip_hlen = usize::from(version_ihl & 0x0f) * 4;
        if ip_hlen < IPV4_MIN_HLEN {
            return Err(FrameError::BadIpv4("header length below 20"));
        }
        slice(frame, ETH_HLEN, ETH_HLEN + ip_hlen, "IPv4 header")?;
        let total_len = usize::from(read_u16(frame, ETH_HLEN + 2, "IPv4 header")?);
        if total_len < ip_hlen {
            return Err(FrameError::BadIpv4("total length below header length"));
        }
        let ip_end = ETH_HLEN + total_len;
        slice(frame, ETH_HLEN, ip_end, "IPv4 total length")?;
        if read_u16(frame, ETH_HLEN + 6, "IPv4 header")? & IPV4_FRAG_MASK != 0 {
            return Err(FrameError::Fragment);
        }
        let protocol = read_u8(frame, ETH_HLEN + 9, "IPv4 header")?;
        if protocol != IPPROTO_TCP {
            return Err(FrameError::NotTcp(protocol));
        }
        let tcp_start = ETH_HLEN + ip_hlen;
        if total_len - ip_hlen < TCP_MIN_HLEN {
            return Err(FrameError::BadTcp("segment shorter than 20 bytes"));
        }
        let data_offset = usize::from(read_u8(frame, tcp_start + 12, "TCP header")? >> 4) * 4;
        if data_offset < TCP_MIN_HLEN || tcp_start + data_offset > ip_end {
            return Err(FrameError::BadTcp("data offset outside the segment"));
        }
        Ok(Self {
            ip_hlen,
            tcp_start,
            tcp_end: ip_end,
        })
    }
}

fn slice<'a>(
    frame: &'a [u8],
    start: usize,
    end: usize,
    what: &'static str,
) -> Result<&'a [u8], FrameError> {
    frame.get(start..end).ok_or(FrameError::Truncated {
        what,
        need: end,
        have: frame.len(),
    })
}

fn read_u8(frame: &[u8], at: usize, what: &'static str) -> Result<u8, FrameError> {
    frame.get(at).copied().ok_or(FrameError::Truncated {
        what,
        need: at + 1,
        have: frame.len(),
    })
}

fn read_u16(frame: &[u8], at: usize, what: &'static str) -> Result<u16, FrameError> {
    let bytes = slice(frame, at, at + 2, what)?;
    let pair = <[u8; 2]>::try_from(bytes).map_err(|_| FrameError::Truncated {
        what,
        need: at + 2,
        have: frame.len(),
    })?;
    Ok(u16::from_be_bytes(pair))
}

fn write(frame: &mut [u8], at: usize, bytes: &[u8], what: &'static str) -> Result<(), FrameError> {
    let have = frame.len();
    let end = at + bytes.len();
    frame
        .get_mut(at..end)
        .ok_or(FrameError::Truncated {
            what,
            need: end,
            have,
        })?
        .copy_from_slice(bytes);
    Ok(())
}

/// Adds `bytes` as big-endian 16-bit words (a trailing odd byte padded with
/// zero) to a one's-complement running sum.
fn sum_words(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut words = bytes.chunks_exact(2);
    for word in &mut words {
        if let [hi, lo] = word {
            sum = fold_once(sum + u32::from(u16::from_be_bytes([*hi, *lo])));
        }
    }
    if let [last] = words.remainder() {
        sum = fold_once(sum + (u32::from(*last) << 8));
    }
    sum
}

/// Keeps the running sum within 17 bits so that adding one more word cannot overflow.
fn fold_once(sum: u32) -> u32 {
    (sum & 0xffff) + (sum >> 16)
}

fn finish(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = fold_once(sum);
    }
    // The loop leaves sum <= 0xffff, so the cast keeps every bit.
    !(sum as u16)
}

/// True if the IPv4 and TCP checksums of `frame` verify.
#[cfg(test)]
pub(crate) fn checksums_valid(frame: &[u8]) -> Result<bool, FrameError> {
    let layout = Layout::parse(frame)?;
    let ip_ok = finish(sum_words(
        0,
        slice(frame, ETH_HLEN, ETH_HLEN + layout.ip_hlen, "IPv4 header")?,
    )) == 0;
    let segment = slice(frame, layout.tcp_start, layout.tcp_end, "TCP segment")?;
    let tcp_len = u32::try_from(segment.len()).map_err(|_| FrameError::BadTcp("too long"))?;
    let sum = sum_words(
        0,
        slice(frame, ETH_HLEN + 12, ETH_HLEN + 20, "IPv4 addresses")?,
    ) + u32::from(IPPROTO_TCP)
        + tcp_len;
    let tcp_ok = finish(sum_words(sum, segment)) == 0;
    Ok(ip_ok && tcp_ok)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    pub(crate) const FRONT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    pub(crate) const BACK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

    /// 198.18.0.2:40000 -> 198.18.0.100:80, PSH|ACK, with the given checksums.
    pub(crate) fn tcp_frame(payload: &[u8], ip_check: u16, tcp_check: u16) -> Vec<u8> {
        let tcp_len = 20 + payload.len();
        let total_len = u16::try_from(20 + tcp_len).expect("test payload is small");
        let mut f = Vec::new();
        f.extend_from_slice(&FRONT_MAC);
        f.extend_from_slice(&CLIENT_MAC);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0x45, 0x00]);
        f.extend_from_slice(&total_len.to_be_bytes());
        f.extend_from_slice(&[0x1c, 0x46, 0x40, 0x00, 64, 6]);
        f.extend_from_slice(&ip_check.to_be_bytes());
        f.extend_from_slice(&[198, 18, 0, 2, 198, 18, 0, 100]);
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&80u16.to_be_bytes());
        f.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        f.extend_from_slice(&0x0a0b_0c0du32.to_be_bytes());
        f.extend_from_slice(&[0x50, 0x18]);
        f.extend_from_slice(&502u16.to_be_bytes());
        f.extend_from_slice(&tcp_check.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
    // Computed independently (a Python one-liner over the same bytes).
    const GET_IP_CHECK: u16 = 0x91ed;
    const GET_TCP_CHECK: u16 = 0x8bea;
    /// What CHECKSUM_PARTIAL leaves in the field: the folded pseudo-header sum.
    const GET_PARTIAL: u16 = 0x8cb7;
    const HELLO_IP_CHECK: u16 = 0x91fa;
    const HELLO_TCP_CHECK: u16 = 0x26c6;

    #[test]
    fn pure_acks_are_told_from_everything_else() {
        let mut ack = tcp_frame(b"", 0, 0);
        ack[ETH_HLEN + 20 + 13] = 0x10;
        assert!(is_pure_ack(&ack));
        // Ethernet padding after the IPv4 total length changes nothing.
        let mut padded = ack.clone();
        padded.extend_from_slice(&[0; 6]);
        assert!(is_pure_ack(&padded));
        // Data, FIN, RST, SYN, ECN echo: not pure ACKs.
        let mut data = tcp_frame(GET, 0, 0);
        data[ETH_HLEN + 20 + 13] = 0x10;
        assert!(!is_pure_ack(&data));
        for flags in [0x11, 0x14, 0x12, 0x50, 0x18] {
            let mut f = ack.clone();
            f[ETH_HLEN + 20 + 13] = flags;
            assert!(!is_pure_ack(&f), "flags {flags:#x}");
        }
        // Not even a valid frame.
        assert!(!is_pure_ack(&ack[..ETH_HLEN + 30]));
        assert!(!is_pure_ack(&[]));
    }

    /// A frame with these flags, acknowledgement number and payload.
    fn segment(flags: u8, ack: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = tcp_frame(payload, 0, 0);
        f[ETH_HLEN + 20 + 8..ETH_HLEN + 20 + 12].copy_from_slice(&ack.to_be_bytes());
        f[ETH_HLEN + 20 + 13] = flags;
        f
    }

    #[test]
    fn a_pure_ack_is_superseded_only_by_a_frame_that_repeats_it() {
        let ack = segment(0x10, 1000, b"");
        // The client's FIN and its data carry the same acknowledgement.
        assert!(supersedes(&segment(0x11, 1000, b""), &ack));
        assert!(supersedes(&segment(0x18, 1000, GET), &ack));
        // A newer pure ACK, also across the wrap of the sequence space.
        assert!(supersedes(&segment(0x10, 2000, b""), &ack));
        let near_wrap = segment(0x10, u32::MAX - 10, b"");
        assert!(supersedes(&segment(0x10, 5, b""), &near_wrap));
        // Duplicate ACKs (or a window update) are all kept.
        assert!(!supersedes(&segment(0x10, 1000, b""), &ack));
        // An older acknowledgement (frames out of order) or none at all.
        assert!(!supersedes(&segment(0x10, 999, b""), &ack));
        assert!(!supersedes(&segment(0x04, 2000, b""), &ack));
        // Only a pure ACK is ever superseded.
        assert!(!supersedes(
            &segment(0x10, 2000, b""),
            &segment(0x11, 1000, b"")
        ));
        assert!(!supersedes(
            &segment(0x10, 2000, b""),
            &segment(0x18, 1000, GET)
        ));
        assert!(!supersedes(&ack[..ETH_HLEN + 30], &ack));
        assert!(!supersedes(
            &segment(0x10, 2000, b""),
            &ack[..ETH_HLEN + 30]
        ));
    }

    fn rewritten(mut frame: Vec<u8>) -> Vec<u8> {
        prepare_for_resend(&mut frame, BACK_MAC, FRONT_MAC).expect("valid frame");
        frame
    }

    #[test]
    fn partial_checksum_frame_is_completed() {
        let out = rewritten(tcp_frame(GET, 0, GET_PARTIAL));
        assert_eq!(out, {
            let mut want = tcp_frame(GET, GET_IP_CHECK, GET_TCP_CHECK);
            want[..6].copy_from_slice(&BACK_MAC);
            want[6..12].copy_from_slice(&FRONT_MAC);
            want
        });
        assert_eq!(checksums_valid(&out), Ok(true));
    }

    #[test]
    fn odd_length_payload_checksums_match_reference() {
        let out = rewritten(tcp_frame(b"hello", 0xdead, 0xbeef));
        assert_eq!(out[24..26], HELLO_IP_CHECK.to_be_bytes());
        assert_eq!(out[50..52], HELLO_TCP_CHECK.to_be_bytes());
    }

    #[test]
    fn ipv4_checksum_matches_the_textbook_example() {
        // The classic example header (RFC 1071 style walkthroughs): checksum 0xb861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(finish(sum_words(0, &header)), 0xb861);
    }

    #[test]
    fn ethernet_padding_is_not_summed() {
        let mut frame = tcp_frame(GET, 0, 0);
        frame.extend_from_slice(&[0xff; 6]);
        let out = rewritten(frame);
        assert_eq!(out[50..52], GET_TCP_CHECK.to_be_bytes());
        assert_eq!(out[out.len() - 6..], [0xff; 6]);
    }

    #[test]
    fn invalid_frames_are_rejected_untouched() {
        let good = tcp_frame(GET, 0, 0);
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (
                good[..10].to_vec(),
                FrameError::Truncated {
                    what: "Ethernet header",
                    need: 14,
                    have: 10,
                },
            ),
            (
                good[..40].to_vec(),
                FrameError::Truncated {
                    what: "IPv4 total length",
                    need: 72,
                    have: 40,
                },
            ),
            (
                {
                    let mut f = good.clone();
                    f[12] = 0x86;
                    f[13] = 0xdd;
                    f
                },
                FrameError::NotIpv4(0x86dd),
            ),
            (
                {
                    let mut f = good.clone();
                    f[23] = 17;
                    f
                },
                FrameError::NotTcp(17),
            ),
            (
                {
                    let mut f = good.clone();
                    f[20] = 0x20; // MF
                    f
                },
                FrameError::Fragment,
            ),
            (
                {
                    let mut f = good.clone();
                    f[14] = 0x44;
                    f
                },
                FrameError::BadIpv4("header length below 20"),
            ),
            (
                {
                    let mut f = good.clone();
                    f[46] = 0xf0; // data offset 60 > segment
                    f
                },
                FrameError::BadTcp("data offset outside the segment"),
            ),
        ];
        for (mut frame, want) in cases {
            let before = frame.clone();
            assert_eq!(
                prepare_for_resend(&mut frame, BACK_MAC, FRONT_MAC),
                Err(want)
            );
            assert_eq!(frame, before, "a rejected frame must not be modified");
        }
    }

    #[test]
    fn never_panics_on_any_prefix_or_flipped_byte() {
        let good = tcp_frame(GET, 0, 0);
        for len in 0..=good.len() {
            let _ = prepare_for_resend(&mut good[..len].to_vec(), BACK_MAC, FRONT_MAC);
        }
        for at in 0..good.len() {
            for value in [0x00, 0x0f, 0x45, 0x4f, 0xff] {
                let mut f = good.clone();
                f[at] = value;
                if prepare_for_resend(&mut f, BACK_MAC, FRONT_MAC).is_ok() {
                    assert_eq!(checksums_valid(&f), Ok(true));
                }
            }
        }
    }
}
