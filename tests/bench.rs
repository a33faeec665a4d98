//! `courier bench` measures only what it verified: right replies count, wrong ones do not.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use courier::bench::{run, BenchConfig, Progress};
use courier::config::{Config, Framing};
use courier::handler::{Builtin, HandlerError, Request};

fn bench_config(addr: std::net::SocketAddr) -> BenchConfig {
    BenchConfig {
        addr: addr.to_string(),
        connections: 4,
        pipeline: 8,
        size: 64,
        duration: Duration::from_secs(1),
        requests: Some(2000),
        warmup: Duration::ZERO,
        ..BenchConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_against_echo_counts_every_verified_reply() {
    let server = start_echo().await;
    let report = run(&bench_config(server.addr), Arc::new(Progress::default()))
        .await
        .unwrap();
    assert_eq!(report.requests, 2000);
    assert_eq!((report.errors, report.mismatches), (0, 0));
    let latency = report.latency_us.expect("latency measured");
    assert!(latency.p50 > 0.0 && latency.p50 <= latency.p99 && latency.p99 <= latency.max);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_wrong_replies_cannot_score() {
    let server = start_server(test_config(), Builtin::Fixed(Bytes::from(vec![0; 64]))).await;
    let report = run(&bench_config(server.addr), Arc::new(Progress::default()))
        .await
        .unwrap();
    assert_eq!(report.requests, 0, "no wrong reply may count");
    assert!(report.mismatches >= 2000, "{report:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies_are_counted_as_errors() {
    let handler = |_req: Request| async move { Err::<Bytes, _>(HandlerError::new("no")) };
    let server = start_server(test_config(), handler).await;
    let report = run(&bench_config(server.addr), Arc::new(Progress::default()))
        .await
        .unwrap();
    assert_eq!(report.requests, 0);
    assert!(report.errors >= 2000, "{report:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_framing_is_loaded_and_verified_in_order() {
    let config = Config {
        framing: Framing::Plain,
        ..test_config()
    };
    let server = start_server(config, Builtin::Echo).await;
    let bench = BenchConfig {
        framing: Framing::Plain,
        ..bench_config(server.addr)
    };
    let report = run(&bench, Arc::new(Progress::default())).await.unwrap();
    assert_eq!(
        (report.requests, report.errors, report.mismatches),
        (2000, 0, 0)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneway_streaming_is_confirmed_by_the_server() {
    let server = start_echo().await;
    let bench = BenchConfig {
        oneway: true,
        requests: None,
        duration: Duration::from_millis(300),
        ..bench_config(server.addr)
    };
    let report = run(&bench, Arc::new(Progress::default())).await.unwrap();
    assert_eq!(report.oneway_confirmed, Some(true));
    assert!(report.requests > 0);
    assert_eq!(report.errors, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_never_sends_faster_than_its_schedule() {
    let server = start_echo().await;
    // 1000 requests at 2000/s in all: the schedule alone takes half a second; a slow
    // machine can only make the run longer, never shorter.
    let bench = BenchConfig {
        rate: Some(2000.0),
        requests: Some(1000),
        ..bench_config(server.addr)
    };
    let report = run(&bench, Arc::new(Progress::default())).await.unwrap();
    assert_eq!(report.mode, "open");
    assert_eq!(
        (report.requests, report.errors, report.mismatches),
        (1000, 0, 0)
    );
    assert!(report.seconds >= 0.49, "finished in {} s", report.seconds);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_reply_under_a_reused_id_is_a_mismatch() {
    // The bench reuses an id once its reply is in, so with one request in flight every
    // request has the same id. A server that answers each request with the payload of the
    // one before has every id right and every content wrong.
    let previous = Arc::new(std::sync::Mutex::new(Bytes::from(vec![0; 64])));
    let handler = move |request: Request| {
        let previous = previous.clone();
        async move {
            let reply = std::mem::replace(&mut *previous.lock().unwrap(), request.payload);
            Ok::<_, HandlerError>(reply)
        }
    };
    let server = start_server(test_config(), handler).await;
    let bench = BenchConfig {
        connections: 1,
        pipeline: 1,
        requests: Some(500),
        ..bench_config(server.addr)
    };
    let report = run(&bench, Arc::new(Progress::default())).await.unwrap();
    assert_eq!(report.requests, 0, "no stale reply may count: {report:?}");
    assert_eq!(report.mismatches, 500, "{report:?}");
    server.shutdown().await;
}

/// Answers the first 100 requests, then never again: each connection must give up
/// `timeout` after its last reply instead of waiting for ever.
async fn a_server_that_stops_answering(connections: usize, pipeline: usize) {
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handler = move |request: Request| {
        let answered = answered.clone();
        async move {
            if answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 100 {
                std::future::pending::<()>().await;
            }
            Ok::<_, HandlerError>(request.payload)
        }
    };
    let server = start_server(test_config(), handler).await;
    let bench = BenchConfig {
        connections,
        pipeline,
        requests: None,
        duration: Duration::from_secs(30),
        timeout: Duration::from_millis(300),
        ..bench_config(server.addr)
    };
    let report = tokio::time::timeout(
        Duration::from_secs(20),
        run(&bench, Arc::new(Progress::default())),
    )
    .await
    .expect("the bench gave up on the silent server")
    .unwrap();
    assert_eq!(
        report.errors, connections as u64,
        "one timed-out connection each: {report:?}"
    );
    assert!(report.requests <= 100, "{report:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_ends_the_run_with_errors() {
    a_server_that_stops_answering(4, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_ends_a_blocking_run_with_an_error() {
    // One connection, one request at a time: the blocking client's read timeout.
    a_server_that_stops_answering(1, 1).await;
}

/// One connection with one request at a time runs on a blocking socket of its own; the
/// same checks hold there, in both framings (tests/transports.rs runs it over a Unix
/// socket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_one_request_at_a_time_is_verified_too() {
    let server = start_echo().await;
    let bench = BenchConfig {
        connections: 1,
        pipeline: 1,
        requests: Some(300),
        ..bench_config(server.addr)
    };
    let report = run(&bench, Arc::new(Progress::default())).await.unwrap();
    assert_eq!(
        (report.requests, report.errors, report.mismatches),
        (300, 0, 0)
    );
    let latency = report.latency_us.expect("latency measured");
    assert!(latency.p50 > 0.0 && latency.p50 <= latency.max);
    server.shutdown().await;

    let wrong = start_server(test_config(), Builtin::Fixed(Bytes::from(vec![0; 64]))).await;
    let report = run(
        &BenchConfig {
            addr: wrong.addr.to_string(),
            ..bench.clone()
        },
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    assert_eq!((report.requests, report.mismatches), (0, 300), "{report:?}");
    wrong.shutdown().await;

    let plain = start_server(
        Config {
            framing: Framing::Plain,
            ..test_config()
        },
        Builtin::Echo,
    )
    .await;
    let report = run(
        &BenchConfig {
            addr: plain.addr.to_string(),
            framing: Framing::Plain,
            ..bench.clone()
        },
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    assert_eq!(
        (report.requests, report.errors, report.mismatches),
        (300, 0, 0)
    );
    plain.shutdown().await;
}
