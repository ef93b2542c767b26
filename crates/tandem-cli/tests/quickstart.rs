//! `tandem quickstart`, the real binary end to end: it lays out the
//! directory, materializes and batch-scores into the embedded store,
//! serves, and every example it prints answers; SIGTERM stops it. Then
//! `--no-serve` on the same directory (a rerun) and the config it wrote,
//! served by `tandem serve --config` from another directory.

mod serve_common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use serve_common::{Serve, s, tandem};

/// One printed `curl` line, taken apart: method, URL, body.
fn parse_curl(line: &str) -> (String, String, Option<String>) {
    let rest = line.trim().strip_prefix("curl ").expect("a curl line");
    let mut method = "GET".to_string();
    let mut url = String::new();
    let mut body = None;
    let mut words = rest.split(' ').peekable();
    while let Some(w) = words.next() {
        match w {
            "-X" => method = words.next().unwrap().to_string(),
            "-H" => {
                // A quoted header: skip to its closing quote.
                let mut h = words.next().unwrap().to_string();
                while !h.ends_with('\'') {
                    h.push(' ');
                    h.push_str(words.next().unwrap());
                }
            }
            "-d" => {
                let quoted: Vec<&str> = words.by_ref().collect();
                let b = quoted.join(" ");
                body = Some(b.trim_matches('\'').to_string());
            }
            u if u.starts_with("http://") => url = u.to_string(),
            other => panic!("unexpected {other:?} in {line}"),
        }
    }
    (method, url, body)
}

fn call(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let req = ureq::request(method, url).timeout(Duration::from_secs(30));
    let res = match body {
        Some(b) => req.set("content-type", "application/json").send_string(b),
        None => req.call(),
    };
    match res {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

#[test]
fn quickstart_serves_and_every_printed_example_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("qs");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "quickstart",
            "--dir",
            s(&dir),
            "--entities",
            "5000",
            "--listen",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let stderr = child.stderr.take().unwrap();
    let (etx, erx) = mpsc::channel();
    std::thread::spawn(move || {
        let lines: Vec<String> = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect();
        let _ = etx.send(lines.join("\n"));
    });
    let mut printed = Vec::new();
    let until = Instant::now() + Duration::from_secs(300);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("stop with Ctrl-C") => break,
            Ok(line) => printed.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "quickstart printed no examples: {printed:?}\n{}",
                    erx.recv().unwrap_or_default()
                );
            }
        }
    }
    let curls: Vec<&String> = printed
        .iter()
        .filter(|l| l.trim_start().starts_with("curl "))
        .collect();
    assert!(curls.len() >= 8, "{printed:#?}");
    let mut answers = Vec::new();
    for line in &curls {
        let (method, url, body) = parse_curl(line);
        let (status, text) = call(&method, &url, body.as_deref());
        assert_eq!(status, 200, "{line}\n{text}");
        answers.push(text);
    }
    let json = |i: usize| -> Value { serde_json::from_str(&answers[i]).unwrap() };
    // The examples are in order: a batch-scored entity, an unscored one,
    // both together, TF Serving, KServe, stats, SLA, metrics.
    assert_eq!(json(0)["source"], "store", "{}", answers[0]);
    assert_eq!(json(1)["source"], "realtime", "{}", answers[1]);
    let many = json(2);
    assert_eq!(many["predictions"].as_array().unwrap().len(), 2, "{many}");
    assert_eq!(many["predictions"][0]["source"], "memory");
    assert!(json(3)["predictions"].is_array());
    assert_eq!(json(4)["model_name"], "churn");
    assert_eq!(json(5)["answers"]["realtime"], 1, "{}", answers[5]);
    assert_eq!(json(6)["met"], true);
    assert!(answers[7].contains("tandem_requests_total"));
    // The dashboard.
    let dash = printed
        .iter()
        .find_map(|l| l.trim().strip_prefix("dashboard: "))
        .unwrap();
    let (status, html) = call("GET", dash, None);
    assert_eq!(status, 200);
    assert!(html.contains("<html"));
    // The bench line runs as printed (a short run).
    let bench = printed
        .iter()
        .find_map(|l| l.trim().strip_prefix("load test: tandem bench "))
        .unwrap();
    let mut args = vec!["bench"];
    let bench_args: Vec<String> = bench
        .split(' ')
        .map(|w| w.trim_matches('\'').to_string())
        .collect();
    args.extend(bench_args.iter().map(String::as_str));
    args.extend(["-n", "200", "--warmup", "0s", "-c", "2", "--print-json"]);
    args.retain(|a| *a != "-d" && *a != "10s");
    let out = tandem(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["statuses"]["200"], 200, "{r}");

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let log = erx.recv().unwrap();
    assert!(log.contains("[3/4] batch-score 4500 of them"), "{log}");

    // A rerun on the same directory, stopping after the batch.
    let out = tandem(&[
        "quickstart",
        "--dir",
        s(&dir),
        "--entities",
        "5000",
        "--no-serve",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "tandem.toml",
        "features.parquet",
        "tandem.redb",
        "models/churn/1/model.onnx",
        "models/churn/1/model.toml",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }

    // Its config, served from elsewhere: paths in it are relative to it.
    let serve = Serve::start(&["--config", s(&dir.join("tandem.toml"))], &[]);
    let v = serve.get_ok("/v1/predict/user-000001");
    assert_eq!(v["model"], "churn");
    assert!(matches!(v["source"].as_str(), Some("store")), "{v}");
    drop(serve);
    assert!(Path::new(&dir).join("features.parquet").exists());
}

#[test]
fn bad_quickstart_flags_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, says) in [
        (vec!["--entities", "0"], "--entities"),
        (vec!["--batch-share", "2"], "--batch-share"),
    ] {
        let mut all = vec!["quickstart", "--dir", s(tmp.path()), "--no-serve"];
        all.extend(args);
        let out = tandem(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(says), "{err}");
    }
    // A directory that cannot be created.
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let out = tandem(&["quickstart", "--dir", s(&file.join("sub")), "--no-serve"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("creating"));
}
