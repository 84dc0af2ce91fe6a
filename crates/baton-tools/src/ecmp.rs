//! `baton lab ecmp-sync`: the lab router's agent between BIRD and the
//! kernel's resilient next-hop group for the VIP.
//!
//! BIRD 2 learns the fronts' routes to the VIP over BGP but cannot program
//! Linux next-hop objects, so this agent reads them over BIRD's control
//! socket (`show route VIP/32`) every poll interval and keeps the group's
//! members equal to the next hops announced: `ip nexthop replace id GROUP
//! group a/b/c type resilient ...` only when the set changes, each change
//! logged with its time (the log is how failover is measured). With no
//! front announcing, the VIP's route is a blackhole: packets of live flows
//! and new SYNs are dropped and retried by the client's TCP until a front
//! returns, instead of an ICMP error that would abort the connections
//! being opened.
//!
//! Each front is in the group twice, as next hops K and
//! [`TWIN_OFFSET`]+K (the same gateway): the kernel hashes a flow onto the
//! buckets only when the group has more than one next hop, and a bucket it
//! does not hash onto never counts as busy. With one front left as one
//! next hop, every bucket would look idle, and the front that comes back
//! would take half of the live flows at once; twins keep the hashing, and
//! the idle timer, working with a single front. A front's twins come and
//! go together, so they share its load equally and leave together.
//!
//! [`next_hops`] and [`plan`] are pure (BIRD's reply in, next hops out;
//! the set before and after in, `ip` commands out); [`run`] is the loop.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use baton_daemon::bird::{Bird, BirdError, Reply};

/// `8001 Network not found`: no route to the prefix at all.
const NETWORK_NOT_FOUND: u16 = 8001;

/// Front K's second next hop in the group has id `TWIN_OFFSET + K`.
pub const TWIN_OFFSET: usize = baton_lab::fronts::TWIN_OFFSET;

/// The next hops BIRD lists for exactly `prefix` in a `show route PREFIX`
/// reply: the `via ADDRESS` of every route to it (one per front that
/// announces it). Anything unexpected in the listing is an error; `8001
/// Network not found` is the empty set.
pub fn next_hops(reply: &Reply, prefix: &str) -> Result<BTreeSet<Ipv4Addr>, String> {
    if reply.code() == NETWORK_NOT_FOUND {
        return Ok(BTreeSet::new());
    }
    if reply.is_error() {
        return Err(format!("{:04} {}", reply.code(), reply.summary()));
    }
    let mut hops = BTreeSet::new();
    // The prefix a line belongs to: listed once, then continuation lines
    // (another route to it, its `via`) start with blanks.
    let mut current: Option<String> = None;
    for line in &reply.lines {
        let text = line.text.as_str();
        if text.starts_with("Table ") || text.trim().is_empty() {
            continue;
        }
        if !text.starts_with(char::is_whitespace) {
            current = text.split_whitespace().next().map(str::to_owned);
        }
        let mut words = text.split_whitespace();
        if words.next() == Some("via") {
            let Some(addr) = words.next() else {
                return Err(format!("a `via` without an address: {text:?}"));
            };
            let ip: Ipv4Addr = addr
                .parse()
                .map_err(|_| format!("`via {addr}` is not an IPv4 address"))?;
            if current.as_deref() == Some(prefix) {
                hops.insert(ip);
            }
        }
    }
    Ok(hops)
}

/// What the agent needs to know to program the group.
#[derive(Debug, Clone)]
pub struct Group {
    /// The VIP's prefix, `A.B.C.D/32`.
    pub prefix: String,
    /// The segment's device on the router.
    pub dev: String,
    /// Every possible next hop (front K's is `hops[K-1]`, next-hop id K).
    pub hops: Vec<Ipv4Addr>,
    /// The group's id.
    pub id: u32,
    /// Its buckets.
    pub buckets: u32,
    /// Seconds a bucket must be idle before it may move to a new member.
    pub idle_timer: u32,
}

impl Group {
    /// The next-hop id of `ip` (K for front K), if it is one of the fronts.
    pub fn id_of(&self, ip: Ipv4Addr) -> Option<usize> {
        self.hops.iter().position(|h| *h == ip).map(|i| i + 1)
    }

