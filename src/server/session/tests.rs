//! The courier session fed frames directly, with no socket: each test checks the steps
//! that come out.

use bytes::{Bytes, BytesMut};

use super::*;
use crate::config::AuthToken;
use crate::handler::HandlerError;
use crate::stats::{Stats, Turn};
use crate::wire::parse_goaway;

/// A session with its settings and counters.
struct Harness {
    config: Config,
    stats: Stats,
    session: Session,
}

/// A handler that never answers inline: every request is dispatched.
fn call_me(request: Request) -> Ready {
    Ready::Call(request)
}

impl Harness {
    fn new(config: Config) -> Harness {
        Harness {
            config,
            stats: Stats::new(),
            session: Session::new(Some("CN=client".into()), Peer::Unknown),
        }
    }

    /// A session whose client said HELLO announcing `max_frame`.
    fn open(max_frame: u32) -> Harness {
        let mut harness = Harness::new(Config::default());
        let step = harness.feed(hello(max_frame));
        assert!(matches!(step, Step::Handshaken { .. }), "{step:?}");
        harness
    }

    fn feed(&mut self, frame: Frame) -> Step<Frame> {
        self.feed_with(frame, call_me)
    }

    fn feed_with<R>(&mut self, frame: Frame, ready: R) -> Step<Frame>
    where
        R: FnOnce(Request) -> Ready,
    {
        self.batch(|session, ctx| session.on_input(frame, ctx, ready))
    }

    /// Runs `work` within one turn, as the driver handles one batch of frames.
    fn batch<T>(&mut self, work: impl FnOnce(&mut Session, &mut Ctx<'_, '_>) -> T) -> T {
        let mut turn = Turn::new(&self.stats);
        let mut ctx = Ctx {
            config: &self.config,
            turn: &mut turn,
            stats: &self.stats,
        };
        work(&mut self.session, &mut ctx)
    }

    fn finish(&mut self, id: u32, result: Result<Bytes, HandlerError>) -> Step<Frame> {
        let finished = Finished {
            id,
            oneway: false,
            result,
            took: std::time::Duration::ZERO,
        };
        self.batch(|session, ctx| session.on_finished(finished, ctx))
    }
}

fn hello(max_frame: u32) -> Frame {
    Frame::hello(&Hello::new(max_frame))
}

fn hello_with_token(token: &[u8]) -> Frame {
    let mut hello = Hello::new(1 << 20);
    hello
        .fields
        .push((HELLO_AUTH_TOKEN, Bytes::copy_from_slice(token)));
    Frame::hello(&hello)
}

fn config_with_token(token: &str) -> Config {
    Config {
        auth_token: Some(AuthToken::new(token.as_bytes().to_vec()).unwrap()),
        ..Config::default()
    }
}

/// The body of an ERROR frame, checking that it is one.
fn error_body(frame: &Frame) -> ErrorBody {
    assert_eq!(frame.kind, Kind::Error, "{frame:?}");
    ErrorBody::parse(&frame.payload).unwrap()
}

/// The frame a step sends, checking that it sends one.
fn sent(step: Step<Frame>) -> Frame {
    match step {
        Step::Send(frame) => frame,
        other => panic!("expected a frame to send, got {other:?}"),
    }
}

/// The closing ERROR (id 0) and the counted reason of a step that closes.
fn closing(step: Step<Frame>) -> (ErrorBody, CloseReason) {
    match step {
        Step::Close {
            last: Some(last),
            close,
        } => {
            assert_eq!(last.id, 0, "a closing ERROR has id 0: {last:?}");
            (error_body(&last), close.reason)
        }
        other => panic!("expected a close with an ERROR, got {other:?}"),
    }
}

fn dispatched(step: Step<Frame>) -> Request {
    match step {
        Step::Dispatch(request) => request,
        other => panic!("expected a dispatch, got {other:?}"),
    }
}

#[test]
fn the_server_speaks_first_with_a_hello_announcing_its_max_frame() {
    let mut harness = Harness::new(Config {
        max_frame: 5000,
        ..Config::default()
    });
    let greeting = harness.session.greeting(&harness.config).unwrap();
    assert_eq!(greeting.kind, Kind::Hello);
    assert_eq!(Hello::parse(&greeting.payload).unwrap().max_frame, 5000);
}

