//! `baton bench compare`: Baton against the L7 proxies users run today, in
//! one lab, in one run.
//!
//! Five configurations serve the same files from the same two back-ends:
//! - `direct`: wrk straight to back1's plain HTTP port (one back-end: the
//!   limit of what one server does without anything in front of it);
//! - `handoff`: the lab's `baton front` on VIP:80;
//! - `relay`: a second `baton front` with `handoff = false` on VIP:8083;
//! - `nginx`: a reverse proxy on VIP:8081 (keep-alive to the back-ends);
//! - `haproxy`: HTTP mode on VIP:8082 (connection reuse to the back-ends).
//!
//! With `--tls` the same comparison runs over HTTPS (wrk speaks TLS through
//! OpenSSL), in a lab made with `baton lab up --tls` (a throwaway CA, an
//! ECDSA P-256 certificate for `baton.test` and the VIP):
//! - `direct`: back1's own HTTPS listener (`[direct_tls]`, rustls);
//! - `handoff`: the lab's front on VIP:443 (TLS session handed off with the
//!   connection; the back-end continues it with its own record layer);
//! - `relay`: the relay front terminating TLS on VIP:8446;
//! - `nginx`, `haproxy`: terminating TLS 1.3 on VIP:8444 and VIP:8445 with
//!   the lab's certificate and key, plain HTTP (keep-alive) to the back-ends;
//! - `nginx-static`: nginx serving the docroot over TLS 1.3 from back1's
//!   host on :8447 (the yardstick for a back-end's record layer).
//!
//! A TLS run adds one step: the largest size over a single keep-alive
//! connection (`single`), for `direct`, `handoff` and `nginx-static`: the
//! bandwidth of one connection, which is the record layer's.
//!
//! Every front runs on one core (baton `workers = 1`, nginx
//! `worker_processes 1`, haproxy `nbthread 1`): the machine this was built
//! for has two CPUs, and the client and the back-ends need them too.
//!
//! Runs are interleaved (for each repetition, for each size and connection
//! mode, each configuration once, in an order rotated from one step to the
//! next) so that drift, and other tenants of a shared machine, hit every
//! configuration alike; the report holds the medians over repetitions.
//!
//! Invariants: every process this starts (the peers, the relay front) is
//! the leader of its own process group and is ended with its group when its
//! guard drops, on success, error or panic; the lab is torn down by its own
//! guard after them. Every wait is bounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{IsTerminal, Write as _};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::labtools::{Lab, LabOptions, TempDir, WrkResult};

/// The response sizes of a full run.
pub const SIZES: [u64; 5] = [1 << 10, 16 << 10, 256 << 10, 1 << 20, 8 << 20];
/// The response sizes of `--quick`: the ones the targets name.
pub const QUICK_SIZES: [u64; 3] = [1 << 10, 256 << 10, 1 << 20];
/// The largest response size accepted by `--sizes`.
pub const MAX_SIZE: u64 = 64 << 20;

/// Where the peers listen on the VIP.
const NGINX_PORT: u16 = 8081;
const HAPROXY_PORT: u16 = 8082;
const RELAY_PORT: u16 = 8083;
/// With `--tls`: where the peers terminate TLS.
const NGINX_TLS_PORT: u16 = 8444;
const HAPROXY_TLS_PORT: u16 = 8445;
const RELAY_TLS_PORT: u16 = 8446;
/// With `--tls`: nginx serving files over TLS on back1's host.
const NGINX_STATIC_PORT: u16 = 8447;
/// With `--tls`: every back-end's `[direct_tls]` listener.
pub const DIRECT_TLS_PORT: u16 = 8443;
/// The relay front's admin endpoint (the lab's front has 9100).
const RELAY_ADMIN: &str = "127.0.0.1:9102";
/// How long a started peer may take to serve.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const READY_POLL: Duration = Duration::from_millis(50);
/// How long a peer may take to exit after SIGTERM before it gets SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// Options of `baton bench compare`.
#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    /// A short run for CI (under 2 minutes; 2.5 with --tls): 1 repetition,
    /// 2 s per run, sizes 1 KiB, 256 KiB and 1 MiB. Explicit options still apply.
    #[arg(long)]
    pub quick: bool,
    /// Over HTTPS: direct (back1's own TLS listener), handoff (VIP:443),
    /// relay, nginx and HAProxy terminating TLS 1.3 with the lab's
    /// certificate, and nginx serving the files over TLS from back1's host.
    #[arg(long)]
    pub tls: bool,
    /// Where to write the JSON records (with --tls: an object with the
    /// records, the ratios the targets name and the negotiated TLS); the
    /// Markdown table and the SVG chart go next to it (same name, `.md` and
    /// `.svg`).
    #[arg(long, default_value = "bench-out/compare.json")]
    pub json: PathBuf,
    /// The lab name.
    #[arg(long, default_value = "batoncmp")]
    pub name: String,
    /// Repetitions of every run (medians are reported); default 3, 1 with --quick.
    #[arg(long)]
    pub repetitions: Option<u32>,
    /// Seconds per run; default 5, 2 with --quick.
    #[arg(long)]
    pub seconds: Option<u32>,
    /// Response sizes (e.g. 1k,16k,256k,1m,8m: KiB and MiB).
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Vec<u64>,
    /// Configurations to run (default: all).
    #[arg(long, value_delimiter = ',')]
    pub configs: Vec<Config>,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
    /// wrk connections (kept open, or one per request with `Connection: close`).
    #[arg(long, default_value_t = 16)]
    pub connections: u32,
}

/// A configuration under test.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Config {
    Direct,
    Handoff,
    Relay,
    Nginx,
    Haproxy,
    /// `--tls` only: nginx serving the docroot over TLS on back1's host.
    #[serde(rename = "nginx-static")]
    #[value(name = "nginx-static")]
    NginxStatic,
}

impl Config {
    /// All of a plain HTTP run, in report order.
    pub const ALL: [Config; 5] = [
        Config::Direct,
        Config::Handoff,
        Config::Relay,
        Config::Nginx,
        Config::Haproxy,
    ];
    /// All of a `--tls` run, in report order.
    pub const TLS_ALL: [Config; 6] = [
        Config::Direct,
        Config::Handoff,
        Config::Relay,
        Config::Nginx,
        Config::Haproxy,
        Config::NginxStatic,
    ];
    /// Measured over one connection (`single`) in a `--tls` run.
    pub const SINGLE: [Config; 3] = [Config::Direct, Config::Handoff, Config::NginxStatic];

    /// The name used in the JSON and the report.
    pub fn name(self) -> &'static str {
        match self {
            Config::Direct => "direct",
            Config::Handoff => "handoff",
            Config::Relay => "relay",
            Config::Nginx => "nginx",
            Config::Haproxy => "haproxy",
            Config::NginxStatic => "nginx-static",
        }
    }
}

/// How wrk uses its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ConnMode {
    /// Many requests per connection.
    #[serde(rename = "keepalive")]
    KeepAlive,
    /// `Connection: close`: one request per connection (a handoff each).
    #[serde(rename = "close")]
    Close,
    /// `--tls` only: one keep-alive connection (`-c1`), the largest size.
    #[serde(rename = "single")]
    Single,
}

impl ConnMode {
    /// Both, in report order.
    pub const ALL: [ConnMode; 2] = [ConnMode::KeepAlive, ConnMode::Close];

    /// The name used in the JSON and the report.
    pub fn name(self) -> &'static str {
        match self {
            ConnMode::KeepAlive => "keepalive",
            ConnMode::Close => "close",
            ConnMode::Single => "single",
        }
    }
}

/// One line of the JSON: the medians of one configuration at one size and
/// connection mode. Scripts rely on exactly these keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub config: Config,
    pub size_bytes: u64,
    pub conn_mode: ConnMode,
    pub rps: f64,
    /// Response bytes (headers included) per second, in 10^6 bytes.
    pub mbps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// utime + stime of the front's processes per request; 0 for `direct`.
    pub front_cpu_us_per_req: f64,
    /// Bytes received plus sent by the front's NIC during the run.
    pub front_nic_bytes: u64,
}

/// What one run measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub rps: f64,
    pub mbps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu_us_per_req: f64,
    /// Of `cpu_us_per_req`: the front's BPF program (0 without one).
    pub bpf_us_per_req: f64,
    pub nic_bytes: u64,
    pub requests: u64,
    pub errors: u64,
    /// TCP connections the client opened per request.
    pub conns_per_req: f64,
    /// With `--tls`, for a baton front: TLS handshakes it completed and,
    /// of those, resumed sessions.
    pub tls_handshakes: Option<(u64, u64)>,
}

/// A report row: the JSON record plus what the Markdown shows beyond it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub record: Record,
    /// Requests completed, over all repetitions.
    pub requests: u64,
    /// wrk errors (connect, read, write, status, timeout), over all repetitions.
    pub errors: u64,
    /// Median TCP connections opened by the client per request.
    pub conns_per_req: f64,
    /// Median run time of the front's BPF program per request (included in
    /// the record's front CPU).
    pub bpf_us_per_req: f64,
    /// Runs that produced no result.
    pub failed_runs: u32,
}

/// What was run, for the report's header.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub repetitions: u32,
    pub seconds: u32,
    pub sizes: Vec<u64>,
    pub configs: Vec<Config>,
    pub threads: u32,
    pub connections: u32,
    /// Over HTTPS (`--tls`).
    pub tls: bool,
}

impl Plan {
    /// The plan for `args`: the defaults of a full or a quick run, with
    /// explicit options on top.
    pub fn from_args(args: &CompareArgs) -> Result<Plan> {
        let (reps, secs, sizes) = if args.quick {
            (1, 2, QUICK_SIZES.to_vec())
        } else {
            (3, 5, SIZES.to_vec())
        };
        let mut sizes = if args.sizes.is_empty() {
            sizes
        } else {
            args.sizes.clone()
        };
        sizes.sort_unstable();
        sizes.dedup();
        let mut configs = if !args.configs.is_empty() {
            args.configs.clone()
        } else if args.tls {
            Config::TLS_ALL.to_vec()
        } else {
            Config::ALL.to_vec()
        };
        anyhow::ensure!(
            args.tls || !configs.contains(&Config::NginxStatic),
            "nginx-static serves over TLS only: add --tls"
        );
        configs.sort_unstable();
        configs.dedup();
        let plan = Plan {
            repetitions: args.repetitions.unwrap_or(reps),
            seconds: args.seconds.unwrap_or(secs),
            sizes,
            configs,
            threads: args.threads,
            connections: args.connections,
            tls: args.tls,
        };
        anyhow::ensure!(
            (1..=100).contains(&plan.repetitions),
            "--repetitions must be 1 to 100"
        );
        anyhow::ensure!(
            (1..=600).contains(&plan.seconds),
            "--seconds must be 1 to 600"
        );
        anyhow::ensure!(
            (1..=64).contains(&plan.threads),
            "--threads must be 1 to 64"
        );
        anyhow::ensure!(
            plan.connections >= plan.threads && plan.connections <= 10_000,
            "--connections must be at least --threads and at most 10000"
        );
        Ok(plan)
    }

    /// The (size, connection mode) steps of one repetition: every size in
    /// both modes, and with `--tls` the largest size over one connection.
    pub fn steps(&self) -> Vec<(u64, ConnMode)> {
        let mut steps: Vec<(u64, ConnMode)> = self
            .sizes
            .iter()
            .flat_map(|&s| ConnMode::ALL.map(|m| (s, m)))
            .collect();
        if let Some(&largest) = self.sizes.last().filter(|_| self.tls) {
            steps.push((largest, ConnMode::Single));
        }
        steps
    }

    /// Whether `config` runs in `mode`.
    pub fn runs(&self, config: Config, mode: ConnMode) -> bool {
        mode != ConnMode::Single || Config::SINGLE.contains(&config)
    }

    /// wrk's threads and connections in `mode`.
    fn load(&self, mode: ConnMode) -> (u32, u32) {
        match mode {
            ConnMode::Single => (1, 1),
            _ => (self.threads, self.connections),
        }
    }
}

/// Parses `1k`, `16KiB`, `1m`, `8MiB` or a byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = t.strip_suffix("kib").or_else(|| t.strip_suffix('k')) {
        (n, 1u64 << 10)
    } else if let Some(n) = t.strip_suffix("mib").or_else(|| t.strip_suffix('m')) {
        (n, 1u64 << 20)
    } else {
        (t.as_str(), 1)
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 1k, 256k, 1m)"))?;
    let bytes = n
        .checked_mul(mult)
        .filter(|b| (1..=MAX_SIZE).contains(b))
        .ok_or_else(|| format!("{s:?}: sizes must be 1 byte to 64 MiB"))?;
    Ok(bytes)
}

