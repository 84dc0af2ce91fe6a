//! baton-lab: the network-namespace testbed behind `baton lab up|status|exec|down`.
//!
//! Layer: test and demo infrastructure, above the daemons (it starts the
//! `baton` binary, it does not link it). It drives iproute2 (`ip`) and
//! `sysctl` through `ip netns exec`, and `curl` for readiness checks.
//!
//! Invariants:
//! - Everything a lab makes lives in its own namespaces, `{name}-client`,
//!   `{name}-front`, `{name}-backK`, `{name}-origin` (only with an origin)
//!   and `{name}-br` (the bridge), plus `{name}-router` and
//!   `{name}-front1`..`-frontN` instead of `-front` with several fronts;
//!   veths are created from the bridge (or router) namespace straight into
//!   the host namespaces, so nothing ever appears in the root namespace.
//! - Addresses come only from 198.18.0.0/24: client .2, front .3, origin .5,
//!   backK .(10+K), VIP .100 on the front's `eth0` (/32) and on each
//!   back-end's `lo` (/32); back-ends never answer ARP for the VIP. With
//!   several fronts (see [`topology`] and [`fronts`]): router .1, frontK
//!   .(100+K) with the VIP on `lo`, and the client at 198.18.1.2 behind the
//!   router. The lab is IPv4 only.
//! - The origin (`baton serve` on the lab's docroot) serves before any
//!   back-end starts, so a caching back-end never sees its origin missing.
//! - What `up` made, `up` removes again if it fails (RAII guards), and `down`
//!   removes from any process, with or without a state file, any number of times.
//! - Processes are recorded as pid plus start time, so a stale state file can
//!   never get an unrelated process signalled.
//! - `up` makes sure `/run/baton/bpffs` is a bpffs (mounted from this
//!   process, in the root mount namespace); the front pins under the
//!   lab's `/run/baton/bpffs/lab-{name}/`, which
//!   `down` removes after the daemons stopped.
//! - `restart` stops one daemon and starts it again with the same command
//!   line, config and log, and returns once the lab serves again.
//!
//! Files, under `/run/baton/labs/{name}/`: `state.json`, `key.hex` (0600),
//! `front.toml`, `backK.toml`, `{host}.log` (`origin.log` too), `docroot/`
//! unless the spec names one, `restart.lock` once a daemon was restarted,
//! and the front's `front-upgrade.sock` while it runs. With several fronts:
//! `frontK.toml`, `frontK-upgrade.sock`, and for the helpers
//! `bird-{host}.conf|.ctl|.pid|.log`, `announce-frontK.log`, `ecmp-sync.log`.
#![deny(unsafe_code)]

mod certs;
mod cmd;
mod config;
mod daemon;
mod docroot;
mod error;
pub mod fronts;
mod pins;
mod restart;
mod sys;
pub mod topology;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use config::{ADMIN_LISTEN, CONTROL_PORT, DIRECT_PORT, ORIGIN_PORT, VIP_PORT};
pub use daemon::ProcId;
pub use docroot::{
    sample_content, sample_docroot, zipf_docroot, zipf_target, INDEX_HTML, SAMPLE_FILES,
};
pub use error::LabError;
pub use pins::{pin_dir, BPFFS};
pub use restart::{restart, RestartReport, RestartSignal};
pub use topology::{Topology, IFACE, MAX_BACKENDS, MAX_FRONTS, ORIGIN_IP, VIP};

use fronts::Helper;
use topology::{front_name, is_host_name, is_lab_netns, remove_namespaces, Role, TERM_GRACE};

/// Where labs keep their files.
pub const LABS_DIR: &str = "/run/baton/labs";
/// The longest lab name: namespace and interface names must stay short.
pub const MAX_NAME_LEN: usize = 12;
/// How long `up` waits for the lab to serve.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How often `up` polls for readiness.
const READY_POLL: Duration = Duration::from_millis(20);
/// Version of `state.json`'s layout.
const STATE_VERSION: u32 = 1;

/// What `up` builds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSpec {
    /// The lab name: 1 to 12 of `[a-z0-9-]`, starting with a letter or digit.
    pub name: String,
    /// How many back-ends (1 to [`MAX_BACKENDS`]).
    pub backends: usize,
    /// The back-ends' document root; `None` generates [`sample_docroot`] in the lab directory.
    pub docroot: Option<PathBuf>,
    /// The `baton` binary to run as `front` and `back`.
    pub baton_bin: PathBuf,
    /// TOML inserted after the top-level keys of `front.toml` (before the `[[backend]]` tables).
    pub front_extra: Option<String>,
    /// TOML appended to every `backK.toml`.
    pub back_extra: Option<String>,
    /// An origin host for caching back-ends; `None`: none.
    #[serde(default)]
    pub origin: Option<OriginSpec>,
    /// The front's group of back-end K (index K-1); missing entries: the
    /// group `default`.
    #[serde(default)]
    pub backend_groups: Vec<String>,
    /// HTTPS on the VIP's port [`TLS_PORT`] too, with a throwaway CA and a
    /// certificate for [`SERVER_NAME`] and the VIP.
    #[serde(default)]
    pub tls: bool,
    /// How many fronts (1 to [`MAX_FRONTS`]). 1: one front on the
    /// client's segment. From 2: a router between the client and the
    /// fronts, spreading the VIP over them by ECMP, each front announcing
    /// it over BGP while it serves.
    #[serde(default = "one")]
    pub fronts: usize,
}

fn one() -> usize {
    1
}

pub use certs::SERVER_NAME;

/// The HTTPS port of a lab made with `tls`.
pub const TLS_PORT: u16 = 443;

/// The lab's origin: host `origin` at [`ORIGIN_IP`] runs `baton serve` on
/// the lab's docroot at port [`ORIGIN_PORT`], and every back-end is
/// configured to fetch its misses there (`origin = ...`, `cache_bytes = ...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginSpec {
    /// Limits what the origin sends (to the back-ends) to this `tc` rate,
    /// e.g. `100mbit`, so misses cost what a distant origin costs; `None`: link speed.
    pub rate: Option<String>,
    /// The cache size written into every back-end's config.
    pub cache_bytes: u64,
}

