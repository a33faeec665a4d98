//! UDP (`udp:HOST:PORT`): the library client against the server on loopback, and raw
//! datagrams written by hand where the client would not send them (duplicates, reused
//! ids, oversize requests, unknown sessions), and the command line's `udp:` addresses.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use courier::client::{Client, ClientConfig, ClientError, Outcome, UdpOptions};
use courier::config::{AuthToken, Config};
use courier::handler::{Builtin, Handler, HandlerError, Request};
use courier::server::Server;
use courier::stats::Stats;
use courier::wire::{
    Datagram, ErrorBody, ErrorCode, Frame, Hello, Kind, HELLO_AUTH_TOKEN, HELLO_COOKIE,
};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// A UDP server with `config` and `handler` on a free loopback port.
async fn start<H: Handler>(config: Config, handler: H) -> (String, Arc<Stats>, CancellationToken) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let server = Server::new(config, handler);
    let stats = server.stats();
    let stop = CancellationToken::new();
    tokio::spawn(server.run_udp(socket, stop.clone().cancelled_owned()));
    (format!("udp:{addr}"), stats, stop)
}

fn quick() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(5),
        call_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    }
}

/// A handler that counts its runs and takes `delay` over each; it echoes.
#[derive(Clone)]
struct Counting {
    runs: Arc<AtomicUsize>,
    delay: Duration,
}

impl Handler for Counting {
    async fn call(&self, request: Request) -> Result<Bytes, HandlerError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        Ok(request.payload)
    }
}

/// A session opened by hand: the two HELLOs, as docs/PROTOCOL.md describes them.
struct RawSession {
    socket: UdpSocket,
    session: u64,
}

impl RawSession {
    async fn open(addr: &str, session: u64, token: Option<&str>) -> RawSession {
        let server: SocketAddr = addr.trim_start_matches("udp:").parse().unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(server).await.unwrap();
        let raw = RawSession { socket, session };
        raw.send(Frame::hello(&Hello::new(65_000)), 0).await;
        let retry = raw.recv().await;
        assert_eq!(retry.kind, Kind::Hello);
        let cookie = Hello::parse(&retry.payload)
            .unwrap()
            .field(HELLO_COOKIE)
            .cloned();
        let mut hello = Hello::new(65_000);
        hello.fields.push((HELLO_COOKIE, cookie.expect("a cookie")));
        if let Some(token) = token {
            hello
                .fields
                .push((HELLO_AUTH_TOKEN, Bytes::copy_from_slice(token.as_bytes())));
        }
        raw.send(Frame::hello(&hello), 0).await;
        raw
    }

    async fn send(&self, frame: Frame, acked: u32) {
        let bytes = Datagram::new(self.session, acked, frame).encode();
        self.socket.send(&bytes).await.unwrap();
    }

    async fn recv(&self) -> Frame {
        let mut buf = vec![0; 70_000];
        let n = tokio::time::timeout(Duration::from_secs(5), self.socket.recv(&mut buf))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        let datagram = Datagram::decode(Bytes::copy_from_slice(&buf[..n])).expect("decodes");
        assert_eq!(datagram.session, self.session);
        datagram.frame
    }

    /// Nothing arrives for a while.
    async fn silent(&self) -> bool {
        let mut buf = vec![0; 70_000];
        tokio::time::timeout(Duration::from_millis(300), self.socket.recv(&mut buf))
            .await
            .is_err()
    }
}

#[tokio::test]
async fn a_call_over_udp_gets_its_reply_and_the_server_counts_it() {
    let (addr, stats, stop) = start(Config::default(), Builtin::Echo).await;
    let client = Client::connect_with(addr.as_str(), quick()).await.unwrap();
    assert_eq!(client.call("hello").await.unwrap(), "hello");
    assert_eq!(client.ping("p").await.unwrap(), "p");
    let snapshot = client.stats().await.unwrap();
    assert_eq!(snapshot.requests, 1);
    assert_eq!(client.server_max_frame(), 1200);
    stop.cancel();
    assert_eq!(
        stats.snapshot().replies,
        2,
        "the REPLY and the STATS answer"
    );
}

#[tokio::test]
async fn many_calls_in_flight_on_one_session_each_get_their_own_reply() {
    let (addr, _, stop) = start(Config::default(), Builtin::Echo).await;
    let client = Client::connect_with(addr.as_str(), quick()).await.unwrap();
    let calls = (0..200).map(|n| {
        let client = client.clone();
        async move { (n, client.call(format!("call {n}")).await) }
    });
    for (n, result) in futures::future::join_all(calls).await {
        assert_eq!(result.unwrap(), format!("call {n}"));
    }
    stop.cancel();
}

