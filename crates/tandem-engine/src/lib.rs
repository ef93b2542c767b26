//! The transport-agnostic tandem service. Every transport (the native
//! entity API, TF Serving REST, KServe V2) calls the same [`Engine`]:
//!
//! - entity requests follow the hybrid policy and its degradation chain:
//!   fresh stored prediction (memory tier, then store) -> real-time compute
//!   within the deadline -> stale stored prediction -> default prediction,
//!   every answer saying which ([`service`]);
//! - model calls go through one bounded queue and dedicated model threads
//!   that batch concurrent requests ([`batcher`]);
//! - store reads of concurrent requests are merged ([`coalesce`]);
//! - computed predictions are written back off the request path
//!   ([`writeback`]);
//! - answer sources are counted over a sliding window for the health status
//!   ([`stats`]); models are polled for new versions ([`models`]).

pub mod activity;
pub mod batcher;
pub mod coalesce;
pub mod error;
pub mod jobs;
pub mod models;
pub mod service;
pub mod stats;
pub mod telemetry;
pub mod writeback;

pub use activity::{ActivityConfig, ActivityCounts};
pub use batcher::{Batcher, BatcherConfig};
pub use error::EngineError;
pub use jobs::{JobBoard, JobStatus};
pub use models::{ModelEvent, Models};
pub use service::{Answer, Engine, EngineConfig, EntityQuery, Inferred, PredictRequest};
pub use stats::{Stats, StatsSnapshot};
pub use tandem_core::{AnswerSource, Health, HealthThresholds, HybridPolicy, Mode};
pub use tandem_model::{
    DType, Model, ModelMetadata, OutputData, OutputTensor, TensorInfo, VersionSpec,
};
