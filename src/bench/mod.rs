//! `courier bench`: a load generator that measures a server honestly.
//!
//! Each connection is a task that drives frames itself (not through [`crate::client::Client`],
//! whose per-call channels would make the load generator, not the server, the bottleneck).
//! Every reply is checked against its request, by id and content, so a wrong server cannot
//! score; latency goes into an HdrHistogram per connection, merged at the end.
//!
//! - Closed loop: each connection keeps `pipeline` requests in flight.
//! - Open loop (`rate`): requests leave on a fixed schedule and latency is measured from the
//!   time each was *due*, so a stalled server is charged for the requests it delayed
//!   (coordinated omission corrected, as wrk2 does).
//! - One-way: ONEWAY frames as fast as the connection takes them; at the end a PING on each
//!   connection must be answered, which proves the server read every message before it.

use std::collections::VecDeque;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::codec::{Encoder, FramedRead};

use crate::client::{hello, ClientError};
use crate::config::Framing;
use crate::transport::{connect_stream, BlockingStream, Socket};
use crate::transport::{BoxRead, BoxWrite, PIPE_PREFIX};
use crate::wire::{
    put_header, Codec, CodecError, Frame, Kind, PlainCodec, HEADER_LEN, MAX_PAYLOAD_LIMIT,
};

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
}

/// Counters the progress display reads while a run goes on.
#[derive(Debug, Default)]
pub struct Progress {
    /// Completed requests so far, warm-up included.
    pub done: AtomicU64,
}

/// What each connection task brings back.
struct Outcome {
    histogram: Histogram<u64>,
    requests: u64,
    errors: u64,
    mismatches: u64,
    confirmed: bool,
}

/// Runs the benchmark.
///
/// # Errors
/// When a connection cannot be opened or its handshake fails; failures after that are
/// counted in the report instead.
pub async fn run(config: &BenchConfig, progress: Arc<Progress>) -> Result<Report, ClientError> {
    let connections = config.connections.max(1);
    let mut streams = Vec::with_capacity(connections);
    if connections == 1 && one_at_a_time(config) {
        if let Some(stream) = open_blocking(config).await? {
            streams.push(Connection::Blocking(stream));
        }
    }
    while streams.len() < connections {
        let (reader, writer) = open(config).await?;
        streams.push(Connection::Async(reader, writer));
    }
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + config.warmup;
    let until = match config.requests {
        Some(_) => None,
        None => Some(measure_from + config.duration),
    };
    let per_connection = config.requests.map(|n| n.div_ceil(connections as u64));
    let mut tasks = Vec::new();
    for (index, stream) in streams.into_iter().enumerate() {
        let job = Job {
            config: config.clone(),
            index,
            start,
            measure_from,
            until,
            quota: per_connection,
            progress: progress.clone(),
        };
        tasks.push(match stream {
            Connection::Async(reader, writer) => tokio::spawn(job.run(reader, writer)),
            Connection::Blocking(stream) => {
                tokio::task::spawn_blocking(move || job.run_blocking(stream))
            }
        });
    }
    // CPU is sampled over the measured window only, like the requests it is divided by.
    tokio::time::sleep_until(measure_from).await;
    let cpu_before = cpu_time();
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
    let seconds = match until {
        Some(until) => until.duration_since(measure_from),
        None => last_end.duration_since(measure_from),
    }
    .as_secs_f64()
    .max(1e-9);
    let cpu = cpu_time().saturating_sub(cpu_before).as_secs_f64();
    let h = &total.histogram;
    let us = |ns: u64| ns as f64 / 1000.0;
    let latency = (!config.oneway && !h.is_empty()).then(|| Latency {
        p50: us(h.value_at_quantile(0.5)),
        p90: us(h.value_at_quantile(0.9)),
        p99: us(h.value_at_quantile(0.99)),
        p999: us(h.value_at_quantile(0.999)),
        max: us(h.max()),
        mean: h.mean() / 1000.0,
    });
    Ok(Report {
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
    })
}

impl Outcome {
    fn new() -> Outcome {
        Outcome {
            // 1 ns to 100 s at 3 significant digits.
            histogram: Histogram::new_with_bounds(1, 100_000_000_000, 3)
                .expect("valid histogram bounds"),
            requests: 0,
            errors: 0,
            mismatches: 0,
            confirmed: true,
        }
    }

    fn merge(&mut self, other: Outcome) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
        self.requests += other.requests;
        self.errors += other.errors;
        self.mismatches += other.mismatches;
        self.confirmed &= other.confirmed;
    }

    fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.histogram.saturating_record(ns);
    }
}

