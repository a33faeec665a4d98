//! The UDP client (`udp:HOST:PORT`): the same [`Client`] handle, over datagrams, with
//! retransmission.
//!
//! One task owns the socket. It does the HELLO exchange (twice: the first HELLO gets the
//! server's address-validation cookie, the second, carrying it and the auth token, opens
//! the session), numbers requests, sends each in one datagram, and resends it until its
//! answer comes: after the retransmission timeout of `rto.rs` (RFC 6298, backed off and
//! jittered per attempt), up to `UdpOptions::max_attempts` sends and never past the
//! call's deadline (`call_timeout`). Many calls are in flight at once (at most the
//! server's `max_in_flight`); answers are matched by id.
//!
//! The outcome of a call that gets no answer is unknown ([`ClientError::Timeout`], with
//! the attempts made and the time spent): the server runs each request at most once, but
//! a request may have run and every answer been lost. A ONEWAY is sent once, best effort:
//! lost, it is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::debug;

use super::{Client, ClientConfig, ClientError, Command};
use crate::transport::{connect_udp, random_u64};
use crate::wire::{Datagram, ErrorBody, ErrorCode, Frame, Kind, MAX_DATAGRAM_MESSAGE};

mod hello;
mod rto;

use hello::{handshake, Welcome};
use rto::Rto;

/// Extra time the handle waits past `call_timeout` before it gives up on the task: the
/// task times calls out itself, with the attempts made; this only covers a task that died.
const HANDLE_GRACE: Duration = Duration::from_secs(1);

/// The UDP client's retransmission settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpOptions {
    /// The retransmission timeout before any round trip was measured.
    pub initial_rto: Duration,
    /// The lowest retransmission timeout, however fast the measured round trips.
    pub min_rto: Duration,
    /// The highest, backoff included.
    pub max_rto: Duration,
    /// Sends of one request at most (the first and the retransmissions).
    pub max_attempts: u32,
}

impl Default for UdpOptions {
    fn default() -> UdpOptions {
        UdpOptions {
            initial_rto: Duration::from_millis(200),
            min_rto: Duration::from_millis(20),
            max_rto: Duration::from_secs(2),
            max_attempts: 10,
        }
    }
}

/// Connects to `addr` (`HOST:PORT`, without the `udp:` prefix).
pub(super) async fn connect(addr: &str, config: &ClientConfig) -> Result<Client, ClientError> {
    let name = format!("{}{addr}", crate::transport::UDP_PREFIX);
    let (socket, _) = connect_udp(addr).await?;
    let session = random_u64();
    let options = &config.udp;
    let rto = Rto::new(options.initial_rto, options.min_rto, options.max_rto);
    let welcome = tokio::time::timeout(
        config.connect_timeout,
        handshake(&socket, session, config, &rto),
    )
    .await
    .map_err(|_| ClientError::ConnectTimeout {
        addr: name.clone(),
        after: config.connect_timeout,
    })??;
    let limit = config.max_in_flight.clamp(1, welcome.max_in_flight.max(1));
    let (commands, queue) = mpsc::channel(limit);
    let closed = Arc::new(OnceLock::new());
    let task = Task {
        socket,
        session,
        config: config.clone(),
        welcome: welcome.clone(),
        rto,
        queue,
        pending: BTreeMap::new(),
        timers: BTreeSet::new(),
        next_id: 1,
        limit,
        closed: closed.clone(),
        last_hello: Instant::now(),
    };
    tokio::spawn(task.run());
    Ok(Client::from_task(
        commands,
        closed,
        welcome.max_payload,
        config.call_timeout + HANDLE_GRACE,
    ))
}

/// A call waiting for its answer.
#[derive(Debug)]
struct Pending {
    kind: Kind,
    payload: Bytes,
    first_sent: Instant,
    attempts: u32,
    due: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Result<Bytes, ClientError>>,
}

