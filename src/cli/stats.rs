//! `courier stats`: asks a running server for its counters with a STATS frame and prints
//! them, one `name value` line each (the library's counter table, then one line per
//! close reason), or one flat JSON object; `--watch` prints rates per second, a line per
//! interval, as `redis-cli --stat` does.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Args;

use courier::client::Client;
use courier::stats::Snapshot;

use super::client_args::ClientAuthArgs;

/// `courier stats`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    /// Server address.
    #[arg(value_name = "ADDR", default_value = "127.0.0.1:12345")]
    addr: String,

    /// Print one JSON object: every counter by name, and "closed" as an object of
    /// close reason to count.
    #[arg(long, conflicts_with = "watch")]
    json: bool,

    /// Keep asking, every INTERVAL (default 1s), and print one line of rates per second
    /// (connections, requests, replies, errors, closes) and the connections open, until
    /// Ctrl-C or --count lines.
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "1s", value_parser = humantime::parse_duration)]
    watch: Option<Duration>,

    /// With --watch: stop after this many lines.
    #[arg(long, value_name = "N", requires = "watch")]
    count: Option<u64>,

    /// Time allowed to connect and for the answer.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    #[command(flatten)]
    auth: ClientAuthArgs,
}

/// Runs `courier stats`.
pub(crate) async fn run(args: StatsArgs) -> anyhow::Result<()> {
    let config = args.auth.client_config(args.timeout, args.timeout)?;
    let client = Client::connect_with(args.addr.as_str(), config).await?;
    if let Some(interval) = args.watch {
        let watched = watch(&client, interval, args.count).await;
        client.close().await;
        return watched;
    }
    let snapshot = client.stats().await?;
    client.close().await;
    let text = if args.json {
        format!("{}\n", serde_json::to_string_pretty(&flat(&snapshot))?)
    } else {
        lines(&snapshot)
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    Ok(())
}

/// The counters as one flat JSON object: each counter by name, `closed` an object of
/// reason to count.
fn flat(snapshot: &Snapshot) -> serde_json::Value {
    let mut object = serde_json::Map::new();
    for (name, value) in snapshot.counters() {
        object.insert(name.to_owned(), value.into());
    }
    let closed: serde_json::Map<String, serde_json::Value> = snapshot
        .closed
        .iter()
        .map(|(reason, value)| (reason.clone(), (*value).into()))
        .collect();
    object.insert("closed".to_owned(), closed.into());
    object.into()
}

/// The columns of `--watch`: a title and how to get the counter (`open` is a level, the
/// others are rates).
const WATCHED: [&str; 7] = [
    "open",
    "accepted/s",
    "requests/s",
    "replies/s",
    "errors/s",
    "protocol_errors/s",
    "closed/s",
];

/// The values behind [`WATCHED`], as totals.
fn watched(snapshot: &Snapshot) -> [u64; 7] {
    let closed = snapshot.closed.iter().map(|(_, value)| value).sum();
    [
        snapshot.open,
        snapshot.accepted,
        snapshot.requests + snapshot.oneway,
        snapshot.replies,
        snapshot.errors,
        snapshot.protocol_errors,
        closed,
    ]
}

/// `--watch`: a header, then a line of rates every `interval` (bounded by `count`, or
/// until Ctrl-C).
async fn watch(client: &Client, interval: Duration, count: Option<u64>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    let header: Vec<String> = WATCHED.iter().map(|name| format!("{name:>18}")).collect();
    writeln!(stdout, "{}", header.join(""))?;
    let mut before = watched(&client.stats().await?);
    let mut at = Instant::now();
    let mut printed = 0;
    while count.is_none_or(|count| printed < count) {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let now = watched(&client.stats().await?);
        let seconds = at.elapsed().as_secs_f64().max(1e-6);
        at = Instant::now();
        let line: Vec<String> = now
            .iter()
            .zip(&before)
            .enumerate()
            .map(|(column, (now, before))| match column {
                0 => format!("{now:>18}"),
                _ => format!("{:>18.1}", now.saturating_sub(*before) as f64 / seconds),
            })
            .collect();
        writeln!(stdout, "{}", line.join(""))?;
        stdout.flush()?;
        before = now;
        printed += 1;
    }
    Ok(())
}

/// One `name value` line per counter, in the table's order, then `closed.REASON value`
/// for every close reason; for a router, then `route.NAME value` for its own counters
/// and `route.backend.ADDR.NAME value` for each backend's figures.
fn lines(snapshot: &Snapshot) -> String {
    let mut text = server_lines(snapshot);
    if let Some(route) = &snapshot.route {
        text.push_str(&route_lines(route));
    }
    text
}

/// The router's figures, one `name value` line each.
fn route_lines(route: &serde_json::Value) -> String {
    let mut text = String::new();
    let Some(object) = route.as_object() else {
        return text;
    };
    for (name, value) in object.iter().filter(|(_, value)| !value.is_array()) {
        text.push_str(&format!("route.{name} {value}\n"));
    }
    let backends = object.get("backends").and_then(|b| b.as_array());
    for backend in backends.into_iter().flatten().filter_map(|b| b.as_object()) {
        let addr = backend
            .get("backend")
            .and_then(|a| a.as_str())
            .unwrap_or("?");
        for (name, value) in backend.iter().filter(|(name, _)| *name != "backend") {
            let value = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            text.push_str(&format!("route.backend.{addr}.{name} {value}\n"));
        }
    }
    text
}

/// The server's counters and close reasons.
fn server_lines(snapshot: &Snapshot) -> String {
    let counters = snapshot.counters().into_iter();
    let closed = snapshot
        .closed
        .iter()
        .map(|(reason, value)| (format!("closed.{reason}"), *value));
    counters
        .map(|(name, value)| (name.to_owned(), value))
        .chain(closed)
        .map(|(name, value)| format!("{name} {value}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier::stats::{CloseReason, Stats};

    #[test]
    fn json_is_flat_with_closed_by_reason() {
        let value = flat(&Stats::new().snapshot());
        for counter in Snapshot::COUNTERS {
            assert_eq!(value[counter.name], 0, "{}", counter.name);
        }
        for reason in CloseReason::ALL {
            assert_eq!(value["closed"][reason.to_string()], 0, "{reason}");
        }
    }

    #[test]
    fn every_counter_and_close_reason_has_a_line() {
        let text = lines(&Stats::new().snapshot());
        let names: Vec<_> = text
            .lines()
            .map(|line| line.strip_suffix(" 0").expect("name, space, value"))
            .collect();
        let expected: Vec<_> = Snapshot::COUNTERS
            .iter()
            .map(|counter| counter.name.to_owned())
            .chain(
                CloseReason::ALL
                    .iter()
                    .map(|reason| format!("closed.{reason}")),
            )
            .collect();
        assert_eq!(names, expected);
    }
}
