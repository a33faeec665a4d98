//! One-way streaming: ONEWAY frames in batches of up to 8 KiB, as fast as the connection
//! takes them, then a PING whose PONG proves the server read every message before it.

use std::sync::atomic::Ordering;

use bytes::{BufMut, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::codec::{Encoder, FramedRead};

use super::job::{Job, Outcome};
use super::requests::{oneway_header, Payloads};
use crate::wire::{Codec, CodecError, Frame, Kind, HEADER_LEN};

/// How many bytes of ONEWAY frames go out in one write, at most (but always one frame):
/// 8 KiB, as libzmq's engine writes its PUSH socket's messages (strace of bench/zmq_perf.c
/// pushing 64-byte messages: every `sendto` at most 8,192 bytes, 6,562 on average), so that
/// the one-way row compares the two at the same bytes per system call.
///
/// The figure depends on it, as it would for any streaming sender. Each write costs the
/// sender a fixed few microseconds in the kernel (the TCP segment, and over loopback the
/// receiver's side of it too) besides its bytes: 64-byte payloads, `courier bench
/// --oneway` pinned to CPU 1 against `courier serve` on CPU 0, alternating runs, gave
/// 16.1-17.5M messages/s at 64 frames (4.6 KiB) per write, 24.1-25.6M at 8 KiB, 39-42M at
/// 18 KiB and 64-65M at 64 KiB.
const BATCH_BYTES: usize = 8 * 1024;

/// The ONEWAY frames with `size`-byte payloads that go out in one write.
fn frames_per_batch(size: usize) -> usize {
    (BATCH_BYTES / (HEADER_LEN + size)).max(1)
}

impl Job {
    /// One-way streaming: ONEWAY frames in batches, then a PING that must come back.
    pub(super) async fn stream_oneway<R, W>(
        &self,
        mut reader: FramedRead<R, Codec>,
        mut writer: W,
        outcome: &mut Outcome,
    ) -> Result<(), CodecError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let payloads = Payloads::new(self.config.size);
        let mut out = BytesMut::with_capacity(64 * 1024);
        let mut seq = 0u64;
        let mut measured = 0u64;
        let batch = frames_per_batch(self.config.size);
        loop {
            let now = Instant::now();
            if self.stop_sending(measured, now) {
                break;
            }
            for _ in 0..batch {
                seq += 1;
                oneway_header(&mut out, 0, self.config.size);
                payloads.write(seq, &mut out);
            }
            writer.write_all_buf(&mut out).await?;
            self.progress
                .done
                .fetch_add(batch as u64, Ordering::Relaxed);
            if now >= self.measure_from {
                measured += batch as u64;
            }
        }
        let confirmed = self
            .confirm(&mut reader, &mut writer, seq, &mut out)
            .await?;
        outcome.requests = measured;
        outcome.confirmed = confirmed;
        if !confirmed {
            outcome.errors += 1;
        }
        Ok(())
    }

    /// Sends a PING carrying `seq`, the last message's number, and waits for its PONG.
    /// The server reads a connection in order, so its PONG proves it read every message
    /// before the PING. Returns whether it came back, and with `seq`.
    async fn confirm<R, W>(
        &self,
        reader: &mut FramedRead<R, Codec>,
        writer: &mut W,
        seq: u64,
        out: &mut BytesMut,
    ) -> Result<bool, CodecError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut probe = BytesMut::new();
        probe.put_u64(seq);
        Codec::new(0).encode(Frame::new(Kind::Ping, 1, probe.freeze()), out)?;
        writer.write_all_buf(out).await?;
        loop {
            match tokio::time::timeout(self.config.timeout, reader.next()).await {
                Ok(Some(Ok(frame))) if frame.kind == Kind::Pong && frame.id == 1 => {
                    return Ok(frame.payload[..] == seq.to_be_bytes());
                }
                Ok(Some(Ok(_))) => continue,
                _ => return Ok(false),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_fills_8_kib_and_holds_at_least_one_frame() {
        // 64-byte payloads: 73 bytes a frame, 112 of them in 8,176 bytes.
        assert_eq!(frames_per_batch(64), 112);
        assert!(frames_per_batch(64) * (HEADER_LEN + 64) <= BATCH_BYTES);
        assert!((frames_per_batch(64) + 1) * (HEADER_LEN + 64) > BATCH_BYTES);
        assert_eq!(frames_per_batch(0), BATCH_BYTES / HEADER_LEN);
        // A frame larger than a batch goes alone.
        assert_eq!(frames_per_batch(1 << 20), 1);
    }
}
