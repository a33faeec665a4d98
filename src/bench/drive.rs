//! The async request/reply driver, closed loop (`pipeline` requests in flight) and open
//! loop (requests leave on a schedule), in courier or plain framing: send what is due in
//! one write, wait for replies under a watchdog, check every reply that has arrived.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use super::job::{Job, Outcome};
use super::replies::{ReplyBuffer, ReplyParser};
use super::requests::{Header, Requests};
use crate::wire::CodecError;

/// In open loop, the most requests one connection keeps in flight before it waits for
/// replies rather than the schedule.
const OPEN_LOOP_CAP: usize = 100_000;

/// When a connection's requests are due: at once in closed loop, every `interval` in open
/// loop.
struct Schedule {
    /// The time between two requests of this connection, in open loop.
    interval: Option<Duration>,
    /// When the next request is due, in open loop.
    next_due: Instant,
}

impl Schedule {
    /// The schedule of `job`'s connection: the run's rate shared among the connections,
    /// their schedules spread over one interval.
    fn new(job: &Job) -> Schedule {
        let connections = job.config.connections as f64;
        let interval = job
            .config
            .rate
            .map(|rate| Duration::from_secs_f64(connections / rate.max(1e-9)));
        let next_due = job.start
            + interval.map_or(Duration::ZERO, |i| {
                i.mul_f64(job.index as f64 / connections)
            });
        Schedule { interval, next_due }
    }

    /// The most requests in flight at once: the pipeline in closed loop.
    fn cap(&self, pipeline: usize) -> usize {
        if self.interval.is_some() {
            OPEN_LOOP_CAP
        } else {
            pipeline.max(1)
        }
    }

    /// In open loop, with requests `interval` apart: when the request to send now was
    /// due, and moves the schedule on; `None` when the next is not due yet.
    fn take_due(&mut self, interval: Duration) -> Option<Instant> {
        if self.next_due > Instant::now() {
            return None;
        }
        let due = self.next_due;
        self.next_due += interval;
        Some(due)
    }
}

impl Job {
    /// Request/reply, closed or open loop, for courier (`ids`) or plain framing.
    pub(super) async fn drive<R, W, P>(
        &self,
        mut replies: ReplyBuffer<R, P>,
        mut writer: W,
        outcome: &mut Outcome,
        header: Header,
        ids: bool,
    ) -> Result<(), CodecError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
        P: ReplyParser,
    {
        let mut out = BytesMut::with_capacity(64 * 1024);
        let mut schedule = Schedule::new(self);
        let cap = schedule.cap(self.config.pipeline);
        // In closed loop a batch refills the pipeline; in open loop requests leave one by
        // one, as each falls due.
        let batch = if schedule.interval.is_some() { 1 } else { cap };
        let mut requests = Requests::new(self.config.size, header, ids, batch);
        // One timer guards every wait for a reply: while requests are in flight, some reply
        // must come within `timeout` of the last one (or of the send that started the
        // pipeline). It is moved on when it fires early, not set anew for each wait.
        let timeout = self.config.timeout;
        let watchdog = tokio::time::sleep(timeout);
        tokio::pin!(watchdog);
        let mut last_progress = Instant::now();
        loop {
            let in_flight = requests.pending.len();
            // One clock reading serves the whole batch: its requests leave in one write.
            let now = Instant::now();
            let stopping = self.stop_sending(requests.measured, now);
            if stopping && in_flight == 0 {
                return Ok(());
            }
            if in_flight == 0 {
                last_progress = now;
            }
            if !stopping && self.queue_due(&mut requests, &mut schedule, cap, now, &mut out) {
                // One slice, so `write`: `write_all_buf` goes through `writev` and fills
                // an array of 64 `IoSlice`s first, 14 instructions a request at pipeline
                // 16 (callgrind).
                writer.write_all(&out).await?;
                out.clear();
            }
            let in_flight = requests.pending.len();
            let deadline = last_progress + timeout;
            // The run's clock is there in open loop only (`Job::pacer`).
            let waited = match (self.pacer.as_deref(), stopping) {
                (Some(pacer), false) => {
                    let due = pacer.sleep_until(schedule.next_due);
                    wait_scheduled(&mut replies, due, in_flight, &mut watchdog, deadline).await
                }
                _ => wait_replies(&mut replies, &mut watchdog, deadline).await,
            };
            let Some(read) = waited? else {
                continue;
            };
            if read == 0 {
                return Err(replies.at_eof());
            }
            // The replies of one read arrived together: one clock reading for all.
            let now = Instant::now();
            last_progress = now;
            let answered = self.check_replies(&mut replies, &mut requests, outcome, now)?;
            self.progress.done.fetch_add(answered, Ordering::Relaxed);
        }
    }

