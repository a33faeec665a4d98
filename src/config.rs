//! Server settings: the [`Config`] type, its defaults (the embedded `config/courier.toml`),
//! loading from TOML and validation.
//!
//! The command line layers flags and `COURIER_*` variables on top of a [`Config`]; this
//! module only knows about files and values.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::wire::{MAX_PAYLOAD_LIMIT, MIN_MAX_FRAME};

pub mod size;
pub use size::parse_size;
mod route;
pub use route::RouteConfig;

/// How messages are delimited on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// The courier protocol (docs/PROTOCOL.md): HELLO, request ids, ERROR frames.
    Courier,
    /// A 4-byte big-endian length, then the payload; no handshake; replies in order.
    Plain,
    /// No framing: whatever one read returns is one message (compatibility only).
    Raw,
}

/// The default configuration file, embedded in the binary. [`Config::default`] equals
/// what this file says; a unit test keeps the two in step.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config/courier.toml");

/// Everything a server needs to know. `config/courier.toml` documents each field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on: `HOST:PORT` (TCP), `unix:/path/to.sock`, or (Windows)
    /// `pipe:NAME`.
    pub listen: String,
    /// Permissions of a Unix socket file, in octal ("0600": only the owner may connect).
    pub socket_mode: String,
    /// A file holding the token clients must present in their HELLO (the whole file,
    /// less a trailing newline). `COURIER_AUTH_TOKEN` takes precedence over it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token_file: Option<PathBuf>,
    /// Listen on an address other than loopback with neither TLS nor a token. Without it
    /// the server refuses to start there.
    pub allow_insecure: bool,
    /// TLS: the server's certificate chain (PEM). With `tls_key`, the server speaks TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the private key of `tls_cert` (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// TLS: require client certificates signed by a CA in this file (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    /// The token itself, loaded by [`Config::load_token`]; never written out.
    #[serde(skip)]
    pub auth_token: Option<AuthToken>,
    /// Length of the queue of connections the kernel has accepted but the server has not
    /// yet taken (the kernel caps it at `net.core.somaxconn`).
    pub backlog: u32,
    /// How messages are delimited: courier, plain or raw.
    pub framing: Framing,
    /// What the built-in handler replies: `echo`, `none` (an empty reply; nothing at all
    /// in raw framing), or hex bytes.
    pub reply: String,
    /// Raw framing: bytes (hex) sent to each client as soon as it connects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub greeting: Option<String>,
    /// Plain and raw framing: close a connection after this many messages (0: never).
    pub close_after: u64,
    /// A command (run by `sh -c`) that answers each request instead of the built-in
    /// handler: the payload on its stdin, the reply from its stdout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<String>,
    /// With `exec`: keep this many long-lived copies of the command speaking plain framing
    /// on stdin/stdout, instead of one process per request (0).
    pub exec_workers: usize,
    /// With `exec`: time allowed for one request before the command is killed.
    #[serde(with = "humantime_serde")]
    pub exec_timeout: Duration,
    /// With `exec` per request: commands running at once.
    pub exec_max_children: usize,
    /// With `exec`: requests that may wait for a free process; beyond it they get ERROR 14.
    pub exec_queue: usize,
    /// Connections served at once; more get ERROR "server busy" and are closed.
    pub max_connections: usize,
    /// Largest payload of one frame, in bytes (`"64k"`, `"1MiB"` allowed).
    #[serde(with = "size")]
    pub max_frame: usize,
    /// Requests handled at once per connection; past it the server stops reading it.
    pub max_in_flight: usize,
    /// Bytes of unwritten replies per connection before it is closed as a slow reader
    /// (`"8MiB"` allowed).
    #[serde(with = "size")]
    pub max_pending_output: usize,
    /// Time from accept to the client's HELLO.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Time to finish a frame once its first byte arrived.
    #[serde(with = "humantime_serde")]
    pub frame_timeout: Duration,
    /// Time with no traffic and nothing in flight before a connection is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Time allowed for in-flight requests to finish on shutdown.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// After peers were last active, keep polling sockets for this long instead of
    /// sleeping (0: never), while requests arrive less than this far apart. Lower
    /// round-trip latency for a CPU kept busy; see `busy_poll.rs`. 100 µs by default.
    #[serde(with = "humantime_serde")]
    pub busy_poll: Duration,
    /// A connection older than about this (±10 %, so that connections made together do
    /// not all leave together) gets GOAWAY and is drained, so that clients reconnect and
    /// spread over the servers behind a load balancer (0: never).
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Duration,
    /// `HOST:PORT` to serve `/metrics` (Prometheus), `/healthz` and `/readyz` on over
    /// HTTP; off when unset. Loopback only unless `allow_insecure`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// UDP (`udp:HOST:PORT`): the largest message payload one datagram carries, in bytes
    /// (the 22 bytes of headers not included). 1200 crosses any path unfragmented.
    #[serde(with = "size")]
    pub udp_max_payload: usize,
    /// UDP: replies kept for answering retransmitted requests, at most this many.
    pub udp_cache_entries: usize,
    /// UDP: replies kept, at most this many bytes of them (`"64MiB"` allowed).
    #[serde(with = "size")]
    pub udp_cache_bytes: usize,
    /// UDP: how long a reply is kept for retransmissions of its request. Must be longer
    /// than any client keeps retrying a call (its call timeout).
    #[serde(with = "humantime_serde")]
    pub udp_cache_lifetime: Duration,
    /// `courier serve --join`: dial the router at this address and serve requests over
    /// that connection, instead of listening.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<String>,
    /// With `join`: a file holding the router's join token (the whole file, less a
    /// trailing newline). `COURIER_JOIN_TOKEN` takes precedence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_token_file: Option<PathBuf>,
    /// The join token itself, loaded by [`Config::load_join_token`]; never written out.
    /// Sent in the HELLO of a joining server only.
    #[serde(skip)]
    pub join_token: Option<AuthToken>,
    /// `courier route`: where requests go (the `[route]` table).
    pub route: RouteConfig,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: "127.0.0.1:12345".to_owned(),
            socket_mode: "0600".to_owned(),
            auth_token_file: None,
            allow_insecure: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            auth_token: None,
            backlog: 1024,
            framing: Framing::Courier,
            reply: "echo".to_owned(),
            greeting: None,
            close_after: 0,
            exec: None,
            exec_workers: 0,
            exec_timeout: Duration::from_secs(30),
            exec_max_children: 16,
            exec_queue: 64,
            max_connections: 10_000,
            max_frame: 1 << 20,
            max_in_flight: 128,
            max_pending_output: 8 << 20,
            handshake_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(30),
            busy_poll: Duration::from_micros(100),
            max_connection_age: Duration::ZERO,
            metrics: None,
            udp_max_payload: 1200,
            udp_cache_entries: 65_536,
            udp_cache_bytes: 64 << 20,
            udp_cache_lifetime: Duration::from_secs(120),
            join: None,
            join_token_file: None,
            join_token: None,
            route: RouteConfig::default(),
        }
    }
}

