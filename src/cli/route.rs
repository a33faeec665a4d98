//! `courier route`: a server whose handler is a [`Router`]: it accepts clients as
//! `courier serve` does (every limit, deadline, TLS and token of the server applies) and
//! sends each request to one of the backends (docs/ROUTE.md).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tracing::{info, warn};

use courier::client::ClientConfig;
use courier::config::{AuthToken, Config};
use courier::route::Router;
use courier::server::Server;
use courier::transport::tls::ClientTls;
use courier::transport::Listener;

use super::serve::{bind, log_runtime, print_config, server_tls, stop_on_signals};
use super::service::{self, bind_metrics};

/// `courier route`'s flags. Each one left out keeps the value of the config file (its
/// `[route]` table, and the top-level server settings for the listening side) or the
/// default.
#[derive(Debug, Args)]
pub(crate) struct RouteArgs {
    /// TOML config file: the `[route]` table, and the server settings for the side
    /// facing clients.
    #[arg(long, short = 'c', value_name = "FILE", env = "COURIER_CONFIG")]
    config: Option<PathBuf>,

    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,

    /// Address to listen on for clients: HOST:PORT, unix:PATH or udp:HOST:PORT
    /// [default: 127.0.0.1:12345]
    #[arg(long, value_name = "ADDR", env = "COURIER_LISTEN")]
    listen: Option<String>,

