//! Floors for row (b) of the serving benchmark: the ceiling's server stack
//! (axum on a multi-threaded tokio runtime, mimalloc) doing only the work
//! a real-time answer cannot do without, step by step: reading the
//! entity's feature row from Redis, scoring it on a model thread, writing
//! the prediction back. No memory tier, no metrics, no activity counts, no
//! fallbacks, no validation beyond what the steps need. Whatever share of
//! the ceiling a mode reaches on a machine, row (b), which does that work
//! and more, will not exceed.
//!
//! ```text
//! cargo run --release -p tandem-server --example feature_floor -- \
//!     127.0.0.1:18088 redis://127.0.0.1:6379 [get|mget|model|write] [MODEL]
//! ```
//!
//! - `get`: each request sends its own `GET features:{id}` on one shared
//!   connection (redis-rs pipelines the commands of concurrent requests);
//! - `mget` (default): one task merges the reads waiting at each moment
//!   into one `MGET` (up to 256 keys) with one read in flight, as the
//!   issue asks and tandem's coalescer does;
//! - `model`: `mget`, then the row (features in the model's order, `f0`,
//!   `f1`, ...) scored by the model given as a fourth argument, through
//!   tandem's batcher and model thread, the prediction in the answer;
//! - `memory` (row (a)'s floor): the batch prediction (`pred:{id}`) read
//!   by merged `MGET`s as in `mget` and then kept in memory for good, the
//!   answer built from it;
//! - `write`: `model`, then the prediction written back (`SET pred:{id}
//!   ... PX 3600000`, pipelined by one task, one write in flight) unless
//!   the same prediction was written for the entity less than a second
//!   ago, the rule tandem serve follows by default.
//!
//! An entity whose features are missing is answered 404, so that a wrong
//! key layout cannot pass for a fast one. `scripts/bench/serve-floor.sh`
//! runs the three modes against tandem serve under row (b)'s load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use redis::aio::MultiplexedConnection;
use tandem_engine::batcher::{Batcher, BatcherConfig, Output, Runner, Want};
use tandem_model::Model;
use tokio::sync::{mpsc, oneshot};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BODY: &str = r#"{"entity_id":"user-000000042","prediction":0.4213,"source":"realtime","model":"xgboost_200x6","version":1,"computed_at":1795900000.5,"age_ms":0,"warnings":[]}"#;

/// Most keys in one merged read.
const MAX_MERGED: usize = 256;

type Ask = (String, oneshot::Sender<Option<Vec<u8>>>);

#[derive(Clone)]
enum Reader {
    Get(MultiplexedConnection),
    Merged(mpsc::UnboundedSender<Ask>),
}

impl Reader {
    async fn read(&self, key: String) -> Result<Option<Vec<u8>>, String> {
        match self {
            Reader::Get(conn) => {
                let mut conn = conn.clone();
                redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())
            }
            Reader::Merged(asks) => {
                let (tx, rx) = oneshot::channel();
                asks.send((key, tx))
                    .map_err(|_| "the merging task stopped".to_string())?;
                rx.await.map_err(|_| "the merged read failed".to_string())
            }
        }
    }
}

/// Merges the asks waiting at each moment into one `MGET`, one at a time.
async fn merge(mut conn: MultiplexedConnection, mut asks: mpsc::UnboundedReceiver<Ask>) {
    let mut batch: Vec<Ask> = Vec::with_capacity(MAX_MERGED);
    while asks.recv_many(&mut batch, MAX_MERGED).await > 0 {
        let mut cmd = redis::cmd("MGET");
        for (key, _) in &batch {
            cmd.arg(key);
        }
        match cmd.query_async::<Vec<Option<Vec<u8>>>>(&mut conn).await {
            Ok(values) => {
                for ((_, tx), value) in batch.drain(..).zip(values) {
                    let _ = tx.send(value);
                }
            }
            Err(e) => {
                eprintln!("MGET failed: {e}");
                batch.clear();
            }
        }
    }
}

/// Writes what it is given as pipelined `SET`s, one pipeline at a time.
async fn write(
    mut conn: MultiplexedConnection,
    mut writes: mpsc::UnboundedReceiver<(String, String)>,
) {
    let mut batch = Vec::with_capacity(MAX_MERGED);
    while writes.recv_many(&mut batch, MAX_MERGED).await > 0 {
        let mut pipe = redis::pipe();
        for (key, value) in batch.drain(..) {
            pipe.cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(3_600_000)
                .ignore();
        }
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            eprintln!("write-back failed: {e}");
        }
    }
}

struct Scoring {
    model: Arc<Model>,
    names: Vec<String>,
    batcher: Batcher,
}

/// Row (a)'s floor: batch predictions kept in memory once read, never
/// dropped, with no TTL, no size bound and no staleness rule.
struct Memory {
    shards: Vec<Mutex<HashMap<String, (f64, f64)>>>,
}

