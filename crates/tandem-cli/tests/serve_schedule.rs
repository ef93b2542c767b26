//! Schedules inside `tandem serve`, the real binary over a real Redis:
//! a warm job every second runs while requests are applied, every request
//! is answered, the runs show in `/v1/stats` and `/metrics`, and what it
//! warmed is then answered from the store. A refresh job rescores what
//! drifted.

mod serve_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serve_common::{Serve, churn_repo, s, tandem_ok, write_csv};
use tandem_testing::RedisServer;

#[test]
fn scheduled_warm_runs_under_load_and_shows_in_stats() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let model = repo.join("churn/1/model.onnx");
    let redis = RedisServer::start();
    let csv = dir.path().join("f.csv");
    write_csv(&csv, 0..200);
    tandem_ok(&["materialize", "--input", s(&csv), "--store", &redis.url()]);
    let config = dir.path().join("tandem.toml");
    std::fs::write(
        &config,
        "[hybrid]\ndefault_prediction = 0.5\n\n[schedule.warm]\nevery = \"1s\"\ntop_k = 20\nlookback = \"1h\"\n",
    )
    .unwrap();
    let serve = Arc::new(Serve::start(
        &[
            "--config",
            s(&config),
            "--model",
            s(&model),
            "--store",
            &redis.url(),
        ],
        &[],
    ));
    // Load: batch_only requests over 20 entities from two threads, for as
    // long as it takes two warm runs to finish.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..2)
        .map(|t| {
            let (serve, stop, ok, bad) = (serve.clone(), stop.clone(), ok.clone(), bad.clone());
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let r = serve.get(&format!("/v1/predict/e{}?mode=batch_only", i % 20));
                    if r.status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 2;
                }
            })
        })
        .collect();
    serve.wait_for(30, "two scheduled warm runs", || {
        let jobs = &serve.get_ok("/v1/stats")["jobs"];
        jobs[0]["name"] == "warm" && jobs[0]["runs"].as_u64().unwrap_or(0) >= 2
    });
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "failed requests under the schedule"
    );
    assert!(ok.load(Ordering::Relaxed) > 20);
    let jobs = serve.get_ok("/v1/stats")["jobs"].clone();
    let warm = &jobs[0];
    assert_eq!(warm["failures"], 0, "{warm}");
    assert_eq!(warm["every_secs"], 1.0);
    assert!(
        warm["last_summary"]["warmed"].as_u64().unwrap() > 0,
        "{warm}"
    );
    // The warmed entities are now answered from stored predictions.
    let v = serve.get_ok("/v1/predict/e3?mode=batch_only");
    assert!(
        matches!(v["source"].as_str(), Some("store" | "memory")),
        "{v}"
    );
    assert!(v["warnings"].as_array().unwrap().is_empty(), "{v}");
    // And the runs are in the batch-job metrics.
    let m = serve.get("/metrics").body;
    assert!(
        m.lines()
            .any(|l| l.starts_with("tandem_batch_runs_total{job=\"warm\",result=\"ok\"}")),
        "{m}"
    );
}

#[test]
fn scheduled_refresh_rescores_drift() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let model = repo.join("churn/1/model.onnx");
    let redis = RedisServer::start();
    let csv = dir.path().join("f.csv");
    write_csv(&csv, 0..30);
    tandem_ok(&[
        "batch",
        "--model",
        s(&model),
        "--input",
        s(&csv),
        "--store",
        &redis.url(),
    ]);
    // The features file the refresh reads changes: e0..e4 drift.
    let newer = dir.path().join("new.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let drifted: String = text
        .lines()
        .enumerate()
        .map(|(n, l)| {
            if (1..=5).contains(&n) {
                let mut parts: Vec<String> = l.split(',').map(str::to_string).collect();
                let v: f64 = parts[1].parse().unwrap();
                parts[1] = (v + 3.0).to_string();
                parts.join(",")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&newer, drifted + "\n").unwrap();
    let config = dir.path().join("tandem.toml");
    std::fs::write(
        &config,
        // Every second, by a cron expression (with seconds).
        "[schedule.refresh]\ncron = \"* * * * * *\"\ninput = \"new.csv\"\nchanged_threshold = 0.5\n",
    )
    .unwrap();
    let serve = Serve::start(
        &[
            "--config",
            s(&config),
            "--model",
            s(&model),
            "--store",
            &redis.url(),
        ],
        &[],
    );
    serve.wait_for(30, "a scheduled refresh run", || {
        serve.get_ok("/v1/stats")["jobs"][0]["runs"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    });
    let job = serve.get_ok("/v1/stats")["jobs"][0].clone();
    assert_eq!(job["name"], "refresh");
    assert_eq!(job["cron"], "* * * * * *", "{job}");
    assert_eq!(job["failures"], 0, "{job}");
    assert_eq!(job["last_summary"]["checked"], 30, "{job}");
    assert_eq!(job["last_summary"]["rescored"], 5, "{job}");
    assert_eq!(job["last_summary"]["reasons"]["changed"], 5, "{job}");
}

#[test]
fn a_bad_schedule_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let model = repo.join("churn/1/model.onnx");
    for (toml, says) in [
        (
            "[schedule.warm]\ncron = \"every day\"\ntop_k = 5\n",
            "schedule.warm.cron",
        ),
        (
            "[schedule.warm]\ntop_k = 5\n",
            "exactly one of every and cron",
        ),
        (
            "[schedule.refresh]\nevery = \"1m\"\ninput = \"x.csv\"\n",
            "changed_threshold, older_than and/or model_changed",
        ),
    ] {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, toml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args([
                "serve",
                "--config",
                s(&config),
                "--model",
                s(&model),
                "--store",
            ])
            .arg(dir.path().join("t.redb"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {err}");
        assert!(err.contains(says), "{toml}: {err}");
    }
}