/// `1 KiB`, `256 KiB`, `8 MiB`, `100 B`.
pub fn size_label(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

/// The file of `bytes` bytes in the bench's docroot.
fn file_name(bytes: u64) -> String {
    format!("s{bytes}.bin")
}

/// Runs the comparison and writes its JSON, Markdown and SVG.
pub fn run(args: CompareArgs) -> Result<()> {
    let plan = Plan::from_args(&args)?;
    baton_lab::validate_name(&args.name)?;
    let mut tools = vec!["wrk", "curl", "ip", "timeout", "kill"];
    if plan.tls {
        tools.push("openssl");
    }
    for tool in tools {
        which(tool).with_context(|| format!("{tool} is needed (scripts/setup installs it)"))?;
    }
    let md_path = args.json.with_extension("md");
    let svg_path = args.json.with_extension("svg");

    let scratch = TempDir::new("compare")?;
    let docroot = scratch.0.join("docroot");
    write_docroot(&docroot, &plan.sizes)?;

    let baton = crate::labcmd::self_exe()?;
    // A lab left by a killed run would block this one.
    let _ = baton_lab::down(&args.name);
    eprintln!("compare: bringing up lab {} ...", args.name);
    // The lab writes its certificate there before it starts the back-ends.
    let labdir = baton_lab::lab_dir(&args.name);
    let back_extra = if plan.tls {
        Some(direct_tls_toml(&labdir)?)
    } else {
        None
    };
    let mut lab = Lab::up(
        &baton,
        &args.name,
        LabOptions {
            backends: 2,
            docroot: Some(docroot.clone()),
            front_extra: Some("workers = 1".into()),
            back_extra,
            tls: plan.tls,
            ..LabOptions::default()
        },
    )?;
    let tls = if plan.tls {
        no_resumption(&baton, &mut lab)?;
        Some(TlsLab::of(&lab)?)
    } else {
        None
    };
    let mut notes = Vec::new();
    // Counting BPF run time costs two clock reads per packet, for every
    // program on the machine, for as long as this guard lives.
    let _bpf_stats = match baton_bpf::enable_run_time_stats() {
        Ok(g) => Some(g),
        Err(e) => {
            notes.push(format!("BPF run time not counted: {e}"));
            None
        }
    };
    // Declared after the lab: dropped first, while the namespaces still exist.
    let mut peers: Vec<Peer> = Vec::new();
    let mut targets = Vec::new();
    for &config in &plan.configs {
        match start_target(&lab, &baton, &scratch.0, config, tls.as_ref(), &mut peers)
            .with_context(|| format!("starting {}", config.name()))?
        {
            Started::Ready(t) => targets.push(t),
            Started::Unavailable(why) => {
                eprintln!("compare: {}: unavailable ({why}); skipped", config.name());
                notes.push(format!("`{}` unavailable: {why}", config.name()));
            }
        }
    }
    if targets.is_empty() {
        bail!("no configuration could be run");
    }
    let tick_hz = clock_ticks_per_second();
    anyhow::ensure!(
        Path::new("/proc/self/task").is_dir(),
        "/proc is needed to measure the fronts' CPU time"
    );
    // What a TLS client negotiates with each: OpenSSL's s_client with its
    // defaults, as wrk (the same libssl, default settings) does.
    let mut negotiated = Vec::new();
    if let Some(tls) = &tls {
        for t in &targets {
            match negotiate(&lab, tls, t, &scratch.0) {
                Ok(n) => {
                    if n.resumes {
                        notes.push(format!(
                            "`{}` resumed a TLS session although resumption was turned off",
                            t.config.name()
                        ));
                    }
                    negotiated.push(n);
                }
                Err(e) => notes.push(format!(
                    "`{}`: TLS negotiation not checked: {e:#}",
                    t.config.name()
                )),
            }
        }
    }

    // Warm-up: page cache, ARP, upstream connections and code paths.
    eprintln!("compare: warming up ...");
    let warm_file = file_name(plan.sizes.first().copied().unwrap_or(1024));
    for t in &targets {
        let url = format!("{}/{warm_file}", t.base_url);
        if let Err(e) = lab.wrk_url(&url, plan.threads, plan.connections, 1, false) {
            eprintln!("compare: warm-up of {} failed: {e:#}", t.config.name());
        }
    }

    let steps = plan.steps();
    let total: usize = plan.repetitions as usize
        * steps
            .iter()
            .map(|&(_, m)| targets.iter().filter(|t| plan.runs(t.config, m)).count())
            .sum::<usize>();
    let mut progress = Progress::new(total);
    let mut samples: BTreeMap<(Config, u64, ConnMode), Vec<Sample>> = BTreeMap::new();
    let mut failed: BTreeMap<(Config, u64, ConnMode), u32> = BTreeMap::new();
    let mut step = 0usize;
    for _rep in 0..plan.repetitions {
        for &(size, mode) in &steps {
            let here: Vec<&Target> = targets
                .iter()
                .filter(|t| plan.runs(t.config, mode))
                .collect();
            // Rotate who goes first, so no configuration always follows another.
            let n = here.len();
            for k in 0..n {
                let Some(t) = here.get((k + step) % n) else {
                    continue;
                };
                progress.draw(&format!(
                    "{} {} {}",
                    t.config.name(),
                    size_label(size).replace(' ', ""),
                    mode.name()
                ));
                match measure(&lab, t, size, mode, &plan, tick_hz) {
                    Ok(s) => {
                        if s.errors > 0 {
                            progress.note(&format!(
                                "{} {} {}: {} wrk errors in {} requests",
                                t.config.name(),
                                size_label(size),
                                mode.name(),
                                s.errors,
                                s.requests
                            ));
                        }
                        samples.entry((t.config, size, mode)).or_default().push(s);
                    }
                    Err(e) => {
                        progress.note(&format!(
                            "{} {} {}: run failed: {e:#}",
                            t.config.name(),
                            size_label(size),
                            mode.name()
                        ));
                        *failed.entry((t.config, size, mode)).or_default() += 1;
                    }
                }
                progress.done += 1;
            }
            step += 1;
        }
    }
    progress.finish();

    // Close-mode runs must have opened a connection per request.
    for ((config, size, mode), v) in &samples {
        let cpr = median(v.iter().map(|s| s.conns_per_req).collect());
        if *mode == ConnMode::Close && cpr < 0.9 {
            notes.push(format!(
                "`{}` {} close: the client opened only {cpr:.2} connections per request",
                config.name(),
                size_label(*size)
            ));
        }
    }
    let handshakes = handshake_counts(&samples);
    for h in &handshakes {
        if h.close_resumed > 0 {
            notes.push(format!(
                "`{}`: the client resumed {} of {} sessions in close mode: not every \
                 one-request connection was a full handshake",
                h.config.name(),
                h.close_resumed,
                h.close_handshakes
            ));
        }
    }
    for (config, why) in peer_deaths(&mut peers) {
        notes.push(format!("`{config}` exited during the run: {why}"));
    }
    drop(peers);
    drop(lab);

    let rows = aggregate(&plan, &targets, &samples, &failed);
    let records: Vec<Record> = rows.iter().map(|r| r.record.clone()).collect();
    let tls_report = plan.tls.then(|| TlsReport {
        records: records.clone(),
        ratios: tls_ratios(&plan, &records),
        negotiated,
        front_handshakes: handshakes,
        wrk_errors: rows.iter().map(|r| r.errors).sum(),
        failed_runs: rows.iter().map(|r| r.failed_runs).sum(),
    });
    let md = match &tls_report {
        Some(rep) => markdown_tls(&plan, &rows, rep, &notes),
        None => markdown(&plan, &rows, &notes),
    };
    let svg = render_svg(&plan, &records)?;
    if let Some(dir) = args.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = match &tls_report {
        Some(rep) => serde_json::to_vec_pretty(rep)?,
        None => serde_json::to_vec_pretty(&records)?,
    };
    fs::write(&args.json, json).with_context(|| format!("writing {}", args.json.display()))?;
    fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    fs::write(&svg_path, svg).with_context(|| format!("writing {}", svg_path.display()))?;
    println!("{md}");
    println!(
        "Written: {} (JSON), {} (Markdown), {} (chart)",
        args.json.display(),
        md_path.display(),
        svg_path.display()
    );
    Ok(())
}

/// The back-ends' `[direct_tls]` (with `--tls`): the lab's certificate and
/// key (`server.pem`, `server.key` in the lab directory), on every address,
/// without resumption (see [`no_resumption`]).
pub fn direct_tls_toml(labdir: &Path) -> Result<String> {
    let s = |p: PathBuf| -> Result<String> {
        let p = p
            .to_str()
            .with_context(|| format!("{} is not UTF-8", p.display()))?
            .to_string();
        Ok(toml::Value::String(p).to_string())
    };
    Ok(format!(
        "\n[direct_tls]\nlisten = \"0.0.0.0:{DIRECT_TLS_PORT}\"\ncert = {}\nkey = {}\ntickets = 0\n",
        s(labdir.join("server.pem"))?,
        s(labdir.join("server.key"))?
    ))
}

/// With `--tls`, every server runs without session resumption, so that
/// each connection of a close-mode run is a full handshake (an ECDSA P-256
/// signature and an X25519 exchange): wrk keeps its last session when it
/// reconnects and resumes it whenever the server allows. This turns the
/// lab front's TLS 1.3 tickets off (`[tls] tickets = 0`; the relay front's
/// config is made from it) and restarts it with `baton lab restart`
/// (a reload keeps `[tls]`); the back-ends' `[direct_tls]`, nginx and
/// HAProxy are configured so from the start.
fn no_resumption(baton: &Path, lab: &mut Lab) -> Result<()> {
    let path = lab
        .info
        .hosts
        .get("front")
        .and_then(|h| h.config.clone())
        .context("the lab's front has no config file")?;
    let mut t: toml::Table = fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .parse()
        .with_context(|| format!("parsing {}", path.display()))?;
    let Some(toml::Value::Table(tls)) = t.get_mut("tls") else {
        bail!("{} has no [tls]", path.display());
    };
    tls.insert("tickets".into(), toml::Value::Integer(0));
    fs::write(&path, toml::to_string(&t)?)
        .with_context(|| format!("writing {}", path.display()))?;
    let status = Command::new("timeout")
        .args(["-k", "5", "120"])
        .arg(baton)
        .args(["lab", "restart", "--name", &lab.name, "front", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .context("running baton lab restart")?;
    anyhow::ensure!(
        status.success(),
        "baton lab restart front failed ({status})"
    );
    let out = Command::new("timeout")
        .args(["-k", "5", "30"])
        .arg(baton)
        .args(["lab", "status", "--name", &lab.name, "--json"])
        .stdin(Stdio::null())
        .output()
        .context("running baton lab status")?;
    anyhow::ensure!(out.status.success(), "baton lab status failed");
    lab.info = serde_json::from_slice(&out.stdout).context("parsing baton lab status --json")?;
    Ok(())
}

/// The lab's TLS material (`baton lab up --tls`).
#[derive(Debug, Clone)]
struct TlsLab {
    /// The CA clients trust.
    ca: PathBuf,
    /// The server's chain (leaf, then the CA) and key: every server uses them.
    chain: PathBuf,
    key: PathBuf,
    /// The name the certificate is for.
    server_name: String,
}

impl TlsLab {
    fn of(lab: &Lab) -> Result<TlsLab> {
        let ca = lab
            .info
            .ca_file
            .clone()
            .context("the lab reports no CA file: was it made with --tls?")?;
        let server_name = lab
            .info
            .server_name
            .clone()
            .context("the lab reports no server name")?;
        let chain = lab.info.labdir.join("server.pem");
        let key = lab.info.labdir.join("server.key");
        for f in [&ca, &chain, &key] {
            anyhow::ensure!(f.is_file(), "the lab has no {}", f.display());
        }
        Ok(TlsLab {
            ca,
            chain,
            key,
            server_name,
        })
    }
}

/// What a default OpenSSL client negotiated with a configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Negotiated {
    pub config: Config,
    /// `TLSv1.3`.
    pub protocol: String,
    /// `TLS_AES_256_GCM_SHA384`.
    pub suite: String,
    /// The key exchange (`X25519`), as s_client names it.
    pub key_exchange: String,
    /// The certificate chain verified against the lab's CA for its name.
    pub verified: bool,
    /// A client offering what the server sent it on an earlier connection
    /// resumed that session (it should not: resumption is off).
    pub resumes: bool,
}

/// Handshakes the baton fronts counted (`/stats` `tls`), over all runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HandshakeCount {
    pub config: Config,
    pub handshakes: u64,
    pub resumed: u64,
    /// In close mode (one request per connection).
    pub close_handshakes: u64,
    pub close_resumed: u64,
}

/// One ratio a target names, measured in this run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ratio {
    /// A stable key (e.g. `front_cpu_1mib_keepalive_nginx_per_handoff`).
    pub name: String,
    /// What was divided by what, with both values.
    pub what: String,
    pub value: f64,
    /// The target (the ratio it should reach), if one is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goal: Option<f64>,
    /// The same ratio for `direct` in place of handoff: what no front can
    /// beat in this lab.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_bound: Option<f64>,
}

