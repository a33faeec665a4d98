//! The drained buffers a connection last handed back on this thread, one for reading and
//! one for writing, kept for the next connection that reads or answers here instead of
//! going back to the allocator. Without pipelining every request is a read that leaves
//! the read buffer empty and a write that leaves the output empty, so every request paid
//! one allocation and one free of each: keeping the read buffer took `bench/instructions`
//! from 3,398 to 3,228 server instructions per request at 50 connections. One buffer of
//! each kind a thread, with room for at most [`MAX`] bytes: an idle connection still
//! holds none, and a buffer grown for a large burst is freed as before (its cost spread
//! over the burst), so that a lone small message does not get 16 KiB of room.

use std::cell::Cell;
use std::thread::LocalKey;

use bytes::BytesMut;

use super::READ_CHUNK;

/// The largest buffer kept: room for a pipelined batch of 16 small requests.
pub(super) const MAX: usize = 2 * READ_CHUNK;

/// Which of the thread's buffers: the two are kept apart, so that a read buffer (sized
/// for reads, `READ_CHUNK` or more) is not taken for output, nor a small output buffer
/// for a read it would have to grow for.
#[derive(Clone, Copy, Debug)]
pub(super) enum Slot {
    /// A connection's read buffer.
    Read,
    /// A connection's output buffer.
    Out,
}

thread_local! {
    static READ: Cell<Option<BytesMut>> = const { Cell::new(None) };
    static OUT: Cell<Option<BytesMut>> = const { Cell::new(None) };
}

fn key(slot: Slot) -> &'static LocalKey<Cell<Option<BytesMut>>> {
    match slot {
        Slot::Read => &READ,
        Slot::Out => &OUT,
    }
}

/// Keeps `buffer`, which holds no bytes, for the next [`take`] of `slot` on this thread
/// (in place of the one kept before); one with no room, or more than [`MAX`], is freed.
pub(super) fn put(slot: Slot, buffer: BytesMut) {
    debug_assert!(buffer.is_empty());
    if buffer.capacity() > 0 && buffer.capacity() <= MAX {
        // On a thread that is shutting down, the buffer is simply freed.
        let _ = key(slot).try_with(|spare| spare.set(Some(buffer)));
    }
}

/// The buffer [`put`] last kept in `slot` on this thread, if any.
pub(super) fn take(slot: Slot) -> Option<BytesMut> {
    key(slot).try_with(Cell::take).ok().flatten()
}
