//! End-to-end tests: a real listener on 127.0.0.1:0, real curl, raw TCP clients.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton_serve::{serve_connection, serve_listener, Limits, ServeError, StaticFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const SECRET: &[u8] = b"TOP-SECRET-MARKER do not serve\n";
const BIG_LEN: usize = 3 * 1024 * 1024 + 7;
const HUGE_LEN: u64 = 64 * 1024 * 1024;
const DEADLINE: Duration = Duration::from_secs(20);

/// A temporary directory removed on drop, also when a test fails.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "baton-serve-test-{}-{}",
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

/// The served tree, inside `<tmp>/www`, and a secret beside it at `<tmp>/secret.txt`.
struct Site {
    tmp: TempDir,
    small: Vec<u8>,
    big: Vec<u8>,
}

impl Site {
    fn new() -> Site {
        let tmp = TempDir::new();
        let www = tmp.0.join("www");
        let write = |rel: &str, data: &[u8]| {
            let p = www.join(rel);
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).expect("mkdir");
            }
            std::fs::File::create(&p)
                .and_then(|mut f| f.write_all(data))
                .expect("write file");
        };
        let small = pattern(1024, 1);
        let big = pattern(BIG_LEN, 2);
        write("empty.bin", b"");
        write("1k.bin", &small);
        write("big.bin", &big);
        write("index.html", b"<h1>root</h1>\n");
        write("style.css", b"body{}\n");
        write("data.qqqunknown", b"?");
        write("sub/index.html", b"<h1>sub</h1>\n");
        write("a b.txt", b"space\n");
        std::fs::create_dir_all(www.join("emptydir")).expect("mkdir");
        std::fs::File::create(www.join("huge.bin"))
            .and_then(|f| f.set_len(HUGE_LEN))
            .expect("sparse file");
        std::fs::write(tmp.0.join("secret.txt"), SECRET).expect("secret");
        std::fs::create_dir(tmp.0.join("outside")).expect("mkdir");
        std::fs::write(tmp.0.join("outside/secret.txt"), SECRET).expect("secret");
        std::os::unix::fs::symlink(tmp.0.join("secret.txt"), www.join("leak.txt")).expect("ln");
        std::os::unix::fs::symlink(tmp.0.join("outside"), www.join("leakdir")).expect("ln");
        std::os::unix::fs::symlink("1k.bin", www.join("alias.bin")).expect("ln");
        Site { tmp, small, big }
    }

    fn root(&self) -> PathBuf {
        self.tmp.0.join("www")
    }

    fn files(&self, limits: Limits) -> Arc<StaticFiles> {
        Arc::new(
            StaticFiles::new(self.root())
                .and_then(|f| f.with_limits(limits))
                .expect("static files"),
        )
    }
}

