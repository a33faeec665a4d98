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
//!
//! Layout: this file (the handle, its settings and errors), `task.rs` (the task that owns
//! the connection), `hello.rs` (the HELLO exchange), `reconnecting.rs` ([`Reconnecting`]),
//! `plain.rs` (clients for plain and raw framing), `udp/` (the same handle over UDP, with
//! retransmission: `udp:HOST:PORT`).

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::ToSocketAddrs;
use tokio::sync::{mpsc, oneshot};

#[cfg(feature = "json")]
use crate::stats::Snapshot;
use crate::transport::tls::ClientTls;
use crate::transport::{connect_stream, BoxRead, BoxWrite, DialError};
use crate::wire::{ErrorCode, Frame, Kind, RequestOptions, HELLO_REQUEST_OPTIONS};

pub mod hello;
mod plain;
mod reconnecting;
mod task;
mod udp;

pub use plain::{raw_exchange, PlainClient, RawOptions};
pub use reconnecting::{Backoff, Reconnecting};
pub use udp::UdpOptions;

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
    /// Retransmission settings for `udp:HOST:PORT` addresses.
    pub udp: UdpOptions,
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
            udp: UdpOptions::default(),
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
    /// No reply within the call timeout (or, over UDP, after the last retransmission):
    /// the outcome is unknown, since the server may have processed the request, or may
    /// still. Over UDP the server runs a request at most once, but its every answer may
    /// have been lost.
    #[error("call timed out after {}{}: the request may or may not have been processed", humantime::format_duration(*after), attempts_text(*attempts))]
    Timeout {
        /// The time from the call (over UDP: its first send) to giving up.
        after: Duration,
        /// UDP: the datagrams sent for the call (the first and the retransmissions); 0
        /// on stream transports, which send a request once.
        attempts: u32,
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
    /// Connected, but the peer's first bytes cannot start a courier server's HELLO: it
    /// speaks another protocol (HTTP, SSH, TLS, plain framing...). Nothing was sent.
    #[error(
        "connected, but the peer did not speak courier (first bytes: {})",
        describe_bytes(first)
    )]
    NotCourier {
        /// The first bytes received (up to 64).
        first: Bytes,
    },
    /// Connected, but the peer sent nothing within the connect timeout, where a courier
    /// server sends its HELLO at once. Nothing was sent.
    #[error("connected, but the peer sent nothing within the connect timeout, where a courier server sends its HELLO at once: is it a TLS port (connect with TLS: --tls-ca), or a server in plain or raw framing (--framing plain|raw)?")]
    NoHello,
    /// TLS failed: the handshake, or a TLS port reached without TLS. Nothing was sent.
    #[error("{reason}")]
    Tls {
        /// What went wrong.
        reason: String,
    },
}

/// Bytes as hex and as text, for a person: `48 54 54 50 = 'HTTP'` (at most 16 bytes;
/// bytes that are not printable ASCII show as `.`).
pub fn describe_bytes(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(16)];
    let hex: Vec<String> = shown.iter().map(|b| format!("{b:02x}")).collect();
    let text: String = shown
        .iter()
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    let more = if bytes.len() > shown.len() {
        " ..."
    } else {
        ""
    };
    let tls = match bytes {
        [0x15, 0x03, ..] => ": a TLS alert, so this port speaks TLS (--tls-ca)",
        [0x16, 0x03, ..] => ": a TLS handshake, so this port speaks TLS (--tls-ca)",
        _ => "",
    };
    format!("{}{more} = '{text}'{tls}", hex.join(" "))
}

impl From<DialError> for ClientError {
    fn from(err: DialError) -> ClientError {
        match err {
            DialError::Refused { addr } => ClientError::Refused { addr },
            DialError::Connect { addr, cause } => ClientError::Connect { addr, cause },
            DialError::Timeout { addr, after } => ClientError::ConnectTimeout { addr, after },
            DialError::Tls { addr, reason } => ClientError::Tls {
                reason: format!("TLS handshake failed with {addr}: {reason}"),
            },
        }
    }
}

