//! The client library: sharing one connection between tasks, and each distinct error kind.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use courier::client::{Client, ClientConfig, ClientError, Outcome};
use courier::config::Config;
use courier::handler::{Builtin, HandlerError, Request};
use courier::wire::{Codec, ErrorCode, Frame, Hello, Kind};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_call_through_one_client_and_get_their_own_replies() {
    let server = start_echo().await;
    let client = Client::connect(server.addr).await.unwrap();
    let mut tasks = Vec::new();
    for n in 0..100 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for call in 0..50 {
                let payload = payload_for(n, call);
                assert_eq!(client.call(payload.clone()).await.unwrap(), payload);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    server.shutdown().await;
}

#[tokio::test]
async fn connecting_to_a_closed_port_is_refused() {
    // Bind and drop to get a port that nothing listens on.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    match Client::connect(addr).await {
        Err(err @ ClientError::Refused { .. }) => {
            assert!(err.to_string().contains(&addr.to_string()), "{err}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_server_that_never_says_hello_is_named_as_silent_not_as_a_connect_timeout() {
    // A TCP listener that accepts and then says nothing.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let (stream, _) = silent.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(stream);
    });
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    // The TCP connect succeeded: the error says the peer was silent, and may be a TLS
    // port or a plain-framing server, rather than blaming the connect.
    match Client::connect_with(addr, config).await {
        Err(err @ ClientError::NoHello) => {
            let text = err.to_string();
            assert!(
                text.contains("TLS port") && text.contains("plain"),
                "{text}"
            );
        }
        other => panic!("expected NoHello, got {other:?}"),
    }
    holder.abort();
}

#[tokio::test(start_paused = true)]
async fn a_slow_reply_times_out_and_the_client_stays_usable() {
    let handler = |req: Request| async move {
        if &req.payload[..] == b"slow" {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        Ok::<_, HandlerError>(req.payload)
    };
    let server = start_server(test_config(), handler).await;
    let config = ClientConfig {
        call_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    };
    let client = Client::connect_with(server.addr, config).await.unwrap();
    match client.call("slow").await {
        Err(ClientError::Timeout { after, .. }) => assert_eq!(after, Duration::from_secs(5)),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert_eq!(client.call("fast").await.unwrap(), "fast");
    server.shutdown().await;
}

#[tokio::test]
async fn a_payload_over_the_servers_limit_is_refused_before_sending() {
    let config = Config {
        max_frame: 1000,
        ..test_config()
    };
    let server = start_server(config, Builtin::Echo).await;
    let client = Client::connect(server.addr).await.unwrap();
    assert_eq!(client.server_max_frame(), 1000);
    match client.call(vec![0; 1001]).await {
        Err(ClientError::FrameTooLarge { len, max }) => assert_eq!((len, max), (1001, 1000)),
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    // Nothing was sent, so the connection is intact.
    assert_eq!(client.call(vec![1; 1000]).await.unwrap().len(), 1000);
    server.shutdown().await;
}

#[tokio::test]
async fn a_reply_over_the_clients_limit_becomes_an_error_for_that_call_only() {
    let big = Bytes::from(vec![9; 5000]);
    let reply = big.clone();
    let handler = move |req: Request| {
        let reply = reply.clone();
        async move {
            Ok::<_, HandlerError>(if &req.payload[..] == b"big" {
                reply
            } else {
                req.payload
            })
        }
    };
    let server = start_server(test_config(), handler).await;
    let config = ClientConfig {
        max_frame: 4096,
        ..ClientConfig::default()
    };
    let client = Client::connect_with(server.addr, config).await.unwrap();
    match client.call("big").await {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::FrameTooLarge);
            assert!(message.contains("4096"), "{message}");
        }
        other => panic!("expected a FrameTooLarge error, got {other:?}"),
    }
    assert_eq!(client.call("small").await.unwrap(), "small");
    server.shutdown().await;
}

#[tokio::test]
async fn an_error_frame_reaches_the_caller_with_code_and_text() {
    let handler = |_req: Request| async move {
        Err::<Bytes, _>(HandlerError::with_code(1404, "no such key: colour"))
    };
    let server = start_server(test_config(), handler).await;
    let client = Client::connect(server.addr).await.unwrap();
    match client.call("colour").await {
        Err(err @ ClientError::Server { .. }) => {
            let ClientError::Server { code, message } = &err else {
                unreachable!()
            };
            assert_eq!(code.as_u16(), 1404);
            assert_eq!(message, "no such key: colour");
            assert!(err.to_string().contains("1404"), "{err}");
        }
        other => panic!("expected Server, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn calls_after_goaway_fail_as_going_away() {
    let server = start_echo().await;
    let client = Client::connect(server.addr).await.unwrap();
    assert_eq!(client.call("before").await.unwrap(), "before");
    server.shutdown().await;
    match client.call("after").await {
        Err(ClientError::GoingAway) => {}
        other => panic!("expected GoingAway, got {other:?}"),
    }
}

/// A server that does the handshake, reads `requests` REQUEST frames, sends `goaway`
/// (a GOAWAY with that last id) if given, and hangs up without answering any of them.
/// Returns the address and the task, which yields the ids it read.
async fn hang_up_after(
    requests: usize,
    goaway: Option<u32>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u32>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut framed = Framed::new(stream, Codec::new(1 << 20));
        framed
            .send(Frame::hello(&Hello::new(1 << 20)))
            .await
            .unwrap();
        let hello = framed.next().await.unwrap().unwrap();
        assert_eq!(hello.kind, Kind::Hello);
        let mut ids = Vec::new();
        while ids.len() < requests {
            let request = framed.next().await.unwrap().unwrap();
            assert_eq!(request.kind, Kind::Request);
            ids.push(request.id);
        }
        if let Some(last) = goaway {
            framed.send(Frame::goaway(last)).await.unwrap();
        }
        ids
    });
    (addr, task)
}

/// Calls `calls` requests at once on `client`, each from a task of its own, started in
/// order (so that they get ids 1, 2, ... in that order); returns each call's result.
async fn call_in_order(client: &Client, calls: usize) -> Vec<Result<Bytes, ClientError>> {
    let mut tasks = Vec::new();
    for n in 0..calls {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client.call(format!("call {n}")).await
        }));
        // Let the call reach the connection task before the next one starts.
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

#[tokio::test]
async fn a_connection_dropped_mid_call_leaves_the_outcome_unknown() {
    let (addr, rude) = hang_up_after(1, None).await;
    let client = Client::connect(addr).await.unwrap();
    match client.call("anyone?").await {
        Err(err @ ClientError::OutcomeUnknown { .. }) => {
            assert_eq!(err.outcome(), Outcome::Unknown);
            assert!(err.to_string().contains("closed"), "{err}");
        }
        other => panic!("expected OutcomeUnknown, got {other:?}"),
    }
    assert_eq!(rude.await.unwrap(), vec![1]);
    // Later calls are not sent at all: not received.
    match client.call("again").await {
        Err(err @ ClientError::Closed { .. }) => assert_eq!(err.outcome(), Outcome::NotReceived),
        other => panic!("expected Closed, got {other:?}"),
    }
}

#[tokio::test]
async fn after_goaway_requests_up_to_its_last_id_are_unknown_and_later_ones_not_received() {
    // The server reads all five requests but its GOAWAY says it received up to 3: the
    // client must believe the GOAWAY, and only the wire.
    let (addr, server) = hang_up_after(5, Some(3)).await;
    let client = Client::connect(addr).await.unwrap();
    let results = call_in_order(&client, 5).await;
    assert_eq!(server.await.unwrap(), vec![1, 2, 3, 4, 5]);
    for (n, result) in results.iter().enumerate() {
        let id = n + 1;
        match result {
            Err(err @ ClientError::OutcomeUnknown { .. }) if id <= 3 => {
                assert_eq!(err.outcome(), Outcome::Unknown);
                assert!(err.to_string().contains("named 3"), "{err}");
            }
            Err(err @ ClientError::GoingAway) if id > 3 => {
                assert_eq!(err.outcome(), Outcome::NotReceived);
            }
            other => panic!("request id {id}: unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_goaway_naming_no_request_means_none_was_received() {
    let (addr, server) = hang_up_after(2, Some(0)).await;
    let client = Client::connect(addr).await.unwrap();
    let results = call_in_order(&client, 2).await;
    assert_eq!(server.await.unwrap(), vec![1, 2]);
    for result in results {
        assert!(matches!(result, Err(ClientError::GoingAway)), "{result:?}");
    }
}

#[tokio::test]
async fn a_server_that_does_not_speak_courier_is_named_with_its_first_bytes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let http = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        use tokio::io::AsyncWriteExt;
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    });
    match Client::connect(addr).await {
        Err(err @ ClientError::NotCourier { .. }) => {
            let text = err.to_string();
            assert!(
                text.contains("did not speak courier (first bytes: 48 54 54 50 2f")
                    && text.contains("= 'HTTP/1.1 400 Bad'"),
                "{text}"
            );
        }
        other => panic!("expected NotCourier, got {other:?}"),
    }
    http.await.unwrap();
}

#[tokio::test]
async fn oneway_messages_are_written_before_close_returns() {
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = move |req: Request| {
        let seen_tx = seen_tx.clone();
        async move {
            let _ = seen_tx.send(req.payload.clone());
            Ok::<_, HandlerError>(Bytes::new())
        }
    };
    let server = start_server(test_config(), handler).await;
    let client = Client::connect(server.addr).await.unwrap();
    for n in 0..20 {
        client.send_oneway(payload_for(0, n)).await.unwrap();
    }
    client.close().await;
    for n in 0..20 {
        let got = tokio::time::timeout(Duration::from_secs(5), seen_rx.recv())
            .await
            .expect("message arrives")
            .unwrap();
        assert_eq!(got, payload_for(0, n));
    }
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn calls_that_timed_out_do_not_use_up_the_in_flight_limit() {
    // The server never answers "hang"; the client allows 4 calls in flight.
    let handler = |req: Request| async move {
        if &req.payload[..] == b"hang" {
            std::future::pending::<()>().await;
        }
        Ok::<_, HandlerError>(req.payload)
    };
    let server = start_server(test_config(), handler).await;
    let config = ClientConfig {
        call_timeout: Duration::from_secs(1),
        max_in_flight: 4,
        ..ClientConfig::default()
    };
    let client = Client::connect_with(server.addr, config).await.unwrap();
    for _ in 0..8 {
        assert!(matches!(
            client.call("hang").await,
            Err(ClientError::Timeout { .. })
        ));
    }
    assert_eq!(client.call("answered").await.unwrap(), "answered");
    server.shutdown().await;
}

#[test]
fn backoff_waits_are_jittered_below_a_doubling_capped_ceiling() {
    use courier::client::Backoff;
    let backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    for (failures, ceiling_ms) in [
        (1, 100),
        (2, 200),
        (3, 400),
        (4, 800),
        (5, 1000),
        (40, 1000),
    ] {
        let waits: Vec<Duration> = (0..200).map(|_| backoff.delay(failures)).collect();
        let ceiling = Duration::from_millis(ceiling_ms);
        assert!(
            waits.iter().all(|wait| *wait <= ceiling),
            "{failures}: {waits:?}"
        );
        // Jitter: the waits spread over the range rather than all being the ceiling.
        let low = waits.iter().filter(|wait| **wait < ceiling / 2).count();
        assert!(low > 20 && low < 180, "{failures}: {low} of 200 below half");
    }
}

#[tokio::test]
async fn reconnecting_client_connects_again_after_the_server_restarts() {
    use courier::client::{Backoff, Reconnecting};
    let server = common::start_echo().await;
    let addr = server.addr;
    let client = Reconnecting::new(
        addr.to_string(),
        ClientConfig::default(),
        Backoff::default(),
    );
    assert_eq!(client.call("one").await.unwrap(), "one");
    server.shutdown().await;
    // Nothing listens now: the failure is reported, not hidden.
    let err = client.call("two").await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Refused { .. } | ClientError::GoingAway | ClientError::Closed { .. }
        ),
        "{err}"
    );
    // A new server on the same port; the client finds it after its backoff.
    let listener = courier::transport::bind(&addr.to_string(), 128)
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(courier::server::run(
        listener,
        common::test_config(),
        courier::handler::Builtin::Echo,
        stop.clone().cancelled_owned(),
    ));
    let mut reply = None;
    for _ in 0..100 {
        match client.call("three").await {
            Ok(bytes) => {
                reply = Some(bytes);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(reply.as_deref(), Some(&b"three"[..]));
    stop.cancel();
    task.await.unwrap();
}
