//! Domain types shared by every tandem crate: feature batches and the
//! predictions a model makes from them. No I/O and no async live here; later
//! layers add the feature schema, prediction records, hybrid policies, SLA
//! targets and the cost model.

pub mod advise;
pub mod batch;
pub mod cost;
pub mod digest;
pub mod features;
pub mod policy;
pub mod record;
pub mod schema;
pub mod shard;
pub mod sla;

pub use batch::{BatchError, FeatureBatch, Predictions};
pub use features::{FeatureNames, FeatureRow};
pub use policy::{AnswerSource, Health, HealthThresholds, HybridPolicy, Mode, parse_duration};
pub use record::{PredictionRecord, PredictionSource, TtlPolicy, unix_millis, unix_seconds};
pub use schema::{
    FeatureOverride, FeatureSchema, FeatureSource, FeatureSpec, RealtimeFeature, SchemaError,
    StoredSlots,
};
pub use sla::{Observed, SlaResult, SlaTargets};
