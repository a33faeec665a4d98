//! Letting connections in: the accept loop with its backoff, the `max_connections` slot
//! each connection holds, the busy ERROR for those turned away, and the TLS handshake
//! before a TLS connection is served.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, debug_span, error, info, Instrument};

use super::{serve_connection, Shared};
use crate::config::{Config, Framing};
use crate::handler::{Handler, Peer};
use crate::stats::CloseReason;
use crate::transport::tls::{ServerStream, ServerTls};
use crate::transport::{Accepted, Listener};
use crate::wire::{Codec, ErrorCode, Frame};

/// Longest pause after an accept error that is not about one connection (out of file
/// descriptors, say). The pause doubles from 10 ms up to this.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts connections from `listener` and hands each to `admit` until `shutdown`
/// completes.
///
/// Accept errors never end the loop: errors about one connection are skipped, others (such
/// as running out of file descriptors) are logged and followed by a pause of up to a second.
pub(super) async fn accept_loop<H: Handler>(
    listener: &Listener,
    admit: &Admit<'_, H>,
    shutdown: impl Future,
) {
    tokio::pin!(shutdown);
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => return,
        };
        match accepted {
            Ok(accepted) => {
                backoff = Duration::ZERO;
                admit.admit(accepted);
            }
            Err(err) if is_connection_error(&err) => {
                debug!(cause = %err, "accept failed for one connection");
            }
            Err(err) => {
                admit.shared.stats.accept_error();
                backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                error!(cause = %err, pause = ?backoff, "accept failed; pausing before the next accept");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = &mut shutdown => return,
                }
            }
        }
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

/// What the accept loop needs to let a connection in or turn it away.
pub(super) struct Admit<'a, H> {
    pub(super) shared: &'a Arc<Shared<H>>,
    /// One permit per open connection (`max_connections`).
    pub(super) limit: Arc<Semaphore>,
    /// Cancelled at shutdown: every connection drains.
    pub(super) token: &'a CancellationToken,
    pub(super) tracker: &'a TaskTracker,
    /// TLS for TCP connections, when the server speaks it.
    pub(super) tls: Option<&'a ServerTls>,
}

impl<H: Handler> Admit<'_, H> {
    /// Serves an accepted connection on a task of its own, or turns it away when
    /// `max_connections` are open.
    fn admit(&self, accepted: Accepted) {
        match accepted {
            Accepted::Tcp(stream, peer) => {
                // Small requests and replies must leave at once rather than wait for
                // Nagle's algorithm; batching is done by the connection task instead.
                if let Err(err) = stream.set_nodelay(true) {
                    debug!(%peer, cause = %err, "cannot set TCP_NODELAY");
                }
                if let Some(tls) = self.tls {
                    // A busy ERROR in plain bytes would mean nothing to a TLS client;
                    // it is closed.
                    let busy = |_: &[u8]| Ok(0);
                    if let Some(permit) = self.permit(&peer, busy) {
                        self.spawn_tls(stream, Peer::Ip(peer), permit, tls.clone());
                    }
                    return;
                }
                let busy = |bytes: &[u8]| stream.try_write(bytes);
                if let Some(permit) = self.permit(&peer, busy) {
                    self.spawn(stream, Peer::Ip(peer), permit);
                }
            }
            #[cfg(windows)]
            Accepted::Pipe(pipe) => {
                let peer = Peer::Pipe {
                    pid: crate::transport::pipe_client_pid(&pipe),
                };
                let busy = |bytes: &[u8]| pipe.try_write(bytes);
                if let Some(permit) = self.permit(&peer, busy) {
                    self.spawn(pipe, peer, permit);
                }
            }
            #[cfg(unix)]
            Accepted::Unix(stream) => {
                let cred = stream.peer_cred().ok();
                let peer = Peer::Unix {
                    uid: cred.map(|cred| cred.uid()),
                    pid: cred.and_then(|cred| cred.pid()),
                };
                let busy = |bytes: &[u8]| stream.try_write(bytes);
                if let Some(permit) = self.permit(&peer, busy) {
                    self.spawn(stream, peer, permit);
                }
            }
        }
    }

    /// A connection slot, or `None` after telling the peer the server is busy.
    ///
    /// The busy ERROR is written without waiting (`try_write`): it is a few dozen bytes
    /// into a fresh socket's empty send buffer, so a non-blocking write takes it whole,
    /// and the accept loop never stalls on a rejected peer. Plain and raw framing have no
    /// way to say why, so those peers are only closed.
    fn permit(
        &self,
        peer: &dyn std::fmt::Display,
        try_write: impl Fn(&[u8]) -> io::Result<usize>,
    ) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.limit.clone().try_acquire_owned() {
            return Some(permit);
        }
        let config = &self.shared.config;
        self.shared.stats.rejected_busy();
        let limit = config.max_connections;
        info!(%peer, limit, "rejected connection: server busy");
        if config.framing == Framing::Courier {
            let text =
                format!("server busy: {limit} connections, the configured limit (max_connections)");
            let bytes = connection_error(ErrorCode::ServerBusy, &text);
            if let Err(err) = try_write(&bytes) {
                debug!(%peer, cause = %err, "could not send the busy ERROR");
            }
        }
        None
    }

    /// Serves the connection on a task of its own, holding `permit` until it ends.
    fn spawn<S>(&self, stream: S, peer: Peer, permit: OwnedSemaphorePermit)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // The connection's future is the task itself, with no async block around it: a
        // wrapper would keep its own copies of the stream, the permit and the handles for
        // the connection's whole life (128 bytes more per idle connection, measured with
        // bench/idle_memory and -Zprint-type-sizes).
        let served = serve_connection(
            stream,
            self.shared.clone(),
            self.token.clone(),
            None,
            peer,
            Some(permit),
        );
        // The span that names the peer in every line of the connection is a debug span:
        // entering an enabled span at each poll of the task cost 7.6 % of the server's
        // instructions per request (4,333 -> 4,002 without it, bench/instructions). At
        // the default level it is disabled and costs nothing; the lines logged at info and
        // above about a connection carry `peer` themselves.
        self.tracker
            .spawn(served.instrument(debug_span!("conn", %peer)));
    }

    /// As [`Admit::spawn`], after a TLS handshake bounded by `handshake_timeout`.
    fn spawn_tls(
        &self,
        stream: TcpStream,
        peer: Peer,
        permit: OwnedSemaphorePermit,
        tls: ServerTls,
    ) {
        let shared = self.shared.clone();
        let token = self.token.clone();
        self.tracker.spawn(
            async move {
                let _permit = permit;
                let handshake = tokio::select! {
                    done = tls_handshake(stream, &tls, &shared.config) => done,
                    () = shared.abort.cancelled() => Err((CloseReason::DrainTimeout, "connection closed during its TLS handshake".into())),
                };
                match handshake {
                    Ok((stream, identity)) => {
                        match &identity {
                            Some(subject) => {
                                info!(client = %subject, %peer, "TLS client certificate verified")
                            }
                            None => debug!("TLS handshake done"),
                        }
                        serve_connection(stream, shared, token, identity, peer, None).await;
                    }
                    Err((reason, detail)) => {
                        // Counted as a connection that opened and closed, as a served one.
                        shared.stats.opened();
                        info!(%peer, %reason, %detail, "connection closed");
                        shared.stats.closed(reason);
                    }
                }
            }
            .instrument(debug_span!("conn", %peer)),
        );
    }
}

