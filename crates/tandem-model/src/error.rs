//! The model layer's one error type.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// No file (or directory) at the path.
    #[error("model file not found: {path}")]
    NotFound {
        /// The path tried.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path read.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an ONNX model.
    #[error("{path} is not an ONNX model: {detail}")]
    NotOnnx {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The graph uses an operator tandem cannot run.
    #[error("unsupported operator {op} (domain '{domain}') in node '{node}' of {path}")]
    UnsupportedOperator {
        /// Operator type.
        op: String,
        /// Operator domain (empty for the default ONNX domain).
        domain: String,
        /// Node name (or its first output when unnamed).
        node: String,
        /// The model file.
        path: PathBuf,
    },
    /// The graph parsed but could not be typed, optimised or planned.
    #[error("cannot prepare {path}: {detail}")]
    Compile {
        /// The model file.
        path: PathBuf,
        /// tract's explanation, outermost context first.
        detail: String,
    },
    /// A sidecar or repository configuration problem.
    #[error("{path}: {detail}")]
    Config {
        /// The file at fault.
        path: PathBuf,
        /// What to fix, naming the key.
        detail: String,
    },
    /// The batch has the wrong number of features per row.
    #[error("the model takes {expected} features per row, got {got}")]
    InputWidth {
        /// Width of the model input.
        expected: usize,
        /// Width given.
        got: usize,
    },
    /// A NaN or infinite input where the model's input policy rejects them.
    #[error("row {row}, feature {feature} ('{name}') is {value}, which this model rejects")]
    NonFiniteInput {
        /// Zero-based row.
        row: usize,
        /// Zero-based column.
        feature: usize,
        /// Feature name, or its index when unnamed.
        name: String,
        /// The value.
        value: f32,
    },
    /// Running the model failed.
    #[error("inference failed: {0}")]
    Run(String),
    /// No model of that name.
    #[error("unknown model '{0}'")]
    UnknownModel(String),
    /// The model has no such version loaded.
    #[error("model '{name}' has no loaded version {version}")]
    UnknownVersion {
        /// Model name.
        name: String,
        /// Version asked for.
        version: u64,
    },
    /// The model has no such label.
    #[error("model '{name}' has no label '{label}'")]
    UnknownLabel {
        /// Model name.
        name: String,
        /// Label asked for.
        label: String,
    },
    /// The model exists but no version of it is loaded.
    #[error("model '{0}' has no loaded version")]
    NoVersion(String),
}

impl ModelError {
    pub(crate) fn compile(path: &std::path::Path, e: &tract_onnx::prelude::TractError) -> Self {
        ModelError::Compile {
            path: path.to_path_buf(),
            detail: chain(e),
        }
    }
}

/// An anyhow-style error chain on one line.
pub(crate) fn chain(e: &tract_onnx::prelude::TractError) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
