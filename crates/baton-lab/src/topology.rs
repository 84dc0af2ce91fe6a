//! The lab's network: one namespace per host and one for the bridge that joins them.
//!
//! With one front (the default) every host is on the bridge, the client
//! too, and the front holds the VIP on its NIC. With several
//! ([`Topology::create_fronts`]), a router stands between the client and
//! the segment: the client is on a veth pair of its own with the router
//! (198.18.1.0/24), the router is on the segment at [`ROUTER_IP`], each
//! front `frontK` is at 198.18.0.(100+K) with the VIP on `lo` (it never
//! answers ARP for it: the router routes the VIP to the fronts' own
//! addresses), and back-ends and fronts reach the client through the
//! router (direct server return, through the router).
//!
//! Every veth pair is created from inside the bridge namespace straight into
//! its host namespace, so nothing ever appears in the root namespace, and
//! every namespace is removed again when the [`Topology`] is dropped (unless
//! [`Topology::keep`] hands it over to a lab that `down` will remove).
//!
//! Offloads are left at the veth defaults (TSO/checksum offload on, GRO off):
//! frames may carry partial checksums, which the BPF forwarder must handle.
//! With several fronts every link steers each flow to one CPU (RPS, as a
//! NIC's receive-side scaling does), so a flow's packets keep their order
//! (see `rps_default_mask`).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use crate::cmd::{self, ip_run, sysctl_in};
use crate::{daemon, validate_name, LabError};

/// The virtual IP: on the front's NIC, and on every back-end's `lo`.
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// Prefix length of the lab segment 198.18.0.0/24.
pub const PREFIX_LEN: u8 = 24;
/// The host NIC's name in every host namespace.
pub const IFACE: &str = "eth0";
/// The bridge device inside `{name}-br`.
pub const BRIDGE: &str = "br0";
/// At most this many back-ends: their addresses (198.18.0.11 up) must stay below the VIP.
pub const MAX_BACKENDS: usize = 89;

/// The client's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The front's address (the VIP is added beside it).
pub const FRONT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// The origin's address (only in labs that have one).
pub const ORIGIN_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 5);

/// At most this many fronts: 198.18.0.101 to .116.
pub const MAX_FRONTS: usize = 16;
/// The router's address on the segment (labs with several fronts).
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The client's own segment behind the router (labs with several fronts).
pub const CLIENT_NET: &str = "198.18.1.0/24";
/// The client's address in labs with several fronts: behind the router.
pub const ROUTED_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// The router's address on the client's segment.
pub const ROUTER_CLIENT_SIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// The router's NIC towards the client (its `eth0` is on the segment).
pub const ROUTER_CLIENT_IFACE: &str = "eth1";

/// The address of front `k` (1-based) in a lab with several fronts:
/// 198.18.0.(100+k).
pub fn front_ip(k: usize) -> Option<Ipv4Addr> {
    (1..=MAX_FRONTS)
        .contains(&k)
        .then(|| u8::try_from(100 + k).ok())
        .flatten()
        .map(|last| Ipv4Addr::new(198, 18, 0, last))
}

/// The host name of front `k` of `fronts`: `front` when it is the only
/// one (today's topology and names), else `frontK`.
pub fn front_name(k: usize, fronts: usize) -> String {
    if fronts <= 1 {
        String::from("front")
    } else {
        format!("front{k}")
    }
}

/// The address of back-end `k` (1-based): 198.18.0.(10+k).
pub fn back_ip(k: usize) -> Option<Ipv4Addr> {
    (1..=MAX_BACKENDS)
        .contains(&k)
        .then(|| u8::try_from(10 + k).ok())
        .flatten()
        .map(|last| Ipv4Addr::new(198, 18, 0, last))
}

/// The role a host plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs curl, wrk, benchmarks.
    Client,
    /// Runs `baton front`: front `K` (1-based). The only front holds the
    /// VIP on its NIC; each of several holds it on `lo`, behind the router.
    Front(usize),
    /// Routes between the client and the segment; spreads the VIP's
    /// packets over the fronts (labs with several fronts only).
    Router,
    /// Runs `baton back`; holds the VIP on `lo` and never answers ARP for it.
    Back(usize),
    /// Runs `baton serve`: where caching back-ends fetch their misses. A
    /// plain host like the client; it never sees the VIP.
    Origin,
}

