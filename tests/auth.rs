//! Authentication with a shared token, and the refusal to listen unprotected beyond
//! loopback.

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{encode_all, RawPeer, Served, BIN};
use courier::client::{Client, ClientConfig, ClientError};
use courier::config::{AuthToken, Config};
use courier::handler::Builtin;
use courier::server::Server;
use courier::stats::CloseReason;
use courier::wire::{ErrorCode, Frame, Hello, Kind, HELLO_AUTH_TOKEN};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "s3cret-token-for-tests";

/// A server requiring TOKEN, with its counters.
async fn start() -> (
    std::net::SocketAddr,
    std::sync::Arc<courier::stats::Stats>,
    CancellationToken,
) {
    let config = Config {
        auth_token: Some(AuthToken::new(TOKEN).unwrap()),
        ..common::test_config()
    };
    let listener = courier::transport::bind("127.0.0.1:0", 128).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(config, Builtin::Echo);
    let stats = server.stats();
    let stop = CancellationToken::new();
    tokio::spawn(server.run(listener, stop.clone().cancelled_owned()));
    (addr, stats, stop)
}

fn with_token(token: Option<&str>) -> ClientConfig {
    ClientConfig {
        auth_token: token.map(|t| Bytes::copy_from_slice(t.as_bytes())),
        ..ClientConfig::default()
    }
}

#[tokio::test]
async fn the_right_token_is_served() {
    let (addr, _, stop) = start().await;
    let client = Client::connect_with(addr, with_token(Some(TOKEN)))
        .await
        .unwrap();
    assert_eq!(client.call("in").await.unwrap(), "in");
    stop.cancel();
}

