//! A server with a handler of its own: a small in-memory key-value store. `SET key value`
//! stores, `GET key` answers the value; anything else gets an ERROR with an application
//! code (1000 and above are the application's). It uses only what the library offers with
//! `default-features = false`.
//!
//! `cargo run --example custom_handler_server -- 127.0.0.1:12350`, then
//! `courier send --data 'SET a 1' 127.0.0.1:12350` and `courier send --data 'GET a'
//! --output text 127.0.0.1:12350`. Ctrl-C drains and stops it.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use courier::config::Config;
use courier::handler::{Handler, HandlerError, Request};
use courier::server::Server;

/// The application's own ERROR codes.
const UNKNOWN_COMMAND: u16 = 1000;
const NO_SUCH_KEY: u16 = 1001;

/// The store: many connections call it at once, so its map sits behind a lock (held for
/// one map operation, never across an await).
#[derive(Debug, Default)]
struct Store {
    map: Mutex<HashMap<Vec<u8>, Bytes>>,
}

impl Store {
    fn answer(&self, payload: &[u8]) -> Result<Bytes, HandlerError> {
        let mut words = payload.splitn(3, |&b| b == b' ');
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match (words.next(), words.next(), words.next()) {
            (Some(b"SET"), Some(key), Some(value)) => {
                map.insert(key.to_vec(), Bytes::copy_from_slice(value));
                Ok(Bytes::from_static(b"OK"))
            }
            (Some(b"GET"), Some(key), None) => map.get(key).cloned().ok_or_else(|| {
                HandlerError::with_code(
                    NO_SUCH_KEY,
                    format!("no such key: {}", String::from_utf8_lossy(key)),
                )
            }),
            _ => Err(HandlerError::with_code(
                UNKNOWN_COMMAND,
                "write SET KEY VALUE or GET KEY",
            )),
        }
    }
}

impl Handler for Store {
    async fn call(&self, request: Request) -> Result<Bytes, HandlerError> {
        self.answer(&request.payload)
    }

    // Every answer is ready at once: no task per request.
    fn ready(&self, request: &Request) -> Option<Result<Bytes, HandlerError>> {
        Some(self.answer(&request.payload))
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:12350".into());
    let config = Config {
        listen: addr.clone(),
        ..Config::default()
    };
    let listener = courier::transport::bind(&addr, config.backlog).await?;
    println!("serving a key-value store on {}", listener.local_addr()?);
    Server::new(config, Store::default())
        .run(listener, tokio::signal::ctrl_c())
        .await;
    Ok(())
}
