//! `baton bench compare --quick` as CI runs it: the JSON scripts rely on
//! holds every configuration with positive throughput at every size and
//! connection mode, the Markdown and the chart are written, the handoff
//! front's NIC carries a fraction of what nginx's carries, and nothing the
//! bench started is left running. `--tls --quick` the same over HTTPS:
//! every configuration answered without errors, the ratios the targets
//! name are there and finite, TLS 1.3 was negotiated and nothing resumed.
//! The two run one after the other (each loads the whole machine).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Far beyond the 2 minutes a quick run takes, to fail rather than hang.
const BENCH_DEADLINE: Duration = Duration::from_secs(300);

/// One bench at a time: the tests of a file run in parallel.
static ONE_BENCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_bench() -> std::sync::MutexGuard<'static, ()> {
    ONE_BENCH.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether this build's front has relay mode: `baton check` accepts a
/// front that relays everything (`handoff = false`).
fn relay_mode_exists(dir: &Path) -> bool {
    let conf = dir.join("relay-probe.toml");
    std::fs::write(
        &conf,
        "vip = \"198.18.0.100\"\ninterface = \"eth0\"\nhandoff = false\n\n\
         [[backend]]\nname = \"back1\"\ncontrol = \"198.18.0.11:7070\"\n\
         relay_address = \"198.18.0.11:8080\"\n",
    )
    .expect("writing the probe config");
    Command::new(baton())
        .arg("check")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("running baton check")
        .success()
}

fn num(r: &Value, key: &str) -> f64 {
    r[key]
        .as_f64()
        .unwrap_or_else(|| panic!("record without a numeric {key}: {r}"))
}

#[test]
fn quick_compare_reports_every_configuration() {
    require_root();
    let _one = one_bench();
    let tmp = TempDir::new("e2e-compare").expect("temp dir");
    let json = tmp.0.join("compare.json");
    let name = lab_name();
    let run = run_bench(
        &[
            "bench".as_ref(),
            "compare".as_ref(),
            "--quick".as_ref(),
            "--name".as_ref(),
            name.as_ref(),
            "--json".as_ref(),
            json.as_os_str(),
        ],
        &name,
        BENCH_DEADLINE,
    );
    let (status, stdout, took, bench_pid) = (run.status, run.stdout, run.took, run.pid);
    eprintln!("{stdout}\nbaton bench compare --quick took {took:?}");
    assert!(status.success(), "baton bench compare failed: {status}");
    assert!(
        took < Duration::from_secs(120),
        "a quick run must fit CI's 2 minutes, took {took:?}"
    );

    let records: Vec<Value> = serde_json::from_slice(
        &std::fs::read(&json).expect("the bench wrote its JSON where --json said"),
    )
    .expect("the JSON is a list of records");
    let keys: BTreeSet<&str> = [
        "config",
        "size_bytes",
        "conn_mode",
        "rps",
        "mbps",
        "p50_ms",
        "p99_ms",
        "front_cpu_us_per_req",
        "front_nic_bytes",
    ]
    .into();
    for r in &records {
        let got: BTreeSet<&str> = r
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {r}"))
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(got, keys, "{r}");
    }

    let mut expected = vec!["direct", "handoff", "nginx", "haproxy"];
    if relay_mode_exists(&tmp.0) {
        expected.push("relay");
    }
    let sizes: BTreeSet<u64> = records
        .iter()
        .filter_map(|r| r["size_bytes"].as_u64())
        .collect();
    assert!(
        sizes.contains(&1024) && sizes.contains(&(1 << 20)),
        "sizes {sizes:?}"
    );
    let find = |config: &str, size: u64, mode: &str| -> &Value {
        records
            .iter()
            .find(|r| r["config"] == config && r["size_bytes"] == size && r["conn_mode"] == mode)
            .unwrap_or_else(|| panic!("no record for {config} {size} B {mode}\n{stdout}"))
    };
    for config in &expected {
        for &size in &sizes {
            for mode in ["keepalive", "close"] {
                let r = find(config, size, mode);
                assert!(num(r, "rps") > 0.0, "{r}\n{stdout}");
                assert!(num(r, "mbps") > 0.0 && num(r, "p50_ms") > 0.0, "{r}");
            }
        }
    }
    for r in records.iter().filter(|r| r["config"] == "direct") {
        assert_eq!(num(r, "front_cpu_us_per_req"), 0.0, "{r}");
    }

    // A proxy carries each response through its NIC twice; a handoff front
    // only sees requests and ACKs. Per request, so throughput does not matter.
    let per_req = |r: &Value| num(r, "front_nic_bytes") / num(r, "rps");
    let handoff = find("handoff", 1 << 20, "keepalive");
    let nginx = find("nginx", 1 << 20, "keepalive");
    assert!(
        per_req(handoff) * 10.0 < per_req(nginx),
        "front NIC bytes per 1 MiB request: handoff {:.0}, nginx {:.0}",
        per_req(handoff),
        per_req(nginx)
    );
    assert!(
        per_req(nginx) > (1u64 << 20) as f64,
        "nginx's NIC must carry the body: {nginx}"
    );

    assert!(json.with_extension("md").is_file(), "no Markdown table");
    let svg = std::fs::read_to_string(json.with_extension("svg")).expect("the chart");
    assert!(svg.starts_with("<svg") && svg.contains("handoff"));

    // Nothing the bench started survives it.
    assert_gone(&name, &baton_lab::lab_dir(&name));
    // The bench's scratch directory (labtools::TempDir), named in the peers' command lines.
    let scratch = std::env::temp_dir().join(format!("baton-compare-{bench_pid}-"));
    let out = Command::new("pgrep")
        .arg("-af")
        .arg(&scratch)
        .output()
        .expect("pgrep");
    let left = String::from_utf8_lossy(&out.stdout);
    assert!(
        left.trim().is_empty(),
        "processes left by the bench:\n{left}"
    );
}

