//! Request ids: every request gets one (the caller's `x-request-id`, or a
//! new one), echoed in the response and, with `TANDEM_LOG` including
//! `tandem_server=debug`, carried by every log line written while the
//! request runs (a `tracing` span).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header read and written.
pub const HEADER: &str = "x-request-id";

static NEXT: AtomicU64 = AtomicU64::new(0);

fn new_id() -> String {
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 32
    });
    format!(
        "{:016x}",
        base.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
    )
}

/// Wraps a request in a span carrying its id, logs it at debug level, and
/// echoes the id.
pub async fn request_id(matched: Option<MatchedPath>, req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(new_id, str::to_string);
    let route = matched.map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().clone();
    // A debug-level span: free when `tandem_server=debug` is off (the
    // default), where an enabled span costs every request its formatting.
    let span = tracing::debug_span!("request", request_id = %id, %method, route = %route);
    let started = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(
            status = resp.status().as_u16(),
            micros = started.elapsed().as_micros() as u64,
            "answered"
        );
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(HEADER, v);
    }
    resp
}
