//! What the bench sends: payloads that every reply can be checked against, the headers of
//! each framing, and the requests in flight until their replies are taken.

use std::collections::VecDeque;

use bytes::{BufMut, BytesMut};
use tokio::time::Instant;

use crate::wire::{put_header, Kind, HEADER_LEN};

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
        let n = self.template.len().min(8);
        if reply.len() != self.template.len() {
            return false;
        }
        let (stamp, tail) = reply.split_at(n);
        // A whole stamp is compared as a number: as a slice it was a call to `memcmp`.
        let stamped = match <[u8; 8]>::try_from(stamp) {
            Ok(bytes) => u64::from_be_bytes(bytes) == seq,
            Err(_) => stamp == &seq.to_be_bytes()[8 - n..],
        };
        stamped && tail == &self.template[n..]
    }
}

/// A whole request as one framing encodes it (header, then payload), id 0 and stamp 0:
/// each request is this copied, with its id and stamp then written in place, instead of a
/// header put field by field (with a check for room at each) and a payload in two parts:
/// queueing a request was the load generator's largest cost of its own at pipeline 16
/// (`perf record` of `courier bench -c 50 -P 16`: 4.3 % of its CPU for the header alone).
/// The template holds as many copies, end to end, as one batch of the run sends (up to
/// [`RUN_MAX`] bytes), so that a batch is one copy, not one per request: a copy per request
/// was a sixth of the load generator's instructions per request at pipeline 16
/// (callgrind, [`Requests::queue_batch`]). Built for payloads under [`TEMPLATE_MAX`] only:
/// larger ones cost their copy, not this.
struct Template {
    /// The request, `bytes.len() / marks.frame_len` times over.
    bytes: Vec<u8>,
    marks: Marks,
}

/// Where a request copied from a [`Template`] takes its id and stamp.
#[derive(Clone, Copy)]
struct Marks {
    /// One request's length on the wire.
    frame_len: usize,
    /// Where the id goes (courier framing: the header's last four bytes).
    id_at: Option<usize>,
    /// Where the payload, and so its stamp, starts.
    stamp_at: usize,
    /// The stamp's length: the payload's first bytes, at most 8.
    stamp_len: usize,
}

impl Marks {
    /// Writes `id` and `seq`'s stamp into `frame`, one request copied from the template.
    fn mark(&self, frame: &mut [u8], id: u32, seq: u64) {
        if let Some(at) = self.id_at {
            frame[at..at + 4].copy_from_slice(&id.to_be_bytes());
        }
        let stamp = seq.to_be_bytes();
        let payload = &mut frame[self.stamp_at..];
        // A whole stamp as one store: a copy of a length known only at run time was a
        // call to `memcpy`.
        if self.stamp_len == 8 {
            payload[..8].copy_from_slice(&stamp);
        } else {
            payload[..self.stamp_len].copy_from_slice(&stamp[8 - self.stamp_len..]);
        }
    }
}

/// Payloads from this size up are written by [`Payloads::write`] rather than from a
/// [`Template`], which would keep a second copy of each for every connection.
const TEMPLATE_MAX: usize = 16 * 1024;

/// The most bytes of requests a [`Template`] lays end to end for one batch: 224 of 64
/// bytes, for each connection of the run.
const RUN_MAX: usize = 16 * 1024;

impl Template {
    /// The template of requests with `size`-byte `payloads` behind `header`, enough of
    /// them for a batch of `batch`; `ids` when the framing carries the request's id
    /// (courier), as the header's last 4 bytes.
    fn new(
        header: Header,
        ids: bool,
        payloads: &Payloads,
        size: usize,
        batch: usize,
    ) -> Option<Template> {
        if size >= TEMPLATE_MAX {
            return None;
        }
        let mut frame = BytesMut::with_capacity(HEADER_LEN + size);
        header(&mut frame, 0, size);
        let stamp_at = frame.len();
        payloads.write(0, &mut frame);
        let frame_len = frame.len();
        let copies = batch.clamp(1, (RUN_MAX / frame_len).max(1));
        Some(Template {
            bytes: frame.repeat(copies),
            marks: Marks {
                frame_len,
                id_at: ids.then(|| stamp_at - 4),
                stamp_at,
                stamp_len: size.min(8),
            },
        })
    }

    /// Appends `count` unmarked requests to `out`, as many at a time as the template
    /// holds.
    fn copy(&self, count: usize, out: &mut BytesMut) {
        let frame_len = self.marks.frame_len;
        out.reserve(count * frame_len);
        let mut left = count;
        while left > 0 {
            let n = left.min(self.bytes.len() / frame_len);
            out.extend_from_slice(&self.bytes[..n * frame_len]);
            left -= n;
        }
    }
}