/// The JSON of a `--tls` run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TlsReport {
    pub records: Vec<Record>,
    pub ratios: Vec<Ratio>,
    pub negotiated: Vec<Negotiated>,
    pub front_handshakes: Vec<HandshakeCount>,
    /// wrk errors (connect, read, write, status, timeout) over every run.
    pub wrk_errors: u64,
    /// Runs that produced no result.
    pub failed_runs: u32,
}

/// Parses `openssl s_client -brief`'s summary (on stderr).
pub fn parse_s_client(config: Config, text: &str) -> Option<Negotiated> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim_start_matches(':').trim().to_string())
    };
    let key_exchange = field("Negotiated TLS1.3 group")
        .or_else(|| field("Server Temp Key"))
        .or_else(|| field("Peer Temp Key"))
        .unwrap_or_default();
    Some(Negotiated {
        config,
        protocol: field("Protocol version")?,
        suite: field("Ciphersuite")?,
        key_exchange,
        verified: field("Verification").as_deref() == Some("OK"),
        resumes: false,
    })
}

/// Whether `t` resumes a session: one request saves what the server sent
/// (`-sess_out`: written when a TLS 1.3 ticket arrives), a second
/// connection offers it (`-sess_in`) and s_client says `Reused` or `New`.
fn resumes(lab: &Lab, tls: &TlsLab, t: &Target, scratch: &Path) -> Result<bool> {
    let sess = scratch.join(format!("session-{}.pem", t.config.name()));
    let _ = fs::remove_file(&sess);
    let connect = format!("{}:{}", t.ip, t.port);
    let script = format!(
        "printf 'GET /index.html HTTP/1.1\\r\\nHost: {name}\\r\\nConnection: close\\r\\n\\r\\n' | \
         timeout 10 openssl s_client -quiet -connect {connect} -servername {name} -sess_out '{}' \
         >/dev/null 2>&1",
        sess.display(),
        name = tls.server_name
    );
    lab.run("client", &["sh", "-c", &script])?;
    if !sess.is_file() {
        return Ok(false);
    }
    let s = sess.to_string_lossy().to_string();
    let out = lab.run(
        "client",
        &[
            "timeout",
            "10",
            "openssl",
            "s_client",
            "-connect",
            &connect,
            "-servername",
            &tls.server_name,
            "-sess_in",
            &s,
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().any(|l| l.starts_with("Reused,")))
}

/// What OpenSSL's client negotiates with `t` from the client host.
fn negotiate(lab: &Lab, tls: &TlsLab, t: &Target, scratch: &Path) -> Result<Negotiated> {
    let connect = format!("{}:{}", t.ip, t.port);
    let ca = tls.ca.to_string_lossy().to_string();
    let out = lab.run(
        "client",
        &[
            "timeout",
            "10",
            "openssl",
            "s_client",
            "-brief",
            "-connect",
            &connect,
            "-servername",
            &tls.server_name,
            "-verify_hostname",
            &tls.server_name,
            "-CAfile",
            &ca,
        ],
    )?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let mut n = parse_s_client(t.config, &text)
        .with_context(|| format!("no handshake summary from openssl s_client: {text}"))?;
    n.resumes = resumes(lab, tls, t, scratch)?;
    Ok(n)
}

/// Writes `index.html` (the lab's readiness check fetches `/`) and one file
/// per size with [`baton_lab::sample_content`].
fn write_docroot(dir: &Path, sizes: &[u64]) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(
        dir.join("index.html"),
        "<!doctype html>\n<title>baton bench compare</title>\n",
    )
    .context("writing index.html")?;
    for &size in sizes {
        let name = file_name(size);
        let len = usize::try_from(size).context("size does not fit memory")?;
        fs::write(dir.join(&name), baton_lab::sample_content(&name, len))
            .with_context(|| format!("writing {name}"))?;
    }
    Ok(())
}

/// A configuration ready to be measured.
#[derive(Debug, Clone)]
struct Target {
    config: Config,
    /// `http://host:port` (`https://` with `--tls`).
    base_url: String,
    /// Where it listens.
    ip: std::net::Ipv4Addr,
    port: u16,
    /// The process group whose CPU time is the front's; `None` for `direct`
    /// and `nginx-static` (no front).
    pgid: Option<u32>,
    /// The front's BPF forwarder, whose run time is the front's too.
    bpf_prog: Option<u32>,
    /// With `--tls`, a baton front's `/stats` (in the front host), for its
    /// handshake counts.
    stats_url: Option<String>,
}

impl Target {
    fn new(config: Config, tls: Option<&TlsLab>, ip: std::net::Ipv4Addr, port: u16) -> Target {
        let scheme = if tls.is_some() { "https" } else { "http" };
        Target {
            config,
            base_url: format!("{scheme}://{ip}:{port}"),
            ip,
            port,
            pgid: None,
            bpf_prog: None,
            stats_url: None,
        }
    }

    /// curl's arguments to GET `path` from it: with TLS, the certificate is
    /// verified against the lab's CA for the lab's name.
    fn curl_get(&self, tls: Option<&TlsLab>, path: &str) -> Vec<String> {
        match tls {
            None => vec![format!("{}{path}", self.base_url)],
            Some(t) => vec![
                "--cacert".into(),
                t.ca.to_string_lossy().to_string(),
                "--resolve".into(),
                format!("{}:{}:{}", t.server_name, self.port, self.ip),
                format!("https://{}:{}{path}", t.server_name, self.port),
            ],
        }
    }
}

/// A proxy peer just spawned: kept with the others, ready once the client
/// fetches a page through it.
fn serving_peer(
    lab: &Lab,
    peers: &mut Vec<Peer>,
    peer: Peer,
    mut target: Target,
    tls: Option<&TlsLab>,
    with_front_cpu: bool,
) -> Result<Started> {
    let pgid = peer.pgid();
    peers.push(peer);
    wait_serving(
        lab,
        peers,
        &[("client", target.curl_get(tls, "/index.html"))],
    )?;
    target.pgid = with_front_cpu.then_some(pgid);
    Ok(Started::Ready(target))
}

/// What starting a configuration gave.
#[derive(Debug)]
enum Started {
    Ready(Target),
    /// This build or machine cannot run it (why); not an error of the bench.
    Unavailable(String),
}

/// Starts what `config` needs (nothing for direct and handoff) and waits
/// until it serves; peers started are pushed to `peers`.
fn start_target(
    lab: &Lab,
    baton: &Path,
    scratch: &Path,
    config: Config,
    tls: Option<&TlsLab>,
    peers: &mut Vec<Peer>,
) -> Result<Started> {
    let vip = lab.info.vip;
    let back_ip = |name: &str| {
        lab.info
            .hosts
            .get(name)
            .map(|h| h.ip)
            .with_context(|| format!("the lab has no {name}"))
    };
    let front_ns = lab.netns("front")?.to_string();
    let upstreams = [back_ip("back1")?, back_ip("back2")?];
    let port = |plain: u16, https: u16| if tls.is_some() { https } else { plain };
    match config {
        Config::Direct => {
            let t = Target::new(
                config,
                tls,
                upstreams[0],
                port(baton_lab::DIRECT_PORT, DIRECT_TLS_PORT),
            );
            wait_serving(lab, peers, &[("client", t.curl_get(tls, "/index.html"))])?;
            Ok(Started::Ready(t))
        }
        Config::Handoff => {
            let pid = lab
                .info
                .hosts
                .get("front")
                .and_then(|h| h.pid)
                .context("the lab's front has no pid")?;
            let bpf_prog = lab
                .front_stats()?
                .get("bpf_program_id")
                .and_then(serde_json::Value::as_u64)
                .and_then(|id| u32::try_from(id).ok());
            let https = lab.info.tls_port.unwrap_or(baton_lab::TLS_PORT);
            let mut t = Target::new(config, tls, vip, port(lab.info.port, https));
            // The lab starts each daemon as the leader of its own session.
            t.pgid = Some(pid);
            t.bpf_prog = bpf_prog;
            t.stats_url = tls.map(|_| "http://127.0.0.1:9100/stats".to_string());
            wait_serving(lab, peers, &[("client", t.curl_get(tls, "/index.html"))])?;
            Ok(Started::Ready(t))
        }
        Config::Nginx | Config::NginxStatic => {
            let dir = scratch.join(config.name());
            fs::create_dir_all(&dir)?;
            let conf = dir.join("nginx.conf");
            let (ns, t) = if config == Config::Nginx {
                let t = Target::new(config, tls, vip, port(NGINX_PORT, NGINX_TLS_PORT));
                let text = match tls {
                    None => nginx_conf(&dir, vip, &upstreams),
                    Some(c) => nginx_tls_conf(&dir, vip, &upstreams, &c.chain, &c.key),
                };
                fs::write(&conf, text)?;
                (front_ns.clone(), t)
            } else {
                let c = tls.context("nginx-static runs with --tls only")?;
                let t = Target::new(config, tls, upstreams[0], NGINX_STATIC_PORT);
                fs::write(
                    &conf,
                    nginx_static_conf(&dir, upstreams[0], &lab.info.docroot, &c.chain, &c.key),
                )?;
                (lab.netns("back1")?.to_string(), t)
            };
            let err_log = dir.join("error.log");
            let peer = Peer::spawn(
                config,
                &ns,
                &[
                    "nginx".as_ref(),
                    "-c".as_ref(),
                    conf.as_os_str(),
                    "-e".as_ref(),
                    err_log.as_os_str(),
                    "-g".as_ref(),
                    "daemon off;".as_ref(),
                ],
                &dir.join("stdout.log"),
            )?;
            serving_peer(lab, peers, peer, t, tls, config == Config::Nginx)
        }
        Config::Haproxy => {
            let dir = scratch.join("haproxy");
            fs::create_dir_all(&dir)?;
            let conf = dir.join("haproxy.cfg");
            let text = match tls {
                None => haproxy_conf(vip, &upstreams),
                Some(c) => {
                    // HAProxy reads the chain and key from one file.
                    let pem = dir.join("server-and-key.pem");
                    let mut both = fs::read(&c.chain)
                        .with_context(|| format!("reading {}", c.chain.display()))?;
                    both.extend(
                        fs::read(&c.key).with_context(|| format!("reading {}", c.key.display()))?,
                    );
                    write_private(&pem, &both)?;
                    haproxy_tls_conf(vip, &upstreams, &pem)
                }
            };
            fs::write(&conf, text)?;
            let peer = Peer::spawn(
                config,
                &front_ns,
                &[
                    "haproxy".as_ref(),
                    "-f".as_ref(),
                    conf.as_os_str(),
                    "-db".as_ref(),
                ],
                &dir.join("haproxy.log"),
            )?;
            let t = Target::new(config, tls, vip, port(HAPROXY_PORT, HAPROXY_TLS_PORT));
            serving_peer(lab, peers, peer, t, tls, true)
        }
        Config::Relay => {
            let dir = scratch.join("relay");
            fs::create_dir_all(&dir)?;
            let front_toml = lab
                .info
                .hosts
                .get("front")
                .and_then(|h| h.config.clone())
                .context("the lab's front has no config file")?;
            let text = fs::read_to_string(&front_toml)?;
            let ips: BTreeMap<String, std::net::Ipv4Addr> = lab
                .info
                .hosts
                .iter()
                .map(|(n, h)| (n.clone(), h.ip))
                .collect();
            let conf = dir.join("relay.toml");
            fs::write(&conf, relay_toml(&text, &ips, &dir.join("relay.sock"))?)?;
            // The same check a user runs: a front without relay mode
            // rejects `handoff = false`, and then there is nothing to measure.
            let check = Command::new(baton)
                .arg("check")
                .arg(&conf)
                .stdin(Stdio::null())
                .output()?;
            if !check.status.success() {
                let err = String::from_utf8_lossy(&check.stderr);
                let why = err.lines().last().unwrap_or("baton check failed").trim();
                return Ok(Started::Unavailable(format!(
                    "`baton check` rejects a front with handoff = false: {why}"
                )));
            }
            let peer = Peer::spawn(
                config,
                &front_ns,
                &[
                    baton.as_os_str(),
                    "front".as_ref(),
                    "--config".as_ref(),
                    conf.as_os_str(),
                ],
                &dir.join("relay.log"),
            )?;
            let mut t = Target::new(config, tls, vip, port(RELAY_PORT, RELAY_TLS_PORT));
            t.pgid = Some(peer.pgid());
            t.stats_url = tls.map(|_| format!("http://{RELAY_ADMIN}/stats"));
            peers.push(peer);
            wait_serving(
                lab,
                peers,
                &[
                    ("front", vec![format!("http://{RELAY_ADMIN}/ready")]),
                    ("client", t.curl_get(tls, "/index.html")),
                ],
            )?;
            Ok(Started::Ready(t))
        }
    }
}

