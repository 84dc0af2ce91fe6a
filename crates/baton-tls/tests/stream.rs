//! [`TlsStream`] end to end: a live TCP session handed from a rustls server (the "front")
//! to a `TlsStream` (the "back-end") while a blocking rustls client keeps talking; and
//! behaviour on a tiny in-memory pipe (back-pressure, errors, end of file).

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use baton_tls::{alert, Direction, RecordLayer, SessionState, Suite, TlsError, TlsStream, Version};
use bytes::{Bytes, BytesMut};
use common::{SERVER_NAME, SUITES, VERSIONS};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const LIMIT: Duration = Duration::from_secs(30);

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_add(salt))
        .collect()
}

/// The front-end's part: handshake and request head with rustls on a blocking socket, then
/// the secrets. Returns the socket, the state and the plaintext rustls decrypted.
fn front(
    listener: std::net::TcpListener,
    cfg: &common::Configs,
    version: Version,
) -> (std::net::TcpStream, SessionState, Vec<u8>) {
    let (mut tcp, _) = listener.accept().expect("accept");
    let mut conn = ServerConnection::new(cfg.server.clone()).expect("server");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        conn.complete_io(&mut tcp).expect("handshake and head");
        loop {
            match conn.reader().read(&mut buf) {
                Ok(0) => panic!("client closed early"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("front read: {e}"),
            }
        }
    }
    while conn.wants_write() {
        conn.write_tls(&mut tcp).expect("flush before handoff");
    }
    let state = common::extract(conn, version, &cfg.log);
    (tcp, state, got)
}

