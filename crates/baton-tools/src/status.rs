//! `baton status`: a running front seen through its admin endpoint, as a
//! refreshing table or as JSON for scripts.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Empty};
use serde_json::{json, Value};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The front's admin address (`admin_listen`).
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub admin: SocketAddr,
    /// Print one status document as JSON (rates over one interval) and exit.
    #[arg(long)]
    pub json: bool,
    /// Refresh interval, and the interval rates are measured over.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Stop after this many refreshes (default: until interrupted).
    #[arg(long)]
    pub count: Option<u64>,
}

pub fn run(a: &StatusArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let interval = Duration::from_millis(a.interval_ms.max(100));
        let mut before = fetch(a.admin).await?;
        let mut t0 = Instant::now();
        let mut shown = 0u64;
        loop {
            tokio::time::sleep(interval).await;
            let now = fetch(a.admin).await?;
            let doc = status(&before, &now, t0.elapsed());
            if a.json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
                return Ok(());
            }
            // Home and clear, then the table.
            print!("\x1b[H\x1b[2J{}", table(a.admin, &doc));
            shown += 1;
            if a.count.is_some_and(|c| shown >= c) {
                return Ok(());
            }
            before = now;
            t0 = Instant::now();
        }
    })
}

/// `GET /stats` from the front's admin endpoint.
async fn fetch(admin: SocketAddr) -> Result<Value> {
    let what = || format!("the front's admin endpoint at {admin}");
    let stream = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(admin),
    )
    .await
    .map_err(|_| anyhow::anyhow!("connecting: timed out"))
    .and_then(|r| r.map_err(anyhow::Error::from))
    .with_context(what)?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .with_context(what)?;
    tokio::spawn(conn);
    let req = hyper::Request::get("/stats")
        .header("host", admin.to_string())
        .body(Empty::<bytes::Bytes>::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), async {
        let resp = send.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    })
    .await
    .map_err(|_| anyhow::anyhow!("no answer within 5 s"))
    .and_then(|r| r)
    .with_context(what)?;
    if !resp.0.is_success() {
        bail!("{}: GET /stats answered {}", what(), resp.0);
    }
    serde_json::from_slice(&resp.1).with_context(|| format!("{}: /stats is not JSON", what()))
}

/// The status document: the front's totals and each back-end's health,
/// load, weight, rates over `over` and errors.
pub fn status(before: &Value, now: &Value, over: Duration) -> Value {
    let secs = over.as_secs_f64().max(1e-3);
    let rate = |b: &Value, n: &Value, k: &str| {
        let d = n[k]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(b[k].as_u64().unwrap_or(0));
        (d as f64 / secs * 10.0).round() / 10.0
    };
    let backends: Vec<Value> = now["backends"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|n| {
            let b = before["backends"]
                .as_array()
                .and_then(|all| all.iter().find(|b| b["name"] == n["name"]))
                .cloned()
                .unwrap_or(Value::Null);
            json!({
                "name": n["name"],
                "mode": n["mode"],
                "up": n["up"],
                "draining": n["draining"],
                "load": n["load"],
                "weight": n["weight"],
                "handoffs": n["handoffs"],
                "handoffs_per_s": rate(&b, n, "handoffs"),
                "relayed_per_s": rate(&b, n, "relayed"),
                "failures": n["failures"],
                "failures_per_s": rate(&b, n, "failures"),
                "connects": n["connects"],
                "last_error": n["last_error"],
            })
        })
        .collect();
    json!({
        "uptime_s": now["uptime_s"],
        "serving": now["serving"],
        "admin_drained": now["admin_drained"],
        "accepted_per_s": rate(before, now, "accepted"),
        "handoffs_ok": now["handoffs_ok"],
        "handoffs_failed": now["handoffs_failed"],
        "handoffs_per_s": rate(before, now, "handoffs_ok"),
        "relayed_per_s": rate(before, now, "relayed"),
        "forwarding_entries": now["forwarding_entries"],
        "latency_us": {
            "handoff_p50": now["latency_us"]["total"]["p50"],
            "handoff_p99": now["latency_us"]["total"]["p99"],
            "live_p50": now["latency_us"]["control_rtt"]["p50"],
            "live_p99": now["latency_us"]["control_rtt"]["p99"],
        },
        "backends": backends,
        "mirrored_flows": now["mirror"]["flows"],
        "peers": now["mirror"]["peers"],
    })
}

