//! What a `courier serve` process leaves behind when it exits: none of the `--exec`
//! commands it started, nor what they started, whether it exits on a second signal, after
//! the drain timeout, or normally. Runs the real binary and reads the process table.

#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use courier::client::Client;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a killed process may take to disappear from the process table.
const GONE_WITHIN: Duration = Duration::from_secs(5);

/// A directory of its own for one test's pid file, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("courier-children-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn pidfile(&self) -> PathBuf {
        self.0.join("pids")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// Whether `pid` has ended. The processes checked here are not this test's children:
/// once the server has exited they belong to PID 1, which in a container may never reap
/// them, so a zombie (state Z) counts as gone.
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name, which is in parentheses and may hold any
        // character, so look after the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Waits (bounded) until `path` lists at least `count` pids, and returns them.
async fn wait_for_pids(path: &Path, count: usize) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids: Vec<i32> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect();
        if pids.len() >= count {
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "{} lists {pids:?}, not {count} pids, after 10 s",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until every one of `pids` is gone; returns those still running.
async fn still_running_after_grace(pids: &[i32]) -> Vec<i32> {
    let deadline = Instant::now() + GONE_WITHIN;
    loop {
        let running: Vec<i32> = pids.iter().copied().filter(|&pid| !gone(pid)).collect();
        if running.is_empty() || Instant::now() >= deadline {
            return running;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills whatever the test itself left running, so that a failed test does not leave a
/// 30-second sleep behind. These are pids the test read from its own pid file.
fn clean_up(pids: &[i32]) {
    for &pid in pids {
        if !gone(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

fn terminate(served: &Served) {
    let pid = i32::try_from(served.child.id()).unwrap();
    kill(Pid::from_raw(pid), Signal::SIGTERM).expect("send SIGTERM to the server");
}

/// Waits (bounded) for the server to exit and returns its status.
async fn wait_for_exit(served: &mut Served, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit within {within:?}:\n{}",
            served.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a request on its own task, so that it is in flight while the test goes on.
fn call_in_background(addr: &str) -> tokio::task::JoinHandle<()> {
    let addr = addr.to_owned();
    tokio::spawn(async move {
        // The server goes away in the middle of this call; how the call ends is not what
        // these tests check.
        if let Ok(client) = Client::connect(addr).await {
            let _ = client.call("x").await;
        }
    })
}

#[tokio::test]
async fn a_second_signal_kills_the_commands_in_flight_and_what_they_started() {
    let scratch = Scratch::new("second-signal");
    let pidfile = scratch.pidfile();
    // The shell records its pid, starts a grandchild, records that, and waits for it.
    let command = format!(
        "echo $$ >> {p}; sleep 30 & echo $! >> {p}; wait",
        p = pidfile.display()
    );
    let mut served = Served::start(&["--exec", &command], &[]);
    let call = call_in_background(&served.addr);
    let pids = wait_for_pids(&pidfile, 2).await;

    // The first SIGTERM starts the drain, which waits for the 30-second command. A
    // signal that arrives before the server listens for the second one is lost, so keep
    // sending until it exits (a bounded number of times).
    let mut status = None;
    for _ in 0..50 {
        terminate(&served);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(exited) = served.child.try_wait().unwrap() {
            status = Some(exited);
            break;
        }
    }
    let status = status.expect("the server exits within 5 s of repeated SIGTERMs");
    assert_eq!(status.code(), Some(130), "{}", served.log_text());

    let running = still_running_after_grace(&pids).await;
    clean_up(&pids);
    call.abort();
    assert!(
        running.is_empty(),
        "still running {GONE_WITHIN:?} after the server exited: {running:?} (of shell and grandchild {pids:?})"
    );
}

#[tokio::test]
async fn the_drain_timeout_kills_the_commands_still_running() {
    let scratch = Scratch::new("drain-timeout");
    let pidfile = scratch.pidfile();
    // `exec` keeps the pid the shell recorded.
    let command = format!("echo $$ >> {}; exec sleep 30", pidfile.display());
    let mut served = Served::start(&["--exec", &command, "--drain-timeout", "1s"], &[]);
    let call = call_in_background(&served.addr);
    let pids = wait_for_pids(&pidfile, 1).await;

    let signalled = Instant::now();
    terminate(&served);
    let status = wait_for_exit(&mut served, Duration::from_secs(10)).await;
    let took = signalled.elapsed();
    assert!(status.success(), "{status}: {}", served.log_text());
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, before the 1 s drain timeout"
    );

    let running = still_running_after_grace(&pids).await;
    clean_up(&pids);
    call.abort();
    assert!(
        running.is_empty(),
        "the command {running:?} outlived the server"
    );
}

#[tokio::test]
async fn a_normal_exit_kills_the_pool_workers() {
    let scratch = Scratch::new("workers");
    let pidfile = scratch.pidfile();
    // `cat` is a worker that answers each plain-framed request with itself.
    let command = format!("echo $$ >> {}; exec cat", pidfile.display());
    let mut served = Served::start(&["--exec", &command, "--exec-workers", "2"], &[]);
    let client = Client::connect(served.addr.clone()).await.unwrap();
    assert_eq!(client.call("echo me").await.unwrap(), "echo me");
    drop(client);
    let pids = wait_for_pids(&pidfile, 2).await;

    terminate(&served);
    let status = wait_for_exit(&mut served, Duration::from_secs(10)).await;
    assert!(status.success(), "{status}: {}", served.log_text());

    let running = still_running_after_grace(&pids).await;
    clean_up(&pids);
    assert!(
        running.is_empty(),
        "workers {running:?} outlived the server"
    );
}
