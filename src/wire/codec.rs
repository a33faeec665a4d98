//! The courier codec: frames to bytes and back, with the length checked first.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{EncodeApart, ErrorCode, Frame, Kind, HEADER_LEN, LENGTH_OVERHEAD, MAX_PAYLOAD_LIMIT};

/// Errors from decoding or encoding frames.
///
/// Every variant but `Io` is the peer's fault and names what was wrong with its bytes;
/// after any of them the stream cannot be resynchronised, so `Framed` ends the stream.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Reading or writing the socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The length field declares a payload larger than the maximum. Found from the
    /// 4-byte length alone, before the rest of the header arrives.
    #[error(
        "frame too large: the length field declares a {len}-byte payload, the limit is {max} bytes"
    )]
    FrameTooLarge {
        /// The declared payload length.
        len: u64,
        /// The maximum payload length in force.
        max: usize,
    },
    /// The length field is below the 5 bytes that kind and id take.
    #[error("bad length: the length field is {len}, below the minimum of 5 (kind and id)")]
    BadLength {
        /// The length field as sent.
        len: u32,
    },
    /// The kind byte is not a known kind.
    #[error("unknown frame kind 0x{kind:02x} (id {id})")]
    UnknownKind {
        /// The kind byte as sent.
        kind: u8,
        /// The request id from the header.
        id: u32,
    },
    /// A plain-framed message declares more than the maximum.
    #[error("message too large: the length prefix declares {len} bytes, the limit is {max} bytes")]
    MessageTooLarge {
        /// The declared length.
        len: u64,
        /// The maximum in force.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes of a frame received)")]
    Truncated {
        /// Bytes of the unfinished frame that had arrived.
        buffered: usize,
    },
}

impl CodecError {
    /// The ERROR code that tells a peer about this error, or `None` for I/O errors, which
    /// there is no point reporting to the peer.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            CodecError::Io(_) | CodecError::Truncated { .. } => None,
            CodecError::FrameTooLarge { .. } | CodecError::MessageTooLarge { .. } => {
                Some(ErrorCode::FrameTooLarge)
            }
            CodecError::BadLength { .. } => Some(ErrorCode::BadLength),
            CodecError::UnknownKind { .. } => Some(ErrorCode::UnknownKind),
        }
    }
}

/// Decodes and encodes [`Frame`]s.
///
/// `max_payload` bounds what the decoder accepts; it is checked from the header alone,
/// before any buffer grows. The encoder only refuses payloads the length field cannot
/// describe: checking a peer's announced maximum is the sender's business (the client does
/// it before a call leaves).
#[derive(Debug, Clone)]
pub struct Codec {
    /// At most [`MAX_PAYLOAD_LIMIT`], which fits the length field's 32 bits: kept in them,
    /// the codec takes 4 bytes of every connection that holds one, not 8.
    max_payload: u32,
}

impl Codec {
    /// A codec that accepts payloads up to `max_payload` bytes.
    pub fn new(max_payload: usize) -> Codec {
        Codec {
            max_payload: max_payload.min(MAX_PAYLOAD_LIMIT) as u32,
        }
    }

    /// The largest payload the decoder accepts.
    pub fn max_payload(&self) -> usize {
        self.max_payload as usize
    }

    /// Changes the largest payload the decoder accepts (the server raises it from the
    /// HELLO limit to the configured one once the handshake is done).
    pub fn set_max_payload(&mut self, max_payload: usize) {
        self.max_payload = max_payload.min(MAX_PAYLOAD_LIMIT) as u32;
    }
}

