//! The engine's one error type. Transports map it to their status codes
//! exactly once, exhaustively.

use std::time::Duration;

use tandem_model::ModelError;

/// Why the engine could not answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The request is malformed or its values are not acceptable.
    #[error("{0}")]
    InvalidInput(String),
    /// No model of that name is served.
    #[error("unknown model '{0}'")]
    UnknownModel(String),
    /// The model is served, but not that version or label.
    #[error("{0}")]
    UnknownVersion(String),
    /// The model has no feature names, so entity requests cannot assemble
    /// its input.
    #[error(
        "model '{0}' has no feature names: list them in its sidecar ([features] names) to serve entities"
    )]
    NoSchema(String),
    /// No stored features, no stored prediction and no context: nothing is
    /// known about the entity.
    #[error("unknown entity '{0}': no stored features or prediction, and no context given")]
    UnknownEntity(String),
    /// The model queue is full.
    #[error("overloaded: {queued} requests already queued for the model")]
    Overloaded {
        /// The queue bound.
        queued: usize,
    },
    /// The deadline passed before an answer was computed.
    #[error("deadline of {0:?} exceeded")]
    DeadlineExceeded(Duration),
    /// Running the model failed.
    #[error("model error: {0}")]
    Model(String),
    /// The store could not be used.
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    /// Every step of the fallback chain failed and no default prediction is
    /// configured.
    #[error("no prediction available for '{entity}': {reason}")]
    NoPrediction {
        /// The entity.
        entity: String,
        /// What failed along the chain.
        reason: String,
    },
    /// The server is stopping.
    #[error("shutting down")]
    ShuttingDown,
}

impl EngineError {
    /// A short machine-readable name (`invalid_input`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            EngineError::InvalidInput(_) => "invalid_input",
            EngineError::UnknownModel(_) => "unknown_model",
            EngineError::UnknownVersion(_) => "unknown_version",
            EngineError::NoSchema(_) => "no_feature_schema",
            EngineError::UnknownEntity(_) => "unknown_entity",
            EngineError::Overloaded { .. } => "overloaded",
            EngineError::DeadlineExceeded(_) => "deadline_exceeded",
            EngineError::Model(_) => "model_error",
            EngineError::StoreUnavailable(_) => "store_unavailable",
            EngineError::NoPrediction { .. } => "no_prediction",
            EngineError::ShuttingDown => "shutting_down",
        }
    }
}

impl From<ModelError> for EngineError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::UnknownModel(m) => EngineError::UnknownModel(m),
            e @ (ModelError::UnknownVersion { .. }
            | ModelError::UnknownLabel { .. }
            | ModelError::NoVersion(_)) => EngineError::UnknownVersion(e.to_string()),
            e @ (ModelError::InputWidth { .. } | ModelError::NonFiniteInput { .. }) => {
                EngineError::InvalidInput(e.to_string())
            }
            e @ (ModelError::NotFound { .. }
            | ModelError::Io { .. }
            | ModelError::NotOnnx { .. }
            | ModelError::UnsupportedOperator { .. }
            | ModelError::Compile { .. }
            | ModelError::Config { .. }
            | ModelError::Run(_)) => EngineError::Model(e.to_string()),
        }
    }
}

/// Runs a call into a store in a background task (a merged read, a
/// write-back, an activity write) with a panic in it turned into an error
/// of `who`: the task that made the call goes on serving, where the panic
/// would otherwise end it and every later call with it.
pub(crate) async fn unless_panicked<T>(
    who: &'static str,
    call: impl std::future::Future<Output = Result<T, tandem_store::StoreError>>,
) -> Result<T, tandem_store::StoreError> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(call)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            Err(tandem_store::StoreError::Backend {
                backend: who,
                detail: "the store call panicked".into(),
            })
        })
}
