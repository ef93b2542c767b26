//! Every fixture model, every row, every output, against onnxruntime's
//! recorded outputs: `|tandem - ref| <= 1e-4 * max(1, |ref|)`, labels exact.
//! The fixtures are real converter exports (scripts/fixtures/make_models.py)
//! and hand-built operator graphs that exercise every attribute.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tandem_core::FeatureBatch;
use tandem_model::{Model, OutputData};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn close(got: f32, want: f64) -> bool {
    let tol = 1e-4 * want.abs().max(1.0);
    (f64::from(got) - want).abs() <= tol
}

/// Checks one model file against its reference JSON; returns failures.
fn check(model_path: &Path, reference: &Path) -> Vec<String> {
    let r: Value = serde_json::from_str(&std::fs::read_to_string(reference).unwrap()).unwrap();
    let model = match Model::load(model_path) {
        Ok(m) => m,
        Err(e) => return vec![format!("{}: load failed: {e}", model_path.display())],
    };
    let rows: Vec<Vec<f32>> = r["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().map_or(f32::NAN, |x| x as f32))
                .collect()
        })
        .collect();
    let batch = FeatureBatch::from_rows(&rows).unwrap();
    let outputs = match model.run(&batch) {
        Ok(o) => o,
        Err(e) => return vec![format!("{}: run failed: {e}", model_path.display())],
    };
    let mut failures = vec![];
    let name = r["model"].as_str().unwrap().to_string();
    for (out_name, want) in r["outputs"].as_object().unwrap() {
        let Some(got) = outputs.iter().find(|o| &o.name == out_name) else {
            failures.push(format!("{name}: no output {out_name}"));
            continue;
        };
        let kind = want["kind"].as_str().unwrap();
        let data = want["data"].as_array().unwrap();
        match (kind, &got.data) {
            ("float", OutputData::F32(v)) => {
                if v.len() != data.len() {
                    failures.push(format!(
                        "{name}/{out_name}: {} values, want {}",
                        v.len(),
                        data.len()
                    ));
                    continue;
                }
                let width = v.len() / rows.len().max(1);
                for (i, (g, w)) in v.iter().zip(data).enumerate() {
                    let ok = match w.as_f64() {
                        Some(w) => close(*g, w),
                        None => !g.is_finite(),
                    };
                    if !ok {
                        failures.push(format!(
                            "{name}/{out_name}: row {} col {}: got {g}, want {w}",
                            i / width.max(1),
                            i % width.max(1)
                        ));
                    }
                }
            }
            ("int64", OutputData::I64(v)) => {
                let want: Vec<i64> = data.iter().map(|x| x.as_i64().unwrap()).collect();
                for (i, (g, w)) in v.iter().zip(&want).enumerate() {
                    if g != w {
                        failures.push(format!("{name}/{out_name}: row {i}: label {g}, want {w}"));
                    }
                }
                if v.len() != want.len() {
                    failures.push(format!(
                        "{name}/{out_name}: {} labels, want {}",
                        v.len(),
                        want.len()
                    ));
                }
            }
            ("string", OutputData::String(v)) => {
                let want: Vec<&str> = data.iter().map(|x| x.as_str().unwrap()).collect();
                if v.iter().map(String::as_str).collect::<Vec<_>>() != want {
                    failures.push(format!(
                        "{name}/{out_name}: labels differ: {v:?} vs {want:?}"
                    ));
                }
            }
            ("zipmap", OutputData::F32(v)) => {
                // A sequence of {label: probability}; tandem serves the [N, C]
                // tensor with the labels in its metadata.
                let info = model
                    .metadata()
                    .outputs
                    .iter()
                    .find(|o| &o.name == out_name)
                    .unwrap();
                let labels = info
                    .class_labels
                    .clone()
                    .expect("zipmap output keeps its labels");
                let c = labels.len();
                for (i, m) in data.iter().enumerate() {
                    for (j, label) in labels.iter().enumerate() {
                        let w = m[label].as_f64().unwrap();
                        let g = v[i * c + j];
                        if !close(g, w) {
                            failures.push(format!(
                                "{name}/{out_name}: row {i} class {label}: got {g}, want {w}"
                            ));
                        }
                    }
                }
            }
            (kind, data) => failures.push(format!(
                "{name}/{out_name}: reference is {kind}, tandem gave {}",
                match data {
                    OutputData::F32(_) => "float",
                    OutputData::I64(_) => "int64",
                    OutputData::String(_) => "string",
                }
            )),
        }
    }
    failures
}

