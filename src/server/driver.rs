//! One connection loop for every framing, as hyper splits `proto::h1::conn` (the state)
//! from `dispatch` (the loop that drives the socket).
//!
//! What a framing means lives in a [`Protocol`]: the courier [`Session`](super::session)
//! and the plain and raw [`Ordered`](super::ordered) session. They take inputs (a decoded
//! message, a finished handler call, the peer's end, the start of a drain) and return a
//! [`Step`] without touching a socket. Everything else is here, once: reading in batches,
//! `max_in_flight` backpressure, `Handler::ready` answers, the slow-reader limit, the
//! deadlines, the drain and its timeout, and the close with its linger. The loops were two
//! before, and disagreed in places; now a TLS peer that closes without close_notify is an
//! orderly end whatever the framing.
//!
//! The loop is generic, not `dyn`: this is the hot path, and each framing gets a loop of
//! its own from the compiler, with no call through a vtable per frame.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Decoder;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tracing::debug;

use super::close::Close;
use super::conn::{Conn, Io, Whole};
use super::Shared;
use crate::config::Config;
use crate::handler::{call, Finished, Handler, Ready, Request};
use crate::stats::{CloseReason, Stats, Tally, Turn};
use crate::wire::{CodecError, EncodeApart, ErrorCode};

/// The part of a connection that depends on its framing: what its messages mean and what
/// to answer. Implementations do no I/O; the driver applies what they return.
pub(crate) trait Protocol {
    /// Decodes what the peer sends and encodes what goes back.
    type Codec: Whole + EncodeApart<Self::Out> + Clone;
    /// A message the connection sends.
    type Out;
    /// Where the handler calls still running wait: in completion order or request order.
    type Calls<F: Future<Output = Finished>>: Calls<F>;
    /// Whether the peer must finish a handshake within `handshake_timeout`.
    const HANDSHAKE: bool;

    /// The codec a connection starts with.
    fn codec(config: &Config) -> Self::Codec;

    /// How many bytes `input` took on the wire (for the `bytes_in` counter).
    fn wire_len(input: &<Self::Codec as Decoder>::Item) -> usize;

    /// Raises the decoder's limit once the handshake is done (framings with one).
    fn handshaken(codec: &mut Self::Codec, max_frame: usize);

    /// What the server sends as soon as the connection opens, if anything.
    fn greeting(&mut self, config: &Config) -> Option<Self::Out>;

    /// Handles one decoded message. `ready` is the handler's inline answer
    /// (`Handler::ready_owned`), already [`Ready::Call`] where the framing's order forbids
    /// one now.
    fn on_input<R>(
        &mut self,
        input: <Self::Codec as Decoder>::Item,
        ctx: &mut Ctx<'_, '_>,
        ready: R,
    ) -> Step<Self::Out>
    where
        R: FnOnce(Request) -> Ready;

    /// Handles the messages at the front of `src` that `handler` takes where they lie
    /// ([`Handler::oneway_borrowed`], [`Handler::reply_borrowed`]), writing their answers
    /// into `lent.out` and counting them; returns the bytes they took, for the driver to
    /// drop from its read buffer. Whatever is left, from the first message it does not
    /// take, goes to the decoder. The default takes nothing. It is asked after every
    /// message of a batch, so the answer for anything else must be quick.
    fn lend<H: Handler>(
        &mut self,
        src: &[u8],
        codec: &Self::Codec,
        handler: &H,
        lent: &mut Lent<'_>,
    ) -> usize {
        let _ = (src, codec, handler, lent);
        0
    }

    /// Handles the end of a handler call.
    fn on_finished(&mut self, finished: Finished, ctx: &mut Ctx<'_, '_>) -> Step<Self::Out>;

    /// The peer finished sending (EOF, or a TLS close without close_notify).
    fn on_eof(&mut self);

    /// The server started to drain: nothing more will be read. Returns what tells the
    /// peer (GOAWAY), the first time only.
    fn drain(&mut self) -> Option<Self::Out>;