/// Writes `bytes` to `path`, readable by its owner only (a private key).
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// nginx as a reverse proxy of `upstreams` on VIP:8081: one worker,
/// keep-alive to the back-ends, no access log, 1 MiB of buffers per
/// connection and never a temporary file (bodies stream through memory).
pub fn nginx_conf(dir: &Path, vip: std::net::Ipv4Addr, upstreams: &[std::net::Ipv4Addr]) -> String {
    nginx_proxy_conf(
        dir,
        &format!("{vip}:{NGINX_PORT} backlog=4096"),
        "",
        upstreams,
    )
}

/// nginx's TLS directives: TLS 1.3 only, with `cert` and `key`, no session
/// resumption (no tickets, no cache; see [`no_resumption`]).
fn nginx_tls_directives(cert: &Path, key: &Path) -> String {
    format!(
        "    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.3;\n\
         \x20   ssl_session_tickets off;\n    ssl_session_cache off;\n    ssl_conf_command NumTickets 0;\n",
        cert.display(),
        key.display()
    )
}

/// nginx terminating TLS 1.3 on VIP:8444 (`--tls`), otherwise as
/// [`nginx_conf`]: plain HTTP with keep-alive to the back-ends.
pub fn nginx_tls_conf(
    dir: &Path,
    vip: std::net::Ipv4Addr,
    upstreams: &[std::net::Ipv4Addr],
    cert: &Path,
    key: &Path,
) -> String {
    nginx_proxy_conf(
        dir,
        &format!("{vip}:{NGINX_TLS_PORT} ssl backlog=4096"),
        &nginx_tls_directives(cert, key),
        upstreams,
    )
}

/// nginx serving `docroot` over TLS 1.3 on `ip`:8447 (`--tls`, on back1's
/// host): one worker, no access log, the same keep-alive limits.
pub fn nginx_static_conf(
    dir: &Path,
    ip: std::net::Ipv4Addr,
    docroot: &Path,
    cert: &Path,
    key: &Path,
) -> String {
    let d = dir.display();
    format!(
        "# Written by baton bench compare --tls.
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
  worker_connections 4096;
}}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  sendfile on;
  default_type application/octet-stream;
  server {{
    listen {ip}:{NGINX_STATIC_PORT} ssl backlog=4096;
{}    root {};
  }}
}}
",
        nginx_tls_directives(cert, key),
        docroot.display()
    )
}

/// The reverse proxy of [`nginx_conf`] listening on `listen` (nginx's
/// `listen` parameters), with `server_extra` in its `server` block.
fn nginx_proxy_conf(
    dir: &Path,
    listen: &str,
    server_extra: &str,
    upstreams: &[std::net::Ipv4Addr],
) -> String {
    let d = dir.display();
    let mut servers = String::new();
    for ip in upstreams {
        let _ = writeln!(servers, "    server {ip}:{};", baton_lab::DIRECT_PORT);
    }
    format!(
        "# Written by baton bench compare.
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
  worker_connections 4096;
}}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  upstream baton_backs {{
{servers}    keepalive 64;
    keepalive_requests 1000000;
  }}
  server {{
    listen {listen};
{server_extra}    location / {{
      proxy_pass http://baton_backs;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_buffer_size 64k;
      proxy_buffers 16 64k;
      proxy_busy_buffers_size 128k;
      proxy_max_temp_file_size 0;
    }}
  }}
}}
"
    )
}

/// HAProxy in HTTP mode on VIP:8082: one thread, keep-alive on both sides
/// with server connections reused across clients, 64 KiB buffers and
/// kernel splicing where HAProxy judges it useful.
pub fn haproxy_conf(vip: std::net::Ipv4Addr, upstreams: &[std::net::Ipv4Addr]) -> String {
    haproxy_conf_with(&format!("{vip}:{HAPROXY_PORT}"), "", upstreams)
}

/// HAProxy terminating TLS 1.3 on VIP:8445 (`--tls`) with `pem` (chain and
/// key in one file), otherwise as [`haproxy_conf`]; no session resumption
/// (no tickets, no cache; see [`no_resumption`]).
pub fn haproxy_tls_conf(
    vip: std::net::Ipv4Addr,
    upstreams: &[std::net::Ipv4Addr],
    pem: &Path,
) -> String {
    haproxy_conf_with(
        &format!(
            "{vip}:{HAPROXY_TLS_PORT} ssl crt {} alpn http/1.1",
            pem.display()
        ),
        "  ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets\n  tune.ssl.cachesize 0\n",
        upstreams,
    )
}

/// [`haproxy_conf`] with its `bind` arguments and extra `global` lines.
fn haproxy_conf_with(bind: &str, global_extra: &str, upstreams: &[std::net::Ipv4Addr]) -> String {
    let mut servers = String::new();
    for (i, ip) in upstreams.iter().enumerate() {
        let _ = writeln!(
            servers,
            "  server back{} {ip}:{}",
            i + 1,
            baton_lab::DIRECT_PORT
        );
    }
    format!(
        "# Written by baton bench compare.
global
  nbthread 1
  maxconn 2000
  tune.bufsize 65536
{global_extra}defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 30s
  option http-keep-alive
  option splice-auto
frontend baton_cmp
  bind {bind}
  default_backend baton_backs
backend baton_backs
  balance roundrobin
  http-reuse always
{servers}"
    )
}

/// The relay front's config: the lab front's, with `handoff = false`, its
/// own port, admin address and upgrade socket (`upgrade_socket`), no pins,
/// one worker, and each back-end's `relay_address` (its plain HTTP port)
/// where the lab did not write one.
pub fn relay_toml(
    lab_front_toml: &str,
    ips: &BTreeMap<String, std::net::Ipv4Addr>,
    upgrade_socket: &std::path::Path,
) -> Result<String> {
    let mut t: toml::Table = lab_front_toml
        .parse()
        .context("parsing the lab's front.toml")?;
    t.insert("handoff".into(), toml::Value::Boolean(false));
    t.insert("pin_dir".into(), toml::Value::String(String::new()));
    t.insert(
        "upgrade_socket".into(),
        toml::Value::String(upgrade_socket.display().to_string()),
    );
    t.insert("port".into(), toml::Value::Integer(i64::from(RELAY_PORT)));
    t.insert(
        "admin_listen".into(),
        toml::Value::String(RELAY_ADMIN.into()),
    );
    t.insert("workers".into(), toml::Value::Integer(1));
    // The lab's front has HTTPS (`--tls`): the relay terminates it too.
    if let Some(toml::Value::Table(tls)) = t.get_mut("tls") {
        tls.insert(
            "port".into(),
            toml::Value::Integer(i64::from(RELAY_TLS_PORT)),
        );
    }
    if let Some(toml::Value::Array(backends)) = t.get_mut("backend") {
        for b in backends.iter_mut() {
            let toml::Value::Table(b) = b else { continue };
            if b.contains_key("relay_address") || b.contains_key("address") {
                continue;
            }
            let ip = b
                .get("name")
                .and_then(toml::Value::as_str)
                .and_then(|n| ips.get(n));
            if let Some(ip) = ip {
                b.insert(
                    "relay_address".into(),
                    toml::Value::String(format!("{ip}:{}", baton_lab::DIRECT_PORT)),
                );
            }
        }
    }
    toml::to_string(&t).context("writing the relay front's config")
}

/// A process this bench started in a lab namespace, leader of its own
/// process group; the group is ended when this drops.
#[derive(Debug)]
struct Peer {
    config: Config,
    child: Child,
    log: PathBuf,
}

impl Peer {
    fn spawn(config: Config, netns: &str, argv: &[&std::ffi::OsStr], log: &Path) -> Result<Peer> {
        let out = fs::File::create(log)?;
        let err = out.try_clone()?;
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own group: nginx's workers are ended with their master.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", config.name()))?;
        Ok(Peer {
            config,
            child,
            log: log.to_path_buf(),
        })
    }

    /// `ip netns exec` execs in place: the child's pid is the program's,
    /// and the leader of its group.
    fn pgid(&self) -> u32 {
        self.child.id()
    }

    /// Why it is no longer running, if it is not. Looks at /proc rather
    /// than reaping, so the pid (and so the group id) stays ours until drop.
    fn exited(&self) -> Option<String> {
        match proc_stat(self.pgid()) {
            Some(st) if st.state != 'Z' && st.state != 'X' => None,
            _ => Some(format!("see {}: {}", self.log.display(), self.log_tail())),
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    fn signal_group(&self, sig: &str) {
        // The leader is not reaped yet, so the group id cannot name anyone else.
        let _ = Command::new("kill")
            .args([sig, "--", &format!("-{}", self.pgid())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if group_members(self.pgid()).is_empty() {
            let _ = self.child.wait();
            return;
        }
        self.signal_group("-TERM");
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline && !group_members(self.pgid()).is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !group_members(self.pgid()).is_empty() {
            self.signal_group("-KILL");
        }
        let _ = self.child.wait();
    }
}

/// Peers that died, with why.
fn peer_deaths(peers: &mut [Peer]) -> Vec<(&'static str, String)> {
    peers
        .iter()
        .filter_map(|p| p.exited().map(|why| (p.config.name(), why)))
        .collect()
}

/// Polls until every `(host, url)` answers 200, or fails when a peer dies
/// or `READY_TIMEOUT` passes.
fn wait_serving(lab: &Lab, peers: &mut [Peer], checks: &[(&str, Vec<String>)]) -> Result<()> {
    let start = Instant::now();
    for (host, get) in checks {
        let url = get.last().map(String::as_str).unwrap_or_default();
        loop {
            if let Some((name, why)) = peer_deaths(peers).into_iter().next() {
                bail!("{name} exited: {why}");
            }
            if http_status(lab, host, get).as_deref() == Some("200") {
                break;
            }
            if start.elapsed() > READY_TIMEOUT {
                let tails: Vec<String> = peers.iter().map(|p| p.log_tail()).collect();
                bail!(
                    "{url} did not answer 200 within {READY_TIMEOUT:?}: {}",
                    tails.join(" / ")
                );
            }
            std::thread::sleep(READY_POLL);
        }
    }
    Ok(())
}

/// The status code of a GET from `host` (`get`: curl's arguments, the URL
/// last), if any came.
fn http_status(lab: &Lab, host: &str, get: &[String]) -> Option<String> {
    let mut argv = vec![
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "2",
    ];
    argv.extend(get.iter().map(String::as_str));
    let out = lab.run(host, &argv).ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One wrk run of `target` with the counters around it.
fn measure(
    lab: &Lab,
    target: &Target,
    size: u64,
    mode: ConnMode,
    plan: &Plan,
    tick_hz: f64,
) -> Result<Sample> {
    let url = format!("{}/{}", target.base_url, file_name(size));
    // Read before the CPU snapshot and after the last: the stats request
    // costs the front a little CPU.
    let hs0 = match &target.stats_url {
        Some(u) => Some(tls_handshakes(lab, u)?),
        None => None,
    };
    let nic0 = lab.nic("front", "eth0")?;
    let opens0 = tcp_active_opens(lab, "client")?;
    let cpu0 = target.pgid.map(CpuSnapshot::of_group);
    let bpf0 = target.bpf_prog.and_then(bpf_run_ns);
    let (threads, conns) = plan.load(mode);
    let w = lab.wrk_url(&url, threads, conns, plan.seconds, mode == ConnMode::Close)?;
    let cpu1 = target.pgid.map(CpuSnapshot::of_group);
    let bpf1 = target.bpf_prog.and_then(bpf_run_ns);
    let hs = match (&target.stats_url, hs0) {
        (Some(u), Some((h0, r0))) => {
            let (h1, r1) = tls_handshakes(lab, u)?;
            Some((h1.saturating_sub(h0), r1.saturating_sub(r0)))
        }
        _ => None,
    };
    let opens = tcp_active_opens(lab, "client")?.saturating_sub(opens0);
    let nic = lab.nic("front", "eth0")?.since(&nic0);
    let cpu_us = match (cpu0, cpu1) {
        (Some(a), Some(b)) => b.used_since_us(&a, tick_hz),
        _ => 0.0,
    };
    let bpf_us = match (bpf0, bpf1) {
        (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e3,
        _ => 0.0,
    };
    let mut s = sample_of(&w, cpu_us + bpf_us, nic.rx_bytes + nic.tx_bytes, opens);
    if w.requests > 0 {
        s.bpf_us_per_req = bpf_us / w.requests as f64;
    }
    s.tls_handshakes = hs;
    Ok(s)
}

/// A baton front's TLS handshakes and resumptions so far (`/stats`).
fn tls_handshakes(lab: &Lab, stats_url: &str) -> Result<(u64, u64)> {
    let out = lab.run("front", &["curl", "-sf", "--max-time", "5", stats_url])?;
    anyhow::ensure!(out.status.success(), "{stats_url} did not answer");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing /stats")?;
    let n = |k: &str| v["tls"][k].as_u64();
    n("handshakes")
        .zip(n("resumed"))
        .with_context(|| format!("{stats_url} has no tls handshake counts"))
}

/// The handshakes each baton front counted, from the samples.
fn handshake_counts(
    samples: &BTreeMap<(Config, u64, ConnMode), Vec<Sample>>,
) -> Vec<HandshakeCount> {
    let mut by: BTreeMap<Config, HandshakeCount> = BTreeMap::new();
    for ((config, _, mode), v) in samples {
        for (h, r) in v.iter().filter_map(|s| s.tls_handshakes) {
            let c = by.entry(*config).or_insert(HandshakeCount {
                config: *config,
                handshakes: 0,
                resumed: 0,
                close_handshakes: 0,
                close_resumed: 0,
            });
            c.handshakes += h;
            c.resumed += r;
            if *mode == ConnMode::Close {
                c.close_handshakes += h;
                c.close_resumed += r;
            }
        }
    }
    by.into_values().collect()
}

/// Nanoseconds the kernel counted in program `id` (counting is on for
/// the whole bench; see [`baton_bpf::enable_run_time_stats`]).
fn bpf_run_ns(id: u32) -> Option<u64> {
    let t = baton_bpf::program_run_time(id).ok()??;
    u64::try_from(t.total.as_nanos()).ok()
}

/// A sample from wrk's summary and the counters around the run.
pub fn sample_of(w: &WrkResult, cpu_us: f64, nic_bytes: u64, opens: u64) -> Sample {
    let secs = w.duration_us.max(1) as f64 / 1e6;
    let per_req = |x: f64| {
        if w.requests == 0 {
            0.0
        } else {
            x / w.requests as f64
        }
    };
    Sample {
        rps: w.rps(),
        mbps: w.bytes as f64 / secs / 1e6,
        p50_ms: w.p50_us as f64 / 1e3,
        p99_ms: w.p99_us as f64 / 1e3,
        cpu_us_per_req: per_req(cpu_us),
        bpf_us_per_req: 0.0,
        nic_bytes,
        requests: w.requests,
        errors: w.errors(),
        conns_per_req: per_req(opens as f64),
        tls_handshakes: None,
    }
}

/// `Tcp: ActiveOpens` of `host`'s namespace: connections it initiated.
fn tcp_active_opens(lab: &Lab, host: &str) -> Result<u64> {
    let out = lab.run(host, &["cat", "/proc/net/snmp"])?;
    parse_active_opens(&String::from_utf8_lossy(&out.stdout))
        .context("no Tcp: ActiveOpens in /proc/net/snmp")
}

/// `ActiveOpens` from the text of `/proc/net/snmp` (a header line and a
/// value line per protocol).
pub fn parse_active_opens(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let names = tcp.next()?;
    let values = tcp.next()?;
    let i = names.split_whitespace().position(|n| n == "ActiveOpens")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// The fields of `/proc/PID/stat` this needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub pgrp: u32,
    /// utime + stime, in clock ticks (all threads, live and exited).
    pub cpu_ticks: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    parse_proc_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses `/proc/PID/stat`; `comm` (field 2) may hold spaces and ')'.
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = text.get(text.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): field k is f[k - 3].
    let state = f.first()?.chars().next()?;
    let pgrp = f.get(2)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(ProcStat {
        state,
        pgrp,
        cpu_ticks: utime + stime,
    })
}

/// Live (not zombie) members of process group `pgid`.
fn group_members(pgid: u32) -> Vec<(u32, ProcStat)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, proc_stat(pid)?)))
        .filter(|(_, st)| st.pgrp == pgid && st.state != 'Z' && st.state != 'X')
        .collect()
}

/// CPU used so far by the members of a process group (nginx: master and
/// worker; the others: one process with its threads), two ways: each live
/// thread's run time in ns (`/proc/PID/task/TID/schedstat`: precise, but a
/// thread that exits takes its time with it) and each process's utime +
/// stime (`/proc/PID/stat`: counts exited threads, in 10 ms ticks).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuSnapshot {
    /// Run time in ns by (pid, tid).
    pub threads: BTreeMap<(u32, u32), u64>,
    /// utime + stime of all members, in clock ticks.
    pub ticks: u64,
}

impl CpuSnapshot {
    fn of_group(pgid: u32) -> CpuSnapshot {
        let mut snap = CpuSnapshot::default();
        for (pid, st) in group_members(pgid) {
            snap.ticks += st.cpu_ticks;
            let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for tid in tasks
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            {
                let ns = fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
                    .ok()
                    .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok());
                if let Some(ns) = ns {
                    snap.threads.insert((pid, tid), ns);
                }
            }
        }
        snap
    }

