//! What a lab with several fronts adds: BGP speakers (BIRD 2), an
//! announcer per front, and the router's ECMP agent.
//!
//! Each front runs `bird` with a static protocol `vip` (the VIP's /32,
//! configured `disabled`) exported over eBGP to the router, and `baton
//! announce`, which enables `vip` while the front's `GET /serving` answers
//! 200. The router runs `bird` (one eBGP session per front, import all,
//! export none) and `baton lab ecmp-sync`, which reads the VIP's routes
//! from its BIRD and keeps a resilient next-hop group equal to the set of
//! fronts announcing: BIRD 2 cannot program Linux next-hop objects.
//!
//! Daemons beside a host's own are "helpers", recorded in the lab's state
//! under `bird-HOST`, `announce-frontK` and `ecmp-sync`, each with
//! `{key}.log` in the lab directory (BIRD writes its own log there too).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::cmd;
use crate::config::ADMIN_LISTEN;
use crate::topology::{front_ip, front_name, IFACE, ROUTER_IP, VIP};
use crate::LabError;

/// The router's AS.
pub const ROUTER_AS: u32 = 65000;
/// The fronts' AS (eBGP to the router; all fronts share it).
pub const FRONTS_AS: u32 = 65001;
/// BGP hold time, seconds: a front whose BIRD dies is dropped after this.
pub const HOLD_TIME_S: u32 = 3;
/// BGP keepalive interval, seconds.
pub const KEEPALIVE_S: u32 = 1;
/// The BIRD protocol on each front that originates the VIP's route.
pub const VIP_PROTOCOL: &str = "vip";
/// The BIRD protocol on each front that speaks BGP to the router
/// (`router` is a keyword of BIRD's configuration).
pub const UPLINK_PROTOCOL: &str = "uplink";
/// The id of the router's resilient next-hop group for the VIP; front K's
/// next hop has id K.
pub const ECMP_GROUP: u32 = 1000;
/// Buckets of the resilient group: enough that 16 fronts get 4 each.
pub const ECMP_BUCKETS: u32 = 64;
/// Seconds a bucket must see no packet before it may move to a front that
/// joined (or came back). A resilient group moves only idle buckets (with
/// `unbalanced_timer 0` it never forces one), so a flow keeps its front as
/// long as its bucket carries a packet at least this often. 40 s is above
/// the back-ends' keep-alive timeout (30 s: an open connection is never
/// silent for longer) and above TCP's first retransmission back-offs
/// (1+2+4+8+16 s), so no bucket of a live flow moves when a front joins.
/// The price: under constant load a returning front gets its buckets back
/// only as they fall idle. A front that leaves loses its buckets at once
/// whatever this says.
pub const ECMP_IDLE_TIMER_S: u32 = 40;
/// How often the agent reads BIRD's routes.
pub const ECMP_POLL_MS: u64 = 50;
/// The announcer's poll interval (also its poll timeout).
pub const ANNOUNCE_INTERVAL_MS: u64 = 100;
/// Good polls in a row before a front is announced.
pub const ANNOUNCE_RISE: u32 = 2;
/// `drain_withdraw_ms` in each front's config: on SIGTERM a front says it
/// is not serving and keeps accepting this long, so its route is withdrawn
/// before it stops taking connections (the announcer needs one interval,
/// BGP and the agent a few tens of milliseconds).
pub const DRAIN_WITHDRAW_MS: u64 = 1000;

/// The `bird` binary (package `bird2`).
pub(crate) fn bird() -> Result<&'static Path, LabError> {
    cmd::bird().ok_or_else(|| {
        LabError::InvalidSpec(
            "BIRD 2 (`bird`, package bird2) is needed for a lab with several fronts; \
             scripts/setup installs it"
                .into(),
        )
    })
}

/// The `birdc` binary (package `bird2`).
pub(crate) fn birdc() -> Result<&'static Path, LabError> {
    cmd::birdc().ok_or_else(|| {
        LabError::InvalidSpec(
            "birdc (package bird2) is needed for a lab with several fronts".into(),
        )
    })
}

/// A helper daemon beside a host's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Helper {
    /// BIRD on the router or a front.
    Bird,
    /// `baton announce` on a front.
    Announce,
    /// `baton lab ecmp-sync` on the router.
    EcmpSync,
}