fn report(failures: Vec<String>, checked: usize) {
    assert!(checked > 0, "no fixtures found");
    if !failures.is_empty() {
        // At most three examples per output, so every failing output shows.
        let n = failures.len();
        let mut per_output: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for f in failures {
            let key = f.split(':').next().unwrap_or_default().to_string();
            per_output.entry(key).or_default().push(f);
        }
        let shown: Vec<String> = per_output
            .values()
            .flat_map(|v| {
                v.iter()
                    .take(3)
                    .cloned()
                    .chain(std::iter::once(format!("  ({} in all)", v.len())))
            })
            .collect();
        panic!(
            "{n} mismatches over {checked} fixtures:\n{}",
            shown.join("\n")
        );
    }
}

#[test]
fn converter_exports_match_onnxruntime() {
    let mut failures = vec![];
    let mut checked = 0;
    let mut dirs: Vec<_> = std::fs::read_dir(fixtures().join("models"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let v = dir.join("1");
        failures.extend(check(&v.join("model.onnx"), &v.join("reference.json")));
        checked += 1;
    }
    assert!(
        checked >= 12,
        "expected every converter fixture, found {checked}"
    );
    report(failures, checked);
}

#[test]
fn operator_graphs_match_onnxruntime() {
    let mut failures = vec![];
    let mut checked = 0;
    let mut files: Vec<_> = std::fs::read_dir(fixtures().join("ops"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    files.sort();
    for f in files {
        failures.extend(check(&f, &f.with_extension("json")));
        checked += 1;
    }
    report(failures, checked);
}

#[test]
fn large_batches_run_in_chunks_and_agree_with_small_batches() {
    // 4096 + 2 * 1024 + 37 rows: a chunk on the 4096-row plan, two on the
    // 1024-row plan and a tail on the general one, for a network, a
    // classifier with a label output and a regressor.
    for fixture in [
        "sklearn_mlp_regressor",
        "lightgbm_classifier",
        "sklearn_hgb_regressor",
    ] {
        let model =
            Model::load(fixtures().join("models").join(fixture).join("1/model.onnx")).unwrap();
        let w = model.width();
        let rows = 4096 + 2 * 1024 + 37;
        let values: Vec<f32> = (0..rows * w)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        let big = FeatureBatch::new(values.clone(), w).unwrap();
        let all = model.run(&big).unwrap();
        let whole = model.predict(&big).unwrap();
        assert_eq!(whole.rows(), rows);
        for start in (0..rows).step_by(300) {
            let end = (start + 300).min(rows);
            let small = FeatureBatch::new(values[start * w..end * w].to_vec(), w).unwrap();
            let part = model.predict(&small).unwrap();
            assert_eq!(
                part.values(),
                &whole.values()[start..end],
                "{fixture} rows {start}..{end}"
            );
        }
        for out in &all {
            assert_eq!(out.shape[0], rows, "{fixture}/{}", out.name);
        }
    }
}

#[test]
fn single_rows_score_exactly_as_their_batch() {
    // A row scored alone takes other kernels than a batch (tree ensembles
    // scan the QuickScorer layout instead of walking in lock-step); every
    // row of every converter fixture, alone, gives its batch's prediction.
    let mut checked = 0;
    for dir in std::fs::read_dir(fixtures().join("models")).unwrap() {
        let v = dir.unwrap().path().join("1");
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(v.join("reference.json")).unwrap())
                .unwrap();
        let model = Model::load(v.join("model.onnx")).unwrap();
        let rows: Vec<Vec<f32>> = r["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                let row = row.as_array().unwrap();
                row.iter()
                    .map(|v| v.as_f64().map_or(f32::NAN, |x| x as f32))
                    .collect()
            })
            .collect();
        let batch = model
            .predict(&FeatureBatch::from_rows(&rows).unwrap())
            .unwrap();
        let w = batch.values().len() / rows.len();
        for (i, row) in rows.iter().enumerate() {
            let alone = model
                .predict(&FeatureBatch::from_rows(std::slice::from_ref(row)).unwrap())
                .unwrap();
            assert_eq!(
                alone.values(),
                &batch.values()[i * w..(i + 1) * w],
                "{}: row {i}",
                v.display()
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 12,
        "expected every converter fixture, found {checked}"
    );
}
