//! The engine's metrics, through the `metrics` facade (the server installs
//! the Prometheus recorder; without one these calls cost almost nothing).
//! Labels are fixed vocabularies: never entity ids, never raw paths. The
//! hot-path handles are looked up once and kept, so that a request pays an
//! atomic add, not a registry lookup.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram};
use tandem_core::AnswerSource;

use crate::error::EngineError;

const STAGES: [&str; 5] = [
    "lookup",
    "feature_fetch",
    "queue_wait",
    "model",
    "store_write",
];

/// Seconds spent in a stage: `lookup` (memory + store), `feature_fetch`,
/// `queue_wait`, `model`, `store_write`.
pub fn stage(stage: &'static str, took: Duration) {
    static HANDLES: OnceLock<Vec<Histogram>> = OnceLock::new();
    let handles = HANDLES.get_or_init(|| {
        STAGES
            .iter()
            .map(|s| metrics::histogram!("tandem_stage_duration_seconds", "stage" => *s))
            .collect()
    });
    match STAGES.iter().position(|s| *s == stage) {
        Some(i) => handles[i].record(took.as_secs_f64()),
        None => metrics::histogram!("tandem_stage_duration_seconds", "stage" => stage)
            .record(took.as_secs_f64()),
    }
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
    static HANDLES: OnceLock<Vec<(Counter, Histogram)>> = OnceLock::new();
    let handles = HANDLES.get_or_init(|| {
        AnswerSource::ALL
            .iter()
            .map(|s| {
                (
                    metrics::counter!("tandem_answers_total", "source" => s.as_str()),
                    metrics::histogram!("tandem_prediction_age_seconds", "source" => s.as_str()),
                )
            })
            .collect()
    });
    if let Some(i) = AnswerSource::ALL.iter().position(|s| *s == source) {
        handles[i].0.increment(1);
        handles[i].1.record(age_ms as f64 / 1000.0);
    }
}

/// Rows in one model call.
pub fn batch_rows(rows: usize) {
    static HANDLE: OnceLock<Histogram> = OnceLock::new();
    HANDLE
        .get_or_init(|| metrics::histogram!("tandem_model_batch_rows"))
        .record(rows as f64);
}
