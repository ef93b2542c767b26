//! `Scaler`, `Imputer` and `Normalizer` (ai.onnx.ml): row and column
//! transforms that scikit-learn pipelines export in front of the model.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// A norm for `Normalizer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    /// Divide by the row's largest value (signed, as onnxruntime does).
    Max,
    /// Divide by the sum of absolute values.
    L1,
    /// Divide by the Euclidean norm.
    L2,
}

/// A per-column or per-row transform of a `[N, F]` (or `[F]`) float tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnOp {
    /// `Normalizer`: each row divided by its norm; a row whose norm is 0 is
    /// left as it is.
    Normalizer(Norm),
    /// `Scaler`: `(x - offset[j]) * scale[j]`; one value broadcasts.
    Scaler {
        /// Subtracted first.
        offset: Vec<f32>,
        /// Multiplied second.
        scale: Vec<f32>,
    },
    /// `Imputer`: values equal to `replaced` (NaN matches NaN) become
    /// `imputed[j]`; one value broadcasts.
    Imputer {
        /// Replacement per column.
        imputed: Vec<f32>,
        /// The value that marks a missing entry.
        replaced: f32,
    },
}

fn per_column(v: &[f32], j: usize) -> f32 {
    if v.len() == 1 { v[0] } else { v[j] }
}

impl ColumnOp {
    fn widths(&self) -> impl Iterator<Item = usize> {
        let lens: Vec<usize> = match self {
            ColumnOp::Scaler { offset, scale } => vec![offset.len(), scale.len()],
            ColumnOp::Imputer { imputed, .. } => vec![imputed.len()],
            ColumnOp::Normalizer(_) => vec![],
        };
        lens.into_iter().filter(|&l| l != 1)
    }

    fn apply(&self, x: &mut [f32], width: usize) -> TractResult<()> {
        if let Some(w) = self.widths().find(|&w| w != width) {
            bail!(
                "{} has {w} per-feature values but rows have {width} features",
                self.op_name()
            );
        }
        match self {
            ColumnOp::Normalizer(norm) => {
                for row in x.chunks_exact_mut(width) {
                    let d = match norm {
                        Norm::Max => row.iter().copied().fold(f32::MIN, f32::max),
                        Norm::L1 => row.iter().map(|v| v.abs()).sum(),
                        Norm::L2 => row.iter().map(|v| v * v).sum::<f32>().sqrt(),
                    };
                    if d != 0.0 {
                        row.iter_mut().for_each(|v| *v /= d);
                    }
                }
            }
            ColumnOp::Scaler { offset, scale } => {
                for row in x.chunks_exact_mut(width) {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = (*v - per_column(offset, j)) * per_column(scale, j);
                    }
                }
            }
            ColumnOp::Imputer { imputed, replaced } => {
                let nan = replaced.is_nan();
                for row in x.chunks_exact_mut(width) {
                    for (j, v) in row.iter_mut().enumerate() {
                        if (nan && v.is_nan()) || *v == *replaced {
                            *v = per_column(imputed, j);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn op_name(&self) -> &'static str {
        match self {
            ColumnOp::Scaler { .. } => "Scaler",
            ColumnOp::Imputer { .. } => "Imputer",
            ColumnOp::Normalizer(_) => "Normalizer",
        }
    }
}

// Float parameters compare bitwise-equal in practice; tract only needs Eq
// to deduplicate identical ops.
impl Eq for ColumnOp {}

impl Op for ColumnOp {
    fn name(&self) -> StaticName {
        self.op_name().into()
    }

    fn as_typed(&self) -> Option<&dyn TypedOp> {
        Some(self)
    }
}

impl EvalOp for ColumnOp {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let mut t = input.cast_to::<f32>()?.into_owned();
        let width = *t.shape().last().unwrap_or(&1);
        let mut view = t.try_as_plain_ram_mut()?;
        self.apply(view.as_slice_mut::<f32>()?, width.max(1))?;
        Ok(tvec!(t.into_tvalue()))
    }

    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        Ok(Some(self.eval(&EvalContext::out_of_plan(), inputs)?))
    }
}

impl TypedOp for ColumnOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    fn as_op(&self) -> &dyn Op {
        self
    }

    fn as_op_mut(&mut self) -> &mut dyn Op {
        self
    }
}

/// Inference-model face of [`ColumnOp`].
#[derive(Debug, Clone)]
struct ColumnExpansion(ColumnOp);

impl Expansion for ColumnExpansion {
    fn name(&self) -> StaticName {
        self.0.op_name().into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.0.clone(), inputs)
    }
}

fn nonempty(node: &NodeProto, name: &str, v: Option<Vec<f32>>) -> TractResult<Vec<f32>> {
    match v {
        Some(v) if !v.is_empty() => Ok(v),
        _ => bail!(
            "{} node '{}': attribute {name} is missing or empty",
            node.op_type,
            node.name
        ),
    }
}

/// Parser for `Scaler`.
pub fn scaler(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let offset = nonempty(node, "offset", node.get_attr_opt_vec::<f32>("offset")?)?;
    let scale = nonempty(node, "scale", node.get_attr_opt_vec::<f32>("scale")?)?;
    Ok((
        expand(ColumnExpansion(ColumnOp::Scaler { offset, scale })),
        vec![],
    ))
}

/// Parser for `Imputer` (float variant; the int64 variant is refused by name).
pub fn imputer(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    if node
        .get_attr_opt_slice::<i64>("imputed_value_int64s")?
        .is_some_and(|v| !v.is_empty())
    {
        bail!(
            "Imputer node '{}': the int64 variant (imputed_value_int64s) is not supported",
            node.name
        );
    }
    let imputed = nonempty(
        node,
        "imputed_value_floats",
        node.get_attr_opt_vec::<f32>("imputed_value_floats")?,
    )?;
    let replaced = node
        .get_attr_opt::<f32>("replaced_value_float")?
        .unwrap_or(0.0);
    Ok((
        expand(ColumnExpansion(ColumnOp::Imputer { imputed, replaced })),
        vec![],
    ))
}

/// Parser for `Normalizer` (replaces tract's, whose MAX divides by the
/// largest absolute value where onnxruntime divides by the largest value).
pub fn normalizer(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let norm = match node.get_attr_opt::<&str>("norm")?.unwrap_or("MAX") {
        "MAX" => Norm::Max,
        "L1" => Norm::L1,
        "L2" => Norm::L2,
        other => bail!("Normalizer node '{}': unknown norm {other}", node.name),
    };
    Ok((expand(ColumnExpansion(ColumnOp::Normalizer(norm))), vec![]))
}
