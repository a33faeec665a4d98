//! `courier bench`: a load generator that measures a server honestly.
//!
//! Each connection is a task that drives frames itself (not through [`crate::client::Client`],
//! whose per-call channels would make the load generator, not the server, the bottleneck).
//! Every reply is checked against its request, by id and content, so a wrong server cannot
//! score; latency goes into a buffer per connection, moved into an HdrHistogram when it
//! fills and merged at the end.
//!
//! - Closed loop: each connection keeps `pipeline` requests in flight.
//! - Open loop (`rate`): requests leave on a fixed schedule and latency is measured from the
//!   time each was *due*, so a stalled server is charged for the requests it delayed
//!   (coordinated omission corrected, as wrk2 does).
//! - One-way: ONEWAY frames as fast as the connection takes them; at the end a PING on each
//!   connection must be answered, which proves the server read every message before it.
//!
//! This file owns what a caller sees (the settings, the report, the progress counter) and
//! [`run`], which opens the connections, starts one job per connection and sums up what
//! they measured. The rest, layer by layer from the top:
//! - `open.rs`: opening a connection and its HELLO exchange, async or blocking.
//! - `job.rs`: one connection's share of the run, and the tally it brings back.
//! - `drive.rs`: the async request/reply driver, closed and open loop.
//! - `blocking.rs`: the driver of a blocking socket, for one connection, one request at a
//!   time.
//! - `oneway.rs`: one-way streaming and its closing PING.
//! - `requests.rs`: what is sent: checkable payloads, headers, the requests in flight.
//! - `replies.rs`: what comes back: replies found and checked in the read buffer.
//! - `udp.rs`: `udp:` addresses, through the library's client (its retransmission is
//!   part of what is measured).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::ClientError;
use crate::config::Framing;

mod blocking;
mod drive;
mod job;
mod oneway;
mod open;
mod pacer;
mod replies;
mod requests;
mod udp;

use job::{Job, Outcome};
use open::Connection;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Server address.
    pub addr: String,
    /// Connections, each its own task.
    pub connections: usize,
    /// Requests in flight per connection (closed loop).
    pub pipeline: usize,
    /// Payload bytes per request.
    pub size: usize,
    /// How long to measure (after the warm-up), unless `requests` is set.
    pub duration: Duration,
    /// Measure this many requests in all instead of a duration.
    pub requests: Option<u64>,
    /// Time run before measuring starts; nothing in it is counted.
    pub warmup: Duration,
    /// Open loop: requests per second in all, on a fixed schedule.
    pub rate: Option<f64>,
    /// Stream ONEWAY messages instead of requests.
    pub oneway: bool,
    /// The server's framing: courier or plain.
    pub framing: Framing,
    /// Time allowed to connect, and for any one reply.
    pub timeout: Duration,
    /// The token to present in HELLO, for a server that requires one.
    pub auth_token: Option<Bytes>,
    /// Speak TLS.
    pub tls: Option<crate::transport::tls::ClientTls>,
}

impl Default for BenchConfig {
    /// The `courier bench` defaults: 50 connections, no pipelining, 64-byte payloads, 10 s
    /// after a 1 s warm-up, against 127.0.0.1:12345.
    fn default() -> BenchConfig {
        BenchConfig {
            addr: "127.0.0.1:12345".into(),
            connections: 50,
            pipeline: 1,
            size: 64,
            duration: Duration::from_secs(10),
            requests: None,
            warmup: Duration::from_secs(1),
            rate: None,
            oneway: false,
            framing: Framing::Courier,
            timeout: Duration::from_secs(10),
            auth_token: None,
            tls: None,
        }
    }
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest seen.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    /// The percentiles of a histogram of nanoseconds.
    fn of(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// "closed", "open" or "oneway".
    pub mode: &'static str,
    /// "courier" or "plain".
    pub framing: String,
    /// Connections used.
    pub connections: usize,
    /// Requests in flight per connection (closed loop).
    pub pipeline: usize,
    /// Payload size in bytes.
    pub size: usize,
    /// Requests (or one-way messages) completed and verified in the measured window.
    pub requests: u64,
    /// Length of the measured window, in seconds.
    pub seconds: f64,
    /// `requests / seconds`.
    pub rps: f64,
    /// Payload megabytes (10^6) sent per second.
    pub mb_per_s: f64,
    /// Latency of verified replies (absent for one-way streaming).
    pub latency_us: Option<Latency>,
    /// ERROR replies and failed connections.
    pub errors: u64,
    /// Replies whose id or content did not match their request.
    pub mismatches: u64,
    /// The load generator's own CPU time (user + system), in seconds.
    pub client_cpu_s: f64,
    /// The load generator's CPU time per request, in microseconds.
    pub client_cpu_us_per_request: f64,
    /// One-way: every connection's closing PING was answered after all its messages.
    pub oneway_confirmed: Option<bool>,
    /// The Tokio runtime the load ran on: "current" (one thread) or "multi". The CPU
    /// figures above depend on it.
    pub runtime: &'static str,
}

impl Report {
    /// The report of a run of `config` over `connections`: `total` measured in a window
    /// of `seconds`, with `cpu` seconds of the load generator's own CPU time.
    fn new(
        config: &BenchConfig,
        connections: usize,
        total: &mut Outcome,
        seconds: f64,
        cpu: f64,
    ) -> Report {
        let h = total.latencies();
        let latency = (!config.oneway && !h.is_empty()).then(|| Latency::of(h));
        Report {
            mode: if config.oneway {
                "oneway"
            } else if config.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            framing: format!("{:?}", config.framing).to_lowercase(),
            connections,
            pipeline: config.pipeline,
            size: config.size,
            requests: total.requests,
            seconds,
            rps: total.requests as f64 / seconds,
            mb_per_s: (total.requests * config.size as u64) as f64 / seconds / 1e6,
            latency_us: latency,
            errors: total.errors,
            mismatches: total.mismatches,
            client_cpu_s: cpu,
            client_cpu_us_per_request: cpu * 1e6 / total.requests.max(1) as f64,
            oneway_confirmed: config.oneway.then_some(total.confirmed),
            runtime: runtime_name(),
        }
    }
}

/// The `--runtime` name of the Tokio runtime this code runs on: "current" for the
/// one-thread runtime, "multi" for any other (and outside a runtime). A report names it
/// because its CPU figures depend on it; `courier serve` logs it.
pub fn runtime_name() -> &'static str {
    match tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::CurrentThread) => "current",
        _ => "multi",
    }
}

