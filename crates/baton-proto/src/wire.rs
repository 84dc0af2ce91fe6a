//! Checked byte readers and the length-prefixed envelope shared by the frame
//! codec and the handshake. Nothing here can panic on untrusted input: every
//! read checks the remaining length first and reports what it was reading.

use bytes::{Buf, Bytes, BytesMut};

use crate::frame::ProtoError;

/// Size of the big-endian length prefix in front of every message.
pub(crate) const LEN_PREFIX: usize = 4;

/// A forward-only cursor over one received message.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], ProtoError> {
        let Some(head) = self.buf.first_chunk::<N>() else {
            return Err(ProtoError::Truncated(what));
        };
        let out = *head;
        self.buf.advance(N);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, ProtoError> {
        self.array::<1>(what).map(|[b]| b)
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, ProtoError> {
        self.array(what).map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, ProtoError> {
        self.array(what).map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, ProtoError> {
        self.array(what).map(u64::from_be_bytes)
    }

    /// Bytes left in the message.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// `n` bytes as a zero-copy slice of the received message.
    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, ProtoError> {
        if n > self.buf.len() {
            return Err(ProtoError::Truncated(what));
        }
        Ok(self.buf.split_to(n))
    }

    /// Succeeds only if the whole message was consumed: trailing bytes mean
    /// the peer and we disagree about the layout.
    pub(crate) fn finish(&self) -> Result<(), ProtoError> {
        match self.buf.len() {
            0 => Ok(()),
            extra => Err(ProtoError::TrailingBytes(extra)),
        }
    }
}

/// Takes one complete length-prefixed message off the front of `buf` and
/// returns what follows the prefix.
///
/// The claimed length is checked against `min..=max` as soon as the four
/// prefix bytes are there, before anything is buffered for it, so a peer
/// cannot make us reserve more than `max`. `Ok(None)` means "need more bytes";
/// `buf` is then left untouched except for a capacity reservation of at most
/// the claimed length.
pub(crate) fn take_message(
    buf: &mut BytesMut,
    min: usize,
    max: usize,
) -> Result<Option<Bytes>, ProtoError> {
    Ok(take_message_with_prefix(buf, min, max)?.map(|mut message| {
        message.advance(LEN_PREFIX);
        message.freeze()
    }))
}

/// [`take_message`], but returns the whole message, prefix included, and
/// mutable (the opener decrypts it in place and authenticates the prefix).
pub(crate) fn take_message_with_prefix(
    buf: &mut BytesMut,
    min: usize,
    max: usize,
) -> Result<Option<BytesMut>, ProtoError> {
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let claimed = u32::from_be_bytes(*prefix);
    // A length that does not fit usize is certainly above any limit.
    let len = usize::try_from(claimed).unwrap_or(usize::MAX);
    if len > max {
        return Err(ProtoError::FrameTooLarge { len, max });
    }
    if len < min {
        return Err(ProtoError::FrameTooShort { len, min });
    }
    let total = len.saturating_add(LEN_PREFIX);
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    Ok(Some(buf.split_to(total)))
}
