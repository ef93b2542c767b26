//! Degradation and lifecycle of the real `tandem serve` under load: a model
//! version swapped in (and a broken one refused) with no failed request,
//! Redis killed and brought back, and a model too busy for the deadline.

mod serve_common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use serve_common::*;
use tandem_testing::RedisServer;

/// Runs `threads` workers calling `work(i)` until `stop` is set; collects
/// (status, body) of every call.
fn load(
    threads: usize,
    stop: Arc<AtomicBool>,
    work: impl Fn(usize) -> Reply + Send + Sync + 'static,
) -> Vec<thread::JoinHandle<Vec<(u16, String)>>> {
    let work = Arc::new(work);
    (0..threads)
        .map(|t| {
            let stop = stop.clone();
            let work = work.clone();
            thread::spawn(move || {
                let mut seen = vec![];
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let r = work(i);
                    seen.push((r.status, r.body));
                    i += threads;
                }
                seen
            })
        })
        .collect()
}

fn join(handles: Vec<thread::JoinHandle<Vec<(u16, String)>>>) -> Vec<(u16, String)> {
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

#[test]
fn a_new_version_swaps_in_under_load_and_a_broken_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let store = dir.path().join("t.redb");
    let csv = dir.path().join("f.csv");
    write_csv(&csv, 0..100);
    tandem_ok(&["materialize", "--input", s(&csv), "--store", s(&store)]);
    let server = Arc::new(Serve::start(
        &["--model", s(&repo), "--store", s(&store)],
        &[("TANDEM__MODELS__POLL_INTERVAL", "100ms")],
    ));
    let input = tandem_model::Model::load(repo.join("churn/1/model.onnx"))
        .unwrap()
        .metadata()
        .inputs[0]
        .name
        .clone();
    let stop = Arc::new(AtomicBool::new(false));
    let versions = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let (srv, seen) = (server.clone(), versions.clone());
    let workers = load(4, stop.clone(), move |i| {
        let r = if i % 2 == 0 {
            srv.get(&format!("/v1/predict/e{}?mode=realtime_only", i % 100))
        } else {
            let body = json!({"inputs": [{"name": input, "shape": [1, 8], "datatype": "FP32",
                                          "data": features(i % 100)}]});
            srv.post("/v2/models/churn/infer", &body.to_string())
        };
        if r.status == 200 {
            let v: Value = serde_json::from_str(&r.body).unwrap();
            let version = v.get("version").map_or_else(
                || v["model_version"].as_str().unwrap().to_string(),
                Value::to_string,
            );
            *seen.lock().unwrap().entry(version).or_default() += 1;
        }
        r
    });
    thread::sleep(Duration::from_millis(500));
    add_version(&repo, "churn", 2, "lightgbm_regressor");
    server.wait_for(60, "version 2 to be served", || {
        server.get_ok("/v1/models/churn")["model_version_status"][0]["version"] == "2"
    });
    let swapped_at = versions.lock().unwrap().clone();
    thread::sleep(Duration::from_millis(500));
    // A version that does not load leaves version 2 serving.
    let broken = repo.join("churn/.incoming-3");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("model.onnx"), b"this is not an onnx file").unwrap();
    std::fs::rename(&broken, repo.join("churn/3")).unwrap();
    server.wait_for(60, "the failure of version 3 to be reported", || {
        server.get_ok("/v1/stats")["model_events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "failed" && e["model"].as_str().unwrap().contains("3"))
    });
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let results = join(workers);
    let failed: Vec<_> = results.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the swap: {:?}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(3)]
    );
    let versions = versions.lock().unwrap().clone();
    assert!(swapped_at.contains_key("1"), "{swapped_at:?}");
    assert!(
        versions["2"] > swapped_at.get("2").copied().unwrap_or(0),
        "{versions:?}"
    );
    // After the swap only version 2 answers.
    let a = server.get_ok("/v1/predict/e5?mode=realtime_only");
    assert_eq!(a["version"], 2);
    assert_eq!(
        a["prediction"].as_f64().unwrap(),
        predict(
            &tandem_model::Model::load(repo.join("churn/2/model.onnx")).unwrap(),
            &[features(5)]
        )[0]
    );
    let st = server.get_ok("/v1/models/churn");
    assert_eq!(
        st["model_version_status"].as_array().unwrap().len(),
        1,
        "{st}"
    );
    assert!(server.log().contains("failed to load"), "{}", server.log());
}

