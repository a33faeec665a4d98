//! The open loop's clock: wakes each connection's task when its next request is due,
//! within tens of microseconds rather than Tokio's timer's millisecond.
//!
//! Why: Tokio's timer counts in whole milliseconds and rounds a deadline up, so a request
//! due at any moment leaves up to 1-2 ms late. An open-loop latency is measured from when
//! the request was due (or a stall of the server would slow the load and hide itself), so
//! that lateness became most of every figure: 20,000 requests/s over 50 connections showed
//! a p50 of 1.2 ms against a server that answers in tens of microseconds. A goal such as
//! "p99 <= 1 ms at 10,000 connections" could not be seen at all.
//!
//! How: one thread keeps the waiting tasks in a heap by due time, sleeps on a condition
//! variable until the earliest (a futex wait with a nanosecond deadline, and on Linux a
//! timer slack of 1 µs instead of 50), and wakes the tasks whose time has come, each with
//! its own waker: one wake-up per due request, not a tick for every task.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// A task waiting for its time: ordered by due time, then by arrival.
struct Waiting {
    due: Instant,
    seq: u64,
    waker: Waker,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Waiting {}

impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Reverse<Waiting>>,
    seq: u64,
    stopped: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// The clock of one bench run; its thread ends when the `Pacer` is dropped.
pub(super) struct Pacer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer").finish_non_exhaustive()
    }
}

impl Pacer {
    /// Starts the clock's thread.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub(super) fn start() -> std::io::Result<Pacer> {
        let shared = Arc::new(Shared::default());
        let clock = shared.clone();
        std::thread::Builder::new()
            .name("courier-bench-pacer".into())
            .spawn(move || run(&clock))?;
        Ok(Pacer { shared })
    }

    /// Ready at `due` (at once if it has passed).
    pub(super) fn sleep_until(&self, due: tokio::time::Instant) -> PacedSleep<'_> {
        PacedSleep {
            pacer: self,
            due: due.into_std(),
            registered: None,
        }
    }

    fn register(&self, due: Instant, waker: Waker) {
        let mut state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let earliest = state
            .heap
            .peek()
            .is_none_or(|Reverse(first)| due < first.due);
        state.seq += 1;
        let seq = state.seq;
        state.heap.push(Reverse(Waiting { due, seq, waker }));
        drop(state);
        if earliest {
            self.shared.changed.notify_one();
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        let mut state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.stopped = true;
        // Whoever still waits is woken, to find its time passed or to be dropped.
        for Reverse(waiting) in state.heap.drain() {
            waiting.waker.wake();
        }
        drop(state);
        self.shared.changed.notify_one();
    }
}

/// The clock's thread: wakes each waiting task at its time.
fn run(shared: &Shared) {
    #[cfg(target_os = "linux")]
    {
        // The kernel may otherwise let a timed wait run 50 µs long to batch wake-ups.
        let _ = nix::sys::prctl::set_timerslack(1_000);
    }
    let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
    while !state.stopped {
        let now = Instant::now();
        while state
            .heap
            .peek()
            .is_some_and(|Reverse(first)| first.due <= now)
        {
            if let Some(Reverse(waiting)) = state.heap.pop() {
                waiting.waker.wake();
            }
        }
        state = match state.heap.peek() {
            Some(Reverse(first)) => {
                let wait = first.due.saturating_duration_since(now);
                shared
                    .changed
                    .wait_timeout(state, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner),
        };
    }
}

/// A wait for a due time on the [`Pacer`]'s clock.
pub(super) struct PacedSleep<'a> {
    pacer: &'a Pacer,
    due: Instant,
    /// The waker handed to the clock, so that a task polled again is not queued twice.
    registered: Option<Waker>,
}

impl Future for PacedSleep<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.due {
            return Poll::Ready(());
        }
        let fresh = !self
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()));
        if fresh {
            self.registered = Some(cx.waker().clone());
            self.pacer.register(self.due, cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn each_wait_ends_at_or_after_its_time_and_in_order() {
        let pacer = Arc::new(Pacer::start().unwrap());
        let start = tokio::time::Instant::now();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Registered out of order, due 1 ms apart.
        for n in [5u64, 1, 4, 2, 3] {
            let (pacer, order) = (pacer.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let due = start + Duration::from_millis(n * 3);
                pacer.sleep_until(due).await;
                let woke = tokio::time::Instant::now();
                assert!(woke >= due, "{n} woke before its time");
                order.lock().unwrap().push(n);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn a_time_already_past_is_ready_at_once_and_dropping_the_pacer_wakes_waiters() {
        let pacer = Pacer::start().unwrap();
        pacer.sleep_until(tokio::time::Instant::now()).await;
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let mut wait = Box::pin(pacer.sleep_until(far));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        assert_eq!(pacer.shared.state.lock().unwrap().heap.len(), 1);
        // Polled again by the same task: not queued twice.
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        assert_eq!(pacer.shared.state.lock().unwrap().heap.len(), 1);
        drop(wait);
        let shared = pacer.shared.clone();
        drop(pacer);
        assert!(shared.state.lock().unwrap().heap.is_empty());
    }
}
