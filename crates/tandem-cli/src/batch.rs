//! `tandem batch` and `tandem materialize`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tandem_core::parse_duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tandem_batch::{
    BatchOptions, MaterializeOptions, Progress, RefreshOptions, WarmOptions, WarmTargets,
    run_batch, run_materialize, run_refresh, run_warm,
};

/// Flags shared by `batch` and `materialize`.
#[derive(Debug, Args)]
pub struct InputArgs {
    /// Entity features: a Parquet or CSV file, a directory of them, or a
    /// glob (`data/day=*/part-*.parquet`); local, or an `s3://`, `gs://`,
    /// `az://` or `http(s)://` URL (credentials from the environment:
    /// `AWS_*`, `GOOGLE_*`, `AZURE_*`; docs/batch.md).
    #[arg(long, short)]
    input: Option<String>,
    /// Entity id column [default: entity_id].
    #[arg(long)]
    id_column: Option<String>,
    /// Feature columns in model order, comma-separated (default: the
    /// model's feature names, else every numeric column but the id).
    #[arg(long, value_delimiter = ',')]
    features: Option<Vec<String>>,
    /// SQL filter on the input (`country = 'FR' AND age > 18`).
    #[arg(long = "where")]
    filter: Option<String>,
    /// SQL query over table `input` whose result is used instead
    /// (feature engineering: `SELECT entity_id, ln(spend + 1) AS spend FROM input`).
    #[arg(long)]
    sql: Option<String>,
    /// Fail on the first bad row (null or duplicate id, missing or NaN
    /// feature) instead of skipping or filling it.
    #[arg(long)]
    strict: bool,
    /// Value given to missing, non-numeric and NaN features [default: 0].
    #[arg(long)]
    fill: Option<f64>,
    /// Only the entities whose id hashes to shard I of N (`--shard 0/4`):
    /// run N copies for N shards.
    #[arg(long, value_parser = parse_shard)]
    shard: Option<(u32, u32)>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `tandem batch`.
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// A job file (TOML) with any of the flags below as keys (`model`,
    /// `input`, `store`, `ttl`, `where`, `sql`, ...; docs/batch.md); flags
    /// given here override it, and its relative paths are relative to it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The ONNX model (its sidecar .toml, if any, names the features).
    #[arg(long, short, required_unless_present = "config")]
    model: Option<PathBuf>,
    #[command(flatten)]
    input: InputArgs,
    /// Prediction store: PATH.redb, redis://host:port, redis-cluster://h:p,...
    #[arg(long)]
    store: Option<String>,
    /// TTL of the stored predictions (`24h`, `90m`, `3600s`, `7d`)
    /// [default: 24h].
    #[arg(long, value_parser = parse_duration)]
    ttl: Option<Duration>,
    /// Also write a Parquet file (entity_id, prediction, model, version,
    /// computed_at); it appears only when the run succeeds. A local path or
    /// an object URL (`s3://bucket/preds.parquet`; uploaded whole at the end).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Run id carried by every record (default: generated and printed).
    #[arg(long)]
    run_id: Option<String>,
    /// Resume an interrupted run: entities already written by RUN_ID are
    /// skipped.
    #[arg(long, value_name = "RUN_ID", conflicts_with = "run_id")]
    resume: Option<String>,
    /// Run on a Ballista cluster: df://HOST:PORT of a `tandem scheduler`
    /// (its executors write to the store), or `standalone` for an
    /// in-process one. Paths must be reachable from every executor.
    #[arg(long, value_name = "URL")]
    cluster: Option<String>,
    /// With --cluster and --output: the output is a directory of this many
    /// Parquet files, written by the executors in parallel [default: 4].
    #[arg(long)]
    parts: Option<u32>,
    /// With --cluster: target partitions of the plan, i.e. tasks per stage
    /// (an input row group is never split). Use at least the cluster's
    /// task slots [default: 16].
    #[arg(long)]
    partitions: Option<usize>,
    /// Also write a digest index of the records (24 bytes per entity plus
    /// 2 per feature) for `tandem refresh --index`, which then judges the
    /// entities from it instead of reading their records.
    #[arg(long, value_name = "PATH")]
    index: Option<PathBuf>,
}

