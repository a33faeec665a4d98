//! What answers a request: the [`Handler`] trait, the [`Request`] it gets and the
//! [`HandlerError`] it may return, the built-in handlers `courier serve` offers, and
//! `--exec` ([`Exec`], [`ExecPool`]), which makes any program a handler.
//!
//! This layer knows requests and their answers, not connections: the server calls it.
//!
//! `--exec` lives in three files: `exec.rs` runs the command once per request, `pool.rs`
//! keeps long-lived workers, and `children.rs` owns the process groups both start (with
//! [`kill_children`], which kills them all on exit).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;

use crate::wire::{ErrorCode, WRITE_APART};

#[cfg(feature = "exec")]
mod children;
#[cfg(feature = "exec")]
mod exec;
mod peer;
#[cfg(feature = "exec")]
mod pool;
#[cfg(all(windows, feature = "exec"))]
mod windows_job;

#[cfg(feature = "exec")]
pub use children::kill_children;
#[cfg(feature = "exec")]
pub use exec::Exec;
pub use peer::Peer;
#[cfg(feature = "exec")]
pub use pool::ExecPool;

/// What an `--exec-workers` pool (`ExecPool`) reports for `--metrics`: its workers busy
/// now and the processes it started again. Counted by the workers themselves, a few
/// atomic adds per request next to a round trip through a pipe and a process. Defined
/// here rather than with the pool so that the metrics endpoint can name it whether or
/// not the `exec` feature is on.
#[derive(Debug, Default)]
pub struct PoolStats {
    workers: usize,
    busy: std::sync::atomic::AtomicU64,
    restarts: std::sync::atomic::AtomicU64,
}

impl PoolStats {
    /// The pool's size (`exec_workers`).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Workers exchanging a request with their process now.
    pub fn busy(&self) -> u64 {
        self.busy.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Processes started to replace one that exited, was killed or overran its time.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Answers requests. The server calls it once per REQUEST (the result becomes the REPLY
/// or an ERROR) and once per ONEWAY message (the result is only logged).
///
/// The calls of one connection run concurrently on that connection's task, up to
/// `max_in_flight` at once; a handler that does heavy CPU work should move it to
/// `tokio::task::spawn_blocking`. When the connection fails (the peer resets it, a write
/// fails) or is closed for a limit, its pending calls are dropped, which cancels them at
/// their next `.await`. When the client only stops sending (EOF, a TCP half-close), the
/// calls it already made run to completion so that their replies can still be delivered.
///
/// Why not `tower::Service`: a service takes `&mut self` and a `poll_ready` step, which
/// suits one request at a time per service clone; courier runs many requests of one
/// connection at once and applies backpressure itself (`max_in_flight`), so a `&self`
/// method is the simpler fit. Any async closure `Fn(Request) -> Future` is a handler.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request.
    fn call(&self, request: Request) -> impl Future<Output = Result<Bytes, HandlerError>> + Send;

    /// Answers at once, when the answer needs no waiting; `None` (the default) means
    /// "call me". The server tries this first: an answer here skips scheduling the request
    /// as a task of its own, which is most of the cost of a trivial request. Implement it
    /// only for answers that are ready without any `.await` (echo, a fixed reply, a
    /// lookup in memory).
    fn ready(&self, request: &Request) -> Option<Result<Bytes, HandlerError>> {
        let _ = request;
        None
    }

    /// [`Handler::ready`], given the request itself: what the server calls. An answer
    /// made of the request's payload (an echo) can then take the payload rather than
    /// share it; sharing counts a reference to the read buffer, up and down again, two
    /// atomic operations per request, about 4 % of the echo server's CPU at 50
    /// connections pipelining 16 (`perf record` of `courier serve`). The default asks
    /// [`Handler::ready`]; implement one of the two.
    fn ready_owned(&self, request: Request) -> Ready {
        match self.ready(&request) {
            Some(result) => Ready::Now(result),
            None => Ready::Call(request),
        }
    }

    /// Handles a ONEWAY message at once from its payload where it lies in the
    /// connection's read buffer, borrowed, not owned: `Some` with the outcome (nobody
    /// sees it; a failure is logged), or `None` (the default) to have the message go
    /// the usual way, as a [`Request`] to [`Handler::ready_owned`] or [`Handler::call`].
    ///
    /// For handlers that only read a fire-and-forget message (count it, parse it, copy
    /// out what they keep). An owned payload shares the read buffer, and counting that
    /// share up and down is two atomic operations per message, 18 % of the server's CPU
    /// when one connection streams 64-byte ONEWAY messages (`perf record` of `courier
    /// serve` under `courier bench --oneway`). The server offers ONEWAY frames as they
    /// arrive on a courier connection; some still come the usual way (those left when
    /// the client's stream ends, those a UDP endpoint receives), so a handler that
    /// implements this handles ONEWAY requests in `call` or `ready` as well.
    fn oneway_borrowed(&self, message: RequestRef<'_>) -> Option<Result<(), HandlerError>> {
        let _ = message;
        None
    }

    /// Answers a REQUEST at once from its payload where it lies in the connection's read
    /// buffer, borrowed, not owned: `Some` with the reply's bytes (borrowed from the
    /// request or from the handler; the server copies them into the connection's
    /// output) or the failure to send as an ERROR, or `None` (the default) to have the
    /// request go the usual way, to [`Handler::ready_owned`] or [`Handler::call`].
    ///
    /// For answers that need no waiting and are made of bytes already at hand (an echo,
    /// a fixed reply, a lookup in memory). An owned payload shares the read buffer:
    /// counting that share up and down, and the [`Request`] and reply built around it,
    /// are what this skips. The server offers REQUEST frames (not REQUEST_EXT) with
    /// payloads under [`WRITE_APART`] bytes as they arrive on a courier connection; some
    /// still come the usual way (a request whose id is in flight, the rest of a batch
    /// once the connection's output is full, those left when the client's stream ends,
    /// those a UDP endpoint receives), so a handler that implements this answers the
    /// same in `call` or `ready`. A large reply is better given owned: it is then written
    /// from where it lies, not copied.
    fn reply_borrowed<'a>(
        &'a self,
        request: RequestRef<'a>,
    ) -> Option<Result<&'a [u8], HandlerError>> {
        let _ = request;
        None
    }
}

