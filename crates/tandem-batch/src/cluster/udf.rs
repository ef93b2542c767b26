//! `tandem_score(...)`: the distributed form of `predict`. It scores a batch
//! with the model of the process it runs in (an executor's `--model`),
//! refuses to run when that model is not the one the job was planned for,
//! and writes the records to the prediction store from where it runs, so
//! predictions reach the store from every executor in parallel.
//!
//! Arguments (the first [`FIXED_ARGS`] are constants of the plan):
//! `tandem_score(entity_id, model_name, model_version, store_url, ttl_ms,
//! run_id, computed_at_secs, fill, strict, part, parts, f0, ..., fn)`.
//! Returns the prediction, or NULL when the model gave a non-finite value
//! (skipped) or the entity is not in hash shard `part` of `parts` (one
//! job per output part; the function selects its rows itself, because the
//! engine may evaluate a projection before a filter written under it).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, StringArray, UInt32Array};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use tandem_core::{PredictionRecord, PredictionSource};
use tandem_model::Model;
use tandem_store::Store;
use tandem_store::layout::{EncodedRows, RecordEncoder};

use crate::digest::shard_of;
use crate::udf::{pack_block, predict_block};

/// The function's name in plans.
pub const NAME: &str = "tandem_score";

/// Constant arguments before the features.
pub const FIXED_ARGS: usize = 11;

/// Store I/O for a process: its own small runtime (the UDF is called from
/// the engine's threads, which must not block on a runtime they run on) and
/// the stores opened so far, by URL.
pub(crate) struct Io {
    /// Always `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
    stores: Mutex<HashMap<String, Arc<dyn Store>>>,
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io").finish_non_exhaustive()
    }
}

impl Io {
    pub(crate) fn new() -> std::io::Result<Io> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tandem-store-io")
            .enable_all()
            .build()?;
        Ok(Io {
            runtime: Some(runtime),
            stores: Mutex::new(HashMap::new()),
        })
    }

    /// Runs `f` on the I/O runtime and waits for it.
    fn run<F>(&self, f: F) -> Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let Some(runtime) = &self.runtime else {
            return exec_err!("the store I/O runtime is shut down");
        };
        runtime.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv()
            .map_err(|_| DataFusionError::Execution("the store I/O task stopped".into()))
    }

    fn store(&self, url: &str) -> Result<Arc<dyn Store>> {
        let mut stores = self
            .stores
            .lock()
            .map_err(|_| DataFusionError::Execution("store cache poisoned".into()))?;
        if let Some(s) = stores.get(url) {
            return Ok(s.clone());
        }
        let owned = url.to_owned();
        let store = self
            .run(async move { tandem_store::open(&owned) })?
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        stores.insert(url.to_owned(), store.clone());
        Ok(store)
    }

    fn write(&self, url: &str, rows: EncodedRows, ttl: Duration) -> Result<()> {
        let store = self.store(url)?;
        self.run(async move { store.put_encoded_predictions(rows, ttl).await })?
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        // Dropped wherever the last UDF reference goes, often inside an
        // async context, where a blocking shutdown is not allowed.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// `tandem_score`, with the process's model (executors) or without
/// (scheduler and a remote client only plan).
#[derive(Debug)]
pub struct ScoreUdf {
    model: Option<Arc<Model>>,
    io: Option<Arc<Io>>,
    signature: Signature,
}

impl ScoreUdf {
    /// For planning only: no model, no store.
    pub fn planner() -> Self {
        ScoreUdf {
            model: None,
            io: None,
            signature: Signature::variadic_any(Volatility::Volatile),
        }
    }

    /// For a process that scores: `model` and its own store I/O.
    pub fn scorer(model: Arc<Model>) -> std::io::Result<Self> {
        Ok(ScoreUdf {
            model: Some(model),
            io: Some(Arc::new(Io::new()?)),
            signature: Signature::variadic_any(Volatility::Volatile),
        })
    }

    /// As a DataFusion `ScalarUDF`.
    pub fn into_udf(self) -> ScalarUDF {
        ScalarUDF::new_from_impl(self)
    }
}

impl PartialEq for ScoreUdf {
    fn eq(&self, other: &Self) -> bool {
        let key = |m: &Option<Arc<Model>>| m.as_ref().map(|m| (m.name().to_owned(), m.version()));
        key(&self.model) == key(&other.model)
    }
}

impl Eq for ScoreUdf {}

impl Hash for ScoreUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        NAME.hash(state);
        if let Some(m) = &self.model {
            m.name().hash(state);
            m.version().hash(state);
        }
    }
}

fn scalar(args: &ScalarFunctionArgs, i: usize, what: &str) -> Result<ScalarValue> {
    match &args.args[i] {
        ColumnarValue::Scalar(s) => Ok(s.clone()),
        ColumnarValue::Array(_) => exec_err!("{NAME}: {what} must be a constant"),
    }
}

fn scalar_string(args: &ScalarFunctionArgs, i: usize, what: &str) -> Result<String> {
    match scalar(args, i, what)?.cast_to(&DataType::Utf8)? {
        ScalarValue::Utf8(Some(s)) => Ok(s),
        _ => exec_err!("{NAME}: {what} must be a string"),
    }
}

