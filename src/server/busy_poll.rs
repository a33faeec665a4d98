//! Busy polling (`busy_poll` in the config): after peers were last active, the runtime's
//! workers keep asking the kernel for ready sockets without blocking, for a short window,
//! instead of going to sleep in `epoll_wait`.
//!
//! Why: on a virtual machine most of a small round trip is not spent in courier or in the
//! TCP stack but in waking a CPU that went idle. `bench/compare` measures a blocking C
//! ping-pong across two CPUs at about 55 µs per round trip, and the same ping-pong with
//! the server polling instead of blocking at about 19 µs: the difference is the price of
//! one side's sleep and wake-up. A worker that polls for a little while after each burst
//! never sleeps between the requests of a busy client, so it answers the next one as soon
//! as it lands.
//!
//! How: one task per worker thread loops on [`tokio::task::yield_now`]. A yielded task is
//! run again only after its worker has polled the I/O driver, and a worker with nothing
//! else to run polls it with a zero timeout (`epoll_wait(.., 0)`) rather than blocking; so
//! while these tasks spin, every ready socket is noticed within one turn of the loop, and
//! its connection task runs at once. Other tasks are not held up: a yielding task goes to
//! the back of the line.
//!
//! It adapts: the tasks poll only while requests keep arriving closer together than the
//! window. After a gap longer than the window they sleep until the counters move twice
//! within a window, and poll again from that first short gap on (the moves before it wake
//! nobody); once the counters have not moved for a window, they sleep too. So a client
//! that sends a request every millisecond costs no polling and no poller wake-up, an idle
//! server uses no CPU, and only a busy connection keeps a CPU polling, for at most one
//! window past its last request. It
//! polls only while at most [`MAX_POLLED_CONNECTIONS`] connections are open: with many,
//! the server's requests come close together though no one client's do. And it gives
//! way: on Linux, a polling thread that the kernel keeps preempting (another thread wants
//! its CPU: on a machine with few CPUs, often the very client it is waiting for) stops
//! polling for 100 ms; a lone preemption (a kernel thread's moment) does not count.
//! Because it adapts, it is on by default (a 100 µs window); `0s` turns it off where CPU
//! time matters more than round-trip latency.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::stats::Stats;

/// Spawns one polling task per worker of the current runtime; they stop when `stop` is
/// cancelled. The tracker returned is closed: wait on it to see them end.
pub(crate) fn start(window: Duration, stats: &Arc<Stats>, stop: &CancellationToken) -> TaskTracker {
    let tracker = TaskTracker::new();
    // One per worker: a worker whose polling task is elsewhere would sleep in epoll_wait,
    // and whichever worker sleeps there holds the driver, so the others could not poll it.
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    for _ in 0..workers {
        tracker.spawn(spin(window, stats.clone(), stop.clone(), wall_now));
    }
    tracker.close();
    tracker
}

/// Polls for `window` after the counters move, but only while they keep moving closer
/// together than `window`: a gap longer than that says the next request will not come
/// within a window either, so polling would cost a CPU for nothing, and the task sleeps
/// until the counters move twice within a window ([`Stats::burst`]): the first short gap
/// after such a sleep turns polling back on, and the moves before it wake nobody.
///
/// Polling also stops, for [`REST`], when the kernel keeps preempting the polling thread
/// ([`Contention`]): another thread wants that CPU (the client on the same machine, say),
/// and a poller that keeps it from running makes the round trip slower, not faster.
///
/// `clock` tells the time: [`wall_now`] in a server, Tokio's pausable clock in the tests
/// that step through a window.
async fn spin(
    window: Duration,
    stats: Arc<Stats>,
    stop: CancellationToken,
    clock: fn() -> Instant,
) {
    let mut pace = Pace::new(window, stats.activity(), clock());
    let mut cpu = Contention::new(clock());
    while !stop.is_cancelled() {
        let now = clock();
        if !pace.poll_on(stats.activity(), now) {
            if now < pace.resting_until {
                // Resting: not woken by every request meanwhile, which would cost a
                // wake-up of this worker per request.
                tokio::select! {
                    () = tokio::time::sleep_until(pace.resting_until) => {}
                    () = stop.cancelled() => return,
                }
                continue;
            }
            tokio::select! {
                () = stats.burst(window, pace.seen, pace.moved_at) => {}
                () = stop.cancelled() => return,
            }
            pace.burst(stats.activity(), clock());
            cpu.restart(clock());
            continue;
        }
        if let Some(preempted) = cpu.preempted(now) {
            if !pace.checked(now, preempted, stats.open_now()) {
                continue;
            }
        }
        tokio::task::yield_now().await;
    }
}

