//! `tandem serve` configuration: defaults, then a TOML file, then
//! environment variables `TANDEM__SECTION__KEY`, then flags; validated at
//! start with errors that name the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use tandem_core::{
    FeatureOverride, HealthThresholds, HybridPolicy, Mode, SlaTargets, TtlPolicy, parse_duration,
};
use tandem_engine::{BatcherConfig, EngineConfig};
use tandem_store::MemoryTierConfig;

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP server.
    pub server: ServerSection,
    /// Models.
    pub models: ModelsSection,
    /// Stores.
    pub store: StoreSection,
    /// The hybrid policy defaults.
    pub hybrid: HybridSection,
    /// TTLs.
    pub ttl: TtlSection,
    /// The request batcher.
    pub batching: BatcherConfig,
    /// The memory tier.
    pub memory: MemorySection,
    /// Health thresholds.
    pub health: HealthSection,
    /// Real-time features.
    pub realtime: RealtimeSection,
    /// Service-level targets.
    pub sla: SlaSection,
    /// Prices, for the cost gauge.
    pub cost: CostSection,
    /// Trace export.
    pub tracing: TracingSection,
    /// Activity tracking.
    pub activity: ActivitySection,
    /// Warm and refresh jobs run by the server itself.
    pub schedule: ScheduleSection,
    /// Per-feature source and default, by feature name.
    pub features: BTreeMap<String, FeatureOverride>,
}

/// `[schedule]`: background jobs inside `tandem serve` (off unless a
/// table is given).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSection {
    /// `[schedule.warm]`: periodic `tandem warm --top-k`.
    pub warm: Option<WarmSchedule>,
    /// `[schedule.refresh]`: periodic `tandem refresh`.
    pub refresh: Option<RefreshSchedule>,
}

/// `[schedule.warm]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmSchedule {
    /// Period (like `15m`); or `cron`.
    #[serde(default)]
    pub every: Option<String>,
    /// A cron expression with seconds (`0 */15 * * * *`, UTC); or `every`.
    #[serde(default)]
    pub cron: Option<String>,
    /// Entities warmed per run (the most active).
    pub top_k: usize,
    /// Their look-back window.
    #[serde(default = "default_lookback")]
    pub lookback: String,
    /// TTL of the predictions written.
    #[serde(default = "default_job_ttl")]
    pub ttl: String,
    /// The served model to use (default: the default model).
    #[serde(default)]
    pub model: Option<String>,
}

/// `[schedule.refresh]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshSchedule {
    /// Period (like `1h`); or `cron`.
    #[serde(default)]
    pub every: Option<String>,
    /// A cron expression with seconds (`0 0 * * * *`, UTC); or `every`.
    #[serde(default)]
    pub cron: Option<String>,
    /// The current features (Parquet or CSV file, directory or glob).
    pub input: PathBuf,
    /// Entity id column.
    #[serde(default = "default_id_column")]
    pub id_column: String,
    /// Rescore entities whose features moved more than this (L2).
    #[serde(default)]
    pub changed_threshold: Option<f64>,
    /// A digest index (`tandem batch --index`) that judges the entities it
    /// knows without reading the store; updated by each run.
    #[serde(default)]
    pub index: Option<PathBuf>,
    /// Rescore predictions older than this.
    #[serde(default)]
    pub older_than: Option<String>,
    /// Rescore predictions of another model version.
    #[serde(default)]
    pub model_changed: bool,
    /// Only entities asked for within this window.
    #[serde(default)]
    pub active_within: Option<String>,
    /// TTL of the predictions written.
    #[serde(default = "default_job_ttl")]
    pub ttl: String,
    /// The served model to use (default: the default model).
    #[serde(default)]
    pub model: Option<String>,
}

fn default_lookback() -> String {
    "24h".into()
}

fn default_job_ttl() -> String {
    "24h".into()
}

fn default_id_column() -> String {
    "entity_id".into()
}

