//! The embedded store: one redb file, no server.
//!
//! Values carry their expiry time (8 bytes, Unix milliseconds, 0 = never)
//! before the same JSON the Redis layout uses. Reads never return an expired
//! value; a purge (at open, then at most every `purge_interval`, started by
//! writes) deletes expired values and old activity buckets so that redb
//! reuses their pages.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tandem_core::{FeatureRow, PredictionRecord, unix_millis};

use crate::api::{
    ActiveEntity, ActivityLog, FeatureStore, PredictionEntry, PredictionStore, Store, bucket_of,
    buckets_in_window, top_k,
};
use crate::config::StoreOptions;
use crate::error::{Lookup, StoreError};
use crate::layout::{
    EncodedRows, decode_features, decode_prediction, encode_features, encode_prediction,
};

const PREDICTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("predictions");
const FEATURES: TableDefinition<&str, &[u8]> = TableDefinition::new("features");
const ACTIVITY: TableDefinition<(&str, u64, &str), u64> = TableDefinition::new("activity");

const BACKEND: &str = "embedded";

/// Reads of up to this many keys run on the calling task (a few
/// microseconds from redb's page cache) instead of a blocking thread, whose
/// hand-off would cost more than the read.
const INLINE_READ: usize = 16;

/// The embedded store on a redb file. Cheap to clone; clones share the file.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    options: StoreOptions,
    purge_interval: Duration,
    last_purge_ms: AtomicU64,
    purging: AtomicBool,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        backend: BACKEND,
        detail: e.to_string(),
    }
}

impl EmbeddedStore {
    /// Opens (or creates, with its parent directories) the store file.
    /// Fails with `Unavailable` when the file is not a redb database, or is
    /// open in another process.
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let fail = |e: &dyn std::fmt::Display| unavailable(format!("{}: {e}", path.display()));
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| fail(&e))?;
        }
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create(&path)
            .map_err(|e| fail(&e))?;
        let txn = db.begin_write().map_err(|e| fail(&e))?;
        {
            txn.open_table(PREDICTIONS).map_err(|e| fail(&e))?;
            txn.open_table(FEATURES).map_err(|e| fail(&e))?;
            txn.open_table(ACTIVITY).map_err(|e| fail(&e))?;
        }
        txn.commit().map_err(|e| fail(&e))?;
        let store = EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                path,
                purge_interval: options.purge_interval,
                options,
                last_purge_ms: AtomicU64::new(0),
                purging: AtomicBool::new(false),
            }),
        };
        store.purge_expired_blocking(SystemTime::now())?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Deletes expired values and activity buckets past retention, now.
    /// Returns how many entries were removed.
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        let this = self.clone();
        blocking(move || this.purge_expired_blocking(SystemTime::now())).await
    }

    fn purge_expired_blocking(&self, now: SystemTime) -> Result<u64, StoreError> {
        let now_ms = unix_millis(now);
        let oldest_bucket = bucket_of(
            now.checked_sub(self.inner.options.activity_retention)
                .unwrap_or(SystemTime::UNIX_EPOCH),
            self.inner.options.activity_bucket,
        );
        let txn = self.inner.db.begin_write().map_err(unavailable)?;
        let mut removed = 0u64;
        {
            for def in [PREDICTIONS, FEATURES] {
                let mut table = txn.open_table(def).map_err(unavailable)?;
                table
                    .retain(|_, v| {
                        let keep = !expired(v, now_ms);
                        removed += u64::from(!keep);
                        keep
                    })
                    .map_err(unavailable)?;
            }
            let mut table = txn.open_table(ACTIVITY).map_err(unavailable)?;
            table
                .retain(|(_, bucket, _), _| {
                    let keep = bucket >= oldest_bucket;
                    removed += u64::from(!keep);
                    keep
                })
                .map_err(unavailable)?;
        }
        txn.commit().map_err(unavailable)?;
        self.inner.last_purge_ms.store(now_ms, Ordering::Relaxed);
        Ok(removed)
    }

    /// Starts a purge in the background when one is due.
    fn maybe_purge(&self) {
        let now = SystemTime::now();
        let due = self.inner.last_purge_ms.load(Ordering::Relaxed)
            + u64::try_from(self.inner.purge_interval.as_millis()).unwrap_or(u64::MAX);
        if unix_millis(now) < due || self.inner.purging.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = this.purge_expired_blocking(SystemTime::now()) {
                tracing::warn!(error = %e, "embedded store purge failed");
            }
            this.inner.purging.store(false, Ordering::Release);
        });
    }

    fn get_blocking<T>(
        &self,
        def: TableDefinition<'static, &'static str, &'static [u8]>,
        keys: Vec<String>,
        decode: fn(&str, &[u8]) -> Result<T, StoreError>,
    ) -> Result<Vec<Lookup<T>>, StoreError> {
        let now_ms = unix_millis(SystemTime::now());
        let txn = self.inner.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(def).map_err(unavailable)?;
        keys.into_iter()
            .map(|key| {
                let Some(guard) = table.get(key.as_str()).map_err(unavailable)? else {
                    return Ok(Err(StoreError::NotFound { key }));
                };
                let v = guard.value();
                if v.len() < 8 {
                    return Ok(Err(StoreError::corrupt(
                        &key,
                        "value shorter than its expiry header",
                    )));
                }
                if expired(v, now_ms) {
                    return Ok(Err(StoreError::NotFound { key }));
                }
                Ok(decode(&key, &v[8..]))
            })
            .collect()
    }

    fn put_blocking(
        &self,
        def: TableDefinition<'static, &'static str, &'static [u8]>,
        items: Vec<(String, Vec<u8>, Option<Duration>)>,
    ) -> Result<(), StoreError> {
        let now_ms = unix_millis(SystemTime::now());
        let txn = self.inner.db.begin_write().map_err(unavailable)?;
        {
            let mut table = txn.open_table(def).map_err(unavailable)?;
            let mut buf = Vec::new();
            for (key, json, ttl) in &items {
                let expires = ttl.map_or(0, |t| {
                    now_ms
                        .saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
                        .max(1)
                });
                buf.clear();
                buf.extend_from_slice(&expires.to_le_bytes());
                buf.extend_from_slice(json);
                table
                    .insert(key.as_str(), buf.as_slice())
                    .map_err(unavailable)?;
            }
        }
        txn.commit().map_err(unavailable)?;
        self.maybe_purge();
        Ok(())
    }
}

