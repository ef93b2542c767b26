//! TF Serving REST and KServe V2 REST on the real `tandem serve`, checked
//! against the models run directly; and the real `tritonclient[http]`
//! Python client against the server.

mod serve_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use serve_common::*;
use tandem_core::FeatureBatch;
use tandem_model::{Model, OutputData};

/// churn v1 (XGBoost) and v2 (LightGBM) with labels stable=1, canary=2;
/// iris (logistic regression: a label and a probability output); strict
/// (XGBoost, refusing NaN inputs).
fn repo(dir: &Path) -> PathBuf {
    let repo = churn_repo(dir);
    add_version(&repo, "churn", 2, "lightgbm_regressor");
    std::fs::write(repo.join("churn/labels.toml"), "stable = 1\ncanary = 2\n").unwrap();
    add_version(&repo, "iris", 1, "sklearn_logreg");
    add_version(&repo, "strict", 1, "xgboost_regressor");
    let toml = repo.join("strict/1/model.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    text.push_str("\n[inputs]\nnon_finite = \"reject\"\n");
    std::fs::write(toml, text).unwrap();
    repo
}

fn start(dir: &Path) -> (Serve, PathBuf) {
    let repo = repo(dir);
    let store = dir.join("t.redb");
    let server = Serve::start(
        &["--model", s(&repo), "--store", s(&store)],
        &[("TANDEM__MODELS__LATEST_VERSIONS", "2")],
    );
    (server, repo)
}

fn rows() -> Vec<Vec<f32>> {
    vec![features(1), features(2), features(3)]
}

fn load(repo: &Path, model: &str, v: u64) -> Model {
    Model::load(repo.join(format!("{model}/{v}/model.onnx"))).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * (1.0 + b.abs())
}

fn floats(v: &Value) -> Vec<f64> {
    let mut out = vec![];
    fn walk(v: &Value, out: &mut Vec<f64>) {
        match v {
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            x => out.push(x.as_f64().unwrap_or_else(|| panic!("not a number: {x}"))),
        }
    }
    walk(v, &mut out);
    out
}

fn assert_close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(close(*g, *w), "{got:?} vs {want:?}");
    }
}

