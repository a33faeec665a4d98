//! The wire format: frames, their typed bodies, and the [`Codec`] that turns bytes into
//! frames and back.
//!
//! Every frame is a 9-byte header followed by the payload (see `docs/PROTOCOL.md`):
//!
//! ```text
//! offset  size  field
//! 0       4     length   u32 big-endian: bytes after this field (5 + payload length)
//! 4       1     kind     frame kind (HELLO, REQUEST, ...)
//! 5       4     id       u32 big-endian request id; 0 means "the whole connection"
//! 9       n     payload  n = length - 5 bytes
//! ```
//!
//! The decoder follows the `Decoder` contract of tokio-util: it returns `Ok(None)` on a
//! partial frame, consumes exactly one frame per `Some`, never panics on any input, and
//! checks the declared length against the maximum from the header alone. Unlike
//! `LengthDelimitedCodec` it never reserves the declared length up front: a peer that sends
//! a header declaring the maximum and then stalls costs only the bytes it really sent.
//! The buffer grows as bytes arrive.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Size of the fixed frame header: length (4), kind (1), id (4).
pub const HEADER_LEN: usize = 9;

/// Bytes of the header that the length field counts: kind (1) and id (4).
const LENGTH_OVERHEAD: usize = 5;

/// Magic bytes at the start of every HELLO payload, ASCII `COUR`. They only say "this is
/// courier"; the version has a field of its own.
pub const MAGIC: [u8; 4] = *b"COUR";

/// The protocol version this implementation speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// The HELLO field tag that carries the client's auth token.
pub const HELLO_AUTH_TOKEN: u8 = 0x01;

/// Largest HELLO payload either side accepts. Until the handshake is done a peer is
/// unknown, so it gets this small limit instead of the configured frame size.
pub const MAX_HELLO_PAYLOAD: usize = 4096;

/// The smallest max_frame a HELLO may announce: room for a GOAWAY (4 bytes) and an ERROR's
/// code with a few bytes of its text. Every frame a receiver gets fits its announced
/// max_frame, ERRORs included (their text is cut to fit), so a smaller one is refused.
pub const MIN_MAX_FRAME: usize = 16;

/// Largest payload the length field can describe.
pub const MAX_PAYLOAD_LIMIT: usize = u32::MAX as usize - LENGTH_OVERHEAD;

/// The kind byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Opens a connection: magic, version, maximum frame size, optional fields.
    Hello = 0x01,
    /// A request that expects exactly one REPLY or ERROR with the same id.
    Request = 0x02,
    /// The answer to the REQUEST with the same id.
    Reply = 0x03,
    /// A message that gets no reply.
    Oneway = 0x04,
    /// An error code and text, for a request id or (id 0) for the whole connection.
    Error = 0x05,
    /// Heartbeat; the peer answers with a PONG carrying the same id and payload.
    Ping = 0x06,
    /// The answer to a PING.
    Pong = 0x07,
    /// The server is draining; the payload names the last request id it will answer.
    GoAway = 0x08,
    /// Asks the server for its counters; answered by a REPLY with the same id whose
    /// payload is a JSON object (see `stats::Snapshot`).
    Stats = 0x09,
}

impl Kind {
    /// Every kind, in wire order. Handy for tests and documentation.
    pub const ALL: [Kind; 9] = [
        Kind::Hello,
        Kind::Request,
        Kind::Reply,
        Kind::Oneway,
        Kind::Error,
        Kind::Ping,
        Kind::Pong,
        Kind::GoAway,
        Kind::Stats,
    ];

    /// The kind for a wire byte, or `None` for a byte no kind uses.
    pub fn from_byte(byte: u8) -> Option<Kind> {
        Kind::ALL.get(usize::from(byte).wrapping_sub(1)).copied()
    }

    /// The name used in logs and error texts.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hello => "HELLO",
            Kind::Request => "REQUEST",
            Kind::Reply => "REPLY",
            Kind::Oneway => "ONEWAY",
            Kind::Error => "ERROR",
            Kind::Ping => "PING",
            Kind::Pong => "PONG",
            Kind::GoAway => "GOAWAY",
            Kind::Stats => "STATS",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One frame as it travels on the wire.
///
/// The payload is a [`Bytes`] slice of the read buffer, so decoding does not copy it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the frame is.
    pub kind: Kind,
    /// Request id; 0 for frames about the whole connection (HELLO, GOAWAY, connection
    /// errors).
    pub id: u32,
    /// The body; its meaning depends on `kind`.
    pub payload: Bytes,
}

