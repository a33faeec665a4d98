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
//! Folders are layers and imports only go down (`docs/ARCHITECTURE.md`, checked by
//! `tests/layers.rs`):
//! - [`wire`]: bytes to frames and back: [`wire::Frame`], the HELLO, ERROR and GOAWAY
//!   bodies, the courier, plain and raw codecs. Imports nothing else of the crate.
//! - [`transport`]: addresses (`HOST:PORT`, `unix:/path`, `pipe:NAME`, `udp:HOST:PORT`), listening,
//!   dialing, and TLS with rustls ([`transport::tls`]). Imports nothing else of the crate.
//! - [`stats`]: the server's counters and close reasons, declared once in a table, read
//!   with a STATS frame (`courier stats ADDR`) and logged at shutdown.
//! - [`handler`]: what answers a request: the [`handler::Handler`] trait, the built-ins,
//!   and `--exec` (a process per request, or a pool of workers).
//! - [`config`]: server settings as plain data and the embedded default
//!   `config/courier.toml`.
//! - [`server`]: the accept loop, one task per connection, limits, graceful shutdown; the
//!   courier session and the plain/raw session behind one connection driver.
//! - [`client`]: [`client::Client`], which many tasks can call through at once,
//!   [`client::Reconnecting`], and clients for plain and raw framing.
//! - [`bench`](mod@bench): the `courier bench` load generator (closed loop, open loop,
//!   one-way), verifying every reply and measuring latency with an HdrHistogram.
//! - `src/main.rs` and `src/cli/`: the `courier` command line; they parse arguments, set up
//!   logging, choose the handler and call into this library.
//!
//! # Features
//! All on by default: `cli` (the binary's argument parsing, logging and output; needs the
//! rest), `json` ([`client::Client::stats`]), `bench` ([`bench`](mod@bench)), `tls`
//! ([`transport::tls`] with rustls; without it the TLS types have no values and loading
//! certificates says so) and `exec` ([`handler::Exec`], [`handler::ExecPool`]). With
//! `default-features = false` the library is the protocol, server and client on Tokio.

// Without TLS, the TLS types have no values: the code that would use one is unreachable.
#![cfg_attr(not(feature = "tls"), allow(unreachable_code))]

#[cfg(feature = "bench")]
pub mod bench;
pub mod client;
pub mod config;
pub mod handler;
#[cfg(feature = "route")]
pub mod route;
pub mod server;
pub mod stats;
pub mod transport;
pub mod wire;

/// Compiles the README's Rust examples as doctests, so the README matches the code.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
