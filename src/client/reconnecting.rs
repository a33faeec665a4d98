//! [`Reconnecting`]: a client for long-lived programs that connects again when its
//! connection ends, with a jittered, doubling backoff between failed attempts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::debug;

use super::{Client, ClientConfig, ClientError};

/// How long a [`Reconnecting`] client waits between failed connection attempts: a random
/// time between zero and a ceiling that doubles from `initial` up to `max` with each
/// failure ("full jitter"), so that many clients of a restarted server do not all reconnect
/// in the same instant.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Ceiling of the first wait.
    pub initial: Duration,
    /// Largest ceiling.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The wait after `failures` consecutive failed attempts (at least 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let ceiling = self.initial.saturating_mul(1 << doublings).min(self.max);
        ceiling.mul_f64(fastrand::f64())
    }
}

/// A client that reconnects. Calls go through one connection while it lasts; when it ends
/// (the server closed it, went away, or died), the next call connects again, after a
/// [`Backoff`] wait if the previous attempt failed.
///
/// A request the protocol proves the server never received, because its connection was
/// going away (a GOAWAY whose last id is before it: a server draining for shutdown or
/// for `max_connection_age`) or had already closed, is sent again on a new connection, up
/// to [`Reconnecting::MAX_RESENDS`] times: it was not processed, so this cannot run it
/// twice, and a server's rolling restart or connection rotation never reaches the caller.
/// Nothing else is retried behind the caller's back: a call that fails otherwise returns
/// its error, so the caller decides, by [`ClientError::outcome`]:
/// [`ClientError::OutcomeUnknown`] and [`ClientError::Timeout`] mean it may have been
/// processed; connection errors ([`ClientError::Refused`] and the like) mean nothing was
/// sent; [`ClientError::GoingAway`] and [`ClientError::Closed`] come back only when the
/// resends ran out.
#[derive(Debug, Clone)]
pub struct Reconnecting {
    inner: Arc<ReconnectingInner>,
}

#[derive(Debug)]
struct ReconnectingInner {
    addr: String,
    config: ClientConfig,
    backoff: Backoff,
    state: tokio::sync::Mutex<ConnState>,
}

#[derive(Debug, Default)]
struct ConnState {
    client: Option<Client>,
    failures: u32,
    next_attempt: Option<tokio::time::Instant>,
}

impl Reconnecting {
    /// How many times one call's request is sent again after the server proved it was not
    /// received (each on a new connection). More would only hide a server that keeps
    /// closing every connection it accepts.
    pub const MAX_RESENDS: u32 = 3;

    /// A client for `addr` that connects on its first call.
    pub fn new(addr: impl Into<String>, config: ClientConfig, backoff: Backoff) -> Reconnecting {
        Reconnecting {
            inner: Arc::new(ReconnectingInner {
                addr: addr.into(),
                config,
                backoff,
                state: tokio::sync::Mutex::new(ConnState::default()),
            }),
        }
    }

    /// Sends `payload` as a REQUEST and waits for its reply, connecting first if needed,
    /// and sending it again on a new connection when the server proves it did not
    /// receive it (see [`Reconnecting`]).
    ///
    /// # Errors
    /// As [`Client::connect`] when there is no connection and making one fails, then as
    /// [`Client::call`]; [`ClientError::GoingAway`] or [`ClientError::Closed`] only after
    /// [`Reconnecting::MAX_RESENDS`] resends.
    pub async fn call(&self, payload: impl Into<Bytes>) -> Result<Bytes, ClientError> {
        let payload = payload.into();
        let mut resends = 0;
        loop {
            let client = self.connection().await?;
            let result = client.call(payload.clone()).await;
            if matches!(
                result,
                Err(ClientError::GoingAway
                    | ClientError::Closed { .. }
                    | ClientError::OutcomeUnknown { .. }
                    | ClientError::Protocol(_))
            ) {
                self.forget(&client).await;
            }
            match result {
                Err(ClientError::GoingAway | ClientError::Closed { .. })
                    if resends < Self::MAX_RESENDS =>
                {
                    resends += 1;
                    debug!(addr = %self.inner.addr, resends, "not received; sending again on a new connection");
                }
                result => return result,
            }
        }
    }

    /// The current connection, or a new one.
    async fn connection(&self) -> Result<Client, ClientError> {
        let mut state = self.inner.state.lock().await;
        if let Some(client) = &state.client {
            if !client.is_closed() {
                return Ok(client.clone());
            }
            state.client = None;
        }
        if let Some(at) = state.next_attempt {
            tokio::time::sleep_until(at).await;
        }
        match Client::connect_with(self.inner.addr.as_str(), self.inner.config.clone()).await {
            Ok(client) => {
                state.failures = 0;
                state.next_attempt = None;
                state.client = Some(client.clone());
                Ok(client)
            }
            Err(err) => {
                state.failures = state.failures.saturating_add(1);
                let wait = self.inner.backoff.delay(state.failures);
                debug!(addr = %self.inner.addr, cause = %err, ?wait, "connect failed");
                state.next_attempt = Some(tokio::time::Instant::now() + wait);
                Err(err)
            }
        }
    }

    /// Drops `client` as the current connection, unless another call already replaced it.
    async fn forget(&self, client: &Client) {
        let mut state = self.inner.state.lock().await;
        if state
            .client
            .as_ref()
            .is_some_and(|current| current.commands.same_channel(&client.commands))
        {
            state.client = None;
        }
    }
}
