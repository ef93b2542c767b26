//! The evaluation layout of a tree ensemble and its kernels.
//!
//! Every tree is a flat array of 16-byte nodes, root first, children near
//! their parent. A leaf is a node whose two children are itself, so a walk
//! can step past a leaf without testing for one: several rows walk the same
//! tree in lock-step (which keeps the tree in L1 cache and lets the CPU
//! overlap the rows' independent loads) for the depth of the tree's
//! shallowest leaf with no test, then until a step moves none of them.
//! Comparison modes are normalised where that is exact: `x > t` becomes
//! `!(x <= t)` with the children swapped (and `>=` likewise becomes `<`), so
//! the common ensembles run a kernel with one comparison and no mode switch.
//! Where NaN must go is a per-node bit, since the normalisation changes
//! which side a failed comparison lands on.

use super::spec::{Aggregate, EnsembleSpec, Mode, SpecNode};

/// Set in [`Node::feature`] when a NaN input takes `children[0]`.
const NAN_TO_FIRST: u32 = 1 << 31;
const FEATURE_MASK: u32 = !NAN_TO_FIRST;
/// Rows walked together through one tree.
const LANES: usize = 8;
/// Rows whose accumulators stay hot while every tree is walked.
const TILE: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
struct Node {
    /// Threshold; for a leaf, the leaf index as bits; for a membership node,
    /// the index of its value set as bits.
    threshold: f32,
    /// Feature index, with [`NAN_TO_FIRST`].
    feature: u32,
    /// `children[0]` when the (normalised) test holds, `children[1]` otherwise.
    children: [u32; 2],
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Tree {
    root: u32,
    /// The deepest leaf's depth.
    depth: u32,
    /// The shallowest leaf's depth: every walk takes at least this many
    /// steps, so none need a leaf test.
    min_leaf: u32,
}

/// Which comparison every branch uses after normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Leq,
    Lt,
    Generic,
}

/// A compiled ensemble: immutable, `Send + Sync`, shared by every caller.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledEnsemble {
    nodes: Vec<Node>,
    /// Per-node mode, used by the generic kernel only.
    modes: Vec<Mode>,
    member_sets: Vec<Vec<f32>>,
    trees: Vec<Tree>,
    leaf_offsets: Vec<u32>,
    leaf_entries: Vec<(u32, f32)>,
    /// One weight per leaf when every leaf carries exactly one weight for
    /// target 0 (single-target ensembles): the fast accumulation path.
    leaf_single: Option<Vec<f32>>,
    kernel: Kernel,
    nan_bits: bool,
    n_targets: usize,
    aggregate: Aggregate,
    min_features: usize,
}

/// Aggregated scores of a batch, row-major `[rows, n_targets]`, with a flag
/// per cell telling whether any tree contributed to it.
#[derive(Debug, Clone, Default)]
pub struct RawScores {
    /// Aggregated values (averages already divided).
    pub scores: Vec<f64>,
    /// Whether a leaf weight reached this cell.
    pub has: Vec<bool>,
}

impl CompiledEnsemble {
    /// Compiles a validated spec.
    pub fn compile(spec: &EnsembleSpec) -> Result<CompiledEnsemble, String> {
        spec.check_acyclic()?;
        let norm = |m: Mode| match m {
            Mode::Leq | Mode::Gt => Some(Kernel::Leq),
            Mode::Lt | Mode::Gte => Some(Kernel::Lt),
            _ => None,
        };
        let mut kernel: Option<Kernel> = None;
        for node in spec.trees.iter().flat_map(|t| &t.nodes) {
            if let SpecNode::Branch { mode, .. } = node {
                let k = norm(*mode).unwrap_or(Kernel::Generic);
                kernel = match kernel {
                    None => Some(k),
                    Some(prev) if prev == k => Some(k),
                    Some(_) => Some(Kernel::Generic),
                };
            }
        }
        let kernel = kernel.unwrap_or(Kernel::Leq);

        let mut out = CompiledEnsemble {
            nodes: vec![],
            modes: vec![],
            member_sets: vec![],
            trees: vec![],
            leaf_offsets: vec![0],
            leaf_entries: vec![],
            leaf_single: None,
            kernel,
            nan_bits: false,
            n_targets: spec.n_targets,
            aggregate: spec.aggregate,
            min_features: spec.max_feature().map_or(0, |f| f as usize + 1),
        };
        for tree in &spec.trees {
            out.add_tree(&tree.nodes)?;
        }
        if out.nodes.len() > FEATURE_MASK as usize {
            return Err("too many nodes".into());
        }
        let single = out.leaf_offsets.windows(2).all(|w| w[1] - w[0] == 1)
            && out.leaf_entries.iter().all(|&(t, _)| t == 0);
        if single && spec.n_targets == 1 {
            out.leaf_single = Some(out.leaf_entries.iter().map(|&(_, w)| w).collect());
        }
        Ok(out)
    }

