//! Vector-register hygiene after tract's hand-written x86-64 kernels.
//!
//! tract-linalg's AVX/FMA and AVX-512 matrix kernels (`x86_64/*/postamble.j2`
//! in tract-linalg 0.23) return without `vzeroupper`, so after a model with a
//! matrix product (an MLP, a linear layer) the upper halves of the vector
//! registers stay "dirty" on that thread. Until something clears them,
//! every SSE-encoded instruction that writes only part of a register
//! (`movss`, `cvtsi2ss`, ...: most scalar float code of a baseline x86-64
//! build) waits on the register's old upper half. Measured on the CI
//! machine (AMD EPYC, Zen 4): a scalar float loop ran 1.85x slower, and the
//! 200-tree ensemble scored one row in 12.0 µs instead of 5.7 µs on a
//! thread that had just run the MLP fixture. glibc's AVX `memcpy` happens
//! to clear the state as it returns, so the slow-down came and went with
//! whatever ran next.
//!
//! [`clear_upper_state`] runs after every plan run (`Model::run_raw`). The
//! workspace's other `unsafe` is the tree walk's unchecked reads
//! (`ml/tree/compiled.rs`), whose bounds `CompiledEnsemble::compile` proves.

/// Clears the upper halves of the YMM/ZMM registers (`vzeroupper`) when the
/// CPU has AVX; a no-op elsewhere.
#[inline]
pub(crate) fn clear_upper_state() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        #[allow(unsafe_code)]
        // SAFETY: the CPU supports AVX (checked just above), the only
        // requirement of `vzeroupper`. The compiler knows the intrinsic
        // clobbers the upper halves it zeroes (and a baseline x86-64 build
        // keeps nothing there), so no live value is lost.
        unsafe {
            std::arch::x86_64::_mm256_zeroupper();
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) mod tests {
    /// Whether the upper halves of the YMM registers are in use (bit 2 of
    /// XINUSE, read with `XGETBV` and ECX = 1); `None` where the CPU cannot
    /// tell.
    #[allow(unsafe_code)]
    pub(crate) fn upper_state_dirty() -> Option<bool> {
        use std::arch::x86_64::{__cpuid_count, _xgetbv};
        if !std::arch::is_x86_feature_detected!("avx") {
            return None;
        }
        // CPUID.(EAX=0DH, ECX=1):EAX[2]: XGETBV with ECX = 1 is supported.
        #[allow(unused_unsafe)]
        // SAFETY: CPUID leaf 0xD exists on every CPU with AVX (XSAVE).
        let leaf = unsafe { __cpuid_count(0xD, 1) };
        if leaf.eax & 0b100 == 0 {
            return None;
        }
        // SAFETY: XSAVE is enabled by the OS (implied by the AVX detection
        // above) and ECX = 1 is supported (checked above).
        Some(unsafe { _xgetbv(1) } & 0b100 != 0)
    }

    #[test]
    fn a_model_with_a_matrix_product_leaves_the_upper_halves_clean() {
        let Some(_) = upper_state_dirty() else {
            eprintln!("skipped: this CPU cannot report XINUSE");
            return;
        };
        // The MLP's layers run on tract's AVX/AVX-512 matrix kernels (a
        // batch big enough for the chunked plan and for the small one).
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/models/sklearn_mlp_32/1/model.onnx");
        let model = crate::Model::load(&path).expect("the MLP fixture loads");
        let width = model.width();
        for rows in [1, 8192] {
            let values: Vec<f32> = (0..rows * width).map(|i| (i % 17) as f32 / 7.0).collect();
            let batch = tandem_core::FeatureBatch::new(values, width).expect("batch");
            let out = model.run_raw(batch.values(), width).expect("runs");
            assert_eq!(
                upper_state_dirty(),
                Some(false),
                "vector registers left dirty after {rows} rows"
            );
            drop(out);
        }
    }
}
