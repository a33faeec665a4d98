//! Accepting and serving connections: the accept loop, one task per connection, the
//! limits, graceful shutdown, and the [`Handler`] trait that answers requests.
//!
//! [`run`] takes an already bound listener, so tests bind port 0 and production binds the
//! configured address. Each accepted connection gets a task (tracked by a `TaskTracker`,
//! stopped through a `CancellationToken`) that reads frames through a `FramedRead`,
//! runs requests concurrently (up to `max_in_flight`), and writes each reply as soon as its
//! handler finishes, batching replies that finish together into one write.

use std::collections::HashSet;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, Sink, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{sleep_until, Instant};
use tokio_util::codec::{Encoder, FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::codec::{
    Codec, CodecError, ErrorCode, Frame, Hello, HelloError, Kind, MAX_HELLO_PAYLOAD,
    PROTOCOL_VERSION,
};
use crate::config::Config;

/// Answers requests. The server calls it once per REQUEST (the result becomes the REPLY
/// or an ERROR) and once per ONEWAY message (the result is only logged).
///
/// The calls of one connection run concurrently on that connection's task, up to
/// `max_in_flight` at once; a handler that does heavy CPU work should move it to
/// `tokio::task::spawn_blocking`. When the client goes away, its pending calls are dropped,
/// which cancels them at their next `.await`.
///
/// Why not `tower::Service`: a service takes `&mut self` and a `poll_ready` step, which
/// suits one request at a time per service clone; courier runs many requests of one
/// connection at once and applies backpressure itself (`max_in_flight`), so a `&self`
/// method is the simpler fit. Any async closure `Fn(Request) -> Future` is a handler.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request.
    fn call(&self, request: Request) -> impl Future<Output = Result<Bytes, HandlerError>> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, HandlerError>> + Send,
{
    fn call(&self, request: Request) -> impl Future<Output = Result<Bytes, HandlerError>> + Send {
        self(request)
    }
}

/// A request as a handler sees it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Request {
    /// The request id chosen by the client (unique among its requests in flight).
    pub id: u32,
    /// The request's payload.
    pub payload: Bytes,
    /// `true` for a ONEWAY message, whose result nobody will see.
    pub oneway: bool,
}

/// A handler's failure, sent to the client as an ERROR frame for that request. The
/// connection survives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// The code sent; [`ErrorCode::HandlerFailed`] unless the handler chose one
    /// (applications should use 1000 and above).
    pub code: ErrorCode,
    /// Text for a person.
    pub message: String,
}

impl HandlerError {
    /// An error with code [`ErrorCode::HandlerFailed`].
    pub fn new(message: impl Into<String>) -> HandlerError {
        HandlerError {
            code: ErrorCode::HandlerFailed,
            message: message.into(),
        }
    }

    /// An error with an application's own code (use 1000 and above).
    pub fn with_code(code: u16, message: impl Into<String>) -> HandlerError {
        HandlerError {
            code: ErrorCode::from_u16(code),
            message: message.into(),
        }
    }
}

/// The handlers `courier serve` offers.
#[derive(Debug, Clone)]
pub enum Builtin {
    /// The reply is the request's payload.
    Echo,
    /// The reply is always these bytes.
    Fixed(Bytes),
}

impl Handler for Builtin {
    fn call(&self, request: Request) -> impl Future<Output = Result<Bytes, HandlerError>> + Send {
        std::future::ready(Ok(match self {
            Builtin::Echo => request.payload,
            Builtin::Fixed(reply) => reply.clone(),
        }))
    }
}

/// Once this many reply bytes are waiting, the connection writes before it reads more, so
/// that a fast pipelining client is answered in large writes but never waits long.
const FLUSH_EARLY: usize = 64 * 1024;

/// How long a closing connection waits for its peer to take the last bytes and close its
/// side. Without it, closing a socket that still has unread input makes the kernel send a
/// reset, which can destroy replies the peer has not read yet.
const LINGER: Duration = Duration::from_secs(2);

/// Longest pause after an accept error that is not about one connection (out of file
/// descriptors, say). The pause doubles from 10 ms up to this.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Payload bytes shown in debug logs; longer payloads are cut with a note of their size.
const LOG_PAYLOAD_BYTES: usize = 256;

