//! `tandem bench`: load-test a running tandem, or any TF Serving REST or
//! KServe V2 server, and report throughput, latency percentiles, errors,
//! (against tandem) the source mix and hit rates, and the SLA check.

mod calls;
mod chart;
mod load;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tandem_core::{SlaTargets, parse_duration};

use calls::{Draw, Entities, IdTemplate, Rows, Tensor};
use load::{Pacing, Plan};
pub use report::Report;

/// The API to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// tandem's `GET /v1/predict/{entity_id}`.
    Entity,
    /// TF Serving REST `POST /v1/models/{model}:predict`.
    Tfserving,
    /// KServe V2 `POST /v2/models/{model}/infer`.
    Kserve,
}

/// `tandem bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The server's base URL (http only).
    #[arg(default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Which API to load.
    #[arg(long, value_enum, default_value_t = Protocol::Entity)]
    pub protocol: Protocol,
    /// The model (needed for tfserving and kserve).
    #[arg(long)]
    pub model: Option<String>,
    /// Keep-alive connections (each runs one request at a time).
    #[arg(long, short = 'c', default_value_t = 64)]
    pub connections: usize,
    /// Open loop: Poisson arrivals at this many requests/s in total
    /// (latency counted from the intended send time). Without it, closed
    /// loop: every connection sends as soon as it is answered.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Measured time, after the warm-up (like 30s, 2m; default 30s unless
    /// --requests is given).
    #[arg(long, short = 'd')]
    pub duration: Option<String>,
    /// Stop after this many measured requests (instead of, or before, the
    /// duration).
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,
    /// Warm-up, not measured.
    #[arg(long, default_value = "5s")]
    pub warmup: String,
    /// Entities to draw from (tandem) or distinct feature rows to send
    /// (tensor protocols).
    #[arg(long, default_value_t = 1_000_000)]
    pub entities: u64,
    /// Entity ids: `{}` or `{:0W}` is the index (`0..entities`).
    #[arg(long, default_value = "user-{:09}")]
    pub id_template: String,
    /// Entity ids from a file, one per line (instead of the template).
    #[arg(long)]
    pub ids: Option<PathBuf>,
    /// Draw ids Zipf-distributed with this exponent (rank k has
    /// probability ~ 1/k^s) instead of uniformly.
    #[arg(long)]
    pub zipf: Option<f64>,
    /// Query string for entity requests, like `mode=realtime_only`.
    #[arg(long)]
    pub query: Option<String>,
    /// Features per row for tensor protocols (default: from the model's
    /// metadata).
    #[arg(long)]
    pub features: Option<usize>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// SLA: p99 latency target in ms.
    #[arg(long, default_value_t = SlaTargets::default().p99_ms)]
    pub sla_p99_ms: f64,
    /// SLA: availability target (share of requests answered, not 429/5xx).
    #[arg(long, default_value_t = SlaTargets::default().availability)]
    pub sla_availability: f64,
    /// SLA: error-rate target (share answered 5xx or not at all).
    #[arg(long, default_value_t = SlaTargets::default().error_rate)]
    pub sla_error_rate: f64,
    /// Write the full report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a latency chart (SVG) here.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    pub print_json: bool,
    /// Compare two reports (`A.json B.json`): prints B's figures as ratios
    /// of A's; runs no load.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    pub compare: Option<Vec<PathBuf>>,
}

