//! One backend as the router sees it: its connections, its health, and its figures.
//!
//! The connections are [`Client`]s, each multiplexing many requests. The supervisor
//! (`health.rs`) dials them, pings them and replaces them; the request path
//! (`mod.rs`) only reads them and reports what it saw (`served`, `failed`), which may
//! eject the backend at once.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use serde_json::json;
use tokio::sync::Notify;
use tracing::warn;

use super::ewma::Latency;
use crate::client::{Client, ClientError};

/// A backend's health, as the STATS figures name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Health {
    /// Being dialled; takes no request yet.
    Connecting = 0,
    /// Takes requests.
    Up = 1,
    /// Sent GOAWAY: takes no new request; those it has finish.
    Draining = 2,
    /// Failed (a ping, a connection, requests timing out); dialled again after a backoff.
    Ejected = 3,
}

impl Health {
    fn name(self) -> &'static str {
        match self {
            Health::Connecting => "connecting",
            Health::Up => "up",
            Health::Draining => "draining",
            Health::Ejected => "ejected",
        }
    }

    fn from_u8(value: u8) -> Health {
        match value {
            1 => Health::Up,
            2 => Health::Draining,
            3 => Health::Ejected,
            _ => Health::Connecting,
        }
    }
}

/// One backend.
#[derive(Debug)]
pub(crate) struct Backend {
    /// Its address, or `joined:PEER` for a worker that dialled in.
    pub(crate) name: String,
    conns: Mutex<Vec<Client>>,
    next_conn: AtomicUsize,
    health: AtomicU8,
    /// Requests sent to it and not yet answered.
    outstanding: AtomicUsize,
    requests: AtomicU64,
    errors: AtomicU64,
    ejections: AtomicU64,
    retries: AtomicU64,
    /// Requests sent here whose outcome became unknown here (the connection ended or
    /// broke with them in flight, or they timed out), marked idempotent or not.
    lost_idempotent: AtomicU64,
    lost_not_idempotent: AtomicU64,
    timeouts_in_row: AtomicU64,
    latency: Latency,
    /// Wakes the supervisor when the request path ejects the backend.
    pub(crate) ejected: Notify,
}

impl Backend {
    pub(crate) fn new(name: String) -> Backend {
        Backend {
            name,
            conns: Mutex::new(Vec::new()),
            next_conn: AtomicUsize::new(0),
            health: AtomicU8::new(Health::Connecting as u8),
            outstanding: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            lost_idempotent: AtomicU64::new(0),
            lost_not_idempotent: AtomicU64::new(0),
            timeouts_in_row: AtomicU64::new(0),
            latency: Latency::new(),
            ejected: Notify::new(),
        }
    }

    pub(crate) fn health(&self) -> Health {
        Health::from_u8(self.health.load(Relaxed))
    }

