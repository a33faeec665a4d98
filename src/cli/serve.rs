//! `courier serve`: its flags, the configuration they layer over the file and the
//! defaults, the handler the configuration chooses, and the signals that stop the server.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use courier::config::{Config, Framing};
use courier::handler::{Builtin, Exec, ExecPool, Handler};
use courier::server;
use courier::transport::tls::ServerTls;
use courier::transport::Listener;

use super::logging::flush_logs;
use super::service::Bound;

/// `courier serve`'s flags. Each one left out keeps the value of the config file or the
/// default, which is why they are options and their help states the default by hand.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// TOML config file; settings it leaves out keep their defaults.
    #[arg(long, short = 'c', value_name = "FILE", env = "COURIER_CONFIG")]
    config: Option<PathBuf>,

    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,

    /// How messages are delimited: courier (the protocol), plain (4-byte length +
    /// payload) or raw (none: one read is one message) [default: courier]
    #[arg(long, value_enum, env = "COURIER_FRAMING")]
    framing: Option<Framing>,

    /// The reply: echo (the request's payload), none (an empty reply; nothing in raw
    /// framing) or hex bytes such as 0a0b0c [default: echo]
    #[arg(long, value_name = "echo|none|HEX", env = "COURIER_REPLY")]
    reply: Option<String>,

    /// Raw framing: bytes (hex) sent to each client as soon as it connects
    #[arg(long, value_name = "HEX", env = "COURIER_GREETING")]
    greeting: Option<String>,

    /// Plain and raw framing: close a connection after N messages, 0 for never
    /// [default: 0]
    #[arg(long, value_name = "N", env = "COURIER_CLOSE_AFTER")]
    close_after: Option<u64>,

    /// Answer requests with a command run by `sh -c` (Windows: `cmd /C`, the line as
    /// written): payload on its stdin, reply from its stdout; a non-zero exit becomes an
    /// ERROR with the status and the last lines of stderr (at most 1 KiB)
    #[arg(long, value_name = "CMD", env = "COURIER_EXEC")]
    exec: Option<String>,

    /// With --exec: keep N long-lived copies of CMD speaking plain framing on
    /// stdin/stdout instead of one process per request (0) [default: 0]
    #[arg(long, value_name = "N", env = "COURIER_EXEC_WORKERS")]
    exec_workers: Option<usize>,

    /// With --exec: time one request may take before the command and its process group
    /// are killed [default: 30s]
    #[arg(long, value_name = "DUR", env = "COURIER_EXEC_TIMEOUT", value_parser = humantime::parse_duration)]
    exec_timeout: Option<Duration>,

    /// With --exec per request: commands running at once [default: 16]
    #[arg(long, value_name = "N", env = "COURIER_EXEC_MAX_CHILDREN")]
    exec_max_children: Option<usize>,

    /// With --exec: requests that may wait for a free process; more get ERROR 14 (busy)
    /// [default: 64]
    #[arg(long, value_name = "N", env = "COURIER_EXEC_QUEUE")]
    exec_queue: Option<usize>,

    /// Address to listen on: HOST:PORT, unix:PATH for a Unix domain socket, or
    /// udp:HOST:PORT for UDP; port 0 picks a free one (logged) [default: 127.0.0.1:12345]
    #[arg(long, value_name = "ADDR", env = "COURIER_LISTEN")]
    listen: Option<String>,

    /// Permissions of a unix: socket file, in octal [default: 0600]
    #[arg(long, value_name = "MODE", env = "COURIER_SOCKET_MODE")]
    socket_mode: Option<String>,

    /// Connections the kernel may queue before they are accepted [default: 1024]
    #[arg(long, value_name = "N", env = "COURIER_BACKLOG")]
    backlog: Option<u32>,

    /// Connections served at once; more get "server busy" [default: 10000]
    #[arg(long, value_name = "N", env = "COURIER_MAX_CONNECTIONS")]
    max_connections: Option<usize>,

    /// Largest payload of one frame, in bytes (64k, 1MiB: suffixes are powers of 1024)
    /// [default: 1048576]
    #[arg(long, value_name = "BYTES", env = "COURIER_MAX_FRAME", value_parser = courier::config::parse_size)]
    max_frame: Option<usize>,

    /// Requests handled at once per connection; past it reading pauses [default: 128]
    #[arg(long, value_name = "N", env = "COURIER_MAX_IN_FLIGHT")]
    max_in_flight: Option<usize>,

    /// Unwritten reply bytes per connection before it is closed as a slow reader (8MiB
    /// allowed) [default: 8388608]
    #[arg(long, value_name = "BYTES", env = "COURIER_MAX_PENDING_OUTPUT", value_parser = courier::config::parse_size)]
    max_pending_output: Option<usize>,

    /// Time from accept to the client's HELLO [default: 10s]
    #[arg(long, value_name = "DUR", env = "COURIER_HANDSHAKE_TIMEOUT", value_parser = humantime::parse_duration)]
    handshake_timeout: Option<Duration>,

    /// Time to finish a frame once its first byte arrived [default: 30s]
    #[arg(long, value_name = "DUR", env = "COURIER_FRAME_TIMEOUT", value_parser = humantime::parse_duration)]
    frame_timeout: Option<Duration>,

    /// Time with no traffic and nothing in flight before a connection is closed
    /// [default: 5m]
    #[arg(long, value_name = "DUR", env = "COURIER_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,

    /// Time allowed on shutdown for requests in flight to be answered [default: 30s]
    #[arg(long, value_name = "DUR", env = "COURIER_DRAIN_TIMEOUT", value_parser = humantime::parse_duration)]
    drain_timeout: Option<Duration>,

    /// After a request, keep polling sockets instead of sleeping for this long: lower
    /// round-trip latency for a CPU kept busy while requests keep coming less than this
    /// far apart (after a longer gap it sleeps; an idle server never polls). 0s turns it
    /// off [default: 100us]
    #[arg(long, value_name = "DUR", env = "COURIER_BUSY_POLL", value_parser = humantime::parse_duration)]
    busy_poll: Option<Duration>,

    /// Give a connection older than this (±10 %) GOAWAY and drain it, so that clients
    /// reconnect and spread over the servers behind a load balancer; 0s for never
    /// [default: 0s]
    #[arg(long, value_name = "DUR", env = "COURIER_MAX_CONNECTION_AGE", value_parser = humantime::parse_duration)]
    max_connection_age: Option<Duration>,

    /// Serve Prometheus metrics (/metrics), /healthz and /readyz over HTTP on HOST:PORT;
    /// loopback only unless --allow-insecure [default: off]
    #[arg(long, value_name = "ADDR", env = "COURIER_METRICS")]
    metrics: Option<String>,
    /// UDP: the largest message payload one datagram carries, headers not included
    /// (16 to 65485) [default: 1200]
    #[arg(long, value_name = "BYTES", env = "COURIER_UDP_MAX_PAYLOAD", value_parser = courier::config::parse_size)]
    udp_max_payload: Option<usize>,

    /// UDP: replies kept for retransmitted requests, at most this many [default: 65536]
    #[arg(long, value_name = "N", env = "COURIER_UDP_CACHE_ENTRIES")]
    udp_cache_entries: Option<usize>,

    /// UDP: replies kept, at most this many bytes (64MiB allowed) [default: 67108864]
    #[arg(long, value_name = "BYTES", env = "COURIER_UDP_CACHE_BYTES", value_parser = courier::config::parse_size)]
    udp_cache_bytes: Option<usize>,

    /// UDP: how long a reply is kept for retransmissions; longer than clients' call
    /// timeout [default: 2m]
    #[arg(long, value_name = "DUR", env = "COURIER_UDP_CACHE_LIFETIME", value_parser = humantime::parse_duration)]
    udp_cache_lifetime: Option<Duration>,

    /// Require clients to present the token in this file (the whole file, less a trailing
    /// newline) in their HELLO. COURIER_AUTH_TOKEN, holding the token itself, takes
    /// precedence; no flag takes the token itself, since other users can read a command line
    #[arg(long, value_name = "FILE", env = "COURIER_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,

    /// Speak TLS with this certificate chain (PEM); needs --tls-key
    #[arg(long, value_name = "PEM", env = "COURIER_TLS_CERT")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM)
    #[arg(long, value_name = "PEM", env = "COURIER_TLS_KEY")]
    tls_key: Option<PathBuf>,

    /// Require client certificates signed by a CA in this PEM file (mutual TLS)
    #[arg(long, value_name = "PEM", env = "COURIER_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,

    /// Dial the router at ADDR (its --join-listen address) and serve requests over that
    /// connection instead of listening; dials again whenever it ends [default: none]
    #[arg(long, value_name = "ADDR", env = "COURIER_JOIN")]
    join: Option<String>,

    /// With --join: the router's join token, from this file; COURIER_JOIN_TOKEN, holding
    /// the token itself, takes precedence
    #[arg(long, value_name = "FILE", env = "COURIER_JOIN_TOKEN_FILE")]
    join_token_file: Option<PathBuf>,

    /// Listen on a non-loopback address even with neither TLS nor an auth token (without
    /// it the server refuses to start there) [default: false]
    #[arg(long)]
    allow_insecure: bool,
}