/// A connection, opened and past its HELLO exchange.
enum Connection {
    /// Driven by a task on the runtime.
    Async(BoxRead, BoxWrite),
    /// Driven by a thread of its own, blocking in `write` and `read`.
    Blocking(Box<dyn BlockingStream>),
}

/// Whether the run keeps one request at a time in flight on each connection (closed loop,
/// no pipelining, request/reply).
fn one_at_a_time(config: &BenchConfig) -> bool {
    config.pipeline <= 1 && config.rate.is_none() && !config.oneway
}

/// Opens one connection, with the HELLO exchange in courier framing.
async fn open(config: &BenchConfig) -> Result<(BoxRead, BoxWrite), ClientError> {
    let (reader, writer) =
        connect_stream(config.addr.as_str(), config.timeout, config.tls.as_ref()).await?;
    handshake(config, reader, writer).await
}

/// Opens the connection of a one-connection, one-request-at-a-time run as a blocking
/// socket; `None` where there is none to open (TLS, a named pipe).
///
/// With one request in flight and one connection, a thread blocking in `write` then `read`
/// is the cheapest client there is: two system calls per request where an event loop
/// makes three (`epoll_wait` between), and no runtime scheduling a task for each reply.
/// The load generator then costs less CPU per request than redis-benchmark's event loop and
/// adds less to the round trip it measures, as the blocking floor client does.
async fn open_blocking(
    config: &BenchConfig,
) -> Result<Option<Box<dyn BlockingStream>>, ClientError> {
    if config.tls.is_some() || config.addr.starts_with(PIPE_PREFIX) {
        return Ok(None);
    }
    let mut socket = Socket::connect(&config.addr, config.timeout).await?;
    let (reader, writer) = socket.halves();
    handshake(config, reader, writer).await?;
    let stream = socket
        .into_blocking(config.timeout)
        .map_err(|err| ClientError::Protocol(format!("cannot make the socket blocking: {err}")))?;
    Ok(Some(stream))
}

/// The HELLO exchange in courier framing (nothing in plain framing); gives the stream back.
async fn handshake<R, W>(config: &BenchConfig, reader: R, writer: W) -> Result<(R, W), ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if config.framing != Framing::Courier {
        return Ok((reader, writer));
    }
    // The load generator takes replies of any size the protocol allows.
    let exchange = hello::exchange(
        reader,
        writer,
        MAX_PAYLOAD_LIMIT,
        config.auth_token.as_ref(),
    );
    let (framed_read, framed_write, _) = tokio::time::timeout(config.timeout, exchange)
        .await
        .map_err(|_| ClientError::ConnectTimeout {
            addr: config.addr.clone(),
            after: config.timeout,
        })??;
    // The server says nothing more until it has our HELLO, so nothing is left buffered.
    Ok((framed_read.into_inner(), framed_write.into_inner()))
}

/// The payload of request number `seq`: its first bytes are `seq`, the rest a fixed pattern,
/// so every reply can be checked without keeping a copy of every request.
struct Payloads {
    template: Vec<u8>,
}

impl Payloads {
    fn new(size: usize) -> Payloads {
        Payloads {
            template: (0..size).map(|i| (i % 251) as u8).collect(),
        }
    }

    /// Appends request `seq`'s payload to `out`, with no allocation of its own.
    fn write(&self, seq: u64, out: &mut BytesMut) {
        let stamp = seq.to_be_bytes();
        let n = self.template.len().min(8);
        out.put_slice(&stamp[8 - n..]);
        out.put_slice(&self.template[n..]);
    }

    fn matches(&self, seq: u64, reply: &[u8]) -> bool {
        let stamp = seq.to_be_bytes();
        let n = self.template.len().min(8);
        reply.len() == self.template.len()
            && reply[..n] == stamp[8 - n..]
            && reply[n..] == self.template[n..]
    }
}

/// One connection's share of the run.
struct Job {
    config: BenchConfig,
    index: usize,
    start: Instant,
    measure_from: Instant,
    until: Option<Instant>,
    quota: Option<u64>,
    progress: Arc<Progress>,
}

