//! Hot reload of the front's configuration (issue 10, item 2), under load:
//! a back-end added takes traffic, one removed drains and takes none, a
//! weight change shows in the split, and no client sees an error; a broken
//! file changes nothing and says why.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The lab's front.toml with only `keep` as back-ends (weights as given),
/// and `policy = "wrr"`.
fn front_config(lab: &Lab, keep: &[(&str, u32)]) -> String {
    let text = std::fs::read_to_string(config_of(lab, "front")).expect("front.toml");
    let (head, _) = text
        .split_once("\n[[backend]]")
        .expect("back-ends in front.toml");
    let mut out: String = head
        .lines()
        .filter(|l| !l.starts_with("policy"))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str("policy = \"wrr\"\n");
    for (name, weight) in keep {
        let ip = lab.info.hosts[*name].ip;
        out.push_str(&format!(
            "\n[[backend]]\nname = \"{name}\"\ncontrol = \"{ip}:{}\"\nrelay_address = \"{ip}:{}\"\nweight = {weight}\n",
            baton_lab::CONTROL_PORT,
            baton_lab::DIRECT_PORT
        ));
    }
    out
}

/// `baton reload` in the front's namespace: (succeeded, what it printed).
fn reload(lab: &Lab) -> (bool, String) {
    let out = lab
        .run("front", &[baton().to_str().expect("utf-8 path"), "reload"])
        .expect("running baton reload");
    outcome(&out)
}

fn handoffs_of(s: &Value, name: &str) -> Option<u64> {
    s["backends"]
        .as_array()?
        .iter()
        .find(|b| b["name"] == name)
        .and_then(|b| b["handoffs"].as_u64())
}

