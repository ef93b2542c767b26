//! Batch-job metrics through the `metrics` facade: recorded wherever a
//! recorder is installed (the server's, when a job runs inside `tandem
//! serve`), nearly free where none is. Labels: `job` (`batch`,
//! `materialize`), `result`, `outcome`; never ids or paths.

/// What a finished job did.
pub(crate) struct Totals {
    pub read: u64,
    pub scored: u64,
    pub written: u64,
    pub skipped: u64,
    pub filled: u64,
    pub wall_seconds: f64,
}

/// Counts one job: `tandem_batch_runs_total{job, result}` (`ok`,
/// `partial` when rows were skipped or filled, `failed`),
/// `tandem_batch_rows_total{job, outcome}`, `tandem_batch_duration_seconds`
/// and the last run's rows/s and end time.
pub(crate) fn finished(job: &'static str, outcome: Result<&Totals, ()>, wall_seconds: f64) {
    let result = match outcome {
        Ok(t) if t.skipped > 0 || t.filled > 0 => "partial",
        Ok(_) => "ok",
        Err(()) => "failed",
    };
    metrics::counter!("tandem_batch_runs_total", "job" => job, "result" => result).increment(1);
    metrics::histogram!("tandem_batch_duration_seconds", "job" => job).record(wall_seconds);
    let Ok(t) = outcome else { return };
    for (name, n) in [
        ("read", t.read),
        ("scored", t.scored),
        ("written", t.written),
        ("skipped", t.skipped),
        ("filled", t.filled),
    ] {
        metrics::counter!("tandem_batch_rows_total", "job" => job, "outcome" => name).increment(n);
    }
    let rps = if t.wall_seconds > 0.0 {
        t.read as f64 / t.wall_seconds
    } else {
        0.0
    };
    metrics::gauge!("tandem_batch_last_rows_per_second", "job" => job).set(rps);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!("tandem_batch_last_run_timestamp_seconds", "job" => job).set(now);
}
