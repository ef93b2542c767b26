//! Resident memory of each model once loaded: RSS before and after
//! `Model::load` (Linux, from /proc/self/statm), one model per process run.
//!
//! `cargo run --release -p tandem-model --example footprint -- MODEL.onnx`

use tandem_core::FeatureBatch;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: footprint MODEL.onnx");
        std::process::exit(2);
    };
    let before = rss_bytes();
    let model = match tandem_model::Model::load(&path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    // One run so that lazily built plan state is counted too.
    let _ = model.predict(&FeatureBatch::new(vec![0.0; model.width()], model.width()).expect("row"));
    let after = rss_bytes();
    println!(
        "{}\t{:.2} MB\t{:.2} MB\t{:.2} MB",
        model.name(),
        before as f64 / 1e6,
        after as f64 / 1e6,
        after.saturating_sub(before) as f64 / 1e6
    );
}
