//! The batch-vs-real-time cost model, made honest: throughputs are inputs
//! (measured by `tandem bench` and a batch run's summary), not constants,
//! and every strategy pays for what it really runs.
//!
//! - **Batch**: every run scores every entity on batch instances billed for
//!   the compute time (`entities x runs / batch throughput`), and the
//!   stored predictions are served by lookup instances provisioned for the
//!   peak request rate at the measured lookup throughput.
//! - **Real time**: instances provisioned for the peak request rate at the
//!   measured real-time throughput (feature fetch + model), all day.
//! - **Hybrid**: the batch runs, plus serving instances provisioned for the
//!   peak where a share `hit_rate` of requests is a lookup and the rest is
//!   computed.
//!
//! Provisioning keeps `headroom` spare (instances run at most at
//! `1 - headroom` of their measured throughput) and never goes below
//! `min_instances`. The break-even request rate compares the marginal
//! (fractional-instance) costs, where the reference design's fixed figures
//! (10k predictions/s per batch instance, 100 requests/s per serving
//! instance) give 1M entities once a day = 0.116 req/s.

use serde::{Deserialize, Serialize};

const DAY_SECS: f64 = 86_400.0;
const DAY_HOURS: f64 = 24.0;

/// What the model needs to know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostInputs {
    /// Entities scored by each batch run.
    pub entities: f64,
    /// Batch runs per day (predictions per entity per day).
    pub runs_per_day: f64,
    /// Average request rate, requests/s.
    pub avg_rps: f64,
    /// Peak request rate, requests/s (provisioning is for the peak).
    pub peak_rps: f64,
    /// Batch instance price, per hour.
    pub batch_price_per_hour: f64,
    /// Serving instance price, per hour.
    pub serving_price_per_hour: f64,
    /// Measured batch throughput of one batch instance, predictions/s.
    pub batch_pps: f64,
    /// Measured real-time throughput of one serving instance (feature
    /// fetch + model), requests/s.
    pub realtime_rps: f64,
    /// Measured lookup throughput of one serving instance (stored
    /// predictions), requests/s.
    pub lookup_rps: f64,
    /// Share of requests the hybrid path answers from stored predictions.
    pub hit_rate: f64,
    /// Spare capacity kept, 0..1 (0.3: run at most at 70 %).
    pub headroom: f64,
    /// Fewest serving instances (availability).
    pub min_instances: u32,
}

impl CostInputs {
    /// Rejects inputs the arithmetic cannot use, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("batch_pps", self.batch_pps),
            ("realtime_rps", self.realtime_rps),
            ("lookup_rps", self.lookup_rps),
        ];
        for (k, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{k} must be a positive number, got {v}"));
            }
        }
        let non_negative = [
            ("entities", self.entities),
            ("runs_per_day", self.runs_per_day),
            ("avg_rps", self.avg_rps),
            ("peak_rps", self.peak_rps),
            ("batch_price_per_hour", self.batch_price_per_hour),
            ("serving_price_per_hour", self.serving_price_per_hour),
        ];
        for (k, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{k} must be a number >= 0, got {v}"));
            }
        }
        if self.peak_rps < self.avg_rps {
            return Err(format!(
                "peak_rps ({}) is below avg_rps ({})",
                self.peak_rps, self.avg_rps
            ));
        }
        if !(0.0..=1.0).contains(&self.hit_rate) {
            return Err(format!(
                "hit_rate must be between 0 and 1, got {}",
                self.hit_rate
            ));
        }
        if !(0.0..1.0).contains(&self.headroom) {
            return Err(format!(
                "headroom must be at least 0 and below 1, got {}",
                self.headroom
            ));
        }
        Ok(())
    }
}

/// One strategy's cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyCost {
    /// `batch`, `realtime` or `hybrid`.
    pub strategy: String,
    /// Batch compute per day.
    pub batch_per_day: f64,
    /// Serving instances per day.
    pub serving_per_day: f64,
    /// Total per day.
    pub per_day: f64,
    /// Serving instances provisioned.
    pub instances: u32,
    /// Batch compute hours per day.
    pub batch_hours: f64,
    /// Predictions computed per day.
    pub predictions_computed: f64,
    /// Cost per 1000 predictions computed.
    pub per_1k_computed: Option<f64>,
    /// Cost per 1000 requests served.
    pub per_1k_served: Option<f64>,
}

/// The model's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostReport {
    /// What went in.
    pub inputs: CostInputs,
    /// Batch, real time, hybrid.
    pub strategies: Vec<StrategyCost>,
    /// The cheapest strategy.
    pub cheapest: String,
    /// The average request rate above which real time costs more than
    /// batch (marginal costs; `None` when real time is never dearer).
    pub break_even_rps: Option<f64>,
    /// Daily cost of each strategy as the request rate (average and
    /// peak) is scaled.
    pub sensitivity_rate: Vec<SensitivityRow>,
    /// Daily cost of hybrid by hit rate.
    pub sensitivity_hit_rate: Vec<(f64, f64)>,
}

