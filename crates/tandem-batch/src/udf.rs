//! The scalar functions a batch plan calls: `predict(f1, ..., fn)` scores
//! rows with the loaded model; `tandem_shard(id, n)` says which of `n`
//! shards an entity id belongs to.
//!
//! `predict` receives each DataFusion batch as columns, packs them into one
//! row-major `[N, F]` f32 block (nulls and NaN take the fill value), runs the
//! model once per batch, and returns one Float64 per row. It is a plain
//! `ScalarUDF`, so the same plan runs on Ballista executors that register it
//! under the same name.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::arrow::array::{
    Array, ArrayRef, Float32Array, Float64Array, StringArray, UInt32Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use tandem_model::Model;

use crate::digest::shard_of;

/// `predict(f1, ..., fn) -> Float64`: the model's prediction per row.
#[derive(Debug)]
pub struct PredictUdf {
    model: Arc<Model>,
    fill: f32,
    signature: Signature,
}

impl PredictUdf {
    /// A `predict` function over `model`; null and NaN inputs take `fill`.
    pub fn new(model: Arc<Model>, fill: f32) -> Self {
        PredictUdf {
            model,
            fill,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }

    /// As a DataFusion `ScalarUDF`.
    pub fn into_udf(self) -> ScalarUDF {
        ScalarUDF::new_from_impl(self)
    }
}

/// Scores a row-major `[rows, width]` block, splitting a large one over
/// the cores no other call of this function is using: one Parquet row
/// group (pyarrow writes up to 1M rows in one) read by one partition would
/// otherwise be scored on one core, while a scan that already runs one
/// partition per core scores each block on its own thread (a thread
/// spawned per block there only added start-up costs and threads fighting
/// for the same cores). One value per row (the first of a multi-value
/// prediction).
pub(crate) fn predict_block(model: &Model, block: &[f32], rows: usize) -> Result<Vec<f64>> {
    let scoring = Scoring::enter();
    let width = model.width();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = cores / scoring.concurrent;
    if threads < 2 || rows < 2 * PARALLEL_GRAIN {
        return predict_rows(model, block);
    }
    let per_part = rows.div_ceil(threads).next_multiple_of(PARALLEL_GRAIN);
    let parts: Vec<Result<Vec<f64>>> = std::thread::scope(|s| {
        let handles: Vec<_> = block
            .chunks(per_part * width)
            .map(|part| s.spawn(move || predict_rows(model, part)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| exec_err!("the model panicked while scoring"))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(rows);
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

/// Calls of [`predict_block`] in progress in this process.
static SCORING: AtomicUsize = AtomicUsize::new(0);

/// One call of [`predict_block`] counted in [`SCORING`] while it lives.
struct Scoring {
    /// Calls in progress, this one included, when it entered.
    concurrent: usize,
}

impl Scoring {
    fn enter() -> Self {
        Scoring {
            concurrent: SCORING.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }
}

impl Drop for Scoring {
    fn drop(&mut self) {
        SCORING.fetch_sub(1, Ordering::Relaxed);
    }
}

fn predict_rows(model: &Model, block: &[f32]) -> Result<Vec<f64>> {
    let predictions = model
        .predict_values(block, model.width())
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    let per_row = predictions.width();
    Ok(predictions
        .values()
        .iter()
        .step_by(per_row.max(1))
        .map(|&v| f64::from(v))
        .collect())
}

/// Packs feature columns (any numeric type; nulls and NaN take `fill`) into
/// a row-major f32 block. Rows go in tiles of [`PACK_TILE`], so the part of
/// the block being written (tile x width floats) stays in L1 while every
/// column is copied into it; a column-by-column pass over the whole block
/// (8192 rows x 32 features is 1 MB) wrote it from L2 or memory once per
/// column.
pub(crate) fn pack_block(columns: &[ArrayRef], rows: usize, fill: f32) -> Result<Vec<f32>> {
    let width = columns.len();
    let cast: Vec<ArrayRef> = columns
        .iter()
        .map(|c| cast(c, &DataType::Float32))
        .collect::<std::result::Result<_, _>>()?;
    let mut cols: Vec<&Float32Array> = Vec::with_capacity(width);
    for (f, c) in cast.iter().enumerate() {
        match c.as_any().downcast_ref::<Float32Array>() {
            Some(c) if c.len() == rows => cols.push(c),
            _ => return exec_err!("feature {f} did not cast to {rows} Float32 values"),
        }
    }
    let mut block: Vec<f32> = Vec::with_capacity(rows * width);
    if width == 0 {
        return Ok(block);
    }
    // Every value is written once, straight into the spare capacity: a
    // block first filled with `fill` and then overwritten was one more
    // pass over 1 MB per 8192 rows.
    for (t, tile) in block.spare_capacity_mut()[..rows * width]
        .chunks_mut(PACK_TILE * width)
        .enumerate()
    {
        let start = t * PACK_TILE;
        for (f, col) in cols.iter().enumerate() {
            let values = &col.values()[start..start + tile.len() / width];
            if col.null_count() == 0 {
                for (row, &v) in tile.chunks_exact_mut(width).zip(values) {
                    row[f].write(if v.is_nan() { fill } else { v });
                }
            } else {
                for (k, (row, &v)) in tile.chunks_exact_mut(width).zip(values).enumerate() {
                    let valid = col.is_valid(start + k) && !v.is_nan();
                    row[f].write(if valid { v } else { fill });
                }
            }
        }
    }
    // SAFETY: the loop above wrote every one of the first `rows * width`
    // values: each tile is whole rows of `width` values, and every row's
    // `width` positions were written, one per column, `cols.len() ==
    // width`, each column holding `rows` values (checked above).
    #[allow(unsafe_code)]
    unsafe {
        block.set_len(rows * width)
    };
    Ok(block)
}

/// Rows per tile of [`pack_block`].
const PACK_TILE: usize = 128;

/// Rows below which a block is not split across threads (and the unit of
/// the split, matching the model's fixed-size plans).
const PARALLEL_GRAIN: usize = 1024;

impl PartialEq for PredictUdf {
    fn eq(&self, other: &Self) -> bool {
        self.model.name() == other.model.name()
            && self.model.version() == other.model.version()
            && self.model.path() == other.model.path()
            && self.fill.to_bits() == other.fill.to_bits()
    }
}

impl Eq for PredictUdf {}

impl Hash for PredictUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.model.name().hash(state);
        self.model.version().hash(state);
        self.model.path().hash(state);
        self.fill.to_bits().hash(state);
    }
}

impl ScalarUDFImpl for PredictUdf {
    fn name(&self) -> &str {
        "predict"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        if arg_types.len() != self.model.width() {
            return exec_err!(
                "predict takes the model's {} features, got {} arguments",
                self.model.width(),
                arg_types.len()
            );
        }
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let width = self.model.width();
        if args.args.len() != width {
            return exec_err!("predict takes {width} arguments, got {}", args.args.len());
        }
        let columns = ColumnarValue::values_to_arrays(&args.args)?;
        let block = pack_block(&columns, rows, self.fill)?;
        let out: Float64Array = predict_block(&self.model, &block, rows)?
            .into_iter()
            .map(Some)
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
    }
}

/// `tandem_shard(id, n) -> UInt32`: the shard (0..n) an entity id hashes to
/// (FNV-1a 64 of the id's UTF-8 bytes, modulo n), the same on every machine
/// and version.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ShardUdf {
    signature: Signature,
}

impl Default for ShardUdf {
    fn default() -> Self {
        ShardUdf {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ShardUdf {
    /// As a DataFusion `ScalarUDF`.
    pub fn into_udf(self) -> ScalarUDF {
        ScalarUDF::new_from_impl(self)
    }
}

impl ScalarUDFImpl for ShardUdf {
    fn name(&self) -> &str {
        "tandem_shard"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::UInt32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = match &args.args[1] {
            ColumnarValue::Scalar(s) => match s.cast_to(&DataType::UInt32)? {
                ScalarValue::UInt32(Some(n)) if n > 0 => n,
                _ => return exec_err!("tandem_shard: the shard count must be a positive integer"),
            },
            ColumnarValue::Array(_) => {
                return exec_err!("tandem_shard: the shard count must be a constant");
            }
        };
        let ids = args.args[0].to_array(args.number_rows)?;
        let ids = cast(&ids, &DataType::Utf8)?;
        let Some(ids) = ids.as_any().downcast_ref::<StringArray>() else {
            return exec_err!("tandem_shard: ids did not cast to strings");
        };
        let out: UInt32Array = ids.iter().map(|id| id.map(|id| shard_of(id, n))).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;

    #[test]
    fn pack_block_is_row_major_with_the_fill_for_null_and_nan() {
        // Two whole tiles and part of a third.
        let rows = 2 * PACK_TILE + 44;
        let a: ArrayRef = Arc::new(Float32Array::from_iter((0..rows).map(|i| {
            if i % 7 == 3 {
                None
            } else if i % 11 == 5 {
                Some(f32::NAN)
            } else {
                Some(i as f32)
            }
        })));
        let b: ArrayRef = Arc::new(Float64Array::from_iter_values(
            (0..rows).map(|i| -(i as f64) / 2.0),
        ));
        let c: ArrayRef = Arc::new(Int64Array::from_iter(
            (0..rows).map(|i| (i % 5 != 0).then_some(i as i64 * 3)),
        ));
        let block = pack_block(&[a, b, c], rows, -1.0).unwrap();
        assert_eq!(block.len(), rows * 3);
        for i in 0..rows {
            let want_a = if i % 7 == 3 || i % 11 == 5 {
                -1.0
            } else {
                i as f32
            };
            assert_eq!(block[i * 3], want_a, "row {i}");
            assert_eq!(block[i * 3 + 1], -(i as f32) / 2.0, "row {i}");
            let want_c = if i % 5 == 0 { -1.0 } else { (i * 3) as f32 };
            assert_eq!(block[i * 3 + 2], want_c, "row {i}");
        }
        let short: ArrayRef = Arc::new(Float32Array::from(vec![1.0f32]));
        assert!(pack_block(&[short], 2, 0.0).is_err());
        assert!(pack_block(&[], 3, 0.0).unwrap().is_empty());
    }

    #[test]
    fn a_block_scores_the_same_alone_split_over_threads_and_beside_other_calls() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/models/sklearn_mlp_32/1/model.onnx");
        let model = Model::load(&path).expect("the MLP fixture loads");
        let width = model.width();
        let rows = 5 * PARALLEL_GRAIN + 77;
        let block: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 37) % 101) as f32 / 25.0 - 2.0)
            .collect();
        let want: Vec<f64> = model
            .predict_values(&block, width)
            .unwrap()
            .values()
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        assert_eq!(predict_block(&model, &block, rows).unwrap(), want);
        // Four calls at once: each scores on its own thread or splits,
        // whichever the count of calls in progress allows; same values.
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| predict_block(&model, &block, rows).unwrap()))
                .collect();
            for h in handles {
                assert_eq!(h.join().unwrap(), want);
            }
        });
        assert_eq!(SCORING.load(Ordering::Relaxed), 0, "every call counted out");
    }
}
