//! A loaded model: prepared once, immutable, shared by `Arc`, run from any
//! number of threads at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tandem_core::{FeatureBatch, Predictions};
use tract_onnx::prelude::*;

use crate::config::{ModelConfig, NonFinite};
use crate::error::ModelError;
use crate::load;

/// Element type of a model input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// 64-bit signed integer (class labels).
    I64,
    /// 32-bit signed integer.
    I32,
    /// Boolean.
    Bool,
    /// UTF-8 string (class labels).
    String,
    /// Anything else tract can hold.
    Other,
}

impl DType {
    fn of(dt: DatumType) -> DType {
        match dt {
            DatumType::F32 => DType::F32,
            DatumType::F64 => DType::F64,
            // tract types int64 tensors it may use as shapes as TDim.
            DatumType::I64 | DatumType::TDim => DType::I64,
            DatumType::I32 => DType::I32,
            DatumType::Bool => DType::Bool,
            DatumType::String => DType::String,
            _ => DType::Other,
        }
    }

    /// Name in the KServe V2 / Triton vocabulary.
    pub fn kserve_name(self) -> &'static str {
        match self {
            DType::F32 => "FP32",
            DType::F64 => "FP64",
            DType::I64 => "INT64",
            DType::I32 => "INT32",
            DType::Bool => "BOOL",
            DType::String | DType::Other => "BYTES",
        }
    }

    /// Name in the TensorFlow vocabulary (`DT_FLOAT`, ...).
    pub fn tf_name(self) -> &'static str {
        match self {
            DType::F32 => "DT_FLOAT",
            DType::F64 => "DT_DOUBLE",
            DType::I64 => "DT_INT64",
            DType::I32 => "DT_INT32",
            DType::Bool => "DT_BOOL",
            DType::String | DType::Other => "DT_STRING",
        }
    }
}

/// Name, element type and shape of a model input or output; `None` in the
/// shape is a variable dimension (the batch).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorInfo {
    /// Tensor name in the graph.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions; `None` is variable.
    pub shape: Vec<Option<usize>>,
    /// Class labels of a classifier's probability output (from its `ZipMap`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_labels: Option<Vec<String>>,
}

/// What a model takes and gives, for inspection and the protocol metadata
/// endpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelMetadata {
    /// The model's inputs (always one `[N, F]` float tensor).
    pub inputs: Vec<TensorInfo>,
    /// The model's outputs, in graph order.
    pub outputs: Vec<TensorInfo>,
    /// Operator counts, `domain:op` (default domain omitted).
    pub operators: BTreeMap<String, usize>,
    /// Feature names, from the sidecar, if given.
    pub feature_names: Vec<String>,
    /// `producer_name producer_version` from the file.
    pub producer: String,
    /// Opsets imported, `domain -> version`.
    pub opsets: BTreeMap<String, i64>,
}

/// One output of a run, as plain data.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputData {
    /// Float values, row-major.
    F32(Vec<f32>),
    /// Integer values (class labels), row-major.
    I64(Vec<i64>),
    /// Strings (class labels).
    String(Vec<String>),
}

/// One named output tensor of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    /// Output name.
    pub name: String,
    /// Concrete shape.
    pub shape: Vec<usize>,
    /// Values.
    pub data: OutputData,
}

/// Which columns of the selected output make the prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Columns {
    One(usize),
    All,
}

/// A loaded model. Cheap to share (`Arc<Model>`); [`Model::predict`] takes
/// `&self` and holds no lock.
#[derive(Debug)]
pub struct Model {
    name: String,
    version: u64,
    path: PathBuf,
    plan: Arc<TypedRunnableModel>,
    chunk_plan: Arc<TypedRunnableModel>,
    big_chunk_plan: Arc<TypedRunnableModel>,
    /// The model as a chain of dense layers, scored outside tract, when it
    /// is one (crate::dense).
    pub(crate) dense: Option<crate::dense::DenseChain>,
    metadata: ModelMetadata,
    width: usize,
    output: usize,
    columns: Columns,
    prediction_width: usize,
    non_finite: NonFinite,
}

