//! A tree ensemble as the ONNX-ML attributes describe it, decoded and
//! validated, before it is compiled into the evaluation layout.

use std::collections::HashMap;

/// How a branch node compares the feature value `x` with its threshold `t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `x <= t`
    Leq,
    /// `x < t`
    Lt,
    /// `x >= t`
    Gte,
    /// `x > t`
    Gt,
    /// `x == t`
    Eq,
    /// `x != t`
    Neq,
    /// `x` is one of a set of values (ai.onnx.ml opset 5).
    Member,
}

impl Mode {
    /// Parses the string form used by `nodes_modes` before opset 5.
    pub fn parse(s: &str) -> Option<Option<Mode>> {
        Some(Some(match s {
            "BRANCH_LEQ" => Mode::Leq,
            "BRANCH_LT" => Mode::Lt,
            "BRANCH_GTE" => Mode::Gte,
            "BRANCH_GT" => Mode::Gt,
            "BRANCH_EQ" => Mode::Eq,
            "BRANCH_NEQ" => Mode::Neq,
            "BRANCH_MEMBER" => Mode::Member,
            "LEAF" => return Some(None),
            _ => return None,
        }))
    }

    /// Parses the numeric form used by `TreeEnsemble` (opset 5).
    pub fn from_code(code: u8) -> Option<Mode> {
        Some(match code {
            0 => Mode::Leq,
            1 => Mode::Lt,
            2 => Mode::Gte,
            3 => Mode::Gt,
            4 => Mode::Eq,
            5 => Mode::Neq,
            6 => Mode::Member,
            _ => return None,
        })
    }

    /// Where a NaN input goes: `true` for the true branch. Comparisons with
    /// NaN are false, so NaN follows the false branch unless the node tracks
    /// missing values to the true branch; `!=` is true for NaN.
    pub fn nan_goes_true(self, missing_tracks_true: bool) -> bool {
        missing_tracks_true || self == Mode::Neq
    }

    /// The comparison itself, for finite and infinite `x`.
    #[inline]
    pub fn test(self, x: f32, t: f32, members: &[f32]) -> bool {
        match self {
            Mode::Leq => x <= t,
            Mode::Lt => x < t,
            Mode::Gte => x >= t,
            Mode::Gt => x > t,
            Mode::Eq => x == t,
            Mode::Neq => x != t,
            Mode::Member => members.contains(&x),
        }
    }
}

/// How the leaves reached in each tree combine into one score per target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aggregate {
    /// Sum of the leaf weights.
    Sum,
    /// Sum divided by the number of trees.
    Average,
    /// Smallest leaf weight.
    Min,
    /// Largest leaf weight.
    Max,
}

impl Aggregate {
    /// Parses `SUM`, `AVERAGE`, `MIN`, `MAX`.
    pub fn parse(s: &str) -> Option<Aggregate> {
        Some(match s {
            "SUM" => Aggregate::Sum,
            "AVERAGE" => Aggregate::Average,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            _ => return None,
        })
    }

    /// Parses the opset-5 integer code (0 AVERAGE, 1 SUM, 2 MIN, 3 MAX).
    pub fn from_code(code: i64) -> Option<Aggregate> {
        Some(match code {
            0 => Aggregate::Average,
            1 => Aggregate::Sum,
            2 => Aggregate::Min,
            3 => Aggregate::Max,
            _ => return None,
        })
    }
}

/// The transform applied to the aggregated scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PostTransform {
    /// Scores as they are.
    None,
    /// `1 / (1 + exp(-x))` on each score.
    Logistic,
    /// Softmax over the scores of a row.
    Softmax,
    /// Softmax over the non-zero scores of a row; zeros stay zero.
    SoftmaxZero,
    /// The inverse of the standard normal CDF.
    Probit,
}

impl PostTransform {
    /// Parses `NONE`, `LOGISTIC`, `SOFTMAX`, `SOFTMAX_ZERO`, `PROBIT`.
    pub fn parse(s: &str) -> Option<PostTransform> {
        Some(match s {
            "NONE" => PostTransform::None,
            "LOGISTIC" => PostTransform::Logistic,
            "SOFTMAX" => PostTransform::Softmax,
            "SOFTMAX_ZERO" => PostTransform::SoftmaxZero,
            "PROBIT" => PostTransform::Probit,
            _ => return None,
        })
    }