fn expired(value: &[u8], now_ms: u64) -> bool {
    let Some(head) = value.get(..8) else {
        return false;
    };
    let mut b = [0u8; 8];
    b.copy_from_slice(head);
    let expires = u64::from_le_bytes(b);
    expires != 0 && expires <= now_ms
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Backend {
            backend: BACKEND,
            detail: format!("store task failed: {e}"),
        })?
}

#[async_trait]
impl PredictionStore for EmbeddedStore {
    async fn get_predictions(
        &self,
        entities: &[String],
    ) -> Result<Vec<Lookup<PredictionRecord>>, StoreError> {
        let layout = &self.inner.options.layout;
        let keys: Vec<String> = entities.iter().map(|e| layout.prediction_key(e)).collect();
        if keys.len() <= INLINE_READ {
            return self.get_blocking(PREDICTIONS, keys, decode_prediction);
        }
        let this = self.clone();
        blocking(move || this.get_blocking(PREDICTIONS, keys, decode_prediction)).await
    }

    async fn put_predictions(&self, entries: &[PredictionEntry]) -> Result<(), StoreError> {
        let layout = &self.inner.options.layout;
        let items = entries
            .iter()
            .map(|e| {
                (
                    layout.prediction_key(&e.entity),
                    encode_prediction(&e.record),
                    Some(e.ttl),
                )
            })
            .collect();
        let this = self.clone();
        blocking(move || this.put_blocking(PREDICTIONS, items)).await
    }

    async fn put_encoded_predictions(
        &self,
        rows: EncodedRows,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let layout = &self.inner.options.layout;
        let items = rows
            .iter()
            .map(|(e, bytes)| (layout.prediction_key(e), bytes.to_vec(), Some(ttl)))
            .collect();
        let this = self.clone();
        blocking(move || this.put_blocking(PREDICTIONS, items)).await
    }

