//! Activity tracking: every entity asked for is counted in the store's
//! activity log (time buckets, so "top-K over the last H hours" is one
//! call), off the request path. Requests push ids into a bounded queue (a
//! full queue drops the id and counts it, never delays the answer); one
//! task drains it and adds the counts up per entity for up to
//! [`FLUSH_EVERY`] (or [`MAX_DISTINCT`] distinct entities), then writes
//! them in one call: a hot entity asked for a thousand times in that window
//! is one counter increment of 1000, and the store sees a few writes per
//! second whatever the request rate. At very high rates, `sample` records a
//! share of requests (each kept id counts once; the ranking of the top-K
//! is kept in expectation).

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tandem_core::shard::Counter;
use tandem_store::ActivityLog;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

const BATCH: usize = 1024;

/// Longest time counts wait before they are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Distinct entities after which counts are written at once.
pub const MAX_DISTINCT: usize = 16_384;

/// Entities per write.
const WRITE_SLICE: usize = 256;

/// Settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivityConfig {
    /// Whether requests are recorded at all.
    pub enabled: bool,
    /// Share of requests recorded, 0..=1.
    pub sample: f64,
    /// Ids waiting to be written.
    pub queue: usize,
}

impl Default for ActivityConfig {
    fn default() -> Self {
        ActivityConfig {
            enabled: true,
            sample: 1.0,
            queue: 65_536,
        }
    }
}

/// Counts, for `/v1/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ActivityCounts {
    /// Ids written to the activity log.
    pub recorded: u64,
    /// Ids dropped on a full queue.
    pub dropped: u64,
    /// Ids whose write failed (store down).
    pub failed: u64,
    /// Ids not recorded because of sampling.
    pub sampled_out: u64,
}

#[derive(Default)]
struct Counts {
    recorded: Counter,
    dropped: Counter,
    failed: Counter,
    sampled_out: Counter,
}

/// Handle to the recorder task.
pub struct Activity {
    tx: Option<mpsc::Sender<String>>,
    sample: f64,
    counts: Arc<Counts>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activity").finish_non_exhaustive()
    }
}

/// A cheap per-thread uniform draw in [0, 1) (xorshift64*, each thread
/// seeded differently).
fn draw() -> f64 {
    static SEEDS: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            SEEDS.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) | 1
        );
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    })
}

impl Activity {
    /// Starts the recorder on the current tokio runtime.
    pub fn start(log: Arc<dyn ActivityLog>, config: ActivityConfig) -> Activity {
        let counts = Arc::new(Counts::default());
        let (stop, mut stopped) = watch::channel(false);
        if !config.enabled {
            return Activity {
                tx: None,
                sample: 0.0,
                counts,
                stop,
                task: Mutex::new(None),
            };
        }
        let (tx, mut rx) = mpsc::channel::<String>(config.queue.max(1));
        let task_counts = counts.clone();
        let task = tokio::spawn(async move {
            let mut buf = Vec::with_capacity(BATCH);
            let mut pending: HashMap<String, u64> = HashMap::new();
            let mut ids = 0u64;
            let mut deadline: Option<tokio::time::Instant> = None;
            let mut stopping = false;
            let mut closed = false;
            loop {
                let flush_due = deadline
                    .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
                tokio::select! {
                    biased;
                    n = rx.recv_many(&mut buf, BATCH), if !closed => {
                        if n == 0 {
                            closed = true;
                        }
                    }
                    _ = stopped.changed(), if !stopping => {
                        stopping = true;
                        rx.close();
                        continue;
                    }
                    () = tokio::time::sleep_until(flush_due), if deadline.is_some() => {}
                }
                ids += buf.len() as u64;
                for id in buf.drain(..) {
                    *pending.entry(id).or_default() += 1;
                }
                if !pending.is_empty() && deadline.is_none() {
                    deadline = Some(tokio::time::Instant::now() + FLUSH_EVERY);
                }
                let due = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
                if !pending.is_empty() && (due || closed || pending.len() >= MAX_DISTINCT) {
                    let counts: Vec<(String, u64)> = pending.drain().collect();
                    // In slices, one after another: one burst of thousands
                    // of increments would hold a shared Redis for
                    // milliseconds, in front of the reads of requests.
                    let now = SystemTime::now();
                    let mut result = Ok(());
                    for slice in counts.chunks(WRITE_SLICE) {
                        result = log.record_activity_counts(slice, now).await;
                        if result.is_err() {
                            break;
                        }
                    }
                    match result {
                        Ok(()) => task_counts.recorded.add(ids),
                        Err(e) => {
                            tracing::warn!("recording the activity of {ids} requests failed: {e}");
                            task_counts.failed.add(ids);
                        }
                    }
                    ids = 0;
                    deadline = None;
                }
                if closed {
                    break;
                }
            }
        });
        Activity {
            tx: Some(tx),
            sample: config.sample.clamp(0.0, 1.0),
            counts,
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    /// Counts one request for each of `entities` (never waits).
    pub fn record(&self, entities: &[String]) {
        let Some(tx) = &self.tx else { return };
        for e in entities {
            if self.sample < 1.0 && draw() >= self.sample {
                self.counts.sampled_out.add(1);
                continue;
            }
            if tx.try_send(e.clone()).is_err() {
                self.counts.dropped.add(1);
            }
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> ActivityCounts {
        ActivityCounts {
            recorded: self.counts.recorded.get(),
            dropped: self.counts.dropped.get(),
            failed: self.counts.failed.get(),
            sampled_out: self.counts.sampled_out.get(),
        }
    }

    /// Stops taking ids and writes the queued ones.
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
    use super::draw;

    #[test]
    fn draws_are_uniform_enough() {
        let n = 100_000;
        let below: usize = (0..n).filter(|_| draw() < 0.25).count();
        assert!((23_000..27_000).contains(&below), "{below}");
        assert!((0..1000).map(|_| draw()).all(|x| (0.0..1.0).contains(&x)));
    }
}
