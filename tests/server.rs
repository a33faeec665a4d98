//! The server against real TCP connections on loopback: exchanges, concurrency, limits,
//! deadlines and shutdown. Raw peers (tests/common) send what the client library never
//! would; replies are always decoded through the codec.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use courier::client::{Client, ClientError};
use courier::config::Config;
use courier::handler::{Builtin, Handler, HandlerError, Request, RequestRef};
use courier::wire::{Codec, ErrorBody, ErrorCode, Frame, Hello, Kind};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio_util::codec::FramedRead;

#[tokio::test]
async fn echo_round_trip_returns_the_request_payload() {
    let server = start_echo().await;
    let client = Client::connect(server.addr).await.unwrap();
    let reply = client
        .call(Bytes::from_static(&[5, 6, 7, 8]))
        .await
        .unwrap();
    assert_eq!(&reply[..], &[5, 6, 7, 8]);
    assert_eq!(client.call(Bytes::new()).await.unwrap(), Bytes::new());
    server.shutdown().await;
}

#[tokio::test]
async fn fixed_reply_handler_answers_every_request_with_its_bytes() {
    let server = start_server(test_config(), Builtin::Fixed(Bytes::from_static(b"ok"))).await;
    let client = Client::connect(server.addr).await.unwrap();
    assert_eq!(client.call("anything").await.unwrap(), "ok");
    assert_eq!(client.call("else").await.unwrap(), "ok");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_clients_each_get_their_own_replies() {
    const CLIENTS: usize = 1000;
    const CALLS: usize = 100;
    let server = start_echo().await;
    let mut tasks = Vec::new();
    for n in 0..CLIENTS {
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(addr).await.expect("connect");
            for call in 0..CALLS {
                let payload = payload_for(n, call);
                let reply = client.call(payload.clone()).await.expect("call");
                assert_eq!(reply, payload, "client {n} call {call} got another's reply");
            }
            CALLS
        }));
    }
    let mut answered = 0;
    for task in tasks {
        answered += task.await.unwrap();
    }
    assert_eq!(answered, CLIENTS * CALLS);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn pipelined_requests_are_answered_in_the_order_handlers_finish() {
    // The payload says how long the handler takes, in milliseconds.
    let handler = |req: Request| async move {
        let ms = u64::from(req.payload[0]);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, HandlerError>(req.payload)
    };
    let server = start_server(test_config(), handler).await;
    let mut peer = RawPeer::handshake(server.addr).await;
    let delays = [50u8, 40, 30, 20, 10];
    let requests = delays
        .iter()
        .enumerate()
        .map(|(i, &ms)| Frame::request(i as u32 + 1, vec![ms]));
    peer.send_raw(&encode_all(requests)).await;

    let mut order = Vec::new();
    for _ in 0..delays.len() {
        let reply = peer.recv().await.expect("reply");
        assert_eq!(reply.kind, Kind::Reply);
        // Each reply still carries its own request's payload.
        assert_eq!(reply.payload[0], delays[reply.id as usize - 1]);
        order.push(reply.id);
    }
    assert_eq!(order, vec![5, 4, 3, 2, 1]);
    server.shutdown().await;
}

