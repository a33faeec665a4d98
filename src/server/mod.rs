//! Accepting and serving connections: the accept loop, one task per connection, the
//! limits, and graceful shutdown. What answers a request is the [`Handler`] (`handler/`).
//!
//! [`run`] takes an already bound listener, so tests bind port 0 and production binds the
//! configured address. Each accepted connection gets a task (tracked by a `TaskTracker`,
//! stopped through a `CancellationToken`) that reads messages, runs requests concurrently
//! (up to `max_in_flight`), and writes each reply as soon as its handler finishes,
//! batching replies that finish together into one write.
//!
//! Layout, top down:
//! - `mod.rs`: [`Server`], [`run`], the drain at shutdown, and what connections share.
//! - `accept.rs`: the accept loop, the `max_connections` slots, the TLS handshake.
//! - `driver.rs`: the one connection loop of every framing, and the `Protocol` trait a
//!   framing implements.
//! - `session.rs`: the courier protocol as an I/O-free state machine (its tests in
//!   `session/tests.rs`).
//! - `ordered.rs`: plain and raw framing, the same way.
//! - `conn.rs`: I/O plumbing: the bounded outbox, the poller with its deadlines, the
//!   close with its linger.
//! - `close.rs`: why a connection ends (`Close`, the deadlines), and how payloads are
//!   logged.
//! - `busy_poll.rs`: `busy_poll`, polling sockets for a while instead of sleeping.
//! - `metrics.rs`: `--metrics`, the counters for Prometheus and the health and readiness
//!   probes over HTTP; `metrics/route.rs`, a router's figures (read from the STATS
//!   snapshot's JSON) as metrics.
//! - `udp/`: UDP, the socket loop and its I/O-free endpoint (sessions, cookie, reply
//!   cache), run by [`Server::run_udp`].
//! - `join.rs`: [`Server::join`], dialling a router and serving that connection.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

use crate::config::{Config, Framing};
use crate::handler::{Handler, Peer};
use crate::stats::{CloseReason, Stats};
use crate::transport::tls::ServerTls;
use crate::transport::Listener;
use crate::wire::{PlainCodec, RawCodec};
use close::Close;
use driver::drive;
use ordered::Ordered;
use session::Session;

mod accept;
mod busy_poll;
mod close;
mod conn;
mod driver;
mod join;
#[cfg(feature = "metrics")]
pub mod metrics;
mod ordered;
mod session;
pub mod udp;

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
    /// Cancelled when [`Server::run`] stops accepting: every connection drains.
    drain: CancellationToken,
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
            drain: CancellationToken::new(),
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

    /// Whether the server still accepts, for readiness checks (`/readyz`) and the service
    /// manager (systemd's `STOPPING=1`): it stops being ready the moment the drain starts.
    pub fn readiness(&self) -> Readiness {
        Readiness(self.drain.clone())
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
        // Pinned in a box: the connection loop reads and writes the stream in place, which
        // needs an `Unpin` one, and this accepts any.
        serve_connection(
            Box::pin(stream),
            self.shared.clone(),
            shutdown,
            None,
            Peer::Unknown,
            None,
        )
        .await
    }

    /// Serves connections from `listener` until `shutdown` completes, then drains; see
    /// [`run`]. Logs the counters when it returns.
    pub async fn run(self, listener: impl Into<Listener>, shutdown: impl Future) {
        let listener = listener.into();
        let shared = self.shared;
        if shared.config.join.is_some() {
            // Its HELLO carries the join token, which only the router may see.
            error!("a server configured to join a router does not listen; use Server::join");
            return;
        }
        let token = self.drain;
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
/// (at debug for an ordinary end, at info for a limit or a fault) and counts it, once.
///
/// `permit`, the connection's slot under `max_connections`, is held until the end.
///
/// Not an async fn: its arguments would then be kept twice for the connection's whole
/// life (as arguments and as their bindings); this block uses each in place (24 bytes
/// less per connection, -Zprint-type-sizes).
#[allow(clippy::manual_async_fn)]
fn serve_connection<S, H>(
    stream: S,
    shared: Arc<Shared<H>>,
    token: CancellationToken,
    identity: Option<Arc<str>>,
    peer: Peer,
    permit: Option<OwnedSemaphorePermit>,
) -> impl Future<Output = CloseReason>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    async move {
        shared.stats.opened();
        debug!("accepted");
        let config = &shared.config;
        let (token, _aged) = aged(token, config.max_connection_age);
        let served = match config.framing {
            Framing::Courier => drive(stream, &shared, token, Session::new(identity, peer)).await,
            Framing::Plain => {
                let session = Ordered::<PlainCodec>::new(config, identity, peer);
                drive(stream, &shared, token, session).await
            }
            Framing::Raw => {
                let session = Ordered::<RawCodec>::new(config, identity, peer);
                drive(stream, &shared, token, session).await
            }
        };
        let reason = match served {
            Ok(close) if close.reason.is_clean() => {
                debug!(%peer, reason = %close.reason, "connection closed");
                close.reason
            }
            Ok(close) => {
                info!(%peer, reason = %close.reason, detail = %close.detail, "connection closed");
                close.reason
            }
            Err(err) => {
                info!(%peer, reason = %CloseReason::IoError, cause = %err, "connection closed");
                CloseReason::IoError
            }
        };
        shared.stats.closed(reason);
        drop(permit);
        reason
    }
}

