//! The bad-input suite: each case talks raw bytes to a real server over loopback and checks
//! three things: the expected outcome, that the server still serves a normal client right
//! afterwards, and that its open connections and the runtime's live tasks return to where
//! they were before the case. Every case that closes a connection must also log exactly one
//! "connection closed" line naming the reason, and count it under that reason.
//!
//! Servers run in the test's own single-thread runtime (so the log capture, a thread-local
//! subscriber, sees their lines), except the memory and file-descriptor cases, which need a
//! process of their own to measure.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::{client_hello, encode_all, RawPeer, Served};
use courier::client::{Client, ClientConfig};
use courier::config::Config;
use courier::handler::{HandlerError, Request};
use courier::server::Server;
use courier::stats::{CloseReason, Snapshot, Stats};
use courier::wire::{ErrorCode, Frame, Kind, MAGIC};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const MAX_FRAME: usize = 64 * 1024;

/// Short deadlines so that every case ends in about a second.
fn suite_config() -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        max_frame: MAX_FRAME,
        max_pending_output: 64 * 1024,
        handshake_timeout: Duration::from_millis(500),
        frame_timeout: Duration::from_millis(2500),
        idle_timeout: Duration::from_secs(60),
        drain_timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

/// Echo, except that a payload starting with "slow" is answered after 300 ms.
async fn handler(request: Request) -> Result<Bytes, HandlerError> {
    if request.payload.starts_with(b"slow") {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(request.payload)
}

/// Log lines written while the case runs (a thread-local subscriber).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// "connection closed" lines naming `reason`.
    fn closed_lines(&self, reason: CloseReason) -> Vec<String> {
        let key = format!("reason={}", reason.name());
        self.text()
            .lines()
            .filter(|line| line.contains("connection closed") && line.contains(&key))
            .map(str::to_owned)
            .collect()
    }
}

/// A server under test, with its counters, its log, and the task count it started with.
struct Case {
    addr: std::net::SocketAddr,
    stats: Arc<Stats>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    logs: Logs,
    _log_guard: tracing::subscriber::DefaultGuard,
    baseline_tasks: usize,
}