    /// µs of CPU used since `earlier`: the per-thread sum (new threads count
    /// from zero), unless the tick count shows more than one tick beyond it,
    /// which means threads exited in between: then the ticks.
    pub fn used_since_us(&self, earlier: &CpuSnapshot, tick_hz: f64) -> f64 {
        let precise_ns: u64 = self
            .threads
            .iter()
            .map(|(k, ns)| ns.saturating_sub(earlier.threads.get(k).copied().unwrap_or(0)))
            .sum();
        let precise = precise_ns as f64 / 1e3;
        let tick_us = 1e6 / tick_hz;
        let coarse = self.ticks.saturating_sub(earlier.ticks) as f64 * tick_us;
        if coarse > precise + tick_us {
            coarse
        } else {
            precise
        }
    }
}

/// `getconf CLK_TCK`; 100 (USER_HZ on every common Linux) if that fails.
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|h| *h > 0.0)
        .unwrap_or(100.0)
}

fn which(tool: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .with_context(|| format!("{tool} not found in PATH"))
}

/// The median (mean of the middle two for an even count); 0 for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let hi = v.get(n / 2).copied().unwrap_or(0.0);
    if n % 2 == 1 {
        hi
    } else {
        (v.get(n / 2 - 1).copied().unwrap_or(hi) + hi) / 2.0
    }
}

/// One row per configuration, size and mode, in report order, from the
/// samples of every repetition.
fn aggregate(
    plan: &Plan,
    targets: &[Target],
    samples: &BTreeMap<(Config, u64, ConnMode), Vec<Sample>>,
    failed: &BTreeMap<(Config, u64, ConnMode), u32>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for (size, mode) in plan.steps() {
        for t in targets.iter().filter(|t| plan.runs(t.config, mode)) {
            let key = (t.config, size, mode);
            let v = samples.get(&key).map(Vec::as_slice).unwrap_or_default();
            let med = |f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
            let cpu = if t.pgid.is_some() {
                med(|s| s.cpu_us_per_req)
            } else {
                0.0
            };
            rows.push(Row {
                record: Record {
                    config: t.config,
                    size_bytes: size,
                    conn_mode: mode,
                    rps: med(|s| s.rps),
                    mbps: med(|s| s.mbps),
                    p50_ms: med(|s| s.p50_ms),
                    p99_ms: med(|s| s.p99_ms),
                    front_cpu_us_per_req: cpu,
                    front_nic_bytes: med(|s| s.nic_bytes as f64).round() as u64,
                },
                requests: v.iter().map(|s| s.requests).sum(),
                errors: v.iter().map(|s| s.errors).sum(),
                conns_per_req: med(|s| s.conns_per_req),
                bpf_us_per_req: med(|s| s.bpf_us_per_req),
                failed_runs: failed.get(&key).copied().unwrap_or(0),
            });
        }
    }
    rows
}

fn find(records: &[Record], c: Config, size: u64, mode: ConnMode) -> Option<&Record> {
    records
        .iter()
        .find(|r| r.config == c && r.size_bytes == size && r.conn_mode == mode)
}

/// Two decimals below 10 µs, one above.
fn cpu_label(us: f64) -> String {
    if us < 10.0 {
        format!("{us:.2}")
    } else {
        format!("{us:.1}")
    }
}

/// `a / b` as `1.23x`, or `n/a`.
fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

/// The report: the plan, the table, the ratios the issue sets targets for,
/// the method and the notes.
pub fn markdown(plan: &Plan, rows: &[Row], notes: &[String]) -> String {
    let records: Vec<Record> = rows.iter().map(|r| r.record.clone()).collect();
    let mut o = String::new();
    let _ = writeln!(o, "# baton bench compare\n");
    let _ = writeln!(
        o,
        "Two back-ends (`baton back`, plain HTTP on :8080) behind each front; `direct` is wrk \
         straight to one of them. Load: wrk -t{} -c{} from the client namespace, {} s per run, \
         {} repetition(s), medians shown; runs interleaved (every configuration once per size \
         and connection mode, order rotated). Every front on one core: baton `workers = 1` \
         (handoff and relay), nginx `worker_processes 1`, haproxy `nbthread 1`: a 2-CPU \
         machine where the client and the back-ends need CPU too. `close` sends \
         `Connection: close`: one connection per request.\n",
        plan.threads, plan.connections, plan.seconds, plan.repetitions
    );
    o.push_str(&table_md(plan, rows));
    o.push_str("\n## Against the targets\n\n");
    for line in target_lines(plan, &records) {
        let _ = writeln!(o, "- {line}");
    }
    o.push_str(
        "\n## Method\n\n\
         - **req/s, MB/s, p50, p99**: wrk's own figures (MB/s counts response bytes with \
         headers, 10^6 bytes); p50 and p99 are per-request latencies from wrk's histogram.\n\
         - **front CPU µs/req**: CPU time (user and system) of every thread of every process \
         in the front role's process group (baton front; nginx master and worker; haproxy), \
         read before and after each run from `/proc/PID/task/TID/schedstat` (ns; if a thread \
         exited during the run, from utime + stime in `/proc/PID/stat`, 10 ms ticks), \
         divided by the requests completed; 0 for `direct`. For `handoff` it adds the run \
         time of the front's BPF forwarder (the kernel's `BPF_ENABLE_STATS` counters, on for \
         the bench; the column *of which BPF* shows that part): the per-packet steering of the \
         client's packets, which is the front role's kernel work that can be attributed.\n\
         - **Not attributed**: the rest of the kernel's softirq work. On veth, a packet's \
         receive path (IP, TCP, the bridge, the redirect after the forwarder) mostly runs in \
         the context of the process that sent it, or in ksoftirqd, and is charged there: \
         the front's figure includes the receive work for what the front sends (its control \
         frames are received by the back-ends inside the front's send) and excludes the \
         receive work for what it receives. No sound per-namespace split of softirq time \
         exists; the table does not guess one.\n\
         - **front NIC B/req**: bytes received plus sent by the front's `eth0` during the run \
         (the JSON's `front_nic_bytes` is the run total), divided by the requests; includes \
         control-channel heartbeats. A proxy carries each response twice (in from the \
         back-end, out to the client); a handoff front carries the request and the \
         client's ACKs.\n\
         - **conn/req**: TCP connections the client opened per request (`ActiveOpens` of its \
         namespace): about 1 in `close` mode proves wrk reconnected for every request.\n\
         - Caveats: one shared 2-CPU VM, everything in one kernel (client, fronts and \
         back-ends are namespaces, links are veths over a bridge): absolute numbers are \
         this machine's; the ratios are the result.\n",
    );
    if !notes.is_empty() {
        o.push_str("\n## Notes\n\n");
        for n in notes {
            let _ = writeln!(o, "- {n}");
        }
    }
    o
}

/// The issue's targets, each with the measured ratio.
fn target_lines(plan: &Plan, records: &[Record]) -> Vec<String> {
    let mut out = Vec::new();
    let get = |c, s, m| find(records, c, s, m);
    let mib = 1u64 << 20;
    for mode in ConnMode::ALL {
        if let (Some(h), Some(n)) = (
            get(Config::Handoff, mib, mode),
            get(Config::Nginx, mib, mode),
        ) {
            out.push(format!(
                "Front CPU per request, 1 MiB {}: nginx {} µs, handoff {} µs: {} less (target: at least 10x)",
                mode.name(),
                cpu_label(n.front_cpu_us_per_req),
                cpu_label(h.front_cpu_us_per_req),
                ratio(n.front_cpu_us_per_req, h.front_cpu_us_per_req)
            ));
        }
    }
    for mode in ConnMode::ALL {
        let v: Vec<String> = plan
            .sizes
            .iter()
            .filter_map(|&s| {
                get(Config::Handoff, s, mode)
                    .map(|h| format!("{} {}", size_label(s), cpu_label(h.front_cpu_us_per_req)))
            })
            .collect();
        if !v.is_empty() {
            out.push(format!(
                "Handoff front CPU µs per request by size, {} (target: flat): {}",
                mode.name(),
                v.join(", ")
            ));
        }
    }
    let big: Vec<String> = plan
        .sizes
        .iter()
        .filter(|&&s| s >= 256 << 10)
        .flat_map(|&s| ConnMode::ALL.map(move |m| (s, m)))
        .filter_map(|(s, m)| {
            let h = get(Config::Handoff, s, m)?;
            let n = get(Config::Nginx, s, m)?;
            // No front beats the client talking straight to the back-end:
            // direct / nginx bounds what the ratio can reach in this lab.
            let bound = get(Config::Direct, s, m)
                .map(|d| format!(" (direct: {})", ratio(d.rps, n.rps)))
                .unwrap_or_default();
            Some(format!(
                "{} {} {}{bound}",
                size_label(s),
                m.name(),
                ratio(h.rps, n.rps)
            ))
        })
        .collect();
    if !big.is_empty() {
        out.push(format!(
            "Handoff throughput / nginx, responses >= 256 KiB (target: at least 2x; direct / nginx in brackets is the bound): {}",
            big.join(", ")
        ));
    }
    if let (Some(h), Some(n)) = (
        get(Config::Handoff, 1 << 10, ConnMode::Close),
        get(Config::Nginx, 1 << 10, ConnMode::Close),
    ) {
        out.push(format!(
            "1 KiB, one request per connection: handoff {:.0} req/s, nginx {:.0} req/s: {} (target: at least 0.8x)",
            h.rps,
            n.rps,
            ratio(h.rps, n.rps)
        ));
    }
    let relay: Vec<String> = plan
        .sizes
        .iter()
        .flat_map(|&s| ConnMode::ALL.map(move |m| (s, m)))
        .filter_map(|(s, m)| {
            let r = get(Config::Relay, s, m)?;
            let n = get(Config::Nginx, s, m)?;
            Some(format!(
                "{} {} {}",
                size_label(s),
                m.name(),
                ratio(r.rps, n.rps)
            ))
        })
        .collect();
    if relay.is_empty() {
        out.push("Relay / nginx: no relay measurements (see the notes)".into());
    } else {
        out.push(format!(
            "Relay throughput / nginx (target: at least 0.85x everywhere): {}",
            relay.join(", ")
        ));
    }
    out
}

