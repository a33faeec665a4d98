//! [`Peer`]: who sent a request, as the logs name it and as `--exec` commands get it in
//! `COURIER_PEER`.

use std::fmt;
use std::net::SocketAddr;

/// Who is at the other end of the connection (or UDP session) a request came on.
///
/// Small and `Copy` (no larger than a `SocketAddr`), so that every connection can keep it without an
/// allocation; it is formatted only where a person or a command reads it. Its
/// [`Display`](fmt::Display) form is the one the server's logs use for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Peer {
    /// A TCP, TLS or UDP client: its address and port, e.g. `127.0.0.1:50312`.
    Ip(SocketAddr),
    /// A Unix socket's client, named by its user and process as the kernel reports them
    /// (`SO_PEERCRED`): `unix uid=1000 pid=4242`, or `unix (peer unknown)`.
    Unix {
        /// The client's user id.
        uid: Option<u32>,
        /// The client's process id, where the platform tells it.
        pid: Option<i32>,
    },
    /// A Windows named pipe's client, named by its process: `pipe pid=4242`.
    Pipe {
        /// The client's process id, where Windows tells it.
        pid: Option<u32>,
    },
    /// Not known to the server: a stream handed to `Server::serve_connection`, or the
    /// requests a worker that joined a router takes from that router (the router's
    /// clients are not named to its workers).
    #[default]
    Unknown,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Peer::Ip(addr) => write!(f, "{addr}"),
            Peer::Unix { uid: None, .. } => f.write_str("unix (peer unknown)"),
            Peer::Unix {
                uid: Some(uid),
                pid,
            } => {
                write!(f, "unix uid={uid}")?;
                match pid {
                    Some(pid) => write!(f, " pid={pid}"),
                    None => Ok(()),
                }
            }
            Peer::Pipe { pid: Some(pid) } => write!(f, "pipe pid={pid}"),
            Peer::Pipe { pid: None } => f.write_str("pipe (peer unknown)"),
            Peer::Unknown => f.write_str("unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_peer_is_named_as_the_logs_name_it() {
        let cases = [
            (
                Peer::Ip("127.0.0.1:5000".parse().unwrap()),
                "127.0.0.1:5000",
            ),
            (Peer::Ip("[::1]:7".parse().unwrap()), "[::1]:7"),
            (
                Peer::Unix {
                    uid: Some(1000),
                    pid: Some(42),
                },
                "unix uid=1000 pid=42",
            ),
            (
                Peer::Unix {
                    uid: Some(0),
                    pid: None,
                },
                "unix uid=0",
            ),
            (
                Peer::Unix {
                    uid: None,
                    pid: None,
                },
                "unix (peer unknown)",
            ),
            (Peer::Pipe { pid: Some(9) }, "pipe pid=9"),
            (Peer::Pipe { pid: None }, "pipe (peer unknown)"),
            (Peer::Unknown, "unknown"),
        ];
        for (peer, text) in cases {
            assert_eq!(peer.to_string(), text);
        }
    }

    #[test]
    fn a_peer_is_no_larger_than_a_socket_address() {
        assert!(std::mem::size_of::<Peer>() <= std::mem::size_of::<SocketAddr>());
    }
}
