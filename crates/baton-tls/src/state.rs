//! The session state carried in a handoff, and its encoding.
//!
//! ```text
//! u8  version        (0x03 = TLS 1.2, 0x04 = TLS 1.3)
//! u8  suite          (1 = AES-128-GCM, 2 = AES-256-GCM, 3 = ChaCha20-Poly1305)
//! rx  direction      client to server (what the back-end decrypts)
//! tx  direction      server to client (what the back-end encrypts)
//!
//! direction:
//!   u8  key length, key
//!   [u8; 12] iv      (TLS 1.2 GCM: 4-byte salt, then the 8 bytes the sender's explicit
//!                     nonces start from; ChaCha20-Poly1305 and TLS 1.3: the full IV)
//!   u64 seq          sequence number of the next record in this direction
//!   u8  secret length, secret (TLS 1.3 traffic secret for KeyUpdate; 0 for TLS 1.2)
//! ```

use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Errors of this crate.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TlsError {
    /// The encoded state is malformed.
    #[error("TLS session state: {0}")]
    BadState(&'static str),
    /// A record failed to decrypt or authenticate (`bad_record_mac`).
    #[error("a TLS record failed to authenticate")]
    BadRecordMac,
    /// The peer broke the protocol; the string says how.
    #[error("TLS protocol violation: {0}")]
    Protocol(&'static str),
    /// The peer sent a fatal alert (its description code).
    #[error("the peer sent TLS alert {0}")]
    PeerAlert(u8),
    /// A sequence number would wrap or the AEAD limit is reached and no key update is possible.
    #[error("TLS record sequence limit reached")]
    SequenceLimit,
    /// A record longer than the protocol allows (`record_overflow`).
    #[error("TLS record too long")]
    RecordOverflow,
    /// A message that does not parse (`decode_error`); the string says which.
    #[error("malformed TLS message: {0}")]
    Decode(&'static str),
    /// A message with a field value the protocol forbids (`illegal_parameter`).
    #[error("illegal TLS parameter: {0}")]
    IllegalParameter(&'static str),
    /// The operation needs something this session does not have (e.g. KeyUpdate on TLS 1.2).
    #[error("not supported by this TLS session: {0}")]
    Unsupported(&'static str),
    /// We already sent close_notify or a fatal alert: nothing more may be sent.
    #[error("the TLS session is closed for sending")]
    Closed,
}

/// TLS alert descriptions this crate sends or reacts to (RFC 8446 section 6).
pub mod alert {
    /// Orderly end of the sender's data.
    pub const CLOSE_NOTIFY: u8 = 0;
    /// A message that does not belong here.
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    /// A record failed to authenticate.
    pub const BAD_RECORD_MAC: u8 = 20;
    /// A record longer than allowed.
    pub const RECORD_OVERFLOW: u8 = 22;
    /// A field with a forbidden value.
    pub const ILLEGAL_PARAMETER: u8 = 47;
    /// A message that does not parse.
    pub const DECODE_ERROR: u8 = 50;
    /// A local failure unrelated to the peer.
    pub const INTERNAL_ERROR: u8 = 80;
    /// The peer's user cancelled (a warning, usually followed by close_notify).
    pub const USER_CANCELED: u8 = 90;
    /// TLS 1.2: we refuse a renegotiation (sent as a warning).
    pub const NO_RENEGOTIATION: u8 = 100;
}

impl TlsError {
    /// The fatal alert to send the peer for this error, if one is due. Errors the peer caused by
    /// alerting us, local misuse and an already closed session send nothing.
    pub fn alert(&self) -> Option<u8> {
        match self {
            TlsError::BadRecordMac => Some(alert::BAD_RECORD_MAC),
            TlsError::Protocol(_) => Some(alert::UNEXPECTED_MESSAGE),
            TlsError::RecordOverflow => Some(alert::RECORD_OVERFLOW),
            TlsError::Decode(_) => Some(alert::DECODE_ERROR),
            TlsError::IllegalParameter(_) => Some(alert::ILLEGAL_PARAMETER),
            TlsError::SequenceLimit => Some(alert::INTERNAL_ERROR),
            TlsError::BadState(_)
            | TlsError::PeerAlert(_)
            | TlsError::Unsupported(_)
            | TlsError::Closed => None,
        }
    }
}

/// Protocol version of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Tls12,
    Tls13,
}

/// AEAD cipher suite of the session (the hash for TLS 1.3 is SHA-384 for AES-256-GCM, SHA-256
/// for the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Suite {
    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Suite::Aes128Gcm => 16,
            Suite::Aes256Gcm | Suite::Chacha20Poly1305 => 32,
        }
    }

    /// Length of the TLS 1.3 traffic secret (the suite's hash length).
    pub fn secret_len(self) -> usize {
        match self {
            Suite::Aes256Gcm => 48,
            Suite::Aes128Gcm | Suite::Chacha20Poly1305 => 32,
        }
    }

    fn code(self) -> u8 {
        match self {
            Suite::Aes128Gcm => 1,
            Suite::Aes256Gcm => 2,
            Suite::Chacha20Poly1305 => 3,
        }
    }

    fn from_code(c: u8) -> Result<Suite, TlsError> {
        Ok(match c {
            1 => Suite::Aes128Gcm,
            2 => Suite::Aes256Gcm,
            3 => Suite::Chacha20Poly1305,
            _ => return Err(TlsError::BadState("unknown cipher suite")),
        })
    }
}

/// Keys of one direction.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Direction {
    pub key: Vec<u8>,
    pub iv: [u8; 12],
    pub seq: u64,
    /// TLS 1.3 traffic secret (for KeyUpdate); empty for TLS 1.2.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direction")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// Everything a back-end needs to continue a TLS session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    pub version: Version,
    pub suite: Suite,
    /// Client to server.
    pub rx: Direction,
    /// Server to client.
    pub tx: Direction,
}