/// The table of every row, with each one's req/s against nginx's.
fn table_md(plan: &Plan, rows: &[Row]) -> String {
    let records: Vec<Record> = rows.iter().map(|r| r.record.clone()).collect();
    let mut o = String::new();
    let _ = writeln!(
        o,
        "| size | conn | config | req/s | vs nginx | MB/s | p50 ms | p99 ms | front CPU µs/req | of which BPF | front NIC B/req | conn/req | errors |"
    );
    let _ = writeln!(
        o,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in rows {
        let r = &row.record;
        let nginx = find(&records, Config::Nginx, r.size_bytes, r.conn_mode).map_or(0.0, |n| n.rps);
        let nic_per_req = if r.rps > 0.0 {
            r.front_nic_bytes as f64 / (r.rps * f64::from(plan.seconds))
        } else {
            0.0
        };
        let errors = if row.failed_runs > 0 {
            format!("{} ({} runs failed)", row.errors, row.failed_runs)
        } else {
            row.errors.to_string()
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {:.0} | {} | {:.1} | {:.2} | {:.2} | {} | {} | {:.0} | {:.2} | {} |",
            size_label(r.size_bytes),
            r.conn_mode.name(),
            r.config.name(),
            r.rps,
            ratio(r.rps, nginx),
            r.mbps,
            r.p50_ms,
            r.p99_ms,
            cpu_label(r.front_cpu_us_per_req),
            cpu_label(row.bpf_us_per_req),
            nic_per_req,
            row.conns_per_req,
            errors
        );
    }
    o
}

/// `1 MiB` as a key: `1mib`.
fn size_key(bytes: u64) -> String {
    size_label(bytes).replace(' ', "").to_ascii_lowercase()
}

/// `a / b` if both are positive and finite.
fn div(a: f64, b: f64) -> Option<f64> {
    (a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// The ratios the `--tls` targets name, each from this run's medians. A
/// ratio whose inputs were not measured (a configuration left out or
/// failed) is left out.
pub fn tls_ratios(plan: &Plan, records: &[Record]) -> Vec<Ratio> {
    let get = |c, s, m| find(records, c, s, m);
    let mut out = Vec::new();
    let mib = 1u64 << 20;
    for mode in ConnMode::ALL {
        let (Some(h), Some(n)) = (
            get(Config::Handoff, mib, mode),
            get(Config::Nginx, mib, mode),
        ) else {
            continue;
        };
        if let Some(value) = div(n.front_cpu_us_per_req, h.front_cpu_us_per_req) {
            out.push(Ratio {
                name: format!("front_cpu_1mib_{}_nginx_per_handoff", mode.name()),
                what: format!(
                    "front CPU per 1 MiB HTTPS request, {}: nginx {} µs / handoff {} µs",
                    mode.name(),
                    cpu_label(n.front_cpu_us_per_req),
                    cpu_label(h.front_cpu_us_per_req)
                ),
                value,
                goal: Some(20.0),
                direct_bound: None,
            });
        }
    }
    for &size in plan.sizes.iter().filter(|&&s| s >= 256 << 10) {
        for mode in ConnMode::ALL {
            let (Some(h), Some(n)) = (
                get(Config::Handoff, size, mode),
                get(Config::Nginx, size, mode),
            ) else {
                continue;
            };
            if let Some(value) = div(h.rps, n.rps) {
                out.push(Ratio {
                    name: format!("rps_{}_{}_handoff_per_nginx", size_key(size), mode.name()),
                    what: format!(
                        "HTTPS req/s, {} {}: handoff {:.0} / nginx {:.0}",
                        size_label(size),
                        mode.name(),
                        h.rps,
                        n.rps
                    ),
                    value,
                    goal: Some(2.0),
                    direct_bound: get(Config::Direct, size, mode).and_then(|d| div(d.rps, n.rps)),
                });
            }
        }
    }
    // One request per connection, the smallest file: the rate of full
    // handshakes (the client does not resume; see the handshake counts).
    if let Some(&small) = plan.sizes.first() {
        if let Some(n) = get(Config::Nginx, small, ConnMode::Close) {
            for c in [Config::Handoff, Config::Relay, Config::Haproxy] {
                let Some(x) = get(c, small, ConnMode::Close) else {
                    continue;
                };
                if let Some(value) = div(x.rps, n.rps) {
                    out.push(Ratio {
                        name: format!("handshakes_per_s_{}_per_nginx", c.name()),
                        what: format!(
                            "full TLS 1.3 handshakes/s on the front ({} close, ECDSA P-256): \
                             {} {:.0} / nginx {:.0}",
                            size_label(small),
                            c.name(),
                            x.rps,
                            n.rps
                        ),
                        value,
                        goal: None,
                        direct_bound: None,
                    });
                }
            }
        }
    }
    // A back-end's TLS record layer against nginx's (OpenSSL) on the same
    // host, at the largest size: many connections, then one.
    if let Some(&big) = plan.sizes.last() {
        for (mode, configs) in [
            (ConnMode::KeepAlive, &[Config::Direct][..]),
            (ConnMode::Single, &[Config::Direct, Config::Handoff][..]),
        ] {
            let Some(n) = get(Config::NginxStatic, big, mode) else {
                continue;
            };
            for &c in configs {
                let Some(x) = get(c, big, mode) else {
                    continue;
                };
                let who = match c {
                    Config::Handoff => "handoff (baton-tls on a back-end)",
                    _ => "direct (rustls on back1)",
                };
                if let Some(value) = div(x.mbps, n.mbps) {
                    out.push(Ratio {
                        name: format!(
                            "backend_tls_mbps_{}_{}_{}_per_nginx_static",
                            size_key(big),
                            mode.name(),
                            c.name()
                        ),
                        what: format!(
                            "a back-end serving over TLS, {} {}: {who} {:.1} MB/s / nginx-static {:.1} MB/s",
                            size_label(big),
                            match mode {
                                ConnMode::Single => "over one connection",
                                _ => "keep-alive",
                            },
                            x.mbps,
                            n.mbps
                        ),
                        value,
                        goal: Some(0.8),
                        direct_bound: None,
                    });
                }
            }
        }
    }
    out
}

/// A ratio as a report line.
fn ratio_line(r: &Ratio) -> String {
    let mut line = format!("`{}`: {}: **{:.2}x**", r.name, r.what, r.value);
    if let Some(g) = r.goal {
        let _ = write!(
            line,
            " (goal: at least {g}x{})",
            if r.value >= g { ", met" } else { ", not met" }
        );
    }
    if let Some(b) = r.direct_bound {
        let _ = write!(line, "; direct / nginx (the bound): {b:.2}x");
    }
    line
}

/// The report of a `--tls` run.
fn markdown_tls(plan: &Plan, rows: &[Row], rep: &TlsReport, notes: &[String]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# baton bench compare --tls\n");
    let _ = writeln!(
        o,
        "HTTPS from wrk (OpenSSL) to: `direct` (back1's own `[direct_tls]` listener, \
         rustls), `handoff` (the lab's front on VIP:443: TLS terminated, the request read, \
         connection and TLS session handed to a back-end that answers with its own record \
         layer), `relay` (a baton front with `handoff = false` terminating TLS and relaying \
         plain HTTP), `nginx` and `haproxy` (terminating TLS 1.3 with the lab's ECDSA P-256 \
         certificate and key, keep-alive plain HTTP to the two back-ends), and `nginx-static` \
         (nginx serving the same files over TLS 1.3 from back1's host). Session resumption \
         off everywhere (no TLS 1.3 tickets, no session cache), so every new connection is a \
         full handshake (ECDSA P-256 signature, X25519). Load: wrk -t{} -c{} from the client namespace, {} s per run, {} \
         repetition(s), medians shown; runs interleaved. Every front on one core. `close` \
         sends `Connection: close`: one connection, so one full handshake, per request. \
         `single`: one keep-alive connection (wrk -t1 -c1), the largest size.\n",
        plan.threads, plan.connections, plan.seconds, plan.repetitions
    );
    o.push_str(&table_md(plan, rows));
    o.push_str("\n## Against the targets\n\n");
    if rep.ratios.is_empty() {
        o.push_str("- no ratio could be computed (see the notes)\n");
    }
    for r in &rep.ratios {
        let _ = writeln!(o, "- {}", ratio_line(r));
    }
    o.push_str("\n## TLS negotiated\n\n");
    for n in &rep.negotiated {
        let _ = writeln!(
            o,
            "- `{}`: {} {} {}, certificate {}, {}",
            n.config.name(),
            n.protocol,
            n.suite,
            n.key_exchange,
            if n.verified {
                "verified against the lab CA"
            } else {
                "NOT verified"
            },
            if n.resumes {
                "RESUMES sessions"
            } else {
                "no resumption"
            }
        );
    }
    for h in &rep.front_handshakes {
        let _ = writeln!(
            o,
            "- `{}` front counted {} handshakes ({} resumed); in close mode {} ({} resumed)",
            h.config.name(),
            h.handshakes,
            h.resumed,
            h.close_handshakes,
            h.close_resumed
        );
    }
    o.push_str(
        "\n## Method\n\n\
         - As in the plain comparison: req/s, MB/s and latencies are wrk's; **front CPU \
         µs/req** is the CPU time of the front's process group (and of the handoff front's \
         BPF forwarder) per request; 0 for `direct` and `nginx-static`, which have no front.\n\
         - **TLS negotiated**: `openssl s_client` with OpenSSL's defaults from the client \
         namespace, verifying the certificate against the lab's CA; wrk uses the same libssl \
         with its defaults, so it negotiates the same. wrk does not verify certificates.\n\
         - **Handshakes**: wrk keeps the session of its last connection and offers it when \
         it reconnects, so with resumption on most close-mode connections would resume; it \
         is off everywhere, which `openssl s_client -sess_out`/`-sess_in` checks against \
         every configuration (*no resumption* above) and the baton fronts' `/stats` \
         (`tls.handshakes`, `tls.resumed`, read around every run) confirm.\n\
         - **Direct bound**: no front makes the client faster than the back-end answering it \
         straight; direct / nginx is what the handoff / nginx ratio can reach in this lab.\n\
         - **Record layer**: `direct` (rustls) and `handoff` (the back-end continuing the \
         session) against `nginx-static` (OpenSSL) on the same back-end host, in MB/s; \
         `single` is one connection, so its bandwidth is one record layer's.\n\
         - Caveats: one shared 2-CPU VM, everything in one kernel: absolute numbers are this \
         machine's; the ratios are the result.\n",
    );
    if !notes.is_empty() {
        o.push_str("\n## Notes\n\n");
        for n in notes {
            let _ = writeln!(o, "- {n}");
        }
    }
    o
}

/// Tableau colours (as in the simulator's chart), one per configuration.
const PALETTE: [plotters::style::RGBColor; 6] = [
    plotters::style::RGBColor(127, 127, 127),
    plotters::style::RGBColor(214, 39, 40),
    plotters::style::RGBColor(255, 127, 14),
    plotters::style::RGBColor(44, 160, 44),
    plotters::style::RGBColor(31, 119, 180),
    plotters::style::RGBColor(148, 103, 189),
];

/// Requests/s by response size (log scale), one line per configuration,
/// one panel per connection mode, as an SVG document.
pub fn render_svg(plan: &Plan, records: &[Record]) -> Result<String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing the chart: {e}");
    // Integer ranges are inclusive as segments: 0..=last is one per size.
    let last = u32::try_from(plan.sizes.len().saturating_sub(1)).context("too many sizes")?;
    let positive = || records.iter().map(|r| r.rps).filter(|x| *x > 0.0);
    let lo = positive().fold(f64::INFINITY, f64::min);
    let hi = positive().fold(0.0_f64, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > 0.0 {
        (lo / 2.0, hi * 2.0)
    } else {
        (1.0, 10.0)
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1200, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let root = root
            .titled(
                &format!(
                    "baton bench compare{}: requests/s by response size (wrk -c{}, {} s runs, median of {})",
                    if plan.tls { " --tls (HTTPS)" } else { "" },
                    plan.connections, plan.seconds, plan.repetitions
                ),
                ("sans-serif", 22),
            )
            .map_err(|e| err(&e))?;
        let panels = root.split_evenly((1, 2));
        for (panel, mode) in panels.iter().zip(ConnMode::ALL) {
            let title = match mode {
                ConnMode::KeepAlive => "keep-alive",
                ConnMode::Close => "Connection: close (one request per connection)",
                ConnMode::Single => "one connection",
            };
            let mut chart = ChartBuilder::on(panel)
                .caption(title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(45)
                .y_label_area_size(75)
                .build_cartesian_2d((0..last).into_segmented(), (lo..hi).log_scale())
                .map_err(|e| err(&e))?;
            let sizes = plan.sizes.clone();
            chart
                .configure_mesh()
                .label_style(("sans-serif", 14))
                .axis_desc_style(("sans-serif", 15))
                .x_desc("response size")
                .y_desc("requests/s (log)")
                .x_labels(sizes.len())
                .x_label_formatter(&|v| match v {
                    SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => sizes
                        .get(*i as usize)
                        .map(|s| size_label(*s))
                        .unwrap_or_default(),
                    SegmentValue::Last => String::new(),
                })
                .y_label_formatter(&|y| format!("{y:.0}"))
                .draw()
                .map_err(|e| err(&e))?;
            let configs: &[Config] = if plan.tls {
                &Config::TLS_ALL
            } else {
                &Config::ALL
            };
            for (k, &config) in configs.iter().enumerate() {
                let color = PALETTE.get(k).copied().unwrap_or(BLACK).to_rgba();
                let points: Vec<(SegmentValue<u32>, f64)> = plan
                    .sizes
                    .iter()
                    .enumerate()
                    .filter_map(|(i, &s)| {
                        let r = find(records, config, s, mode)?;
                        let i = u32::try_from(i).ok()?;
                        (r.rps > 0.0).then_some((SegmentValue::CenterOf(i), r.rps))
                    })
                    .collect();
                if points.is_empty() {
                    continue;
                }
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                    .map_err(|e| err(&e))?
                    .label(config.name())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(
                        points
                            .into_iter()
                            .map(|p| Circle::new(p, 3, color.filled())),
                    )
                    .map_err(|e| err(&e))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font(("sans-serif", 14))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// A progress bar on stderr: redrawn in place on a terminal, one line per
/// step otherwise (CI logs).
#[derive(Debug)]
struct Progress {
    total: usize,
    done: usize,
    start: Instant,
    tty: bool,
    drawn: bool,
}

impl Progress {
    fn new(total: usize) -> Self {
        Progress {
            total,
            done: 0,
            start: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            drawn: false,
        }
    }

    fn draw(&mut self, label: &str) {
        let line = progress_line(self.done, self.total, label, self.start.elapsed());
        let mut e = std::io::stderr().lock();
        if self.tty {
            let _ = write!(e, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(e, "{line}");
        }
        let _ = e.flush();
        self.drawn = true;
    }

    /// A message that must not be overwritten by the bar.
    fn note(&mut self, msg: &str) {
        let mut e = std::io::stderr().lock();
        if self.tty && self.drawn {
            let _ = write!(e, "\r\x1b[2K");
        }
        let _ = writeln!(e, "compare: {msg}");
        self.drawn = false;
    }

    fn finish(&mut self) {
        let line = progress_line(self.done, self.total, "done", self.start.elapsed());
        let _ = writeln!(
            std::io::stderr().lock(),
            "{}{line}",
            if self.tty { "\r\x1b[2K" } else { "" }
        );
    }
}

/// `[=====>    ] 12/60 nginx 1MiB close (1:02 elapsed, ~4:08 left)`.
pub fn progress_line(done: usize, total: usize, label: &str, elapsed: Duration) -> String {
    const WIDTH: usize = 30;
    let filled = (done * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH)
        .min(WIDTH);
    let mut bar = "=".repeat(filled);
    if filled < WIDTH {
        bar.push('>');
        bar.push_str(&" ".repeat(WIDTH - filled - 1));
    }
    let mmss = |d: Duration| format!("{}:{:02}", d.as_secs() / 60, d.as_secs() % 60);
    let left = if done > 0 && done < total {
        let per = elapsed.as_secs_f64() / done as f64;
        format!(
            ", ~{} left",
            mmss(Duration::from_secs_f64(per * (total - done) as f64))
        )
    } else {
        String::new()
    };
    format!(
        "[{bar}] {done}/{total} {label} ({} elapsed{left})",
        mmss(elapsed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(sizes: &[u64]) -> Plan {
        Plan {
            repetitions: 3,
            seconds: 5,
            sizes: sizes.to_vec(),
            configs: Config::ALL.to_vec(),
            threads: 1,
            connections: 16,
            tls: false,
        }
    }

    fn record(config: Config, size: u64, mode: ConnMode, rps: f64, cpu: f64) -> Record {
        Record {
            config,
            size_bytes: size,
            conn_mode: mode,
            rps,
            mbps: rps * size as f64 / 1e6,
            p50_ms: 1.0,
            p99_ms: 2.0,
            front_cpu_us_per_req: cpu,
            front_nic_bytes: 1000,
        }
    }

    #[test]
    fn records_serialize_with_exactly_the_documented_keys() {
        let r = record(Config::Haproxy, 1 << 20, ConnMode::KeepAlive, 10.0, 1.5);
        let v = serde_json::to_value(&r).expect("json");
        let mut keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "config",
                "conn_mode",
                "front_cpu_us_per_req",
                "front_nic_bytes",
                "mbps",
                "p50_ms",
                "p99_ms",
                "rps",
                "size_bytes"
            ]
        );
        assert_eq!(v["config"], "haproxy");
        assert_eq!(v["conn_mode"], "keepalive");
        let c = record(Config::Direct, 1024, ConnMode::Close, 1.0, 0.0);
        assert_eq!(
            serde_json::to_value(&c).expect("json")["conn_mode"],
            "close"
        );
    }

    #[test]
    fn sizes_parse_in_kib_and_mib_and_label_back() {
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("16KiB"), Ok(16 << 10));
        assert_eq!(parse_size("8m"), Ok(8 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        for bad in ["", "0", "k", "1g", "-1k", "65m", "99999999999999999999m"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        let labels: Vec<String> = SIZES.iter().map(|s| size_label(*s)).collect();
        assert_eq!(labels, ["1 KiB", "16 KiB", "256 KiB", "1 MiB", "8 MiB"]);
        assert_eq!(size_label(1000), "1000 B");
    }

    #[test]
    fn quick_is_short_and_full_is_the_default() {
        let args = |quick: bool| CompareArgs {
            quick,
            tls: false,
            json: "x.json".into(),
            name: "x".into(),
            repetitions: None,
            seconds: None,
            sizes: Vec::new(),
            configs: Vec::new(),
            threads: 1,
            connections: 16,
        };
        let full = Plan::from_args(&args(false)).expect("plan");
        assert_eq!((full.repetitions, full.seconds), (3, 5));
        assert_eq!(full.sizes, SIZES);
        assert_eq!(full.configs, Config::ALL);
        let quick = Plan::from_args(&args(true)).expect("plan");
        // Load time alone must leave room for the lab and warm-up in 2 minutes.
        let load = quick.repetitions as usize
            * quick.seconds as usize
            * quick.sizes.len()
            * 2
            * quick.configs.len();
        assert!(load <= 70, "{load} s of load");
        assert!(quick.sizes.contains(&(1 << 20)) && quick.sizes.contains(&1024));
        let mut bad = args(true);
        bad.connections = 0;
        assert!(Plan::from_args(&bad).is_err());
        let mut plain_static = args(true);
        plain_static.configs = vec![Config::NginxStatic];
        let e = Plan::from_args(&plain_static).expect_err("needs --tls");
        assert!(e.to_string().contains("--tls"), "{e}");
        assert!(!quick.steps().iter().any(|(_, m)| *m == ConnMode::Single));

        let mut tls = args(true);
        tls.tls = true;
        let tls = Plan::from_args(&tls).expect("plan");
        assert_eq!(tls.configs, Config::TLS_ALL);
        let steps = tls.steps();
        assert_eq!(steps.last(), Some(&(1 << 20, ConnMode::Single)));
        let runs: usize = steps
            .iter()
            .map(|&(_, m)| tls.configs.iter().filter(|c| tls.runs(**c, m)).count())
            .sum();
        // 2.5 minutes for the test suite: load time leaves room for the lab,
        // the peers and the warm-up.
        let load = tls.repetitions as usize * tls.seconds as usize * runs;
        assert!(load <= 90, "{load} s of load");
        assert!(!tls.runs(Config::Nginx, ConnMode::Single));
        assert_eq!(tls.load(ConnMode::Single), (1, 1));
        assert_eq!(tls.load(ConnMode::Close), (1, 16));
    }

    #[test]
    fn tls_ratios_name_the_targets_with_the_direct_bound() {
        let mib = 1 << 20;
        let mut recs = Vec::new();
        for mode in ConnMode::ALL {
            for size in [1024, mib] {
                recs.push(record(Config::Handoff, size, mode, 600.0, 10.0));
                recs.push(record(Config::Nginx, size, mode, 300.0, 800.0));
                recs.push(record(Config::Direct, size, mode, 900.0, 0.0));
                recs.push(record(Config::NginxStatic, size, mode, 500.0, 0.0));
            }
        }
        recs.push(record(Config::Handoff, mib, ConnMode::Single, 400.0, 5.0));
        recs.push(record(
            Config::NginxStatic,
            mib,
            ConnMode::Single,
            500.0,
            0.0,
        ));
        // Not measured: no ratio.
        recs.push(record(Config::Direct, mib, ConnMode::Single, 0.0, 0.0));
        let mut p = plan(&[1024, mib]);
        p.tls = true;
        let ratios = tls_ratios(&p, &recs);
        let get = |name: &str| {
            ratios
                .iter()
                .find(|r| r.name == name)
                .unwrap_or_else(|| panic!("no {name} in {ratios:?}"))
        };
        let cpu = get("front_cpu_1mib_keepalive_nginx_per_handoff");
        assert_eq!((cpu.value, cpu.goal), (80.0, Some(20.0)));
        get("front_cpu_1mib_close_nginx_per_handoff");
        let rps = get("rps_1mib_close_handoff_per_nginx");
        assert_eq!((rps.value, rps.direct_bound), (2.0, Some(3.0)));
        assert!(!ratios.iter().any(|r| r.name.starts_with("rps_1kib")));
        assert_eq!(get("handshakes_per_s_handoff_per_nginx").value, 2.0);
        let rl = get("backend_tls_mbps_1mib_single_handoff_per_nginx_static");
        assert_eq!((rl.value, rl.goal), (0.8, Some(0.8)));
        get("backend_tls_mbps_1mib_keepalive_direct_per_nginx_static");
        assert!(!ratios
            .iter()
            .any(|r| r.name == "backend_tls_mbps_1mib_single_direct_per_nginx_static"));
        assert!(ratios.iter().all(|r| r.value.is_finite() && r.value > 0.0));
        let line = ratio_line(rps);
        assert!(
            line.contains("**2.00x**") && line.contains("bound): 3.00x"),
            "{line}"
        );
        let v = serde_json::to_value(cpu).expect("json");
        assert!(v.get("direct_bound").is_none(), "{v}");
    }

    #[test]
    fn s_client_summary_parses() {
        let text = "Connecting to 198.18.0.100\nCONNECTION ESTABLISHED\n\
                    Protocol version: TLSv1.3\nCiphersuite: TLS_AES_256_GCM_SHA384\n\
                    Peer certificate: CN = baton.test\nHash used: SHA256\n\
                    Signature type: ECDSA\nVerification: OK\n\
                    Server Temp Key: X25519, 253 bits\nDONE\n";
        let n = parse_s_client(Config::Nginx, text).expect("parsed");
        assert_eq!(n.protocol, "TLSv1.3");
        assert_eq!(n.suite, "TLS_AES_256_GCM_SHA384");
        assert_eq!(n.key_exchange, "X25519, 253 bits");
        assert!(n.verified && !n.resumes);
        assert!(parse_s_client(Config::Nginx, "connect: refused\n").is_none());
    }

    #[test]
    fn tls_peer_configs_use_the_lab_files_without_resumption() {
        let vip = std::net::Ipv4Addr::new(198, 18, 0, 100);
        let ups = [
            std::net::Ipv4Addr::new(198, 18, 0, 11),
            std::net::Ipv4Addr::new(198, 18, 0, 12),
        ];
        let (cert, key) = (Path::new("/lab/server.pem"), Path::new("/lab/server.key"));
        let ng = nginx_tls_conf(Path::new("/tmp/x"), vip, &ups, cert, key);
        assert!(ng.contains("listen 198.18.0.100:8444 ssl"), "{ng}");
        assert!(ng.contains("ssl_certificate /lab/server.pem;"), "{ng}");
        assert!(ng.contains("ssl_certificate_key /lab/server.key;"), "{ng}");
        assert!(ng.contains("    ssl_session_tickets off;"), "{ng}");
        assert!(ng.contains("server 198.18.0.11:8080") && ng.contains("keepalive 64"));
        let st = nginx_static_conf(Path::new("/tmp/y"), ups[0], Path::new("/docs"), cert, key);
        assert!(st.contains("listen 198.18.0.11:8447 ssl") && st.contains("root /docs;"));
        assert!(st.contains("ssl_protocols TLSv1.3;") && !st.contains("proxy_pass"));
        let hp = haproxy_tls_conf(vip, &ups, Path::new("/tmp/x/both.pem"));
        assert!(
            hp.contains("bind 198.18.0.100:8445 ssl crt /tmp/x/both.pem"),
            "{hp}"
        );
        assert!(hp.contains("ssl-min-ver TLSv1.3 no-tls-tickets"), "{hp}");
        assert!(hp.contains("server back1 198.18.0.11:8080"));
        let d = direct_tls_toml(Path::new("/run/lab")).expect("toml");
        let t: toml::Table = d.parse().expect("valid TOML");
        assert_eq!(t["direct_tls"]["listen"].as_str(), Some("0.0.0.0:8443"));
        assert_eq!(
            t["direct_tls"]["cert"].as_str(),
            Some("/run/lab/server.pem")
        );
        assert_eq!(t["direct_tls"]["tickets"].as_integer(), Some(0));
        // The plain configs are unchanged by the TLS ones.
        let plain = nginx_conf(Path::new("/tmp/x"), vip, &ups);
        assert!(plain.contains("listen 198.18.0.100:8081 backlog=4096;") && !plain.contains("ssl"));
    }

    #[test]
    fn medians_take_the_middle() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![f64::NAN, 5.0]), 5.0);
    }

    #[test]
    fn proc_stat_parses_odd_command_names() {
        let text =
            "1234 (nginx: a) b) S 1 1200 1200 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 12345 0 0";
        let st = parse_proc_stat(text).expect("parsed");
        assert_eq!(
            st,
            ProcStat {
                state: 'S',
                pgrp: 1200,
                cpu_ticks: 325
            }
        );
        assert_eq!(parse_proc_stat("garbage"), None);
        assert_eq!(parse_proc_stat("1 (x) S 1"), None);
        let me = proc_stat(std::process::id()).expect("own stat");
        assert_ne!(me.state, 'Z');
    }

    #[test]
    fn cpu_is_counted_per_thread_unless_threads_exited() {
        let snap = |threads: &[((u32, u32), u64)], ticks| CpuSnapshot {
            threads: threads.iter().copied().collect(),
            ticks,
        };
        let before = snap(&[((1, 1), 1_000_000), ((1, 2), 5_000_000)], 10);
        // 2 ms more on thread 1, 1 ms on thread 2, a new thread with 0.5 ms.
        let after = snap(
            &[((1, 1), 3_000_000), ((1, 2), 6_000_000), ((1, 3), 500_000)],
            10,
        );
        assert_eq!(after.used_since_us(&before, 100.0), 3500.0);
        // Thread 2 exited after using 40 ms: only the ticks saw it.
        let gone = snap(&[((1, 1), 3_000_000)], 15);
        assert_eq!(gone.used_since_us(&before, 100.0), 50_000.0);
        let pid = std::process::id();
        let pgrp = proc_stat(pid).expect("own stat").pgrp;
        let me = CpuSnapshot::of_group(pgrp);
        assert!(me.threads.contains_key(&(pid, pid)), "{me:?}");
    }

    #[test]
    fn active_opens_come_from_the_tcp_lines() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens\n\
                    Tcp: 1 200 120000 -1 4711 3\nUdp: InDatagrams\nUdp: 0\n";
        assert_eq!(parse_active_opens(snmp), Some(4711));
        assert_eq!(parse_active_opens("Tcp: ActiveOpens\n"), None);
    }

    #[test]
    fn samples_divide_by_requests_and_survive_zero() {
        let w = WrkResult {
            requests: 1000,
            bytes: 2_000_000,
            duration_us: 2_000_000,
            errors_connect: 1,
            errors_read: 0,
            errors_write: 0,
            errors_status: 2,
            errors_timeout: 0,
            p50_us: 1500,
            p99_us: 9000,
        };
        let s = sample_of(&w, 500_000.0, 12345, 1000);
        assert_eq!(s.rps, 500.0);
        assert_eq!(s.mbps, 1.0);
        assert_eq!((s.p50_ms, s.p99_ms), (1.5, 9.0));
        // 0.5 s of CPU over 1000 requests.
        assert_eq!(s.cpu_us_per_req, 500.0);
        assert_eq!((s.errors, s.nic_bytes, s.conns_per_req), (3, 12345, 1.0));
        let none = sample_of(&WrkResult { requests: 0, ..w }, 500_000.0, 0, 0);
        assert_eq!(
            (none.rps, none.cpu_us_per_req, none.conns_per_req),
            (0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn relay_config_relays_on_its_own_port_and_keeps_the_rest() {
        let lab = "vip = \"198.18.0.100\"\nport = 80\ninterface = \"eth0\"\n\
                   key_file = \"/k\"\nadmin_listen = \"127.0.0.1:9100\"\nworkers = 1\n\
                   [limits]\nhead_timeout_ms = 5000\n\n\
                   [[backend]]\nname = \"back1\"\ncontrol = \"198.18.0.11:7070\"\n\n\
                   [[backend]]\nname = \"back2\"\ncontrol = \"198.18.0.12:7070\"\n\
                   relay_address = \"198.18.0.12:9999\"\n";
        let ips: BTreeMap<String, std::net::Ipv4Addr> = [
            ("back1".to_string(), std::net::Ipv4Addr::new(198, 18, 0, 11)),
            ("back2".to_string(), std::net::Ipv4Addr::new(198, 18, 0, 12)),
        ]
        .into();
        let sock = std::path::Path::new("/run/x/relay.sock");
        let text = relay_toml(lab, &ips, sock).expect("relay config");
        let t: toml::Table = text.parse().expect("valid TOML");
        assert!(t.get("tls").is_none());
        let with_tls = format!("{lab}\n[tls]\nport = 443\ncert = \"/c\"\nkey = \"/k\"\n");
        let tt: toml::Table = relay_toml(&with_tls, &ips, sock)
            .expect("relay config")
            .parse()
            .expect("valid TOML");
        assert_eq!(tt["tls"]["port"].as_integer(), Some(8446));
        assert_eq!(tt["tls"]["cert"].as_str(), Some("/c"));
        assert_eq!(t["handoff"].as_bool(), Some(false));
        // Its own upgrade socket, and nothing pinned: the lab's front owns those.
        assert_eq!(t["upgrade_socket"].as_str(), Some("/run/x/relay.sock"));
        assert_eq!(t["pin_dir"].as_str(), Some(""));
        assert_eq!(t["port"].as_integer(), Some(8083));
        assert_eq!(t["admin_listen"].as_str(), Some("127.0.0.1:9102"));
        assert_eq!(t["workers"].as_integer(), Some(1));
        assert_eq!(t["vip"].as_str(), Some("198.18.0.100"));
        assert_eq!(t["limits"]["head_timeout_ms"].as_integer(), Some(5000));
        let b = t["backend"].as_array().expect("backends");
        assert_eq!(b[0]["relay_address"].as_str(), Some("198.18.0.11:8080"));
        // What the lab wrote wins.
        assert_eq!(b[1]["relay_address"].as_str(), Some("198.18.0.12:9999"));
        assert_eq!(b[1]["control"].as_str(), Some("198.18.0.12:7070"));
    }

    #[test]
    fn peer_configs_point_only_at_lab_addresses() {
        let vip = std::net::Ipv4Addr::new(198, 18, 0, 100);
        let ups = [
            std::net::Ipv4Addr::new(198, 18, 0, 11),
            std::net::Ipv4Addr::new(198, 18, 0, 12),
        ];
        let ng = nginx_conf(Path::new("/tmp/x"), vip, &ups);
        let hp = haproxy_conf(vip, &ups);
        for conf in [&ng, &hp] {
            assert!(conf.contains("198.18.0.11:8080") && conf.contains("198.18.0.12:8080"));
            // Every dotted quad in the file is a lab address.
            for word in conf.split(|c: char| !(c.is_ascii_digit() || c == '.')) {
                if word.split('.').count() == 4 && word.parse::<std::net::Ipv4Addr>().is_ok() {
                    assert!(word.starts_with("198.18.0."), "{word} in\n{conf}");
                }
            }
        }
        assert!(ng.contains("listen 198.18.0.100:8081") && ng.contains("worker_processes 1;"));
        assert!(hp.contains("bind 198.18.0.100:8082") && hp.contains("nbthread 1"));
    }

    fn rows_for(records: &[Record]) -> Vec<Row> {
        records
            .iter()
            .map(|r| Row {
                record: r.clone(),
                requests: 100,
                errors: 0,
                conns_per_req: 1.0,
                bpf_us_per_req: 0.0,
                failed_runs: 0,
            })
            .collect()
    }

    #[test]
    fn report_states_the_ratios_against_nginx() {
        let mib = 1 << 20;
        let mut recs = Vec::new();
        for mode in ConnMode::ALL {
            recs.push(record(Config::Handoff, mib, mode, 1200.0, 2.0));
            recs.push(record(Config::Nginx, mib, mode, 400.0, 300.0));
            recs.push(record(Config::Relay, mib, mode, 380.0, 280.0));
        }
        let md = markdown(&plan(&[mib]), &rows_for(&recs), &["a note".into()]);
        assert!(
            md.contains("| 1 MiB | keepalive | handoff | 1200 | 3.00x |"),
            "{md}"
        );
        assert!(
            md.contains("nginx 300.0 µs, handoff 2.00 µs: 150.00x less"),
            "{md}"
        );
        assert!(md.contains("1 MiB keepalive 3.00x"), "{md}");
        assert!(md.contains("Relay throughput / nginx (target: at least 0.85x everywhere): 1 MiB keepalive 0.95x"), "{md}");
        assert!(md.contains("softirq"), "{md}");
        assert!(md.contains("- a note"), "{md}");
        let no_relay: Vec<Record> = recs
            .iter()
            .filter(|r| r.config != Config::Relay)
            .cloned()
            .collect();
        let md = markdown(&plan(&[mib]), &rows_for(&no_relay), &[]);
        assert!(md.contains("no relay measurements"), "{md}");
    }

    #[test]
    fn chart_has_a_panel_per_mode_and_a_line_per_config() {
        let sizes = [1 << 10, 1 << 20];
        let mut recs = Vec::new();
        for (k, c) in Config::ALL.into_iter().enumerate() {
            for &s in &sizes {
                for m in ConnMode::ALL {
                    recs.push(record(c, s, m, 100.0 * (k + 1) as f64, 1.0));
                }
            }
        }
        // A failed run (0 req/s) must not break the log scale.
        recs.push(record(Config::Direct, 8 << 20, ConnMode::Close, 0.0, 0.0));
        let svg = render_svg(&plan(&sizes), &recs).expect("svg");
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        for c in Config::ALL {
            // plotters puts each text on its own line.
            assert!(
                svg.contains(&format!("\n{}\n</text>", c.name())),
                "legend {}",
                c.name()
            );
        }
        assert!(svg.contains("keep-alive") && svg.contains("Connection: close"));
        assert!(svg.contains("\n1 MiB\n</text>"));
        assert!(render_svg(&plan(&sizes), &[]).is_ok());
        assert!(render_svg(&plan(&[1024]), &recs).is_ok());
    }

    #[test]
    fn progress_bar_fills_and_estimates() {
        let l = progress_line(12, 60, "nginx 1MiB close", Duration::from_secs(62));
        assert!(l.starts_with("[======>"), "{l}");
        assert!(
            l.contains("] 12/60 nginx 1MiB close (1:02 elapsed, ~4:08 left)"),
            "{l}"
        );
        let end = progress_line(60, 60, "done", Duration::from_secs(5));
        assert!(end.starts_with(&format!("[{}]", "=".repeat(30))), "{end}");
        assert!(progress_line(0, 0, "x", Duration::ZERO).contains("0/0"));
    }
}
