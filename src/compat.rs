//! Talking to programs that were not written with courier: plain framing (a 4-byte length
//! and the payload) and raw framing (no framing at all), on the server side and the
//! client side.
//!
//! Both framings have no request ids, no handshake and no ERROR frames, so replies go back
//! in request order, and a failure the protocol cannot express (a handler error, a limit)
//! closes the connection with a log line that says why. The limits, deadlines and shutdown
//! are the server's usual ones (`connection.rs`).

use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{SinkExt, StreamExt};
use tokio::io::Join;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::ToSocketAddrs;
use tokio_util::codec::{Decoder, Encoder, Framed};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::client::ClientError;
use crate::config::Framing;
use crate::connection::{Conn, Io};
use crate::handler::{call, Finished, Handler, Request};
use crate::server::{slow_reader, Close, LogHex, Shared};
use crate::stats::{CloseReason, Turn};
use crate::transport::connect_stream;
use crate::transport::{BoxRead, BoxWrite};
use crate::wire::{CodecError, PlainCodec, RawCodec};

/// Serves one connection in plain or raw framing (`shared.config.framing`).
pub(crate) async fn serve<S, H>(
    stream: S,
    shared: &Shared<H>,
    token: CancellationToken,
    identity: Option<Arc<str>>,
) -> io::Result<Close>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    match shared.config.framing {
        Framing::Raw => serve_ordered(stream, shared, token, RawCodec, identity).await,
        _ => {
            serve_ordered(
                stream,
                shared,
                token,
                PlainCodec::new(shared.config.max_frame),
                identity,
            )
            .await
        }
    }
}

/// The connection loop of both framings: read messages, run them through the handler
/// concurrently (up to `max_in_flight`), and write the replies in request order.
async fn serve_ordered<S, H, C>(
    stream: S,
    shared: &Shared<H>,
    token: CancellationToken,
    codec: C,
    identity: Option<Arc<str>>,
) -> io::Result<Close>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
    C: Decoder<Item = Bytes, Error = CodecError> + Encoder<Bytes, Error = CodecError> + Clone,
{
    let config = &shared.config;
    let raw = config.framing == Framing::Raw;
    let (read_half, write_half) = tokio::io::split(stream);
    let mut conn = Conn::new(read_half, codec.clone(), write_half, codec, config, false);
    // Validated when the config was loaded.
    if let Ok(Some(greeting)) = config.greeting() {
        conn.out.push(greeting);
    }

    let mut received: u64 = 0;
    let mut draining = false;
    let mut peer_done = false;
    let mut in_flight = FuturesOrdered::new();
    let close = loop {
        if conn.out.overflowed {
            return Ok(slow_reader(conn.out.pending(), config));
        }
        draining |= token.is_cancelled();
        let enough = config.close_after > 0 && received >= config.close_after;
        if (peer_done || draining || enough) && in_flight.is_empty() && conn.out.pending() == 0 {
            let reason = if enough {
                CloseReason::CloseAfter
            } else if draining {
                CloseReason::Drained
            } else {
                CloseReason::PeerClosed
            };
            break Close::new(reason, "");
        }
        let can_read = !peer_done && !draining && !enough && in_flight.len() < config.max_in_flight;
        let idle = in_flight.is_empty();

        let event = tokio::select! {
            biased;
            Some(finished) = in_flight.next(), if !in_flight.is_empty() => {
                let Finished { result, .. } = finished;
                match result {
                    // In raw framing an empty reply is no reply at all.
                    Ok(reply) if raw && reply.is_empty() => {}
                    Ok(reply) => {
                        Turn::new(&shared.stats).tally.replies += 1;
                        conn.out.push(reply);
                    }
                    Err(err) => {
                        let reason = format!(
                            "handler failed ({}): {}; {:?} framing cannot report errors, so the connection is closed",
                            err.code, err.message, config.framing
                        );
                        break Close::new(CloseReason::HandlerFailed, reason);
                    }
                }
                continue;
            }
            event = poll_fn(|cx| conn.poll_io(cx, can_read, idle)) => event,
            // Last, as in the courier loop: it only needs to wake an idle connection.
            () = shared.stop_signal(&token, draining) => {
                if draining {
                    return Ok(shared.aborted());
                }
                continue;
            }
        };

        let payload = match event {
            Io::Flushed => {
                conn.flushed();
                continue;
            }
            Io::WriteFailed(err) => return Err(err),
            Io::Read(None) => {
                peer_done = true;
                continue;
            }
            // I/O failures and EOF mid-message are reported as connection errors, as in
            // the courier loop; the rest are limits the peer broke.
            Io::Read(Some(Err(CodecError::Io(err)))) => return Err(err),
            Io::Read(Some(Err(err))) => break Close::for_codec(&err),
            Io::Deadline(which) => break Close::new(which.reason(), which.describe(config).1),
            Io::Read(Some(Ok(payload))) => payload,
        };
        conn.received();
        received += 1;
        Turn::new(&shared.stats).tally.requests += 1;
        if raw {
            info!(len = payload.len(), data = %LogHex(&payload), "received");
        } else {
            debug!(len = payload.len(), payload = %LogHex(&payload), "received");
        }
        let request = Request {
            id: received as u32,
            payload,
            oneway: false,
            peer_identity: identity.clone(),
        };
        in_flight.push_back(call(&shared.handler, request));
    };

    drop(in_flight);
    conn.close().await;
    Ok(close)
}

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
                after: self.timeout,
            })?
    }
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
