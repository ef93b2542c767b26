//! The process's `metrics` recorder: counters and histograms recorded into
//! per-thread shards of plain atomics, gauges (set at scrape time) kept by
//! the Prometheus exporter's recorder, and one exposition text for both.
//!
//! Why not the exporter's histograms: they keep every sample (an
//! epoch-pinned push plus a clock read) until upkeep folds them into
//! buckets, and its counters are one atomic shared by every worker. At
//! tens of thousands of requests per second on two cores, with a handful
//! of samples per request, that cost about a fifth of the throughput
//! (`docs/benchmarks.md`). Here a sample is a bucket search and two
//! relaxed adds on a cache line no other thread writes; a scrape sums the
//! shards. Buckets are explicit (cumulative `le` series, never summaries),
//! so percentiles aggregate across replicas.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use metrics_exporter_prometheus::{PrometheusHandle, PrometheusRecorder};
use tandem_core::shard::{self, SHARDS};

/// A counter summed over shards.
#[derive(Default)]
pub struct ShardedCounter(shard::Counter);

impl ShardedCounter {
    /// The total.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl CounterFn for ShardedCounter {
    fn increment(&self, value: u64) {
        self.0.add(value);
    }

    fn absolute(&self, value: u64) {
        // Mirrors of counts kept elsewhere (set at scrape time).
        self.0.raise_to(value);
    }
}

/// The most explicit bucket bounds a histogram may have.
pub const MAX_BOUNDS: usize = 23;

/// One thread's share of a histogram.
#[repr(align(128))]
struct HistogramShard {
    /// Per bucket (not cumulative), the last one is `+Inf`.
    counts: [AtomicU64; MAX_BOUNDS + 1],
    /// The sum of the samples, as f64 bits.
    sum: AtomicU64,
}

impl Default for HistogramShard {
    fn default() -> Self {
        HistogramShard {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }
}

/// A histogram with explicit bucket bounds, summed over shards.
pub struct ShardedHistogram {
    bounds: &'static [f64],
    shards: [HistogramShard; SHARDS],
}

/// A histogram's totals.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts per bound, then `+Inf` (the count).
    pub cumulative: Vec<u64>,
    /// The sum of the samples.
    pub sum: f64,
}

impl ShardedHistogram {
    /// A histogram over `bounds` (ascending; at most [`MAX_BOUNDS`]).
    pub fn new(bounds: &'static [f64]) -> ShardedHistogram {
        let bounds = &bounds[..bounds.len().min(MAX_BOUNDS)];
        ShardedHistogram {
            bounds,
            shards: std::array::from_fn(|_| HistogramShard::default()),
        }
    }

    /// The totals over shards.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let n = self.bounds.len() + 1;
        let mut cumulative = vec![0u64; n];
        let mut sum = 0.0;
        for s in &self.shards {
            for (c, v) in cumulative.iter_mut().zip(&s.counts) {
                *c += v.load(Ordering::Relaxed);
            }
            sum += f64::from_bits(s.sum.load(Ordering::Relaxed));
        }
        for i in 1..n {
            cumulative[i] += cumulative[i - 1];
        }
        HistogramSnapshot { cumulative, sum }
    }
}

impl HistogramFn for ShardedHistogram {
    fn record(&self, value: f64) {
        if value.is_nan() {
            return;
        }
        // Prometheus buckets are `le`: a value equal to a bound is in it.
        let bucket = self.bounds.partition_point(|b| *b < value);
        let s = &self.shards[shard::index()];
        s.counts[bucket].fetch_add(1, Ordering::Relaxed);
        // Uncontended (one thread per shard, nearly always): one round.
        let mut old = s.sum.load(Ordering::Relaxed);
        loop {
            let new = (f64::from_bits(old) + value).to_bits();
            match s
                .sum
                .compare_exchange_weak(old, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(seen) => old = seen,
            }
        }
    }
}

#[derive(Default)]
struct Series {
    counters: BTreeMap<String, BTreeMap<String, Arc<ShardedCounter>>>,
    histograms: BTreeMap<String, BTreeMap<String, Arc<ShardedHistogram>>>,
    help: BTreeMap<String, String>,
}

/// The recorder installed by [`crate::metrics::install`].
pub struct TandemRecorder {
    gauges: PrometheusRecorder,
    buckets: fn(&str) -> &'static [f64],
    series: Arc<Mutex<Series>>,
}

/// Renders everything recorded: the exporter's gauges and the sharded
/// counters and histograms.
#[derive(Clone)]
pub struct MetricsHandle {
    gauges: PrometheusHandle,
    series: Arc<Mutex<Series>>,
}

impl std::fmt::Debug for MetricsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsHandle").finish_non_exhaustive()
    }
}

impl TandemRecorder {
    /// Wraps the exporter's recorder (for gauges); `buckets` gives each
    /// histogram name its bounds.
    pub fn new(gauges: PrometheusRecorder, buckets: fn(&str) -> &'static [f64]) -> TandemRecorder {
        TandemRecorder {
            gauges,
            buckets,
            series: Arc::default(),
        }
    }

    /// The handle that renders `/metrics`.
    pub fn handle(&self) -> MetricsHandle {
        MetricsHandle {
            gauges: self.gauges.handle(),
            series: self.series.clone(),
        }
    }

