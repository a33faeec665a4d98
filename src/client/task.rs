//! The task that owns a [`Client`](super::Client)'s connection: it numbers requests,
//! writes them in batches, routes every answer to its caller by id, and, when the
//! connection ends, tells each caller what became of its request.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Encoder, FramedRead, FramedWrite};
use tracing::{debug, warn};

use super::hello::{protocol_error, server_error};
use super::{ClientError, Command};
use crate::transport::{BoxRead, BoxWrite};
use crate::wire::{parse_goaway, Codec, Frame, Kind};

pub(super) type Reader = FramedRead<BoxRead, Codec>;
pub(super) type Writer = FramedWrite<BoxWrite, Codec>;

/// Bytes of queued requests above which the task stops taking new calls until the server
/// has read some: the server applies backpressure, and this passes it on to callers
/// instead of buffering without bound.
const MAX_QUEUED_OUTPUT: usize = 1 << 20;

/// The task that owns the connection.
pub(super) struct Task {
    reader: Reader,
    writer: Writer,
    encoder: Codec,
    queue: mpsc::Receiver<Command>,
    pending: HashMap<u32, oneshot::Sender<Result<Bytes, ClientError>>>,
    /// Ids of calls that timed out and were forgotten to make room: their late answers
    /// are dropped, where an answer to an id never sent ends the connection.
    abandoned: HashSet<u32>,
    next_id: u32,
    /// The last request id of the server's GOAWAY, once one came.
    going_away: Option<u32>,
    /// Set with `going_away`, for [`Client::is_going_away`](super::Client::is_going_away).
    going_away_flag: Arc<AtomicBool>,
    max_in_flight: usize,
    closed: Arc<OnceLock<ClientError>>,
    /// The write side is closed (a half-close while replies are awaited): a PING from the
    /// server, which checks that this client is still there, is left unanswered.
    write_shut: bool,
}

impl Task {
    /// A task for a connection past its HELLO exchange, taking calls from `queue`.
    pub(super) fn new(
        reader: Reader,
        writer: Writer,
        queue: mpsc::Receiver<Command>,
        max_in_flight: usize,
        closed: Arc<OnceLock<ClientError>>,
        going_away_flag: Arc<AtomicBool>,
    ) -> Task {
        Task {
            reader,
            writer,
            encoder: Codec::new(0),
            queue,
            pending: HashMap::new(),
            abandoned: HashSet::new(),
            next_id: 1,
            going_away: None,
            going_away_flag,
            max_in_flight,
            closed,
            write_shut: false,
        }
    }

    pub(super) async fn run(mut self) {
        let mut closing: Option<oneshot::Sender<()>> = None;
        let end = loop {
            if closing.is_some() && self.writer.write_buffer().is_empty() {
                if self.pending.is_empty() {
                    // Close the write side properly (a TLS close_notify), so the server
                    // sees an orderly end rather than a cut connection.
                    if !self.write_shut {
                        let _ = self.writer.get_mut().shutdown().await;
                    }
                    break ClientError::Closed {
                        reason: "the client closed the connection".into(),
                    };
                }
                if !self.write_shut {
                    // Half-close: the server still answers what it has received.
                    self.write_shut = true;
                    let _ = self.writer.get_mut().shutdown().await;
                }
            }
            if self.pending.len() >= self.max_in_flight {
                // Calls that timed out stay in `pending` until their reply comes; forget
                // them here, or a server that never answers would block new calls forever.
                let abandoned = &mut self.abandoned;
                self.pending.retain(|id, reply| {
                    let keep = !reply.is_closed();
                    if !keep {
                        abandoned.insert(*id);
                    }
                    keep
                });
            }
            let take_calls = closing.is_none()
                && self.pending.len() < self.max_in_flight
                && self.writer.write_buffer().len() < MAX_QUEUED_OUTPUT;
            tokio::select! {
                biased;
                frame = self.reader.next() => match frame {
                    Some(Ok(frame)) => {
                        if let Some(end) = self.on_frame(frame) {
                            break end;
                        }
                    }
                    Some(Err(err)) => break protocol_error(err),
                    None => break ClientError::Closed {
                        reason: "the server closed the connection".into(),
                    },
                },
                command = self.queue.recv(), if take_calls => match command {
                    Some(Command::Send { kind, payload, reply }) => self.send(kind, payload, reply),
                    Some(Command::Close { done }) => {
                        closing = Some(done);
                    }
                    // Every Client handle is gone: nobody can call any more.
                    None => {
                        closing = Some(oneshot::channel().0);
                    }
                },
                result = self.writer.flush(), if !self.writer.write_buffer().is_empty() => {
                    if let Err(err) = result {
                        break ClientError::Closed { reason: format!("writing failed: {err}") };
                    }
                }
            }
        };
        self.end(end, closing).await;
    }

