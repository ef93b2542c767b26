//! The HTTP front end of tandem: thin adapters over [`tandem_engine`] that
//! parse, call the engine, and map the result. Routes:
//!
//! - native entity API: `GET /v1/predict/{entity_id}`, `POST /v1/predict`
//!   ([`native`]);
//! - TF Serving REST: `/v1/models/...` ([`tfserving`]);
//! - KServe V2 REST: `/v2/...` ([`kserve`]);
//! - `/livez`, `/readyz`, `/v1/stats`, `/v1/sla`, `/metrics`,
//!   `/openapi.json`, and the live dashboard at `/`.
//!
//! Errors are mapped to HTTP once, in [`error`].

pub mod error;
pub mod front;
pub mod json;
pub mod kserve;
pub mod latency;
pub mod metrics;
pub mod native;
pub mod openapi;
pub mod recorder;
pub mod tensors;
pub mod tfserving;
pub mod trace;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::json;
use tandem_core::{Observed, SlaTargets, sla::check};
use tandem_engine::{AnswerSource, Engine};

/// Shared state of every handler: one `Arc`, so the clone each request
/// makes of it (one per extractor and middleware) is one reference count,
/// not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Shared {
    /// The service.
    pub engine: Arc<Engine>,
    /// When the server started.
    pub started: Instant,
    /// The Prometheus recorder's handle, when installed.
    pub metrics: Option<recorder::MetricsHandle>,
    /// Latency and outcomes of prediction requests.
    pub latency: Arc<latency::Latency>,
    /// The service-level targets.
    pub sla: SlaTargets,
    /// This instance's price per hour, for the cost gauge.
    pub price_per_hour: Option<f64>,
}

/// HTTP settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes (413 beyond).
    pub body_limit: usize,
    /// Service-level targets reported at `/v1/sla`.
    pub sla: SlaTargets,
    /// The window of `/v1/sla` and of the recent figures of `/v1/stats`.
    pub window: Duration,
    /// This instance's price per hour: `/metrics` and `/v1/stats` then
    /// report the cost per 1000 predictions at the recent request rate.
    pub price_per_hour: Option<f64>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            body_limit: 4 << 20,
            sla: SlaTargets::default(),
            window: Duration::from_secs(300),
            price_per_hour: None,
        }
    }
}

/// Every route. `metrics`: the handle of an installed Prometheus recorder
/// (see [`metrics::install`]), rendered at `/metrics`.
pub fn router(
    engine: Arc<Engine>,
    config: HttpConfig,
    metrics: Option<recorder::MetricsHandle>,
) -> Router {
    routes(state(engine, &config, metrics), &config)
}

fn state(
    engine: Arc<Engine>,
    config: &HttpConfig,
    metrics: Option<recorder::MetricsHandle>,
) -> AppState {
    AppState(Arc::new(Shared {
        engine,
        started: Instant::now(),
        metrics,
        latency: Arc::new(latency::Latency::new(config.window)),
        sla: config.sla,
        price_per_hour: config.price_per_hour,
    }))
}

fn routes(state: AppState, config: &HttpConfig) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi::document))
        .route("/v1/stats", get(stats))
        .route("/metrics", get(metrics::render))
        .route("/v1/sla", get(sla))
        .route("/v1/predict/{entity_id}", get(native::get_one))
        .route("/v1/predict", post(native::post_many))
        .route("/v1/models", get(tfserving::missing_name))
        .route("/v1/models/", get(tfserving::missing_name))
        .route("/v1/models/{*rest}", any(tfserving::dispatch))
        .route("/v2", get(kserve::server_metadata))
        .route("/v2/health/live", get(kserve::live))
        .route("/v2/health/ready", get(kserve::ready))
        .route("/v2/models/{model}", get(kserve::metadata))
        .route("/v2/models/{model}/ready", get(kserve::model_ready))
        .route("/v2/models/{model}/infer", post(kserve::infer))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(kserve::metadata_version),
        )
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(kserve::model_version_ready),
        )
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(kserve::infer_version),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(config.body_limit))
        .with_state(state)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "no such route; see /openapi.json", "error_type": "not_found"})),
    )
        .into_response()
}

/// The live dashboard: one self-contained page (no CDN, works offline)
/// that polls `/v1/stats` and `/v1/sla`.
async fn dashboard() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../assets/dashboard.html"),
    )
        .into_response()
}

