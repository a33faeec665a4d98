//! The `courier` command line as clap sees it: the global flags and one module per
//! subcommand, each holding its arguments and the code that runs it. Only the binary
//! uses these; the library knows nothing of them.

pub(crate) mod bench;
pub(crate) mod client_args;
pub(crate) mod env;
pub(crate) mod exit;
pub(crate) mod logging;
pub(crate) mod manual;
pub(crate) mod output;
pub(crate) mod route;
pub(crate) mod send;
pub(crate) mod send_stream;
pub(crate) mod serve;
pub(crate) mod service;
pub(crate) mod stats;

use clap::{Parser, Subcommand, ValueEnum};

use self::logging::LogFormat;

/// Whole messages between programs over TCP: a length-prefixed request/reply protocol.
///
/// `courier serve` runs a server (echo by default); `courier send` sends one message and
/// prints the reply. Logs go to stderr (RUST_LOG, e.g. RUST_LOG=courier=debug shows every
/// payload as hex); stdout carries only replies.
#[derive(Debug, Parser)]
#[command(name = "courier", version)]
pub(crate) struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "COURIER_LOG_FORMAT")]
    pub(crate) log_format: LogFormat,

    /// Tokio runtime: "multi" (a worker thread per CPU this process may use), "current"
    /// (everything on one thread), or "auto": "current" for bench, send and stats when
    /// this process may use one CPU only (taskset, a cgroup's CPU limit), "multi" otherwise
    /// and always for serve and route.
    #[arg(long, global = true, value_enum, default_value_t = RuntimeKind::Auto, env = "COURIER_RUNTIME")]
    pub(crate) runtime: RuntimeKind,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Which Tokio runtime runs the command (`--runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RuntimeKind {
    /// `current` for a client command (bench, send, stats) that may use one CPU only,
    /// `multi` otherwise and for a server.
    Auto,
    /// One worker thread per CPU available to the process (taskset limits it).
    Multi,
    /// A single thread for everything.
    Current,
}

impl RuntimeKind {
    /// Whether a process that may use `cpus` CPUs (`None`: unknown) runs everything on one
    /// thread (`current`) rather than on the multi-thread runtime; `server` for `serve` and
    /// `route`.
    ///
    /// On one CPU the multi-thread runtime has no second CPU to share work with, yet still
    /// pays for sharing it: task states changed atomically, an I/O driver taken in turns,
    /// a main thread (waiting in `block_on`) apart from the worker that runs the
    /// connections. One thread does the same work without them. Pinned to one CPU each
    /// (server on CPU 0, load on CPU 1), alternating runs of the two runtimes measured:
    /// `courier bench -c 50 -P 16` sends 3-7 % more requests/s on `current` (0.284-0.308
    /// against 0.299-0.320 µs of its CPU per request, 4 of 4 pairs), so a client command
    /// on one CPU gets it.
    ///
    /// A server keeps the multi-thread runtime unless told otherwise. On one thread it
    /// answered 0-7 % more at 50 connections under the C epoll client (1.8 % in the median
    /// of a later 6 pairs, 4 of them in its favour). At 10,000 connections and 20,000
    /// requests/s in open loop (bench/epoll_floor.c's client, normal priority) its p99 was
    /// worse in 8 of 12 alternating pairs (median about 3.0 ms against 1.8), then better
    /// in 7 of 12 three hours later (1.8 against 2.0 ms), and both runtimes spend the same CPU
    /// per request there (11.5-12.3 µs): that tail is set by the machine's stalls
    /// (bench/many_connections), which move more between runs than the runtimes differ.
    /// Under `chrt -f 1` one thread did better (p99 138-230 µs against 206-2,890 µs, 4 of
    /// 4). With no measurement that tells the two apart where a server's tail is at stake,
    /// the server's default stays as it was.
    pub(crate) fn one_thread(self, cpus: Option<usize>, server: bool) -> bool {
        match self {
            RuntimeKind::Auto => cpus == Some(1) && !server,
            RuntimeKind::Multi => false,
            RuntimeKind::Current => true,
        }
    }
}

/// The subcommands; each variant's documentation is its `--help`.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a server until SIGINT or SIGTERM (on Windows: Ctrl-C, Ctrl-Break, console close
    /// or shutdown); a second signal exits at once.
    ///
    /// Settings come from flags, then COURIER_* environment variables, then --config FILE,
    /// then the built-in defaults (config/courier.toml, shown by --print-config).
    Serve(Box<serve::ServeArgs>),
    /// Run a router: a server that sends each request to one of many courier servers
    /// (backends), balancing per request, and drains like `serve` on SIGINT or SIGTERM.
    ///
    /// Settings come from flags, then COURIER_* variables, then --config FILE (its
    /// [route] table, and the server settings for the side facing clients), then the
    /// defaults. docs/ROUTE.md describes balancing, health, retries and the errors.
    Route(Box<route::RouteArgs>),
    /// Measure a server: requests/s, latency percentiles, errors, and this tool's own CPU.
    ///
    /// Every reply is checked against its request (id and content); errors or mismatches
    /// make the exit status 1. Prints a summary, or one JSON object with --json. With one
    /// connection and one request at a time (-c 1 -P 1, no --rate), the connection blocks
    /// in write and read on a thread of its own: the cheapest client for a round trip.
    Bench(bench::BenchArgs),
    /// Send a message to a server and print the reply on stdout.
    ///
    /// One message (--data, --hex, --file, or stdin), --count of them, or one per item of
    /// a stream (--lines, --null, --jsonl). Exits 0 when every reply arrived. Otherwise
    /// prints one line on stderr saying what went wrong and exits with the status of its
    /// kind (the table at the end): 3 means the request's outcome is unknown (it was sent
    /// and the connection ended before its answer: the server may have processed it, so
    /// do not resend it blindly).
    Send(send::SendArgs),
    /// Print a running server's counters: connections accepted, rejected and closed by
    /// reason, protocol errors, requests and replies.
    ///
    /// Asks with a STATS frame (courier framing only). Prints one `name value` line per
    /// counter, one flat JSON object with --json, or rates per second with --watch.
    Stats(stats::StatsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    ///
    /// Install for bash: `courier completions bash > ~/.local/share/bash-completion/completions/courier`.
    Completions(manual::CompletionsArgs),
    /// Print the man page (roff) on stdout.
    ///
    /// Install: `courier man > ~/.local/share/man/man1/courier.1`, then `man courier`.
    Man,
}

#[cfg(test)]
mod tests {
    use super::RuntimeKind;

    #[test]
    fn auto_is_one_thread_for_a_client_on_one_cpu_only() {
        assert!(RuntimeKind::Auto.one_thread(Some(1), false));
        assert!(!RuntimeKind::Auto.one_thread(Some(2), false));
        assert!(!RuntimeKind::Auto.one_thread(None, false));
        // A server keeps the multi-thread runtime on one CPU too.
        assert!(!RuntimeKind::Auto.one_thread(Some(1), true));
        // An explicit choice stands whatever the CPUs and the command.
        assert!(!RuntimeKind::Multi.one_thread(Some(1), false));
        assert!(RuntimeKind::Current.one_thread(Some(8), true));
    }
}
