//! Batch jobs: score every entity of a Parquet/CSV data set into the
//! prediction store (`tandem batch`), load features into the feature store
//! (`materialize`), and keep predictions fresh cheaply (`warm`, `refresh`).
//! DataFusion locally, Ballista when distributed; never HTTP.
//!
//! Laid out by the workspace issue and filled by the batch issue; it has no
//! public items yet.
