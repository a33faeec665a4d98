//! `courier send`: sends a message (or `--count` of them, or one per item of a stream
//! with `--lines`, `--null` or `--jsonl`) in any framing and prints each reply on stdout.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;

use courier::client::{
    raw_exchange, CallOptions, Client, ClientConfig, ClientError, PlainClient, RawOptions,
};
use courier::config::{parse_hex, Framing};
use courier::wire::ErrorCode;

use super::client_args::ClientAuthArgs;
use super::exit::Usage;
use super::output::Output;
use super::send_stream::{self, Split, StreamOptions};

/// `courier send`'s arguments.
#[derive(Debug, Args)]
#[command(after_help = super::exit::TABLE)]
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

    /// The payload from a file, or from stdin with `-` (with --lines, --null or --jsonl:
    /// the stream to cut into requests). Without --hex, --data or --file, the payload is
    /// stdin, which must then not be a terminal.
    #[arg(long, value_name = "PATH|-")]
    file: Option<PathBuf>,

    /// One request per line of the input (stdin, or --file), without its newline.
    #[arg(long, group = "split", conflicts_with_all = ["hex", "data", "count"])]
    lines: bool,

    /// One request per NUL-terminated item of the input (as `find -print0` writes).
    #[arg(long, group = "split", conflicts_with_all = ["hex", "data", "count"])]
    null: bool,

    /// One request per line of JSON: {"text": "..."}, {"hex": "..."} or {"base64":
    /// "..."}, with an optional "id" that the --json output repeats.
    #[arg(long, group = "split", conflicts_with_all = ["hex", "data", "count"])]
    jsonl: bool,

    /// With --lines, --null or --jsonl: requests in flight at once on the connection.
    #[arg(short = 'c', long, value_name = "N", default_value_t = 1)]
    concurrency: usize,

    /// With --lines, --null or --jsonl: print replies as they come, not in input order.
    #[arg(long)]
    unordered: bool,

    /// Print one JSON object per reply: {"index", "id" (from --jsonl), "status" ("ok" or
    /// "error"), "rtt_us", and "reply" (--output text), "reply_hex" (hex) or
    /// "reply_base64" (raw, base64) or "error": {"kind", "outcome", "message", "code"}}.
    #[arg(long)]
    json: bool,

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
    /// Longer than the server's default exec_timeout (30s), so that a slow --exec command
    /// is reported by the server's ERROR naming its limit.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// Time allowed to connect and exchange HELLO.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,

    /// How to print each reply: lowercase hex on one line, the raw bytes, UTF-8 text on
    /// one line (no newline added to a reply that ends with one), or base64 on one line.
    #[arg(long, value_enum, default_value_t = Output::Hex)]
    output: Output,

    #[command(flatten)]
    auth: ClientAuthArgs,
}

/// Runs `courier send`.
pub(crate) async fn run(args: SendArgs) -> anyhow::Result<()> {
    check(&args)?;
    if let Some(split) = split(&args) {
        return send_stream(&args, split).await;
    }
    let payload = read_payload(&args)?;
    let mut stdout = std::io::stdout().lock();
    let print = |reply: &[u8]| -> std::io::Result<()> {
        args.output.write(&mut stdout, reply)?;
        stdout.flush()
    };
    match args.framing {
        Framing::Courier => send_courier(&args, &payload, print).await,
        Framing::Plain => send_plain(&args, &payload, print).await,
        Framing::Raw => send_raw(&args, &payload, print).await,
    }
}

/// The stream mode asked for, if any.
fn split(args: &SendArgs) -> Option<Split> {
    match (args.lines, args.null, args.jsonl) {
        (true, _, _) => Some(Split::Lines),
        (_, true, _) => Some(Split::Null),
        (_, _, true) => Some(Split::Jsonl),
        _ => None,
    }
}