#[test]
fn redis_killed_under_load_degrades_without_errors_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let mut redis = RedisServer::start();
    let all = dir.path().join("all.csv");
    let half = dir.path().join("half.csv");
    write_csv(&all, 0..200);
    write_csv(&half, 0..100);
    let model = repo.join("churn/1/model.onnx");
    let fill = |url: &str| {
        tandem_ok(&["materialize", "--input", s(&all), "--store", url]);
        tandem_ok(&[
            "batch",
            "--model",
            s(&model),
            "--input",
            s(&half),
            "--store",
            url,
        ]);
    };
    fill(&redis.url());
    let url = format!("{}?timeout_ms=200", redis.url());
    let server = Arc::new(Serve::start(
        &["--model", s(&repo), "--store", &url],
        &[
            ("TANDEM__HYBRID__DEFAULT_PREDICTION", "0.0"),
            ("TANDEM__HYBRID__DEADLINE", "300ms"),
        ],
    ));
    // e0..e49 into the memory tier.
    for i in 0..50 {
        assert_eq!(
            server.get_ok(&format!("/v1/predict/e{i}"))["source"],
            "store"
        );
    }
    thread::sleep(Duration::from_millis(1100));
    let stop = Arc::new(AtomicBool::new(false));
    let is_down = Arc::new(AtomicBool::new(false));
    let srv = server.clone();
    let down_flag = is_down.clone();
    let workers = load(4, stop.clone(), move |i| {
        // Half the calls allow only 1 s of staleness, so that memory records
        // become stale fallbacks while Redis is down. Entities e100..e199
        // are asked for only once Redis is gone: nothing holds them then.
        let staleness = if i % 2 == 0 { "&max_staleness=1" } else { "" };
        let span = if down_flag.load(Ordering::Relaxed) {
            200
        } else {
            100
        };
        srv.get(&format!("/v1/predict/e{}?mode=hybrid{staleness}", i % span))
    });
    thread::sleep(Duration::from_millis(700));
    redis.kill();
    is_down.store(true, Ordering::Relaxed);
    let killed = Instant::now();
    thread::sleep(Duration::from_millis(300));
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.json()["reason"].as_str().unwrap().contains("redis"),
        "{}",
        ready.body
    );
    let down = server.get("/v1/predict/e199");
    thread::sleep(Duration::from_millis(2000));
    stop.store(true, Ordering::Relaxed);
    let results = join(workers);
    let down_for = killed.elapsed();

    let bad: Vec<_> = results.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        bad.is_empty(),
        "{} of {} requests failed: {:?}",
        bad.len(),
        results.len(),
        &bad[..bad.len().min(3)]
    );
    let mut sources = BTreeMap::<String, usize>::new();
    for (_, body) in &results {
        let v: Value = serde_json::from_str(body).unwrap();
        let src = v["source"].as_str().unwrap().to_string();
        if matches!(src.as_str(), "stale" | "default") {
            assert!(
                !v["warnings"].as_array().unwrap().is_empty(),
                "unflagged fallback: {v}"
            );
        }
        *sources.entry(src).or_default() += 1;
    }
    for src in ["stale", "default", "memory"] {
        assert!(
            sources.get(src).copied().unwrap_or(0) > 0,
            "no {src} answers while Redis was down {down_for:?}: {sources:?}"
        );
    }
    assert_eq!(down.status, 200, "{}", down.body);
    let down = down.json();
    assert_eq!(down["source"], "default", "{down}");
    assert!(
        down["warnings"].to_string().contains("unavailable"),
        "{down}"
    );
    let health = server.get_ok("/v1/stats")["health"]["status"].clone();
    assert_ne!(health, "healthy");

    // Redis comes back (empty: no persistence); once refilled, answers come
    // from the store and the real-time path again, and the server is ready.
    redis.restart();
    fill(&redis.url());
    server.wait_for(30, "readiness after Redis returned", || {
        server.get("/readyz").status == 200
    });
    let a = server.get_ok("/v1/predict/e120");
    assert_eq!(a["source"], "realtime", "{a}");
    let a = server.get_ok("/v1/predict/e90");
    assert!(
        matches!(a["source"].as_str(), Some("store" | "memory")),
        "{a}"
    );
}