/// A REQUEST or ONEWAY message lent to [`Handler::reply_borrowed`] or
/// [`Handler::oneway_borrowed`]: what a [`Request`] says, with the payload borrowed from
/// the connection's read buffer.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestRef<'a> {
    /// The id the client gave it (unique among its requests in flight; any value for a
    /// ONEWAY message, whose ids are not checked).
    pub id: u32,
    /// The payload, valid for the call.
    pub payload: &'a [u8],
    /// As [`Request::peer_identity`].
    pub peer_identity: Option<&'a str>,
    /// As [`Request::peer`].
    pub peer: &'a Peer,
}

/// What [`Handler::ready_owned`] decided about a request.
#[derive(Debug)]
pub enum Ready {
    /// The answer, given at once.
    Now(Result<Bytes, HandlerError>),
    /// The request back: it needs [`Handler::call`].
    Call(Request),
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, HandlerError>> + Send,
{
    fn call(&self, request: Request) -> impl Future<Output = Result<Bytes, HandlerError>> + Send {
        self(request)
    }
}

/// A request as a handler sees it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Request {
    /// The request id chosen by the client (unique among its requests in flight).
    pub id: u32,
    /// The request's payload.
    pub payload: Bytes,
    /// `true` for a ONEWAY message, whose result nobody will see.
    pub oneway: bool,
    /// The client marked the request idempotent: running it twice does no harm, so a
    /// router may send it again after a failure whose outcome is unknown.
    pub idempotent: bool,
    /// How long the caller waits for the answer, counted from when the server read the
    /// request (a REQUEST_EXT's `timeout_ms`). Past it nobody waits: the server drops the
    /// handler's work and answers ERROR 20 (deadline exceeded).
    pub timeout: Option<std::time::Duration>,
    /// The subject of the client's verified TLS certificate (`CN=...`), when the server
    /// requires client certificates (`tls_client_ca`).
    pub peer_identity: Option<Arc<str>>,
    /// Who sent it: the client's address for TCP, TLS and UDP, its user and process for
    /// a Unix socket or a named pipe (what `--exec` commands get in `COURIER_PEER`).
    pub peer: Peer,
}

