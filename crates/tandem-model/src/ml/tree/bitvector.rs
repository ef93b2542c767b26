//! The QuickScorer layout (Lucchese et al., "QuickScorer: a fast algorithm
//! to rank documents with additive ensembles of regression trees", SIGIR
//! 2015) for ensembles of small trees.
//!
//! Instead of walking each tree, a row keeps one 64-bit word per tree, one
//! bit per leaf (leaves numbered left to right), all set. Every branch whose
//! test fails for the row clears the leaves of its true (left) subtree; the
//! leaf the walk would reach is then the lowest bit still set. The branches
//! of all trees are grouped by feature and sorted by threshold, so a row
//! finds its failing branches of a feature by a linear scan that stops at
//! the first branch whose test holds: no pointer chasing, no unpredictable
//! branch per node, and the work is proportional to the failing branches
//! rather than to the depth of the deepest path.
//!
//! A test `x <= t` fails exactly when `t < x` (`x < t` when `t <= x`) for
//! every non-NaN `x`; rows holding a NaN take the tree walk instead, which
//! knows where each node sends a NaN.

/// The most leaves a tree may have for this layout (one bit each).
pub const MAX_LEAVES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
struct Branch {
    threshold: f32,
    /// Index of the branch's tree.
    tree: u32,
    /// The leaves left standing when the test fails: every bit but those of
    /// the true subtree's leaves.
    mask: u64,
}

/// Branches grouped by feature and sorted by threshold, and each tree's
/// leaves in left-to-right order.
#[derive(Debug, Clone, PartialEq)]
pub struct Bitvectors {
    /// Branches of feature `f` are `branches[offsets[f]..offsets[f + 1]]`.
    offsets: Vec<u32>,
    branches: Vec<Branch>,
    /// Leaves of tree `t`, left to right, are `leaves[leaf_base[t]..]`.
    leaf_base: Vec<u32>,
    /// The compiled layout's leaf index (into its weights).
    leaves: Vec<u32>,
}

impl Bitvectors {
    /// Builds the layout from trees given by their roots, or `None` when a
    /// tree has more than [`MAX_LEAVES`] leaves or a NaN threshold. `branch`
    /// gives a branch's feature, threshold and `[true, false]` children
    /// (`None` for a leaf), `leaf` a leaf's index into the weights.
    pub fn build(
        branch: impl Fn(u32) -> Option<(u32, f32, [u32; 2])>,
        leaf: impl Fn(u32) -> u32,
        roots: impl Iterator<Item = u32>,
        n_features: usize,
    ) -> Option<Bitvectors> {
        let mut by_feature: Vec<Vec<Branch>> = vec![Vec::new(); n_features];
        let mut leaf_base = Vec::new();
        let mut leaves = Vec::new();
        for (tree, root) in roots.enumerate() {
            let tree = u32::try_from(tree).ok()?;
            let base = leaves.len();
            leaf_base.push(u32::try_from(base).ok()?);
            // Depth-first, true child first: leaves come out left to right.
            // A branch is seen before its subtrees and finished after; its
            // true subtree's leaves are those numbered between the two.
            enum Visit {
                Enter(u32),
                TrueDone { node: u32, first_leaf: usize },
            }
            let mut stack = vec![Visit::Enter(root)];
            while let Some(visit) = stack.pop() {
                match visit {
                    Visit::Enter(i) => match branch(i) {
                        None => {
                            if leaves.len() - base == MAX_LEAVES {
                                return None;
                            }
                            leaves.push(leaf(i));
                        }
                        Some((_, _, [if_true, if_false])) => {
                            stack.push(Visit::Enter(if_false));
                            stack.push(Visit::TrueDone {
                                node: i,
                                first_leaf: leaves.len() - base,
                            });
                            stack.push(Visit::Enter(if_true));
                        }
                    },
                    Visit::TrueDone { node, first_leaf } => {
                        let (feature, threshold, _) = branch(node)?;
                        if threshold.is_nan() {
                            return None;
                        }
                        let end = leaves.len() - base;
                        let true_leaves = ones(end) & !ones(first_leaf);
                        by_feature.get_mut(feature as usize)?.push(Branch {
                            threshold,
                            tree,
                            mask: !true_leaves,
                        });
                    }
                }
            }
        }
        let mut offsets = vec![0u32];
        let mut branches = Vec::new();
        for mut list in by_feature {
            list.sort_by(|a, b| a.threshold.total_cmp(&b.threshold));
            branches.extend(list);
            offsets.push(u32::try_from(branches.len()).ok()?);
        }
        Some(Bitvectors {
            offsets,
            branches,
            leaf_base,
            leaves,
        })
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.offsets.len() * 4
            + self.branches.len() * size_of::<Branch>()
            + self.leaf_base.len() * 4
            + self.leaves.len() * 4
    }

    /// Number of branches over all trees.
    pub fn n_branches(&self) -> usize {
        self.branches.len()
    }

    /// The leaf reached in every tree by one row without NaN, into `out`
    /// (one per tree). `words` is scratch space of one word per tree.
    /// `STRICT` is the `x < t` kernel, otherwise `x <= t`.
    #[inline]
    pub fn leaves<const STRICT: bool>(&self, row: &[f32], words: &mut [u64], out: &mut [u32]) {
        words.fill(!0);
        for (f, span) in self.offsets.windows(2).enumerate() {
            let x = row[f];
            for b in &self.branches[span[0] as usize..span[1] as usize] {
                let fails = if STRICT {
                    b.threshold <= x
                } else {
                    b.threshold < x
                };
                if !fails {
                    break;
                }
                words[b.tree as usize] &= b.mask;
            }
        }
        for ((leaf, &word), &base) in out.iter_mut().zip(&*words).zip(&self.leaf_base) {
            *leaf = self.leaves[base as usize + word.trailing_zeros() as usize];
        }
    }
}

/// The word with the lowest `n` bits set (`n <= 64`).
fn ones(n: usize) -> u64 {
    if n >= 64 { !0 } else { (1u64 << n) - 1 }
}