/// Runs `courier serve` until a signal, or prints the configuration with --print-config.
pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = effective_config(&args)?;
    if args.print_config {
        return print_config(&config);
    }
    for warning in config.load_token(std::env::var("COURIER_AUTH_TOKEN").ok())? {
        warn!("{warning}");
    }
    for warning in config.load_join_token(std::env::var("COURIER_JOIN_TOKEN").ok())? {
        warn!("{warning}");
    }
    log_runtime();
    let (listener, tls) = if config.join.is_some() {
        // It dials its router, and listens nowhere.
        (None, None)
    } else {
        config.check_exposure()?;
        let tls = server_tls(&config)?;
        if config.auth_token.is_some() {
            info!("clients must present the auth token in their HELLO");
        }
        (Some(bind(&config).await?), tls)
    };
    config.check_metrics_exposure()?;
    let metrics = super::service::bind_metrics(&config).await?;
    let stop = stop_on_signals();
    serve_with_handler(Listeners { listener, metrics }, config, tls, stop).await?;
    // Connections still open after the drain timeout, and worker pools, may still have
    // commands running: the server is done with them.
    courier::handler::kill_children();
    Ok(())
}

/// Logs which runtime `--runtime` gave (`auto` decides by the CPUs the process may use),
/// and its worker threads.
pub(super) fn log_runtime() {
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    info!(
        flavor = %courier::bench::runtime_name(),
        workers, "tokio runtime"
    );
}

