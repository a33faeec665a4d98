//! The drained read buffer a connection last handed back on this thread, kept for the
//! next connection that reads here instead of going back to the allocator. Without
//! pipelining every request is a read that leaves the buffer empty, so every request
//! paid one allocation and one free of it: keeping it took `bench/instructions` from
//! 3,398 to 3,228 server instructions per request at 50 connections. One buffer a
//! thread, with room for at most [`MAX`] bytes: an idle connection still holds
//! none, and a buffer grown for a large burst is freed as before (its cost spread over
//! the burst), so that a lone small message does not get 16 KiB of room.

use std::cell::Cell;

use bytes::BytesMut;

use super::READ_CHUNK;

/// The largest buffer kept: room for a pipelined batch of 16 small requests.
pub(super) const MAX: usize = 2 * READ_CHUNK;

thread_local! {
    static SPARE: Cell<Option<BytesMut>> = const { Cell::new(None) };
}

/// Keeps `buffer`, which holds no bytes, for the next [`take`] on this thread (in
/// place of the one kept before); one with no room, or more than [`MAX`], is freed.
pub(super) fn put(buffer: BytesMut) {
    debug_assert!(buffer.is_empty());
    if buffer.capacity() > 0 && buffer.capacity() <= MAX {
        // On a thread that is shutting down, the buffer is simply freed.
        let _ = SPARE.try_with(|spare| spare.set(Some(buffer)));
    }
}

/// The buffer [`put`] last kept on this thread, if any.
pub(super) fn take() -> Option<BytesMut> {
    SPARE.try_with(Cell::take).ok().flatten()
}
