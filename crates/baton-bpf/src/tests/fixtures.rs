//! Katran-style fixtures: an input frame and map state in, the verdict, the
//! output frame, the ring and the counters out.

use baton_proto::FlowKey;

use super::owner;
use crate::frame::tests::{tcp_frame, BACK_MAC, FRONT_MAC};
use crate::{Action, BpfError, FlowEntry, ForwardTarget, Forwarder, ParkedFrame, Stats, Verdict};

const PAYLOAD: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
/// Byte 13 of the TCP header, in a frame without IP options.
const TCP_FLAGS: usize = 14 + 20 + 13;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
const ECE_CWR: u8 = 0xc0;

fn key() -> FlowKey {
    FlowKey {
        client: "198.18.0.2:40000".parse().expect("literal"),
        vip: "198.18.0.100:80".parse().expect("literal"),
    }
}

fn target() -> ForwardTarget {
    ForwardTarget {
        ifindex: 1,
        dst_mac: BACK_MAC,
        src_mac: FRONT_MAC,
    }
}

fn loaded() -> Forwarder {
    Forwarder::load().expect("loading the forwarder (run the tests as root)")
}

fn frame() -> Vec<u8> {
    tcp_frame(PAYLOAD, 0, 0)
}

/// An empty segment of the flow with the given TCP flags.
fn segment(flags: u8) -> Vec<u8> {
    let mut f = tcp_frame(&[], 0, 0);
    f[TCP_FLAGS] = flags;
    f
}

fn run_once(fwd: &Forwarder, frame: &[u8]) -> (Verdict, Vec<u8>) {
    let run = fwd.test_run(frame, 1).expect("BPF_PROG_TEST_RUN");
    (run.verdict, run.frame)
}

fn drain(fwd: &mut Forwarder) -> Vec<ParkedFrame> {
    let mut ring = fwd.parked().expect("ring not taken yet");
    std::iter::from_fn(|| ring.next()).collect()
}

#[test]
fn no_entry_passes_the_frame_unchanged() {
    let mut fwd = loaded();
    let input = frame();
    assert_eq!(run_once(&fwd, &input), (Verdict::Pass, input));
    let stats = fwd.stats().expect("stats");
    assert_eq!(
        stats,
        Stats {
            passed: 1,
            ..Stats::default()
        }
    );
    assert!(drain(&mut fwd).is_empty());
}

#[test]
fn parked_flow_is_dropped_and_kept_whole_in_the_ring() {
    let mut fwd = loaded();
    fwd.park(&key(), owner()).expect("park");
    let before = Forwarder::now_ns();
    let input = frame();

    let (verdict, _) = run_once(&fwd, &input);

    assert_eq!(verdict, Verdict::Drop);
    assert_eq!(
        drain(&mut fwd),
        vec![ParkedFrame {
            key: key(),
            frame: input.clone()
        }]
    );
    assert_eq!(
        fwd.stats().expect("stats"),
        Stats {
            parked: 1,
            ..Stats::default()
        }
    );
    let entries = fwd.entries().expect("entries");
    let [(k, entry)] = entries.as_slice() else {
        panic!("one entry expected, got {entries:?}")
    };
    assert_eq!(*k, key());
    assert_eq!((entry.action, entry.target), (Action::Park, None));
    assert_eq!((entry.packets, entry.bytes), (1, input.len() as u64));
    assert!(entry.last_seen_ns >= before && entry.last_seen_ns <= Forwarder::now_ns());
}

#[test]
fn forwarded_flow_is_redirected_with_rewritten_macs() {
    let fwd = {
        let mut fwd = loaded();
        fwd.park(&key(), owner()).expect("park");
        let _ = run_once(&fwd, &frame());
        fwd.forward(&key(), &target(), owner()).expect("forward");
        fwd
    };
    let input = frame();

    let (verdict, output) = run_once(&fwd, &input);

    let mut expected = input.clone();
    expected[..6].copy_from_slice(&BACK_MAC);
    expected[6..12].copy_from_slice(&FRONT_MAC);
    assert_eq!(verdict, Verdict::Redirect);
    assert_eq!(output, expected, "only the Ethernet addresses change");
    let stats = fwd.stats().expect("stats");
    assert_eq!((stats.forwarded, stats.parked, stats.passed), (1, 1, 0));
    let entries = fwd.entries().expect("entries");
    let [(_, entry)] = entries.as_slice() else {
        panic!("one entry expected, got {entries:?}")
    };
    assert_eq!(
        (entry.action, entry.target),
        (Action::Forward, Some(target()))
    );
    // Counted since the forward entry was written: the parked packet is not.
    assert_eq!((entry.packets, entry.bytes), (1, input.len() as u64));
}