#[test]
fn a_busy_model_falls_back_to_stale_past_the_deadline_and_refuses_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let store = dir.path().join("t.redb");
    let csv = dir.path().join("f.csv");
    write_csv(&csv, 0..10);
    tandem_ok(&["materialize", "--input", s(&csv), "--store", s(&store)]);
    let old = json!({"prediction": 0.75, "timestamp": 1.0e9, "model": "churn", "version": 1});
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let st = tandem_store::open(s(&store)).unwrap();
        let record: tandem_core::PredictionRecord = serde_json::from_value(old).unwrap();
        rt.block_on(st.put_predictions(&[tandem_store::PredictionEntry {
            entity: "e3".into(),
            record,
            ttl: Duration::from_secs(3600),
        }]))
        .unwrap();
    }
    let server = Arc::new(Serve::start(
        &["--model", s(&repo), "--store", s(&store)],
        &[
            ("TANDEM__SERVER__BODY_LIMIT_BYTES", "67108864"),
            ("TANDEM__HYBRID__INFER_DEADLINE", "10m"),
            ("TANDEM__BATCHING__MAX_ENQUEUED", "1"),
        ],
    ));
    let input = tandem_model::Model::load(repo.join("churn/1/model.onnx"))
        .unwrap()
        .metadata()
        .inputs[0]
        .name
        .clone();
    // A large binary KServe request keeps the one model thread busy.
    let rows = 400_000usize;
    let header = json!({"inputs": [{"name": input, "shape": [rows, 8], "datatype": "FP32",
                                    "parameters": {"binary_data_size": rows * 32}}],
                        "outputs": [{"name": "variable", "parameters": {"binary_data": true}}]})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend((0..rows * 8).flat_map(|i| ((i % 97) as f32 / 10.0).to_le_bytes()));
    let srv = server.clone();
    let big = thread::spawn(move || {
        let hl = header.len().to_string();
        srv.request(
            "POST",
            "/v2/models/churn/infer",
            Some(&body),
            &[("inference-header-content-length", &hl)],
        )
    });
    server.wait_for(60, "the big request to occupy the model", || {
        server.get_ok("/v1/stats")["infer_requests"]
            .as_u64()
            .unwrap()
            >= 1
    });
    thread::sleep(Duration::from_millis(50));
    let a = server.get_ok("/v1/predict/e3?mode=realtime_only&deadline_ms=20");
    // The abandoned request still holds the one queue slot until the model
    // thread is free: more work is refused with 429 and Retry-After, on
    // every protocol, unless a stale prediction can answer.
    let one = json!({"inputs": [{"name": input, "shape": [1, 8], "datatype": "FP32", "data": features(1)}]});
    let r = server.post("/v2/models/churn/infer", &one.to_string());
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    assert!(
        r.json()["error"].as_str().unwrap().contains("overloaded"),
        "{}",
        r.body
    );
    let r = server.get("/v1/predict/e4?mode=realtime_only");
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["error_type"], "overloaded");
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    let again = server.get_ok("/v1/predict/e3?mode=realtime_only");
    assert_eq!(again["source"], "stale", "{again}");
    let big = big.join().unwrap();
    assert_eq!(big.status, 200, "{}", &big.body[..big.body.len().min(300)]);
    assert_eq!(a["source"], "stale", "{a}");
    assert_eq!(a["prediction"], 0.75);
    assert!(
        a["warnings"]
            .to_string()
            .contains("deadline passed before the model answered"),
        "{a}"
    );
}

#[test]
fn a_version_that_makes_the_runtime_panic_is_refused_and_later_ones_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let store = dir.path().join("t.redb");
    let csv = dir.path().join("f.csv");
    write_csv(&csv, 0..10);
    tandem_ok(&["materialize", "--input", s(&csv), "--store", s(&store)]);
    let server = Serve::start(
        &["--model", s(&repo), "--store", s(&store)],
        &[("TANDEM__MODELS__POLL_INTERVAL", "100ms")],
    );
    // Version 2: the 8 features the sidecar names, and a graph that makes
    // tract panic while the poller prepares it.
    let incoming = repo.join("churn/.incoming-2");
    std::fs::create_dir_all(&incoming).unwrap();
    tandem_testing::write_panicking_onnx(&incoming.join("model.onnx"), 8);
    std::fs::copy(
        fixture("xgboost_regressor").join("model.toml"),
        incoming.join("model.toml"),
    )
    .unwrap();
    std::fs::rename(&incoming, repo.join("churn/2")).unwrap();
    server.wait_for(30, "the failure of version 2 to be reported", || {
        server.get_ok("/v1/stats")["model_events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| {
                e["kind"] == "failed"
                    && e.to_string().contains("panicked while preparing the graph")
            })
    });
    let a = server.get_ok("/v1/predict/e5?mode=realtime_only");
    assert_eq!(a["version"], 1, "{a}");
    // The poller is still there: version 3 loads and is served.
    add_version(&repo, "churn", 3, "lightgbm_regressor");
    server.wait_for(30, "version 3 to be served", || {
        server.get_ok("/v1/models/churn")["model_version_status"][0]["version"] == "3"
    });
    let a = server.get_ok("/v1/predict/e5?mode=realtime_only");
    assert_eq!(a["version"], 3, "{a}");
}

#[test]
fn a_model_that_panics_while_scoring_fails_that_request_and_serves_the_next() {
    // tract panics on this model's rows whose values are not 0-3
    // (tandem_testing::write_scoring_panic_onnx).
    let dir = tempfile::tempdir().unwrap();
    let version = dir.path().join("repo/lookup/1");
    std::fs::create_dir_all(&version).unwrap();
    tandem_testing::write_scoring_panic_onnx(&version.join("model.onnx"), 2);
    let store = dir.path().join("t.redb");
    let server = Serve::start(
        &["--model", s(&dir.path().join("repo")), "--store", s(&store)],
        &[],
    );
    let infer = |data: &str| {
        server.post(
            "/v2/models/lookup/infer",
            &format!(
                r#"{{"inputs":[{{"name":"x","shape":[1,2],"datatype":"FP32","data":[{data}]}}]}}"#
            ),
        )
    };
    for _ in 0..3 {
        let r = infer("9, 0");
        assert_eq!(r.status, 500, "{}", r.body);
        assert!(r.body.contains("panicked while scoring"), "{}", r.body);
        let r = infer("1, 0");
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains("[20.0,10.0]"), "{}", r.body);
    }
    let r = server.post("/v1/models/lookup:predict", r#"{"instances":[[9,0]]}"#);
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(server.get("/livez").status, 200);
}
