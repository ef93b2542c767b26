//! Per-thread shards for counters that every request bumps: a thread
//! always writes the same shard, each shard on its own cache line, and a
//! reader sums them. Two threads adding to one atomic move its cache line
//! between cores on every add; on the request path of a server doing tens
//! of thousands of requests per second that adds up.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

/// Shards per value: more than the threads that record on a small
/// machine, so that two threads rarely share one.
pub const SHARDS: usize = 8;

/// This thread's shard (assigned round-robin on first use).
pub fn index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// A value alone on its cache line (128 bytes: adjacent-line prefetch
/// pairs lines on x86).
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct Padded<T>(pub T);

/// A counter summed over shards.
#[derive(Debug, Default)]
pub struct Counter {
    shards: [Padded<AtomicU64>; SHARDS],
}

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.shards[index()].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The total.
    pub fn get(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }

    /// Raises the total to `value` if it is below (for mirrors of counts
    /// kept elsewhere).
    pub fn raise_to(&self, value: u64) {
        let current = self.get();
        if value > current {
            self.shards[0]
                .0
                .fetch_add(value - current, Ordering::Relaxed);
        }
    }
}

/// A value that goes up and down (requests in flight), summed over
/// shards: an increment and its decrement may land on different shards.
#[derive(Debug, Default)]
pub struct UpDown {
    shards: [Padded<AtomicI64>; SHARDS],
}

impl UpDown {
    /// Adds `n` (negative to subtract).
    pub fn add(&self, n: i64) {
        self.shards[index()].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The sum.
    pub fn get(&self) -> i64 {
        self.shards
            .iter()
            .fold(0i64, |a, s| a.wrapping_add(s.0.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_from_many_threads_sum() {
        let c = Arc::new(Counter::default());
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| c.add(3)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(c.get(), 36_000);
        c.raise_to(10);
        assert_eq!(c.get(), 36_000);
        c.raise_to(40_000);
        assert_eq!(c.get(), 40_000);

        let g = Arc::new(UpDown::default());
        let (up, g2) = (
            std::thread::spawn({
                let g = g.clone();
                move || (0..1000).for_each(|_| g.add(1))
            }),
            g.clone(),
        );
        up.join().unwrap();
        std::thread::spawn(move || (0..400).for_each(|_| g2.add(-1)))
            .join()
            .unwrap();
        assert_eq!(g.get(), 600);
    }
}