    /// Parses the opset-5 integer code.
    pub fn from_code(code: i64) -> Option<PostTransform> {
        Some(match code {
            0 => PostTransform::None,
            1 => PostTransform::Softmax,
            2 => PostTransform::Logistic,
            3 => PostTransform::SoftmaxZero,
            4 => PostTransform::Probit,
            _ => return None,
        })
    }
}

/// One node of one tree; children are indices into the same tree's nodes.
#[derive(Debug, Clone, PartialEq)]
pub enum SpecNode {
    /// A comparison.
    Branch {
        /// Input column compared.
        feature: u32,
        /// Comparison.
        mode: Mode,
        /// Threshold (unused for [`Mode::Member`]).
        threshold: f32,
        /// Set of values for [`Mode::Member`].
        members: Vec<f32>,
        /// NaN follows the true branch.
        missing_tracks_true: bool,
        /// Child when the test holds.
        if_true: usize,
        /// Child otherwise.
        if_false: usize,
    },
    /// A leaf with its weights, as `(target, weight)` pairs.
    Leaf(Vec<(u32, f32)>),
}

/// One tree; node 0 is the root.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpecTree {
    /// The nodes.
    pub nodes: Vec<SpecNode>,
}

/// A whole ensemble, before compilation.
#[derive(Debug, Clone, PartialEq)]
pub struct EnsembleSpec {
    /// The trees.
    pub trees: Vec<SpecTree>,
    /// Number of targets (regressors) or classes (classifiers).
    pub n_targets: usize,
    /// How leaf weights combine.
    pub aggregate: Aggregate,
}

/// Attributes of the pre-opset-5 layout (`nodes_*` and `target_*`/`class_*`
/// lists keyed by tree id and node id).
pub struct FlatAttributes<'a> {
    /// `nodes_treeids`
    pub tree_ids: &'a [i64],
    /// `nodes_nodeids`
    pub node_ids: &'a [i64],
    /// `nodes_featureids`
    pub feature_ids: &'a [i64],
    /// `nodes_modes`, parsed
    pub modes: Vec<Option<Mode>>,
    /// `nodes_values`
    pub values: Vec<f32>,
    /// `nodes_truenodeids`
    pub true_ids: &'a [i64],
    /// `nodes_falsenodeids`
    pub false_ids: &'a [i64],
    /// `nodes_missing_value_tracks_true` (may be empty)
    pub missing_tracks_true: &'a [i64],
    /// `*_treeids` of the leaf weights
    pub leaf_tree_ids: &'a [i64],
    /// `*_nodeids` of the leaf weights
    pub leaf_node_ids: &'a [i64],
    /// `*_ids` (target or class) of the leaf weights
    pub leaf_targets: &'a [i64],
    /// `*_weights`
    pub leaf_weights: Vec<f32>,
}

fn index(v: i64, what: &str) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("{what} {v} is negative"))
}