impl Helper {
    /// Its name under the host in `status` (`bird`, `announce`, `ecmp-sync`).
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Helper::Bird => "bird",
            Helper::Announce => "announce",
            Helper::EcmpSync => "ecmp-sync",
        }
    }

    /// Its key in the lab's state (and the stem of its files).
    pub(crate) fn key(self, host: &str) -> String {
        match self {
            Helper::EcmpSync => String::from("ecmp-sync"),
            h => format!("{}-{host}", h.kind()),
        }
    }
}

/// The host and kind of a helper's key: `bird-front2` is front2's BIRD.
pub(crate) fn helper_of(key: &str) -> Option<(String, Helper)> {
    if key == "ecmp-sync" {
        return Some(("router".into(), Helper::EcmpSync));
    }
    if let Some(host) = key.strip_prefix("bird-") {
        return Some((host.to_owned(), Helper::Bird));
    }
    key.strip_prefix("announce-")
        .map(|host| (host.to_owned(), Helper::Announce))
}

/// The helpers of a lab with `fronts` fronts, host by host, in start order:
/// the router's BIRD and agent, then each front's BIRD and announcer.
pub(crate) fn helpers(fronts: usize) -> Vec<(String, Helper)> {
    let mut v = vec![
        (String::from("router"), Helper::Bird),
        (String::from("router"), Helper::EcmpSync),
    ];
    for k in 1..=fronts {
        v.push((front_name(k, fronts), Helper::Bird));
        v.push((front_name(k, fronts), Helper::Announce));
    }
    v
}

/// BIRD's files for `host` in `labdir`: config, control socket, pid file, log.
#[derive(Debug, Clone)]
pub(crate) struct BirdFiles {
    pub conf: PathBuf,
    pub ctl: PathBuf,
    pub pid: PathBuf,
    pub log: PathBuf,
}

impl BirdFiles {
    pub(crate) fn of(labdir: &Path, host: &str) -> BirdFiles {
        let stem = Helper::Bird.key(host);
        BirdFiles {
            conf: labdir.join(format!("{stem}.conf")),
            ctl: labdir.join(format!("{stem}.ctl")),
            pid: labdir.join(format!("{stem}.pid")),
            log: labdir.join(format!("{stem}.log")),
        }
    }
}

fn quoted(p: &Path) -> Result<String, LabError> {
    let s = p
        .to_str()
        .filter(|s| !s.contains('"') && !s.contains('\\') && !s.contains('\n'))
        .ok_or_else(|| {
            LabError::InvalidSpec(format!("path {} cannot be quoted for BIRD", p.display()))
        })?;
    Ok(format!("\"{s}\""))
}

/// Timers shared by both ends of every session: a dead speaker is noticed
/// within the hold time, a refused or lost session is tried again every
/// second, and graceful restart is off (a receiver that honours it keeps a
/// restarting speaker's routes for two minutes, which is the opposite of
/// what a withdrawal is for).
const SESSION_TIMERS: &str = "  hold time 3;\n  keepalive time 1;\n  connect delay time 1;\n  \
    connect retry time 1;\n  error wait time 1, 5;\n  graceful restart off;\n";

/// The router's BIRD: one eBGP session per front; the routes are read by
/// the agent over the control socket, none is exported to the kernel.
pub(crate) fn router_conf(log: &Path, fronts: usize) -> Result<String, LabError> {
    let mut out = format!(
        "# Written by baton lab: the router's BGP speaker. It learns each front's\n\
         # route to the VIP; `baton lab ecmp-sync` reads them over the control\n\
         # socket and keeps the kernel's resilient next-hop group in step.\n\
         log {} all;\n\
         router id {ROUTER_IP};\n\
         protocol device {{}}\n\
         template bgp fronts {{\n  local {ROUTER_IP} as {ROUTER_AS};\n{SESSION_TIMERS}  \
         ipv4 {{ import all; export none; }};\n}}\n",
        quoted(log)?
    );
    for k in 1..=fronts {
        let ip =
            front_ip(k).ok_or_else(|| LabError::InvalidSpec(format!("no address for front{k}")))?;
        let _ = writeln!(
            out,
            "protocol bgp {} from fronts {{ neighbor {ip} as {FRONTS_AS}; }}",
            front_name(k, fronts)
        );
    }
    Ok(out)
}