impl Codec {
    /// The frame at the front of `src`, once all of it is there: its kind, its request id
    /// and its payload's length (the payload is `src[HEADER_LEN..HEADER_LEN + len]`).
    /// Nothing is consumed; [`Decoder::decode`] is this plus taking the bytes. For readers
    /// that look at a frame where it lies (the load generator checks replies in place).
    ///
    /// # Errors
    /// As [`Decoder::decode`]: a length below the header's, a payload over the limit, an
    /// unknown kind.
    pub fn peek(&self, src: &[u8]) -> Result<Option<(Kind, u32, usize)>, CodecError> {
        let Some(length) = src.first_chunk::<4>().map(|b| u32::from_be_bytes(*b)) else {
            return Ok(None);
        };
        if (length as usize) < LENGTH_OVERHEAD {
            return Err(CodecError::BadLength { len: length });
        }
        // Checked from the length alone, as soon as its 4 bytes are in: a peer that sends
        // just those gets its answer at once, not at a deadline.
        let payload_len = length as usize - LENGTH_OVERHEAD;
        if payload_len > self.max_payload as usize {
            return Err(CodecError::FrameTooLarge {
                len: payload_len as u64,
                max: self.max_payload as usize,
            });
        }
        // The rest of the fixed header: nine bytes, so waiting for it costs nothing.
        let Some(header) = src.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let kind_byte = header[4];
        let id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
        let Some(kind) = Kind::from_byte(kind_byte) else {
            return Err(CodecError::UnknownKind {
                kind: kind_byte,
                id,
            });
        };
        if src.len() < HEADER_LEN + payload_len {
            return Ok(None);
        }
        Ok(Some((kind, id, payload_len)))
    }
}

impl Decoder for Codec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some((kind, id, payload_len)) = self.peek(src)? else {
            // Deliberately no `reserve(payload_len)`: the buffer grows only as bytes
            // arrive, so a header alone cannot claim memory.
            return Ok(None);
        };
        // The whole frame leaves the buffer in one split, and the header goes from the
        // frozen frame, where moving on is a pointer's step: advancing the read buffer as
        // well cost the server 15 more instructions a frame (callgrind over 2,000,000
        // one-way messages: 502 against 487 a message, all of the server's user space).
        let mut payload = src.split_to(HEADER_LEN + payload_len).freeze();
        payload.advance(HEADER_LEN);
        Ok(Some(Frame { kind, id, payload }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let decoded = self.decode(src)?;
        at_eof(decoded, src)
    }
}

/// What a decoder returns at the end of the stream: the last whole item, the end (an
/// empty buffer), or `Truncated` when bytes of an unfinished item are left over.
pub(super) fn at_eof<T>(decoded: Option<T>, src: &BytesMut) -> Result<Option<T>, CodecError> {
    match decoded {
        Some(item) => Ok(Some(item)),
        None if src.is_empty() => Ok(None),
        None => Err(CodecError::Truncated {
            buffered: src.len(),
        }),
    }
}

impl Encoder<Frame> for Codec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        describable(&frame.payload)?;
        dst.reserve(frame.encoded_len());
        put_header(dst, frame.kind, frame.id, frame.payload.len());
        dst.put_slice(&frame.payload);
        Ok(())
    }
}

impl EncodeApart<Frame> for Codec {
    fn payload_len(frame: &Frame) -> usize {
        frame.payload.len()
    }

    fn encode_framing(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<Bytes, CodecError> {
        describable(&frame.payload)?;
        put_header(dst, frame.kind, frame.id, frame.payload.len());
        Ok(frame.payload)
    }
}

/// Refuses a payload the length field cannot describe.
fn describable(payload: &[u8]) -> Result<(), CodecError> {
    if payload.len() > MAX_PAYLOAD_LIMIT {
        return Err(CodecError::FrameTooLarge {
            len: payload.len() as u64,
            max: MAX_PAYLOAD_LIMIT,
        });
    }
    Ok(())
}

/// Appends the 9-byte header of a frame whose payload is `payload_len` bytes; the payload
/// must follow. For writers that build the payload in place (the load generator) and for
/// the encoder above. `payload_len` must not exceed [`MAX_PAYLOAD_LIMIT`].
pub fn put_header(dst: &mut BytesMut, kind: Kind, id: u32, payload_len: usize) {
    // Cannot truncate for lengths within MAX_PAYLOAD_LIMIT, which callers guarantee.
    dst.put_u32((payload_len + LENGTH_OVERHEAD) as u32);
    dst.put_u8(kind as u8);
    dst.put_u32(id);
}