/// Now, by the wall clock. Not Tokio's clock: under a paused clock (tests with
/// `start_paused`), Tokio's time stands still while tasks keep running, so a window
/// measured on it would never end, the polling tasks would never rest, and the runtime,
/// never idle, would never move its paused clock on: every test with a server in it
/// would hang. By the wall clock a window ends after its 100 µs whatever the test's clock.
fn wall_now() -> Instant {
    Instant::from_std(std::time::Instant::now())
}

/// How long polling stays off after the polling thread was preempted: at first; each
/// preemption soon after a rest doubles it, up to [`MAX_REST`].
const REST: Duration = Duration::from_millis(100);

/// The longest rest: a machine where polling keeps getting preempted tries it again this
/// often.
const MAX_REST: Duration = Duration::from_secs(10);

/// Polling this long without a preemption brings the rest back to [`REST`].
const CLEAN_RUN: Duration = Duration::from_millis(50);

/// How often a polling task asks the kernel whether its thread was preempted.
const CHECK_EVERY: Duration = Duration::from_micros(50);

/// Above this many open connections polling stays off (checked every [`CHECK_EVERY`] of
/// polling, and then for [`MANY_CONNECTIONS_REST`]). With many connections the server's
/// requests come close together though each client's do not, so the window alone would
/// keep a worker polling for nothing: at 20,000 requests/s in open loop over 10,000
/// connections (bench/many_connections, 3 rounds each) server CPU per request was
/// 19-23 µs polling against 17-19 µs not; with this limit, alternating runs gave
/// 20.6-21.5 µs for both. Polling pays where a few clients wait on each reply before
/// sending again (one connection: a round trip of 20 µs against 59 µs); at 50
/// closed-loop connections it had changed nothing measurable (0.98x to 1.02x).
const MAX_POLLED_CONNECTIONS: u64 = 8;

/// How long polling stays off once more than [`MAX_POLLED_CONNECTIONS`] are open: a
/// timer, not a wake-up on every request, and short enough that polling is back soon after
/// most connections have gone.
const MANY_CONNECTIONS_REST: Duration = Duration::from_millis(100);

/// When polling pays: the counters' last value, when they last moved, whether the gap
/// before that was shorter than the window, and until when polling rests.
#[derive(Debug)]
struct Pace {
    window: Duration,
    seen: u64,
    moved_at: Instant,
    close_together: bool,
    resting_until: Instant,
    /// The last rest's length (zero: none yet).
    rest: Duration,
    /// Polling time since the last rest (or the start) without a preemption.
    clean: Duration,
}

impl Pace {
    fn new(window: Duration, seen: u64, now: Instant) -> Pace {
        Pace {
            window,
            seen,
            moved_at: now,
            close_together: false,
            resting_until: now,
            rest: Duration::ZERO,
            clean: Duration::ZERO,
        }
    }

    /// The counters read `activity` at `now`: whether to go on polling.
    fn poll_on(&mut self, activity: u64, now: Instant) -> bool {
        if activity != self.seen {
            self.moved(activity, now);
        }
        self.close_together && now < self.moved_at + self.window && now >= self.resting_until
    }

    fn moved(&mut self, activity: u64, now: Instant) {
        self.close_together = now.saturating_duration_since(self.moved_at) <= self.window;
        self.seen = activity;
        self.moved_at = now;
    }

    /// The counters moved twice within a window ([`Stats::burst`]), the last time just
    /// before `now`, to `activity`.
    fn burst(&mut self, activity: u64, now: Instant) {
        self.close_together = true;
        self.seen = activity;
        self.moved_at = now;
    }

    /// Polling took a CPU that another thread wanted: none for a while, longer each
    /// time it happens again before a clean run of polling.
    fn rest(&mut self, now: Instant) {
        self.rest = if self.rest.is_zero() || self.clean >= CLEAN_RUN {
            REST
        } else {
            (self.rest * 2).min(MAX_REST)
        };
        self.clean = Duration::ZERO;
        self.resting_until = now + self.rest;
    }

    /// A check every [`CHECK_EVERY`] of polling, with whether the thread was `preempted`
    /// meanwhile and how many connections are `open`: whether polling goes on.
    fn checked(&mut self, now: Instant, preempted: bool, open: u64) -> bool {
        if preempted {
            self.rest(now);
            false
        } else if open > MAX_POLLED_CONNECTIONS {
            self.pause(now, MANY_CONNECTIONS_REST);
            false
        } else {
            self.clean(CHECK_EVERY);
            true
        }
    }

