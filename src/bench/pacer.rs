//! The open loop's clock: wakes each connection's task when its next request is due,
//! within microseconds rather than Tokio's timer's millisecond or a sleeping thread's
//! wake-up.
//!
//! Why: an open-loop latency is measured from when the request was due (or a stall of the
//! server would slow the load and hide itself), so any lateness of the load generator's
//! own becomes part of every figure. Tokio's timer counts in whole milliseconds and rounds
//! a deadline up: 20,000 requests/s over 50 connections showed a p50 of 1.2 ms against a
//! server that answers in tens of microseconds. A clock thread of its own, sleeping on a
//! condition variable with a nanosecond deadline, still paid two wake-ups per request (its
//! own, then the runtime worker's it woke) of tens of microseconds each on a virtual
//! machine: against bench/epoll_floor.c's C echo server at 10,000 connections it showed a
//! p50 of 310-390 µs, where a C open-loop client that never sleeps measured 32 µs.
//!
//! How: one task on the runtime keeps the waiting tasks in a heap by due time. While the
//! earliest is less than [`SPIN`] away it spins: it wakes whatever has come due and yields,
//! so its worker never sleeps, polls the sockets without blocking between turns, and runs
//! a task the moment its request is due. Further off it sleeps on Tokio's timer until
//! [`SPIN`] before. So an open loop faster than about 500 requests/s keeps one worker
//! busy: the price of figures that are the server's, not the load generator's.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How far ahead of the earliest due time the clock stops sleeping and spins: Tokio's
/// timer rounds up to the next millisecond, and a sleeping worker may wake late.
const SPIN: Duration = Duration::from_millis(2);

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
    /// A new earliest due time, or the end: the clock's task looks again.
    changed: Notify,
}

/// The clock of one bench run; its task ends when the `Pacer` is dropped.
pub(super) struct Pacer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer").finish_non_exhaustive()
    }
}

impl Pacer {
    /// Starts the clock's task on the current runtime.
    pub(super) fn start() -> Pacer {
        let shared = Arc::new(Shared::default());
        tokio::spawn(run(shared.clone()));
        Pacer { shared }
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

/// The clock's task: wakes each waiting task at its time; spins while the next is less
/// than [`SPIN`] away, sleeps otherwise.
async fn run(shared: Arc<Shared>) {
    loop {
        let next = {
            let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.stopped {
                return;
            }
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
            state.heap.peek().map(|Reverse(first)| first.due)
        };
        match next {
            Some(due) if due.saturating_duration_since(Instant::now()) <= SPIN => {
                tokio::task::yield_now().await;
            }
            Some(due) => {
                let wake = tokio::time::Instant::from_std(due - SPIN);
                tokio::select! {
                    () = tokio::time::sleep_until(wake) => {}
                    () = shared.changed.notified() => {}
                }
            }
            None => shared.changed.notified().await,
        }
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
        let pacer = Arc::new(Pacer::start());
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
        let pacer = Pacer::start();
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

    #[tokio::test]
    async fn a_nearer_time_registered_while_the_clock_sleeps_is_kept() {
        // The clock sleeps toward a due time an hour away; a request due in 5 ms must
        // still be woken then, not after the hour (the test's timeout fails it).
        let pacer = Pacer::start();
        let now = tokio::time::Instant::now();
        let far = pacer.sleep_until(now + Duration::from_secs(3600));
        let waker = futures::task::noop_waker();
        let mut far = Box::pin(far);
        assert!(far
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        // Let the clock's task see the far time and go to sleep on it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let near = pacer.sleep_until(tokio::time::Instant::now() + Duration::from_millis(5));
        // Biased: a wait woken only by the timeout would find its own time passed too.
        tokio::select! {
            biased;
            () = tokio::time::sleep(Duration::from_secs(30)) => {
                panic!("the nearer due time was not woken while the clock slept toward the far one")
            }
            () = near => {}
        }
    }
}
