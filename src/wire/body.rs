//! The typed bodies of HELLO, ERROR and GOAWAY frames.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{ErrorCode, MAGIC, PROTOCOL_VERSION};

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

/// The options a REQUEST_EXT frame carries before the application's bytes:
///
/// ```text
/// offset  size  field
/// 0       1     flags       bit 0: idempotent; the other bits are 0 (receivers ignore them)
/// 1       4     timeout_ms  u32 big-endian: how long the caller waits for the answer, in
///                           milliseconds from when the request is read; 0: no limit given
/// 5       n     payload     the application's bytes
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// The request may run twice without harm, so it may be sent again after a failure
    /// whose outcome is unknown.
    pub idempotent: bool,
    /// How long the caller waits, in milliseconds; 0: no limit given.
    pub timeout_ms: u32,
}

impl RequestOptions {
    /// Bytes the options take before the payload.
    pub const LEN: usize = 5;

    /// Flag bit: idempotent.
    const IDEMPOTENT: u8 = 0x01;

    /// The REQUEST_EXT payload: these options, then `payload`.
    pub fn encode(&self, payload: &[u8]) -> Bytes {
        let mut buf = BytesMut::with_capacity(Self::LEN + payload.len());
        buf.put_u8(if self.idempotent { Self::IDEMPOTENT } else { 0 });
        buf.put_u32(self.timeout_ms);
        buf.put_slice(payload);
        buf.freeze()
    }

    /// Splits a REQUEST_EXT payload into its options and the application's bytes.
    ///
    /// # Errors
    /// [`BodyError`] when the payload is shorter than the 5 bytes of options.
    pub fn split(mut payload: Bytes) -> Result<(RequestOptions, Bytes), BodyError> {
        if payload.len() < Self::LEN {
            return Err(BodyError::new(
                "REQUEST_EXT",
                "shorter than its 5 bytes of options",
            ));
        }
        let flags = payload.get_u8();
        let timeout_ms = payload.get_u32();
        let options = RequestOptions {
            idempotent: flags & Self::IDEMPOTENT != 0,
            timeout_ms,
        };
        Ok((options, payload))
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