#[tokio::test]
async fn the_auth_token_is_required_as_on_tcp() {
    let config = Config {
        auth_token: Some(AuthToken::new("udp-token").unwrap()),
        ..Config::default()
    };
    let (addr, _, stop) = start(config, Builtin::Echo).await;
    match Client::connect_with(addr.as_str(), quick()).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::AuthFailed),
        other => panic!("expected authentication failed, got {other:?}"),
    }
    let with_token = ClientConfig {
        auth_token: Some(Bytes::from_static(b"udp-token")),
        ..quick()
    };
    let client = Client::connect_with(addr.as_str(), with_token)
        .await
        .unwrap();
    assert_eq!(client.call("in").await.unwrap(), "in");
    // A session opened without the token is none: its requests are refused unrun.
    let raw = RawSession::open(&addr, 77, None).await;
    let refused = raw.recv().await;
    assert_eq!(
        ErrorBody::parse(&refused.payload).unwrap().code,
        ErrorCode::AuthFailed
    );
    raw.send(Frame::request(1, "sneak"), 0).await;
    let answer = raw.recv().await;
    assert_eq!(
        ErrorBody::parse(&answer.payload).unwrap().code,
        ErrorCode::HelloNeeded
    );
    stop.cancel();
}

#[tokio::test]
async fn a_message_over_the_limit_is_refused_on_both_sides_naming_it() {
    let (addr, stats, stop) = start(Config::default(), Builtin::Echo).await;
    let client = Client::connect_with(addr.as_str(), quick()).await.unwrap();
    match client.call(vec![0u8; 1201]).await {
        Err(
            err @ ClientError::FrameTooLarge {
                len: 1201,
                max: 1200,
            },
        ) => {
            assert_eq!(err.outcome(), Outcome::NotReceived);
            assert!(err.to_string().contains("1200"), "{err}");
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert_eq!(client.call(vec![7u8; 1200]).await.unwrap().len(), 1200);
    let raw = RawSession::open(&addr, 5, None).await;
    assert_eq!(raw.recv().await.kind, Kind::Hello);
    raw.send(Frame::request(1, vec![0u8; 5000]), 0).await;
    let error = ErrorBody::parse(&raw.recv().await.payload).unwrap();
    assert_eq!(error.code, ErrorCode::FrameTooLarge);
    assert!(
        error.message.contains("5000") && error.message.contains("1200"),
        "{}",
        error.message
    );
    assert_eq!(stats.snapshot().udp_too_large, 1);
    stop.cancel();
}

#[tokio::test]
async fn a_duplicate_while_running_never_starts_a_second_run_and_later_gets_the_cached_reply() {
    let runs = Arc::new(AtomicUsize::new(0));
    let handler = Counting {
        runs: runs.clone(),
        delay: Duration::from_millis(400),
    };
    let (addr, stats, stop) = start(Config::default(), handler).await;
    let raw = RawSession::open(&addr, 9, None).await;
    assert_eq!(raw.recv().await.kind, Kind::Hello);
    for _ in 0..3 {
        raw.send(Frame::request(1, "once"), 0).await;
    }
    let reply = raw.recv().await;
    assert_eq!(
        (reply.kind, reply.id, &reply.payload[..]),
        (Kind::Reply, 1, &b"once"[..])
    );
    assert!(
        raw.silent().await,
        "one reply for the three copies sent while it ran"
    );
    raw.send(Frame::request(1, "once"), 0).await;
    let again = raw.recv().await;
    assert_eq!(
        (again.kind, &again.payload[..]),
        (Kind::Reply, &b"once"[..])
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let snapshot = stats.snapshot();
    assert_eq!((snapshot.udp_dup_running, snapshot.udp_cache_hits), (2, 1));
    assert_eq!(snapshot.requests, 1);
    stop.cancel();
}

#[tokio::test]
async fn a_reused_id_with_another_payload_is_refused_and_counted() {
    let runs = Arc::new(AtomicUsize::new(0));
    let handler = Counting {
        runs: runs.clone(),
        delay: Duration::ZERO,
    };
    let (addr, stats, stop) = start(Config::default(), handler).await;
    let raw = RawSession::open(&addr, 10, None).await;
    assert_eq!(raw.recv().await.kind, Kind::Hello);
    raw.send(Frame::request(4, "first"), 0).await;
    assert_eq!(raw.recv().await.payload, "first");
    raw.send(Frame::request(4, "second"), 0).await;
    let refused = raw.recv().await;
    let body = ErrorBody::parse(&refused.payload).unwrap();
    assert_eq!((refused.id, body.code), (4, ErrorCode::DuplicateId));
    assert!(
        body.message.contains("different payload"),
        "{}",
        body.message
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(stats.snapshot().udp_payload_mismatch, 1);
    stop.cancel();
}

#[tokio::test]
async fn ids_below_the_clients_acknowledged_floor_are_never_run() {
    let runs = Arc::new(AtomicUsize::new(0));
    let handler = Counting {
        runs: runs.clone(),
        delay: Duration::ZERO,
    };
    let (addr, _, stop) = start(Config::default(), handler).await;
    let raw = RawSession::open(&addr, 11, None).await;
    assert_eq!(raw.recv().await.kind, Kind::Hello);
    raw.send(Frame::request(5, "five"), 5).await;
    assert_eq!(raw.recv().await.payload, "five");
    raw.send(Frame::request(3, "late"), 6).await;
    assert!(
        raw.silent().await,
        "a late request below the floor is dropped"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    stop.cancel();
}

#[tokio::test]
async fn an_unvalidated_address_gets_at_most_three_times_what_it_sent() {
    let (addr, stats, stop) = start(Config::default(), Builtin::Echo).await;
    let server: SocketAddr = addr.trim_start_matches("udp:").parse().unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0; 70_000];
    // A first HELLO: answered with a cookie, within 3 times its size.
    let hello = Datagram::new(1, 0, Frame::hello(&Hello::new(1200))).encode();
    socket.send_to(&hello, server).await.unwrap();
    let (n, _) = socket.recv_from(&mut buf).await.unwrap();
    assert!(
        n <= 3 * hello.len(),
        "{n} bytes for a {}-byte HELLO",
        hello.len()
    );
    let retry = Datagram::decode(Bytes::copy_from_slice(&buf[..n])).unwrap();
    assert!(Hello::parse(&retry.frame.payload)
        .unwrap()
        .field(HELLO_COOKIE)
        .is_some());
    // A request of no session: a short ERROR 17.
    let stray = Datagram::new(2, 0, Frame::request(1, "x")).encode();
    socket.send_to(&stray, server).await.unwrap();
    let (n, _) = socket.recv_from(&mut buf).await.unwrap();
    assert!(n <= 3 * stray.len());
    let answer = Datagram::decode(Bytes::copy_from_slice(&buf[..n])).unwrap();
    let body = ErrorBody::parse(&answer.frame.payload).unwrap();
    assert_eq!(body.code, ErrorCode::HelloNeeded);
    // A tiny HELLO-less datagram whose ERROR would be more than 3 times its size: dropped.
    let tiny = Datagram::new(3, 0, Frame::new(Kind::Ping, 1, Bytes::new())).encode();
    socket.send_to(&tiny, server).await.unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await;
    let sent = match quiet {
        Ok(Ok((n, _))) => n,
        _ => 0,
    };
    assert!(sent <= 3 * tiny.len(), "{sent} bytes for {}", tiny.len());
    // Garbage is not answered at all.
    socket.send_to(b"garbage", server).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf))
            .await
            .is_err()
    );
    assert!(stats.snapshot().protocol_errors >= 1);
    stop.cancel();
}

#[tokio::test]
async fn a_call_that_never_gets_an_answer_ends_in_a_timeout_that_counts_its_attempts() {
    let runs = Arc::new(AtomicUsize::new(0));
    let handler = Counting {
        runs: runs.clone(),
        delay: Duration::from_secs(3600),
    };
    let (addr, stats, stop) = start(Config::default(), handler).await;
    let config = ClientConfig {
        udp: UdpOptions {
            initial_rto: Duration::from_millis(20),
            min_rto: Duration::from_millis(20),
            max_rto: Duration::from_millis(100),
            max_attempts: 4,
        },
        ..quick()
    };
    let client = Client::connect_with(addr.as_str(), config).await.unwrap();
    match client.call("stuck").await {
        Err(err @ ClientError::Timeout { attempts: 4, .. }) => {
            assert_eq!(err.outcome(), Outcome::Unknown);
            assert!(err.to_string().contains("4 attempts"), "{err}");
        }
        other => panic!("expected a timeout after 4 attempts, got {other:?}"),
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the retransmissions did not run it again"
    );
    assert_eq!(stats.snapshot().udp_dup_running, 3);
    stop.cancel();
}

#[tokio::test]
async fn a_call_to_a_server_that_restarted_ends_as_outcome_unknown_and_the_client_goes_on() {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let first = CancellationToken::new();
    let slow = Counting {
        runs: Arc::new(AtomicUsize::new(0)),
        delay: Duration::from_secs(3600),
    };
    let config = Config {
        drain_timeout: Duration::from_millis(50),
        ..Config::default()
    };
    let old = Server::new(config, slow).run_udp(socket, first.clone().cancelled_owned());
    let server = tokio::spawn(old);
    let name = format!("udp:{addr}");
    let client = Client::connect_with(name.as_str(), quick()).await.unwrap();
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.call("in the old server").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The old server goes (drain timeout: its stuck request is dropped), a new one comes.
    first.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    let socket = UdpSocket::bind(addr).await.unwrap();
    let second = CancellationToken::new();
    tokio::spawn(
        Server::new(Config::default(), Builtin::Echo)
            .run_udp(socket, second.clone().cancelled_owned()),
    );
    match pending.await.unwrap() {
        Err(err @ ClientError::OutcomeUnknown { .. }) => {
            assert!(err.to_string().contains("restarted"), "{err}")
        }
        other => panic!("expected outcome unknown, got {other:?}"),
    }
    assert_eq!(client.call("new").await.unwrap(), "new");
    second.cancel();
}

#[tokio::test]
async fn requests_arriving_while_the_server_drains_are_refused_as_not_received() {
    let runs = Arc::new(AtomicUsize::new(0));
    let handler = Counting {
        runs: runs.clone(),
        delay: Duration::from_millis(500),
    };
    let (addr, _, stop) = start(Config::default(), handler).await;
    let raw = RawSession::open(&addr, 12, None).await;
    assert_eq!(raw.recv().await.kind, Kind::Hello);
    raw.send(Frame::request(1, "running"), 0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    raw.send(Frame::request(2, "late"), 0).await;
    let refused = raw.recv().await;
    assert_eq!((refused.kind, refused.id), (Kind::GoAway, 2));
    let reply = raw.recv().await;
    assert_eq!(
        (reply.kind, reply.id),
        (Kind::Reply, 1),
        "the running one is still answered"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_handler_sees_the_datagram_s_source_as_the_peer() {
    let handler = |request: Request| async move { Ok(Bytes::from(request.peer.to_string())) };
    let (addr, _stats, stop) = start(Config::default(), handler).await;
    let session = RawSession::open(&addr, 22, None).await;
    assert_eq!(session.recv().await.kind, Kind::Hello);
    session.send(Frame::request(1, "who"), 0).await;
    let source = session.socket.local_addr().unwrap().to_string();
    assert_eq!(session.recv().await.payload, source.as_bytes());
    stop.cancel();
}

#[tokio::test]
async fn a_client_whose_port_changes_keeps_its_session_and_its_cached_replies() {
    let runs = Arc::new(AtomicUsize::new(0));
    let handler = Counting {
        runs: runs.clone(),
        delay: Duration::ZERO,
    };
    let (addr, stats, stop) = start(Config::default(), handler).await;
    let before = RawSession::open(&addr, 21, None).await;
    assert_eq!(before.recv().await.kind, Kind::Hello);
    before.send(Frame::request(1, "moved"), 0).await;
    assert_eq!(before.recv().await.payload, "moved");
    // The same session from another port (a NAT rebinding): first told to validate it.
    let server: SocketAddr = addr.trim_start_matches("udp:").parse().unwrap();
    let after = RawSession {
        socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        session: 21,
    };
    after.socket.connect(server).await.unwrap();
    after.send(Frame::request(1, "moved"), 0).await;
    let told = ErrorBody::parse(&after.recv().await.payload).unwrap();
    assert_eq!(told.code, ErrorCode::HelloNeeded);
    // After the HELLO exchange from there, the retransmission gets the cached reply.
    let after = RawSession::open(&addr, 21, None).await;
    assert_eq!(after.recv().await.kind, Kind::Hello);
    after.send(Frame::request(1, "moved"), 0).await;
    assert_eq!(after.recv().await.payload, "moved");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(stats.snapshot().udp_cache_hits, 1);
    stop.cancel();
}

#[tokio::test]
async fn even_the_smallest_stray_datagram_is_told_to_hello_within_three_times_its_size() {
    let (addr, stats, stop) = start(Config::default(), Builtin::Echo).await;
    let raw = RawSession {
        socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        session: 30,
    };
    raw.socket
        .connect(addr.trim_start_matches("udp:"))
        .await
        .unwrap();
    raw.send(Frame::request(1, Bytes::new()), 0).await;
    let told = raw.recv().await;
    assert_eq!(
        ErrorBody::parse(&told.payload).unwrap().code,
        ErrorCode::HelloNeeded
    );
    assert_eq!(stats.snapshot().udp_unvalidated_drops, 0);
    stop.cancel();
}

/// A server that does the HELLO exchange and then never answers, noting (in the paused
/// clock's time) when each copy of a request arrives.
async fn silent_server(arrivals: Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>) -> String {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0; 70_000];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let Ok(datagram) = Datagram::decode(Bytes::copy_from_slice(&buf[..n])) else {
                continue;
            };
            let answer = match datagram.frame.kind {
                Kind::Hello => {
                    let hello = Hello::parse(&datagram.frame.payload).unwrap();
                    let mut answer = Hello::new(1200);
                    if hello.field(HELLO_COOKIE).is_none() {
                        answer
                            .fields
                            .push((HELLO_COOKIE, Bytes::from_static(b"cookie")));
                    }
                    Frame::hello(&answer)
                }
                _ => {
                    arrivals.lock().unwrap().push(tokio::time::Instant::now());
                    continue;
                }
            };
            let bytes = Datagram::new(datagram.session, 0, answer).encode();
            socket.send_to(&bytes, peer).await.unwrap();
        }
    });
    format!("udp:{addr}")
}

