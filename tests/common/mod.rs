//! Helpers shared by the integration tests: a server on port 0 with a shutdown handle, and
//! a raw peer that speaks frames without the client library, to send what a well-behaved
//! client never would.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use courier::codec::{Codec, ErrorBody, ErrorCode, Frame, Hello, Kind};
use courier::config::Config;
use courier::server::{self, Handler};
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::codec::{Encoder, Framed};
use tokio_util::sync::CancellationToken;

/// A server running in the test's runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Starts the shutdown and waits until `server::run` has returned.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.task.await.expect("server task panicked");
    }

    /// Starts the shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        self.stop.cancel();
    }

    /// Waits for `server::run` to return after a shutdown began.
    pub async fn finished(self) {
        self.task.await.expect("server task panicked");
    }
}

/// A config with short deadlines suited to tests.
pub fn test_config() -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        drain_timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

/// Binds 127.0.0.1:0 and runs the server with `handler`.
pub async fn start_server<H: Handler>(config: Config, handler: H) -> TestServer {
    let listener = server::bind("127.0.0.1:0", config.backlog)
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let stop = CancellationToken::new();
    let task = tokio::spawn(server::run(
        listener,
        config,
        handler,
        stop.clone().cancelled_owned(),
    ));
    TestServer { addr, stop, task }
}

/// Starts an echo server with the test config.
pub async fn start_echo() -> TestServer {
    start_server(test_config(), server::Builtin::Echo).await
}

/// A peer that talks frames directly, decoding what it receives through the codec.
pub struct RawPeer {
    pub framed: Framed<TcpStream, Codec>,
}

impl RawPeer {
    /// Connects without saying anything.
    pub async fn connect(addr: SocketAddr) -> RawPeer {
        let stream = TcpStream::connect(addr).await.expect("connect");
        RawPeer {
            framed: Framed::new(stream, Codec::new(64 << 20)),
        }
    }

    /// Connects, reads the server's HELLO and answers with a valid one.
    pub async fn handshake(addr: SocketAddr) -> RawPeer {
        let mut peer = RawPeer::connect(addr).await;
        let hello = peer.recv().await.expect("server HELLO");
        assert_eq!(hello.kind, Kind::Hello);
        peer.send(Frame::hello(&Hello::new(64 << 20))).await;
        peer
    }

    pub async fn send(&mut self, frame: Frame) {
        self.framed.send(frame).await.expect("send frame");
    }

    /// Writes bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.framed
            .get_mut()
            .write_all(bytes)
            .await
            .expect("write raw");
    }

    /// The next frame, or `None` at the end of the stream (or on a decode error).
    pub async fn recv(&mut self) -> Option<Frame> {
        tokio::time::timeout(Duration::from_secs(120), self.framed.next())
            .await
            .expect("no frame within 120 s")
            .and_then(Result::ok)
    }

    /// Expects an ERROR frame with `code` and returns it with its body.
    pub async fn expect_error(&mut self, code: ErrorCode) -> (Frame, ErrorBody) {
        let frame = self
            .recv()
            .await
            .expect("an ERROR frame, got the end of the stream");
        assert_eq!(frame.kind, Kind::Error, "expected ERROR, got {frame:?}");
        let body = ErrorBody::parse(&frame.payload).expect("ERROR body");
        assert_eq!(body.code, code, "unexpected ERROR: {body:?}");
        (frame, body)
    }

    /// Expects the server to close the connection.
    pub async fn expect_closed(&mut self) {
        if let Some(frame) = self.recv().await {
            panic!("expected the connection to close, got {frame:?}");
        }
    }
}

/// Encodes frames into one buffer, to write them in a single call.
pub fn encode_all(frames: impl IntoIterator<Item = Frame>) -> BytesMut {
    let mut codec = Codec::new(0);
    let mut buf = BytesMut::new();
    for frame in frames {
        codec.encode(frame, &mut buf).expect("encode");
    }
    buf
}

/// The HELLO a valid client sends.
pub fn client_hello() -> Frame {
    Frame::hello(&Hello::new(64 << 20))
}

/// A payload unique to (client, call).
pub fn payload_for(client: usize, call: usize) -> Bytes {
    Bytes::from(format!("client {client} call {call}"))
}
