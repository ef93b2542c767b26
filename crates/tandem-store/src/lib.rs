//! Feature, prediction and activity stores: the traits, and the backends
//! behind them (embedded redb file, Redis, Redis Cluster) with an in-process
//! memory tier in front. Depends on `tandem-core` only.
//!
//! Open a backend from a URL with [`open`]; see [`config`] for the URL forms
//! and [`layout`] for the key layout and value encoding.

pub mod api;
pub mod config;
pub mod embedded;
pub mod error;
pub mod layout;
pub mod memory;
pub mod redis_store;
mod tracking;

use std::sync::Arc;

pub use api::{
    ActiveEntity, ActivityLog, ChangeSink, FeatureStore, PredictionEntry, PredictionStore, Store,
};
pub use config::{Backend, StoreOptions, StoreUrl};
pub use embedded::EmbeddedStore;
pub use error::{Lookup, StoreError};
pub use layout::{EncodedRows, KeyLayout};
pub use memory::{
    MemoryTier, MemoryTierConfig, ReadTicket, Tier, TierCounters, TierLookup, TieredPredictions,
};
pub use redis_store::RedisStore;

/// Opens the store a URL names (see [`config`]). Redis backends connect
/// lazily; the embedded store opens its file now.
pub fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    let parsed = StoreUrl::parse(url)?;
    open_parsed(parsed)
}

/// Opens a parsed store URL.
pub fn open_parsed(url: StoreUrl) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match url.backend {
        Backend::Redis { url: u } => Arc::new(RedisStore::open(&u, url.options)?),
        Backend::Cluster { nodes } => Arc::new(RedisStore::open_cluster(&nodes, url.options)?),
        Backend::Embedded { path } => Arc::new(EmbeddedStore::open(path, url.options)?),
    })
}