    /// Tells every caller what became of its call once the connection ended with `end`:
    /// requests in flight get their fate by the wire's rules, calls still queued (and
    /// every later one) learn they were not sent.
    async fn end(mut self, end: ClientError, closing: Option<oneshot::Sender<()>>) {
        debug!(reason = %end, "client connection ended");
        // Calls made from now on are not sent at all.
        let unsent = match &end {
            _ if self.going_away.is_some() => ClientError::GoingAway,
            ClientError::Server { code, .. } if code.refuses_hello() => end.clone(),
            ClientError::Closed { .. } => end.clone(),
            other => ClientError::Closed {
                reason: other.to_string(),
            },
        };
        let _ = self.closed.set(unsent.clone());
        for (id, reply) in std::mem::take(&mut self.pending) {
            let _ = reply.send(Err(self.fate(id, &end)));
        }
        // Calls made from now on fail to send. A call that took its slot in the queue just
        // before the close may still be putting its command in: `recv` waits for it
        // (tokio's `Receiver::close` contract), where `try_recv` would miss it and leave
        // the call waiting out its whole timeout on a command nobody reads.
        self.queue.close();
        while let Some(command) = self.queue.recv().await {
            if let Command::Send {
                reply: Some(reply), ..
            } = command
            {
                let _ = reply.send(Err(unsent.clone()));
            }
        }
        if let Some(done) = closing {
            let _ = done.send(());
        }
    }

    /// Queues a frame and remembers who waits for its answer.
    fn send(
        &mut self,
        kind: Kind,
        payload: Bytes,
        reply: Option<oneshot::Sender<Result<Bytes, ClientError>>>,
    ) {
        if self.going_away.is_some() {
            if let Some(reply) = reply {
                let _ = reply.send(Err(ClientError::GoingAway));
            }
            return;
        }
        let id = match reply {
            Some(reply) => {
                let id = self.fresh_id();
                self.pending.insert(id, reply);
                id
            }
            None => 0,
        };
        // Payload sizes were checked against the server's limit by the caller.
        if let Err(err) = self.encoder.encode(
            Frame::new(kind, id, payload),
            self.writer.write_buffer_mut(),
        ) {
            if let Some(reply) = self.pending.remove(&id) {
                let _ = reply.send(Err(ClientError::Protocol(err.to_string())));
            }
        }
    }

    /// What became of request `id`, left unanswered when the connection ended with `end`.
    ///
    /// Only the wire decides "not received": the server reads frames in the order they
    /// were sent, so after a GOAWAY naming `last`, the requests sent after `last` were
    /// never read. Ids are handed out in sending order (wrapping, skipping 0 and ids in
    /// flight), so "sent after" is "fewer ids back from `next_id`". Everything else that
    /// was sent may have been processed.
    fn fate(&self, id: u32, end: &ClientError) -> ClientError {
        if let Some(last) = self.going_away {
            if sent_after(self.next_id, id, last) {
                return ClientError::GoingAway;
            }
            return ClientError::OutcomeUnknown {
                reason: format!(
                    "the server received it (its GOAWAY named {last} as the last request received) and closed the connection before answering"
                ),
            };
        }
        match end {
            // A HELLO the server refused: nothing was read after it.
            ClientError::Server { code, .. } if code.refuses_hello() => end.clone(),
            _ => ClientError::OutcomeUnknown {
                reason: format!("the connection ended before the answer came ({end})"),
            },
        }
    }

