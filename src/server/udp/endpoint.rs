//! The UDP server's protocol with no I/O: datagrams in, datagrams to send and requests to
//! run out. The socket loop (`mod.rs`) feeds it; tests and the `datagram` fuzz target
//! drive it directly.
//!
//! What it keeps: the sessions (by the client's random 64-bit id, with the address the
//! HELLO exchange validated, the requests running and the client's acknowledgement
//! floor) and the [`ReplyCache`]. What it promises: a request is handed out to run at most
//! once per (session, id) while its cache entry lives, and no id below the session's
//! floor is ever run; a peer whose address is not validated is sent at most 3 times the
//! bytes of the datagram it sent.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::Instant;
use tracing::debug;

use super::cache::{ReplyCache, Seen};
use super::cookie::Cookies;
use crate::config::Config;
use crate::handler::{HandlerError, Peer, Request};
use crate::server::session::accept_hello;
use crate::stats::{Stats, Tally};
use crate::wire::{
    Datagram, ErrorCode, Frame, Hello, Kind, HELLO_COOKIE, MAX_DATAGRAM_MESSAGE, MAX_HELLO_PAYLOAD,
    MIN_MAX_FRAME,
};

/// HELLO field (server to client, UDP): a random 64-bit number naming this server
/// process. A client that sees it change knows the requests it had sent may have run in
/// a server that is gone, and fails them as outcome unknown instead of resending them.
pub const HELLO_INSTANCE: u8 = 0x03;

/// HELLO field (server to client, UDP): the server's `max_in_flight` per session, u32.
pub const HELLO_MAX_IN_FLIGHT: u8 = 0x04;

/// An unvalidated peer is sent at most this many times the bytes it sent.
pub const AMPLIFICATION_LIMIT: usize = 3;

/// One client's session.
#[derive(Debug)]
struct Session {
    /// The address its last valid HELLO came from: the only one it is answered at.
    peer: SocketAddr,
    last_seen: Instant,
    /// Requests and one-way messages whose handler runs now.
    running: usize,
    /// Every id below this is finished at the client: a late copy is not run.
    floor: u32,
    /// The largest payload the client accepts.
    max_reply: usize,
}

/// What the socket loop does with a datagram's outcome.
#[derive(Debug, Default)]
pub struct Output {
    /// Datagrams to send, with where to.
    pub send: Vec<(Bytes, SocketAddr)>,
    /// A request to run: call the handler, then [`Endpoint::finished`].
    pub run: Option<(u64, Request)>,
}

/// The protocol state of a UDP server.
#[derive(Debug)]
pub struct Endpoint {
    sessions: HashMap<u64, Session>,
    cache: ReplyCache,
    cookies: Cookies,
    digests: RandomState,
    instance: u64,
    config: Config,
    draining: bool,
    /// Counts not yet added to the server's [`Stats`].
    tally: Tally,
}

impl Endpoint {
    /// An endpoint with these settings (`udp_*`, `max_in_flight`, `idle_timeout`,
    /// `max_connections` as the limit of sessions, the auth token).
    pub fn new(config: Config) -> Endpoint {
        Endpoint {
            sessions: HashMap::new(),
            cache: ReplyCache::new(
                config.udp_cache_entries,
                config.udp_cache_bytes,
                config.udp_cache_lifetime,
            ),
            cookies: Cookies::new(),
            digests: RandomState::new(),
            instance: crate::transport::random_u64(),
            config,
            draining: false,
            tally: Tally::default(),
        }
    }

    /// From now on, new requests are refused with a GOAWAY for their id (not received:
    /// safe to send again); duplicates of those received are still answered.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// Requests running now, in every session.
    pub fn running(&self) -> usize {
        self.sessions.values().map(|s| s.running).sum()
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// When [`Endpoint::tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.cache.next_expiry()
    }

    /// Expires cached replies past their lifetime and sessions idle for `idle_timeout`.
    pub fn tick(&mut self, now: Instant) {
        self.cache.expire(now);
        let idle = self.config.idle_timeout;
        self.sessions
            .retain(|_, s| s.running > 0 || now.saturating_duration_since(s.last_seen) < idle);
    }