#[test]
fn quick_tls_compare_reports_every_configuration_and_ratio() {
    require_root();
    let _one = one_bench();
    let tmp = TempDir::new("e2e-compare-tls").expect("temp dir");
    let json = tmp.0.join("compare-tls.json");
    let name = lab_name();
    let run = run_bench(
        &[
            "bench".as_ref(),
            "compare".as_ref(),
            "--tls".as_ref(),
            "--quick".as_ref(),
            "--name".as_ref(),
            name.as_ref(),
            "--json".as_ref(),
            json.as_os_str(),
        ],
        &name,
        BENCH_DEADLINE,
    );
    let (status, stdout, took, bench_pid) = (run.status, run.stdout, run.took, run.pid);
    eprintln!("{stdout}\nbaton bench compare --tls --quick took {took:?}");
    assert!(
        status.success(),
        "baton bench compare --tls failed: {status}"
    );

    let report: Value = serde_json::from_slice(
        &std::fs::read(&json).expect("the bench wrote its JSON where --json said"),
    )
    .expect("the JSON is an object");
    let records = report["records"]
        .as_array()
        .unwrap_or_else(|| panic!("no records: {report}"));
    let mut expected = vec!["direct", "handoff", "nginx", "haproxy", "nginx-static"];
    if relay_mode_exists(&tmp.0) {
        expected.push("relay");
    }
    let find = |config: &str, size: u64, mode: &str| -> &Value {
        records
            .iter()
            .find(|r| r["config"] == config && r["size_bytes"] == size && r["conn_mode"] == mode)
            .unwrap_or_else(|| panic!("no record for {config} {size} B {mode}\n{stdout}"))
    };
    for config in &expected {
        for size in [1024, 256 << 10, 1 << 20] {
            for mode in ["keepalive", "close"] {
                let r = find(config, size, mode);
                assert!(num(r, "rps") > 0.0 && num(r, "mbps") > 0.0, "{r}\n{stdout}");
            }
        }
    }
    for config in ["direct", "handoff", "nginx-static"] {
        let r = find(config, 1 << 20, "single");
        assert!(num(r, "rps") > 0.0, "{r}");
    }
    // Every configuration answered every request.
    assert_eq!(num(&report, "wrk_errors"), 0.0, "{stdout}");
    assert_eq!(num(&report, "failed_runs"), 0.0, "{stdout}");

    let ratios = report["ratios"]
        .as_array()
        .unwrap_or_else(|| panic!("no ratios: {report}"));
    let names: BTreeSet<&str> = ratios.iter().filter_map(|r| r["name"].as_str()).collect();
    for name in [
        "front_cpu_1mib_keepalive_nginx_per_handoff",
        "front_cpu_1mib_close_nginx_per_handoff",
        "rps_256kib_keepalive_handoff_per_nginx",
        "rps_1mib_close_handoff_per_nginx",
        "handshakes_per_s_handoff_per_nginx",
        "backend_tls_mbps_1mib_keepalive_direct_per_nginx_static",
        "backend_tls_mbps_1mib_single_handoff_per_nginx_static",
    ] {
        assert!(names.contains(name), "no ratio {name}: {names:?}");
    }
    for r in ratios {
        let v = num(r, "value");
        assert!(v.is_finite() && v > 0.0, "{r}");
        if r["name"].as_str().is_some_and(|n| n.starts_with("rps_")) {
            assert!(num(r, "direct_bound").is_finite(), "{r}");
        }
    }
    // What wrk's libssl negotiates with each: TLS 1.3, the lab's certificate, no resumption.
    let negotiated = report["negotiated"].as_array().expect("negotiated");
    assert_eq!(negotiated.len(), expected.len(), "{negotiated:?}");
    for n in negotiated {
        assert_eq!(n["protocol"], "TLSv1.3", "{n}");
        assert_eq!(n["verified"], true, "{n}");
        assert_eq!(n["resumes"], false, "{n}");
    }
    for h in report["front_handshakes"]
        .as_array()
        .expect("handshake counts")
    {
        assert!(num(h, "close_handshakes") > 0.0, "{h}");
        assert_eq!(num(h, "resumed"), 0.0, "{h}");
    }
    assert!(json.with_extension("md").is_file(), "no Markdown table");
    assert!(json.with_extension("svg").is_file(), "no chart");

    assert_gone(&name, &baton_lab::lab_dir(&name));
    let scratch = std::env::temp_dir().join(format!("baton-compare-{bench_pid}-"));
    let out = Command::new("pgrep")
        .arg("-af")
        .arg(&scratch)
        .output()
        .expect("pgrep");
    let left = String::from_utf8_lossy(&out.stdout);
    assert!(
        left.trim().is_empty(),
        "processes left by the bench:\n{left}"
    );
}
