//! `tandem batch`: score every entity of a data set into the prediction
//! store and/or a Parquet file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::parquet::arrow::ArrowWriter;
use futures::StreamExt;
use serde::Serialize;
use tandem_core::{PredictionRecord, PredictionSource, unix_millis, unix_seconds};
use tandem_model::Model;
use tandem_store::Store;
use tandem_store::layout::{EncodedRows, RecordEncoder};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::BatchError;
use crate::plan::{InputSpec, base_query, resolve_features, scoring_query, session};
use crate::rows::{FeatureColumn, Reason, RowRules};

/// What to score, where to write it, and how strictly.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// The ONNX model (its sidecar `.toml`, if any, is read too).
    pub model: PathBuf,
    /// Input: a Parquet/CSV file, a directory of them, or a glob.
    pub input: String,
    /// Entity id column (default `entity_id`).
    pub id_column: String,
    /// Feature columns in model order (default: the model's feature names,
    /// else every numeric column but the id).
    pub features: Option<Vec<String>>,
    /// Prediction store URL.
    pub store: Option<String>,
    /// TTL of the written records (default 24 h).
    pub ttl: Duration,
    /// Parquet output file (entity_id, prediction, model, version,
    /// computed_at).
    pub output: Option<PathBuf>,
    /// SQL filter applied before scoring.
    pub filter: Option<String>,
    /// SQL query over table `input` whose result is scored.
    pub sql: Option<String>,
    /// Fail on the first bad row instead of filling or skipping it.
    pub strict: bool,
    /// The run id (default: generated), or the run to resume.
    pub run_id: Option<String>,
    /// Resume `run_id`: entities whose stored record carries this run id
    /// are not written again.
    pub resume: bool,
    /// Score only shard `I` of `N` (by entity id hash).
    pub shard: Option<(u32, u32)>,
    /// Value given to missing and NaN features (default 0).
    pub fill: f32,
    /// Records per store write (default 10 000).
    pub write_batch: usize,
    /// Write a digest index of the records ([`crate::index`]) here when
    /// the run succeeds, for `tandem refresh --index`.
    pub index: Option<PathBuf>,
}

impl BatchOptions {
    /// Options with the defaults for everything but model and input.
    pub fn new(model: impl Into<PathBuf>, input: impl Into<String>) -> Self {
        BatchOptions {
            model: model.into(),
            input: input.into(),
            id_column: "entity_id".into(),
            features: None,
            store: None,
            ttl: Duration::from_secs(24 * 3600),
            output: None,
            filter: None,
            sql: None,
            strict: false,
            run_id: None,
            resume: false,
            shard: None,
            fill: 0.0,
            write_batch: 10_000,
            index: None,
        }
    }
}

/// Receives progress as rows stream through.
pub trait Progress: Send + Sync {
    /// The run starts; `total` rows if known.
    fn start(&self, total: Option<u64>);
    /// `rows` more rows were processed.
    fn advance(&self, rows: u64);
    /// The run ended.
    fn finish(&self);
}

/// A progress sink that shows nothing.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _total: Option<u64>) {}
    fn advance(&self, _rows: u64) {}
    fn finish(&self) {}
}

/// What a batch run did.
#[derive(Debug, Clone, Serialize)]
pub struct BatchSummary {
    /// The run id, carried by every record written.
    pub run_id: String,
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: u64,
    /// Input as given.
    pub input: String,
    /// Store written (no secrets), if any.
    pub store: Option<String>,
    /// Parquet output written, if any.
    pub output: Option<String>,
    /// Rows read from the input (after `--where`/`--sql`/`--shard`).
    pub rows_read: u64,
    /// Rows scored and kept.
    pub rows_scored: u64,
    /// Records written to the store.
    pub rows_written: u64,
    /// Records skipped because a resumed run had already written them.
    pub already_written: u64,
    /// Rows skipped, all reasons.
    pub rows_skipped: u64,
    /// Rows skipped by reason.
    pub skipped: BTreeMap<String, u64>,
    /// Rows with filled features, by reason.
    pub filled: BTreeMap<String, u64>,
    /// Wall time in seconds.
    pub wall_seconds: f64,
    /// Rows read per second of wall time.
    pub rows_per_second: f64,
}

