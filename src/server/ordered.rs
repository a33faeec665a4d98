//! The server side of plain framing (a 4-byte length and the payload) and raw framing (no
//! framing at all), for programs that were not written with courier, as an I/O-free
//! session the driver (`driver.rs`) runs.
//!
//! Both framings have no request ids, no handshake and no ERROR frames, so replies go back
//! in request order (the driver's `InOrder` calls), and a failure the framing cannot
//! express (a handler error, a limit) closes the connection with a log line that says
//! why. The limits, deadlines and shutdown are the server's usual ones.

use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use tokio_util::codec::Decoder;
use tracing::debug;

use super::close::{Close, LogHex};
use super::conn::Whole;
use super::driver::{Ctx, InOrder, Protocol, Step};
use crate::config::{Config, Framing};
use crate::handler::{Finished, Peer, Ready, Request};
use crate::stats::CloseReason;
use crate::wire::{CodecError, EncodeApart, ErrorCode, PlainCodec, RawCodec};

/// A codec for messages without ids: plain or raw framing.
pub(crate) trait Chunks:
    Decoder<Item = Bytes, Error = CodecError> + Whole + EncodeApart<Bytes> + Clone
{
    /// The framing this codec speaks.
    const FRAMING: Framing;

    /// Bytes in front of each message's payload on the wire.
    const PREFIX: usize;

    /// The codec for `config`.
    fn new(config: &Config) -> Self;
}

impl Chunks for PlainCodec {
    const FRAMING: Framing = Framing::Plain;
    const PREFIX: usize = 4;

    fn new(config: &Config) -> PlainCodec {
        PlainCodec::new(config.max_frame)
    }
}

impl Chunks for RawCodec {
    const FRAMING: Framing = Framing::Raw;
    const PREFIX: usize = 0;

    fn new(_: &Config) -> RawCodec {
        RawCodec
    }
}

/// Where a plain or raw connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Messages are read and dispatched.
    Open,
    /// The peer finished sending; its messages are answered, then the connection closes.
    PeerDone,
    /// The server is shutting down: nothing more is read; the messages received are
    /// answered, then the connection closes.
    Draining,
    /// A handler failed, which these framings cannot say: the connection closes.
    Closed,
}

/// The state of one plain or raw connection, in codec `C`'s framing.
#[derive(Debug)]
pub(crate) struct Ordered<C> {
    phase: Phase,
    /// Messages received so far; the n-th gets request id n.
    received: u64,
    /// Close once this many messages are received and answered (0: never).
    close_after: u64,
    /// The verified TLS client certificate's subject, for handlers.
    identity: Option<Arc<str>>,
    /// Who the client is, for handlers.
    peer: Peer,
    codec: PhantomData<fn() -> C>,
}

impl<C: Chunks> Ordered<C> {
    /// A session for `peer`, with this TLS identity.
    pub(crate) fn new(config: &Config, identity: Option<Arc<str>>, peer: Peer) -> Ordered<C> {
        Ordered {
            phase: Phase::Open,
            received: 0,
            close_after: config.close_after,
            identity,
            peer,
            codec: PhantomData,
        }
    }

    /// Whether `close_after` messages have come.
    fn enough(&self) -> bool {
        self.close_after > 0 && self.received >= self.close_after
    }

    fn raw() -> bool {
        C::FRAMING == Framing::Raw
    }
}

impl<C: Chunks> Protocol for Ordered<C> {
    type Codec = C;
    type Out = Bytes;
    type Calls<F: std::future::Future<Output = Finished>> = InOrder<F>;
    const HANDSHAKE: bool = false;

    fn codec(config: &Config) -> C {
        C::new(config)
    }

    fn wire_len(payload: &Bytes) -> usize {
        C::PREFIX + payload.len()
    }

    /// Never called: there is no handshake.
    fn handshaken(_: &mut C, _: usize) {}

