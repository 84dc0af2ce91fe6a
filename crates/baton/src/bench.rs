//! `baton bench`: benchmarks that print numbers and write them as JSON.
//!
//! `baton bench handoff` brings up a lab and measures, in one run:
//! - handoff latency split into dump (front), control round trip (front: from
//!   sending `Handoff` to receiving `Ready`) and restore (back, reported in
//!   `Ready`), from the front's own samples;
//! - time to first byte seen by a client in the client namespace, through
//!   Baton (VIP) and straight to a back-end's plain HTTP port, interleaved
//!   request by request (A B A B ...) so that drift hits both alike. The
//!   difference of the medians is the latency a handoff adds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde::Serialize;

use crate::labtools::Lab;
use crate::stats::{summarize, Summary};

/// `baton bench ...`
#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Handoff latency (dump, control round trip, restore) and time to first
    /// byte through Baton vs straight to a back-end.
    Handoff {
        /// Requests per target (Baton and direct), sequential, one per connection.
        #[arg(long, default_value_t = 2000)]
        requests: u32,
        /// Where to write the JSON.
        #[arg(long, default_value = "bench-out/handoff.json")]
        json: PathBuf,
        /// The lab name.
        #[arg(long, default_value = "batonbench")]
        name: String,
        /// Extra TOML for the front's configuration (e.g. "workers = 1").
        #[arg(long)]
        front_extra: Option<String>,
        /// Extra TOML for the back-end's configuration.
        #[arg(long)]
        back_extra: Option<String>,
    },
}

/// The JSON `baton bench handoff` writes.
#[derive(Debug, Serialize)]
pub struct HandoffReport {
    pub requests_per_target: u32,
    pub file: String,
    /// Front: TCP_REPAIR on and state reads (µs).
    pub dump_us: Summary,
    /// Front: `Handoff` sent to `Ready` received, restore included (µs).
    pub control_rtt_us: Summary,
    /// Back: restore with TCP_REPAIR (µs), as reported in `Ready`.
    pub restore_us: Summary,
    /// Front: request head complete to `Go` sent (µs).
    pub handoff_total_us: Summary,
    /// Front: request head complete to `Handoff` about to be sent: pick,
    /// park, dump, frame (µs).
    pub front_before_send_us: Summary,
    /// Client: TTFB through the VIP (µs).
    pub ttfb_baton_us: Summary,
    /// Client: TTFB straight to back1's plain port (µs).
    pub ttfb_direct_us: Summary,
    /// p50(baton) - p50(direct).
    pub added_p50_us: f64,
    /// p99(baton) - p99(direct).
    pub added_p99_us: f64,
    pub failures: u32,
}

/// Runs a benchmark.
pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Handoff {
            requests,
            json,
            name,
            front_extra,
            back_extra,
        } => {
            let r = handoff(
                &name,
                requests,
                front_extra.as_deref(),
                back_extra.as_deref(),
            )?;
            print_handoff(&r);
            if let Some(dir) = json.parent() {
                std::fs::create_dir_all(dir).ok();
            }
            std::fs::write(&json, serde_json::to_vec_pretty(&r)?)
                .with_context(|| format!("writing {}", json.display()))?;
            println!("JSON written to {}", json.display());
            if r.failures > 0 {
                bail!("{} requests failed", r.failures);
            }
            Ok(())
        }
    }
}

