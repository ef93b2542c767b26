//! Register-tiled dense layers for x86-64 CPUs with AVX2 and FMA.
//!
//! A general GEMM (`matrixmultiply`, MLAS, tract's kernels) packs both
//! operands into its own panel layout on every call, then writes the plain
//! product, which a second pass reads back to add the bias and apply the
//! activation. A small MLP does little arithmetic per row (784
//! multiply-adds for the bare 8 -> 32 -> 16 -> 1 fixture), so that packing
//! and the extra pass are a large share of its time. Here every layer's
//! weights are packed **once, at load**, into panels of [`NR`] columns
//! (`[k, NR]`, row-major, zero past the layer's last column), and a block
//! of [`MR`] rows times one panel is accumulated in registers
//! (`MR x NR / 8` = 12 eight-lane accumulators) over the layer's inputs, read
//! straight from the previous layer's row-major output. The bias and the
//! activation are applied to the accumulators before the one store.
//!
//! A layer of one output (a regressor's last) is a dot product per row
//! instead: 8 inputs per multiply-add, then one horizontal sum.
//!
//! The kernels are AVX2/FMA intrinsics in functions compiled with
//! `#[target_feature(enable = "avx2,fma")]` (plain loops over arrays were
//! tried first: LLVM left them scalar, 14x slower). [`Tiles::run`] enters
//! them only after checking at run time that the CPU has both features
//! ([`available`]); elsewhere the chain keeps its `matrixmultiply` path.
//! The `unsafe` here is that one call and the unaligned loads and stores,
//! each on a fixed-size array that holds exactly the lanes it moves.

use super::{Activation, Layer};

/// Columns of a panel: two 8-lane registers.
pub(super) const NR: usize = 16;
/// Rows accumulated together: 6 x 2 accumulators, plus two weight registers
/// and a broadcast, fill 15 of the 16 `ymm` registers.
pub(super) const MR: usize = 6;

/// One layer, packed for the tiles.
#[derive(Debug)]
struct TiledLayer {
    /// Inputs.
    k: usize,
    /// Outputs.
    m: usize,
    /// `ceil(m / NR)` panels of `[k, NR]`, row-major, zero past column `m`.
    panels: Vec<f32>,
    /// The bias, zero past column `m`.
    bias: Vec<f32>,
    /// For a layer of one output, its `k` weights.
    column: Vec<f32>,
    activation: Activation,
}

impl TiledLayer {
    fn panels(&self) -> usize {
        self.m.div_ceil(NR)
    }

    /// Values per row of this layer's output between layers: whole panels.
    fn stride(&self) -> usize {
        self.panels() * NR
    }
}

/// A chain of dense layers packed for the AVX2/FMA tiles.
#[derive(Debug)]
pub(super) struct Tiles {
    layers: Vec<TiledLayer>,
    /// The widest padded hidden layer (the size of a row between layers).
    widest: usize,
}

/// Whether this CPU runs the tiles (x86-64 with AVX2 and FMA).
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Tiles {
    /// Packs `layers`.
    pub(super) fn pack(layers: &[Layer]) -> Tiles {
        let layers: Vec<TiledLayer> = layers
            .iter()
            .map(|layer| {
                let (k, m) = layer.weights.dim();
                let panels = m.div_ceil(NR);
                let mut packed = vec![0f32; panels * k * NR];
                for (j, panel) in packed.chunks_exact_mut(k * NR).enumerate() {
                    for (p, row) in panel.chunks_exact_mut(NR).enumerate() {
                        for (c, v) in row.iter_mut().enumerate() {
                            if j * NR + c < m {
                                *v = layer.weights[[p, j * NR + c]];
                            }
                        }
                    }
                }
                let mut bias = layer.bias.clone();
                bias.resize(panels * NR, 0.0);
                let column = if m == 1 {
                    layer.weights.column(0).to_vec()
                } else {
                    Vec::new()
                };
                TiledLayer {
                    k,
                    m,
                    panels: packed,
                    bias,
                    column,
                    activation: layer.activation,
                }
            })
            .collect();
        let widest = layers.iter().map(TiledLayer::stride).max().unwrap_or(0);
        Tiles { layers, widest }
    }

    /// Scores `rows` rows of `x` (row-major, the first layer's inputs wide)
    /// into `out` (`[rows, outputs]`, row-major), a block of `block` rows
    /// through every layer at a time. `None` when the CPU lacks AVX2 or FMA.
    pub(super) fn run(&self, x: &[f32], rows: usize, block: usize, out: &mut [f32]) -> Option<()> {
        if !available() {
            return None;
        }
        let (Some(first), Some(last)) = (self.layers.first(), self.layers.last()) else {
            return None;
        };
        assert!(
            x.len() == rows * first.k && out.len() == rows * last.m && block > 0,
            "dense tiles: {} inputs and {} outputs for {rows} rows of {} -> {}",
            x.len(),
            out.len(),
            first.k,
            last.m
        );
        let size = block.min(rows) * self.widest;
        let mut buffers = [vec![0f32; size], vec![0f32; size]];
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `available()` above found AVX2 and FMA on this CPU,
            // the only requirement of the `#[target_feature]` function.
            #[allow(unsafe_code)]
            unsafe {
                avx2_fma::run_blocks(&self.layers, x, rows, block, &mut buffers, out);
            }
            Some(())
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (x, rows, &mut buffers, out);
            None
        }
    }
}

