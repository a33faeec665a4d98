//! Faults under load, no reply lost: many clients (client::Reconnecting) call a real
//! `courier serve` process and verify every reply while the server is stopped with SIGTERM,
//! restarted, killed with SIGKILL, restarted and stopped again, and while other connections
//! flood it with bad input throughout.
//!
//! Rules checked:
//! - every reply matches its request (a wrong reply is a loss);
//! - across a SIGTERM, every request the server received is answered: the server's own
//!   counters show requests = replies + errors, and no client call ends with its outcome
//!   unknown (`OutcomeUnknown`, a timeout or a protocol error): calls the draining server
//!   did not take fail as `GoingAway` or `Closed` (not received), calls made while it is
//!   down as connection errors;
//! - across a SIGKILL, calls in flight fail with an error (reported, counted), never hang.
//!
//! Each phase lasts COURIER_FAULT_PHASE_SECS seconds (default 2; `bench/faults` runs it
//! longer, in release mode). It prints the counts.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{shutdown_counter, Served};
use courier::client::{Backoff, ClientConfig, ClientError, Outcome, Reconnecting};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Client connections, and calls in flight on each.
const CLIENTS: usize = 8;
const CALLERS_PER_CLIENT: usize = 4;

/// Server incarnations whose end is a SIGTERM (the second one ends with SIGKILL).
const GRACEFUL: [u32; 2] = [1, 3];

#[derive(Default)]
struct Counts {
    sent: u64,
    verified: u64,
    /// Failures by kind and by how the server incarnation they happened in ended.
    failures: BTreeMap<String, u64>,
    /// Wrong replies, and calls of unknown fate across a graceful stop.
    lost: Vec<String>,
}

fn phase() -> Duration {
    let secs = std::env::var("COURIER_FAULT_PHASE_SECS")
        .ok()
        .and_then(|value| value.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

fn kind(err: &ClientError) -> &'static str {
    match err {
        ClientError::Refused { .. } => "refused",
        ClientError::Connect { .. } => "connect",
        ClientError::ConnectTimeout { .. } => "connect_timeout",
        ClientError::Timeout { .. } => "timeout",
        ClientError::FrameTooLarge { .. } => "frame_too_large",
        ClientError::Server { .. } => "server_error",
        ClientError::GoingAway => "going_away",
        ClientError::Closed { .. } => "closed",
        ClientError::OutcomeUnknown { .. } => "outcome_unknown",
        ClientError::Protocol(_) => "protocol",
        ClientError::NotCourier { .. } | ClientError::NoHello => "not_courier",
        ClientError::Tls { .. } => "tls",
    }
}

async fn caller(
    client: Reconnecting,
    name: String,
    epoch: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<Counts>>,
) {
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let payload = Bytes::from(format!("{name} call {seq}"));
        let started_in = epoch.load(Ordering::Relaxed);
        let result = client.call(payload.clone()).await;
        let pause = matches!(&result, Err(err) if !matches!(err, ClientError::GoingAway));
        record(&counts, &name, &payload, started_in, result);
        if pause {
            // The server is down or restarting; the client's backoff paces the
            // reconnects, this only keeps a failed call from spinning.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn record(
    counts: &Mutex<Counts>,
    name: &str,
    payload: &Bytes,
    started_in: u32,
    result: Result<Bytes, ClientError>,
) {
    let mut counts = counts.lock().unwrap();
    counts.sent += 1;
    match result {
        Ok(reply) if reply == payload => counts.verified += 1,
        Ok(reply) => {
            let wrong = format!("{name}: sent {payload:?}, got {reply:?}");
            counts.lost.push(wrong);
        }
        Err(err) => {
            let graceful = GRACEFUL.contains(&started_in);
            let unknown_fate = err.outcome() == Outcome::Unknown;
            if graceful && unknown_fate {
                counts
                    .lost
                    .push(format!("{name} (server {started_in}, SIGTERM): {err}"));
            }
            let stop_kind = if graceful { "sigterm" } else { "sigkill" };
            *counts
                .failures
                .entry(format!("{} (around {stop_kind})", kind(&err)))
                .or_default() += 1;
        }
    }
}

/// Bad input, one connection at a time: junk, an oversize header, a bad HELLO, half a
/// frame, a reset mid-frame, and a silent connection.
async fn flood(addr: String, stop: Arc<AtomicBool>) -> u64 {
    let hello = {
        let mut hello = vec![0, 0, 0, 15, 1, 0, 0, 0, 0];
        hello.extend_from_slice(b"COUR\x00\x01\x00\x10\x00\x00");
        hello
    };
    let mut attempts = 0u64;
    while !stop.load(Ordering::Relaxed) {
        attempts += 1;
        let Ok(mut stream) = TcpStream::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let bytes: Vec<u8> = match attempts % 6 {
            0 => std::iter::once(0u8)
                .chain((0..500).map(|_| fastrand::u8(..)))
                .collect(),
            1 => [&hello[..], &[0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 1]].concat(),
            2 => b"\x00\x00\x00\x0f\x01\x00\x00\x00\x00NOPE\x00\x01\x00\x10\x00\x00".to_vec(),
            3 => [&hello[..], &[0, 0, 0, 100, 2, 0, 0, 0, 1], &[7; 40]].concat(),
            4 => {
                let _ = stream.set_zero_linger();
                [&hello[..], &[0, 0, 0, 100, 2, 0, 0, 0, 1], &[7; 10]].concat()
            }
            _ => Vec::new(),
        };
        let _ = stream.write_all(&bytes).await;
        let mut sink = [0u8; 512];
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut sink)).await;
    }
    attempts
}

