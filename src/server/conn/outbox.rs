//! A connection's output: the buffer its answers are encoded into, the large payloads
//! that wait apart from it, and the writes that drain both.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures::ready;
use tokio::io::AsyncWrite;
use tracing::error;

use super::spare::{self, Slot};
use crate::wire::EncodeApart;

/// A connection's outgoing messages: encoded straight into a buffer, so queuing never
/// waits and a peer that does not read can never stall the connection's loop. The poller
/// writes the buffer out; max_pending_output bounds it.
///
/// Large payloads are not copied into the buffer ([`EncodeApart`]): they wait in `apart`,
/// in order with the buffered bytes before them, and go out in vectored writes.
pub(crate) struct Outbox<W, E> {
    /// The connection's stream: written here, and read through by [`Reader`].
    pub(super) stream: W,
    /// Encoded bytes, written after everything in `apart`.
    pub(super) buffer: BytesMut,
    /// Written before `buffer`: each large payload, after the bytes that were buffered
    /// ahead of it when it was queued. Boxed, and only there while it holds something: a
    /// connection that sends no large payload pays one pointer for it.
    apart: Option<Box<Apart>>,
    encoder: E,
    /// Set when a message was due while more than its limit of bytes were waiting: the peer is
    /// not reading, and the connection loop closes the connection.
    pub(crate) overflowed: bool,
    /// The buffer's start has moved past bytes written while others stayed (a partial
    /// write): what [`spare::put`] needs to know.
    moved: bool,
}

/// Bytes to be written ahead of an [`Outbox`]'s buffer, in order.
#[derive(Default)]
struct Apart {
    chunks: VecDeque<Bytes>,
    /// Bytes in `chunks`.
    len: usize,
}

/// At most this many slices go to one vectored write (Linux takes up to 1024).
const MAX_SLICES: usize = 64;

impl<W: AsyncWrite + Unpin, E> Outbox<W, E> {
    pub(super) fn new(stream: W, encoder: E) -> Self {
        Outbox {
            stream,
            buffer: BytesMut::new(),
            apart: None,
            encoder,
            overflowed: false,
            moved: false,
        }
    }

    /// Queues a message, unless more than `limit` bytes (max_pending_output, read from the
    /// config rather than kept in every connection) already wait: then it is dropped and
    /// `overflowed` set. Checking before appending lets one message larger than the limit
    /// through when the peer keeps up. Returns the bytes it queued.
    pub(crate) fn push<T>(&mut self, item: T, limit: usize) -> usize
    where
        E: EncodeApart<T>,
    {
        if self.pending() > limit {
            self.overflowed = true;
            return 0;
        }
        let before = self.pending();
        self.refill();
        // The only encoding error is a payload beyond the u32 length field, and payloads
        // here are bounded by max_frame, which is validated below that.
        match self.encoder.encode_apart(item, &mut self.buffer) {
            Ok(None) => {}
            Ok(Some(payload)) => {
                // The framing just buffered, and anything before it, goes first (raw
                // framing has none: nothing may be buffered).
                let apart = self.apart.get_or_insert_with(Box::default);
                if !self.buffer.is_empty() {
                    // All of the buffer goes, not only its bytes (`split`): the rest of it
                    // would share their allocation, however large, and once drained the
                    // thread could keep it (`spare`) for as long as it lives.
                    let ahead = std::mem::take(&mut self.buffer).freeze();
                    self.moved = false;
                    apart.len += ahead.len();
                    apart.chunks.push_back(ahead);
                }
                apart.len += payload.len();
                apart.chunks.push_back(payload);
            }
            Err(err) => error!(cause = %err, "cannot encode a message"),
        }
        self.pending() - before
    }

    /// The buffer, for answers encoded straight into it, and how long it may grow before
    /// more than `limit` bytes wait ([`Outbox::push`]'s check); `None` once they do.
    pub(crate) fn room(&mut self, limit: usize) -> Option<(&mut BytesMut, usize)> {
        let apart = self.apart.as_ref().map_or(0, |apart| apart.len);
        let room = limit.checked_sub(apart)?;
        self.refill();
        Some((&mut self.buffer, room))
    }

