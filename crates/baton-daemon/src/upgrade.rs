//! The listening socket's handover from a running front to its successor
//! (`baton front --takeover`): an upgrade, or a planned restart, that
//! refuses no connection. The socket itself changes hands, so connections
//! the kernel accepted meanwhile wait in its queue instead of being refused.
//!
//! ```text
//!  successor                               running front
//!  connect(upgrade_socket) ──────────────▶ accept; peer must be the same user
//!  "baton-takeover 1\n"    ──────────────▶ stop accepting; let the handoffs
//!                                          in progress finish; close the
//!                                          control channels, stop reading
//!                                          the parked ring; unlink the path
//!                          ◀────────────── "ok\n" + the listener (SCM_RIGHTS)
//!  attach the forwarder (the pinned link    relayed connections finish (up to
//!  now runs the new program), adopt the    drain_timeout_ms), then exit
//!  pinned flows, bind the path, connect
//!  the channels, accept
//! ```
//!
//! Anything else on the socket is refused with a line saying why; the
//! running front goes on serving.

use std::io::{self, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tracing::warn;

/// What a running front says first to whoever connects: proof that it
/// lives (a dying front's socket may still take connections for a moment).
const GREETING: &[u8] = b"baton-front 1\n";
/// How long [`probe`] waits for the greeting.
const GREETING_TIMEOUT: Duration = Duration::from_secs(2);
/// What a successor sends first.
const REQUEST: &[u8] = b"baton-takeover 1\n";
/// The running front's answer that carries the listener.
const GRANTED: &[u8] = b"ok\n";
/// What the successor says once it accepts on the listener; until then the
/// running front keeps its copy and serves again if the successor fails.
pub const SERVING: &[u8] = b"serving\n";
/// The longest line either side reads.
const MAX_LINE: usize = 256;
/// Listeners handed over: plain HTTP, and HTTPS if configured.
const MAX_LISTENERS: usize = 2;
/// A peer must send its request within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to the front running on `path`, if one answers there (it
/// greets within 2 s). A file left by a killed front (nobody listening, or
/// a process still exiting that never greets) counts as none.
pub fn probe(path: &Path) -> Result<Option<UnixStream>> {
    match UnixStream::connect(path) {
        Ok(mut s) => {
            use std::io::Read;
            s.set_read_timeout(Some(GREETING_TIMEOUT))?;
            let mut got = [0u8; GREETING.len()];
            match s.read_exact(&mut got) {
                Ok(()) if got == GREETING => Ok(Some(s)),
                _ => Ok(None),
            }
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("connecting to {}", path.display())),
    }
}

/// How long a successor waits for the listener of a front configured with
/// these limits: the predecessor's own bound plus a margin.
pub fn takeover_wait(head_timeout: Duration, handoff_timeout: Duration) -> Duration {
    head_timeout
        .saturating_add(handoff_timeout)
        .saturating_add(Duration::from_secs(5))
}

/// How long a running front waits for its successor's [`SERVING`]: the
/// successor loads its forwarder, adopts the flows and waits up to
/// `connect_timeout` for its channels.
pub fn serving_wait(connect_timeout: Duration) -> Duration {
    connect_timeout.saturating_add(Duration::from_secs(10))
}

/// The successor's side: asks the front on `stream` for its listener and
/// waits (up to `wait`) while it lets its handoffs in progress finish.
/// Call before attaching anything: the predecessor stops changing the
/// pinned flow table only once it answers. Returns the listener and the
/// stream on which to send [`SERVING`] once accepting on it (dropping the
/// stream without it makes the predecessor serve again).
pub fn take_over(mut stream: UnixStream, wait: Duration) -> Result<(Vec<OwnedFd>, UnixStream)> {
    stream
        .write_all(REQUEST)
        .context("asking the running front to hand over")?;
    stream.set_read_timeout(Some(wait))?;
    let mut buf = [0u8; MAX_LINE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)
    .context("waiting for the running front's listener")?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    let line = buf.get(..got.bytes).unwrap_or_default();
    if line != GRANTED {
        let text = String::from_utf8_lossy(line);
        bail!("the running front refused the takeover: {}", text.trim());
    }
    if fds.is_empty() || fds.len() > MAX_LISTENERS {
        return Err(anyhow!(
            "the running front's answer carried {} listeners (1 to {MAX_LISTENERS} expected)",
            fds.len()
        ));
    }
    Ok((fds, stream))
}

/// The running front's side: the socket successors connect to.
#[derive(Debug)]
pub struct Server {
    listener: tokio::net::UnixListener,
    path: PathBuf,
    /// Our file at `path` (device, inode): never unlink a successor's.
    id: (u64, u64),
}

/// A successor that asked for the listener.
#[derive(Debug)]
pub struct Successor {
    stream: UnixStream,
}

impl Server {
    /// Binds `path` (mode 0600), replacing a file no front answers on.
    /// Call after [`probe`] found no running front.
    pub fn bind(path: &Path) -> Result<Server> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                std::fs::remove_file(path)
                    .with_context(|| format!("removing the stale {}", path.display()))?;
            }
            Ok(_) => bail!(
                "{} exists and is not a socket: not removing it (choose another upgrade_socket)",
                path.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
        }
        let listener = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("binding {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
        let m = std::fs::symlink_metadata(path)?;
        Ok(Server {
            listener,
            path: path.to_owned(),
            id: (m.dev(), m.ino()),
        })
    }

    /// The next peer that asks for the listener properly; others are told
    /// why not and dropped. Not cancel-safe (a peer being vetted would be
    /// dropped): run it in a task of its own.
    pub async fn next(&self) -> Successor {
        loop {
            let stream = match self.listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "upgrade socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, Self::vet(stream)).await {
                Ok(Ok(s)) => return s,
                Ok(Err(e)) => warn!(error = %format!("{e:#}"), "takeover request refused"),
                Err(_) => warn!("takeover request refused: nothing asked within 2 s"),
            }
        }
    }

    async fn vet(mut stream: tokio::net::UnixStream) -> Result<Successor> {
        use tokio::io::AsyncReadExt;
        let cred = rustix::net::sockopt::socket_peercred(&stream).map_err(io::Error::from)?;
        let me = rustix::process::geteuid();
        {
            use tokio::io::AsyncWriteExt;
            stream.write_all(GREETING).await?;
        }
        let mut line = Vec::with_capacity(REQUEST.len());
        if cred.uid == me || cred.uid.is_root() {
            let mut byte = [0u8; 1];
            while line.len() < REQUEST.len() {
                if stream.read(&mut byte).await? == 0 {
                    break;
                }
                line.push(byte[0]);
                if byte[0] == b'\n' {
                    break;
                }
            }
        }
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        let mut successor = Successor { stream };
        if cred.uid != me && !cred.uid.is_root() {
            successor.refuse(&format!(
                "uid {} may not take over a front of uid {}",
                cred.uid.as_raw(),
                me.as_raw()
            ));
            bail!(
                "pid {} of uid {} is not the same user",
                cred.pid.as_raw_nonzero(),
                cred.uid.as_raw()
            );
        }
        if line != REQUEST {
            successor.refuse("not a takeover request of this version");
            bail!(
                "pid {} sent {:?}",
                cred.pid.as_raw_nonzero(),
                String::from_utf8_lossy(&line)
            );
        }
        Ok(successor)
    }

    /// Removes the path if it is still ours (a successor binds it next).
    pub fn unlink(&self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.unlink();
    }
}

