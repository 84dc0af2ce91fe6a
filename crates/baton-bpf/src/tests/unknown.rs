//! No front resets a flow it does not know: with a [`VipGuard`], a packet to
//! one of the VIP's service ports that no entry and no socket of the host
//! claims is dropped (the client retransmits) instead of reaching a kernel
//! that would answer it with a reset. Real sockets in the namespaces of
//! `netns`, and `BPF_PROG_TEST_RUN` fixtures run inside a namespace of their
//! own (the program looks sockets up in the namespace it runs in).

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use baton_proto::FlowKey;

use super::netns::{wait_until, Lab, Switch, DEADLINE, FRONT_IF, FRONT_IP};
use super::owner;
use crate::frame::tests::{tcp_frame, BACK_MAC, FRONT_MAC};
use crate::{BpfError, ForwardTarget, Forwarder, Stats, Verdict, VipGuard};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// Byte 13 of the TCP header, in a frame without IP options.
const TCP_FLAGS: usize = 14 + 20 + 13;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const ECE_CWR: u8 = 0xc0;
/// `TCP_ESTABLISHED` in `tcpi_state`.
const ESTABLISHED: u8 = 1;
/// Long enough for a SYN and its first retransmission (1 s later) to be
/// answered, short enough that a dropped SYN shows as a timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

fn guard(port: u16) -> VipGuard {
    VipGuard {
        vip: VIP,
        ports: vec![port],
    }
}

/// What `TCP_INFO` says of a socket: its state and its retransmissions.
#[derive(Debug)]
struct TcpInfo {
    state: u8,
    total_retrans: u32,
}

fn tcp_info(stream: &TcpStream) -> TcpInfo {
    // struct tcp_info up to tcpi_total_retrans (offset 100).
    let raw: [u8; 104] = baton_sys::sockopt::get(
        stream.as_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_INFO,
        "getsockopt(TCP_INFO)",
        true,
    )
    .expect("TCP_INFO");
    TcpInfo {
        state: raw[0],
        total_retrans: u32::from_ne_bytes([raw[100], raw[101], raw[102], raw[103]]),
    }
}

/// Closes the front's end as a handoff does: in repair mode, sending nothing.
fn close_silently(server: TcpStream) {
    baton_sys::repair::set_repair(server.as_fd(), true).expect("TCP_REPAIR on");
    drop(server);
}

/// Neither data nor a reset has arrived on `client`.
fn assert_quiet(client: &mut TcpStream) {
    client.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 16];
    match client.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the client must see neither data nor a reset, got {other:?}"),
    }
    client.set_nonblocking(false).expect("blocking");
}

/// Waits for the reset that a retransmission, let through, brings back.
fn assert_reset_comes(client: &mut TcpStream) {
    client
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    let mut buf = [0u8; 16];
    match client.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the front's kernel to reset the connection, got {other:?}"),
    }
}

/// Bounds `accept` (which honours `SO_RCVTIMEO`) and every read on the
/// accepted sockets: a test that fails must not hang.
fn bound_waits(listener: &TcpListener) {
    let secs = i64::try_from(DEADLINE.as_secs()).expect("seconds");
    let mut timeval = [0u8; 16];
    timeval[..8].copy_from_slice(&secs.to_ne_bytes());
    baton_sys::sockopt::set(
        listener.as_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVTIMEO,
        &timeval,
        "setsockopt(SO_RCVTIMEO)",
    )
    .expect("SO_RCVTIMEO");
}

/// Accepts on `listener` (see [`bound_waits`]).
fn accept(listener: &TcpListener) -> TcpStream {
    let (server, _) = listener.accept().expect("accept within the deadline");
    server
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    server
}

/// A client socket connected from the client namespace (the thread stays there).
fn dial(ns: &Switch, to: SocketAddr) -> TcpStream {
    ns.client();
    let client = TcpStream::connect_timeout(&to, DEADLINE).expect("connect");
    client
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    client
}

/// A connection from the client namespace to `listener` (front namespace);
/// leaves the thread in the front namespace.
fn connect(ns: &Switch, listener: &TcpListener) -> (TcpStream, TcpStream) {
    bound_waits(listener);
    let client = dial(ns, listener.local_addr().expect("listener address"));
    ns.front();
    (client, accept(listener))
}

