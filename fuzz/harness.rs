//! What the fuzz targets run, shared by `fuzz/fuzz_targets/*.rs` and by the test that
//! replays the saved corpus in CI (`tests/fuzz_corpus.rs`), which include this file.
//! Needs Tokio's `test-util` feature (paused time).
//!
//! Each function panics when it finds a bug: a crash in the code under test, a frame the
//! server wrote that does not decode, a request left unanswered on a clean close, or a
//! connection that never ends.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio_util::codec::{Decoder, Encoder, FramedRead};
use tokio_util::sync::CancellationToken;

use courier::config::{AuthToken, Config, Framing};
use courier::handler::{Builtin, HandlerError, Request};
use courier::server::Server;
use courier::stats::CloseReason;
use courier::wire::{
    Codec, ErrorBody, Frame, Hello, Kind, PlainCodec, HELLO_AUTH_TOKEN, MAX_PAYLOAD_LIMIT,
};

/// Decodes `data` as a stream of courier frames (and as plain framing), checking that
/// every frame decoded re-encodes to exactly the bytes it came from, and that HELLO and
/// ERROR bodies parse or fail without panicking.
pub(crate) fn decode(data: &[u8]) {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    // The first byte picks the limit, so small limits (and their errors) are reachable.
    let max = usize::from(first) * 16;
    let mut codec = Codec::new(max);
    let mut buf = BytesMut::from(data);
    let mut consumed = 0;
    loop {
        let before = buf.len();
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                let used = before - buf.len();
                assert!(frame.payload.len() <= max, "payload above the limit");
                let mut again = BytesMut::new();
                Codec::new(0)
                    .encode(frame.clone(), &mut again)
                    .expect("a decoded frame encodes");
                assert_eq!(
                    &again[..],
                    &data[consumed..consumed + used],
                    "re-encoding differs"
                );
                consumed += used;
                match frame.kind {
                    Kind::Hello => {
                        let _ = Hello::parse(&frame.payload);
                    }
                    Kind::Error => {
                        let _ = ErrorBody::parse(&frame.payload);
                    }
                    _ => {}
                }
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "no frame, but bytes were taken");
                let _ = codec.decode_eof(&mut buf);
                break;
            }
            Err(_) => break,
        }
    }

    let mut plain = PlainCodec::new(max);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(message)) = plain.decode(&mut buf) {
        assert!(message.len() <= max);
    }
}

/// The token the server requires when flag bit 6 is set.
const TOKEN: &[u8] = b"fuzz-token";

/// The settings the connection target runs with: limits small enough that a fuzzer
/// reaches every one of them.
fn fuzz_config(framing: Framing) -> Config {
    Config {
        framing,
        max_frame: 1024,
        max_in_flight: 4,
        max_pending_output: 4096,
        handshake_timeout: Duration::from_secs(5),
        frame_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
        ..Config::default()
    }
}

/// The handler of the connection target when it asks for one that waits: payloads
/// starting with 0xff fail, 0xfe sleep a second first, others echo.
async fn slow_handler(request: Request) -> Result<Bytes, HandlerError> {
    match request.payload.first() {
        Some(0xff) => Err(HandlerError::new("asked to fail")),
        Some(0xfe) => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(request.payload)
        }
        _ => Ok(request.payload),
    }
}

/// Runs one server connection fed by `data`, on a single-thread runtime with paused time.
///
/// `data[0]` holds flags: bit 0 sends a valid HELLO first (carrying the token
/// "fuzz-token"); bit 1 uses plain framing;
/// bit 2 uses a handler that waits (`slow_handler`) instead of the inline echo; bit 3
/// makes the client never read (a slow reader); bit 4 keeps the connection open after the
/// input (no EOF), so only a deadline can end it; bit 5 starts a server shutdown after the
/// input; bit 6 makes the server require the token "fuzz-token". The rest is a list of chunks, each a length byte and that many bytes, written
/// one write each; a length of 0 is a pause of (next byte x 100 ms).
pub(crate) fn connection(data: &[u8]) {
    let Some((&flags, script)) = data.split_first() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let run = drive(flags, script);
        // Every deadline is far below this; reaching it means the connection hangs.
        if tokio::time::timeout(Duration::from_secs(3600), run)
            .await
            .is_err()
        {
            panic!("the connection did not end within an hour of (virtual) time");
        }
    });
}

