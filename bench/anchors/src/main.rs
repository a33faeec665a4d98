//! Request/reply anchors for bench/compare: NATS and gRPC (tonic), each a responder and a
//! load generator shaped like `courier bench -c N -P 1`: N connections, each with one
//! request in flight, a warm-up second, then a measured window; the report is one JSON
//! line with the same fields as bench/floor.c's.
//!
//! ```text
//! anchors nats-responder URL SUBJECT
//! anchors nats-requester URL SUBJECT CONNECTIONS SECONDS SIZE
//! anchors grpc-server ADDR
//! anchors grpc-client URL CONNECTIONS SECONDS SIZE
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;

pub mod echo {
    tonic::include_proto!("echo");
}

const WARMUP: Duration = Duration::from_secs(1);

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    let result = runtime.block_on(async {
        match args
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["nats-responder", url, subject] => nats_responder(url, subject).await,
            ["nats-requester", url, subject, conns, seconds, size] => {
                let (conns, seconds, size) = (conns.parse()?, seconds.parse()?, size.parse()?);
                nats_requester(url, subject, conns, seconds, size).await
            }
            ["grpc-server", addr] => grpc_server(addr).await,
            ["grpc-client", url, conns, seconds, size] => {
                let (conns, seconds, size) = (conns.parse()?, seconds.parse()?, size.parse()?);
                grpc_client(url, conns, seconds, size).await
            }
            _ => Err(
                "usage: anchors nats-responder URL SUBJECT | nats-requester URL SUBJECT \
                      CONNECTIONS SECONDS SIZE | grpc-server ADDR | grpc-client URL \
                      CONNECTIONS SECONDS SIZE"
                    .into(),
            ),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("anchors: {err}");
            ExitCode::FAILURE
        }
    }
}

/// One member of the queue group "echo": every request's payload goes back to its inbox.
async fn nats_responder(url: &str, subject: &str) -> Result<(), Error> {
    let client = async_nats::connect(url).await?;
    let mut requests = client
        .queue_subscribe(subject.to_string(), "echo".to_string())
        .await?;
    eprintln!("anchors: responding on {subject}");
    while let Some(message) = requests.next().await {
        if let Some(reply) = message.reply {
            client.publish(reply, message.payload).await?;
        }
    }
    Ok(())
}

async fn nats_requester(
    url: &str,
    subject: &str,
    conns: usize,
    seconds: u64,
    size: usize,
) -> Result<(), Error> {
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        clients.push(async_nats::connect(url).await?);
    }
    let payload = Bytes::from(vec![b'x'; size]);
    let window = Window::start(seconds);
    let tasks = clients.into_iter().map(|client| {
        let payload = payload.clone();
        let subject = subject.to_string();
        tokio::spawn(async move {
            let mut tally = Tally::new();
            while let Some(measured) = window.next() {
                let sent = Instant::now();
                match client.request(subject.clone(), payload.clone()).await {
                    Ok(reply) if reply.payload == payload => tally.ok(measured, sent),
                    _ => tally.error(measured),
                }
            }
            tally
        })
    });
    report(window, futures::future::try_join_all(tasks).await?)
}

#[derive(Debug, Default)]
struct EchoService;

#[tonic::async_trait]
impl echo::echo_server::Echo for EchoService {
    async fn echo(
        &self,
        request: tonic::Request<echo::Message>,
    ) -> Result<tonic::Response<echo::Message>, tonic::Status> {
        Ok(tonic::Response::new(request.into_inner()))
    }
}

async fn grpc_server(addr: &str) -> Result<(), Error> {
    let addr = addr.parse()?;
    eprintln!("anchors: gRPC echo on {addr}");
    tonic::transport::Server::builder()
        .add_service(echo::echo_server::EchoServer::new(EchoService))
        .serve(addr)
        .await?;
    Ok(())
}

async fn grpc_client(url: &str, conns: usize, seconds: u64, size: usize) -> Result<(), Error> {
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        // One channel per task is one HTTP/2 connection per task.
        let channel = tonic::transport::Channel::from_shared(url.to_string())?
            .connect()
            .await?;
        clients.push(echo::echo_client::EchoClient::new(channel));
    }
    let payload = vec![b'x'; size];
    let window = Window::start(seconds);
    let tasks = clients.into_iter().map(|mut client| {
        let payload = payload.clone();
        tokio::spawn(async move {
            let mut tally = Tally::new();
            while let Some(measured) = window.next() {
                let sent = Instant::now();
                let request = echo::Message {
                    payload: payload.clone(),
                };
                match client.echo(request).await {
                    Ok(reply) if reply.get_ref().payload == payload => tally.ok(measured, sent),
                    _ => tally.error(measured),
                }
            }
            tally
        })
    });
    report(window, futures::future::try_join_all(tasks).await?)
}

/// The run's clock: a warm-up, then the measured window.
#[derive(Debug, Clone, Copy)]
struct Window {
    begins: Instant,
    ends: Instant,
}

impl Window {
    fn start(seconds: u64) -> Window {
        let begins = Instant::now() + WARMUP;
        Window {
            begins,
            ends: begins + Duration::from_secs(seconds),
        }
    }

    /// `None` once the window is over; otherwise whether a request sent now is measured.
    fn next(&self) -> Option<bool> {
        let now = Instant::now();
        (now < self.ends).then_some(now >= self.begins)
    }
}

#[derive(Debug)]
struct Tally {
    latency: Histogram<u64>,
    errors: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            errors: 0,
        }
    }

    fn ok(&mut self, measured: bool, sent: Instant) {
        if measured {
            let us = sent.elapsed().as_micros().max(1) as u64;
            self.latency.saturating_record(us);
        }
    }

    fn error(&mut self, measured: bool) {
        if measured {
            self.errors += 1;
        }
    }
}

fn report(window: Window, tallies: Vec<Tally>) -> Result<(), Error> {
    let mut all = Tally::new();
    for tally in tallies {
        all.latency.add(&tally.latency)?;
        all.errors += tally.errors;
    }
    let seconds = (window.ends - window.begins).as_secs_f64();
    let h = &all.latency;
    println!(
        "{{\"rps\": {:.1}, \"p50_us\": {}, \"p90_us\": {}, \"p99_us\": {}, \"p999_us\": {}, \
         \"max_us\": {}, \"errors\": {}}}",
        h.len() as f64 / seconds,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        all.errors,
    );
    Ok(())
}
