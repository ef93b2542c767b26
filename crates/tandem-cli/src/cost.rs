//! `tandem cost` and `tandem advise`: the cost model and the decision
//! framework of `tandem_core`, fed with measured throughputs (a `tandem
//! bench` report, a batch run's `--json` summary, or the model timed on the
//! spot).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;
use tandem_core::advise::{Advice, Needs, advise};
use tandem_core::cost::{CostInputs, CostReport, analyze};
use tandem_core::{FeatureBatch, parse_duration};

/// The workload, the prices and the measured throughputs.
#[derive(Debug, Args)]
pub struct CostArgs {
    /// Entities scored by each batch run [default: 1000000].
    #[arg(long)]
    pub entities: Option<f64>,
    /// Batch runs (predictions per entity) per day [default: 1].
    #[arg(long)]
    pub runs_per_day: Option<f64>,
    /// Average request rate, requests/s [default: 100].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Peak request rate, requests/s (default: the average).
    #[arg(long)]
    pub peak: Option<f64>,
    /// Instance price per hour, batch and serving unless set apart
    /// [default: 1].
    #[arg(long)]
    pub price: Option<f64>,
    /// Batch instance price per hour.
    #[arg(long)]
    pub batch_price: Option<f64>,
    /// Serving instance price per hour.
    #[arg(long)]
    pub serving_price: Option<f64>,
    /// A `tandem bench --json` report of the real-time path (for example
    /// with `--query mode=realtime_only`): its requests/s is one serving
    /// instance's real-time throughput.
    #[arg(long)]
    pub bench_realtime: Option<PathBuf>,
    /// A `tandem bench --json` report of lookups (stored predictions): its
    /// requests/s is the lookup throughput, and its hit rate the hybrid
    /// hit rate unless `--hit-rate` is given.
    #[arg(long)]
    pub bench_lookup: Option<PathBuf>,
    /// A `tandem batch --json` summary: its rows/s is one batch
    /// instance's throughput.
    #[arg(long)]
    pub batch_summary: Option<PathBuf>,
    /// Time this model on the spot for the batch throughput (model only,
    /// all cores, no I/O: an upper bound) when no summary is given.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Real-time throughput per serving instance, requests/s (instead of
    /// a bench report).
    #[arg(long)]
    pub realtime_rps: Option<f64>,
    /// Lookup throughput per serving instance, requests/s.
    #[arg(long)]
    pub lookup_rps: Option<f64>,
    /// Batch throughput per batch instance, predictions/s.
    #[arg(long)]
    pub batch_pps: Option<f64>,
    /// Share of requests hybrid answers from stored predictions.
    #[arg(long)]
    pub hit_rate: Option<f64>,
    /// Spare capacity kept when provisioning (0.3: instances run at most at
    /// 70 % of their measured throughput) [default: 0.3].
    #[arg(long)]
    pub headroom: Option<f64>,
    /// Fewest serving instances [default: 1].
    #[arg(long)]
    pub min_instances: Option<u32>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// `tandem advise`: the use case's needs, then the cost inputs.
#[derive(Debug, Args)]
pub struct AdviseArgs {
    /// The needs and workload from a TOML file (keys as the flags, with
    /// underscores; flags given override it).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Latency budget (p99), ms.
    #[arg(long)]
    pub latency_ms: Option<f64>,
    /// Oldest acceptable prediction (like 15m, 6h, 2d).
    #[arg(long)]
    pub freshness: Option<String>,
    /// Share of entities asked for at least once a day, 0..1 [default: 1].
    #[arg(long)]
    pub requested_share: Option<f64>,
    /// Feature fetch time at request time, ms [default: 1].
    #[arg(long)]
    pub feature_ms: Option<f64>,
    /// Model time per prediction, ms (or timed with --model).
    #[arg(long)]
    pub model_ms: Option<f64>,
    /// Serving overhead (HTTP, queueing), ms [default: 1].
    #[arg(long)]
    pub overhead_ms: Option<f64>,
    #[command(flatten)]
    pub cost: CostArgs,
}

fn read_json(path: &Path, what: &str) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not {what}", path.display()))
}

fn field(v: &Value, key: &str, path: &Path, what: &str) -> anyhow::Result<f64> {
    v.get(key)
        .and_then(Value::as_f64)
        .filter(|x| x.is_finite() && *x > 0.0)
        .ok_or_else(|| anyhow::anyhow!("{} is not {what}: no positive {key:?}", path.display()))
}

