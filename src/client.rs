//! Calling a server: [`Client`] connects, does the HELLO exchange, and then lets any number
//! of tasks call through one connection at once.
//!
//! One task owns the connection. Calls reach it over a bounded channel; it gives each
//! request an id, writes requests in batches, and routes every REPLY or ERROR back to its
//! caller by id, so replies may come back in any order. `Client` is a handle to that task:
//! cloning it is cheap, and the connection closes when the last clone is dropped or
//! [`Client::close`] is called. [`Reconnecting`] wraps it for long-lived programs: when the
//! connection ends, the next call connects again, with backoff and jitter.
//!
//! Every call ends in exactly one of: a reply, "not received" (safe to send again), or
//! "outcome unknown". [`ClientError::outcome`] says which a failure is; "not received" is
//! said only when the protocol proves it (nothing was sent, or the server's GOAWAY shows it
//! never read the request), as `docs/PROTOCOL.md` ("Shutdown and GOAWAY") sets out.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::ToSocketAddrs;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Encoder, FramedRead, FramedWrite};
use tracing::{debug, warn};

use crate::stats::Snapshot;
use crate::transport::tls::ClientTls;
use crate::transport::{connect_stream, BoxRead, BoxWrite, DialError};
use crate::wire::{
    parse_goaway, Codec, CodecError, ErrorBody, ErrorCode, Frame, Hello, Kind, HELLO_AUTH_TOKEN,
    PROTOCOL_VERSION,
};

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Time allowed for the TCP connect and the HELLO exchange together.
    pub connect_timeout: Duration,
    /// Time allowed for one call, from the moment it is made until its reply arrives.
    pub call_timeout: Duration,
    /// Largest reply payload this client accepts (announced to the server in HELLO).
    pub max_frame: usize,
    /// Requests this client keeps in flight at once; further calls wait their turn.
    pub max_in_flight: usize,
    /// The token to present in HELLO, for a server that requires one.
    pub auth_token: Option<Bytes>,
    /// Speak TLS (TCP addresses only).
    pub tls: Option<ClientTls>,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(30),
            max_frame: 16 << 20,
            max_in_flight: 1024,
            auth_token: None,
            tls: None,
        }
    }
}

/// Why a call or a connect failed. Each kind is distinct so that programs can decide what
/// to do (retry, give up, report) without reading the text.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the address.
    #[error("connection refused by {addr}: is the server running?")]
    Refused {
        /// The address tried.
        addr: String,
    },
    /// The connection could not be made for another reason.
    #[error("cannot connect to {addr}: {cause}")]
    Connect {
        /// The address tried.
        addr: String,
        /// What the OS said.
        cause: Arc<io::Error>,
    },
    /// The TCP connect or the HELLO exchange took longer than the connect timeout.
    #[error("connecting to {addr} timed out after {}", humantime::format_duration(*after))]
    ConnectTimeout {
        /// The address tried.
        addr: String,
        /// The connect timeout.
        after: Duration,
    },
    /// No reply within the call timeout: the outcome is unknown, since the server may
    /// have processed the request, or may still.
    #[error("call timed out after {}: the request may or may not have been processed", humantime::format_duration(*after))]
    Timeout {
        /// The call timeout.
        after: Duration,
    },
    /// The payload is larger than the server accepts; nothing was sent.
    #[error("frame too large: the payload is {len} bytes, the server accepts at most {max}")]
    FrameTooLarge {
        /// The payload's size.
        len: usize,
        /// The server's max_frame, from its HELLO.
        max: usize,
    },
    /// The server answered with an ERROR frame.
    #[error("server error {code}: {message}")]
    Server {
        /// The code; see docs/PROTOCOL.md.
        code: ErrorCode,
        /// The server's text.
        message: String,
    },
    /// Not received: the server is draining, and its GOAWAY proves it never read this
    /// request (the request was sent after the GOAWAY's last id, or not sent at all). It
    /// was not processed, so it is safe to send again, elsewhere or later.
    #[error("server is going away and did not receive the request: it was not processed; safe to send again")]
    GoingAway,
    /// Outcome unknown: the request was sent, and the connection ended before its answer
    /// came. The server may have received and processed it (a request at or below a
    /// GOAWAY's last id was received: its handler outlived the server's drain timeout).
    #[error("outcome unknown: {reason}; the request may or may not have been processed")]
    OutcomeUnknown {
        /// What is known about why the connection ended.
        reason: String,
    },
    /// Not received: the connection had already ended when the call was made, so
    /// nothing was sent; safe to send again on a new connection.
    #[error("connection closed: {reason}; the request was not sent")]
    Closed {
        /// What is known about why.
        reason: String,
    },
    /// The server broke the protocol (bad HELLO, undecodable frame).
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl From<DialError> for ClientError {
    fn from(err: DialError) -> ClientError {
        match err {
            DialError::Refused { addr } => ClientError::Refused { addr },
            DialError::Connect { addr, cause } => ClientError::Connect { addr, cause },
            DialError::Timeout { addr, after } => ClientError::ConnectTimeout { addr, after },
        }
    }
}

