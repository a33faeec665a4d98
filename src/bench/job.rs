//! One connection's share of a run ([`Job`]): its schedule and quota, the choice of
//! driver for its framing, the check every reply goes through, and the tally it brings
//! back ([`Outcome`]).

use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use super::replies::ReplyBuffer;
use super::requests::{plain_header, request_header, Payloads};
use super::{BenchConfig, Progress};
use crate::config::Framing;
use crate::transport::{BoxRead, BoxWrite};
use crate::wire::{Codec, PlainCodec};

/// Runs of latencies a connection keeps before it moves them into a histogram: a
/// histogram of 1 ns to 100 s at 3 significant digits takes about 220 KiB, which 10,000
/// connections that see a few requests each should not all pay for (nor the merge of
/// them all).
const SAMPLES: usize = 4096;

/// What each connection's job brings back.
pub(super) struct Outcome {
    /// Latencies of the verified replies in the measured window, in nanoseconds, once
    /// more than [`SAMPLES`] of them were recorded (or after a merge).
    histogram: Option<Histogram<u64>>,
    /// Latencies not in `histogram` yet, in nanoseconds, as runs of equal ones (value,
    /// count): the replies of one read to requests of one write share their latency, and
    /// a histogram takes a run at the cost of one (recording each reply was 8 % of the
    /// load generator's instructions at pipeline 16).
    samples: Vec<(u64, u64)>,
    /// Verified replies (or one-way messages) in the measured window.
    pub(super) requests: u64,
    /// ERROR replies, and a failed connection.
    pub(super) errors: u64,
    /// Replies that answered no request of ours, or not with its content.
    pub(super) mismatches: u64,
    /// One-way: the closing PING was answered after every message.
    pub(super) confirmed: bool,
    /// The last latency [`Outcome::record_between`] worked out, and between which two
    /// instants: the replies of one read to requests of one write share both.
    last: Option<(Instant, Instant, u64)>,
}

impl Outcome {
    /// Nothing counted yet.
    pub(super) fn new() -> Outcome {
        Outcome {
            histogram: None,
            samples: Vec::new(),
            requests: 0,
            errors: 0,
            mismatches: 0,
            confirmed: true,
            last: None,
        }
    }

    /// Adds another connection's tally to this one.
    pub(super) fn merge(&mut self, other: Outcome) {
        let histogram = self.histogram();
        if let Some(theirs) = &other.histogram {
            // Same bounds on both sides, so adding cannot fail.
            let _ = histogram.add(theirs);
        }
        for &(ns, count) in &other.samples {
            histogram.saturating_record_n(ns, count);
        }
        self.requests += other.requests;
        self.errors += other.errors;
        self.mismatches += other.mismatches;
        self.confirmed &= other.confirmed;
    }

