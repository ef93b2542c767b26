//! The real `tandem serve` over HTTP against a real Redis (started here):
//! every source of the hybrid chain, the native API's requests and errors,
//! write-back of real-time predictions, and shutdown that drains writes.

mod serve_common;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use serve_common::*;
use tandem_model::Model;
use tandem_testing::RedisServer;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Redis with features of e0..e99 (materialized) and batch predictions of
/// e0..e49 (scored by `tandem batch`), both through the real binary.
fn loaded_redis(dir: &std::path::Path, repo: &std::path::Path) -> RedisServer {
    let redis = RedisServer::start();
    let all = dir.join("all.csv");
    let half = dir.join("half.csv");
    write_csv(&all, 0..100);
    write_csv(&half, 0..50);
    tandem_ok(&["materialize", "--input", s(&all), "--store", &redis.url()]);
    let model = repo.join("churn/1/model.onnx");
    tandem_ok(&[
        "batch",
        "--model",
        s(&model),
        "--input",
        s(&half),
        "--store",
        &redis.url(),
    ]);
    redis
}

/// The value of a RESP bulk-string reply (`None` for a nil reply).
fn bulk(reply: &str) -> Option<String> {
    let (head, rest) = reply.split_once("\r\n")?;
    if head == "$-1" {
        return None;
    }
    Some(rest.trim_end_matches("\r\n").to_string())
}

/// The number of a RESP integer reply.
fn int(reply: &str) -> i64 {
    reply
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap_or_else(|_| panic!("not an integer reply: {reply:?}"))
}

fn source(v: &Value) -> &str {
    v["source"]
        .as_str()
        .unwrap_or_else(|| panic!("no source in {v}"))
}