impl OriginSpec {
    /// The cache size when none is given: 64 MiB.
    pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

    /// The URL the back-ends fetch from: `http://198.18.0.5:8080`.
    pub fn url() -> String {
        format!("http://{ORIGIN_IP}:{ORIGIN_PORT}")
    }

    fn validate(&self) -> Result<(), LabError> {
        if let Some(rate) = &self.rate {
            topology::check_rate(rate)?;
        }
        // TOML integers are i64: a larger size would make an unreadable config.
        if i64::try_from(self.cache_bytes).is_err() {
            return Err(LabError::InvalidSpec(format!(
                "cache size {} does not fit a TOML integer",
                self.cache_bytes
            )));
        }
        Ok(())
    }
}

impl Default for OriginSpec {
    /// No rate limit, [`OriginSpec::DEFAULT_CACHE_BYTES`].
    fn default() -> Self {
        OriginSpec {
            rate: None,
            cache_bytes: Self::DEFAULT_CACHE_BYTES,
        }
    }
}

impl LabSpec {
    /// The back-end count when none is given.
    pub const DEFAULT_BACKENDS: usize = 2;

    /// A spec with two back-ends, the sample docroot and no extras.
    pub fn new(name: impl Into<String>, baton_bin: impl Into<PathBuf>) -> Self {
        LabSpec {
            name: name.into(),
            backends: Self::DEFAULT_BACKENDS,
            docroot: None,
            baton_bin: baton_bin.into(),
            front_extra: None,
            back_extra: None,
            origin: None,
            backend_groups: Vec::new(),
            tls: false,
            fronts: 1,
        }
    }
}

/// One host of a running lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// Its network namespace.
    pub netns: String,
    /// Its address on `iface`.
    pub ip: Ipv4Addr,
    /// Its NIC (always `eth0`).
    pub iface: String,
    /// The MAC address of `iface`.
    pub mac: String,
    /// The daemon's pid (front, back-ends and origin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The daemon's config file (front and back-ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<PathBuf>,
    /// The daemon's log (stdout and stderr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
    /// Whether the daemon still runs (filled in by [`status`]); for the
    /// router, whether its BIRD and agent both run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    /// Daemons beside the host's own, with several fronts: `bird` (router
    /// and fronts), `announce` (fronts), `ecmp-sync` (router).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub helpers: BTreeMap<String, HelperInfo>,
}

/// A daemon beside a host's own (see [`fronts`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperInfo {
    /// Its pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Its log (stdout and stderr; BIRD logs there too).
    pub log: PathBuf,
    /// BIRD's control socket (`birdc -s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// Whether it still runs (filled in by [`status`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
}

/// A lab as `up` built it; `status` prints it as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabInfo {
    /// The virtual IP clients connect to.
    pub vip: Ipv4Addr,
    /// The port on the VIP.
    pub port: u16,
    /// How many fronts.
    #[serde(default = "one")]
    pub fronts: usize,
    /// `client`, `front`, `back1`..`backN`, and `origin` if the lab has
    /// one; with several fronts `router` and `front1`..`frontN` too, and
    /// `front` as an alias of `front1` (the same data).
    pub hosts: BTreeMap<String, HostInfo>,
    /// The lab name.
    pub name: String,
    /// The lab directory.
    pub labdir: PathBuf,
    /// The pre-shared key file.
    pub key_file: PathBuf,
    /// The back-ends' document root.
    pub docroot: PathBuf,
    /// Where the front pins its forwarder (`pin_dir` in `front.toml`; with
    /// several fronts, front1's, and frontK's is `lab-NAME/frontK`); absent
    /// in the state of a lab made by an older baton.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_dir: Option<PathBuf>,
    /// Where the front hands its listeners to a successor (`upgrade_socket`
    /// in `front.toml`; with several fronts, front1's, and frontK's is
    /// `frontK-upgrade.sock`); absent in the state of a lab made by an older baton.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_socket: Option<PathBuf>,
    /// With `--tls`: the HTTPS port on the VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_port: Option<u16>,
    /// With `--tls`: the CA certificate that signed the front's (trust it:
    /// `curl --cacert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// With `--tls`: the host name the certificate is for (it also covers
    /// the VIP): `curl --resolve NAME:443:VIP https://NAME/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// What `state.json` holds: enough for `status`, `exec` and `down` in another process.
#[derive(Debug, Serialize, Deserialize)]
struct LabState {
    version: u32,
    spec: LabSpec,
    info: LabInfo,
    /// Daemons by host name.
    daemons: BTreeMap<String, ProcId>,
}

