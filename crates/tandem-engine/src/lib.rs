//! The transport-agnostic service every tandem front end calls: feature
//! assembly, the hybrid policy and its degradation chain (fresh stored
//! prediction, real-time compute, stale prediction, default), the request
//! batcher in front of the model threads, and serving statistics.
//!
//! Laid out by the workspace issue and filled by the serving issue; it has no
//! public items yet.
