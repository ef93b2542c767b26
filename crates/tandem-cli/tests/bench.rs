//! `tandem bench`, the real binary: percentiles on a server with a known
//! delay distribution, the open loop's coordinated-omission correction,
//! a run against a real `tandem serve` (source mix from its stats, JSON,
//! chart, comparison), and bad flags.

mod serve_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use serve_common::{Serve, churn_repo, s, tandem, write_csv};

/// A plain HTTP/1.1 keep-alive server on a free port, one thread per
/// connection, that answers every request after `delay(n)` for the n-th
/// request (counted over all connections).
fn delay_server(delay: fn(u64) -> Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let count = count.clone();
            std::thread::spawn(move || {
                let _ = conn.set_nodelay(true);
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut out = conn;
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    // Request line and headers.
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let n = count.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(delay(n));
                    let reply = "{\"ok\":true}";
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        reply.len()
                    );
                    if out.write_all(head.as_bytes()).is_err()
                        || out.write_all(reply.as_bytes()).is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

fn bench_json(args: &[&str]) -> (i32, Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", s(&json)]);
    let out = tandem(&all);
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "tandem {all:?} exited {code}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).unwrap();
    (code, serde_json::from_str(&text).unwrap())
}

fn ms(v: &Value, p: &str) -> f64 {
    v["latency_ms"][p].as_f64().unwrap()
}

#[test]
fn percentiles_follow_a_known_delay_distribution() {
    // Every tenth request takes 40 ms, the others 2 ms: p50 is 2 ms (plus
    // overhead), p95 and p99 are 40 ms.
    let url = delay_server(|n| Duration::from_millis(if n % 10 == 9 { 40 } else { 2 }));
    let (code, r) = bench_json(&[
        &url,
        "-c",
        "4",
        "-n",
        "600",
        "--warmup",
        "0s",
        "--sla-p99-ms",
        "1000",
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["requests"], 600);
    assert_eq!(r["statuses"]["200"], 600);
    let (p50, p95, p99, max) = (ms(&r, "p50"), ms(&r, "p95"), ms(&r, "p99"), ms(&r, "max"));
    assert!((2.0..15.0).contains(&p50), "p50 {p50}");
    assert!((40.0..100.0).contains(&p95), "p95 {p95}");
    assert!((40.0..100.0).contains(&p99), "p99 {p99}");
    assert!(max >= 40.0, "max {max}");
    // An SLA the 40 ms tail misses: exit 1, the check says which.
    let (code, r) = bench_json(&[
        &url,
        "-c",
        "4",
        "-n",
        "200",
        "--warmup",
        "0s",
        "--sla-p99-ms",
        "20",
    ]);
    assert_eq!(code, 1);
    let sla = r["sla"].as_array().unwrap();
    let p99 = sla.iter().find(|t| t["name"] == "p99_latency_ms").unwrap();
    assert_eq!(p99["met"], false, "{p99}");
    assert!(p99["margin"].as_f64().unwrap() < 0.0);
}

#[test]
fn open_loop_counts_the_wait_a_slow_server_causes() {
    // 4 connections of a 50 ms server serve at most 80 req/s; offered
    // 120 req/s, requests queue and their latency from the intended start
    // grows far past 50 ms. The closed loop only ever sees 50 ms.
    let url = delay_server(|_| Duration::from_millis(50));
    let (_, closed) = bench_json(&[&url, "-c", "4", "-d", "2s", "--warmup", "0s"]);
    let (_, open) = bench_json(&[
        &url, "-c", "4", "--rate", "120", "-d", "3s", "--warmup", "0s",
    ]);
    assert_eq!(open["pacing"], "open");
    let (c99, o99) = (ms(&closed, "p99"), ms(&open, "p99"));
    assert!((50.0..150.0).contains(&c99), "closed p99 {c99}");
    assert!(o99 > 300.0, "open p99 {o99} (closed {c99})");
    // And at a rate the server keeps up with, the open loop delivers it.
    let (_, easy) = bench_json(&[
        &url, "-c", "8", "--rate", "40", "-d", "3s", "--warmup", "0s",
    ]);
    let rps = easy["throughput_rps"].as_f64().unwrap();
    assert!((25.0..55.0).contains(&rps), "{rps} req/s for 40 offered");
    assert!(ms(&easy, "p50") < 150.0, "{easy}");
}

#[test]
fn against_tandem_serve_with_stats_chart_and_comparison() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let store = dir.path().join("t.redb");
    let csv = dir.path().join("f.csv");
    write_csv(&csv, 0..200);
    let model = repo.join("churn/1/model.onnx");
    serve_common::tandem_ok(&["materialize", "--input", s(&csv), "--store", s(&store)]);
    serve_common::tandem_ok(&[
        "batch",
        "--model",
        s(&model),
        "--input",
        s(&csv),
        "--store",
        s(&store),
    ]);
    let serve = Serve::start(&["--model", s(&model), "--store", s(&store)], &[]);
    let a = dir.path().join("a.json");
    let b = dir.path().join("b.json");
    let chart = dir.path().join("a.svg");
    let run = |base: &str, json: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "bench",
            base,
            "-c",
            "8",
            "-n",
            "1000",
            "--warmup",
            "0s",
            "--entities",
            "200",
            "--id-template",
            "e{}",
            "--zipf",
            "1.1",
            "--json",
            s(json),
        ];
        args.extend_from_slice(extra);
        let out = tandem(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let table = run(&serve.base, &a, &["--chart", s(&chart)]);
    assert!(table.contains("sources"), "{table}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&a).unwrap()).unwrap();
    assert_eq!(r["statuses"]["200"], 1000, "{r}");
    assert_eq!(r["entities"], 200);
    assert_eq!(r["distribution"], "zipf(1.1)");
    // The server counted exactly the bench's requests, all from stored
    // predictions (store first, then memory).
    let answers = &r["server"]["answers"];
    let total: u64 = answers
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 1000, "{answers}");
    assert_eq!(answers["realtime"], 0);
    assert!(answers["memory"].as_u64().unwrap() > 500, "{answers}");
    assert!(r["server"]["overall_hit_rate"].as_f64().unwrap() > 0.99);
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("polyline"),
        "{}",
        &svg[..200.min(svg.len())]
    );

    // A second tandem with another config: every request computed in real
    // time, small batches.
    let store2 = dir.path().join("t2.redb");
    serve_common::tandem_ok(&["materialize", "--input", s(&csv), "--store", s(&store2)]);
    let second = Serve::start(
        &["--model", s(&model), "--store", s(&store2)],
        &[
            ("TANDEM__HYBRID__MODE", "realtime_only"),
            ("TANDEM__BATCHING__MAX_BATCH_SIZE", "4"),
        ],
    );
    run(&second.base, &b, &[]);
    let rb: Value = serde_json::from_str(&std::fs::read_to_string(&b).unwrap()).unwrap();
    assert_eq!(
        rb["server"]["answers"]["realtime"], 1000,
        "{}",
        rb["server"]
    );
    let out = tandem(&["bench", "--compare", s(&a), s(&b)]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for row in ["req/s", "p50 ms", "p99 ms", "B/A"] {
        assert!(text.contains(row), "{text}");
    }

    // The tensor protocols, their input width read from the metadata.
    for protocol in ["kserve", "tfserving"] {
        let (code, r) = bench_json(&[
            &serve.base,
            "--protocol",
            protocol,
            "--model",
            "churn",
            "-c",
            "4",
            "-n",
            "300",
            "--warmup",
            "0s",
        ]);
        assert_eq!(code, 0, "{r}");
        assert_eq!(r["statuses"]["200"], 300, "{protocol}: {r}");
        assert_eq!(r["server"], Value::Null);
    }
    let stats = serve.get_ok("/v1/stats");
    assert_eq!(stats["infer_requests"], 600, "{stats}");
}

#[test]
fn bad_flags_and_dead_servers_are_clear_errors() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        format!("http://{a}")
    };
    for (args, says) in [
        (vec!["bench", "https://example.invalid"], "only http://"),
        (vec!["bench", &dead], "not answering"),
        (vec!["bench", &dead, "--rate", "0"], "--rate"),
        (vec!["bench", &dead, "--zipf=-1"], "--zipf"),
        (
            vec!["bench", &dead, "--id-template", "user"],
            "--id-template",
        ),
        (
            vec!["bench", &dead, "--protocol", "kserve"],
            "needs --model",
        ),
        (
            vec![
                "bench",
                "--compare",
                "/nonexistent/a.json",
                "/nonexistent/b.json",
            ],
            "a.json",
        ),
    ] {
        let out = tandem(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