/// Checks a lab name: 1 to 12 characters of `[a-z0-9-]`, not starting with `-`
/// (which `ip` would read as an option).
pub fn validate_name(name: &str) -> Result<(), LabError> {
    let bad = |reason| {
        Err(LabError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return bad("must be 1 to 12 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("only a-z, 0-9 and '-' are allowed");
    }
    if name.starts_with('-') {
        return bad("must start with a letter or digit");
    }
    Ok(())
}

/// The directory of lab `name` (the name must be valid).
pub fn lab_dir(name: &str) -> PathBuf {
    Path::new(LABS_DIR).join(name)
}

fn state_path(name: &str) -> PathBuf {
    lab_dir(name).join("state.json")
}

fn read_state(name: &str) -> Result<Option<LabState>, LabError> {
    let path = state_path(name);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LabError::io("read", path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| LabError::State { path, source })
}

fn write_state(state: &LabState) -> Result<(), LabError> {
    let path = state_path(&state.info.name);
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(state).map_err(|source| LabError::State {
        path: path.clone(),
        source,
    })?;
    // Write then rename: a reader never sees half a file.
    fs::write(&tmp, text).map_err(|e| LabError::io("write", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| LabError::io("rename to", &path, e))
}

/// The namespaces of lab `name` that exist now.
fn lab_namespaces(name: &str) -> Result<Vec<String>, LabError> {
    let mut v: Vec<String> = cmd::netns_list()?
        .into_iter()
        .filter(|ns| is_lab_netns(name, ns))
        .collect();
    v.sort_by_key(|ns| host_order(ns.rsplit('-').next().unwrap_or_default()));
    Ok(v)
}

/// client, router, front, front1, front2, ..., back1, back2, ... back10
/// (numerically), origin, then the bridge.
fn host_order(host: &str) -> (u8, usize, String) {
    let numbered = |prefix: &str| host.strip_prefix(prefix).and_then(|k| k.parse().ok());
    match host {
        "client" => (0, 0, String::new()),
        "router" => (1, 0, String::new()),
        "front" => (2, 0, String::new()),
        "origin" => (4, 0, String::new()),
        "br" => (5, 0, String::new()),
        _ => match (numbered("front"), numbered("back")) {
            (Some(k), _) => (2, k, String::new()),
            (None, Some(k)) => (3, k, String::new()),
            _ => (6, 0, host.to_owned()),
        },
    }
}

/// The host `host` names in a lab with `fronts` fronts: `front` is
/// `front1` when there are several.
pub(crate) fn resolve_host(host: &str, fronts: usize) -> String {
    if host == "front" && fronts > 1 {
        front_name(1, fronts)
    } else {
        host.to_owned()
    }
}

/// `info` as `up` and `status` show it: with several fronts, `front` is an
/// alias of `front1` (the same data).
fn with_alias(mut info: LabInfo) -> LabInfo {
    if info.fronts > 1 {
        if let Some(f1) = info.hosts.get("front1").cloned() {
            info.hosts.insert("front".into(), f1);
        }
    }
    info
}

/// Whether `host` runs `baton front` (`front` or `frontK`).
pub(crate) fn is_front(host: &str) -> bool {
    host == "front"
        || host
            .strip_prefix("front")
            .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
}

/// The lab a namespace belongs to, if it looks like a lab namespace.
fn lab_of_netns(ns: &str) -> Option<&str> {
    let (name, host) = ns.rsplit_once('-')?;
    ((host == "br" || is_host_name(host)) && validate_name(name).is_ok()).then_some(name)
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// Undoes a half-done `up`: ends its daemons, removes its namespaces, pins and directory.
struct UpGuard {
    name: String,
    labdir: PathBuf,
    topology: Option<Topology>,
    children: Vec<(String, Child, ProcId)>,
    armed: bool,
}

impl Drop for UpGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let victims: Vec<daemon::Victim> = self
            .children
            .iter()
            .filter_map(|(_, _, id)| daemon::Victim::group(*id))
            .collect();
        let _ = daemon::terminate(&victims, TERM_GRACE);
        for (_, child, _) in &mut self.children {
            // Reap what terminate did not (it reaps only when it sees a zombie).
            let _ = child.try_wait();
        }
        // Removes the namespaces and ends anything still inside them.
        drop(self.topology.take());
        // The front is gone: its pins can go (and the bpffs, if unused).
        let _ = pins::release(&self.name);
        let _ = fs::remove_dir_all(&self.labdir);
    }
}

/// Builds lab `spec.name`: topology, key, configs, docroot, daemons; returns
/// once a client can fetch `http://VIP/`. On any error, everything made is removed.
pub fn up(spec: &LabSpec) -> Result<LabInfo, LabError> {
    let name = spec.name.as_str();
    validate_name(name)?;
    if spec.backends == 0 || spec.backends > MAX_BACKENDS {
        return Err(LabError::InvalidSpec(format!(
            "back-end count {} is outside 1..={MAX_BACKENDS}",
            spec.backends
        )));
    }
    if spec.fronts == 0 || spec.fronts > MAX_FRONTS {
        return Err(LabError::InvalidSpec(format!(
            "front count {} is outside 1..={MAX_FRONTS}",
            spec.fronts
        )));
    }
    if spec.fronts > 1 {
        // Before anything is made: BIRD is every front's and the router's speaker.
        fronts::bird()?;
        fronts::birdc()?;
    }
    let baton_bin = fs::canonicalize(&spec.baton_bin)
        .ok()
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            LabError::InvalidSpec(format!(
                "baton binary {} not found",
                spec.baton_bin.display()
            ))
        })?;
    let given_docroot = match &spec.docroot {
        Some(d) => Some(
            fs::canonicalize(d)
                .ok()
                .filter(|p| p.is_dir())
                .ok_or_else(|| {
                    LabError::InvalidSpec(format!("docroot {} is not a directory", d.display()))
                })?,
        ),
        None => None,
    };
    if let Some(origin) = &spec.origin {
        origin.validate()?;
        if origin.rate.is_some() && cmd::tc().is_none() {
            return Err(LabError::InvalidSpec(
                "tc (iproute2) is needed to limit the origin's rate".into(),
            ));
        }
    }
    let curl = cmd::curl()
        .ok_or_else(|| LabError::InvalidSpec("curl is needed for the readiness checks".into()))?;

    // Before anything is made: a lab that cannot have its bpffs is not built.
    pins::ensure_bpffs()?;

    let labdir = lab_dir(name);
    let existing = lab_namespaces(name)?;
    if !existing.is_empty() {
        return Err(LabError::Exists {
            name: name.to_owned(),
            what: format!("namespaces {}", existing.join(", ")),
        });
    }
    fs::create_dir_all(LABS_DIR).map_err(|e| LabError::io("create", LABS_DIR, e))?;
    // The exclusive create doubles as the lab's lock against a concurrent `up`.
    match fs::create_dir(&labdir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(LabError::Exists {
                name: name.to_owned(),
                what: format!("directory {}", labdir.display()),
            })
        }
        Err(e) => return Err(LabError::io("create", &labdir, e)),
    }
    let mut guard = UpGuard {
        name: name.to_owned(),
        labdir: labdir.clone(),
        topology: None,
        children: Vec::new(),
        armed: true,
    };

    // Pins left by an earlier lab of this name (no namespace of it exists):
    // its flows are gone, and a new front must not adopt them. Then the
    // lab's own directory, which keeps the bpffs mounted while it lives.
    pins::remove_pins(name)?;
    pins::claim(name)?;

    let fronts = spec.fronts;
    let topo = guard.topology.insert(Topology::create_fronts(
        name,
        spec.backends,
        fronts,
        spec.origin.is_some(),
    )?);
    if let Some(rate) = spec.origin.as_ref().and_then(|o| o.rate.as_deref()) {
        // Its egress: what the back-ends receive from it.
        topo.limit_egress("origin", rate)?;
    }
    let key_file = labdir.join("key.hex");
    write_key(&key_file)?;
    let docroot = match given_docroot {
        Some(d) => d,
        None => {
            let d = labdir.join("docroot");
            sample_docroot(&d).map_err(|e| LabError::io("write sample docroot", &d, e))?;
            d
        }
    };

    let origin_url = OriginSpec::url();
    let back_origin = spec.origin.as_ref().map(|o| config::BackOrigin {
        url: &origin_url,
        cache_bytes: o.cache_bytes,
    });
    let mut hosts = BTreeMap::new();
    let mut backends = Vec::new();
    for h in topo.hosts() {
        let configured = matches!(h.role, Role::Front(_) | Role::Back(_));
        let daemon = configured || h.role == Role::Origin;
        let mut helpers = BTreeMap::new();
        if fronts > 1 {
            for (_, helper) in fronts::helpers(fronts)
                .into_iter()
                .filter(|(host, _)| *host == h.name)
            {
                let key = helper.key(&h.name);
                helpers.insert(
                    helper.kind().to_owned(),
                    HelperInfo {
                        pid: None,
                        log: labdir.join(format!("{key}.log")),
                        socket: (helper == Helper::Bird)
                            .then(|| fronts::BirdFiles::of(&labdir, &h.name).ctl),
                        running: None,
                    },
                );
            }
        }
        hosts.insert(
            h.name.clone(),
            HostInfo {
                netns: h.netns.clone(),
                ip: h.ip,
                iface: IFACE.to_owned(),
                mac: h.mac.clone(),
                pid: None,
                config: configured.then(|| labdir.join(format!("{}.toml", h.name))),
                log: daemon.then(|| labdir.join(format!("{}.log", h.name))),
                running: None,
                helpers,
            },
        );
        if let Role::Back(_) = h.role {
            let text = config::back_toml(
                h.ip,
                VIP,
                &docroot,
                &key_file,
                back_origin,
                spec.back_extra.as_deref(),
            )?;
            write_file(&labdir.join(format!("{}.toml", h.name)), &text)?;
            backends.push((h.name.clone(), h.ip));
        }
    }
    let tls = if spec.tls {
        Some(certs::make(&labdir, VIP)?)
    } else {
        None
    };
    // With several fronts each says it stops serving a while before it
    // stops accepting (unless the extra TOML chose otherwise).
    let front_extra = match spec.front_extra.as_deref() {
        Some(x) if fronts == 1 || config::sets_key(x, "drain_withdraw_ms") => Some(x.to_owned()),
        x => (fronts > 1).then(|| {
            format!(
                "drain_withdraw_ms = {}\n{}",
                fronts::DRAIN_WITHDRAW_MS,
                x.unwrap_or_default()
            )
        }),
    };
    for k in 1..=fronts {
        let host = front_name(k, fronts);
        let pin_dir = front_pin_dir(name, &host, fronts);
        let upgrade_socket = labdir.join(format!("{host}-upgrade.sock"));
        let upgrade = Some(config::FrontUpgrade {
            pin_dir: &pin_dir,
            upgrade_socket: &upgrade_socket,
        });
        let mut text = config::front_toml(
            VIP,
            IFACE,
            &key_file,
            &backends,
            &spec.backend_groups,
            upgrade,
            front_extra.as_deref(),
        )?;
        if let Some(c) = &tls {
            text.push_str(&config::tls_toml(TLS_PORT, &c.chain, &c.key)?);
        }
        write_file(&labdir.join(format!("{host}.toml")), &text)?;
    }
    if fronts > 1 {
        let router = fronts::BirdFiles::of(&labdir, "router");
        write_file(&router.conf, &fronts::router_conf(&router.log, fronts)?)?;
        for h in topo.hosts() {
            if let Role::Front(_) = h.role {
                let f = fronts::BirdFiles::of(&labdir, &h.name);
                write_file(&f.conf, &fronts::front_conf(&f.log, h.ip)?)?;
            }
        }
    }
    let first_front = front_name(1, fronts);

    let mut state = LabState {
        version: STATE_VERSION,
        // Absolute paths, so the state means the same from any working directory.
        spec: LabSpec {
            baton_bin: baton_bin.clone(),
            docroot: spec.docroot.as_ref().map(|_| docroot.clone()),
            ..spec.clone()
        },
        info: LabInfo {
            vip: VIP,
            port: VIP_PORT,
            fronts,
            hosts,
            name: name.to_owned(),
            labdir: labdir.clone(),
            key_file,
            docroot,
            pin_dir: Some(front_pin_dir(name, &first_front, fronts)),
            upgrade_socket: Some(labdir.join(format!("{first_front}-upgrade.sock"))),
            tls_port: tls.as_ref().map(|_| TLS_PORT),
            ca_file: tls.as_ref().map(|c| c.ca.clone()),
            server_name: tls.as_ref().map(|_| SERVER_NAME.to_owned()),
        },
        daemons: BTreeMap::new(),
    };
    write_state(&state)?;

    if let Some(h) = topo.host("origin") {
        let (host, netns) = (h.name.clone(), h.netns.clone());
        let log = labdir.join(format!("{host}.log"));
        let argv = daemon_argv(&state, &host)?;
        start_daemon(&host, &netns, &argv, &log, &mut guard.children, &mut state)?;
        // Before any back-end: a caching back-end may fetch as soon as it runs.
        wait_origin(&mut guard.children, &netns, &labdir, curl)?;
    }

    // Back-ends next: the fronts connect to their control ports when they
    // start. With several fronts, the router's speaker and agent before
    // the fronts, and each front's speaker and announcer after it.
    let netns_of = |host: &str| topo.host(host).map(|h| h.netns.clone()).unwrap_or_default();
    let mut order: Vec<String> = topo
        .hosts()
        .iter()
        .filter(|h| matches!(h.role, Role::Back(_)))
        .map(|h| h.name.clone())
        .collect();
    let helpers = if fronts > 1 {
        fronts::helpers(fronts)
    } else {
        Vec::new()
    };
    order.extend(
        helpers
            .iter()
            .filter(|(h, _)| h == "router")
            .map(|(h, helper)| helper.key(h)),
    );
    for k in 1..=fronts {
        let host = front_name(k, fronts);
        order.push(host.clone());
        order.extend(
            helpers
                .iter()
                .filter(|(h, _)| *h == host)
                .map(|(h, helper)| helper.key(h)),
        );
    }
    for key in order {
        let host = fronts::helper_of(&key).map_or_else(|| key.clone(), |(h, _)| h);
        let log = labdir.join(format!("{key}.log"));
        let argv = daemon_argv(&state, &key)?;
        start_daemon(
            &key,
            &netns_of(&host),
            &argv,
            &log,
            &mut guard.children,
            &mut state,
        )?;
    }

    let client_ns = netns_of("client");
    if fronts > 1 {
        let probes: Vec<FrontProbe> = (1..=fronts)
            .map(|k| FrontProbe::new(&state.info, k))
            .collect();
        wait_fronts(
            &mut guard.children,
            &probes,
            &netns_of("router"),
            &client_ns,
            &labdir,
            curl,
        )?;
    } else {
        wait_ready(
            &mut guard.children,
            &netns_of(&first_front),
            &client_ns,
            &labdir,
            curl,
        )?;
    }

    guard.armed = false;
    if let Some(t) = guard.topology.take() {
        t.keep();
    }
    Ok(with_alias(state.info))
}

