//! What comes back: replies found at the front of the read buffer, in either framing, and
//! checked where they lie.

use std::ops::Range;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::wire::{Codec, CodecError, Kind, PlainCodec, HEADER_LEN};

/// A reply found at the front of the read buffer.
pub(super) struct Parsed {
    /// Its request id (0 in plain framing, which has none).
    pub(super) id: u32,
    /// Where its payload lies in the buffer; `None` when it is not a REPLY (an ERROR).
    pub(super) payload: Option<Range<usize>>,
    /// Its whole length on the wire.
    pub(super) len: usize,
}

/// How the bench reads a reply in either framing, without taking it out of the buffer.
pub(super) trait ReplyParser {
    /// The reply at the front of `src`, if all of it is there.
    fn parse(&self, src: &[u8]) -> Result<Option<Parsed>, CodecError>;
}

impl ReplyParser for Codec {
    fn parse(&self, src: &[u8]) -> Result<Option<Parsed>, CodecError> {
        Ok(self.peek(src)?.map(|(kind, id, len)| Parsed {
            id,
            payload: (kind == Kind::Reply).then_some(HEADER_LEN..HEADER_LEN + len),
            len: HEADER_LEN + len,
        }))
    }
}

impl ReplyParser for PlainCodec {
    fn parse(&self, src: &[u8]) -> Result<Option<Parsed>, CodecError> {
        Ok(self.peek(src)?.map(|len| Parsed {
            id: 0,
            payload: Some(4..4 + len),
            len: 4 + len,
        }))
    }
}

/// One connection's replies, checked where they lie in the read buffer: a reply's id and
/// payload are all the check needs, so none is split off into a `Bytes` of its own (with
/// `FramedRead` that split and its reference count were 14 % of the load generator's CPU
/// at pipeline 64).
pub(super) struct ReplyBuffer<R, P> {
    reader: R,
    buf: BytesMut,
    /// Bytes at the front of `buf` already checked: dropped before the next read, not
    /// after each reply (`BytesMut::advance` per reply was 4 % of the load generator's
    /// instructions at pipeline 16).
    checked: usize,
    parser: P,
}

impl<R: AsyncRead + Unpin, P: ReplyParser> ReplyBuffer<R, P> {
    /// Replies read from `reader`, found by `parser`.
    pub(super) fn new(reader: R, parser: P) -> Self {
        ReplyBuffer {
            reader,
            buf: BytesMut::with_capacity(64 * 1024),
            checked: 0,
            parser,
        }
    }

    /// Reads what has arrived; 0 at the end of the stream. Cancel safe, as `read_buf` is.
    pub(super) async fn read_more(&mut self) -> std::io::Result<usize> {
        self.buf.advance(std::mem::take(&mut self.checked));
        if self.buf.capacity() - self.buf.len() < 4096 {
            // Takes back the space of consumed replies when it can, instead of growing.
            self.buf.reserve(64 * 1024);
        }
        self.reader.read_buf(&mut self.buf).await
    }

    /// The reply at the front of the buffer, if all of it has arrived.
    pub(super) fn parse(&self) -> Result<Option<Parsed>, CodecError> {
        self.parser.parse(&self.buf[self.checked..])
    }

    /// The bytes at `range` of the reply [`ReplyBuffer::parse`] found: its payload.
    pub(super) fn bytes(&self, range: Range<usize>) -> &[u8] {
        &self.buf[self.checked..][range]
    }

    /// Passes the front `len` bytes: the reply just checked.
    pub(super) fn consume(&mut self, len: usize) {
        self.checked += len;
    }

    /// The error for a stream that ended while replies were awaited.
    pub(super) fn at_eof(&self) -> CodecError {
        match self.buf.len() - self.checked {
            0 => CodecError::Io(std::io::ErrorKind::UnexpectedEof.into()),
            buffered => CodecError::Truncated { buffered },
        }
    }
}
