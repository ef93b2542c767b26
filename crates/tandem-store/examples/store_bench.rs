//! Store benchmark: bulk write and read throughput of the embedded store and
//! of a real Redis (started here on a free loopback port), with
//! `redis-benchmark -P 64 -t set,get` on the same server as the ceiling;
//! single-key read latency through each tier; memory per 1M predictions.
//!
//! ```text
//! cargo run --release -p tandem-store --example store_bench [-- RECORDS]
//! ```
//! Prints a Markdown report (docs/benchmarks.md keeps the last one).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tandem_core::{PredictionRecord, PredictionSource, unix_seconds};
use tandem_store::{
    EmbeddedStore, MemoryTier, MemoryTierConfig, PredictionEntry, PredictionStore, StoreOptions,
    TieredPredictions,
};
use tandem_testing::RedisServer;

const BATCH: usize = 100_000;

fn record(i: usize) -> PredictionRecord {
    PredictionRecord {
        prediction: (i % 1000) as f64 / 1000.0,
        timestamp: unix_seconds(SystemTime::now()),
        values: None,
        model: "churn".into(),
        version: 3,
        source: PredictionSource::Batch,
        run_id: Some("0193a5c2-7d4e-7b1a-9f3e-2c5d8e1f4a6b".into()),
        digest: Some(format!("{:016x}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).into()),
        inputs: None,
    }
}

fn entries(n: usize) -> Vec<PredictionEntry> {
    (0..n)
        .map(|i| PredictionEntry {
            entity: format!("user-{i:08}"),
            record: record(i),
            ttl: Duration::from_secs(86_400),
        })
        .collect()
}

async fn bulk(store: &dyn PredictionStore, all: &[PredictionEntry]) -> (f64, f64) {
    let t = Instant::now();
    for chunk in all.chunks(BATCH) {
        store.put_predictions(chunk).await.expect("bulk write");
    }
    let write = all.len() as f64 / t.elapsed().as_secs_f64();
    let ids: Vec<String> = all.iter().map(|e| e.entity.clone()).collect();
    let t = Instant::now();
    for chunk in ids.chunks(BATCH) {
        let got = store.get_predictions(chunk).await.expect("bulk read");
        assert!(got.iter().all(Result::is_ok));
    }
    let read = all.len() as f64 / t.elapsed().as_secs_f64();
    (write, read)
}

/// p50 and p99 of single-key reads, in microseconds.
async fn single_key_latency(store: &dyn PredictionStore, n: usize, samples: usize) -> (f64, f64) {
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let id = vec![format!("user-{:08}", (i * 7919) % n)];
        let t = Instant::now();
        let got = store.get_predictions(&id).await.expect("read");
        lat.push(t.elapsed());
        assert!(got[0].is_ok());
    }
    percentiles(lat)
}

fn percentiles(mut lat: Vec<Duration>) -> (f64, f64) {
    lat.sort_unstable();
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6;
    (at(0.50), at(0.99))
}

/// Requests/s of each test `redis-benchmark` runs (`-P 64`, CSV output),
/// in order.
fn redis_benchmark(port: u16, args: &[&str]) -> Vec<f64> {
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-P",
            "64",
            "-q",
            "--csv",
        ])
        .args(args)
        .output()
        .expect("redis-benchmark (apt-get install redis-tools)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split("\",\"").nth(1))
        .filter_map(|v| v.trim_matches('"').parse().ok())
        .collect()
}