/// Arguments of `tandem materialize`.
#[derive(Debug, Args)]
pub struct MaterializeArgs {
    #[command(flatten)]
    input: InputArgs,
    /// Feature store: PATH.redb, redis://host:port, redis-cluster://h:p,...
    #[arg(long)]
    store: String,
    /// A model whose feature names and count the features must match.
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// TTL of the stored features (default: none).
    #[arg(long, value_parser = parse_duration)]
    ttl: Option<Duration>,
}

/// Arguments of `tandem warm`.
#[derive(Debug, Args)]
pub struct WarmArgs {
    /// The ONNX model (its sidecar .toml must name the features).
    #[arg(long, short)]
    model: PathBuf,
    /// Prediction store (and activity log): PATH.redb, redis://..., ...
    #[arg(long)]
    store: String,
    /// Feature store, when not the prediction store.
    #[arg(long)]
    feature_store: Option<String>,
    /// Warm the K most active entities of the look-back window (from the
    /// activity `tandem serve` records).
    #[arg(
        long,
        value_name = "K",
        conflicts_with = "entities",
        required_unless_present = "entities"
    )]
    top_k: Option<usize>,
    /// The look-back window for --top-k.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    lookback: Duration,
    /// Warm the entities of this file instead, one id per line.
    #[arg(long, value_name = "FILE")]
    entities: Option<PathBuf>,
    /// TTL of the predictions written.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    ttl: Duration,
    /// Value given to missing and non-finite features.
    #[arg(long, default_value_t = 0.0)]
    fill: f64,
    /// Run id carried by every record (default: generated).
    #[arg(long)]
    run_id: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `tandem warm`. Exit codes: 0 every entity warmed; 1 some skipped
/// (no features) or failed; 2 the run failed.
pub fn warm(args: WarmArgs) -> anyhow::Result<ExitCode> {
    let targets = match (args.top_k, &args.entities) {
        (Some(0), _) => anyhow::bail!("--top-k must be at least 1"),
        (Some(k), _) => WarmTargets::TopK {
            k,
            lookback: args.lookback,
        },
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            let ids: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            WarmTargets::Entities(ids)
        }
        (None, None) => anyhow::bail!("give --top-k K or --entities FILE"),
    };
    let mut opts = WarmOptions::new(args.model, args.store, targets);
    opts.feature_store = args.feature_store;
    opts.ttl = args.ttl;
    opts.fill = args.fill as f32;
    opts.run_id = args.run_id;
    let bar = Bar::new();
    let s = runtime()?.block_on(run_warm(&opts, &bar))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "warm {}: model {} v{} ({})\n  requested    {}\n  warmed       {}\n  skipped      {} ({})\n  failed       {} ({})\n  filled       {}\n  wall time    {:.2} s ({:.0} entities/s)",
            s.run_id,
            s.model,
            s.version,
            s.targets,
            s.requested,
            s.warmed,
            s.skipped.values().sum::<u64>(),
            counts(&s.skipped),
            s.failed.values().sum::<u64>(),
            counts(&s.failed),
            s.filled,
            s.wall_seconds,
            s.rows_per_second,
        );
    }
    Ok(ExitCode::from(s.exit_code()))
}

/// Arguments of `tandem refresh`.
#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// The ONNX model.
    #[arg(long, short)]
    model: PathBuf,
    /// The current entity features: Parquet or CSV file, directory or glob,
    /// local or in an object store (`s3://`, `gs://`, `az://`, `http(s)://`).
    #[arg(long, short)]
    input: String,
    /// Entity id column.
    #[arg(long, default_value = "entity_id")]
    id_column: String,
    /// Feature columns in model order, comma-separated (default: the
    /// model's feature names).
    #[arg(long, value_delimiter = ',')]
    features: Option<Vec<String>>,
    /// Prediction store (and activity log).
    #[arg(long)]
    store: String,
    /// Rescore entities whose features moved more than T (L2 distance)
    /// from those their prediction was computed from.
    #[arg(long, value_name = "T")]
    changed_threshold: Option<f64>,
    /// Rescore entities whose prediction is older than D (like 12h).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    older_than: Option<Duration>,
    /// Rescore entities whose prediction another model or version made.
    #[arg(long)]
    model_changed: bool,
    /// Only entities asked for within H (the activity log).
    #[arg(long, value_name = "H", value_parser = parse_duration)]
    active_within: Option<Duration>,
    /// TTL of the predictions written.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    ttl: Duration,
    /// Value given to missing and NaN features.
    #[arg(long, default_value_t = 0.0)]
    fill: f64,
    /// Run id carried by every record written (default: generated).
    #[arg(long)]
    run_id: Option<String>,
    /// Resume an interrupted refresh: entities already rescored by RUN_ID
    /// are skipped.
    #[arg(long, value_name = "RUN_ID", conflicts_with = "run_id")]
    resume: Option<String>,
    /// A digest index (written by `tandem batch --index`): the entities it
    /// knows are judged from it without reading the store; updated with
    /// what this run rescores (created if missing).
    #[arg(long, value_name = "PATH")]
    index: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `tandem refresh`. Exit codes: 0 done; 2 failed.
