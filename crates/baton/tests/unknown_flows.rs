//! No front resets a flow it does not know (issue 11, part 3), through the
//! daemons: `[flows] unknown` in `/stats`, `/metrics` and a reload, and what
//! a client sees when the front's process is gone while its pinned forwarder
//! still receives the VIP's packets (as while a router still sends them): a
//! connect that times out and is retried with `unknown = "drop"`, a refusal
//! with `unknown = "pass"`. The forwarder's own tests
//! (`crates/baton-bpf/src/tests/unknown.rs`) cover each packet's fate.

mod common;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A SYN and its retransmission one second later, both dropped, end in a timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

/// `baton reload` in the front's namespace: (succeeded, what it printed).
fn reload(lab: &Lab) -> (bool, String) {
    let out = lab
        .run("front", &[baton().to_str().expect("utf-8 path"), "reload"])
        .expect("running baton reload");
    outcome(&out)
}

/// `baton lab restart --name LAB front --json`: the new front's pid once it serves.
fn restart_front(lab: &Lab) -> u32 {
    let out: Output = Command::new(baton())
        .args(["lab", "restart", "--name", &lab.name, "front", "--json"])
        .output()
        .expect("running baton lab restart");
    let (ok, text) = outcome(&out);
    assert!(ok, "lab restart front: {text}\n{}", logs(lab));
    let r: Value = serde_json::from_slice(&out.stdout).expect("restart --json");
    u32::try_from(r["new_pid"].as_u64().expect("new_pid")).expect("pid")
}

/// Kills the front with SIGKILL and returns once its listener is closed;
/// its pinned forwarder stays. (The thread group's leader turns zombie
/// before the other threads have exited, and the descriptors they share
/// close with the last of them: [`wait_killed`] alone returns too early.)
fn kill_front(pid: u32) {
    signal(pid, "-9");
    wait_killed(pid);
    let threads_left =
        || std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |tasks| tasks.count());
    let t = std::time::Instant::now();
    while threads_left() > 1 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{pid}'s threads survived SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What a new connection to the VIP from the client meets.
fn connect_error(lab: &Lab) -> ErrorKind {
    let to = vip(lab);
    let netns = lab.netns("client").expect("client netns").to_owned();
    in_netns(&netns, move || {
        match TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) {
            Ok(_) => panic!("{to} accepted a connection with no front running"),
            Err(e) => e.kind(),
        }
    })
}

fn metrics(lab: &Lab) -> String {
    let out = lab
        .run(
            "front",
            &[
                "curl",
                "-sf",
                "--noproxy",
                "*",
                "--max-time",
                "5",
                "http://127.0.0.1:9100/metrics",
            ],
        )
        .expect("running curl");
    assert!(out.status.success(), "GET /metrics\n{}", logs(lab));
    String::from_utf8(out.stdout).expect("metrics are UTF-8")
}

#[test]
fn a_front_gone_leaves_new_clients_retrying_not_refused_and_pass_restores_the_refusal() {
    let lab = up(1, Some(FAST_FLOWS), None);
    let file = config_of(&lab, "front");
    let drop_text = std::fs::read_to_string(&file).expect("front.toml");
    let pass_text = drop_text.replace("[flows]\n", "[flows]\nunknown = \"pass\"\n");
    assert_ne!(drop_text, pass_text, "the lab's front.toml has [flows]");
    assert_curl_200(&lab, "lab up");
    assert_eq!(stats(&lab)["unknown_flows"], "drop", "the default");

    // unknown = "pass", by a reload: today's single-front behaviour.
    std::fs::write(&file, &pass_text).expect("write");
    let (ok, text) = reload(&lab);
    assert!(ok && text.contains("flows.unknown drop -> pass"), "{text}");
    assert_eq!(stats(&lab)["unknown_flows"], "pass");
    kill_front(pid_of(&lab, "front"));
    assert_eq!(
        connect_error(&lab),
        ErrorKind::ConnectionRefused,
        "pass: the front's kernel refuses a SYN while no front runs"
    );
    let pid = restart_front(&lab);
    assert_curl_200(&lab, "a restart with unknown = \"pass\"");

    // Back to "drop" by a reload; the front dies again.
    std::fs::write(&file, &drop_text).expect("write");
    let (ok, text) = reload(&lab);
    assert!(ok && text.contains("flows.unknown pass -> drop"), "{text}");
    let before = counter(&stats(&lab), "bpf_no_listener_dropped");
    kill_front(pid);
    assert_eq!(
        connect_error(&lab),
        ErrorKind::TimedOut,
        "drop: the pinned forwarder drops the SYN, the client retries (another front, behind a router)"
    );
    restart_front(&lab);
    assert_curl_200(&lab, "a restart with unknown = \"drop\"");

    // The pinned counters saw the SYN and its retransmission.
    let s = stats(&lab);
    assert_eq!(s["unknown_flows"], "drop", "{s:#}");
    let dropped = counter(&s, "bpf_no_listener_dropped");
    assert!(dropped >= before + 2, "{before} -> {dropped}\n{s:#}");
    let m = metrics(&lab);
    let line =
        format!("baton_front_bpf_packets_total{{verdict=\"no_listener_dropped\"}} {dropped}");
    assert!(
        m.lines().any(|l| l == line),
        "{line:?} not in /metrics:\n{m}"
    );
    finish(lab);
}
