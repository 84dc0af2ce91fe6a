//! baton-tls: a TLS session that moves from the front-end to a back-end.
//!
//! Layer: pure protocol code (no sockets) plus one tokio stream adapter. The front-end
//! terminates TLS with rustls, reads the request, extracts the session's secrets and sends them
//! in the `Handoff` frame, encoded by [`SessionState::encode`]. The back-end decodes them and
//! continues the same session with [`RecordLayer`] (userspace AEAD), so the response never
//! crosses the front-end and is encrypted where it is served.
//!
//! Pieces:
//! - [`SessionState`]: version, suite, and per direction key, IV, next sequence number and
//!   (TLS 1.3) traffic secret; [`Direction::tls13`] derives key and IV from a secret.
//! - [`RecordLayer`]: sans-IO record protection for the server side of the session, with
//!   TLS 1.3 KeyUpdate, alerts and the AEAD limits (see its module docs for the formats).
//! - [`TlsStream`]: the record layer on a tokio socket, `AsyncRead + AsyncWrite`, for hyper.
//!
//! The front fills [`SessionState`] from rustls: with `ServerConfig::enable_secret_extraction`,
//! after writing out everything rustls still has to send (its TLS 1.3 session tickets), it
//! calls `ServerConnection::dangerous_extract_secrets()`: `rx`/`tx` give the sequence numbers,
//! keys and IVs (for TLS 1.2 AES-GCM the 12-byte IV is salt || explicit nonce base, used as is),
//! and for TLS 1.3 the traffic secrets come from the `KeyLog` labels
//! `CLIENT_TRAFFIC_SECRET_0` (rx) and `SERVER_TRAFFIC_SECRET_0` (tx).
//!
//! Invariants:
//! - Key material lives in [`zeroize::Zeroizing`] buffers and is wiped when dropped.
//! - Nothing here panics on input from the network or the control channel: every length is
//!   checked, every failure is a [`TlsError`].

mod carried;
mod record;
mod state;
mod stream;

pub use carried::Carried;
pub use record::{
    KeyUpdates, ReadStatus, RecordLayer, AES_GCM_RECORD_LIMIT, HEADER_LEN, MAX_PLAINTEXT,
    TLS13_AES_GCM_REKEY_AT,
};
pub use state::{alert, Direction, SecretBytes, SessionState, Suite, TlsError, Version};
pub use stream::TlsStream;