/// Where front `host` of `fronts` pins: the lab's directory, or a
/// directory per front inside it (each front's netns has its own `eth0`,
/// and the pins go under `<pin_dir>/eth0/`).
fn front_pin_dir(name: &str, host: &str, fronts: usize) -> PathBuf {
    if fronts > 1 {
        pins::pin_dir(name).join(host)
    } else {
        pins::pin_dir(name)
    }
}

/// The command line of `key`'s daemon: `baton front|back --config FILE`,
/// `baton serve --listen ADDR --docroot DIR` for the origin, or a helper's
/// (see [`fronts`]). `up` and `restart` both start daemons with it.
fn daemon_argv(state: &LabState, key: &str) -> Result<Vec<OsString>, LabError> {
    let bin = state.spec.baton_bin.clone().into_os_string();
    let labdir = &state.info.labdir;
    if let Some((host, helper)) = fronts::helper_of(key) {
        return match helper {
            Helper::Bird => fronts::bird_argv(labdir, &host),
            Helper::Announce => Ok(fronts::announce_argv(&state.spec.baton_bin, labdir, &host)),
            Helper::EcmpSync => fronts::ecmp_argv(&state.spec.baton_bin, labdir, state.info.fronts),
        };
    }
    let host = key;
    let info = state.info.hosts.get(host);
    let role = match host {
        _ if is_front(host) => "front",
        "origin" => {
            return Ok(vec![
                bin,
                "serve".into(),
                "--listen".into(),
                format!("{ORIGIN_IP}:{ORIGIN_PORT}").into(),
                "--docroot".into(),
                state.info.docroot.clone().into_os_string(),
            ])
        }
        _ if host
            .strip_prefix("back")
            .is_some_and(|k| k.parse::<usize>().is_ok()) =>
        {
            "back"
        }
        _ => {
            return Err(LabError::InvalidSpec(format!(
                "host {host:?} runs no daemon"
            )))
        }
    };
    let config = info.and_then(|h| h.config.clone()).ok_or_else(|| {
        LabError::InvalidSpec(format!("the lab state records no config for {host}"))
    })?;
    Ok(vec![
        bin,
        role.into(),
        "--config".into(),
        config.into_os_string(),
    ])
}