    /// Takes one datagram from `peer`. `stats` is read for a STATS answer only.
    pub fn datagram(
        &mut self,
        bytes: Bytes,
        peer: SocketAddr,
        now: Instant,
        stats: &Stats,
    ) -> Output {
        let mut out = Output::default();
        let received = bytes.len();
        let datagram = match Datagram::decode(bytes) {
            Ok(datagram) => datagram,
            Err(err) => {
                // No answer: a reply to garbage would make the server a reflector.
                debug!(%peer, cause = %err, "datagram dropped");
                self.tally.protocol_errors += 1;
                return out;
            }
        };
        let (session, frame) = (datagram.session, datagram.frame);
        if frame.kind == Kind::Hello {
            self.hello(session, frame, peer, received, now, &mut out);
            return out;
        }
        let Some(state) = self.sessions.get_mut(&session) else {
            // Short: the smallest datagram (22 bytes) must earn its answer (3 x 22).
            let text = "unknown session: HELLO again";
            let answer = error(session, frame.id, ErrorCode::HelloNeeded, text);
            limited(&mut out, answer, peer, received, &mut self.tally);
            return out;
        };
        if state.peer != peer {
            let text = "address not validated: HELLO again";
            let answer = error(session, frame.id, ErrorCode::HelloNeeded, text);
            limited(&mut out, answer, peer, received, &mut self.tally);
            return out;
        }
        state.last_seen = now;
        if datagram.acked > state.floor {
            state.floor = datagram.acked;
            self.cache.acknowledge(session, datagram.acked);
        }
        match frame.kind {
            Kind::Request | Kind::Oneway => self.request(session, frame, &mut out),
            Kind::Ping => {
                self.tally.pings += 1;
                let pong = Frame::new(Kind::Pong, frame.id, frame.payload);
                self.send(session, pong, &mut out);
            }
            Kind::Stats => {
                self.flush(stats);
                let json = stats.snapshot().to_json().into_bytes();
                self.tally.replies += 1;
                self.send(session, Frame::reply(frame.id, json), &mut out);
            }
            kind => {
                debug!(%peer, %kind, "frame out of place on UDP: dropped");
                self.tally.protocol_errors += 1;
            }
        }
        out
    }

    /// A HELLO: without a valid cookie, the answer is a HELLO carrying one; with it, the
    /// address is validated, the token checked and the session opened (or moved here).
    fn hello(
        &mut self,
        session: u64,
        frame: Frame,
        peer: SocketAddr,
        received: usize,
        now: Instant,
        out: &mut Output,
    ) {
        if frame.payload.len() > MAX_HELLO_PAYLOAD {
            self.tally.protocol_errors += 1;
            return;
        }
        // The cookie first: nothing about the token is said to an address not validated.
        let offered = Hello::parse(&frame.payload).ok();
        let cookie = offered.as_ref().and_then(|hello| hello.field(HELLO_COOKIE));
        if offered.is_some() && !cookie.is_some_and(|c| self.cookies.check(c, peer, session)) {
            let mut retry = Hello::new(self.config.udp_max_payload as u32);
            let cookie = self.cookies.make(peer, session);
            retry
                .fields
                .push((HELLO_COOKIE, Bytes::copy_from_slice(&cookie)));
            let answer = Datagram::new(session, 0, Frame::hello(&retry)).encode();
            limited(out, answer, peer, received, &mut self.tally);
            return;
        }
        let hello = match accept_hello(&frame, &self.config) {
            Ok(hello) => hello,
            Err((code, text)) => {
                self.tally.protocol_errors += 1;
                let answer = error(session, 0, code, &text);
                limited(out, answer, peer, received, &mut self.tally);
                return;
            }
        };
        if (hello.max_frame as usize) < MIN_MAX_FRAME {
            self.tally.protocol_errors += 1;
            let text = format!(
                "the HELLO announces max_frame {}, below the protocol's minimum of {MIN_MAX_FRAME}",
                hello.max_frame
            );
            let answer = error(session, 0, ErrorCode::MalformedBody, &text);
            limited(out, answer, peer, received, &mut self.tally);
            return;
        }
        if !self.sessions.contains_key(&session)
            && self.sessions.len() >= self.config.max_connections
        {
            let text = format!(
                "server busy: {} UDP sessions open (max_connections)",
                self.sessions.len()
            );
            out.send
                .push((error(session, 0, ErrorCode::ServerBusy, &text), peer));
            return;
        }
        let max_reply = (hello.max_frame as usize).min(MAX_DATAGRAM_MESSAGE);
        let state = self.sessions.entry(session).or_insert(Session {
            peer,
            last_seen: now,
            running: 0,
            floor: 0,
            max_reply,
        });
        state.peer = peer;
        state.max_reply = max_reply;
        let mut welcome = Hello::new(self.config.udp_max_payload as u32);
        let mut in_flight = BytesMut::new();
        in_flight.put_u32(u32::try_from(self.config.max_in_flight).unwrap_or(u32::MAX));
        welcome.fields.push((
            HELLO_INSTANCE,
            Bytes::copy_from_slice(&self.instance.to_be_bytes()),
        ));
        welcome
            .fields
            .push((HELLO_MAX_IN_FLIGHT, in_flight.freeze()));
        self.send(session, Frame::hello(&welcome), out);
    }

