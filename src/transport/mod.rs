//! Transports: what an address names and how the server listens on it and a client
//! connects to it.
//!
//! - `HOST:PORT`: TCP (the default).
//! - `unix:/path/to.sock`: a Unix domain socket (Unix only). The socket file is created
//!   with mode `socket_mode` (0600, owner only, by default); a stale file left by a dead
//!   server is replaced, a live server's is not; the file is removed when the listener is
//!   dropped (at shutdown). On Linux the server logs each peer's uid and pid.
//! - `pipe:NAME`: a Windows named pipe (`\\.\pipe\NAME`), Windows only. The server keeps
//!   one idle pipe instance waiting and creates the next as each client connects; a second
//!   server on the same name is refused (`first_pipe_instance`). This code is compiled for
//!   Windows (`cargo check --target x86_64-pc-windows-gnu`) but has not been run: the
//!   project's machines are Linux.
//! - `udp:HOST:PORT`: UDP, one message per datagram (`udp.rs` has the sockets; the
//!   protocol on them is the server's and the client's).
//!
//! Layout: `listen.rs` (binding and accepting), `dial.rs` (connecting), `tls.rs` (TLS on
//! either side), `udp.rs` (UDP sockets). This layer imports nothing else of the crate.
//!
//! Everything above the byte stream (the protocol, handlers, limits, shutdown) is the same
//! code for every transport: the connection loop is generic over the stream type.

use std::path::Path;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

mod dial;
mod listen;
#[cfg(windows)]
mod pipe_security;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(not(feature = "tls"))]
#[path = "tls_off.rs"]
pub mod tls;
mod udp;

pub use dial::DialError;
// The blocking socket is the load generator's.
#[cfg_attr(not(feature = "bench"), allow(unused_imports))]
pub(crate) use dial::{connect_stream, BlockingStream, Socket};
#[cfg(windows)]
pub(crate) use listen::pipe_client_pid;
pub(crate) use listen::Accepted;
#[cfg(windows)]
pub use listen::NamedPipe;
#[cfg(unix)]
pub use listen::UnixSocket;
pub use listen::{bind, Listener};
pub use udp::{bind_udp, connect_udp, random_u64, UDP_PREFIX};

/// A stream's reading half, whatever the transport.
pub(crate) type BoxRead = Pin<Box<dyn AsyncRead + Send>>;
/// A stream's writing half, whatever the transport.
pub(crate) type BoxWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// The prefix of Unix socket addresses.
pub const UNIX_PREFIX: &str = "unix:";
/// The prefix of Windows named pipe addresses.
pub const PIPE_PREFIX: &str = "pipe:";

/// Parses an octal permission string such as "0600" or "660".
///
/// # Errors
/// A message naming the value when it is not octal or above 0777.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| format!("socket_mode {text:?} is not an octal mode such as \"0600\""))
}

/// A warning when a secret's file (a token, a private key) can be read by its group or by
/// everyone; `None` when only the owner can, or the permissions cannot be known.
pub fn readable_by_others(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode();
        (mode & 0o044 != 0).then(|| {
            format!(
                "{} holds a secret but its permissions are {:o}: other users may read it (chmod 600 {})",
                path.display(),
                mode & 0o777,
                path.display()
            )
        })
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}