impl Model {
    /// Loads an `.onnx` file, reading its sidecar (`<stem>.toml`) if there
    /// is one. The name is the file stem (or, for a repository's
    /// `<name>/<version>/model.onnx`, the model directory) and the version 1
    /// (or the version directory).
    pub fn load(path: impl AsRef<Path>) -> Result<Model, ModelError> {
        let path = path.as_ref();
        let (name, version) = name_and_version(path);
        let config = ModelConfig::for_model(path)?
            .map(|(c, _)| c)
            .unwrap_or_default();
        Model::load_with(path, name, version, &config)
    }

    /// Loads an `.onnx` file with an explicit name, version and config.
    ///
    /// A malformed graph can make tract panic while it is analysed or
    /// optimised (an out-of-range axis or permutation, a zero step): that is
    /// a [`ModelError::Compile`] here, never a panic for the caller, so a
    /// process loading at start exits with a message and the repository
    /// poller keeps serving the version it has.
    pub fn load_with(
        path: &Path,
        name: String,
        version: u64,
        config: &ModelConfig,
    ) -> Result<Model, ModelError> {
        let load = std::panic::AssertUnwindSafe(|| Model::prepare(path, name, version, config));
        std::panic::catch_unwind(load).unwrap_or_else(|panic| {
            Err(ModelError::Compile {
                path: path.to_path_buf(),
                detail: format!(
                    "the ONNX runtime panicked while preparing the graph: {}",
                    panic_message(&*panic)
                ),
            })
        })
    }

