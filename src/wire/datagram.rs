//! The datagram format: one courier frame per UDP datagram, behind a 13-byte header that
//! names the client's session (`docs/PROTOCOL.md`, "UDP").
//!
//! ```text
//! offset  size  field
//! 0       1     marker   0xC7: a courier datagram, format 1
//! 1       8     session  u64 big-endian, chosen at random by the client
//! 9       4     acked    u32 big-endian: client to server, every request id below it is
//!                        finished at the client (the server may forget it); server to
//!                        client, 0
//! 13      4     length   the frame's length field, as on a stream; it must count exactly
//!                        the rest of the datagram (5 + payload length)
//! 17      1     kind
//! 18      4     id
//! 22      n     payload
//! ```
//!
//! The frame keeps its length field although a datagram has its own length: a datagram
//! cut short (by a receive buffer too small, or a broken middlebox) is then told from a
//! whole one. Decoding costs one pass over a fixed 22-byte header and never copies the
//! payload, so a flood of garbage costs one failed decode per datagram.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Frame, Kind, HEADER_LEN};

/// The first byte of every courier datagram.
pub const DATAGRAM_MARKER: u8 = 0xC7;

/// Bytes before the frame: marker, session, acked.
pub const DATAGRAM_HEADER_LEN: usize = 13;

/// Bytes of a datagram that are not the message's payload: the datagram header and the
/// frame header.
pub const DATAGRAM_OVERHEAD: usize = DATAGRAM_HEADER_LEN + HEADER_LEN;

/// The largest UDP payload IPv4 can carry (65,535 less the 8-byte UDP and 20-byte IP
/// headers).
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// The largest message payload one datagram can carry.
pub const MAX_DATAGRAM_MESSAGE: usize = MAX_UDP_PAYLOAD - DATAGRAM_OVERHEAD;

/// The HELLO field tag that carries the server's address-validation cookie (UDP only).
pub const HELLO_COOKIE: u8 = 0x02;

/// One datagram: the session it belongs to, the client's acknowledgement floor, and the
/// frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The client's session id (the dedup key is this and the frame's request id).
    pub session: u64,
    /// Client to server: every request id below this one is finished at the client.
    pub acked: u32,
    /// The frame it carries.
    pub frame: Frame,
}

/// A datagram that is not a courier datagram, or not one this side accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// Shorter than the 22 bytes of the two headers.
    #[error("datagram of {len} bytes is shorter than the {DATAGRAM_OVERHEAD}-byte header")]
    TooShort {
        /// The datagram's size.
        len: usize,
    },
    /// The first byte is not [`DATAGRAM_MARKER`].
    #[error("not a courier datagram: first byte 0x{found:02x}, expected 0xc7")]
    BadMarker {
        /// The byte found.
        found: u8,
    },
    /// The frame's length field disagrees with the datagram's size.
    #[error("the frame's length field says {declared} bytes, the datagram holds {actual}")]
    LengthMismatch {
        /// What the length field says.
        declared: u32,
        /// What the datagram holds after the length field.
        actual: usize,
    },
    /// A kind byte no kind uses.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
}

impl Datagram {
    /// A datagram of `session` carrying `frame`.
    pub fn new(session: u64, acked: u32, frame: Frame) -> Datagram {
        Datagram {
            session,
            acked,
            frame,
        }
    }

    /// Bytes on the wire.
    pub fn encoded_len(&self) -> usize {
        DATAGRAM_OVERHEAD + self.frame.payload.len()
    }

