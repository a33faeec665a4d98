//! The courier protocol's side of one connection, with no I/O at all (as quinn-proto is
//! to quinn): frames in, [`Step`]s out.
//!
//! The session knows the HELLO rules, the request ids in flight, the drain and how every
//! answer that needs no handler looks (PONG, ERRORs, the STATS reply), each cut to the
//! client's announced max_frame. It never sees a socket: the driver (`driver.rs`) feeds it
//! what it read and applies what it returns, so the rules are unit-tested by feeding
//! frames (`session/tests.rs`), and another transport could reuse them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::{debug, warn};

use super::close::{Close, LogHex};
use super::driver::{Ctx, Lent, Protocol, Step, Unordered};
use crate::config::Config;
use crate::handler::{Finished, Handler, HandlerError, Peer, Ready, Request, RequestRef};
use crate::stats::{CloseReason, Snapshot, Tally};
use crate::wire::{
    put_header, Codec, ErrorBody, ErrorCode, Frame, Hello, HelloError, Kind, RequestOptions,
    HEADER_LEN, HELLO_AUTH_TOKEN, HELLO_REQUEST_OPTIONS, MAX_HELLO_PAYLOAD, MIN_MAX_FRAME,
    PROTOCOL_VERSION, WRITE_APART,
};

/// Where a courier connection is in its life.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for the client's HELLO: nothing else is accepted.
    AwaitHello,
    /// Handshake done: requests are read and dispatched. Holds the ids of the requests
    /// being handled, to refuse a duplicate.
    Open(HashSet<u32>),
    /// The client is done sending (EOF or GOAWAY): nothing more is read; the requests
    /// received are answered, then the connection closes.
    PeerDone,
    /// The server is shutting down: GOAWAY sent, nothing more read; the requests received
    /// are answered, then the connection closes.
    Draining,
    /// The session closed the connection (a closing ERROR, or the client's ERROR): nothing
    /// more is accepted.
    Closed,
}

/// The protocol state of one courier connection.
#[derive(Debug)]
pub(crate) struct Session {
    phase: Phase,
    /// The largest payload the client accepts: from its HELLO, and the HELLO limit until
    /// then. Nothing the server sends is larger (ERROR texts are cut to fit). A u32, as
    /// in the HELLO: 4 bytes less per connection than a usize.
    peer_max_frame: u32,
    /// Id of the last REQUEST received (for GOAWAY).
    last_id: u32,
    /// The verified TLS client certificate's subject, for handlers.
    identity: Option<Arc<str>>,
    /// Who the client is, for handlers.
    peer: Peer,
}

impl Session {
    /// A session waiting for the HELLO of `peer`, a client with this TLS identity.
    pub(crate) fn new(identity: Option<Arc<str>>, peer: Peer) -> Session {
        Session {
            phase: Phase::AwaitHello,
            // The HELLO limit is a small constant, so it fits.
            peer_max_frame: MAX_HELLO_PAYLOAD as u32,
            last_id: 0,
            identity,
            peer,
        }
    }

    /// Where the connection is.
    #[cfg(test)]
    pub(crate) fn phase(&self) -> &Phase {
        &self.phase
    }

    /// An ERROR whose text is cut so that the frame fits the client's max_frame.
    fn error(&self, id: u32, code: ErrorCode, text: &str) -> Frame {
        Frame::error_fitting(id, code, text, self.peer_max_frame as usize)
    }

    /// `frame` if its payload fits the client's max_frame; otherwise an ERROR 4 for its
    /// id saying so (a PONG echoing a large PING, the STATS reply).
    fn fitting(&self, frame: Frame) -> Frame {
        let max = self.peer_max_frame;
        if frame.payload.len() <= max as usize {
            return frame;
        }
        let text = format!(
            "frame too large: the {} would be {} bytes, the client's max_frame is {max} bytes",
            frame.kind,
            frame.payload.len()
        );
        self.error(frame.id, ErrorCode::FrameTooLarge, &text)
    }

    /// Ends the connection with an ERROR about all of it (id 0), counted under `reason`.
    fn refuse(&mut self, reason: CloseReason, code: ErrorCode, text: String) -> Step<Frame> {
        let last = Some(self.error(0, code, &text));
        self.phase = Phase::Closed;
        Step::Close {
            last,
            close: Close::new(reason, text),
        }
    }

