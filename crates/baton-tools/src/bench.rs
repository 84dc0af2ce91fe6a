//! `baton bench`: benchmarks that print numbers and write them as JSON.
//!
//! `baton bench handoff` brings up a lab and measures, in one run:
//! - handoff latency split into dump (front), control round trip (front: from
//!   sending `Handoff` to receiving `Live`) and restore (back, reported in
//!   `Live`), from the front's own samples;
//! - time to first byte seen by a client in the client namespace, through
//!   Baton (VIP) and straight to a back-end's plain HTTP port, interleaved
//!   request by request (A B A B ...) so that drift hits both alike. The
//!   difference of the medians is the latency a handoff adds;
//! - in the same loop, after each pair of connections, the round trip of a
//!   `Ping`/`Pong` on an authenticated control channel of the bench's own,
//!   opened from the front's namespace to back1's control address with the
//!   lab's key (the path the handoff frames take): the yardstick the added
//!   latency is read against (the targets: added p50 <= 1.0x and
//!   p99 <= 2.0x the control round trip).

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use baton_daemon::stats::{summarize, Summary};
use baton_proto::frame::Frame;
use clap::Subcommand;
use serde::Serialize;

use crate::labtools::Lab;

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
        /// Extra TOML for the front's configuration (e.g. "workers = 2";
        /// without a `workers` key the front runs on one thread)
        #[arg(long)]
        front_extra: Option<String>,
        /// Extra TOML for the back-end's configuration (the same default)
        #[arg(long)]
        back_extra: Option<String>,
    },
    /// The same Zipf workload through a lab of caching back-ends in front of
    /// an origin, once per policy: hit rate, origin bytes, requests/s, latency.
    Policies {
        /// Policies to compare (comma separated).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "round-robin,wrr,least-conn,lard,lard-r,maglev,bounded-ch"
        )]
        policies: Vec<String>,
        /// Caching back-ends.
        #[arg(long, default_value_t = 3)]
        backends: usize,
        /// Front counts to run each policy with (comma separated; more than
        /// one front: a lab with a router spreading clients over them by
        /// ECMP, `baton lab up --fronts N`).
        #[arg(long, value_delimiter = ',', default_value = "1")]
        fronts: Vec<usize>,
        /// Distinct objects.
        #[arg(long, default_value_t = 600)]
        targets: usize,
        /// Size of each object in bytes.
        #[arg(long, default_value_t = 32 * 1024)]
        object_bytes: usize,
        /// The working set as a multiple of one back-end's cache.
        #[arg(long, default_value_t = 3.0)]
        working_set_per_cache: f64,
        /// Zipf exponent.
        #[arg(long, default_value_t = 0.9)]
        zipf_alpha: f64,
        /// Requests per policy (one connection each, so each is a handoff).
        #[arg(long, default_value_t = 6000)]
        requests: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Rate limit of the origin's link (tc tbf), e.g. 200mbit.
        #[arg(long, default_value = "400mbit")]
        origin_rate: String,
        /// Seed of the request stream.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where to write the JSON.
        #[arg(long, default_value = "bench-out/policies.json")]
        json: PathBuf,
    },
    /// Direct, Baton handoff, Baton relay, nginx and HAProxy side by side in
    /// one lab: requests/s, MB/s, latency, front CPU and NIC bytes per size
    /// and connection mode (JSON, Markdown and an SVG chart).
    Compare(crate::compare::CompareArgs),
}

/// The JSON `baton bench policies` writes: one record per policy.
#[derive(Debug, Serialize)]
pub struct PolicyRecord {
    pub policy: String,
    /// Fronts the requests were spread over.
    pub fronts: usize,
    /// Requests each front handed off, in front order.
    pub per_front: Vec<u64>,
    pub requests: u64,
    pub failures: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Cache hits / lookups over all back-ends.
    pub hit_rate: f64,
    /// Bytes the back-ends fetched from the origin.
    pub origin_bytes: u64,
    /// Requests each back-end received (handoffs), in back-end order.
    pub per_backend: Vec<u64>,
}

