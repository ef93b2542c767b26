//! `tandem refresh`, the real binary over the embedded store, checked
//! entity by entity: drifted features, old predictions, a new model
//! version, the active-only filter, missing predictions, and reruns that
//! find nothing left to do.

mod serve_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use serve_common::{WIDTH, add_version, churn_repo, predict, s, tandem, tandem_ok, value};
use tandem_core::PredictionRecord;
use tandem_model::Model;

/// A CSV of e0..e(n-1); `shift(i)` is added to feature f0 of entity i.
fn write(path: &Path, n: usize, shift: impl Fn(usize) -> f64) {
    let mut s = String::from("entity_id");
    for f in 0..WIDTH {
        s.push_str(&format!(",f{f}"));
    }
    s.push('\n');
    for i in 0..n {
        s.push_str(&format!("e{i}"));
        for f in 0..WIDTH {
            let v = value(i, f) + if f == 0 { shift(i) } else { 0.0 };
            s.push_str(&format!(",{v}"));
        }
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

fn row(i: usize, shift: f64) -> Vec<f32> {
    (0..WIDTH)
        .map(|f| (value(i, f) + if f == 0 { shift } else { 0.0 }) as f32)
        .collect()
}

/// Every stored record of e0..e(n-1).
fn records(store: &Path, n: usize) -> BTreeMap<usize, PredictionRecord> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let st = tandem_store::open(s(store)).unwrap();
        let ids: Vec<String> = (0..n).map(|i| format!("e{i}")).collect();
        let got = st.get_predictions(&ids).await.unwrap();
        got.into_iter()
            .enumerate()
            .filter_map(|(i, r)| r.ok().map(|r| (i, r)))
            .collect()
    })
}

fn refresh(args: &[&str]) -> Value {
    let mut all = vec!["refresh"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = tandem(&all);
    assert!(
        out.status.success(),
        "{all:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn rescored_set(store: &Path, n: usize, run: &str) -> Vec<usize> {
    records(store, n)
        .into_iter()
        .filter(|(_, r)| r.run_id.as_deref() == Some(run))
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn refresh_rescores_exactly_what_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let v1 = repo.join("churn/1/model.onnx");
    let store = dir.path().join("t.redb");
    let (old, new) = (dir.path().join("v1.csv"), dir.path().join("v2.csv"));
    write(&old, 100, |_| 0.0);
    tandem_ok(&[
        "batch",
        "--model",
        s(&v1),
        "--input",
        s(&old),
        "--store",
        s(&store),
        "--run-id",
        "base",
    ]);
    // e0..e9 drift by 1.0, e10..e19 by 0.001; e100 is new.
    let shift = |i: usize| match i {
        0..=9 => 1.0,
        10..=19 => 0.001,
        _ => 0.0,
    };
    write(&new, 101, shift);
    std::thread::sleep(Duration::from_millis(1500));

    let r = refresh(&[
        "--model",
        s(&v1),
        "--input",
        s(&new),
        "--store",
        s(&store),
        "--changed-threshold",
        "0.1",
        "--run-id",
        "drift",
    ]);
    assert_eq!(r["checked"], 101);
    assert_eq!(r["rescored"], 11, "{r}");
    assert_eq!(r["reasons"]["changed"], 10);
    assert_eq!(r["reasons"]["missing"], 1);
    assert_eq!(r["unchanged"], 90);
    assert!((r["rescored_fraction"].as_f64().unwrap() - 11.0 / 101.0).abs() < 1e-12);
    // Entity by entity: e0..e9 and e100 carry the refresh, with the model's
    // prediction on their new features; the rest still carry the batch run.
    let model = Model::load(&v1).unwrap();
    let recs = records(&store, 101);
    for (i, rec) in &recs {
        let want_run = if *i < 10 || *i == 100 {
            "drift"
        } else {
            "base"
        };
        assert_eq!(rec.run_id.as_deref(), Some(want_run), "e{i}");
        if want_run == "drift" {
            let want = predict(&model, &[row(*i, shift(*i))])[0];
            assert!((rec.prediction - want).abs() < 1e-6, "e{i}");
            assert!(rec.inputs.is_some());
        }
    }
    // Idempotent: nothing left.
    let again = refresh(&[
        "--model",
        s(&v1),
        "--input",
        s(&new),
        "--store",
        s(&store),
        "--changed-threshold",
        "0.1",
    ]);
    assert_eq!(again["rescored"], 0, "{again}");

    // Older than 1 s: the batch run's records (e10..e99), not the fresh ones.
    let r = refresh(&[
        "--model",
        s(&v1),
        "--input",
        s(&new),
        "--store",
        s(&store),
        "--older-than",
        "1s",
        "--run-id",
        "old",
    ]);
    assert_eq!(r["reasons"]["older"], 90, "{r}");
    assert_eq!(
        rescored_set(&store, 101, "old"),
        (10..100).collect::<Vec<_>>()
    );

    // A new model version: --model-changed rescores every entity.
    add_version(&repo, "churn", 2, "lightgbm_regressor");
    let v2 = repo.join("churn/2/model.onnx");
    let r = refresh(&[
        "--model",
        s(&v2),
        "--input",
        s(&new),
        "--store",
        s(&store),
        "--model-changed",
        "--run-id",
        "v2",
    ]);
    assert_eq!(r["reasons"]["model_changed"], 101, "{r}");
    assert!(records(&store, 101).values().all(|r| r.version == 2));

    // Only the active: e5 and e50 were asked for.
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let st = tandem_store::open(s(&store)).unwrap();
            st.record_activity(&["e5".into(), "e50".into(), "e5".into()], SystemTime::now())
                .await
                .unwrap();
        });
    }
    let r = refresh(&[
        "--model",
        s(&v1),
        "--input",
        s(&new),
        "--store",
        s(&store),
        "--model-changed",
        "--active-within",
        "1h",
        "--run-id",
        "active",
    ]);
    assert_eq!(r["rescored"], 2, "{r}");
    assert_eq!(r["inactive"], 99);
    assert_eq!(rescored_set(&store, 101, "active"), vec![5, 50]);
}

