//! The benchmark's ceiling: the same server stack as `tandem serve` (axum
//! on a multi-threaded tokio runtime, one listener, mimalloc) answering
//! every request with a fixed JSON body of the size of a native answer.
//!
//! ```text
//! cargo run --release -p tandem-server --example ceiling -- 127.0.0.1:18081
//! ```

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BODY: &str = r#"{"entity_id":"user-000000042","prediction":0.4213,"source":"memory","model":"xgboost_200x6","version":1,"computed_at":1795900000.5,"age_ms":1234,"warnings":[]}"#;

async fn fixed() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], BODY)
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18081".into());
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
