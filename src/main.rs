//! The `courier` command line: `serve` runs a server, `send` calls one. This file only
//! parses arguments, sets up logging and calls into the library.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use std::sync::Arc;

use courier::bench::{BenchConfig, Progress, Report};
use courier::client::{
    raw_exchange, Client, ClientConfig, ClientError, Outcome, PlainClient, RawOptions,
};
use courier::config::{parse_hex, AuthToken, Config, Framing};
use courier::handler::{Builtin, Exec, ExecPool, Handler};
use courier::server;
use courier::transport::tls::{ClientTls, ServerTls};
use courier::transport::Listener;
use indicatif::{ProgressBar, ProgressStyle};

/// Whole messages between programs over TCP: a length-prefixed request/reply protocol.
///
/// `courier serve` runs a server (echo by default); `courier send` sends one message and
/// prints the reply. Logs go to stderr (RUST_LOG, e.g. RUST_LOG=courier=debug shows every
/// payload as hex); stdout carries only replies.
#[derive(Debug, Parser)]
#[command(name = "courier", version)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "COURIER_LOG_FORMAT")]
    log_format: LogFormat,

    /// Tokio runtime: "multi" (a worker thread per CPU this process may use) or "current"
    /// (everything on one thread).
    #[arg(long, global = true, value_enum, default_value_t = RuntimeKind::Multi, env = "COURIER_RUNTIME")]
    runtime: RuntimeKind,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RuntimeKind {
    /// One worker thread per CPU available to the process (taskset limits it).
    Multi,
    /// A single thread for everything.
    Current,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a server until SIGINT or SIGTERM (a second signal exits at once).
    ///
    /// Settings come from flags, then COURIER_* environment variables, then --config FILE,
    /// then the built-in defaults (config/courier.toml, shown by --print-config).
    Serve(Box<ServeArgs>),
    /// Measure a server: requests/s, latency percentiles, errors, and this tool's own CPU.
    ///
    /// Every reply is checked against its request (id and content); errors or mismatches
    /// make the exit status 1. Prints a summary, or one JSON object with --json. With one
    /// connection and one request at a time (-c 1 -P 1, no --rate), the connection blocks
    /// in write and read on a thread of its own: the cheapest client for a round trip.
    Bench(BenchArgs),
    /// Send a message to a server and print the reply on stdout.
    ///
    /// Exits 0 when every reply arrived. Otherwise prints one line on stderr saying what
    /// went wrong, and exits 3 when a request's outcome is unknown (it was sent and the
    /// connection ended before its answer: the server may have processed it, so do not
    /// resend it blindly), 1 for anything else (an ERROR answer, or a request the server
    /// did not receive, which is safe to send again).
    Send(SendArgs),
    /// Print a running server's counters: connections accepted, rejected and closed by
    /// reason, protocol errors, requests and replies.
    ///
    /// Asks with a STATS frame (courier framing only). Prints one `name value` line per
    /// counter, or the server's JSON with --json.
    Stats(StatsArgs),
}

#[derive(Debug, Args)]
struct StatsArgs {
    /// Server address.
    #[arg(value_name = "ADDR", default_value = "127.0.0.1:12345")]
    addr: String,

    /// Print the JSON object the server sent.
    #[arg(long)]
    json: bool,

    /// Time allowed to connect and for the answer.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    #[command(flatten)]
    auth: ClientAuthArgs,
}

#[derive(Debug, Args)]
struct ServeArgs {
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

    /// Answer requests with a command run by `sh -c`: payload on its stdin, reply from its
    /// stdout; a non-zero exit becomes an ERROR with the status and stderr's first line
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

    /// Address to listen on: HOST:PORT, or unix:PATH for a Unix domain socket; port 0
    /// picks a free one (logged) [default: 127.0.0.1:12345]
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

    /// Largest payload of one frame, in bytes [default: 1048576]
    #[arg(long, value_name = "BYTES", env = "COURIER_MAX_FRAME")]
    max_frame: Option<usize>,

    /// Requests handled at once per connection; past it reading pauses [default: 128]
    #[arg(long, value_name = "N", env = "COURIER_MAX_IN_FLIGHT")]
    max_in_flight: Option<usize>,