/// Counters the progress display reads while a run goes on.
#[derive(Debug, Default)]
pub struct Progress {
    /// Completed requests so far, warm-up included.
    pub done: AtomicU64,
}

/// When the run starts, measures and ends, the same for every connection.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// When the connections start sending.
    start: Instant,
    /// When the warm-up ends and counting begins.
    measure_from: Instant,
    /// When sending stops; `None` when the run is a number of requests instead.
    until: Option<Instant>,
}

impl Window {
    /// The measured window's length in seconds: up to `until`, or, for a run of a number
    /// of requests, up to `last_end`, when the last job ended.
    fn seconds(&self, last_end: Instant) -> f64 {
        match self.until {
            Some(until) => until.duration_since(self.measure_from),
            None => last_end.duration_since(self.measure_from),
        }
        .as_secs_f64()
        .max(1e-9)
    }

    /// The window of a run starting now (with a moment for the tasks to be spawned).
    fn new(config: &BenchConfig) -> Window {
        let start = Instant::now() + Duration::from_millis(20);
        let measure_from = start + config.warmup;
        let until = match config.requests {
            Some(_) => None,
            None => Some(measure_from + config.duration),
        };
        Window {
            start,
            measure_from,
            until,
        }
    }
}

/// Runs the benchmark.
///
/// # Errors
/// When a connection cannot be opened or its handshake fails; failures after that are
/// counted in the report instead.
pub async fn run(config: &BenchConfig, progress: Arc<Progress>) -> Result<Report, ClientError> {
    if config.addr.starts_with(crate::transport::UDP_PREFIX) {
        return udp::run(config, progress).await;
    }
    let connections = config.connections.max(1);
    let streams = open::open_all(config, connections).await?;
    let window = Window::new(config);
    let tasks = spawn_jobs(config, streams, window, progress);
    // CPU is sampled over the measured window only, like the requests it is divided by.
    tokio::time::sleep_until(window.measure_from).await;
    let cpu_before = cpu_time();
    let (mut total, last_end) = collect(tasks, window.measure_from).await;
    let seconds = window.seconds(last_end);
    let cpu = cpu_time().saturating_sub(cpu_before).as_secs_f64();
    Ok(Report::new(config, connections, &mut total, seconds, cpu))
}

/// Starts one job per connection: a task on the runtime, or a thread of its own for a
/// blocking socket.
fn spawn_jobs(
    config: &BenchConfig,
    streams: Vec<Connection>,
    window: Window,
    progress: Arc<Progress>,
) -> Vec<JoinHandle<(Outcome, Instant)>> {
    let per_connection = config.requests.map(|n| n.div_ceil(streams.len() as u64));
    // The open loop's clock (`pacer.rs`).
    let pacer = config.rate.map(|_| Arc::new(pacer::Pacer::start()));
    let mut tasks = Vec::with_capacity(streams.len());
    for (index, stream) in streams.into_iter().enumerate() {
        let job = Job {
            config: config.clone(),
            index,
            start: window.start,
            measure_from: window.measure_from,
            until: window.until,
            quota: per_connection,
            progress: progress.clone(),
            pacer: pacer.clone(),
        };
        tasks.push(match stream {
            Connection::Async(reader, writer) => tokio::spawn(job.run(reader, writer)),
            Connection::Blocking(stream) => {
                tokio::task::spawn_blocking(move || job.run_blocking(stream))
            }
        });
    }
    tasks
}

/// Waits for every job and sums up what they measured; gives the sum and when the last
/// job ended (no earlier than `measure_from`). A job that panicked counts as an error.
async fn collect(
    tasks: Vec<JoinHandle<(Outcome, Instant)>>,
    measure_from: Instant,
) -> (Outcome, Instant) {
    let mut total = Outcome::new();
    let mut last_end = measure_from;
    for task in tasks {
        match task.await {
            Ok((outcome, ended)) => {
                total.merge(outcome);
                last_end = last_end.max(ended);
            }
            Err(_) => total.errors += 1,
        }
    }
    (total, last_end)
}

/// CPU time used by this process so far (all threads, user + system).
#[cfg(unix)]
fn cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let tv = |t: nix::sys::time::TimeVal| {
                Duration::new(t.tv_sec().max(0) as u64, (t.tv_usec().max(0) as u32) * 1000)
            };
            tv(usage.user_time()) + tv(usage.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// CPU time is not measured here: it reads as zero.
#[cfg(not(unix))]
fn cpu_time() -> Duration {
    Duration::ZERO
}
