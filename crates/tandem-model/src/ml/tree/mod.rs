//! Tree ensembles: `TreeEnsembleRegressor`, `TreeEnsembleClassifier` (ONNX-ML
//! opsets 1 to 3) and `TreeEnsemble` (opset 5), parsed into one compiled
//! layout ([`compiled`]) and finished as onnxruntime finishes them
//! ([`finalize`]).

pub mod bitvector;
pub mod compiled;
pub mod finalize;
pub mod spec;

use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use self::compiled::CompiledEnsemble;
use self::finalize::{ClassifierShape, Label};
use self::spec::{
    Aggregate, EnsembleSpec, FlatAttributes, Mode, PostTransform, SpecNode, SpecTree,
};

/// Class labels of a classifier.
#[derive(Debug, Clone, PartialEq)]
pub enum ClassLabels {
    /// `classlabels_int64s`
    Ints(Vec<i64>),
    /// `classlabels_strings`
    Strings(Vec<String>),
}

impl ClassLabels {
    fn len(&self) -> usize {
        match self {
            ClassLabels::Ints(v) => v.len(),
            ClassLabels::Strings(v) => v.len(),
        }
    }

    fn datum_type(&self) -> DatumType {
        match self {
            ClassLabels::Ints(_) => DatumType::I64,
            ClassLabels::Strings(_) => DatumType::String,
        }
    }

    fn tensor(&self, labels: &[Label]) -> Tensor {
        match self {
            ClassLabels::Ints(v) => {
                let data: Vec<i64> = labels
                    .iter()
                    .map(|l| match *l {
                        Label::Index(i) => v.get(i).copied().unwrap_or(i as i64),
                        Label::Literal(x) => x,
                    })
                    .collect();
                tract_ndarray::Array1::from_vec(data).into()
            }
            ClassLabels::Strings(v) => {
                let data: Vec<String> = labels
                    .iter()
                    .map(|l| {
                        let i = match *l {
                            Label::Index(i) => i,
                            Label::Literal(x) => x as usize,
                        };
                        v.get(i).cloned().unwrap_or_default()
                    })
                    .collect();
                tract_ndarray::Array1::from_vec(data).into()
            }
        }
    }
}

/// What the operator outputs.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Regressor {
        base_values: Vec<f32>,
        post: PostTransform,
    },
    Classifier {
        shape: ClassifierShape,
        labels: ClassLabels,
    },
}

#[derive(Debug, PartialEq)]
struct Inner {
    name: &'static str,
    ensemble: CompiledEnsemble,
    kind: Kind,
}

/// The typed (runnable) tree-ensemble operator.
#[derive(Debug, Clone)]
pub struct TreeEnsembleOp(Arc<Inner>);

impl PartialEq for TreeEnsembleOp {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for TreeEnsembleOp {}

impl TreeEnsembleOp {
    /// The compiled ensemble (for inspection and memory accounting).
    pub fn ensemble(&self) -> &CompiledEnsemble {
        &self.0.ensemble
    }

    fn n_outputs(&self) -> usize {
        match self.0.kind {
            Kind::Regressor { .. } => 1,
            Kind::Classifier { .. } => 2,
        }
    }
}

impl Op for TreeEnsembleOp {
    fn name(&self) -> StaticName {
        self.0.name.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} trees, {} targets",
            self.0.ensemble.n_trees(),
            self.0.ensemble.n_targets()
        )])
    }

    fn as_typed(&self) -> Option<&dyn TypedOp> {
        Some(self)
    }
}

impl EvalOp for TreeEnsembleOp {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let input = input.cast_to::<f32>()?;
        let (rows, width) = match *input.shape() {
            [rows, width] => (rows, width),
            [width] => (1, width),
            ref other => bail!(
                "{} expects a [N, F] input, got shape {other:?}",
                self.0.name
            ),
        };
        let x = input.try_as_plain_ram()?.as_slice::<f32>()?;
        let raw = self
            .0
            .ensemble
            .eval(x, rows, width)
            .map_err(|e| format_err!("{e}"))?;
        match &self.0.kind {
            Kind::Regressor { base_values, post } => {
                let t = self.0.ensemble.n_targets();
                let out =
                    finalize::regressor(&raw, t, self.0.ensemble.aggregate(), base_values, *post);
                Ok(tvec!(Tensor::from_shape(&[rows, t], &out)?.into_tvalue()))
            }
            Kind::Classifier { shape, labels } => {
                let (label_idx, scores) = finalize::classifier(&raw, shape);
                Ok(tvec!(
                    labels.tensor(&label_idx).into_tvalue(),
                    Tensor::from_shape(&[rows, shape.n_classes], &scores)?.into_tvalue()
                ))
            }
        }
    }

    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        Ok(Some(self.eval(&EvalContext::out_of_plan(), inputs)?))
    }
}