    /// Gives a drained buffer the room the thread keeps ([`spare`]) before bytes are
    /// written into it; one that has room keeps it.
    fn refill(&mut self) {
        if self.buffer.capacity() == 0 {
            if let Some(spare) = spare::take(Slot::Out) {
                self.buffer = spare;
                self.moved = false;
            }
        }
    }

    /// Bytes waiting to be written.
    pub(crate) fn pending(&self) -> usize {
        self.apart.as_ref().map_or(0, |apart| apart.len) + self.buffer.len()
    }

    /// Writes the buffer out as far as the socket takes it; ready once all is written.
    pub(super) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending() > 0 {
            let written = match &mut self.apart {
                // One slice: a plain write. `poll_write_buf` would fill an array of 64
                // slices for a vectored write of one, per write.
                None => {
                    let written = ready!(Pin::new(&mut self.stream).poll_write(cx, &self.buffer))?;
                    self.moved |= take_front(&mut self.buffer, written);
                    written
                }
                Some(apart) => {
                    let written = ready!(poll_write_apart(
                        Pin::new(&mut self.stream),
                        cx,
                        apart,
                        &mut self.buffer,
                        &mut self.moved
                    ))?;
                    if apart.len == 0 {
                        self.apart = None;
                    }
                    written
                }
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
        }
        // Drained buffers go back too, to the thread (`spare`): an idle connection holds
        // no output memory. A buffer written to its very end has no capacity left
        // (`BytesMut::advance` moves its start), but it still holds its allocation: the
        // check was once for `capacity() > 0`, and such a buffer stayed with its
        // connection.
        self.give_back();
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    /// Hands the buffer, which must hold no bytes, to the thread ([`spare`]): one with no
    /// room is simply dropped.
    pub(super) fn give_back(&mut self) {
        debug_assert_eq!(self.pending(), 0);
        let moved = std::mem::take(&mut self.moved);
        if self.buffer.capacity() > 0 {
            spare::put(Slot::Out, std::mem::take(&mut self.buffer), moved);
        }
    }
}

/// Takes `count` bytes off the front of `buffer` (written out, or taken by the driver).
/// All of them it takes by emptying the buffer, which keeps its room for the next bytes;
/// `BytesMut::advance` would leave that room behind its new start, for the next
/// `reserve` to reclaim. Without pipelining that was once per request on each side, 96
/// of the server's 3,200 instructions per request at 50 connections
/// (`bench/instructions`). Returns whether the buffer's start moved (bytes stay behind
/// those taken), which [`spare::put`] needs to know.
pub(crate) fn take_front(buffer: &mut BytesMut, count: usize) -> bool {
    if count == buffer.len() {
        buffer.clear();
        false
    } else {
        buffer.advance(count);
        count > 0
    }
}

/// One vectored write of what `apart` holds, then `buffer`; takes what was written off
/// their fronts, and sets `moved` when the buffer's start moved ([`take_front`]).
fn poll_write_apart<W: AsyncWrite>(
    writer: Pin<&mut W>,
    cx: &mut Context<'_>,
    apart: &mut Apart,
    buffer: &mut BytesMut,
    moved: &mut bool,
) -> Poll<io::Result<usize>> {
    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
    let mut count = 0;
    let chunks = apart.chunks.iter().map(|chunk| &chunk[..]);
    for (slice, chunk) in slices.iter_mut().zip(chunks.chain([&buffer[..]])) {
        *slice = IoSlice::new(chunk);
        count += 1;
    }
    let written = ready!(writer.poll_write_vectored(cx, &slices[..count]))?;
    let mut left = written;
    while left > 0 {
        let Some(front) = apart.chunks.front_mut() else {
            *moved |= take_front(buffer, left);
            break;
        };
        let taken = left.min(front.len());
        front.advance(taken);
        apart.len -= taken;
        left -= taken;
        if front.is_empty() {
            apart.chunks.pop_front();
        }
    }
    Poll::Ready(Ok(written))
}

#[cfg(test)]
pub(super) mod tests;
