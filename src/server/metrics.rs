//! `--metrics ADDR`: the server's counters for Prometheus (`/metrics`), and the two
//! probes a service manager or load balancer asks, `/healthz` (the process is alive) and
//! `/readyz` (it accepts connections; 503 from the moment a drain starts), over HTTP/1.
//!
//! The metrics are read from `stats.rs` at each scrape: every counter of its table (so
//! counters added there later appear here with no code of their own), the close reasons,
//! the request duration histogram and the handler calls running; for `courier route`,
//! the router's figures from the same snapshot (`metrics/route.rs`). Nothing on the
//! request path knows this endpoint exists. The exposition is the Prometheus project's
//! own client (`prometheus-client`), in the Prometheus text format 0.0.4; the HTTP side
//! is hyper.

#[cfg(feature = "json")]
mod route;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Readiness;
use crate::handler::PoolStats;
use crate::stats::{error_slot, CloseReason, Snapshot, Stats, ERROR_SLOTS};
use crate::wire::ErrorCode;

/// Scrapers served at once; more are closed at once. Prometheus opens one or two.
const MAX_CONNECTIONS: usize = 16;

/// Time a client has to send its request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The content type of the Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metric a counter of the table becomes, and its type: `courier_NAME_total` for a
/// counter, with the connection counters named as such. Counters only grow; the one gauge
/// of the table (`open`) is named here, as any later gauge must be.
fn family(name: &str) -> (&str, MetricType) {
    match name {
        "accepted" => ("connections_accepted", MetricType::Counter),
        "rejected_busy" => ("connections_rejected_busy", MetricType::Counter),
        "open" => ("connections_open", MetricType::Gauge),
        other => (other, MetricType::Counter),
    }
}

/// Reads a server's [`Stats`] (and its `--exec-workers` pool's, if it has one) into
/// metric families at each scrape.
#[derive(Debug)]
struct StatsCollector {
    stats: Arc<Stats>,
    pool: Option<Arc<PoolStats>>,
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshot = self.stats.snapshot();
        for (counter, (_, value)) in Snapshot::COUNTERS.iter().zip(snapshot.counters()) {
            let (name, kind) = family(counter.name);
            let help = counter.help.trim_end_matches('.');
            let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
            match kind {
                MetricType::Gauge => metric.encode_gauge(&value)?,
                _ => metric.encode_counter::<NoLabelSet, _, u64>(&value, None)?,
            }
        }
        let mut closed = encoder.encode_descriptor(
            "connections_closed",
            "Connections closed, by why they ended (docs/PROTOCOL.md lists the reasons)",
            None,
            MetricType::Counter,
        )?;
        for reason in CloseReason::ALL {
            let labels = [("reason", reason.name())];
            closed
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&snapshot.closed(reason), None)?;
        }
        encode_error_codes(&self.stats, &mut encoder)?;
        let durations = self.stats.durations();
        encoder
            .encode_descriptor(
                "request_duration",
                "Time from a request's arrival to its answer being queued, ONEWAY left out; answers given inline count as 0",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(
                durations.sum_seconds,
                durations.count,
                &with_inf(&durations.buckets, durations.count),
                None,
            )?;
        encoder
            .encode_descriptor(
                "requests_in_flight",
                "Handler calls running now (answers given inline are never in flight)",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&self.stats.in_flight())?;
        if let Some(pool) = &self.pool {
            encode_pool(pool, &mut encoder)?;
        }
        // A router's figures, from the snapshot `courier stats` reads too.
        #[cfg(feature = "json")]
        if let Some(figures) = &snapshot.route {
            route::encode(figures, &mut encoder)?;
        }
        Ok(())
    }
}

/// ERROR frames answering requests, by code: every code this version knows (zero or
/// not), application codes together, and any other code together.
fn encode_error_codes(
    stats: &Stats,
    encoder: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let counts = stats.errors_by_slot();
    let mut family = encoder.encode_descriptor(
        "error_replies",
        "ERROR frames answering requests, by code (docs/PROTOCOL.md lists them); 1000 and above are the handler's own",
        None,
        MetricType::Counter,
    )?;
    for code in 1..ERROR_SLOTS as u16 - 1 {
        let known = ErrorCode::from_u16(code);
        if matches!(known, ErrorCode::Other(_)) {
            continue;
        }
        // Display gives "handler failed (11)": the name alone goes in its label.
        let shown = known.to_string();
        let name = shown
            .rsplit_once(" (")
            .map_or(shown.as_str(), |(name, _)| name);
        let number = code.to_string();
        let labels = [("code", number.as_str()), ("name", name)];
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&counts[error_slot(code)], None)?;
    }
    for (code, slot) in [
        ("application", error_slot(1000)),
        ("other", ERROR_SLOTS - 1),
    ] {
        let labels = [("code", code), ("name", code)];
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&counts[slot], None)?;
    }
    Ok(())
}