    /// Encodes into `out` every request due `now`, up to `cap` in flight and as long as
    /// the run goes on; returns whether it queued any.
    fn queue_due(
        &self,
        requests: &mut Requests,
        schedule: &mut Schedule,
        cap: usize,
        now: Instant,
        out: &mut BytesMut,
    ) -> bool {
        let Some(interval) = schedule.interval else {
            // Closed loop: every request is due now, the batch's one clock reading, so the
            // room left in the pipeline goes out as one batch.
            let room = cap.saturating_sub(requests.pending.len());
            let count = self.batch_len(room, requests.measured, now);
            requests.queue_batch(count, now, self.measure_from, out);
            return count > 0;
        };
        let mut queued = false;
        while requests.pending.len() < cap {
            let Some(due) = schedule.take_due(interval) else {
                break;
            };
            requests.queue(due, self.measure_from, out);
            queued = true;
            if self.stop_sending(requests.measured, now) {
                break;
            }
        }
        queued
    }

    /// Checks every reply that has arrived before sending more, so that a pipelined
    /// connection refills in one write, not one write per reply. Returns how many
    /// answered a request of ours.
    fn check_replies<R, P>(
        &self,
        replies: &mut ReplyBuffer<R, P>,
        requests: &mut Requests,
        outcome: &mut Outcome,
        now: Instant,
    ) -> Result<u64, CodecError>
    where
        R: AsyncRead + Unpin,
        P: ReplyParser,
    {
        let mut answered = 0;
        while let Some(reply) = replies.parse()? {
            let payload = reply.payload.map(|range| replies.bytes(range));
            let expected = requests.pending.take(reply.id);
            answered += u64::from(self.check(outcome, expected, payload, &requests.payloads, now));
            replies.consume(reply.len);
        }
        Ok(answered)
    }
}

/// Waits, in open loop, for replies or for the next send time: the bytes read, or `None`
/// when it is time to send (or the watchdog was moved on). With nothing in flight there
/// is only the schedule to wait for.
async fn wait_scheduled<R, P>(
    replies: &mut ReplyBuffer<R, P>,
    due: impl Future<Output = ()>,
    in_flight: usize,
    watchdog: &mut Pin<&mut Sleep>,
    deadline: Instant,
) -> Result<Option<usize>, CodecError>
where
    R: AsyncRead + Unpin,
    P: ReplyParser,
{
    if in_flight == 0 {
        due.await;
        return Ok(None);
    }
    tokio::select! {
        read = replies.read_more() => Ok(Some(read?)),
        () = due => Ok(None),
        () = &mut *watchdog => {
            watchdog_fired(watchdog.as_mut(), deadline)?;
            Ok(None)
        }
    }
}

/// Waits for replies (closed loop, or open loop once sending has stopped): the bytes
/// read, or `None` when the watchdog was moved on.
async fn wait_replies<R, P>(
    replies: &mut ReplyBuffer<R, P>,
    watchdog: &mut Pin<&mut Sleep>,
    deadline: Instant,
) -> Result<Option<usize>, CodecError>
where
    R: AsyncRead + Unpin,
    P: ReplyParser,
{
    tokio::select! {
        read = replies.read_more() => Ok(Some(read?)),
        () = &mut *watchdog => {
            watchdog_fired(watchdog.as_mut(), deadline)?;
            Ok(None)
        }
    }
}

/// The watchdog fired: a timeout if no reply came by `deadline`, else it is moved there.
fn watchdog_fired(watchdog: Pin<&mut Sleep>, deadline: Instant) -> Result<(), CodecError> {
    if Instant::now() >= deadline {
        return Err(CodecError::Io(std::io::ErrorKind::TimedOut.into()));
    }
    watchdog.reset(deadline);
    Ok(())
}