    async fn delete_predictions(&self, entities: &[String]) -> Result<(), StoreError> {
        let layout = &self.inner.options.layout;
        let keys: Vec<String> = entities.iter().map(|e| layout.prediction_key(e)).collect();
        let this = self.clone();
        blocking(move || {
            let txn = this.inner.db.begin_write().map_err(unavailable)?;
            {
                let mut table = txn.open_table(PREDICTIONS).map_err(unavailable)?;
                for key in &keys {
                    table.remove(key.as_str()).map_err(unavailable)?;
                }
            }
            txn.commit().map_err(unavailable)
        })
        .await
    }
}

#[async_trait]
impl FeatureStore for EmbeddedStore {
    async fn get_features(
        &self,
        entities: &[String],
    ) -> Result<Vec<Lookup<FeatureRow>>, StoreError> {
        let layout = &self.inner.options.layout;
        let keys: Vec<String> = entities.iter().map(|e| layout.feature_key(e)).collect();
        if keys.len() <= INLINE_READ {
            return self.get_blocking(FEATURES, keys, decode_features);
        }
        let this = self.clone();
        blocking(move || this.get_blocking(FEATURES, keys, decode_features)).await
    }

    async fn put_features(
        &self,
        rows: &[(String, FeatureRow)],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let layout = &self.inner.options.layout;
        let items = rows
            .iter()
            .map(|(e, row)| (layout.feature_key(e), encode_features(row), ttl))
            .collect();
        let this = self.clone();
        blocking(move || this.put_blocking(FEATURES, items)).await
    }

    async fn put_encoded_features(
        &self,
        rows: EncodedRows,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let layout = &self.inner.options.layout;
        let items = rows
            .iter()
            .map(|(e, bytes)| (layout.feature_key(e), bytes.to_vec(), ttl))
            .collect();
        let this = self.clone();
        blocking(move || this.put_blocking(FEATURES, items)).await
    }
}

#[async_trait]
impl ActivityLog for EmbeddedStore {
    async fn record_activity_counts(
        &self,
        counts: &[(String, u64)],
        at: SystemTime,
    ) -> Result<(), StoreError> {
        if counts.is_empty() {
            return Ok(());
        }
        let bucket = bucket_of(at, self.inner.options.activity_bucket);
        let counts = counts.to_vec();
        let this = self.clone();
        blocking(move || {
            let ns = this.inner.options.layout.activity_tag();
            let txn = this.inner.db.begin_write().map_err(unavailable)?;
            {
                let mut table = txn.open_table(ACTIVITY).map_err(unavailable)?;
                for (entity, n) in &counts {
                    let key = (ns.as_str(), bucket, entity.as_str());
                    let old = table
                        .get(key)
                        .map_err(unavailable)?
                        .map_or(0, |g| g.value());
                    table.insert(key, old + n).map_err(unavailable)?;
                }
            }
            txn.commit().map_err(unavailable)?;
            this.maybe_purge();
            Ok(())
        })
        .await
    }

    async fn top_active(
        &self,
        k: usize,
        lookback: Duration,
        now: SystemTime,
    ) -> Result<Vec<ActiveEntity>, StoreError> {
        let window = buckets_in_window(now, lookback, self.inner.options.activity_bucket);
        let this = self.clone();
        blocking(move || {
            let ns = this.inner.options.layout.activity_tag();
            let txn = this.inner.db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(ACTIVITY).map_err(unavailable)?;
            let mut counts: HashMap<String, u64> = HashMap::new();
            let start = (ns.as_str(), *window.start(), "");
            for item in table.range(start..).map_err(unavailable)? {
                let (key, count) = item.map_err(unavailable)?;
                let (tag, bucket, entity) = key.value();
                if tag != ns || bucket > *window.end() {
                    break;
                }
                *counts.entry(entity.to_owned()).or_default() += count.value();
            }
            Ok(top_k(counts, k))
        })
        .await
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn describe(&self) -> String {
        format!("embedded {}", self.inner.path.display())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let this = self.clone();
        blocking(move || {
            this.inner.db.begin_read().map_err(unavailable)?;
            Ok(())
        })
        .await
    }
}