impl Frame {
    /// A frame of any kind.
    pub fn new(kind: Kind, id: u32, payload: impl Into<Bytes>) -> Frame {
        Frame {
            kind,
            id,
            payload: payload.into(),
        }
    }

    /// A REQUEST.
    pub fn request(id: u32, payload: impl Into<Bytes>) -> Frame {
        Frame::new(Kind::Request, id, payload)
    }

    /// A REPLY.
    pub fn reply(id: u32, payload: impl Into<Bytes>) -> Frame {
        Frame::new(Kind::Reply, id, payload)
    }

    /// A ONEWAY message.
    pub fn oneway(id: u32, payload: impl Into<Bytes>) -> Frame {
        Frame::new(Kind::Oneway, id, payload)
    }

    /// A HELLO carrying `hello`.
    pub fn hello(hello: &Hello) -> Frame {
        Frame::new(Kind::Hello, 0, hello.encode())
    }

    /// An ERROR for request `id` (0: the whole connection).
    pub fn error(id: u32, code: ErrorCode, message: &str) -> Frame {
        let mut body = BytesMut::with_capacity(2 + message.len());
        body.put_u16(code.as_u16());
        body.put_slice(message.as_bytes());
        Frame::new(Kind::Error, id, body.freeze())
    }

    /// An ERROR whose payload fits in `max_payload` bytes: the text is cut (at a
    /// character boundary) to make room. The 2-byte code is always sent, even where
    /// `max_payload` is smaller.
    pub fn error_fitting(id: u32, code: ErrorCode, message: &str, max_payload: usize) -> Frame {
        let room = max_payload.saturating_sub(2);
        if message.len() <= room {
            return Frame::error(id, code, message);
        }
        let mut cut = room;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        Frame::error(id, code, &message[..cut])
    }

    /// A GOAWAY naming the last request id the server received: every request up to it
    /// is answered, and none after it was read.
    pub fn goaway(last_id: u32) -> Frame {
        Frame::new(
            Kind::GoAway,
            0,
            Bytes::copy_from_slice(&last_id.to_be_bytes()),
        )
    }

    /// Number of bytes this frame takes on the wire.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// Numeric error codes carried by ERROR frames. `docs/PROTOCOL.md` lists what each means
/// and whether the connection survives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1: a frame that is well-formed but not allowed here (e.g. REQUEST before HELLO,
    /// request id 0). The connection is closed.
    Protocol,
    /// 2: the HELLO did not start with the magic bytes. The connection is closed.
    BadMagic,
    /// 3: the peer speaks a protocol version this side does not. The connection is closed.
    UnsupportedVersion,
    /// 4: a frame's declared payload is larger than the receiver's maximum. The
    /// connection is closed.
    FrameTooLarge,
    /// 5: a kind byte no kind uses. The connection is closed.
    UnknownKind,
    /// 6: the server is at its connection limit. The connection is closed.
    ServerBusy,
    /// 7: no HELLO arrived within the handshake deadline. The connection is closed.
    HandshakeTimeout,
    /// 8: nothing happened on the connection for the idle timeout. The connection is closed.
    IdleTimeout,
    /// 9: a frame was started but not finished within the frame deadline. The connection
    /// is closed.
    FrameTimeout,
    /// 10: a REQUEST reused the id of a request still in flight. The connection survives;
    /// the earlier request is still answered.
    DuplicateId,
    /// 11: the handler failed for this request. The connection survives.
    HandlerFailed,
    /// 12: a length field below the 5-byte minimum. The connection is closed.
    BadLength,
    /// 13: a HELLO, ERROR or GOAWAY body that does not parse. The connection is closed.
    MalformedBody,
    /// 14: the handler cannot take the request now (every process busy and the queue
    /// full). The connection survives; the request may be sent again later.
    Busy,
    /// 15: the HELLO carried no auth token, or the wrong one. The connection is closed.
    AuthFailed,
    /// Any other code: 1000 and above are for applications' own handlers; codes below
    /// 1000 that this version does not know are passed through as they are.
    Other(u16),
}

