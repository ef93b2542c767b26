//! `tandem scheduler` and `tandem executor`: a Ballista cluster run from
//! the tandem binary, with tandem's scoring function registered on every
//! process (`tandem batch --cluster df://HOST:PORT` submits to it).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tandem_batch::cluster::{ExecutorOptions, SchedulerOptions, run_executor, run_scheduler};
use tandem_core::parse_duration;

use crate::batch::runtime;
use crate::config::TracingSection;

/// Arguments of `tandem scheduler`.
#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "0.0.0.0:50050")]
    bind: SocketAddr,
    /// Host name executors and clients reach this scheduler by (default:
    /// the bind address).
    #[arg(long)]
    external_host: Option<String>,
    /// An executor silent this long is declared lost and its tasks are run
    /// again elsewhere.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    executor_timeout: Duration,
    /// Log lines as JSON.
    #[arg(long)]
    log_json: bool,
}

/// Arguments of `tandem executor`.
#[derive(Debug, Args)]
pub struct ExecutorArgs {
    /// The model this executor scores with; jobs planned for another model
    /// or version fail rather than mix scores.
    #[arg(long, short)]
    model: PathBuf,
    /// The scheduler, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:50050")]
    scheduler: String,
    /// Host to bind.
    #[arg(long, default_value = "0.0.0.0")]
    bind_host: String,
    /// Host name the scheduler and other executors reach this one by
    /// (default: the bind host).
    #[arg(long)]
    external_host: Option<String>,
    /// Arrow Flight port (shuffle data between stages).
    #[arg(long, default_value_t = 50051)]
    flight_port: u16,
    /// gRPC port (tasks from the scheduler).
    #[arg(long, default_value_t = 50052)]
    grpc_port: u16,
    /// Tasks run at once (default: the number of cores).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Share of memory for the query engine's pool, in (0, 1]; the model
    /// sits outside it.
    #[arg(long, default_value_t = 0.5)]
    memory_fraction: f64,
    /// Directory for shuffle files (default: a temporary directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Seconds between heartbeats (keep well under the scheduler's
    /// --executor-timeout).
    #[arg(long, default_value_t = 5)]
    heartbeat_secs: u64,
    /// Log lines as JSON.
    #[arg(long)]
    log_json: bool,
}

fn init_logs(json: bool) -> anyhow::Result<crate::telemetry::Telemetry> {
    crate::telemetry::init(
        json,
        "info,ballista=warn,ballista_scheduler=warn,ballista_executor=warn,ballista_core=warn",
        &TracingSection::default(),
    )
}

/// Runs `tandem scheduler` until SIGINT/SIGTERM.
pub fn scheduler(args: SchedulerArgs) -> anyhow::Result<ExitCode> {
    let telemetry = init_logs(args.log_json)?;
    let opts = SchedulerOptions {
        bind: args.bind,
        external_host: args.external_host,
        executor_timeout: args.executor_timeout,
    };
    let result = runtime()?.block_on(run_scheduler(
        opts,
        |addr| {
            println!("tandem scheduler listening on {addr} (submit with --cluster df://HOST:PORT)");
            let _ = std::io::stdout().flush();
        },
        crate::serve::shutdown_signal(),
    ));
    telemetry.shutdown();
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `tandem executor` until SIGINT/SIGTERM or the scheduler stops it.
pub fn executor(args: ExecutorArgs) -> anyhow::Result<ExitCode> {
    let telemetry = init_logs(args.log_json)?;
    let (host, port) = args
        .scheduler
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("--scheduler {}: expected HOST:PORT", args.scheduler))?;
    let concurrency = args
        .concurrency
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from));
    let opts = ExecutorOptions {
        model: args.model,
        scheduler_host: host,
        scheduler_port: port,
        bind_host: args.bind_host,
        external_host: args.external_host,
        flight_port: args.flight_port,
        grpc_port: args.grpc_port,
        concurrency,
        memory_fraction: args.memory_fraction,
        work_dir: args.work_dir,
        heartbeat_secs: args.heartbeat_secs,
    };
    println!(
        "tandem executor: flight port {}, grpc port {}, {} task slots, scheduler {}",
        opts.flight_port, opts.grpc_port, opts.concurrency, args.scheduler
    );
    let _ = std::io::stdout().flush();
    let result = runtime()?.block_on(run_executor(opts));
    telemetry.shutdown();
    result?;
    Ok(ExitCode::SUCCESS)
}
