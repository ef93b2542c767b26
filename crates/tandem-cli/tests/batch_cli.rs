//! The real `tandem` binary: `batch` and `materialize` on generated Parquet
//! and CSV, into a real Redis (started here) and the embedded store, checked
//! against the model run directly.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use tandem_core::FeatureBatch;
use tandem_model::Model;
use tandem_store::Store;
use tandem_testing::RedisServer;

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

/// Rows `e{i}` with 8 deterministic features; `bad` rows (by index) get a
/// null in f2.
fn write_parquet(path: &Path, rows: std::ops::Range<usize>, nulls: &[usize]) {
    let mut fields = vec![Field::new("entity_id", DataType::Utf8, true)];
    fields.extend((0..WIDTH).map(|f| Field::new(format!("f{f}"), DataType::Float64, true)));
    fields.push(Field::new("country", DataType::Utf8, true));
    let schema = Arc::new(Schema::new(fields));
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, schema.clone(), None).unwrap();
    let ids: Vec<usize> = rows.collect();
    for chunk in ids.chunks(50_000) {
        let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(
            chunk.iter().map(|i| format!("e{i}")),
        ))];
        for f in 0..WIDTH {
            cols.push(Arc::new(Float64Array::from_iter(chunk.iter().map(|&i| {
                (!(f == 2 && nulls.contains(&i))).then(|| value(i, f))
            }))));
        }
        cols.push(Arc::new(StringArray::from_iter_values(
            chunk.iter().map(|i| if i % 2 == 0 { "FR" } else { "DE" }),
        )));
        writer
            .write(&RecordBatch::try_new(schema.clone(), cols).unwrap())
            .unwrap();
    }
    writer.close().unwrap();
}

/// What the model gives for row `i` (features as the batch job feeds them).
fn expected(model: &Model, ids: &[usize], nulls: &[usize]) -> HashMap<String, f64> {
    let rows: Vec<Vec<f32>> = ids
        .iter()
        .map(|&i| {
            (0..WIDTH)
                .map(|f| {
                    if f == 2 && nulls.contains(&i) {
                        0.0
                    } else {
                        value(i, f) as f32
                    }
                })
                .collect()
        })
        .collect();
    let p = model
        .predict(&FeatureBatch::from_rows(&rows).unwrap())
        .unwrap();
    ids.iter()
        .enumerate()
        .map(|(k, &i)| (format!("e{i}"), f64::from(p.row(k)[0])))
        .collect()
}

/// DataFusion reads Parquet strings as Utf8View; the tests compare Utf8.
fn utf8(col: &ArrayRef) -> ArrayRef {
    datafusion::arrow::compute::cast(col, &DataType::Utf8).unwrap()
}

