//! Resident memory of a model once loaded: RSS before and after
//! `Model::load` plus one prediction (Linux, /proc/self/statm).
//!
//! The first model a process loads also pays for tract's one-time runtime
//! set-up (operator registry, kernels, thread-locals). Pass `--warm
//! OTHER.onnx` to load a small model first, so that the figure is the
//! model's own.
//!
//! `cargo run --release -p tandem-model --example footprint -- [--warm TINY.onnx] MODEL.onnx`

use tandem_core::FeatureBatch;
use tandem_model::Model;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn load_and_run(path: &str) -> Model {
    let model = match Model::load(path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let row = FeatureBatch::new(vec![0.0; model.width()], model.width()).expect("row");
    if let Err(e) = model.predict(&row) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    model
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (warm, path) = match args.as_slice() {
        [flag, warm, path] if flag == "--warm" => (Some(warm.clone()), path.clone()),
        [path] => (None, path.clone()),
        _ => {
            eprintln!("usage: footprint [--warm TINY.onnx] MODEL.onnx");
            std::process::exit(2);
        }
    };
    let _warm = warm.as_deref().map(load_and_run);
    let before = rss_bytes();
    let model = load_and_run(&path);
    let after = rss_bytes();
    println!(
        "{}\tRSS before {:.2} MB\tafter {:.2} MB\tmodel {:.2} MB",
        model.name(),
        before as f64 / 1e6,
        after as f64 / 1e6,
        after.saturating_sub(before) as f64 / 1e6
    );
}
