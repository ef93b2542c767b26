//! The `tandem` binary: a thin command line over the tandem crates.

mod batch;
mod bench;
mod cluster;
mod config;
mod cost;
mod input;
mod jobfile;
mod models;
mod quickstart;
mod schedule;
mod serve;
mod telemetry;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the server allocates small, short-lived buffers on several
/// threads at high rates, where glibc's allocator spent a fifth of the CPU
/// (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns the memory freed since the last call to the operating system.
///
/// mimalloc gives freed pages back only after a delay and only when the
/// thread that freed them allocates again, so the transient memory of
/// loading and optimizing a model (tens of MB) would stay resident in an
/// idle server. Called after loads, not per request: it walks the heaps.
pub(crate) fn release_free_memory() {
    // `mi_collect` is part of the mimalloc library the allocator above links
    // (its Rust binding sits behind a feature this build does not need).
    #[allow(unsafe_code)]
    unsafe extern "C" {
        fn mi_collect(force: bool);
    }
    // SAFETY: `mi_collect` takes no pointers and may be called from any
    // thread at any time; `force` also purges delayed frees at once.
    #[allow(unsafe_code)]
    unsafe {
        mi_collect(true)
    };
}

/// Batch and real-time ML predictions from one small binary.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole loop in one command, no server needed: an example model,
    /// 100k synthetic entities, features materialized and batch-scored
    /// into the embedded store, then serving with the dashboard.
    Quickstart(quickstart::QuickstartArgs),
    /// Inspect models and run quick predictions.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Score every entity of a Parquet/CSV data set into the prediction
    /// store and/or a Parquet file.
    Batch(batch::BatchArgs),
    /// Load entity features from Parquet/CSV into the feature store.
    Materialize(batch::MaterializeArgs),
    /// Score the most active entities (or a list) ahead of demand, from the
    /// feature store, as fresh predictions.
    Warm(batch::WarmArgs),
    /// Rescore only the entities that need it: features drifted, prediction
    /// too old, made by another model version; optionally only the active.
    Refresh(batch::RefreshArgs),
    /// Serve predictions over HTTP: the native entity API (hybrid policy),
    /// TF Serving REST and KServe V2.
    Serve(serve::ServeArgs),
    /// Run a Ballista scheduler for distributed batch jobs
    /// (`tandem batch --cluster df://HOST:PORT`).
    Scheduler(cluster::SchedulerArgs),
    /// Run a Ballista executor that scores with its --model.
    Executor(cluster::ExecutorArgs),
    /// Load-test a running tandem (or a TF Serving / KServe V2 server):
    /// closed or open loop, uniform or Zipf ids; latency percentiles,
    /// errors, source mix, SLA check, JSON and an SVG chart.
    Bench(bench::BenchArgs),
    /// Batch vs real time vs hybrid: daily cost, cost per 1k predictions,
    /// instances, break-even rate, sensitivity; from measured throughputs.
    Cost(cost::CostArgs),
    /// Which strategy fits a use case (latency, freshness, coverage,
    /// cost), with the reasons, the numbers and a config to start with.
    Advise(cost::AdviseArgs),
}

/// An error and its causes on one line, each cause once: most of
/// tandem's errors already say their cause in their own message (`model:
/// model file not found: PATH`), which `{:#}` would repeat after it.
fn message(err: &anyhow::Error) -> String {
    let mut out = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Quickstart(args) => quickstart::quickstart(args),
        Command::Models(cmd) => models::run(cmd),
        Command::Batch(args) => batch::batch(args),
        Command::Materialize(args) => batch::materialize(args),
        Command::Warm(args) => batch::warm(args),
        Command::Refresh(args) => batch::refresh(args),
        Command::Serve(args) => serve::serve(args),
        Command::Scheduler(args) => cluster::scheduler(args),
        Command::Executor(args) => cluster::executor(args),
        Command::Bench(args) => bench::bench(args),
        Command::Cost(args) => cost::cost(args),
        Command::Advise(args) => cost::run_advise(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", message(&err));
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod message_tests {
    /// An error whose message says its cause, as thiserror's
    /// `#[error("model: {0}")]` with `#[from]` makes them.
    #[derive(Debug)]
    struct Wrapper(std::io::Error);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "model: {}", self.0)
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::other("file not found: m.onnx");
        // A cause the message already says is not repeated.
        let e = anyhow::Error::from(Wrapper(io()));
        assert_eq!(super::message(&e), "model: file not found: m.onnx");
        // A context adds its cause.
        let e = anyhow::Error::from(io()).context("cannot start");
        assert_eq!(super::message(&e), "cannot start: file not found: m.onnx");
        // Both.
        let e = anyhow::Error::from(Wrapper(io())).context("cannot start");
        assert_eq!(
            super::message(&e),
            "cannot start: model: file not found: m.onnx"
        );
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// Resident anonymous memory of this process, in KiB.
    fn rss_anon_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("RssAnon:"))
            .expect("RssAnon in /proc/self/status");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn freed_memory_goes_back_to_the_system() {
        // 64 MiB in 16 KiB blocks, as a model load's temporaries are: many
        // small and medium allocations, all freed at the end.
        let mut blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8 | 1; 16 << 10]).collect();
        let peak = rss_anon_kib();
        assert!(blocks.iter().all(|b| b[0] != 0));
        blocks.clear();
        blocks.shrink_to_fit();
        super::release_free_memory();
        let after = rss_anon_kib();
        assert!(
            after + 32 * 1024 <= peak,
            "RssAnon {peak} KiB with the blocks, {after} KiB after freeing them and releasing"
        );
    }
}
