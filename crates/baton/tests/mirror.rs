//! Two fronts on one lab segment: a connection handed off by one front is
//! steered by the other, which heard of it from the back-end (`Mirror`),
//! and let go once it ended (`Unmirror`).
//!
//! The lab has one front; this test adds a second one (its own namespace
//! on the lab's bridge, 198.18.0.4, the VIP on `lo` so that it never
//! answers ARP for it, the lab's back-ends and key) and then points the
//! client's neighbour entry for the VIP at it in the middle of a download,
//! as a router's rehash would: the client's ACKs reach the second front,
//! whose forwarder must send them on to the back-end.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const FRONT2_IP: &str = "198.18.0.4";

/// The second front: its namespace and daemon, removed on drop (also when
/// the test fails).
struct SecondFront {
    netns: String,
    daemon: Option<Child>,
    log: PathBuf,
}

impl SecondFront {
    fn start(lab: &Lab) -> SecondFront {
        let netns = format!("{}-f2", lab.name);
        let br = format!("{}-br", lab.name);
        let mut f = SecondFront {
            netns: netns.clone(),
            daemon: None,
            log: lab.info.labdir.join("front2.log"),
        };
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("running ip");
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &netns]);
        let sysctl = |kv: &str| {
            let out = Command::new("ip")
                .args(["netns", "exec", &netns, "sysctl", "-qw", kv])
                .output()
                .expect("running sysctl");
            assert!(out.status.success(), "sysctl {kv}");
        };
        if std::path::Path::new("/proc/sys/net/ipv6").exists() {
            sysctl("net.ipv6.conf.all.disable_ipv6=1");
            sysctl("net.ipv6.conf.default.disable_ipv6=1");
        }
        // The VIP on lo, never announced: only the first front answers ARP.
        sysctl("net.ipv4.conf.all.arp_ignore=1");
        sysctl("net.ipv4.conf.all.arp_announce=2");
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        ip(&[
            "-n", &br, "link", "add", "f2", "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ]);
        ip(&["-n", &br, "link", "set", "f2", "master", "br0", "up"]);
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{FRONT2_IP}/24"),
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{}/32", lab.info.vip),
            "dev",
            "lo",
        ]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);

        // The lab front's configuration, unpinned and with its own upgrade
        // socket (the admin address is on this namespace's loopback).
        let front_cfg = lab.info.hosts["front"]
            .config
            .clone()
            .expect("the lab front's config");
        let text = std::fs::read_to_string(&front_cfg).expect("reading front.toml");
        let sock = lab.info.labdir.join("front2-upgrade.sock");
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("pin_dir") {
                    "pin_dir = \"\"".to_owned()
                } else if l.starts_with("upgrade_socket") {
                    format!("upgrade_socket = \"{}\"", sock.display())
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let cfg = lab.info.labdir.join("front2.toml");
        std::fs::write(&cfg, text).expect("writing front2.toml");
        let log = std::fs::File::create(&f.log).expect("front2.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &netns])
            .arg(baton())
            .arg("front")
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting the second front");
        f.daemon = Some(child);
        f
    }

    fn curl(&self, path: &str) -> Option<String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "curl",
                "-sf",
                "--max-time",
                "5",
            ])
            .arg(format!("http://127.0.0.1:9100{path}"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn stats(&self) -> Value {
        let text = self
            .curl("/stats")
            .unwrap_or_else(|| panic!("front2 /stats unavailable\n{}", self.log_tail()));
        serde_json::from_str(&text).expect("front2 /stats is JSON")
    }

    /// Polls the second front's `/stats` until `pred` holds.
    fn wait(&self, lab: &Lab, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let (start, timeout) = (Instant::now(), DRAIN_DEADLINE);
        loop {
            let s = self.stats();
            if pred(&s) {
                return s;
            }
            assert!(
                start.elapsed() < timeout,
                "waited {timeout:?} for front2: {what}; last /stats:\n{s:#}\n--- front2.log ---\n{}\n--- front /stats ---\n{:#}\n{}",
                self.log_tail(),
                stats(lab),
                logs(lab)
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

impl Drop for SecondFront {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn a_second_front_steers_a_flow_the_first_handed_off_and_lets_it_go() {
    let lab = up(1, Some(FAST_FLOWS), None);
    let mut front2 = SecondFront::start(&lab);
    let start = Instant::now();
    while front2.curl("/ready").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the second front is not ready\n{}",
            front2.log_tail()
        );
        std::thread::sleep(Duration::from_millis(25));
    }

    let handed = counter(&stats(&lab), "handoffs_ok");
    let tmp = TempDir::new("e2e-mirror").expect("temp dir");
    let out_file = tmp.0.join("64m.bin");
    // A download slow enough to outlive the switch, and paced by the
    // client's reads (its receive buffer fills): 64 MiB at 16 MiB/s. (A
    // short one may end within the back-end's 5 ms batch: such connections
    // are never mirrored.)
    let curl = lab
        .cmd("client", "curl")
        .expect("client")
        .args(["-s", "--max-time", "30", "--limit-rate", "16M", "-o"])
        .arg(&out_file)
        .args(["-w", "%{http_code} %{size_download}"])
        .arg(lab.url("/64m.bin"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting curl");

    wait_stats(
        &lab,
        "the handoff by the first front",
        DRAIN_DEADLINE,
        |s| s["handoffs_ok"].as_u64() == Some(handed + 1),
    );
    // The back-end tells the second front, which steers the flow too.
    let s2 = front2.wait(&lab, "the mirrored flow and its entry", |s| {
        s["mirror"]["flows"] == 1 && s["forwarding_entries"] == 1
    });
    assert_eq!(s2["accepted"], 0, "the second front accepted nothing");
    assert!(s2["mirror"]["steered"].as_u64() >= Some(1), "{s2:#}");
    let s1 = stats(&lab);
    assert_eq!(
        s1["mirror"]["flows"], 0,
        "the first front's flow is its own"
    );

    // The routers move the client to the second front: its ACKs now reach
    // the second front, whose forwarder sends them on to the back-end.
    let mac = String::from_utf8_lossy(
        &Command::new("ip")
            .args([
                "netns",
                "exec",
                &front2.netns,
                "cat",
                "/sys/class/net/eth0/address",
            ])
            .output()
            .expect("reading front2's MAC")
            .stdout,
    )
    .trim()
    .to_owned();
    let out = lab
        .run(
            "client",
            &[
                "ip",
                "neigh",
                "replace",
                &lab.info.vip.to_string(),
                "lladdr",
                &mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )
        .expect("ip neigh");
    assert!(out.status.success(), "{out:?}");
    front2.wait(&lab, "packets forwarded by the second front", |s| {
        s["bpf_forwarded"].as_u64() > Some(10)
    });

    let out = curl.wait_with_output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        text,
        format!("200 {}", 64 << 20),
        "the download broke when the client moved\n{}\n--- front2 ---\n{}",
        logs(&lab),
        front2.log_tail()
    );
    assert_eq!(
        sha256_file(&out_file).expect("hashing the download"),
        sha256_file(&lab.docroot().join("64m.bin")).expect("hashing the docroot file"),
        "64m.bin differs"
    );
    std::fs::remove_file(&out_file).ok();

    // The end reaches the second front too: its entry goes after the grace.
    let s2 = front2.wait(&lab, "the mirrored flow to end", |s| {
        s["mirror"]["flows"] == 0 && s["forwarding_entries"] == 0
    });
    assert_eq!(s2["mirror"]["unmirrored"], 1, "{s2:#}");
    assert_eq!(s2["mirror"]["stale"], 0, "{s2:#}");
    front2.stop();
    finish(lab);
}
