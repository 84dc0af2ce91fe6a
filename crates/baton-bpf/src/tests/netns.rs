//! Attach and detach on a real veth, in two network namespaces each test
//! creates and always deletes: "front" (btf0, 198.18.0.1, the forwarder)
//! and "client" (btc0, 198.18.0.2). Traffic stays on that veth pair.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use aya::programs::tc::{SchedClassifier, TcAttachType};
use baton_proto::FlowKey;

use super::owner;
use crate::abi;
use crate::frame::checksums_valid;
use crate::{
    prepare_for_resend, Action, AttachMode, BpfError, ForwardTarget, Forwarder, ParkedFrame,
    ParkedRing,
};

pub(super) const FRONT_IF: &str = "btf0";
const CLIENT_IF: &str = "btc0";
pub(super) const FRONT_MAC: [u8; 6] = [0x02, 0xb7, 0, 0, 0, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0xb7, 0, 0, 0, 0x02];
pub(super) const FRONT_IP: &str = "198.18.0.1";
const CLIENT_IP: &str = "198.18.0.2";
pub(super) const DEADLINE: Duration = Duration::from_secs(10);

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub(super) fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop (also when the test panics).
pub(super) struct Netns {
    name: String,
}

impl Netns {
    fn new(name: String) -> Self {
        run(&["ip", "netns", "add", &name]);
        Self { name }
    }

    fn file(&self) -> File {
        File::open(format!("/var/run/netns/{}", self.name)).expect("opening the namespace")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let status = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

/// The two namespaces and the veth between them.
pub(super) struct Lab {
    pub(super) front: Netns,
    client: Netns,
}

impl Lab {
    pub(super) fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("bpftest-{}-{n}-{tag}", std::process::id());
        let lab = Self {
            front: Netns::new(format!("{prefix}-f")),
            client: Netns::new(format!("{prefix}-c")),
        };
        let (f, c) = (lab.front.name.as_str(), lab.client.name.as_str());
        #[rustfmt::skip]
        run(&["ip", "-n", f, "link", "add", FRONT_IF, "address", &mac_text(FRONT_MAC), "type", "veth",
              "peer", "name", CLIENT_IF, "address", &mac_text(CLIENT_MAC), "netns", c]);
        run(&[
            "ip",
            "-n",
            f,
            "addr",
            "add",
            &format!("{FRONT_IP}/24"),
            "dev",
            FRONT_IF,
        ]);
        run(&[
            "ip",
            "-n",
            c,
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            CLIENT_IF,
        ]);
        for (ns, dev) in [(f, FRONT_IF), (c, CLIENT_IF), (f, "lo"), (c, "lo")] {
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        lab
    }

    /// Adds `addr` (a /32 on the front's veth, such as a VIP) to the front.
    pub(super) fn add_front_address(&self, addr: &str) {
        #[rustfmt::skip]
        run(&["ip", "-n", &self.front.name, "addr", "add", &format!("{addr}/32"), "dev", FRONT_IF]);
    }

    /// `sysctl -w name=value` in the front's namespace (gone with it).
    pub(super) fn front_sysctl(&self, name: &str, value: &str) {
        #[rustfmt::skip]
        run(&["ip", "netns", "exec", &self.front.name, "sysctl", "-q", "-w", &format!("{name}={value}")]);
    }

    /// Runs `body` on a thread of its own, which may switch namespaces at will.
    pub(super) fn run<T: Send>(&self, body: impl FnOnce(&Switch) -> T + Send) -> T {
        let switch = Switch {
            front: self.front.file(),
            client: self.client.file(),
        };
        thread::scope(|s| match s.spawn(|| body(&switch)).join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        })
    }

    fn link_json(&self, ns: &Netns, dev: &str) -> serde_json::Value {
        let text = run(&["ip", "-n", &ns.name, "-s", "-j", "link", "show", "dev", dev]);
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("ip -j output");
        parsed[0].clone()
    }

    pub(super) fn front_ifindex(&self) -> u32 {
        let index = self.link_json(&self.front, FRONT_IF)["ifindex"]
            .as_u64()
            .expect("ifindex");
        u32::try_from(index).expect("ifindex fits u32")
    }

    fn client_rx_packets(&self) -> u64 {
        self.link_json(&self.client, CLIENT_IF)["stats64"]["rx"]["packets"]
            .as_u64()
            .expect("rx packets")
    }

    fn front_ingress_filters(&self) -> String {
        run(&[
            "tc",
            "-n",
            &self.front.name,
            "filter",
            "show",
            "dev",
            FRONT_IF,
            "ingress",
        ])
    }
}

/// Moves the calling thread between the lab's namespaces.
pub(super) struct Switch {
    front: File,
    client: File,
}

impl Switch {
    pub(super) fn front(&self) {
        abi::enter_netns(self.front.as_fd()).expect("entering the front namespace");
    }

