//! `--exec`: commands as handlers, one process per request or a pool of workers. The
//! commands are small shell lines and tests/peers/upper_worker.py.

#![cfg(unix)]

mod common;

use std::time::Duration;

use common::*;
use courier::client::{Client, ClientConfig, ClientError};
use courier::handler::{Exec, ExecPool};
use courier::wire::ErrorCode;

const TIMEOUT: Duration = Duration::from_secs(10);

fn exec(command: &str) -> Exec {
    Exec::new(command, TIMEOUT, 4, 16, 1 << 20)
}

/// Expects a server ERROR with `code` whose text contains every one of `parts`.
fn assert_server_error(result: Result<bytes::Bytes, ClientError>, code: ErrorCode, parts: &[&str]) {
    match result {
        Err(ClientError::Server { code: got, message }) => {
            assert_eq!(got, code, "{message}");
            for part in parts {
                assert!(message.contains(part), "{message:?} lacks {part:?}");
            }
        }
        other => panic!("expected a server error {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn per_request_command_turns_stdin_into_the_reply() {
    let server = start_server(test_config(), exec("tr a-z A-Z")).await;
    let client = Client::connect(server.addr).await.unwrap();
    assert_eq!(client.call("make me loud").await.unwrap(), "MAKE ME LOUD");
    assert_eq!(client.call("").await.unwrap(), "");
    server.shutdown().await;
}

#[tokio::test]
async fn a_failing_command_gives_an_error_with_its_status_and_last_stderr_lines() {
    let server = start_server(
        test_config(),
        exec("echo 'Traceback' >&2; for i in $(seq 300); do echo \"  frame $i\" >&2; done; echo 'no such record' >&2; exit 3"),
    )
    .await;
    let client = Client::connect(server.addr).await.unwrap();
    assert_server_error(
        client.call("x").await,
        ErrorCode::HandlerFailed,
        &["status 3", "frame 300 | no such record"],
    );
    match client.call("x").await {
        Err(ClientError::Server { message, .. }) => {
            assert!(!message.contains("Traceback"), "{message}");
            assert!(message.len() < 1200, "{}", message.len());
        }
        other => panic!("expected an ERROR, got {other:?}"),
    }
    // The connection survives a failed command.
    assert_server_error(
        client.call("y").await,
        ErrorCode::HandlerFailed,
        &["status 3"],
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_command_that_overruns_the_timeout_is_killed_with_its_process_group() {
    let dir = std::env::temp_dir().join(format!("courier-exec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pidfile = dir.join("grandchild.pid");
    // The command starts a background grandchild and waits for it.
    let command = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
    let handler = Exec::new(command, Duration::from_millis(500), 4, 16, 1 << 20);
    let server = start_server(test_config(), handler).await;
    let client = Client::connect(server.addr).await.unwrap();
    assert_server_error(
        client.call("x").await,
        ErrorCode::HandlerFailed,
        &["timed out", "500ms"],
    );

    let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_owned();
    let mut alive = true;
    for _ in 0..100 {
        // `kill -0` succeeds while the process exists.
        alive = std::process::Command::new("kill")
            .args(["-0", &pid])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        if !alive {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        !alive,
        "the grandchild {pid} outlived its timed-out command"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_reply_larger_than_max_frame_is_an_error() {
    let handler = Exec::new("head -c 2000 /dev/zero", TIMEOUT, 4, 16, 1000);
    let server = start_server(test_config(), handler).await;
    let client = Client::connect(server.addr).await.unwrap();
    assert_server_error(client.call("x").await, ErrorCode::FrameTooLarge, &["1000"]);
    server.shutdown().await;
}

#[tokio::test]
async fn requests_beyond_children_and_queue_get_busy_at_once() {
    // Two commands at once, nobody may wait: of three concurrent requests one is refused.
    let handler = Exec::new("sleep 0.5; echo done", TIMEOUT, 2, 0, 1 << 20);
    let server = start_server(test_config(), handler).await;
    let client = Client::connect(server.addr).await.unwrap();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.call("x").await })
        })
        .collect();
    let mut done = 0;
    let mut busy = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(reply) => {
                assert_eq!(reply, "done\n");
                done += 1;
            }
            Err(ClientError::Server { code, message }) => {
                assert_eq!(code, ErrorCode::Busy, "{message}");
                busy += 1;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((done, busy), (2, 1));
    server.shutdown().await;
}

#[tokio::test]
async fn no_more_than_max_children_commands_run_at_once() {
    let dir = std::env::temp_dir().join(format!("courier-conc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Each command marks itself running, reports how many were running, and unmarks.
    let command = format!(
        "d={}; touch $d/$$; ls $d | wc -l; sleep 0.2; rm $d/$$",
        dir.display()
    );
    let handler = Exec::new(command, TIMEOUT, 2, 64, 1 << 20);
    let server = start_server(test_config(), handler).await;
    let client = Client::connect(server.addr).await.unwrap();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.call("x").await.unwrap() })
        })
        .collect();
    for call in calls {
        let running: usize = String::from_utf8_lossy(&call.await.unwrap())
            .trim()
            .parse()
            .unwrap();
        assert!((1..=2).contains(&running), "{running} commands ran at once");
    }
    std::fs::remove_dir_all(&dir).ok();
    server.shutdown().await;
}

fn worker_command() -> Option<String> {
    let python = python3()?;
    Some(format!("{python} {}", peer_script("upper_worker.py")))
}

#[tokio::test]
async fn workers_answer_requests_in_plain_framing() {
    let Some(command) = worker_command() else {
        return;
    };
    // 2 workers and 18 waiting: room for all 20 requests at once.
    let pool = ExecPool::start(&command, 2, TIMEOUT, 18, 1 << 20);
    let server = start_server(test_config(), pool).await;
    let client = Client::connect(server.addr).await.unwrap();
    let calls: Vec<_> = (0..20)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move { (n, client.call(format!("message {n}")).await.unwrap()) })
        })
        .collect();
    for call in calls {
        let (n, reply) = call.await.unwrap();
        assert_eq!(reply, format!("MESSAGE {n}"));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_worker_that_dies_fails_its_request_and_is_replaced() {
    let Some(command) = worker_command() else {
        return;
    };
    let pool = ExecPool::start(&command, 1, TIMEOUT, 16, 1 << 20);
    let server = start_server(test_config(), pool).await;
    let client = Client::connect(server.addr).await.unwrap();
    let before = client.call("pid").await.unwrap();
    assert_server_error(
        client.call("die").await,
        ErrorCode::HandlerFailed,
        &[
            "worker 0 exited while holding the request",
            "exit status: 3",
        ],
    );
    // A new worker process answers the next request.
    let after = client.call("pid").await.unwrap();
    assert_ne!(before, after, "the dead worker should have been replaced");
    assert_eq!(client.call("still").await.unwrap(), "STILL");
    server.shutdown().await;
}

#[tokio::test]
async fn a_command_that_never_takes_a_request_gives_it_an_error_not_silence() {
    // Each copy exits at once without reading: the request is handed to replacement after
    // replacement, a bounded number of times, and then fails.
    let pool = ExecPool::start("exit 0", 1, TIMEOUT, 16, 1 << 20);
    let server = start_server(test_config(), pool).await;
    let client = Client::connect(server.addr).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), client.call("anyone?"))
        .await
        .expect("an answer within 10 s");
    assert_server_error(
        result,
        ErrorCode::HandlerFailed,
        &["worker 0", "before taking the request", "4 times in a row"],
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_worker_that_hangs_is_killed_at_the_timeout_and_replaced() {
    let Some(command) = worker_command() else {
        return;
    };
    // The timeout also covers the replacement worker's start (a Python interpreter), which
    // took over 500 ms on a loaded 2-CPU machine: 2 s leaves it room.
    let pool = ExecPool::start(&command, 1, Duration::from_secs(2), 16, 1 << 20);
    let server = start_server(test_config(), pool).await;
    let client = Client::connect(server.addr).await.unwrap();
    assert_server_error(
        client.call("hang").await,
        ErrorCode::HandlerFailed,
        &["timed out", "2s"],
    );
    assert_eq!(client.call("awake").await.unwrap(), "AWAKE");
    server.shutdown().await;
}

#[tokio::test]
async fn workers_bound_concurrency_and_refuse_past_the_queue() {
    let Some(command) = worker_command() else {
        return;
    };
    // One worker, one request may wait: of three concurrent slow requests, one is refused.
    let pool = ExecPool::start(&command, 1, TIMEOUT, 1, 1 << 20);
    let server = start_server(test_config(), pool).await;
    let client = Client::connect(server.addr).await.unwrap();
    // Make sure the worker has started and taken nothing yet.
    assert_eq!(client.call("warm").await.unwrap(), "WARM");
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.call("slow").await })
        })
        .collect();
    let mut answered = 0;
    let mut busy = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(reply) => {
                assert_eq!(reply, "SLOW");
                answered += 1;
            }
            Err(ClientError::Server {
                code: ErrorCode::Busy,
                ..
            }) => busy += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((answered, busy), (2, 1));
    server.shutdown().await;
}