fn table(admin: SocketAddr, doc: &Value) -> String {
    // What GET /serving says, which an announcer turns into the VIP's route.
    let serving = match (doc["serving"].as_bool(), doc["admin_drained"].as_bool()) {
        (Some(true), _) => "serving",
        (Some(false), Some(true)) => "NOT SERVING (drained)",
        (Some(false), _) => "NOT SERVING",
        _ => "serving unknown",
    };
    let mut out = format!(
        "baton status: front at {admin}, up {:.0} s, {serving}; {} conn/s, {} handoffs/s ({} ok, {} failed), {} relayed/s; \
         handoff p50 {} µs, p99 {} µs; {} forwarding entries\n\n",
        doc["uptime_s"].as_f64().unwrap_or(0.0),
        doc["accepted_per_s"],
        doc["handoffs_per_s"],
        doc["handoffs_ok"],
        doc["handoffs_failed"],
        doc["relayed_per_s"],
        doc["latency_us"]["handoff_p50"],
        doc["latency_us"]["handoff_p99"],
        doc["forwarding_entries"],
    );
    out += &format!(
        "{:<12} {:<8} {:<6} {:>6} {:>6} {:>10} {:>10} {:>9} {:>9}  {}\n",
        "back-end",
        "mode",
        "health",
        "load",
        "weight",
        "handoffs/s",
        "relayed/s",
        "errors/s",
        "errors",
        "last error"
    );
    for b in doc["backends"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let health = match (b["up"].as_bool(), b["draining"].as_bool()) {
            (Some(true), Some(true)) => "drain",
            (Some(true), _) => "up",
            _ => "DOWN",
        };
        out += &format!(
            "{:<12} {:<8} {:<6} {:>6} {:>6} {:>10} {:>10} {:>9} {:>9}  {}\n",
            b["name"].as_str().unwrap_or("?"),
            b["mode"].as_str().unwrap_or("?"),
            health,
            cell(&b["load"]),
            cell(&b["weight"]),
            cell(&b["handoffs_per_s"]),
            cell(&b["relayed_per_s"]),
            cell(&b["failures_per_s"]),
            cell(&b["failures"]),
            b["last_error"].as_str().unwrap_or("-"),
        );
    }
    // Other fronts, as the back-ends report the flows they handed off.
    let peers = doc["peers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if !peers.is_empty() {
        out += &format!(
            "\n{} flows of other fronts steered here too; fronts heard of through the back-ends:\n",
            cell(&doc["mirrored_flows"])
        );
        for p in peers {
            out += &format!(
                "  front {:<16} {:>8} flows, last {} ms ago\n",
                p["front"].as_str().unwrap_or("?"),
                cell(&p["flows"]),
                cell(&p["last_heard_ms"]),
            );
        }
    }
    out
}

/// A JSON value as a table cell (`format!` widths ignore `Value`'s Display).
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_two_snapshots() {
        let before = json!({"accepted": 100, "handoffs_ok": 90, "backends": [
            {"name": "back1", "up": true, "handoffs": 40, "failures": 1, "relayed": 0}]});
        let now = json!({"accepted": 300, "handoffs_ok": 280, "backends": [
            {"name": "back1", "up": false, "handoffs": 140, "failures": 3, "relayed": 0},
            {"name": "back2", "up": true, "handoffs": 5, "failures": 0, "relayed": 0}]});
        let doc = status(&before, &now, Duration::from_secs(2));
        assert_eq!(doc["accepted_per_s"], 100.0);
        assert_eq!(doc["handoffs_per_s"], 95.0);
        assert_eq!(doc["backends"][0]["handoffs_per_s"], 50.0);
        assert_eq!(doc["backends"][0]["failures_per_s"], 1.0);
        assert_eq!(doc["backends"][0]["up"], false);
        // A back-end new since the first snapshot counts from zero.
        assert_eq!(doc["backends"][1]["handoffs_per_s"], 2.5);
        assert!(table("127.0.0.1:9100".parse().unwrap(), &doc).contains("DOWN"));
    }

    #[test]
    fn whether_the_front_serves_is_shown() {
        let now = json!({"serving": false, "admin_drained": true, "backends": []});
        let doc = status(&now, &now, Duration::from_secs(1));
        assert_eq!(doc["serving"], false);
        assert_eq!(doc["admin_drained"], true);
        let admin: SocketAddr = "127.0.0.1:9100".parse().expect("address");
        assert!(table(admin, &doc).contains("NOT SERVING (drained)"));
        let now = json!({"serving": true, "admin_drained": false, "backends": [],
            "mirror": {"flows": 3, "peers": [{"front": "198.18.0.102", "flows": 7, "last_heard_ms": 40}]}});
        let t = table(admin, &status(&now, &now, Duration::from_secs(1)));
        assert!(t.contains(", serving;"), "{t}");
        assert!(
            t.contains("3 flows of other fronts") && t.contains("front 198.18.0.102"),
            "{t}"
        );
    }
}
