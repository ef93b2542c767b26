//! Dense networks (multi-layer perceptrons) scored outside tract.
//!
//! A model whose graph is nothing but a chain of dense layers (`MatMul` by
//! a constant, or `Gemm`, then an optional constant bias `Add` and an
//! optional `Relu`/`Tanh`/`Sigmoid`, with `Cast`-to-float, `Identity` and a
//! final `Reshape` to `[-1, outputs]` allowed) is what scikit-learn's
//! `MLPRegressor` and `MLPClassifier`-style exports become. tract runs it
//! correctly but packs every layer's activations for its matrix kernels on
//! every call, which on the bare MLP fixture cost a fifth of the time and
//! left tandem at 0.6-0.8x onnxruntime. Here each block of [`BLOCK_ROWS`]
//! rows goes through every layer while its activations stay in cache: on
//! x86-64 CPUs with AVX2 and FMA with register tiles over weights packed at
//! load ([`tiles`]), elsewhere with `matrixmultiply`'s single-precision
//! GEMM (through ndarray, both already dependencies of tract), then one
//! pass that adds the bias and applies the activation in place.
//!
//! Anything else in the graph (a scaler, a ZipMap, a second input, a
//! tensor read twice) leaves the model to tract. A chain is used only after
//! it has scored a probe batch exactly as tract's plan does, within the
//! fixture tolerance, with the same output shape.

use std::collections::HashMap;

mod tiles;

use tract_onnx::pb::{ModelProto, NodeProto, TensorProto};
use tract_onnx::prelude::tract_ndarray::linalg::general_mat_mul;
use tract_onnx::prelude::tract_ndarray::{Array2, ArrayView2, ArrayViewMut2};

/// Rows pushed through every layer together.
const BLOCK_ROWS: usize = 256;

/// ONNX `TensorProto.DataType` codes.
const FLOAT: i32 = 1;
const INT64: i32 = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activation {
    Identity,
    Relu,
    Tanh,
    Sigmoid,
}

#[derive(Debug)]
struct Layer {
    /// `[inputs, outputs]`.
    weights: Array2<f32>,
    bias: Vec<f32>,
    has_bias: bool,
    activation: Activation,
}

/// A chain of dense layers, ready to score `[N, width]` blocks.
#[derive(Debug)]
pub(crate) struct DenseChain {
    width: usize,
    layers: Vec<Layer>,
    /// The layers packed for the AVX2/FMA tiles, when this CPU has both.
    tiles: Option<tiles::Tiles>,
}

