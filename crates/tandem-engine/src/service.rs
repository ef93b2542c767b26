//! The request path every transport shares: the hybrid policy and its
//! degradation chain for entity requests, and plain tensor inference for the
//! TF Serving and KServe protocols.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tandem_core::digest::feature_digest;
use tandem_core::{
    AnswerSource, FeatureBatch, FeatureRow, FeatureSchema, HealthThresholds, HybridPolicy, Mode,
    PredictionRecord, PredictionSource, StoredSlots, TtlPolicy, unix_seconds,
};
use tandem_model::{Model, OutputTensor, VersionSpec};
use tandem_store::{
    FeatureStore, MemoryTier, MemoryTierConfig, PredictionEntry, Store, StoreError, Tier,
    TierLookup, TieredPredictions,
};

use crate::activity::{Activity, ActivityConfig};
use crate::batcher::{Batcher, BatcherConfig, Output, Runner, Want};
use crate::coalesce::Coalescing;
use crate::error::EngineError;
use crate::models::Models;
use crate::stats::Stats;
use crate::telemetry;
use crate::writeback::WriteBack;

/// Engine settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// The policy of requests that do not say otherwise.
    pub policy: HybridPolicy,
    /// TTLs of stored predictions.
    pub ttl: TtlPolicy,
    /// The prediction answered when nothing else can (flagged `default`);
    /// `None`: such requests fail with 503.
    pub default_prediction: Option<f64>,
    /// The model request batcher.
    pub batcher: BatcherConfig,
    /// Health thresholds.
    pub health: HealthThresholds,
    /// Length of the health window in seconds.
    pub health_window_secs: u64,
    /// Most entities in one request.
    pub max_entities: usize,
    /// Time allowed for one tensor inference request.
    pub infer_deadline: Duration,
    /// Room in the store write-back queue.
    pub write_queue: usize,
    /// A real-time prediction equal to the one this server wrote back for
    /// the entity less than this long before (same value, model, version
    /// and input digest) is not written again, so that the stored record's
    /// `computed_at` lags by less than this; zero writes every one.
    pub rewrite_unchanged_after: Duration,
    /// Whether a stored prediction made by an older version of the model is
    /// stale.
    pub stale_on_new_version: bool,
    /// The memory tier.
    pub memory: MemoryTierConfig,
    /// Store reads of concurrent requests merged into one, with at most
    /// this many merged reads in flight per kind (0: every request reads on
    /// its own).
    pub store_reads_in_flight: usize,
    /// Activity tracking (entities asked for, for `tandem warm`).
    pub activity: ActivityConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            policy: HybridPolicy::default(),
            ttl: TtlPolicy::default(),
            default_prediction: None,
            batcher: BatcherConfig::default(),
            health: HealthThresholds::default(),
            health_window_secs: 60,
            max_entities: 1000,
            infer_deadline: Duration::from_secs(1),
            write_queue: 65_536,
            rewrite_unchanged_after: Duration::from_secs(1),
            stale_on_new_version: true,
            memory: MemoryTierConfig::default(),
            store_reads_in_flight: 2,
            activity: ActivityConfig::default(),
        }
    }
}

/// One entity of a request, with optional context features.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntityQuery {
    /// Entity id.
    pub entity: String,
    /// Feature values sent by the caller (override stored ones).
    pub context: Option<BTreeMap<String, f64>>,
}

/// An entity request.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictRequest {
    /// Model name; `None`: the default model.
    pub model: Option<String>,
    /// Which version.
    pub version: VersionSpec,
    /// The entities.
    pub entities: Vec<EntityQuery>,
    /// Mode; `None`: the configured one.
    pub mode: Option<Mode>,
    /// Staleness bound; `None`: the configured one.
    pub max_staleness: Option<Duration>,
    /// Deadline of the real-time path; `None`: the configured one.
    pub deadline: Option<Duration>,
}

/// The answer for one entity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    /// Entity id.
    #[serde(rename = "entity_id")]
    pub entity: String,
    /// The prediction.
    pub prediction: f64,
    /// Every value of a vector prediction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<f64>>,
    /// Where it came from.
    pub source: AnswerSource,
    /// Model name.
    pub model: Arc<str>,
    /// Model version.
    pub version: u64,
    /// When it was computed (Unix seconds).
    pub computed_at: f64,
    /// Its age at answer time in milliseconds.
    pub age_ms: u64,
    /// What went wrong on the way, if anything.
    pub warnings: Vec<String>,
}

