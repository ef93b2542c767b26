//! Domain types shared by every tandem crate: feature batches and the
//! predictions a model makes from them. No I/O and no async live here; later
//! layers add the feature schema, prediction records, hybrid policies, SLA
//! targets and the cost model.

pub mod batch;
pub mod record;

pub use batch::{BatchError, FeatureBatch, Predictions};
pub use record::{
    FeatureRow, PredictionRecord, PredictionSource, TtlPolicy, unix_millis, unix_seconds,
};