#[test]
fn every_source_of_the_fallback_chain_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let redis = loaded_redis(dir.path(), &repo);
    let model = Model::load(repo.join("churn/1/model.onnx")).unwrap();
    // A stale batch record for e70 (whose features are then deleted) and
    // for e71 (features kept).
    for id in ["e70", "e71"] {
        let old = json!({"prediction": 0.125, "timestamp": now() - 7200.0, "model": "churn",
                         "version": 1, "source": "batch"});
        redis.command(&["SET", &format!("pred:{id}"), &old.to_string()]);
    }
    redis.command(&["DEL", "features:e70"]);

    let server = Serve::start(
        &["--model", s(&repo), "--store", &redis.url()],
        &[
            ("TANDEM__HYBRID__DEFAULT_PREDICTION", "-1.5"),
            ("TANDEM__HYBRID__DEADLINE", "2s"),
        ],
    );

    // Batch prediction: from the store, then from memory; the value is the
    // model's on e1's features.
    let want = predict(&model, &[features(1), features(60), features(71)]);
    let a = server.get_ok("/v1/predict/e1");
    assert_eq!(source(&a), "store", "{a}");
    assert_eq!(a["prediction"].as_f64().unwrap(), want[0]);
    assert_eq!(a["model"], "churn");
    assert_eq!(a["version"], 1);
    assert!(a["warnings"].as_array().unwrap().is_empty());
    assert!(a["age_ms"].as_u64().unwrap() < 600_000);
    let a = server.get_ok("/v1/predict/e1");
    assert_eq!(source(&a), "memory", "{a}");
    assert_eq!(a["prediction"].as_f64().unwrap(), want[0]);

    // No prediction, features stored: computed in real time, written back.
    let a = server.get_ok("/v1/predict/e60");
    assert_eq!(source(&a), "realtime", "{a}");
    assert_eq!(a["prediction"].as_f64().unwrap(), want[1]);
    assert_eq!(a["age_ms"], 0);
    server.wait_for(10, "write-back of e60", || {
        int(&redis.command(&["EXISTS", "pred:e60"])) == 1
    });
    let stored: Value =
        serde_json::from_str(&bulk(&redis.command(&["GET", "pred:e60"])).unwrap()).unwrap();
    assert_eq!(stored["source"], "realtime");
    assert_eq!(stored["prediction"].as_f64().unwrap(), want[1]);
    let ttl = int(&redis.command(&["TTL", "pred:e60"]));
    assert!(
        (3000..=3600).contains(&ttl),
        "real-time TTL is 1h, got {ttl}"
    );
    assert_eq!(source(&server.get_ok("/v1/predict/e60")), "memory");

    // A stale record and no features: the stale record, flagged.
    let a = server.get_ok("/v1/predict/e70");
    assert_eq!(source(&a), "stale", "{a}");
    assert_eq!(a["prediction"], 0.125);
    assert!(a["age_ms"].as_u64().unwrap() >= 7_200_000);
    let w = a["warnings"].to_string();
    assert!(
        w.contains("stale") && w.contains("no stored features"),
        "{w}"
    );

    // A stale record but features: hybrid recomputes...
    let a = server.get_ok("/v1/predict/e71");
    assert_eq!(source(&a), "realtime", "{a}");
    assert_eq!(a["prediction"].as_f64().unwrap(), want[2]);
    // ... and with a generous staleness bound the old record is fresh.
    redis.command(&[
        "SET",
        "pred:e72",
        &json!({"prediction": 0.5, "timestamp": now() - 7200.0}).to_string(),
    ]);
    let a = server.get_ok("/v1/predict/e72?max_staleness=3h");
    assert_eq!(source(&a), "store", "{a}");
    assert_eq!(
        a["model"], "churn",
        "a reference-design record is the served model's"
    );

    // A deadline of zero cannot compute: the stale record answers.
    redis.command(&[
        "SET",
        "pred:e73",
        &json!({"prediction": 0.25, "timestamp": now() - 7200.0}).to_string(),
    ]);
    let a = server.get_ok("/v1/predict/e73?deadline_ms=0");
    assert_eq!(source(&a), "stale", "{a}");
    assert!(a["warnings"].to_string().contains("deadline"), "{a}");

    // batch_only never computes: e61 has features but no prediction.
    let a = server.get_ok("/v1/predict/e61?mode=batch_only");
    assert_eq!(source(&a), "default", "{a}");
    assert_eq!(a["prediction"], -1.5);
    assert_eq!(int(&redis.command(&["EXISTS", "pred:e61"])), 0);

    // realtime_only computes even when a fresh batch prediction exists.
    let a = server.get_ok("/v1/predict/e2?mode=realtime_only");
    assert_eq!(source(&a), "realtime", "{a}");
    assert_eq!(
        a["prediction"].as_f64().unwrap(),
        predict(&model, &[features(2)])[0]
    );

    // Nothing known about the entity: 404 in the native error shape.
    let r = server.get("/v1/predict/ghost");
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error_type"], "unknown_entity");

    // Many entities, with context: context overrides stored features and
    // makes an unknown entity computable; per-entity errors stay per entity.
    let ctx: serde_json::Map<String, Value> = (0..WIDTH)
        .map(|f| (format!("f{f}"), json!(value(500, f))))
        .collect();
    let body = json!({"entities": ["e3", {"entity_id": "new", "context": ctx}, "ghost", {"entity_id": "e4", "context": {"f0": 4.5}}]});
    let r = server.post("/v1/predict", &body.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    let p = r.json()["predictions"].as_array().unwrap().clone();
    assert_eq!(p.len(), 4);
    assert_eq!(p[0]["entity_id"], "e3");
    assert!(matches!(source(&p[0]), "store" | "memory"));
    assert_eq!(source(&p[1]), "realtime");
    assert_eq!(
        p[1]["prediction"].as_f64().unwrap(),
        predict(&model, &[features(500)])[0]
    );
    assert_eq!(p[2]["error_type"], "unknown_entity");
    // e4 has a fresh batch prediction, which answers (context does not
    // force a recompute in hybrid mode).
    assert!(matches!(source(&p[3]), "store" | "memory"), "{}", p[3]);
    let mut e4 = features(4);
    e4[0] = 4.5;
    let r = server.post(
        "/v1/predict",
        &json!({"mode": "realtime_only", "entities": [{"entity_id": "e4", "context": {"f0": 4.5}}]}).to_string(),
    );
    let p = &r.json()["predictions"][0];
    assert_eq!(source(p), "realtime");
    assert_eq!(p["prediction"].as_f64().unwrap(), predict(&model, &[e4])[0]);

    // Missing features take the default and say so.
    redis.command(&["SET", "features:e90", r#"{"f0": 1.0, "f1": 2.0}"#]);
    let a = server.get_ok("/v1/predict/e90?mode=realtime_only");
    assert!(
        a["warnings"].to_string().contains("6 feature(s) missing"),
        "{a}"
    );
    let mut row = vec![0.0f32; WIDTH];
    row[0] = 1.0;
    row[1] = 2.0;
    assert_eq!(
        a["prediction"].as_f64().unwrap(),
        predict(&model, &[row])[0]
    );

    // The stats count every source.
    let st = server.get_ok("/v1/stats");
    for src in ["memory", "store", "realtime", "stale", "default"] {
        assert!(st["answers"][src].as_u64().unwrap() >= 1, "{src}: {st}");
    }
    assert!(st["tiers"]["store"]["hits"].as_u64().unwrap() >= 2, "{st}");
    assert!(st["defaults_filled"].as_u64().unwrap() >= 6, "{st}");
    // 3 fallbacks (2 stale, 1 default) out of 15 answers: 20%, degraded.
    assert_eq!(st["answers"]["stale"], 2, "{st}");
    assert_eq!(st["answers"]["default"], 1, "{st}");
    assert_eq!(st["health"]["status"], "degraded", "{st}");
    assert!(
        st["health"]["reason"].as_str().unwrap().contains("20.0%"),
        "{st}"
    );

    // SIGTERM: exits 0.
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn native_api_rejects_bad_requests_with_4xx_json() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    // A model without feature names cannot serve entities.
    std::fs::create_dir_all(repo.join("nameless/1")).unwrap();
    std::fs::copy(
        fixture("xgboost_regressor").join("model.onnx"),
        repo.join("nameless/1/model.onnx"),
    )
    .unwrap();
    let store = dir.path().join("t.redb");
    let server = Serve::start(
        &["--model", s(&repo), "--store", s(&store)],
        &[
            ("TANDEM__HYBRID__MAX_ENTITIES", "3"),
            ("TANDEM__SERVER__BODY_LIMIT_BYTES", "2048"),
            ("TANDEM__MODELS__DEFAULT_MODEL", "churn"),
        ],
    );
    let cases: Vec<(&str, &str, Option<String>, u16, &str)> = vec![
        ("GET", "/v1/predict/e1?mode=fast", None, 400, "mode 'fast'"),
        (
            "GET",
            "/v1/predict/e1?max_staleness=soon",
            None,
            400,
            "max_staleness",
        ),
        (
            "GET",
            "/v1/predict/e1?deadline_ms=-4",
            None,
            400,
            "deadline_ms",
        ),
        ("GET", "/v1/predict/e1?colour=red", None, 400, "colour"),
        (
            "GET",
            "/v1/predict/e1?model=nope",
            None,
            404,
            "unknown model",
        ),
        ("GET", "/v1/predict/e1?version=7", None, 404, "version 7"),
        ("GET", "/v1/predict/e1?label=canary", None, 404, "canary"),
        (
            "GET",
            "/v1/predict/e1?version=1&label=x",
            None,
            400,
            "not both",
        ),
        (
            "POST",
            "/v1/predict",
            Some("{\"entities\": [".into()),
            400,
            "invalid request body",
        ),
        (
            "POST",
            "/v1/predict",
            Some("[1,2]".into()),
            400,
            "invalid request body",
        ),
        (
            "POST",
            "/v1/predict",
            Some(r#"{"entities": []}"#.into()),
            400,
            "no entities",
        ),
        (
            "POST",
            "/v1/predict",
            Some(r#"{"entities": ["a","b","c","d"]}"#.into()),
            400,
            "limit is 3",
        ),
        (
            "POST",
            "/v1/predict",
            Some(r#"{"entities": [""]}"#.into()),
            400,
            "1 to 512 bytes",
        ),
        (
            "POST",
            "/v1/predict",
            Some(r#"{"entities": [{"entity_id": "a", "context": {"f0": "x"}}]}"#.into()),
            400,
            "not a number",
        ),
        (
            "POST",
            "/v1/predict",
            Some(r#"{"entities": ["a"], "max_staleness": -3}"#.into()),
            400,
            "max_staleness",
        ),
        (
            "POST",
            "/v1/predict",
            Some(r#"{"entities": ["a"], "extra": 1}"#.into()),
            400,
            "extra",
        ),
        (
            "POST",
            "/v1/predict",
            Some(format!("{{\"entities\": [\"{}\"]}}", "x".repeat(4000))),
            413,
            "",
        ),
        ("GET", "/v1/nowhere", None, 404, "no such route"),
        (
            "GET",
            "/v1/predict/e1?model=nameless",
            None,
            400,
            "no feature names",
        ),
    ];
    for (method, path, body, status, needle) in cases {
        let r = server.request(
            method,
            path,
            body.as_deref().map(str::as_bytes),
            &[("content-type", "application/json")],
        );
        assert_eq!(r.status, status, "{method} {path} {body:?}: {}", r.body);
        if status != 413 {
            let v = r.json();
            let msg = v["error"]
                .as_str()
                .unwrap_or_else(|| panic!("no error in {v}"));
            assert!(msg.contains(needle), "{method} {path}: {msg}");
            assert!(v["error_type"].is_string(), "{v}");
        }
    }
    // Nothing went wrong inside: the server still answers.
    assert_eq!(server.get("/livez").status, 200);
    assert!(server.terminate().success());
}

#[test]
fn sigterm_drains_pending_store_writes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let store = dir.path().join("t.redb");
    let csv = dir.path().join("f.csv");
    write_csv(&csv, 0..200);
    tandem_ok(&["materialize", "--input", s(&csv), "--store", s(&store)]);
    let server = Serve::start(&["--model", s(&repo), "--store", s(&store)], &[]);
    let ids: Vec<String> = (0..200).map(|i| format!("e{i}")).collect();
    for chunk in ids.chunks(100) {
        let r = server.post("/v1/predict", &json!({"entities": chunk}).to_string());
        assert_eq!(r.status, 200, "{}", r.body);
        for p in r.json()["predictions"].as_array().unwrap() {
            assert_eq!(p["source"], "realtime", "{p}");
        }
    }
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    // Every computed prediction reached the store before the exit.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let st = tandem_store::open(s(&store)).unwrap();
    let got = rt.block_on(st.get_predictions(&ids)).unwrap();
    let missing = got.iter().filter(|r| r.is_err()).count();
    assert_eq!(
        missing, 0,
        "{missing} real-time predictions were lost at shutdown"
    );
    assert!(
        got.iter()
            .all(|r| r.as_ref().unwrap().source == tandem_core::PredictionSource::Realtime)
    );
}

#[test]
fn features_can_live_in_their_own_store_which_readiness_checks() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let model = Model::load(repo.join("churn/1/model.onnx")).unwrap();
    let mut redis = RedisServer::start();
    let csv = dir.path().join("f.csv");
    write_csv(&csv, 0..10);
    tandem_ok(&["materialize", "--input", s(&csv), "--store", &redis.url()]);
    let store = dir.path().join("predictions.redb");
    let server = Serve::start(
        &[
            "--model",
            s(&repo),
            "--store",
            s(&store),
            "--feature-store",
            &format!("{}?timeout_ms=300", redis.url()),
        ],
        &[],
    );
    let a = server.get_ok("/v1/predict/e3");
    assert_eq!(source(&a), "realtime", "{a}");
    assert_eq!(
        a["prediction"].as_f64().unwrap(),
        predict(&model, &[features(3)])[0]
    );
    assert_eq!(server.get("/readyz").status, 200);
    redis.kill();
    let r = server.get("/readyz");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.json()["reason"]
            .as_str()
            .unwrap()
            .contains("feature store"),
        "{}",
        r.body
    );
    // The prediction written back to the embedded store still answers.
    assert!(matches!(
        source(&server.get_ok("/v1/predict/e3")),
        "memory" | "store"
    ));
}

#[test]
fn request_ids_are_echoed_and_carried_by_json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let store = dir.path().join("t.redb");
    let server = Serve::start(
        &[
            "--model",
            s(&repo),
            "--store",
            s(&store),
            "--log-format",
            "json",
        ],
        &[("TANDEM_LOG", "info,tandem_server=debug")],
    );
    let r = server.request(
        "GET",
        "/v1/predict/nobody",
        None,
        &[("x-request-id", "req-abc-123")],
    );
    assert_eq!(r.status, 404);
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let agent = ureq::agent();
            let resp = agent.get(&format!("{}/livez", server.base)).call().unwrap();
            resp.header("x-request-id").unwrap().to_string()
        })
        .collect();
    assert_ne!(ids[0], ids[1], "each request gets its own id");
    server.wait_for(10, "the request's log line", || {
        server.log().contains("req-abc-123")
    });
    let line = server
        .log()
        .lines()
        .find(|l| l.contains("req-abc-123"))
        .unwrap()
        .to_string();
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["span"]["request_id"], "req-abc-123", "{v}");
    assert_eq!(v["span"]["route"], "/v1/predict/{entity_id}", "{v}");
    assert_eq!(v["fields"]["status"], 404, "{v}");
}

/// `GET /v1/predict/{id}` and KServe infer are answered in front of the
/// router when the path needs no decoding (`tandem_server::front`), and by
/// the router when it does: both must answer alike, errors included, and
/// count alike.
#[test]
fn entity_route_answers_alike_in_front_of_the_router_and_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let redis = loaded_redis(dir.path(), &repo);
    let server = Serve::start(&["--model", s(&repo), "--store", &redis.url()], &[]);
    // "%65" decodes to "e": the same entities, through the router.
    let cases = [
        ("e1", "%651", ""),
        ("e70", "%6570", "?mode=realtime_only"),
        ("e2", "%652", "?mode=batch_only&max_staleness=1h"),
        ("e3", "%653", "?mode=fast"),
        ("e4", "%654", "?colour=red"),
        ("e5", "%655", "?model=nope"),
        ("e99999", "%6599999", "?mode=batch_only"),
    ];
    let mut ok = 0;
    for (plain, encoded, query) in cases {
        let front = server.get(&format!("/v1/predict/{plain}{query}"));
        let routed = server.get(&format!("/v1/predict/{encoded}{query}"));
        assert_eq!(
            front.status, routed.status,
            "{plain}{query}: {} / {}",
            front.body, routed.body
        );
        let (mut f, mut r) = (front.json(), routed.json());
        if front.status == 200 {
            ok += 2;
            assert_eq!(f["entity_id"], plain, "{f}");
            // The second answer may come from memory, and later.
            for v in [&mut f, &mut r] {
                let o = v.as_object_mut().unwrap();
                for k in ["age_ms", "computed_at", "source"] {
                    o.remove(k);
                }
            }
        }
        assert_eq!(f, r, "{plain}{query}");
    }
    assert!(ok >= 6, "{ok} answers were 200");
    // KServe infer: "%63" decodes to "c".
    let meta = server.get_ok("/v2/models/churn");
    let input = meta["inputs"][0]["name"].as_str().unwrap().to_string();
    let rows: Vec<f32> = (0..3).flat_map(features).collect();
    let bodies = [
        json!({"id": "q1", "inputs": [{"name": input, "shape": [3, 8], "datatype": "FP32", "data": rows}]}).to_string(),
        json!({"inputs": [{"name": input, "shape": [1, 8], "datatype": "FP64", "data": [rows[..8]]}], "outputs": [{"name": "nope"}]}).to_string(),
        json!({"inputs": [{"name": "wrong", "shape": [1, 8], "datatype": "FP32", "data": &rows[..8]}]}).to_string(),
        "{\"inputs\": ".to_string(),
    ];
    let mut inferred = 0;
    for body in &bodies {
        let front = server.post("/v2/models/churn/infer", body);
        let routed = server.post("/v2/models/%63hurn/infer", body);
        assert_eq!(
            (front.status, &front.body),
            (routed.status, &routed.body),
            "{body}"
        );
        inferred += usize::from(front.status == 200) * 2;
    }
    assert_eq!(inferred, 2);
    let metrics = server.get("/metrics").body;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("tandem_requests_total{")
                && l.contains(r#"route="/v1/predict/{entity_id}""#)
                && l.contains(r#"status="200""#)
        })
        .unwrap_or_else(|| panic!("no 200 count of the entity route in\n{metrics}"));
    assert_eq!(
        line.rsplit(' ').next(),
        Some(ok.to_string().as_str()),
        "{line}"
    );
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("tandem_requests_total{")
                && l.contains(r#"route="/v2/models/{model}/infer""#)
                && l.contains(r#"status="400""#)
        })
        .unwrap_or_else(|| panic!("no 400 count of the infer route in\n{metrics}"));
    assert_eq!(line.rsplit(' ').next(), Some("6"), "{line}");
}

