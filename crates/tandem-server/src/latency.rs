//! Latency and outcome of prediction requests, since start and over a
//! sliding window, for `/v1/stats` and `/v1/sla`. Lock-free: log-spaced
//! latency buckets (15 % wide) of atomics, in a ring of 10-second slots for
//! the window; each thread records into its own shard
//! ([`tandem_core::shard`]) and a reader sums them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tandem_core::shard::{self, SHARDS};

/// Buckets: 120 log-spaced upper bounds, 15 % apart, from 11.5 us to
/// about 190 s; the last one also takes anything slower.
const BUCKETS: usize = 120;
const RATIO: f64 = 1.15;
const SLOT_SECS: u64 = 10;

fn bound_us(i: usize) -> f64 {
    10.0 * RATIO.powi(i as i32 + 1)
}

fn bucket_of(us: f64) -> usize {
    if us <= 10.0 * RATIO {
        return 0;
    }
    let i = ((us / 10.0).ln() / RATIO.ln()).ceil() as usize;
    i.saturating_sub(1).min(BUCKETS - 1)
}

struct Counts {
    latency: Vec<AtomicU64>,
    requests: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            latency: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            requests: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    fn add(&self, bucket: usize, status: u16) {
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status == 429 {
            self.refused.fetch_add(1, Ordering::Relaxed);
        } else if status >= 500 {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn reset(&self) {
        for c in &self.latency {
            c.store(0, Ordering::Relaxed);
        }
        self.requests.store(0, Ordering::Relaxed);
        self.refused.store(0, Ordering::Relaxed);
        self.failed.store(0, Ordering::Relaxed);
    }
}

struct Slot {
    index: AtomicU64,
    counts: Counts,
}

/// Figures of a period.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Prediction requests.
    pub requests: u64,
    /// Answered 429.
    pub refused: u64,
    /// Answered 5xx.
    pub failed: u64,
    /// Share answered 5xx.
    pub error_rate: Option<f64>,
    /// Requests per second over the period.
    pub throughput: f64,
    /// Latency percentiles in ms (upper bounds of 15 %-wide buckets).
    pub p50_ms: Option<f64>,
    /// 95th percentile.
    pub p95_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
}

/// Since start and over the window.
pub struct Latency {
    /// One per shard.
    total: Vec<Counts>,
    /// `slots` per shard, shard after shard.
    ring: Vec<Slot>,
    slots: usize,
    started: SystemTime,
    window: Duration,
}

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latency")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

fn now_slot() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / SLOT_SECS)
}

impl Latency {
    /// Counts over `window` (rounded up to 10 s slots).
    pub fn new(window: Duration) -> Latency {
        let slots = window.as_secs().div_ceil(SLOT_SECS).max(1) as usize;
        Latency {
            total: (0..SHARDS).map(|_| Counts::new()).collect(),
            slots,
            ring: (0..slots * SHARDS)
                .map(|_| Slot {
                    index: AtomicU64::new(0),
                    counts: Counts::new(),
                })
                .collect(),
            started: SystemTime::now(),
            window,
        }
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Records one prediction request.
    pub fn record(&self, took: Duration, status: u16) {
        let b = bucket_of(took.as_secs_f64() * 1e6);
        let shard = shard::index();
        self.total[shard].add(b, status);
        let idx = now_slot();
        let slot = &self.ring[shard * self.slots + (idx % self.slots as u64) as usize];
        let seen = slot.index.load(Ordering::Acquire);
        if seen != idx
            && slot
                .index
                .compare_exchange(seen, idx, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.counts.reset();
        }
        slot.counts.add(b, status);
    }

    fn summarize(latency: &[u64], requests: u64, refused: u64, failed: u64, secs: f64) -> Summary {
        let pct = |q: f64| -> Option<f64> {
            if requests == 0 {
                return None;
            }
            let rank = ((requests as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in latency.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Some(bound_us(i) / 1000.0);
                }
            }
            None
        };
        Summary {
            requests,
            refused,
            failed,
            error_rate: (requests > 0).then(|| failed as f64 / requests as f64),
            throughput: if secs > 0.0 {
                requests as f64 / secs
            } else {
                0.0
            },
            p50_ms: pct(0.50),
            p95_ms: pct(0.95),
            p99_ms: pct(0.99),
        }
    }

    /// Since start.
    pub fn since_start(&self) -> Summary {
        let mut l = vec![0u64; BUCKETS];
        let (mut requests, mut refused, mut failed) = (0, 0, 0);
        for t in &self.total {
            for (o, c) in l.iter_mut().zip(&t.latency) {
                *o += c.load(Ordering::Relaxed);
            }
            requests += t.requests.load(Ordering::Relaxed);
            refused += t.refused.load(Ordering::Relaxed);
            failed += t.failed.load(Ordering::Relaxed);
        }
        let secs = self.started.elapsed().map_or(0.0, |d| d.as_secs_f64());
        Self::summarize(&l, requests, refused, failed, secs)
    }

    /// Over the window (slots that ended before it are left out).
    pub fn recent(&self) -> Summary {
        let now = now_slot();
        let n = self.slots as u64;
        let mut l = vec![0u64; BUCKETS];
        let (mut requests, mut refused, mut failed) = (0, 0, 0);
        for slot in &self.ring {
            let idx = slot.index.load(Ordering::Acquire);
            if idx + n <= now || idx > now {
                continue;
            }
            for (o, c) in l.iter_mut().zip(&slot.counts.latency) {
                *o += c.load(Ordering::Relaxed);
            }
            requests += slot.counts.requests.load(Ordering::Relaxed);
            refused += slot.counts.refused.load(Ordering::Relaxed);
            failed += slot.counts.failed.load(Ordering::Relaxed);
        }
        let up = self.started.elapsed().map_or(0.0, |d| d.as_secs_f64());
        let secs = up.min(self.window.as_secs_f64()).max(1.0);
        Self::summarize(&l, requests, refused, failed, secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_fifteen_percent_wide_and_percentiles_follow() {
        for us in [5.0, 11.0, 99.0, 1_000.0, 54_321.0, 3e6, 1e8] {
            let b = bucket_of(us);
            assert!(bound_us(b) >= us, "{us} -> {}", bound_us(b));
            if b > 0 {
                assert!(bound_us(b - 1) < us * 1.0001, "{us} -> {}", bound_us(b - 1));
            }
        }
        let l = Latency::new(Duration::from_secs(60));
        for i in 1..=1000u64 {
            let status = if i % 100 == 0 {
                503
            } else if i % 250 == 0 {
                429
            } else {
                200
            };
            l.record(Duration::from_micros(i * 100), status);
        }
        let s = l.recent();
        assert_eq!(s.requests, 1000);
        assert_eq!(s.failed, 10);
        assert_eq!(s.refused, 2);
        // True p50 is 50 ms and p99 99 ms; bounds are within one bucket.
        let p50 = s.p50_ms.unwrap();
        let p99 = s.p99_ms.unwrap();
        assert!((50.0..=57.5).contains(&p50), "{p50}");
        assert!((99.0..=113.9).contains(&p99), "{p99}");
        assert_eq!(l.since_start().requests, 1000);
    }
}
