//! What a handoff carries of a TLS connection (the `tls` blob of the `Handoff` frame):
//!
//! ```text
//! session state       (see `SessionState`)
//! u32 length, bytes   application data the front already decrypted and the server must
//!                     read first (the request head, and whatever followed it in its records)
//! ```
//!
//! The ciphertext the front read but did not decrypt travels as TCP data (the restored socket's
//! receive queue), where the back-end reads it like anything else the client sends.

use bytes::Bytes;
use zeroize::Zeroizing;

use crate::state::{SessionState, TlsError};

/// A TLS session in transit from the front-end to a back-end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    pub state: SessionState,
    /// Decrypted application data the server reads before anything else.
    pub plaintext: Bytes,
}

impl Carried {
    /// The encoding, in a buffer wiped when dropped (it holds the session keys).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(160 + self.plaintext.len()));
        self.state.encode(&mut out);
        out.extend_from_slice(&(self.plaintext.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.plaintext);
        out
    }

    /// Decodes a blob made by [`Carried::encode`]; trailing bytes are an error.
    pub fn decode(buf: &[u8]) -> Result<Carried, TlsError> {
        let (state, used) = SessionState::decode(buf)?;
        let rest = buf.get(used..).unwrap_or_default();
        let Some((len, rest)) = rest.split_first_chunk::<4>() else {
            return Err(TlsError::BadState("truncated"));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() != len {
            return Err(TlsError::BadState("plaintext length does not match"));
        }
        Ok(Carried {
            state,
            plaintext: Bytes::copy_from_slice(rest),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Direction, Suite, Version};

    #[test]
    fn round_trips_and_refuses_truncation_and_trailing_bytes() {
        let d = |seq| Direction {
            key: vec![9; 16],
            iv: [1; 12],
            seq,
            secret: vec![2; 32],
        };
        let c = Carried {
            state: SessionState {
                version: Version::Tls13,
                suite: Suite::Aes128Gcm,
                rx: d(1),
                tx: d(2),
            },
            plaintext: Bytes::from_static(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        };
        let enc = c.encode();
        assert_eq!(Carried::decode(&enc), Ok(c));
        for cut in 0..enc.len() {
            assert!(Carried::decode(&enc[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = enc.to_vec();
        long.push(0);
        assert!(Carried::decode(&long).is_err());
    }
}