    fn add_tree(&mut self, spec: &[SpecNode]) -> Result<(), String> {
        let base = self.nodes.len();
        let to_global = |i: usize| -> Result<u32, String> {
            u32::try_from(base + i).map_err(|_| "too many nodes".to_string())
        };
        // Spec nodes are already in breadth-first-ish visiting order from the
        // root, which keeps children near parents.
        let mut depth = vec![0u32; spec.len()];
        let mut max_depth = 0;
        let mut min_leaf = u32::MAX;
        for (i, node) in spec.iter().enumerate() {
            let me = to_global(i)?;
            match node {
                SpecNode::Leaf(weights) => {
                    min_leaf = min_leaf.min(depth[i]);
                    let leaf = (self.leaf_offsets.len() - 1) as u32;
                    self.leaf_entries.extend_from_slice(weights);
                    self.leaf_offsets.push(self.leaf_entries.len() as u32);
                    self.nodes.push(Node {
                        threshold: f32::from_bits(leaf),
                        feature: 0,
                        children: [me, me],
                    });
                    self.modes.push(Mode::Leq);
                }
                SpecNode::Branch {
                    feature,
                    mode,
                    threshold,
                    members,
                    missing_tracks_true,
                    if_true,
                    if_false,
                } => {
                    if *feature > FEATURE_MASK {
                        return Err(format!("feature index {feature} too large"));
                    }
                    for c in [*if_true, *if_false] {
                        depth[c] = depth[i] + 1;
                        max_depth = max_depth.max(depth[c]);
                    }
                    let (t, f) = (to_global(*if_true)?, to_global(*if_false)?);
                    let nan_dest = if mode.nan_goes_true(*missing_tracks_true) {
                        t
                    } else {
                        f
                    };
                    let (children, threshold) = match (self.kernel, mode) {
                        (Kernel::Leq, Mode::Leq) | (Kernel::Lt, Mode::Lt) => ([t, f], *threshold),
                        (Kernel::Leq, Mode::Gt) | (Kernel::Lt, Mode::Gte) => ([f, t], *threshold),
                        (_, Mode::Member) => {
                            self.member_sets.push(members.clone());
                            ([t, f], f32::from_bits((self.member_sets.len() - 1) as u32))
                        }
                        _ => ([t, f], *threshold),
                    };
                    // The kernels send NaN to children[1] unless the bit is set
                    // (comparisons with NaN are false); the generic kernel
                    // reads the bit for every NaN.
                    let nan_first = nan_dest == children[0] && children[0] != children[1];
                    let generic_nan = self.kernel == Kernel::Generic && nan_dest == children[0];
                    if nan_first {
                        self.nan_bits = true;
                    }
                    self.nodes.push(Node {
                        threshold,
                        feature: feature
                            | if nan_first || generic_nan {
                                NAN_TO_FIRST
                            } else {
                                0
                            },
                        children,
                    });
                    self.modes.push(*mode);
                }
            }
        }
        self.trees.push(Tree {
            root: to_global(0)?,
            depth: max_depth,
            min_leaf: min_leaf.min(max_depth),
        });
        Ok(())
    }

    /// Number of trees.
    pub fn n_trees(&self) -> usize {
        self.trees.len()
    }

    /// Number of targets or classes scored.
    pub fn n_targets(&self) -> usize {
        self.n_targets
    }

    /// How leaf weights combine.
    pub fn aggregate(&self) -> Aggregate {
        self.aggregate
    }

    /// The smallest input width this ensemble can read.
    pub fn min_features(&self) -> usize {
        self.min_features
    }