    /// The first frame: a HELLO that passes every check opens the connection; anything
    /// else ends it with an ERROR saying why.
    fn on_hello(&mut self, frame: &Frame, config: &Config) -> Step<Frame> {
        match accept_hello(frame, config) {
            Ok(hello) if (hello.max_frame as usize) < MIN_MAX_FRAME => {
                // The ERROR is cut to what the client said it takes, small as that is.
                self.peer_max_frame = hello.max_frame;
                let text = format!(
                    "malformed body: the HELLO announces max_frame {}, below the minimum of {MIN_MAX_FRAME} bytes",
                    hello.max_frame
                );
                self.refuse(CloseReason::Protocol, ErrorCode::MalformedBody, text)
            }
            Ok(hello) => {
                self.peer_max_frame = hello.max_frame;
                self.phase = Phase::Open(HashSet::new());
                debug!(
                    version = hello.version,
                    max_frame = hello.max_frame,
                    "handshake done"
                );
                Step::Handshaken {
                    max_frame: config.max_frame,
                }
            }
            Err((code, text)) => {
                let reason = if code == ErrorCode::AuthFailed {
                    CloseReason::AuthFailed
                } else {
                    CloseReason::Protocol
                };
                self.refuse(reason, code, text)
            }
        }
    }

    /// A frame after the handshake.
    fn on_open<R>(&mut self, frame: Frame, ctx: &mut Ctx<'_, '_>, ready: R) -> Step<Frame>
    where
        R: FnOnce(Request) -> Ready,
    {
        match frame.kind {
            Kind::Request | Kind::Oneway => {
                self.on_request(frame, RequestOptions::default(), ctx, ready)
            }
            Kind::RequestExt => match RequestOptions::split(frame.payload) {
                Ok((options, payload)) => {
                    self.on_request(Frame::request(frame.id, payload), options, ctx, ready)
                }
                Err(err) => self.refuse(
                    CloseReason::Protocol,
                    ErrorCode::MalformedBody,
                    format!("{err} (id {})", frame.id),
                ),
            },
            Kind::Ping => {
                ctx.turn.tally.pings += 1;
                Step::Send(self.fitting(Frame::new(Kind::Pong, frame.id, frame.payload)))
            }
            Kind::Stats if frame.id == 0 => self.id_zero(frame.kind),
            Kind::Stats => {
                // This turn's counts first, so that the answer includes them.
                ctx.turn.flush();
                Step::Send(self.stats_reply(frame.id, &ctx.stats.snapshot()))
            }
            Kind::Pong => Step::Next,
            Kind::GoAway => {
                debug!("peer sent GOAWAY: finishing its requests");
                self.phase = Phase::PeerDone;
                Step::Next
            }
            Kind::Error => {
                let body = ErrorBody::parse(&frame.payload);
                warn!(peer = %self.peer, ?body, "peer sent ERROR; closing");
                self.phase = Phase::Closed;
                Step::Close {
                    last: None,
                    close: Close::new(CloseReason::PeerError, "peer sent ERROR"),
                }
            }
            Kind::Hello | Kind::Reply => {
                let text = format!(
                    "protocol error: a client does not send {} (id {}) after the handshake",
                    frame.kind, frame.id
                );
                // Id 0, whatever the frame's: this ERROR closes the connection.
                self.refuse(CloseReason::Protocol, ErrorCode::Protocol, text)
            }
        }
    }

