//! Opening the bench's connections: the transport, then the HELLO exchange in courier
//! framing, on the runtime or (one connection, one request at a time) as a blocking
//! socket.

use tokio::io::{AsyncRead, AsyncWrite};

use super::BenchConfig;
use crate::client::{hello, ClientError};
use crate::config::Framing;
use crate::transport::{connect_stream, BlockingStream, Socket};
use crate::transport::{BoxRead, BoxWrite, PIPE_PREFIX};
use crate::wire::MAX_PAYLOAD_LIMIT;

/// A connection, opened and past its HELLO exchange.
pub(super) enum Connection {
    /// Driven by a task on the runtime.
    Async(BoxRead, BoxWrite),
    /// Driven by a thread of its own, blocking in `write` and `read`.
    Blocking(Box<dyn BlockingStream>),
}

/// Opens the run's `connections`, one after the other: a blocking one where that is the
/// cheaper client ([`open_blocking`]), async ones otherwise.
///
/// # Errors
/// The first connection that cannot be opened, or whose handshake fails.
pub(super) async fn open_all(
    config: &BenchConfig,
    connections: usize,
) -> Result<Vec<Connection>, ClientError> {
    let mut streams = Vec::with_capacity(connections);
    if connections == 1 && one_at_a_time(config) {
        if let Some(stream) = open_blocking(config).await? {
            streams.push(Connection::Blocking(stream));
        }
    }
    while streams.len() < connections {
        let (reader, writer) = open(config).await?;
        streams.push(Connection::Async(reader, writer));
    }
    Ok(streams)
}

/// Whether the run keeps one request at a time in flight on each connection (closed loop,
/// no pipelining, request/reply).
fn one_at_a_time(config: &BenchConfig) -> bool {
    config.pipeline <= 1 && config.rate.is_none() && !config.oneway
}

/// Opens one connection, with the HELLO exchange in courier framing.
async fn open(config: &BenchConfig) -> Result<(BoxRead, BoxWrite), ClientError> {
    let (reader, writer) =
        connect_stream(config.addr.as_str(), config.timeout, config.tls.as_ref()).await?;
    handshake(config, reader, writer).await
}

/// Opens the connection of a one-connection, one-request-at-a-time run as a blocking
/// socket; `None` where there is none to open (TLS, a named pipe).
///
/// With one request in flight and one connection, a thread blocking in `write` then `read`
/// is the cheapest client there is: two system calls per request where an event loop
/// makes three (`epoll_wait` between), and no runtime scheduling a task for each reply.
/// The load generator then costs less CPU per request than redis-benchmark's event loop and
/// adds less to the round trip it measures, as the blocking floor client does.
async fn open_blocking(
    config: &BenchConfig,
) -> Result<Option<Box<dyn BlockingStream>>, ClientError> {
    if config.tls.is_some() || config.addr.starts_with(PIPE_PREFIX) {
        return Ok(None);
    }
    let mut socket = Socket::connect(&config.addr, config.timeout).await?;
    let (reader, writer) = socket.halves();
    handshake(config, reader, writer).await?;
    let stream = socket
        .into_blocking(config.timeout)
        .map_err(|err| ClientError::Protocol(format!("cannot make the socket blocking: {err}")))?;
    Ok(Some(stream))
}

/// The HELLO exchange in courier framing (nothing in plain framing); gives the stream back.
async fn handshake<R, W>(config: &BenchConfig, reader: R, writer: W) -> Result<(R, W), ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if config.framing != Framing::Courier {
        return Ok((reader, writer));
    }
    // The load generator takes replies of any size the protocol allows.
    let exchange = hello::exchange(
        reader,
        writer,
        MAX_PAYLOAD_LIMIT,
        config.auth_token.as_ref(),
        tokio::time::Instant::now() + config.timeout,
    );
    let (framed_read, framed_write, _) = tokio::time::timeout(config.timeout, exchange)
        .await
        .map_err(|_| ClientError::ConnectTimeout {
            addr: config.addr.clone(),
            after: config.timeout,
        })??;
    // The server says nothing more until it has our HELLO, so nothing is left buffered.
    Ok((framed_read.into_inner(), framed_write.into_inner()))
}