fn used_memory(server: &RedisServer) -> u64 {
    let info = server.command(&["INFO", "memory"]);
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let all = entries(n);
    let mb = |b: u64| b as f64 / 1e6;
    let value_len = serde_json::to_vec(&all[0].record).map_or(0, |v| v.len());
    println!("records: {n}, batch {BATCH}, value {value_len} bytes JSON\n");

    // Embedded.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.redb");
    let embedded = EmbeddedStore::open(&path, StoreOptions::default()).expect("open");
    let (ew, er) = bulk(&embedded, &all).await;
    let file = std::fs::metadata(&path).map_or(0, |m| m.len());
    let (e50, e99) = single_key_latency(&embedded, n, 20_000).await;

    // Redis.
    let server = RedisServer::start();
    let base_mem = used_memory(&server);
    let redis =
        tandem_store::RedisStore::open(&server.url(), StoreOptions::default()).expect("open");
    let (rw, rr) = bulk(&redis, &all).await;
    let redis_mem = used_memory(&server) - base_mem;
    let (r50, r99) = single_key_latency(&redis, n, 20_000).await;
    server.command(&["FLUSHALL"]);
    let literal = redis_benchmark(server.port(), &["-n", "2000000", "-t", "set,get"]);
    let (bset, bget) = (literal[0], literal[1]);
    // The same work as tandem's bulk write: distinct keys, values of the
    // records' size, a TTL on each.
    server.command(&["FLUSHALL"]);
    let value = "x".repeat(value_len);
    let n_arg = n.to_string();
    let mset = redis_benchmark(
        server.port(),
        &[
            "-n",
            &n_arg,
            "-r",
            &n_arg,
            "SET",
            "pred:user-__rand_int__",
            &value,
            "PX",
            "86400000",
        ],
    )[0];
    let mget = redis_benchmark(
        server.port(),
        &["-n", &n_arg, "-r", &n_arg, "GET", "pred:user-__rand_int__"],
    )[0];

    // Memory tier: hits, and the cost of 1M cached predictions.
    let rss0 = rss_bytes();
    let memory = MemoryTier::new(MemoryTierConfig {
        max_bytes: std::env::var("BUDGET")
            .ok()
            .and_then(|b| b.parse().ok())
            .unwrap_or(200_000_000),
        max_ttl: Duration::from_secs(3600),
        ..MemoryTierConfig::default()
    });
    for e in &all {
        memory.insert(&e.entity, e.record.clone(), e.ttl);
    }
    let (cached, charged) = memory.usage();
    let rss_memory = rss_bytes().saturating_sub(rss0);
    let tiers = TieredPredictions::new(memory.clone(), Arc::new(redis));
    let now = SystemTime::now();
    let mut lat = Vec::with_capacity(200_000);
    for i in 0..200_000 {
        let id = format!("user-{:08}", (i * 7919) % n);
        let t = Instant::now();
        let hit = memory.get(&id);
        lat.push(t.elapsed());
        assert!(hit.is_some());
    }
    let (m50, m99) = percentiles(lat);
    let mut lat = Vec::with_capacity(20_000);
    for i in 0..20_000 {
        let id = vec![format!("user-{:08}", (i * 7919) % n)];
        let t = Instant::now();
        let got = tiers.get(&id, Duration::from_secs(3600), now).await;
        lat.push(t.elapsed());
        assert!(matches!(got[0], tandem_store::TierLookup::Fresh { .. }));
    }
    let (t50, t99) = percentiles(lat);

    println!("| measure | embedded (redb) | Redis | ceiling / target |");
    println!("|---|---|---|---|");
    println!(
        "| bulk write, records/s | {ew:.0} | {rw:.0} | `-t set`: {bset:.0}/s (tandem {:.0}%); same work (`SET key {value_len}B PX`, {n} keys): {mset:.0}/s (tandem {:.0}%) |",
        100.0 * rw / bset,
        100.0 * rw / mset
    );
    println!(
        "| bulk read, records/s | {er:.0} | {rr:.0} | `-t get`: {bget:.0}/s; same work: {mget:.0}/s (tandem {:.0}%) |",
        100.0 * rr / mget
    );
    println!("| single-key read p50 / p99, us | {e50:.1} / {e99:.1} | {r50:.1} / {r99:.1} | |");
    println!(
        "| storage per {n} predictions | {:.1} MB file | {:.1} MB used_memory | |",
        mb(file),
        mb(redis_mem)
    );
    println!();
    println!("| memory tier | value |");
    println!("|---|---|");
    println!("| hit (`MemoryTier::get`) p50 / p99, us | {m50:.2} / {m99:.2} |");
    println!("| tiered read answered from memory p50 / p99, us | {t50:.2} / {t99:.2} |");
    println!(
        "| {n} predictions cached | {cached} entries, {:.1} MB charged, {:.1} MB RSS growth |",
        mb(charged),
        mb(rss_memory)
    );
}