#[tokio::test]
async fn a_wrong_or_missing_token_gets_authentication_failed() {
    let (addr, stats, stop) = start().await;
    for token in [Some("wrong"), None, Some("s3cret-token-for-test"), Some("")] {
        // The client's HELLO is the last message of the handshake, so the verdict comes
        // with the first call.
        let client = Client::connect_with(addr, with_token(token)).await.unwrap();
        match client.call("let me in").await.unwrap_err() {
            ClientError::Server { code, message } => {
                assert_eq!(code, ErrorCode::AuthFailed, "{token:?}");
                assert_eq!(message, "authentication failed");
            }
            other => panic!("{token:?}: expected authentication failed, got {other}"),
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while stats.snapshot().closed(CloseReason::AuthFailed) < 4 {
        assert!(std::time::Instant::now() < deadline, "{}", stats.snapshot());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
}

#[tokio::test]
async fn nothing_is_answered_before_authentication() {
    let (addr, stats, stop) = start().await;
    // A wrong token with a REQUEST, a PING and a STATS pipelined right behind it.
    let mut hello = Hello::new(1 << 20);
    hello
        .fields
        .push((HELLO_AUTH_TOKEN, Bytes::from_static(b"guess")));
    let bytes = encode_all([
        Frame::hello(&hello),
        Frame::request(1, "sneak"),
        Frame::new(Kind::Ping, 2, "ping"),
        Frame::new(Kind::Stats, 3, ""),
    ]);
    let mut peer = RawPeer::connect(addr).await;
    assert_eq!(peer.recv().await.map(|f| f.kind), Some(Kind::Hello));
    peer.send_raw(&bytes).await;
    let (frame, _) = peer.expect_error(ErrorCode::AuthFailed).await;
    assert_eq!(frame.id, 0);
    peer.expect_closed().await;
    let snapshot = stats.snapshot();
    assert_eq!((snapshot.requests, snapshot.pings), (0, 0), "{snapshot}");

    // A request before any HELLO is refused too, and never reaches the handler.
    let mut peer = RawPeer::connect(addr).await;
    assert_eq!(peer.recv().await.map(|f| f.kind), Some(Kind::Hello));
    peer.send(Frame::request(1, "early")).await;
    peer.expect_error(ErrorCode::Protocol).await;
    peer.expect_closed().await;
    assert_eq!(stats.snapshot().requests, 0);

    // The token first, then the same requests: answered.
    let mut hello = Hello::new(1 << 20);
    hello
        .fields
        .push((HELLO_AUTH_TOKEN, Bytes::from_static(TOKEN.as_bytes())));
    let mut peer = RawPeer::connect(addr).await;
    assert_eq!(peer.recv().await.map(|f| f.kind), Some(Kind::Hello));
    peer.send_raw(&encode_all([
        Frame::hello(&hello),
        Frame::request(1, "after"),
    ]))
    .await;
    let reply = peer.recv().await.unwrap();
    assert_eq!(
        (reply.kind, &reply.payload[..]),
        (Kind::Reply, &b"after"[..])
    );
    stop.cancel();
}

#[test]
fn token_comparison_is_exact() {
    let token = AuthToken::new("abc").unwrap();
    assert!(token.matches(b"abc"));
    for other in [&b""[..], b"ab", b"abcd", b"abd", b"ABC"] {
        assert!(!token.matches(other), "{other:?}");
    }
    assert!(AuthToken::new("").is_err());
    assert!(AuthToken::new(vec![b'x'; 1025]).is_err());
    assert!(
        !format!("{token:?}").contains("abc"),
        "Debug shows the token"
    );
}

#[cfg(unix)]
fn token_file(mode: u32) -> tempfile_path::TempPath {
    tempfile_path::write(TOKEN.as_bytes(), mode)
}

/// A file in the target directory, removed on drop (no extra dependency).
#[cfg(unix)]
mod tempfile_path {
    use std::path::PathBuf;

    pub(super) struct TempPath(pub(super) PathBuf);

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    pub(super) fn write(bytes: &[u8], mode: u32) -> TempPath {
        use std::os::unix::fs::PermissionsExt;
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join(format!(
            "token-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&path, [bytes, b"\n"].concat()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        TempPath(path)
    }
}

#[cfg(unix)]
#[test]
fn the_cli_serves_with_a_token_file_and_sends_with_the_token() {
    let file = token_file(0o600);
    let path = file.0.to_str().unwrap();
    let server = Served::start(&["--auth-token-file", path], &[]);
    let with = Command::new(BIN)
        .args(["send", "--data", "hi", "--output", "text", &server.addr])
        .env("COURIER_AUTH_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&with.stdout).trim(), "hi");
    let from_file = Command::new(BIN)
        .args([
            "send",
            "--data",
            "hi",
            "--auth-token-file",
            path,
            &server.addr,
        ])
        .env_remove("COURIER_AUTH_TOKEN")
        .output()
        .unwrap();
    assert!(from_file.status.success());
    let without = Command::new(BIN)
        .args(["send", "--data", "hi", &server.addr])
        .env_remove("COURIER_AUTH_TOKEN")
        .output()
        .unwrap();
    // The server answered with an ERROR: exit status 5.
    assert_eq!(without.status.code(), Some(5));
    let err = String::from_utf8_lossy(&without.stderr);
    assert!(err.contains("authentication failed"), "{err}");
    let (_, log) = server.terminate();
    assert!(!log.contains("other users may read it"), "{log}");
    assert!(log.contains("auth_failed"), "{log}");
}

#[cfg(unix)]
#[test]
fn a_token_file_readable_by_others_is_warned_about() {
    let file = token_file(0o644);
    let path = file.0.to_str().unwrap();
    let server = Served::start(&["--auth-token-file", path], &[]);
    let (_, log) = server.terminate();
    assert!(
        log.contains("other users may read it") && log.contains("644"),
        "{log}"
    );
}

#[test]
fn listening_beyond_loopback_unprotected_is_refused_unless_allowed() {
    let refused = Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env_remove("COURIER_AUTH_TOKEN")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0") && err.contains("--allow-insecure"),
        "{err}"
    );
    // Accepting the risk, or protecting it with a token, lets it start.
    let allowed = Served::start_at("0.0.0.0:0", &["--allow-insecure"], &[]);
    allowed.terminate();
    let protected = Served::start_at("0.0.0.0:0", &[], &[("COURIER_AUTH_TOKEN", TOKEN)]);
    protected.terminate();
}

#[tokio::test]
async fn a_token_server_answers_the_bench_only_with_the_token() {
    let (addr, _, stop) = start().await;
    let mut config = courier::bench::BenchConfig {
        addr: addr.to_string(),
        connections: 1,
        pipeline: 1,
        size: 8,
        duration: Duration::from_secs(1),
        requests: Some(10),
        warmup: Duration::ZERO,
        auth_token: Some(Bytes::from_static(TOKEN.as_bytes())),
        ..courier::bench::BenchConfig::default()
    };
    let report = courier::bench::run(&config, std::sync::Arc::default())
        .await
        .expect("the bench runs with the token");
    assert_eq!((report.requests, report.errors), (10, 0));
    config.auth_token = None;
    let report = courier::bench::run(&config, std::sync::Arc::default())
        .await
        .expect("the bench runs and reports the failure");
    assert_eq!(report.requests, 0);
    assert!(report.errors > 0, "{report:?}");
    stop.cancel();
}