/// The task that owns the socket.
struct Task {
    socket: UdpSocket,
    session: u64,
    config: ClientConfig,
    welcome: Welcome,
    rto: Rto,
    queue: mpsc::Receiver<Command>,
    /// By id: the first is the acknowledgement floor sent with each datagram.
    pending: BTreeMap<u32, Pending>,
    /// (when, id) of each pending call's next retransmission or give-up.
    timers: BTreeSet<(Instant, u32)>,
    next_id: u32,
    limit: usize,
    closed: Arc<OnceLock<ClientError>>,
    last_hello: Instant,
}

impl Task {
    async fn run(mut self) {
        let mut buf = BytesMut::with_capacity(MAX_DATAGRAM_MESSAGE + 64);
        let mut closing: Option<oneshot::Sender<()>> = None;
        loop {
            let due = self.timers.first().map(|(at, _)| *at);
            let open = self.pending.len() < self.limit && closing.is_none();
            tokio::select! {
                biased;
                received = self.socket.recv_buf(&mut buf) => {
                    let bytes = buf.split().freeze();
                    buf.reserve(MAX_DATAGRAM_MESSAGE + 64);
                    match received {
                        Ok(_) => {
                            if self.answer(bytes) && !self.hello_again().await {
                                return;
                            }
                        }
                        // An ICMP error from an earlier send (nothing listens there now):
                        // the server may come back; the calls' own timers decide.
                        Err(err) => debug!(cause = %err, "UDP receive failed"),
                    }
                }
                () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    self.retransmit().await;
                }
                command = self.queue.recv(), if open => match command {
                    Some(Command::Send { kind, payload, reply }) => self.start(kind, payload, reply).await,
                    Some(Command::Close { done }) => closing = Some(done),
                    // Every handle is gone: nobody waits for an answer.
                    None => return,
                },
            }
            if self.pending.is_empty() {
                if let Some(done) = closing.take() {
                    let _ = self.closed.set(ClientError::Closed {
                        reason: "the client closed the session".into(),
                    });
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    /// The acknowledgement floor: every id below it is finished here.
    fn floor(&self) -> u32 {
        self.pending.keys().next().copied().unwrap_or(self.next_id)
    }

    async fn send(&self, id: u32, kind: Kind, payload: &Bytes) {
        let frame = Frame::new(kind, id, payload.clone());
        let datagram = Datagram::new(self.session, self.floor(), frame).encode();
        if let Err(err) = self.socket.send(&datagram).await {
            debug!(cause = %err, "UDP send failed");
        }
    }

    /// A new call: numbered, sent, and (unless one-way) waited for.
    async fn start(
        &mut self,
        kind: Kind,
        payload: Bytes,
        reply: Option<oneshot::Sender<Result<Bytes, ClientError>>>,
    ) {
        let id = self.next_id;
        if id == u32::MAX {
            if let Some(reply) = reply {
                let reason = "this UDP session has used all its request ids; connect again";
                let _ = reply.send(Err(ClientError::Closed {
                    reason: reason.into(),
                }));
            }
            return;
        }
        self.next_id += 1;
        let now = Instant::now();
        let Some(reply) = reply else {
            // One-way: sent once, best effort.
            self.send(id, kind, &payload).await;
            return;
        };
        let deadline = now + self.config.call_timeout;
        let due = (now + self.rto.wait(1, fastrand::f64())).min(deadline);
        self.pending.insert(
            id,
            Pending {
                kind,
                payload,
                first_sent: now,
                attempts: 1,
                due,
                deadline,
                reply,
            },
        );
        self.timers.insert((due, id));
        let pending = &self.pending[&id];
        self.send(id, pending.kind, &pending.payload).await;
    }

    /// Resends the calls whose timer is due, or gives them up with a typed timeout.
    async fn retransmit(&mut self) {
        let now = Instant::now();
        while let Some(&(due, id)) = self.timers.first() {
            if due > now {
                break;
            }
            self.timers.pop_first();
            let Some(call) = self.pending.get_mut(&id) else {
                continue;
            };
            let gave_up = call.attempts >= self.config.udp.max_attempts || now >= call.deadline;
            if gave_up || call.reply.is_closed() {
                if let Some(call) = self.pending.remove(&id) {
                    let _ = call.reply.send(Err(ClientError::Timeout {
                        after: now - call.first_sent,
                        attempts: call.attempts,
                    }));
                }
                continue;
            }
            call.attempts += 1;
            call.due = (now + self.rto.wait(call.attempts, fastrand::f64())).min(call.deadline);
            self.timers.insert((call.due, id));
            let (kind, payload) = (call.kind, call.payload.clone());
            self.send(id, kind, &payload).await;
        }
    }

    /// Matches a datagram to its call. Returns whether the server asks for the HELLO
    /// exchange again.
    fn answer(&mut self, bytes: Bytes) -> bool {
        let Ok(datagram) = Datagram::decode(bytes) else {
            return false;
        };
        if datagram.session != self.session {
            return false;
        }
        let frame = datagram.frame;
        let result = match frame.kind {
            Kind::Reply | Kind::Pong => Ok(frame.payload),
            Kind::GoAway => Err(ClientError::GoingAway),
            Kind::Error => match ErrorBody::parse(&frame.payload) {
                Ok(body) if body.code == ErrorCode::HelloNeeded => return true,
                Ok(body) if body.code == ErrorCode::ReplyLost => Err(ClientError::OutcomeUnknown {
                    reason: format!("the server ran the request, but {}", body.message),
                }),
                Ok(body) => Err(ClientError::Server {
                    code: body.code,
                    message: body.message,
                }),
                Err(err) => Err(ClientError::Protocol(err.to_string())),
            },
            _ => return false,
        };
        self.complete(frame.id, result);
        false
    }

    fn complete(&mut self, id: u32, result: Result<Bytes, ClientError>) {
        let Some(call) = self.pending.remove(&id) else {
            // A duplicate answer, or one to a call given up on.
            return;
        };
        self.timers.remove(&(call.due, id));
        // Karn: only an answer to a request sent once measures a round trip.
        if call.attempts == 1 {
            self.rto.sample(call.first_sent.elapsed());
        }
        let _ = call.reply.send(result);
    }

    /// The server lost the session (it restarted, or the session expired) or our address
    /// changed: HELLO again with the same session id. A different server instance means
    /// the requests sent so far may have run in the one that is gone: they end as
    /// outcome unknown. Returns false when the task must end.
    async fn hello_again(&mut self) -> bool {
        if self.last_hello.elapsed() < self.rto.rto() {
            return true;
        }
        let connect = tokio::time::timeout(
            self.config.connect_timeout,
            handshake(&self.socket, self.session, &self.config, &self.rto),
        );
        let welcome = match connect.await {
            Ok(Ok(welcome)) => welcome,
            failed => {
                let reason = match failed {
                    Ok(Err(err)) => format!("the session was lost and the HELLO failed: {err}"),
                    _ => "the session was lost and the HELLO timed out".to_owned(),
                };
                self.fail_all(&reason);
                let _ = self.closed.set(ClientError::Closed { reason });
                return false;
            }
        };
        self.last_hello = Instant::now();
        if welcome.instance != self.welcome.instance {
            self.fail_all("the server restarted: the requests sent before may or may not have run");
            self.welcome = welcome;
            return true;
        }
        for (id, call) in &self.pending {
            self.send(*id, call.kind, &call.payload).await;
        }
        true
    }

    fn fail_all(&mut self, reason: &str) {
        self.timers.clear();
        for (_, call) in std::mem::take(&mut self.pending) {
            let _ = call.reply.send(Err(ClientError::OutcomeUnknown {
                reason: reason.to_owned(),
            }));
        }
    }
}
