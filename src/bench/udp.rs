//! `courier bench udp:HOST:PORT`: closed loop over UDP through the library's
//! [`Client`], `pipeline` calls in flight on each of `connections` sessions. Here the
//! client is the subject too: its retransmission is what a UDP benchmark measures.
//! Every reply must equal its request (an echo server), whose payload is numbered so
//! that a reply to another request cannot pass.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::job::Outcome;
use super::{cpu_time, BenchConfig, Progress, Report, Window};
use crate::client::{Client, ClientConfig, ClientError};

/// Runs the benchmark over UDP.
///
/// # Errors
/// When a session cannot be opened.
pub(super) async fn run(
    config: &BenchConfig,
    progress: Arc<Progress>,
) -> Result<Report, ClientError> {
    if config.oneway || config.rate.is_some() {
        return Err(ClientError::Protocol(
            "courier bench over UDP measures the closed loop only (no --oneway, no --rate)".into(),
        ));
    }
    let sessions = config.connections.max(1);
    let settings = ClientConfig {
        connect_timeout: config.timeout,
        call_timeout: config.timeout,
        auth_token: config.auth_token.clone(),
        max_in_flight: config.pipeline.max(1),
        ..ClientConfig::default()
    };
    let mut clients = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        clients.push(Client::connect_with(config.addr.as_str(), settings.clone()).await?);
    }
    let window = Window::new(config);
    let workers = sessions * config.pipeline.max(1);
    let quota = config.requests.map(|n| n.div_ceil(workers as u64));
    let mut tasks = JoinSet::new();
    for (n, client) in clients.iter().enumerate() {
        for lane in 0..config.pipeline.max(1) {
            let worker = Worker {
                client: client.clone(),
                tag: (n * config.pipeline.max(1) + lane) as u64,
                size: config.size,
                window,
                quota,
                progress: progress.clone(),
            };
            tasks.spawn(worker.run());
        }
    }
    tokio::time::sleep_until(window.measure_from).await;
    let cpu_before = cpu_time();
    let mut total = Outcome::new();
    let mut last_end = window.measure_from;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((outcome, ended)) => {
                total.merge(outcome);
                last_end = last_end.max(ended);
            }
            Err(_) => total.errors += 1,
        }
    }
    let seconds = window.seconds(last_end);
    let cpu = cpu_time().saturating_sub(cpu_before).as_secs_f64();
    Ok(Report::new(config, sessions, &mut total, seconds, cpu))
}

/// One call at a time, over a session shared with the other lanes.
struct Worker {
    client: Client,
    tag: u64,
    size: usize,
    window: Window,
    quota: Option<u64>,
    progress: Arc<Progress>,
}

impl Worker {
    async fn run(self) -> (Outcome, Instant) {
        let mut outcome = Outcome::new();
        tokio::time::sleep_until(self.window.start).await;
        let mut sent = 0u64;
        loop {
            let now = Instant::now();
            if self.window.until.is_some_and(|until| now >= until)
                || self.quota.is_some_and(|quota| sent >= quota)
            {
                return (outcome, now);
            }
            sent += 1;
            let payload = self.payload(sent);
            let result = self.client.call(payload.clone()).await;
            let ended = Instant::now();
            self.progress.done.fetch_add(1, Ordering::Relaxed);
            if now < self.window.measure_from && self.quota.is_none() {
                continue;
            }
            match result {
                Ok(reply) if reply == payload => {
                    outcome.requests += 1;
                    outcome.record(ended.duration_since(now));
                }
                Ok(_) => outcome.mismatches += 1,
                Err(_) => outcome.errors += 1,
            }
        }
    }

    /// `size` bytes: the lane's tag and the call's number, then filler.
    fn payload(&self, n: u64) -> Bytes {
        let mut bytes = Vec::with_capacity(self.size.max(16));
        bytes.extend_from_slice(&self.tag.to_be_bytes());
        bytes.extend_from_slice(&n.to_be_bytes());
        bytes.resize(self.size.max(16), b'.');
        bytes.truncate(self.size.max(16));
        Bytes::from(bytes)
    }
}
