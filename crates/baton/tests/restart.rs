//! `baton lab restart`: a daemon killed or stopped and started again, and
//! the lab serves again when the command returns; what it cannot do it
//! refuses with a clear error and changes nothing.

mod common;

use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// `baton lab restart --name LAB ARGS...`.
fn restart(lab: &Lab, args: &[&str]) -> Output {
    Command::new(baton())
        .args(["lab", "restart", "--name", &lab.name])
        .args(args)
        .output()
        .expect("running baton lab restart")
}

/// The pid `baton lab status` records for `host`, and whether it runs.
fn recorded(lab: &Lab, host: &str) -> (u64, bool) {
    let out = Command::new(baton())
        .args(["lab", "status", "--name", &lab.name, "--json"])
        .output()
        .expect("running baton lab status");
    let (ok, text) = outcome(&out);
    assert!(ok, "baton lab status: {text}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("status prints JSON");
    let h = &v["hosts"][host];
    (
        h["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("no pid for {host}: {v:#}")),
        h["running"].as_bool() == Some(true),
    )
}

/// Kill a back-end, kill the front, stop the front with SIGTERM (the
/// default): each `restart` returns with a new daemon recorded and running,
/// and curl through the VIP answers 200 at once. `--signal upgrade` for a
/// back-end is refused with the reason, and the back-end keeps running.
#[test]
fn restarted_daemons_serve_again_at_once() {
    let lab = up(1, Some(FAST_FLOWS), None);
    assert_curl_200(&lab, "lab up");
    for (host, signal) in [
        ("back1", Some("kill")),
        ("front", Some("kill")),
        ("front", None),
    ] {
        let what = format!("lab restart {host} --signal {}", signal.unwrap_or("(term)"));
        let (old, _) = recorded(&lab, host);
        let mut args = vec![host, "--json"];
        if let Some(s) = signal {
            args.extend(["--signal", s]);
        }
        let out = restart(&lab, &args);
        let (ok, text) = outcome(&out);
        assert!(ok, "{what} failed: {text}\n{}", logs(&lab));
        let r: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{what} --json: {e}: {text}"));
        assert_eq!(r["host"], host, "{r:#}");
        assert_eq!(r["signal"], signal.unwrap_or("term"), "{r:#}");
        assert_eq!(r["old_pid"], old, "{r:#}");
        assert_eq!(r["old_running"], true, "{r:#}");
        assert_eq!(r["escalated"], false, "{r:#}");
        let new = r["new_pid"].as_u64().expect("new_pid");
        assert_ne!(new, old, "{r:#}");
        assert!(
            r["serving_ms"].as_u64().is_some_and(|ms| ms < 20_000),
            "{r:#}"
        );
        // The lab records the new daemon (so `down` stops it), and it runs.
        assert_eq!(recorded(&lab, host), (new, true), "{what}");
        assert!(
            !process_runs(u32::try_from(old).expect("pid")),
            "{what}: the old daemon {old} still runs"
        );
        assert_curl_200(&lab, &what);
    }
    assert_daemons_alive(&lab);

    let before = recorded(&lab, "back1");
    let out = restart(&lab, &["back1", "--signal", "upgrade"]);
    let (ok, text) = outcome(&out);
    assert!(!ok, "an upgrade of a back-end must be refused: {text}");
    assert!(
        text.contains("--signal upgrade is for the front only"),
        "the refusal should say why: {text}"
    );
    assert_eq!(
        recorded(&lab, "back1"),
        before,
        "a refused restart changed back1"
    );
    let out = restart(&lab, &["client"]);
    let (ok, text) = outcome(&out);
    assert!(!ok && text.contains("runs no daemon"), "{text}");
    assert_curl_200(&lab, "the refused restarts");

    let pins = baton_lab::pin_dir(&lab.name);
    finish(lab);
    assert!(!pins.exists(), "{} left after down", pins.display());
}

/// Issue 10, item 1: a connection handed off before the front is killed or
/// upgraded keeps being served after (the forwarder's pins outlive the
/// process, the new front adopts them).
#[test]
fn a_handed_off_connection_outlives_a_front_restart() {
    let lab = up(1, Some(FAST_FLOWS), None);
    let pins = baton_lab::pin_dir(&lab.name);
    assert!(
        pins.is_dir(),
        "the front pinned nothing under {}",
        pins.display()
    );
    for signal in ["kill", "upgrade"] {
        let what = format!("lab restart front --signal {signal}");
        let addr = vip(&lab);
        let want = doc(&lab, "1k.bin");
        let netns = lab.netns("client").expect("client netns").to_owned();
        let (go, wait_go) = mpsc::channel::<()>();
        let (first_done, first) = mpsc::channel::<Result<(), String>>();
        // One keep-alive connection: a request before the restart, one after.
        let client = std::thread::spawn(move || {
            in_netns(&netns, move || -> Result<(), String> {
                let get = |c: &mut HttpConn, when: &str| -> Result<(), String> {
                    c.send(get_request("/1k.bin", false).as_bytes())
                        .map_err(|e| format!("send {when}: {e}"))?;
                    match c.read_response(false) {
                        Ok(r) if r.status == 200 && r.body == want => Ok(()),
                        Ok(r) => Err(format!(
                            "{when}: status {} with {} bytes",
                            r.status,
                            r.body.len()
                        )),
                        Err(e) => Err(format!("{when}: {e}")),
                    }
                };
                let mut c = HttpConn::connect(addr).map_err(|e| format!("connect: {e}"))?;
                let r = get(&mut c, "before the restart");
                let failed = r.is_err();
                let _ = first_done.send(r);
                if failed {
                    return Ok(());
                }
                wait_go
                    .recv_timeout(Duration::from_secs(60))
                    .map_err(|_| "never told to go on".to_owned())?;
                get(&mut c, "after the restart, on the same connection")
            })
        });
        let r = first
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| Err("no answer before the restart".into()));
        if let Err(e) = r {
            drop(go);
            let _ = client.join();
            panic!("{e}\n{}", logs(&lab));
        }
        let out = restart(&lab, &["front", "--signal", signal]);
        let (ok, text) = outcome(&out);
        let _ = go.send(());
        let after = client
            .join()
            .unwrap_or_else(|_| Err("client panicked".into()));
        assert!(ok, "{what} failed: {text}\n{}", logs(&lab));
        if let Err(e) = after {
            panic!("{what}: {e}\n{text}\n{}", logs(&lab));
        }
        assert_curl_200(&lab, &what);
    }
    finish(lab);
    assert!(!pins.exists(), "{} left after down", pins.display());
}

/// Issue 10's acceptance test: 20 downloads through handoff survive a
/// SIGKILL of the front and an upgrade to a new front process, byte-exact,
/// with no reset at the client; during the upgrade a loop of new
/// connections meets no refusal.
#[test]
fn twenty_downloads_survive_a_front_kill_and_an_upgrade_without_a_reset() {
    let lab = up(2, Some(FAST_FLOWS), None);
    let want = sha256(&doc(&lab, "64m.bin"));
    let tmp = tempfile::tempdir().expect("tempdir");
    for signal in ["kill", "upgrade"] {
        let before = counter(&stats(&lab), "handoffs_ok");
        let capture = ResetCapture::start(&lab, tmp.path().join(format!("{signal}.pcap")));
        let downloads = start_downloads(&lab, 20);
        // Every download handed off before the front goes.
        wait_stats(
            &lab,
            "20 downloads handed off",
            Duration::from_secs(20),
            |s| counter(s, "handoffs_ok") >= before + 20,
        );
        let (stop, stopped) = mpsc::channel();
        let looping = (signal == "upgrade").then(|| curl_loop(&lab, stopped));
        let out = restart(&lab, &["front", "--signal", signal]);
        let (ok, text) = outcome(&out);
        assert!(
            ok,
            "lab restart front --signal {signal}: {text}\n{}",
            logs(&lab)
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
        let _ = stop.send(());
        let loop_seen = looping.map(|h| h.join().expect("the curl loop").seen);
        let resets = capture.resets();
        assert!(
            failed.is_empty(),
            "after --signal {signal}: {failed:#?}\n{text}\n{}",
            logs(&lab)
        );
        assert!(
            resets.is_empty(),
            "after --signal {signal}, resets at the client: {resets:#?}"
        );
        if let Some(seen) = loop_seen {
            let answered = seen.get("200").copied().unwrap_or(0);
            assert!(answered > 0, "the loop never got through: {seen:?}");
            assert_eq!(
                seen.len(),
                1,
                "during the upgrade every new connection is answered 200: {seen:?}\n{}",
                logs(&lab)
            );
            eprintln!("--signal {signal}: {answered} new connections during the upgrade, all 200");
        }
        eprintln!("--signal {signal}: 20 downloads byte-exact, 0 resets; {text}");
    }
    let s = stats(&lab);
    assert!(counter(&s, "flows_adopted") > 0, "{s:#}");
    finish(lab);
}

/// A successor that fails after taking the listener (here: its
/// configuration serves another port) leaves the running front serving:
/// the front keeps its copy of the listener until the successor says it
/// serves.
#[test]
fn a_failed_takeover_leaves_the_running_front_serving() {
    let lab = up(1, None, None);
    let before = pid_of(&lab, "front");
    let out = lab
        .run(
            "front",
            &[
                baton().to_str().expect("utf-8 path"),
                "front",
                "--config",
                config_of(&lab, "front").to_str().expect("utf-8 path"),
                "--takeover",
                "--port",
                "8080",
            ],
        )
        .expect("running the successor");
    let (ok, text) = outcome(&out);
    assert!(!ok, "a successor for another port took over: {text}");
    assert!(text.contains("not taking over"), "{text}");
    // The same front serves again, its channels back up.
    wait_stats(
        &lab,
        "the front ready again",
        Duration::from_secs(10),
        |s| s["backends"][0]["up"] == true,
    );
    assert_eq!(pid_of(&lab, "front"), before);
    assert!(process_runs(before));
    assert_curl_200(&lab, "a failed takeover");
    let log = std::fs::read_to_string(lab.info.labdir.join("front.log")).unwrap_or_default();
    assert!(log.contains("did not take over: serving again"), "{log}");
    finish(lab);
}
