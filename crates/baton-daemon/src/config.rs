//! Daemon configuration: one TOML file per daemon, with defaults and
//! validation. `baton check FILE` runs the same validation without starting
//! anything; command-line flags override the file.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

/// The front-end daemon's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontConfig {
    /// The virtual IP clients connect to; must be an address of `interface`.
    pub vip: Ipv4Addr,
    /// The port clients connect to.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The NIC clients' packets arrive on; the BPF forwarder attaches here.
    pub interface: String,
    /// The pre-shared key for the control channels (needed when a handoff
    /// back-end is used with `handoff = true`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Where `/ready` and `/stats` are served (keep it on loopback).
    #[serde(default = "default_admin")]
    pub admin_listen: SocketAddr,
    /// Hand connections off (the default). `false`: relay every connection
    /// (to `address` or `relay_address`) and leave the kernel alone: no BPF
    /// forwarder, no `TCP_REPAIR`, no control channels.
    #[serde(default = "yes")]
    pub handoff: bool,
    /// The distribution policy.
    #[serde(default = "default_policy")]
    pub policy: String,
    /// Runtime worker threads; 0 = one per CPU.
    #[serde(default)]
    pub workers: usize,
    /// On SIGTERM, how long handed-off connections keep being steered
    /// (the forwarder stays attached) before the front exits.
    #[serde(default = "default_drain")]
    pub drain_timeout_ms: u64,
    /// On SIGTERM, how long the front says it is not serving (`GET
    /// /serving` answers 503) while it still accepts, before it closes its
    /// listeners: the time an announcer (`baton announce`) needs to
    /// withdraw the VIP's route, so that the router sends new connections
    /// elsewhere before this front stops taking them. 0 (the default): stop
    /// accepting at once, as a single front does.
    #[serde(default)]
    pub drain_withdraw_ms: u64,
    /// Where the forwarder's flow table, kept frames, counters and TCX link
    /// are pinned (a directory on a bpf filesystem, outside /sys: `ip netns
    /// exec` mounts a fresh /sys), so that handed-off connections outlive
    /// the front's process: a restarted or upgraded front adopts them. Pins
    /// go under `<pin_dir>/<interface>/v<ABI>/`; `baton unpin` removes
    /// them. Unset: /run/baton/bpffs if a bpf filesystem is mounted there
    /// (else a warning, and flows die with the process); "": never pin.
    #[serde(default)]
    pub pin_dir: Option<PathBuf>,
    /// The unix socket on which the running front hands its listening
    /// socket to a successor started with `baton front --takeover` (an
    /// upgrade that refuses no connection). Only the same user may connect.
    #[serde(default = "default_upgrade_socket")]
    pub upgrade_socket: PathBuf,
    /// The back-ends.
    #[serde(rename = "backend", default)]
    pub backends: Vec<BackendConfig>,
    /// Back-end groups with their own policy (the group `default` uses
    /// `policy` unless it is listed here).
    #[serde(rename = "group", default)]
    pub groups: Vec<GroupConfig>,
    /// Routing rules, tried in order; the first match names the group.
    #[serde(rename = "rule", default)]
    pub rules: Vec<RuleConfig>,
    /// Limits on what clients may send.
    #[serde(default)]
    pub limits: Limits,
    /// Forwarding-entry lifetimes, and what becomes of packets no entry claims.
    #[serde(default)]
    pub flows: FlowTimers,
    /// Control-channel timers.
    #[serde(default)]
    pub control: ControlTimers,
    /// Relay mode: timeouts and how bytes are copied.
    #[serde(default)]
    pub relay: RelayConfig,
    /// HTTPS on the VIP (absent: plain HTTP only).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// HTTPS (`[tls]`): the front terminates TLS, reads the request, and hands
/// the TCP connection and the TLS session to the back-end together.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The HTTPS port on the VIP (next to `port`, which stays plain HTTP).
    #[serde(default = "default_tls_port")]
    pub port: u16,
    /// The default certificate chain (PEM, leaf first) and its private key
    /// (PEM: PKCS#8, PKCS#1 or SEC1): served when the client sends no SNI
    /// or one no `[[tls.sni]]` entry names.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificates per server name.
    #[serde(default)]
    pub sni: Vec<SniCert>,
    /// Session tickets per full TLS 1.3 handshake (resumption); 0 turns
    /// TLS 1.3 resumption off. TLS 1.2 resumes by session id either way.
    #[serde(default = "default_tickets")]
    pub tickets: usize,
    /// Resumable sessions remembered (TLS 1.2 ids and TLS 1.3 tickets);
    /// 0: no resumption at all (every connection a full handshake).
    #[serde(default = "default_session_cache")]
    pub session_cache: usize,
}

/// A certificate for one server name (`[[tls.sni]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCert {
    /// A DNS name the certificate covers (matched case-insensitively).
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn default_tls_port() -> u16 {
    443
}
fn default_tickets() -> usize {
    2
}
fn default_session_cache() -> usize {
    20_000
}

/// How the front serves a back-end's connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendMode {
    /// Hand the TCP connection over (`baton back` with a control channel).
    #[default]
    Handoff,
    /// Proxy the connection's bytes to a plain HTTP server.
    Relay,
}

/// How a relay moves bytes between the two sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayCopy {
    /// Response bodies go through a userspace buffer until the client's
    /// connection has carried [`YOUNG_CONNECTION_BYTES`], by `splice(2)`
    /// after (the byte pump of `upstream_keepalive = 0` always splices).
    /// Spliced data keeps the page fragments it arrived in, which count
    /// several times their size against the client's receive buffer: on a
    /// new connection, whose buffer has not grown yet, its window keeps
    /// closing (measured: 1 MiB one-per-request responses 15-20 % slower).
    #[default]
    Auto,
    /// `splice(2)` through a pipe per direction: the bytes stay in the kernel.
    Splice,
    /// read/write through a userspace buffer.
    Userspace,
}

