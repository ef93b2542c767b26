//! Batch scoring on an Apache DataFusion Ballista cluster: the scheduler and
//! executor processes (`tandem scheduler`, `tandem executor`), and the
//! client side of `tandem batch --cluster df://HOST:PORT`.
//!
//! The job is the local one as a distributed plan. The client plans it
//! (its model gives the name, version and feature names), the scheduler
//! splits it into tasks, and each executor scores its partitions with its
//! own `--model` through [`udf::ScoreUdf`], which refuses to run when that
//! model is not the job's, and writes the records to the store from the
//! executor. Only counts come back to the client. Parquet output is written
//! by the executors too, as several files (one job per part, submitted at
//! once), into a temporary directory renamed into place when every part is
//! done.
//!
//! UDFs travel by name only, so `tandem_score` and `tandem_shard` are
//! registered on the client, on the scheduler (which decodes the client's
//! plan) and on every executor; one binary keeps them in step.

pub mod udf;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ballista::prelude::SessionContextExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::utils::default_session_builder;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion::arrow::array::{Array, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionState;
use datafusion::execution::{FunctionRegistry, SessionStateBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use tandem_core::unix_seconds;
use tandem_model::Model;

use crate::error::BatchError;
use crate::job::{BatchOptions, BatchSummary, Progress, new_run_id};
use crate::plan::{InputSpec, base_query, ident, resolve_features};
use crate::udf::ShardUdf;
use udf::ScoreUdf;

/// How to run a scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Address to listen on (port 0 picks a free one).
    pub bind: SocketAddr,
    /// Host name executors and clients use to reach this scheduler
    /// (default: the bind host).
    pub external_host: Option<String>,
    /// An executor silent this long is lost, and its tasks run elsewhere.
    pub executor_timeout: Duration,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            bind: SocketAddr::from(([0, 0, 0, 0], 50050)),
            external_host: None,
            executor_timeout: Duration::from_secs(30),
        }
    }
}

/// How to run an executor.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The model this executor scores with (loaded at start).
    pub model: PathBuf,
    /// Scheduler host.
    pub scheduler_host: String,
    /// Scheduler port.
    pub scheduler_port: u16,
    /// Address to bind (host only; the ports are below).
    pub bind_host: String,
    /// Host name the scheduler and other executors use to reach this one.
    pub external_host: Option<String>,
    /// Arrow Flight port (shuffle data).
    pub flight_port: u16,
    /// gRPC port (tasks).
    pub grpc_port: u16,
    /// Tasks run at once (default: the cores).
    pub concurrency: usize,
    /// Share of memory for the query engine's pool (the model sits outside
    /// it).
    pub memory_fraction: f64,
    /// Directory for shuffle files (default: a temporary directory).
    pub work_dir: Option<PathBuf>,
    /// Seconds between heartbeats to the scheduler.
    pub heartbeat_secs: u64,
}

/// The session every process of a cluster builds: Ballista's defaults
/// plus `tandem_score` (with `model` on a scorer) and `tandem_shard`.
fn with_udfs(mut state: SessionState, scorer: Option<ScoreUdf>) -> SessionState {
    let score = scorer.unwrap_or_else(ScoreUdf::planner);
    // `register_udf` only fails on a name clash with no previous value.
    let _ = state.register_udf(Arc::new(score.into_udf()));
    let _ = state.register_udf(Arc::new(ShardUdf::default().into_udf()));
    state
}

fn engine_err(e: impl std::fmt::Display) -> BatchError {
    BatchError::Cluster(e.to_string())
}

