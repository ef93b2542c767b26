//! Serving replicas: two `tandem serve` processes share one 3-node Redis
//! Cluster (all started here). A batch prediction written once is served by
//! both, a real-time prediction computed by one is a store hit on the
//! other, activity is counted once per request, and losing one replica
//! under load fails no request at the other.

mod serve_common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serve_common::*;
use tandem_model::Model;
use tandem_testing::RedisCluster;

#[test]
fn two_replicas_share_one_redis_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let model_path = repo.join("churn/1/model.onnx");
    let model = Model::load(&model_path).unwrap();
    let cluster = RedisCluster::start(3);
    let url = cluster.url();

    // Features for e0..e199 in the cluster; batch predictions for e0..e99.
    let all = dir.path().join("all.csv");
    write_csv(&all, 0..200);
    tandem_ok(&["materialize", "--input", s(&all), "--store", &url]);
    let batch = dir.path().join("batch.csv");
    write_csv(&batch, 0..100);
    tandem_ok(&[
        "batch",
        "--model",
        s(&model_path),
        "--input",
        s(&batch),
        "--store",
        &url,
    ]);

    let a = Serve::start(&["--model", s(&repo), "--store", &url], &[]);
    let b = Serve::start(&["--model", s(&repo), "--store", &url], &[]);
    let mut asked: BTreeMap<String, u64> = BTreeMap::new();
    let mut ask = |server: &Serve, id: &str| {
        *asked.entry(id.to_owned()).or_default() += 1;
        server.get_ok(&format!("/v1/predict/{id}?model=churn"))
    };

    // A batch prediction written once is served by both.
    let want = predict(&model, &[features(5)])[0];
    for server in [&a, &b] {
        let v = ask(server, "e5");
        assert_eq!(v["source"], "store", "{v}");
        assert!(
            (v["prediction"].as_f64().unwrap() - want).abs() < 1e-6,
            "{v}"
        );
    }

    // Computed in real time by A, then a store hit on B with A's record.
    let first = ask(&a, "e150");
    assert_eq!(first["source"], "realtime", "{first}");
    let store = tandem_store::open(&url).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    a.wait_for(10, "A's write-back", || {
        rt.block_on(store.get_predictions(&["e150".to_owned()]))
            .unwrap()
            .remove(0)
            .is_ok()
    });
    let second = ask(&b, "e150");
    assert_eq!(second["source"], "store", "{second}");
    assert_eq!(second["prediction"], first["prediction"]);
    assert_eq!(second["computed_at"], first["computed_at"]);

    // Activity: each request counted once, whichever replica took it.
    for _ in 0..3 {
        ask(&a, "e10");
    }
    for _ in 0..2 {
        ask(&b, "e10");
    }
    ask(&b, "e11");
    let total: u64 = asked.values().sum();
    let recorded = |s: &Serve| {
        s.get_ok("/v1/stats")["activity"]["recorded"]
            .as_u64()
            .unwrap()
    };
    a.wait_for(10, "activity written by both", || {
        recorded(&a) + recorded(&b) == total
    });
    let top = rt
        .block_on(store.top_active(100, Duration::from_secs(3600), SystemTime::now()))
        .unwrap();
    let counted: BTreeMap<String, u64> = top.into_iter().map(|e| (e.entity, e.count)).collect();
    assert_eq!(counted, asked, "one count per request");

    // Lose A (killed, no drain) while both are under load: B answers every
    // request.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let b = Arc::new(b);
    let load: Vec<_> = (0..4)
        .map(|t| {
            let (b, stop, ok, failed) = (b.clone(), stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let r = b.get(&format!("/v1/predict/e{}?model=churn", i % 200));
                    if r.status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("B answered {}: {}", r.status, r.body);
                    }
                    i += 4;
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut a_ok = 0u64;
    while started.elapsed() < Duration::from_millis(700) {
        if a.get("/v1/predict/e20?model=churn").status == 200 {
            a_ok += 1;
        }
    }
    let at_kill = ok.load(Ordering::Relaxed);
    let pid = a.pid();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert!(a_ok > 0, "A served before it was killed");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no failed request at B");
    assert!(
        ok.load(Ordering::Relaxed) > at_kill,
        "B kept answering after A was lost"
    );
    let health = b.get_ok("/readyz");
    assert_eq!(health["status"], "ready", "{health}");
}
