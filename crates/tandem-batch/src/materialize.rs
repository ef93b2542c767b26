//! `tandem materialize`: load entity features from Parquet/CSV into the
//! feature store, with the same row rules as `tandem batch`.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::{DataType, Schema};
use futures::StreamExt;
use serde::Serialize;
use tandem_model::Model;
use tandem_store::Store;
use tandem_store::layout::{EncodedRows, FeatureEncoder};

use crate::error::BatchError;
use crate::job::{Progress, count_rows, open_store, strings};
use crate::plan::{InputSpec, base_query, resolve_features, scoring_query, session};
use crate::rows::{FeatureColumn, Reason, RowRules};

/// What to load and where.
#[derive(Debug, Clone)]
pub struct MaterializeOptions {
    /// Input: a Parquet/CSV file, a directory of them, or a glob.
    pub input: String,
    /// Feature store URL.
    pub store: String,
    /// Entity id column (default `entity_id`).
    pub id_column: String,
    /// Feature columns (default: the model's feature names if `model` is
    /// given, else every numeric column but the id).
    pub features: Option<Vec<String>>,
    /// A model whose feature names and width the features must match.
    pub model: Option<PathBuf>,
    /// TTL of the rows (default: none).
    pub ttl: Option<Duration>,
    /// SQL filter applied first.
    pub filter: Option<String>,
    /// SQL query over table `input` whose result is loaded.
    pub sql: Option<String>,
    /// Fail on the first bad row.
    pub strict: bool,
    /// Only shard `I` of `N`.
    pub shard: Option<(u32, u32)>,
    /// Value written for missing and NaN features (default 0).
    pub fill: f64,
    /// Rows per store write.
    pub write_batch: usize,
}

impl MaterializeOptions {
    /// Defaults for everything but input and store.
    pub fn new(input: impl Into<String>, store: impl Into<String>) -> Self {
        MaterializeOptions {
            input: input.into(),
            store: store.into(),
            id_column: "entity_id".into(),
            features: None,
            model: None,
            ttl: None,
            filter: None,
            sql: None,
            strict: false,
            shard: None,
            fill: 0.0,
            write_batch: 10_000,
        }
    }
}

/// What a materialize run did.
#[derive(Debug, Clone, Serialize)]
pub struct MaterializeSummary {
    /// Input as given.
    pub input: String,
    /// Store written.
    pub store: String,
    /// Feature columns loaded.
    pub features: Vec<String>,
    /// Rows read.
    pub rows_read: u64,
    /// Rows written.
    pub rows_written: u64,
    /// Rows skipped, all reasons.
    pub rows_skipped: u64,
    /// Rows skipped by reason.
    pub skipped: BTreeMap<String, u64>,
    /// Rows with filled features, by reason.
    pub filled: BTreeMap<String, u64>,
    /// Wall time in seconds.
    pub wall_seconds: f64,
    /// Rows per second.
    pub rows_per_second: f64,
}

impl MaterializeSummary {
    /// 0 clean, 1 rows skipped or filled.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.rows_skipped > 0 || !self.filled.is_empty())
    }
}

/// Loads features into the store.
pub async fn run_materialize(
    opts: &MaterializeOptions,
    progress: &dyn Progress,
) -> Result<MaterializeSummary, BatchError> {
    let started = Instant::now();
    let result = run_materialize_inner(opts, progress).await;
    let totals = result.as_ref().map(|s| crate::telemetry::Totals {
        read: s.rows_read,
        scored: 0,
        written: s.rows_written,
        skipped: s.rows_skipped,
        filled: s.filled.values().sum(),
        wall_seconds: s.wall_seconds,
    });
    crate::telemetry::finished(
        "materialize",
        totals.as_ref().map_err(|_| ()),
        started.elapsed().as_secs_f64(),
    );
    result
}

