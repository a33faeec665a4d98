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
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::config::{Config, Framing};
mod accept;
mod busy_poll;
mod close;
mod conn;
mod ordered;

use crate::handler::{call, Finished, Handler, Request};
use crate::stats::{CloseReason, Stats, Tally, Turn};
use crate::transport::tls::ServerTls;
use crate::transport::Listener;
use crate::wire::{
    Codec, CodecError, ErrorCode, Frame, Hello, HelloError, Kind, HELLO_AUTH_TOKEN,
    MAX_HELLO_PAYLOAD, MIN_MAX_FRAME, PROTOCOL_VERSION,
};
use close::{Close, LogHex};
use conn::{Conn, Io, Outbox};

/// How long the server waits, after the drain timeout, for connections to close once told
/// to stop at once: they only have to drop what they hold.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// Serves connections from `listener` until `shutdown` completes, then drains: stops
/// accepting, sends GOAWAY on every connection, waits up to `config.drain_timeout` for
/// requests already received to be answered, and returns.
///
/// Accept errors never end the loop: errors about one connection are skipped, others (such
/// as running out of file descriptors) are logged and followed by a pause of up to a second.
///
/// The same as `Server::new(config, handler).run(listener, shutdown)`; use [`Server`] to
/// read the counters while it runs.
pub async fn run<H: Handler>(
    listener: impl Into<Listener>,
    config: Config,
    handler: H,
    shutdown: impl Future,
) {
    Server::new(config, handler).run(listener, shutdown).await;
}

/// A server before it runs: its settings, its handler, and its counters.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use courier::handler::Builtin;
/// use courier::server::Server;
/// let server = Server::new(courier::config::Config::default(), Builtin::Echo);
/// let stats = server.stats();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// tokio::spawn(server.run(listener, tokio::signal::ctrl_c()));
/// println!("{}", stats.snapshot());
/// # Ok(())
/// # }
/// ```
pub struct Server<H> {
    shared: Arc<Shared<H>>,
    tls: Option<ServerTls>,
}

impl<H> std::fmt::Debug for Server<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.shared.config)
            .field("stats", &self.shared.stats)
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Server<H> {
    /// A server with `config` answering through `handler`.
    pub fn new(config: Config, handler: H) -> Server<H> {
        Server {
            shared: Arc::new(Shared {
                config,
                handler,
                stats: Arc::new(Stats::new()),
                abort: CancellationToken::new(),
            }),
            tls: None,
        }
    }

    /// Speaks TLS on TCP connections (Unix sockets stay plain: their file permissions
    /// protect them).
    #[must_use]
    pub fn with_tls(mut self, tls: ServerTls) -> Server<H> {
        self.tls = Some(tls);
        self
    }

    /// The server's counters, readable while it runs and after.
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// Serves one connection that was accepted elsewhere (any byte stream: an in-memory
    /// pipe, a transport of the embedder's own) until it ends, with the same per-connection
    /// limits, deadlines, logging and counters as connections from [`Server::run`]
    /// (`max_connections` is the accept loop's, so it does not apply here). Cancelling
    /// `shutdown` drains it (GOAWAY, then every received request answered).
    ///
    /// Returns why the connection ended.
    pub async fn serve_connection<S>(&self, stream: S, shutdown: CancellationToken) -> CloseReason
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        serve_connection(stream, self.shared.clone(), shutdown, None, None).await
    }

    /// Serves connections from `listener` until `shutdown` completes, then drains; see
    /// [`run`]. Logs the counters when it returns.
    pub async fn run(self, listener: impl Into<Listener>, shutdown: impl Future) {
        let listener = listener.into();
        let shared = self.shared;
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "listening");
        }
        let polling = (!shared.config.busy_poll.is_zero()).then(|| {
            info!(window = ?shared.config.busy_poll, "busy polling after each request");
            busy_poll::start(shared.config.busy_poll, &shared.stats, &token)
        });

        let admit = accept::Admit {
            shared: &shared,
            limit: Arc::new(Semaphore::new(shared.config.max_connections)),
            token: &token,
            tracker: &tracker,
            tls: self.tls.as_ref(),
        };
        accept::accept_loop(&listener, &admit, shutdown).await;

        drop(listener);
        token.cancel();
        if let Some(polling) = polling {
            // Nothing to drain there: they stop at the cancel.
            polling.wait().await;
        }
        drain(&shared, &tracker).await;
        info!(counters = %shared.stats.snapshot(), "counters at shutdown");
    }
}