impl BatchSummary {
    /// 0: every row scored as is; 1: finished, but rows were skipped or
    /// features filled.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.rows_skipped > 0 || !self.filled.is_empty())
    }
}

/// A generated run id: `run-<unix seconds>-<pid>`.
pub fn new_run_id() -> String {
    format!(
        "run-{}-{}",
        unix_millis(SystemTime::now()) / 1000,
        std::process::id()
    )
}

/// Runs a batch job. Everything that can be checked before writing (model,
/// input, columns, width, store reachable, output directory) is checked
/// first; then the input streams through the model into the writers.
pub async fn run_batch(
    opts: &BatchOptions,
    progress: &dyn Progress,
) -> Result<BatchSummary, BatchError> {
    let started = Instant::now();
    let result = run_batch_inner(opts, progress).await;
    let totals = result.as_ref().map(|s| crate::telemetry::Totals {
        read: s.rows_read,
        scored: s.rows_scored,
        written: s.rows_written,
        skipped: s.rows_skipped,
        filled: s.filled.values().sum(),
        wall_seconds: s.wall_seconds,
    });
    crate::telemetry::finished(
        "batch",
        totals.as_ref().map_err(|_| ()),
        started.elapsed().as_secs_f64(),
    );
    result
}

async fn run_batch_inner(
    opts: &BatchOptions,
    progress: &dyn Progress,
) -> Result<BatchSummary, BatchError> {
    let started = Instant::now();
    let computed_at = SystemTime::now();
    crate::plan::check_shard(opts.shard)?;
    if opts.ttl.is_zero() {
        return Err(BatchError::Invalid("--ttl must be positive".into()));
    }
    if opts.resume && opts.run_id.is_none() {
        return Err(BatchError::Invalid(
            "--resume needs the run id to resume".into(),
        ));
    }
    if opts.store.is_none() && opts.output.is_none() {
        return Err(BatchError::Invalid(
            "nothing to write: give --store and/or --output".into(),
        ));
    }
    if opts.index.is_some() && opts.store.is_none() {
        return Err(BatchError::Invalid(
            "--index describes the records written to a store: give --store".into(),
        ));
    }
    let run_id = opts.run_id.clone().unwrap_or_else(new_run_id);
    let model = Arc::new(Model::load(&opts.model)?);
    let input = InputSpec::open(&opts.input).await?;
    let store = open_store(opts.store.as_deref()).await?;
    let expires = crate::index::secs(unix_seconds(computed_at) + opts.ttl.as_secs_f64());
    let ctx = session(&input, Some((&model, opts.fill))).await?;
    let base = base_query(opts.sql.as_deref(), opts.filter.as_deref());
    let schema = ctx.sql(&base).await?.schema().as_arrow().clone();
    let features = resolve_features(&schema, &opts.id_column, opts.features.as_deref(), &model)?;
    let mut index = opts
        .index
        .as_ref()
        .map(|p| {
            crate::index::IndexWriter::create(p, model.name(), model.version(), features.len())
        })
        .transpose()?;
    let source = crate::plan::parallel_source(&ctx, &base).await?;
    let query = scoring_query(
        &source,
        &opts.id_column,
        &features,
        &schema,
        opts.shard,
        true,
    );
    let df = ctx.sql(&query).await?;
    if let Some(url) = opts.output.as_ref().map(|p| p.to_string_lossy())
        && crate::objects::is_remote(&url)
    {
        crate::objects::check_writable(&url)
            .await
            .map_err(|detail| BatchError::Output {
                path: url.to_string(),
                detail,
            })?;
    }
    let mut output = match &opts.output {
        Some(path) => Some(OutputFile::create(path, &run_id)?),
        None => None,
    };

    // Parquet footers give the total for free; a CSV would be read twice.
    let plain = opts.sql.is_none() && opts.filter.is_none() && opts.shard.is_none();
    let total = if plain && input.format == crate::plan::Format::Parquet {
        count_rows(&ctx).await
    } else {
        None
    };
    progress.start(total);
    let stream = df.execute_stream().await?;
    let (writer, sender) = match &store {
        Some(store) => {
            let (tx, handle) = spawn_writer(store.clone(), opts.ttl);
            (Some(handle), Some(tx))
        }
        None => (None, None),
    };

    let mut rules = RowRules::new(opts.strict);
    if let Some(total) = total {
        rules.reserve(usize::try_from(total).unwrap_or(0));
    }
    let model_name: Arc<str> = Arc::from(model.name());
    let timestamp = unix_seconds(computed_at);
    let encoder = RecordEncoder::new(&PredictionRecord {
        prediction: 0.0,
        timestamp,
        values: None,
        model: model_name.clone(),
        version: model.version(),
        source: PredictionSource::Batch,
        run_id: Some(Arc::from(run_id.as_str())),
        digest: None,
        inputs: None,
    })
    .map(Arc::new)
    .ok_or_else(|| BatchError::Invalid("cannot encode this run's records".into()))?;
    let mut pending = EncodedRows::with_capacity(opts.write_batch, 0);
    let mut scored = 0u64;
    let mut already = 0u64;
    let mut outcome: Result<(), BatchError> = Ok(());
    // Records are prepared (encoded for the store, index hashes) on the
    // blocking pool, a batch per core at a time and in stream order; only
    // the row rules (the duplicate check) and the hand-off stay on this
    // loop.
    let how = Prepare {
        width: features.len(),
        fill: opts.fill,
        records: store.is_some().then_some(encoder),
        index: index.is_some(),
    };
    let mut prepared = stream
        .map(|batch| {
            let how = how.clone();
            async move {
                let batch = batch?;
                let rows = batch.num_rows();
                tokio::task::spawn_blocking(move || prepare_batch(&batch, &how))
                    .await
                    .map_err(|e| BatchError::Invalid(format!("preparing records failed: {e}")))?
                    .map(|p| (rows, p))
            }
        })
        .buffered(std::thread::available_parallelism().map_or(2, usize::from));
    'batches: while let Some(next) = prepared.next().await {
        let (rows, batch) = match next {
            Ok(b) => b,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        };
        let kept = match apply_rules(&batch, &mut rules) {
            Ok(k) => k,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        };
        let kept = if opts.resume {
            match drop_already_written(store.as_deref(), &batch, kept, &run_id).await {
                Ok((k, n)) => {
                    already += n;
                    k
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        } else {
            kept
        };
        scored += kept.len() as u64;
        if let Some(Err(e)) = output
            .as_mut()
            .map(|out| out.write(&batch, &kept, &model_name, model.version(), computed_at))
        {
            outcome = Err(e);
            break;
        }
        if let Some(ix) = &mut index {
            for row in &kept {
                if let Err(e) = ix.push(
                    crate::digest::id_hash(batch.id(row.row)),
                    crate::index::IndexEntry {
                        digest: batch.index_hash(row.row),
                        computed_at: crate::index::secs(timestamp),
                        expires_at: expires,
                    },
                    batch.halves(row.row).unwrap_or_default(),
                ) {
                    outcome = Err(e);
                    break 'batches;
                }
            }
        }
        if let Some(tx) = &sender {
            for row in &kept {
                let Some(record) = batch.record(row.row) else {
                    break;
                };
                pending.push_encoded(batch.id(row.row), record);
                if pending.len() >= opts.write_batch {
                    let chunk = std::mem::replace(
                        &mut pending,
                        EncodedRows::with_capacity(opts.write_batch, record.len() + 8),
                    );
                    if tx.send(chunk).await.is_err() {
                        // The writer stopped on an error; it is reported below.
                        break 'batches;
                    }
                }
            }
        }
        progress.advance(rows as u64);
    }
    if let Some(tx) = sender {
        if outcome.is_ok() && !pending.is_empty() {
            let _ = tx.send(std::mem::take(&mut pending)).await;
        }
        drop(tx);
    }
    let written = match writer {
        Some(handle) => match handle.await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                if outcome.is_ok() {
                    outcome = Err(e.into());
                }
                0
            }
            Err(e) => {
                if outcome.is_ok() {
                    outcome = Err(BatchError::Invalid(format!("store writer failed: {e}")));
                }
                0
            }
        },
        None => 0,
    };
    progress.finish();
    let output_path = match (output, &outcome) {
        (Some(out), Ok(())) => Some(out.finish().await?),
        (Some(out), Err(_)) => {
            out.abandon();
            None
        }
        (None, _) => None,
    };
    outcome?;
    if let Some(ix) = index {
        ix.finish()?;
    }
    let wall = started.elapsed().as_secs_f64();
    let skipped = rules.skipped();
    Ok(BatchSummary {
        run_id,
        model: model.name().to_owned(),
        version: model.version(),
        input: opts.input.clone(),
        store: store.as_ref().map(|s| s.describe()),
        output: output_path.map(|p| p.display().to_string()),
        rows_read: rules.rows(),
        rows_scored: scored,
        rows_written: written,
        already_written: already,
        rows_skipped: skipped.values().sum(),
        skipped,
        filled: rules.filled_counts(),
        wall_seconds: wall,
        rows_per_second: rules.rows() as f64 / wall.max(1e-9),
    })
}

