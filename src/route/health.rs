//! The supervisor of one dialled backend: it opens the backend's connections, PINGs each
//! one every `ping_interval`, takes the backend out of service when a PING fails or
//! times out, when the request path ejects it, or when it sends GOAWAY, and dials it
//! again after a backoff (random, doubling with each failure in a row).

use std::sync::Arc;
use std::time::Duration;

use futures::future::{join_all, try_join_all};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::backend::{Backend, Health};
use crate::client::{Backoff, Client, ClientConfig};
use crate::config::RouteConfig;

/// Why a healthy spell of a backend ended.
enum End {
    /// A PING failed or the request path ejected it.
    Failed,
    /// It sent GOAWAY: its connections finish what they have.
    Draining,
    /// The router stops.
    Stop,
}

/// Keeps `backend` (at `addr`) in service while it is healthy, until `stop`.
pub(crate) async fn supervise(
    backend: Arc<Backend>,
    addr: String,
    client: ClientConfig,
    settings: Arc<RouteConfig>,
    stop: CancellationToken,
) {
    let backoff = Backoff {
        initial: settings.readmit_backoff,
        max: settings.readmit_backoff_max,
    };
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        let dial = (0..settings.connections_per_backend)
            .map(|_| Client::connect_with(addr.as_str(), client.clone()));
        let ended = match try_join_all(dial).await {
            Ok(conns) => {
                info!(backend = %backend.name, "backend in service");
                backend.admit(conns);
                let end = watch(&backend, &settings, &mut failures, &stop).await;
                match end {
                    End::Draining => backend.retire(Health::Draining),
                    End::Failed => backend.eject("a health check failed"),
                    End::Stop => backend.retire(Health::Connecting),
                }
                end
            }
            Err(err) => {
                debug!(backend = %backend.name, error = %err, "cannot connect to the backend");
                backend.set_health(Health::Ejected);
                End::Failed
            }
        };
        match ended {
            End::Stop => return,
            End::Failed => failures = failures.saturating_add(1),
            // A draining backend is likely restarting: dial again soon.
            End::Draining => failures = 1,
        }
        let wait = backoff.delay(failures);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Keeps a joined worker's connection in service until it fails a health check, sends
/// GOAWAY, or the router stops; then takes it out of service.
pub(crate) async fn watch_joined(
    backend: &Backend,
    settings: &RouteConfig,
    stop: &CancellationToken,
) {
    let mut failures = 0;
    match watch(backend, settings, &mut failures, stop).await {
        End::Draining => backend.retire(Health::Draining),
        End::Failed => backend.eject("a health check failed"),
        End::Stop => backend.retire(Health::Connecting),
    }
}

/// PINGs the backend's connections every `ping_interval` until one fails, the request
/// path ejects the backend, or it sends GOAWAY. Each round of PINGs that all succeed
/// resets `failures`.
async fn watch(
    backend: &Backend,
    settings: &RouteConfig,
    failures: &mut u32,
    stop: &CancellationToken,
) -> End {
    let mut tick = tokio::time::interval(settings.ping_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = backend.ejected.notified() => {}
            () = stop.cancelled() => return End::Stop,
        }
        match backend.health() {
            Health::Up => {}
            Health::Draining => return End::Draining,
            Health::Connecting | Health::Ejected => return End::Failed,
        }
        let conns = backend.conns();
        if conns.iter().any(Client::is_going_away) {
            return End::Draining;
        }
        if !ping_all(&conns, settings.ping_timeout).await {
            // A GOAWAY that came during the round explains a failed PING.
            if conns.iter().any(Client::is_going_away) {
                return End::Draining;
            }
            return End::Failed;
        }
        *failures = 0;
    }
}

/// Whether every connection answered a PING within `timeout`.
async fn ping_all(conns: &[Client], timeout: Duration) -> bool {
    let pings = conns
        .iter()
        .map(|client| tokio::time::timeout(timeout, client.ping(&b"health"[..])));
    join_all(pings)
        .await
        .into_iter()
        .all(|result| matches!(result, Ok(Ok(_))))
}