async fn hand_off_a_live_tcp_session(version: Version, suite: Suite) {
    const BODY: usize = 300 * 1024;
    const RESPONSE: usize = 1 << 20;
    let cfg = common::configs(version, suite);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (go, wait) = std::sync::mpsc::channel::<()>();

    let client_cfg = cfg.client.clone();
    let client = std::thread::spawn(move || {
        let tcp = std::net::TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(LIMIT)).expect("timeout");
        let conn =
            ClientConnection::new(client_cfg, ServerName::try_from(SERVER_NAME).expect("name"))
                .expect("client");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let head = format!(
            "POST /upload HTTP/1.1\r\nhost: {SERVER_NAME}\r\ncontent-length: {BODY}\r\n\r\n"
        );
        tls.write_all(head.as_bytes()).expect("head");
        tls.flush().expect("flush");
        // The body follows once the back-end has the connection (in Baton the restore puts
        // unread ciphertext back; this test has no restore, so it waits).
        wait.recv().expect("handed off");
        if version == Version::Tls13 {
            tls.conn.refresh_traffic_keys().expect("1.3");
        }
        tls.write_all(&pattern(BODY, 1)).expect("body");
        tls.flush().expect("flush");
        let mut response = Vec::new();
        tls.read_to_end(&mut response)
            .expect("response up to close_notify");
        tls.conn.send_close_notify();
        tls.flush().expect("close");
        response
    });

    let (tcp, state, prefix) = tokio::task::spawn_blocking(move || front(listener, &cfg, version))
        .await
        .expect("front");
    tcp.set_nonblocking(true).expect("nonblocking");
    let io = tokio::net::TcpStream::from_std(tcp).expect("tokio socket");
    let layer = RecordLayer::new(&state).expect("valid state");
    let mut stream = TlsStream::new(io, layer, Bytes::from(prefix));
    go.send(()).expect("client waits");

    // Read the whole request: the prefix first, then the body from the socket.
    let mut request = Vec::new();
    let mut buf = vec![0u8; 8192];
    let head_end = loop {
        let n = stream.read(&mut buf).await.expect("read");
        assert!(n > 0, "request ended early");
        request.extend_from_slice(&buf[..n]);
        if let Some(p) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    while request.len() < head_end + BODY {
        let n = stream.read(&mut buf).await.expect("read");
        assert!(n > 0, "body ended early");
        request.extend_from_slice(&buf[..n]);
    }
    assert!(request.starts_with(b"POST /upload HTTP/1.1\r\n"));
    assert!(request[head_end..] == pattern(BODY, 1)[..], "body differs");

    let mut response =
        format!("HTTP/1.1 200 OK\r\ncontent-length: {RESPONSE}\r\n\r\n").into_bytes();
    stream.write_all(&response).await.expect("head");
    let body = pattern(RESPONSE, 2);
    for chunk in body.chunks(64 * 1024 + 17) {
        stream.write_all(chunk).await.expect("body");
    }
    stream.shutdown().await.expect("close_notify");
    response.extend_from_slice(&body);

    // The client closes too: end of file.
    let n = stream.read(&mut buf).await.expect("read after close");
    assert_eq!(n, 0);
    assert!(stream.layer().peer_closed());
    if version == Version::Tls13 {
        assert_eq!(stream.layer().key_updates().rx, 1);
        assert_eq!(stream.layer().key_updates().tx, 1);
    }
    let got = client.join().expect("client thread");
    assert_eq!(got.len(), response.len());
    assert!(got == response, "response differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hands_off_live_tcp_sessions_in_every_mode() {
    for version in VERSIONS {
        for suite in SUITES {
            tokio::time::timeout(LIMIT, hand_off_a_live_tcp_session(version, suite))
                .await
                .expect("in time");
        }
    }
}

/// A TLS 1.2 state with made-up keys, and its mirror for the peer.
fn made_up(suite: Suite) -> (SessionState, SessionState) {
    let d = |fill: u8, seq| Direction {
        key: vec![fill; suite.key_len()],
        iv: [fill ^ 0x5a; 12],
        seq,
        secret: Vec::new(),
    };
    let server = SessionState {
        version: Version::Tls12,
        suite,
        rx: d(1, 10),
        tx: d(2, 20),
    };
    let client = SessionState {
        version: Version::Tls12,
        suite,
        rx: d(2, 20),
        tx: d(1, 10),
    };
    (server, client)
}

/// The peer's side on the pipe: reads records until the back-end's close_notify, slowly
/// (4 KiB at a time), then closes too.
async fn peer_reads_all(io: &mut DuplexStream, layer: &mut RecordLayer) -> Vec<u8> {
    let mut input = BytesMut::new();
    let mut plain = BytesMut::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await.expect("pipe");
        assert!(n > 0, "back-end closed the pipe without close_notify");
        input.extend_from_slice(&chunk[..n]);
        let st = layer.read(&mut input, &mut plain).expect("authentic");
        if st.peer_closed {
            break;
        }
    }
    let mut out = BytesMut::new();
    layer.close_notify(&mut out);
    io.write_all(&out).await.expect("pipe");
    plain.to_vec()
}

#[tokio::test]
async fn back_pressure_on_a_tiny_pipe() {
    let (state, mirror) = made_up(Suite::Aes256Gcm);
    let (a, mut b) = tokio::io::duplex(4096);
    let mut stream = TlsStream::new(
        a,
        RecordLayer::new(&state).expect("valid"),
        Bytes::from_static(b"prefix:"),
    );
    let peer = tokio::spawn(async move {
        let mut layer = RecordLayer::new(&mirror).expect("valid");
        let mut out = BytesMut::new();
        layer.write(b"hello", &mut out).expect("seals");
        b.write_all(&out).await.expect("pipe");
        peer_reads_all(&mut b, &mut layer).await
    });
    let work = async {
        let mut got = vec![0u8; 12];
        stream.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"prefix:hello");
        let body = pattern(3 << 20, 7);
        stream.write_all(&body).await.expect("write");
        stream.flush().await.expect("flush");
        stream.shutdown().await.expect("shutdown");
        assert_eq!(stream.read(&mut got).await.expect("eof"), 0);
        let sent = peer.await.expect("peer");
        assert!(sent == body, "data differs");
    };
    tokio::time::timeout(LIMIT, work).await.expect("no hang");
    let mut out = [0u8; 1];
    assert_eq!(
        stream.write(&out).await.expect_err("closed").kind(),
        std::io::ErrorKind::BrokenPipe
    );
    assert_eq!(stream.read(&mut out).await.expect("still eof"), 0);
}