    /// A backend to send requests to: HOST:PORT, unix:PATH or udp:HOST:PORT; repeat for more
    /// (COURIER_BACKENDS: comma-separated) [default: none]
    #[arg(
        long = "backend",
        value_name = "ADDR",
        env = "COURIER_BACKENDS",
        value_delimiter = ','
    )]
    backends: Vec<String>,

    /// Connections kept to each backend [default: 2]
    #[arg(long, value_name = "N", env = "COURIER_CONNECTIONS_PER_BACKEND")]
    connections_per_backend: Option<usize>,

    /// Time between health PINGs on each backend connection [default: 1s]
    #[arg(long, value_name = "DUR", env = "COURIER_PING_INTERVAL", value_parser = humantime::parse_duration)]
    ping_interval: Option<Duration>,

    /// Time a health PING may take before the backend is ejected [default: 1s]
    #[arg(long, value_name = "DUR", env = "COURIER_PING_TIMEOUT", value_parser = humantime::parse_duration)]
    ping_timeout: Option<Duration>,

    /// Requests in a row that time out before a backend is ejected [default: 3]
    #[arg(long, value_name = "N", env = "COURIER_EJECT_AFTER")]
    eject_after: Option<u32>,

    /// Ceiling of the first wait before an ejected backend is dialled again; doubles
    /// with each failure [default: 200ms]
    #[arg(long, value_name = "DUR", env = "COURIER_READMIT_BACKOFF", value_parser = humantime::parse_duration)]
    readmit_backoff: Option<Duration>,

    /// Largest wait before an ejected backend is dialled again [default: 10s]
    #[arg(long, value_name = "DUR", env = "COURIER_READMIT_BACKOFF_MAX", value_parser = humantime::parse_duration)]
    readmit_backoff_max: Option<Duration>,

    /// Time a backend has to answer one request; past it, ERROR 18 "outcome unknown"
    /// [default: 30s]
    #[arg(long, value_name = "DUR", env = "COURIER_CALL_TIMEOUT", value_parser = humantime::parse_duration)]
    call_timeout: Option<Duration>,

    /// Retries of idempotent requests allowed, in percent of the requests routed
    /// [default: 20]
    #[arg(long, value_name = "PERCENT", env = "COURIER_RETRY_BUDGET_PERCENT")]
    retry_budget_percent: Option<u32>,

    /// Retries of idempotent requests allowed on top, per second [default: 5]
    #[arg(long, value_name = "N", env = "COURIER_RETRY_BUDGET_PER_SECOND")]
    retry_budget_per_second: Option<u32>,

    /// Accept workers started with `courier serve --join` on this address (HOST:PORT or
    /// unix:PATH) [default: none]
    #[arg(long, value_name = "ADDR", env = "COURIER_JOIN_LISTEN")]
    join_listen: Option<String>,

    /// The token joining workers must present, from this file; COURIER_JOIN_TOKEN,
    /// holding the token itself, takes precedence
    #[arg(long, value_name = "FILE", env = "COURIER_JOIN_TOKEN_FILE")]
    join_token_file: Option<PathBuf>,

    /// The token the router presents to its backends, from this file;
    /// COURIER_BACKEND_TOKEN, holding the token itself, takes precedence
    #[arg(long, value_name = "FILE", env = "COURIER_BACKEND_TOKEN_FILE")]
    backend_token_file: Option<PathBuf>,

    /// Speak TLS to TCP backends, trusting the CA certificates in this PEM file
    #[arg(long, value_name = "PEM", env = "COURIER_BACKEND_TLS_CA")]
    backend_tls_ca: Option<PathBuf>,

    /// With --backend-tls-ca: present this client certificate chain (PEM) to backends
    /// that require one; needs --backend-tls-key
    #[arg(long, value_name = "PEM", env = "COURIER_BACKEND_TLS_CERT")]
    backend_tls_cert: Option<PathBuf>,

    /// The private key of --backend-tls-cert (PEM)
    #[arg(long, value_name = "PEM", env = "COURIER_BACKEND_TLS_KEY")]
    backend_tls_key: Option<PathBuf>,

    /// Clients must present the token in this file; COURIER_AUTH_TOKEN takes precedence
    #[arg(long, value_name = "FILE", env = "COURIER_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,

    /// Requests handled at once per client connection [default: 128]
    #[arg(long, value_name = "N", env = "COURIER_MAX_IN_FLIGHT")]
    max_in_flight: Option<usize>,

    /// Largest payload of one frame, in bytes, from clients and from backends
    /// [default: 1048576]
    #[arg(long, value_name = "BYTES", env = "COURIER_MAX_FRAME")]
    max_frame: Option<usize>,

    /// Time allowed on shutdown for requests in flight to be answered [default: 30s]
    #[arg(long, value_name = "DUR", env = "COURIER_DRAIN_TIMEOUT", value_parser = humantime::parse_duration)]
    drain_timeout: Option<Duration>,

    /// Serve Prometheus metrics (/metrics: the server's counters, the router's and each
    /// backend's, labelled backend="ADDR"), /healthz and /readyz (503 once the drain
    /// starts) over HTTP on HOST:PORT; loopback only unless --allow-insecure
    /// [default: off]
    #[arg(long, value_name = "ADDR", env = "COURIER_METRICS")]
    metrics: Option<String>,

    /// Listen on a non-loopback address with neither TLS nor an auth token, and serve
    /// --metrics on one (without it the router refuses to start there)
    #[arg(long)]
    allow_insecure: bool,
}

/// Runs `courier route` until a signal, then drains as `courier serve` does (with the
/// same `--metrics` endpoint and systemd notifications: `service.rs`).
pub(crate) async fn run(args: RouteArgs) -> anyhow::Result<()> {
    let mut config = effective_config(&args)?;
    if args.print_config {
        return print_config(&config);
    }
    if config.route.backends.is_empty() {
        warn!("no backend configured: every request gets ERROR 19 (no backend available)");
    }
    for warning in config.load_token(std::env::var("COURIER_AUTH_TOKEN").ok())? {
        warn!("{warning}");
    }
    log_runtime();
    config.check_exposure()?;
    config.check_metrics_exposure()?;
    let tls = server_tls(&config)?;
    let client = backend_client(&config)?;
    let listener = bind(&config).await?;
    let metrics = bind_metrics(&config).await?;
    let router = Router::start(config.route.clone(), client.clone());
    if let Some(addr) = &config.route.join_listen {
        accept_joins(&router, addr, &config, client).await?;
    }
    info!(backends = ?config.route.backends, "routing");
    let mut server = Server::new(config, router.clone());
    if let Some(tls) = tls {
        server = server.with_tls(tls);
    }
    // The figures `courier stats` shows and `/metrics` reads.
    let figures = router.clone();
    server.stats().set_route(move || figures.figures());
    service::run(server, Some(listener), metrics, None, stop_on_signals()).await;
    router.stop();
    Ok(())
}

