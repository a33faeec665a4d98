//! `courier serve --exec CMD --exec-workers N`: [`ExecPool`] keeps N long-lived copies
//! of the command that read plain-framed requests on stdin and write plain-framed replies
//! on stdout (`docs/PROTOCOL.md`, "Exec workers"), and hands each request to an idle one.
//!
//! Like [`super::Exec`] it bounds the requests being handled and waiting (past that,
//! ERROR 14, busy). Each `Worker` keeps one process running: a process that overruns
//! `exec_timeout` is killed with its process group and replaced, one that dies is reaped
//! and replaced at once, and a request it never took goes to its replacement.
//! Its processes are started and their groups registered in `children.rs`.

use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::process::{Child, ChildStdout};
use tokio::sync::{mpsc, oneshot, Mutex, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, error, warn};

use super::children::{exiting, shell, GroupGuard};
use super::exec::busy;
use super::{Handler, HandlerError, PoolStats, Request};
use crate::wire::PlainCodec;

/// A request on its way to a worker.
struct Job {
    /// The request's payload.
    payload: Bytes,
    /// Where its answer goes.
    reply: oneshot::Sender<Result<Bytes, HandlerError>>,
    /// How many processes died before taking it (see [`MAX_HANDOVERS`]).
    handovers: u32,
}

/// How many times in a row a request may be handed to a replacement because its worker
/// died before taking it; past that the command evidently cannot start, and the request
/// gets an ERROR rather than waiting forever.
const MAX_HANDOVERS: u32 = 3;

