//! End to end through a lab: relay mode, where the front proxies the bytes
//! instead of handing the connection off. Byte-exact downloads, keep-alive,
//! concurrency, request bodies and pipelining, back-ends that close early,
//! relay back-ends beside handoff back-ends, a refused handoff relayed
//! instead, and a front without the privileges for handoff. The HTTP relay
//! with kept back-end connections: reuse across one-request client
//! connections, stale kept connections retried, every response framing,
//! `Expect: 100-continue`, and `upstream_keepalive = 0` as the byte pump.

mod common;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Relay everything; entries (there are none) drain fast.
fn relay_only() -> String {
    format!("handoff = false\n{FAST_FLOWS}")
}

/// GETs `path` on a new connection to `addr` from the client namespace.
fn get(lab: &Lab, addr: SocketAddr, path: &str) -> io::Result<Response> {
    let req = get_request(path, true);
    in_netns(lab.netns("client").expect("client netns"), move || {
        exchange(addr, req.as_bytes(), false)
    })
}

/// Counter `key` after minus before.
fn grew(before: &Value, after: &Value, key: &str) -> u64 {
    counter(after, key) - counter(before, key)
}

/// 0 B, 1 KiB, 1 MiB and 64 MiB arrive byte for byte through a front that
/// relays everything; the response crosses the front's NIC (it is relayed,
/// not handed off) and the front counts it.
#[test]
fn relayed_downloads_are_byte_exact() {
    let lab = up(2, Some(&relay_only()), None);
    let tmp = TempDir::new("relay-dl").expect("temp dir");
    let before = stats(&lab);
    assert_eq!(before["handoff"], false, "{before:#}");
    let nic_before = lab.nic("front", "eth0").expect("front NIC counters");
    let mut body_bytes = 0u64;
    for name in ["empty.bin", "1k.bin", "1m.bin", "64m.bin"] {
        let out = tmp.0.join(name);
        let r = curl(&lab, &format!("/{name}"), &out, &[]);
        let want = sha256_file(&lab.docroot().join(name)).expect("hashing the docroot file");
        let got = sha256_file(&out).expect("hashing the download");
        assert_eq!((r.code, got), (200, want), "/{name}: {r:?}\n{}", logs(&lab));
        body_bytes += r.size;
        std::fs::remove_file(&out).ok();
    }
    let front = lab
        .nic("front", "eth0")
        .expect("front NIC counters")
        .since(&nic_before);
    let after = stats(&lab);
    eprintln!(
        "relayed {} bytes down, {} up; front eth0 sent {} bytes",
        grew(&before, &after, "relay_bytes_down"),
        grew(&before, &after, "relay_bytes_up"),
        front.tx_bytes
    );
    assert_eq!(grew(&before, &after, "relayed"), 4, "{after:#}");
    assert_eq!(counter(&after, "handoffs_ok"), 0, "{after:#}");
    assert_eq!(counter(&after, "relay_failures"), 0, "{after:#}");
    assert!(
        grew(&before, &after, "relay_bytes_down") > body_bytes,
        "the bodies ({body_bytes} bytes) and their heads were relayed\n{after:#}"
    );
    assert!(
        front.tx_bytes > 64 << 20,
        "a relayed response crosses the front's NIC; it sent only {} bytes",
        front.tx_bytes
    );
    // Two connections per relay (client and back-end), none left open.
    wait_stats(&lab, "relays to end", DRAIN_DEADLINE, |s| {
        counter(s, "relay_active") == 0
    });
    finish(lab);
}

/// 100 requests on one keep-alive connection: one TCP connection, all 200
/// and right, one relayed connection to one back-end.
#[test]
fn relayed_keep_alive_connection_stays_on_one_backend() {
    let lab = up(2, Some(&relay_only()), None);
    let before = stats(&lab);
    let addr = vip(&lab);
    let want = doc(&lab, "1k.bin");
    let (results, closed) = in_netns(lab.netns("client").expect("client netns"), move || {
        let mut c = HttpConn::connect(addr).expect("connect to the VIP");
        let mut out = Vec::new();
        for i in 0..100 {
            c.send(get_request("/1k.bin", i == 99).as_bytes())
                .expect("send");
            out.push(c.read_response(false));
        }
        // The last request asked to close: the back-end does, through the relay.
        (out, c.closed_within(Duration::from_secs(5)))
    });
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(r) if r.status == 200 && r.body == want => {}
            Ok(r) => panic!(
                "request {i}: status {} with {} bytes",
                r.status,
                r.body.len()
            ),
            Err(e) => panic!("request {i}: {e}\n{}", logs(&lab)),
        }
    }
    assert!(closed, "the connection stayed open after Connection: close");
    let after = stats(&lab);
    assert_eq!(grew(&before, &after, "relayed"), 1, "{after:#}");
    let per_backend: Vec<u64> = ["back1", "back2"]
        .iter()
        .map(|b| {
            backend(&after, b)["relayed"].as_u64().unwrap_or(0)
                - backend(&before, b)["relayed"].as_u64().unwrap_or(0)
        })
        .collect();
    assert_eq!(
        per_backend.iter().sum::<u64>(),
        1,
        "relayed per back-end grew by {per_backend:?}"
    );
    finish(lab);
}

