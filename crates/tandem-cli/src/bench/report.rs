//! A benchmark's report: what ran, throughput, latency percentiles, errors
//! by status, the server's source mix, the SLA check; as a table, as JSON,
//! and compared with another report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tandem_core::SlaTargets;
use tandem_core::sla::{Observed, SlaResult, check};

use super::BenchArgs;
use super::load::Outcome;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th.
    pub p95: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// One second of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecondReport {
    /// Seconds since the warm-up ended.
    pub second: usize,
    /// Answers (by intended start in this second).
    pub requests: u64,
    /// Requests without an answer.
    pub failed: u64,
    /// Median latency, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
}

/// The server's own view during the run (tandem only), from `/v1/stats`
/// before and after (the warm-up included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerView {
    /// Answers by source.
    pub answers: BTreeMap<String, u64>,
    /// Share of answers by source, %.
    pub source_mix_pct: BTreeMap<String, f64>,
    /// Memory-tier hit rate (0..1).
    pub memory_hit_rate: Option<f64>,
    /// Store hit rate (0..1).
    pub store_hit_rate: Option<f64>,
    /// Answered from memory or store, of all lookups (0..1).
    pub overall_hit_rate: Option<f64>,
}

/// Everything a run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The base URL.
    pub url: String,
    /// `entity`, `tfserving` or `kserve`.
    pub protocol: String,
    /// The model, for tensor protocols.
    pub model: Option<String>,
    /// `closed` or `open`.
    pub pacing: String,
    /// Open loop: the arrival rate asked for.
    pub target_rate: Option<f64>,
    /// Connections.
    pub connections: usize,
    /// `uniform` or `zipf(s)`.
    pub distribution: String,
    /// Entities drawn from (or distinct feature rows sent).
    pub entities: u64,
    /// Extra query string.
    pub query: Option<String>,
    /// Warm-up, seconds (not measured).
    pub warmup_secs: f64,
    /// Measured wall time, seconds.
    pub elapsed_secs: f64,
    /// Measured requests (answered or not).
    pub requests: u64,
    /// Answered 2xx.
    pub ok: u64,
    /// Answers by status, and `io` for requests with no answer.
    pub statuses: BTreeMap<String, u64>,
    /// Measured requests per second.
    pub throughput_rps: f64,
    /// Latency of the answered requests.
    pub latency_ms: Percentiles,
    /// (percentile, ms) pairs from 0 to 99.999, for charts.
    pub curve: Vec<(f64, f64)>,
    /// Per second.
    pub timeline: Vec<SecondReport>,
    /// tandem's source mix and hit rates.
    pub server: Option<ServerView>,
    /// The SLA targets and the check.
    pub sla_targets: SlaTargets,
    /// Each target: actual, met, margin.
    pub sla: Vec<SlaResult>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Percentiles where the chart and the comparison look.
pub const CURVE: &[f64] = &[
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0,
];

