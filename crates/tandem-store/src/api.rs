//! The store traits. Every call is batch-first: a single key is a batch of
//! one. Results come back in the order of the keys asked for.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tandem_core::{FeatureRow, PredictionRecord};

use crate::error::{Lookup, StoreError};

/// A prediction to store, with its time to live.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionEntry {
    /// The entity the prediction is about.
    pub entity: String,
    /// The record.
    pub record: PredictionRecord,
    /// How long it lives (see [`tandem_core::TtlPolicy`]).
    pub ttl: Duration,
}

/// An entity and how many times it was asked for in a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveEntity {
    /// Entity id.
    pub entity: String,
    /// Requests counted in the window.
    pub count: u64,
}

/// Told by a store which stored predictions any client changed, so that an
/// in-process copy can be kept until it changes (the memory tier).
pub trait ChangeSink: Send + Sync + 'static {
    /// Changes are reported from now on, until [`ChangeSink::lost`].
    fn live(&self);
    /// These entities' records were written, deleted or expired.
    fn changed(&self, entities: &[&str]);
    /// Any record may have changed (the store was flushed).
    fn changed_all(&self);
    /// Changes are no longer reported (the connection dropped).
    fn lost(&self);
}

/// Prediction records by entity, with TTLs.
#[async_trait]
pub trait PredictionStore: Send + Sync {
    /// Reads the records of `entities`: per key, the record, `NotFound`
    /// (never stored or expired), or `Corrupt`.
    async fn get_predictions(
        &self,
        entities: &[String],
    ) -> Result<Vec<Lookup<PredictionRecord>>, StoreError>;

    /// Writes records, each with its own TTL. All or nothing per call on the
    /// embedded store; on Redis each key is written once (a retried call
    /// overwrites with the same value).
    async fn put_predictions(&self, entries: &[PredictionEntry]) -> Result<(), StoreError>;

    /// Deletes the records of `entities` (absent ones are ignored).
    async fn delete_predictions(&self, entities: &[String]) -> Result<(), StoreError>;

    /// Starts reporting to `sink` the prediction records any client
    /// changes, for as long as `sink` lives, and returns whether this store
    /// can (standalone Redis can, by client-side caching; the default
    /// cannot). Must be called inside a tokio runtime.
    fn watch_predictions(&self, sink: std::sync::Weak<dyn ChangeSink>) -> bool {
        let _ = sink;
        false
    }

    /// Writes records already encoded as
    /// [`crate::layout::encode_prediction`] encodes them (bulk writes, by
    /// [`crate::layout::RecordEncoder`]), each with `ttl`. The stores of
    /// this crate write the bytes as they are; the default decodes them and
    /// calls [`PredictionStore::put_predictions`].
    async fn put_encoded_predictions(
        &self,
        rows: crate::layout::EncodedRows,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let entries = rows
            .iter()
            .map(|(e, bytes)| {
                crate::layout::decode_prediction(e, bytes).map(|record| PredictionEntry {
                    entity: e.to_owned(),
                    record,
                    ttl,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.put_predictions(&entries).await
    }
}

/// Feature rows by entity.
#[async_trait]
pub trait FeatureStore: Send + Sync {
    /// Reads the feature rows of `entities`.
    async fn get_features(
        &self,
        entities: &[String],
    ) -> Result<Vec<Lookup<FeatureRow>>, StoreError>;

    /// Writes feature rows, replacing what was stored; `ttl` of `None` keeps
    /// them until overwritten.
    async fn put_features(
        &self,
        rows: &[(String, FeatureRow)],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError>;

    /// Writes feature rows already encoded by
    /// [`crate::layout::FeatureEncoder`] (bulk loads). The stores of this
    /// crate write the bytes as they are; the default decodes them and
    /// calls [`FeatureStore::put_features`].
    async fn put_encoded_features(
        &self,
        rows: crate::layout::EncodedRows,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let decoded = rows
            .iter()
            .map(|(e, bytes)| {
                crate::layout::decode_features(e, bytes).map(|row| (e.to_owned(), row))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.put_features(&decoded, ttl).await
    }
}

/// Counts of requests per entity in time buckets.
#[async_trait]
pub trait ActivityLog: Send + Sync {
    /// Records one request for each entity (repeats count repeatedly) at
    /// time `at`.
    async fn record_activity(&self, entities: &[String], at: SystemTime) -> Result<(), StoreError> {
        let mut counts: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        for e in entities {
            *counts.entry(e.as_str()).or_default() += 1;
        }
        let counts: Vec<(String, u64)> =
            counts.into_iter().map(|(e, n)| (e.to_owned(), n)).collect();
        self.record_activity_counts(&counts, at).await
    }

    /// Records `n` requests for each `(entity, n)` at time `at` (each
    /// entity once: the recorder aggregates before writing).
    async fn record_activity_counts(
        &self,
        counts: &[(String, u64)],
        at: SystemTime,
    ) -> Result<(), StoreError>;

    /// The `k` entities with the most requests in the buckets that overlap
    /// `[now - lookback, now]`, most active first (ties by entity id).
    async fn top_active(
        &self,
        k: usize,
        lookback: Duration,
        now: SystemTime,
    ) -> Result<Vec<ActiveEntity>, StoreError>;
}

/// A whole store: predictions, features and activity on one backend.
#[async_trait]
pub trait Store: PredictionStore + FeatureStore + ActivityLog {
    /// A short description for logs (`redis 127.0.0.1:6379`), no secrets.
    fn describe(&self) -> String;

    /// Checks that the backend answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Bucket index of time `t` for buckets of `width`.
pub(crate) fn bucket_of(t: SystemTime, width: Duration) -> u64 {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    secs / width.as_secs().max(1)
}

/// The buckets overlapping `[now - lookback, now]`, oldest first.
pub(crate) fn buckets_in_window(
    now: SystemTime,
    lookback: Duration,
    width: Duration,
) -> std::ops::RangeInclusive<u64> {
    let last = bucket_of(now, width);
    let first = bucket_of(
        now.checked_sub(lookback).unwrap_or(SystemTime::UNIX_EPOCH),
        width,
    );
    first..=last
}

/// Sorts counts into the top `k`, most active first, ties by entity id.
pub(crate) fn top_k(
    counts: impl IntoIterator<Item = (String, u64)>,
    k: usize,
) -> Vec<ActiveEntity> {
    let mut all: Vec<ActiveEntity> = counts
        .into_iter()
        .map(|(entity, count)| ActiveEntity { entity, count })
        .collect();
    let order = |a: &ActiveEntity, b: &ActiveEntity| {
        b.count.cmp(&a.count).then_with(|| a.entity.cmp(&b.entity))
    };
    // The k first without sorting the rest (a Redis top-K ranks every
    // entity of the window here).
    if k == 0 {
        return Vec::new();
    }
    if all.len() > k {
        all.select_nth_unstable_by(k - 1, order);
        all.truncate(k);
    }
    all.sort_unstable_by(order);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_covers_every_overlapping_bucket() {
        let w = Duration::from_secs(300);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(3000 + 10);
        assert_eq!(buckets_in_window(now, Duration::from_secs(600), w), 8..=10);
        assert_eq!(buckets_in_window(now, Duration::ZERO, w), 10..=10);
    }

    #[test]
    fn top_k_orders_by_count_then_id() {
        let t = top_k([("b".into(), 2), ("a".into(), 2), ("c".into(), 5)], 2);
        assert_eq!(
            t.iter()
                .map(|e| (e.entity.as_str(), e.count))
                .collect::<Vec<_>>(),
            [("c", 5), ("a", 2)]
        );
    }
}
