//! `tandem quickstart`: the whole loop on this machine in one command, no
//! server needed. Lays out a working directory (a config, the bundled
//! example model in a model repository, synthetic entity features in
//! Parquet), materializes the features and runs a batch job into the
//! embedded store, then serves with the dashboard and prints what to try.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, StandardNormal};
use tandem_batch::{BatchOptions, MaterializeOptions, run_batch, run_materialize};

use crate::batch::{Bar, runtime};

/// The bundled example: scikit-learn's GradientBoostingClassifier on 8
/// standard-normal features, exported by skl2onnx with its default options
/// (ZipMap output); the prediction is the positive-class probability.
const MODEL_ONNX: &[u8] =
    include_bytes!("../../../fixtures/models/sklearn_gb_classifier/1/model.onnx");
const MODEL_TOML: &[u8] =
    include_bytes!("../../../fixtures/models/sklearn_gb_classifier/1/model.toml");
const MODEL_NAME: &str = "churn";
const FEATURES: usize = 8;

/// `tandem quickstart`.
#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// The working directory to create (or reuse).
    #[arg(long, default_value = "tandem-quickstart")]
    pub dir: PathBuf,
    /// Synthetic entities.
    #[arg(long, default_value_t = 100_000)]
    pub entities: u64,
    /// Share of the entities the batch job scores (the rest are computed in
    /// real time when asked for).
    #[arg(long, default_value_t = 0.9)]
    pub batch_share: f64,
    /// Seed of the synthetic features.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where to serve.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Stop after the batch job.
    #[arg(long)]
    pub no_serve: bool,
}

fn width(n: u64) -> usize {
    n.saturating_sub(1).max(1).to_string().len().max(6)
}

/// Entity `i`'s id.
fn id(i: u64, w: usize) -> String {
    format!("user-{i:0w$}")
}

/// Writes `n` entities with standard-normal features f0..f7 (the model's
/// training distribution), through a temporary file and a rename.
fn write_features(path: &Path, n: u64, seed: u64) -> anyhow::Result<()> {
    let w = width(n);
    let mut fields = vec![Field::new("entity_id", DataType::Utf8, false)];
    fields.extend((0..FEATURES).map(|f| Field::new(format!("f{f}"), DataType::Float64, false)));
    let schema = Arc::new(Schema::new(fields));
    let tmp = path.with_extension("parquet.tmp");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), None)?;
    let mut rng = SmallRng::seed_from_u64(seed);
    const CHUNK: u64 = 65_536;
    let mut start = 0;
    while start < n {
        let end = (start + CHUNK).min(n);
        let ids: ArrayRef = Arc::new(StringArray::from_iter_values(
            (start..end).map(|i| id(i, w)),
        ));
        let mut cols = vec![ids];
        let rows = (end - start) as usize;
        let mut values: Vec<Vec<f64>> = (0..FEATURES).map(|_| Vec::with_capacity(rows)).collect();
        for _ in 0..rows {
            for col in &mut values {
                let v: f64 = StandardNormal.sample(&mut rng);
                col.push((v * 1000.0).round() / 1000.0);
            }
        }
        cols.extend(
            values
                .into_iter()
                .map(|v| Arc::new(Float64Array::from(v)) as ArrayRef),
        );
        writer.write(&RecordBatch::try_new(schema.clone(), cols)?)?;
        start = end;
    }
    writer.close()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn config_text(listen: &str) -> String {
    format!(
        r#"# tandem quickstart: `tandem serve --config tandem.toml` (from this directory).
# Every key: docs/serve.md (Configuration); each is also TANDEM__SECTION__KEY.

[server]
listen = "{listen}"

[models]
# A model repository in TensorFlow Serving's layout: models/<name>/<version>/.
path = "models"
poll_interval = "1s"

[store]
# The embedded store; for Redis: url = "redis://127.0.0.1:6379".
url = "tandem.redb"

[hybrid]
mode = "hybrid"
max_staleness = "24h"
deadline = "50ms"

[ttl]
batch = "24h"
realtime = "1h"

[sla]
p99_ms = 100.0
"#
    )
}