impl ErrorCode {
    /// The code on the wire.
    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::Protocol => 1,
            ErrorCode::BadMagic => 2,
            ErrorCode::UnsupportedVersion => 3,
            ErrorCode::FrameTooLarge => 4,
            ErrorCode::UnknownKind => 5,
            ErrorCode::ServerBusy => 6,
            ErrorCode::HandshakeTimeout => 7,
            ErrorCode::IdleTimeout => 8,
            ErrorCode::FrameTimeout => 9,
            ErrorCode::DuplicateId => 10,
            ErrorCode::HandlerFailed => 11,
            ErrorCode::BadLength => 12,
            ErrorCode::MalformedBody => 13,
            ErrorCode::Busy => 14,
            ErrorCode::AuthFailed => 15,
            ErrorCode::Other(code) => code,
        }
    }

    /// Whether this code refuses a client's HELLO (or the connection before it): the
    /// server then reads nothing more from the client, so none of its requests was
    /// processed.
    pub fn refuses_hello(self) -> bool {
        matches!(
            self,
            ErrorCode::BadMagic
                | ErrorCode::UnsupportedVersion
                | ErrorCode::ServerBusy
                | ErrorCode::HandshakeTimeout
                | ErrorCode::MalformedBody
                | ErrorCode::AuthFailed
        )
    }

    /// The code for a wire value.
    pub fn from_u16(code: u16) -> ErrorCode {
        match code {
            1 => ErrorCode::Protocol,
            2 => ErrorCode::BadMagic,
            3 => ErrorCode::UnsupportedVersion,
            4 => ErrorCode::FrameTooLarge,
            5 => ErrorCode::UnknownKind,
            6 => ErrorCode::ServerBusy,
            7 => ErrorCode::HandshakeTimeout,
            8 => ErrorCode::IdleTimeout,
            9 => ErrorCode::FrameTimeout,
            10 => ErrorCode::DuplicateId,
            11 => ErrorCode::HandlerFailed,
            12 => ErrorCode::BadLength,
            13 => ErrorCode::MalformedBody,
            14 => ErrorCode::Busy,
            15 => ErrorCode::AuthFailed,
            other => ErrorCode::Other(other),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ErrorCode::Protocol => "protocol error",
            ErrorCode::BadMagic => "bad magic",
            ErrorCode::UnsupportedVersion => "unsupported version",
            ErrorCode::FrameTooLarge => "frame too large",
            ErrorCode::UnknownKind => "unknown frame kind",
            ErrorCode::ServerBusy => "server busy",
            ErrorCode::HandshakeTimeout => "handshake timeout",
            ErrorCode::IdleTimeout => "idle timeout",
            ErrorCode::FrameTimeout => "frame timeout",
            ErrorCode::DuplicateId => "duplicate request id",
            ErrorCode::HandlerFailed => "handler failed",
            ErrorCode::BadLength => "bad length",
            ErrorCode::MalformedBody => "malformed body",
            ErrorCode::Busy => "busy",
            ErrorCode::AuthFailed => "authentication failed",
            ErrorCode::Other(_) => "application error",
        };
        write!(f, "{name} ({})", self.as_u16())
    }
}

/// The body of an ERROR frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    /// What went wrong, as a number programs can match on.
    pub code: ErrorCode,
    /// What went wrong, for a person. Invalid UTF-8 on the wire is replaced, not rejected.
    pub message: String,
}

impl ErrorBody {
    /// Parses an ERROR payload.
    ///
    /// # Errors
    /// [`BodyError`] when the payload is shorter than the 2-byte code.
    pub fn parse(payload: &[u8]) -> Result<ErrorBody, BodyError> {
        let Some((code, text)) = payload.split_first_chunk::<2>() else {
            return Err(BodyError::new("ERROR", "shorter than its 2-byte code"));
        };
        Ok(ErrorBody {
            code: ErrorCode::from_u16(u16::from_be_bytes(*code)),
            message: String::from_utf8_lossy(text).into_owned(),
        })
    }
}

/// Parses a GOAWAY payload: the last request id the server will answer.
///
/// # Errors
/// [`BodyError`] when the payload is not exactly 4 bytes.
pub fn parse_goaway(payload: &[u8]) -> Result<u32, BodyError> {
    let bytes: [u8; 4] = payload
        .try_into()
        .map_err(|_| BodyError::new("GOAWAY", "not exactly 4 bytes"))?;
    Ok(u32::from_be_bytes(bytes))
}

/// The body of a HELLO frame.
///
/// ```text
/// offset  size  field
/// 0       4     magic      "COUR"
/// 4       2     version    u16 big-endian
/// 6       4     max_frame  u32 big-endian: the largest payload this side accepts
/// 10      ...   fields     zero or more of: tag u8, length u16 big-endian, value
/// ```
///
/// Fields let later versions add to HELLO (an authentication token, say) without a new
/// version: a receiver skips tags it does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version of the sender.
    pub version: u16,
    /// Largest payload the sender accepts in one frame.
    pub max_frame: u32,
    /// Optional fields as (tag, value), in wire order.
    pub fields: Vec<(u8, Bytes)>,
}

