//! Answer counts: per source since start, and over a sliding window for the
//! health status. Lock-free: a ring of one-second buckets of atomics per
//! shard ([`tandem_core::shard`]: a thread writes only its own), summed by
//! readers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::Serialize;
use tandem_core::shard::{self, Counter, SHARDS};
use tandem_core::{AnswerSource, Health, HealthThresholds};

const SOURCES: usize = AnswerSource::ALL.len();

fn index(s: AnswerSource) -> usize {
    match s {
        AnswerSource::Memory => 0,
        AnswerSource::Store => 1,
        AnswerSource::Realtime => 2,
        AnswerSource::Stale => 3,
        AnswerSource::Default => 4,
    }
}

#[derive(Default)]
struct Bucket {
    second: AtomicU64,
    counts: [AtomicU64; SOURCES],
}

/// Counts of answers by source.
pub struct Stats {
    total: [Counter; SOURCES],
    errors: Counter,
    defaults_filled: Counter,
    infer_requests: Counter,
    writes_failed: Counter,
    writes_dropped: Counter,
    writes_unchanged: Counter,
    /// `secs` buckets per shard, shard after shard.
    window: Vec<Bucket>,
    secs: usize,
    thresholds: HealthThresholds,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats").finish_non_exhaustive()
    }
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatsSnapshot {
    /// Answers per source since start.
    pub answers: std::collections::BTreeMap<&'static str, u64>,
    /// Answers per source over the health window.
    pub recent: std::collections::BTreeMap<&'static str, u64>,
    /// Entity requests that failed (no answer) since start.
    pub errors: u64,
    /// Feature values that took their schema default since start.
    pub defaults_filled: u64,
    /// Tensor inference requests (TF Serving, KServe) since start.
    pub infer_requests: u64,
    /// Real-time predictions whose store write failed.
    pub writes_failed: u64,
    /// Real-time predictions not written because the write queue was full.
    pub writes_dropped: u64,
    /// Real-time predictions not written because the same one was written
    /// moments before (`rewrite_unchanged_after`).
    pub writes_unchanged: u64,
    /// Health over the window.
    pub health: Health,
    /// Why.
    pub health_reason: String,
    /// Window length in seconds.
    pub window_secs: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Stats {
    /// Counts over a window of `window_secs` seconds, judged by `thresholds`.
    pub fn new(window_secs: u64, thresholds: HealthThresholds) -> Stats {
        Stats {
            total: Default::default(),
            errors: Counter::default(),
            defaults_filled: Counter::default(),
            infer_requests: Counter::default(),
            writes_failed: Counter::default(),
            writes_dropped: Counter::default(),
            writes_unchanged: Counter::default(),
            window: (0..window_secs.max(1) as usize * SHARDS)
                .map(|_| Bucket::default())
                .collect(),
            secs: window_secs.max(1) as usize,
            thresholds,
        }
    }

    /// Counts one answer.
    pub fn answer(&self, source: AnswerSource) {
        self.answer_at(source, now_secs());
    }

    fn answer_at(&self, source: AnswerSource, second: u64) {
        let i = index(source);
        self.total[i].add(1);
        let b = &self.window[shard::index() * self.secs + (second % self.secs as u64) as usize];
        let seen = b.second.load(Ordering::Acquire);
        if seen != second
            && b.second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for c in &b.counts {
                c.store(0, Ordering::Relaxed);
            }
        }
        b.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one failed entity request.
    pub fn error(&self) {
        self.errors.add(1);
    }

    /// Counts feature values that took their default.
    pub fn defaults_filled(&self, n: usize) {
        self.defaults_filled.add(n as u64);
    }

    /// Counts one tensor inference request.
    pub fn infer(&self) {
        self.infer_requests.add(1);
    }

    /// Counts store writes that failed.
    pub fn writes_failed(&self, n: usize) {
        self.writes_failed.add(n as u64);
    }

    /// Counts store writes dropped on a full queue.
    pub fn write_dropped(&self) {
        self.writes_dropped.add(1);
    }

    /// Counts a store write left out because the same record was just
    /// written.
    pub fn write_unchanged(&self) {
        self.writes_unchanged.add(1);
    }

    fn recent_at(&self, now: u64) -> [u64; SOURCES] {
        let span = self.secs as u64;
        let mut out = [0; SOURCES];
        for b in &self.window {
            let s = b.second.load(Ordering::Acquire);
            if s + span > now && s <= now {
                for (o, c) in out.iter_mut().zip(&b.counts) {
                    *o += c.load(Ordering::Relaxed);
                }
            }
        }
        out
    }

    fn judge(&self, recent: &[u64; SOURCES]) -> (Health, String) {
        let total: u64 = recent.iter().sum();
        let degraded = recent[index(AnswerSource::Stale)] + recent[index(AnswerSource::Default)];
        self.thresholds
            .judge(total, degraded, recent[index(AnswerSource::Default)])
    }

    /// Health over the window, with the reason.
    pub fn health(&self) -> (Health, String) {
        self.judge(&self.recent_at(now_secs()))
    }

    /// Everything, now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let recent = self.recent_at(now_secs());
        let (health, health_reason) = self.judge(&recent);
        let by = |v: &dyn Fn(usize) -> u64| {
            AnswerSource::ALL
                .iter()
                .map(|s| (s.as_str(), v(index(*s))))
                .collect()
        };
        StatsSnapshot {
            answers: by(&|i| self.total[i].get()),
            recent: by(&|i| recent[i]),
            errors: self.errors.get(),
            defaults_filled: self.defaults_filled.get(),
            infer_requests: self.infer_requests.get(),
            writes_failed: self.writes_failed.get(),
            writes_dropped: self.writes_dropped.get(),
            writes_unchanged: self.writes_unchanged.get(),
            health,
            health_reason,
            window_secs: self.secs as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_forgets_old_seconds_and_judges_the_mix() {
        let s = Stats::new(10, HealthThresholds::default());
        for _ in 0..90 {
            s.answer_at(AnswerSource::Memory, 1000);
        }
        for _ in 0..10 {
            s.answer_at(AnswerSource::Stale, 1005);
        }
        let r = s.recent_at(1009);
        assert_eq!(r.iter().sum::<u64>(), 100);
        assert_eq!(s.judge(&r).0, Health::Degraded);
        // Ten seconds later the memory answers of second 1000 are gone.
        let r = s.recent_at(1010);
        assert_eq!(r.iter().sum::<u64>(), 10);
        assert_eq!(s.judge(&r).0, Health::Critical);
        // A bucket reused for a new second starts from zero.
        s.answer_at(AnswerSource::Realtime, 1010);
        let r = s.recent_at(1010);
        assert_eq!(r[index(AnswerSource::Realtime)], 1);
        assert_eq!(r[index(AnswerSource::Memory)], 0);
        assert_eq!(s.total[index(AnswerSource::Memory)].get(), 90);
    }
}
