//! Request ids: every request gets one (the caller's `x-request-id`, or a
//! new one), echoed in the response and, with `TANDEM_LOG` including
//! `tandem_server=debug`, carried by every log line written while the
//! request runs (a `tracing` span). Applied by the one middleware every
//! request passes, [`crate::metrics::track`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use axum::response::Response;
use tracing::Instrument;

/// The header read and written.
pub const HEADER: &str = "x-request-id";
/// [`HEADER`] as a header name, made once (a `&str` name is parsed and
/// checked at every use).
const NAME: HeaderName = HeaderName::from_static(HEADER);

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A new id: 16 hex digits, unique within the process and unlikely to
/// repeat across processes.
fn new_id() -> HeaderValue {
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 32
    });
    let n = base.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
    let mut hex = [0u8; 16];
    for (i, b) in hex.iter_mut().enumerate() {
        *b = b"0123456789abcdef"[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&hex).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The request's id: the caller's (printable, 1 to 128 bytes) or a new one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&NAME)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.to_str().is_ok())
        .cloned()
        .unwrap_or_else(new_id)
}

/// Runs `answer` in a span carrying the request's id, logs it at debug
/// level, and echoes the id in the response.
pub async fn with_id(
    id: HeaderValue,
    method: &Method,
    route: &str,
    answer: impl Future<Output = Response>,
) -> Response {
    // A debug-level span: free when `tandem_server=debug` is off (the
    // default), where an enabled span costs every request its formatting.
    let span = tracing::debug_span!(
        "request",
        request_id = id.to_str().unwrap_or_default(),
        %method,
        route
    );
    let started = Instant::now();
    let mut resp = answer.instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(
            status = resp.status().as_u16(),
            micros = started.elapsed().as_micros() as u64,
            "answered"
        );
    });
    resp.headers_mut().insert(NAME, id);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_id_is_kept_and_others_get_a_fresh_one() {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("req-1"));
        assert_eq!(request_id(&h), "req-1");
        let a = request_id(&HeaderMap::new());
        let b = request_id(&HeaderMap::new());
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
        // Too long or not text: replaced.
        h.insert(HEADER, HeaderValue::from_str(&"x".repeat(129)).unwrap());
        assert_eq!(request_id(&h).len(), 16);
        h.insert(HEADER, HeaderValue::from_bytes(b"\xffid").unwrap());
        assert_eq!(request_id(&h).len(), 16);
    }
}
