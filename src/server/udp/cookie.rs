//! The stateless address-validation cookie of the UDP HELLO exchange, as QUIC's Retry
//! token and DTLS's HelloVerifyRequest do it: the server proves a peer can receive at the
//! address it claims before sending it more than 3 times what it received from it, and
//! keeps no state for a peer until then.
//!
//! A cookie is `slice (u32) || HMAC-SHA256(secret, slice || session || address)[..16]`,
//! where `slice` numbers the 60-second period it was made in; a cookie of the current or
//! the previous period is accepted, so one lives 60 to 120 seconds. The secret is random
//! per server process. HMAC-SHA256 comes from `ring`, already in the tree for rustls.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// How long one cookie period lasts.
const PERIOD: Duration = Duration::from_secs(60);

/// Bytes of the MAC kept in a cookie: 128 bits, as QUIC's stateless reset token.
const TAG_LEN: usize = 16;

/// Bytes of a cookie.
pub(crate) const COOKIE_LEN: usize = 4 + TAG_LEN;

/// A server's cookie key.
#[derive(Debug)]
pub(crate) struct Cookies {
    key: hmac::Key,
}

impl Cookies {
    /// A key from the system's secure random generator.
    pub(crate) fn new() -> Cookies {
        let mut secret = [0u8; 32];
        // The system generator only fails where there is no entropy source at all, and
        // then nothing secure can be done: a server without it must not start.
        SystemRandom::new()
            .fill(&mut secret)
            .expect("the system's random generator");
        Cookies {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
        }
    }

    /// The cookie for `peer` and `session` now.
    pub(crate) fn make(&self, peer: SocketAddr, session: u64) -> [u8; COOKIE_LEN] {
        self.make_at(current_slice(), peer, session)
    }

    /// Whether `cookie` was made by this server for `peer` and `session`, in this period
    /// or the one before.
    pub(crate) fn check(&self, cookie: &[u8], peer: SocketAddr, session: u64) -> bool {
        let Some((slice, _)) = cookie.split_first_chunk::<4>() else {
            return false;
        };
        let slice = u32::from_be_bytes(*slice);
        let now = current_slice();
        if cookie.len() != COOKIE_LEN || (slice != now && slice.wrapping_add(1) != now) {
            return false;
        }
        let expected = self.make_at(slice, peer, session);
        // Compared in constant time (ring's verify wants the whole 32-byte tag).
        use subtle::ConstantTimeEq;
        bool::from(expected[4..].ct_eq(&cookie[4..]))
    }

    fn make_at(&self, slice: u32, peer: SocketAddr, session: u64) -> [u8; COOKIE_LEN] {
        let tag = hmac::sign(&self.key, &message(slice, peer, session));
        let mut cookie = [0u8; COOKIE_LEN];
        cookie[..4].copy_from_slice(&slice.to_be_bytes());
        cookie[4..].copy_from_slice(&tag.as_ref()[..TAG_LEN]);
        cookie
    }
}

/// What the MAC covers: the period, the session, the peer's address and port.
fn message(slice: u32, peer: SocketAddr, session: u64) -> Vec<u8> {
    let mut message = Vec::with_capacity(4 + 8 + 16 + 2);
    message.extend_from_slice(&slice.to_be_bytes());
    message.extend_from_slice(&session.to_be_bytes());
    match peer.ip() {
        IpAddr::V4(ip) => message.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => message.extend_from_slice(&ip.octets()),
    }
    message.extend_from_slice(&peer.port().to_be_bytes());
    message
}

/// The number of the current period. Wall-clock time, since cookies must survive the
/// server's own clock only; a clock before 1970 counts as period 0.
fn current_slice() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // Periods fit a u32 for 8,000 years.
    (secs / PERIOD.as_secs()) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_validates_only_its_own_address_port_and_session() {
        let cookies = Cookies::new();
        let peer: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let cookie = cookies.make(peer, 7);
        assert!(cookies.check(&cookie, peer, 7));
        assert!(!cookies.check(&cookie, "192.0.2.1:4001".parse().unwrap(), 7));
        assert!(!cookies.check(&cookie, "192.0.2.2:4000".parse().unwrap(), 7));
        assert!(!cookies.check(&cookie, peer, 8));
        assert!(
            !Cookies::new().check(&cookie, peer, 7),
            "another server's key"
        );
        let mut forged = cookie;
        forged[COOKIE_LEN - 1] ^= 1;
        assert!(!cookies.check(&forged, peer, 7));
        assert!(!cookies.check(&cookie[..COOKIE_LEN - 1], peer, 7));
        assert!(!cookies.check(&[], peer, 7));
    }

    #[test]
    fn a_cookie_of_the_previous_period_passes_and_an_older_one_does_not() {
        let cookies = Cookies::new();
        let peer: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let now = current_slice();
        assert!(cookies.check(&cookies.make_at(now - 1, peer, 1), peer, 1));
        assert!(!cookies.check(&cookies.make_at(now - 2, peer, 1), peer, 1));
        assert!(!cookies.check(&cookies.make_at(now + 1, peer, 1), peer, 1));
    }
}
