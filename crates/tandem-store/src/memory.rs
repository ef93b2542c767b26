//! The in-process memory tier and the tiered prediction reader:
//! memory -> shared store -> miss.
//!
//! The memory tier is a `quick_cache` cache (sharded, CLOCK-PRO eviction)
//! bounded by a byte budget, holding records in a compact form: model names
//! and run ids are interned (one copy per distinct value), hex digests are
//! kept as integers. moka was measured first: its bookkeeping costs about
//! 250 bytes per entry, so 1M cached predictions took 450 MB; the compact
//! form here takes well under 200 MB (docs/benchmarks.md).
//!
//! A record read from a store that reports changes
//! ([`PredictionStore::watch_predictions`]: standalone Redis, by client-side
//! caching) is kept until the store says it changed, up to
//! `tracked_max_ttl`, rather than for `max_ttl` only. While the store is not
//! reporting (before it starts, after its connection drops, after a flush),
//! every record falls back to `max_ttl`, counted from when it was cached.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};
use tandem_core::shard::Counter;

use quick_cache::Weighter;
use quick_cache::sync::Cache;
use tandem_core::{PredictionRecord, PredictionSource};

use crate::api::{ChangeSink, PredictionEntry, PredictionStore};
use crate::error::StoreError;

/// Bytes charged per cached entry on top of the key's bytes and a record's
/// variable parts: the compact record, the key's box, and the cache's own
/// slot and index (calibrated against process RSS in the store benchmark).
const ENTRY_OVERHEAD: u64 = 176;

/// Settings of the memory tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryTierConfig {
    /// Byte budget for cached records, their keys and the cache's own
    /// per-entry cost (default 256 MiB).
    pub max_bytes: u64,
    /// Longest time a record stays in memory (default 60 s), which bounds
    /// how long a replica can keep answering a record that another one has
    /// since replaced in the shared store.
    pub max_ttl: Duration,
    /// Longest time a record read from a store that reports changes stays
    /// in memory while the store is reporting (default 1 h); zero keeps
    /// every record to `max_ttl` and asks no store for changes.
    pub tracked_max_ttl: Duration,
}

impl Default for MemoryTierConfig {
    fn default() -> Self {
        MemoryTierConfig {
            max_bytes: 256 << 20,
            max_ttl: Duration::from_secs(60),
            tracked_max_ttl: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone)]
enum Digest {
    None,
    Hex16(u64),
    Other(Arc<str>),
}

/// A record as the memory tier keeps it.
#[derive(Debug, Clone)]
struct Cached {
    prediction: f64,
    timestamp: f64,
    version: u64,
    /// Milliseconds since the tier's epoch.
    expires_ms: u64,
    /// The reporting epoch it was cached in, 0 for a record kept for
    /// `max_ttl` only. Such a record expires at `tracked_max_ttl` after it
    /// was cached, or at `max_ttl` after once the epoch has ended. (It
    /// fits in the padding after `source`: no byte more per entry.)
    epoch: u32,
    model: Arc<str>,
    run_id: Option<Arc<str>>,
    digest: Digest,
    values: Option<Box<[f64]>>,
    source: PredictionSource,
}

impl Cached {
    fn variable_bytes(&self) -> u64 {
        let values = self.values.as_ref().map_or(0, |v| v.len() * 8);
        let digest = match &self.digest {
            Digest::Other(s) => s.len() + 16,
            Digest::None | Digest::Hex16(_) => 0,
        };
        (values + digest) as u64
    }