/// Runs the command: exit 0 when the run met the SLA, 1 when it did not,
/// 2 when it could not run.
pub fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(files) = &args.compare {
        let a = Report::read(&files[0])?;
        let b = Report::read(&files[1])?;
        print!("{}", report::compare(&a, &b, &files[0], &files[1]));
        return Ok(ExitCode::SUCCESS);
    }
    let targets = SlaTargets {
        p99_ms: args.sla_p99_ms,
        availability: args.sla_availability,
        error_rate: args.sla_error_rate,
    };
    targets
        .validate()
        .map_err(|e| anyhow::anyhow!("SLA: {e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = rt.block_on(run(&args, targets))?;
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.chart {
        std::fs::write(path, chart::svg(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.print_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(if report.sla_met() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Where to send.
struct Target {
    addr: std::net::SocketAddr,
    host: String,
    base: String,
}

async fn target(url: &str) -> anyhow::Result<Target> {
    let u = url::Url::parse(url).with_context(|| format!("{url:?} is not a URL"))?;
    if u.scheme() != "http" {
        bail!("{url}: only http:// is supported (put TLS in front of a plain listener)");
    }
    let host = u
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("{url}: no host"))?
        .to_string();
    let port = u.port_or_known_default().unwrap_or(80);
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{host} resolves to no address"))?;
    Ok(Target {
        addr,
        host: match u.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        },
        base: u.path().trim_end_matches('/').to_string(),
    })
}

/// `GET path`: the status and the body as JSON (null when not JSON).
async fn get_json(t: &Target, path: &str) -> anyhow::Result<(u16, Value)> {
    let stream = tokio::net::TcpStream::connect(t.addr)
        .await
        .with_context(|| format!("connecting to {}", t.addr))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::get(format!("{}{path}", t.base))
        .header(hyper::header::HOST, &t.host)
        .body(Full::new(Bytes::new()))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .context("no answer in 10 s")??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// Finds the first input's name and width in a metadata document.
type InputPicker = fn(&Value) -> Option<(String, usize)>;

/// The first input's name and width, from the model's metadata.
async fn input_of(t: &Target, protocol: Tensor, model: &str) -> anyhow::Result<(String, usize)> {
    let (path, pick): (String, InputPicker) = match protocol {
        Tensor::KServe => (format!("/v2/models/{model}"), |v| {
            let i = v.get("inputs")?.get(0)?;
            let width = i.get("shape")?.as_array()?.last()?.as_i64()?;
            Some((
                i.get("name")?.as_str()?.to_string(),
                usize::try_from(width).ok()?,
            ))
        }),
        Tensor::TfServing => (format!("/v1/models/{model}/metadata"), |v| {
            let inputs = v
                .pointer("/metadata/signature_def/signature_def/serving_default/inputs")?
                .as_object()?;
            let (name, i) = inputs.iter().next()?;
            let dims = i.pointer("/tensor_shape/dim")?.as_array()?;
            let width = dims.last()?.get("size")?;
            let width = width
                .as_i64()
                .or_else(|| width.as_str().and_then(|s| s.parse().ok()))?;
            Some((name.clone(), usize::try_from(width).ok()?))
        }),
    };
    let (status, v) = get_json(t, &path).await?;
    if status != 200 {
        bail!("GET {path} answered {status}: {v}");
    }
    pick(&v).ok_or_else(|| {
        anyhow::anyhow!("GET {path}: no input with a fixed width in the metadata; pass --features")
    })
}

async fn run(args: &BenchArgs, targets: SlaTargets) -> anyhow::Result<Report> {
    let t = target(&args.url).await?;
    let duration = match (&args.duration, args.requests) {
        (Some(d), _) => Some(parse_duration(d).map_err(|e| anyhow::anyhow!("--duration: {e}"))?),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(30)),
    };
    let warmup = parse_duration(&args.warmup).map_err(|e| anyhow::anyhow!("--warmup: {e}"))?;
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if let Some(r) = args.rate
        && !(r.is_finite() && r > 0.0)
    {
        bail!("--rate must be a positive number of requests per second, got {r}");
    }
    if args.entities == 0 {
        bail!("--entities must be at least 1");
    }
    let draw = Draw::new(args.zipf, args.entities)?;
    let entities;
    let (calls, is_tandem): (std::sync::Arc<dyn load::Calls>, bool) = match args.protocol {
        Protocol::Entity => {
            let ids = match &args.ids {
                Some(p) => {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?;
                    let ids: Vec<String> = text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_string)
                        .collect();
                    if ids.is_empty() {
                        bail!("{} has no ids", p.display());
                    }
                    Some(ids)
                }
                None => None,
            };
            let n = ids.as_ref().map_or(args.entities, |i| i.len() as u64);
            entities = n;
            let draw = if ids.is_some() {
                Draw::new(args.zipf, n)?
            } else {
                draw
            };
            let entities = Entities {
                ids,
                template: IdTemplate::parse(&args.id_template)?,
                n,
                draw,
                query: args.query.clone(),
            };
            (std::sync::Arc::new(entities), true)
        }
        Protocol::Tfserving | Protocol::Kserve => {
            let protocol = if args.protocol == Protocol::Kserve {
                Tensor::KServe
            } else {
                Tensor::TfServing
            };
            let model = args
                .model
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("--protocol {:?} needs --model", args.protocol))?;
            let (input, width) = match (args.features, protocol) {
                (Some(w), Tensor::KServe) => (
                    input_of(&t, protocol, model)
                        .await
                        .map_or_else(|_| "input".to_string(), |(n, _)| n),
                    w,
                ),
                (Some(w), Tensor::TfServing) => (String::new(), w),
                (None, _) => input_of(&t, protocol, model).await?,
            };
            let pool = args.entities.min(4096) as usize;
            entities = pool as u64;
            let rows = Rows::random(pool, width, args.seed);
            let draw = Draw::new(args.zipf, pool as u64)?;
            (
                std::sync::Arc::new(Rows::new(protocol, model, &input, &rows, draw)),
                false,
            )
        }
    };
    // Against tandem, the server's own counters before and after.
    let stats_before = if is_tandem {
        match get_json(&t, "/v1/stats").await {
            Ok((200, v)) => Some(v),
            Ok((s, _)) => bail!("{}/v1/stats answered {s}: is this tandem?", args.url),
            Err(e) => return Err(e.context(format!("{} is not answering", args.url))),
        }
    } else {
        None
    };
    let plan = Plan {
        addr: t.addr,
        host: t.host.clone(),
        calls: std::sync::Arc::new(Prefixed {
            base: t.base.clone(),
            inner: calls,
        }),
        connections: args.connections,
        pacing: match args.rate {
            Some(rate) => Pacing::Open { rate },
            None => Pacing::Closed,
        },
        warmup,
        duration,
        requests: args.requests,
        seed: args.seed,
    };
    let outcome = load::run(plan).await;
    let server = match &stats_before {
        Some(before) => match get_json(&t, "/v1/stats").await {
            Ok((200, after)) => Some(report::server_delta(before, &after)),
            _ => None,
        },
        None => None,
    };
    Ok(Report::new(args, entities, &outcome, server, targets))
}

/// Puts the URL's base path in front of every request.
struct Prefixed {
    base: String,
    inner: std::sync::Arc<dyn load::Calls>,
}

impl load::Calls for Prefixed {
    fn next(&self, rng: &mut rand::rngs::SmallRng) -> load::Call {
        let mut c = self.inner.next(rng);
        if !self.base.is_empty() {
            c.path = format!("{}{}", self.base, c.path);
        }
        c
    }
}
