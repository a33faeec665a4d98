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

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::close::{Close, LogHex};
use super::conn::{Conn, Io};
use super::Shared;
use crate::config::Framing;
use crate::handler::{call, Finished, Handler, Request};
use crate::stats::{CloseReason, Turn};
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
            return Ok(Close::slow_reader(conn.out.pending(), config));
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