    /// The datagram's bytes.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        buf.put_u8(DATAGRAM_MARKER);
        buf.put_u64(self.session);
        buf.put_u32(self.acked);
        // A datagram's payload is at most 64 KiB, so the length always fits a u32.
        buf.put_u32(5 + self.frame.payload.len() as u32);
        buf.put_u8(self.frame.kind as u8);
        buf.put_u32(self.frame.id);
        buf.put_slice(&self.frame.payload);
        buf.freeze()
    }

    /// Parses one datagram. The payload is a slice of `bytes` (no copy). The size of the
    /// payload is not checked here: the caller answers one too large with an ERROR that
    /// names its limit.
    ///
    /// # Errors
    /// [`DatagramError`] for anything but a whole courier datagram of a known kind.
    pub fn decode(bytes: Bytes) -> Result<Datagram, DatagramError> {
        let Some(header) = bytes.first_chunk::<DATAGRAM_OVERHEAD>() else {
            return Err(DatagramError::TooShort { len: bytes.len() });
        };
        if header[0] != DATAGRAM_MARKER {
            return Err(DatagramError::BadMarker { found: header[0] });
        }
        let be64 = |at: usize| header[at..at + 8].try_into().map_or(0, u64::from_be_bytes);
        let be32 = |at: usize| header[at..at + 4].try_into().map_or(0, u32::from_be_bytes);
        let declared = be32(13);
        let actual = bytes.len() - 17;
        if usize::try_from(declared).ok() != Some(actual) {
            return Err(DatagramError::LengthMismatch { declared, actual });
        }
        let kind = Kind::from_byte(header[17]).ok_or(DatagramError::UnknownKind(header[17]))?;
        let frame = Frame::new(kind, be32(18), bytes.slice(DATAGRAM_OVERHEAD..));
        Ok(Datagram::new(be64(1), be32(9), frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ErrorCode, Hello};

    const SESSION: u64 = 0x0102_0304_0506_0708;

    /// The rows of docs/PROTOCOL.md's "Datagram test vectors", as bytes.
    fn documented() -> Vec<Vec<u8>> {
        let doc = include_str!("../../docs/PROTOCOL.md");
        let start = doc.find("### Datagram test vectors").expect("the section");
        let end = start + doc[start..].find("\n## ").expect("the next section");
        doc[start..end]
            .lines()
            .filter(|line| line.starts_with('|') && line.contains('`'))
            .map(|line| {
                let hex: String = line.split('`').nth(1).unwrap().split_whitespace().collect();
                hex::decode(hex).expect("hex")
            })
            .collect()
    }

    /// What each row holds, in order.
    fn expected() -> Vec<Datagram> {
        vec![
            Datagram::new(SESSION, 0, Frame::request(1, &b"hi"[..])),
            Datagram::new(SESSION, 0, Frame::reply(1, &b"hi"[..])),
            Datagram::new(SESSION, 0, Frame::hello(&Hello::new(1200))),
            Datagram::new(SESSION, 5, Frame::request(7, Bytes::new())),
            Datagram::new(SESSION, 0, Frame::error(7, ErrorCode::HelloNeeded, "x")),
        ]
    }

    #[test]
    fn the_documented_vectors_decode_and_encode_byte_for_byte() {
        let rows = documented();
        assert_eq!(rows.len(), expected().len(), "one row per vector");
        for (bytes, datagram) in rows.into_iter().zip(expected()) {
            assert_eq!(
                Datagram::decode(Bytes::from(bytes.clone())).unwrap(),
                datagram
            );
            assert_eq!(datagram.encode().to_vec(), bytes, "{datagram:?}");
            assert_eq!(datagram.encoded_len(), bytes.len());
        }
    }

    #[test]
    fn every_malformed_datagram_is_refused_with_its_reason() {
        let good = documented().remove(0);
        let decode = |bytes: &[u8]| Datagram::decode(Bytes::copy_from_slice(bytes));
        assert_eq!(
            decode(&good[..21]),
            Err(DatagramError::TooShort { len: 21 })
        );
        let mut marker = good.clone();
        marker[0] = 0xC8;
        assert_eq!(
            decode(&marker),
            Err(DatagramError::BadMarker { found: 0xC8 })
        );
        assert_eq!(
            decode(&good[..23]),
            Err(DatagramError::LengthMismatch {
                declared: 7,
                actual: 6
            })
        );
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(
            decode(&longer),
            Err(DatagramError::LengthMismatch { .. })
        ));
        let mut kind = good;
        kind[17] = 0x42;
        assert_eq!(decode(&kind), Err(DatagramError::UnknownKind(0x42)));
    }

    #[test]
    fn the_largest_message_fills_the_largest_udp_datagram() {
        let datagram = Datagram::new(1, 0, Frame::reply(1, vec![0; MAX_DATAGRAM_MESSAGE]));
        assert_eq!(datagram.encode().len(), MAX_UDP_PAYLOAD);
    }
}
