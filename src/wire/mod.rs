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
//!
//! Layout: `frame.rs` (kinds, frames, error codes), `body.rs` (the HELLO, ERROR and
//! GOAWAY bodies), `codec.rs` (the courier [`Codec`]), `plain.rs` (the plain and raw
//! codecs), `datagram.rs` (one frame per UDP datagram, with its session header). This layer imports nothing else of the crate.

mod body;
mod codec;
mod datagram;
mod frame;
mod plain;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Encoder;

pub use body::{parse_goaway, BodyError, ErrorBody, Hello, HelloError, RequestOptions};
pub use codec::{put_header, Codec, CodecError};
pub use datagram::{
    Datagram, DatagramError, DATAGRAM_HEADER_LEN, DATAGRAM_MARKER, DATAGRAM_OVERHEAD, HELLO_COOKIE,
    MAX_DATAGRAM_MESSAGE, MAX_UDP_PAYLOAD,
};
pub use frame::{ErrorCode, Frame, Kind};
pub use plain::{PlainCodec, RawCodec};

/// An encoder that can leave a large payload where it is. It writes a message's framing
/// (and any small payload, whole) into `dst` as [`Encoder::encode`] does, but hands a
/// payload of [`WRITE_APART`] bytes or more back instead of copying it: the writer sends it
/// after `dst`'s bytes as a slice of its own, in one vectored write. The server's echo
/// reply to a 1 MiB request was a 1 MiB copy into the write buffer.
pub trait EncodeApart<T>: Encoder<T, Error = CodecError> {
    /// The length of `item`'s payload.
    fn payload_len(item: &T) -> usize;

    /// Encodes only `item`'s framing into `dst` and returns its payload, to be written
    /// right after.
    ///
    /// # Errors
    /// As [`Encoder::encode`]: a payload the length field cannot describe.
    fn encode_framing(&mut self, item: T, dst: &mut BytesMut) -> Result<Bytes, CodecError>;

    /// Encodes a small `item` whole into `dst` (`None`), or a large one's framing only,
    /// returning its payload.
    ///
    /// # Errors
    /// As [`Encoder::encode`].
    fn encode_apart(&mut self, item: T, dst: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        if Self::payload_len(&item) < WRITE_APART {
            self.encode(item, dst).map(|()| None)
        } else {
            self.encode_framing(item, dst).map(Some)
        }
    }
}

/// Payloads from this size up are written as slices of their own ([`EncodeApart`]):
/// below it, copying costs less than the bookkeeping of another slice, and small replies
/// stay together in one buffer.
pub const WRITE_APART: usize = 16 * 1024;

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

/// The HELLO field tag (empty value) by which a server says it accepts REQUEST_EXT
/// frames. A client sends REQUEST_EXT only to a server whose HELLO carries it.
pub const HELLO_REQUEST_OPTIONS: u8 = 0x02;

/// Largest HELLO payload either side accepts. Until the handshake is done a peer is
/// unknown, so it gets this small limit instead of the configured frame size.
pub const MAX_HELLO_PAYLOAD: usize = 4096;

/// The smallest max_frame a HELLO may announce: room for a GOAWAY (4 bytes) and an ERROR's
/// code with a few bytes of its text. Every frame a receiver gets fits its announced
/// max_frame, ERRORs included (their text is cut to fit), so a smaller one is refused.
pub const MIN_MAX_FRAME: usize = 16;

/// Largest payload the length field can describe.
pub const MAX_PAYLOAD_LIMIT: usize = u32::MAX as usize - LENGTH_OVERHEAD;

#[cfg(test)]
mod tests;