impl DenseChain {
    /// The chain the graph is, if it is one whose input is `width` wide.
    pub(crate) fn detect(model: &ModelProto, width: usize) -> Option<DenseChain> {
        let graph = model.graph.as_ref()?;
        let inits: HashMap<&str, &TensorProto> = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let mut inputs = graph
            .input
            .iter()
            .filter(|i| !inits.contains_key(i.name.as_str()));
        let (input, None) = (inputs.next()?, inputs.next()) else {
            return None;
        };
        if graph.output.len() != 1 || width == 0 {
            return None;
        }
        let mut cur = input.name.clone();
        let mut cols = width;
        let mut layers: Vec<Layer> = Vec::new();
        let mut reshaped = false;
        for node in &graph.node {
            if reshaped || node.output.len() != 1 || !matches!(node.domain.as_str(), "" | "ai.onnx")
            {
                return None;
            }
            let ins: Vec<&str> = node.input.iter().map(String::as_str).collect();
            let only_cur = ins == [cur.as_str()];
            match node.op_type.as_str() {
                "Cast" if only_cur && attr_i(node, "to") == Some(i64::from(FLOAT)) => {}
                "Identity" if only_cur => {}
                "MatMul" if ins.len() == 2 && ins[0] == cur => {
                    let (dims, w) = floats(inits.get(ins[1])?)?;
                    let [k, m] = dims[..] else { return None };
                    if k != cols {
                        return None;
                    }
                    layers.push(Layer::new(Array2::from_shape_vec((k, m), w).ok()?));
                    cols = m;
                }
                "Gemm" if (2..=3).contains(&ins.len()) && ins[0] == cur => {
                    let one = |name: &str| attr_f(node, name).unwrap_or(1.0) == 1.0;
                    let flag = |name: &str| attr_i(node, name).unwrap_or(0);
                    if !one("alpha") || !one("beta") || flag("transA") != 0 {
                        return None;
                    }
                    let (dims, w) = floats(inits.get(ins[1])?)?;
                    let [a, b] = dims[..] else { return None };
                    let weights = match flag("transB") {
                        0 => Array2::from_shape_vec((a, b), w).ok()?,
                        1 => Array2::from_shape_vec((a, b), w).ok()?.reversed_axes(),
                        _ => return None,
                    };
                    if weights.nrows() != cols {
                        return None;
                    }
                    cols = weights.ncols();
                    let mut layer = Layer::new(weights.as_standard_layout().into_owned());
                    if let Some(c) = ins.get(2).filter(|c| !c.is_empty()) {
                        layer.set_bias(inits.get(c)?, cols)?;
                    }
                    layers.push(layer);
                }
                "Add" if ins.len() == 2 && ins.contains(&cur.as_str()) => {
                    let other = if ins[0] == cur { ins[1] } else { ins[0] };
                    let last = layers.last_mut()?;
                    if last.has_bias || last.activation != Activation::Identity {
                        return None;
                    }
                    last.set_bias(inits.get(other)?, cols)?;
                }
                op @ ("Relu" | "Tanh" | "Sigmoid") if only_cur => {
                    let last = layers.last_mut()?;
                    if last.activation != Activation::Identity {
                        return None;
                    }
                    last.activation = match op {
                        "Relu" => Activation::Relu,
                        "Tanh" => Activation::Tanh,
                        _ => Activation::Sigmoid,
                    };
                }
                "Reshape" if ins.len() == 2 && ins[0] == cur => {
                    let shape = ints(inits.get(ins[1])?)?;
                    if shape != [-1, cols as i64] {
                        return None;
                    }
                    reshaped = true;
                }
                _ => return None,
            }
            cur = node.output[0].clone();
        }
        if layers.is_empty() || graph.output[0].name != cur {
            return None;
        }
        let tiles = tiles::available().then(|| tiles::Tiles::pack(&layers));
        Some(DenseChain {
            width,
            layers,
            tiles,
        })
    }

    /// Values per output row.
    pub(crate) fn outputs(&self) -> usize {
        self.layers.last().map_or(0, |l| l.bias.len())
    }

    /// What scores the chain: the AVX2/FMA tiles or `matrixmultiply`.
    pub(crate) fn runtime(&self) -> &'static str {
        if self.tiles.is_some() {
            "dense layers (AVX2/FMA tiles)"
        } else {
            "dense layers (matrixmultiply)"
        }
    }

    /// Scores `rows` rows (`x` row-major, [`Self`]'s width) into
    /// `[rows, outputs]`, row-major.
    pub(crate) fn run(&self, x: &[f32], rows: usize) -> Result<Vec<f32>, String> {
        let Some(tiles) = &self.tiles else {
            return self.run_general(x, rows);
        };
        if x.len() != rows * self.width {
            return Err(format!(
                "{} values for {rows} rows of {}",
                x.len(),
                self.width
            ));
        }
        let mut out = vec![0f32; rows * self.outputs()];
        match tiles.run(x, rows, BLOCK_ROWS, &mut out) {
            Some(()) => Ok(out),
            None => self.run_general(x, rows),
        }
    }

    /// [`Self::run`] through `matrixmultiply`'s general product, layer by
    /// layer, then the bias and activation in a second pass.
    fn run_general(&self, x: &[f32], rows: usize) -> Result<Vec<f32>, String> {
        let width = self.width;
        if x.len() != rows * width {
            return Err(format!("{} values for {rows} rows of {width}", x.len()));
        }
        let shape_err = |e: tract_onnx::prelude::tract_ndarray::ShapeError| e.to_string();
        let outputs = self.outputs();
        let mut out = vec![0f32; rows * outputs];
        let (mut prev, mut next) = (Vec::new(), Vec::new());
        for start in (0..rows).step_by(BLOCK_ROWS) {
            let n = BLOCK_ROWS.min(rows - start);
            for (l, layer) in self.layers.iter().enumerate() {
                let (k, m) = layer.weights.dim();
                let input = if l == 0 {
                    ArrayView2::from_shape((n, k), &x[start * width..(start + n) * width])
                } else {
                    ArrayView2::from_shape((n, k), &prev[..n * k])
                }
                .map_err(shape_err)?;
                let dst: &mut [f32] = if l + 1 == self.layers.len() {
                    &mut out[start * m..(start + n) * m]
                } else {
                    next.resize(n * m, 0.0);
                    &mut next[..n * m]
                };
                let mut c = ArrayViewMut2::from_shape((n, m), &mut *dst).map_err(shape_err)?;
                // beta = 0: the product overwrites whatever `dst` held.
                general_mat_mul(1.0, &input, &layer.weights, 0.0, &mut c);
                layer.activation.apply_with_bias(dst, &layer.bias);
                std::mem::swap(&mut prev, &mut next);
            }
        }
        Ok(out)
    }
}

