//! UDP sockets: binding the server's, opening a client's towards a server, and the
//! random ids a UDP session is named by. It knows no datagram format.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;

use super::DialError;

/// The prefix of UDP addresses: `udp:HOST:PORT`.
pub const UDP_PREFIX: &str = "udp:";

/// Binds a UDP socket at `addr` (`HOST:PORT`, without the prefix).
///
/// # Errors
/// What the OS said, for a name that does not resolve or an address in use.
pub async fn bind_udp(addr: &str) -> io::Result<UdpSocket> {
    UdpSocket::bind(addr).await
}

/// A socket bound to a free local port of the right family and connected to the server
/// at `addr` (`HOST:PORT`), so that only its datagrams are received.
///
/// # Errors
/// [`DialError::Connect`] naming `udp:ADDR` when it does not resolve or the socket cannot
/// be made.
pub async fn connect_udp(addr: &str) -> Result<(UdpSocket, SocketAddr), DialError> {
    let fail = |cause: io::Error| DialError::Connect {
        addr: format!("{UDP_PREFIX}{addr}"),
        cause: Arc::new(cause),
    };
    let server = tokio::net::lookup_host(addr)
        .await
        .map_err(fail)?
        .next()
        .ok_or_else(|| {
            fail(io::Error::new(
                io::ErrorKind::NotFound,
                "the name has no address",
            ))
        })?;
    let local = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(local).await.map_err(fail)?;
    socket.connect(server).await.map_err(fail)?;
    Ok((socket, server))
}

/// A random u64 from the system's secure generator: session ids and server instance
/// ids, which a peer must know to speak in a session, so they must not be guessable.
pub fn random_u64() -> u64 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 8];
    // Without an entropy source nothing here can be secure; such a system cannot run it.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random generator");
    u64::from_be_bytes(bytes)
}