impl Job {
    async fn run(self, reader: BoxRead, writer: BoxWrite) -> (Outcome, Instant) {
        tokio::time::sleep_until(self.start).await;
        let mut outcome = Outcome::new();
        let max = self.config.size.max(1 << 20);
        let result = match self.config.framing {
            Framing::Plain => {
                let replies = ReplyBuffer::new(reader, PlainCodec::new(max));
                self.drive(replies, writer, &mut outcome, plain_header, false)
                    .await
            }
            _ if self.config.oneway => {
                let reader = FramedRead::new(reader, Codec::new(max));
                self.stream_oneway(reader, writer, &mut outcome).await
            }
            _ => {
                let replies = ReplyBuffer::new(reader, Codec::new(max));
                self.drive(replies, writer, &mut outcome, request_header, true)
                    .await
            }
        };
        if result.is_err() {
            outcome.errors += 1;
            outcome.confirmed = false;
        }
        (outcome, Instant::now())
    }

    /// [`Job::run`] on a thread of its own, for a blocking socket.
    fn run_blocking(self, mut stream: Box<dyn BlockingStream>) -> (Outcome, Instant) {
        std::thread::sleep(self.start.saturating_duration_since(Instant::now()));
        let mut outcome = Outcome::new();
        let max = self.config.size.max(1 << 20);
        let result = match self.config.framing {
            Framing::Plain => {
                let parser = PlainCodec::new(max);
                self.drive_blocking(&mut stream, &parser, &mut outcome, plain_header, false)
            }
            _ => {
                let parser = Codec::new(max);
                self.drive_blocking(&mut stream, &parser, &mut outcome, request_header, true)
            }
        };
        if result.is_err() {
            outcome.errors += 1;
            outcome.confirmed = false;
        }
        (outcome, Instant::now())
    }