    fn prepare(
        path: &Path,
        name: String,
        version: u64,
        config: &ModelConfig,
    ) -> Result<Model, ModelError> {
        let proto = load::read_proto(path)?;
        let config_err = |detail: String| ModelError::Config {
            path: path.to_path_buf(),
            detail,
        };
        let names = &config.features.names;
        let width = match (load::declared_width(&proto.model), names.len()) {
            (Some(w), 0) => w,
            (Some(w), n) if n == w => w,
            (Some(w), n) => {
                return Err(config_err(format!(
                    "features.names lists {n} features but the model input has {w}"
                )));
            }
            (None, 0) => {
                return Err(config_err(
                    "the model input has no fixed feature count; list them in features.names"
                        .into(),
                ));
            }
            (None, n) => n,
        };
        let load::Plans {
            any: plan,
            chunk: chunk_plan,
            big_chunk: big_chunk_plan,
            typed,
        } = load::plan(&proto, width, path)?;
        let dense = crate::dense::DenseChain::detect(&proto.model, width)
            .filter(|chain| chain.agrees_with(&plan));

        let model = &proto.model;
        let graph_outputs: Vec<String> = model
            .graph
            .as_ref()
            .map(|g| g.output.iter().map(|o| o.name.clone()).collect())
            .unwrap_or_default();
        let input_name = typed
            .input_outlets()
            .ok()
            .and_then(|o| o.first().map(|&o| typed.node(o.node).name.clone()))
            .unwrap_or_default();
        let mut outputs = vec![];
        for (i, outlet) in typed
            .output_outlets()
            .map_err(|e| ModelError::compile(path, &e))?
            .iter()
            .enumerate()
        {
            let fact = typed
                .outlet_fact(*outlet)
                .map_err(|e| ModelError::compile(path, &e))?;
            let name = graph_outputs
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("output_{i}"));
            outputs.push(TensorInfo {
                class_labels: proto.zipmap_labels.get(&name).cloned(),
                name,
                dtype: DType::of(fact.datum_type),
                shape: fact
                    .shape
                    .iter()
                    .map(|d| tract_onnx::tract_hir::internal::DimLike::to_usize(d).ok())
                    .collect(),
            });
        }
        let metadata = ModelMetadata {
            inputs: vec![TensorInfo {
                name: input_name,
                dtype: DType::F32,
                shape: vec![None, Some(width)],
                class_labels: None,
            }],
            operators: proto.operators.clone(),
            feature_names: names.clone(),
            producer: format!("{} {}", model.producer_name, model.producer_version)
                .trim()
                .to_string(),
            opsets: model
                .opset_import
                .iter()
                .map(|o| {
                    (
                        if o.domain.is_empty() {
                            "ai.onnx".to_string()
                        } else {
                            o.domain.clone()
                        },
                        o.version,
                    )
                })
                .collect(),
            outputs,
        };
        let (output, columns, prediction_width) =
            select_output(&metadata, config).map_err(config_err)?;
        Ok(Model {
            name,
            version,
            path: path.to_path_buf(),
            plan,
            chunk_plan,
            big_chunk_plan,
            dense,
            metadata,
            width,
            output,
            columns,
            prediction_width,
            non_finite: config.inputs.non_finite,
        })
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What scores the model: `"tract"`, or for a plain chain of dense
    /// layers run outside tract `"dense layers (AVX2/FMA tiles)"` (x86-64
    /// CPUs with both) or `"dense layers (matrixmultiply)"`.
    pub fn runtime(&self) -> &'static str {
        match &self.dense {
            Some(chain) => chain.runtime(),
            None => "tract",
        }
    }

    /// The model's version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Features per input row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Values per prediction (1 for a scalar).
    pub fn prediction_width(&self) -> usize {
        self.prediction_width
    }

    /// The selected output's name.
    pub fn prediction_output(&self) -> &str {
        &self.metadata.outputs[self.output].name
    }

    /// Inputs, outputs, operators.
    pub fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    /// Checks row-major `values` of `width` features per row against the
    /// model's width and its non-finite input policy.
    fn check_input(&self, values: &[f32], width: usize) -> Result<(), ModelError> {
        if width != self.width || !values.len().is_multiple_of(self.width) {
            return Err(ModelError::InputWidth {
                expected: self.width,
                got: width,
            });
        }
        if self.non_finite == NonFinite::Reject
            && let Some(i) = values.iter().position(|v| !v.is_finite())
        {
            let (row, feature) = (i / self.width, i % self.width);
            return Err(ModelError::NonFiniteInput {
                row,
                feature,
                name: self
                    .metadata
                    .feature_names
                    .get(feature)
                    .cloned()
                    .unwrap_or_else(|| feature.to_string()),
                value: values[i],
            });
        }
        Ok(())
    }

    /// Runs row-major `values`, `width` features per row. A panic in the
    /// runtime while scoring (tract indexes some tensors with input values
    /// unchecked: a `Gather` whose indices come from the features, given
    /// one out of range) is a [`ModelError::Run`] of these rows, never a
    /// panic for the caller: a plan keeps no state between runs, so the
    /// model goes on serving other rows.
    pub(crate) fn run_raw(&self, values: &[f32], width: usize) -> Result<TVec<TValue>, ModelError> {
        self.check_input(values, width)?;
        let run = std::panic::AssertUnwindSafe(|| self.run_checked(values));
        std::panic::catch_unwind(run).unwrap_or_else(|panic| {
            crate::simd::clear_upper_state();
            Err(ModelError::Run(format!(
                "the ONNX runtime panicked while scoring: {}",
                panic_message(&*panic)
            )))
        })
    }

    /// [`Model::run_raw`] once the input is checked.
    fn run_checked(&self, values: &[f32]) -> Result<TVec<TValue>, ModelError> {
        let err = |e: TractError| ModelError::Run(crate::error::chain(&e));
        let run =
            |plan: &Arc<TypedRunnableModel>, values: &[f32]| -> Result<TVec<TValue>, ModelError> {
                let input = Tensor::from_shape(&[values.len() / self.width, self.width], values)
                    .map_err(err)?;
                let out = plan.run(tvec!(input.into_tvalue()));
                // tract's AVX kernels leave the vector registers' upper
                // halves dirty, slowing every later SSE instruction on this
                // thread (crate::simd).
                crate::simd::clear_upper_state();
                out.map_err(err)
            };
        let rows = values.len() / self.width;
        if let Some(chain) = &self.dense {
            let values = chain.run(values, rows).map_err(ModelError::Run)?;
            crate::simd::clear_upper_state();
            let out = Tensor::from_shape(&[rows, chain.outputs()], &values).map_err(err)?;
            return Ok(tvec!(out.into_tvalue()));
        }
        if rows < 2 * load::CHUNK {
            return run(&self.plan, values);
        }
        // Whole chunks of 4096 rows, then of 1024, on the fixed-size plans,
        // the tail on the general one, then every output concatenated along
        // the batch axis.
        let mut parts: Vec<TVec<TValue>> = Vec::with_capacity(rows / load::CHUNK + 1);
        let mut values = values;
        while !values.is_empty() {
            let left = values.len() / self.width;
            let (plan, take) = if left >= load::BIG_CHUNK {
                (&self.big_chunk_plan, load::BIG_CHUNK)
            } else if left >= load::CHUNK {
                (&self.chunk_plan, load::CHUNK)
            } else {
                (&self.plan, left)
            };
            let (now, rest) = values.split_at(take * self.width);
            parts.push(run(plan, now)?);
            values = rest;
        }
        let n_outputs = parts[0].len();
        (0..n_outputs)
            .map(|o| {
                let pieces: Vec<&Tensor> = parts.iter().map(|p| &*p[o]).collect();
                Tensor::stack_tensors(0, &pieces)
                    .map(IntoTValue::into_tvalue)
                    .map_err(err)
            })
            .collect()
    }

    /// Runs one row of zeros through the model, so that the first real
    /// request does not pay for first-use set-up.
    pub fn warm(&self) -> Result<(), ModelError> {
        let batch = FeatureBatch::new(vec![0.0; self.width], self.width)
            .map_err(|e| ModelError::Run(e.to_string()))?;
        self.run(&batch).map(drop)
    }

    /// Runs the model and returns every output.
    pub fn run(&self, batch: &FeatureBatch) -> Result<Vec<OutputTensor>, ModelError> {
        let outs = self.run_raw(batch.values(), batch.width())?;
        outs.iter()
            .zip(&self.metadata.outputs)
            .map(|(t, info)| {
                let shape = t.shape().to_vec();
                let err = |e: TractError| ModelError::Run(crate::error::chain(&e));
                let data = match t.datum_type() {
                    DatumType::String => OutputData::String(
                        t.try_as_plain_ram()
                            .map_err(err)?
                            .as_slice::<String>()
                            .map_err(err)?
                            .to_vec(),
                    ),
                    DatumType::I64
                    | DatumType::TDim
                    | DatumType::I32
                    | DatumType::Bool
                    | DatumType::U8 => {
                        let c = t.cast_to::<i64>().map_err(err)?;
                        OutputData::I64(
                            c.try_as_plain_ram()
                                .map_err(err)?
                                .as_slice::<i64>()
                                .map_err(err)?
                                .to_vec(),
                        )
                    }
                    _ => {
                        let c = t.cast_to::<f32>().map_err(err)?;
                        OutputData::F32(
                            c.try_as_plain_ram()
                                .map_err(err)?
                                .as_slice::<f32>()
                                .map_err(err)?
                                .to_vec(),
                        )
                    }
                };
                Ok(OutputTensor {
                    name: info.name.clone(),
                    shape,
                    data,
                })
            })
            .collect()
    }

    /// Runs the model and returns "the prediction" of every row: the
    /// configured output and column.
    pub fn predict(&self, batch: &FeatureBatch) -> Result<Predictions, ModelError> {
        self.predict_values(batch.values(), batch.width())
    }

    /// [`Model::predict`] on row-major `values` of `width` features per
    /// row, borrowed rather than moved into a [`FeatureBatch`]: the batch
    /// job scores blocks it packed itself without copying them again.
    pub fn predict_values(&self, values: &[f32], width: usize) -> Result<Predictions, ModelError> {
        let rows = values.len().checked_div(width).unwrap_or(0);
        let outs = self.run_raw(values, width)?;
        let t = outs
            .get(self.output)
            .ok_or_else(|| ModelError::Run("output missing".into()))?;
        let err = |e: TractError| ModelError::Run(crate::error::chain(&e));
        let t = t.cast_to::<f32>().map_err(err)?;
        let values = t
            .try_as_plain_ram()
            .map_err(err)?
            .as_slice::<f32>()
            .map_err(err)?;
        if rows == 0 {
            return Predictions::new(vec![], self.prediction_width)
                .map_err(|e| ModelError::Run(e.to_string()));
        }
        let per_row = values.len() / rows;
        if per_row * rows != values.len() {
            return Err(ModelError::Run(format!(
                "output of {} values for {rows} rows",
                values.len()
            )));
        }
        let picked = match self.columns {
            Columns::All => values.to_vec(),
            Columns::One(c) if c < per_row => {
                values.iter().skip(c).step_by(per_row).copied().collect()
            }
            Columns::One(c) => {
                return Err(ModelError::Run(format!(
                    "column {c} asked of an output with {per_row} columns"
                )));
            }
        };
        let width = if self.columns == Columns::All {
            per_row
        } else {
            1
        };
        Predictions::new(picked, width).map_err(|e| ModelError::Run(e.to_string()))
    }
}

