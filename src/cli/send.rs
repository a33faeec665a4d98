//! `courier send`: sends a message (or `--count` of them) in any framing and prints each
//! reply on stdout.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, ValueEnum};

use courier::client::{raw_exchange, CallOptions, Client, ClientConfig, PlainClient, RawOptions};
use courier::config::{parse_hex, Framing};

use super::client_args::ClientAuthArgs;

/// `courier send`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// Server address.
    #[arg(
        value_name = "ADDR",
        default_value = "127.0.0.1:12345",
        env = "COURIER_ADDR"
    )]
    addr: String,

    /// How messages are delimited: courier (the protocol), plain (4-byte length +
    /// payload) or raw (none: the bytes as they are; every chunk received is printed, and
    /// the exchange ends when the server closes or nothing arrives for --timeout).
    #[arg(long, value_enum, default_value_t = Framing::Courier)]
    framing: Framing,

    /// Raw framing: wait for the server's first bytes and print them before sending.
    #[arg(long)]
    recv_first: bool,

    /// The payload as hex, e.g. 05060708.
    #[arg(long, value_name = "HEX", group = "input", value_parser = parse_hex)]
    hex: Option<Bytes>,

    /// The payload as text (sent as its UTF-8 bytes).
    #[arg(long, value_name = "TEXT", group = "input")]
    data: Option<String>,

    /// The payload from a file, or from stdin with `-`.
    #[arg(long, value_name = "PATH|-", group = "input")]
    file: Option<PathBuf>,

    /// Send as ONEWAY: no reply is expected and nothing is printed.
    #[arg(long)]
    oneway: bool,

    /// Mark the request idempotent (safe to run twice): a router may then send it to
    /// another backend after a failure whose outcome is unknown.
    #[arg(long)]
    idempotent: bool,

    /// Send the message this many times, one after another, printing each reply.
    #[arg(long, value_name = "N", default_value_t = 1)]
    count: u64,

    /// Time allowed for each reply (raw framing: the quiet time that ends the exchange).
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// Time allowed to connect and exchange HELLO.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,

    /// How to print each reply: lowercase hex on one line, the raw bytes, or UTF-8 text
    /// on one line.
    #[arg(long, value_enum, default_value_t = Output::Hex)]
    output: Output,

    #[command(flatten)]
    auth: ClientAuthArgs,
}

/// How `courier send` prints a reply (`--output`).
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    /// Lowercase hex, one line per reply.
    Hex,
    /// The bytes as they are, nothing added.
    Raw,
    /// The bytes as UTF-8 text (invalid sequences replaced), one line per reply.
    Text,
}

/// Runs `courier send`.
pub(crate) async fn run(args: SendArgs) -> anyhow::Result<()> {
    let payload = read_payload(&args)?;
    check(&args)?;
    let mut stdout = std::io::stdout().lock();
    let print = |reply: &[u8]| -> std::io::Result<()> {
        match args.output {
            Output::Hex => writeln!(stdout, "{}", hex::encode(reply)),
            Output::Raw => stdout.write_all(reply),
            Output::Text => writeln!(stdout, "{}", String::from_utf8_lossy(reply)),
        }?;
        stdout.flush()
    };
    match args.framing {
        Framing::Courier => send_courier(&args, &payload, print).await,
        Framing::Plain => send_plain(&args, &payload, print).await,
        Framing::Raw => send_raw(&args, &payload, print).await,
    }
}

/// The payload from --hex, --data or --file (`-` for stdin); empty without any.
fn read_payload(args: &SendArgs) -> anyhow::Result<Bytes> {
    Ok(match (&args.hex, &args.data, &args.file) {
        (Some(bytes), _, _) => bytes.clone(),
        (_, Some(text), _) => Bytes::from(text.clone().into_bytes()),
        (_, _, Some(path)) if path.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the payload from stdin")?;
            Bytes::from(buf)
        }
        (_, _, Some(path)) => Bytes::from(
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        ),
        _ => Bytes::new(),
    })
}

/// Refuses flags that make no sense together, before connecting.
fn check(args: &SendArgs) -> anyhow::Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    if args.oneway && args.framing != Framing::Courier {
        bail!("--oneway needs --framing courier: plain and raw framing have no one-way messages");
    }
    if args.idempotent && (args.oneway || args.framing != Framing::Courier) {
        bail!("--idempotent applies to requests in --framing courier (not --oneway)");
    }
    if args.recv_first && args.framing != Framing::Raw {
        bail!("--recv-first applies to --framing raw only");
    }
    Ok(())
}

/// Courier framing: HELLO, then `--count` requests (or one-way messages) in turn.
async fn send_courier(
    args: &SendArgs,
    payload: &Bytes,
    mut print: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let config = args
        .auth
        .client_config(args.connect_timeout, args.timeout)?;
    let client = Client::connect_with(args.addr.as_str(), config).await?;
    for _ in 0..args.count {
        if args.oneway {
            client.send_oneway(payload.clone()).await?;
        } else {
            let options = CallOptions {
                idempotent: args.idempotent,
                ..CallOptions::default()
            };
            let reply = client.call_with(payload.clone(), options).await?;
            print(&reply).context("cannot write to stdout")?;
        }
    }
    client.close().await;
    Ok(())
}

/// Plain framing: `--count` length-prefixed messages, each answered in turn.
async fn send_plain(
    args: &SendArgs,
    payload: &Bytes,
    mut print: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let max_frame = ClientConfig::default().max_frame;
    let mut client = PlainClient::connect(
        args.addr.as_str(),
        args.connect_timeout,
        args.timeout,
        max_frame,
    )
    .await?;
    for _ in 0..args.count {
        let reply = client.call(payload.clone()).await?;
        print(&reply).context("cannot write to stdout")?;
    }
    Ok(())
}

/// Raw framing: the bytes as they are, every chunk received printed.
async fn send_raw(
    args: &SendArgs,
    payload: &Bytes,
    print: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let options = RawOptions {
        recv_first: args.recv_first,
        connect_timeout: args.connect_timeout,
        timeout: args.timeout,
    };
    raw_exchange(args.addr.as_str(), payload, args.count, &options, print).await?;
    Ok(())
}