    /// One request at a time over a blocking socket: write it, read until its reply is
    /// whole, check it. A read that waits longer than `timeout` fails the connection.
    fn drive_blocking(
        &self,
        stream: &mut dyn BlockingStream,
        parser: &impl ReplyParser,
        outcome: &mut Outcome,
        header: fn(&mut BytesMut, u32, usize),
        ids: bool,
    ) -> Result<(), CodecError> {
        let mut requests = Requests::new(self.config.size, header, ids);
        let mut out = BytesMut::with_capacity(HEADER_LEN + self.config.size);
        // Read into a plain buffer: `filled` bytes have arrived, the first `start` of them
        // are checked replies.
        let mut buf = vec![0u8; 64 * 1024];
        let (mut start, mut filled) = (0, 0);
        loop {
            let now = Instant::now();
            if self.stop_sending(requests.measured, now) {
                return Ok(());
            }
            requests.queue(now, self.measure_from, &mut out);
            stream.write_all(&out)?;
            out.clear();
            while requests.pending.len() > 0 {
                let Some(reply) = parser.parse(&buf[start..filled])? else {
                    if filled == buf.len() {
                        // Make room: move the unchecked bytes to the front, then grow.
                        buf.copy_within(start..filled, 0);
                        (start, filled) = (0, filled - start);
                        if filled == buf.len() {
                            buf.resize(buf.len() * 2, 0);
                        }
                    }
                    let read = stream.read(&mut buf[filled..])?;
                    if read == 0 {
                        return Err(CodecError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                    filled += read;
                    continue;
                };
                let now = Instant::now();
                let payload = reply
                    .payload
                    .map(|range| &buf[start + range.start..start + range.end]);
                let expected = requests.pending.take(reply.id);
                let answered = self.check(outcome, expected, payload, &requests.payloads, now);
                self.progress
                    .done
                    .fetch_add(u64::from(answered), Ordering::Relaxed);
                start += reply.len;
            }
            if start == filled {
                (start, filled) = (0, 0);
            }
        }
    }

    /// Checks one reply against the request it answers (`expected`: its sequence number
    /// and the instant latency counts from); counts it in `outcome`. Returns whether it
    /// answered a request of ours.
    fn check(
        &self,
        outcome: &mut Outcome,
        expected: Option<(u64, Instant)>,
        payload: Option<&[u8]>,
        payloads: &Payloads,
        now: Instant,
    ) -> bool {
        let Some((expected_seq, due)) = expected else {
            outcome.mismatches += 1;
            return false;
        };
        match payload {
            None => outcome.errors += 1,
            Some(payload) if !payloads.matches(expected_seq, payload) => outcome.mismatches += 1,
            Some(_) => {
                let in_window =
                    due >= self.measure_from && self.until.is_none_or(|until| now <= until);
                if in_window {
                    outcome.requests += 1;
                    outcome.record(now.duration_since(due));
                }
            }
        }
        true
    }

    fn stop_sending(&self, sent_measured: u64, now: Instant) -> bool {
        match (self.until, self.quota) {
            (Some(until), _) => now >= until,
            (None, Some(quota)) => sent_measured >= quota,
            (None, None) => true,
        }
    }

    /// Request/reply, closed or open loop, for courier (`ids`) or plain framing.
    async fn drive<R, W, P>(
        &self,
        mut replies: ReplyBuffer<R, P>,
        mut writer: W,
        outcome: &mut Outcome,
        header: fn(&mut BytesMut, u32, usize),
        ids: bool,
    ) -> Result<(), CodecError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
        P: ReplyParser,
    {
        let mut out = BytesMut::with_capacity(64 * 1024);
        let mut requests = Requests::new(self.config.size, header, ids);
        let interval = self
            .config
            .rate
            .map(|rate| Duration::from_secs_f64(self.config.connections as f64 / rate.max(1e-9)));
        // Spread the connections' schedules over one interval.
        let mut next_due = self.start
            + interval.map_or(Duration::ZERO, |i| {
                i.mul_f64(self.index as f64 / self.config.connections as f64)
            });
        let cap = if interval.is_some() {
            100_000
        } else {
            self.config.pipeline.max(1)
        };
        // One timer guards every wait for a reply: while requests are in flight, some reply
        // must come within `timeout` of the last one (or of the send that started the
        // pipeline). It is moved on when it fires early, not set anew for each wait.
        let timeout = self.config.timeout;
        let watchdog = tokio::time::sleep(timeout);
        tokio::pin!(watchdog);
        let mut last_progress = Instant::now();
        loop {
            let in_flight = requests.pending.len();
            // One clock reading serves the whole batch: its requests leave in one write.
            let now = Instant::now();
            let stopping = self.stop_sending(requests.measured, now);
            if stopping && in_flight == 0 {
                return Ok(());
            }
            if in_flight == 0 {
                last_progress = now;
            }
            // Send what is due.
            let mut queued = false;
            while !stopping && requests.pending.len() < cap {
                let due = match interval {
                    Some(interval) => {
                        if next_due > Instant::now() {
                            break;
                        }
                        let due = next_due;
                        next_due += interval;
                        due
                    }
                    None => now,
                };
                requests.queue(due, self.measure_from, &mut out);
                queued = true;
                if self.stop_sending(requests.measured, now) {
                    break;
                }
            }
            if queued {
                writer.write_all_buf(&mut out).await?;
            }
            let in_flight = requests.pending.len();
            // Wait for replies, or (open loop) for the next send time.
            let read = if in_flight == 0 && interval.is_some() && !stopping {
                tokio::time::sleep_until(next_due).await;
                continue;
            } else if let (Some(_), false) = (interval, stopping) {
                tokio::select! {
                    read = replies.read_more() => read?,
                    () = tokio::time::sleep_until(next_due) => continue,
                    () = &mut watchdog => {
                        watchdog_fired(watchdog.as_mut(), last_progress + timeout)?;
                        continue;
                    }
                }
            } else {
                tokio::select! {
                    read = replies.read_more() => read?,
                    () = &mut watchdog => {
                        watchdog_fired(watchdog.as_mut(), last_progress + timeout)?;
                        continue;
                    }
                }
            };
            if read == 0 {
                return Err(replies.at_eof());
            }
            // Check every reply that has arrived before sending more, so that a pipelined
            // connection refills in one write, not one write per reply. The replies of one
            // read arrived together: one clock reading for all.
            let now = Instant::now();
            last_progress = now;
            let mut answered = 0;
            while let Some(reply) = replies.parse()? {
                let payload = reply.payload.map(|range| &replies.buf[range]);
                let expected = requests.pending.take(reply.id);
                answered +=
                    u64::from(self.check(outcome, expected, payload, &requests.payloads, now));
                replies.consume(reply.len);
            }
            self.progress.done.fetch_add(answered, Ordering::Relaxed);
        }
    }

    /// One-way streaming: ONEWAY frames in batches, then a PING that must come back.
    async fn stream_oneway<R, W>(
        &self,
        mut reader: FramedRead<R, Codec>,
        mut writer: W,
        outcome: &mut Outcome,
    ) -> Result<(), CodecError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        const BATCH: usize = 64;
        let payloads = Payloads::new(self.config.size);
        let mut out = BytesMut::with_capacity(64 * 1024);
        let mut seq = 0u64;
        let mut measured = 0u64;
        loop {
            let now = Instant::now();
            if self.stop_sending(measured, now) {
                break;
            }
            for _ in 0..BATCH {
                seq += 1;
                oneway_header(&mut out, 0, self.config.size);
                payloads.write(seq, &mut out);
            }
            writer.write_all_buf(&mut out).await?;
            self.progress
                .done
                .fetch_add(BATCH as u64, Ordering::Relaxed);
            if now >= self.measure_from {
                measured += BATCH as u64;
            }
        }
        // The server reads a connection in order, so its PONG proves it read every
        // message before the PING.
        let mut probe = BytesMut::new();
        probe.put_u64(seq);
        Codec::new(0).encode(Frame::new(Kind::Ping, 1, probe.freeze()), &mut out)?;
        writer.write_all_buf(&mut out).await?;
        let confirmed = loop {
            match tokio::time::timeout(self.config.timeout, reader.next()).await {
                Ok(Some(Ok(frame))) if frame.kind == Kind::Pong && frame.id == 1 => {
                    break frame.payload[..] == seq.to_be_bytes();
                }
                Ok(Some(Ok(_))) => continue,
                _ => break false,
            }
        };
        outcome.requests = measured;
        outcome.confirmed = confirmed;
        if !confirmed {
            outcome.errors += 1;
        }
        Ok(())
    }
}

/// The courier header of a REQUEST with a `len`-byte payload.
fn request_header(out: &mut BytesMut, id: u32, len: usize) {
    put_header(out, Kind::Request, id, len);
}

/// The courier header of a ONEWAY message with a `len`-byte payload.
fn oneway_header(out: &mut BytesMut, id: u32, len: usize) {
    put_header(out, Kind::Oneway, id, len);
}

/// The plain-framing length prefix of a `len`-byte message.
fn plain_header(out: &mut BytesMut, _id: u32, len: usize) {
    out.put_u32(len as u32);
}

/// The watchdog fired: a timeout if no reply came by `deadline`, else it is moved there.
fn watchdog_fired(
    watchdog: Pin<&mut tokio::time::Sleep>,
    deadline: Instant,
) -> Result<(), CodecError> {
    if Instant::now() >= deadline {
        return Err(CodecError::Io(std::io::ErrorKind::TimedOut.into()));
    }
    watchdog.reset(deadline);
    Ok(())
}

/// The requests in flight on a courier connection, found by id. The bench picks its ids:
/// a request's id is its slot's index + 1 and a slot is reused once its reply is in, so
/// finding a reply's request is an index, not a hash lookup (the hash map this replaced
/// took 9 % of the load generator's CPU at pipeline 64). A reply is still checked against
/// its request's content, which carries the request's sequence number, so a stale or
/// misdirected reply to a reused id is caught.
#[derive(Default)]
struct InFlight {
    slots: Vec<Option<(u64, Instant)>>,
    free: Vec<u32>,
    len: usize,
}

impl InFlight {
    fn len(&self) -> usize {
        self.len
    }

