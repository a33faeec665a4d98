//! Clients for servers in plain framing (a 4-byte length and the payload) and raw framing
//! (none): programs written against a bare socket, and courier servers speaking to them.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Join};
use tokio::net::ToSocketAddrs;
use tokio_util::codec::Framed;
use tracing::debug;

use super::ClientError;
use crate::transport::{connect_stream, BoxRead, BoxWrite};
use crate::wire::{CodecError, Kind, PlainCodec, MAGIC};

/// A client for a server in plain framing: each call writes one length-prefixed message
/// and reads one back. Calls go one at a time, since plain framing has no ids to match
/// replies with.
pub struct PlainClient {
    framed: Framed<Join<BoxRead, BoxWrite>, PlainCodec>,
    timeout: Duration,
}

impl std::fmt::Debug for PlainClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PlainClient {
    /// Connects within `connect_timeout`; each call then waits at most `timeout` for its
    /// reply, and accepts replies up to `max_frame` bytes.
    ///
    /// # Errors
    /// [`ClientError::Refused`], [`ClientError::Connect`] or [`ClientError::ConnectTimeout`].
    pub async fn connect<A>(
        addr: A,
        connect_timeout: Duration,
        timeout: Duration,
        max_frame: usize,
    ) -> Result<PlainClient, ClientError>
    where
        A: ToSocketAddrs + std::fmt::Display,
    {
        let (reader, writer) = connect_stream(addr, connect_timeout, None).await?;
        Ok(PlainClient {
            framed: Framed::new(tokio::io::join(reader, writer), PlainCodec::new(max_frame)),
            timeout,
        })
    }

    /// Sends `payload` and waits for the reply.
    ///
    /// # Errors
    /// [`ClientError::Timeout`], [`ClientError::OutcomeUnknown`] when the connection
    /// ends first (the server closes it on any failure, having no other way to report
    /// one, so whether it ran the message is unknown), or [`ClientError::Protocol`] for a
    /// reply over `max_frame`.
    pub async fn call(&mut self, payload: Bytes) -> Result<Bytes, ClientError> {
        let exchange = async {
            self.framed.send(payload).await.map_err(unknown)?;
            match self.framed.next().await {
                Some(Ok(reply)) if is_courier_hello(&reply) => Err(ClientError::Protocol(
                    "this server speaks the courier protocol (its first message is a courier HELLO): drop --framing plain".into(),
                )),
                Some(Ok(reply)) => Ok(reply),
                Some(Err(err)) => Err(unknown(err)),
                None => Err(ClientError::OutcomeUnknown {
                    reason: "the server closed the connection without replying".into(),
                }),
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                attempts: 0,
                after: self.timeout,
            })?
    }
}

/// Whether a plain-framing message is in fact a courier server's HELLO read through a
/// 4-byte length: kind HELLO, id 0, then the magic.
fn is_courier_hello(message: &[u8]) -> bool {
    message.len() >= 9
        && message[0] == Kind::Hello as u8
        && message[1..5] == [0; 4]
        && message[5..9] == MAGIC
}

/// A failure once the message may have left: whether the server ran it is unknown.
fn unknown(err: CodecError) -> ClientError {
    match err {
        CodecError::Io(err) => ClientError::OutcomeUnknown {
            reason: err.to_string(),
        },
        other => ClientError::Protocol(other.to_string()),
    }
}

/// How [`raw_exchange`] behaves.
#[derive(Debug, Clone)]
pub struct RawOptions {
    /// Wait for the peer's first bytes and hand them on before sending anything.
    pub recv_first: bool,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// The exchange ends when nothing arrives for this long.
    pub timeout: Duration,
}

/// The classic socket exchange with no framing: connect, optionally wait for the peer's
/// first bytes, send `payload` (`count` times), then hand on every chunk received until
/// the peer closes the connection or nothing arrives for `options.timeout`.
///
/// Each chunk is whatever one read returned: a byte stream has no message boundaries.
///
/// # Errors
/// Connect errors as for [`PlainClient::connect`]; [`ClientError::Timeout`] when
/// `recv_first` is set and the peer sends nothing in time; [`ClientError::Closed`] when
/// reading fails before anything was sent, [`ClientError::OutcomeUnknown`] when a read or
/// write fails after; any error `on_chunk` returns.
pub async fn raw_exchange<A>(
    addr: A,
    payload: &[u8],
    count: u64,
    options: &RawOptions,
    mut on_chunk: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<(), ClientError>
where
    A: ToSocketAddrs + std::fmt::Display,
{
    let (reader, writer) = connect_stream(addr, options.connect_timeout, None).await?;
    let mut stream = tokio::io::join(reader, writer);
    let mut buf = vec![0u8; 64 * 1024];
    let failed = |err: io::Error| ClientError::Closed {
        reason: err.to_string(),
    };
    if options.recv_first {
        let read = tokio::time::timeout(options.timeout, stream.read(&mut buf))
            .await
            .map_err(|_| ClientError::Timeout {
                attempts: 0,
                after: options.timeout,
            })?
            .map_err(failed)?;
        if read == 0 {
            debug!("peer closed before sending anything");
            return Ok(());
        }
        on_chunk(&buf[..read]).map_err(failed)?;
    }
    // From the first byte written on, the server may have acted on what it got.
    let unknown = |err: io::Error| ClientError::OutcomeUnknown {
        reason: err.to_string(),
    };
    if !payload.is_empty() {
        for _ in 0..count {
            stream.write_all(payload).await.map_err(unknown)?;
        }
    }
    loop {
        match tokio::time::timeout(options.timeout, stream.read(&mut buf)).await {
            // Quiet for the whole timeout: the exchange is over.
            Err(_) => return Ok(()),
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(read)) => on_chunk(&buf[..read]).map_err(failed)?,
            Ok(Err(err)) => return Err(unknown(err)),
        }
    }
}
