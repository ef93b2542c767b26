//! Scheduled warm and refresh jobs inside `tandem serve` (`[schedule]`):
//! one run at a time, each on the server's own model and stores, yielding
//! to requests between chunks (a chunk waits up to 50 ms while requests
//! are in flight or queued for the model), so that they never take the
//! real-time path's latency budget. Runs show in `/v1/stats` (`jobs`) and
//! in the batch-job metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_batch::{
    NoProgress, RefreshOptions, WarmOptions, WarmTargets, run_refresh_with, run_warm_with,
};
use tandem_core::parse_duration;
use tandem_engine::Engine;
use tandem_model::VersionSpec;
use tokio::sync::{Mutex, watch};

use crate::config::{RefreshSchedule, ScheduleSection, Timing, WarmSchedule, timing};

impl Timing {
    /// How long until the next run.
    fn next_delay(&self) -> Duration {
        match self {
            Timing::Every(d) => *d,
            Timing::Cron(s) => s
                .upcoming(chrono::Utc)
                .next()
                .and_then(|t| (t - chrono::Utc::now()).to_std().ok())
                .unwrap_or(Duration::from_secs(3600)),
        }
    }

    /// For `/v1/stats`.
    fn describe(&self) -> (Option<Duration>, Option<String>) {
        match self {
            Timing::Every(d) => (Some(*d), None),
            Timing::Cron(s) => (None, Some(s.to_string())),
        }
    }
}

/// Entities per chunk in the server (smaller than a standalone run: a
/// chunk is the unit between yields).
const CHUNK: usize = 512;

fn d(s: &str) -> Duration {
    // Validated with the configuration.
    parse_duration(s).unwrap_or(Duration::from_secs(3600))
}

async fn warm_once(engine: &Arc<Engine>, w: &WarmSchedule) -> Result<serde_json::Value, String> {
    let name = engine
        .models()
        .resolve_name(w.model.as_deref())
        .map_err(|e| e.to_string())?;
    let (model, _) = engine
        .models()
        .get(&name, &VersionSpec::Latest)
        .map_err(|e| e.to_string())?;
    let mut opts = WarmOptions::new(
        "(served model)",
        engine.store_description(),
        WarmTargets::TopK {
            k: w.top_k,
            lookback: d(&w.lookback),
        },
    );
    opts.ttl = d(&w.ttl);
    opts.chunk = CHUNK;
    let e = engine.clone();
    let busy = move || e.busy();
    let s = run_warm_with(
        &opts,
        model,
        engine.store(),
        engine.feature_backend(),
        &NoProgress,
        &busy,
    )
    .await
    .map_err(|e| e.to_string())?;
    serde_json::to_value(s).map_err(|e| e.to_string())
}

async fn refresh_once(
    engine: &Arc<Engine>,
    r: &RefreshSchedule,
) -> Result<serde_json::Value, String> {
    let name = engine
        .models()
        .resolve_name(r.model.as_deref())
        .map_err(|e| e.to_string())?;
    let (model, _) = engine
        .models()
        .get(&name, &VersionSpec::Latest)
        .map_err(|e| e.to_string())?;
    let mut opts = RefreshOptions::new(
        "(served model)",
        r.input.display().to_string(),
        engine.store_description(),
    );
    opts.id_column = r.id_column.clone();
    opts.changed_threshold = r.changed_threshold;
    opts.index = r.index.clone();
    opts.older_than = r.older_than.as_deref().map(d);
    opts.model_changed = r.model_changed;
    opts.active_within = r.active_within.as_deref().map(d);
    opts.ttl = d(&r.ttl);
    opts.chunk = CHUNK;
    let e = engine.clone();
    let busy = move || e.busy();
    let s = run_refresh_with(&opts, model, engine.store(), &NoProgress, &busy)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::to_value(s).map_err(|e| e.to_string())
}

/// Starts the configured jobs; they stop when `stop` turns true.
pub fn start(engine: Arc<Engine>, schedule: &ScheduleSection, stop: watch::Receiver<bool>) {
    // One job at a time across kinds.
    let one_at_a_time = Arc::new(Mutex::new(()));
    if let Some(w) = schedule.warm.clone() {
        let Ok(when) = timing("schedule.warm", w.every.as_deref(), w.cron.as_deref()) else {
            return;
        };
        let (every, cron) = when.describe();
        engine.jobs().register("warm", every, cron);
        let (engine, lock, mut stop) = (engine.clone(), one_at_a_time.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(when.next_delay()) => {}
                    _ = stop.changed() => return,
                }
                let _turn = lock.lock().await;
                engine.jobs().started("warm");
                let t = Instant::now();
                let result = warm_once(&engine, &w).await;
                if let Err(e) = &result {
                    tracing::warn!("scheduled warm failed: {e}");
                }
                engine.jobs().finished("warm", result, t.elapsed());
            }
        });
    }
    if let Some(r) = schedule.refresh.clone() {
        let Ok(when) = timing("schedule.refresh", r.every.as_deref(), r.cron.as_deref()) else {
            return;
        };
        let (every, cron) = when.describe();
        engine.jobs().register("refresh", every, cron);
        let (engine, lock, mut stop) = (engine, one_at_a_time, stop);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(when.next_delay()) => {}
                    _ = stop.changed() => return,
                }
                let _turn = lock.lock().await;
                engine.jobs().started("refresh");
                let t = Instant::now();
                let result = refresh_once(&engine, &r).await;
                if let Err(e) = &result {
                    tracing::warn!("scheduled refresh failed: {e}");
                }
                engine.jobs().finished("refresh", result, t.elapsed());
            }
        });
    }
}
