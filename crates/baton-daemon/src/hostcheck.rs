//! `baton check --host FILE`: whether this host is ready to run the daemon
//! FILE configures, checked from the host itself (run it in the same
//! network namespace, with the same privileges, as the daemon). Each check
//! says what it found and, when it fails, what to do.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use crate::config::{AnyConfig, BackConfig, FrontConfig};

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub ok: bool,
    pub what: String,
}

fn ok(what: impl Into<String>) -> Finding {
    Finding {
        ok: true,
        what: what.into(),
    }
}

fn fail(what: impl Into<String>) -> Finding {
    Finding {
        ok: false,
        what: what.into(),
    }
}

/// The checks for `cfg`'s kind of daemon.
pub fn run(cfg: &AnyConfig) -> Vec<Finding> {
    match cfg {
        AnyConfig::Front(f) => front(f),
        AnyConfig::Back(b) => back(b),
    }
}

fn front(cfg: &FrontConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    match baton_sys::iface::iface_info(&cfg.interface) {
        Ok(i) => out.push(ok(format!(
            "interface {} exists (index {})",
            cfg.interface, i.ifindex
        ))),
        Err(e) => out.push(fail(format!(
            "interface {}: {e}; set `interface` to the NIC on the back-ends' segment",
            cfg.interface
        ))),
    }
    if !cfg.vip.is_unspecified() {
        // Any local interface will do: the listener is bound to `interface`
        // (where the packets arrive), not to where the address is. Behind a
        // router (several fronts) the VIP is on lo and never answered for
        // in ARP, as on a back-end.
        let mut f = local_address(
            cfg.vip,
            &format!(
                "ip addr add {}/32 dev {} (or dev lo behind a router, with arp_ignore=1)",
                cfg.vip, cfg.interface
            ),
        );
        if f.ok {
            f.what.push_str(&format!(
                " (on any interface: {} for a front on the clients' segment, lo behind a router)",
                cfg.interface
            ));
        }
        out.push(f);
    }
    if cfg.handoff {
        out.push(capability(
            CAP_NET_ADMIN,
            "CAP_NET_ADMIN",
            "TCP_REPAIR and the forwarder's link",
        ));
        let bpf = has_capability(CAP_BPF) || has_capability(CAP_SYS_ADMIN);
        out.push(if bpf {
            ok("CAP_BPF (or CAP_SYS_ADMIN): may load the forwarder")
        } else {
            fail("neither CAP_BPF nor CAP_SYS_ADMIN: the forwarder cannot be loaded (run as root, or with AmbientCapabilities=CAP_BPF CAP_NET_ADMIN)")
        });
        out.push(capability(
            CAP_PERFMON,
            "CAP_PERFMON",
            "the verifier to accept the forwarder's packet pointer arithmetic",
        ));
        out.push(capability(
            CAP_NET_RAW,
            "CAP_NET_RAW",
            "re-sending kept client frames (AF_PACKET)",
        ));
        out.push(match baton_bpf::Forwarder::load() {
            Ok(_) => ok("the forwarder's BPF program loads (the kernel's verifier accepts it)"),
            Err(e) => fail(format!("the forwarder's BPF program does not load: {e}")),
        });
        out.push(match kernel_version() {
            Some((major, minor)) if (major, minor) >= (6, 6) => ok(format!(
                "Linux {major}.{minor}: the forwarder attaches with a TCX link"
            )),
            Some((major, minor)) => ok(format!(
                "Linux {major}.{minor}: no TCX (6.6+); the forwarder attaches as a clsact filter"
            )),
            None => fail("cannot read the kernel version (/proc/sys/kernel/osrelease)"),
        });
        out.push(repair_allowed());
        out.push(match cfg.pins() {
            None => ok("pin_dir = \"\": handed-off connections end with the front's process"),
            Some((dir, required)) => match baton_bpf::on_bpffs(&dir) {
                Ok(true) => ok(format!(
                    "{} is on a bpf filesystem: handed-off connections outlive a restart",
                    dir.display()
                )),
                Ok(false) if !required => ok(format!(
                    "{} is not on a bpf filesystem: handed-off connections end with the front's process \
                     (mount -t bpf bpf {0}, or set pin_dir = \"\")",
                    dir.display()
                )),
                Ok(false) => fail(format!(
                    "pin_dir {} is not on a bpf filesystem: mkdir -p {0} && mount -t bpf bpf {0}",
                    dir.display()
                )),
                Err(e) => fail(format!("pin_dir {}: {e}", dir.display())),
            },
        });
        if let Some(key) = &cfg.key_file {
            out.push(key_readable(key));
        }
    }
    out
}

