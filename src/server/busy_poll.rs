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
//! The cost is a CPU kept busy for `busy_poll` after each request. Once the server's
//! counters have not moved for that long, the tasks wait on [`Stats::changed`] and the
//! workers sleep as usual: an idle server uses no CPU. It is off by default, since a
//! server taking a request every few dozen microseconds would otherwise keep a whole CPU
//! busy; turn it on where round-trip latency matters more than CPU time.

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
        tracker.spawn(spin(window, stats.clone(), stop.clone()));
    }
    tracker.close();
    tracker
}

/// Polls for `window` after the counters last moved, then waits for them to move again.
async fn spin(window: Duration, stats: Arc<Stats>, stop: CancellationToken) {
    let mut seen = stats.activity();
    let mut until = Instant::now() + window;
    while !stop.is_cancelled() {
        let now = stats.activity();
        if now != seen {
            seen = now;
            until = Instant::now() + window;
        } else if Instant::now() >= until {
            tokio::select! {
                () = stats.changed(seen) => {}
                () = stop.cancelled() => return,
            }
            seen = stats.activity();
            until = Instant::now() + window;
            continue;
        }
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Tally;

    /// The window runs on tokio's clock, so a paused test decides when it has passed.
    #[tokio::test(start_paused = true)]
    async fn polls_while_active_then_waits_for_the_counters_to_move() {
        let stats = Arc::new(Stats::new());
        let stop = CancellationToken::new();
        let tracker = start(Duration::from_micros(100), &stats, &stop);
        tokio::task::yield_now().await;
        assert_eq!(stats.watchers(), 0, "polling within its first window");

        // Past the window with nothing new: the task waits instead of polling.
        tokio::time::advance(Duration::from_micros(150)).await;
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(stats.watchers(), 1, "asleep after a quiet window");

        // A request counted wakes it, and it polls for another window.
        stats.add(&mut Tally {
            requests: 1,
            ..Tally::default()
        });
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(stats.watchers(), 0, "polling again after activity");
        tokio::time::advance(Duration::from_micros(150)).await;
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(stats.watchers(), 1);

        stop.cancel();
        tracker.wait().await;
        assert_eq!(stats.watchers(), 0);
    }
}