fn stats(fwd: &Forwarder) -> Stats {
    fwd.stats().expect("stats")
}

#[test]
fn an_unknown_flow_to_a_guarded_port_retransmits_instead_of_being_reset() {
    let lab = Lab::new("unknown");
    lab.add_front_address(&VIP.to_string());
    lab.run(|ns| {
        ns.front();
        let listener = TcpListener::bind((VIP, 0)).expect("bind the VIP");
        let port = listener.local_addr().expect("address").port();
        let mut fwd =
            Forwarder::attach_guarded(FRONT_IF, Some(&guard(port))).expect("attach guarded");
        assert_eq!(fwd.guard().expect("guard"), Some(guard(port)));

        // Flows the front's sockets know are untouched by the guard.
        let (mut with_listener, mut server) = connect(ns, &listener);
        let (mut without_socket, server2) = connect(ns, &listener);
        with_listener.write_all(b"ping").expect("write");
        let mut got = [0u8; 4];
        server
            .read_exact(&mut got)
            .expect("a known flow's bytes arrive");
        assert_eq!(&got, b"ping");
        let known = stats(&fwd);
        assert_eq!((known.unknown_dropped, known.no_listener_dropped), (0, 0));
        // Two handshakes (SYN, ACK) and the data segment at least.
        assert!(known.passed >= 5, "{known:?}");

        // The front forgets a flow as a handoff does; its listener is still
        // there, and would answer the client's next segment with a reset.
        close_silently(server);
        with_listener
            .write_all(b"after the handoff")
            .expect("client write");
        wait_until("the segment and a retransmission dropped", || {
            stats(&fwd).unknown_dropped >= 2
        });
        let info = tcp_info(&with_listener);
        assert_eq!(info.state, ESTABLISHED, "{info:?}");
        assert!(info.total_retrans >= 1, "{info:?}");
        assert_quiet(&mut with_listener);

        // No socket at all: the front's process is gone.
        drop(listener);
        close_silently(server2);
        let before = stats(&fwd).unknown_dropped;
        without_socket
            .write_all(b"to a front without a process")
            .expect("client write");
        wait_until("a retransmission of the second client", || {
            tcp_info(&without_socket).total_retrans >= 1
        });
        assert!(stats(&fwd).unknown_dropped > before);
        assert_eq!(tcp_info(&without_socket).state, ESTABLISHED);
        assert_quiet(&mut without_socket);

        // Unguarded (`unknown = "pass"`), the next retransmission reaches
        // the kernel, which resets both connections: the client's download
        // would die.
        fwd.set_guard(None).expect("unguard");
        assert_eq!(fwd.guard().expect("guard"), None);
        let passed = stats(&fwd).passed;
        assert_reset_comes(&mut with_listener);
        assert_reset_comes(&mut without_socket);
        assert!(stats(&fwd).passed >= passed + 2);
    });
}

#[test]
fn a_syn_to_a_guarded_port_without_listener_times_out_instead_of_being_refused() {
    let lab = Lab::new("nolisten");
    lab.add_front_address(&VIP.to_string());
    lab.run(|ns| {
        ns.front();
        let port = {
            let probe = TcpListener::bind((VIP, 0)).expect("bind");
            probe.local_addr().expect("address").port()
        };
        let mut fwd =
            Forwarder::attach_guarded(FRONT_IF, Some(&guard(port))).expect("attach guarded");
        let to = SocketAddr::from((VIP, port));

        ns.client();
        let err = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT).expect_err("no listener");
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        let s = stats(&fwd);
        assert!(s.no_listener_dropped >= 1, "{s:?}");
        assert_eq!(s.unknown_dropped, 0, "{s:?}");

        fwd.set_guard(None).expect("unguard");
        let err = TcpStream::connect_timeout(&to, DEADLINE).expect_err("no listener");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    });
}