/// Stops the server with SIGTERM and checks its own counters: every request answered.
fn stop_gracefully(server: Served, incarnation: u32, counts: &Mutex<Counts>) -> (u64, u64) {
    let (status, log) = server.terminate();
    assert!(
        status.success(),
        "server {incarnation} exited with {status}"
    );
    let requests = shutdown_counter(&log, "requests");
    let answered = shutdown_counter(&log, "replies") + shutdown_counter(&log, "errors");
    if requests != answered {
        counts.lock().unwrap().lost.push(format!(
            "server {incarnation}: received {requests} requests, answered {answered}"
        ));
    }
    (requests, answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_under_load_lose_no_reply() {
    let phase = phase();
    let listen = format!("127.0.0.1:{}", free_port());
    let args = ["--drain-timeout", "20s"];
    let epoch = Arc::new(AtomicU32::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Mutex::new(Counts::default()));

    let server = Served::start_at(&listen, &args, &[]);
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(2),
        call_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    };
    let backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(500),
    };
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = Reconnecting::new(listen.clone(), config.clone(), backoff);
        for k in 0..CALLERS_PER_CLIENT {
            tasks.push(tokio::spawn(caller(
                client.clone(),
                format!("client {c}.{k}"),
                epoch.clone(),
                stop.clone(),
                counts.clone(),
            )));
        }
    }
    let flood = tokio::spawn(flood(listen.clone(), stop.clone()));

    // Incarnation 1: load, then SIGTERM.
    tokio::time::sleep(phase).await;
    let first = tokio::task::block_in_place(|| stop_gracefully(server, 1, &counts));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Incarnation 2: load, then SIGKILL.
    epoch.store(2, Ordering::Relaxed);
    let mut server = Served::start_at(&listen, &args, &[]);
    tokio::time::sleep(phase).await;
    server.child.kill().expect("SIGKILL the server");
    server.child.wait().expect("reap the server");
    drop(server);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Incarnation 3: load, then SIGTERM with the callers still going.
    epoch.store(3, Ordering::Relaxed);
    let server = Served::start_at(&listen, &args, &[]);
    tokio::time::sleep(phase).await;
    let third = tokio::task::block_in_place(|| stop_gracefully(server, 3, &counts));

    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("a caller stopped within 30 s")
            .expect("a caller panicked");
    }
    let flood_connections = flood.await.expect("the flood task panicked");

    let counts = counts.lock().unwrap();
    let failed: u64 = counts.failures.values().sum();
    println!("faults under load, {}s per phase:", phase.as_secs_f64());
    println!("  requests sent      {}", counts.sent);
    println!("  replies verified   {}", counts.verified);
    println!("  calls failed       {failed}");
    for (why, n) in &counts.failures {
        println!("    {why}: {n}");
    }
    println!("  bad-input connections {flood_connections}");
    println!(
        "  server 1 (SIGTERM): {} requests received, {} answered",
        first.0, first.1
    );
    println!(
        "  server 3 (SIGTERM): {} requests received, {} answered",
        third.0, third.1
    );
    println!("  lost {}", counts.lost.len());
    for loss in counts.lost.iter().take(20) {
        println!("    {loss}");
    }
    assert!(counts.lost.is_empty(), "replies lost: {:?}", counts.lost);
    assert_eq!(counts.sent, counts.verified + failed);
    assert!(
        counts.verified > 0 && first.0 > 0 && third.0 > 0,
        "no load got through"
    );
    assert!(flood_connections > 0);
}