/// Waits, once every connection was told to drain, up to `drain_timeout` for them to
/// close; then stops the rest at once and gives them `ABORT_GRACE` to go.
async fn drain<H>(shared: &Shared<H>, tracker: &TaskTracker) {
    tracker.close();
    if !tracker.is_empty() {
        info!(connections = tracker.len(), drain_timeout = ?shared.config.drain_timeout, "draining");
    }
    if tokio::time::timeout(shared.config.drain_timeout, tracker.wait())
        .await
        .is_ok()
    {
        info!("shut down cleanly");
        return;
    }
    warn!(
        connections = tracker.len(),
        "drain timeout passed; closing the remaining connections"
    );
    // Each connection stops at its next poll, dropping its unfinished requests (which
    // kills their processes), and is counted as closed by the drain timeout.
    shared.abort.cancel();
    if tokio::time::timeout(ABORT_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            connections = tracker.len(),
            "connections still not closed after the drain timeout"
        );
    }
}

/// Serves one accepted connection to its end in the configured framing, logs why it ended
/// (at debug for an ordinary end, at info for a limit or a fault) and counts it.
///
/// `permit`, the connection's slot under `max_connections`, is held until the end.
async fn serve_connection<S, H>(
    stream: S,
    shared: Arc<Shared<H>>,
    token: CancellationToken,
    identity: Option<Arc<str>>,
    _permit: Option<OwnedSemaphorePermit>,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    shared.stats.opened();
    debug!("accepted");
    let served = match shared.config.framing {
        Framing::Courier => serve(stream, &shared, token, identity).await,
        Framing::Plain | Framing::Raw => ordered::serve(stream, &shared, token, identity).await,
    };
    let reason = match served {
        Ok(close) if close.reason.is_clean() => {
            debug!(reason = %close.reason, "connection closed");
            close.reason
        }
        Ok(close) => {
            info!(reason = %close.reason, detail = %close.detail, "connection closed");
            close.reason
        }
        Err(err) => {
            info!(reason = %CloseReason::IoError, cause = %err, "connection closed");
            CloseReason::IoError
        }
    };
    shared.stats.closed(reason);
    reason
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

/// What every connection task shares.
pub(crate) struct Shared<H> {
    pub(crate) config: Config,
    pub(crate) handler: H,
    pub(crate) stats: Arc<Stats>,
    /// Cancelled when the drain timeout passes: connections still open close at once.
    pub(crate) abort: CancellationToken,
}

impl<H> Shared<H> {
    /// What a connection loop waits on besides its I/O: the shutdown signal while it
    /// serves, then, once it drains, the end of the drain timeout. One future for both,
    /// so that the idle connection's state holds one.
    pub(crate) fn stop_signal<'a>(
        &'a self,
        token: &'a CancellationToken,
        draining: bool,
    ) -> tokio_util::sync::WaitForCancellationFuture<'a> {
        if draining {
            self.abort.cancelled()
        } else {
            token.cancelled()
        }
    }

    /// The close of a connection still open when the drain timeout passed.
    pub(crate) fn aborted(&self) -> Close {
        Close::new(
            CloseReason::DrainTimeout,
            format!(
                "drain timeout: requests still unanswered after {} (drain_timeout)",
                humantime::format_duration(self.config.drain_timeout)
            ),
        )
    }
}

