//! `courier` used from scripts: streams of requests from stdin, JSON lines out, the exit
//! status of each kind of failure, errors that name the real cause (a peer that is not
//! courier, a bad variable, a bad size), as real processes against real servers.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::{python3, Served, BIN};

fn courier(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run courier")
}

/// Runs courier with `input` on its stdin (written from a thread, so that a large input
/// and a large output cannot block each other).
fn courier_with_input(args: &[&str], input: Vec<u8>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run courier");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A TCP server that writes `banner` to every connection and then waits for the peer
/// to close (bounded: it serves at most `connections` peers).
fn banner_server(banner: &'static [u8], connections: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.write_all(banner);
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(30)));
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        }
    });
    addr
}

#[test]
fn a_hundred_thousand_lines_come_back_in_order_each_matching_its_line() {
    let server = Served::start(&[], &[]);
    let input: String = (1..=100_000).map(|n| format!("{n}\n")).collect();
    let output = courier_with_input(
        &[
            "send",
            "--lines",
            "-c",
            "64",
            "--json",
            "--output",
            "text",
            &server.addr,
        ],
        input.into_bytes(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let mut count = 0;
    for (index, line) in text.lines().enumerate() {
        let value: serde_json::Value = serde_json::from_str(line).expect(line);
        assert_eq!(value["status"], "ok", "{line}");
        assert_eq!(value["index"], index as u64, "{line}");
        assert_eq!(value["reply"], (index + 1).to_string(), "{line}");
        assert!(value["rtt_us"].is_u64(), "{line}");
        count += 1;
    }
    assert_eq!(count, 100_000);
    // Not a terminal: no progress bar, nothing at all on stderr.
    assert_eq!(stderr(&output), "");
}

#[test]
fn unordered_replies_still_cover_every_item_once() {
    let server = Served::start(&[], &[]);
    let input: String = (0..2000).map(|n| format!("item {n}\n")).collect();
    let output = courier_with_input(
        &[
            "send",
            "--lines",
            "-c",
            "32",
            "--unordered",
            "--json",
            "--output",
            "text",
            &server.addr,
        ],
        input.into_bytes(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let mut seen = vec![false; 2000];
    for line in stdout(&output).lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let index = value["index"].as_u64().unwrap() as usize;
        assert_eq!(value["reply"], format!("item {index}"));
        assert!(!seen[index], "item {index} twice");
        seen[index] = true;
    }
    assert!(seen.iter().all(|&s| s));
}

#[test]
fn null_separated_items_are_one_request_each() {
    let server = Served::start(&[], &[]);
    let output = courier_with_input(
        &["send", "--null", "--output", "text", &server.addr],
        b"a file\nwith a newline\0second\0".to_vec(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "a file\nwith a newline\nsecond\n");
}

#[test]
fn jsonl_items_take_text_hex_base64_and_ids_and_a_bad_line_is_a_usage_error() {
    let server = Served::start(&[], &[]);
    let input =
        "{\"text\":\"hi\",\"id\":\"a\"}\n{\"hex\":\"0a0b\",\"id\":2}\n{\"base64\":\"aGk=\"}\n";
    let output = courier_with_input(
        &["send", "--jsonl", "--json", &server.addr],
        input.as_bytes().to_vec(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        (&lines[0]["id"], &lines[0]["reply_hex"]),
        (&"a".into(), &"6869".into())
    );
    assert_eq!(
        (&lines[1]["id"], &lines[1]["reply_hex"]),
        (&2.into(), &"0a0b".into())
    );
    assert_eq!(lines[2]["reply_hex"], "6869");
    let bad = courier_with_input(
        &["send", "--jsonl", &server.addr],
        b"{\"text\":\"ok\"}\n{\"txt\":\"typo\"}\n".to_vec(),
    );
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("item 1"), "{}", stderr(&bad));
}

#[test]
fn a_stream_with_failures_reports_each_as_json_and_exits_with_the_first_ones_status() {
    let server = Served::start(
        &[
            "--exec",
            "read x; [ \"$x\" = bad ] && { echo nope >&2; exit 4; }; printf %s \"$x\"",
        ],
        &[],
    );
    let output = courier_with_input(
        &[
            "send",
            "--lines",
            "--json",
            "--output",
            "text",
            &server.addr,
        ],
        b"good\nbad\ngood\n".to_vec(),
    );
    assert_eq!(output.status.code(), Some(5), "{}", stderr(&output));
    let lines: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", stdout(&output));
    assert_eq!(lines[0]["status"], "ok");
    assert_eq!(lines[1]["status"], "error");
    assert_eq!(lines[1]["error"]["kind"], "server_error");
    assert_eq!(lines[1]["error"]["code"], 11);
    assert!(lines[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nope"));
    assert_eq!(lines[2]["reply"], "good");
    assert!(
        stderr(&output).contains("1 of 3 requests failed"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn five_megabytes_through_stdin_come_back_whole() {
    let server = Served::start(&["--max-frame", "8MiB"], &[]);
    let body: Vec<u8> = (0..5_000_000u32).map(|n| (n % 251) as u8).collect();
    let output = courier_with_input(
        &["send", "--file", "-", "--output", "raw", &server.addr],
        body.clone(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(output.stdout == body, "{} bytes back", output.stdout.len());
    // Without --file, a stdin that is not a terminal is the payload.
    let piped = courier_with_input(&["send", "--output", "raw", &server.addr], body.clone());
    assert!(piped.status.success(), "{}", stderr(&piped));
    assert!(piped.stdout == body);
}

#[test]
fn no_payload_with_a_terminal_on_stdin_is_a_usage_error() {
    let Some(python) = python3() else { return };
    let server = Served::start(&[], &[]);
    // pty.spawn runs courier with a terminal on stdin and returns its wait status.
    let script = format!(
        "import os, pty, sys\nstatus = pty.spawn([{BIN:?}, 'send', {:?}])\nsys.exit(os.waitstatus_to_exitcode(status))",
        server.addr
    );
    let output = Command::new(python).args(["-c", &script]).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert!(
        stdout(&output).contains("no payload"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn text_output_adds_no_newline_to_a_reply_that_ends_with_one() {
    let server = Served::start(&[], &[]);
    let output = courier(&["send", "--data", "line\n", "--output", "text", &server.addr]);
    assert_eq!(stdout(&output), "line\n");
    let output = courier(&["send", "--data", "line", "--output", "text", &server.addr]);
    assert_eq!(stdout(&output), "line\n");
}

#[test]
fn every_documented_exit_status_comes_from_its_case() {
    let help = stdout(&courier(&["send", "--help"]));
    for code in 0..=9 {
        assert!(
            help.contains(&format!("{code} ")),
            "send --help lacks status {code}"
        );
    }
    let server = Served::start(&["--exec", "sleep 5"], &[]);
    let failing = Served::start(&["--exec", "exit 3"], &[]);
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let http = banner_server(b"HTTP/1.1 400 Bad Request\r\n\r\n", 4);
    let plain = Served::start(&["--framing", "plain"], &[]);
    let cases: Vec<(u8, Vec<&str>, &str)> = vec![
        (2, vec!["send", "--count", "0", "--data", "x"], "--count"),
        (
            6,
            vec!["send", "--data", "x", &closed],
            "connection refused",
        ),
        (
            4,
            vec!["send", "--data", "x", "--timeout", "300ms", &server.addr],
            "--timeout",
        ),
        (5, vec!["send", "--data", "x", &failing.addr], "status 3"),
        (
            8,
            vec!["send", "--data", "x", &http],
            "did not speak courier",
        ),
        (
            8,
            vec!["send", "--data", "x", "--framing", "plain", &server.addr],
            "drop --framing plain",
        ),
        (
            8,
            vec![
                "send",
                "--data",
                "x",
                "--connect-timeout",
                "300ms",
                &plain.addr,
            ],
            "plain",
        ),
    ];
    for (code, args, says) in cases {
        let output = courier(&args);
        assert_eq!(
            output.status.code(),
            Some(i32::from(code)),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(says),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn a_connect_that_never_completes_is_a_connect_timeout() {
    // 192.0.2.1 (TEST-NET-1) is never routed: the SYN goes unanswered, unless this
    // machine has no route at all, which fails at once instead.
    let output = courier(&[
        "send",
        "--data",
        "x",
        "--connect-timeout",
        "300ms",
        "192.0.2.1:9",
    ]);
    if output.status.code() == Some(6) {
        eprintln!(
            "skipping: no route to 192.0.2.1 here, so no connect can hang ({})",
            stderr(&output).trim()
        );
        return;
    }
    assert_eq!(output.status.code(), Some(7), "{}", stderr(&output));
    assert!(stderr(&output).contains("timed out"), "{}", stderr(&output));
}

fn certs(name: &str) -> common::certs::Certs {
    common::certs::make(
        &PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("certs-scripts-{name}-{}", std::process::id())),
    )
}

#[test]
fn tls_mistakes_name_tls_and_exit_9_or_8() {
    let certs = certs("exit");
    let plain = Served::start(&[], &[]);
    let ca = certs.ca.to_str().unwrap();
    let output = courier(&["send", "--data", "x", "--tls-ca", ca, &plain.addr]);
    assert_eq!(output.status.code(), Some(9), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("TLS handshake failed"),
        "{}",
        stderr(&output)
    );
    let tls = Served::start(
        &[
            "--tls-cert",
            certs.server_cert.to_str().unwrap(),
            "--tls-key",
            certs.server_key.to_str().unwrap(),
            "--handshake-timeout",
            "200ms",
        ],
        &[],
    );
    // The server tells a silent plaintext peer that it speaks TLS, once its handshake
    // timeout is up: with a longer connect timeout the client hears it.
    let told = courier(&["send", "--data", "x", "--connect-timeout", "20s", &tls.addr]);
    assert_eq!(told.status.code(), Some(9), "{}", stderr(&told));
    assert!(stderr(&told).contains("speaks TLS"), "{}", stderr(&told));
    let slow = Served::start(
        &[
            "--tls-cert",
            certs.server_cert.to_str().unwrap(),
            "--tls-key",
            certs.server_key.to_str().unwrap(),
        ],
        &[],
    );
    // Before it: the client's own silence check says the port may speak TLS.
    let silent = courier(&[
        "send",
        "--data",
        "x",
        "--connect-timeout",
        "300ms",
        &slow.addr,
    ]);
    assert_eq!(silent.status.code(), Some(8), "{}", stderr(&silent));
    assert!(stderr(&silent).contains("TLS port"), "{}", stderr(&silent));
}

#[test]
fn peers_that_are_not_courier_are_named_with_their_first_bytes() {
    let http = banner_server(b"HTTP/1.1 400 Bad Request\r\n\r\n", 3);
    let ssh = banner_server(b"SSH-2.0-OpenSSH_9.6\r\n", 3);
    for (addr, bytes) in [
        (
            &http,
            "48 54 54 50 2f 31 2e 31 20 34 30 30 20 42 61 64 ... = 'HTTP/1.1 400 Bad'",
        ),
        (
            &ssh,
            "53 53 48 2d 32 2e 30 2d 4f 70 65 6e 53 53 48 5f ... = 'SSH-2.0-OpenSSH_'",
        ),
    ] {
        for command in ["send", "stats", "bench"] {
            let mut args = vec![command, addr.as_str()];
            match command {
                "send" => args.extend(["--data", "x"]),
                "bench" => args.extend(["-c", "1", "-n", "10", "--warmup", "0s"]),
                _ => {}
            }
            let output = courier(&args);
            assert_eq!(
                output.status.code(),
                Some(8),
                "{args:?}: {}",
                stderr(&output)
            );
            let expected =
                format!("connected, but the peer did not speak courier (first bytes: {bytes})");
            assert!(
                stderr(&output).contains(&expected),
                "{args:?}: {}",
                stderr(&output)
            );
        }
    }
}

#[test]
fn a_bad_variable_is_named_and_an_empty_one_is_unset() {
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut command = Command::new(BIN);
        command.args(args).env_remove("RUST_LOG");
        for (k, v) in env {
            command.env(k, v);
        }
        command.output().unwrap()
    };
    let bad = run(
        &[("COURIER_MAX_FRAME", "abc")],
        &["serve", "--print-config"],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("COURIER_MAX_FRAME"),
        "{}",
        stderr(&bad)
    );
    let flag = run(&[], &["serve", "--print-config", "--max-frame", "abc"]);
    assert_eq!(flag.status.code(), Some(2));
    assert!(
        stderr(&flag).contains("--max-frame") && !stderr(&flag).contains("COURIER_MAX_FRAME"),
        "{}",
        stderr(&flag)
    );
    let empty = run(
        &[("COURIER_MAX_FRAME", ""), ("COURIER_IDLE_TIMEOUT", "")],
        &["serve", "--print-config"],
    );
    assert!(empty.status.success(), "{}", stderr(&empty));
    let sized = run(
        &[("COURIER_MAX_PENDING_OUTPUT", "2MiB")],
        &["serve", "--print-config", "--max-frame", "64k"],
    );
    assert!(sized.status.success(), "{}", stderr(&sized));
    let printed = stdout(&sized);
    assert!(
        printed.contains("max_frame = 65536") && printed.contains("max_pending_output = 2097152"),
        "{printed}"
    );
}

#[test]
fn settings_are_range_checked_and_config_mistakes_are_said_once_and_rightly() {
    let zero = courier(&[
        "serve",
        "--print-config",
        "--framing",
        "plain",
        "--max-frame",
        "0",
    ]);
    assert_eq!(zero.status.code(), Some(1));
    assert!(
        stderr(&zero).contains("max_frame is 0, out of range: it must be from 1 to"),
        "{}",
        stderr(&zero)
    );
    let workers = courier(&["serve", "--print-config", "--exec-workers", "2"]);
    assert!(!workers.status.success());
    assert!(
        stderr(&workers).contains("exec_workers applies to exec"),
        "{}",
        stderr(&workers)
    );
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("scripts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "max_frames = 4096\n").unwrap();
    let bad = courier(&[
        "serve",
        "--print-config",
        "--config",
        file.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert_eq!(
        stderr(&bad).matches("unknown field").count(),
        1,
        "{}",
        stderr(&bad)
    );
    let missing = dir.join("no-such-token");
    let token = courier(&[
        "serve",
        "--auth-token-file",
        missing.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!token.status.success());
    assert!(
        stderr(&token).contains("auth token file") && !stderr(&token).contains("config file"),
        "{}",
        stderr(&token)
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_help_offers_only_the_framings_it_can_load() {
    let help = stdout(&courier(&["bench", "--help"]));
    assert!(help.contains("courier") && help.contains("plain"), "{help}");
    assert!(
        !help.contains("possible values: courier, plain, raw"),
        "{help}"
    );
    assert!(!help.contains("- raw"), "{help}");
    let refused = courier(&["bench", "--framing", "raw"]);
    assert_eq!(refused.status.code(), Some(2));
}

#[test]
fn stats_json_is_flat_and_watch_prints_rates() {
    let server = Served::start(&[], &[]);
    let output = courier(&["stats", "--json", &server.addr]);
    assert!(output.status.success(), "{}", stderr(&output));
    let value: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert!(value["closed"].is_object(), "{value}");
    assert!(value["closed"]["peer_closed"].is_u64(), "{value}");
    assert!(value["accepted"].as_u64().unwrap() >= 1, "{value}");
    let watch = courier(&["stats", "--watch", "100ms", "--count", "2", &server.addr]);
    assert!(watch.status.success(), "{}", stderr(&watch));
    let text = stdout(&watch);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].contains("requests/s") && lines[0].contains("open"),
        "{text}"
    );
    for line in &lines[1..] {
        let fields: Vec<f64> = line
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        assert_eq!(fields.len(), 7, "{line}");
        // The watching connection itself is open.
        assert!(fields[0] >= 1.0, "{line}");
    }
}

#[test]
fn raw_framing_logs_chunks_only_at_debug_level() {
    let server = Served::start(
        &["--framing", "raw", "--reply", "none", "--close-after", "1"],
        &[],
    );
    let output = courier(&[
        "send",
        "--framing",
        "raw",
        "--hex",
        "c0ffee",
        "--timeout",
        "500ms",
        &server.addr,
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let (_, log) = server.terminate();
    assert!(log.contains("listening"), "{log}");
    assert!(!log.contains("c0ffee"), "{log}");
}

#[test]
fn the_bash_completion_script_parses_and_knows_the_subcommands() {
    let output = courier(&["completions", "bash"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let script = stdout(&output);
    for word in ["send", "serve", "bench", "stats", "--lines", "--max-frame"] {
        assert!(script.contains(word), "the script lacks {word}");
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join(format!("courier-completion-{}.bash", std::process::id()));
    std::fs::write(&file, &script).unwrap();
    let parsed = Command::new("bash").arg("-n").arg(&file).output();
    std::fs::remove_file(&file).ok();
    match parsed {
        Ok(parsed) => assert!(parsed.status.success(), "{}", stderr(&parsed)),
        Err(err) => eprintln!("skipping the bash -n check: cannot run bash ({err})"),
    }
}

#[test]
fn the_man_page_has_every_subcommand_and_renders() {
    let output = courier(&["man"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let page = stdout(&output);
    assert!(
        page.starts_with(".ie") || page.contains(".TH courier 1"),
        "{page}"
    );
    for sub in ["SERVE", "SEND", "BENCH", "STATS", "COMPLETIONS"] {
        assert!(
            page.contains(&format!(".SH \"COURIER {sub}\"")),
            "no section for {sub}"
        );
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join(format!("courier-{}.1", std::process::id()));
    std::fs::write(&file, &page).unwrap();
    let rendered = Command::new("man")
        .arg("-l")
        .arg(&file)
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .output();
    std::fs::remove_file(&file).ok();
    match rendered {
        Ok(rendered) if rendered.status.success() => {
            let text = stdout(&rendered);
            assert!(
                text.contains("COURIER SEND") && text.contains("--lines"),
                "{text}"
            );
        }
        _ => eprintln!("skipping the man -l rendering check: man is not installed here"),
    }
}

/// Whether process `pid` has ended (gone, or a zombie waiting to be reaped).
#[cfg(target_os = "linux")]
fn ended(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[cfg(target_os = "linux")]
#[test]
fn an_exec_command_whose_caller_has_gone_is_killed_and_logged() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("caller-gone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("pid");
    let command = format!("echo $$ > {}; exec sleep 60", pid_file.display());
    let server = Served::start(&["--exec", &command], &[]);
    let mut send = Command::new(BIN)
        .args(["send", "--data", "x", &server.addr])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let pid = loop {
        if let Ok(text) = std::fs::read_to_string(&pid_file) {
            if text.ends_with('\n') {
                break text.trim().to_owned();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the command did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // The caller goes: its process is killed, and the kernel closes its socket.
    send.kill().unwrap();
    send.wait().unwrap();
    while !ended(&pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the command (pid {pid}) still runs after its caller went:\n{}",
            server.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let line = loop {
        let log = server.log_text();
        if let Some(line) = log
            .lines()
            .find(|line| line.contains("its caller has gone"))
        {
            break line.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "{log}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // The line names the client the command ran for.
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    std::fs::remove_dir_all(&dir).ok();
}
