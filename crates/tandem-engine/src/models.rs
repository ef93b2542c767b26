//! The served models: a [`ModelRepository`] polled for new versions, the
//! feature schema of each loaded version, and a log of load events.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;
use tandem_core::{FeatureOverride, FeatureSchema, unix_seconds};
use tandem_model::{LoadReport, Model, ModelRepository, ServedModel, VersionSpec};

use crate::error::EngineError;

/// A load, unload or failure, for status pages and logs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelEvent {
    /// Unix seconds.
    pub at: f64,
    /// `loaded`, `unloaded` or `failed`.
    pub kind: &'static str,
    /// Model name (or the path that failed).
    pub model: String,
    /// Version, when known.
    pub version: Option<u64>,
    /// The error of a failure.
    pub error: Option<String>,
}

/// Feature schemas by model name, then version (looked up without building
/// a key per request).
type Schemas = HashMap<String, HashMap<u64, Option<Arc<FeatureSchema>>>>;

/// The models an engine serves.
pub struct Models {
    repo: Arc<ModelRepository>,
    overrides: BTreeMap<String, FeatureOverride>,
    utc_offset_secs: i64,
    default_model: Option<String>,
    schemas: ArcSwap<Schemas>,
    events: Mutex<VecDeque<ModelEvent>>,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Models")
            .field("root", &self.repo.root())
            .finish_non_exhaustive()
    }
}

const EVENTS_KEPT: usize = 100;

impl Models {
    /// Wraps a loaded repository. Every feature override must name an input
    /// of at least one model, and every model's schema must build.
    pub fn new(
        repo: ModelRepository,
        overrides: BTreeMap<String, FeatureOverride>,
        utc_offset_secs: i64,
        default_model: Option<String>,
    ) -> Result<Models, String> {
        let models = Models {
            repo: Arc::new(repo),
            overrides,
            utc_offset_secs,
            default_model,
            schemas: ArcSwap::from_pointee(Schemas::new()),
            events: Mutex::new(VecDeque::new()),
        };
        let names = models.repo.model_names();
        if names.is_empty() {
            return Err(format!(
                "no model found under {}",
                models.repo.root().display()
            ));
        }
        if let Some(d) = &models.default_model
            && !names.contains(d)
        {
            return Err(format!(
                "default_model '{d}' is not served (models: {})",
                names.join(", ")
            ));
        }
        let mut all_inputs = std::collections::BTreeSet::new();
        for name in &names {
            let served = models.repo.served(name).map_err(|e| e.to_string())?;
            for (v, m) in &served.versions {
                all_inputs.extend(m.metadata().feature_names.iter().cloned());
                models
                    .build_schema(m)
                    .map_err(|e| format!("model {name} version {v}: {e}"))?;
            }
        }
        if let Some(unknown) = models.overrides.keys().find(|k| !all_inputs.contains(*k)) {
            return Err(format!(
                "features.{unknown} is configured but no served model has an input of that name"
            ));
        }
        models.refresh_schemas();
        for name in &names {
            if let Ok(served) = models.repo.served(name) {
                for v in served.versions.keys() {
                    models.event("loaded", name.clone(), Some(*v), None);
                }
            }
        }
        Ok(models)
    }

    fn build_schema(&self, model: &Model) -> Result<Option<Arc<FeatureSchema>>, String> {
        let names = &model.metadata().feature_names;
        if names.is_empty() {
            return Ok(None);
        }
        let overrides: BTreeMap<String, FeatureOverride> = self
            .overrides
            .iter()
            .filter(|(k, _)| names.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        FeatureSchema::new(names, &overrides, self.utc_offset_secs)
            .map(|s| Some(Arc::new(s)))
            .map_err(|e| e.to_string())
    }

    fn refresh_schemas(&self) {
        let mut next = Schemas::new();
        for name in self.repo.model_names() {
            let Ok(served) = self.repo.served(&name) else {
                continue;
            };
            for (v, m) in &served.versions {
                let schema = match self.build_schema(m) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(model = %name, version = v, "feature schema: {e}");
                        None
                    }
                };
                next.entry(name.clone()).or_default().insert(*v, schema);
            }
        }
        self.schemas.store(Arc::new(next));
    }

    fn event(
        &self,
        kind: &'static str,
        model: String,
        version: Option<u64>,
        error: Option<String>,
    ) {
        if let Ok(mut ev) = self.events.lock() {
            if ev.len() == EVENTS_KEPT {
                ev.pop_front();
            }
            ev.push_back(ModelEvent {
                at: unix_seconds(std::time::SystemTime::now()),
                kind,
                model,
                version,
                error,
            });
        }
    }

    /// The repository.
    pub fn repository(&self) -> &ModelRepository {
        &self.repo
    }

    /// Names of the served models.
    pub fn names(&self) -> Vec<String> {
        self.repo.model_names()
    }

    /// One model's versions and labels.
    pub fn served(&self, name: &str) -> Result<ServedModel, EngineError> {
        self.repo.served(name).map_err(EngineError::from)
    }

    /// Recent load events, oldest first.
    pub fn events(&self) -> Vec<ModelEvent> {
        self.events
            .lock()
            .map(|e| e.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The model a request names, or the default one: the configured
    /// `default_model`, else the only model served.
    pub fn resolve_name(&self, name: Option<&str>) -> Result<String, EngineError> {
        if let Some(n) = name {
            return Ok(n.to_string());
        }
        if let Some(d) = &self.default_model {
            return Ok(d.clone());
        }
        if let Some(only) = self.repo.only_model_name() {
            return Ok(only);
        }
        let names = self.repo.model_names();
        match names.as_slice() {
            [only] => Ok(only.clone()),
            _ => Err(EngineError::InvalidInput(format!(
                "several models are served ({}); name one",
                names.join(", ")
            ))),
        }
    }

    /// A model version and its feature schema (`None` when the model has no
    /// feature names).
    pub fn get(
        &self,
        name: &str,
        spec: &VersionSpec,
    ) -> Result<(Arc<Model>, Option<Arc<FeatureSchema>>), EngineError> {
        let model = self.repo.get(name, spec)?;
        let schemas = self.schemas.load();
        if let Some(s) = schemas
            .get(model.name())
            .and_then(|v| v.get(&model.version()))
        {
            return Ok((model, s.clone()));
        }
        // Loaded after the last schema refresh (a reload in progress).
        let schema = self.build_schema(&model).ok().flatten();
        Ok((model, schema))
    }

    /// Rescans the repository (blocking: loads and warms new versions), then
    /// records and logs what changed.
    pub fn reload(&self) -> LoadReport {
        let report = self.repo.reload();
        if !report.loaded.is_empty() || !report.unloaded.is_empty() {
            self.refresh_schemas();
        }
        for (name, v) in &report.loaded {
            tracing::info!(model = %name, version = v, "model version loaded and warmed");
            self.event("loaded", name.clone(), Some(*v), None);
        }
        for (name, v) in &report.unloaded {
            tracing::info!(model = %name, version = v, "model version unloaded");
            self.event("unloaded", name.clone(), Some(*v), None);
        }
        for (path, e) in &report.failed {
            tracing::warn!(path = %path.display(), "model failed to load; the current version keeps serving: {e}");
            self.event(
                "failed",
                path.display().to_string(),
                None,
                Some(e.to_string()),
            );
        }
        report
    }
}