#[test]
fn only_the_exact_four_tuple_is_steered() {
    let fwd = {
        let mut fwd = loaded();
        fwd.forward(&key(), &target(), owner()).expect("forward");
        fwd
    };
    // The reply direction (VIP -> client) and another client port are someone else's.
    let mut reply = frame();
    let (src, dst) = ([198, 18, 0, 100], [198, 18, 0, 2]);
    reply[26..30].copy_from_slice(&src);
    reply[30..34].copy_from_slice(&dst);
    reply[34..36].copy_from_slice(&80u16.to_be_bytes());
    reply[36..38].copy_from_slice(&40000u16.to_be_bytes());
    let mut other_port = frame();
    other_port[34..36].copy_from_slice(&40001u16.to_be_bytes());

    for input in [reply, other_port] {
        assert_eq!(run_once(&fwd, &input), (Verdict::Pass, input));
    }
    assert_eq!(fwd.stats().expect("stats").passed, 2);
}

#[test]
fn ip_options_do_not_hide_the_ports() {
    let mut fwd = loaded();
    fwd.park(&key(), owner()).expect("park");
    // IHL 6: four bytes of options (NOPs + end of list) before the TCP header.
    let mut input = frame();
    input[14] = 0x46;
    let total = u16::from_be_bytes([input[16], input[17]]) + 4;
    input[16..18].copy_from_slice(&total.to_be_bytes());
    input.splice(34..34, [1, 1, 1, 0]);

    assert_eq!(run_once(&fwd, &input).0, Verdict::Drop);
    assert_eq!(drain(&mut fwd).len(), 1);
}

#[test]
fn non_tcp_and_truncated_frames_pass_unchanged() {
    let fwd = {
        let mut fwd = loaded();
        fwd.park(&key(), owner()).expect("park");
        fwd
    };
    let good = frame();
    let mut udp = good.clone();
    udp[23] = 17;
    let mut ipv6 = good.clone();
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    let mut arp = good[..42].to_vec();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    let mut not_v4 = good.clone();
    not_v4[14] = 0x65;
    // IPv4 header complete, but the frame ends inside the TCP ports.
    let ports_cut = good[..14 + 20 + 3].to_vec();
    // The ports are there, the flags byte (TCP offset 13) is not.
    let flags_cut = good[..TCP_FLAGS].to_vec();
    // IHL 15 puts the ports at byte 74, past the end. (Shorter IPv4 frames than a
    // full IP header cannot be tested: BPF_PROG_TEST_RUN refuses them with EINVAL.)
    let mut ihl_past_end = good[..60].to_vec();
    ihl_past_end[14] = 0x4f;
    let mut short_arp = good[..20].to_vec();
    short_arp[12..14].copy_from_slice(&[0x08, 0x06]);

    let cases = [
        udp,
        ipv6,
        arp,
        bad_ihl,
        not_v4,
        ports_cut,
        flags_cut,
        ihl_past_end,
        short_arp,
    ];
    for input in &cases {
        assert_eq!(
            run_once(&fwd, input),
            (Verdict::Pass, input.clone()),
            "frame {input:02x?}"
        );
    }
    let stats = fwd.stats().expect("stats");
    assert_eq!(
        stats,
        Stats {
            not_ipv4_tcp: cases.len() as u64,
            ..Stats::default()
        }
    );
}

/// A forwarded flow whose back-end has reported the close.
fn closing() -> Forwarder {
    let mut fwd = loaded();
    fwd.forward(&key(), &target(), owner()).expect("forward");
    assert!(fwd
        .mark_closing(&key(), &target(), owner())
        .expect("mark closing"));
    fwd
}

#[test]
fn new_syn_on_a_closing_tuple_deletes_the_entry_and_passes() {
    // An ECN SYN (ECE|CWR set, as Linux clients may send) opens a connection too.
    for syn in [SYN, SYN | ECE_CWR] {
        let mut fwd = closing();
        let input = segment(syn);

        let first = run_once(&fwd, &input);
        let entries = fwd.entries().expect("entries");
        // The SYN's retransmission finds no entry: an ordinary passed packet.
        let retransmit = run_once(&fwd, &input);

        let case = format!("flags {syn:#04x}");
        assert_eq!(first, (Verdict::Pass, input.clone()), "{case}");
        assert!(entries.is_empty(), "{case}: {entries:?}");
        assert_eq!(retransmit, (Verdict::Pass, input), "{case}");
        // Both SYNs passed as packets without an entry; one replaced the entry.
        assert_eq!(
            fwd.stats().expect("stats"),
            Stats {
                syn_replaced: 1,
                passed: 2,
                ..Stats::default()
            },
            "{case}"
        );
        assert!(drain(&mut fwd).is_empty(), "{case}");
    }
}

