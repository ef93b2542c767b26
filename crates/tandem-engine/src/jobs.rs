//! The status of background jobs running in this process (scheduled warm
//! and refresh runs): what `/v1/stats` shows under `jobs`.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tandem_core::record::unix_seconds;

/// One job's record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobStatus {
    /// The job (`warm`, `refresh`).
    pub name: String,
    /// Its period, seconds (periodic jobs).
    pub every_secs: Option<f64>,
    /// Its cron expression (cron jobs).
    pub cron: Option<String>,
    /// Runs finished (successful or not).
    pub runs: u64,
    /// Runs that failed.
    pub failures: u64,
    /// Running now.
    pub running: bool,
    /// When the last run started (Unix seconds).
    pub last_started: Option<f64>,
    /// When the last run finished.
    pub last_finished: Option<f64>,
    /// Its wall time.
    pub last_wall_seconds: Option<f64>,
    /// Its summary (the job's own figures).
    pub last_summary: Option<serde_json::Value>,
    /// Its error, when it failed.
    pub last_error: Option<String>,
}

/// Jobs by name.
#[derive(Debug, Default)]
pub struct JobBoard {
    jobs: Mutex<BTreeMap<String, JobStatus>>,
}

impl JobBoard {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, JobStatus>) -> R) -> R {
        f(&mut self.jobs.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Declares a job that runs every `every`, or by a cron expression.
    pub fn register(&self, name: &str, every: Option<Duration>, cron: Option<String>) {
        self.with(|j| {
            j.insert(
                name.to_string(),
                JobStatus {
                    name: name.to_string(),
                    every_secs: every.map(|d| d.as_secs_f64()),
                    cron,
                    runs: 0,
                    failures: 0,
                    running: false,
                    last_started: None,
                    last_finished: None,
                    last_wall_seconds: None,
                    last_summary: None,
                    last_error: None,
                },
            );
        });
    }

    /// A run of `name` starts.
    pub fn started(&self, name: &str) {
        self.with(|j| {
            if let Some(s) = j.get_mut(name) {
                s.running = true;
                s.last_started = Some(unix_seconds(SystemTime::now()));
            }
        });
    }

    /// A run of `name` ended with its summary or its error.
    pub fn finished(&self, name: &str, result: Result<serde_json::Value, String>, wall: Duration) {
        self.with(|j| {
            if let Some(s) = j.get_mut(name) {
                s.running = false;
                s.runs += 1;
                s.last_finished = Some(unix_seconds(SystemTime::now()));
                s.last_wall_seconds = Some(wall.as_secs_f64());
                match result {
                    Ok(summary) => {
                        s.last_summary = Some(summary);
                        s.last_error = None;
                    }
                    Err(e) => {
                        s.failures += 1;
                        s.last_error = Some(e);
                    }
                }
            }
        });
    }

    /// Every job, by name.
    pub fn snapshot(&self) -> Vec<JobStatus> {
        self.with(|j| j.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_failures_are_counted() {
        let b = JobBoard::default();
        b.register("warm", Some(Duration::from_secs(60)), None);
        b.started("warm");
        assert!(b.snapshot()[0].running);
        b.finished(
            "warm",
            Ok(serde_json::json!({"warmed": 3})),
            Duration::from_millis(20),
        );
        b.started("warm");
        b.finished("warm", Err("store down".into()), Duration::from_millis(5));
        let s = &b.snapshot()[0];
        assert_eq!((s.runs, s.failures, s.running), (2, 1, false));
        assert_eq!(s.last_summary, Some(serde_json::json!({"warmed": 3})));
        assert_eq!(s.last_error.as_deref(), Some("store down"));
        // Unknown jobs are ignored.
        b.finished("other", Ok(serde_json::Value::Null), Duration::ZERO);
        assert_eq!(b.snapshot().len(), 1);
    }
}