/// Binds the address for clients: a stream listener, or a UDP socket for
/// `udp:HOST:PORT` (served by the same server, so with the router as its handler).
/// Listens for workers that join on `addr`, with the join token.
async fn accept_joins(
    router: &Router,
    addr: &str,
    config: &Config,
    client: ClientConfig,
) -> anyhow::Result<()> {
    let env_token = std::env::var("COURIER_JOIN_TOKEN").ok();
    let (token, warning) = AuthToken::load(env_token, config.route.join_token_file.as_deref())?;
    if let Some(warning) = warning {
        warn!("{warning}");
    }
    let token = token
        .context("route.join_listen needs a token: set join_token_file or COURIER_JOIN_TOKEN")?;
    let joins = Listener::bind(addr, config.backlog, config.socket_mode())
        .await
        .with_context(|| format!("cannot listen for workers on {addr}"))?;
    if let Ok(bound) = joins.local_addr() {
        info!(join = %bound, "accepting workers that join");
    }
    router.accept_joins(joins, token, client);
    Ok(())
}

/// Layers the flags and COURIER_* variables over the file or the defaults.
fn effective_config(args: &RouteArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    macro_rules! overlay {
        ($target:expr; $($field:ident),*) => {
            $(if let Some(value) = args.$field.clone() {
                $target.$field = value;
            })*
        };
    }
    overlay!(config; listen, max_in_flight, max_frame, drain_timeout);
    overlay!(config.route; connections_per_backend, ping_interval, ping_timeout, eject_after,
        readmit_backoff, readmit_backoff_max, call_timeout, retry_budget_percent,
        retry_budget_per_second);
    if !args.backends.is_empty() {
        config.route.backends.clone_from(&args.backends);
    }
    if args.join_listen.is_some() {
        config.route.join_listen.clone_from(&args.join_listen);
    }
    if args.metrics.is_some() {
        config.metrics.clone_from(&args.metrics);
    }
    for (value, field) in [
        (&args.join_token_file, &mut config.route.join_token_file),
        (
            &args.backend_token_file,
            &mut config.route.backend_token_file,
        ),
        (&args.backend_tls_ca, &mut config.route.backend_tls_ca),
        (&args.backend_tls_cert, &mut config.route.backend_tls_cert),
        (&args.backend_tls_key, &mut config.route.backend_tls_key),
        (&args.auth_token_file, &mut config.auth_token_file),
    ] {
        if value.is_some() {
            field.clone_from(value);
        }
    }
    config.allow_insecure |= args.allow_insecure;
    config.validate()?;
    Ok(config)
}

/// How the router dials its backends: their token and TLS (with a client certificate
/// when configured), and `max_frame` (a reply larger than that ejects the backend).
fn backend_client(config: &Config) -> anyhow::Result<ClientConfig> {
    let env_token = std::env::var("COURIER_BACKEND_TOKEN").ok();
    let (token, warning) = AuthToken::load(env_token, config.route.backend_token_file.as_deref())?;
    if let Some(warning) = warning {
        warn!("{warning}");
    }
    let route = &config.route;
    let cert_and_key = route
        .backend_tls_cert
        .as_deref()
        .zip(route.backend_tls_key.as_deref());
    let tls = match &route.backend_tls_ca {
        Some(ca) => Some(ClientTls::from_files(ca, cert_and_key, None)?),
        None => None,
    };
    Ok(ClientConfig {
        max_frame: config.max_frame,
        auth_token: token.map(|token| token.as_bytes().clone()),
        tls,
        ..ClientConfig::default()
    })
}
