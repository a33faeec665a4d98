//! The toy: the 20-line Tokio echo server everyone writes first, with tokio-util's
//! `LengthDelimitedCodec` (plain framing). bench/compare loads it with
//! `courier bench --framing plain` to show what courier's features cost.
//! `cargo run --release --example toy_echo -- 127.0.0.1:PORT`

use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:12346".into());
    let listener = TcpListener::bind(&addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut framed = Framed::new(stream, LengthDelimitedCodec::new());
            while let Some(Ok(message)) = framed.next().await {
                if framed.send(message.freeze()).await.is_err() {
                    break;
                }
            }
        });
    }
}