/// Rows/s of `model` on random rows, all cores, about a second.
fn time_model(path: &Path) -> anyhow::Result<(f64, f64)> {
    let model =
        tandem_model::Model::load(path).with_context(|| format!("loading {}", path.display()))?;
    let width = model.width().max(1);
    let rows: Vec<Vec<f32>> = (0..4096)
        .map(|i| {
            (0..width)
                .map(|f| ((i * 31 + f * 17) % 97) as f32 / 97.0)
                .collect()
        })
        .collect();
    let batch = FeatureBatch::from_rows(&rows).context("building rows")?;
    let one = FeatureBatch::from_rows(&rows[..1]).context("building a row")?;
    model.predict(&batch).context("running the model")?;
    // One row at a time: the real-time model cost.
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed().as_secs_f64() < 0.3 {
        model.predict(&one)?;
        n += 1;
    }
    let single_ms = started.elapsed().as_secs_f64() * 1000.0 / f64::from(n);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let done: anyhow::Result<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut rows = 0;
                    while started.elapsed().as_secs_f64() < 1.0 {
                        model.predict(&batch)?;
                        rows += batch.rows();
                    }
                    Ok::<usize, tandem_model::ModelError>(rows)
                })
            })
            .collect();
        let mut total = 0;
        for h in handles {
            total += h
                .join()
                .map_err(|_| anyhow::anyhow!("a timing thread panicked"))??;
        }
        Ok(total)
    });
    let pps = done? as f64 / started.elapsed().as_secs_f64();
    Ok((pps, single_ms))
}

/// Where each throughput came from, for the report.
#[derive(Debug, Default, serde::Serialize)]
pub struct Sources {
    batch_pps: String,
    realtime_rps: String,
    lookup_rps: String,
    hit_rate: String,
}

fn inputs(a: &CostArgs) -> anyhow::Result<(CostInputs, Sources, Option<f64>)> {
    let mut src = Sources::default();
    let rate = a.rate.unwrap_or(100.0);
    let price = a.price.unwrap_or(1.0);
    let mut model_ms = None;
    let batch_pps = match (a.batch_pps, &a.batch_summary, &a.model) {
        (Some(v), _, _) => {
            src.batch_pps = "--batch-pps".into();
            v
        }
        (None, Some(p), _) => {
            let v = read_json(p, "a tandem batch --json summary")?;
            src.batch_pps = format!("rows_per_second of {}", p.display());
            field(&v, "rows_per_second", p, "a tandem batch --json summary")?
        }
        (None, None, Some(m)) => {
            let (pps, ms) = time_model(m)?;
            model_ms = Some(ms);
            src.batch_pps = format!("{} timed here (model only)", m.display());
            pps
        }
        (None, None, None) => bail!(
            "the batch throughput is not known: pass --batch-summary FILE (tandem batch --json), --model PATH (timed here) or --batch-pps N"
        ),
    };
    let bench = |p: &Path| -> anyhow::Result<(f64, Value)> {
        let v = read_json(p, "a tandem bench --json report")?;
        Ok((
            field(&v, "throughput_rps", p, "a tandem bench --json report")?,
            v,
        ))
    };
    let realtime_rps = match (a.realtime_rps, &a.bench_realtime) {
        (Some(v), _) => {
            src.realtime_rps = "--realtime-rps".into();
            v
        }
        (None, Some(p)) => {
            src.realtime_rps = format!("throughput_rps of {}", p.display());
            bench(p)?.0
        }
        (None, None) => bail!(
            "the real-time throughput is not known: pass --bench-realtime FILE (tandem bench --query mode=realtime_only --json FILE) or --realtime-rps N"
        ),
    };
    let mut measured_hit = None;
    let lookup_rps = match (a.lookup_rps, &a.bench_lookup) {
        (Some(v), _) => {
            src.lookup_rps = "--lookup-rps".into();
            v
        }
        (None, Some(p)) => {
            let (rps, v) = bench(p)?;
            measured_hit = v
                .pointer("/server/overall_hit_rate")
                .and_then(Value::as_f64);
            src.lookup_rps = format!("throughput_rps of {}", p.display());
            rps
        }
        (None, None) => {
            src.lookup_rps = "the real-time throughput (no lookup measurement given)".into();
            realtime_rps
        }
    };
    let hit_rate = match (a.hit_rate, measured_hit) {
        (Some(h), _) => {
            src.hit_rate = "--hit-rate".into();
            h
        }
        (None, Some(h)) => {
            src.hit_rate = "the lookup bench's server hit rate".into();
            h
        }
        (None, None) => {
            src.hit_rate = "assumed 0.9 (pass --hit-rate)".into();
            0.9
        }
    };
    Ok((
        CostInputs {
            entities: a.entities.unwrap_or(1_000_000.0),
            runs_per_day: a.runs_per_day.unwrap_or(1.0),
            avg_rps: rate,
            peak_rps: a.peak.unwrap_or(rate),
            batch_price_per_hour: a.batch_price.unwrap_or(price),
            serving_price_per_hour: a.serving_price.unwrap_or(price),
            batch_pps,
            realtime_rps,
            lookup_rps,
            hit_rate,
            headroom: a.headroom.unwrap_or(0.3),
            min_instances: a.min_instances.unwrap_or(1),
        },
        src,
        model_ms,
    ))
}