/// What a client connection carries before `copy = "auto"` splices.
pub const YOUNG_CONNECTION_BYTES: u64 = 1 << 20;

/// Relay-mode settings (`[relay]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Connecting to the back-end must succeed within this (504 after; the
    /// back-end leaves rotation for `control.refused_pause_ms`).
    pub connect_timeout_ms: u64,
    /// A relayed connection on which no byte moved in either direction
    /// for this long is closed.
    pub idle_timeout_ms: u64,
    /// "splice" (zero-copy, the default) or "userspace".
    pub copy: RelayCopy,
    /// The most connections relayed at once (503 beyond).
    pub max_connections: usize,
    /// Idle back-end connections kept open per back-end address for the
    /// next requests (as nginx's `keepalive` in an upstream block). The
    /// relay then reads HTTP/1.1: each request goes to a kept connection
    /// (or a new one), without its hop-by-hop fields. 0: no pooling, one
    /// back-end connection per client connection, bytes copied blindly.
    pub upstream_keepalive: usize,
    /// A kept back-end connection idle longer than this is closed (keep it
    /// below the back-end's own keep-alive timeout).
    pub upstream_idle_timeout_ms: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            connect_timeout_ms: 2_000,
            idle_timeout_ms: 60_000,
            copy: RelayCopy::Auto,
            max_connections: 16_384,
            upstream_keepalive: 32,
            upstream_idle_timeout_ms: 4_000,
        }
    }
}

/// One back-end, as the front knows it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// A name for logs and stats.
    pub name: String,
    /// "handoff" (default) or "relay".
    #[serde(default)]
    pub mode: BackendMode,
    /// A handoff back-end's control address (on the same L2 segment as the front).
    #[serde(default)]
    pub control: Option<SocketAddrV4>,
    /// A relay back-end's HTTP address, `host:port`.
    #[serde(default)]
    pub address: Option<String>,
    /// A handoff back-end's plain HTTP address (`host:port`, e.g. its
    /// `direct_listen`), used when a connection must be relayed instead:
    /// the handoff was refused or failed, or the front relays everything.
    #[serde(default)]
    pub relay_address: Option<String>,
    /// Relative capacity.
    #[serde(default = "one")]
    pub weight: u32,
    /// The group it serves in.
    #[serde(default = "default_group")]
    pub group: String,
}

/// The name of the group back-ends and requests belong to by default.
pub const DEFAULT_GROUP: &str = "default";

fn default_group() -> String {
    DEFAULT_GROUP.into()
}

/// A back-end group and its distribution policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// The group's name (back-ends and rules refer to it).
    pub name: String,
    /// round-robin, wrr, least-conn, lard, lard-r, maglev, bounded-ch.
    #[serde(default = "default_policy")]
    pub policy: String,
    /// LARD/LARD-R: a node below this load is lightly loaded (Pai: 25).
    pub t_low: Option<u32>,
    /// LARD/LARD-R: a node above this load is overloaded (Pai: 65).
    pub t_high: Option<u32>,
    /// LARD-R: a server set unchanged this long loses its most loaded node.
    pub k_ms: Option<u64>,
    /// What identifies a target: "path" (default) or "host-path".
    pub key: Option<String>,
    /// bounded-ch: the load bound factor c (default 1.25).
    pub c: Option<f64>,
    /// maglev: lookup table size per back-end (default 100).
    pub table_factor: Option<u32>,
}

impl GroupConfig {
    /// The group `default` when the file does not list it.
    pub fn implicit_default(policy: &str) -> Self {
        GroupConfig {
            name: DEFAULT_GROUP.into(),
            policy: policy.into(),
            t_low: None,
            t_high: None,
            k_ms: None,
            key: None,
            c: None,
            table_factor: None,
        }
    }

    /// The policy with its parameters.
    pub fn policy_config(&self) -> Result<baton_policy::PolicyConfig> {
        use baton_policy::{PolicyConfig, TargetKey};
        let mut pc = PolicyConfig::from_name(&self.policy).with_context(|| {
            format!(
                "group {}: unknown policy {:?} (known: {})",
                self.name,
                self.policy,
                baton_policy::POLICY_NAMES.join(", ")
            )
        })?;
        let key = match self.key.as_deref() {
            None | Some("path") => TargetKey::Path,
            Some("host-path") => TargetKey::HostPath,
            Some(other) => bail!(
                "group {}: key must be \"path\" or \"host-path\", not {other:?}",
                self.name
            ),
        };
        let lard_params = |l: &mut baton_policy::LardConfig| {
            if let Some(v) = self.t_low {
                l.t_low = v;
            }
            if let Some(v) = self.t_high {
                l.t_high = v;
            }
            l.key = key;
        };
        let uses = |what: &str, set: bool| -> Result<()> {
            if set {
                bail!(
                    "group {}: {what} does not apply to policy {}",
                    self.name,
                    self.policy
                );
            }
            Ok(())
        };
        let lardish = matches!(pc, PolicyConfig::Lard(_) | PolicyConfig::LardReplicated(_));
        uses(
            "t_low/t_high",
            !lardish && (self.t_low.is_some() || self.t_high.is_some()),
        )?;
        uses(
            "k_ms",
            !matches!(pc, PolicyConfig::LardReplicated(_)) && self.k_ms.is_some(),
        )?;
        uses(
            "c",
            !matches!(pc, PolicyConfig::BoundedLoad(_)) && self.c.is_some(),
        )?;
        uses(
            "table_factor",
            !matches!(pc, PolicyConfig::Maglev(_)) && self.table_factor.is_some(),
        )?;
        match &mut pc {
            PolicyConfig::Lard(l) => lard_params(l),
            PolicyConfig::LardReplicated(r) => {
                lard_params(&mut r.lard);
                if let Some(v) = self.k_ms {
                    r.k_ms = v;
                }
            }
            PolicyConfig::Maglev(m) => {
                m.key = key;
                if let Some(v) = self.table_factor {
                    m.table_factor = v;
                }
            }
            PolicyConfig::BoundedLoad(b) => {
                b.key = key;
                if let Some(v) = self.c {
                    b.c = v;
                }
            }
            PolicyConfig::RoundRobin
            | PolicyConfig::WeightedRoundRobin
            | PolicyConfig::LeastConnections => {
                uses("key", self.key.is_some())?;
            }
        }
        pc.validate()
            .with_context(|| format!("group {}", self.name))?;
        Ok(pc)
    }
}

