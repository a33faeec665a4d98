//! `courier serve --exec CMD`: any program becomes a server.
//!
//! [`Exec`] starts the command once per request, with the payload on its stdin; what it
//! writes to stdout is the reply. [`ExecPool`] keeps N long-lived copies of the command
//! that read plain-framed requests on stdin and write plain-framed replies on stdout
//! (`docs/PROTOCOL.md`, "Exec workers"), and hands each request to an idle one.
//!
//! Both bound what they run at once and how many requests may wait; past that, a request
//! gets ERROR 14 (busy) at once. A command that overruns `exec_timeout` is killed with its
//! whole process group, and a command that fails gives its request an ERROR: never silence.
//!
//! Every process group started here is registered while it runs, so that a server on its
//! way out can kill them all with [`kill_children`] (on unix), even when it exits without
//! running destructors.

use std::collections::BTreeMap;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot, Mutex, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, error, warn};

use super::{Handler, HandlerError, Request};
use crate::wire::{ErrorCode, PlainCodec};

/// Bytes of a failed command's stderr kept for its ERROR text (only the first line is
/// shown).
const STDERR_KEPT: u64 = 4096;

/// The shell that runs a command line.
fn shell(command: &str) -> Command {
    #[cfg(unix)]
    let mut cmd = {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(command);
        // Its own process group, so that a timeout kills whatever it started too.
        cmd.process_group(0);
        cmd
    };
    #[cfg(not(unix))]
    let mut cmd = {
        let mut cmd = Command::new("cmd");
        cmd.arg("/C").arg(command);
        cmd
    };
    cmd.kill_on_drop(true);
    cmd
}

/// The process groups courier started and that may still be running, so that exiting can
/// kill them ([`kill_children`]). A std mutex: it is held for a few map operations and a
/// signal, never across an await, and is taken from `Drop` and from a signal task about
/// to call `exit`.
static GROUPS: StdMutex<Groups> = StdMutex::new(Groups {
    next: 0,
    live: BTreeMap::new(),
    exiting: false,
});

#[derive(Debug)]
struct Groups {
    /// The key of the next group: pids are reused, keys are not, so a guard never
    /// removes another's entry.
    next: u64,
    /// Key to the pid of the group's leader (which is the group's id).
    live: BTreeMap<u64, u32>,
    /// Set by [`kill_children`]: the process is exiting, so a group registered after it
    /// is killed at once rather than left to outlive the server.
    exiting: bool,
}

fn groups() -> MutexGuard<'static, Groups> {
    // The map stays consistent even if a holder panicked: every change is one call.
    GROUPS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Kills every process group that courier started for `--exec` and that is still
/// registered: commands running for a request, with whatever they started, and the
/// processes of every worker pool. Meant for the moment the server exits, when the
/// handlers' own clean-up (which runs on drop) may not run, as with
/// [`std::process::exit`]: from then on a command that starts is killed at once, and
/// worker pools stop replacing their workers.
///
/// On unix each group gets SIGKILL. On other platforms it kills nothing (commands there
/// are killed when their handles are dropped, which `exit` skips); it only stops new
/// commands and workers from being registered as running.
pub fn kill_children() {
    let mut groups = groups();
    groups.exiting = true;
    for pid in std::mem::take(&mut groups.live).into_values() {
        kill_group(pid);
    }
}

/// Whether [`kill_children`] has run: the process is on its way out.
fn exiting() -> bool {
    groups().exiting
}

