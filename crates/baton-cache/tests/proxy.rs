//! End-to-end tests on 127.0.0.1: a real origin (`baton_serve::serve_listener` on a temporary
//! directory), the caching proxy on its own listener, raw HTTP/1.1 clients.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_cache::{serve_connection, CacheStats, CachingProxy, ObjectCache, ProxyLimits};
use baton_serve::{serve_listener, StaticFiles};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

const DEADLINE: Duration = Duration::from_secs(20);
const MIB: usize = 1024 * 1024;

/// A temporary directory removed on drop, also when a test fails.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "baton-cache-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    // xorshift: bytes that differ from offset to offset, so a misplaced range shows.
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The origin: a docroot served by `baton_serve::serve_listener` on 127.0.0.1:0.
struct Origin {
    dir: TempDir,
    addr: SocketAddr,
    files: Arc<StaticFiles>,
    stop_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Origin {
    /// Serves `files` (name, content) from a fresh directory.
    async fn start(files: &[(&str, &[u8])]) -> Origin {
        let dir = TempDir::new();
        for (name, data) in files {
            std::fs::write(dir.0.join(name), data).expect("write file");
        }
        let static_files = Arc::new(StaticFiles::new(&dir.0).expect("docroot"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_listener(listener, Arc::clone(&static_files), stop_rx));
        Origin {
            dir,
            addr,
            files: static_files,
            stop_tx: Some(stop_tx),
            task: Some(task),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests the origin has answered.
    fn requests(&self) -> u64 {
        self.files.stats().requests
    }

    async fn stop(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let res = tokio::time::timeout(DEADLINE, task).await;
            assert!(matches!(res, Ok(Ok(()))), "origin did not stop: {res:?}");
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The proxy behind its own listener on 127.0.0.1:0; connections are served until drop.
struct Proxy {
    addr: SocketAddr,
    proxy: Arc<CachingProxy>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(origin: &str, cache: ObjectCache, limits: ProxyLimits) -> Proxy {
        let uri = origin.parse().expect("origin uri");
        let proxy = Arc::new(CachingProxy::new(uri, cache, limits).expect("proxy"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let served = Arc::clone(&proxy);
        let task = tokio::spawn(async move {
            // Aborting this task drops the set, which aborts every connection task.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        stream.set_nodelay(true).expect("nodelay");
                        conns.spawn(serve_connection(stream, Arc::clone(&served)));
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Proxy { addr, proxy, task }
    }

    fn stats(&self) -> CacheStats {
        self.proxy.stats()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses consecutive responses; `no_body[i]` says response i answers a HEAD.
fn parse_responses(mut buf: &[u8], no_body: &[bool]) -> Vec<Resp> {
    let mut out = Vec::new();
    for &head_only in no_body {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = if head_only || status == 304 {
            0
        } else {
            resp.header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(buf.len() - end - 4)
        };
        let body_end = (end + 4 + len).min(buf.len());
        resp.body = buf[end + 4..body_end].to_vec();
        buf = &buf[body_end..];
        out.push(resp);
    }
    assert!(
        buf.is_empty(),
        "trailing bytes after responses: {:?}",
        String::from_utf8_lossy(buf)
    );
    out
}

/// Writes `request` in one write and reads until the server closes.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        out
    };
    tokio::time::timeout(DEADLINE, fut)
        .await
        .expect("server closed the connection in time")
}

/// One request on its own connection.
async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    let raw = raw_exchange(addr, req.as_bytes()).await;
    let mut all = parse_responses(&raw, &[method == "HEAD"]);
    assert_eq!(all.len(), 1, "{:?}", String::from_utf8_lossy(&raw));
    all.remove(0)
}

async fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[]).await
}

#[tokio::test]
async fn first_get_misses_second_hits_byte_exact() {
    let small = pattern(1024, 1);
    let big = pattern(MIB, 2);
    let origin = Origin::start(&[
        ("empty.bin", b""),
        ("1k.bin", &small),
        ("1m.bin", &big),
        ("page.html", b"<p>hi</p>"),
    ])
    .await;
    let proxy = Proxy::start(
        &origin.url(),
        ObjectCache::new(64 * MIB as u64),
        ProxyLimits::default(),
    )
    .await;

    let mut expected_origin = 0;
    for (path, want) in [
        ("/empty.bin", &b""[..]),
        ("/1k.bin", &small),
        ("/1m.bin", &big),
        ("/page.html", b"<p>hi</p>"),
    ] {
        let direct = get(origin.addr, path).await;
        expected_origin += 1;
        let miss = get(proxy.addr, path).await;
        expected_origin += 1;
        assert_eq!(miss.status, 200, "{path}");
        assert_eq!(miss.header("x-cache"), Some("MISS"), "{path}");
        assert_eq!(sha(&miss.body), sha(want), "{path}: miss body differs");
        assert_eq!(
            origin.requests(),
            expected_origin,
            "{path}: the miss went to the origin"
        );

        let hit = get(proxy.addr, path).await;
        assert_eq!(hit.status, 200, "{path}");
        assert_eq!(hit.header("x-cache"), Some("HIT"), "{path}");
        assert_eq!(sha(&hit.body), sha(want), "{path}: hit body differs");
        assert_eq!(
            origin.requests(),
            expected_origin,
            "{path}: the hit stayed in the cache"
        );
        for name in ["content-type", "etag", "last-modified", "content-length"] {
            assert_eq!(hit.header(name), direct.header(name), "{path}: {name}");
            assert_eq!(miss.header(name), direct.header(name), "{path}: {name}");
        }
        assert_eq!(hit.header("accept-ranges"), Some("bytes"));
    }

    let s = proxy.stats();
    assert_eq!((s.lookups, s.hits, s.misses), (8, 4, 4));
    assert_eq!(
        (s.inserts, s.objects, s.evictions, s.too_large),
        (4, 4, 0, 0)
    );
    assert_eq!(s.origin_requests, 4);
    assert_eq!(s.origin_bytes, (small.len() + big.len() + 9) as u64);
    let charged: u64 = [
        ("/empty.bin", 0),
        ("/1k.bin", 1024),
        ("/1m.bin", MIB),
        ("/page.html", 9),
    ]
    .iter()
    .map(|(k, len)| baton_cache::ENTRY_OVERHEAD + (k.len() + len) as u64)
    .sum();
    // Each entry also pays for its stored header values.
    assert!(
        s.bytes_cached > charged && s.bytes_cached < charged + 4 * 200,
        "{s:?}"
    );
    assert_eq!(s.responses_2xx, 8);
    assert_eq!(s.bytes_sent, 2 * (small.len() + big.len() + 9) as u64);
    assert_eq!(s.aborted, 0);
}

#[tokio::test]
async fn capacity_pressure_evicts_and_refetches() {
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("f{i}.bin"), pattern(64 * 1024, 10 + i)))
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let origin = Origin::start(&refs).await;
    // Room for four of the six objects (each 64 KiB + key + headers + overhead).
    let capacity = 4 * (64 * 1024 + 1024) as u64;
    let cache = ObjectCache::new(capacity).with_max_object_size(64 * 1024);
    let proxy = Proxy::start(&origin.url(), cache, ProxyLimits::default()).await;

    for (name, data) in &files {
        let r = get(proxy.addr, &format!("/{name}")).await;
        assert_eq!((r.status, sha(&r.body)), (200, sha(data)), "{name}");
    }
    let s = proxy.stats();
    assert_eq!(s.objects, 4, "{s:?}");
    assert_eq!(s.evictions, 2, "{s:?}");
    assert!(s.bytes_cached <= capacity);
    assert_eq!(origin.requests(), 6);

    // Nothing was requested twice, so SIEVE evicted the oldest: f0 must come from the origin.
    let again = get(proxy.addr, "/f0.bin").await;
    assert_eq!(again.header("x-cache"), Some("MISS"));
    assert_eq!(sha(&again.body), sha(&files[0].1));
    assert_eq!(origin.requests(), 7);
    let newest = get(proxy.addr, "/f5.bin").await;
    assert_eq!(newest.header("x-cache"), Some("HIT"));
    assert_eq!(origin.requests(), 7);
    assert_eq!(proxy.stats().evictions, 3);
}

/// A TCP relay to the origin that holds the origin's answers until the gate opens.
struct GatedRelay {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    gate: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl GatedRelay {
    async fn start(origin: SocketAddr) -> GatedRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let (gate, gate_rx) = watch::channel(false);
        let counted = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            let mut relays = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let mut gate_rx = gate_rx.clone();
                relays.spawn(async move {
                    let Ok(upstream) = TcpStream::connect(origin).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut ur, mut uw) = upstream.into_split();
                    let up = tokio::spawn(async move { tokio::io::copy(&mut cr, &mut uw).await });
                    if gate_rx.wait_for(|open| *open).await.is_ok() {
                        let _ = tokio::io::copy(&mut ur, &mut cw).await;
                    }
                    up.abort();
                });
            }
        });
        GatedRelay {
            addr,
            connections,
            gate,
            task,
        }
    }
}

impl Drop for GatedRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `cond` until it holds or the deadline passes: a readiness check on counters.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn concurrent_cold_misses_make_one_origin_request() {
    let big = pattern(MIB, 3);
    let origin = Origin::start(&[("1m.bin", &big)]).await;
    let relay = GatedRelay::start(origin.addr).await;
    let proxy = Proxy::start(
        &format!("http://{}", relay.addr),
        ObjectCache::new(64 * MIB as u64),
        ProxyLimits::default(),
    )
    .await;

