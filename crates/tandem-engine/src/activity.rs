//! Activity tracking: every entity asked for is counted in the store's
//! activity log (time buckets, so "top-K over the last H hours" is one
//! call), off the request path.
//!
//! A request adds its ids to the counts of its thread's shard (a map from
//! entity to requests behind an uncontended lock: a hot entity costs a hash
//! and an increment, no allocation, no message, no wake-up). One task takes
//! the shards' counts [`FLUSH_EVERY`] after the first id since the last
//! write, or at once when a shard fills up, adds them up per entity and
//! writes them in slices: a hot entity asked for a thousand times in that
//! window is one counter increment of 1000, and the store sees a few writes
//! per second whatever the request rate. Counts of at most `queue` distinct
//! entities wait at once; beyond that an id is dropped and counted, never
//! delaying the answer. At very high rates, `sample` records a share of
//! requests (each kept id counts once; the ranking of the top-K is kept in
//! expectation).

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tandem_core::shard::Counter;
use tandem_store::ActivityLog;
use tokio::sync::{Mutex, Notify};
use tokio::task::JoinHandle;

/// Longest time counts wait before they are written. A second: the
/// counts only rank entities for warming, which looks back hours, and the
/// longer the window, the more requests for one entity become one
/// increment (under a Zipf-like draw from a million entities, 0.46 writes
/// per request over a second against 0.61 over 100 ms).
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Entities per write.
const WRITE_SLICE: usize = 256;

/// Settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivityConfig {
    /// Whether requests are recorded at all.
    pub enabled: bool,
    /// Share of requests recorded, 0..=1.
    pub sample: f64,
    /// Distinct entities whose counts may wait to be written.
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
    /// Ids dropped because too many distinct entities were waiting.
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

/// The counts one thread has added since the last write.
#[derive(Default)]
struct Shard {
    pending: HashMap<String, u64>,
    ids: u64,
}

/// A shard on its own cache line, so threads do not share one.
#[repr(align(128))]
#[derive(Default)]
struct Padded(SyncMutex<Shard>);

/// What requests and the writer task share.
struct Shared {
    shards: Box<[Padded]>,
    /// Distinct entities one shard may hold.
    per_shard: usize,
    /// Set by the first id after a write; the writer clears it before it
    /// takes the shards.
    armed: AtomicBool,
    /// A shard is full: write now.
    full: AtomicBool,
    /// No more ids are taken (after [`Activity::flush`]).
    closed: AtomicBool,
    wake: Notify,
    /// Ids dropped because their thread's shard was full.
    dropped: Counter,
}

/// Handle to the recorder.
pub struct Activity {
    shared: Option<Arc<Shared>>,
    sample: f64,
    counts: Arc<Counts>,
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

/// This thread's shard number (threads take numbers in turn).
fn shard_of_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    MINE.with(|m| *m)
}

impl Shared {
    /// Adds one request of each id to this thread's shard.
    fn add<'a>(&self, ids: impl Iterator<Item = &'a String>) {
        let shard = &self.shards[shard_of_thread() % self.shards.len()];
        let mut dropped = 0;
        let mut full = false;
        {
            let mut s = shard.0.lock().unwrap_or_else(|p| p.into_inner());
            for id in ids {
                if let Some(n) = s.pending.get_mut(id.as_str()) {
                    *n += 1;
                } else if s.pending.len() < self.per_shard {
                    s.pending.insert(id.clone(), 1);
                } else {
                    dropped += 1;
                    full = true;
                    continue;
                }
                s.ids += 1;
            }
            full |= s.pending.len() >= self.per_shard;
        }
        if dropped > 0 {
            self.dropped.add(dropped);
        }
        if full && !self.full.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
        if !self.armed.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Takes every shard's counts, added up per entity, and how many ids
    /// they count.
    fn take(&self) -> (HashMap<String, u64>, u64) {
        let mut all: HashMap<String, u64> = HashMap::new();
        let mut ids = 0;
        for shard in &self.shards {
            let taken = std::mem::take(&mut *shard.0.lock().unwrap_or_else(|p| p.into_inner()));
            ids += taken.ids;
            if all.is_empty() {
                all = taken.pending;
            } else {
                for (id, n) in taken.pending {
                    *all.entry(id).or_default() += n;
                }
            }
        }
        (all, ids)
    }
}

