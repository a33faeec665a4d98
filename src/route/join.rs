//! Workers that dial in (`courier serve --join ROUTER`): the router accepts them on
//! `join_listen`, does the HELLO exchange as the client (the worker speaks first, as a
//! server does), checks the join token the worker's HELLO carries (field 0x01, compared
//! in constant time), and puts the connection in service at once as a backend of its
//! own. When that connection ends or fails a health check, the backend is removed; the
//! worker dials again.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::backend::Backend;
use super::Router;
use crate::client::{Client, ClientConfig};
use crate::config::AuthToken;
use crate::transport::{Accepted, Listener};
use crate::wire::HELLO_AUTH_TOKEN;

/// A joining worker's stream: TCP, or a Unix socket where there are Unix sockets.
#[cfg(unix)]
type Joined = tokio_util::either::Either<tokio::net::TcpStream, tokio::net::UnixStream>;
#[cfg(not(unix))]
type Joined = tokio_util::either::Either<tokio::net::TcpStream, tokio::net::TcpStream>;

/// Accepts joining workers from `listener` until `stop`.
pub(super) async fn accept_joins(
    router: Router,
    listener: Listener,
    token: AuthToken,
    client: ClientConfig,
    stop: CancellationToken,
) {
    let token = Arc::new(token);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let (stream, name) = match accepted {
            Ok(Accepted::Tcp(stream, peer)) => {
                let _ = stream.set_nodelay(true);
                (Joined::Left(stream), format!("joined:{peer}"))
            }
            #[cfg(unix)]
            Ok(Accepted::Unix(stream)) => (Joined::Right(stream), "joined:unix".to_owned()),
            #[cfg(windows)]
            Ok(Accepted::Pipe(_)) => continue,
            Err(err) => {
                warn!(error = %err, "accepting a joining worker failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (router, token, client) = (router.clone(), token.clone(), client.clone());
        tokio::spawn(async move {
            let accept = |hello: &crate::wire::Hello| {
                hello
                    .field(HELLO_AUTH_TOKEN)
                    .is_some_and(|offered| token.matches(offered))
            };
            match Client::over_stream(stream, client, accept).await {
                Ok(conn) => router.admit_joined(name, conn).await,
                Err(err) => warn!(worker = %name, error = %err, "a worker's join was refused"),
            }
        });
    }
}

impl Router {
    /// Serves a joined worker's connection as a backend until it ends or fails.
    async fn admit_joined(&self, name: String, conn: Client) {
        info!(worker = %name, "worker joined");
        let backend = Arc::new(Backend::new(name));
        backend.admit(vec![conn]);
        self.write_backends().push(backend.clone());
        let settings = self.inner.settings.clone();
        super::health::watch_joined(&backend, &settings, &self.inner.stop).await;
        self.write_backends()
            .retain(|other| !Arc::ptr_eq(other, &backend));
        info!(worker = %backend.name, "worker left");
    }
}