/// 1,000 connections one after the other, then 1,000 open at once: every
/// response complete and right, none failed, none left relaying.
#[test]
fn thousand_sequential_and_thousand_concurrent_relays() {
    let lab = up(2, Some(&relay_only()), None);
    baton_sys::raise_nofile_limit().expect("raising RLIMIT_NOFILE");
    let addr = vip(&lab);
    let want = doc(&lab, "1k.bin");
    let netns = lab.netns("client").expect("client netns").to_owned();
    let before = stats(&lab);

    let t = Instant::now();
    let failures = sequential_gets(&netns, addr, "/1k.bin", want.clone(), 1000);
    eprintln!("1,000 sequential relays in {:?}", t.elapsed());
    assert!(
        failures.is_empty(),
        "{} of 1,000 sequential requests failed, first: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        logs(&lab)
    );

    let t = Instant::now();
    let failures = concurrent_gets(&netns, addr, "/1k.bin", want, 1000);
    eprintln!("1,000 concurrent relays served in {:?}", t.elapsed());
    assert!(
        failures.is_empty(),
        "{} of 1,000 concurrent requests failed, first: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        logs(&lab)
    );
    let s = wait_stats(&lab, "relays to end", DRAIN_DEADLINE, |s| {
        counter(s, "relay_active") == 0
    });
    assert_eq!(grew(&before, &s, "relayed"), 2000, "{s:#}");
    assert_eq!(counter(&s, "relay_failures"), 0, "{s:#}");
    finish(lab);
}

// ---- test back-ends: tiny HTTP servers in a back-end's namespace ----

/// Where the test servers listen: back1's address, ports the lab leaves free.
const ECHO: &str = "198.18.0.11:9000";
const EARLY: &str = "198.18.0.11:9001";
const FRAMES: &str = "198.18.0.11:9002";
const STALE: &str = "198.18.0.11:9003";

/// Front TOML for a relay-only lab with extra relay back-ends, each for
/// the requests under its path: `echo` (/echo/), `early` (/early/),
/// `frames` (/resp/), `stale` (/stale/). Kept back-end connections close
/// after 500 ms idle, so that the test servers see their clients go.
/// `relay`: more `[relay]` settings.
fn test_backends_with(relay: &str) -> String {
    let mut out = format!(
        "handoff = false\n{FAST_FLOWS}\n[relay]\nupstream_idle_timeout_ms = 500\n{relay}\n"
    );
    for (name, addr, prefix) in [
        ("echo", ECHO, "/echo/"),
        ("early", EARLY, "/early/"),
        ("frames", FRAMES, "/resp/"),
        ("stale", STALE, "/stale/"),
    ] {
        out.push_str(&format!(
            "[[backend]]\nname = \"{name}\"\nmode = \"relay\"\naddress = \"{addr}\"\ngroup = \"{name}\"\n\n\
             [[group]]\nname = \"{name}\"\n\n\
             [[rule]]\npath_prefix = \"{prefix}\"\ngroup = \"{name}\"\n\n"
        ));
    }
    out
}

fn test_backends_extra() -> String {
    test_backends_with("")
}

/// Serves `conns` connections on `addr` inside `netns` with `handler`, on a
/// thread; returns once the listener is bound. Each accept waits at most
/// 10 s, so the thread ends even if the test fails before connecting.
fn serve_in(
    netns: &str,
    addr: &'static str,
    conns: usize,
    handler: fn(TcpStream),
) -> std::thread::JoinHandle<()> {
    let ns = netns.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        baton_sys::netns::enter_named(&ns).expect("entering the back-end namespace");
        let l = TcpListener::bind(addr).expect("binding the test server");
        l.set_nonblocking(true).expect("nonblocking listener");
        tx.send(()).expect("signal");
        for _ in 0..conns {
            let deadline = Instant::now() + Duration::from_secs(10);
            let s = loop {
                match l.accept() {
                    Ok((s, _)) => break s,
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("test server accept: {e}"),
                }
            };
            s.set_nonblocking(false).expect("blocking stream");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            handler(s);
        }
    });
    rx.recv().expect("test server started");
    h
}

/// Reads a request body framed by Content-Length or chunked encoding.
fn read_body(r: &mut BufReader<TcpStream>, head: &str) -> io::Result<Vec<u8>> {
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    let mut body = Vec::new();
    if let Some(len) = header("content-length") {
        let len: usize = len.parse().map_err(|_| io::Error::other("bad length"))?;
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                let mut end = String::new();
                r.read_line(&mut end)?; // no trailers
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    }
    Ok(body)
}

