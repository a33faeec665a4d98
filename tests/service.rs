//! Running as a service: `--metrics` (the counters read by Prometheus's own tools, exact
//! after a bench), `/healthz` and `/readyz` across a drain, systemd's notify protocol
//! played by the test (READY=1, STOPPING=1, WATCHDOG=1), the unit file verified by
//! systemd-analyze, and `--max-connection-age` rotating connections under a
//! `client::Reconnecting` that never sees an error.

mod common;

#[cfg(unix)]
mod unix {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::common::scrape::{
        bench_requests, get, metrics_addr, promtool_accepts, sample, settled_page, tool,
    };
    use super::common::{Served, BIN};

    #[test]
    fn errors_are_counted_by_code() {
        let server = Served::start(&["--metrics", "127.0.0.1:0", "--exec", "exit 3"], &[]);
        let metrics = metrics_addr(&server);
        let failed = "courier_error_replies_total{code=\"11\",name=\"handler failed\"}";
        let (_, before) = get(&metrics, "/metrics");
        assert_eq!(sample(&before, failed), 0.0);
        for _ in 0..3 {
            let send = Command::new(BIN)
                .args(["send", &server.addr, "--data", "x"])
                .output()
                .expect("run courier send");
            assert_eq!(send.status.code(), Some(5), "a server ERROR: exit status 5");
        }
        let page = settled_page(&metrics);
        assert_eq!(sample(&page, failed), 3.0);
        assert_eq!(sample(&page, "courier_errors_total"), 3.0);
        let too_large = "courier_error_replies_total{code=\"4\",name=\"frame too large\"}";
        assert_eq!(sample(&page, too_large), 0.0);
        let application = "courier_error_replies_total{code=\"application\",name=\"application\"}";
        assert_eq!(sample(&page, application), 0.0);
    }

    #[test]
    fn the_requests_counter_reads_exactly_what_a_bench_sent_and_promtool_accepts_the_page() {
        let server = Served::start(&["--metrics", "127.0.0.1:0"], &[]);
        let metrics = metrics_addr(&server);
        let (status, before) = get(&metrics, "/metrics");
        assert_eq!(status, 200);
        assert_eq!(sample(&before, "courier_requests_total"), 0.0);

        const N: u64 = 2_000;
        bench_requests(&server.addr, N);
        // The bench's connections have closed once its process exited; their last
        // counts are added when each connection task ends.
        let page = settled_page(&metrics);
        assert_eq!(sample(&page, "courier_requests_total"), N as f64);
        assert_eq!(sample(&page, "courier_replies_total"), N as f64);
        assert_eq!(sample(&page, "courier_errors_total"), 0.0);
        assert_eq!(
            sample(&page, "courier_request_duration_seconds_count"),
            N as f64
        );
        assert_eq!(sample(&page, "courier_requests_in_flight"), 0.0);
        // Each request and reply is a 9-byte header and the bench's 64-byte payload; the
        // four HELLOs each way add a little.
        let frames = (N * (9 + 64)) as f64;
        for name in ["courier_bytes_in_total", "courier_bytes_out_total"] {
            let bytes = sample(&page, name);
            assert!(
                bytes >= frames && bytes <= frames + 4.0 * 100.0,
                "{name} {bytes}, expected {frames} and four HELLOs"
            );
        }
        assert_eq!(
            sample(
                &page,
                "courier_connections_closed_total{reason=\"peer_closed\"}"
            ),
            4.0
        );

        promtool_accepts(&page);
    }