    /// Why the connection will end once every call is answered and written, or `None`
    /// while it still reads.
    fn settled(&self) -> Option<CloseReason>;

    /// The message that tells the peer why the driver closes its connection (a deadline,
    /// a broken frame), where the framing can say it.
    fn goodbye(&self, code: ErrorCode, text: &str) -> Option<Self::Out>;

    /// A message that may be written to a peer that finished sending while its calls
    /// run, to find out whether it is still there (`conn.rs`, `PROBE_EVERY`); `None`
    /// where the framing has none.
    fn probe(&self) -> Option<Self::Out> {
        None
    }
}

/// What the driver does after an input, as a [`Protocol`] decides.
#[derive(Debug)]
pub(crate) enum Step<T> {
    /// Nothing.
    Next,
    /// Queue this message: an answer that needed no handler call.
    Send(T),
    /// Run this request through the handler.
    Dispatch(Request),
    /// The handshake is done: stop its deadline and take messages up to `max_frame`.
    Handshaken {
        /// The decoder's limit from now on.
        max_frame: usize,
    },
    /// Queue `last` (the ERROR that says why, if any), then close.
    Close {
        /// The last message to the peer.
        last: Option<T>,
        /// Why, as counted and logged.
        close: Close,
    },
}

/// What a session may read while it handles an input, none of it I/O: the settings, and
/// the counters of this turn of the loop (and the server's, for a STATS answer).
pub(crate) struct Ctx<'a, 't> {
    /// The server's settings.
    pub(crate) config: &'a Config,
    /// Counts of this turn, added to `stats` when the turn ends.
    pub(crate) turn: &'a mut Turn<'t>,
    /// The server's counters.
    pub(crate) stats: &'t Stats,
}

/// What [`Protocol::lend`] may change: the turn's counters and the connection's output.
pub(crate) struct Lent<'a> {
    /// Counts of this turn.
    pub(crate) tally: &'a mut Tally,
    /// Answers the handler gave inline, as [`Driver::on_read`] counts them.
    pub(crate) inline: &'a mut u64,
    /// The connection's output buffer, written after everything queued before: encoded
    /// answers go here.
    pub(crate) out: &'a mut BytesMut,
    /// An answer is written into `out` only while it holds at most this many bytes
    /// (max_pending_output less what waits apart: [`Outbox::push`]'s check). Past it the
    /// peer is not reading, and the next message goes the usual way, which finds the
    /// limit passed.
    ///
    /// [`Outbox::push`]: super::conn::Outbox::push
    pub(crate) room: usize,
}

/// Handler calls still running on one connection.
pub(crate) trait Calls<F: Future<Output = Finished>>: Default {
    /// How many run.
    fn len(&self) -> usize;

    /// Whether none runs.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts waiting for `call`.
    fn push(&mut self, call: F);

    /// The next result that may be sent; `Ready(None)` when nothing runs.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Finished>>;

    /// Whether an answer that is ready now may be sent before the calls still running.
    fn may_pass(&self) -> bool;
}

/// Calls whose answers go out as they finish (courier framing: ids say which is which).
/// The set is created on first use: handlers that answer inline (`Handler::ready`) never
/// need it, and an idle connection then holds no memory for it.
pub(crate) struct Unordered<F>(Option<FuturesUnordered<F>>);

impl<F> Default for Unordered<F> {
    fn default() -> Self {
        Unordered(None)
    }
}

