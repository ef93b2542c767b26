//! A real Ballista cluster on loopback: one `tandem scheduler` and two
//! `tandem executor` processes, `tandem batch --cluster` into a real Redis
//! (all started here), checked record by record against the local run; a
//! job planned for another model version refused; one executor killed
//! mid-job and the job still completing with nothing lost or duplicated.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use tandem_core::PredictionRecord;
use tandem_testing::{RedisServer, free_port};

const WIDTH: usize = 8;

fn model_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models/xgboost_regressor/1/model.onnx")
}

fn tandem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .output()
        .expect("run tandem")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn value(i: usize, f: usize) -> f64 {
    (((i * 7919 + f * 104_729) % 1000) as f64 / 100.0) - 5.0
}

/// `files` Parquet files of `per_file` rows `e{i}`; each file is a task.
fn write_input(dir: &Path, files: usize, per_file: usize) {
    let mut fields = vec![Field::new("entity_id", DataType::Utf8, false)];
    fields.extend((0..WIDTH).map(|f| Field::new(format!("f{f}"), DataType::Float64, false)));
    let schema = Arc::new(Schema::new(fields));
    for file in 0..files {
        let rows = file * per_file..(file + 1) * per_file;
        let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(
            rows.clone().map(|i| format!("e{i}")),
        ))];
        for f in 0..WIDTH {
            cols.push(Arc::new(Float64Array::from_iter_values(
                rows.clone().map(|i| value(i, f)),
            )));
        }
        let path = dir.join(format!("part-{file:03}.parquet"));
        let mut w =
            ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema.clone(), None)
                .unwrap();
        w.write(&RecordBatch::try_new(schema.clone(), cols).unwrap())
            .unwrap();
        w.close().unwrap();
    }
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_scheduler() -> (Proc, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "scheduler",
            "--bind",
            "127.0.0.1:0",
            "--executor-timeout",
            "4s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let port = addr.rsplit(':').next().unwrap().parse().unwrap();
    (Proc(child), port)
}

fn start_executor(scheduler: u16, model: &Path, log: &Path) -> Proc {
    let (flight, grpc) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "executor",
            "--model",
            model.to_str().unwrap(),
            "--scheduler",
            &format!("127.0.0.1:{scheduler}"),
            "--bind-host",
            "127.0.0.1",
            "--flight-port",
            &flight.to_string(),
            "--grpc-port",
            &grpc.to_string(),
            "--concurrency",
            "1",
            "--heartbeat-secs",
            "1",
        ])
        .env("TANDEM_LOG", "warn,ballista_executor=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Proc(child)
}

async fn records(redis: &RedisServer, ns: &str, n: usize) -> HashMap<String, PredictionRecord> {
    let store = tandem_store::open(&format!("{}?namespace={ns}", redis.url())).unwrap();
    let ids: Vec<String> = (0..n).map(|i| format!("e{i}")).collect();
    let mut out = HashMap::new();
    for chunk in ids.chunks(10_000) {
        let got = store.get_predictions(chunk).await.unwrap();
        for (id, r) in chunk.iter().zip(got) {
            if let Ok(r) = r {
                out.insert(id.clone(), r);
            }
        }
    }
    out
}

fn keys(redis: &RedisServer, pattern: &str) -> usize {
    // KEYS answers `*N` then the names.
    let reply = redis.command(&["KEYS", pattern]);
    let head = reply.lines().next().unwrap_or_default();
    head.trim_start_matches('*')
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("KEYS reply {reply:?}"))
}

/// Tasks an executor has been given so far (from its log).
fn tasks(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("Execute task")
        .count()
}

fn dbsize(redis: &RedisServer) -> u64 {
    redis
        .command(&["DBSIZE"])
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap()
}

