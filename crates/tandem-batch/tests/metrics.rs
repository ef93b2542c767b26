//! Batch-job metrics: with a recorder installed (as inside `tandem
//! serve`), a materialize and a batch run count their runs and rows by
//! outcome, and a failed run counts as failed.

use std::path::Path;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tandem_batch::{BatchOptions, MaterializeOptions, NoProgress, run_batch, run_materialize};

fn model() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models/xgboost_regressor/1/model.onnx")
}

/// 40 entities with features f0..f7; entity 7 lacks f3 (filled).
fn write_csv(path: &Path) {
    let mut s = String::from("entity_id,f0,f1,f2,f3,f4,f5,f6,f7\n");
    for i in 0..40 {
        s.push_str(&format!("e{i}"));
        for f in 0..8 {
            if i == 7 && f == 3 {
                s.push(',');
            } else {
                s.push_str(&format!(",{}", ((i * 31 + f * 7) % 19) as f64 / 10.0 - 0.9));
            }
        }
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

type Values = Vec<(metrics_util::CompositeKey, DebugValue)>;

/// Everything recorded since the last snapshot (the debugging recorder
/// resets counters as it reads them).
fn take(snap: &Snapshotter) -> Values {
    snap.snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v)| (k, v))
        .collect()
}

fn value<'a>(values: &'a Values, name: &str, labels: &[(&str, &str)]) -> Option<&'a DebugValue> {
    values.iter().find_map(|(key, v)| {
        let k = key.key();
        let matches = k.name() == name
            && labels
                .iter()
                .all(|(lk, lv)| k.labels().any(|l| l.key() == *lk && l.value() == *lv));
        matches.then_some(v)
    })
}

fn counter(values: &Values, name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(values, name, labels) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_and_rows_are_counted_by_outcome() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    recorder.install().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("f.csv");
    write_csv(&csv);
    let store = dir.path().join("t.redb").display().to_string();
    let input = csv.display().to_string();

    run_materialize(
        &MaterializeOptions::new(input.clone(), store.clone()),
        &NoProgress,
    )
    .await
    .unwrap();
    let mut opts = BatchOptions::new(model(), input);
    opts.store = Some(store);
    opts.ttl = Duration::from_secs(3600);
    let summary = run_batch(&opts, &NoProgress).await.unwrap();
    assert_eq!(summary.rows_scored, 40);

    let batch = [("job", "batch")];
    let snap_all = snap;
    let snap = &take(&snap_all);
    assert_eq!(
        counter(
            snap,
            "tandem_batch_runs_total",
            &[("job", "batch"), ("result", "partial")]
        ),
        1
    );
    assert_eq!(
        counter(
            snap,
            "tandem_batch_rows_total",
            &[batch[0], ("outcome", "read")]
        ),
        40
    );
    assert_eq!(
        counter(
            snap,
            "tandem_batch_rows_total",
            &[batch[0], ("outcome", "scored")]
        ),
        40
    );
    assert_eq!(
        counter(
            snap,
            "tandem_batch_rows_total",
            &[batch[0], ("outcome", "written")]
        ),
        40
    );
    assert_eq!(
        counter(
            snap,
            "tandem_batch_rows_total",
            &[batch[0], ("outcome", "filled")]
        ),
        1
    );
    assert_eq!(
        counter(
            snap,
            "tandem_batch_rows_total",
            &[("job", "materialize"), ("outcome", "written")]
        ),
        40
    );
    match value(snap, "tandem_batch_duration_seconds", &batch) {
        Some(DebugValue::Histogram(v)) => assert_eq!(v.len(), 1),
        other => panic!("{other:?}"),
    }
    match value(snap, "tandem_batch_last_rows_per_second", &batch) {
        Some(DebugValue::Gauge(v)) => assert!(v.into_inner() > 0.0, "{v}"),
        other => panic!("{other:?}"),
    }

    // A run that cannot start counts as failed, and adds no rows.
    let mut bad = BatchOptions::new(model(), "/nonexistent/f.csv");
    bad.output = Some(dir.path().join("o.parquet"));
    assert!(run_batch(&bad, &NoProgress).await.is_err());
    let snap = &take(&snap_all);
    assert_eq!(
        counter(
            snap,
            "tandem_batch_runs_total",
            &[("job", "batch"), ("result", "failed")]
        ),
        1
    );
    // No rows added by the failed run.
    assert_eq!(
        counter(
            snap,
            "tandem_batch_rows_total",
            &[batch[0], ("outcome", "read")]
        ),
        0
    );
}