impl Case {
    async fn start(config: Config) -> Case {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let log_guard = tracing::subscriber::set_default(subscriber);
        let listener = courier::transport::bind("127.0.0.1:0", 1024)
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let server = Server::new(config, handler);
        let stats = server.stats();
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(listener, stop.clone().cancelled_owned()));
        tokio::task::yield_now().await;
        let baseline_tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        Case {
            addr,
            stats,
            stop,
            task,
            logs,
            _log_guard: log_guard,
            baseline_tasks,
        }
    }

    fn snapshot(&self) -> Snapshot {
        self.stats.snapshot()
    }

    /// Waits (at most 5 s) until no connection is open and the task count is back to
    /// the baseline, and fails the test otherwise.
    async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let open = self.snapshot().open;
            let tasks = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            if open == 0 && tasks == self.baseline_tasks {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not back to baseline after 5 s: {open} connections open, {tasks} tasks alive (baseline {})",
                self.baseline_tasks
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A well-behaved client gets its answer; then everything settles again.
    async fn serves_a_normal_client(&self) {
        let client = Client::connect_with(self.addr, ClientConfig::default())
            .await
            .expect("a normal client connects after the bad input");
        let reply = client.call("still serving").await.expect("a normal call");
        assert_eq!(reply, "still serving");
        client.close().await;
        drop(client);
        self.settle().await;
    }

    /// The three checks every case ends with. `closed` names the reason the bad
    /// connection must have been closed for (`None`: it was not closed by the server).
    async fn finish(self, before: &Snapshot, closed: Option<(CloseReason, u64)>) {
        self.settle().await;
        let after = self.snapshot();
        if let Some((reason, count)) = closed {
            assert_eq!(
                after.closed(reason) - before.closed(reason),
                count,
                "closes counted under {reason}: {after}"
            );
            if !reason.is_clean() {
                let lines = self.logs.closed_lines(reason);
                assert_eq!(
                    lines.len() as u64,
                    count,
                    "one log line per close for {reason}; log:\n{}",
                    self.logs.text()
                );
                // Which client it was, at the default level too, where the connection's
                // span is off.
                assert!(
                    lines.iter().all(|line| line.contains("peer=127.0.0.1:")),
                    "a close line without its peer: {lines:?}"
                );
            }
        }
        self.serves_a_normal_client().await;
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

/// A header: length (5 + payload), kind, id.
fn header(len_field: u32, kind: u8, id: u32) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(9);
    bytes.extend_from_slice(&len_field.to_be_bytes());
    bytes.push(kind);
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes
}

// ---- lengths ----

#[tokio::test]
async fn length_of_max_plus_one_is_refused_and_closed() {
    let case = Case::start(suite_config()).await;
    let before = case.snapshot();
    let mut peer = RawPeer::handshake(case.addr).await;
    peer.send_raw(&header(5 + MAX_FRAME as u32 + 1, 2, 7)).await;
    let (frame, body) = peer.expect_error(ErrorCode::FrameTooLarge).await;
    assert_eq!(frame.id, 0, "an ERROR that closes the connection has id 0");
    assert!(
        body.message.contains(&MAX_FRAME.to_string()),
        "{}",
        body.message
    );
    peer.expect_closed().await;
    drop(peer);
    case.finish(&before, Some((CloseReason::FrameTooLarge, 1)))
        .await;
}

#[tokio::test]
async fn length_of_all_ones_is_refused_and_closed() {
    let case = Case::start(suite_config()).await;
    let before = case.snapshot();
    let mut peer = RawPeer::handshake(case.addr).await;
    peer.send_raw(&header(u32::MAX, 2, 1)).await;
    let (_, body) = peer.expect_error(ErrorCode::FrameTooLarge).await;
    assert!(body.message.contains("4294967290"), "{}", body.message);
    peer.expect_closed().await;
    drop(peer);
    case.finish(&before, Some((CloseReason::FrameTooLarge, 1)))
        .await;
}

#[tokio::test]
async fn length_of_exactly_max_is_served() {
    let case = Case::start(suite_config()).await;
    let before = case.snapshot();
    let mut peer = RawPeer::handshake(case.addr).await;
    let payload = Bytes::from(vec![0x5a; MAX_FRAME]);
    peer.send(Frame::request(3, payload.clone())).await;
    let reply = peer.recv().await.expect("a reply");
    assert_eq!((reply.kind, reply.id), (Kind::Reply, 3));
    assert_eq!(reply.payload, payload);
    drop(peer);
    case.finish(&before, Some((CloseReason::PeerClosed, 1)))
        .await;
}

#[tokio::test]
async fn zero_length_payload_is_served() {
    let case = Case::start(suite_config()).await;
    let before = case.snapshot();
    let mut peer = RawPeer::handshake(case.addr).await;
    peer.send_raw(&header(5, 2, 4)).await;
    let reply = peer.recv().await.expect("a reply");
    assert_eq!(
        (reply.kind, reply.id, reply.payload.len()),
        (Kind::Reply, 4, 0)
    );
    drop(peer);
    case.finish(&before, Some((CloseReason::PeerClosed, 1)))
        .await;
}

#[tokio::test]
async fn length_below_the_header_is_a_protocol_error() {
    let case = Case::start(suite_config()).await;
    let before = case.snapshot();
    let mut peer = RawPeer::handshake(case.addr).await;
    peer.send_raw(&header(2, 2, 1)).await;
    peer.expect_error(ErrorCode::BadLength).await;
    peer.expect_closed().await;
    drop(peer);
    case.finish(&before, Some((CloseReason::Protocol, 1))).await;
}

// ---- truncation ----

#[tokio::test]
async fn one_to_three_header_bytes_then_eof_are_counted_as_truncated() {
    let case = Case::start(suite_config()).await;
    let before = case.snapshot();
    for n in 1..=3 {
        let mut peer = RawPeer::handshake(case.addr).await;
        peer.send_raw(&header(20, 2, 1)[..n]).await;
        peer.shutdown_write().await;
        peer.expect_closed().await;
    }
    case.finish(&before, Some((CloseReason::Truncated, 3)))
        .await;
}

#[tokio::test]
async fn half_a_payload_then_eof_is_counted_as_truncated() {
    let case = Case::start(suite_config()).await;
    let before = case.snapshot();
    let mut peer = RawPeer::handshake(case.addr).await;
    peer.send_raw(&header(5 + 100, 2, 1)).await;
    peer.send_raw(&[1; 50]).await;
    peer.shutdown_write().await;
    peer.expect_closed().await;
    drop(peer);
    case.finish(&before, Some((CloseReason::Truncated, 1)))
        .await;
}

#[tokio::test]
async fn a_reset_mid_frame_is_counted_as_an_io_error() {
    let case = Case::start(suite_config()).await;
    let before = case.snapshot();
    let mut stream = TcpStream::connect(case.addr).await.unwrap();
    let mut hello = encode_all([client_hello()]).to_vec();
    hello.extend_from_slice(&header(5 + 100, 2, 1));
    hello.extend_from_slice(&[1; 30]);
    stream.write_all(&hello).await.unwrap();
    // Wait for the server's HELLO, so the bytes above have been read.
    let mut buf = [0u8; 64];
    let _ = stream.read(&mut buf).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.set_zero_linger().unwrap();
    drop(stream);
    case.finish(&before, Some((CloseReason::IoError, 1))).await;
}

// ---- garbage ----

#[tokio::test]
async fn a_nul_byte_then_endless_junk_is_refused_and_closed() {
    let case = Case::start(suite_config()).await;
    let before = case.snapshot();
    let mut stream = TcpStream::connect(case.addr).await.unwrap();
    // A NUL byte, then junk; kept up (bounded) until the server closes.
    let mut junk = vec![0u8];
    junk.extend((0..4095).map(|_| fastrand::u8(..)));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "the server never closed the junk sender"
        );
        if stream.write_all(&junk).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        junk.iter_mut().for_each(|byte| *byte = fastrand::u8(..));
    }
    drop(stream);
    // The server spoke first (HELLO) and then named the problem in an ERROR.
    assert!(received.len() > 9, "no ERROR arrived: {received:?}");
    case.settle().await;
    let after = case.snapshot();
    let closed = after.closed(CloseReason::FrameTooLarge) + after.closed(CloseReason::Protocol)
        - before.closed(CloseReason::FrameTooLarge)
        - before.closed(CloseReason::Protocol);
    assert_eq!(closed, 1, "{after}");
    case.finish(&before, None).await;
}

