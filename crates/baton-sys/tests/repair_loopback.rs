//! Dump a live server-side socket and restore it as a new socket on the same
//! host (loopback, root): the client must not notice.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, FromRawFd, IntoRawFd};
use std::time::Duration;

use baton_sys::repair;

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("test uses IPv4"),
    }
}

#[test]
fn dump_close_restore_keeps_the_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();

    // Some bytes the server consumed, some it did not.
    client
        .write_all(b"GET / HTTP/1.1\r\n\r\nGET /second HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 18];
    server.read_exact(&mut head).unwrap();
    // Wait until the rest is in the server's receive queue.
    let mut peek = [0u8; 64];
    let mut waited = 0;
    while server.peek(&mut peek).unwrap() < 23 {
        waited += 1;
        assert!(waited < 1000, "pipelined bytes never arrived");
        std::thread::yield_now();
    }

    let local = v4(server.local_addr().unwrap());
    let peer = v4(server.peer_addr().unwrap());
    let dumped = repair::dump(server.as_fd()).unwrap();
    assert_eq!(dumped.unread, b"GET /second HTTP/1.1\r\n\r\n");
    assert!(dumped.state.mss > 0);
    // Loopback negotiates timestamps, SACK and window scaling.
    assert!(dumped.state.timestamps_ok && dumped.state.sack_ok && dumped.state.wscale_ok);

    // Closing in repair mode sends nothing: the client sees no FIN/RST.
    drop(server);

    let mut data = head.to_vec();
    data.extend_from_slice(&dumped.unread);
    let fd = repair::restore(
        &dumped.state,
        local,
        peer,
        &data,
        &dumped.sent,
        Duration::from_millis(5),
    )
    .unwrap();
    repair::go_live(fd.as_fd()).unwrap();
    // SAFETY-free conversion: the fd is a connected TCP socket we own.
    let mut restored = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };

    let mut all = vec![0u8; data.len()];
    restored.read_exact(&mut all).unwrap();
    assert_eq!(
        all, data,
        "the restored socket must see every byte the client sent"
    );

    restored
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .unwrap();
    let mut resp = [0u8; 40];
    client.read_exact(&mut resp).unwrap();
    assert_eq!(&resp, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");

    // And the client can keep talking to the restored socket.
    client.write_all(b"more").unwrap();
    let mut more = [0u8; 4];
    restored.read_exact(&mut more).unwrap();
    assert_eq!(&more, b"more");
}

#[test]
fn restore_rejects_a_non_local_address() {
    let state = baton_proto::TcpState {
        mss: 1460,
        ..Default::default()
    };
    let err = repair::restore(
        &state,
        "198.19.255.254:80".parse().unwrap(),
        "127.0.0.1:1".parse().unwrap(),
        b"",
        b"",
        Duration::ZERO,
    )
    .unwrap_err();
    assert_eq!(err.call, "bind(VIP)");
}

#[test]
fn a_half_closed_connection_is_not_dumped_and_stays_usable() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    // The FIN has arrived once the server reads end-of-stream (CLOSE_WAIT).
    let mut got = Vec::new();
    server.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");

    let err = repair::dump(server.as_fd()).unwrap_err();
    assert_eq!(err.call, "getsockopt(TCP_INFO)", "{err}");

    // Out of repair mode again: the front can still answer on it itself.
    server
        .write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
        .unwrap();
    drop(server);
    let mut resp = Vec::new();
    client.read_to_end(&mut resp).unwrap();
    assert_eq!(resp, b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
}

/// Bytes the server wrote that the client has not acknowledged yet (here:
/// not even received, the client's window is full) move with the
/// connection: the client reads every byte once, in order, and nothing else.
#[test]
fn the_send_queue_moves_with_the_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    // A small receive buffer: the server's writes back up into its send queue.
    socket2::SockRef::from(&client)
        .set_recv_buffer_size(4096)
        .unwrap();
    let (mut server, _) = listener.accept().unwrap();
    // And a small send buffer: the queue stays under what a handoff carries.
    socket2::SockRef::from(&server)
        .set_send_buffer_size(32 << 10)
        .unwrap();
    server.set_nonblocking(true).unwrap();
    let pattern = |i: usize| (i % 251) as u8;
    let mut written = 0usize;
    let chunk: Vec<u8> = (0..1024).map(pattern).collect();
    // Write until the kernel refuses (window and send buffer full), bounded.
    while written < 8 << 20 {
        let at = written % chunk.len();
        match server.write(&chunk[at..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("write: {e}"),
        }
    }
    let local = v4(server.local_addr().unwrap());
    let peer = v4(server.peer_addr().unwrap());
    let dumped = repair::dump(server.as_fd()).unwrap();
    assert!(!dumped.sent.is_empty(), "the send queue should hold bytes");
    assert!(dumped.sent.len() <= written);
    // The send queue is the tail of what was written.
    let first = written - dumped.sent.len();
    assert!(dumped
        .sent
        .iter()
        .enumerate()
        .all(|(k, &b)| b == pattern((first + k) % 1024)));
    drop(server);

    let fd = repair::restore(
        &dumped.state,
        local,
        peer,
        &[],
        &dumped.sent,
        Duration::from_millis(5),
    )
    .unwrap();
    repair::go_live(fd.as_fd()).unwrap();
    // SAFETY-free conversion: the fd is a connected TCP socket we own.
    let mut restored = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    restored.write_all(b"END").unwrap();

    let mut client = client;
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = vec![0u8; written + 3];
    client.read_exact(&mut got).unwrap();
    assert!(got[..written]
        .iter()
        .enumerate()
        .all(|(k, &b)| b == pattern(k % 1024)));
    assert_eq!(&got[written..], b"END");
}
