//! Batches the store reads of concurrent requests: every feature or
//! prediction lookup queued while earlier ones are in flight goes out as one
//! multi-key read (one `MGET` per slot on Redis) instead of one per request.
//!
//! As in the model batcher, there is no timer: one task owns each queue and
//! sends a read as soon as fewer than `max_in_flight` reads are out, taking
//! everything queued by then. Under light load every lookup goes alone and
//! at once; under heavy load lookups share round trips.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tandem_core::{FeatureRow, PredictionRecord};
use tandem_store::{FeatureStore, Lookup, PredictionEntry, PredictionStore, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

/// Most lookups merged into one read.
const MAX_MERGED: usize = 256;

type Reply<T> = oneshot::Sender<Result<Vec<Lookup<T>>, StoreError>>;

struct Ask<T> {
    ids: Vec<String>,
    reply: Reply<T>,
}

/// A store whose reads of concurrent callers are merged.
pub struct Coalescing {
    inner: Arc<dyn Store>,
    features: mpsc::Sender<Ask<FeatureRow>>,
    predictions: mpsc::Sender<Ask<PredictionRecord>>,
}

impl Coalescing {
    /// Wraps `inner`, allowing `max_in_flight` merged reads of each kind at
    /// once. Must be called inside a tokio runtime.
    pub fn new(inner: Arc<dyn Store>, max_in_flight: usize) -> Coalescing {
        let (ftx, frx) = mpsc::channel(4096);
        let (ptx, prx) = mpsc::channel(4096);
        let s = inner.clone();
        tokio::spawn(run(frx, max_in_flight, move |ids: Vec<String>| {
            let s = s.clone();
            async move { s.get_features(&ids).await }
        }));
        let s = inner.clone();
        tokio::spawn(run(prx, max_in_flight, move |ids: Vec<String>| {
            let s = s.clone();
            async move { s.get_predictions(&ids).await }
        }));
        Coalescing {
            inner,
            features: ftx,
            predictions: ptx,
        }
    }
}

async fn run<T, F, Fut>(mut rx: mpsc::Receiver<Ask<T>>, max_in_flight: usize, read: F)
where
    T: Clone + Send + 'static,
    F: Fn(Vec<String>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Vec<Lookup<T>>, StoreError>> + Send + 'static,
{
    // The reads in flight are polled by this task itself rather than
    // spawned: a spawned read costs a task, and under load a hand-off to the
    // other worker, for every round trip.
    let max_in_flight = max_in_flight.max(1);
    let mut in_flight = FuturesUnordered::new();
    let mut asks: Vec<Ask<T>> = Vec::with_capacity(MAX_MERGED);
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some((result, batch)) = in_flight.next(), if !in_flight.is_empty() => {
                answer(result, batch);
            }
            n = rx.recv_many(&mut asks, MAX_MERGED), if open && in_flight.len() < max_in_flight => {
                if n == 0 {
                    open = false;
                    continue;
                }
                // The ids move into the merged read; each caller keeps its count.
                let mut ids: Vec<String> = Vec::new();
                let batch: Vec<(Reply<T>, usize)> = asks
                    .drain(..)
                    .filter(|a| !a.reply.is_closed())
                    .map(|a| {
                        let n = a.ids.len();
                        ids.extend(a.ids);
                        (a.reply, n)
                    })
                    .collect();
                if !batch.is_empty() {
                    // A read that panics fails its own callers only, as a
                    // task of its own would: the loop goes on serving.
                    let fut = crate::error::unless_panicked("coalescer", read(ids));
                    in_flight.push(async move { (fut.await, batch) });
                }
            }
            else => return,
        }
    }
}

