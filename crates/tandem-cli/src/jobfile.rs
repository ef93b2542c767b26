//! `tandem batch --config FILE`: a batch job described in TOML, with the
//! flags' names as keys (`where` for `--where`). Flags override the file;
//! relative paths in the file are relative to the file, so a job file works
//! from any directory. Unknown keys are an error naming the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The keys of a batch job file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchFile {
    /// `--model`.
    pub model: Option<PathBuf>,
    /// `--input`.
    pub input: Option<String>,
    /// `--id-column`.
    pub id_column: Option<String>,
    /// `--features`, as an array.
    pub features: Option<Vec<String>>,
    /// `--where`.
    #[serde(rename = "where")]
    pub filter: Option<String>,
    /// `--sql`.
    pub sql: Option<String>,
    /// `--strict`.
    pub strict: Option<bool>,
    /// `--fill`.
    pub fill: Option<f64>,
    /// `--shard`, as `"I/N"`.
    pub shard: Option<String>,
    /// `--store`.
    pub store: Option<String>,
    /// `--ttl`, as `"24h"`.
    pub ttl: Option<String>,
    /// `--output`.
    pub output: Option<PathBuf>,
    /// `--run-id`.
    pub run_id: Option<String>,
    /// `--index`.
    pub index: Option<PathBuf>,
    /// `--cluster`.
    pub cluster: Option<String>,
    /// `--parts`.
    pub parts: Option<u32>,
    /// `--partitions`.
    pub partitions: Option<usize>,
}

impl BatchFile {
    /// Reads and checks a job file; relative paths become relative to it.
    pub fn read(path: &Path) -> anyhow::Result<BatchFile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("job file {}: {e}", path.display()))?;
        let mut file: BatchFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("job file {}: {e}", path.display()))?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let rebase_path = |p: &mut Option<PathBuf>| {
            if let Some(v) = p.as_mut()
                && v.is_relative()
            {
                *v = dir.join(&*v);
            }
        };
        rebase_path(&mut file.model);
        rebase_path(&mut file.output);
        rebase_path(&mut file.index);
        // Inputs and stores may be URLs; only local relative paths move.
        let rebase_str = |v: &mut Option<String>| {
            if let Some(s) = v.as_mut()
                && !s.contains("://")
                && !s.is_empty()
                && Path::new(s.as_str()).is_relative()
            {
                *s = dir.join(s.as_str()).display().to_string();
            }
        };
        rebase_str(&mut file.input);
        rebase_str(&mut file.store);
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_relative_to_the_file_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.toml");
        std::fs::write(
            &path,
            "model = \"m/model.onnx\"\ninput = \"data/*.parquet\"\nstore = \"redis://h:6379\"\n\
             where = \"a > 1\"\nttl = \"2h\"\nfeatures = [\"a\", \"b\"]\noutput = \"/abs/out.parquet\"\n",
        )
        .unwrap();
        let f = BatchFile::read(&path).unwrap();
        assert_eq!(f.model.unwrap(), dir.path().join("m/model.onnx"));
        assert_eq!(
            f.input.unwrap(),
            dir.path().join("data/*.parquet").display().to_string()
        );
        assert_eq!(f.store.unwrap(), "redis://h:6379");
        assert_eq!(f.filter.unwrap(), "a > 1");
        assert_eq!(f.output.unwrap(), PathBuf::from("/abs/out.parquet"));
        assert_eq!(f.features.unwrap(), vec!["a", "b"]);

        std::fs::write(&path, "modle = \"x\"\n").unwrap();
        let e = BatchFile::read(&path).unwrap_err().to_string();
        assert!(e.contains("modle") && e.contains("job.toml"), "{e}");
        let e = BatchFile::read(&dir.path().join("none.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.toml"), "{e}");
    }
}
