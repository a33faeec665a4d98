//! Scale-out behind a real load balancer: HAProxy in `mode tcp` in front of two
//! `courier serve` processes (A and B) with `--max-connection-age`, its health check on
//! each server's `/readyz`. Many `client::Reconnecting` clients call through HAProxy and
//! verify every reply while A is restarted (SIGTERM, wait for its exit, start again on the
//! same ports), then B.
//!
//! Rules checked:
//! - lost = 0: every reply matches its request;
//! - errors = 0: no call fails at all (a drain's GOAWAY proves which requests the server
//!   did not read, and Reconnecting resends those on a new connection);
//! - spread: 2 × max_connection_age after a server comes back, it carries 40-60 % of the
//!   open connections (each server's `courier_connections_open`, from its /metrics; the
//!   median of the samples of the window's last half-age).
//!
//! The test installs haproxy with apt-get when it is missing, and skips (one line) where
//! it cannot. COURIER_SCALEOUT_AGE_MS (default 1000) and COURIER_SCALEOUT_CLIENTS (default
//! 20) make it longer and larger: `bench/scaleout` runs it so, in release mode.

#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Served;
use courier::client::{Backoff, ClientConfig, Reconnecting};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// haproxy, installed with apt-get if missing; `None` (after one line) where it cannot be.
fn haproxy() -> Option<String> {
    let found = || {
        Command::new("sh")
            .args(["-c", "command -v haproxy"])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    if let Some(path) = found() {
        return Some(path);
    }
    let installed = Command::new("apt-get")
        .args(["install", "-y", "-q", "haproxy"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    let path = installed.then(found).flatten();
    if path.is_none() {
        eprintln!("skipping: haproxy is missing and `apt-get install -y haproxy` failed");
    }
    path
}

/// One backend: its courier port and its metrics port, kept across restarts.
struct Backend {
    name: &'static str,
    port: u16,
    metrics: u16,
    server: Option<Served>,
}

impl Backend {
    fn new(name: &'static str) -> Backend {
        Backend {
            name,
            port: free_port(),
            metrics: free_port(),
            server: None,
        }
    }

    fn start(&mut self, age: Duration) {
        let age = format!("{}ms", age.as_millis());
        let metrics = format!("127.0.0.1:{}", self.metrics);
        let listen = format!("127.0.0.1:{}", self.port);
        let args = ["--max-connection-age", &age, "--metrics", &metrics];
        self.server = Some(Served::start_at(&listen, &args, &[]));
        let deadline = Instant::now() + Duration::from_secs(10);
        while get(self.metrics, "/readyz").map(|(status, _)| status) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "{} never became ready",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, and the wait for the exit (the drain included).
    fn stop(&mut self) {
        let server = self.server.take().expect("running");
        let (status, log) = server.terminate();
        assert!(
            status.success(),
            "{} exited with {status}:\n{log}",
            self.name
        );
    }

    /// Its `courier_connections_open`.
    fn open(&self) -> u64 {
        let (_, page) = get(self.metrics, "/metrics").expect("metrics answer");
        page.lines()
            .find_map(|line| line.strip_prefix("courier_connections_open "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no open gauge in\n{page}"))
    }
}

/// `GET PATH` on a loopback port: the status and the body; `None` when nothing listens.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// HAProxy in front of the backends, its config in a directory of its own; killed (by
/// its PID) on drop.
struct Balancer {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Balancer {
    fn start(haproxy: &str, backends: &[&Backend]) -> Balancer {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("courier-scaleout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = format!(
            "global\n  maxconn 4096\n\
             defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n  retries 3\n  option redispatch\n\
             frontend courier\n  bind 127.0.0.1:{port}\n  default_backend couriers\n\
             backend couriers\n  balance roundrobin\n  option httpchk GET /readyz\n"
        );
        for backend in backends {
            config += &format!(
                "  server {} 127.0.0.1:{} check port {} inter 100ms fall 1 rise 1\n",
                backend.name, backend.port, backend.metrics
            );
        }
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, config).unwrap();
        let child = Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "haproxy never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        Balancer { child, port, dir }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Default)]
struct Counts {
    sent: u64,
    verified: u64,
    /// Wrong replies.
    lost: Vec<String>,
    /// Calls that failed, whatever the outcome.
    errors: Vec<String>,
}

async fn caller(
    client: Reconnecting,
    name: String,
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<Counts>>,
) {
    let mut seq = 0u64;
    // Bounded: a call takes at least a round trip, and the test stops the callers.
    while !stop.load(Ordering::Relaxed) && seq < 10_000_000 {
        seq += 1;
        let payload = Bytes::from(format!("{name} call {seq}"));
        let result = client.call(payload.clone()).await;
        let failed = {
            let mut counts = counts.lock().unwrap();
            counts.sent += 1;
            match result {
                Ok(reply) if reply == payload => {
                    counts.verified += 1;
                    false
                }
                Ok(reply) => {
                    counts.lost.push(format!("sent {payload:?}, got {reply:?}"));
                    false
                }
                Err(err) => {
                    counts.errors.push(format!("{name} call {seq}: {err}"));
                    true
                }
            }
        };
        if failed {
            // Only so that a failing call cannot spin; there should be none.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Watches the spread for 2 × `age` after `back` returned, printing it as it goes, and
/// returns `back`'s share of the open connections at the end of that window: the median
/// of the samples of its last half-age, since a batch of connections that reached their
/// age together is briefly counted on one server while they reconnect.
fn share_after(back: &Backend, other: &Backend, age: Duration) -> f64 {
    let start = Instant::now();
    let mut last = Vec::new();
    while start.elapsed() < 2 * age {
        let (mine, theirs) = (back.open(), other.open());
        let share = mine as f64 / (mine + theirs).max(1) as f64;
        println!(
            "  {:>5} ms after {} came back: {} {mine}, {} {theirs} ({:.0} %)",
            start.elapsed().as_millis(),
            back.name,
            back.name,
            other.name,
            share * 100.0
        );
        if start.elapsed() >= 2 * age - age / 2 {
            last.push(share);
        }
        std::thread::sleep(age / 8);
    }
    last.sort_by(f64::total_cmp);
    last[last.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restarts_behind_haproxy_lose_nothing_and_spread_again() {
    let Some(haproxy) = tokio::task::block_in_place(haproxy) else {
        return;
    };
    let age = Duration::from_millis(setting("COURIER_SCALEOUT_AGE_MS", 1000));
    let clients = setting("COURIER_SCALEOUT_CLIENTS", 20) as usize;
    let mut a = Backend::new("A");
    let mut b = Backend::new("B");
    tokio::task::block_in_place(|| {
        a.start(age);
        b.start(age);
    });
    let balancer = tokio::task::block_in_place(|| Balancer::start(&haproxy, &[&a, &b]));
    let addr = format!("127.0.0.1:{}", balancer.port);

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Mutex::new(Counts::default()));
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(2),
        call_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    };
    let backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = Reconnecting::new(addr.clone(), config.clone(), backoff);
        for k in 0..2 {
            tasks.push(tokio::spawn(caller(
                client.clone(),
                format!("client {c}.{k}"),
                stop.clone(),
                counts.clone(),
            )));
        }
    }

    let (share_a, share_b) = tokio::task::block_in_place(|| {
        std::thread::sleep(age + age / 2);
        println!("restarting A");
        a.stop();
        a.start(age);
        let share_a = share_after(&a, &b, age);
        println!("restarting B");
        b.stop();
        b.start(age);
        let share_b = share_after(&b, &a, age);
        (share_a, share_b)
    });

    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("a caller stopped within 30 s")
            .expect("a caller panicked");
    }
    drop(balancer);
    let counts = counts.lock().unwrap();
    println!(
        "scale-out: {} clients, max_connection_age {age:?}: {} calls, {} verified, {} lost, {} errors",
        clients,
        counts.sent,
        counts.verified,
        counts.lost.len(),
        counts.errors.len()
    );
    assert!(counts.lost.is_empty(), "lost: {:?}", counts.lost);
    assert!(counts.errors.is_empty(), "errors: {:?}", counts.errors);
    assert!(counts.verified > 0);
    assert!(
        (0.4..=0.6).contains(&share_a),
        "A carries {:.0} % of the connections 2 × max_connection_age after its return",
        share_a * 100.0
    );
    assert!(
        (0.4..=0.6).contains(&share_b),
        "B carries {:.0} % of the connections 2 × max_connection_age after its return",
        share_b * 100.0
    );
}