/// Opens the store and checks it answers, so that a down store fails the
/// run before anything is written.
/// Bound on one store call of a batch job whose store URL sets no
/// `timeout_ms`: a job writes in large pipelined chunks, often on a machine
/// it shares with the store, and one slow moment should not fail a run of
/// millions of rows. (Serving keeps the store's 1 s default, where a
/// request must fall back quickly.)
pub const BATCH_STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub(crate) async fn open_store(url: Option<&str>) -> Result<Option<Arc<dyn Store>>, BatchError> {
    let Some(url) = url else {
        return Ok(None);
    };
    let defaults = tandem_store::StoreOptions {
        timeout: BATCH_STORE_TIMEOUT,
        ..Default::default()
    };
    let store = tandem_store::open_parsed(tandem_store::StoreUrl::parse_over(url, defaults)?)?;
    store.ping().await?;
    Ok(Some(store))
}

/// Rows in the input, from Parquet metadata or a count query.
pub(crate) async fn count_rows(ctx: &datafusion::prelude::SessionContext) -> Option<u64> {
    let df = ctx.sql("SELECT COUNT(*) FROM input").await.ok()?;
    let batches = df.collect().await.ok()?;
    let col = batches.first()?.column(0).clone();
    let col = cast(&col, &DataType::UInt64).ok()?;
    col.as_any().downcast_ref::<UInt64Array>()?.iter().next()?
}

