//! The HELLO exchange, client side, and turning what the server sends into errors.

use bytes::{Bytes, BytesMut};
use futures::SinkExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;
use tokio_util::codec::{Decoder, FramedRead, FramedWrite};

use super::ClientError;
use crate::wire::{
    Codec, CodecError, ErrorBody, ErrorCode, Frame, Hello, Kind, HEADER_LEN, HELLO_AUTH_TOKEN,
    MAGIC, MAX_HELLO_PAYLOAD, PROTOCOL_VERSION,
};

/// The HELLO exchange, client side: reads the server's HELLO (or the ERROR it sends
/// instead) and answers with ours, announcing `max_frame` and presenting `auth_token`.
/// The one exchange every client of this crate does (the [`Client`](super::Client) and
/// the load generator alike).
///
/// Returns the stream framed both ways (the reader now accepts payloads up to
/// `max_frame`) and the server's max_frame. The server sends nothing more until it has
/// our HELLO, so the reader holds no buffered bytes when this returns.
///
/// The server's first bytes are looked at before they are decoded: a peer that speaks
/// something else (HTTP, SSH, TLS, plain framing) is named as such, with those bytes, and
/// one that says nothing by `deadline` is told apart from a slow TCP connect.
///
/// # Errors
/// [`ClientError::Server`] when the server answers with an ERROR (busy, say),
/// [`ClientError::NotCourier`] when its first bytes are not courier,
/// [`ClientError::NoHello`] when it sends nothing by `deadline`, [`ClientError::Tls`]
/// when it says it speaks TLS, [`ClientError::Protocol`] for a bad HELLO,
/// [`ClientError::Closed`] when it closes first or sending fails.
pub async fn exchange<R, W>(
    read_half: R,
    write_half: W,
    max_frame: usize,
    auth_token: Option<&Bytes>,
    deadline: Instant,
) -> Result<(FramedRead<R, Codec>, FramedWrite<W, Codec>, usize), ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (reader, writer, hello) =
        exchange_hello(read_half, write_half, max_frame, auth_token, deadline).await?;
    Ok((reader, writer, hello.max_frame as usize))
}

/// [`exchange`], returning the server's whole HELLO (its fields say what it supports).
///
/// # Errors
/// As [`exchange`].
pub async fn exchange_hello<R, W>(
    read_half: R,
    write_half: W,
    max_frame: usize,
    auth_token: Option<&Bytes>,
    deadline: Instant,
) -> Result<(FramedRead<R, Codec>, FramedWrite<W, Codec>, Hello), ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = FramedRead::new(read_half, Codec::new(MAX_HELLO_PAYLOAD));
    let mut writer = FramedWrite::new(write_half, Codec::new(0));
    let head = first_bytes(reader.get_mut(), deadline).await?;
    let (first, rest) = first_frame(reader.get_mut(), head, deadline).await?;
    // Empty in practice: the server says nothing more until it has our HELLO.
    reader.read_buffer_mut().extend_from_slice(&rest);
    match first.kind {
        Kind::Hello => {}
        Kind::Error => return Err(hello_error(&first.payload)),
        other => {
            return Err(ClientError::Protocol(format!(
                "expected HELLO from the server, got {other}"
            )))
        }
    }
    let hello =
        Hello::parse(&first.payload).map_err(|err| ClientError::Protocol(err.to_string()))?;
    if hello.version != PROTOCOL_VERSION {
        return Err(ClientError::Protocol(format!(
            "the server speaks protocol version {}, this client speaks {PROTOCOL_VERSION}",
            hello.version
        )));
    }
    let mut ours = Hello::new(u32::try_from(max_frame).unwrap_or(u32::MAX));
    if let Some(token) = auth_token {
        ours.fields.push((HELLO_AUTH_TOKEN, token.clone()));
    }
    writer
        .send(Frame::hello(&ours))
        .await
        .map_err(|err| ClientError::Closed {
            reason: format!("sending HELLO failed: {err}"),
        })?;
    reader.decoder_mut().set_max_payload(max_frame);
    Ok((reader, writer, hello))
}

