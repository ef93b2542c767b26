//! Everything under `examples/` runs as its README says: the Python client
//! against the quickstart's server, the production config against a real
//! Redis, the advise file.

mod serve_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use serve_common::{Serve, fixture, s, tandem, tandem_ok};
use tandem_testing::RedisServer;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

#[test]
fn the_python_client_against_the_quickstart() {
    let python = std::env::var("TANDEM_PYTHON").unwrap_or_else(|_| "python3".into());
    if Command::new(&python).arg("--version").output().is_err() {
        assert!(
            std::env::var_os("TANDEM_REQUIRE_TRITONCLIENT").is_none(),
            "{python} does not run"
        );
        eprintln!("skipped: no Python (set TANDEM_PYTHON)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let qs = dir.path().join("qs");
    tandem_ok(&[
        "quickstart",
        "--dir",
        s(&qs),
        "--entities",
        "1000",
        "--no-serve",
    ]);
    let serve = Serve::start(&["--config", s(&qs.join("tandem.toml"))], &[]);
    let out = Command::new(&python)
        .arg(example("client.py"))
        .args([&serve.base, "churn", "user-000001"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let apis: Vec<&str> = lines.iter().map(|l| l["api"].as_str().unwrap()).collect();
    assert_eq!(apis, ["native", "kserve", "tfserving"]);
    assert_eq!(lines[0]["source"], "store");
    // And it fails loudly against nothing.
    drop(serve);
    let out = Command::new(&python)
        .arg(example("client.py"))
        .arg("http://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn the_production_config_serves_over_redis() {
    let redis = RedisServer::start();
    let model = fixture("xgboost_regressor").join("model.onnx");
    let serve = Serve::start(
        &[
            "--config",
            s(&example("serve.toml")),
            "--model",
            s(&model),
            "--store",
            &redis.url(),
        ],
        &[],
    );
    assert_eq!(serve.get("/readyz").status, 200);
    // Its SLA, cost and default answer are in force.
    let sla = serve.get_ok("/v1/sla");
    assert_eq!(sla["targets"][0]["target"], 50.0, "{sla}");
    let v = serve.get_ok("/v1/predict/nobody?mode=batch_only");
    assert_eq!(v["source"], "default", "{v}");
    assert_eq!(v["prediction"], 0.5);
    let stats = serve.get_ok("/v1/stats");
    assert_eq!(stats["cost"]["price_per_hour"], 0.34, "{}", stats["cost"]);
}

#[test]
fn the_advise_file() {
    let out = tandem(&["advise", "--file", s(&example("advise.toml")), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // 0.2 + 2 + 1 ms fits 50 ms; two runs a day are at most ~12 h old.
    assert!(["batch", "realtime", "hybrid"].contains(&v["advice"]["strategy"].as_str().unwrap()));
    assert_eq!(v["needs"]["requested_share"], 0.15);
    assert_eq!(v["advice"]["cost"]["inputs"]["entities"], 5_000_000.0);
}