/// One row to write: its place in its [`PreparedBatch`] and its
/// prediction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScoredRow {
    pub row: usize,
    pub prediction: f64,
}

/// What [`prepare_batch`] makes besides the predictions.
#[derive(Clone)]
pub(crate) struct Prepare {
    /// Features per row.
    pub width: usize,
    /// Value given to null and NaN features.
    pub fill: f32,
    /// Encodes the store records (`None`: no store to write to).
    pub records: Option<Arc<RecordEncoder>>,
    /// Index hashes and half-float inputs for the digest index.
    pub index: bool,
}

/// One scored batch (`entity_id`, `f0..`, `prediction`) with what each of
/// its records needs, before the row rules: made by [`prepare_batch`] off
/// the job's main loop, several batches at once, then taken in order by
/// [`apply_rules`].
pub(crate) struct PreparedBatch {
    ids: StringArray,
    rows: Vec<PreparedRow>,
    /// Every row's store record, encoded, back to back (a row without a
    /// finite prediction has an empty one): row `r` ends at `ends[r]`.
    records: Option<(Vec<u8>, Vec<usize>)>,
    /// Every row's inputs as half floats (the index keeps them), `2 *
    /// width` bytes a row.
    halves: Option<(Vec<u8>, usize)>,
}

struct PreparedRow {
    /// `None`: null.
    prediction: Option<f64>,
    /// [`crate::index::row_hash`] of the inputs (0 without the index).
    index_hash: u64,
    /// A feature was null (filled).
    missing: bool,
    /// A feature was NaN (filled).
    nan: bool,
}

