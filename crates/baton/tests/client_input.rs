//! End to end through a lab: what a client gets for bad or unusual input.
//! The front answers malformed, oversized and unfinished request heads
//! itself; everything else is handed off and answered by the back-end.

mod common;

use std::time::{Duration, Instant};

use common::*;

const HEAD_TIMEOUT_MS: u64 = 300;

#[test]
fn bad_and_unusual_requests_get_the_right_answers() {
    let extra = format!("{FAST_FLOWS}[limits]\nhead_timeout_ms = {HEAD_TIMEOUT_MS}\n");
    let lab = up(1, Some(&extra), None);
    let addr = vip(&lab);
    let before = stats(&lab);
    let one_m = doc(&lab, "1m.bin");

    let results = in_netns(lab.netns("client").expect("client netns"), move || {
        let mut r = Vec::new();
        // A head beyond 16 KiB.
        let big = format!(
            "GET / HTTP/1.1\r\nHost: baton.test\r\nX-Filler: {}\r\n\r\n",
            "a".repeat(17 * 1024)
        );
        r.push((
            "oversized head",
            exchange(addr, big.as_bytes(), false),
            Duration::ZERO,
        ));
        r.push((
            "garbage",
            exchange(
                addr,
                b"\x16\x03\x01\x02\x00 this is not HTTP\r\n\r\n",
                false,
            ),
            Duration::ZERO,
        ));
        // A head that never ends: answered after head_timeout_ms.
        let t = Instant::now();
        let slow = exchange(addr, b"GET / HTTP/1.1\r\nHost: baton.test\r\n", false);
        r.push(("unfinished head", slow, t.elapsed()));
        let post = b"POST /index.html HTTP/1.1\r\nHost: baton.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
        r.push(("POST", exchange(addr, post, false), Duration::ZERO));
        let delete = b"DELETE /1k.bin HTTP/1.1\r\nHost: baton.test\r\nConnection: close\r\n\r\n";
        r.push(("DELETE", exchange(addr, delete, false), Duration::ZERO));
        let head = b"HEAD /1m.bin HTTP/1.1\r\nHost: baton.test\r\nConnection: close\r\n\r\n";
        r.push(("HEAD", exchange(addr, head, true), Duration::ZERO));
        let range = b"GET /1m.bin HTTP/1.1\r\nHost: baton.test\r\nRange: bytes=1000-1999\r\nConnection: close\r\n\r\n";
        r.push(("Range", exchange(addr, range, false), Duration::ZERO));
        r
    });

    let get = |what: &str| -> (Response, Duration) {
        let i = results
            .iter()
            .position(|(w, _, _)| *w == what)
            .expect("case exists");
        match &results[i] {
            (_, Ok(r), t) => (r.clone(), *t),
            (_, Err(e), _) => panic!("{what}: no response: {e}\n{}", logs(&lab)),
        }
    };

    let (r, _) = get("oversized head");
    assert_eq!(r.status, 431, "oversized head: {r:?}");
    let (r, _) = get("garbage");
    assert_eq!(r.status, 400, "garbage: {r:?}");
    let (r, took) = get("unfinished head");
    assert_eq!(r.status, 408, "unfinished head: {r:?}");
    assert!(
        took >= Duration::from_millis(HEAD_TIMEOUT_MS)
            && took < Duration::from_millis(HEAD_TIMEOUT_MS + 1000),
        "408 after {took:?}, head_timeout_ms = {HEAD_TIMEOUT_MS}"
    );
    for m in ["POST", "DELETE"] {
        let (r, _) = get(m);
        assert_eq!(r.status, 405, "{m}: {r:?}");
        let allow = r.header("allow").unwrap_or_default();
        assert!(
            allow.contains("GET") && allow.contains("HEAD"),
            "{m}: 405 without a proper Allow: {r:?}"
        );
    }
    let (r, _) = get("HEAD");
    assert_eq!(
        (r.status, r.header("content-length")),
        (200, Some("1048576")),
        "HEAD: {r:?}"
    );
    let (r, _) = get("Range");
    assert_eq!(r.status, 206, "Range: {:?}", r.headers);
    assert_eq!(r.header("content-range"), Some("bytes 1000-1999/1048576"));
    assert!(
        r.body == one_m[1000..2000],
        "Range: wrong bytes ({} bytes)",
        r.body.len()
    );

    let after = stats(&lab);
    let d = |k: &str| counter(&after, k) - counter(&before, k);
    assert_eq!(
        d("bad_requests"),
        2,
        "431 and 400 are counted as bad requests\n{after:#}"
    );
    assert_eq!(d("head_timeouts"), 1, "{after:#}");
    // POST, DELETE, HEAD, Range: the back-end answered them.
    assert_eq!(d("handoffs_ok"), 4, "{after:#}");
    assert_eq!(d("handoffs_failed"), 0, "{after:#}");

    // A Range request from a real client: curl -r.
    let tmp = TempDir::new("e2e-range").expect("temp dir");
    let out = tmp.0.join("part");
    let c = curl(&lab, "/1m.bin", &out, &["-r", "1048000-"]);
    assert_eq!((c.code, c.size), (206, 576), "{c:?}");
    assert!(
        std::fs::read(&out).expect("read part") == one_m[1_048_000..],
        "curl -r: wrong bytes"
    );
    finish(lab);
}