/// Front `ip`'s BIRD: the VIP's route, disabled until the announcer
/// enables it, exported to the router and nothing imported.
pub(crate) fn front_conf(log: &Path, ip: Ipv4Addr) -> Result<String, LabError> {
    Ok(format!(
        "# Written by baton lab: front {ip}'s BGP speaker. `baton announce` enables\n\
         # `{VIP_PROTOCOL}` while the front's GET /serving answers 200. The route exists\n\
         # only to be exported (no kernel protocol: nothing is installed here).\n\
         log {} all;\n\
         router id {ip};\n\
         protocol device {{}}\n\
         protocol static {VIP_PROTOCOL} {{\n  disabled;\n  ipv4;\n  route {VIP}/32 blackhole;\n}}\n\
         protocol bgp {UPLINK_PROTOCOL} {{\n  local {ip} as {FRONTS_AS};\n  \
         neighbor {ROUTER_IP} as {ROUTER_AS};\n{SESSION_TIMERS}  \
         ipv4 {{ import none; export where net = {VIP}/32; }};\n}}\n",
        quoted(log)?
    ))
}

/// The command line of `bird` for `host`: foreground, its own config,
/// control socket and pid file.
pub(crate) fn bird_argv(labdir: &Path, host: &str) -> Result<Vec<std::ffi::OsString>, LabError> {
    let f = BirdFiles::of(labdir, host);
    Ok(vec![
        bird()?.as_os_str().to_owned(),
        "-f".into(),
        "-c".into(),
        f.conf.into_os_string(),
        "-s".into(),
        f.ctl.into_os_string(),
        "-P".into(),
        f.pid.into_os_string(),
    ])
}

/// The command line of front `host`'s announcer.
pub(crate) fn announce_argv(bin: &Path, labdir: &Path, host: &str) -> Vec<std::ffi::OsString> {
    vec![
        bin.as_os_str().to_owned(),
        "announce".into(),
        "--admin".into(),
        ADMIN_LISTEN.into(),
        "--bird-socket".into(),
        BirdFiles::of(labdir, host).ctl.into_os_string(),
        "--protocol".into(),
        VIP_PROTOCOL.into(),
        "--interval-ms".into(),
        ANNOUNCE_INTERVAL_MS.to_string().into(),
        "--rise".into(),
        ANNOUNCE_RISE.to_string().into(),
    ]
}

/// The command line of the router's agent.
pub(crate) fn ecmp_argv(
    bin: &Path,
    labdir: &Path,
    fronts: usize,
) -> Result<Vec<std::ffi::OsString>, LabError> {
    let hops = (1..=fronts)
        .map(|k| {
            front_ip(k)
                .map(|ip| ip.to_string())
                .ok_or_else(|| LabError::InvalidSpec(format!("no address for front{k}")))
        })
        .collect::<Result<Vec<_>, _>>()?
        .join(",");
    Ok(vec![
        bin.as_os_str().to_owned(),
        "lab".into(),
        "ecmp-sync".into(),
        "--bird-socket".into(),
        BirdFiles::of(labdir, "router").ctl.into_os_string(),
        "--vip".into(),
        VIP.to_string().into(),
        "--dev".into(),
        IFACE.into(),
        "--next-hops".into(),
        hops.into(),
        "--group".into(),
        ECMP_GROUP.to_string().into(),
        "--buckets".into(),
        ECMP_BUCKETS.to_string().into(),
        "--idle-timer".into(),
        ECMP_IDLE_TIMER_S.to_string().into(),
        "--interval-ms".into(),
        ECMP_POLL_MS.to_string().into(),
    ])
}

/// The fronts in the router's group for the VIP now (by K), from `ip -j
/// nexthop show` in `router_ns`; empty when there is no group (no front
/// announces). All next hops are listed, not `id N`: asking for a missing
/// id is an error whose wording differs between kernels.
pub fn group_members(router_ns: &str) -> Result<Vec<usize>, LabError> {
    let out = cmd::ip_run(&["-j", "-n", router_ns, "nexthop", "show"])?;
    Ok(parse_group(&out, ECMP_GROUP))
}

/// Front K's second next hop in the router's group (`baton lab ecmp-sync`
/// lists each front twice, so that the kernel hashes even when one front
/// is left: see `baton_tools::ecmp`).
pub const TWIN_OFFSET: usize = 100;

