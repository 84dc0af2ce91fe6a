//! Several fronts behind a router: real BIRD speakers, real kernel ECMP (a
//! resilient next-hop group), the announcer following each front's
//! `/serving`. What a user sees: the VIP answers from every front, a
//! drained or killed front leaves the router's group within a bounded time
//! and comes back, and `down` leaves nothing behind.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// How long a drained or killed front may stay in the router's group: one
/// announcer interval (100 ms), BGP's update, one agent poll (50 ms), and
/// slack for a busy machine. BGP's hold time (3 s) would be the bound
/// without the announcer.
const WITHDRAW_DEADLINE: Duration = Duration::from_secs(2);
/// How long a front that serves again may take to rejoin: two good polls
/// (rise), BGP, one agent poll, slack.
const REJOIN_DEADLINE: Duration = Duration::from_secs(5);

fn up_fronts(fronts: usize) -> Lab {
    up_with(baton_tools::labtools::LabOptions {
        fronts,
        front_extra: Some(FAST_FLOWS.to_owned()),
        ..Default::default()
    })
}

fn group(lab: &Lab) -> BTreeSet<usize> {
    lab.router_group()
        .unwrap_or_else(|e| panic!("reading the router's group: {e:#}\n{}", logs(lab)))
        .into_iter()
        .collect()
}

/// Polls the router's group (every 10 ms) until `pred` holds; returns how
/// long it took, or panics after `deadline` with the agent's log.
fn wait_group(
    lab: &Lab,
    what: &str,
    deadline: Duration,
    pred: impl Fn(&BTreeSet<usize>) -> bool,
) -> Duration {
    let t = Instant::now();
    loop {
        let g = group(lab);
        if pred(&g) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < deadline,
            "waited {deadline:?} for {what}; the group is {g:?}\n{}",
            helper_logs(lab)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The ends of the router's agent's and the announcers' logs.
fn helper_logs(lab: &Lab) -> String {
    let mut out = logs(lab);
    for (host, h) in &lab.info.hosts {
        for (kind, helper) in &h.helpers {
            let text = std::fs::read_to_string(&helper.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "\n--- {host} {kind} ({}) ---\n{}",
                helper.log.display(),
                lines[lines.len().saturating_sub(15)..].join("\n")
            ));
        }
    }
    out
}

fn all(n: usize) -> BTreeSet<usize> {
    (1..=n).collect()
}

/// Handed-off connections per front, from each front's `/stats`.
fn handoffs_per_front(lab: &Lab) -> Vec<u64> {
    lab.fronts()
        .iter()
        .map(|f| {
            let s = lab
                .stats_of(f)
                .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(lab)));
            s["handoffs_ok"].as_u64().unwrap_or(0)
        })
        .collect()
}

fn lab_status(lab: &Lab) -> Value {
    let out = Command::new(baton())
        .args(["lab", "status", "--name", &lab.name, "--json"])
        .output()
        .expect("running baton lab status");
    let (ok, text) = outcome(&out);
    assert!(ok, "baton lab status: {text}");
    serde_json::from_slice(&out.stdout).expect("status prints JSON")
}

