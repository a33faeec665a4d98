//! Running `courier serve` (and `courier route`, a server whose handler is the router)
//! as a service: the `--metrics` endpoint beside the server, and systemd's notify
//! protocol: `READY=1` once the listener is bound (with `Type=notify`, systemd starts
//! what depends on courier only then), `STOPPING=1` once the drain has begun, and
//! `WATCHDOG=1` at half the unit's `WatchdogSec=` while the runtime runs.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) the notifications are nothing at all.
//! A failed notification is logged and never stops the server.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::info;

use courier::config::Config;
use courier::handler::{Handler, PoolStats};
use courier::server::metrics::serve_metrics;
use courier::server::Server;
use courier::transport::Listener;

/// Binds the `--metrics` address, if one is configured; checked for exposure by
/// [`Config::check_metrics_exposure`] before.
///
/// # Errors
/// When the address cannot be bound.
pub(crate) async fn bind_metrics(
    config: &Config,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some(addr) = &config.metrics else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr.as_str())
        .await
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    if let Ok(local) = listener.local_addr() {
        info!(addr = %local, "serving /metrics, /healthz and /readyz");
    }
    Ok(Some(listener))
}

/// What the server listens on: a stream listener, or a UDP socket.
pub(crate) enum Bound {
    /// TCP, a Unix socket or a named pipe.
    Stream(Listener),
    /// `udp:HOST:PORT`.
    Udp(tokio::net::UdpSocket),
}

/// Runs `server` on `listener` until `stop`, with the metrics endpoint on `metrics` (with
/// `pool`'s workers when the handler is a pool; kept
/// up through the drain, so that `/readyz` answers 503 meanwhile) and the service
/// manager told of each step.
pub(crate) async fn run<H: Handler>(
    server: Server<H>,
    listener: Option<Bound>,
    metrics: Option<tokio::net::TcpListener>,
    pool: Option<Arc<PoolStats>>,
    stop: impl Future,
) {
    let metrics_stop = CancellationToken::new();
    let metrics_task = metrics.map(|metrics| {
        tokio::spawn(serve_metrics(
            metrics,
            server.stats(),
            pool,
            server.readiness(),
            metrics_stop.clone(),
        ))
    });
    // STOPPING=1 once the drain has begun, so that /readyz already answers 503 when the
    // service manager hears it. Sent from the stop signal itself, it went out before
    // the server started to drain, and a check of /readyz just after it could still be
    // told 200 (tests/service.rs saw that).
    let readiness = server.readiness();
    let stopping = tokio::spawn({
        let readiness = readiness.clone();
        async move {
            readiness.draining().await;
            notify(State::Stopping);
        }
    });
    // The listener is bound: connections made from now on wait in its backlog. (A server
    // that joins a router has no listener: it is ready as soon as it starts dialling.)
    notify(State::Ready);
    // After READY=1, which is then what the service manager hears first: the pings'
    // first tick comes at once, and on another worker thread it went out before READY=1
    // (tests/service.rs saw that under the load of the whole suite).
    let watchdog = watchdog();
    match listener {
        Some(Bound::Stream(listener)) => server.run(listener, stop).await,
        Some(Bound::Udp(socket)) => server.run_udp(socket, stop).await,
        None => server.join(stop).await,
    }
    // A drain with nothing to wait for can end before that task ran; a server that never
    // drained (it could not start) says nothing.
    if readiness.is_draining() {
        let _ = stopping.await;
    } else {
        stopping.abort();
    }
    metrics_stop.cancel();
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
}

/// What courier tells the service manager.
#[derive(Debug, Clone, Copy)]
enum State {
    Ready,
    Stopping,
    Watchdog,
}

/// Sends one notification to the service manager, if there is one (systemd is Unix only;
/// elsewhere this does nothing).
fn notify(state: State) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    #[cfg(unix)]
    {
        let (message, name) = match state {
            State::Ready => (sd_notify::NotifyState::Ready, "READY=1"),
            State::Stopping => (sd_notify::NotifyState::Stopping, "STOPPING=1"),
            State::Watchdog => (sd_notify::NotifyState::Watchdog, "WATCHDOG=1"),
        };
        match sd_notify::notify(&[message]) {
            Ok(()) => tracing::debug!(state = name, "told the service manager"),
            Err(err) => {
                tracing::warn!(state = name, cause = %err, "cannot notify the service manager");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = state;
}

/// With `WATCHDOG_USEC` set for this process (the unit's `WatchdogSec=`), a task that
/// sends `WATCHDOG=1` at half that interval, as sd_watchdog_enabled(3) advises. It runs
/// on the server's runtime, so a runtime that stops running tasks stops the pings and
/// systemd restarts the service.
fn watchdog() -> Option<tokio::task::JoinHandle<()>> {
    #[cfg(unix)]
    let interval = sd_notify::watchdog_enabled()?.checked_div(2)?;
    #[cfg(not(unix))]
    let interval = std::time::Duration::ZERO;
    if interval.is_zero() {
        return None;
    }
    info!(
        ?interval,
        "sending the systemd watchdog a keep-alive at this interval"
    );
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        loop {
            ticks.tick().await;
            notify(State::Watchdog);
        }
    }))
}
