//! `baton bench handoff` with few requests: it succeeds, its JSON holds the
//! fields scripts rely on (the existing ones and the control channel's own
//! round trip measured in the same run), and its lab is gone afterwards.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Far beyond the ~15 s a run of 100 requests takes, to fail rather than hang.
const BENCH_DEADLINE: Duration = Duration::from_secs(180);

#[test]
fn handoff_bench_reports_the_control_round_trip() {
    require_root();
    let tmp = TempDir::new("e2e-bench-handoff").expect("temp dir");
    let json = tmp.0.join("handoff.json");
    let name = lab_name();
    let run = run_bench(
        &[
            "bench".as_ref(),
            "handoff".as_ref(),
            "--requests".as_ref(),
            "100".as_ref(),
            "--name".as_ref(),
            name.as_ref(),
            "--json".as_ref(),
            json.as_os_str(),
        ],
        &name,
        BENCH_DEADLINE,
    );
    let (status, stdout) = (run.status, run.stdout);
    eprintln!("{stdout}");
    assert!(status.success(), "baton bench handoff failed: {status}");
    assert!(
        stdout.contains("added / control round trip: p50 "),
        "{stdout}"
    );

    let r: Value = serde_json::from_slice(
        &std::fs::read(&json).expect("the bench wrote its JSON where --json said"),
    )
    .expect("the JSON parses");
    let num = |key: &str| -> f64 {
        r[key]
            .as_f64()
            .unwrap_or_else(|| panic!("no numeric {key}: {r:#}"))
    };
    for key in [
        "control_rtt_p50_us",
        "control_rtt_p99_us",
        "added_p50_us",
        "added_p99_us",
        "added_to_control_rtt_p50",
        "added_to_control_rtt_p99",
    ] {
        num(key);
    }
    assert!(num("control_rtt_p50_us") > 0.0, "{r:#}");
    assert!(
        num("control_rtt_p99_us") >= num("control_rtt_p50_us"),
        "{r:#}"
    );
    assert_eq!(
        r["control_ping_us"]["count"], 100,
        "one ping per round: {r:#}"
    );
    assert_eq!(r["ping_failures"], 0, "{r:#}");
    assert_eq!(r["failures"], 0, "{r:#}");
    let ratio = num("added_p50_us") / num("control_rtt_p50_us");
    assert!(
        (num("added_to_control_rtt_p50") - ratio).abs() < 1e-9,
        "{r:#}"
    );
    // The fields that were there before.
    for key in [
        "dump_us",
        "control_rtt_us",
        "restore_us",
        "handoff_total_us",
        "front_before_send_us",
        "ttfb_baton_us",
        "ttfb_direct_us",
    ] {
        assert_eq!(r[key]["count"], 100, "{key}: {r:#}");
    }

    assert_gone(&name, &baton_lab::lab_dir(&name));
}
