//! The server's counters: connections accepted, rejected and closed (by reason),
//! protocol errors, requests and replies.
//!
//! A running server answers a STATS frame with a [`Snapshot`] as JSON (`courier stats
//! ADDR` prints it), and logs one summary line when it shuts down. Connection tasks count
//! requests and replies locally and add them here once per turn of their loop, so a
//! pipelined batch costs one atomic add, not one per frame.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Why a connection ended. Every close is logged with its reason and counted under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side and every reply was delivered.
    PeerClosed,
    /// The server shut down and drained the connection.
    Drained,
    /// Raw or plain framing: `close_after` messages were received.
    CloseAfter,
    /// A frame declared a length above `max_frame`.
    FrameTooLarge,
    /// No HELLO within `handshake_timeout`.
    HandshakeTimeout,
    /// A frame was started but not finished within `frame_timeout`.
    FrameTimeout,
    /// Nothing happened for `idle_timeout`.
    IdleTimeout,
    /// The peer did not read its replies (`max_pending_output`).
    SlowReader,
    /// The peer closed its side in the middle of a frame.
    Truncated,
    /// The HELLO carried no auth token or a wrong one.
    AuthFailed,
    /// The TLS handshake failed or did not finish within `handshake_timeout`.
    Tls,
    /// The peer broke the protocol (bad HELLO, unknown kind, a frame out of place).
    Protocol,
    /// The peer sent an ERROR about the whole connection.
    PeerError,
    /// Plain or raw framing: a handler failed, and the framing cannot say so.
    HandlerFailed,
    /// Reading or writing failed: a reset, a broken pipe.
    IoError,
    /// The server was shutting down and the drain timeout passed with requests of this
    /// connection still unanswered.
    DrainTimeout,
}

impl CloseReason {
    /// Every reason, in the order [`Snapshot::closed`] lists them.
    pub const ALL: [CloseReason; 16] = [
        CloseReason::PeerClosed,
        CloseReason::Drained,
        CloseReason::CloseAfter,
        CloseReason::FrameTooLarge,
        CloseReason::HandshakeTimeout,
        CloseReason::FrameTimeout,
        CloseReason::IdleTimeout,
        CloseReason::SlowReader,
        CloseReason::Truncated,
        CloseReason::AuthFailed,
        CloseReason::Tls,
        CloseReason::Protocol,
        CloseReason::PeerError,
        CloseReason::HandlerFailed,
        CloseReason::IoError,
        CloseReason::DrainTimeout,
    ];

    /// The name used in logs and in the STATS reply.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Drained => "drained",
            CloseReason::CloseAfter => "close_after",
            CloseReason::FrameTooLarge => "frame_too_large",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::FrameTimeout => "frame_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::SlowReader => "slow_reader",
            CloseReason::Truncated => "truncated",
            CloseReason::AuthFailed => "auth_failed",
            CloseReason::Tls => "tls_handshake",
            CloseReason::Protocol => "protocol_error",
            CloseReason::PeerError => "peer_error",
            CloseReason::HandlerFailed => "handler_failed",
            CloseReason::IoError => "io_error",
            CloseReason::DrainTimeout => "drain_timeout",
        }
    }

    /// Whether this is an ordinary end (logged at debug) rather than a limit or a fault
    /// (logged at info).
    pub fn is_clean(self) -> bool {
        matches!(
            self,
            CloseReason::PeerClosed | CloseReason::Drained | CloseReason::CloseAfter
        )
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The live counters of one server. Shared by every connection task; read with
/// [`Stats::snapshot`].
#[derive(Debug, Default)]
pub struct Stats {
    accepted: AtomicU64,
    rejected_busy: AtomicU64,
    accept_errors: AtomicU64,
    open: AtomicU64,
    closed: [AtomicU64; CloseReason::ALL.len()],
    protocol_errors: AtomicU64,
    requests: AtomicU64,
    oneway: AtomicU64,
    replies: AtomicU64,
    errors: AtomicU64,
    pings: AtomicU64,
    /// Tasks waiting in [`Stats::changed`]; while there are none, counting wakes nobody.
    watchers: AtomicUsize,
    moved: Notify,
}

/// The counters at one moment, as the STATS reply carries them (JSON, field names as
/// here).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections turned away because `max_connections` were open.
    pub rejected_busy: u64,
    /// Accept calls that failed for a reason other than one connection (out of file
    /// descriptors, say); each is followed by a pause.
    pub accept_errors: u64,
    /// Connections open now (their tasks are running).
    pub open: u64,
    /// Connections closed, by reason ([`CloseReason::name`]); every reason is listed.
    pub closed: Vec<(String, u64)>,
    /// Protocol violations, whether or not they closed the connection (a duplicate
    /// request id does not).
    pub protocol_errors: u64,
    /// REQUEST frames (or plain/raw messages) received.
    pub requests: u64,
    /// ONEWAY frames received.
    pub oneway: u64,
    /// REPLY frames (or plain/raw replies) queued for sending.
    pub replies: u64,
    /// ERROR frames answering a request (handler failures, duplicate ids, replies too
    /// large for the client).
    pub errors: u64,
    /// PING frames answered.
    pub pings: u64,
}