#[test]
fn reload_under_load_adds_drains_and_reweighs_without_a_client_error() {
    let lab = up(3, None, None);
    let file = config_of(&lab, "front");
    // Start from back1 and back2 (a first reload, with nothing running).
    std::fs::write(&file, front_config(&lab, &[("back1", 1), ("back2", 1)])).expect("write");
    let (ok, text) = reload(&lab);
    assert!(ok, "first reload: {text}\n{}", logs(&lab));
    assert!(text.contains("back3 removed"), "{text}");
    wait_stats(
        &lab,
        "back3 gone from the front",
        Duration::from_secs(10),
        |s| handoffs_of(s, "back3").is_none(),
    );

    // Load: one request per connection, bounded in time.
    let wrk = Command::new("ip")
        .args(["netns", "exec", lab.netns("client").expect("client netns")])
        .args(["wrk", "-t1", "-c8", "-d8s", "-H", "Connection: close"])
        .arg(lab.url("/1k.bin"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wrk (installed by scripts/setup)");
    let before = stats(&lab);
    let base = counter(&before, "handoffs_ok");
    wait_stats(&lab, "load flowing", Duration::from_secs(5), |s| {
        counter(s, "handoffs_ok") >= base + 200
    });

    // Under load: back2 removed, back3 added, back1 three times back3's weight.
    std::fs::write(&file, front_config(&lab, &[("back1", 3), ("back3", 1)])).expect("write");
    let (ok, text) = reload(&lab);
    assert!(ok, "reload under load: {text}\n{}", logs(&lab));
    for part in ["back2 removed", "back3 added", "back1 weight 1 -> 3"] {
        assert!(text.contains(part), "{part:?} not in {text}");
    }
    let at = stats(&lab);
    let back2_at = handoffs_of(&at, "back2").unwrap_or(0);
    let (b1, b3) = (
        handoffs_of(&at, "back1").unwrap_or(0),
        handoffs_of(&at, "back3").unwrap_or(0),
    );
    let after = wait_stats(&lab, "back3 taking traffic", Duration::from_secs(6), |s| {
        handoffs_of(s, "back3").unwrap_or(0) >= b3 + 100
    });
    let out = wrk.wait_with_output().expect("wrk");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk: {report}");
    assert!(
        !report.contains("Non-2xx") && !report.contains("Socket errors"),
        "clients saw errors across the reload:\n{report}\n{}",
        logs(&lab)
    );
    let end = stats(&lab);
    // back2 took nothing new (at most the connections in flight at the
    // reload, one per wrk connection), then left once drained.
    if let Some(n) = handoffs_of(&end, "back2") {
        assert!(
            n <= back2_at + 8,
            "back2 kept taking connections: {back2_at} -> {n}"
        );
    }
    wait_stats(
        &lab,
        "back2 drained and gone",
        Duration::from_secs(10),
        |s| handoffs_of(s, "back2").is_none(),
    );
    // The split since the reload follows the weights 3:1.
    let d1 = handoffs_of(&end, "back1").unwrap_or(0) - b1;
    let d3 = handoffs_of(&end, "back3").unwrap_or(0) - b3;
    let ratio = d1 as f64 / d3.max(1) as f64;
    assert!(
        (2.0..=4.5).contains(&ratio),
        "back1:back3 = {d1}:{d3} ({ratio:.2}), weights 3:1\n{after:#}"
    );
    eprintln!("after the reload: back1 {d1}, back3 {d3} (ratio {ratio:.2}); wrk:\n{report}");

    // A broken file: nothing changes, and the answer says why.
    let good = std::fs::read_to_string(&file).expect("read");
    std::fs::write(&file, "vip = [not toml").expect("write");
    let (ok, text) = reload(&lab);
    assert!(!ok, "a broken file was accepted: {text}");
    assert!(
        text.contains("not reloaded") && text.contains("parsing"),
        "{text}"
    );
    // A change only a restart can make is refused as a whole.
    std::fs::write(&file, good.replace("\nport = 80\n", "\nport = 81\n")).expect("write");
    let (ok, text) = reload(&lab);
    assert!(!ok && text.contains("port cannot change"), "{text}");
    let s = stats(&lab);
    assert_eq!(counter(&s, "reloads_failed"), 2, "{s:#}");
    assert_eq!(counter(&s, "reloads_ok"), 2, "{s:#}");
    assert!(handoffs_of(&s, "back3").is_some() && handoffs_of(&s, "back2").is_none());
    assert_curl_200(&lab, "the refused reloads");
    std::fs::write(&file, good).expect("write");
    finish(lab);
}

/// The back-end reloads its own file the same way: a new docroot is served
/// from the next connection on; a broken file or a change that needs a
/// restart changes nothing and says why.
#[test]
fn a_back_end_reload_swaps_its_docroot_or_says_why_not() {
    let lab = up(1, None, None);
    let file = config_of(&lab, "back1");
    let text = std::fs::read_to_string(&file).expect("back1.toml");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("reloaded.txt"), "the new docroot\n").expect("write");
    let st = Command::new("chmod")
        .arg("-R")
        .arg("a+rX")
        .arg(dir.path())
        .status();
    assert!(st.is_ok_and(|s| s.success()));
    let get = |lab: &Lab| {
        let out = lab
            .run(
                "client",
                &[
                    "curl",
                    "-s",
                    "--noproxy",
                    "*",
                    "--max-time",
                    "5",
                    &lab.url("/reloaded.txt"),
                ],
            )
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        !get(&lab).contains("the new docroot"),
        "served before the reload"
    );
    let reload_back = |lab: &Lab| {
        let out = lab
            .run(
                "back1",
                &[
                    baton().to_str().expect("utf-8 path"),
                    "reload",
                    "--admin",
                    "127.0.0.1:9101",
                ],
            )
            .expect("baton reload");
        outcome(&out)
    };
    let docroot_line = text
        .lines()
        .find(|l| l.starts_with("docroot"))
        .expect("a docroot line");
    let moved = text.replace(
        docroot_line,
        &format!("docroot = {:?}", dir.path().display().to_string()),
    );
    std::fs::write(&file, &moved).expect("write");
    let (ok, said) = reload_back(&lab);
    assert!(ok && said.contains("docroot"), "{said}\n{}", logs(&lab));
    assert_eq!(get(&lab), "the new docroot\n");

    std::fs::write(&file, "docroot = ").expect("write");
    let (ok, said) = reload_back(&lab);
    assert!(!ok && said.contains("not reloaded"), "{said}");
    std::fs::write(&file, moved.replace("vip = ", "vip = \"198.18.0.101\"\n#")).expect("write");
    let (ok, said) = reload_back(&lab);
    assert!(!ok && said.contains("vip cannot change"), "{said}");
    // Still serving what the last good reload said.
    assert_eq!(get(&lab), "the new docroot\n");
    std::fs::write(&file, text).expect("write");
    finish(lab);
}
