//! The batch layer's error type.

use tandem_model::ModelError;
use tandem_store::StoreError;

/// Why a batch job could not run or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The model did not load.
    #[error("model: {0}")]
    Model(#[from] ModelError),
    /// The store could not be opened or written.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// An input path matched nothing, or could not be read.
    #[error("input {path}: {detail}")]
    Input {
        /// The path or URL given.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// A column named by a flag, by the model, or needed as the id is not in
    /// the input.
    #[error("column {column:?} {detail}")]
    Column {
        /// The column.
        column: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The features do not fit the model.
    #[error("{0}")]
    Schema(String),
    /// A flag's value is not valid.
    #[error("{0}")]
    Invalid(String),
    /// `--strict`: a row is bad.
    #[error("row {row} (entity {entity:?}): {reason}")]
    BadRow {
        /// Zero-based row number in the scan order.
        row: u64,
        /// Its entity id, if it has one.
        entity: Option<String>,
        /// What is wrong with it.
        reason: String,
    },
    /// `--strict` on a cluster: a bad row, found before anything was
    /// written.
    #[error("entity {entity:?}: {reason}")]
    BadEntity {
        /// Its entity id, if it has one.
        entity: Option<String>,
        /// What is wrong with it.
        reason: String,
    },
    /// A digest index could not be read or written.
    #[error("index {path}: {detail}")]
    Index {
        /// The index file.
        path: String,
        /// What failed.
        detail: String,
    },
    /// The Ballista cluster could not be reached, started or used.
    #[error("cluster: {0}")]
    Cluster(String),
    /// The query engine failed (unreadable file, SQL error, ...).
    #[error("{0}")]
    Engine(#[from] datafusion::error::DataFusionError),
    /// An Arrow conversion failed.
    #[error("{0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// Writing the output file failed.
    #[error("output {path}: {detail}")]
    Output {
        /// The output path.
        path: String,
        /// What failed.
        detail: String,
    },
}