impl PreparedBatch {
    /// The entity id of row `r` (a kept row's is never null).
    pub(crate) fn id(&self, r: usize) -> &str {
        self.ids.value(r)
    }

    /// The store record of row `r`, if records were made.
    pub(crate) fn record(&self, r: usize) -> Option<&[u8]> {
        self.records.as_ref().map(|(bytes, ends)| {
            let start = if r == 0 { 0 } else { ends[r - 1] };
            &bytes[start..ends[r]]
        })
    }

    /// The half-float inputs of row `r`, if the index is kept.
    pub(crate) fn halves(&self, r: usize) -> Option<&[u8]> {
        self.halves
            .as_ref()
            .map(|(bytes, n)| &bytes[r * n..(r + 1) * n])
    }

    /// [`crate::index::row_hash`] of row `r`'s inputs.
    pub(crate) fn index_hash(&self, r: usize) -> u64 {
        self.rows[r].index_hash
    }
}

/// Store records, index hashes and half-float inputs of a batch's rows,
/// computed from the same f32 values `predict` fed the model
/// (`pack_block`: null and NaN take the fill value), so that the digest,
/// the kept inputs and the index describe what was scored. Each is made
/// only when something takes it.
pub(crate) fn prepare_batch(
    batch: &RecordBatch,
    how: &Prepare,
) -> Result<PreparedBatch, BatchError> {
    let (rows, width) = (batch.num_rows(), how.width);
    let ids = strings(batch.column(0))?;
    let columns: Vec<ArrayRef> = (0..width).map(|f| batch.column(1 + f).clone()).collect();
    let block = crate::udf::pack_block(&columns, rows, how.fill)?;
    let (mut missing, mut nan) = (vec![false; rows], vec![false; rows]);
    for col in &columns {
        FeatureColumn::of(col)?.flag_rows(&mut missing, &mut nan);
    }
    let preds = doubles(batch.column(1 + width))?;
    let prediction = |r: usize| preds.is_valid(r).then(|| preds.value(r));
    let inputs = |r: usize| &block[r * width..(r + 1) * width];
    let records = how.records.as_deref().map(|encoder| {
        // About 180 bytes of JSON around a 16-feature packing of 44.
        let mut bytes = Vec::with_capacity(rows * (200 + 3 * width));
        let mut ends = Vec::with_capacity(rows);
        for r in 0..rows {
            if let Some(p) = prediction(r).filter(|p| p.is_finite()) {
                encoder.write(p, inputs(r), &mut bytes);
            }
            ends.push(bytes.len());
        }
        (bytes, ends)
    });
    let halves = how.index.then(|| {
        let mut bytes = Vec::with_capacity(2 * block.len());
        tandem_core::record::half_bytes(&block, &mut bytes);
        (bytes, 2 * width)
    });
    let rows = (0..rows)
        .map(|r| PreparedRow {
            prediction: prediction(r),
            index_hash: if how.index {
                crate::index::row_hash(inputs(r))
            } else {
                0
            },
            missing: missing[r],
            nan: nan[r],
        })
        .collect();
    Ok(PreparedBatch {
        ids,
        rows,
        records,
        halves,
    })
}

/// Applies the row rules, in input order, to a prepared batch: the rows
/// to write.
pub(crate) fn apply_rules(
    batch: &PreparedBatch,
    rules: &mut RowRules,
) -> Result<Vec<ScoredRow>, BatchError> {
    let ids = &batch.ids;
    let mut out = Vec::with_capacity(batch.rows.len());
    for (r, row) in batch.rows.iter().enumerate() {
        let id = ids.is_valid(r).then(|| ids.value(r));
        let Some(id) = rules.check_id(id)? else {
            continue;
        };
        if row.missing {
            rules.filled(id, Reason::MissingFeature)?;
        }
        if row.nan {
            rules.filled(id, Reason::NanFeature)?;
        }
        let prediction = match row.prediction {
            Some(p) if p.is_finite() => p,
            _ => {
                rules.skip_current(id, Reason::NonFinitePrediction)?;
                continue;
            }
        };
        out.push(ScoredRow { row: r, prediction });
    }
    Ok(out)
}

