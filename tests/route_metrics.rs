//! `courier route --metrics`: real backends (`courier serve`, echo) behind a real router.
//! Its /metrics page counts exactly what a bench sent (routed, and spread over the
//! backends), agrees with `courier stats` on the router, and is accepted by promtool;
//! /readyz answers 503 while the router drains a request a backend still holds. The
//! address comes from the flag, `COURIER_METRICS` or the config file's `metrics`, under
//! the same loopback rule as `courier serve`'s.

#![cfg(unix)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::scrape::{bench_requests, get, metrics_addr, promtool_accepts, sample, settled_page};
use common::{Served, BIN};

/// `courier route --listen 127.0.0.1:0 --metrics 127.0.0.1:0` over `backends`.
fn start_router(backends: &[&str]) -> Served {
    let mut args = vec![
        "route",
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
    ];
    for backend in backends {
        args.extend(["--backend", backend]);
    }
    Served::start_courier(&args)
}

/// The series of `name` for one backend.
fn of(name: &str, backend: &str) -> String {
    format!("{name}{{backend=\"{backend}\"}}")
}

/// Waits (at most 10 s) until /metrics shows every one of `backends` up, and returns
/// that page.
fn wait_up(metrics: &str, backends: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, page) = get(metrics, "/metrics");
        let up = |backend: &&str| {
            let series =
                format!("courier_route_backend_health{{backend=\"{backend}\",state=\"up\"}}");
            page.lines().any(|line| line == format!("{series} 1"))
        };
        if backends.iter().all(up) {
            return page;
        }
        assert!(Instant::now() < deadline, "backends never all up:\n{page}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of `route.NAME` in `courier stats ROUTER`'s lines.
fn stats_line(stats: &str, name: &str) -> f64 {
    stats
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{stats}"))
}

#[test]
fn the_routed_counter_and_the_backends_requests_read_exactly_what_a_bench_sent() {
    let one = Served::start(&[], &[]);
    let two = Served::start(&[], &[]);
    let backends = [one.addr.as_str(), two.addr.as_str()];
    let router = start_router(&backends);
    let metrics = metrics_addr(&router);
    let before = wait_up(&metrics, &backends);
    assert_eq!(sample(&before, "courier_route_routed_total"), 0.0);

    const N: u64 = 2_000;
    bench_requests(&router.addr, N);
    // The router's own counters of a connection are added when its task ends.
    let page = settled_page(&metrics);
    let n = N as f64;
    assert_eq!(sample(&page, "courier_route_routed_total"), n);
    assert_eq!(sample(&page, "courier_requests_total"), n);
    assert_eq!(sample(&page, "courier_replies_total"), n);
    for counter in ["outcome_unknown", "no_backend", "retry_budget_exhausted"] {
        assert_eq!(
            sample(&page, &format!("courier_route_{counter}_total")),
            0.0,
            "{counter}"
        );
    }
    let mut sent = 0.0;
    for backend in backends {
        sent += sample(&page, &of("courier_route_backend_requests_total", backend));
        assert_eq!(
            sample(&page, &of("courier_route_backend_errors_total", backend)),
            0.0
        );
        assert_eq!(
            sample(&page, &of("courier_route_backend_outstanding", backend)),
            0.0
        );
    }
    // Every request went to one backend once: nothing was lost or sent twice.
    assert_eq!(sent, n, "requests per backend:\n{page}");

    // The same figures as `courier stats`, read from the same place.
    let stats = Command::new(BIN)
        .args(["stats", &router.addr])
        .output()
        .expect("run courier stats");
    assert!(stats.status.success());
    let stats = String::from_utf8_lossy(&stats.stdout);
    assert_eq!(stats_line(&stats, "route.routed"), n);
    for backend in backends {
        let line = format!("route.backend.{backend}.requests");
        let metric = of("courier_route_backend_requests_total", backend);
        assert_eq!(stats_line(&stats, &line), sample(&page, &metric));
    }

    promtool_accepts(&page);
}

/// A file that does not exist yet, for a backend to wait on.
fn gate_path() -> PathBuf {
    std::env::temp_dir().join(format!(
        "courier-route-metrics-gate-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ))
}

#[test]
fn readyz_answers_503_while_the_router_drains() {
    let gate = gate_path();
    // Each request waits for the gate (for at most 20 s), then echoes.
    let held = format!(
        "i=0; while [ ! -e '{}' ] && [ $i -lt 1000 ]; do sleep 0.02; i=$((i+1)); done; cat",
        gate.display()
    );
    let backend = Served::start(&["--exec", &held], &[]);
    let mut router = start_router(&[backend.addr.as_str()]);
    let metrics = metrics_addr(&router);
    wait_up(&metrics, &[backend.addr.as_str()]);
    assert_eq!(get(&metrics, "/readyz").0, 200);
    assert_eq!(get(&metrics, "/healthz").0, 200);

    let mut send = Command::new(BIN)
        .args(["send", &router.addr, "--data", "held", "--output", "text"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run courier send");
    let outstanding = of("courier_route_backend_outstanding", &backend.addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sample(&get(&metrics, "/metrics").1, &outstanding) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the backend"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let term = Command::new("kill")
        .args(["-TERM", &router.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&metrics, "/readyz").0 != 503 {
        assert!(Instant::now() < deadline, "/readyz never answered 503");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Draining, not done: the backend still holds the request, the router still runs
    // and still answers the other probes.
    assert!(router.child_alive(), "{}", router.log_text());
    assert!(
        matches!(send.try_wait(), Ok(None)),
        "the request was answered"
    );
    assert_eq!(get(&metrics, "/healthz").0, 200);
    let (status, page) = get(&metrics, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(sample(&page, &outstanding), 1.0);

    std::fs::write(&gate, "").unwrap();
    let out = send.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&gate);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), "held");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = router.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the router did not exit after its drain"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{}", router.log_text());
}

#[test]
fn router_metrics_off_a_loopback_address_are_refused_without_allow_insecure() {
    let out = Command::new(BIN)
        .args(["route", "--listen", "127.0.0.1:0", "--metrics", "0.0.0.0:0"])
        .output()
        .expect("run courier route");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to serve metrics on 0.0.0.0:0")
            && stderr.contains("--allow-insecure"),
        "{stderr}"
    );
}

#[test]
fn the_metrics_address_comes_from_courier_metrics_too() {
    let router = Served::start_courier_env(
        &["route", "--listen", "127.0.0.1:0"],
        &[("COURIER_METRICS", "127.0.0.1:0")],
    );
    let metrics = metrics_addr(&router);
    let (status, page) = get(&metrics, "/metrics");
    assert_eq!(status, 200);
    // No backend: the router's counters, and no backend series.
    assert_eq!(sample(&page, "courier_route_routed_total"), 0.0);
    assert!(!page.contains("courier_route_backend_"), "{page}");
}

#[test]
fn route_help_explains_metrics() {
    let out = Command::new(BIN)
        .args(["route", "--help"])
        .output()
        .expect("run courier route --help");
    let help = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "--metrics <ADDR>",
        "/metrics",
        "/healthz",
        "/readyz",
        "backend=\"ADDR\"",
        "loopback only unless --allow-insecure",
        "[default: off]",
        "COURIER_METRICS",
    ] {
        assert!(help.contains(expected), "--help lacks {expected}:\n{help}");
    }
}

#[test]
fn the_metrics_key_of_the_config_file_is_read() {
    let path = gate_path().with_extension("toml");
    std::fs::write(&path, "metrics = \"127.0.0.1:0\"\n").unwrap();
    let router = Served::start_courier(&[
        "route",
        "--listen",
        "127.0.0.1:0",
        "--config",
        path.to_str().unwrap(),
    ]);
    let metrics = metrics_addr(&router);
    let _ = std::fs::remove_file(&path);
    assert_eq!(get(&metrics, "/readyz").0, 200);
    let (_, page) = get(&metrics, "/metrics");
    assert_eq!(sample(&page, "courier_route_no_backend_total"), 0.0);
}