    /// The leaf weights, as `(target, weight)` pairs.
    pub fn leaf_weights(&self) -> impl Iterator<Item = (u32, f32)> + '_ {
        self.leaf_entries.iter().copied()
    }

    /// Heap bytes held by the layout.
    pub fn heap_bytes(&self) -> usize {
        self.nodes.len() * size_of::<Node>()
            + self.modes.len()
            + self.leaf_offsets.len() * 4
            + self.leaf_entries.len() * 8
            + self.leaf_single.as_ref().map_or(0, |v| v.len() * 4)
            + self.trees.len() * size_of::<Tree>()
    }

    /// Scores `rows` rows of `width` features (row-major `x`).
    ///
    /// `width` must be at least [`Self::min_features`].
    pub fn eval(&self, x: &[f32], rows: usize, width: usize) -> Result<RawScores, String> {
        if width < self.min_features {
            return Err(format!(
                "the trees read feature {} but rows have {width} features",
                self.min_features - 1
            ));
        }
        if x.len() != rows * width {
            return Err(format!("{} values for {rows} rows of {width}", x.len()));
        }
        let t = self.n_targets;
        let mut out = RawScores {
            scores: vec![0.0; rows * t],
            has: vec![false; rows * t],
        };
        match (self.kernel, self.nan_bits) {
            (Kernel::Leq, false) => self.eval_with::<LeqStep<false>>(x, rows, width, &mut out),
            (Kernel::Leq, true) => self.eval_with::<LeqStep<true>>(x, rows, width, &mut out),
            (Kernel::Lt, false) => self.eval_with::<LtStep<false>>(x, rows, width, &mut out),
            (Kernel::Lt, true) => self.eval_with::<LtStep<true>>(x, rows, width, &mut out),
            (Kernel::Generic, _) => self.eval_with::<GenericStep>(x, rows, width, &mut out),
        }
        if self.aggregate == Aggregate::Average {
            let n = self.trees.len() as f64;
            out.scores.iter_mut().for_each(|s| *s /= n);
        }
        Ok(out)
    }

    fn eval_with<S: Step>(&self, x: &[f32], rows: usize, width: usize, out: &mut RawScores) {
        let mut leaves = [0u32; LANES];
        for tile_start in (0..rows).step_by(TILE) {
            let tile_end = (tile_start + TILE).min(rows);
            for tree in &self.trees {
                let mut r = tile_start;
                while r + LANES <= tile_end {
                    self.walk::<S, LANES>(tree, x, r * width, width, &mut leaves);
                    for (k, &leaf) in leaves.iter().enumerate() {
                        self.accumulate(leaf, r + k, out);
                    }
                    r += LANES;
                }
                while r < tile_end {
                    let mut one = [0u32; 1];
                    self.walk::<S, 1>(tree, x, r * width, width, &mut one);
                    self.accumulate(one[0], r, out);
                    r += 1;
                }
            }
        }
    }

    #[inline(always)]
    fn walk<S: Step, const L: usize>(
        &self,
        tree: &Tree,
        x: &[f32],
        first_row: usize,
        width: usize,
        leaves: &mut [u32; L],
    ) {
        let mut idx = [tree.root; L];
        // No lane can sit on a leaf before the shallowest leaf's depth.
        for _ in 0..tree.min_leaf {
            self.step_lanes::<S, L>(&mut idx, x, first_row, width);
        }
        // Unbalanced trees (LightGBM's leaf-wise growth, random forests):
        // past that, stop at the first step that moves no lane (a leaf is
        // its own child) rather than walking the deepest path's length.
        // Comparing the lanes' positions needs no load.
        for _ in tree.min_leaf..tree.depth {
            let before = idx;
            self.step_lanes::<S, L>(&mut idx, x, first_row, width);
            if idx == before {
                break;
            }
        }
        for (leaf, &i) in leaves.iter_mut().zip(&idx) {
            *leaf = self.nodes[i as usize].threshold.to_bits();
        }
    }

    #[inline(always)]
    fn step_lanes<S: Step, const L: usize>(
        &self,
        idx: &mut [u32; L],
        x: &[f32],
        first_row: usize,
        width: usize,
    ) {
        for (k, i) in idx.iter_mut().enumerate() {
            let node = &self.nodes[*i as usize];
            *i = S::step(self, *i, node, x, first_row + k * width);
        }
    }

    #[inline(always)]
    fn accumulate(&self, leaf: u32, row: usize, out: &mut RawScores) {
        let t = self.n_targets;
        if let Some(single) = &self.leaf_single
            && matches!(self.aggregate, Aggregate::Sum | Aggregate::Average)
        {
            out.scores[row] += f64::from(single[leaf as usize]);
            out.has[row] = true;
            return;
        }
        let (a, b) = (
            self.leaf_offsets[leaf as usize],
            self.leaf_offsets[leaf as usize + 1],
        );
        for &(target, w) in &self.leaf_entries[a as usize..b as usize] {
            let cell = row * t + target as usize;
            let w = f64::from(w);
            let (s, h) = (&mut out.scores[cell], &mut out.has[cell]);
            match self.aggregate {
                Aggregate::Sum | Aggregate::Average => *s += w,
                Aggregate::Min => {
                    if !*h || w < *s {
                        *s = w;
                    }
                }
                Aggregate::Max => {
                    if !*h || w > *s {
                        *s = w;
                    }
                }
            }
            *h = true;
        }
    }
}