pub(crate) fn strings(col: &ArrayRef) -> Result<StringArray, BatchError> {
    let c = cast(col, &DataType::Utf8)?;
    c.as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| BatchError::Schema("entity ids did not cast to strings".into()))
}

pub(crate) fn doubles(col: &ArrayRef) -> Result<Float64Array, BatchError> {
    let c = cast(col, &DataType::Float64)?;
    c.as_any()
        .downcast_ref::<Float64Array>()
        .cloned()
        .ok_or_else(|| BatchError::Schema("a feature did not cast to DOUBLE".into()))
}

/// Drops rows whose stored record already carries `run` (a resumed run).
async fn drop_already_written(
    store: Option<&dyn Store>,
    batch: &PreparedBatch,
    rows: Vec<ScoredRow>,
    run: &str,
) -> Result<(Vec<ScoredRow>, u64), BatchError> {
    let Some(store) = store else {
        return Ok((rows, 0));
    };
    let ids: Vec<String> = rows.iter().map(|r| batch.id(r.row).to_owned()).collect();
    let found = store.get_predictions(&ids).await?;
    let before = rows.len();
    let kept: Vec<ScoredRow> = rows
        .into_iter()
        .zip(found)
        .filter(|(_, f)| !matches!(f, Ok(rec) if rec.run_id.as_deref() == Some(run)))
        .map(|(r, _)| r)
        .collect();
    let skipped = (before - kept.len()) as u64;
    Ok((kept, skipped))
}

/// A task that writes chunks of encoded records, each with `ttl`, while
/// scoring goes on.
fn spawn_writer(
    store: Arc<dyn Store>,
    ttl: Duration,
) -> (
    mpsc::Sender<EncodedRows>,
    JoinHandle<Result<u64, tandem_store::StoreError>>,
) {
    let (tx, mut rx) = mpsc::channel::<EncodedRows>(4);
    let handle = tokio::spawn(async move {
        // Two chunks at a time: one is encoded while the store takes the
        // other (Redis answers a whole pipeline before the next is built).
        const IN_FLIGHT: usize = 2;
        let mut written = 0u64;
        let mut writes = tokio::task::JoinSet::new();
        let joined = |r: Result<Result<u64, tandem_store::StoreError>, tokio::task::JoinError>| {
            r.unwrap_or_else(|e| {
                Err(tandem_store::StoreError::Backend {
                    backend: "writer",
                    detail: e.to_string(),
                })
            })
        };
        while let Some(chunk) = rx.recv().await {
            if writes.len() >= IN_FLIGHT
                && let Some(r) = writes.join_next().await
            {
                written += joined(r)?;
            }
            let store = store.clone();
            writes.spawn(async move {
                let n = chunk.len() as u64;
                store.put_encoded_predictions(chunk, ttl).await.map(|()| n)
            });
        }
        while let Some(r) = writes.join_next().await {
            written += joined(r)?;
        }
        Ok(written)
    });
    (tx, handle)
}

/// The Parquet output, written to a temporary file beside the target and
/// renamed into place only when the run succeeds.
struct OutputFile {
    target: PathBuf,
    temp: PathBuf,
    /// An object-store URL to upload the finished file to (the temporary
    /// file is then in the local temp directory).
    remote: Option<String>,
    writer: ArrowWriter<std::fs::File>,
    schema: Arc<Schema>,
}

