//! The server half of an established TLS 1.2 or 1.3 session: record protection in userspace.
//!
//! [`RecordLayer`] takes over a session after its handshake finished elsewhere (on the
//! front-end, in rustls). It never sees a handshake: it only protects and unprotects records
//! with the traffic keys it was given, and handles the few messages that can still arrive
//! after a handshake. It does no I/O: bytes in, bytes out ([`crate::TlsStream`] puts it on a
//! socket).
//!
//! # Record formats
//!
//! Every record starts with the same 5-byte header: content type (1 byte), protocol version
//! (2 bytes, always `03 03` here), length of what follows (2 bytes, big endian).
//!
//! **TLS 1.3** (RFC 8446 section 5.2). Every protected record claims to be application data
//! (outer type 23). The body is the AEAD ciphertext of `content || real type || zero padding`
//! followed by the 16-byte tag. The nonce is the direction's 12-byte IV with the 64-bit record
//! sequence number XORed into its last 8 bytes; the additional data is the 5-byte header
//! itself. On receipt the padding is stripped from the end and the last non-zero byte is the
//! real content type; a plaintext of only zeros has no type and is refused. The body may be at
//! most 2^14 + 256 bytes and the inner plaintext at most 2^14 + 1.
//!
//! **TLS 1.2** (RFC 5246 section 6.2.3.3, RFC 5288, RFC 7905). The header carries the real
//! content type. The additional data is `seq (8) || type || 03 03 || plaintext length (2)`.
//! - AES-GCM: the body is an 8-byte explicit nonce, the ciphertext, the tag. The nonce is the
//!   4-byte salt followed by the explicit part. When sending we use `iv XOR seq` as the full
//!   nonce, so the explicit part is the low 8 bytes of the IV XOR the sequence number, exactly as
//!   rustls does (its extracted 12-byte "iv" is salt || the 8 bytes our explicit nonces start
//!   from). When receiving we take the explicit part from the record, whatever the peer chose.
//! - ChaCha20-Poly1305: no explicit nonce; the nonce is `iv XOR seq` as in TLS 1.3.
//!
//! The body may be at most 2^14 + 2048 bytes and the plaintext at most 2^14.
//!
//! # After the handshake
//!
//! - Application data goes to the caller. Empty application data records are legal and ignored.
//! - `close_notify` ends the peer's data: [`ReadStatus::peer_closed`] turns true and anything the
//!   peer sends after it is discarded. We may still send (half close).
//! - Other alerts: TLS 1.2 warnings and TLS 1.3 `user_canceled` are ignored (at most
//!   4 in a row without application data in between); every other alert fails the session with
//!   [`TlsError::PeerAlert`].
//! - TLS 1.3 KeyUpdate: see below. NewSessionTicket may only come from a server, so from a
//!   client it is `unexpected_message`, as is any other handshake message, and so is a handshake
//!   message interleaved with other records or one that continues past a key change.
//! - TLS 1.2 handshake records can only be a renegotiation attempt (a ClientHello). We refuse
//!   it politely: a complete ClientHello in one record is dropped and answered with a
//!   `no_renegotiation` warning alert, which leaves the client free to go on with the current
//!   session or to close (RFC 5246 section 7.2.2). Anything else, or more than 2 attempts in a
//!   row, fails with `unexpected_message`.
//! - change_cipher_spec after the handshake (either version) is `unexpected_message`.
//!
//! # Key updates (TLS 1.3)
//!
//! A KeyUpdate message moves its sender's direction to the next traffic secret:
//! `secret' = HKDF-Expand-Label(secret, "traffic upd", "", hash length)`, from which
//! `key = HKDF-Expand-Label(secret', "key", "", key length)` and
//! `iv = HKDF-Expand-Label(secret', "iv", "", 12)`, and the sequence number restarts at 0.
//! When the client's KeyUpdate asks for an update (`update_requested`), we queue our own
//! KeyUpdate (`update_not_requested`) sealed with our current keys, and switch our sending
//! keys right after sealing it; [`RecordLayer::take_pending`] hands that record out, and every
//! method that writes records hands out what is pending first, so records always leave in the
//! order they were sealed. [`RecordLayer::update_keys`] starts a key update from our side. At
//! most 32 KeyUpdates in a row without application data are accepted.
//!
//! # Limits
//!
//! Sequence numbers never wrap: a direction at `u64::MAX` stops with
//! [`TlsError::SequenceLimit`]. AES-GCM keys may protect at most 2^24.5 records (RFC 8446
//! section 5.5). In TLS 1.3 we update our sending keys on our own, well before that, when
//! 2^24 records were sealed with one key (ChaCha20-Poly1305 has no practical limit: only just
//! before the sequence number would run out). TLS 1.2 cannot rekey, so sending the record past
//! the limit fails with [`TlsError::SequenceLimit`]. The receive side only checks wrapping:
//! it is the sender's duty to rekey.
//!
//! # Errors
//!
//! Any error from [`RecordLayer::read`] or [`RecordLayer::write`] is final: the layer queues
//! the matching fatal alert (if one is due, see [`TlsError::alert`]) for
//! [`RecordLayer::take_pending`], and every later read or write returns the same error.