    /// The commands that create the two next hops of every front, K and
    /// [`TWIN_OFFSET`]+K (idempotent).
    pub fn members(&self) -> Vec<Vec<String>> {
        self.hops
            .iter()
            .enumerate()
            .flat_map(|(i, ip)| {
                [i + 1, TWIN_OFFSET + i + 1].map(|id| {
                    argv(&[
                        "nexthop",
                        "replace",
                        "id",
                        &id.to_string(),
                        "via",
                        &ip.to_string(),
                        "dev",
                        &self.dev,
                    ])
                })
            })
            .collect()
    }
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// The `ip` commands that take the VIP's route from members `from` to
/// `to` (next-hop ids); none when they are the same set.
pub fn plan(g: &Group, from: &BTreeSet<usize>, to: &BTreeSet<usize>) -> Vec<Vec<String>> {
    if from == to {
        return Vec::new();
    }
    let id = g.id.to_string();
    if to.is_empty() {
        // Route first: the group cannot go while a route uses it.
        return vec![
            argv(&["route", "replace", "blackhole", &g.prefix]),
            argv(&["nexthop", "del", "id", &id]),
        ];
    }
    let members: Vec<String> = to
        .iter()
        .flat_map(|k| [k.to_string(), (TWIN_OFFSET + k).to_string()])
        .collect();
    let mut cmds = vec![argv(&[
        "nexthop",
        "replace",
        "id",
        &id,
        "group",
        &members.join("/"),
        "type",
        "resilient",
        "buckets",
        &g.buckets.to_string(),
        "idle_timer",
        &g.idle_timer.to_string(),
        "unbalanced_timer",
        "0",
    ])];
    if from.is_empty() {
        cmds.push(argv(&["route", "replace", &g.prefix, "nhid", &id]));
    }
    cmds
}

/// The `ip` binary.
fn ip_bin() -> PathBuf {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("ip"))
}

