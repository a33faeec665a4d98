//! Logging for the binary: tracing to stderr through a writer that never blocks, its
//! flush before exit, and `say` for the one line an exiting command prints.
//!
//! Logs must never block or stop the server, its shutdown included: a stderr that is
//! closed, full or not read costs log lines, nothing else.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use clap::ValueEnum;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// The format of log lines on stderr (`--log-format`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The thread that writes the logs, kept so that exiting can flush it.
static LOG_WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Logs to stderr from a thread of its own. A log line never waits: when stderr is slow,
/// full or not read, lines are dropped rather than block the server, and a failed write
/// (a closed pipe) is dropped silently instead of reported on that same stderr (which
/// would panic: tracing-subscriber reports write errors with `eprintln!` by default).
pub(crate) fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("courier=info"));
    let (writer, guard) = NonBlockingBuilder::default()
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
pub(crate) fn flush_logs() {
    let guard = LOG_WRITER.lock().ok().and_then(|mut slot| slot.take());
    drop(guard);
}

/// Writes one line to stderr, ignoring failure: `eprintln!` panics when stderr is closed,
/// and a message about an error must not become a second one.
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{line}");
}
