//! The load generator: one task per HTTP/1.1 keep-alive connection, closed
//! loop (each connection sends its next request when the last one is
//! answered) or open loop (each connection follows its own Poisson arrival
//! process, and latency is measured from the intended send time, so a slow
//! answer that delays the next request is not hidden: no coordinated
//! omission). Latencies go into HDR histograms (microseconds, three
//! significant digits), per connection, merged at the end; a coarser
//! histogram per second of the run feeds the timeline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Exp};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Highest latency tracked (longer ones are clamped to it): 10 minutes.
const MAX_US: u64 = 600_000_000;

/// One request to send.
#[derive(Debug, Clone)]
pub struct Call {
    /// `GET` or `POST`.
    pub method: hyper::Method,
    /// Path and query.
    pub path: String,
    /// JSON body (empty for `GET`).
    pub body: Bytes,
}

/// Makes the next request from a random source.
pub trait Calls: Send + Sync {
    /// The next request.
    fn next(&self, rng: &mut SmallRng) -> Call;
}

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// Each connection sends when its previous request is answered.
    Closed,
    /// Poisson arrivals at this many requests per second in total.
    Open {
        /// Requests per second.
        rate: f64,
    },
}

/// What to run.
pub struct Plan {
    /// The server.
    pub addr: SocketAddr,
    /// The `Host` header.
    pub host: String,
    /// The requests.
    pub calls: Arc<dyn Calls>,
    /// Keep-alive connections (and tasks).
    pub connections: usize,
    /// Closed or open loop.
    pub pacing: Pacing,
    /// Not measured: requests whose (intended) start falls in it.
    pub warmup: Duration,
    /// Measured time (after the warm-up); the run also stops after
    /// `requests` measured requests when given.
    pub duration: Option<Duration>,
    /// Measured requests to send.
    pub requests: Option<u64>,
    /// Seed of every random choice.
    pub seed: u64,
}

/// One second of the measured run.
#[derive(Debug, Clone)]
pub struct Second {
    /// Answers in the second (by intended start).
    pub latency: Histogram<u64>,
    /// Requests that failed without an HTTP answer.
    pub failed: u64,
}

/// What happened.
#[derive(Debug)]
pub struct Outcome {
    /// Latency of every measured HTTP answer, in microseconds.
    pub latency: Histogram<u64>,
    /// Answers by status code, plus `io` for requests that got none.
    pub statuses: BTreeMap<String, u64>,
    /// Per second of the measured run.
    pub timeline: Vec<Second>,
    /// Measured wall time.
    pub elapsed: Duration,
}

fn histogram(sigfig: u8) -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_US, sigfig).unwrap_or_else(|_| {
        Histogram::new(sigfig).unwrap_or_else(|_| unreachable!("sigfig is 2 or 3"))
    })
}

struct Shared {
    timeline: Mutex<Vec<Second>>,
    quota: Option<AtomicU64>,
}

impl Shared {
    /// Takes one measured request from the quota; false when spent.
    fn take(&self) -> bool {
        self.quota.as_ref().is_none_or(|q| {
            q.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        })
    }

    fn merge_second(&self, second: usize, h: &Histogram<u64>, failed: u64) {
        let mut t = self.timeline.lock().unwrap_or_else(PoisonError::into_inner);
        while t.len() <= second {
            t.push(Second {
                latency: histogram(2),
                failed: 0,
            });
        }
        let _ = t[second].latency.add(h);
        t[second].failed += failed;
    }
}

struct Conn {
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    async fn sender(&mut self, addr: SocketAddr) -> std::io::Result<&mut SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_none_or(SendRequest::is_closed) {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        self.sender
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no connection"))
    }

    /// Sends one request and reads the whole answer: the status, or an
    /// error when none came.
    async fn call(&mut self, plan: &Plan, call: Call) -> std::io::Result<u16> {
        let sender = self.sender(plan.addr).await?;
        sender.ready().await.map_err(std::io::Error::other)?;
        let mut req = hyper::Request::builder()
            .method(call.method)
            .uri(call.path)
            .header(hyper::header::HOST, &plan.host);
        if !call.body.is_empty() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(call.body))
            .map_err(std::io::Error::other)?;
        let result = async {
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await?;
            Ok::<u16, hyper::Error>(status)
        }
        .await;
        result.map_err(|e| {
            self.sender = None;
            std::io::Error::other(e)
        })
    }
}