/// A routing rule: every matcher given must match; the first rule that
/// matches names the group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Host, exact (`www.example.com`) or wildcard (`*.example.com`).
    pub host: Option<String>,
    /// The path starts with this.
    pub path_prefix: Option<String>,
    /// The path matches this regular expression.
    pub path_regex: Option<String>,
    /// The group that serves matching requests.
    pub group: String,
}

/// Limits on client input.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The largest request head accepted (431 beyond).
    pub head_max_bytes: usize,
    /// The most header lines accepted (431 beyond).
    pub head_max_headers: usize,
    /// How long a client may take to send its request head (408 after).
    pub head_timeout_ms: u64,
    /// How long the front waits for a back-end to restore a connection (502 after).
    pub handoff_timeout_ms: u64,
    /// The most client connections in progress at once (reading or handing off).
    pub max_pending: usize,
    /// The most frames kept per parked flow.
    pub max_parked_frames: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head_max_bytes: 16 * 1024,
            head_max_headers: 100,
            head_timeout_ms: 10_000,
            handoff_timeout_ms: 1_000,
            max_pending: 4096,
            max_parked_frames: 64,
        }
    }
}

/// How long forwarding entries live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowTimers {
    /// After the back-end reports `Closed`, the entry stays this long for the
    /// last FIN/ACK exchange.
    pub closed_grace_ms: u64,
    /// An entry with no packet for this long and no report is removed.
    pub idle_timeout_ms: u64,
    /// The shortest period of the walk over the forwarder's entries that
    /// finds idle ones (it runs every `idle_timeout_ms / 4`, not more often
    /// than this). Every other deadline fires when it is due.
    pub sweep_interval_ms: u64,
    /// A back-end's flows outlive the loss of its control channel by this
    /// much: if the channel comes back first, the back-end lists the flows
    /// it still serves and the rest go at once.
    pub orphan_timeout_ms: u64,
    /// What the forwarder does with a packet to the VIP's `port` (or `[tls]
    /// port`) that matches no forwarding entry and that no socket of this
    /// host would take, which the kernel would answer with a reset (or
    /// refuse, for a SYN without a listener). Reloadable.
    pub unknown: UnknownFlows,
}

impl Default for FlowTimers {
    fn default() -> Self {
        FlowTimers {
            closed_grace_ms: 2_000,
            idle_timeout_ms: 300_000,
            sweep_interval_ms: 500,
            orphan_timeout_ms: 30_000,
            unknown: UnknownFlows::Drop,
        }
    }
}

/// `flows.unknown`: the fate of a client's packet that no front knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownFlows {
    /// Dropped: the client retransmits, and reaches the front that steers
    /// its flow (another front behind ECMP, or this one once it learnt
    /// it), instead of losing its connection to a reset. A SYN while no
    /// listener runs (the front's process is gone) is dropped too: the
    /// client tries again, through another front once the router moved.
    #[default]
    Drop,
    /// Left to the front's kernel, which resets it (one front alone, as
    /// before this setting existed).
    Pass,
}

impl UnknownFlows {
    /// As in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            UnknownFlows::Drop => "drop",
            UnknownFlows::Pass => "pass",
        }
    }
}

/// By hand, for one message whatever the value: `expected "drop" or "pass"`
/// (serde's derive says `wanted string or table` for a boolean).
impl<'de> Deserialize<'de> for UnknownFlows {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Choice;
        impl serde::de::Visitor<'_> for Choice {
            type Value = UnknownFlows;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"drop\" or \"pass\"")
            }
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<Self::Value, E> {
                match v {
                    "drop" => Ok(UnknownFlows::Drop),
                    "pass" => Ok(UnknownFlows::Pass),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Choice)
    }
}

/// Control-channel timers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlTimers {
    /// Connect + handshake must finish within this.
    pub connect_timeout_ms: u64,
    /// Heartbeat period.
    pub heartbeat_ms: u64,
    /// A channel silent for this long is declared dead.
    pub dead_after_ms: u64,
    /// The longest wait between reconnection attempts.
    pub max_backoff_ms: u64,
    /// A back-end that refused a handoff is left out of rotation this long.
    pub refused_pause_ms: u64,
}

impl Default for ControlTimers {
    fn default() -> Self {
        ControlTimers {
            connect_timeout_ms: 2_000,
            heartbeat_ms: 1_000,
            dead_after_ms: 3_500,
            max_backoff_ms: 2_000,
            refused_pause_ms: 1_000,
        }
    }
}

