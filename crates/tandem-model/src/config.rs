//! The optional sidecar TOML beside a model file: which output is the
//! prediction, the feature names, and the input policy.
//!
//! ```toml
//! [output]
//! name = "probabilities"   # or index = 1; default: the first float output
//! column = 1               # default: 1 for two columns, 0 for one, all otherwise
//! [features]
//! names = ["age", "tenure", "spend"]
//! [inputs]
//! non_finite = "missing"   # or "reject"
//! ```

use std::path::Path;

use serde::Deserialize;

use crate::error::ModelError;

/// The whole sidecar.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Output selection.
    #[serde(default)]
    pub output: OutputSelection,
    /// Feature names.
    #[serde(default)]
    pub features: FeatureNames,
    /// Input policy.
    #[serde(default)]
    pub inputs: InputPolicy,
}

/// Which model output, and which column of it, is "the prediction".
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSelection {
    /// Output by name.
    pub name: Option<String>,
    /// Output by position (ignored when `name` is set).
    pub index: Option<usize>,
    /// Column of a `[N, C]` output. Unset: the only column of a one-column
    /// output, the second (positive class) of a two-column output, and the
    /// whole row (a vector prediction) otherwise.
    pub column: Option<usize>,
}

/// Names of the model's input columns, in order.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureNames {
    /// The names; their count must equal the model's input width.
    #[serde(default)]
    pub names: Vec<String>,
}

/// What to do with NaN and infinite inputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonFinite {
    /// Pass them to the model: NaN means "missing", which tree ensembles
    /// route by their missing-value rules (as the training library did).
    #[default]
    Missing,
    /// Refuse the batch, naming the row and feature.
    Reject,
}

/// Input handling.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputPolicy {
    /// NaN and infinity handling.
    #[serde(default)]
    pub non_finite: NonFinite,
}

impl ModelConfig {
    /// Reads a sidecar file; an unknown key is an error naming it.
    pub fn from_file(path: &Path) -> Result<ModelConfig, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            detail: e.to_string().trim_end().replace('\n', " "),
        })
    }

    /// The sidecar for a model file, if one exists: `model.toml` beside a
    /// repository's `model.onnx`, `<stem>.toml` beside any other `.onnx`.
    pub fn for_model(
        model_path: &Path,
    ) -> Result<Option<(ModelConfig, std::path::PathBuf)>, ModelError> {
        let sidecar = model_path.with_extension("toml");
        if sidecar.is_file() {
            return Ok(Some((ModelConfig::from_file(&sidecar)?, sidecar)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let err = toml::from_str::<ModelConfig>("[output]\ncolunm = 1\n").unwrap_err();
        assert!(err.to_string().contains("colunm"), "{err}");
    }

    #[test]
    fn full_sidecar_parses() {
        let c: ModelConfig = toml::from_str(
            "[output]\nname = \"p\"\ncolumn = 1\n[features]\nnames = [\"a\"]\n[inputs]\nnon_finite = \"reject\"\n",
        )
        .unwrap();
        assert_eq!(c.output.name.as_deref(), Some("p"));
        assert_eq!(c.output.column, Some(1));
        assert_eq!(c.inputs.non_finite, NonFinite::Reject);
    }
}
