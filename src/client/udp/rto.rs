//! The retransmission timer of the UDP client: RFC 6298's smoothed round-trip time and
//! variance, with bounds, exponential backoff and jitter.
//!
//! Samples come only from calls answered on their first attempt (Karn's algorithm: the
//! answer to a retransmitted request cannot be matched to one of its sends). The first
//! sample sets SRTT = R and RTTVAR = R/2; later ones RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|
//! and SRTT = 7/8 SRTT + 1/8 R; RTO = SRTT + max(G, 4 RTTVAR), clamped to
//! [`min`, `max`]. Attempt n (from 1) waits RTO x 2^(n-1), capped at `max`, times a
//! random factor in [1, 1.25), so that clients that lost the same burst do not resend in
//! step. RFC 6298's 1-second minimum is meant for the Internet's worst paths; the
//! default here is lower (`UdpOptions`), as Linux's TCP (200 ms) and QUIC (no fixed
//! minimum) are.

use std::time::Duration;

/// The clock granularity G of RFC 6298.
const GRANULARITY: Duration = Duration::from_millis(1);

/// The estimator of one client.
#[derive(Debug, Clone)]
pub(crate) struct Rto {
    srtt: Option<Duration>,
    rttvar: Duration,
    initial: Duration,
    min: Duration,
    max: Duration,
}

impl Rto {
    /// An estimator with no sample yet: the RTO is `initial` until the first.
    pub(crate) fn new(initial: Duration, min: Duration, max: Duration) -> Rto {
        Rto {
            srtt: None,
            rttvar: Duration::ZERO,
            initial,
            min,
            max: max.max(min),
        }
    }

    /// Takes a round-trip sample (of a call answered on its first attempt).
    pub(crate) fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let delta = srtt.abs_diff(rtt);
                self.rttvar = self.rttvar * 3 / 4 + delta / 4;
                self.srtt = Some(srtt * 7 / 8 + rtt / 8);
            }
        }
    }

    /// The current retransmission timeout.
    pub(crate) fn rto(&self) -> Duration {
        let rto = match self.srtt {
            None => self.initial,
            Some(srtt) => srtt + GRANULARITY.max(self.rttvar * 4),
        };
        rto.clamp(self.min, self.max)
    }

    /// How long attempt `attempt` (1 for the first send) waits for its answer, before
    /// jitter: the RTO doubled for each attempt before it, at most `max`.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        self.rto().saturating_mul(1 << doublings).min(self.max)
    }

    /// [`Rto::backoff`] times `jitter`, a number in [0, 1) that picks the random factor
    /// in [1, 1.25).
    pub(crate) fn wait(&self, attempt: u32, jitter: f64) -> Duration {
        self.backoff(attempt)
            .mul_f64(1.0 + jitter.clamp(0.0, 1.0) / 4.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn rto() -> Rto {
        Rto::new(200 * MS, 20 * MS, 2000 * MS)
    }

    #[test]
    fn before_any_sample_the_initial_value_is_used() {
        assert_eq!(rto().rto(), 200 * MS);
    }

    #[test]
    fn the_first_sample_sets_srtt_and_half_of_it_as_variance() {
        let mut rto = rto();
        rto.sample(100 * MS);
        // 100 + 4 * 50
        assert_eq!(rto.rto(), 300 * MS);
    }

    #[test]
    fn later_samples_follow_rfc_6298() {
        let mut rto = rto();
        rto.sample(100 * MS);
        rto.sample(200 * MS);
        // RTTVAR = 3/4 * 50 + 1/4 * |100 - 200| = 62.5; SRTT = 7/8 * 100 + 1/8 * 200 = 112.5
        assert_eq!(rto.rto(), Duration::from_micros(112_500 + 250_000));
    }

    #[test]
    fn the_timeout_is_clamped_to_its_bounds() {
        let mut fast = rto();
        fast.sample(Duration::from_micros(50));
        for _ in 0..50 {
            fast.sample(Duration::from_micros(50));
        }
        assert_eq!(fast.rto(), 20 * MS, "the minimum");
        let mut slow = rto();
        slow.sample(5000 * MS);
        assert_eq!(slow.rto(), 2000 * MS, "the maximum");
    }

    #[test]
    fn steady_samples_bring_the_timeout_down_to_srtt_plus_granularity() {
        let mut rto = Rto::new(200 * MS, MS, 2000 * MS);
        for _ in 0..200 {
            rto.sample(10 * MS);
        }
        let got = rto.rto();
        assert!(got >= 11 * MS && got < 12 * MS, "{got:?}");
    }

    #[test]
    fn backoff_doubles_per_attempt_up_to_the_maximum() {
        let rto = rto();
        let waits: Vec<_> = (1..=6).map(|n| rto.backoff(n)).collect();
        assert_eq!(
            waits,
            [200, 400, 800, 1600, 2000, 2000].map(|ms| ms * MS).to_vec()
        );
        assert_eq!(rto.backoff(u32::MAX), 2000 * MS);
    }

    #[test]
    fn jitter_stretches_a_wait_by_at_most_a_quarter() {
        let rto = rto();
        assert_eq!(rto.wait(1, 0.0), 200 * MS);
        assert_eq!(rto.wait(1, 0.5), 225 * MS);
        assert!(rto.wait(1, 0.999_999) < 250 * MS);
        assert_eq!(rto.wait(1, 7.0), 250 * MS, "out of range is clamped");
    }
}
