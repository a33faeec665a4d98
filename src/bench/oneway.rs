//! One-way streaming: ONEWAY frames in batches as fast as the connection takes them, then
//! a PING whose PONG proves the server read every message before it.

use std::sync::atomic::Ordering;

use bytes::{BufMut, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::codec::{Encoder, FramedRead};

use super::job::{Job, Outcome};
use super::requests::{oneway_header, Payloads};
use crate::wire::{Codec, CodecError, Frame, Kind};

/// ONEWAY frames per write.
const BATCH: usize = 64;

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
        loop {
            let now = Instant::now();
            if self.stop_sending(measured, now) {
                break;
            }
            for _ in 0..BATCH {
                seq += 1;
                oneway_header(&mut out, 0, self.config.size);
                payloads.write(seq, &mut out);
            }
            writer.write_all_buf(&mut out).await?;
            self.progress
                .done
                .fetch_add(BATCH as u64, Ordering::Relaxed);
            if now >= self.measure_from {
                measured += BATCH as u64;
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