impl Hello {
    /// A HELLO for this implementation's version announcing `max_frame`.
    pub fn new(max_frame: u32) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            max_frame,
            fields: Vec::new(),
        }
    }

    /// The value of the first field with `tag`.
    pub fn field(&self, tag: u8) -> Option<&Bytes> {
        self.fields
            .iter()
            .find(|(found, _)| *found == tag)
            .map(|(_, value)| value)
    }

    /// The payload bytes.
    pub fn encode(&self) -> Bytes {
        let fields: usize = self.fields.iter().map(|(_, v)| 3 + v.len()).sum();
        let mut buf = BytesMut::with_capacity(10 + fields);
        buf.put_slice(&MAGIC);
        buf.put_u16(self.version);
        buf.put_u32(self.max_frame);
        for (tag, value) in &self.fields {
            buf.put_u8(*tag);
            // A field longer than u16::MAX cannot fit a HELLO (at most
            // MAX_HELLO_PAYLOAD bytes), so truncating here only affects misuse.
            let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
            buf.put_u16(len);
            buf.put_slice(&value[..usize::from(len)]);
        }
        buf.freeze()
    }

    /// Parses a HELLO payload, checking the magic but not the version (the caller decides
    /// what versions it accepts and says so in its ERROR).
    ///
    /// # Errors
    /// [`HelloError::BadMagic`] when the payload does not start with [`MAGIC`],
    /// [`HelloError::Malformed`] when it is too short or a field overruns it.
    pub fn parse(payload: &Bytes) -> Result<Hello, HelloError> {
        if payload.len() < 4 || payload[..4] != MAGIC {
            let found = &payload[..payload.len().min(4)];
            return Err(HelloError::BadMagic {
                found: hex::encode(found),
            });
        }
        if payload.len() < 10 {
            return Err(HelloError::Malformed(BodyError::new(
                "HELLO",
                "shorter than the 10 bytes of magic, version and max_frame",
            )));
        }
        let version = u16::from_be_bytes([payload[4], payload[5]]);
        let max_frame = u32::from_be_bytes([payload[6], payload[7], payload[8], payload[9]]);
        let mut fields = Vec::new();
        let mut rest = payload.slice(10..);
        while !rest.is_empty() {
            if rest.len() < 3 {
                return Err(HelloError::Malformed(BodyError::new(
                    "HELLO",
                    "a field header is cut short",
                )));
            }
            let tag = rest.get_u8();
            let len = usize::from(rest.get_u16());
            if rest.len() < len {
                return Err(HelloError::Malformed(BodyError::new(
                    "HELLO",
                    "a field's value runs past the end of the payload",
                )));
            }
            fields.push((tag, rest.split_to(len)));
        }
        Ok(Hello {
            version,
            max_frame,
            fields,
        })
    }
}

/// A HELLO payload that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The payload does not start with [`MAGIC`].
    #[error("bad magic: expected hex 434f5552 (\"COUR\"), got hex {found:?}")]
    BadMagic {
        /// The first bytes found, as hex.
        found: String,
    },
    /// The payload is cut short.
    #[error(transparent)]
    Malformed(BodyError),
}

/// A frame body that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {kind} body: {problem}")]
pub struct BodyError {
    kind: &'static str,
    problem: &'static str,
}

impl BodyError {
    fn new(kind: &'static str, problem: &'static str) -> BodyError {
        BodyError { kind, problem }
    }
}

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
    max_payload: usize,
}

impl Codec {
    /// A codec that accepts payloads up to `max_payload` bytes.
    pub fn new(max_payload: usize) -> Codec {
        Codec {
            max_payload: max_payload.min(MAX_PAYLOAD_LIMIT),
        }
    }

