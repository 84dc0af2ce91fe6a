//! `baton check --host FILE`, run where the daemon runs (in the lab: the
//! host's namespace): a lab's front and back-ends pass every check; a
//! back-end configuration run on a host without its VIP on `lo` and with
//! the default ARP settings (the lab's client) fails, naming each problem
//! and its fix, with a non-zero exit.

mod common;

use common::*;

fn check_host(lab: &Lab, host: &str, file: &str) -> (bool, String) {
    let baton = baton().to_str().expect("utf-8 path").to_owned();
    let out = lab
        .run(host, &[&baton, "check", "--host", file])
        .expect("running baton check --host");
    outcome(&out)
}

#[test]
fn a_labs_hosts_are_ready_and_a_misconfigured_one_is_told_why() {
    let lab = up(1, None, None);
    let dir = lab.info.labdir.display().to_string();
    for host in ["front", "back1"] {
        let (ok, text) = check_host(&lab, host, &format!("{dir}/{host}.toml"));
        assert!(ok && !text.contains("FAIL"), "{host}: {text}");
        assert!(text.contains("this host is ready"), "{host}: {text}");
    }
    let (_, front) = check_host(&lab, "front", &format!("{dir}/front.toml"));
    assert!(front.contains("BPF program loads"), "{front}");
    let (_, back) = check_host(&lab, "back1", &format!("{dir}/back1.toml"));
    assert!(
        back.contains("is on lo") && back.contains("TCP_REPAIR is allowed"),
        "{back}"
    );

    // back1's configuration, checked on the client host.
    let (ok, text) = check_host(&lab, "client", &format!("{dir}/back1.toml"));
    assert!(!ok, "the client host passed as a back-end: {text}");
    for fail in [
        "FAIL the VIP 198.18.0.100 is not a local address",
        "ip addr add 198.18.0.100/32 dev lo",
        "FAIL net.ipv4.conf.all.arp_ignore = 0, needs 1",
        "FAIL net.ipv4.conf.all.arp_announce = 0, needs 2",
        "this host is not ready",
    ] {
        assert!(text.contains(fail), "no {fail:?} in:\n{text}");
    }
    finish(lab);
}
