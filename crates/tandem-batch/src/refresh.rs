//! `tandem refresh`: rescore only the entities that need it. The current
//! features come from the input (Parquet or CSV, as for `tandem batch`);
//! each entity's stored prediction is read and the entity is rescored when
//! it passes every filter and meets any reason:
//!
//! - filter `active_within`: asked for in that window (the activity log);
//! - reason `missing`: no stored prediction;
//! - reason `model_changed`: made by another model or version;
//! - reason `older`: older than `older_than`;
//! - reason `changed`: its features moved more than `changed_threshold`
//!   (L2) from those the prediction was computed from. An identical
//!   digest means no change, exactly; otherwise the distance is taken to
//!   the inputs the record keeps (half floats,
//!   [`tandem_core::record::pack_inputs`]); a record without them (written
//!   before, or by the real-time path) counts as changed.
//!
//! With a digest index ([`crate::index`], `--index`), entities it shows
//! unchanged (same input digest, not expired, not too old, same model when
//! `model_changed`) are cleared from the input alone. The index also keeps
//! the inputs each record was made from (the same half floats), so the
//! others are judged from it too: too old, or moved more than the
//! threshold, is rescored, moved less is kept, and none of them is read
//! from the store. Only entities the index does not know (new, expired,
//! inputs not kept) and every entity of a `resume` (which needs the run id
//! of its record) are read from the store.
//!
//! Rescored records carry the run id; `resume` skips entities already
//! rescored by it, so an interrupted run finishes where it stopped, and a
//! rerun after success finds nothing left to do (idempotent).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::Schema;
use futures::StreamExt;
use serde::Serialize;
use tandem_core::digest::{feature_digest, id_hash};
use tandem_core::record::{
    half_bytes, half_distance, l2_distance, pack_inputs, unix_seconds, unpack_inputs,
};
use tandem_core::{FeatureBatch, PredictionRecord, PredictionSource};
use tandem_model::Model;
use tandem_store::{PredictionEntry, Store, StoreError};
use tokio::task::JoinHandle;

use crate::error::BatchError;
use crate::index::{DigestIndex, HASH_SEED, IndexEntry, row_hash, secs};
use crate::job::{Progress, count_rows, new_run_id, open_store, strings};
use crate::plan::{InputSpec, base_query, features_query, resolve_features, session};
use crate::rows::{FeatureColumn, hash_rows};
use crate::warm::Busy;

/// What to run.
#[derive(Debug, Clone)]
pub struct RefreshOptions {
    /// The model.
    pub model: PathBuf,
    /// The current features (file, directory or glob).
    pub input: String,
    /// The id column.
    pub id_column: String,
    /// Feature columns (default: the model's names).
    pub features: Option<Vec<String>>,
    /// Prediction store (and activity log).
    pub store: String,
    /// Reason: features moved more than this (L2).
    pub changed_threshold: Option<f64>,
    /// Reason: prediction older than this.
    pub older_than: Option<Duration>,
    /// Reason: made by another model or version.
    pub model_changed: bool,
    /// Filter: asked for within this window.
    pub active_within: Option<Duration>,
    /// TTL of the predictions written.
    pub ttl: Duration,
    /// Value of missing or NaN features.
    pub fill: f64,
    /// The run id (generated when `None`).
    pub run_id: Option<String>,
    /// Skip entities already rescored by `run_id`.
    pub resume: bool,
    /// Entities per store read, model call and write.
    pub chunk: usize,
    /// A digest index ([`crate::index`]): the entities it knows are judged
    /// from it, without reading the store; updated with what this run
    /// rescores.
    pub index: Option<PathBuf>,
}

impl RefreshOptions {
    /// No reason set yet: give at least one.
    pub fn new(
        model: impl Into<PathBuf>,
        input: impl Into<String>,
        store: impl Into<String>,
    ) -> Self {
        RefreshOptions {
            model: model.into(),
            input: input.into(),
            id_column: "entity_id".into(),
            features: None,
            store: store.into(),
            changed_threshold: None,
            older_than: None,
            model_changed: false,
            active_within: None,
            ttl: Duration::from_secs(24 * 3600),
            fill: 0.0,
            run_id: None,
            resume: false,
            chunk: 4096,
            index: None,
        }
    }
}

