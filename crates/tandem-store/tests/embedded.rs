//! The shared suite on the embedded (redb) store, plus what only the
//! embedded store has: expired values purged and their space reused.

mod suite;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, ReadableDatabase, TableDefinition};
use tandem_store::{EmbeddedStore, PredictionStore, Store, StoreError, StoreOptions};

struct Embedded {
    dir: tempfile::TempDir,
}

impl Embedded {
    fn new() -> Self {
        Embedded {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("store.redb")
    }
}

impl suite::Harness for Embedded {
    fn store(&self) -> Arc<dyn Store> {
        Arc::new(EmbeddedStore::open(self.path(), StoreOptions::default()).unwrap())
    }

    fn plant_raw(&self, store: Arc<dyn Store>, key: &str, bytes: &[u8]) -> Arc<dyn Store> {
        drop(store);
        let table: TableDefinition<&str, &[u8]> = if key.starts_with("pred:") {
            TableDefinition::new("predictions")
        } else {
            TableDefinition::new("features")
        };
        let db = retry_open(&self.path());
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(table).unwrap();
            let mut value = 0u64.to_le_bytes().to_vec();
            value.extend_from_slice(bytes);
            t.insert(key, value.as_slice()).unwrap();
        }
        txn.commit().unwrap();
        drop(db);
        self.store()
    }
}

/// Opens the file directly once the store's last handle is gone (a
/// background purge may hold it for a moment).
fn retry_open(path: &std::path::Path) -> Database {
    for _ in 0..200 {
        if let Ok(db) = Database::create(path) {
            return db;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Database::create(path).unwrap()
}

store_suite!(Embedded::new(), "pred:e0", "features:e0");

#[tokio::test]
async fn expired_values_are_purged_and_their_space_reused() {
    let h = Embedded::new();
    let store = EmbeddedStore::open(h.path(), StoreOptions::default()).unwrap();
    let n = 20_000;
    let write_round = |round: usize| {
        let store = store.clone();
        async move {
            let entries: Vec<_> = (0..n)
                .map(|i| suite::entry(round * n + i, Duration::from_millis(300)))
                .collect();
            store.put_predictions(&entries).await.unwrap();
        }
    };
    write_round(0).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.purge_expired().await.unwrap(), n as u64);
    let size_after_first = std::fs::metadata(h.path()).unwrap().len();
    for round in 1..4 {
        write_round(round).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(store.purge_expired().await.unwrap(), n as u64);
    }
    let size_after_four = std::fs::metadata(h.path()).unwrap().len();
    assert!(
        size_after_four < size_after_first * 3 / 2,
        "file grew from {size_after_first} to {size_after_four} bytes although every round expired"
    );
}

#[tokio::test]
async fn a_file_that_is_not_a_store_is_unavailable_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.redb");
    std::fs::write(&path, b"this is not a redb database, just text").unwrap();
    let err = EmbeddedStore::open(&path, StoreOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("junk.redb"), "{err}");
}

#[tokio::test]
async fn a_second_open_of_the_same_file_is_refused() {
    let h = Embedded::new();
    let _first = EmbeddedStore::open(h.path(), StoreOptions::default()).unwrap();
    let err = EmbeddedStore::open(h.path(), StoreOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
}

#[tokio::test]
async fn opened_by_url_with_a_namespace() {
    let h = Embedded::new();
    let url = format!("{}?namespace=churn:", h.path().display());
    let store = tandem_store::open(&url).unwrap();
    store
        .put_predictions(&[suite::entry(1, Duration::from_secs(60))])
        .await
        .unwrap();
    drop(store);
    let db = retry_open(&h.path());
    let txn = db.begin_read().unwrap();
    let table = txn
        .open_table(TableDefinition::<&str, &[u8]>::new("predictions"))
        .unwrap();
    assert!(table.get("churn:pred:e1").unwrap().is_some());
}
