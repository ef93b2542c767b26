//! Rows/s of every fixture model at batch 1, 64 and 8192 on one thread.
//!
//! Inputs are the fixture's sample rows tiled to the batch size, exactly as
//! `scripts/fixtures/make_models.py --bench` builds them for onnxruntime, so
//! the two can be compared (`scripts/bench/report.py`).
//!
//! `cargo bench -p tandem-model --bench models [-- FILTER]`

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tandem_core::FeatureBatch;
use tandem_model::Model;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models")
}

fn sample_rows(dir: &Path) -> (Vec<f32>, usize) {
    let text = std::fs::read_to_string(dir.join("1/reference.json")).expect("reference.json");
    let r: serde_json::Value = serde_json::from_str(&text).expect("json");
    let rows = r["inputs"].as_array().expect("inputs");
    let width = rows[0].as_array().expect("row").len();
    let flat = rows
        .iter()
        .flat_map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_f64().map_or(f32::NAN, |x| x as f32))
        })
        .collect();
    (flat, width)
}

fn bench_models(c: &mut Criterion) {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let model = Model::load(dir.join("1/model.onnx")).expect("model loads");
        let (flat, width) = sample_rows(&dir);
        let mut group = c.benchmark_group(&name);
        group
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2))
            .sample_size(20);
        for batch in [1usize, 64, 8192] {
            let values: Vec<f32> = flat.iter().copied().cycle().take(batch * width).collect();
            let input = FeatureBatch::new(values, width).expect("batch");
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::from_parameter(batch), &input, |b, input| {
                b.iter(|| model.predict(input).expect("predict"));
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_models);
criterion_main!(benches);
