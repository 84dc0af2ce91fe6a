//! `restart`: one daemon of a running lab stopped with a signal and started
//! again with the same command line, config and log; returns once the lab
//! serves again.
//!
//! The state file records the new process as soon as it runs, so `down`
//! ends it whatever happens next (and `down` ends every process in the lab's
//! namespaces anyway). Restarts of one lab are serialized by a `flock` on
//! `restart.lock` in the lab directory.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Child;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{self, ADMIN_LISTEN, DIRECT_PORT, VIP_PORT};
use crate::daemon::{self, ProcId, Victim};
use crate::{
    absent_or_incomplete, check_children, cmd, daemon_argv, fronts, host_order, is_front, lab_dir,
    lab_namespaces, read_state, record, resolve_host, start_daemon, sys, validate_name,
    wait_fronts, wait_origin, wait_ready, write_state, FrontProbe, LabError, READY_POLL,
    READY_TIMEOUT, VIP,
};

/// What a daemon may take beyond its drain timeout to exit after SIGTERM
/// (and the old front of an upgrade after its successor took over).
const STOP_MARGIN: Duration = Duration::from_secs(5);

/// How `restart` ends the running daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestartSignal {
    /// SIGKILL: the daemon gets no chance to clean up.
    Kill,
    /// SIGTERM, then up to the daemon's `drain_timeout_ms` (plus a margin)
    /// for it to exit, then SIGKILL.
    Term,
    /// The front only: a successor started with `--takeover` while the old
    /// front runs takes its listening sockets over; the old one exits once
    /// drained.
    Upgrade,
}

impl RestartSignal {
    /// `kill`, `term` or `upgrade`.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartSignal::Kill => "kill",
            RestartSignal::Term => "term",
            RestartSignal::Upgrade => "upgrade",
        }
    }
}

impl fmt::Display for RestartSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RestartSignal {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kill" => Ok(RestartSignal::Kill),
            "term" => Ok(RestartSignal::Term),
            "upgrade" => Ok(RestartSignal::Upgrade),
            _ => Err(format!(
                "unknown restart signal {s:?} (expected kill, term or upgrade)"
            )),
        }
    }
}

