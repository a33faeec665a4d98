//! `courier serve --exec CMD`: any program becomes a server, one process per request.
//!
//! [`Exec`] starts the command once per request, with the payload on its stdin; what it
//! writes to stdout is the reply. It bounds how many commands run at once and how many
//! requests may wait; past that, a request gets ERROR 14 (busy) at once. A command that
//! overruns `exec_timeout` is killed with its whole process group (`children.rs`), and a
//! command that fails gives its request an ERROR with the last lines of its stderr (the
//! end of a traceback says what went wrong; at most [`STDERR_SHOWN`] bytes) and is logged
//! with its status: never silence. The command finds the request's id in
//! `COURIER_REQUEST_ID`, who sent it in `COURIER_PEER` ([`super::Peer`]'s text: an
//! address and port, or a Unix socket's `unix uid=... pid=...`) and the client's TLS
//! identity in `COURIER_PEER_IDENTITY`; a variable that does not apply is unset.
//!
//! The long-lived alternative, [`super::ExecPool`], is in `pool.rs`.

use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tracing::warn;

use super::children::{shell, GroupGuard};
use super::{Handler, HandlerError, Peer, Request};
use crate::wire::ErrorCode;

/// Tells the command about `request` in its environment: `COURIER_REQUEST_ID`,
/// `COURIER_PEER` and `COURIER_PEER_IDENTITY`, each unset where it does not apply (so
/// that the server's own environment cannot pose as the client's).
fn describe(command: &mut tokio::process::Command, request: &Request) {
    command.env("COURIER_REQUEST_ID", request.id.to_string());
    match request.peer {
        Peer::Unknown => command.env_remove("COURIER_PEER"),
        peer => command.env("COURIER_PEER", peer.to_string()),
    };
    match &request.peer_identity {
        Some(identity) => command.env("COURIER_PEER_IDENTITY", identity.as_ref()),
        None => command.env_remove("COURIER_PEER_IDENTITY"),
    };
}

/// Bytes of a failed command's stderr kept (its end) while it runs.
const STDERR_KEPT: usize = 4096;

/// Bytes of the end of a failed command's stderr shown in its ERROR and in the log.
pub(super) const STDERR_SHOWN: usize = 1024;

/// Counts requests waiting for a process and refuses one past the bound.
#[derive(Debug)]
struct Queue {
    /// Requests waiting now.
    waiting: AtomicUsize,
    /// The most that may wait.
    limit: usize,
}

/// A place in the [`Queue`]; leaving (served or cancelled) frees it.
struct Place<'a>(&'a Queue);

impl Queue {
    /// Takes a place, or `None` when `limit` requests already wait.
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

/// ERROR 14 for a request refused because `what` is full.
pub(super) fn busy(what: &str) -> HandlerError {
    HandlerError {
        code: ErrorCode::Busy,
        message: format!("busy: {what}; try again later"),
    }
}

/// Logs that `command`, run for `peer`, was killed after `timeout`; returns its ERROR.
fn timed_out(command: &str, peer: Peer, timeout: Duration) -> HandlerError {
    warn!(command, %peer, timeout = %humantime::format_duration(timeout), "exec command timed out (exec_timeout) and was killed");
    HandlerError::new(format!(
        "command timed out after {} (exec_timeout) and was killed",
        humantime::format_duration(timeout)
    ))
}

/// The last lines of `stderr` that fit in [`STDERR_SHOWN`] bytes, joined by ` | ` (a
/// single line longer than that keeps its end).
pub(super) fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let mut kept: Vec<&str> = Vec::new();
    let mut size = 0;
    for line in text
        .lines()
        .rev()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
    {
        if size + line.len() > STDERR_SHOWN {
            if kept.is_empty() {
                let mut start = line.len() - STDERR_SHOWN;
                while !line.is_char_boundary(start) {
                    start += 1;
                }
                kept.push(&line[start..]);
            }
            break;
        }
        size += line.len() + 3;
        kept.push(line);
    }
    kept.reverse();
    kept.join(" | ")
}