/// Serves connections from `listener` until `shutdown` completes, then drains: stops
/// accepting, sends GOAWAY on every connection, waits up to `config.drain_timeout` for
/// requests already received to be answered, and returns.
///
/// Accept errors never end the loop: errors about one connection are skipped, others (such
/// as running out of file descriptors) are logged and followed by a pause of up to a second.
pub async fn run<H: Handler>(
    listener: TcpListener,
    config: Config,
    handler: H,
    shutdown: impl Future,
) {
    let shared = Arc::new(Shared { config, handler });
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "listening");
    }

    tokio::pin!(shutdown);
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = Duration::ZERO;
                accepted
            }
            Err(err) if is_connection_error(&err) => {
                debug!(cause = %err, "accept failed for one connection");
                continue;
            }
            Err(err) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                error!(cause = %err, pause = ?backoff, "accept failed; pausing before the next accept");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => continue,
                    _ = &mut shutdown => break,
                }
            }
        };
        // Small requests and replies must leave at once rather than wait for Nagle's
        // algorithm; batching is done by the connection task instead.
        if let Err(err) = stream.set_nodelay(true) {
            debug!(%peer, cause = %err, "cannot set TCP_NODELAY");
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            reject_busy(&stream, peer, shared.config.max_connections);
            continue;
        };
        let shared = shared.clone();
        let token = token.clone();
        tracker.spawn(
            async move {
                // The permit lives exactly as long as the connection.
                let _permit = permit;
                debug!("accepted");
                match serve(stream, &shared, token).await {
                    Ok(Close::Clean(reason)) => debug!(reason, "connection closed"),
                    Ok(Close::Limit(reason)) => info!(reason, "connection closed"),
                    Err(err) => info!(cause = %err, "connection closed with error"),
                }
            }
            .instrument(info_span!("conn", %peer)),
        );
    }

    drop(listener);
    token.cancel();
    tracker.close();
    if !tracker.is_empty() {
        info!(connections = tracker.len(), drain_timeout = ?shared.config.drain_timeout, "draining");
    }
    if tokio::time::timeout(shared.config.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            connections = tracker.len(),
            "drain timeout passed; closing the remaining connections"
        );
    } else {
        info!("shut down cleanly");
    }
}

/// Binds a TCP listener on `addr` (`HOST:PORT`; a name resolves to its first address)
/// with an accept queue of `backlog` connections and `SO_REUSEADDR`, so that a restarted
/// server can bind again while old connections linger in TIME_WAIT.
///
/// # Errors
/// When the name does not resolve or the address cannot be bound (in use, no permission).
pub async fn bind(addr: &str, backlog: u32) -> io::Result<TcpListener> {
    let mut last_err = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(backlog)) {
            Ok(listener) => return Ok(listener),
            Err(err) => last_err = Some(err),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        )
    }))
}