    /// Records one verified reply's latency.
    pub(super) fn record(&mut self, latency: Duration) {
        self.record_ns(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records the latency of a reply that came at `now` to a request due at `due`.
    /// Pipelined replies come many to a read, answering requests sent many to a write:
    /// the latency worked out for the reply before is taken again when both instants are
    /// the same (working each out was 6 % of the load generator's instructions at
    /// pipeline 16).
    pub(super) fn record_between(&mut self, due: Instant, now: Instant) {
        let ns = match self.last {
            Some((last_due, last_now, ns)) if last_due == due && last_now == now => ns,
            _ => {
                let ns = u64::try_from(now.duration_since(due).as_nanos()).unwrap_or(u64::MAX);
                self.last = Some((due, now, ns));
                ns
            }
        };
        self.record_ns(ns);
    }

    /// Records one latency of `ns` nanoseconds. Inline, for the common case of a latency
    /// equal to the one before; a new one takes a call.
    #[inline]
    fn record_ns(&mut self, ns: u64) {
        let ns = ns.max(1);
        match self.samples.last_mut() {
            Some((last, count)) if *last == ns => *count += 1,
            _ => self.record_new(ns),
        }
    }

    /// Starts a run of latencies of `ns` nanoseconds, moving the runs into the histogram
    /// first when [`SAMPLES`] are held. Kept out of line, so that [`Outcome::record_ns`]
    /// stays small enough to inline.
    #[inline(never)]
    fn record_new(&mut self, ns: u64) {
        if self.samples.len() == SAMPLES {
            let samples = std::mem::take(&mut self.samples);
            let histogram = self.histogram();
            for &(ns, count) in &samples {
                histogram.saturating_record_n(ns, count);
            }
            self.samples = samples;
            self.samples.clear();
        }
        self.samples.push((ns, 1));
    }

    /// Every latency recorded, in one histogram.
    pub(super) fn latencies(&mut self) -> &Histogram<u64> {
        let samples = std::mem::take(&mut self.samples);
        let histogram = self.histogram();
        for (ns, count) in samples {
            histogram.saturating_record_n(ns, count);
        }
        histogram
    }

    fn histogram(&mut self) -> &mut Histogram<u64> {
        self.histogram.get_or_insert_with(|| {
            // 1 ns to 100 s at 3 significant digits.
            Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
        })
    }

    /// Counts a connection that failed: an error, and no confirmation.
    pub(super) fn failed(&mut self) {
        self.errors += 1;
        self.confirmed = false;
    }
}

/// One connection's share of the run.
pub(super) struct Job {
    /// The run's settings.
    pub(super) config: BenchConfig,
    /// This connection's place among the run's, which spreads open-loop schedules.
    pub(super) index: usize,
    /// When to start sending.
    pub(super) start: Instant,
    /// Requests due before this are warm-up, not counted.
    pub(super) measure_from: Instant,
    /// When to stop sending; `None` for a run of a number of requests.
    pub(super) until: Option<Instant>,
    /// Measured requests to send, for a run of a number of requests.
    pub(super) quota: Option<u64>,
    /// Where completed requests are counted as they come.
    pub(super) progress: Arc<Progress>,
    /// In open loop, the clock that says when each request is due.
    pub(super) pacer: Option<Arc<super::pacer::Pacer>>,
}

impl Job {
    /// Drives the connection on the runtime until the run ends; gives its tally and when
    /// it ended.
    pub(super) async fn run(self, reader: BoxRead, writer: BoxWrite) -> (Outcome, Instant) {
        tokio::time::sleep_until(self.start).await;
        let mut outcome = Outcome::new();
        let max = self.max_reply();
        let result = match self.config.framing {
            Framing::Plain => {
                let replies = ReplyBuffer::new(reader, PlainCodec::new(max));
                self.drive(replies, writer, &mut outcome, plain_header, false)
                    .await
            }
            _ if self.config.oneway => {
                let reader = FramedRead::new(reader, Codec::new(max));
                self.stream_oneway(reader, writer, &mut outcome).await
            }
            _ => {
                let replies = ReplyBuffer::new(reader, Codec::new(max));
                self.drive(replies, writer, &mut outcome, request_header, true)
                    .await
            }
        };
        if result.is_err() {
            outcome.failed();
        }
        (outcome, Instant::now())
    }

    /// The largest reply the connection accepts: the payload size, and at least 1 MiB.
    pub(super) fn max_reply(&self) -> usize {
        self.config.size.max(1 << 20)
    }

    /// Checks one reply against the request it answers (`expected`: its sequence number
    /// and the instant latency counts from); counts it in `outcome`. Returns whether it
    /// answered a request of ours. Inlined into the loops that check every reply: as a
    /// call it cost some 30 instructions a reply in passing and returning alone.
    #[inline(always)]
    pub(super) fn check(
        &self,
        outcome: &mut Outcome,
        expected: Option<(u64, Instant)>,
        payload: Option<&[u8]>,
        payloads: &Payloads,
        now: Instant,
    ) -> bool {
        let Some((expected_seq, due)) = expected else {
            outcome.mismatches += 1;
            return false;
        };
        match payload {
            None => outcome.errors += 1,
            Some(payload) if !payloads.matches(expected_seq, payload) => outcome.mismatches += 1,
            Some(_) => {
                let in_window =
                    due >= self.measure_from && self.until.is_none_or(|until| now <= until);
                if in_window {
                    outcome.requests += 1;
                    outcome.record_between(due, now);
                }
            }
        }
        true
    }

    /// How many of `room` requests, all due at `due`, to send before
    /// [`Job::stop_sending`] would say stop, when it does not say so now: all of them in a
    /// timed run (whose end is checked once a batch, at `due`); in a run of a number of
    /// requests, up to the quota once they count (`due` is past the warm-up), where
    /// `sent_measured` of it are sent.
    pub(super) fn batch_len(&self, room: usize, sent_measured: u64, due: Instant) -> usize {
        match (self.until, self.quota) {
            (Some(_), _) => room,
            (None, Some(quota)) if due >= self.measure_from => {
                let left = quota.saturating_sub(sent_measured);
                room.min(usize::try_from(left).unwrap_or(usize::MAX))
            }
            (None, Some(_)) => room,
            (None, None) => room.min(1),
        }
    }

    /// Whether to send no more: the run's time is up, or (a run of a number of requests)
    /// `sent_measured` has reached the quota.
    pub(super) fn stop_sending(&self, sent_measured: u64, now: Instant) -> bool {
        match (self.until, self.quota) {
            (Some(until), _) => now >= until,
            (None, Some(quota)) => sent_measured >= quota,
            (None, None) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A latency taken again is taken only for the same two instants: the same request
    /// time with a later reply, or the same reply time with another request, counts
    /// its own.
    #[test]
    fn a_latency_is_reused_only_between_the_same_two_instants() {
        let start = Instant::now();
        let at = |us: u64| start + Duration::from_micros(us);
        let mut outcome = Outcome::new();
        for (due, now) in [(0, 10), (0, 10), (0, 25), (5, 25), (5, 25), (0, 10)] {
            outcome.record_between(at(due), at(now));
        }
        let recorded = outcome.latencies();
        let micros: Vec<(u64, u64)> = recorded
            .iter_recorded()
            .map(|v| {
                (
                    recorded.median_equivalent(v.value_iterated_to()) / 1000,
                    v.count_at_value(),
                )
            })
            .collect();
        assert_eq!(micros, [(10, 3), (20, 2), (25, 1)]);
    }

    /// Latencies go through the buffer, the histogram and merges without one lost, and
    /// land where a histogram recording them directly puts them.
    #[test]
    fn every_latency_recorded_reaches_the_merged_histogram() {
        let mut direct = Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).unwrap();
        let mut total = Outcome::new();
        // One connection that fills its buffer twice over, one that never fills it, one
        // that records nothing. Every fifth latency comes three times in a row, as those
        // of the replies to one write do.
        let mut recorded = 0;
        for (connection, count) in [(0u64, 2 * SAMPLES as u64 + 7), (1, 10), (2, 0)] {
            let mut outcome = Outcome::new();
            for n in 0..count {
                let ns = 1_000 + n * 37 + connection * 100_000;
                for _ in 0..if n % 5 == 0 { 3 } else { 1 } {
                    outcome.record(Duration::from_nanos(ns));
                    direct.record(ns).unwrap();
                    recorded += 1;
                }
            }
            total.merge(outcome);
        }
        let merged = total.latencies();
        assert!(recorded > 2 * SAMPLES as u64 + 17);
        assert_eq!(merged.len(), recorded);
        assert_eq!(merged.len(), direct.len());
        for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(
                merged.value_at_quantile(q),
                direct.value_at_quantile(q),
                "quantile {q}"
            );
        }
    }
}