pub fn refresh(args: RefreshArgs) -> anyhow::Result<ExitCode> {
    let mut o = RefreshOptions::new(args.model, args.input, args.store);
    o.id_column = args.id_column;
    o.features = args.features;
    o.changed_threshold = args.changed_threshold;
    o.older_than = args.older_than;
    o.model_changed = args.model_changed;
    o.active_within = args.active_within;
    o.ttl = args.ttl;
    o.fill = args.fill;
    o.resume = args.resume.is_some();
    o.run_id = args.resume.or(args.run_id);
    o.index = args.index;
    let bar = Bar::new();
    let s = runtime()?.block_on(run_refresh(&o, &bar))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "refresh {}: model {} v{}\n  checked      {}\n  rescored     {} ({:.1} %: {})\n  unchanged    {} ({} cleared by the index)\n  inactive     {}\n  already done {}\n  wall time    {:.2} s",
            s.run_id,
            s.model,
            s.version,
            s.checked,
            s.rescored,
            s.rescored_fraction * 100.0,
            counts(&s.reasons),
            s.unchanged,
            s.cleared_by_index,
            s.inactive,
            s.already_done,
            s.wall_seconds,
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_shard(s: &str) -> Result<(u32, u32), String> {
    let (i, n) = s.split_once('/').ok_or("expected I/N, e.g. 0/4")?;
    let i: u32 = i
        .trim()
        .parse()
        .map_err(|_| format!("bad shard index {i:?}"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("bad shard count {n:?}"))?;
    if n == 0 || i >= n {
        return Err(format!("need 0 <= I < N, got {i}/{n}"));
    }
    Ok((i, n))
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub struct Bar(ProgressBar);

impl Bar {
    pub fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        Bar(bar)
    }
}

impl Progress for Bar {
    fn start(&self, total: Option<u64>) {
        if let Some(t) = total {
            self.0.set_length(t);
            self.0.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {human_pos}/{human_len} rows  {per_sec}  ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
        } else {
            self.0.set_style(
                ProgressStyle::with_template("{spinner} {human_pos} rows  {per_sec}  {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
        }
        self.0.enable_steady_tick(Duration::from_millis(200));
    }

    fn advance(&self, rows: u64) {
        self.0.inc(rows);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn counts(map: &std::collections::BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `tandem batch`. Exit codes: 0 all rows scored as they were; 1
/// finished with skipped rows or filled features; 2 failed.
pub fn batch(args: BatchArgs) -> anyhow::Result<ExitCode> {
    let file = match &args.config {
        Some(path) => crate::jobfile::BatchFile::read(path)?,
        None => crate::jobfile::BatchFile::default(),
    };
    let i = args.input;
    let model = args
        .model
        .or(file.model)
        .ok_or_else(|| anyhow::anyhow!("no model: give --model or `model` in the job file"))?;
    let input = i
        .input
        .or(file.input)
        .ok_or_else(|| anyhow::anyhow!("no input: give --input or `input` in the job file"))?;
    let mut opts = BatchOptions::new(model, input);
    opts.id_column = i
        .id_column
        .or(file.id_column)
        .unwrap_or_else(|| "entity_id".into());
    opts.features = i.features.or(file.features);
    opts.filter = i.filter.or(file.filter);
    opts.sql = i.sql.or(file.sql);
    opts.strict = i.strict || file.strict.unwrap_or(false);
    opts.fill = i.fill.or(file.fill).unwrap_or(0.0) as f32;
    opts.shard = match (i.shard, &file.shard) {
        (Some(s), _) => Some(s),
        (None, Some(s)) => {
            Some(parse_shard(s).map_err(|e| anyhow::anyhow!("job file key shard: {s:?}: {e}"))?)
        }
        (None, None) => None,
    };
    opts.store = args.store.or(file.store);
    opts.ttl = match (args.ttl, &file.ttl) {
        (Some(t), _) => t,
        (None, Some(t)) => {
            parse_duration(t).map_err(|e| anyhow::anyhow!("job file key ttl: {t:?}: {e}"))?
        }
        (None, None) => Duration::from_secs(24 * 3600),
    };
    opts.output = args.output.or(file.output);
    opts.index = args.index.or(file.index);
    if opts.index.is_some() && opts.store.is_none() {
        anyhow::bail!("--index describes the records written to a store: give --store");
    }
    let cluster = args.cluster.or(file.cluster);
    let parts = args.parts.or(file.parts);
    let partitions = args.partitions.or(file.partitions);
    if cluster.is_none() && (parts.is_some() || partitions.is_some()) {
        anyhow::bail!("--parts and --partitions are for --cluster runs");
    }
    opts.resume = args.resume.is_some();
    opts.run_id = args
        .resume
        .or(args.run_id)
        .or(file.run_id)
        .or_else(|| Some(tandem_batch::new_run_id()));
    if !i.json {
        eprintln!("run id: {}", opts.run_id.as_deref().unwrap_or_default());
    }
    let bar = Bar::new();
    let summary = match &cluster {
        Some(url) => {
            let target = tandem_batch::cluster::ClusterTarget::parse(url)?;
            runtime()?.block_on(tandem_batch::cluster::run_batch_cluster(
                &opts,
                &target,
                parts.unwrap_or(4),
                partitions.unwrap_or(16),
                &bar,
            ))?
        }
        None => runtime()?.block_on(run_batch(&opts, &bar))?,
    };
    if i.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "run {}: model {} v{}\n  rows read    {}\n  scored       {}\n  written      {}{}\n  skipped      {} ({})\n  filled       {}\n  wall time    {:.2} s ({:.0} rows/s)",
            summary.run_id,
            summary.model,
            summary.version,
            summary.rows_read,
            summary.rows_scored,
            summary.rows_written,
            if summary.already_written > 0 {
                format!(
                    " (+{} already written by this run)",
                    summary.already_written
                )
            } else {
                String::new()
            },
            summary.rows_skipped,
            counts(&summary.skipped),
            counts(&summary.filled),
            summary.wall_seconds,
            summary.rows_per_second,
        );
        if let Some(store) = &summary.store {
            println!("  store        {store}");
        }
        if let Some(out) = &summary.output {
            println!("  output       {out}");
        }
    }
    Ok(ExitCode::from(summary.exit_code()))
}

/// Runs `tandem materialize`. Exit codes as for `batch`.
pub fn materialize(args: MaterializeArgs) -> anyhow::Result<ExitCode> {
    let i = args.input;
    let input = i
        .input
        .ok_or_else(|| anyhow::anyhow!("--input is required"))?;
    let mut opts = MaterializeOptions::new(input, args.store);
    opts.id_column = i.id_column.unwrap_or_else(|| "entity_id".into());
    opts.features = i.features;
    opts.filter = i.filter;
    opts.sql = i.sql;
    opts.strict = i.strict;
    opts.fill = i.fill.unwrap_or(0.0);
    opts.shard = i.shard;
    opts.model = args.model;
    opts.ttl = args.ttl;
    let bar = Bar::new();
    let summary = runtime()?.block_on(run_materialize(&opts, &bar))?;
    if i.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "materialized {} features of {} rows into {}\n  written      {}\n  skipped      {} ({})\n  filled       {}\n  wall time    {:.2} s ({:.0} rows/s)",
            summary.features.len(),
            summary.rows_read,
            summary.store,
            summary.rows_written,
            summary.rows_skipped,
            counts(&summary.skipped),
            counts(&summary.filled),
            summary.wall_seconds,
            summary.rows_per_second,
        );
    }
    Ok(ExitCode::from(summary.exit_code()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards() {
        assert_eq!(parse_shard("1/4").unwrap(), (1, 4));
        assert!(parse_shard("4/4").is_err());
        assert!(parse_shard("1").is_err());
    }
}