    /// The next request id that is not 0 and not in flight. Ids wrap after 2^32 requests.
    fn fresh_id(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if !self.pending.contains_key(&id) && !self.abandoned.contains(&id) {
                return id;
            }
        }
    }

    /// Who waits for the answer `frame` carries. `Err` (the connection ends) when no call
    /// was sent with its id: a server answering an id twice, or one it was never sent, is
    /// broken, and none of its answers on this connection can be trusted. `Ok(None)`
    /// for the late answer of a call that timed out and was forgotten.
    fn waiting(
        &mut self,
        frame: &Frame,
    ) -> Result<oneshot::Sender<Result<Bytes, ClientError>>, Option<ClientError>> {
        if let Some(reply) = self.pending.remove(&frame.id) {
            return Ok(reply);
        }
        if self.abandoned.remove(&frame.id) {
            return Err(None);
        }
        warn!(kind = %frame.kind, id = frame.id, "server answered an id it was not sent");
        Err(Some(ClientError::Protocol(format!(
            "the server sent {} for id {}, which no request in flight has",
            frame.kind, frame.id
        ))))
    }

    /// Handles a frame from the server; returns why the connection ends, if it does.
    fn on_frame(&mut self, frame: Frame) -> Option<ClientError> {
        match frame.kind {
            Kind::Reply | Kind::Pong => match self.waiting(&frame) {
                Ok(reply) => {
                    let _ = reply.send(Ok(frame.payload));
                    None
                }
                Err(end) => end,
            },
            Kind::Error if frame.id != 0 => match self.waiting(&frame) {
                Ok(reply) => {
                    let _ = reply.send(Err(server_error(&frame.payload)));
                    None
                }
                Err(end) => end,
            },
            // An ERROR about the whole connection: the server closes it next.
            Kind::Error => Some(server_error(&frame.payload)),
            Kind::GoAway => match parse_goaway(&frame.payload) {
                Ok(last) => {
                    debug!(last_id = last, "server sent GOAWAY");
                    self.going_away = Some(last);
                    self.going_away_flag.store(true, Ordering::Relaxed);
                    None
                }
                Err(err) => Some(ClientError::Protocol(err.to_string())),
            },
            // Half-closed: nothing can be written, and the PING has done its job (the
            // server's write reached a client that is still there).
            Kind::Ping if self.write_shut => None,
            Kind::Ping => {
                let pong = Frame::new(Kind::Pong, frame.id, frame.payload);
                let _ = self.encoder.encode(pong, self.writer.write_buffer_mut());
                None
            }
            Kind::Hello | Kind::Request | Kind::RequestExt | Kind::Oneway | Kind::Stats => {
                warn!(kind = %frame.kind, "server sent a frame a server does not send");
                Some(ClientError::Protocol(format!(
                    "the server sent {}, which only clients send",
                    frame.kind
                )))
            }
        }
    }
}

/// Whether request `id` was sent after request `last`, for a client whose next id is
/// `next_id`. Ids are handed out in sending order, wrapping past `u32::MAX` to 1, so the
/// one sent later is the one fewer ids back from `next_id`. `last` 0 (a GOAWAY naming no
/// request) comes before everything.
fn sent_after(next_id: u32, id: u32, last: u32) -> bool {
    let back = |id: u32| next_id.wrapping_sub(id);
    last == 0 || back(id) < back(last)
}

#[cfg(test)]
mod tests {
    use super::sent_after;

    #[test]
    fn requests_sent_after_the_goaways_last_id_are_told_apart_across_the_wrap() {
        // Ids 1..=9 sent, next is 10.
        assert!(sent_after(10, 5, 4));
        assert!(!sent_after(10, 4, 4));
        assert!(!sent_after(10, 3, 4));
        // Ids ..., u32::MAX - 1, u32::MAX, 1, 2 sent (0 is skipped), next is 3.
        assert!(sent_after(3, 1, u32::MAX));
        assert!(sent_after(3, 2, u32::MAX));
        assert!(!sent_after(3, u32::MAX - 1, u32::MAX));
        assert!(!sent_after(3, u32::MAX - 1, 1));
        assert!(sent_after(3, 2, 1));
        // A GOAWAY naming 0: nothing was received.
        assert!(sent_after(3, 1, 0));
        assert!(sent_after(3, u32::MAX, 0));
    }
}
