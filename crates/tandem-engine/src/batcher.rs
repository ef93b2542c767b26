//! The request batcher: concurrent model calls become one `[N, F]` batch.
//!
//! In the manner of text-embeddings-inference: callers put jobs on a bounded
//! queue (full queue: [`EngineError::Overloaded`], which the transports turn
//! into 429 with `Retry-After`); dedicated model threads take a batch only
//! when they are free, so batches form from whatever queued while the model
//! was busy, with no timer. Jobs whose caller went away (deadline passed,
//! connection closed) are dropped before they reach the model.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tandem_core::{FeatureBatch, Predictions};
use tandem_model::{Model, ModelError, OutputData, OutputTensor};
use tokio::sync::{mpsc, oneshot};

use crate::error::EngineError;

/// Batcher settings (TF Serving's names where it has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatcherConfig {
    /// Most rows in one model call (default 256). A single job larger than
    /// this runs alone.
    pub max_batch_size: usize,
    /// Most jobs waiting (default 2048); beyond it calls are refused.
    pub max_enqueued: usize,
    /// Dedicated model threads (default 1).
    pub num_batch_threads: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        BatcherConfig {
            max_batch_size: 256,
            max_enqueued: 2048,
            num_batch_threads: 1,
        }
    }
}

impl BatcherConfig {
    /// Checks the settings, naming the bad key.
    pub fn validate(&self) -> Result<(), String> {
        for (k, v) in [
            ("max_batch_size", self.max_batch_size),
            ("max_enqueued", self.max_enqueued),
            ("num_batch_threads", self.num_batch_threads),
        ] {
            if v == 0 {
                return Err(format!("{k} must be at least 1"));
            }
        }
        Ok(())
    }
}

/// What the batcher needs of a model: batch in, batch out, synchronous.
pub trait Runner: Send + Sync + 'static {
    /// Features per row.
    fn width(&self) -> usize;
    /// The prediction of every row.
    fn predict(&self, batch: &FeatureBatch) -> Result<Predictions, ModelError>;
    /// Every output of every row.
    fn run(&self, batch: &FeatureBatch) -> Result<Vec<OutputTensor>, ModelError>;
}

impl Runner for Model {
    fn width(&self) -> usize {
        Model::width(self)
    }
    fn predict(&self, batch: &FeatureBatch) -> Result<Predictions, ModelError> {
        Model::predict(self, batch)
    }
    fn run(&self, batch: &FeatureBatch) -> Result<Vec<OutputTensor>, ModelError> {
        Model::run(self, batch)
    }
}

/// What a job wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The prediction of each row ([`Runner::predict`]).
    Predictions,
    /// Every output ([`Runner::run`]).
    Outputs,
}

/// A job's result.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// For [`Want::Predictions`].
    Predictions(Predictions),
    /// For [`Want::Outputs`].
    Outputs(Vec<OutputTensor>),
}

/// A finished job and how it went.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    /// The result.
    pub output: Output,
    /// Time spent queued.
    pub queue_wait: Duration,
    /// Time of the model call it was part of.
    pub model_time: Duration,
    /// Rows in that model call.
    pub batch_rows: usize,
}

struct Job {
    runner: Arc<dyn Runner>,
    rows: Vec<f32>,
    want: Want,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Done, EngineError>>,
}

impl Job {
    fn n_rows(&self) -> usize {
        self.rows.len() / self.runner.width().max(1)
    }
}

/// Handle to the queue; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    max_enqueued: usize,
    in_queue: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("queued", &self.queued())
            .finish()
    }
}

