//! `courier send --lines | --null | --jsonl`: one request per item of a stream (stdin or
//! a file), up to `--concurrency` in flight on one connection, replies printed in input
//! order (or as they come with `--unordered`), as text or one JSON object per reply.
//!
//! A thread reads the input (a pipe may block for ever, as `tail -f` does) and hands
//! items over a bounded channel, so a long stream is never held in memory and the
//! requests start with the first item.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine as _;
use bytes::Bytes;
use clap::ValueEnum;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use tokio::sync::mpsc;

use courier::client::{Client, ClientError, Outcome};

use super::exit::{self, Failed, Usage};
use super::output::Output;

/// How the input is cut into requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Split {
    /// One request per line, without its `\n`.
    Lines,
    /// One request per NUL-terminated item (as `find -print0` writes).
    Null,
    /// One request per JSON object: `{"text": ...}`, `{"hex": ...}` or `{"base64": ...}`,
    /// with an optional `"id"` echoed in the output.
    Jsonl,
}

/// What `--jsonl` accepts on each line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonItem {
    text: Option<String>,
    hex: Option<String>,
    base64: Option<String>,
    #[serde(default)]
    id: Option<serde_json::Value>,
}

/// One request to make.
#[derive(Debug)]
struct Item {
    /// Its place in the input, from 0.
    index: u64,
    /// The id a `--jsonl` object gave it.
    id: Option<serde_json::Value>,
    payload: Bytes,
}

/// How a stream of requests runs and prints.
#[derive(Debug)]
pub(crate) struct StreamOptions {
    pub(crate) split: Split,
    pub(crate) file: Option<PathBuf>,
    pub(crate) concurrency: usize,
    pub(crate) unordered: bool,
    pub(crate) json: bool,
    pub(crate) oneway: bool,
    pub(crate) output: Output,
}

/// A request's result, with what the output needs.
struct Done {
    index: u64,
    id: Option<serde_json::Value>,
    rtt: Duration,
    result: Result<Bytes, ClientError>,
}

/// Sends every item of the input through `client` and prints each reply.
///
/// # Errors
/// The first input error (a bad `--jsonl` line is a usage error), a stdout that cannot
/// be written, or, after the whole input, [`Failed`] with the exit status of the first
/// request that failed.
pub(crate) async fn run(client: &Client, options: &StreamOptions) -> anyhow::Result<()> {
    let items = spawn_reader(options.file.clone(), options.split)?;
    let stream = futures::stream::unfold(items, |mut items| async move {
        items.recv().await.map(|item| (item, items))
    });
    let call = |item: anyhow::Result<Item>| {
        let client = client.clone();
        let oneway = options.oneway;
        async move {
            let item = item?;
            let started = Instant::now();
            let result = if oneway {
                client
                    .send_oneway(item.payload)
                    .await
                    .map(|()| Bytes::new())
            } else {
                client.call(item.payload).await
            };
            Ok::<_, anyhow::Error>(Done {
                index: item.index,
                id: item.id,
                rtt: started.elapsed(),
                result,
            })
        }
    };
    let calls = stream.map(call);
    let concurrency = options.concurrency.max(1);
    let mut results = if options.unordered {
        calls.buffer_unordered(concurrency).boxed_local()
    } else {
        calls.buffered(concurrency).boxed_local()
    };
    let bar = progress_bar();
    let mut stdout = std::io::stdout().lock();
    let (mut total, mut failed, mut first_failure) = (0u64, 0u64, None);
    while let Some(done) = results.next().await {
        let done = done?;
        total += 1;
        bar.inc(1);
        if let Err(err) = &done.result {
            failed += 1;
            first_failure.get_or_insert((done.index, exit::client_code(err), err.to_string()));
        }
        print(&mut stdout, &done, options, &bar).context("cannot write to stdout")?;
    }
    bar.finish_and_clear();
    match first_failure {
        None => Ok(()),
        Some((index, code, message)) => Err(Failed {
            code,
            message: format!(
                "{failed} of {total} requests failed; the first, item {index}: {message}"
            ),
        }
        .into()),
    }
}

/// A spinner counting replies on stderr when it is a terminal; hidden otherwise, so that
/// scripts and logs see nothing of it.
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {pos} replies ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Prints one result: the reply as `--output` says (an error on stderr), or one JSON
/// object on stdout with `--json`.
fn print(
    out: &mut impl Write,
    done: &Done,
    options: &StreamOptions,
    bar: &ProgressBar,
) -> std::io::Result<()> {
    if options.json {
        let line = json_line(done, options.output);
        writeln!(out, "{line}")?;
        return out.flush();
    }
    match &done.result {
        Ok(_) if options.oneway => Ok(()),
        Ok(reply) => {
            options.output.write(out, reply)?;
            out.flush()
        }
        Err(err) => {
            bar.suspend(|| eprintln!("courier: item {}: {err}", done.index));
            Ok(())
        }
    }
}