impl Snapshot {
    /// Connections closed for `reason`.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed
            .iter()
            .find(|(name, _)| name == reason.name())
            .map_or(0, |(_, count)| *count)
    }
}

impl Stats {
    /// Counters at zero.
    pub fn new() -> Stats {
        Stats::default()
    }

    /// Reads every counter. Counters are read one by one while connections keep working,
    /// so a snapshot of a busy server is not one instant; each counter only grows, except
    /// `open`.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            accepted: self.accepted.load(Relaxed),
            rejected_busy: self.rejected_busy.load(Relaxed),
            accept_errors: self.accept_errors.load(Relaxed),
            open: self.open.load(Relaxed),
            closed: CloseReason::ALL
                .iter()
                .map(|reason| {
                    let count = self.closed[reason.index()].load(Relaxed);
                    (reason.name().to_owned(), count)
                })
                .collect(),
            protocol_errors: self.protocol_errors.load(Relaxed),
            requests: self.requests.load(Relaxed),
            oneway: self.oneway.load(Relaxed),
            replies: self.replies.load(Relaxed),
            errors: self.errors.load(Relaxed),
            pings: self.pings.load(Relaxed),
        }
    }

    pub(crate) fn opened(&self) {
        self.accepted.fetch_add(1, Relaxed);
        self.open.fetch_add(1, Relaxed);
    }

    /// Counts a connection's end; a close for a protocol error also counts as one.
    pub(crate) fn closed(&self, reason: CloseReason) {
        self.closed[reason.index()].fetch_add(1, Relaxed);
        if reason == CloseReason::Protocol {
            self.protocol_errors.fetch_add(1, Relaxed);
        }
        self.open.fetch_sub(1, Relaxed);
    }

    pub(crate) fn rejected_busy(&self) {
        self.rejected_busy.fetch_add(1, Relaxed);
    }

    pub(crate) fn accept_error(&self) {
        self.accept_errors.fetch_add(1, Relaxed);
    }

    /// Adds a connection's local counts and zeroes them.
    pub(crate) fn add(&self, tally: &mut Tally) {
        for (counter, count) in [
            (&self.protocol_errors, tally.protocol_errors),
            (&self.requests, tally.requests),
            (&self.oneway, tally.oneway),
            (&self.replies, tally.replies),
            (&self.errors, tally.errors),
            (&self.pings, tally.pings),
        ] {
            if count > 0 {
                counter.fetch_add(count, Relaxed);
            }
        }
        *tally = Tally::default();
        if self.watchers.load(Relaxed) > 0 {
            self.moved.notify_waiters();
        }
    }

    /// A number that changes whenever a peer's message is counted (requests, one-way
    /// messages, PINGs, protocol errors).
    pub(crate) fn activity(&self) -> u64 {
        [
            &self.requests,
            &self.oneway,
            &self.pings,
            &self.protocol_errors,
        ]
        .iter()
        .map(|counter| counter.load(Relaxed))
        .fold(0, u64::wrapping_add)
    }

    /// Waits until [`Stats::activity`] differs from `seen`.
    ///
    /// The counters are relaxed, so a count made just as a task starts waiting may not
    /// wake it; the next count does. Busy polling, the one user, then starts one request
    /// late, which costs that request a little latency and nothing else.
    pub(crate) async fn changed(&self, seen: u64) {
        let notified = self.moved.notified();
        tokio::pin!(notified);
        loop {
            notified.as_mut().enable();
            let _watching = Watching::new(&self.watchers);
            if self.activity() != seen {
                return;
            }
            notified.as_mut().await;
            notified.set(self.moved.notified());
        }
    }

    /// Tasks waiting in [`Stats::changed`] now.
    #[cfg(test)]
    pub(crate) fn watchers(&self) -> usize {
        self.watchers.load(Relaxed)
    }
}