#[test]
fn refresh_needs_a_reason_and_valid_flags() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let v1 = repo.join("churn/1/model.onnx");
    let csv = dir.path().join("f.csv");
    write(&csv, 3, |_| 0.0);
    let store = dir.path().join("t.redb");
    for (extra, says) in [
        (vec![], "nothing to refresh on"),
        (vec!["--changed-threshold=-1"], "--changed-threshold"),
        (vec!["--older-than", "soon"], "soon"),
    ] {
        let mut args = vec![
            "refresh",
            "--model",
            s(&v1),
            "--input",
            s(&csv),
            "--store",
            s(&store),
        ];
        args.extend(extra);
        let out = tandem(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// `keyspace_hits` and `keyspace_misses` of a Redis: the keys it was asked
/// to read.
fn reads(redis: &tandem_testing::RedisServer) -> (u64, u64) {
    let info = redis.command(&["INFO", "stats"]);
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {info}"))
    };
    (field("keyspace_hits"), field("keyspace_misses"))
}

#[test]
fn a_digest_index_clears_unchanged_entities_without_reading_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let v1 = repo.join("churn/1/model.onnx");
    let redis = tandem_testing::RedisServer::start();
    let url = redis.url();
    let index = dir.path().join("churn.idx");
    let (old, new) = (dir.path().join("v1.csv"), dir.path().join("v2.csv"));
    write(&old, 200, |_| 0.0);
    tandem_ok(&[
        "batch",
        "--model",
        s(&v1),
        "--input",
        s(&old),
        "--store",
        &url,
        "--run-id",
        "base",
        "--index",
        s(&index),
    ]);
    assert_eq!(
        std::fs::metadata(&index).unwrap().len() as usize,
        8 + 4 + 5 + 8 + 8 + 4 + 200 * (24 + 2 * WIDTH)
    );
    // e0..e9 drift by 1.0, e10..e19 by 0.001; e200 is new.
    let shift = |i: usize| match i {
        0..=9 => 1.0,
        10..=19 => 0.001,
        _ => 0.0,
    };
    write(&new, 201, shift);

    let before = reads(&redis);
    let r = refresh(&[
        "--model",
        s(&v1),
        "--input",
        s(&new),
        "--store",
        &url,
        "--changed-threshold",
        "0.1",
        "--run-id",
        "drift",
        "--index",
        s(&index),
    ]);
    let after = reads(&redis);
    assert_eq!(r["checked"], 201, "{r}");
    assert_eq!(r["rescored"], 11, "{r}");
    assert_eq!(r["reasons"]["changed"], 10);
    assert_eq!(r["reasons"]["missing"], 1);
    assert_eq!(r["unchanged"], 190);
    // e20..e199 have the indexed digest; e0..e19 are judged by the inputs
    // the index keeps (e0..e9 moved past the threshold, e10..e19 did not).
    assert_eq!(r["cleared_by_index"], 190, "{r}");
    // Only e200, which the index does not know, was read (and missing).
    assert_eq!((after.0 - before.0, after.1 - before.1), (0, 1));
    // The 11 rescored went into the index as one journal segment appended
    // to the file (header, 11 records of 32 bytes and their inputs,
    // checksum), not a rewrite.
    assert_eq!(
        std::fs::metadata(&index).unwrap().len() as usize,
        8 + 4 + 5 + 8 + 8 + 4 + 200 * (24 + 2 * WIDTH) + 16 + 11 * (32 + 2 * WIDTH) + 8
    );
    // The same outcome as without the index, entity by entity.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let recs = rt.block_on(async {
        let st = tandem_store::open(&url).unwrap();
        let ids: Vec<String> = (0..201).map(|i| format!("e{i}")).collect();
        st.get_predictions(&ids).await.unwrap()
    });
    for (i, rec) in recs.iter().enumerate() {
        let rec = rec.as_ref().unwrap();
        let want = if i < 10 || i == 200 { "drift" } else { "base" };
        assert_eq!(rec.run_id.as_deref(), Some(want), "e{i}");
    }

    // The index now knows the rescored entities: a rerun reads nothing
    // (e10..e19 still differ from the index's digest by a drift below the
    // threshold) and rescores nothing.
    let before = reads(&redis);
    let again = refresh(&[
        "--model",
        s(&v1),
        "--input",
        s(&new),
        "--store",
        &url,
        "--changed-threshold",
        "0.1",
        "--index",
        s(&index),
    ]);
    let after = reads(&redis);
    assert_eq!(again["rescored"], 0, "{again}");
    assert_eq!(again["cleared_by_index"], 201, "{again}");
    assert_eq!(after, before, "no store read");

    // The same rows in reverse order: the index is walked against its own
    // order (every lookup misses the cursor) and clears the same entities.
    let text = std::fs::read_to_string(&new).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[1..].reverse();
    let reversed = dir.path().join("v2-reversed.csv");
    std::fs::write(&reversed, lines.join("\n") + "\n").unwrap();
    let before = reads(&redis);
    let again = refresh(&[
        "--model",
        s(&v1),
        "--input",
        s(&reversed),
        "--store",
        &url,
        "--changed-threshold",
        "0.1",
        "--index",
        s(&index),
    ]);
    let after = reads(&redis);
    assert_eq!(again["checked"], 201, "{again}");
    assert_eq!(again["rescored"], 0, "{again}");
    assert_eq!(again["cleared_by_index"], 201, "{again}");
    assert_eq!(after, before, "no store read");

    // Too old by the index's clock: nothing is cleared, and the index
    // says so without a read.
    std::thread::sleep(Duration::from_millis(2100));
    let before = reads(&redis);
    let r = refresh(&[
        "--model",
        s(&v1),
        "--input",
        s(&new),
        "--store",
        &url,
        "--older-than",
        "1s",
        "--run-id",
        "old",
        "--index",
        s(&index),
    ]);
    assert_eq!(r["cleared_by_index"], 0, "{r}");
    assert_eq!(r["reasons"]["older"], 201, "{r}");
    assert_eq!(reads(&redis), before, "no store read");

    // An index of version 1 clears nothing for --model-changed on version 2;
    // rewritten for version 2, it clears everything the next time.
    add_version(&repo, "churn", 2, "lightgbm_regressor");
    let v2 = repo.join("churn/2/model.onnx");
    let r = refresh(&[
        "--model",
        s(&v2),
        "--input",
        s(&new),
        "--store",
        &url,
        "--model-changed",
        "--index",
        s(&index),
    ]);
    assert_eq!(r["reasons"]["model_changed"], 201, "{r}");
    assert_eq!(r["cleared_by_index"], 0);
    let before = reads(&redis);
    let r = refresh(&[
        "--model",
        s(&v2),
        "--input",
        s(&new),
        "--store",
        &url,
        "--model-changed",
        "--index",
        s(&index),
    ]);
    assert_eq!(r["rescored"], 0, "{r}");
    assert_eq!(r["cleared_by_index"], 201);
    assert_eq!(reads(&redis), before, "no store read at all");

    // A file that is not an index is refused, naming it.
    let bad = dir.path().join("bad.idx");
    std::fs::write(&bad, b"not an index").unwrap();
    let out = tandem(&[
        "refresh",
        "--model",
        s(&v2),
        "--input",
        s(&new),
        "--store",
        &url,
        "--model-changed",
        "--index",
        s(&bad),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.idx"));
}

#[test]
fn a_resumed_refresh_skips_what_its_run_rescored_even_with_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let v1 = repo.join("churn/1/model.onnx");
    let redis = tandem_testing::RedisServer::start();
    let url = redis.url();
    let index = dir.path().join("churn.idx");
    let (old, new) = (dir.path().join("v1.csv"), dir.path().join("v2.csv"));
    write(&old, 100, |_| 0.0);
    tandem_ok(&[
        "batch",
        "--model",
        s(&v1),
        "--input",
        s(&old),
        "--store",
        &url,
        "--run-id",
        "base",
        "--index",
        s(&index),
    ]);
    // e0..e9 drift by 1.0, e10..e19 by 0.001.
    write(&new, 100, |i| match i {
        0..=9 => 1.0,
        10..=19 => 0.001,
        _ => 0.0,
    });
    let common = [
        "--model",
        s(&v1),
        "--input",
        s(&new),
        "--store",
        &url,
        "--changed-threshold",
        "0.1",
    ];
    // Run "r" rescores e0..e9 but (as if killed before it saved the
    // index) leaves the index as the batch run wrote it.
    let mut first = common.to_vec();
    first.extend(["--run-id", "r"]);
    let r = refresh(&first);
    assert_eq!(r["rescored"], 10, "{r}");
    let index_before = std::fs::read(&index).unwrap();

    // Resumed with the index: the index still lists e0..e9's old inputs,
    // which would say "rescore"; a resume reads their records instead and
    // finds them done by run "r".
    let before = reads(&redis);
    let mut resumed = common.to_vec();
    resumed.extend(["--resume", "r", "--index", s(&index)]);
    let r = refresh(&resumed);
    let after = reads(&redis);
    assert_eq!(r["run_id"], "r", "{r}");
    assert_eq!(r["already_done"], 10, "{r}");
    assert_eq!(r["rescored"], 0, "{r}");
    assert_eq!(r["unchanged"], 90, "{r}");
    assert_eq!(r["cleared_by_index"], 80, "e20..e99 by their digests: {r}");
    assert_eq!(after.0 - before.0, 20, "e0..e19 were read");
    assert_eq!(
        std::fs::read(&index).unwrap(),
        index_before,
        "nothing rescored"
    );
    let recs = records_in(&url, 100);
    for (i, rec) in recs.iter().enumerate() {
        let want = if i < 10 { "r" } else { "base" };
        assert_eq!(rec.run_id.as_deref(), Some(want), "e{i}");
    }
}

