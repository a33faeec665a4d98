//! The connection: its read bursts, its deadline timer, and the buffers it hands to the
//! thread when drained.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures::task::noop_waker_ref;
use tokio_util::codec::Encoder;

use super::outbox::tests::{decode_all, Stingy};
use super::spare::Slot;
use crate::wire::{Codec, Frame, Kind, MAX_PAYLOAD_LIMIT};

/// A socket that delivers `batches` one after another, each as far as the reader's room
/// allows, with nothing to read (Pending) between batches; records the room each read
/// offered that got bytes.
struct Batches {
    batches: VecDeque<Vec<u8>>,
    offset: usize,
    /// Room offered by each read that returned bytes, per batch.
    rooms: Vec<Vec<usize>>,
    between: bool,
}

impl tokio::io::AsyncRead for Batches {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.between {
            // The batch was read whole: the next one comes later.
            this.between = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let Some(batch) = this.batches.front() else {
            return Poll::Ready(Ok(()));
        };
        if this.offset == 0 {
            this.rooms.push(Vec::new());
        }
        let n = (batch.len() - this.offset).min(buf.remaining());
        buf.put_slice(&batch[this.offset..this.offset + n]);
        this.rooms
            .last_mut()
            .expect("pushed above")
            .push(buf.capacity());
        this.offset += n;
        if this.offset == batch.len() {
            this.batches.pop_front();
            this.offset = 0;
            this.between = true;
        }
        Poll::Ready(Ok(()))
    }
}

/// A batch of `count` REQUEST frames with `size`-byte payloads, as a pipelining client
/// sends them.
fn batch(count: usize, size: usize) -> Vec<u8> {
    let mut bytes = BytesMut::new();
    for id in 1..=count as u32 {
        Codec::new(MAX_PAYLOAD_LIMIT)
            .encode(Frame::new(Kind::Request, id, vec![7u8; size]), &mut bytes)
            .expect("encode");
    }
    bytes.to_vec()
}

/// Feeds `batches` to a connection through [`Batches`], taking every frame as the driver
/// does; returns the room offered by each read that got bytes, per batch.
fn rooms_for(batches: VecDeque<Vec<u8>>) -> Vec<Vec<usize>> {
    let count: usize = batches.iter().map(|batch| decode_all(batch).len()).sum();
    let reader = Batches {
        batches,
        offset: 0,
        rooms: Vec::new(),
        between: false,
    };
    let config = crate::config::Config::default();
    let mut conn = super::Conn::new(
        tokio::io::join(reader, Stingy::new(1 << 30, true)),
        Codec::new(MAX_PAYLOAD_LIMIT),
        Codec::new(MAX_PAYLOAD_LIMIT),
        &config,
        false,
    );
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut frames = 0;
    for _ in 0..10_000 {
        match conn.poll_io(&mut cx, &config, true, true, false) {
            Poll::Ready(super::Io::Arrived) => {
                // The driver takes every whole frame already buffered, then notes it.
                while conn.reader.decode().expect("decode").is_some() {
                    frames += 1;
                }
                conn.received();
            }
            Poll::Ready(super::Io::Read(None)) => break,
            Poll::Ready(_) => panic!("only reads are expected"),
            Poll::Pending => {}
        }
    }
    assert_eq!(frames, count, "every frame read");
    conn.out.stream.reader().rooms.clone()
}

#[tokio::test]
async fn pipelined_batches_take_few_reads_and_small_messages_get_small_buffers_again() {
    // Ten batches of 64 pipelined 64-byte requests (4.7 KB each), then ten single ones.
    let rooms = rooms_for(
        (0..10)
            .map(|_| batch(64, 64))
            .chain((0..10).map(|_| batch(1, 64)))
            .collect(),
    );
    let reads: Vec<usize> = rooms.iter().map(Vec::len).collect();
    // The first batch grows from 1 KiB; from the second on, each takes one read.
    assert!(
        reads[1..10].iter().all(|&n| n == 1),
        "reads per pipelined batch: {reads:?}"
    );
    // Back to small messages: within a few of them the room offered is 1 KiB again.
    let last = rooms.last().expect("read")[0];
    assert!(
        last <= 2 * 1024,
        "room for a lone small request: {last} bytes ({rooms:?})"
    );
}

#[tokio::test]
async fn batches_a_little_over_one_chunk_take_one_read_each() {
    // Batches of 16 pipelined 64-byte requests (1,168 bytes), with a smaller batch of 4
    // now and then, as a client sends new requests as replies come in.
    let rooms = rooms_for(
        (0..30)
            .map(|n| {
                if n % 5 == 4 {
                    batch(4, 64)
                } else {
                    batch(16, 64)
                }
            })
            .collect(),
    );
    let reads: Vec<usize> = rooms.iter().map(Vec::len).collect();
    assert!(
        reads[1..].iter().all(|&n| n == 1),
        "reads per batch: {reads:?}"
    );
}

/// A peer that sends nothing.
struct Silent;

