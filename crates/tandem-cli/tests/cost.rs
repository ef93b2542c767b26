//! `tandem cost` and `tandem advise`, the real binary: the reference
//! design's example pinned, and inputs measured by a real batch run and
//! real `tandem bench` runs against `tandem serve`.

mod serve_common;

use serde_json::Value;
use serve_common::{Serve, churn_repo, s, tandem, tandem_ok, write_csv};

fn json_of(args: &[&str]) -> Value {
    let out = tandem(args);
    assert!(
        out.status.success(),
        "tandem {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn f(v: &Value, p: &str) -> f64 {
    v.pointer(p)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{p} missing in {v}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

#[test]
fn the_reference_example_1m_entities_daily_vs_100_rps() {
    // Its fixed figures: 10k predictions/s per batch instance, 100
    // requests/s per serving instance; $1 an hour; no headroom.
    let v = json_of(&[
        "cost",
        "--entities",
        "1000000",
        "--runs-per-day",
        "1",
        "--rate",
        "100",
        "--price",
        "1",
        "--batch-pps",
        "10000",
        "--realtime-rps",
        "100",
        "--lookup-rps",
        "1e12",
        "--headroom",
        "0",
        "--hit-rate",
        "0.9",
        "--json",
    ]);
    let r = &v["report"];
    // Batch: 100 s of compute ($0.0278) + one lookup instance all day.
    assert!(close(f(r, "/strategies/0/batch_per_day"), 100.0 / 3600.0));
    assert!(close(f(r, "/strategies/0/per_day"), 24.0 + 100.0 / 3600.0));
    // Real time: one instance all day, 8.64M predictions.
    assert!(close(f(r, "/strategies/1/per_day"), 24.0));
    assert!(close(f(r, "/strategies/1/per_1k_served"), 24.0 / 8640.0));
    // Break-even at 0.1157 req/s (10k requests a day).
    assert!((f(r, "/break_even_rps") - 0.115_740_7).abs() < 1e-6);
    // The table says the same.
    let out = tandem(&[
        "cost",
        "--batch-pps",
        "10000",
        "--realtime-rps",
        "100",
        "--lookup-rps",
        "1e12",
        "--headroom",
        "0",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("break-even: above 0.116 req/s"), "{text}");
    assert!(text.contains("by request rate"), "{text}");
}

#[test]
fn measured_inputs_from_a_batch_run_and_two_bench_runs() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let store = dir.path().join("t.redb");
    let csv = dir.path().join("f.csv");
    write_csv(&csv, 0..300);
    let model = repo.join("churn/1/model.onnx");
    tandem_ok(&["materialize", "--input", s(&csv), "--store", s(&store)]);
    let out = tandem(&[
        "batch",
        "--model",
        s(&model),
        "--input",
        s(&csv),
        "--store",
        s(&store),
        "--json",
    ]);
    assert!(out.status.success());
    let summary_path = dir.path().join("batch.json");
    std::fs::write(&summary_path, &out.stdout).unwrap();
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();

    let serve = Serve::start(&["--model", s(&model), "--store", s(&store)], &[]);
    let lookup = dir.path().join("lookup.json");
    let realtime = dir.path().join("realtime.json");
    for (path, query) in [(&lookup, None), (&realtime, Some("mode=realtime_only"))] {
        let mut args = vec![
            "bench",
            &serve.base,
            "-c",
            "4",
            "-n",
            "600",
            "--warmup",
            "0s",
            "--entities",
            "300",
            "--id-template",
            "e{}",
            "--json",
            s(path),
        ];
        if let Some(q) = query {
            args.extend_from_slice(&["--query", q]);
        }
        tandem_ok(&args);
    }
    let l: Value = serde_json::from_str(&std::fs::read_to_string(&lookup).unwrap()).unwrap();
    let rt: Value = serde_json::from_str(&std::fs::read_to_string(&realtime).unwrap()).unwrap();

    let v = json_of(&[
        "cost",
        "--entities",
        "300",
        "--runs-per-day",
        "24",
        "--rate",
        "50",
        "--peak",
        "200",
        "--price",
        "0.5",
        "--bench-lookup",
        s(&lookup),
        "--bench-realtime",
        s(&realtime),
        "--batch-summary",
        s(&summary_path),
        "--json",
    ]);
    let i = &v["report"]["inputs"];
    assert_eq!(f(i, "/batch_pps"), f(&summary, "/rows_per_second"));
    assert_eq!(f(i, "/realtime_rps"), f(&rt, "/throughput_rps"));
    assert_eq!(f(i, "/lookup_rps"), f(&l, "/throughput_rps"));
    assert_eq!(f(i, "/hit_rate"), f(&l, "/server/overall_hit_rate"));
    assert!(
        v["sources"]["batch_pps"]
            .as_str()
            .unwrap()
            .contains("batch.json")
    );
    // Provisioning from the measured real-time throughput: 200 req/s peak
    // at 70 % of it.
    let want = ((200.0 / (f(&rt, "/throughput_rps") * 0.7)) - 1e-9)
        .ceil()
        .max(1.0);
    assert_eq!(f(&v, "/report/strategies/1/instances"), want);
    assert!(close(
        f(&v, "/report/strategies/1/per_day"),
        want * 24.0 * 0.5
    ));
    // Batch compute: 300 x 24 predictions at the measured rows/s.
    let hours = 300.0 * 24.0 / f(&summary, "/rows_per_second") / 3600.0;
    assert!(close(f(&v, "/report/strategies/0/batch_hours"), hours));

    // advise on the same measurements, the model timed on the spot.
    let a = json_of(&[
        "advise",
        "--latency-ms",
        "100",
        "--freshness",
        "2d",
        "--model",
        s(&model),
        "--bench-lookup",
        s(&lookup),
        "--bench-realtime",
        s(&realtime),
        "--rate",
        "50",
        "--entities",
        "300",
        "--json",
    ]);
    let strategy = a["advice"]["strategy"].as_str().unwrap();
    assert!(["batch", "realtime", "hybrid"].contains(&strategy));
    assert!(f(&a, "/needs/model_ms") > 0.0);
    assert!(a["advice"]["reasons"].as_array().unwrap().len() >= 2);
    // The config it proposes is valid TOML for serve's sections.
    let config: toml::Value = toml::from_str(a["advice"]["config"].as_str().unwrap()).unwrap();
    assert_eq!(config["sla"]["p99_ms"].as_integer(), Some(100));
    assert_eq!(config["hybrid"]["max_staleness"].as_str(), Some("2d"));
}

#[test]
fn advise_from_a_file_and_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("advise.toml");
    std::fs::write(
        &file,
        "latency_ms = 20\nfreshness = \"10m\"\nrequested_share = 0.02\nmodel_ms = 80\nbatch_pps = 10000\nrealtime_rps = 100\nlookup_rps = 100\n",
    )
    .unwrap();
    let a = json_of(&["advise", "--file", s(&file), "--json"]);
    // Too slow for real time, too fresh for a daily batch: hybrid, warned.
    assert_eq!(a["advice"]["strategy"], "hybrid");
    assert!(
        a["advice"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("neither alone fits")
    );
    // A flag overrides the file.
    let a = json_of(&[
        "advise",
        "--file",
        s(&file),
        "--latency-ms",
        "500",
        "--json",
    ]);
    assert_eq!(f(&a, "/needs/latency_ms"), 500.0);

    for (args, says) in [
        (vec!["cost"], "batch throughput is not known"),
        (
            vec!["cost", "--batch-pps", "1"],
            "real-time throughput is not known",
        ),
        (
            vec![
                "cost",
                "--batch-pps",
                "1",
                "--realtime-rps",
                "1",
                "--headroom",
                "1",
            ],
            "headroom",
        ),
        (
            vec!["cost", "--batch-pps", "1", "--bench-realtime", s(&file)],
            "is not a tandem bench --json report",
        ),
        (
            vec!["advise", "--batch-pps", "1", "--realtime-rps", "1"],
            "--latency-ms",
        ),
    ] {
        let out = tandem(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    std::fs::write(&file, "latency = 20\n").unwrap();
    let out = tandem(&["advise", "--file", s(&file)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid advise file"));
}