    /// Unwritten reply bytes per connection before it is closed as a slow reader
    /// [default: 8388608]
    #[arg(long, value_name = "BYTES", env = "COURIER_MAX_PENDING_OUTPUT")]
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
    /// round-trip latency for a CPU kept busy while requests keep coming. 0s turns it off
    /// [default: 0s]
    #[arg(long, value_name = "DUR", env = "COURIER_BUSY_POLL", value_parser = humantime::parse_duration)]
    busy_poll: Option<Duration>,

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

    /// Listen on a non-loopback address even with neither TLS nor an auth token (without
    /// it the server refuses to start there) [default: false]
    #[arg(long)]
    allow_insecure: bool,
}

/// How a client proves itself to a server that requires a token, and its TLS.
#[derive(Debug, Args)]
struct ClientAuthArgs {
    /// Speak TLS, trusting the CA certificates in this PEM file.
    #[arg(long, value_name = "PEM", env = "COURIER_TLS_CA")]
    tls_ca: Option<PathBuf>,

    /// With --tls-ca: the name the server's certificate must carry, when it differs from
    /// the host in ADDR.
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,

    /// With --tls-ca: present this client certificate (PEM), for servers that require one.
    #[arg(long, value_name = "PEM", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Present the token in this file (less a trailing newline) in HELLO; the variable
    /// COURIER_AUTH_TOKEN, holding the token itself, takes precedence.
    #[arg(long, value_name = "FILE", env = "COURIER_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
}

impl ClientAuthArgs {
    /// The TLS settings, when --tls-ca is given.
    fn tls(&self) -> anyhow::Result<Option<ClientTls>> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let cert_and_key = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                if let Some(warning) = courier::transport::readable_by_others(key) {
                    warn!("{warning}");
                }
                Some((cert.as_path(), key.as_path()))
            }
            _ => None,
        };
        Ok(Some(ClientTls::from_files(
            ca,
            cert_and_key,
            self.tls_server_name.clone(),
        )?))
    }

    /// The token to send, if any, warning when its file is readable by others.
    fn token(&self) -> anyhow::Result<Option<Bytes>> {
        let env_token = std::env::var("COURIER_AUTH_TOKEN").ok();
        let (token, warning) = AuthToken::load(env_token, self.auth_token_file.as_deref())?;
        if let Some(warning) = warning {
            warn!("{warning}");
        }
        Ok(token.map(|token| token.as_bytes().clone()))
    }
}

#[derive(Debug, Args)]
struct SendArgs {
    /// Server address.
    #[arg(
        value_name = "ADDR",
        default_value = "127.0.0.1:12345",
        env = "COURIER_ADDR"
    )]
    addr: String,

    /// How messages are delimited: courier (the protocol), plain (4-byte length +
    /// payload) or raw (none: the bytes as they are; every chunk received is printed, and
    /// the exchange ends when the server closes or nothing arrives for --timeout).
    #[arg(long, value_enum, default_value_t = Framing::Courier)]
    framing: Framing,

    /// Raw framing: wait for the server's first bytes and print them before sending.
    #[arg(long)]
    recv_first: bool,

    /// The payload as hex, e.g. 05060708.
    #[arg(long, value_name = "HEX", group = "input", value_parser = parse_hex)]
    hex: Option<Bytes>,

    /// The payload as text (sent as its UTF-8 bytes).
    #[arg(long, value_name = "TEXT", group = "input")]
    data: Option<String>,

    /// The payload from a file, or from stdin with `-`.
    #[arg(long, value_name = "PATH|-", group = "input")]
    file: Option<PathBuf>,

    /// Send as ONEWAY: no reply is expected and nothing is printed.
    #[arg(long)]
    oneway: bool,

    /// Send the message this many times, one after another, printing each reply.
    #[arg(long, value_name = "N", default_value_t = 1)]
    count: u64,

    /// Time allowed for each reply (raw framing: the quiet time that ends the exchange).
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// Time allowed to connect and exchange HELLO.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,

    /// How to print each reply: lowercase hex on one line, the raw bytes, or UTF-8 text
    /// on one line.
    #[arg(long, value_enum, default_value_t = Output::Hex)]
    output: Output,

    #[command(flatten)]
    auth: ClientAuthArgs,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Server address.
    #[arg(value_name = "ADDR", default_value = "127.0.0.1:12345")]
    addr: String,

    /// Connections, each keeping its own requests in flight.
    #[arg(short = 'c', long, value_name = "N", default_value_t = 50)]
    connections: usize,

    /// Requests in flight per connection (closed loop).
    #[arg(short = 'P', long, value_name = "N", default_value_t = 1)]
    pipeline: usize,

    /// Payload size in bytes.
    #[arg(short = 's', long, value_name = "BYTES", default_value_t = 64)]
    size: usize,

    /// How long to measure, after the warm-up.
    #[arg(short = 'd', long, value_name = "DUR", default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// Measure this many requests instead of a duration.
    #[arg(short = 'n', long, value_name = "N")]
    requests: Option<u64>,

    /// Time run first and not counted.
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,

    /// Open loop: send this many requests per second in all, on a fixed schedule, and
    /// measure latency from when each was due (coordinated omission corrected).
    #[arg(long, value_name = "RPS")]
    rate: Option<f64>,

    /// Stream ONEWAY messages instead (throughput only); a closing PING on each connection
    /// confirms the server read them all.
    #[arg(long)]
    oneway: bool,

    /// The server's framing (plain: 4-byte length + payload, replies in order).
    #[arg(long, value_enum, default_value_t = Framing::Courier)]
    framing: Framing,

    /// Time allowed to connect, and for any one reply.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    auth: ClientAuthArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    /// Lowercase hex, one line per reply.
    Hex,
    /// The bytes as they are, nothing added.
    Raw,
    /// The bytes as UTF-8 text (invalid sequences replaced), one line per reply.
    Text,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let built = match cli.runtime {
        RuntimeKind::Multi => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        RuntimeKind::Current => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let runtime = match built {
        Ok(runtime) => runtime,
        Err(err) => {
            say(format_args!("courier: cannot start the runtime: {err}"));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Send(args) => send(args).await,
            Command::Bench(args) => bench(args).await,
            Command::Stats(args) => stats(args).await,
        }
    });
    // Ends the tasks still running (and what they hold) before the last logs are flushed.
    drop(runtime);
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            flush_logs();
            say(format_args!("courier: {err:#}"));
            return exit_code(&err);
        }
    };
    flush_logs();
    code
}