/// The JSON `baton bench handoff` writes.
#[derive(Debug, Serialize)]
pub struct HandoffReport {
    pub requests_per_target: u32,
    pub file: String,
    /// Front: TCP_REPAIR on and state reads (µs).
    pub dump_us: Summary,
    /// Front: `Handoff` sent to `Live` received, restore included (µs).
    pub control_rtt_us: Summary,
    /// Back: restore with TCP_REPAIR (µs), as reported in `Live`.
    pub restore_us: Summary,
    /// Front: request head complete to the flow forwarding (µs).
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
    /// Bench: `Ping` sent to `Pong` received on a control channel from the
    /// front's namespace to back1 (µs), one after each pair of connections.
    /// Not `control_rtt_us`, which is the front's Handoff→Live.
    pub control_ping_us: Summary,
    /// `control_ping_us.p50`.
    pub control_rtt_p50_us: f64,
    /// `control_ping_us.p99`.
    pub control_rtt_p99_us: f64,
    /// `added_p50_us / control_rtt_p50_us` (target <= 1.0); absent without pings.
    pub added_to_control_rtt_p50: Option<f64>,
    /// `added_p99_us / control_rtt_p99_us` (target <= 2.0); absent without pings.
    pub added_to_control_rtt_p99: Option<f64>,
    /// Pings without a `Pong` in time.
    pub ping_failures: u32,
}

/// Runs a benchmark.
pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Compare(args) => crate::compare::run(args),
        BenchCmd::Policies {
            policies,
            backends,
            fronts,
            targets,
            object_bytes,
            working_set_per_cache,
            zipf_alpha,
            requests,
            concurrency,
            origin_rate,
            seed,
            json,
        } => {
            anyhow::ensure!(
                working_set_per_cache > 0.0,
                "--working-set-per-cache must be > 0"
            );
            anyhow::ensure!(
                concurrency > 0 && requests > 0 && targets > 0,
                "nothing to do"
            );
            anyhow::ensure!(
                fronts
                    .iter()
                    .all(|&f| (1..=baton_lab::MAX_FRONTS).contains(&f)),
                "--fronts: each count must be in 1..={}",
                baton_lab::MAX_FRONTS
            );
            let working_set = (targets * object_bytes) as f64;
            // The cache charges a little per object beyond its body.
            let cache_bytes = (working_set / working_set_per_cache) as u64;
            let stream = baton_sim::zipf_indices(zipf_alpha, targets, requests, seed)?;
            let docroot = crate::labtools::TempDir::new("policies")?;
            baton_lab::zipf_docroot(&docroot.0, targets, object_bytes)?;
            println!(
                "baton bench policies: {backends} caching back-ends of {:.1} MiB each, working set {:.1} MiB ({working_set_per_cache}x one cache), Zipf {zipf_alpha} over {targets} objects, {requests} requests per policy, {concurrency} clients, origin link {origin_rate}",
                cache_bytes as f64 / 1048576.0,
                working_set / 1048576.0
            );
            let mut records = Vec::new();
            for p in &policies {
                for &f in &fronts {
                    let r = policy_run(
                        p,
                        backends,
                        f,
                        &docroot.0,
                        cache_bytes,
                        &origin_rate,
                        &stream,
                        concurrency,
                    )?;
                    println!(
                    "  {:<12} {} front{} hit rate {:>5.1}%  origin {:>8.1} MiB  {:>7.0} req/s  p50 {:>6.2} ms  p99 {:>7.2} ms  failures {}  per back-end {:?}  per front {:?}",
                    r.policy,
                    r.fronts,
                    if r.fronts == 1 { " " } else { "s" },
                    r.hit_rate * 100.0,
                    r.origin_bytes as f64 / 1048576.0,
                    r.rps,
                    r.p50_ms,
                    r.p99_ms,
                    r.failures,
                    r.per_backend,
                    r.per_front
                );
                    records.push(r);
                }
            }
            if let Some(dir) = json.parent() {
                std::fs::create_dir_all(dir).ok();
            }
            std::fs::write(&json, serde_json::to_vec_pretty(&records)?)
                .with_context(|| format!("writing {}", json.display()))?;
            println!("JSON written to {}", json.display());
            Ok(())
        }
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
            if r.ping_failures > 0 {
                bail!("{} control-channel pings failed", r.ping_failures);
            }
            Ok(())
        }
    }
}

