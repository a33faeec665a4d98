//! Plain framing (a 4-byte length and the payload) and raw framing (none).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::codec::at_eof;
use super::{CodecError, EncodeApart};

/// Plain framing: a 4-byte big-endian length, then that many payload bytes; nothing else.
/// It is the default format of tokio-util's `LengthDelimitedCodec`, but like [`Codec`](super::Codec) it
/// checks the length before anything else and never reserves it up front.
#[derive(Debug, Clone)]
pub struct PlainCodec {
    /// At most `u32::MAX`, the length field's range: kept in 32 bits, like
    /// [`Codec`](super::Codec)'s limit.
    max: u32,
}

impl PlainCodec {
    /// A codec that accepts messages up to `max` bytes.
    pub fn new(max: usize) -> PlainCodec {
        PlainCodec {
            max: max.min(u32::MAX as usize) as u32,
        }
    }
}

impl PlainCodec {
    /// The length of the message at the front of `src`, once all of it is there (the
    /// message is `src[4..4 + len]`). Nothing is consumed, as with [`Codec::peek`](super::Codec::peek).
    ///
    /// # Errors
    /// A length over the limit.
    pub fn peek(&self, src: &[u8]) -> Result<Option<usize>, CodecError> {
        let Some(len) = src
            .first_chunk::<4>()
            .map(|b| u32::from_be_bytes(*b) as usize)
        else {
            return Ok(None);
        };
        if len > self.max as usize {
            return Err(CodecError::MessageTooLarge {
                len: len as u64,
                max: self.max as usize,
            });
        }
        Ok((src.len() >= 4 + len).then_some(len))
    }
}

impl Decoder for PlainCodec {
    type Item = Bytes;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        let Some(len) = self.peek(src)? else {
            return Ok(None);
        };
        // One split, then the length prefix off the frozen frame (see the courier codec).
        let mut payload = src.split_to(4 + len).freeze();
        payload.advance(4);
        Ok(Some(payload))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        let decoded = self.decode(src)?;
        at_eof(decoded, src)
    }
}

impl Encoder<Bytes> for PlainCodec {
    type Error = CodecError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        dst.reserve(4 + payload.len());
        dst.put_u32(plain_length(&payload)?);
        dst.put_slice(&payload);
        Ok(())
    }
}

impl EncodeApart<Bytes> for PlainCodec {
    fn payload_len(payload: &Bytes) -> usize {
        payload.len()
    }

    fn encode_framing(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<Bytes, CodecError> {
        dst.put_u32(plain_length(&payload)?);
        Ok(payload)
    }
}

/// The length prefix of a plain-framed message, if its length fits one.
fn plain_length(payload: &[u8]) -> Result<u32, CodecError> {
    u32::try_from(payload.len()).map_err(|_| CodecError::MessageTooLarge {
        len: payload.len() as u64,
        max: u32::MAX as usize,
    })
}

/// No framing: whatever bytes are buffered after a read are one message, and a message is
/// written as it is. A byte stream has no message boundaries, so this only suits peers
/// that were written against a bare socket and expect exactly that.
#[derive(Debug, Clone, Default)]
pub struct RawCodec;

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        Ok((!src.is_empty()).then(|| src.split().freeze()))
    }
}

impl Encoder<Bytes> for RawCodec {
    type Error = CodecError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        dst.extend_from_slice(&payload);
        Ok(())
    }
}

impl EncodeApart<Bytes> for RawCodec {
    fn payload_len(payload: &Bytes) -> usize {
        payload.len()
    }

    /// No framing: the payload is the whole message.
    fn encode_framing(&mut self, payload: Bytes, _: &mut BytesMut) -> Result<Bytes, CodecError> {
        Ok(payload)
    }
}