fn scalar_f64(args: &ScalarFunctionArgs, i: usize, what: &str) -> Result<f64> {
    match scalar(args, i, what)?.cast_to(&DataType::Float64)? {
        ScalarValue::Float64(Some(v)) => Ok(v),
        _ => exec_err!("{NAME}: {what} must be a number"),
    }
}

fn scalar_bool(args: &ScalarFunctionArgs, i: usize, what: &str) -> Result<bool> {
    match scalar(args, i, what)?.cast_to(&DataType::Boolean)? {
        ScalarValue::Boolean(Some(v)) => Ok(v),
        _ => exec_err!("{NAME}: {what} must be a boolean"),
    }
}

impl ScalarUDFImpl for ScoreUdf {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        if arg_types.len() <= FIXED_ARGS {
            return exec_err!(
                "{NAME} takes {FIXED_ARGS} constants and the features, got {} arguments",
                arg_types.len()
            );
        }
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (Some(model), Some(io)) = (&self.model, &self.io) else {
            return exec_err!(
                "{NAME}: this process has no model to score with (start the executor with --model)"
            );
        };
        let want_name = scalar_string(&args, 1, "the model name")?;
        let want_version = scalar_f64(&args, 2, "the model version")?;
        if want_name != model.name() || want_version != model.version() as f64 {
            return exec_err!(
                "{NAME}: this executor serves model {} version {}, but the job was planned for \
                 {want_name} version {want_version}; refusing to mix scores (start every executor \
                 with the job's model)",
                model.name(),
                model.version()
            );
        }
        let store_url = scalar_string(&args, 3, "the store URL")?;
        let ttl_ms = scalar_f64(&args, 4, "the TTL")?;
        let run_id = scalar_string(&args, 5, "the run id")?;
        let timestamp = scalar_f64(&args, 6, "computed_at")?;
        let fill = scalar_f64(&args, 7, "the fill value")? as f32;
        let strict = scalar_bool(&args, 8, "strict")?;
        let part = scalar_f64(&args, 9, "the part")? as u32;
        let parts = (scalar_f64(&args, 10, "the part count")? as u32).max(1);
        let width = model.width();
        if args.args.len() != FIXED_ARGS + width {
            return exec_err!(
                "{NAME}: the model takes {width} features, got {}",
                args.args.len() - FIXED_ARGS
            );
        }
        let rows = args.number_rows;
        let ids = args.args[0].to_array(rows)?;
        let ids = cast(&ids, &DataType::Utf8)?;
        let Some(ids) = ids.as_any().downcast_ref::<StringArray>() else {
            return exec_err!("{NAME}: ids did not cast to strings");
        };
        let columns: Vec<ArrayRef> = args.args[FIXED_ARGS..]
            .iter()
            .map(|c| c.to_array(rows))
            .collect::<Result<_>>()?;
        // The rows of this part (all of them when there is one part).
        let selected: Option<UInt32Array> = (parts > 1).then(|| {
            (0..rows)
                .filter(|&r| ids.is_valid(r) && shard_of(ids.value(r), parts) == part)
                .map(|r| r as u32)
                .collect()
        });
        let picked: Vec<ArrayRef> = match &selected {
            Some(sel) => columns
                .iter()
                .map(|c| take(c, sel, None))
                .collect::<std::result::Result<_, _>>()?,
            None => columns,
        };
        let row_of =
            |k: usize| -> usize { selected.as_ref().map_or(k, |sel| sel.value(k) as usize) };
        let n = picked.first().map_or(0, |c| c.len());
        let block = pack_block(&picked, n, fill)?;
        let predictions = predict_block(model, &block, n)?;
        // Each record written with the values the model was fed (`block`:
        // null and NaN took the fill value), as a local run writes them.
        let encoder = if store_url.is_empty() {
            None
        } else {
            let template = PredictionRecord {
                prediction: 0.0,
                timestamp,
                values: None,
                model: Arc::from(model.name()),
                version: model.version(),
                source: PredictionSource::Batch,
                run_id: Some(Arc::from(run_id.as_str())),
                digest: None,
                inputs: None,
            };
            Some(RecordEncoder::new(&template).ok_or_else(|| {
                DataFusionError::Execution(format!("{NAME}: cannot encode this run's records"))
            })?)
        };
        let ttl = Duration::from_millis(ttl_ms.max(1.0) as u64);
        let mut records = EncodedRows::with_capacity(if encoder.is_some() { n } else { 0 }, 300);
        let mut record = Vec::with_capacity(512);
        let mut out: Vec<Option<f64>> = vec![None; rows];
        for (k, &prediction) in predictions.iter().enumerate() {
            let r = row_of(k);
            let Some(id) = ids.is_valid(r).then(|| ids.value(r)) else {
                continue;
            };
            if !prediction.is_finite() {
                if strict {
                    return exec_err!(
                        "entity {id:?}: the model gave a non-finite prediction (--strict)"
                    );
                }
                continue;
            }
            out[r] = Some(prediction);
            if let Some(encoder) = &encoder {
                record.clear();
                encoder.write(prediction, &block[k * width..(k + 1) * width], &mut record);
                records.push_encoded(id, &record);
            }
        }
        if !records.is_empty() {
            io.write(&store_url, records, ttl)?;
        }
        let out: Float64Array = out.into_iter().collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