/// A daemon's extra configuration for the latency bench: one runtime thread
/// unless the caller chose (as `bench compare` runs every front on one
/// core). Latency is what this bench is about, and with one thread no step
/// of a handoff waits for another thread to wake up.
fn one_thread(extra: Option<&str>) -> String {
    match extra {
        Some(e) if e.contains("workers") => e.to_owned(),
        Some(e) => format!("workers = 1\n{e}"),
        None => "workers = 1".to_owned(),
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
    let opts = crate::labtools::LabOptions {
        backends: 1,
        front_extra: Some(one_thread(front_extra)),
        back_extra: Some(one_thread(back_extra)),
        ..Default::default()
    };
    let lab = Lab::up(&baton, name, opts)?;
    let vip: SocketAddr = SocketAddr::from((lab.info.vip, lab.info.port));
    let back = lab.info.hosts.get("back1").context("lab has no back1")?;
    let direct: SocketAddr = SocketAddr::from((back.ip, 8080));
    let file = "/1k.bin";
    let netns = lab.netns("client")?.to_string();
    let (control, key_file) = front_control_target(&lab, "back1")?;
    let psk = baton_daemon::config::load_key(&key_file)?;
    let mut pinger = Pinger::start(lab.netns("front")?, control, psk)
        .with_context(|| format!("a control channel from the front's namespace to {control}"))?;

    // Warm up both paths (page cache, ARP, code paths), then measure.
    let warm = 200.min(requests);
    client_loop(&netns, &[vip, direct], file, warm, &mut pinger)?;
    lab.reset_latency()?;
    eprintln!("bench: {requests} requests per target and control pings, interleaved ...");
    let run = client_loop(&netns, &[vip, direct], file, requests, &mut pinger)?;
    pinger.stop();
    let stats = lab.front_stats()?;
    let lat = &stats["latency_us"];
    let get = |k: &str| -> Summary { serde_json::from_value(lat[k].clone()).unwrap_or_default() };
    let mut baton_v = run.ttfb[0].clone();
    let mut direct_v = run.ttfb[1].clone();
    let mut ping_v = run.ping;
    let tb = summarize(&mut baton_v);
    let td = summarize(&mut direct_v);
    let tp = summarize(&mut ping_v);
    let (added_p50_us, added_p99_us) = (tb.p50 - td.p50, tb.p99 - td.p99);
    let ratio = |added: f64, rtt: f64| (tp.count > 0 && rtt > 0.0).then(|| added / rtt);
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
        added_p50_us,
        added_p99_us,
        failures: run.failures,
        control_ping_us: tp,
        control_rtt_p50_us: tp.p50,
        control_rtt_p99_us: tp.p99,
        added_to_control_rtt_p50: ratio(added_p50_us, tp.p50),
        added_to_control_rtt_p99: ratio(added_p99_us, tp.p99),
        ping_failures: run.ping_failures,
    })
}

/// The control address of back-end `name` and the key file, as the front's
/// own configuration file has them.
fn front_control_target(lab: &Lab, name: &str) -> Result<(SocketAddrV4, PathBuf)> {
    let path = lab
        .info
        .hosts
        .get("front")
        .and_then(|h| h.config.clone())
        .context("the lab's front has no configuration file")?;
    let cfg = baton_daemon::config::FrontConfig::load(&path)?;
    let control = cfg
        .backends
        .iter()
        .find(|b| b.name == name)
        .and_then(|b| b.control)
        .with_context(|| format!("{}: no control address for {name}", path.display()))?;
    let key = cfg
        .key_file
        .with_context(|| format!("{}: no key_file", path.display()))?;
    Ok((control, key))
}

/// What [`client_loop`] measured.
struct LoopRun {
    /// TTFB samples (µs) per target.
    ttfb: Vec<Vec<u32>>,
    /// Requests that failed.
    failures: u32,
    /// Control-channel round trips (µs).
    ping: Vec<u32>,
    /// Pings that failed.
    ping_failures: u32,
}

/// Sequential requests from inside `netns`, one connection each, alternating
/// between `targets`; after each round one control-channel ping, so that
/// the three are measured under the same conditions.
fn client_loop(
    netns: &str,
    targets: &[SocketAddr],
    path: &str,
    n: u32,
    pinger: &mut Pinger,
) -> Result<LoopRun> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<LoopRun> {
                baton_sys::netns::enter_named(netns).context("entering the client namespace")?;
                let mut run = LoopRun {
                    ttfb: vec![Vec::with_capacity(n as usize); targets.len()],
                    failures: 0,
                    ping: Vec::with_capacity(n as usize),
                    ping_failures: 0,
                };
                let req =
                    format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
                for _ in 0..n {
                    for (i, t) in targets.iter().enumerate() {
                        match ttfb(*t, req.as_bytes()) {
                            Ok(us) => run.ttfb[i].push(us),
                            Err(_) => run.failures += 1,
                        }
                    }
                    match pinger.ping() {
                        Ok(us) => run.ping.push(us),
                        Err(_) => run.ping_failures += 1,
                    }
                }
                Ok(run)
            })
            .join()
            .map_err(|_| anyhow!("client thread panicked"))?
    })
}