/// Records `id` as the daemon `key` (a host or a helper) in the state.
pub(crate) fn record(state: &mut LabState, key: &str, id: ProcId) {
    state.daemons.insert(key.to_owned(), id);
    match fronts::helper_of(key) {
        Some((host, helper)) => {
            if let Some(h) = state
                .info
                .hosts
                .get_mut(&host)
                .and_then(|h| h.helpers.get_mut(helper.kind()))
            {
                h.pid = Some(id.pid);
            }
        }
        None => {
            if let Some(h) = state.info.hosts.get_mut(key) {
                h.pid = Some(id.pid);
            }
        }
    }
}

/// Starts `argv` as the daemon `key` (a host or a helper) and records it,
/// in the guard (so a failing `up` ends it) and in the state file (so
/// `down` can).
fn start_daemon(
    key: &str,
    netns: &str,
    argv: &[OsString],
    log: &Path,
    children: &mut Vec<(String, Child, ProcId)>,
    state: &mut LabState,
) -> Result<(), LabError> {
    let argv: Vec<&OsStr> = argv.iter().map(OsString::as_os_str).collect();
    let (child, id) = daemon::spawn(netns, &argv, log).map_err(|e| match e {
        LabError::DaemonExited {
            status, log, tail, ..
        } => LabError::DaemonExited {
            host: key.to_owned(),
            status,
            log,
            tail,
        },
        e => e,
    })?;
    children.push((key.to_owned(), child, id));
    record(state, key, id);
    write_state(state)
}

fn write_file(path: &Path, text: &str) -> Result<(), LabError> {
    fs::write(path, text).map_err(|e| LabError::io("write", path, e))
}

/// A new file readable by root only.
fn write_private(path: &Path, text: &str) -> Result<(), LabError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| LabError::io("create", path, e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| LabError::io("write", path, e))
}

/// 32 random bytes as 64 lowercase hex digits, no newline, readable by root only.
fn write_key(path: &Path) -> Result<(), LabError> {
    let mut key = [0u8; 32];
    getrandom::getrandom(&mut key).map_err(|e| LabError::Sys {
        call: "getrandom",
        source: io::Error::other(e.to_string()),
    })?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| LabError::io("create", path, e))?;
    f.write_all(hex.as_bytes())
        .map_err(|e| LabError::io("write", path, e))
}

