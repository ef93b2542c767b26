//! Prometheus `/metrics`: the recorder, HTTP request metrics (by route
//! template and answer source), and gauges read from the engine at scrape
//! time. Histograms have explicit buckets (not summaries), so percentiles
//! aggregate across replicas.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusBuilder;

use tandem_core::shard::UpDown;

use crate::recorder::{MetricsHandle, TandemRecorder};

use crate::AppState;

/// Latency buckets in seconds: 250 us .. 10 s.
pub const SECONDS: &[f64] = &[
    0.000_25, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Prediction age buckets in seconds: 1 s .. 7 days.
pub const AGE_SECONDS: &[f64] = &[
    1.0,
    10.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    12.0 * 3600.0,
    86_400.0,
    7.0 * 86_400.0,
];
/// Batch job durations in seconds: 1 s .. 4 h.
pub const JOB_SECONDS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14_400.0,
];
/// Model batch size buckets in rows.
pub const ROWS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 8192.0,
];

/// The bounds of a histogram, by name.
fn buckets(name: &str) -> &'static [f64] {
    match name {
        "tandem_prediction_age_seconds" => AGE_SECONDS,
        "tandem_model_batch_rows" => ROWS,
        "tandem_batch_duration_seconds" => JOB_SECONDS,
        _ => SECONDS,
    }
}

/// Installs the process-wide recorder ([`crate::recorder`]): counters and
/// histograms in per-thread shards, gauges in the Prometheus exporter's
/// recorder, one exposition at `/metrics`.
pub fn install() -> Result<MetricsHandle, String> {
    let recorder = TandemRecorder::new(PrometheusBuilder::new().build_recorder(), buckets);
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    Ok(handle)
}

/// The answer source of a response, set by the handlers that answer
/// predictions (`memory` ... `default`, `mixed` for several, `realtime` for
/// tensor inference).
#[derive(Debug, Clone, Copy)]
pub struct SourceLabel(pub &'static str);

static IN_FLIGHT: LazyLock<UpDown> = LazyLock::new(UpDown::default);

/// The middleware every request passes (one layer, not one per concern):
/// gives it an id ([`crate::trace`]) and times it:
/// `tandem_request_duration_seconds{route, source}`,
/// `tandem_requests_total{route, status}`, and the in-flight gauge.
pub async fn track(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let template = matched.as_ref().map(MatchedPath::as_str);
    let method = req.method().clone();
    let id = crate::trace::request_id(req.headers());
    observe(&state, template, &method, id, next.run(req)).await
}

/// [`track`]'s work around `answer`, the response to a request with this
/// route `template`, `method` and request `id` (also for routes answered
/// before the router, `crate::front`).
pub(crate) async fn observe(
    state: &AppState,
    template: Option<&str>,
    method: &axum::http::Method,
    id: axum::http::HeaderValue,
    answer: impl Future<Output = Response>,
) -> Response {
    let route = route_label(template);
    let prediction = is_prediction(route, method);
    let started = Instant::now();
    IN_FLIGHT.add(1);
    let resp = crate::trace::with_id(id, method, template.unwrap_or("unmatched"), answer).await;
    IN_FLIGHT.add(-1);
    let source = resp
        .extensions()
        .get::<SourceLabel>()
        .map_or("none", |s| s.0);
    let took = started.elapsed();
    if prediction {
        state.latency.record(took, resp.status().as_u16());
    }
    let status = status_label(resp.status().as_u16());
    HANDLES.with_borrow_mut(|h| {
        h.durations
            .entry((route, source))
            .or_insert_with(|| {
                metrics::histogram!("tandem_request_duration_seconds", "route" => route, "source" => source)
            })
            .record(took.as_secs_f64());
        h.requests
            .entry((route, status))
            .or_insert_with(|| {
                metrics::counter!("tandem_requests_total", "route" => route, "status" => status)
            })
            .increment(1);
    });
    resp
}

/// Per-thread handles of the request series, so that a request pays an
/// atomic add instead of a registry lookup. Keyed by static labels, never
/// by what a client sends, so hashed with a fast hasher (no SipHash).
#[derive(Default)]
struct Handles {
    durations: LabelMap<metrics::Histogram>,
    requests: LabelMap<metrics::Counter>,
}

type LabelMap<T> = HashMap<(&'static str, &'static str), T, foldhash::fast::FixedState>;

thread_local! {
    static HANDLES: RefCell<Handles> = RefCell::default();
}

/// The route template as a static label (no allocation per request; raw
/// paths never become labels).
fn route_label(template: Option<&str>) -> &'static str {
    const ROUTES: &[&str] = &[
        "/",
        "/livez",
        "/readyz",
        "/openapi.json",
        "/metrics",
        "/v1/stats",
        "/v1/sla",
        "/v1/predict/{entity_id}",
        "/v1/predict",
        "/v1/models",
        "/v1/models/",
        "/v1/models/{*rest}",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{model}",
        "/v2/models/{model}/ready",
        "/v2/models/{model}/infer",
        "/v2/models/{model}/versions/{version}",
        "/v2/models/{model}/versions/{version}/ready",
        "/v2/models/{model}/versions/{version}/infer",
    ];
    template
        .and_then(|t| ROUTES.iter().find(|r| **r == t).copied())
        .unwrap_or("unmatched")
}