fn money(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn opt_money(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.6}"))
}

/// The cost report as terminal tables.
pub fn table(r: &CostReport, src: &Sources) -> String {
    let i = &r.inputs;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "workload: {} entities x {} runs/day; {} req/s average, {} peak; headroom {:.0} %, at least {} instance(s)",
        i.entities,
        i.runs_per_day,
        i.avg_rps,
        i.peak_rps,
        i.headroom * 100.0,
        i.min_instances
    );
    let _ = writeln!(
        out,
        "measured: batch {:.0} predictions/s ({}); real time {:.0} req/s ({}); lookups {:.0} req/s ({}); hit rate {:.1} % ({})",
        i.batch_pps,
        src.batch_pps,
        i.realtime_rps,
        src.realtime_rps,
        i.lookup_rps,
        src.lookup_rps,
        i.hit_rate * 100.0,
        src.hit_rate
    );
    let _ = writeln!(
        out,
        "prices: batch {} / h, serving {} / h\n",
        i.batch_price_per_hour, i.serving_price_per_hour
    );
    let _ = writeln!(
        out,
        "{:<9} {:>11} {:>11} {:>11} {:>10} {:>11} {:>14} {:>14}",
        "strategy",
        "per day",
        "batch",
        "serving",
        "instances",
        "batch h",
        "per 1k comp.",
        "per 1k served"
    );
    for s in &r.strategies {
        let _ = writeln!(
            out,
            "{:<9} {:>11} {:>11} {:>11} {:>10} {:>11.3} {:>14} {:>14}",
            s.strategy,
            money(s.per_day),
            money(s.batch_per_day),
            money(s.serving_per_day),
            s.instances,
            s.batch_hours,
            opt_money(s.per_1k_computed),
            opt_money(s.per_1k_served)
        );
    }
    let _ = writeln!(out, "\ncheapest: {}", r.cheapest);
    match r.break_even_rps {
        Some(be) => {
            let _ = writeln!(
                out,
                "break-even: above {be:.3} req/s on average ({:.0} requests a day), real time costs more than batch at the margin (fractional instances; whole instances and the minimum shift it, see the table)",
                be * 86_400.0
            );
        }
        None => {
            let _ = writeln!(
                out,
                "break-even: none (a lookup costs as much serving capacity as a real-time answer)"
            );
        }
    }
    let _ = writeln!(out, "\nby request rate (cost per day):");
    let _ = writeln!(
        out,
        "{:>8} {:>12} {:>11} {:>11} {:>11}",
        "factor", "avg req/s", "batch", "realtime", "hybrid"
    );
    for row in &r.sensitivity_rate {
        let _ = writeln!(
            out,
            "{:>8} {:>12} {:>11} {:>11} {:>11}",
            format!("x{}", row.factor),
            row.avg_rps,
            money(row.batch),
            money(row.realtime),
            money(row.hybrid)
        );
    }
    let _ = writeln!(out, "\nhybrid by hit rate (cost per day):");
    for (h, c) in &r.sensitivity_hit_rate {
        let _ = writeln!(out, "{:>8.0} % {:>11}", h * 100.0, money(*c));
    }
    out
}

