//! The behavioural suite every backend must pass. Each backend's test file
//! instantiates it with `store_suite!` and a harness that opens its store.

#![allow(dead_code, reason = "each test binary uses the parts it needs")]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tandem_core::{FeatureRow, PredictionRecord, PredictionSource, unix_seconds};
use tandem_store::{PredictionEntry, Store, StoreError};

/// How a backend's tests open stores and plant raw values.
pub trait Harness: Send + Sync + 'static {
    /// A fresh, empty store.
    fn store(&self) -> Arc<dyn Store>;
    /// Stores raw bytes under a full key, bypassing encoding.
    fn plant_raw(&self, store: Arc<dyn Store>, key: &str, bytes: &[u8]) -> Arc<dyn Store>;
}

pub fn record(i: usize) -> PredictionRecord {
    PredictionRecord {
        prediction: i as f64 * 0.001,
        timestamp: unix_seconds(SystemTime::now()),
        values: i.is_multiple_of(3).then(|| vec![i as f64, 1.0 - i as f64]),
        model: "churn".into(),
        version: 2,
        source: if i.is_multiple_of(2) {
            PredictionSource::Batch
        } else {
            PredictionSource::Realtime
        },
        run_id: Some("run-7".into()),
        digest: Some(format!("{i:016x}").into()),
        inputs: None,
    }
}

pub fn entry(i: usize, ttl: Duration) -> PredictionEntry {
    PredictionEntry {
        entity: format!("e{i}"),
        record: record(i),
        ttl,
    }
}

pub fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("e{i}")).collect()
}

const HOUR: Duration = Duration::from_secs(3600);

pub async fn prediction_round_trip(h: &impl Harness) {
    let store = h.store();
    let entries: Vec<PredictionEntry> = (0..5).map(|i| entry(i, HOUR)).collect();
    store.put_predictions(&entries).await.unwrap();
    let got = store.get_predictions(&ids(0..6)).await.unwrap();
    assert_eq!(got.len(), 6);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(got[i].as_ref().unwrap(), &e.record, "entity {i}");
    }
    assert!(
        matches!(&got[5], Err(StoreError::NotFound { key }) if key.ends_with("e5")),
        "{:?}",
        got[5]
    );
    // Overwrite, then delete.
    let mut newer = entry(1, HOUR);
    newer.record.prediction = 42.0;
    store.put_predictions(&[newer]).await.unwrap();
    let got = store.get_predictions(&ids(1..2)).await.unwrap();
    assert_eq!(got[0].as_ref().unwrap().prediction, 42.0);
    store.delete_predictions(&ids(0..2)).await.unwrap();
    let got = store.get_predictions(&ids(0..3)).await.unwrap();
    assert!(got[0].as_ref().unwrap_err().is_not_found());
    assert!(got[1].as_ref().unwrap_err().is_not_found());
    assert!(got[2].is_ok());
    // Empty batches are fine.
    assert!(store.get_predictions(&[]).await.unwrap().is_empty());
    store.put_predictions(&[]).await.unwrap();
}

pub async fn feature_round_trip(h: &impl Harness) {
    let store = h.store();
    let mut a = FeatureRow::new();
    a.insert("age", 31.0);
    a.insert("spend", -2.5e-3);
    let b = FeatureRow::new();
    store
        .put_features(&[("a".into(), a.clone()), ("b".into(), b.clone())], None)
        .await
        .unwrap();
    let got = store
        .get_features(&["a".into(), "b".into(), "c".into()])
        .await
        .unwrap();
    assert_eq!(got[0].as_ref().unwrap(), &a);
    assert_eq!(got[1].as_ref().unwrap(), &b);
    assert!(got[2].as_ref().unwrap_err().is_not_found());
}