/// Three fronts: the status lists them and the router, curl from the
/// client reaches more than one front, a drained front leaves the router's
/// group and comes back on resume (serving its clients all along), a
/// SIGKILLed front leaves it and rejoins once restarted, and `down` leaves
/// no namespace, process or pin.
#[test]
fn three_fronts_share_the_vip_and_leave_the_group_when_drained_or_killed() {
    let lab = up_fronts(3);

    // What `status` says.
    let st = lab_status(&lab);
    assert_eq!(st["fronts"], 3, "{st:#}");
    let hosts: BTreeSet<&str> = st["hosts"]
        .as_object()
        .map(|h| h.keys().map(String::as_str).collect())
        .unwrap_or_default();
    for h in [
        "client", "router", "front", "front1", "front2", "front3", "back1", "back2",
    ] {
        assert!(hosts.contains(h), "status has no host {h}: {hosts:?}");
    }
    assert_eq!(
        st["hosts"]["front"], st["hosts"]["front1"],
        "front is front1"
    );
    assert_eq!(st["hosts"]["client"]["ip"], "198.18.1.2");
    assert_eq!(st["hosts"]["router"]["ip"], "198.18.0.1");
    assert_eq!(st["hosts"]["front3"]["ip"], "198.18.0.103");
    for h in ["router", "front1", "front2", "front3"] {
        assert_eq!(st["hosts"][h]["running"], true, "{h}: {st:#}");
    }
    assert_eq!(
        group(&lab),
        all(3),
        "up returns with every front in the group"
    );

    // Each curl is a new connection from a new source port: the router's
    // 4-tuple hash spreads them over the fronts.
    let before = handoffs_per_front(&lab);
    for i in 0..40 {
        let r = curl(&lab, "/1k.bin", std::path::Path::new("/dev/null"), &[]);
        assert_eq!(r.code, 200, "request {i}\n{}", logs(&lab));
    }
    let after = handoffs_per_front(&lab);
    let used: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(used.iter().sum::<u64>(), 40, "handoffs per front: {used:?}");
    assert!(
        used.iter().filter(|n| **n > 0).count() >= 2,
        "40 connections all went to one front: {used:?}"
    );

    // Drain front2: its /serving says so, the router drops it, and the VIP
    // still answers (the other fronts take the new connections).
    let (code, body) = lab.admin("front2", "POST", "/drain").expect("POST /drain");
    assert_eq!(code, 200, "{body}");
    let (code, body) = lab
        .admin("front2", "GET", "/serving")
        .expect("GET /serving");
    assert_eq!((code, body.trim()), (503, "draining"));
    let took = wait_group(&lab, "front2 to leave the group", WITHDRAW_DEADLINE, |g| {
        *g == BTreeSet::from([1, 3])
    });
    eprintln!("drain: front2 left the router's group after {took:?}");
    let s2 = lab.stats_of("front2").expect("front2 /stats");
    assert_eq!(
        (s2["serving"].clone(), s2["admin_drained"].clone()),
        (Value::Bool(false), Value::Bool(true))
    );
    // Idempotent; the front itself still serves whatever reaches it.
    assert_eq!(lab.admin("front2", "POST", "/drain").expect("drain").0, 200);
    assert_curl_200(&lab, "front2 was drained");
    assert_eq!(
        lab.admin("front2", "POST", "/resume").expect("resume").0,
        200
    );
    assert_eq!(
        lab.admin("front2", "POST", "/resume").expect("resume").0,
        200
    );
    let took = wait_group(&lab, "front2 to rejoin", REJOIN_DEADLINE, |g| *g == all(3));
    eprintln!("resume: front2 rejoined after {took:?}");
    let (code, body) = lab
        .admin("front2", "GET", "/serving")
        .expect("GET /serving");
    assert_eq!((code, body.trim()), (200, "serving"));

    // SIGKILL front3: its announcer is refused and withdraws it.
    let pid = pid_of(&lab, "front3");
    signal(pid, "-KILL");
    let took = wait_group(
        &lab,
        "front3 to leave after SIGKILL",
        WITHDRAW_DEADLINE,
        |g| *g == BTreeSet::from([1, 2]),
    );
    eprintln!("SIGKILL: front3 left the router's group after {took:?}");
    wait_killed(pid);
    assert_curl_200(&lab, "front3 was killed");
    // `restart` starts it again and returns once the group holds it.
    let out = Command::new(baton())
        .args([
            "lab", "restart", "--name", &lab.name, "front3", "--signal", "kill", "--json",
        ])
        .output()
        .expect("running baton lab restart");
    let (ok, text) = outcome(&out);
    assert!(ok, "lab restart front3: {text}\n{}", helper_logs(&lab));
    let r: Value = serde_json::from_slice(&out.stdout).expect("restart --json");
    assert_eq!(r["old_running"], false, "{r:#}");
    assert_eq!(group(&lab), all(3), "restart returns once front3 is back");
    // Only the front restarted: its announcer and BIRD kept running.
    let st = lab_status(&lab);
    for kind in ["bird", "announce"] {
        assert_eq!(
            st["hosts"]["front3"]["helpers"][kind]["pid"],
            lab.info.hosts["front3"].helpers[kind]
                .pid
                .map_or(Value::Null, Value::from),
            "{kind} of front3 was restarted: {st:#}"
        );
    }
    assert_curl_200(&lab, "front3 is back");

    let name = lab.name.clone();
    let labdir = lab.info.labdir.clone();
    // A set: `front` is an alias of front1.
    let sockets: BTreeSet<String> = lab
        .info
        .hosts
        .values()
        .flat_map(|h| h.helpers.values())
        .filter_map(|h| h.socket.as_ref().map(|s| s.display().to_string()))
        .collect();
    drop(lab);
    assert_gone(&name, &labdir);
    // No BIRD, announcer or agent of the lab, no pins.
    for pattern in [
        format!("bird .*{}/", labdir.display()),
        format!("baton (announce|lab ecmp-sync) .*{}/", labdir.display()),
    ] {
        let out = Command::new("pgrep")
            .args(["-af", &pattern])
            .output()
            .expect("pgrep");
        let procs = String::from_utf8_lossy(&out.stdout);
        assert!(procs.trim().is_empty(), "left after down:\n{procs}");
    }
    assert_eq!(sockets.len(), 4, "a BIRD per front and the router's");
    for s in sockets {
        assert!(!std::path::Path::new(&s).exists(), "{s} left after down");
    }
    assert!(!baton_lab::pin_dir(&name).exists(), "pins left after down");
}

