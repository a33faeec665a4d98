//! The core exchange on every transport: the same protocol, handler, limits and shutdown
//! over TCP and over a Unix domain socket. Then what is particular to Unix sockets: the
//! file's permissions, stale and live files, removal at shutdown, and the peer's uid and
//! pid in the log.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use courier::client::{Client, ClientConfig, ClientError};
use courier::codec::ErrorCode;
use courier::config::Config;
use courier::server::{HandlerError, Request, Server};
use courier::stats::Stats;
use courier::transport::Listener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Echo; a payload starting with "slow" is answered after 200 ms; "fail" fails.
async fn handler(request: Request) -> Result<Bytes, HandlerError> {
    if request.payload.starts_with(b"slow") {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if request.payload.starts_with(b"fail") {
        return Err(HandlerError::new("asked to fail"));
    }
    Ok(request.payload)
}

struct Running {
    addr: String,
    stats: Arc<Stats>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

async fn serve(listen: &str, config: Config) -> Running {
    let listener = Listener::bind(listen, 128, config.socket_mode())
        .await
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    let server = Server::new(config, handler);
    let stats = server.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(server.run(listener, stop.clone().cancelled_owned()));
    Running {
        addr,
        stats,
        stop,
        task,
    }
}

/// A Unix socket path in the target directory, unique to this test.
fn socket_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("{name}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// The exchange every transport must carry the same way.
async fn core_exchange(listen: &str) {
    let config = Config {
        max_frame: 1024,
        ..common::test_config()
    };
    let server = serve(listen, config).await;
    let client = Client::connect(server.addr.as_str())
        .await
        .expect("connect");

    // One call, then 200 at once on the same connection, answered out of order.
    assert_eq!(client.call("hello").await.unwrap(), "hello");
    let calls = (0..200).map(|n| {
        let client = client.clone();
        async move {
            let payload = if n % 10 == 0 {
                format!("slow {n}")
            } else {
                format!("call {n}")
            };
            (client.call(payload.clone()).await.unwrap(), payload)
        }
    });
    for (reply, payload) in futures::future::join_all(calls).await {
        assert_eq!(reply, payload);
    }

    // A handler error is that call's ERROR; the connection survives.
    match client.call("fail now").await.unwrap_err() {
        ClientError::Server { code, .. } => assert_eq!(code, ErrorCode::HandlerFailed),
        other => panic!("{other}"),
    }
    // The limit: a payload over max_frame is refused before it is sent.
    assert!(matches!(
        client.call(vec![0u8; 1025]).await.unwrap_err(),
        ClientError::FrameTooLarge { max: 1024, .. }
    ));
    assert_eq!(client.ping("p").await.unwrap(), "p");
    let snapshot = client.stats().await.unwrap();
    assert_eq!(snapshot.requests, 202);
    assert_eq!(snapshot.open, 1);

    // Shutdown: requests in flight are answered, then GOAWAY and the close.
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.call("slow at shutdown").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.stop.cancel();
    assert_eq!(slow.await.unwrap().unwrap(), "slow at shutdown");
    server.task.await.unwrap();
    assert!(matches!(
        client.call("after").await.unwrap_err(),
        ClientError::GoingAway | ClientError::Closed { .. }
    ));
    assert_eq!(server.stats.snapshot().open, 0);
}

#[tokio::test]
async fn core_exchange_over_tcp() {
    core_exchange("127.0.0.1:0").await;
}

#[cfg(unix)]
#[tokio::test]
async fn core_exchange_over_a_unix_socket() {
    let path = socket_path("core");
    core_exchange(&format!("unix:{}", path.display())).await;
    assert!(!path.exists(), "the socket file is removed at shutdown");
}

#[cfg(unix)]
mod unix {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn the_socket_file_is_owner_only_by_default_and_as_configured_otherwise() {
        let path = socket_path("mode");
        let listen = format!("unix:{}", path.display());
        let listener = Listener::bind(&listen, 16, Config::default().socket_mode())
            .await
            .unwrap();
        assert_eq!(mode(&path), 0o600);
        drop(listener);
        assert!(!path.exists(), "dropping the listener removes the file");

        let config = Config {
            socket_mode: "0660".into(),
            ..Config::default()
        };
        let listener = Listener::bind(&listen, 16, config.socket_mode())
            .await
            .unwrap();
        assert_eq!(mode(&path), 0o660);
        drop(listener);
    }

    #[tokio::test]
    async fn a_stale_socket_file_is_replaced_and_a_live_one_is_not() {
        let path = socket_path("stale");
        let listen = format!("unix:{}", path.display());
        // A server that died: its socket file stays behind, nobody listens.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let server = serve(&listen, common::test_config()).await;
        let client = Client::connect(server.addr.as_str()).await.unwrap();
        assert_eq!(
            client.call("over the replaced file").await.unwrap(),
            "over the replaced file"
        );

        // A second server on the same path while the first is alive: refused, clearly,
        // and the first keeps serving.
        let err = Listener::bind(&listen, 16, 0o600).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("already listening"), "{err}");
        assert_eq!(client.call("still mine").await.unwrap(), "still mine");
        server.stop.cancel();
        server.task.await.unwrap();
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_path_that_is_not_a_socket_is_left_alone() {
        let path = socket_path("regular");
        std::fs::write(&path, b"not a socket").unwrap();
        let err = Listener::bind(&format!("unix:{}", path.display()), 16, 0o600)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("is not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test]
    async fn a_client_of_a_missing_socket_is_refused_by_name() {
        let path = socket_path("missing");
        let err = Client::connect_with(
            format!("unix:{}", path.display()).as_str(),
            ClientConfig::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ClientError::Refused { .. }), "{err}");
        assert!(err.to_string().contains("unix:"), "{err}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_server_logs_each_unix_peers_uid_and_pid() {
        let path = socket_path("cred");
        let listen = format!("unix:{}", path.display());
        let server = common::Served::start_at(&listen, &["--handshake-timeout", "100ms"], &[]);
        let output = std::process::Command::new(common::BIN)
            .args(["send", "--data", "x", &listen])
            .output()
            .unwrap();
        assert!(output.status.success());
        // Another connection that the handshake deadline closes, so that its close is logged
        // at info with the peer's identity.
        let stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
        // The socket file belongs to this test's user, which is also the peer's.
        let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&path).unwrap());
        let pid = std::process::id();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !server.log_text().contains("handshake_timeout") {
            assert!(
                std::time::Instant::now() < deadline,
                "{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(stream);
        let log = server.log_text();
        assert!(
            log.contains(&format!("peer=unix uid={uid} pid={pid}")),
            "{log}"
        );
        let (status, _) = server.terminate();
        assert!(status.success());
        assert!(!path.exists());
    }
}
