//! The I/O plumbing every connection loop shares, whatever its framing: the outbox that
//! bounds unwritten output, the poller that reads, writes and watches the deadlines in one
//! place, and the graceful close.
//!
//! The driver (`driver.rs`) runs every framing's connection on these: how bytes move,
//! when a peer is too slow, which deadline is due and how a connection ends do not depend
//! on what the messages mean.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use futures::ready;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep_until, Instant, Sleep};
use tokio_util::codec::Decoder;
use tracing::debug;

use super::close::Deadline;
use crate::config::Config;
use crate::wire::{Codec, CodecError, PlainCodec, RawCodec};

/// Once this many bytes are waiting, the connection writes before it reads more, so that a
/// fast pipelining client is answered in large writes but never waits long.
const FLUSH_EARLY: usize = 64 * 1024;

/// Bytes a connection makes room for before reading. Buffers start empty and are handed
/// back whenever a read leaves nothing in them, so an idle connection holds no buffer. At
/// 1 KiB the allocation comes from the allocator's per-thread cache: releasing 4 KiB
/// buffers at every pause cost a slow malloc and free per request and doubled p99.9 at 50
/// connections without pipelining (measured with courier bench).
const READ_CHUNK: usize = 1024;

/// While a burst arrives (a pipelined batch, a large frame: bytes already wait in the
/// buffer), each read makes room for twice as much as the one before, from READ_CHUNK up
/// to READ_CHUNK << MAX_BURST_SHIFT (16 KiB). With 1 KiB reads a batch of 64 pipelined
/// 64-byte requests (4.7 KB) took four to five reads (strace of the server under
/// `courier bench -c 50 -P 64`); making room for 16 KiB at once cost a batch of 16 (1.2
/// KB) a large allocation for a few bytes. A burst starts with room for the whole of the
/// one before it (see `poll_io`), so that a client that keeps sending batches of one size
/// gets one read per batch.
const MAX_BURST_SHIFT: u8 = 4;

/// Bursts in a row that would have fitted half the room before a new burst starts with
/// half the room: one smaller batch among large ones does not cost the next large one a
/// second read.
const SHRINK_AFTER: u8 = 2;

mod outbox;
mod spare;

use outbox::take_front;
pub(crate) use outbox::Outbox;
use spare::Slot;

/// How long a closing connection waits for its peer to take the last bytes and close its
/// side. Without it, closing a socket that still has unread input makes the kernel send a
/// reset, which can destroy replies the peer has not read yet.
const LINGER: Duration = Duration::from_secs(2);

/// A decoder that can tell whether a whole frame waits without taking it, so that the
/// driver can take it where it lies when the handler answers it so
/// ([`Protocol::lend`](super::driver::Protocol::lend)): even the first frame of a read,
/// which is every request when clients do not pipeline.
pub(crate) trait Whole: Decoder<Error = CodecError> {
    /// `Some(true)` when `src` starts with a whole frame, or with bytes the decoder
    /// refuses (it says so when asked); `Some(false)` while more must be read; `None`
    /// (the default) where [`Reader`] decodes the frame itself, as for framings whose
    /// messages are never lent.
    fn whole(&self, src: &[u8]) -> Option<bool> {
        let _ = src;
        None
    }
}

impl Whole for Codec {
    fn whole(&self, src: &[u8]) -> Option<bool> {
        Some(!matches!(self.peek(src), Ok(None)))
    }
}

impl Whole for PlainCodec {}

impl Whole for RawCodec {}

/// What the poller reports.
pub(crate) enum Io<T> {
    /// A whole frame waits in the read buffer (and maybe more): the driver's to take,
    /// where it lies or through [`Reader::decode`], until the decoder finds no whole one.
    Arrived,
    /// A message the reader decoded itself (where the decoder cannot tell [`Whole`]
    /// frames, and past the end of the stream), a decoding or reading error, or `None`:
    /// the end of the stream.
    Read(Option<Result<T, CodecError>>),
    /// Everything queued has been written (reported only while reading is paused: see
    /// [`Conn::poll_io`]).
    Flushed,
    /// Writing failed: the peer is gone.
    WriteFailed(io::Error),
    /// A deadline passed.
    Deadline(Deadline),
    /// Time to check that a peer that finished sending is still there ([`PROBE_EVERY`]).
    Probe,
}

