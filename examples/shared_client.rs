//! One client connection shared by many tasks: each clone of a `Client` calls through the
//! same connection, with its requests in flight together, and every reply reaches the task
//! that asked (matched by request id). It uses only what the library offers with
//! `default-features = false`.
//!
//! `cargo run --example shared_client -- 127.0.0.1:12345` against a running echo server
//! (`courier serve`); without an address it starts an echo server of its own first.

use std::time::Instant;

use courier::client::Client;
use courier::config::Config;
use courier::handler::Builtin;

const TASKS: usize = 100;
const CALLS_PER_TASK: usize = 100;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let addr = match std::env::args().nth(1) {
        Some(addr) => addr,
        None => {
            let listener = courier::transport::bind("127.0.0.1:0", 128).await?;
            let addr = listener.local_addr()?.to_string();
            tokio::spawn(courier::server::run(
                listener,
                Config::default(),
                Builtin::Echo,
                std::future::pending::<()>(),
            ));
            addr
        }
    };
    let client = Client::connect(addr.as_str()).await?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let client = client.clone();
        tasks.spawn(async move {
            for call in 0..CALLS_PER_TASK {
                let payload = format!("task {task} call {call}");
                let reply = client.call(payload.clone()).await?;
                if reply != payload.as_bytes() {
                    return Err(format!("task {task} got another task's reply: {reply:?}").into());
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    client.close().await;
    println!(
        "{} calls from {TASKS} tasks over one connection to {addr}, every reply its own, in {:.2?}",
        TASKS * CALLS_PER_TASK,
        started.elapsed()
    );
    Ok(())
}