/// Counts made during one turn of a connection's loop, added to [`Stats`] when the turn
/// ends (when this is dropped). Created after the loop's await and dropped before the
/// next, it never becomes part of an idle connection's state: 48 bytes less per idle
/// connection than a tally kept for the connection's life (bench/idle_memory).
pub(crate) struct Turn<'a> {
    stats: &'a Stats,
    pub(crate) tally: Tally,
}

impl<'a> Turn<'a> {
    pub(crate) fn new(stats: &'a Stats) -> Turn<'a> {
        Turn {
            stats,
            tally: Tally::default(),
        }
    }

    /// Adds the counts so far (before a STATS answer reads the counters).
    pub(crate) fn flush(&mut self) {
        self.stats.add(&mut self.tally);
    }
}

/// Counts one task in [`Stats::changed`] for as long as it waits there (a cancelled wait
/// included).
struct Watching<'a>(&'a AtomicUsize);

impl<'a> Watching<'a> {
    fn new(watchers: &'a AtomicUsize) -> Watching<'a> {
        watchers.fetch_add(1, Relaxed);
        Watching(watchers)
    }
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// One connection's counts since they were last added to [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) protocol_errors: u64,
    pub(crate) requests: u64,
    pub(crate) oneway: u64,
    pub(crate) replies: u64,
    pub(crate) errors: u64,
    pub(crate) pings: u64,
}

impl fmt::Display for Snapshot {
    /// One line: `accepted=3 rejected_busy=0 ... closed: peer_closed=2 idle_timeout=1`,
    /// listing only the close reasons that happened.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted={} rejected_busy={} accept_errors={} open={} protocol_errors={} requests={} oneway={} replies={} errors={} pings={} closed:",
            self.accepted,
            self.rejected_busy,
            self.accept_errors,
            self.open,
            self.protocol_errors,
            self.requests,
            self.oneway,
            self.replies,
            self.errors,
            self.pings
        )?;
        let mut any = false;
        for (name, count) in self.closed.iter().filter(|(_, count)| *count > 0) {
            write!(f, " {name}={count}")?;
            any = true;
        }
        if !any {
            f.write_str(" none")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_slot_and_name() {
        let stats = Stats::new();
        for (n, reason) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), n);
            for _ in 0..=n {
                stats.opened();
                stats.closed(*reason);
            }
        }
        let snapshot = stats.snapshot();
        for (n, reason) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(snapshot.closed(*reason), n as u64 + 1, "{reason}");
        }
        assert_eq!(snapshot.open, 0);
        let names: std::collections::HashSet<_> =
            CloseReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), CloseReason::ALL.len());
    }

    #[test]
    fn tally_is_added_once_and_zeroed() {
        let stats = Stats::new();
        let mut tally = Tally {
            requests: 5,
            replies: 4,
            errors: 1,
            ..Tally::default()
        };
        stats.add(&mut tally);
        stats.add(&mut tally);
        let snapshot = stats.snapshot();
        assert_eq!(
            (snapshot.requests, snapshot.replies, snapshot.errors),
            (5, 4, 1)
        );
        let json = serde_json::to_string(&snapshot).unwrap();
        let back: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snapshot);
    }
}