async fn drive(flags: u8, script: &[u8]) {
    let framing = if flags & 0b10 != 0 {
        Framing::Plain
    } else {
        Framing::Courier
    };
    let mut config = fuzz_config(framing);
    if flags & 0b100_0000 != 0 {
        config.auth_token = Some(AuthToken::new(TOKEN).expect("a valid token"));
    }
    let (server_side, client_side) = tokio::io::duplex(16 * 1024);
    let token = CancellationToken::new();
    let (server, stats) = if flags & 0b100 != 0 {
        let server = Server::new(config, slow_handler);
        let stats = server.stats();
        let token = token.clone();
        let task = async move { server.serve_connection(server_side, token).await };
        (tokio::spawn(task), stats)
    } else {
        let server = Server::new(config, Builtin::Echo);
        let stats = server.stats();
        let token = token.clone();
        let task = async move { server.serve_connection(server_side, token).await };
        (tokio::spawn(task), stats)
    };

    let (read_half, mut write_half) = tokio::io::split(client_side);
    let reader = tokio::spawn(read_all(read_half, framing, flags & 0b1000 != 0));

    let mut chunks = Vec::new();
    if flags & 1 != 0 && framing == Framing::Courier {
        let mut hello = BytesMut::new();
        let mut ours = Hello::new(1 << 20);
        ours.fields
            .push((HELLO_AUTH_TOKEN, Bytes::from_static(TOKEN)));
        let _ = Codec::new(0).encode(Frame::hello(&ours), &mut hello);
        chunks.push(Chunk::Bytes(hello.freeze()));
    }
    chunks.extend(parse_script(script));
    for chunk in chunks {
        let result = match chunk {
            Chunk::Bytes(bytes) => write_half.write_all(&bytes).await,
            Chunk::Pause(pause) => {
                tokio::time::sleep(pause).await;
                Ok(())
            }
        };
        if result.is_err() {
            // The server closed the connection; the rest of the input goes nowhere.
            break;
        }
    }
    if flags & 0b10_0000 != 0 {
        token.cancel();
    }
    if flags & 0b1_0000 == 0 {
        let _ = write_half.shutdown().await;
    }

    let close = server.await.expect("the server task panicked");
    // Once the server is done its side is dropped, so the reader sees the end.
    drop(write_half);
    reader.await.expect("the server wrote something invalid");

    let snapshot = stats.snapshot();
    assert_eq!(snapshot.open, 0, "the connection is still counted as open");
    if matches!(close, CloseReason::PeerClosed | CloseReason::Drained)
        && framing == Framing::Courier
    {
        // A clean close answers every request: with a REPLY or an ERROR, or (for a
        // duplicate id, the one protocol error that does not close) an ERROR.
        assert_eq!(
            snapshot.requests + snapshot.protocol_errors,
            snapshot.replies + snapshot.errors,
            "a clean close left requests unanswered: {snapshot}"
        );
    }
}

enum Chunk {
    Bytes(Bytes),
    Pause(Duration),
}

fn parse_script(mut script: &[u8]) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    while let Some((&len, rest)) = script.split_first() {
        if len == 0 {
            let tenths = rest.first().copied().unwrap_or(1);
            chunks.push(Chunk::Pause(Duration::from_millis(100 * u64::from(tenths))));
            script = rest.get(1..).unwrap_or_default();
            continue;
        }
        let take = usize::from(len).min(rest.len());
        chunks.push(Chunk::Bytes(Bytes::copy_from_slice(&rest[..take])));
        script = &rest[take..];
    }
    chunks
}

