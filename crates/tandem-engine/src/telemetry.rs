//! The engine's metrics, through the `metrics` facade (the server installs
//! the Prometheus recorder; without one these calls cost almost nothing).
//! Labels are fixed vocabularies: never entity ids, never raw paths.

use std::time::Duration;

use tandem_core::AnswerSource;

use crate::error::EngineError;

/// Seconds spent in a stage: `lookup` (memory + store), `feature_fetch`,
/// `queue_wait`, `model`, `store_write`.
pub fn stage(stage: &'static str, took: Duration) {
    metrics::histogram!("tandem_stage_duration_seconds", "stage" => stage)
        .record(took.as_secs_f64());
}

/// A failure on the request path, by reason: `invalid_input`,
/// `overloaded`, `timeout`, `store_unavailable`, `store_corrupt`,
/// `model_error`, `not_found`, `shutting_down`.
pub fn error(reason: &'static str) {
    metrics::counter!("tandem_errors_total", "reason" => reason).increment(1);
}

/// The reason label of an engine error.
pub fn reason(e: &EngineError) -> &'static str {
    match e {
        EngineError::InvalidInput(_) | EngineError::NoSchema(_) => "invalid_input",
        EngineError::UnknownModel(_)
        | EngineError::UnknownVersion(_)
        | EngineError::UnknownEntity(_) => "not_found",
        EngineError::Overloaded { .. } => "overloaded",
        EngineError::DeadlineExceeded(_) => "timeout",
        EngineError::Model(_) => "model_error",
        EngineError::StoreUnavailable(_) | EngineError::NoPrediction { .. } => "store_unavailable",
        EngineError::ShuttingDown => "shutting_down",
    }
}

/// One answer: counted by source; its age observed.
pub fn answer(source: AnswerSource, age_ms: u64) {
    metrics::counter!("tandem_answers_total", "source" => source.as_str()).increment(1);
    metrics::histogram!("tandem_prediction_age_seconds", "source" => source.as_str())
        .record(age_ms as f64 / 1000.0);
}

/// Rows in one model call.
pub fn batch_rows(rows: usize) {
    metrics::histogram!("tandem_model_batch_rows").record(rows as f64);
}