    fn record(&self) -> PredictionRecord {
        PredictionRecord {
            prediction: self.prediction,
            timestamp: self.timestamp,
            values: self.values.as_ref().map(|v| v.to_vec()),
            model: self.model.clone(),
            version: self.version,
            source: self.source,
            run_id: self.run_id.clone(),
            digest: match &self.digest {
                Digest::None => None,
                Digest::Hex16(d) => Some(format!("{d:016x}").into()),
                Digest::Other(s) => Some(s.clone()),
            },
            inputs: None,
        }
    }
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<Box<str>, Cached> for ByBytes {
    fn weight(&self, key: &Box<str>, value: &Cached) -> u64 {
        key.len() as u64 + value.variable_bytes() + ENTRY_OVERHEAD
    }
}

/// Shares one copy of each model name and run id among cached records.
#[derive(Default)]
struct Interner {
    strings: RwLock<HashSet<Arc<str>>>,
}

impl Interner {
    /// Distinct strings kept before the table starts over (records keep
    /// their copies; only sharing with later records is lost).
    const MAX: usize = 4096;

    fn intern(&self, s: &Arc<str>) -> Arc<str> {
        if let Some(found) = self.strings.read().ok().and_then(|t| t.get(&**s).cloned()) {
            return found;
        }
        let Ok(mut table) = self.strings.write() else {
            return s.clone();
        };
        if table.len() >= Self::MAX {
            table.clear();
        }
        table.insert(s.clone());
        s.clone()
    }
}

fn hex16(s: &str) -> Option<u64> {
    let lower = s
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (s.len() == 16 && lower)
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

/// A byte-bounded, TTL-aware in-process cache of prediction records by
/// entity. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct MemoryTier {
    inner: Arc<MemoryInner>,
}

struct MemoryInner {
    cache: Cache<Box<str>, Cached, ByBytes>,
    config: MemoryTierConfig,
    epoch: Instant,
    interner: Interner,
    watch: Watch,
}

/// Slots of change counts; an entity's changes bump the slot its id
/// hashes to.
const WATCH_SLOTS: usize = 4096;

/// What the store has reported, as counters a read compares before and
/// after (see [`ReadTicket`]).
struct Watch {
    /// The current reporting epoch, 0 while the store is not reporting.
    live: AtomicU32,
    /// The last epoch handed out.
    last: AtomicU32,
    /// Bumped whenever any record may have changed unreported.
    all: AtomicU32,
    /// Changes reported, per slot.
    slots: Box<[AtomicU32]>,
    /// Entities reported changed since start.
    reported: AtomicU64,
    hasher: std::collections::hash_map::RandomState,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            live: AtomicU32::new(0),
            last: AtomicU32::new(0),
            all: AtomicU32::new(0),
            slots: (0..WATCH_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            reported: AtomicU64::new(0),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn slot(&self, entity: &str) -> &AtomicU32 {
        &self.slots[(self.hasher.hash_one(entity) as usize) % WATCH_SLOTS]
    }
}

/// The store's reporting state taken before a read is sent: a record the
/// read returns is kept until it changes only if nothing was reported for
/// its entity (and reporting did not stop or restart) in between.
#[derive(Debug, Clone)]
pub struct ReadTicket {
    epoch: u32,
    all: u32,
    slots: Vec<u32>,
}

impl MemoryTier {
    /// An empty tier.
    pub fn new(config: MemoryTierConfig) -> Self {
        let estimated =
            usize::try_from(config.max_bytes / (ENTRY_OVERHEAD + 16)).unwrap_or(1 << 20);
        MemoryTier {
            inner: Arc::new(MemoryInner {
                cache: Cache::with_weighter(estimated.max(16), config.max_bytes.max(1), ByBytes),
                config,
                epoch: Instant::now(),
                interner: Interner::default(),
                watch: Watch::new(),
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether `cached` is still to be served at `now` (ms).
    fn alive(&self, cached: &Cached, now: u64) -> bool {
        now < cached.expires_ms
            && (cached.epoch == 0
                || cached.epoch == self.inner.watch.live.load(Ordering::Acquire)
                || now < self.short_expiry(cached))
    }

    /// When a record cached while the store reported changes expires once
    /// the store has stopped: `max_ttl` after it was cached.
    fn short_expiry(&self, cached: &Cached) -> u64 {
        let config = &self.inner.config;
        (cached
            .expires_ms
            .saturating_sub(millis(config.tracked_max_ttl)))
        .saturating_add(millis(config.max_ttl))
    }

    /// The live record cached for `entity`; an expired one is dropped on
    /// the way.
    fn live_entry(&self, entity: &str) -> Option<Cached> {
        let cached = self.inner.cache.get(entity)?;
        if !self.alive(&cached, self.now_ms()) {
            self.inner.cache.remove(entity);
            return None;
        }
        Some(cached)
    }

    /// The record cached for `entity`, if any and not expired (an expired
    /// one is dropped on the way).
    pub fn get(&self, entity: &str) -> Option<PredictionRecord> {
        self.live_entry(entity).map(|c| c.record())
    }

    /// As [`MemoryTier::get`], without the record's input digest and run
    /// id (`None`): what an answer carries, without formatting the digest.
    pub fn get_for_answer(&self, entity: &str) -> Option<PredictionRecord> {
        let cached = self.live_entry(entity)?;
        Some(PredictionRecord {
            prediction: cached.prediction,
            timestamp: cached.timestamp,
            values: cached.values.as_ref().map(|v| v.to_vec()),
            model: cached.model.clone(),
            version: cached.version,
            source: cached.source,
            run_id: None,
            digest: None,
            inputs: None,
        })
    }

    /// Caches a record for `ttl` (capped by the tier's `max_ttl`).
    pub fn insert(&self, entity: &str, record: PredictionRecord, ttl: Duration) {
        let ttl = ttl.min(self.inner.config.max_ttl);
        if ttl.is_zero() {
            return;
        }
        let expires_ms = self.now_ms().saturating_add(millis(ttl));
        let cached = self.compact(record, expires_ms, 0);
        self.inner.cache.insert(Box::from(entity), cached);
    }

    /// The reporting state before a read of `entities` is sent, for
    /// [`MemoryTier::insert_read`].
    pub fn ticket(&self, entities: &[String]) -> ReadTicket {
        let w = &self.inner.watch;
        let epoch = w.live.load(Ordering::SeqCst);
        let all = w.all.load(Ordering::SeqCst);
        let slots = if epoch == 0 {
            Vec::new()
        } else {
            entities
                .iter()
                .map(|e| w.slot(e).load(Ordering::SeqCst))
                .collect()
        };
        ReadTicket { epoch, all, slots }
    }

    /// Whether nothing that could concern `entity`, the `i`-th entity of
    /// `ticket`'s read, was reported since the ticket was taken.
    fn unchanged_since(&self, ticket: &ReadTicket, i: usize, entity: &str) -> bool {
        let w = &self.inner.watch;
        ticket.epoch != 0
            && w.live.load(Ordering::SeqCst) == ticket.epoch
            && w.all.load(Ordering::SeqCst) == ticket.all
            && ticket.slots.get(i) == Some(&w.slot(entity).load(Ordering::SeqCst))
    }

    /// Caches a record a store read returned: until the store reports a
    /// change (up to `tracked_max_ttl`) when it was reporting all along
    /// since `ticket` was taken for the read (`i` is the entity's place in
    /// it), for `max_ttl` otherwise.
    pub fn insert_read(
        &self,
        entity: &str,
        record: PredictionRecord,
        ticket: &ReadTicket,
        i: usize,
    ) {
        let config = &self.inner.config;
        if config.tracked_max_ttl <= config.max_ttl || !self.unchanged_since(ticket, i, entity) {
            self.insert(entity, record, config.max_ttl);
            return;
        }
        let expires_ms = self.now_ms().saturating_add(millis(config.tracked_max_ttl));
        let cached = self.compact(record, expires_ms, ticket.epoch);
        self.inner.cache.insert(Box::from(entity), cached);
        // A change reported between the check and the insert was applied
        // before the record was there to drop: drop it now.
        if !self.unchanged_since(ticket, i, entity) {
            self.inner.cache.remove_if(entity, |c| c.epoch != 0);
        }
    }

    fn compact(&self, record: PredictionRecord, expires_ms: u64, epoch: u32) -> Cached {
        let interner = &self.inner.interner;
        Cached {
            prediction: record.prediction,
            timestamp: record.timestamp,
            version: record.version,
            expires_ms,
            epoch,
            model: interner.intern(&record.model),
            run_id: record.run_id.as_ref().map(|r| interner.intern(r)),
            digest: match record.digest {
                None => Digest::None,
                Some(d) => hex16(&d).map_or(Digest::Other(d), Digest::Hex16),
            },
            values: record.values.map(Vec::into_boxed_slice),
            source: record.source,
        }
    }

    /// A handle through which a store reports changes to this tier (it
    /// does not keep the tier alive).
    pub fn change_sink(&self) -> Weak<dyn ChangeSink> {
        let weak: Weak<MemoryInner> = Arc::downgrade(&self.inner);
        weak
    }

    /// Whether the store is reporting changes now.
    pub fn tracking(&self) -> bool {
        self.inner.watch.live.load(Ordering::Acquire) != 0
    }

    /// Entities the store has reported changed since start.
    pub fn changes_reported(&self) -> u64 {
        self.inner.watch.reported.load(Ordering::Relaxed)
    }

    /// Whether the tier holds, unexpired, a record for `entity` equal to
    /// `record` in everything but its time (value, model, version, source,
    /// run, input digest), made less than `within` before it.
    pub fn holds_recent(&self, entity: &str, record: &PredictionRecord, within: Duration) -> bool {
        let Some(cached) = self.inner.cache.get(entity) else {
            return false;
        };
        let age = record.timestamp - cached.timestamp;
        let digest_same = match (&cached.digest, record.digest.as_deref()) {
            (Digest::None, None) => true,
            (Digest::Hex16(a), Some(b)) => hex16(b) == Some(*a),
            (Digest::Other(a), Some(b)) => **a == *b,
            _ => false,
        };
        let values_same = match (&cached.values, &record.values) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            _ => false,
        };
        self.alive(&cached, self.now_ms())
            && (0.0..within.as_secs_f64()).contains(&age)
            && cached.prediction.to_bits() == record.prediction.to_bits()
            && cached.version == record.version
            && cached.source == record.source
            && *cached.model == *record.model
            && cached.run_id.as_deref() == record.run_id.as_deref()
            && digest_same
            && values_same
    }

    /// Drops an entity's record.
    pub fn invalidate(&self, entity: &str) {
        self.inner.cache.remove(entity);
    }

    /// Entries and their charged bytes.
    pub fn usage(&self) -> (u64, u64) {
        (self.inner.cache.len() as u64, self.inner.cache.weight())
    }

    /// The settings.
    pub fn config(&self) -> MemoryTierConfig {
        self.inner.config
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ChangeSink for MemoryInner {
    fn live(&self) {
        let w = &self.watch;
        let epoch = w.last.fetch_add(1, Ordering::SeqCst).wrapping_add(1).max(1);
        w.all.fetch_add(1, Ordering::SeqCst);
        w.live.store(epoch, Ordering::SeqCst);
    }

    fn changed(&self, entities: &[&str]) {
        self.watch
            .reported
            .fetch_add(entities.len() as u64, Ordering::Relaxed);
        for entity in entities {
            // The count first: a read that inserts after this sees it.
            self.watch.slot(entity).fetch_add(1, Ordering::SeqCst);
            // Records this server wrote itself (epoch 0) are kept to
            // `max_ttl` as before: the store reports those writes too.
            self.cache.remove_if(*entity, |c| c.epoch != 0);
        }
    }

    fn changed_all(&self) {
        // Records of the ending epoch fall back to `max_ttl`.
        self.lost();
        self.live();
    }

    fn lost(&self) {
        let w = &self.watch;
        w.live.store(0, Ordering::SeqCst);
        w.all.fetch_add(1, Ordering::SeqCst);
    }
}

/// Which tier held a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// The in-process memory tier.
    Memory,
    /// The shared store.
    Store,
}

impl Tier {
    /// `memory` or `store`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Store => "store",
        }
    }
}

/// The outcome of a tiered read for one entity.
#[derive(Debug, Clone, PartialEq)]
pub enum TierLookup {
    /// A record no older than the caller's `max_staleness`.
    Fresh {
        /// The record.
        record: PredictionRecord,
        /// Where it was found.
        tier: Tier,
    },
    /// The newest record found is older than `max_staleness`.
    Stale {
        /// The record.
        record: PredictionRecord,
        /// Where it was found.
        tier: Tier,
    },
    /// No tier holds a record.
    Miss,
    /// The store could not answer for this entity (down, timed out, or its
    /// value is corrupt) and memory held nothing.
    Failed(StoreError),
}

/// Lookup counts per tier and result since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierCounters {
    /// Memory lookups that found a fresh record.
    pub memory_hits: u64,
    /// Memory lookups that found only a stale record.
    pub memory_stale: u64,
    /// Memory lookups that found nothing.
    pub memory_misses: u64,
    /// Store lookups that found a fresh record.
    pub store_hits: u64,
    /// Store lookups that found only a stale record.
    pub store_stale: u64,
    /// Store lookups that found nothing.
    pub store_misses: u64,
    /// Store lookups that failed (unavailable, timed out, corrupt).
    pub store_errors: u64,
}

/// Per-thread shards: every lookup bumps one of these.
#[derive(Default)]
struct Counters {
    memory_hits: Counter,
    memory_stale: Counter,
    memory_misses: Counter,
    store_hits: Counter,
    store_stale: Counter,
    store_misses: Counter,
    store_errors: Counter,
}

fn bump(c: &Counter) {
    c.add(1);
}

/// Predictions read through memory, then the shared store; hits from the
/// store are promoted into memory, writes go to both.
#[derive(Clone)]
pub struct TieredPredictions {
    memory: MemoryTier,
    store: Arc<dyn PredictionStore>,
    counters: Arc<Counters>,
}

impl TieredPredictions {
    /// Puts `memory` in front of `store`.
    pub fn new(memory: MemoryTier, store: Arc<dyn PredictionStore>) -> Self {
        TieredPredictions {
            memory,
            store,
            counters: Arc::default(),
        }
    }

