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

use super::bitvector::Bitvectors;
use super::spec::{Aggregate, EnsembleSpec, Mode, SpecNode};

/// Set in [`Node::feature`] when a NaN input takes `children[0]`.
const NAN_TO_FIRST: u32 = 1 << 31;
const FEATURE_MASK: u32 = !NAN_TO_FIRST;
/// Rows walked together through one tree.
const LANES: usize = 8;
/// Rows whose accumulators stay hot while every tree is walked.
const TILE: usize = 64;
/// The deepest tree kept in the complete layout (1,023 tests and 1,024
/// leaf slots, 12 KiB).
const COMPLETE_MAX_DEPTH: u32 = 10;

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
    /// Where the tree's complete layout starts in
    /// [`CompiledEnsemble::tests`] and [`CompiledEnsemble::slots`], when it
    /// has one.
    complete: Option<(u32, u32)>,
}

/// A branch of the complete layout: the test alone, since the children of
/// test `i` are `2i + 1` and `2i + 2`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
struct Test {
    threshold: f32,
    /// Feature index, with [`NAN_TO_FIRST`].
    feature: u32,
}

/// A test of the complete layout compared as integers: `key` is
/// [`order_key`] of the threshold; `feature` is the feature index, or with
/// NaN bits in the ensemble the offset of its [`pair_keys`] (as
/// [`KeyNode::at`]).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
struct KeyTest {
    key: u32,
    feature: u32,
}