/// `serve_listener` on an ephemeral loopback port, stopped and awaited on `stop`.
struct Server {
    addr: SocketAddr,
    files: Arc<StaticFiles>,
    stop_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    async fn start(files: Arc<StaticFiles>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_listener(listener, Arc::clone(&files), stop_rx));
        Server {
            addr,
            files,
            stop_tx: Some(stop_tx),
            task: Some(task),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let res = tokio::time::timeout(DEADLINE, task).await;
            assert!(
                matches!(res, Ok(Ok(()))),
                "serve_listener did not stop: {res:?}"
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    version: String,
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
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_owned();
        let status: u16 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let mut resp = Resp {
            status,
            version,
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

async fn curl(args: &[&str]) -> std::process::Output {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "30", "--noproxy", "*"])
        .args(args)
        .output()
        .await
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// curl with `-i`: one parsed response.
async fn curl_resp(args: &[&str]) -> Resp {
    let head = args.contains(&"-I") || args.contains(&"--head");
    let out = curl(&[&["-i"], args].concat()).await;
    let mut all = parse_responses(&out.stdout, &[head]);
    assert_eq!(all.len(), 1, "{:?}", String::from_utf8_lossy(&out.stdout));
    all.remove(0)
}

#[tokio::test]
async fn get_is_byte_exact_with_type_and_validators() {
    let site = Site::new();
    let srv = Server::start(site.files(Limits::default())).await;

    for (path, want) in [
        ("/empty.bin", &b""[..]),
        ("/1k.bin", &site.small[..]),
        ("/big.bin", &site.big[..]),
    ] {
        let r = curl_resp(&[&srv.url(path)]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body.len(), want.len(), "{path}");
        assert!(r.body == want, "{path}: body differs");
        assert_eq!(
            r.header("content-length"),
            Some(want.len().to_string().as_str())
        );
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
        assert_eq!(r.header("accept-ranges"), Some("bytes"));
        assert_eq!(r.header("server"), Some("baton"));
        assert!(r.header("etag").is_some_and(|e| e.starts_with("W/\"")));
        assert!(r
            .header("last-modified")
            .is_some_and(|d| d.ends_with(" GMT")));
    }

    let css = curl_resp(&[&srv.url("/style.css?v=3&x=%2e%2e")]).await;
    assert_eq!((css.status, css.body.as_slice()), (200, &b"body{}\n"[..]));
    assert_eq!(css.header("content-type"), Some("text/css"));
    let unknown = curl_resp(&[&srv.url("/data.qqqunknown")]).await;
    assert_eq!(
        unknown.header("content-type"),
        Some("application/octet-stream")
    );
    let spaced = curl_resp(&[&srv.url("/a%20b.txt")]).await;
    assert_eq!(
        (spaced.status, spaced.body.as_slice()),
        (200, &b"space\n"[..])
    );
    let alias = curl_resp(&[&srv.url("/alias.bin")]).await;
    assert!(
        alias.status == 200 && alias.body == site.small,
        "symlink inside the root"
    );

    let stats = srv.files.stats();
    assert_eq!(stats.requests, 7);
    assert_eq!(stats.responses_2xx, 7);
    let expected = (site.small.len() * 2 + site.big.len() + 7 + 1 + 6) as u64;
    assert_eq!(stats.bytes_sent, expected);
    srv.stop().await;
}

#[tokio::test]
async fn head_has_the_get_headers_and_no_body() {
    let site = Site::new();
    let srv = Server::start(site.files(Limits::default())).await;

    let head = curl_resp(&["-I", &srv.url("/big.bin")]).await;
    let get = curl_resp(&[&srv.url("/big.bin")]).await;
    assert_eq!(head.status, 200);
    for name in [
        "content-length",
        "content-type",
        "etag",
        "last-modified",
        "accept-ranges",
    ] {
        assert_eq!(head.header(name), get.header(name), "{name}");
    }
    assert_eq!(
        head.header("content-length"),
        Some(BIG_LEN.to_string().as_str())
    );

    // On one connection, a HEAD followed by a GET: any body byte after the HEAD would be
    // read as the start of the second response.
    let raw = raw_exchange(
        srv.addr,
        b"HEAD /1k.bin HTTP/1.1\r\nHost: t\r\n\r\nGET /style.css HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let rs = parse_responses(&raw, &[true, false]);
    assert_eq!(rs.len(), 2);
    assert_eq!(rs[0].header("content-length"), Some("1024"));
    assert_eq!(
        (rs[1].status, rs[1].body.as_slice()),
        (200, &b"body{}\n"[..])
    );
    srv.stop().await;
}

#[tokio::test]
async fn missing_files_and_other_methods() {
    let site = Site::new();
    let srv = Server::start(site.files(Limits::default())).await;

    let missing = curl_resp(&[&srv.url("/nope.txt")]).await;
    assert_eq!(missing.status, 404);
    assert_eq!(curl_resp(&[&srv.url("/1k.bin/")]).await.status, 404);
    assert_eq!(curl_resp(&[&srv.url("/emptydir/")]).await.status, 404);
    assert_eq!(curl_resp(&["-I", &srv.url("/nope")]).await.status, 404);

    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let r = curl_resp(&["-X", method, &srv.url("/1k.bin")]).await;
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{method}");
    }
    let r = curl_resp(&["--data-binary", "payload", &srv.url("/1k.bin")]).await;
    assert_eq!(r.status, 405);

    let stats = srv.files.stats();
    assert_eq!((stats.responses_4xx, stats.responses_2xx), (9, 0));
    srv.stop().await;
}

#[tokio::test]
async fn directories_serve_their_index_and_redirect_without_slash() {
    let site = Site::new();
    let srv = Server::start(site.files(Limits::default())).await;

    let root = curl_resp(&[&srv.url("/")]).await;
    assert_eq!(
        (root.status, root.body.as_slice()),
        (200, &b"<h1>root</h1>\n"[..])
    );
    assert_eq!(root.header("content-type"), Some("text/html"));
    let sub = curl_resp(&[&srv.url("/sub/")]).await;
    assert_eq!(
        (sub.status, sub.body.as_slice()),
        (200, &b"<h1>sub</h1>\n"[..])
    );
    let redirect = curl_resp(&[&srv.url("/sub")]).await;
    assert_eq!(redirect.status, 301);
    assert_eq!(redirect.header("location"), Some("/sub/"));
    let followed = curl(&[
        "-L",
        "-w",
        "%{http_code} %{num_redirects}",
        &srv.url("/sub"),
    ])
    .await;
    assert_eq!(followed.stdout, b"<h1>sub</h1>\n200 1");
    assert_eq!(srv.files.stats().responses_3xx, 2);
    srv.stop().await;
}

#[tokio::test]
async fn single_ranges_and_unsatisfiable_ranges() {
    let site = Site::new();
    let srv = Server::start(site.files(Limits::default())).await;
    let url = srv.url("/1k.bin");

    let r = curl_resp(&["-H", "Range: bytes=10-19", &url]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 10-19/1024"));
    assert_eq!(r.header("content-length"), Some("10"));
    assert!(r.body == site.small[10..20]);

    let r = curl_resp(&["-H", "Range: bytes=-100", &url]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 924-1023/1024"));
    assert!(r.body == site.small[924..]);

    let r = curl_resp(&["-H", "Range: bytes=1000-", &url]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 1000-1023/1024"));
    assert!(r.body == site.small[1000..]);

    let r = curl_resp(&["-H", "Range: bytes=1024-", &url]).await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */1024"));

    let r = curl_resp(&["-H", "Range: bytes=0-0", &srv.url("/empty.bin")]).await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */0"));

    // Multi-range: the whole file with 200 (documented choice).
    let r = curl_resp(&["-H", "Range: bytes=0-1,5-6", &url]).await;
    assert_eq!(r.status, 200);
    assert!(r.body == site.small);

    // A range deep in a large file, served after a seek.
    let r = curl_resp(&["-r", "3000000-3145727", &srv.url("/big.bin")]).await;
    assert_eq!(r.status, 206);
    assert!(r.body == site.big[3_000_000..3_145_728]);

    // If-Range with a different date: the range is dropped, the whole file served.
    let r = curl_resp(&[
        "-H",
        "Range: bytes=0-0",
        "-H",
        "If-Range: Sun, 06 Nov 1994 08:49:37 GMT",
        &url,
    ])
    .await;
    assert_eq!((r.status, r.body.len()), (200, 1024));
    srv.stop().await;
}

#[tokio::test]
async fn conditional_requests_get_304() {
    let site = Site::new();
    let srv = Server::start(site.files(Limits::default())).await;
    let url = srv.url("/1k.bin");

    let first = curl_resp(&[&url]).await;
    let etag = first.header("etag").expect("etag").to_owned();
    let last_modified = first
        .header("last-modified")
        .expect("last-modified")
        .to_owned();

    let r = curl_resp(&["-H", &format!("If-None-Match: {etag}"), &url]).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));

    let r = curl_resp(&["-H", &format!("If-Modified-Since: {last_modified}"), &url]).await;
    assert_eq!(r.status, 304);

    let r = curl_resp(&["-H", "If-None-Match: \"something-else\"", &url]).await;
    assert_eq!((r.status, r.body.len()), (200, 1024));

    // After the file changes, the old tag no longer matches.
    std::fs::write(site.root().join("1k.bin"), b"changed").expect("rewrite");
    let r = curl_resp(&["-H", &format!("If-None-Match: {etag}"), &url]).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"changed"[..]));
    assert_eq!(srv.files.stats().responses_3xx, 2);
    srv.stop().await;
}

#[tokio::test]
async fn traversal_never_escapes_the_root() {
    let site = Site::new();
    let srv = Server::start(site.files(Limits::default())).await;
    let attempts: &[&[u8]] = &[
        b"/../etc/passwd",
        b"/../secret.txt",
        b"/%2e%2e/%2e%2e/etc/passwd",
        b"/%2e%2e/secret.txt",
        b"/%2E%2E%2Fsecret.txt",
        b"/sub/../../secret.txt",
        b"/sub/%2e%2e/%2e%2e/secret.txt",
        b"/..%2fsecret.txt",
        b"/%2e%2e%5csecret.txt",
        b"/leak.txt",
        b"/leakdir/secret.txt",
        b"/leakdir/",
        b"/1k.bin%00.html",
        b"/%00",
        b"/etc/passwd",
        b"http://t/../secret.txt",
        b"*",
    ];
    for path in attempts {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(path);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let raw = raw_exchange(srv.addr, &req).await;
        let shown = String::from_utf8_lossy(path);
        let rs = parse_responses(&raw, &[false]);
        assert_eq!(rs.len(), 1, "{shown}");
        assert!(
            rs[0].status == 400 || rs[0].status == 404,
            "{shown}: status {}",
            rs[0].status
        );
        assert!(
            !raw.windows(SECRET.len()).any(|w| w == SECRET),
            "{shown} leaked the secret"
        );
        assert!(
            !raw.windows(5).any(|w| w == b"root:"),
            "{shown} leaked /etc/passwd"
        );
    }
    // A raw NUL in the request line is refused by the parser itself.
    let raw = raw_exchange(srv.addr, b"GET /1k.bin\0 HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(
        raw.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    srv.stop().await;
}

#[tokio::test]
async fn hundred_requests_share_one_connection() {
    let site = Site::new();
    let srv = Server::start(site.files(Limits::default())).await;
    let url = srv.url("/1k.bin");
    let mut args = vec!["-w", "%{http_code} %{num_connects} %{size_download}\\n"];
    for _ in 0..100 {
        args.extend([url.as_str(), "-o", "/dev/null"]);
    }
    let out = curl(&args).await;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 100);
    let mut connects = 0;
    for line in &lines {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.first(), Some(&"200"), "{line}");
        assert_eq!(fields.get(2), Some(&"1024"), "{line}");
        connects += fields
            .get(1)
            .and_then(|n| n.parse::<u32>().ok())
            .expect("num_connects");
    }
    assert_eq!(connects, 1, "curl opened more than one connection");
    let stats = srv.files.stats();
    assert_eq!((stats.connections, stats.requests), (1, 100));
    srv.stop().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let site = Site::new();
    let srv = Server::start(site.files(Limits::default())).await;
    let raw = raw_exchange(
        srv.addr,
        b"GET /1k.bin HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\nGET /style.css HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let rs = parse_responses(&raw, &[false, false, false]);
    assert_eq!(rs.len(), 3);
    assert_eq!(rs[0].status, 200);
    assert!(rs[0].body == site.small);
    assert_eq!(rs[1].status, 404);
    assert_eq!(
        (rs[2].status, rs[2].body.as_slice()),
        (200, &b"body{}\n"[..])
    );
    assert_eq!(rs[2].header("connection"), Some("close"));
    srv.stop().await;
}

#[tokio::test]
async fn connection_close_and_http10() {
    let site = Site::new();
    let srv = Server::start(site.files(Limits::default())).await;

    // raw_exchange reads to EOF, so returning at all shows the server closed.
    let raw = raw_exchange(
        srv.addr,
        b"GET /1k.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let rs = parse_responses(&raw, &[false]);
    assert!(rs[0].status == 200 && rs[0].body == site.small);

    let raw = raw_exchange(srv.addr, b"GET /1k.bin HTTP/1.0\r\n\r\n").await;
    let rs = parse_responses(&raw, &[false]);
    assert!(rs[0].status == 200 && rs[0].body == site.small);
    assert_eq!(rs[0].version, "HTTP/1.0");

    // HTTP/1.0 keep-alive on request, then close.
    let raw = raw_exchange(
        srv.addr,
        b"GET /style.css HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /1k.bin HTTP/1.0\r\n\r\n",
    )
    .await;
    let rs = parse_responses(&raw, &[false, false]);
    assert_eq!(rs.len(), 2);
    assert!(rs[1].body == site.small);

    let r = curl_resp(&["--http1.0", &srv.url("/big.bin")]).await;
    assert!(r.status == 200 && r.body == site.big);
    srv.stop().await;
}

#[tokio::test]
async fn oversized_request_head_is_refused() {
    let site = Site::new();
    let srv = Server::start(site.files(Limits::default())).await;
    let mut req = b"GET /1k.bin HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 20 * 1024));
    req.extend_from_slice(b"\r\n\r\n");
    let raw = raw_exchange(srv.addr, &req).await;
    assert!(
        raw.starts_with(b"HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    srv.stop().await;
}

/// Accepts one connection on a fresh listener and serves it with `serve_connection`.
async fn one_connection(
    files: Arc<StaticFiles>,
) -> (SocketAddr, JoinHandle<Result<(), ServeError>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        serve_connection(stream, files).await
    });
    (addr, task)
}

#[tokio::test]
async fn client_abort_mid_body_ends_the_connection() {
    let site = Site::new();
    let files = site.files(Limits::default());
    let (addr, task) = one_connection(Arc::clone(&files)).await;

    let mut client = TcpStream::connect(addr).await.expect("connect");
    client
        .write_all(b"GET /huge.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0usize;
    while got < 1024 * 1024 {
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
    assert!(res.is_err(), "a reset mid-body is reported: {res:?}");
    let stats = files.stats();
    assert_eq!(stats.aborted, 1);
    assert!(stats.bytes_sent < HUGE_LEN, "{}", stats.bytes_sent);
    assert_eq!(stats.responses_2xx, 1);
}

#[tokio::test]
async fn client_that_stops_reading_is_cut_after_the_send_timeout() {
    let site = Site::new();
    let limits = Limits {
        send_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let files = site.files(limits);
    let (addr, task) = one_connection(Arc::clone(&files)).await;

    let mut client = TcpStream::connect(addr).await.expect("connect");
    client
        .write_all(b"GET /huge.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    // The client keeps the connection open but never reads.
    let res = tokio::time::timeout(DEADLINE, task)
        .await
        .expect("serve_connection returned promptly")
        .expect("no panic");
    assert!(res.is_err(), "{res:?}");
    let stats = files.stats();
    assert_eq!(stats.aborted, 1);
    // What was handed over sits in socket buffers: the server does not buffer the file itself.
    assert!(stats.bytes_sent < HUGE_LEN / 2, "{}", stats.bytes_sent);
    drop(client);
}

#[tokio::test]
async fn silent_client_is_closed_after_the_header_timeout() {
    let site = Site::new();
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let files = site.files(limits);
    let (addr, task) = one_connection(Arc::clone(&files)).await;

    let mut client = TcpStream::connect(addr).await.expect("connect");
    client
        .write_all(b"GET /1k.bin HTTP/1.1\r\nHo")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(DEADLINE, client.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "server kept a half-sent head open");
    let res = tokio::time::timeout(DEADLINE, task)
        .await
        .expect("returned")
        .expect("no panic");
    assert!(
        matches!(&res, Err(ServeError::Connection(e)) if e.is_timeout()),
        "{res:?}"
    );
    assert_eq!(files.stats().requests, 0);
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_the_listener() {
    let site = Site::new();
    let srv = Server::start(site.files(Limits::default())).await;
    let addr = srv.addr;

    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /style.css HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.ends_with(b"body{}\n") {
        let n = tokio::time::timeout(DEADLINE, idle.read(&mut buf))
            .await
            .expect("response")
            .expect("read");
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }

    srv.stop().await;
    let n = tokio::time::timeout(DEADLINE, idle.read(&mut buf))
        .await
        .expect("idle connection closed on shutdown");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener still open"
    );
}

/// Files are looked up and read on the connection's task: a request is answered at once even
/// when every thread of tokio's blocking pool is busy (before, each request queued behind
/// them twice, and waits for pool threads made the keep-alive p99 tens of milliseconds).
#[test]
fn files_are_served_while_the_blocking_pool_is_busy() {
    let site = Site::new();
    let files = site.files(Limits {
        // Several reads per body.
        chunk_size: 64 * 1024,
        ..Limits::default()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (taken_tx, taken) = std::sync::mpsc::channel::<()>();
    // The pool's only thread, taken until the end of the test.
    let blocker = rt.spawn_blocking(move || {
        let _ = taken_tx.send(());
        let _ = held.recv();
    });
    taken.recv().expect("the blocking thread started");
    let result = rt.block_on(async {
        let srv = Server::start(Arc::clone(&files)).await;
        let raw = tokio::time::timeout(
            Duration::from_secs(5),
            raw_exchange(
                srv.addr,
                b"GET /1k.bin HTTP/1.1\r\nHost: t\r\n\r\nGET /big.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=1000-\r\nConnection: close\r\n\r\n",
            ),
        )
        .await;
        srv.stop().await;
        raw
    });
    let _ = release.send(());
    let _ = rt.block_on(blocker);
    let raw = result.expect("answered while the blocking pool was busy");
    let rs = parse_responses(&raw, &[false, false]);
    assert_eq!(rs.len(), 2);
    assert!(rs[0].status == 200 && rs[0].body == site.small);
    assert!(rs[1].status == 206 && rs[1].body == site.big[1000..]);
}

#[test]
fn root_must_be_a_readable_directory() {
    let tmp = TempDir::new();
    let missing = StaticFiles::new(tmp.0.join("missing"));
    assert!(
        matches!(missing, Err(ServeError::Root { .. })),
        "{missing:?}"
    );
    let file = tmp.0.join("f");
    std::fs::write(&file, b"x").expect("write");
    let not_dir = StaticFiles::new(&file);
    assert!(
        matches!(not_dir, Err(ServeError::RootNotDirectory { .. })),
        "{not_dir:?}"
    );
    let ok = StaticFiles::new(&tmp.0).expect("dir");
    assert!(ok.root().is_absolute());
    let bad = ok.with_limits(Limits {
        chunk_size: 0,
        ..Limits::default()
    });
    assert!(matches!(bad, Err(ServeError::InvalidLimits(_))));
}