async fn run_materialize_inner(
    opts: &MaterializeOptions,
    progress: &dyn Progress,
) -> Result<MaterializeSummary, BatchError> {
    let started = Instant::now();
    crate::plan::check_shard(opts.shard)?;
    let model = match &opts.model {
        Some(p) => Some(Model::load(p)?),
        None => None,
    };
    let input = InputSpec::open(&opts.input).await?;
    let store: Arc<dyn Store> = open_store(Some(&opts.store))
        .await?
        .ok_or_else(|| BatchError::Invalid("no store".into()))?;
    let ctx = session(&input, None).await?;
    let base = base_query(opts.sql.as_deref(), opts.filter.as_deref());
    let schema: Schema = ctx.sql(&base).await?.schema().as_arrow().clone();
    let features = match &model {
        Some(m) => resolve_features(&schema, &opts.id_column, opts.features.as_deref(), m)?,
        None => numeric_features(&schema, &opts.id_column, opts.features.as_deref())?,
    };
    let source = crate::plan::parallel_source(&ctx, &base).await?;
    let query = scoring_query(
        &source,
        &opts.id_column,
        &features,
        &schema,
        opts.shard,
        false,
    );
    let plain = opts.sql.is_none() && opts.filter.is_none() && opts.shard.is_none();
    let total = if plain && input.format == crate::plan::Format::Parquet {
        count_rows(&ctx).await
    } else {
        None
    };
    progress.start(total);
    let mut stream = ctx.sql(&query).await?.execute_stream().await?;
    let mut rules = RowRules::new(opts.strict);
    if let Some(n) = total {
        rules.reserve(usize::try_from(n).unwrap_or(0));
    }
    // Rows are encoded straight from the columns (no map per row), back to
    // back into one buffer per chunk, and written by tasks, up to IN_FLIGHT
    // chunks at a time, while the scan goes on.
    // Made with the first batch, which tells which columns are FLOAT.
    let mut encoder: Option<FeatureEncoder> = None;
    let mut pending = EncodedRows::with_capacity(opts.write_batch, 0);
    let mut written = 0u64;
    let mut in_flight: VecDeque<tokio::task::JoinHandle<Result<u64, tandem_store::StoreError>>> =
        VecDeque::new();
    let mut values: Vec<f64> = vec![0.0; features.len()];
    // Rows of the batch that passed the id checks: (row in the batch, row
    // in the run).
    let mut kept: Vec<(usize, u64)> = Vec::new();
    let result: Result<(), BatchError> = async {
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let ids = strings(batch.column(0))?;
            let cols: Vec<FeatureColumn> = (0..features.len())
                .map(|f| FeatureColumn::of(batch.column(1 + f)))
                .collect::<Result<_, _>>()?;
            let encoder = encoder.get_or_insert_with(|| {
                let single: Vec<bool> = cols
                    .iter()
                    .map(|c| matches!(c, FeatureColumn::F32(_)))
                    .collect();
                FeatureEncoder::with_single(&features, &single)
            });
            // The ids first, in a loop of their own: the duplicate check
            // reads a table of up to millions of hashes at random, and
            // there those reads overlap, where one per row between encodes
            // would each wait for memory. A failed check (--strict) is
            // reported after the rows before it, as in one pass.
            kept.clear();
            let mut refused = None;
            for r in 0..batch.num_rows() {
                match rules.check_id(ids.is_valid(r).then(|| ids.value(r))) {
                    Ok(Some(_)) => kept.push((r, rules.rows() - 1)),
                    Ok(None) => {}
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
            }
            for &(r, row) in &kept {
                let id = ids.value(r);
                let (mut missing, mut nan) = (false, false);
                for (v, col) in values.iter_mut().zip(&cols) {
                    *v = match col.get_f64(r) {
                        None => {
                            missing = true;
                            opts.fill
                        }
                        Some(x) if x.is_nan() => {
                            nan = true;
                            opts.fill
                        }
                        Some(x) => x,
                    };
                }
                if missing {
                    rules.filled_at(row, id, Reason::MissingFeature)?;
                }
                if nan {
                    rules.filled_at(row, id, Reason::NanFeature)?;
                }
                pending.push(id, encoder, &values);
                if pending.len() >= opts.write_batch {
                    if in_flight.len() >= IN_FLIGHT
                        && let Some(h) = in_flight.pop_front()
                    {
                        written += join(h).await?;
                    }
                    // The next chunk takes about the room this one took.
                    let room = pending.bytes_len();
                    let chunk = std::mem::replace(
                        &mut pending,
                        EncodedRows::with_capacity(
                            opts.write_batch,
                            room / opts.write_batch.max(1),
                        ),
                    );
                    let store = store.clone();
                    let ttl = opts.ttl;
                    in_flight.push_back(tokio::spawn(async move {
                        let n = chunk.len() as u64;
                        store.put_encoded_features(chunk, ttl).await.map(|()| n)
                    }));
                }
            }
            if let Some(e) = refused {
                return Err(e);
            }
            progress.advance(batch.num_rows() as u64);
        }
        while let Some(h) = in_flight.pop_front() {
            written += join(h).await?;
        }
        if !pending.is_empty() {
            let n = pending.len() as u64;
            store
                .put_encoded_features(std::mem::take(&mut pending), opts.ttl)
                .await?;
            written += n;
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        // Wait for the writes already sent: each finishes whole or fails.
        for h in in_flight {
            let _ = h.await;
        }
    }
    progress.finish();
    result?;
    let wall = started.elapsed().as_secs_f64();
    let skipped = rules.skipped();
    Ok(MaterializeSummary {
        input: opts.input.clone(),
        store: store.describe(),
        features,
        rows_read: rules.rows(),
        rows_written: written,
        rows_skipped: skipped.values().sum(),
        skipped,
        filled: rules.filled_counts(),
        wall_seconds: wall,
        rows_per_second: rules.rows() as f64 / wall.max(1e-9),
    })
}

/// Chunks being written while the next is built.
const IN_FLIGHT: usize = 2;

async fn join(
    h: tokio::task::JoinHandle<Result<u64, tandem_store::StoreError>>,
) -> Result<u64, BatchError> {
    match h.await {
        Ok(r) => Ok(r?),
        Err(e) => Err(BatchError::Invalid(format!("store writer failed: {e}"))),
    }
}

fn numeric_features(
    schema: &Schema,
    id_column: &str,
    explicit: Option<&[String]>,
) -> Result<Vec<String>, BatchError> {
    if schema.field_with_name(id_column).is_err() {
        return Err(BatchError::Column {
            column: id_column.to_owned(),
            detail: "(the id column) is not in the input".into(),
        });
    }
    let features: Vec<String> = match explicit {
        Some(list) => list.to_vec(),
        None => schema
            .fields()
            .iter()
            .filter(|f| {
                f.name() != id_column
                    && (f.data_type().is_numeric() || f.data_type() == &DataType::Boolean)
            })
            .map(|f| f.name().clone())
            .collect(),
    };
    for f in &features {
        if schema.field_with_name(f).is_err() {
            return Err(BatchError::Column {
                column: f.clone(),
                detail: "is not in the input".into(),
            });
        }
    }
    if features.is_empty() {
        return Err(BatchError::Schema("no feature columns to load".into()));
    }
    Ok(features)
}