    /// A REQUEST (with the options of a REQUEST_EXT) or ONEWAY: refused, answered at once
    /// through `ready`, or dispatched.
    fn on_request<R>(
        &mut self,
        frame: Frame,
        options: RequestOptions,
        ctx: &mut Ctx<'_, '_>,
        ready: R,
    ) -> Step<Frame>
    where
        R: FnOnce(Request) -> Ready,
    {
        let oneway = frame.kind == Kind::Oneway;
        let tally = &mut ctx.turn.tally;
        if oneway {
            tally.oneway += 1;
        } else {
            if frame.id == 0 {
                return self.id_zero(frame.kind);
            }
            if self.in_flight(frame.id) {
                debug!(id = frame.id, "duplicate request id");
                tally.protocol_errors += 1;
                tally.error(ErrorCode::DuplicateId.as_u16());
                let text = format!(
                    "duplicate request id {}: a request with this id is still in flight",
                    frame.id
                );
                return Step::Send(self.error(frame.id, ErrorCode::DuplicateId, &text));
            }
            self.last_id = frame.id;
            tally.requests += 1;
        }
        debug!(
            id = frame.id,
            kind = %frame.kind,
            len = frame.payload.len(),
            payload = %LogHex(&frame.payload),
            "received"
        );
        let request = Request {
            id: frame.id,
            payload: frame.payload,
            oneway,
            idempotent: options.idempotent,
            timeout: (options.timeout_ms > 0)
                .then(|| Duration::from_millis(u64::from(options.timeout_ms))),
            peer_identity: self.identity.clone(),
            peer: self.peer,
        };
        let id = request.id;
        match ready(request) {
            Ready::Now(result) => {
                let took = std::time::Duration::ZERO;
                self.finish(
                    Finished {
                        id,
                        oneway,
                        result,
                        took,
                    },
                    tally,
                )
            }
            Ready::Call(request) => {
                if let (false, Phase::Open(ids)) = (oneway, &mut self.phase) {
                    ids.insert(id);
                }
                Step::Dispatch(request)
            }
        }
    }

    /// [`Protocol::lend`]'s loop, once the first frame is a REQUEST or ONEWAY one and the
    /// connection is open.
    fn lend_frames<H: Handler>(
        &mut self,
        src: &[u8],
        codec: &Codec,
        handler: &H,
        lent: &mut Lent<'_>,
    ) -> usize {
        let mut taken = 0;
        while let Ok(Some((kind, id, len))) = codec.peek(&src[taken..]) {
            let payload = &src[taken + HEADER_LEN..taken + HEADER_LEN + len];
            let message = RequestRef {
                id,
                payload,
                peer_identity: self.identity.as_deref(),
                peer: &self.peer,
            };
            match kind {
                Kind::Oneway => {
                    let Some(result) = handler.oneway_borrowed(message) else {
                        break;
                    };
                    debug!(id, %kind, len, payload = %LogHex(payload), "received");
                    if let Err(err) = result {
                        self.oneway_failed(id, &err);
                    }
                    lent.tally.oneway += 1;
                }
                // The usual way refuses id 0 and an id in flight, and writes a large
                // payload apart; a full output finds its limit there.
                Kind::Request
                    if id != 0
                        && len < WRITE_APART
                        && lent.out.len() <= lent.room
                        && !self.in_flight(id) =>
                {
                    let Some(result) = handler.reply_borrowed(message) else {
                        break;
                    };
                    debug!(id, %kind, len, payload = %LogHex(payload), "received");
                    self.last_id = id;
                    lent.tally.requests += 1;
                    *lent.inline += 1;
                    self.answer_lent(id, result, lent);
                }
                _ => break,
            }
            lent.tally.bytes_in += (HEADER_LEN + len) as u64;
            taken += HEADER_LEN + len;
        }
        taken
    }

    /// Writes the answer to a lent REQUEST into the output: its REPLY, or an ERROR as
    /// [`Session::finish`] makes one.
    fn answer_lent(&self, id: u32, result: Result<&[u8], HandlerError>, lent: &mut Lent<'_>) {
        let before = lent.out.len();
        match result {
            Ok(reply) if reply.len() <= self.peer_max_frame as usize => {
                self.replied(id, reply, lent.tally);
                put_header(lent.out, Kind::Reply, id, reply.len());
                lent.out.extend_from_slice(reply);
            }
            result => {
                let frame = self.unsent(id, result.map(<[u8]>::len), lent.tally);
                put_header(lent.out, frame.kind, frame.id, frame.payload.len());
                lent.out.extend_from_slice(&frame.payload);
            }
        }
        lent.tally.bytes_out += (lent.out.len() - before) as u64;
    }

    /// Whether a request with this id is being handled (a set that is empty, as it is
    /// while every answer comes inline, is not even hashed into).
    fn in_flight(&self, id: u32) -> bool {
        matches!(&self.phase, Phase::Open(ids) if !ids.is_empty() && ids.contains(&id))
    }

    /// Logs a ONEWAY handler's failure: nobody else will hear of it. One line for both
    /// ways a ONEWAY message reaches the handler (lent or owned).
    fn oneway_failed(&self, id: u32, err: &HandlerError) {
        warn!(peer = %self.peer, id, code = %err.code, message = %err.message, "ONEWAY handler failed");
    }