    pub(super) fn client(&self) {
        abi::enter_netns(self.client.as_fd()).expect("entering the client namespace");
    }

    /// A connection from the client namespace to a listener in the front
    /// namespace; leaves the thread in the front namespace.
    fn connect(&self) -> (TcpStream, TcpStream, FlowKey) {
        self.front();
        let listener = TcpListener::bind((FRONT_IP, 0)).expect("bind");
        let vip = v4(listener.local_addr().expect("listener address"));
        self.client();
        let client = TcpStream::connect(vip).expect("connect");
        self.front();
        let (server, _) = listener.accept().expect("accept");
        let key = FlowKey {
            client: v4(client.local_addr().expect("client address")),
            vip,
        };
        (client, server, key)
    }
}

pub(super) fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("IPv6 address {a} in an IPv4 lab"),
    }
}

/// Polls a kernel counter until `done`; there is no event to wait on.
pub(super) fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// Waits on the ring's fd, as the front does, for the next parked frame.
fn next_parked(ring: ParkedRing) -> (ParkedFrame, ParkedRing) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let mut fd = abi::register_ring(ring).expect("registering the ring fd");
        let frame = tokio::time::timeout(DEADLINE, async {
            loop {
                let mut ready = fd.readable_mut().await.expect("ring readiness");
                if let Some(frame) = ready.get_inner_mut().next() {
                    return frame;
                }
                ready.clear_ready();
            }
        })
        .await
        .expect("a parked frame within the deadline");
        (frame, fd.into_inner())
    })
}

fn assert_nothing_to_read(server: &mut TcpStream) {
    server.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 64];
    match server.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the front's socket must not get steered bytes, got {other:?}"),
    }
    server.set_nonblocking(false).expect("blocking");
}

fn tcx_program_ids() -> Vec<u32> {
    let (_, programs) =
        SchedClassifier::query_tcx(FRONT_IF, TcAttachType::Ingress).expect("query_tcx");
    programs.iter().map(|p| p.id()).collect()
}