/// Reads the peer's first bytes (at least a frame header's worth, unless it closes) and
/// checks they can start a courier server's first frame: a HELLO, or an ERROR about the
/// whole connection, no larger than a HELLO may be.
async fn first_bytes<R: AsyncRead + Unpin>(
    read_half: &mut R,
    deadline: Instant,
) -> Result<Vec<u8>, ClientError> {
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    // A HELLO's magic is part of the check; an ERROR may be shorter than that.
    let enough = |head: &[u8]| {
        head.len() >= HEADER_LEN + MAGIC.len()
            || (head.len() >= HEADER_LEN && head[4] != Kind::Hello as u8)
    };
    while !enough(&head) {
        match tokio::time::timeout_at(deadline, read_half.read(&mut buf)).await {
            Err(_) if head.is_empty() => return Err(ClientError::NoHello),
            Err(_) => return Err(ClientError::NotCourier { first: head.into() }),
            Ok(Ok(0)) if head.is_empty() => {
                return Err(ClientError::Closed {
                    reason: "the server closed the connection before its HELLO".into(),
                })
            }
            Ok(Ok(0)) => break,
            Ok(Ok(read)) => head.extend_from_slice(&buf[..read]),
            Ok(Err(err)) => {
                return Err(ClientError::Closed {
                    reason: err.to_string(),
                })
            }
        }
        if !could_be_courier(&head) {
            return Err(ClientError::NotCourier { first: head.into() });
        }
    }
    if !could_be_courier(&head) {
        return Err(ClientError::NotCourier { first: head.into() });
    }
    Ok(head)
}

/// Decodes the first frame from `head` and what follows it, reading more by `deadline`
/// as needed; returns it and the bytes after it.
async fn first_frame<R: AsyncRead + Unpin>(
    read_half: &mut R,
    head: Vec<u8>,
    deadline: Instant,
) -> Result<(Frame, BytesMut), ClientError> {
    let mut codec = Codec::new(MAX_HELLO_PAYLOAD);
    let mut buf = BytesMut::from(&head[..]);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => return Ok((frame, buf)),
            Ok(None) => {}
            Err(err) => return Err(protocol_error(err)),
        }
        match tokio::time::timeout_at(deadline, read_half.read_buf(&mut buf)).await {
            Err(_) => return Err(ClientError::NotCourier { first: head.into() }),
            Ok(Ok(0)) => {
                return Err(ClientError::Closed {
                    reason: "the server closed the connection in the middle of its HELLO".into(),
                })
            }
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                return Err(ClientError::Closed {
                    reason: err.to_string(),
                })
            }
        }
    }
}

/// Whether `head` can begin a courier server's first frame: a length no larger than a
/// HELLO's, the kind HELLO (then the magic) or ERROR, and id 0. Checks the bytes there
/// are.
pub(crate) fn could_be_courier(head: &[u8]) -> bool {
    let max_len = (MAX_HELLO_PAYLOAD + HEADER_LEN - 4) as u32;
    if head.len() < 4 {
        return true;
    }
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if !(5..=max_len).contains(&len) {
        return false;
    }
    match head.get(4) {
        None => true,
        Some(&kind) if kind == Kind::Error as u8 => head.len() < HEADER_LEN || head[5..9] == [0; 4],
        Some(&kind) if kind == Kind::Hello as u8 => {
            head.len() < HEADER_LEN + MAGIC.len() || head[HEADER_LEN..HEADER_LEN + 4] == MAGIC
        }
        Some(_) => false,
    }
}

/// The client error for the ERROR a server sends instead of its HELLO: a TLS port's
/// "this port speaks TLS" is a TLS error, anything else the server's.
fn hello_error(payload: &[u8]) -> ClientError {
    match server_error(payload) {
        ClientError::Server {
            code: ErrorCode::Protocol,
            message,
        } if message.contains("speaks TLS") => ClientError::Tls {
            reason: format!("the server said: {message}"),
        },
        other => other,
    }
}

/// The client error for an ERROR frame's payload.
pub(super) fn server_error(payload: &[u8]) -> ClientError {
    match ErrorBody::parse(payload) {
        Ok(body) => ClientError::Server {
            code: body.code,
            message: body.message,
        },
        Err(err) => ClientError::Protocol(err.to_string()),
    }
}

/// The client error for a frame that could not be read.
pub(super) fn protocol_error(err: CodecError) -> ClientError {
    match err {
        CodecError::Io(err) => ClientError::Closed {
            reason: err.to_string(),
        },
        other => ClientError::Protocol(other.to_string()),
    }
}