/// The `--exec-workers` pool's families.
fn encode_pool(
    pool: &PoolStats,
    encoder: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    encoder
        .encode_descriptor(
            "exec_workers",
            "Workers in the pool (exec_workers)",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&(pool.workers() as u64))?;
    encoder
        .encode_descriptor(
            "exec_workers_busy",
            "Workers exchanging a request with their process now",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&pool.busy())?;
    encoder
        .encode_descriptor(
            "exec_worker_restarts",
            "Worker processes started again after one exited, was killed or overran exec_timeout",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(&pool.restarts(), None)?;
    Ok(())
}

/// prometheus-client takes each bucket's own count, not the cumulative ones Prometheus
/// shows, and the `+Inf` bucket as the last: turns [`Durations`](crate::stats::Durations)'
/// cumulative buckets into that.
fn with_inf(cumulative: &[(f64, u64)], count: u64) -> Vec<(f64, u64)> {
    let mut below = 0;
    let mut buckets = Vec::with_capacity(cumulative.len() + 1);
    for &(bound, total) in cumulative {
        buckets.push((bound, total - below));
        below = total;
    }
    buckets.push((f64::INFINITY, count - below));
    buckets
}

/// The registry of one server's metrics, all named `courier_...`.
fn registry(stats: Arc<Stats>, pool: Option<Arc<PoolStats>>) -> Registry {
    let mut registry = Registry::with_prefix("courier");
    registry.register_collector(Box::new(StatsCollector { stats, pool }));
    registry
}

/// The `/metrics` page for `stats` (and `pool`), as a scrape gets it.
pub fn render(stats: Arc<Stats>, pool: Option<Arc<PoolStats>>) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry(stats, pool));
    text
}

/// What one HTTP request gets.
fn respond(
    request: &Request<Incoming>,
    registry: &Registry,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        response
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match request.uri().path() {
        "/metrics" => {
            let mut text = String::new();
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, registry);
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
            response
        }
        "/healthz" => plain(StatusCode::OK, "alive\n"),
        "/readyz" if readiness.is_draining() => {
            plain(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        "/readyz" => plain(StatusCode::OK, "ready\n"),
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz and /readyz are served\n",
        ),
    }
}