    /// A REQUEST or ONEWAY of an open session, from its validated address.
    fn request(&mut self, session: u64, frame: Frame, out: &mut Output) {
        let oneway = frame.kind == Kind::Oneway;
        let id = frame.id;
        let limit = self.config.udp_max_payload;
        if frame.payload.len() > limit {
            self.tally.udp_too_large += 1;
            if !oneway {
                let text = format!(
                    "message too large: the request's payload is {} bytes, this server's UDP limit is {limit} bytes (udp_max_payload)",
                    frame.payload.len()
                );
                self.send(
                    session,
                    Frame::error(id, ErrorCode::FrameTooLarge, &text),
                    out,
                );
            }
            return;
        }
        let state = &self.sessions[&session];
        if id == 0 || id < state.floor {
            // Id 0 is never a request's; below the floor, the client has its answer.
            debug!(
                session,
                id,
                floor = state.floor,
                "late or invalid request id: dropped"
            );
            return;
        }
        let digest = self
            .digests
            .hash_one((frame.kind as u8, &frame.payload[..]));
        match self.cache.seen((session, id), digest) {
            Seen::New => self.start(session, frame, out),
            Seen::Running => self.tally.udp_dup_running += 1,
            Seen::Done(answer) => {
                self.tally.udp_cache_hits += 1;
                if !answer.is_empty() {
                    out.send.push((answer, self.sessions[&session].peer));
                }
            }
            Seen::Evicted => {
                let text = format!("request {id} ran, but its reply was evicted from the reply cache (udp_cache_entries, udp_cache_bytes); it is not run again");
                self.send(session, Frame::error(id, ErrorCode::ReplyLost, &text), out);
            }
            Seen::Full => {
                let text = format!("busy: the reply cache holds {} entries (udp_cache_entries); not run, send it again later", self.config.udp_cache_entries);
                if !oneway {
                    self.send(session, Frame::error(id, ErrorCode::Busy, &text), out);
                }
            }
            Seen::Mismatch => {
                self.tally.udp_payload_mismatch += 1;
                if !oneway {
                    let text = format!("request id {id} was already used in this session with a different payload; refused");
                    self.send(
                        session,
                        Frame::error(id, ErrorCode::DuplicateId, &text),
                        out,
                    );
                }
            }
        }
    }

    /// A request seen for the first time: run it, or refuse it (draining, too many
    /// running) and forget it, so that nothing says it ran.
    fn start(&mut self, session: u64, frame: Frame, out: &mut Output) {
        let oneway = frame.kind == Kind::Oneway;
        let id = frame.id;
        let key = (session, id);
        let max = self.config.max_in_flight;
        let running = self.sessions[&session].running;
        if self.draining || running >= max {
            self.cache.forget(key);
            if oneway {
                return;
            }
            let refusal = if self.draining {
                Frame::new(Kind::GoAway, id, Bytes::new())
            } else {
                let text = format!("busy: {max} requests of this session are running (max_in_flight); not run, send it again later");
                Frame::error(id, ErrorCode::Busy, &text)
            };
            self.send(session, refusal, out);
            return;
        }
        if oneway {
            self.tally.oneway += 1;
        } else {
            self.tally.requests += 1;
        }
        let mut peer = Peer::Unknown;
        if let Some(state) = self.sessions.get_mut(&session) {
            state.running += 1;
            peer = Peer::Ip(state.peer);
        }
        let request = Request {
            id,
            payload: frame.payload,
            oneway,
            peer_identity: None,
            peer,
            // UDP carries no REQUEST_EXT: its HELLO does not announce request options.
            idempotent: false,
            timeout: None,
        };
        out.run = Some((session, request));
    }