#[test]
fn a_bare_syn_on_a_live_forwarded_flow_is_redirected_not_obeyed() {
    // A blind attacker who guesses the 4-tuple must not cost a live flow its
    // entry: the SYN goes to the back-end, whose socket answers it with a
    // challenge ACK.
    let fwd = {
        let mut fwd = loaded();
        fwd.forward(&key(), &target(), owner()).expect("forward");
        fwd
    };
    for syn in [SYN, SYN | ECE_CWR] {
        assert_eq!(
            run_once(&fwd, &segment(syn)).0,
            Verdict::Redirect,
            "flags {syn:#04x}"
        );
    }
    let stats = fwd.stats().expect("stats");
    assert_eq!((stats.forwarded, stats.syn_replaced), (2, 0));
    let entries = fwd.entries().expect("entries");
    let [(_, entry)] = entries.as_slice() else {
        panic!("the entry should be kept, got {entries:?}")
    };
    assert_eq!(
        (entry.action, entry.target),
        (Action::Forward, Some(target()))
    );
}

#[test]
fn a_closing_flow_still_forwards_everything_but_a_bare_syn() {
    let fwd = closing();
    let input = frame();

    let (verdict, output) = run_once(&fwd, &input);

    let mut expected = input.clone();
    expected[..6].copy_from_slice(&BACK_MAC);
    expected[6..12].copy_from_slice(&FRONT_MAC);
    assert_eq!((verdict, output), (Verdict::Redirect, expected));
    // The last ACKs and the FIN exchange of the closing connection.
    for flags in [ACK, FIN | ACK] {
        assert_eq!(
            run_once(&fwd, &segment(flags)).0,
            Verdict::Redirect,
            "flags {flags:#04x}"
        );
    }
    let entries = fwd.entries().expect("entries");
    let [(_, entry)] = entries.as_slice() else {
        panic!("the entry should be kept, got {entries:?}")
    };
    assert_eq!(
        (entry.action, entry.target, entry.packets),
        (Action::ForwardClosing, Some(target()), 3)
    );
    assert_eq!(fwd.stats().expect("stats").syn_replaced, 0);
}

#[test]
fn marking_closing_never_creates_an_entry() {
    let mut fwd = loaded();
    assert!(!fwd
        .mark_closing(&key(), &target(), owner())
        .expect("absent entry"));
    assert!(fwd.entries().expect("entries").is_empty(), "not created");
    fwd.forward(&key(), &target(), owner()).expect("forward");
    assert!(fwd
        .mark_closing(&key(), &target(), owner())
        .expect("forward entry"));
    assert!(
        fwd.mark_closing(&key(), &target(), owner()).expect("again"),
        "marking twice is harmless"
    );
    assert_eq!(
        fwd.entries().expect("entries")[0].1,
        FlowEntry {
            action: Action::ForwardClosing,
            target: Some(target()),
            ..fwd.entries().expect("entries")[0].1
        }
    );
    fwd.remove(&key()).expect("remove");
    assert!(!fwd
        .mark_closing(&key(), &target(), owner())
        .expect("removed entry"));
    assert!(fwd.entries().expect("entries").is_empty(), "not recreated");
}

#[test]
fn a_syn_on_a_parked_flow_is_kept_like_any_parked_segment() {
    let mut fwd = loaded();
    fwd.park(&key(), owner()).expect("park");
    let input = segment(SYN);
    assert_eq!(run_once(&fwd, &input), (Verdict::Drop, input.clone()));
    assert_eq!(
        fwd.entries().expect("entries").len(),
        1,
        "the parked entry stays"
    );
    let kept = drain(&mut fwd);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].frame, input);
    let stats = fwd.stats().expect("stats");
    assert_eq!((stats.parked, stats.syn_replaced), (1, 0));
}