/// An HTTP/1.1 server that answers every request on the connection with
/// 200 and `len=N sha256=H` of the body it decoded, until the client closes
/// (with a 100 Continue first if the request expects one).
fn echo_digest(s: TcpStream) {
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        if head.to_ascii_lowercase().contains("expect: 100-continue")
            && w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
        {
            return;
        }
        let Ok(body) = read_body(&mut r, &head) else {
            return;
        };
        let text = format!("len={} sha256={}", body.len(), sha256(&body));
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// Reads a request head, sends a response head promising 100,000 bytes and
/// 1,000 of them, then closes.
fn close_early(s: TcpStream) {
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {}
        }
    }
    let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
    let _ = w.write_all(&[b'e'; 1000]);
}

/// A request with a 300 KiB Content-Length body, one with a chunked body
/// and a GET, written back to back on one connection: the back-end decodes
/// both bodies exactly and answers all three. Through baton-serve, the POST
/// with a body gets its 405 and the GET behind it its file.
#[test]
fn request_bodies_and_pipelining_pass_through() {
    let lab = up(1, Some(&test_backends_extra()), None);
    let server = serve_in(
        lab.netns("back1").expect("back1 netns"),
        ECHO,
        1,
        echo_digest,
    );
    let addr = vip(&lab);
    let big: Vec<u8> = (0..300 * 1024u32).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<Vec<u8>> = (1..=7u32)
        .map(|k| (0..k * 3000).map(|i| (i % 13) as u8 + b'a').collect())
        .collect();
    let mut chunked = Vec::new();
    for c in &chunks {
        chunked.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        chunked.extend_from_slice(c);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let decoded: Vec<u8> = chunks.concat();

    let mut wire = format!(
        "POST /echo/upload HTTP/1.1\r\nHost: baton.test\r\nContent-Length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
    wire.extend_from_slice(&big);
    wire.extend_from_slice(
        b"POST /echo/chunked HTTP/1.1\r\nHost: baton.test\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    wire.extend_from_slice(&chunked);
    wire.extend_from_slice(get_request("/echo/get", true).as_bytes());
    let results = in_netns(lab.netns("client").expect("client netns"), move || {
        let mut c = HttpConn::connect(addr).expect("connect");
        c.send(&wire).expect("sending three requests at once");
        (0..3).map(|_| c.read_response(false)).collect::<Vec<_>>()
    });
    server.join().expect("echo server");
    let want = [
        format!("len={} sha256={}", big.len(), sha256(&big)),
        format!("len={} sha256={}", decoded.len(), sha256(&decoded)),
        format!("len=0 sha256={}", sha256(b"")),
    ];
    for (i, (r, w)) in results.iter().zip(&want).enumerate() {
        match r {
            Ok(r) => assert_eq!(
                (r.status, String::from_utf8_lossy(&r.body).into_owned()),
                (200, w.clone()),
                "response {i}"
            ),
            Err(e) => panic!("response {i}: {e}\n{}", logs(&lab)),
        }
    }

    // baton-serve: a small POST body is read past (405), the GET behind it served.
    let body = [b'x'; 500];
    let mut wire = format!(
        "POST /index.html HTTP/1.1\r\nHost: baton.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    wire.extend_from_slice(&body);
    wire.extend_from_slice(get_request("/1k.bin", true).as_bytes());
    let (r1, r2) = in_netns(lab.netns("client").expect("client netns"), move || {
        let mut c = HttpConn::connect(addr).expect("connect");
        c.send(&wire).expect("send");
        (c.read_response(false), c.read_response(false))
    });
    let r1 = r1.unwrap_or_else(|e| panic!("POST: {e}\n{}", logs(&lab)));
    let r2 = r2.unwrap_or_else(|e| panic!("GET after the POST: {e}\n{}", logs(&lab)));
    assert_eq!(r1.status, 405);
    assert_eq!((r2.status, r2.body == doc(&lab, "1k.bin")), (200, true));
    finish(lab);
}

/// A back-end that sends part of a response and closes: the client gets
/// exactly those bytes and then EOF at once, even though it keeps its own
/// side open. And a back-end daemon killed in the middle of a 64 MiB
/// response: the client's read ends promptly, short.
#[test]
fn backend_closing_early_gives_the_client_eof() {
    let lab = up(1, Some(&test_backends_extra()), None);
    let server = serve_in(
        lab.netns("back1").expect("back1 netns"),
        EARLY,
        1,
        close_early,
    );
    let addr = vip(&lab);
    let (got, took) = in_netns(lab.netns("client").expect("client netns"), move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(get_request("/early/x", false).as_bytes())
            .expect("send");
        let t = Instant::now();
        let mut got = Vec::new();
        let r = s.read_to_end(&mut got);
        (r.map(|_| got), t.elapsed())
    });
    server.join().expect("early-close server");
    let got = got.unwrap_or_else(|e| panic!("reading the cut response: {e}\n{}", logs(&lab)));
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
    assert_eq!(got.len(), head.len() + 1000, "the client got other bytes");
    assert!(got.starts_with(head) && got[head.len()..].iter().all(|b| *b == b'e'));
    assert!(
        took < Duration::from_secs(2),
        "EOF came {took:?} after the request"
    );

    // The back-end daemon dies with most of a 64 MiB response unsent.
    let pid = pid_of(&lab, "back1");
    let netns = lab.netns("client").expect("client netns").to_owned();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        baton_sys::netns::enter_named(&netns).expect("client namespace");
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(get_request("/64m.bin", false).as_bytes())
            .expect("send");
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        while total < 1 << 20 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        tx.send(()).expect("signal");
        go_rx.recv().expect("wait for the kill");
        let t = Instant::now();
        let end = loop {
            match s.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => total += n,
                Err(e) => break Err(e),
            }
        };
        (total, end.map_err(|e| e.to_string()), t.elapsed())
    });
    rx.recv().expect("reader thread");
    signal(pid, "-9");
    go_tx.send(()).expect("signal");
    let (total, end, took) = reader.join().expect("reader thread");
    eprintln!("killed back-end: the client read {total} bytes, then {end:?} after {took:?}");
    assert!(
        total < 64 << 20,
        "the whole response arrived although its back-end was killed"
    );
    assert!(
        took < Duration::from_secs(3),
        "the client waited {took:?} for the end of a response whose back-end died ({end:?})"
    );
    wait_stats(&lab, "relays to end", DRAIN_DEADLINE, |s| {
        counter(s, "relay_active") == 0
    });
    finish(lab);
}

