//! What the load generator sends: entity lookups on tandem's native API,
//! or feature rows to a TF Serving REST or KServe V2 model; entity ids
//! drawn uniformly or Zipf-distributed.

use bytes::Bytes;
use rand::RngExt;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Zipf};

use super::load::{Call, Calls};

/// How entity ids (or feature rows) are drawn.
#[derive(Debug, Clone, Copy)]
pub enum Draw {
    /// Every entity equally likely.
    Uniform,
    /// Rank `k` (entity `k - 1`) has probability proportional to
    /// `1 / k^s`.
    Zipf(Zipf<f64>),
}

impl Draw {
    /// `uniform`, or Zipf with exponent `s` (> 0) over `n` entities.
    pub fn new(zipf: Option<f64>, n: u64) -> anyhow::Result<Draw> {
        match zipf {
            None => Ok(Draw::Uniform),
            Some(s) => Zipf::new(n as f64, s).map(Draw::Zipf).map_err(|e| {
                anyhow::anyhow!("--zipf {s}: {e} (the exponent must be >= 0; 0 is uniform)")
            }),
        }
    }

    /// An index in `0..n`.
    pub fn index(&self, rng: &mut SmallRng, n: u64) -> u64 {
        match self {
            Draw::Uniform => rng.random_range(0..n),
            Draw::Zipf(z) => (z.sample(rng) as u64).clamp(1, n) - 1,
        }
    }
}

/// Entity ids: a template with `{}` (the index) or `{:0W}` (zero-padded
/// to W digits), like `user-{:09}`.
#[derive(Debug, Clone)]
pub struct IdTemplate {
    prefix: String,
    width: usize,
    suffix: String,
}

impl IdTemplate {
    /// Parses a template.
    pub fn parse(t: &str) -> anyhow::Result<IdTemplate> {
        let open = t
            .find('{')
            .ok_or_else(|| anyhow::anyhow!("--id-template {t:?} has no {{}} for the index"))?;
        let close = t[open..]
            .find('}')
            .map(|c| open + c)
            .ok_or_else(|| anyhow::anyhow!("--id-template {t:?}: unclosed {{"))?;
        let spec = &t[open + 1..close];
        let width = match spec {
            "" => 0,
            s => s
                .strip_prefix(":0")
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| {
                    anyhow::anyhow!("--id-template {t:?}: use {{}} or {{:0W}}, like user-{{:09}}")
                })?,
        };
        Ok(IdTemplate {
            prefix: t[..open].to_string(),
            width,
            suffix: t[close + 1..].to_string(),
        })
    }

    /// The id of entity `i`.
    pub fn id(&self, i: u64) -> String {
        format!("{}{:0w$}{}", self.prefix, i, self.suffix, w = self.width)
    }
}

/// Percent-encodes a path segment (ids with `/`, spaces, ...).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET /v1/predict/{id}?query` on tandem.
pub struct Entities {
    /// Ids, when read from a file.
    pub ids: Option<Vec<String>>,
    /// Ids otherwise.
    pub template: IdTemplate,
    /// How many (the range of the template's index).
    pub n: u64,
    /// Uniform or Zipf.
    pub draw: Draw,
    /// Appended after `?` (for example `mode=realtime_only`).
    pub query: Option<String>,
}

impl Calls for Entities {
    fn next(&self, rng: &mut SmallRng) -> Call {
        let i = self.draw.index(rng, self.n);
        let id = match &self.ids {
            Some(ids) => segment(&ids[i as usize]),
            None => segment(&self.template.id(i)),
        };
        let path = match &self.query {
            Some(q) => format!("/v1/predict/{id}?{q}"),
            None => format!("/v1/predict/{id}"),
        };
        Call {
            method: hyper::Method::GET,
            path,
            body: Bytes::new(),
        }
    }
}

/// Which tensor protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tensor {
    /// `POST /v1/models/{model}:predict` with `instances`.
    TfServing,
    /// `POST /v2/models/{model}/infer`.
    KServe,
}

/// Feature rows for a model: a pool of bodies made up front from random
/// features (or rows read from a file), drawn per request.
pub struct Rows {
    path: String,
    bodies: Vec<Bytes>,
    draw: Draw,
}

impl Rows {
    /// Bodies for `rows` (each of the model's width).
    pub fn new(protocol: Tensor, model: &str, input: &str, rows: &[Vec<f32>], draw: Draw) -> Rows {
        let path = match protocol {
            Tensor::TfServing => format!("/v1/models/{}:predict", segment(model)),
            Tensor::KServe => format!("/v2/models/{}/infer", segment(model)),
        };
        let bodies = rows
            .iter()
            .map(|row| {
                let v = match protocol {
                    Tensor::TfServing => serde_json::json!({ "instances": [row] }),
                    Tensor::KServe => serde_json::json!({
                        "inputs": [{
                            "name": input,
                            "shape": [1, row.len()],
                            "datatype": "FP32",
                            "data": row,
                        }]
                    }),
                };
                Bytes::from(v.to_string())
            })
            .collect();
        Rows { path, bodies, draw }
    }

    /// Random rows: features uniform in [0, 1).
    pub fn random(n: usize, width: usize, seed: u64) -> Vec<Vec<f32>> {
        use rand::SeedableRng;
        let mut rng = SmallRng::seed_from_u64(seed);
        (0..n)
            .map(|_| (0..width).map(|_| rng.random::<f32>()).collect())
            .collect()
    }
}

impl Calls for Rows {
    fn next(&self, rng: &mut SmallRng) -> Call {
        let i = self.draw.index(rng, self.bodies.len() as u64) as usize;
        Call {
            method: hyper::Method::POST,
            path: self.path.clone(),
            body: self.bodies[i].clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn templates_pad_and_reject_nonsense() {
        assert_eq!(
            IdTemplate::parse("user-{:09}").unwrap().id(42),
            "user-000000042"
        );
        assert_eq!(IdTemplate::parse("{}").unwrap().id(7), "7");
        assert_eq!(IdTemplate::parse("a{}b").unwrap().id(7), "a7b");
        assert!(IdTemplate::parse("user").is_err());
        assert!(IdTemplate::parse("user-{:x}").is_err());
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn zipf_favours_low_ranks_and_uniform_does_not() {
        let mut rng = SmallRng::seed_from_u64(1);
        let n = 1000;
        let z = Draw::new(Some(1.0), n).unwrap();
        let u = Draw::new(None, n).unwrap();
        let count = |d: &Draw, rng: &mut SmallRng| {
            let mut c = vec![0u32; n as usize];
            for _ in 0..100_000 {
                c[d.index(rng, n) as usize] += 1;
            }
            c
        };
        let zc = count(&z, &mut rng);
        let uc = count(&u, &mut rng);
        // Zipf(1) over 1000: P(rank 1) = 1 / H(1000) ~ 0.134, P(rank 2) half that.
        assert!((12_000..15_000).contains(&zc[0]), "{}", zc[0]);
        assert!((5_800..7_600).contains(&zc[1]), "{}", zc[1]);
        assert!(uc.iter().all(|c| (40..170).contains(c)), "{:?}", &uc[..10]);
        assert!(Draw::new(Some(-1.0), n).is_err());
        assert!(Draw::new(Some(f64::NAN), n).is_err());
    }
}