/// Longest token accepted: it travels in the HELLO, whose payload is at most 4096 bytes.
pub const MAX_TOKEN_LEN: usize = 1024;

/// A shared secret that clients present in their HELLO. Its `Debug` form does not show
/// it, so configurations can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(Bytes);

impl AuthToken {
    /// A token of these bytes.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when it is empty or longer than [`MAX_TOKEN_LEN`].
    pub fn new(bytes: impl Into<Bytes>) -> Result<AuthToken, ConfigError> {
        let bytes = bytes.into();
        if bytes.is_empty() || bytes.len() > MAX_TOKEN_LEN {
            return Err(ConfigError::Invalid(format!(
                "the auth token must be 1 to {MAX_TOKEN_LEN} bytes, it is {}",
                bytes.len()
            )));
        }
        Ok(AuthToken(bytes))
    }

    /// The token's bytes, to send.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Whether `offered` is this token, compared in constant time (the time taken does
    /// not tell an attacker how many leading bytes were right).
    pub fn matches(&self, offered: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        // ct_eq on slices of different lengths is false without looking at the bytes;
        // the length of a token is not the secret.
        bool::from(self.0.as_ref().ct_eq(offered))
    }

    /// The token a server or client uses: `env_token` (the value of COURIER_AUTH_TOKEN)
    /// when given, else the contents of `file` when given, else none. Also returns a
    /// warning to log when the file is readable by others.
    ///
    /// # Errors
    /// As [`AuthToken::from_file`] and [`AuthToken::new`].
    pub fn load(
        env_token: Option<String>,
        file: Option<&Path>,
    ) -> Result<(Option<AuthToken>, Option<String>), ConfigError> {
        if let Some(token) = env_token {
            return Ok((Some(AuthToken::new(token.into_bytes())?), None));
        }
        match file {
            Some(path) => {
                let (token, warning) = AuthToken::from_file(path)?;
                Ok((Some(token), warning))
            }
            None => Ok((None, None)),
        }
    }