impl Batcher {
    /// Starts the model threads. They stop when every handle is dropped.
    pub fn start(config: BatcherConfig) -> Batcher {
        let (tx, rx) = mpsc::channel(config.max_enqueued.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let in_queue = Arc::new(AtomicUsize::new(0));
        for i in 0..config.num_batch_threads.max(1) {
            let rx = rx.clone();
            let in_queue = in_queue.clone();
            let max = config.max_batch_size.max(1);
            std::thread::Builder::new()
                .name(format!("tandem-model-{i}"))
                .spawn(move || worker(&rx, &in_queue, max))
                .map(drop)
                .unwrap_or_else(|e| tracing::error!("cannot start a model thread: {e}"));
        }
        Batcher {
            tx,
            max_enqueued: config.max_enqueued,
            in_queue,
        }
    }

    /// Jobs waiting now.
    pub fn queued(&self) -> usize {
        self.in_queue.load(Ordering::Relaxed)
    }

    /// The queue bound.
    pub fn capacity(&self) -> usize {
        self.max_enqueued
    }

    /// Queues `rows` (row-major, a whole number of rows of the runner's
    /// width) and waits for the result. Dropping the returned future before
    /// it finishes withdraws the job if the model has not started it.
    pub async fn submit(
        &self,
        runner: Arc<dyn Runner>,
        rows: Vec<f32>,
        want: Want,
    ) -> Result<Done, EngineError> {
        let width = runner.width();
        if width == 0 || !rows.len().is_multiple_of(width) {
            return Err(EngineError::InvalidInput(format!(
                "{} values do not make rows of {width} features",
                rows.len()
            )));
        }
        let (reply, rx) = oneshot::channel();
        let job = Job {
            runner,
            rows,
            want,
            enqueued: Instant::now(),
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => {
                self.in_queue.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(EngineError::Overloaded {
                    queued: self.max_enqueued,
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(EngineError::ShuttingDown);
            }
        }
        rx.await.unwrap_or(Err(EngineError::ShuttingDown))
    }
}

fn worker(rx: &Mutex<mpsc::Receiver<Job>>, in_queue: &AtomicUsize, max_rows: usize) {
    loop {
        let jobs = {
            let Ok(mut rx) = rx.lock() else { return };
            let Some(first) = next_job(&mut rx) else {
                return;
            };
            let mut rows = first.n_rows();
            let mut jobs = vec![first];
            while rows < max_rows {
                match rx.try_recv() {
                    Ok(job) => {
                        rows += job.n_rows();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            jobs
        };
        in_queue.fetch_sub(jobs.len(), Ordering::Relaxed);
        let live: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
        run_jobs(live, max_rows);
    }
}

/// The next job, waiting for one if need be; `None` once every handle is
/// gone. With the queue empty the thread first yields its core once: the
/// callers it shares the cores with (the async workers, on a small
/// machine) then queue what they have, so the next batch holds more than
/// one job and a burst costs one wake-up of this thread instead of one per
/// job. No timer: when nothing came, it parks as before.
fn next_job(rx: &mut mpsc::Receiver<Job>) -> Option<Job> {
    match rx.try_recv() {
        Ok(job) => return Some(job),
        Err(mpsc::error::TryRecvError::Disconnected) => return None,
        Err(mpsc::error::TryRecvError::Empty) => {}
    }
    std::thread::yield_now();
    match rx.try_recv() {
        Ok(job) => Some(job),
        Err(mpsc::error::TryRecvError::Disconnected) => None,
        Err(mpsc::error::TryRecvError::Empty) => rx.blocking_recv(),
    }
}

/// Runs jobs grouped by (runner, want), each group in model calls of at
/// most `max_rows` rows (a larger single job runs alone).
fn run_jobs(mut jobs: Vec<Job>, max_rows: usize) {
    while !jobs.is_empty() {
        let key = group_key(&jobs[0]);
        let (mut group, rest): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|j| group_key(j) == key);
        jobs = rest;
        while !group.is_empty() {
            let mut rows = 0;
            let mut take = 0;
            for j in &group {
                if take > 0 && rows + j.n_rows() > max_rows {
                    break;
                }
                rows += j.n_rows();
                take += 1;
            }
            let call: Vec<Job> = group.drain(..take).collect();
            run_call(call);
        }
    }
}

fn group_key(job: &Job) -> (usize, Want) {
    (Arc::as_ptr(&job.runner).cast::<()>() as usize, job.want)
}

fn run_call(jobs: Vec<Job>) {
    let runner = jobs[0].runner.clone();
    let want = jobs[0].want;
    let width = runner.width();
    let counts: Vec<usize> = jobs.iter().map(Job::n_rows).collect();
    let total: usize = counts.iter().sum();
    let values: Vec<f32> = if jobs.len() == 1 {
        Vec::new()
    } else {
        let mut v = Vec::with_capacity(total * width);
        for j in &jobs {
            v.extend_from_slice(&j.rows);
        }
        v
    };
    let batch = if jobs.len() == 1 {
        FeatureBatch::new(jobs[0].rows.clone(), width)
    } else {
        FeatureBatch::new(values, width)
    };
    let batch = match batch {
        Ok(b) => b,
        Err(e) => {
            for j in jobs {
                let _ = j.reply.send(Err(EngineError::InvalidInput(e.to_string())));
            }
            return;
        }
    };
    let started = Instant::now();
    // A model that panics (a bug in a converter's graph or in the runtime)
    // fails this call's callers with a model error; the thread goes on,
    // where it would otherwise end and leave every later job waiting.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match want {
        Want::Predictions => runner.predict(&batch).map(Output::Predictions),
        Want::Outputs => runner.run(&batch).map(Output::Outputs),
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!("a model call panicked: {what}");
        Err(ModelError::Run(format!("the model panicked: {what}")))
    });
    let model_time = started.elapsed();
    crate::telemetry::stage("model", model_time);
    crate::telemetry::batch_rows(total);
    match result {
        Ok(output) => {
            let parts = split(output, &counts, total);
            match parts {
                Some(parts) => {
                    for (j, output) in jobs.into_iter().zip(parts) {
                        let _ = j.reply.send(Ok(Done {
                            output,
                            queue_wait: started.duration_since(j.enqueued),
                            model_time,
                            batch_rows: total,
                        }));
                    }
                }
                // An output without a leading batch dimension cannot be
                // split between callers: run each job on its own.
                None => {
                    for j in jobs {
                        run_call(vec![j]);
                    }
                }
            }
        }
        Err(e) => {
            // One bad row (say, a NaN the model rejects) must not fail the
            // other callers in the batch: rerun jobs alone to find it.
            if jobs.len() > 1 {
                for j in jobs {
                    run_call(vec![j]);
                }
            } else {
                let e = EngineError::from(e);
                for j in jobs {
                    let _ = j.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Splits a batch result into one part per job of `counts` rows.
fn split(output: Output, counts: &[usize], total: usize) -> Option<Vec<Output>> {
    if counts.len() == 1 {
        return Some(vec![output]);
    }
    match output {
        Output::Predictions(p) => {
            let w = p.width();
            let values = p.values();
            let mut parts = Vec::with_capacity(counts.len());
            let mut at = 0;
            for &n in counts {
                let part = Predictions::new(values[at * w..(at + n) * w].to_vec(), w).ok()?;
                parts.push(Output::Predictions(part));
                at += n;
            }
            Some(parts)
        }
        Output::Outputs(tensors) => {
            let mut parts: Vec<Vec<OutputTensor>> = vec![Vec::new(); counts.len()];
            for t in tensors {
                if t.shape.first() != Some(&total) {
                    return None;
                }
                let per_row: usize = t.shape[1..].iter().product();
                let mut at = 0;
                for (k, &n) in counts.iter().enumerate() {
                    let range = at * per_row..(at + n) * per_row;
                    let data = match &t.data {
                        OutputData::F32(v) => OutputData::F32(v[range].to_vec()),
                        OutputData::I64(v) => OutputData::I64(v[range].to_vec()),
                        OutputData::String(v) => OutputData::String(v[range].to_vec()),
                    };
                    let mut shape = t.shape.clone();
                    shape[0] = n;
                    parts[k].push(OutputTensor {
                        name: t.name.clone(),
                        shape,
                        data,
                    });
                    at += n;
                }
            }
            Some(parts.into_iter().map(Output::Outputs).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use super::*;

    /// Doubles the first feature; records the batch sizes it saw; can be
    /// made slow, fails on a row whose first feature is negative, and
    /// panics on one whose first feature is 666.
    struct Fake {
        width: usize,
        seen: StdMutex<Vec<usize>>,
        delay: Duration,
    }

    impl Fake {
        fn new(width: usize, delay: Duration) -> Arc<Fake> {
            Arc::new(Fake {
                width,
                seen: StdMutex::default(),
                delay,
            })
        }
    }

    impl Runner for Fake {
        fn width(&self) -> usize {
            self.width
        }
        fn predict(&self, batch: &FeatureBatch) -> Result<Predictions, ModelError> {
            self.seen.lock().unwrap().push(batch.rows());
            std::thread::sleep(self.delay);
            let mut out = vec![];
            for i in 0..batch.rows() {
                let x = batch.row(i)[0];
                assert!(x != 666.0, "a bug in the model");
                if x < 0.0 {
                    return Err(ModelError::Run(format!("negative input {x}")));
                }
                out.push(x * 2.0);
            }
            Ok(Predictions::new(out, 1).unwrap())
        }
        fn run(&self, batch: &FeatureBatch) -> Result<Vec<OutputTensor>, ModelError> {
            let p = self.predict(batch)?;
            Ok(vec![OutputTensor {
                name: "y".into(),
                shape: vec![batch.rows(), 1],
                data: OutputData::F32(p.values().to_vec()),
            }])
        }
    }

    fn config(max_batch_size: usize, max_enqueued: usize) -> BatcherConfig {
        BatcherConfig {
            max_batch_size,
            max_enqueued,
            num_batch_threads: 1,
        }
    }

    fn prediction(done: &Done) -> Vec<f32> {
        match &done.output {
            Output::Predictions(p) => p.values().to_vec(),
            Output::Outputs(_) => panic!("asked for predictions"),
        }
    }

    fn job(runner: &Arc<Fake>, x: f32) -> (Job, oneshot::Receiver<Result<Done, EngineError>>) {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            runner: runner.clone(),
            rows: vec![x, 0.0],
            want: Want::Predictions,
            enqueued: Instant::now(),
            reply,
        };
        (job, rx)
    }

    #[test]
    fn the_next_job_is_taken_queued_or_awaited_and_none_once_closed() {
        let fake = Fake::new(2, Duration::ZERO);
        let (tx, mut rx) = mpsc::channel(8);
        // Queued: taken in order without waiting.
        let (a, _ra) = job(&fake, 1.0);
        let (b, _rb) = job(&fake, 2.0);
        tx.try_send(a).ok().unwrap();
        tx.try_send(b).ok().unwrap();
        assert_eq!(next_job(&mut rx).unwrap().rows[0], 1.0);
        assert_eq!(next_job(&mut rx).unwrap().rows[0], 2.0);
        // Empty: waits for the one sent later from another thread.
        let (c, _rc) = job(&fake, 3.0);
        let sender = tx.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            sender.try_send(c).ok().unwrap();
        });
        assert_eq!(next_job(&mut rx).unwrap().rows[0], 3.0);
        t.join().unwrap();
        // Every handle gone: none, after what is still queued.
        let (d, _rd) = job(&fake, 4.0);
        tx.try_send(d).ok().unwrap();
        drop(tx);
        assert_eq!(next_job(&mut rx).unwrap().rows[0], 4.0);
        assert!(next_job(&mut rx).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_jobs_share_model_calls_and_get_their_own_rows() {
        let fake = Fake::new(2, Duration::from_millis(20));
        let b = Batcher::start(config(64, 100));
        let mut handles = vec![];
        for i in 0..40 {
            let b = b.clone();
            let r: Arc<dyn Runner> = fake.clone();
            handles.push(tokio::spawn(async move {
                let rows = vec![i as f32, 0.0, i as f32 + 0.5, 0.0];
                b.submit(r, rows, Want::Predictions).await
            }));
        }
        for (i, h) in handles.into_iter().enumerate() {
            let done = h.await.unwrap().unwrap();
            assert_eq!(prediction(&done), [i as f32 * 2.0, i as f32 * 2.0 + 1.0]);
        }
        let seen = fake.seen.lock().unwrap().clone();
        assert_eq!(seen.iter().sum::<usize>(), 80);
        // The first job runs alone; the others queue behind it and share.
        assert!(seen.len() < 40, "no batching happened: {seen:?}");
        assert!(seen.iter().all(|&n| n <= 64), "{seen:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_instead_of_waiting() {
        let fake = Fake::new(1, Duration::from_millis(200));
        let b = Batcher::start(config(1, 2));
        let mut handles = vec![];
        for _ in 0..8 {
            let b = b.clone();
            let r: Arc<dyn Runner> = fake.clone();
            handles.push(tokio::spawn(async move {
                b.submit(r, vec![1.0], Want::Predictions).await
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut overloaded = 0;
        let mut ok = 0;
        for h in handles {
            match h.await.unwrap() {
                Ok(_) => ok += 1,
                Err(EngineError::Overloaded { queued }) => {
                    assert_eq!(queued, 2);
                    overloaded += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(overloaded >= 4, "ok {ok}, overloaded {overloaded}");
        assert!(ok >= 2, "ok {ok}, overloaded {overloaded}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abandoned_jobs_never_reach_the_model() {
        let fake = Fake::new(1, Duration::from_millis(100));
        let b = Batcher::start(config(1, 100));
        let r: Arc<dyn Runner> = fake.clone();
        // Occupy the model thread.
        let busy = tokio::spawn({
            let b = b.clone();
            let r = r.clone();
            async move { b.submit(r, vec![1.0], Want::Predictions).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // These callers give up long before the model is free.
        for _ in 0..5 {
            let gave_up = tokio::time::timeout(
                Duration::from_millis(5),
                b.submit(r.clone(), vec![3.0], Want::Predictions),
            )
            .await;
            assert!(gave_up.is_err());
        }
        busy.await.unwrap().unwrap();
        let after = b
            .submit(r.clone(), vec![4.0], Want::Predictions)
            .await
            .unwrap();
        assert_eq!(prediction(&after), [8.0]);
        assert_eq!(*fake.seen.lock().unwrap(), [1, 1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_failing_job_does_not_fail_its_batch_mates() {
        let fake = Fake::new(1, Duration::from_millis(30));
        let b = Batcher::start(config(64, 100));
        let mut handles = vec![];
        for x in [1.0, 2.0, -1.0, 3.0] {
            let b = b.clone();
            let r: Arc<dyn Runner> = fake.clone();
            handles.push(tokio::spawn(async move {
                b.submit(r, vec![x], Want::Outputs).await
            }));
        }
        let results: Vec<_> = futures_join(handles).await;
        assert!(matches!(&results[2], Err(EngineError::Model(m)) if m.contains("negative")));
        for i in [0, 1, 3] {
            let done = results[i].as_ref().unwrap();
            match &done.output {
                Output::Outputs(t) => {
                    assert_eq!(t[0].shape, [1, 1]);
                    assert_eq!(t[0].data, OutputData::F32(vec![[2.0, 4.0, 0.0, 6.0][i]]));
                }
                Output::Predictions(_) => panic!("asked for outputs"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_model_that_panics_fails_its_callers_and_the_thread_goes_on() {
        let fake = Fake::new(1, Duration::from_millis(30));
        let b = Batcher::start(config(64, 100));
        let mut handles = vec![];
        for x in [1.0, 666.0, 3.0] {
            let b = b.clone();
            let r: Arc<dyn Runner> = fake.clone();
            handles.push(tokio::spawn(async move {
                b.submit(r, vec![x], Want::Predictions).await
            }));
        }
        let results: Vec<_> = futures_join(handles).await;
        assert!(
            matches!(&results[1], Err(EngineError::Model(m)) if m.contains("panicked")),
            "{:?}",
            results[1].as_ref().err()
        );
        assert_eq!(prediction(results[0].as_ref().unwrap()), [2.0]);
        assert_eq!(prediction(results[2].as_ref().unwrap()), [6.0]);
        // The one model thread is still there for the next job.
        let after = b
            .submit(fake.clone(), vec![5.0], Want::Predictions)
            .await
            .unwrap();
        assert_eq!(prediction(&after), [10.0]);
    }

    #[tokio::test]
    async fn ragged_rows_are_invalid_input() {
        let fake = Fake::new(3, Duration::ZERO);
        let b = Batcher::start(config(8, 8));
        let err = b
            .submit(fake, vec![1.0, 2.0], Want::Predictions)
            .await
            .unwrap_err();
        assert!(matches!(err, EngineError::InvalidInput(_)), "{err}");
    }

    async fn futures_join(
        handles: Vec<tokio::task::JoinHandle<Result<Done, EngineError>>>,
    ) -> Vec<Result<Done, EngineError>> {
        let mut out = vec![];
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }
}