/// Runs a scheduler until `shutdown` completes. `on_bound` is told the
/// address once listening (port 0 resolved).
pub async fn run_scheduler(
    opts: SchedulerOptions,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()>,
) -> Result<(), BatchError> {
    let listener = tokio::net::TcpListener::bind(opts.bind)
        .await
        .map_err(|e| BatchError::Cluster(format!("cannot listen on {}: {e}", opts.bind)))?;
    let bound = listener.local_addr().map_err(engine_err)?;
    let timeout = opts.executor_timeout.as_secs().max(2);
    let config = SchedulerConfig {
        bind_host: bound.ip().to_string(),
        bind_port: bound.port(),
        external_host: opts
            .external_host
            .clone()
            .unwrap_or_else(|| bound.ip().to_string()),
        executor_timeout_seconds: timeout,
        expire_dead_executor_interval_seconds: (timeout / 3).max(1),
        no_executors_grace_period_seconds: timeout,
        override_session_builder: Some(Arc::new(|cfg: SessionConfig| {
            let state = SessionStateBuilder::new_from_existing(default_session_builder(cfg)?)
                .with_runtime_env(crate::objects::runtime_env())
                .build();
            Ok(with_udfs(state, None))
        })),
        ..SchedulerConfig::default()
    };
    config.validate().map_err(engine_err)?;
    let config = Arc::new(config);
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(engine_err)?;
    let scheduler = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, config)
        .await
        .map_err(engine_err)?;
    on_bound(bound);
    tokio::select! {
        r = start_grpc_service_with_listener(listener, scheduler) => r.map_err(engine_err),
        () = shutdown => Ok(()),
    }
}

/// Loads the model (failing fast), registers with the scheduler and runs
/// tasks until the process is told to stop (SIGINT/SIGTERM) or the
/// scheduler goes away.
pub async fn run_executor(opts: ExecutorOptions) -> Result<(), BatchError> {
    let model = Arc::new(Model::load(&opts.model)?);
    tracing::info!(
        model = model.name(),
        version = model.version(),
        "executor model loaded"
    );
    let scorer = ScoreUdf::scorer(model).map_err(engine_err)?;
    let state = with_udfs(
        SessionStateBuilder::new().with_default_features().build(),
        Some(scorer),
    );
    if !(0.0..=1.0).contains(&opts.memory_fraction) || opts.memory_fraction == 0.0 {
        return Err(BatchError::Invalid(format!(
            "--memory-fraction {} must be in (0, 1]",
            opts.memory_fraction
        )));
    }
    let temp_dir = opts.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let config = ExecutorProcessConfig {
        bind_host: opts.bind_host.clone(),
        external_host: opts.external_host.clone(),
        port: opts.flight_port,
        grpc_port: opts.grpc_port,
        scheduler_host: opts.scheduler_host.clone(),
        scheduler_port: opts.scheduler_port,
        scheduler_connect_timeout_seconds: 30,
        vcores: opts.concurrency.max(1),
        work_dir: opts
            .work_dir
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned()),
        print_thread_info: false,
        executor_heartbeat_interval_seconds: opts.heartbeat_secs.max(1),
        memory_pool_fraction: opts.memory_fraction,
        override_function_registry: Some(Arc::new(BallistaFunctionRegistry::from(&state))),
        // Ballista's own base runtime, plus object stores made from the
        // executor's environment (s3://, gs://, az://, http(s)://).
        override_runtime_producer: Some(Arc::new(move |_| {
            RuntimeEnvBuilder::new()
                .with_temp_file_path(temp_dir.clone())
                .with_object_store_registry(Arc::new(crate::objects::ObjectStores::new()))
                .build_arc()
        })),
        ..ExecutorProcessConfig::default()
    };
    start_executor_process(Arc::new(config))
        .await
        .map_err(engine_err)
}

/// Where a cluster job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterTarget {
    /// A running scheduler, `df://HOST:PORT`.
    Remote(String),
    /// A scheduler and an executor started in this process.
    Standalone,
}

impl ClusterTarget {
    /// Parses `df://HOST:PORT` or `standalone`.
    pub fn parse(s: &str) -> Result<ClusterTarget, BatchError> {
        if s == "standalone" {
            return Ok(ClusterTarget::Standalone);
        }
        let Some(rest) = s.strip_prefix("df://") else {
            return Err(BatchError::Invalid(format!(
                "--cluster {s}: expected df://HOST:PORT (a tandem scheduler) or standalone"
            )));
        };
        if rest.is_empty() || rest.contains('/') {
            return Err(BatchError::Invalid(format!(
                "--cluster {s}: expected df://HOST:PORT"
            )));
        }
        Ok(ClusterTarget::Remote(s.to_owned()))
    }
}