impl TypedOp for TreeEnsembleOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = inputs[0]
            .shape
            .iter()
            .next()
            .cloned()
            .unwrap_or_else(|| 1.to_dim());
        match &self.0.kind {
            Kind::Regressor { .. } => {
                Ok(tvec!(f32::fact(&[n, self.0.ensemble.n_targets().to_dim()])))
            }
            Kind::Classifier { shape, labels } => Ok(tvec!(
                labels.datum_type().fact(std::slice::from_ref(&n)),
                f32::fact(&[n, shape.n_classes.to_dim()])
            )),
        }
    }

    fn as_op(&self) -> &dyn Op {
        self
    }

    fn as_op_mut(&mut self) -> &mut dyn Op {
        self
    }
}

/// The inference-model face of [`TreeEnsembleOp`].
#[derive(Debug, Clone)]
struct TreeEnsembleExpansion(TreeEnsembleOp);

impl Expansion for TreeEnsembleExpansion {
    fn name(&self) -> StaticName {
        self.0.0.name.into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.0.n_outputs())
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, self.0.n_outputs())?;
        s.equals(&inputs[0].rank, 2)?;
        match &self.0.0.kind {
            Kind::Regressor { .. } => {
                s.equals(&outputs[0].datum_type, DatumType::F32)?;
                s.equals(&outputs[0].rank, 2)?;
                s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
                s.equals(&outputs[0].shape[1], self.0.0.ensemble.n_targets().to_dim())?;
            }
            Kind::Classifier { shape, labels } => {
                s.equals(&outputs[0].datum_type, labels.datum_type())?;
                s.equals(&outputs[0].rank, 1)?;
                s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
                s.equals(&outputs[1].datum_type, DatumType::F32)?;
                s.equals(&outputs[1].rank, 2)?;
                s.equals(&outputs[1].shape[0], &inputs[0].shape[0])?;
                s.equals(&outputs[1].shape[1], shape.n_classes.to_dim())?;
            }
        }
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

fn attr_err(node: &NodeProto, msg: impl std::fmt::Display) -> TractError {
    format_err!("{} node '{}': {msg}", node.op_type, node.name)
}

/// A float list given either as `name` (floats) or `name_as_tensor` (a
/// double tensor).
fn floats(ctx: &ParsingContext, node: &NodeProto, name: &str) -> TractResult<Option<Vec<f32>>> {
    if let Some(v) = node.get_attr_opt_vec::<f32>(name)? {
        return Ok(Some(v));
    }
    tensor_floats(ctx, node, &format!("{name}_as_tensor"))
}

fn tensor_floats(
    ctx: &ParsingContext,
    node: &NodeProto,
    name: &str,
) -> TractResult<Option<Vec<f32>>> {
    match node.get_attr_opt::<&tract_onnx::pb::TensorProto>(name)? {
        None => Ok(None),
        Some(t) => {
            let t = ctx.load_tensor(t)?.cast_to::<f32>()?.into_owned();
            Ok(Some(t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec()))
        }
    }
}

fn ints<'a>(node: &'a NodeProto, name: &str) -> TractResult<&'a [i64]> {
    Ok(node.get_attr_opt_slice::<i64>(name)?.unwrap_or(&[]))
}

fn flat_ensemble(
    ctx: &ParsingContext,
    node: &NodeProto,
    leaf_prefix: &str,
    n_targets: usize,
    aggregate: Aggregate,
) -> TractResult<EnsembleSpec> {
    let modes = node
        .get_attr_opt_tvec::<&str>("nodes_modes")?
        .unwrap_or_default()
        .iter()
        .map(|m| Mode::parse(m).ok_or_else(|| attr_err(node, format!("unknown node mode {m}"))))
        .collect::<TractResult<Vec<_>>>()?;
    let attrs = FlatAttributes {
        tree_ids: ints(node, "nodes_treeids")?,
        node_ids: ints(node, "nodes_nodeids")?,
        feature_ids: ints(node, "nodes_featureids")?,
        modes,
        values: floats(ctx, node, "nodes_values")?.unwrap_or_default(),
        true_ids: ints(node, "nodes_truenodeids")?,
        false_ids: ints(node, "nodes_falsenodeids")?,
        missing_tracks_true: ints(node, "nodes_missing_value_tracks_true")?,
        leaf_tree_ids: ints(node, &format!("{leaf_prefix}_treeids"))?,
        leaf_node_ids: ints(node, &format!("{leaf_prefix}_nodeids"))?,
        leaf_targets: ints(node, &format!("{leaf_prefix}_ids"))?,
        leaf_weights: floats(ctx, node, &format!("{leaf_prefix}_weights"))?.unwrap_or_default(),
    };
    EnsembleSpec::from_flat(&attrs, n_targets, aggregate).map_err(|e| attr_err(node, e))
}

