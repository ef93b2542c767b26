//! `tandem models inspect` and `tandem models predict`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;
use tandem_core::FeatureBatch;
use tandem_model::{Model, ModelRepository, VersionPolicy, VersionSpec};

/// Subcommands of `tandem models`.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Show a model's inputs, outputs, operators, versions and runtime.
    ///
    /// PATH is an .onnx file, a repository version directory
    /// (<repo>/<name>/<version>), a model directory (<repo>/<name>) or a
    /// whole repository.
    Inspect {
        /// Model file or directory.
        path: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a model on rows from a CSV or JSON file and print the predictions.
    Predict(PredictArgs),
}

/// Arguments of `tandem models predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// An .onnx file, or a model directory of a repository (<repo>/<name>).
    path: PathBuf,
    /// Rows to score: CSV with a header (columns matched by feature name when
    /// the model has names, else every column but entity_id/id in order),
    /// JSON (an array of arrays or of objects, or {"instances": [...]}), or
    /// JSON lines (.jsonl). Empty cells and null are missing values (NaN).
    #[arg(long, short)]
    input: PathBuf,
    /// Version to use when PATH is a model directory (default: newest).
    #[arg(long, conflicts_with = "label")]
    version: Option<u64>,
    /// Version label to use when PATH is a model directory (e.g. stable).
    #[arg(long)]
    label: Option<String>,
    /// Print JSON lines instead of CSV.
    #[arg(long)]
    json: bool,
}

/// Runs a `models` subcommand. Exit codes: 0 ok; 1 some rows had no finite
/// prediction; 2 the command failed.
pub fn run(cmd: ModelsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ModelsCommand::Inspect { path, json } => inspect(&path, json),
        ModelsCommand::Predict(args) => predict(&args),
    }
}

/// Loads the models PATH designates, with their labels.
fn models_at(path: &Path, policy: VersionPolicy) -> anyhow::Result<Vec<(Arc<Model>, Vec<String>)>> {
    if path.is_file() {
        return Ok(vec![(Arc::new(Model::load(path)?), vec![])]);
    }
    if path.join("model.onnx").is_file() {
        return Ok(vec![(
            Arc::new(Model::load(path.join("model.onnx"))?),
            vec![],
        )]);
    }
    if !path.exists() {
        anyhow::bail!("{}: no such file or directory", path.display());
    }
    // A model directory holds numeric version directories; a repository
    // holds model directories.
    let is_model_dir = std::fs::read_dir(path)?.filter_map(Result::ok).any(|e| {
        e.file_name()
            .to_str()
            .is_some_and(|s| s.parse::<u64>().is_ok())
            && e.path().join("model.onnx").is_file()
    });
    let (root, only) = if is_model_dir {
        let parent = path.parent().context("a model directory has a parent")?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("model directory name")?
            .to_string();
        (parent.to_path_buf(), Some(name))
    } else {
        (path.to_path_buf(), None)
    };
    let repo = ModelRepository::open(&root, policy)?;
    let mut out = vec![];
    for name in repo.model_names() {
        if only.as_ref().is_some_and(|o| o != &name) {
            continue;
        }
        let served = repo.served(&name)?;
        for (v, m) in &served.versions {
            let labels = served
                .labels
                .iter()
                .filter(|(_, lv)| *lv == v)
                .map(|(l, _)| l.clone())
                .collect();
            out.push((m.clone(), labels));
        }
    }
    Ok(out)
}

fn shape_text(shape: &[Option<usize>]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|d| d.map_or("N".to_string(), |d| d.to_string()))
        .collect();
    format!("[{}]", dims.join(", "))
}