#[test]
fn tcx_attach_parks_forwards_and_detaches_on_drop() {
    let lab = Lab::new("tcx");
    let ifindex = lab.front_ifindex();
    lab.run(|ns| {
        ns.front();
        // Benchmarks charge the forwarder's run time to the front: counted
        // from here on, for every packet the program sees.
        let _counting = crate::enable_run_time_stats().expect("BPF_ENABLE_STATS");
        let mut fwd = Forwarder::attach(FRONT_IF).expect("attach");
        assert_eq!(fwd.attach_mode(), Some(AttachMode::Tcx));
        assert_eq!(
            tcx_program_ids(),
            vec![fwd.program_id().expect("program id")]
        );

        let (mut client, mut server, key) = ns.connect();
        // The client's SYN and handshake ACK went through the program, and on.
        assert!(fwd.stats().expect("stats").passed >= 2);

        // PARK: the segment lands in the ring, not in the front's socket.
        fwd.park(&key, owner()).expect("park");
        let ring = fwd.parked().expect("ring");
        client.write_all(b"parked bytes").expect("client write");
        let (parked, _ring) = next_parked(ring);
        assert_eq!(parked.key, key);
        assert!(
            parked.frame.ends_with(b"parked bytes"),
            "{:02x?}",
            parked.frame
        );
        assert_eq!(parked.frame[..12], [FRONT_MAC, CLIENT_MAC].concat());
        // veth hands over CHECKSUM_PARTIAL frames: the TCP checksum is not final...
        assert_eq!(checksums_valid(&parked.frame), Ok(false));
        // ...until prepare_for_resend completes it.
        let mut resend = parked.frame.clone();
        prepare_for_resend(&mut resend, CLIENT_MAC, FRONT_MAC).expect("prepare");
        assert_eq!(checksums_valid(&resend), Ok(true));
        assert_nothing_to_read(&mut server);
        assert!(fwd.stats().expect("stats").parked >= 1);

        // FORWARD out of btf0 again, addressed to the client's veth.
        let rx_before = lab.client_rx_packets();
        let target = ForwardTarget {
            ifindex,
            dst_mac: CLIENT_MAC,
            src_mac: FRONT_MAC,
        };
        fwd.forward(&key, &target, owner()).expect("forward");
        client.write_all(b" forwarded bytes").expect("client write");
        wait_until("a forwarded packet", || {
            fwd.stats().expect("stats").forwarded >= 1
        });
        wait_until("the redirected packet at the client's veth", || {
            lab.client_rx_packets() > rx_before
        });
        let entries = fwd.entries().expect("entries");
        let entry = entries
            .iter()
            .find(|(k, _)| *k == key)
            .expect("the flow's entry")
            .1;
        assert_eq!(
            (entry.action, entry.target),
            (Action::Forward, Some(target))
        );
        // Counted since the forward entry was written.
        assert!(entry.packets >= 1 && entry.last_seen_ns <= Forwarder::now_ns());
        let id = fwd.program_id().expect("program id");
        let run = crate::program_run_time(id)
            .expect("listing programs")
            .expect("the forwarder is loaded");
        let s = fwd.stats().expect("stats");
        assert!(
            run.runs >= s.parked + s.forwarded && run.total > Duration::ZERO,
            "{run:?} for {s:?}"
        );
        assert_eq!(crate::program_run_time(u32::MAX).expect("listing"), None);
        assert_nothing_to_read(&mut server);

        // Detach: the flow is the front kernel's again, and TCP retransmits what it lost.
        drop(fwd);
        assert_eq!(tcx_program_ids(), Vec::<u32>::new());
        server
            .set_read_timeout(Some(DEADLINE))
            .expect("read timeout");
        let mut got = vec![0u8; b"parked bytes forwarded bytes".len()];
        server
            .read_exact(&mut got)
            .expect("retransmitted bytes after detach");
        assert_eq!(got, b"parked bytes forwarded bytes");
    });
}

#[test]
fn kernel_checksummed_frame_is_left_as_it_was() {
    let lab = Lab::new("csum");
    // Without tx checksum offload the client's kernel computes the full checksum.
    run(&[
        "ip",
        "netns",
        "exec",
        &lab.client.name,
        "ethtool",
        "-K",
        CLIENT_IF,
        "tx",
        "off",
    ]);
    lab.run(|ns| {
        ns.front();
        let mut fwd = Forwarder::attach(FRONT_IF).expect("attach");
        let (mut client, _server, key) = ns.connect();
        fwd.park(&key, owner()).expect("park");
        let ring = fwd.parked().expect("ring");
        client
            .write_all(b"odd-sized payload")
            .expect("client write");
        let (parked, _ring) = next_parked(ring);

        assert_eq!(checksums_valid(&parked.frame), Ok(true));
        let mut resend = parked.frame.clone();
        prepare_for_resend(&mut resend, CLIENT_MAC, FRONT_MAC).expect("prepare");
        assert_eq!(
            resend[12..],
            parked.frame[12..],
            "a correct checksum is kept"
        );
    });
}

#[test]
fn clsact_attach_adds_a_filter_that_drop_removes() {
    let lab = Lab::new("clsact");
    lab.run(|ns| {
        ns.front();
        let fwd = Forwarder::attach_with(FRONT_IF, AttachMode::Clsact).expect("attach");
        assert_eq!(fwd.attach_mode(), Some(AttachMode::Clsact));
        assert!(lab.front_ingress_filters().contains("btcp_ingress"));
        assert_eq!(tcx_program_ids(), Vec::<u32>::new());

        let _connection = ns.connect();
        assert!(
            fwd.stats().expect("stats").passed >= 2,
            "traffic goes through the filter"
        );

        // Netlink detaching works in the calling thread's namespace: still the front's.
        drop(fwd);
        assert!(!lab.front_ingress_filters().contains("btcp_ingress"));
    });
}

#[test]
fn attaching_to_a_missing_interface_names_it() {
    let lab = Lab::new("missing");
    lab.run(|ns| {
        ns.front();
        let err = Forwarder::attach("btnothere0").expect_err("no such interface");
        assert!(
            matches!(err, BpfError::Attach { .. } | BpfError::Sys { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("btnothere0"), "{text}");
        assert!(text.contains("TCX"), "{text}");
    });
}