/// Sends `request` on a new connection, then reads until the front closes:
/// what came back, and whether it ended with a clean close (FIN) rather
/// than a reset.
fn answer_then_close(addr: std::net::SocketAddr, request: Vec<u8>) -> (String, Result<(), String>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the VIP");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let sent = s.write_all(&request).map_err(|e| format!("sending: {e}"));
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        match s.read(&mut buf) {
            Ok(0) => break sent,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Err(format!("{e} ({:?})", e.kind())),
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), end)
}

/// D4 and D5: answers end with a clean close, not a reset, although the
/// client sent more than was read: a head over the limit (20 KB of
/// headers, a 100 KB URI) gets 431 from the front, a 1 MiB POST gets 405
/// from the back-end, and a connection over `max_pending` gets 503 without
/// its request being read, and is counted in `shed`. Closing with unread input would send a reset, which can make
/// the client's kernel drop the answer.
#[test]
fn answers_to_unread_input_end_with_a_clean_close() {
    let extra = format!("{FAST_FLOWS}[limits]\nmax_pending = 1\nhead_timeout_ms = 4000\n");
    let lab = up(1, Some(&extra), None);
    let addr = vip(&lab);
    let before = stats(&lab);

    let results = in_netns(lab.netns("client").expect("client netns"), move || {
        let mut r = Vec::new();
        let headers = format!(
            "GET / HTTP/1.1\r\nHost: baton.test\r\nX-Filler: {}\r\n\r\n",
            "a".repeat(20 * 1000)
        );
        r.push((
            "20 KB of headers",
            answer_then_close(addr, headers.into_bytes()),
        ));
        let uri = format!(
            "GET /{} HTTP/1.1\r\nHost: baton.test\r\n\r\n",
            "u".repeat(100 * 1000)
        );
        r.push(("a 100 KB URI", answer_then_close(addr, uri.into_bytes())));
        // Handed off: the back-end answers 405 without reading the body.
        let mut post = format!(
            "POST /index.html HTTP/1.1\r\nHost: baton.test\r\nContent-Length: {}\r\n\r\n",
            1 << 20
        )
        .into_bytes();
        post.resize(post.len() + (1 << 20), b'p');
        r.push(("a 1 MiB POST", answer_then_close(addr, post)));
        // One connection that never finishes its head holds the only
        // pending slot; every other one is shed.
        let mut holder = std::net::TcpStream::connect(addr).expect("connect");
        std::io::Write::write_all(&mut holder, b"GET / HTTP/1.1\r\nHost: baton.test\r\n")
            .expect("partial head");
        // The holder is pending once the front has accepted it, which the
        // listener defers until its first bytes arrived: wait for the front
        // to shed a probe, then measure.
        let request = b"GET /1k.bin HTTP/1.1\r\nHost: baton.test\r\n\r\n".to_vec();
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let (answer, _) = answer_then_close(addr, request.clone());
            if answer.starts_with("HTTP/1.1 503") || Instant::now() > deadline {
                break;
            }
        }
        for _ in 0..12 {
            r.push(("over max_pending", answer_then_close(addr, request.clone())));
        }
        drop(holder);
        r
    });

    let mut problems = Vec::new();
    for (what, (answer, end)) in &results {
        let want = match *what {
            "over max_pending" => "HTTP/1.1 503",
            "a 1 MiB POST" => "HTTP/1.1 405",
            _ => "HTTP/1.1 431",
        };
        if !answer.starts_with(want) || end.is_err() {
            problems.push(format!(
                "{what}: {:?} ended with {end:?}",
                answer.lines().next().unwrap_or("(nothing)")
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} answers were lost or ended with a reset:\n{}\n{}",
        problems.len(),
        results.len(),
        problems.join("\n"),
        logs(&lab)
    );
    let after = stats(&lab);
    let shed = counter(&after, "shed") - counter(&before, "shed");
    assert!(
        shed >= 12,
        "shed counted {shed} of at least 12 connections\n{after:#}"
    );
    finish(lab);
}