/// " and N attempts", for a UDP timeout's text.
fn attempts_text(attempts: u32) -> String {
    match attempts {
        0 => String::new(),
        1 => " and 1 attempt".to_owned(),
        n => format!(" and {n} attempts"),
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
            // A router's answers for requests it could not deliver, or lost.
            ClientError::Server {
                code: ErrorCode::OutcomeUnknown,
                ..
            } => Outcome::Unknown,
            ClientError::Server {
                code: ErrorCode::NoBackend,
                ..
            } => Outcome::NotReceived,
            ClientError::Server { .. } => Outcome::Answered,
            ClientError::Refused { .. }
            | ClientError::Connect { .. }
            | ClientError::ConnectTimeout { .. }
            | ClientError::FrameTooLarge { .. }
            | ClientError::GoingAway
            | ClientError::NotCourier { .. }
            | ClientError::NoHello
            | ClientError::Tls { .. }
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
    going_away: Arc<AtomicBool>,
    server_max_frame: usize,
    call_timeout: Duration,
    /// The server reads REQUEST_EXT (its HELLO said so): calls carry their options.
    request_options: bool,
}

/// How one call is made ([`Client::call_with`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallOptions {
    /// The request may run twice without harm: a router may send it to another backend
    /// after a failure whose outcome is unknown (within its retry budget).
    pub idempotent: bool,
    /// The time this call waits, instead of the client's `call_timeout`. It travels with
    /// the request, so the server can drop work nobody waits for any more.
    pub timeout: Option<Duration>,
}

/// What a caller asks of the connection task.
#[derive(Debug)]
pub(crate) enum Command {
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
        if let Some(target) = name.strip_prefix(crate::transport::UDP_PREFIX) {
            return udp::connect(target, &config).await;
        }
        let deadline = tokio::time::Instant::now() + config.connect_timeout;
        let connect = async {
            let (read_half, write_half) =
                connect_stream(addr, config.connect_timeout, config.tls.as_ref()).await?;
            let token = config.auth_token.as_ref();
            hello::exchange_hello(read_half, write_half, config.max_frame, token, deadline).await
        };
        let (reader, writer, server_hello) = tokio::time::timeout(config.connect_timeout, connect)
            .await
            .map_err(|_| ClientError::ConnectTimeout {
                addr: name.clone(),
                after: config.connect_timeout,
            })??;