/// Serves one courier-protocol connection until the peer leaves, a limit or rule closes
/// it, or shutdown drains it.
async fn serve<S, H>(
    stream: S,
    shared: &Shared<H>,
    token: CancellationToken,
    identity: Option<Arc<str>>,
) -> io::Result<Close>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    let config = &shared.config;
    let (read_half, write_half) = tokio::io::split(stream);
    let mut conn = Conn::new(
        read_half,
        Codec::new(MAX_HELLO_PAYLOAD),
        write_half,
        Codec::new(0),
        config,
        true,
    );
    let hello = Hello::new(u32::try_from(config.max_frame).unwrap_or(u32::MAX));
    conn.out.push(Frame::hello(&hello));

    let mut session = Session {
        identity,
        peer_max_frame: MAX_HELLO_PAYLOAD,
        ..Session::default()
    };
    let mut draining = false;
    let mut in_flight = InFlight::default();

    let close = 'conn: loop {
        if conn.out.overflowed {
            // The peer is not reading, so an ERROR would not reach it either.
            return Ok(Close::slow_reader(conn.out.pending(), config));
        }
        if !draining && token.is_cancelled() {
            draining = true;
            debug!(last_id = session.last_id, "draining: sending GOAWAY");
            conn.out.push(Frame::goaway(session.last_id));
        }
        if (session.peer_done || draining) && in_flight.is_empty() && conn.out.pending() == 0 {
            break Close::new(
                if draining {
                    CloseReason::Drained
                } else {
                    CloseReason::PeerClosed
                },
                "",
            );
        }
        let can_read = !session.peer_done && !draining && in_flight.len() < config.max_in_flight;
        let idle = in_flight.is_empty();

        // The shutdown branch comes last: it only needs to wake an idle connection, and
        // polling it first would cost every busy iteration a wasted registration.
        let event = tokio::select! {
            biased;
            Some(finished) = in_flight.next(), if !in_flight.is_empty() => {
                let mut turn = Turn::new(&shared.stats);
                session.finish(finished, &mut conn.out, &mut turn.tally);
                continue;
            }
            event = poll_fn(|cx| conn.poll_io(cx, can_read, idle)) => event,
            () = shared.stop_signal(&token, draining) => {
                if draining {
                    // No linger: the drain is over.
                    return Ok(shared.aborted());
                }
                continue;
            }
        };

        let first = match event {
            Io::Flushed => {
                conn.flushed();
                continue;
            }
            Io::WriteFailed(err) => return Err(err),
            Io::Read(None) => {
                debug!("peer finished sending");
                session.peer_done = true;
                continue;
            }
            Io::Deadline(which) => {
                let (code, reason) = which.describe(config);
                conn.out.push(session.error(0, code, &reason));
                break Close::new(which.reason(), reason);
            }
            Io::Read(Some(item)) => item,
        };
        // Handle this frame and every further one already in the read buffer, so that a
        // pipelined batch costs one turn of the loop, not one per frame.
        let mut turn = Turn::new(&shared.stats);
        let mut next = Some(first);
        while let Some(item) = next {
            let frame = match item {
                Ok(frame) => frame,
                Err(CodecError::Io(err))
                    if err.kind() == io::ErrorKind::UnexpectedEof
                        && conn.reader.read_buffer().is_empty() =>
                {
                    // A TLS peer that closed between frames without a close_notify: as
                    // far as the protocol goes, an orderly end.
                    debug!(cause = %err, "peer finished sending");
                    session.peer_done = true;
                    break;
                }
                Err(CodecError::Io(err)) => return Err(err),
                Err(err) => {
                    let close = Close::for_codec(&err);
                    if let Some(code) = err.error_code() {
                        // Id 0: this ERROR closes the connection.
                        conn.out.push(session.error(0, code, &close.detail));
                    }
                    break 'conn close;
                }
            };
            match session.on_frame(frame, &mut conn, config, &mut turn.tally) {
                Action::Nothing => {}
                Action::Close(close) => break 'conn close,
                Action::Stats(id) => {
                    turn.flush();
                    let snapshot = shared.stats.snapshot();
                    // Serializing plain integers and strings cannot fail.
                    let json = serde_json::to_vec(&snapshot).unwrap_or_default();
                    conn.out
                        .push(session.fitting(Frame::reply(id, Bytes::from(json))));
                }
                Action::Dispatch(request) => {
                    if let Some(result) = shared.handler.ready(&request) {
                        session.finish(
                            Finished {
                                id: request.id,
                                oneway: request.oneway,
                                result,
                            },
                            &mut conn.out,
                            &mut turn.tally,
                        );
                    } else {
                        if !request.oneway {
                            session.ids.insert(request.id);
                        }
                        in_flight.push(call(&shared.handler, request));
                    }
                }
            }
            if session.peer_done || in_flight.len() >= config.max_in_flight {
                break;
            }
            let mut decoder = conn.reader.decoder().clone();
            next = decoder.decode(conn.reader.read_buffer_mut()).transpose();
        }
        conn.received();
    };

    // Requests still in flight here belong to a connection closed for a protocol error or
    // a limit; they are dropped with it.
    drop(in_flight);
    conn.close().await;
    Ok(close)
}