/// A successor that holds a copy of the listener.
#[derive(Debug)]
pub struct Handed {
    stream: UnixStream,
}

impl Handed {
    /// Blocks until the successor says it serves (`Ok`), or fails: it
    /// closed the stream (it exited), sent something else, or `wait` passed.
    pub fn wait_serving(mut self, wait: Duration) -> io::Result<()> {
        use std::io::Read;
        self.stream.set_read_timeout(Some(wait))?;
        let mut got = Vec::with_capacity(SERVING.len());
        let mut byte = [0u8; 1];
        while got.len() < SERVING.len() {
            if self.stream.read(&mut byte)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the successor exited before serving",
                ));
            }
            got.push(byte[0]);
        }
        if got == SERVING {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the successor sent something else than `serving`",
            ))
        }
    }
}

impl Successor {
    /// Sends `listener` over (a copy: the caller keeps its own until the
    /// successor says it serves, see [`Handed::wait_serving`]).
    pub fn hand_over(self, listeners: &[BorrowedFd<'_>]) -> io::Result<Handed> {
        if listeners.is_empty() || listeners.len() > MAX_LISTENERS {
            return Err(io::Error::other("1 or 2 listeners are handed over"));
        }
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(listeners)) {
            return Err(io::Error::other("no room for the descriptor"));
        }
        rustix::net::sendmsg(
            self.stream.as_fd(),
            &[IoSlice::new(GRANTED)],
            &mut control,
            SendFlags::NOSIGNAL,
        )?;
        Ok(Handed {
            stream: self.stream,
        })
    }