/// A handoff front with a relay back-end beside its handoff back-ends:
/// requests routed to the relay back-end are relayed, the others handed off.
#[test]
fn relay_backend_beside_handoff_backends() {
    let extra = format!(
        "{FAST_FLOWS}\n[[backend]]\nname = \"plain\"\nmode = \"relay\"\naddress = \"198.18.0.12:8080\"\ngroup = \"plain\"\n\n\
         [[group]]\nname = \"plain\"\n\n[[rule]]\npath_prefix = \"/1m\"\ngroup = \"plain\"\n"
    );
    let lab = up(2, Some(&extra), None);
    let before = stats(&lab);
    assert_eq!(before["handoff"], true, "{before:#}");
    let addr = vip(&lab);
    for _ in 0..3 {
        let r = get(&lab, addr, "/1m.bin").unwrap_or_else(|e| panic!("{e}\n{}", logs(&lab)));
        assert_eq!((r.status, r.body == doc(&lab, "1m.bin")), (200, true));
        let r = get(&lab, addr, "/1k.bin").unwrap_or_else(|e| panic!("{e}\n{}", logs(&lab)));
        assert_eq!((r.status, r.body == doc(&lab, "1k.bin")), (200, true));
    }
    let after = stats(&lab);
    assert_eq!(grew(&before, &after, "relayed"), 3, "{after:#}");
    assert_eq!(grew(&before, &after, "handoffs_ok"), 3, "{after:#}");
    let plain = backend(&after, "plain");
    assert_eq!(
        (plain["mode"].as_str(), plain["relayed"].as_u64()),
        (Some("relay"), Some(3))
    );
    finish(lab);
}

/// A back-end that refuses a handoff (its VIP is gone from `lo`, so it
/// cannot restore the socket) has a relay_address: the connection is relayed
/// there instead, and the client never notices.
#[test]
fn refused_handoff_is_relayed_instead() {
    let lab = up(1, Some(FAST_FLOWS), None);
    let before = stats(&lab);
    let st = Command::new("ip")
        .args(["netns", "exec", lab.netns("back1").expect("back1 netns")])
        .args(["ip", "addr", "del", "198.18.0.100/32", "dev", "lo"])
        .status()
        .expect("ip addr del");
    assert!(st.success(), "removing back1's VIP");
    let addr = vip(&lab);
    let r = get(&lab, addr, "/1m.bin").unwrap_or_else(|e| panic!("{e}\n{}", logs(&lab)));
    assert_eq!((r.status, r.body == doc(&lab, "1m.bin")), (200, true));
    let after = stats(&lab);
    assert_eq!(grew(&before, &after, "handoffs_failed"), 1, "{after:#}");
    assert_eq!(grew(&before, &after, "relay_fallbacks"), 1, "{after:#}");
    assert_eq!(grew(&before, &after, "relayed"), 1, "{after:#}");
    assert!(
        lab.log_tail("back1", 10).contains("refusing handoff"),
        "back1 did not refuse:\n{}",
        logs(&lab)
    );
    finish(lab);
}