/// How often a connection whose peer finished sending, and whose calls still run, writes
/// to it: a peer that closed its socket (rather than only its write side) answers with
/// a reset, the next write fails, and the connection ends, cancelling its calls (and
/// killing an `--exec` command) instead of running them for nobody.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(1);

pin_project_lite::pin_project! {
    /// A connection's one timer, with the waker it was last polled with while pending.
    /// The waker is boxed with the timer, not kept in the connection's own state: Tokio
    /// lays tasks out in steps of 128 bytes, and 16 bytes more there crossed one (1,680
    /// against 1,563 bytes per idle connection, `bench/idle_memory 10000`); here they
    /// cost 15 (1,565 against 1,550).
    struct Timer {
        #[pin]
        sleep: Sleep,
        waker: Option<Waker>,
    }
}

impl Timer {
    fn new(at: Instant) -> Pin<Box<Timer>> {
        Box::pin(Timer {
            sleep: sleep_until(at),
            waker: None,
        })
    }

    fn deadline(&self) -> Instant {
        self.sleep.deadline()
    }

    /// Moves the timer to `at`; the next [`Timer::poll_fired`] polls it.
    fn reset(self: Pin<&mut Self>, at: Instant) {
        let this = self.project();
        this.sleep.reset(at);
        *this.waker = None;
    }

    /// Polls the timer, unless that can tell nothing new: it was polled and left pending
    /// with a waker that wakes this same task, it has not been reset since, and it has not
    /// fired. Its waker stays registered until it fires, so the task is still woken then.
    /// Polling it each time the loop went to sleep registered the waker anew every time:
    /// about 100 of the server's 3,126 instructions per request at 50 connections
    /// (`bench/instructions`: 3,023 and 3,028 now).
    fn poll_fired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this
            .waker
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
            && !this.sleep.is_elapsed()
        {
            return Poll::Pending;
        }
        // A task out of its coop budget gets `Pending` from Tokio's timer before the timer
        // is touched, its waker not registered (the task is woken to be polled again): only
        // a pending poll made with budget left leaves the waker with the timer.
        let registers = tokio::task::coop::has_budget_remaining();
        let poll = this.sleep.poll(cx);
        *this.waker = (poll.is_pending() && registers).then(|| cx.waker().clone());
        poll
    }
}

/// One connection's reading side, writing side, and deadlines.
///
/// One stream serves both sides: the outbox holds it, and the reader reads through it. A
/// stream split in two halves (`tokio::io::split`) puts a lock around every read and
/// write, and a heap allocation around every connection's stream: with the split, the
/// server ran 4,567-4,578 instructions per request at 50 connections, without it
/// 4,360-4,369 (`bench/instructions`), and an idle connection cost 1,952 bytes against
/// 1,871 (`bench/idle_memory 10000`).
pub(crate) struct Conn<S, D, E> {
    pub(crate) reader: Reader<D>,
    pub(crate) out: Outbox<S, E>,
    /// When the first byte of the frame now being received arrived.
    partial_since: Option<Instant>,
    /// How far the read chunk has doubled: the room a burst's first read makes.
    burst_shift: u8,
    /// Bursts in a row that would have fitted in half the room (see [`SHRINK_AFTER`]).
    small_bursts: u8,
    /// [`Reader::taken`] when the current burst started.
    burst_start: u32,
    last_activity: Instant,
    /// Until [`Conn::handshake_done`]: the handshake deadline runs, and it is where
    /// `sleep` was first set (nothing moves that timer before the handshake ends).
    handshaking: bool,
    /// Whether `sleep` is set for the idle deadline (which it may trail: see
    /// `poll_deadline`).
    sleep_is_idle: bool,
    sleep: Pin<Box<Timer>>,
}