    /// The memory tier.
    pub fn memory(&self) -> &MemoryTier {
        &self.memory
    }

    /// A fresh record of `entity` in memory ([`MemoryTier::get_for_answer`]:
    /// without digest and run id) that `accept` takes, counted as a memory
    /// hit; `None` (and nothing counted) otherwise, where the caller goes on
    /// with [`TieredPredictions::get`]. The one-entity request's first step.
    pub fn fresh_in_memory(
        &self,
        entity: &str,
        max_staleness: Duration,
        now: SystemTime,
        accept: impl FnOnce(&PredictionRecord) -> bool,
    ) -> Option<PredictionRecord> {
        let record = self.memory.get_for_answer(entity)?;
        if record.is_stale(now, max_staleness) || !accept(&record) {
            return None;
        }
        bump(&self.counters.memory_hits);
        Some(record)
    }

    /// Looks `entities` up, memory first. A record older than
    /// `max_staleness` at `now` is `Stale` whichever tier held it; when
    /// memory holds only a stale record the store is asked too, and the
    /// newer of the two wins.
    pub async fn get(
        &self,
        entities: &[String],
        max_staleness: Duration,
        now: SystemTime,
    ) -> Vec<TierLookup> {
        let c = &self.counters;
        let mut out: Vec<TierLookup> = Vec::with_capacity(entities.len());
        let mut stale_in_memory: Vec<Option<PredictionRecord>> = Vec::new();
        let mut ask: Vec<(usize, String)> = Vec::new();
        for (i, entity) in entities.iter().enumerate() {
            match self.memory.get(entity) {
                Some(record) if !record.is_stale(now, max_staleness) => {
                    bump(&c.memory_hits);
                    out.push(TierLookup::Fresh {
                        record,
                        tier: Tier::Memory,
                    });
                    continue;
                }
                Some(record) => {
                    bump(&c.memory_stale);
                    stale_in_memory.push(Some(record));
                }
                None => {
                    bump(&c.memory_misses);
                    stale_in_memory.push(None);
                }
            }
            out.push(TierLookup::Miss);
            ask.push((i, entity.clone()));
        }
        if ask.is_empty() {
            return out;
        }
        let ids: Vec<String> = ask.iter().map(|(_, e)| e.clone()).collect();
        let ticket = self.memory.ticket(&ids);
        let found = self.store.get_predictions(&ids).await;
        for (n, ((i, entity), in_memory)) in ask.into_iter().zip(stale_in_memory).enumerate() {
            let from_store = match &found {
                Ok(found) => found[n].clone(),
                Err(e) => Err(e.clone()),
            };
            out[i] = match (from_store, in_memory) {
                (Ok(record), in_memory) => {
                    let fresh = !record.is_stale(now, max_staleness);
                    bump(if fresh { &c.store_hits } else { &c.store_stale });
                    match in_memory {
                        Some(m) if !fresh && m.timestamp > record.timestamp => TierLookup::Stale {
                            record: m,
                            tier: Tier::Memory,
                        },
                        _ => {
                            self.memory.insert_read(&entity, record.clone(), &ticket, n);
                            if fresh {
                                TierLookup::Fresh {
                                    record,
                                    tier: Tier::Store,
                                }
                            } else {
                                TierLookup::Stale {
                                    record,
                                    tier: Tier::Store,
                                }
                            }
                        }
                    }
                }
                (Err(e), in_memory) => {
                    if e.is_not_found() {
                        bump(&c.store_misses);
                    } else {
                        bump(&c.store_errors);
                    }
                    match in_memory {
                        Some(record) => TierLookup::Stale {
                            record,
                            tier: Tier::Memory,
                        },
                        None if e.is_not_found() => TierLookup::Miss,
                        None => TierLookup::Failed(e),
                    }
                }
            };
        }
        out
    }