/// Counts one worker as busy for as long as it lives.
struct Busy<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> Busy<'a> {
    fn new(busy: &'a std::sync::atomic::AtomicU64) -> Busy<'a> {
        busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Busy(busy)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Long-lived workers speaking plain framing on stdin/stdout.
#[derive(Debug)]
pub struct ExecPool {
    jobs: mpsc::Sender<Job>,
    stats: Arc<PoolStats>,
    /// One permit per request being handled or waiting: `workers + queue` in all, so the
    /// bound does not depend on how quickly a worker picks up its next job.
    slots: Arc<Semaphore>,
    workers: usize,
    queue: usize,
}

impl ExecPool {
    /// Starts `workers` copies of `command` (through the shell). Up to `queue` requests
    /// wait for an idle worker; each must be answered within `timeout`, or the worker is
    /// killed and replaced. A worker that exits is reaped and replaced at once, even while
    /// idle; only a request it had taken gets an ERROR, and one it never took goes to its
    /// replacement. Must be called inside a Tokio runtime.
    pub fn start(
        command: &str,
        workers: usize,
        timeout: Duration,
        queue: usize,
        max_reply: usize,
    ) -> ExecPool {
        let slots = workers + queue;
        let (jobs, receiver) = mpsc::channel(slots.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        let stats = Arc::new(PoolStats {
            workers,
            ..PoolStats::default()
        });
        for index in 0..workers {
            let worker = Worker {
                index,
                command: command.to_owned(),
                timeout,
                max_reply,
                jobs: receiver.clone(),
                pool: jobs.downgrade(),
                stats: stats.clone(),
            };
            tokio::spawn(worker.run());
        }
        ExecPool {
            jobs,
            stats,
            slots: Arc::new(Semaphore::new(slots)),
            workers,
            queue,
        }
    }
}

impl ExecPool {
    /// The pool's busy workers and restarts, readable while it runs.
    pub fn stats(&self) -> Arc<PoolStats> {
        self.stats.clone()
    }
}

impl Handler for ExecPool {
    fn call(
        &self,
        request: Request,
    ) -> impl std::future::Future<Output = Result<Bytes, HandlerError>> + Send {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            payload: request.payload,
            reply,
            handovers: 0,
        };
        let queued = match self.slots.clone().try_acquire_owned() {
            Err(_) => Err(busy(&format!(
                "all {} workers busy and {} requests waiting",
                self.workers, self.queue
            ))),
            // The channel holds as many jobs as there are slots, so it cannot be full.
            Ok(slot) => self
                .jobs
                .try_send(job)
                .map(|()| slot)
                .map_err(|_| HandlerError::new("the worker pool has stopped")),
        };
        async move {
            let _slot = queued?;
            answer
                .await
                .unwrap_or_else(|_| Err(HandlerError::new("the worker dropped the request")))
        }
    }
}

/// One worker slot: keeps a copy of the command running and feeds it jobs.
struct Worker {
    /// Its place in the pool, for the logs and the ERROR texts.
    index: usize,
    /// The command line its processes run.
    command: String,
    /// `exec_timeout`: the time a process has to answer a request.
    timeout: Duration,
    /// The largest reply taken from a process.
    max_reply: usize,
    /// The pool's queue of requests, shared by its workers.
    jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
    /// Tells whether the pool still exists without taking `jobs`' lock, which an idle
    /// worker holds while it waits.
    pool: mpsc::WeakSender<Job>,
    /// The pool's busy workers and restarts.
    stats: Arc<PoolStats>,
}

/// What a worker writes requests to: on unix a pipe made here, so that [`Process`] can
/// keep a copy of its read end; elsewhere the pipe the standard library makes.
#[cfg(unix)]
type Input = tokio::net::unix::pipe::Sender;
#[cfg(not(unix))]
type Input = tokio::process::ChildStdin;

/// A running copy of the command.
struct Process {
    /// The process (the shell running the command).
    child: Child,
    /// Kills its process group when it is done with.
    guard: GroupGuard,
    /// Its stdin, where requests go.
    input: FramedWrite<Input, PlainCodec>,
    /// Its stdout, where replies come from.
    output: FramedRead<ChildStdout, PlainCodec>,
    /// A copy of the read end of the process's stdin, never read from: once the process
    /// has died, bytes still in the pipe show it never took the whole of the last request.
    #[cfg(unix)]
    stdin_copy: std::os::fd::OwnedFd,
    /// Requests it answered: one that answered any did not "die at once".
    answered: u64,
}

impl Process {
    /// Whether the last request written is still, at least in part, in the stdin pipe:
    /// then the process never read the whole of it, and cannot have acted on it. Only
    /// meaningful once the process has exited.
    #[cfg(unix)]
    fn left_request_unread(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(self.stdin_copy.as_fd(), PollFlags::POLLIN)];
        // `input` still holds the write end, so readable means bytes waiting, not EOF.
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(ready) if ready > 0)
            && fds[0]
                .revents()
                .is_some_and(|events| events.contains(PollFlags::POLLIN))
    }

    /// Without a copy of the read end there is no telling: assume it took the request.
    #[cfg(not(unix))]
    fn left_request_unread(&self) -> bool {
        false
    }
}

/// Why a process stopped serving.
enum Stop {
    /// The pool has been dropped: no job will come.
    PoolGone,
    /// The process is dead or was killed, for `reason`; `untaken` is a job it never
    /// took, for its replacement.
    Replace {
        /// Why, for the log.
        reason: String,
        /// A job it never took.
        untaken: Option<Job>,
    },
}

/// How an exchange with a process failed.
enum Failure {
    /// The process ended without taking the request: another may run it.
    Untaken(String),
    /// The process had the request and may have acted on it: the request gets an ERROR.
    Held(String),
}

/// An exit status as a phrase: "exit status: 3", "signal: 9 (SIGKILL)".
fn exit_text(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(err) => format!("status unknown: {err}"),
    }
}