impl<S, D, E> Conn<S, D, E>
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: Whole,
{
    /// Sets up a connection. With `handshake` the handshake deadline runs until
    /// [`Conn::handshake_done`].
    pub(crate) fn new(stream: S, decoder: D, encoder: E, config: &Config, handshake: bool) -> Self {
        let now = Instant::now();
        let first_deadline = now
            + if handshake {
                config.handshake_timeout
            } else {
                config.idle_timeout
            };
        Conn {
            reader: Reader::new(decoder),
            out: Outbox::new(stream, encoder),
            partial_since: None,
            burst_shift: 0,
            small_bursts: 0,
            burst_start: 0,
            last_activity: now,
            handshaking: handshake,
            sleep_is_idle: !handshake,
            sleep: Timer::new(first_deadline),
        }
    }

    /// Stops the handshake deadline.
    ///
    /// The timer is replaced, not moved: Tokio leaves a timer moved to a later deadline
    /// filed where it was and files it anew when that moment comes, so moving it from the
    /// handshake deadline to the idle one woke the runtime once at the handshake deadline,
    /// for nothing. A new timer is filed when first polled, at the deadline set by then.
    pub(crate) fn handshake_done(&mut self) {
        self.handshaking = false;
        self.sleep = Timer::new(self.sleep.deadline());
    }

    /// Notes that a message arrived: the connection is active, and whatever is left in the
    /// read buffer is the start of the next frame.
    pub(crate) fn received(&mut self) {
        let now = Instant::now();
        self.last_activity = now;
        self.reader.took_this_poll = true;
        self.partial_since = (!self.reader.read_buffer().is_empty()).then_some(now);
    }

    /// Notes that everything queued was written. When a message was received earlier in
    /// the same poll of the task (an answer given inline), that moment stands for this
    /// one: they are apart by the handling of one batch, and the idle deadline counts in
    /// seconds. Reading the clock for both cost every request at 50 connections one clock
    /// read more (`bench/instructions`'s shape), 19 ns each here.
    pub(crate) fn flushed(&mut self) {
        if !self.reader.took_this_poll {
            self.last_activity = Instant::now();
        }
    }

    /// Waits for the next I/O event: a message read (only when `can_read`), the write
    /// buffer drained (only when not `can_read`: while reading, a drained buffer is noted
    /// here and the wait goes on), or a deadline, whose lengths `config` gives. The idle
    /// deadline runs only while `idle` (nothing in flight). A pause in reading that the
    /// server chose does not count against the frame deadline. With `probe`, and nothing left to write, [`Io::Probe`] comes every
    /// [`PROBE_EVERY`] of quiet.
    pub(crate) fn poll_io(
        &mut self,
        cx: &mut Context<'_>,
        config: &Config,
        can_read: bool,
        idle: bool,
        probe: bool,
    ) -> Poll<Io<D::Item>> {
        if self.out.pending() >= FLUSH_EARLY {
            if let Poll::Ready(io) = self.poll_flush_quietly(cx, can_read) {
                return Poll::Ready(io);
            }
        }
        if can_read {
            // Room for a read of a useful size: the reader alone reserves a single byte,
            // and would then read a few bytes at a time.
            let buffer = self.reader.read_buffer_mut();
            if buffer.capacity() - buffer.len() < READ_CHUNK / 4 {
                // Bytes already waiting mean a burst is arriving: read the rest of it in
                // few reads, not a KiB at a time.
                if buffer.is_empty() {
                    self.start_burst();
                } else {
                    self.burst_shift = (self.burst_shift + 1).min(MAX_BURST_SHIFT);
                }
                let reader = &mut self.reader;
                if reader.buffer.capacity() == 0 {
                    if let Some(spare) = spare::take(Slot::Read) {
                        reader.buffer = spare;
                        reader.moved = false;
                    }
                }
                reader.buffer.reserve(READ_CHUNK << self.burst_shift);
            }
            if let Poll::Ready(io) = self.reader.poll_next(cx, &mut self.out.stream) {
                return Poll::Ready(io);
            }
            let reader = &mut self.reader;
            if reader.buffer.is_empty() {
                // Nothing to keep until the next read: an idle connection holds no buffer.
                let moved = std::mem::take(&mut reader.moved);
                spare::put(Slot::Read, std::mem::take(&mut reader.buffer), moved);
            } else if self.partial_since.is_none() {
                // The decoder has taken every whole frame; bytes left in the buffer are
                // the start of one, and from now on that frame is on the clock.
                self.partial_since = Some(Instant::now());
            }
        } else {
            self.partial_since = None;
        }
        if self.out.pending() > 0 {
            if let Poll::Ready(io) = self.poll_flush_quietly(cx, can_read) {
                return Poll::Ready(io);
            }
        } else {
            // A buffer taken for answers that none of the batch needed (one-way messages).
            self.out.give_back();
        }
        // Nothing read or written is left to report: the loop may go to sleep after this
        // (it only sleeps when this call is pending), and whatever wakes it comes later.
        self.reader.took_this_poll = false;
        self.poll_deadline(cx, config, idle, probe)
    }

    /// Sizes the first read of a burst that starts now from the burst before it: room for
    /// all of it in one read (a client pipelining batches of 16 64-byte requests sends
    /// 1.2 KB at a time, which 1 KiB reads took in two), and half as much once
    /// [`SHRINK_AFTER`] bursts in a row would have fitted in half. When every batch
    /// started at half the room of the last, batches of 16 took one read and two reads
    /// by turns: 1.5 reads per batch, 814,302 reads for 542,864 writes
    /// (`perf stat -e 'syscalls:sys_enter_*'` on the server under bench/epoll_floor.c's
    /// client, 50 connections, 16 in flight each).
    fn start_burst(&mut self) {
        let taken = self.reader.taken;
        let last = taken.wrapping_sub(self.burst_start) as usize;
        self.burst_start = taken;
        let mut fits = 0;
        while fits < MAX_BURST_SHIFT && READ_CHUNK << fits < last {
            fits += 1;
        }
        if fits >= self.burst_shift {
            self.burst_shift = fits;
            self.small_bursts = 0;
        } else {
            self.small_bursts += 1;
            if self.small_bursts >= SHRINK_AFTER {
                self.burst_shift -= 1;
                self.small_bursts = 0;
            }
        }
    }

    /// Waits for the deadline that applies now: the handshake's, the frame's (while a
    /// frame is part-read), the idle one (while `idle`), or the next probe.
    fn poll_deadline(
        &mut self,
        cx: &mut Context<'_>,
        config: &Config,
        idle: bool,
        probe: bool,
    ) -> Poll<Io<D::Item>> {
        let deadline = if self.handshaking {
            Some((self.sleep.deadline(), Some(Deadline::Handshake)))
        } else if let Some(since) = self.partial_since {
            Some((since + config.frame_timeout, Some(Deadline::Frame)))
        } else if idle {
            Some((
                self.last_activity + config.idle_timeout,
                Some(Deadline::Idle),
            ))
        } else {
            // Only with nothing left to write: a probe waits for the one before it.
            (probe && self.out.pending() == 0).then(|| (self.last_activity + PROBE_EVERY, None))
        };
        if let Some((at, which)) = deadline {
            // The idle deadline moves later with every request, and resetting the timer
            // each time took about 170 of the server's 5,700 instructions per request at
            // 50 connections (callgrind of `courier serve` under `courier bench -c 50`).
            // So a timer already set for the idle deadline is left where it was when
            // that deadline moves later; when it fires early, the deadline is checked and
            // the timer set again: at most one early wake-up per idle timeout. Any other
            // move (earlier, or to another deadline) resets it at once, so that an idle
            // connection is never woken by a deadline that no longer applies.
            let for_idle = matches!(which, Some(Deadline::Idle));
            let deadline = self.sleep.deadline();
            if at < deadline || (at > deadline && !(for_idle && self.sleep_is_idle)) {
                self.sleep.as_mut().reset(at);
                self.sleep_is_idle = for_idle;
            }
            if self.sleep.as_mut().poll_fired(cx).is_ready() {
                // The timer fired at its deadline, which is now or earlier. Before `at`,
                // it trailed an idle deadline that has moved on since: set it again.
                if at > self.sleep.deadline() {
                    self.sleep.as_mut().reset(at);
                    if self.sleep.as_mut().poll_fired(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                return Poll::Ready(which.map_or(Io::Probe, Io::Deadline));
            }
        }
        Poll::Pending
    }

    /// Writes what is queued. A finished flush is reported only when `can_read` is off:
    /// while reading is on, the read side has been (or is about to be) polled in this same
    /// call, so a flush leaves the connection loop nothing to do, and going back to it
    /// would cost every request one more turn of the loop and one more read that finds
    /// nothing (callgrind of the server under `courier bench -c 50`). With reading off
    /// (the session is closing, or `max_in_flight` calls run), the loop needs to know:
    /// a closing connection ends once everything is written.
    fn poll_flush_quietly(&mut self, cx: &mut Context<'_>, can_read: bool) -> Poll<Io<D::Item>> {
        match ready!(self.out.poll_flush(cx)) {
            Ok(()) if can_read => {
                self.flushed();
                Poll::Pending
            }
            Ok(()) => Poll::Ready(Io::Flushed),
            Err(err) => Poll::Ready(Io::WriteFailed(err)),
        }
    }

    /// Writes what is left, closes the write side, then reads and discards until the peer
    /// closes or `LINGER` passes, so that the peer can read every byte sent before the
    /// socket goes.
    ///
    /// The future is boxed: the closing state exists only at the end, but inline it would
    /// be part of every connection's future for its whole life (2822 -> 2175 bytes per
    /// idle connection, bench/idle_memory).
    pub(crate) fn close(self) -> Pin<Box<impl Future<Output = ()>>> {
        let mut out = self.out;
        Box::pin(async move {
            let result = tokio::time::timeout(LINGER, async {
                poll_fn(|cx| out.poll_flush(cx)).await?;
                out.stream.shutdown().await?;
                let mut sink = [0u8; 1024];
                while out.stream.read(&mut sink).await? > 0 {}
                Ok::<(), io::Error>(())
            })
            .await;
            if let Ok(Err(err)) = result {
                debug!(cause = %err, "error while closing");
            }
        })
    }
}

/// A connection's reading side: the bytes read and not yet decoded, and the decoder.
/// What tokio-util's `FramedRead` keeps, without the stream, which the [`Outbox`] holds;
/// it polls the same way.
pub(crate) struct Reader<D> {
    buffer: BytesMut,
    decoder: D,
    /// The last read found the end of the stream.
    eof: bool,
    /// Bytes arrived since the decoder last found no whole frame.
    readable: bool,
    /// Decoding or reading failed: the stream has ended.
    errored: bool,
    /// Bytes read so far, wrapping: the connection sizes its reads from the difference
    /// between two readings.
    taken: u32,
    /// Messages were taken during this poll of the connection's task, and
    /// `Conn::last_activity` was read from the clock then (cleared before
    /// [`Conn::poll_io`] can return `Pending`): a write that drains in the same poll needs
    /// no clock of its own ([`Conn::flushed`]). It sits in a byte the reader's layout
    /// leaves spare: as a field of [`Conn`] it made every idle connection 128 bytes larger,
    /// as the connection's task crossed a 128-byte step (`bench/idle_memory 10000`:
    /// 1,559 against 1,681 bytes).
    took_this_poll: bool,
    /// The buffer's start has moved since it was allocated or taken from the thread: a
    /// frame split off its front, or the front of a frame left behind bytes taken. What
    /// [`spare::put`] needs to know.
    moved: bool,
}

impl<D: Whole> Reader<D> {
    fn new(decoder: D) -> Self {
        Reader {
            buffer: BytesMut::new(),
            decoder,
            eof: false,
            readable: false,
            errored: false,
            taken: 0,
            took_this_poll: false,
            moved: false,
        }
    }

    pub(crate) fn read_buffer(&self) -> &BytesMut {
        &self.buffer
    }

    pub(crate) fn read_buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buffer
    }

    /// Takes `count` bytes, taken by the driver's lent decoding, off the buffer's front
    /// ([`take_front`]).
    pub(crate) fn take_front(&mut self, count: usize) {
        self.moved |= take_front(&mut self.buffer, count);
    }

    pub(crate) fn decoder(&self) -> &D {
        &self.decoder
    }

    pub(crate) fn decoder_mut(&mut self) -> &mut D {
        &mut self.decoder
    }

    /// The next whole frame already in the buffer, if any, without reading. Once it finds
    /// none, the next [`Reader::poll_next`] reads (or, past the end of the stream, reports
    /// what is left).
    pub(crate) fn decode(&mut self) -> Result<Option<D::Item>, CodecError> {
        let decoded = self.decoder.decode(&mut self.buffer);
        // A frame is split off the buffer's front, and shares its allocation.
        self.moved |= matches!(decoded, Ok(Some(_)));
        // Past the end of the stream, bytes left are checked by `decode_eof` in turn.
        if let (Ok(None), false) = (&decoded, self.eof) {
            self.readable = false;
        }
        decoded
    }

    /// The next frame, reading from `stream` as needed: [`Io::Arrived`] once a whole one
    /// waits, where the decoder can tell ([`Whole`]), else the frame decoded; once the
    /// stream has ended, the frames left and then `Io::Read(None)` (cleanly, or after
    /// the error returned before).
    fn poll_next<S: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut S,
    ) -> Poll<Io<D::Item>> {
        loop {
            if self.errored {
                return Poll::Ready(Io::Read(None));
            }
            if self.readable && !self.eof {
                match self.decoder.whole(&self.buffer) {
                    Some(true) => return Poll::Ready(Io::Arrived),
                    Some(false) => self.readable = false,
                    None => match self.decoder.decode(&mut self.buffer) {
                        Ok(Some(frame)) => {
                            self.moved = true;
                            return Poll::Ready(Io::Read(Some(Ok(frame))));
                        }
                        Ok(None) => self.readable = false,
                        Err(err) => {
                            self.errored = true;
                            return Poll::Ready(Io::Read(Some(Err(err))));
                        }
                    },
                }
            }
            if self.readable {
                // The stream has ended: what is left must be whole frames.
                match self.decoder.decode_eof(&mut self.buffer) {
                    Ok(Some(frame)) => {
                        self.moved = true;
                        return Poll::Ready(Io::Read(Some(Ok(frame))));
                    }
                    Ok(None) => return Poll::Ready(Io::Read(None)),
                    Err(err) => {
                        self.errored = true;
                        return Poll::Ready(Io::Read(Some(Err(err))));
                    }
                }
            }
            self.buffer.reserve(1);
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut *stream),
                cx,
                &mut self.buffer
            )) {
                Ok(0) => {
                    if self.eof {
                        return Poll::Ready(Io::Read(None));
                    }
                    self.eof = true;
                }
                Ok(n) => {
                    // Truncation is fine: only differences of less than 4 GiB are used.
                    self.taken = self.taken.wrapping_add(n as u32);
                    self.eof = false;
                }
                Err(err) => {
                    self.errored = true;
                    return Poll::Ready(Io::Read(Some(Err(err.into()))));
                }
            }
            self.readable = true;
        }
    }
}

#[cfg(test)]
mod tests;