/// Every stored record of e0..e(n-1) in the store at `url`, in order.
fn records_in(url: &str, n: usize) -> Vec<PredictionRecord> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let st = tandem_store::open(url).unwrap();
        let ids: Vec<String> = (0..n).map(|i| format!("e{i}")).collect();
        let got = st.get_predictions(&ids).await.unwrap();
        got.into_iter().map(|r| r.unwrap()).collect()
    })
}

/// Writes e0..e(n-1) as Parquet with FLOAT (f32) or DOUBLE feature columns
/// holding the same f32 values.
fn write_parquet(path: &Path, n: usize, float32: bool) {
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
    fields.extend((0..WIDTH).map(|f| Field::new(format!("f{f}"), kind.clone(), true)));
    let schema = Arc::new(Schema::new(fields));
    let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(
        (0..n).map(|i| format!("e{i}")),
    ))];
    for f in 0..WIDTH {
        // One null and one NaN (both filled) besides plain values.
        let v = |i: usize| match (i, f) {
            (3, 1) => None,
            (4, 2) => Some(f32::NAN),
            _ => Some(value(i, f) as f32),
        };
        cols.push(if float32 {
            Arc::new(Float32Array::from_iter((0..n).map(v)))
        } else {
            Arc::new(Float64Array::from_iter((0..n).map(|i| v(i).map(f64::from))))
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
fn float_and_double_inputs_hash_alike_through_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let repo = churn_repo(dir.path());
    let v1 = repo.join("churn/1/model.onnx");
    let store = dir.path().join("store.redb");
    let index = dir.path().join("churn.idx");
    let (f32_file, f64_file) = (
        dir.path().join("f32.parquet"),
        dir.path().join("f64.parquet"),
    );
    write_parquet(&f32_file, 100, true);
    write_parquet(&f64_file, 100, false);
    // Scored from FLOAT columns, refreshed from the same values as DOUBLE
    // and as FLOAT: the index clears every entity either way.
    let out = tandem(&[
        "batch",
        "--model",
        s(&v1),
        "--input",
        s(&f32_file),
        "--store",
        s(&store),
        "--index",
        s(&index),
    ]);
    // Exit 1: the null and the NaN were filled (and counted).
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for input in [&f64_file, &f32_file] {
        let r = refresh(&[
            "--model",
            s(&v1),
            "--input",
            s(input),
            "--store",
            s(&store),
            "--changed-threshold",
            "0",
            "--index",
            s(&index),
        ]);
        assert_eq!(r["checked"], 100, "{r}");
        assert_eq!(r["cleared_by_index"], 100, "{}: {r}", input.display());
        assert_eq!(r["rescored"], 0, "{r}");
    }
}