use bytes::{Buf, BufMut, BytesMut};
use hkdf::Hkdf;
use sha2::{Sha256, Sha384};
use zeroize::Zeroizing;

use crate::state::{alert, Direction, SessionState, Suite, TlsError, Version};

/// Largest plaintext of one record.
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// Record header length.
pub const HEADER_LEN: usize = 5;
const TAG_LEN: usize = 16;
const GCM_EXPLICIT_LEN: usize = 8;
/// Largest TLS 1.3 record body.
const MAX_CIPHERTEXT_13: usize = MAX_PLAINTEXT + 256;
/// Largest TLS 1.2 record body.
const MAX_CIPHERTEXT_12: usize = MAX_PLAINTEXT + 2048;

const CT_CHANGE_CIPHER_SPEC: u8 = 20;
const CT_ALERT: u8 = 21;
const CT_HANDSHAKE: u8 = 22;
const CT_APPLICATION_DATA: u8 = 23;

const HS_CLIENT_HELLO: u8 = 1;
const HS_NEW_SESSION_TICKET: u8 = 4;
const HS_KEY_UPDATE: u8 = 24;

const ALERT_WARNING: u8 = 1;
const ALERT_FATAL: u8 = 2;

/// Most records one AES-GCM key may protect: floor(2^24.5) (RFC 8446 section 5.5).
pub const AES_GCM_RECORD_LIMIT: u64 = 23_726_566;
/// TLS 1.3 with AES-GCM: records sealed with one key before we rekey on our own.
pub const TLS13_AES_GCM_REKEY_AT: u64 = 1 << 24;
const _: () = assert!(TLS13_AES_GCM_REKEY_AT < AES_GCM_RECORD_LIMIT);

const MAX_KEY_UPDATES_IN_A_ROW: u8 = 32;
const MAX_WARNINGS_IN_A_ROW: u8 = 4;
const MAX_RENEGOTIATIONS_IN_A_ROW: u8 = 2;

/// What one [`RecordLayer::read`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStatus {
    /// Whole records consumed from the input.
    pub records: usize,
    /// Application data bytes appended to the output.
    pub plaintext: usize,
    /// The peer sent close_notify (now or earlier): it sends no more data.
    pub peer_closed: bool,
}

/// Key updates done so far, per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyUpdates {
    /// Client to server (the client rekeyed).
    pub rx: u64,
    /// Server to client (we rekeyed, on request, on our own, or by [`RecordLayer::update_keys`]).
    pub tx: u64,
}

/// One direction's AEAD, from `ring` (its AES-GCM is the assembly of BoringSSL: about four times
/// the RustCrypto crates' speed on this project's machines, and encryption is the back-end's main
/// cost for large responses). ring does not wipe its expanded key schedule when dropped; the key
/// bytes themselves live in [`Direction`], which is wiped.
struct Cipher(ring::aead::LessSafeKey);