/// What a failed call means for its request. Every call ends in exactly one of: a reply,
/// "not received" (safe to send again), or "outcome unknown"; a [`ClientError`] says
/// which of the last two, or that the server answered with an ERROR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered: an ERROR frame for this request ([`ClientError::Server`]).
    Answered,
    /// The protocol proves the server never received the request (nothing was sent, or a
    /// GOAWAY showed it was not read): it was not processed and is safe to send again.
    NotReceived,
    /// The request may or may not have been processed; sending it again may run it twice.
    Unknown,
}

impl ClientError {
    /// What this error means for the request: answered (with an ERROR), not received, or
    /// outcome unknown. Programs that retry should resend only on
    /// [`Outcome::NotReceived`] unless the request is safe to run twice.
    pub fn outcome(&self) -> Outcome {
        match self {
            ClientError::Server { .. } => Outcome::Answered,
            ClientError::Refused { .. }
            | ClientError::Connect { .. }
            | ClientError::ConnectTimeout { .. }
            | ClientError::FrameTooLarge { .. }
            | ClientError::GoingAway
            | ClientError::Closed { .. } => Outcome::NotReceived,
            ClientError::Timeout { .. }
            | ClientError::OutcomeUnknown { .. }
            | ClientError::Protocol(_) => Outcome::Unknown,
        }
    }
}

/// A handle to one connection. Cheap to clone; every clone calls through the same
/// connection.
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    closed: Arc<OnceLock<ClientError>>,
    server_max_frame: usize,
    call_timeout: Duration,
}

/// What a caller asks of the connection task.
#[derive(Debug)]
enum Command {
    /// Send a frame of `kind`; REQUEST and PING get `reply`, ONEWAY does not.
    Send {
        kind: Kind,
        payload: Bytes,
        reply: Option<oneshot::Sender<Result<Bytes, ClientError>>>,
    },
    /// Write everything queued, close the write side, and wait for replies in flight.
    Close { done: oneshot::Sender<()> },
}

impl Client {
    /// Connects with the default [`ClientConfig`].
    ///
    /// # Errors
    /// [`ClientError::Refused`], [`ClientError::Connect`], [`ClientError::ConnectTimeout`],
    /// [`ClientError::Server`] when the server answers with an ERROR (server busy, say),
    /// [`ClientError::Protocol`] when it does not speak courier.
    pub async fn connect<A>(addr: A) -> Result<Client, ClientError>
    where
        A: ToSocketAddrs + fmt::Display,
    {
        Client::connect_with(addr, ClientConfig::default()).await
    }

    /// Connects with the given settings.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn connect_with<A>(addr: A, config: ClientConfig) -> Result<Client, ClientError>
    where
        A: ToSocketAddrs + fmt::Display,
    {
        let name = addr.to_string();
        let connect = async {
            let halves = connect_stream(addr, config.connect_timeout, config.tls.as_ref()).await?;
            handshake(halves, &config).await
        };
        let (reader, writer, server_max_frame) =
            tokio::time::timeout(config.connect_timeout, connect)
                .await
                .map_err(|_| ClientError::ConnectTimeout {
                    addr: name.clone(),
                    after: config.connect_timeout,
                })??;

        let (commands, queue) = mpsc::channel(config.max_in_flight.max(1));
        let closed = Arc::new(OnceLock::new());
        let task = Task {
            reader,
            writer,
            encoder: Codec::new(0),
            queue,
            pending: HashMap::new(),
            next_id: 1,
            going_away: None,
            max_in_flight: config.max_in_flight.max(1),
            closed: closed.clone(),
        };
        tokio::spawn(task.run());
        Ok(Client {
            commands,
            closed,
            server_max_frame,
            call_timeout: config.call_timeout,
        })
    }

