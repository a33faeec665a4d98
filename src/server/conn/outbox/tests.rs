//! The outbox: large payloads written apart from the buffer arrive in order and whole,
//! through partial and refused writes; drained buffers go to the thread.

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
pub(in crate::server::conn) struct Stingy {
    written: Vec<u8>,
    max: usize,
    refuse_next: bool,
    vectored: bool,
    writes: usize,
}

impl Stingy {
    pub(in crate::server::conn) fn new(max: usize, vectored: bool) -> Stingy {
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

pub(in crate::server::conn) fn decode_all(bytes: &[u8]) -> Vec<Frame> {
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
    super::spare::put(Slot::Out, kept, false);
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
#[test]
fn a_buffer_split_for_a_large_payload_is_not_kept_by_the_thread() {
    drop(super::spare::take(Slot::Out));
    let mut outbox = Outbox::new(Stingy::new(1 << 30, true), Codec::new(MAX_PAYLOAD_LIMIT));
    // An output buffer of 8 KiB, mostly full, then a payload written apart: the bytes
    // ahead of it leave with their allocation, and what is left of the buffer (under 2
    // KiB of room, small enough to keep) must not be kept sharing that allocation.
    outbox.buffer.reserve(8192);
    let small = replies(&[64; 90]);
    for frame in &small {
        outbox.push(frame.clone(), usize::MAX);
    }
    let large = replies(&[WRITE_APART]);
    outbox.push(large[0].clone(), usize::MAX);
    flush(&mut outbox, 8);
    assert_eq!(decode_all(&outbox.stream.written), [small, large].concat());
    assert!(
        super::spare::take(Slot::Out).is_none(),
        "the thread keeps a buffer that shares the 8 KiB one"
    );
}

/// An output buffer emptied by a partial write and then the rest has its start near the
/// end of its allocation: little room, but the whole allocation behind it. The thread
/// must not keep it.
#[test]
fn a_buffer_drained_by_a_partial_write_does_not_pin_its_allocation() {
    drop(super::spare::take(Slot::Out));
    // A socket that takes 1,047,000 bytes at a time.
    let mut outbox = Outbox::new(Stingy::new(1_047_000, false), Codec::new(MAX_PAYLOAD_LIMIT));
    outbox.buffer.reserve(1 << 20);
    let (base, room) = (outbox.buffer.as_ptr(), outbox.buffer.capacity());
    // 14,343 pipelined 64-byte replies: 1,047,039 bytes, written as 1,047,000 + 39, which
    // leaves the emptied buffer 1,576 bytes of room on its 1 MiB allocation.
    let frames = replies(&vec![64; 14_343]);
    for frame in &frames {
        outbox.push(frame.clone(), usize::MAX);
    }
    assert_eq!(outbox.buffer.as_ptr(), base);
    flush(&mut outbox, 16);
    assert_eq!(decode_all(&outbox.stream.written), frames);
    if let Some(mut kept) = super::spare::take_as_kept(Slot::Out) {
        let cap = kept.capacity();
        // What the thread's buffer really holds:
        assert!(
            !kept.try_reclaim(super::spare::KEEP_MAX + 1),
            "the thread keeps {cap} bytes of room that pin the whole {room}-byte allocation \
             (reclaimed without allocating: capacity now {}, at the old base: {})",
            kept.capacity(),
            kept.as_ptr() == base
        );
    }
}