impl<F: Future<Output = Finished>> Calls<F> for Unordered<F> {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesUnordered::len)
    }

    fn push(&mut self, call: F) {
        self.0.get_or_insert_with(FuturesUnordered::new).push(call);
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Finished>> {
        match &mut self.0 {
            Some(set) => set.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }

    fn may_pass(&self) -> bool {
        true
    }
}

/// Calls whose answers go out in request order (plain and raw framing have no ids), so
/// an answer ready at once may only skip the queue when the queue is empty. Created on
/// first use, as [`Unordered`].
pub(crate) struct InOrder<F: Future>(Option<FuturesOrdered<F>>);

impl<F: Future> Default for InOrder<F> {
    fn default() -> Self {
        InOrder(None)
    }
}

impl<F: Future<Output = Finished>> Calls<F> for InOrder<F> {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesOrdered::len)
    }

    fn push(&mut self, call: F) {
        self.0
            .get_or_insert_with(FuturesOrdered::new)
            .push_back(call);
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Finished>> {
        match &mut self.0 {
            Some(queue) => queue.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }

    fn may_pass(&self) -> bool {
        self.is_empty()
    }
}

/// Serves one connection in `session`'s framing until the peer leaves, a limit or rule
/// closes it, or shutdown (`token`) drains it.
///
/// # Errors
/// Reading or writing failed (the close is then counted as an I/O error).
pub(crate) fn drive<'a, S, H, P>(
    stream: S,
    shared: &'a Shared<H>,
    token: CancellationToken,
    mut session: P,
) -> impl Future<Output = io::Result<Close>> + 'a
where
    S: AsyncRead + AsyncWrite + Unpin + 'a,
    H: Handler,
    P: Protocol + 'a,
{
    let config = &shared.config;
    let codec = P::codec(config);
    let mut conn = Conn::new(stream, codec.clone(), codec, config, P::HANDSHAKE);
    if let Some(first) = session.greeting(config) {
        let mut turn = Turn::new(&shared.stats);
        turn.tally.bytes_out += conn.out.push(first, config.max_pending_output) as u64;
    }
    let mut driver = Driver {
        shared,
        conn,
        session,
        calls: P::Calls::default(),
        start: call::<H>,
    };
    // The driver is this block's own, used in place: `run` borrows it rather than
    // taking it, since an async fn taking `self` would hold two copies of it (the
    // argument and its binding) for the connection's whole life.
    async move {
        // Taken out of `End` at once, so that the linger's state does not hold it too.
        let end = driver.run(&token).await;
        // Calls still running end with the connection: they run no more.
        let mut turn = Turn::new(&shared.stats);
        turn.tally.timing.in_flight -= driver.calls.len() as i64;
        drop(turn);
        let close = match end {
            End::Now(result) => return result,
            End::Linger(close) => close,
        };
        let Driver { conn, calls, .. } = driver;
        // Calls still running here belong to a connection closed for a protocol error or
        // a limit; they are dropped with it.
        drop(calls);
        conn.close().await;
        Ok(close)
    }
}

/// What a connection loop waits on besides its I/O: the shutdown token while it serves,
/// then, once it drains, the end of the drain timeout (`Shared::abort`). Holds the token
/// waited on and the waker the wait last registered with it; the wait itself is pinned
/// beside it in [`Driver::run`].
struct StopWait<'t> {
    token: &'t CancellationToken,
    waker: Option<Waker>,
}

impl StopWait<'_> {
    /// Whether the token is cancelled, as the top of the loop sees it: checked every
    /// [`STOP_CHECK_EVERY`]th turn (`unchecked` counts the turns since), and on the turns
    /// for which the loop sets `unchecked` one short (the first, the one after the wait
    /// fired). The count is the loop's: one byte more here made every idle connection
    /// 128 bytes larger, crossing a 128-byte task step (`bench/idle_memory`).
    fn seen_at_top(&self, unchecked: &mut u8) -> bool {
        *unchecked += 1;
        if *unchecked < STOP_CHECK_EVERY {
            return false;
        }
        *unchecked = 0;
        self.token.is_cancelled()
    }

    /// Polls `wait`, the wait on `self.token`, only when that can tell something new: the
    /// token was cancelled, or the loop is polled with a waker the wait does not hold.
    /// Until it fires, the wait stays registered with the token, so a cancel still wakes
    /// the loop; polling it each time the loop went to sleep took the token's waiter-list
    /// lock every time, a few percent of the server's instructions per request at 50
    /// connections (callgrind, `courier bench -c 50`).
    fn poll(
        &mut self,
        wait: Pin<&mut WaitForCancellationFuture<'_>>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        if self.token.is_cancelled() {
            return Poll::Ready(());
        }
        if self
            .waker
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let poll = wait.poll(cx);
        self.waker = poll.is_pending().then(|| cx.waker().clone());
        poll
    }
}