#[tokio::test(start_paused = true)]
async fn retransmissions_back_off_from_the_timeout_doubling_with_jitter_up_to_the_limit() {
    let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let addr = silent_server(arrivals.clone()).await;
    let options = UdpOptions {
        initial_rto: Duration::from_millis(100),
        min_rto: Duration::from_millis(50),
        max_rto: Duration::from_millis(500),
        max_attempts: 6,
    };
    let config = ClientConfig {
        udp: options.clone(),
        call_timeout: Duration::from_secs(60),
        ..quick()
    };
    let client = Client::connect_with(addr.as_str(), config).await.unwrap();
    let (after, attempts) = match client.call("anyone?").await {
        Err(ClientError::Timeout { after, attempts }) => (after, attempts),
        other => panic!("expected a timeout, got {other:?}"),
    };
    assert_eq!(attempts, 6);
    let arrivals = arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 6, "one send per attempt");
    // Attempt n waits min(100 ms x 2^(n-1), 500 ms) times a factor in [1, 1.25).
    let mut total = Duration::ZERO;
    for (n, pair) in arrivals.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let base = (Duration::from_millis(100) * (1 << n)).min(options.max_rto);
        assert!(
            gap >= base && gap < base.mul_f64(1.25) + Duration::from_millis(1),
            "gap {n}: {gap:?} for {base:?}"
        );
        total += gap;
    }
    // And the last attempt waits its own timeout (500 ms and jitter) before giving up.
    assert!(
        after >= total + options.max_rto,
        "{after:?} after {total:?} of gaps"
    );
    assert!(after < total + options.max_rto.mul_f64(1.25) + Duration::from_millis(1));
}