impl Report {
    /// Builds the report of a run.
    pub fn new(
        args: &BenchArgs,
        entities: u64,
        o: &Outcome,
        server: Option<ServerView>,
        targets: SlaTargets,
    ) -> Report {
        let h = &o.latency;
        let answered = h.len();
        let at = |q: f64| ms(h.value_at_quantile(q));
        let latency_ms = if answered == 0 {
            Percentiles::default()
        } else {
            Percentiles {
                p50: at(0.50),
                p90: at(0.90),
                p95: at(0.95),
                p99: at(0.99),
                p999: at(0.999),
                max: ms(h.max()),
                mean: h.mean() / 1000.0,
            }
        };
        let requests: u64 = o.statuses.values().sum();
        let count = |f: &dyn Fn(&str) -> bool| -> u64 {
            o.statuses
                .iter()
                .filter(|(k, _)| f(k))
                .map(|(_, v)| *v)
                .sum()
        };
        let ok = count(&|k| k.starts_with('2'));
        let refused = count(&|k| k == "429");
        let failed = count(&|k| k == "io" || k.starts_with('5'));
        let observed = Observed {
            requests,
            p99_ms: (answered > 0).then_some(latency_ms.p99),
            refused,
            failed,
        };
        let secs = o.elapsed.as_secs_f64();
        Report {
            url: args.url.clone(),
            protocol: format!("{:?}", args.protocol).to_lowercase(),
            model: args.model.clone(),
            pacing: if args.rate.is_some() {
                "open"
            } else {
                "closed"
            }
            .to_string(),
            target_rate: args.rate,
            connections: args.connections,
            distribution: args
                .zipf
                .map_or_else(|| "uniform".to_string(), |s| format!("zipf({s})")),
            entities,
            query: args.query.clone(),
            warmup_secs: tandem_core::parse_duration(&args.warmup).map_or(0.0, |d| d.as_secs_f64()),
            elapsed_secs: secs,
            requests,
            ok,
            statuses: o.statuses.clone(),
            throughput_rps: if secs > 0.0 {
                requests as f64 / secs
            } else {
                0.0
            },
            curve: if answered == 0 {
                Vec::new()
            } else {
                CURVE
                    .iter()
                    .map(|p| (*p, ms(h.value_at_percentile(*p))))
                    .collect()
            },
            latency_ms,
            timeline: o
                .timeline
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let n = s.latency.len();
                    SecondReport {
                        second: i,
                        requests: n,
                        failed: s.failed,
                        p50_ms: (n > 0).then(|| ms(s.latency.value_at_quantile(0.5))),
                        p99_ms: (n > 0).then(|| ms(s.latency.value_at_quantile(0.99))),
                    }
                })
                .collect(),
            server,
            sla: check(&targets, &observed),
            sla_targets: targets,
        }
    }

    /// Reads a report written with `--json`.
    pub fn read(path: &Path) -> anyhow::Result<Report> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a tandem bench report", path.display()))
    }

    /// Whether every SLA target was met.
    pub fn sla_met(&self) -> bool {
        self.sla.iter().all(|r| r.met)
    }

    /// The terminal table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let l = &self.latency_ms;
        let _ = writeln!(
            out,
            "{} {} loop, {} connections{}, {} over {} entities{}",
            self.url,
            self.pacing,
            self.connections,
            self.target_rate
                .map_or_else(String::new, |r| format!(", {r:.0} req/s offered")),
            self.distribution,
            self.entities,
            self.query
                .as_deref()
                .map_or_else(String::new, |q| format!(", ?{q}")),
        );
        let _ = writeln!(
            out,
            "  requests     {} in {:.1} s ({:.0} req/s), {} ok",
            self.requests, self.elapsed_secs, self.throughput_rps, self.ok
        );
        let _ = writeln!(
            out,
            "  latency ms   p50 {:.3}  p90 {:.3}  p95 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.p50, l.p90, l.p95, l.p99, l.p999, l.max
        );
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(out, "  statuses     {}", statuses.join(", "));
        if let Some(s) = &self.server {
            let mix: Vec<String> = s
                .source_mix_pct
                .iter()
                .filter(|(_, v)| **v > 0.0)
                .map(|(k, v)| format!("{k} {v:.1}%"))
                .collect();
            let _ = writeln!(out, "  sources      {}", mix.join(", "));
            let pct = |r: Option<f64>| {
                r.map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0))
            };
            let _ = writeln!(
                out,
                "  hit rate     memory {}, store {}, overall {}",
                pct(s.memory_hit_rate),
                pct(s.store_hit_rate),
                pct(s.overall_hit_rate)
            );
        }
        for r in &self.sla {
            let actual = r
                .actual
                .map_or_else(|| "-".to_string(), |a| format!("{a:.4}"));
            let _ = writeln!(
                out,
                "  SLA {:<16} target {:<8} actual {:<10} {}",
                r.name,
                r.target,
                actual,
                if r.met { "met" } else { "NOT MET" }
            );
        }
        out
    }
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path).and_then(Value::as_u64).unwrap_or(0)
}

