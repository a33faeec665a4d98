//! The UDP HELLO exchange, client side: a first HELLO that the server answers with a
//! cookie (proof that we receive at our address), then the HELLO carrying the cookie and
//! the auth token, answered by the server's own HELLO. Each step is resent on the
//! retransmission timer until its answer comes; the caller bounds the whole exchange
//! with the connect timeout.

use bytes::{Bytes, BytesMut};
use tokio::net::UdpSocket;

use super::rto::Rto;
use crate::client::{ClientConfig, ClientError};
use crate::wire::{
    Datagram, ErrorBody, Frame, Hello, Kind, HELLO_AUTH_TOKEN, HELLO_COOKIE, MAX_DATAGRAM_MESSAGE,
};

/// HELLO fields of the server's UDP HELLO (the server defines them; the numbers are the
/// protocol's, docs/PROTOCOL.md).
const HELLO_INSTANCE: u8 = 0x03;
const HELLO_MAX_IN_FLIGHT: u8 = 0x04;

/// What the server's HELLO says.
#[derive(Debug, Clone)]
pub(super) struct Welcome {
    /// The largest message payload it accepts in a datagram.
    pub(super) max_payload: usize,
    /// Names the server process: a change means it restarted.
    pub(super) instance: Option<Bytes>,
    /// Its `max_in_flight` per session.
    pub(super) max_in_flight: usize,
}

/// Runs the exchange on `socket` (connected to the server) for `session`.
pub(super) async fn handshake(
    socket: &UdpSocket,
    session: u64,
    config: &ClientConfig,
    rto: &Rto,
) -> Result<Welcome, ClientError> {
    let max_frame = config.max_frame.min(MAX_DATAGRAM_MESSAGE) as u32;
    let mut cookie: Option<Bytes> = None;
    let mut attempt = 1;
    let mut buf = BytesMut::with_capacity(MAX_DATAGRAM_MESSAGE + 64);
    loop {
        let mut hello = Hello::new(max_frame);
        if let Some(cookie) = &cookie {
            hello.fields.push((HELLO_COOKIE, cookie.clone()));
            if let Some(token) = &config.auth_token {
                hello.fields.push((HELLO_AUTH_TOKEN, token.clone()));
            }
        }
        let datagram = Datagram::new(session, 0, Frame::hello(&hello)).encode();
        // A failed send is retried on the timer, as a lost datagram would be.
        let _ = socket.send(&datagram).await;
        let wait = rto.wait(attempt, fastrand::f64());
        let answer = tokio::time::timeout(wait, async {
            loop {
                buf.clear();
                if socket.recv_buf(&mut buf).await.is_err() {
                    continue;
                }
                let Ok(datagram) = Datagram::decode(buf.split().freeze()) else {
                    continue;
                };
                if datagram.session == session && datagram.frame.id == 0 {
                    match datagram.frame.kind {
                        Kind::Hello | Kind::Error => return datagram.frame,
                        _ => {}
                    }
                }
            }
        })
        .await;
        let Ok(frame) = answer else {
            attempt += 1;
            continue;
        };
        if frame.kind == Kind::Error {
            let body = ErrorBody::parse(&frame.payload)
                .map_err(|err| ClientError::Protocol(err.to_string()))?;
            return Err(ClientError::Server {
                code: body.code,
                message: body.message,
            });
        }
        let hello = Hello::parse(&frame.payload)
            .map_err(|err| ClientError::Protocol(format!("the server's HELLO: {err}")))?;
        if let Some(offered) = hello.field(HELLO_COOKIE) {
            cookie = Some(offered.clone());
            attempt = 1;
            continue;
        }
        let max_in_flight = hello
            .field(HELLO_MAX_IN_FLIGHT)
            .and_then(|v| <[u8; 4]>::try_from(&v[..]).ok())
            .map_or(usize::MAX, |v| u32::from_be_bytes(v) as usize);
        return Ok(Welcome {
            max_payload: (hello.max_frame as usize).min(MAX_DATAGRAM_MESSAGE),
            instance: hello.field(HELLO_INSTANCE).cloned(),
            max_in_flight,
        });
    }
}