fn inspect(path: &Path, as_json: bool) -> anyhow::Result<ExitCode> {
    let models = models_at(path, VersionPolicy::All)?;
    if as_json {
        let list: Vec<_> = models
            .iter()
            .map(|(m, labels)| {
                json!({
                    "name": m.name(),
                    "version": m.version(),
                    "labels": labels,
                    "path": m.path(),
                    "features": m.width(),
                    "runtime": m.runtime(),
                    "prediction": {"output": m.prediction_output(), "width": m.prediction_width()},
                    "metadata": m.metadata(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (m, labels) in &models {
        let meta = m.metadata();
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!(" (labels: {})", labels.join(", "))
        };
        println!("{} version {}{}", m.name(), m.version(), labels);
        println!("  file:      {}", m.path().display());
        if !meta.producer.is_empty() {
            println!("  producer:  {}", meta.producer);
        }
        let opsets: Vec<String> = meta
            .opsets
            .iter()
            .map(|(d, v)| format!("{d} {v}"))
            .collect();
        println!("  opsets:    {}", opsets.join(", "));
        println!("  inputs:");
        for t in &meta.inputs {
            println!("    {} {:?} {}", t.name, t.dtype, shape_text(&t.shape));
        }
        if !meta.feature_names.is_empty() {
            println!("  features:  {}", meta.feature_names.join(", "));
        }
        println!("  outputs:");
        for t in &meta.outputs {
            let classes = t
                .class_labels
                .as_ref()
                .map(|c| format!(" classes {}", c.join(",")))
                .unwrap_or_default();
            println!(
                "    {} {:?} {}{}",
                t.name,
                t.dtype,
                shape_text(&t.shape),
                classes
            );
        }
        println!(
            "  prediction: output '{}', {} value(s) per row",
            m.prediction_output(),
            m.prediction_width()
        );
        let ops: Vec<String> = meta
            .operators
            .iter()
            .map(|(op, n)| format!("{op} x{n}"))
            .collect();
        println!("  operators: {}", ops.join(", "));
        println!("  runtime:   {}", m.runtime());
    }
    Ok(ExitCode::SUCCESS)
}

fn predict(args: &PredictArgs) -> anyhow::Result<ExitCode> {
    let spec = match (&args.version, &args.label) {
        (Some(v), _) => VersionSpec::Number(*v),
        (None, Some(l)) => VersionSpec::Label(l.clone()),
        (None, None) => VersionSpec::Latest,
    };
    let model = if args.path.is_file() {
        Arc::new(Model::load(&args.path)?)
    } else {
        let models = models_at(&args.path, VersionPolicy::All)?;
        let pick = match &spec {
            VersionSpec::Latest => models.iter().max_by_key(|(m, _)| m.version()),
            VersionSpec::Number(v) => models.iter().find(|(m, _)| m.version() == *v),
            VersionSpec::Label(l) => models.iter().find(|(_, labels)| labels.contains(l)),
        };
        pick.map(|(m, _)| m.clone()).with_context(|| {
            format!("{}: no model version matches {spec:?}", args.path.display())
        })?
    };
    let rows = crate::input::read(&args.input, &model.metadata().feature_names, model.width())?;
    if rows.values.is_empty() {
        eprintln!("no rows in {}", args.input.display());
        return Ok(ExitCode::SUCCESS);
    }
    let batch = FeatureBatch::from_rows(&rows.values)?;
    let predictions = model.predict(&batch)?;
    let bad: Vec<usize> = predictions.non_finite_rows().collect();
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    if !args.json {
        let cols: Vec<String> = if predictions.width() == 1 {
            vec!["prediction".into()]
        } else {
            (0..predictions.width())
                .map(|i| format!("prediction_{i}"))
                .collect()
        };
        writeln!(out, "row,id,{}", cols.join(","))?;
    }
    for i in 0..predictions.rows() {
        let id = rows.ids[i].clone().unwrap_or_default();
        let p = predictions.row(i);
        if args.json {
            let value = if p.len() == 1 {
                json!(finite_or_null(p[0]))
            } else {
                json!(p.iter().map(|&v| finite_or_null(v)).collect::<Vec<_>>())
            };
            writeln!(
                out,
                "{}",
                json!({"row": i + 1, "id": rows.ids[i], "prediction": value})
            )?;
        } else {
            let vals: Vec<String> = p.iter().map(|v| v.to_string()).collect();
            writeln!(out, "{},{},{}", i + 1, id, vals.join(","))?;
        }
    }
    out.flush()?;
    eprintln!(
        "{} rows scored by {} version {} (output '{}')",
        predictions.rows(),
        model.name(),
        model.version(),
        model.prediction_output()
    );
    if !bad.is_empty() {
        let list: Vec<String> = bad.iter().take(10).map(|r| (r + 1).to_string()).collect();
        eprintln!(
            "warning: {} row(s) have no finite prediction (rows {}{})",
            bad.len(),
            list.join(", "),
            if bad.len() > 10 { ", ..." } else { "" }
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn finite_or_null(v: f32) -> Option<f32> {
    v.is_finite().then_some(v)
}