/// Binds the configured address for clients: a stream listener, or a UDP socket for
/// `udp:HOST:PORT` (`courier serve` and `courier route` alike).
pub(super) async fn bind(config: &Config) -> anyhow::Result<Bound> {
    let bound = match config.listen.strip_prefix(courier::transport::UDP_PREFIX) {
        Some(addr) => courier::transport::bind_udp(addr).await.map(Bound::Udp),
        None => Listener::bind(&config.listen, config.backlog, config.socket_mode())
            .await
            .map(Bound::Stream),
    };
    bound.with_context(|| format!("cannot listen on {}", config.listen))
}

/// Layers flags and COURIER_* variables (clap merges those two) over the file or the
/// defaults.
fn effective_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    macro_rules! overlay {
        ($($field:ident),*) => {
            $(if let Some(value) = args.$field.clone() {
                config.$field = value;
            })*
        };
    }
    if args.greeting.is_some() {
        config.greeting.clone_from(&args.greeting);
    }
    if args.exec.is_some() {
        config.exec.clone_from(&args.exec);
    }
    if args.metrics.is_some() {
        config.metrics.clone_from(&args.metrics);
    }
    if args.join.is_some() {
        config.join.clone_from(&args.join);
    }
    overlay!(
        framing,
        reply,
        close_after,
        exec_workers,
        exec_timeout,
        exec_max_children,
        exec_queue,
        listen,
        socket_mode,
        backlog,
        max_connections,
        max_frame,
        max_in_flight,
        max_pending_output,
        handshake_timeout,
        frame_timeout,
        idle_timeout,
        drain_timeout,
        busy_poll,
        max_connection_age,
        udp_max_payload,
        udp_cache_entries,
        udp_cache_bytes,
        udp_cache_lifetime
    );
    for (value, field) in [
        (&args.auth_token_file, &mut config.auth_token_file),
        (&args.tls_cert, &mut config.tls_cert),
        (&args.tls_key, &mut config.tls_key),
        (&args.tls_client_ca, &mut config.tls_client_ca),
        (&args.join_token_file, &mut config.join_token_file),
    ] {
        if value.is_some() {
            field.clone_from(value);
        }
    }
    config.allow_insecure |= args.allow_insecure;
    config.validate()?;
    Ok(config)
}