/// Sends SIGKILL to the process group `pid` leads; it may already be gone.
fn kill_group(pid: u32) {
    #[cfg(unix)]
    if let Ok(pid) = i32::try_from(pid) {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        // The group may already be gone; nothing to do then.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    #[cfg(not(unix))]
    let _ = pid;
}

/// Kills a child's whole process group when dropped (unless disarmed), so that a request
/// that times out or whose client leaves does not leave processes behind. While armed the
/// group is in the registry that [`kill_children`] empties.
#[derive(Debug)]
struct GroupGuard {
    /// The registry key and the group's id, while armed.
    armed: Option<(u64, u32)>,
}

impl GroupGuard {
    /// Guards the group led by `pid`, a child started by [`shell`] (so in a group of its
    /// own). If the server is already exiting, kills it at once instead.
    fn arm(pid: Option<u32>) -> GroupGuard {
        let Some(pid) = pid else {
            return GroupGuard { armed: None };
        };
        let mut groups = groups();
        if groups.exiting {
            kill_group(pid);
            return GroupGuard { armed: None };
        }
        let key = groups.next;
        groups.next += 1;
        groups.live.insert(key, pid);
        GroupGuard {
            armed: Some((key, pid)),
        }
    }

    /// Leaves the group alone from now on (the command ended normally).
    fn disarm(&mut self) {
        if let Some((key, _)) = self.armed.take() {
            groups().live.remove(&key);
        }
    }

    /// Kills the group now, unless [`kill_children`] already has.
    fn kill(&mut self) {
        if let Some((key, pid)) = self.armed.take() {
            // Under the lock, so that this and kill_children never both signal a group
            // whose id may have been given to a new one in between.
            let mut groups = groups();
            if groups.live.remove(&key).is_some() {
                kill_group(pid);
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Counts requests waiting for a process and refuses one past the bound.
#[derive(Debug)]
struct Queue {
    waiting: AtomicUsize,
    limit: usize,
}

/// A place in the [`Queue`]; leaving (served or cancelled) frees it.
struct Place<'a>(&'a Queue);

impl Queue {
    fn enter(&self) -> Option<Place<'_>> {
        let before = self.waiting.fetch_add(1, Ordering::AcqRel);
        if before >= self.limit {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Place(self))
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

fn busy(what: &str) -> HandlerError {
    HandlerError {
        code: ErrorCode::Busy,
        message: format!("busy: {what}; try again later"),
    }
}

fn timed_out(timeout: Duration) -> HandlerError {
    HandlerError::new(format!(
        "command timed out after {} (exec_timeout) and was killed",
        humantime::format_duration(timeout)
    ))
}

/// Describes how a command ended, with the first line of what it said on stderr.
fn failure(status: ExitStatus, stderr: &[u8]) -> HandlerError {
    let first = String::from_utf8_lossy(stderr)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let how = match status.code() {
        Some(code) => format!("command exited with status {code}"),
        None => format!("command ended abnormally ({status})"),
    };
    if first.is_empty() {
        HandlerError::new(how)
    } else {
        HandlerError::new(format!("{how}: {first}"))
    }
}

/// Reads at most `limit` bytes; more is an error (the reply would not fit a frame).
async fn read_limited(reader: impl AsyncRead + Unpin, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    reader.take(limit as u64 + 1).read_to_end(&mut buf).await?;
    Ok(buf)
}

/// Runs the command once per request.
#[derive(Debug)]
pub struct Exec {
    command: String,
    timeout: Duration,
    max_reply: usize,
    max_children: usize,
    children: Semaphore,
    queue: Queue,
}

impl Exec {
    /// Runs `command` (through the shell) for each request, at most `max_children` at
    /// once with up to `queue` more waiting, each within `timeout`, with replies up to
    /// `max_reply` bytes.
    pub fn new(
        command: impl Into<String>,
        timeout: Duration,
        max_children: usize,
        queue: usize,
        max_reply: usize,
    ) -> Exec {
        Exec {
            command: command.into(),
            timeout,
            max_reply,
            max_children,
            children: Semaphore::new(max_children),
            queue: Queue {
                waiting: AtomicUsize::new(0),
                limit: queue,
            },
        }
    }

    async fn run(&self, payload: Bytes) -> Result<Bytes, HandlerError> {
        let _permit = match self.children.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                let Some(_place) = self.queue.enter() else {
                    return Err(busy(&format!(
                        "{} commands running and {} requests waiting",
                        self.max_children, self.queue.limit
                    )));
                };
                // The semaphore is never closed, so acquiring only waits.
                self.children
                    .acquire()
                    .await
                    .map_err(|_| HandlerError::new("exec handler stopped"))?
            }
        };
        let mut child = shell(&self.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| HandlerError::new(format!("cannot start the command: {err}")))?;
        let mut guard = GroupGuard::arm(child.id());
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(HandlerError::new("the command's pipes were not set up"));
        };
        let work = async {
            let feed = async {
                // A command that does not read its input closes the pipe early; that is
                // its business, not an error.
                let _ = stdin.write_all(&payload).await;
                drop(stdin);
            };
            let (_, out, err) = tokio::join!(
                feed,
                read_limited(stdout, self.max_reply),
                read_limited(stderr.take(STDERR_KEPT), STDERR_KEPT as usize),
            );
            let status = child.wait().await;
            (out, err, status)
        };
        let (out, err, status) = tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| timed_out(self.timeout))?;
        let out =
            out.map_err(|err| HandlerError::new(format!("reading the command's output: {err}")))?;
        let status =
            status.map_err(|err| HandlerError::new(format!("waiting for the command: {err}")))?;
        guard.disarm();
        if out.len() > self.max_reply {
            return Err(HandlerError {
                code: ErrorCode::FrameTooLarge,
                message: format!(
                    "frame too large: the command wrote more than {} bytes (max_frame)",
                    self.max_reply
                ),
            });
        }
        if !status.success() {
            return Err(failure(status, &err.unwrap_or_default()));
        }
        Ok(Bytes::from(out))
    }
}

impl Handler for Exec {
    fn call(
        &self,
        request: Request,
    ) -> impl std::future::Future<Output = Result<Bytes, HandlerError>> + Send {
        self.run(request.payload)
    }
}

/// A request on its way to a worker.
struct Job {
    payload: Bytes,
    reply: oneshot::Sender<Result<Bytes, HandlerError>>,
    /// How many processes died before taking it (see [`MAX_HANDOVERS`]).
    handovers: u32,
}

/// How many times in a row a request may be handed to a replacement because its worker
/// died before taking it; past that the command evidently cannot start, and the request
/// gets an ERROR rather than waiting forever.
const MAX_HANDOVERS: u32 = 3;

/// Long-lived workers speaking plain framing on stdin/stdout.
#[derive(Debug)]
pub struct ExecPool {
    jobs: mpsc::Sender<Job>,
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
        for index in 0..workers {
            let worker = Worker {
                index,
                command: command.to_owned(),
                timeout,
                max_reply,
                jobs: receiver.clone(),
                pool: jobs.downgrade(),
            };
            tokio::spawn(worker.run());
        }
        ExecPool {
            jobs,
            slots: Arc::new(Semaphore::new(slots)),
            workers,
            queue,
        }
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
    index: usize,
    command: String,
    timeout: Duration,
    max_reply: usize,
    jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
    /// Tells whether the pool still exists without taking `jobs`' lock, which an idle
    /// worker holds while it waits.
    pool: mpsc::WeakSender<Job>,
}

/// What a worker writes requests to: on unix a pipe made here, so that [`Process`] can
/// keep a copy of its read end; elsewhere the pipe the standard library makes.
#[cfg(unix)]
type Input = tokio::net::unix::pipe::Sender;
#[cfg(not(unix))]
type Input = tokio::process::ChildStdin;

/// A running copy of the command.
struct Process {
    child: Child,
    guard: GroupGuard,
    input: FramedWrite<Input, PlainCodec>,
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
        reason: String,
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
        let guard = GroupGuard::arm(child.id());
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
            match self.exchange(process, job.payload.clone()).await {
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

    fn untaken(&self, how: &str) -> Failure {
        Failure::Untaken(format!(
            "worker {} {how} before taking the request",
            self.index
        ))
    }

    fn timed_out(&self) -> Failure {
        Failure::Held(format!(
            "worker {} timed out after {} (exec_timeout) and was killed",
            self.index,
            humantime::format_duration(self.timeout)
        ))
    }
}

fn next_pause(pause: Duration) -> Duration {
    (pause * 2).clamp(Duration::from_millis(100), Duration::from_secs(5))
}
