//! REQUEST_EXT: the idempotent flag and the caller's timeout travel with a request to a
//! server that announced it reads them, and never to one that did not.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use courier::client::{CallOptions, Client, ClientError};
use courier::handler::{HandlerError, Request};
use courier::wire::{Codec, ErrorCode, Frame, Hello, Kind, RequestOptions};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

/// A handler that replies with what it saw of the request's options.
async fn options_seen(req: Request) -> Result<Bytes, HandlerError> {
    Ok(Bytes::from(format!(
        "idempotent={} timeout={:?}",
        req.idempotent, req.timeout
    )))
}

#[tokio::test]
async fn the_flag_and_the_timeout_reach_the_handler() {
    let server = start_server(test_config(), options_seen).await;
    let client = Client::connect(server.addr).await.unwrap();
    let reply = client.call("x").await.unwrap();
    // The client's call_timeout (30 s by default) travels with every call.
    assert_eq!(reply, "idempotent=false timeout=Some(30s)");
    assert_eq!(
        client.call_idempotent("x").await.unwrap(),
        "idempotent=true timeout=Some(30s)"
    );
    let options = CallOptions {
        idempotent: false,
        timeout: Some(Duration::from_millis(1500)),
    };
    assert_eq!(
        client.call_with("x", options).await.unwrap(),
        "idempotent=false timeout=Some(1.5s)"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn past_the_callers_timeout_the_server_drops_the_work_and_says_so() {
    let server = start_server(test_config(), |_req: Request| async move {
        tokio::time::sleep(Duration::from_secs(600)).await;
        Ok::<_, HandlerError>(Bytes::new())
    })
    .await;
    let mut peer = RawPeer::handshake(server.addr).await;
    let options = RequestOptions {
        idempotent: false,
        timeout_ms: 50,
    };
    peer.send(Frame::new(Kind::RequestExt, 9, options.encode(b"slow")))
        .await;
    let (frame, body) = peer.expect_error(ErrorCode::DeadlineExceeded).await;
    assert_eq!(frame.id, 9);
    assert!(
        body.message.contains("deadline exceeded"),
        "{}",
        body.message
    );
    // The connection survives.
    peer.send(Frame::new(Kind::Ping, 1, "p")).await;
    assert_eq!(peer.recv().await.unwrap().kind, Kind::Pong);
    server.shutdown().await;
}

/// A server of an older version: its HELLO has no request-options field. It records the
/// kind of every frame it gets after the handshake and echoes REQUESTs.
#[tokio::test]
async fn a_server_that_did_not_announce_request_ext_never_gets_one() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (kinds_tx, mut kinds) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut framed = Framed::new(stream, Codec::new(1 << 20));
        framed
            .send(Frame::hello(&Hello::new(1 << 20)))
            .await
            .unwrap();
        while let Some(Ok(frame)) = framed.next().await {
            let _ = kinds_tx.send(frame.kind);
            if frame.kind == Kind::Request {
                framed
                    .send(Frame::reply(frame.id, frame.payload))
                    .await
                    .unwrap();
            }
        }
    });
    let client = Client::connect(addr).await.unwrap();
    assert_eq!(client.call_idempotent("old").await.unwrap(), "old");
    assert_eq!(kinds.recv().await, Some(Kind::Hello));
    assert_eq!(kinds.recv().await, Some(Kind::Request));
}

#[tokio::test]
async fn a_payload_with_no_room_for_the_options_goes_without_them() {
    let config = courier::config::Config {
        max_frame: 64,
        ..test_config()
    };
    let server = start_server(config, options_seen).await;
    let client = Client::connect(server.addr).await.unwrap();
    // 59 bytes and the 5 bytes of options fit the server's 64; 60 do not, and go as a
    // plain REQUEST, so the largest payload the server takes can still be sent.
    let with = client.call_idempotent(vec![0u8; 59]).await.unwrap();
    assert_eq!(with, "idempotent=true timeout=Some(30s)");
    let without = client.call_idempotent(vec![0u8; 60]).await.unwrap();
    assert_eq!(without, "idempotent=false timeout=None");
    match client.call(vec![0u8; 65]).await {
        Err(ClientError::FrameTooLarge { len, max }) => assert_eq!((len, max), (65, 64)),
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}
