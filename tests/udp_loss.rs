//! UDP over a lossy network for real: a network namespace of our own whose loopback drops
//! datagrams at random (an nftables rule, `numgen random mod 100 < P drop`, on input),
//! with `courier serve --exec` appending each request's payload to a log, and the test's
//! own client (this test binary, run again inside the namespace) making unique calls, 32
//! in flight. For duplication and reordering, a seeded relay (`common/relay.rs`) sits
//! between the client and the server.
//!
//! Needs root, `ip netns` and nftables (installed with apt-get when missing); where they
//! cannot be had, each test prints one line saying so and passes. The number of calls is
//! `COURIER_UDP_LOSS_CALLS` (1000 by default; `bench/udp_loss` runs 10,000).

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::relay::{self, Faults};
use common::{Served, BIN};
use courier::client::{Client, ClientConfig, ClientError};

/// What the child prints, on one line: `UDP-LOSS ok=N timeouts=N other=N`.
const RESULT_TAG: &str = "UDP-LOSS";

/// A namespace of ours, deleted on drop.
struct Namespace(String);

impl Namespace {
    /// A namespace with loopback up and `loss` % of UDP datagrams dropped on input,
    /// only those to or from `port` when given; `None` (after printing why) when this
    /// machine cannot have one.
    fn new(tag: &str, loss: u32, port: Option<u16>) -> Option<Namespace> {
        if !nft_available() {
            return None;
        }
        let name = format!("courier-{tag}-{}", std::process::id());
        let _ = run("ip", &["netns", "del", &name]);
        if !run("ip", &["netns", "add", &name]) {
            println!("skipped: cannot create a network namespace (ip netns add needs root)");
            return None;
        }
        let ns = Namespace(name);
        let matches: Vec<String> = match port {
            Some(port) => vec![format!("udp dport {port}"), format!("udp sport {port}")],
            None => vec!["meta l4proto udp".into()],
        };
        let mut ok = ns.exec(&["ip", "link", "set", "lo", "up"])
            && ns.exec(&["nft", "add", "table", "inet", "loss"])
            && ns.exec(&[
                "nft",
                "add chain inet loss input { type filter hook input priority 0 ; }",
            ]);
        for rule in matches {
            let rule =
                format!("add rule inet loss input {rule} numgen random mod 100 < {loss} drop");
            ok = ok && ns.exec(&["nft", &rule]);
        }
        if !ok {
            println!("skipped: cannot set up loopback and the nftables loss rule in the namespace");
            return None;
        }
        Some(ns)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.0]).args(args);
        command
    }

    fn exec(&self, args: &[&str]) -> bool {
        self.command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.0]);
    }
}

