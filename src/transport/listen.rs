//! Listening: binding an address of any transport and accepting its connections.

use std::io;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::{PIPE_PREFIX, UNIX_PREFIX};

/// Binds a TCP listener on `addr` (`HOST:PORT`; a name resolves to its first address)
/// with an accept queue of `backlog` connections and `SO_REUSEADDR`, so that a restarted
/// server can bind again while old connections linger in TIME_WAIT.
///
/// # Errors
/// When the name does not resolve or the address cannot be bound (in use, no permission).
pub async fn bind(addr: &str, backlog: u32) -> io::Result<TcpListener> {
    let mut last_err = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(backlog)) {
            Ok(listener) => return Ok(listener),
            Err(err) => last_err = Some(err),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        )
    }))
}

/// A bound listener of any transport; `server::run` takes one (or a `TcpListener`).
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix domain socket.
    #[cfg(unix)]
    Unix(UnixSocket),
    /// A Windows named pipe.
    #[cfg(windows)]
    Pipe(NamedPipe),
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Listener {
        Listener::Tcp(listener)
    }
}

impl Listener {
    /// Listens on `addr`: `unix:PATH` (with `mode` for the socket file) or `HOST:PORT`
    /// (with an accept queue of `backlog`).
    ///
    /// # Errors
    /// When the address cannot be bound, a live server already has the Unix socket, or
    /// the path exists and is not a socket.
    pub async fn bind(addr: &str, backlog: u32, mode: u32) -> io::Result<Listener> {
        if let Some(path) = addr.strip_prefix(UNIX_PREFIX) {
            #[cfg(unix)]
            return UnixSocket::bind(path.as_ref(), mode).map(Listener::Unix);
            #[cfg(not(unix))]
            {
                let _ = (path, mode);
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "unix: addresses need a Unix system",
                ));
            }
        }
        if let Some(name) = addr.strip_prefix(PIPE_PREFIX) {
            #[cfg(windows)]
            return NamedPipe::bind(name).map(Listener::Pipe);
            #[cfg(not(windows))]
            {
                let _ = name;
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "pipe: addresses (named pipes) need Windows; use unix:PATH here",
                ));
            }
        }
        let _ = mode;
        bind(addr, backlog).await.map(Listener::Tcp)
    }

    /// The address as `--listen` would name it (the chosen port for port 0).
    pub fn local_addr(&self) -> io::Result<String> {
        match self {
            Listener::Tcp(listener) => listener.local_addr().map(|addr| addr.to_string()),
            #[cfg(unix)]
            Listener::Unix(socket) => Ok(format!("{UNIX_PREFIX}{}", socket.path.display())),
            #[cfg(windows)]
            Listener::Pipe(pipe) => Ok(format!("{PIPE_PREFIX}{}", pipe.name)),
        }
    }

    pub(crate) async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                Ok(Accepted::Tcp(stream, peer))
            }
            #[cfg(unix)]
            Listener::Unix(socket) => {
                let (stream, _) = socket.listener.accept().await?;
                Ok(Accepted::Unix(stream))
            }
            #[cfg(windows)]
            Listener::Pipe(pipe) => pipe.accept().await.map(Accepted::Pipe),
        }
    }
}

/// A connection just accepted.
pub(crate) enum Accepted {
    Tcp(TcpStream, std::net::SocketAddr),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
    #[cfg(windows)]
    Pipe(tokio::net::windows::named_pipe::NamedPipeServer),
}

/// The process id of the client connected to `pipe`, where Windows tells it (the logs
/// and `--exec` commands name a pipe's client by it).
#[cfg(windows)]
pub(crate) fn pipe_client_pid(
    pipe: &tokio::net::windows::named_pipe::NamedPipeServer,
) -> Option<u32> {
    super::pipe_security::client_process_id(pipe)
}

/// A listening Unix domain socket whose file is removed when it is dropped.
#[cfg(unix)]
#[derive(Debug)]
pub struct UnixSocket {
    listener: tokio::net::UnixListener,
    path: std::path::PathBuf,
    /// Device and inode of the file this listener created, so that drop removes only
    /// that file, not one a later server put at the same path.
    identity: Option<(u64, u64)>,
}

#[cfg(unix)]
impl UnixSocket {
    /// Binds `path` with permissions `mode`.
    ///
    /// A socket file already at `path` is tried first: if a server answers there, binding
    /// fails with `AddrInUse`; if nothing does (a server died without cleaning up), the
    /// stale file is removed. A path that exists and is not a socket is never touched.
    ///
    /// # Errors
    /// As above, and when the directory does not allow creating the socket.
    pub fn bind(path: &std::path::Path, mode: u32) -> io::Result<UnixSocket> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("a server is already listening on {}", path.display()),
                        ))
                    }
                    Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                        tracing::info!(path = %path.display(), "removing a stale socket file left by a server that is gone");
                        std::fs::remove_file(path)?;
                    }
                    Err(err) => return Err(err),
                }
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket; not replacing it",
                        path.display()
                    ),
                ))
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        // Create the file with no access for anyone but the owner, so that no other user
        // can connect in the moment before the mode below is set.
        let old_mask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = tokio::net::UnixListener::bind(path);
        nix::sys::stat::umask(old_mask);
        let listener = bound?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        let identity = std::fs::metadata(path)
            .ok()
            .map(|meta| (meta.dev(), meta.ino()));
        Ok(UnixSocket {
            listener,
            path: path.to_owned(),
            identity,
        })
    }
}

#[cfg(unix)]
impl Drop for UnixSocket {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let ours = std::fs::metadata(&self.path)
            .ok()
            .map(|meta| (meta.dev(), meta.ino()));
        if ours.is_some() && ours == self.identity {
            if let Err(err) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), cause = %err, "cannot remove the socket file");
            }
        }
    }
}

/// A Windows named pipe that clients connect to by name.
#[cfg(windows)]
#[derive(Debug)]
pub struct NamedPipe {
    name: String,
    path: String,
    /// The instance waiting for the next client.
    next: tokio::sync::Mutex<tokio::net::windows::named_pipe::NamedPipeServer>,
}

#[cfg(windows)]
impl NamedPipe {
    /// Creates the first instance of `\\.\pipe\NAME`.
    ///
    /// # Errors
    /// When a server already serves that name, or the name is invalid.
    pub fn bind(name: &str) -> io::Result<NamedPipe> {
        let path = pipe_path(name);
        let first = super::pipe_security::create_instance(&path, true).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!(
                    "cannot create the named pipe {path} (is a server already using it?): {err}"
                ),
            )
        })?;
        Ok(NamedPipe {
            name: name.to_owned(),
            path,
            next: tokio::sync::Mutex::new(first),
        })
    }

    /// Waits for a client on the waiting instance, puts a fresh instance in its place, and
    /// returns the connected one.
    async fn accept(&self) -> io::Result<tokio::net::windows::named_pipe::NamedPipeServer> {
        let mut next = self.next.lock().await;
        next.connect().await?;
        let fresh = super::pipe_security::create_instance(&self.path, false)?;
        Ok(std::mem::replace(&mut *next, fresh))
    }
}

/// The full path of a pipe name.
#[cfg(windows)]
pub(super) fn pipe_path(name: &str) -> String {
    format!(r"\\.\pipe\{name}")
}
