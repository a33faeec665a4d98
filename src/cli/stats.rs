//! `courier stats`: asks a running server for its counters with a STATS frame and prints
//! them, one `name value` line each (the library's counter table, then one line per
//! close reason), or the server's JSON.

use std::io::Write;
use std::time::Duration;

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

    /// Print the JSON object the server sent.
    #[arg(long)]
    json: bool,

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
    let snapshot = client.stats().await?;
    client.close().await;
    let text = if args.json {
        format!("{}\n", serde_json::to_string_pretty(&snapshot)?)
    } else {
        lines(&snapshot)
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
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