/// The fronts (by K, each once) in group `id` in `ip -j nexthop show`'s output.
pub(crate) fn parse_group(json: &str, id: u32) -> Vec<usize> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let mut ids: Vec<usize> = v
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|n| n.get("id").and_then(serde_json::Value::as_u64) == Some(u64::from(id)))
        })
        .and_then(|g| g.get("group"))
        .and_then(|g| g.as_array())
        .map(|members| {
            members
                .iter()
                .filter_map(|m| m.get("id").and_then(serde_json::Value::as_u64))
                .filter_map(|id| usize::try_from(id).ok())
                .map(|id| {
                    if id > TWIN_OFFSET {
                        id - TWIN_OFFSET
                    } else {
                        id
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Whether the BGP session `protocol` of the BIRD at `ctl` is Established
/// (asked with `birdc`).
pub(crate) fn established(ctl: &Path, protocol: &str) -> Result<bool, LabError> {
    let birdc = birdc()?;
    let args = [
        std::ffi::OsStr::new("-s"),
        ctl.as_os_str(),
        std::ffi::OsStr::new("show"),
        std::ffi::OsStr::new("protocols"),
        std::ffi::OsStr::new(protocol),
    ];
    match cmd::run(birdc, &args) {
        Ok(out) => Ok(session_established(&out, protocol)),
        // Not up yet (no socket): not established.
        Err(LabError::Command { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `birdc show protocols` output lists `protocol` as Established.
pub(crate) fn session_established(out: &str, protocol: &str) -> bool {
    out.lines().any(|l| {
        let mut words = l.split_whitespace();
        words.next() == Some(protocol) && l.split_whitespace().any(|w| w == "Established")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_keys_round_trip() {
        for (host, h) in helpers(3) {
            assert_eq!(helper_of(&h.key(&host)), Some((host.clone(), h)));
        }
        assert_eq!(helper_of("front1"), None);
        assert_eq!(helpers(2).len(), 6);
    }

    #[test]
    fn configs_name_the_sessions_and_the_timers() {
        let r = router_conf(Path::new("/run/baton/labs/x/bird-router.log"), 3).expect("conf");
        assert!(r.contains("router id 198.18.0.1;"), "{r}");
        assert!(r.contains("protocol bgp front3 from fronts { neighbor 198.18.0.103 as 65001; }"));
        assert!(r.contains("hold time 3;") && r.contains("graceful restart off;"));
        assert!(r.contains("import all; export none;"));
        let f = front_conf(Path::new("/l"), Ipv4Addr::new(198, 18, 0, 102)).expect("conf");
        assert!(f.contains("protocol static vip {\n  disabled;"), "{f}");
        assert!(f.contains("route 198.18.0.100/32 blackhole;"));
        assert!(f.contains("neighbor 198.18.0.1 as 65000;"));
        assert!(f.contains("export where net = 198.18.0.100/32;"));
        assert!(front_conf(Path::new("/a\"b"), Ipv4Addr::LOCALHOST).is_err());
    }

    #[test]
    fn group_members_are_read_from_ip_json() {
        let j = r#"[{"id":1,"gateway":"198.18.0.101","dev":"eth0","scope":"link","flags":[]},
            {"id":3,"gateway":"198.18.0.103","dev":"eth0","scope":"link","flags":[]},
            {"id":1000,"group":[{"id":3},{"id":103},{"id":1},{"id":101}],"type":"resilient","resilient_args":{"buckets":64,"idle_timer":40,"unbalanced_timer":0,"unbalanced_time":0},"flags":[]}]"#;
        assert_eq!(parse_group(j, 1000), vec![1, 3]);
        assert_eq!(parse_group(j, 999), Vec::<usize>::new());
        assert_eq!(parse_group("[]", 1000), Vec::<usize>::new());
        assert_eq!(parse_group("", 1000), Vec::<usize>::new());
        assert_eq!(parse_group("junk", 1000), Vec::<usize>::new());
    }

    #[test]
    fn established_sessions_are_recognised() {
        let out =
            "BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\n\
                   uplink     BGP        ---        up     02:45:42.528  Established   \n";
        assert!(session_established(out, "uplink"));
        assert!(!session_established(out, "vip"));
        let active = "uplink     BGP        ---        start  02:45:42.528  Active\n";
        assert!(!session_established(active, "uplink"));
    }
}