impl SessionState {
    /// Checks that key and secret lengths fit the version and suite.
    pub fn validate(&self) -> Result<(), TlsError> {
        for d in [&self.rx, &self.tx] {
            if d.key.len() != self.suite.key_len() {
                return Err(TlsError::BadState("key length does not fit the suite"));
            }
            let want = match self.version {
                Version::Tls12 => 0,
                Version::Tls13 => self.suite.secret_len(),
            };
            if d.secret.len() != want {
                return Err(TlsError::BadState(
                    "traffic secret length does not fit the version and suite",
                ));
            }
        }
        Ok(())
    }

    /// Appends the encoding to `out` (a buffer the caller zeroizes or sends).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(match self.version {
            Version::Tls12 => 3,
            Version::Tls13 => 4,
        });
        out.push(self.suite.code());
        for d in [&self.rx, &self.tx] {
            out.push(d.key.len() as u8);
            out.extend_from_slice(&d.key);
            out.extend_from_slice(&d.iv);
            out.extend_from_slice(&d.seq.to_be_bytes());
            out.push(d.secret.len() as u8);
            out.extend_from_slice(&d.secret);
        }
    }

    /// Decodes a state from the front of `buf`, returning it and the bytes it used.
    pub fn decode(buf: &[u8]) -> Result<(SessionState, usize), TlsError> {
        let mut r = Cursor { buf, pos: 0 };
        let version = match r.u8()? {
            3 => Version::Tls12,
            4 => Version::Tls13,
            _ => return Err(TlsError::BadState("unknown version")),
        };
        let suite = Suite::from_code(r.u8()?)?;
        let mut dir = || -> Result<Direction, TlsError> {
            let n = r.u8()? as usize;
            let key = r.take(n)?.to_vec();
            let mut iv = [0u8; 12];
            iv.copy_from_slice(r.take(12)?);
            let mut seq = [0u8; 8];
            seq.copy_from_slice(r.take(8)?);
            let n = r.u8()? as usize;
            let secret = r.take(n)?.to_vec();
            Ok(Direction {
                key,
                iv,
                seq: u64::from_be_bytes(seq),
                secret,
            })
        };
        let rx = dir()?;
        let tx = dir()?;
        let s = SessionState {
            version,
            suite,
            rx,
            tx,
        };
        s.validate()?;
        Ok((s, r.pos))
    }
}

/// A buffer for encoded state that is wiped when dropped.
pub type SecretBytes = Zeroizing<Vec<u8>>;

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TlsError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(TlsError::BadState("truncated"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, TlsError> {
        self.take(1).map(|s| s[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(version: Version, suite: Suite) -> SessionState {
        let secret = match version {
            Version::Tls12 => Vec::new(),
            Version::Tls13 => vec![7; suite.secret_len()],
        };
        let d = |seq| Direction {
            key: vec![1; suite.key_len()],
            iv: [2; 12],
            seq,
            secret: secret.clone(),
        };
        SessionState {
            version,
            suite,
            rx: d(3),
            tx: d(5),
        }
    }

    #[test]
    fn round_trips_and_rejects_every_truncation() {
        for v in [Version::Tls12, Version::Tls13] {
            for s in [Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::Chacha20Poly1305] {
                let st = sample(v, s);
                let mut buf = Vec::new();
                st.encode(&mut buf);
                let (back, used) = SessionState::decode(&buf).expect("decodes");
                assert_eq!(back, st);
                assert_eq!(used, buf.len());
                for cut in 0..buf.len() {
                    assert!(SessionState::decode(&buf[..cut]).is_err(), "cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn a_key_of_the_wrong_length_is_refused() {
        let mut st = sample(Version::Tls13, Suite::Aes128Gcm);
        st.tx.key.push(0);
        let mut buf = Vec::new();
        st.encode(&mut buf);
        assert_eq!(
            SessionState::decode(&buf),
            Err(TlsError::BadState("key length does not fit the suite"))
        );
    }
}