    /// Sends `payload` as a REQUEST and waits for its reply.
    ///
    /// # Errors
    /// [`ClientError::FrameTooLarge`] before sending anything, [`ClientError::Timeout`],
    /// [`ClientError::Server`] for an ERROR reply; when the connection ends first,
    /// [`ClientError::GoingAway`] or [`ClientError::Closed`] if the server did not receive
    /// the request, [`ClientError::OutcomeUnknown`] if it may have.
    /// [`ClientError::outcome`] sorts them.
    pub async fn call(&self, payload: impl Into<Bytes>) -> Result<Bytes, ClientError> {
        self.exchange(Kind::Request, payload.into()).await
    }

    /// Sends a PING with `payload` and waits for the PONG, returning its payload. Useful as a
    /// heartbeat or to measure the round trip.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn ping(&self, payload: impl Into<Bytes>) -> Result<Bytes, ClientError> {
        self.exchange(Kind::Ping, payload.into()).await
    }

    /// Asks the server for its counters (a STATS frame).
    ///
    /// # Errors
    /// As [`Client::call`], and [`ClientError::Protocol`] when the answer is not the JSON
    /// a courier server sends.
    pub async fn stats(&self) -> Result<Snapshot, ClientError> {
        let json = self.exchange(Kind::Stats, Bytes::new()).await?;
        serde_json::from_slice(&json)
            .map_err(|err| ClientError::Protocol(format!("cannot read the STATS reply: {err}")))
    }

    /// Sends `payload` as a ONEWAY message; returns once it is queued for writing. Call
    /// [`Client::close`] before exiting to be sure queued messages were written.
    ///
    /// # Errors
    /// [`ClientError::FrameTooLarge`], or [`ClientError::GoingAway`] or
    /// [`ClientError::Closed`] when the connection has ended.
    pub async fn send_oneway(&self, payload: impl Into<Bytes>) -> Result<(), ClientError> {
        let payload = payload.into();
        self.check_size(&payload)?;
        let command = Command::Send {
            kind: Kind::Oneway,
            payload,
            reply: None,
        };
        self.commands
            .send(command)
            .await
            .map_err(|_| self.closed_error())
    }

    /// Writes everything queued, closes the connection's write side, and waits for the
    /// replies still in flight (up to the call timeout).
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Close { done }).await.is_ok() {
            let _ = tokio::time::timeout(self.call_timeout, wait).await;
        }
    }

    /// Whether the connection has ended (the server closed it, or it failed); calls on a
    /// closed client fail at once.
    pub fn is_closed(&self) -> bool {
        self.closed.get().is_some() || self.commands.is_closed()
    }

    /// The largest payload the server accepts, from its HELLO.
    pub fn server_max_frame(&self) -> usize {
        self.server_max_frame
    }

    async fn exchange(&self, kind: Kind, payload: Bytes) -> Result<Bytes, ClientError> {
        self.check_size(&payload)?;
        let exchange = async {
            let (reply, wait) = oneshot::channel();
            let command = Command::Send {
                kind,
                payload,
                reply: Some(reply),
            };
            self.commands
                .send(command)
                .await
                .map_err(|_| self.closed_error())?;
            // The task answers every call it takes, so a dropped answer means it died.
            wait.await.unwrap_or_else(|_| {
                Err(ClientError::OutcomeUnknown {
                    reason: "the connection task ended without answering".into(),
                })
            })
        };
        tokio::time::timeout(self.call_timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                after: self.call_timeout,
            })?
    }

    fn check_size(&self, payload: &Bytes) -> Result<(), ClientError> {
        if payload.len() > self.server_max_frame {
            return Err(ClientError::FrameTooLarge {
                len: payload.len(),
                max: self.server_max_frame,
            });
        }
        Ok(())
    }

    fn closed_error(&self) -> ClientError {
        self.closed.get().cloned().unwrap_or(ClientError::Closed {
            reason: "the connection task ended".into(),
        })
    }
}

type Reader = FramedRead<BoxRead, Codec>;
type Writer = FramedWrite<BoxWrite, Codec>;

