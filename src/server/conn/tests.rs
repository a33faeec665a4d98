//! The outbox (large payloads written apart from the buffer arrive in order, whole, through
//! partial and refused writes), the read bursts and the deadline timer.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::task::noop_waker_ref;
use tokio::io::AsyncWrite;
use tokio_util::codec::{Decoder, Encoder};

use super::spare::Slot;
use super::Outbox;
use crate::wire::{Codec, Frame, Kind, RawCodec, MAX_PAYLOAD_LIMIT, WRITE_APART};

/// A socket that takes at most `max` bytes per write and refuses every other write
/// (waking at once), optionally without vectored writes (as a TLS stream may be).
struct Stingy {
    written: Vec<u8>,
    max: usize,
    refuse_next: bool,
    vectored: bool,
    writes: usize,
}

impl Stingy {
    fn new(max: usize, vectored: bool) -> Stingy {
        Stingy {
            written: Vec::new(),
            max,
            refuse_next: true,
            vectored,
            writes: 0,
        }
    }

    /// Whether this write is refused; every second one is.
    fn refuse(&mut self, cx: &mut Context<'_>) -> bool {
        self.refuse_next = !self.refuse_next;
        if !self.refuse_next {
            cx.waker().wake_by_ref();
        }
        !self.refuse_next
    }
}

impl AsyncWrite for Stingy {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.refuse(cx) {
            return Poll::Pending;
        }
        let n = buf.len().min(self.max);
        self.written.extend_from_slice(&buf[..n]);
        self.writes += 1;
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if !self.vectored {
            let first = slices
                .iter()
                .find(|s| !s.is_empty())
                .map_or(&[][..], |s| &s[..]);
            return self.poll_write(cx, first);
        }
        if self.refuse(cx) {
            return Poll::Pending;
        }
        let mut n = 0;
        for slice in slices {
            let take = slice.len().min(self.max - n);
            self.written.extend_from_slice(&slice[..take]);
            n += take;
        }
        self.writes += 1;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.vectored
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Replies of these payload sizes, small and large mixed, each payload telling which it is.
fn replies(sizes: &[usize]) -> Vec<Frame> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let payload: Vec<u8> = (0..len).map(|j| (i * 31 + j % 251) as u8).collect();
            Frame::new(Kind::Reply, i as u32 + 1, payload)
        })
        .collect()
}

/// Writes everything queued, polling until done (at most `bound` polls).
fn flush<E>(outbox: &mut Outbox<Stingy, E>, bound: usize) {
    let mut cx = Context::from_waker(noop_waker_ref());
    for _ in 0..bound {
        if let Poll::Ready(result) = outbox.poll_flush(&mut cx) {
            result.expect("the test socket never fails");
            return;
        }
    }
    panic!("not flushed in {bound} polls");
}

fn decode_all(bytes: &[u8]) -> Vec<Frame> {
    let mut codec = Codec::new(MAX_PAYLOAD_LIMIT);
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = codec
        .decode(&mut buf)
        .expect("what the outbox wrote decodes")
    {
        frames.push(frame);
    }
    assert!(
        buf.is_empty(),
        "{} bytes left after the last whole frame",
        buf.len()
    );
    frames
}

const SIZES: [usize; 9] = [
    64,
    WRITE_APART,
    0,
    3,
    1 << 20,
    WRITE_APART - 1,
    100_000,
    5,
    64,
];

#[test]
fn small_and_large_replies_arrive_whole_and_in_order_through_partial_writes() {
    for (max, vectored) in [
        (1 << 30, true),
        (7, true),
        (4096, true),
        (7, false),
        (65_536, false),
    ] {
        let frames = replies(&SIZES);
        let mut outbox = Outbox::new(Stingy::new(max, vectored), Codec::new(MAX_PAYLOAD_LIMIT));
        let mut queued = 0;
        for frame in frames.clone() {
            queued += outbox.push(frame, usize::MAX);
        }
        let total: usize = frames.iter().map(Frame::encoded_len).sum();
        assert_eq!(queued, total, "push counts every byte it queues");
        assert_eq!(outbox.pending(), total);
        flush(&mut outbox, 4 * (total / max.min(total) + SIZES.len()) + 8);
        assert_eq!(outbox.pending(), 0);
        assert!(
            outbox.apart.is_none(),
            "a drained outbox keeps nothing apart"
        );
        assert_eq!(
            decode_all(&outbox.stream.written),
            frames,
            "max {max}, vectored {vectored}"
        );
    }
}

#[test]
fn a_large_payload_is_not_copied_and_goes_out_in_one_write_with_its_header() {
    let frames = replies(&[64, 1 << 20]);
    let mut outbox = Outbox::new(Stingy::new(1 << 30, true), Codec::new(MAX_PAYLOAD_LIMIT));
    outbox.push(frames[0].clone(), usize::MAX);
    outbox.push(frames[1].clone(), usize::MAX);
    // The buffer holds the small reply and the large one's header; its payload waits apart.
    assert_eq!(
        outbox.buffer.len() + outbox.apart.as_ref().map_or(0, |a| a.len),
        64 + 9 + 9 + (1 << 20)
    );
    assert!(
        outbox.buffer.len() < 1024,
        "the 1 MiB payload was copied into the buffer"
    );
    flush(&mut outbox, 4);
    assert_eq!(outbox.stream.writes, 1, "one vectored write");
    assert_eq!(decode_all(&outbox.stream.written), frames);
}