        Ok(Client::start(reader, writer, &server_hello, &config))
    }

    /// A client on a stream that the other side dialled (a worker joining a router, which
    /// speaks as the server): does the HELLO exchange, then asks `accept` about the
    /// server's HELLO. When `accept` refuses (a wrong join token, say), sends ERROR 15
    /// (authentication failed) and closes.
    ///
    /// # Errors
    /// As [`Client::connect`], and [`ClientError::Server`] with code 15 when `accept`
    /// refused.
    pub async fn over_stream<S>(
        stream: S,
        config: ClientConfig,
        accept: impl FnOnce(&crate::wire::Hello) -> bool,
    ) -> Result<Client, ClientError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (read_half, write_half) = tokio::io::split(stream);
        let (read_half, write_half): (BoxRead, BoxWrite) =
            (Box::pin(read_half), Box::pin(write_half));
        let token = config.auth_token.as_ref();
        let deadline = tokio::time::Instant::now() + config.connect_timeout;
        let exchange =
            hello::exchange_hello(read_half, write_half, config.max_frame, token, deadline);
        let (reader, mut writer, server_hello) =
            tokio::time::timeout(config.connect_timeout, exchange)
                .await
                .map_err(|_| ClientError::ConnectTimeout {
                    addr: "a joining peer".into(),
                    after: config.connect_timeout,
                })??;
        if !accept(&server_hello) {
            let refusal = Frame::error(0, ErrorCode::AuthFailed, "authentication failed");
            let _ = futures::SinkExt::send(&mut writer, refusal).await;
            return Err(ClientError::Server {
                code: ErrorCode::AuthFailed,
                message: "the peer's HELLO was refused".into(),
            });
        }
        Ok(Client::start(reader, writer, &server_hello, &config))
    }

    /// Starts the task of a connection past its HELLO exchange.
    fn start(
        reader: task::Reader,
        writer: task::Writer,
        server_hello: &crate::wire::Hello,
        config: &ClientConfig,
    ) -> Client {
        let (commands, queue) = mpsc::channel(config.max_in_flight.max(1));
        let closed = Arc::new(OnceLock::new());
        let going_away = Arc::new(AtomicBool::new(false));
        let task = task::Task::new(
            reader,
            writer,
            queue,
            config.max_in_flight.max(1),
            closed.clone(),
            going_away.clone(),
        );
        tokio::spawn(task.run());
        Client {
            commands,
            closed,
            going_away,
            server_max_frame: server_hello.max_frame as usize,
            call_timeout: config.call_timeout,
            request_options: server_hello.field(HELLO_REQUEST_OPTIONS).is_some(),
        }
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
        self.call_with(payload, CallOptions::default()).await
    }

    /// [`Client::call`] for a request that may run twice without harm: a router
    /// (`courier route`) may send it again, to another backend, after a failure whose
    /// outcome is unknown, so the caller sees fewer such failures.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn call_idempotent(&self, payload: impl Into<Bytes>) -> Result<Bytes, ClientError> {
        let options = CallOptions {
            idempotent: true,
            ..CallOptions::default()
        };
        self.call_with(payload, options).await
    }

    /// [`Client::call`] with options. To a server that reads REQUEST_EXT (its HELLO says
    /// so; every courier server since it was added does), the request carries them: the
    /// idempotent flag and the call's timeout. To an older server, or when the payload
    /// leaves no room for the 5 bytes of options within the server's max_frame, it goes
    /// as a plain REQUEST, without them (so not idempotent, and with no deadline).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn call_with(
        &self,
        payload: impl Into<Bytes>,
        options: CallOptions,
    ) -> Result<Bytes, ClientError> {
        let timeout = options.timeout.unwrap_or(self.call_timeout);
        let payload = payload.into();
        // A payload that leaves no room for the options in the server's max_frame goes
        // without them, so the largest payload a server takes can still be sent.
        let room = payload.len() + RequestOptions::LEN <= self.server_max_frame;
        if !self.request_options || !room {
            return self.exchange_within(Kind::Request, payload, timeout).await;
        }
        let header = RequestOptions {
            idempotent: options.idempotent,
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
        };
        self.exchange_within(Kind::RequestExt, header.encode(&payload), timeout)
            .await
    }

    /// Sends a PING with `payload` and waits for the PONG, returning its payload. Useful as a
    /// heartbeat or to measure the round trip.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn ping(&self, payload: impl Into<Bytes>) -> Result<Bytes, ClientError> {
        self.exchange(Kind::Ping, payload.into()).await
    }

    /// Asks the server for its counters (a STATS frame) and returns its JSON as it came
    /// (docs/PROTOCOL.md, "Counters and STATS").
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn stats_json(&self) -> Result<Bytes, ClientError> {
        self.exchange(Kind::Stats, Bytes::new()).await
    }

    /// Asks the server for its counters (a STATS frame). Needs the `json` feature (on by
    /// default); [`Client::stats_json`] does without.
    ///
    /// # Errors
    /// As [`Client::call`], and [`ClientError::Protocol`] when the answer is not the JSON
    /// a courier server sends.
    #[cfg(feature = "json")]
    pub async fn stats(&self) -> Result<Snapshot, ClientError> {
        let json = self.stats_json().await?;
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

    /// Whether the server sent GOAWAY: it reads no new request on this connection (calls
    /// made now fail at once with [`ClientError::GoingAway`]), and answers those it has.
    pub fn is_going_away(&self) -> bool {
        self.going_away.load(Ordering::Relaxed)
    }

    /// The largest payload the server accepts, from its HELLO.
    pub fn server_max_frame(&self) -> usize {
        self.server_max_frame
    }

    async fn exchange(&self, kind: Kind, payload: Bytes) -> Result<Bytes, ClientError> {
        self.exchange_within(kind, payload, self.call_timeout).await
    }

    async fn exchange_within(
        &self,
        kind: Kind,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
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
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                after: timeout,
                attempts: 0,
            })?
    }

    /// A handle to a connection task started elsewhere (the UDP client's).
    pub(crate) fn from_task(
        commands: mpsc::Sender<Command>,
        closed: Arc<OnceLock<ClientError>>,
        server_max_frame: usize,
        call_timeout: Duration,
    ) -> Client {
        Client {
            commands,
            closed,
            going_away: Arc::new(AtomicBool::new(false)),
            server_max_frame,
            call_timeout,
            // A UDP server reads no REQUEST_EXT (its HELLO does not say it does).
            request_options: false,
        }
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