/// What a refresh did.
#[derive(Debug, Clone, Serialize)]
pub struct RefreshSummary {
    /// Carried by every record written.
    pub run_id: String,
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: u64,
    /// Entities read from the input.
    pub checked: u64,
    /// Entities rescored and written.
    pub rescored: u64,
    /// Entities left as they were.
    pub unchanged: u64,
    /// Entities filtered out (not active within the window).
    pub inactive: u64,
    /// Entities already rescored by this run (`resume`).
    pub already_done: u64,
    /// Of `unchanged`, those the digest index cleared without reading the
    /// store.
    pub cleared_by_index: u64,
    /// Rescored by reason (`missing`, `model_changed`, `older`, `changed`);
    /// an entity counts under its first reason in that order.
    pub reasons: BTreeMap<String, u64>,
    /// `rescored / checked`.
    pub rescored_fraction: f64,
    /// Wall time in seconds.
    pub wall_seconds: f64,
}

enum Decision {
    Rescore(&'static str),
    Keep,
    Done,
}

/// Decides, per entity, from its stored record.
struct Judge {
    resume: bool,
    model_changed: bool,
    older_than: Option<Duration>,
    changed_threshold: Option<f64>,
    model: Arc<str>,
    version: u64,
    run_id: String,
    now: SystemTime,
}

impl Judge {
    /// `digest` is [`feature_digest`] of `row`.
    fn decide(
        &self,
        found: &Result<PredictionRecord, StoreError>,
        row: &[f32],
        digest: &str,
    ) -> Result<Decision, BatchError> {
        let record = match found {
            Ok(r) => r,
            Err(StoreError::NotFound { .. } | StoreError::Corrupt { .. }) => {
                return Ok(Decision::Rescore("missing"));
            }
            Err(e) => return Err(BatchError::Store(e.clone())),
        };
        if self.resume && record.run_id.as_deref() == Some(self.run_id.as_str()) {
            return Ok(Decision::Done);
        }
        if self.model_changed && (record.model != self.model || record.version != self.version) {
            return Ok(Decision::Rescore("model_changed"));
        }
        if let Some(d) = self.older_than
            && record.age(self.now) > d
        {
            return Ok(Decision::Rescore("older"));
        }
        if let Some(t) = self.changed_threshold
            && record.digest.as_deref() != Some(digest)
        {
            let distance = record
                .inputs
                .as_deref()
                .and_then(unpack_inputs)
                .and_then(|old| l2_distance(&old, row));
            match distance {
                Some(d) if d <= t => {}
                _ => return Ok(Decision::Rescore("changed")),
            }
        }
        Ok(Decision::Keep)
    }
}

/// Entities the index could not clear, on their way to the store.
#[derive(Default)]
struct Chunk {
    ids: Vec<String>,
    /// Their rows, one after the other (`width` values each).
    rows: Vec<f32>,
    width: usize,
    /// Each entity's position in the index, when it has one.
    at: Vec<Option<usize>>,
    /// Why the index already says to rescore it (`None`: its stored
    /// record decides).
    decided: Vec<Option<&'static str>>,
}

impl Chunk {
    fn new(width: usize) -> Self {
        Chunk {
            width,
            ..Chunk::default()
        }
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.rows[i * self.width..(i + 1) * self.width]
    }
}

/// What one chunk came to.
#[derive(Default)]
struct ChunkDone {
    checked: u64,
    unchanged: u64,
    already_done: u64,
    rescored: u64,
    reasons: BTreeMap<&'static str, u64>,
    /// (id hash, index position, entry) of what was rescored.
    updates: Vec<(u64, Option<usize>, IndexEntry)>,
    /// Their inputs as half floats, one after the other.
    update_inputs: Vec<u8>,
}

/// What every chunk shares.
struct Scorer {
    judge: Judge,
    model: Arc<Model>,
    store: Arc<dyn Store>,
    run: Arc<str>,
    timestamp: f64,
    ttl: Duration,
    with_index: bool,
}

impl Scorer {
    /// Reads the chunk's records, decides, rescores and writes.
    async fn run(self: Arc<Self>, chunk: Chunk) -> Result<ChunkDone, BatchError> {
        let mut done = ChunkDone {
            checked: chunk.ids.len() as u64,
            ..ChunkDone::default()
        };
        // Only the entities the index did not decide are read.
        let undecided = chunk.decided.iter().filter(|d| d.is_none()).count();
        let found = if undecided == chunk.ids.len() {
            self.store.get_predictions(&chunk.ids).await?
        } else if undecided > 0 {
            let ids: Vec<String> = chunk
                .ids
                .iter()
                .zip(&chunk.decided)
                .filter(|(_, d)| d.is_none())
                .map(|(id, _)| id.clone())
                .collect();
            self.store.get_predictions(&ids).await?
        } else {
            Vec::new()
        };
        let mut found = found.iter();
        // Each digest is computed once: judged against the record, then
        // written with the new one.
        let digests: Vec<Arc<str>> = (0..chunk.ids.len())
            .map(|i| Arc::from(feature_digest(chunk.row(i))))
            .collect();
        let mut pick: Vec<usize> = Vec::new();
        for (i, decided) in chunk.decided.iter().enumerate() {
            let decision = match decided {
                Some(why) => Decision::Rescore(why),
                None => {
                    let f = found.next().ok_or_else(|| {
                        BatchError::Invalid("the store answered fewer records than asked".into())
                    })?;
                    self.judge.decide(f, chunk.row(i), &digests[i])?
                }
            };
            match decision {
                Decision::Rescore(why) => {
                    *done.reasons.entry(why).or_default() += 1;
                    pick.push(i);
                }
                Decision::Keep => done.unchanged += 1,
                Decision::Done => done.already_done += 1,
            }
        }
        if pick.is_empty() {
            return Ok(done);
        }
        let picked: Vec<&[f32]> = pick.iter().map(|i| chunk.row(*i)).collect();
        let batch = FeatureBatch::from_rows(&picked)
            .map_err(|e| BatchError::Invalid(format!("building a batch: {e}")))?;
        let m = self.model.clone();
        let p = tokio::task::spawn_blocking(move || m.predict(&batch))
            .await
            .map_err(|e| BatchError::Invalid(format!("the model panicked: {e}")))??;
        let entries: Vec<PredictionEntry> = pick
            .iter()
            .enumerate()
            .map(|(k, i)| PredictionEntry {
                entity: chunk.ids[*i].clone(),
                record: PredictionRecord {
                    prediction: f64::from(p.row(k)[0]),
                    timestamp: self.timestamp,
                    values: None,
                    model: self.judge.model.clone(),
                    version: self.judge.version,
                    source: PredictionSource::Batch,
                    run_id: Some(self.run.clone()),
                    digest: Some(digests[*i].clone()),
                    inputs: Some(pack_inputs(chunk.row(*i)).into()),
                },
                ttl: self.ttl,
            })
            .collect();
        self.store.put_predictions(&entries).await?;
        done.rescored = entries.len() as u64;
        if self.with_index {
            let expires = secs(self.timestamp + self.ttl.as_secs_f64());
            for i in &pick {
                half_bytes(chunk.row(*i), &mut done.update_inputs);
            }
            done.updates = pick
                .iter()
                .map(|i| {
                    (
                        id_hash(&chunk.ids[*i]),
                        chunk.at[*i],
                        IndexEntry {
                            digest: row_hash(chunk.row(*i)),
                            computed_at: secs(self.timestamp),
                            expires_at: expires,
                        },
                    )
                })
                .collect();
        }
        Ok(done)
    }
}

/// Chunks read, judged and written while the scan goes on.
const IN_FLIGHT: usize = 4;

/// Runs a refresh, opening the model and the store it names.
pub async fn run_refresh(
    opts: &RefreshOptions,
    progress: &dyn Progress,
) -> Result<RefreshSummary, BatchError> {
    let started = Instant::now();
    let result = async {
        check(opts)?;
        let model = Arc::new(Model::load(&opts.model)?);
        let store: Arc<dyn Store> = open_store(Some(&opts.store))
            .await?
            .ok_or_else(|| BatchError::Invalid("no store".into()))?;
        Ok((model, store))
    }
    .await;
    match result {
        Ok((model, store)) => run_refresh_with(opts, model, store, progress, &|| false).await,
        Err(e) => {
            let failed: Result<RefreshSummary, BatchError> = Err(e);
            record(&failed, started);
            failed
        }
    }
}

/// A chunk task's result (a panic in it is an error of the run).
fn joined(
    r: Result<Result<ChunkDone, BatchError>, tokio::task::JoinError>,
) -> Result<ChunkDone, BatchError> {
    r.map_err(|e| BatchError::Invalid(format!("a refresh task failed: {e}")))?
}

fn record(result: &Result<RefreshSummary, BatchError>, started: Instant) {
    let totals = result.as_ref().map(|s| crate::telemetry::Totals {
        read: s.checked,
        scored: s.rescored,
        written: s.rescored,
        skipped: 0,
        filled: 0,
        wall_seconds: s.wall_seconds,
    });
    crate::telemetry::finished(
        "refresh",
        totals.as_ref().map_err(|_| ()),
        started.elapsed().as_secs_f64(),
    );
}

fn check(opts: &RefreshOptions) -> Result<(), BatchError> {
    if opts.changed_threshold.is_none() && opts.older_than.is_none() && !opts.model_changed {
        return Err(BatchError::Invalid(
            "nothing to refresh on: give --changed-threshold, --older-than and/or --model-changed"
                .into(),
        ));
    }
    if let Some(t) = opts.changed_threshold
        && !(t.is_finite() && t >= 0.0)
    {
        return Err(BatchError::Invalid(format!(
            "--changed-threshold must be a number >= 0, got {t}"
        )));
    }
    if opts.ttl.is_zero() {
        return Err(BatchError::Invalid("--ttl must be positive".into()));
    }
    if opts.resume && opts.run_id.is_none() {
        return Err(BatchError::Invalid(
            "--resume needs the run id to resume".into(),
        ));
    }
    Ok(())
}

/// Runs a refresh with a loaded model and an open store (a serving process
/// passes its own), holding back while `busy` says requests are waiting.
pub async fn run_refresh_with(
    opts: &RefreshOptions,
    model: Arc<Model>,
    store: Arc<dyn Store>,
    progress: &dyn Progress,
    busy: Busy<'_>,
) -> Result<RefreshSummary, BatchError> {
    let started = Instant::now();
    let result = refresh_inner(opts, model, store, progress, busy).await;
    record(&result, started);
    result
}

async fn refresh_inner(
    opts: &RefreshOptions,
    model: Arc<Model>,
    store: Arc<dyn Store>,
    progress: &dyn Progress,
    busy: Busy<'_>,
) -> Result<RefreshSummary, BatchError> {
    let started = Instant::now();
    check(opts)?;
    // The index (its entries; the inputs stay mapped) loads while the
    // input is planned.
    let reading = opts
        .index
        .clone()
        .filter(|p| p.exists())
        .map(|p| tokio::task::spawn_blocking(move || DigestIndex::read(&p)));
    let input = InputSpec::open(&opts.input).await?;
    let ctx = session(&input, None).await?;
    let base = base_query(None, None);
    let schema: Schema = ctx.sql(&base).await?.schema().as_arrow().clone();
    let features = resolve_features(&schema, &opts.id_column, opts.features.as_deref(), &model)?;
    let active: Option<HashSet<String>> = match opts.active_within {
        Some(w) => Some(
            store
                .top_active(usize::MAX, w, SystemTime::now())
                .await?
                .into_iter()
                .map(|a| a.entity)
                .collect(),
        ),
        None => None,
    };
    let run_id = opts
        .run_id
        .clone()
        .unwrap_or_else(|| new_run_id().replacen("run-", "refresh-", 1));
    let run: Arc<str> = Arc::from(run_id.as_str());
    let now = SystemTime::now();
    let mut index = match (reading, &opts.index) {
        (Some(task), _) => Some(
            task.await
                .map_err(|e| BatchError::Invalid(format!("reading the index: {e}")))??,
        ),
        (None, Some(_)) => Some(DigestIndex::new(
            model.name(),
            model.version(),
            features.len(),
        )),
        (None, None) => None,
    };
    // With --model-changed, an index of another model clears nothing.
    let prefilter = index.as_ref().filter(|ix| {
        !opts.model_changed || (ix.model == model.name() && ix.version == model.version())
    });
    let now_secs = secs(unix_seconds(now));
    let clears = |e: &IndexEntry, hash: u64| -> bool {
        e.expires_at > now_secs
            && opts
                .older_than
                .is_none_or(|d| u64::from(now_secs.saturating_sub(e.computed_at)) <= d.as_secs())
            && (opts.changed_threshold.is_none() || e.digest == hash)
    };
    // The index judges what it cannot clear when it keeps these features'
    // inputs (a resumed run needs each record's run id: the store's).
    let judge_by_index = prefilter
        .filter(|ix| !opts.resume && ix.width() == features.len())
        .is_some();
    let verdict = |e: &IndexEntry, old: &[u8], row: &[f32], hash: u64| -> Option<Decision> {
        if e.expires_at <= now_secs {
            return None;
        }
        if let Some(d) = opts.older_than
            && u64::from(now_secs.saturating_sub(e.computed_at)) > d.as_secs()
        {
            return Some(Decision::Rescore("older"));
        }
        if let Some(t) = opts.changed_threshold
            && e.digest != hash
        {
            // Unknown inputs (None) leave it to the stored record; a
            // distance that is not a number counts as moved, as there.
            let d = half_distance(old, row)?;
            if d.is_nan() || d > t {
                return Some(Decision::Rescore("changed"));
            }
        }
        Some(Decision::Keep)
    };
    let mut cursor = prefilter.map(DigestIndex::cursor);
    let mut cleared = 0u64;
    let mut inactive = 0u64;
    let mut updates: Vec<(u64, Option<usize>, IndexEntry)> = Vec::new();
    let mut update_inputs: Vec<u8> = Vec::new();
    let mut s = RefreshSummary {
        run_id: run_id.clone(),
        model: model.name().to_string(),
        version: model.version(),
        checked: 0,
        rescored: 0,
        unchanged: 0,
        inactive: 0,
        already_done: 0,
        cleared_by_index: 0,
        reasons: BTreeMap::new(),
        rescored_fraction: 0.0,
        wall_seconds: 0.0,
    };
    let total = if input.format == crate::plan::Format::Parquet {
        count_rows(&ctx).await
    } else {
        None
    };
    progress.start(total);
    let query = features_query(&base, &opts.id_column, &features, &schema);
    let mut stream = ctx.sql(&query).await?.execute_stream().await?;
    let scorer = Arc::new(Scorer {
        judge: Judge {
            resume: opts.resume,
            model_changed: opts.model_changed,
            older_than: opts.older_than,
            changed_threshold: opts.changed_threshold,
            model: Arc::from(model.name()),
            version: model.version(),
            run_id: run_id.clone(),
            now,
        },
        model: model.clone(),
        store: store.clone(),
        run,
        timestamp: unix_seconds(SystemTime::now()),
        ttl: opts.ttl,
        with_index: index.is_some(),
    });
    let mut in_flight: VecDeque<JoinHandle<Result<ChunkDone, BatchError>>> = VecDeque::new();
    let mut absorb = |done: ChunkDone, s: &mut RefreshSummary| {
        s.checked += done.checked;
        s.unchanged += done.unchanged;
        s.already_done += done.already_done;
        s.rescored += done.rescored;
        for (why, n) in done.reasons {
            *s.reasons.entry(why.to_string()).or_default() += n;
        }
        updates.extend(done.updates);
        update_inputs.extend(done.update_inputs);
    };
    let chunk_size = opts.chunk.max(1);
    let width = features.len();
    let mut chunk = Chunk::new(width);
    // A batch's candidates (row, index position) and their rows.
    let mut candidates: Vec<(usize, Option<usize>)> = Vec::new();
    let mut gathered: Vec<f32> = Vec::new();
    let fill = opts.fill as f32;
    let outcome: Result<(), BatchError> = async {
        loop {
            let next = stream.next().await;
            let done = next.is_none();
            if let Some(batch) = next {
                let batch = batch?;
                let id_col = strings(batch.column(0))?;
                let cols: Vec<FeatureColumn> = (0..features.len())
                    .map(|f| FeatureColumn::of(batch.column(1 + f)))
                    .collect::<Result<_, _>>()?;
                let n = batch.num_rows();
                // Row hashes for the index, column by column (rows are
                // assembled only for the entities not cleared).
                let hashes: Option<Vec<u64>> = prefilter.map(|_| {
                    let mut h = vec![HASH_SEED; n];
                    hash_rows(&cols, &mut h, fill);
                    h
                });
                // First what the index clears, then the others' rows,
                // gathered column by column, then their verdicts.
                candidates.clear();
                for r in 0..n {
                    if !id_col.is_valid(r) {
                        continue;
                    }
                    let id = id_col.value(r);
                    if let Some(active) = &active
                        && !active.contains(id)
                    {
                        inactive += 1;
                        continue;
                    }
                    let mut at = None;
                    if let (Some(h), Some(c), Some(ix)) = (&hashes, &mut cursor, prefilter) {
                        at = c.find(id_hash(id));
                        if at
                            .and_then(|a| ix.entry(a))
                            .is_some_and(|e| clears(e, h[r]))
                        {
                            cleared += 1;
                            continue;
                        }
                    }
                    candidates.push((r, at));
                }
                gathered.clear();
                gathered.resize(candidates.len() * width, 0.0);
                for (f, c) in cols.iter().enumerate() {
                    for (k, (r, _)) in candidates.iter().enumerate() {
                        gathered[k * width + f] = c.value(*r, fill);
                    }
                }
                for (k, &(r, at)) in candidates.iter().enumerate() {
                    let row = &gathered[k * width..(k + 1) * width];
                    let mut decided = None;
                    if let (Some(h), Some(ix), Some(a)) = (&hashes, prefilter, at)
                        && judge_by_index
                        && let (Some(e), Some(old)) = (ix.entry(a), ix.inputs(a))
                    {
                        match verdict(e, old, row, h[r]) {
                            Some(Decision::Keep) => {
                                cleared += 1;
                                continue;
                            }
                            Some(Decision::Rescore(why)) => decided = Some(why),
                            Some(Decision::Done) | None => {}
                        }
                    }
                    chunk.ids.push(id_col.value(r).to_string());
                    chunk.rows.extend_from_slice(row);
                    chunk.at.push(at);
                    chunk.decided.push(decided);
                }
                progress.advance(batch.num_rows() as u64);
            }
            if chunk.ids.len() >= chunk_size || (done && !chunk.ids.is_empty()) {
                crate::warm::yield_to(busy).await;
                if in_flight.len() >= IN_FLIGHT
                    && let Some(first) = in_flight.pop_front()
                {
                    absorb(joined(first.await)?, &mut s);
                }
                let full = std::mem::replace(&mut chunk, Chunk::new(width));
                in_flight.push_back(tokio::spawn(scorer.clone().run(full)));
            }
            if done {
                break;
            }
        }
        while let Some(first) = in_flight.pop_front() {
            absorb(joined(first.await)?, &mut s);
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        for task in in_flight {
            task.abort();
        }
        return Err(e);
    }
    progress.finish();
    s.checked += cleared + inactive;
    s.unchanged += cleared;
    s.cleared_by_index = cleared;
    s.inactive = inactive;
    let fresh = opts.index.as_ref().is_some_and(|p| !p.exists());
    if let (Some(mut ix), Some(path)) = (index.take(), &opts.index)
        && (fresh
            || !updates.is_empty()
            || ix.model != model.name()
            || ix.version != model.version())
    {
        // An index that keeps no inputs (written before they were kept)
        // stays so until the next `tandem batch --index`.
        let same = ix.model == model.name()
            && ix.version == model.version()
            && (ix.width() == features.len() || ix.width() == 0);
        if !same {
            // Entries made by another model say nothing about this one's
            // records beyond what was just rescored.
            ix = DigestIndex::new(model.name(), model.version(), features.len());
        }
        let stride = 2 * features.len();
        for (k, (key, at, entry)) in updates.into_iter().enumerate() {
            let inputs = update_inputs
                .get(k * stride..(k + 1) * stride)
                .unwrap_or_default();
            match at {
                Some(at) if same => ix.set(at, entry, inputs),
                _ => ix.upsert(key, entry, inputs),
            }
        }
        ix.save(path)?;
    }
    s.rescored_fraction = if s.checked == 0 {
        0.0
    } else {
        s.rescored as f64 / s.checked as f64
    };
    s.wall_seconds = started.elapsed().as_secs_f64();
    Ok(s)
}