/// The status code as a static label.
fn status_label(code: u16) -> &'static str {
    match code {
        200 => "200",
        400 => "400",
        404 => "404",
        405 => "405",
        413 => "413",
        429 => "429",
        500 => "500",
        501 => "501",
        503 => "503",
        504 => "504",
        c if c < 300 => "2xx",
        c if c < 500 => "4xx",
        _ => "5xx",
    }
}

/// Whether a route answers predictions (and counts for `/v1/stats` and
/// the SLA).
fn is_prediction(route: &str, method: &axum::http::Method) -> bool {
    match route {
        "/v1/predict/{entity_id}"
        | "/v1/predict"
        | "/v2/models/{model}/infer"
        | "/v2/models/{model}/versions/{version}/infer" => true,
        "/v1/models/{*rest}" => method == axum::http::Method::POST,
        _ => false,
    }
}

/// `GET /metrics`.
pub async fn render(State(state): State<AppState>) -> Response {
    let Some(handle) = &state.metrics else {
        return (
            axum::http::StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": "metrics are not enabled in this process", "error_type": "not_found"})),
        )
            .into_response();
    };
    let e = &state.engine;
    metrics::gauge!("tandem_in_flight_requests").set(IN_FLIGHT.get() as f64);
    metrics::gauge!("tandem_queue_depth").set(e.batcher().queued() as f64);
    metrics::gauge!("tandem_queue_capacity").set(e.batcher().capacity() as f64);
    metrics::gauge!("tandem_pending_store_writes").set(e.pending_writes() as f64);
    let memory = e.tiers().memory();
    let (entries, bytes) = memory.usage();
    metrics::gauge!("tandem_memory_tier_entries").set(entries as f64);
    metrics::gauge!("tandem_memory_tier_bytes").set(bytes as f64);
    metrics::gauge!("tandem_memory_tier_budget_bytes").set(memory.config().max_bytes as f64);
    metrics::gauge!("tandem_memory_tier_tracking").set(if memory.tracking() { 1.0 } else { 0.0 });
    metrics::counter!("tandem_memory_tier_changes_reported_total")
        .absolute(memory.changes_reported());
    let t = e.tiers().counters();
    for (tier, result, v) in [
        ("memory", "hit", t.memory_hits),
        ("memory", "stale", t.memory_stale),
        ("memory", "miss", t.memory_misses),
        ("store", "hit", t.store_hits),
        ("store", "stale", t.store_stale),
        ("store", "miss", t.store_misses),
        ("store", "error", t.store_errors),
    ] {
        metrics::counter!("tandem_cache_lookups_total", "tier" => tier, "result" => result)
            .absolute(v);
    }
    if let Some(per_1k) = crate::cost_now(&state)
        .get("per_1k_predictions")
        .and_then(serde_json::Value::as_f64)
    {
        metrics::gauge!("tandem_cost_per_1k_predictions").set(per_1k);
    }
    let (health, _) = e.stats().health();
    for (name, h) in [
        ("healthy", tandem_engine::Health::Healthy),
        ("degraded", tandem_engine::Health::Degraded),
        ("critical", tandem_engine::Health::Critical),
    ] {
        metrics::gauge!("tandem_health", "status" => name).set(f64::from(u8::from(health == h)));
    }
    for name in e.models().names() {
        if let Ok(served) = e.models().served(&name) {
            for v in served.versions.keys() {
                metrics::gauge!("tandem_model_loaded", "model" => name.clone(), "version" => v.to_string()).set(1.0);
            }
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}
