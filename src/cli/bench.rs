//! `courier bench`: its arguments, a spinner on a terminal while it runs, the summary
//! (or JSON) it prints, and the exit status its errors give.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;

use courier::bench::{BenchConfig, Progress, Report};
use courier::config::Framing;

use super::client_args::ClientAuthArgs;

/// `courier bench`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Server address.
    #[arg(value_name = "ADDR", default_value = "127.0.0.1:12345")]
    addr: String,

    /// Connections, each keeping its own requests in flight.
    #[arg(short = 'c', long, value_name = "N", default_value_t = 50)]
    connections: usize,

    /// Requests in flight per connection (closed loop).
    #[arg(short = 'P', long, value_name = "N", default_value_t = 1)]
    pipeline: usize,

    /// Payload size in bytes (64, 4k, 1MiB: suffixes are powers of 1024).
    #[arg(short = 's', long, value_name = "BYTES", default_value = "64", value_parser = courier::config::parse_size)]
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
    /// measure latency from when each was due (coordinated omission corrected). While
    /// requests are due less than 2 ms apart, one worker spins between them instead of
    /// sleeping, so that its own wake-up is not in the figures.
    #[arg(long, value_name = "RPS")]
    rate: Option<f64>,

    /// Stream ONEWAY messages instead (throughput only), up to 8 KiB of them per write (as
    /// libzmq's PUSH socket writes); a closing PING on each connection confirms the server
    /// read them all.
    #[arg(long)]
    oneway: bool,

    /// The server's framing (plain: 4-byte length + payload, replies in order; raw
    /// framing has no replies to match, so it cannot be measured).
    #[arg(long, value_enum, default_value_t = BenchFraming::Courier)]
    framing: BenchFraming,

    /// Time allowed to connect, and for any one reply.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    auth: ClientAuthArgs,
}

/// The framings `courier bench` can load (`--framing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchFraming {
    /// The courier protocol.
    Courier,
    /// A 4-byte length and the payload.
    Plain,
}

impl From<BenchFraming> for Framing {
    fn from(framing: BenchFraming) -> Framing {
        match framing {
            BenchFraming::Courier => Framing::Courier,
            BenchFraming::Plain => Framing::Plain,
        }
    }
}

/// Runs `courier bench`: fails (exit status 1) on any error, mismatched reply, or
/// unconfirmed one-way stream, after printing the report.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let config = bench_config(&args)?;
    let progress = Arc::new(Progress::default());
    let (bar, ticker) = spinner(progress.clone());
    let report = courier::bench::run(&config, progress).await;
    ticker.abort();
    bar.finish_and_clear();
    let report = report?;
    let text = if args.json {
        format!("{}\n", serde_json::to_string(&report)?)
    } else {
        format_report(&args, &report)
    };
    print(&text)?;
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

/// Checks the flags and turns them into the library's settings.
fn bench_config(args: &BenchArgs) -> anyhow::Result<BenchConfig> {
    if args.oneway && args.framing != BenchFraming::Courier {
        bail!("--oneway needs --framing courier: plain framing has no one-way messages");
    }
    if args.connections == 0 || args.pipeline == 0 {
        bail!("--connections and --pipeline must be at least 1");
    }
    Ok(BenchConfig {
        addr: args.addr.clone(),
        connections: args.connections,
        pipeline: args.pipeline,
        size: args.size,
        duration: args.duration,
        requests: args.requests,
        warmup: args.warmup,
        rate: args.rate,
        oneway: args.oneway,
        framing: args.framing.into(),
        timeout: args.timeout,
        auth_token: args.auth.token()?,
        tls: args.auth.tls()?,
    })
}

/// A spinner counting requests done, on stderr when it is a terminal (hidden otherwise),
/// and the task that ticks it; abort the task when the run ends.
fn spinner(progress: Arc<Progress>) -> (ProgressBar, JoinHandle<()>) {
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
        tokio::spawn(async move {
            loop {
                let done = progress.done.load(Relaxed);
                bar.set_message(format!("{done} requests"));
                bar.tick();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    (bar, ticker)
}

/// Writes the report to stdout. A reader that went away (`| head`) is not a failure of
/// the benchmark.
fn print(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

/// The human-readable summary: what was measured, throughput, latency, errors, and this
/// tool's own CPU.
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
        "client cpu {:.2} s ({:.2} us per request, {} runtime)",
        report.client_cpu_s, report.client_cpu_us_per_request, report.runtime
    );
    out
}
