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
//!   second run, and never ERROR 19 for a request that may have run somewhere;
//! - ERROR 19 "no backend available" at once when no backend takes requests (or the
//!   refusal of the last one tried: busy, or too large for it).
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

/// What one send of a request to one backend came to.
#[derive(Debug)]
enum Attempt {
    /// The backend answered: its REPLY, or its ERROR as it was.
    Answered(Result<Bytes, HandlerError>),
    /// The backend refused it unprocessed (busy), or it was too large to send there:
    /// another backend may take it, and if none does, the caller gets this.
    Refused(HandlerError),
    /// The backend provably did not receive it.
    NotReceived,
    /// The backend may have received it: ERROR 18 unless it is retried elsewhere.
    Lost(HandlerError),
}

/// Why a request goes to another backend.
#[derive(Debug, Clone, Copy)]
enum Again {
    /// The last backend did not receive it (or refused it unprocessed): no budget needed.
    NotReceived,
    /// An idempotent request whose outcome was unknown there: within the retry budget.
    Retry,
}

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
        let started = tokio::time::Instant::now();
        self.inner.counters.routed.fetch_add(1, Relaxed);
        self.budget().deposit();
        if request.oneway {
            return self.forward_oneway(request.payload).await;
        }
        let mut tried: Vec<Arc<Backend>> = Vec::new();
        // What the caller is told when no backend is left: the first unknown outcome
        // (the request may have run), else the last refusal (busy, too large), else
        // ERROR 19.
        let mut lost: Option<HandlerError> = None;
        let mut refused: Option<HandlerError> = None;
        // Why the request goes to another backend, once one is found.
        let mut again: Option<Again> = None;
        loop {
            let Some((backend, client)) = self.pick(&tried) else {
                return Err(self.give_up(lost, refused, tried.len()));
            };
            if let Some(why) = again.take() {
                // Refused by the budget: only a retry needs it, so `lost` is set.
                if !self.count_resend(why) {
                    return Err(self.give_up(lost, refused, tried.len()));
                }
                if let Some(previous) = tried.last() {
                    previous.count_retry();
                }
            }
            match self.attempt(&backend, &client, &request, started).await {
                Attempt::Answered(result) => return result,
                Attempt::Refused(err) => {
                    refused = Some(err);
                    again = Some(Again::NotReceived);
                }
                Attempt::NotReceived => again = Some(Again::NotReceived),
                Attempt::Lost(err) if request.idempotent => {
                    lost.get_or_insert(err);
                    again = Some(Again::Retry);
                }
                Attempt::Lost(err) => return Err(self.outcome_unknown(err)),
            }
            tried.push(backend);
        }
    }

    /// Sends `request` to `backend` once, over `client`, and says what became of it.
    async fn attempt(
        &self,
        backend: &Backend,
        client: &Client,
        request: &Request,
        started: tokio::time::Instant,
    ) -> Attempt {
        let call_timeout = self.inner.settings.call_timeout;
        // The caller's time left travels on to the backend.
        let timeout = request.timeout.map_or(call_timeout, |caller| {
            let left = caller.saturating_sub(started.elapsed());
            left.clamp(Duration::from_millis(1), call_timeout)
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
                return Attempt::Answered(Ok(reply));
            }
            // Busy: refused at once, so not processed; another backend may take it.
            Err(ClientError::Server {
                code: code @ ErrorCode::Busy,
                message,
            }) => {
                backend.served(true, sent.elapsed());
                return Attempt::Refused(HandlerError { code, message });
            }
            Err(ClientError::Server { code, message }) => {
                backend.served(true, sent.elapsed());
                return Attempt::Answered(Err(HandlerError { code, message }));
            }
            Err(err) => err,
        };
        backend.failed(&err, self.inner.settings.eject_after);
        match err.outcome() {
            // Larger than this backend takes (a UDP backend's datagram, say): nothing
            // was sent, and another backend may take it.
            _ if matches!(err, ClientError::FrameTooLarge { .. }) => {
                Attempt::Refused(HandlerError {
                    code: ErrorCode::FrameTooLarge,
                    message: format!("backend {}: {err}", backend.name),
                })
            }
            Outcome::NotReceived => Attempt::NotReceived,
            // (Answered is an ERROR from the backend, taken above.)
            Outcome::Unknown | Outcome::Answered => {
                backend.count_lost(request.idempotent);
                Attempt::Lost(HandlerError {
                    code: ErrorCode::OutcomeUnknown,
                    message: format!("outcome unknown: backend {}: {err}", backend.name),
                })
            }
        }
    }

    /// Counts a send to another backend; for a retry after an unknown outcome, only if
    /// the budget allows it (returns whether it does).
    fn count_resend(&self, why: Again) -> bool {
        let counters = &self.inner.counters;
        match why {
            Again::NotReceived => {
                counters.resent_not_received.fetch_add(1, Relaxed);
                true
            }
            Again::Retry => {
                let granted = self.budget().withdraw();
                let counter = if granted {
                    &counters.retried
                } else {
                    &counters.retry_budget_exhausted
                };
                counter.fetch_add(1, Relaxed);
                granted
            }
        }
    }

    /// What the caller gets when its request goes nowhere else: ERROR 18 if it may have
    /// run somewhere (`lost`), else the last refusal as it was, else ERROR 19.
    fn give_up(
        &self,
        lost: Option<HandlerError>,
        refused: Option<HandlerError>,
        tried: usize,
    ) -> HandlerError {
        match (lost, refused) {
            (Some(lost), _) => self.outcome_unknown(lost),
            (None, Some(refused)) => refused,
            (None, None) => self.no_backend(tried),
        }
    }

    /// ERROR 18, counted.
    fn outcome_unknown(&self, err: HandlerError) -> HandlerError {
        self.inner.counters.outcome_unknown.fetch_add(1, Relaxed);
        err
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