#[test]
fn traffic_not_to_a_guarded_port_passes_even_without_a_socket() {
    let lab = Lab::new("notvip");
    lab.add_front_address(&VIP.to_string());
    lab.run(|ns| {
        ns.front();
        // The front's own service on its own address, on the guarded port number.
        let own = TcpListener::bind((FRONT_IP, 0)).expect("bind");
        let port = own.local_addr().expect("address").port();
        let closed = {
            let probe = TcpListener::bind((VIP, 0)).expect("bind");
            probe.local_addr().expect("address").port()
        };
        let fwd = Forwarder::attach_guarded(FRONT_IF, Some(&guard(port))).expect("attach guarded");

        // An established connection to the front's address that its socket
        // forgets: the kernel resets it, as without the program.
        let (mut client, server) = connect(ns, &own);
        close_silently(server);
        ns.client();
        client.write_all(b"not to the VIP").expect("client write");
        assert_reset_comes(&mut client);

        // SYNs to closed ports: on the front's address, on an unguarded
        // port of the VIP. Both refused at once.
        let front_ip: Ipv4Addr = FRONT_IP.parse().expect("literal");
        for to in [
            SocketAddr::from((front_ip, closed)),
            SocketAddr::from((VIP, closed)),
        ] {
            let err = TcpStream::connect_timeout(&to, DEADLINE).expect_err("closed port");
            assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{to}: {err}");
        }
        let s = stats(&fwd);
        assert_eq!((s.unknown_dropped, s.no_listener_dropped), (0, 0), "{s:?}");
    });
}

/// `TcpExtSyncookiesRecv` of the calling thread's network namespace.
fn syncookies_received() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/netstat").expect("netstat");
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (
        lines.next().expect("TcpExt names"),
        lines.next().expect("TcpExt values"),
    );
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "SyncookiesRecv")
        .and_then(|(_, v)| v.parse().ok())
        .expect("SyncookiesRecv")
}

#[test]
fn connections_to_a_guarded_listener_complete_with_defer_accept_and_syn_cookies() {
    let lab = Lab::new("cookie");
    lab.add_front_address(&VIP.to_string());
    lab.run(|ns| {
        ns.front();
        let listener = TcpListener::bind((VIP, 0)).expect("bind the VIP");
        // As the front's listener: the handshake's last ACK leaves a request
        // socket (TCP_NEW_SYN_RECV) until the first bytes arrive.
        baton_sys::sockopt::set_int(
            listener.as_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            5,
            "setsockopt(TCP_DEFER_ACCEPT)",
        )
        .expect("TCP_DEFER_ACCEPT");
        let port = listener.local_addr().expect("address").port();
        let fwd = Forwarder::attach_guarded(FRONT_IF, Some(&guard(port))).expect("attach guarded");
        bound_waits(&listener);
        let exchange = |what: &str| {
            let mut client = dial(ns, listener.local_addr().expect("address"));
            client.write_all(b"GET").expect("request");
            ns.front();
            let mut server = accept(&listener);
            let mut got = [0u8; 3];
            server.read_exact(&mut got).expect("request bytes");
            server.write_all(b"OK").expect("answer");
            let mut answer = [0u8; 2];
            client.read_exact(&mut answer).expect("the answer");
            assert_eq!((&got, &answer), (b"GET", b"OK"), "{what}");
        };

        exchange("through a request socket");
        assert_eq!(stats(&fwd).syncookie_passed, 0);

        // Always answer with a SYN cookie: the listener keeps no request.
        lab.front_sysctl("net.ipv4.tcp_syncookies", "2");
        let before = syncookies_received();
        exchange("through a SYN cookie");
        assert!(syncookies_received() > before, "a cookie was checked");

        let s = stats(&fwd);
        assert!(s.syncookie_passed >= 1, "{s:?}");
        assert_eq!((s.unknown_dropped, s.no_listener_dropped), (0, 0), "{s:?}");
    });
}

// BPF_PROG_TEST_RUN fixtures: the frames of `tcp_frame` (198.18.0.2:40000 ->
// 198.18.0.100:80, PSH|ACK), looked up in a fresh namespace.

fn segment(flags: u8) -> Vec<u8> {
    let mut f = tcp_frame(&[], 0, 0);
    f[TCP_FLAGS] = flags;
    f
}

