//! A backend's cost for the balancer: its requests outstanding, weighted by a peak-EWMA
//! of its latency, as linkerd's balancer does. Counting outstanding requests alone ties
//! whenever the load is light (every backend at 0 or 1), and a tie sends a third of the
//! requests to a backend that takes 50 ms; weighting by latency breaks the tie.
//!
//! "Peak": a sample above the average replaces it at once, so a backend that turns slow
//! is avoided from its next answer; a sample below moves the average a fifth of the way.
//! The average decays toward zero with time (a half-life of `HALF_LIFE`), so a backend
//! that took no request for a while, because it had been slow, is tried again and a
//! recovered one comes back.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How fast an idle backend's latency is forgotten.
const HALF_LIFE: Duration = Duration::from_secs(1);

/// A latency assumed for a backend before its first answer, so that a new backend does
/// not draw every request at once.
const FIRST_GUESS_US: f64 = 1000.0;

/// The peak-EWMA latency of one backend.
#[derive(Debug)]
pub(crate) struct Latency {
    state: Mutex<(f64, Instant)>,
}

impl Latency {
    pub(crate) fn new() -> Latency {
        Latency {
            state: Mutex::new((FIRST_GUESS_US, Instant::now())),
        }
    }

    /// Counts an answer that took `took`.
    pub(crate) fn observe(&self, took: Duration) {
        let sample = took.as_secs_f64() * 1e6;
        let mut state = self.lock();
        let now = Instant::now();
        let average = decayed(state.0, now.duration_since(state.1));
        let updated = if sample > average {
            sample
        } else {
            average + (sample - average) / 5.0
        };
        *state = (updated, now);
    }

    /// The balancer's cost of sending one more request: (outstanding + 1) × latency in
    /// microseconds, at least 1 per request.
    pub(crate) fn cost(&self, outstanding: usize) -> usize {
        let state = self.lock();
        let latency = decayed(state.0, state.1.elapsed()).max(1.0);
        // Far below usize::MAX for any real latency and load.
        ((outstanding as f64 + 1.0) * latency) as usize
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (f64, Instant)> {
        // Two numbers; a panic cannot leave them half-written.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `average` after `elapsed` of decay.
fn decayed(average: f64, elapsed: Duration) -> f64 {
    average * 0.5f64.powf(elapsed.as_secs_f64() / HALF_LIFE.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Latency;

    #[tokio::test(start_paused = true)]
    async fn a_slow_answer_raises_the_cost_at_once_and_fast_ones_lower_it_gradually() {
        let latency = Latency::new();
        latency.observe(Duration::from_millis(50));
        assert_eq!(latency.cost(0), 50_000);
        assert_eq!(
            latency.cost(3),
            200_000,
            "weighted by the requests outstanding"
        );
        latency.observe(Duration::from_micros(0));
        assert_eq!(latency.cost(0), 40_000);
        for _ in 0..50 {
            latency.observe(Duration::from_micros(500));
        }
        assert!(latency.cost(0) < 1000, "{}", latency.cost(0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_backend_is_forgotten_with_a_half_life() {
        let slow = Latency::new();
        slow.observe(Duration::from_millis(50));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(slow.cost(0), 25_000);
        tokio::time::advance(Duration::from_secs(10)).await;
        // Down to where a fast backend with a few requests outstanding costs more.
        assert!(slow.cost(0) < 100, "{}", slow.cost(0));
    }
}