fn n_targets(node: &NodeProto) -> TractResult<usize> {
    let n = node.get_attr_opt::<i64>("n_targets")?.unwrap_or(1);
    usize::try_from(n)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| attr_err(node, format!("n_targets must be positive, got {n}")))
}

fn post_transform(node: &NodeProto) -> TractResult<PostTransform> {
    let s = node
        .get_attr_opt::<&str>("post_transform")?
        .unwrap_or("NONE");
    PostTransform::parse(s).ok_or_else(|| attr_err(node, format!("unknown post_transform {s}")))
}

fn build(
    node: &NodeProto,
    name: &'static str,
    spec: &EnsembleSpec,
    kind: Kind,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let ensemble = CompiledEnsemble::compile(spec).map_err(|e| attr_err(node, e))?;
    let op = TreeEnsembleOp(Arc::new(Inner {
        name,
        ensemble,
        kind,
    }));
    Ok((expand(TreeEnsembleExpansion(op)), vec![]))
}

/// Parser for `TreeEnsembleRegressor`.
pub fn regressor(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let n_targets = n_targets(node)?;
    let agg = node
        .get_attr_opt::<&str>("aggregate_function")?
        .unwrap_or("SUM");
    let aggregate = Aggregate::parse(agg)
        .ok_or_else(|| attr_err(node, format!("unknown aggregate_function {agg}")))?;
    let spec = flat_ensemble(ctx, node, "target", n_targets, aggregate)?;
    let base_values = floats(ctx, node, "base_values")?.unwrap_or_default();
    let kind = Kind::Regressor {
        base_values,
        post: post_transform(node)?,
    };
    build(node, "TreeEnsembleRegressor", &spec, kind)
}

/// Parser for `TreeEnsembleClassifier`.
pub fn classifier(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let ints_labels = node.get_attr_opt_slice::<i64>("classlabels_int64s")?;
    let str_labels = node.get_attr_opt_tvec::<String>("classlabels_strings")?;
    let labels = match (ints_labels, str_labels) {
        (Some(v), None) => ClassLabels::Ints(v.to_vec()),
        (None, Some(v)) => ClassLabels::Strings(v.to_vec()),
        _ => {
            return Err(attr_err(
                node,
                "exactly one of classlabels_int64s and classlabels_strings must be set",
            ));
        }
    };
    let n_classes = labels.len();
    if n_classes == 0 {
        return Err(attr_err(node, "no class labels"));
    }
    let spec = flat_ensemble(ctx, node, "class", n_classes, Aggregate::Sum)?;
    let ensemble_ids: std::collections::BTreeSet<u32> = spec
        .trees
        .iter()
        .flat_map(|t| &t.nodes)
        .filter_map(|n| match n {
            SpecNode::Leaf(w) => Some(w.iter().map(|&(t, _)| t)),
            SpecNode::Branch { .. } => None,
        })
        .flatten()
        .collect();
    let weights_all_positive = spec.trees.iter().flat_map(|t| &t.nodes).all(|n| {
        matches!(n, SpecNode::Leaf(w) if w.iter().all(|&(_, x)| x >= 0.0))
            || matches!(n, SpecNode::Branch { .. })
    });
    let shape = ClassifierShape {
        n_classes,
        base_values: floats(ctx, node, "base_values")?.unwrap_or_default(),
        post: post_transform(node)?,
        binary_case: n_classes == 2 && ensemble_ids.len() == 1,
        weights_all_positive,
    };
    build(
        node,
        "TreeEnsembleClassifier",
        &spec,
        Kind::Classifier { shape, labels },
    )
}

