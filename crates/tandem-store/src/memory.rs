//! The in-process memory tier (moka) and the tiered prediction reader:
//! memory -> shared store -> miss.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use moka::Expiry;
use moka::sync::Cache;
use tandem_core::PredictionRecord;

use crate::api::{PredictionEntry, PredictionStore};
use crate::error::StoreError;

/// Bytes charged per cached entry on top of its key and record: moka's
/// own bookkeeping (hash table slot, deque nodes, timer wheel entry).
const ENTRY_OVERHEAD: usize = 96;

/// Settings of the memory tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryTierConfig {
    /// Byte budget for keys and records (default 256 MiB).
    pub max_bytes: u64,
    /// Longest time a record stays in memory (default 60 s), which bounds
    /// how long a replica can keep answering a record that another one has
    /// since replaced in the shared store.
    pub max_ttl: Duration,
}

impl Default for MemoryTierConfig {
    fn default() -> Self {
        MemoryTierConfig {
            max_bytes: 256 << 20,
            max_ttl: Duration::from_secs(60),
        }
    }
}

#[derive(Debug)]
struct Cached {
    record: PredictionRecord,
    expires_at: Instant,
}

struct ExpireAt;

impl Expiry<Arc<str>, Arc<Cached>> for ExpireAt {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Arc<Cached>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.expires_at.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _key: &Arc<str>,
        value: &Arc<Cached>,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.expires_at.saturating_duration_since(updated_at))
    }
}

/// A size-bounded, TTL-aware in-process cache of prediction records by
/// entity. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct MemoryTier {
    cache: Cache<Arc<str>, Arc<Cached>>,
    config: MemoryTierConfig,
}

impl MemoryTier {
    /// An empty tier.
    pub fn new(config: MemoryTierConfig) -> Self {
        let cache = Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|key: &Arc<str>, value: &Arc<Cached>| {
                u32::try_from(key.len() + value.record.approx_size() + ENTRY_OVERHEAD)
                    .unwrap_or(u32::MAX)
            })
            .expire_after(ExpireAt)
            .build();
        MemoryTier { cache, config }
    }

    /// The record cached for `entity`, if any and not expired.
    pub fn get(&self, entity: &str) -> Option<PredictionRecord> {
        self.cache
            .get(entity)
            .and_then(|c| (c.expires_at > Instant::now()).then(|| c.record.clone()))
    }

    /// Caches a record for `ttl` (capped by the tier's `max_ttl`).
    pub fn insert(&self, entity: &str, record: PredictionRecord, ttl: Duration) {
        let ttl = ttl.min(self.config.max_ttl);
        if ttl.is_zero() {
            return;
        }
        let cached = Arc::new(Cached {
            record,
            expires_at: Instant::now() + ttl,
        });
        self.cache.insert(Arc::from(entity), cached);
    }

    /// Drops an entity's record.
    pub fn invalidate(&self, entity: &str) {
        self.cache.invalidate(entity);
    }

    /// Entries and their charged bytes, after pending maintenance.
    pub fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }

    /// The settings.
    pub fn config(&self) -> MemoryTierConfig {
        self.config
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

#[derive(Default)]
struct Counters {
    memory_hits: AtomicU64,
    memory_stale: AtomicU64,
    memory_misses: AtomicU64,
    store_hits: AtomicU64,
    store_stale: AtomicU64,
    store_misses: AtomicU64,
    store_errors: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
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
                            self.memory
                                .insert(&entity, record.clone(), self.memory.config.max_ttl);
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
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
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
