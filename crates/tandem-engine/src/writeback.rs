//! Writes real-time predictions to the store off the request path: a
//! bounded queue drained by one task in batches, flushed at shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tandem_store::{PredictionEntry, PredictionStore};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

use crate::stats::Stats;

const BATCH: usize = 256;

/// Handle to the writer task.
pub struct WriteBack {
    tx: mpsc::Sender<PredictionEntry>,
    pending: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for WriteBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBack")
            .field("pending", &self.pending())
            .finish()
    }
}

impl WriteBack {
    /// Starts the writer (on the current tokio runtime) with room for
    /// `capacity` queued records.
    pub fn start(store: Arc<dyn PredictionStore>, capacity: usize, stats: Arc<Stats>) -> WriteBack {
        let (tx, mut rx) = mpsc::channel::<PredictionEntry>(capacity.max(1));
        let (stop, mut stopped) = watch::channel(false);
        let pending = Arc::new(AtomicUsize::new(0));
        let task_pending = pending.clone();
        let task = tokio::spawn(async move {
            let mut buf = Vec::with_capacity(BATCH);
            let mut stopping = false;
            loop {
                tokio::select! {
                    biased;
                    n = rx.recv_many(&mut buf, BATCH) => {
                        if n == 0 {
                            break;
                        }
                    }
                    _ = stopped.changed(), if !stopping => {
                        stopping = true;
                        rx.close();
                        continue;
                    }
                }
                let t = std::time::Instant::now();
                // A store that panics fails this batch only: the task goes
                // on writing the next ones.
                let written =
                    crate::error::unless_panicked("write-back", store.put_predictions(&buf)).await;
                crate::telemetry::stage("store_write", t.elapsed());
                if let Err(e) = written {
                    crate::telemetry::error("store_unavailable");
                    tracing::warn!("writing {} real-time predictions failed: {e}", buf.len());
                    stats.writes_failed(buf.len());
                }
                task_pending.fetch_sub(buf.len(), Ordering::Relaxed);
                buf.clear();
            }
        });
        WriteBack {
            tx,
            pending,
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    /// Queues a record for the store; `false` when the queue is full or
    /// closed (the record is then only in memory).
    pub fn push(&self, entry: PredictionEntry) -> bool {
        match self.tx.try_send(entry) {
            Ok(()) => {
                self.pending.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    /// Records queued or being written.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Stops taking records and waits until every queued one is written
    /// (or has failed).
    pub async fn flush(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().await.take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;
    use std::time::Duration;

    use async_trait::async_trait;
    use tandem_core::{HealthThresholds, PredictionRecord, PredictionSource};
    use tandem_store::{Lookup, StoreError};

    use super::*;

    /// Keeps what it is given; panics on a batch holding entity "boom".
    #[derive(Default)]
    struct Kept(StdMutex<Vec<String>>);

    #[async_trait]
    impl PredictionStore for Kept {
        async fn get_predictions(
            &self,
            entities: &[String],
        ) -> Result<Vec<Lookup<PredictionRecord>>, StoreError> {
            Ok(entities
                .iter()
                .map(|e| Err(StoreError::NotFound { key: e.clone() }))
                .collect())
        }

        async fn put_predictions(&self, entries: &[PredictionEntry]) -> Result<(), StoreError> {
            assert!(
                !entries.iter().any(|e| e.entity == "boom"),
                "a bug in a store"
            );
            let mut kept = self.0.lock().unwrap();
            kept.extend(entries.iter().map(|e| e.entity.clone()));
            Ok(())
        }

        async fn delete_predictions(&self, _: &[String]) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn entry(entity: &str) -> PredictionEntry {
        PredictionEntry {
            entity: entity.into(),
            record: PredictionRecord {
                prediction: 1.0,
                timestamp: 1.0,
                values: None,
                model: "m".into(),
                version: 1,
                source: PredictionSource::Realtime,
                run_id: None,
                digest: None,
                inputs: None,
            },
            ttl: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn a_store_write_that_panics_fails_its_batch_and_the_writer_goes_on() {
        let store = Arc::new(Kept::default());
        let stats = Arc::new(Stats::new(60, HealthThresholds::default()));
        let writer = WriteBack::start(store.clone(), 16, stats.clone());
        assert!(writer.push(entry("boom")));
        let waited = std::time::Instant::now();
        while writer.pending() > 0 && waited.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            stats.snapshot().writes_failed,
            1,
            "the failed batch is counted"
        );
        assert!(writer.push(entry("fine")));
        writer.flush().await;
        assert_eq!(*store.0.lock().unwrap(), ["fine"]);
        assert_eq!(writer.pending(), 0);
    }
}