fn handoff(
    name: &str,
    requests: u32,
    front_extra: Option<&str>,
    back_extra: Option<&str>,
) -> Result<HandoffReport> {
    let baton = crate::labcmd::self_exe()?;
    let _ = baton_lab::down(name);
    eprintln!("bench: bringing up lab {name} ...");
    let lab = Lab::up(&baton, name, 1, None, front_extra, back_extra)?;
    let vip: SocketAddr = SocketAddr::from((lab.info.vip, lab.info.port));
    let back = lab.info.hosts.get("back1").context("lab has no back1")?;
    let direct: SocketAddr = SocketAddr::from((back.ip, 8080));
    let file = "/1k.bin";
    let netns = lab.netns("client")?.to_string();

    // Warm up both paths (page cache, ARP, code paths), then measure.
    let warm = 200.min(requests);
    client_loop(&netns, &[vip, direct], file, warm)?;
    lab.reset_latency()?;
    eprintln!("bench: {requests} requests per target, interleaved ...");
    let (samples, failures) = client_loop(&netns, &[vip, direct], file, requests)?;
    let stats = lab.front_stats()?;
    let lat = &stats["latency_us"];
    let get = |k: &str| -> Summary { serde_json::from_value(lat[k].clone()).unwrap_or_default() };
    let mut baton_v = samples[0].clone();
    let mut direct_v = samples[1].clone();
    let tb = summarize(&mut baton_v);
    let td = summarize(&mut direct_v);
    Ok(HandoffReport {
        requests_per_target: requests,
        file: file.to_string(),
        dump_us: get("dump"),
        control_rtt_us: get("control_rtt"),
        restore_us: get("restore"),
        handoff_total_us: get("total"),
        front_before_send_us: get("to_send"),
        ttfb_baton_us: tb,
        ttfb_direct_us: td,
        added_p50_us: tb.p50 - td.p50,
        added_p99_us: tb.p99 - td.p99,
        failures,
    })
}

/// Sequential requests from inside `netns`, one connection each, alternating
/// between `targets`. Returns TTFB samples (µs) per target and the failures.
fn client_loop(
    netns: &str,
    targets: &[SocketAddr],
    path: &str,
    n: u32,
) -> Result<(Vec<Vec<u32>>, u32)> {
    let netns = netns.to_string();
    let targets = targets.to_vec();
    let path = path.to_string();
    std::thread::spawn(move || -> Result<(Vec<Vec<u32>>, u32)> {
        baton_sys::netns::enter_named(&netns).context("entering the client namespace")?;
        let mut samples = vec![Vec::with_capacity(n as usize); targets.len()];
        let mut failures = 0;
        let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
        for _ in 0..n {
            for (i, t) in targets.iter().enumerate() {
                match ttfb(*t, req.as_bytes()) {
                    Ok(us) => samples[i].push(us),
                    Err(_) => failures += 1,
                }
            }
        }
        Ok((samples, failures))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))?
}

/// Connect, send, wait for the first response byte; read to the end.
fn ttfb(addr: SocketAddr, req: &[u8]) -> Result<u32> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(req)?;
    let mut buf = [0u8; 8192];
    let n = s.read(&mut buf)?;
    let us = t.elapsed().as_micros();
    if n < 12 || &buf[..12] != b"HTTP/1.1 200" {
        bail!("unexpected response from {addr}");
    }
    while s.read(&mut buf)? > 0 {}
    Ok(u32::try_from(us).unwrap_or(u32::MAX))
}

fn print_handoff(r: &HandoffReport) {
    println!(
        "\nbaton bench handoff: {} sequential requests per target for {} (one connection each)",
        r.requests_per_target, r.file
    );
    println!(
        "  {:<44} {:>9} {:>9} {:>9}",
        "", "p50 µs", "p99 µs", "samples"
    );
    let row = |label: &str, s: &Summary| {
        println!("  {label:<44} {:>9.0} {:>9.0} {:>9}", s.p50, s.p99, s.count)
    };
    row("dump (front: TCP_REPAIR on + reads)", &r.dump_us);
    row("restore (back: TCP_REPAIR restore)", &r.restore_us);
    row(
        "control round trip (Handoff→Ready, incl. restore)",
        &r.control_rtt_us,
    );
    row("front: head read → Handoff sent", &r.front_before_send_us);
    row(
        "whole handoff (front: head read → Go sent)",
        &r.handoff_total_us,
    );
    row("TTFB through Baton (client)", &r.ttfb_baton_us);
    row("TTFB straight to the back-end (client)", &r.ttfb_direct_us);
    println!(
        "  added by the handoff: p50 {:+.0} µs, p99 {:+.0} µs (targets: p50 <= 60, p99 <= 200)",
        r.added_p50_us, r.added_p99_us
    );
    println!("  failures: {}", r.failures);
}