    /// A handler's result for a request [`Endpoint::datagram`] handed out: the answer is
    /// cached and sent to the session's address.
    pub fn finished(
        &mut self,
        session: u64,
        id: u32,
        oneway: bool,
        result: Result<Bytes, HandlerError>,
        now: Instant,
    ) -> Output {
        let mut out = Output::default();
        let max_reply = match self.sessions.get_mut(&session) {
            Some(state) => {
                state.running = state.running.saturating_sub(1);
                state.max_reply.min(self.config.udp_max_payload)
            }
            None => self.config.udp_max_payload,
        };
        let answer = if oneway {
            Bytes::new()
        } else {
            let frame = answer_frame(id, result, max_reply, &mut self.tally);
            Datagram::new(session, 0, frame).encode()
        };
        self.tally.udp_evictions += self.cache.finish((session, id), answer.clone(), now);
        if let (false, Some(state)) = (answer.is_empty(), self.sessions.get(&session)) {
            out.send.push((answer, state.peer));
        }
        out
    }

    /// Adds the counts made since the last flush to `stats`.
    pub fn flush(&mut self, stats: &Stats) {
        stats.add(&mut self.tally);
    }

    /// Queues `frame` for a session's validated address.
    fn send(&self, session: u64, frame: Frame, out: &mut Output) {
        if let Some(state) = self.sessions.get(&session) {
            let frame = cut_error(frame, state.max_reply);
            out.send
                .push((Datagram::new(session, 0, frame).encode(), state.peer));
        }
    }
}

/// The REPLY, or the ERROR for a failure or a reply that does not fit a datagram.
fn answer_frame(
    id: u32,
    result: Result<Bytes, HandlerError>,
    max_reply: usize,
    tally: &mut Tally,
) -> Frame {
    let (code, frame) = match result {
        Ok(reply) if reply.len() <= max_reply => {
            tally.replies += 1;
            return Frame::reply(id, reply);
        }
        Ok(reply) => {
            let text = format!(
                "reply too large: the handler's reply is {} bytes, one datagram carries at most {max_reply} (udp_max_payload, or the client's max_frame)",
                reply.len()
            );
            let code = ErrorCode::FrameTooLarge;
            (code, Frame::error_fitting(id, code, &text, max_reply))
        }
        Err(err) => (
            err.code,
            Frame::error_fitting(id, err.code, &err.message, max_reply),
        ),
    };
    tally.error(code.as_u16());
    frame
}

/// An ERROR cut to the client's limit; other frames as they are.
fn cut_error(frame: Frame, max: usize) -> Frame {
    if frame.kind != Kind::Error || frame.payload.len() <= max {
        return frame;
    }
    let body = crate::wire::ErrorBody::parse(&frame.payload);
    match body {
        Ok(body) => Frame::error_fitting(frame.id, body.code, &body.message, max),
        Err(_) => frame,
    }
}

/// An ERROR datagram.
fn error(session: u64, id: u32, code: ErrorCode, text: &str) -> Bytes {
    let frame = Frame::error_fitting(id, code, text, 256);
    Datagram::new(session, 0, frame).encode()
}

/// Queues an answer to an address not validated, if it is at most 3 times the bytes
/// received from it; otherwise drops and counts it.
fn limited(out: &mut Output, answer: Bytes, peer: SocketAddr, received: usize, tally: &mut Tally) {
    if answer.len() <= AMPLIFICATION_LIMIT * received {
        out.send.push((answer, peer));
    } else {
        tally.udp_unvalidated_drops += 1;
    }
}