/// Reads the server's HELLO (or its ERROR) and answers with ours.
async fn handshake(
    (read_half, write_half): (BoxRead, BoxWrite),
    config: &ClientConfig,
) -> Result<(Reader, Writer, usize), ClientError> {
    let mut reader = FramedRead::new(read_half, Codec::new(crate::wire::MAX_HELLO_PAYLOAD));
    let mut writer = FramedWrite::new(write_half, Codec::new(0));
    let first = match reader.next().await {
        Some(Ok(frame)) => frame,
        Some(Err(err)) => return Err(protocol_error(err)),
        None => {
            return Err(ClientError::Closed {
                reason: "the server closed the connection before its HELLO".into(),
            })
        }
    };
    match first.kind {
        Kind::Hello => {}
        Kind::Error => return Err(server_error(&first.payload)),
        other => {
            return Err(ClientError::Protocol(format!(
                "expected HELLO from the server, got {other}"
            )))
        }
    }
    let hello =
        Hello::parse(&first.payload).map_err(|err| ClientError::Protocol(err.to_string()))?;
    if hello.version != PROTOCOL_VERSION {
        return Err(ClientError::Protocol(format!(
            "the server speaks protocol version {}, this client speaks {PROTOCOL_VERSION}",
            hello.version
        )));
    }
    let mut ours = Hello::new(u32::try_from(config.max_frame).unwrap_or(u32::MAX));
    if let Some(token) = &config.auth_token {
        ours.fields.push((HELLO_AUTH_TOKEN, token.clone()));
    }
    writer
        .send(Frame::hello(&ours))
        .await
        .map_err(|err| ClientError::Closed {
            reason: format!("sending HELLO failed: {err}"),
        })?;
    reader.decoder_mut().set_max_payload(config.max_frame);
    Ok((reader, writer, hello.max_frame as usize))
}

fn server_error(payload: &[u8]) -> ClientError {
    match ErrorBody::parse(payload) {
        Ok(body) => ClientError::Server {
            code: body.code,
            message: body.message,
        },
        Err(err) => ClientError::Protocol(err.to_string()),
    }
}

fn protocol_error(err: CodecError) -> ClientError {
    match err {
        CodecError::Io(err) => ClientError::Closed {
            reason: err.to_string(),
        },
        other => ClientError::Protocol(other.to_string()),
    }
}

/// Bytes of queued requests above which the task stops taking new calls until the server
/// has read some: the server applies backpressure, and this passes it on to callers
/// instead of buffering without bound.
const MAX_QUEUED_OUTPUT: usize = 1 << 20;

/// The task that owns the connection.
struct Task {
    reader: Reader,
    writer: Writer,
    encoder: Codec,
    queue: mpsc::Receiver<Command>,
    pending: HashMap<u32, oneshot::Sender<Result<Bytes, ClientError>>>,
    next_id: u32,
    /// The last request id of the server's GOAWAY, once one came.
    going_away: Option<u32>,
    max_in_flight: usize,
    closed: Arc<OnceLock<ClientError>>,
}