/// Requests whose handlers are still running. The set is created on first use: handlers
/// that answer inline (`Handler::ready`) never need it, and an idle connection then holds
/// no memory for it.
struct InFlight<F>(Option<FuturesUnordered<F>>);

impl<F> Default for InFlight<F> {
    fn default() -> Self {
        InFlight(None)
    }
}

impl<F: Future> InFlight<F> {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesUnordered::len)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, future: F) {
        self.0
            .get_or_insert_with(FuturesUnordered::new)
            .push(future);
    }

    /// The next result; `None` when nothing runs (callers poll only while something does).
    async fn next(&mut self) -> Option<F::Output> {
        match &mut self.0 {
            Some(set) => set.next().await,
            None => None,
        }
    }
}

/// The protocol state of one courier connection.
#[derive(Default)]
struct Session {
    handshaken: bool,
    /// The largest payload the client accepts: from its HELLO, and the HELLO limit
    /// until then. Nothing the server sends is larger (ERROR texts are cut to fit).
    peer_max_frame: usize,
    /// The client sent EOF or GOAWAY: no more frames will come.
    peer_done: bool,
    /// Id of the last REQUEST received (for GOAWAY).
    last_id: u32,
    /// Ids of requests being handled, to refuse duplicates.
    ids: HashSet<u32>,
    /// The verified TLS client certificate's subject, for handlers.
    identity: Option<Arc<str>>,
}

/// What the connection loop does after a frame.
enum Action {
    Nothing,
    Dispatch(Request),
    /// Answer a STATS frame with this id.
    Stats(u32),
    Close(Close),
}

impl Session {
    /// An ERROR whose text is cut so that the frame fits the client's max_frame.
    fn error(&self, id: u32, code: ErrorCode, text: &str) -> Frame {
        Frame::error_fitting(id, code, text, self.peer_max_frame)
    }

    /// `frame` if its payload fits the client's max_frame; otherwise an ERROR 4 for its
    /// id saying so (a PONG echoing a large PING, the STATS reply).
    fn fitting(&self, frame: Frame) -> Frame {
        let max = self.peer_max_frame;
        if frame.payload.len() <= max {
            return frame;
        }
        let text = format!(
            "frame too large: the {} would be {} bytes, the client's max_frame is {max} bytes",
            frame.kind,
            frame.payload.len()
        );
        self.error(frame.id, ErrorCode::FrameTooLarge, &text)
    }

