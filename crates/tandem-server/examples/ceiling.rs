//! The benchmark's ceiling: the same server stack as `tandem serve` (axum
//! on a multi-threaded tokio runtime, one listener, mimalloc) answering
//! every request with a fixed JSON body of the size of a native answer.
//!
//! ```text
//! cargo run --release -p tandem-server --example ceiling -- 127.0.0.1:18081 [WORK_NS]
//! ```
//!
//! With `WORK_NS`, each request first keeps its thread busy for that many
//! nanoseconds: a calibration of what a given amount of handler work costs
//! the whole server on a machine whose cores the load generator shares
//! (`scripts/bench/ceiling-work.sh`).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BODY: &str = r#"{"entity_id":"user-000000042","prediction":0.4213,"source":"memory","model":"xgboost_200x6","version":1,"computed_at":1795900000.5,"age_ms":1234,"warnings":[]}"#;

/// Busy time per request (none by default).
static WORK: OnceLock<Duration> = OnceLock::new();

async fn fixed() -> impl IntoResponse {
    if let Some(work) = WORK.get().filter(|w| !w.is_zero()) {
        let started = Instant::now();
        while started.elapsed() < *work {
            std::hint::spin_loop();
        }
    }
    ([(header::CONTENT_TYPE, "application/json")], BODY)
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18081".into());
    if let Some(ns) = args.next() {
        let ns: u64 = ns.parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("WORK_NS must be a whole number of nanoseconds, not {ns:?}"),
            )
        })?;
        let _ = WORK.set(Duration::from_nanos(ns));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let app = Router::new().fallback(get(fixed));
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            println!("ceiling listening on http://{}", listener.local_addr()?);
            axum::serve(listener, app).await
        })
}