    /// Tells the peer why not, and closes without a reset: what it sent
    /// beyond the request line is read and discarded first (bounded).
    pub fn refuse(&mut self, why: &str) {
        use std::io::Read;
        let mut line = format!("no: {why}");
        line.truncate(MAX_LINE - 1);
        line.push('\n');
        let _ = self.stream.write_all(line.as_bytes());
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        let _ = self
            .stream
            .set_read_timeout(Some(Duration::from_millis(100)));
        let mut sink = [0u8; 4096];
        let _ = self.stream.read(&mut sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;

    #[tokio::test]
    async fn a_listener_changes_hands_and_keeps_its_queue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("front.sock");
        assert!(probe(&path).expect("probe").is_none(), "nobody yet");
        let server = Server::bind(&path).expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let tcp = TcpListener::bind("127.0.0.1:0").expect("tcp");
        let addr = tcp.local_addr().expect("addr");
        // A client the kernel accepts before the handover.
        let mut early = std::net::TcpStream::connect(addr).expect("connect");
        early.write_all(b"hello").expect("write");

        let at = path.clone();
        let successor = tokio::task::spawn_blocking(move || {
            let stream = probe(&at).expect("probe").expect("a front answers");
            take_over(stream, Duration::from_secs(5))
        });
        let peer = server.next().await;
        let handed = peer.hand_over(&[tcp.as_fd()]).expect("hand over");
        server.unlink();
        let (mut fds, mut ack) = successor.await.expect("join").expect("took over");
        assert_eq!(fds.len(), 1);
        let fd = fds.remove(0);
        ack.write_all(SERVING).expect("serving");
        handed
            .wait_serving(Duration::from_secs(5))
            .expect("the successor said it serves");
        drop(tcp);
        let taken = TcpListener::from(fd);
        assert_eq!(taken.local_addr().expect("addr"), addr);
        let (mut conn, _) = taken.accept().expect("the queued connection is there");
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"hello");
        assert!(taken.as_raw_fd() >= 0);
        assert!(!path.exists(), "the old front's path is gone");
    }

    #[tokio::test]
    async fn a_bad_request_is_refused_and_the_server_keeps_going() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("front.sock");
        let server = Server::bind(&path).expect("bind");
        let mut bad = UnixStream::connect(&path).expect("connect");
        bad.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
        let tcp = TcpListener::bind("127.0.0.1:0").expect("tcp");
        let at = path.clone();
        let successor = tokio::task::spawn_blocking(move || {
            let good = probe(&at).expect("probe").expect("a front answers");
            take_over(good, Duration::from_secs(5))
        });
        let peer = server.next().await;
        let _handed = peer.hand_over(&[tcp.as_fd()]).expect("hand over");
        successor
            .await
            .expect("join")
            .expect("the good one took over");
        let mut answer = String::new();
        bad.read_to_string(&mut answer).expect("read");
        // The greeting, then why not.
        assert_eq!(answer.lines().next(), Some("baton-front 1"), "{answer:?}");
        assert!(
            answer.lines().nth(1).is_some_and(|l| l.starts_with("no: ")),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn a_successor_that_exits_before_serving_is_noticed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("front.sock");
        let server = Server::bind(&path).expect("bind");
        let tcp = TcpListener::bind("127.0.0.1:0").expect("tcp");
        let at = path.clone();
        let successor = tokio::task::spawn_blocking(move || {
            let stream = probe(&at).expect("probe").expect("a front answers");
            take_over(stream, Duration::from_secs(5))
        });
        let handed = server
            .next()
            .await
            .hand_over(&[tcp.as_fd()])
            .expect("hand over");
        // The successor took the listener and died before serving.
        drop(successor.await.expect("join").expect("took over"));
        let err = handed
            .wait_serving(Duration::from_secs(5))
            .expect_err("it never served");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        // The running front still has its listener.
        assert!(tcp.local_addr().is_ok());
    }

    #[test]
    fn a_socket_that_never_greets_is_no_running_front() {
        // A front that is still exiting: its socket takes the connection
        // into its queue, but nobody accepts.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("front.sock");
        let _dying = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        assert!(probe(&path).expect("probe").is_none());
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("front.sock");
        std::fs::write(&path, b"precious").expect("write");
        let err = Server::bind(&path).expect_err("not a socket");
        assert!(format!("{err:#}").contains("not a socket"), "{err:#}");
        assert_eq!(std::fs::read(&path).expect("read"), b"precious");
    }
}