#[test]
fn a_valid_hello_opens_the_session_and_raises_the_frame_limit_to_max_frame() {
    let mut harness = Harness::new(Config {
        max_frame: 5000,
        ..Config::default()
    });
    assert_eq!(harness.session.phase(), &Phase::AwaitHello);
    match harness.feed(hello(1 << 20)) {
        Step::Handshaken { max_frame } => assert_eq!(max_frame, 5000),
        other => panic!("{other:?}"),
    }
    assert!(matches!(harness.session.phase(), Phase::Open(_)));
    assert_eq!(harness.session.settled(), None);
}

#[test]
fn a_request_before_hello_is_refused_with_a_closing_protocol_error() {
    let mut harness = Harness::new(Config::default());
    let (body, reason) = closing(harness.feed(Frame::request(1, "hi")));
    assert_eq!(body.code, ErrorCode::Protocol);
    assert!(body.message.contains("expected HELLO"), "{}", body.message);
    assert_eq!(reason, CloseReason::Protocol);
    assert_eq!(harness.session.phase(), &Phase::Closed);
}

#[test]
fn nothing_but_hello_is_accepted_before_it() {
    for kind in Kind::ALL.into_iter().filter(|kind| *kind != Kind::Hello) {
        let mut harness = Harness::new(Config::default());
        let (body, reason) = closing(harness.feed(Frame::new(kind, 3, "x")));
        assert_eq!(body.code, ErrorCode::Protocol, "{kind}");
        assert!(
            body.message.contains(kind.name()),
            "{kind}: {}",
            body.message
        );
        assert_eq!(reason, CloseReason::Protocol, "{kind}");
    }
}

#[test]
fn a_hello_with_a_wrong_magic_is_refused_with_bad_magic() {
    let mut harness = Harness::new(Config::default());
    let payload = Bytes::from_static(b"XOUR\x00\x01\x00\x10\x00\x00");
    let (body, reason) = closing(harness.feed(Frame::new(Kind::Hello, 0, payload)));
    assert_eq!(body.code, ErrorCode::BadMagic);
    assert_eq!(reason, CloseReason::Protocol);
}

#[test]
fn a_hello_with_another_version_is_refused_naming_both_versions() {
    let mut harness = Harness::new(Config::default());
    let mut other = Hello::new(1 << 20);
    other.version = 7;
    let (body, reason) = closing(harness.feed(Frame::hello(&other)));
    assert_eq!(body.code, ErrorCode::UnsupportedVersion);
    assert!(body.message.contains("version 7"), "{}", body.message);
    assert!(
        body.message.contains(&format!("speaks {PROTOCOL_VERSION}")),
        "{}",
        body.message
    );
    assert_eq!(reason, CloseReason::Protocol);
}

#[test]
fn a_hello_cut_short_is_refused_with_malformed_body() {
    let mut harness = Harness::new(Config::default());
    let payload = Bytes::from_static(b"COUR\x00\x01");
    let (body, _) = closing(harness.feed(Frame::new(Kind::Hello, 0, payload)));
    assert_eq!(body.code, ErrorCode::MalformedBody);
}

#[test]
fn a_hello_without_the_required_token_is_refused_with_auth_failed() {
    let mut harness = Harness::new(config_with_token("sesame"));
    let (body, reason) = closing(harness.feed(hello(1 << 20)));
    assert_eq!(body.code, ErrorCode::AuthFailed);
    assert_eq!(reason, CloseReason::AuthFailed);
}

#[test]
fn a_wrong_token_is_refused_with_the_same_words_as_a_missing_one() {
    let mut missing = Harness::new(config_with_token("sesame"));
    let (missing, _) = closing(missing.feed(hello(1 << 20)));
    let mut wrong = Harness::new(config_with_token("sesame"));
    let (wrong, reason) = closing(wrong.feed(hello_with_token(b"sesamf")));
    assert_eq!(wrong.code, ErrorCode::AuthFailed);
    assert_eq!(reason, CloseReason::AuthFailed);
    assert_eq!(wrong.message, missing.message);
}

#[test]
fn the_right_token_opens_the_session() {
    let mut harness = Harness::new(config_with_token("sesame"));
    let step = harness.feed(hello_with_token(b"sesame"));
    assert!(matches!(step, Step::Handshaken { .. }), "{step:?}");
}

