//! Batch benchmark, the parts the CLI cannot time on their own: write the
//! benchmark's Parquet input (ROWS x 32 float features), then time a scan of
//! it, scan + score through `predict`, and scoring the same rows from an
//! in-memory matrix with no I/O (2 threads, blocks of 8192 rows). `ROUNDS=N`
//! repeats the last two N times, alternating, and reports every round.
//!
//! ```text
//! cargo run --release -p tandem-batch --example batch_bench -- DATA.parquet ROWS MODEL.onnx [MODEL.onnx...]
//! ```
//! End-to-end runs into each store are timed with the real binary
//! (docs/benchmarks.md has the commands).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{ArrayRef, Float32Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use futures::StreamExt;
use tandem_batch::plan::{InputSpec, parallel_source, scoring_query, session};
use tandem_model::Model;

/// The allocator of the `tandem` binary, so that the figures are the
/// binary's (glibc's malloc maps and unmaps every block of a megabyte or
/// more, and its page faults were a fifth of the scan + score run).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const F: usize = 32;

fn value(i: usize, f: usize) -> f32 {
    let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (f as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    ((h >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
}

fn write_data(path: &Path, rows: usize) {
    let mut fields = vec![Field::new("entity_id", DataType::Utf8, false)];
    fields.extend((0..F).map(|f| Field::new(format!("f{f}"), DataType::Float32, false)));
    let schema = Arc::new(Schema::new(fields));
    let file = std::fs::File::create(path).expect("create data file");
    let mut w = ArrowWriter::try_new(file, schema.clone(), None).expect("parquet writer");
    for start in (0..rows).step_by(100_000) {
        let end = (start + 100_000).min(rows);
        let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(
            (start..end).map(|i| format!("user-{i:09}")),
        ))];
        for f in 0..F {
            cols.push(Arc::new(Float32Array::from_iter_values(
                (start..end).map(|i| value(i, f)),
            )));
        }
        w.write(&RecordBatch::try_new(schema.clone(), cols).expect("batch"))
            .expect("write");
    }
    w.close().expect("close");
}

async fn drain(ctx: &datafusion::prelude::SessionContext, sql: &str) -> (usize, f64) {
    let t = Instant::now();
    let mut stream = ctx
        .sql(sql)
        .await
        .expect("plan")
        .execute_stream()
        .await
        .expect("run");
    let mut rows = 0;
    while let Some(b) = stream.next().await {
        rows += b.expect("batch").num_rows();
    }
    (rows, t.elapsed().as_secs_f64())
}

/// Seconds to score `matrix` in blocks of 8192 rows on 2 threads.
fn score_in_memory(model: &Arc<Model>, matrix: &[f32]) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for half in matrix.chunks(matrix.len().div_ceil(2)) {
            let model = model.clone();
            s.spawn(move || {
                for block in half.chunks(8192 * F) {
                    model.predict_values(block, F).expect("predict");
                }
            });
        }
    });
    t.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (data, rows, models) = match args.as_slice() {
        [data, rows, models @ ..] if !models.is_empty() => (
            data.clone(),
            rows.parse::<usize>().expect("ROWS"),
            models.to_vec(),
        ),
        _ => {
            eprintln!("usage: batch_bench DATA.parquet ROWS MODEL.onnx [MODEL.onnx...]");
            std::process::exit(2);
        }
    };
    if !Path::new(&data).exists() {
        let t = Instant::now();
        write_data(Path::new(&data), rows);
        eprintln!(
            "wrote {rows} rows to {data} in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let names: Vec<String> = (0..F).map(|f| format!("f{f}")).collect();
    println!(
        "| model | scan rows/s | scan + score rows/s | in-memory score rows/s (2 threads) | scan+score / in-memory |"
    );
    println!("|---|---:|---:|---:|---:|");
    for path in &models {
        let model = Arc::new(Model::load(path).expect("model"));
        let input = InputSpec::resolve(&data).expect("input");
        let ctx = session(&input, Some((&model, 0.0))).await.expect("session");
        let source = parallel_source(&ctx, "SELECT * FROM input")
            .await
            .expect("source");
        let schema = ctx
            .sql(&source)
            .await
            .expect("schema")
            .schema()
            .as_arrow()
            .clone();
        let scan_sql = scoring_query(&source, "entity_id", &names, &schema, None, false);
        let (n, scan) = drain(&ctx, &scan_sql).await;
        if std::env::var_os("SCAN_ONLY").is_some() {
            let mut times = Vec::new();
            for _ in 0..rounds {
                times.push(format!("{:.0}", n as f64 / drain(&ctx, &scan_sql).await.1));
            }
            println!("| {} | scan only: {} |", model.name(), times.join(" / "));
            continue;
        }
        let score_sql = scoring_query(&source, "entity_id", &names, &schema, None, true);
        if std::env::var_os("EXPLAIN").is_some() {
            let plan = ctx
                .sql(&format!("EXPLAIN {score_sql}"))
                .await
                .expect("explain");
            plan.show().await.expect("show");
        }
        // The same rows as one matrix, scored in blocks of 8192 on 2 threads.
        let matrix: Vec<f32> = (0..n)
            .flat_map(|i| (0..F).map(move |f| value(i, f)))
            .collect();
        // ROUNDS (default 1) rounds of scan + score then in-memory scoring,
        // one after the other, so that both see the same machine.
        let (mut scored, mut mem) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            scored.push(drain(&ctx, &score_sql).await.1);
            mem.push(score_in_memory(&model, &matrix));
        }
        let rate = |t: &[f64]| {
            t.iter()
                .map(|t| format!("{:.0}", n as f64 / t))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let ratio = scored
            .iter()
            .zip(&mem)
            .map(|(s, m)| format!("{:.2}x", s / m))
            .collect::<Vec<_>>()
            .join(" / ");
        println!(
            "| {} | {:.0} | {} | {} | {ratio} |",
            model.name(),
            n as f64 / scan,
            rate(&scored),
            rate(&mem),
        );
    }
}