    pub(crate) fn set_health(&self, health: Health) {
        self.health.store(health as u8, Relaxed);
    }

    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.load(Relaxed)
    }

    /// The balancer's cost of one more request here: the requests outstanding weighted
    /// by the peak-EWMA latency (`ewma.rs`).
    pub(crate) fn cost(&self) -> usize {
        self.latency.cost(self.outstanding())
    }

    /// Puts fresh connections in service.
    pub(crate) fn admit(&self, clients: Vec<Client>) {
        *self.lock() = clients;
        self.timeouts_in_row.store(0, Relaxed);
        self.set_health(Health::Up);
    }

    /// The connections in service (for the supervisor's pings).
    pub(crate) fn conns(&self) -> Vec<Client> {
        self.lock().clone()
    }

    /// Takes the connections out of service. Requests in flight on them still finish:
    /// their calls hold the connections.
    pub(crate) fn retire(&self, health: Health) {
        self.lock().clear();
        self.set_health(health);
    }

    /// A connection to send a request on, if the backend takes requests: up, and with a
    /// connection that is open and has had no GOAWAY. Connections are taken in turn.
    pub(crate) fn connection(&self) -> Option<Client> {
        if self.health() != Health::Up {
            return None;
        }
        let conns = self.lock();
        let n = conns.len();
        let start = self.next_conn.fetch_add(1, Relaxed);
        (0..n)
            .map(|i| &conns[(start + i) % n])
            .find(|client| !client.is_closed() && !client.is_going_away())
            .cloned()
    }

    /// Counts a ONEWAY message sent, which nobody answers.
    pub(crate) fn count_request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    /// Counts a request sent; the guard counts it answered when dropped.
    pub(crate) fn start(&self) -> Outstanding<'_> {
        self.requests.fetch_add(1, Relaxed);
        self.outstanding.fetch_add(1, Relaxed);
        Outstanding(self)
    }

    /// The backend answered a request (with a REPLY or an ERROR of its own) after `took`.
    pub(crate) fn served(&self, error: bool, took: std::time::Duration) {
        self.latency.observe(took);
        self.timeouts_in_row.store(0, Relaxed);
        if error {
            self.errors.fetch_add(1, Relaxed);
        }
    }

    /// A request sent here failed without an answer. A connection that ended (reset,
    /// garbage, an oversize reply, an answer to an id it was never sent) ejects the
    /// backend at once; `eject_after` timeouts in a row do too; a GOAWAY marks it draining.
    /// A request larger than the backend takes is no failure of the backend's: nothing
    /// was sent.
    pub(crate) fn failed(&self, err: &ClientError, eject_after: u32) {
        if matches!(err, ClientError::FrameTooLarge { .. }) {
            return;
        }
        self.errors.fetch_add(1, Relaxed);
        match err {
            ClientError::GoingAway => {
                if self.health() == Health::Up {
                    self.set_health(Health::Draining);
                    self.ejected.notify_one();
                }
            }
            ClientError::Timeout { .. } => {
                let row = self.timeouts_in_row.fetch_add(1, Relaxed) + 1;
                if row >= u64::from(eject_after) {
                    self.eject(&format!("{row} requests in a row timed out"));
                }
            }
            other => self.eject(&other.to_string()),
        }
    }

    /// Takes the backend out of service after a failure and wakes its supervisor.
    pub(crate) fn eject(&self, why: &str) {
        let was = Health::from_u8(self.health.swap(Health::Ejected as u8, Relaxed));
        if was != Health::Ejected {
            warn!(backend = %self.name, why, "backend ejected");
            self.ejections.fetch_add(1, Relaxed);
            self.lock().clear();
        }
        self.ejected.notify_one();
    }

    /// Counts a request sent here whose outcome became unknown here: the request path
    /// calls it once per such call, as it classifies the failure, so the count is exact
    /// (every request in flight on a connection that died, each at its own failure).
    pub(crate) fn count_lost(&self, idempotent: bool) {
        let counter = if idempotent {
            &self.lost_idempotent
        } else {
            &self.lost_not_idempotent
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Counts a request that failed here and was then sent to another backend.
    pub(crate) fn count_retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    /// The figures `courier stats` shows for this backend.
    pub(crate) fn figures(&self) -> serde_json::Value {
        json!({
            "backend": self.name,
            "health": self.health().name(),
            "requests": self.requests.load(Relaxed),
            "errors": self.errors.load(Relaxed),
            "outstanding": self.outstanding(),
            "ejections": self.ejections.load(Relaxed),
            "retries": self.retries.load(Relaxed),
            "lost_idempotent": self.lost_idempotent.load(Relaxed),
            "lost_not_idempotent": self.lost_not_idempotent.load(Relaxed),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Client>> {
        // The list holds no invariant a panic could break half-way.
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A request outstanding on a backend, until dropped.
#[derive(Debug)]
pub(crate) struct Outstanding<'a>(&'a Backend);

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Relaxed);
    }
}
