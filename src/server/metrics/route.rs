//! A router's figures as metric families: the `route` member of the STATS snapshot
//! (`courier route`; docs/ROUTE.md), the same JSON `courier stats ROUTER` prints, so the
//! two can never disagree.
//!
//! The server knows nothing of the router (it sits a layer above): it reads the JSON by
//! the field names of the tables below. A field the tables do not name is left out
//! rather than guessed at, so a figure added to the router later breaks nothing here; it
//! appears once it has a line in a table (and in docs/OPERATIONS.md).

use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use serde_json::Value;

/// One numeric field of the figures and the metric it becomes: counters are named
/// `..._total`, gauges not.
#[derive(Debug, Clone, Copy)]
pub(super) struct Figure {
    /// The field in the figures JSON.
    pub(super) field: &'static str,
    /// Counter (only grows) or gauge (a level now).
    pub(super) kind: MetricType,
    /// The metric's HELP text.
    pub(super) help: &'static str,
}

const fn counter(field: &'static str, help: &'static str) -> Figure {
    Figure {
        field,
        kind: MetricType::Counter,
        help,
    }
}

/// The router's own counters, each `courier_route_FIELD_total`.
pub(super) const ROUTER: [Figure; 6] = [
    counter("routed", "Requests the router took"),
    counter(
        "resent_not_received",
        "Sends repeated on another backend because the first provably did not receive the request",
    ),
    counter(
        "retried",
        "Idempotent requests sent again after an unknown outcome, within the retry budget",
    ),
    counter(
        "retry_budget_exhausted",
        "Idempotent requests with an unknown outcome not sent again: the retry budget was spent",
    ),
    counter(
        "outcome_unknown",
        "ERROR 18 (outcome unknown) answers: the backend may or may not have run the request",
    ),
    counter(
        "no_backend",
        "ERROR 19 (no backend available) answers: no backend took requests",
    ),
];

/// Each backend's numeric figures, each `courier_route_backend_FIELD` (`_total` for a
/// counter) with a `backend` label: its address, or `joined:PEER`.
pub(super) const BACKEND: [Figure; 7] = [
    counter("requests", "Requests sent to the backend"),
    counter(
        "errors",
        "The backend's ERROR answers, and requests that failed there without an answer",
    ),
    Figure {
        field: "outstanding",
        kind: MetricType::Gauge,
        help: "Requests sent to the backend and not answered yet",
    },
    counter(
        "ejections",
        "Times the backend was taken out of service (a failed ping or connection, requests timing out in a row)",
    ),
    counter(
        "retries",
        "Requests that failed at the backend and were sent to another",
    ),
    counter(
        "lost_idempotent",
        "Idempotent requests whose outcome became unknown at the backend (its connection died or the call timed out with them in flight)",
    ),
    counter(
        "lost_not_idempotent",
        "Requests not marked idempotent whose outcome became unknown at the backend: each got ERROR 18",
    ),
];

/// The health states of docs/ROUTE.md: each backend has one series per state in
/// `courier_route_backend_health`, 1 for the state it is in and 0 for the others.
pub(super) const STATES: [&str; 4] = ["connecting", "up", "draining", "ejected"];

/// What the HELP of `courier_route_backend_health` says.
const HEALTH_HELP: &str =
    "1 for the backend's health state now, 0 for the others (connecting, up, draining, ejected)";

/// One backend's figures as read from the JSON.
#[derive(Debug)]
struct Entry {
    name: String,
    /// [`BACKEND`]'s figures, in its order; `None` when the JSON lacks one.
    values: [Option<u64>; BACKEND.len()],
    /// Each state of [`STATES`] (and any state this version does not know, after them)
    /// with how many of this name's entries are in it.
    states: Vec<(String, u64)>,
}

/// Adds the router's families to a scrape, from `route`, the figures JSON.
pub(super) fn encode(
    route: &Value,
    encoder: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    for figure in ROUTER {
        let Some(value) = route.get(figure.field).and_then(Value::as_u64) else {
            continue;
        };
        let name = format!("route_{}", figure.field);
        let metric = encoder.encode_descriptor(&name, figure.help, None, figure.kind)?;
        encode_value(metric, figure.kind, value)?;
    }
    let backends = entries(route);
    for (n, figure) in BACKEND.iter().enumerate() {
        if backends.iter().all(|entry| entry.values[n].is_none()) {
            continue;
        }
        let name = format!("route_backend_{}", figure.field);
        let mut family = encoder.encode_descriptor(&name, figure.help, None, figure.kind)?;
        for entry in &backends {
            if let Some(value) = entry.values[n] {
                let labels = [("backend", entry.name.as_str())];
                encode_value(family.encode_family(&labels)?, figure.kind, value)?;
            }
        }
    }
    if backends.is_empty() {
        return Ok(());
    }
    let mut health =
        encoder.encode_descriptor("route_backend_health", HEALTH_HELP, None, MetricType::Gauge)?;
    for entry in &backends {
        for (state, count) in &entry.states {
            let labels = [("backend", entry.name.as_str()), ("state", state.as_str())];
            health.encode_family(&labels)?.encode_gauge(count)?;
        }
    }
    Ok(())
}

fn encode_value(
    mut metric: MetricEncoder<'_>,
    kind: MetricType,
    value: u64,
) -> Result<(), std::fmt::Error> {
    match kind {
        MetricType::Gauge => metric.encode_gauge(&value),
        _ => metric.encode_counter::<NoLabelSet, _, u64>(&value, None),
    }
}

/// The backends of the figures, in their order. Prometheus takes one series per label
/// set, so entries with the same name (an address listed twice) are added together.
fn entries(route: &Value) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    let listed = route.get("backends").and_then(Value::as_array);
    for backend in listed.into_iter().flatten() {
        let Some(name) = backend.get("backend").and_then(Value::as_str) else {
            continue;
        };
        let at = match entries.iter().position(|entry| entry.name == name) {
            Some(at) => at,
            None => {
                entries.push(Entry {
                    name: name.to_owned(),
                    values: [None; BACKEND.len()],
                    states: STATES
                        .iter()
                        .map(|state| ((*state).to_owned(), 0))
                        .collect(),
                });
                entries.len() - 1
            }
        };
        let entry = &mut entries[at];
        for (figure, total) in BACKEND.iter().zip(&mut entry.values) {
            if let Some(value) = backend.get(figure.field).and_then(Value::as_u64) {
                *total = Some(total.unwrap_or(0).saturating_add(value));
            }
        }
        if let Some(state) = backend.get("health").and_then(Value::as_str) {
            match entry.states.iter_mut().find(|(known, _)| known == state) {
                Some((_, count)) => *count += 1,
                None => entry.states.push((state.to_owned(), 1)),
            }
        }
    }
    entries
}
