//! The systemd units in `deploy/systemd/` are valid (`systemd-analyze
//! verify`, with `ExecStart` pointing at this build) and grant each daemon
//! the capabilities `baton check --host` requires of it.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn unit(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/systemd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ambient(text: &str) -> Vec<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .map(|caps| caps.split_whitespace().collect())
        .unwrap_or_default()
}

#[test]
fn systemd_units_verify_and_grant_what_the_daemons_need() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let binary = baton().to_str().expect("utf-8 path");
    for name in ["baton-front.service", "baton-back.service"] {
        let text = unit(name).replace("/usr/local/bin/baton", binary);
        let path = dir.path().join(name);
        std::fs::write(&path, &text).expect("writing the unit");
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("systemd-analyze (scripts/setup installs systemd)");
        let (ok, said) = outcome(&out);
        assert!(
            ok && said.trim().is_empty(),
            "{name} does not verify:\n{said}"
        );
    }
    let front = unit("baton-front.service");
    for cap in [
        "CAP_NET_ADMIN",
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_NET_RAW",
        "CAP_NET_BIND_SERVICE",
    ] {
        assert!(ambient(&front).contains(&cap), "the front unit lacks {cap}");
    }
    assert_eq!(
        ambient(&unit("baton-back.service")),
        ["CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"],
        "the back-end unit grants more or less than TCP_REPAIR and port 80 need"
    );
}
