//! The HELLO exchange, client side, and turning what the server sends into errors.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::ClientError;
use crate::wire::{
    Codec, CodecError, ErrorBody, Frame, Hello, Kind, HELLO_AUTH_TOKEN, MAX_HELLO_PAYLOAD,
    PROTOCOL_VERSION,
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
/// # Errors
/// [`ClientError::Server`] when the server answers with an ERROR (busy, say),
/// [`ClientError::Protocol`] when it does not speak courier, [`ClientError::Closed`]
/// when it closes first or sending fails.
pub async fn exchange<R, W>(
    read_half: R,
    write_half: W,
    max_frame: usize,
    auth_token: Option<&Bytes>,
) -> Result<(FramedRead<R, Codec>, FramedWrite<W, Codec>, usize), ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (reader, writer, hello) =
        exchange_hello(read_half, write_half, max_frame, auth_token).await?;
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
) -> Result<(FramedRead<R, Codec>, FramedWrite<W, Codec>, Hello), ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = FramedRead::new(read_half, Codec::new(MAX_HELLO_PAYLOAD));
    let mut writer = FramedWrite::new(write_half, Codec::new(0));
    let first = match reader.next().await {
        Some(Ok(frame)) => frame,
        Some(Err(err)) => return Err(protocol_error(err)),
        None => {
            return Err(ClientError::Closed {
                reason: "the server closed the connection before its HELLO".into(),
            })
        }
    };
    match first.kind {
        Kind::Hello => {}
        Kind::Error => return Err(server_error(&first.payload)),
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