/// A node of the linked layout compared as integers, parallel to
/// [`CompiledEnsemble::nodes`]: `key` is [`order_key`] of the threshold and
/// `at` is `2 * feature + 1` when a NaN input takes `children[0]`, else
/// `2 * feature`: the offset of the feature's pair of keys in a tile of
/// [`pair_keys`]. A leaf has `at = 0` and itself as both children.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
struct KeyNode {
    key: u32,
    at: u32,
    children: [u32; 2],
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
    /// The complete layout of the trees that have one (VPred, Asadi et al.,
    /// TKDE 2014): a tree of depth `d` as `2^d - 1` tests in breadth-first
    /// order, every leaf above the last level pushed down to it (the
    /// tests under it go either way to copies of it), so a walk is `d`
    /// steps of `i = 2i + 1 + failed` with no child to load and no leaf to
    /// detect. Used for balanced trees, where the linked walk would take
    /// about as many steps.
    tests: Vec<Test>,
    /// The leaf index under each last-level slot of a complete tree.
    slots: Vec<u32>,
    /// `tests` with thresholds as [`order_key`]s, for `<=`/`<` kernels with
    /// no NaN threshold: the walk then compares each tile's keys as
    /// integers, which takes a shorter dependency chain per step than a
    /// float comparison and its flag transfer. With NaN bits, the tile's
    /// [`pair_keys`], as in the linked walk.
    key_tests: Option<Vec<KeyTest>>,
    /// `nodes` with thresholds as [`order_key`]s, for `<=`/`<` kernels with
    /// no NaN threshold and a tree without a complete layout: the linked
    /// walk then compares each tile's [`pair_keys`] as integers, NaN bits
    /// included (a NaN's second key sorts below every number).
    key_nodes: Option<Vec<KeyNode>>,
    member_sets: Vec<Vec<f32>>,
    trees: Vec<Tree>,
    leaf_offsets: Vec<u32>,
    leaf_entries: Vec<(u32, f32)>,
    /// One weight per leaf when every leaf carries exactly one weight for
    /// target 0 (single-target ensembles): the fast accumulation path.
    leaf_single: Option<Vec<f32>>,
    kernel: Kernel,
    nan_bits: bool,
    /// The QuickScorer layout, when it is expected to beat the walk.
    bitvectors: Option<Bitvectors>,
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
            tests: vec![],
            slots: vec![],
            key_tests: None,
            key_nodes: None,
            member_sets: vec![],
            trees: vec![],
            leaf_offsets: vec![0],
            leaf_entries: vec![],
            leaf_single: None,
            kernel,
            nan_bits: false,
            bitvectors: None,
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
        // The walks read nodes and feature values without bounds checks
        // (`node`, `value`); these are the facts that makes that sound.
        let n = out.nodes.len();
        if out.trees.iter().any(|t| t.root as usize >= n) {
            return Err("a tree has no nodes".into());
        }
        for (i, node) in out.nodes.iter().enumerate() {
            if node.children.iter().any(|&c| c as usize >= n) {
                return Err(format!("node {i} has a child outside the ensemble"));
            }
            let is_leaf = node.children == [i as u32; 2];
            if !is_leaf && (node.feature & FEATURE_MASK) as usize >= out.min_features {
                return Err(format!("node {i} reads a feature past the widest one"));
            }
        }
        let single = out.leaf_offsets.windows(2).all(|w| w[1] - w[0] == 1)
            && out.leaf_entries.iter().all(|&(t, _)| t == 0);
        if single && spec.n_targets == 1 {
            out.leaf_single = Some(out.leaf_entries.iter().map(|&(_, w)| w).collect());
        }
        // A row scans about half the branches; a one-row walk waits on about
        // three dependent loads per level. Past 8 branches per level of depth
        // (the 200-tree depth-6 ensemble: 9.5) the two measured even.
        out.key_tests = out.build_key_tests();
        out.key_nodes = out.build_key_nodes();
        let levels: u32 = out.trees.iter().map(|t| t.depth).sum();
        out.bitvectors = out
            .build_bitvectors()
            .filter(|bv| bv.n_branches() <= 8 * levels as usize);
        Ok(out)
    }

    /// The integer form of `tests`, when every test can be compared so:
    /// `<=`/`<` kernels, and no threshold is NaN (no key orders above every
    /// input). Without NaN bits every NaN input takes `children[1]`, where
    /// [`order_key`]'s NaN (above every number) sends it, and a test reads
    /// one key per value; with them, a test reads the first or second of
    /// the value's [`pair_keys`] by its bit.
    fn build_key_tests(&self) -> Option<Vec<KeyTest>> {
        let fits = matches!(self.kernel, Kernel::Leq | Kernel::Lt)
            && !self.tests.is_empty()
            && !self.tests.iter().any(|t| t.threshold.is_nan());
        fits.then(|| {
            self.tests
                .iter()
                .map(|t| KeyTest {
                    key: order_key(t.threshold),
                    feature: if self.nan_bits {
                        2 * (t.feature & FEATURE_MASK) + u32::from(t.feature & NAN_TO_FIRST != 0)
                    } else {
                        t.feature & FEATURE_MASK
                    },
                })
                .collect()
        })
    }

    /// The integer form of `nodes`, when some tree walks the linked layout
    /// and every branch can be compared so: a `<=`/`<` kernel and no NaN
    /// threshold. A NaN input reads the first of its [`pair_keys`] (above
    /// every number: fails, `children[1]`) or, at a node whose NaN bit
    /// sends it to `children[0]`, the second (below every number: holds).
    fn build_key_nodes(&self) -> Option<Vec<KeyNode>> {
        let fits = matches!(self.kernel, Kernel::Leq | Kernel::Lt)
            && self.trees.iter().any(|t| t.complete.is_none())
            && !self
                .nodes
                .iter()
                .enumerate()
                .any(|(i, n)| n.children != [i as u32; 2] && n.threshold.is_nan());
        fits.then(|| {
            self.nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    if n.children == [i as u32; 2] {
                        return KeyNode {
                            key: 0,
                            at: 0,
                            children: n.children,
                        };
                    }
                    KeyNode {
                        key: order_key(n.threshold),
                        at: 2 * (n.feature & FEATURE_MASK)
                            + u32::from(n.feature & NAN_TO_FIRST != 0),
                        children: n.children,
                    }
                })
                .collect()
        })
    }

    /// The QuickScorer layout, when the trees suit it.
    fn build_bitvectors(&self) -> Option<Bitvectors> {
        if self.kernel == Kernel::Generic {
            return None;
        }
        let nodes = &self.nodes;
        Bitvectors::build(
            |i| {
                let n = nodes[i as usize];
                (n.children != [i, i]).then_some((
                    n.feature & FEATURE_MASK,
                    n.threshold,
                    n.children,
                ))
            },
            |i| nodes[i as usize].threshold.to_bits(),
            self.trees.iter().map(|t| t.root),
            self.min_features,
        )
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
        let (mut leaves, mut leaf_depths) = (0u64, 0u64);
        for (i, node) in spec.iter().enumerate() {
            let me = to_global(i)?;
            match node {
                SpecNode::Leaf(weights) => {
                    min_leaf = min_leaf.min(depth[i]);
                    leaves += 1;
                    leaf_depths += u64::from(depth[i]);
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
        let root = to_global(0)?;
        // Complete when the lock-step walk would take about as many steps
        // anyway: the leaves' mean depth is at least 3/4 of the deepest
        // (random forests, XGBoost and scikit-learn's depth-limited
        // trees), and the doubling per level stays small.
        let balanced = leaf_depths * 4 >= leaves * 3 * u64::from(max_depth);
        let complete =
            (self.kernel != Kernel::Generic && max_depth <= COMPLETE_MAX_DEPTH && balanced)
                .then(|| self.add_complete(root, max_depth));
        self.trees.push(Tree {
            root,
            depth: max_depth,
            min_leaf: min_leaf.min(max_depth),
            complete,
        });
        Ok(())
    }

    /// Lays out the linked tree at `root` (already added) completely.
    fn add_complete(&mut self, root: u32, depth: u32) -> (u32, u32) {
        let at = (self.tests.len() as u32, self.slots.len() as u32);
        let inner = (1usize << depth) - 1;
        // Tests under a leaf read feature 0 either way: both halves below
        // hold the leaf.
        let (tests, slots) = (self.tests.len(), self.slots.len());
        self.tests.resize(
            tests + inner,
            Test {
                threshold: 0.0,
                feature: 0,
            },
        );
        self.slots.resize(slots + inner + 1, 0);
        let mut stack = vec![(root, 0usize, 0u32)];
        while let Some((i, pos, level)) = stack.pop() {
            let node = self.nodes[i as usize];
            if node.children == [i, i] {
                // The slots under position `pos` of level `level`.
                let below = depth - level;
                let first = ((pos + 1) << below) - (1 << depth);
                self.slots[slots + first..slots + first + (1 << below)]
                    .fill(node.threshold.to_bits());
            } else {
                self.tests[tests + pos] = Test {
                    threshold: node.threshold,
                    feature: node.feature,
                };
                stack.push((node.children[0], 2 * pos + 1, level + 1));
                stack.push((node.children[1], 2 * pos + 2, level + 1));
            }
        }
        at
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
            + self.tests.len() * size_of::<Test>()
            + self.slots.len() * 4
            + self.leaf_offsets.len() * 4
            + self.leaf_entries.len() * 8
            + self.leaf_single.as_ref().map_or(0, |v| v.len() * 4)
            + self.trees.len() * size_of::<Tree>()
            + self.bitvectors.as_ref().map_or(0, Bitvectors::heap_bytes)
            + self
                .key_tests
                .as_ref()
                .map_or(0, |k| k.len() * size_of::<KeyTest>())
            + self
                .key_nodes
                .as_ref()
                .map_or(0, |k| k.len() * size_of::<KeyNode>())
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
            (Kernel::Leq, false) => {
                self.eval_with::<LeqStep<false>, false>(x, rows, width, &mut out)
            }
            (Kernel::Leq, true) => self.eval_with::<LeqStep<true>, false>(x, rows, width, &mut out),
            (Kernel::Lt, false) => self.eval_with::<LtStep<false>, true>(x, rows, width, &mut out),
            (Kernel::Lt, true) => self.eval_with::<LtStep<true>, true>(x, rows, width, &mut out),
            (Kernel::Generic, _) => self.eval_with::<GenericStep, false>(x, rows, width, &mut out),
        }
        if self.aggregate == Aggregate::Average {
            let n = self.trees.len() as f64;
            out.scores.iter_mut().for_each(|s| *s /= n);
        }
        Ok(out)
    }

    /// Tiles of [`TILE`] rows; in each, every tree walks groups of
    /// [`LANES`] rows in lock-step. Rows left over (a batch smaller than the
    /// lanes, or a tile's tail) are scored one at a time: complete trees
    /// walk [`LANES`] at a time on the row's keys ([`Self::walk_row`]), or
    /// the row scans the QuickScorer layout when there is one and some tree
    /// is linked; a single row's walk through one tree at a time waits on
    /// every load in turn, neither of these does. `STRICT` is the `x < t`
    /// kernel, for the scan.
    fn eval_with<S: Step, const STRICT: bool>(
        &self,
        x: &[f32],
        rows: usize,
        width: usize,
        out: &mut RawScores,
    ) {
        let mut leaves = [0u32; LANES];
        let mut row_leaves = Vec::new();
        let mut words = Vec::new();
        let key_tests = self.key_tests.as_deref().filter(|_| S::COMPLETE);
        let mut keys: Vec<u32> = Vec::new();
        // `S::COMPLETE` is the `<=`/`<` kernels, the ones `key_nodes` has.
        let key_nodes = self.key_nodes.as_deref().filter(|_| S::COMPLETE);
        let mut pairs: Vec<u32> = Vec::new();
        let mut row_keys: Vec<u32> = Vec::new();
        // A row alone walks runs of complete trees in lock-step on its keys
        // when every tree is complete (measured faster than the QuickScorer
        // scan on the 200-tree ensemble) or there are no bitvectors; the
        // scan stays faster for linked trees (LightGBM).
        let row_walk = key_tests.filter(|_| {
            self.bitvectors.is_none() || self.trees.iter().all(|t| t.complete.is_some())
        });
        for tile_start in (0..rows).step_by(TILE) {
            let tile_end = (tile_start + TILE).min(rows);
            let tail = tile_start + (tile_end - tile_start) / LANES * LANES;
            if key_tests.is_some() && !self.nan_bits {
                keys.clear();
                keys.extend(
                    x[tile_start * width..tail * width]
                        .iter()
                        .map(|&v| order_key(v)),
                );
            }
            if key_nodes.is_some() || (key_tests.is_some() && self.nan_bits) {
                pairs.clear();
                pairs.extend(
                    x[tile_start * width..tail * width]
                        .iter()
                        .flat_map(|&v| pair_keys(v)),
                );
            }
            for tree in &self.trees {
                match (tree.complete, key_tests) {
                    (Some(at), Some(kt)) => {
                        // One key per value, or a pair with NaN bits.
                        let (tile_keys, stride) = if self.nan_bits {
                            (&pairs, 2 * width)
                        } else {
                            (&keys, width)
                        };
                        for r in (tile_start..tail).step_by(LANES) {
                            let first = (r - tile_start) * stride;
                            Self::walk_keys::<STRICT, LANES>(
                                kt,
                                &self.slots,
                                at,
                                tree.depth,
                                tile_keys,
                                first,
                                stride,
                                &mut leaves,
                            );
                            for (k, &leaf) in leaves.iter().enumerate() {
                                self.accumulate(leaf, r + k, out);
                            }
                        }
                    }
                    (None, _) if let Some(kn) = key_nodes => {
                        for r in (tile_start..tail).step_by(LANES) {
                            let first = 2 * (r - tile_start) * width;
                            self.walk_linked_keys::<STRICT, LANES>(
                                kn,
                                tree,
                                &pairs,
                                first,
                                width,
                                &mut leaves,
                            );
                            for (k, &leaf) in leaves.iter().enumerate() {
                                self.accumulate(leaf, r + k, out);
                            }
                        }
                    }
                    _ => {
                        for r in (tile_start..tail).step_by(LANES) {
                            self.walk_any::<S, LANES>(tree, x, r * width, width, &mut leaves);
                            for (k, &leaf) in leaves.iter().enumerate() {
                                self.accumulate(leaf, r + k, out);
                            }
                        }
                    }
                }
            }
            for r in tail..tile_end {
                let row = &x[r * width..(r + 1) * width];
                if let Some(kt) = row_walk {
                    row_keys.clear();
                    if self.nan_bits {
                        row_keys.extend(row.iter().flat_map(|&v| pair_keys(v)));
                    } else {
                        row_keys.extend(row.iter().map(|&v| order_key(v)));
                    }
                    self.walk_row::<S, STRICT>(kt, x, r, width, &row_keys, out);
                    continue;
                }
                match &self.bitvectors {
                    // Each row's leaves are accumulated in tree order, as
                    // the walk does, so both give the same sums to the bit.
                    Some(bv) if !row.iter().any(|v| v.is_nan()) => {
                        row_leaves.resize(self.trees.len(), 0);
                        words.resize(self.trees.len(), 0);
                        bv.leaves::<STRICT>(row, &mut words, &mut row_leaves);
                        for &leaf in &row_leaves {
                            self.accumulate(leaf, r, out);
                        }
                    }
                    _ => {
                        for tree in &self.trees {
                            let mut one = [0u32; 1];
                            self.walk_any::<S, 1>(tree, x, r * width, width, &mut one);
                            self.accumulate(one[0], r, out);
                        }
                    }
                }
            }
        }
    }

    /// Scores row `r` alone: runs of [`LANES`] consecutive complete trees
    /// of one depth walk in lock-step on the row's keys (`keys`: one per
    /// value, or a pair with NaN bits), so the trees' walks overlap instead
    /// of each step waiting on the last; other trees walk alone. Leaves are
    /// accumulated in tree order, as the tiles do.
    fn walk_row<S: Step, const STRICT: bool>(
        &self,
        key_tests: &[KeyTest],
        x: &[f32],
        r: usize,
        width: usize,
        keys: &[u32],
        out: &mut RawScores,
    ) {
        let trees = &self.trees;
        let mut t = 0;
        while t < trees.len() {
            let tree = &trees[t];
            let Some(at) = tree.complete else {
                let mut one = [0u32; 1];
                self.walk_any::<S, 1>(tree, x, r * width, width, &mut one);
                self.accumulate(one[0], r, out);
                t += 1;
                continue;
            };
            if let Some(run) = trees.get(t..t + LANES)
                && run
                    .iter()
                    .all(|u| u.complete.is_some() && u.depth == tree.depth)
            {
                let mut ats = [(0, 0); LANES];
                for (a, u) in ats.iter_mut().zip(run) {
                    *a = u.complete.unwrap_or_default();
                }
                let mut leaves = [0u32; LANES];
                Self::walk_trees_keys::<STRICT, LANES>(
                    key_tests,
                    &self.slots,
                    &ats,
                    tree.depth,
                    keys,
                    &mut leaves,
                );
                for leaf in leaves {
                    self.accumulate(leaf, r, out);
                }
                t += LANES;
            } else {
                let mut one = [0u32; 1];
                Self::walk_trees_keys::<STRICT, 1>(
                    key_tests,
                    &self.slots,
                    &[at],
                    tree.depth,
                    keys,
                    &mut one,
                );
                self.accumulate(one[0], r, out);
                t += 1;
            }
        }
    }

    /// One row's keys (`keys`, as in [`Self::walk_row`]) through `L`
    /// complete trees of `depth` (their layouts at `ats`) in lock-step.
    #[inline(always)]
    fn walk_trees_keys<const STRICT: bool, const L: usize>(
        key_tests: &[KeyTest],
        slots: &[u32],
        ats: &[(u32, u32); L],
        depth: u32,
        keys: &[u32],
        leaves: &mut [u32; L],
    ) {
        let inner = (1usize << depth) - 1;
        let tests: [&[KeyTest]; L] =
            std::array::from_fn(|k| &key_tests[ats[k].0 as usize..ats[k].0 as usize + inner]);
        let mut idx = [0usize; L];
        for _ in 0..depth {
            for (i, tests) in idx.iter_mut().zip(&tests) {
                debug_assert!(*i < tests.len());
                #[allow(unsafe_code)]
                // SAFETY: as in `walk_complete`: before step `s` every
                // position is below `2^(s+1) - 1 <= tests.len()`.
                let test = unsafe { tests.get_unchecked(*i) };
                debug_assert!((test.feature as usize) < keys.len());
                #[allow(unsafe_code)]
                // SAFETY: `keys` holds one row's keys, `width` of them (or
                // `2 * width` pairs with NaN bits), and `test.feature` is
                // below `min_features <= width` (twice that for pairs), as
                // in `walk_keys` with the row at offset 0.
                let key = unsafe { *keys.get_unchecked(test.feature as usize) };
                let failed = if STRICT {
                    key >= test.key
                } else {
                    key > test.key
                };
                *i = 2 * *i + 1 + usize::from(failed);
            }
        }
        for ((leaf, &i), at) in leaves.iter_mut().zip(&idx).zip(ats) {
            *leaf = slots[at.1 as usize + i - inner];
        }
    }

    /// Walks `L` rows through `tree` in whichever layout it has.
    #[inline(always)]
    fn walk_any<S: Step, const L: usize>(
        &self,
        tree: &Tree,
        x: &[f32],
        first_row: usize,
        width: usize,
        leaves: &mut [u32; L],
    ) {
        match tree.complete {
            Some(at) if S::COMPLETE => {
                self.walk_complete::<S, L>(at, tree.depth, x, first_row, width, leaves)
            }
            _ => self.walk::<S, L>(tree, x, first_row, width, leaves),
        }
    }

    /// `depth` steps through the complete layout at `at`.
    #[inline(always)]
    fn walk_complete<S: Step, const L: usize>(
        &self,
        (tests, slots): (u32, u32),
        depth: u32,
        x: &[f32],
        first_row: usize,
        width: usize,
        leaves: &mut [u32; L],
    ) {
        let inner = (1usize << depth) - 1;
        let tests = &self.tests[tests as usize..tests as usize + inner];
        let mut idx = [0usize; L];
        for _ in 0..depth {
            for (k, i) in idx.iter_mut().enumerate() {
                debug_assert!(*i < tests.len());
                #[allow(unsafe_code)]
                // SAFETY: before step `s` (from 0) every position lies on
                // level `s`, below `2^(s+1) - 1`; steps run for `s < depth`,
                // so below `2^depth - 1 = tests.len()`.
                let test = unsafe { tests.get_unchecked(*i) };
                let v = value(x, first_row + k * width, test.feature);
                *i = 2 * *i + 1 + usize::from(!S::holds(v, test.threshold, test.feature));
            }
        }
        let slots = &self.slots[slots as usize..slots as usize + inner + 1];
        for (leaf, &i) in leaves.iter_mut().zip(&idx) {
            *leaf = slots[i - inner];
        }
    }

    /// [`Self::walk_complete`] on a tile's [`order_key`]s (`keys`, rows of
    /// `width` from `first_row`): a test fails when the key is above the
    /// threshold's (`<=`), or not below it (`<`, `STRICT`).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn walk_keys<const STRICT: bool, const L: usize>(
        key_tests: &[KeyTest],
        slots: &[u32],
        (tests, slots_at): (u32, u32),
        depth: u32,
        keys: &[u32],
        first_row: usize,
        width: usize,
        leaves: &mut [u32; L],
    ) {
        let inner = (1usize << depth) - 1;
        let tests = &key_tests[tests as usize..tests as usize + inner];
        let mut idx = [0usize; L];
        for _ in 0..depth {
            for (k, i) in idx.iter_mut().enumerate() {
                debug_assert!(*i < tests.len());
                #[allow(unsafe_code)]
                // SAFETY: as in `walk_complete`: before step `s` every
                // position is below `2^(s+1) - 1 <= tests.len()`.
                let test = unsafe { tests.get_unchecked(*i) };
                let at = first_row + k * width + test.feature as usize;
                debug_assert!(at < keys.len());
                #[allow(unsafe_code)]
                // SAFETY: `keys` holds the keys of every value of the
                // tile's rows that walk in groups of `L`, `width` per row
                // (one per value, or a pair with NaN bits, `width` then
                // being twice the row's), and `first_row` is the tile
                // offset of such a group, so rows `first_row / width + k`
                // (k < L) lie inside it; `test.feature` is below
                // `min_features <= ` the row's values (twice that for
                // pairs), as for `value`.
                let key = unsafe { *keys.get_unchecked(at) };
                let failed = if STRICT {
                    key >= test.key
                } else {
                    key > test.key
                };
                *i = 2 * *i + 1 + usize::from(failed);
            }
        }
        let slots = &slots[slots_at as usize..slots_at as usize + inner + 1];
        for (leaf, &i) in leaves.iter_mut().zip(&idx) {
            *leaf = slots[i - inner];
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
        // Comparing the lanes' positions needs no load; the moves are
        // folded in registers as the lanes step (comparing with a copy of
        // the array went through the stack and stalled on store forwarding).
        for _ in tree.min_leaf..tree.depth {
            if self.step_lanes::<S, L>(&mut idx, x, first_row, width) == 0 {
                break;
            }
        }
        for (leaf, &i) in leaves.iter_mut().zip(&idx) {
            *leaf = self.node(i).threshold.to_bits();
        }
    }

    /// [`Self::walk`] on a tile's [`pair_keys`] (`pairs`, rows of
    /// `2 * width` keys from `first`): a test fails when the key is above
    /// the threshold's (`<=`), or not below it (`<`, `STRICT`).
    #[inline(always)]
    fn walk_linked_keys<const STRICT: bool, const L: usize>(
        &self,
        key_nodes: &[KeyNode],
        tree: &Tree,
        pairs: &[u32],
        first: usize,
        width: usize,
        leaves: &mut [u32; L],
    ) {
        let mut idx = [tree.root; L];
        let step = |idx: &mut [u32; L]| {
            let mut moved = 0;
            for (k, i) in idx.iter_mut().enumerate() {
                debug_assert!((*i as usize) < key_nodes.len());
                #[allow(unsafe_code)]
                // SAFETY: `key_nodes` is parallel to `nodes` (one entry per
                // node, built after every tree was added), and a walk only
                // reaches node indices below `nodes.len()` (see `node`).
                let node = unsafe { key_nodes.get_unchecked(*i as usize) };
                let at = first + k * 2 * width + node.at as usize;
                debug_assert!(at < pairs.len());
                #[allow(unsafe_code)]
                // SAFETY: `pairs` holds two keys for every value of the
                // tile's rows that walk in groups of `L`, and `first` is
                // the offset of such a group's first row, so rows
                // `k < L` after it lie inside; `node.at` is below
                // `2 * min_features <= 2 * width` (`compile` checked each
                // branch's feature; a leaf's is 0, and a walk only steps
                // through a tree with a branch, so `min_features >= 1`).
                let key = unsafe { *pairs.get_unchecked(at) };
                let failed = if STRICT {
                    key >= node.key
                } else {
                    key > node.key
                };
                let next = node.children[usize::from(failed)];
                moved |= next ^ *i;
                *i = next;
            }
            moved
        };
        for _ in 0..tree.min_leaf {
            step(&mut idx);
        }
        for _ in tree.min_leaf..tree.depth {
            if step(&mut idx) == 0 {
                break;
            }
        }
        for (leaf, &i) in leaves.iter_mut().zip(&idx) {
            *leaf = self.node(i).threshold.to_bits();
        }
    }

    /// The node at `i`, without a bounds check: the check and its branch
    /// cost the lock-step walk about a quarter of its speed (measured on
    /// machine C), and `compile` has proved the bound once for all walks.
    #[inline(always)]
    fn node(&self, i: u32) -> &Node {
        debug_assert!((i as usize) < self.nodes.len());
        #[allow(unsafe_code)]
        // SAFETY: walks start at a tree's root (an index `add_tree` pushed)
        // and move only to `children` of a node, and `compile` refuses an
        // ensemble with a child index at or past `nodes.len()`; `nodes` is
        // never changed after `compile`.
        unsafe {
            self.nodes.get_unchecked(i as usize)
        }
    }

    #[inline(always)]
    fn step_lanes<S: Step, const L: usize>(
        &self,
        idx: &mut [u32; L],
        x: &[f32],
        first_row: usize,
        width: usize,
    ) -> u32 {
        let mut moved = 0;
        for (k, i) in idx.iter_mut().enumerate() {
            let node = self.node(*i);
            let next = S::step(self, *i, node, x, first_row + k * width);
            moved |= next ^ *i;
            *i = next;
        }
        moved
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

/// The value `node` tests, from the row starting at `row`, without a
/// bounds check (see [`CompiledEnsemble::node`] for why).
#[inline(always)]
fn value(x: &[f32], row: usize, feature: u32) -> f32 {
    let at = row + (feature & FEATURE_MASK) as usize;
    debug_assert!(at < x.len());
    #[allow(unsafe_code)]
    // SAFETY: the only caller is a walk inside `CompiledEnsemble::eval`,
    // which has checked `x.len() == rows * width` and
    // `width >= min_features`, and walks rows below `rows`, so `row` is
    // `r * width` with `r < rows`. `compile` has checked that every branch
    // reads a feature below `min_features`; a leaf (and a complete tree's
    // test under a leaf) reads feature 0, and a walk only steps through a
    // tree that has a branch, so then `min_features >= 1` and feature 0
    // lies inside the row too. `add_complete` copies features from branches.
    unsafe {
        *x.get_unchecked(at)
    }
}

/// A key whose unsigned order is the order of the values: `a <= b` exactly
/// when `order_key(a) <= order_key(b)` for numbers (infinities included;
/// `-0.0` and `0.0` get the same key, as they compare equal), and NaN
/// above every number, so a NaN input fails every `<=` and `<` test as the
/// float comparison does.
#[inline(always)]
fn order_key(v: f32) -> u32 {
    // Adding +0.0 turns -0.0 into 0.0 and changes nothing else.
    let b = (v + 0.0).to_bits();
    let k = if b >> 31 != 0 { !b } else { b | 1 << 31 };
    if v.is_nan() { u32::MAX } else { k }
}

/// A value's two keys for the linked key walk: [`order_key`] (NaN above
/// every number), then the same with NaN at 0, below every number (the
/// smallest number's key, `-inf`'s, is `0x007f_ffff`).
#[inline(always)]
fn pair_keys(v: f32) -> [u32; 2] {
    let k = order_key(v);
    [k, if v.is_nan() { 0 } else { k }]
}

/// One step of a walk: the next node index.
trait Step {
    /// Whether the kernel walks complete trees ([`Step::holds`] works).
    const COMPLETE: bool;
    fn step(e: &CompiledEnsemble, idx: u32, node: &Node, x: &[f32], row: usize) -> u32;
    /// Whether the normalised test with `threshold` and `feature` (with its
    /// NaN bit) holds for `v`.
    fn holds(v: f32, threshold: f32, feature: u32) -> bool;
}

struct LeqStep<const NAN: bool>;
struct LtStep<const NAN: bool>;
struct GenericStep;

impl<const NAN: bool> Step for LeqStep<NAN> {
    const COMPLETE: bool = true;
    #[inline(always)]
    fn step(_: &CompiledEnsemble, _: u32, node: &Node, x: &[f32], row: usize) -> u32 {
        let v = value(x, row, node.feature);
        node.children[usize::from(!Self::holds(v, node.threshold, node.feature))]
    }
    #[inline(always)]
    fn holds(v: f32, threshold: f32, feature: u32) -> bool {
        let mut first = v <= threshold;
        if NAN {
            first |= v.is_nan() & (feature & NAN_TO_FIRST != 0);
        }
        first
    }
}

impl<const NAN: bool> Step for LtStep<NAN> {
    const COMPLETE: bool = true;
    #[inline(always)]
    fn step(_: &CompiledEnsemble, _: u32, node: &Node, x: &[f32], row: usize) -> u32 {
        let v = value(x, row, node.feature);
        node.children[usize::from(!Self::holds(v, node.threshold, node.feature))]
    }
    #[inline(always)]
    fn holds(v: f32, threshold: f32, feature: u32) -> bool {
        let mut first = v < threshold;
        if NAN {
            first |= v.is_nan() & (feature & NAN_TO_FIRST != 0);
        }
        first
    }
}

impl Step for GenericStep {
    /// Its tests need the node's mode, which a complete layout drops.
    const COMPLETE: bool = false;
    fn holds(_: f32, _: f32, _: u32) -> bool {
        unreachable!("the generic kernel never builds a complete layout")
    }
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

    /// A small deterministic generator (xorshift) for the random trees.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const GRID: [f32; 8] = [-2.0, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 2.0];

    /// Random unbalanced trees over `features` features, every branch
    /// with one of `modes`, thresholds on [`GRID`] so inputs hit them.
    fn random_spec(rng: &mut Rng, trees: usize, depth: usize, modes: &[Mode]) -> EnsembleSpec {
        fn grow(
            rng: &mut Rng,
            nodes: &mut Vec<SpecNode>,
            d: usize,
            depth: usize,
            modes: &[Mode],
        ) -> usize {
            let me = nodes.len();
            nodes.push(SpecNode::Leaf(vec![(0, rng.below(1000) as f32 / 8.0)]));
            if d == depth || (d > 0 && rng.below(4) == 0) {
                return me;
            }
            let (feature, mode) = (rng.below(5) as u32, modes[rng.below(modes.len())]);
            let (threshold, mtt) = (GRID[rng.below(GRID.len())], rng.below(2) == 0);
            let if_true = grow(rng, nodes, d + 1, depth, modes);
            let if_false = grow(rng, nodes, d + 1, depth, modes);
            nodes[me] = SpecNode::Branch {
                feature,
                mode,
                threshold,
                members: vec![],
                missing_tracks_true: mtt,
                if_true,
                if_false,
            };
            me
        }
        EnsembleSpec {
            trees: (0..trees)
                .map(|_| {
                    let mut nodes = Vec::new();
                    grow(rng, &mut nodes, 0, depth, modes);
                    SpecTree { nodes }
                })
                .collect(),
            n_targets: 1,
            aggregate: Aggregate::Sum,
        }
    }

    /// The definition: walk the spec node by node.
    fn reference(spec: &EnsembleSpec, row: &[f32]) -> f64 {
        let mut sum = 0.0;
        for tree in &spec.trees {
            let mut i = 0;
            while let SpecNode::Branch {
                feature,
                mode,
                threshold,
                missing_tracks_true,
                if_true,
                if_false,
                ..
            } = &tree.nodes[i]
            {
                let v = row[*feature as usize];
                let goes_true = if v.is_nan() {
                    mode.nan_goes_true(*missing_tracks_true)
                } else {
                    mode.test(v, *threshold, &[])
                };
                i = if goes_true { *if_true } else { *if_false };
            }
            if let SpecNode::Leaf(w) = &tree.nodes[i] {
                sum += f64::from(w[0].1);
            }
        }
        sum
    }

    #[test]
    fn bitvectors_reach_the_walks_leaves_in_both_kernels() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let values = [-3.0, f32::NEG_INFINITY, f32::INFINITY, f32::NAN, 0.25];
        for modes in [&[Mode::Leq, Mode::Gt][..], &[Mode::Lt, Mode::Gte][..]] {
            for depth in [1, 3, 6] {
                let spec = random_spec(&mut rng, 12, depth, modes);
                let walk = {
                    let mut e = CompiledEnsemble::compile(&spec).unwrap();
                    e.bitvectors = None;
                    e
                };
                // The linked trees walk on integer keys; the same trees
                // walked on floats must agree with both.
                assert!(
                    walk.key_nodes.is_some() || walk.trees.iter().all(|t| t.complete.is_some()),
                    "{modes:?} depth {depth}"
                );
                let floats = {
                    let mut e = walk.clone();
                    e.key_nodes = None;
                    e
                };
                let mut quick = walk.clone();
                quick.bitvectors = walk.build_bitvectors();
                assert!(quick.bitvectors.is_some(), "depth {depth} fits 64 leaves");
                assert_ne!(quick.kernel, Kernel::Generic);
                let rows = 300;
                let x: Vec<f32> = (0..rows * 5)
                    .map(|_| match rng.below(20) {
                        0 => values[rng.below(values.len())],
                        _ => GRID[rng.below(GRID.len())],
                    })
                    .collect();
                let (walked, mixed, floated) = (
                    walk.eval(&x, rows, 5).unwrap(),
                    quick.eval(&x, rows, 5).unwrap(),
                    floats.eval(&x, rows, 5).unwrap(),
                );
                for r in 0..rows {
                    let row = &x[r * 5..r * 5 + 5];
                    let want = reference(&spec, row);
                    // One row alone is scored with the bitvectors (or walks
                    // when it holds a NaN).
                    let alone = quick.eval(row, 1, 5).unwrap().scores[0];
                    assert_eq!(
                        alone, want,
                        "bitvectors, {modes:?} depth {depth} row {row:?}"
                    );
                    assert_eq!(
                        walked.scores[r], want,
                        "walk, {modes:?} depth {depth} row {row:?}"
                    );
                    assert_eq!(
                        mixed.scores[r], want,
                        "mixed, {modes:?} depth {depth} row {r}"
                    );
                    assert_eq!(
                        floated.scores[r], want,
                        "float walk, {modes:?} depth {depth} row {row:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn trees_with_more_than_64_leaves_keep_the_walk() {
        let spec = |depth| EnsembleSpec {
            trees: vec![complete_tree(depth)],
            n_targets: 1,
            aggregate: Aggregate::Sum,
        };
        // 128 leaves, then 64.
        let e = CompiledEnsemble::compile(&spec(7)).unwrap();
        assert!(e.build_bitvectors().is_none());
        let e = CompiledEnsemble::compile(&spec(6)).unwrap();
        assert!(e.build_bitvectors().is_some());
        // Compiling keeps them only where a scan should beat a one-row
        // walk: 63 branches over 6 levels are too many, 3 over 2 are not.
        assert!(e.bitvectors.is_none());
        assert!(
            CompiledEnsemble::compile(&spec(2))
                .unwrap()
                .bitvectors
                .is_some()
        );
    }

    /// A complete tree of `depth` levels of branches on feature 0.
    fn complete_tree(depth: usize) -> SpecTree {
        let mut nodes = Vec::new();
        fn grow(nodes: &mut Vec<SpecNode>, d: usize, depth: usize) -> usize {
            let me = nodes.len();
            nodes.push(SpecNode::Leaf(vec![(0, me as f32)]));
            if d < depth {
                let if_true = grow(nodes, d + 1, depth);
                let if_false = grow(nodes, d + 1, depth);
                nodes[me] = SpecNode::Branch {
                    feature: 0,
                    mode: Mode::Leq,
                    threshold: d as f32,
                    members: vec![],
                    missing_tracks_true: false,
                    if_true,
                    if_false,
                };
            }
            me
        }
        grow(&mut nodes, 0, depth);
        SpecTree { nodes }
    }

    #[test]
    fn narrow_rows_are_refused() {
        let e = CompiledEnsemble::compile(&stump(Mode::Leq, 0.0, false)).unwrap();
        assert!(e.eval(&[0.0], 1, 1).unwrap_err().contains("feature 1"));
    }

    #[test]
    fn complete_layouts_reach_the_definitions_leaves() {
        // Unbalanced random trees laid out completely whatever the balance
        // rule says (their shallow leaves are pushed down through tests),
        // walked in groups of 8 and alone, against the spec node by node,
        // with NaN and infinities, in both kernels and with the NaN bits.
        // Every walk compares integer keys (one per value, or a pair with
        // NaN bits) and, with the keys dropped, floats.
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let values = [
            -3.0,
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            -f32::NAN,
            0.25,
            1e-40,
            -1e-40,
        ];
        for (modes, nan_bits) in [
            (&[Mode::Leq, Mode::Gt][..], true),
            (&[Mode::Lt, Mode::Gte][..], true),
            (&[Mode::Leq, Mode::Gt][..], false),
            (&[Mode::Lt, Mode::Gte][..], false),
        ] {
            // Uniform: every tree laid out at the deepest tree's depth, so
            // that a row alone walks runs of trees in lock-step.
            for (depth, uniform) in [1, 2, 5, 9]
                .into_iter()
                .flat_map(|d| [(d, false), (d, true)])
            {
                let mut spec = random_spec(&mut rng, 10, depth, modes);
                if !nan_bits {
                    without_nan_bits(&mut spec);
                }
                let mut e = CompiledEnsemble::compile(&spec).unwrap();
                e.bitvectors = None;
                let deepest = e.trees.iter().map(|t| t.depth).max().unwrap();
                for t in 0..e.trees.len() {
                    let root = e.trees[t].root;
                    if uniform {
                        e.trees[t].depth = deepest;
                    }
                    let depth = e.trees[t].depth;
                    e.trees[t].complete = Some(e.add_complete(root, depth));
                }
                e.key_tests = e.build_key_tests();
                assert!(e.key_tests.is_some(), "{modes:?} depth {depth}");
                let mut linked = e.clone();
                linked.trees.iter_mut().for_each(|t| t.complete = None);
                linked.key_nodes = linked.build_key_nodes();
                assert!(linked.key_nodes.is_some(), "{modes:?} depth {depth}");
                // The same walks on floats.
                let mut floats = e.clone();
                floats.key_tests = None;
                let mut linked_floats = linked.clone();
                linked_floats.key_nodes = None;
                let rows = 203;
                let x: Vec<f32> = (0..rows * 5)
                    .map(|_| match rng.below(12) {
                        0 => values[rng.below(values.len())],
                        _ => GRID[rng.below(GRID.len())],
                    })
                    .collect();
                let (batch, walked) = (
                    e.eval(&x, rows, 5).unwrap(),
                    linked.eval(&x, rows, 5).unwrap(),
                );
                let (batch_floats, walked_floats) = (
                    floats.eval(&x, rows, 5).unwrap(),
                    linked_floats.eval(&x, rows, 5).unwrap(),
                );
                for r in 0..rows {
                    let row = &x[r * 5..r * 5 + 5];
                    let want = reference(&spec, row);
                    assert_eq!(batch.scores[r], want, "{modes:?} depth {depth} row {row:?}");
                    assert_eq!(walked.scores[r], want, "linked, depth {depth} row {row:?}");
                    assert_eq!(
                        batch_floats.scores[r], want,
                        "floats, depth {depth} row {row:?}"
                    );
                    assert_eq!(
                        walked_floats.scores[r], want,
                        "linked floats, depth {depth} row {row:?}"
                    );
                    let alone = e.eval(row, 1, 5).unwrap().scores[0];
                    assert_eq!(alone, want, "alone, depth {depth} row {row:?}");
                }
            }
        }
    }

    /// Sends every NaN where the normalised test's failure goes, so that
    /// the ensemble compiles with no NaN bit.
    fn without_nan_bits(spec: &mut EnsembleSpec) {
        for node in spec.trees.iter_mut().flat_map(|t| &mut t.nodes) {
            if let SpecNode::Branch {
                mode,
                missing_tracks_true,
                ..
            } = node
            {
                *missing_tracks_true = matches!(mode, Mode::Gt | Mode::Gte);
            }
        }
    }

    #[test]
    fn order_keys_order_like_the_comparisons() {
        let values = [
            f32::NEG_INFINITY,
            -f32::MAX,
            -3.5,
            -1.0,
            -f32::MIN_POSITIVE,
            -1e-40,
            -0.0,
            0.0,
            1e-40,
            f32::MIN_POSITIVE,
            0.25,
            1.0,
            f32::MAX,
            f32::INFINITY,
        ];
        for &a in values.iter().chain(&[f32::NAN, -f32::NAN]) {
            for &b in &values {
                let (ka, kb) = (order_key(a), order_key(b));
                assert_eq!(a <= b, ka <= kb, "{a} <= {b}");
                assert_eq!(a < b, ka < kb, "{a} < {b}");
            }
        }
        assert_eq!(order_key(-0.0), order_key(0.0));
        assert_eq!(order_key(-f32::NAN), u32::MAX);
        // The linked walk's pairs: the first key is `order_key`; the second
        // puts NaN (either sign) below every number, so that a NaN holds
        // every `<=` and `<` test that reads it.
        for &a in values.iter().chain(&[f32::NAN, -f32::NAN]) {
            let [hi, lo] = pair_keys(a);
            assert_eq!(hi, order_key(a));
            for &b in &values {
                let kb = order_key(b);
                if a.is_nan() {
                    assert!(lo <= kb && lo < kb, "NaN below {b}");
                } else {
                    assert_eq!(lo, hi, "{a}");
                }
            }
        }
    }

    #[test]
    fn keys_only_where_every_test_compares_as_integers() {
        let keys =
            |spec: &EnsembleSpec| CompiledEnsemble::compile(spec).unwrap().key_tests.is_some();
        let tree = |mode, threshold, mtt| EnsembleSpec {
            trees: vec![SpecTree {
                nodes: vec![
                    SpecNode::Branch {
                        feature: 0,
                        mode,
                        threshold,
                        members: vec![],
                        missing_tracks_true: mtt,
                        if_true: 1,
                        if_false: 2,
                    },
                    SpecNode::Leaf(vec![(0, 1.0)]),
                    SpecNode::Leaf(vec![(0, 2.0)]),
                ],
            }],
            n_targets: 1,
            aggregate: Aggregate::Sum,
        };
        assert!(keys(&tree(Mode::Leq, 0.5, false)));
        assert!(keys(&tree(Mode::Gt, 0.5, true)));
        assert!(keys(&tree(Mode::Lt, 0.5, false)));
        // NaN taken by the test that holds: pairs of keys, the test reading
        // the second (NaN below every number).
        let paired = CompiledEnsemble::compile(&tree(Mode::Leq, 0.5, true)).unwrap();
        assert!(paired.nan_bits);
        assert_eq!(paired.key_tests.as_ref().unwrap()[0].feature, 1);
        // A NaN threshold, a mode the kernels do not normalise: compared as
        // floats.
        assert!(!keys(&tree(Mode::Leq, f32::NAN, false)));
        assert!(!keys(&tree(Mode::Eq, 0.5, false)));

        // The linked walk's keys take NaN bits either way, but not a NaN
        // threshold or an unnormalised mode; they exist only for an
        // ensemble with a tree that has no complete layout.
        // A comb of depth 4 (leaves at depths 1, 2, 3, 4, 4): too
        // unbalanced for the complete layout.
        let deep = |mode, threshold, mtt: bool| {
            let mut nodes = Vec::new();
            for d in 0..4u32 {
                let at = nodes.len();
                nodes.push(SpecNode::Branch {
                    feature: d % 2,
                    mode,
                    threshold,
                    members: vec![],
                    missing_tracks_true: mtt ^ (d % 2 == 1),
                    if_true: at + 1,
                    if_false: at + 2,
                });
                nodes.push(SpecNode::Leaf(vec![(0, d as f32)]));
            }
            nodes.push(SpecNode::Leaf(vec![(0, 9.0)]));
            let spec = EnsembleSpec {
                trees: vec![SpecTree { nodes }],
                n_targets: 1,
                aggregate: Aggregate::Sum,
            };
            CompiledEnsemble::compile(&spec).unwrap()
        };
        for mode in [Mode::Leq, Mode::Gt, Mode::Lt, Mode::Gte] {
            for mtt in [false, true] {
                let e = deep(mode, 0.5, mtt);
                assert!(e.trees[0].complete.is_none());
                assert!(e.key_nodes.is_some(), "{mode:?} mtt={mtt}");
            }
        }
        assert!(deep(Mode::Leq, f32::NAN, false).key_nodes.is_none());
        assert!(deep(Mode::Eq, 0.5, false).key_nodes.is_none());
        assert!(
            CompiledEnsemble::compile(&tree(Mode::Leq, 0.5, true))
                .unwrap()
                .key_nodes
                .is_none()
        );
    }

    #[test]
    fn balanced_shallow_trees_are_laid_out_completely() {
        let one = |tree: SpecTree| {
            let spec = EnsembleSpec {
                trees: vec![tree],
                n_targets: 1,
                aggregate: Aggregate::Sum,
            };
            CompiledEnsemble::compile(&spec).unwrap().trees[0].complete
        };
        assert!(one(complete_tree(6)).is_some());
        assert!(one(complete_tree(COMPLETE_MAX_DEPTH as usize)).is_some());
        // Too deep: 2^11 slots.
        assert!(one(complete_tree(COMPLETE_MAX_DEPTH as usize + 1)).is_none());
        // A comb: a leaf at every depth, their mean depth half the deepest.
        let mut comb = Vec::new();
        for k in 0..6 {
            comb.push(SpecNode::Branch {
                feature: 0,
                mode: Mode::Leq,
                threshold: k as f32,
                members: vec![],
                missing_tracks_true: false,
                if_true: 2 * k + 1,
                if_false: 2 * k + 2,
            });
            comb.push(SpecNode::Leaf(vec![(0, k as f32)]));
        }
        comb.push(SpecNode::Leaf(vec![(0, 6.0)]));
        assert!(one(SpecTree { nodes: comb }).is_none());
        // The generic kernel's tests need each node's mode.
        let mut eq = complete_tree(3);
        if let SpecNode::Branch { mode, .. } = &mut eq.nodes[0] {
            *mode = Mode::Eq;
        }
        assert!(one(eq).is_none());
    }

    #[test]
    fn rows_without_features_score_leaf_only_trees() {
        let spec = EnsembleSpec {
            trees: vec![
                SpecTree {
                    nodes: vec![SpecNode::Leaf(vec![(0, 1.5)])],
                },
                SpecTree {
                    nodes: vec![SpecNode::Leaf(vec![(0, -0.25)])],
                },
            ],
            n_targets: 1,
            aggregate: Aggregate::Sum,
        };
        let e = CompiledEnsemble::compile(&spec).unwrap();
        assert_eq!(e.min_features(), 0);
        // 9 rows: a group of 8 and a tail of 1.
        assert_eq!(e.eval(&[], 9, 0).unwrap().scores, vec![1.25; 9]);
        // A tree with no nodes has no root to start a walk at.
        let mut empty = spec.clone();
        empty.trees.push(SpecTree { nodes: vec![] });
        assert!(
            CompiledEnsemble::compile(&empty)
                .unwrap_err()
                .contains("no nodes")
        );
    }
}
