//! The blocking driver: one connection, one request at a time, on a thread of its own
//! that blocks in `write` then `read` (why that is the cheapest client: `open.rs`).

use std::io::{self, IoSlice};
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::time::Instant;

use super::job::{Job, Outcome};
use super::replies::ReplyParser;
use super::requests::{plain_header, request_header, Header, Requests};
use crate::config::Framing;
use crate::transport::BlockingStream;
use crate::wire::{Codec, CodecError, PlainCodec, HEADER_LEN};

/// Payloads from this size up are written from the payload template itself, beside the
/// header in one vectored write, instead of copied behind the header first. Copying a
/// 1 MiB payload took 42 % of the load generator's CPU (`perf record` of
/// `courier bench -c 1 -s 1MiB`); below this size the copy costs less than a second slice.
const WRITE_PAYLOAD_APART: usize = 16 * 1024;

impl Job {
    /// [`Job::run`] on a thread of its own, for a blocking socket.
    pub(super) fn run_blocking(self, mut stream: Box<dyn BlockingStream>) -> (Outcome, Instant) {
        std::thread::sleep(self.start.saturating_duration_since(Instant::now()));
        let mut outcome = Outcome::new();
        let max = self.max_reply();
        let result = match self.config.framing {
            Framing::Plain => {
                let parser = PlainCodec::new(max);
                self.drive_blocking(&mut stream, &parser, &mut outcome, plain_header, false)
            }
            _ => {
                let parser = Codec::new(max);
                self.drive_blocking(&mut stream, &parser, &mut outcome, request_header, true)
            }
        };
        if result.is_err() {
            outcome.failed();
        }
        (outcome, Instant::now())
    }

    /// One request at a time over a blocking socket: write it, read until its reply is
    /// whole, check it. A read that waits longer than `timeout` fails the connection.
    fn drive_blocking(
        &self,
        stream: &mut dyn BlockingStream,
        parser: &impl ReplyParser,
        outcome: &mut Outcome,
        header: Header,
        ids: bool,
    ) -> Result<(), CodecError> {
        let mut requests = Requests::new(self.config.size, header, ids, 1);
        let mut out = BytesMut::with_capacity(HEADER_LEN + self.config.size);
        // Read into a plain buffer: `filled` bytes have arrived, the first `start` of them
        // are checked replies.
        let mut buf = PageBuffer::new(64 * 1024);
        let (mut start, mut filled) = (0, 0);
        loop {
            let now = Instant::now();
            if self.stop_sending(requests.measured, now) {
                return Ok(());
            }
            if self.config.size >= WRITE_PAYLOAD_APART {
                let tail = requests.queue_head(now, self.measure_from, &mut out);
                write_all_vectored(stream, &mut [IoSlice::new(&out), IoSlice::new(tail)])?;
            } else {
                requests.queue(now, self.measure_from, &mut out);
                stream.write_all(&out)?;
            }
            out.clear();
            while requests.pending.len() > 0 {
                let Some(reply) = parser.parse(&buf[start..filled])? else {
                    if filled == buf.len() {
                        // Make room: move the unchecked bytes to the front, then grow.
                        buf.copy_within(start..filled, 0);
                        (start, filled) = (0, filled - start);
                        if filled == buf.len() {
                            buf.grow();
                        }
                    }
                    let read = stream.read(&mut buf[filled..])?;
                    if read == 0 {
                        return Err(CodecError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                    filled += read;
                    continue;
                };
                let now = Instant::now();
                let payload = reply
                    .payload
                    .map(|range| &buf[start + range.start..start + range.end]);
                let expected = requests.pending.take(reply.id);
                let answered = self.check(outcome, expected, payload, &requests.payloads, now);
                self.progress
                    .done
                    .fetch_add(u64::from(answered), Ordering::Relaxed);
                start += reply.len;
            }
            if start == filled {
                (start, filled) = (0, 0);
            }
        }
    }
}

/// A buffer whose first byte starts a page (4 KiB), so that a reply read into its front
/// lies at the same offset in its page as it does in the kernel's (at its start, for a
/// message sent in one write).
///
/// Where the two offsets differ by a few bytes, the kernel's copy runs at a third of its
/// speed on some CPUs (AMD EPYC here): a 64 KiB `recv` of data already waiting took 49 µs
/// into a buffer 8 to 24 bytes past a page's start, and 14 to 16 µs at 0, 32, 64 or 4,080
/// bytes past it (medians of 200). glibc puts a `Vec` of 128 KiB or more 16 bytes past a
/// page's start, and the reply buffer grew to 128 KiB for 64 KiB payloads. Reading at a
/// page's start instead, `courier bench -c 1 -s 65536` made 1.33 × the round trips per
/// second (median of 6 alternating pairs) and spent 56 µs of CPU per request, not 88; with
/// 1 MiB payloads, 1.45 × (4 pairs), 482 µs per request, not 837.
struct PageBuffer {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl PageBuffer {
    const PAGE: usize = 4096;

    fn new(len: usize) -> PageBuffer {
        let storage = vec![0u8; len + Self::PAGE];
        let start = storage.as_ptr().align_offset(Self::PAGE);
        PageBuffer {
            storage,
            start,
            len,
        }
    }

    /// Twice the length, the bytes kept.
    fn grow(&mut self) {
        let mut grown = PageBuffer::new(self.len * 2);
        grown[..self.len].copy_from_slice(self);
        *self = grown;
    }
}

impl std::ops::Deref for PageBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for PageBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// Writes every byte of `slices`, in as few vectored writes as the socket allows.
fn write_all_vectored(
    stream: &mut dyn BlockingStream,
    mut slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match stream.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut slices, written),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::PageBuffer;

    #[test]
    fn a_page_buffer_starts_a_page_and_keeps_its_bytes_as_it_grows() {
        // 128 KiB and more is what glibc maps on its own, 16 bytes past a page's start.
        for len in [1000, 64 * 1024, 128 * 1024, 1 << 20] {
            let mut buf = PageBuffer::new(len);
            assert_eq!(buf.len(), len);
            assert_eq!(buf.as_ptr() as usize % PageBuffer::PAGE, 0, "len {len}");
            for (i, byte) in buf.iter_mut().enumerate() {
                *byte = (i % 251) as u8;
            }
            buf.grow();
            assert_eq!(buf.len(), 2 * len);
            assert_eq!(
                buf.as_ptr() as usize % PageBuffer::PAGE,
                0,
                "len {len} grown"
            );
            assert!(buf[..len]
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (i % 251) as u8));
        }
    }
}