impl Memory {
    fn new() -> Memory {
        Memory {
            shards: (0..64).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, entity: &str) -> &Mutex<HashMap<String, (f64, f64)>> {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        entity.hash(&mut h);
        &self.shards[(h.finish() as usize) % self.shards.len()]
    }
}

#[derive(serde::Deserialize)]
struct Stored {
    prediction: f64,
    timestamp: f64,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn stored_answer(entity: &str, (prediction, timestamp): (f64, f64), source: &str) -> Response {
    let age_ms = ((unix_now() - timestamp) * 1000.0).max(0.0) as u64;
    json(format!(
        r#"{{"entity_id":"{entity}","prediction":{prediction},"source":"{source}","model":"xgboost_200x6","version":1,"computed_at":{timestamp},"age_ms":{age_ms},"warnings":[]}}"#
    ))
}

async fn hybrid(floor: &Floor, memory: &Memory, entity: String) -> Response {
    let hit = memory
        .shard(&entity)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&entity)
        .copied();
    if let Some(hit) = hit {
        return stored_answer(&entity, hit, "memory");
    }
    let bytes = match floor.reader.read(format!("pred:{entity}")).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return (StatusCode::NOT_FOUND, "no prediction").into_response(),
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    };
    let stored: Stored = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let record = (stored.prediction, stored.timestamp);
    memory
        .shard(&entity)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(entity.clone(), record);
    stored_answer(&entity, record, "store")
}

#[derive(Clone)]
struct Floor {
    memory: Option<Arc<Memory>>,
    reader: Reader,
    scoring: Option<Arc<Scoring>>,
    writes: Option<mpsc::UnboundedSender<(String, String)>>,
    written: Arc<Mutex<HashMap<String, (f32, Instant)>>>,
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn predict(State(floor): State<Floor>, Path(entity): Path<String>) -> Response {
    if let Some(memory) = &floor.memory {
        return hybrid(&floor, memory, entity).await;
    }
    let row = match floor.reader.read(format!("features:{entity}")).await {
        Ok(Some(row)) if !row.is_empty() => row,
        Ok(_) => return (StatusCode::NOT_FOUND, "no features").into_response(),
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    };
    let Some(scoring) = &floor.scoring else {
        return ([(header::CONTENT_TYPE, "application/json")], BODY).into_response();
    };
    let features = match tandem_store::layout::decode_features(&entity, &row) {
        Ok(f) => f,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let values: Vec<f32> = scoring
        .names
        .iter()
        .map(|n| features.get(n).unwrap_or(0.0) as f32)
        .collect();
    let runner: Arc<dyn Runner> = scoring.model.clone();
    let prediction = match scoring
        .batcher
        .submit(runner, values, Want::Predictions)
        .await
    {
        Ok(done) => match done.output {
            Output::Predictions(p) => p.row(0)[0],
            Output::Outputs(_) => {
                return (StatusCode::INTERNAL_SERVER_ERROR, "wrong output").into_response();
            }
        },
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    if let Some(writes) = &floor.writes {
        let fresh = {
            let mut written = floor.written.lock().unwrap_or_else(|e| e.into_inner());
            let t = Instant::now();
            match written.get(&entity) {
                Some(&(p, at)) if p == prediction && t - at < Duration::from_secs(1) => false,
                _ => {
                    written.insert(entity.clone(), (prediction, t));
                    true
                }
            }
        };
        if fresh {
            let _ = writes.send((
                format!("pred:{entity}"),
                format!(
                    r#"{{"prediction":{prediction},"timestamp":{now},"model":"{}","version":1,"source":"realtime"}}"#,
                    scoring.model.name()
                ),
            ));
        }
    }
    json(format!(
        r#"{{"entity_id":"{entity}","prediction":{prediction},"source":"realtime","model":"{}","version":1,"computed_at":{now},"age_ms":0,"warnings":[]}}"#,
        scoring.model.name()
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18088".into());
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let mode = args.next().unwrap_or_else(|| "mget".into());
    let model = args.next();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let conn = redis::Client::open(url.as_str())?
                .get_multiplexed_async_connection()
                .await?;
            let reader = match mode.as_str() {
                "get" => Reader::Get(conn.clone()),
                "mget" | "model" | "write" | "memory" => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(merge(conn.clone(), rx));
                    Reader::Merged(tx)
                }
                other => {
                    return Err(format!(
                        "mode is get, mget, model, write or memory, not {other:?}"
                    )
                    .into());
                }
            };
            let scoring = if matches!(mode.as_str(), "model" | "write") {
                let path = model.ok_or("modes model and write need a model path")?;
                let model = Arc::new(Model::load(&path)?);
                let names = (0..model.width()).map(|i| format!("f{i}")).collect();
                let batcher = Batcher::start(BatcherConfig::default());
                Some(Arc::new(Scoring {
                    model,
                    names,
                    batcher,
                }))
            } else {
                None
            };
            let writes = (mode == "write").then(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(write(conn, rx));
                tx
            });
            let floor = Floor {
                memory: (mode == "memory").then(|| Arc::new(Memory::new())),
                reader,
                scoring,
                writes,
                written: Arc::default(),
            };
            let app = Router::new()
                .route("/v1/predict/{entity}", get(predict))
                .route("/readyz", get(|| async { "ok" }))
                .with_state(floor);
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            println!(
                "feature floor ({mode}) listening on http://{}",
                listener.local_addr()?
            );
            axum::serve(listener, app).await?;
            Ok(())
        })
}
