//! The retry budget: how many requests that failed with the outcome unknown may be sent
//! again. Only requests the client marked idempotent are ever retried, and only within
//! the budget, so a backend outage cannot turn into a retry storm that doubles the load
//! on the backends left (the scheme of Finagle's and linkerd's retry budgets).
//!
//! Two allowances: `percent` of the requests routed (each request deposits that fraction
//! of a retry, and the unused part is kept for at most 1000 requests' worth), and
//! `per_second` retries a second whatever the traffic (kept for at most one second), so
//! that a quiet router can still retry a few.

use tokio::time::Instant;

/// Requests whose unused retry allowance is kept.
const KEPT_REQUESTS: u64 = 1000;

/// A budget of retries, counted in whole numbers: the ratio part in hundredths of a
/// retry, the per-second part in millionths, so that 100 requests at 20 % give exactly
/// 20 retries.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    percent: u64,
    per_second: u64,
    /// Retries available from the ratio, in hundredths.
    from_requests: u64,
    /// Retries available from the per-second allowance, in millionths, refilled as time
    /// passes.
    from_time: u64,
    refilled: Instant,
}

impl RetryBudget {
    /// A budget of `percent` % of the requests plus `per_second` a second, full of the
    /// per-second part.
    pub(crate) fn new(percent: u32, per_second: u32) -> RetryBudget {
        RetryBudget {
            percent: u64::from(percent),
            per_second: u64::from(per_second),
            from_requests: 0,
            from_time: u64::from(per_second) * 1_000_000,
            refilled: Instant::now(),
        }
    }

    /// Counts one request routed.
    pub(crate) fn deposit(&mut self) {
        self.from_requests = (self.from_requests + self.percent).min(self.percent * KEPT_REQUESTS);
    }

    /// Takes one retry, if the budget allows one now.
    pub(crate) fn withdraw(&mut self) -> bool {
        let now = Instant::now();
        let micros =
            u64::try_from(now.duration_since(self.refilled).as_micros()).unwrap_or(u64::MAX);
        self.refilled = now;
        self.from_time = self
            .from_time
            .saturating_add(micros.saturating_mul(self.per_second))
            .min(self.per_second * 1_000_000);
        if self.from_requests >= 100 {
            self.from_requests -= 100;
            true
        } else if self.from_time >= 1_000_000 {
            self.from_time -= 1_000_000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::RetryBudget;

    #[tokio::test(start_paused = true)]
    async fn twenty_percent_of_requests_plus_a_few_per_second() {
        let mut budget = RetryBudget::new(20, 5);
        for _ in 0..100 {
            budget.deposit();
        }
        // 20 from the requests, 5 from the second's allowance, then nothing.
        let granted = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 25);
        assert!(!budget.withdraw());
        // Time alone refills the per-second part, not beyond one second's worth.
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!((0..10).filter(|_| budget.withdraw()).count(), 2);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!((0..10).filter(|_| budget.withdraw()).count(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn the_unused_ratio_is_kept_for_a_thousand_requests_only() {
        let mut budget = RetryBudget::new(20, 0);
        for _ in 0..1_000_000 {
            budget.deposit();
        }
        assert_eq!((0..1000).filter(|_| budget.withdraw()).count(), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_budget_never_retries() {
        let mut budget = RetryBudget::new(0, 0);
        for _ in 0..1000 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!budget.withdraw());
    }
}