/// One step of a walk: the next node index.
trait Step {
    fn step(e: &CompiledEnsemble, idx: u32, node: &Node, x: &[f32], row: usize) -> u32;
}

struct LeqStep<const NAN: bool>;
struct LtStep<const NAN: bool>;
struct GenericStep;

impl<const NAN: bool> Step for LeqStep<NAN> {
    #[inline(always)]
    fn step(_: &CompiledEnsemble, _: u32, node: &Node, x: &[f32], row: usize) -> u32 {
        let v = x[row + (node.feature & FEATURE_MASK) as usize];
        let mut first = v <= node.threshold;
        if NAN {
            first |= v.is_nan() & (node.feature & NAN_TO_FIRST != 0);
        }
        node.children[usize::from(!first)]
    }
}

impl<const NAN: bool> Step for LtStep<NAN> {
    #[inline(always)]
    fn step(_: &CompiledEnsemble, _: u32, node: &Node, x: &[f32], row: usize) -> u32 {
        let v = x[row + (node.feature & FEATURE_MASK) as usize];
        let mut first = v < node.threshold;
        if NAN {
            first |= v.is_nan() & (node.feature & NAN_TO_FIRST != 0);
        }
        node.children[usize::from(!first)]
    }
}

impl Step for GenericStep {
    #[inline(always)]
    fn step(e: &CompiledEnsemble, idx: u32, node: &Node, x: &[f32], row: usize) -> u32 {
        let v = x[row + (node.feature & FEATURE_MASK) as usize];
        let first = if v.is_nan() {
            node.feature & NAN_TO_FIRST != 0
        } else {
            match e.modes[idx as usize] {
                Mode::Member => e.member_sets[node.threshold.to_bits() as usize].contains(&v),
                mode => mode.test(v, node.threshold, &[]),
            }
        };
        node.children[usize::from(!first)]
    }
}

#[cfg(test)]
mod tests {
    use super::super::spec::SpecTree;
    use super::*;

    fn stump(mode: Mode, threshold: f32, mtt: bool) -> EnsembleSpec {
        EnsembleSpec {
            trees: vec![SpecTree {
                nodes: vec![
                    SpecNode::Branch {
                        feature: 1,
                        mode,
                        threshold,
                        members: vec![1.0, 3.0],
                        missing_tracks_true: mtt,
                        if_true: 1,
                        if_false: 2,
                    },
                    SpecNode::Leaf(vec![(0, 10.0)]),
                    SpecNode::Leaf(vec![(0, -10.0)]),
                ],
            }],
            n_targets: 1,
            aggregate: Aggregate::Sum,
        }
    }

    fn score(spec: &EnsembleSpec, v: f32) -> f64 {
        let e = CompiledEnsemble::compile(spec).unwrap();
        e.eval(&[0.0, v], 1, 2).unwrap().scores[0]
    }

