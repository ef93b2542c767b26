//! Feature, prediction and activity stores: the traits, and the backends
//! behind them (embedded redb file, Redis, Redis Cluster) with an in-process
//! memory tier in front. Depends on `tandem-core` only.
//!
//! This crate is laid out by the workspace issue and filled by the stores
//! issue; it has no public items yet.