/// `[activity]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActivitySection {
    /// Count every entity asked for in the store's activity log (for
    /// `tandem warm --top-k`).
    pub enabled: bool,
    /// Share of requests recorded (0..1), for very high rates.
    pub sample: f64,
    /// Distinct entities whose counts may wait to be written; an id
    /// beyond is dropped (counted).
    pub queue: usize,
}

impl Default for ActivitySection {
    fn default() -> Self {
        ActivitySection {
            enabled: true,
            sample: 1.0,
            queue: 65_536,
        }
    }
}

/// `[tracing]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingSection {
    /// An OTLP/HTTP traces endpoint (like
    /// `http://collector:4318/v1/traces`); unset, nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` or `http/json`.
    pub otlp_protocol: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

impl Default for TracingSection {
    fn default() -> Self {
        TracingSection {
            otlp_endpoint: None,
            otlp_protocol: "http/protobuf".into(),
            service_name: "tandem".into(),
        }
    }
}

/// `[cost]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostSection {
    /// This instance's price per hour; when set, `/metrics` and
    /// `/v1/stats` report the cost per 1000 predictions at the recent rate.
    pub price_per_hour: Option<f64>,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address to listen on.
    pub listen: String,
    /// Largest request body in bytes.
    pub body_limit_bytes: usize,
    /// Async worker threads (HTTP, store clients); 0: one per core.
    pub workers: usize,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: "127.0.0.1:8080".into(),
            body_limit_bytes: 4 << 20,
            workers: 0,
        }
    }
}

/// The most async worker threads `server.workers` takes (tokio's own
/// limit is far above; more than this is a typo).
const MAX_WORKERS: usize = 1024;

/// `[models]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsSection {
    /// A model repository directory or one `.onnx` file.
    pub path: Option<PathBuf>,
    /// How often the repository is rescanned (`0s`: never).
    pub poll_interval: String,
    /// The model of requests that name none (default: the only one).
    pub default_model: Option<String>,
    /// Newest versions of each model to serve.
    pub latest_versions: usize,
}

impl Default for ModelsSection {
    fn default() -> Self {
        ModelsSection {
            path: None,
            poll_interval: "1s".into(),
            default_model: None,
            latest_versions: 1,
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Prediction store URL (also the feature store unless `features_url`).
    pub url: String,
    /// Feature store URL, when features live elsewhere.
    pub features_url: Option<String>,
    /// Real-time predictions queued for the store at most.
    pub write_queue: usize,
    /// Merged reads in flight per kind (features, predictions); 0 turns
    /// merging of concurrent requests' reads off.
    pub reads_in_flight: usize,
    /// A real-time prediction equal to the one written for the entity less
    /// than this long before is not written again; `0s` writes every one.
    pub rewrite_unchanged_after: String,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            url: "tandem.redb".into(),
            features_url: None,
            write_queue: 65_536,
            reads_in_flight: 2,
            rewrite_unchanged_after: "1s".into(),
        }
    }
}

/// `[hybrid]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HybridSection {
    /// `hybrid`, `batch_only` or `realtime_only`.
    pub mode: String,
    /// Stored predictions older than this are stale.
    pub max_staleness: String,
    /// Time allowed for the real-time path.
    pub deadline: String,
    /// The prediction answered when nothing else can.
    pub default_prediction: Option<f64>,
    /// Whether predictions made by an older model version are stale.
    pub stale_on_new_version: bool,
    /// Most entities in one request.
    pub max_entities: usize,
    /// Time allowed for a TF Serving / KServe inference request.
    pub infer_deadline: String,
}

impl Default for HybridSection {
    fn default() -> Self {
        HybridSection {
            mode: "hybrid".into(),
            max_staleness: "1h".into(),
            deadline: "50ms".into(),
            default_prediction: None,
            stale_on_new_version: true,
            max_entities: 1000,
            infer_deadline: "1s".into(),
        }
    }
}