fn key() -> FlowKey {
    FlowKey {
        client: "198.18.0.2:40000".parse().expect("literal"),
        vip: "198.18.0.100:80".parse().expect("literal"),
    }
}

fn run_once(fwd: &Forwarder, frame: &[u8]) -> (Verdict, Vec<u8>) {
    let run = fwd.test_run(frame, 1).expect("BPF_PROG_TEST_RUN");
    (run.verdict, run.frame)
}

#[test]
fn without_a_socket_a_guarded_port_drops_what_the_kernel_would_reset_or_refuse() {
    let lab = Lab::new("fxguard");
    lab.run(|ns| {
        ns.front();
        let mut fwd = Forwarder::load().expect("load");
        assert_eq!(fwd.guard().expect("guard"), None, "unguarded by default");
        fwd.set_guard(Some(&guard(80))).expect("guard");

        let data = tcp_frame(b"GET / HTTP/1.1\r\n\r\n", 0, 0);
        let unknown = [data.clone(), segment(ACK), segment(RST), segment(FIN | ACK)];
        let new = [segment(SYN), segment(SYN | ECE_CWR)];
        for input in unknown.iter().chain(&new) {
            assert_eq!(
                run_once(&fwd, input),
                (Verdict::Drop, input.clone()),
                "flags {:#04x}",
                input[TCP_FLAGS]
            );
        }
        // Another port of the VIP, another address: not guarded.
        let mut other_port = data.clone();
        other_port[36..38].copy_from_slice(&81u16.to_be_bytes());
        let mut other_address = data.clone();
        other_address[30..34].copy_from_slice(&[198, 18, 0, 1]);
        for input in [other_port, other_address] {
            assert_eq!(run_once(&fwd, &input), (Verdict::Pass, input));
        }
        assert_eq!(
            stats(&fwd),
            Stats {
                unknown_dropped: unknown.len() as u64,
                no_listener_dropped: new.len() as u64,
                passed: 2,
                ..Stats::default()
            }
        );

        // The guard is for misses: a flow with an entry is steered as ever.
        let target = ForwardTarget {
            ifindex: 1,
            dst_mac: BACK_MAC,
            src_mac: FRONT_MAC,
        };
        fwd.forward(&key(), &target, owner()).expect("forward");
        assert_eq!(run_once(&fwd, &data).0, Verdict::Redirect);
        fwd.remove(&key()).expect("remove");

        // Unguarded again: today's behaviour, every miss passes.
        fwd.set_guard(None).expect("unguard");
        for input in [data, segment(SYN)] {
            assert_eq!(run_once(&fwd, &input), (Verdict::Pass, input));
        }
    });
}

#[test]
fn a_guarded_listener_takes_a_bare_syn_and_no_ack_it_does_not_know() {
    let lab = Lab::new("fxlisten");
    lab.run(|ns| {
        ns.front();
        // Any local address matches: the lookup runs as for a packet that
        // arrived on this namespace's loopback.
        let _listener = TcpListener::bind(("0.0.0.0", 80)).expect("bind :80");
        let mut fwd = Forwarder::load().expect("load");
        fwd.set_guard(Some(&guard(80))).expect("guard");

        for syn in [SYN, SYN | ECE_CWR] {
            assert_eq!(run_once(&fwd, &segment(syn)).0, Verdict::Pass);
        }
        // No SYN cookie was sent (tcp_syncookies does not even let the
        // check run without a recent overflow): the listener would reset these.
        for flags in [ACK, PSH | ACK, SYN | ACK, FIN | ACK] {
            assert_eq!(
                run_once(&fwd, &segment(flags)).0,
                Verdict::Drop,
                "flags {flags:#04x}"
            );
        }
        assert_eq!(
            stats(&fwd),
            Stats {
                passed: 2,
                unknown_dropped: 4,
                ..Stats::default()
            }
        );
    });
}

