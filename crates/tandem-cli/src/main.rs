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
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
