//! The server's counters: connections accepted, rejected and closed (by reason),
//! protocol errors, requests and replies.
//!
//! A running server answers a STATS frame with a [`Snapshot`] as JSON (`courier stats
//! ADDR` prints it), and logs one summary line when it shuts down. Connection tasks count
//! requests and replies locally and add them here once per turn of their loop, so a
//! pipelined batch costs one atomic add, not one per frame.
//!
//! Each list is written once: the counters in the `counters!` table below (which makes
//! the atomics of [`Stats`], the fields of [`Snapshot`] and of the per-turn tally, the
//! snapshot, the adding of a tally, and [`Snapshot::COUNTERS`] and [`Snapshot::counters`],
//! which the log line and `courier stats` read), the close reasons in `close_reasons!`.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
#[cfg(feature = "json")]
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Declares [`CloseReason`], [`CloseReason::ALL`] and [`CloseReason::name`] from one list
/// of `Variant => "name"`, so that a reason cannot be added to one and not the others.
/// The order is the one the STATS reply lists them in.
macro_rules! close_reasons {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// Why a connection ended. Every close is logged with its reason and counted
        /// under it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum CloseReason {
            $($(#[doc = $doc])* $variant,)*
        }

        impl CloseReason {
            /// Every reason, in the order [`Snapshot::closed`] lists them.
            pub const ALL: [CloseReason; [$($name),*].len()] = [$(CloseReason::$variant),*];

            /// The name used in logs and in the STATS reply.
            pub fn name(self) -> &'static str {
                match self {
                    $(CloseReason::$variant => $name,)*
                }
            }
        }
    };
}

close_reasons! {
    /// The peer closed its side and every reply was delivered.
    PeerClosed => "peer_closed",
    /// The server shut down and drained the connection.
    Drained => "drained",
    /// Raw or plain framing: `close_after` messages were received.
    CloseAfter => "close_after",
    /// A frame declared a length above `max_frame`.
    FrameTooLarge => "frame_too_large",
    /// No HELLO within `handshake_timeout`.
    HandshakeTimeout => "handshake_timeout",
    /// A frame was started but not finished within `frame_timeout`.
    FrameTimeout => "frame_timeout",
    /// Nothing happened for `idle_timeout`.
    IdleTimeout => "idle_timeout",
    /// The peer did not read its replies (`max_pending_output`).
    SlowReader => "slow_reader",
    /// The peer closed its side in the middle of a frame.
    Truncated => "truncated",
    /// The HELLO carried no auth token or a wrong one.
    AuthFailed => "auth_failed",
    /// The TLS handshake failed or did not finish within `handshake_timeout`.
    Tls => "tls_handshake",
    /// The peer broke the protocol (bad HELLO, unknown kind, a frame out of place).
    Protocol => "protocol_error",
    /// The peer sent an ERROR about the whole connection.
    PeerError => "peer_error",
    /// Plain or raw framing: a handler failed, and the framing cannot say so.
    HandlerFailed => "handler_failed",
    /// Reading or writing failed: a reset, a broken pipe.
    IoError => "io_error",
    /// The server was shutting down and the drain timeout passed with requests of this
    /// connection still unanswered.
    DrainTimeout => "drain_timeout",
}

impl CloseReason {
    /// Whether this is an ordinary end (logged at debug) rather than a limit or a fault
    /// (logged at info).
    pub fn is_clean(self) -> bool {
        matches!(
            self,
            CloseReason::PeerClosed | CloseReason::Drained | CloseReason::CloseAfter
        )
    }