/// The stored record of an entity's prediction.
fn stored(redis: &RedisServer, id: &str) -> Option<Value> {
    bulk(&redis.command(&["GET", &format!("pred:{id}")])).map(|b| serde_json::from_str(&b).unwrap())
}

#[test]
fn a_prediction_recomputed_unchanged_is_not_rewritten_until_the_interval_passes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let redis = loaded_redis(dir.path(), &repo);
    let server = Serve::start(
        &["--model", s(&repo), "--store", &redis.url()],
        &[("TANDEM__STORE__REWRITE_UNCHANGED_AFTER", "1h")],
    );
    let settled = |server: &Serve| {
        server.wait_for(10, "write-back queue empty", || {
            server.get_ok("/v1/stats")["writes"]["pending"] == 0
        })
    };

    let first = server.get_ok("/v1/predict/e60?mode=realtime_only");
    assert_eq!(source(&first), "realtime", "{first}");
    server.wait_for(10, "write-back of e60", || stored(&redis, "e60").is_some());
    let written = stored(&redis, "e60").unwrap();
    assert_eq!(written["timestamp"], first["computed_at"]);

    // The same features again: computed (the answer is new), not rewritten.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = server.get_ok("/v1/predict/e60?mode=realtime_only");
    assert_eq!(source(&again), "realtime", "{again}");
    assert_eq!(again["prediction"], first["prediction"]);
    assert!(again["computed_at"].as_f64() > first["computed_at"].as_f64());
    settled(&server);
    assert_eq!(stored(&redis, "e60").unwrap(), written);
    assert_eq!(server.get_ok("/v1/stats")["writes"]["unchanged"], 1);

    // Changed features: a new input digest, written at once.
    let mut row: serde_json::Map<String, Value> = (0..WIDTH)
        .map(|f| (format!("f{f}"), json!(value(60, f))))
        .collect();
    row.insert("f0".into(), json!(value(60, 0) + 1.0));
    redis.command(&["SET", "features:e60", &Value::Object(row).to_string()]);
    let changed = server.get_ok("/v1/predict/e60?mode=realtime_only");
    server.wait_for(10, "rewrite of e60", || {
        stored(&redis, "e60").unwrap()["timestamp"] == changed["computed_at"]
    });
    assert_ne!(stored(&redis, "e60").unwrap()["digest"], written["digest"]);
    assert_eq!(server.get_ok("/v1/stats")["writes"]["unchanged"], 1);
    assert!(server.terminate().success());

    // With the interval at zero every computed prediction is written.
    let server = Serve::start(
        &["--model", s(&repo), "--store", &redis.url()],
        &[("TANDEM__STORE__REWRITE_UNCHANGED_AFTER", "0s")],
    );
    for _ in 0..2 {
        let a = server.get_ok("/v1/predict/e61?mode=realtime_only");
        server.wait_for(10, "write-back of e61", || {
            stored(&redis, "e61").is_some_and(|r| r["timestamp"] == a["computed_at"])
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    settled(&server);
    assert_eq!(server.get_ok("/v1/stats")["writes"]["unchanged"], 0);
    assert!(server.terminate().success());
}

/// Writes e0..e(n-1) with the features of [`features`] as Parquet FLOAT
/// (f32) or DOUBLE columns.
fn write_parquet(path: &std::path::Path, n: usize, float32: bool) {
    use datafusion::arrow::array::{
        ArrayRef, Float32Array, Float64Array, RecordBatch, StringArray,
    };
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let kind = if float32 {
        DataType::Float32
    } else {
        DataType::Float64
    };
    let mut fields = vec![Field::new("entity_id", DataType::Utf8, false)];
    fields.extend((0..WIDTH).map(|f| Field::new(format!("f{f}"), kind.clone(), false)));
    let schema = Arc::new(Schema::new(fields));
    let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(
        (0..n).map(|i| format!("e{i}")),
    ))];
    for f in 0..WIDTH {
        let v = |i: usize| features(i)[f];
        cols.push(if float32 {
            Arc::new(Float32Array::from_iter_values((0..n).map(v)))
        } else {
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| f64::from(v(i))),
            ))
        });
    }
    let file = std::fs::File::create(path).unwrap();
    let mut w =
        datafusion::parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None).unwrap();
    w.write(&RecordBatch::try_new(schema, cols).unwrap())
        .unwrap();
    w.close().unwrap();
}

