//! The router's settings (`courier route`, the `[route]` table of the config file) as
//! plain data. The listening side of a router is a server, so it keeps every setting of
//! [`Config`](super::Config) (listen, limits, deadlines, TLS, token); these say where the
//! requests go.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The `[route]` table. `config/courier.toml` documents each field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// Backend addresses the router dials: `HOST:PORT`, `unix:PATH` or `udp:HOST:PORT`.
    pub backends: Vec<String>,
    /// Connections kept open to each backend; requests are multiplexed over them.
    pub connections_per_backend: usize,
    /// Time between two health PINGs on each backend connection.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Time a PING may take before the backend is ejected.
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// Consecutive timed-out requests after which a backend is ejected.
    pub eject_after: u32,
    /// Ceiling of the first wait before an ejected backend is tried again; it doubles
    /// with each failure in a row, up to `readmit_backoff_max`.
    #[serde(with = "humantime_serde")]
    pub readmit_backoff: Duration,
    /// Largest wait before an ejected backend is tried again.
    #[serde(with = "humantime_serde")]
    pub readmit_backoff_max: Duration,
    /// Time a backend has to answer one request (less if the caller gave less).
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Retries of idempotent requests allowed, in percent of the requests routed.
    pub retry_budget_percent: u32,
    /// Retries allowed on top of the percentage, per second.
    pub retry_budget_per_second: u32,
    /// Where workers started with `courier serve --join` connect; none: no joins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_listen: Option<String>,
    /// A file holding the token a joining worker must present (the whole file, less a
    /// trailing newline). `COURIER_JOIN_TOKEN` takes precedence. Required with
    /// `join_listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_token_file: Option<PathBuf>,
    /// A file holding the token the router presents to its backends.
    /// `COURIER_BACKEND_TOKEN` takes precedence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_token_file: Option<PathBuf>,
    /// Speak TLS to TCP backends, trusting the CA certificates in this PEM file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_tls_ca: Option<PathBuf>,
    /// With `backend_tls_ca`: the client certificate chain (PEM) the router presents to
    /// backends that require one (their `tls_client_ca`). Needs `backend_tls_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_tls_cert: Option<PathBuf>,
    /// The private key of `backend_tls_cert` (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_tls_key: Option<PathBuf>,
}

impl Default for RouteConfig {
    fn default() -> RouteConfig {
        RouteConfig {
            backends: Vec::new(),
            connections_per_backend: 2,
            ping_interval: Duration::from_secs(1),
            ping_timeout: Duration::from_secs(1),
            eject_after: 3,
            readmit_backoff: Duration::from_millis(200),
            readmit_backoff_max: Duration::from_secs(10),
            call_timeout: Duration::from_secs(30),
            retry_budget_percent: 20,
            retry_budget_per_second: 5,
            join_listen: None,
            join_token_file: None,
            backend_token_file: None,
            backend_tls_ca: None,
            backend_tls_cert: None,
            backend_tls_key: None,
        }
    }
}

impl RouteConfig {
    /// Checks the values that have a range.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |setting: &str, problem: &str| ConfigError::Invalid(format!("{setting} {problem}"));
        if self.connections_per_backend == 0 {
            return Err(invalid(
                "route.connections_per_backend",
                "must be at least 1",
            ));
        }
        for (setting, value) in [
            ("route.ping_interval", self.ping_interval),
            ("route.ping_timeout", self.ping_timeout),
            ("route.call_timeout", self.call_timeout),
            ("route.readmit_backoff", self.readmit_backoff),
        ] {
            if value.is_zero() {
                return Err(invalid(setting, "must be more than 0s"));
            }
        }
        if self.eject_after == 0 {
            return Err(invalid("route.eject_after", "must be at least 1"));
        }
        if self.retry_budget_percent > 100 {
            return Err(invalid("route.retry_budget_percent", "must be at most 100"));
        }
        if self.backend_tls_cert.is_some() != self.backend_tls_key.is_some() {
            return Err(invalid(
                "route.backend_tls_cert and route.backend_tls_key",
                "go together: set both, or neither",
            ));
        }
        if self.backend_tls_cert.is_some() && self.backend_tls_ca.is_none() {
            return Err(invalid(
                "route.backend_tls_cert",
                "needs TLS to the backends: set route.backend_tls_ca too",
            ));
        }
        Ok(())
    }
}