    /// Reads the stored records of `entities` into memory (as a read would,
    /// [`MemoryTier::insert_read`]) without answering or counting lookups;
    /// returns how many were found.
    pub async fn preload(&self, entities: &[String]) -> Result<usize, StoreError> {
        let mut loaded = 0;
        for chunk in entities.chunks(crate::redis_store::CHUNK) {
            let ticket = self.memory.ticket(chunk);
            let found = self.store.get_predictions(chunk).await?;
            for (i, (entity, record)) in chunk.iter().zip(found).enumerate() {
                if let Ok(record) = record {
                    self.memory.insert_read(entity, record, &ticket, i);
                    loaded += 1;
                }
            }
        }
        Ok(loaded)
    }

    /// Writes records to memory and to the store. Memory is written even
    /// when the store fails, and the store's error is returned.
    pub async fn put(&self, entries: &[PredictionEntry]) -> Result<(), StoreError> {
        for e in entries {
            self.memory.insert(&e.entity, e.record.clone(), e.ttl);
        }
        self.store.put_predictions(entries).await
    }

    /// Lookup counts per tier since start.
    pub fn counters(&self) -> TierCounters {
        let c = &self.counters;
        let load = |a: &Counter| a.get();
        TierCounters {
            memory_hits: load(&c.memory_hits),
            memory_stale: load(&c.memory_stale),
            memory_misses: load(&c.memory_misses),
            store_hits: load(&c.store_hits),
            store_stale: load(&c.store_stale),
            store_misses: load(&c.store_misses),
            store_errors: load(&c.store_errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_record_is_no_larger_for_its_reporting_epoch() {
        // The epoch sits in the padding after `source`; ENTRY_OVERHEAD was
        // calibrated with records of this size.
        assert!(
            std::mem::size_of::<Cached>() <= 112,
            "{}",
            std::mem::size_of::<Cached>()
        );
    }
}
