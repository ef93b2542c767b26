//! Activity tracking in `tandem serve` and `tandem warm`, real binary over
//! a real Redis: requests are counted in the activity log; `warm --top-k`
//! scores exactly the most active entities from their stored features;
//! afterwards the server answers them from the store (its stats say so);
//! `--entities FILE` warms a list and counts the unknown.

mod serve_common;

use serde_json::Value;
use serve_common::{Serve, churn_repo, features, predict, s, tandem, tandem_ok, write_csv};
use tandem_model::Model;
use tandem_testing::RedisServer;

fn warm_json(args: &[&str]) -> (i32, Value) {
    let mut all = vec!["warm"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = tandem(&all);
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "tandem {all:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (code, serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn serve_records_activity_and_warm_scores_the_most_active() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let model_path = repo.join("churn/1/model.onnx");
    let redis = RedisServer::start();
    let csv = dir.path().join("f.csv");
    write_csv(&csv, 0..50);
    tandem_ok(&["materialize", "--input", s(&csv), "--store", &redis.url()]);
    let serve = Serve::start(
        &["--model", s(&model_path), "--store", &redis.url()],
        &[("TANDEM__HYBRID__DEFAULT_PREDICTION", "0.5")],
    );
    // batch_only never computes: with nothing stored, the default answers,
    // and every request is counted.
    for (entity, times) in [("e1", 5), ("e2", 4), ("e3", 3), ("e4", 1), ("e5", 1)] {
        for _ in 0..times {
            let v = serve.get_ok(&format!("/v1/predict/{entity}?mode=batch_only"));
            assert_eq!(v["source"], "default", "{v}");
        }
    }
    serve.wait_for(10, "activity written", || {
        serve.get_ok("/v1/stats")["activity"]["recorded"] == 14
    });

    let (code, w) = warm_json(&[
        "--model",
        s(&model_path),
        "--store",
        &redis.url(),
        "--top-k",
        "3",
        "--lookback",
        "1h",
    ]);
    assert_eq!(code, 0, "{w}");
    assert_eq!(w["targets"], "top_k");
    assert_eq!(w["requested"], 3);
    assert_eq!(w["warmed"], 3);

    // Now the three most active are fresh store hits, with the model's own
    // predictions; the others still take the default.
    let model = Model::load(&model_path).unwrap();
    let hits_before = serve.get_ok("/v1/stats")["tiers"]["store"]["hits"]
        .as_u64()
        .unwrap();
    for i in [1usize, 2, 3] {
        let v = serve.get_ok(&format!("/v1/predict/e{i}?mode=batch_only"));
        assert_eq!(v["source"], "store", "{v}");
        let want = predict(&model, &[features(i)])[0];
        assert!(
            (v["prediction"].as_f64().unwrap() - want).abs() < 1e-6,
            "{v} vs {want}"
        );
    }
    for e in ["e4", "e5"] {
        let v = serve.get_ok(&format!("/v1/predict/{e}?mode=batch_only"));
        assert_eq!(v["source"], "default", "{v}");
    }
    let stats = serve.get_ok("/v1/stats");
    assert_eq!(
        stats["tiers"]["store"]["hits"].as_u64().unwrap() - hits_before,
        3,
        "{}",
        stats["tiers"]
    );

    // A list, with an entity that has no features.
    let list = dir.path().join("ids.txt");
    std::fs::write(&list, "e10\ne11\n\nnobody\ne12\n").unwrap();
    let (code, w) = warm_json(&[
        "--model",
        s(&model_path),
        "--store",
        &redis.url(),
        "--entities",
        s(&list),
    ]);
    assert_eq!(code, 1, "{w}");
    assert_eq!(w["requested"], 4);
    assert_eq!(w["warmed"], 3);
    assert_eq!(w["skipped"]["no_features"], 1);
    let v = serve.get_ok("/v1/predict/e11?mode=batch_only");
    assert_eq!(v["source"], "store", "{v}");
    assert!(v["warnings"].as_array().unwrap().is_empty());
}

#[test]
fn warm_refuses_what_it_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let model_path = repo.join("churn/1/model.onnx");
    let store = dir.path().join("t.redb");
    for (args, says) in [
        (
            vec!["warm", "--model", s(&model_path), "--store", s(&store)],
            "--top-k",
        ),
        (
            vec![
                "warm",
                "--model",
                s(&model_path),
                "--store",
                s(&store),
                "--top-k",
                "0",
            ],
            "--top-k",
        ),
        (
            vec![
                "warm",
                "--model",
                "/nonexistent.onnx",
                "--store",
                s(&store),
                "--top-k",
                "5",
            ],
            "nonexistent",
        ),
        (
            vec![
                "warm",
                "--model",
                s(&model_path),
                "--store",
                "redis://127.0.0.1:1",
                "--top-k",
                "5",
            ],
            "store",
        ),
    ] {
        let out = tandem(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // Nothing active: nothing to warm, and that is not an error.
    let (code, w) = warm_json(&[
        "--model",
        s(&model_path),
        "--store",
        s(&store),
        "--top-k",
        "5",
    ]);
    assert_eq!(code, 0);
    assert_eq!(w["requested"], 0);
}