/// Hands each caller of a merged read its own slice of the answer, in order.
fn answer<T>(result: Result<Vec<Lookup<T>>, StoreError>, batch: Vec<(Reply<T>, usize)>) {
    let asked: usize = batch.iter().map(|(_, n)| n).sum();
    match result {
        Ok(values) if values.len() != asked => {
            let e = StoreError::Backend {
                backend: "coalescer",
                detail: format!("{} values for {asked} keys", values.len()),
            };
            for (reply, _) in batch {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Ok(values) => {
            let mut rest = values.into_iter();
            for (reply, n) in batch {
                let mine: Vec<Lookup<T>> = rest.by_ref().take(n).collect();
                let _ = reply.send(Ok(mine));
            }
        }
        Err(e) => {
            for (reply, _) in batch {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

async fn ask<T>(tx: &mpsc::Sender<Ask<T>>, ids: &[String]) -> Result<Vec<Lookup<T>>, StoreError> {
    let (reply, rx) = oneshot::channel();
    let gone = || StoreError::Unavailable {
        backend: "coalescer",
        detail: "the read queue is closed".into(),
    };
    tx.send(Ask {
        ids: ids.to_vec(),
        reply,
    })
    .await
    .map_err(|_| gone())?;
    rx.await.map_err(|_| gone())?
}

#[async_trait]
impl FeatureStore for Coalescing {
    async fn get_features(
        &self,
        entities: &[String],
    ) -> Result<Vec<Lookup<FeatureRow>>, StoreError> {
        ask(&self.features, entities).await
    }

    async fn put_features(
        &self,
        rows: &[(String, FeatureRow)],
        ttl: Option<std::time::Duration>,
    ) -> Result<(), StoreError> {
        self.inner.put_features(rows, ttl).await
    }

    async fn put_encoded_features(
        &self,
        rows: tandem_store::layout::EncodedRows,
        ttl: Option<std::time::Duration>,
    ) -> Result<(), StoreError> {
        self.inner.put_encoded_features(rows, ttl).await
    }
}

#[async_trait]
impl PredictionStore for Coalescing {
    async fn get_predictions(
        &self,
        entities: &[String],
    ) -> Result<Vec<Lookup<PredictionRecord>>, StoreError> {
        ask(&self.predictions, entities).await
    }

    async fn put_predictions(&self, entries: &[PredictionEntry]) -> Result<(), StoreError> {
        self.inner.put_predictions(entries).await
    }

    async fn delete_predictions(&self, entities: &[String]) -> Result<(), StoreError> {
        self.inner.delete_predictions(entities).await
    }

    async fn put_encoded_predictions(
        &self,
        rows: tandem_store::layout::EncodedRows,
        ttl: std::time::Duration,
    ) -> Result<(), StoreError> {
        self.inner.put_encoded_predictions(rows, ttl).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_lookups_share_reads_and_get_their_own_answers() {
        let sizes = Arc::new(Mutex::new(Vec::<usize>::new()));
        let (tx, rx) = mpsc::channel::<Ask<String>>(1024);
        let seen = sizes.clone();
        tokio::spawn(run(rx, 1, move |ids: Vec<String>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(ids.len());
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(ids
                    .into_iter()
                    .map(|id| {
                        if id.starts_with("missing") {
                            Err(StoreError::NotFound { key: id })
                        } else {
                            Ok(format!("value of {id}"))
                        }
                    })
                    .collect())
            }
        }));
        let mut handles = vec![];
        for i in 0..50 {
            let tx = tx.clone();
            handles.push(tokio::spawn(async move {
                let ids = vec![format!("k{i}"), format!("missing{i}"), format!("k{i}b")];
                (i, ask(&tx, &ids).await)
            }));
        }
        for h in handles {
            let (i, got) = h.await.unwrap();
            let got = got.unwrap();
            assert_eq!(got[0].as_deref().unwrap(), format!("value of k{i}"));
            assert!(got[1].as_ref().unwrap_err().is_not_found());
            assert_eq!(got[2].as_deref().unwrap(), format!("value of k{i}b"));
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 150);
        assert!(sizes.len() < 50, "no lookups were merged: {sizes:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_overlap_up_to_the_limit_and_no_further() {
        // Every read waits at a gate the test opens; each read's ids are
        // logged as it starts.
        let gate = Arc::new(Semaphore::new(0));
        let started = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
        let (tx, rx) = mpsc::channel::<Ask<String>>(1024);
        let (g, st) = (gate.clone(), started.clone());
        tokio::spawn(run(rx, 2, move |ids: Vec<String>| {
            let (g, st) = (g.clone(), st.clone());
            async move {
                st.lock().unwrap().push(ids.clone());
                g.acquire().await.unwrap().forget();
                Ok(ids.into_iter().map(Ok).collect())
            }
        }));
        let ask_for = |id: &str| {
            let (tx, ids) = (tx.clone(), vec![id.to_string()]);
            tokio::spawn(async move { ask(&tx, &ids).await })
        };
        let reads_started = |n: usize| {
            let st = started.clone();
            async move {
                while st.lock().unwrap().len() < n {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        let a = ask_for("a");
        reads_started(1).await;
        let b = ask_for("b");
        reads_started(2).await;
        // Two reads are out: these two wait, and then share one.
        let c = ask_for("c");
        let d = ask_for("d");
        // Both reach the queue (on a loaded machine their tasks may run late),
        // unless a third read takes one of them.
        let waited = std::time::Instant::now();
        while tx.max_capacity() - tx.capacity() < 2
            && started.lock().unwrap().len() == 2
            && waited.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(started.lock().unwrap().len(), 2, "a third read went out");
        gate.add_permits(1);
        reads_started(3).await;
        gate.add_permits(2);
        for (task, id) in [(a, "a"), (b, "b"), (c, "c"), (d, "d")] {
            let got = task.await.unwrap().unwrap();
            assert_eq!(got[0].as_deref().unwrap(), id);
        }
        let mut started = started.lock().unwrap().clone();
        assert_eq!(started.len(), 3, "{started:?}");
        // c and d are asked from two tasks, so either may queue first.
        started[2].sort();
        assert_eq!(started[2], vec!["c".to_string(), "d".to_string()]);
    }

    #[tokio::test]
    async fn a_read_that_panics_fails_its_callers_and_nothing_else() {
        let (tx, rx) = mpsc::channel::<Ask<String>>(16);
        let coalescer = tokio::spawn(run(rx, 2, |ids: Vec<String>| async move {
            assert!(!ids.iter().any(|id| id == "boom"), "a bug in a store");
            Ok(ids.into_iter().map(Ok).collect())
        }));
        let err = ask(&tx, &["boom".to_string()]).await.unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        let got = ask(&tx, &["fine".to_string()]).await.unwrap();
        assert_eq!(got[0].as_deref().unwrap(), "fine");
        drop(tx);
        coalescer.await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_read_fails_every_lookup_in_it() {
        let (tx, rx) = mpsc::channel::<Ask<String>>(16);
        tokio::spawn(run(rx, 2, |_ids: Vec<String>| async {
            Err(StoreError::Unavailable {
                backend: "redis",
                detail: "connection refused".into(),
            })
        }));
        let err = ask(&tx, &["a".to_string()]).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
    }
}