#[test]
fn float_columns_are_stored_short_and_computed_on_as_the_same_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let model = Model::load(repo.join("churn/1/model.onnx")).unwrap();
    let redis = RedisServer::start();
    // The same f32 values as FLOAT columns and, widened, as DOUBLE ones,
    // each under its own namespace.
    let mut urls = Vec::new();
    for (name, float32) in [("float", true), ("double", false)] {
        let file = dir.path().join(format!("{name}.parquet"));
        write_parquet(&file, 20, float32);
        let url = format!("{}?namespace={name}:", redis.url());
        tandem_ok(&["materialize", "--input", s(&file), "--store", &url]);
        urls.push(url);
    }
    let short = bulk(&redis.command(&["GET", "float:features:e7"])).unwrap();
    let long = bulk(&redis.command(&["GET", "double:features:e7"])).unwrap();
    let f = features(7);
    // Rust prints an f32 as its shortest decimal too.
    assert!(short.contains(&format!("\"f1\":{}", f[1])), "{short}");
    assert!(
        long.contains(&format!("\"f1\":{}", f64::from(f[1]))),
        "{long}"
    );
    assert!(short.len() < long.len(), "{short} / {long}");
    let short: std::collections::BTreeMap<String, f64> = serde_json::from_str(&short).unwrap();
    let long: std::collections::BTreeMap<String, f64> = serde_json::from_str(&long).unwrap();
    for (k, v) in &short {
        assert_eq!(*v as f32, long[k] as f32, "{k}");
    }

    // Real time from either store: the model's prediction on the f32 row.
    let want = predict(&model, &[features(7)])[0];
    for url in &urls {
        let server = Serve::start(&["--model", s(&repo), "--store", url], &[]);
        let a = server.get_ok("/v1/predict/e7?mode=realtime_only");
        assert_eq!(source(&a), "realtime", "{a}");
        assert_eq!(a["prediction"].as_f64().unwrap(), want, "{url}");
        assert!(a["warnings"].as_array().unwrap().is_empty(), "{a}");
        assert!(server.terminate().success());
    }
}

