//! TLS in a build without the `tls` feature: the same names as `tls.rs`, but
//! [`ServerTls`] and [`ClientTls`] have no values, so no connection can ask for TLS, and
//! loading certificates says that this build has no TLS. The rest of the crate compiles
//! unchanged, with no rustls in it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpStream;

/// TLS settings that cannot be used, with the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {problem}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The TLS configuration cannot be used (here: this build has no TLS).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Why every TLS setting fails in this build.
fn no_tls() -> TlsError {
    TlsError::Config("this build of courier has no TLS (built without the `tls` feature)".into())
}

/// The server's TLS: never has a value in this build.
#[derive(Debug, Clone)]
pub enum ServerTls {}

/// A server-side TLS stream: never made in this build.
pub(crate) type ServerStream = TcpStream;

/// A client-side TLS stream: never made in this build.
pub(crate) type ClientStream = TcpStream;

impl ServerTls {
    /// Always fails: this build has no TLS.
    ///
    /// # Errors
    /// Always, saying so.
    pub fn from_files(
        _cert: &Path,
        _key: &Path,
        _client_ca: Option<&Path>,
    ) -> Result<(ServerTls, Vec<String>), TlsError> {
        Err(no_tls())
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        match *self {}
    }

    pub(crate) async fn accept(
        &self,
        _stream: TcpStream,
    ) -> io::Result<(ServerStream, Option<Arc<str>>)> {
        match *self {}
    }
}

/// A client's TLS: never has a value in this build.
#[derive(Debug, Clone)]
pub enum ClientTls {}

impl ClientTls {
    /// Always fails: this build has no TLS.
    ///
    /// # Errors
    /// Always, saying so.
    pub fn from_files(
        _ca: &Path,
        _cert_and_key: Option<(&Path, &Path)>,
        _server_name: Option<String>,
    ) -> Result<ClientTls, TlsError> {
        Err(no_tls())
    }

    pub(crate) async fn connect(
        &self,
        _addr: &str,
        _stream: TcpStream,
    ) -> io::Result<ClientStream> {
        match *self {}
    }
}