/// Fails if any of `children` has exited.
fn check_children(children: &mut [(String, Child, ProcId)], labdir: &Path) -> Result<(), LabError> {
    for (host, child, _) in children.iter_mut() {
        let exited = child.try_wait().map_err(|source| LabError::Sys {
            call: "waitpid",
            source,
        })?;
        if let Some(status) = exited {
            let log = labdir.join(format!("{host}.log"));
            return Err(LabError::DaemonExited {
                host: host.clone(),
                status: describe(status),
                tail: daemon::log_tail(&log),
                log,
            });
        }
    }
    Ok(())
}

/// Polls until the origin answers HTTP (any status: a given docroot need not
/// have an index); fails at once if a daemon dies.
fn wait_origin(
    children: &mut [(String, Child, ProcId)],
    origin_ns: &str,
    labdir: &Path,
    curl: &Path,
) -> Result<(), LabError> {
    let start = Instant::now();
    let url = format!("{}/", OriginSpec::url());
    loop {
        check_children(children, labdir)?;
        if cmd::http_answers(origin_ns, curl, &url)? {
            return Ok(());
        }
        if start.elapsed() >= READY_TIMEOUT {
            let log = labdir.join("origin.log");
            return Err(LabError::NotReady {
                what: format!("the origin never answered {url}"),
                waited: start.elapsed(),
                tail: daemon::log_tail(&log),
                log,
            });
        }
        std::thread::sleep(READY_POLL);
    }
}

/// Polls until the front reports ready and the client gets an answer from the VIP;
/// fails at once if a daemon dies.
fn wait_ready(
    children: &mut [(String, Child, ProcId)],
    front_ns: &str,
    client_ns: &str,
    labdir: &Path,
    curl: &Path,
) -> Result<(), LabError> {
    let start = Instant::now();
    let ready_url = format!("http://{ADMIN_LISTEN}/ready");
    let vip_url = format!("http://{VIP}:{VIP_PORT}/");
    let mut front_ready = false;
    loop {
        check_children(children, labdir)?;
        if !front_ready {
            front_ready = cmd::http_ok(front_ns, curl, &ready_url)?;
        }
        // Any HTTP answer through the VIP will do: a docroot need not have
        // an index (the front's /ready already said the back-ends are up).
        if front_ready && cmd::http_answers(client_ns, curl, &vip_url)? {
            return Ok(());
        }
        if start.elapsed() >= READY_TIMEOUT {
            let log = labdir.join("front.log");
            return Err(LabError::NotReady {
                what: if front_ready {
                    format!("the client gets no answer from {vip_url}")
                } else {
                    format!("the front never answered {ready_url}")
                },
                waited: start.elapsed(),
                tail: daemon::log_tail(&log),
                log,
            });
        }
        std::thread::sleep(READY_POLL);
    }
}

/// One front whose readiness [`wait_fronts`] checks (labs with several fronts).
#[derive(Debug, Clone)]
pub(crate) struct FrontProbe {
    /// K in `frontK`.
    k: usize,
    host: String,
    netns: String,
    /// Its BIRD's control socket.
    bird_ctl: PathBuf,
    labdir: PathBuf,
}

impl FrontProbe {
    pub(crate) fn new(info: &LabInfo, k: usize) -> FrontProbe {
        let host = front_name(k, info.fronts);
        FrontProbe {
            k,
            netns: info
                .hosts
                .get(&host)
                .map(|h| h.netns.clone())
                .unwrap_or_else(|| format!("{}-{host}", info.name)),
            bird_ctl: fronts::BirdFiles::of(&info.labdir, &host).ctl,
            labdir: info.labdir.clone(),
            host,
        }
    }
}

/// Polls until each probed front reports ready, its BGP session to the
/// router is Established, the router's next-hop group for the VIP holds
/// it (its announcer saw it serving and BIRD passed the route on), and the
/// client gets an answer from the VIP; fails at once if a daemon dies.
pub(crate) fn wait_fronts(
    children: &mut [(String, Child, ProcId)],
    probes: &[FrontProbe],
    router_ns: &str,
    client_ns: &str,
    labdir: &Path,
    curl: &Path,
) -> Result<(), LabError> {
    /// Each round runs a curl and a birdc per front: not too often.
    const POLL: Duration = Duration::from_millis(50);
    let start = Instant::now();
    let ready_url = format!("http://{ADMIN_LISTEN}/ready");
    let vip_url = format!("http://{VIP}:{VIP_PORT}/");
    let mut ready = vec![false; probes.len()];
    let mut bgp = vec![false; probes.len()];
    let mut members = Vec::new();
    loop {
        check_children(children, labdir)?;
        for (i, p) in probes.iter().enumerate() {
            if !ready[i] {
                ready[i] = cmd::http_ok(&p.netns, curl, &ready_url)?;
            }
            if !bgp[i] {
                bgp[i] = fronts::established(&p.bird_ctl, fronts::UPLINK_PROTOCOL)?;
            }
        }
        let up = ready.iter().chain(&bgp).all(|b| *b);
        if up {
            members = fronts::group_members(router_ns)?;
        }
        let grouped = probes.iter().all(|p| members.contains(&p.k));
        if up && grouped && cmd::http_answers(client_ns, curl, &vip_url)? {
            return Ok(());
        }
        if start.elapsed() >= READY_TIMEOUT {
            let not_ready = probes.iter().zip(&ready).find(|(_, r)| !**r);
            let no_bgp = probes.iter().zip(&bgp).find(|(_, b)| !**b);
            let missing: Vec<&FrontProbe> =
                probes.iter().filter(|p| !members.contains(&p.k)).collect();
            let (what, log) = if let Some((p, _)) = not_ready {
                (
                    format!("{} never answered {ready_url}", p.host),
                    p.labdir.join(format!("{}.log", p.host)),
                )
            } else if let Some((p, _)) = no_bgp {
                (
                    format!(
                        "{}'s BGP session to the router never got Established",
                        p.host
                    ),
                    fronts::BirdFiles::of(&p.labdir, &p.host).log,
                )
            } else if let Some(p) = missing.first() {
                (
                    format!(
                        "the router's next-hop group {} never held {} (it holds fronts {members:?});                          see also {}",
                        fronts::ECMP_GROUP,
                        p.host,
                        p.labdir
                            .join(format!("{}.log", Helper::Announce.key(&p.host)))
                            .display()
                    ),
                    labdir.join(format!("{}.log", Helper::EcmpSync.key("router"))),
                )
            } else {
                (
                    format!("the client gets no answer from {vip_url}"),
                    labdir.join(format!(
                        "{}.log",
                        probes.first().map_or("front1", |p| p.host.as_str())
                    )),
                )
            };
            return Err(LabError::NotReady {
                what,
                waited: start.elapsed(),
                tail: daemon::log_tail(&log),
                log,
            });
        }
        std::thread::sleep(POLL);
    }
}