/// A second front, started by a test in the lab's front namespace on
/// another port and admin port; killed (by pid) when dropped.
struct ExtraFront {
    _daemon: Spawned,
    log: PathBuf,
    admin: SocketAddr,
}

/// Starts `baton front` with the lab's front.toml moved to `port` and
/// admin port `admin_port`; `unprivileged`: through setpriv, with every
/// capability dropped (no CAP_NET_ADMIN, CAP_BPF, CAP_NET_RAW). Returns once
/// its `/ready` answers 200.
fn extra_front(
    lab: &Lab,
    dir: &Path,
    port: u16,
    admin_port: u16,
    unprivileged: bool,
) -> ExtraFront {
    let text = std::fs::read_to_string(config_of(lab, "front")).expect("reading front.toml");
    // A front of its own: its own upgrade socket, and no pins (the lab's
    // front owns the interface's pinned forwarder).
    let sock = dir.join(format!("front-{port}.sock"));
    let text: String = text
        .replace("\nport = 80\n", &format!("\nport = {port}\n"))
        .replace("127.0.0.1:9100", &format!("127.0.0.1:{admin_port}"))
        .lines()
        .map(|l| {
            if l.starts_with("pin_dir") {
                "pin_dir = \"\"\n".to_owned()
            } else if l.starts_with("upgrade_socket") {
                format!("upgrade_socket = {:?}\n", sock.display().to_string())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(text.contains(&format!("port = {port}")), "{text}");
    let config = dir.join(format!("front-{port}.toml"));
    std::fs::write(&config, text).expect("writing the config");
    let log = dir.join(format!("front-{port}.log"));
    let out = std::fs::File::create(&log).expect("creating the log");
    let err = out.try_clone().expect("log handle");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", lab.netns("front").expect("front netns")]);
    if unprivileged {
        cmd.args([
            "setpriv",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            "--",
        ]);
    }
    let child = cmd
        .arg(baton())
        .args(["front", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawning the second front (is setpriv from util-linux installed?)");
    let mut daemon = Spawned(child);
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let ready = format!("http://{admin}/ready");
    let t = Instant::now();
    loop {
        if let Ok(Some(status)) = daemon.0.try_wait() {
            panic!(
                "the second front exited ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let out = lab
            .run("front", &["curl", "-sf", "--max-time", "2", &ready])
            .expect("curl /ready");
        if out.status.success() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the second front never became ready:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    ExtraFront {
        _daemon: daemon,
        log,
        admin,
    }
}

fn extra_stats(lab: &Lab, f: &ExtraFront) -> Value {
    let url = format!("http://{}/stats", f.admin);
    let out = lab
        .run("front", &["curl", "-sf", "--max-time", "5", &url])
        .expect("curl /stats");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "second front /stats: {e}\n{}",
            std::fs::read_to_string(&f.log).unwrap_or_default()
        )
    })
}

/// A front started without capabilities cannot use TCP_REPAIR or attach
/// BPF: it says so once, at start, and relays every connection to the
/// back-ends' relay_address, beside a privileged front that hands off.
#[test]
fn front_without_privileges_relays_and_says_why() {
    let lab = up(2, Some(FAST_FLOWS), None);
    let tmp = TempDir::new("relay-nopriv").expect("temp dir");
    let front = extra_front(&lab, &tmp.0, 8081, 9102, true);
    let second = SocketAddr::from((lab.info.vip, 8081));
    for path in ["/1k.bin", "/1m.bin", "/1k.bin"] {
        let r = get(&lab, second, path).unwrap_or_else(|e| {
            panic!(
                "{path} from the unprivileged front: {e}\n{}",
                std::fs::read_to_string(&front.log).unwrap_or_default()
            )
        });
        assert_eq!(
            (r.status, r.body == doc(&lab, &path[1..])),
            (200, true),
            "{path}"
        );
    }
    let s = extra_stats(&lab, &front);
    assert_eq!(s["handoff"], false, "{s:#}");
    assert_eq!(counter(&s, "relayed"), 3, "{s:#}");
    assert_eq!(counter(&s, "handoffs_ok"), 0, "{s:#}");

    // The privileged front beside it still hands off.
    let before = stats(&lab);
    let r = get(&lab, vip(&lab), "/1k.bin").unwrap_or_else(|e| panic!("{e}\n{}", logs(&lab)));
    assert_eq!(r.status, 200);
    assert_eq!(grew(&before, &stats(&lab), "handoffs_ok"), 1);

    let log = std::fs::read_to_string(&front.log).expect("reading the second front's log");
    let why: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot hand connections off"))
        .collect();
    assert_eq!(why.len(), 1, "one line says why, once:\n{log}");
    assert!(
        why[0].contains("not permitted")
            && why[0].contains("CAP_NET_ADMIN")
            && why[0].contains("relaying every connection"),
        "the line does not say why and what it does instead: {}",
        why[0]
    );
    drop(front);
    finish(lab);
}

// ---- the HTTP relay with kept back-end connections ----

/// A test back-end in `netns` on `addr` that serves each connection on a
/// thread of its own with `handler`; stops accepting when dropped (the
/// connection threads end with their peers or their 5 s read timeouts).
struct ThreadedServer {
    stop: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ThreadedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn serve_threads(netns: &str, addr: &'static str, handler: fn(TcpStream)) -> ThreadedServer {
    let ns = netns.to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let (tx, rx) = std::sync::mpsc::channel();
    let accept = std::thread::spawn(move || {
        baton_sys::netns::enter_named(&ns).expect("entering the back-end namespace");
        let l = TcpListener::bind(addr).expect("binding the test server");
        l.set_nonblocking(true).expect("nonblocking listener");
        tx.send(()).expect("signal");
        let deadline = Instant::now() + Duration::from_secs(180);
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).expect("blocking stream");
                    s.set_read_timeout(Some(Duration::from_secs(5)))
                        .expect("timeout");
                    std::thread::spawn(move || handler(s));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("test server accept: {e}"),
            }
        }
    });
    rx.recv().expect("test server started");
    ThreadedServer {
        stop,
        accept: Some(accept),
    }
}

/// Reads a request head (without its empty line); `None` at EOF, on an
/// error or a read timeout.
fn read_head_from(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) if line == "\r\n" => return Some(head),
            Ok(_) => head.push_str(&line),
        }
    }
}