#[test]
fn a_hello_announcing_max_frame_below_16_is_refused_with_an_error_cut_to_it() {
    let mut harness = Harness::new(Config::default());
    match harness.feed(hello(15)) {
        Step::Close {
            last: Some(last),
            close,
        } => {
            assert_eq!(error_body(&last).code, ErrorCode::MalformedBody);
            assert!(last.payload.len() <= 15, "{} bytes", last.payload.len());
            assert!(close.detail.contains("max_frame 15"), "{}", close.detail);
            assert_eq!(close.reason, CloseReason::Protocol);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_hello_announcing_exactly_16_is_accepted() {
    let mut harness = Harness::new(Config::default());
    assert!(matches!(
        harness.feed(hello(MIN_MAX_FRAME as u32)),
        Step::Handshaken { .. }
    ));
}

#[test]
fn a_request_is_dispatched_with_its_id_payload_and_the_peers_identity() {
    let mut harness = Harness::open(1 << 20);
    let request = dispatched(harness.feed(Frame::request(7, "hi")));
    assert_eq!(request.id, 7);
    assert_eq!(request.payload, "hi");
    assert!(!request.oneway);
    assert_eq!(request.peer_identity.as_deref(), Some("CN=client"));
    assert_eq!(harness.stats.snapshot().requests, 1);
}

#[test]
fn a_ready_answer_is_sent_at_once_and_its_id_is_free_again() {
    let mut harness = Harness::open(1 << 20);
    let echo = |request: Request| Ready::Now(Ok(request.payload));
    let reply = sent(harness.feed_with(Frame::request(5, "now"), echo));
    assert_eq!(reply, Frame::reply(5, "now"));
    // Answered, so not in flight: the same id is a new request, not a duplicate.
    dispatched(harness.feed(Frame::request(5, "again")));
    assert_eq!(harness.stats.snapshot().replies, 1);
}

#[test]
fn a_duplicate_request_id_in_flight_gets_error_10_and_the_session_stays_open() {
    let mut harness = Harness::open(1 << 20);
    dispatched(harness.feed(Frame::request(5, "first")));
    let error = sent(harness.feed(Frame::request(5, "second")));
    assert_eq!(error.id, 5);
    assert_eq!(error_body(&error).code, ErrorCode::DuplicateId);
    assert!(matches!(harness.session.phase(), Phase::Open(_)));
    dispatched(harness.feed(Frame::request(6, "other")));
    let snapshot = harness.stats.snapshot();
    assert_eq!((snapshot.protocol_errors, snapshot.errors), (1, 1));
}

#[test]
fn an_answered_id_may_be_used_again() {
    let mut harness = Harness::open(1 << 20);
    dispatched(harness.feed(Frame::request(5, "first")));
    assert_eq!(
        sent(harness.finish(5, Ok("done".into()))),
        Frame::reply(5, "done")
    );
    dispatched(harness.feed(Frame::request(5, "second")));
}

#[test]
fn a_request_with_id_0_is_refused_with_a_closing_error() {
    let mut harness = Harness::open(1 << 20);
    let (body, reason) = closing(harness.feed(Frame::request(0, "x")));
    assert_eq!(body.code, ErrorCode::Protocol);
    assert!(
        body.message.contains("REQUEST with id 0"),
        "{}",
        body.message
    );
    assert_eq!(reason, CloseReason::Protocol);
}

#[test]
fn stats_with_id_0_is_refused_with_a_closing_error() {
    let mut harness = Harness::open(1 << 20);
    let (body, _) = closing(harness.feed(Frame::new(Kind::Stats, 0, "")));
    assert!(body.message.contains("STATS with id 0"), "{}", body.message);
}

#[test]
fn hello_or_reply_after_the_handshake_gets_a_closing_error_of_id_0() {
    for kind in [Kind::Hello, Kind::Reply] {
        let mut harness = Harness::open(1 << 20);
        let (body, reason) = closing(harness.feed(Frame::new(kind, 9, "")));
        assert_eq!(body.code, ErrorCode::Protocol, "{kind}");
        assert!(
            body.message.contains(&format!("{kind} (id 9)")),
            "{}",
            body.message
        );
        assert_eq!(reason, CloseReason::Protocol);
        // Closed: whatever comes next is not read.
        assert!(matches!(harness.feed(Frame::request(1, "")), Step::Next));
    }
}

#[test]
fn a_ping_gets_a_pong_with_its_id_and_payload() {
    let mut harness = Harness::open(1 << 20);
    let pong = sent(harness.feed(Frame::new(Kind::Ping, 3, "beat")));
    assert_eq!(pong, Frame::new(Kind::Pong, 3, "beat"));
    assert_eq!(harness.stats.snapshot().pings, 1);
}

#[test]
fn a_pong_too_large_for_the_client_becomes_error_4_for_the_pings_id() {
    let mut harness = Harness::open(16);
    let answer = sent(harness.feed(Frame::new(Kind::Ping, 3, vec![0u8; 17])));
    assert_eq!(answer.id, 3);
    assert_eq!(error_body(&answer).code, ErrorCode::FrameTooLarge);
    assert!(answer.payload.len() <= 16);
}

#[test]
fn stats_is_answered_with_counters_that_include_this_turns() {
    let mut harness = Harness::open(1 << 20);
    let reply = harness.batch(|session, ctx| {
        dispatched(session.on_input(Frame::request(1, "x"), ctx, call_me));
        sent(session.on_input(Frame::new(Kind::Stats, 2, ""), ctx, call_me))
    });
    assert_eq!((reply.kind, reply.id), (Kind::Reply, 2));
    let snapshot: Snapshot = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(snapshot.requests, 1);
}

#[test]
fn a_stats_reply_too_large_for_the_client_becomes_error_4() {
    let mut harness = Harness::open(16);
    let answer = sent(harness.feed(Frame::new(Kind::Stats, 2, "")));
    assert_eq!(answer.id, 2);
    assert_eq!(error_body(&answer).code, ErrorCode::FrameTooLarge);
}

#[test]
fn drain_sends_goaway_naming_the_last_request_received() {
    let mut harness = Harness::open(1 << 20);
    dispatched(harness.feed(Frame::request(3, "")));
    dispatched(harness.feed(Frame::request(9, "")));
    // ONEWAY ids are not requests: GOAWAY does not name them.
    dispatched(harness.feed(Frame::oneway(100, "")));
    let goaway = harness.session.drain().unwrap();
    assert_eq!(goaway.kind, Kind::GoAway);
    assert_eq!(parse_goaway(&goaway.payload).unwrap(), 9);
    assert_eq!(harness.session.settled(), Some(CloseReason::Drained));
}

#[test]
fn a_drain_before_any_request_names_id_0() {
    let mut harness = Harness::new(Config::default());
    let goaway = harness.session.drain().unwrap();
    assert_eq!(parse_goaway(&goaway.payload).unwrap(), 0);
}

#[test]
fn after_draining_starts_nothing_more_is_dispatched_and_goaway_goes_once() {
    let mut harness = Harness::open(1 << 20);
    dispatched(harness.feed(Frame::request(4, "")));
    assert!(harness.session.drain().is_some());
    assert!(matches!(harness.feed(Frame::request(5, "")), Step::Next));
    assert!(matches!(
        harness.feed(Frame::new(Kind::Ping, 1, "")),
        Step::Next
    ));
    assert!(harness.session.drain().is_none());
    // What was received before is still answered.
    assert_eq!(
        sent(harness.finish(4, Ok("a".into()))),
        Frame::reply(4, "a")
    );
}

#[test]
fn a_client_goaway_means_the_peer_is_done_and_nothing_more_is_read() {
    let mut harness = Harness::open(1 << 20);
    assert!(matches!(
        harness.feed(Frame::new(Kind::GoAway, 0, "")),
        Step::Next
    ));
    assert_eq!(harness.session.settled(), Some(CloseReason::PeerClosed));
    assert!(matches!(harness.feed(Frame::request(1, "")), Step::Next));
}

#[test]
fn eof_means_the_peer_is_done_and_a_drain_after_it_still_says_goaway() {
    let mut harness = Harness::open(1 << 20);
    dispatched(harness.feed(Frame::request(2, "")));
    harness.session.on_eof();
    assert_eq!(harness.session.settled(), Some(CloseReason::PeerClosed));
    let goaway = harness.session.drain().unwrap();
    assert_eq!(parse_goaway(&goaway.payload).unwrap(), 2);
    assert_eq!(harness.session.settled(), Some(CloseReason::Drained));
}

#[test]
fn a_client_error_closes_with_peer_error_and_sends_nothing() {
    let mut harness = Harness::open(1 << 20);
    let error = Frame::error(0, ErrorCode::Protocol, "bye");
    match harness.feed(error) {
        Step::Close { last: None, close } => assert_eq!(close.reason, CloseReason::PeerError),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_reply_larger_than_the_clients_max_frame_becomes_error_4_for_its_id() {
    let mut harness = Harness::open(16);
    dispatched(harness.feed(Frame::request(8, "")));
    let answer = sent(harness.finish(8, Ok(vec![0u8; 17].into())));
    assert_eq!(answer.id, 8);
    assert_eq!(error_body(&answer).code, ErrorCode::FrameTooLarge);
    assert!(answer.payload.len() <= 16);
    assert_eq!(harness.stats.snapshot().errors, 1);
    // Exactly the limit is a reply.
    dispatched(harness.feed(Frame::request(9, "")));
    let fits = sent(harness.finish(9, Ok(vec![0u8; 16].into())));
    assert_eq!(fits.kind, Kind::Reply);
}

#[test]
fn a_handler_error_becomes_an_error_for_its_id_cut_to_fit_at_a_character_boundary() {
    let mut harness = Harness::open(16);
    dispatched(harness.feed(Frame::request(8, "")));
    let message = "é".repeat(40);
    let answer = sent(harness.finish(8, Err(HandlerError::new(message.clone()))));
    assert_eq!(answer.id, 8);
    assert!(answer.payload.len() <= 16, "{} bytes", answer.payload.len());
    let body = error_body(&answer);
    assert_eq!(body.code, ErrorCode::HandlerFailed);
    assert!(!body.message.is_empty() && message.starts_with(&body.message));
    assert!(matches!(harness.session.phase(), Phase::Open(_)));
}

#[test]
fn a_closing_error_is_cut_to_the_clients_max_frame() {
    let harness = Harness::open(16);
    let long = "x".repeat(100);
    let last = harness
        .session
        .goodbye(ErrorCode::IdleTimeout, &long)
        .unwrap();
    assert_eq!(last.id, 0);
    assert_eq!(last.payload.len(), 16);
    assert_eq!(error_body(&last).code, ErrorCode::IdleTimeout);
}

#[test]
fn a_oneway_is_dispatched_but_never_answered_even_when_it_fails() {
    let mut harness = Harness::open(1 << 20);
    let request = dispatched(harness.feed(Frame::oneway(0, "log")));
    assert!(request.oneway);
    let finished = Finished {
        id: 0,
        oneway: true,
        result: Err(HandlerError::new("nobody hears this")),
        took: std::time::Duration::ZERO,
    };
    let step = harness.batch(|session, ctx| session.on_finished(finished, ctx));
    assert!(matches!(step, Step::Next), "{step:?}");
    assert_eq!(harness.stats.snapshot().oneway, 1);
}

#[test]
fn an_idle_session_stays_small() {
    // Part of every idle connection's memory (bench/idle_memory): the in-flight id set,
    // the TLS identity, the peer (a socket address), two u32s and the phase's tag.
    assert!(
        std::mem::size_of::<Session>() <= 112,
        "{} bytes",
        std::mem::size_of::<Session>()
    );
}

#[test]
fn the_servers_hello_says_it_reads_request_ext() {
    let mut harness = Harness::new(Config::default());
    let greeting = harness.session.greeting(&harness.config).unwrap();
    let hello = Hello::parse(&greeting.payload).unwrap();
    assert_eq!(hello.field(HELLO_REQUEST_OPTIONS), Some(&Bytes::new()));
}

#[test]
fn a_request_ext_is_dispatched_with_its_flag_and_timeout() {
    let mut harness = Harness::open(1 << 20);
    let options = RequestOptions {
        idempotent: true,
        timeout_ms: 1500,
    };
    let frame = Frame::new(Kind::RequestExt, 4, options.encode(b"hi"));
    let request = dispatched(harness.feed(frame));
    assert_eq!((request.id, &request.payload[..]), (4, &b"hi"[..]));
    assert!(request.idempotent);
    assert_eq!(
        request.timeout,
        Some(std::time::Duration::from_millis(1500))
    );
    // Without options (a REQUEST, or a REQUEST_EXT with no flag and timeout 0): neither.
    let plain = dispatched(harness.feed(Frame::request(5, "x")));
    assert!(!plain.idempotent && plain.timeout.is_none());
    let frame = Frame::new(Kind::RequestExt, 6, RequestOptions::default().encode(b"x"));
    let bare = dispatched(harness.feed(frame));
    assert!(!bare.idempotent && bare.timeout.is_none());
}

#[test]
fn a_request_ext_shorter_than_its_options_closes_with_malformed_body() {
    let mut harness = Harness::open(1 << 20);
    let (body, reason) = closing(harness.feed(Frame::new(Kind::RequestExt, 3, "abc")));
    assert_eq!(body.code, ErrorCode::MalformedBody);
    assert!(
        body.message.contains("REQUEST_EXT") && body.message.contains("id 3"),
        "{}",
        body.message
    );
    assert_eq!(reason, CloseReason::Protocol);
}

/// `frames` encoded one after another, as a read brings them.
fn wire(frames: impl IntoIterator<Item = Frame>) -> BytesMut {
    let mut codec = Codec::new(1 << 20);
    let mut bytes = BytesMut::new();
    for frame in frames {
        tokio_util::codec::Encoder::encode(&mut codec, frame, &mut bytes).unwrap();
    }
    bytes
}

impl Harness {
    /// Lends `src` to the session with `room` bytes of output allowed: what it took,
    /// what it wrote and how many answers it counted as inline.
    fn lend(&mut self, src: &[u8], room: usize) -> (usize, BytesMut, u64) {
        let codec = Codec::new(1 << 20);
        let mut out = BytesMut::new();
        let mut inline = 0;
        let taken = self.batch(|session, ctx| {
            let mut lent = Lent {
                tally: &mut ctx.turn.tally,
                inline: &mut inline,
                out: &mut out,
                room,
            };
            session.lend(src, &codec, &crate::handler::Builtin::Echo, &mut lent)
        });
        (taken, out, inline)
    }
}

#[test]
fn lent_requests_are_answered_into_the_output_until_it_holds_more_than_its_room() {
    let mut harness = Harness::open(1 << 20);
    let src = wire((1..=10).map(|id| Frame::request(id, vec![id as u8; 100])));
    // 109 bytes a frame: the third answer starts at 218 <= 250; the fourth would start
    // at 327.
    let (taken, out, inline) = harness.lend(&src, 250);
    assert_eq!((taken, out.len(), inline), (3 * 109, 3 * 109, 3));
    // The answers are the REPLYs an owned request gets.
    assert_eq!(
        &out[..],
        &wire((1..=3).map(|id| Frame::reply(id, vec![id as u8; 100])))[..]
    );
    let stats = harness.stats.snapshot();
    assert_eq!((stats.requests, stats.replies), (3, 3));
    assert_eq!((stats.bytes_in, stats.bytes_out), (3 * 109, 3 * 109));
    // With room for all: all ten.
    let (taken, _, inline) = harness.lend(&src[taken..], 10_000);
    assert_eq!((taken, inline), (7 * 109, 7));
}

#[test]
fn lending_stops_at_what_the_usual_way_must_see() {
    let request = || Frame::request(7, "x");
    let before_hello = wire([request()]);
    assert_eq!(
        Harness::new(Config::default())
            .lend(&before_hello, 10_000)
            .0,
        0
    );
    let mut harness = Harness::open(1 << 20);
    let options = RequestOptions::default().encode(b"x");
    let stoppers = [
        // Refused: id 0 is the connection's.
        Frame::request(0, "x"),
        // Options to read.
        Frame::new(Kind::RequestExt, 8, options),
        Frame::new(Kind::Ping, 9, "x"),
        // Written apart, not copied.
        Frame::request(10, vec![0u8; WRITE_APART]),
    ];
    for stopper in stoppers {
        let kind = stopper.kind;
        let src = wire([request(), stopper, request()]);
        assert_eq!(harness.lend(&src, 10_000).0, 10, "{kind}");
    }
    // A frame not whole yet is left for the decoder to wait for.
    let src = wire([request(), request()]);
    assert_eq!(harness.lend(&src[..15], 10_000).0, 10);
    // An id in flight gets its ERROR 10 the usual way.
    let _ = dispatched(harness.feed(Frame::request(11, "slow")));
    let src = wire([request(), Frame::request(11, "again")]);
    assert_eq!(harness.lend(&src, 10_000).0, 10);
}