/// Reads everything the server writes and checks it: courier output starts with HELLO,
/// every frame decodes, nothing follows an ERROR about the whole connection, replies carry
/// request ids other than 0. A reader that `stalls` reads nothing until the server is done.
async fn read_all(read_half: tokio::io::ReadHalf<DuplexStream>, framing: Framing, stalls: bool) {
    if stalls {
        // Hold the half open without reading: the server must give up on its own. The
        // server's close lingers for a bounded time, so this ends once its side is gone.
        let mut read_half = read_half;
        tokio::time::sleep(Duration::from_secs(600)).await;
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut read_half, &mut sink).await;
        return;
    }
    match framing {
        Framing::Courier => {
            let mut frames = FramedRead::new(read_half, Codec::new(MAX_PAYLOAD_LIMIT));
            let mut first = true;
            let mut ended = false;
            while let Some(frame) = frames.next().await {
                let frame = frame.expect("the server's output decodes");
                assert!(!ended, "a frame after the connection's ERROR: {frame:?}");
                if first {
                    assert_eq!(
                        frame.kind,
                        Kind::Hello,
                        "the server speaks first with HELLO"
                    );
                    first = false;
                    continue;
                }
                match frame.kind {
                    Kind::Reply => assert_ne!(frame.id, 0, "a REPLY to id 0"),
                    Kind::Error if frame.id == 0 => {
                        ErrorBody::parse(&frame.payload).expect("an ERROR body parses");
                        ended = true;
                    }
                    Kind::Error => {
                        ErrorBody::parse(&frame.payload).expect("an ERROR body parses");
                    }
                    Kind::Pong | Kind::GoAway => {}
                    other => panic!("the server sent {other}"),
                }
            }
        }
        _ => {
            let mut messages = FramedRead::new(read_half, PlainCodec::new(MAX_PAYLOAD_LIMIT));
            while let Some(message) = messages.next().await {
                message.expect("the server's plain output decodes");
            }
        }
    }
}