    /// Refuses a REQUEST or STATS with id 0, which is reserved for the connection (an
    /// answer to it would be taken for one about the whole connection).
    fn id_zero(&mut self, kind: Kind) -> Step<Frame> {
        let text = format!("protocol error: {kind} with id 0; id 0 is reserved for the connection");
        self.refuse(CloseReason::Protocol, ErrorCode::Protocol, text)
    }

    /// The REPLY to a STATS frame: the counters as JSON, or ERROR 4 where they do not
    /// fit the client's max_frame.
    fn stats_reply(&self, id: u32, snapshot: &Snapshot) -> Frame {
        self.fitting(Frame::reply(id, Bytes::from(snapshot.to_json())))
    }

    /// The answer to a finished handler call: its REPLY, or an ERROR for its id (the
    /// handler failed, or the reply is larger than the client takes); nothing for ONEWAY.
    fn finish(&mut self, finished: Finished, tally: &mut Tally) -> Step<Frame> {
        let Finished {
            id, oneway, result, ..
        } = finished;
        if oneway {
            if let Err(err) = result {
                self.oneway_failed(id, &err);
            }
            return Step::Next;
        }
        if let Phase::Open(ids) = &mut self.phase {
            // Most answers come inline (`Handler::ready`) and were never in the set; a
            // removal from an empty set would still hash the id, which cost about a tenth
            // of the server's own instructions per request (callgrind, 50 connections
            // pipelining 16).
            if !ids.is_empty() {
                ids.remove(&id);
            }
        }
        let frame = match result {
            Ok(payload) if payload.len() <= self.peer_max_frame as usize => {
                self.replied(id, &payload, tally);
                Frame::reply(id, payload)
            }
            result => self.unsent(id, result.map(|payload| payload.len()), tally),
        };
        Step::Send(frame)
    }

    /// Logs and counts a REPLY that goes out: `payload` fits the client's max_frame.
    fn replied(&self, id: u32, payload: &[u8], tally: &mut Tally) {
        debug!(id, len = payload.len(), payload = %LogHex(payload), "reply");
        tally.replies += 1;
    }

    /// The ERROR sent for a request whose reply does not go out: the handler failed, or
    /// its reply, of `Ok(length)`, is larger than the client's max_frame. Logged and
    /// counted.
    fn unsent(&self, id: u32, result: Result<usize, HandlerError>, tally: &mut Tally) -> Frame {
        let peer_max_frame = self.peer_max_frame;
        match result {
            Ok(len) => {
                warn!(
                    peer = %self.peer,
                    id,
                    len,
                    peer_max_frame,
                    "reply larger than the client accepts"
                );
                tally.error(ErrorCode::FrameTooLarge.as_u16());
                let text = format!(
                    "frame too large: the reply is {len} bytes, the client's max_frame is {peer_max_frame} bytes"
                );
                self.error(id, ErrorCode::FrameTooLarge, &text)
            }
            Err(err) => {
                debug!(id, code = %err.code, message = %err.message, "handler failed");
                tally.error(err.code.as_u16());
                self.error(id, err.code, &err.message)
            }
        }
    }
}

impl Protocol for Session {
    type Codec = Codec;
    type Out = Frame;
    type Calls<F: std::future::Future<Output = Finished>> = Unordered<F>;
    const HANDSHAKE: bool = true;

    /// Until the handshake is done the limit is the HELLO's.
    fn wire_len(frame: &Frame) -> usize {
        crate::wire::HEADER_LEN + frame.payload.len()
    }

    fn codec(_: &Config) -> Codec {
        Codec::new(MAX_HELLO_PAYLOAD)
    }

    fn handshaken(codec: &mut Codec, max_frame: usize) {
        codec.set_max_payload(max_frame);
    }

    /// The server speaks first: its HELLO, announcing `max_frame`.
    fn greeting(&mut self, config: &Config) -> Option<Frame> {
        let max_frame = u32::try_from(config.max_frame).unwrap_or(u32::MAX);
        let mut hello = Hello::new(max_frame);
        // This server reads REQUEST_EXT.
        hello.fields.push((HELLO_REQUEST_OPTIONS, Bytes::new()));
        // A server joining a router (it dialled, so its peer is that router) proves itself
        // with the join token; a listening server never sends one.
        if let (Some(_), Some(token)) = (&config.join, &config.join_token) {
            hello
                .fields
                .push((HELLO_AUTH_TOKEN, token.as_bytes().clone()));
        }
        Some(Frame::hello(&hello))
    }