struct Local {
    latency: Histogram<u64>,
    statuses: BTreeMap<String, u64>,
    second: usize,
    this_second: Histogram<u64>,
    failed_this_second: u64,
}

impl Local {
    fn roll(&mut self, shared: &Shared, second: usize) {
        if second != self.second {
            self.flush(shared);
            self.second = second;
        }
    }

    fn flush(&mut self, shared: &Shared) {
        if !self.this_second.is_empty() || self.failed_this_second > 0 {
            shared.merge_second(self.second, &self.this_second, self.failed_this_second);
            self.this_second.reset();
            self.failed_this_second = 0;
        }
    }
}

async fn connection(plan: Arc<Plan>, shared: Arc<Shared>, id: usize, start: Instant) -> Local {
    let mut rng = SmallRng::seed_from_u64(plan.seed.wrapping_add(id as u64 * 0x9E37_79B9));
    let measure_from = start + plan.warmup;
    let end = plan.duration.map(|d| measure_from + d);
    let gaps = match plan.pacing {
        Pacing::Open { rate } => Exp::new(rate / plan.connections as f64).ok(),
        Pacing::Closed => None,
    };
    let mut local = Local {
        latency: histogram(3),
        statuses: BTreeMap::new(),
        second: 0,
        this_second: histogram(2),
        failed_this_second: 0,
    };
    let mut conn = Conn { sender: None };
    // Open loop: a random phase so that connections do not start in step.
    let mut intended = match &gaps {
        Some(g) => start + Duration::from_secs_f64(g.sample(&mut rng)),
        None => start,
    };
    loop {
        let now = Instant::now();
        let at = match &gaps {
            Some(_) => intended,
            None => now,
        };
        if end.is_some_and(|e| at >= e) {
            break;
        }
        let measured = at >= measure_from;
        if measured && !shared.take() {
            break;
        }
        if at > now {
            tokio::time::sleep_until(at).await;
        }
        let result = conn.call(&plan, plan.calls.next(&mut rng)).await;
        let done = Instant::now();
        if measured {
            let second = (at - measure_from).as_secs() as usize;
            local.roll(&shared, second);
            match result {
                Ok(status) => {
                    let us = (done - at).as_micros().clamp(1, u128::from(MAX_US)) as u64;
                    let _ = local.latency.record(us);
                    let _ = local.this_second.record(us);
                    *local.statuses.entry(status.to_string()).or_default() += 1;
                }
                Err(_) => {
                    local.failed_this_second += 1;
                    *local.statuses.entry("io".to_string()).or_default() += 1;
                }
            }
        }
        if result.is_err() {
            // A server that refuses connections is not hammered in a loop.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Some(g) = &gaps {
            intended += Duration::from_secs_f64(g.sample(&mut rng));
        }
    }
    local.flush(&shared);
    local
}

/// Runs `plan` on the current tokio runtime.
pub async fn run(plan: Plan) -> Outcome {
    let plan = Arc::new(plan);
    let shared = Arc::new(Shared {
        timeline: Mutex::new(Vec::new()),
        quota: plan.requests.map(AtomicU64::new),
    });
    let start = Instant::now();
    let tasks: Vec<_> = (0..plan.connections.max(1))
        .map(|i| tokio::spawn(connection(plan.clone(), shared.clone(), i, start)))
        .collect();
    let mut latency = histogram(3);
    let mut statuses = BTreeMap::new();
    for t in tasks {
        if let Ok(local) = t.await {
            let _ = latency.add(&local.latency);
            for (k, v) in local.statuses {
                *statuses.entry(k).or_default() += v;
            }
        }
    }
    let elapsed = start.elapsed().saturating_sub(plan.warmup);
    let timeline = std::mem::take(
        &mut *shared
            .timeline
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    Outcome {
        latency,
        statuses,
        timeline,
        elapsed,
    }
}
