//! Privileged tests of the lab network itself (no daemons): real namespaces,
//! real ARP, real teardown.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use baton_lab::topology::{back_ip, Topology, CLIENT_IP, FRONT_IP, ORIGIN_IP};
use baton_lab::{down, exec, status, LabError, VIP};
use common::*;

fn link_names(netns: &str) -> BTreeSet<String> {
    ip_n(netns, &["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Whether `ip` answers from `netns`. `ping` is not installed everywhere;
/// curl is (the lab needs it): a connection to a closed port fails at once
/// (curl exit 7) when the host is there, and the neighbour entry then holds
/// its MAC. A host that does not answer ARP leaves no MAC and a timeout (28).
fn reachable(netns: &str, ip: &str) -> bool {
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "curl",
            "-s",
            "--noproxy",
            "*",
            "--connect-timeout",
            "1",
        ])
        .arg(format!("http://{ip}:9/"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("curl");
    status.code() == Some(7) && ip_n(netns, &["neigh", "show", ip]).contains("lladdr")
}

#[test]
fn hosts_share_a_segment_and_only_the_front_answers_arp_for_the_vip() {
    require_root();
    let name = unique_name();
    let _cleanup = DownOnDrop(name.clone());
    let topo = Topology::create(&name, 2).expect("create topology");
    let ns = |h: &str| format!("{name}-{h}");

    // Nothing outside the lab's namespaces: each host has only lo and eth0,
    // the bridge namespace holds both ends' other halves.
    for h in ["client", "front", "back1", "back2"] {
        assert_eq!(link_names(&ns(h)), set(&["lo", "eth0"]), "{h}");
    }
    assert_eq!(
        link_names(&ns("br")),
        set(&["lo", "br0", "client", "front", "back1", "back2"])
    );
    assert_eq!(topo.hosts().len(), 4);
    assert_eq!(topo.host("back2").map(|h| h.ip), back_ip(2));

    let front_mac = topo.host("front").expect("front").mac.clone();
    let back1_mac = topo.host("back1").expect("back1").mac.clone();
    assert_ne!(front_mac, back1_mac);

    // Everyone is reachable on the segment, and the VIP resolves to the front.
    let client = ns("client");
    for ip in [
        FRONT_IP,
        back_ip(1).expect("ip"),
        back_ip(2).expect("ip"),
        VIP,
    ] {
        assert!(
            reachable(&client, &ip.to_string()),
            "client cannot reach {ip}"
        );
    }
    let neigh = ip_n(&client, &["neigh", "show", &VIP.to_string()]);
    assert!(
        neigh.contains(&front_mac),
        "VIP resolved to {neigh:?}, front is {front_mac}"
    );
    assert!(reachable(&ns("back1"), &CLIENT_IP.to_string()));

    // Back-ends hold the VIP on lo but stay silent on ARP for it: without the
    // front's copy, nobody answers.
    assert!(ip_n(&ns("back1"), &["addr", "show", "dev", "lo"]).contains("198.18.0.100/32"));
    ip_n(
        &ns("front"),
        &["addr", "del", "198.18.0.100/32", "dev", "eth0"],
    );
    ip_n(&client, &["neigh", "flush", "all"]);
    assert!(
        !reachable(&client, &VIP.to_string()),
        "a back-end answered ARP for the VIP"
    );
    let neigh = ip_n(&client, &["neigh", "show", &VIP.to_string()]);
    assert!(
        !neigh.contains("lladdr"),
        "VIP resolved without the front: {neigh:?}"
    );

    // IPv4 only.
    for h in ["client", "front", "back1", "br"] {
        assert_eq!(
            ip_n(&ns(h), &["-6", "addr", "show"]).trim(),
            "",
            "{h} has IPv6 addresses"
        );
    }

    topo.destroy().expect("destroy");
    assert_eq!(namespaces_with(&format!("{name}-")), Vec::<String>::new());
}

#[test]
fn a_panicking_test_still_removes_the_topology_and_its_processes() {
    require_root();
    let name = unique_name();
    let _cleanup = DownOnDrop(name.clone());
    let sleeper: Mutex<Option<std::process::Child>> = Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let topo = Topology::create(&name, 1).expect("create topology");
        let child = Command::new("ip")
            .args(["netns", "exec", &format!("{name}-client"), "sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        *sleeper.lock().expect("lock") = Some(child);
        assert_eq!(namespaces_with(&format!("{name}-")).len(), 4);
        let _keep_alive = &topo;
        panic!("test body failed on purpose");
    }));
    assert!(result.is_err());
    assert_eq!(namespaces_with(&format!("{name}-")), Vec::<String>::new());
    let mut child = sleeper
        .lock()
        .expect("lock")
        .take()
        .expect("sleep was started");
    // Ended (and possibly already reaped by the teardown): not still running.
    assert!(
        !matches!(child.try_wait(), Ok(None)),
        "process in the namespace survived"
    );
}

#[test]
fn a_name_in_use_is_refused_and_left_intact() {
    require_root();
    let name = unique_name();
    let _cleanup = DownOnDrop(name.clone());
    let first = Topology::create(&name, 1).expect("create topology");
    match Topology::create(&name, 1) {
        Err(LabError::Exists { .. }) => {}
        other => panic!("expected Exists, got {other:?}"),
    }
    assert_eq!(
        namespaces_with(&format!("{name}-")).len(),
        4,
        "the refusal removed the first lab"
    );
    assert!(reachable(&format!("{name}-client"), &FRONT_IP.to_string()));
    drop(first);
    assert_eq!(namespaces_with(&format!("{name}-")), Vec::<String>::new());
}

#[test]
fn down_cleans_a_half_made_lab_twice_and_spares_other_labs() {
    require_root();
    let name = unique_name();
    let neighbour = format!("{name}-b");
    let _cleanup = (DownOnDrop(name.clone()), DownOnDrop(neighbour.clone()));
    for ns in [
        format!("{name}-br"),
        format!("{name}-client"),
        format!("{name}-back3"),
        format!("{name}-origin"),
        format!("{neighbour}-client"),
        format!("{neighbour}-origin"),
    ] {
        let ok = Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .expect("ip")
            .success();
        assert!(ok, "ip netns add {ns}");
    }
    let labdir = baton_lab::lab_dir(&name);
    std::fs::create_dir_all(&labdir).expect("labdir");
    std::fs::write(labdir.join("state.json"), "{ half written").expect("state");
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", &format!("{name}-client"), "sleep", "60"])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep");

    assert!(matches!(status(&name), Err(LabError::State { .. })));
    // Without a usable state, exec still finds the hosts from the namespaces.
    match exec(&name, "front", &["true".to_owned()]) {
        Err(LabError::UnknownHost { known, .. }) => {
            assert_eq!(known, "client, back3, origin, br")
        }
        other => panic!("expected UnknownHost, got {other:?}"),
    }

    down(&name).expect("down on a half-made lab");
    let mut left = namespaces_with(&format!("{name}-"));
    left.sort();
    assert_eq!(
        left,
        vec![format!("{neighbour}-client"), format!("{neighbour}-origin")]
    );
    assert!(!labdir.exists());
    assert!(
        !matches!(sleeper.try_wait(), Ok(None)),
        "process in the namespace survived"
    );
    down(&name).expect("second down");
    assert!(matches!(status(&name), Err(LabError::NotFound { .. })));
    assert!(matches!(
        exec(&name, "client", &["true".to_owned()]),
        Err(LabError::NotFound { .. })
    ));

    down(&neighbour).expect("down neighbour");
    assert_eq!(namespaces_with(&format!("{name}-")), Vec::<String>::new());
}

#[test]
fn the_origin_shares_the_segment_and_its_rate_can_be_limited() {
    require_root();
    let name = unique_name();
    let _cleanup = DownOnDrop(name.clone());
    let topo = Topology::create_with_origin(&name, 1).expect("create topology");
    let origin = format!("{name}-origin");
    let back1 = format!("{name}-back1");

    assert_eq!(topo.hosts().len(), 4);
    assert_eq!(topo.host("origin").map(|h| h.ip), Some(ORIGIN_IP));
    assert_eq!(link_names(&origin), set(&["lo", "eth0"]));
    assert_eq!(
        link_names(&format!("{name}-br")),
        set(&["lo", "br0", "client", "front", "back1", "origin"])
    );
    assert!(ip_n(&origin, &["addr", "show", "dev", "eth0"]).contains("198.18.0.5/24"));
    // It is no part of the VIP business.
    assert!(!ip_n(&origin, &["addr", "show"]).contains("198.18.0.100"));
    assert!(reachable(&back1, &ORIGIN_IP.to_string()));
    assert!(reachable(&origin, &back_ip(1).expect("ip").to_string()));

    match topo.limit_egress("origin", "5mbit; reboot") {
        Err(LabError::InvalidSpec(_)) => {}
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
    topo.limit_egress("origin", "100mbit").expect("limit");
    let qdisc = Command::new("ip")
        .args([
            "netns", "exec", &origin, "tc", "qdisc", "show", "dev", "eth0",
        ])
        .output()
        .expect("tc");
    let qdisc = String::from_utf8_lossy(&qdisc.stdout);
    assert!(
        qdisc.contains("tbf") && qdisc.contains("100Mbit"),
        "{qdisc}"
    );

    topo.destroy().expect("destroy");
    assert_eq!(namespaces_with(&format!("{name}-")), Vec::<String>::new());
}