impl Task {
    async fn run(mut self) {
        let mut closing: Option<oneshot::Sender<()>> = None;
        let mut write_shut = false;
        let end = loop {
            if closing.is_some() && self.writer.write_buffer().is_empty() {
                if self.pending.is_empty() {
                    // Close the write side properly (a TLS close_notify), so the server
                    // sees an orderly end rather than a cut connection.
                    if !write_shut {
                        let _ = self.writer.get_mut().shutdown().await;
                    }
                    break ClientError::Closed {
                        reason: "the client closed the connection".into(),
                    };
                }
                if !write_shut {
                    // Half-close: the server still answers what it has received.
                    write_shut = true;
                    let _ = self.writer.get_mut().shutdown().await;
                }
            }
            if self.pending.len() >= self.max_in_flight {
                // Calls that timed out stay in `pending` until their reply comes; forget
                // them here, or a server that never answers would block new calls forever.
                self.pending.retain(|_, reply| !reply.is_closed());
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
        // Calls still queued learn the reason when their send fails after we drop.
        self.queue.close();
        while let Ok(command) = self.queue.try_recv() {
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
            if !self.pending.contains_key(&id) {
                return id;
            }
        }
    }

    /// Handles a frame from the server; returns why the connection ends, if it does.
    fn on_frame(&mut self, frame: Frame) -> Option<ClientError> {
        match frame.kind {
            Kind::Reply | Kind::Pong => {
                if let Some(reply) = self.pending.remove(&frame.id) {
                    let _ = reply.send(Ok(frame.payload));
                }
                None
            }
            Kind::Error if frame.id != 0 => {
                if let Some(reply) = self.pending.remove(&frame.id) {
                    let _ = reply.send(Err(server_error(&frame.payload)));
                }
                None
            }
            // An ERROR about the whole connection: the server closes it next.
            Kind::Error => Some(server_error(&frame.payload)),
            Kind::GoAway => match parse_goaway(&frame.payload) {
                Ok(last) => {
                    debug!(last_id = last, "server sent GOAWAY");
                    self.going_away = Some(last);
                    None
                }
                Err(err) => Some(ClientError::Protocol(err.to_string())),
            },
            Kind::Ping => {
                let pong = Frame::new(Kind::Pong, frame.id, frame.payload);
                let _ = self.encoder.encode(pong, self.writer.write_buffer_mut());
                None
            }
            Kind::Hello | Kind::Request | Kind::Oneway | Kind::Stats => {
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

/// How long a [`Reconnecting`] client waits between failed connection attempts: a random
/// time between zero and a ceiling that doubles from `initial` up to `max` with each
/// failure ("full jitter"), so that many clients of a restarted server do not all reconnect
/// in the same instant.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Ceiling of the first wait.
    pub initial: Duration,
    /// Largest ceiling.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The wait after `failures` consecutive failed attempts (at least 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let ceiling = self.initial.saturating_mul(1 << doublings).min(self.max);
        ceiling.mul_f64(fastrand::f64())
    }
}

/// A client that reconnects. Calls go through one connection while it lasts; when it ends
/// (the server closed it, went away, or died), the next call connects again, after a
/// [`Backoff`] wait if the previous attempt failed.
///
/// Nothing is retried behind the caller's back: a call that fails returns its error, so
/// the caller decides, by [`ClientError::outcome`]: [`ClientError::GoingAway`] and
/// [`ClientError::Closed`] mean the request was not received and is safe to send again;
/// [`ClientError::OutcomeUnknown`] and [`ClientError::Timeout`] mean it may have been
/// processed; connection errors ([`ClientError::Refused`] and the like) mean nothing was
/// sent.
#[derive(Debug, Clone)]
pub struct Reconnecting {
    inner: Arc<ReconnectingInner>,
}

#[derive(Debug)]
struct ReconnectingInner {
    addr: String,
    config: ClientConfig,
    backoff: Backoff,
    state: tokio::sync::Mutex<ConnState>,
}

#[derive(Debug, Default)]
struct ConnState {
    client: Option<Client>,
    failures: u32,
    next_attempt: Option<tokio::time::Instant>,
}

impl Reconnecting {
    /// A client for `addr` that connects on its first call.
    pub fn new(addr: impl Into<String>, config: ClientConfig, backoff: Backoff) -> Reconnecting {
        Reconnecting {
            inner: Arc::new(ReconnectingInner {
                addr: addr.into(),
                config,
                backoff,
                state: tokio::sync::Mutex::new(ConnState::default()),
            }),
        }
    }

    /// Sends `payload` as a REQUEST and waits for its reply, connecting first if needed.
    ///
    /// # Errors
    /// As [`Client::connect`] when there is no connection and making one fails, then as
    /// [`Client::call`].
    pub async fn call(&self, payload: impl Into<Bytes>) -> Result<Bytes, ClientError> {
        let client = self.connection().await?;
        let result = client.call(payload).await;
        if matches!(
            result,
            Err(ClientError::GoingAway
                | ClientError::Closed { .. }
                | ClientError::OutcomeUnknown { .. }
                | ClientError::Protocol(_))
        ) {
            self.forget(&client).await;
        }
        result
    }

    /// The current connection, or a new one.
    async fn connection(&self) -> Result<Client, ClientError> {
        let mut state = self.inner.state.lock().await;
        if let Some(client) = &state.client {
            if !client.is_closed() {
                return Ok(client.clone());
            }
            state.client = None;
        }
        if let Some(at) = state.next_attempt {
            tokio::time::sleep_until(at).await;
        }
        match Client::connect_with(self.inner.addr.as_str(), self.inner.config.clone()).await {
            Ok(client) => {
                state.failures = 0;
                state.next_attempt = None;
                state.client = Some(client.clone());
                Ok(client)
            }
            Err(err) => {
                state.failures = state.failures.saturating_add(1);
                let wait = self.inner.backoff.delay(state.failures);
                debug!(addr = %self.inner.addr, cause = %err, ?wait, "connect failed");
                state.next_attempt = Some(tokio::time::Instant::now() + wait);
                Err(err)
            }
        }
    }

    /// Drops `client` as the current connection, unless another call already replaced it.
    async fn forget(&self, client: &Client) {
        let mut state = self.inner.state.lock().await;
        if state
            .client
            .as_ref()
            .is_some_and(|current| current.commands.same_channel(&client.commands))
        {
            state.client = None;
        }
    }
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