impl Worker {
    /// Keeps a process running and serving jobs until the pool or the server goes.
    async fn run(self) {
        let mut pause = Duration::ZERO;
        let mut untaken = None;
        // Each pass runs one process to its end; the loop ends with the pool or with the
        // server (kill_children), and a pause keeps it from spinning.
        loop {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            if exiting() || (untaken.is_none() && self.pool.strong_count() == 0) {
                return;
            }
            let started = Instant::now();
            let mut process = match self.spawn() {
                Ok(process) => process,
                Err(err) => {
                    error!(worker = self.index, cause = %err, "cannot start worker");
                    pause = next_pause(pause);
                    continue;
                }
            };
            debug!(
                worker = self.index,
                pid = process.child.id(),
                "worker started"
            );
            let reason = match self.serve(&mut process, untaken.take()).await {
                Stop::PoolGone => return, // Dropping the process kills it (GroupGuard).
                Stop::Replace {
                    reason,
                    untaken: job,
                } => {
                    untaken = job;
                    reason
                }
            };
            warn!(worker = self.index, %reason, "worker stopped; starting a new one");
            self.stats
                .restarts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Reap it before starting the next, so no zombie waits for the next request.
            // The group goes too: what the worker started would otherwise outlive it.
            process.guard.kill();
            let _ = process.child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(1), process.child.wait()).await;
            // A worker that dies at once would otherwise be restarted in a tight loop; one
            // that answered requests did its work (some exit after every reply).
            pause = if process.answered > 0 || started.elapsed() >= Duration::from_secs(1) {
                Duration::ZERO
            } else {
                next_pause(pause)
            };
        }
    }

    /// Starts a process, its stdin and stdout piped, its group registered.
    fn spawn(&self) -> std::io::Result<Process> {
        #[cfg(unix)]
        let (input, stdin, stdin_copy) = {
            let (input, read_end) = tokio::net::unix::pipe::pipe()?;
            // The worker reads its stdin like any program: in blocking mode.
            let read_end = read_end.into_blocking_fd()?;
            // Close-on-exec, like the pipe itself, so no other child inherits it.
            let stdin_copy = read_end.try_clone()?;
            (input, Stdio::from(read_end), stdin_copy)
        };
        #[cfg(not(unix))]
        let stdin = Stdio::piped();
        let mut child = shell(&self.command)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let guard = GroupGuard::arm(&child);
        let missing = || std::io::Error::other("the worker's pipes were not set up");
        #[cfg(not(unix))]
        let input = child.stdin.take().ok_or_else(missing)?;
        let output = child.stdout.take().ok_or_else(missing)?;
        Ok(Process {
            child,
            guard,
            input: FramedWrite::new(input, PlainCodec::new(u32::MAX as usize)),
            output: FramedRead::new(output, PlainCodec::new(self.max_reply)),
            #[cfg(unix)]
            stdin_copy,
            answered: 0,
        })
    }

    /// The next request from the pool's queue; `None` once the pool is gone.
    async fn next_job(&self) -> Option<Job> {
        self.jobs.lock().await.recv().await
    }

    /// Feeds jobs to `process`, `untaken` first, until it stops.
    async fn serve(&self, process: &mut Process, mut untaken: Option<Job>) -> Stop {
        loop {
            let mut job = match untaken.take() {
                Some(job) => job,
                // Idle: wait for the process's end as well as for a job, so that a worker
                // that dies now is reaped and replaced now, not found dead by the next
                // request. Both are cancel-safe; a dead process is seen first, so a job
                // waiting stays in the queue for a live worker.
                None => tokio::select! {
                    biased;
                    status = process.child.wait() => {
                        let status = exit_text(status);
                        return Stop::Replace {
                            reason: format!("worker {} exited while idle ({status})", self.index),
                            untaken: None,
                        };
                    }
                    job = self.next_job() => match job {
                        Some(job) => job,
                        None => return Stop::PoolGone,
                    },
                },
            };
            if job.reply.is_closed() {
                continue; // The caller has gone.
            }
            let busy = Busy::new(&self.stats.busy);
            let exchanged = self.exchange(process, job.payload.clone()).await;
            drop(busy);
            match exchanged {
                Ok(reply) => {
                    process.answered += 1;
                    let _ = job.reply.send(Ok(reply));
                }
                Err(Failure::Untaken(reason)) => {
                    job.handovers += 1;
                    if job.handovers <= MAX_HANDOVERS {
                        return Stop::Replace {
                            reason,
                            untaken: Some(job),
                        };
                    }
                    let times = job.handovers;
                    let _ = job.reply.send(Err(HandlerError::new(format!(
                        "{reason}, {times} times in a row; giving up on it"
                    ))));
                    return Stop::Replace {
                        reason,
                        untaken: None,
                    };
                }
                Err(Failure::Held(reason)) => {
                    let _ = job.reply.send(Err(HandlerError::new(reason.clone())));
                    return Stop::Replace {
                        reason,
                        untaken: None,
                    };
                }
            }
        }
    }

    /// Writes one request to `process` and reads its reply, within `exec_timeout`.
    async fn exchange(&self, process: &mut Process, payload: Bytes) -> Result<Bytes, Failure> {
        let deadline = Instant::now() + self.timeout;
        if let Ok(Some(status)) = process.child.try_wait() {
            return Err(self.untaken(&format!("exited ({status})")));
        }
        // A process that ends while the request is being written never had all of it.
        let written = tokio::select! {
            biased;
            written = tokio::time::timeout_at(deadline, process.input.send(payload)) => written,
            status = process.child.wait() => {
                return Err(self.untaken(&format!("exited ({})", exit_text(status))));
            }
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(self.untaken(&format!("its stdin failed ({err})"))),
            Err(_) => return Err(self.timed_out()),
        }
        let read = tokio::select! {
            biased;
            read = tokio::time::timeout_at(deadline, process.output.next()) => read,
            status = process.child.wait() => {
                // It may have written its reply just before exiting. Kill the rest of
                // its group, which could hold stdout open, and read what is there. (Its
                // leader is reaped, but a group id is not reused while the group has
                // members, and once it has none the signal reaches nobody.)
                process.guard.kill();
                match tokio::time::timeout_at(deadline, process.output.next()).await {
                    Ok(Some(Ok(reply))) => return Ok(reply),
                    _ => return Err(self.ended(process, status)),
                }
            }
        };
        match read {
            Ok(Some(Ok(reply))) => Ok(reply),
            Ok(Some(Err(err))) => Err(Failure::Held(format!(
                "worker {} failed: its reply could not be read ({err})",
                self.index
            ))),
            // Its stdout closed: it is exiting, or no longer of use.
            Ok(None) => match tokio::time::timeout_at(deadline, process.child.wait()).await {
                Ok(status) => Err(self.ended(process, status)),
                Err(_) => Err(self.timed_out()),
            },
            Err(_) => Err(self.timed_out()),
        }
    }

    /// The process has exited after a request was written to it: did it take it?
    fn ended(&self, process: &Process, status: std::io::Result<ExitStatus>) -> Failure {
        let status = exit_text(status);
        if process.left_request_unread() {
            self.untaken(&format!("exited ({status})"))
        } else {
            Failure::Held(format!(
                "worker {} exited while holding the request ({status})",
                self.index
            ))
        }
    }

    /// The process stopped, `how`, before it had the whole request.
    fn untaken(&self, how: &str) -> Failure {
        Failure::Untaken(format!(
            "worker {} {how} before taking the request",
            self.index
        ))
    }

    /// The process overran `exec_timeout` with the request.
    fn timed_out(&self) -> Failure {
        Failure::Held(format!(
            "worker {} timed out after {} (exec_timeout) and was killed",
            self.index,
            humantime::format_duration(self.timeout)
        ))
    }
}

/// The pause before the next start after a worker that died at once: doubled each time,
/// from 100 ms up to 5 s.
fn next_pause(pause: Duration) -> Duration {
    (pause * 2).clamp(Duration::from_millis(100), Duration::from_secs(5))
}
