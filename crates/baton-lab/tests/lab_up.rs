//! `up`, `status`, `exec` and `down` end to end, in real namespaces, with
//! this very binary standing in for the `baton` daemons: called as
//! `lab_up front --config F` or `lab_up back --config F` it serves just
//! enough (a `/ready` that checks every back-end's control port, HTTP on the
//! VIP) for `up` to see a working lab; called as `lab_up serve --listen A
//! --docroot D` it serves the files of D (the origin).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::panic::catch_unwind;
use std::path::Path;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use baton_lab::{down, exec, list, sample_content, status, up, LabError, LabSpec, OriginSpec};
use common::*;

/// Fake daemons exit on their own after this, so nothing leaks even if teardown fails.
const FAKE_LIFETIME: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let (Some(role), Some(flag), Some(config)) = (args.get(1), args.get(2), args.get(3)) {
        if flag == "--config" && (role == "front" || role == "back") {
            fake_daemon(role, Path::new(config));
        }
        if role == "serve" && flag == "--listen" && args.get(4).is_some_and(|a| a == "--docroot") {
            if let Some(docroot) = args.get(5) {
                fake_origin(config, Path::new(docroot));
            }
        }
    }
    let tests: &[(&str, fn())] = &[
        ("up_status_exec_down", up_status_exec_down),
        (
            "up_fails_at_once_when_a_daemon_dies",
            up_fails_at_once_when_a_daemon_dies,
        ),
        (
            "up_rejects_bad_specs_without_leaving_anything",
            up_rejects_bad_specs_without_leaving_anything,
        ),
        (
            "origin_serves_the_backends_and_goes_with_down",
            origin_serves_the_backends_and_goes_with_down,
        ),
        (
            "origin_rate_slows_what_backends_fetch",
            origin_rate_slows_what_backends_fetch,
        ),
        (
            "up_fails_at_once_when_the_origin_dies",
            up_fails_at_once_when_the_origin_dies,
        ),
    ];
    if args.iter().any(|a| a == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let filters: Vec<&String> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = Vec::new();
    for (name, test) in tests {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        println!("test {name} ...");
        match catch_unwind(*test) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    let left = namespaces_with(&prefix());
    if !left.is_empty() {
        println!("namespaces left behind: {left:?}");
        failed.push("cleanup");
    }
    if failed.is_empty() {
        println!("test result: ok");
        ExitCode::SUCCESS
    } else {
        println!("test result: FAILED: {failed:?}");
        ExitCode::FAILURE
    }
}

// ---- the fake daemons -------------------------------------------------------

/// `key = value` pairs of a flat TOML file, by table: "" for the top level;
/// each `[[backend]]` becomes `backend.N`.
fn parse_config(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).expect("read config");
    let mut out = BTreeMap::new();
    let mut table = String::new();
    let mut backends = 0;
    for line in text.lines().map(str::trim) {
        if line == "[[backend]]" {
            backends += 1;
            table = format!("backend.{backends}.");
        } else if let Some((k, v)) = line.split_once('=') {
            out.insert(
                format!("{table}{}", k.trim()),
                v.trim().trim_matches('"').to_owned(),
            );
        }
    }
    out
}

fn fake_daemon(role: &str, config: &Path) -> ! {
    let cfg = parse_config(config);
    let get = |k: &str| {
        cfg.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("config lacks {k}"))
    };
    thread::spawn(|| {
        thread::sleep(FAKE_LIFETIME);
        std::process::exit(0);
    });
    println!("fake {role} up with {cfg:?}");
    if role == "back" {
        // A caching back-end may fetch at once: the origin must already serve.
        if let Some(origin) = cfg.get("origin") {
            let addr = origin.trim_start_matches("http://");
            let addr: SocketAddr = addr.parse().expect("origin address");
            if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
                eprintln!("fake back: origin {addr} is not serving");
                std::process::exit(5);
            }
        }
        for key in ["control_listen", "direct_listen"] {
            let l = TcpListener::bind(get(key)).expect("bind");
            thread::spawn(move || {
                for s in l.incoming().flatten() {
                    drop(s)
                }
            });
        }
        loop {
            thread::park();
        }
    }
    if cfg.get("fake_fail").is_some_and(|v| v == "true") {
        eprintln!("fake front: failing on purpose");
        std::process::exit(3);
    }
    let controls: Vec<SocketAddr> = cfg
        .iter()
        .filter(|(k, _)| k.starts_with("backend.") && k.ends_with(".control"))
        .map(|(_, v)| v.parse().expect("control addr"))
        .collect();
    let admin = TcpListener::bind(get("admin_listen")).expect("bind admin");
    thread::spawn(move || {
        for s in admin.incoming().flatten() {
            let ready = controls
                .iter()
                .all(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok());
            respond(
                s,
                if ready {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                },
            );
        }
    });
    let vip = TcpListener::bind(format!("{}:{}", get("vip"), get("port"))).expect("bind vip");
    for s in vip.incoming().flatten() {
        respond(s, "200 OK");
    }
    std::process::exit(0)
}