/// The back-end daemon's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackConfig {
    /// Where front-ends connect for the control channel.
    pub control_listen: SocketAddrV4,
    /// The VIP (must be configured on `lo`): restored sockets bind to it.
    pub vip: Ipv4Addr,
    /// The files served.
    pub docroot: PathBuf,
    /// The pre-shared key for the control channels.
    pub key_file: PathBuf,
    /// Optional plain HTTP listener (a baseline for benchmarks).
    #[serde(default)]
    pub direct_listen: Option<SocketAddr>,
    /// Optional HTTPS listener serving the same content, TLS terminated by
    /// this back-end (rustls; a baseline for benchmarks, like
    /// `direct_listen`). Handed-off TLS sessions do not need it. Example:
    ///
    /// ```toml
    /// [direct_tls]
    /// listen = "198.18.0.11:8443"
    /// cert = "/etc/baton/server.pem"   # chain, leaf first (PEM)
    /// key = "/etc/baton/server.key"    # PKCS#8, PKCS#1 or SEC1 (PEM)
    /// tickets = 2                      # TLS 1.3 tickets per handshake; 0: no resumption
    /// ```
    #[serde(default)]
    pub direct_tls: Option<DirectTlsConfig>,
    /// How often the load is reported to the fronts.
    #[serde(default = "default_load_report")]
    pub load_report_ms: u64,
    /// The most front-ends connected at once.
    #[serde(default = "default_max_fronts")]
    pub max_fronts: usize,
    /// Runtime worker threads; 0 = one per CPU.
    #[serde(default)]
    pub workers: usize,
    /// On SIGTERM, how long connections may take to finish.
    #[serde(default = "default_drain")]
    pub drain_timeout_ms: u64,
    /// TLS sessions this back-end continues (TLS 1.3): move the sending
    /// keys on with a KeyUpdate after this many response bytes, so that no
    /// key protects more. 0 (the default): only where the AEAD's limit
    /// requires it (AES-GCM after 2^24 records), which is always done.
    #[serde(default)]
    pub tls_key_update_bytes: u64,
    /// Caching mode: serve from an in-memory cache in front of this origin
    /// (`http://host:port`) instead of from `docroot`.
    #[serde(default)]
    pub origin: Option<String>,
    /// Caching mode: the cache's capacity in bytes.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
    /// Where `GET /stats` (JSON) is served; keep it on loopback.
    #[serde(default = "default_back_admin")]
    pub admin_listen: Option<SocketAddr>,
    /// A front-end channel silent this long is closed (fronts ping every second).
    #[serde(default = "default_front_silence")]
    pub front_silence_ms: u64,
}

/// A back-end's direct HTTPS listener (`[direct_tls]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectTlsConfig {
    /// Where it listens (a port of its own: not `control_listen`'s nor
    /// `direct_listen`'s).
    pub listen: SocketAddr,
    /// The certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Session tickets per full TLS 1.3 handshake (resumption, as the
    /// front's `[tls] tickets`); 0 turns TLS 1.3 resumption off.
    #[serde(default = "default_tickets")]
    pub tickets: usize,
}

fn default_cache_bytes() -> u64 {
    64 << 20
}

fn default_back_admin() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9101)))
}

fn default_front_silence() -> u64 {
    10_000
}

fn default_drain() -> u64 {
    10_000
}

fn default_port() -> u16 {
    80
}
/// Where pins go when `pin_dir` is unset (if it is a bpf filesystem).
pub const DEFAULT_PIN_DIR: &str = "/run/baton/bpffs";

fn default_upgrade_socket() -> PathBuf {
    PathBuf::from("/run/baton/front.sock")
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9100))
}
fn default_policy() -> String {
    "round-robin".into()
}
fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn default_load_report() -> u64 {
    1_000
}
fn default_max_fronts() -> usize {
    64
}

/// The largest duration any `*_ms` setting may have (24 h): larger values
/// would overflow when added to an `Instant`.
pub const MAX_MS: u64 = 24 * 3600 * 1000;

