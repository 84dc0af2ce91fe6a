//! `baton lab`: the command-line face of `baton-lab`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};

/// `baton lab ...`
#[derive(Subcommand, Debug)]
pub enum LabCmd {
    /// Create the namespaces, start the daemons, return when the VIP serves.
    Up {
        /// The lab name (1 to 12 of a-z, 0-9, -).
        #[arg(long, default_value = "baton")]
        name: String,
        /// How many back-ends.
        #[arg(long, default_value_t = 2)]
        backends: usize,
        /// How many fronts (1 to 16). 1: today's topology. From 2: a router
        /// between the client and fronts front1..frontN spreads the VIP by
        /// ECMP (a resilient next-hop group); each front announces the VIP
        /// over BGP (BIRD) while its /serving says so.
        #[arg(long, default_value_t = 1)]
        fronts: usize,
        /// The back-ends' document root (default: generated sample files).
        #[arg(long)]
        docroot: Option<PathBuf>,
        /// Extra TOML for the front's configuration (top-level keys and tables
        /// such as `[limits]`).
        #[arg(long)]
        front_extra: Option<String>,
        /// Extra TOML appended to every back-end's configuration.
        #[arg(long)]
        back_extra: Option<String>,
        /// Add an origin host (198.18.0.5, `baton serve` on the docroot) and
        /// put every back-end in caching mode in front of it.
        #[arg(long)]
        origin: bool,
        /// Limit what the origin sends to this tc rate, e.g. 100mbit (implies --origin).
        #[arg(long, value_name = "RATE")]
        origin_rate: Option<String>,
        /// Each back-end's cache size in bytes (implies --origin; default 64 MiB).
        #[arg(long, value_name = "N")]
        cache_bytes: Option<u64>,
        /// The front's group of each back-end, in order (comma separated;
        /// missing ones: `default`), for routing rules in --front-extra.
        #[arg(long, value_delimiter = ',')]
        backend_groups: Vec<String>,
        /// Serve HTTPS on the VIP's port 443 too, with a throwaway CA and a
        /// certificate for baton.test and the VIP (`status --json` gives
        /// `tls_port`, `ca_file` and `server_name`).
        #[arg(long)]
        tls: bool,
    },
    /// Print the lab's hosts and addresses.
    Status {
        /// The lab name.
        #[arg(long, default_value = "baton")]
        name: String,
        /// Print JSON (the only format so far; accepted for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Run a command in one host's namespace; its exit code passes through.
    Exec {
        /// The lab name.
        #[arg(long, default_value = "baton")]
        name: String,
        /// client, front, back1 ... backN, origin (if the lab has one), br;
        /// with several fronts router and front1 ... frontN (front: front1).
        host: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Stop one host's daemon with a signal and start it again (same command
    /// line, config and log); return once the lab serves again.
    Restart {
        /// The lab name.
        #[arg(long, default_value = "baton")]
        name: String,
        /// front, back1 ... backN, origin (if the lab has one); with several
        /// fronts front1 ... frontN too (front: front1).
        host: String,
        /// kill: SIGKILL. term: SIGTERM, up to the daemon's drain timeout
        /// (plus 5 s) to exit, then SIGKILL. upgrade (front only): start a
        /// successor with --takeover while the old front runs, wait for the
        /// old one to exit.
        #[arg(long, value_enum, default_value_t = Signal::Term)]
        signal: Signal,
        /// Print what was done as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop the daemons and remove everything the lab made.
    Down {
        /// The lab name.
        #[arg(long, default_value = "baton")]
        name: String,
    },
    /// The router's agent in a lab with several fronts (started by `lab
    /// up`): keeps the kernel's resilient next-hop group for the VIP equal
    /// to the fronts BIRD has routes from.
    #[command(hide = true)]
    EcmpSync {
        /// The router's BIRD control socket.
        #[arg(long)]
        bird_socket: PathBuf,
        /// The VIP.
        #[arg(long)]
        vip: std::net::Ipv4Addr,
        /// The router's device on the fronts' segment.
        #[arg(long)]
        dev: String,
        /// Every front's address, in order (front K is next-hop id K).
        #[arg(long, value_delimiter = ',', required = true)]
        next_hops: Vec<std::net::Ipv4Addr>,
        /// The group's next-hop id.
        #[arg(long, default_value_t = baton_lab::fronts::ECMP_GROUP)]
        group: u32,
        /// The group's buckets.
        #[arg(long, default_value_t = baton_lab::fronts::ECMP_BUCKETS)]
        buckets: u32,
        /// Seconds a bucket must be idle before it may move to a new member.
        #[arg(long, default_value_t = baton_lab::fronts::ECMP_IDLE_TIMER_S)]
        idle_timer: u32,
        /// Milliseconds between reads of BIRD's routes.
        #[arg(long, default_value_t = baton_lab::fronts::ECMP_POLL_MS)]
        interval_ms: u64,
    },
}

/// How `baton lab restart` ends the running daemon.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGKILL.
    Kill,
    /// SIGTERM; SIGKILL after the daemon's drain timeout.
    Term,
    /// The front hands its listening sockets to a successor (`--takeover`).
    Upgrade,
}

impl From<Signal> for baton_lab::RestartSignal {
    fn from(s: Signal) -> Self {
        match s {
            Signal::Kill => baton_lab::RestartSignal::Kill,
            Signal::Term => baton_lab::RestartSignal::Term,
            Signal::Upgrade => baton_lab::RestartSignal::Upgrade,
        }
    }
}

/// One line about a restart, for people.
pub fn describe_restart(r: &baton_lab::RestartReport) -> String {
    let secs = |ms: u64| format!("{:.2} s", ms as f64 / 1000.0);
    let stop = match (r.signal, r.old_running) {
        (baton_lab::RestartSignal::Upgrade, _) => format!(
            "started pid {} with --takeover; old pid {} gone after {}",
            r.new_pid,
            r.old_pid,
            secs(r.stopped_ms)
        ),
        (_, false) => format!(
            "pid {} was not running; started pid {}",
            r.old_pid, r.new_pid
        ),
        (s, true) => format!(
            "{} to pid {}{}, gone after {}; started pid {}",
            if s == baton_lab::RestartSignal::Kill {
                "SIGKILL"
            } else {
                "SIGTERM"
            },
            r.old_pid,
            if r.escalated {
                " (SIGKILL after its drain timeout)"
            } else {
                ""
            },
            secs(r.stopped_ms),
            r.new_pid
        ),
    };
    format!(
        "lab {} {}: {stop}; serving again after {}",
        r.name,
        r.host,
        secs(r.serving_ms)
    )
}

/// Runs a lab command; returns the process exit code.
pub fn run(cmd: LabCmd) -> Result<i32> {
    match cmd {
        LabCmd::Up {
            name,
            backends,
            fronts,
            docroot,
            front_extra,
            back_extra,
            origin,
            origin_rate,
            cache_bytes,
            backend_groups,
            tls,
        } => {
            let mut spec = baton_lab::LabSpec::new(&name, self_exe()?);
            spec.tls = tls;
            spec.backends = backends;
            spec.fronts = fronts;
            spec.docroot = docroot;
            spec.front_extra = front_extra;
            spec.back_extra = back_extra;
            spec.backend_groups = backend_groups;
            if origin || origin_rate.is_some() || cache_bytes.is_some() {
                spec.origin = Some(baton_lab::OriginSpec {
                    rate: origin_rate,
                    cache_bytes: cache_bytes.unwrap_or(baton_lab::OriginSpec::DEFAULT_CACHE_BYTES),
                });
            }
            let info = baton_lab::up(&spec).with_context(|| format!("lab {name}"))?;
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(0)
        }
        LabCmd::Status { name, json: _ } => {
            let info = baton_lab::status(&name).with_context(|| format!("lab {name}"))?;
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(0)
        }
        LabCmd::Exec { name, host, cmd } => {
            baton_lab::exec(&name, &host, &cmd).with_context(|| format!("lab {name}, host {host}"))
        }
        LabCmd::Restart {
            name,
            host,
            signal,
            json,
        } => {
            let signal = baton_lab::RestartSignal::from(signal);
            let report =
                baton_lab::restart(&name, &host, signal).with_context(|| format!("lab {name}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", describe_restart(&report));
            }
            Ok(0)
        }
        LabCmd::Down { name } => {
            baton_lab::down(&name).with_context(|| format!("lab {name}"))?;
            Ok(0)
        }
        LabCmd::EcmpSync {
            bird_socket,
            vip,
            dev,
            next_hops,
            group,
            buckets,
            idle_timer,
            interval_ms,
        } => {
            if next_hops.is_empty() || next_hops.len() > baton_lab::MAX_FRONTS {
                anyhow::bail!("--next-hops: 1 to {} addresses", baton_lab::MAX_FRONTS);
            }
            let g = crate::ecmp::Group {
                prefix: format!("{vip}/32"),
                dev,
                hops: next_hops,
                id: group,
                buckets,
                idle_timer,
            };
            crate::ecmp::run(
                &g,
                &bird_socket,
                std::time::Duration::from_millis(interval_ms.max(10)),
            )?;
            Ok(0)
        }
    }
}

/// This binary, to start as the lab's daemons.
pub fn self_exe() -> Result<PathBuf> {
    std::env::current_exe().context("locating the baton binary")
}
