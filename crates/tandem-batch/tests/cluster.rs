//! `tandem batch` on an in-process Ballista cluster (scheduler and executor
//! in this process), into a real Redis started here, checked record by
//! record against the local run of the same job. The multi-process cluster
//! (real `tandem scheduler` and `tandem executor` processes, one killed
//! mid-job) is tested in the CLI crate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use tandem_batch::cluster::{ClusterTarget, run_batch_cluster};
use tandem_batch::{BatchError, BatchOptions, NoProgress, run_batch};
use tandem_core::PredictionRecord;
use tandem_testing::RedisServer;

const WIDTH: usize = 8;

fn model_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models/xgboost_regressor/1/model.onnx")
}

fn value(i: usize, f: usize) -> f64 {
    (((i * 7919 + f * 104_729) % 1000) as f64 / 100.0) - 5.0
}

/// Writes `files` Parquet files of `per_file` rows `e{i}` into `dir`, with
/// bad rows: a null id, a repeated id (same features), a NaN and a null
/// feature.
fn write_input(dir: &Path, files: usize, per_file: usize) {
    let mut fields = vec![Field::new("entity_id", DataType::Utf8, true)];
    fields.extend((0..WIDTH).map(|f| Field::new(format!("f{f}"), DataType::Float64, true)));
    let schema = Arc::new(Schema::new(fields));
    for file in 0..files {
        let rows: Vec<usize> = (file * per_file..(file + 1) * per_file).collect();
        let mut ids: Vec<Option<String>> = rows.iter().map(|i| Some(format!("e{i}"))).collect();
        let mut feats: Vec<Vec<Option<f64>>> = (0..WIDTH)
            .map(|f| rows.iter().map(|&i| Some(value(i, f))).collect())
            .collect();
        if file == 1 {
            ids[3] = None;
            // e5 again, with e5's features.
            ids[4] = Some("e5".into());
            for (f, col) in feats.iter_mut().enumerate() {
                col[4] = Some(value(5, f));
            }
            feats[2][10] = Some(f64::NAN);
            feats[5][11] = None;
        }
        let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from(ids))];
        for col in feats {
            cols.push(Arc::new(Float64Array::from(col)));
        }
        let path = dir.join(format!("part-{file}.parquet"));
        let mut writer =
            ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema.clone(), None)
                .unwrap();
        writer
            .write(&RecordBatch::try_new(schema.clone(), cols).unwrap())
            .unwrap();
        writer.close().unwrap();
    }
}

async fn records(redis: &RedisServer, ns: &str, n: usize) -> HashMap<String, PredictionRecord> {
    let store = tandem_store::open(&format!("{}?namespace={ns}", redis.url())).unwrap();
    let ids: Vec<String> = (0..n).map(|i| format!("e{i}")).collect();
    let got = store.get_predictions(&ids).await.unwrap();
    ids.into_iter()
        .zip(got)
        .filter_map(|(id, r)| r.ok().map(|r| (id, r)))
        .collect()
}