#[tokio::test]
async fn a_peer_writing_one_byte_at_a_time_gets_whole_replies() {
    let server = start_echo().await;
    let mut peer = RawPeer::connect(server.addr).await;
    assert_eq!(peer.recv().await.unwrap().kind, Kind::Hello);
    let bytes = encode_all([
        client_hello(),
        Frame::request(1, &b"slowly"[..]),
        Frame::request(2, &b"but surely"[..]),
    ]);
    for byte in bytes.iter() {
        peer.send_raw(&[*byte]).await;
        tokio::task::yield_now().await;
    }
    for (id, payload) in [(1, &b"slowly"[..]), (2, &b"but surely"[..])] {
        let reply = peer.recv().await.unwrap();
        assert_eq!(
            (reply.kind, reply.id, &reply.payload[..]),
            (Kind::Reply, id, payload)
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn many_frames_in_one_write_are_all_answered() {
    let server = start_echo().await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.recv().await.unwrap();
    let mut frames = vec![client_hello()];
    frames.extend((1..=500u32).map(|id| Frame::request(id, id.to_be_bytes().to_vec())));
    peer.send_raw(&encode_all(frames)).await;
    let mut seen = vec![false; 501];
    for _ in 0..500 {
        let reply = peer.recv().await.unwrap();
        assert_eq!(reply.kind, Kind::Reply);
        assert_eq!(&reply.payload[..], &reply.id.to_be_bytes());
        assert!(!seen[reply.id as usize], "id {} answered twice", reply.id);
        seen[reply.id as usize] = true;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn frame_of_exactly_max_frame_is_served() {
    let config = Config {
        max_frame: 100_000,
        ..test_config()
    };
    let server = start_server(config, Builtin::Echo).await;
    let client = Client::connect(server.addr).await.unwrap();
    let payload = Bytes::from(vec![0x5a; 100_000]);
    assert_eq!(client.call(payload.clone()).await.unwrap(), payload);
    server.shutdown().await;
}

#[tokio::test]
async fn oversize_frame_gets_an_error_naming_the_limit_and_the_connection_closes() {
    let config = Config {
        max_frame: 1000,
        ..test_config()
    };
    let server = start_server(config, Builtin::Echo).await;
    let mut peer = RawPeer::handshake(server.addr).await;
    // Only the header of a REQUEST (id 77) declaring 1001 payload bytes.
    let mut header = BytesMut::new();
    header.put_u32(1001 + 5);
    header.put_u8(Kind::Request as u8);
    header.put_u32(77);
    peer.send_raw(&header).await;
    let (frame, body) = peer.expect_error(ErrorCode::FrameTooLarge).await;
    assert_eq!(frame.id, 0, "an ERROR that closes the connection has id 0");
    assert!(body.message.contains("1001"), "{}", body.message);
    assert!(body.message.contains("1000"), "{}", body.message);
    peer.expect_closed().await;

    // Other clients are served as before.
    let client = Client::connect(server.addr).await.unwrap();
    assert_eq!(client.call("still here").await.unwrap(), "still here");
    server.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_limit_get_server_busy_and_the_others_carry_on() {
    let config = Config {
        max_connections: 2,
        ..test_config()
    };
    let server = start_server(config, Builtin::Echo).await;
    let first = Client::connect(server.addr).await.unwrap();
    let second = Client::connect(server.addr).await.unwrap();
    match Client::connect(server.addr).await {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::ServerBusy);
            assert!(message.contains("2 connections"), "{message}");
        }
        other => panic!("expected server busy, got {other:?}"),
    }
    assert_eq!(first.call("a").await.unwrap(), "a");
    assert_eq!(second.call("b").await.unwrap(), "b");

    // Freeing a slot lets a new client in (the server notices the close asynchronously).
    first.close().await;
    drop(first);
    let mut third = None;
    for _ in 0..100 {
        if let Ok(client) = Client::connect(server.addr).await {
            third = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let third = third.expect("a slot frees up after a client leaves");
    assert_eq!(third.call("c").await.unwrap(), "c");
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn idle_connection_is_closed_with_an_idle_timeout_error() {
    let config = Config {
        idle_timeout: Duration::from_secs(60),
        ..test_config()
    };
    let server = start_server(config, Builtin::Echo).await;
    let mut peer = RawPeer::handshake(server.addr).await;
    let started = tokio::time::Instant::now();
    let (frame, body) = peer.expect_error(ErrorCode::IdleTimeout).await;
    assert_eq!(frame.id, 0);
    assert!(body.message.contains("1m"), "{}", body.message);
    assert!(started.elapsed() >= Duration::from_secs(60));
    peer.expect_closed().await;
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn activity_keeps_a_connection_past_the_idle_timeout() {
    let config = Config {
        idle_timeout: Duration::from_secs(10),
        ..test_config()
    };
    let server = start_server(config, Builtin::Echo).await;
    let mut peer = RawPeer::handshake(server.addr).await;
    for id in 1..=5 {
        tokio::time::sleep(Duration::from_secs(8)).await;
        peer.send(Frame::request(id, &b"tick"[..])).await;
        let reply = peer.recv().await.unwrap();
        assert_eq!((reply.kind, reply.id), (Kind::Reply, id));
    }
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn trickling_peer_is_cut_off_by_the_frame_deadline_not_the_idle_timeout() {
    let config = Config {
        idle_timeout: Duration::from_secs(3600),
        frame_timeout: Duration::from_secs(5),
        ..test_config()
    };
    let server = start_server(config, Builtin::Echo).await;
    let peer = RawPeer::handshake(server.addr).await;
    let (read_half, mut write_half) = peer.framed.into_inner().into_split();
    let request = encode_all([Frame::request(1, vec![1; 100])]);
    let started = tokio::time::Instant::now();
    // One byte a second: the whole 109-byte frame would take 109 s.
    let trickle = tokio::spawn(async move {
        for byte in request.iter() {
            if write_half.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut reader = FramedRead::new(read_half, Codec::new(1 << 20));
    let frame = reader.next().await.expect("an ERROR").expect("decodable");
    let body = ErrorBody::parse(&frame.payload).unwrap();
    assert_eq!(body.code, ErrorCode::FrameTimeout, "{body:?}");
    assert!(body.message.contains("5s"), "{}", body.message);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed < Duration::from_secs(7),
        "cut off after {elapsed:?}"
    );
    assert!(
        reader.next().await.is_none(),
        "connection closed after the ERROR"
    );
    trickle.abort();
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn no_hello_within_the_handshake_deadline_gets_an_error() {
    let config = Config {
        handshake_timeout: Duration::from_secs(3),
        ..test_config()
    };
    let server = start_server(config, Builtin::Echo).await;
    let mut peer = RawPeer::connect(server.addr).await;
    assert_eq!(peer.recv().await.unwrap().kind, Kind::Hello);
    let (_, body) = peer.expect_error(ErrorCode::HandshakeTimeout).await;
    assert!(body.message.contains("3s"), "{}", body.message);
    peer.expect_closed().await;
    server.shutdown().await;
}

#[tokio::test]
async fn wrong_magic_gets_bad_magic_and_a_close() {
    let server = start_echo().await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.recv().await.unwrap();
    let mut body = BytesMut::from(&b"NOPE"[..]);
    body.put_u16(1);
    body.put_u32(1024);
    peer.send(Frame::new(Kind::Hello, 0, body.freeze())).await;
    let (_, err) = peer.expect_error(ErrorCode::BadMagic).await;
    assert!(err.message.contains("4e4f5045"), "{}", err.message);
    peer.expect_closed().await;
    server.shutdown().await;
}

#[tokio::test]
async fn wrong_version_gets_unsupported_version_and_a_close() {
    let server = start_echo().await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.recv().await.unwrap();
    let hello = Hello {
        version: 99,
        ..Hello::new(1024)
    };
    peer.send(Frame::hello(&hello)).await;
    let (_, err) = peer.expect_error(ErrorCode::UnsupportedVersion).await;
    assert!(err.message.contains("99"), "{}", err.message);
    peer.expect_closed().await;
    server.shutdown().await;
}

#[tokio::test]
async fn request_before_hello_is_a_protocol_error() {
    let server = start_echo().await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.recv().await.unwrap();
    peer.send(Frame::request(1, &b"too early"[..])).await;
    let (_, err) = peer.expect_error(ErrorCode::Protocol).await;
    assert!(err.message.contains("expected HELLO"), "{}", err.message);
    peer.expect_closed().await;
    server.shutdown().await;
}

#[tokio::test]
async fn garbage_instead_of_hello_gets_an_error_not_an_allocation() {
    let server = start_echo().await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.recv().await.unwrap();
    peer.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (_, err) = peer.expect_error(ErrorCode::FrameTooLarge).await;
    assert!(err.message.contains("limit is 4096"), "{}", err.message);
    peer.expect_closed().await;
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_kind_gets_an_error_and_a_close() {
    let server = start_echo().await;
    let mut peer = RawPeer::handshake(server.addr).await;
    peer.send_raw(&[0, 0, 0, 5, 0x42, 0, 0, 0, 9]).await;
    let (frame, err) = peer.expect_error(ErrorCode::UnknownKind).await;
    assert_eq!(frame.id, 0, "an ERROR that closes the connection has id 0");
    assert!(err.message.contains("0x42"), "{}", err.message);
    peer.expect_closed().await;
    server.shutdown().await;
}

#[tokio::test]
async fn request_id_zero_is_a_protocol_error() {
    let server = start_echo().await;
    let mut peer = RawPeer::handshake(server.addr).await;
    peer.send(Frame::request(0, &b"x"[..])).await;
    let (_, err) = peer.expect_error(ErrorCode::Protocol).await;
    assert!(err.message.contains("id 0"), "{}", err.message);
    peer.expect_closed().await;
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn duplicate_request_id_in_flight_gets_an_error_and_the_first_is_still_answered() {
    let handler = |req: Request| async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, HandlerError>(req.payload)
    };
    let server = start_server(test_config(), handler).await;
    let mut peer = RawPeer::handshake(server.addr).await;
    peer.send_raw(&encode_all([
        Frame::request(7, &b"first"[..]),
        Frame::request(7, &b"second"[..]),
    ]))
    .await;
    let (frame, err) = peer.expect_error(ErrorCode::DuplicateId).await;
    assert_eq!(frame.id, 7);
    assert!(err.message.contains("7"), "{}", err.message);
    let reply = peer.recv().await.unwrap();
    assert_eq!(
        (reply.kind, reply.id, &reply.payload[..]),
        (Kind::Reply, 7, &b"first"[..])
    );
    // Once answered, the id is free again.
    peer.send(Frame::request(7, &b"third"[..])).await;
    let reply = peer.recv().await.unwrap();
    assert_eq!(&reply.payload[..], b"third");
    server.shutdown().await;
}

#[tokio::test]
async fn handler_errors_and_panics_become_error_replies_and_the_connection_survives() {
    let handler = |req: Request| async move {
        match &req.payload[..] {
            b"fail" => Err(HandlerError::with_code(1001, "no such thing")),
            b"panic" => panic!("handler bug"),
            _ => Ok(req.payload),
        }
    };
    let server = start_server(test_config(), handler).await;
    let client = Client::connect(server.addr).await.unwrap();
    match client.call("fail").await {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code.as_u16(), 1001);
            assert_eq!(message, "no such thing");
        }
        other => panic!("expected a server error, got {other:?}"),
    }
    match client.call("panic").await {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::HandlerFailed);
            assert!(message.contains("panicked"), "{message}");
        }
        other => panic!("expected a server error, got {other:?}"),
    }
    assert_eq!(client.call("fine").await.unwrap(), "fine");
    server.shutdown().await;
}

#[tokio::test]
async fn ping_gets_a_pong_with_the_same_id_and_payload() {
    let server = start_echo().await;
    let mut peer = RawPeer::handshake(server.addr).await;
    peer.send(Frame::new(Kind::Ping, 12, &b"are you there"[..]))
        .await;
    let pong = peer.recv().await.unwrap();
    assert_eq!(
        (pong.kind, pong.id, &pong.payload[..]),
        (Kind::Pong, 12, &b"are you there"[..])
    );
    let client = Client::connect(server.addr).await.unwrap();
    assert_eq!(client.ping("x").await.unwrap(), "x");
    server.shutdown().await;
}

#[tokio::test]
async fn oneway_messages_reach_the_handler_and_get_no_reply() {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let handler = move |req: Request| {
        let counter = counter.clone();
        async move {
            if req.oneway {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<_, HandlerError>(req.payload)
        }
    };
    let server = start_server(test_config(), handler).await;
    let mut peer = RawPeer::handshake(server.addr).await;
    let mut frames: Vec<Frame> = (0..10).map(|_| Frame::oneway(0, &b"note"[..])).collect();
    frames.push(Frame::request(1, &b"after"[..]));
    peer.send_raw(&encode_all(frames)).await;
    // The only frame that comes back is the REPLY to the request.
    let reply = peer.recv().await.unwrap();
    assert_eq!((reply.kind, reply.id), (Kind::Reply, 1));
    tokio::time::timeout(Duration::from_secs(5), async {
        while seen.load(Ordering::SeqCst) < 10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("all ten ONEWAY messages handled");
    server.shutdown().await;
}

/// Records every message it gets and how: lent (`Handler::oneway_borrowed`,
/// `Handler::reply_borrowed`) or owned (`Handler::call`). Payloads starting with "own" it
/// declines to borrow, and owned ones with "own-slow" it answers after 300 ms. It echoes,
/// except that it fails "fail" with code 1001 and answers "big" with 2,000 bytes.
#[derive(Default, Clone)]
struct Lending {
    seen: Arc<std::sync::Mutex<Vec<(String, &'static str)>>>,
}

static BIG: [u8; 2000] = [b'x'; 2000];

impl Lending {
    fn answer<'a>(&self, payload: &'a [u8]) -> Result<&'a [u8], HandlerError> {
        match payload {
            b"fail" => Err(HandlerError::with_code(1001, "told to fail")),
            b"big" => Ok(&BIG),
            _ => Ok(payload),
        }
    }
}

impl Lending {
    fn note(&self, payload: &[u8], how: &'static str) {
        let text = String::from_utf8_lossy(payload).into_owned();
        self.seen.lock().unwrap().push((text, how));
    }
}

impl Handler for Lending {
    async fn call(&self, request: Request) -> Result<Bytes, HandlerError> {
        self.note(&request.payload, "owned");
        if request.payload.starts_with(b"own-slow") {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        self.answer(&request.payload).map(Bytes::copy_from_slice)
    }

    fn oneway_borrowed(&self, message: RequestRef<'_>) -> Option<Result<(), HandlerError>> {
        if message.payload.starts_with(b"own") {
            return None;
        }
        self.note(message.payload, "lent");
        Some(Ok(()))
    }

    fn reply_borrowed<'a>(
        &'a self,
        request: RequestRef<'a>,
    ) -> Option<Result<&'a [u8], HandlerError>> {
        if request.payload.starts_with(b"own") {
            return None;
        }
        self.note(request.payload, "lent");
        Some(self.answer(request.payload))
    }
}

#[tokio::test]
async fn requests_are_lent_to_a_handler_that_takes_them_and_answered_as_owned_ones_are() {
    let handler = Lending::default();
    let server = start_server(test_config(), handler.clone()).await;
    // A client that takes payloads of at most 1,000 bytes.
    let mut peer = RawPeer::connect(server.addr).await;
    let hello = peer.recv().await.unwrap();
    assert_eq!(hello.kind, Kind::Hello);
    let mut received = hello.encoded_len();
    peer.send(Frame::hello(&Hello::new(1000))).await;
    let mut frames = vec![Frame::request(1, &b"own-slow"[..])];
    frames.extend((2..=9).map(|id| Frame::request(id, format!("r{id}").into_bytes())));
    frames.extend([
        // Id 1 is still in flight.
        Frame::request(1, &b"again"[..]),
        Frame::request(10, &b"own"[..]),
        Frame::request(11, &b"fail"[..]),
        Frame::request(12, &b"big"[..]),
        Frame::new(Kind::Stats, 13, Bytes::new()),
    ]);
    // One write: the frames arrive together, as a pipelining client's do.
    peer.send_raw(&encode_all(frames)).await;
    let mut answers = std::collections::BTreeMap::new();
    for _ in 0..14 {
        let frame = peer.recv().await.unwrap();
        received += frame.encoded_len();
        let answer = match frame.kind {
            Kind::Reply if frame.id == 13 => "stats".to_string(),
            Kind::Reply => String::from_utf8(frame.payload.to_vec()).unwrap(),
            Kind::Error => format!("error {:?}", ErrorBody::parse(&frame.payload).unwrap().code),
            other => panic!("unexpected {other:?}"),
        };
        answers
            .entry(frame.id)
            .or_insert_with(Vec::new)
            .push(answer);
        if frame.id == 13 {
            // Every request before it counted, however it came (the duplicate is a
            // protocol error, not a request).
            let stats = String::from_utf8(frame.payload.to_vec()).unwrap();
            assert!(stats.contains("\"requests\":12"), "{stats}");
        }
    }
    // Once all is answered: the REPLYs and ERRORs counted as owned ones are.
    peer.send(Frame::new(Kind::Stats, 14, Bytes::new())).await;
    let stats = peer.recv().await.unwrap();
    let stats = String::from_utf8(stats.payload.to_vec()).unwrap();
    for expected in [
        "\"requests\":12",
        "\"replies\":10",
        "\"errors\":3",
        "\"protocol_errors\":1",
    ] {
        assert!(stats.contains(expected), "{expected} in {stats}");
    }
    for id in 2..=9 {
        assert_eq!(answers[&id], [format!("r{id}")]);
    }
    assert_eq!(
        answers[&1],
        ["error DuplicateId".to_string(), "own-slow".to_string()]
    );
    assert_eq!(answers[&10], ["own"]);
    assert_eq!(answers[&11], ["error Other(1001)"]);
    assert_eq!(answers[&12], ["error FrameTooLarge"]);
    let seen = handler.seen.lock().unwrap().clone();
    // Each request handled once, the duplicate never; the declined ones came owned.
    assert_eq!(seen.len(), 12, "{seen:?}");
    assert!(seen.contains(&("own".into(), "owned")), "{seen:?}");
    assert!(seen.contains(&("own-slow".into(), "owned")), "{seen:?}");
    let lent = seen.iter().filter(|(_, how)| *how == "lent").count();
    assert!(lent >= 5, "only {lent} of 10 lent: {seen:?}");
    // A request alone in its read is lent too: a client that does not pipeline sends
    // nothing else.
    peer.send(Frame::request(20, &b"solo"[..])).await;
    let reply = peer.recv().await.unwrap();
    assert_eq!(
        (reply.kind, reply.id, &reply.payload[..]),
        (Kind::Reply, 20, &b"solo"[..])
    );
    let last = handler.seen.lock().unwrap().last().cloned();
    assert_eq!(last, Some(("solo".into(), "lent")));
    // Every byte written before the last STATS counted, lent answers' too.
    assert!(
        stats.contains(&format!("\"bytes_out\":{received},")),
        "{received} bytes received: {stats}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn oneway_messages_are_lent_to_a_handler_that_takes_them_and_counted_either_way() {
    let handler = Lending::default();
    let server = start_server(test_config(), handler.clone()).await;
    let mut peer = RawPeer::handshake(server.addr).await;
    let names: Vec<String> = (0..8)
        .map(|n| format!("m{n}"))
        .chain(["own".to_string()])
        .chain((8..16).map(|n| format!("m{n}")))
        .collect();
    let mut frames: Vec<Frame> = names
        .iter()
        .map(|name| Frame::oneway(7, name.clone().into_bytes()))
        .collect();
    frames.push(Frame::request(1, &b"after"[..]));
    frames.push(Frame::new(Kind::Stats, 2, Bytes::new()));
    // One write: the frames arrive together, as a streaming client's do.
    peer.send_raw(&encode_all(frames)).await;
    let mut stats = None;
    for _ in 0..2 {
        let frame = peer.recv().await.unwrap();
        match (frame.kind, frame.id) {
            (Kind::Reply, 1) => assert_eq!(frame.payload, "after"),
            (Kind::Reply, 2) => stats = Some(String::from_utf8(frame.payload.to_vec()).unwrap()),
            other => panic!("unexpected frame {other:?}"),
        }
    }
    // The STATS answer counts every ONEWAY message received before it, by either way.
    let stats = stats.expect("the STATS reply");
    assert!(stats.contains("\"oneway\":17"), "{stats}");
    tokio::time::timeout(Duration::from_secs(5), async {
        while handler.seen.lock().unwrap().len() < 18 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("every message handled");
    let seen = handler.seen.lock().unwrap().clone();
    // Each ONEWAY message exactly once, whichever way it came.
    for name in &names {
        let ways: Vec<_> = seen.iter().filter(|(text, _)| text == name).collect();
        assert_eq!(ways.len(), 1, "{name}: {seen:?}");
    }
    // The one it declined came owned; the others were lent (all of them, unless the
    // write arrived in pieces).
    assert!(seen.contains(&("own".into(), "owned")), "{seen:?}");
    let lent = seen.iter().filter(|(_, how)| *how == "lent").count();
    assert!(lent >= 8, "only {lent} of 16 lent: {seen:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn half_closed_client_still_gets_its_reply() {
    let server = start_echo().await;
    let mut peer = RawPeer::handshake(server.addr).await;
    peer.send(Frame::request(3, &b"then I stop sending"[..]))
        .await;
    peer.framed.get_mut().shutdown().await.unwrap();
    let reply = peer.recv().await.unwrap();
    assert_eq!((reply.kind, reply.id), (Kind::Reply, 3));
    assert_eq!(&reply.payload[..], b"then I stop sending");
    peer.expect_closed().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_is_disconnected_and_others_are_still_served() {
    let config = Config {
        max_pending_output: 64 * 1024,
        ..test_config()
    };
    let server = start_server(config, Builtin::Echo).await;

    // A peer that sends 16 KiB requests and never reads.
    let mut stream = non_reading_peer(server.addr).await;
    let other = Client::connect(server.addr).await.unwrap();

    let request = encode_all((1..=64u32).map(|id| Frame::request(id, vec![0xEE; 16 * 1024])));
    let mut disconnected = false;
    // Bounded: at most 64 MiB of requests or 30 s, whichever comes first.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for round in 0..64u32 {
        let write = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&request));
        match write.await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                disconnected = true;
                break;
            }
            // The write stalls: the server stopped reading; keep checking.
            Err(_) => {}
        }
        // Meanwhile, another client is answered as usual.
        let payload = format!("other {round}");
        assert_eq!(other.call(payload.clone()).await.unwrap(), payload);
        if tokio::time::Instant::now() > deadline {
            break;
        }
    }
    assert!(
        disconnected,
        "the server should disconnect a client that never reads"
    );
    assert_eq!(other.call("still fine").await.unwrap(), "still fine");
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_delivers_every_in_flight_reply_and_sends_goaway() {
    const CALLS: usize = 50;
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let handler = move |req: Request| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, HandlerError>(req.payload)
        }
    };
    let server = start_server(test_config(), handler).await;
    let client = Client::connect(server.addr).await.unwrap();
    let mut calls = Vec::new();
    for n in 0..CALLS {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            (n, client.call(payload_for(n, 0)).await)
        }));
    }
    // Shut down once the server holds every request.
    while received.load(Ordering::SeqCst) < CALLS {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.begin_shutdown();
    for call in calls {
        let (n, reply) = call.await.unwrap();
        assert_eq!(
            reply.expect("reply delivered during drain"),
            payload_for(n, 0)
        );
    }
    // The connection has been drained: new calls are refused as not processed.
    match client.call("late").await {
        Err(ClientError::GoingAway) => {}
        other => panic!("expected GoingAway, got {other:?}"),
    }
    tokio::time::timeout(Duration::from_secs(5), server.finished())
        .await
        .expect("server finished within the drain timeout");
}

#[tokio::test]
async fn shutdown_sends_goaway_naming_the_last_request_received() {
    let server = start_echo().await;
    let mut peer = RawPeer::handshake(server.addr).await;
    peer.send(Frame::request(41, &b"a"[..])).await;
    assert_eq!(peer.recv().await.unwrap().id, 41);
    server.begin_shutdown();
    let goaway = peer.recv().await.unwrap();
    assert_eq!(goaway.kind, Kind::GoAway);
    assert_eq!(courier::wire::parse_goaway(&goaway.payload).unwrap(), 41);
    peer.expect_closed().await;
    server.finished().await;
}

#[tokio::test]
async fn server_stops_accepting_after_shutdown() {
    let server = start_echo().await;
    let addr = server.addr;
    server.shutdown().await;
    match Client::connect(addr).await {
        Err(ClientError::Refused { .. }) => {}
        other => panic!("expected refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_without_reading_is_bounded_like_replies() {
    let config = Config {
        max_pending_output: 64 * 1024,
        ..test_config()
    };
    let server = start_server(config, Builtin::Echo).await;
    let mut stream = non_reading_peer(server.addr).await;
    let pings = encode_all((1..=64u32).map(|id| Frame::new(Kind::Ping, id, vec![0xAA; 16 * 1024])));
    let mut disconnected = false;
    // Bounded: at most 64 rounds of 1 MiB.
    for _ in 0..64 {
        let write = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&pings));
        if let Ok(Err(_)) = write.await {
            disconnected = true;
            break;
        }
    }
    assert!(
        disconnected,
        "PONGs that are never read must not pile up without bound"
    );
    server.shutdown().await;
}

/// A peer that completes the handshake and then never reads, with a receive buffer of
/// 4 KiB so that the server's output backs up after little traffic.
async fn non_reading_peer(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let mut peer = RawPeer {
        framed: tokio_util::codec::Framed::new(stream, Codec::new(1 << 20)),
    };
    peer.recv().await.unwrap();
    peer.send(client_hello()).await;
    peer.framed.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_polling_server_answers_every_client_and_shuts_down() {
    // busy_poll changes how the workers wait, never what is answered: 20 clients' replies
    // are each checked, and the polling tasks must not keep the server from returning.
    let config = Config {
        busy_poll: Duration::from_micros(200),
        ..test_config()
    };
    let server = start_server(config, Builtin::Echo).await;
    let mut tasks = Vec::new();
    for n in 0..20 {
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(addr).await.expect("connect");
            for call in 0..200 {
                let payload = payload_for(n, call);
                assert_eq!(client.call(payload.clone()).await.expect("call"), payload);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Quiet for longer than the window: the pollers sleep, and a new client still gets in.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let client = Client::connect(server.addr).await.unwrap();
    assert_eq!(client.call("after a pause").await.unwrap(), "after a pause");
    tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .expect("a busy-polling server shuts down");
}
