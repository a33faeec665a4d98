//! Dialing: connecting to an address of any transport, with TLS when asked, within a
//! timeout, with errors that name the address.

// Socket's blocking form is the load generator's: unused without the bench feature.
#![cfg_attr(not(feature = "bench"), allow(dead_code))]

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};

use super::tls::ClientTls;
use super::{BoxRead, BoxWrite, PIPE_PREFIX, UNIX_PREFIX};

/// Why a connection could not be made. Nothing was sent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DialError {
    /// Nothing listens at the address (a refused TCP connect, no such socket file or
    /// pipe).
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
    /// The TLS handshake failed.
    #[error("TLS handshake failed with {addr}: {reason}")]
    Tls {
        /// The address tried.
        addr: String,
        /// What went wrong, with a hint.
        reason: String,
    },
    /// Connecting (or the TLS handshake) took longer than the timeout.
    #[error("connecting to {addr} timed out after {}", humantime::format_duration(*after))]
    Timeout {
        /// The address tried.
        addr: String,
        /// The timeout.
        after: Duration,
    },
}

/// Runs one connect attempt within `timeout`, naming `addr` in its errors. Nothing
/// listening there (a refused TCP connect, no such socket file or pipe) is
/// [`DialError::Refused`].
async fn attempt<T>(
    addr: &str,
    timeout: Duration,
    connect: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T, DialError> {
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| DialError::Timeout {
            addr: addr.to_owned(),
            after: timeout,
        })?
        .map_err(|err| match err.kind() {
            io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => DialError::Refused {
                addr: addr.to_owned(),
            },
            _ => DialError::Connect {
                addr: addr.to_owned(),
                cause: Arc::new(err),
            },
        })
}

/// The error for an address form this system does not have (`unix:` on Windows,
/// `pipe:` elsewhere).
fn unsupported(addr: String, what: &str) -> DialError {
    DialError::Connect {
        addr,
        cause: Arc::new(io::Error::new(io::ErrorKind::Unsupported, what.to_owned())),
    }
}

/// Opens a TCP connection with `TCP_NODELAY` (requests are small and latency matters;
/// batching is the caller's business), mapping failures to [`DialError`]s that name the
/// address.
pub(crate) async fn connect_tcp<A>(addr: A, timeout: Duration) -> Result<TcpStream, DialError>
where
    A: ToSocketAddrs + fmt::Display,
{
    let name = addr.to_string();
    let stream = attempt(&name, timeout, TcpStream::connect(addr)).await?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A connected TCP or Unix socket, for a caller that drives it from a blocking thread.
pub(crate) enum Socket {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

type BorrowedRead<'a> = Pin<Box<dyn AsyncRead + Send + 'a>>;
type BorrowedWrite<'a> = Pin<Box<dyn AsyncWrite + Send + 'a>>;

/// What a blocking thread reads and writes.
pub(crate) trait BlockingStream: io::Read + io::Write + Send {}

impl<T: io::Read + io::Write + Send> BlockingStream for T {}

impl Socket {
    /// Connects to a `unix:` address, or to anything else as TCP (see [`connect_tcp`]).
    /// `pipe:` addresses are the caller's to handle first.
    pub(crate) async fn connect(addr: &str, timeout: Duration) -> Result<Socket, DialError> {
        if let Some(path) = addr.strip_prefix(UNIX_PREFIX) {
            #[cfg(unix)]
            {
                let stream = attempt(addr, timeout, tokio::net::UnixStream::connect(path)).await?;
                return Ok(Socket::Unix(stream));
            }
            #[cfg(not(unix))]
            {
                let _ = path;
                return Err(unsupported(
                    addr.to_owned(),
                    "unix: addresses need a Unix system",
                ));
            }
        }
        Ok(Socket::Tcp(connect_tcp(addr, timeout).await?))
    }

    /// The socket as a blocking stream whose reads give up after `read_timeout`.
    pub(crate) fn into_blocking(
        self,
        read_timeout: Duration,
    ) -> io::Result<Box<dyn BlockingStream>> {
        match self {
            Socket::Tcp(stream) => {
                let stream = stream.into_std()?;
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(read_timeout))?;
                Ok(Box::new(stream))
            }
            #[cfg(unix)]
            Socket::Unix(stream) => {
                let stream = stream.into_std()?;
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(read_timeout))?;
                Ok(Box::new(stream))
            }
        }
    }

    /// The socket's two halves, borrowed.
    pub(crate) fn halves(&mut self) -> (BorrowedRead<'_>, BorrowedWrite<'_>) {
        match self {
            Socket::Tcp(stream) => {
                let (read_half, write_half) = stream.split();
                (Box::pin(read_half), Box::pin(write_half))
            }
            #[cfg(unix)]
            Socket::Unix(stream) => {
                let (read_half, write_half) = stream.split();
                (Box::pin(read_half), Box::pin(write_half))
            }
        }
    }
}