#[tokio::test]
async fn a_wrong_magic_is_refused_and_closed() {
    let case = Case::start(suite_config()).await;
    let before = case.snapshot();
    let mut peer = RawPeer::connect(case.addr).await;
    assert_eq!(peer.recv().await.map(|frame| frame.kind), Some(Kind::Hello));
    let mut body = BytesMut::new();
    body.put_slice(b"RUOC");
    body.put_u16(1);
    body.put_u32(1024);
    peer.send(Frame::new(Kind::Hello, 0, body.freeze())).await;
    peer.expect_error(ErrorCode::BadMagic).await;
    peer.expect_closed().await;
    drop(peer);
    case.finish(&before, Some((CloseReason::Protocol, 1))).await;
}

#[tokio::test]
async fn a_wrong_version_is_refused_and_closed() {
    let case = Case::start(suite_config()).await;
    let before = case.snapshot();
    let mut peer = RawPeer::connect(case.addr).await;
    assert_eq!(peer.recv().await.map(|frame| frame.kind), Some(Kind::Hello));
    let mut body = BytesMut::new();
    body.put_slice(&MAGIC);
    body.put_u16(99);
    body.put_u32(1024);
    peer.send(Frame::new(Kind::Hello, 0, body.freeze())).await;
    let (_, body) = peer.expect_error(ErrorCode::UnsupportedVersion).await;
    assert!(body.message.contains("99"), "{}", body.message);
    peer.expect_closed().await;
    drop(peer);
    case.finish(&before, Some((CloseReason::Protocol, 1))).await;
}

