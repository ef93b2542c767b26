//! `tandem warm`: score the entities that will be asked for before they
//! are, from the features already in the feature store, and write them as
//! fresh predictions: the K most active entities of a look-back window
//! (from the activity log `tandem serve` keeps), or an explicit list.
//! Reads and writes go in chunks; the model sees each chunk as one
//! `[N, F]` block, as in a batch run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tandem_core::digest::feature_digest;
use tandem_core::record::{pack_inputs, unix_seconds};
use tandem_core::{FeatureBatch, PredictionRecord, PredictionSource};
use tandem_model::Model;
use tandem_store::{PredictionEntry, Store};

use crate::error::BatchError;
use crate::job::{Progress, new_run_id, open_store};

/// Which entities to warm.
#[derive(Debug, Clone, PartialEq)]
pub enum WarmTargets {
    /// The `k` most active over `lookback`.
    TopK {
        /// How many.
        k: usize,
        /// The window.
        lookback: Duration,
    },
    /// These.
    Entities(Vec<String>),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct WarmOptions {
    /// The model (its `model.toml` must name the features).
    pub model: PathBuf,
    /// Prediction store (and activity log) URL.
    pub store: String,
    /// Feature store URL, when not the prediction store.
    pub feature_store: Option<String>,
    /// Which entities.
    pub targets: WarmTargets,
    /// TTL of the predictions written.
    pub ttl: Duration,
    /// Value of missing or non-finite features.
    pub fill: f32,
    /// Entities per read, model call and write.
    pub chunk: usize,
    /// Carried by every record (`warm-...` when not given).
    pub run_id: Option<String>,
}

impl WarmOptions {
    /// Defaults: TTL 24 h, fill 0, chunks of 4096.
    pub fn new(model: impl Into<PathBuf>, store: impl Into<String>, targets: WarmTargets) -> Self {
        WarmOptions {
            model: model.into(),
            store: store.into(),
            feature_store: None,
            targets,
            ttl: Duration::from_secs(24 * 3600),
            fill: 0.0,
            chunk: 4096,
            run_id: None,
        }
    }
}

/// What a warm run did.
#[derive(Debug, Clone, Serialize)]
pub struct WarmSummary {
    /// Carried by every record written.
    pub run_id: String,
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: u64,
    /// `top_k` or `list`.
    pub targets: String,
    /// Entities asked to warm.
    pub requested: u64,
    /// Predictions written.
    pub warmed: u64,
    /// Entities skipped, by reason (`no_features`).
    pub skipped: BTreeMap<String, u64>,
    /// Entities that failed, by reason (`corrupt_features`, `model_error`).
    pub failed: BTreeMap<String, u64>,
    /// Feature values filled (missing or not finite).
    pub filled: u64,
    /// Wall time in seconds.
    pub wall_seconds: f64,
    /// Entities per second.
    pub rows_per_second: f64,
}

impl WarmSummary {
    /// 0: every entity warmed; 1: some skipped or failed.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.skipped.is_empty() || !self.failed.is_empty())
    }
}

/// Whether to hold back before the next chunk (a serving process under
/// load); a chunk waits at most [`MAX_YIELD`] for it to clear.
pub type Busy<'a> = &'a (dyn Fn() -> bool + Send + Sync);

/// The longest a chunk waits for requests to clear.
pub const MAX_YIELD: Duration = Duration::from_millis(50);