/// The payload from --hex, --data or --file (`-` for stdin), or stdin when it is not a
/// terminal.
fn read_payload(args: &SendArgs) -> anyhow::Result<Bytes> {
    let stdin = || -> anyhow::Result<Bytes> {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read the payload from stdin")?;
        Ok(Bytes::from(buf))
    };
    Ok(match (&args.hex, &args.data, &args.file) {
        (Some(bytes), _, _) => bytes.clone(),
        (_, Some(text), _) => Bytes::from(text.clone().into_bytes()),
        (_, _, Some(path)) if path.as_os_str() == "-" => stdin()?,
        (_, _, Some(path)) => Bytes::from(
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        ),
        _ if std::io::stdin().is_terminal() => {
            return Err(Usage(
                "no payload: give --data TEXT, --hex HEX or --file PATH, or pipe it on stdin (--lines, --null or --jsonl for one request per item); --data '' sends an empty message".into(),
            )
            .into())
        }
        _ => stdin()?,
    })
}

/// Refuses flags that make no sense together, before connecting.
fn check(args: &SendArgs) -> anyhow::Result<()> {
    let usage = |text: &str| Err(Usage(text.to_owned()).into());
    let streaming = split(args).is_some();
    if args.count == 0 {
        return usage("--count must be at least 1");
    }
    if args.file.is_some() && (args.hex.is_some() || args.data.is_some()) {
        return usage("--file, --hex and --data are alternatives: give one");
    }
    if args.oneway && args.framing != Framing::Courier {
        return usage(
            "--oneway needs --framing courier: plain and raw framing have no one-way messages",
        );
    }
    if args.addr.starts_with(courier::transport::UDP_PREFIX) && args.framing != Framing::Courier {
        return usage("udp: addresses speak courier framing only (one frame per datagram)");
    }
    if args.idempotent && (args.oneway || args.framing != Framing::Courier) {
        return usage("--idempotent applies to requests in --framing courier (not --oneway)");
    }
    if args.recv_first && args.framing != Framing::Raw {
        return usage("--recv-first applies to --framing raw only");
    }
    if streaming && args.framing != Framing::Courier {
        return usage("--lines, --null and --jsonl need --framing courier");
    }
    if !streaming && (args.concurrency != 1 || args.unordered || args.json) {
        return usage("--concurrency, --unordered and --json apply to --lines, --null and --jsonl");
    }
    if args.concurrency == 0 {
        return usage("--concurrency must be at least 1");
    }
    Ok(())
}

/// Adds which limit fired to a call's timeout.
fn name_the_limit(err: ClientError) -> anyhow::Error {
    let context = match &err {
        ClientError::Timeout { .. } => Some("no reply within send's --timeout (the server's exec_timeout, when it fires first, comes back as an ERROR naming it)"),
        // --timeout travels with the request; the server's side of it can fire first.
        ClientError::Server {
            code: ErrorCode::DeadlineExceeded,
            ..
        } => Some("no reply within send's --timeout: the server dropped the work at that deadline"),
        _ => None,
    };
    let err = anyhow::Error::new(err);
    match context {
        Some(context) => err.context(context),
        None => err,
    }
}

/// `--lines`, `--null`, `--jsonl`: a stream of requests on one connection.
async fn send_stream(args: &SendArgs, split: Split) -> anyhow::Result<()> {
    let config = args
        .auth
        .client_config(args.connect_timeout, args.timeout)?;
    let client = Client::connect_with(args.addr.as_str(), config).await?;
    let options = StreamOptions {
        split,
        file: args.file.clone(),
        concurrency: args.concurrency,
        unordered: args.unordered,
        json: args.json,
        oneway: args.oneway,
        output: args.output,
    };
    let result = send_stream::run(&client, &options).await;
    client.close().await;
    result
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
            let reply = client
                .call_with(payload.clone(), options)
                .await
                .map_err(name_the_limit)?;
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
        let reply = client.call(payload.clone()).await.map_err(name_the_limit)?;
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