    /// Puts request `seq`, due at `due`, in flight; returns its id (never 0).
    fn insert(&mut self, seq: u64, due: Instant) -> u32 {
        let index = match self.free.pop() {
            Some(index) => index as usize,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.slots[index] = Some((seq, due));
        self.len += 1;
        // At most `cap` (100,000) slots exist, so the index fits.
        index as u32 + 1
    }

    fn remove(&mut self, id: u32) -> Option<(u64, Instant)> {
        let index = id.checked_sub(1)? as usize;
        let entry = self.slots.get_mut(index)?.take()?;
        self.free.push(index as u32);
        self.len -= 1;
        Some(entry)
    }
}

/// The requests one connection sends: numbered from 1, encoded into the output buffer with
/// their checkable payloads, and in flight until their replies are taken.
struct Requests {
    payloads: Payloads,
    pending: Outstanding,
    header: fn(&mut BytesMut, u32, usize),
    size: usize,
    /// The last request's sequence number.
    seq: u64,
    /// Requests due inside the measured window so far.
    measured: u64,
}

impl Requests {
    fn new(size: usize, header: fn(&mut BytesMut, u32, usize), ids: bool) -> Requests {
        Requests {
            payloads: Payloads::new(size),
            pending: Outstanding::new(ids),
            header,
            size,
            seq: 0,
            measured: 0,
        }
    }