    /// Reads a token file: the whole file less one trailing newline. Also returns a
    /// warning when others than the owner may read the file.
    ///
    /// # Errors
    /// [`ConfigError::ReadToken`] when it cannot be read, [`ConfigError::Invalid`] when the
    /// token is empty or too long.
    pub fn from_file(path: &Path) -> Result<(AuthToken, Option<String>), ConfigError> {
        let mut bytes = std::fs::read(path).map_err(|cause| ConfigError::ReadToken {
            path: path.display().to_string(),
            cause,
        })?;
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        let token = AuthToken::new(bytes)?;
        Ok((token, crate::transport::readable_by_others(path)))
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthToken(<{} bytes, hidden>)", self.0.len())
    }
}

/// A configuration that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read. (The OS's reason is part of the message, not a
    /// separate source, so that printing the error's chain says it once.)
    #[error("cannot read config file {path}: {cause}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
    /// The auth token file could not be read.
    #[error("cannot read the auth token file {path}: {cause}")]
    ReadToken {
        /// The file.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
    /// The TOML does not parse or has unknown or mistyped keys; the parser's diagnostic
    /// (with the line it points at) is part of the message, once.
    #[error("invalid config{}: {cause}", origin.as_deref().map(|p| format!(" in {p}")).unwrap_or_default())]
    Parse {
        /// The file, when there is one.
        origin: Option<String>,
        /// What the parser said.
        cause: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Parses TOML; keys that are absent keep their defaults.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] for bad TOML or unknown keys, [`ConfigError::Invalid`] for
    /// values out of range.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|cause| ConfigError::Parse {
            origin: None,
            cause,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML file.
    ///
    /// # Errors
    /// As [`Config::from_toml`], plus [`ConfigError::Read`] when the file cannot be read.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.display().to_string(),
            cause,
        })?;
        Config::from_toml(&text).map_err(|err| match err {
            ConfigError::Parse { cause, .. } => ConfigError::Parse {
                origin: Some(path.display().to_string()),
                cause,
            },
            other => other,
        })
    }

    /// The configuration as TOML, as `courier serve --print-config` shows it.
    pub fn to_toml(&self) -> String {
        // Serialising a struct of strings, integers and durations cannot fail.
        toml::to_string(self).expect("Config serialises to TOML")
    }

    /// Loads the auth token: `env_token` (the value of `COURIER_AUTH_TOKEN`) when given,
    /// else `auth_token_file` when set. Returns warnings to log (a token file others can
    /// read).
    ///
    /// # Errors
    /// When the file cannot be read or the token is empty or too long.
    pub fn load_token(&mut self, env_token: Option<String>) -> Result<Vec<String>, ConfigError> {
        let (token, warning) = AuthToken::load(env_token, self.auth_token_file.as_deref())?;
        self.auth_token = token;
        Ok(warning.into_iter().collect())
    }

    /// Loads the join token: `env_token` (`COURIER_JOIN_TOKEN`) when given, else
    /// `join_token_file`. A server that joins a router must present one.
    ///
    /// # Errors
    /// When the file cannot be read, the token is empty or too long, or `join` is set
    /// and there is no token.
    pub fn load_join_token(
        &mut self,
        env_token: Option<String>,
    ) -> Result<Vec<String>, ConfigError> {
        let (token, warning) = AuthToken::load(env_token, self.join_token_file.as_deref())?;
        if self.join.is_some() && token.is_none() {
            return Err(ConfigError::Invalid(
                "join needs a token: set join_token_file or COURIER_JOIN_TOKEN".into(),
            ));
        }
        self.join_token = token;
        Ok(warning.into_iter().collect())
    }

    /// Refuses a listen address that anyone on a network could reach when nothing
    /// protects it (neither TLS nor a token), unless `allow_insecure` says that is wanted.
    /// Loopback addresses and names that resolve only to loopback pass.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] explaining the risk and naming `--allow-insecure`.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if self.allow_insecure
            || self.auth_token.is_some()
            || self.tls_cert.is_some()
            || self.is_local_transport()
        {
            return Ok(());
        }
        let host_port =
            (self.listen.strip_prefix(crate::transport::UDP_PREFIX)).unwrap_or(&self.listen);
        let resolved: Vec<std::net::SocketAddr> =
            match std::net::ToSocketAddrs::to_socket_addrs(host_port) {
                Ok(addrs) => addrs.collect(),
                // Binding will report the bad address.
                Err(_) => return Ok(()),
            };
        if resolved.iter().all(|addr| addr.ip().is_loopback()) {
            return Ok(());
        }
        Err(ConfigError::Invalid(format!(
            "refusing to listen on {}: it is reachable from other machines, and nothing protects it (no TLS, no auth token), so anyone who can reach it could use this server. Set an auth token (--auth-token-file FILE or COURIER_AUTH_TOKEN), or pass --allow-insecure (allow_insecure = true) to accept the risk",
            self.listen
        )))
    }

    /// Refuses a `metrics` address that other machines could reach, unless
    /// `allow_insecure`: the HTTP endpoint has neither TLS nor a token, whatever the
    /// main port has.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the address and `--allow-insecure`.
    pub fn check_metrics_exposure(&self) -> Result<(), ConfigError> {
        let Some(addr) = &self.metrics else {
            return Ok(());
        };
        let resolved: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(addr)
            .map_err(|err| {
                ConfigError::Invalid(format!(
                    "metrics = {addr:?} is not a HOST:PORT address ({err})"
                ))
            })?
            .collect();
        if self.allow_insecure || resolved.iter().all(|addr| addr.ip().is_loopback()) {
            return Ok(());
        }
        Err(ConfigError::Invalid(format!(
            "refusing to serve metrics on {addr}: it is reachable from other machines, and the metrics endpoint has no TLS and no token. Use a loopback address (a scraper on the same machine, or a sidecar), or pass --allow-insecure (allow_insecure = true) to accept the risk"
        )))
    }

    /// Whether `listen` names a transport that never leaves the machine (a Unix socket or
    /// a named pipe), protected by its permissions rather than by TLS or a token.
    fn is_local_transport(&self) -> bool {
        use crate::transport::{PIPE_PREFIX, UNIX_PREFIX};
        self.listen.starts_with(UNIX_PREFIX) || self.listen.starts_with(PIPE_PREFIX)
    }

    /// The Unix socket file mode as a number (validated by [`Config::validate`]).
    pub fn socket_mode(&self) -> u32 {
        crate::transport::parse_mode(&self.socket_mode).unwrap_or(0o600)
    }

    /// Checks that every value is usable.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first value out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        crate::transport::parse_mode(&self.socket_mode).map_err(ConfigError::Invalid)?;
        self.validate_tls()?;
        let min_frame = if self.framing == Framing::Courier {
            MIN_MAX_FRAME
        } else {
            1
        };
        for (name, value, min, max) in [
            ("max_connections", self.max_connections, 1, 1_000_000),
            ("backlog", self.backlog as usize, 1, 65_535),
            ("max_in_flight", self.max_in_flight, 1, 65_536),
            ("max_frame", self.max_frame, min_frame, MAX_PAYLOAD_LIMIT),
            ("max_pending_output", self.max_pending_output, 1, 1 << 40),
            ("exec_workers", self.exec_workers, 0, 1024),
            ("exec_max_children", self.exec_max_children, 1, 4096),
            ("exec_queue", self.exec_queue, 0, 1_000_000),
        ] {
            if !(min..=max).contains(&value) {
                return invalid(format!(
                    "{name} is {value}, out of range: it must be from {min} to {max}"
                ));
            }
        }
        if self.exec_workers > 0 && self.exec.is_none() {
            return invalid(
                "exec_workers applies to exec: set exec too, or leave exec_workers at 0".into(),
            );
        }
        self.validate_udp()?;
        let fixed = self.fixed_reply()?;
        if self.exec.is_some() && fixed.is_some() {
            return invalid("reply and exec are alternatives: set one of them".into());
        }
        if self
            .exec
            .as_deref()
            .is_some_and(|cmd| cmd.trim().is_empty())
        {
            return invalid("exec is empty: give a command, or leave it out".into());
        }
        if self.greeting()?.is_some() && self.framing != Framing::Raw {
            return invalid("greeting applies to framing \"raw\" only".into());
        }
        if self.close_after > 0 && self.framing == Framing::Courier {
            return invalid(
                "close_after applies to framing \"raw\" and \"plain\"; courier clients close their own connections".into(),
            );
        }
        for (name, value) in [
            ("exec_timeout", self.exec_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("frame_timeout", self.frame_timeout),
            ("idle_timeout", self.idle_timeout),
            ("udp_cache_lifetime", self.udp_cache_lifetime),
        ] {
            if value.is_zero() || value > Duration::from_secs(7 * 24 * 3600) {
                return invalid(format!(
                    "{name} is {}, out of range: it must be from 1ms to 7days",
                    humantime::format_duration(value)
                ));
            }
        }
        if self.join_token_file.is_some() && self.join.is_none() {
            return invalid("join_token_file needs join: the router's address".into());
        }
        self.route.validate()
    }

    /// The TLS settings: complete, and only where TLS applies.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid("tls_cert and tls_key go together: set both, or neither".into());
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return invalid("tls_client_ca needs TLS: set tls_cert and tls_key too".into());
        }
        if self.tls_cert.is_some() && self.is_local_transport() {
            return invalid(
                "TLS applies to TCP; unix: sockets and pipe: names are local and protected by their permissions".into(),
            );
        }
        if self.tls_cert.is_some() && self.listen.starts_with(crate::transport::UDP_PREFIX) {
            return invalid(
                "TLS applies to TCP; udp: has no encryption (docs/PROTOCOL.md, UDP)".into(),
            );
        }
        Ok(())
    }

    /// The UDP settings' ranges.
    fn validate_udp(&self) -> Result<(), ConfigError> {
        use crate::wire::MAX_DATAGRAM_MESSAGE;
        if !(MIN_MAX_FRAME..=MAX_DATAGRAM_MESSAGE).contains(&self.udp_max_payload) {
            return Err(ConfigError::Invalid(format!(
                "udp_max_payload is {}; it must be {MIN_MAX_FRAME} to {MAX_DATAGRAM_MESSAGE} bytes (a 65,507-byte UDP datagram less the 22 bytes of headers)",
                self.udp_max_payload
            )));
        }
        if self.udp_cache_entries == 0 || self.udp_cache_bytes < self.udp_max_payload {
            return Err(ConfigError::Invalid(format!(
                "udp_cache_entries must be at least 1 and udp_cache_bytes at least udp_max_payload ({}); they are {} and {}",
                self.udp_max_payload, self.udp_cache_entries, self.udp_cache_bytes
            )));
        }
        Ok(())
    }

    /// The configured reply: `None` for `echo` (the request's payload), otherwise the
    /// fixed bytes (`none`: empty).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when `reply` is neither `echo`, `none` nor hex.
    pub fn fixed_reply(&self) -> Result<Option<Bytes>, ConfigError> {
        match self.reply.as_str() {
            "echo" => Ok(None),
            "none" => Ok(Some(Bytes::new())),
            text => parse_hex(text)
                .map(Some)
                .map_err(|err| ConfigError::Invalid(format!("reply: {err}"))),
        }
    }

    /// The raw-framing greeting as bytes.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when `greeting` is not hex.
    pub fn greeting(&self) -> Result<Option<Bytes>, ConfigError> {
        self.greeting
            .as_deref()
            .map(parse_hex)
            .transpose()
            .map_err(|err| ConfigError::Invalid(format!("greeting: {err}")))
    }
}

