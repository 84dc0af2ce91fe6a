//! `baton demo`: a lab cluster, real traffic from the client namespace, a
//! report of what happened, and teardown.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::labtools::{handoffs_by_backend, sha256_file, Lab, LabOptions, TempDir};

/// Options of the demo.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// The lab name.
    #[arg(long, default_value = "batondemo")]
    pub name: String,
    /// How many back-ends.
    #[arg(long, default_value_t = 2)]
    pub backends: usize,
    /// Seconds per load phase.
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// The name of part 7's lab (three fronts).
    #[arg(long, default_value = "batondemo-f3")]
    pub fronts_name: String,
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> Result<()> {
    let baton = crate::labcmd::self_exe()?;
    // A demo lab left by a killed run would block this one.
    let _ = baton_lab::down(&args.name);
    println!(
        "Baton demo: bringing up lab {:?} (client, front, {} back-ends, bridge) ...",
        args.name, args.backends
    );
    let t = Instant::now();
    let opts = LabOptions {
        backends: args.backends,
        tls: true,
        ..LabOptions::default()
    };
    let lab = Lab::up(&baton, &args.name, opts)?;
    println!(
        "  up in {:.1} s; VIP {}:{}",
        t.elapsed().as_secs_f64(),
        lab.info.vip,
        lab.info.port
    );
    for (name, h) in &lab.info.hosts {
        println!("  {name:<7} {:<14} netns {}", h.ip.to_string(), h.netns);
    }
    let scratch = TempDir::new("demo")?;

    println!("\n1. Byte-exact downloads through the VIP (curl in the client namespace):");
    println!(
        "   {:<10} {:>10} {:>7} {:>10} {:>11}  sha256",
        "file", "bytes", "status", "ttfb ms", "MB/s"
    );
    let mut bad = 0;
    for file in ["index.html", "empty.bin", "1k.bin", "1m.bin", "64m.bin"] {
        let out = scratch.0.join(file);
        let r = lab.curl(&format!("/{file}"), &out, &[])?;
        let same = sha256_file(&out)? == sha256_file(&lab.docroot().join(file))?;
        if !same || r.code != 200 {
            bad += 1;
        }
        println!(
            "   {:<10} {:>10} {:>7} {:>10.3} {:>11.1}  {}",
            file,
            r.size,
            r.code,
            r.ttfb * 1e3,
            r.size as f64 / r.total.max(1e-9) / 1e6,
            if same { "identical" } else { "DIFFERENT" }
        );
        let _ = std::fs::remove_file(&out);
    }

    println!("\n2. Direct server return: one 64 MiB download, counters of the front's NIC:");
    let before = lab.nic("front", "eth0")?;
    let out = scratch.0.join("dsr.bin");
    let r = lab.curl("/64m.bin", &out, &[])?;
    let after = lab.nic("front", "eth0")?;
    let d = after.since(&before);
    println!("   served to the client     {:>12} bytes", r.size);
    println!(
        "   front NIC received       {:>12} bytes ({} packets: the client's ACKs, steered by BPF)",
        d.rx_bytes, d.rx_packets
    );
    println!(
        "   front NIC sent           {:>12} bytes ({:.2}% of what was served; the response never crossed the front)",
        d.tx_bytes,
        100.0 * d.tx_bytes as f64 / r.size.max(1) as f64
    );
    let _ = std::fs::remove_file(&out);

    lab.reset_latency()?;
    println!(
        "\n3. Load from wrk in the client namespace ({} s each, 2 threads, 32 connections):",
        args.seconds
    );
    println!(
        "   {:<34} {:>9} {:>10} {:>10} {:>9} {:>9} {:>7}",
        "phase", "requests", "req/s", "MB", "p50 ms", "p99 ms", "errors"
    );
    let nic_before = lab.nic("front", "eth0")?;
    let mut served = 0u64;
    let mut errors = 0;
    for (label, path, close) in [
        ("1 KiB, one request per connection", "/1k.bin", true),
        ("1 KiB, keep-alive", "/1k.bin", false),
        ("1 MiB, keep-alive", "/1m.bin", false),
    ] {
        let w = lab.wrk(path, 2, 32, args.seconds, close)?;
        errors += w.errors();
        served += w.bytes;
        println!(
            "   {:<34} {:>9} {:>10.0} {:>10.1} {:>9.2} {:>9.2} {:>7}",
            label,
            w.requests,
            w.rps(),
            w.bytes as f64 / 1e6,
            w.p50_us as f64 / 1e3,
            w.p99_us as f64 / 1e3,
            w.errors()
        );
    }

    let nic = lab.nic("front", "eth0")?.since(&nic_before);
    println!(
        "   served {:.1} MB in all; the front's NIC carried {:.1} MB in and {:.1} MB out ({:.1}% of what was served)",
        served as f64 / 1e6,
        nic.rx_bytes as f64 / 1e6,
        nic.tx_bytes as f64 / 1e6,
        100.0 * (nic.rx_bytes + nic.tx_bytes) as f64 / served.max(1) as f64
    );

    let s = lab.front_stats()?;
    println!("\n4. The front-end's view:");
    println!(
        "   handoffs: {} ok, {} failed; frames kept while parked and delivered: {}; forwarding entries now: {}",
        s["handoffs_ok"], s["handoffs_failed"], s["frames_resent"], s["forwarding_entries"]
    );
    for (name, n) in handoffs_by_backend(&s) {
        println!("   {name:<7} {n:>9} connections handed off");
    }
    let lat = &s["latency_us"];
    for (label, key) in [
        ("dump (TCP_REPAIR on + reads)", "dump"),
        ("restore (back-end, TCP_REPAIR)", "restore"),
        ("Handoff to Live (restore, answer)", "control_rtt"),
        ("head read to forwarding (whole handoff)", "total"),
    ] {
        println!(
            "   {label:<34} p50 {:>6} µs   p99 {:>6} µs   ({} samples)",
            lat[key]["p50"], lat[key]["p99"], lat[key]["count"]
        );
    }
    let broken = restarts(&lab)?;
    let (tls_bad, tls_errors) = https(&lab, args, &scratch)?;
    drop(lab);
    let fronts_problems = several_fronts(&baton, args)?;
    println!(
        "\n8. Both labs torn down: namespaces, links, BPF attachments, pins, BIRD speakers, announcers and daemons removed."
    );
    let mut problems = Vec::new();
    if bad > 0 || errors > 0 || broken > 0 || tls_bad > 0 || tls_errors > 0 {
        problems.push(format!(
            "{bad} downloads differed, wrk saw {errors} errors, {broken} downloads broke across the restarts; \
             over HTTPS {tls_bad} downloads differed and wrk saw {tls_errors} errors"
        ));
    }
    problems.extend(fronts_problems);
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

/// Part 7's downloads: how many, their size, their rate.
const FRONTS_DOWNLOADS: u16 = 6;
const FRONTS_FILE: &str = "64m.bin";
const FRONTS_RATE: &str = "8M";
/// The downloads' source ports: FRONTS_PORT_BASE + 1 and up, above
/// Linux's ephemeral range (32768-60999), so that no other connection of
/// the client holds one (or left it in TIME_WAIT).
const FRONTS_PORT_BASE: u16 = 61000;
/// How long a drained or killed front may take to leave the router's
/// group, and a returning one to join it again (bounds, not waits).
const GROUP_DEADLINE: Duration = Duration::from_secs(5);

/// Part 7: a second lab with three fronts behind a router; downloads spread
/// over them, a front drained, another SIGKILLed, both brought back. The lab
/// is torn down on return (also on error). Returns what was wrong.
fn several_fronts(baton: &Path, args: &DemoArgs) -> Result<Vec<String>> {
    const FRONTS: usize = 3;
    let _ = baton_lab::down(&args.fronts_name);
    println!(
        "\n7. Several fronts: lab {:?} with a router (BIRD, a resilient ECMP group), {FRONTS} fronts (each with BIRD and baton announce), {} back-ends ...",
        args.fronts_name, args.backends
    );
    let t = Instant::now();
    let lab = Lab::up(
        baton,
        &args.fronts_name,
        LabOptions {
            backends: args.backends,
            fronts: FRONTS,
            ..LabOptions::default()
        },
    )?;
    let fronts = lab.fronts();
    println!(
        "   up in {:.1} s; the router's group for VIP {} holds fronts {:?}",
        t.elapsed().as_secs_f64(),
        lab.info.vip,
        lab.router_group()?
    );
    let mut problems = Vec::new();

    // 1. Rate-limited downloads with distinct source ports.
    let n = FRONTS_DOWNLOADS;
    let before = fronts
        .iter()
        .map(|f| lab.stats_of(f))
        .collect::<Result<Vec<_>>>()?;
    let want = sha256_file(&lab.docroot().join(FRONTS_FILE))?;
    let client = lab.netns("client")?.to_owned();
    let url = lab.url(&format!("/{FRONTS_FILE}"));
    let mut downloads = (1..=n)
        .map(|i| {
            let port = FRONTS_PORT_BASE + i;
            std::process::Command::new("ip")
                .args(["netns", "exec", &client, "bash", "-c"])
                .arg(format!(
                    "set -o pipefail; curl -sS --noproxy '*' --fail --local-port {port} \
                     --limit-rate {FRONTS_RATE} --max-time 60 {url} | sha256sum"
                ))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .context("starting curl")
        })
        .collect::<Result<Vec<_>>>()?;
    println!(
        "   {n} downloads of {FRONTS_FILE} at {FRONTS_RATE}iB/s from the client, source ports {}-{}:",
        FRONTS_PORT_BASE + 1,
        FRONTS_PORT_BASE + n
    );
    let counter = |s: &serde_json::Value, key: &str| s[key].as_u64().unwrap_or(0);
    let mirrored = |s: &serde_json::Value| s["mirror"]["mirrored"].as_u64().unwrap_or(0);
    // Every download handed off, and learnt by every other front from the
    // back-ends (bounded waits).
    let deadline = Instant::now() + Duration::from_secs(15);
    let (own, now) = loop {
        let now = fronts
            .iter()
            .map(|f| lab.stats_of(f))
            .collect::<Result<Vec<_>>>()?;
        let own: Vec<u64> = now
            .iter()
            .zip(&before)
            .map(|(a, b)| counter(a, "handoffs_ok").saturating_sub(counter(b, "handoffs_ok")))
            .collect();
        let total: u64 = own.iter().sum();
        let known = now.iter().zip(&before).zip(&own).all(|((a, b), o)| {
            let others = total - o;
            mirrored(a).saturating_sub(mirrored(b)) >= others
                && a["mirror"]["flows"].as_u64().unwrap_or(0) >= others
        });
        if (total >= u64::from(n) && known) || Instant::now() >= deadline {
            break (own, now);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let total: u64 = own.iter().sum();
    for ((front, o), s) in fronts.iter().zip(&own).zip(&now) {
        println!(
            "   {front:<7} handed off {o} of them; mirror.flows {} (the other fronts' {}, learnt from the back-ends)",
            s["mirror"]["flows"],
            total - o
        );
    }
    let known_everywhere = now
        .iter()
        .zip(&own)
        .all(|(s, o)| s["mirror"]["flows"].as_u64().unwrap_or(0) >= total - o);
    if total != u64::from(n) || !known_everywhere {
        problems.push(format!(
            "{total} of {n} downloads handed off (per front {own:?}), known by every other front: {known_everywhere}"
        ));
    }

    // 2. Drain front2, kill front3, bring both back, while a curl loop runs.
    let stop = AtomicBool::new(false);
    let (codes, changes) = std::thread::scope(|scope| {
        let looper = scope.spawn(|| curl_loop(&lab, &stop));
        let changes = fronts_changes(&lab, &mut problems);
        stop.store(true, Ordering::Relaxed);
        let codes = looper.join();
        (codes, changes)
    });
    let (codes, slowest) = codes.map_err(|_| anyhow::anyhow!("the curl loop panicked"))?;
    let total_ms = changes?;
    let running = downloads
        .iter_mut()
        .map(|d| d.try_wait())
        .filter(|w| matches!(w, Ok(None)))
        .count();

    // 3. Every download complete and byte-exact.
    let mut exact = 0;
    for d in downloads {
        let out = d.wait_with_output().context("waiting for curl")?;
        if out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with(&want) {
            exact += 1;
        }
    }
    println!(
        "   downloads still running when all three were back: {running}/{n}; completed byte-exact (sha256): {exact}/{n}"
    );
    if exact != n {
        problems.push(format!(
            "{} of {n} downloads through three fronts broke",
            n - exact
        ));
    }
    let requests: u64 = codes.values().sum();
    let ok = codes.get("200").copied().unwrap_or(0);
    println!(
        "   curl loop during the changes (a new connection each): {requests} requests: {}; the slowest took {:.0} ms",
        codes
            .iter()
            .map(|(c, k)| format!("{k} x {c}"))
            .collect::<Vec<_>>()
            .join(", "),
        slowest * 1e3
    );
    if requests == 0 || ok != requests {
        problems.push(format!(
            "the curl loop got {ok} answers 200 of {requests} requests ({codes:?})"
        ));
    }
    let end = fronts
        .iter()
        .map(|f| lab.stats_of(f))
        .collect::<Result<Vec<_>>>()?;
    let sum = |f: &dyn Fn(&serde_json::Value) -> u64| end.iter().map(f).sum::<u64>();
    println!(
        "   BPF guard, summed over the fronts: bpf_unknown_dropped {}, bpf_no_listener_dropped {} (packets no front knew: dropped, never reset; the client's TCP sent them again)",
        sum(&|s| counter(s, "bpf_unknown_dropped")),
        sum(&|s| counter(s, "bpf_no_listener_dropped"))
    );
    println!(
        "   mirror, summed over the fronts (front3's since its restart): flows learnt {}, ended {}, entries steered {}, stale {}",
        sum(&|s| s["mirror"]["mirrored"].as_u64().unwrap_or(0)),
        sum(&|s| s["mirror"]["unmirrored"].as_u64().unwrap_or(0)),
        sum(&|s| s["mirror"]["steered"].as_u64().unwrap_or(0)),
        sum(&|s| s["mirror"]["stale"].as_u64().unwrap_or(0)),
    );
    drop(lab);
    println!(
        "   {exact}/{n} downloads byte-exact and {ok}/{requests} requests answered 200 across a drain, a SIGKILL and both fronts' return ({} ms until all three were back; part 7 took {:.1} s){}",
        total_ms.map_or_else(|| "-".to_owned(), |ms| ms.to_string()),
        t.elapsed().as_secs_f64(),
        if problems.is_empty() { "" } else { ": NOT ALL RIGHT" }
    );
    Ok(problems)
}

/// Part 7's changes: front2 drained, front3 SIGKILLed, both brought back;
/// prints each time. Returns the time from the resume until the group
/// held all three again (`None`: not within [`GROUP_DEADLINE`]).
fn fronts_changes(lab: &Lab, problems: &mut Vec<String>) -> Result<Option<u64>> {
    let all = [1, 2, 3];
    let mut wait_group = |what: &str, t0: Instant, want: &[usize]| -> Result<Option<u64>> {
        loop {
            let g = lab.router_group()?;
            let ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
            if g == want {
                return Ok(Some(ms));
            }
            if t0.elapsed() >= GROUP_DEADLINE {
                problems.push(format!(
                    "{what}: the router's group was {g:?} after {ms} ms"
                ));
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let show = |ms: Option<u64>| ms.map_or_else(|| "NEVER".to_owned(), |ms| format!("{ms} ms"));

    let t0 = Instant::now();
    let (code, body) = lab.admin("front2", "POST", "/drain")?;
    if code != 200 {
        bail!("POST /drain on front2: {code} {body}");
    }
    let ms = wait_group("front2 drained", t0, &[1, 3])?;
    println!(
        "   POST /drain on front2: the router's group lost it after {}",
        show(ms)
    );

    let pid = lab.info.hosts["front3"]
        .pid
        .context("the lab has no pid for front3")?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "baton" {
        bail!("front3's pid {pid} is not baton front (comm {comm:?})");
    }
    let t0 = Instant::now();
    let st = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .context("running kill")?;
    if !st.success() {
        bail!("kill -KILL {pid} (front3) failed");
    }
    let ms = wait_group("front3 killed", t0, &[1])?;
    println!(
        "   SIGKILL to front3's baton front (pid {pid}): the router's group lost it after {}",
        show(ms)
    );
    // Gone for good (its listening sockets closed) before it starts again.
    let gone = Instant::now() + GROUP_DEADLINE;
    while process_runs(pid) {
        if Instant::now() >= gone {
            bail!("front3 (pid {pid}) survived SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    let t0 = Instant::now();
    let (code, body) = lab.admin("front2", "POST", "/resume")?;
    if code != 200 {
        bail!("POST /resume on front2: {code} {body}");
    }
    let r = baton_lab::restart(&lab.name, "front3", baton_lab::RestartSignal::Kill)?;
    let ms = wait_group("front2 resumed, front3 restarted", t0, &all)?;
    println!(
        "   POST /resume on front2, front3 started again by the lab's restart (pid {} {}; new pid {}, in the group after {} ms)",
        r.old_pid,
        if r.old_running { "was still running" } else { "was not running: nothing to signal" },
        r.new_pid,
        r.serving_ms
    );
    println!(
        "   the router's group held all three again {} after the resume",
        show(ms)
    );
    Ok(ms)
}

/// Requests `/1k.bin` on a new connection each until `stop`; returns the
/// count of each status (`000`: no answer) and the slowest request's
/// seconds.
fn curl_loop(lab: &Lab, stop: &AtomicBool) -> (BTreeMap<String, u64>, f64) {
    let url = lab.url("/1k.bin");
    let mut codes = BTreeMap::new();
    let mut slowest = 0f64;
    while !stop.load(Ordering::Relaxed) {
        let out = lab
            .run(
                "client",
                &[
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{time_total}",
                    "--max-time",
                    "10",
                    &url,
                ],
            )
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let (code, secs) = out.split_once(' ').unwrap_or(("error", "0"));
        slowest = slowest.max(secs.parse().unwrap_or(0.0));
        *codes.entry(code.to_owned()).or_insert(0) += 1;
    }
    (codes, slowest)
}

/// Whether `pid` runs (a zombie does not).
fn process_runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next().map(str::to_owned))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

/// Part 6: HTTPS, the TLS session handed off with the connection; returns
/// (downloads that differed, wrk errors).
fn https(lab: &Lab, args: &DemoArgs, scratch: &TempDir) -> Result<(usize, u64)> {
    println!(
        "\n6. HTTPS on {}:{}: the front does the TLS handshake and reads the request, the back-end continues the TLS session:",
        lab.info.vip,
        lab.info.tls_port.unwrap_or(443)
    );
    println!(
        "   {:<10} {:<8} {:>10} {:>7} {:>10} {:>11}  sha256",
        "file", "version", "bytes", "status", "ttfb ms", "MB/s"
    );
    let mut bad = 0;
    for (file, version) in [
        ("1k.bin", "1.3"),
        ("1m.bin", "1.3"),
        ("1m.bin", "1.2"),
        ("64m.bin", "1.3"),
    ] {
        let out = scratch.0.join(file);
        let v = format!("--tlsv{version}");
        let r = lab.curl_https(&format!("/{file}"), &out, &[&v, "--tls-max", version])?;
        let same = sha256_file(&out)? == sha256_file(&lab.docroot().join(file))?;
        if !same || r.code != 200 {
            bad += 1;
        }
        println!(
            "   {:<10} TLS {:<4} {:>10} {:>7} {:>10.3} {:>11.1}  {}",
            file,
            version,
            r.size,
            r.code,
            r.ttfb * 1e3,
            r.size as f64 / r.total.max(1e-9) / 1e6,
            if same { "identical" } else { "DIFFERENT" }
        );
        let _ = std::fs::remove_file(&out);
    }
    let before = lab.nic("front", "eth0")?;
    let out = scratch.0.join("tls-dsr.bin");
    let r = lab.curl_https("/64m.bin", &out, &[])?;
    let d = lab.nic("front", "eth0")?.since(&before);
    let _ = std::fs::remove_file(&out);
    println!(
        "   one 64 MiB HTTPS download: the front's NIC sent {} bytes ({:.2}% of the {} served): no bulk encryption on the front",
        d.tx_bytes,
        100.0 * d.tx_bytes as f64 / r.size.max(1) as f64,
        r.size
    );
    let mut errors = 0;
    let url = format!(
        "https://{}:{}/1m.bin",
        lab.info.vip,
        lab.info.tls_port.unwrap_or(443)
    );
    for (label, close) in [
        ("1 MiB over HTTPS, keep-alive", false),
        ("1 MiB over HTTPS, one per connection", true),
    ] {
        let w = lab.wrk_url(&url, 2, 32, args.seconds, close)?;
        errors += w.errors();
        println!(
            "   {:<38} {:>9} requests {:>8.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}",
            label,
            w.requests,
            w.rps(),
            w.p50_us as f64 / 1e3,
            w.p99_us as f64 / 1e3,
            w.errors()
        );
    }
    let s = lab.front_stats()?;
    let t = &s["tls"];
    println!(
        "   front: {} handshakes ({} resumed, {} failed), {} TLS connections handed off with their session; {} TLS secrets held now",
        t["handshakes"], t["resumed"], t["handshake_failures"], t["handoffs"], t["secrets_held"]
    );
    Ok((bad, errors))
}

/// Part 5: the front killed, then upgraded, while downloads run; returns
/// how many downloads broke (must be 0).
fn restarts(lab: &Lab) -> Result<usize> {
    const DOWNLOADS: usize = 4;
    println!(
        "\n5. The front killed (SIGKILL) and then upgraded (--takeover) while {DOWNLOADS} downloads of 64 MiB run at 16 MB/s:"
    );
    let client = lab.netns("client")?.to_owned();
    let want = sha256_file(&lab.docroot().join("64m.bin"))?;
    let url = format!("http://{}:{}/64m.bin", lab.info.vip, lab.info.port);
    let before = lab.front_stats()?;
    let downloads = (0..DOWNLOADS)
        .map(|_| {
            std::process::Command::new("ip")
                .args(["netns", "exec", &client, "bash", "-c"])
                .arg(format!(
                    "set -o pipefail; curl -sS --noproxy '*' --fail --limit-rate 16M --max-time 60 {url} | sha256sum"
                ))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .context("starting curl")
        })
        .collect::<Result<Vec<_>>>()?;
    // Every download handed off before the front goes (bounded wait).
    let t = Instant::now();
    while lab.front_stats()?["handoffs_ok"].as_u64().unwrap_or(0)
        < before["handoffs_ok"].as_u64().unwrap_or(0) + DOWNLOADS as u64
        && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    for signal in [
        baton_lab::RestartSignal::Kill,
        baton_lab::RestartSignal::Upgrade,
    ] {
        let r = baton_lab::restart(&lab.name, "front", signal)?;
        println!(
            "   {:<8} old pid {} gone after {} ms; pid {} serving after {} ms",
            format!("{signal:?}").to_lowercase(),
            r.old_pid,
            r.stopped_ms,
            r.new_pid,
            r.serving_ms
        );
    }
    let mut broken = 0;
    for d in downloads {
        let out = d.wait_with_output().context("waiting for curl")?;
        let got = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !got.starts_with(&want) {
            broken += 1;
        }
    }
    let s = lab.front_stats()?;
    println!(
        "   downloads completed byte-exact: {}/{DOWNLOADS}; flows the last front adopted from the pinned table: {}",
        DOWNLOADS - broken,
        s["flows_adopted"]
    );
    Ok(broken)
}

/// Exits with a message when not root.
pub fn require_root(what: &str) -> Result<()> {
    // The effective uid, from /proc (no libc call needed).
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .unwrap_or("1");
    if uid != "0" {
        bail!("{what} needs root (network namespaces, BPF, TCP_REPAIR)");
    }
    Ok(())
}