/// Milliseconds as a `Duration`.
pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl FrontConfig {
    /// Parses and validates a front configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: FrontConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(cfg)
    }

    /// Where to pin, and whether pinning is required: `None` for
    /// `pin_dir = ""`; `(path, false)` for the default (pinned if possible).
    pub fn pins(&self) -> Option<(PathBuf, bool)> {
        match &self.pin_dir {
            None => Some((PathBuf::from(DEFAULT_PIN_DIR), false)),
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some((p.clone(), true)),
        }
    }

    /// Checks everything that can be checked without starting.
    pub fn validate(&self) -> Result<()> {
        ensure!(!self.vip.is_unspecified(), "vip must be a concrete address");
        ensure!(self.port != 0, "port must not be 0");
        if let Some(t) = &self.tls {
            ensure!(
                t.port != 0 && t.port != self.port,
                "[tls] port must not be 0 nor the plain HTTP port {}",
                self.port
            );
            // Certificates and keys are read, matched and dated here too, so
            // that `baton check` reports a bad one before a start does.
            crate::tls::ServerTls::load(t).context("[tls]")?;
        }
        if let Some(p) = &self.pin_dir {
            ensure!(
                p.as_os_str().is_empty() || p.is_absolute(),
                "pin_dir must be an absolute path (or \"\" to never pin)"
            );
        }
        ensure!(
            self.upgrade_socket.is_absolute() && self.upgrade_socket.as_os_str().len() < 108,
            "upgrade_socket must be an absolute path of fewer than 108 bytes"
        );
        ensure!(
            !self.interface.is_empty() && self.interface.len() < 16,
            "interface must be a name of 1 to 15 bytes"
        );
        ensure!(
            !self.backends.is_empty(),
            "at least one [[backend]] is required"
        );
        let mut names = std::collections::HashSet::new();
        for b in &self.backends {
            ensure!(!b.name.is_empty(), "a backend needs a name");
            ensure!(
                names.insert(&b.name),
                "backend name {:?} is used twice",
                b.name
            );
            b.validate(self.handoff)?;
        }
        let groups = self.group_configs();
        let mut group_names = std::collections::HashSet::new();
        for g in &groups {
            ensure!(
                group_names.insert(g.name.as_str()),
                "group {:?} is listed twice",
                g.name
            );
            g.policy_config()?;
            ensure!(
                self.backends.iter().any(|b| b.group == g.name) || g.name == DEFAULT_GROUP,
                "group {:?} has no back-ends",
                g.name
            );
        }
        for b in &self.backends {
            ensure!(
                group_names.contains(b.group.as_str()),
                "backend {}: no group {:?}",
                b.name,
                b.group
            );
        }
        let rules = self.routing_rules()?;
        for g in rules.groups().chain(std::iter::once(DEFAULT_GROUP)) {
            ensure!(
                self.backends.iter().any(|b| b.group == g),
                "requests can be routed to group {g:?}, which has no back-ends"
            );
        }
        let l = &self.limits;
        ensure!(
            (256..=1 << 20).contains(&l.head_max_bytes),
            "limits.head_max_bytes must be 256..=1048576"
        );
        ensure!(
            (1..=1000).contains(&l.head_max_headers),
            "limits.head_max_headers must be 1..=1000"
        );
        ensure!(l.head_timeout_ms > 0, "limits.head_timeout_ms must be > 0");
        ensure!(
            l.handoff_timeout_ms > 0,
            "limits.handoff_timeout_ms must be > 0"
        );
        ensure!(l.max_pending > 0, "limits.max_pending must be > 0");
        let f = &self.flows;
        ensure!(
            f.sweep_interval_ms > 0,
            "flows.sweep_interval_ms must be > 0"
        );
        ensure!(
            f.idle_timeout_ms > f.sweep_interval_ms,
            "flows.idle_timeout_ms must exceed flows.sweep_interval_ms"
        );
        let c = &self.control;
        ensure!(c.heartbeat_ms > 0, "control.heartbeat_ms must be > 0");
        ensure!(
            c.dead_after_ms > c.heartbeat_ms,
            "control.dead_after_ms must exceed control.heartbeat_ms"
        );
        ensure!(
            c.connect_timeout_ms > 0,
            "control.connect_timeout_ms must be > 0"
        );
        ensure!(c.max_backoff_ms > 0, "control.max_backoff_ms must be > 0");
        // Durations are added to Instants: beyond MAX_MS that could overflow.
        let mut durations = vec![
            ("drain_timeout_ms", self.drain_timeout_ms),
            ("drain_withdraw_ms", self.drain_withdraw_ms),
            ("limits.head_timeout_ms", l.head_timeout_ms),
            ("limits.handoff_timeout_ms", l.handoff_timeout_ms),
            ("flows.closed_grace_ms", f.closed_grace_ms),
            ("flows.idle_timeout_ms", f.idle_timeout_ms),
            ("flows.sweep_interval_ms", f.sweep_interval_ms),
            ("flows.orphan_timeout_ms", f.orphan_timeout_ms),
            ("control.connect_timeout_ms", c.connect_timeout_ms),
            ("control.heartbeat_ms", c.heartbeat_ms),
            ("control.dead_after_ms", c.dead_after_ms),
            ("control.max_backoff_ms", c.max_backoff_ms),
            ("control.refused_pause_ms", c.refused_pause_ms),
        ];
        durations.extend(
            self.groups
                .iter()
                .filter_map(|g| Some(("group k_ms", g.k_ms?))),
        );
        for (name, v) in durations {
            ensure!(v <= MAX_MS, "{name} must be at most {MAX_MS} (24 h)");
        }
        let mut controls = std::collections::HashSet::new();
        for b in &self.backends {
            if let Some(control) = b.control {
                ensure!(
                    controls.insert(control),
                    "backend {}: control address {control} is used by another backend",
                    b.name,
                );
            }
        }
        // A handed-off flow's entry records its back-end's control IP (a
        // restarted front finds the back-end by it): one handoff back-end
        // per IP.
        let mut ips = std::collections::HashMap::new();
        for b in &self.backends {
            if let (BackendMode::Handoff, Some(c)) = (b.mode, b.control) {
                if let Some(other) = ips.insert(*c.ip(), &b.name) {
                    anyhow::bail!(
                        "back-ends {other} and {} have the same control IP {}: a front finds a handed-off flow's back-end by its IP, give each its own",
                        b.name,
                        c.ip()
                    );
                }
            }
        }
        let r = &self.relay;
        ensure!(
            r.connect_timeout_ms > 0,
            "relay.connect_timeout_ms must be > 0"
        );
        ensure!(r.idle_timeout_ms > 0, "relay.idle_timeout_ms must be > 0");
        ensure!(r.max_connections > 0, "relay.max_connections must be > 0");
        ensure!(
            r.upstream_idle_timeout_ms > 0,
            "relay.upstream_idle_timeout_ms must be > 0"
        );
        for (name, v) in [
            ("relay.connect_timeout_ms", r.connect_timeout_ms),
            ("relay.idle_timeout_ms", r.idle_timeout_ms),
            ("relay.upstream_idle_timeout_ms", r.upstream_idle_timeout_ms),
        ] {
            ensure!(v <= MAX_MS, "{name} must be at most {MAX_MS} (24 h)");
        }
        if !self.admin_listen.ip().is_loopback() {
            tracing::warn!(
                admin_listen = %self.admin_listen,
                "admin_listen is not a loopback address: /stats and /ready have no authentication"
            );
        }
        if self.uses_handoff() {
            let Some(key) = &self.key_file else {
                bail!("key_file is required: handoff back-ends are used (handoff = true)");
            };
            load_key(key)?;
        } else if let Some(key) = &self.key_file {
            load_key(key)?;
        }

        Ok(())
    }

    /// Whether any connection may be handed off: `handoff = true` and at
    /// least one handoff back-end.
    pub fn uses_handoff(&self) -> bool {
        self.handoff && self.backends.iter().any(|b| b.mode == BackendMode::Handoff)
    }
}