#[test]
fn raw_payloads_large_and_small_go_out_as_they_are_in_order() {
    let payloads: Vec<Bytes> = [1 << 20, 10, WRITE_APART, 0, 3]
        .iter()
        .enumerate()
        .map(|(i, &len)| Bytes::from(vec![i as u8 + 1; len]))
        .collect();
    let mut outbox = Outbox::new(Stingy::new(1000, true), RawCodec);
    for payload in payloads.clone() {
        outbox.push(payload, usize::MAX);
    }
    flush(&mut outbox, 100_000);
    assert!(outbox.apart.is_none());
    assert_eq!(outbox.stream.written, payloads.concat());
}

#[test]
fn bytes_waiting_apart_count_against_the_output_limit() {
    let frames = replies(&[1 << 20, 64]);
    let mut outbox = Outbox::new(Stingy::new(1, true), Codec::new(MAX_PAYLOAD_LIMIT));
    assert!(
        outbox.push(frames[0].clone(), 64 * 1024) > 0,
        "one message over the limit gets through"
    );
    assert_eq!(outbox.push(frames[1].clone(), 64 * 1024), 0);
    assert!(
        outbox.overflowed,
        "1 MiB waiting apart is over a 64 KiB limit"
    );
}

/// The same bytes as encoding every reply into one buffer.
#[test]
fn the_bytes_written_are_those_of_encoding_every_reply_in_turn() {
    let frames = replies(&SIZES);
    let mut expected = BytesMut::new();
    for frame in frames.clone() {
        Codec::new(MAX_PAYLOAD_LIMIT)
            .encode(frame, &mut expected)
            .expect("encode");
    }
    let mut outbox = Outbox::new(Stingy::new(333, true), Codec::new(MAX_PAYLOAD_LIMIT));
    for frame in frames {
        outbox.push(frame, usize::MAX);
    }
    flush(&mut outbox, 100_000);
    assert_eq!(Bytes::from(outbox.stream.written), expected.freeze());
}

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

#[tokio::test(start_paused = true)]
async fn the_timer_trails_the_idle_deadline_but_follows_every_other_change() {
    use std::time::Duration;
    use tokio::time::{advance, Instant};

    let config = crate::config::Config::default();
    let start = Instant::now();
    let mut conn = super::Conn::new(
        tokio::io::join(Silent, tokio::io::sink()),
        Codec::new(MAX_PAYLOAD_LIMIT),
        Codec::new(MAX_PAYLOAD_LIMIT),
        &config,
        true,
    );
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
    let mut conn = super::Conn::new(
        tokio::io::join(Silent, tokio::io::sink()),
        Codec::new(MAX_PAYLOAD_LIMIT),
        Codec::new(MAX_PAYLOAD_LIMIT),
        &config,
        false,
    );
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
    super::spare::put(Slot::Read, spare);
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
    super::spare::put(Slot::Read, BytesMut::new());
    assert!(super::spare::take(Slot::Read).is_none(), "no room");
    super::spare::put(Slot::Read, BytesMut::with_capacity(super::spare::MAX + 1));
    assert!(super::spare::take(Slot::Read).is_none(), "over the limit");
    super::spare::put(Slot::Read, BytesMut::with_capacity(super::spare::MAX));
    assert_eq!(
        super::spare::take(Slot::Read).map(|b| b.capacity()),
        Some(super::spare::MAX)
    );
}

#[test]
fn a_drained_output_buffer_goes_to_the_thread_even_when_written_to_its_very_end() {
    // Whatever an earlier test on this thread left there.
    drop(super::spare::take(Slot::Out));
    let frame = Frame::reply(1, vec![7u8; 64]);
    let mut outbox = Outbox::new(Stingy::new(1 << 30, true), Codec::new(MAX_PAYLOAD_LIMIT));
    outbox.push(frame.clone(), usize::MAX);
    let at = outbox.buffer.as_ptr();
    let room = outbox.buffer.capacity();
    flush(&mut outbox, 4);
    assert_eq!(
        decode_all(&outbox.stream.written),
        std::slice::from_ref(&frame)
    );
    assert_eq!(
        outbox.buffer.capacity(),
        0,
        "the idle outbox holds no buffer"
    );

    // The thread keeps the allocation, with all its room, whether or not the frame filled
    // it: a buffer written to its end once stayed with its connection.
    let kept = super::spare::take(Slot::Out).expect("the drained buffer is kept");
    assert_eq!((kept.as_ptr(), kept.capacity()), (at, room));

    // The next answer on this thread is written into it.
    super::spare::put(Slot::Out, kept);
    outbox.push(frame, usize::MAX);
    assert_eq!(outbox.buffer.as_ptr(), at);
    assert!(
        super::spare::take(Slot::Out).is_none(),
        "taken by the answer"
    );
}

#[test]
fn taking_every_byte_keeps_the_room_and_taking_some_moves_the_start() {
    let mut buffer = BytesMut::with_capacity(1024);
    buffer.extend_from_slice(&[1; 100]);
    let at = buffer.as_ptr();
    super::take_front(&mut buffer, 100);
    assert_eq!(
        (buffer.as_ptr(), buffer.len(), buffer.capacity()),
        (at, 0, 1024)
    );

    buffer.extend_from_slice(&[2; 100]);
    super::take_front(&mut buffer, 40);
    assert_eq!((buffer.len(), buffer.capacity()), (60, 984));
    assert_eq!(buffer.as_ptr(), at.wrapping_add(40));
}