/// One row of the rate sensitivity table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensitivityRow {
    /// The factor applied to both rates.
    pub factor: f64,
    /// Average requests/s.
    pub avg_rps: f64,
    /// Daily cost: batch, real time, hybrid.
    pub batch: f64,
    /// Real time.
    pub realtime: f64,
    /// Hybrid.
    pub hybrid: f64,
}

/// What one serving instance costs per 1000 predictions while it answers
/// `rps` requests/s at `price_per_hour` (the `/metrics` gauge); `None` when
/// idle.
pub fn serving_cost_per_1k(price_per_hour: f64, rps: f64) -> Option<f64> {
    (rps > 0.0 && price_per_hour.is_finite() && price_per_hour >= 0.0)
        .then(|| price_per_hour / (rps * 3600.0 / 1000.0))
}

/// Instances for `load` seconds of serving work per second.
fn instances(load: f64, i: &CostInputs) -> u32 {
    let n = (load / (1.0 - i.headroom) - 1e-9).ceil().max(0.0);
    (n as u32).max(i.min_instances)
}

fn per_1k(cost: f64, n: f64) -> Option<f64> {
    (n > 0.0).then(|| cost / (n / 1000.0))
}

fn strategy(name: &str, i: &CostInputs, batch: bool, serving_load: f64) -> StrategyCost {
    let predictions_batch = if batch {
        i.entities * i.runs_per_day
    } else {
        0.0
    };
    let batch_hours = predictions_batch / i.batch_pps / 3600.0;
    let batch_per_day = batch_hours * i.batch_price_per_hour;
    let n = instances(serving_load, i);
    let serving_per_day = f64::from(n) * DAY_HOURS * i.serving_price_per_hour;
    let served = i.avg_rps * DAY_SECS;
    let computed_online = match name {
        "realtime" => served,
        "hybrid" => served * (1.0 - i.hit_rate),
        _ => 0.0,
    };
    let per_day = batch_per_day + serving_per_day;
    let predictions_computed = predictions_batch + computed_online;
    StrategyCost {
        strategy: name.to_string(),
        batch_per_day,
        serving_per_day,
        per_day,
        instances: n,
        batch_hours,
        predictions_computed,
        per_1k_computed: per_1k(per_day, predictions_computed),
        per_1k_served: per_1k(per_day, served),
    }
}

fn strategies(i: &CostInputs) -> Vec<StrategyCost> {
    let peak = i.peak_rps;
    vec![
        strategy("batch", i, true, peak / i.lookup_rps),
        strategy("realtime", i, false, peak / i.realtime_rps),
        strategy(
            "hybrid",
            i,
            true,
            peak * (i.hit_rate / i.lookup_rps + (1.0 - i.hit_rate) / i.realtime_rps),
        ),
    ]
}