/// `[ttl]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TtlSection {
    /// TTL of batch predictions.
    pub batch: String,
    /// TTL of real-time predictions written back.
    pub realtime: String,
}

impl Default for TtlSection {
    fn default() -> Self {
        TtlSection {
            batch: "24h".into(),
            realtime: "1h".into(),
        }
    }
}

/// `[memory]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemorySection {
    /// Byte budget of the memory tier.
    pub max_bytes: u64,
    /// Longest time a record stays in memory.
    pub max_ttl: String,
    /// Longest time a record stays in memory while the store reports
    /// changes (`0s`: never ask it to).
    pub tracked_max_ttl: String,
    /// At start, the stored predictions of this many of the most active
    /// entities are loaded into memory before the server listens (0: none).
    pub preload: usize,
    /// How far back activity counts for `preload`.
    pub preload_lookback: String,
}

impl Default for MemorySection {
    fn default() -> Self {
        MemorySection {
            max_bytes: 256 << 20,
            max_ttl: "60s".into(),
            tracked_max_ttl: "1h".into(),
            preload: 0,
            preload_lookback: "1h".into(),
        }
    }
}

/// `[health]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    /// Fallback share from which the service is degraded.
    pub degraded: f64,
    /// Fallback share from which it is critical.
    pub critical: f64,
    /// Default-answer share from which it is critical.
    pub critical_default: f64,
    /// The sliding window.
    pub window: String,
}

impl Default for HealthSection {
    fn default() -> Self {
        let t = HealthThresholds::default();
        HealthSection {
            degraded: t.degraded,
            critical: t.critical,
            critical_default: t.critical_default,
            window: "60s".into(),
        }
    }
}

/// `[sla]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlaSection {
    /// Highest acceptable p99 latency of prediction requests, in ms.
    pub p99_ms: f64,
    /// Lowest acceptable share of prediction requests answered.
    pub availability: f64,
    /// Highest acceptable share of prediction requests failed (5xx).
    pub error_rate: f64,
    /// The window the SLA (and the recent figures of `/v1/stats`) cover.
    pub window: String,
}

impl Default for SlaSection {
    fn default() -> Self {
        let t = SlaTargets::default();
        SlaSection {
            p99_ms: t.p99_ms,
            availability: t.availability,
            error_rate: t.error_rate,
            window: "5m".into(),
        }
    }
}

/// `[realtime]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RealtimeSection {
    /// Offset of local time from UTC in minutes for the clock features.
    pub utc_offset_minutes: i64,
}

/// Flags that override the file and environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--model`.
    pub model: Option<PathBuf>,
    /// `--store`.
    pub store: Option<String>,
    /// `--feature-store`.
    pub feature_store: Option<String>,
    /// `--listen`.
    pub listen: Option<String>,
}

/// Everything `tandem serve` needs, validated.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// The config as loaded (for the start-up log).
    pub config: Config,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Model path.
    pub model_path: PathBuf,
    /// Poll interval (`None`: never).
    pub poll_interval: Option<Duration>,
    /// Engine settings.
    pub engine: EngineConfig,
    /// Service-level targets.
    pub sla: SlaTargets,
    /// Their window.
    pub sla_window: Duration,
    /// `memory.preload` entities over `memory.preload_lookback` (`None`:
    /// no preload).
    pub preload: Option<(usize, Duration)>,
    /// Async worker threads (`None`: one per core).
    pub workers: Option<usize>,
}

/// When a scheduled job runs.
#[derive(Debug, Clone)]
pub enum Timing {
    /// Every period.
    Every(Duration),
    /// At the times of a cron expression (UTC).
    Cron(Box<cron::Schedule>),
}

