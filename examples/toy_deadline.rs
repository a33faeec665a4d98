//! The toy (examples/toy_echo.rs) with the one feature any server facing real peers
//! needs: an idle deadline per connection (5 minutes, as courier's idle_timeout).
//! bench/compare measures it beside the toy to show what merely having a timer costs: a
//! worker with a timer pending sleeps in `epoll_wait` with a timeout rather than none,
//! and the kernel arms a timer for every such sleep.
//! `cargo run --release --example toy_deadline -- 127.0.0.1:PORT`

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:12347".into());
    let listener = TcpListener::bind(&addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut framed = Framed::new(stream, LengthDelimitedCodec::new());
            let idle = tokio::time::sleep(IDLE_TIMEOUT);
            tokio::pin!(idle);
            loop {
                let message = tokio::select! {
                    message = framed.next() => message,
                    () = &mut idle => break,
                };
                let Some(Ok(message)) = message else { break };
                if framed.send(message.freeze()).await.is_err() {
                    break;
                }
                idle.as_mut()
                    .reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
            }
        });
    }
}
