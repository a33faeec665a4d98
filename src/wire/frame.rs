//! Frame kinds, frames, and the error codes ERROR frames carry.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::{Hello, HEADER_LEN};

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
    /// A REQUEST with options before its payload: flags (idempotent) and the caller's
    /// timeout ([`RequestOptions`](super::RequestOptions)). Answered as a REQUEST is. Sent
    /// only to a server whose HELLO carries [`HELLO_REQUEST_OPTIONS`](super::HELLO_REQUEST_OPTIONS).
    RequestExt = 0x0a,
}

impl Kind {
    /// Every kind, in wire order. Handy for tests and documentation.
    pub const ALL: [Kind; 10] = [
        Kind::Hello,
        Kind::Request,
        Kind::Reply,
        Kind::Oneway,
        Kind::Error,
        Kind::Ping,
        Kind::Pong,
        Kind::GoAway,
        Kind::Stats,
        Kind::RequestExt,
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
            Kind::RequestExt => "REQUEST_EXT",
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
    /// 16 (UDP): the request ran once, but its reply was evicted from the server's reply
    /// cache before this retransmission came; it is not run again.
    ReplyLost,
    /// 17 (UDP): the server has no session of this id, or the datagram came from an
    /// address the session has not validated: the client must do the HELLO exchange.
    HelloNeeded,
    /// 18: outcome unknown. A router sent the request to a backend, and that backend's
    /// connection ended (or the call timed out) before it answered: the request may or
    /// may not have been processed. The connection survives.
    OutcomeUnknown,
    /// 19: no backend available. A router had no healthy backend to send the request to;
    /// it was sent nowhere, so it is safe to send again. The connection survives.
    NoBackend,
    /// 20: deadline exceeded. The caller's timeout (a REQUEST_EXT's `timeout_ms`) passed
    /// before the handler finished, so the server dropped the work. The connection survives.
    DeadlineExceeded,
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
            ErrorCode::ReplyLost => 16,
            ErrorCode::HelloNeeded => 17,
            ErrorCode::OutcomeUnknown => 18,
            ErrorCode::NoBackend => 19,
            ErrorCode::DeadlineExceeded => 20,
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
            16 => ErrorCode::ReplyLost,
            17 => ErrorCode::HelloNeeded,
            18 => ErrorCode::OutcomeUnknown,
            19 => ErrorCode::NoBackend,
            20 => ErrorCode::DeadlineExceeded,
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
            ErrorCode::ReplyLost => "reply lost",
            ErrorCode::HelloNeeded => "hello needed",
            ErrorCode::OutcomeUnknown => "outcome unknown",
            ErrorCode::NoBackend => "no backend available",
            ErrorCode::DeadlineExceeded => "deadline exceeded",
            ErrorCode::Other(_) => "application error",
        };
        write!(f, "{name} ({})", self.as_u16())
    }
}