impl OutputFile {
    fn create(target: &Path, run_id: &str) -> Result<OutputFile, BatchError> {
        let err = |detail: String| BatchError::Output {
            path: target.display().to_string(),
            detail,
        };
        let url = target.to_string_lossy();
        let remote = crate::objects::is_remote(&url).then(|| url.into_owned());
        let temp = if remote.is_some() {
            std::env::temp_dir().join(format!(
                "tandem-output-{run_id}-{}.parquet.tmp",
                std::process::id()
            ))
        } else {
            let dir = target
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !dir.is_dir() {
                return Err(err(format!("directory {} does not exist", dir.display())));
            }
            let name = target
                .file_name()
                .ok_or_else(|| err("not a file path".into()))?
                .to_string_lossy();
            dir.join(format!(".{name}.{run_id}.tmp"))
        };
        let file = std::fs::File::create(&temp).map_err(|e| err(e.to_string()))?;
        let schema = Arc::new(Schema::new(vec![
            Field::new("entity_id", DataType::Utf8, false),
            Field::new("prediction", DataType::Float64, false),
            Field::new("model", DataType::Utf8, false),
            Field::new("version", DataType::UInt64, false),
            Field::new(
                "computed_at",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
        ]));
        let writer =
            ArrowWriter::try_new(file, schema.clone(), None).map_err(|e| err(e.to_string()))?;
        Ok(OutputFile {
            target: target.to_path_buf(),
            temp,
            remote,
            writer,
            schema,
        })
    }

    fn write(
        &mut self,
        batch: &PreparedBatch,
        rows: &[ScoredRow],
        model: &str,
        version: u64,
        computed_at: SystemTime,
    ) -> Result<(), BatchError> {
        if rows.is_empty() {
            return Ok(());
        }
        let n = rows.len();
        let at = i64::try_from(unix_millis(computed_at)).unwrap_or(i64::MAX);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| batch.id(r.row)),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.prediction),
            )),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(model, n))),
            Arc::new(UInt64Array::from_iter_values(std::iter::repeat_n(
                version, n,
            ))),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(std::iter::repeat_n(at, n))
                    .with_timezone("UTC"),
            ),
        ];
        let batch =
            RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| BatchError::Output {
                path: self.target.display().to_string(),
                detail: e.to_string(),
            })?;
        self.writer.write(&batch).map_err(|e| BatchError::Output {
            path: self.target.display().to_string(),
            detail: e.to_string(),
        })
    }

    async fn finish(self) -> Result<PathBuf, BatchError> {
        let err = |detail: String| BatchError::Output {
            path: self.target.display().to_string(),
            detail,
        };
        self.writer.close().map_err(|e| err(e.to_string()))?;
        match &self.remote {
            Some(url) => {
                // One object written whole: a reader sees all of it or none.
                let uploaded = crate::objects::upload(&self.temp, url).await;
                let _ = std::fs::remove_file(&self.temp);
                uploaded.map_err(err)?;
            }
            None => std::fs::rename(&self.temp, &self.target).map_err(|e| err(e.to_string()))?,
        }
        Ok(self.target)
    }

    fn abandon(self) {
        drop(self.writer);
        let _ = std::fs::remove_file(&self.temp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float32Array, Float64Array};

    /// `entity_id, f0 (FLOAT), f1 (DOUBLE), prediction`.
    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("entity_id", DataType::Utf8, true),
            Field::new("f0", DataType::Float32, true),
            Field::new("f1", DataType::Float64, true),
            Field::new("prediction", DataType::Float64, true),
        ]));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![
                Some("a"),
                Some("b"),
                Some("a"),
                None,
                Some("c"),
                Some("d"),
            ])),
            Arc::new(Float32Array::from(vec![
                Some(1.0),
                None,
                Some(3.0),
                Some(4.0),
                Some(f32::NAN),
                Some(6.0),
            ])),
            Arc::new(Float64Array::from(vec![
                Some(0.5),
                Some(f64::NAN),
                Some(2.5),
                Some(3.5),
                Some(4.5),
                None,
            ])),
            Arc::new(Float64Array::from(vec![
                Some(0.1),
                Some(0.2),
                Some(0.3),
                Some(0.4),
                Some(f64::NAN),
                Some(0.6),
            ])),
        ];
        RecordBatch::try_new(schema, cols).unwrap()
    }

    fn how(records: bool, index: bool) -> Prepare {
        let encoder = RecordEncoder::new(&PredictionRecord {
            prediction: 0.0,
            timestamp: 1_700_000_000.5,
            values: None,
            model: Arc::from("m"),
            version: 2,
            source: PredictionSource::Batch,
            run_id: Some(Arc::from("run-1")),
            digest: None,
            inputs: None,
        })
        .unwrap();
        Prepare {
            width: 2,
            fill: -1.0,
            records: records.then(|| Arc::new(encoder)),
            index,
        }
    }

    #[test]
    fn prepared_rows_follow_the_row_rules_in_order_and_describe_the_filled_values() {
        let mut rules = RowRules::new(false);
        let prepared = prepare_batch(&batch(), &how(true, true)).unwrap();
        let rows = apply_rules(&prepared, &mut rules).unwrap();
        // The second "a" and the null id are skipped; "c" has a NaN
        // prediction.
        let ids: Vec<&str> = rows.iter().map(|r| prepared.id(r.row)).collect();
        assert_eq!(ids, ["a", "b", "d"]);
        assert_eq!(rules.rows(), 6);
        assert_eq!(rules.skipped().values().sum::<u64>(), 3);
        // "b": f0 null and f1 NaN, both filled; "c" (skipped later) had a
        // NaN f0; "d": f1 null.
        let filled = rules.filled_counts();
        assert_eq!(filled.values().sum::<u64>(), 4, "{filled:?}");
        // Each kept row's record is the record of its prediction and the
        // values the model saw (fill values included), as it is stored.
        let expect = |prediction: f64, inputs: &[f32]| PredictionRecord {
            prediction,
            timestamp: 1_700_000_000.5,
            values: None,
            model: Arc::from("m"),
            version: 2,
            source: PredictionSource::Batch,
            run_id: Some(Arc::from("run-1")),
            digest: Some(crate::digest::feature_digest(inputs).into()),
            inputs: Some(tandem_core::record::pack_inputs(inputs).into()),
        };
        let record = |r: usize| {
            tandem_store::layout::decode_prediction("k", prepared.record(r).unwrap()).unwrap()
        };
        let b = rows[1];
        assert_eq!((b.row, b.prediction), (1, 0.2));
        assert_eq!(record(1), expect(0.2, &[-1.0, -1.0]));
        assert_eq!(record(0), expect(0.1, &[1.0, 0.5]));
        assert_eq!(record(5), expect(0.6, &[6.0, -1.0]));
        // "c" (NaN prediction) gets no record.
        assert_eq!(prepared.record(4), Some(&b""[..]));
        assert_eq!(
            prepared.index_hash(1),
            crate::index::row_hash(&[-1.0, -1.0])
        );
        assert_eq!(prepared.index_hash(5), crate::index::row_hash(&[6.0, -1.0]));
        assert_eq!(prepared.index_hash(0), crate::index::row_hash(&[1.0, 0.5]));
        let mut halves = Vec::new();
        tandem_core::record::half_bytes(&[6.0, -1.0], &mut halves);
        assert_eq!(prepared.halves(5), Some(halves.as_slice()));

        // Without a store or an index, neither records nor halves; the
        // same rows.
        let mut rules = RowRules::new(false);
        let plain = prepare_batch(&batch(), &how(false, false)).unwrap();
        let bare = apply_rules(&plain, &mut rules).unwrap();
        assert_eq!(bare.len(), 3);
        assert!((0..6).all(|r| plain.record(r).is_none() && plain.halves(r).is_none()));
        assert_eq!(
            bare.iter().map(|r| r.row).collect::<Vec<_>>(),
            rows.iter().map(|r| r.row).collect::<Vec<_>>()
        );

        // Strict: the first filled value fails the run, naming its row.
        let mut strict = RowRules::new(true);
        let err = apply_rules(&plain, &mut strict).expect_err("strict");
        assert!(
            matches!(&err, BatchError::BadRow { row: 1, entity: Some(e), .. } if e == "b"),
            "{err}"
        );
    }
}