/// `tandem cost`.
pub fn cost(a: CostArgs) -> anyhow::Result<ExitCode> {
    let (inputs, src, _) = inputs(&a)?;
    let report = analyze(&inputs).map_err(|e| anyhow::anyhow!("{e}"))?;
    if a.json {
        let v = serde_json::json!({"report": report, "sources": src});
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", table(&report, &src));
    }
    Ok(ExitCode::SUCCESS)
}

/// Keys an advise file may hold: the needs and the cost flags.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AdviseFile {
    latency_ms: Option<f64>,
    freshness: Option<String>,
    requested_share: Option<f64>,
    feature_ms: Option<f64>,
    model_ms: Option<f64>,
    overhead_ms: Option<f64>,
    entities: Option<f64>,
    runs_per_day: Option<f64>,
    rate: Option<f64>,
    peak: Option<f64>,
    price: Option<f64>,
    batch_price: Option<f64>,
    serving_price: Option<f64>,
    realtime_rps: Option<f64>,
    lookup_rps: Option<f64>,
    batch_pps: Option<f64>,
    hit_rate: Option<f64>,
    headroom: Option<f64>,
    min_instances: Option<u32>,
}

/// `tandem advise`.
pub fn run_advise(mut a: AdviseArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &a.file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let f: AdviseFile = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid advise file", path.display()))?;
        // The file fills what the flags left out.
        a.latency_ms = a.latency_ms.or(f.latency_ms);
        a.freshness = a.freshness.or(f.freshness);
        a.requested_share = a.requested_share.or(f.requested_share);
        a.feature_ms = a.feature_ms.or(f.feature_ms);
        a.model_ms = a.model_ms.or(f.model_ms);
        a.overhead_ms = a.overhead_ms.or(f.overhead_ms);
        let c = &mut a.cost;
        c.entities = c.entities.or(f.entities);
        c.runs_per_day = c.runs_per_day.or(f.runs_per_day);
        c.rate = c.rate.or(f.rate);
        c.price = c.price.or(f.price);
        c.headroom = c.headroom.or(f.headroom);
        c.min_instances = c.min_instances.or(f.min_instances);
        c.peak = c.peak.or(f.peak);
        c.batch_price = c.batch_price.or(f.batch_price);
        c.serving_price = c.serving_price.or(f.serving_price);
        c.realtime_rps = c.realtime_rps.or(f.realtime_rps);
        c.lookup_rps = c.lookup_rps.or(f.lookup_rps);
        c.batch_pps = c.batch_pps.or(f.batch_pps);
        c.hit_rate = c.hit_rate.or(f.hit_rate);
    }
    let (inputs, src, timed_ms) = inputs(&a.cost)?;
    let latency_ms = a
        .latency_ms
        .ok_or_else(|| anyhow::anyhow!("--latency-ms is needed (the p99 budget of an answer)"))?;
    let freshness = a.freshness.as_deref().ok_or_else(|| {
        anyhow::anyhow!("--freshness is needed (the oldest acceptable prediction, like 1h)")
    })?;
    let freshness = parse_duration(freshness).map_err(|e| anyhow::anyhow!("--freshness: {e}"))?;
    let model_ms = match (a.model_ms, timed_ms) {
        (Some(m), _) => m,
        (None, Some(t)) => t,
        (None, None) => bail!(
            "the model's time per prediction is not known: pass --model-ms N or --model PATH (timed here)"
        ),
    };
    let needs = Needs {
        latency_ms,
        freshness,
        requested_share: a.requested_share.unwrap_or(1.0),
        feature_ms: a.feature_ms.unwrap_or(1.0),
        model_ms,
        overhead_ms: a.overhead_ms.unwrap_or(1.0),
    };
    let advice = advise(&needs, &inputs).map_err(|e| anyhow::anyhow!("{e}"))?;
    if a.cost.json {
        let v = serde_json::json!({"advice": advice, "needs": needs, "sources": src});
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", advice_text(&advice, &src));
    }
    Ok(ExitCode::SUCCESS)
}

fn advice_text(a: &Advice, src: &Sources) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "recommendation: {}\n", a.strategy.as_str());
    let _ = writeln!(out, "why:");
    for r in &a.reasons {
        let _ = writeln!(out, "  - {r}");
    }
    for w in &a.warnings {
        let _ = writeln!(out, "  ! {w}");
    }
    let _ = writeln!(out, "\nthe numbers:\n");
    out.push_str(&table(&a.cost, src));
    let _ = writeln!(out, "\nstart with (tandem serve --config FILE):\n");
    out.push_str(&a.config);
    out
}
