//! The driver on a scripted stream: what a peer's reads return is set in advance, and
//! everything the server writes is kept.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};
use tokio::io::ReadBuf;
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Framing};
use crate::handler::Builtin;
use crate::server::Server;
use crate::stats::CloseReason;
use crate::wire::{Codec, Frame, Hello, Kind};

use super::*;

/// A byte stream whose reads return `reads` in turn, then EOF; writes are kept. With
/// `cancel`, the token is cancelled during the read that leaves that many reads to come.
struct Script {
    reads: VecDeque<io::Result<Vec<u8>>>,
    written: Arc<Mutex<Vec<u8>>>,
    cancel: Option<(usize, CancellationToken)>,
}

impl AsyncRead for Script {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some((left, token)) = &self.cancel {
            if self.reads.len() == *left + 1 {
                token.cancel();
            }
        }
        match self.reads.pop_front() {
            Some(Ok(bytes)) => {
                // Tests script reads smaller than the 1 KiB the connection reads at once.
                buf.put_slice(&bytes);
                Poll::Ready(Ok(()))
            }
            Some(Err(err)) => Poll::Ready(Err(err)),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Script {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What a TLS stream reports when the peer closed without a close_notify.
fn no_close_notify() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "peer closed connection without sending TLS close_notify",
    )
}

/// Serves `reads` as one connection in `framing`; returns why it closed and what the
/// server wrote.
async fn serve(framing: Framing, reads: Vec<io::Result<Vec<u8>>>) -> (CloseReason, Vec<u8>) {
    let config = Config {
        framing,
        ..Config::default()
    };
    let written = Arc::new(Mutex::new(Vec::new()));
    let stream = Script {
        reads: reads.into(),
        written: written.clone(),
        cancel: None,
    };
    let server = Server::new(config, Builtin::Echo);
    let reason = server
        .serve_connection(stream, CancellationToken::new())
        .await;
    let written = written.lock().unwrap().clone();
    (reason, written)
}

fn plain(payload: &[u8]) -> Vec<u8> {
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

fn courier(frames: &[Frame]) -> Vec<u8> {
    let mut bytes = BytesMut::new();
    for frame in frames {
        Codec::new(0).encode(frame.clone(), &mut bytes).unwrap();
    }
    bytes.to_vec()
}

#[tokio::test]
async fn a_plain_peer_closing_without_close_notify_between_messages_ends_in_order() {
    let (reason, written) = serve(
        Framing::Plain,
        vec![Ok(plain(b"abc")), Err(no_close_notify())],
    )
    .await;
    assert_eq!(reason, CloseReason::PeerClosed);
    assert_eq!(
        written,
        plain(b"abc"),
        "the reply was sent before the close"
    );
}

#[tokio::test]
async fn a_courier_peer_closing_without_close_notify_between_frames_ends_in_order() {
    let frames = [Frame::hello(&Hello::new(1 << 20)), Frame::request(1, "hi")];
    let (reason, written) = serve(
        Framing::Courier,
        vec![Ok(courier(&frames)), Err(no_close_notify())],
    )
    .await;
    assert_eq!(reason, CloseReason::PeerClosed);
    let mut written = BytesMut::from(&written[..]);
    let mut codec = Codec::new(1 << 20);
    assert_eq!(
        codec.decode(&mut written).unwrap().unwrap().kind,
        Kind::Hello
    );
    assert_eq!(
        codec.decode(&mut written).unwrap(),
        Some(Frame::reply(1, "hi"))
    );
}

#[tokio::test]
async fn a_close_without_close_notify_in_the_middle_of_a_message_is_an_io_error() {
    let mut half = plain(b"abcdef");
    half.truncate(6);
    let (reason, _) = serve(Framing::Plain, vec![Ok(half), Err(no_close_notify())]).await;
    assert_eq!(reason, CloseReason::IoError);
}

#[tokio::test]
async fn pipelined_plain_messages_in_one_read_are_all_answered_in_order() {
    let mut batch = BytesMut::new();
    for payload in [&b"one"[..], b"two", b"three"] {
        batch.put_slice(&plain(payload));
    }
    let (reason, written) = serve(Framing::Plain, vec![Ok(batch.to_vec())]).await;
    assert_eq!(reason, CloseReason::PeerClosed);
    assert_eq!(
        written,
        [plain(b"one"), plain(b"two"), plain(b"three")].concat()
    );
}

#[tokio::test]
async fn a_connection_too_busy_to_sleep_still_notices_a_shutdown() {
    // Every read returns a message at once and every write is taken at once, so the
    // connection never waits, and never polls its wait on the shutdown token: only the
    // check at the top of its loop can see the shutdown, which begins during read 100.
    const MESSAGES: usize = 10_000;
    const CANCELLED_AT: usize = 100;
    let shutdown = CancellationToken::new();
    let written = Arc::new(Mutex::new(Vec::new()));
    let stream = Script {
        reads: (0..MESSAGES).map(|_| Ok(plain(b"x"))).collect(),
        written: written.clone(),
        cancel: Some((MESSAGES - CANCELLED_AT, shutdown.clone())),
    };
    let config = Config {
        framing: Framing::Plain,
        ..Config::default()
    };
    let server = Server::new(config, Builtin::Echo);
    let reason = server.serve_connection(stream, shutdown).await;
    assert_eq!(reason, CloseReason::Drained);
    // One message per read, each answered: the ones read before the shutdown, and those
    // read before the next check, at most 16 turns later. The period is written out, not
    // taken from STOP_CHECK_EVERY, so that a longer period fails here.
    let answered = written.lock().unwrap().len() / plain(b"x").len();
    let limit = CANCELLED_AT + 16;
    assert!(
        (CANCELLED_AT..=limit).contains(&answered),
        "{answered} messages answered; the shutdown began during read {CANCELLED_AT}"
    );
}