impl Cipher {
    fn new(suite: Suite, key: &[u8]) -> Result<Cipher, TlsError> {
        let alg = match suite {
            Suite::Aes128Gcm => &ring::aead::AES_128_GCM,
            Suite::Aes256Gcm => &ring::aead::AES_256_GCM,
            Suite::Chacha20Poly1305 => &ring::aead::CHACHA20_POLY1305,
        };
        let key = ring::aead::UnboundKey::new(alg, key)
            .map_err(|_| TlsError::BadState("key length does not fit the suite"))?;
        Ok(Cipher(ring::aead::LessSafeKey::new(key)))
    }

    /// Encrypts `buf` in place and returns the tag.
    fn seal(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], TlsError> {
        let nonce = ring::aead::Nonce::assume_unique_for_key(*nonce);
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), buf)
            .map_err(|_| TlsError::RecordOverflow)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Checks `tag` and decrypts `buf` in place.
    fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<(), TlsError> {
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| TlsError::BadRecordMac)?;
        let nonce = ring::aead::Nonce::assume_unique_for_key(*nonce);
        self.0
            .open_in_place_separate_tag(
                nonce,
                ring::aead::Aad::from(aad),
                ring::aead::Tag::from(tag),
                buf,
                0..,
            )
            .map(drop)
            .map_err(|_| TlsError::BadRecordMac)
    }
}

/// HKDF-Expand-Label (RFC 8446 section 7.1) with an empty context, over the suite's hash.
fn expand_label(suite: Suite, secret: &[u8], label: &[u8], out: &mut [u8]) -> Result<(), TlsError> {
    const PREFIX: &[u8] = b"tls13 ";
    let mut info = Vec::with_capacity(4 + PREFIX.len() + label.len());
    info.extend_from_slice(&(out.len() as u16).to_be_bytes());
    info.push((PREFIX.len() + label.len()) as u8);
    info.extend_from_slice(PREFIX);
    info.extend_from_slice(label);
    info.push(0);
    let bad = TlsError::BadState("traffic secret does not fit the suite's hash");
    match suite {
        Suite::Aes256Gcm => Hkdf::<Sha384>::from_prk(secret)
            .map_err(|_| bad.clone())?
            .expand(&info, out)
            .map_err(|_| bad),
        Suite::Aes128Gcm | Suite::Chacha20Poly1305 => Hkdf::<Sha256>::from_prk(secret)
            .map_err(|_| bad.clone())?
            .expand(&info, out)
            .map_err(|_| bad),
    }
}

/// A derived key and IV, wiped when dropped.
type KeyIv = (Zeroizing<Vec<u8>>, Zeroizing<[u8; 12]>);

/// The key and IV a TLS 1.3 traffic secret yields.
fn derive_key_iv(suite: Suite, secret: &[u8]) -> Result<KeyIv, TlsError> {
    let mut key = Zeroizing::new(vec![0u8; suite.key_len()]);
    let mut iv = Zeroizing::new([0u8; 12]);
    expand_label(suite, secret, b"key", &mut key)?;
    expand_label(suite, secret, b"iv", &mut iv[..])?;
    Ok((key, iv))
}

impl Direction {
    /// The direction a TLS 1.3 traffic secret describes: key and IV derived from `secret`
    /// (which must have the suite's hash length), next record number `seq`.
    pub fn tls13(suite: Suite, secret: &[u8], seq: u64) -> Result<Direction, TlsError> {
        if secret.len() != suite.secret_len() {
            return Err(TlsError::BadState(
                "traffic secret length does not fit the version and suite",
            ));
        }
        let (key, iv) = derive_key_iv(suite, secret)?;
        Ok(Direction {
            key: key.to_vec(),
            iv: *iv,
            seq,
            secret: secret.to_vec(),
        })
    }
}

/// The traffic keys of one direction.
struct Keys {
    cipher: Cipher,
    iv: Zeroizing<[u8; 12]>,
    seq: u64,
    /// TLS 1.3 traffic secret; empty for TLS 1.2.
    secret: Zeroizing<Vec<u8>>,
}

