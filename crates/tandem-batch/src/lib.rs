//! Batch jobs: score every entity of a Parquet/CSV data set into the
//! prediction store (`tandem batch`), and load features into the feature
//! store (`tandem materialize`). Built on Apache DataFusion: the input is a
//! table, scoring is the scalar function `predict(...)` over its columns
//! (so the same plan can run on Ballista), and the results stream into the
//! store while scoring goes on. Never HTTP.

pub use tandem_core::digest;
pub mod cluster;
pub mod error;
pub mod index;
pub mod job;
mod mapped;
pub mod materialize;
pub mod objects;
pub mod plan;
pub mod refresh;
pub mod rows;
mod telemetry;
pub mod udf;
pub mod warm;

pub use error::BatchError;
pub use job::{BatchOptions, BatchSummary, NoProgress, Progress, new_run_id, run_batch};
pub use materialize::{MaterializeOptions, MaterializeSummary, run_materialize};
pub use refresh::{RefreshOptions, RefreshSummary, run_refresh, run_refresh_with};
pub use warm::{Busy, WarmOptions, WarmSummary, WarmTargets, run_warm, run_warm_with};