#[tokio::test]
async fn an_unknown_kind_is_refused_and_closed() {
    let case = Case::start(suite_config()).await;
    let before = case.snapshot();
    let mut peer = RawPeer::handshake(case.addr).await;
    peer.send_raw(&header(5, 0x42, 9)).await;
    let (frame, body) = peer.expect_error(ErrorCode::UnknownKind).await;
    assert_eq!(frame.id, 0, "an ERROR that closes the connection has id 0");
    assert!(body.message.contains("0x42"), "{}", body.message);
    assert!(body.message.contains("id 9"), "{}", body.message);
    peer.expect_closed().await;
    drop(peer);
    case.finish(&before, Some((CloseReason::Protocol, 1))).await;
}

#[tokio::test]
async fn a_request_before_hello_is_refused_and_closed() {
    let case = Case::start(suite_config()).await;
    let before = case.snapshot();
    let mut peer = RawPeer::connect(case.addr).await;
    assert_eq!(peer.recv().await.map(|frame| frame.kind), Some(Kind::Hello));
    peer.send(Frame::request(1, "too early")).await;
    let (_, body) = peer.expect_error(ErrorCode::Protocol).await;
    assert!(body.message.contains("expected HELLO"), "{}", body.message);
    peer.expect_closed().await;
    drop(peer);
    case.finish(&before, Some((CloseReason::Protocol, 1))).await;
}

#[tokio::test]
async fn a_duplicate_id_in_flight_gets_an_error_and_the_first_still_its_reply() {
    let case = Case::start(suite_config()).await;
    let before = case.snapshot();
    let mut peer = RawPeer::handshake(case.addr).await;
    peer.send(Frame::request(5, "slow first")).await;
    peer.send(Frame::request(5, "second")).await;
    let (frame, _) = peer.expect_error(ErrorCode::DuplicateId).await;
    assert_eq!(frame.id, 5);
    let reply = peer.recv().await.expect("the first request's reply");
    assert_eq!((reply.kind, reply.id), (Kind::Reply, 5));
    assert_eq!(reply.payload, "slow first");
    // The connection survives it.
    peer.send(Frame::request(6, "after")).await;
    assert_eq!(peer.recv().await.unwrap().payload, "after");
    drop(peer);
    // Counted as a protocol error (one that does not close) and an ERROR answer.
    case.settle().await;
    let after = case.snapshot();
    assert_eq!(after.protocol_errors - before.protocol_errors, 1, "{after}");
    assert_eq!(after.errors - before.errors, 1, "{after}");
    case.finish(&before, Some((CloseReason::PeerClosed, 1)))
        .await;
}

// ---- slow peers ----

#[tokio::test]
async fn a_silent_peer_is_closed_at_the_handshake_deadline() {
    let case = Case::start(suite_config()).await;
    let before = case.snapshot();
    let mut peer = RawPeer::connect(case.addr).await;
    assert_eq!(peer.recv().await.map(|frame| frame.kind), Some(Kind::Hello));
    let started = Instant::now();
    let (_, body) = peer.expect_error(ErrorCode::HandshakeTimeout).await;
    assert!(
        body.message.contains("handshake_timeout"),
        "{}",
        body.message
    );
    peer.expect_closed().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(peer);
    case.finish(&before, Some((CloseReason::HandshakeTimeout, 1)))
        .await;
}