fn absent_or_incomplete(name: &str) -> LabError {
    match lab_namespaces(name) {
        Ok(ns) if !ns.is_empty() => LabError::Incomplete {
            name: name.to_owned(),
            detail: format!(
                "namespaces {} but no {}",
                ns.join(", "),
                state_path(name).display()
            ),
        },
        _ if lab_dir(name).exists() => LabError::Incomplete {
            name: name.to_owned(),
            detail: format!("{} exists without a usable state", lab_dir(name).display()),
        },
        _ => LabError::NotFound {
            name: name.to_owned(),
            labdir: lab_dir(name),
        },
    }
}

/// The lab as recorded by `up`, with `running` filled in for each daemon.
pub fn status(name: &str) -> Result<LabInfo, LabError> {
    validate_name(name)?;
    let Some(state) = read_state(name)? else {
        return Err(absent_or_incomplete(name));
    };
    let present: BTreeSet<String> = lab_namespaces(name)?.into_iter().collect();
    let missing: Vec<&str> = state
        .info
        .hosts
        .values()
        .map(|h| h.netns.as_str())
        .filter(|ns| !present.contains(*ns))
        .collect();
    if !missing.is_empty() {
        return Err(LabError::Incomplete {
            name: name.to_owned(),
            detail: format!("namespaces {} are missing", missing.join(", ")),
        });
    }
    let mut info = state.info;
    for (host, h) in &mut info.hosts {
        if let Some(id) = state.daemons.get(host) {
            h.running = Some(id.alive());
        }
        for (kind, helper) in &mut h.helpers {
            let key = match kind.as_str() {
                "bird" => Helper::Bird.key(host),
                "announce" => Helper::Announce.key(host),
                _ => Helper::EcmpSync.key(host),
            };
            helper.running = Some(state.daemons.get(&key).is_some_and(ProcId::alive));
        }
        if h.running.is_none() && !h.helpers.is_empty() {
            // The router runs helpers only.
            h.running = Some(h.helpers.values().all(|x| x.running == Some(true)));
        }
    }
    Ok(with_alias(info))
}

/// Runs `argv` in the namespace of `host` (`client`, `front`, `backK`,
/// `origin`, `router`, `frontK`, or `br` for the bridge) with this
/// process's stdio; returns its exit code (128+N for a death by signal N).
pub fn exec(name: &str, host: &str, argv: &[String]) -> Result<i32, LabError> {
    validate_name(name)?;
    if argv.is_empty() {
        return Err(LabError::EmptyCommand);
    }
    let present = lab_namespaces(name)?;
    let mut fronts = 1;
    let mut hosts: Vec<String> = match read_state(name) {
        Ok(Some(s)) => {
            fronts = s.info.fronts;
            with_alias(s.info).hosts.into_keys().collect()
        }
        _ => present
            .iter()
            .filter_map(|ns| ns.rsplit('-').next())
            .filter(|h| *h != "br")
            .map(str::to_owned)
            .collect(),
    };
    if present.contains(&topology::bridge_netns(name)) {
        hosts.push("br".to_owned());
    }
    hosts.sort_by_key(|h| host_order(h));
    if hosts.is_empty() {
        return Err(absent_or_incomplete(name));
    }
    if !hosts.iter().any(|h| h == host) {
        return Err(LabError::UnknownHost {
            lab: name.to_owned(),
            host: host.to_owned(),
            known: hosts.join(", "),
        });
    }
    let netns = format!("{name}-{}", resolve_host(host, fronts));
    if !present.contains(&netns) {
        return Err(LabError::Incomplete {
            name: name.to_owned(),
            detail: format!("namespace {netns} is missing"),
        });
    }
    let status = Command::new(cmd::ip())
        .args(["netns", "exec", &netns])
        .args(argv)
        .status()
        .map_err(|source| LabError::Spawn {
            program: cmd::ip().display().to_string(),
            source,
        })?;
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => 1,
    })
}

/// Removes lab `name`: ends its daemons and every process in its namespaces
/// (SIGTERM, up to 5 s, SIGKILL), deletes the namespaces and the lab
/// directory. Works on half-made labs and without a state file; a lab that
/// does not exist is not an error.
pub fn down(name: &str) -> Result<(), LabError> {
    validate_name(name)?;
    // A broken state file must not stop the cleanup; the namespaces are found anyway.
    let daemons = read_state(name)
        .ok()
        .flatten()
        .map(|s| s.daemons)
        .unwrap_or_default();
    let namespaces = lab_namespaces(name)?;
    let mut problems = remove_namespaces(&namespaces, &daemons);
    // After the daemons: a running front must not lose its pins under it.
    if let Err(e) = pins::release(name) {
        problems.push(e.to_string());
    }
    let dir = lab_dir(name);
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => problems.push(format!("remove {}: {e}", dir.display())),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(LabError::Teardown {
            name: name.to_owned(),
            problems,
        })
    }
}