fn summary(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_cluster_scores_like_a_local_run_and_survives_losing_an_executor() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    std::fs::create_dir(&input).unwrap();
    let (files, per_file) = (24, 2_000);
    let n = files * per_file;
    write_input(&input, files, per_file);

    let (_scheduler, port) = start_scheduler();
    let cluster = format!("df://127.0.0.1:{port}");
    let _e1 = start_executor(port, &model_path(), &dir.path().join("e1.log"));
    let mut e2 = start_executor(port, &model_path(), &dir.path().join("e2.log"));

    let store = |ns: &str| format!("{}?namespace={ns}", redis.url());
    let model = model_path();
    let model = model.to_str().unwrap();
    let input = input.to_str().unwrap();

    // The local run, then the same job on the cluster.
    let local = tandem(&[
        "batch",
        "--model",
        model,
        "--input",
        input,
        "--store",
        &store("local:"),
        "--run-id",
        "run-1",
        "--json",
    ]);
    assert_eq!(local.status.code(), Some(0), "{}", text(&local.stderr));
    let on_cluster = tandem(&[
        "batch",
        "--model",
        model,
        "--input",
        input,
        "--store",
        &store("cluster:"),
        "--run-id",
        "run-1",
        "--json",
        "--cluster",
        &cluster,
    ]);
    assert_eq!(
        on_cluster.status.code(),
        Some(0),
        "{}",
        text(&on_cluster.stderr)
    );
    let (want, got) = (summary(&local), summary(&on_cluster));
    for key in [
        "rows_read",
        "rows_scored",
        "rows_written",
        "rows_skipped",
        "model",
        "version",
    ] {
        assert_eq!(got[key], want[key], "{key}");
    }
    assert_eq!(got["rows_written"], n);
    let want = records(&redis, "local:", n).await;
    let got = records(&redis, "cluster:", n).await;
    assert_eq!(want.len(), n);
    assert_eq!(got.len(), n);
    for (id, w) in &want {
        let g = &got[id];
        assert_eq!(
            (g.prediction, &g.digest, &g.inputs),
            (w.prediction, &w.digest, &w.inputs),
            "{id}"
        );
        assert_eq!(g.run_id.as_deref(), Some("run-1"));
    }

    // A job planned for another version of the model is refused by the
    // executors: nothing is written.
    let repo = dir.path().join("repo/xgboost_regressor/2");
    std::fs::create_dir_all(&repo).unwrap();
    for f in ["model.onnx", "model.toml"] {
        std::fs::copy(model_path().with_file_name(f), repo.join(f)).unwrap();
    }
    let v2 = repo.join("model.onnx");
    let refused = tandem(&[
        "batch",
        "--model",
        v2.to_str().unwrap(),
        "--input",
        input,
        "--store",
        &store("v2:"),
        "--cluster",
        &cluster,
    ]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stdout));
    let err = text(&refused.stderr);
    assert!(err.contains("refusing to mix scores"), "{err}");
    assert_eq!(keys(&redis, "v2:*"), 0, "nothing written by a refused job");

    // Kill one executor while a job runs: Ballista runs its tasks again on
    // the other, and every record is there once.
    let before = dbsize(&redis);
    let (e1_log, e2_log) = (dir.path().join("e1.log"), dir.path().join("e2.log"));
    let (e1_before, e2_before) = (tasks(&e1_log), tasks(&e2_log));
    let mut job = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "batch",
            "--model",
            model,
            "--input",
            input,
            "--store",
            &store("kill:"),
            "--run-id",
            "run-2",
            "--json",
            "--cluster",
            &cluster,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while dbsize(&redis) == before {
        assert!(Instant::now() < deadline, "the job never started writing");
        assert!(
            job.try_wait().unwrap().is_none(),
            "the job ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed_at = Instant::now();
    e2.0.kill().unwrap();
    e2.0.wait().unwrap();
    assert!(
        tasks(&e2_log) > e2_before,
        "the killed executor had taken tasks of the job"
    );
    let written_at_kill = dbsize(&redis) - before;
    assert!(
        (written_at_kill as usize) < n,
        "the kill came after the job had written everything"
    );
    let out = job.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    eprintln!(
        "killed after {written_at_kill} of {n} records; the job finished {:.1} s later",
        killed_at.elapsed().as_secs_f64()
    );
    assert!(tasks(&e1_log) > e1_before, "the survivor ran tasks");
    assert_eq!(summary(&out)["rows_written"], n);
    assert_eq!(dbsize(&redis) - before, n as u64, "one key per entity");
    let got = records(&redis, "kill:", n).await;
    assert_eq!(got.len(), n, "nothing lost");
    for (id, w) in &want {
        let g = &got[id];
        assert_eq!(g.prediction, w.prediction, "{id}");
        assert_eq!(g.run_id.as_deref(), Some("run-2"));
    }
}

#[test]
fn cluster_processes_check_their_flags() {
    let out = tandem(&["executor", "--model", "/nonexistent.onnx"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("nonexistent"),
        "{}",
        text(&out.stderr)
    );
    let out = tandem(&[
        "executor",
        "--model",
        model_path().to_str().unwrap(),
        "--scheduler",
        "nohost",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("HOST:PORT"),
        "{}",
        text(&out.stderr)
    );
    let out = tandem(&[
        "batch",
        "--model",
        model_path().to_str().unwrap(),
        "--input",
        "x.parquet",
        "--store",
        "redis://127.0.0.1:1",
        "--cluster",
        "http://x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("df://"), "{}", text(&out.stderr));
}