    let mut clients = JoinSet::new();
    for _ in 0..10 {
        let addr = proxy.addr;
        clients.spawn(async move { get(addr, "/1m.bin").await });
    }
    // All ten are in: one fetch started, nine joined it; the origin's answer is held back.
    until("ten lookups", || proxy.stats().lookups == 10).await;
    assert_eq!(relay.connections.load(Ordering::SeqCst), 1);
    let s = proxy.stats();
    assert_eq!(
        (s.misses, s.coalesced, s.origin_requests),
        (10, 9, 1),
        "{s:?}"
    );
    relay.gate.send_replace(true);

    let mut n = 0;
    while let Some(done) = clients.join_next().await {
        let r = done.expect("client task");
        assert_eq!(r.status, 200);
        assert_eq!(sha(&r.body), sha(&big), "coalesced body differs");
        assert_eq!(r.header("x-cache"), Some("MISS"));
        n += 1;
    }
    assert_eq!(n, 10);
    assert_eq!(origin.requests(), 1, "one origin request for ten clients");
    assert_eq!(relay.connections.load(Ordering::SeqCst), 1);
    let s = proxy.stats();
    assert_eq!((s.inserts, s.objects, s.origin_bytes), (1, 1, MIB as u64));
    assert_eq!(
        get(proxy.addr, "/1m.bin").await.header("x-cache"),
        Some("HIT")
    );
}

#[tokio::test]
async fn concurrent_misses_for_a_missing_object_share_one_404() {
    let origin = Origin::start(&[("a.txt", b"a")]).await;
    let relay = GatedRelay::start(origin.addr).await;
    let proxy = Proxy::start(
        &format!("http://{}", relay.addr),
        ObjectCache::new(MIB as u64),
        ProxyLimits::default(),
    )
    .await;
    let mut clients = JoinSet::new();
    for _ in 0..5 {
        let addr = proxy.addr;
        clients.spawn(async move { get(addr, "/missing").await });
    }
    until("five lookups", || proxy.stats().lookups == 5).await;
    relay.gate.send_replace(true);
    while let Some(done) = clients.join_next().await {
        let r = done.expect("client task");
        assert_eq!(r.status, 404);
        assert_eq!(r.body, b"404 Not Found\n", "the origin's body is passed on");
    }
    assert_eq!(origin.requests(), 1);
    let s = proxy.stats();
    assert_eq!(
        (s.coalesced, s.objects, s.responses_4xx),
        (4, 0, 5),
        "{s:?}"
    );
}

#[tokio::test]
async fn concurrent_misses_for_a_too_large_object_all_get_it() {
    let big = pattern(MIB, 9);
    let origin = Origin::start(&[("1m.bin", &big)]).await;
    let relay = GatedRelay::start(origin.addr).await;
    // 1 MiB of cache: the 1 MiB object is too large, so it cannot be shared from memory.
    let proxy = Proxy::start(
        &format!("http://{}", relay.addr),
        ObjectCache::new(MIB as u64),
        ProxyLimits::default(),
    )
    .await;
    let mut clients = JoinSet::new();
    for _ in 0..3 {
        let addr = proxy.addr;
        clients.spawn(async move { get(addr, "/1m.bin").await });
    }
    until("three lookups", || proxy.stats().lookups == 3).await;
    assert_eq!(relay.connections.load(Ordering::SeqCst), 1);
    relay.gate.send_replace(true);
    while let Some(done) = clients.join_next().await {
        let r = done.expect("client task");
        assert_eq!(r.status, 200);
        assert_eq!(sha(&r.body), sha(&big));
    }
    // The fill's response streams to one client; the two others fetched on their own.
    assert_eq!(origin.requests(), 3);
    let s = proxy.stats();
    assert_eq!(
        (s.coalesced, s.passed_through, s.objects),
        (2, 2, 0),
        "{s:?}"
    );
    assert_eq!((s.too_large, s.origin_bytes), (1, 3 * MIB as u64), "{s:?}");
}

#[tokio::test]
async fn stopped_origin_gives_502_quickly_and_hits_still_work() {
    let small = pattern(1024, 4);
    let mut origin = Origin::start(&[("1k.bin", &small), ("other.bin", b"x")]).await;
    let proxy = Proxy::start(
        &origin.url(),
        ObjectCache::new(MIB as u64),
        ProxyLimits::default(),
    )
    .await;
    assert_eq!(get(proxy.addr, "/1k.bin").await.status, 200);
    origin.stop().await;

    let start = Instant::now();
    let r = get(proxy.addr, "/other.bin").await;
    let took = start.elapsed();
    assert_eq!(r.status, 502);
    assert!(took < Duration::from_secs(1), "502 took {took:?}");
    let head = request(proxy.addr, "HEAD", "/other.bin", &[]).await;
    assert_eq!((head.status, head.body.len()), (502, 0));
    let s = proxy.stats();
    assert_eq!(s.origin_errors, 2, "{s:?}");
    assert_eq!(s.objects, 1, "the failure is not cached");

    let hit = get(proxy.addr, "/1k.bin").await;
    assert_eq!((hit.status, hit.header("x-cache")), (200, Some("HIT")));
    assert_eq!(sha(&hit.body), sha(&small));
}

#[tokio::test]
async fn silent_origin_gives_504_after_the_fetch_timeout() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let limits = ProxyLimits {
        fetch_timeout: Duration::from_millis(300),
        ..ProxyLimits::default()
    };
    let proxy = Proxy::start(
        &format!("http://{addr}"),
        ObjectCache::new(MIB as u64),
        limits,
    )
    .await;
    let start = Instant::now();
    let r = get(proxy.addr, "/slow").await;
    let took = start.elapsed();
    silent.abort();
    assert_eq!(r.status, 504);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(proxy.stats().origin_errors, 1);
}

