//! `baton announce` against a real BIRD in a network namespace: the VIP's
//! static protocol follows what `GET /serving` answers (a real HTTP
//! server: `baton serve`, whose docroot has a file `serving` or not), a
//! restarted BIRD gets the state again, and SIGTERM withdraws before the
//! announcer exits.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A namespace of this test, with everything in it killed and the
/// namespace removed on drop (also when the test fails).
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("bt{}-{tag}", std::process::id() % 100_000);
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(st.success(), "ip netns add {name}");
        let ns = Netns(name);
        let st = Command::new("ip")
            .args(["-n", &ns.0, "link", "set", "lo", "up"])
            .status()
            .expect("ip link set lo up");
        assert!(st.success());
        ns
    }

    /// Starts `argv` in the namespace with its output appended to `log`.
    fn spawn(&self, argv: &[&std::ffi::OsStr], log: &Path) -> Spawned {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("opening the log");
        let err = out.try_clone().expect("cloning the log handle");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawning");
        Spawned(child)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.0]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn bird_bin(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} (package bird2) is not installed: run scripts/setup"))
}

/// `birdc -s SOCK ARGS`, its output if it worked.
fn birdc(sock: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(bird_bin("birdc"))
        .arg("-s")
        .arg(sock)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The state BIRD shows for protocol `vip` (`up`, `down`), if it answers.
fn vip_state(sock: &Path) -> Option<String> {
    let out = birdc(sock, &["show", "protocols", "vip"])?;
    out.lines()
        .find(|l| l.starts_with("vip "))
        .and_then(|l| l.split_whitespace().nth(3))
        .map(str::to_owned)
}

/// Whether BIRD's table holds the VIP's route (what BGP would export).
fn route_held(sock: &Path) -> bool {
    birdc(sock, &["show", "route", "198.18.0.100/32"])
        .is_some_and(|o| o.contains("198.18.0.100/32"))
}

fn wait_for(what: &str, deadline: Duration, log: &Path, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    loop {
        if f() {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < deadline,
            "waited {deadline:?} for {what}; announcer log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

const BIRD_CONF: &str = "router id 198.18.0.1;\nprotocol device {}\n\
    protocol static vip {\n  disabled;\n  ipv4;\n  route 198.18.0.100/32 blackhole;\n}\n";

fn start_bird(ns: &Netns, dir: &Path) -> Spawned {
    let conf = dir.join("bird.conf");
    std::fs::write(&conf, BIRD_CONF).expect("writing bird.conf");
    let sock = dir.join("bird.ctl");
    let bird = ns.spawn(
        &[
            bird_bin("bird").as_os_str(),
            "-f".as_ref(),
            "-c".as_ref(),
            conf.as_os_str(),
            "-s".as_ref(),
            sock.as_os_str(),
            "-P".as_ref(),
            dir.join("bird.pid").as_os_str(),
        ],
        &dir.join("bird.log"),
    );
    let t = Instant::now();
    while vip_state(&sock).is_none() {
        assert!(t.elapsed() < Duration::from_secs(10), "BIRD did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    bird
}

fn start_serve(ns: &Netns, dir: &Path, docroot: &Path) -> Spawned {
    let serve = ns.spawn(
        &[
            baton().as_os_str(),
            "serve".as_ref(),
            "--listen".as_ref(),
            "127.0.0.1:9100".as_ref(),
            "--docroot".as_ref(),
            docroot.as_os_str(),
        ],
        &dir.join("serve.log"),
    );
    let t = Instant::now();
    loop {
        let ok = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "1",
            ])
            .arg("http://127.0.0.1:9100/")
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return serve;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "baton serve did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_announcer_follows_serving_and_bird_restarts_and_withdraws_on_sigterm() {
    require_root();
    let dir = TempDir::new("announce").expect("temp dir");
    let docroot = dir.0.join("docroot");
    std::fs::create_dir(&docroot).expect("docroot");
    let flag = docroot.join("serving");
    std::fs::write(&flag, "serving\n").expect("serving");
    let ns = Netns::new("an");
    let sock = dir.0.join("bird.ctl");
    let log = dir.0.join("announce.log");
    let mut bird = start_bird(&ns, &dir.0);
    let mut serve = start_serve(&ns, &dir.0, &docroot);
    assert_eq!(vip_state(&sock).as_deref(), Some("down"), "starts disabled");

    let mut announcer = ns.spawn(
        &[
            baton().as_os_str(),
            "announce".as_ref(),
            "--admin".as_ref(),
            "127.0.0.1:9100".as_ref(),
            "--bird-socket".as_ref(),
            sock.as_os_str(),
            "--protocol".as_ref(),
            "vip".as_ref(),
            "--interval-ms".as_ref(),
            "100".as_ref(),
            "--rise".as_ref(),
            "2".as_ref(),
            "--reassert-ms".as_ref(),
            "300".as_ref(),
        ],
        &log,
    );
    let up = |s: &Path| vip_state(s).as_deref() == Some("up") && route_held(s);
    let down = |s: &Path| vip_state(s).as_deref() == Some("down") && !route_held(s);
    wait_for(
        "the first announcement",
        Duration::from_secs(5),
        &log,
        || up(&sock),
    );

    // Not serving (a 404 here; a front says 503): withdrawn at the first poll.
    std::fs::remove_file(&flag).expect("removing the flag");
    let took = wait_for("a withdrawal on 404", Duration::from_secs(2), &log, || {
        down(&sock)
    });
    eprintln!("404 -> withdrawn after {took:?}");
    std::fs::write(&flag, "serving\n").expect("serving");
    wait_for(
        "the announcement again",
        Duration::from_secs(3),
        &log,
        || up(&sock),
    );

    // The server dies: refused, withdrawn.
    signal(serve.0.id(), "-KILL");
    let _ = serve.0.wait();
    let took = wait_for(
        "a withdrawal when refused",
        Duration::from_secs(2),
        &log,
        || down(&sock),
    );
    eprintln!("refused -> withdrawn after {took:?}");
    serve = start_serve(&ns, &dir.0, &docroot);
    wait_for(
        "the announcement after the restart",
        Duration::from_secs(3),
        &log,
        || up(&sock),
    );

    // BIRD restarts with the protocol disabled (its config says so): the
    // announcer says it again within its re-assertion period.
    signal(bird.0.id(), "-TERM");
    let _ = bird.0.wait();
    bird = start_bird(&ns, &dir.0);
    wait_for(
        "the re-assertion after BIRD restarted",
        Duration::from_secs(5),
        &log,
        || up(&sock),
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("withdrawing: /serving failed"), "{text}");
    assert!(text.contains("404"), "the reason is logged: {text}");
    assert!(
        text.contains("Connection refused"),
        "the reason is logged: {text}"
    );
    assert!(text.contains("BIRD had the other state"), "{text}");

    // SIGTERM: withdrawn, then exit 0.
    signal(announcer.0.id(), "-TERM");
    let t = Instant::now();
    let status = loop {
        if let Some(s) = announcer.0.try_wait().expect("waiting for the announcer") {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the announcer ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        status.success(),
        "announcer exit: {status}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(down(&sock), "SIGTERM left the route announced");
    drop((serve, bird));
}

#[test]
fn the_announcer_refuses_a_protocol_name_that_is_no_bird_symbol() {
    let out = Command::new(baton())
        .args([
            "announce",
            "--bird-socket",
            "/nonexistent/bird.ctl",
            "--protocol",
            "vip all",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("running baton announce");
    let (ok, text) = outcome(&out);
    assert!(!ok, "{text}");
    assert!(text.contains("not a BIRD protocol name"), "{text}");
}