/// The lines to try against a server at `addr`.
pub fn try_lines(
    addr: SocketAddr,
    dir: &Path,
    input: &str,
    scored: &str,
    unscored: &str,
    entities: u64,
) -> String {
    let w = width(entities);
    let base = format!("http://{addr}");
    let d = dir.display();
    let row = "[0.1, -1.2, 0.5, 0.8, -0.2, 1.1, 0.0, -0.7]";
    let mut out = String::new();
    let _ = writeln!(out, "\ntandem is serving {MODEL_NAME} at {base}; try:\n");
    let _ = writeln!(
        out,
        "  # a batch prediction (source \"store\", then \"memory\")"
    );
    let _ = writeln!(out, "  curl {base}/v1/predict/{scored}");
    let _ = writeln!(
        out,
        "  # an entity the batch did not score: computed now (source \"realtime\")"
    );
    let _ = writeln!(out, "  curl {base}/v1/predict/{unscored}");
    let _ = writeln!(out, "  # several entities, one with request-time features");
    let _ = writeln!(
        out,
        "  curl -X POST {base}/v1/predict -H 'content-type: application/json' -d '{{\"entities\": [{{\"entity_id\": \"{scored}\"}}, {{\"entity_id\": \"{unscored}\", \"context\": {{\"f0\": 2.5}}}}]}}'"
    );
    let _ = writeln!(out, "  # TensorFlow Serving REST");
    let _ = writeln!(
        out,
        "  curl -X POST {base}/v1/models/{MODEL_NAME}:predict -d '{{\"instances\": [{row}]}}'"
    );
    let _ = writeln!(out, "  # KServe V2");
    let _ = writeln!(
        out,
        "  curl -X POST {base}/v2/models/{MODEL_NAME}/infer -d '{{\"inputs\": [{{\"name\": \"{input}\", \"shape\": [1, 8], \"datatype\": \"FP32\", \"data\": {row}}}]}}'"
    );
    let _ = writeln!(out, "  # what the server sees, and the SLA");
    let _ = writeln!(out, "  curl {base}/v1/stats");
    let _ = writeln!(out, "  curl {base}/v1/sla");
    let _ = writeln!(out, "  curl {base}/metrics");
    let _ = writeln!(out, "\n  dashboard: {base}/");
    let _ = writeln!(
        out,
        "  load test: tandem bench {base} -d 10s --zipf 1.0 --entities {entities} --id-template 'user-{{:0{w}}}'"
    );
    let _ = writeln!(out, "\nwith Redis instead of the embedded store:\n");
    let _ = writeln!(out, "  redis-server --port 6379 --daemonize yes");
    let _ = writeln!(
        out,
        "  tandem materialize --input {d}/features.parquet --store redis://127.0.0.1:6379"
    );
    let _ = writeln!(
        out,
        "  tandem batch --model {d}/models/{MODEL_NAME}/1/model.onnx --input {d}/features.parquet --store redis://127.0.0.1:6379"
    );
    let _ = writeln!(
        out,
        "  cd {d} && TANDEM__STORE__URL=redis://127.0.0.1:6379 tandem serve --config tandem.toml"
    );
    let _ = writeln!(out, "\nstop with Ctrl-C.");
    out
}

/// Runs the quickstart.
pub fn quickstart(args: QuickstartArgs) -> anyhow::Result<ExitCode> {
    if args.entities == 0 {
        bail!("--entities must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.batch_share) {
        bail!(
            "--batch-share must be between 0 and 1, got {}",
            args.batch_share
        );
    }
    let dir = &args.dir;
    let model_dir = dir.join("models").join(MODEL_NAME).join("1");
    std::fs::create_dir_all(&model_dir)
        .with_context(|| format!("creating {}", model_dir.display()))?;
    std::fs::write(model_dir.join("model.onnx"), MODEL_ONNX)?;
    std::fs::write(model_dir.join("model.toml"), MODEL_TOML)?;
    let config = dir.join("tandem.toml");
    std::fs::write(&config, config_text(&args.listen))
        .with_context(|| format!("writing {}", config.display()))?;
    let features = dir.join("features.parquet");
    eprintln!(
        "[1/4] {} synthetic entities -> {}",
        args.entities,
        features.display()
    );
    write_features(&features, args.entities, args.seed)?;

    let store = dir.join("tandem.redb");
    let store_url = store.display().to_string();
    let input = features.display().to_string();
    let rt = runtime()?;
    eprintln!("[2/4] materialize the features into {store_url}");
    let m = rt
        .block_on(run_materialize(
            &MaterializeOptions::new(input.clone(), store_url.clone()),
            &Bar::new(),
        ))
        .context("materializing the features")?;
    eprintln!(
        "      {} entities, {} features in {:.1} s",
        m.rows_written,
        m.features.len(),
        m.wall_seconds
    );

    let w = width(args.entities);
    let scored_n = ((args.entities as f64) * args.batch_share).round() as u64;
    eprintln!(
        "[3/4] batch-score {scored_n} of them with {MODEL_NAME} (the rest are left to real time)"
    );
    let mut opts = BatchOptions::new(model_dir.join("model.onnx"), input);
    opts.store = Some(store_url);
    opts.filter = Some(format!("entity_id < '{}'", id(scored_n, w)));
    opts.run_id = Some(tandem_batch::new_run_id());
    let b = rt
        .block_on(run_batch(&opts, &Bar::new()))
        .context("the batch job")?;
    eprintln!(
        "      {} predictions written in {:.1} s ({:.0} rows/s)",
        b.rows_written, b.wall_seconds, b.rows_per_second
    );
    drop(rt);

    let model = tandem_model::Model::load(model_dir.join("model.onnx"))
        .context("loading the bundled model")?;
    let input = model
        .metadata()
        .inputs
        .first()
        .map_or_else(|| "input".to_string(), |i| i.name.clone());
    drop(model);
    let scored = id(0, w);
    let unscored = id(args.entities - 1, w);
    if args.no_serve {
        eprintln!(
            "[4/4] skipped (--no-serve); serve with: cd {} && tandem serve --config tandem.toml",
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("[4/4] serve");
    let dir = dir.clone();
    let entities = args.entities;
    crate::serve::serve_with(
        crate::serve::ServeArgs::with_config(config, args.listen),
        Some(Box::new(move |addr| {
            print!(
                "{}",
                try_lines(addr, &dir, &input, &scored, &unscored, entities)
            );
        })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_like_their_numbers() {
        assert_eq!(width(100_000), 6);
        assert_eq!(width(10_000_000), 7);
        assert_eq!(id(42, 6), "user-000042");
        assert!(id(89_999, 6) < id(90_000, 6));
    }
}