/// The server's counters during the run: `after - before` of `/v1/stats`.
pub fn server_delta(before: &Value, after: &Value) -> ServerView {
    let mut answers = BTreeMap::new();
    if let Some(a) = after.get("answers").and_then(Value::as_object) {
        for k in a.keys() {
            let d = u(after, &format!("/answers/{k}"))
                .saturating_sub(u(before, &format!("/answers/{k}")));
            answers.insert(k.clone(), d);
        }
    }
    let total: u64 = answers.values().sum();
    let source_mix_pct = answers
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                if total == 0 {
                    0.0
                } else {
                    100.0 * *v as f64 / total as f64
                },
            )
        })
        .collect();
    let d = |p: &str| u(after, p).saturating_sub(u(before, p));
    let (mh, ms_, mm) = (
        d("/tiers/memory/hits"),
        d("/tiers/memory/stale"),
        d("/tiers/memory/misses"),
    );
    let (sh, ss, sm, se) = (
        d("/tiers/store/hits"),
        d("/tiers/store/stale"),
        d("/tiers/store/misses"),
        d("/tiers/store/errors"),
    );
    let rate = |hit: u64, all: u64| (all > 0).then(|| hit as f64 / all as f64);
    ServerView {
        answers,
        source_mix_pct,
        memory_hit_rate: rate(mh, mh + ms_ + mm),
        store_hit_rate: rate(sh, sh + ss + sm + se),
        overall_hit_rate: rate(mh + sh, mh + ms_ + mm),
    }
}

/// B against A: each figure of B and its ratio to A's.
pub fn compare(a: &Report, b: &Report, pa: &Path, pb: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "A: {} ({} {})", pa.display(), a.url, a.protocol);
    let _ = writeln!(out, "B: {} ({} {})", pb.display(), b.url, b.protocol);
    let _ = writeln!(out, "{:<16} {:>12} {:>12} {:>8}", "", "A", "B", "B/A");
    let row = |out: &mut String, name: &str, x: f64, y: f64| {
        let ratio = if x == 0.0 {
            "-".to_string()
        } else {
            format!("{:.2}x", y / x)
        };
        let _ = writeln!(out, "{name:<16} {x:>12.3} {y:>12.3} {ratio:>8}");
    };
    row(&mut out, "req/s", a.throughput_rps, b.throughput_rps);
    let (la, lb) = (&a.latency_ms, &b.latency_ms);
    for (name, x, y) in [
        ("p50 ms", la.p50, lb.p50),
        ("p90 ms", la.p90, lb.p90),
        ("p95 ms", la.p95, lb.p95),
        ("p99 ms", la.p99, lb.p99),
        ("p99.9 ms", la.p999, lb.p999),
        ("max ms", la.max, lb.max),
    ] {
        row(&mut out, name, x, y);
    }
    let err = |r: &Report| {
        if r.requests == 0 {
            0.0
        } else {
            (r.requests - r.ok) as f64 / r.requests as f64
        }
    };
    row(&mut out, "non-2xx share", err(a), err(b));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_delta_is_the_difference() {
        let before = json!({"answers": {"memory": 10, "store": 5}, "tiers": {"memory": {"hits": 10, "stale": 0, "misses": 5}, "store": {"hits": 5, "stale": 0, "misses": 0, "errors": 0}}});
        let after = json!({"answers": {"memory": 40, "store": 15, "realtime": 10}, "tiers": {"memory": {"hits": 40, "stale": 0, "misses": 25}, "store": {"hits": 15, "stale": 0, "misses": 10, "errors": 0}}});
        let v = server_delta(&before, &after);
        assert_eq!(v.answers["memory"], 30);
        assert_eq!(v.answers["realtime"], 10);
        assert!((v.source_mix_pct["memory"] - 60.0).abs() < 1e-9);
        assert_eq!(v.memory_hit_rate, Some(30.0 / 50.0));
        assert_eq!(v.store_hit_rate, Some(10.0 / 20.0));
        assert_eq!(v.overall_hit_rate, Some(40.0 / 50.0));
    }
}