impl EnsembleSpec {
    /// Builds the ensemble from the pre-opset-5 attribute lists, checking
    /// that every list has the length of its family and that every reference
    /// (child, leaf weight, target) points at something that exists.
    pub fn from_flat(
        a: &FlatAttributes<'_>,
        n_targets: usize,
        aggregate: Aggregate,
    ) -> Result<EnsembleSpec, String> {
        let n = a.node_ids.len();
        if n == 0 {
            return Err("the ensemble has no nodes".into());
        }
        let lens = [
            ("nodes_treeids", a.tree_ids.len()),
            ("nodes_featureids", a.feature_ids.len()),
            ("nodes_modes", a.modes.len()),
            ("nodes_values", a.values.len()),
            ("nodes_truenodeids", a.true_ids.len()),
            ("nodes_falsenodeids", a.false_ids.len()),
        ];
        for (name, len) in lens {
            if len != n {
                return Err(format!("{name} has {len} entries, nodes_nodeids has {n}"));
            }
        }
        if !a.missing_tracks_true.is_empty() && a.missing_tracks_true.len() != n {
            return Err(format!(
                "nodes_missing_value_tracks_true has {} entries, nodes_nodeids has {n}",
                a.missing_tracks_true.len()
            ));
        }
        let m = a.leaf_targets.len();
        for (name, len) in [
            ("leaf treeids", a.leaf_tree_ids.len()),
            ("leaf nodeids", a.leaf_node_ids.len()),
            ("leaf weights", a.leaf_weights.len()),
        ] {
            if len != m {
                return Err(format!("{name} has {len} entries, leaf ids have {m}"));
            }
        }

        // Trees in order of first appearance of their id; nodes by node id.
        let mut tree_index: HashMap<i64, usize> = HashMap::new();
        let mut per_tree: Vec<HashMap<i64, usize>> = vec![];
        for i in 0..n {
            let t = *tree_index.entry(a.tree_ids[i]).or_insert_with(|| {
                per_tree.push(HashMap::new());
                per_tree.len() - 1
            });
            if per_tree[t].insert(a.node_ids[i], i).is_some() {
                return Err(format!(
                    "tree {} has node id {} twice",
                    a.tree_ids[i], a.node_ids[i]
                ));
            }
        }
        let mut weights: HashMap<(i64, i64), Vec<(u32, f32)>> = HashMap::new();
        for j in 0..m {
            let target = index(a.leaf_targets[j], "leaf target id")?;
            if target >= n_targets {
                return Err(format!(
                    "leaf weight targets {target}, but there are {n_targets} targets"
                ));
            }
            weights
                .entry((a.leaf_tree_ids[j], a.leaf_node_ids[j]))
                .or_default()
                .push((target as u32, a.leaf_weights[j]));
        }

        let mut tree_ids: Vec<(i64, usize)> = tree_index.into_iter().collect();
        tree_ids.sort_by_key(|&(_, t)| t);
        let mut trees = Vec::with_capacity(tree_ids.len());
        for (tree_id, t) in tree_ids {
            let by_id = &per_tree[t];
            // Walk from the root (the smallest node id) and renumber in
            // visiting order, so that only reachable nodes are kept.
            let root_id = *by_id.keys().min().ok_or("empty tree")?;
            let mut order: Vec<i64> = vec![root_id];
            let mut local: HashMap<i64, usize> = HashMap::from([(root_id, 0)]);
            let mut nodes = Vec::new();
            let mut k = 0;
            while k < order.len() {
                let id = order[k];
                k += 1;
                let i = *by_id
                    .get(&id)
                    .ok_or_else(|| format!("tree {tree_id} refers to missing node {id}"))?;
                let node = match a.modes[i] {
                    None => SpecNode::Leaf(weights.remove(&(tree_id, id)).unwrap_or_default()),
                    Some(mode) => {
                        let mut child = |cid: i64| -> Result<usize, String> {
                            if !by_id.contains_key(&cid) {
                                return Err(format!(
                                    "node {id} of tree {tree_id} points at missing node {cid}"
                                ));
                            }
                            Ok(*local.entry(cid).or_insert_with(|| {
                                order.push(cid);
                                order.len() - 1
                            }))
                        };
                        let if_true = child(a.true_ids[i])?;
                        let if_false = child(a.false_ids[i])?;
                        SpecNode::Branch {
                            feature: u32::try_from(index(a.feature_ids[i], "feature id")?)
                                .map_err(|_| "feature id too large".to_string())?,
                            mode,
                            threshold: a.values[i],
                            members: vec![],
                            missing_tracks_true: a
                                .missing_tracks_true
                                .get(i)
                                .is_some_and(|&v| v != 0),
                            if_true,
                            if_false,
                        }
                    }
                };
                nodes.push(node);
            }
            trees.push(SpecTree { nodes });
        }
        let spec = EnsembleSpec {
            trees,
            n_targets,
            aggregate,
        };
        spec.check_acyclic()?;
        Ok(spec)
    }

    /// Rejects "trees" in which a node is reached twice (a cycle, or a
    /// node shared by two parents), which the layout cannot represent.
    pub fn check_acyclic(&self) -> Result<(), String> {
        for (t, tree) in self.trees.iter().enumerate() {
            if tree.nodes.is_empty() {
                return Err(format!("tree {t} has no nodes"));
            }
            let mut seen = vec![false; tree.nodes.len()];
            let mut stack = vec![0usize];
            while let Some(i) = stack.pop() {
                if std::mem::replace(&mut seen[i], true) {
                    return Err(format!(
                        "tree {t} reaches node {i} twice (cycle or shared node)"
                    ));
                }
                if let SpecNode::Branch {
                    if_true, if_false, ..
                } = tree.nodes[i]
                {
                    stack.push(if_true);
                    stack.push(if_false);
                }
            }
        }
        Ok(())
    }

    /// The largest feature index any branch reads.
    pub fn max_feature(&self) -> Option<u32> {
        self.trees
            .iter()
            .flat_map(|t| &t.nodes)
            .filter_map(|n| match n {
                SpecNode::Branch { feature, .. } => Some(*feature),
                SpecNode::Leaf(_) => None,
            })
            .max()
    }
}
