//! `tandem serve`: the real-time and hybrid HTTP server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tandem_engine::{Engine, Models};
use tandem_model::{ModelRepository, VersionPolicy};
use tandem_server::HttpConfig;
use tokio::sync::watch;

use crate::config::{self, Overrides};

/// Flags of `tandem serve`; every one also has a config key.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A model repository (`<repo>/<model>/<version>/model.onnx`, polled for
    /// new versions) or one `.onnx` file [models.path].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prediction store URL: `PATH.redb`, `redis://HOST:PORT`,
    /// `redis-cluster://H:P,H:P` [store.url; default tandem.redb].
    #[arg(long)]
    store: Option<String>,
    /// Feature store URL, when features live apart from predictions
    /// [store.features_url].
    #[arg(long)]
    feature_store: Option<String>,
    /// Address to listen on [server.listen; default 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<String>,
    /// TOML config file; environment variables `TANDEM__SECTION__KEY`
    /// override it, and flags override both.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log format on stderr: `text`, or `json` (one object per line, with
    /// the request id of the request being served). `TANDEM_LOG` filters
    /// (`info` by default; `tandem_server=debug` logs every request).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log warnings and errors only unless TANDEM_LOG says otherwise (the
    /// quickstart, whose output is the list of things to try).
    #[arg(skip)]
    quiet: bool,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// JSON objects, one per line.
    Json,
}

/// Runs the server until SIGINT or SIGTERM.
/// Called with the bound address once the server listens.
pub type OnListening = Box<dyn FnOnce(SocketAddr) + Send>;

impl ServeArgs {
    /// Serve with this config file, listening there.
    pub fn with_config(config: PathBuf, listen: String) -> ServeArgs {
        ServeArgs {
            model: None,
            store: None,
            feature_store: None,
            listen: Some(listen),
            config: Some(config),
            log_format: LogFormat::Text,
            quiet: true,
        }
    }
}

/// Runs `tandem serve`.
pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    serve_with(args, None)
}

/// Runs `tandem serve`, calling `on_listening` once it listens.
pub fn serve_with(args: ServeArgs, on_listening: Option<OnListening>) -> anyhow::Result<ExitCode> {
    let flags = Overrides {
        model: args.model,
        store: args.store,
        feature_store: args.feature_store,
        listen: args.listen,
    };
    let settings = config::load(args.config.as_deref(), &flags)?;
    let telemetry = crate::telemetry::init(
        args.log_format == LogFormat::Json,
        if args.quiet { "warn" } else { "info" },
        &settings.config.tracing,
    )?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = settings.workers {
        runtime.worker_threads(n);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(run(settings, on_listening));
    drop(runtime);
    telemetry.shutdown();
    result?;
    Ok(ExitCode::SUCCESS)
}

async fn run(
    settings: config::ServeSettings,
    on_listening: Option<OnListening>,
) -> anyhow::Result<()> {
    let mut logged = settings.config.clone();
    logged.store.url = tandem_store::config::redact(&logged.store.url);
    logged.store.features_url = logged
        .store
        .features_url
        .as_deref()
        .map(tandem_store::config::redact);
    tracing::info!(config = ?logged, "starting tandem serve");

    let metrics = match tandem_server::metrics::install() {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!("metrics disabled: cannot install the Prometheus recorder: {e}");
            None
        }
    };
    let path = settings.model_path.clone();
    let latest = settings.config.models.latest_versions;
    let repo = tokio::task::spawn_blocking(move || {
        let repo = ModelRepository::open_path(&path, VersionPolicy::Latest(latest));
        // Loading's transient memory was freed on this thread.
        crate::release_free_memory();
        repo
    })
    .await
    .context("model loading panicked")?
    .with_context(|| format!("cannot load models from {}", settings.model_path.display()))?;
    let models = Models::new(
        repo,
        settings.config.features.clone(),
        settings.config.realtime.utc_offset_minutes * 60,
        settings.config.models.default_model.clone(),
    )
    .map_err(|e| anyhow::anyhow!("config: {e}"))?;

    let store = tandem_store::open(&settings.config.store.url).with_context(|| {
        format!(
            "cannot open store {}",
            tandem_store::config::redact(&settings.config.store.url)
        )
    })?;
    let features = match &settings.config.store.features_url {
        Some(url) => Some(tandem_store::open(url).with_context(|| {
            format!(
                "cannot open feature store {}",
                tandem_store::config::redact(url)
            )
        })?),
        None => None,
    };
    let engine = Arc::new(Engine::new(
        settings.engine.clone(),
        models,
        store,
        features,
    ));
    if let Some((k, lookback)) = settings.preload {
        // Before listening, so that a replica that joins (a rolling restart)
        // answers its most active entities from memory from the start.
        let started = std::time::Instant::now();
        match engine.preload_memory(k, lookback).await {
            Ok(n) => tracing::info!(
                loaded = n,
                asked = k,
                took_ms = started.elapsed().as_millis() as u64,
                "memory preloaded with the most active entities' predictions"
            ),
            Err(e) => tracing::warn!("memory not preloaded: {e}"),
        }
    }
    crate::release_free_memory();

    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(every) = settings.poll_interval
        && !engine.models().repository().is_single_file()
    {
        tokio::spawn(poll_models(engine.clone(), every, stop_rx.clone()));
    }
    crate::schedule::start(engine.clone(), &settings.config.schedule, stop_rx.clone());
    println!("tandem serve listening on http://{addr}");
    if let Some(f) = on_listening {
        f(addr);
    }
    tracing::info!(%addr, store = %engine.store_description(), "serving");
    let http = HttpConfig {
        body_limit: settings.config.server.body_limit_bytes,
        sla: settings.sla,
        window: settings.sla_window,
        price_per_hour: settings.config.cost.price_per_hour,
    };
    tandem_server::serve(listener, engine.clone(), http, metrics, async move {
        shutdown_signal().await;
        tracing::info!("shutting down: draining requests and store writes");
        let _ = stop_tx.send(true);
    })
    .await
    .context("server error")?;
    tracing::info!("stopped");
    Ok(())
}

/// Rescans the model repository every `every`, loading and warming new
/// versions on a blocking thread before they are swapped in.
async fn poll_models(
    engine: Arc<Engine>,
    every: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let e = engine.clone();
        let reload = tokio::task::spawn_blocking(move || {
            let report = e.models().reload();
            if !report.loaded.is_empty() || !report.unloaded.is_empty() {
                crate::release_free_memory();
            }
        });
        if reload.await.is_err() {
            tracing::error!("model reload panicked; keeping the current models");
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