/// The UDP server's datagram path on a script of datagrams: decode, session lookup, the
/// HELLO cookie, the reply cache, request completions and time passing, all through
/// [`courier::server::udp::Endpoint`] (the protocol without a socket).
///
/// The first byte holds flags (bit 0: a server that requires an auth token, bits 1-3:
/// a small reply cache, bit 4: draining); the rest is a script of steps, each an opcode
/// byte and its operands. The harness plays a few honest clients that complete the
/// cookie exchange, beside raw datagrams from anywhere. It checks: every datagram the
/// server sends decodes; an address that no HELLO validated is sent at most 3 times the
/// bytes it sent; no (session, request id) is handed out to run twice. Returns how many
/// requests were handed out to run (the corpus replay checks the seeds reach the handler).
pub(crate) fn datagram(data: &[u8]) -> usize {
    use courier::server::udp::{Endpoint, AMPLIFICATION_LIMIT};
    use courier::stats::Stats;
    use courier::wire::{Datagram, HELLO_COOKIE};
    use std::collections::{HashMap, HashSet, VecDeque};
    use std::net::SocketAddr;
    use tokio::time::Instant;

    let Some((&flags, mut script)) = data.split_first() else {
        return 0;
    };
    let mut config = Config::default();
    if flags & 1 != 0 {
        config.auth_token = Some(AuthToken::new(&b"secret"[..]).expect("a token"));
    }
    let small = usize::from((flags >> 1) & 7);
    if small != 0 {
        config.udp_cache_entries = small * 2;
        config.udp_cache_bytes = config.udp_max_payload.max(small * 100);
    }
    config.max_in_flight = 4;
    let lifetime = config.udp_cache_lifetime;
    let mut endpoint = Endpoint::new(config);
    if flags & 16 != 0 {
        endpoint.drain();
    }
    let stats = Stats::new();
    let peers: Vec<SocketAddr> = (0..4)
        .map(|n| format!("192.0.2.{n}:{}", 4000 + n).parse().unwrap())
        .collect();
    let start = Instant::now();
    let mut now = start;
    let mut cookies: HashMap<(u64, SocketAddr), Bytes> = HashMap::new();
    let mut validated: HashSet<(u64, SocketAddr)> = HashSet::new();
    let mut ran: HashSet<(u64, u32)> = HashSet::new();
    let mut running: VecDeque<(u64, Request)> = VecDeque::new();
    let take = |n: usize, script: &mut &[u8]| -> Vec<u8> {
        let n = n.min(script.len());
        let (head, rest) = script.split_at(n);
        *script = rest;
        head.to_vec()
    };
    while let Some((&op, rest)) = script.split_first() {
        script = rest;
        let args = take(3, &mut script);
        let arg = |i: usize| args.get(i).copied().unwrap_or(0);
        let peer = peers[usize::from(arg(0) & 3)];
        let session = u64::from(arg(0) >> 2 & 3) + 1;
        let (sent, output) = match op % 6 {
            // Raw bytes from a peer.
            0 => {
                let bytes = Bytes::from(take(usize::from(arg(1)), &mut script));
                (bytes.len(), endpoint.datagram(bytes, peer, now, &stats))
            }
            // A HELLO, with the cookie this peer was given if any (and the token).
            1 => {
                let mut hello = Hello::new(u32::from(arg(1)) * 64);
                if arg(2) & 1 != 0 {
                    hello
                        .fields
                        .push((HELLO_AUTH_TOKEN, Bytes::from_static(b"secret")));
                }
                if let Some(cookie) = cookies.get(&(session, peer)) {
                    hello.fields.push((HELLO_COOKIE, cookie.clone()));
                }
                let bytes = Datagram::new(session, 0, Frame::hello(&hello)).encode();
                if cookies.contains_key(&(session, peer)) && (flags & 1 == 0 || arg(2) & 1 != 0) {
                    validated.insert((session, peer));
                }
                (bytes.len(), endpoint.datagram(bytes, peer, now, &stats))
            }
            // A well-formed REQUEST, ONEWAY, PING or STATS of a session.
            2 => {
                let kinds = [
                    Kind::Request,
                    Kind::Request,
                    Kind::Oneway,
                    Kind::Ping,
                    Kind::Stats,
                ];
                let kind = kinds[usize::from(arg(2)) % kinds.len()];
                let payload = take(usize::from(arg(2) >> 3), &mut script);
                let frame = Frame::new(kind, u32::from(arg(1) & 31), payload);
                let bytes = Datagram::new(session, u32::from(arg(1) >> 5), frame).encode();
                (bytes.len(), endpoint.datagram(bytes, peer, now, &stats))
            }
            // The oldest running request finishes (a reply of its payload, or an error).
            3 => {
                let Some((session, request)) = running.pop_front() else {
                    continue;
                };
                let result = if arg(1) & 1 == 0 {
                    Ok(request.payload.clone())
                } else {
                    Err(HandlerError::new("no"))
                };
                let out = endpoint.finished(session, request.id, request.oneway, result, now);
                (usize::MAX / 8, out)
            }
            // Time passes, less than the cache lifetime in all.
            4 => {
                let step = Duration::from_millis(u64::from(arg(1)) * 100);
                if now + step < start + lifetime {
                    now += step;
                }
                endpoint.tick(now);
                continue;
            }
            _ => {
                endpoint.flush(&stats);
                continue;
            }
        };
        for (bytes, to) in &output.send {
            let datagram = Datagram::decode(bytes.clone()).expect("the server's datagram decodes");
            if datagram.frame.kind == Kind::Hello {
                if let Some(cookie) = Hello::parse(&datagram.frame.payload)
                    .expect("the server's HELLO parses")
                    .field(HELLO_COOKIE)
                {
                    cookies.insert((datagram.session, *to), cookie.clone());
                }
            }
            if !validated.contains(&(datagram.session, *to)) {
                assert!(
                    bytes.len() <= AMPLIFICATION_LIMIT * sent,
                    "{} bytes to an unvalidated address that sent {sent}",
                    bytes.len()
                );
            }
        }
        if let Some((session, request)) = output.run {
            assert!(ran.insert((session, request.id)), "request ran twice");
            running.push_back((session, request));
        }
    }
    ran.len()
}