/// How long a ping may wait for its `Pong`.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// An authenticated control channel to a back-end, held by a thread inside
/// the front's namespace (namespaces are per thread; the channel's socket
/// is created there, so its packets take the front's route), that answers
/// each [`Pinger::ping`] with one measured `Ping`/`Pong` round trip. The
/// back-end counts it as one more channel of the front (`max_fronts`).
struct Pinger {
    ask: Option<mpsc::Sender<()>>,
    answer: mpsc::Receiver<Result<u32>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pinger {
    /// Enters `netns` on a thread of its own and authenticates to `addr`.
    fn start(netns: &str, addr: SocketAddrV4, psk: baton_proto::auth::Psk) -> Result<Pinger> {
        let (ask, asked) = mpsc::channel::<()>();
        let (tell, answer) = mpsc::channel::<Result<u32>>();
        let netns = netns.to_string();
        let thread = std::thread::Builder::new()
            .name("bench-ping".into())
            .spawn(move || {
                let ready = (|| -> Result<_> {
                    baton_sys::netns::enter_named(&netns)
                        .with_context(|| format!("entering namespace {netns}"))?;
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("a runtime for the control channel")?;
                    let (w, r) = rt.block_on(baton_daemon::control::connect(
                        addr,
                        &psk,
                        Duration::from_secs(2),
                    ))?;
                    Ok((rt, w, r))
                })();
                let (rt, mut writer, mut reader) = match ready {
                    Ok(x) => {
                        let _ = tell.send(Ok(0));
                        x
                    }
                    Err(e) => {
                        let _ = tell.send(Err(e));
                        return;
                    }
                };
                let mut nonce = 0u64;
                while asked.recv().is_ok() {
                    nonce += 1;
                    let rtt = rt.block_on(ping_once(&mut writer, &mut reader, nonce));
                    if tell.send(rtt).is_err() {
                        break;
                    }
                }
                rt.block_on(async {
                    let goodbye = Frame::Goodbye {
                        reason: "bench done".into(),
                    };
                    let _ = writer.send(&goodbye).await;
                    let _ = writer.shutdown().await;
                });
            })
            .context("spawning the ping thread")?;
        let mut p = Pinger {
            ask: Some(ask),
            answer,
            thread: Some(thread),
        };
        match p.answer.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(_)) => Ok(p),
            Ok(Err(e)) => {
                p.stop();
                Err(e)
            }
            Err(_) => {
                p.stop();
                bail!("the ping thread did not connect in time")
            }
        }
    }

    /// One round trip (µs).
    fn ping(&mut self) -> Result<u32> {
        self.ask
            .as_ref()
            .context("pinger stopped")?
            .send(())
            .map_err(|_| anyhow!("the ping thread is gone"))?;
        self.answer
            .recv_timeout(PING_TIMEOUT + Duration::from_secs(1))
            .map_err(|_| anyhow!("the ping thread did not answer"))?
    }

    /// Says goodbye to the back-end and joins the thread.
    fn stop(&mut self) {
        self.ask = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `Ping { nonce }` and waits for its `Pong`, skipping what else the
/// back-end sends (`Load` reports, a late `Pong`). Timed like the front's
/// handoff round trip: from before sealing to after opening.
async fn ping_once(
    writer: &mut baton_daemon::control::FrameWriter,
    reader: &mut baton_daemon::control::FrameReader,
    nonce: u64,
) -> Result<u32> {
    let t = Instant::now();
    tokio::time::timeout(PING_TIMEOUT, async {
        writer.send(&Frame::Ping { nonce }).await?;
        loop {
            match reader.next().await? {
                Some(Frame::Pong { nonce: n }) if n == nonce => break Ok(()),
                Some(_) => continue,
                None => bail!("the back-end closed the control channel"),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no Pong within {PING_TIMEOUT:?}"))??;
    Ok(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX))
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
        "\nbaton bench handoff: {} sequential requests per target for {} (one connection each; \
         front and back-end on one runtime thread unless --front-extra/--back-extra set workers)",
        r.requests_per_target, r.file
    );
    println!(
        "  {:<50} {:>9} {:>9} {:>9}",
        "", "p50 µs", "p99 µs", "samples"
    );
    let row = |label: &str, s: &Summary| {
        println!("  {label:<50} {:>9.0} {:>9.0} {:>9}", s.p50, s.p99, s.count)
    };
    row("dump (front: TCP_REPAIR on + reads)", &r.dump_us);
    row("restore (back: TCP_REPAIR restore)", &r.restore_us);
    row(
        "Handoff→Live (restore, first answer, Live)",
        &r.control_rtt_us,
    );
    row("front: head read → Handoff sent", &r.front_before_send_us);
    row(
        "whole handoff (front: head read → forwarding)",
        &r.handoff_total_us,
    );
    row("TTFB through Baton (client)", &r.ttfb_baton_us);
    row("TTFB straight to the back-end (client)", &r.ttfb_direct_us);
    row(
        "control channel round trip (bench: Ping→Pong)",
        &r.control_ping_us,
    );
    println!(
        "  added by the handoff: p50 {:+.0} µs, p99 {:+.0} µs (targets: p50 <= 60, p99 <= 200)",
        r.added_p50_us, r.added_p99_us
    );
    let x = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}x"));
    println!(
        "  added / control round trip: p50 {} (target <= 1.0x), p99 {} (target <= 2.0x)",
        x(r.added_to_control_rtt_p50),
        x(r.added_to_control_rtt_p99)
    );
    println!(
        "  failures: {} requests, {} pings",
        r.failures, r.ping_failures
    );
}

#[allow(clippy::too_many_arguments)]
fn policy_run(
    policy: &str,
    backends: usize,
    fronts: usize,
    docroot: &std::path::Path,
    cache_bytes: u64,
    origin_rate: &str,
    stream: &[usize],
    concurrency: usize,
) -> Result<PolicyRecord> {
    let baton = crate::labcmd::self_exe()?;
    let name = "batonpol";
    let _ = baton_lab::down(name);
    let opts = crate::labtools::LabOptions {
        backends,
        fronts,
        docroot: Some(docroot.to_path_buf()),
        front_extra: Some(format!("policy = {policy:?}")),
        origin: Some(baton_lab::OriginSpec {
            rate: Some(origin_rate.to_string()),
            cache_bytes,
        }),
        ..Default::default()
    };
    let lab = Lab::up(&baton, name, opts)?;
    let vip = SocketAddr::from((lab.info.vip, lab.info.port));
    let netns = lab.netns("client")?.to_string();
    let paths: Arc<Vec<String>> =
        Arc::new(stream.iter().map(|i| format!("/t/{i:04}.bin")).collect());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..concurrency {
        let (netns, paths, next) = (netns.clone(), Arc::clone(&paths), Arc::clone(&next));
        handles.push(std::thread::spawn(move || -> Result<(Vec<u32>, u64)> {
            baton_sys::netns::enter_named(&netns).context("entering the client namespace")?;
            let mut lat = Vec::new();
            let mut failures = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(path) = paths.get(i) else { break };
                let req =
                    format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
                let t = Instant::now();
                match fetch_all(vip, req.as_bytes()) {
                    Ok(()) => lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX)),
                    Err(_) => failures += 1,
                }
            }
            Ok((lat, failures))
        }));
    }
    let mut lat = Vec::new();
    let mut failures = 0;
    for h in handles {
        let (l, f) = h
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        lat.extend(l);
        failures += f;
    }
    let secs = t.elapsed().as_secs_f64();
    let (mut hits, mut lookups, mut origin_bytes) = (0u64, 0u64, 0u64);
    let mut per_backend = Vec::new();
    for k in 1..=backends {
        let out = lab.run(
            &format!("back{k}"),
            &[
                "curl",
                "-sf",
                "--max-time",
                "5",
                "http://127.0.0.1:9101/stats",
            ],
        )?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("back{k} /stats: {}", String::from_utf8_lossy(&out.stderr)))?;
        hits += v["cache"]["hits"].as_u64().unwrap_or(0);
        lookups += v["cache"]["lookups"].as_u64().unwrap_or(0);
        origin_bytes += v["cache"]["origin_bytes"].as_u64().unwrap_or(0);
        per_backend.push(v["total"].as_u64().unwrap_or(0));
    }
    let mut per_front = Vec::new();
    for front in lab.fronts() {
        let v = lab.stats_of(&front)?;
        per_front.push(v["handoffs_ok"].as_u64().unwrap_or(0));
    }
    let s = summarize(&mut lat);
    Ok(PolicyRecord {
        policy: policy.to_string(),
        fronts,
        per_front,
        requests: s.count as u64,
        failures,
        rps: s.count as f64 / secs.max(1e-9),
        p50_ms: s.p50 / 1e3,
        p99_ms: s.p99 / 1e3,
        hit_rate: if lookups == 0 {
            0.0
        } else {
            hits as f64 / lookups as f64
        },
        origin_bytes,
        per_backend,
    })
}

/// One request on its own connection; the whole response must arrive.
fn fetch_all(addr: SocketAddr, req: &[u8]) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(req)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = Vec::new();
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    if !got.starts_with(b"HTTP/1.1 200") {
        bail!("unexpected response from {addr}");
    }
    Ok(())
}
