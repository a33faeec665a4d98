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

/// The largest allocation a kept buffer may hold behind its room (see [`put`]): the
/// allocation of a stream of messages up to about this size is used again for the next
/// one on the thread, while anything larger goes back to the allocator. Freeing every
/// allocation over [`MAX`] made 64 KiB messages on one connection 7 % slower (the median
/// of 6 alternating pairs of `courier bench -c 1 -s 65536`), as each message's buffer
/// grew anew from a KiB.
pub(super) const KEEP_MAX: usize = 256 * 1024;

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
    static READ: Cell<Option<Kept>> = const { Cell::new(None) };
    static OUT: Cell<Option<Kept>> = const { Cell::new(None) };
}

/// A buffer kept, and whether its start had moved when it was put ([`put`]'s `moved`).
type Kept = (BytesMut, bool);

fn key(slot: Slot) -> &'static LocalKey<Cell<Option<Kept>>> {
    match slot {
        Slot::Read => &READ,
        Slot::Out => &OUT,
    }
}

/// Keeps `buffer`, which holds no bytes, for the next [`take`] of `slot` on this thread
/// (in place of the one kept before); one with no room, or more than [`MAX`], is freed.
///
/// `moved`: the buffer's start has moved since it was allocated or taken (a partial write,
/// a partial frame taken off the front, a frame split off). Its room then no longer shows
/// its allocation: emptied near the end of a large one, it has little room left but keeps
/// all of it. Only such a buffer is asked what it holds ([`pins_more`], a call of some 35
/// instructions, which on every buffer added 140 to the server's instructions per request
/// at 50 connections, `bench/instructions`), and kept only if that is at most
/// [`KEEP_MAX`].
#[inline(always)]
pub(super) fn put(slot: Slot, mut buffer: BytesMut, moved: bool) {
    debug_assert!(buffer.is_empty());
    let room = buffer.capacity();
    if room > 0 && room <= MAX && !(moved && pins_more(&mut buffer)) {
        // On a thread that is shutting down, the buffer is simply freed.
        let _ = key(slot).try_with(|spare| spare.set(Some((buffer, moved))));
    }
}

/// The buffer [`put`] last kept in `slot` on this thread, if any.
#[inline(always)]
pub(super) fn take(slot: Slot) -> Option<BytesMut> {
    let (mut buffer, moved) = key(slot).try_with(Cell::take).ok().flatten()?;
    // A frame split off a read buffer shares its allocation until the frame is dropped,
    // and while it does `pins_more` cannot tell: asked again now.
    (!(moved && pins_more(&mut buffer))).then_some(buffer)
}

/// What the thread keeps in `slot`, as [`put`] left it: for tests of what `put` keeps,
/// which [`take`]'s own check would hide.
#[cfg(test)]
pub(super) fn take_as_kept(slot: Slot) -> Option<BytesMut> {
    key(slot)
        .try_with(Cell::take)
        .ok()
        .flatten()
        .map(|(buffer, _)| buffer)
}

/// Whether `buffer` holds on to an allocation larger than [`KEEP_MAX`]: asks the
/// allocation itself, without allocating (if room for more than that can be had, it is
/// there). A buffer still shared with a frame split off it answers no.
#[inline(never)]
fn pins_more(buffer: &mut BytesMut) -> bool {
    buffer.try_reclaim(KEEP_MAX + 1)
}
