//! The systemd units in `deploy/systemd/` are valid (`systemd-analyze
//! verify`, with `ExecStart` pointing at this build) and grant each daemon
//! the capabilities `baton check --host` requires of it (the announcer none).

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
    for name in [
        "baton-front.service",
        "baton-back.service",
        "baton-announce.service",
    ] {
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
    // The announcer polls HTTP and writes to BIRD's socket: no capability.
    let announce = unit("baton-announce.service");
    assert!(
        ambient(&announce).is_empty(),
        "the announcer needs no capability"
    );
    assert!(announce.contains("CapabilityBoundingSet=\n"), "{announce}");
}

/// Starts `baton ROLE --config CONFIG` in `netns` as uid/gid 65534 with
/// exactly `caps` (`AmbientCapabilities` names, e.g. `CAP_NET_ADMIN`).
fn spawn_unprivileged(
    netns: &str,
    role: &str,
    config: &Path,
    caps: &[&str],
    log: &Path,
) -> Spawned {
    let caps = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",");
    let out = std::fs::File::create(log).expect("creating the daemon log");
    let err = out.try_clone().expect("cloning the log handle");
    let child = Command::new("ip")
        .args([
            "netns", "exec", netns, "setpriv", "--reuid", "65534", "--regid", "65534",
        ])
        .args([
            "--clear-groups",
            "--inh-caps",
            &caps,
            "--ambient-caps",
            &caps,
        ])
        .arg(baton())
        .arg(role)
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("setpriv (util-linux)");
    Spawned(child)
}

/// Both daemons, run as `nobody` with only the capabilities their units
/// grant (the front loads and attaches its BPF forwarder and opens its
/// AF_PACKET socket, the back-end restores with TCP_REPAIR on port 80),
/// hand connections off with byte-exact answers.
#[test]
fn daemons_work_with_only_the_units_capabilities() {
    let lab = up(1, None, None);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let open = |p: &Path| {
        let st = Command::new("chmod").arg("-R").arg("a+rX").arg(p).status();
        assert!(st.is_ok_and(|s| s.success()), "chmod {}", p.display());
    };
    open(dir.path());
    open(&lab.info.docroot);
    open(&lab.info.labdir);
    // The key, readable by nobody in this throwaway copy only.
    let key = dir.path().join("key.hex");
    std::fs::copy(&lab.info.key_file, &key).expect("copying the key");
    open(&key);
    // What the unit's RuntimeDirectory and its bpffs give the front's user:
    // a directory for the upgrade socket and one for the pins (inside the
    // lab's pin directory, which `lab down` removes).
    let nobody = |p: &Path| {
        let st = Command::new("chown").arg("65534:65534").arg(p).status();
        assert!(st.is_ok_and(|s| s.success()), "chown {}", p.display());
    };
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).expect("mkdir");
    nobody(&run_dir);
    let pins = lab
        .info
        .pin_dir
        .clone()
        .expect("the lab pins")
        .join("nobody");
    std::fs::create_dir_all(&pins).expect("mkdir on the lab's bpffs");
    nobody(&pins);
    let mut daemons = Vec::new();
    for (host, role, unit_name) in [
        ("back1", "back", "baton-back.service"),
        ("front", "front", "baton-front.service"),
    ] {
        let text = std::fs::read_to_string(config_of(&lab, host)).expect("the lab's config");
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("key_file") {
                    format!("key_file = {:?}\n", key.display().to_string())
                } else if l.starts_with("pin_dir") {
                    format!("pin_dir = {:?}\n", pins.display().to_string())
                } else if l.starts_with("upgrade_socket") {
                    let sock = run_dir.join("front.sock");
                    format!("upgrade_socket = {:?}\n", sock.display().to_string())
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        let config = dir.path().join(format!("{host}.toml"));
        std::fs::write(&config, text).expect("writing the config");
        open(&config);
        let pid = pid_of(&lab, host);
        signal(pid, "-KILL");
        wait_killed(pid);
        let unit_text = unit(unit_name);
        let caps = ambient(&unit_text);
        let log = dir.path().join(format!("{host}.log"));
        daemons.push((
            host,
            log.clone(),
            spawn_unprivileged(lab.netns(host).expect("netns"), role, &config, &caps, &log),
        ));
    }
    let daemon_logs = |daemons: &[(&str, std::path::PathBuf, Spawned)]| -> String {
        daemons
            .iter()
            .map(|(h, l, _)| {
                format!(
                    "--- {h}\n{}",
                    std::fs::read_to_string(l).unwrap_or_default()
                )
            })
            .collect()
    };
    let t = std::time::Instant::now();
    while !lab
        .run("front", &["curl", "-sf", "http://127.0.0.1:9100/ready"])
        .is_ok_and(|o| o.status.success())
    {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "the unprivileged front never got ready\n{}",
            daemon_logs(&daemons)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let addr = vip(&lab);
    let (small, big) = (doc(&lab, "1k.bin"), doc(&lab, "1m.bin"));
    let bad = in_netns(lab.netns("client").expect("client netns"), move || {
        let mut bad = Vec::new();
        for (path, want) in [("/1k.bin", &small), ("/1m.bin", &big), ("/1k.bin", &small)] {
            match exchange(addr, get_request(path, true).as_bytes(), false) {
                Ok(r) if r.status == 200 && &r.body == want => {}
                Ok(r) => bad.push(format!("{path}: {} with {} bytes", r.status, r.body.len())),
                Err(e) => bad.push(format!("{path}: {e}")),
            }
        }
        bad
    });
    assert!(bad.is_empty(), "{bad:?}\n{}", daemon_logs(&daemons));
    // The lab's own helpers know the daemons it started; ask this front.
    let out = lab
        .run("front", &["curl", "-sf", "http://127.0.0.1:9100/stats"])
        .expect("curl /stats");
    let after: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    assert!(
        counter(&after, "handoffs_ok") >= 3 && counter(&after, "handoffs_failed") == 0,
        "{after:#}\n{}",
        daemon_logs(&daemons)
    );
    // The unprivileged front pinned its forwarder, as root's did, and the
    // verifier took the program's socket lookups with these capabilities:
    // it guards the VIP (flows.unknown = "drop", the default).
    assert_eq!(after["pinned"], serde_json::json!(true), "{after:#}");
    assert_eq!(after["unknown_flows"], "drop", "{after:#}");
    // After start-up every thread keeps only what each connection needs:
    // the front CAP_NET_ADMIN (0x1000), the back-end CAP_NET_ADMIN and
    // CAP_NET_BIND_SERVICE (0x1400); nothing in the ambient set.
    for (host, _, d) in &daemons {
        let want = if *host == "front" { 0x1000 } else { 0x1400 };
        let tasks = std::fs::read_dir(format!("/proc/{}/task", d.0.id())).expect("tasks");
        let mut threads = 0;
        for t in tasks.flatten() {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            };
            threads += 1;
            for (set, value) in [("CapEff:", want), ("CapPrm:", want), ("CapAmb:", 0)] {
                assert_eq!(
                    field(set),
                    Some(value),
                    "{host} thread {:?}: {set} {:x?}, want {value:#x}",
                    t.file_name(),
                    field(set)
                );
            }
        }
        assert!(threads > 1, "{host}: its runtime's threads checked too");
    }
    assert_drained(&lab);
    // Ours, not the lab's: stopped before the lab goes.
    drop(daemons);
    let (name, labdir) = (lab.name.clone(), lab.info.labdir.clone());
    drop(lab);
    assert_gone(&name, &labdir);
}