/// Counts from the check pass.
#[derive(Debug, Default)]
struct Counts {
    rows: u64,
    ids: u64,
    distinct: u64,
    missing: u64,
    nan: u64,
}

async fn query_u64s(ctx: &SessionContext, sql: &str) -> Result<Vec<u64>, BatchError> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(batch.num_columns());
    for col in batch.columns() {
        let col = cast(col, &DataType::Int64)?;
        let v = col
            .as_any()
            .downcast_ref::<Int64Array>()
            .filter(|a| a.is_valid(0))
            .map_or(0, |a| a.value(0));
        out.push(u64::try_from(v).unwrap_or(0));
    }
    Ok(out)
}

async fn first_string(ctx: &SessionContext, sql: &str) -> Option<String> {
    let batches = ctx.sql(sql).await.ok()?.collect().await.ok()?;
    let batch = batches.iter().find(|b| b.num_rows() > 0)?;
    let col = cast(batch.column(0), &DataType::Utf8).ok()?;
    let col = col
        .as_any()
        .downcast_ref::<datafusion::arrow::array::StringArray>()?;
    col.is_valid(0).then(|| col.value(0).to_owned())
}

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Runs `tandem batch` on a cluster: the same checks, flags and summary as
/// a local run; the records are written by the executors. `parts`: Parquet
/// output files (one job each); `partitions`: the plan's target partitions
/// (tasks per stage, at most one per input row group).
pub async fn run_batch_cluster(
    opts: &BatchOptions,
    target: &ClusterTarget,
    parts: u32,
    partitions: usize,
    progress: &dyn Progress,
) -> Result<BatchSummary, BatchError> {
    let started = Instant::now();
    let computed_at = SystemTime::now();
    crate::plan::check_shard(opts.shard)?;
    if opts.ttl.is_zero() {
        return Err(BatchError::Invalid("--ttl must be positive".into()));
    }
    if opts.resume {
        return Err(BatchError::Invalid(
            "--resume is for local runs; on a cluster, Ballista retries failed tasks itself and \
             a rerun rewrites the same records"
                .into(),
        ));
    }
    if opts.store.is_none() && opts.output.is_none() {
        return Err(BatchError::Invalid(
            "nothing to write: give --store and/or --output".into(),
        ));
    }
    if opts.index.is_some() {
        return Err(BatchError::Invalid(
            "--index is written by local runs (the records are written by the executors)".into(),
        ));
    }
    if parts == 0 {
        return Err(BatchError::Invalid("--parts must be at least 1".into()));
    }
    if let Some(out) = &opts.output
        && crate::objects::is_remote(&out.to_string_lossy())
    {
        return Err(BatchError::Invalid(format!(
            "--output {}: a cluster writes its parts into a shared directory; an \
             object-store output is written by local runs",
            out.display()
        )));
    }
    let run_id = opts.run_id.clone().unwrap_or_else(new_run_id);
    let model = Arc::new(Model::load(&opts.model)?);
    let input = InputSpec::open(&opts.input).await?;
    // The store must answer before anything runs (the executors open it
    // again by URL).
    let store = crate::job::open_store(opts.store.as_deref()).await?;
    let store_name = store.as_ref().map(|s| s.describe());
    // Executors open the store themselves; an embedded file can only be
    // written by one process, so a remote cluster needs a shared store.
    drop(store);
    if let (ClusterTarget::Remote(_), Some(url)) = (target, opts.store.as_deref())
        && !url.starts_with("redis")
    {
        return Err(BatchError::Invalid(format!(
            "--store {}: every executor writes to the store, so a cluster job needs a \
             shared one (redis://, rediss://, redis-cluster://)",
            store_name.as_deref().unwrap_or(url)
        )));
    }

    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_runtime_env(crate::objects::runtime_env())
        .with_config(
            SessionConfig::new()
                .with_batch_size(8192)
                .with_target_partitions(partitions.max(1)),
        )
        .build();
    let ctx = match target {
        ClusterTarget::Remote(url) => {
            let ctx = SessionContext::remote_with_state(url, with_udfs(state, None))
                .await
                .map_err(|e| BatchError::Cluster(format!("scheduler {url}: {e}")))?;
            ctx.register_udf(ScoreUdf::planner().into_udf());
            ctx
        }
        ClusterTarget::Standalone => {
            let scorer = ScoreUdf::scorer(model.clone()).map_err(engine_err)?;
            let ctx = SessionContext::standalone_with_state(with_udfs(state, Some(scorer)))
                .await
                .map_err(engine_err)?;
            ctx.register_udf(
                ScoreUdf::scorer(model.clone())
                    .map_err(engine_err)?
                    .into_udf(),
            );
            ctx
        }
    };
    ctx.register_udf(ShardUdf::default().into_udf());
    register_input(&ctx, &input).await?;

    let base = base_query(opts.sql.as_deref(), opts.filter.as_deref());
    let schema = ctx.sql(&base).await?.schema().as_arrow().clone();
    let features = resolve_features(&schema, &opts.id_column, opts.features.as_deref(), &model)?;
    let id = ident(&opts.id_column);
    let fcols: Vec<String> = (0..features.len())
        .map(|i| ident(&format!("f{i}")))
        .collect();
    let mut select = vec![format!("CAST({id} AS VARCHAR) AS entity_id")];
    for (i, f) in features.iter().enumerate() {
        // FLOAT columns as they are, the rest as DOUBLE (`scoring_query`).
        let float = schema
            .field_with_name(f)
            .is_ok_and(|field| field.data_type() == &DataType::Float32);
        if float {
            select.push(format!("{} AS {}", ident(f), fcols[i]));
        } else {
            select.push(format!("TRY_CAST({} AS DOUBLE) AS {}", ident(f), fcols[i]));
        }
    }
    let mut src = format!("SELECT {} FROM ({base}) AS q", select.join(", "));
    if let Some((i, n)) = opts.shard {
        src.push_str(&format!(
            " WHERE tandem_shard(CAST({id} AS VARCHAR), {n}) = {i}"
        ));
    }

    // The check pass: the same counts a local run makes row by row.
    let missing_any = fcols
        .iter()
        .map(|c| format!("{c} IS NULL"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let nan_any = fcols
        .iter()
        .map(|c| format!("isnan({c})"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let fill_counts = |from: &str| {
        format!(
            "SELECT \
             sum(CASE WHEN entity_id IS NOT NULL AND ({missing_any}) THEN 1 ELSE 0 END), \
             sum(CASE WHEN entity_id IS NOT NULL AND ({nan_any}) THEN 1 ELSE 0 END) \
             FROM ({from}) AS s"
        )
    };
    let v = query_u64s(
        &ctx,
        &format!(
            "SELECT count(*), count(entity_id), count(DISTINCT entity_id), \
             sum(CASE WHEN entity_id IS NOT NULL AND ({missing_any}) THEN 1 ELSE 0 END), \
             sum(CASE WHEN entity_id IS NOT NULL AND ({nan_any}) THEN 1 ELSE 0 END) \
             FROM ({src}) AS s"
        ),
    )
    .await?;
    let mut counts = Counts {
        rows: v.first().copied().unwrap_or(0),
        ids: v.get(1).copied().unwrap_or(0),
        distinct: v.get(2).copied().unwrap_or(0),
        missing: v.get(3).copied().unwrap_or(0),
        nan: v.get(4).copied().unwrap_or(0),
    };
    progress.start(Some(counts.rows));
    let dups = counts.ids.saturating_sub(counts.distinct);
    // One row per entity: with duplicates, the first of each id in a window.
    let scoring = if dups > 0 {
        let cols = std::iter::once("entity_id".to_owned())
            .chain(fcols.iter().cloned())
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "SELECT {cols} FROM (SELECT *, row_number() OVER (PARTITION BY entity_id) AS tandem_rn \
             FROM ({src}) AS s WHERE entity_id IS NOT NULL) AS d WHERE tandem_rn = 1"
        )
    } else {
        format!("SELECT * FROM ({src}) AS s WHERE entity_id IS NOT NULL")
    };
    if dups > 0 && (counts.missing > 0 || counts.nan > 0) {
        let v = query_u64s(&ctx, &fill_counts(&scoring)).await?;
        counts.missing = v.first().copied().unwrap_or(0);
        counts.nan = v.get(1).copied().unwrap_or(0);
    }
    if opts.strict {
        strict_check(&ctx, &src, &counts, &missing_any, &nan_any).await?;
    }

    // `{PART}` and `{PARTS}` are filled per job.
    let score = format!(
        "tandem_score(entity_id, {}, {}, {}, {}, {}, {}, {}, {}, {{PART}}, {{PARTS}}, {})",
        sql_string(model.name()),
        model.version(),
        sql_string(opts.store.as_deref().unwrap_or("")),
        opts.ttl.as_millis(),
        sql_string(&run_id),
        unix_seconds(computed_at),
        opts.fill,
        opts.strict,
        fcols.join(", ")
    );
    let scored = match &opts.output {
        None => {
            let v = query_u64s(
                &ctx,
                &format!(
                    "SELECT count(p) FROM (SELECT {} AS p FROM ({scoring}) AS s) AS t",
                    score.replace("{PART}", "0").replace("{PARTS}", "1")
                ),
            )
            .await?;
            v.first().copied().unwrap_or(0)
        }
        Some(out) => {
            write_parts(
                &ctx,
                out,
                &run_id,
                parts,
                &scoring,
                &score,
                &model,
                computed_at,
            )
            .await?
        }
    };
    progress.advance(counts.rows);
    progress.finish();

    let wall = started.elapsed().as_secs_f64();
    let mut skipped = BTreeMap::new();
    let non_finite = counts.distinct.saturating_sub(scored);
    for (reason, n) in [
        ("null_id", counts.rows.saturating_sub(counts.ids)),
        ("duplicate_id", dups),
        ("non_finite_prediction", non_finite),
    ] {
        if n > 0 {
            skipped.insert(reason.to_owned(), n);
        }
    }
    let mut filled = BTreeMap::new();
    for (reason, n) in [
        ("missing_feature", counts.missing),
        ("nan_feature", counts.nan),
    ] {
        if n > 0 {
            filled.insert(reason.to_owned(), n);
        }
    }
    crate::telemetry::finished(
        "batch",
        Ok(&crate::telemetry::Totals {
            read: counts.rows,
            scored,
            written: if store_name.is_some() { scored } else { 0 },
            skipped: skipped.values().sum(),
            filled: filled.values().sum(),
            wall_seconds: wall,
        }),
        wall,
    );
    Ok(BatchSummary {
        run_id,
        model: model.name().to_owned(),
        version: model.version(),
        input: opts.input.clone(),
        store: store_name,
        output: opts.output.as_ref().map(|p| p.display().to_string()),
        rows_read: counts.rows,
        rows_scored: scored,
        rows_written: if opts.store.is_some() { scored } else { 0 },
        already_written: 0,
        rows_skipped: skipped.values().sum(),
        skipped,
        filled,
        wall_seconds: wall,
        rows_per_second: counts.rows as f64 / wall.max(1e-9),
    })
}

/// Registers the input as table `input` by absolute path (executors may
/// run elsewhere: the path must be on a shared filesystem).
async fn register_input(ctx: &SessionContext, input: &InputSpec) -> Result<(), BatchError> {
    let path = if input.path.contains("://") || Path::new(&input.path).is_absolute() {
        input.path.clone()
    } else {
        std::env::current_dir()
            .map_err(|e| BatchError::Input {
                path: input.path.clone(),
                detail: e.to_string(),
            })?
            .join(&input.path)
            .to_string_lossy()
            .into_owned()
    };
    crate::plan::register_input(ctx, input, &path).await
}

/// `--strict`: fails before anything is written, naming a bad entity.
async fn strict_check(
    ctx: &SessionContext,
    src: &str,
    counts: &Counts,
    missing_any: &str,
    nan_any: &str,
) -> Result<(), BatchError> {
    let bad = |entity: Option<String>, reason: &str| BatchError::BadEntity {
        entity,
        reason: format!("{reason} (--strict)"),
    };
    if counts.rows > counts.ids {
        return Err(bad(None, "the entity id is null"));
    }
    if counts.ids > counts.distinct {
        let e = first_string(
            ctx,
            &format!(
                "SELECT entity_id FROM ({src}) AS s GROUP BY entity_id HAVING count(*) > 1 \
                 ORDER BY entity_id LIMIT 1"
            ),
        )
        .await;
        return Err(bad(e, "the entity id appears more than once"));
    }
    for (n, cond, reason) in [
        (
            counts.missing,
            missing_any,
            "a feature is missing or not a number",
        ),
        (counts.nan, nan_any, "a feature is NaN"),
    ] {
        if n > 0 {
            let e = first_string(
                ctx,
                &format!(
                    "SELECT entity_id FROM ({src}) AS s WHERE {cond} ORDER BY entity_id LIMIT 1"
                ),
            )
            .await;
            return Err(bad(e, reason));
        }
    }
    Ok(())
}

/// Writes the Parquet output as `parts` files, one job each, all at once,
/// into a temporary directory beside the target; renames it into place
/// when every part succeeded. Returns the rows written.
#[allow(clippy::too_many_arguments)]
async fn write_parts(
    ctx: &SessionContext,
    target: &Path,
    run_id: &str,
    parts: u32,
    scoring: &str,
    score: &str,
    model: &Model,
    computed_at: SystemTime,
) -> Result<u64, BatchError> {
    let err = |detail: String| BatchError::Output {
        path: target.display().to_string(),
        detail,
    };
    let target = if target.is_absolute() {
        target.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| err(e.to_string()))?
            .join(target)
    };
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(err(format!("directory {} does not exist", dir.display())));
    }
    let name = target
        .file_name()
        .ok_or_else(|| err("not a file path".into()))?
        .to_string_lossy()
        .into_owned();
    let temp = dir.join(format!(".{name}.{run_id}.tmp"));
    let _ = std::fs::remove_dir_all(&temp);
    std::fs::create_dir_all(&temp).map_err(|e| err(e.to_string()))?;
    let at = tandem_core::unix_millis(computed_at);
    let jobs = (0..parts).map(|i| {
        let file = temp.join(format!("part-{i:05}.parquet"));
        let score = score
            .replace("{PART}", &i.to_string())
            .replace("{PARTS}", &parts.to_string());
        let sql = format!(
            "COPY (SELECT entity_id, p AS prediction, {} AS model, \
             arrow_cast({}, 'UInt64') AS version, \
             arrow_cast({at}, 'Timestamp(Millisecond, Some(\"UTC\"))') AS computed_at \
             FROM (SELECT entity_id, {score} AS p FROM ({scoring}) AS s) AS t \
             WHERE p IS NOT NULL) TO {} STORED AS PARQUET",
            sql_string(model.name()),
            model.version(),
            sql_string(&file.to_string_lossy()),
        );
        async move { query_u64s(ctx, &sql).await }
    });
    let results = futures::future::join_all(jobs).await;
    let mut rows = 0u64;
    for r in results {
        match r {
            Ok(v) => rows += v.first().copied().unwrap_or(0),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&temp);
                return Err(e);
            }
        }
    }
    if target.is_dir() {
        std::fs::remove_dir_all(&target).map_err(|e| err(e.to_string()))?;
    } else if target.exists() {
        std::fs::remove_file(&target).map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&temp, &target).map_err(|e| err(e.to_string()))?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_targets_parse() {
        assert_eq!(
            ClusterTarget::parse("df://sched:50050").unwrap(),
            ClusterTarget::Remote("df://sched:50050".into())
        );
        assert_eq!(
            ClusterTarget::parse("standalone").unwrap(),
            ClusterTarget::Standalone
        );
        for bad in ["http://x:1", "df://", "sched:50050", "df://a:1/x"] {
            let e = ClusterTarget::parse(bad).unwrap_err().to_string();
            assert!(e.contains("df://"), "{bad}: {e}");
        }
    }

    #[test]
    fn strings_are_quoted_for_sql() {
        assert_eq!(sql_string("it's"), "'it''s'");
    }
}