/// A tensor inference result.
#[derive(Debug, Clone)]
pub struct Inferred {
    /// The model version that ran.
    pub model: Arc<Model>,
    /// Every output.
    pub outputs: Vec<OutputTensor>,
}

/// The service.
pub struct Engine {
    config: EngineConfig,
    models: Models,
    tiers: TieredPredictions,
    store: Arc<dyn Store>,
    /// The feature store when it is not `store` (for readiness).
    feature_backend: Option<Arc<dyn Store>>,
    features: Arc<dyn FeatureStore>,
    batcher: Batcher,
    writer: WriteBack,
    activity: Activity,
    stats: Arc<Stats>,
    jobs: crate::jobs::JobBoard,
    in_flight: tandem_core::shard::UpDown,
    /// Whether the store was asked to report changes to the memory tier.
    tracked: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store.describe())
            .finish_non_exhaustive()
    }
}

/// Counts a request out when its answer (or error) is returned.
struct InFlight<'a>(&'a tandem_core::shard::UpDown);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.add(-1);
    }
}

/// What the chain knows about one entity while answering.
#[derive(Default)]
struct Pending {
    stale: Option<PredictionRecord>,
    reasons: Vec<String>,
    warnings: Vec<String>,
    /// Whether the feature store answered that it holds nothing for the
    /// entity (and no context was given): an unknown entity unless a
    /// prediction is stored.
    unknown: bool,
    /// The model has no feature names, so nothing could be computed.
    no_schema: bool,
    overloaded: bool,
}