fn name_and_version(path: &Path) -> (String, u64) {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .to_string();
    let version_dir = path.parent();
    if let Some(v) = version_dir
        .and_then(|d| d.file_name())
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse::<u64>().ok())
        && let Some(name) = version_dir
            .and_then(Path::parent)
            .and_then(|d| d.file_name())
            .and_then(|s| s.to_str())
    {
        return (name.to_string(), v);
    }
    (stem, 1)
}

fn select_output(
    meta: &ModelMetadata,
    config: &ModelConfig,
) -> Result<(usize, Columns, usize), String> {
    let sel = &config.output;
    let names = || {
        meta.outputs
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let index = if let Some(name) = &sel.name {
        meta.outputs
            .iter()
            .position(|o| &o.name == name)
            .ok_or_else(|| {
                format!(
                    "output.name '{name}' is not an output of the model (outputs: {})",
                    names()
                )
            })?
    } else if let Some(i) = sel.index {
        if i >= meta.outputs.len() {
            return Err(format!(
                "output.index {i} is out of range (outputs: {})",
                names()
            ));
        }
        i
    } else {
        let numeric = |o: &&TensorInfo| {
            matches!(
                o.dtype,
                DType::F32 | DType::F64 | DType::I64 | DType::I32 | DType::Bool
            )
        };
        meta.outputs
            .iter()
            .position(|o| matches!(o.dtype, DType::F32 | DType::F64))
            .or_else(|| meta.outputs.iter().position(|o| numeric(&o)))
            .ok_or_else(|| {
                format!(
                    "the model has no numeric output to predict from (outputs: {})",
                    names()
                )
            })?
    };
    let out = &meta.outputs[index];
    if !matches!(
        out.dtype,
        DType::F32 | DType::F64 | DType::I64 | DType::I32 | DType::Bool
    ) {
        return Err(format!(
            "output '{}' holds {:?} values, not numbers",
            out.name, out.dtype
        ));
    }
    let width: Option<usize> = match out.shape.len() {
        0 | 1 => Some(1),
        _ => out.shape[1..]
            .iter()
            .try_fold(1usize, |acc, d| d.map(|d| acc * d)),
    };
    let columns = match (sel.column, width) {
        (Some(c), Some(w)) if c >= w => {
            return Err(format!(
                "output.column {c} is out of range: output '{}' has {w} columns",
                out.name
            ));
        }
        (Some(c), _) => Columns::One(c),
        (None, Some(1)) => Columns::One(0),
        (None, Some(2)) => Columns::One(1),
        (None, _) => Columns::All,
    };
    let prediction_width = match columns {
        Columns::One(_) => 1,
        Columns::All => width.unwrap_or(0),
    };
    Ok((index, columns, prediction_width))
}

/// The message of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("no message")
}
