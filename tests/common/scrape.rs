//! Reading a `--metrics` endpoint as a scraper does: `GET` over plain HTTP/1.1, one sample
//! of a page, the address a process logged, and `promtool check metrics` on a page (with
//! the tools fetched from Debian packages, or one line saying why a test skips).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Served;

/// `GET PATH` on `addr` over HTTP/1.1: the status and the body.
pub fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics port");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `name` (with its labels, if any) in a metrics page.
pub fn sample(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no sample {name} in\n{page}"))
}

/// The `/metrics` page once no connection is open (within 10 s; the last page read
/// otherwise): a connection's counts are added when its task ends, so a page read right
/// after a client exits may miss its last ones.
pub fn settled_page(metrics: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, page) = get(metrics, "/metrics");
        if sample(&page, "courier_connections_open") == 0.0 || Instant::now() > deadline {
            return page;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `courier bench ADDR -c 4 -P 4 -n N` (no warm-up) and fails unless it succeeds.
pub fn bench_requests(addr: &str, n: u64) {
    let bench = Command::new(super::BIN)
        .args(["bench", addr, "-c", "4", "-P", "4", "-n"])
        .arg(n.to_string())
        .args(["--warmup", "0s", "--json"])
        .output()
        .expect("run courier bench");
    assert!(
        bench.status.success(),
        "{}",
        String::from_utf8_lossy(&bench.stderr)
    );
}

/// The metrics address a server logged ("serving /metrics ... addr=...").
pub fn metrics_addr(server: &Served) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.log_text();
        if let Some(addr) = log
            .lines()
            .find(|line| line.contains("serving /metrics"))
            .and_then(|line| line.split("addr=").nth(1))
        {
            return addr.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "no metrics address in\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tool from a Debian package, installed with apt-get if missing; `None` (after one
/// line saying so) where it cannot be had.
pub fn tool(name: &str, package: &str) -> Option<String> {
    let found = |name: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    if let Some(path) = found(name) {
        return Some(path);
    }
    let installed = Command::new("apt-get")
        .args(["install", "-y", "-q", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    let path = installed.then(|| found(name)).flatten();
    if path.is_none() {
        eprintln!("skipping: {name} is missing and `apt-get install -y {package}` failed");
    }
    path
}

/// Fails unless `promtool check metrics` accepts `page` without a word (no error, no
/// lint warning); skips (one line on stderr) where promtool cannot be had.
pub fn promtool_accepts(page: &str) {
    let Some(promtool) = tool("promtool", "prometheus") else {
        return;
    };
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\non\n{page}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
