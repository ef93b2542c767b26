//! Shared helpers for the model tests.
#![allow(dead_code, missing_docs)]

use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn fixture_model(name: &str) -> PathBuf {
    fixtures()
        .join("models")
        .join(name)
        .join("1")
        .join("model.onnx")
}

/// Copies a fixture model into `<repo>/<name>/<version>/`.
pub fn install(repo: &Path, fixture: &str, name: &str, version: u64) {
    let dir = repo.join(name).join(version.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixtures().join("models").join(fixture).join("1");
    std::fs::copy(src.join("model.onnx"), dir.join("model.onnx")).unwrap();
    std::fs::copy(src.join("model.toml"), dir.join("model.toml")).unwrap();
}
