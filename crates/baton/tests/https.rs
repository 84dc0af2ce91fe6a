//! HTTPS handoff end to end, with real clients (curl, openssl s_client,
//! Python's ssl) in a lab made with `--tls`: the front terminates TLS, reads
//! the request and hands the TCP connection and the TLS session to a
//! back-end, which answers encrypted and direct.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use baton_tools::labtools::LabOptions;
use common::*;
use serde_json::Value;

/// The back-ends' admin address, for their `/stats`; a server key update
/// every 16 MiB of response.
const BACK_EXTRA: &str = "admin_listen = \"127.0.0.1:9101\"\ntls_key_update_bytes = 16777216\n";

fn tls_lab(front_extra: &str) -> baton_tools::labtools::Lab {
    up_with(LabOptions {
        backends: 2,
        front_extra: Some(front_extra.to_owned()),
        back_extra: Some(BACK_EXTRA.to_owned()),
        tls: true,
        ..Default::default()
    })
}

/// Sums a counter over the back-ends' `/stats`.
fn back_total(lab: &baton_tools::labtools::Lab, key: &str) -> u64 {
    let mut total = 0;
    for host in lab.info.hosts.keys().filter(|h| h.starts_with("back")) {
        let out = lab
            .run(
                host,
                &[
                    "curl",
                    "-sf",
                    "--max-time",
                    "5",
                    "http://127.0.0.1:9101/stats",
                ],
            )
            .expect("back-end /stats");
        let v: Value = serde_json::from_slice(&out.stdout).expect("back-end /stats is JSON");
        total += v[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{host} /stats has no {key}: {v:#}"));
    }
    total
}

/// curl over HTTPS, asserting a 200 with the file's exact bytes.
fn assert_exact(lab: &baton_tools::labtools::Lab, file: &str, extra: &[&str], dir: &Path) {
    let out = dir.join(format!("{file}.out"));
    let r = lab
        .curl_https(&format!("/{file}"), &out, extra)
        .unwrap_or_else(|e| panic!("curl {file} {extra:?}: {e:#}\n{}", logs(lab)));
    assert_eq!(r.code, 200, "{file} {extra:?}\n{}", logs(lab));
    let want = sha256(&doc(lab, file));
    let got = sha256_file(&out).expect("hash");
    assert_eq!(got, want, "{file} {extra:?}: bytes differ");
    let _ = std::fs::remove_file(&out);
}

/// Every size, TLS 1.3 and TLS 1.2, every AEAD suite: byte-exact, handed
/// off (the back-ends continued the sessions), and the response bytes did
/// not cross the front.
#[test]
fn https_downloads_are_byte_exact_over_every_version_and_suite() {
    let lab = tls_lab(FAST_FLOWS);
    let dir = TempDir::new("https").expect("temp dir");
    for file in ["empty.bin", "1k.bin", "1m.bin"] {
        for v in [
            ["--tlsv1.3", "--tls-max", "1.3"],
            ["--tlsv1.2", "--tls-max", "1.2"],
        ] {
            assert_exact(&lab, file, &v, &dir.0);
        }
    }
    for suite in [
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
    ] {
        assert_exact(&lab, "1m.bin", &["--tls13-ciphers", suite], &dir.0);
    }
    for suite in [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ] {
        assert_exact(
            &lab,
            "1m.bin",
            &["--tlsv1.2", "--tls-max", "1.2", "--ciphers", suite],
            &dir.0,
        );
    }
    // 64 MiB over each version, counting what the front's NIC sends.
    for v in [
        ["--tlsv1.3", "--tls-max", "1.3"],
        ["--tlsv1.2", "--tls-max", "1.2"],
    ] {
        let before = lab.nic("front", "eth0").expect("front NIC");
        assert_exact(&lab, "64m.bin", &v, &dir.0);
        let sent = lab.nic("front", "eth0").expect("front NIC").since(&before);
        assert!(
            sent.tx_bytes < (64 << 20) / 20,
            "{v:?}: the front's NIC sent {} bytes for a 64 MiB response (at most 5% may cross it)",
            sent.tx_bytes
        );
    }
    let s = stats(&lab);
    let tls = &s["tls"];
    let n = 3 * 2 + 3 + 3 + 2;
    assert_eq!(tls["handoffs"], n, "every download was handed off: {tls:#}");
    assert_eq!(back_total(&lab, "tls_sessions"), n);
    assert_eq!(tls["handshake_failures"], 0, "{tls:#}");
    assert_eq!(tls["secrets_held"], 0, "no TLS secret left behind: {tls:#}");
    finish(lab);
}

/// Runs Python's ssl client (below) in the client namespace.
fn python(lab: &baton_tools::labtools::Lab, mode: &str) -> Value {
    let ca = lab
        .info
        .ca_file
        .as_ref()
        .expect("tls lab")
        .to_string_lossy();
    let vip = lab.info.vip.to_string();
    let name = lab.info.server_name.as_deref().expect("tls lab");
    let out = lab
        .run(
            "client",
            &["/usr/bin/python3", "-c", PY_CLIENT, mode, &vip, &ca, name],
        )
        .expect("python3");
    assert!(
        out.status.success(),
        "python {mode}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs(lab)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python {mode}: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

const PY_CLIENT: &str = r#"
import hashlib, json, socket, ssl, struct, sys
mode, vip, ca, name = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=ca)

def connect(session=None):
    s = socket.create_connection((vip, 443), timeout=20)
    return ctx.wrap_socket(s, server_hostname=name, session=session)

def read_response(t, buf):
    while b"\r\n\r\n" not in buf:
        chunk = t.recv(65536)
        if not chunk:
            raise SystemExit("closed inside a head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for l in lines[1:]:
        k, _, v = l.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
    while len(rest) < length:
        chunk = t.recv(65536)
        if not chunk:
            raise SystemExit("closed inside a body")
        rest += chunk
    return status, hashlib.sha256(rest[:length]).hexdigest(), rest[length:]

def get(path, close=False):
    c = "Connection: close\r\n" if close else ""
    return ("GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (path, name, c)).encode()

if mode == "pipeline":
    t = connect()
    # Three requests in one write, the last asking to close.
    t.sendall(get("/1k.bin") + get("/empty.bin") + get("/index.html", close=True))
    buf, out = b"", []
    for _ in range(3):
        status, digest, buf = read_response(t, buf)
        out.append([status, digest])
    # The back-end ends the session with close_notify: a clean end of file.
    clean = True
    try:
        while t.recv(65536):
            pass
    except ssl.SSLEOFError:
        clean = False
    print(json.dumps({"responses": out, "clean_close": clean, "version": t.version()}))
elif mode == "resume":
    t = connect()
    t.sendall(get("/1k.bin", close=True))
    status1, _, _ = read_response(t, b"")
    sess = t.session
    t.close()
    t2 = connect(session=sess)
    t2.sendall(get("/1k.bin", close=True))
    status2, _, _ = read_response(t2, b"")
    print(json.dumps({"status": [status1, status2], "reused": t2.session_reused}))
elif mode == "unwrap":
    # close_notify both ways: the client's, then the server's answer to it
    # (unwrap fails on a plain end of file, and times out on nothing).
    t = connect()
    t.sendall(get("/1k.bin"))
    status, _, rest = read_response(t, b"")
    plain = t.unwrap()
    plain.close()
    print(json.dumps({"status": status, "unwrapped": True}))
elif mode == "fragment":
    # The ClientHello re-cut into records of 5 bytes each (legal TLS, which
    # DPI-evasion tools do), over TLS 1.3 and 1.2.
    out = {}
    for v, maxv in (("1.3", ssl.TLSVersion.TLSv1_3), ("1.2", ssl.TLSVersion.TLSv1_2)):
        c = ssl.create_default_context(cafile=ca)
        c.maximum_version = maxv
        i, o = ssl.MemoryBIO(), ssl.MemoryBIO()
        t = c.wrap_bio(i, o, server_hostname=name)
        s = socket.create_connection((vip, 443), timeout=20)
        first = True
        def flush():
            global first
            data = o.read()
            if first and data:
                first = False
                body = data[5:5 + int.from_bytes(data[3:5], "big")]
                rest = data[5 + len(body):]
                data = b"".join(data[:3] + len(body[k:k + 5]).to_bytes(2, "big") + body[k:k + 5]
                                for k in range(0, len(body), 5)) + rest
            if data:
                s.sendall(data)
        def pump():
            b = s.recv(65536)
            if not b:
                raise SystemExit("closed during the exchange")
            i.write(b)
        while True:
            try:
                t.do_handshake()
                flush()
                break
            except ssl.SSLWantReadError:
                flush()
                pump()
        t.write(get("/1k.bin", close=True))
        flush()
        buf = b""
        while True:
            try:
                d = t.read(65536)
                if not d:
                    break
                buf += d
            except ssl.SSLWantReadError:
                flush()
                try:
                    pump()
                except SystemExit:
                    break
            except ssl.SSLZeroReturnError:
                break
        head, _, body = buf.partition(b"\r\n\r\n")
        out[v] = [int(head.split()[1]) if head else 0, hashlib.sha256(body).hexdigest()]
    print(json.dumps(out))
elif mode == "reset":
    t = connect()
    t.sendall(get("/64m.bin"))
    got = 0
    while got < (1 << 20):
        chunk = t.recv(65536)
        if not chunk:
            raise SystemExit("closed early")
        got += len(chunk)
    # Abort: SO_LINGER 0 makes close send a reset mid-transfer.
    t.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    t.close()
    print(json.dumps({"read": got}))
"#;

/// Keep-alive, pipelining, close_notify, resumption, a client reset, and
/// the clients and requests the front must refuse.
#[test]
fn https_sessions_behave_as_a_tls_server_should() {
    let lab = tls_lab(FAST_FLOWS);
    let dir = TempDir::new("https2").expect("temp dir");

    // 100 requests on one kept-alive connection after its handoff.
    let url = lab.https_url("/1k.bin").expect("url");
    let tls = lab.tls_args().expect("tls args");
    let mut argv: Vec<&str> = vec!["curl", "-s", "--max-time", "60"];
    argv.extend(tls.iter().map(String::as_str));
    argv.extend(["-w", "%{http_code} %{num_connects}\\n"]);
    for _ in 0..100 {
        argv.extend(["-o", "/dev/null", url.as_str()]);
    }
    let out = lab.run("client", &argv).expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 100, "{text}");
    assert!(lines.iter().all(|l| l.starts_with("200 ")), "{text}");
    let connects: u64 = lines
        .iter()
        .filter_map(|l| l.split(' ').nth(1)?.parse::<u64>().ok())
        .sum();
    assert_eq!(connects, 1, "all 100 on one connection: {text}");

    // Pipelined requests, then the back-end's close_notify.
    let p = python(&lab, "pipeline");
    let want = [
        sha256(&doc(&lab, "1k.bin")),
        sha256(&doc(&lab, "empty.bin")),
        sha256(&doc(&lab, "index.html")),
    ];
    for (i, r) in p["responses"]
        .as_array()
        .expect("responses")
        .iter()
        .enumerate()
    {
        assert_eq!(r[0], 200, "{p:#}");
        assert_eq!(r[1], want[i].as_str(), "response {i}: {p:#}");
    }
    assert_eq!(p["clean_close"], true, "close_notify at the end: {p:#}");

    // A ClientHello cut into 5-byte records is served, and leaves no secret.
    let f = python(&lab, "fragment");
    let one_k = sha256(&doc(&lab, "1k.bin"));
    for v in ["1.3", "1.2"] {
        assert_eq!(
            f[v][0],
            200,
            "TLS {v}, fragmented ClientHello: {f:#}\n{}",
            logs(&lab)
        );
        assert_eq!(f[v][1], one_k.as_str(), "TLS {v}: {f:#}");
    }

    // The client's close_notify gets the back-end's.
    let r = python(&lab, "unwrap");
    assert_eq!(r["status"], 200, "{r:#}");
    assert_eq!(r["unwrapped"], true, "{r:#}");

    // A returning client resumes its session (with the front).
    let r = python(&lab, "resume");
    assert_eq!(r["status"], serde_json::json!([200, 200]), "{r:#}");
    assert_eq!(r["reused"], true, "{r:#}");
    assert!(counter(&stats(&lab)["tls"], "resumed") >= 1);

    // A client that resets mid-transfer: the back-end lets it go, and the
    // next client is served.
    let r = python(&lab, "reset");
    assert!(r["read"].as_u64().unwrap_or(0) >= 1 << 20, "{r:#}");
    assert_exact(&lab, "1m.bin", &[], &dir.0);

    // An h2-only client gets the no_application_protocol alert.
    let ca = lab.info.ca_file.clone().expect("ca");
    let out = lab
        .run(
            "client",
            &[
                "sh",
                "-c",
                &format!(
                    "echo | timeout 10 openssl s_client -connect {}:443 -servername baton.test -CAfile {} -alpn h2 2>&1",
                    lab.info.vip,
                    ca.display()
                ),
            ],
        )
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("no application protocol"),
        "h2-only client: {text}"
    );

    // Plain HTTP on the TLS port: a readable 400.
    let r = lab
        .curl_url(
            &format!("http://{}:443/", lab.info.vip),
            Path::new("/dev/null"),
            &[],
        )
        .expect("curl");
    assert_eq!(r.code, 400, "plain HTTP to the HTTPS port");

    // Not TLS, not even a well-formed request line: still a fast 400.
    for junk in ["get / HTTP/1.1", "\\r\\nGET / HTTP/1.1"] {
        let t0 = Instant::now();
        let script = format!(
            "import socket\ns = socket.create_connection(('{}', 443), timeout=5)\n\
             s.sendall(b'{junk}\\r\\n\\r\\n')\nprint(s.recv(12).decode(), end='')\n",
            lab.info.vip
        );
        let out = lab
            .run("client", &["/usr/bin/python3", "-c", &script])
            .expect("python3");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "HTTP/1.1 400",
            "{junk:?} to the HTTPS port, after {:?}: {}",
            t0.elapsed(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "{junk:?}: slow answer"
        );
    }

    // TLS sent to the plain HTTP port: a fast, clear failure (the front
    // answers 400 in plain text; curl reports a protocol error).
    let t0 = Instant::now();
    let r = lab
        .curl_url(
            &format!("https://{}:80/", lab.info.vip),
            Path::new("/dev/null"),
            &["-k"],
        )
        .expect("curl");
    assert!(
        r.code != 200 && t0.elapsed() < Duration::from_secs(5),
        "TLS to port 80: {r:?} after {:?}",
        t0.elapsed()
    );
    assert_curl_200(&lab, "TLS sent to port 80");

    // An unknown server name gets the default certificate (and the page).
    let r = lab
        .curl_url(
            "https://unknown.test/1k.bin",
            Path::new("/dev/null"),
            &[
                "-k",
                "--resolve",
                &format!("unknown.test:443:{}", lab.info.vip),
            ],
        )
        .expect("curl");
    assert_eq!(r.code, 200, "unknown SNI");

    // A Host that does not match the SNI: 421 Misdirected Request.
    let r = lab
        .curl_https(
            "/1k.bin",
            Path::new("/dev/null"),
            &["-H", "Host: other.test"],
        )
        .expect("curl");
    assert_eq!(r.code, 421, "Host other than the SNI");

    let s = stats(&lab);
    let tls = &s["tls"];
    assert!(counter(tls, "misdirected") >= 1, "{tls:#}");
    assert!(counter(tls, "plain_http") >= 1, "{tls:#}");
    assert!(
        counter(tls, "handshake_failures") >= 1,
        "the h2-only client: {tls:#}"
    );
    assert_eq!(tls["secrets_held"], 0, "no TLS secret left behind: {tls:#}");
    assert_daemons_alive(&lab);
    finish(lab);
}

/// A KeyUpdate from the client (`openssl s_client` command `k`), one it
/// asks of the server (`K`), and the server's own every 16 MiB
/// (`tls_key_update_bytes`), during a 64 MiB download: the transfer stays
/// byte-exact and the back-end counts them. (The back-end reads the
/// client's only once the response is out: the HTTP server does not read a
/// `Connection: close` request's socket while it writes the response; it
/// decrypts them in order all the same. By then it has sent close_notify,
/// so `K` gets no answer, as RFC 8446 4.6.3 has it.)
#[test]
fn key_updates_both_ways_mid_download_keep_the_transfer_exact() {
    let lab = tls_lab(FAST_FLOWS);
    let dir = TempDir::new("https3").expect("temp dir");
    let out_path = dir.0.join("ku.out");
    let ca = lab.info.ca_file.clone().expect("ca");
    let mut cmd = lab.cmd("client", "sh").expect("cmd");
    // A slow reader (about 20 MB/s) keeps the download going long enough
    // for both commands to land inside it.
    let slow = format!(
        "import sys,time\nout=open({:?},'wb')\nwhile True:\n b=sys.stdin.buffer.read1(65536)\n if not b: break\n out.write(b); out.flush(); time.sleep(0.003)\n",
        out_path.display().to_string()
    );
    cmd.args([
        "-c",
        &format!(
            "timeout 60 openssl s_client -brief -connect {}:443 -servername baton.test -CAfile {} | /usr/bin/python3 -c \"$SLOW\"",
            lab.info.vip,
            ca.display()
        ),
    ])
    .env("SLOW", slow)
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("openssl s_client");
    let mut stdin = child.stdin.take().expect("stdin");
    use std::io::Write;
    stdin
        .write_all(b"GET /64m.bin HTTP/1.1\r\nHost: baton.test\r\nConnection: close\r\n\r\n")
        .expect("request");
    // Readiness: the response is flowing (8 MiB arrived) before each command.
    let wait_for = |bytes: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::metadata(&out_path).map_or(0, |m| m.len()) < bytes {
            assert!(
                Instant::now() < deadline,
                "the download stalled before {bytes} bytes"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for(8 << 20);
    stdin.write_all(b"k\n").expect("k");
    wait_for(24 << 20);
    stdin.write_all(b"K\n").expect("K");
    wait_for(64 << 20);
    drop(stdin);
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    let _ = child.wait();
    assert_eq!(err.matches("KEYUPDATE").count(), 2, "{err}");
    let got = std::fs::read(&out_path).expect("output");
    let body_at = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let want = doc(&lab, "64m.bin");
    assert!(got.len() >= body_at + want.len(), "short: {}", got.len());
    assert_eq!(
        sha256(&got[body_at..body_at + want.len()]),
        sha256(&want),
        "64 MiB with two key updates: bytes differ"
    );
    // Counted when the session ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (rx, tx) = (
            back_total(&lab, "tls_key_updates_rx"),
            back_total(&lab, "tls_key_updates_tx"),
        );
        // 64 MiB: updates after 16, 32 and 48 MiB at least.
        if rx >= 2 && tx >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "back-ends counted {rx} received and {tx} sent key updates\n{}",
            logs(&lab)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    finish(lab);
}

/// Where a handoff is impossible (here: the front relays every connection),
/// the front terminates TLS and relays, byte-exact.
#[test]
fn a_relaying_front_terminates_tls_itself() {
    let lab = tls_lab(&format!("handoff = false\n{FAST_FLOWS}"));
    let dir = TempDir::new("https4").expect("temp dir");
    for file in ["1k.bin", "1m.bin"] {
        assert_exact(&lab, file, &[], &dir.0);
        assert_exact(&lab, file, &["--tlsv1.2", "--tls-max", "1.2"], &dir.0);
    }
    let s = stats(&lab);
    assert_eq!(s["tls"]["handoffs"], 0);
    assert!(counter(&s, "relayed") >= 4, "{s:#}");
    finish(lab);
}

/// HTTPS downloads handed off with their TLS sessions outlive a killed
/// front and an upgraded one (the HTTPS listener is handed over with the
/// plain one), and new HTTPS connections are served after each.
#[test]
fn https_downloads_survive_a_front_kill_and_an_upgrade() {
    const DOWNLOADS: usize = 4;
    let lab = tls_lab(FAST_FLOWS);
    let want = sha256(&doc(&lab, "64m.bin"));
    let url = lab.https_url("/64m.bin").expect("url");
    let tls = lab.tls_args().expect("tls").join(" ");
    let client = lab.netns("client").expect("client").to_owned();
    let before = counter(&stats(&lab)["tls"], "handoffs");
    let downloads: Vec<_> = (0..DOWNLOADS)
        .map(|_| {
            std::process::Command::new("ip")
                .args(["netns", "exec", &client, "bash", "-c"])
                .arg(format!(
                    "set -o pipefail; curl -sS --fail --limit-rate 16M --max-time 60 {tls} {url} | sha256sum"
                ))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("curl")
        })
        .collect();
    wait_stats(
        &lab,
        "every download handed off",
        Duration::from_secs(10),
        |s| s["tls"]["handoffs"].as_u64().unwrap_or(0) >= before + DOWNLOADS as u64,
    );
    let dir = TempDir::new("https5").expect("temp dir");
    for signal in [
        baton_lab::RestartSignal::Kill,
        baton_lab::RestartSignal::Upgrade,
    ] {
        baton_lab::restart(&lab.name, "front", signal)
            .unwrap_or_else(|e| panic!("restart {signal:?}: {e:#}\n{}", logs(&lab)));
        // The HTTPS port serves again at once.
        assert_exact(&lab, "1k.bin", &[], &dir.0);
    }
    for d in downloads {
        let out = d.wait_with_output().expect("curl");
        let got = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && got.starts_with(&want),
            "an HTTPS download broke across the restarts: {} {}\n{}",
            got,
            String::from_utf8_lossy(&out.stderr),
            logs(&lab)
        );
    }
    finish(lab);
}

/// The control channel carries the TLS sessions' secrets, encrypted: a
/// capture of it during HTTPS handoffs contains none of the secrets the
/// client logged (`SSLKEYLOGFILE`), in any of the encodings they could
/// travel in.
#[test]
fn a_capture_of_the_control_channel_holds_no_tls_secret() {
    let lab = tls_lab(FAST_FLOWS);
    let dir = TempDir::new("https6").expect("temp dir");
    let pcap = dir.0.join("control.pcap");
    let keylog = dir.0.join("keys.log");
    // tcpdump on the front's NIC, control ports only; it says when it listens.
    let mut dump = lab
        .cmd("front", "tcpdump")
        .expect("cmd")
        .args(["-i", "eth0", "--immediate-mode", "-U", "-w"])
        .arg(&pcap)
        .args(["tcp", "port", "7070"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump (scripts/setup installs it)");
    let mut err = dump.stderr.take().expect("stderr");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains("listening on") {
        assert!(Instant::now() < deadline, "tcpdump did not start");
        let mut b = [0u8; 256];
        let n = err.read(&mut b).expect("tcpdump stderr");
        assert!(n > 0, "tcpdump ended: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&b[..n]);
    }
    for v in ["1.3", "1.2"] {
        let flag = format!("--tlsv{v}");
        let url = lab.https_url("/1k.bin").expect("url");
        let tls = lab.tls_args().expect("tls");
        let mut c = lab.cmd("client", "curl").expect("cmd");
        c.args([
            "-sf",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            &flag,
            "--tls-max",
            v,
        ])
        .args(&tls)
        .arg(&url)
        .env("SSLKEYLOGFILE", &keylog);
        for _ in 0..5 {
            assert!(
                c.status().expect("curl").success(),
                "curl {v}\n{}",
                logs(&lab)
            );
        }
    }
    // Every handoff's frame was on the wire before its client got an
    // answer; wait until tcpdump wrote the ten handoffs' frames (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&pcap).map_or(0, |m| m.len()) < 10 * 300 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &dump.id().to_string()])
        .status();
    let _ = dump.wait();
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    let captured = std::fs::read(&pcap).expect("pcap");
    assert!(
        captured.len() > 1000,
        "the capture holds the channel's traffic: {} bytes; tcpdump: {}{rest}",
        captured.len(),
        String::from_utf8_lossy(&seen)
    );
    let log = std::fs::read_to_string(&keylog).expect("curl wrote SSLKEYLOGFILE");
    let mut secrets = 0;
    for line in log.lines() {
        let mut f = line.split_whitespace();
        let (Some(label), Some(_random), Some(secret)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let bytes: Vec<u8> = (0..secret.len() / 2)
            .filter_map(|i| u8::from_str_radix(&secret[2 * i..2 * i + 2], 16).ok())
            .collect();
        assert!(bytes.len() >= 32, "{line}");
        secrets += 1;
        // Any 16 consecutive bytes of a secret, raw or as hex text.
        for w in bytes.windows(16) {
            assert!(
                !captured.windows(16).any(|c| c == w),
                "{label} appears in the control channel capture"
            );
        }
        assert!(
            !String::from_utf8_lossy(&captured).contains(&secret.to_ascii_lowercase()),
            "{label} appears as text"
        );
    }
    // TLS 1.3: client and server handshake and traffic secrets; TLS 1.2: the master secret.
    assert!(secrets >= 5 * 4 + 5, "the client logged {secrets} secrets");
    assert_eq!(counter(&stats(&lab)["tls"], "handoffs"), 10);
    finish(lab);
}

/// `openssl s_client` asking for `/1k.bin`, saving (`-sess_out`) or
/// offering (`-sess_in`) a session; returns whether it was resumed.
fn s_client_resumed(lab: &baton_tools::labtools::Lab, sess: &Path, save: bool) -> bool {
    let ca = lab.info.ca_file.clone().expect("ca");
    let flag = if save { "-sess_out" } else { "-sess_in" };
    let out = lab
        .run(
            "client",
            &[
                "sh",
                "-c",
                &format!(
                    "printf 'GET /1k.bin HTTP/1.1\\r\\nHost: baton.test\\r\\nConnection: close\\r\\n\\r\\n' | \
                     timeout 10 openssl s_client -connect {}:443 -servername baton.test -CAfile {} {flag} {} -ign_eof 2>&1",
                    lab.info.vip,
                    ca.display(),
                    sess.display()
                ),
            ],
        )
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("HTTP/1.1 200"), "s_client got no 200: {text}");
    text.contains("Reused, TLSv1.3")
}

/// A reload reads the certificates again (a renewal replaces the files in
/// place) and keeps the resumable sessions; a certificate that does not
/// load refuses the reload and HTTPS goes on; the TLS port cannot change
/// without a restart.
#[test]
fn a_reload_reads_the_certificates_again() {
    let lab = tls_lab(FAST_FLOWS);
    let dir = TempDir::new("https7").expect("temp dir");
    let sess = dir.0.join("session.pem");
    let file = lab.info.hosts["front"]
        .config
        .clone()
        .expect("front config");
    let reload = || {
        let out = lab
            .run("front", &[baton().to_str().expect("utf-8"), "reload"])
            .expect("baton reload");
        outcome(&out)
    };
    assert!(!s_client_resumed(&lab, &sess, true), "a first connection");
    let (ok, text) = reload();
    assert!(ok && text.contains("TLS certificates read again"), "{text}");
    assert!(
        s_client_resumed(&lab, &sess, false),
        "a session from before the reload resumes after it"
    );

    let good = std::fs::read_to_string(&file).expect("read");
    let broken = good.replace("server.key", "no-such.key");
    assert_ne!(broken, good);
    std::fs::write(&file, &broken).expect("write");
    let (ok, text) = reload();
    assert!(!ok && text.contains("no-such.key"), "{text}");
    assert_exact(&lab, "1k.bin", &[], &dir.0);

    std::fs::write(&file, good.replace("port = 443", "port = 8443")).expect("write");
    let (ok, text) = reload();
    assert!(!ok && text.contains("[tls] port"), "{text}");
    std::fs::write(&file, &good).expect("write");
    assert_exact(&lab, "1k.bin", &[], &dir.0);
    finish(lab);
}