#[test]
fn a_batch_rerun_is_served_at_once_and_memory_keeps_what_did_not_change() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let redis = loaded_redis(dir.path(), &repo);
    let server = Serve::start(
        &["--model", s(&repo), "--store", &redis.url()],
        &[("TANDEM__MEMORY__MAX_TTL", "1s")],
    );
    server.wait_for(10, "the store reporting changes", || {
        server
            .get("/metrics")
            .body
            .contains("tandem_memory_tier_tracking 1")
    });
    let first = server.get_ok("/v1/predict/e3");
    assert_eq!(source(&first), "store", "{first}");
    // Past memory.max_ttl: still memory, as nothing changed in the store.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let kept = server.get_ok("/v1/predict/e3");
    assert_eq!(source(&kept), "memory", "{kept}");
    assert_eq!(kept["prediction"], first["prediction"]);

    // Another process writes a new prediction for e3 (a batch rerun with
    // a new model): the next answers carry it, not the one in memory.
    let newer = json!({"prediction": 0.875, "timestamp": now(), "model": "churn",
                       "version": 1, "source": "batch"});
    redis.command(&["SET", "pred:e3", &newer.to_string()]);
    server.wait_for(5, "the new prediction served", || {
        server.get_ok("/v1/predict/e3")["prediction"] == 0.875
    });
    let again = server.get_ok("/v1/predict/e3");
    assert_eq!(source(&again), "memory", "{again}");
    assert_eq!(again["prediction"], 0.875);
    let m = server.get("/metrics").body;
    let reported = m
        .lines()
        .find_map(|l| l.strip_prefix("tandem_memory_tier_changes_reported_total "))
        .unwrap_or_else(|| panic!("no changes counted in\n{m}"));
    assert!(reported.trim().parse::<f64>().unwrap() >= 1.0, "{reported}");
}