/// Connects to `addr`: `unix:PATH` for a Unix domain socket, `pipe:NAME` for a Windows
/// named pipe, otherwise TCP (see [`connect_tcp`]), with TLS when `tls` is given. Returns
/// the stream's two halves, boxed so that everything above works the same on every
/// transport.
pub(crate) async fn connect_stream<A>(
    addr: A,
    timeout: Duration,
    tls: Option<&ClientTls>,
) -> Result<(BoxRead, BoxWrite), DialError>
where
    A: ToSocketAddrs + fmt::Display,
{
    let name = addr.to_string();
    if let Some(pipe) = name.strip_prefix(PIPE_PREFIX) {
        #[cfg(windows)]
        {
            let client = attempt(&name, timeout, open_pipe(pipe)).await?;
            let (read_half, write_half) = tokio::io::split(client);
            return Ok((Box::pin(read_half), Box::pin(write_half)));
        }
        #[cfg(not(windows))]
        {
            let _ = pipe;
            return Err(unsupported(
                name,
                "pipe: addresses (named pipes) need Windows",
            ));
        }
    }
    let stream = match Socket::connect(&name, timeout).await? {
        Socket::Tcp(stream) => stream,
        #[cfg(unix)]
        Socket::Unix(stream) => {
            let (read_half, write_half) = stream.into_split();
            return Ok((Box::pin(read_half), Box::pin(write_half)));
        }
    };
    if let Some(tls) = tls {
        let failed = |err: io::Error| DialError::Tls {
            addr: name.clone(),
            reason: format!("{err} (does the server speak TLS, with a certificate from this CA?)"),
        };
        let stream = tokio::time::timeout(timeout, tls.connect(&name, stream))
            .await
            .map_err(|_| DialError::Timeout {
                addr: name.clone(),
                after: timeout,
            })?
            .map_err(failed)?;
        let (read_half, write_half) = tokio::io::split(stream);
        return Ok((Box::pin(read_half), Box::pin(write_half)));
    }
    let (read_half, write_half) = stream.into_split();
    Ok((Box::pin(read_half), Box::pin(write_half)))
}

/// Opens a named pipe, waiting while every server instance is busy (as the Windows
/// documentation advises for ERROR_PIPE_BUSY).
#[cfg(windows)]
async fn open_pipe(name: &str) -> io::Result<tokio::net::windows::named_pipe::NamedPipeClient> {
    use tokio::net::windows::named_pipe::ClientOptions;
    /// ERROR_PIPE_BUSY: all instances are in use; another is created when one connects.
    const ERROR_PIPE_BUSY: i32 = 231;
    let path = super::listen::pipe_path(name);
    loop {
        match ClientOptions::new().open(&path) {
            Ok(client) => return Ok(client),
            Err(err) if err.raw_os_error() == Some(ERROR_PIPE_BUSY) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => return Err(err),
        }
    }
}