#[tokio::test(start_paused = true)]
async fn the_call_deadline_cuts_the_retransmissions_short() {
    let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let addr = silent_server(arrivals.clone()).await;
    let config = ClientConfig {
        call_timeout: Duration::from_secs(1),
        ..quick()
    };
    let client = Client::connect_with(addr.as_str(), config).await.unwrap();
    match client.call("anyone?").await {
        Err(ClientError::Timeout { after, attempts }) => {
            assert_eq!(after, Duration::from_secs(1), "given up at the deadline");
            // 200, 400 ms (with jitter) fit in 1 s; the next wait is cut by the deadline.
            assert!((3..=4).contains(&attempts), "{attempts} attempts");
            assert_eq!(arrivals.lock().unwrap().len() as u32, attempts);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn past_max_in_flight_a_request_is_refused_unrun_and_runs_when_sent_again() {
    let runs = Arc::new(AtomicUsize::new(0));
    let handler = Counting {
        runs: runs.clone(),
        delay: Duration::from_millis(300),
    };
    let config = Config {
        max_in_flight: 2,
        ..Config::default()
    };
    let (addr, _, stop) = start(config, handler).await;
    let raw = RawSession::open(&addr, 40, None).await;
    assert_eq!(raw.recv().await.kind, Kind::Hello);
    for id in 1..=3 {
        raw.send(Frame::request(id, format!("r{id}")), 0).await;
    }
    let refused = raw.recv().await;
    let body = ErrorBody::parse(&refused.payload).unwrap();
    assert_eq!((refused.id, body.code), (3, ErrorCode::Busy));
    assert!(body.message.contains("max_in_flight"), "{}", body.message);
    let mut answered = vec![raw.recv().await.id, raw.recv().await.id];
    answered.sort();
    assert_eq!(answered, [1, 2]);
    raw.send(Frame::request(3, "r3"), 0).await;
    assert_eq!(raw.recv().await.payload, "r3");
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    stop.cancel();
}

#[tokio::test]
async fn an_idle_session_expires_and_is_told_to_hello_again() {
    let config = Config {
        idle_timeout: Duration::from_millis(200),
        ..Config::default()
    };
    let (addr, _, stop) = start(config, Builtin::Echo).await;
    let raw = RawSession::open(&addr, 41, None).await;
    assert_eq!(raw.recv().await.kind, Kind::Hello);
    raw.send(Frame::request(1, "alive"), 0).await;
    assert_eq!(raw.recv().await.payload, "alive");
    // Expiry is looked for once a second.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    raw.send(Frame::request(2, "still?"), 0).await;
    let told = ErrorBody::parse(&raw.recv().await.payload).unwrap();
    assert_eq!(told.code, ErrorCode::HelloNeeded);
    stop.cancel();
}

#[tokio::test]
async fn the_clients_acknowledgements_free_the_cache_so_calls_outnumber_its_entries() {
    let config = Config {
        udp_cache_entries: 64,
        ..Config::default()
    };
    let (addr, stats, stop) = start(config, Builtin::Echo).await;
    let client_config = ClientConfig {
        max_in_flight: 8,
        ..quick()
    };
    let client = Client::connect_with(addr.as_str(), client_config)
        .await
        .unwrap();
    let calls = (0..1000).map(|n| {
        let client = client.clone();
        async move {
            client
                .call(format!("{n}"))
                .await
                .map(|reply| reply == format!("{n}"))
        }
    });
    let results = futures::future::join_all(calls).await;
    let failed: Vec<_> = results.iter().filter(|r| !matches!(r, Ok(true))).collect();
    assert!(
        failed.is_empty(),
        "{} of 1000 failed, first {:?}",
        failed.len(),
        failed[0]
    );
    assert_eq!(stats.snapshot().requests, 1000);
    stop.cancel();
}

#[test]
fn serve_send_bench_and_stats_take_udp_addresses() {
    use std::process::Command;
    let server = common::Served::start_at("udp:127.0.0.1:0", &[], &[]);
    assert!(server.addr.starts_with("udp:127.0.0.1:"), "{}", server.addr);
    let run = |args: &[&str]| {
        let out = Command::new(common::BIN).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        run(&["send", &server.addr, "--data", "hi", "--output", "text"]).trim(),
        "hi"
    );
    let bench = run(&[
        "bench",
        &server.addr,
        "-c",
        "2",
        "-P",
        "4",
        "--requests",
        "200",
        "--warmup",
        "0s",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&bench).unwrap();
    assert_eq!(report["requests"], 200, "{bench}");
    assert_eq!(
        (report["errors"].as_u64(), report["mismatches"].as_u64()),
        (Some(0), Some(0))
    );
    let stats = run(&["stats", &server.addr]);
    let requests = stats
        .lines()
        .find_map(|line| line.strip_prefix("requests "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert_eq!(requests, Some(201), "{stats}");
    assert!(stats.contains("udp_cache_hits "), "{stats}");
    // A framing a datagram cannot carry is refused before anything is sent.
    let plain = Command::new(common::BIN)
        .args(["send", &server.addr, "--framing", "plain", "--data", "x"])
        .output()
        .unwrap();
    assert!(!plain.status.success());
    assert!(String::from_utf8_lossy(&plain.stderr).contains("courier framing only"));
}
