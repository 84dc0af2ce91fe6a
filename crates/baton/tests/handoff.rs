//! End to end through a lab: what a client sees of a handed-off connection.
//! Byte-exact downloads, keep-alive, pipelining across the handoff, many
//! sequential and concurrent handoffs, and direct server return.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// 0 B, 1 KiB, 1 MiB and 64 MiB arrive byte for byte through the VIP; during
/// the 64 MiB download the front's NIC carries (almost) none of the response:
/// the back-end answers the client directly.
#[test]
fn downloads_are_byte_exact_and_bypass_the_front() {
    let lab = up(2, Some(FAST_FLOWS), None);
    let tmp = TempDir::new("e2e-dl").expect("temp dir");
    for name in ["empty.bin", "1k.bin", "1m.bin"] {
        let out = tmp.0.join(name);
        let r = curl(&lab, &format!("/{name}"), &out, &[]);
        let want = sha256_file(&lab.docroot().join(name)).expect("hashing the docroot file");
        let got = sha256_file(&out).expect("hashing the download");
        assert_eq!((r.code, got), (200, want), "/{name}: {r:?}\n{}", logs(&lab));
    }

    let before = lab.nic("front", "eth0").expect("front NIC counters");
    let out = tmp.0.join("64m.bin");
    let r = curl(&lab, "/64m.bin", &out, &[]);
    let after = lab.nic("front", "eth0").expect("front NIC counters");
    let front = after.since(&before);
    assert_eq!(r.code, 200, "{r:?}\n{}", logs(&lab));
    assert_eq!(r.size, 64 << 20, "{r:?}");
    let want = sha256_file(&lab.docroot().join("64m.bin")).expect("hashing the docroot file");
    assert_eq!(
        sha256_file(&out).expect("hashing the download"),
        want,
        "64m.bin differs"
    );
    std::fs::remove_file(&out).ok();
    let share = front.tx_bytes as f64 / (64u64 << 20) as f64;
    eprintln!(
        "64 MiB download: front eth0 sent {} bytes in {} packets ({:.2}% of the body), received {} bytes",
        front.tx_bytes,
        front.tx_packets,
        share * 100.0,
        front.rx_bytes
    );
    assert!(
        share < 0.05,
        "the front's NIC sent {} bytes ({:.1}% of 64 MiB): the response is not going around the front",
        front.tx_bytes,
        share * 100.0
    );
    finish(lab);
}

