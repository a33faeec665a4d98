//! Telling the truth at shutdown and under faults: the server always stops, every
//! request ends answered, "not received" or "outcome unknown" as the wire proves, every
//! connection is counted under one close reason, and what the server sends never exceeds
//! the max_frame its peer announced.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use courier::client::{Client, ClientError, Outcome};
use courier::config::Config;
use courier::handler::{HandlerError, Request};
use courier::server::Server;
use courier::stats::CloseReason;
use courier::wire::{ErrorBody, ErrorCode, Frame, Hello, Kind};
use tokio_util::sync::CancellationToken;

/// Waits (bounded) for a child process to exit.
fn wait_exit(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

#[test]
fn a_server_whose_stderr_is_a_closed_pipe_still_stops_on_sigterm() {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn courier serve");
    // Read up to the "listening" line, then close our end: every later log write fails.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    for _ in 0..20 {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(found) = line.split("addr=").nth(1) {
            addr = Some(found.trim().to_owned());
            break;
        }
    }
    let addr = addr.expect("the server logs its address");
    drop(stderr);
    // Things the server logs at info: a bad HELLO closes a connection.
    for _ in 0..3 {
        use std::io::Write;
        let mut peer = std::net::TcpStream::connect(&addr).unwrap();
        let _ = peer.write_all(b"\x00\x00\x00\x0f\x01\x00\x00\x00\x00NOPE\x00\x01\x00\x10\x00\x00");
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut peer, &mut sink);
    }
    // Still serving.
    let output = Command::new(BIN)
        .args(["send", "--data", "x", &addr])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    signal(child.id(), "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(20));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let status = status.expect("the server exits on SIGTERM although its stderr is closed");
    assert!(status.success(), "exit status {status}");
}

/// Every id the handler started, in order.
type Started = Arc<Mutex<Vec<u32>>>;