impl Activity {
    /// Starts the recorder on the current tokio runtime.
    pub fn start(log: Arc<dyn ActivityLog>, config: ActivityConfig) -> Activity {
        let counts = Arc::new(Counts::default());
        if !config.enabled {
            return Activity {
                shared: None,
                sample: 0.0,
                counts,
                task: Mutex::new(None),
            };
        }
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        let n = (threads * 2).clamp(2, 64).min(config.queue.max(1));
        let shared = Arc::new(Shared {
            shards: (0..n).map(|_| Padded::default()).collect(),
            per_shard: (config.queue / n).max(1),
            armed: AtomicBool::new(false),
            full: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            wake: Notify::new(),
            dropped: Counter::default(),
        });
        let task = tokio::spawn(write_counts(log, shared.clone(), counts.clone()));
        Activity {
            shared: Some(shared),
            sample: config.sample.clamp(0.0, 1.0),
            counts,
            task: Mutex::new(Some(task)),
        }
    }

    /// Counts one request for each of `entities` (never waits).
    pub fn record(&self, entities: &[String]) {
        let Some(shared) = &self.shared else { return };
        if shared.closed.load(Ordering::Acquire) {
            self.counts.dropped.add(entities.len() as u64);
            return;
        }
        if entities.is_empty() {
            return;
        }
        if self.sample >= 1.0 {
            shared.add(entities.iter());
            return;
        }
        let kept: Vec<&String> = entities
            .iter()
            .filter(|_| {
                let keep = draw() < self.sample;
                if !keep {
                    self.counts.sampled_out.add(1);
                }
                keep
            })
            .collect();
        if !kept.is_empty() {
            shared.add(kept.into_iter());
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> ActivityCounts {
        let dropped = self.shared.as_ref().map_or(0, |s| s.dropped.get());
        ActivityCounts {
            recorded: self.counts.recorded.get(),
            dropped: self.counts.dropped.get() + dropped,
            failed: self.counts.failed.get(),
            sampled_out: self.counts.sampled_out.get(),
        }
    }

    /// Stops taking ids and writes the counts waiting.
    pub async fn flush(&self) {
        if let Some(shared) = &self.shared {
            shared.closed.store(true, Ordering::Release);
            shared.wake.notify_one();
        }
        let task = self.task.lock().await.take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

impl Drop for Activity {
    /// Lets the writer write what is waiting and stop.
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.closed.store(true, Ordering::Release);
            shared.wake.notify_one();
        }
    }
}

/// The writer task: waits for a first id, gives others [`FLUSH_EVERY`] to
/// join it (less when a shard fills), writes, and stops once closed and
/// written.
async fn write_counts(log: Arc<dyn ActivityLog>, shared: Arc<Shared>, counts: Arc<Counts>) {
    loop {
        let closed = shared.closed.load(Ordering::Acquire);
        if !closed && !shared.armed.load(Ordering::Acquire) {
            shared.wake.notified().await;
            continue;
        }
        if !closed && !shared.full.load(Ordering::Acquire) {
            // Give the window its time, unless a shard fills or we close.
            let _ = tokio::time::timeout(FLUSH_EVERY, async {
                loop {
                    shared.wake.notified().await;
                    if shared.full.load(Ordering::Acquire) || shared.closed.load(Ordering::Acquire)
                    {
                        return;
                    }
                }
            })
            .await;
        }
        // Cleared before taking: an id added after this point arms it
        // again and is written next time (or now, if it is in time).
        shared.armed.store(false, Ordering::Release);
        shared.full.store(false, Ordering::Release);
        let (pending, ids) = shared.take();
        if !pending.is_empty() {
            let pending: Vec<(String, u64)> = pending.into_iter().collect();
            // In slices, one after another: one burst of thousands of
            // increments would hold a shared Redis for milliseconds, in
            // front of the reads of requests.
            let now = SystemTime::now();
            let mut result = Ok(());
            for slice in pending.chunks(WRITE_SLICE) {
                // A store that panics fails this write only: counting goes on.
                result = crate::error::unless_panicked(
                    "activity",
                    log.record_activity_counts(slice, now),
                )
                .await;
                if result.is_err() {
                    break;
                }
            }
            match result {
                Ok(()) => counts.recorded.add(ids),
                Err(e) => {
                    tracing::warn!("recording the activity of {ids} requests failed: {e}");
                    counts.failed.add(ids);
                }
            }
        }
        if closed {
            // Ids added while closing were counted as dropped by `record`
            // or taken above.
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_uniform_enough() {
        let n = 100_000;
        let below: usize = (0..n).filter(|_| draw() < 0.25).count();
        assert!((23_000..27_000).contains(&below), "{below}");
        assert!((0..1000).map(|_| draw()).all(|x| (0.0..1.0).contains(&x)));
    }

    fn store() -> (tempfile::TempDir, Arc<dyn tandem_store::Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = tandem_store::open(dir.path().join("a.redb").to_str().unwrap()).unwrap();
        (dir, store)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_from_every_thread_add_up_exactly() {
        let (_dir, store) = store();
        let activity = Arc::new(Activity::start(store.clone(), ActivityConfig::default()));
        // Entity i asked for i + 1 times, from 8 tasks on 2 threads, in
        // requests of one to three ids, over several write windows.
        let mut tasks = vec![];
        for t in 0..8u64 {
            let activity = activity.clone();
            tasks.push(tokio::spawn(async move {
                let mut asked = vec![];
                for i in 0..200u64 {
                    for _ in 0..(i + 1) {
                        if (i + t) % 8 == 0 {
                            asked.push(format!("e{i}"));
                        }
                    }
                }
                for chunk in asked.chunks(3) {
                    activity.record(chunk);
                    if chunk.len() == 3 && chunk[0].ends_with('7') {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Counts are written without a flush, once their window is over.
        let waited = std::time::Instant::now();
        while activity.counts().recorded == 0 {
            assert!(
                waited.elapsed() < Duration::from_secs(30),
                "nothing written: {:?}",
                activity.counts()
            );
            tokio::time::sleep(FLUSH_EVERY).await;
        }
        activity.flush().await;
        let total: u64 = (1..=200).sum();
        assert_eq!(
            activity.counts(),
            ActivityCounts {
                recorded: total,
                dropped: 0,
                failed: 0,
                sampled_out: 0
            }
        );
        let top = store
            .top_active(5, Duration::from_secs(3600), SystemTime::now())
            .await
            .unwrap();
        let got: Vec<(String, u64)> = top.into_iter().map(|a| (a.entity, a.count)).collect();
        let want: Vec<(String, u64)> = (195..200u64)
            .rev()
            .map(|i| (format!("e{i}"), i + 1))
            .collect();
        assert_eq!(got, want);
        // After the flush nothing more is taken, and it says so.
        activity.record(&["late".to_string()]);
        assert_eq!(activity.counts().dropped, 1);
    }

    use tandem_store::StoreError;

    /// Keeps counts; panics on a write that counts entity "boom".
    #[derive(Default)]
    struct Kept(SyncMutex<Vec<(String, u64)>>);

    #[async_trait::async_trait]
    impl ActivityLog for Kept {
        async fn record_activity_counts(
            &self,
            counts: &[(String, u64)],
            _: SystemTime,
        ) -> Result<(), StoreError> {
            assert!(!counts.iter().any(|(e, _)| e == "boom"), "a bug in a store");
            self.0.lock().unwrap().extend_from_slice(counts);
            Ok(())
        }

        async fn top_active(
            &self,
            _: usize,
            _: Duration,
            _: SystemTime,
        ) -> Result<Vec<tandem_store::ActiveEntity>, StoreError> {
            Ok(vec![])
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_write_that_panics_is_counted_as_failed_and_counting_goes_on() {
        let log = Arc::new(Kept::default());
        let activity = Activity::start(log.clone(), ActivityConfig::default());
        activity.record(&["boom".to_string()]);
        let waited = std::time::Instant::now();
        while activity.counts().failed == 0 && waited.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(activity.counts().failed, 1, "{:?}", activity.counts());
        activity.record(&["fine".to_string(), "fine".to_string()]);
        activity.flush().await;
        assert_eq!(*log.0.lock().unwrap(), [("fine".to_string(), 2)]);
        assert_eq!(activity.counts().recorded, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entities_beyond_the_bound_are_dropped_and_counted() {
        let (_dir, store) = store();
        let config = ActivityConfig {
            queue: 2,
            ..ActivityConfig::default()
        };
        let activity = Activity::start(store.clone(), config);
        let ids: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
        // One call: one thread, one shard holding at most one entity.
        activity.record(&ids);
        activity.flush().await;
        let c = activity.counts();
        assert_eq!(c.recorded + c.dropped, 10, "{c:?}");
        assert!(c.dropped >= 8, "{c:?}");
        assert_eq!(c.failed, 0);
    }
}