/// An ERROR about the whole connection, encoded, for a peer that is about to be closed
/// before its connection loop runs (written with a non-blocking `try_write`: a few dozen
/// bytes into a fresh socket's empty send buffer).
fn connection_error(code: ErrorCode, text: &str) -> BytesMut {
    let mut bytes = BytesMut::new();
    // Encoding a short ERROR into a BytesMut cannot fail.
    let _ = Codec::new(0).encode(Frame::error(0, code, text), &mut bytes);
    bytes
}

/// A TLS connection ready to serve, with the subject of the client's verified
/// certificate, if it sent one.
type Handshaken = (ServerStream, Option<Arc<str>>);

/// The server side of a TLS handshake, within `handshake_timeout`; on failure, the
/// close reason and what happened.
///
/// A courier client that does not speak TLS sends nothing at all (it waits for the
/// server's HELLO), while a TLS client starts at once. So a peer that has sent nothing by
/// the deadline is told, in a plain courier ERROR, that this port speaks TLS: a clear
/// error instead of a silent close.
async fn tls_handshake(
    stream: TcpStream,
    tls: &ServerTls,
    config: &Config,
) -> Result<Handshaken, (CloseReason, String)> {
    let failed = |detail: String| (CloseReason::Tls, detail);
    let deadline = tokio::time::Instant::now() + config.handshake_timeout;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Err(_) => {
            let text = "this port speaks TLS: connect with TLS (courier: --tls-ca)";
            let _ = stream.try_write(&connection_error(ErrorCode::Protocol, text));
            return Err(failed(format!(
                "no TLS handshake within {} (handshake_timeout): the peer sent nothing, as a plaintext courier client does; told it this port speaks TLS",
                humantime::format_duration(config.handshake_timeout)
            )));
        }
        Ok(Err(err)) => return Err(failed(format!("before the TLS handshake: {err}"))),
        Ok(Ok(0)) => return Err(failed("closed before the TLS handshake".into())),
        Ok(Ok(_)) => {}
    }
    match tokio::time::timeout_at(deadline, tls.accept(stream)).await {
        Err(_) => Err(failed(format!(
            "TLS handshake not finished within {} (handshake_timeout)",
            humantime::format_duration(config.handshake_timeout)
        ))),
        Ok(Err(err)) => Err(failed(format!("TLS handshake failed: {err}"))),
        Ok(Ok(done)) => Ok(done),
    }
}