/// The labs that exist (a directory under [`LABS_DIR`], any namespace, or
/// pins on [`BPFFS`]), sorted.
pub fn list() -> Vec<String> {
    let mut names = BTreeSet::new();
    if let Ok(dir) = fs::read_dir(LABS_DIR) {
        for entry in dir.flatten() {
            if let Some(n) = entry.file_name().to_str() {
                if validate_name(n).is_ok() && entry.path().is_dir() {
                    names.insert(n.to_owned());
                }
            }
        }
    }
    if let Ok(dir) = fs::read_dir(BPFFS) {
        for entry in dir.flatten() {
            if let Some(n) = entry.file_name().to_str().and_then(pins::lab_of_pin_dir) {
                if validate_name(n).is_ok() {
                    names.insert(n.to_owned());
                }
            }
        }
    }
    if let Ok(all) = cmd::netns_list() {
        names.extend(
            all.iter()
                .filter_map(|ns| lab_of_netns(ns))
                .map(str::to_owned),
        );
    }
    names.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["a", "lab1", "t1234a", "a-b-c", "abcdefghijkl"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "abcdefghijklm", "Lab", "a_b", "-a", "a b", "a/b", "é"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn namespaces_of_a_lab_never_include_another_labs() {
        assert!(is_lab_netns("a", "a-client"));
        assert!(is_lab_netns("a", "a-back12"));
        assert!(is_lab_netns("a", "a-br"));
        assert!(is_lab_netns("a", "a-origin"));
        assert!(!is_lab_netns("a", "a-origin2"));
        assert!(!is_lab_netns("a", "a-b-origin"));
        assert_eq!(lab_of_netns("a-origin"), Some("a"));
        assert!(!is_lab_netns("a", "a-b-client"));
        assert!(!is_lab_netns("a", "a-back1-br"));
        assert!(!is_lab_netns("a", "a-back"));
        assert!(!is_lab_netns("a", "ab-client"));
        assert_eq!(lab_of_netns("a-back1-br"), Some("a-back1"));
        assert_eq!(lab_of_netns("a-back1"), Some("a"));
        assert_eq!(lab_of_netns("docker"), None);
    }

    #[test]
    fn several_fronts_have_their_own_names_and_an_alias() {
        assert!(is_lab_netns("a", "a-router"));
        assert!(is_lab_netns("a", "a-front12"));
        assert!(!is_lab_netns("a", "a-front1x"));
        assert_eq!(lab_of_netns("a-front3"), Some("a"));
        assert_eq!(resolve_host("front", 3), "front1");
        assert_eq!(resolve_host("front", 1), "front");
        assert_eq!(resolve_host("front2", 3), "front2");
        assert!(is_front("front") && is_front("front16"));
        assert!(!is_front("frontx") && !is_front("front-1") && !is_front("router"));
        let mut v = vec![
            "back1", "front2", "router", "front10", "client", "front1", "br",
        ];
        v.sort_by_key(|h| host_order(h));
        assert_eq!(
            v,
            ["client", "router", "front1", "front2", "front10", "back1", "br"]
        );
    }

    #[test]
    fn hosts_sort_numerically() {
        let mut v = vec![
            "back10", "br", "origin", "back2", "front", "client", "back1",
        ];
        v.sort_by_key(|h| host_order(h));
        assert_eq!(
            v,
            ["client", "front", "back1", "back2", "back10", "origin", "br"]
        );
    }

    #[test]
    fn origin_specs_are_checked() {
        let ok = |rate: &str| OriginSpec {
            rate: Some(rate.to_owned()),
            ..OriginSpec::default()
        };
        for rate in ["100mbit", "10Mbit", "1.5gbit", "500kbps", "64000"] {
            assert!(ok(rate).validate().is_ok(), "{rate}");
        }
        for rate in [
            "",
            "fast",
            "-1mbit",
            "10 mbit",
            "10mbit burst",
            "1m/s",
            "mbit",
        ] {
            assert!(ok(rate).validate().is_err(), "{rate:?}");
        }
        let huge = OriginSpec {
            rate: None,
            cache_bytes: u64::MAX,
        };
        assert!(huge.validate().is_err());
        assert_eq!(OriginSpec::default().cache_bytes, 64 * 1024 * 1024);
        assert_eq!(OriginSpec::url(), "http://198.18.0.5:8080");
    }

    #[test]
    fn a_state_written_before_origins_existed_still_reads() {
        let spec: LabSpec = serde_json::from_str(
            r#"{"name":"x","backends":2,"docroot":null,"baton_bin":"/b",
                "front_extra":null,"back_extra":null}"#,
        )
        .expect("old spec");
        assert_eq!(spec.origin, None);
    }

    #[test]
    fn info_serializes_with_the_contract_fields() {
        let mut hosts = BTreeMap::new();
        hosts.insert(
            "client".to_owned(),
            HostInfo {
                netns: "x-client".into(),
                ip: topology::CLIENT_IP,
                iface: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                pid: None,
                config: None,
                log: None,
                running: None,
                helpers: BTreeMap::new(),
            },
        );
        let info = LabInfo {
            vip: VIP,
            port: 80,
            fronts: 1,
            hosts,
            name: "x".into(),
            labdir: lab_dir("x"),
            key_file: lab_dir("x").join("key.hex"),
            docroot: lab_dir("x").join("docroot"),
            pin_dir: None,
            upgrade_socket: None,
            tls_port: None,
            ca_file: None,
            server_name: None,
        };
        let v: serde_json::Value = serde_json::to_value(&info).expect("json");
        assert_eq!(v["vip"], "198.18.0.100");
        assert_eq!(v["port"], 80);
        assert_eq!(v["hosts"]["client"]["netns"], "x-client");
        assert_eq!(v["hosts"]["client"]["ip"], "198.18.0.2");
        assert_eq!(v["hosts"]["client"]["iface"], "eth0");
        assert!(v["hosts"]["client"].get("pid").is_none());
        assert!(v.get("pin_dir").is_none() && v.get("upgrade_socket").is_none());
        assert!(v.get("tls_port").is_none() && v.get("ca_file").is_none());
        assert_eq!(v["fronts"], 1);
        assert!(v["hosts"]["client"].get("helpers").is_none());
        let tls = LabInfo {
            tls_port: Some(TLS_PORT),
            ca_file: Some(lab_dir("x").join("ca.pem")),
            server_name: Some(SERVER_NAME.into()),
            ..info
        };
        let v: serde_json::Value = serde_json::to_value(&tls).expect("json");
        assert_eq!(v["tls_port"], 443);
        assert_eq!(v["server_name"], "baton.test");
        assert!(v["ca_file"]
            .as_str()
            .is_some_and(|p| p.ends_with("/ca.pem")));
    }
}