/// Waits for Ctrl-C (SIGINT) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            error!(cause = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(err) => {
                error!(cause = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Errors from `accept` that concern only the connection being accepted.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Tells a connection over the limit why it is being closed, without waiting for it: the
/// ERROR is a few dozen bytes into a fresh socket's empty send buffer, so a non-blocking
/// write takes it whole, and the accept loop never stalls on a rejected peer.
fn reject_busy(stream: &TcpStream, peer: SocketAddr, limit: usize) {
    let frame = Frame::error(
        0,
        ErrorCode::ServerBusy,
        &format!("server busy: {limit} connections, the configured limit (max_connections)"),
    );
    let mut bytes = BytesMut::new();
    // Encoding a short ERROR into a BytesMut cannot fail.
    let _ = Codec::new(0).encode(frame, &mut bytes);
    if let Err(err) = stream.try_write(&bytes) {
        debug!(%peer, cause = %err, "could not send the busy ERROR");
    }
    info!(%peer, limit, "rejected connection: server busy");
}

/// What every connection task shares.
struct Shared<H> {
    config: Config,
    handler: H,
}

/// Why a connection ended without an I/O error.
enum Close {
    /// The peer finished, or the server drained: nothing went wrong.
    Clean(&'static str),
    /// A limit or a protocol rule ended it; logged at info.
    Limit(String),
}

/// What the connection's I/O poller reports.
enum Io {
    /// `FramedRead` produced a frame, an error, or the end of the stream.
    Frame(Option<Result<Frame, CodecError>>),
    /// Every pending reply has been written.
    Flushed,
    /// Writing failed: the peer is gone.
    WriteFailed(CodecError),
    /// A deadline passed.
    Deadline(Deadline),
}

/// Which deadline is running.
#[derive(Debug, Clone, Copy)]
enum Deadline {
    Handshake,
    Frame,
    Idle,
}

/// A handler's result, tagged with what it answers.
type Finished = (u32, bool, Result<Bytes, HandlerError>);

/// Serves one connection until the peer leaves, a limit or rule closes it, or shutdown
/// drains it.
async fn serve<S, H>(stream: S, shared: &Shared<H>, token: CancellationToken) -> io::Result<Close>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    let config = &shared.config;
    let (read_half, write_half) = tokio::io::split(stream);
    let mut reader = FramedRead::new(read_half, Codec::new(MAX_HELLO_PAYLOAD));
    let mut out = Outbox {
        writer: FramedWrite::new(write_half, Codec::new(0)),
        encoder: Codec::new(0),
        limit: config.max_pending_output,
        overflowed: false,
    };

    let hello = Hello::new(u32::try_from(config.max_frame).unwrap_or(u32::MAX));
    out.push(Frame::hello(&hello));

    let started = Instant::now();
    let mut last_activity = started;
    let mut partial_since: Option<Instant> = None;
    let mut peer_max_frame: usize = 0;
    let mut handshaken = false;
    let mut draining = false;
    let mut peer_done = false;
    let mut last_id: u32 = 0;
    let mut ids: HashSet<u32> = HashSet::new();
    let mut in_flight = FuturesUnordered::new();
    let sleep = sleep_until(started + config.handshake_timeout);
    tokio::pin!(sleep);

    let close = loop {
        if out.overflowed {
            warn!(
                pending = out.pending(),
                limit = config.max_pending_output,
                "closing slow reader: output is not being read (max_pending_output)"
            );
            // The peer is not reading, so an ERROR would not reach it either.
            return Ok(Close::Limit("slow reader (max_pending_output)".into()));
        }
        if (peer_done || draining) && in_flight.is_empty() && out.pending() == 0 {
            break if draining {
                Close::Clean("drained")
            } else {
                Close::Clean("peer closed")
            };
        }
        let can_read = !peer_done && !draining && in_flight.len() < config.max_in_flight;
        if !can_read {
            // A pause the server chose must not count against the peer's frame deadline.
            partial_since = None;
        }
        let idle_deadline = in_flight
            .is_empty()
            .then(|| last_activity + config.idle_timeout);

        let event = tokio::select! {
            biased;
            Some(finished) = in_flight.next(), if !in_flight.is_empty() => {
                let finished: Finished = finished;
                finish(finished, &mut ids, peer_max_frame, &mut out);
                continue;
            }
            () = token.cancelled(), if !draining => {
                draining = true;
                debug!(last_id, "draining: sending GOAWAY");
                out.push(Frame::goaway(last_id));
                continue;
            }
            event = poll_fn(|cx| {
                if out.pending() >= FLUSH_EARLY {
                    if let Poll::Ready(io) = out.poll_flush(cx) {
                        return Poll::Ready(io);
                    }
                }
                if can_read {
                    if let Poll::Ready(item) = reader.poll_next_unpin(cx) {
                        return Poll::Ready(Io::Frame(item));
                    }
                    // FramedRead read what there was; bytes left in its buffer are the
                    // start of a frame, and from now on that frame is on the clock.
                    if partial_since.is_none() && !reader.read_buffer().is_empty() {
                        partial_since = Some(Instant::now());
                    }
                }
                if out.pending() > 0 {
                    if let Poll::Ready(io) = out.poll_flush(cx) {
                        return Poll::Ready(io);
                    }
                }
                let deadline = if !handshaken {
                    Some((started + config.handshake_timeout, Deadline::Handshake))
                } else if let Some(since) = partial_since {
                    Some((since + config.frame_timeout, Deadline::Frame))
                } else {
                    idle_deadline.map(|at| (at, Deadline::Idle))
                };
                if let Some((at, which)) = deadline {
                    if sleep.deadline() != at {
                        sleep.as_mut().reset(at);
                    }
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Io::Deadline(which));
                    }
                }
                Poll::Pending
            }) => event,
        };

        match event {
            Io::Flushed => last_activity = Instant::now(),
            Io::WriteFailed(err) => return Err(into_io(err)),
            Io::Frame(None) => {
                debug!("peer finished sending");
                peer_done = true;
            }
            Io::Frame(Some(Err(err))) => {
                let Some(code) = err.error_code() else {
                    return Err(into_io(err));
                };
                let reason = err.to_string();
                out.push(Frame::error(err.request_id(), code, &reason));
                break Close::Limit(reason);
            }
            Io::Deadline(which) => {
                let (code, reason) = match which {
                    Deadline::Handshake => (
                        ErrorCode::HandshakeTimeout,
                        format!(
                            "handshake timeout: no HELLO within {} (handshake_timeout)",
                            humantime::format_duration(config.handshake_timeout)
                        ),
                    ),
                    Deadline::Frame => (
                        ErrorCode::FrameTimeout,
                        format!(
                            "frame timeout: a frame was started but not finished within {} (frame_timeout)",
                            humantime::format_duration(config.frame_timeout)
                        ),
                    ),
                    Deadline::Idle => (
                        ErrorCode::IdleTimeout,
                        format!(
                            "idle timeout: nothing received or sent for {} (idle_timeout)",
                            humantime::format_duration(config.idle_timeout)
                        ),
                    ),
                };
                out.push(Frame::error(0, code, &reason));
                break Close::Limit(reason);
            }
            Io::Frame(Some(Ok(frame))) => {
                let now = Instant::now();
                last_activity = now;
                partial_since = (!reader.read_buffer().is_empty()).then_some(now);
                if !handshaken {
                    match accept_hello(&frame) {
                        Ok(hello) => {
                            handshaken = true;
                            peer_max_frame = hello.max_frame as usize;
                            reader.decoder_mut().set_max_payload(config.max_frame);
                            debug!(
                                version = hello.version,
                                max_frame = hello.max_frame,
                                "handshake done"
                            );
                        }
                        Err((code, reason)) => {
                            out.push(Frame::error(0, code, &reason));
                            break Close::Limit(reason);
                        }
                    }
                    continue;
                }
                match frame.kind {
                    Kind::Request | Kind::Oneway => {
                        let oneway = frame.kind == Kind::Oneway;
                        if !oneway {
                            if frame.id == 0 {
                                let reason =
                                    "protocol error: request id 0 is reserved for the connection"
                                        .to_owned();
                                out.push(Frame::error(0, ErrorCode::Protocol, &reason));
                                break Close::Limit(reason);
                            }
                            if !ids.insert(frame.id) {
                                let text = format!(
                                    "duplicate request id {}: a request with this id is still in flight",
                                    frame.id
                                );
                                debug!(id = frame.id, "duplicate request id");
                                out.push(Frame::error(frame.id, ErrorCode::DuplicateId, &text));
                                continue;
                            }
                            last_id = frame.id;
                        }
                        debug!(
                            id = frame.id,
                            kind = %frame.kind,
                            len = frame.payload.len(),
                            payload = %LogHex(&frame.payload),
                            "received"
                        );
                        let request = Request {
                            id: frame.id,
                            payload: frame.payload,
                            oneway,
                        };
                        in_flight.push(call(&shared.handler, request));
                    }
                    Kind::Ping => out.push(Frame::new(Kind::Pong, frame.id, frame.payload)),
                    Kind::Pong => {}
                    Kind::GoAway => {
                        debug!("peer sent GOAWAY: finishing its requests");
                        peer_done = true;
                    }
                    Kind::Error => {
                        let body = crate::codec::ErrorBody::parse(&frame.payload);
                        warn!(?body, "peer sent ERROR; closing");
                        break Close::Limit("peer sent ERROR".into());
                    }
                    Kind::Hello | Kind::Reply => {
                        let reason = format!(
                            "protocol error: a client does not send {} after the handshake",
                            frame.kind
                        );
                        out.push(Frame::error(frame.id, ErrorCode::Protocol, &reason));
                        break Close::Limit(reason);
                    }
                }
            }
        }
    };

    // Requests still in flight here belong to a connection closed for a protocol error or
    // a limit; they are dropped with it.
    drop(in_flight);
    close_gracefully(reader, out.writer).await;
    Ok(close)
}