/// SIGTERM to a front with `drain_withdraw_ms` (the lab sets 1 s): the
/// router's group loses it while the old process still runs and accepts,
/// before it stops accepting; the VIP answers throughout.
#[test]
fn a_stopping_front_is_withdrawn_before_it_stops_accepting() {
    let lab = up_fronts(2);
    // The VIP is on lo behind the router: the host check accepts it there.
    let config = config_of(&lab, "front2");
    let out = lab
        .run(
            "front2",
            &[
                baton().to_str().expect("utf-8 path"),
                "check",
                "--host",
                config.to_str().expect("utf-8 path"),
            ],
        )
        .expect("baton check --host");
    let (ok, text) = outcome(&out);
    assert!(ok, "baton check --host on front2: {text}");
    assert!(
        text.contains("is a local address (on any interface"),
        "{text}"
    );
    let old = pid_of(&lab, "front2");
    let name = lab.name.clone();
    let restart = std::thread::spawn(move || {
        Command::new(baton())
            .args([
                "lab", "restart", "--name", &name, "front2", "--signal", "term",
            ])
            .output()
            .expect("running baton lab restart")
    });
    // The old front runs on for drain_withdraw_ms after SIGTERM: the group
    // must lose front2 inside that window.
    let t = Instant::now();
    let mut withdrawn_while_running = false;
    while t.elapsed() < Duration::from_secs(10) && process_runs(old) {
        if !group(&lab).contains(&2) {
            withdrawn_while_running = process_runs(old);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = restart.join().expect("restart thread");
    let (ok, text) = outcome(&out);
    assert!(
        ok,
        "lab restart front2 --signal term: {text}\n{}",
        helper_logs(&lab)
    );
    assert!(
        withdrawn_while_running,
        "front2 was not withdrawn while its old process still ran\n{}",
        helper_logs(&lab)
    );
    assert!(
        lab.log_tail("front2", 200)
            .contains("so the announcement is withdrawn first"),
        "{}",
        lab.log_tail("front2", 30)
    );
    assert_eq!(group(&lab), all(2), "restart returns once front2 is back");
    assert_curl_200(&lab, "front2 restarted");
    finish(lab);
}

/// A front that rejoins takes no live flow: downloads that started while
/// front2 was drained (all on front1) go on through front1 when front2
/// comes back, because the resilient group moves only buckets idle for
/// its idle timer; the idle buckets move at once, so new connections
/// reach front2 again.
#[test]
fn a_rejoining_front_takes_new_flows_but_no_live_one() {
    let lab = up_fronts(2);
    let want = sha256(&doc(&lab, "64m.bin"));
    assert_eq!(lab.admin("front2", "POST", "/drain").expect("drain").0, 200);
    wait_group(&lab, "front2 to leave", WITHDRAW_DEADLINE, |g| {
        *g == BTreeSet::from([1])
    });
    let before = handoffs_per_front(&lab);
    let url = lab.url("/64m.bin");
    let downloads: Vec<std::process::Child> = (0..6)
        .map(|_| {
            Command::new("ip")
                .args(["netns", "exec", lab.netns("client").expect("client netns")])
                .args(["bash", "-c"])
                .arg(format!(
                    "set -o pipefail; curl -sS --noproxy '*' --fail --limit-rate 16M \
                     --max-time 40 {url} | sha256sum"
                ))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("bash and curl")
        })
        .collect();
    // Every download handed off by front1 before front2 returns.
    let t = Instant::now();
    while handoffs_per_front(&lab)[0] < before[0] + 6 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "downloads not handed off"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        lab.admin("front2", "POST", "/resume").expect("resume").0,
        200
    );
    wait_group(&lab, "front2 to rejoin", REJOIN_DEADLINE, |g| *g == all(2));
    // New connections reach front2 again (its share of idle buckets).
    let before2 = handoffs_per_front(&lab)[1];
    for i in 0..20 {
        let r = curl(&lab, "/1k.bin", std::path::Path::new("/dev/null"), &[]);
        assert_eq!(r.code, 200, "request {i}\n{}", logs(&lab));
    }
    assert!(
        handoffs_per_front(&lab)[1] > before2,
        "no new connection reached the rejoined front2"
    );
    let mut failed = Vec::new();
    for (i, d) in downloads.into_iter().enumerate() {
        let out = d.wait_with_output().expect("download");
        let got = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !got.starts_with(&want) {
            failed.push(format!(
                "download {i}: {} {got} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "live downloads broke when front2 rejoined: {failed:#?}\n{}",
        helper_logs(&lab)
    );
    finish(lab);
}

/// Fronts that lose every back-end say `no back-end` on `/serving` and
/// are withdrawn; with no front announcing, the router's route to the VIP
/// is a blackhole (clients retry instead of meeting an ICMP error); once
/// the back-end is back, both fronts return.
#[test]
fn fronts_without_a_backend_are_withdrawn_and_the_vip_is_blackholed() {
    let lab = up_with(baton_tools::labtools::LabOptions {
        fronts: 2,
        backends: 1,
        front_extra: Some(FAST_FLOWS.to_owned()),
        ..Default::default()
    });
    let pid = pid_of(&lab, "back1");
    signal(pid, "-KILL");
    wait_group(&lab, "both fronts to leave", WITHDRAW_DEADLINE * 3, |g| {
        g.is_empty()
    });
    for f in ["front1", "front2"] {
        let (code, body) = lab.admin(f, "GET", "/serving").expect("GET /serving");
        assert_eq!((code, body.trim()), (503, "no back-end"), "{f}");
    }
    let route = lab
        .run("router", &["ip", "route", "show", "198.18.0.100"])
        .expect("ip route");
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(route.starts_with("blackhole 198.18.0.100"), "{route}");
    wait_killed(pid);
    let out = Command::new(baton())
        .args([
            "lab", "restart", "--name", &lab.name, "back1", "--signal", "kill",
        ])
        .output()
        .expect("running baton lab restart");
    let (ok, text) = outcome(&out);
    assert!(ok, "lab restart back1: {text}\n{}", helper_logs(&lab));
    wait_group(&lab, "both fronts to return", REJOIN_DEADLINE, |g| {
        *g == all(2)
    });
    let route = lab
        .run("router", &["ip", "route", "show", "198.18.0.100"])
        .expect("ip route");
    assert!(
        String::from_utf8_lossy(&route.stdout).contains("nhid 1000"),
        "{}",
        String::from_utf8_lossy(&route.stdout)
    );
    assert_curl_200(&lab, "back1 returned");
    finish(lab);
}

/// A lab with several fronts whose fronts cannot start: `up` fails with
/// the reason and removes what it made (namespaces, BIRD speakers, pins,
/// the lab directory); a front count out of range is refused at once.
#[test]
fn a_failing_up_with_several_fronts_leaves_nothing() {
    require_root();
    let name = lab_name();
    let out = Command::new(baton())
        .args(["lab", "up", "--name", &name, "--fronts", "2"])
        .args(["--front-extra", "policy = \"no-such-policy\""])
        .output()
        .expect("running baton lab up");
    let (ok, text) = outcome(&out);
    assert!(!ok, "{text}");
    assert!(text.contains("front"), "{text}");
    let labdir = baton_lab::lab_dir(&name);
    assert_gone(&name, &labdir);
    let out = Command::new("pgrep")
        .args(["-af", &format!("{}/", labdir.display())])
        .output()
        .expect("pgrep");
    let procs = String::from_utf8_lossy(&out.stdout);
    assert!(procs.trim().is_empty(), "left after a failed up:\n{procs}");
    assert!(
        !baton_lab::pin_dir(&name).exists(),
        "pins left after a failed up"
    );
    for n in ["0", "17"] {
        let out = Command::new(baton())
            .args(["lab", "up", "--name", &name, "--fronts", n])
            .output()
            .expect("running baton lab up");
        let (ok, text) = outcome(&out);
        assert!(!ok && text.contains("front count"), "--fronts {n}: {text}");
        assert_gone(&name, &labdir);
    }
}
