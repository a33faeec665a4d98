//! `courier route`: a [`Router`] is a [`Handler`] that sends each request to one of many
//! backends, so the normal server runs it and keeps every limit toward the router's
//! clients (frame size, in-flight, deadlines, slow readers, the drain with GOAWAY).
//!
//! Each request goes to the cheaper of two backends drawn at random (`balance.rs`): the
//! cost is the requests outstanding weighted by a peak-EWMA of the latency (`ewma.rs`,
//! linkerd's choice). It goes over one of a few connections per backend, each a
//! [`Client`] multiplexing many requests. Every request ends in exactly one of:
//! - the backend's answer (its REPLY, or its ERROR passed through);
//! - sent again elsewhere, when the backend provably did not receive it (the connection
//!   was refused or had ended, or its GOAWAY shows it was not read): no budget needed,
//!   it never ran;
//! - sent again elsewhere when it is idempotent and the backend failed with the outcome
//!   unknown, within the retry budget (`budget.rs`);
//! - ERROR 18 "outcome unknown" otherwise, naming the backend: never silence, never a
//!   second run;
//! - ERROR 19 "no backend available" at once when no backend takes requests.
//!
//! Layout: this file (the router and the request path), `backend.rs` (one backend's
//! connections, health and figures), `health.rs` (the supervisor that dials, PINGs,
//! ejects and re-admits a backend), `join.rs` (workers that dial in), `balance.rs`,
//! `ewma.rs`, `budget.rs`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::client::{CallOptions, Client, ClientConfig, ClientError, Outcome};
use crate::config::RouteConfig;
use crate::handler::{Handler, HandlerError, Request};
use crate::wire::ErrorCode;
use backend::Backend;
use budget::RetryBudget;

mod backend;
mod balance;
mod budget;
mod ewma;
mod health;
mod join;

/// The router's own counters.
#[derive(Debug, Default)]
struct Counters {
    routed: AtomicU64,
    resent_not_received: AtomicU64,
    retried: AtomicU64,
    retry_budget_exhausted: AtomicU64,
    outcome_unknown: AtomicU64,
    no_backend: AtomicU64,
}

/// Routes requests to backends. Cheap to clone; the backends' supervisors stop when
/// [`Router::stop`] is called.
#[derive(Debug, Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: Arc<RouteConfig>,
    backends: RwLock<Vec<Arc<Backend>>>,
    budget: Mutex<RetryBudget>,
    counters: Counters,
    stop: CancellationToken,
}