#[tokio::test]
async fn head_fills_the_cache_and_sends_no_body() {
    let big = pattern(MIB, 5);
    let origin = Origin::start(&[("1m.bin", &big)]).await;
    let proxy = Proxy::start(
        &origin.url(),
        ObjectCache::new(64 * MIB as u64),
        ProxyLimits::default(),
    )
    .await;

    // A HEAD miss and a GET on one connection: a body byte after the HEAD would be parsed as
    // the start of the second response.
    let raw = raw_exchange(
        proxy.addr,
        b"HEAD /1m.bin HTTP/1.1\r\nHost: t\r\n\r\nGET /1m.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let rs = parse_responses(&raw, &[true, false]);
    assert_eq!(rs.len(), 2);
    assert_eq!(rs[0].status, 200);
    assert_eq!(rs[0].header("content-length"), Some("1048576"));
    assert_eq!(rs[0].header("x-cache"), Some("MISS"));
    assert_eq!(rs[1].header("x-cache"), Some("HIT"));
    assert_eq!(sha(&rs[1].body), sha(&big));
    assert_eq!(
        origin.requests(),
        1,
        "HEAD fetched with GET and filled the cache"
    );

    let head_hit = request(proxy.addr, "HEAD", "/1m.bin", &[]).await;
    assert_eq!(head_hit.header("content-length"), Some("1048576"));
    assert_eq!(head_hit.header("x-cache"), Some("HIT"));
    assert_eq!(proxy.stats().aborted, 0);
}

#[tokio::test]
async fn ranges_are_served_from_the_cached_object() {
    let big = pattern(MIB, 6);
    let origin = Origin::start(&[("1m.bin", &big)]).await;
    let proxy = Proxy::start(
        &origin.url(),
        ObjectCache::new(64 * MIB as u64),
        ProxyLimits::default(),
    )
    .await;
    let len = big.len();

    // A cold range request fills the cache with the whole object and gets its range.
    let r = request(proxy.addr, "GET", "/1m.bin", &[("Range", "bytes=100-199")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 100-199/{len}").as_str())
    );
    assert_eq!(r.body, &big[100..200]);
    assert_eq!(r.header("x-cache"), Some("MISS"));

    for (range, start, end) in [
        ("bytes=-10", len - 10, len),
        ("bytes=1048570-", len - 6, len),
        ("bytes=0-0", 0, 1),
        ("bytes=1000-999999999", 1000, len),
    ] {
        let r = request(proxy.addr, "GET", "/1m.bin", &[("Range", range)]).await;
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.header("x-cache"), Some("HIT"));
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {}-{}/{len}", start, end - 1).as_str()),
            "{range}"
        );
        assert!(r.body == big[start..end], "{range}: wrong bytes");
    }
    let r = request(proxy.addr, "GET", "/1m.bin", &[("Range", "bytes=2000000-")]).await;
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );
    let multi = request(proxy.addr, "GET", "/1m.bin", &[("Range", "bytes=0-1,5-6")]).await;
    assert_eq!((multi.status, multi.body.len()), (200, len));
    assert_eq!(origin.requests(), 1);
}