impl tokio::io::AsyncRead for Silent {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

/// A connection to a peer that sends nothing, with or without a handshake deadline.
fn silent(
    config: &crate::config::Config,
    handshake: bool,
) -> super::Conn<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin, Codec, Codec> {
    super::Conn::new(
        tokio::io::join(Silent, tokio::io::sink()),
        Codec::new(MAX_PAYLOAD_LIMIT),
        Codec::new(MAX_PAYLOAD_LIMIT),
        config,
        handshake,
    )
}

#[tokio::test(start_paused = true)]
async fn the_timer_trails_the_idle_deadline_but_follows_every_other_change() {
    use std::time::Duration;
    use tokio::time::{advance, Instant};

    let config = crate::config::Config::default();
    let start = Instant::now();
    let mut conn = silent(&config, true);
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut poll =
        |conn: &mut super::Conn<_, _, _>| conn.poll_io(&mut cx, &config, true, true, false);
    assert!(poll(&mut conn).is_pending());
    assert_eq!(conn.sleep.deadline(), start + config.handshake_timeout);

    // The handshake ends: the timer moves to the idle deadline at once, so that an idle
    // connection is not woken when the handshake deadline would have passed.
    advance(Duration::from_secs(1)).await;
    conn.handshake_done();
    conn.received();
    assert!(poll(&mut conn).is_pending());
    let first_idle = start + Duration::from_secs(1) + config.idle_timeout;
    assert_eq!(conn.sleep.deadline(), first_idle);

    // A request a second later moves the idle deadline, not the timer.
    advance(Duration::from_secs(1)).await;
    conn.received();
    assert!(poll(&mut conn).is_pending());
    assert_eq!(conn.sleep.deadline(), first_idle);

    // When the timer fires, the deadline has not passed: no deadline, the timer is set
    // again for the real one, and that one ends the connection.
    advance(first_idle - Instant::now()).await;
    assert!(poll(&mut conn).is_pending());
    assert_eq!(conn.sleep.deadline(), first_idle + Duration::from_secs(1));
    advance(Duration::from_secs(1)).await;
    assert!(matches!(
        poll(&mut conn),
        Poll::Ready(super::Io::Deadline(super::Deadline::Idle))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_flush_in_a_later_poll_moves_the_last_activity_one_in_the_same_poll_does_not() {
    use std::time::Duration;
    use tokio::time::{advance, Instant};

    let config = crate::config::Config::default();
    let mut conn = silent(&config, false);
    let mut cx = Context::from_waker(noop_waker_ref());
    let received_at = Instant::now();
    conn.received();
    // Still the same poll of the task: the read's moment stands for the write's.
    advance(Duration::from_millis(5)).await;
    conn.flushed();
    assert_eq!(conn.last_activity, received_at);

    // The loop goes to sleep; a write that drains after it wakes reads the clock.
    assert!(conn
        .poll_io(&mut cx, &config, true, true, false)
        .is_pending());
    advance(Duration::from_secs(1)).await;
    conn.flushed();
    assert_eq!(conn.last_activity, Instant::now());
    assert!(conn.last_activity > received_at + Duration::from_secs(1));
}

/// A connection reading `batches` through [`Batches`], with nowhere for answers to go.
fn reading(
    batches: Vec<Vec<u8>>,
) -> super::Conn<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin, Codec, Codec> {
    let config = crate::config::Config::default();
    let reader = Batches {
        batches: batches.into(),
        offset: 0,
        rooms: Vec::new(),
        between: false,
    };
    super::Conn::new(
        tokio::io::join(reader, tokio::io::sink()),
        Codec::new(MAX_PAYLOAD_LIMIT),
        Codec::new(MAX_PAYLOAD_LIMIT),
        &config,
        false,
    )
}

#[tokio::test]
async fn a_drained_read_buffer_serves_the_next_read_on_the_thread() {
    let config = crate::config::Config::default();
    let mut cx = Context::from_waker(noop_waker_ref());
    assert!(
        super::spare::take(Slot::Read).is_none(),
        "a new thread keeps no buffer"
    );

    // A connection reads one request, the driver takes it, and nothing more has come:
    // the connection holds no buffer, and the thread keeps the one it read into.
    let mut first = reading(vec![batch(1, 64)]);
    assert!(matches!(
        first.poll_io(&mut cx, &config, true, true, false),
        Poll::Ready(super::Io::Arrived)
    ));
    assert!(first.reader.decode().expect("decode").is_some());
    first.received();
    assert!(first
        .poll_io(&mut cx, &config, true, true, false)
        .is_pending());
    assert_eq!(
        first.reader.read_buffer().capacity(),
        0,
        "the idle connection's buffer"
    );
    let kept = super::spare::take(Slot::Read).expect("the drained buffer is kept");
    assert!(kept.is_empty() && kept.capacity() > 0);

    // The next connection to read on this thread reads into the buffer kept, rather than
    // a new one. The buffer kept is the back half of one whose front half lives on here,
    // so no new buffer can be given its place in memory.
    let mut front = BytesMut::with_capacity(2048);
    let spare = front.split_off(1024);
    let at = spare.as_ptr();
    super::spare::put(Slot::Read, spare, false);
    let mut second = reading(vec![batch(1, 64)]);
    assert!(matches!(
        second.poll_io(&mut cx, &config, true, true, false),
        Poll::Ready(super::Io::Arrived)
    ));
    assert_eq!(second.reader.read_buffer().as_ptr(), at);
    assert!(
        super::spare::take(Slot::Read).is_none(),
        "taken by the read"
    );
    drop(front);
}

#[test]
fn the_thread_keeps_no_buffer_without_room_or_over_the_limit() {
    super::spare::put(Slot::Read, BytesMut::new(), false);
    assert!(super::spare::take(Slot::Read).is_none(), "no room");
    super::spare::put(
        Slot::Read,
        BytesMut::with_capacity(super::spare::MAX + 1),
        false,
    );
    assert!(super::spare::take(Slot::Read).is_none(), "over the limit");
    super::spare::put(
        Slot::Read,
        BytesMut::with_capacity(super::spare::MAX),
        false,
    );
    assert_eq!(
        super::spare::take(Slot::Read).map(|b| b.capacity()),
        Some(super::spare::MAX)
    );
}

#[tokio::test(start_paused = true)]
async fn a_timer_first_polled_out_of_budget_still_ends_the_connection_at_its_deadline() {
    let config = crate::config::Config::default();
    let mut conn = silent(&config, true);
    let mut cx = Context::from_waker(noop_waker_ref());
    // Use up the task's coop budget: Tokio's timer then answers Pending without
    // registering the waker (and wakes the task to be polled again).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..1000 {
        tx.send(()).expect("the receiver is here");
    }
    while rx.poll_recv(&mut cx).is_ready() {}
    assert!(!tokio::task::coop::has_budget_remaining());
    assert!(conn
        .poll_io(&mut cx, &config, true, true, false)
        .is_pending());

    // The task's next poll has budget again, and the handshake deadline has passed.
    tokio::task::yield_now().await;
    tokio::time::advance(config.handshake_timeout).await;
    assert!(matches!(
        conn.poll_io(&mut cx, &config, true, true, false),
        Poll::Ready(super::Io::Deadline(super::Deadline::Handshake))
    ));
}

#[tokio::test]
async fn an_output_buffer_no_answer_needed_goes_back_to_the_thread() {
    let config = crate::config::Config::default();
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut conn = silent(&config, false);
    // A batch takes the thread's output buffer to answer into (as the driver does before
    // lending messages to the handler), and needs none of it: one-way messages only.
    super::spare::put(Slot::Out, BytesMut::with_capacity(1024), false);
    let (buffer, _) = conn.out.room(usize::MAX).expect("room");
    assert_eq!(buffer.capacity(), 1024);
    assert!(conn
        .poll_io(&mut cx, &config, true, true, false)
        .is_pending());
    assert_eq!(
        conn.out.buffer.capacity(),
        0,
        "the idle connection holds no output buffer"
    );
    assert_eq!(
        super::spare::take(Slot::Out).map(|b| b.capacity()),
        Some(1024)
    );
}

/// A read buffer whose large frame was split off its front keeps only the allocation's
/// tail as room; for frame sizes that leave a small tail, the thread must not keep the
/// buffer, and with it the whole allocation, once the frame is gone.
#[tokio::test]
async fn a_read_buffer_drained_after_a_large_frame_does_not_pin_it() {
    let config = crate::config::Config::default();
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut pinned_sizes = Vec::new();
    // Frames that end 500 to 2,000 bytes short of an allocation larger than the thread
    // may keep (found by trying frame sizes: such a frame leaves a tail of room under MAX).
    let sizes = [512 << 10, 1 << 20, 2 << 20]
        .into_iter()
        .flat_map(|allocation: usize| {
            (500..2_000)
                .step_by(100)
                .map(move |short| allocation - short)
        });
    for size in sizes {
        drop(super::spare::take(Slot::Read));
        let mut conn = reading(vec![batch(1, size)]);
        let mut frame = None;
        for _ in 0..10_000 {
            match conn.poll_io(&mut cx, &config, true, true, false) {
                Poll::Ready(super::Io::Arrived) => {
                    frame = conn.reader.decode().expect("decode");
                    conn.received();
                    break;
                }
                Poll::Ready(_) => panic!("only reads are expected"),
                Poll::Pending => {}
            }
        }
        let frame = frame.expect("the frame arrived");
        assert!(conn
            .poll_io(&mut cx, &config, true, true, false)
            .is_pending());
        // The handler is done with the request.
        drop(frame);
        if let Some(mut kept) = super::spare::take(Slot::Read) {
            if kept.try_reclaim(super::spare::KEEP_MAX + 1) {
                pinned_sizes.push((size, kept.capacity()));
            }
        }
    }
    assert!(
        pinned_sizes.is_empty(),
        "{} of 45 frame sizes left the thread a read buffer pinning a large allocation, e.g. (frame payload, allocation): {:?}",
        pinned_sizes.len(),
        &pinned_sizes[..pinned_sizes.len().min(4)]
    );
}