    /// No polling for `pause` from `now`, without counting it as a preemption.
    fn pause(&mut self, now: Instant, pause: Duration) {
        self.resting_until = self.resting_until.max(now + pause);
    }

    /// `polled` more of polling without a preemption.
    fn clean(&mut self, polled: Duration) {
        self.clean += polled;
    }
}

/// Whether the polling thread gets preempted: its count of involuntary context switches,
/// read every [`CHECK_EVERY`] of polling (Linux only; elsewhere it never reports one).
#[derive(Debug)]
struct Contention {
    thread: std::thread::ThreadId,
    switches: i64,
    next_check: Instant,
    /// Recent preemptions: each check halves it and adds 2 per new one. A lone
    /// preemption (a kernel thread taking the CPU for a moment: softirq work the polling
    /// thread kept from running while idle, say) decays away; another thread that keeps
    /// wanting the CPU, such as a client sharing it, preempts at check after check.
    recent: i64,
}

/// [`Contention::recent`] at which polling gives way: preemptions at two checks in a row
/// (2 + 2 / 2), or two at one.
const CONTENDED: i64 = 3;

impl Contention {
    fn new(now: Instant) -> Contention {
        Contention {
            thread: std::thread::current().id(),
            switches: involuntary_switches(),
            next_check: now + CHECK_EVERY,
            recent: 0,
        }
    }

    /// Polling starts again (perhaps on another worker thread): counts from here.
    fn restart(&mut self, now: Instant) {
        *self = Contention::new(now);
    }

    /// Whether another thread contends for the polling thread's CPU: preempted at this
    /// check and recently (on the same thread; the task may have moved to another worker,
    /// whose count starts anew); `None` when it is not time to check.
    fn preempted(&mut self, now: Instant) -> Option<bool> {
        if now < self.next_check {
            return None;
        }
        let (thread, switches) = (std::thread::current().id(), involuntary_switches());
        let new = if thread == self.thread {
            (switches - self.switches).max(0)
        } else {
            0
        };
        (self.thread, self.switches, self.next_check) = (thread, switches, now + CHECK_EVERY);
        Some(contended(&mut self.recent, new))
    }
}

/// Adds a check's `new` preemptions to `recent` (halved first); whether that makes the CPU
/// contended, which starts the count afresh.
fn contended(recent: &mut i64, new: i64) -> bool {
    *recent = *recent / 2 + 2 * new.min(CONTENDED);
    let contended = *recent >= CONTENDED;
    if contended {
        *recent = 0;
    }
    contended
}