#[tokio::test]
async fn conditional_requests_get_304_from_the_cache() {
    let origin = Origin::start(&[("a.txt", b"hello\n")]).await;
    let proxy = Proxy::start(
        &origin.url(),
        ObjectCache::new(MIB as u64),
        ProxyLimits::default(),
    )
    .await;
    let first = get(proxy.addr, "/a.txt").await;
    let etag = first.header("etag").expect("etag").to_owned();
    let lm = first
        .header("last-modified")
        .expect("last-modified")
        .to_owned();

    let r = request(proxy.addr, "GET", "/a.txt", &[("If-None-Match", &etag)]).await;
    assert_eq!((r.status, r.body.len()), (304, 0));
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let r = request(proxy.addr, "GET", "/a.txt", &[("If-Modified-Since", &lm)]).await;
    assert_eq!(r.status, 304);
    let r = request(
        proxy.addr,
        "GET",
        "/a.txt",
        &[("If-None-Match", "\"other\"")],
    )
    .await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello\n"[..]));
    assert_eq!(origin.requests(), 1);
}

#[tokio::test]
async fn too_large_objects_are_served_but_not_cached() {
    let big = pattern(MIB, 7);
    let origin = Origin::start(&[("1m.bin", &big), ("small.bin", b"small")]).await;
    // 1 MiB of cache: objects above 128 KiB are not cached.
    let proxy = Proxy::start(
        &origin.url(),
        ObjectCache::new(MIB as u64),
        ProxyLimits::default(),
    )
    .await;

    for n in 1..=2 {
        let r = get(proxy.addr, "/1m.bin").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some("1048576"));
        assert_eq!(sha(&r.body), sha(&big), "streamed body differs");
        assert_eq!(r.header("x-cache"), Some("MISS"));
        assert_eq!(origin.requests(), n);
    }
    let s = proxy.stats();
    assert_eq!(
        (s.objects, s.bytes_cached, s.inserts, s.too_large),
        (0, 0, 0, 2),
        "{s:?}"
    );
    assert_eq!(s.origin_bytes, 2 * MIB as u64);

    // Ranges and conditionals on an uncacheable object go to the origin with the request.
    let r = request(proxy.addr, "GET", "/1m.bin", &[("Range", "bytes=10-19")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &big[10..20]);
    let head = request(proxy.addr, "HEAD", "/1m.bin", &[]).await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(head.header("content-length"), Some("1048576"));
    let s = proxy.stats();
    assert_eq!(s.passed_through, 1, "{s:?}");
    assert_eq!(s.aborted, 0, "{s:?}");

    // Small objects still are cached.
    get(proxy.addr, "/small.bin").await;
    assert_eq!(
        get(proxy.addr, "/small.bin").await.header("x-cache"),
        Some("HIT")
    );
}

