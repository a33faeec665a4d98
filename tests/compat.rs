//! Plain and raw framing: the server against peers that are not courier's client (bare
//! sockets writing bytes by hand), and courier's plain and raw clients.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use courier::client::ClientError;
use courier::client::{raw_exchange, PlainClient, RawOptions};
use courier::config::{Config, Framing};
use courier::handler::{Builtin, HandlerError, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn plain_config() -> Config {
    Config {
        framing: Framing::Plain,
        ..test_config()
    }
}

fn raw_config() -> Config {
    Config {
        framing: Framing::Raw,
        ..test_config()
    }
}

/// Length-prefixes each message by hand, as a peer in any language would.
fn plain_bytes(messages: &[&[u8]]) -> BytesMut {
    let mut buf = BytesMut::new();
    for message in messages {
        buf.put_u32(message.len() as u32);
        buf.put_slice(message);
    }
    buf
}

/// Reads one length-prefixed message by hand.
async fn read_plain(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let len = stream.read_u32().await.ok()?;
    let mut message = vec![0; len as usize];
    stream.read_exact(&mut message).await.ok()?;
    Some(message)
}

async fn expect_eof(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the server closes the connection");
    // A reset also means closed; what matters is that nothing more arrives.
    if let Ok(n) = read {
        assert_eq!(n, 0, "unexpected bytes: {rest:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn plain_replies_come_in_request_order_even_when_handlers_finish_out_of_order() {
    // The first byte of each payload is the handler's delay in milliseconds.
    let handler = |req: Request| async move {
        tokio::time::sleep(Duration::from_millis(u64::from(req.payload[0]))).await;
        Ok::<_, HandlerError>(req.payload)
    };
    let server = start_server(plain_config(), handler).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let messages: [&[u8]; 4] = [&[40, b'a'], &[30, b'b'], &[20, b'c'], &[10, b'd']];
    stream.write_all(&plain_bytes(&messages)).await.unwrap();
    for expected in messages {
        assert_eq!(read_plain(&mut stream).await.unwrap(), expected);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn plain_zero_length_messages_are_valid() {
    let server = start_server(plain_config(), Builtin::Echo).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(&plain_bytes(&[b"", b"x", b""]))
        .await
        .unwrap();
    assert_eq!(read_plain(&mut stream).await.unwrap(), b"");
    assert_eq!(read_plain(&mut stream).await.unwrap(), b"x");
    assert_eq!(read_plain(&mut stream).await.unwrap(), b"");
    server.shutdown().await;
}

#[tokio::test]
async fn plain_oversize_length_closes_the_connection_and_others_carry_on() {
    let config = Config {
        max_frame: 10,
        ..plain_config()
    };
    let server = start_server(config, Builtin::Echo).await;
    let mut good = TcpStream::connect(server.addr).await.unwrap();
    let mut bad = TcpStream::connect(server.addr).await.unwrap();
    bad.write_all(&11u32.to_be_bytes()).await.unwrap();
    expect_eof(&mut bad).await;
    good.write_all(&plain_bytes(&[b"exactly 10"]))
        .await
        .unwrap();
    assert_eq!(read_plain(&mut good).await.unwrap(), b"exactly 10");
    server.shutdown().await;
}

#[tokio::test]
async fn plain_handler_failure_closes_the_connection_after_earlier_replies() {
    let handler = |req: Request| async move {
        if &req.payload[..] == b"fail" {
            return Err(HandlerError::new("no"));
        }
        Ok(req.payload)
    };
    let server = start_server(plain_config(), handler).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(&plain_bytes(&[b"first", b"fail", b"never"]))
        .await
        .unwrap();
    assert_eq!(read_plain(&mut stream).await.unwrap(), b"first");
    expect_eof(&mut stream).await;
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn plain_frame_deadline_cuts_off_a_half_sent_message() {
    let config = Config {
        frame_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(3600),
        ..plain_config()
    };
    let server = start_server(config, Builtin::Echo).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&[0, 0, 0, 100, 1, 2, 3]).await.unwrap();
    let started = tokio::time::Instant::now();
    expect_eof(&mut stream).await;
    assert!(started.elapsed() >= Duration::from_secs(5));
    server.shutdown().await;
}

#[tokio::test]
async fn plain_client_calls_a_plain_server() {
    let server = start_server(plain_config(), Builtin::Fixed(Bytes::from_static(b"ok"))).await;
    let mut client = PlainClient::connect(
        server.addr,
        Duration::from_secs(5),
        Duration::from_secs(5),
        1024,
    )
    .await
    .unwrap();
    for _ in 0..3 {
        assert_eq!(
            client.call(Bytes::from_static(b"ping")).await.unwrap(),
            "ok"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn plain_client_reports_a_connection_closed_after_sending_as_outcome_unknown() {
    let config = Config {
        max_frame: 2,
        ..plain_config()
    };
    let server = start_server(config, Builtin::Echo).await;
    let mut client = PlainClient::connect(
        server.addr,
        Duration::from_secs(5),
        Duration::from_secs(5),
        1024,
    )
    .await
    .unwrap();
    match client.call(Bytes::from_static(b"too long")).await {
        // Plain framing cannot say why, so the client cannot know what the server did.
        Err(ClientError::OutcomeUnknown { .. }) => {}
        other => panic!("expected OutcomeUnknown, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn raw_server_greets_then_echoes_each_chunk() {
    let config = Config {
        greeting: Some("01020304".into()),
        ..raw_config()
    };
    let server = start_server(config, Builtin::Echo).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut greeting = [0u8; 4];
    stream.read_exact(&mut greeting).await.unwrap();
    assert_eq!(greeting, [1, 2, 3, 4]);
    stream.write_all(b"hello").await.unwrap();
    let mut echo = [0u8; 5];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"hello");
    server.shutdown().await;
}

#[tokio::test]
async fn raw_server_with_no_reply_and_close_after_one_closes_after_the_first_chunk() {
    let config = Config {
        reply: "none".into(),
        close_after: 1,
        ..raw_config()
    };
    let server = start_server(config, Builtin::Fixed(Bytes::new())).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&[5, 6, 7, 8]).await.unwrap();
    expect_eof(&mut stream).await;
    server.shutdown().await;
}

#[tokio::test]
async fn raw_exchange_receives_first_then_sends_and_collects_until_close() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(&[1, 2, 3, 4]).await.unwrap();
        let mut got = [0u8; 4];
        stream.read_exact(&mut got).await.unwrap();
        stream.write_all(b"bye").await.unwrap();
        got
    });
    let options = RawOptions {
        recv_first: true,
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(5),
    };
    let mut chunks = Vec::new();
    raw_exchange(addr, &[5, 6, 7, 8], 1, &options, |chunk| {
        chunks.push(chunk.to_vec());
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(peer.await.unwrap(), [5, 6, 7, 8]);
    assert_eq!(chunks.concat(), b"\x01\x02\x03\x04bye");
    assert_eq!(
        chunks[0],
        [1, 2, 3, 4],
        "the first chunk is printed before sending"
    );
}

#[tokio::test]
async fn raw_exchange_ends_when_the_peer_goes_quiet() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let quiet = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(stream);
    });
    let options = RawOptions {
        recv_first: false,
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_millis(200),
    };
    let mut chunks = 0;
    raw_exchange(addr, b"anyone", 1, &options, |_| {
        chunks += 1;
        Ok(())
    })
    .await
    .expect("quiet for the timeout is a normal end");
    assert_eq!(chunks, 0);
    quiet.abort();
}
