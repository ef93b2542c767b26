//! Logs and traces for `tandem serve`: `tracing` to stderr (text or JSON,
//! levels from `TANDEM_LOG`), and, when `[tracing] otlp_endpoint` is set,
//! spans exported over OTLP/HTTP (protobuf or JSON) to an OpenTelemetry
//! collector: each request's span (route, method, `request_id`, status)
//! with the engine's spans inside it.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::TracingSection;

/// Keeps the exporter alive; [`Telemetry::shutdown`] flushes what is
/// buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (at shutdown).
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("warning: flushing traces: {e}");
        }
    }
}

/// Installs the global subscriber. `json`: JSON log lines; `level`: the
/// default when `TANDEM_LOG` is not set.
pub fn init(json: bool, level: &str, tracing: &TracingSection) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_env("TANDEM_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed()
    };
    let (otel, provider) = match &tracing.otlp_endpoint {
        Some(endpoint) => {
            let protocol = match tracing.otlp_protocol.as_str() {
                "http/protobuf" => Protocol::HttpBinary,
                "http/json" => Protocol::HttpJson,
                other => anyhow::bail!(
                    "config key tracing.otlp_protocol: '{other}' is not http/protobuf or http/json"
                ),
            };
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(protocol)
                .with_endpoint(endpoint.clone())
                .build()
                .with_context(|| format!("config key tracing.otlp_endpoint: {endpoint}"))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    Resource::builder_empty()
                        .with_service_name(tracing.service_name.clone())
                        .build(),
                )
                .build();
            let tracer = provider.tracer("tandem");
            // Request spans are debug-level (free when nothing listens);
            // with an exporter they are what it is for.
            let targets = Targets::new()
                .with_default(LevelFilter::INFO)
                .with_target("tandem_server", LevelFilter::DEBUG)
                .with_target("tandem_engine", LevelFilter::DEBUG);
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(targets)
                .boxed();
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(Telemetry { provider })
}