/// Describes how a command ended, with the end of what it said on stderr, and logs it.
fn failure(command: &str, peer: Peer, status: ExitStatus, stderr: &[u8]) -> HandlerError {
    let tail = stderr_tail(stderr);
    let how = match status.code() {
        Some(code) => format!("command exited with status {code}"),
        None => format!("command ended abnormally ({status})"),
    };
    warn!(command, %peer, %status, stderr = %tail, "exec command failed");
    if tail.is_empty() {
        HandlerError::new(how)
    } else {
        HandlerError::new(format!("{how}: {tail}"))
    }
}

/// Reads everything, keeping only the last `keep` bytes.
async fn read_tail(mut reader: impl AsyncRead + Unpin, keep: usize) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = reader.read(&mut buf).await?;
        if read == 0 {
            return Ok(kept);
        }
        kept.extend_from_slice(&buf[..read]);
        if kept.len() > 2 * keep {
            kept.drain(..kept.len() - keep);
        }
    }
}

/// Logs, when dropped armed, that a command is being killed because its request was
/// dropped before it finished: the connection ended (its client closed it, or a write to
/// it failed), or the server stopped waiting. The [`GroupGuard`] dropped with it does the
/// killing.
struct CallerGone<'a> {
    command: &'a str,
    peer: Peer,
    armed: bool,
}

impl Drop for CallerGone<'_> {
    fn drop(&mut self) {
        if self.armed {
            warn!(
                command = self.command,
                peer = %self.peer,
                "exec command killed with its process group: its caller has gone (the connection ended before the reply)"
            );
        }
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
    /// The command line, run through the shell.
    command: String,
    /// `exec_timeout`: how long one run may take.
    timeout: Duration,
    /// The largest reply a command may write.
    max_reply: usize,
    /// Commands that may run at once (for the busy ERROR's text).
    max_children: usize,
    /// One permit per command running.
    children: Semaphore,
    /// The requests waiting for a permit.
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

    /// Runs the command for one request: waits for a free slot (or refuses when the
    /// queue is full), feeds it `payload`, and gives what it wrote to stdout.
    async fn run(&self, request: Request) -> Result<Bytes, HandlerError> {
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
        let mut command = shell(&self.command);
        describe(&mut command, &request);
        let payload = request.payload;
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| HandlerError::new(format!("cannot start the command: {err}")))?;
        let mut guard = GroupGuard::arm(&child);
        let mut gone = CallerGone {
            command: &self.command,
            peer: request.peer,
            armed: true,
        };
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
                read_tail(stderr, STDERR_KEPT),
            );
            let status = child.wait().await;
            (out, err, status)
        };
        let finished = tokio::time::timeout(self.timeout, work).await;
        gone.armed = false;
        let (out, err, status) =
            finished.map_err(|_| timed_out(&self.command, request.peer, self.timeout))?;
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
            return Err(failure(
                &self.command,
                request.peer,
                status,
                &err.unwrap_or_default(),
            ));
        }
        Ok(Bytes::from(out))
    }
}

impl Handler for Exec {
    fn call(
        &self,
        request: Request,
    ) -> impl std::future::Future<Output = Result<Bytes, HandlerError>> + Send {
        self.run(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stderr_tail_keeps_the_last_lines_within_the_bound() {
        let mut stderr = String::from("Traceback (most recent call last):\n");
        for n in 0..200 {
            stderr.push_str(&format!("  frame {n}\n"));
        }
        stderr.push_str("ValueError: the real cause\n");
        let tail = stderr_tail(stderr.as_bytes());
        assert!(tail.ends_with("ValueError: the real cause"), "{tail}");
        assert!(!tail.contains("Traceback"), "{tail}");
        assert!(tail.len() <= STDERR_SHOWN + 3, "{}", tail.len());
        let long = "x".repeat(5000);
        assert_eq!(stderr_tail(long.as_bytes()).len(), STDERR_SHOWN);
    }
}