async fn livez() -> Response {
    Json(json!({"status": "live"})).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.engine.ready(Duration::from_secs(1)).await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason})),
        )
            .into_response(),
    }
}

async fn stats(State(state): State<AppState>) -> Response {
    let e = &state.engine;
    let s = e.stats().snapshot();
    let t = e.tiers().counters();
    let models: Vec<serde_json::Value> = e
        .models()
        .names()
        .into_iter()
        .filter_map(|n| {
            e.models().served(&n).ok().map(|s| {
                json!({"name": n, "versions": s.versions.keys().collect::<Vec<_>>(), "labels": s.labels})
            })
        })
        .collect();
    let pct = |m: &std::collections::BTreeMap<&'static str, u64>| {
        let total: u64 = m.values().sum();
        AnswerSource::ALL
            .iter()
            .map(|src| {
                let v = m.get(src.as_str()).copied().unwrap_or(0);
                let share = if total == 0 {
                    0.0
                } else {
                    100.0 * v as f64 / total as f64
                };
                (src.as_str(), share)
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let rate = |hit: u64, all: u64| (all > 0).then(|| hit as f64 / all as f64);
    let memory_lookups = t.memory_hits + t.memory_stale + t.memory_misses;
    let store_lookups = t.store_hits + t.store_stale + t.store_misses + t.store_errors;
    Json(json!({
        "uptime_secs": state.started.elapsed().as_secs_f64(),
        "requests": {
            "since_start": state.latency.since_start(),
            "recent": state.latency.recent(),
            "recent_window_secs": state.latency.window().as_secs(),
        },
        "source_mix_pct": {"since_start": pct(&s.answers), "recent": pct(&s.recent)},
        "hit_rate": {
            "memory": rate(t.memory_hits, memory_lookups),
            "store": rate(t.store_hits, store_lookups),
            "overall": rate(t.memory_hits + t.store_hits, memory_lookups),
        },
        "answers": s.answers,
        "recent": s.recent,
        "window_secs": s.window_secs,
        "errors": s.errors,
        "defaults_filled": s.defaults_filled,
        "infer_requests": s.infer_requests,
        "health": {"status": s.health, "reason": s.health_reason},
        "tiers": {
            "memory": {"hits": t.memory_hits, "stale": t.memory_stale, "misses": t.memory_misses},
            "store": {"hits": t.store_hits, "stale": t.store_stale, "misses": t.store_misses, "errors": t.store_errors},
        },
        "queue": {"depth": e.batcher().queued(), "capacity": e.batcher().capacity()},
        "writes": {"pending": e.pending_writes(), "failed": s.writes_failed, "dropped": s.writes_dropped, "unchanged": s.writes_unchanged},
        "models": models,
        "model_events": e.models().events(),
        "store": e.store_description(),
        "cost": cost_now(&state),
        "activity": e.activity(),
        "jobs": e.jobs().snapshot(),
        "threads": {
            "async_workers": tokio::runtime::Handle::current().metrics().num_workers(),
            "model": e.config().batcher.num_batch_threads.max(1),
        },
    }))
    .into_response()
}

/// The cost per 1000 predictions at the recent request rate, when a price
/// is configured.
pub(crate) fn cost_now(state: &AppState) -> serde_json::Value {
    match state.price_per_hour {
        Some(price) => {
            let rps = state.latency.recent().throughput;
            json!({
                "price_per_hour": price,
                "recent_rps": rps,
                "per_1k_predictions": tandem_core::cost::serving_cost_per_1k(price, rps),
            })
        }
        None => serde_json::Value::Null,
    }
}

async fn sla(State(state): State<AppState>) -> Response {
    let recent = state.latency.recent();
    let observed = Observed {
        requests: recent.requests,
        p99_ms: recent.p99_ms,
        refused: recent.refused,
        failed: recent.failed,
    };
    let results = check(&state.sla, &observed);
    Json(json!({
        "window_secs": state.latency.window().as_secs(),
        "requests": recent.requests,
        "met": results.iter().all(|r| r.met),
        "targets": results,
    }))
    .into_response()
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight requests finish, and flushes the engine's
/// pending store writes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    config: HttpConfig,
    metrics: Option<recorder::MetricsHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = state(engine.clone(), &config, metrics);
    let app = front::Front::new(routes(state.clone(), &config), state, config.body_limit);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    engine.flush().await;
    Ok(())
}