/// One host of a topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `client`, `front`, `back1`...
    pub name: String,
    /// What it does.
    pub role: Role,
    /// Its namespace, `{lab}-{name}`.
    pub netns: String,
    /// Its address on [`IFACE`].
    pub ip: Ipv4Addr,
    /// The MAC of its [`IFACE`].
    pub mac: String,
}

/// A created lab network; dropping it removes every namespace it made (and
/// ends any process still living in one).
#[derive(Debug)]
pub struct Topology {
    name: String,
    hosts: Vec<Host>,
    /// Namespaces made so far, bridge first: what `Drop` must remove.
    made: Vec<String>,
    armed: bool,
}

/// The namespace of the bridge of lab `name`.
pub fn bridge_netns(name: &str) -> String {
    format!("{name}-br")
}

/// Whether `netns` belongs to lab `name`: `{name}-client`, `-front`,
/// `-frontK`, `-router`, `-origin`, `-br` or `-backK`.
/// The suffix is matched exactly so that lab `a` never claims lab `a-b`'s namespaces.
pub fn is_lab_netns(name: &str, netns: &str) -> bool {
    netns
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|host| host == "br" || is_host_name(host))
}

/// Whether `host` is a host name a lab can have (`client`, `router`,
/// `front`, `frontK`, `origin`, `backK`).
pub(crate) fn is_host_name(host: &str) -> bool {
    let numbered = |prefix: &str| {
        host.strip_prefix(prefix)
            .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
    };
    matches!(host, "client" | "front" | "origin" | "router")
        || numbered("back")
        || numbered("front")
}

fn ipv6_available() -> bool {
    Path::new("/proc/sys/net/ipv6").exists()
}

/// `net.core.rps_default_mask` for labs with several fronts: every CPU,
/// so every link made afterwards in the namespace steers each flow's
/// packets to one CPU by their hash (RPS), as a real NIC's receive-side
/// scaling does. Without it a veth hands each packet to the backlog of
/// the CPU that sent it, so two packets of one flow sent from two CPUs
/// (a back-end's ACK from the softirq, its FIN from the server's thread)
/// travel in parallel through every hop. Then the client may see the FIN
/// before the ACK (and reset the flow from TIME_WAIT), or its kernel may
/// lose the FIN while the ACK turns the orphaned socket into a timewait
/// one (`tcp_rcv_state_process`: "We still can lose it now, if it spins in
/// bh_lock_sock()"), leaving the back-end to resend its FIN after a
/// retransmission timeout. Measured in a three-front lab with a loop of
/// one-request connections and no change at all: one such timeout per
/// 800 connections before, none in 8,000 after. `None` where the kernel
/// has no such sysctl or the CPU count is unknown: the lab works as
/// before. Labs with one front keep the old delivery, so the benchmarks'
/// figures stay comparable with earlier runs.
fn rps_default_mask() -> Option<String> {
    if !Path::new("/proc/sys/net/core/rps_default_mask").exists() {
        return None;
    }
    // "0-1", "0-3,5": the highest possible CPU is the last number.
    let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible").ok()?;
    let last: usize = possible
        .trim()
        .rsplit([',', '-'])
        .next()
        .and_then(|n| n.parse().ok())?;
    Some(cpu_mask(last + 1))
}