/// Whether `pid` is still in the process table, zombie or not. The workers are this
/// test process's own children (the server runs in-process), so a zombie is a worker the
/// pool has not reaped.
fn in_process_table(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The pids listed in `path`, one a line; none if it does not exist yet.
fn pids_in(path: &std::path::Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

/// Waits (bounded by `within`) until `check` holds; returns whether it did.
async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[tokio::test]
async fn a_worker_killed_while_idle_is_reaped_and_replaced_at_once() {
    let Some(worker) = worker_command() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("courier-idle-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pidfile = dir.join("pids");
    // `exec` keeps the pid the shell recorded: the worker is the pool's direct child.
    let command = format!("echo $$ >> {}; exec {worker}", pidfile.display());
    let pool = ExecPool::start(&command, 1, TIMEOUT, 16, 1 << 20);
    let server = start_server(test_config(), pool).await;
    assert!(
        eventually(Duration::from_secs(5), || pids_in(&pidfile).len() == 1).await,
        "the worker did not start"
    );
    let first = pids_in(&pidfile)[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    // No request comes: the pool notices the death by itself.
    let reaped = eventually(Duration::from_secs(5), || !in_process_table(first)).await;
    let replaced = eventually(Duration::from_secs(5), || pids_in(&pidfile).len() >= 2).await;
    let pids = pids_in(&pidfile);
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        reaped,
        "the killed worker {first} is still a zombie after 5 s"
    );
    assert!(
        replaced,
        "no new worker within 5 s of killing {first}: {pids:?}"
    );
    assert_ne!(pids[1], first);

    // The next request goes to the new worker, not to the dead one.
    let client = Client::connect(server.addr).await.unwrap();
    assert_eq!(client.call("after").await.unwrap(), "AFTER");
    assert_eq!(client.call("pid").await.unwrap(), pids[1].to_string());
    server.shutdown().await;
}

#[tokio::test]
async fn a_worker_that_exits_after_every_reply_fails_no_request() {
    let Some(worker) = worker_command() else {
        return;
    };
    let pool = ExecPool::start(&format!("{worker} --once"), 1, TIMEOUT, 16, 1 << 20);
    let server = start_server(test_config(), pool).await;
    let client = Client::connect(server.addr).await.unwrap();
    for n in 0..20 {
        let reply = client.call(format!("call {n}")).await;
        assert_eq!(reply.unwrap(), format!("CALL {n}"), "call {n}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn the_command_finds_the_request_id_in_its_environment() {
    let server = start_server(
        test_config(),
        exec("printf %s \"$COURIER_REQUEST_ID:${COURIER_PEER_IDENTITY-none}\""),
    )
    .await;
    let client = Client::connect(server.addr).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let reply = client.call("x").await.unwrap();
        let text = String::from_utf8(reply.to_vec()).unwrap();
        let (id, identity) = text.split_once(':').expect("id:identity");
        assert_eq!(identity, "none", "{text}");
        ids.push(id.parse::<u32>().expect("a request id"));
    }
    assert!(ids[0] != 0 && ids[0] != ids[1], "{ids:?}");
    server.shutdown().await;
}

/// The command that prints who sent its request.
const PRINT_PEER: &str = "printf %s \"${COURIER_PEER-unset}\"";

#[tokio::test]
async fn the_command_finds_the_client_s_address_in_courier_peer() {
    let server = start_server(test_config(), exec(PRINT_PEER)).await;
    // Two connections from two ports: each command names its own caller's.
    for _ in 0..2 {
        let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let local = stream.local_addr().unwrap();
        let client = Client::over_stream(stream, ClientConfig::default(), |_| true)
            .await
            .unwrap();
        let reply = client.call("x").await.unwrap();
        assert_eq!(String::from_utf8_lossy(&reply), local.to_string());
    }
    server.shutdown().await;
}

#[tokio::test]
async fn over_a_unix_socket_courier_peer_names_the_client_s_user_and_process() {
    let dir = std::env::temp_dir().join(format!("courier-exec-peer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("peer.sock");
    let listen = format!("unix:{}", path.display());
    let listener = courier::transport::Listener::bind(&listen, 16, 0o600)
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(courier::server::run(
        listener,
        test_config(),
        exec(PRINT_PEER),
        stop.clone().cancelled_owned(),
    ));
    let client = Client::connect(listen.as_str()).await.unwrap();
    let reply = client.call("x").await.unwrap();
    // Our user id: the owner of the directory we just made.
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&dir).unwrap());
    let pid = std::process::id();
    assert_eq!(
        String::from_utf8_lossy(&reply),
        format!("unix uid={uid} pid={pid}")
    );
    stop.cancel();
    task.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that only closes its write side (`Client::close` with a call in flight) is
/// still there: the server's probes after its EOF (a PING each second) must neither end
/// the connection nor cost the call its reply.
#[tokio::test]
async fn a_half_closed_client_still_gets_the_reply_of_a_slow_command() {
    let server = start_server(test_config(), exec("sleep 2.5; cat")).await;
    let client = Client::connect(server.addr).await.unwrap();
    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.call("still here").await })
    };
    // Let the request leave before the write side closes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.close().await;
    let reply = call.await.unwrap().expect("the reply, after the probes");
    assert_eq!(&reply[..], b"still here");
    server.shutdown().await;
}