/// Checks a job's `every` / `cron` (exactly one).
pub fn timing(key: &str, every: Option<&str>, cron: Option<&str>) -> anyhow::Result<Timing> {
    match (every, cron) {
        (Some(e), None) => {
            let d = duration(&format!("{key}.every"), e)?;
            if d.is_zero() {
                bail!("config key {key}.every: must be positive");
            }
            Ok(Timing::Every(d))
        }
        (None, Some(c)) => c
            .parse::<cron::Schedule>()
            .map(|s| Timing::Cron(Box::new(s)))
            .map_err(|e| {
                anyhow::anyhow!(
                    "config key {key}.cron: '{c}' is not a cron expression with seconds (like \"0 */15 * * * *\"): {e}"
                )
            }),
        _ => bail!("config key {key}: give exactly one of every and cron"),
    }
}

fn duration(key: &str, value: &str) -> anyhow::Result<Duration> {
    parse_duration(value).map_err(|e| anyhow::anyhow!("config key {key}: {e}"))
}

/// Loads defaults <- `file` <- environment <- flags, and validates.
pub fn load(file: Option<&Path>, flags: &Overrides) -> anyhow::Result<ServeSettings> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if let Some(f) = file {
        if !f.is_file() {
            bail!("config file {} not found", f.display());
        }
        fig = fig.merge(Toml::file(f));
    }
    fig = fig.merge(Env::prefixed("TANDEM__").split("__"));
    let mut config: Config = fig
        .extract()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {}", describe(&e)))?;
    // Relative paths written in the file are relative to the file (so a
    // config works from any directory); from env and flags, to the cwd.
    let from_file = |key: &str| -> Option<PathBuf> {
        let meta = fig.find_metadata(key)?;
        match &meta.source {
            Some(figment::Source::File(f)) => f.parent().map(Path::to_path_buf),
            _ => None,
        }
    };
    let rebase = |dir: &Path, value: &str| -> Option<String> {
        let is_path = !value.contains("://") && !value.is_empty();
        (is_path && Path::new(value).is_relative()).then(|| dir.join(value).display().to_string())
    };
    if let (Some(dir), Some(p)) = (from_file("models.path"), &config.models.path)
        && p.is_relative()
    {
        config.models.path = Some(dir.join(p));
    }
    if let Some(dir) = from_file("store.url")
        && let Some(v) = rebase(&dir, &config.store.url)
    {
        config.store.url = v;
    }
    if let (Some(dir), Some(url)) = (from_file("store.features_url"), &config.store.features_url)
        && let Some(v) = rebase(&dir, url)
    {
        config.store.features_url = Some(v);
    }
    if let (Some(dir), Some(r)) = (
        from_file("schedule.refresh.input"),
        &mut config.schedule.refresh,
    ) && r.input.is_relative()
    {
        r.input = dir.join(&r.input);
    }
    if let (Some(dir), Some(r)) = (
        from_file("schedule.refresh.index"),
        &mut config.schedule.refresh,
    ) && let Some(ix) = r.index.as_mut()
        && ix.is_relative()
    {
        *ix = dir.join(&*ix);
    }
    if let Some(m) = &flags.model {
        config.models.path = Some(m.clone());
    }
    if let Some(s) = &flags.store {
        config.store.url = s.clone();
    }
    if let Some(s) = &flags.feature_store {
        config.store.features_url = Some(s.clone());
    }
    if let Some(l) = &flags.listen {
        config.server.listen = l.clone();
    }
    validate(config)
}

