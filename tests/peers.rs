//! The real `courier` binary against peers written the way a beginner's socket tutorial
//! writes them (tests/peers/*.py, Python standard library only), and against bare sockets
//! speaking plain framing. Skipped, with a message, where python3 is missing.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{peer_script, python3, Served, BIN};

/// Waits until the server's log contains `needle`, or fails after 10 s.
fn wait_for_log(server: &Served, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log_text().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "log lacks {needle:?}:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn courier_send_raw_talks_to_the_tutorial_python_server() {
    let Some(python) = python3() else { return };
    let mut server = Command::new(python)
        .arg(peer_script("tutorial_server.py"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the python server");
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let port = lines.next().unwrap().unwrap();

    let output = Command::new(BIN)
        .args([
            "send",
            "--framing",
            "raw",
            "--recv-first",
            "--hex",
            "05060708",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "01020304\n");

    let printed = lines.next().unwrap().unwrap();
    assert_eq!(printed, "05060708", "what the python server received");
    assert!(server.wait().unwrap().success());
}

#[test]
fn the_tutorial_python_client_talks_to_courier_serve_raw() {
    let Some(python) = python3() else { return };
    let server = Served::start(
        &[
            "--framing",
            "raw",
            "--greeting",
            "01020304",
            "--reply",
            "none",
            "--close-after",
            "1",
        ],
        &[("RUST_LOG", "courier=debug")],
    );
    let port = server.addr.rsplit(':').next().unwrap();
    let output = Command::new(python)
        .arg(peer_script("tutorial_client.py"))
        .arg(port)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "01020304\n");
    // The server logs every chunk it receives at debug level, as lowercase hex.
    wait_for_log(&server, "data=05060708");
}

#[test]
fn a_bare_socket_speaks_plain_framing_to_courier_serve() {
    let server = Served::start(&["--framing", "plain"], &[]);
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(&[0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 1, b'z'])
        .unwrap();
    let mut reply = [0u8; 12];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(reply, [0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 1, b'z']);
}

#[test]
fn a_plain_length_over_the_limit_is_logged_with_the_reason_and_closed() {
    let server = Served::start(&["--framing", "plain", "--max-frame", "16"], &[]);
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(&[0, 0, 1, 0]).unwrap();
    let mut rest = Vec::new();
    let read = stream.read_to_end(&mut rest);
    assert!(
        read.map_or(true, |n| n == 0),
        "the server closes without replying"
    );
    wait_for_log(
        &server,
        "message too large: the length prefix declares 256 bytes, the limit is 16 bytes",
    );
}

#[test]
fn courier_send_plain_calls_courier_serve_plain() {
    let server = Served::start(&["--framing", "plain", "--reply", "6f6b"], &[]);
    let output = Command::new(BIN)
        .args([
            "send",
            "--framing",
            "plain",
            "--data",
            "x",
            "--count",
            "2",
            "--output",
            "text",
        ])
        .arg(&server.addr)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ok\nok\n");
}