fn run(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `nft` is there, installing nftables when it is not.
fn nft_available() -> bool {
    if run("nft", &["--version"]) {
        return true;
    }
    let installed = Command::new("apt-get")
        .args(["install", "-y", "-q", "nftables"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed || !run("nft", &["--version"]) {
        println!("skipped: nftables is not installed and apt-get could not install it");
        return false;
    }
    true
}

fn calls() -> usize {
    std::env::var("COURIER_UDP_LOSS_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

/// What one run gave.
#[derive(Debug)]
struct Run {
    ok: usize,
    timeouts: usize,
    other: usize,
    /// The lines the server's command wrote: one per run of a request.
    log: Vec<String>,
    cache_hits: u64,
}

/// Serves in `ns` with a command that logs each payload, runs the client there, and
/// collects what both saw.
fn lossy_run(ns: &Namespace, port: u16, faults: Option<Faults>, calls: usize) -> Run {
    let dir = std::env::temp_dir().join(format!("courier-udp-loss-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("runs.log");
    let _ = std::fs::remove_file(&log);
    let serve = format!(
        "exec ip netns exec {} {BIN} serve --listen udp:127.0.0.1:{port} --exec 'tee -a {}' --exec-max-children 32 --exec-queue 256",
        ns.0,
        log.display()
    );
    let server = Served::start_shell(&serve);
    let mut child = ns.command(&[
        std::env::current_exe().unwrap().to_str().unwrap(),
        "--exact",
        "udp_loss_child",
        "--ignored",
        "--nocapture",
    ]);
    child
        .env("COURIER_UDP_CHILD_ADDR", format!("127.0.0.1:{port}"))
        .env("COURIER_UDP_CHILD_CALLS", calls.to_string());
    if let Some(f) = faults {
        let spec = format!("{},{},{},{}", f.loss, f.duplicate, f.reorder, f.seed);
        child.env("COURIER_UDP_CHILD_RELAY", spec);
    }
    let output = child.output().expect("run the client in the namespace");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|line| line.starts_with(RESULT_TAG))
        .unwrap_or_else(|| {
            panic!(
                "the client printed no result: {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let field = |name: &str| -> usize {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    // The STATS call crosses the same lossy loopback, and at 20 % loss each way its
    // HELLO exchange and call can all be lost within `stats`' timeouts: it is read-only,
    // so it is simply asked again, a bounded number of times.
    let mut tries = Vec::new();
    let cache_hits = (0..5)
        .find_map(|_| {
            let stats = ns
                .command(&[BIN, "stats", &format!("udp:127.0.0.1:{port}")])
                .output()
                .expect("courier stats");
            let text = String::from_utf8_lossy(&stats.stdout).into_owned();
            let hits = text
                .lines()
                .find_map(|line| line.strip_prefix("udp_cache_hits "))
                .and_then(|v| v.trim().parse().ok());
            tries.push(String::from_utf8_lossy(&stats.stderr).into_owned());
            hits
        })
        .unwrap_or_else(|| panic!("no udp_cache_hits in 5 STATS calls: {tries:?}"));
    drop(server);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    Run {
        ok: field("ok"),
        timeouts: field("timeouts"),
        other: field("other"),
        log: log.lines().map(str::to_owned).collect(),
        cache_hits,
    }
}

/// Every line of the log is a distinct call's payload: no request ran twice.
fn assert_each_ran_at_most_once(run: &Run) {
    let distinct: HashSet<&String> = run.log.iter().collect();
    assert_eq!(distinct.len(), run.log.len(), "a request ran twice");
}

#[test]
fn five_percent_loss_two_percent_duplicates_ten_percent_reordering_every_call_succeeds_once() {
    let port = 7101;
    let Some(ns) = Namespace::new("udp5", 5, Some(port)) else {
        return;
    };
    let calls = calls();
    let faults = Faults {
        loss: 0,
        duplicate: 2,
        reorder: 10,
        seed: 0x5eed_0005,
    };
    let run = lossy_run(&ns, port, Some(faults), calls);
    println!(
        "5% loss, 2% duplicates, 10% reordering (seed {:#x}): {} ok, {} timeouts, {} other; {} runs logged; cache hits {}",
        faults.seed, run.ok, run.timeouts, run.other, run.log.len(), run.cache_hits
    );
    assert_eq!(
        (run.ok, run.timeouts, run.other),
        (calls, 0, 0),
        "every call succeeds"
    );
    assert_each_ran_at_most_once(&run);
    assert_eq!(run.log.len(), calls, "each request ran exactly once");
    assert!(
        run.cache_hits > 0,
        "lost replies were answered from the cache"
    );
}

#[test]
fn twenty_percent_loss_nearly_every_call_succeeds_and_the_rest_time_out() {
    let port = 7102;
    let Some(ns) = Namespace::new("udp20", 20, None) else {
        return;
    };
    let calls = calls();
    let run = lossy_run(&ns, port, None, calls);
    println!(
        "20% loss: {} ok, {} timeouts, {} other; cache hits {}",
        run.ok, run.timeouts, run.other, run.cache_hits
    );
    assert_eq!(
        run.ok + run.timeouts,
        calls,
        "every call ends in a reply or a Timeout"
    );
    assert_eq!(run.other, 0);
    assert!(
        run.ok * 100 >= calls * 99,
        "{} of {calls} succeeded",
        run.ok
    );
    assert_each_ran_at_most_once(&run);
    assert!(run.log.len() >= run.ok, "each answered call ran");
    assert!(
        run.cache_hits > 0,
        "lost replies were answered from the cache"
    );
}

/// The client side, run inside the namespace by the tests above (ignored otherwise).
#[test]
#[ignore = "run by the lossy-network tests, inside their namespace"]
fn udp_loss_child() {
    let Ok(addr) = std::env::var("COURIER_UDP_CHILD_ADDR") else {
        return;
    };
    let calls: usize = std::env::var("COURIER_UDP_CHILD_CALLS")
        .unwrap()
        .parse()
        .unwrap();
    let relay = std::env::var("COURIER_UDP_CHILD_RELAY").ok().map(|spec| {
        let n: Vec<u64> = spec.split(',').map(|v| v.parse().unwrap()).collect();
        Faults {
            loss: n[0] as u32,
            duplicate: n[1] as u32,
            reorder: n[2] as u32,
            seed: n[3],
        }
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (ok, timeouts, other) = runtime.block_on(client_calls(addr, relay, calls));
    println!("{RESULT_TAG} ok={ok} timeouts={timeouts} other={other}");
}

async fn client_calls(addr: String, relay: Option<Faults>, calls: usize) -> (usize, usize, usize) {
    use futures::StreamExt;
    let target = match relay {
        Some(faults) => relay::start(addr.parse().unwrap(), faults)
            .await
            .to_string(),
        None => addr,
    };
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(20),
        call_timeout: Duration::from_secs(30),
        max_in_flight: 32,
        ..ClientConfig::default()
    };
    let client = Client::connect_with(format!("udp:{target}").as_str(), config)
        .await
        .expect("the HELLO exchange, whatever the loss");
    let results = futures::stream::iter(0..calls)
        .map(|n| {
            let client = client.clone();
            async move {
                let payload = format!("call-{n}\n");
                (payload.clone(), client.call(payload).await)
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let (mut ok, mut timeouts, mut other) = (0, 0, 0);
    for (payload, result) in results {
        match result {
            Ok(reply) if reply == payload.as_bytes() => ok += 1,
            Err(ClientError::Timeout { .. }) => timeouts += 1,
            failed => {
                if other < 5 {
                    eprintln!("{payload:?}: {failed:?}");
                }
                other += 1;
            }
        }
    }
    (ok, timeouts, other)
}