/// Rows encoded back to back (bulk loads), with and without a TTL, in
/// more than one write's worth and over every hash slot's node.
pub async fn encoded_features_round_trip(h: &impl Harness) {
    let store = h.store();
    let names: Vec<String> = ["b", "a", "c"].iter().map(|s| s.to_string()).collect();
    let encoder = tandem_store::layout::FeatureEncoder::new(&names);
    let value = |i: usize, f: usize| (i * 3 + f) as f64 * 0.25 - 100.0;
    for (prefix, ttl) in [("plain", None), ("expiring", Some(HOUR))] {
        let mut rows = tandem_store::EncodedRows::with_capacity(2500, 32);
        for i in 0..2500 {
            let values: Vec<f64> = (0..3).map(|f| value(i, f)).collect();
            rows.push(&format!("{prefix}-{i}"), &encoder, &values);
        }
        store.put_encoded_features(rows, ttl).await.unwrap();
        let ids: Vec<String> = (0..2500).map(|i| format!("{prefix}-{i}")).collect();
        let got = store.get_features(&ids).await.unwrap();
        for (i, row) in got.iter().enumerate() {
            let row = row.as_ref().unwrap_or_else(|e| panic!("{prefix}-{i}: {e}"));
            for (f, name) in names.iter().enumerate() {
                assert_eq!(row.get(name), Some(value(i, f)), "{prefix}-{i} {name}");
            }
        }
    }
}

pub async fn encoded_predictions_round_trip(h: &impl Harness) {
    let store = h.store();
    let template = PredictionRecord {
        prediction: 0.0,
        timestamp: unix_seconds(SystemTime::now()),
        values: None,
        model: "churn \"v2\"".into(),
        version: 2,
        source: PredictionSource::Batch,
        run_id: Some("run-8".into()),
        digest: None,
        inputs: None,
    };
    let encoder = tandem_store::layout::RecordEncoder::new(&template).unwrap();
    let inputs = |i: usize| [i as f32 * 0.5, -(i as f32), 3.25];
    let expected = |i: usize| PredictionRecord {
        prediction: i as f64 * 0.001 - 1.0,
        digest: Some(tandem_core::digest::feature_digest(&inputs(i)).into()),
        inputs: Some(tandem_core::record::pack_inputs(&inputs(i)).into()),
        ..template.clone()
    };
    let encoded = |prefix: &str, n: usize| {
        let mut rows = tandem_store::EncodedRows::with_capacity(n, 200);
        let mut bytes = Vec::new();
        for i in 0..n {
            bytes.clear();
            encoder.write(expected(i).prediction, &inputs(i), &mut bytes);
            rows.push_encoded(&format!("{prefix}-{i}"), &bytes);
        }
        rows
    };
    // More than one write chunk, every record read back as it was.
    store
        .put_encoded_predictions(encoded("kept", 2500), HOUR)
        .await
        .unwrap();
    let ids: Vec<String> = (0..2500).map(|i| format!("kept-{i}")).collect();
    let got = store.get_predictions(&ids).await.unwrap();
    for (i, record) in got.iter().enumerate() {
        let record = record.as_ref().unwrap_or_else(|e| panic!("kept-{i}: {e}"));
        assert_eq!(record, &expected(i), "kept-{i}");
    }
    // Each record carries the TTL.
    store
        .put_encoded_predictions(encoded("brief", 3), Duration::from_millis(700))
        .await
        .unwrap();
    let brief: Vec<String> = (0..3).map(|i| format!("brief-{i}")).collect();
    assert!(store.get_predictions(&brief).await.unwrap()[2].is_ok());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for got in store.get_predictions(&brief).await.unwrap() {
        assert!(got.as_ref().unwrap_err().is_not_found(), "{got:?}");
    }
    assert!(store.get_predictions(&ids[..1]).await.unwrap()[0].is_ok());
}

pub async fn ttl_expiry(h: &impl Harness) {
    let store = h.store();
    store
        .put_predictions(&[entry(0, Duration::from_millis(700)), entry(1, HOUR)])
        .await
        .unwrap();
    let mut short = FeatureRow::new();
    short.insert("x", 1.0);
    store
        .put_features(&[("f".into(), short)], Some(Duration::from_millis(700)))
        .await
        .unwrap();
    let got = store.get_predictions(&ids(0..2)).await.unwrap();
    assert!(got[0].is_ok() && got[1].is_ok());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let got = store.get_predictions(&ids(0..2)).await.unwrap();
    assert!(got[0].as_ref().unwrap_err().is_not_found(), "{:?}", got[0]);
    assert!(got[1].is_ok());
    let got = store.get_features(&["f".into()]).await.unwrap();
    assert!(got[0].as_ref().unwrap_err().is_not_found(), "{:?}", got[0]);
}