/// A handler's failure, sent to the client as an ERROR frame for that request. The
/// connection survives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// The code sent; [`ErrorCode::HandlerFailed`] unless the handler chose one
    /// (applications should use 1000 and above).
    pub code: ErrorCode,
    /// Text for a person.
    pub message: String,
}

impl HandlerError {
    /// An error with code [`ErrorCode::HandlerFailed`].
    pub fn new(message: impl Into<String>) -> HandlerError {
        HandlerError {
            code: ErrorCode::HandlerFailed,
            message: message.into(),
        }
    }

    /// An error with an application's own code (use 1000 and above).
    pub fn with_code(code: u16, message: impl Into<String>) -> HandlerError {
        HandlerError {
            code: ErrorCode::from_u16(code),
            message: message.into(),
        }
    }
}

/// The handlers `courier serve` offers.
#[derive(Debug, Clone)]
pub enum Builtin {
    /// The reply is the request's payload.
    Echo,
    /// The reply is always these bytes.
    Fixed(Bytes),
}

impl Builtin {
    /// The reply to a request carrying `payload`, which never needs waiting for.
    fn answer(&self, payload: Bytes) -> Bytes {
        match self {
            Builtin::Echo => payload,
            Builtin::Fixed(reply) => reply.clone(),
        }
    }
}

impl Handler for Builtin {
    fn call(&self, request: Request) -> impl Future<Output = Result<Bytes, HandlerError>> + Send {
        std::future::ready(Ok(self.answer(request.payload)))
    }

    fn ready(&self, request: &Request) -> Option<Result<Bytes, HandlerError>> {
        Some(Ok(self.answer(request.payload.clone())))
    }

    fn ready_owned(&self, request: Request) -> Ready {
        Ready::Now(Ok(self.answer(request.payload)))
    }

    /// A ONEWAY message's answer goes nowhere: nothing to do.
    fn oneway_borrowed(&self, _: RequestRef<'_>) -> Option<Result<(), HandlerError>> {
        Some(Ok(()))
    }

    /// Only a reply under [`WRITE_APART`]: a larger fixed reply is written from where it
    /// lies, not copied, when given owned.
    fn reply_borrowed<'a>(
        &'a self,
        request: RequestRef<'a>,
    ) -> Option<Result<&'a [u8], HandlerError>> {
        match self {
            Builtin::Echo => Some(Ok(request.payload)),
            Builtin::Fixed(reply) if reply.len() < WRITE_APART => Some(Ok(reply)),
            Builtin::Fixed(_) => None,
        }
    }
}

impl Builtin {
    /// The built-in for a configured reply: `None` echoes, `Some(bytes)` always answers
    /// with those bytes ([`crate::config::Config::fixed_reply`]).
    pub fn from_reply(fixed: Option<Bytes>) -> Builtin {
        match fixed {
            None => Builtin::Echo,
            Some(bytes) => Builtin::Fixed(bytes),
        }
    }
}

/// A handler's result, with what it answers.
pub(crate) struct Finished {
    /// The request's id.
    pub(crate) id: u32,
    /// Whether it was a ONEWAY message (nobody waits for the result).
    pub(crate) oneway: bool,
    /// The reply, or the ERROR to send.
    pub(crate) result: Result<Bytes, HandlerError>,
    /// Time from the call's start to its end (zero for an answer given inline).
    pub(crate) took: std::time::Duration,
}