#[tokio::test]
async fn a_bad_record_is_an_error_and_answered_with_an_alert() {
    for suite in SUITES {
        let (state, mirror) = made_up(suite);
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut stream = TlsStream::new(a, RecordLayer::new(&state).expect("valid"), Bytes::new());
        let mut peer = RecordLayer::new(&mirror).expect("valid");
        let mut out = BytesMut::new();
        peer.write(b"tampered", &mut out).expect("seals");
        let last = out.len() - 1;
        out[last] ^= 1;
        b.write_all(&out).await.expect("pipe");
        let mut buf = [0u8; 64];
        let err = stream.read(&mut buf).await.expect_err("bad mac");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        let inner = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<TlsError>())
            .expect("a TlsError inside");
        assert_eq!(inner, &TlsError::BadRecordMac);
        // The alert went out.
        let mut wire = vec![0u8; 64];
        let n = b.read(&mut wire).await.expect("alert");
        let mut input = BytesMut::from(&wire[..n]);
        assert_eq!(
            peer.read(&mut input, &mut BytesMut::new()),
            Err(TlsError::PeerAlert(alert::BAD_RECORD_MAC))
        );
        // And the stream stays failed.
        assert!(stream.read(&mut buf).await.is_err());
    }
}

#[tokio::test]
async fn end_of_file_without_close_notify() {
    let (state, mirror) = made_up(Suite::Chacha20Poly1305);
    // Between records: end of file.
    let (a, mut b) = tokio::io::duplex(1 << 16);
    let mut stream = TlsStream::new(a, RecordLayer::new(&state).expect("valid"), Bytes::new());
    let mut peer = RecordLayer::new(&mirror).expect("valid");
    let mut out = BytesMut::new();
    peer.write(b"abc", &mut out).expect("seals");
    b.write_all(&out).await.expect("pipe");
    drop(b);
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.expect("clean end");
    assert_eq!(got, b"abc");
    assert!(!stream.layer().peer_closed());

    // Inside a record: UnexpectedEof.
    let (a, mut b) = tokio::io::duplex(1 << 16);
    let mut stream = TlsStream::new(a, RecordLayer::new(&state).expect("valid"), Bytes::new());
    let mut peer = RecordLayer::new(&mirror).expect("valid");
    let mut out = BytesMut::new();
    peer.write(b"abc", &mut out).expect("seals");
    b.write_all(&out[..out.len() - 1]).await.expect("pipe");
    drop(b);
    let mut buf = [0u8; 8];
    let err = stream.read(&mut buf).await.expect_err("truncated");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
}

/// Rough sealing and opening speed (not a benchmark suite; run by hand):
/// `cargo test -p baton-tls --release --test stream -- --ignored --nocapture throughput`.
#[test]
#[ignore = "prints throughput; run by hand"]
fn throughput() {
    for suite in SUITES {
        let (state, mirror) = made_up(suite);
        let mut server = RecordLayer::new(&state).expect("valid");
        let mut client = RecordLayer::new(&mirror).expect("valid");
        let chunk = pattern(64 * 1024, 3);
        let mut wire = BytesMut::new();
        let mut plain = BytesMut::new();
        let total = 256 << 20;
        let start = std::time::Instant::now();
        let mut seal = Duration::ZERO;
        for _ in 0..total / chunk.len() {
            let t = std::time::Instant::now();
            server.write(&chunk, &mut wire).expect("seals");
            seal += t.elapsed();
            client.read(&mut wire, &mut plain).expect("opens");
            plain.clear();
        }
        let all = start.elapsed();
        let mib = (total >> 20) as f64;
        println!(
            "{suite:?}: seal {:.0} MiB/s, open {:.0} MiB/s",
            mib / seal.as_secs_f64(),
            mib / (all - seal).as_secs_f64()
        );
    }
}