/// What the `frames` back-end answers to `path`, given the request head it
/// saw: the raw response, and whether it closes the connection after it
/// (a body that only the close ends).
fn framed(path: &str, seen: &str) -> (Vec<u8>, bool) {
    let body = |n: usize| -> Vec<u8> { (0..n).map(|i| b'a' + (i % 26) as u8).collect() };
    let mut out = Vec::new();
    let close = match path {
        "/resp/chunked" => {
            out.extend_from_slice(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Test: a\r\n\r\n",
            );
            for (i, n) in [5usize, 100_000, 1, 4096].into_iter().enumerate() {
                out.extend_from_slice(format!("{n:x};n={i}\r\n").as_bytes());
                out.extend_from_slice(&body(n));
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
            false
        }
        "/resp/head" => {
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
            false
        }
        "/resp/204" => {
            out.extend_from_slice(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n");
            false
        }
        "/resp/304" => {
            out.extend_from_slice(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n");
            false
        }
        "/resp/close" => {
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n");
            out.extend_from_slice(&body(200_000));
            true
        }
        _ => {
            // What the back-end saw of the request head.
            out.extend_from_slice(
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", seen.len()).as_bytes(),
            );
            out.extend_from_slice(seen.as_bytes());
            false
        }
    };
    (out, close)
}

/// The `frames` back-end: answers each request as [`framed`] says.
fn frames_server(s: TcpStream) {
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    while let Some(head) = read_head_from(&mut r) {
        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
        let (raw, close) = framed(&path, &head);
        if w.write_all(&raw).is_err() || close {
            return;
        }
    }
}

/// `raw` as a client gets it when its connection ends with this
/// response: `Connection: close` at the end of the head.
fn with_close(raw: &[u8]) -> Vec<u8> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 2;
    let mut out = raw[..end].to_vec();
    out.extend_from_slice(b"Connection: close\r\n");
    out.extend_from_slice(&raw[end..]);
    out
}

fn read_exactly(s: &mut TcpStream, n: usize) -> io::Result<Vec<u8>> {
    let mut got = vec![0u8; n];
    s.read_exact(&mut got)?;
    Ok(got)
}

/// 300 client connections of one request each (`Connection: close`), one
/// after the other, then 100 at once: every response byte-exact, and the
/// back-end connections are kept and reused instead of opened per client.
#[test]
fn one_request_connections_share_kept_backend_connections() {
    let lab = up(2, Some(&relay_only()), None);
    let addr = vip(&lab);
    let netns = lab.netns("client").expect("client netns").to_owned();
    let before = stats(&lab);
    let failures = sequential_gets(&netns, addr, "/1k.bin", doc(&lab, "1k.bin"), 300);
    assert!(
        failures.is_empty(),
        "{} of 300 failed, first: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        logs(&lab)
    );
    let after = stats(&lab);
    let opened = grew(&before, &after, "relay_upstream_opened");
    let reused = grew(&before, &after, "relay_upstream_reused");
    eprintln!("300 one-request connections: {opened} back-end connections opened, {reused} reused");
    assert_eq!(grew(&before, &after, "relayed"), 300, "{after:#}");
    assert!(
        opened <= 30,
        "{opened} back-end connections opened for 300 requests\n{after:#}"
    );
    assert!(
        reused >= 270,
        "only {reused} of 300 requests reused a kept connection\n{after:#}"
    );
    assert!(counter(&after, "relay_upstream_idle") >= 1, "{after:#}");

    let failures = concurrent_gets(&netns, addr, "/1m.bin", doc(&lab, "1m.bin"), 100);
    assert!(
        failures.is_empty(),
        "{} of 100 concurrent failed, first: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        logs(&lab)
    );
    let s = wait_stats(&lab, "relays to end", DRAIN_DEADLINE, |s| {
        counter(s, "relay_active") == 0
    });
    assert_eq!(counter(&s, "relay_failures"), 0, "{s:#}");
    assert!(
        counter(&s, "relay_upstream_idle") <= 2 * 32,
        "more kept than upstream_keepalive per back-end\n{s:#}"
    );
    finish(lab);
}

/// Answers the first request of a connection; then closes it when it has
/// been idle 30 ms, or when a second request arrives (without answering):
/// every kept connection goes stale, some at the worst moment.
fn answer_once_then_close(s: TcpStream) {
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let Some(head) = read_head_from(&mut r) else {
        return;
    };
    let body = format!("fresh {}", head.split(' ').nth(1).unwrap_or(""));
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if w.write_all(resp.as_bytes()).is_err() {
        return;
    }
    let _ = r
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(30)));
    let _ = read_head_from(&mut r);
}