/// The calling thread's involuntary context switches so far.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn involuntary_switches() -> i64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_THREAD).map_or(0, |usage| usage.involuntary_context_switches())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn involuntary_switches() -> i64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Tally;

    const WINDOW: Duration = Duration::from_micros(100);

    fn count_one(stats: &Stats) {
        stats.add(&mut Tally {
            requests: 1,
            ..Tally::default()
        });
    }

    async fn settle() {
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn polling_pays_only_after_a_gap_shorter_than_the_window() {
        let start = Instant::now();
        let at = |us| start + Duration::from_micros(us);
        let mut pace = Pace::new(WINDOW, 0, start);
        assert!(!pace.poll_on(0, at(0)), "nothing has moved yet");
        assert!(
            pace.poll_on(1, at(60)),
            "60 µs after the start: close together"
        );
        assert!(pace.poll_on(1, at(159)), "within a window of the last move");
        assert!(!pace.poll_on(1, at(161)), "a window without a move");
        assert!(
            !pace.poll_on(2, at(1_000)),
            "after a long gap, the next move does not poll"
        );
        assert!(
            pace.poll_on(3, at(1_040)),
            "the first short gap turns it back on"
        );
        assert!(
            pace.poll_on(4, at(1_140)),
            "a gap of exactly one window still counts"
        );
        assert!(
            !pace.poll_on(5, at(1_241)),
            "a gap of just over one window does not"
        );
    }

    #[test]
    fn a_preempted_poller_rests_longer_each_time_until_a_clean_run() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut pace = Pace::new(WINDOW, 0, start);
        let soon_after = |t: Instant| t + Duration::from_micros(30);
        assert!(pace.poll_on(1, at(0)), "close together");
        pace.rest(at(0));
        assert_eq!(pace.resting_until, at(100), "the first rest is REST");
        assert!(!pace.poll_on(2, at(50)), "no polling while resting");
        assert!(
            !pace.poll_on(3, soon_after(at(50))),
            "not even after a short gap"
        );
        pace.poll_on(4, at(100));
        assert!(
            pace.poll_on(5, soon_after(at(100))),
            "polling again after a short gap once the rest is over"
        );
        pace.rest(at(100));
        assert_eq!(
            pace.resting_until,
            at(300),
            "preempted again at once: twice as long"
        );
        pace.rest(at(300));
        assert_eq!(pace.resting_until, at(700));
        for _ in 0..20 {
            pace.rest(at(700));
        }
        assert_eq!(
            pace.resting_until,
            at(700) + MAX_REST,
            "never longer than MAX_REST"
        );
        pace.clean(CLEAN_RUN);
        pace.rest(at(20_000));
        assert_eq!(
            pace.resting_until,
            at(20_100),
            "after a clean run, back to REST"
        );
    }

    #[test]
    fn a_pause_stops_polling_for_its_length_and_never_shortens_a_rest() {
        let start = Instant::now();
        let at = |us| start + Duration::from_micros(us);
        let mut pace = Pace::new(WINDOW, 0, start);
        assert!(pace.poll_on(1, at(10)));
        pace.pause(at(10), Duration::from_micros(1_000));
        assert!(!pace.poll_on(2, at(20)), "paused");
        pace.poll_on(3, at(1_000));
        assert!(
            pace.poll_on(4, at(1_030)),
            "polling again after the pause, at the first short gap"
        );
        pace.rest(at(1_030));
        pace.pause(at(1_030), Duration::from_micros(1_000));
        assert_eq!(
            pace.resting_until,
            at(1_030) + REST,
            "the longer rest holds"
        );
    }

    #[test]
    fn past_max_polled_connections_polling_stops_for_a_while() {
        let start = Instant::now();
        let at = |us| start + Duration::from_micros(us);
        let mut pace = Pace::new(WINDOW, 0, start);
        assert!(pace.poll_on(1, at(10)));
        assert!(
            pace.checked(at(60), false, MAX_POLLED_CONNECTIONS),
            "at the limit: on"
        );
        assert!(pace.poll_on(2, at(70)));
        assert!(!pace.checked(at(110), false, MAX_POLLED_CONNECTIONS + 1));
        assert_eq!(pace.resting_until, at(110) + MANY_CONNECTIONS_REST);
        assert!(!pace.poll_on(3, at(150)), "off while many are open");
        // Not a preemption: the next preemption's rest starts from REST.
        assert!(!pace.checked(at(200), true, 1));
        assert_eq!(pace.resting_until, at(200) + REST);
    }

    #[test]
    fn a_lone_preemption_decays_and_preemptions_check_after_check_give_way() {
        let mut recent = 0;
        // One now and then, checks apart: never contended.
        for new in [1, 0, 0, 1, 0, 0, 0, 1, 0] {
            assert!(!contended(&mut recent, new), "recent {recent}");
        }
        // Two checks in a row with one each: contended, and counted afresh.
        let mut recent = 0;
        assert!(!contended(&mut recent, 1));
        assert!(contended(&mut recent, 1));
        assert_eq!(recent, 0);
        // Two at one check: contended at once.
        assert!(contended(&mut recent, 2));
    }

    /// Here the window runs on tokio's clock (the server's runs on the wall clock), so a
    /// paused test decides when it has passed.
    #[tokio::test(start_paused = true)]
    async fn polls_while_requests_come_close_together_and_sleeps_otherwise() {
        let stats = Arc::new(Stats::new());
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(spin(WINDOW, stats.clone(), stop.clone(), Instant::now));
        tracker.close();
        settle().await;
        assert_eq!(stats.watchers(), 1, "nothing counted yet: asleep");

        // A request within a window of the start: close together, so it polls.
        tokio::time::advance(Duration::from_micros(50)).await;
        count_one(&stats);
        settle().await;
        assert_eq!(stats.watchers(), 0, "polling after a short gap");

        // Past the window with nothing new: the task waits instead of polling.
        tokio::time::advance(Duration::from_micros(150)).await;
        settle().await;
        assert_eq!(stats.watchers(), 1, "asleep after a quiet window");

        // A request after a long gap does not wake it.
        tokio::time::advance(Duration::from_millis(1)).await;
        count_one(&stats);
        settle().await;
        assert_eq!(stats.watchers(), 1, "a long gap: not worth polling");

        // The next one close behind it turns polling on again.
        tokio::time::advance(Duration::from_micros(40)).await;
        count_one(&stats);
        settle().await;
        assert_eq!(stats.watchers(), 0, "polling again after a short gap");

        stop.cancel();
        tracker.wait().await;
        assert_eq!(stats.watchers(), 0);
    }
}