#[tokio::test]
async fn not_found_is_passed_on_and_not_cached_and_other_methods_get_405() {
    let origin = Origin::start(&[("a.txt", b"a")]).await;
    let proxy = Proxy::start(
        &origin.url(),
        ObjectCache::new(MIB as u64),
        ProxyLimits::default(),
    )
    .await;
    for n in 1..=2 {
        let r = get(proxy.addr, "/missing.txt").await;
        assert_eq!(r.status, 404);
        assert_eq!(origin.requests(), n);
    }
    let head = request(proxy.addr, "HEAD", "/missing.txt", &[]).await;
    assert_eq!((head.status, head.body.len()), (404, 0));
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let r = request(proxy.addr, method, "/a.txt", &[]).await;
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
    assert_eq!(origin.requests(), 3, "405s never reach the origin");
    let s = proxy.stats();
    assert_eq!((s.objects, s.responses_4xx), (0, 7));
}

#[tokio::test]
async fn keep_alive_and_pipelining_mix_hits_and_misses() {
    let small = pattern(1024, 8);
    let origin = Origin::start(&[("1k.bin", &small), ("b.txt", b"bee")]).await;
    let proxy = Proxy::start(
        &origin.url(),
        ObjectCache::new(MIB as u64),
        ProxyLimits::default(),
    )
    .await;
    let raw = raw_exchange(
        proxy.addr,
        b"GET /1k.bin HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /1k.bin HTTP/1.1\r\nHost: t\r\n\r\n\
          HEAD /b.txt HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /nope HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /b.txt?v=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let rs = parse_responses(&raw, &[false, false, true, false, false]);
    let summary: Vec<(u16, Option<&str>)> =
        rs.iter().map(|r| (r.status, r.header("x-cache"))).collect();
    assert_eq!(
        summary,
        [
            (200, Some("MISS")),
            (200, Some("HIT")),
            (200, Some("MISS")),
            (404, Some("MISS")),
            (200, Some("MISS"))
        ]
    );
    assert_eq!(rs[0].body, small);
    assert_eq!(rs[1].body, small);
    assert_eq!(
        rs[4].body, b"bee",
        "the query makes another key; the origin ignores it"
    );
    let s = proxy.stats();
    assert_eq!(s.connections, 1);
    assert_eq!(s.objects, 3);
}

#[tokio::test]
async fn client_going_away_mid_body_ends_the_connection() {
    // 256 MiB of cache, so a 32 MiB object is cached; 64 MiB is streamed through.
    let origin = Origin::start(&[]).await;
    for (name, len) in [("32m.bin", 32 * MIB), ("64m.bin", 64 * MIB)] {
        std::fs::File::create(origin.dir.0.join(name))
            .and_then(|f| f.set_len(len as u64))
            .expect("sparse file");
    }
    let uri = origin.url().parse().expect("uri");
    let proxy = Arc::new(
        CachingProxy::new(
            uri,
            ObjectCache::new(256 * MIB as u64),
            ProxyLimits::default(),
        )
        .expect("proxy"),
    );
    let cached = get_len_via(&proxy, "/32m.bin").await;
    assert_eq!(cached, 32 * MIB);

    for path in ["/32m.bin", "/64m.bin"] {
        let before = proxy.stats().aborted;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let p = Arc::clone(&proxy);
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            serve_connection(stream, p).await
        });
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0usize;
        while got < MIB {
            let n = tokio::time::timeout(DEADLINE, client.read(&mut buf))
                .await
                .expect("response data")
                .expect("read");
            assert!(n > 0, "server closed early");
            got += n;
        }
        // Unread data in the receive queue makes close() send a RST.
        drop(client);
        let res = tokio::time::timeout(DEADLINE, task)
            .await
            .expect("serve_connection returned promptly")
            .expect("no panic");
        assert!(
            res.is_err(),
            "{path}: a reset mid-body is reported: {res:?}"
        );
        assert_eq!(proxy.stats().aborted, before + 1, "{path}");
    }
    // The proxy still answers.
    assert_eq!(get_len_via(&proxy, "/32m.bin").await, 32 * MIB);
    assert_eq!(proxy.stats().hits, 2);
}