#[test]
fn segments_of_a_closing_flow_that_open_nothing_are_still_redirected() {
    let fwd = closing();
    // A listener would discard SYN+RST and SYN+FIN, so they must not cost the flow its entry.
    let cases = [SYN | ACK, ACK, SYN | RST, SYN | FIN];
    for flags in cases {
        assert_eq!(
            run_once(&fwd, &segment(flags)).0,
            Verdict::Redirect,
            "flags {flags:#04x}"
        );
    }
    let stats = fwd.stats().expect("stats");
    assert_eq!(
        (stats.forwarded, stats.syn_replaced),
        (cases.len() as u64, 0)
    );
    let entries = fwd.entries().expect("entries");
    let [(_, entry)] = entries.as_slice() else {
        panic!("the entry should be kept, got {entries:?}")
    };
    assert_eq!(entry.packets, cases.len() as u64);
}

#[test]
fn fragments_pass_even_for_a_parked_flow() {
    let fwd = {
        let mut fwd = loaded();
        fwd.park(&key(), owner()).expect("park");
        fwd
    };
    let mut first = frame();
    first[20] |= 0x20; // MF, offset 0: carries the ports, but the rest would slip through
    let mut later = frame();
    later[20..22].copy_from_slice(&0x0003u16.to_be_bytes()); // offset 24 bytes

    for input in [first, later] {
        assert_eq!(run_once(&fwd, &input), (Verdict::Pass, input));
    }
    assert_eq!(
        fwd.stats().expect("stats"),
        Stats {
            fragments: 2,
            ..Stats::default()
        }
    );
}

#[test]
fn removed_flow_passes_again_and_removing_twice_is_ok() {
    let fwd = {
        let mut fwd = loaded();
        fwd.forward(&key(), &target(), owner()).expect("forward");
        fwd.remove(&key()).expect("remove");
        fwd.remove(&key()).expect("removing an absent key");
        fwd
    };
    let input = frame();
    assert_eq!(run_once(&fwd, &input), (Verdict::Pass, input));
    assert!(fwd.entries().expect("entries").is_empty());
}

#[test]
fn full_ring_counts_park_lost_and_still_drops() {
    let mut fwd = loaded();
    fwd.park(&key(), owner()).expect("park");
    let input = tcp_frame(&[0x55; 1400], 0, 0);
    // 4 MiB of ring holds about 2800 records of this size.
    let runs = 4000;

    let run = fwd.test_run(&input, runs).expect("BPF_PROG_TEST_RUN");

    assert_eq!(run.verdict, Verdict::Drop);
    let stats = fwd.stats().expect("stats");
    assert_eq!(stats.parked + stats.park_lost, u64::from(runs));
    assert!(
        stats.park_lost > 0,
        "the ring should have filled: {stats:?}"
    );
    let kept = drain(&mut fwd);
    assert_eq!(kept.len() as u64, stats.parked);
    assert!(kept.iter().all(|p| p.frame == input && p.key == key()));
}

#[test]
fn ring_can_be_taken_once() {
    let mut fwd = loaded();
    let _ring = fwd.parked().expect("first take");
    assert!(matches!(fwd.parked(), Err(BpfError::RingTaken { .. })));
}

#[test]
fn forward_rejects_targets_that_would_flood_or_misroute() {
    let mut fwd = loaded();
    let bad = [
        ForwardTarget {
            ifindex: 0,
            ..target()
        },
        ForwardTarget {
            dst_mac: [0xff; 6],
            ..target()
        },
        ForwardTarget {
            dst_mac: [0x01, 0, 0x5e, 0, 0, 1],
            ..target()
        },
        ForwardTarget {
            dst_mac: [0; 6],
            ..target()
        },
        ForwardTarget {
            src_mac: [0xff; 6],
            ..target()
        },
    ];
    for to in bad {
        let err = fwd
            .forward(&key(), &to, owner())
            .expect_err("invalid target");
        assert!(matches!(err, BpfError::InvalidTarget { .. }), "{err}");
    }
    assert!(fwd.entries().expect("entries").is_empty());
}

#[test]
fn a_full_flow_table_is_reported_as_full() {
    let mut fwd = loaded();
    let key_n = |n: u32| FlowKey {
        client: std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::from(0xc612_0000 | (n >> 16)),
            n as u16,
        ),
        vip: "198.18.0.100:80".parse().expect("literal"),
    };
    for n in 0..crate::MAX_FLOWS {
        fwd.park(&key_n(n), owner())
            .expect("room for MAX_FLOWS entries");
    }
    let err = fwd
        .park(&key_n(crate::MAX_FLOWS), owner())
        .expect_err("the table is full");
    assert!(err.is_map_full(), "{err}");
    // Replacing an existing entry still works, and other errors are not "full".
    fwd.park(&key_n(0), owner()).expect("replacing an entry");
    assert!(!BpfError::RingTaken { iface: "x".into() }.is_map_full());
}
