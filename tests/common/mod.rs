//! Helpers shared by the integration tests: a server on port 0 with a shutdown handle, and
//! a raw peer that speaks frames without the client library, to send what a well-behaved
//! client never would.

#![allow(dead_code, unreachable_pub)]

pub mod certs;
pub mod relay;
pub mod scrape;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use courier::config::Config;
use courier::handler::{Builtin, Handler};
use courier::server;
use courier::wire::{Codec, ErrorBody, ErrorCode, Frame, Hello, Kind};
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
    let listener = courier::transport::bind("127.0.0.1:0", config.backlog)
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
    start_server(test_config(), Builtin::Echo).await
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

    /// Closes the write side (a TCP half-close); reading goes on.
    pub async fn shutdown_write(&mut self) {
        self.framed
            .get_mut()
            .shutdown()
            .await
            .expect("shutdown(Write)");
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

/// The `courier` binary that cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_courier");

/// A `courier serve` process; killed on drop if still running.
pub struct Served {
    pub child: Child,
    pub addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Served {
    /// Starts `courier serve --listen 127.0.0.1:0 ARGS` and waits for its "listening" line.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Served {
        Served::start_at("127.0.0.1:0", args, env)
    }

    /// Starts `courier serve --listen LISTEN ARGS` and waits for its "listening" line.
    pub fn start_at(listen: &str, args: &[&str], env: &[(&str, &str)]) -> Served {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--listen", listen])
            .args(args)
            .env_remove("RUST_LOG");
        for (key, value) in env {
            command.env(key, value);
        }
        Served::spawn(command)
    }

    /// Runs `sh -c COMMAND`, which must `exec` a `courier serve` (after a `ulimit`, say).
    pub fn start_shell(shell_command: &str) -> Served {
        let mut command = Command::new("sh");
        command.args(["-c", shell_command]).env_remove("RUST_LOG");
        Served::spawn(command)
    }

    /// Runs `courier ARGS` (a command that logs "listening addr=", such as `route`).
    pub fn start_courier(args: &[&str]) -> Served {
        Served::start_courier_env(args, &[])
    }

    /// Runs `courier ARGS` with the variables `env` set as well.
    pub fn start_courier_env(args: &[&str], env: &[(&str, &str)]) -> Served {
        let mut command = Command::new(BIN);
        command.args(args).env_remove("RUST_LOG");
        for (key, value) in env {
            command.env(key, value);
        }
        Served::spawn(command)
    }

    fn spawn(mut command: Command) -> Served {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn courier serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening") {
                    if let Some(addr) = line.split("addr=").nth(1) {
                        let _ = addr_tx.send(addr.trim().to_owned());
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server logs its address within 30 s");
        Served { child, addr, log }
    }

    /// Whether the process is still running.
    pub fn child_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the stderr reader thread see the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return (status, self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The value of `name=N` in the server's "counters at shutdown" log line.
pub fn shutdown_counter(log: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .find(|line| line.contains("counters at shutdown"))
        .unwrap_or_else(|| panic!("no counters line in the log:\n{log}"));
    let key = format!("{name}=");
    line.split_whitespace()
        .find_map(|token| token.strip_prefix(&key))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python interpreter, or `None` (with a note on stderr) where there is none, so
/// that tests needing it can skip with a clear message.
pub fn python3() -> Option<&'static str> {
    let found = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        eprintln!("skipping: python3 is not installed on this machine");
    }
    found.then_some("python3")
}

/// Path of a file under tests/peers.
pub fn peer_script(name: &str) -> String {
    format!("{}/tests/peers/{name}", env!("CARGO_MANIFEST_DIR"))
}
