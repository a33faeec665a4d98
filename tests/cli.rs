//! The `courier` binary as a user runs it: `serve`, `send`, `bench` and `stats` as real
//! processes.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Served, BIN};
use courier::config::Config;
use courier::stats::{CloseReason, Snapshot};

fn courier(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run courier")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn send_prints_the_echo_reply_as_lowercase_hex() {
    let server = Served::start(&[], &[]);
    let output = courier(&["send", "--hex", "05060708", &server.addr]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "05060708\n");
}

#[test]
fn send_with_count_prints_each_reply_as_text() {
    let server = Served::start(&[], &[]);
    let output = courier(&[
        "send",
        "--data",
        "hi there",
        "--output",
        "text",
        "--count",
        "3",
        &server.addr,
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "hi there\nhi there\nhi there\n");
}

#[test]
fn send_reads_the_payload_from_stdin_and_prints_raw_bytes() {
    let server = Served::start(&[], &[]);
    let mut child = Command::new(BIN)
        .args(["send", "--file", "-", "--output", "raw", &server.addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&[0, 1, 2, 0xff])
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(output.stdout, vec![0, 1, 2, 0xff]);
}

#[test]
fn serve_with_a_fixed_reply_answers_every_request_with_it() {
    let server = Served::start(&["--reply", "0a0b0c"], &[]);
    for data in ["one", "two"] {
        let output = courier(&["send", "--data", data, &server.addr]);
        assert_eq!(stdout(&output), "0a0b0c\n");
    }
}

#[test]
fn send_oneway_prints_nothing_and_succeeds() {
    let server = Served::start(&[], &[]);
    let output = courier(&[
        "send",
        "--oneway",
        "--count",
        "5",
        "--data",
        "x",
        &server.addr,
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "");
}

#[test]
fn send_to_a_closed_port_fails_with_one_line_on_stderr() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = courier(&["send", "--data", "x", &port.to_string()]);
    assert_eq!(output.status.code(), Some(6));
    assert_eq!(stdout(&output), "");
    let err = stderr(&output);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("connection refused"), "{err}");
}

#[test]
fn a_server_error_is_reported_with_its_code_and_a_failing_status() {
    let server = Served::start(&["--max-frame", "16"], &[]);
    let output = courier(&["send", "--data", "longer than sixteen", &server.addr]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("frame too large") && err.contains("at most 16"),
        "{err}"
    );
}

#[test]
fn bad_hex_is_rejected_with_a_hint() {
    let output = courier(&["send", "--hex", "xyz"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("not hex"), "{}", stderr(&output));
}

#[test]
fn debug_logging_shows_each_payload_as_hex() {
    let server = Served::start(&[], &[("RUST_LOG", "courier=debug")]);
    let output = courier(&["send", "--hex", "c0ffee", &server.addr]);
    assert!(output.status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log_text().contains("payload=c0ffee") {
        assert!(
            Instant::now() < deadline,
            "log lacks the payload:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_exits_cleanly_on_sigterm() {
    let server = Served::start(&[], &[]);
    let output = courier(&["send", "--data", "x", &server.addr]);
    assert!(output.status.success());
    let (status, log) = server.terminate();
    assert!(status.success(), "exit status {status}\n{log}");
    assert!(log.contains("shut down cleanly"), "{log}");
}

/// `--runtime auto` (the default) runs a client command pinned to one CPU on one thread,
/// and a server on the multi-thread runtime all the same (`--runtime current` puts it on
/// one thread); a one-thread server serves a pipelined bench and shuts down cleanly.
#[cfg(target_os = "linux")]
#[test]
fn the_default_runtime_is_one_thread_for_a_client_on_one_cpu() {
    if Command::new("taskset").arg("-V").output().is_err() {
        println!("skipped: taskset (util-linux) is not installed");
        return;
    }
    // `courier ARGS` pinned to the first CPU this test may use.
    let pinned = |args: &str| {
        format!(
            "cpu=$(taskset -cp $$ | sed 's/.*: //; s/[-,].*//'); exec taskset -c $cpu {BIN} {args}"
        )
    };
    let server = Served::start_shell(&pinned("serve --listen 127.0.0.1:0"));
    let log = server.log_text();
    assert!(
        log.contains("tokio runtime flavor=multi workers=1"),
        "{log}"
    );
    drop(server);

    let server = Served::start_shell(&pinned("--runtime current serve --listen 127.0.0.1:0"));
    let log = server.log_text();
    assert!(
        log.contains("tokio runtime flavor=current workers=1"),
        "{log}"
    );
    let bench = |pin: bool| {
        let args = format!("bench {} -c 4 -P 8 -n 4000 --warmup 0s --json", server.addr);
        let shell = if pin {
            pinned(&args)
        } else {
            format!("exec {BIN} {args}")
        };
        let output = Command::new("sh")
            .args(["-c", &shell])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run courier bench");
        assert!(output.status.success(), "{}", stderr(&output));
        let report: serde_json::Value =
            serde_json::from_str(&stdout(&output)).expect("one JSON object");
        assert_eq!(report["requests"], 4000);
        assert_eq!(report["errors"], 0);
        report["runtime"].as_str().unwrap_or("none").to_owned()
    };
    assert_eq!(bench(true), "current");
    if std::thread::available_parallelism().map_or(1, usize::from) > 1 {
        assert_eq!(bench(false), "multi");
    }
    let (status, log) = server.terminate();
    assert!(status.success(), "exit status {status}\n{log}");
    assert!(log.contains("shut down cleanly"), "{log}");
}

#[test]
fn listen_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = courier(&["serve", "--listen", &addr]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

#[test]
fn print_config_layers_flags_over_env_over_file_over_defaults() {
    let dir = std::env::temp_dir().join(format!("courier-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("courier.toml");
    std::fs::write(
        &file,
        "max_frame = 1000\nidle_timeout = \"7s\"\nmax_in_flight = 3\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["serve", "--print-config", "--config"])
        .arg(&file)
        .args(["--max-in-flight", "9"])
        .env("COURIER_MAX_FRAME", "2000")
        .env("COURIER_MAX_IN_FLIGHT", "5")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = Config::from_toml(&stdout(&output)).expect("printed config parses");
    let expected = Config {
        max_frame: 2000,                      // env over file
        idle_timeout: Duration::from_secs(7), // file over default
        max_in_flight: 9,                     // flag over env over file
        ..Config::default()
    };
    assert_eq!(printed, expected);
}

#[test]
fn print_config_without_flags_is_the_embedded_default() {
    let output = courier(&["serve", "--print-config"]);
    assert!(output.status.success());
    assert_eq!(
        Config::from_toml(&stdout(&output)).unwrap(),
        Config::default()
    );
}

#[test]
fn an_invalid_config_value_is_named() {
    let output = courier(&["serve", "--max-in-flight", "0", "--print-config"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("max_in_flight"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn serve_help_states_every_setting_and_its_default() {
    let help = stdout(&courier(&["serve", "--help"]));
    let defaults: toml::Table = toml::from_str(&Config::default().to_toml()).unwrap();
    for (key, value) in defaults {
        if key == "route" {
            // `courier route`'s settings; tests/route.rs checks its --help.
            continue;
        }
        let flag = format!("--{}", key.replace('_', "-"));
        assert!(help.contains(&flag), "--help lacks {flag}:\n{help}");
        let shown = match value {
            toml::Value::String(text) => text,
            other => other.to_string(),
        };
        assert!(
            help.contains(&format!("[default: {shown}]")),
            "--help lacks the default of {flag} ({shown}):\n{help}"
        );
    }
}

#[test]
fn send_help_states_its_defaults() {
    let help = stdout(&courier(&["send", "--help"]));
    for expected in [
        "[default: 127.0.0.1:12345]",
        "[default: 60s]",
        "[default: 5s]",
        "[default: hex]",
        "--oneway",
    ] {
        assert!(
            help.contains(expected),
            "send --help lacks {expected}:\n{help}"
        );
    }
}

#[test]
fn a_second_signal_exits_at_once_without_waiting_for_the_drain() {
    let server = Served::start(&[], &[]);
    // A peer that connects and never closes keeps the drain waiting for its close.
    let _held = std::net::TcpStream::connect(&server.addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(300));
    let (status, log) = server.terminate();
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("second signal"), "{log}");
}

#[test]
fn json_log_format_writes_one_json_object_per_line() {
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Every line up to "listening" (the runtime's comes first) is one JSON object.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut listening = None;
    for _ in 0..5 {
        let Some(Ok(text)) = lines.next() else { break };
        let line: serde_json::Value = serde_json::from_str(&text).expect("a JSON log line");
        if line["fields"]["message"] == "listening" {
            listening = Some(line);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let line = listening.expect("a \"listening\" line among the first five");
    assert!(line["fields"]["addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
}

#[test]
fn bench_prints_json_and_succeeds_against_echo() {
    let server = Served::start(&[], &[]);
    let output = courier(&[
        "bench",
        &server.addr,
        "-c",
        "2",
        "-P",
        "4",
        "-n",
        "500",
        "--warmup",
        "0s",
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value =
        serde_json::from_str(&stdout(&output)).expect("one JSON object");
    assert_eq!(report["requests"], 500);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["mismatches"], 0);
    assert!(report["latency_us"]["p99"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_fails_against_a_server_with_wrong_replies() {
    let server = Served::start(&["--reply", "00"], &[]);
    let output = courier(&[
        "bench",
        &server.addr,
        "-c",
        "1",
        "-n",
        "50",
        "--warmup",
        "0s",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("mismatched replies"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bench_output_to_a_reader_that_went_away_is_not_a_crash() {
    let server = Served::start(&[], &[]);
    let mut child = Command::new(BIN)
        .args([
            "bench",
            &server.addr,
            "-c",
            "1",
            "-n",
            "200",
            "--warmup",
            "0s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the summary is written, as `| head -c0` would.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert_ne!(
        output.status.code(),
        Some(101),
        "panicked: {}",
        stderr(&output)
    );
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn stats_prints_a_line_for_every_counter_of_the_table_and_every_close_reason() {
    let server = Served::start(&[], &[]);
    let output = courier(&["stats", &server.addr]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let lines: Vec<(&str, u64)> = text
        .lines()
        .map(|line| {
            let (name, value) = line.split_once(' ').expect("`name value`");
            (name, value.parse().expect("a count"))
        })
        .collect();
    let names: Vec<String> = lines.iter().map(|(name, _)| name.to_string()).collect();
    let expected: Vec<String> = Snapshot::COUNTERS
        .iter()
        .map(|counter| counter.name.to_owned())
        .chain(
            CloseReason::ALL
                .iter()
                .map(|reason| format!("closed.{reason}")),
        )
        .collect();
    assert_eq!(names, expected, "{text}");
    // The asking connection is counted before the answer.
    let count = |wanted: &str| lines.iter().find(|(name, _)| *name == wanted).unwrap().1;
    assert_eq!((count("accepted"), count("open")), (1, 1), "{text}");
}

#[test]
fn stats_json_carries_every_counter_of_the_table() {
    let server = Served::start(&[], &[]);
    let output = courier(&["stats", "--json", &server.addr]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("JSON");
    for counter in Snapshot::COUNTERS {
        assert!(json[counter.name].is_u64(), "no {}: {json}", counter.name);
    }
    // A flat object per counter family: closed is {reason: count}.
    let closed = json["closed"].as_object().expect("closed, an object");
    let mut named: Vec<_> = closed.keys().cloned().collect();
    let mut reasons: Vec<_> = CloseReason::ALL
        .iter()
        .map(|r| r.name().to_owned())
        .collect();
    named.sort();
    reasons.sort();
    assert_eq!(named, reasons);
    assert!(closed.values().all(serde_json::Value::is_u64), "{json}");
    assert_eq!(json["open"], 1, "the asking connection");
}
