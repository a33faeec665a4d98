//! [`Server::join`]: a server that dials its router instead of listening (`courier serve
//! --join ROUTER`), so a worker behind NAT or a firewall, or one an autoscaler started,
//! serves without the router being reconfigured.
//!
//! The dialled connection is served exactly as an accepted one (same session, limits,
//! counters); the roles of the protocol do not change: the worker speaks first with its
//! HELLO, carrying the join token (field 0x01), and the router sends REQUESTs.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{serve_connection, Server, Shared};
use crate::handler::{Handler, Peer};
use crate::stats::CloseReason;
use crate::transport::connect_stream;

/// Ceiling of the wait before dialling again; it doubles from `FIRST_BACKOFF` with each
/// failure in a row.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl<H: Handler> Server<H> {
    /// Dials the router at `config.join` and serves requests over that connection until
    /// `shutdown` completes; when the connection ends, dials again after a jittered,
    /// doubling wait (up to 5 s). On `shutdown` it drains as [`Server::run`] does: GOAWAY
    /// to the router, every request received answered (within `drain_timeout`).
    ///
    /// Returns at once, logging why, when `config.join` is not set.
    pub async fn join(self, shutdown: impl Future) {
        let shared = self.shared;
        let Some(addr) = shared.config.join.clone() else {
            warn!("join: no router address configured");
            return;
        };
        // The server's own drain token: cancelling it also ends its readiness (/readyz,
        // STOPPING=1), as for a server that listens.
        let token = self.drain;
        let serving = dial_and_serve(&shared, &addr, &token);
        tokio::pin!(serving);
        tokio::select! {
            () = &mut serving => {}
            _ = shutdown => {
                token.cancel();
                let drain_timeout = shared.config.drain_timeout;
                if tokio::time::timeout(drain_timeout, &mut serving).await.is_err() {
                    warn!("drain timeout passed; closing the router connection");
                    shared.abort.cancel();
                    let _ = tokio::time::timeout(super::ABORT_GRACE, serving).await;
                }
            }
        }
        info!(counters = %shared.stats.snapshot(), "counters at shutdown");
    }
}

/// Dials the router and serves each connection, dialling again when one ends, until
/// `token` is cancelled (then the connection being served drains first).
async fn dial_and_serve<H: Handler>(
    shared: &Arc<Shared<H>>,
    addr: &str,
    token: &CancellationToken,
) {
    let mut failures = 0u32;
    while !token.is_cancelled() {
        match connect_stream(addr, CONNECT_TIMEOUT, None).await {
            Ok((read_half, write_half)) => {
                info!(router = %addr, "joined router");
                let stream = tokio::io::join(read_half, write_half);
                let reason = serve_connection(
                    stream,
                    shared.clone(),
                    token.clone(),
                    None,
                    Peer::Unknown,
                    None,
                )
                .await;
                info!(router = %addr, %reason, "router connection ended");
                // An ERROR from the router (a refused token, say) is a failure: wait
                // longer each time. Any other end was a working connection.
                failures = if reason == CloseReason::PeerError {
                    failures.saturating_add(1)
                } else {
                    1
                };
            }
            Err(err) => {
                warn!(router = %addr, error = %err, "cannot reach the router");
                failures = failures.saturating_add(1);
            }
        }
        let doublings = failures.saturating_sub(1).min(10);
        let ceiling = FIRST_BACKOFF
            .saturating_mul(1 << doublings)
            .min(MAX_BACKOFF);
        tokio::select! {
            () = tokio::time::sleep(ceiling.mul_f64(fastrand::f64())) => {}
            () = token.cancelled() => {}
        }
    }
}
