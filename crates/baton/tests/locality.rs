//! Locality across fronts: with LARD and LARD/R, a target goes to the same
//! back-end (set) whichever front receives the request, because each front
//! learns the others' placements from the hints its back-ends echo. What a
//! user sees: the caches' hit rate with three fronts is the hit rate with
//! one (issue 11: within 2 points). Without the sharing, each front places
//! targets on its own and three fronts lose about 15 points here.

mod common;

use std::ffi::OsStr;
use std::time::Duration;

use common::*;
use serde_json::Value;

#[test]
fn three_fronts_keep_the_hit_rate_of_one() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let json = tmp.path().join("policies.json");
    let args: Vec<&OsStr> = [
        "bench",
        "policies",
        "--policies",
        "lard,lard-r",
        "--fronts",
        "1,3",
        "--requests",
        "3000",
        "--targets",
        "300",
        "--json",
    ]
    .iter()
    .map(OsStr::new)
    .chain([json.as_os_str()])
    .collect();
    let run = run_bench(&args, "batonpol", Duration::from_secs(300));
    assert!(
        run.status.success(),
        "bench policies failed:\n{}",
        run.stdout
    );
    eprintln!("{}", run.stdout);
    let records: Vec<Value> =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON")).expect("JSON records");
    for policy in ["lard", "lard-r"] {
        let rate = |fronts: u64| -> f64 {
            let r = records
                .iter()
                .find(|r| r["policy"] == policy && r["fronts"] == fronts)
                .unwrap_or_else(|| panic!("no record for {policy} with {fronts} fronts"));
            assert_eq!(r["failures"], 0, "{r:#}");
            if fronts > 1 {
                // The router spread the clients: every front handed off a share.
                let per_front: Vec<u64> = r["per_front"]
                    .as_array()
                    .expect("per_front")
                    .iter()
                    .map(|v| v.as_u64().unwrap_or(0))
                    .collect();
                assert_eq!(per_front.len() as u64, fronts, "{r:#}");
                assert!(per_front.iter().all(|&n| n >= 300), "{r:#}");
            }
            r["hit_rate"].as_f64().expect("hit_rate") * 100.0
        };
        let (one, three) = (rate(1), rate(3));
        eprintln!("{policy}: hit rate {one:.1}% with one front, {three:.1}% with three");
        assert!(
            (one - three).abs() <= 2.0,
            "{policy}: {one:.1}% with one front, {three:.1}% with three"
        );
    }
}