impl Router {
    /// A router over `settings.backends`, dialling each with `client` (its TLS, token and
    /// `max_frame`: a reply larger than that ejects the backend). Starts one supervisor
    /// task per backend, so it must be called within a Tokio runtime.
    pub fn start(settings: RouteConfig, client: ClientConfig) -> Router {
        let settings = Arc::new(settings);
        let client = ClientConfig {
            call_timeout: settings.call_timeout,
            ..client
        };
        let budget = RetryBudget::new(
            settings.retry_budget_percent,
            settings.retry_budget_per_second,
        );
        let router = Router {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                backends: RwLock::new(Vec::new()),
                budget: Mutex::new(budget),
                counters: Counters::default(),
                stop: CancellationToken::new(),
            }),
        };
        for addr in &settings.backends {
            let backend = Arc::new(Backend::new(addr.clone()));
            router.write_backends().push(backend.clone());
            tokio::spawn(health::supervise(
                backend,
                addr.clone(),
                client.clone(),
                settings.clone(),
                router.inner.stop.clone(),
            ));
        }
        router
    }

    /// Accepts workers that join (`courier serve --join`) from `listener`, each presenting
    /// `token` in its HELLO; each joined connection is a backend of its own, in service as
    /// soon as its HELLO is checked. `client` says how to speak to them (`max_frame`).
    pub fn accept_joins(
        &self,
        listener: crate::transport::Listener,
        token: crate::config::AuthToken,
        client: ClientConfig,
    ) {
        let client = ClientConfig {
            call_timeout: self.inner.settings.call_timeout,
            // The worker checks no token of ours: it dialled us.
            auth_token: None,
            tls: None,
            ..client
        };
        let stop = self.inner.stop.clone();
        tokio::spawn(join::accept_joins(
            self.clone(),
            listener,
            token,
            client,
            stop,
        ));
    }

    /// Stops dialling and pinging the backends. Requests in flight still finish.
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }

    /// The router's counters and one object per backend, as the STATS reply's `route`
    /// member carries them (docs/ROUTE.md).
    pub fn figures(&self) -> serde_json::Value {
        let c = &self.inner.counters;
        let backends: Vec<_> = self
            .read_backends()
            .iter()
            .map(|backend| backend.figures())
            .collect();
        json!({
            "routed": c.routed.load(Relaxed),
            "resent_not_received": c.resent_not_received.load(Relaxed),
            "retried": c.retried.load(Relaxed),
            "retry_budget_exhausted": c.retry_budget_exhausted.load(Relaxed),
            "outcome_unknown": c.outcome_unknown.load(Relaxed),
            "no_backend": c.no_backend.load(Relaxed),
            "backends": backends,
        })
    }

    /// The backend for the next request, and the connection to send it on: power of
    /// two choices on outstanding requests weighted by latency (`ewma.rs`) among those
    /// that take requests, leaving out `tried`.
    fn pick(&self, tried: &[Arc<Backend>]) -> Option<(Arc<Backend>, Client)> {
        let backends = self.read_backends();
        let candidates: Vec<(&Arc<Backend>, Client)> = backends
            .iter()
            .filter(|backend| !tried.iter().any(|t| Arc::ptr_eq(t, backend)))
            .filter_map(|backend| Some((backend, backend.connection()?)))
            .collect();
        let loads: Vec<usize> = candidates.iter().map(|(b, _)| b.cost()).collect();
        let chosen = balance::pick(&loads, |n| fastrand::usize(..n))?;
        let (backend, client) = &candidates[chosen];
        Some((Arc::clone(backend), client.clone()))
    }

    /// Sends `request` to backends until one answers or the rules above say stop.
    async fn route(&self, request: Request) -> Result<Bytes, HandlerError> {
        let inner = &self.inner;
        let started = tokio::time::Instant::now();
        inner.counters.routed.fetch_add(1, Relaxed);
        self.budget().deposit();
        let mut tried: Vec<Arc<Backend>> = Vec::new();
        // The last backend's ERROR 14 (busy), passed on if no other backend is left.
        let mut busy: Option<HandlerError> = None;
        if request.oneway {
            return self.forward_oneway(request.payload).await;
        }
        loop {
            let Some((backend, client)) = self.pick(&tried) else {
                return Err(busy.unwrap_or_else(|| self.no_backend(tried.len())));
            };
            // The caller's time left travels on to the backend.
            let timeout = request
                .timeout
                .map_or(inner.settings.call_timeout, |caller| {
                    let left = caller.saturating_sub(started.elapsed());
                    left.clamp(Duration::from_millis(1), inner.settings.call_timeout)
                });
            let options = CallOptions {
                idempotent: request.idempotent,
                timeout: Some(timeout),
            };
            let sent = tokio::time::Instant::now();
            let result = {
                let _outstanding = backend.start();
                client.call_with(request.payload.clone(), options).await
            };
            let err = match result {
                Ok(reply) => {
                    backend.served(false, sent.elapsed());
                    return Ok(reply);
                }
                // Busy: refused at once, so not processed; another backend may take it.
                Err(ClientError::Server {
                    code: code @ ErrorCode::Busy,
                    message,
                }) => {
                    backend.served(true, sent.elapsed());
                    inner.counters.resent_not_received.fetch_add(1, Relaxed);
                    busy = Some(HandlerError { code, message });
                    tried.push(backend);
                    continue;
                }
                Err(ClientError::Server { code, message }) => {
                    backend.served(true, sent.elapsed());
                    return Err(HandlerError { code, message });
                }
                Err(err) => err,
            };
            backend.failed(&err, inner.settings.eject_after);
            let again = match err.outcome() {
                Outcome::NotReceived => {
                    inner.counters.resent_not_received.fetch_add(1, Relaxed);
                    true
                }
                _ if request.idempotent => self.may_retry(),
                _ => false,
            };
            if !again {
                inner.counters.outcome_unknown.fetch_add(1, Relaxed);
                return Err(HandlerError {
                    code: ErrorCode::OutcomeUnknown,
                    message: format!("outcome unknown: backend {}: {err}", backend.name),
                });
            }
            backend.count_retry();
            tried.push(backend);
        }
    }

    /// A ONEWAY message goes on as one, to one backend; nobody hears of its fate, so it
    /// is neither retried nor answered (the server logs a failure).
    async fn forward_oneway(&self, payload: Bytes) -> Result<Bytes, HandlerError> {
        let Some((backend, client)) = self.pick(&[]) else {
            return Err(self.no_backend(0));
        };
        backend.count_request();
        let sent = client.send_oneway(payload).await;
        sent.map(|()| Bytes::new()).map_err(|err| HandlerError {
            code: ErrorCode::OutcomeUnknown,
            message: format!("ONEWAY to backend {}: {err}", backend.name),
        })
    }

    /// Whether the budget allows one more retry of an idempotent request.
    fn may_retry(&self) -> bool {
        let granted = self.budget().withdraw();
        let counter = if granted {
            &self.inner.counters.retried
        } else {
            &self.inner.counters.retry_budget_exhausted
        };
        counter.fetch_add(1, Relaxed);
        granted
    }

    /// ERROR 19: no backend took the request (after `tried` did not receive it).
    fn no_backend(&self, tried: usize) -> HandlerError {
        self.inner.counters.no_backend.fetch_add(1, Relaxed);
        let message = if tried == 0 {
            "no backend available: none is healthy".to_owned()
        } else {
            format!("no backend available: {tried} backends did not receive the request, and no other is healthy")
        };
        HandlerError {
            code: ErrorCode::NoBackend,
            message,
        }
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, RetryBudget> {
        // The budget holds no invariant a panic could break half-way.
        self.inner
            .budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read_backends(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Backend>>> {
        self.inner
            .backends
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_backends(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Backend>>> {
        self.inner
            .backends
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Handler for Router {
    fn call(&self, request: Request) -> impl Future<Output = Result<Bytes, HandlerError>> + Send {
        self.route(request)
    }
}