    fn greeting(&mut self, config: &Config) -> Option<Bytes> {
        // Validated when the config was loaded.
        config.greeting().ok().flatten()
    }

    fn on_input<R>(&mut self, payload: Bytes, ctx: &mut Ctx<'_, '_>, ready: R) -> Step<Bytes>
    where
        R: FnOnce(Request) -> Ready,
    {
        if self.phase != Phase::Open || self.enough() {
            // Not read: the connection stopped reading before it.
            return Step::Next;
        }
        self.received += 1;
        ctx.turn.tally.requests += 1;
        if Self::raw() {
            // Every chunk of a busy stream: DEBUG, as courier framing's payloads are.
            debug!(len = payload.len(), data = %LogHex(&payload), "received");
        } else {
            debug!(len = payload.len(), payload = %LogHex(&payload), "received");
        }
        let request = Request {
            // Ids only tell messages apart in the logs and in the handler; wrapping after
            // 2^32 messages does no harm.
            id: self.received as u32,
            payload,
            oneway: false,
            idempotent: false,
            timeout: None,
            peer_identity: self.identity.clone(),
            peer: self.peer,
        };
        let id = request.id;
        match ready(request) {
            Ready::Now(result) => {
                let finished = Finished {
                    id,
                    oneway: false,
                    result,
                    took: std::time::Duration::ZERO,
                };
                self.on_finished(finished, ctx)
            }
            Ready::Call(request) => Step::Dispatch(request),
        }
    }

    fn on_finished(&mut self, finished: Finished, ctx: &mut Ctx<'_, '_>) -> Step<Bytes> {
        match finished.result {
            // In raw framing an empty reply is no reply at all.
            Ok(reply) if Self::raw() && reply.is_empty() => Step::Next,
            Ok(reply) => {
                ctx.turn.tally.replies += 1;
                Step::Send(reply)
            }
            Err(err) => {
                self.phase = Phase::Closed;
                let detail = format!(
                    "handler failed ({}): {}; {:?} framing cannot report errors, so the connection is closed",
                    err.code, err.message, C::FRAMING
                );
                Step::Close {
                    last: None,
                    close: Close::new(CloseReason::HandlerFailed, detail),
                }
            }
        }
    }

    fn on_eof(&mut self) {
        if self.phase == Phase::Open {
            self.phase = Phase::PeerDone;
        }
    }

    /// Nothing to send: these framings cannot say the server is going.
    fn drain(&mut self) -> Option<Bytes> {
        if matches!(self.phase, Phase::Open | Phase::PeerDone) {
            self.phase = Phase::Draining;
        }
        None
    }

    fn settled(&self) -> Option<CloseReason> {
        if self.enough() {
            return Some(CloseReason::CloseAfter);
        }
        match self.phase {
            Phase::Open | Phase::Closed => None,
            Phase::PeerDone => Some(CloseReason::PeerClosed),
            Phase::Draining => Some(CloseReason::Drained),
        }
    }

    /// Nothing: these framings have no way to say why.
    fn goodbye(&self, _: ErrorCode, _: &str) -> Option<Bytes> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::HandlerError;
    use crate::stats::{Stats, Turn};

    /// Feeds one message to `session` and returns its step.
    fn feed<C: Chunks>(
        session: &mut Ordered<C>,
        config: &Config,
        stats: &Stats,
        payload: &'static str,
        ready: Option<&'static str>,
    ) -> Step<Bytes> {
        let mut turn = Turn::new(stats);
        let mut ctx = Ctx {
            config,
            turn: &mut turn,
            stats,
        };
        session.on_input(Bytes::from(payload), &mut ctx, |request| match ready {
            Some(reply) => Ready::Now(Ok(Bytes::from(reply))),
            None => Ready::Call(request),
        })
    }