/// GET through `serve_connection` on a one-off listener; returns the body length.
async fn get_len_via(proxy: &Arc<CachingProxy>, path: &str) -> usize {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let p = Arc::clone(proxy);
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        serve_connection(stream, p).await
    });
    let r = get(addr, path).await;
    assert_eq!(r.status, 200, "{path}");
    let _ = tokio::time::timeout(DEADLINE, task).await;
    r.body.len()
}

#[test]
fn https_and_malformed_origins_are_refused() {
    let new = |s: &str| {
        CachingProxy::new(
            s.parse().expect("uri"),
            ObjectCache::new(1024),
            ProxyLimits::default(),
        )
    };
    let err = new("https://origin.example").expect_err("https refused");
    assert!(matches!(err, baton_cache::Error::HttpsOrigin(_)));
    assert!(err.to_string().contains("https is not supported"), "{err}");
    assert!(matches!(
        new("http://origin/path"),
        Err(baton_cache::Error::BadOrigin { .. })
    ));
    let zero = ProxyLimits {
        fetch_timeout: Duration::ZERO,
        ..ProxyLimits::default()
    };
    let err = CachingProxy::new("http://o".parse().expect("uri"), ObjectCache::new(1), zero);
    assert!(matches!(err, Err(baton_cache::Error::InvalidLimits(_))));
}
