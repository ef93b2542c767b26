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
                let written = store.put_predictions(&buf).await;
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