#[test]
fn tf_serving_rest_predict_status_metadata_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (server, repo) = start(dir.path());
    let v1 = predict(&load(&repo, "churn", 1), &rows());
    let v2 = predict(&load(&repo, "churn", 2), &rows());
    assert_ne!(v1, v2);
    let instances = json!({"instances": rows()}).to_string();

    // Row format, latest version, then by number and by label (keywords
    // are case-insensitive).
    let r = server.post("/v1/models/churn:predict", &instances);
    assert_eq!(r.status, 200, "{}", r.body);
    let p = r.json()["predictions"].clone();
    assert_eq!(p.as_array().unwrap().len(), 3);
    assert!(p[0].is_array(), "[N, 1] output gives one list per row: {p}");
    assert_close(&floats(&p), &v2);
    for (path, want) in [
        ("/v1/models/churn/versions/1:predict", &v1),
        ("/v1/models/churn/labels/stable:predict", &v1),
        ("/v1/models/churn/LABELS/canary:PREDICT", &v2),
    ] {
        let r = server.post(path, &instances);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_close(&floats(&r.json()["predictions"]), want);
    }
    // An instance may name the input; a signature name may be given.
    let input = load(&repo, "churn", 1).metadata().inputs[0].name.clone();
    let named = json!({"signature_name": "serving_default",
                       "instances": rows().iter().map(|r| json!({input.clone(): r})).collect::<Vec<_>>()});
    let r = server.post("/v1/models/churn/versions/1:predict", &named.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_close(&floats(&r.json()["predictions"]), &v1);

    // Columnar format: one tensor, or a map by input name.
    for body in [
        json!({"inputs": rows()}),
        json!({"inputs": {input.clone(): rows()}}),
    ] {
        let r = server.post("/v1/models/churn/versions/1:predict", &body.to_string());
        assert_eq!(r.status, 200, "{}", r.body);
        let out = r.json()["outputs"].clone();
        assert_close(&floats(&out), &v1);
    }

    // Several outputs: one object per row (row format), a map (columnar).
    let iris = load(&repo, "iris", 1);
    let full = iris
        .run(&FeatureBatch::from_rows(&rows()).unwrap())
        .unwrap();
    let labels = match &full[0].data {
        OutputData::I64(v) => v.clone(),
        other => panic!("{other:?}"),
    };
    let probs = match &full[1].data {
        OutputData::F32(v) => v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let r = server.post("/v1/models/iris:predict", &instances);
    assert_eq!(r.status, 200, "{}", r.body);
    let p = r.json()["predictions"].clone();
    for (i, row) in p.as_array().unwrap().iter().enumerate() {
        assert_eq!(row[&full[0].name], labels[i], "{row}");
        assert_close(&floats(&row[&full[1].name]), &probs[i * 2..i * 2 + 2]);
    }
    let r = server.post(
        "/v1/models/iris:predict",
        &json!({"inputs": rows()}).to_string(),
    );
    let out = r.json()["outputs"].clone();
    assert_eq!(out[&full[0].name], json!(labels));
    assert_close(&floats(&out[&full[1].name]), &probs);

    // NaN tokens are accepted (a tree ensemble routes them as missing).
    let r = server.post(
        "/v1/models/churn:predict",
        "{\"instances\": [[NaN, 1, 2, 3, 4, 5, 6, Infinity]]}",
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // Status and metadata.
    let st = server.get_ok("/v1/models/churn");
    let versions: Vec<&str> = st["model_version_status"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["2", "1"]);
    assert_eq!(st["model_version_status"][0]["state"], "AVAILABLE");
    assert_eq!(st["model_version_status"][0]["status"]["error_code"], "OK");
    let st = server.get_ok("/v1/models/churn/labels/stable");
    assert_eq!(st["model_version_status"][0]["version"], "1");
    let md = server.get_ok("/v1/models/churn/versions/1/metadata");
    assert_eq!(md["model_spec"]["name"], "churn");
    assert_eq!(md["model_spec"]["version"], "1");
    let sig = &md["metadata"]["signature_def"]["signature_def"]["serving_default"];
    assert_eq!(sig["method_name"], "tensorflow/serving/predict");
    assert_eq!(sig["inputs"][&input]["dtype"], "DT_FLOAT");
    assert_eq!(
        sig["inputs"][&input]["tensor_shape"]["dim"][0]["size"],
        "-1"
    );
    assert_eq!(sig["inputs"][&input]["tensor_shape"]["dim"][1]["size"], "8");

    // Errors: TF Serving's body shape and status codes.
    let cases: Vec<(&str, &str, Option<&str>, u16, &str)> = vec![
        (
            "GET",
            "/v1/models",
            None,
            400,
            "Missing model name in request.",
        ),
        ("GET", "/v1/models/nope", None, 404, "nope"),
        ("GET", "/v1/models/churn/versions/9", None, 404, "9"),
        ("GET", "/v1/models/churn/labels/beta", None, 404, "beta"),
        (
            "GET",
            "/v1/models/churn/labels/be-ta",
            None,
            400,
            "[a-zA-Z0-9_]+",
        ),
        (
            "POST",
            "/v1/models/nope:predict",
            Some("{\"instances\": [[1]]}"),
            404,
            "nope",
        ),
        (
            "POST",
            "/v1/models/churn:predict",
            Some("{\"instances\": [[1,2"),
            400,
            "malformed JSON",
        ),
        (
            "POST",
            "/v1/models/churn:predict",
            Some("{}"),
            400,
            "Missing 'inputs' or 'instances' key",
        ),
        (
            "POST",
            "/v1/models/churn:predict",
            Some("{\"instances\": [[1]], \"inputs\": [[1]]}"),
            400,
            "not both",
        ),
        (
            "POST",
            "/v1/models/churn:predict",
            Some("{\"instances\": [[1,2,3,4,5,6,7]]}"),
            400,
            "8 numbers",
        ),
        (
            "POST",
            "/v1/models/churn:predict",
            Some("{\"instances\": [[1,2,3,4,5,6,7,8],[1]]}"),
            400,
            "ragged",
        ),
        (
            "POST",
            "/v1/models/churn:predict",
            Some("{\"instances\": [[1,2,3,4,5,6,7,\"x\"]]}"),
            400,
            "not a number",
        ),
        (
            "POST",
            "/v1/models/churn:predict",
            Some("{\"signature_name\": \"other\", \"instances\": [[1]]}"),
            400,
            "signature",
        ),
        (
            "POST",
            "/v1/models/churn:classify",
            Some("{\"instances\": [[1]]}"),
            501,
            ":predict",
        ),
        (
            "POST",
            "/v1/models/strict:predict",
            Some("{\"instances\": [[NaN,1,2,3,4,5,6,7]]}"),
            400,
            "rejects",
        ),
    ];
    for (method, path, body, status, needle) in cases {
        let r = server.request(method, path, body.map(str::as_bytes), &[]);
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        let v = r.json();
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("{path}: {v}"));
        assert!(msg.contains(needle), "{path}: {msg}");
        assert_eq!(
            v.as_object().unwrap().len(),
            1,
            "TF errors carry only 'error': {v}"
        );
    }
    assert!(server.terminate().success());
}

fn infer_body(input: &str, datatype: &str, data: Value, shape: &[usize]) -> String {
    json!({"id": "req-7", "inputs": [{"name": input, "shape": shape, "datatype": datatype, "data": data}]})
        .to_string()
}

#[test]
fn kserve_v2_rest_health_metadata_infer_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (server, repo) = start(dir.path());
    let churn1 = load(&repo, "churn", 1);
    let input = churn1.metadata().inputs[0].name.clone();
    let v1 = predict(&churn1, &rows());
    let v2 = predict(&load(&repo, "churn", 2), &rows());

    let meta = server.get_ok("/v2");
    assert_eq!(meta["name"], "tandem");
    assert!(meta["extensions"].is_array());
    assert_eq!(server.get("/v2/health/live").status, 200);
    assert_eq!(server.get("/v2/health/ready").status, 200);
    assert_eq!(server.get("/v2/models/churn/ready").status, 200);
    assert_eq!(server.get("/v2/models/churn/versions/1/ready").status, 200);
    assert_eq!(server.get("/v2/models/nope/ready").status, 404);
    assert_eq!(server.get("/v2/models/churn/versions/9/ready").status, 404);
    let md = server.get_ok("/v2/models/churn");
    assert_eq!(md["name"], "churn");
    assert_eq!(md["versions"], json!(["1", "2"]));
    assert_eq!(md["platform"], "onnx_onnxv1");
    assert_eq!(
        md["inputs"][0],
        json!({"name": input, "datatype": "FP32", "shape": [-1, 8]})
    );
    assert_eq!(md["outputs"][0]["datatype"], "FP32");
    let md = server.get_ok("/v2/models/iris/versions/1");
    assert_eq!(md["outputs"][0]["datatype"], "INT64");

    // FP32, flat data; the id is echoed.
    let flat: Vec<f32> = rows().concat();
    let r = server.post(
        "/v2/models/churn/infer",
        &infer_body(&input, "FP32", json!(flat), &[3, 8]),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["id"], "req-7");
    assert_eq!(v["model_name"], "churn");
    assert_eq!(v["model_version"], "2");
    assert_eq!(v["outputs"][0]["shape"], json!([3, 1]));
    assert_eq!(v["outputs"][0]["datatype"], "FP32");
    assert_close(&floats(&v["outputs"][0]["data"]), &v2);
    // A version; nested data; FP64 and integer inputs converted.
    let r = server.post(
        "/v2/models/churn/versions/1/infer",
        &infer_body(&input, "FP64", json!(rows()), &[3, 8]),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_close(&floats(&r.json()["outputs"][0]["data"]), &v1);
    let ints: Vec<Vec<i64>> = (0..2)
        .map(|i| (0..8).map(|f| (i * 8 + f) as i64 - 5).collect())
        .collect();
    let int_rows: Vec<Vec<f32>> = ints
        .iter()
        .map(|r| r.iter().map(|&x| x as f32).collect())
        .collect();
    let r = server.post(
        "/v2/models/churn/versions/1/infer",
        &infer_body(&input, "INT32", json!(ints), &[2, 8]),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_close(
        &floats(&r.json()["outputs"][0]["data"]),
        &predict(&churn1, &int_rows),
    );

    // Output selection on a two-output model.
    let iris_in = load(&repo, "iris", 1).metadata().inputs[0].name.clone();
    let body = json!({"inputs": [{"name": iris_in, "shape": [3, 8], "datatype": "FP32", "data": rows()}],
                      "outputs": [{"name": "output_probability"}]});
    let r = server.post("/v2/models/iris/infer", &body.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    let outs = r.json()["outputs"].as_array().unwrap().clone();
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0]["name"], "output_probability");
    assert_eq!(outs[0]["shape"], json!([3, 2]));
    assert!(r.json().get("id").is_none(), "no id sent, none echoed");

    // The binary tensor extension: JSON header, then raw little-endian data.
    let header = json!({"inputs": [{"name": input, "shape": [3, 8], "datatype": "FP32",
                                    "parameters": {"binary_data_size": flat.len() * 4}}],
                        "outputs": [{"name": "variable", "parameters": {"binary_data": true}}]})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(flat.iter().flat_map(|x| x.to_le_bytes()));
    let hl = header.len().to_string();
    let r = server.request(
        "POST",
        "/v2/models/churn/versions/1/infer",
        Some(&body),
        &[
            ("inference-header-content-length", &hl),
            ("content-type", "application/octet-stream"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let n: usize = r
        .header_len
        .as_deref()
        .expect("header length")
        .parse()
        .unwrap();
    let head: Value = serde_json::from_slice(&r.bytes[..n]).unwrap();
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 12);
    let got: Vec<f64> = r.bytes[n..]
        .chunks_exact(4)
        .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .collect();
    assert_close(&got, &v1);

    // Errors: KServe's body shape.
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/v2/models/nope/infer", infer_body(&input, "FP32", json!(flat), &[3, 8]), 404, "nope"),
        ("/v2/models/churn/versions/9/infer", infer_body(&input, "FP32", json!(flat), &[3, 8]), 404, "9"),
        ("/v2/models/churn/infer", infer_body(&input, "FP32", json!(flat), &[4, 8]), 400, "needs 32 values"),
        ("/v2/models/churn/infer", infer_body(&input, "FP32", json!(flat), &[8, 3]), 400, "does not fit"),
        ("/v2/models/churn/infer", infer_body("wrong", "FP32", json!(flat), &[3, 8]), 400, "unexpected input"),
        ("/v2/models/churn/infer", infer_body(&input, "BYTES", json!(["a"]), &[1]), 400, "not supported"),
        ("/v2/models/churn/infer", "{\"inputs\": ".into(), 400, "malformed JSON"),
        ("/v2/models/churn/infer", "{\"inputs\": []}".into(), 400, "1 input"),
        ("/v2/models/iris/infer", json!({"inputs": [{"name": iris_in, "shape": [3, 8], "datatype": "FP32", "data": rows()}], "outputs": [{"name": "nope"}]}).to_string(), 400, "unknown output"),
        ("/v2/models/strict/infer", json!({"inputs": [{"name": input, "shape": [1, 8], "datatype": "FP32", "data": ["NaN", 1, 2, 3, 4, 5, 6, 7]}]}).to_string(), 400, "rejects"),
    ];
    for (path, body, status, needle) in cases {
        let r = server.post(path, &body);
        assert_eq!(r.status, status, "{path}: {}", r.body);
        let msg = r.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: {}", r.body))
            .to_string();
        assert!(msg.contains(needle), "{path}: {msg}");
    }
    assert!(server.terminate().success());
}

#[test]
fn openapi_documents_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = start(dir.path());
    let doc = server.get_ok("/openapi.json");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/predict/{entity_id}",
        "/v1/predict",
        "/v1/models/{model}",
        "/v1/models/{model}/metadata",
        "/v1/models/{model}:predict",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{model}",
        "/v2/models/{model}/ready",
        "/v2/models/{model}/infer",
        "/v2/models/{model}/versions/{version}",
        "/v2/models/{model}/versions/{version}/ready",
        "/v2/models/{model}/versions/{version}/infer",
        "/livez",
        "/readyz",
        "/v1/stats",
        "/v1/sla",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(p), "{p} is not documented");
        // And the route exists: it does not fall through to the 404 handler.
        let concrete = p
            .replace("{entity_id}", "e1")
            .replace("{model}", "churn")
            .replace("{version}", "1");
        let r = server.get(&concrete);
        assert!(!r.body.contains("no such route"), "{concrete}: {}", r.body);
    }
    assert_eq!(server.get("/livez").status, 200);
    assert_eq!(server.get("/readyz").status, 200);
}