fn back(cfg: &BackConfig) -> Vec<Finding> {
    let mut out = vec![local_address(
        cfg.vip,
        &format!("ip addr add {}/32 dev lo", cfg.vip),
    )];
    out.push(match vip_on_lo(cfg.vip) {
        Some(true) => ok(format!("the VIP {} is on lo", cfg.vip)),
        Some(false) => fail(format!(
            "the VIP {} is not on lo: on another interface, this host would answer ARP for it \
             (ip addr add {}/32 dev lo)",
            cfg.vip, cfg.vip
        )),
        None => fail("cannot list lo's addresses (ip -4 -o addr show dev lo)"),
    });
    out.push(sysctl_at_least(
        "net/ipv4/conf/all/arp_ignore",
        1,
        "never answer ARP for the VIP",
    ));
    out.push(sysctl_at_least(
        "net/ipv4/conf/all/arp_announce",
        2,
        "never announce the VIP",
    ));
    out.push(capability(CAP_NET_ADMIN, "CAP_NET_ADMIN", "TCP_REPAIR"));
    out.push(capability(
        CAP_NET_BIND_SERVICE,
        "CAP_NET_BIND_SERVICE",
        "restored sockets, bound to the VIP's port (80, 443)",
    ));
    out.push(repair_allowed());
    out.push(key_readable(&cfg.key_file));
    if cfg.origin.is_none() {
        out.push(match std::fs::read_dir(&cfg.docroot) {
            Ok(_) => ok(format!("docroot {} is readable", cfg.docroot.display())),
            Err(e) => fail(format!("docroot {}: {e}", cfg.docroot.display())),
        });
    }
    out
}

fn local_address(ip: Ipv4Addr, fix: &str) -> Finding {
    match std::net::TcpListener::bind(SocketAddr::from((ip, 0))) {
        Ok(_) => ok(format!("the VIP {ip} is a local address")),
        Err(e) => fail(format!("the VIP {ip} is not a local address ({e}): {fix}")),
    }
}

fn vip_on_lo(vip: Ipv4Addr) -> Option<bool> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", "lo"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let want = vip.to_string();
    Some(
        text.split_whitespace()
            .any(|w| w.split('/').next() == Some(want.as_str())),
    )
}

fn sysctl_at_least(key: &str, want: i64, why: &str) -> Finding {
    let dotted = key.replace('/', ".");
    match std::fs::read_to_string(Path::new("/proc/sys").join(key)) {
        Ok(v) => match v.trim().parse::<i64>() {
            Ok(n) if n >= want => ok(format!("{dotted} = {n}")),
            Ok(n) => fail(format!(
                "{dotted} = {n}, needs {want} ({why}): sysctl -w {dotted}={want}"
            )),
            Err(_) => fail(format!("{dotted}: unexpected value {:?}", v.trim())),
        },
        Err(e) => fail(format!("{dotted}: {e}")),
    }
}

fn repair_allowed() -> Finding {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| std::net::TcpStream::connect(l.local_addr()?));
    match probe {
        Ok(s) => {
            use std::os::fd::AsFd;
            match baton_sys::repair::set_repair(s.as_fd(), true) {
                Ok(()) => {
                    let _ = baton_sys::repair::set_repair(s.as_fd(), false);
                    ok("TCP_REPAIR is allowed")
                }
                Err(e) => fail(format!(
                    "TCP_REPAIR is not allowed ({e}): needs CAP_NET_ADMIN"
                )),
            }
        }
        Err(e) => fail(format!(
            "cannot open a loopback connection to probe TCP_REPAIR: {e}"
        )),
    }
}

fn key_readable(path: &Path) -> Finding {
    match crate::config::load_key(path) {
        Ok(_) => ok(format!("key file {} is a valid key", path.display())),
        Err(e) => fail(format!("key file {}: {e:#}", path.display())),
    }
}

const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn capability(bit: u32, name: &str, why: &str) -> Finding {
    if has_capability(bit) {
        ok(format!("{name} (for {why})"))
    } else {
        fail(format!(
            "no {name} (needed for {why}): run as root, or grant it (AmbientCapabilities={name})"
        ))
    }
}

/// Whether this process's effective capabilities include `bit`.
fn has_capability(bit: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_owned();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps >> bit & 1 == 1)
}

fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}