/// Whether a [`Server`] is accepting or draining; cheap to clone. It cannot start a drain,
/// only watch for one.
#[derive(Debug, Clone)]
pub struct Readiness(CancellationToken);

impl Readiness {
    /// Whether the server has started to drain (it no longer accepts).
    pub fn is_draining(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Completes when the server starts to drain (at once if it has).
    pub async fn draining(&self) {
        self.0.cancelled().await;
    }
}

/// With a `max_connection_age`, a token of the connection's own, cancelled by the
/// server's drain or, after the age jittered by ±10 %, by a timer task (the connection
/// then drains as at shutdown: GOAWAY, its requests answered, close), and the guard that
/// ends that task with the connection. Without one, the server's token as it is: no task,
/// no timer.
fn aged(token: CancellationToken, age: Duration) -> (CancellationToken, Option<DropGuard>) {
    if age.is_zero() {
        return (token, None);
    }
    let own = token.child_token();
    let timer = own.clone();
    let age = age.mul_f64(0.9 + 0.2 * fastrand::f64());
    let expire = async move {
        tokio::select! {
            () = tokio::time::sleep(age) => {
                debug!(?age, "max_connection_age reached: draining the connection");
                timer.cancel();
            }
            () = timer.cancelled() => {}
        }
    };
    tokio::spawn(expire.instrument(tracing::Span::current()));
    (own.clone(), Some(own.drop_guard()))
}

/// Waits for Ctrl-C (SIGINT); on Unix also SIGTERM, on Windows also Ctrl-Break, console
/// close and system shutdown.
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
    // Ctrl-Break, closing the console and system shutdown: what ends a console program on
    // Windows besides Ctrl-C. Windows ends the process itself a few seconds after a close
    // or shutdown event (about 5 s for a console close), which bounds the drain there.
    #[cfg(windows)]
    let terminate = async {
        use tokio::signal::windows::{ctrl_break, ctrl_close, ctrl_shutdown};
        match (ctrl_break(), ctrl_close(), ctrl_shutdown()) {
            (Ok(mut brk), Ok(mut close), Ok(mut shutdown)) => {
                tokio::select! {
                    _ = brk.recv() => {}
                    _ = close.recv() => {}
                    _ = shutdown.recv() => {}
                }
            }
            (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) => {
                error!(cause = %err, "cannot listen for Ctrl-Break, console close or shutdown");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(any(unix, windows)))]
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