#[test]
fn a_syn_replacing_a_closing_entry_without_listener_is_dropped() {
    let lab = Lab::new("fxclosing");
    lab.run(|ns| {
        ns.front();
        let mut fwd = Forwarder::load().expect("load");
        fwd.set_guard(Some(&guard(80))).expect("guard");
        let target = ForwardTarget {
            ifindex: 1,
            dst_mac: BACK_MAC,
            src_mac: FRONT_MAC,
        };
        fwd.forward(&key(), &target, owner()).expect("forward");
        assert!(fwd
            .mark_closing(&key(), &target, owner())
            .expect("mark closing"));

        assert_eq!(run_once(&fwd, &segment(SYN)).0, Verdict::Drop);
        assert!(fwd.entries().expect("entries").is_empty(), "replaced");
        assert_eq!(
            stats(&fwd),
            Stats {
                syn_replaced: 1,
                no_listener_dropped: 1,
                ..Stats::default()
            }
        );
    });
}

#[test]
fn guards_that_would_protect_nothing_or_everything_are_refused() {
    let mut fwd = Forwarder::load().expect("load");
    let bad = [
        VipGuard {
            vip: Ipv4Addr::UNSPECIFIED,
            ports: vec![80],
        },
        VipGuard {
            vip: Ipv4Addr::BROADCAST,
            ports: vec![80],
        },
        VipGuard {
            vip: VIP,
            ports: vec![],
        },
        VipGuard {
            vip: VIP,
            ports: vec![80, 0],
        },
        VipGuard {
            vip: VIP,
            ports: vec![80, 443, 8080, 8443, 9000],
        },
    ];
    for g in &bad {
        let err = fwd.set_guard(Some(g)).expect_err("invalid guard");
        assert!(matches!(err, BpfError::InvalidGuard { .. }), "{g:?}: {err}");
        // Refused before anything is loaded or attached.
        let err = Forwarder::attach_guarded("btnothere0", Some(g)).expect_err("invalid");
        assert!(matches!(err, BpfError::InvalidGuard { .. }), "{g:?}: {err}");
    }
    assert_eq!(fwd.guard().expect("guard"), None, "nothing was written");
    let four = VipGuard {
        vip: VIP,
        ports: vec![80, 443, 8080, 8443],
    };
    fwd.set_guard(Some(&four)).expect("four ports");
    assert_eq!(fwd.guard().expect("guard"), Some(four));
}

/// Hand-run: the program's mean run time per frame (`BPF_PROG_TEST_RUN`)
/// for an entry hit, a miss unguarded, and guarded misses.
/// `cargo test --release -p baton-bpf guard_cost -- --ignored --nocapture`
#[test]
#[ignore = "a measurement, not a check"]
fn guard_cost_per_frame() {
    const RUNS: u32 = 1_000_000;
    let lab = Lab::new("fxcost");
    lab.run(|ns| {
        ns.front();
        let listener = TcpListener::bind(("0.0.0.0", 80)).expect("bind :80");
        let mut fwd = Forwarder::load().expect("load");
        let data = tcp_frame(b"GET / HTTP/1.1\r\n\r\n", 0, 0);
        let time = |what: &str, fwd: &Forwarder, frame: &[u8]| {
            let run = fwd.test_run(frame, RUNS).expect("BPF_PROG_TEST_RUN");
            eprintln!("{what:<40} {:>4} ns ({:?})", run.duration_ns, run.verdict);
        };
        let target = ForwardTarget {
            ifindex: 1,
            dst_mac: BACK_MAC,
            src_mac: FRONT_MAC,
        };
        fwd.forward(&key(), &target, owner()).expect("forward");
        time("entry hit (forward)", &fwd, &data);
        fwd.set_guard(Some(&guard(80))).expect("guard");
        time("entry hit (forward), guarded", &fwd, &data);
        fwd.remove(&key()).expect("remove");
        fwd.set_guard(None).expect("unguard");
        time("miss, unguarded (pass)", &fwd, &data);
        fwd.set_guard(Some(&guard(81))).expect("guard");
        time("miss, another port guarded (pass)", &fwd, &data);
        fwd.set_guard(Some(&guard(80))).expect("guard");
        time("miss, guarded, listener, SYN (pass)", &fwd, &segment(SYN));
        time("miss, guarded, listener, ACK (drop)", &fwd, &data);
        drop(listener);
        time("miss, guarded, no socket, ACK (drop)", &fwd, &data);
    });
}