#[test]
fn a_replica_that_starts_preloads_its_most_active_entities_into_memory() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let redis = loaded_redis(dir.path(), &repo);
    // A first replica's requests make e1, e2 and e3 the most active.
    let first = Serve::start(&["--model", s(&repo), "--store", &redis.url()], &[]);
    for (id, n) in [("e1", 5), ("e2", 4), ("e3", 3), ("e40", 1)] {
        for _ in 0..n {
            first.get_ok(&format!("/v1/predict/{id}"));
        }
    }
    assert!(first.terminate().success());

    // The next replica loads their predictions before it listens.
    let second = Serve::start(
        &["--model", s(&repo), "--store", &redis.url()],
        &[
            ("TANDEM__MEMORY__PRELOAD", "3"),
            ("TANDEM__MEMORY__MAX_TTL", "1s"),
        ],
    );
    // Past memory.max_ttl: preloaded while the store reports changes, so
    // kept until they change.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    for id in ["e1", "e2", "e3"] {
        let a = second.get_ok(&format!("/v1/predict/{id}"));
        assert_eq!(source(&a), "memory", "{id}: {a}");
    }
    let a = second.get_ok("/v1/predict/e40");
    assert_eq!(source(&a), "store", "e40 was not among the 3: {a}");
    assert!(
        second.log().contains("memory preloaded"),
        "{}",
        second.log()
    );
}