fn summary(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "summary is not JSON ({e}): {}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

async fn read_all(store: &dyn Store, ids: &[String]) -> Vec<Option<tandem_core::PredictionRecord>> {
    store
        .get_predictions(ids)
        .await
        .unwrap()
        .into_iter()
        .map(Result::ok)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_parquet_into_redis_the_embedded_store_and_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("features.parquet");
    let n = 20_000;
    write_parquet(&input, 0..n, &[]);
    let redis = RedisServer::start();
    let model = Model::load(model_path()).unwrap();
    let ids: Vec<usize> = (0..n).collect();
    let want = expected(&model, &ids, &[]);
    let names: Vec<String> = (0..n).map(|i| format!("e{i}")).collect();

    let embedded = dir.path().join("store.redb");
    let output = dir.path().join("out/predictions.parquet");
    std::fs::create_dir_all(output.parent().unwrap()).unwrap();
    for store in [redis.url(), embedded.display().to_string()] {
        let out = tandem(&[
            "batch",
            "--model",
            model_path().to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--store",
            &store,
            "--output",
            output.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let s = summary(&out);
        assert_eq!(s["rows_read"], n as u64);
        assert_eq!(s["rows_written"], n as u64);
        assert_eq!(s["rows_skipped"], 0);
        let run_id = s["run_id"].as_str().unwrap().to_owned();

        let st = tandem_store::open(&store).unwrap();
        let got = read_all(st.as_ref(), &names).await;
        for (name, rec) in names.iter().zip(&got) {
            let rec = rec
                .as_ref()
                .unwrap_or_else(|| panic!("{name} missing from {store}"));
            let w = want[name];
            assert!(
                (rec.prediction - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{name}: {} vs {w}",
                rec.prediction
            );
            assert_eq!(&*rec.model, "xgboost_regressor");
            assert_eq!(rec.version, 1);
            assert_eq!(rec.run_id.as_deref(), Some(run_id.as_str()));
            assert_eq!(rec.digest.as_ref().map(|d| d.len()), Some(16));
        }
    }
    // The Parquet output holds the same predictions.
    let ctx = datafusion::prelude::SessionContext::new();
    let df = ctx
        .read_parquet(output.to_str().unwrap(), Default::default())
        .await
        .unwrap();
    let batches = df.collect().await.unwrap();
    let mut seen = 0;
    for b in &batches {
        let ids = utf8(b.column(0));
        let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
        let preds = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
        for r in 0..b.num_rows() {
            let w = want[ids.value(r)];
            assert!((preds.value(r) - w).abs() <= 1e-6 * w.abs().max(1.0));
            seen += 1;
        }
    }
    assert_eq!(seen, n);
    // No temporary file is left beside it.
    let leftovers: Vec<_> = std::fs::read_dir(output.parent().unwrap())
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[test]
fn bad_rows_are_counted_or_fail_the_run_in_strict_mode() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    let mut text_csv = String::from("entity_id,f0,f1,f2,f3,f4,f5,f6,f7\n");
    text_csv.push_str("a,1,2,3,4,5,6,7,8\n");
    text_csv.push_str("b,1,2,,4,5,6,7,8\n"); // missing value
    text_csv.push_str("c,1,2,NaN,4,5,6,7,8\n"); // NaN
    text_csv.push_str("a,9,9,9,9,9,9,9,9\n"); // duplicate id
    text_csv.push_str(",1,2,3,4,5,6,7,8\n"); // no id
    text_csv.push_str("d,1,2,oops,4,5,6,7,8\n"); // not a number
    std::fs::write(&csv, text_csv).unwrap();
    let store = dir.path().join("s.redb");
    let model = model_path();
    let base = [
        "batch",
        "--model",
        model.to_str().unwrap(),
        "--input",
        csv.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ];

    let out = tandem(&[&base[..], &["--json"]].concat());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let s = summary(&out);
    assert_eq!(s["rows_read"], 6);
    assert_eq!(s["rows_written"], 4);
    assert_eq!(
        s["skipped"],
        serde_json::json!({"duplicate_id": 1, "null_id": 1})
    );
    assert_eq!(
        s["filled"],
        serde_json::json!({"missing_feature": 2, "nan_feature": 1})
    );

    let out = tandem(&[&base[..], &["--strict"]].concat());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("row 1") && err.contains("\"b\"") && err.contains("missing_feature"),
        "{err}"
    );
}

#[test]
fn problems_found_before_scoring_fail_without_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("f.parquet");
    write_parquet(&input, 0..100, &[]);
    let store = dir.path().join("s.redb");
    let model = model_path();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "batch",
            "--model",
            model.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        tandem(&args)
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--input", input.to_str().unwrap(), "--id-column", "user"],
            "\"user\"",
        ),
        (
            vec!["--input", "/nonexistent/features.parquet"],
            "/nonexistent/features.parquet",
        ),
        (
            vec!["--input", input.to_str().unwrap(), "--features", "f0,f1,f2"],
            "f0,f1,f2",
        ),
        (
            vec![
                "--input",
                input.to_str().unwrap(),
                "--sql",
                "SELECT entity_id, f0 FROM input",
            ],
            "\"f1\"",
        ),
        (
            vec![
                "--input",
                input.to_str().unwrap(),
                "--where",
                "no_such_column > 1",
            ],
            "no_such_column",
        ),
    ];
    for (args, needle) in cases {
        let out = run(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let err = text(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let bad_model = dir.path().join("model.onnx");
    std::fs::write(&bad_model, b"not onnx").unwrap();
    let out = tandem(&[
        "batch",
        "--model",
        bad_model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    // Nothing was written by any of them.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let st = tandem_store::open(store.to_str().unwrap()).unwrap();
    let got = rt
        .block_on(st.get_predictions(&["e0".into(), "e1".into()]))
        .unwrap();
    assert!(got.iter().all(|g| g.as_ref().unwrap_err().is_not_found()));
}

#[test]
fn a_store_that_is_down_fails_before_scoring() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("f.parquet");
    write_parquet(&input, 0..10, &[]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}?timeout_ms=300");
    let out = tandem(&[
        "batch",
        "--model",
        model_path().to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--store",
        &url,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unavailable"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn shards_partition_the_entities_and_their_union_is_the_whole_run() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("f.parquet");
    write_parquet(&input, 0..3000, &[]);
    let model = model_path();
    let out_of = |name: &str, extra: &[&str]| -> BTreeMap<String, f64> {
        let output = dir.path().join(format!("{name}.parquet"));
        let mut args = vec![
            "batch",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = tandem(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let ctx = datafusion::prelude::SessionContext::new();
            let batches = ctx
                .read_parquet(output.to_str().unwrap(), Default::default())
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let mut m = BTreeMap::new();
            for b in batches {
                let ids = utf8(b.column(0));
                let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
                let p = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
                for r in 0..b.num_rows() {
                    m.insert(ids.value(r).to_owned(), p.value(r));
                }
            }
            m
        })
    };
    let all = out_of("all", &[]);
    let mut union = BTreeMap::new();
    for i in 0..3 {
        let shard = out_of(&format!("s{i}"), &["--shard", &format!("{i}/3")]);
        assert!(
            shard.len() > 700 && shard.len() < 1300,
            "shard {i}: {}",
            shard.len()
        );
        for (k, v) in shard {
            assert!(union.insert(k, v).is_none(), "an entity is in two shards");
        }
    }
    assert_eq!(union, all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reruns_write_the_same_values_and_sql_feature_engineering_applies() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("f.parquet");
    write_parquet(&input, 0..500, &[]);
    let redis = RedisServer::start();
    let ids: Vec<String> = (0..500).map(|i| format!("e{i}")).collect();
    let st = tandem_store::open(&redis.url()).unwrap();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let out = tandem(&[
            "batch",
            "--model",
            model_path().to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--store",
            &redis.url(),
            "--json",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        runs.push(read_all(st.as_ref(), &ids).await);
    }
    for (a, b) in runs[0].iter().zip(&runs[1]) {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert_eq!(a.prediction, b.prediction);
        assert_eq!(a.digest, b.digest);
    }
    // --where keeps half the rows; --sql rewrites a feature.
    let out = tandem(&[
        "batch",
        "--model",
        model_path().to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--store",
        &format!("{}?namespace=fr:", redis.url()),
        "--where",
        "country = 'FR'",
        "--json",
    ]);
    assert_eq!(summary(&out)["rows_written"], 250);
    let sql = "SELECT entity_id, f0, f1, 0.0 AS f2, f3, f4, f5, f6, f7 FROM input";
    let out = tandem(&[
        "batch",
        "--model",
        model_path().to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--store",
        &format!("{}?namespace=sql:", redis.url()),
        "--sql",
        sql,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let model = Model::load(model_path()).unwrap();
    let all: Vec<usize> = (0..500).collect();
    let want = expected(&model, &all, &all); // f2 = 0 everywhere
    let sql_store = tandem_store::open(&format!("{}?namespace=sql:", redis.url())).unwrap();
    for (name, rec) in ids.iter().zip(read_all(sql_store.as_ref(), &ids).await) {
        let (got, w) = (rec.unwrap().prediction, want[name]);
        assert!((got - w).abs() <= 1e-6 * w.abs().max(1.0), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_resumes_and_finishes_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.parquet");
    let n = 400_000;
    write_parquet(&input, 0..n, &[]);
    let redis = RedisServer::start();
    let run_id = "run-kill-test";
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "batch",
            "--model",
            model_path().to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--store",
            &redis.url(),
            "--run-id",
            run_id,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once some, but not all, records are in.
    let started = Instant::now();
    loop {
        let keys: u64 = redis.command(&["DBSIZE"])[1..].trim().parse().unwrap();
        if keys >= 20_000 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run finished before it could be killed"
        );
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial: u64 = redis.command(&["DBSIZE"])[1..].trim().parse().unwrap();
    assert!(
        partial < n as u64,
        "the run was not interrupted ({partial} keys)"
    );

    let out = tandem(&[
        "batch",
        "--model",
        model_path().to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--store",
        &redis.url(),
        "--resume",
        run_id,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = summary(&out);
    let already = s["already_written"].as_u64().unwrap();
    assert!(
        already >= partial.min(20_000),
        "resume rewrote what was there: {s}"
    );
    assert_eq!(
        s["rows_written"].as_u64().unwrap() + already,
        n as u64,
        "{s}"
    );

    // Every entity is there, whole, with the right value.
    let st = tandem_store::open(&redis.url()).unwrap();
    let model = Model::load(model_path()).unwrap();
    let sample: Vec<usize> = (0..n).step_by(97).collect();
    let want = expected(&model, &sample, &[]);
    let names: Vec<String> = sample.iter().map(|i| format!("e{i}")).collect();
    for (name, rec) in names.iter().zip(read_all(st.as_ref(), &names).await) {
        let rec = rec.unwrap_or_else(|| panic!("{name} lost"));
        assert_eq!(rec.run_id.as_deref(), Some(run_id));
        let w = want[name];
        assert!((rec.prediction - w).abs() <= 1e-6 * w.abs().max(1.0));
    }
    let keys: u64 = redis.command(&["DBSIZE"])[1..].trim().parse().unwrap();
    assert_eq!(keys, n as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialize_loads_features_the_real_time_path_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("f.parquet");
    write_parquet(&input, 0..1000, &[3]);
    let redis = RedisServer::start();
    let out = tandem(&[
        "materialize",
        "--input",
        input.to_str().unwrap(),
        "--store",
        &redis.url(),
        "--model",
        model_path().to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let s = summary(&out);
    assert_eq!(s["rows_written"], 1000);
    assert_eq!(s["filled"], serde_json::json!({"missing_feature": 1}));
    let st = tandem_store::open(&redis.url()).unwrap();
    let got = st.get_features(&["e7".into(), "e3".into()]).await.unwrap();
    let e7 = got[0].as_ref().unwrap();
    assert_eq!(e7.len(), WIDTH);
    assert_eq!(e7.get("f5"), Some(value(7, 5)));
    assert_eq!(got[1].as_ref().unwrap().get("f2"), Some(0.0));
    assert!(!e7.names().iter().any(|n| &**n == "country"));
}

#[test]
fn materialize_in_strict_mode_fails_on_the_first_bad_row_in_input_order() {
    // The ids of a batch are checked before its values are read: a bad
    // value must still be reported before a duplicate id further down, and
    // a duplicate before a bad value further down.
    let dir = tempfile::tempdir().unwrap();
    let header = "entity_id,f0,f1,f2,f3,f4,f5,f6,f7\n";
    let cases = [
        (
            "a,1,2,3,4,5,6,7,8\nb,1,2,NaN,4,5,6,7,8\na,9,9,9,9,9,9,9,9\n",
            ["row 1", "\"b\"", "nan_feature"],
        ),
        (
            "a,1,2,3,4,5,6,7,8\na,9,9,9,9,9,9,9,9\nb,1,2,NaN,4,5,6,7,8\n",
            ["row 1", "\"a\"", "duplicate_id"],
        ),
    ];
    for (i, (rows, want)) in cases.iter().enumerate() {
        let csv = dir.path().join(format!("rows{i}.csv"));
        std::fs::write(&csv, format!("{header}{rows}")).unwrap();
        let store = dir.path().join(format!("s{i}.redb"));
        let base = [
            "materialize",
            "--input",
            csv.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
        ];
        let out = tandem(&[&base[..], &["--json"]].concat());
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let s = summary(&out);
        assert_eq!(s["rows_read"], 3);
        assert_eq!(s["rows_written"], 2);
        assert_eq!(s["skipped"], serde_json::json!({"duplicate_id": 1}));
        assert_eq!(s["filled"], serde_json::json!({"nan_feature": 1}));

        let out = tandem(&[&base[..], &["--strict"]].concat());
        assert_eq!(out.status.code(), Some(2));
        let err = text(&out.stderr);
        assert!(want.iter().all(|w| err.contains(w)), "case {i}: {err}");
    }
}

/// `calls` of one command in Redis's `INFO commandstats`, 0 when absent.
fn calls(stats: &str, command: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_without_a_ttl_are_written_a_thousand_keys_per_command() {
    // Without a TTL, rows go to Redis as `MSET`s of up to 1000 keys (one
    // command and one reply per thousand rows); with one, as `SET ... PX`.
    // Either way every row reads back whole.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("f.parquet");
    let n = 2500;
    write_parquet(&input, 0..n, &[]);
    let redis = RedisServer::start();
    for (namespace, ttl) in [("plain:", None), ("ttl:", Some("1h"))] {
        redis.command(&["CONFIG", "RESETSTAT"]);
        let store = format!("{}?namespace={namespace}", redis.url());
        let mut args = vec![
            "materialize",
            "--input",
            input.to_str().unwrap(),
            "--store",
            &store,
            "--json",
        ];
        if let Some(t) = ttl {
            args.extend(["--ttl", t]);
        }
        let out = tandem(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(summary(&out)["rows_written"], n);
        let stats = redis.command(&["INFO", "commandstats"]);
        match ttl {
            None => {
                assert_eq!(calls(&stats, "mset"), 3, "{stats}");
                assert_eq!(calls(&stats, "set"), 0, "{stats}");
            }
            Some(_) => {
                assert_eq!(calls(&stats, "mset"), 0, "{stats}");
                assert_eq!(calls(&stats, "set"), n as u64, "{stats}");
            }
        }
        let st = tandem_store::open(&store).unwrap();
        let ids: Vec<String> = (0..n).map(|i| format!("e{i}")).collect();
        let rows = st.get_features(&ids).await.unwrap();
        for (i, row) in rows.iter().enumerate() {
            let row = row.as_ref().unwrap_or_else(|e| panic!("e{i}: {e}"));
            assert_eq!(row.len(), WIDTH);
            for f in 0..WIDTH {
                assert_eq!(row.get(&format!("f{f}")), Some(value(i, f)), "e{i} f{f}");
            }
        }
        let key = format!("{namespace}features:e7");
        let pttl: i64 = redis.command(&["PTTL", &key])[1..].trim().parse().unwrap();
        match ttl {
            None => assert_eq!(pttl, -1, "{key} has no TTL"),
            Some(_) => assert!(pttl > 3_500_000 && pttl <= 3_600_000, "{key}: {pttl}"),
        }
    }
}
#[test]
fn a_run_waits_out_a_store_that_stalls_for_longer_than_a_second() {
    // Batch jobs bound a store call by 10 s unless the URL says otherwise
    // (serving keeps 1 s): a Redis that stalls for 2 s mid-run (DEBUG
    // SLEEP) delays the run and loses nothing.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.parquet");
    let n = 300_000;
    write_parquet(&input, 0..n, &[]);
    let redis = RedisServer::start_with(&["--enable-debug-command", "local"]);
    let child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "batch",
            "--model",
            model_path().to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--store",
            &redis.url(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let keys: u64 = redis.command(&["DBSIZE"])[1..].trim().parse().unwrap();
        if keys >= 10_000 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let stalled = Instant::now();
    assert!(redis.command(&["DEBUG", "SLEEP", "2"]).starts_with("+OK"));
    assert!(stalled.elapsed() >= Duration::from_secs(2));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let keys: u64 = redis.command(&["DBSIZE"])[1..].trim().parse().unwrap();
    assert_eq!(keys, n as u64);
}

#[test]
fn losing_redis_mid_run_fails_the_run_with_a_store_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.parquet");
    write_parquet(&input, 0..400_000, &[]);
    let mut redis = RedisServer::start();
    let url = format!("{}?timeout_ms=500", redis.url());
    let child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "batch",
            "--model",
            model_path().to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--store",
            &url,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let keys: u64 = redis.command(&["DBSIZE"])[1..].trim().parse().unwrap();
        if keys >= 10_000 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    redis.kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("store") && (err.contains("unavailable") || err.contains("timed out")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_file_describes_the_run_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let job_dir = dir.path().join("jobs");
    std::fs::create_dir_all(job_dir.join("data")).unwrap();
    write_parquet(&job_dir.join("data/features.parquet"), 0..1000, &[7]);
    let model = model_path().canonicalize().unwrap();
    // Relative paths in the file are relative to the file.
    let job = job_dir.join("nightly.toml");
    std::fs::write(
        &job,
        format!(
            "model = {:?}\ninput = \"data/features.parquet\"\nstore = \"out/preds.redb\"\n\
             ttl = \"2h\"\nwhere = \"country = 'FR'\"\nrun_id = \"nightly\"\n\
             output = \"out/preds.parquet\"\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(job_dir.join("out")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["batch", "--config", "jobs/nightly.toml", "--json"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    // `where` kept the even rows (FR); e7 (DE) has the null: all good.
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = summary(&out);
    assert_eq!(s["rows_read"], 500, "{s}");
    assert_eq!(s["run_id"], "nightly");
    assert!(job_dir.join("out/preds.parquet").exists());
    let store = tandem_store::open(job_dir.join("out/preds.redb").to_str().unwrap()).unwrap();
    let ids: Vec<String> = (0..1000).map(|i| format!("e{i}")).collect();
    let got = read_all(store.as_ref(), &ids).await;
    let m = Model::load(&model).unwrap();
    let want = expected(&m, &(0..1000).collect::<Vec<_>>(), &[7]);
    for (i, rec) in got.iter().enumerate() {
        if i % 2 == 0 {
            let rec = rec.as_ref().unwrap_or_else(|| panic!("e{i} missing"));
            assert!(
                (rec.prediction - want[&format!("e{i}")]).abs() < 1e-6,
                "e{i}"
            );
            assert_eq!(rec.run_id.as_deref(), Some("nightly"));
        } else {
            assert!(
                rec.is_none(),
                "e{i} is DE, filtered out by the file's where"
            );
        }
    }
    drop(store);

    // A flag overrides the file: --where keeps the DE rows instead.
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "batch",
            "--config",
            "jobs/nightly.toml",
            "--where",
            "country = 'DE'",
            "--run-id",
            "override",
            "--json",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let s = summary(&out);
    assert_eq!(s["rows_read"], 500, "{s}");
    assert_eq!(
        s["filled"]["missing_feature"], 1,
        "e7 is DE and has the null"
    );
    assert_eq!(s["run_id"], "override");

    // Bad files: an unknown key is named, a missing model is explained.
    let bad = job_dir.join("bad.toml");
    std::fs::write(&bad, "modle = \"x.onnx\"\n").unwrap();
    let out = tandem(&["batch", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("modle"), "{}", text(&out.stderr));
    std::fs::write(&bad, "input = \"x.parquet\"\n").unwrap();
    let out = tandem(&["batch", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no model"),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(
        &bad,
        "model = \"m.onnx\"\ninput = \"x.parquet\"\nttl = \"soon\"\n",
    )
    .unwrap();
    let out = tandem(&["batch", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("ttl"), "{}", text(&out.stderr));
}

#[test]
fn a_model_that_panics_while_scoring_fails_the_run_with_one_clear_error() {
    // tract panics on this model's rows whose values are not 0-3
    // (tandem_testing::write_scoring_panic_onnx).
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    tandem_testing::write_scoring_panic_onnx(&model, 2);
    let write = |path: &Path, bad: Option<usize>| {
        let mut csv = String::from("entity_id,a,b\n");
        for i in 0..5000 {
            let a = if Some(i) == bad { 9 } else { i % 4 };
            csv.push_str(&format!("e{i},{a},{}\n", (i + 1) % 4));
        }
        std::fs::write(path, csv).unwrap();
    };
    let (bad, good) = (dir.path().join("bad.csv"), dir.path().join("good.csv"));
    write(&bad, Some(4000));
    write(&good, None);
    let store = dir.path().join("s.redb");
    let run = |input: &Path| {
        tandem(&[
            "batch",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--json",
        ])
    };
    let out = run(&bad);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(line.contains("index out of bounds"), "{line}");
    assert_eq!(
        line.matches("the ONNX runtime panicked while scoring")
            .count(),
        1,
        "said once: {line}"
    );
    // The same model scores a file without such a row.
    let out = run(&good);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(summary(&out)["rows_scored"], 5000, "{}", text(&out.stdout));
}
