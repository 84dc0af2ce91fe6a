//! `/metrics` on the front's and the back-ends' admin addresses: after a
//! known number of requests the counters say exactly that, and every
//! metric family parses (Python's `prometheus_client` OpenMetrics parser,
//! the strict one).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

const BACK_ADMIN: &str = "admin_listen = \"127.0.0.1:9101\"\n";

fn scrape(lab: &Lab, host: &str, port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let out = lab
        .run(
            host,
            &["curl", "-sf", "--noproxy", "*", "--max-time", "5", &url],
        )
        .expect("running curl");
    assert!(
        out.status.success(),
        "GET {url} in {host} failed\n{}",
        logs(lab)
    );
    String::from_utf8(out.stdout).expect("metrics are UTF-8")
}

/// The value of the sample named exactly `series` (name and labels as
/// written), 0 if absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .find_map(|v| v.split(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The number of families the strict parser read; panics with its error.
fn parse(text: &str) -> usize {
    let mut child = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys\n\
             from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
             print(len(list(text_string_to_metric_families(sys.stdin.read()))))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/setup installs python3-prometheus-client)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feeding the parser");
    let out = child.wait_with_output().expect("parser");
    assert!(
        out.status.success(),
        "the metrics do not parse: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a count")
}

#[test]
fn metrics_count_exactly_what_was_served_and_parse() {
    const N: usize = 40;
    let lab = up(2, None, Some(BACK_ADMIN));
    let front0 = scrape(&lab, "front", 9100);
    let backs0: Vec<String> = ["back1", "back2"]
        .iter()
        .map(|b| scrape(&lab, b, 9101))
        .collect();

    let addr = vip(&lab);
    let want = doc(&lab, "1k.bin");
    let ok = in_netns(lab.netns("client").expect("client netns"), move || {
        (0..N)
            .filter(|_| {
                exchange(addr, get_request("/1k.bin", true).as_bytes(), false)
                    .is_ok_and(|r| r.status == 200 && r.body == want)
            })
            .count()
    });
    assert_eq!(
        ok,
        N,
        "requests answered 200 with the right body\n{}",
        logs(&lab)
    );

    let front1 = scrape(&lab, "front", 9100);
    let d = |series: &str| value(&front1, series) - value(&front0, series);
    assert_eq!(
        d("baton_front_connections_accepted_total"),
        N as f64,
        "\n{front1}"
    );
    assert_eq!(
        d("baton_front_handoffs_total{result=\"ok\"}"),
        N as f64,
        "\n{front1}"
    );
    assert_eq!(
        d("baton_front_handoffs_total{result=\"failed\"}"),
        0.0,
        "\n{front1}"
    );
    assert_eq!(
        d("baton_front_handoff_seconds_count"),
        N as f64,
        "\n{front1}"
    );
    let per_backend = d("baton_front_backend_handoffs_total{backend=\"back1\"}")
        + d("baton_front_backend_handoffs_total{backend=\"back2\"}");
    assert_eq!(per_backend, N as f64, "\n{front1}");
    for b in ["back1", "back2"] {
        let series = format!("baton_front_backend_up{{backend=\"{b}\"}}");
        assert_eq!(value(&front1, &series), 1.0, "{series}\n{front1}");
    }
    assert_eq!(value(&front1, "baton_build_info{version=\"0.1.0\"}"), 1.0);

    let mut live = 0.0;
    let mut requests = 0.0;
    for (i, b) in ["back1", "back2"].iter().enumerate() {
        let now = scrape(&lab, b, 9101);
        live += value(&now, "baton_back_handoffs_total{result=\"live\"}")
            - value(&backs0[i], "baton_back_handoffs_total{result=\"live\"}");
        requests += value(&now, "baton_back_http_requests_total")
            - value(&backs0[i], "baton_back_http_requests_total");
        assert!(parse(&now) >= 10, "{b}: too few families\n{now}");
    }
    assert_eq!(live, N as f64, "back-ends' live handoffs");
    assert_eq!(requests, N as f64, "back-ends' requests");
    assert!(parse(&front1) >= 30, "too few families\n{front1}");
    finish(lab);
}