/// Checks the client's HELLO; on failure returns the ERROR code and text to send.
fn accept_hello(frame: &Frame) -> Result<Hello, (ErrorCode, String)> {
    if frame.kind != Kind::Hello {
        return Err((
            ErrorCode::Protocol,
            format!(
                "protocol error: expected HELLO as the first frame, got {}",
                frame.kind
            ),
        ));
    }
    let hello = Hello::parse(&frame.payload).map_err(|err| match err {
        HelloError::BadMagic { .. } => (ErrorCode::BadMagic, err.to_string()),
        HelloError::Malformed(_) => (ErrorCode::MalformedBody, err.to_string()),
    })?;
    if hello.version != PROTOCOL_VERSION {
        return Err((
            ErrorCode::UnsupportedVersion,
            format!(
                "unsupported version: the client speaks protocol version {}, this server speaks {PROTOCOL_VERSION}",
                hello.version
            ),
        ));
    }
    Ok(hello)
}

/// Runs one request through the handler, turning a panic into an ERROR so that one bad
/// request cannot take the connection's other requests down with it.
fn call<H: Handler>(handler: &H, request: Request) -> impl Future<Output = Finished> + Send + '_ {
    let id = request.id;
    let oneway = request.oneway;
    AssertUnwindSafe(handler.call(request))
        .catch_unwind()
        .map(move |result| {
            let result = result.unwrap_or_else(|_| Err(HandlerError::new("the handler panicked")));
            (id, oneway, result)
        })
}

