//! What the bench sends: payloads that every reply can be checked against, the headers of
//! each framing, and the requests in flight until their replies are taken.

use std::collections::VecDeque;

use bytes::{BufMut, BytesMut};
use tokio::time::Instant;

use crate::wire::{put_header, Kind};

/// Writes the header of a message with an id and a payload length, in one framing.
pub(super) type Header = fn(&mut BytesMut, u32, usize);

/// The courier header of a REQUEST with a `len`-byte payload.
pub(super) fn request_header(out: &mut BytesMut, id: u32, len: usize) {
    put_header(out, Kind::Request, id, len);
}

/// The courier header of a ONEWAY message with a `len`-byte payload.
pub(super) fn oneway_header(out: &mut BytesMut, id: u32, len: usize) {
    put_header(out, Kind::Oneway, id, len);
}

/// The plain-framing length prefix of a `len`-byte message.
pub(super) fn plain_header(out: &mut BytesMut, _id: u32, len: usize) {
    out.put_u32(len as u32);
}

/// The payload of request number `seq`: its first bytes are `seq`, the rest a fixed pattern,
/// so every reply can be checked without keeping a copy of every request.
pub(super) struct Payloads {
    template: Vec<u8>,
}

impl Payloads {
    /// Payloads of `size` bytes.
    pub(super) fn new(size: usize) -> Payloads {
        Payloads {
            template: (0..size).map(|i| (i % 251) as u8).collect(),
        }
    }

    /// Appends request `seq`'s payload to `out`, with no allocation of its own.
    pub(super) fn write(&self, seq: u64, out: &mut BytesMut) {
        self.write_stamp(seq, out);
        out.put_slice(self.tail());
    }

    /// Appends the part of request `seq`'s payload that differs between requests (its
    /// first bytes, `seq`); [`Payloads::tail`] is the rest.
    fn write_stamp(&self, seq: u64, out: &mut BytesMut) {
        let stamp = seq.to_be_bytes();
        let n = self.template.len().min(8);
        out.put_slice(&stamp[8 - n..]);
    }

    /// The part of every payload that follows the stamp: the same for every request.
    fn tail(&self) -> &[u8] {
        &self.template[self.template.len().min(8)..]
    }

    /// Whether `reply` is request `seq`'s payload.
    pub(super) fn matches(&self, seq: u64, reply: &[u8]) -> bool {
        let stamp = seq.to_be_bytes();
        let n = self.template.len().min(8);
        reply.len() == self.template.len()
            && reply[..n] == stamp[8 - n..]
            && reply[n..] == self.template[n..]
    }
}

/// The requests one connection sends: numbered from 1, encoded into the output buffer with
/// their checkable payloads, and in flight until their replies are taken.
pub(super) struct Requests {
    /// What each request carries, and what its reply must.
    pub(super) payloads: Payloads,
    /// The requests in flight.
    pub(super) pending: Outstanding,
    header: Header,
    size: usize,
    /// The last request's sequence number.
    seq: u64,
    /// Requests due inside the measured window so far.
    pub(super) measured: u64,
}

impl Requests {
    /// Requests with `size`-byte payloads behind `header`, found by id (`ids`, courier
    /// framing) or in order (plain framing).
    pub(super) fn new(size: usize, header: Header, ids: bool) -> Requests {
        Requests {
            payloads: Payloads::new(size),
            pending: Outstanding::new(ids),
            header,
            size,
            seq: 0,
            measured: 0,
        }
    }

    /// Encodes the next request into `out` and puts it in flight, its latency counted
    /// from `due`.
    pub(super) fn queue(&mut self, due: Instant, measure_from: Instant, out: &mut BytesMut) {
        self.queue_header(due, measure_from, out);
        self.payloads.write(self.seq, out);
    }

    /// [`Requests::queue`] without the copy of the payload's unchanging part: encodes the
    /// header and the stamp into `out` and returns the rest, to be written after `out` in
    /// the same vectored write. For large payloads, whose copy would cost the load
    /// generator more than the server's whole round trip.
    pub(super) fn queue_head(
        &mut self,
        due: Instant,
        measure_from: Instant,
        out: &mut BytesMut,
    ) -> &[u8] {
        self.queue_header(due, measure_from, out);
        self.payloads.write_stamp(self.seq, out);
        self.payloads.tail()
    }

    /// Puts the next request in flight and encodes its header into `out`.
    fn queue_header(&mut self, due: Instant, measure_from: Instant, out: &mut BytesMut) {
        self.seq += 1;
        if due >= measure_from {
            self.measured += 1;
        }
        let id = self.pending.push(self.seq, due);
        (self.header)(out, id, self.size);
    }
}

/// The requests in flight on one connection: by id in courier framing, in order in plain
/// framing (which has no ids, so replies come back in the order of the requests).
pub(super) enum Outstanding {
    /// Courier framing: found by the id of the reply.
    ById(InFlight),
    /// Plain framing: the oldest is the one answered.
    InOrder(VecDeque<(u64, Instant)>),
}

impl Outstanding {
    fn new(ids: bool) -> Outstanding {
        if ids {
            Outstanding::ById(InFlight::default())
        } else {
            Outstanding::InOrder(VecDeque::new())
        }
    }

    /// Requests in flight.
    pub(super) fn len(&self) -> usize {
        match self {
            Outstanding::ById(by_id) => by_id.len(),
            Outstanding::InOrder(in_order) => in_order.len(),
        }
    }

    /// Puts request `seq` (latency counted from `due`) in flight; returns the id to send.
    fn push(&mut self, seq: u64, due: Instant) -> u32 {
        match self {
            Outstanding::ById(by_id) => by_id.insert(seq, due),
            Outstanding::InOrder(in_order) => {
                in_order.push_back((seq, due));
                0
            }
        }
    }

    /// The request a reply with `id` answers.
    pub(super) fn take(&mut self, id: u32) -> Option<(u64, Instant)> {
        match self {
            Outstanding::ById(by_id) => by_id.remove(id),
            Outstanding::InOrder(in_order) => in_order.pop_front(),
        }
    }
}

/// The requests in flight on a courier connection, found by id. The bench picks its ids:
/// a request's id is its slot's index + 1 and a slot is reused once its reply is in, so
/// finding a reply's request is an index, not a hash lookup (the hash map this replaced
/// took 9 % of the load generator's CPU at pipeline 64). A reply is still checked against
/// its request's content, which carries the request's sequence number, so a stale or
/// misdirected reply to a reused id is caught.
#[derive(Default)]
pub(super) struct InFlight {
    slots: Vec<Option<(u64, Instant)>>,
    free: Vec<u32>,
    len: usize,
}

impl InFlight {
    fn len(&self) -> usize {
        self.len
    }

    /// Puts request `seq`, due at `due`, in flight; returns its id (never 0).
    fn insert(&mut self, seq: u64, due: Instant) -> u32 {
        let index = match self.free.pop() {
            Some(index) => index as usize,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.slots[index] = Some((seq, due));
        self.len += 1;
        // At most `cap` (100,000) slots exist, so the index fits.
        index as u32 + 1
    }

    /// Takes request `id` out of flight; `None` if no request of ours has that id.
    fn remove(&mut self, id: u32) -> Option<(u64, Instant)> {
        let index = id.checked_sub(1)? as usize;
        let entry = self.slots.get_mut(index)?.take()?;
        self.free.push(index as u32);
        self.len -= 1;
        Some(entry)
    }
}