    /// This reason's slot in [`Stats`]: the declaration order, which is also [`Self::ALL`]'s.
    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One counter of the table: its name (the field of the STATS JSON, the `courier stats`
/// line, the shutdown log) and what it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// The name, as in [`Snapshot`]'s field.
    pub name: &'static str,
    /// What it counts, in one sentence or two (the field's documentation).
    pub help: &'static str,
}

/// Declares the counters once, from a table of `name: "what it counts"` in two groups:
/// `counted`, counted one event at a time by [`Stats`]' own methods, and `tallied`,
/// counted by a connection's loop in its `Tally` and added once per turn. It makes the
/// atomics of [`Stats`], the fields of [`Snapshot`] (documented by the table) and of
/// `Tally`, [`Stats::snapshot`], the adding of a tally, [`Snapshot::COUNTERS`] and
/// [`Snapshot::counters`]. `closed`, one count per [`CloseReason`], sits between the
/// groups, where the STATS JSON has always had it.
macro_rules! counters {
    (
        counted { $($counted:ident: $counted_help:literal,)* }
        tallied { $($tallied:ident: $tallied_help:literal,)* }
    ) => {
        /// The live counters of one server. Shared by every connection task; read with
        /// [`Stats::snapshot`].
        #[derive(Debug, Default)]
        pub struct Stats {
            $($counted: AtomicU64,)*
            closed: [AtomicU64; CloseReason::ALL.len()],
            $($tallied: AtomicU64,)*
            /// Request durations and handler calls running (`--metrics`).
            timing: Timings,
            /// ERROR frames answering requests, by code ([`error_slot`]).
            error_codes: [AtomicU64; ERROR_SLOTS],
            /// Wakes the tasks waiting in [`Stats::burst`].
            bursts: Bursts,
            /// Figures of the handler's own, for the `route` member of the snapshot.
            #[cfg(feature = "json")]
            extra: OnceLock<Extra>,
        }

        /// The counters at one moment, as the STATS reply carries them (JSON, field names
        /// and order as here).
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[non_exhaustive]
        pub struct Snapshot {
            $(#[doc = $counted_help] pub $counted: u64,)*
            /// Connections closed, by reason ([`CloseReason::name`]); every reason is
            /// listed, in [`CloseReason::ALL`]'s order.
            pub closed: Vec<(String, u64)>,
            $(#[doc = $tallied_help] pub $tallied: u64,)*
            /// A router's own figures: its counters and one object per backend
            /// (`courier route`; docs/ROUTE.md). Absent from a plain server's STATS.
            #[cfg(feature = "json")]
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub route: Option<serde_json::Value>,
        }

        /// One connection's counts since they were last added to [`Stats`].
        #[derive(Debug, Default)]
        pub(crate) struct Tally {
            $(#[doc = $tallied_help] pub(crate) $tallied: u64,)*
            /// Request durations and the change in handler calls running.
            pub(crate) timing: Timing,
            /// The ERRORs counted in `errors`, by code ([`error_slot`]).
            pub(crate) error_codes: [u32; ERROR_SLOTS],
        }

        impl Snapshot {
            /// Every counter but `closed`, in the order [`Snapshot::counters`] lists
            /// them: the table this module declares its counters with.
            pub const COUNTERS: [Counter; [$(stringify!($counted),)* $(stringify!($tallied),)*].len()] = [
                $(Counter { name: stringify!($counted), help: $counted_help },)*
                $(Counter { name: stringify!($tallied), help: $tallied_help },)*
            ];

            /// The STATS reply's JSON, without whitespace: exactly what serde_json writes
            /// for this type, written here so that a server needs no JSON library.
            pub fn to_json(&self) -> String {
                use std::fmt::Write as _;
                // Writing to a String cannot fail.
                let mut out = String::from("{");
                $(let _ = write!(out, "\"{}\":{},", stringify!($counted), self.$counted);)*
                out.push_str("\"closed\":[");
                for (n, (reason, value)) in self.closed.iter().enumerate() {
                    let comma = if n > 0 { "," } else { "" };
                    // Reason names are plain identifiers: nothing to escape.
                    let _ = write!(out, "{comma}[\"{reason}\",{value}]");
                }
                out.push(']');
                $(let _ = write!(out, ",\"{}\":{}", stringify!($tallied), self.$tallied);)*
                // A router's figures: serde_json::Value's Display is its compact JSON.
                #[cfg(feature = "json")]
                if let Some(route) = &self.route {
                    let _ = write!(out, ",\"route\":{route}");
                }
                out.push('}');
                out
            }

            /// Every counter but `closed` (see [`Snapshot::closed`]) with its value, in
            /// [`Snapshot::COUNTERS`]' order: what `courier stats` prints, one a line.
            pub fn counters(&self) -> [(&'static str, u64); Snapshot::COUNTERS.len()] {
                [
                    $((stringify!($counted), self.$counted),)*
                    $((stringify!($tallied), self.$tallied),)*
                ]
            }
        }

        impl Stats {
            /// Reads every counter. Counters are read one by one while connections keep
            /// working, so a snapshot of a busy server is not one instant; each counter
            /// only grows, except `open`.
            pub fn snapshot(&self) -> Snapshot {
                Snapshot {
                    $($counted: self.$counted.load(Relaxed),)*
                    closed: self.closed_counts(),
                    $($tallied: self.$tallied.load(Relaxed),)*
                    #[cfg(feature = "json")]
                    route: self.extra.get().map(|extra| (extra.0)()),
                }
            }

            /// Adds a tally's counts: one atomic add for each that is not zero, since a
            /// turn usually moves one or two of them (this runs once per turn of every
            /// connection's loop).
            fn add_counts(&self, tally: &Tally) {
                $(if tally.$tallied > 0 {
                    self.$tallied.fetch_add(tally.$tallied, Relaxed);
                })*
                self.timing.add(&tally.timing);
                if tally.errors > 0 {
                    for (total, count) in self.error_codes.iter().zip(tally.error_codes) {
                        if count > 0 {
                            total.fetch_add(u64::from(count), Relaxed);
                        }
                    }
                }
            }
        }
    };
}

counters! {
    counted {
        accepted: "Connections accepted and served.",
        rejected_busy: "Connections turned away because `max_connections` were open.",
        accept_errors: "Accept calls that failed for a reason other than one connection \
            (out of file descriptors, say); each is followed by a pause.",
        open: "Connections open now (their tasks are running).",
    }
    tallied {
        protocol_errors: "Protocol violations, whether or not they closed the connection \
            (a duplicate request id does not).",
        requests: "REQUEST frames (or plain/raw messages) received.",
        oneway: "ONEWAY frames received.",
        replies: "REPLY frames (or plain/raw replies) queued for sending.",
        errors: "ERROR frames answering a request (handler failures, duplicate ids, \
            replies too large for the client).",
        pings: "PING frames answered.",
        bytes_in: "Bytes of the messages received and decoded, frame headers included.",
        bytes_out: "Bytes of the messages queued for sending, frame headers included.",
        udp_cache_hits: "UDP: duplicate requests answered from the reply cache (the handler \
            did not run again).",
        udp_dup_running: "UDP: duplicate requests that arrived while the handler was still \
            running them (no second run; the reply goes out once it is ready).",
        udp_payload_mismatch: "UDP: requests that reused a (session, id) with a different \
            payload, refused with ERROR 10.",
        udp_evictions: "UDP: replies dropped from the reply cache before their lifetime, to \
            stay within `udp_cache_entries` or `udp_cache_bytes`.",
        udp_too_large: "UDP: datagrams over `udp_max_payload`, answered with ERROR 4.",
        udp_unvalidated_drops: "UDP: answers not sent because the peer's address is not \
            validated and they would exceed 3 times the bytes received from it.",
    }
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

/// What [`Stats::set_route`] was given.
#[cfg(feature = "json")]
struct Extra(Box<dyn Fn() -> serde_json::Value + Send + Sync>);

#[cfg(feature = "json")]
impl fmt::Debug for Extra {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Extra(..)")
    }
}

impl Stats {
    /// Counters at zero.
    pub fn new() -> Stats {
        Stats::default()
    }

    /// Makes every snapshot carry `figures()` as its `route` member (a router's
    /// per-backend figures). Only the first call counts.
    #[cfg(feature = "json")]
    pub fn set_route(&self, figures: impl Fn() -> serde_json::Value + Send + Sync + 'static) {
        let _ = self.extra.set(Extra(Box::new(figures)));
    }

    /// The close counts by name, in [`CloseReason::ALL`]'s order.
    fn closed_counts(&self) -> Vec<(String, u64)> {
        CloseReason::ALL
            .iter()
            .map(|reason| {
                let count = self.closed[reason.index()].load(Relaxed);
                (reason.name().to_owned(), count)
            })
            .collect()
    }

    /// Connections open now.
    pub(crate) fn open_now(&self) -> u64 {
        self.open.load(Relaxed)
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
    /// ERROR frames sent in answer to requests, by slot of [`error_slot`]: how often each
    /// code was sent since the server started.
    pub fn errors_by_slot(&self) -> [u64; ERROR_SLOTS] {
        std::array::from_fn(|slot| self.error_codes[slot].load(Relaxed))
    }

    pub(crate) fn add(&self, tally: &mut Tally) {
        self.add_once(tally);
        *tally = Tally::default();
    }

    /// Adds `tally` and leaves it as it is: for a tally about to be dropped, which need
    /// not be cleared (it is some 400 bytes).
    fn add_once(&self, tally: &Tally) {
        self.add_counts(tally);
        if self.bursts.watchers.load(Relaxed) > 0
            && tally.requests + tally.oneway + tally.pings + tally.protocol_errors > 0
        {
            self.bursts.moved();
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

    /// Waits for a burst: two moves of [`Stats::activity`] at most `window` apart. The
    /// first of the two may be the move at `since`, after which it read `seen`. A move
    /// that came before this call, while nobody watched, counts as one made now.
    ///
    /// Moves further apart wake nobody: the counting side reads the clock (only while
    /// someone waits here) and wakes the waiters only for a move close behind the one
    /// before. Waking the waiter on every move, for it to find the gap too long, cost a
    /// lightly loaded server a task wake-up per request: at 2,000 requests/s on one
    /// connection, 48 µs of server CPU and 2.2 context switches per request against 29 µs
    /// and 1.5 now, which is what a server that never polls spends (`courier bench -c 1
    /// --rate 2000`); and under callgrind, where every gap is long, 5,000 instructions per
    /// request against 4,600 (`bench/instructions`).
    ///
    /// The counters are relaxed, so a count made just as a task starts waiting may not be
    /// seen; a burst is then noticed one request late, which costs that request a little
    /// latency and nothing else.
    ///
    /// Gaps are measured on Tokio's clock. The server's pollers pass a `since` from the
    /// wall clock, which is the same clock unless a test pauses Tokio's; there this filter
    /// may wake a poller too often or too rarely, which decides only whether it polls for
    /// a window.
    pub(crate) async fn burst(&self, window: Duration, seen: u64, since: Instant) {
        let bursts = &self.bursts;
        let notified = bursts.moved.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let _watching = Watching::new(&bursts.watchers);
        bursts.window.store(nanos(window), Relaxed);
        let mut last = since;
        if self.activity() != seen {
            let now = Instant::now();
            if now.saturating_duration_since(since) <= window {
                return;
            }
            last = now;
        }
        bursts.last_move.store(bursts.nanos_at(last), Relaxed);
        notified.await;
    }

    /// Tasks waiting in [`Stats::burst`] now.
    #[cfg(test)]
    pub(crate) fn watchers(&self) -> usize {
        self.bursts.watchers.load(Relaxed)
    }
}

/// What [`Stats::burst`] waits on.
#[derive(Debug)]
struct Bursts {
    /// Tasks waiting in [`Stats::burst`]; while there are none, counting reads no clock
    /// and wakes nobody.
    watchers: AtomicUsize,
    /// The window they wait with, in nanoseconds.
    window: AtomicU64,
    /// When the activity last moved while a task waited, or, when none has since a task
    /// began to wait, the move that task saw last: nanoseconds since `epoch`.
    last_move: AtomicU64,
    epoch: Instant,
    moved: Notify,
}

impl Default for Bursts {
    fn default() -> Self {
        Bursts {
            watchers: AtomicUsize::new(0),
            window: AtomicU64::new(0),
            last_move: AtomicU64::new(0),
            epoch: Instant::now(),
            moved: Notify::new(),
        }
    }
}

impl Bursts {
    /// The activity moved while a task waits: wakes it if this move is close behind the
    /// one before.
    #[cold]
    fn moved(&self) {
        let now = self.nanos_at(Instant::now());
        let last = self.last_move.swap(now, Relaxed);
        if now.saturating_sub(last) <= self.window.load(Relaxed) {
            self.moved.notify_waiters();
        }
    }

    fn nanos_at(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.epoch))
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Slots of the ERROR counts by code: see [`error_slot`].
pub const ERROR_SLOTS: usize = 32;

/// Where an ERROR code is counted: codes 1 to 30 each in their own slot, application
/// codes (1000 and above) together in slot 0, any other code in slot 31.
pub fn error_slot(code: u16) -> usize {
    match code {
        1..=30 => usize::from(code),
        1000.. => 0,
        _ => ERROR_SLOTS - 1,
    }
}

impl Tally {
    /// Counts one ERROR frame answering a request, with its code.
    pub(crate) fn error(&mut self, code: u16) {
        self.errors += 1;
        self.error_codes[error_slot(code)] += 1;
    }
}

/// Upper bounds, in seconds, of the request duration histogram's buckets (a last one,
/// `+Inf`, takes the rest): from 100 µs, which an inline answer stays under, to 30 s, the
/// default `exec_timeout`.
pub const DURATION_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// One connection's request durations since they were last added to [`Stats`], and how
/// many more handler calls it runs than it did then. Part of the per-turn `Tally`, so that
/// a request costs no atomic of its own.
#[derive(Debug, Default)]
pub(crate) struct Timing {
    /// Answers per bucket of [`DURATION_BUCKETS`]; the last one is `+Inf`.
    buckets: [u64; DURATION_BUCKETS.len() + 1],
    /// Their durations added up, in nanoseconds.
    sum_nanos: u64,
    /// Handler calls started less those finished (or dropped with their connection).
    pub(crate) in_flight: i64,
    /// Bit n is set once `buckets[n]` counted something: the buckets to add. A turn
    /// usually counts in one bucket, and scanning all 18 twice (any? which?) cost some 90
    /// of the server's instructions per request at 50 connections (callgrind).
    touched: u32,
}

// Every bucket has its bit in `Timing::touched`.
const _: () = assert!(DURATION_BUCKETS.len() < u32::BITS as usize);

impl Timing {
    /// Counts an answer that took `took` from its request's arrival.
    pub(crate) fn record(&mut self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[bucket] += 1;
        self.touched |= 1 << bucket;
        self.sum_nanos = self.sum_nanos.saturating_add(nanos(took));
    }

    /// Counts `count` answers the handler gave inline (`Handler::ready`), before the
    /// next message was read: in the lowest bucket, as taking no measurable time. The
    /// clock is not read for them, so the fastest path costs nothing more.
    pub(crate) fn record_inline(&mut self, count: u64) {
        if count > 0 {
            self.buckets[0] += count;
            self.touched |= 1;
        }
    }
}

/// The server-wide side of [`Timing`].
#[derive(Debug, Default)]
struct Timings {
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    in_flight: AtomicI64,
}

impl Timings {
    /// Adds one connection's timing: nothing at all for a turn that answered nothing.
    fn add(&self, timing: &Timing) {
        if timing.in_flight != 0 {
            self.in_flight.fetch_add(timing.in_flight, Relaxed);
        }
        if timing.touched == 0 {
            return;
        }
        let mut touched = timing.touched;
        while touched != 0 {
            let bucket = touched.trailing_zeros() as usize;
            self.buckets[bucket].fetch_add(timing.buckets[bucket], Relaxed);
            touched &= touched - 1;
        }
        // Inline answers add no time: most turns have none to add.
        if timing.sum_nanos > 0 {
            self.sum_nanos.fetch_add(timing.sum_nanos, Relaxed);
        }
    }
}

/// The request duration histogram at one moment: from a REQUEST's arrival (or a plain or
/// raw message's) to its answer being queued, ONEWAY messages left out.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Durations {
    /// `(upper bound in seconds, answers that took at most that)`, cumulative, one per
    /// [`DURATION_BUCKETS`] entry; `+Inf` is [`Durations::count`].
    pub buckets: Vec<(f64, u64)>,
    /// Answers counted.
    pub count: u64,
    /// Their durations added up, in seconds.
    pub sum_seconds: f64,
}

impl Stats {
    /// The request duration histogram. Its count is the sum of its buckets, so it agrees
    /// with them even while connections keep counting.
    pub fn durations(&self) -> Durations {
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(DURATION_BUCKETS.len());
        for (n, bound) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += self.timing.buckets[n].load(Relaxed);
            buckets.push((*bound, cumulative));
        }
        let count = cumulative + self.timing.buckets[DURATION_BUCKETS.len()].load(Relaxed);
        let sum_nanos = self.timing.sum_nanos.load(Relaxed);
        Durations {
            buckets,
            count,
            sum_seconds: Duration::from_nanos(sum_nanos).as_secs_f64(),
        }
    }

    /// Handler calls running now, on every connection (answers given inline never
    /// count). Added once per turn of each connection's loop, as the counters are.
    pub fn in_flight(&self) -> u64 {
        u64::try_from(self.timing.in_flight.load(Relaxed)).unwrap_or(0)
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

/// Counts one task in [`Stats::burst`] for as long as it waits there (a cancelled wait
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
        self.stats.add_once(&self.tally);
    }
}

impl fmt::Display for Snapshot {
    /// One line: `accepted=3 rejected_busy=0 ... closed: peer_closed=2 idle_timeout=1`,
    /// listing only the close reasons that happened.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, value) in self.counters() {
            write!(f, "{name}={value} ")?;
        }
        f.write_str("closed:")?;
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

    /// A waker that counts its wake-ups.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl futures::task::ArcWake for Wakes {
        fn wake_by_ref(this: &std::sync::Arc<Self>) {
            this.0.fetch_add(1, Relaxed);
        }
    }

    fn count(stats: &Stats, tally: Tally) {
        stats.add_once(&tally);
    }

    fn request() -> Tally {
        Tally {
            requests: 1,
            ..Tally::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_move_close_behind_another_wakes_a_burst_waiter() {
        use std::future::Future;
        use std::task::Context;
        use tokio::time::advance;

        const WINDOW: Duration = Duration::from_micros(100);
        let stats = Stats::new();
        let wakes = std::sync::Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = futures::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let burst = stats.burst(WINDOW, stats.activity(), Instant::now());
        tokio::pin!(burst);
        assert!(burst.as_mut().poll(&mut cx).is_pending());
        assert_eq!(stats.watchers(), 1);

        // Moves a millisecond apart, and a turn that moves nothing: nobody is woken.
        for _ in 0..3 {
            advance(Duration::from_millis(1)).await;
            count(&stats, request());
        }
        count(
            &stats,
            Tally {
                replies: 1,
                bytes_out: 100,
                ..Tally::default()
            },
        );
        assert_eq!(wakes.0.load(Relaxed), 0, "gaps longer than the window");

        // The next one close behind the last: a burst.
        advance(Duration::from_micros(40)).await;
        count(&stats, request());
        assert_eq!(wakes.0.load(Relaxed), 1);
        assert!(burst.as_mut().poll(&mut cx).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_move_made_before_the_wait_counts_from_the_move_before_it() {
        use tokio::time::advance;

        const WINDOW: Duration = Duration::from_micros(100);
        let stats = Stats::new();
        let (seen, since) = (stats.activity(), Instant::now());
        advance(Duration::from_micros(30)).await;
        count(&stats, request());
        // Within the window of `since`: a burst already, no waiting.
        stats.burst(WINDOW, seen, since).await;

        // Long after: not a burst; this move starts the count, and one close behind it ends
        // the wait.
        let (seen, since) = (stats.activity(), Instant::now());
        advance(Duration::from_millis(5)).await;
        count(&stats, request());
        let burst = stats.burst(WINDOW, seen, since);
        tokio::pin!(burst);
        assert!(futures::poll!(burst.as_mut()).is_pending());
        advance(Duration::from_micros(60)).await;
        count(&stats, request());
        assert!(futures::poll!(burst.as_mut()).is_ready());
        assert_eq!(stats.watchers(), 0);
    }

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
    fn errors_are_counted_by_code_with_application_codes_together() {
        assert_eq!(
            [1, 11, 30, 31, 999, 1000, 65_535].map(error_slot),
            [1, 11, 30, 31, 31, 0, 0]
        );
        let stats = Stats::new();
        let mut tally = Tally::default();
        for code in [11, 11, 4, 1000, 4242, 500] {
            tally.error(code);
        }
        stats.add(&mut tally);
        let slots = stats.errors_by_slot();
        assert_eq!((slots[11], slots[4], slots[0], slots[31]), (2, 1, 2, 1));
        assert_eq!(slots.iter().sum::<u64>(), 6);
        assert_eq!(stats.snapshot().errors, 6);
        assert_eq!(tally.error_codes, [0; ERROR_SLOTS], "the tally is zeroed");
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

    #[test]
    fn durations_land_in_their_buckets_and_add_up() {
        let stats = Stats::new();
        let mut tally = Tally::default();
        tally.timing.record(Duration::from_micros(50));
        tally.timing.record(Duration::from_millis(3));
        tally.timing.record(Duration::from_secs(60));
        tally.timing.record_inline(2);
        tally.timing.in_flight = 3;
        stats.add(&mut tally);
        let mut tally = Tally::default();
        tally.timing.in_flight = -1;
        stats.add(&mut tally);
        let durations = stats.durations();
        assert_eq!(durations.count, 5);
        let at = |bound: f64| {
            durations
                .buckets
                .iter()
                .find(|(b, _)| *b == bound)
                .map(|(_, count)| *count)
        };
        assert_eq!(at(0.0001), Some(3), "two inline and 50 µs");
        assert_eq!(at(0.0025), Some(3));
        assert_eq!(at(0.005), Some(4), "3 ms");
        assert_eq!(at(30.0), Some(4), "60 s is only in +Inf");
        assert!((durations.sum_seconds - 60.00305).abs() < 1e-9);
        assert_eq!(stats.in_flight(), 2);
    }

    /// A snapshot whose counters all differ: the table's n-th counter is n + 1, the n-th
    /// close reason 100 + n. Made from JSON, so that a counter the JSON leaves out fails.
    fn numbered() -> (Snapshot, serde_json::Value) {
        let mut json = serde_json::Map::new();
        for (n, counter) in Snapshot::COUNTERS.iter().enumerate() {
            json.insert(counter.name.into(), (n as u64 + 1).into());
        }
        let closed: Vec<_> = CloseReason::ALL
            .iter()
            .enumerate()
            .map(|(n, reason)| serde_json::json!([reason.name(), 100 + n as u64]))
            .collect();
        json.insert("closed".into(), closed.into());
        let json = serde_json::Value::Object(json);
        let snapshot = serde_json::from_value(json.clone()).expect("the table's JSON");
        (snapshot, json)
    }

    #[test]
    fn every_counter_of_the_table_is_in_the_json_and_the_log_line() {
        let (snapshot, json) = numbered();
        for (n, (name, value)) in snapshot.counters().into_iter().enumerate() {
            assert_eq!(name, Snapshot::COUNTERS[n].name);
            assert_eq!(value, n as u64 + 1, "{name} is not read from the JSON");
            assert!(
                snapshot.to_string().contains(&format!("{name}={value} ")),
                "the log line lacks {name}: {snapshot}"
            );
        }
        for (n, reason) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(snapshot.closed(*reason), 100 + n as u64, "{reason}");
        }
        // Written back, the JSON has every counter of the table and nothing else.
        assert_eq!(serde_json::to_value(&snapshot).unwrap(), json);
        assert_eq!(
            snapshot.to_json(),
            serde_json::to_string(&snapshot).unwrap()
        );
        let fields = json.as_object().unwrap().len();
        assert_eq!(
            fields,
            Snapshot::COUNTERS.len() + 1,
            "the counters and `closed`"
        );
    }

    #[test]
    fn the_json_is_the_protocol_documents_example_byte_for_byte() {
        let doc = include_str!("../docs/PROTOCOL.md");
        let section = &doc[doc.find("## Counters and STATS").expect("the section")..];
        let start = section.find("```json\n").expect("a JSON example") + "```json\n".len();
        let end = start + section[start..].find("```").expect("its end");
        // The example is wrapped for reading; the server writes it without whitespace.
        let example: String = section[start..end].split_whitespace().collect();
        let snapshot: Snapshot = serde_json::from_str(&example).expect("the example parses");
        assert_eq!(serde_json::to_string(&snapshot).unwrap(), example);
        assert_eq!(snapshot.to_json(), example);
        let names: Vec<_> = snapshot
            .closed
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        let all: Vec<_> = CloseReason::ALL
            .iter()
            .map(|reason| reason.name())
            .collect();
        assert_eq!(names, all, "the example lists every close reason, in order");
    }
}