/// Waits while `busy` holds, at most [`MAX_YIELD`].
pub(crate) async fn yield_to(busy: Busy<'_>) {
    let until = Instant::now() + MAX_YIELD;
    while busy() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs a warm job, opening the model and the stores it names.
pub async fn run_warm(
    opts: &WarmOptions,
    progress: &dyn Progress,
) -> Result<WarmSummary, BatchError> {
    let started = Instant::now();
    let result = async {
        if opts.ttl.is_zero() {
            return Err(BatchError::Invalid("--ttl must be positive".into()));
        }
        let model = Arc::new(Model::load(&opts.model)?);
        let store: Arc<dyn Store> = open_store(Some(&opts.store))
            .await?
            .ok_or_else(|| BatchError::Invalid("no store".into()))?;
        let features: Arc<dyn Store> = match &opts.feature_store {
            Some(url) => open_store(Some(url))
                .await?
                .ok_or_else(|| BatchError::Invalid("no feature store".into()))?,
            None => store.clone(),
        };
        Ok((model, store, features))
    }
    .await;
    match result {
        Ok((model, store, features)) => {
            run_warm_with(opts, model, store, features, progress, &|| false).await
        }
        Err(e) => {
            let failed: Result<WarmSummary, BatchError> = Err(e);
            record(&failed, started);
            failed
        }
    }
}

fn record(result: &Result<WarmSummary, BatchError>, started: Instant) {
    let totals = result.as_ref().map(|s| crate::telemetry::Totals {
        read: s.requested,
        scored: s.warmed,
        written: s.warmed,
        skipped: s.skipped.values().sum::<u64>() + s.failed.values().sum::<u64>(),
        filled: s.filled,
        wall_seconds: s.wall_seconds,
    });
    crate::telemetry::finished(
        "warm",
        totals.as_ref().map_err(|_| ()),
        started.elapsed().as_secs_f64(),
    );
}

/// Runs a warm job with a loaded model and open stores (a serving process
/// passes its own), holding back while `busy` says requests are waiting.
pub async fn run_warm_with(
    opts: &WarmOptions,
    model: Arc<Model>,
    store: Arc<dyn Store>,
    features: Arc<dyn Store>,
    progress: &dyn Progress,
    busy: Busy<'_>,
) -> Result<WarmSummary, BatchError> {
    let started = Instant::now();
    let result = warm_inner(opts, model, store, features, progress, busy).await;
    record(&result, started);
    result
}

async fn warm_inner(
    opts: &WarmOptions,
    model: Arc<Model>,
    store: Arc<dyn Store>,
    features: Arc<dyn Store>,
    progress: &dyn Progress,
    busy: Busy<'_>,
) -> Result<WarmSummary, BatchError> {
    let started = Instant::now();
    if opts.ttl.is_zero() {
        return Err(BatchError::Invalid("--ttl must be positive".into()));
    }
    let names = model.metadata().feature_names.clone();
    if names.is_empty() {
        return Err(BatchError::Schema(format!(
            "{}: the model does not name its features (model.toml [features] names); warm reads them by name",
            opts.model.display()
        )));
    }
    let (ids, targets) = match &opts.targets {
        WarmTargets::TopK { k, lookback } => {
            let top = store.top_active(*k, *lookback, SystemTime::now()).await?;
            (
                top.into_iter().map(|a| a.entity).collect::<Vec<_>>(),
                "top_k",
            )
        }
        WarmTargets::Entities(list) => (list.clone(), "list"),
    };
    let run_id: Arc<str> = Arc::from(
        opts.run_id
            .clone()
            .unwrap_or_else(|| new_run_id().replacen("run-", "warm-", 1)),
    );
    let model_name: Arc<str> = Arc::from(model.name());
    let mut summary = WarmSummary {
        run_id: run_id.to_string(),
        model: model.name().to_string(),
        version: model.version(),
        targets: targets.to_string(),
        requested: ids.len() as u64,
        warmed: 0,
        skipped: BTreeMap::new(),
        failed: BTreeMap::new(),
        filled: 0,
        wall_seconds: 0.0,
        rows_per_second: 0.0,
    };
    progress.start(Some(ids.len() as u64));
    let timestamp = unix_seconds(SystemTime::now());
    for chunk in ids.chunks(opts.chunk.max(1)) {
        yield_to(busy).await;
        let found = features.get_features(chunk).await?;
        let mut kept: Vec<&String> = Vec::with_capacity(chunk.len());
        let mut rows: Vec<Vec<f32>> = Vec::with_capacity(chunk.len());
        for (id, lookup) in chunk.iter().zip(found) {
            match lookup {
                Ok(row) => {
                    let mut values = Vec::with_capacity(names.len());
                    for n in &names {
                        match row.get(n).map(|v| v as f32) {
                            Some(v) if v.is_finite() => values.push(v),
                            _ => {
                                summary.filled += 1;
                                values.push(opts.fill);
                            }
                        }
                    }
                    kept.push(id);
                    rows.push(values);
                }
                Err(tandem_store::StoreError::NotFound { .. }) => {
                    *summary.skipped.entry("no_features".into()).or_default() += 1;
                }
                Err(tandem_store::StoreError::Corrupt { .. }) => {
                    *summary.failed.entry("corrupt_features".into()).or_default() += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !rows.is_empty() {
            let batch = FeatureBatch::from_rows(&rows)
                .map_err(|e| BatchError::Invalid(format!("building a batch: {e}")))?;
            let m = model.clone();
            let predicted = tokio::task::spawn_blocking(move || m.predict(&batch))
                .await
                .map_err(|e| BatchError::Invalid(format!("the model panicked: {e}")))?;
            match predicted {
                Ok(p) => {
                    let entries: Vec<PredictionEntry> = kept
                        .iter()
                        .zip(&rows)
                        .enumerate()
                        .map(|(i, (id, row))| PredictionEntry {
                            entity: (*id).clone(),
                            record: PredictionRecord {
                                prediction: f64::from(p.row(i)[0]),
                                timestamp,
                                values: None,
                                model: model_name.clone(),
                                version: model.version(),
                                source: PredictionSource::Batch,
                                run_id: Some(run_id.clone()),
                                digest: Some(feature_digest(row).into()),
                                inputs: Some(pack_inputs(row).into()),
                            },
                            ttl: opts.ttl,
                        })
                        .collect();
                    store.put_predictions(&entries).await?;
                    summary.warmed += entries.len() as u64;
                }
                Err(e) => {
                    tracing::warn!("scoring {} entities failed: {e}", rows.len());
                    *summary.failed.entry("model_error".into()).or_default() += rows.len() as u64;
                }
            }
        }
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    summary.wall_seconds = started.elapsed().as_secs_f64();
    summary.rows_per_second = summary.requested as f64 / summary.wall_seconds.max(1e-9);
    Ok(summary)
}