/// A hex mask of CPUs `0..cpus` in the kernel's bitmap format (groups of
/// 32 bits separated by commas, the highest first): `3` for two CPUs.
fn cpu_mask(cpus: usize) -> String {
    let groups = cpus.div_ceil(32).max(1);
    (0..groups)
        .rev()
        .map(|g| {
            let bits = cpus.saturating_sub(g * 32).min(32);
            let word = if bits == 32 {
                u32::MAX
            } else {
                (1u32 << bits) - 1
            };
            if g == groups - 1 {
                format!("{word:x}")
            } else {
                format!("{word:08x}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Topology {
    /// Creates the namespaces, bridge, veths, addresses and sysctls of lab
    /// `name` with `backends` back-ends. On error everything made so far is
    /// removed again.
    pub fn create(name: &str, backends: usize) -> Result<Topology, LabError> {
        Self::build(name, backends, 1, false)
    }

    /// Like [`Topology::create`], plus the host `origin` ([`ORIGIN_IP`]) on the same segment.
    pub fn create_with_origin(name: &str, backends: usize) -> Result<Topology, LabError> {
        Self::build(name, backends, 1, true)
    }

    /// `fronts` fronts (1 to [`MAX_FRONTS`]; 1 is [`Topology::create`]'s
    /// topology), `backends` back-ends, and the origin if `origin`. From two
    /// fronts on: hosts `router` and `front1`..`frontN`, the client behind
    /// the router (see the module's documentation).
    pub fn create_fronts(
        name: &str,
        backends: usize,
        fronts: usize,
        origin: bool,
    ) -> Result<Topology, LabError> {
        Self::build(name, backends, fronts, origin)
    }

    fn build(
        name: &str,
        backends: usize,
        fronts: usize,
        origin: bool,
    ) -> Result<Topology, LabError> {
        validate_name(name)?;
        if backends == 0 || backends > MAX_BACKENDS {
            return Err(LabError::InvalidSpec(format!(
                "back-end count {backends} is outside 1..={MAX_BACKENDS}"
            )));
        }
        if fronts == 0 || fronts > MAX_FRONTS {
            return Err(LabError::InvalidSpec(format!(
                "front count {fronts} is outside 1..={MAX_FRONTS}"
            )));
        }
        let routed = fronts > 1;
        let mut hosts = if routed {
            let mut v = vec![
                (String::from("client"), Role::Client, ROUTED_CLIENT_IP),
                (String::from("router"), Role::Router, ROUTER_IP),
            ];
            for k in 1..=fronts {
                let ip = front_ip(k)
                    .ok_or_else(|| LabError::InvalidSpec(format!("no address for front{k}")))?;
                v.push((front_name(k, fronts), Role::Front(k), ip));
            }
            v
        } else {
            vec![
                (String::from("client"), Role::Client, CLIENT_IP),
                (String::from("front"), Role::Front(1), FRONT_IP),
            ]
        };
        for k in 1..=backends {
            let ip = back_ip(k)
                .ok_or_else(|| LabError::InvalidSpec(format!("no address for back{k}")))?;
            hosts.push((format!("back{k}"), Role::Back(k), ip));
        }
        if origin {
            hosts.push((String::from("origin"), Role::Origin, ORIGIN_IP));
        }

        let existing: Vec<String> = cmd::netns_list()?
            .into_iter()
            .filter(|ns| is_lab_netns(name, ns))
            .collect();
        if !existing.is_empty() {
            return Err(LabError::Exists {
                name: name.to_owned(),
                what: format!("namespaces {}", existing.join(", ")),
            });
        }

        let mut topo = Topology {
            name: name.to_owned(),
            hosts: Vec::new(),
            made: Vec::new(),
            armed: true,
        };
        let br = bridge_netns(name);
        let v6 = ipv6_available();
        let rps = if routed { rps_default_mask() } else { None };
        for ns in
            std::iter::once(br.clone()).chain(hosts.iter().map(|(h, _, _)| format!("{name}-{h}")))
        {
            ip_run(&["netns", "add", &ns])?;
            topo.made.push(ns.clone());
            if let Some(mask) = &rps {
                // Before any link: the mask is each new link's.
                sysctl_in(&ns, &[format!("net.core.rps_default_mask={mask}")])?;
            }
            if v6 {
                // Before any link exists, so no link ever gets an IPv6 address
                // or sends router solicitations, DAD or MLD: the lab is IPv4 only.
                sysctl_in(
                    &ns,
                    &[
                        "net.ipv6.conf.all.disable_ipv6=1".into(),
                        "net.ipv6.conf.default.disable_ipv6=1".into(),
                    ],
                )?;
            }
            ip_run(&["-n", &ns, "link", "set", "lo", "up"])?;
        }

        ip_run(&[
            "-n",
            &br,
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        ip_run(&["-n", &br, "link", "set", BRIDGE, "up"])?;
        // Where br_netfilter is loaded (Docker loads it), every bridged frame
        // would also go through iptables: a switch does not, and the cost
        // would fall unevenly on the configurations a benchmark compares
        // (a handoff's ACKs cross the bridge twice). The sysctls are per
        // namespace; this one only has the bridge.
        if std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
            sysctl_in(
                &br,
                &[
                    "net.bridge.bridge-nf-call-iptables=0".into(),
                    "net.bridge.bridge-nf-call-ip6tables=0".into(),
                    "net.bridge.bridge-nf-call-arptables=0".into(),
                ],
            )?;
        }

        for (host, role, ip) in hosts {
            let ns = format!("{name}-{host}");
            if routed && role == Role::Client {
                // Not on the segment: a veth pair straight to the router,
                // made from the router's side (never in the root namespace).
                let router_ns = format!("{name}-router");
                ip_run(&[
                    "-n",
                    &router_ns,
                    "link",
                    "add",
                    ROUTER_CLIENT_IFACE,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    IFACE,
                    "netns",
                    &ns,
                ])?;
                let side = format!("{ROUTER_CLIENT_SIDE_IP}/{PREFIX_LEN}");
                ip_run(&[
                    "-n",
                    &router_ns,
                    "addr",
                    "add",
                    &side,
                    "dev",
                    ROUTER_CLIENT_IFACE,
                ])?;
                ip_run(&["-n", &router_ns, "link", "set", ROUTER_CLIENT_IFACE, "up"])?;
            } else {
                ip_run(&[
                    "-n", &br, "link", "add", &host, "type", "veth", "peer", "name", IFACE,
                    "netns", &ns,
                ])?;
                ip_run(&["-n", &br, "link", "set", &host, "master", BRIDGE, "up"])?;
            }
            // Sysctls go in before any address or link-up, so there is never a
            // moment in which a back-end could answer ARP for the VIP.
            sysctl_in(&ns, &role_sysctls(role, routed))?;
            let cidr = format!("{ip}/{PREFIX_LEN}");
            ip_run(&["-n", &ns, "addr", "add", &cidr, "dev", IFACE])?;
            let vip = format!("{VIP}/32");
            match role {
                // A /32 beside the /24: the only front answers ARP for the
                // VIP on eth0 but never picks it as a source address.
                Role::Front(_) if !routed => {
                    ip_run(&["-n", &ns, "addr", "add", &vip, "dev", IFACE])?
                }
                // Behind the router, the VIP is routed to each front's own
                // address: on lo, never answered for in ARP, as on a back-end.
                Role::Front(_) | Role::Back(_) => {
                    ip_run(&["-n", &ns, "addr", "add", &vip, "dev", "lo"])?
                }
                Role::Client | Role::Origin | Role::Router => String::new(),
            };
            ip_run(&["-n", &ns, "link", "set", IFACE, "up"])?;
            if routed {
                // Answers to the client go through the router.
                let via = match role {
                    Role::Client => Some(("198.18.0.0/24", ROUTER_CLIENT_SIDE_IP)),
                    Role::Front(_) | Role::Back(_) | Role::Origin => Some((CLIENT_NET, ROUTER_IP)),
                    Role::Router => None,
                };
                if let Some((net, gw)) = via {
                    ip_run(&[
                        "-n",
                        &ns,
                        "route",
                        "add",
                        net,
                        "via",
                        &gw.to_string(),
                        "dev",
                        IFACE,
                    ])?;
                }
            }
            let mac = link_mac(&ns, IFACE)?;
            topo.hosts.push(Host {
                name: host,
                role,
                netns: ns,
                ip,
                mac,
            });
        }
        Ok(topo)
    }

    /// The lab name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hosts: client, front, back1..backN, then origin if there is one.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The host called `name`, if any.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// Every namespace of the topology, bridge first.
    pub fn namespaces(&self) -> &[String] {
        &self.made
    }

    /// Keeps the namespaces after this value is gone: from now on `down` owns them.
    pub fn keep(mut self) -> Vec<Host> {
        self.armed = false;
        std::mem::take(&mut self.hosts)
    }

    /// Shapes what `host` sends on its NIC to `rate` (a `tc` rate such as
    /// `100mbit`) with a token bucket: 64 KiB of burst, at most 50 ms of queue.
    pub fn limit_egress(&self, host: &str, rate: &str) -> Result<(), LabError> {
        check_rate(rate)?;
        let h = self
            .host(host)
            .ok_or_else(|| LabError::InvalidSpec(format!("topology has no host {host}")))?;
        let tc = cmd::tc().ok_or_else(|| {
            LabError::InvalidSpec("tc (iproute2) is needed to limit a link's rate".into())
        })?;
        let args: Vec<&OsStr> = [
            OsStr::new("netns"),
            OsStr::new("exec"),
            OsStr::new(&h.netns),
            tc.as_os_str(),
        ]
        .into_iter()
        .chain(
            [
                "qdisc", "add", "dev", IFACE, "root", "tbf", "rate", rate, "burst", "64kb",
                "latency", "50ms",
            ]
            .map(OsStr::new),
        )
        .collect();
        cmd::run(cmd::ip(), &args).map(drop)
    }

    /// Removes everything now and reports what could not be removed.
    pub fn destroy(mut self) -> Result<(), LabError> {
        self.armed = false;
        let problems = remove_namespaces(&self.made, &BTreeMap::new());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(LabError::Teardown {
                name: self.name.clone(),
                problems,
            })
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: a drop cannot report, and `down` cleans whatever survives.
            let _ = remove_namespaces(&self.made, &BTreeMap::new());
        }
    }
}

/// Checks that `rate` looks like a `tc` rate (`10mbit`, `1.5gbit`, `500kbps`):
/// a number and a unit, nothing `tc` could read as an option or a second argument.
pub(crate) fn check_rate(rate: &str) -> Result<(), LabError> {
    let digits = rate
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.');
    let number_len = digits.count();
    let well_formed = (1..=32).contains(&rate.len())
        && rate.bytes().next().is_some_and(|b| b.is_ascii_digit())
        && rate
            .get(number_len..)
            .is_some_and(|unit| unit.bytes().all(|b| b.is_ascii_alphabetic()));
    if well_formed {
        Ok(())
    } else {
        Err(LabError::InvalidSpec(format!(
            "rate {rate:?} is not a tc rate such as 100mbit"
        )))
    }
}

/// The router's multipath hash fields (`fib_multipath_hash_fields`, with
/// `fib_multipath_hash_policy=3`): source and destination address (0x1,
/// 0x2), protocol (0x4), source and destination port (0x10, 0x20).
pub const FIVE_TUPLE_HASH_FIELDS: u32 = 0x0037;

fn role_sysctls(role: Role, routed: bool) -> Vec<String> {
    let set = |keys: &[&str], v: u8| -> Vec<String> {
        keys.iter()
            .map(|k| format!("net.ipv4.conf.{k}={v}"))
            .collect()
    };
    match role {
        Role::Client | Role::Origin => Vec::new(),
        Role::Router => {
            // It forwards, hashes flows on their 4-tuple over the fronts,
            // and sees the back-ends' answers (from the VIP, which it routes
            // to the fronts) arrive on the segment: no reverse-path filter.
            // The hash is policy 3 on the 5-tuple's fields, not policy 1:
            // policy 1 takes a packet's L4 hash when it already has one,
            // and a veth carries the client socket's own hash (random per
            // connection, renewed by the client's kernel at a SYN or data
            // retransmission) into this namespace, so flows would land
            // where no 4-tuple says (`ip route get` disagreed with the
            // fronts' handoff counts for 12 of 15 connections) and move
            // when the client retransmits. A router on a wire sees only
            // the headers.
            let mut s = vec![
                "net.ipv4.ip_forward=1".to_owned(),
                "net.ipv4.fib_multipath_hash_policy=3".to_owned(),
                format!("net.ipv4.fib_multipath_hash_fields={FIVE_TUPLE_HASH_FIELDS:#06x}"),
            ];
            s.extend(set(
                &[
                    "all.rp_filter",
                    "default.rp_filter",
                    "eth0.rp_filter",
                    "eth1.rp_filter",
                ],
                0,
            ));
            s
        }
        Role::Front(_) if routed => {
            // As a back-end for ARP (the VIP is on lo), and as the only
            // front for reverse-path filtering.
            let mut s = set(&["all.rp_filter", "default.rp_filter", "eth0.rp_filter"], 0);
            s.extend(set(&["all.arp_ignore", "eth0.arp_ignore"], 1));
            s.extend(set(&["all.arp_announce", "eth0.arp_announce"], 2));
            s
        }
        Role::Front(_) => {
            // The front sees client packets for flows it handed off and, on
            // ingress, frames it did not route: no reverse-path filtering.
            let mut s = set(&["all.rp_filter", "default.rp_filter", "eth0.rp_filter"], 0);
            // Answer ARP for the VIP regardless of what the root namespace's defaults say.
            s.extend(set(&["all.arp_ignore", "eth0.arp_ignore"], 0));
            s
        }
        Role::Back(_) => {
            // Direct server return: the VIP on lo must stay invisible to ARP.
            let mut s = set(&["all.arp_ignore", "eth0.arp_ignore"], 1);
            s.extend(set(&["all.arp_announce", "eth0.arp_announce"], 2));
            s
        }
    }
}

/// The MAC address of `dev` in `netns`.
pub(crate) fn link_mac(netns: &str, dev: &str) -> Result<String, LabError> {
    let out = ip_run(&["-j", "-n", netns, "link", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| LabError::Command {
        command: format!("ip -j -n {netns} link show dev {dev}"),
        status: "unparsable output".into(),
        stderr: e.to_string(),
    })?;
    v.get(0)
        .and_then(|l| l.get("address"))
        .and_then(|a| a.as_str())
        .map(str::to_owned)
        .ok_or_else(|| LabError::Command {
            command: format!("ip -j -n {netns} link show dev {dev}"),
            status: "no address in output".into(),
            stderr: out.trim().to_owned(),
        })
}

/// How long processes get to exit after SIGTERM before SIGKILL.
pub(crate) const TERM_GRACE: Duration = Duration::from_secs(5);

/// Ends every process still in `namespaces` (plus the `daemons` process
/// groups), then deletes the namespaces. Returns what could not be done.
pub(crate) fn remove_namespaces(
    namespaces: &[String],
    daemons: &BTreeMap<String, daemon::ProcId>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut victims: Vec<daemon::Victim> = daemons
        .values()
        .filter_map(|p| daemon::Victim::group(*p))
        .collect();
    for ns in namespaces {
        match cmd::netns_pids(ns) {
            Ok(pids) => victims.extend(pids.into_iter().filter_map(daemon::Victim::process)),
            // Already gone: nothing lives in it.
            Err(_) if !netns_exists(ns) => {}
            Err(e) => problems.push(e.to_string()),
        }
    }
    problems.extend(daemon::terminate(&victims, TERM_GRACE));
    // Hosts before the bridge: a host namespace removed first takes its veth with it.
    for ns in namespaces.iter().rev() {
        if let Err(e) = ip_run(&["netns", "del", ns]) {
            if netns_exists(ns) {
                problems.push(e.to_string());
            }
        }
    }
    problems
}

fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_masks_are_in_the_kernels_bitmap_format() {
        assert_eq!(cpu_mask(1), "1");
        assert_eq!(cpu_mask(2), "3");
        assert_eq!(cpu_mask(8), "ff");
        assert_eq!(cpu_mask(32), "ffffffff");
        assert_eq!(cpu_mask(33), "1,ffffffff");
        assert_eq!(cpu_mask(72), "ff,ffffffff,ffffffff");
    }
}
