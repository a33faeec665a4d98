//! TLS for courier connections: rustls (with the ring provider) through tokio-rustls, no
//! OpenSSL.
//!
//! The server side ([`ServerTls`]) presents a certificate chain and, when given a client
//! CA, requires and verifies client certificates; the verified subject is logged and
//! handed to handlers ([`crate::handler::Request::peer_identity`]). The client side
//! ([`ClientTls`]) trusts a private CA from a PEM file and may present a certificate of
//! its own.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

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
    /// rustls refused the certificates or key (a key that does not match, say).
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_error(path: &Path, problem: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        problem: problem.to_string(),
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| file_error(path, err))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| file_error(path, err))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|err| file_error(path, format!("no usable PEM private key ({err})")))
}

fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(path)? {
        roots
            .add(cert)
            .map_err(|err| file_error(path, format!("not a usable CA certificate: {err}")))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server-side TLS stream.
pub(crate) type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

/// A client-side TLS stream.
pub(crate) type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// The server's TLS: its certificate and key, and whether clients must present
/// certificates.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    client_auth: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the certificate chain `cert` and its private key `key` (PEM). With
    /// `client_ca`, clients must present a certificate signed by one of its CAs.
    ///
    /// Also returns warnings to log: a key file readable by others than its owner.
    ///
    /// # Errors
    /// A file that cannot be read or holds nothing usable, or a key that does not match.
    pub fn from_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<(ServerTls, Vec<String>), TlsError> {
        let chain = certificates(cert)?;
        let private = private_key(key)?;
        let warnings = super::readable_by_others(key).into_iter().collect();
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError::Config(err.to_string()))?;
        let builder = match client_ca {
            Some(path) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(path)?),
                    provider(),
                )
                .build()
                .map_err(|err| TlsError::Config(err.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(chain, private).map_err(|err| {
            TlsError::Config(format!("{} and {}: {err}", cert.display(), key.display()))
        })?;
        Ok((
            ServerTls {
                acceptor: TlsAcceptor::from(Arc::new(config)),
                client_auth: client_ca.is_some(),
            },
            warnings,
        ))
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_auth
    }

    /// Runs the server side of the handshake; returns the stream and the verified
    /// client certificate's subject, if one was presented.
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
    ) -> io::Result<(ServerStream, Option<Arc<str>>)> {
        let stream = self.acceptor.accept(stream).await?;
        let identity = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| subject(cert));
        Ok((stream, identity))
    }
}

/// The subject of a certificate, as `CN=client-a, O=...`.
fn subject(cert: &CertificateDer<'_>) -> Option<Arc<str>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(Arc::from(parsed.subject().to_string()))
}

/// A client's TLS: the CA it trusts, the name it expects, and optionally its own
/// certificate.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    server_name: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the CA certificates in `ca` (PEM); presents `cert_and_key` when given;
    /// expects the server's certificate to name `server_name`, or the host of the address
    /// connected to when `None`.
    ///
    /// # Errors
    /// A file that cannot be read or holds nothing usable.
    pub fn from_files(
        ca: &Path,
        cert_and_key: Option<(&Path, &Path)>,
        server_name: Option<String>,
    ) -> Result<ClientTls, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError::Config(err.to_string()))?
            .with_root_certificates(roots(ca)?);
        let config = match cert_and_key {
            Some((cert, key)) => builder
                .with_client_auth_cert(certificates(cert)?, private_key(key)?)
                .map_err(|err| TlsError::Config(err.to_string()))?,
            None => builder.with_no_client_auth(),
        };
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// Runs the client side of the handshake over `stream`, connected to `addr`
    /// (`HOST:PORT`).
    pub(crate) async fn connect(&self, addr: &str, stream: TcpStream) -> io::Result<ClientStream> {
        let host = match &self.server_name {
            Some(name) => name.clone(),
            None => host_of(addr).to_owned(),
        };
        let name = ServerName::try_from(host.clone()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host:?} is not a valid TLS server name (set --tls-server-name)"),
            )
        })?;
        self.connector.connect(name, stream).await
    }
}

/// The host part of `HOST:PORT` (brackets of an IPv6 literal removed).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_host_is_the_address_without_its_port() {
        assert_eq!(host_of("localhost:443"), "localhost");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8080"), "::1");
    }
}