    fn on_input<R>(&mut self, frame: Frame, ctx: &mut Ctx<'_, '_>, ready: R) -> Step<Frame>
    where
        R: FnOnce(Request) -> Ready,
    {
        match self.phase {
            Phase::AwaitHello => self.on_hello(&frame, ctx.config),
            Phase::Open(_) => self.on_open(frame, ctx, ready),
            // Nothing is read in these phases; a frame that comes anyway is not read
            // either (GOAWAY promised as much).
            Phase::PeerDone | Phase::Draining | Phase::Closed => Step::Next,
        }
    }

    /// REQUEST and ONEWAY frames, whole, after the handshake, while the handler takes
    /// them. A frame the codec would refuse is left to it, which reports it in turn.
    #[inline]
    fn lend<H: Handler>(
        &mut self,
        src: &[u8],
        codec: &Codec,
        handler: &H,
        lent: &mut Lent<'_>,
    ) -> usize {
        // The kind byte first: any other frame costs these comparisons and no more.
        let kind = src.get(4).copied();
        if (kind != Some(Kind::Request as u8) && kind != Some(Kind::Oneway as u8))
            || !matches!(self.phase, Phase::Open(_))
        {
            return 0;
        }
        self.lend_frames(src, codec, handler, lent)
    }

    fn on_finished(&mut self, finished: Finished, ctx: &mut Ctx<'_, '_>) -> Step<Frame> {
        self.finish(finished, &mut ctx.turn.tally)
    }

    fn on_eof(&mut self) {
        if !matches!(self.phase, Phase::Draining | Phase::Closed) {
            self.phase = Phase::PeerDone;
        }
    }

    fn drain(&mut self) -> Option<Frame> {
        if matches!(self.phase, Phase::Draining | Phase::Closed) {
            return None;
        }
        debug!(last_id = self.last_id, "draining: sending GOAWAY");
        self.phase = Phase::Draining;
        Some(Frame::goaway(self.last_id))
    }

    fn settled(&self) -> Option<CloseReason> {
        match self.phase {
            Phase::AwaitHello | Phase::Open(_) | Phase::Closed => None,
            Phase::PeerDone => Some(CloseReason::PeerClosed),
            Phase::Draining => Some(CloseReason::Drained),
        }
    }

    /// A closing ERROR: id 0, cut to the client's max_frame.
    fn goodbye(&self, code: ErrorCode, text: &str) -> Option<Frame> {
        Some(self.error(0, code, text))
    }

    /// A PING (id 0, empty) once the client finished sending: writing it to a client that
    /// closed its socket fails, and the connection's calls are cancelled.
    fn probe(&self) -> Option<Frame> {
        matches!(self.phase, Phase::PeerDone).then(|| Frame::new(Kind::Ping, 0, Bytes::new()))
    }
}

/// Checks the client's HELLO (and its token, where the server requires one); on failure
/// returns the ERROR code and text to send.
pub(crate) fn accept_hello(frame: &Frame, config: &Config) -> Result<Hello, (ErrorCode, String)> {
    if frame.kind != Kind::Hello {
        return Err((
            ErrorCode::Protocol,
            format!(
                "protocol error: expected HELLO as the first frame, got {}",
                frame.kind
            ),
        ));
    }
    let hello = Hello::parse(&frame.payload).map_err(|err| match err {
        HelloError::BadMagic { .. } => (ErrorCode::BadMagic, err.to_string()),
        HelloError::Malformed(_) => (ErrorCode::MalformedBody, err.to_string()),
    })?;
    if hello.version != PROTOCOL_VERSION {
        return Err((
            ErrorCode::UnsupportedVersion,
            format!(
                "unsupported version: the client speaks protocol version {}, this server speaks {PROTOCOL_VERSION}",
                hello.version
            ),
        ));
    }
    if let Some(token) = &config.auth_token {
        let offered = hello
            .field(HELLO_AUTH_TOKEN)
            .map_or(&[][..], |value| &value[..]);
        if !token.matches(offered) {
            // The same text whether the token was missing or wrong.
            return Err((ErrorCode::AuthFailed, "authentication failed".into()));
        }
    }
    Ok(hello)
}

#[cfg(test)]
mod tests;
