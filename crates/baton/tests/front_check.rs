//! `baton check` on front-end timers and back-end lists: values that would
//! make the front spin, never reconnect or overflow a clock are refused with
//! a message naming the setting. No root needed.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn check(file: &Path) -> (bool, String) {
    let out = Command::new(baton())
        .arg("check")
        .arg(file)
        .output()
        .expect("running baton check");
    outcome(&out)
}

/// `tables` go last: TOML keys after a table header belong to that table.
fn front_toml(key: &Path, tables: &str, backends: &str) -> String {
    format!(
        "vip = \"198.18.0.100\"\ninterface = \"eth0\"\nkey_file = \"{}\"\n{backends}{tables}",
        key.display()
    )
}

const BACKENDS: &str = "\n[[backend]]\nname = \"back1\"\ncontrol = \"198.18.0.11:7070\"\n\
                        \n[[backend]]\nname = \"back2\"\ncontrol = \"198.18.0.12:7070\"\n";

#[test]
fn front_timers_and_backend_addresses_are_checked() {
    let tmp = TempDir::new("e2e-front-check").expect("temp dir");
    let dir = &tmp.0;
    let key = dir.join("key.hex");
    std::fs::write(
        &key,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    )
    .expect("key");

    // The edges that must still pass: 24 h exactly, and 1 ms.
    let good = front_toml(
        &key,
        "\n[flows]\nidle_timeout_ms = 86400000\n\n[control]\nconnect_timeout_ms = 1\nmax_backoff_ms = 1\n",
        BACKENDS,
    );
    let path = dir.join("good.toml");
    std::fs::write(&path, &good).expect("write");
    let (ok, out) = check(&path);
    assert!(ok, "should pass: {out}\n{good}");

    let bad: &[(&str, String, &[&str])] = &[
        (
            "no connect timeout",
            front_toml(&key, "\n[control]\nconnect_timeout_ms = 0\n", BACKENDS),
            &["connect_timeout_ms"],
        ),
        (
            "no backoff",
            front_toml(&key, "\n[control]\nmax_backoff_ms = 0\n", BACKENDS),
            &["max_backoff_ms"],
        ),
        (
            "grace beyond 24 h",
            front_toml(&key, "\n[flows]\nclosed_grace_ms = 86400001\n", BACKENDS),
            &["closed_grace_ms", "24 h"],
        ),
        (
            "drain timeout that would overflow an Instant",
            front_toml(&key, "", BACKENDS).replace(
                "interface",
                "drain_timeout_ms = 9223372036854775807\ninterface",
            ),
            &["drain_timeout_ms"],
        ),
        (
            "two back-ends on one control address",
            front_toml(
                &key,
                "",
                &BACKENDS.replace("198.18.0.12:7070", "198.18.0.11:7070"),
            ),
            &["back2", "198.18.0.11:7070"],
        ),
    ];
    let mut problems = Vec::new();
    for (i, (what, text, words)) in bad.iter().enumerate() {
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, text).expect("write");
        let (ok, out) = check(&path);
        if ok {
            problems.push(format!("{what}: passed\n{text}"));
        } else if let Some(w) = words.iter().find(|w| !out.contains(*w)) {
            problems.push(format!(
                "{what}: the message does not mention {w:?}: {}",
                out.trim()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}