/// What `restart` did; `baton lab restart --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartReport {
    /// The lab name.
    pub name: String,
    /// The host whose daemon was restarted.
    pub host: String,
    /// How the old daemon was ended.
    pub signal: RestartSignal,
    /// The pid the lab had recorded for the daemon.
    pub old_pid: u32,
    /// Whether that daemon still ran when the restart began (if not, it
    /// was only started).
    pub old_running: bool,
    /// `term` only: the daemon outlived its drain timeout and got SIGKILL.
    pub escalated: bool,
    /// The new daemon's pid (now in the lab's state).
    pub new_pid: u32,
    /// Milliseconds from the signal (`upgrade`: from the successor's start)
    /// until the old daemon was gone.
    pub stopped_ms: u64,
    /// Milliseconds from the same moment until the lab served again.
    pub serving_ms: u64,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Restarts the daemon of `host` (`front`, `frontK`, `backK`, or `origin`
/// if the lab has one) in lab `name` with `signal`, and returns once it
/// serves again: the front's `/ready` is 200 (with several fronts, its BGP
/// session is up and the router's group holds it again) and the client
/// gets an answer from the VIP; for a back-end, it answers on its direct
/// port, every front's `/stats` shows it up on a new control channel, and
/// the client gets an answer from the VIP; the origin answers HTTP. Only
/// the host's own daemon restarts (a front's BIRD and announcer keep
/// running). Every wait is bounded; a timeout or a daemon that dies says so
/// with the end of its log.
pub fn restart(name: &str, host: &str, signal: RestartSignal) -> Result<RestartReport, LabError> {
    validate_name(name)?;
    let cannot = |reason: String| LabError::CannotRestart {
        name: name.to_owned(),
        host: host.to_owned(),
        reason,
    };
    let curl = cmd::curl()
        .ok_or_else(|| LabError::InvalidSpec("curl is needed for the readiness checks".into()))?;
    let labdir = lab_dir(name);
    let _lock = match lock(&labdir) {
        Ok(lock) => lock,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(absent_or_incomplete(name)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            return Err(cannot(
                "another `baton lab restart` of this lab is running".into(),
            ))
        }
        Err(e) => return Err(LabError::io("lock", labdir.join("restart.lock"), e)),
    };
    let Some(mut state) = read_state(name)? else {
        return Err(absent_or_incomplete(name));
    };
    // `front` is front1 when there are several.
    let host = resolve_host(host, state.info.fronts);
    let host = host.as_str();
    let fronts_n = state.info.fronts;

    // Only hosts' own daemons: the helpers (BIRD, announcers, the agent)
    // are not hosts.
    let own = state
        .daemons
        .get(host)
        .copied()
        .filter(|_| fronts::helper_of(host).is_none());
    let Some(old) = own else {
        let mut with_daemon: Vec<&String> = state
            .daemons
            .keys()
            .filter(|k| fronts::helper_of(k).is_none())
            .collect();
        with_daemon.sort_by_key(|h| host_order(h));
        let known = with_daemon
            .iter()
            .map(|h| h.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(if state.info.hosts.contains_key(host) {
            cannot(format!("it runs no daemon; hosts with one: {known}"))
        } else {
            LabError::UnknownHost {
                lab: name.to_owned(),
                host: host.to_owned(),
                known,
            }
        });
    };
    let is_back = host.starts_with("back");
    if signal == RestartSignal::Upgrade {
        if !is_front(host) {
            return Err(cannot(
                "--signal upgrade is for the front only: a back-end has no successor to hand \
                 its sockets to; use --signal term or --signal kill"
                    .into(),
            ));
        }
        if state.info.upgrade_socket.is_none() {
            return Err(cannot(format!(
                "the front's config has no upgrade_socket, so no successor can take over \
                 (a lab made by an older baton; see {}); \
                 use --signal term or --signal kill",
                labdir.join(format!("{host}.toml")).display()
            )));
        }
    }

    // The namespaces the daemon and the readiness checks run in.
    let present: BTreeSet<String> = lab_namespaces(name)?.into_iter().collect();
    let netns_of = |h: &str| -> Result<String, LabError> {
        state
            .info
            .hosts
            .get(h)
            .map(|i| i.netns.clone())
            .filter(|ns| present.contains(ns))
            .ok_or_else(|| LabError::Incomplete {
                name: name.to_owned(),
                detail: format!("namespace {name}-{h} is missing"),
            })
    };
    let netns = netns_of(host)?;
    // The fronts whose view of the lab the readiness checks read: the one
    // restarted, or all of them.
    let front_hosts: Vec<String> = if is_front(host) {
        vec![host.to_owned()]
    } else {
        (1..=fronts_n)
            .map(|k| crate::topology::front_name(k, fronts_n))
            .collect()
    };
    let front_nss = front_hosts
        .iter()
        .map(|h| netns_of(h))
        .collect::<Result<Vec<_>, _>>()?;
    let client_ns = netns_of("client")?;
    let router_ns = if fronts_n > 1 {
        Some(netns_of("router")?)
    } else {
        None
    };
    let info = state.info.hosts.get(host);
    let ip = info.map_or(Ipv4Addr::UNSPECIFIED, |i| i.ip);
    let log = info
        .and_then(|i| i.log.clone())
        .unwrap_or_else(|| labdir.join(format!("{host}.log")));
    let drain = info
        .and_then(|i| i.config.as_deref())
        .and_then(|c| fs::read_to_string(c).ok())
        .map_or(config::DEFAULT_DRAIN, |text| {
            config::drain_timeout(&text) + config::drain_withdraw(&text)
        });
    let mut argv = daemon_argv(&state, host)?;
    if signal == RestartSignal::Upgrade {
        argv.push(OsString::from("--takeover"));
    }

    let old_running = old.alive();
    if signal == RestartSignal::Upgrade && !old_running {
        return Err(cannot(format!(
            "the front (pid {}) is not running: there is nothing to take over; \
             use --signal term to start it",
            old.pid
        )));
    }
    // How many control channels the front has seen to this back-end: the
    // restarted one must be a new one.
    let mut baselines = Vec::new();
    for ns in &front_nss {
        baselines.push(if is_back {
            channel(ns, curl, host)?
                .filter(|c| c.handoff)
                .map(|c| c.connects)
        } else {
            None
        });
    }

    let t0 = Instant::now();
    let victims: Vec<Victim> = Victim::group(old).into_iter().collect();
    let mut escalated = false;
    let survivors = match signal {
        RestartSignal::Kill => daemon::kill(&victims),
        RestartSignal::Term => {
            let stopped = daemon::stop(&victims, libc::SIGTERM, drain + STOP_MARGIN);
            escalated = stopped.escalated;
            stopped.survivors
        }
        RestartSignal::Upgrade => Vec::new(),
    };
    if !survivors.is_empty() {
        return Err(cannot(survivors.join("; ")));
    }
    let mut stopped_ms = millis(t0.elapsed());

    // An upgrade's new front is its successor: say so when it dies.
    let named = |e: LabError| match e {
        LabError::DaemonExited {
            host,
            status,
            log,
            tail,
        } if signal == RestartSignal::Upgrade => LabError::DaemonExited {
            host: format!("{host} successor (started with --takeover)"),
            status,
            log,
            tail,
        },
        e => e,
    };
    let mut children: Vec<(String, Child, ProcId)> = Vec::new();
    start_daemon(host, &netns, &argv, &log, &mut children, &mut state).map_err(named)?;
    let new_pid = children.first().map_or(0, |(_, _, id)| id.pid);

    if signal == RestartSignal::Upgrade {
        let limit = READY_TIMEOUT + drain + STOP_MARGIN;
        if let Err(e) = wait_exit(&mut children, old, new_pid, limit, &labdir, &log) {
            if old.alive() {
                // The successor died: the old front is still the lab's.
                record(&mut state, host, old);
                let _ = write_state(&state);
            }
            return Err(named(e));
        }
        stopped_ms = millis(t0.elapsed());
    }

    if is_front(host) {
        match (
            &router_ns,
            host.strip_prefix("front").and_then(|k| k.parse().ok()),
        ) {
            (Some(router_ns), Some(k)) => {
                let probe = FrontProbe::new(&state.info, k);
                wait_fronts(
                    &mut children,
                    &[probe],
                    router_ns,
                    &client_ns,
                    &labdir,
                    curl,
                )
                .map_err(named)?
            }
            _ => {
                let front_ns = front_nss.first().map_or("", String::as_str);
                wait_ready(&mut children, front_ns, &client_ns, &labdir, curl).map_err(named)?
            }
        }
    } else if host == "origin" {
        wait_origin(&mut children, &netns, &labdir, curl)?;
    } else {
        let probe = BackProbe {
            host,
            ip,
            fronts: front_hosts
                .iter()
                .zip(&front_nss)
                .zip(baselines)
                .map(|((h, ns), b)| (h.as_str(), ns.as_str(), b))
                .collect(),
            client_ns: &client_ns,
            log: &log,
            labdir: &labdir,
        };
        wait_backend(&mut children, &probe, &labdir, curl)?;
    }

    Ok(RestartReport {
        name: name.to_owned(),
        host: host.to_owned(),
        signal,
        old_pid: old.pid,
        old_running,
        escalated,
        new_pid,
        stopped_ms,
        serving_ms: millis(t0.elapsed()),
    })
}

/// Takes the lab's restart lock (held until the file is dropped).
fn lock(labdir: &Path) -> io::Result<File> {
    if !labdir.is_dir() {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(labdir.join("restart.lock"))?;
    sys::lock(&file, false)?;
    Ok(file)
}

/// Polls until the old front `old` is gone; fails at once if its successor dies.
fn wait_exit(
    children: &mut [(String, Child, ProcId)],
    old: ProcId,
    new_pid: u32,
    limit: Duration,
    labdir: &Path,
    log: &Path,
) -> Result<(), LabError> {
    let start = Instant::now();
    loop {
        check_children(children, labdir)?;
        if !old.alive() {
            return Ok(());
        }
        if start.elapsed() >= limit {
            return Err(LabError::NotReady {
                what: format!(
                    "the old front (pid {}) still runs: its successor (pid {new_pid}, \
                     started with --takeover) did not take over; both run now",
                    old.pid
                ),
                waited: start.elapsed(),
                log: log.to_owned(),
                tail: daemon::log_tail(log),
            });
        }
        std::thread::sleep(READY_POLL);
    }
}

/// A back-end as the front's `/stats` shows it.
#[derive(Debug, Clone, Copy)]
struct Channel {
    /// Whether the front counts it up.
    up: bool,
    /// Control channels established so far.
    connects: u64,
    /// Whether the front hands connections off to it (else: relays).
    handoff: bool,
}

/// Back-end `host` in the front's `/stats`; `None` if the front does not
/// answer or does not list it.
fn channel(front_ns: &str, curl: &Path, host: &str) -> Result<Option<Channel>, LabError> {
    let url = format!("http://{ADMIN_LISTEN}/stats");
    let Some(body) = cmd::http_get(front_ns, curl, &url)? else {
        return Ok(None);
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
        return Ok(None);
    };
    let Some(b) = v["backends"]
        .as_array()
        .and_then(|a| a.iter().find(|b| b["name"] == host))
    else {
        return Ok(None);
    };
    Ok(Some(Channel {
        up: b["up"].as_bool().unwrap_or(false),
        connects: b["connects"].as_u64().unwrap_or(0),
        handoff: v["handoff"].as_bool() == Some(true) && b["mode"] == "handoff",
    }))
}

/// What [`wait_backend`] checks.
struct BackProbe<'a> {
    host: &'a str,
    ip: Ipv4Addr,
    /// Each front (host, netns) with its channel count before the restart
    /// (handoff back-ends).
    fronts: Vec<(&'a str, &'a str, Option<u64>)>,
    client_ns: &'a str,
    log: &'a Path,
    labdir: &'a Path,
}

/// Polls until the back-end answers on its direct port, every front's
/// `/stats` shows it up (on a channel newer than its baseline), and the
/// client gets an answer from the VIP; fails at once if the back-end dies.
fn wait_backend(
    children: &mut [(String, Child, ProcId)],
    p: &BackProbe<'_>,
    labdir: &Path,
    curl: &Path,
) -> Result<(), LabError> {
    let start = Instant::now();
    let direct_url = format!("http://{}:{DIRECT_PORT}/", p.ip);
    let vip_url = format!("http://{VIP}:{VIP_PORT}/");
    let mut serves = false;
    let mut joined = vec![false; p.fronts.len()];
    loop {
        check_children(children, labdir)?;
        let (_, first_ns, _) = p.fronts.first().copied().unwrap_or(("", "", None));
        if !serves {
            serves = cmd::http_answers(first_ns, curl, &direct_url)?;
        }
        for (i, (_, ns, baseline)) in p.fronts.iter().enumerate() {
            if serves && !joined[i] {
                joined[i] = channel(ns, curl, p.host)?
                    .is_some_and(|c| c.up && baseline.is_none_or(|b| c.connects > b));
            }
        }
        let all_joined = joined.iter().all(|j| *j);
        if all_joined && cmd::http_answers(p.client_ns, curl, &vip_url)? {
            return Ok(());
        }
        if start.elapsed() >= READY_TIMEOUT {
            let not_joined = p
                .fronts
                .iter()
                .zip(&joined)
                .find(|(_, j)| !**j)
                .map(|((h, _, _), _)| *h);
            let front_log = |h: &str| p.labdir.join(format!("{h}.log"));
            let (what, log) = if !serves {
                (
                    format!("{} never answered {direct_url}", p.host),
                    p.log.to_owned(),
                )
            } else if let Some(front) = not_joined {
                (
                    format!(
                        "{front}'s /stats never showed {} up on a new control channel",
                        p.host
                    ),
                    front_log(front),
                )
            } else {
                (
                    format!("the client gets no answer from {vip_url}"),
                    front_log(p.fronts.first().map_or("front", |f| f.0)),
                )
            };
            return Err(LabError::NotReady {
                what,
                waited: start.elapsed(),
                tail: daemon::log_tail(&log),
                log,
            });
        }
        std::thread::sleep(READY_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_and_print() {
        for s in [
            RestartSignal::Kill,
            RestartSignal::Term,
            RestartSignal::Upgrade,
        ] {
            assert_eq!(s.as_str().parse::<RestartSignal>(), Ok(s));
            assert_eq!(
                serde_json::to_value(s).expect("json"),
                serde_json::Value::from(s.as_str())
            );
        }
        let e = "hup".parse::<RestartSignal>().expect_err("unknown");
        assert!(e.contains("kill, term or upgrade"), "{e}");
    }

    #[test]
    fn restart_refuses_bad_input_before_touching_anything() {
        assert!(matches!(
            restart("Bad Name", "front", RestartSignal::Term),
            Err(LabError::InvalidName { .. })
        ));
    }
}