impl BackendConfig {
    /// The keys each mode needs and allows. `handoff`: the front's
    /// `handoff` setting (when false, handoff back-ends are relayed to).
    fn validate(&self, handoff: bool) -> Result<()> {
        let name = &self.name;
        match self.mode {
            BackendMode::Handoff => {
                let Some(control) = self.control else {
                    bail!("backend {name}: control = \"host:port\" is required in handoff mode");
                };
                ensure!(
                    control.port() != 0,
                    "backend {name}: control port must not be 0"
                );
                ensure!(
                    self.address.is_none(),
                    "backend {name}: address is for mode = \"relay\"; a handoff back-end's plain HTTP address is relay_address"
                );
                if let Some(a) = &self.relay_address {
                    check_host_port(a).with_context(|| format!("backend {name}: relay_address"))?;
                }
                ensure!(
                    handoff || self.relay_address.is_some(),
                    "backend {name}: handoff = false relays every connection, so a handoff back-end needs relay_address"
                );
            }
            BackendMode::Relay => {
                let Some(a) = &self.address else {
                    bail!("backend {name}: address = \"host:port\" is required in relay mode");
                };
                check_host_port(a).with_context(|| format!("backend {name}: address"))?;
                ensure!(
                    self.control.is_none() && self.relay_address.is_none(),
                    "backend {name}: control and relay_address are for handoff back-ends, not mode = \"relay\""
                );
            }
        }
        Ok(())
    }
}

/// Checks the shape of a `host:port` address (the host is resolved at start).
pub fn check_host_port(a: &str) -> Result<()> {
    if a.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = a.rsplit_once(':') else {
        bail!("{a:?} is not host:port");
    };
    ensure!(
        !host.is_empty() && !host.contains(char::is_whitespace),
        "{a:?} has no valid host"
    );
    let port: u16 = port
        .parse()
        .with_context(|| format!("{a:?} has no valid port"))?;
    ensure!(port != 0, "{a:?}: port must not be 0");
    Ok(())
}

impl FrontConfig {
    /// Every group, with `default` added when not listed.
    pub fn group_configs(&self) -> Vec<GroupConfig> {
        let mut v = self.groups.clone();
        if !v.iter().any(|g| g.name == DEFAULT_GROUP) {
            v.push(GroupConfig::implicit_default(&self.policy));
        }
        v
    }

    /// The routing rules, compiled.
    pub fn routing_rules(&self) -> Result<baton_policy::Rules> {
        use baton_policy::{HostMatch, PathMatch, Rule};
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, r) in self.rules.iter().enumerate() {
            let host = match &r.host {
                Some(h) => Some(HostMatch::parse(h).with_context(|| format!("rule {}", i + 1))?),
                None => None,
            };
            let path = match (&r.path_prefix, &r.path_regex) {
                (Some(_), Some(_)) => {
                    bail!("rule {}: give path_prefix or path_regex, not both", i + 1)
                }
                (Some(p), None) => Some(PathMatch::Prefix(p.clone())),
                (None, Some(re)) => Some(PathMatch::Regex(re.clone())),
                (None, None) => None,
            };
            rules.push(Rule {
                host,
                path,
                group: r.group.clone(),
            });
        }
        baton_policy::Rules::new(rules, DEFAULT_GROUP).context("routing rules")
    }
}

impl BackConfig {
    /// Parses a back configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: BackConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(cfg)
    }

    /// Checks everything that can be checked without starting.
    pub fn validate(&self) -> Result<()> {
        ensure!(!self.vip.is_unspecified(), "vip must be a concrete address");
        ensure!(
            self.control_listen.port() != 0,
            "control_listen port must not be 0"
        );
        ensure!(
            self.docroot.is_dir(),
            "docroot {} is not a directory",
            self.docroot.display()
        );
        ensure!(self.load_report_ms > 0, "load_report_ms must be > 0");
        ensure!(self.max_fronts > 0, "max_fronts must be > 0");
        ensure!(self.front_silence_ms > 0, "front_silence_ms must be > 0");
        for (name, v) in [
            ("load_report_ms", self.load_report_ms),
            ("drain_timeout_ms", self.drain_timeout_ms),
            ("front_silence_ms", self.front_silence_ms),
        ] {
            ensure!(v <= MAX_MS, "{name} must be at most {MAX_MS} (24 h)");
        }
        if let Some(origin) = &self.origin {
            let uri: http::Uri = origin
                .parse()
                .with_context(|| format!("origin {origin:?} is not a URL"))?;
            ensure!(
                uri.scheme_str() == Some("http") && uri.authority().is_some(),
                "origin {origin:?} must be http://host:port (https is not supported)"
            );
            ensure!(
                self.cache_bytes > 0,
                "cache_bytes must be > 0 in caching mode"
            );
        }
        if let Some(t) = &self.direct_tls {
            ensure!(
                t.listen.port() != 0,
                "[direct_tls] listen port must not be 0"
            );
            let control = SocketAddr::V4(self.control_listen);
            ensure!(
                t.listen.port() != control.port() || !same_host(t.listen, control),
                "[direct_tls] listen {} is control_listen's address",
                t.listen
            );
            if let Some(d) = self.direct_listen {
                ensure!(
                    t.listen.port() != d.port() || !same_host(t.listen, d),
                    "[direct_tls] listen {} is direct_listen's address",
                    t.listen
                );
            }
            crate::direct_tls::server_config(t)?;
        }
        load_key(&self.key_file)?;
        Ok(())
    }
}

