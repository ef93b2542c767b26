//! OpenTelemetry export: with `[tracing] otlp_endpoint` set, `tandem serve`
//! sends each request's span over OTLP/HTTP (JSON here, so the test can
//! read it) to a collector endpoint, here a plain HTTP listener the test
//! runs; the span carries the request id the caller sent.

mod serve_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use serve_common::{Serve, churn_repo, s, tandem_ok, write_csv};

/// Accepts OTLP/HTTP posts, answers 200, and passes on each body.
fn collector() -> (String, mpsc::Receiver<(String, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut out = conn;
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end().to_ascii_lowercase();
                        if l.is_empty() {
                            break;
                        }
                        if let Some(v) = l.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let _ = tx.send((
                        request_line.trim().to_string(),
                        String::from_utf8_lossy(&body).into_owned(),
                    ));
                    let _ = out.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
                    );
                }
            });
        }
    });
    (format!("http://{addr}/v1/traces"), rx)
}

#[test]
fn request_spans_reach_an_otlp_collector() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let store = dir.path().join("t.redb");
    let csv = dir.path().join("f.csv");
    write_csv(&csv, 0..5);
    tandem_ok(&["materialize", "--input", s(&csv), "--store", s(&store)]);
    let (endpoint, bodies) = collector();
    let server = Serve::start(
        &[
            "--model",
            s(&repo.join("churn/1/model.onnx")),
            "--store",
            s(&store),
        ],
        &[
            ("TANDEM__TRACING__OTLP_ENDPOINT", &endpoint),
            ("TANDEM__TRACING__OTLP_PROTOCOL", "http/json"),
            ("TANDEM__TRACING__SERVICE_NAME", "tandem-test"),
        ],
    );
    let r = server.request(
        "GET",
        "/v1/predict/e1",
        None,
        &[("x-request-id", "trace-me-42")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // SIGTERM flushes the spans still buffered.
    assert!(server.terminate().success());
    let mut seen = Vec::new();
    while let Ok((line, body)) = bodies.recv_timeout(Duration::from_secs(10)) {
        assert!(line.starts_with("POST /v1/traces"), "{line}");
        seen.push(body);
        if seen.iter().any(|b| b.contains("trace-me-42")) {
            break;
        }
    }
    // Pretty-printed JSON: compare without whitespace.
    let all: String = seen
        .join("\n")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    assert!(
        all.contains("trace-me-42"),
        "no span with the request id in {all}"
    );
    assert!(all.contains("tandem-test"), "no service.name in {all}");
    assert!(all.contains("/v1/predict/{entity_id}"), "no route in {all}");
    assert!(
        all.contains("\"name\":\"request\""),
        "no request span in {all}"
    );
}

#[test]
fn a_bad_otlp_protocol_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "serve",
            "--model",
            s(&repo.join("churn/1/model.onnx")),
            "--store",
        ])
        .arg(dir.path().join("t.redb"))
        .env(
            "TANDEM__TRACING__OTLP_ENDPOINT",
            "http://127.0.0.1:1/v1/traces",
        )
        .env("TANDEM__TRACING__OTLP_PROTOCOL", "grpc")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tracing.otlp_protocol"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
