//! courier hands whole messages between programs over sockets: request and reply, or
//! one-way, with many clients at once, on a server meant to run for months.
//!
//! A plain TCP socket delivers a byte stream: one read can return half a message or two
//! glued together. courier puts a small, documented frame format on the stream
//! (`docs/PROTOCOL.md`: a 4-byte length, a kind byte, a request id, the payload), so each
//! side always gets whole messages, and request ids let a client keep many requests in
//! flight on one connection.
//!
//! ```no_run
//! use bytes::Bytes;
//! use courier::{client::Client, config::Config, handler, server};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // A server that upper-cases every request, on a port the OS picks.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let handler = |req: handler::Request| async move {
//!     Ok::<_, handler::HandlerError>(Bytes::from(req.payload.to_ascii_uppercase()))
//! };
//! tokio::spawn(server::run(listener, Config::default(), handler, tokio::signal::ctrl_c()));
//!
//! let client = Client::connect(addr).await?;
//! assert_eq!(client.call("hello").await?, "HELLO");
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - [`codec`]: the wire format: [`codec::Frame`], the HELLO and ERROR bodies, and the
//!   `Decoder`/`Encoder` used through tokio-util's `Framed`.
//! - [`server`]: the accept loop, one task per connection, limits, graceful shutdown, and
//!   the [`server::Handler`] trait that answers requests.
//! - `connection.rs` (private): the I/O plumbing every connection loop shares: the outbox
//!   bounding unwritten output, the poller for reads, writes and deadlines, the graceful
//!   close.
//! - `busy_poll.rs` (private): `busy_poll`, polling sockets for a while after each
//!   request instead of sleeping, for lower round-trip latency.
//! - [`stats`]: the server's counters (connections by close reason, requests, replies),
//!   read with a STATS frame (`courier stats ADDR`) and logged at shutdown.
//! - [`tls`]: TLS with rustls: server certificates, client CAs, client certificates.
//! - [`transport`]: addresses (`HOST:PORT`, `unix:/path`) and the listeners behind them.
//! - [`client`]: [`client::Client`], which many tasks can call through at once.
//! - [`compat`]: plain framing (4-byte length + payload) and raw framing (none), for
//!   programs written against a bare socket: the server loop for both, and their clients.
//! - [`exec`]: `--exec CMD`: handlers that run a command per request, or keep a pool of
//!   worker processes speaking plain framing.
//! - [`config`]: server settings and the embedded default `config/courier.toml`.
//! - [`bench`](mod@bench): the `courier bench` load generator (closed loop, open loop, one-way),
//!   verifying every reply and measuring latency with an HdrHistogram.
//! - `main.rs`: the `courier` command line (`serve`, `send`); it only parses arguments,
//!   sets up logging and calls into this library.

pub mod bench;
pub mod client;
pub mod config;
pub mod handler;
pub mod server;
pub mod stats;
pub mod transport;
pub mod wire;

/// Compiles the README's Rust examples as doctests, so the README matches the code.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
