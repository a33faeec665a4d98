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

use std::collections::BTreeMap;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot, Mutex, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, error, warn};

use crate::codec::{CodecError, ErrorCode, PlainCodec};
use crate::server::{Handler, HandlerError, Request};

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
}

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
    /// killed and replaced. Must be called inside a Tokio runtime.
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
}

/// A running copy of the command.
struct Process {
    child: Child,
    guard: GroupGuard,
    input: FramedWrite<ChildStdin, PlainCodec>,
    output: FramedRead<ChildStdout, PlainCodec>,
}

impl Worker {
    async fn run(self) {
        let mut pause = Duration::ZERO;
        loop {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            if exiting() {
                return; // The server is exiting: no new workers.
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
            let stopped = self.serve(&mut process).await;
            let Some(reason) = stopped else {
                return; // The pool is gone.
            };
            warn!(worker = self.index, %reason, "worker stopped; starting a new one");
            drop(process);
            // A worker that dies at once would otherwise be restarted in a tight loop.
            pause = if started.elapsed() < Duration::from_secs(1) {
                next_pause(pause)
            } else {
                Duration::ZERO
            };
        }
    }

    fn spawn(&self) -> std::io::Result<Process> {
        let mut child = shell(&self.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let guard = GroupGuard::arm(child.id());
        let missing = || std::io::Error::other("the worker's pipes were not set up");
        let input = child.stdin.take().ok_or_else(missing)?;
        let output = child.stdout.take().ok_or_else(missing)?;
        Ok(Process {
            child,
            guard,
            input: FramedWrite::new(input, PlainCodec::new(u32::MAX as usize)),
            output: FramedRead::new(output, PlainCodec::new(self.max_reply)),
        })
    }

    /// Feeds jobs to `process` until it fails (returns why) or the pool is dropped (None).
    async fn serve(&self, process: &mut Process) -> Option<String> {
        loop {
            let job = self.jobs.lock().await.recv().await?;
            if job.reply.is_closed() {
                continue; // The caller has gone.
            }
            let exchange = async {
                process.input.send(job.payload).await?;
                match process.output.next().await {
                    Some(result) => result,
                    None => Err(CodecError::Io(std::io::ErrorKind::UnexpectedEof.into())),
                }
            };
            let (answer, stop) = match tokio::time::timeout(self.timeout, exchange).await {
                Ok(Ok(reply)) => (Ok(reply), None),
                Ok(Err(err)) => {
                    let status = match process.child.try_wait() {
                        Ok(Some(status)) => format!("it exited ({status})"),
                        _ => format!("its pipe failed ({err})"),
                    };
                    let reason = format!("worker {} failed: {status}", self.index);
                    (Err(HandlerError::new(reason.clone())), Some(reason))
                }
                Err(_) => {
                    let reason = format!(
                        "worker {} timed out after {} (exec_timeout) and was killed",
                        self.index,
                        humantime::format_duration(self.timeout)
                    );
                    (Err(HandlerError::new(reason.clone())), Some(reason))
                }
            };
            let _ = job.reply.send(answer);
            if stop.is_some() {
                // Dropping the process kills its group (GroupGuard) and the child, unless
                // the child has been reaped already.
                if process.child.id().is_none() {
                    process.guard.disarm();
                }
                return stop;
            }
        }
    }
}

fn next_pause(pause: Duration) -> Duration {
    (pause * 2).clamp(Duration::from_millis(100), Duration::from_secs(5))
}
