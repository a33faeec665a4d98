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
        let mut buf = vec![0u8; 64 * 1024];
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
                            buf.resize(buf.len() * 2, 0);
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