    /// Applies one frame from the client; replies that need no handler are queued here.
    fn on_frame<R, W>(
        &mut self,
        frame: Frame,
        conn: &mut Conn<R, Codec, W, Codec>,
        config: &Config,
        tally: &mut Tally,
    ) -> Action
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let out = &mut conn.out;
        if !self.handshaken {
            return match accept_hello(&frame, config) {
                Ok(hello) if (hello.max_frame as usize) < MIN_MAX_FRAME => {
                    self.peer_max_frame = hello.max_frame as usize;
                    let reason = format!(
                        "malformed body: the HELLO announces max_frame {}, below the minimum of {MIN_MAX_FRAME} bytes",
                        hello.max_frame
                    );
                    out.push(self.error(0, ErrorCode::MalformedBody, &reason));
                    Action::Close(Close::new(CloseReason::Protocol, reason))
                }
                Ok(hello) => {
                    self.handshaken = true;
                    conn.handshake_done();
                    self.peer_max_frame = hello.max_frame as usize;
                    conn.reader.decoder_mut().set_max_payload(config.max_frame);
                    debug!(
                        version = hello.version,
                        max_frame = hello.max_frame,
                        "handshake done"
                    );
                    Action::Nothing
                }
                Err((code, reason)) => {
                    out.push(self.error(0, code, &reason));
                    let why = if code == ErrorCode::AuthFailed {
                        CloseReason::AuthFailed
                    } else {
                        CloseReason::Protocol
                    };
                    Action::Close(Close::new(why, reason))
                }
            };
        }
        match frame.kind {
            Kind::Request | Kind::Oneway => {
                let oneway = frame.kind == Kind::Oneway;
                if !oneway {
                    if frame.id == 0 {
                        return self.id_zero(frame.kind, out);
                    }
                    if self.ids.contains(&frame.id) {
                        debug!(id = frame.id, "duplicate request id");
                        tally.protocol_errors += 1;
                        tally.errors += 1;
                        let text = format!(
                            "duplicate request id {}: a request with this id is still in flight",
                            frame.id
                        );
                        out.push(self.error(frame.id, ErrorCode::DuplicateId, &text));
                        return Action::Nothing;
                    }
                    self.last_id = frame.id;
                    tally.requests += 1;
                } else {
                    tally.oneway += 1;
                }
                debug!(
                    id = frame.id,
                    kind = %frame.kind,
                    len = frame.payload.len(),
                    payload = %LogHex(&frame.payload),
                    "received"
                );
                Action::Dispatch(Request {
                    id: frame.id,
                    payload: frame.payload,
                    oneway,
                    peer_identity: self.identity.clone(),
                })
            }
            Kind::Ping => {
                tally.pings += 1;
                out.push(self.fitting(Frame::new(Kind::Pong, frame.id, frame.payload)));
                Action::Nothing
            }
            Kind::Stats if frame.id == 0 => self.id_zero(frame.kind, out),
            Kind::Stats => Action::Stats(frame.id),
            Kind::Pong => Action::Nothing,
            Kind::GoAway => {
                debug!("peer sent GOAWAY: finishing its requests");
                self.peer_done = true;
                Action::Nothing
            }
            Kind::Error => {
                let body = crate::wire::ErrorBody::parse(&frame.payload);
                warn!(?body, "peer sent ERROR; closing");
                Action::Close(Close::new(CloseReason::PeerError, "peer sent ERROR"))
            }
            Kind::Hello | Kind::Reply => {
                let reason = format!(
                    "protocol error: a client does not send {} (id {}) after the handshake",
                    frame.kind, frame.id
                );
                // Id 0, whatever the frame's: this ERROR closes the connection.
                out.push(self.error(0, ErrorCode::Protocol, &reason));
                Action::Close(Close::new(CloseReason::Protocol, reason))
            }
        }
    }

    /// Queues the outcome of a finished handler call.
    fn finish<W: AsyncWrite + Unpin>(
        &mut self,
        Finished { id, oneway, result }: Finished,
        out: &mut Outbox<W, Codec>,
        tally: &mut Tally,
    ) {
        let peer_max_frame = self.peer_max_frame;
        if oneway {
            if let Err(err) = result {
                warn!(id, code = %err.code, message = %err.message, "ONEWAY handler failed");
            }
            return;
        }
        self.ids.remove(&id);
        let frame = match result {
            Ok(payload) if payload.len() > peer_max_frame => {
                warn!(
                    id,
                    len = payload.len(),
                    peer_max_frame,
                    "reply larger than the client accepts"
                );
                tally.errors += 1;
                self.error(
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
                tally.replies += 1;
                Frame::reply(id, payload)
            }
            Err(err) => {
                debug!(id, code = %err.code, message = %err.message, "handler failed");
                tally.errors += 1;
                self.error(id, err.code, &err.message)
            }
        };
        out.push(frame);
    }
}

impl Session {
    /// Refuses a REQUEST or STATS with id 0, which is reserved for the connection (an
    /// answer to it would be taken for one about the whole connection).
    fn id_zero<W: AsyncWrite + Unpin>(&self, kind: Kind, out: &mut Outbox<W, Codec>) -> Action {
        let reason =
            format!("protocol error: {kind} with id 0; id 0 is reserved for the connection");
        out.push(self.error(0, ErrorCode::Protocol, &reason));
        Action::Close(Close::new(CloseReason::Protocol, reason))
    }
}

/// Checks the client's HELLO (and its token, where the server requires one); on failure
/// returns the ERROR code and text to send.
fn accept_hello(frame: &Frame, config: &Config) -> Result<Hello, (ErrorCode, String)> {
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
    if let Some(token) = &config.auth_token {
        let offered = hello
            .field(HELLO_AUTH_TOKEN)
            .map_or(&[][..], |value| &value[..]);
        if !token.matches(offered) {
            // The same text whether the token was missing or wrong.
            return Err((ErrorCode::AuthFailed, "authentication failed".into()));
        }
    }
    Ok(hello)
}
