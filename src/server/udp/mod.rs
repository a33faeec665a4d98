//! UDP (`udp:HOST:PORT`): request and reply over datagrams, each request run at most
//! once, with the same handler, limits, auth token and counters as the stream transports.
//!
//! One task owns the socket: it decodes each datagram, hands it to the [`Endpoint`] (the
//! protocol without I/O: sessions, the HELLO cookie, the reply cache), runs the requests
//! it hands out concurrently on this task, up to `max_in_flight` per session, and sends
//! what the endpoint answers. A garbage datagram costs one failed decode and nothing
//! else. On shutdown, new requests get a GOAWAY for their id (not received), duplicates
//! of received ones are still answered, and the loop ends when every running request has
//! been answered or `drain_timeout` passes.
//!
//! Layout: this file (the socket loop), `endpoint.rs` (the protocol state), `cache.rs`
//! (the reply cache), `cookie.rs` (the address-validation cookie).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::Server;
use crate::handler::{call, Handler};

mod cache;
mod cookie;
mod endpoint;

pub use endpoint::{Endpoint, Output, AMPLIFICATION_LIMIT, HELLO_INSTANCE, HELLO_MAX_IN_FLIGHT};

/// Receive buffer: larger than any UDP datagram, so that one over the limit is seen whole
/// and answered with an ERROR naming the limit rather than cut short.
const RECV_BUFFER: usize = 65_536;

/// How often idle sessions and expired replies are looked for, at the most.
const TICK: Duration = Duration::from_secs(1);

impl<H: Handler> Server<H> {
    /// Serves UDP on `socket` until `shutdown` completes, then drains (see the module
    /// documentation). Logs the counters when it returns.
    pub async fn run_udp(self, socket: UdpSocket, shutdown: impl Future) {
        let shared = self.shared;
        let ready = self.drain;
        if let Ok(addr) = socket.local_addr() {
            // The address last: scripts read the rest of the line after "addr=".
            let max_payload = shared.config.udp_max_payload;
            info!(max_payload, addr = %format!("udp:{addr}"), "listening");
        }
        let stats = &shared.stats;
        let mut endpoint = Endpoint::new(shared.config.clone());
        let mut running = FuturesUnordered::new();
        let mut buf = BytesMut::with_capacity(RECV_BUFFER);
        let mut next_tick = Instant::now() + TICK;
        let mut drain_until: Option<Instant> = None;
        tokio::pin!(shutdown);
        loop {
            let drain_deadline = drain_until.unwrap_or_else(far_future);
            let output = tokio::select! {
                biased;
                Some((session, done)) = running.next() => {
                    let done: crate::handler::Finished = done;
                    endpoint.finished(session, done.id, done.oneway, done.result, Instant::now())
                }
                received = socket.recv_buf_from(&mut buf) => match received {
                    Ok((_, peer)) => {
                        let bytes = buf.split().freeze();
                        buf.reserve(RECV_BUFFER);
                        endpoint.datagram(bytes, peer, Instant::now(), stats)
                    }
                    Err(err) => {
                        // ICMP port unreachable from an earlier send, say: about one peer.
                        debug!(cause = %err, "UDP receive failed");
                        Output::default()
                    }
                },
                () = tokio::time::sleep_until(next_tick) => {
                    endpoint.tick(Instant::now());
                    next_tick = Instant::now() + TICK;
                    Output::default()
                }
                _ = &mut shutdown, if drain_until.is_none() => {
                    info!(running = endpoint.running(), drain_timeout = ?shared.config.drain_timeout, "draining");
                    endpoint.drain();
                    // Not ready from the first moment of the drain (/readyz, STOPPING=1).
                    ready.cancel();
                    drain_until = Some(Instant::now() + shared.config.drain_timeout);
                    Output::default()
                }
                () = tokio::time::sleep_until(drain_deadline), if drain_until.is_some() => {
                    warn!(running = endpoint.running(), "drain timeout passed; requests still running are dropped (outcome unknown to their clients)");
                    break;
                }
            };
            if let Some((session, request)) = output.run {
                let handler = &shared.handler;
                running.push(async move { (session, call(handler, request).await) });
            }
            send_all(&socket, output.send).await;
            endpoint.flush(stats);
            if drain_until.is_some() && endpoint.running() == 0 {
                info!("shut down cleanly");
                break;
            }
        }
        endpoint.flush(stats);
        info!(counters = %stats.snapshot(), "counters at shutdown");
    }
}

/// Sends each datagram; a failure concerns one peer and is only logged.
async fn send_all(socket: &UdpSocket, datagrams: Vec<(Bytes, SocketAddr)>) {
    for (bytes, peer) in datagrams {
        if let Err(err) = socket.send_to(&bytes, peer).await {
            debug!(%peer, cause = %err, "UDP send failed");
        }
    }
}

/// A deadline that never comes, for the branch that is disabled anyway.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