/// A handler that records each request it starts; "quick" requests take 100 ms, the others
/// far longer than any drain timeout here.
fn recording_handler(
    started: Started,
) -> impl Fn(
    Request,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Bytes, HandlerError>> + Send>,
> + Send
       + Sync
       + 'static {
    move |req: Request| {
        started.lock().unwrap().push(req.id);
        Box::pin(async move {
            let pause = if req.payload == "quick" { 100 } else { 60_000 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
            Ok(req.payload)
        })
    }
}

#[tokio::test]
async fn at_the_drain_timeout_each_request_is_answered_unknown_or_not_received() {
    let started = Started::default();
    let config = Config {
        max_in_flight: 2,
        drain_timeout: Duration::from_millis(500),
        ..test_config()
    };
    let server = Server::new(config, recording_handler(started.clone()));
    let stats = server.stats();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(server.run(listener, stop.clone().cancelled_owned()));

    let client = Client::connect(addr).await.unwrap();
    // Ids 1 to 5, in this order: 1 outlives the drain, 2 is answered during it, and the
    // server (max_in_flight 2) never reads 3 to 5.
    let payloads = ["slow", "quick", "slow", "slow", "slow"];
    let mut calls = Vec::new();
    for payload in payloads {
        let client = client.clone();
        calls.push(tokio::spawn(async move { client.call(payload).await }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while started.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the server never started 2 requests"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the server returned after the drain timeout")
        .unwrap();

    assert!(
        matches!(&results[0], Err(err @ ClientError::OutcomeUnknown { .. }) if err.outcome() == Outcome::Unknown),
        "id 1 was received and never answered: {:?}",
        results[0]
    );
    assert_eq!(results[1].as_ref().unwrap(), "quick", "id 2 was answered");
    for (n, result) in results.iter().enumerate().skip(2) {
        assert!(
            matches!(result, Err(err @ ClientError::GoingAway) if err.outcome() == Outcome::NotReceived),
            "id {} was never read: {result:?}",
            n + 1
        );
    }
    // "Not received" is the truth: the handler never started them.
    assert_eq!(*started.lock().unwrap(), vec![1, 2]);
    // And the connection was counted, once, under the drain timeout.
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.open, 0, "{snapshot}");
    let closed = |reason: CloseReason| {
        snapshot
            .closed
            .iter()
            .find(|(name, _)| name == reason.name())
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(closed(CloseReason::DrainTimeout), 1, "{snapshot}");
    assert_eq!(snapshot.accepted, 1, "{snapshot}");
}

#[test]
fn send_reports_a_request_held_past_the_drain_timeout_as_outcome_unknown() {
    let dir = std::env::temp_dir().join(format!("courier-truth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("started");
    let _ = std::fs::remove_file(&marker);
    let exec = format!("touch {}; sleep 5", marker.display());
    let server = Served::start(&["--exec", &exec, "--drain-timeout", "1s"], &[]);
    let send = Command::new(BIN)
        .args(["send", "--data", "pay once", &server.addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, log) = server.terminate();
    assert!(status.success(), "{status}\n{log}");
    let output = send.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{err}");
    assert!(err.contains("outcome unknown"), "{err}");
    assert!(!err.contains("not processed"), "{err}");
    // Every connection counted under exactly one reason.
    assert_eq!(shutdown_counter(&log, "open"), 0, "{log}");
    assert_eq!(shutdown_counter(&log, "drain_timeout"), 1, "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn four_bytes_declaring_an_oversize_frame_are_refused_at_once() {
    // Deadlines far beyond the wait below: only the length check can answer in time.
    let config = Config {
        max_frame: 1000,
        handshake_timeout: Duration::from_secs(120),
        frame_timeout: Duration::from_secs(120),
        ..test_config()
    };
    let server = start_server(config, courier::handler::Builtin::Echo).await;
    for handshake_first in [true, false] {
        let mut peer = if handshake_first {
            RawPeer::handshake(server.addr).await
        } else {
            let mut peer = RawPeer::connect(server.addr).await;
            assert_eq!(peer.recv().await.unwrap().kind, Kind::Hello);
            peer
        };
        peer.send_raw(&[0xff, 0xff, 0xff, 0xff]).await;
        let frame = tokio::time::timeout(Duration::from_secs(10), peer.recv())
            .await
            .expect("an answer from the 4-byte length alone")
            .expect("an ERROR frame");
        let body = ErrorBody::parse(&frame.payload).unwrap();
        assert_eq!((frame.kind, frame.id), (Kind::Error, 0));
        assert_eq!(body.code, ErrorCode::FrameTooLarge, "{body:?}");
        let limit = if handshake_first { "1000" } else { "4096" };
        assert!(body.message.contains(limit), "{}", body.message);
        peer.expect_closed().await;
    }
    server.shutdown().await;
}

/// Connects and says HELLO announcing `max_frame`.
async fn peer_announcing(addr: std::net::SocketAddr, max_frame: u32) -> RawPeer {
    let mut peer = RawPeer::connect(addr).await;
    assert_eq!(peer.recv().await.unwrap().kind, Kind::Hello);
    peer.send(Frame::hello(&Hello::new(max_frame))).await;
    peer
}

#[tokio::test]
async fn nothing_the_server_sends_exceeds_the_max_frame_the_client_announced() {
    let server = start_server(
        Config {
            max_frame: 1000,
            ..test_config()
        },
        courier::handler::Builtin::Echo,
    )
    .await;
    let mut peer = peer_announcing(server.addr, 16).await;
    // A PONG or STATS reply too large for it becomes an ERROR 4 that fits; it survives.
    peer.send(Frame::new(Kind::Ping, 3, vec![7u8; 100])).await;
    peer.send(Frame::new(Kind::Stats, 4, Bytes::new())).await;
    for id in [3, 4] {
        let frame = peer.recv().await.unwrap();
        assert_eq!((frame.kind, frame.id), (Kind::Error, id), "{frame:?}");
        assert!(frame.payload.len() <= 16, "{} bytes", frame.payload.len());
        let body = ErrorBody::parse(&frame.payload).unwrap();
        assert_eq!(body.code, ErrorCode::FrameTooLarge);
    }
    peer.send(Frame::request(5, "ok")).await;
    assert_eq!(peer.recv().await.unwrap().payload, "ok");
    // A closing ERROR (a frame over the server's limit) is cut to fit too.
    peer.send_raw(&[0, 0, 0x07, 0xd0, 2, 0, 0, 0, 6]).await;
    let frame = peer.recv().await.unwrap();
    assert_eq!((frame.kind, frame.id), (Kind::Error, 0));
    assert_eq!(frame.payload.len(), 16, "cut to exactly the announced size");
    assert_eq!(
        ErrorBody::parse(&frame.payload).unwrap().code,
        ErrorCode::FrameTooLarge
    );
    peer.expect_closed().await;

    // Below the minimum a HELLO may announce: refused, with an ERROR that still fits.
    let mut small = peer_announcing(server.addr, 10).await;
    let frame = small.recv().await.unwrap();
    assert_eq!((frame.kind, frame.id), (Kind::Error, 0));
    assert!(frame.payload.len() <= 10, "{} bytes", frame.payload.len());
    assert_eq!(
        ErrorBody::parse(&frame.payload).unwrap().code,
        ErrorCode::MalformedBody
    );
    small.expect_closed().await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_error_that_closes_the_connection_has_id_0_and_names_the_frame() {
    let server = start_echo().await;
    let mut peer = RawPeer::handshake(server.addr).await;
    peer.send(Frame::reply(12, "a client never sends REPLY"))
        .await;
    let (frame, body) = peer.expect_error(ErrorCode::Protocol).await;
    assert_eq!(frame.id, 0);
    assert!(
        body.message.contains("REPLY") && body.message.contains("id 12"),
        "{}",
        body.message
    );
    peer.expect_closed().await;
    server.shutdown().await;
}