    /// The largest payload the decoder accepts.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Changes the largest payload the decoder accepts (the server raises it from the
    /// HELLO limit to the configured one once the handshake is done).
    pub fn set_max_payload(&mut self, max_payload: usize) {
        self.max_payload = max_payload.min(MAX_PAYLOAD_LIMIT);
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
        if payload_len > self.max_payload {
            return Err(CodecError::FrameTooLarge {
                len: payload_len as u64,
                max: self.max_payload,
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
        src.advance(HEADER_LEN);
        let payload = src.split_to(payload_len).freeze();
        Ok(Some(Frame { kind, id, payload }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let decoded = self.decode(src)?;
        at_eof(decoded, src)
    }
}

/// What a decoder returns at the end of the stream: the last whole item, the end (an
/// empty buffer), or `Truncated` when bytes of an unfinished item are left over.
fn at_eof<T>(decoded: Option<T>, src: &BytesMut) -> Result<Option<T>, CodecError> {
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
        if frame.payload.len() > MAX_PAYLOAD_LIMIT {
            return Err(CodecError::FrameTooLarge {
                len: frame.payload.len() as u64,
                max: MAX_PAYLOAD_LIMIT,
            });
        }
        dst.reserve(frame.encoded_len());
        put_header(dst, frame.kind, frame.id, frame.payload.len());
        dst.put_slice(&frame.payload);
        Ok(())
    }
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

/// Plain framing: a 4-byte big-endian length, then that many payload bytes; nothing else.
/// It is the default format of tokio-util's `LengthDelimitedCodec`, but like [`Codec`] it
/// checks the length before anything else and never reserves it up front.
#[derive(Debug, Clone)]
pub struct PlainCodec {
    max: usize,
}

impl PlainCodec {
    /// A codec that accepts messages up to `max` bytes.
    pub fn new(max: usize) -> PlainCodec {
        PlainCodec {
            max: max.min(u32::MAX as usize),
        }
    }
}

impl PlainCodec {
    /// The length of the message at the front of `src`, once all of it is there (the
    /// message is `src[4..4 + len]`). Nothing is consumed, as with [`Codec::peek`].
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
        if len > self.max {
            return Err(CodecError::MessageTooLarge {
                len: len as u64,
                max: self.max,
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
        src.advance(4);
        Ok(Some(src.split_to(len).freeze()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        let decoded = self.decode(src)?;
        at_eof(decoded, src)
    }
}

impl Encoder<Bytes> for PlainCodec {
    type Error = CodecError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        let len = u32::try_from(payload.len()).map_err(|_| CodecError::MessageTooLarge {
            len: payload.len() as u64,
            max: u32::MAX as usize,
        })?;
        dst.reserve(4 + payload.len());
        dst.put_u32(len);
        dst.put_slice(&payload);
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes hex with spaces, as the vectors are written in docs/PROTOCOL.md.
    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).expect("test vector is valid hex")
    }

    fn encode(frame: &Frame) -> Vec<u8> {
        let mut buf = BytesMut::new();
        Codec::new(MAX_PAYLOAD_LIMIT)
            .encode(frame.clone(), &mut buf)
            .expect("encode");
        buf.to_vec()
    }

    /// Decodes every frame in `bytes` (fed in one piece) and asserts nothing is left over.
    fn decode_all(codec: &mut Codec, bytes: &[u8]) -> Vec<Frame> {
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = codec.decode(&mut buf).expect("decode") {
            frames.push(frame);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        frames
    }

    /// HELLO, version 1, max_frame 65536, one field: tag 0x01, 3 bytes "abc".
    const HELLO_WITH_FIELD: &str =
        "00 00 00 15 01 00 00 00 00 43 4f 55 52 00 01 00 01 00 00 01 00 03 61 62 63";

    /// The test vectors of docs/PROTOCOL.md, section "Test vectors", byte for byte.
    fn vectors() -> Vec<(Frame, &'static str)> {
        vec![
            (
                Frame::hello(&Hello::new(1_048_576)),
                "00 00 00 0f 01 00 00 00 00 43 4f 55 52 00 01 00 10 00 00",
            ),
            (
                Frame::request(1, &b"hi"[..]),
                "00 00 00 07 02 00 00 00 01 68 69",
            ),
            (Frame::reply(1, Bytes::new()), "00 00 00 05 03 00 00 00 01"),
            (
                Frame::oneway(0, &b"log"[..]),
                "00 00 00 08 04 00 00 00 00 6c 6f 67",
            ),
            (
                Frame::error(7, ErrorCode::FrameTooLarge, "too big"),
                "00 00 00 0e 05 00 00 00 07 00 04 74 6f 6f 20 62 69 67",
            ),
            (
                Frame::new(Kind::Ping, 3, &b"\x01"[..]),
                "00 00 00 06 06 00 00 00 03 01",
            ),
            (
                Frame::new(Kind::Pong, 3, &b"\x01"[..]),
                "00 00 00 06 07 00 00 00 03 01",
            ),
            (Frame::goaway(42), "00 00 00 09 08 00 00 00 00 00 00 00 2a"),
        ]
    }

    /// The hex strings of the "Test vectors" table in docs/PROTOCOL.md, in order.
    fn documented_vectors() -> Vec<String> {
        let doc = include_str!("../docs/PROTOCOL.md");
        let section = doc
            .split("## Test vectors")
            .nth(1)
            .expect("PROTOCOL.md has a Test vectors section");
        section
            .lines()
            .filter(|line| line.starts_with('|') && line.contains('`'))
            .map(|line| line.split('`').nth(1).unwrap().to_owned())
            .collect()
    }

    #[test]
    fn protocol_document_lists_exactly_the_vectors_tested_here() {
        let mut tested: Vec<String> = vectors().iter().map(|(_, wire)| wire.to_string()).collect();
        tested.push(HELLO_WITH_FIELD.to_owned());
        assert_eq!(documented_vectors(), tested);
    }

    #[test]
    fn test_vectors_encode_byte_for_byte() {
        for (frame, wire) in vectors() {
            assert_eq!(encode(&frame), unhex(wire), "encoding {frame:?}");
        }
    }

    #[test]
    fn test_vectors_decode_to_their_frames() {
        for (frame, wire) in vectors() {
            let decoded = decode_all(&mut Codec::new(1024), &unhex(wire));
            assert_eq!(decoded, vec![frame]);
        }
    }

    #[test]
    fn hello_vector_with_a_field_parses() {
        // HELLO, version 1, max_frame 65536, one field: tag 0x01, 3 bytes "abc".
        let wire =
            unhex("00 00 00 15 01 00 00 00 00 43 4f 55 52 00 01 00 01 00 00 01 00 03 61 62 63");
        let frames = decode_all(&mut Codec::new(1024), &wire);
        let hello = Hello::parse(&frames[0].payload).expect("valid HELLO");
        assert_eq!(hello.version, 1);
        assert_eq!(hello.max_frame, 65_536);
        assert_eq!(hello.fields, vec![(1, Bytes::from_static(b"abc"))]);
        assert_eq!(Frame::hello(&hello).payload, frames[0].payload);
    }

    #[test]
    fn hello_with_wrong_magic_is_rejected_with_what_was_found() {
        let err = Hello::parse(&Bytes::from_static(b"GET / HTTP")).unwrap_err();
        assert_eq!(
            err,
            HelloError::BadMagic {
                found: "47455420".into()
            }
        );
    }

    #[test]
    fn hello_with_a_field_overrunning_the_payload_is_malformed() {
        let mut body = BytesMut::from(&Hello::new(10).encode()[..]);
        body.put_u8(1);
        body.put_u16(10);
        body.put_slice(b"short");
        assert!(matches!(
            Hello::parse(&body.freeze()),
            Err(HelloError::Malformed(_))
        ));
    }

    #[test]
    fn error_body_round_trips_and_short_bodies_are_rejected() {
        let frame = Frame::error(5, ErrorCode::Other(1234), "no such key");
        let body = ErrorBody::parse(&frame.payload).unwrap();
        assert_eq!(body.code, ErrorCode::Other(1234));
        assert_eq!(body.message, "no such key");
        assert!(ErrorBody::parse(&[0]).is_err());
        for code in 1..=15 {
            assert_eq!(ErrorCode::from_u16(code).as_u16(), code);
            assert!(!matches!(ErrorCode::from_u16(code), ErrorCode::Other(_)));
        }
    }

    #[test]
    fn goaway_body_must_be_four_bytes() {
        assert_eq!(parse_goaway(&Frame::goaway(9).payload).unwrap(), 9);
        assert!(parse_goaway(&[0, 0, 9]).is_err());
    }

    fn sample_stream() -> (Vec<Frame>, Vec<u8>) {
        let frames = vec![
            Frame::hello(&Hello::new(1024)),
            Frame::request(1, &b"first"[..]),
            Frame::request(2, Bytes::new()),
            Frame::oneway(3, vec![0xAB; 300]),
            Frame::error(4, ErrorCode::HandlerFailed, "boom"),
        ];
        let bytes = frames.iter().flat_map(encode).collect();
        (frames, bytes)
    }

    #[test]
    fn every_split_point_of_a_stream_decodes_the_same_frames() {
        let (frames, bytes) = sample_stream();
        for cut in 0..=bytes.len() {
            let mut codec = Codec::new(1024);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for part in [&bytes[..cut], &bytes[cut..]] {
                buf.extend_from_slice(part);
                while let Some(frame) = codec.decode(&mut buf).unwrap() {
                    got.push(frame);
                }
            }
            assert_eq!(got, frames, "split at byte {cut}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn one_byte_at_a_time_decodes_the_same_frames() {
        let (frames, bytes) = sample_stream();
        let mut codec = Codec::new(1024);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in bytes {
            buf.put_u8(byte);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                got.push(frame);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn many_frames_coalesced_in_one_read_all_decode() {
        let frames: Vec<Frame> = (1..=1000u32)
            .map(|id| Frame::request(id, id.to_be_bytes().to_vec()))
            .collect();
        let bytes: Vec<u8> = frames.iter().flat_map(encode).collect();
        assert_eq!(decode_all(&mut Codec::new(16), &bytes), frames);
    }

    #[test]
    fn payload_of_exactly_the_maximum_is_accepted() {
        let frame = Frame::request(1, vec![7; 100]);
        assert_eq!(
            decode_all(&mut Codec::new(100), &encode(&frame)),
            vec![frame]
        );
    }

    #[test]
    fn oversize_is_rejected_from_the_header_alone_naming_the_limit() {
        let mut codec = Codec::new(100);
        // Header of a REQUEST id 9 declaring 101 payload bytes, and no payload yet.
        let mut buf = BytesMut::from(&unhex("00 00 00 6a 02 00 00 00 09")[..]);
        let capacity_before = buf.capacity();
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, CodecError::FrameTooLarge { len: 101, max: 100 }),
            "{err:?}"
        );
        assert_eq!(err.error_code(), Some(ErrorCode::FrameTooLarge));
        assert!(err.to_string().contains("limit is 100 bytes"), "{err}");
        assert_eq!(buf.capacity(), capacity_before, "decoder must not allocate");
    }

    #[test]
    fn a_header_declaring_the_maximum_does_not_reserve_it() {
        let mut codec = Codec::new(64 << 20);
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(&unhex("04 00 00 05 02 00 00 00 01 aa bb"));
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() < 1024, "capacity grew to {}", buf.capacity());
    }

    #[test]
    fn oversize_is_rejected_from_the_four_length_bytes_alone() {
        for cut in 4..HEADER_LEN {
            let mut buf = BytesMut::from(&unhex("ff ff ff ff 02 00 00 00 01")[..cut]);
            let err = Codec::new(1 << 20).decode(&mut buf).unwrap_err();
            assert!(
                matches!(err, CodecError::FrameTooLarge { len: 0xFFFF_FFFA, max } if max == 1 << 20),
                "{cut} bytes: {err:?}"
            );
        }
        // Three bytes of the length say nothing yet.
        let mut buf = BytesMut::from(&unhex("ff ff ff")[..]);
        assert!(Codec::new(1 << 20).decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn all_ones_length_is_too_large() {
        let mut buf = BytesMut::from(&unhex("ff ff ff ff 02 00 00 00 01")[..]);
        let err = Codec::new(1 << 20).decode(&mut buf).unwrap_err();
        assert!(matches!(err, CodecError::FrameTooLarge { len, .. } if len == 0xFFFF_FFFA));
    }

    #[test]
    fn length_below_five_is_rejected_after_four_bytes() {
        for len in 0..5u32 {
            let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
            let err = Codec::new(100).decode(&mut buf).unwrap_err();
            assert!(matches!(err, CodecError::BadLength { len: l } if l == len));
        }
    }

    #[test]
    fn unknown_kind_is_rejected_with_its_byte_and_id() {
        for kind in [0x00, 0x0a, 0x7f, 0xff] {
            let mut buf =
                BytesMut::from(&unhex(&format!("00 00 00 05 {kind:02x} 00 00 00 0c"))[..]);
            let err = Codec::new(100).decode(&mut buf).unwrap_err();
            assert!(
                matches!(err, CodecError::UnknownKind { kind: k, id: 12 } if k == kind),
                "{err:?}"
            );
        }
    }

    #[test]
    fn truncated_header_at_eof_is_an_error() {
        for cut in 1..HEADER_LEN {
            let bytes = encode(&Frame::request(1, &b"x"[..]));
            let mut buf = BytesMut::from(&bytes[..cut]);
            let err = Codec::new(100).decode_eof(&mut buf).unwrap_err();
            assert!(matches!(err, CodecError::Truncated { buffered } if buffered == cut));
        }
    }

    #[test]
    fn truncated_payload_at_eof_is_an_error() {
        let bytes = encode(&Frame::request(1, &b"hello"[..]));
        let mut buf = BytesMut::from(&bytes[..bytes.len() - 2]);
        let err = Codec::new(100).decode_eof(&mut buf).unwrap_err();
        assert!(
            matches!(err, CodecError::Truncated { buffered: 12 }),
            "{err:?}"
        );
    }

    #[test]
    fn clean_eof_is_the_end_of_the_stream() {
        assert!(Codec::new(100)
            .decode_eof(&mut BytesMut::new())
            .unwrap()
            .is_none());
    }

    #[test]
    fn plain_messages_round_trip_across_every_split_point() {
        let messages = [
            Bytes::from_static(b"one"),
            Bytes::new(),
            Bytes::from(vec![7; 300]),
        ];
        let mut bytes = BytesMut::new();
        for message in &messages {
            PlainCodec::new(0)
                .encode(message.clone(), &mut bytes)
                .unwrap();
        }
        assert_eq!(&bytes[..7], &[0, 0, 0, 3, b'o', b'n', b'e']);
        for cut in 0..=bytes.len() {
            let mut codec = PlainCodec::new(300);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for part in [&bytes[..cut], &bytes[cut..]] {
                buf.extend_from_slice(part);
                while let Some(message) = codec.decode(&mut buf).unwrap() {
                    got.push(message);
                }
            }
            assert_eq!(got, messages, "split at {cut}");
        }
    }

    #[test]
    fn plain_length_over_the_limit_is_rejected_from_the_prefix_alone() {
        let mut buf = BytesMut::from(&[0, 0, 1, 0][..]);
        let err = PlainCodec::new(255).decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, CodecError::MessageTooLarge { len: 256, max: 255 }),
            "{err:?}"
        );
        assert!(err.to_string().contains("limit is 255"), "{err}");
    }

    #[test]
    fn plain_truncated_at_eof_is_an_error() {
        let mut buf = BytesMut::from(&[0, 0, 0, 5, 1, 2][..]);
        let err = PlainCodec::new(10).decode_eof(&mut buf).unwrap_err();
        assert!(
            matches!(err, CodecError::Truncated { buffered: 6 }),
            "{err:?}"
        );
    }

    #[test]
    fn raw_codec_hands_on_whatever_is_buffered() {
        let mut buf = BytesMut::from(&b"half a mess"[..]);
        assert_eq!(RawCodec.decode(&mut buf).unwrap().unwrap(), "half a mess");
        assert!(RawCodec.decode(&mut buf).unwrap().is_none());
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (
            prop::sample::select(Kind::ALL.to_vec()),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..200),
        )
            .prop_map(|(kind, id, payload)| Frame::new(kind, id, payload))
    }

    proptest! {
        #[test]
        fn any_frames_cut_into_any_chunks_decode_back(
            frames in prop::collection::vec(arb_frame(), 0..20),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        ) {
            let bytes: Vec<u8> = frames.iter().flat_map(encode).collect();
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            points.push(0);
            points.push(bytes.len());
            points.sort_unstable();
            let mut codec = Codec::new(200);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for pair in points.windows(2) {
                buf.extend_from_slice(&bytes[pair[0]..pair[1]]);
                while let Some(frame) = codec.decode(&mut buf).unwrap() {
                    got.push(frame);
                }
            }
            prop_assert!(codec.decode_eof(&mut buf).unwrap().is_none());
            prop_assert_eq!(got, frames);
        }

        #[test]
        fn arbitrary_bytes_decode_only_to_frames_that_re_encode_to_them(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut codec = Codec::new(64);
            let mut buf = BytesMut::from(&bytes[..]);
            let mut consumed = 0;
            // Decode until the codec errors or wants more; a panic fails the test, and
            // every frame it does return must be exactly the bytes it consumed.
            while let Ok(Some(frame)) = codec.decode(&mut buf) {
                let used = bytes.len() - buf.len() - consumed;
                prop_assert_eq!(&encode(&frame)[..], &bytes[consumed..consumed + used]);
                consumed += used;
            }
            if let Ok(hello) = Hello::parse(&Bytes::from(bytes.clone())) {
                prop_assert_eq!(&bytes[..4], &MAGIC[..]);
                prop_assert!(hello.fields.len() <= bytes.len());
            }
            if let Ok(body) = ErrorBody::parse(&bytes) {
                prop_assert_eq!(body.code.as_u16(), u16::from_be_bytes([bytes[0], bytes[1]]));
            }
        }
    }
}