impl Layer {
    fn new(weights: Array2<f32>) -> Layer {
        Layer {
            bias: vec![0.0; weights.ncols()],
            weights,
            has_bias: false,
            activation: Activation::Identity,
        }
    }

    /// Takes a constant bias of `[cols]` or `[1, cols]` values.
    fn set_bias(&mut self, t: &TensorProto, cols: usize) -> Option<()> {
        let (dims, b) = floats(t)?;
        if !(dims == [cols] || dims == [1, cols]) {
            return None;
        }
        self.bias = b;
        self.has_bias = true;
        Some(())
    }
}

impl Activation {
    /// `activation(x)` for one value.
    #[inline(always)]
    fn apply_one(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            // As in `apply_with_bias`: a NaN stays NaN.
            Activation::Relu => {
                if x < 0.0 {
                    0.0
                } else {
                    x
                }
            }
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        }
    }

    /// `v = activation(v)` for one tile row (the bias already added).
    #[inline(always)]
    fn apply_row(self, v: &mut [f32; tiles::NR]) {
        v.iter_mut().for_each(|x| *x = self.apply_one(*x));
    }

    /// `v = activation(v + bias)` for every row of `v` (`bias.len()` wide),
    /// in one pass; a `match` per call, loops the compiler vectorises.
    fn apply_with_bias(self, v: &mut [f32], bias: &[f32]) {
        let rows = v.chunks_exact_mut(bias.len());
        match self {
            Activation::Identity => rows.for_each(|r| {
                r.iter_mut().zip(bias).for_each(|(x, b)| *x += b);
            }),
            // A select, not `max(0.0)`, which would turn a NaN into 0 (a NaN
            // input must come out NaN, as from tract and onnxruntime), and
            // not a branch, which would not vectorise.
            Activation::Relu => rows.for_each(|r| {
                r.iter_mut().zip(bias).for_each(|(x, b)| {
                    let y = *x + b;
                    *x = if y < 0.0 { 0.0 } else { y };
                });
            }),
            Activation::Tanh => rows.for_each(|r| {
                r.iter_mut()
                    .zip(bias)
                    .for_each(|(x, b)| *x = (*x + b).tanh());
            }),
            Activation::Sigmoid => rows.for_each(|r| {
                r.iter_mut()
                    .zip(bias)
                    .for_each(|(x, b)| *x = 1.0 / (1.0 + (-(*x + b)).exp()));
            }),
        }
    }
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a tract_onnx::pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn attr_i(node: &NodeProto, name: &str) -> Option<i64> {
    attr(node, name).map(|a| a.i)
}

fn attr_f(node: &NodeProto, name: &str) -> Option<f32> {
    attr(node, name).map(|a| a.f)
}

/// Dimensions (all non-negative) of a tensor stored in the file itself.
fn dims(t: &TensorProto) -> Option<Vec<usize>> {
    if !t.external_data.is_empty() || t.data_location == Some(1) || t.segment.is_some() {
        return None;
    }
    t.dims.iter().map(|&d| usize::try_from(d).ok()).collect()
}