/// --print-config: the effective configuration as TOML on stdout.
pub(crate) fn print_config(config: &Config) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(config.to_toml().as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}

/// The server's TLS, when a certificate and key are configured.
pub(crate) fn server_tls(config: &Config) -> anyhow::Result<Option<ServerTls>> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let (tls, warnings) = ServerTls::from_files(cert, key, config.tls_client_ca.as_deref())?;
    for warning in warnings {
        warn!("{warning}");
    }
    info!(
        client_certificates = tls.requires_client_certificates(),
        "speaking TLS"
    );
    Ok(Some(tls))
}

/// Starts the task that watches for SIGINT and SIGTERM, and returns what resolves on the
/// first. The second exits the process at once, with status 130, killing the commands
/// started for `--exec`.
pub(crate) fn stop_on_signals() -> impl Future<Output = ()> {
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        server::shutdown_signal().await;
        // Act first, log after: nothing a log write does may keep the server running.
        trigger.cancel();
        info!("shutting down: finishing requests in flight (a second signal exits at once)");
        server::shutdown_signal().await;
        warn!("second signal: exiting at once");
        courier::handler::kill_children();
        flush_logs();
        std::process::exit(130);
    });
    shutdown.cancelled_owned()
}

/// The bound sockets: the server's, and the metrics endpoint's when configured.
struct Listeners {
    /// None for a server that joins a router instead of listening.
    listener: Option<Bound>,
    metrics: Option<tokio::net::TcpListener>,
}

/// Chooses the handler the configuration asks for (the built-in reply, a command per
/// request, or a pool of workers) and serves with it until `stop`.
async fn serve_with_handler(
    listener: Listeners,
    config: Config,
    tls: Option<ServerTls>,
    stop: impl Future,
) -> anyhow::Result<()> {
    match (config.exec.clone(), config.exec_workers) {
        (None, _) => {
            let handler = Builtin::from_reply(config.fixed_reply()?);
            run_server(listener, config, handler, tls, stop, None).await;
        }
        (Some(command), 0) => {
            let handler = Exec::new(
                command,
                config.exec_timeout,
                config.exec_max_children,
                config.exec_queue,
                config.max_frame,
            );
            run_server(listener, config, handler, tls, stop, None).await;
        }
        (Some(command), workers) => {
            let handler = ExecPool::start(
                &command,
                workers,
                config.exec_timeout,
                config.exec_queue,
                config.max_frame,
            );
            let pool = Some(handler.stats());
            run_server(listener, config, handler, tls, stop, pool).await;
        }
    }
    Ok(())
}

/// Runs the server, with TLS when configured; `pool`, an `--exec-workers` pool's
/// counters, for `--metrics`.
async fn run_server<H: Handler>(
    listeners: Listeners,
    config: Config,
    handler: H,
    tls: Option<ServerTls>,
    stop: impl Future,
    pool: Option<std::sync::Arc<courier::handler::PoolStats>>,
) {
    let mut server = server::Server::new(config, handler);
    if let Some(tls) = tls {
        server = server.with_tls(tls);
    }
    super::service::run(server, listeners.listener, listeners.metrics, pool, stop).await;
}