fn describe(e: &figment::Error) -> String {
    e.clone()
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            if key.is_empty() {
                e.kind.to_string()
            } else {
                format!("config key {key}: {}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn validate(config: Config) -> anyhow::Result<ServeSettings> {
    let listen: SocketAddr = config.server.listen.parse().with_context(|| {
        format!(
            "config key server.listen: '{}' is not an address such as 127.0.0.1:8080",
            config.server.listen
        )
    })?;
    if config.server.body_limit_bytes < 1024 {
        bail!("config key server.body_limit_bytes: must be at least 1024");
    }
    if config.server.workers > MAX_WORKERS {
        bail!(
            "config key server.workers: {} is more than {MAX_WORKERS} (0: one per core)",
            config.server.workers
        );
    }
    let workers = (config.server.workers > 0).then_some(config.server.workers);
    let model_path = config
        .models
        .path
        .clone()
        .context("config key models.path: no model given (use --model PATH or models.path)")?;
    if !model_path.exists() {
        bail!(
            "config key models.path: {} does not exist",
            model_path.display()
        );
    }
    let poll = duration("models.poll_interval", &config.models.poll_interval)?;
    if config.models.latest_versions == 0 {
        bail!("config key models.latest_versions: must be at least 1");
    }
    let mode: Mode = config
        .hybrid
        .mode
        .parse()
        .map_err(|e| anyhow::anyhow!("config key hybrid.mode: {e}"))?;
    let policy = HybridPolicy {
        mode,
        max_staleness: duration("hybrid.max_staleness", &config.hybrid.max_staleness)?,
        deadline: duration("hybrid.deadline", &config.hybrid.deadline)?,
    };
    if let Some(d) = config.hybrid.default_prediction
        && !d.is_finite()
    {
        bail!("config key hybrid.default_prediction: must be a finite number");
    }
    if config.hybrid.max_entities == 0 {
        bail!("config key hybrid.max_entities: must be at least 1");
    }
    config
        .batching
        .validate()
        .map_err(|e| anyhow::anyhow!("config key batching.{e}"))?;
    let health = HealthThresholds {
        degraded: config.health.degraded,
        critical: config.health.critical,
        critical_default: config.health.critical_default,
    };
    health
        .validate()
        .map_err(|e| anyhow::anyhow!("config key health.{e}"))?;
    let window = duration("health.window", &config.health.window)?;
    if window.as_secs() == 0 || window.as_secs() > 3600 {
        bail!("config key health.window: must be between 1s and 1h");
    }
    if let Some(w) = &config.schedule.warm {
        timing("schedule.warm", w.every.as_deref(), w.cron.as_deref())?;
        duration("schedule.warm.lookback", &w.lookback)?;
        duration("schedule.warm.ttl", &w.ttl)?;
        if w.top_k == 0 {
            bail!("config key schedule.warm.top_k: must be at least 1");
        }
    }
    if let Some(r) = &config.schedule.refresh {
        timing("schedule.refresh", r.every.as_deref(), r.cron.as_deref())?;
        duration("schedule.refresh.ttl", &r.ttl)?;
        if let Some(d) = &r.older_than {
            duration("schedule.refresh.older_than", d)?;
        }
        if let Some(d) = &r.active_within {
            duration("schedule.refresh.active_within", d)?;
        }
        if r.changed_threshold.is_none() && r.older_than.is_none() && !r.model_changed {
            bail!(
                "config key schedule.refresh: give changed_threshold, older_than and/or model_changed"
            );
        }
    }
    if !(config.activity.sample > 0.0 && config.activity.sample <= 1.0) {
        bail!(
            "config key activity.sample: must be in (0, 1], got {}",
            config.activity.sample
        );
    }
    if config.realtime.utc_offset_minutes.abs() > 18 * 60 {
        bail!("config key realtime.utc_offset_minutes: must be within +-1080");
    }
    let engine = EngineConfig {
        policy,
        ttl: TtlPolicy {
            batch: duration("ttl.batch", &config.ttl.batch)?,
            realtime: duration("ttl.realtime", &config.ttl.realtime)?,
        },
        default_prediction: config.hybrid.default_prediction,
        batcher: config.batching,
        health,
        health_window_secs: window.as_secs(),
        max_entities: config.hybrid.max_entities,
        infer_deadline: duration("hybrid.infer_deadline", &config.hybrid.infer_deadline)?,
        write_queue: config.store.write_queue.max(1),
        rewrite_unchanged_after: duration(
            "store.rewrite_unchanged_after",
            &config.store.rewrite_unchanged_after,
        )?,
        stale_on_new_version: config.hybrid.stale_on_new_version,
        memory: MemoryTierConfig {
            max_bytes: config.memory.max_bytes,
            max_ttl: duration("memory.max_ttl", &config.memory.max_ttl)?,
            tracked_max_ttl: duration("memory.tracked_max_ttl", &config.memory.tracked_max_ttl)?,
        },
        store_reads_in_flight: config.store.reads_in_flight,
        activity: tandem_engine::ActivityConfig {
            enabled: config.activity.enabled,
            sample: config.activity.sample,
            queue: config.activity.queue.max(1),
        },
    };
    let sla = SlaTargets {
        p99_ms: config.sla.p99_ms,
        availability: config.sla.availability,
        error_rate: config.sla.error_rate,
    };
    sla.validate()
        .map_err(|e| anyhow::anyhow!("config key sla.{e}"))?;
    if let Some(p) = config.cost.price_per_hour
        && !(p.is_finite() && p >= 0.0)
    {
        bail!("config key cost.price_per_hour: must be a number >= 0, got {p}");
    }
    let sla_window = duration("sla.window", &config.sla.window)?;
    if sla_window.as_secs() < 10 || sla_window.as_secs() > 3600 {
        bail!("config key sla.window: must be between 10s and 1h");
    }
    let lookback = duration("memory.preload_lookback", &config.memory.preload_lookback)?;
    if config.memory.preload > 0 && lookback.is_zero() {
        bail!("config key memory.preload_lookback: must be more than 0s");
    }
    Ok(ServeSettings {
        sla,
        sla_window,
        preload: (config.memory.preload > 0).then_some((config.memory.preload, lookback)),
        workers,
        listen,
        model_path,
        poll_interval: (!poll.is_zero()).then_some(poll),
        engine,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[expect(clippy::result_large_err, reason = "figment::Jail's closure type")]
    fn file_then_env_then_flags_with_keys_named_on_error() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                "[hybrid]\ndeadline = \"20ms\"\ndefault_prediction = 0.5\n[batching]\nmax_batch_size = 8\n[models]\npath = \"m.onnx\"\n",
            )?;
            jail.create_file("m.onnx", "")?;
            jail.set_env("TANDEM__HYBRID__MAX_STALENESS", "10m");
            let flags = Overrides {
                listen: Some("127.0.0.1:9999".into()),
                ..Overrides::default()
            };
            let s = load(Some(Path::new("t.toml")), &flags).map_err(|e| e.to_string())?;
            assert_eq!(s.engine.policy.deadline, Duration::from_millis(20));
            assert_eq!(s.engine.policy.max_staleness, Duration::from_secs(600));
            assert_eq!(s.engine.default_prediction, Some(0.5));
            assert_eq!(s.engine.batcher.max_batch_size, 8);
            assert_eq!(s.listen.port(), 9999);

            // Paths in a file are relative to it; from flags, to the cwd.
            jail.create_dir("conf")?;
            jail.create_dir("conf/models")?;
            jail.create_file(
                "conf/c.toml",
                "[models]\npath = \"models\"\n[store]\nurl = \"s.redb\"\nfeatures_url = \"redis://h:1\"\n",
            )?;
            let s = load(Some(Path::new("conf/c.toml")), &Overrides::default())
                .map_err(|e| e.to_string())?;
            // (figment reports the file's absolute path)
            let conf = jail.directory().join("conf");
            assert_eq!(
                s.model_path.canonicalize().ok(),
                conf.join("models").canonicalize().ok()
            );
            assert!(
                Path::new(&s.config.store.url).ends_with("conf/s.redb"),
                "{}",
                s.config.store.url
            );
            assert_eq!(s.config.store.features_url.as_deref(), Some("redis://h:1"));
            let s = load(
                Some(Path::new("conf/c.toml")),
                &Overrides {
                    store: Some("x.redb".into()),
                    ..Overrides::default()
                },
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(s.config.store.url, "x.redb");

            // memory.preload: off by default; a count and its lookback.
            let s = load(Some(Path::new("t.toml")), &flags).map_err(|e| e.to_string())?;
            assert_eq!(s.preload, None);
            jail.set_env("TANDEM__MEMORY__PRELOAD", "1000");
            jail.set_env("TANDEM__MEMORY__PRELOAD_LOOKBACK", "30m");
            let s = load(Some(Path::new("t.toml")), &flags).map_err(|e| e.to_string())?;
            assert_eq!(s.preload, Some((1000, Duration::from_secs(1800))));
            jail.set_env("TANDEM__MEMORY__PRELOAD_LOOKBACK", "0s");
            let e = load(Some(Path::new("t.toml")), &flags)
                .unwrap_err()
                .to_string();
            assert!(e.contains("memory.preload_lookback"), "{e}");
            jail.set_env("TANDEM__MEMORY__PRELOAD", "0");

            // server.workers: one per core by default (0); a count; a bound.
            assert_eq!(s.workers, None);
            jail.set_env("TANDEM__SERVER__WORKERS", "1");
            let s = load(Some(Path::new("t.toml")), &flags).map_err(|e| e.to_string())?;
            assert_eq!(s.workers, Some(1));
            jail.set_env("TANDEM__SERVER__WORKERS", "100000");
            let e = load(Some(Path::new("t.toml")), &flags)
                .unwrap_err()
                .to_string();
            assert!(e.contains("server.workers"), "{e}");
            jail.set_env("TANDEM__SERVER__WORKERS", "-1");
            let e = load(Some(Path::new("t.toml")), &flags)
                .unwrap_err()
                .to_string();
            assert!(e.contains("workers"), "{e}");
            jail.set_env("TANDEM__SERVER__WORKERS", "0");

            jail.set_env("TANDEM__HYBRID__DEADLINE", "soon");
            let e = load(Some(Path::new("t.toml")), &flags)
                .unwrap_err()
                .to_string();
            assert!(e.contains("hybrid.deadline"), "{e}");

            jail.set_env("TANDEM__HYBRID__DEADLINE", "5ms");
            jail.set_env("TANDEM__BATCHING__MAX_BATCH", "3");
            let e = load(Some(Path::new("t.toml")), &flags)
                .unwrap_err()
                .to_string();
            assert!(e.contains("max_batch"), "{e}");
            Ok(())
        });
    }

    /// The rows `docs/configuration.md` must have: `| \`section.key\` |
    /// \`default\` | \`TANDEM__SECTION__KEY\` |`, from `Config::default()`.
    fn rows() -> Vec<(String, String)> {
        let v = serde_json::to_value(Config::default()).unwrap();
        let mut out = Vec::new();
        for (section, keys) in v.as_object().unwrap() {
            let Some(keys) = keys.as_object() else {
                continue;
            };
            if section == "features" {
                continue;
            }
            for (key, value) in keys {
                let shown = match value {
                    serde_json::Value::Null => "none".to_string(),
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let row = format!(
                    "| `{section}.{key}` | `{shown}` | `TANDEM__{}__{}` |",
                    section.to_uppercase(),
                    key.to_uppercase()
                );
                out.push((format!("{section}.{key}"), row));
            }
        }
        out
    }

    #[test]
    fn docs_configuration_lists_every_key_with_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let rows = rows();
        let missing: Vec<&String> = rows
            .iter()
            .filter(|(_, row)| !doc.lines().any(|l| l.starts_with(row.as_str())))
            .map(|(_, row)| row)
            .collect();
        assert!(
            missing.is_empty(),
            "docs/configuration.md lacks (or has another default for):\n{}",
            missing
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
        // And lists no key that does not exist.
        for line in doc
            .lines()
            .filter(|l| l.starts_with("| `") && l.contains("TANDEM__"))
        {
            let key = line.split('`').nth(1).unwrap();
            assert!(
                rows.iter().any(|(k, _)| k == key) || key.starts_with("features."),
                "docs/configuration.md documents {key}, which is not a key"
            );
        }
    }
}