/// Python with `tritonclient[http]`: `TANDEM_PYTHON`, else `python3`.
fn python_with_tritonclient() -> Option<String> {
    let python = std::env::var("TANDEM_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import tritonclient.http, numpy"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}

#[test]
fn the_real_tritonclient_speaks_to_tandem() {
    let Some(python) = python_with_tritonclient() else {
        assert!(
            std::env::var_os("TANDEM_REQUIRE_TRITONCLIENT").is_none(),
            "TANDEM_REQUIRE_TRITONCLIENT is set but Python lacks tritonclient[http]"
        );
        eprintln!("skipped: Python lacks tritonclient[http] (set TANDEM_PYTHON)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (server, repo) = start(dir.path());
    let churn1 = load(&repo, "churn", 1);
    let case = json!({
        "url": server.base.trim_start_matches("http://"),
        "input": churn1.metadata().inputs[0].name,
        "rows": rows(),
        "expected_v1": predict(&churn1, &rows()),
        "expected_v2": predict(&load(&repo, "churn", 2), &rows()),
    });
    let case_file = dir.path().join("case.json");
    std::fs::write(&case_file, case.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tritonclient_check.py");
    let out = Command::new(python)
        .arg(script)
        .arg(&case_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("tritonclient: all checks passed"),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
}

/// The value of the Prometheus sample `name{labels...}` (every given
/// label present), summed over the matching lines.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let metric = series.split('{').next().unwrap_or("");
        if metric != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    found
}

#[test]
fn prometheus_metrics_count_the_traffic_by_route_source_stage_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let store = dir.path().join("t.redb");
    let csv = dir.path().join("f.csv");
    write_csv(&csv, 0..10);
    tandem_ok(&["materialize", "--input", s(&csv), "--store", s(&store)]);
    let server = Serve::start(
        &["--model", s(&repo), "--store", s(&store)],
        &[
            ("TANDEM__MODELS__DEFAULT_MODEL", "churn"),
            ("TANDEM__MODELS__LATEST_VERSIONS", "2"),
            ("TANDEM__COST__PRICE_PER_HOUR", "3.6"),
        ],
    );
    // Traffic: 2 real-time answers, 1 from memory, 1 tensor inference, 1
    // invalid request, 1 unknown model.
    assert_eq!(server.get_ok("/v1/predict/e1")["source"], "realtime");
    assert_eq!(server.get_ok("/v1/predict/e2")["source"], "realtime");
    assert_eq!(server.get_ok("/v1/predict/e1")["source"], "memory");
    let input = load(&repo, "churn", 1).metadata().inputs[0].name.clone();
    let r = server.post(
        "/v2/models/churn/infer",
        &infer_body(&input, "FP32", json!(features(3)), &[1, 8]),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(server.get("/v1/predict/e1?mode=nope").status, 400);
    assert_eq!(server.get("/v1/predict/e1?model=nope").status, 404);

    let r = server.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r.content_type.unwrap_or_default().starts_with("text/plain"));
    let m = r.body;
    let route = "/v1/predict/{entity_id}";
    let count = |name: &str, labels: &[(&str, &str)]| {
        sample(&m, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{m}"))
    };
    assert_eq!(
        count(
            "tandem_request_duration_seconds_count",
            &[("route", route), ("source", "realtime")]
        ),
        2.0
    );
    assert_eq!(
        count(
            "tandem_request_duration_seconds_count",
            &[("route", route), ("source", "memory")]
        ),
        1.0
    );
    assert_eq!(
        count(
            "tandem_request_duration_seconds_count",
            &[
                ("route", "/v2/models/{model}/infer"),
                ("source", "realtime")
            ]
        ),
        1.0
    );
    assert_eq!(
        count(
            "tandem_requests_total",
            &[("route", route), ("status", "400")]
        ),
        1.0
    );
    assert_eq!(
        count("tandem_answers_total", &[("source", "realtime")]),
        2.0
    );
    assert_eq!(count("tandem_answers_total", &[("source", "memory")]), 1.0);
    assert_eq!(
        count("tandem_errors_total", &[("reason", "invalid_input")]),
        1.0
    );
    assert_eq!(
        count("tandem_errors_total", &[("reason", "not_found")]),
        1.0
    );
    // Stages: two real-time computes and one inference ran the model.
    assert_eq!(
        count("tandem_stage_duration_seconds_count", &[("stage", "model")]),
        3.0
    );
    assert_eq!(
        count(
            "tandem_stage_duration_seconds_count",
            &[("stage", "feature_fetch")]
        ),
        2.0
    );
    assert!(
        count(
            "tandem_stage_duration_seconds_count",
            &[("stage", "lookup")]
        ) >= 3.0
    );
    assert_eq!(count("tandem_model_batch_rows_count", &[]), 3.0);
    // The cost gauge: $3.60 an hour over the recent request rate.
    let per_1k = count("tandem_cost_per_1k_predictions", &[]);
    assert!(per_1k > 0.0 && per_1k.is_finite(), "{per_1k}");
    let cost = server.get_ok("/v1/stats")["cost"].clone();
    let rps = cost["recent_rps"].as_f64().unwrap();
    let want = 3.6 / (rps * 3.6);
    assert!(
        (cost["per_1k_predictions"].as_f64().unwrap() - want).abs() < 1e-9 * want,
        "{cost}"
    );
    // The memory tier: two entries (e1, e2), their bytes, the default
    // 256 MiB budget.
    assert_eq!(count("tandem_memory_tier_entries", &[]), 2.0);
    assert!(count("tandem_memory_tier_bytes", &[]) > 2.0);
    assert_eq!(
        count("tandem_memory_tier_budget_bytes", &[]),
        (256u64 << 20) as f64
    );
    assert_eq!(
        count(
            "tandem_cache_lookups_total",
            &[("tier", "memory"), ("result", "hit")]
        ),
        1.0
    );
    assert_eq!(
        count(
            "tandem_cache_lookups_total",
            &[("tier", "store"), ("result", "miss")]
        ),
        2.0
    );
    assert_eq!(
        count(
            "tandem_prediction_age_seconds_count",
            &[("source", "memory")]
        ),
        1.0
    );
    assert_eq!(count("tandem_queue_depth", &[]), 0.0);
    assert_eq!(count("tandem_health", &[("status", "healthy")]), 1.0);
    assert_eq!(
        count(
            "tandem_model_loaded",
            &[("model", "churn"), ("version", "2")]
        ),
        1.0
    );
    // Every series the Grafana dashboard queries exists.
    let grafana = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/tandem.json"),
    )
    .unwrap();
    let dash: Value = serde_json::from_str(&grafana).unwrap();
    let mut queried = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("tandem_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    m.lines().any(|l| l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))),
                    "the Grafana panel '{}' queries {name}, which /metrics does not have",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    assert!(queried > 20, "{queried}");
    // Histograms with buckets, not summaries; no entity id in any label.
    assert!(m.contains("tandem_request_duration_seconds_bucket{"), "{m}");
    assert!(!m.contains("quantile="), "{m}");
    assert!(!m.contains("\"e1\"") && !m.contains("\"e2\""), "{m}");
}

#[test]
fn stats_and_sla_report_latency_errors_and_the_source_mix() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let store = dir.path().join("t.redb");
    let csv = dir.path().join("f.csv");
    write_csv(&csv, 0..5);
    tandem_ok(&["materialize", "--input", s(&csv), "--store", s(&store)]);
    let server = Serve::start(
        &["--model", s(&repo), "--store", s(&store)],
        &[
            ("TANDEM__SLA__P99_MS", "0.001"),
            ("TANDEM__SLA__WINDOW", "1m"),
            ("TANDEM__SERVER__WORKERS", "3"),
        ],
    );
    // An idle server meets every target.
    let sla = server.get_ok("/v1/sla");
    assert_eq!(sla["met"], true, "{sla}");
    assert_eq!(sla["requests"], 0);
    // 20 answers (5 real-time, 15 from memory), one 503 (nothing stored
    // and batch_only does not compute, no default), one 400.
    for i in 0..20 {
        server.get_ok(&format!("/v1/predict/e{}", i % 5));
    }
    assert_eq!(server.get("/v1/predict/nobody?mode=batch_only").status, 503);
    assert_eq!(server.get("/v1/predict/e1?mode=bad").status, 400);
    server.get_ok("/livez"); // not a prediction route: not counted

    let st = server.get_ok("/v1/stats");
    for period in ["since_start", "recent"] {
        let r = &st["requests"][period];
        assert_eq!(r["requests"], 22, "{period}: {st}");
        assert_eq!(r["failed"], 1, "{period}: {st}");
        assert_eq!(r["refused"], 0);
        let er = r["error_rate"].as_f64().unwrap();
        assert!((er - 1.0 / 22.0).abs() < 1e-9, "{er}");
        let (p50, p95, p99) = (
            r["p50_ms"].as_f64().unwrap(),
            r["p95_ms"].as_f64().unwrap(),
            r["p99_ms"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p95 && p95 <= p99, "{r}");
        assert!(r["throughput"].as_f64().unwrap() > 0.0, "{r}");
    }
    let mix = &st["source_mix_pct"]["since_start"];
    assert_eq!(mix["realtime"], 25.0, "{mix}");
    assert_eq!(mix["memory"], 75.0, "{mix}");
    let hit = st["hit_rate"]["memory"].as_f64().unwrap();
    assert!(
        (hit - 15.0 / 21.0).abs() < 1e-9,
        "memory hits 15 of 21 lookups: {st}"
    );
    assert_eq!(st["health"]["status"], "healthy", "{st}");
    // server.workers sets the async workers, whatever the core count.
    assert_eq!(st["threads"]["async_workers"], 3, "{st}");
    assert_eq!(st["threads"]["model"], 1, "{st}");

    let sla = server.get_ok("/v1/sla");
    assert_eq!(sla["met"], false, "{sla}");
    assert_eq!(sla["window_secs"], 60);
    let t = sla["targets"].as_array().unwrap();
    let by = |name: &str| t.iter().find(|x| x["name"] == name).unwrap().clone();
    let p99 = by("p99_latency_ms");
    assert_eq!(p99["met"], false);
    assert!(p99["margin"].as_f64().unwrap() < 0.0, "{p99}");
    let avail = by("availability");
    assert!(
        (avail["actual"].as_f64().unwrap() - 21.0 / 22.0).abs() < 1e-9,
        "{avail}"
    );
    assert_eq!(avail["met"], false);
    let err = by("error_rate");
    assert_eq!(err["met"], false);
    assert_eq!(err["target"], 0.001);
}