/// A back-end that closes its keep-alive connections quickly: requests on
/// them are retried on a new connection, and no client sees a failure.
#[test]
fn stale_kept_connections_are_retried_without_client_failures() {
    let lab = up(1, Some(&test_backends_extra()), None);
    let _server = serve_threads(
        lab.netns("back1").expect("back1 netns"),
        STALE,
        answer_once_then_close,
    );
    let addr = vip(&lab);
    let before = stats(&lab);
    let failures = in_netns(lab.netns("client").expect("client netns"), move || {
        let mut failures = Vec::new();
        let check = |i: usize, r: io::Result<Response>, failures: &mut Vec<String>| match r {
            Ok(r) if r.status == 200 && r.body == format!("fresh /stale/{i}").as_bytes() => {}
            Ok(r) => failures.push(format!("#{i}: {} {:?}", r.status, r.body)),
            Err(e) => failures.push(format!("#{i}: {e}")),
        };
        // One keep-alive connection, requests back to back and with pauses
        // longer than the back-end's idle close.
        let mut c = HttpConn::connect(addr).expect("connect");
        for i in 0..40 {
            if i % 4 == 3 {
                std::thread::sleep(Duration::from_millis(50));
            }
            let r = c
                .send(get_request(&format!("/stale/{i}"), false).as_bytes())
                .and_then(|_| c.read_response(false));
            check(i, r, &mut failures);
        }
        // And one-request connections.
        for i in 40..80 {
            let r = exchange(
                addr,
                get_request(&format!("/stale/{i}"), true).as_bytes(),
                false,
            );
            check(i, r, &mut failures);
        }
        failures
    });
    assert!(failures.is_empty(), "{failures:?}\n{}", logs(&lab));
    let after = stats(&lab);
    let retried = grew(&before, &after, "relay_upstream_retried");
    eprintln!(
        "stale back-end: {retried} retries, {} reused, {} opened",
        grew(&before, &after, "relay_upstream_reused"),
        grew(&before, &after, "relay_upstream_opened")
    );
    assert!(retried >= 10, "{after:#}");
    assert_eq!(counter(&after, "relay_failures"), 0, "{after:#}");
    finish(lab);
}