/// The requests one connection sends: numbered from 1, encoded into the output buffer with
/// their checkable payloads, and in flight until their replies are taken.
pub(super) struct Requests {
    /// What each request carries, and what its reply must.
    pub(super) payloads: Payloads,
    /// Small requests whole, to be copied ([`Template`]).
    template: Option<Template>,
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
    /// framing) or in order (plain framing), queued up to `batch` at a time.
    pub(super) fn new(size: usize, header: Header, ids: bool, batch: usize) -> Requests {
        let payloads = Payloads::new(size);
        Requests {
            template: Template::new(header, ids, &payloads, size, batch),
            payloads,
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
        self.queue_batch(1, due, measure_from, out);
    }

    /// Encodes the next `count` requests into `out` and puts them in flight, their
    /// latency counted from `due`: small ones copied from the template in one go, then
    /// each given its id and stamp.
    pub(super) fn queue_batch(
        &mut self,
        count: usize,
        due: Instant,
        measure_from: Instant,
        out: &mut BytesMut,
    ) {
        let Some(template) = &self.template else {
            for _ in 0..count {
                self.queue_header(due, measure_from, out);
                self.payloads.write(self.seq, out);
            }
            return;
        };
        let marks = template.marks;
        let start = out.len();
        template.copy(count, out);
        for frame in out[start..].chunks_exact_mut(marks.frame_len) {
            let id = self.put_in_flight(due, measure_from);
            marks.mark(frame, id, self.seq);
        }
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
        let id = self.put_in_flight(due, measure_from);
        (self.header)(out, id, self.size);
    }

    /// Puts the next request in flight, its latency counted from `due`; returns its id.
    /// Inlined into the loop of [`Requests::queue_batch`], where it runs for every request.
    #[inline(always)]
    fn put_in_flight(&mut self, due: Instant, measure_from: Instant) -> u32 {
        self.seq += 1;
        if due >= measure_from {
            self.measured += 1;
        }
        self.pending.push(self.seq, due)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The request `Requests::queue` encodes with a template is the one a header put field
    /// by field and the payload written in two parts make, for either framing and payloads
    /// shorter than, as long as, and longer than the stamp.
    #[test]
    fn a_request_from_the_template_is_the_request_encoded_in_parts() {
        let framings: [(Header, bool); 2] = [(request_header, true), (plain_header, false)];
        for (header, ids) in framings {
            for size in [0, 3, 8, 64, 1000] {
                let mut requests = Requests::new(size, header, ids, 1);
                assert!(requests.template.is_some(), "a template for {size} bytes");
                let now = Instant::now();
                // Ids are reused once their replies are in: take some out of flight so
                // that ids other than 1 come back.
                let mut out = BytesMut::new();
                for _ in 0..5 {
                    requests.queue(now, now, &mut out);
                }
                for id in [2, 4] {
                    requests.pending.take(id);
                }
                out.clear();
                for _ in 0..3 {
                    requests.queue(now, now, &mut out);
                }
                let mut expected = BytesMut::new();
                // The last three went out as 4, 2 (the freed ids, last freed first) and 6,
                // numbered 6 to 8.
                for (id, seq) in [(4, 6), (2, 7), (6, 8)] {
                    header(&mut expected, if ids { id } else { 0 }, size);
                    requests.payloads.write(seq, &mut expected);
                }
                assert_eq!(out, expected, "size {size}, ids {ids}");
            }
        }
    }

    /// A batch is the requests [`Requests::queue`] encodes one by one, with the same ids,
    /// numbers and times in flight, whether the template holds fewer copies than the
    /// batch, as many, or more.
    #[test]
    fn a_batch_is_the_requests_queued_one_by_one() {
        let framings: [(Header, bool); 2] = [(request_header, true), (plain_header, false)];
        let start = Instant::now();
        let warm = start + std::time::Duration::from_millis(1);
        for (header, ids) in framings {
            for size in [0, 3, 8, 64, 1000] {
                for (copies, count) in [(3, 7), (4, 4), (16, 5)] {
                    let mut batched = Requests::new(size, header, ids, copies);
                    let mut single = Requests::new(size, header, ids, 1);
                    let (mut out, mut expected) = (BytesMut::new(), BytesMut::new());
                    // One batch in the warm-up, then ids freed out of order, then a
                    // batch that counts.
                    for (due, free) in [(start, vec![]), (warm, vec![3, 1])] {
                        for id in &free {
                            batched.pending.take(*id);
                            single.pending.take(*id);
                        }
                        batched.queue_batch(count, due, warm, &mut out);
                        for _ in 0..count {
                            single.queue(due, warm, &mut expected);
                        }
                    }
                    let case = format!("size {size}, ids {ids}, {copies} copies, {count} a batch");
                    assert_eq!(out, expected, "{case}");
                    assert_eq!(batched.measured, count as u64, "{case}");
                    assert_eq!(batched.measured, single.measured, "{case}");
                    assert_eq!(batched.pending.len(), 2 * count - 2, "{case}");
                    for id in 1..=2 * count as u32 {
                        assert_eq!(batched.pending.take(id), single.pending.take(id), "{case}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_reply_matches_only_its_own_request_s_payload() {
        for size in [0, 3, 8, 64] {
            let payloads = Payloads::new(size);
            let seq = 0x0102_0304_0506_0708;
            let mut reply = BytesMut::new();
            payloads.write(seq, &mut reply);
            assert!(payloads.matches(seq, &reply), "size {size}");
            if size > 0 {
                assert!(
                    !payloads.matches(seq + 1, &reply),
                    "size {size}: another stamp"
                );
                let mut changed = reply.to_vec();
                changed[size - 1] ^= 1;
                assert!(
                    !payloads.matches(seq, &changed),
                    "size {size}: a byte changed"
                );
                assert!(
                    !payloads.matches(seq, &reply[..size - 1]),
                    "size {size}: cut short"
                );
            }
        }
    }

    #[test]
    fn large_payloads_have_no_template() {
        let requests = Requests::new(TEMPLATE_MAX, request_header, true, 16);
        assert!(requests.template.is_none());
    }
}