async fn read_output(path: &Path) -> HashMap<String, (f64, String, u64)> {
    let ctx = SessionContext::new();
    let df = ctx
        .read_parquet(path.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap();
    let mut out = HashMap::new();
    for b in df.collect().await.unwrap() {
        let id = cast(b.column(0), &DataType::Utf8).unwrap();
        let id = id.as_any().downcast_ref::<StringArray>().unwrap();
        let p = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
        let m = cast(b.column(2), &DataType::Utf8).unwrap();
        let m = m.as_any().downcast_ref::<StringArray>().unwrap();
        let v = b.column(3).as_any().downcast_ref::<UInt64Array>().unwrap();
        for r in 0..b.num_rows() {
            let prev = out.insert(
                id.value(r).to_owned(),
                (p.value(r), m.value(r).to_owned(), v.value(r)),
            );
            assert!(prev.is_none(), "{} written twice", id.value(r));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standalone_cluster_writes_what_the_local_run_writes() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    std::fs::create_dir(&input).unwrap();
    write_input(&input, 3, 2000);
    let n = 6000;

    let mut local = BatchOptions::new(model_path(), input.to_str().unwrap());
    local.store = Some(format!("{}?namespace=local:", redis.url()));
    local.output = Some(dir.path().join("local.parquet"));
    local.run_id = Some("run-1".into());
    let local_summary = run_batch(&local, &NoProgress).await.unwrap();

    let mut remote = local.clone();
    remote.store = Some(format!("{}?namespace=cluster:", redis.url()));
    remote.output = Some(dir.path().join("cluster.parquet"));
    redis.command(&["CONFIG", "RESETSTAT"]);
    let summary = run_batch_cluster(&remote, &ClusterTarget::Standalone, 3, 4, &NoProgress)
        .await
        .unwrap();
    // Each entity scored and written once, though 3 part jobs ran.
    let stats = redis.command(&["INFO", "commandstats"]);
    let sets: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_set:calls="))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no SET stats in {stats}"));
    assert_eq!(sets, 5998, "one write per entity");

    // The same counts, reason by reason.
    assert_eq!(summary.rows_read, local_summary.rows_read);
    assert_eq!(summary.rows_scored, local_summary.rows_scored);
    assert_eq!(summary.rows_written, local_summary.rows_written);
    assert_eq!(summary.skipped, local_summary.skipped);
    assert_eq!(summary.filled, local_summary.filled);
    assert_eq!(summary.rows_read, 6000);
    assert_eq!(summary.skipped.get("null_id"), Some(&1));
    assert_eq!(summary.skipped.get("duplicate_id"), Some(&1));
    assert_eq!(summary.filled.get("nan_feature"), Some(&1));
    assert_eq!(summary.filled.get("missing_feature"), Some(&1));
    assert_eq!(summary.exit_code(), 1);

    // The same records, entity by entity.
    let want = records(&redis, "local:", n).await;
    let got = records(&redis, "cluster:", n).await;
    assert_eq!(
        want.len(),
        5998,
        "every entity but the null id's and the repeat's row"
    );
    assert_eq!(got.len(), want.len());
    for (id, w) in &want {
        let g = &got[id];
        assert_eq!(g.prediction, w.prediction, "{id}");
        assert_eq!(g.digest, w.digest, "{id}");
        assert_eq!(g.inputs, w.inputs, "{id}");
        assert_eq!(g.run_id.as_deref(), Some("run-1"));
        assert_eq!(g.model, w.model);
        assert_eq!(g.version, w.version);
    }

    // The Parquet output: a directory of 3 parts holding the same rows.
    let out = dir.path().join("cluster.parquet");
    assert!(out.is_dir());
    let parts = std::fs::read_dir(&out).unwrap().count();
    assert_eq!(parts, 3);
    let want = read_output(&dir.path().join("local.parquet")).await;
    let got = read_output(&out).await;
    assert_eq!(got, want);
    // No temporary directory is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_fails_before_writing_and_names_the_entity() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    write_input(dir.path(), 2, 500);
    let mut opts = BatchOptions::new(model_path(), dir.path().to_str().unwrap());
    opts.store = Some(redis.url());
    opts.strict = true;
    let err = run_batch_cluster(&opts, &ClusterTarget::Standalone, 1, 4, &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, BatchError::BadEntity { .. }), "{err}");
    assert!(err.to_string().contains("null"), "{err}");
    assert_eq!(
        redis.command(&["DBSIZE"]).trim().trim_start_matches(':'),
        "0",
        "nothing written"
    );

    // Without the null id, the repeated id is named.
    let clean = tempfile::tempdir().unwrap();
    write_input(clean.path(), 1, 100);
    let mut fields = vec![Field::new("entity_id", DataType::Utf8, true)];
    fields.extend((0..WIDTH).map(|f| Field::new(format!("f{f}"), DataType::Float64, true)));
    let schema = Arc::new(Schema::new(fields));
    let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from(vec!["e7"]))];
    cols.extend((0..WIDTH).map(|f| Arc::new(Float64Array::from(vec![value(7, f)])) as ArrayRef));
    let mut w = ArrowWriter::try_new(
        std::fs::File::create(clean.path().join("again.parquet")).unwrap(),
        schema.clone(),
        None,
    )
    .unwrap();
    w.write(&RecordBatch::try_new(schema, cols).unwrap())
        .unwrap();
    w.close().unwrap();
    opts.input = clean.path().to_str().unwrap().to_owned();
    let err = run_batch_cluster(&opts, &ClusterTarget::Standalone, 1, 4, &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("\"e7\""), "{err}");
    assert_eq!(
        redis.command(&["DBSIZE"]).trim().trim_start_matches(':'),
        "0",
        "nothing written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_jobs_check_their_flags_first() {
    let dir = tempfile::tempdir().unwrap();
    write_input(dir.path(), 1, 10);
    let mut opts = BatchOptions::new(model_path(), dir.path().to_str().unwrap());
    opts.store = Some(dir.path().join("db.redb").to_string_lossy().into_owned());
    // An embedded store cannot be shared by executors.
    let err = run_batch_cluster(
        &opts,
        &ClusterTarget::Remote("df://127.0.0.1:1".into()),
        1,
        4,
        &NoProgress,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("shared"), "{err}");
    opts.resume = true;
    opts.run_id = Some("r".into());
    let err = run_batch_cluster(&opts, &ClusterTarget::Standalone, 1, 4, &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
    // Nothing listening: a clear error naming the scheduler.
    let redis = RedisServer::start();
    let mut opts = BatchOptions::new(model_path(), dir.path().to_str().unwrap());
    opts.store = Some(redis.url());
    let port = tandem_testing::free_port();
    let url = format!("df://127.0.0.1:{port}");
    let err = run_batch_cluster(&opts, &ClusterTarget::Remote(url), 1, 4, &NoProgress)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&port.to_string()),
        "the error names the scheduler: {err}"
    );
}