    #[test]
    fn a_real_prometheus_server_scrapes_the_endpoint() {
        let Some(prometheus) = tool("prometheus", "prometheus") else {
            return;
        };
        let server = Served::start(&["--metrics", "127.0.0.1:0"], &[]);
        let metrics = metrics_addr(&server);
        let bench = Command::new(BIN)
            .args([
                "bench",
                &server.addr,
                "-c",
                "2",
                "-n",
                "500",
                "--warmup",
                "0s",
            ])
            .output()
            .expect("run courier bench");
        assert!(bench.status.success());

        let dir = std::env::temp_dir().join(format!("courier-prometheus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 200ms\n  scrape_timeout: 100ms\n\
                 scrape_configs:\n  - job_name: courier\n    static_configs:\n      - targets: ['{metrics}']\n"
            ),
        )
        .unwrap();
        let web = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let mut child = Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        // The scrape lands within a few intervals of the server's start; bounded at 60 s.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        let value = loop {
            if let Ok(mut stream) = TcpStream::connect(&web) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let request = format!(
                    "GET /api/v1/query?query=courier_requests_total HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n"
                );
                let mut response = String::new();
                if stream.write_all(request.as_bytes()).is_ok()
                    && stream.read_to_string(&mut response).is_ok()
                {
                    last = response;
                    let json = last.split_once("\r\n\r\n").map_or("", |(_, body)| body);
                    let value = serde_json::from_str::<serde_json::Value>(json)
                        .ok()
                        .and_then(|json| {
                            json["data"]["result"][0]["value"][1]
                                .as_str()
                                .map(str::to_owned)
                        });
                    if let Some(value) = value {
                        break Some(value);
                    }
                }
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(value.as_deref(), Some("500"), "last answer: {last}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_worker_pool_reports_busy_workers_and_restarts() {
        // Each worker echoes one plain frame ("hello" is 4 + 5 bytes) after a pause, then
        // exits: every request leaves a worker to restart.
        let server = tokio::task::block_in_place(|| {
            Served::start(
                &[
                    "--exec",
                    "sleep 0.3; head -c 9",
                    "--exec-workers",
                    "2",
                    "--metrics",
                    "127.0.0.1:0",
                ],
                &[],
            )
        });
        let metrics = metrics_addr(&server);
        let page = get(&metrics, "/metrics").1;
        assert_eq!(sample(&page, "courier_exec_workers"), 2.0);
        assert_eq!(sample(&page, "courier_exec_workers_busy"), 0.0);
        let client = courier::client::Client::connect(server.addr.as_str())
            .await
            .unwrap();
        let call = tokio::spawn(async move { client.call("hello").await });
        let deadline = Instant::now() + Duration::from_secs(10);
        while sample(&get(&metrics, "/metrics").1, "courier_exec_workers_busy") < 1.0 {
            assert!(Instant::now() < deadline, "no worker ever busy");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(call.await.unwrap().unwrap(), "hello");
        let deadline = Instant::now() + Duration::from_secs(10);
        let page = loop {
            let page = get(&metrics, "/metrics").1;
            if sample(&page, "courier_exec_worker_restarts_total") >= 1.0 {
                break page;
            }
            assert!(Instant::now() < deadline, "no restart counted:\n{page}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(sample(&page, "courier_exec_workers_busy"), 0.0);
    }

    #[test]
    fn metrics_off_a_loopback_address_are_refused_without_allow_insecure() {
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--metrics", "0.0.0.0:0"])
            .output()
            .expect("run courier serve");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("refusing to serve metrics on 0.0.0.0:0")
                && stderr.contains("--allow-insecure"),
            "{stderr}"
        );
    }

    #[test]
    fn the_unit_file_passes_systemd_analyze_verify() {
        let Some(analyze) = tool("systemd-analyze", "systemd") else {
            return;
        };
        let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/config/courier.service");
        // The unit names the binary's installed path; verify checks that it exists, so
        // point it at the binary cargo built, in a copy.
        let dir = std::env::temp_dir().join(format!("courier-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = std::fs::read_to_string(unit).unwrap();
        assert!(text.contains("ExecStart=/usr/local/bin/courier "), "{text}");
        let copy = dir.join("courier.service");
        std::fs::write(
            &copy,
            text.replace("/usr/local/bin/courier", BIN)
                .replace("/etc/courier/courier.toml", unit),
        )
        .unwrap();
        let out = Command::new(analyze)
            .arg("verify")
            .arg(&copy)
            .output()
            .expect("run systemd-analyze");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success(), "systemd-analyze verify: {stderr}");
        let about_our_unit: Vec<_> = stderr
            .lines()
            .filter(|line| line.contains("courier.service"))
            .collect();
        assert!(about_our_unit.is_empty(), "{stderr}");
    }
}

#[cfg(unix)]
mod notify {
    use std::os::unix::net::UnixDatagram;
    use std::process::Command;
    use std::time::{Duration, Instant};

    use super::common::scrape::{get, metrics_addr, sample};
    use super::common::Served;
    use courier::client::Client;

    /// The notify socket systemd would give a service: a datagram socket in a temporary
    /// directory.
    struct NotifySocket {
        socket: UnixDatagram,
        path: std::path::PathBuf,
    }

    impl NotifySocket {
        fn new(name: &str) -> NotifySocket {
            let path = std::env::temp_dir()
                .join(format!("courier-notify-{name}-{}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            NotifySocket { socket, path }
        }

        /// The next message, waiting up to `within`.
        fn next(&self, within: Duration) -> Option<String> {
            let deadline = Instant::now() + within;
            let mut buffer = [0u8; 4096];
            while Instant::now() < deadline {
                if let Ok(len) = self.socket.recv(&mut buffer) {
                    return Some(String::from_utf8_lossy(&buffer[..len]).into_owned());
                }
            }
            None
        }
    }

    impl Drop for NotifySocket {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ready_comes_once_the_port_accepts_and_stopping_before_the_drains_last_reply() {
        let notify = NotifySocket::new("ready");
        let socket_path = notify.path.to_str().unwrap().to_owned();
        let server = tokio::task::block_in_place(|| {
            Served::start(
                &["--exec", "sleep 1; cat", "--metrics", "127.0.0.1:0"],
                &[("NOTIFY_SOCKET", &socket_path)],
            )
        });
        let ready = notify.next(Duration::from_secs(30));
        assert_eq!(ready.as_deref(), Some("READY=1\n"));
        // READY=1 came: the port takes a connection and a HELLO now, not later.
        let client = Client::connect(server.addr.as_str())
            .await
            .expect("the port accepts once READY=1 came");
        let metrics = metrics_addr(&server);
        assert_eq!(get(&metrics, "/readyz").0, 200);

        let call = tokio::spawn(async move { client.call("slow").await });
        let deadline = Instant::now() + Duration::from_secs(10);
        while sample(&get(&metrics, "/metrics").1, "courier_requests_in_flight") < 1.0 {
            assert!(Instant::now() < deadline, "the request never got in flight");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = Command::new("kill")
            .args(["-TERM", &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let stopping = notify.next(Duration::from_secs(10));
        assert_eq!(stopping.as_deref(), Some("STOPPING=1\n"));
        assert!(
            !call.is_finished(),
            "STOPPING=1 came after the drain's last reply"
        );
        // Draining: not ready, still alive, and the request in flight is answered.
        let (ready, _) = get(&metrics, "/readyz");
        let (alive, _) = get(&metrics, "/healthz");
        assert_eq!((ready, alive), (503, 200));
        let reply = call.await.unwrap().expect("the drain answers the request");
        assert_eq!(reply, "slow");
        let mut server = server;
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "no exit within 20 s of SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "{}", server.log_text());
    }

    #[test]
    fn the_watchdog_is_fed_when_the_unit_sets_one() {
        let notify = NotifySocket::new("watchdog");
        let socket_path = notify.path.to_str().unwrap().to_owned();
        let _server = Served::start(
            &[],
            &[("NOTIFY_SOCKET", &socket_path), ("WATCHDOG_USEC", "200000")],
        );
        assert_eq!(
            notify.next(Duration::from_secs(30)).as_deref(),
            Some("READY=1\n")
        );
        for _ in 0..3 {
            assert_eq!(
                notify.next(Duration::from_secs(10)).as_deref(),
                Some("WATCHDOG=1\n")
            );
        }
    }

    #[test]
    fn no_watchdog_is_sent_for_another_process() {
        let notify = NotifySocket::new("otherpid");
        let socket_path = notify.path.to_str().unwrap().to_owned();
        let _server = Served::start(
            &[],
            &[
                ("NOTIFY_SOCKET", &socket_path),
                ("WATCHDOG_USEC", "100000"),
                ("WATCHDOG_PID", "1"),
            ],
        );
        assert_eq!(
            notify.next(Duration::from_secs(30)).as_deref(),
            Some("READY=1\n")
        );
        assert_eq!(notify.next(Duration::from_millis(500)), None);
    }
}

mod max_age {
    use std::sync::Arc;
    use std::time::Duration;

    use courier::client::{Backoff, ClientConfig, Reconnecting};
    use courier::handler::Builtin;
    use courier::server::Server;
    use courier::stats::CloseReason;
    use tokio_util::sync::CancellationToken;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn old_connections_get_goaway_and_reconnecting_callers_never_see_it() {
        let config = courier::config::Config {
            max_connection_age: Duration::from_millis(150),
            ..super::common::test_config()
        };
        let server = Server::new(config, Builtin::Echo);
        let stats = server.stats();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(listener, stop.clone().cancelled_owned()));

        // Calls on an echo server take microseconds; a stuck one fails in 10 s, not 30.
        let config = ClientConfig {
            call_timeout: Duration::from_secs(10),
            ..ClientConfig::default()
        };
        let client = Reconnecting::new(addr, config, Backoff::default());
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut callers = Vec::new();
        for caller in 0..8 {
            let client = client.clone();
            let failures = failures.clone();
            callers.push(tokio::spawn(async move {
                // About a second of calls per caller: several connection ages.
                let until = tokio::time::Instant::now() + Duration::from_secs(1);
                let mut calls = 0u64;
                while tokio::time::Instant::now() < until && calls < 1_000_000 {
                    calls += 1;
                    let payload = format!("caller {caller} call {calls}");
                    match client.call(payload.clone()).await {
                        Ok(reply) if reply == payload => {}
                        Ok(reply) => failures
                            .lock()
                            .unwrap()
                            .push(format!("{payload}: wrong reply {reply:?}")),
                        Err(err) => failures.lock().unwrap().push(format!("{payload}: {err}")),
                    }
                }
                calls
            }));
        }
        let mut calls = 0;
        for caller in callers {
            calls += caller.await.unwrap();
        }
        stop.cancel();
        task.await.unwrap();
        let failures = failures.lock().unwrap();
        assert!(
            failures.is_empty(),
            "{} failed: {failures:?}",
            failures.len()
        );
        let snapshot = stats.snapshot();
        // One connection at a time, rotated every 135-165 ms for a second.
        assert!(
            snapshot.accepted >= 4,
            "{calls} calls on {} connections",
            snapshot.accepted
        );
        assert!(
            snapshot.closed(CloseReason::Drained) >= 3,
            "{:?}",
            snapshot.closed
        );
        // Every call was read once: the resent ones had not been read before.
        assert_eq!(snapshot.requests, calls, "{snapshot:?}");
        assert_eq!(snapshot.replies, calls, "{snapshot:?}");
    }
}
