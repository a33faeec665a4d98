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
use courier::config::Config;
use courier::handler::{HandlerError, Request};
use courier::server::Server;
use courier::stats::Stats;
use courier::transport::tls::{ClientTls, ServerTls};
use courier::transport::Listener;
use courier::wire::ErrorCode;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Echo; a payload starting with "slow" is answered after 200 ms; "fail" fails; "whoami"
/// gets the client's verified TLS identity.
async fn handler(request: Request) -> Result<Bytes, HandlerError> {
    if &request.payload[..] == b"whoami" {
        let who = request.peer_identity.as_deref().unwrap_or("anonymous");
        return Ok(Bytes::from(who.to_owned()));
    }
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
    serve_tls(listen, config, None).await
}

async fn serve_tls(listen: &str, config: Config, tls: Option<ServerTls>) -> Running {
    let listener = Listener::bind(listen, 128, config.socket_mode())
        .await
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    let mut server = Server::new(config, handler);
    if let Some(tls) = tls {
        server = server.with_tls(tls);
    }
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
async fn core_exchange(listen: &str, tls: Option<ServerTls>, client_config: ClientConfig) {
    let config = Config {
        max_frame: 1024,
        ..common::test_config()
    };
    let server = serve_tls(listen, config, tls).await;
    let client = Client::connect_with(server.addr.as_str(), client_config)
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
    core_exchange("127.0.0.1:0", None, ClientConfig::default()).await;
}

#[cfg(unix)]
#[tokio::test]
async fn core_exchange_over_a_unix_socket() {
    let path = socket_path("core");
    core_exchange(
        &format!("unix:{}", path.display()),
        None,
        ClientConfig::default(),
    )
    .await;
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn courier_bench_loads_a_unix_socket() {
        let path = socket_path("bench");
        let server = serve(&format!("unix:{}", path.display()), common::test_config()).await;
        // One connection at a time runs on a blocking socket; more on the runtime.
        for (connections, pipeline) in [(1, 1), (3, 4)] {
            let config = courier::bench::BenchConfig {
                addr: server.addr.clone(),
                connections,
                pipeline,
                requests: Some(300),
                warmup: Duration::ZERO,
                ..Default::default()
            };
            let report = courier::bench::run(&config, Arc::default()).await.unwrap();
            assert_eq!(
                (report.requests, report.errors, report.mismatches),
                (300, 0, 0),
                "{connections} connections x {pipeline}"
            );
        }
        server.stop.cancel();
        server.task.await.unwrap();
    }

    #[tokio::test]
    async fn plain_framing_works_over_a_unix_socket_too() {
        let path = socket_path("plain");
        let config = Config {
            framing: courier::config::Framing::Plain,
            ..common::test_config()
        };
        let server = serve(&format!("unix:{}", path.display()), config).await;
        let mut client = courier::client::PlainClient::connect(
            server.addr.as_str(),
            Duration::from_secs(5),
            Duration::from_secs(5),
            1 << 20,
        )
        .await
        .unwrap();
        assert_eq!(
            client.call(Bytes::from_static(b"plain")).await.unwrap(),
            "plain"
        );
        drop(client);
        server.stop.cancel();
        server.task.await.unwrap();
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

mod tls {
    use super::*;
    use common::certs::{make, Certs};

    fn certs(name: &str) -> Certs {
        make(
            &PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("certs-{name}-{}", std::process::id())),
        )
    }

    fn server_tls(certs: &Certs, require_client_certs: bool) -> ServerTls {
        let client_ca = require_client_certs.then_some(certs.ca.as_path());
        ServerTls::from_files(&certs.server_cert, &certs.server_key, client_ca)
            .expect("server TLS")
            .0
    }

    fn client(
        ca: &std::path::Path,
        cert: Option<(&PathBuf, &PathBuf)>,
        name: Option<&str>,
    ) -> ClientConfig {
        let tls = ClientTls::from_files(
            ca,
            cert.map(|(c, k)| (c.as_path(), k.as_path())),
            name.map(str::to_owned),
        )
        .expect("client TLS");
        ClientConfig {
            tls: Some(tls),
            connect_timeout: Duration::from_secs(5),
            ..ClientConfig::default()
        }
    }

    #[tokio::test]
    async fn core_exchange_over_tls() {
        let certs = certs("core");
        core_exchange(
            "127.0.0.1:0",
            Some(server_tls(&certs, false)),
            client(&certs.ca, None, None),
        )
        .await;
    }

    #[tokio::test]
    async fn core_exchange_over_mutual_tls_and_the_handler_sees_who_called() {
        let certs = certs("mtls");
        let pair = (&certs.client_cert, &certs.client_key);
        core_exchange(
            "127.0.0.1:0",
            Some(server_tls(&certs, true)),
            client(&certs.ca, Some(pair), None),
        )
        .await;

        let server = serve_tls(
            "127.0.0.1:0",
            common::test_config(),
            Some(server_tls(&certs, true)),
        )
        .await;
        let client =
            Client::connect_with(server.addr.as_str(), client(&certs.ca, Some(pair), None))
                .await
                .unwrap();
        assert_eq!(client.call("whoami").await.unwrap(), "CN=client-a");
        server.stop.cancel();
    }

    #[tokio::test]
    async fn without_a_client_certificate_or_with_a_strangers_the_call_fails() {
        let certs = certs("refused");
        let server = serve_tls(
            "127.0.0.1:0",
            common::test_config(),
            Some(server_tls(&certs, true)),
        )
        .await;
        let stranger = (&certs.stranger_cert, &certs.stranger_key);
        for config in [
            client(&certs.ca, None, None),
            client(&certs.ca, Some(stranger), None),
        ] {
            // TLS 1.3 finishes the client's side before the server has checked its
            // certificate, so the refusal may come at connect or at the first call.
            let result = match Client::connect_with(server.addr.as_str(), config).await {
                Ok(client) => client.call("let me in").await.map(|_| ()),
                Err(err) => Err(err),
            };
            assert!(
                result.is_err(),
                "a client without a valid certificate was served"
            );
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while server
            .stats
            .snapshot()
            .closed(courier::stats::CloseReason::Tls)
            < 2
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{}",
                server.stats.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(server.stats.snapshot().requests, 0);
        server.stop.cancel();
    }

    #[tokio::test]
    async fn a_plaintext_client_on_a_tls_port_is_told_within_the_handshake_deadline() {
        let certs = certs("plain-on-tls");
        let config = Config {
            handshake_timeout: Duration::from_millis(500),
            ..common::test_config()
        };
        let server = serve_tls("127.0.0.1:0", config, Some(server_tls(&certs, false))).await;
        let started = std::time::Instant::now();
        let err = Client::connect(server.addr.as_str()).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        match err {
            ClientError::Tls { reason } => {
                assert!(reason.contains("speaks TLS"), "{reason}");
            }
            other => panic!("expected an ERROR naming TLS, got {other}"),
        }
        server.stop.cancel();
    }

    #[tokio::test]
    async fn a_tls_client_on_a_plaintext_port_fails_with_a_clear_error() {
        let certs = certs("tls-on-plain");
        let server = serve("127.0.0.1:0", common::test_config()).await;
        let started = std::time::Instant::now();
        let err = Client::connect_with(server.addr.as_str(), client(&certs.ca, None, None))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        let text = err.to_string();
        assert!(
            text.contains("TLS handshake failed") && text.contains("does the server speak TLS"),
            "{text}"
        );
        server.stop.cancel();
    }

    #[tokio::test]
    async fn the_server_name_is_checked_and_can_be_overridden() {
        let certs = certs("names");
        let server = serve_tls(
            "127.0.0.1:0",
            common::test_config(),
            Some(server_tls(&certs, false)),
        )
        .await;
        let port = server.addr.rsplit(':').next().unwrap().to_owned();
        // By name: the certificate is for localhost.
        let by_name = format!("localhost:{port}");
        let ok = Client::connect_with(by_name.as_str(), client(&certs.ca, None, None)).await;
        assert!(ok.is_ok(), "{:?}", ok.err());
        // A name the certificate does not carry is refused; the override fixes it.
        let wrong = Client::connect_with(
            server.addr.as_str(),
            client(&certs.ca, None, Some("example.org")),
        )
        .await;
        assert!(wrong
            .unwrap_err()
            .to_string()
            .contains("TLS handshake failed"));
        let fixed = Client::connect_with(
            server.addr.as_str(),
            client(&certs.ca, None, Some("localhost")),
        )
        .await;
        assert!(fixed.is_ok());
        server.stop.cancel();
    }

    #[cfg(unix)]
    #[test]
    fn a_key_readable_by_others_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let certs = certs("perms");
        let (_, warnings) =
            ServerTls::from_files(&certs.server_cert, &certs.server_key, None).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        std::fs::set_permissions(&certs.server_key, std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let (_, warnings) =
            ServerTls::from_files(&certs.server_cert, &certs.server_key, None).unwrap();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("other users may read it")),
            "{warnings:?}"
        );
    }

    #[test]
    fn the_cli_speaks_mutual_tls_end_to_end() {
        let certs = certs("cli");
        let server = common::Served::start(
            &[
                "--tls-cert",
                certs.server_cert.to_str().unwrap(),
                "--tls-key",
                certs.server_key.to_str().unwrap(),
                "--tls-client-ca",
                certs.ca.to_str().unwrap(),
            ],
            &[],
        );
        let output = std::process::Command::new(common::BIN)
            .args([
                "send",
                "--tls-ca",
                certs.ca.to_str().unwrap(),
                "--tls-cert",
                certs.client_cert.to_str().unwrap(),
                "--tls-key",
                certs.client_key.to_str().unwrap(),
                "--data",
                "over tls",
                "--output",
                "text",
                &server.addr,
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "over tls");
        let (status, log) = server.terminate();
        assert!(status.success());
        assert!(
            log.contains("TLS client certificate verified client=CN=client-a"),
            "{log}"
        );
        // The client closed with a close_notify: an orderly end, not an I/O error.
        assert!(!log.contains("io_error"), "{log}");
    }
}