/// The exit status for an error: 3 when a request's outcome is unknown, 1 otherwise.
fn exit_code(err: &anyhow::Error) -> ExitCode {
    let unknown = err
        .chain()
        .filter_map(|cause| cause.downcast_ref::<ClientError>())
        .any(|err| err.outcome() == Outcome::Unknown);
    if unknown {
        ExitCode::from(OUTCOME_UNKNOWN)
    } else {
        ExitCode::FAILURE
    }
}

/// The exit status of a command that sent a request whose outcome is unknown.
const OUTCOME_UNKNOWN: u8 = 3;

/// Writes one line to stderr, ignoring failure: `eprintln!` panics when stderr is closed,
/// and a message about an error must not become a second one.
fn say(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The thread that writes the logs, kept so that exiting can flush it.
static LOG_WRITER: std::sync::Mutex<Option<tracing_appender::non_blocking::WorkerGuard>> =
    std::sync::Mutex::new(None);

/// Logs to stderr from a thread of its own. A log line never waits: when stderr is slow,
/// full or not read, lines are dropped rather than block the server, and a failed write
/// (a closed pipe) is dropped silently instead of reported on that same stderr (which
/// would panic: tracing-subscriber reports write errors with `eprintln!` by default).
fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("courier=info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("courier-log")
        .finish(std::io::stderr());
    if let Ok(mut slot) = LOG_WRITER.lock() {
        *slot = Some(guard);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Writes out the log lines still queued (waiting at most about a second for a stderr
/// that does not take them), before the process exits.
fn flush_logs() {
    let guard = LOG_WRITER.lock().ok().and_then(|mut slot| slot.take());
    drop(guard);
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
        busy_poll
    );
    for (value, field) in [
        (&args.auth_token_file, &mut config.auth_token_file),
        (&args.tls_cert, &mut config.tls_cert),
        (&args.tls_key, &mut config.tls_key),
        (&args.tls_client_ca, &mut config.tls_client_ca),
    ] {
        if value.is_some() {
            field.clone_from(value);
        }
    }
    config.allow_insecure |= args.allow_insecure;
    config.validate()?;
    Ok(config)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = effective_config(&args)?;
    if args.print_config {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(config.to_toml().as_bytes())
            .and_then(|()| stdout.flush())
            .context("cannot write to stdout")?;
        return Ok(());
    }
    for warning in config.load_token(std::env::var("COURIER_AUTH_TOKEN").ok())? {
        warn!("{warning}");
    }
    config.check_exposure()?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let (tls, warnings) =
                ServerTls::from_files(cert, key, config.tls_client_ca.as_deref())?;
            for warning in warnings {
                warn!("{warning}");
            }
            info!(
                client_certificates = tls.requires_client_certificates(),
                "speaking TLS"
            );
            Some(tls)
        }
        _ => None,
    };
    if config.auth_token.is_some() {
        info!("clients must present the auth token in their HELLO");
    }
    let listener = Listener::bind(&config.listen, config.backlog, config.socket_mode())
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
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
    let stop = shutdown.cancelled_owned();
    match (config.exec.clone(), config.exec_workers) {
        (None, _) => {
            let handler = Builtin::from_reply(config.fixed_reply()?);
            run_server(listener, config, handler, tls, stop).await;
        }
        (Some(command), 0) => {
            let handler = Exec::new(
                command,
                config.exec_timeout,
                config.exec_max_children,
                config.exec_queue,
                config.max_frame,
            );
            run_server(listener, config, handler, tls, stop).await;
        }
        (Some(command), workers) => {
            let handler = ExecPool::start(
                &command,
                workers,
                config.exec_timeout,
                config.exec_queue,
                config.max_frame,
            );
            run_server(listener, config, handler, tls, stop).await;
        }
    }
    // Connections still open after the drain timeout, and worker pools, may still have
    // commands running: the server is done with them.
    courier::handler::kill_children();
    Ok(())
}

/// Runs the server, with TLS when configured.
async fn run_server<H: Handler>(
    listener: Listener,
    config: Config,
    handler: H,
    tls: Option<ServerTls>,
    stop: impl std::future::Future,
) {
    let mut server = server::Server::new(config, handler);
    if let Some(tls) = tls {
        server = server.with_tls(tls);
    }
    server.run(listener, stop).await;
}

async fn send(args: SendArgs) -> anyhow::Result<()> {
    let payload = match (&args.hex, &args.data, &args.file) {
        (Some(bytes), _, _) => bytes.clone(),
        (_, Some(text), _) => Bytes::from(text.clone().into_bytes()),
        (_, _, Some(path)) if path.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the payload from stdin")?;
            Bytes::from(buf)
        }
        (_, _, Some(path)) => Bytes::from(
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        ),
        _ => Bytes::new(),
    };
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    if args.oneway && args.framing != Framing::Courier {
        bail!("--oneway needs --framing courier: plain and raw framing have no one-way messages");
    }
    if args.recv_first && args.framing != Framing::Raw {
        bail!("--recv-first applies to --framing raw only");
    }
    let mut stdout = std::io::stdout().lock();
    let mut print = |reply: &[u8]| -> std::io::Result<()> {
        match args.output {
            Output::Hex => writeln!(stdout, "{}", hex::encode(reply)),
            Output::Raw => stdout.write_all(reply),
            Output::Text => writeln!(stdout, "{}", String::from_utf8_lossy(reply)),
        }?;
        stdout.flush()
    };
    let addr = args.addr.as_str();
    match args.framing {
        Framing::Courier => {
            let config = ClientConfig {
                connect_timeout: args.connect_timeout,
                call_timeout: args.timeout,
                auth_token: args.auth.token()?,
                tls: args.auth.tls()?,
                ..ClientConfig::default()
            };
            let client = Client::connect_with(addr, config).await?;
            for _ in 0..args.count {
                if args.oneway {
                    client.send_oneway(payload.clone()).await?;
                } else {
                    let reply = client.call(payload.clone()).await?;
                    print(&reply).context("cannot write to stdout")?;
                }
            }
            client.close().await;
        }
        Framing::Plain => {
            let max_frame = ClientConfig::default().max_frame;
            let mut client =
                PlainClient::connect(addr, args.connect_timeout, args.timeout, max_frame).await?;
            for _ in 0..args.count {
                let reply = client.call(payload.clone()).await?;
                print(&reply).context("cannot write to stdout")?;
            }
        }
        Framing::Raw => {
            let options = RawOptions {
                recv_first: args.recv_first,
                connect_timeout: args.connect_timeout,
                timeout: args.timeout,
            };
            raw_exchange(addr, &payload, args.count, &options, print).await?;
        }
    }
    Ok(())
}

async fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let config = ClientConfig {
        connect_timeout: args.timeout,
        call_timeout: args.timeout,
        auth_token: args.auth.token()?,
        tls: args.auth.tls()?,
        ..ClientConfig::default()
    };
    let client = Client::connect_with(args.addr.as_str(), config).await?;
    let snapshot = client.stats().await?;
    client.close().await;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&snapshot)?)?;
        return Ok(());
    }
    let lines = [
        ("accepted", snapshot.accepted),
        ("rejected_busy", snapshot.rejected_busy),
        ("accept_errors", snapshot.accept_errors),
        ("open", snapshot.open),
        ("protocol_errors", snapshot.protocol_errors),
        ("requests", snapshot.requests),
        ("oneway", snapshot.oneway),
        ("replies", snapshot.replies),
        ("errors", snapshot.errors),
        ("pings", snapshot.pings),
    ];
    for (name, value) in lines {
        writeln!(stdout, "{name} {value}")?;
    }
    for (reason, value) in &snapshot.closed {
        writeln!(stdout, "closed.{reason} {value}")?;
    }
    Ok(())
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if args.framing == Framing::Raw {
        bail!("courier bench loads courier or plain framing; raw framing has no replies to match");
    }
    if args.oneway && args.framing != Framing::Courier {
        bail!("--oneway needs --framing courier: plain framing has no one-way messages");
    }
    if args.connections == 0 || args.pipeline == 0 {
        bail!("--connections and --pipeline must be at least 1");
    }
    let config = BenchConfig {
        addr: args.addr.clone(),
        connections: args.connections,
        pipeline: args.pipeline,
        size: args.size,
        duration: args.duration,
        requests: args.requests,
        warmup: args.warmup,
        rate: args.rate,
        oneway: args.oneway,
        framing: args.framing,
        timeout: args.timeout,
        auth_token: args.auth.token()?,
        tls: args.auth.tls()?,
    };
    let progress = Arc::new(Progress::default());
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let ticker = {
        let bar = bar.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            loop {
                let done = progress.done.load(std::sync::atomic::Ordering::Relaxed);
                bar.set_message(format!("{done} requests"));
                bar.tick();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let report = courier::bench::run(&config, progress).await;
    ticker.abort();
    bar.finish_and_clear();
    let report = report?;
    let text = if args.json {
        format!("{}\n", serde_json::to_string(&report)?)
    } else {
        format_report(&args, &report)
    };
    // A reader that went away (`| head`) is not a failure of the benchmark.
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(err).context("cannot write to stdout");
        }
        _ => {}
    }
    if report.errors > 0 || report.mismatches > 0 || report.oneway_confirmed == Some(false) {
        bail!(
            "{} errors and {} mismatched replies{}",
            report.errors,
            report.mismatches,
            if report.oneway_confirmed == Some(false) {
                "; the server did not confirm every one-way message"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn format_report(args: &BenchArgs, report: &Report) -> String {
    use std::fmt::Write as _;
    // Writing to a String cannot fail, so the results of writeln! below are ignored.
    let mut out = String::new();
    let shape = match report.mode {
        "oneway" => "one-way streaming".to_owned(),
        "open" => format!("open loop at {} requests/s", args.rate.unwrap_or_default()),
        _ => format!("pipeline {}", report.pipeline),
    };
    let _ = writeln!(
        out,
        "courier bench {}: {} framing, {} connections, {shape}, {}-byte payloads",
        args.addr, report.framing, report.connections, report.size
    );
    let _ = writeln!(
        out,
        "requests   {} in {:.2} s: {:.0}/s, {:.2} MB/s of payload",
        report.requests, report.seconds, report.rps, report.mb_per_s
    );
    if let Some(l) = report.latency_us {
        let _ = writeln!(
            out,
            "latency    p50 {:.1} us  p90 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  max {:.1} us",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
    }
    if let Some(confirmed) = report.oneway_confirmed {
        let _ = writeln!(
            out,
            "confirmed  {}",
            if confirmed {
                "every connection's closing PING was answered after all its messages"
            } else {
                "NO: a connection's closing PING was not answered"
            }
        );
    }
    let _ = writeln!(
        out,
        "errors     {} (mismatched replies: {})",
        report.errors, report.mismatches
    );
    let _ = writeln!(
        out,
        "client cpu {:.2} s ({:.2} us per request)",
        report.client_cpu_s, report.client_cpu_us_per_request
    );
    out
}