/// The tiles in AVX2/FMA intrinsics. Every function here requires both
/// features; [`Tiles::run`] enters through [`avx2_fma::run_blocks`] only
/// after [`available`] has found them.
#[cfg(target_arch = "x86_64")]
mod avx2_fma {
    use std::arch::x86_64::{
        __m256, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32, _mm_movehl_ps, _mm_shuffle_ps,
        _mm256_add_ps, _mm256_castps256_ps128, _mm256_extractf128_ps, _mm256_fmadd_ps,
        _mm256_loadu_ps, _mm256_max_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };

    use super::{Activation, MR, NR, TiledLayer};

    /// Two 8-lane registers from 16 values.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn load(v: &[f32; NR]) -> [__m256; 2] {
        #[allow(unsafe_code)]
        // SAFETY: `v` holds 16 floats; the loads read [0, 8) and [8, 16)
        // (unaligned loads, any address is valid).
        unsafe {
            [
                _mm256_loadu_ps(v.as_ptr()),
                _mm256_loadu_ps(v[8..].as_ptr()),
            ]
        }
    }

    /// One 8-lane register from 8 values.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn load8(v: &[f32; 8]) -> __m256 {
        #[allow(unsafe_code)]
        // SAFETY: `v` holds 8 floats, which the (unaligned) load reads.
        unsafe {
            _mm256_loadu_ps(v.as_ptr())
        }
    }

    /// Two 8-lane registers into 16 values.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn store(v: [__m256; 2], out: &mut [f32; NR]) {
        #[allow(unsafe_code)]
        // SAFETY: `out` holds 16 floats; the stores write [0, 8) and
        // [8, 16) (unaligned stores, any address is valid).
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr(), v[0]);
            _mm256_storeu_ps(out[8..].as_mut_ptr(), v[1]);
        }
    }

    /// Scores `rows` rows of `x` into `out` in blocks of `block` rows, each
    /// block through every layer (see [`super::Tiles::run`]).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn run_blocks(
        layers: &[TiledLayer],
        x: &[f32],
        rows: usize,
        block: usize,
        buffers: &mut [Vec<f32>; 2],
        out: &mut [f32],
    ) {
        let width = layers[0].k;
        let outputs = layers[layers.len() - 1].m;
        for start in (0..rows).step_by(block) {
            let n = block.min(rows - start);
            for (l, layer) in layers.iter().enumerate() {
                // Layer l writes one buffer and reads what layer l - 1 wrote
                // to the other (the block of `x` for the first layer).
                let [even, odd] = &mut *buffers;
                let (prev, dst) = if l % 2 == 0 { (odd, even) } else { (even, odd) };
                let (src, src_stride): (&[f32], usize) = match l.checked_sub(1) {
                    None => (&x[start * width..(start + n) * width], width),
                    Some(p) => (&prev[..], layers[p].stride()),
                };
                if l + 1 == layers.len() {
                    let dst = &mut out[start * outputs..(start + n) * outputs];
                    layer_rows(layer, src, src_stride, n, dst, outputs);
                } else {
                    let stride = layer.stride();
                    layer_rows(layer, src, src_stride, n, &mut dst[..n * stride], stride);
                }
            }
        }
    }

    /// `dst[r, ..] = activation(src[r, ..k] . W + bias)` for `n` rows,
    /// writing `min(dst_stride, stride)` columns of each (the padding
    /// columns only between layers).
    #[target_feature(enable = "avx2,fma")]
    fn layer_rows(
        layer: &TiledLayer,
        src: &[f32],
        src_stride: usize,
        n: usize,
        dst: &mut [f32],
        dst_stride: usize,
    ) {
        if layer.m == 1 {
            return dot_rows(layer, src, src_stride, n, dst, dst_stride);
        }
        let mut r = 0;
        while r + MR <= n {
            let (s, d) = (&src[r * src_stride..], &mut dst[r * dst_stride..]);
            tile::<MR>(layer, s, src_stride, d, dst_stride);
            r += MR;
        }
        let (s, d) = (&src[r * src_stride..], &mut dst[r * dst_stride..]);
        match n - r {
            0 => {}
            1 => tile::<1>(layer, s, src_stride, d, dst_stride),
            2 => tile::<2>(layer, s, src_stride, d, dst_stride),
            3 => tile::<3>(layer, s, src_stride, d, dst_stride),
            4 => tile::<4>(layer, s, src_stride, d, dst_stride),
            _ => tile::<5>(layer, s, src_stride, d, dst_stride),
        }
    }

    /// A layer of one output (a regressor's last): a dot product per row,
    /// 8 inputs per multiply-add and one horizontal sum, instead of a panel
    /// of which 15 of 16 columns are padding.
    #[target_feature(enable = "avx2,fma")]
    fn dot_rows(
        layer: &TiledLayer,
        src: &[f32],
        src_stride: usize,
        n: usize,
        dst: &mut [f32],
        dst_stride: usize,
    ) {
        let k = layer.k;
        let w = &layer.column[..k];
        let whole = k / 8 * 8;
        for r in 0..n {
            let row = &src[r * src_stride..][..k];
            let mut acc = _mm256_setzero_ps();
            for (a, b) in row[..whole].chunks_exact(8).zip(w[..whole].chunks_exact(8)) {
                let a = load8(a.try_into().expect("8 wide"));
                let b = load8(b.try_into().expect("8 wide"));
                acc = _mm256_fmadd_ps(a, b, acc);
            }
            let half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
            let quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
            let one = _mm_add_ss(quarter, _mm_shuffle_ps::<1>(quarter, quarter));
            let mut sum = _mm_cvtss_f32(one);
            for (a, b) in row[whole..].iter().zip(&w[whole..]) {
                sum = a.mul_add(*b, sum);
            }
            dst[r * dst_stride] = layer.activation.apply_one(sum + layer.bias[0]);
        }
    }

    /// `R` rows through every panel of `layer`: `R x 2` accumulators over
    /// the layer's inputs, then the bias and the activation, then one store.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn tile<const R: usize>(
        layer: &TiledLayer,
        src: &[f32],
        src_stride: usize,
        dst: &mut [f32],
        dst_stride: usize,
    ) {
        let k = layer.k;
        let mut inputs: [&[f32]; R] = [&[]; R];
        for (i, input) in inputs.iter_mut().enumerate() {
            *input = &src[i * src_stride..][..k];
        }
        let zero = _mm256_setzero_ps();
        for (j, (panel, bias)) in layer
            .panels
            .chunks_exact(k * NR)
            .zip(layer.bias.chunks_exact(NR))
            .enumerate()
        {
            let mut acc = [[zero; 2]; R];
            for p in 0..k {
                let w = load(panel[p * NR..][..NR].try_into().expect("NR wide"));
                for i in 0..R {
                    let a = _mm256_set1_ps(inputs[i][p]);
                    acc[i][0] = _mm256_fmadd_ps(a, w[0], acc[i][0]);
                    acc[i][1] = _mm256_fmadd_ps(a, w[1], acc[i][1]);
                }
            }
            let bias = load(bias.try_into().expect("NR wide"));
            let first = j * NR;
            let cols = NR.min(dst_stride - first);
            for (i, acc) in acc.iter().enumerate() {
                let mut v = [
                    _mm256_add_ps(acc[0], bias[0]),
                    _mm256_add_ps(acc[1], bias[1]),
                ];
                if layer.activation == Activation::Relu {
                    // `max(0, v)` returns its second operand when either is
                    // NaN or both are zeros: NaN stays NaN, -0 stays -0, as
                    // `if v < 0 { 0 } else { v }` does.
                    v = [_mm256_max_ps(zero, v[0]), _mm256_max_ps(zero, v[1])];
                }
                let at = i * dst_stride + first;
                if cols == NR && !matches!(layer.activation, Activation::Tanh | Activation::Sigmoid)
                {
                    store(v, (&mut dst[at..at + NR]).try_into().expect("NR wide"));
                } else {
                    // The last layer's few columns, or a scalar activation.
                    let mut row = [0f32; NR];
                    store(v, &mut row);
                    layer.activation.apply_row(&mut row);
                    for (d, r) in dst[at..at + cols].iter_mut().zip(row) {
                        *d = r;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::tract_ndarray::Array2;

    fn layer(k: usize, m: usize, activation: Activation, seed: usize) -> Layer {
        let value = |i: usize| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0) - 1.0;
        Layer {
            weights: Array2::from_shape_fn((k, m), |(p, c)| value(p * m + c)),
            bias: (0..m).map(|c| value(c + 5000) / 2.0).collect(),
            has_bias: true,
            activation,
        }
    }

    /// Every layer shape around the tile sizes, every activation, row counts
    /// with every remainder of `MR`, blocks that split them unevenly: the
    /// tiles give what the plain loops over `matrixmultiply` give.
    #[test]
    fn tiles_score_like_the_general_product() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX2/FMA, the tiles are not used");
            return;
        }
        let shapes: [&[usize]; 6] = [
            &[8, 32, 16, 1],
            &[32, 64, 32, 1],
            &[3, 5],
            &[1, 17, 2],
            &[20, 15, 33, 16, 4],
            &[7, 1, 9],
        ];
        let acts = [
            Activation::Relu,
            Activation::Tanh,
            Activation::Sigmoid,
            Activation::Identity,
        ];
        for (s, dims) in shapes.iter().enumerate() {
            for (a, &act) in acts.iter().enumerate() {
                let layers: Vec<Layer> = dims
                    .windows(2)
                    .enumerate()
                    .map(|(l, w)| {
                        let last = l + 2 == dims.len();
                        layer(
                            w[0],
                            w[1],
                            if last { Activation::Identity } else { act },
                            s * 10 + a + l,
                        )
                    })
                    .collect();
                let chain = super::super::DenseChain {
                    width: dims[0],
                    layers,
                    tiles: None,
                };
                let tiles = Tiles::pack(&chain.layers);
                for (rows, block) in [(1, 256), (5, 256), (6, 256), (13, 4), (257, 256), (100, 7)] {
                    let x: Vec<f32> = (0..rows * dims[0])
                        .map(|i| ((i * 31 % 97) as f32 - 48.0) / 16.0)
                        .collect();
                    let want = chain.run_general(&x, rows).unwrap();
                    let mut got = vec![f32::NAN; want.len()];
                    tiles.run(&x, rows, block, &mut got).unwrap();
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                            "{dims:?} {act:?} rows {rows} block {block}: value {i} {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    /// A NaN input comes out NaN through a ReLU (a `max` that returns its
    /// other operand would turn it into 0), and only in its own row.
    #[test]
    fn nan_stays_in_its_row() {
        if !available() {
            return;
        }
        let layers = vec![
            layer(4, 20, Activation::Relu, 1),
            layer(20, 1, Activation::Identity, 2),
        ];
        let tiles = Tiles::pack(&layers);
        let mut x = vec![0.5f32; 4 * 9];
        x[4 * 7 + 2] = f32::NAN;
        let mut out = vec![0f32; 9];
        tiles.run(&x, 9, 256, &mut out).unwrap();
        for (r, v) in out.iter().enumerate() {
            assert_eq!(v.is_nan(), r == 7, "row {r}: {v}");
        }
    }
}