/// Serves `/metrics` (from `stats`, and `pool` when the handler is an `--exec-workers`
/// pool), `/healthz` and `/readyz` on `listener` until `stop` is cancelled. Keep it
/// running through the server's drain, so that `/readyz` says 503 meanwhile.
///
/// At most 16 connections at once; a connection has 10 s to send its headers. Accept
/// errors are logged and followed by a short pause, never the end of the loop.
pub async fn serve_metrics(
    listener: TcpListener,
    stats: Arc<Stats>,
    pool: Option<Arc<PoolStats>>,
    readiness: Readiness,
    stop: CancellationToken,
) {
    let registry = Arc::new(registry(stats, pool));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        // Finished connections leave the set as new ones come.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(cause = %err, "metrics: accept failed; pausing");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "metrics: too many connections; closing this one");
            continue;
        };
        let registry = registry.clone();
        let readiness = readiness.clone();
        let service = hyper::service::service_fn(move |request| {
            let response = respond(&request, &registry, &readiness);
            async move { Ok::<_, Infallible>(response) }
        });
        connections.spawn(async move {
            let _slot = slot;
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(err) = served {
                debug!(%peer, cause = %err, "metrics: connection ended with an error");
            }
        });
    }
    connections.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Tally;

    #[test]
    fn every_counter_of_the_table_is_a_metric_with_its_value() {
        let stats = Arc::new(Stats::new());
        stats.opened();
        stats.opened();
        stats.closed(CloseReason::IdleTimeout);
        stats.add(&mut Tally {
            requests: 7,
            replies: 6,
            errors: 1,
            ..Tally::default()
        });
        let text = render(stats.clone(), None);
        let snapshot = stats.snapshot();
        for (name, value) in snapshot.counters() {
            let (metric, kind) = family(name);
            let line = match kind {
                MetricType::Gauge => format!("\ncourier_{metric} {value}\n"),
                _ => format!("\ncourier_{metric}_total {value}\n"),
            };
            assert!(text.contains(&line), "{line:?} missing from\n{text}");
        }
        assert!(text.contains("\ncourier_requests_total 7\n"), "{text}");
        assert!(text.contains("\ncourier_connections_open 1\n"), "{text}");
        assert!(
            text.contains("\ncourier_connections_closed_total{reason=\"idle_timeout\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("courier_route_"), "not a router:\n{text}");
    }

    /// A router's figures with a distinct value for every field the tables name, on two
    /// backends, and fields this version does not know.
    #[cfg(feature = "json")]
    fn figures() -> serde_json::Value {
        use route::{BACKEND, ROUTER};
        use serde_json::{json, Map, Value};
        let mut figures: Map<String, Value> = ROUTER
            .iter()
            .zip(100u64..)
            .map(|(figure, value)| (figure.field.to_owned(), value.into()))
            .collect();
        figures.insert("a_later_router_figure".into(), 9.into());
        let backend = |name: &str, health: &str, base: u64| {
            let mut object: Map<String, Value> = BACKEND
                .iter()
                .zip(base..)
                .map(|(figure, value)| (figure.field.to_owned(), value.into()))
                .collect();
            object.insert("backend".into(), name.into());
            object.insert("health".into(), health.into());
            object.insert("a_later_backend_figure".into(), 7.into());
            Value::Object(object)
        };
        figures.insert(
            "backends".into(),
            json!([
                backend("127.0.0.1:7001", "up", 10),
                backend("unix:/run/b.sock", "ejected", 20)
            ]),
        );
        Value::Object(figures)
    }

    #[cfg(feature = "json")]
    #[test]
    fn every_router_figure_is_a_metric_with_its_value_and_type() {
        use route::{BACKEND, ROUTER, STATES};
        let stats = Arc::new(Stats::new());
        let figures = figures();
        stats.set_route(move || figures.clone());
        let text = render(stats, None);
        let mut expected = Vec::new();
        for (figure, value) in ROUTER.iter().zip(100..) {
            let field = figure.field;
            expected.push(format!("\n# TYPE courier_route_{field}_total counter\n"));
            expected.push(format!("\ncourier_route_{field}_total {value}\n"));
        }
        let backends = [
            ("127.0.0.1:7001", 10usize, "up"),
            ("unix:/run/b.sock", 20, "ejected"),
        ];
        for (n, figure) in BACKEND.iter().enumerate() {
            let field = figure.field;
            let (kind, suffix) = match figure.kind {
                MetricType::Gauge => ("gauge", ""),
                _ => ("counter", "_total"),
            };
            expected.push(format!(
                "\n# TYPE courier_route_backend_{field}{suffix} {kind}\n"
            ));
            for (name, base, _) in backends {
                let value = base + n;
                expected.push(format!(
                    "\ncourier_route_backend_{field}{suffix}{{backend=\"{name}\"}} {value}\n"
                ));
            }
        }
        expected.push("\n# TYPE courier_route_backend_health gauge\n".to_owned());
        for (name, _, health) in backends {
            for state in STATES {
                let value = u8::from(state == health);
                expected.push(format!(
                    "\ncourier_route_backend_health{{backend=\"{name}\",state=\"{state}\"}} {value}\n"
                ));
            }
        }
        // The names docs/OPERATIONS.md gives, written out: renaming a figure fails here.
        for line in [
            "\ncourier_route_routed_total 100\n",
            "\ncourier_route_outcome_unknown_total 104\n",
            "\ncourier_route_backend_requests_total{backend=\"127.0.0.1:7001\"} 10\n",
            "\ncourier_route_backend_outstanding{backend=\"unix:/run/b.sock\"} 22\n",
            "\ncourier_route_backend_health{backend=\"127.0.0.1:7001\",state=\"up\"} 1\n",
        ] {
            expected.push(line.to_owned());
        }
        for line in &expected {
            assert!(
                text.contains(line.as_str()),
                "{line:?} missing from\n{text}"
            );
        }
        assert!(
            !text.contains("later"),
            "an unknown figure is left out:\n{text}"
        );
    }

    #[cfg(feature = "json")]
    #[test]
    fn a_backend_listed_twice_is_one_series_and_an_unknown_state_still_shows() {
        let stats = Arc::new(Stats::new());
        stats.set_route(|| {
            serde_json::json!({"routed": 3, "backends": [
                {"backend": "a:1", "health": "up", "requests": 2, "outstanding": 1},
                {"backend": "a:1", "health": "resting", "requests": 5, "outstanding": 0},
            ]})
        });
        let text = render(stats, None);
        for line in [
            "\ncourier_route_routed_total 3\n",
            "\ncourier_route_backend_requests_total{backend=\"a:1\"} 7\n",
            "\ncourier_route_backend_outstanding{backend=\"a:1\"} 1\n",
            "\ncourier_route_backend_health{backend=\"a:1\",state=\"up\"} 1\n",
            "\ncourier_route_backend_health{backend=\"a:1\",state=\"ejected\"} 0\n",
            "\ncourier_route_backend_health{backend=\"a:1\",state=\"resting\"} 1\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        let requests = text
            .lines()
            .filter(|line| line.starts_with("courier_route_backend_requests_total"))
            .count();
        assert_eq!(requests, 1, "{text}");
        // Figures absent from the JSON are absent from the page, not zeros.
        assert!(!text.contains("courier_route_retried"), "{text}");
        assert!(!text.contains("courier_route_backend_errors"), "{text}");
    }

    #[test]
    fn the_histogram_is_cumulative_and_ends_with_inf() {
        let stats = Arc::new(Stats::new());
        let mut tally = Tally::default();
        tally.timing.record(Duration::from_millis(2));
        tally.timing.record(Duration::from_secs(100));
        tally.timing.record_inline(1);
        stats.add(&mut tally);
        let text = render(stats, None);
        for line in [
            "courier_request_duration_seconds_bucket{le=\"0.0001\"} 1\n",
            "courier_request_duration_seconds_bucket{le=\"0.0025\"} 2\n",
            "courier_request_duration_seconds_bucket{le=\"30\"} 2\n",
            "courier_request_duration_seconds_bucket{le=\"+Inf\"} 3\n",
            "courier_request_duration_seconds_count 3\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }
}