    fn series(&self) -> std::sync::MutexGuard<'_, Series> {
        self.series.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `{k="v",...}` with Prometheus escaping, empty without labels.
fn labels(key: &Key) -> String {
    let mut out = String::new();
    for (i, l) in key.labels().enumerate() {
        out.push(if i == 0 { '{' } else { ',' });
        out.push_str(l.key());
        out.push_str("=\"");
        for c in l.value().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    if !out.is_empty() {
        out.push('}');
    }
    out
}

/// Prometheus metric names: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn sanitize(name: &str) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Recorder for TandemRecorder {
    fn describe_counter(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.series()
            .help
            .insert(sanitize(key.as_str()), description.to_string());
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.gauges.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.series()
            .help
            .insert(sanitize(key.as_str()), description.to_string());
    }

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        let c = self
            .series()
            .counters
            .entry(sanitize(key.name()))
            .or_default()
            .entry(labels(key))
            .or_default()
            .clone();
        Counter::from_arc(c)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.gauges.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        let name = sanitize(key.name());
        let bounds = (self.buckets)(&name);
        let h = self
            .series()
            .histograms
            .entry(name)
            .or_default()
            .entry(labels(key))
            .or_insert_with(|| Arc::new(ShardedHistogram::new(bounds)))
            .clone();
        Histogram::from_arc(h)
    }
}

/// A bucket bound as Prometheus writes it.
fn bound(b: f64) -> String {
    if b.fract() == 0.0 && b.abs() < 1e15 {
        format!("{}", b as i64)
    } else {
        format!("{b}")
    }
}

/// `le="..."` added to a label set.
fn with_le(labels: &str, le: &str) -> String {
    if labels.is_empty() {
        format!("{{le=\"{le}\"}}")
    } else {
        format!("{},le=\"{le}\"}}", &labels[..labels.len() - 1])
    }
}

impl MetricsHandle {
    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = self.gauges.render();
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, by_labels) in &series.counters {
            if let Some(help) = series.help.get(name) {
                let _ = writeln!(out, "# HELP {name} {help}");
            }
            let _ = writeln!(out, "# TYPE {name} counter");
            for (labels, c) in by_labels {
                let _ = writeln!(out, "{name}{labels} {}", c.get());
            }
            out.push('\n');
        }
        for (name, by_labels) in &series.histograms {
            if let Some(help) = series.help.get(name) {
                let _ = writeln!(out, "# HELP {name} {help}");
            }
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (labels, h) in by_labels {
                let snap = h.snapshot();
                for (b, c) in h.bounds.iter().zip(&snap.cumulative) {
                    let _ = writeln!(out, "{name}_bucket{} {c}", with_le(labels, &bound(*b)));
                }
                let count = snap.cumulative.last().copied().unwrap_or(0);
                let _ = writeln!(out, "{name}_bucket{} {count}", with_le(labels, "+Inf"));
                let _ = writeln!(out, "{name}_sum{labels} {}", snap.sum);
                let _ = writeln!(out, "{name}_count{labels} {count}");
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_le_and_cumulative() {
        static B: &[f64] = &[1.0, 2.0, 5.0];
        let h = ShardedHistogram::new(B);
        for v in [0.5, 1.0, 1.5, 2.0, 4.0, 7.0, f64::NAN] {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.cumulative, vec![2, 4, 5, 6]);
        assert!((s.sum - 16.0).abs() < 1e-12);
    }

    #[test]
    fn shards_sum_across_threads() {
        static B: &[f64] = &[10.0];
        let h = Arc::new(ShardedHistogram::new(B));
        let c = Arc::new(ShardedCounter::default());
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (h, c) = (h.clone(), c.clone());
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        h.record(f64::from(i % 20));
                        c.increment(2);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = h.snapshot();
        assert_eq!(s.cumulative, vec![6 * 5_500, 60_000]);
        assert_eq!(c.get(), 120_000);
        c.absolute(100);
        assert_eq!(c.get(), 120_000, "absolute never lowers a counter");
        c.absolute(130_000);
        assert_eq!(c.get(), 130_000);
    }

    #[test]
    fn renders_the_exposition_format() {
        let prom = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let rec = TandemRecorder::new(prom, |_| &[0.5, 1.0]);
        let handle = rec.handle();
        let meta = Metadata::new("t", metrics::Level::INFO, None);
        let key = Key::from_parts("t_seconds", vec![metrics::Label::new("route", "/a\"b")]);
        let h = rec.register_histogram(&key, &meta);
        h.record(0.25);
        h.record(0.75);
        h.record(3.0);
        rec.register_counter(&Key::from_name("t_total"), &meta)
            .increment(3);
        rec.register_gauge(&Key::from_name("t_gauge"), &meta)
            .set(7.0);
        let text = handle.render();
        for line in [
            "# TYPE t_seconds histogram",
            r#"t_seconds_bucket{route="/a\"b",le="0.5"} 1"#,
            r#"t_seconds_bucket{route="/a\"b",le="1"} 2"#,
            r#"t_seconds_bucket{route="/a\"b",le="+Inf"} 3"#,
            r#"t_seconds_sum{route="/a\"b"} 4"#,
            r#"t_seconds_count{route="/a\"b"} 3"#,
            "# TYPE t_total counter",
            "t_total 3",
            "t_gauge 7",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
