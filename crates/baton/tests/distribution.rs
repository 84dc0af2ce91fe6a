//! Content-aware distribution in a live lab: routing rules send requests to
//! the right back-end group, LARD keeps a target on one back-end, and a
//! caching back-end fetches from the origin once and then serves from memory.

mod common;

use baton_tools::labtools::{handoffs_by_backend, LabOptions, OriginSpec, TempDir};
use common::*;
use std::collections::BTreeMap;

fn handoffs(lab: &baton_tools::labtools::Lab) -> BTreeMap<String, u64> {
    handoffs_by_backend(&stats(lab))
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .collect()
}

/// A path-prefix rule routes /1k* to the group `static` (back2 only); the
/// rest goes to the default group (back1 only).
#[test]
fn routing_rules_pick_the_group() {
    let extra = format!(
        "{FAST_FLOWS}\n[[group]]\nname = \"static\"\npolicy = \"least-conn\"\n\n[[rule]]\npath_prefix = \"/1k\"\ngroup = \"static\"\n"
    );
    let lab = up_with(LabOptions {
        backends: 2,
        front_extra: Some(extra),
        backend_groups: vec!["default".into(), "static".into()],
        ..Default::default()
    });
    let tmp = TempDir::new("rules").expect("temp dir");
    let before = handoffs(&lab);
    for _ in 0..6 {
        let r = curl(&lab, "/1k.bin", &tmp.0.join("a"), &[]);
        assert_eq!((r.code, r.size), (200, 1024));
    }
    let mid = handoffs(&lab);
    assert_eq!(
        delta(&before, &mid),
        BTreeMap::from([("back1".into(), 0), ("back2".into(), 6)]),
        "/1k.bin must go to the static group (back2)"
    );
    for _ in 0..4 {
        let r = curl(&lab, "/index.html", &tmp.0.join("b"), &[]);
        assert_eq!(r.code, 200);
    }
    assert_eq!(
        delta(&mid, &handoffs(&lab)),
        BTreeMap::from([("back1".into(), 4), ("back2".into(), 0)]),
        "everything else goes to the default group (back1)"
    );
    finish(lab);
}

/// LARD: every request for one target lands on the same back-end while the
/// cluster is lightly loaded; different targets spread.
#[test]
fn lard_keeps_a_target_on_one_backend() {
    let lab = up(3, Some(&format!("policy = \"lard\"\n{FAST_FLOWS}")), None);
    let tmp = TempDir::new("lard").expect("temp dir");
    let before = handoffs(&lab);
    for _ in 0..9 {
        assert_eq!(curl(&lab, "/1k.bin", &tmp.0.join("a"), &[]).code, 200);
    }
    let d = delta(&before, &handoffs(&lab));
    let used: Vec<_> = d.iter().filter(|(_, n)| **n > 0).collect();
    assert_eq!(used.len(), 1, "one target, one back-end under LARD: {d:?}");
    assert_eq!(*used[0].1, 9);
    // Other targets are assigned to the least loaded back-ends.
    for f in ["/index.html", "/empty.bin", "/1m.bin"] {
        assert_eq!(curl(&lab, f, &tmp.0.join("b"), &[]).code, 200);
    }
    let d = delta(&before, &handoffs(&lab));
    assert!(
        d.values().filter(|n| **n > 0).count() >= 2,
        "new targets should go to other, idle back-ends: {d:?}"
    );
    finish(lab);
}

/// A caching back-end in front of a slow origin: the first fetch is a miss
/// (it crosses the 10 Mbit/s origin link), the second a hit from memory;
/// both byte-exact.
#[test]
fn caching_backend_fetches_once_then_serves_from_memory() {
    let lab = up_with(LabOptions {
        backends: 1,
        front_extra: Some(FAST_FLOWS.into()),
        origin: Some(OriginSpec {
            rate: Some("10mbit".into()),
            cache_bytes: 16 << 20,
        }),
        ..Default::default()
    });
    let tmp = TempDir::new("cache").expect("temp dir");
    let want = doc(&lab, "1m.bin");
    let miss = curl(&lab, "/1m.bin", &tmp.0.join("miss"), &[]);
    let hit = curl(&lab, "/1m.bin", &tmp.0.join("hit"), &[]);
    for (what, r, file) in [("miss", &miss, "miss"), ("hit", &hit, "hit")] {
        assert_eq!(r.code, 200, "{what}");
        assert!(
            std::fs::read(tmp.0.join(file)).expect("body") == want,
            "{what}: bytes differ"
        );
    }
    // 1 MiB at 10 Mbit/s takes ~0.84 s; from memory it takes milliseconds.
    assert!(
        miss.total > 0.5,
        "the miss should cross the slow origin link: {miss:?}"
    );
    assert!(
        hit.total < miss.total / 4.0,
        "the hit should be served from memory: {hit:?} vs {miss:?}"
    );
    let out = lab
        .run(
            "back1",
            &[
                "curl",
                "-sf",
                "--max-time",
                "5",
                "http://127.0.0.1:9101/stats",
            ],
        )
        .expect("back1 stats");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("back1 /stats JSON");
    let cache = &s["cache"];
    assert!(cache["hits"].as_u64() >= Some(1), "{s:#}");
    assert_eq!(
        cache["origin_requests"].as_u64(),
        Some(2),
        "index.html for readiness + 1m.bin once: {s:#}"
    );
    finish(lab);
}