/// Queues the outcome of a finished handler call.
fn finish<W: AsyncWrite + Unpin>(
    (id, oneway, result): Finished,
    ids: &mut HashSet<u32>,
    peer_max_frame: usize,
    out: &mut Outbox<W>,
) {
    if oneway {
        if let Err(err) = result {
            warn!(id, code = %err.code, message = %err.message, "ONEWAY handler failed");
        }
        return;
    }
    ids.remove(&id);
    let frame = match result {
        Ok(payload) if payload.len() > peer_max_frame => {
            warn!(
                id,
                len = payload.len(),
                peer_max_frame,
                "reply larger than the client accepts"
            );
            Frame::error(
                id,
                ErrorCode::FrameTooLarge,
                &format!(
                    "frame too large: the reply is {} bytes, the client's max_frame is {peer_max_frame} bytes",
                    payload.len()
                ),
            )
        }
        Ok(payload) => {
            debug!(id, len = payload.len(), payload = %LogHex(&payload), "reply");
            Frame::reply(id, payload)
        }
        Err(err) => {
            debug!(id, code = %err.code, message = %err.message, "handler failed");
            Frame::error(id, err.code, &err.message)
        }
    };
    out.push(frame);
}

/// A connection's outgoing frames: encoded straight into the write buffer, so queuing a
/// frame never waits and a peer that does not read can never stall the connection's loop.
/// The I/O poller writes the buffer out; `limit` (max_pending_output) bounds it.
struct Outbox<W> {
    writer: FramedWrite<W, Codec>,
    encoder: Codec,
    limit: usize,
    /// Set when a frame was due while more than `limit` bytes were waiting: the peer is
    /// not reading, and the connection is closed at the top of its loop.
    overflowed: bool,
}

impl<W: AsyncWrite + Unpin> Outbox<W> {
    /// Queues a frame, unless more than `limit` bytes already wait (then the frame is
    /// dropped and `overflowed` set). Checking before appending lets one frame larger than
    /// the limit through when the peer keeps up.
    fn push(&mut self, frame: Frame) {
        if self.pending() > self.limit {
            self.overflowed = true;
            return;
        }
        // Every frame the server builds is far below the u32 length limit (payloads come
        // from frames it decoded, or from handlers and are checked against max_frame).
        if let Err(err) = self.encoder.encode(frame, self.writer.write_buffer_mut()) {
            error!(cause = %err, "cannot encode a frame");
        }
    }

    /// Bytes waiting to be written.
    fn pending(&self) -> usize {
        self.writer.write_buffer().len()
    }

    /// Writes out the buffer as far as the socket takes it.
    fn poll_flush(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Io> {
        match Sink::<Frame>::poll_flush(Pin::new(&mut self.writer), cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Io::Flushed),
            Poll::Ready(Err(err)) => Poll::Ready(Io::WriteFailed(err)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Writes what is left, closes the write side, then reads and discards until the peer
/// closes or `LINGER` passes, so that the peer reads every byte sent before the socket goes.
async fn close_gracefully<S: AsyncRead + AsyncWrite>(
    mut reader: FramedRead<ReadHalf<S>, Codec>,
    mut writer: FramedWrite<WriteHalf<S>, Codec>,
) {
    let result = tokio::time::timeout(LINGER, async {
        futures::SinkExt::<Frame>::flush(&mut writer).await?;
        writer.get_mut().shutdown().await?;
        let mut sink = [0u8; 1024];
        while reader.get_mut().read(&mut sink).await? > 0 {}
        Ok::<(), CodecError>(())
    })
    .await;
    if let Ok(Err(err)) = result {
        debug!(cause = %err, "error while closing");
    }
}

fn into_io(err: CodecError) -> io::Error {
    match err {
        CodecError::Io(err) => err,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

/// Formats a payload as lowercase hex for debug logs, cut at `LOG_PAYLOAD_BYTES`.
struct LogHex<'a>(&'a [u8]);

impl std::fmt::Display for LogHex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = &self.0[..self.0.len().min(LOG_PAYLOAD_BYTES)];
        for byte in shown {
            write!(f, "{byte:02x}")?;
        }
        if shown.len() < self.0.len() {
            write!(f, "... ({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}
