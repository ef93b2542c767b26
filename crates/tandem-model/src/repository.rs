//! A model repository laid out as TensorFlow Serving lays one out:
//!
//! ```text
//! <root>/<model>/<version>/model.onnx     numeric versions
//! <root>/<model>/<version>/model.toml     optional sidecar (crate::config)
//! <root>/<model>/labels.toml              optional: stable = 3, canary = 4
//! ```
//!
//! Directories whose name is not a number are ignored, as TF Serving does.
//! The loaded set is swapped in whole ([`arc_swap`]), so readers never wait
//! and a reload loads (and warms) new versions before old ones go away.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::model::Model;

/// Which versions of each model to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The newest `n` versions (TF Serving's default is the newest one).
    Latest(usize),
    /// Every version on disk.
    All,
    /// Exactly these versions.
    Specific(BTreeSet<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

/// Which version a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSpec {
    /// The newest loaded version.
    Latest,
    /// A version number.
    Number(u64),
    /// A label such as `stable` or `canary`.
    Label(String),
}

/// One model's loaded versions and labels.
#[derive(Debug, Clone, Default)]
pub struct ServedModel {
    /// Loaded versions.
    pub versions: BTreeMap<u64, Arc<Model>>,
    /// Label -> version; every label points at a loaded version.
    pub labels: BTreeMap<String, u64>,
}

type Snapshot = BTreeMap<String, ServedModel>;

/// What a load or reload did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// `(model, version)` newly loaded.
    pub loaded: Vec<(String, u64)>,
    /// `(model, version)` unloaded (gone from disk or from the policy).
    pub unloaded: Vec<(String, u64)>,
    /// Versions or label files that failed, with the reason; on a reload the
    /// previous state of that model is kept.
    pub failed: Vec<(PathBuf, ModelError)>,
}

/// A set of models and versions, shared by every request.
#[derive(Debug)]
pub struct ModelRepository {
    root: PathBuf,
    single: bool,
    policy: VersionPolicy,
    models: ArcSwap<Snapshot>,
}