/// Runs the model.
pub fn analyze(inputs: &CostInputs) -> Result<CostReport, String> {
    inputs.validate()?;
    let i = inputs;
    let all = strategies(i);
    let cheapest = all
        .iter()
        .min_by(|a, b| a.per_day.total_cmp(&b.per_day))
        .map(|s| s.strategy.clone())
        .unwrap_or_default();
    // Marginal cost of one request/s all day, per strategy's serving path.
    let hour_share = DAY_HOURS * i.serving_price_per_hour / (1.0 - i.headroom);
    let rt_marginal = hour_share / i.realtime_rps;
    let lookup_marginal = hour_share / i.lookup_rps;
    let batch_fixed = i.entities * i.runs_per_day / i.batch_pps / 3600.0 * i.batch_price_per_hour;
    let break_even_rps =
        (rt_marginal > lookup_marginal).then(|| batch_fixed / (rt_marginal - lookup_marginal));
    let sensitivity_rate = [0.01, 0.1, 0.5, 1.0, 2.0, 10.0, 100.0]
        .iter()
        .map(|f| {
            let scaled = CostInputs {
                avg_rps: i.avg_rps * f,
                peak_rps: i.peak_rps * f,
                ..i.clone()
            };
            let s = strategies(&scaled);
            SensitivityRow {
                factor: *f,
                avg_rps: scaled.avg_rps,
                batch: s[0].per_day,
                realtime: s[1].per_day,
                hybrid: s[2].per_day,
            }
        })
        .collect();
    let sensitivity_hit_rate = [0.0, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0]
        .iter()
        .map(|h| {
            let scaled = CostInputs {
                hit_rate: *h,
                ..i.clone()
            };
            (*h, strategies(&scaled)[2].per_day)
        })
        .collect();
    Ok(CostReport {
        inputs: i.clone(),
        strategies: all,
        cheapest,
        break_even_rps,
        sensitivity_rate,
        sensitivity_hit_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference design's example: 1M entities once a day against
    /// 100 requests/s, at its fixed 10k predictions/s per batch instance
    /// and 100 requests/s per serving instance, $1 an hour.
    fn reference() -> CostInputs {
        CostInputs {
            entities: 1e6,
            runs_per_day: 1.0,
            avg_rps: 100.0,
            peak_rps: 100.0,
            batch_price_per_hour: 1.0,
            serving_price_per_hour: 1.0,
            batch_pps: 10_000.0,
            realtime_rps: 100.0,
            lookup_rps: 100.0,
            hit_rate: 0.9,
            headroom: 0.0,
            min_instances: 1,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn the_reference_example() {
        let r = analyze(&reference()).unwrap();
        let [b, rt, h] = [&r.strategies[0], &r.strategies[1], &r.strategies[2]];
        // Batch: 1M / 10k = 100 s of compute = $0.02778; lookups on one
        // instance all day = $24.
        assert!(close(b.batch_hours, 100.0 / 3600.0));
        assert!(close(b.batch_per_day, 100.0 / 3600.0));
        assert_eq!(b.instances, 1);
        assert!(close(b.per_day, 24.0 + 100.0 / 3600.0));
        // Real time: 100 req/s at 100 per instance = 1 instance = $24.
        assert_eq!(rt.instances, 1);
        assert!(close(rt.per_day, 24.0));
        assert!(close(rt.predictions_computed, 8_640_000.0));
        assert!(close(rt.per_1k_served.unwrap(), 24.0 / 8_640.0));
        // Hybrid: the batch run plus one instance.
        assert!(close(h.per_day, b.per_day));
        assert_eq!(r.cheapest, "realtime");
        // Equal lookup and compute throughput: real time is never dearer
        // at the margin, so no break-even.
        assert_eq!(r.break_even_rps, None);
        // The reference design's own comparison ignores lookups: with
        // lookups nearly free, real time costs more above
        // batch_fixed / rt_marginal = 0.02778 / 0.24 = 0.1157 req/s.
        let free_lookups = CostInputs {
            lookup_rps: 1e12,
            ..reference()
        };
        let r = analyze(&free_lookups).unwrap();
        let be = r.break_even_rps.unwrap();
        assert!((be - 0.115_740_7).abs() < 1e-6, "{be}");
    }

    #[test]
    fn provisioning_follows_the_peak_with_headroom() {
        let i = CostInputs {
            avg_rps: 1_000.0,
            peak_rps: 5_000.0,
            realtime_rps: 2_000.0,
            lookup_rps: 20_000.0,
            headroom: 0.3,
            hit_rate: 0.8,
            min_instances: 2,
            ..reference()
        };
        let r = analyze(&i).unwrap();
        // 5000 / (2000 * 0.7) = 3.57 -> 4 real-time instances.
        assert_eq!(r.strategies[1].instances, 4);
        // Lookups: 5000 / 14000 -> 1, raised to the minimum of 2.
        assert_eq!(r.strategies[0].instances, 2);
        // Hybrid: 5000 * (0.8 / 20000 + 0.2 / 2000) / 0.7 = 1.0 -> 1 -> 2.
        assert_eq!(r.strategies[2].instances, 2);
        assert!(close(r.strategies[1].per_day, 4.0 * 24.0));
        // The sensitivity table's factor 1 row is the base case.
        let base = r.sensitivity_rate.iter().find(|s| s.factor == 1.0).unwrap();
        assert!(close(base.realtime, r.strategies[1].per_day));
        // Hybrid cost falls (weakly) as the hit rate rises.
        let hy: Vec<f64> = r.sensitivity_hit_rate.iter().map(|x| x.1).collect();
        assert!(hy.windows(2).all(|w| w[1] <= w[0] + 1e-9), "{hy:?}");
    }

    #[test]
    fn serving_cost_per_1k_follows_the_rate() {
        // $3.60 an hour at 1000 req/s = 3.6M predictions an hour.
        assert!(close(serving_cost_per_1k(3.6, 1000.0).unwrap(), 0.001));
        assert_eq!(serving_cost_per_1k(3.6, 0.0), None);
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let e = analyze(&CostInputs {
            realtime_rps: 0.0,
            ..reference()
        })
        .unwrap_err();
        assert!(e.contains("realtime_rps"), "{e}");
        let e = analyze(&CostInputs {
            peak_rps: 10.0,
            ..reference()
        })
        .unwrap_err();
        assert!(e.contains("peak_rps"), "{e}");
        let e = analyze(&CostInputs {
            headroom: 1.0,
            ..reference()
        })
        .unwrap_err();
        assert!(e.contains("headroom"), "{e}");
    }
}
