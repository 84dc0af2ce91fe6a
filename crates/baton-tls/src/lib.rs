//! baton-tls: a TLS session that moves from the front-end to a back-end.
//!
//! Layer: pure protocol code (no sockets) plus one tokio stream adapter. The front-end
//! terminates TLS with rustls, reads the request, extracts the session's secrets and sends them
//! in the `Handoff` frame, encoded by [`SessionState::encode`]. The back-end decodes them and
//! continues the same session with [`RecordLayer`] (userspace AEAD), so the response never
//! crosses the front-end and is encrypted where it is served.
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