/// Parser for `TreeEnsemble` (ai.onnx.ml opset 5).
pub fn tree_ensemble_v5(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let n_targets = n_targets(node)?;
    let agg = node.get_attr_opt::<i64>("aggregate_function")?.unwrap_or(1);
    let aggregate = Aggregate::from_code(agg)
        .ok_or_else(|| attr_err(node, format!("unknown aggregate_function {agg}")))?;
    let post = node.get_attr_opt::<i64>("post_transform")?.unwrap_or(0);
    let post = PostTransform::from_code(post)
        .ok_or_else(|| attr_err(node, format!("unknown post_transform {post}")))?;

    let roots = ints(node, "tree_roots")?;
    let features = ints(node, "nodes_featureids")?;
    let modes = match node.get_attr_opt::<&tract_onnx::pb::TensorProto>("nodes_modes")? {
        Some(t) => {
            let t = ctx.load_tensor(t)?.cast_to::<i64>()?.into_owned();
            t.try_as_plain_ram()?.as_slice::<i64>()?.to_vec()
        }
        None => return Err(attr_err(node, "nodes_modes is missing")),
    };
    let splits = tensor_floats(ctx, node, "nodes_splits")?.unwrap_or_default();
    let true_ids = ints(node, "nodes_truenodeids")?;
    let false_ids = ints(node, "nodes_falsenodeids")?;
    let true_leafs = ints(node, "nodes_trueleafs")?;
    let false_leafs = ints(node, "nodes_falseleafs")?;
    let mvtt = ints(node, "nodes_missing_value_tracks_true")?;
    let leaf_targets = ints(node, "leaf_targetids")?;
    let leaf_weights = tensor_floats(ctx, node, "leaf_weights")?.unwrap_or_default();
    let membership = tensor_floats(ctx, node, "membership_values")?.unwrap_or_default();

    let n = features.len();
    for (name, len) in [
        ("nodes_modes", modes.len()),
        ("nodes_splits", splits.len()),
        ("nodes_truenodeids", true_ids.len()),
        ("nodes_falsenodeids", false_ids.len()),
        ("nodes_trueleafs", true_leafs.len()),
        ("nodes_falseleafs", false_leafs.len()),
    ] {
        if len != n {
            return Err(attr_err(
                node,
                format!("{name} has {len} entries, nodes_featureids has {n}"),
            ));
        }
    }
    if leaf_targets.len() != leaf_weights.len() {
        return Err(attr_err(
            node,
            "leaf_targetids and leaf_weights differ in length",
        ));
    }
    // Membership sets, one per BRANCH_MEMBER node in node order, NaN-separated.
    let mut sets = membership.split(|v| v.is_nan()).map(<[f32]>::to_vec);
    let mut member_of = vec![Vec::new(); n];
    for (i, &m) in modes.iter().enumerate() {
        if m == 6 {
            member_of[i] = sets.next().unwrap_or_default();
        }
    }

    let mut trees = Vec::with_capacity(roots.len());
    for &root in roots {
        // Build the tree by walking from its root; leaves are separate
        // entities in this layout and become leaf nodes here.
        let mut nodes: Vec<SpecNode> = vec![];
        let mut stack: Vec<(usize, Option<(usize, bool)>)> = vec![];
        let root = usize::try_from(root).ok().filter(|&r| r < n);
        let Some(root) = root else {
            return Err(attr_err(node, "tree_roots points outside the nodes"));
        };
        stack.push((root, None));
        let mut budget = n + leaf_weights.len() + 1;
        while let Some((i, parent)) = stack.pop() {
            budget = budget
                .checked_sub(1)
                .ok_or_else(|| attr_err(node, "trees share nodes or loop"))?;
            let me = nodes.len();
            let mode = u8::try_from(modes[i])
                .ok()
                .and_then(Mode::from_code)
                .ok_or_else(|| attr_err(node, format!("unknown node mode {}", modes[i])))?;
            nodes.push(SpecNode::Branch {
                feature: u32::try_from(features[i])
                    .map_err(|_| attr_err(node, "bad feature id"))?,
                mode,
                threshold: splits[i],
                members: member_of[i].clone(),
                missing_tracks_true: mvtt.get(i).is_some_and(|&v| v != 0),
                if_true: 0,
                if_false: 0,
            });
            link(&mut nodes, parent, me);
            for (is_true, ids, leafs) in [
                (false, false_ids, false_leafs),
                (true, true_ids, true_leafs),
            ] {
                let target =
                    usize::try_from(ids[i]).map_err(|_| attr_err(node, "negative child id"))?;
                if leafs[i] != 0 {
                    let w = *leaf_weights
                        .get(target)
                        .ok_or_else(|| attr_err(node, "leaf index out of range"))?;
                    let t = u32::try_from(leaf_targets[target])
                        .ok()
                        .filter(|&t| (t as usize) < n_targets)
                        .ok_or_else(|| attr_err(node, "leaf target out of range"))?;
                    let leaf = nodes.len();
                    nodes.push(SpecNode::Leaf(vec![(t, w)]));
                    link(&mut nodes, Some((me, is_true)), leaf);
                } else {
                    if target >= n {
                        return Err(attr_err(node, "child index out of range"));
                    }
                    stack.push((target, Some((me, is_true))));
                }
            }
        }
        trees.push(SpecTree { nodes });
    }
    let spec = EnsembleSpec {
        trees,
        n_targets,
        aggregate,
    };
    build(
        node,
        "TreeEnsemble",
        &spec,
        Kind::Regressor {
            base_values: vec![],
            post,
        },
    )
}

fn link(nodes: &mut [SpecNode], parent: Option<(usize, bool)>, child: usize) {
    if let Some((p, is_true)) = parent
        && let SpecNode::Branch {
            if_true, if_false, ..
        } = &mut nodes[p]
    {
        if is_true {
            *if_true = child;
        } else {
            *if_false = child;
        }
    }
}
