//! `baton`: the one binary. Daemons (`front`, `back`), configuration checks
//! (`check`), the network-namespace testbed (`lab`), the demo and the
//! benchmarks.
//!
//! Layer: the top, a thin command line. The daemons are `baton-daemon`, the
//! lab commands, demo, benchmarks and simulator are `baton-tools`; this crate
//! parses arguments, sets up logging and the runtime, and calls them. It also
//! holds the integration tests (`tests/`), which run this binary in labs.
//!
//! Invariant: what a subcommand does lives in those crates (or `baton-serve`
//! for `serve`); here are only flags, logging, the runtime and signals.

use baton_daemon::{back, config, front};
use baton_tools::{bench, demo, labcmd, simcmd};

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "baton",
    version,
    about = "A content-aware web cluster with kernel-level TCP handoff"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the front-end daemon (hands off with CAP_NET_ADMIN and CAP_BPF; relays without).
    Front(FrontArgs),
    /// Run the back-end daemon (needs CAP_NET_ADMIN for TCP_REPAIR).
    Back(BackArgs),
    /// Make a running front re-read its configuration file (as SIGHUP
    /// does): prints what changed, or why nothing did (exit status 1).
    Reload {
        /// The front's admin address.
        #[arg(long, default_value = "127.0.0.1:9100")]
        admin: std::net::SocketAddr,
    },
    /// Remove a stopped front's pinned forwarder (its flow table, kept
    /// frames, counters and TCX link): the program detaches, and the
    /// connections it still steered are lost.
    Unpin {
        /// The front's configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a front or back configuration file without starting anything.
    Check {
        /// The TOML file.
        file: PathBuf,
        /// Also check that this host is ready to run that daemon (run it
        /// where and as the daemon runs): the VIP and ARP settings of a
        /// back-end, the interface, privileges and BPF support of a front.
        #[arg(long)]
        host: bool,
    },
    /// Keep a front's VIP route announced in BIRD while the front serves:
    /// polls the front's `GET /serving`, enables the BIRD protocol that
    /// originates the route after `--rise` answers 200 in a row, disables it
    /// at the first failure (503, refused, timeout) and on SIGTERM/SIGINT.
    Announce(AnnounceArgs),
    /// The network-namespace testbed.
    Lab {
        #[command(subcommand)]
        cmd: labcmd::LabCmd,
    },
    /// Bring up a lab, drive real traffic through it, report, tear down.
    Demo(demo::DemoArgs),
    /// A plain HTTP static file server (the lab's origin; a baseline).
    Serve {
        /// Where to listen.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The files served.
        #[arg(long)]
        docroot: PathBuf,
    },
    /// Simulate a cluster under every distribution policy (trace-driven).
    Sim(simcmd::SimArgs),
    /// A running front's back-ends: health, load, weight, rates, errors (refreshing, or --json).
    Status(baton_tools::status::StatusArgs),
    /// Benchmarks (numbers printed and written as JSON).
    Bench {
        #[command(subcommand)]
        cmd: bench::BenchCmd,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct FrontArgs {
    /// The configuration file.
    #[arg(long, short)]
    config: PathBuf,
    /// Override `vip`.
    #[arg(long)]
    vip: Option<std::net::Ipv4Addr>,
    /// Override `port`.
    #[arg(long)]
    port: Option<u16>,
    /// Override `interface`.
    #[arg(long)]
    interface: Option<String>,
    /// Override `admin_listen`.
    #[arg(long)]
    admin_listen: Option<std::net::SocketAddr>,
    /// Replace the front running with this configuration without refusing
    /// a connection: take its listening socket over (`upgrade_socket`) once
    /// its handoffs in progress finish, and adopt its handed-off flows.
    #[arg(long)]
    takeover: bool,
}

#[derive(clap::Args, Debug, Clone)]
struct AnnounceArgs {
    /// The front's admin address.
    #[arg(long, default_value = "127.0.0.1:9100")]
    admin: std::net::SocketAddr,
    /// BIRD's control socket (`bird -s PATH`).
    #[arg(long)]
    bird_socket: PathBuf,
    /// The BIRD protocol to enable and disable (a static protocol whose
    /// route to the VIP is exported over BGP; configure it `disabled`).
    #[arg(long, default_value = "vip")]
    protocol: String,
    /// Milliseconds between polls; also each poll's timeout.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    interval_ms: u64,
    /// Answers 200 in a row before announcing.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    rise: u32,
    /// Milliseconds between re-assertions of the current state to BIRD
    /// (a restarted BIRD starts with the protocol disabled).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    reassert_ms: u64,
}

#[derive(clap::Args, Debug, Clone)]
struct BackArgs {
    /// The configuration file.
    #[arg(long, short)]
    config: PathBuf,
    /// Override `docroot`.
    #[arg(long)]
    docroot: Option<PathBuf>,
    /// Override `control_listen`.
    #[arg(long)]
    control_listen: Option<std::net::SocketAddrV4>,
    /// Override `vip`.
    #[arg(long)]
    vip: Option<std::net::Ipv4Addr>,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn runtime(workers: usize) -> Result<tokio::runtime::Runtime> {
    let mut b = if workers == 1 {
        // One thread: no cross-thread wakeups on the handoff path.
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if workers > 1 {
        b.worker_threads(workers);
    }
    b.enable_all().build().context("starting the async runtime")
}

/// The front's configuration: the file, with the command line's overrides, validated.
fn load_front(a: &FrontArgs) -> Result<config::FrontConfig> {
    let mut cfg = config::FrontConfig::load(&a.config)?;
    if let Some(v) = a.vip {
        cfg.vip = v;
    }
    if let Some(v) = a.port {
        cfg.port = v;
    }
    if let Some(v) = &a.interface {
        cfg.interface = v.clone();
    }
    if let Some(v) = a.admin_listen {
        cfg.admin_listen = v;
    }
    cfg.validate()
        .with_context(|| format!("invalid configuration {}", a.config.display()))?;
    Ok(cfg)
}

fn run_front(a: FrontArgs) -> Result<()> {
    baton_sys::ignore_sighup()?;
    let cfg = load_front(&a)?;
    let running = baton_daemon::upgrade::probe(&cfg.upgrade_socket)?;
    match (&running, a.takeover) {
        (Some(_), false) => anyhow::bail!(
            "a front is already running on {} (upgrade_socket): stop it first, or start this one \
             with --takeover to replace it without refusing a connection",
            cfg.upgrade_socket.display()
        ),
        (None, true) => anyhow::bail!(
            "--takeover: no front answers on {} (upgrade_socket); start without --takeover",
            cfg.upgrade_socket.display()
        ),
        _ => {}
    }
    // The predecessor hands over only once its handoffs in progress are
    // done: nothing is attached or adopted before that.
    let inherited = match running {
        Some(stream) => {
            let wait = baton_daemon::upgrade::takeover_wait(
                config::ms(cfg.limits.head_timeout_ms),
                config::ms(cfg.limits.handoff_timeout_ms),
            );
            let (fds, ack) = baton_daemon::upgrade::take_over(stream, wait)?;
            tracing::info!(
                listeners = fds.len(),
                "took the listeners over from the running front"
            );
            // The predecessor serves again unless this front says it
            // serves: check what can be checked before going on.
            let addr = std::net::SocketAddr::from((cfg.vip, cfg.port));
            let tls_addr = cfg
                .tls
                .as_ref()
                .map(|t| std::net::SocketAddr::from((cfg.vip, t.port)));
            let (mut http, mut https) = (None, None);
            for fd in fds {
                let l = std::net::TcpListener::from(fd);
                let got = l.local_addr()?;
                if got == addr {
                    http = Some(l);
                } else if Some(got) == tls_addr {
                    https = Some(l);
                } else {
                    // An HTTPS port this configuration no longer serves:
                    // closed with the predecessor's copy.
                    tracing::warn!(%got, "not taking over a listener this configuration does not serve");
                }
            }
            let Some(http) = http else {
                anyhow::bail!(
                    "the running front does not listen on {addr} as this configuration does: not taking over"
                );
            };
            Some((http, https, ack))
        }
        None => None,
    };
    // Everything privileged happens on this thread before the runtime's
    // workers exist (capabilities are per thread; they inherit the rest).
    let workers = cfg.workers;
    let admin = cfg.admin_listen;
    let front = front::Front::new(cfg)?;
    // A current-thread runtime starts no thread; tokio binds the sockets.
    let binder = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (listeners, predecessor) = match inherited {
        Some((http, Some(https), ack)) => (
            front::Listeners {
                http,
                https: Some(https),
            },
            Some(ack),
        ),
        // A predecessor without HTTPS (or on another HTTPS port).
        Some((http, None, ack)) => (
            front::Listeners {
                http,
                https: binder.block_on(async { front.listen_https() })?,
            },
            Some(ack),
        ),
        None => (binder.block_on(async { front.listen() })?, None),
    };
    drop(binder);
    let dropped =
        baton_daemon::privs::keep_only(&baton_daemon::privs::for_front(front.hands_off(), admin))?;
    if !dropped.is_empty() {
        tracing::info!(dropped = %dropped.join(","), "capabilities dropped after start-up");
    }
    on_worker(runtime(workers)?, async move {
        front.set_source(Box::new(move || load_front(&a)));
        // SIGHUP reloads the configuration, as `POST /reload` does.
        let reloading = std::sync::Arc::clone(&front);
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                let _ = reloading.reload();
            }
        });
        front.run(shutdown_signal(), listeners, predecessor).await
    })
}

fn reload(admin: std::net::SocketAddr) -> Result<()> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(10);
    let mut s = std::net::TcpStream::connect_timeout(&admin, timeout)
        .with_context(|| format!("connecting to the front's admin address {admin}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(
        format!("POST /reload HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )?;
    let mut answer = Vec::new();
    s.take(1 << 20).read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let ok = head.starts_with("HTTP/1.1 200");
    print!("{body}");
    if ok {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "{}",
            head.lines().next().unwrap_or("no answer")
        ))
    }
}

fn unpin(path: &std::path::Path) -> Result<()> {
    let cfg = config::FrontConfig::load(path)?;
    if baton_daemon::upgrade::probe(&cfg.upgrade_socket)?.is_some() {
        anyhow::bail!(
            "a front is running on {} (upgrade_socket): stop it first",
            cfg.upgrade_socket.display()
        );
    }
    let Some((dir, _)) = cfg.pins() else {
        println!("pin_dir = \"\": this front pins nothing");
        return Ok(());
    };
    let removed = baton_bpf::Forwarder::unpin(&cfg.interface, &dir).with_context(|| {
        format!(
            "removing the pins of {} under {}",
            cfg.interface,
            dir.display()
        )
    })?;
    if removed.is_empty() {
        println!(
            "nothing pinned for {} under {}",
            cfg.interface,
            dir.display()
        );
    }
    for r in removed {
        println!("removed {}", r.display());
    }
    Ok(())
}

/// Runs a daemon's main future as a task. With several worker threads the
/// future given to `block_on` runs on the calling thread, which is not a
/// worker: every task it spawns (one per accepted connection) would go
/// through the runtime's shared queue and wake a parked worker, a
/// cross-thread wake-up per connection. Spawned from a worker, a new task
/// starts on that worker.
fn on_worker<F>(rt: tokio::runtime::Runtime, daemon: F) -> Result<()>
where
    F: std::future::Future<Output = Result<()>> + Send + 'static,
{
    rt.block_on(async {
        match tokio::spawn(daemon).await {
            Ok(r) => r,
            // As if the future had run on this thread.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(anyhow::anyhow!("the daemon's task failed: {e}")),
        }
    })
}

/// The back-end's configuration: the file, with the command line's overrides, validated.
fn load_back(a: &BackArgs) -> Result<config::BackConfig> {
    let mut cfg = config::BackConfig::load(&a.config)?;
    if let Some(v) = &a.docroot {
        cfg.docroot = v.clone();
    }
    if let Some(v) = a.control_listen {
        cfg.control_listen = v;
    }
    if let Some(v) = a.vip {
        cfg.vip = v;
    }
    cfg.validate()
        .with_context(|| format!("invalid configuration {}", a.config.display()))?;
    Ok(cfg)
}

fn run_back(a: BackArgs) -> Result<()> {
    baton_sys::ignore_sighup()?;
    let cfg = load_back(&a)?;
    // Before the runtime's workers exist: they inherit the reduced sets.
    let dropped = baton_daemon::privs::keep_only(&baton_daemon::privs::for_back())?;
    if !dropped.is_empty() {
        tracing::info!(dropped = %dropped.join(","), "capabilities dropped at start-up");
    }
    let source: back::BackSource = Box::new(move || load_back(&a));
    on_worker(
        runtime(cfg.workers)?,
        back::run(cfg, shutdown_signal(), Some(source)),
    )
}

fn announce(a: AnnounceArgs) -> Result<()> {
    let settings = baton_daemon::announce::Settings {
        admin: a.admin,
        bird_socket: a.bird_socket,
        protocol: a.protocol,
        interval: std::time::Duration::from_millis(a.interval_ms),
        rise: a.rise,
        reassert: std::time::Duration::from_millis(a.reassert_ms),
    };
    runtime(1)?.block_on(baton_daemon::announce::run(settings, shutdown_signal()))
}

fn serve(listen: std::net::SocketAddr, docroot: PathBuf) -> Result<()> {
    let files = baton_serve::StaticFiles::new(&docroot)
        .with_context(|| format!("docroot {}", docroot.display()))?;
    runtime(0)?.block_on(async {
        let l = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        tracing::info!(%listen, docroot = %docroot.display(), "serving plain HTTP");
        baton_serve::serve_listener(l, std::sync::Arc::new(files), shutdown_signal()).await;
        Ok(())
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    if let Err(e) = baton_sys::raise_nofile_limit() {
        tracing::warn!(error = %e, "could not raise the open-file limit");
    }
    let r = match cli.cmd {
        Cmd::Lab { cmd } => {
            return match labcmd::run(cmd) {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                Err(e) => {
                    eprintln!("baton: error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Sim(a) => simcmd::run(&a),
        Cmd::Status(a) => baton_tools::status::run(&a),
        Cmd::Serve { listen, docroot } => serve(listen, docroot),
        Cmd::Demo(a) => demo::require_root("baton demo").and_then(|()| demo::run(&a)),
        Cmd::Bench { cmd } => demo::require_root("baton bench").and_then(|()| bench::run(cmd)),
        Cmd::Front(a) => run_front(a),
        Cmd::Announce(a) => announce(a),
        Cmd::Unpin { config } => unpin(&config),
        Cmd::Reload { admin } => reload(admin),
        Cmd::Back(a) => run_back(a),
        Cmd::Check { file, host: true } => match config::check(&file) {
            Err(e) => Err(e),
            Ok(c) => {
                let findings = baton_daemon::hostcheck::run(&c);
                for f in &findings {
                    println!("{} {}", if f.ok { "ok  " } else { "FAIL" }, f.what);
                }
                let failed = findings.iter().filter(|f| !f.ok).count();
                if failed == 0 {
                    println!("{}: valid, and this host is ready for it", file.display());
                    Ok(())
                } else {
                    Err(anyhow::anyhow!(
                        "{}: this host is not ready ({failed} of {} checks failed)",
                        file.display(),
                        findings.len()
                    ))
                }
            }
        },
        Cmd::Check { file, host: false } => config::check(&file).map(|c| match c {
            config::AnyConfig::Front(f) => {
                println!(
                    "{}: valid front-end configuration ({} back-ends, VIP {}:{})",
                    file.display(),
                    f.backends.len(),
                    f.vip,
                    f.port
                );
                println!(
                    "  packets to the VIP's ports that this front does not know: {} (flows.unknown = \"{}\"; a reload changes it)",
                    match f.flows.unknown {
                        config::UnknownFlows::Drop => "dropped, the client retransmits",
                        config::UnknownFlows::Pass => "left to the kernel, which resets them",
                    },
                    f.flows.unknown.as_str()
                );
                // Validation loaded the certificates already; say what they are.
                if let Some(t) = &f.tls {
                    if let Ok(tls) = baton_daemon::tls::ServerTls::load(t) {
                        println!("  HTTPS on {}:{}", f.vip, t.port);
                        for c in &tls.certificates {
                            println!("  certificate {c}");
                        }
                        for w in &tls.warnings {
                            println!("  warning: {w}");
                        }
                    }
                }
            }
            config::AnyConfig::Back(b) => println!(
                "{}: valid back-end configuration (control {}, VIP {})",
                file.display(),
                b.control_listen,
                b.vip
            ),
        }),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