/// How often, in turns of its loop, a connection checks the shutdown token at the top of
/// the loop. A connection that goes to sleep learns of a shutdown from the wait on the
/// token ([`StopWait`]), which checks it each time; this check is for one so busy that it
/// never sleeps, and so never polls that wait. Checking every turn took the token's lock
/// once more per request without pipelining, about 40 of the server's 3,120 instructions
/// per request at 50 connections (`bench/instructions`), for a drain that a busy
/// connection now notices at most 16 turns later, microseconds.
const STOP_CHECK_EVERY: u8 = 16;

/// How [`Driver::run`] ended.
enum End {
    /// Close after the linger, which lets the peer read every byte sent.
    Linger(Close),
    /// Close at once: the peer is gone, does not read, or the drain timeout passed.
    Now(io::Result<Close>),
}

/// What the select in [`Driver::run`] woke for.
enum Event<T> {
    /// A handler call ended.
    Finished(Finished),
    /// The poller read, wrote, or saw a deadline pass.
    Io(Io<T>),
    /// Shutdown started (or, while draining, the drain timeout passed).
    Stop,
}

/// One connection being served: its I/O, its session and the calls it runs.
struct Driver<'a, S, H, P: Protocol, F: Future<Output = Finished>, M> {
    shared: &'a Shared<H>,
    conn: Conn<S, P::Codec, P::Codec>,
    /// What the framing means; no I/O in it.
    session: P,
    calls: P::Calls<F>,
    /// Starts a handler call ([`call`]): a function, named here because the type of the
    /// future it returns cannot be.
    start: M,
}