pub async fn large_batches(h: &impl Harness) {
    let store = h.store();
    let n = 100_000;
    let entries: Vec<PredictionEntry> = (0..n).map(|i| entry(i, HOUR)).collect();
    store.put_predictions(&entries).await.unwrap();
    let got = store.get_predictions(&ids(0..n)).await.unwrap();
    assert_eq!(got.len(), n);
    for (i, (g, e)) in got.iter().zip(&entries).enumerate() {
        assert_eq!(g.as_ref().unwrap(), &e.record, "entity {i}");
    }
    let rows: Vec<(String, FeatureRow)> = (0..n)
        .map(|i| {
            let mut row = FeatureRow::new();
            row.insert("i", i as f64);
            (format!("e{i}"), row)
        })
        .collect();
    store.put_features(&rows, None).await.unwrap();
    let got = store.get_features(&ids(0..n)).await.unwrap();
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.as_ref().unwrap().get("i"), Some(i as f64));
    }
}

pub async fn concurrent_readers_and_writers(h: &impl Harness) {
    let store = h.store();
    let writers = 4;
    let per_writer = 2_000;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for chunk in (w * per_writer..(w + 1) * per_writer)
                .collect::<Vec<_>>()
                .chunks(250)
            {
                let entries: Vec<PredictionEntry> = chunk.iter().map(|&i| entry(i, HOUR)).collect();
                store.put_predictions(&entries).await.unwrap();
            }
        }));
    }
    for _ in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..20 {
                let got = store
                    .get_predictions(&ids(0..writers * per_writer))
                    .await
                    .unwrap();
                for (i, g) in got.iter().enumerate() {
                    match g {
                        Ok(r) => assert_eq!(r, &record_like(i, r), "round {round}"),
                        Err(e) => assert!(e.is_not_found(), "{e}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = store
        .get_predictions(&ids(0..writers * per_writer))
        .await
        .unwrap();
    assert!(got.iter().all(Result::is_ok));
}

/// `record(i)` with the timestamp of `seen` (timestamps differ per write).
fn record_like(i: usize, seen: &PredictionRecord) -> PredictionRecord {
    PredictionRecord {
        timestamp: seen.timestamp,
        ..record(i)
    }
}

pub async fn corrupt_values_are_errors(h: &impl Harness, prediction_key: &str, feature_key: &str) {
    let store = h.store();
    store
        .put_predictions(&[entry(1, HOUR), entry(2, HOUR)])
        .await
        .unwrap();
    let store = h.plant_raw(store, prediction_key, b"{\"prediction\": oops");
    let store = h.plant_raw(store, feature_key, br#"{"age": "thirty"}"#);
    let got = store.get_predictions(&ids(0..3)).await.unwrap();
    assert!(
        matches!(&got[0], Err(StoreError::Corrupt { key, .. }) if key == prediction_key),
        "{:?}",
        got[0]
    );
    assert!(got[1].is_ok() && got[2].is_ok());
    let got = store.get_features(&["e0".into()]).await.unwrap();
    assert!(
        matches!(&got[0], Err(StoreError::Corrupt { .. })),
        "{:?}",
        got[0]
    );
}

pub async fn activity_top_k(h: &impl Harness) {
    let store = h.store();
    let now = SystemTime::now();
    let hours_ago = |h: u64| now - Duration::from_secs(h * 3600);
    let many = |id: &str, n: usize| vec![id.to_owned(); n];
    store.record_activity(&many("hot", 5), now).await.unwrap();
    store
        .record_activity(&many("warm", 3), hours_ago(1))
        .await
        .unwrap();
    store
        .record_activity(&["b".into(), "a".into(), "warm".into()], hours_ago(2))
        .await
        .unwrap();
    store
        .record_activity(&many("old", 50), hours_ago(30))
        .await
        .unwrap();

    let top = store
        .top_active(10, Duration::from_secs(3 * 3600), now)
        .await
        .unwrap();
    let got: Vec<(&str, u64)> = top.iter().map(|e| (e.entity.as_str(), e.count)).collect();
    assert_eq!(got, [("hot", 5), ("warm", 4), ("a", 1), ("b", 1)]);

    // The cut falls inside a tie: ties go by entity id.
    let top = store
        .top_active(3, Duration::from_secs(3 * 3600), now)
        .await
        .unwrap();
    let got: Vec<&str> = top.iter().map(|e| e.entity.as_str()).collect();
    assert_eq!(got, ["hot", "warm", "a"]);

    let top = store
        .top_active(10, Duration::from_secs(48 * 3600), now)
        .await
        .unwrap();
    assert_eq!(top[0].entity, "old");
    assert_eq!(top[0].count, 50);

    let top = store
        .top_active(10, Duration::from_secs(60), now)
        .await
        .unwrap();
    assert_eq!(
        top.iter()
            .map(|e| e.entity.as_str())
            .collect::<HashSet<_>>(),
        HashSet::from(["hot"])
    );
    assert!(store.top_active(0, HOUR, now).await.unwrap().is_empty());
}

/// A bucket with more entities than one read of it returns (Redis reads a
/// bucket in slices of 10,000), written in two batches whose counts add up.
pub async fn activity_top_k_over_many_entities(h: &impl Harness) {
    let store = h.store();
    let now = SystemTime::now();
    let n = 25_000usize;
    let count = |i: usize| (i * 7919 % 1000) as u64 + 1;
    let first: Vec<(String, u64)> = (0..n).map(|i| (format!("e{i:05}"), count(i))).collect();
    store.record_activity_counts(&first, now).await.unwrap();
    // Again for every third entity: those counts double.
    let again: Vec<(String, u64)> = first.iter().step_by(3).cloned().collect();
    store.record_activity_counts(&again, now).await.unwrap();

    let mut want: Vec<(String, u64)> = (0..n)
        .map(|i| {
            let c = if i % 3 == 0 { 2 * count(i) } else { count(i) };
            (format!("e{i:05}"), c)
        })
        .collect();
    want.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for k in [1, 40, 333] {
        let top = store.top_active(k, HOUR, now).await.unwrap();
        let got: Vec<(String, u64)> = top.into_iter().map(|e| (e.entity, e.count)).collect();
        assert_eq!(got, want[..k], "top {k}");
    }
    let all = store.top_active(n + 10, HOUR, now).await.unwrap();
    assert_eq!(all.len(), n, "every entity once");
    assert_eq!(
        all.iter().map(|e| e.count).sum::<u64>(),
        want.iter().map(|w| w.1).sum::<u64>()
    );
}

pub async fn ping_answers(h: &impl Harness) {
    let store = h.store();
    store.ping().await.unwrap();
    assert!(!store.describe().is_empty());
}

/// Instantiates the suite for a harness expression.
#[macro_export]
macro_rules! store_suite {
    ($harness:expr, $pred_key:expr, $feat_key:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn prediction_round_trip() {
            suite::prediction_round_trip(&$harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn feature_round_trip() {
            suite::feature_round_trip(&$harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn encoded_features_round_trip() {
            suite::encoded_features_round_trip(&$harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn encoded_predictions_round_trip() {
            suite::encoded_predictions_round_trip(&$harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn ttl_expiry() {
            suite::ttl_expiry(&$harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn large_batches() {
            suite::large_batches(&$harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_readers_and_writers() {
            suite::concurrent_readers_and_writers(&$harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn corrupt_values_are_errors() {
            suite::corrupt_values_are_errors(&$harness, $pred_key, $feat_key).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn activity_top_k() {
            suite::activity_top_k(&$harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn activity_top_k_over_many_entities() {
            suite::activity_top_k_over_many_entities(&$harness).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn ping_answers() {
            suite::ping_answers(&$harness).await;
        }
    };
}