/// Whether two listeners on the same port would collide: the same IP, or
/// either one the wildcard.
fn same_host(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}

/// Reads the pre-shared key: the file's text with surrounding whitespace
/// removed, at least 16 bytes (e.g. 64 hex digits from a random source).
/// The file's bytes are wiped once the key holds its copy.
pub fn load_key(path: &Path) -> Result<baton_proto::auth::Psk> {
    let text = zeroize::Zeroizing::new(
        std::fs::read(path).with_context(|| format!("reading key file {}", path.display()))?,
    );
    let trimmed = text.trim_ascii();
    if trimmed.len() < 16 {
        bail!(
            "key file {} holds {} bytes; at least 16 are required",
            path.display(),
            trimmed.len()
        );
    }
    baton_proto::auth::Psk::new(trimmed).with_context(|| format!("key file {}", path.display()))
}

/// Which daemon a file configures, judged by its keys.
#[derive(Debug)]
pub enum AnyConfig {
    /// A front-end file.
    Front(Box<FrontConfig>),
    /// A back-end file.
    Back(Box<BackConfig>),
}

/// Loads and validates a file of either kind (for `baton check`).
pub fn check(path: &Path) -> Result<AnyConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", path.display()))?;
    if value.contains_key("control_listen") {
        let cfg: BackConfig = toml::from_str(&text)
            .with_context(|| format!("{} (back-end config)", path.display()))?;
        cfg.validate()
            .with_context(|| format!("{} (back-end config)", path.display()))?;
        Ok(AnyConfig::Back(Box::new(cfg)))
    } else {
        let cfg: FrontConfig = toml::from_str(&text)
            .with_context(|| format!("{} (front-end config)", path.display()))?;
        cfg.validate()
            .with_context(|| format!("{} (front-end config)", path.display()))?;
        Ok(AnyConfig::Front(Box::new(cfg)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn front(text: &str) -> Result<FrontConfig> {
        let cfg: FrontConfig = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    const TOP: &str = "vip = \"198.18.0.100\"\ninterface = \"eth0\"\n";

    fn err(text: &str) -> String {
        match front(text) {
            Ok(_) => panic!("should fail:\n{text}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn a_relay_only_front_needs_no_key_and_defaults_sensibly() {
        let cfg = front(&format!(
            "{TOP}[[backend]]\nname = \"web\"\nmode = \"relay\"\naddress = \"localhost:8080\"\n"
        ))
        .expect("valid");
        assert!(cfg.handoff, "handoff is the default");
        assert!(!cfg.uses_handoff(), "no handoff back-end");
        assert_eq!(cfg.backends[0].mode, BackendMode::Relay);
        assert_eq!(cfg.relay.copy, RelayCopy::Auto);
        assert_eq!(cfg.relay.idle_timeout_ms, 60_000);
        assert_eq!(cfg.relay.upstream_keepalive, 32);
        assert_eq!(cfg.relay.upstream_idle_timeout_ms, 4_000);
        let cfg = front(&format!(
            "{TOP}handoff = false\n[relay]\ncopy = \"userspace\"\n\
             [[backend]]\nname = \"b\"\ncontrol = \"198.18.0.11:7070\"\nrelay_address = \"198.18.0.11:8080\"\n"
        ))
        .expect("valid");
        assert_eq!(cfg.relay.copy, RelayCopy::Userspace);
        assert!(!cfg.uses_handoff());
    }

    #[test]
    fn flows_unknown_is_drop_by_default_pass_on_request_and_nothing_else() {
        let backend =
            "[[backend]]\nname = \"web\"\nmode = \"relay\"\naddress = \"localhost:8080\"\n";
        let cfg = front(&format!("{TOP}{backend}")).expect("valid");
        assert_eq!(cfg.flows.unknown, UnknownFlows::Drop);
        let cfg = front(&format!("{TOP}[flows]\nunknown = \"pass\"\n{backend}")).expect("valid");
        assert_eq!(cfg.flows.unknown, UnknownFlows::Pass);
        for bad in ["\"reset\"", "\"Drop\"", "true", "1"] {
            let e = err(&format!("{TOP}[flows]\nunknown = {bad}\n{backend}"));
            assert!(
                e.contains("unknown = ") && e.contains("expected \"drop\" or \"pass\""),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn two_handoff_back_ends_on_one_control_ip_are_refused() {
        let e = err(&format!(
            "{TOP}key_file = \"/k\"\n\
             [[backend]]\nname = \"a\"\ncontrol = \"198.18.0.11:7070\"\n\
             [[backend]]\nname = \"b\"\ncontrol = \"198.18.0.11:7071\"\n"
        ));
        assert!(e.contains("same control IP 198.18.0.11"), "{e}");
    }

    #[test]
    fn each_mode_has_its_keys() {
        let e = err(&format!(
            "{TOP}[[backend]]\nname = \"b\"\nmode = \"relay\"\n"
        ));
        assert!(e.contains("b") && e.contains("address"), "{e}");
        let e = err(&format!(
            "{TOP}[[backend]]\nname = \"b\"\nmode = \"relay\"\naddress = \"h:80\"\ncontrol = \"198.18.0.11:7070\"\n"
        ));
        assert!(e.contains("control"), "{e}");
        let e = err(&format!("{TOP}[[backend]]\nname = \"b\"\n"));
        assert!(e.contains("control"), "{e}");
        let e = err(&format!(
            "{TOP}[[backend]]\nname = \"b\"\ncontrol = \"198.18.0.11:7070\"\naddress = \"h:80\"\n"
        ));
        assert!(e.contains("relay_address"), "{e}");
        let e = err(&format!(
            "{TOP}handoff = false\n[[backend]]\nname = \"b\"\ncontrol = \"198.18.0.11:7070\"\n"
        ));
        assert!(e.contains("relay_address"), "{e}");
        let e = err(&format!(
            "{TOP}[[backend]]\nname = \"b\"\nmode = \"tunnel\"\naddress = \"h:80\"\n"
        ));
        assert!(e.contains("tunnel"), "{e}");
        let e = err(&format!(
            "{TOP}[[backend]]\nname = \"b\"\ncontrol = \"198.18.0.11:7070\"\n"
        ));
        assert!(e.contains("key_file"), "handoff needs the key: {e}");
    }

    #[test]
    fn addresses_are_host_and_port() {
        for ok in ["198.18.0.11:8080", "web.example:80", "[::1]:8080"] {
            assert!(check_host_port(ok).is_ok(), "{ok}");
        }
        for bad in [
            "198.18.0.11",
            "web:0",
            "web:http",
            ":80",
            "a b:80",
            "web:70000",
        ] {
            assert!(check_host_port(bad).is_err(), "{bad}");
        }
        let e = err(&format!(
            "{TOP}[[backend]]\nname = \"b\"\nmode = \"relay\"\naddress = \"nowhere\"\n"
        ));
        assert!(e.contains("nowhere"), "{e}");
    }

    #[test]
    fn direct_tls_is_checked_with_the_files_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        std::fs::write(d.join("psk"), "0123456789abcdef0123456789abcdef").expect("key");
        let ck = rcgen::generate_simple_self_signed(vec!["baton.test".to_string()])
            .expect("certificate");
        std::fs::write(d.join("c.pem"), ck.cert.pem()).expect("cert");
        std::fs::write(d.join("k.pem"), ck.signing_key.serialize_pem()).expect("key");
        let other =
            rcgen::generate_simple_self_signed(vec!["x.test".to_string()]).expect("certificate");
        std::fs::write(d.join("other.pem"), other.signing_key.serialize_pem()).expect("key");
        let back = |table: &str| -> Result<BackConfig> {
            let text = format!(
                "control_listen = \"198.18.0.11:7070\"\ndirect_listen = \"198.18.0.11:8080\"\n\
                 vip = \"198.18.0.100\"\ndocroot = {:?}\nkey_file = {:?}\n{table}",
                d.display().to_string(),
                d.join("psk").display().to_string()
            );
            let cfg: BackConfig = toml::from_str(&text)?;
            cfg.validate()?;
            Ok(cfg)
        };
        let tls = |listen: &str, cert: &str, key: &str| {
            format!(
                "[direct_tls]\nlisten = \"{listen}\"\ncert = {:?}\nkey = {:?}\n",
                d.join(cert).display().to_string(),
                d.join(key).display().to_string()
            )
        };
        assert!(back("").expect("valid").direct_tls.is_none());
        let cfg = back(&tls("198.18.0.11:8443", "c.pem", "k.pem")).expect("valid");
        assert_eq!(
            cfg.direct_tls.map(|t| (t.listen.port(), t.tickets)),
            Some((8443, 2)),
            "parsed, with the front's default tickets"
        );
        let cfg = back(&format!(
            "{}tickets = 0\n",
            tls("198.18.0.11:8443", "c.pem", "k.pem")
        ))
        .expect("valid");
        assert_eq!(cfg.direct_tls.map(|t| t.tickets), Some(0));
        for (table, words) in [
            (
                tls("0.0.0.0:8080", "c.pem", "k.pem"),
                &["direct_listen"][..],
            ),
            (
                tls("198.18.0.11:7070", "c.pem", "k.pem"),
                &["control_listen"],
            ),
            (tls("198.18.0.11:0", "c.pem", "k.pem"), &["port"]),
            (tls("198.18.0.11:8443", "none.pem", "k.pem"), &["none.pem"]),
            (
                tls("198.18.0.11:8443", "c.pem", "psk"),
                &["psk", "private key"],
            ),
            (
                tls("198.18.0.11:8443", "c.pem", "other.pem"),
                &["c.pem", "other.pem"],
            ),
            (
                "[direct_tls]\nlisten = \"198.18.0.11:8443\"\n".to_string(),
                &["cert"],
            ),
        ] {
            let e = match back(&table) {
                Ok(_) => panic!("should fail:\n{table}"),
                Err(e) => format!("{e:#}"),
            };
            for w in words {
                assert!(e.contains(w), "{table}: {e}");
            }
        }
    }

    #[test]
    fn relay_limits_are_checked() {
        let backend = "[[backend]]\nname = \"b\"\nmode = \"relay\"\naddress = \"h:80\"\n";
        for (table, word) in [
            ("idle_timeout_ms = 0", "idle_timeout_ms"),
            ("connect_timeout_ms = 0", "connect_timeout_ms"),
            ("connect_timeout_ms = 86400001", "24 h"),
            ("max_connections = 0", "max_connections"),
            ("upstream_idle_timeout_ms = 0", "upstream_idle_timeout_ms"),
            ("upstream_idle_timeout_ms = 86400001", "24 h"),
        ] {
            let e = err(&format!("{TOP}{backend}[relay]\n{table}\n"));
            assert!(e.contains(word), "{table}: {e}");
        }
    }
}