/// The fake `baton serve`: `GET /path` answers the file under `docroot`
/// (no `..`), anything else 404. Exits at once if the docroot holds
/// `fake_fail_serve`, for the test of an origin that dies.
fn fake_origin(listen: &str, docroot: &Path) -> ! {
    thread::spawn(|| {
        thread::sleep(FAKE_LIFETIME);
        std::process::exit(0);
    });
    if docroot.join("fake_fail_serve").exists() {
        eprintln!("fake serve: failing on purpose");
        std::process::exit(4);
    }
    println!("fake serve on {listen} from {}", docroot.display());
    let l = TcpListener::bind(listen).expect("bind origin");
    for s in l.incoming().flatten() {
        let docroot = docroot.to_owned();
        thread::spawn(move || serve_file(s, &docroot));
    }
    std::process::exit(0)
}

fn serve_file(mut s: TcpStream, docroot: &Path) {
    let head = read_head(&mut s);
    let path = head
        .strip_prefix("GET /")
        .and_then(|rest| rest.split(' ').next())
        .filter(|p| !p.split('/').any(|c| c == ".."))
        .unwrap_or("");
    let file = if path.is_empty() {
        docroot.join("index.html")
    } else {
        docroot.join(path)
    };
    match std::fs::read(file) {
        Ok(body) => {
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
        Err(_) => {
            let _ = write!(
                s,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    }
}

/// The request head, up to its blank line (at most 64 KiB, 1 s).
fn read_head(s: &mut TcpStream) -> String {
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") && got.len() < 65536 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn respond(mut s: TcpStream, status: &str) {
    read_head(&mut s);
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfake\n"
    );
}

// ---- the tests --------------------------------------------------------------

fn spec(name: &str) -> LabSpec {
    let mut spec = LabSpec::new(name, std::env::current_exe().expect("own path"));
    spec.front_extra = Some("fake_note = 1".into());
    spec.back_extra = Some("fake_back = 2\n".into());
    spec
}

fn up_status_exec_down() {
    require_root();
    let name = unique_name();
    let _cleanup = DownOnDrop(name.clone());
    let info = up(&spec(&name)).expect("up");

    // The JSON contract the scripts read.
    let v = serde_json::to_value(&info).expect("json");
    assert_eq!(v["vip"], "198.18.0.100");
    assert_eq!(v["port"], 80);
    for (host, ip) in [
        ("client", "198.18.0.2"),
        ("front", "198.18.0.3"),
        ("back1", "198.18.0.11"),
        ("back2", "198.18.0.12"),
    ] {
        assert_eq!(
            v["hosts"][host]["netns"],
            format!("{name}-{host}"),
            "{host}"
        );
        assert_eq!(v["hosts"][host]["ip"], ip, "{host}");
        assert_eq!(v["hosts"][host]["iface"], "eth0", "{host}");
    }
    assert_eq!(info.hosts.len(), 4);

    // The files the daemons are started with.
    let dir = baton_lab::lab_dir(&name);
    let key_meta = std::fs::metadata(dir.join("key.hex")).expect("key");
    assert_eq!(key_meta.permissions().mode() & 0o777, 0o600);
    let key = std::fs::read_to_string(dir.join("key.hex")).expect("key");
    assert!(
        key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "{key:?}"
    );
    let back1 = std::fs::read_to_string(dir.join("back1.toml")).expect("back1.toml");
    assert_eq!(
        back1,
        format!(
            "control_listen = \"198.18.0.11:7070\"\ndirect_listen = \"198.18.0.11:8080\"\n\
             vip = \"198.18.0.100\"\ndocroot = \"{d}/docroot\"\nkey_file = \"{d}/key.hex\"\nfake_back = 2\n",
            d = dir.display()
        )
    );
    let front = std::fs::read_to_string(dir.join("front.toml")).expect("front.toml");
    let extra_at = front.find("fake_note = 1").expect("front extra");
    assert!(extra_at < front.find("[[backend]]").expect("backend table"));
    assert_eq!(front.matches("[[backend]]").count(), 2);
    assert_eq!(
        std::fs::metadata(dir.join("docroot/64m.bin"))
            .expect("64m")
            .len(),
        64 << 20
    );

    // status from the state file, with live daemons.
    let st = status(&name).expect("status");
    for host in ["front", "back1", "back2"] {
        assert_eq!(st.hosts[host].running, Some(true), "{host}");
        assert!(st.hosts[host].pid.is_some());
    }
    assert_eq!(st.hosts["client"].pid, None);
    assert!(list().contains(&name));

    // exec: exit codes, signals, unknown hosts, the bridge.
    let sh = |script: &str| vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
    assert_eq!(exec(&name, "client", &sh("exit 7")).expect("exec"), 7);
    assert_eq!(
        exec(&name, "client", &sh("kill -TERM $$")).expect("exec"),
        143
    );
    let fetch = sh("curl -sf --noproxy '*' http://198.18.0.100/ | grep -q fake");
    assert_eq!(exec(&name, "client", &fetch).expect("exec"), 0);
    assert_eq!(
        exec(&name, "br", &sh("ip link show br0 >/dev/null")).expect("exec"),
        0
    );
    assert_eq!(
        exec(
            &name,
            "back2",
            &sh("ip addr show dev lo | grep -q 198.18.0.100/32")
        )
        .expect("exec"),
        0
    );
    match exec(&name, "back3", &sh("true")) {
        Err(LabError::UnknownHost { known, .. }) => {
            assert_eq!(known, "client, front, back1, back2, br")
        }
        other => panic!("expected UnknownHost, got {other:?}"),
    }

    // A second lab of the same name is refused, and the first one keeps serving.
    match up(&spec(&name)) {
        Err(e @ LabError::Exists { .. }) => {
            assert!(e.to_string().contains("baton lab down --name"))
        }
        other => panic!("expected Exists, got {other:?}"),
    }
    assert_eq!(exec(&name, "client", &fetch).expect("exec"), 0);

    down(&name).expect("down");
    for host in ["front", "back1", "back2"] {
        let pid = st.hosts[host].pid.expect("pid");
        assert!(!running(pid), "{host} daemon {pid} survived down");
    }
    assert_eq!(namespaces_with(&format!("{name}-")), Vec::<String>::new());
    assert!(!dir.exists());
    down(&name).expect("down twice");
    assert!(matches!(status(&name), Err(LabError::NotFound { .. })));
    assert!(!list().contains(&name));
}

fn up_fails_at_once_when_a_daemon_dies() {
    require_root();
    let name = unique_name();
    let _cleanup = DownOnDrop(name.clone());
    let mut spec = spec(&name);
    spec.front_extra = Some("fake_fail = true".into());
    let started = Instant::now();
    match up(&spec) {
        Err(LabError::DaemonExited { host, tail, .. }) => {
            assert_eq!(host, "front");
            assert!(tail.contains("failing on purpose"), "{tail}");
        }
        other => panic!("expected DaemonExited, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    // Everything `up` made is gone, back-end daemons included.
    assert_eq!(namespaces_with(&format!("{name}-")), Vec::<String>::new());
    assert!(!baton_lab::lab_dir(&name).exists());
    let config_tag = format!("/run/baton/labs/{name}/");
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&config_tag) {
            assert!(!running(pid), "daemon {pid} of the failed lab still runs");
        }
    }
}

fn up_rejects_bad_specs_without_leaving_anything() {
    let name = unique_name();
    let mut s = spec("Bad_Name");
    assert!(matches!(up(&s), Err(LabError::InvalidName { .. })));
    s.name = name.clone();
    s.backends = 0;
    assert!(matches!(up(&s), Err(LabError::InvalidSpec(_))));
    s.backends = 2;
    s.baton_bin = "/nonexistent/baton".into();
    assert!(matches!(up(&s), Err(LabError::InvalidSpec(_))));
    s.baton_bin = std::env::current_exe().expect("own path");
    s.docroot = Some("/nonexistent/docroot".into());
    assert!(matches!(up(&s), Err(LabError::InvalidSpec(_))));
    assert_eq!(namespaces_with(&format!("{name}-")), Vec::<String>::new());
    assert!(!baton_lab::lab_dir(&name).exists());
}

// ---- the origin ---------------------------------------------------------------

fn origin_spec(name: &str, rate: Option<&str>) -> LabSpec {
    let mut s = spec(name);
    s.origin = Some(OriginSpec {
        rate: rate.map(str::to_owned),
        cache_bytes: 3 << 20,
    });
    s
}

/// Fetches `path` from the origin in `netns`; returns the body and curl's
/// `time_total` in seconds. Bounded by curl's own 20 s limit.
fn fetch_from_origin(netns: &str, path: &str) -> (Vec<u8>, f64) {
    let dir = std::env::temp_dir().join(format!("baton-lab-origin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let body_file = dir.join(path.replace('/', "_"));
    let body_s = body_file.to_string_lossy().into_owned();
    let url = format!("http://198.18.0.5:8080/{path}");
    let (ok, out) = in_ns(
        netns,
        &[
            "curl",
            "-sf",
            "--noproxy",
            "*",
            "--max-time",
            "20",
            "-o",
            &body_s,
            "-w",
            "%{time_total}",
            &url,
        ],
    );
    let body = std::fs::read(&body_file).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "curl {url} from {netns} failed: {out}");
    let secs = out.trim().parse().expect("curl time_total");
    (body, secs)
}

fn origin_serves_the_backends_and_goes_with_down() {
    require_root();
    let name = unique_name();
    let _cleanup = DownOnDrop(name.clone());
    let info = up(&origin_spec(&name, None)).expect("up");

    let v = serde_json::to_value(&info).expect("json");
    assert_eq!(v["hosts"]["origin"]["netns"], format!("{name}-origin"));
    assert_eq!(v["hosts"]["origin"]["ip"], "198.18.0.5");
    assert_eq!(v["hosts"]["origin"]["iface"], "eth0");
    assert_eq!(info.hosts.len(), 5);

    // The back-ends reach the origin across the bridge and get the lab's files.
    let back1 = format!("{name}-back1");
    let (body, unlimited) = fetch_from_origin(&back1, "1k.bin");
    assert!(body == sample_content("1k.bin", 1024), "1k.bin differs");
    let (body, unlimited_1m) = fetch_from_origin(&back1, "1m.bin");
    assert!(body == sample_content("1m.bin", 1 << 20), "1m.bin differs");
    // The baseline for the rate test: without a limit 1 MiB is quick.
    assert!(
        unlimited_1m < 0.5,
        "1 MiB without a rate limit took {unlimited_1m} s (1 KiB: {unlimited} s)"
    );

    // Every back-end is told where its origin is, before the extra TOML.
    let dir = baton_lab::lab_dir(&name);
    for k in [1, 2] {
        let text = std::fs::read_to_string(dir.join(format!("back{k}.toml"))).expect("backK.toml");
        let keys = "origin = \"http://198.18.0.5:8080\"\ncache_bytes = 3145728\nfake_back = 2\n";
        assert!(text.ends_with(keys), "back{k}.toml:\n{text}");
    }
    assert!(!dir.join("origin.toml").exists());
    assert!(std::fs::read_to_string(dir.join("origin.log"))
        .expect("origin.log")
        .contains("fake serve on 198.18.0.5:8080"));

    let st = status(&name).expect("status");
    let origin = &st.hosts["origin"];
    assert_eq!(origin.running, Some(true));
    assert_eq!(
        origin.log.as_deref(),
        Some(dir.join("origin.log").as_path())
    );
    assert_eq!(origin.config, None);
    let origin_pid = origin.pid.expect("origin pid");
    assert!(running(origin_pid));

    let sh = |script: &str| vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
    assert_eq!(
        exec(
            &name,
            "origin",
            &sh("ip addr show dev eth0 | grep -q 198.18.0.5/24")
        )
        .expect("exec"),
        0
    );
    match exec(&name, "back3", &sh("true")) {
        Err(LabError::UnknownHost { known, .. }) => {
            assert_eq!(known, "client, front, back1, back2, origin, br")
        }
        other => panic!("expected UnknownHost, got {other:?}"),
    }
    // No qdisc of ours without a rate.
    let (_, qdisc) = in_ns(
        &format!("{name}-origin"),
        &["tc", "qdisc", "show", "dev", "eth0"],
    );
    assert!(!qdisc.contains("tbf"), "{qdisc}");

    down(&name).expect("down");
    assert!(!running(origin_pid), "origin {origin_pid} survived down");
    assert_eq!(namespaces_with(&format!("{name}-")), Vec::<String>::new());
    assert!(!dir.exists());
}

fn origin_rate_slows_what_backends_fetch() {
    require_root();
    let name = unique_name();
    let _cleanup = DownOnDrop(name.clone());
    up(&origin_spec(&name, Some("10mbit"))).expect("up");
    let (_, qdisc) = in_ns(
        &format!("{name}-origin"),
        &["tc", "qdisc", "show", "dev", "eth0"],
    );
    assert!(qdisc.contains("tbf") && qdisc.contains("10Mbit"), "{qdisc}");

    // 1 MiB at 10 Mbit/s is about 0.84 s (less the 64 KiB burst); the
    // unlimited baseline in the test above is far under 0.5 s.
    let (body, secs) = fetch_from_origin(&format!("{name}-back2"), "1m.bin");
    assert!(body == sample_content("1m.bin", 1 << 20), "1m.bin differs");
    assert!(secs > 0.5, "1 MiB at 10 Mbit/s took only {secs} s");
    assert!(secs < 10.0, "1 MiB at 10 Mbit/s took {secs} s");

    down(&name).expect("down");
    assert_eq!(namespaces_with(&format!("{name}-")), Vec::<String>::new());
}

fn up_fails_at_once_when_the_origin_dies() {
    require_root();
    let name = unique_name();
    let _cleanup = DownOnDrop(name.clone());
    let docroot = std::env::temp_dir().join(format!("baton-lab-failserve-{}", std::process::id()));
    std::fs::create_dir_all(&docroot).expect("docroot");
    std::fs::write(docroot.join("fake_fail_serve"), "").expect("marker");
    let mut s = origin_spec(&name, None);
    s.docroot = Some(docroot.clone());
    let result = up(&s);
    let _ = std::fs::remove_dir_all(&docroot);
    match result {
        Err(LabError::DaemonExited { host, tail, .. }) => {
            assert_eq!(host, "origin");
            assert!(tail.contains("failing on purpose"), "{tail}");
        }
        other => panic!("expected DaemonExited, got {other:?}"),
    }
    assert_eq!(namespaces_with(&format!("{name}-")), Vec::<String>::new());
    assert!(!baton_lab::lab_dir(&name).exists());

    // A rate tc cannot parse fails `up` after the namespaces exist: they go again.
    let bad_rate = origin_spec(&name, Some("10bogus"));
    assert!(matches!(up(&bad_rate), Err(LabError::Command { .. })));
    assert_eq!(namespaces_with(&format!("{name}-")), Vec::<String>::new());
    assert!(!baton_lab::lab_dir(&name).exists());
    // One that is not even shaped like a rate is refused before anything is made.
    let not_a_rate = origin_spec(&name, Some("10mbit burst 1"));
    assert!(matches!(up(&not_a_rate), Err(LabError::InvalidSpec(_))));
}
