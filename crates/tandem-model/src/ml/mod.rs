//! The ONNX-ML operators that tabular-model converters emit, added to
//! tract's ONNX operator register.
//!
//! tract already parses `LinearRegressor`, `LinearClassifier`,
//! `ArrayFeatureExtractor` and `Cast`. This module adds `TreeEnsembleRegressor`
//! and `TreeEnsemble` (opset 5), replaces tract's `TreeEnsembleClassifier`
//! (which rejects two-class `base_values`, lacks PROBIT and SOFTMAX_ZERO, and
//! walks one row at a time) with the same fast tree layout, and adds `Scaler`
//! and `Imputer`, and replaces tract's `Normalizer` (its MAX norm differs
//! from onnxruntime's). `ZipMap` is handled before parsing (see `crate::load`).

pub mod preprocess;
pub mod tree;

use tract_onnx::model::OnnxOpRegister;

/// The operator names this module registers.
pub const OPERATORS: &[&str] = &[
    "TreeEnsembleRegressor",
    "TreeEnsembleClassifier",
    "TreeEnsemble",
    "Scaler",
    "Imputer",
    "Normalizer",
];

/// Adds (or replaces) this module's parsers in a tract ONNX register.
pub fn register(reg: &mut OnnxOpRegister) {
    reg.insert("TreeEnsembleRegressor", tree::regressor);
    reg.insert("TreeEnsembleClassifier", tree::classifier);
    reg.insert("TreeEnsemble", tree::tree_ensemble_v5);
    reg.insert("Scaler", preprocess::scaler);
    reg.insert("Imputer", preprocess::imputer);
    reg.insert("Normalizer", preprocess::normalizer);
}