/// A FLOAT initializer's dimensions and values.
fn floats(t: &TensorProto) -> Option<(Vec<usize>, Vec<f32>)> {
    let dims = dims(t)?;
    if t.data_type != FLOAT {
        return None;
    }
    let values: Vec<f32> = if t.raw_data.is_empty() {
        t.float_data.clone()
    } else {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    (values.len() == dims.iter().product::<usize>()).then_some((dims, values))
}

/// An INT64 initializer's values.
fn ints(t: &TensorProto) -> Option<Vec<i64>> {
    let dims = dims(t)?;
    if t.data_type != INT64 {
        return None;
    }
    let values: Vec<i64> = if t.raw_data.is_empty() {
        t.int64_data.clone()
    } else {
        t.raw_data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect()
    };
    (values.len() == dims.iter().product::<usize>()).then_some(values)
}

impl DenseChain {
    /// Whether the chain scores a probe batch as tract's `plan` does: same
    /// output shape, values within the fixtures' tolerance
    /// (`|a - b| <= 1e-4 * max(1, |b|)`).
    pub(crate) fn agrees_with(
        &self,
        plan: &std::sync::Arc<tract_onnx::prelude::TypedRunnableModel>,
    ) -> bool {
        use tract_onnx::prelude::*;
        const ROWS: usize = 7;
        let probe: Vec<f32> = (0..ROWS * self.width)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        let Ok(mine) = self.run(&probe, ROWS) else {
            return false;
        };
        let Ok(input) = Tensor::from_shape(&[ROWS, self.width], &probe) else {
            return false;
        };
        let theirs = plan.run(tvec!(input.into_tvalue()));
        crate::simd::clear_upper_state();
        let Ok(theirs) = theirs else { return false };
        let Some(out) = theirs.first() else {
            return false;
        };
        let Ok(plain) = out.try_as_plain_ram() else {
            return false;
        };
        let Ok(values) = plain.as_slice::<f32>() else {
            return false;
        };
        out.shape() == [ROWS, self.outputs()]
            && values
                .iter()
                .zip(&mine)
                .all(|(&b, &a)| (a - b).abs() <= 1e-4 * b.abs().max(1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{AttributeProto, GraphProto, ValueInfoProto};

    fn tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: FLOAT,
            float_data: values.to_vec(),
            ..Default::default()
        }
    }

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    fn graph(nodes: Vec<NodeProto>, inits: Vec<TensorProto>, output: &str) -> ModelProto {
        let info = |name: &str| ValueInfoProto {
            name: name.into(),
            ..Default::default()
        };
        ModelProto {
            graph: Some(GraphProto {
                node: nodes,
                initializer: inits,
                input: vec![info("x")],
                output: vec![info(output)],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn cast(input: &str, output: &str, to: i32) -> NodeProto {
        let mut n = node("Cast", &[input], output);
        n.attribute.push(AttributeProto {
            name: "to".into(),
            i: i64::from(to),
            ..Default::default()
        });
        n
    }

    /// 2 inputs -> 3 hidden -> 1 output.
    fn two_layers(hidden: &str) -> ModelProto {
        graph(
            vec![
                cast("x", "c", FLOAT),
                node("MatMul", &["c", "w1"], "h"),
                node("Add", &["b1", "h"], "hb"),
                node(hidden, &["hb"], "a"),
                node("MatMul", &["a", "w2"], "o"),
                node("Add", &["o", "b2"], "ob"),
                node("Reshape", &["ob", "shape"], "y"),
            ],
            vec![
                tensor("w1", &[2, 3], &[1.0, -1.0, 0.5, 2.0, 0.25, -3.0]),
                tensor("b1", &[1, 3], &[0.1, 0.2, -0.3]),
                tensor("w2", &[3, 1], &[1.5, -0.5, 2.0]),
                tensor("b2", &[1], &[0.75]),
                TensorProto {
                    name: "shape".into(),
                    dims: vec![2],
                    data_type: INT64,
                    int64_data: vec![-1, 1],
                    ..Default::default()
                },
            ],
            "y",
        )
    }

    fn by_hand(row: [f32; 2], act: fn(f32) -> f32) -> f32 {
        let w1 = [[1.0, -1.0, 0.5], [2.0, 0.25, -3.0]];
        let (b1, w2) = ([0.1, 0.2, -0.3], [1.5, -0.5, 2.0]);
        (0..3)
            .map(|j| act(row[0] * w1[0][j] + row[1] * w1[1][j] + b1[j]) * w2[j])
            .sum::<f32>()
            + 0.75
    }

    #[test]
    fn a_chain_scores_every_block_like_the_arithmetic() {
        type Act = fn(f32) -> f32;
        let acts: [(&str, Act); 3] = [
            ("Relu", |v| v.max(0.0)),
            ("Tanh", f32::tanh),
            ("Sigmoid", |v| 1.0 / (1.0 + (-v).exp())),
        ];
        for (op, act) in acts {
            let chain = DenseChain::detect(&two_layers(op), 2).expect(op);
            assert_eq!((chain.layers.len(), chain.outputs()), (2, 1));
            // More rows than a block, so the second block's offsets count.
            let rows = BLOCK_ROWS + 45;
            let x: Vec<f32> = (0..rows * 2).map(|i| (i % 17) as f32 / 4.0 - 2.0).collect();
            let got = chain.run(&x, rows).unwrap();
            for r in 0..rows {
                let want = by_hand([x[2 * r], x[2 * r + 1]], act);
                assert!(
                    (got[r] - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{op} row {r}"
                );
            }
            assert!(chain.run(&x[1..], rows).is_err());
            // NaN in, NaN out (a clamp would hide it).
            let nan = chain.run(&[f32::NAN, 1.0, 1.0, 1.0], 2).unwrap();
            assert!(nan[0].is_nan() && nan[1].is_finite(), "{op}: {nan:?}");
        }
    }

    #[test]
    fn anything_but_a_plain_chain_stays_with_tract() {
        assert!(DenseChain::detect(&two_layers("Relu"), 2).is_some());
        // Wrong input width for the first weights.
        assert!(DenseChain::detect(&two_layers("Relu"), 3).is_none());
        // An operator a chain does not have.
        assert!(DenseChain::detect(&two_layers("Softmax"), 2).is_none());
        let edit = |f: &dyn Fn(&mut GraphProto)| {
            let mut m = two_layers("Relu");
            f(m.graph.as_mut().unwrap());
            DenseChain::detect(&m, 2)
        };
        // An Add of two computed tensors (a skip connection).
        assert!(edit(&|g| g.node[2].input[0] = "c".into()).is_none());
        // Two activations on one layer.
        assert!(edit(&|g| g.node.insert(4, node("Relu", &["a"], "a"))).is_none());
        // The graph's output is not the chain's end.
        assert!(edit(&|g| g.output[0].name = "ob".into()).is_none());
        // A reshape to anything but [-1, outputs].
        assert!(edit(&|g| g.initializer[4].int64_data = vec![1, -1]).is_none());
        // A bias of the wrong length, a bias that is not a constant.
        assert!(edit(&|g| g.initializer[1].dims = vec![3, 1]).is_none());
        assert!(
            edit(&|g| {
                g.initializer.remove(1);
            })
            .is_none()
        );
        // Weights whose values do not fill their shape.
        assert!(
            edit(&|g| {
                g.initializer[0].float_data.pop();
            })
            .is_none()
        );
        // A cast to anything but float (11: DOUBLE).
        assert!(edit(&|g| g.node[0] = cast("x", "c", 11)).is_none());
    }

    #[test]
    fn gemm_with_transposed_weights_is_a_layer() {
        // y = x . W^T + c, W stored [outputs, inputs] = [[1, 2], [3, 4], [5, 6]].
        let mut gemm = node("Gemm", &["x", "w", "c"], "y");
        gemm.attribute.push(AttributeProto {
            name: "transB".into(),
            i: 1,
            ..Default::default()
        });
        let m = graph(
            vec![gemm],
            vec![
                tensor("w", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                tensor("c", &[3], &[0.5, 0.0, -1.0]),
            ],
            "y",
        );
        let chain = DenseChain::detect(&m, 2).unwrap();
        assert_eq!(chain.run(&[1.0, -1.0], 1).unwrap(), [-0.5, -1.0, -2.0]);
    }

    #[test]
    fn converter_mlps_are_chains_and_other_models_are_not() {
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models");
        for (name, chain) in [
            ("sklearn_mlp_regressor", true),
            ("sklearn_mlp_32", true),
            ("sklearn_pipeline_scaler_mlp", false),
            ("sklearn_logreg", false),
            ("xgboost_regressor", false),
        ] {
            let model =
                crate::model::Model::load(fixtures.join(name).join("1/model.onnx")).unwrap();
            assert_eq!(model.dense.is_some(), chain, "{name}");
        }
    }
}