impl Keys {
    fn from_direction(version: Version, suite: Suite, d: &Direction) -> Result<Keys, TlsError> {
        if version == Version::Tls13 {
            let (key, iv) = derive_key_iv(suite, &d.secret)?;
            if key[..] != d.key[..] || iv[..] != d.iv[..] {
                return Err(TlsError::BadState(
                    "the traffic secret does not yield the given key and iv",
                ));
            }
        }
        Ok(Keys {
            cipher: Cipher::new(suite, &d.key)?,
            iv: Zeroizing::new(d.iv),
            seq: d.seq,
            secret: Zeroizing::new(d.secret.clone()),
        })
    }

    /// The per-record nonce: the IV with the sequence number XORed into its last 8 bytes.
    fn nonce(&self) -> [u8; 12] {
        let mut n = *self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    /// Moves to the next TLS 1.3 traffic secret.
    fn update(&mut self, suite: Suite) -> Result<(), TlsError> {
        let mut next = Zeroizing::new(vec![0u8; suite.secret_len()]);
        expand_label(suite, &self.secret, b"traffic upd", &mut next)?;
        let (key, iv) = derive_key_iv(suite, &next)?;
        self.cipher = Cipher::new(suite, &key)?;
        self.iv = iv;
        self.secret = next;
        self.seq = 0;
        Ok(())
    }

    fn bump(&mut self) -> Result<(), TlsError> {
        self.seq = self.seq.checked_add(1).ok_or(TlsError::SequenceLimit)?;
        Ok(())
    }
}

/// The server side of an established TLS session. See the module docs.
pub struct RecordLayer {
    version: Version,
    suite: Suite,
    rx: Keys,
    tx: Keys,
    /// Records sealed while reading (KeyUpdate answers, alerts), not yet handed out.
    pending: BytesMut,
    /// Our KeyUpdate answer is in `pending` (one answer covers several requests).
    answer_queued: bool,
    /// Start of a TLS 1.3 handshake message split across records (at most 4 bytes).
    hs: Vec<u8>,
    peer_closed: bool,
    /// We sent close_notify or a fatal alert.
    send_closed: bool,
    failed: Option<TlsError>,
    key_updates: KeyUpdates,
    key_updates_in_a_row: u8,
    warnings_in_a_row: u8,
    renegotiations_in_a_row: u8,
}

impl std::fmt::Debug for RecordLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordLayer")
            .field("version", &self.version)
            .field("suite", &self.suite)
            .field("rx_seq", &self.rx.seq)
            .field("tx_seq", &self.tx.seq)
            .field("key_updates", &self.key_updates)
            .field("peer_closed", &self.peer_closed)
            .field("send_closed", &self.send_closed)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl RecordLayer {
    /// Takes over the session `state` describes. Checks the key lengths and, for TLS 1.3, that
    /// each traffic secret yields the key and IV given with it (a front that extracted keys
    /// after a key update but logged the first secret would otherwise fail much later).
    pub fn new(state: &SessionState) -> Result<RecordLayer, TlsError> {
        state.validate()?;
        Ok(RecordLayer {
            version: state.version,
            suite: state.suite,
            rx: Keys::from_direction(state.version, state.suite, &state.rx)?,
            tx: Keys::from_direction(state.version, state.suite, &state.tx)?,
            pending: BytesMut::new(),
            answer_queued: false,
            hs: Vec::new(),
            peer_closed: false,
            send_closed: false,
            failed: None,
            key_updates: KeyUpdates::default(),
            key_updates_in_a_row: 0,
            warnings_in_a_row: 0,
            renegotiations_in_a_row: 0,
        })
    }

    /// Protocol version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Cipher suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Sequence number of the next record from the client (under the current key).
    pub fn rx_seq(&self) -> u64 {
        self.rx.seq
    }

    /// Sequence number of the next record we seal (under the current key).
    pub fn tx_seq(&self) -> u64 {
        self.tx.seq
    }

    /// Key updates done so far.
    pub fn key_updates(&self) -> KeyUpdates {
        self.key_updates
    }

    /// The peer sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// We sent close_notify or a fatal alert: nothing more can be written.
    pub fn send_closed(&self) -> bool {
        self.send_closed
    }

    /// The error that ended the session, if one did.
    pub fn error(&self) -> Option<&TlsError> {
        self.failed.as_ref()
    }

    /// Protocol output (KeyUpdate answers, alerts) waits for [`RecordLayer::take_pending`].
    pub fn wants_write(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Appends the pending protocol output to `out`.
    pub fn take_pending(&mut self, out: &mut BytesMut) {
        if !self.pending.is_empty() {
            out.extend_from_slice(&self.pending);
            self.pending.clear();
        }
        self.answer_queued = false;
    }

    /// Decrypts every whole record at the front of `input`, appending application data to
    /// `plain`; a partial record stays in `input`. After the peer's close_notify the rest of
    /// `input` is discarded. On error, `plain` keeps what earlier records of this call
    /// yielded, the fatal alert is pending and the layer is finished.
    pub fn read(
        &mut self,
        input: &mut BytesMut,
        plain: &mut BytesMut,
    ) -> Result<ReadStatus, TlsError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let before = plain.len();
        let mut status = ReadStatus::default();
        while !self.peer_closed {
            match self.read_record(input, plain) {
                Ok(true) => status.records += 1,
                Ok(false) => break,
                Err(e) => {
                    self.fail(e.clone());
                    return Err(e);
                }
            }
        }
        if self.peer_closed {
            input.clear();
        }
        status.plaintext = plain.len() - before;
        status.peer_closed = self.peer_closed;
        Ok(status)
    }

    /// Seals `data` as application data records of at most 16384 bytes each, appended to `out`
    /// after any pending protocol output. Writing nothing produces no record.
    pub fn write(&mut self, data: &[u8], out: &mut BytesMut) -> Result<(), TlsError> {
        self.check_writable()?;
        self.take_pending(out);
        let records = data.len().div_ceil(MAX_PLAINTEXT);
        out.reserve(data.len() + records * (HEADER_LEN + GCM_EXPLICIT_LEN + 1 + TAG_LEN));
        for chunk in data.chunks(MAX_PLAINTEXT) {
            if let Err(e) = self.seal_data(chunk, out) {
                self.fail(e.clone());
                return Err(e);
            }
        }
        Ok(())
    }

    /// Sends close_notify (after any pending output); nothing can be written afterwards, but
    /// reading goes on until the peer closes too. Does nothing if already closed or failed.
    pub fn close_notify(&mut self, out: &mut BytesMut) {
        self.take_pending(out);
        if self.send_closed || self.failed.is_some() {
            return;
        }
        let start = out.len();
        if self
            .seal_record(CT_ALERT, &[ALERT_WARNING, alert::CLOSE_NOTIFY], out)
            .is_err()
        {
            out.truncate(start);
        }
        self.send_closed = true;
    }

    /// Sends the fatal alert `description` (after any pending output) and ends the session:
    /// later reads and writes fail with [`TlsError::Closed`]. Does nothing if we already sent
    /// close_notify or a fatal alert.
    pub fn send_alert(&mut self, description: u8, out: &mut BytesMut) {
        self.take_pending(out);
        if self.failed.is_none() {
            self.failed = Some(TlsError::Closed);
        }
        if self.send_closed {
            return;
        }
        let start = out.len();
        if self
            .seal_record(CT_ALERT, &[ALERT_FATAL, description], out)
            .is_err()
        {
            out.truncate(start);
        }
        self.send_closed = true;
    }

    /// Starts a key update from our side (TLS 1.3 only): sends KeyUpdate, asking the client to
    /// update its keys too if `request_peer`, and switches our sending keys.
    pub fn update_keys(&mut self, request_peer: bool, out: &mut BytesMut) -> Result<(), TlsError> {
        if self.version != Version::Tls13 {
            return Err(TlsError::Unsupported("KeyUpdate needs TLS 1.3"));
        }
        self.check_writable()?;
        self.take_pending(out);
        if let Err(e) = self.send_key_update(request_peer, out) {
            self.fail(e.clone());
            return Err(e);
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<(), TlsError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.send_closed {
            return Err(TlsError::Closed);
        }
        Ok(())
    }

    /// Ends the session after `e`, queueing the fatal alert it calls for.
    fn fail(&mut self, e: TlsError) {
        if self.failed.is_some() {
            return;
        }
        if let (Some(desc), false) = (e.alert(), self.send_closed) {
            let mut pending = std::mem::take(&mut self.pending);
            let start = pending.len();
            if self
                .seal_record(CT_ALERT, &[ALERT_FATAL, desc], &mut pending)
                .is_err()
            {
                pending.truncate(start);
            }
            self.pending = pending;
            self.send_closed = true;
        }
        self.failed = Some(e);
    }

    /// Seals one application data record, rekeying or stopping at the AEAD limit first.
    fn seal_data(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), TlsError> {
        match (self.version, self.suite) {
            (Version::Tls13, Suite::Aes128Gcm | Suite::Aes256Gcm) => {
                if self.tx.seq >= TLS13_AES_GCM_REKEY_AT {
                    self.send_key_update(false, out)?;
                }
            }
            (Version::Tls13, Suite::Chacha20Poly1305) => {
                // Keep the last sequence number for the KeyUpdate itself.
                if self.tx.seq >= u64::MAX - 1 {
                    self.send_key_update(false, out)?;
                }
            }
            (Version::Tls12, Suite::Aes128Gcm | Suite::Aes256Gcm) => {
                if self.tx.seq >= AES_GCM_RECORD_LIMIT {
                    return Err(TlsError::SequenceLimit);
                }
            }
            (Version::Tls12, Suite::Chacha20Poly1305) => {}
        }
        self.seal_record(CT_APPLICATION_DATA, chunk, out)
    }

    /// Seals KeyUpdate with the current keys, then moves our sending keys on.
    fn send_key_update(&mut self, request_peer: bool, out: &mut BytesMut) -> Result<(), TlsError> {
        let msg = [HS_KEY_UPDATE, 0, 0, 1, u8::from(request_peer)];
        self.seal_record(CT_HANDSHAKE, &msg, out)?;
        self.tx.update(self.suite)?;
        self.key_updates.tx += 1;
        Ok(())
    }

    /// Seals one record of `content_type` around `data` (callers keep it to at most
    /// [`MAX_PLAINTEXT`] bytes), encrypting in place in `out`. On error `out` is left as it was.
    fn seal_record(
        &mut self,
        content_type: u8,
        data: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), TlsError> {
        if self.tx.seq == u64::MAX {
            return Err(TlsError::SequenceLimit);
        }
        let nonce = self.tx.nonce();
        let start = out.len();
        let result = match self.version {
            Version::Tls13 => {
                let len = data.len() + 1 + TAG_LEN;
                out.reserve(HEADER_LEN + len);
                out.put_u8(CT_APPLICATION_DATA);
                out.put_u16(0x0303);
                out.put_u16(len as u16);
                out.extend_from_slice(data);
                out.put_u8(content_type);
                let (header, body) = out[start..].split_at_mut(HEADER_LEN);
                self.tx.cipher.seal(&nonce, header, body)
            }
            Version::Tls12 => {
                let explicit = self.explicit_nonce_len();
                let len = explicit + data.len() + TAG_LEN;
                out.reserve(HEADER_LEN + len);
                out.put_u8(content_type);
                out.put_u16(0x0303);
                out.put_u16(len as u16);
                out.extend_from_slice(&nonce[12 - explicit..]);
                out.extend_from_slice(data);
                let aad = aad12(self.tx.seq, content_type, data.len());
                self.tx
                    .cipher
                    .seal(&nonce, &aad, &mut out[start + HEADER_LEN + explicit..])
            }
        };
        match result {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                self.tx.seq += 1;
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    fn explicit_nonce_len(&self) -> usize {
        match self.suite {
            Suite::Aes128Gcm | Suite::Aes256Gcm => GCM_EXPLICIT_LEN,
            Suite::Chacha20Poly1305 => 0,
        }
    }

    /// Opens the record at the front of `input`, if it is whole, and acts on its content.
    fn read_record(
        &mut self,
        input: &mut BytesMut,
        plain: &mut BytesMut,
    ) -> Result<bool, TlsError> {
        if input.len() < HEADER_LEN {
            return Ok(false);
        }
        let outer_type = input[0];
        let version = u16::from_be_bytes([input[1], input[2]]);
        let len = usize::from(u16::from_be_bytes([input[3], input[4]]));
        match (self.version, outer_type) {
            (_, CT_CHANGE_CIPHER_SPEC) => {
                return Err(TlsError::Protocol("change_cipher_spec after the handshake"))
            }
            (Version::Tls13, CT_APPLICATION_DATA) => {}
            (Version::Tls13, CT_ALERT | CT_HANDSHAKE) => {
                return Err(TlsError::Protocol("unprotected record after the handshake"))
            }
            (Version::Tls12, CT_APPLICATION_DATA | CT_ALERT | CT_HANDSHAKE) => {}
            _ => return Err(TlsError::Protocol("unknown record type")),
        }
        if self.version == Version::Tls12 && version != 0x0303 {
            return Err(TlsError::Decode("record version is not TLS 1.2"));
        }
        let max = match self.version {
            Version::Tls13 => MAX_CIPHERTEXT_13,
            Version::Tls12 => MAX_CIPHERTEXT_12,
        };
        if len > max {
            return Err(TlsError::RecordOverflow);
        }
        if input.len() < HEADER_LEN + len {
            return Ok(false);
        }
        if self.rx.seq == u64::MAX {
            return Err(TlsError::SequenceLimit);
        }

        let record = &mut input[..HEADER_LEN + len];
        let (header, body) = record.split_at_mut(HEADER_LEN);
        let (content_type, range) = match self.version {
            Version::Tls13 => {
                if len < TAG_LEN {
                    return Err(TlsError::BadRecordMac);
                }
                let (text, tag) = body.split_at_mut(len - TAG_LEN);
                self.rx.cipher.open(&self.rx.nonce(), header, text, tag)?;
                if text.len() > MAX_PLAINTEXT + 1 {
                    return Err(TlsError::RecordOverflow);
                }
                let Some(end) = text.iter().rposition(|&b| b != 0) else {
                    return Err(TlsError::Protocol("a record without content type"));
                };
                (text[end], HEADER_LEN..HEADER_LEN + end)
            }
            Version::Tls12 => {
                let explicit = self.explicit_nonce_len();
                if len < explicit + TAG_LEN {
                    return Err(TlsError::BadRecordMac);
                }
                let text_len = len - explicit - TAG_LEN;
                if text_len > MAX_PLAINTEXT {
                    return Err(TlsError::RecordOverflow);
                }
                let mut nonce = self.rx.nonce();
                if explicit > 0 {
                    nonce[4..].copy_from_slice(&body[..explicit]);
                }
                let aad = aad12(self.rx.seq, outer_type, text_len);
                let (text, tag) = body[explicit..].split_at_mut(text_len);
                self.rx.cipher.open(&nonce, &aad, text, tag)?;
                (
                    outer_type,
                    HEADER_LEN + explicit..HEADER_LEN + explicit + text_len,
                )
            }
        };
        self.rx.bump()?;
        let content = &input[range];
        match content_type {
            CT_APPLICATION_DATA => {
                if !self.hs.is_empty() {
                    return Err(TlsError::Protocol(
                        "application data inside a handshake message",
                    ));
                }
                plain.extend_from_slice(content);
                self.key_updates_in_a_row = 0;
                self.warnings_in_a_row = 0;
                self.renegotiations_in_a_row = 0;
            }
            CT_ALERT => self.on_alert(content)?,
            CT_HANDSHAKE => self.on_handshake(content)?,
            CT_CHANGE_CIPHER_SPEC => {
                return Err(TlsError::Protocol("change_cipher_spec after the handshake"))
            }
            _ => return Err(TlsError::Protocol("unknown content type")),
        }
        input.advance(HEADER_LEN + len);
        Ok(true)
    }

    fn on_alert(&mut self, content: &[u8]) -> Result<(), TlsError> {
        if !self.hs.is_empty() {
            return Err(TlsError::Protocol("alert inside a handshake message"));
        }
        let &[level, description] = content else {
            return Err(TlsError::Decode("alert of the wrong length"));
        };
        if description == alert::CLOSE_NOTIFY {
            self.peer_closed = true;
            return Ok(());
        }
        let warning = level == ALERT_WARNING
            && (self.version == Version::Tls12 || description == alert::USER_CANCELED);
        if !warning {
            return Err(TlsError::PeerAlert(description));
        }
        self.warnings_in_a_row += 1;
        if self.warnings_in_a_row > MAX_WARNINGS_IN_A_ROW {
            return Err(TlsError::Protocol("too many warning alerts"));
        }
        Ok(())
    }

    fn on_handshake(&mut self, mut content: &[u8]) -> Result<(), TlsError> {
        if content.is_empty() {
            return Err(TlsError::Protocol("empty handshake record"));
        }
        if self.version == Version::Tls12 {
            return self.on_renegotiation(content);
        }
        while !content.is_empty() {
            // Only KeyUpdate (4-byte header, 1-byte body) is acceptable: gather its header,
            // judge it, then its body.
            let want = if self.hs.len() < 4 { 4 } else { 5 };
            let take = (want - self.hs.len()).min(content.len());
            self.hs.extend_from_slice(&content[..take]);
            content = &content[take..];
            match self.hs.first() {
                Some(&HS_KEY_UPDATE) => {}
                Some(&HS_NEW_SESSION_TICKET) => {
                    return Err(TlsError::Protocol("NewSessionTicket from a client"))
                }
                _ => return Err(TlsError::Protocol("handshake message after the handshake")),
            }
            if self.hs.len() == 4 {
                if self.hs[1..4] != [0, 0, 1] {
                    return Err(TlsError::Decode("KeyUpdate of the wrong length"));
                }
            } else if self.hs.len() == 5 {
                let request = self.hs[4];
                self.hs.clear();
                if !content.is_empty() {
                    return Err(TlsError::Protocol("handshake data past a key change"));
                }
                self.on_key_update(request)?;
            }
        }
        Ok(())
    }

    fn on_key_update(&mut self, request: u8) -> Result<(), TlsError> {
        let requested = match request {
            0 => false,
            1 => true,
            _ => return Err(TlsError::IllegalParameter("KeyUpdate request")),
        };
        self.key_updates_in_a_row += 1;
        if self.key_updates_in_a_row > MAX_KEY_UPDATES_IN_A_ROW {
            return Err(TlsError::Protocol("too many KeyUpdates"));
        }
        self.rx.update(self.suite)?;
        self.key_updates.rx += 1;
        if requested && !self.answer_queued && !self.send_closed {
            let mut pending = std::mem::take(&mut self.pending);
            let result = self.send_key_update(false, &mut pending);
            self.pending = pending;
            result?;
            self.answer_queued = true;
        }
        Ok(())
    }

    /// TLS 1.2: a client's attempt to renegotiate, refused with a warning.
    fn on_renegotiation(&mut self, content: &[u8]) -> Result<(), TlsError> {
        let whole_client_hello = content.len() >= 4
            && content[0] == HS_CLIENT_HELLO
            && usize::from(content[1]) << 16
                | usize::from(content[2]) << 8
                | usize::from(content[3])
                == content.len() - 4;
        if !whole_client_hello {
            return Err(TlsError::Protocol("handshake message after the handshake"));
        }
        self.renegotiations_in_a_row += 1;
        if self.renegotiations_in_a_row > MAX_RENEGOTIATIONS_IN_A_ROW {
            return Err(TlsError::Protocol("repeated renegotiation attempts"));
        }
        if !self.send_closed {
            let mut pending = std::mem::take(&mut self.pending);
            let result = self.seal_record(
                CT_ALERT,
                &[ALERT_WARNING, alert::NO_RENEGOTIATION],
                &mut pending,
            );
            self.pending = pending;
            result?;
        }
        Ok(())
    }
}

/// TLS 1.2 additional data: seq || type || version || plaintext length.
fn aad12(seq: u64, content_type: u8, len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = content_type;
    aad[9] = 3;
    aad[10] = 3;
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}

#[cfg(test)]
mod tests;