    #[test]
    fn every_mode_matches_its_definition_including_nan() {
        let values = [
            -1.0,
            0.0,
            0.5,
            1.0,
            2.0,
            3.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        for mode in [
            Mode::Leq,
            Mode::Lt,
            Mode::Gte,
            Mode::Gt,
            Mode::Eq,
            Mode::Neq,
            Mode::Member,
        ] {
            for mtt in [false, true] {
                let spec = stump(mode, 1.0, mtt);
                for v in values {
                    let expect_true = if v.is_nan() {
                        mode.nan_goes_true(mtt)
                    } else {
                        mode.test(v, 1.0, &[1.0, 3.0])
                    };
                    let want = if expect_true { 10.0 } else { -10.0 };
                    assert_eq!(score(&spec, v), want, "{mode:?} mtt={mtt} x={v}");
                }
            }
        }
    }

    #[test]
    fn lockstep_lanes_agree_with_single_row_walks() {
        // 3 trees of different depths over 2 features; 21 rows cover both the
        // 8-lane path and the one-row tail.
        let deep = |t: f32| SpecTree {
            nodes: vec![
                SpecNode::Branch {
                    feature: 0,
                    mode: Mode::Gt,
                    threshold: t,
                    members: vec![],
                    missing_tracks_true: true,
                    if_true: 1,
                    if_false: 2,
                },
                SpecNode::Leaf(vec![(0, 1.0)]),
                SpecNode::Branch {
                    feature: 1,
                    mode: Mode::Leq,
                    threshold: -t,
                    members: vec![],
                    missing_tracks_true: false,
                    if_true: 3,
                    if_false: 4,
                },
                SpecNode::Leaf(vec![(0, 2.0)]),
                SpecNode::Leaf(vec![(0, 4.0)]),
            ],
        };
        let spec = EnsembleSpec {
            trees: vec![deep(0.0), deep(0.5), deep(-0.5)],
            n_targets: 1,
            aggregate: Aggregate::Sum,
        };
        let e = CompiledEnsemble::compile(&spec).unwrap();
        let rows = 21;
        let x: Vec<f32> = (0..rows * 2)
            .map(|i| {
                if i % 7 == 3 {
                    f32::NAN
                } else {
                    ((i * 37) % 11) as f32 / 5.0 - 1.0
                }
            })
            .collect();
        let batch = e.eval(&x, rows, 2).unwrap();
        for r in 0..rows {
            let one = e.eval(&x[r * 2..r * 2 + 2], 1, 2).unwrap();
            assert_eq!(batch.scores[r], one.scores[0], "row {r}");
        }
    }

    #[test]
    fn unbalanced_trees_stop_when_every_lane_is_on_a_leaf() {
        // A comb of depth 20: level k sends x <= k to a leaf worth k and the
        // rest one level down, so lanes of one 8-row group end at depths 1
        // to 20; a balanced stump beside it (shallowest leaf = deepest).
        const D: usize = 20;
        let mut nodes = Vec::new();
        for k in 0..D {
            nodes.push(SpecNode::Branch {
                feature: 0,
                mode: Mode::Leq,
                threshold: k as f32,
                members: vec![],
                missing_tracks_true: false,
                if_true: 2 * k + 1,
                if_false: 2 * k + 2,
            });
            nodes.push(SpecNode::Leaf(vec![(0, k as f32)]));
        }
        nodes.push(SpecNode::Leaf(vec![(0, D as f32)]));
        let mut spec = stump(Mode::Leq, 0.5, false);
        spec.trees.push(SpecTree { nodes });
        let e = CompiledEnsemble::compile(&spec).unwrap();
        assert_eq!((e.trees[1].min_leaf, e.trees[1].depth), (1, D as u32));
        assert_eq!((e.trees[0].min_leaf, e.trees[0].depth), (1, 1));
        let rows = 45;
        let x: Vec<f32> = (0..rows)
            .flat_map(|r| [((r * 7) % 23) as f32 - 1.5, (r % 2) as f32])
            .collect();
        let got = e.eval(&x, rows, 2).unwrap();
        for r in 0..rows {
            let (v, w) = (x[2 * r], x[2 * r + 1]);
            let comb = (0..D).find(|&k| v <= k as f32).unwrap_or(D) as f64;
            let stump = if w <= 0.5 { 10.0 } else { -10.0 };
            assert_eq!(got.scores[r], comb + stump, "row {r}: x = {v}");
        }
    }

    #[test]
    fn narrow_rows_are_refused() {
        let e = CompiledEnsemble::compile(&stump(Mode::Leq, 0.0, false)).unwrap();
        assert!(e.eval(&[0.0], 1, 1).unwrap_err().contains("feature 1"));
    }
}