/// Runs one request through the handler, turning a panic into an ERROR so that one bad
/// request cannot take the connection's other requests down with it.
pub(crate) fn call<H: Handler>(
    handler: &H,
    request: Request,
) -> impl Future<Output = Finished> + Send + '_ {
    let id = request.id;
    let oneway = request.oneway;
    // Called when the request is dispatched, so the clock starts at its arrival.
    let started = std::time::Instant::now();
    let timeout = request.timeout;
    let run = AssertUnwindSafe(handler.call(request)).catch_unwind();
    async move {
        let result = match timeout {
            None => run.await,
            Some(limit) => tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
                Ok(Err(HandlerError {
                    code: ErrorCode::DeadlineExceeded,
                    message: format!(
                        "deadline exceeded: the caller waits {} and the request was not done; its work was dropped",
                        humantime::format_duration(limit)
                    ),
                }))
            }),
        };
        Finished {
            id,
            oneway,
            result: result.unwrap_or_else(|_| Err(HandlerError::new("the handler panicked"))),
            took: started.elapsed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u32, payload: &'static str) -> Request {
        Request {
            id,
            payload: Bytes::from(payload),
            oneway: false,
            idempotent: false,
            timeout: None,
            peer_identity: None,
            peer: Peer::Pipe { pid: None },
        }
    }

    /// Answers payloads that start with "now" at once; the rest need a call.
    struct OnlyReady;

    impl Handler for OnlyReady {
        async fn call(&self, _: Request) -> Result<Bytes, HandlerError> {
            Err(HandlerError::new("not called here"))
        }

        fn ready(&self, request: &Request) -> Option<Result<Bytes, HandlerError>> {
            request
                .payload
                .starts_with(b"now")
                .then(|| Ok(Bytes::from_static(b"answered")))
        }
    }

    #[test]
    fn ready_owned_answers_what_ready_answers_and_hands_back_the_rest() {
        match OnlyReady.ready_owned(request(1, "now please")) {
            Ready::Now(Ok(reply)) => assert_eq!(reply, "answered"),
            other => panic!("expected the inline answer, got {other:?}"),
        }
        match OnlyReady.ready_owned(request(2, "later")) {
            Ready::Call(back) => {
                assert_eq!((back.id, &back.payload[..]), (2, &b"later"[..]));
            }
            other => panic!("expected the request back, got {other:?}"),
        }
    }

    #[test]
    fn the_builtins_answer_owned_requests_as_they_answer_borrowed_ones() {
        let fixed = Builtin::Fixed(Bytes::from_static(b"fixed"));
        for (handler, expected) in [(Builtin::Echo, "ping"), (fixed, "fixed")] {
            let borrowed = handler.ready(&request(3, "ping"));
            assert!(matches!(borrowed, Some(Ok(ref reply)) if reply == expected));
            match handler.ready_owned(request(3, "ping")) {
                Ready::Now(Ok(reply)) => assert_eq!(reply, expected),
                other => panic!("{handler:?}: expected {expected:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn only_handlers_that_say_so_take_oneway_messages_lent() {
        let peer = Peer::Unknown;
        let message = RequestRef {
            id: 4,
            payload: b"note",
            peer_identity: None,
            peer: &peer,
        };
        // The default declines: the message comes as a Request.
        assert!(OnlyReady.oneway_borrowed(message).is_none());
        // The built-ins have nothing to do with a ONEWAY message.
        let fixed = Builtin::Fixed(Bytes::from_static(b"fixed"));
        for handler in [Builtin::Echo, fixed] {
            assert!(matches!(handler.oneway_borrowed(message), Some(Ok(()))));
        }
    }

    #[test]
    fn the_builtins_answer_lent_requests_as_owned_ones_and_leave_large_replies_owned() {
        let peer = Peer::Unknown;
        let message = RequestRef {
            id: 5,
            payload: b"ping",
            peer_identity: None,
            peer: &peer,
        };
        assert!(OnlyReady.reply_borrowed(message).is_none());
        let fixed = Builtin::Fixed(Bytes::from_static(b"fixed"));
        for (handler, expected) in [(Builtin::Echo, &b"ping"[..]), (fixed, &b"fixed"[..])] {
            match handler.reply_borrowed(message) {
                Some(Ok(reply)) => assert_eq!(reply, expected),
                other => panic!("{handler:?}: expected {expected:?}, got {other:?}"),
            }
        }
        // A reply this large goes out from where it lies when given owned, not copied.
        let large = Builtin::Fixed(Bytes::from(vec![1u8; WRITE_APART]));
        assert!(large.reply_borrowed(message).is_none());
        let just_under = Builtin::Fixed(Bytes::from(vec![1u8; WRITE_APART - 1]));
        assert!(
            matches!(just_under.reply_borrowed(message), Some(Ok(reply)) if reply.len() == WRITE_APART - 1)
        );
    }
}