fn run_ip(ip: &Path, args: &[String]) -> Result<()> {
    let out = Command::new(ip)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", ip.display()))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn names(set: &BTreeSet<usize>) -> String {
    if set.is_empty() {
        return String::from("none");
    }
    set.iter()
        .map(|k| format!("front{k}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs the agent until it is signalled (SIGTERM's default action: it
/// holds nothing that needs cleaning up; the lab removes the namespace):
/// reads BIRD every `interval`, programs the group when the set of
/// announcing fronts changes. Returns only if it cannot start.
pub fn run(g: &Group, bird_socket: &Path, interval: Duration) -> Result<()> {
    let ip = ip_bin();
    for cmd in g.members() {
        run_ip(&ip, &cmd)?;
    }
    // Start from nothing announced: a blackhole, and no stale group.
    run_ip(&ip, &argv(&["route", "replace", "blackhole", &g.prefix]))?;
    let _ = run_ip(&ip, &argv(&["nexthop", "del", "id", &g.id.to_string()]));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let bird = Bird::new(bird_socket, interval.max(Duration::from_millis(200)));
    let command = format!("show route {}", g.prefix);
    let mut current: BTreeSet<usize> = BTreeSet::new();
    let mut complained = false;
    tracing::info!(
        group = g.id,
        prefix = %g.prefix,
        fronts = g.hops.len(),
        idle_timer_s = g.idle_timer,
        "ecmp-sync started: no front announces yet (blackhole)"
    );
    loop {
        let started = Instant::now();
        let reply: Result<Reply, BirdError> = rt.block_on(bird.command(&command));
        let wanted = match reply
            .map_err(|e| e.to_string())
            .and_then(|r| next_hops(&r, &g.prefix))
        {
            Ok(hops) => {
                complained = false;
                let mut ids = BTreeSet::new();
                for h in hops {
                    match g.id_of(h) {
                        Some(k) => {
                            ids.insert(k);
                        }
                        None => {
                            tracing::warn!(next_hop = %h, "a route to the VIP via a host that is no front: ignored")
                        }
                    }
                }
                Some(ids)
            }
            Err(e) => {
                // Keep the group as it is: BIRD may be restarting.
                if !complained {
                    tracing::warn!(error = %e, "cannot read the VIP's routes from BIRD; the group stays as it is");
                    complained = true;
                }
                None
            }
        };
        if let Some(wanted) = wanted {
            let cmds = plan(g, &current, &wanted);
            if !cmds.is_empty() {
                let t = Instant::now();
                let mut ok = true;
                for c in &cmds {
                    if let Err(e) = run_ip(&ip, c) {
                        tracing::warn!(error = %e, "programming the group failed; trying again next poll");
                        ok = false;
                        break;
                    }
                }
                if ok {
                    let added: BTreeSet<usize> = wanted.difference(&current).copied().collect();
                    let removed: BTreeSet<usize> = current.difference(&wanted).copied().collect();
                    tracing::info!(
                        group = g.id,
                        members = %if wanted.is_empty() { "none (blackhole)".into() } else { names(&wanted) },
                        added = %names(&added),
                        removed = %names(&removed),
                        took_us = t.elapsed().as_micros() as u64,
                        "group changed"
                    );
                    current = wanted;
                }
            }
        }
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_daemon::bird::ReplyParser;

    fn reply(text: &str) -> Reply {
        let mut p = ReplyParser::new();
        p.push(text.as_bytes())
            .expect("parses")
            .expect("a whole reply")
    }

    fn set(ips: &[[u8; 4]]) -> BTreeSet<Ipv4Addr> {
        ips.iter().map(|o| Ipv4Addr::from(*o)).collect()
    }

    const VIP: &str = "198.18.0.100/32";

    #[test]
    fn next_hops_of_one_two_and_no_front() {
        let one = reply(
            "1007-Table master4:\n 198.18.0.100/32      unicast [front1 02:45:46.674] * (100) [AS65001i]\n \tvia 198.18.0.101 on eth0\n0000 \n",
        );
        assert_eq!(next_hops(&one, VIP), Ok(set(&[[198, 18, 0, 101]])));
        let two = reply(
            "1007-Table master4:\n 198.18.0.100/32      unicast [front1 02:45:46.674] * (100) [AS65001i]\n \tvia 198.18.0.101 on eth0\n                     unicast [front3 02:45:47.001] (100) [AS65001i]\n \tvia 198.18.0.103 on eth0\n0000 \n",
        );
        assert_eq!(
            next_hops(&two, VIP),
            Ok(set(&[[198, 18, 0, 101], [198, 18, 0, 103]]))
        );
        assert_eq!(
            next_hops(&reply("8001 Network not found\n"), VIP),
            Ok(BTreeSet::new())
        );
    }

    #[test]
    fn other_prefixes_and_errors_are_not_next_hops() {
        let other = reply(
            "1007-Table master4:\n 198.18.0.0/24      unicast [x 02:45:46.674] * (100)\n \tvia 198.18.0.9 on eth0\n 198.18.0.100/32      unicast [front2 02:45:46.674] * (100)\n \tvia 198.18.0.102 on eth0\n0000 \n",
        );
        assert_eq!(next_hops(&other, VIP), Ok(set(&[[198, 18, 0, 102]])));
        assert!(next_hops(&reply("9001 syntax error\n"), VIP).is_err());
        let junk =
            reply("1007-Table master4:\n 198.18.0.100/32 unicast\n \tvia nowhere on eth0\n0000 \n");
        assert!(next_hops(&junk, VIP).is_err());
        let bare = reply("1007-Table master4:\n 198.18.0.100/32 unicast\n \tvia\n0000 \n");
        assert!(next_hops(&bare, VIP).is_err());
    }

    fn group() -> Group {
        Group {
            prefix: VIP.into(),
            dev: "eth0".into(),
            hops: vec![
                Ipv4Addr::new(198, 18, 0, 101),
                Ipv4Addr::new(198, 18, 0, 102),
                Ipv4Addr::new(198, 18, 0, 103),
            ],
            id: 1000,
            buckets: 64,
            idle_timer: 40,
        }
    }

    fn ids(v: &[usize]) -> BTreeSet<usize> {
        v.iter().copied().collect()
    }

    #[test]
    fn plans_change_the_group_only_when_the_set_changes() {
        let g = group();
        assert_eq!(g.id_of(Ipv4Addr::new(198, 18, 0, 103)), Some(3));
        assert_eq!(g.id_of(Ipv4Addr::new(198, 18, 0, 5)), None);
        assert!(plan(&g, &ids(&[1, 2]), &ids(&[2, 1])).is_empty());
        let first = plan(&g, &ids(&[]), &ids(&[1, 3]));
        assert_eq!(
            first,
            vec![
                argv(&[
                    "nexthop",
                    "replace",
                    "id",
                    "1000",
                    "group",
                    "1/101/3/103",
                    "type",
                    "resilient",
                    "buckets",
                    "64",
                    "idle_timer",
                    "40",
                    "unbalanced_timer",
                    "0"
                ]),
                argv(&["route", "replace", VIP, "nhid", "1000"]),
            ]
        );
        // A member more or less: the group only (the route already uses it).
        let grow = plan(&g, &ids(&[1, 3]), &ids(&[1, 2, 3]));
        assert_eq!(grow.len(), 1);
        assert!(grow[0].contains(&"1/101/2/102/3/103".to_owned()));
        // One front alone is still two next hops: the kernel keeps hashing.
        assert!(plan(&g, &ids(&[1, 2]), &ids(&[2]))[0].contains(&"2/102".to_owned()));
        assert_eq!(
            plan(&g, &ids(&[2]), &ids(&[])),
            vec![
                argv(&["route", "replace", "blackhole", VIP]),
                argv(&["nexthop", "del", "id", "1000"]),
            ]
        );
        assert_eq!(g.members().len(), 6);
        assert_eq!(
            g.members()[2],
            argv(&[
                "nexthop",
                "replace",
                "id",
                "2",
                "via",
                "198.18.0.102",
                "dev",
                "eth0"
            ])
        );
        assert_eq!(
            g.members()[3],
            argv(&[
                "nexthop",
                "replace",
                "id",
                "102",
                "via",
                "198.18.0.102",
                "dev",
                "eth0"
            ])
        );
    }
}
