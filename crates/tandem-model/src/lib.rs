//! Model loading and running for tandem.
//!
//! Models are ONNX files run on [tract](https://github.com/sonos/tract), with
//! the ONNX-ML operators that tabular converters emit (tree ensembles,
//! scalers, imputers, ...) implemented in [`ml`]. A [`Model`] is prepared once
//! (typed, optimised, planned) and then run from any number of threads:
//! a batch `[N, F]` of f32 in, predictions out. A [`ModelRepository`] serves
//! several models and versions laid out as TensorFlow Serving lays them out.

pub mod config;
mod dense;
pub mod error;
mod load;
pub mod ml;
pub mod model;
pub mod repository;
mod simd;

pub use config::{ModelConfig, NonFinite, OutputSelection};
pub use error::ModelError;
pub use model::{DType, Model, ModelMetadata, OutputData, OutputTensor, TensorInfo};
pub use repository::{LoadReport, ModelRepository, ServedModel, VersionPolicy, VersionSpec};