/// Chunked (with extensions and trailers), HEAD, 204, 304 and a body that
/// ends with the back-end's close: the client gets exactly the back-end's
/// bytes, then EOF where the connection ends; the back-end gets the request
/// without its hop-by-hop fields.
#[test]
fn every_response_framing_reaches_the_client_exactly() {
    let lab = up(1, Some(&test_backends_extra()), None);
    let _server = serve_threads(
        lab.netns("back1").expect("back1 netns"),
        FRAMES,
        frames_server,
    );
    let addr = vip(&lab);
    let hop_request = "GET /resp/seen HTTP/1.1\r\nHost: baton.test\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 300\r\nX-Kept:  2 \r\n\r\n";
    let seen_want = "GET /resp/seen HTTP/1.1\r\nHost: baton.test\r\nX-Kept:  2 \r\n";
    let results = in_netns(lab.netns("client").expect("client netns"), move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut out = Vec::new();
        for (method, path) in [
            ("GET", "/resp/chunked"),
            ("HEAD", "/resp/head"),
            ("GET", "/resp/204"),
            ("GET", "/resp/304"),
        ] {
            let req = format!("{method} {path} HTTP/1.1\r\nHost: baton.test\r\n\r\n");
            s.write_all(req.as_bytes()).expect("send");
            let want = framed(path, "").0;
            out.push((path, read_exactly(&mut s, want.len()), want));
        }
        s.write_all(hop_request.as_bytes()).expect("send");
        let want = framed("/resp/seen", seen_want).0;
        out.push(("/resp/seen", read_exactly(&mut s, want.len()), want));
        // The last one: a body only the back-end's close ends. Nothing else
        // arrived before it, and EOF after it.
        s.write_all(b"GET /resp/close HTTP/1.1\r\nHost: baton.test\r\n\r\n")
            .expect("send");
        let mut rest = Vec::new();
        let r = s.read_to_end(&mut rest).map(|_| rest);
        out.push(("/resp/close", r, with_close(&framed("/resp/close", "").0)));
        // A client that asks to close gets Connection: close in the head.
        let r = exchange_raw(addr, &get_request("/resp/chunked", true));
        let want = framed("/resp/chunked", "").0;
        out.push(("/resp/chunked + close", r, with_close(&want)));
        out
    });
    for (what, got, want) in results {
        let got = got.unwrap_or_else(|e| panic!("{what}: {e}\n{}", logs(&lab)));
        assert!(
            got == want,
            "{what}: got {} bytes, want {}\n got: {:?}\nwant: {:?}",
            got.len(),
            want.len(),
            String::from_utf8_lossy(&got[..got.len().min(300)]),
            String::from_utf8_lossy(&want[..want.len().min(300)])
        );
    }
    finish(lab);
}

/// Sends `request` on a new connection and reads until EOF.
fn exchange_raw(addr: SocketAddr, request: &str) -> io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(request.as_bytes())?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    Ok(all)
}

/// curl uploads 3 MiB with `Expect: 100-continue`: the back-end's
/// 100 Continue comes through the relay (curl would wait a second for it
/// otherwise) and the body arrives whole.
#[test]
fn expect_100_continue_upload_through_curl() {
    let lab = up(1, Some(&test_backends_extra()), None);
    let _server = serve_threads(lab.netns("back1").expect("back1 netns"), ECHO, echo_digest);
    let tmp = TempDir::new("relay-100").expect("temp dir");
    let upload = tmp.0.join("upload.bin");
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 249) as u8).collect();
    std::fs::write(&upload, &data).expect("writing the upload");
    let out = tmp.0.join("answer.txt");
    let from = format!("@{}", upload.display());
    let r = curl(
        &lab,
        "/echo/upload",
        &out,
        &["-H", "Expect: 100-continue", "--data-binary", &from],
    );
    let answer = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(
        (r.code, answer.as_str()),
        (
            200,
            format!("len={} sha256={}", data.len(), sha256(&data)).as_str()
        ),
        "{r:?}\n{}",
        logs(&lab)
    );
    assert!(
        r.total < 0.9,
        "the upload took {} s: curl waited for a 100 Continue that did not come",
        r.total
    );
    finish(lab);
}

/// `upstream_keepalive = 0`: the old relay, a byte pump with one back-end
/// connection per client connection: heads pass unchanged, nothing is kept.
#[test]
fn upstream_keepalive_zero_is_the_byte_pump() {
    let lab = up(2, Some(&test_backends_with("upstream_keepalive = 0")), None);
    let _server = serve_threads(
        lab.netns("back1").expect("back1 netns"),
        FRAMES,
        frames_server,
    );
    let addr = vip(&lab);
    let netns = lab.netns("client").expect("client netns").to_owned();
    let before = stats(&lab);
    let failures = sequential_gets(&netns, addr, "/1k.bin", doc(&lab, "1k.bin"), 20);
    assert!(failures.is_empty(), "{failures:?}\n{}", logs(&lab));
    let request = "GET /resp/seen HTTP/1.1\r\nHost: baton.test\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\r\n";
    // What the back-end sees: the head without its empty line.
    let want = framed("/resp/seen", &request[..request.len() - 2]).0;
    let len = want.len();
    let got = in_netns(&netns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(request.as_bytes())?;
        read_exactly(&mut s, len)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&lab)));
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want),
        "the request head reached the back-end unchanged, and its answer the client"
    );
    let after = wait_stats(&lab, "relays to end", DRAIN_DEADLINE, |s| {
        counter(s, "relay_active") == 0
    });
    assert_eq!(grew(&before, &after, "relayed"), 21, "{after:#}");
    assert_eq!(
        grew(&before, &after, "relay_upstream_opened"),
        21,
        "{after:#}"
    );
    assert_eq!(
        grew(&before, &after, "relay_upstream_reused"),
        0,
        "{after:#}"
    );
    assert_eq!(counter(&after, "relay_upstream_idle"), 0, "{after:#}");
    finish(lab);
}