/// The `--json` object for one result.
fn json_line(done: &Done, output: Output) -> serde_json::Value {
    let mut line = serde_json::json!({
        "index": done.index,
        "rtt_us": done.rtt.as_micros() as u64,
    });
    if let Some(id) = &done.id {
        line["id"] = id.clone();
    }
    match &done.result {
        Ok(reply) => {
            line["status"] = "ok".into();
            let (key, value) = match output {
                Output::Text => ("reply", String::from_utf8_lossy(reply).into_owned()),
                Output::Hex => ("reply_hex", hex::encode(reply)),
                Output::Raw | Output::Base64 => (
                    "reply_base64",
                    base64::engine::general_purpose::STANDARD.encode(reply),
                ),
            };
            line[key] = value.into();
        }
        Err(err) => {
            line["status"] = "error".into();
            line["error"] = error_json(err);
        }
    }
    line
}

/// A client error as JSON: its kind, what it means for the request, the text, and the
/// server's code for an ERROR.
fn error_json(err: &ClientError) -> serde_json::Value {
    let kind = match err {
        ClientError::Server { .. } => "server_error",
        ClientError::Timeout { .. } => "timeout",
        ClientError::OutcomeUnknown { .. } => "outcome_unknown",
        ClientError::GoingAway => "going_away",
        ClientError::Closed { .. } => "closed",
        ClientError::FrameTooLarge { .. } => "frame_too_large",
        ClientError::Tls { .. } => "tls",
        ClientError::NotCourier { .. } | ClientError::NoHello => "not_courier",
        ClientError::Protocol(_) => "protocol",
        _ => "connect",
    };
    let outcome = match err.outcome() {
        Outcome::Answered => "answered",
        Outcome::NotReceived => "not_received",
        Outcome::Unknown => "unknown",
    };
    let mut value = serde_json::json!({
        "kind": kind,
        "outcome": outcome,
        "message": err.to_string(),
    });
    if let ClientError::Server { code, .. } = err {
        value["code"] = code.as_u16().into();
    }
    value
}

/// Starts the thread that reads the input and cuts it into items.
fn spawn_reader(
    file: Option<PathBuf>,
    split: Split,
) -> anyhow::Result<mpsc::Receiver<anyhow::Result<Item>>> {
    let input: Box<dyn Read + Send> = match &file {
        Some(path) if path.as_os_str() != "-" => Box::new(
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?,
        ),
        _ => Box::new(std::io::stdin()),
    };
    let (tx, rx) = mpsc::channel(1024);
    std::thread::spawn(move || {
        let separator = if split == Split::Null { b'\0' } else { b'\n' };
        let mut reader = BufReader::new(input);
        let mut index = 0u64;
        loop {
            let mut buf = Vec::new();
            let item = match reader.read_until(separator, &mut buf) {
                Ok(0) => return,
                Ok(_) => {
                    if buf.last() == Some(&separator) {
                        buf.pop();
                    }
                    if split == Split::Jsonl && buf.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    item(split, index, buf)
                }
                Err(err) => Err(anyhow::Error::new(err).context("cannot read the input")),
            };
            let stop = item.is_err();
            if tx.blocking_send(item).is_err() || stop {
                return;
            }
            index += 1;
        }
    });
    Ok(rx)
}

/// One item from its bytes (a `--jsonl` line is decoded).
fn item(split: Split, index: u64, bytes: Vec<u8>) -> anyhow::Result<Item> {
    if split != Split::Jsonl {
        return Ok(Item {
            index,
            id: None,
            payload: Bytes::from(bytes),
        });
    }
    let bad = |why: String| Usage(format!("--jsonl item {index}: {why}"));
    let parsed: JsonItem = serde_json::from_slice(&bytes).map_err(|err| {
        bad(format!(
            "{err}; each line is an object such as {{\"text\": \"hi\"}}, {{\"hex\": \"0a0b\"}} or {{\"base64\": \"aGk=\"}}, with an optional \"id\""
        ))
    })?;
    let payload = match (parsed.text, parsed.hex, parsed.base64) {
        (Some(text), None, None) => Bytes::from(text.into_bytes()),
        (None, Some(hex), None) => courier::config::parse_hex(&hex).map_err(bad)?,
        (None, None, Some(b64)) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|err| bad(format!("\"base64\" is not base64: {err}")))?,
        ),
        _ => return Err(bad("give exactly one of \"text\", \"hex\" and \"base64\"".into()).into()),
    };
    Ok(Item {
        index,
        id: parsed.id,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_items_take_text_hex_or_base64_and_an_id() {
        let text = item(Split::Jsonl, 0, br#"{"text":"hi","id":7}"#.to_vec()).unwrap();
        assert_eq!((&text.payload[..], text.id), (&b"hi"[..], Some(7.into())));
        let hex = item(Split::Jsonl, 1, br#"{"hex":"0a0b"}"#.to_vec()).unwrap();
        assert_eq!(&hex.payload[..], &[10, 11]);
        let b64 = item(Split::Jsonl, 2, br#"{"base64":"aGk="}"#.to_vec()).unwrap();
        assert_eq!(&b64.payload[..], b"hi");
        for bad in [
            r#"{"text":"a","hex":"00"}"#,
            r#"{}"#,
            r#"{"txt":"a"}"#,
            "nope",
        ] {
            let err = item(Split::Jsonl, 3, bad.as_bytes().to_vec()).unwrap_err();
            assert!(err.to_string().contains("item 3"), "{bad}: {err}");
        }
    }
}