    fn finish<C: Chunks>(
        session: &mut Ordered<C>,
        config: &Config,
        stats: &Stats,
        result: Result<Bytes, HandlerError>,
    ) -> Step<Bytes> {
        let mut turn = Turn::new(stats);
        let mut ctx = Ctx {
            config,
            turn: &mut turn,
            stats,
        };
        let finished = Finished {
            id: 1,
            oneway: false,
            result,
            took: std::time::Duration::ZERO,
        };
        session.on_finished(finished, &mut ctx)
    }

    #[test]
    fn messages_get_ids_counting_up_from_1() {
        let (config, stats) = (Config::default(), Stats::new());
        let mut session = Ordered::<PlainCodec>::new(&config, None, Peer::Unknown);
        for expected in 1..=3 {
            match feed(&mut session, &config, &stats, "m", None) {
                Step::Dispatch(request) => assert_eq!(request.id, expected),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(stats.snapshot().requests, 3);
    }

    #[test]
    fn a_ready_answer_is_sent_at_once() {
        let (config, stats) = (Config::default(), Stats::new());
        let mut session = Ordered::<PlainCodec>::new(&config, None, Peer::Unknown);
        match feed(&mut session, &config, &stats, "m", Some("r")) {
            Step::Send(reply) => assert_eq!(reply, "r"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn close_after_settles_once_that_many_messages_came_and_reads_no_more() {
        let config = Config {
            close_after: 2,
            ..Config::default()
        };
        let stats = Stats::new();
        let mut session = Ordered::<RawCodec>::new(&config, None, Peer::Unknown);
        feed(&mut session, &config, &stats, "a", None);
        assert_eq!(session.settled(), None);
        feed(&mut session, &config, &stats, "b", None);
        assert_eq!(session.settled(), Some(CloseReason::CloseAfter));
        assert!(matches!(
            feed(&mut session, &config, &stats, "c", None),
            Step::Next
        ));
        // close_after wins over a drain that starts afterwards, as it always did.
        assert_eq!(session.drain(), None);
        assert_eq!(session.settled(), Some(CloseReason::CloseAfter));
    }

    #[test]
    fn an_empty_raw_reply_sends_nothing_but_an_empty_plain_reply_is_a_message() {
        let (config, stats) = (Config::default(), Stats::new());
        let mut raw = Ordered::<RawCodec>::new(&config, None, Peer::Unknown);
        assert!(matches!(
            finish(&mut raw, &config, &stats, Ok(Bytes::new())),
            Step::Next
        ));
        let mut plain = Ordered::<PlainCodec>::new(&config, None, Peer::Unknown);
        assert!(matches!(
            finish(&mut plain, &config, &stats, Ok(Bytes::new())),
            Step::Send(reply) if reply.is_empty()
        ));
    }

    #[test]
    fn a_handler_failure_closes_the_connection_saying_why_in_the_log_only() {
        let (config, stats) = (Config::default(), Stats::new());
        let mut session = Ordered::<PlainCodec>::new(&config, None, Peer::Unknown);
        match finish(
            &mut session,
            &config,
            &stats,
            Err(HandlerError::new("boom")),
        ) {
            Step::Close { last: None, close } => {
                assert_eq!(close.reason, CloseReason::HandlerFailed);
                assert!(close.detail.contains("boom"), "{}", close.detail);
                assert!(close.detail.contains("Plain framing"), "{}", close.detail);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn eof_then_drain_ends_as_drained_and_nothing_more_is_read() {
        let (config, stats) = (Config::default(), Stats::new());
        let mut session = Ordered::<PlainCodec>::new(&config, None, Peer::Unknown);
        session.on_eof();
        assert_eq!(session.settled(), Some(CloseReason::PeerClosed));
        assert_eq!(session.drain(), None);
        assert_eq!(session.settled(), Some(CloseReason::Drained));
        assert!(matches!(
            feed(&mut session, &config, &stats, "late", None),
            Step::Next
        ));
        assert_eq!(session.goodbye(ErrorCode::IdleTimeout, "idle"), None);
    }
}
