//! The real `tandem` binary: `models inspect` and `models predict`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn tandem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .output()
        .expect("run tandem")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes the first `n` reference rows of a fixture as CSV with ids.
fn reference_csv(fixture: &str, n: usize, dir: &Path) -> (PathBuf, serde_json::Value) {
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            fixtures()
                .join("models")
                .join(fixture)
                .join("1/reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let width = r["features"].as_u64().unwrap() as usize;
    let mut csv = String::from("entity_id");
    for i in 0..width {
        csv.push_str(&format!(",f{i}"));
    }
    csv.push('\n');
    for (i, row) in r["inputs"].as_array().unwrap().iter().take(n).enumerate() {
        let cells: Vec<String> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().map(|x| x.to_string()).unwrap_or_default())
            .collect();
        csv.push_str(&format!("e{i},{}\n", cells.join(",")));
    }
    let path = dir.join(format!("{fixture}.csv"));
    std::fs::write(&path, csv).unwrap();
    (path, r)
}

#[test]
fn inspect_shows_inputs_outputs_and_operators() {
    let out = tandem(&[
        "models",
        "inspect",
        fixtures()
            .join("models/sklearn_pipeline_scaler_mlp/1/model.onnx")
            .to_str()
            .unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    for needle in [
        "sklearn_pipeline_scaler_mlp version 1",
        "[N, 8]",
        "ai.onnx.ml:Scaler x1",
        "MatMul x2",
        "prediction: output 'variable'",
        // A scaler in front: not a plain chain of dense layers.
        "runtime:   tract",
    ] {
        assert!(s.contains(needle), "missing {needle:?} in:\n{s}");
    }
    let bare = fixtures().join("models/sklearn_mlp_regressor/1/model.onnx");
    let out = tandem(&["models", "inspect", "--json", bare.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The tiles wherever the CPU has AVX2 and FMA (the machines CI runs on).
    #[cfg(target_arch = "x86_64")]
    let tiles =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let tiles = false;
    let want = if tiles {
        "dense layers (AVX2/FMA tiles)"
    } else {
        "dense layers (matrixmultiply)"
    };
    assert_eq!(v[0]["runtime"], want);
}

#[test]
fn inspect_json_lists_every_version_of_a_repository() {
    let dir = tempfile::tempdir().unwrap();
    for (fixture, v) in [("xgboost_regressor", 1), ("lightgbm_regressor", 2)] {
        let d = dir.path().join("eta").join(v.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(
            fixtures().join("models").join(fixture).join("1/model.onnx"),
            d.join("model.onnx"),
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("eta/labels.toml"), "stable = 1\n").unwrap();
    let out = tandem(&["models", "inspect", "--json", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["version"], 1);
    assert_eq!(list[0]["labels"][0], "stable");
    assert_eq!(list[1]["metadata"]["inputs"][0]["shape"][1], 8);
}

#[test]
fn predict_csv_matches_the_onnxruntime_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, r) = reference_csv("lightgbm_classifier", 20, dir.path());
    let out = tandem(&[
        "models",
        "predict",
        fixtures()
            .join("models/lightgbm_classifier")
            .to_str()
            .unwrap(),
        "--input",
        csv.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "row,id,prediction");
    assert_eq!(lines.len(), 21);
    for (i, line) in lines[1..].iter().enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells[1], format!("e{i}"));
        let got: f64 = cells[2].parse().unwrap();
        let want = r["outputs"]["probabilities"]["data"][i]["1"]
            .as_f64()
            .unwrap();
        assert!((got - want).abs() <= 1e-4, "row {i}: {got} vs {want}");
    }
}

#[test]
fn predict_json_objects_by_feature_name() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.json");
    let row: serde_json::Map<String, serde_json::Value> = (0..8)
        .map(|i| (format!("f{i}"), serde_json::json!(0.25)))
        .collect();
    std::fs::write(
        &input,
        serde_json::json!({"instances": [row.clone(), row]}).to_string(),
    )
    .unwrap();
    let out = tandem(&[
        "models",
        "predict",
        fixtures()
            .join("models/sklearn_rf_regressor/1/model.onnx")
            .to_str()
            .unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0]["prediction"].is_f64());
    assert_eq!(lines[0]["prediction"], lines[1]["prediction"]);
}

#[test]
fn a_bad_cell_fails_naming_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.csv");
    std::fs::write(
        &input,
        "f0,f1,f2,f3,f4,f5,f6,f7\n1,2,3,4,5,6,7,8\n1,2,x7,4,5,6,7,8\n",
    )
    .unwrap();
    let out = tandem(&[
        "models",
        "predict",
        fixtures()
            .join("models/xgboost_regressor/1/model.onnx")
            .to_str()
            .unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("row 2, column 'f2': 'x7' is not a number"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "nothing is printed for a failed run");
}

#[test]
fn a_missing_value_through_a_network_exits_1_and_names_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.csv");
    std::fs::write(
        &input,
        "f0,f1,f2,f3,f4,f5,f6,f7\n1,2,3,4,5,6,7,8\n1,2,,4,5,6,7,8\n",
    )
    .unwrap();
    let out = tandem(&[
        "models",
        "predict",
        fixtures()
            .join("models/sklearn_mlp_regressor/1/model.onnx")
            .to_str()
            .unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("1 row(s) have no finite prediction (rows 2)"));
}

#[test]
fn load_errors_exit_2_with_the_reason() {
    let out = tandem(&[
        "models",
        "inspect",
        fixtures()
            .join("unsupported/sklearn_svr.onnx")
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unsupported operator SVMRegressor"),
        "{}",
        text(&out.stderr)
    );
    let out = tandem(&["models", "inspect", "/nonexistent/model.onnx"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/model.onnx"));
    // A graph that makes the ONNX runtime panic: the same clean exit.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("model.onnx");
    tandem_testing::write_panicking_onnx(&bad, 8);
    let out = tandem(&["models", "inspect", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("panicked while preparing the graph"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn help_explains_the_flags() {
    let out = tandem(&["models", "predict", "--help"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert!(
        s.contains("--input") && s.contains("Empty cells and null are missing values"),
        "{s}"
    );
}
