//! The flags every client command shares (`send`, `bench`, `stats`): TLS and the auth
//! token, turned into the library's settings.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use tracing::warn;

use courier::client::ClientConfig;
use courier::config::AuthToken;
use courier::transport::tls::ClientTls;

/// How a client proves itself to a server that requires a token, and its TLS.
#[derive(Debug, Args)]
pub(crate) struct ClientAuthArgs {
    /// Speak TLS, trusting the CA certificates in this PEM file.
    #[arg(long, value_name = "PEM", env = "COURIER_TLS_CA")]
    tls_ca: Option<PathBuf>,

    /// With --tls-ca: the name the server's certificate must carry, when it differs from
    /// the host in ADDR.
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,

    /// With --tls-ca: present this client certificate (PEM), for servers that require one.
    #[arg(long, value_name = "PEM", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Present the token in this file (less a trailing newline) in HELLO; the variable
    /// COURIER_AUTH_TOKEN, holding the token itself, takes precedence.
    #[arg(long, value_name = "FILE", env = "COURIER_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
}

impl ClientAuthArgs {
    /// A courier-framing client's settings: these credentials and the two timeouts.
    pub(crate) fn client_config(
        &self,
        connect_timeout: Duration,
        call_timeout: Duration,
    ) -> anyhow::Result<ClientConfig> {
        Ok(ClientConfig {
            connect_timeout,
            call_timeout,
            auth_token: self.token()?,
            tls: self.tls()?,
            ..ClientConfig::default()
        })
    }

    /// The TLS settings, when --tls-ca is given.
    pub(crate) fn tls(&self) -> anyhow::Result<Option<ClientTls>> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let cert_and_key = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                if let Some(warning) = courier::transport::readable_by_others(key) {
                    warn!("{warning}");
                }
                Some((cert.as_path(), key.as_path()))
            }
            _ => None,
        };
        Ok(Some(ClientTls::from_files(
            ca,
            cert_and_key,
            self.tls_server_name.clone(),
        )?))
    }

    /// The token to send, if any, warning when its file is readable by others.
    pub(crate) fn token(&self) -> anyhow::Result<Option<Bytes>> {
        let env_token = std::env::var("COURIER_AUTH_TOKEN").ok();
        let (token, warning) = AuthToken::load(env_token, self.auth_token_file.as_deref())?;
        if let Some(warning) = warning {
            warn!("{warning}");
        }
        Ok(token.map(|token| token.as_bytes().clone()))
    }
}