    /// Encodes the next request into `out` and puts it in flight, its latency counted
    /// from `due`.
    fn queue(&mut self, due: Instant, measure_from: Instant, out: &mut BytesMut) {
        self.seq += 1;
        if due >= measure_from {
            self.measured += 1;
        }
        let id = self.pending.push(self.seq, due);
        (self.header)(out, id, self.size);
        self.payloads.write(self.seq, out);
    }
}

/// The requests in flight on one connection: by id in courier framing, in order in plain
/// framing (which has no ids, so replies come back in the order of the requests).
enum Outstanding {
    ById(InFlight),
    InOrder(VecDeque<(u64, Instant)>),
}

impl Outstanding {
    fn new(ids: bool) -> Outstanding {
        if ids {
            Outstanding::ById(InFlight::default())
        } else {
            Outstanding::InOrder(VecDeque::new())
        }
    }

    fn len(&self) -> usize {
        match self {
            Outstanding::ById(by_id) => by_id.len(),
            Outstanding::InOrder(in_order) => in_order.len(),
        }
    }

    /// Puts request `seq` (latency counted from `due`) in flight; returns the id to send.
    fn push(&mut self, seq: u64, due: Instant) -> u32 {
        match self {
            Outstanding::ById(by_id) => by_id.insert(seq, due),
            Outstanding::InOrder(in_order) => {
                in_order.push_back((seq, due));
                0
            }
        }
    }

    /// The request a reply with `id` answers.
    fn take(&mut self, id: u32) -> Option<(u64, Instant)> {
        match self {
            Outstanding::ById(by_id) => by_id.remove(id),
            Outstanding::InOrder(in_order) => in_order.pop_front(),
        }
    }
}

/// A reply found at the front of the read buffer.
struct Parsed {
    /// Its request id (0 in plain framing, which has none).
    id: u32,
    /// Where its payload lies in the buffer; `None` when it is not a REPLY (an ERROR).
    payload: Option<Range<usize>>,
    /// Its whole length on the wire.
    len: usize,
}

/// How the bench reads a reply in either framing, without taking it out of the buffer.
trait ReplyParser {
    fn parse(&self, src: &[u8]) -> Result<Option<Parsed>, CodecError>;
}

impl ReplyParser for Codec {
    fn parse(&self, src: &[u8]) -> Result<Option<Parsed>, CodecError> {
        Ok(self.peek(src)?.map(|(kind, id, len)| Parsed {
            id,
            payload: (kind == Kind::Reply).then_some(HEADER_LEN..HEADER_LEN + len),
            len: HEADER_LEN + len,
        }))
    }
}

impl ReplyParser for PlainCodec {
    fn parse(&self, src: &[u8]) -> Result<Option<Parsed>, CodecError> {
        Ok(self.peek(src)?.map(|len| Parsed {
            id: 0,
            payload: Some(4..4 + len),
            len: 4 + len,
        }))
    }
}

/// One connection's replies, checked where they lie in the read buffer: a reply's id and
/// payload are all the check needs, so none is split off into a `Bytes` of its own (with
/// `FramedRead` that split and its reference count were 14 % of the load generator's CPU
/// at pipeline 64).
struct ReplyBuffer<R, P> {
    reader: R,
    buf: BytesMut,
    parser: P,
}

impl<R: AsyncRead + Unpin, P: ReplyParser> ReplyBuffer<R, P> {
    fn new(reader: R, parser: P) -> Self {
        ReplyBuffer {
            reader,
            buf: BytesMut::with_capacity(64 * 1024),
            parser,
        }
    }

    /// Reads what has arrived; 0 at the end of the stream. Cancel safe, as `read_buf` is.
    async fn read_more(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            // Takes back the space of consumed replies when it can, instead of growing.
            self.buf.reserve(64 * 1024);
        }
        self.reader.read_buf(&mut self.buf).await
    }

    /// The reply at the front of the buffer, if all of it has arrived.
    fn parse(&self) -> Result<Option<Parsed>, CodecError> {
        self.parser.parse(&self.buf)
    }

    /// Drops the front `len` bytes: the reply just checked.
    fn consume(&mut self, len: usize) {
        self.buf.advance(len);
    }

    /// The error for a stream that ended while replies were awaited.
    fn at_eof(&self) -> CodecError {
        if self.buf.is_empty() {
            CodecError::Io(std::io::ErrorKind::UnexpectedEof.into())
        } else {
            CodecError::Truncated {
                buffered: self.buf.len(),
            }
        }
    }
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

#[cfg(not(unix))]
fn cpu_time() -> Duration {
    Duration::ZERO
}
