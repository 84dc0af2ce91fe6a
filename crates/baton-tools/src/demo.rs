//! `baton demo`: a lab cluster, real traffic from the client namespace, a
//! report of what happened, and teardown.

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
    let t = std::time::Instant::now();
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
    println!("\n7. Lab torn down: namespaces, links, BPF attachment, pins and daemons removed.");
    if bad > 0 || errors > 0 || broken > 0 || tls_bad > 0 || tls_errors > 0 {
        bail!(
            "{bad} downloads differed, wrk saw {errors} errors, {broken} downloads broke across the restarts; \
             over HTTPS {tls_bad} downloads differed and wrk saw {tls_errors} errors"
        );
    }
    Ok(())
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
    let t = std::time::Instant::now();
    while lab.front_stats()?["handoffs_ok"].as_u64().unwrap_or(0)
        < before["handoffs_ok"].as_u64().unwrap_or(0) + DOWNLOADS as u64
        && t.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
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