/// Parses hex bytes such as `05060708` (spaces and a leading `0x` allowed).
///
/// # Errors
/// A message saying what is wrong and showing the expected form.
pub fn parse_hex(text: &str) -> Result<Bytes, String> {
    let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(digits.strip_prefix("0x").unwrap_or(&digits))
        .map(Bytes::from)
        .map_err(|err| {
            format!("{text:?} is not hex ({err}); write bytes as pairs of digits, e.g. 05060708")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_file_matches_default_values() {
        assert_eq!(
            Config::from_toml(DEFAULT_CONFIG_TOML).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn every_field_is_set_in_the_embedded_file() {
        let table: toml::Table = toml::from_str(DEFAULT_CONFIG_TOML).unwrap();
        let printed: toml::Table = toml::from_str(&Config::default().to_toml()).unwrap();
        let mut file_keys: Vec<_> = table.keys().collect();
        let mut all_keys: Vec<_> = printed.keys().collect();
        file_keys.sort();
        all_keys.sort();
        assert_eq!(file_keys, all_keys);
    }

    #[test]
    fn printed_config_parses_back_to_itself() {
        let config = Config {
            max_frame: 77,
            idle_timeout: Duration::from_millis(1500),
            ..Config::default()
        };
        assert_eq!(Config::from_toml(&config.to_toml()).unwrap(), config);
    }

    #[test]
    fn missing_keys_keep_defaults() {
        let config = Config::from_toml("max_frame = 4096").unwrap();
        assert_eq!(config.max_frame, 4096);
        assert_eq!(config.listen, Config::default().listen);
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = Config::from_toml("max_frames = 4096").unwrap_err();
        assert!(err.to_string().contains("max_frames"), "{err}");
    }

    #[test]
    fn reply_names_a_builtin_handler() {
        let with = |reply: &str| Config {
            reply: reply.into(),
            ..Config::default()
        };
        assert_eq!(with("echo").fixed_reply().unwrap(), None);
        assert_eq!(with("none").fixed_reply().unwrap(), Some(Bytes::new()));
        assert_eq!(
            with("0a0B").fixed_reply().unwrap(),
            Some(Bytes::from_static(&[10, 11]))
        );
    }

    #[test]
    fn tls_is_refused_on_local_transports_and_those_need_no_protection() {
        for listen in ["unix:/tmp/x.sock", "pipe:courier"] {
            let tls = Config {
                listen: listen.into(),
                tls_cert: Some("c.pem".into()),
                tls_key: Some("k.pem".into()),
                ..Config::default()
            };
            let err = tls.validate().unwrap_err().to_string();
            assert!(err.contains("TLS applies to TCP"), "{listen}: {err}");
            let plain = Config {
                listen: listen.into(),
                ..Config::default()
            };
            assert!(plain.check_exposure().is_ok(), "{listen}");
        }
        let open = Config {
            listen: "0.0.0.0:0".into(),
            ..Config::default()
        };
        assert!(open.check_exposure().is_err());
        let open_udp = Config {
            listen: "udp:0.0.0.0:0".into(),
            ..Config::default()
        };
        assert!(open_udp.check_exposure().is_err());
        let local_udp = Config {
            listen: "udp:127.0.0.1:0".into(),
            ..Config::default()
        };
        assert!(local_udp.check_exposure().is_ok());
        let udp_tls = Config {
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            ..local_udp
        };
        assert!(udp_tls.validate().is_err());
    }

    #[test]
    fn auth_token_from_the_environment_wins_over_the_file() {
        let (token, warning) =
            AuthToken::load(Some("env".into()), Some(Path::new("/nonexistent"))).unwrap();
        assert_eq!(token.unwrap().as_bytes(), &Bytes::from_static(b"env"));
        assert!(warning.is_none());
        assert!(AuthToken::load(None, Some(Path::new("/nonexistent"))).is_err());
        assert!(AuthToken::load(None, None).unwrap().0.is_none());
    }

    #[test]
    fn sizes_in_the_file_take_suffixes_and_print_as_numbers() {
        let config =
            Config::from_toml("max_frame = \"64k\"\nmax_pending_output = \"2MiB\"").unwrap();
        assert_eq!(config.max_frame, 65536);
        assert_eq!(config.max_pending_output, 2 << 20);
        assert!(config.to_toml().contains("max_frame = 65536"));
    }

    #[test]
    fn humantime_durations_parse() {
        let config = Config::from_toml("idle_timeout = \"250ms\"").unwrap();
        assert_eq!(config.idle_timeout, Duration::from_millis(250));
    }

    #[test]
    fn out_of_range_values_are_rejected_with_the_field_name() {
        for (text, field) in [
            ("max_connections = 0", "max_connections"),
            ("max_in_flight = 0", "max_in_flight"),
            ("idle_timeout = \"0s\"", "idle_timeout"),
            ("max_frame = 5000000000", "max_frame"),
            ("max_frame = 15", "max_frame"),
            ("reply = \"zz\"", "reply"),
            ("framing = \"plain\"\ngreeting = \"01\"", "greeting"),
            ("close_after = 1", "close_after"),
            ("exec = \"cat\"\nreply = \"00\"", "exec"),
            ("exec_max_children = 0", "exec_max_children"),
            ("udp_max_payload = 65486", "udp_max_payload"),
            ("udp_max_payload = 15", "udp_max_payload"),
            ("udp_cache_entries = 0", "udp_cache_entries"),
            ("udp_cache_lifetime = \"0s\"", "udp_cache_lifetime"),
            ("framing = \"raw\"\ngreeting = \"0g\"", "greeting"),
            ("framing = \"plain\"\nmax_frame = 0", "from 1 to"),
            ("max_frame = 0", "from 16 to"),
            ("max_frame = \"64KB\"", "ambiguous"),
            ("backlog = 0", "from 1 to 65535"),
            ("exec_workers = 2", "exec_workers applies to exec"),
            (
                "[route]\nbackend_tls_ca = \"ca.pem\"\nbackend_tls_cert = \"c.pem\"",
                "route.backend_tls_key",
            ),
            (
                "[route]\nbackend_tls_cert = \"c.pem\"\nbackend_tls_key = \"k.pem\"",
                "set route.backend_tls_ca",
            ),
        ] {
            let err = Config::from_toml(text).unwrap_err();
            assert!(err.to_string().contains(field), "{text}: {err}");
        }
    }
}