impl Engine {
    /// Builds the engine; must run inside a tokio runtime (it starts the
    /// store writer and read coalescers). Features are read from
    /// `features`, or from `store` when `None`.
    pub fn new(
        config: EngineConfig,
        models: Models,
        store: Arc<dyn Store>,
        features: Option<Arc<dyn Store>>,
    ) -> Engine {
        let stats = Arc::new(Stats::new(config.health_window_secs, config.health));
        let memory = MemoryTier::new(config.memory);
        // Records read from a store that reports changes are kept until
        // they change rather than for `max_ttl`.
        let tracked = config.memory.tracked_max_ttl > config.memory.max_ttl
            && store.watch_predictions(memory.change_sink());
        let n = config.store_reads_in_flight;
        let reads: Arc<dyn tandem_store::PredictionStore> = if n > 0 {
            Arc::new(Coalescing::new(store.clone(), n))
        } else {
            store.clone()
        };
        let feature_backend = features.clone();
        let features: Arc<dyn FeatureStore> = match (features, n) {
            (Some(f), 0) => f,
            (Some(f), n) => Arc::new(Coalescing::new(f, n)),
            (None, 0) => store.clone(),
            (None, n) => Arc::new(Coalescing::new(store.clone(), n)),
        };
        let tiers = TieredPredictions::new(memory, reads);
        let writer = WriteBack::start(store.clone(), config.write_queue, stats.clone());
        let batcher = Batcher::start(config.batcher);
        let activity = Activity::start(store.clone(), config.activity);
        Engine {
            config,
            models,
            tiers,
            store,
            feature_backend,
            features,
            batcher,
            writer,
            activity,
            stats,
            jobs: crate::jobs::JobBoard::default(),
            in_flight: tandem_core::shard::UpDown::default(),
            tracked,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The served models.
    pub fn models(&self) -> &Models {
        &self.models
    }

    /// Answer counts and health.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The tiered prediction reads (for their counters).
    pub fn tiers(&self) -> &TieredPredictions {
        &self.tiers
    }

    /// Loads into memory the stored predictions of the `k` entities with
    /// the most requests over `lookback` (the activity log); returns how
    /// many were stored. For a replica that starts: it then answers its
    /// most active entities from memory from the first request.
    pub async fn preload_memory(&self, k: usize, lookback: Duration) -> Result<usize, StoreError> {
        let top = self
            .store
            .top_active(k, lookback, SystemTime::now())
            .await?;
        // Records read before the store reports changes keep `max_ttl`
        // only: give the reporting connection a moment to come up.
        let waited = std::time::Instant::now();
        while self.tracked
            && !self.tiers.memory().tracking()
            && waited.elapsed() < Duration::from_secs(2)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ids: Vec<String> = top.into_iter().map(|a| a.entity).collect();
        self.tiers.preload(&ids).await
    }

    /// The model batcher (for its queue depth).
    pub fn batcher(&self) -> &Batcher {
        &self.batcher
    }

    /// Real-time predictions waiting to be written to the store.
    pub fn pending_writes(&self) -> usize {
        self.writer.pending()
    }

    /// The store, described.
    pub fn store_description(&self) -> String {
        self.store.describe()
    }

    /// Whether the service can answer: a model is loaded (models are warmed
    /// before they are served) and every store answers a ping within
    /// `timeout`.
    pub async fn ready(&self, timeout: Duration) -> Result<(), String> {
        if self.models.names().is_empty() {
            return Err("no model loaded".into());
        }
        let stores = std::iter::once(("store", &self.store))
            .chain(self.feature_backend.iter().map(|f| ("feature store", f)));
        for (what, store) in stores {
            match tokio::time::timeout(timeout, store.ping()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("{what}: {e}")),
                Err(_) => {
                    return Err(format!(
                        "{what} {} did not answer a ping within {timeout:?}",
                        store.describe()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Stops taking store writes and activity, and waits for the queued
    /// ones.
    pub async fn flush(&self) {
        self.writer.flush().await;
        self.activity.flush().await;
    }

    /// Background jobs of this process (scheduled warm and refresh).
    pub fn jobs(&self) -> &crate::jobs::JobBoard {
        &self.jobs
    }

    /// The prediction store (scheduled jobs write through it).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// The feature store's backend (the prediction store unless separate).
    pub fn feature_backend(&self) -> Arc<dyn Store> {
        self.feature_backend
            .clone()
            .unwrap_or_else(|| self.store.clone())
    }

    /// Whether requests are being served or queued for the model right
    /// now: background jobs yield while it holds.
    pub fn busy(&self) -> bool {
        self.in_flight.get() > 0 || self.batcher.queued() > 0
    }

    /// Activity tracking counts.
    pub fn activity(&self) -> crate::activity::ActivityCounts {
        self.activity.counts()
    }

    /// Answers an entity request: one result per entity, in order. The
    /// outer error is for the request as a whole (bad input, unknown model).
    pub async fn predict(
        &self,
        req: PredictRequest,
    ) -> Result<Vec<Result<Answer, EngineError>>, EngineError> {
        self.in_flight.add(1);
        let _done = InFlight(&self.in_flight);
        self.validate(&req)?;
        let name = self.models.resolve_name(req.model.as_deref())?;
        let (model, schema) = self.models.get(&name, &req.version)?;
        let explicit_version = !matches!(req.version, VersionSpec::Latest);
        let policy = HybridPolicy {
            mode: req.mode.unwrap_or(self.config.policy.mode),
            max_staleness: req
                .max_staleness
                .unwrap_or(self.config.policy.max_staleness),
            deadline: req.deadline.unwrap_or(self.config.policy.deadline),
        };
        let started = Instant::now();
        let deadline_at = tokio::time::Instant::from_std(started + policy.deadline);
        let now = SystemTime::now();
        let n = req.entities.len();
        if n == 1 && policy.mode != Mode::RealtimeOnly {
            // One entity whose fresh prediction is in memory (most
            // requests under load) is answered without the lists and the
            // tier walk of the general path below; anything else goes on
            // to it, with nothing counted twice.
            let t = Instant::now();
            let served = self.tiers.fresh_in_memory(
                &req.entities[0].entity,
                policy.max_staleness,
                now,
                |r| matches!(self.judge(r, &model, explicit_version), Verdict::Serve),
            );
            if let Some(mut record) = served {
                telemetry::stage("lookup", t.elapsed());
                self.activity
                    .record(std::slice::from_ref(&req.entities[0].entity));
                if record.model.is_empty() {
                    record.model = Arc::from(model.name());
                }
                let entity = req.entities.into_iter().next().map(|e| e.entity);
                let a = Answer {
                    entity: entity.unwrap_or_default(),
                    prediction: record.prediction,
                    age_ms: u64::try_from(record.age(now).as_millis()).unwrap_or(u64::MAX),
                    values: record.values,
                    source: AnswerSource::Memory,
                    model: record.model,
                    version: record.version,
                    computed_at: record.timestamp,
                    warnings: Vec::new(),
                };
                self.stats.answer(a.source);
                telemetry::answer(a.source, a.age_ms);
                return Ok(vec![Ok(a)]);
            }
        }
        let ids: Vec<String> = req.entities.iter().map(|e| e.entity.clone()).collect();
        self.activity.record(&ids);
        let mut answers: Vec<Option<Result<Answer, EngineError>>> = vec![None; n];
        let mut pending: Vec<Pending> = (0..n).map(|_| Pending::default()).collect();

        let look_up = |pending: &mut Vec<Pending>,
                       answers: &mut Vec<Option<Result<Answer, EngineError>>>,
                       found: Vec<TierLookup>| {
            for (i, l) in found.into_iter().enumerate() {
                let p = &mut pending[i];
                match l {
                    TierLookup::Fresh { record, tier } => {
                        match self.judge(&record, &model, explicit_version) {
                            Verdict::Serve => {
                                let mut record = record;
                                if record.model.is_empty() {
                                    record.model = Arc::from(model.name());
                                }
                                let source = match tier {
                                    Tier::Memory => AnswerSource::Memory,
                                    Tier::Store => AnswerSource::Store,
                                };
                                answers[i] =
                                    Some(Ok(answer(&ids[i], &record, source, now, vec![])));
                            }
                            Verdict::Stale(why) => {
                                p.warnings.push(why);
                                p.stale = Some(record);
                            }
                            Verdict::Ignore => {}
                        }
                    }
                    TierLookup::Stale { record, .. } => {
                        match self.judge(&record, &model, explicit_version) {
                            Verdict::Serve | Verdict::Stale(_) => p.stale = Some(record),
                            Verdict::Ignore => {}
                        }
                    }
                    TierLookup::Miss => {}
                    TierLookup::Failed(e) => {
                        p.reasons.push(format!("prediction lookup failed: {e}"));
                    }
                }
            }
        };

        if policy.mode != Mode::RealtimeOnly {
            let t = Instant::now();
            let found = self.tiers.get(&ids, policy.max_staleness, now).await;
            telemetry::stage("lookup", t.elapsed());
            for l in &found {
                if let TierLookup::Failed(e) = l {
                    telemetry::error(if e.is_transient() {
                        "store_unavailable"
                    } else {
                        "store_corrupt"
                    });
                }
            }
            look_up(&mut pending, &mut answers, found);
        }

        let need: Vec<usize> = (0..n).filter(|&i| answers[i].is_none()).collect();
        if policy.mode != Mode::BatchOnly && !need.is_empty() {
            self.compute(
                &model,
                schema.as_ref(),
                &req.entities,
                &need,
                now,
                deadline_at,
                &mut answers,
                &mut pending,
            )
            .await;
        }

        // realtime_only looks stored predictions up only when computing failed.
        if policy.mode == Mode::RealtimeOnly {
            let failed: Vec<usize> = (0..n).filter(|&i| answers[i].is_none()).collect();
            if !failed.is_empty() {
                let ids_failed: Vec<String> = failed.iter().map(|&i| ids[i].clone()).collect();
                let found = self.tiers.get(&ids_failed, policy.max_staleness, now).await;
                let mut sub_pending: Vec<Pending> =
                    failed.iter().map(|_| Pending::default()).collect();
                let mut sub_answers: Vec<Option<Result<Answer, EngineError>>> =
                    vec![None; failed.len()];
                look_up(&mut sub_pending, &mut sub_answers, found);
                for (k, &i) in failed.iter().enumerate() {
                    let sp = &mut sub_pending[k];
                    let p = &mut pending[i];
                    p.reasons.append(&mut sp.reasons);
                    p.warnings.append(&mut sp.warnings);
                    p.stale = sp.stale.take().or_else(|| match sub_answers[k].take() {
                        // A fresh stored prediction is still only a
                        // fallback when real time was asked for.
                        Some(Ok(a)) => Some(PredictionRecord {
                            prediction: a.prediction,
                            timestamp: a.computed_at,
                            values: a.values,
                            model: a.model,
                            version: a.version,
                            source: PredictionSource::Batch,
                            run_id: None,
                            digest: None,
                            inputs: None,
                        }),
                        _ => None,
                    });
                }
            }
        }

        let out: Vec<Result<Answer, EngineError>> = answers
            .into_iter()
            .zip(pending)
            .enumerate()
            .map(|(i, (a, p))| match a {
                Some(a) => a,
                None => self.fall_back(&ids[i], &model, p, now, policy.mode),
            })
            .collect();
        for a in &out {
            match a {
                Ok(a) => {
                    self.stats.answer(a.source);
                    telemetry::answer(a.source, a.age_ms);
                }
                Err(_) => self.stats.error(),
            }
        }
        Ok(out)
    }

    fn validate(&self, req: &PredictRequest) -> Result<(), EngineError> {
        if req.entities.is_empty() {
            return Err(EngineError::InvalidInput("no entities given".into()));
        }
        if req.entities.len() > self.config.max_entities {
            return Err(EngineError::InvalidInput(format!(
                "{} entities in one request; the limit is {}",
                req.entities.len(),
                self.config.max_entities
            )));
        }
        for e in &req.entities {
            if e.entity.is_empty() || e.entity.len() > 512 {
                return Err(EngineError::InvalidInput(format!(
                    "entity ids must be 1 to 512 bytes long (got {} bytes)",
                    e.entity.len()
                )));
            }
            if let Some(ctx) = &e.context
                && let Some((k, v)) = ctx.iter().find(|(_, v)| !v.is_finite())
            {
                return Err(EngineError::InvalidInput(format!(
                    "context feature '{k}' of entity '{}' is {v}; context values must be finite numbers",
                    e.entity
                )));
            }
        }
        Ok(())
    }

    fn judge(&self, record: &PredictionRecord, model: &Model, explicit: bool) -> Verdict {
        verdict(
            record,
            model.name(),
            model.version(),
            explicit,
            self.config.stale_on_new_version,
        )
    }

    #[expect(clippy::too_many_arguments, reason = "one private step of predict")]
    async fn compute(
        &self,
        model: &Arc<Model>,
        schema: Option<&Arc<FeatureSchema>>,
        entities: &[EntityQuery],
        need: &[usize],
        now: SystemTime,
        deadline_at: tokio::time::Instant,
        answers: &mut [Option<Result<Answer, EngineError>>],
        pending: &mut [Pending],
    ) {
        let Some(schema) = schema else {
            let e = EngineError::NoSchema(model.name().to_string());
            for &i in need {
                pending[i].no_schema = true;
                pending[i].reasons.push(e.to_string());
            }
            return;
        };
        // A timer fires on its next tick, not at once: a deadline already
        // past must not leave time for a fast store or model.
        if tokio::time::Instant::now() >= deadline_at {
            for &i in need {
                pending[i]
                    .reasons
                    .push("deadline passed before real-time compute started".into());
            }
            return;
        }
        // One timer for both stages (feature fetch, model), not one each.
        let expiry = tokio::time::sleep_until(deadline_at);
        tokio::pin!(expiry);
        let stored: Option<Vec<Result<FeatureRow, StoreError>>> = if schema.needs_store() {
            let ids: Vec<String> = need.iter().map(|&i| entities[i].entity.clone()).collect();
            let t = Instant::now();
            let got = within(expiry.as_mut(), self.features.get_features(&ids)).await;
            telemetry::stage("feature_fetch", t.elapsed());
            match got {
                Ok(Ok(rows)) => Some(rows),
                Ok(Err(e)) => {
                    telemetry::error("store_unavailable");
                    for &i in need {
                        pending[i]
                            .reasons
                            .push(format!("feature lookup failed: {e}"));
                    }
                    return;
                }
                Err(_) => {
                    telemetry::error("timeout");
                    for &i in need {
                        pending[i]
                            .reasons
                            .push("deadline passed while reading features".into());
                    }
                    return;
                }
            }
        } else {
            None
        };
        let width = schema.width();
        let mut values: Vec<f32> = Vec::with_capacity(width * need.len());
        let mut rows: Vec<usize> = Vec::with_capacity(need.len());
        let mut missing = Vec::new();
        let mut slots = take_slots(schema);
        for (k, &i) in need.iter().enumerate() {
            let q = &entities[i];
            let row = match stored.as_ref().map(|s| &s[k]) {
                None => None,
                Some(Ok(r)) => Some(r),
                Some(Err(e)) if e.is_not_found() => None,
                Some(Err(e)) => {
                    pending[i]
                        .reasons
                        .push(format!("stored features unreadable: {e}"));
                    continue;
                }
            };
            if row.is_none() && q.context.is_none() && schema.needs_store() {
                pending[i].unknown = true;
                pending[i].reasons.push("no stored features".into());
                continue;
            }
            missing.clear();
            schema.assemble(
                row,
                q.context.as_ref(),
                now,
                &mut slots,
                &mut values,
                &mut missing,
            );
            if !missing.is_empty() {
                self.stats.defaults_filled(missing.len());
                pending[i].warnings.push(format!(
                    "{} feature(s) missing, schema default used: {}",
                    missing.len(),
                    missing.join(", ")
                ));
            }
            rows.push(i);
        }
        put_slots(schema, slots);
        if rows.is_empty() {
            return;
        }
        let runner: Arc<dyn Runner> = model.clone();
        let done = within(
            expiry.as_mut(),
            self.batcher
                .submit(runner, values.clone(), Want::Predictions),
        )
        .await;
        let predictions = match done {
            Ok(Ok(done)) => match done.output {
                Output::Predictions(p) => {
                    telemetry::stage("queue_wait", done.queue_wait);
                    p
                }
                Output::Outputs(_) => {
                    for &i in &rows {
                        pending[i]
                            .reasons
                            .push("model returned the wrong kind".into());
                    }
                    return;
                }
            },
            Ok(Err(e)) => {
                telemetry::error(telemetry::reason(&e));
                for &i in &rows {
                    if matches!(e, EngineError::Overloaded { .. }) {
                        pending[i].overloaded = true;
                    }
                    pending[i].reasons.push(e.to_string());
                }
                return;
            }
            Err(_) => {
                telemetry::error("timeout");
                for &i in &rows {
                    pending[i]
                        .reasons
                        .push("deadline passed before the model answered".into());
                }
                return;
            }
        };
        let name: Arc<str> = Arc::from(model.name());
        let ts = unix_seconds(now);
        let mut entries = Vec::with_capacity(rows.len());
        for (k, &i) in rows.iter().enumerate() {
            let row = predictions.row(k);
            let record = PredictionRecord {
                prediction: f64::from(row[0]),
                timestamp: ts,
                values: (row.len() > 1).then(|| row.iter().map(|&v| f64::from(v)).collect()),
                model: name.clone(),
                version: model.version(),
                source: PredictionSource::Realtime,
                run_id: None,
                digest: Some(Arc::from(feature_digest(
                    &values[k * width..(k + 1) * width],
                ))),
                inputs: None,
            };
            let warnings = std::mem::take(&mut pending[i].warnings);
            answers[i] = Some(Ok(answer(
                &entities[i].entity,
                &record,
                AnswerSource::Realtime,
                now,
                warnings,
            )));
            entries.push(PredictionEntry {
                entity: entities[i].entity.clone(),
                record,
                ttl: self.config.ttl.realtime,
            });
        }
        let memory = self.tiers.memory();
        let after = self.config.rewrite_unchanged_after;
        for e in entries {
            // A hot entity recomputed on unchanged features: its last write
            // is recent enough.
            if !after.is_zero() && memory.holds_recent(&e.entity, &e.record, after) {
                self.stats.write_unchanged();
                continue;
            }
            memory.insert(&e.entity, e.record.clone(), e.ttl);
            if !self.writer.push(e) {
                self.stats.write_dropped();
            }
        }
    }

    fn fall_back(
        &self,
        entity: &str,
        model: &Model,
        p: Pending,
        now: SystemTime,
        mode: Mode,
    ) -> Result<Answer, EngineError> {
        let mut warnings = p.warnings;
        warnings.extend(p.reasons.iter().cloned());
        if let Some(record) = p.stale {
            warnings.push(format!(
                "stale: stored prediction is {} ms old",
                record.age(now).as_millis()
            ));
            return Ok(answer(entity, &record, AnswerSource::Stale, now, warnings));
        }
        if p.unknown {
            return Err(EngineError::UnknownEntity(entity.to_string()));
        }
        if p.no_schema {
            // A configuration problem, not a degraded moment: say so.
            return Err(EngineError::NoSchema(model.name().to_string()));
        }
        if p.overloaded {
            return Err(EngineError::Overloaded {
                queued: self.batcher.capacity(),
            });
        }
        match self.config.default_prediction {
            Some(d) => {
                warnings.push("default prediction: nothing better was available".into());
                let record = PredictionRecord {
                    prediction: d,
                    timestamp: unix_seconds(now),
                    values: None,
                    model: Arc::from(model.name()),
                    version: model.version(),
                    source: PredictionSource::Default,
                    run_id: None,
                    digest: None,
                    inputs: None,
                };
                Ok(answer(
                    entity,
                    &record,
                    AnswerSource::Default,
                    now,
                    warnings,
                ))
            }
            None => Err(EngineError::NoPrediction {
                entity: entity.to_string(),
                reason: if warnings.is_empty() {
                    format!("nothing stored and mode {} does not compute", mode.as_str())
                } else {
                    warnings.join("; ")
                },
            }),
        }
    }

    /// Runs raw rows through a model (TF Serving and KServe requests) via
    /// the batcher, within `deadline` (`None`: the configured one).
    pub async fn infer(
        &self,
        model: &str,
        version: &VersionSpec,
        batch: FeatureBatch,
        deadline: Option<Duration>,
    ) -> Result<Inferred, EngineError> {
        let model = self.models.repository().get(model, version)?;
        self.infer_with(model, batch, deadline).await
    }

    /// [`Self::infer`] on a model version the caller already holds: a
    /// handler that resolved the version to check the request against it
    /// runs that same version, even if a newer one has been swapped in and
    /// this one unloaded meanwhile (the `Arc` keeps it alive until done).
    pub async fn infer_with(
        &self,
        model: Arc<Model>,
        batch: FeatureBatch,
        deadline: Option<Duration>,
    ) -> Result<Inferred, EngineError> {
        self.in_flight.add(1);
        let _done = InFlight(&self.in_flight);
        self.stats.infer();
        if batch.width() != model.width() {
            return Err(EngineError::InvalidInput(format!(
                "the model takes {} features per row, got {}",
                model.width(),
                batch.width()
            )));
        }
        if batch.rows() == 0 {
            return Err(EngineError::InvalidInput("no rows given".into()));
        }
        let deadline = deadline.unwrap_or(self.config.infer_deadline);
        let runner: Arc<dyn Runner> = model.clone();
        let done = tokio::time::timeout(
            deadline,
            self.batcher
                .submit(runner, batch.into_values(), Want::Outputs),
        )
        .await
        .map_err(|_| EngineError::DeadlineExceeded(deadline))
        .and_then(|r| r)
        .inspect_err(|e| telemetry::error(telemetry::reason(e)))?;
        telemetry::stage("queue_wait", done.queue_wait);
        match done.output {
            Output::Outputs(outputs) => Ok(Inferred { model, outputs }),
            Output::Predictions(_) => {
                Err(EngineError::Model("model returned the wrong kind".into()))
            }
        }
    }
}

/// How many schemas' slots each thread keeps.
const SLOT_CACHE: usize = 8;

thread_local! {
    /// Where each schema's stored features sit in the rows this thread
    /// decodes (one list of names per feature table; see
    /// [`StoredSlots`]), kept across requests so that the names are looked
    /// up once, not once per request.
    static SLOTS: std::cell::RefCell<Vec<(Arc<FeatureSchema>, StoredSlots)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// This thread's slots for `schema` (empty the first time).
fn take_slots(schema: &Arc<FeatureSchema>) -> StoredSlots {
    SLOTS.with_borrow_mut(|cache| {
        cache
            .iter_mut()
            .find(|(s, _)| Arc::ptr_eq(s, schema))
            .map(|(_, slots)| std::mem::take(slots))
            .unwrap_or_default()
    })
}

/// Keeps `slots` for the next request to `schema` on this thread.
fn put_slots(schema: &Arc<FeatureSchema>, slots: StoredSlots) {
    SLOTS.with_borrow_mut(|cache| {
        if let Some(entry) = cache.iter_mut().find(|(s, _)| Arc::ptr_eq(s, schema)) {
            entry.1 = slots;
            return;
        }
        if cache.len() == SLOT_CACHE {
            cache.remove(0);
        }
        cache.push((schema.clone(), slots));
    });
}

/// `work`'s output, or `Err` when `expiry` comes first (a deadline shared by
/// several steps: one timer however many steps wait on it).
async fn within<F: std::future::Future>(
    expiry: std::pin::Pin<&mut tokio::time::Sleep>,
    work: F,
) -> Result<F::Output, ()> {
    tokio::select! {
        biased;
        out = work => Ok(out),
        () = expiry => Err(()),
    }
}

/// What a stored record is worth for a request to `model` `version`.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Serve it (if fresh by age).
    Serve,
    /// Only a stale fallback, for the reason given.
    Stale(String),
    /// Another model's prediction: not an answer at all.
    Ignore,
}

/// Judges a stored record: a record of another model is ignored; one of
/// another version is stale when the request named a version, or when it is
/// older than the served one and `stale_on_new_version`; a record with no
/// model or version (written by another tool) is served.
fn verdict(
    record: &PredictionRecord,
    model: &str,
    version: u64,
    explicit: bool,
    stale_on_new_version: bool,
) -> Verdict {
    if !record.model.is_empty() && &*record.model != model {
        return Verdict::Ignore;
    }
    if record.version == 0 || record.version == version {
        return Verdict::Serve;
    }
    if explicit || (stale_on_new_version && record.version < version) {
        return Verdict::Stale(format!(
            "stored prediction was made by version {}, not {version}",
            record.version
        ));
    }
    Verdict::Serve
}

fn answer(
    entity: &str,
    record: &PredictionRecord,
    source: AnswerSource,
    now: SystemTime,
    warnings: Vec<String>,
) -> Answer {
    Answer {
        entity: entity.to_string(),
        prediction: record.prediction,
        values: record.values.clone(),
        source,
        model: record.model.clone(),
        version: record.version,
        computed_at: record.timestamp,
        age_ms: u64::try_from(record.age(now).as_millis()).unwrap_or(u64::MAX),
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_version_still_runs_after_a_newer_one_unloads_it() {
        // A protocol handler resolves the version, checks the request
        // against it, then runs it; a swap in between must not fail it.
        let dir = tempfile::tempdir().unwrap();
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models");
        let add = |version: u64, fixture: &str| {
            let to = dir.path().join("repo/churn").join(version.to_string());
            std::fs::create_dir_all(&to).unwrap();
            std::fs::copy(
                fixtures.join(fixture).join("1/model.onnx"),
                to.join("model.onnx"),
            )
            .unwrap();
        };
        add(1, "xgboost_regressor");
        let repo = tandem_model::ModelRepository::open(
            dir.path().join("repo"),
            tandem_model::VersionPolicy::default(),
        )
        .unwrap();
        let models = Models::new(repo, BTreeMap::new(), 0, None).unwrap();
        let store = tandem_store::open(dir.path().join("s.redb").to_str().unwrap()).unwrap();
        let engine = Engine::new(EngineConfig::default(), models, store, None);
        let held = engine
            .models()
            .repository()
            .get("churn", &VersionSpec::Latest)
            .unwrap();
        assert_eq!(held.version(), 1);
        add(2, "lightgbm_regressor");
        let report = engine.models().reload();
        assert_eq!(report.unloaded, vec![("churn".to_string(), 1)]);
        // Asked for by number, version 1 is gone ...
        let one = FeatureBatch::new(vec![0.5; 8], 8).unwrap();
        let by_number = engine.infer("churn", &VersionSpec::Number(1), one, None);
        assert!(
            matches!(by_number.await, Err(EngineError::UnknownVersion(_))),
            "version 1 should be unloaded"
        );
        // ... but the handler that holds it runs it.
        let batch = FeatureBatch::new(vec![0.5; 16], 8).unwrap();
        let want = held.predict(&batch).unwrap();
        let got = engine.infer_with(held.clone(), batch, None).await.unwrap();
        assert_eq!(got.model.version(), 1);
        let tandem_model::OutputData::F32(values) = &got.outputs[0].data else {
            panic!("float output expected: {:?}", got.outputs[0]);
        };
        assert_eq!(&values[..], want.values());
    }

    fn record(model: &str, version: u64) -> PredictionRecord {
        PredictionRecord {
            prediction: 1.0,
            timestamp: 0.0,
            values: None,
            model: Arc::from(model),
            version,
            source: PredictionSource::Batch,
            run_id: None,
            digest: None,
            inputs: None,
        }
    }

    #[test]
    fn stored_records_are_judged_by_model_and_version() {
        assert_eq!(
            verdict(&record("churn", 3), "churn", 3, false, true),
            Verdict::Serve
        );
        assert_eq!(
            verdict(&record("fraud", 3), "churn", 3, false, true),
            Verdict::Ignore
        );
        // Reference-design records carry neither.
        assert_eq!(
            verdict(&record("", 0), "churn", 3, false, true),
            Verdict::Serve
        );
        // An older version: stale by default, served when configured so.
        assert!(
            matches!(verdict(&record("churn", 2), "churn", 3, false, true), Verdict::Stale(w) if w.contains("version 2"))
        );
        assert_eq!(
            verdict(&record("churn", 2), "churn", 3, false, false),
            Verdict::Serve
        );
        // A newer version (a replica ahead of this one) is served...
        assert_eq!(
            verdict(&record("churn", 4), "churn", 3, false, true),
            Verdict::Serve
        );
        // ...unless the request named the version.
        assert!(matches!(
            verdict(&record("churn", 4), "churn", 3, true, true),
            Verdict::Stale(_)
        ));
    }
}