#[tokio::test]
async fn one_byte_per_second_is_cut_off_by_the_frame_deadline_not_idle() {
    let case = Case::start(suite_config()).await;
    let before = case.snapshot();
    let mut peer = RawPeer::handshake(case.addr).await;
    let frame = encode_all([Frame::request(1, "trickled one byte at a time")]);
    let trickle = async {
        for byte in frame.iter() {
            peer.send_raw(&[*byte]).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    // The frame takes 36 s at this pace; the frame deadline (2.5 s) ends it.
    let _ = tokio::time::timeout(Duration::from_secs(4), trickle).await;
    let (_, body) = peer.expect_error(ErrorCode::FrameTimeout).await;
    assert!(body.message.contains("frame_timeout"), "{}", body.message);
    peer.expect_closed().await;
    drop(peer);
    case.finish(&before, Some((CloseReason::FrameTimeout, 1)))
        .await;
}

#[tokio::test]
async fn a_half_close_after_a_request_still_gets_the_reply() {
    let case = Case::start(suite_config()).await;
    let before = case.snapshot();
    let mut peer = RawPeer::handshake(case.addr).await;
    peer.send(Frame::request(1, "slow, then half-close")).await;
    peer.shutdown_write().await;
    let reply = peer.recv().await.expect("the reply after the half-close");
    assert_eq!((reply.kind, reply.id), (Kind::Reply, 1));
    peer.expect_closed().await;
    drop(peer);
    case.finish(&before, Some((CloseReason::PeerClosed, 1)))
        .await;
}

#[tokio::test]
async fn a_pipelining_peer_that_never_reads_is_cut_off_while_others_are_served() {
    let case = Case::start(suite_config()).await;
    let before = case.snapshot();
    // A small receive buffer on the non-reader, so its kernel takes little of the output.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut hog = socket.connect(case.addr).await.unwrap();
    let mut requests = encode_all([client_hello()]);
    for id in 1..=200u32 {
        requests.extend_from_slice(&encode_all([Frame::request(id, vec![7u8; 1000])]));
    }
    let flood = async move {
        // At most 200 MB; the server closes it long before (64 KiB of unread output).
        for _ in 0..1000 {
            if hog.write_all(&requests).await.is_err() {
                return true;
            }
        }
        false
    };
    let other = async {
        let client = Client::connect(case.addr).await.unwrap();
        let mut answered = 0;
        for n in 0..200 {
            let payload = format!("meanwhile {n}");
            assert_eq!(client.call(payload.clone()).await.unwrap(), payload);
            answered += 1;
        }
        client.close().await;
        answered
    };
    let (cut_off, answered) = tokio::join!(flood, other);
    assert!(cut_off, "the non-reader was never disconnected");
    assert_eq!(answered, 200);
    let slow =
        case.snapshot().closed(CloseReason::SlowReader) - before.closed(CloseReason::SlowReader);
    assert_eq!(slow, 1);
    let line = &case.logs.closed_lines(CloseReason::SlowReader)[0];
    assert!(line.contains("max_pending_output (65536)"), "{line}");
    case.finish(&before, Some((CloseReason::SlowReader, 1)))
        .await;
}

#[tokio::test]
async fn with_limit_l_and_3l_attempts_l_are_served_and_the_rest_told_busy() {
    const L: usize = 4;
    let config = Config {
        max_connections: L,
        ..suite_config()
    };
    let case = Case::start(config).await;
    let before = case.snapshot();
    let mut attempts = Vec::new();
    for _ in 0..3 * L {
        attempts.push(Client::connect(case.addr).await);
    }
    let (served, refused): (Vec<_>, Vec<_>) = attempts.into_iter().partition(Result::is_ok);
    assert_eq!(served.len(), L);
    for err in refused {
        let err = err.unwrap_err();
        assert!(err.to_string().contains("server busy"), "{err}");
        assert!(err.to_string().contains(&L.to_string()), "{err}");
    }
    let mut served: Vec<Client> = served.into_iter().map(Result::unwrap).collect();
    for client in &served {
        assert_eq!(client.call("in").await.unwrap(), "in");
    }
    // The rejected ones were closed within a second: the server counted them and holds only L.
    let after = case.snapshot();
    assert_eq!(after.rejected_busy - before.rejected_busy, 2 * L as u64);
    assert_eq!(after.open, L as u64);
    // Freeing one lets a new one in.
    let freed = served.pop().unwrap();
    freed.close().await;
    drop(freed);
    let deadline = Instant::now() + Duration::from_secs(5);
    let newcomer = loop {
        if let Ok(client) = Client::connect(case.addr).await {
            break client;
        }
        assert!(
            Instant::now() < deadline,
            "no room after freeing a connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(newcomer.call("new").await.unwrap(), "new");
    newcomer.close().await;
    drop(newcomer);
    for client in served.drain(..) {
        client.close().await;
    }
    case.finish(&before, Some((CloseReason::PeerClosed, L as u64 + 1)))
        .await;
}

// ---- cases that need a server process of their own ----

fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// CPU time (user + system) of a process, from /proc/PID/stat, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

async fn stats_of(addr: &str) -> Snapshot {
    let client = Client::connect(addr).await.expect("connect for STATS");
    let snapshot = client.stats().await.expect("STATS");
    client.close().await;
    snapshot
}

/// The bound docs/PROTOCOL.md states for a connection stalled mid-frame.
const STALLED_CONNECTION_BOUND: u64 = 8 * 1024;

#[cfg(target_os = "linux")]
#[tokio::test]
async fn many_headers_declaring_the_maximum_then_stalling_stay_within_the_memory_bound() {
    const N: usize = 1000;
    let served = Served::start(
        &[
            "--max-frame",
            "1048576",
            "--frame-timeout",
            "3s",
            "--handshake-timeout",
            "5s",
        ],
        &[],
    );
    let pid = served.child.id();
    let addr = served.addr.clone();
    let rss_before = proc_status(pid, "VmRSS:");
    let mut stalled = Vec::with_capacity(N);
    let mut bytes = encode_all([client_hello()]).to_vec();
    bytes.extend_from_slice(&header(5 + 1_048_576, 2, 1));
    bytes.extend_from_slice(&[3; 100]);
    for _ in 0..N {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        stalled.push(stream);
    }
    // Every connection has been accepted and has read its bytes once STATS shows them open.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats_of(&addr).await.open < N as u64 {
        assert!(
            Instant::now() < deadline,
            "the stalled connections were not all accepted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_stalled = proc_status(pid, "VmRSS:");
    let per_connection = (rss_stalled.saturating_sub(rss_before)) * 1024 / N as u64;
    println!("{N} stalled connections: {per_connection} bytes of server memory each");
    assert!(
        per_connection <= STALLED_CONNECTION_BOUND,
        "{per_connection} bytes per stalled connection, the bound is {STALLED_CONNECTION_BOUND}"
    );
    // The frame deadline closes every one of them.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let snapshot = stats_of(&addr).await;
        if snapshot.closed(CloseReason::FrameTimeout) == N as u64 {
            assert_eq!(snapshot.open, 1, "only the STATS connection is left");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all closed by the frame deadline: {snapshot}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(stalled);
    let client = Client::connect(addr.as_str()).await.unwrap();
    assert_eq!(client.call("after").await.unwrap(), "after");
    client.close().await;
    let (status, log) = served.terminate();
    assert!(status.success());
    let lines = log
        .lines()
        .filter(|line| line.contains("connection closed") && line.contains("reason=frame_timeout"))
        .count();
    assert_eq!(lines, N, "one log line per close");
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn running_out_of_file_descriptors_neither_spins_nor_exits_and_service_resumes() {
    // The server may open 64 files: with what the runtime holds, about 50 connections.
    let command = format!(
        "ulimit -n 64 && exec {} serve --listen 127.0.0.1:0",
        common::BIN
    );
    let mut served = Served::start_shell(&command);
    let pid = served.child.id();
    let addr = served.addr.clone();

    let mut held = Vec::new();
    for _ in 0..120 {
        // Connects succeed at the kernel even when the server cannot accept them.
        if let Ok(stream) = TcpStream::connect(&addr).await {
            held.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ticks_before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks = cpu_ticks(pid) - ticks_before;
    // 2 s of spinning would be ~200 ticks; the backoff keeps it near zero.
    assert!(
        ticks < 50,
        "the server used {ticks} ticks of CPU in 2 s while out of fds"
    );
    assert!(
        served.child_alive(),
        "the server exited when out of file descriptors"
    );

    drop(held);
    // Service resumes once descriptors are free (after at most the 1 s backoff).
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = loop {
        match Client::connect(addr.as_str()).await {
            Ok(client) => break client,
            Err(err) => {
                assert!(Instant::now() < deadline, "service did not resume: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(client.call("back").await.unwrap(), "back");
    let snapshot = client.stats().await.unwrap();
    client.close().await;
    println!("accept errors while out of fds: {}", snapshot.accept_errors);
    assert!(
        snapshot.accept_errors > 0,
        "the limit was never hit: {snapshot}"
    );
    // A backoff doubling from 10 ms to 1 s allows a few dozen attempts in these seconds.
    assert!(snapshot.accept_errors < 100, "{snapshot}");
    let (status, log) = served.terminate();
    assert!(status.success());
    assert!(log.contains("accept failed; pausing"), "{log}");
}