/// 100 requests on one keep-alive connection: one TCP connection, all 200,
/// every body right, and one handoff to one back-end.
#[test]
fn keep_alive_connection_stays_on_one_backend() {
    let lab = up(2, Some(FAST_FLOWS), None);
    let tmp = TempDir::new("e2e-ka").expect("temp dir");
    let before = stats(&lab);
    let url = lab.url("/1k.bin");
    let files: Vec<String> = (0..100)
        .map(|i| {
            tmp.0
                .join(format!("{i}.bin"))
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let mut argv: Vec<&str> = vec![
        "curl",
        "-s",
        "--max-time",
        "30",
        "-w",
        "%{http_code} %{size_download} %{num_connects}\\n",
    ];
    for f in &files {
        argv.extend_from_slice(&["-o", f, &url]);
    }
    let out = lab.run("client", &argv).expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        100,
        "curl: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut connects = 0u32;
    for (i, l) in lines.iter().enumerate() {
        let v: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(
            v.first().copied(),
            Some("200"),
            "transfer {i}: {l}\n{}",
            logs(&lab)
        );
        assert_eq!(v.get(1).copied(), Some("1024"), "transfer {i}: {l}");
        connects += v
            .get(2)
            .and_then(|c| c.parse::<u32>().ok())
            .expect("num_connects");
    }
    assert_eq!(
        connects, 1,
        "curl opened {connects} connections for 100 keep-alive requests"
    );
    let want = sha256(&doc(&lab, "1k.bin"));
    for f in &files {
        assert_eq!(
            sha256_file(std::path::Path::new(f)).expect("hash"),
            want,
            "{f} differs"
        );
    }
    let after = stats(&lab);
    let (b, a) = (handoffs(&before), handoffs(&after));
    let grew: Vec<(&String, u64)> = a
        .iter()
        .map(|(k, v)| (k, v - b.get(k).copied().unwrap_or(0)))
        .filter(|(_, d)| *d > 0)
        .collect();
    assert_eq!(
        grew.len(),
        1,
        "handoffs per back-end went from {b:?} to {a:?}"
    );
    assert_eq!(
        grew[0].1, 1,
        "handoffs per back-end went from {b:?} to {a:?}"
    );
    assert_eq!(
        counter(&after, "handoffs_ok") - counter(&before, "handoffs_ok"),
        1
    );
    finish(lab);
}

/// A second request written right behind the first, while the connection
/// is being handed off, is answered without a retransmission timeout (the
/// frames kept while the flow was parked are delivered).
#[test]
fn pipelined_request_during_handoff_is_not_stalled() {
    let lab = up(1, Some(FAST_FLOWS), None);
    let before = stats(&lab);
    let addr = vip(&lab);
    let one = doc(&lab, "1k.bin");
    let two = doc(&lab, "index.html");
    const TRIES: u64 = 40;
    let results = in_netns(lab.netns("client").expect("client netns"), move || {
        let req1 = get_request("/1k.bin", false);
        let req2 = get_request("/index.html", true);
        let mut out = Vec::new();
        for i in 0..TRIES {
            let delay = Duration::from_micros(i * 400 / (TRIES - 1));
            let mut c = HttpConn::connect(addr).expect("connect to the VIP");
            let t0 = Instant::now();
            c.send(req1.as_bytes()).expect("sending request 1");
            // A busy wait: sleeping would round up to scheduler ticks.
            while t0.elapsed() < delay {
                std::hint::spin_loop();
            }
            c.send(req2.as_bytes()).expect("sending request 2");
            let r1 = c.read_response(false);
            let r2 = c.read_response(false);
            out.push((delay, t0.elapsed(), r1, r2));
        }
        out
    });
    let after = stats(&lab);
    let resent = counter(&after, "frames_resent") - counter(&before, "frames_resent");
    let mut slow = Vec::new();
    let mut worst = Duration::ZERO;
    for (delay, took, r1, r2) in &results {
        let r1 = r1
            .as_ref()
            .unwrap_or_else(|e| panic!("delay {delay:?}: response 1: {e}\n{}", logs(&lab)));
        let r2 = r2
            .as_ref()
            .unwrap_or_else(|e| panic!("delay {delay:?}: response 2: {e}\n{}", logs(&lab)));
        assert_eq!(
            (r1.status, r1.body == one),
            (200, true),
            "delay {delay:?}: response 1 wrong"
        );
        assert_eq!(
            (r2.status, r2.body == two),
            (200, true),
            "delay {delay:?}: response 2 wrong"
        );
        worst = worst.max(*took);
        if *took >= Duration::from_millis(150) {
            slow.push((*delay, *took));
        }
    }
    eprintln!(
        "pipelined: {TRIES} tries, worst pair {worst:?}, frames_resent +{resent}, frames_dropped +{}, bpf_parked +{}",
        counter(&after, "frames_dropped") - counter(&before, "frames_dropped"),
        counter(&after, "bpf_parked") - counter(&before, "bpf_parked"),
    );
    assert!(
        slow.is_empty(),
        "pairs that took >= 150 ms (delay, time): {slow:?}"
    );
    // Whether a try hit the parked window depends on timing; the test
    // below makes sure that path is taken.
    let _ = resent;
    finish(lab);
}

/// A request that arrives while its connection is parked (the back-end is
/// frozen with SIGSTOP while the handoff is on its way, so the front keeps
/// the flow parked) is kept by the forwarder and delivered after the
/// handoff: its response comes long before the client's retransmission
/// timer (>= 200 ms) could have fired.
#[test]
fn request_arriving_while_parked_is_kept_and_delivered() {
    let lab = up(1, Some(FAST_FLOWS), None);
    let before = stats(&lab);
    let addr = vip(&lab);
    let pid = pid_of(&lab, "back1");
    let netns = lab.netns("client").expect("client netns").to_string();
    let (parked_tx, parked_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (sent_tx, sent_rx) = std::sync::mpsc::channel::<()>();
    signal(pid, "-STOP");
    let client = std::thread::spawn(move || {
        baton_sys::netns::enter_named(&netns).expect("entering the client namespace");
        let mut c = HttpConn::connect(addr).expect("connect to the VIP");
        c.send(get_request("/1k.bin", false).as_bytes())
            .expect("request 1");
        parked_tx.send(()).expect("signal");
        go_rx.recv().expect("wait for the park");
        let t2 = Instant::now();
        c.send(get_request("/index.html", true).as_bytes())
            .expect("request 2");
        sent_tx.send(()).expect("signal");
        let r1 = c.read_response(false);
        let r2 = c.read_response(false);
        (r1, r2, t2.elapsed())
    });
    parked_rx.recv().expect("client thread");
    // Readiness signal: the front reports the flow parked (handoff under way).
    let parked = std::panic::catch_unwind(|| {
        wait_stats(&lab, "a parked flow", Duration::from_secs(2), |s| {
            counter(s, "flows_parked") >= 1
        })
    });
    go_tx.send(()).expect("signal");
    let _ = sent_rx.recv();
    signal(pid, "-CONT");
    if let Err(e) = parked {
        std::panic::resume_unwind(e);
    }
    let (r1, r2, took) = client.join().expect("client thread");
    let r1 = r1.unwrap_or_else(|e| panic!("response 1: {e}\n{}", logs(&lab)));
    let r2 = r2.unwrap_or_else(|e| panic!("response 2: {e}\n{}", logs(&lab)));
    assert_eq!((r1.status, r1.body == doc(&lab, "1k.bin")), (200, true));
    assert_eq!((r2.status, r2.body == doc(&lab, "index.html")), (200, true));
    let after = stats(&lab);
    assert!(
        counter(&after, "frames_resent") > counter(&before, "frames_resent"),
        "the request sent while parked was not delivered from the kept frames\n{after:#}"
    );
    assert!(
        took < Duration::from_millis(150),
        "response 2 took {took:?} after request 2 was sent: it waited for a retransmission\n{after:#}"
    );
    finish(lab);
}

/// 10,000 handoffs one after the other, then 1,000 connections open at once:
/// every response complete and right, no handoff failed.
#[test]
fn ten_thousand_sequential_and_a_thousand_concurrent_handoffs() {
    let lab = up(2, Some(FAST_FLOWS), None);
    baton_sys::raise_nofile_limit().expect("raising RLIMIT_NOFILE");
    let addr = vip(&lab);
    let want = doc(&lab, "1k.bin");
    let netns = lab.netns("client").expect("client netns").to_owned();

    let t = Instant::now();
    let failures = sequential_gets(&netns, addr, "/1k.bin", want.clone(), 10_000);
    eprintln!("10,000 sequential handoffs in {:?}", t.elapsed());
    assert!(
        failures.is_empty(),
        "{} of 10,000 sequential requests failed, first: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        logs(&lab)
    );

    let t = Instant::now();
    let failures = concurrent_gets(&netns, addr, "/1k.bin", want.clone(), 1000);
    eprintln!("1,000 concurrent connections served in {:?}", t.elapsed());
    assert!(
        failures.is_empty(),
        "{} of 1,000 concurrent requests failed, first: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        logs(&lab)
    );
    let s = stats(&lab);
    assert_eq!(counter(&s, "handoffs_failed"), 0, "{s:#}\n{}", logs(&lab));
    assert!(counter(&s, "handoffs_ok") >= 11_000, "{s:#}");
    finish(lab);
}

/// `baton lab up --docroot DIR` with a DIR that has no `index.html`: the
/// lab comes up (any answer from the VIP means it serves) and serves DIR's
/// files; `/` is the back-end's 404.
#[test]
fn a_docroot_without_an_index_serves() {
    let dir = tempfile::tempdir().expect("a temporary docroot");
    std::fs::write(dir.path().join("only.txt"), b"the only file\n").expect("writing only.txt");
    // Before: the readiness probe wanted a 2xx for `/` and lab up failed after 20 s.
    let lab = up_with(baton_tools::labtools::LabOptions {
        backends: 1,
        docroot: Some(dir.path().to_owned()),
        ..Default::default()
    });
    let addr = vip(&lab);
    let (file, root) = in_netns(lab.netns("client").expect("client netns"), move || {
        (
            exchange(addr, get_request("/only.txt", true).as_bytes(), false),
            exchange(addr, get_request("/", true).as_bytes(), false),
        )
    });
    let file = file.unwrap_or_else(|e| panic!("GET /only.txt: {e}\n{}", logs(&lab)));
    assert_eq!(
        (file.status, file.body.as_slice()),
        (200, &b"the only file\n"[..])
    );
    assert_eq!(root.map(|r| r.status).ok(), Some(404));
    finish(lab);
}