impl<'a, S, H, P, F, M> Driver<'a, S, H, P, F, M>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
    P: Protocol,
    F: Future<Output = Finished>,
    M: Fn(&'a H, Request) -> F,
{
    /// The loop: settle what the last turn changed, wait for the next event, handle it.
    /// `token` is cancelled at shutdown: the connection drains.
    async fn run(&mut self, token: &CancellationToken) -> End {
        // One wait for the stop signal for the connection's life, not one per turn: a
        // wait made afresh each turn registered with the token's waiter list under its
        // lock, and unregistered when the turn ended.
        let mut stop = pin!(token.cancelled());
        // `token` itself is not used past this point: the loop holds one reference to
        // whichever token it waits on, in `stop_wait` (8 bytes per idle connection).
        let mut stop_wait = StopWait { token, waker: None };
        // Turns since the token was last checked at the top of the loop, less one: the
        // first turn checks it.
        let mut unchecked = STOP_CHECK_EVERY - 1;
        loop {
            if self.conn.out.overflowed {
                // The peer is not reading, so a last message would not reach it either.
                let pending = self.conn.out.pending();
                return End::Now(Ok(Close::slow_reader(pending, &self.shared.config)));
            }
            let abort = &self.shared.abort;
            let mut draining = std::ptr::eq(stop_wait.token, abort);
            if !draining && stop_wait.seen_at_top(&mut unchecked) {
                // From now on the wait is for the end of the drain timeout.
                stop.set(abort.cancelled());
                stop_wait = StopWait {
                    token: abort,
                    waker: None,
                };
                draining = true;
            }
            if draining {
                self.drain();
            }
            let settled = self.session.settled();
            if let Some(reason) = settled {
                if self.calls.is_empty() && self.conn.out.pending() == 0 {
                    return End::Linger(Close::new(reason, ""));
                }
            }
            let can_read = settled.is_none() && self.calls.len() < self.shared.config.max_in_flight;
            let idle = self.calls.is_empty();
            let probe = !idle && settled.is_some() && self.session.probe().is_some();

            // The stop branch comes last: it only needs to wake an idle connection, and
            // polling it first would cost every busy turn a wasted registration.
            let event = tokio::select! {
                biased;
                Some(finished) = poll_fn(|cx| self.calls.poll_next(cx)), if !idle => {
                    Event::Finished(finished)
                }
                io = poll_fn(|cx| self.conn.poll_io(cx, &self.shared.config, can_read, idle, probe)) => Event::Io(io),
                () = poll_fn(|cx| stop_wait.poll(stop.as_mut(), cx)) => Event::Stop,
            };
            let closed = match event {
                Event::Finished(finished) => self.finish(finished),
                Event::Io(io) => match self.on_io(io) {
                    Ok(closed) => closed,
                    Err(err) => return End::Now(Err(err)),
                },
                // No linger: the drain is over.
                Event::Stop if draining => return End::Now(Ok(self.shared.aborted())),
                // The top of the loop starts the drain: it checks the token next turn.
                Event::Stop => {
                    unchecked = STOP_CHECK_EVERY - 1;
                    None
                }
            };
            if let Some(close) = closed {
                return End::Linger(close);
            }
        }
    }

    /// Tells the session the server drains, and queues what it says to the peer (GOAWAY),
    /// the first time only.
    fn drain(&mut self) {
        if let Some(goaway) = self.session.drain() {
            let mut turn = Turn::new(&self.shared.stats);
            turn.tally.bytes_out +=
                self.conn
                    .out
                    .push(goaway, self.shared.config.max_pending_output) as u64;
        }
    }

    /// Hands a finished call to the session and applies its answer.
    fn finish(&mut self, finished: Finished) -> Option<Close> {
        let shared = self.shared;
        let mut turn = Turn::new(&shared.stats);
        turn.tally.timing.in_flight -= 1;
        if !finished.oneway {
            turn.tally.timing.record(finished.took);
        }
        let mut ctx = Ctx {
            config: &shared.config,
            turn: &mut turn,
            stats: &shared.stats,
        };
        let step = self.session.on_finished(finished, &mut ctx);
        self.apply(step, &mut turn)
    }

    /// Handles what the poller reported.
    fn on_io(&mut self, io: Io<<P::Codec as Decoder>::Item>) -> io::Result<Option<Close>> {
        match io {
            Io::Flushed => {
                self.conn.flushed();
                Ok(None)
            }
            Io::WriteFailed(err) => Err(err),
            Io::Probe => {
                if let Some(probe) = self.session.probe() {
                    self.conn
                        .out
                        .push(probe, self.shared.config.max_pending_output);
                }
                Ok(None)
            }
            Io::Read(None) => {
                debug!("peer finished sending");
                self.session.on_eof();
                Ok(None)
            }
            Io::Deadline(which) => {
                let (code, text) = which.describe(&self.shared.config);
                let last = self.session.goodbye(code, &text);
                let close = Close::new(which.reason(), text);
                let mut turn = Turn::new(&self.shared.stats);
                Ok(self.apply(Step::Close { last, close }, &mut turn))
            }
            Io::Arrived => self.on_read(None),
            Io::Read(Some(item)) => self.on_read(Some(item)),
        }
    }

    /// Handles `first` (a message or error the reader returned, if any) and every further
    /// message already in the read buffer, so that a pipelined batch costs one turn of
    /// the loop, not one per message; counts the batch's inline answers and the handler
    /// calls it started in the turn's tally.
    fn on_read(
        &mut self,
        first: Option<Result<<P::Codec as Decoder>::Item, CodecError>>,
    ) -> io::Result<Option<Close>> {
        let shared = self.shared;
        let mut turn = Turn::new(&shared.stats);
        let calls_before = self.calls.len();
        // Answers the handler gives inline, counted here so that they need no clock.
        let mut inline = 0u64;
        let result = self.read_batch(first, &mut turn, &mut inline);
        turn.tally.timing.record_inline(inline);
        // Calls only start here; the ones that end are counted in `finish`.
        turn.tally.timing.in_flight += (self.calls.len() - calls_before) as i64;
        result
    }

    /// [`Driver::on_read`]'s loop: the session takes what it can where it lies
    /// ([`Protocol::lend`]), the decoder the next message, until none is whole.
    fn read_batch(
        &mut self,
        first: Option<Result<<P::Codec as Decoder>::Item, CodecError>>,
        turn: &mut Turn<'a>,
        inline: &mut u64,
    ) -> io::Result<Option<Close>> {
        let shared = self.shared;
        let mut next = first;
        let mut took = false;
        loop {
            let Some(item) = next
                .take()
                .or_else(|| self.next_input(turn, inline, &mut took))
            else {
                break;
            };
            took = true;
            let step = match item {
                Ok(input) => {
                    turn.tally.bytes_in += P::wire_len(&input) as u64;
                    let may_pass = self.calls.may_pass();
                    let mut ctx = Ctx {
                        config: &shared.config,
                        turn,
                        stats: &shared.stats,
                    };
                    let inline = &mut *inline;
                    self.session.on_input(input, &mut ctx, |request| {
                        if !may_pass {
                            return Ready::Call(request);
                        }
                        let oneway = request.oneway;
                        let answer = shared.handler.ready_owned(request);
                        *inline += u64::from(matches!(answer, Ready::Now(_)) && !oneway);
                        answer
                    })
                }
                Err(CodecError::Io(err))
                    if err.kind() == io::ErrorKind::UnexpectedEof
                        && self.conn.reader.read_buffer().is_empty() =>
                {
                    // A TLS peer that closed between messages without a close_notify: as
                    // far as the protocol goes, an orderly end.
                    debug!(cause = %err, "peer finished sending");
                    self.session.on_eof();
                    break;
                }
                Err(CodecError::Io(err)) => return Err(err),
                Err(err) => {
                    let close = Close::for_codec(&err);
                    let last = err
                        .error_code()
                        .and_then(|code| self.session.goodbye(code, &close.detail));
                    Step::Close { last, close }
                }
            };
            if let Some(close) = self.apply(step, turn) {
                return Ok(Some(close));
            }
            if self.session.settled().is_some() || self.calls.len() >= shared.config.max_in_flight {
                break;
            }
        }
        if took {
            self.conn.received();
        }
        Ok(None)
    }

    /// The next message of a batch, if a whole one waits in the read buffer: the session
    /// first takes what it answers where it lies ([`Protocol::lend`], noted in `took`),
    /// then the decoder the message after those.
    fn next_input(
        &mut self,
        turn: &mut Turn<'a>,
        inline: &mut u64,
        took: &mut bool,
    ) -> Option<Result<<P::Codec as Decoder>::Item, CodecError>> {
        let shared = self.shared;
        let reader = &mut self.conn.reader;
        if let Some((out, room)) = self.conn.out.room(shared.config.max_pending_output) {
            let mut lent = Lent {
                tally: &mut turn.tally,
                inline,
                out,
                room,
            };
            let taken = self.session.lend(
                reader.read_buffer(),
                reader.decoder(),
                &shared.handler,
                &mut lent,
            );
            if taken > 0 {
                reader.take_front(taken);
                *took = true;
            }
        }
        reader.decode().transpose()
    }

    /// Does what the session asked, counting what it queues in `turn`; returns the close
    /// it called for, if any.
    fn apply(&mut self, step: Step<P::Out>, turn: &mut Turn<'_>) -> Option<Close> {
        match step {
            Step::Next => None,
            Step::Send(out) => {
                turn.tally.bytes_out += self
                    .conn
                    .out
                    .push(out, self.shared.config.max_pending_output)
                    as u64;
                None
            }
            Step::Dispatch(request) => {
                self.calls.push((self.start)(&self.shared.handler, request));
                None
            }
            Step::Handshaken { max_frame } => {
                self.conn.handshake_done();
                P::handshaken(self.conn.reader.decoder_mut(), max_frame);
                None
            }
            Step::Close { last, close } => {
                if let Some(last) = last {
                    turn.tally.bytes_out += self
                        .conn
                        .out
                        .push(last, self.shared.config.max_pending_output)
                        as u64;
                }
                Some(close)
            }
        }
    }
}

#[cfg(test)]
mod tests;