fn is_label(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl ModelRepository {
    /// Opens a repository and loads every model under `root`; fails on the
    /// first model that does not load, naming it.
    pub fn open(root: impl Into<PathBuf>, policy: VersionPolicy) -> Result<Self, ModelError> {
        let root = root.into();
        if !root.is_dir() {
            return Err(ModelError::NotFound { path: root });
        }
        let repo = ModelRepository {
            root,
            single: false,
            policy,
            models: ArcSwap::from_pointee(Snapshot::new()),
        };
        let mut report = repo.reload();
        if let Some((path, err)) = report.failed.drain(..).next() {
            return Err(match err {
                e @ (ModelError::Config { .. } | ModelError::NotFound { .. }) => e,
                e => ModelError::Config {
                    path,
                    detail: e.to_string(),
                },
            });
        }
        Ok(repo)
    }

    /// Serves one model file (name and version as [`Model::load`] gives
    /// them), loaded and warmed now. Such a repository has nothing to
    /// rescan: [`ModelRepository::reload`] reports nothing.
    pub fn single(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let model = Model::load(path.as_ref())?;
        model.warm()?;
        let mut served = ServedModel::default();
        let name = model.name().to_string();
        served.versions.insert(model.version(), Arc::new(model));
        Ok(ModelRepository {
            root: path.as_ref().to_path_buf(),
            single: true,
            policy: VersionPolicy::default(),
            models: ArcSwap::from_pointee(Snapshot::from([(name, served)])),
        })
    }

    /// Opens `path` as a repository when it is a directory, else as one
    /// model file.
    pub fn open_path(path: impl AsRef<Path>, policy: VersionPolicy) -> Result<Self, ModelError> {
        let path = path.as_ref();
        if path.is_dir() {
            ModelRepository::open(path, policy)
        } else {
            ModelRepository::single(path)
        }
    }

    /// The repository's root directory (the file, for a single model).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether this repository serves a single file (no rescans).
    pub fn is_single_file(&self) -> bool {
        self.single
    }

    /// Rescans the directory: loads (and warms) versions that appeared,
    /// unloads those that went away, re-reads labels, then swaps the new set
    /// in at once. A model that fails keeps what it had.
    pub fn reload(&self) -> LoadReport {
        let mut report = LoadReport::default();
        if self.single {
            return report;
        }
        let old = self.models.load_full();
        let mut next = Snapshot::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(source) => {
                report.failed.push((
                    self.root.clone(),
                    ModelError::Io {
                        path: self.root.clone(),
                        source,
                    },
                ));
                return report;
            }
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for dir in dirs {
            let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                continue;
            };
            let previous = old.get(&name);
            match self.load_model(&name, &dir, previous, &mut report) {
                Some(served) => {
                    next.insert(name, served);
                }
                None => {
                    if let Some(prev) = previous {
                        next.insert(name, prev.clone());
                    }
                }
            }
        }
        for (name, served) in old.iter() {
            for v in served.versions.keys() {
                if !next.get(name).is_some_and(|s| s.versions.contains_key(v)) {
                    report.unloaded.push((name.clone(), *v));
                }
            }
        }
        self.models.store(Arc::new(next));
        report
    }

    fn load_model(
        &self,
        name: &str,
        dir: &Path,
        previous: Option<&ServedModel>,
        report: &mut LoadReport,
    ) -> Option<ServedModel> {
        let mut on_disk: Vec<u64> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("model.onnx").is_file())
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()))
            .collect();
        on_disk.sort_unstable();
        let wanted: Vec<u64> = match &self.policy {
            VersionPolicy::Latest(n) => on_disk.iter().rev().take(*n).copied().collect(),
            VersionPolicy::All => on_disk.clone(),
            VersionPolicy::Specific(set) => on_disk
                .iter()
                .filter(|v| set.contains(v))
                .copied()
                .collect(),
        };
        let mut served = ServedModel::default();
        for v in wanted {
            if let Some(m) = previous.and_then(|p| p.versions.get(&v)) {
                served.versions.insert(v, m.clone());
                continue;
            }
            let path = dir.join(v.to_string()).join("model.onnx");
            let loaded = ModelConfig::for_model(&path).and_then(|c| {
                let m = Model::load_with(
                    &path,
                    name.to_string(),
                    v,
                    &c.map(|(c, _)| c).unwrap_or_default(),
                )?;
                m.warm()?;
                Ok(m)
            });
            match loaded {
                Ok(m) => {
                    served.versions.insert(v, Arc::new(m));
                    report.loaded.push((name.to_string(), v));
                }
                Err(e) => {
                    report.failed.push((path, e));
                    return None;
                }
            }
        }
        let labels_path = dir.join("labels.toml");
        if labels_path.is_file() {
            match read_labels(&labels_path, &served) {
                Ok(labels) => served.labels = labels,
                Err(e) => {
                    report.failed.push((labels_path, e));
                    return None;
                }
            }
        }
        Some(served)
    }

    /// Names of the models served.
    pub fn model_names(&self) -> Vec<String> {
        self.models.load().keys().cloned().collect()
    }

    /// The name of the one model served, if exactly one is.
    pub fn only_model_name(&self) -> Option<String> {
        let models = self.models.load();
        if models.len() == 1 {
            models.keys().next().cloned()
        } else {
            None
        }
    }

    /// One model's loaded versions and labels.
    pub fn served(&self, name: &str) -> Result<ServedModel, ModelError> {
        self.models
            .load()
            .get(name)
            .cloned()
            .ok_or_else(|| ModelError::UnknownModel(name.to_string()))
    }

    /// Resolves a model and version.
    pub fn get(&self, name: &str, spec: &VersionSpec) -> Result<Arc<Model>, ModelError> {
        let snapshot = self.models.load();
        let served = snapshot
            .get(name)
            .ok_or_else(|| ModelError::UnknownModel(name.to_string()))?;
        let version = match spec {
            VersionSpec::Latest => *served
                .versions
                .keys()
                .next_back()
                .ok_or_else(|| ModelError::NoVersion(name.to_string()))?,
            VersionSpec::Number(v) => *v,
            VersionSpec::Label(l) => {
                *served
                    .labels
                    .get(l)
                    .ok_or_else(|| ModelError::UnknownLabel {
                        name: name.to_string(),
                        label: l.clone(),
                    })?
            }
        };
        served
            .versions
            .get(&version)
            .cloned()
            .ok_or_else(|| ModelError::UnknownVersion {
                name: name.to_string(),
                version,
            })
    }
}

fn read_labels(path: &Path, served: &ServedModel) -> Result<BTreeMap<String, u64>, ModelError> {
    let err = |detail: String| ModelError::Config {
        path: path.to_path_buf(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let table: BTreeMap<String, i64> =
        toml::from_str(&text).map_err(|e| err(e.to_string().replace('\n', " ")))?;
    let mut labels = BTreeMap::new();
    for (label, v) in table {
        if !is_label(&label) {
            return Err(err(format!("label '{label}' must match [a-zA-Z0-9_]+")));
        }
        let v = u64::try_from(v)
            .map_err(|_| err(format!("label '{label}' points at negative version {v}")))?;
        if !served.versions.contains_key(&v) {
            return Err(err(format!(
                "label '{label}' points at version {v}, which is not loaded"
            )));
        }
        labels.insert(label, v);
    }
    Ok(labels)
}
