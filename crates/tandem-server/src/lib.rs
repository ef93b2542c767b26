//! The HTTP front end: the native entity API, TensorFlow Serving REST and
//! KServe V2 REST, `/metrics`, health probes and the dashboard. Handlers are
//! thin adapters over `tandem-engine`; this crate never touches a store or
//! a model directly.
//!
//! Laid out by the workspace issue and filled by the serving issue; it has no
//! public items yet.
