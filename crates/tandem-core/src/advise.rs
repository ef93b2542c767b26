//! The decision framework: batch, real time or hybrid, from what the use
//! case needs (latency, freshness, which entities are asked for, what a
//! prediction costs to compute) and what each strategy costs
//! ([`crate::cost`]).
//!
//! The rules, in order (every one that applies is a reason):
//! 1. **Latency**: real time answers in about `feature_ms + model_ms +
//!    overhead`; when that misses the latency budget, predictions must be
//!    computed ahead (batch, or hybrid with warming).
//! 2. **Freshness**: a batch prediction is up to `24h / runs_per_day` old
//!    (plus the run's own duration); when that is older than the freshness
//!    need, batch alone is out.
//! 3. When both exclude each other, hybrid is the answer (batch for the
//!    latency, real-time compute on misses and refreshes for freshness),
//!    with a warning that the freshness bound needs more batch runs or
//!    warming.
//! 4. **Coverage**: batch scores every entity; when only a small share is
//!    asked for each day, most of that work is wasted (counted).
//! 5. Otherwise the cheapest strategy by the cost model wins; hybrid is
//!    preferred on a near tie (within 10 %) because it degrades gracefully.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cost::{CostInputs, CostReport, analyze};

/// What the use case needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Needs {
    /// Latency budget for an answer, ms (p99).
    pub latency_ms: f64,
    /// Oldest acceptable prediction.
    #[serde(with = "secs")]
    pub freshness: Duration,
    /// Share of entities asked for at least once a day, 0..1.
    pub requested_share: f64,
    /// Feature fetch time at request time, ms.
    pub feature_ms: f64,
    /// Model time per prediction, ms.
    pub model_ms: f64,
    /// Serving overhead (HTTP, queueing), ms.
    pub overhead_ms: f64,
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

/// The recommendation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Score on a schedule, serve lookups.
    Batch,
    /// Compute every answer.
    Realtime,
    /// Lookups first, compute on misses and stale.
    Hybrid,
}

impl Strategy {
    /// `batch`, `realtime`, `hybrid`.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Batch => "batch",
            Strategy::Realtime => "realtime",
            Strategy::Hybrid => "hybrid",
        }
    }
}

/// What `advise` says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advice {
    /// Use this.
    pub strategy: Strategy,
    /// Why, one line each.
    pub reasons: Vec<String>,
    /// Caveats.
    pub warnings: Vec<String>,
    /// Estimated real-time latency, ms.
    pub realtime_latency_ms: f64,
    /// Age of a batch prediction just before the next run.
    pub batch_max_age_secs: f64,
    /// Share of batch predictions never asked for.
    pub batch_waste: f64,
    /// The costs behind it.
    pub cost: CostReport,
    /// A `tandem serve` configuration to start with (TOML).
    pub config: String,
}

fn human(d: f64) -> String {
    if d >= 86_400.0 {
        format!("{:.1} d", d / 86_400.0)
    } else if d >= 3600.0 {
        format!("{:.1} h", d / 3600.0)
    } else if d >= 60.0 {
        format!("{:.0} min", d / 60.0)
    } else {
        format!("{d:.0} s")
    }
}

/// A duration as the config writes it (`2d`, `36h`, `15m`, `30s`): whole
/// units, rounded up.
pub fn config_duration(secs: f64) -> String {
    let s = secs.max(1.0).ceil() as u64;
    if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) || s > 6 * 3600 {
        format!("{}h", s.div_ceil(3600))
    } else if s.is_multiple_of(60) || s > 600 {
        format!("{}m", s.div_ceil(60))
    } else {
        format!("{s}s")
    }
}

/// Applies the rules.
pub fn advise(needs: &Needs, inputs: &CostInputs) -> Result<Advice, String> {
    for (k, v) in [
        ("latency_ms", needs.latency_ms),
        ("feature_ms", needs.feature_ms),
        ("model_ms", needs.model_ms),
        ("overhead_ms", needs.overhead_ms),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(format!("{k} must be a number >= 0, got {v}"));
        }
    }
    if !(0.0..=1.0).contains(&needs.requested_share) {
        return Err(format!(
            "requested_share must be between 0 and 1, got {}",
            needs.requested_share
        ));
    }
    let cost = analyze(inputs)?;
    let mut reasons = Vec::new();
    let mut warnings = Vec::new();
    let rt_latency = needs.feature_ms + needs.model_ms + needs.overhead_ms;
    let realtime_fast_enough = rt_latency <= needs.latency_ms;
    let run_secs = cost.strategies[0].batch_hours * 3600.0 / inputs.runs_per_day.max(1e-9);
    let batch_age = if inputs.runs_per_day > 0.0 {
        86_400.0 / inputs.runs_per_day + run_secs
    } else {
        f64::INFINITY
    };
    let batch_fresh_enough = batch_age <= needs.freshness.as_secs_f64();
    let waste = 1.0 - needs.requested_share;

    if realtime_fast_enough {
        reasons.push(format!(
            "real time answers in about {rt_latency:.1} ms (features {:.1} + model {:.2} + overhead {:.1}), inside the {:.0} ms budget",
            needs.feature_ms, needs.model_ms, needs.overhead_ms, needs.latency_ms
        ));
    } else {
        reasons.push(format!(
            "real time needs about {rt_latency:.1} ms, over the {:.0} ms budget: predictions must be computed ahead",
            needs.latency_ms
        ));
    }
    if batch_fresh_enough {
        reasons.push(format!(
            "batch predictions are at most {} old ({} runs a day), within the freshness need of {}",
            human(batch_age),
            inputs.runs_per_day,
            human(needs.freshness.as_secs_f64())
        ));
    } else {
        reasons.push(format!(
            "batch predictions get up to {} old, past the freshness need of {}",
            human(batch_age),
            human(needs.freshness.as_secs_f64())
        ));
    }
    if waste > 0.5 {
        reasons.push(format!(
            "only {:.0} % of entities are asked for each day: batch wastes {:.0} % of its predictions",
            needs.requested_share * 100.0,
            waste * 100.0
        ));
    }
    let per_day = |s: Strategy| {
        cost.strategies
            .iter()
            .find(|c| c.strategy == s.as_str())
            .map_or(f64::INFINITY, |c| c.per_day)
    };
    let strategy = match (realtime_fast_enough, batch_fresh_enough) {
        (false, true) => {
            // Batch meets both; hybrid only adds a fallback for misses.
            if per_day(Strategy::Hybrid) <= per_day(Strategy::Batch) * 1.1 {
                reasons.push(
                    "hybrid costs about the same as batch and covers entities the batch missed"
                        .into(),
                );
                Strategy::Hybrid
            } else {
                Strategy::Batch
            }
        }
        (true, false) => {
            if per_day(Strategy::Hybrid) < per_day(Strategy::Realtime) {
                reasons.push(format!(
                    "hybrid is cheaper than real time ({:.2} vs {:.2} a day) at a {:.0} % hit rate, with max_staleness at the freshness need",
                    per_day(Strategy::Hybrid),
                    per_day(Strategy::Realtime),
                    inputs.hit_rate * 100.0
                ));
                Strategy::Hybrid
            } else {
                Strategy::Realtime
            }
        }
        (false, false) => {
            warnings.push(format!(
                "neither alone fits: real time is too slow and batch too stale; run the batch at least every {} (or warm the active entities) and keep real time as the fallback",
                human(needs.freshness.as_secs_f64())
            ));
            Strategy::Hybrid
        }
        (true, true) => {
            let cheapest = [Strategy::Batch, Strategy::Realtime, Strategy::Hybrid]
                .into_iter()
                .min_by(|a, b| per_day(*a).total_cmp(&per_day(*b)))
                .unwrap_or(Strategy::Hybrid);
            if cheapest != Strategy::Hybrid && per_day(Strategy::Hybrid) <= per_day(cheapest) * 1.1
            {
                reasons.push(format!(
                    "{} is cheapest, but hybrid is within 10 % and degrades gracefully",
                    cheapest.as_str()
                ));
                Strategy::Hybrid
            } else {
                reasons.push(format!(
                    "both fit; {} is cheapest ({:.2} a day)",
                    cheapest.as_str(),
                    per_day(cheapest)
                ));
                cheapest
            }
        }
    };
    if strategy != Strategy::Realtime && waste > 0.5 && realtime_fast_enough {
        warnings.push("consider `tandem warm --top-k` over the active entities instead of scoring all of them".into());
    }
    let mode = match strategy {
        Strategy::Batch => "batch_only",
        Strategy::Realtime => "realtime_only",
        Strategy::Hybrid => "hybrid",
    };
    // Stored predictions live twice the batch interval (a late run still
    // finds the last one), at most a week.
    let config = format!(
        "[hybrid]\nmode = \"{mode}\"\nmax_staleness = \"{}\"\ndeadline = \"{}ms\"\n\n[ttl]\n# also the --ttl of tandem batch\nbatch = \"{}\"\n\n[sla]\np99_ms = {}\n",
        config_duration(needs.freshness.as_secs_f64()),
        needs.latency_ms.ceil().max(1.0),
        config_duration((batch_age * 2.0).min(7.0 * 86_400.0)),
        needs.latency_ms.ceil().max(1.0),
    );
    Ok(Advice {
        strategy,
        reasons,
        warnings,
        realtime_latency_ms: rt_latency,
        batch_max_age_secs: batch_age,
        batch_waste: waste,
        cost,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> CostInputs {
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

    fn needs() -> Needs {
        Needs {
            latency_ms: 100.0,
            freshness: Duration::from_secs(2 * 86_400),
            requested_share: 1.0,
            feature_ms: 5.0,
            model_ms: 1.0,
            overhead_ms: 2.0,
        }
    }

    #[test]
    fn slow_model_and_relaxed_freshness_is_batch_or_hybrid() {
        let n = Needs {
            model_ms: 500.0,
            ..needs()
        };
        let i = CostInputs {
            realtime_rps: 2.0,
            lookup_rps: 10_000.0,
            hit_rate: 0.999,
            ..inputs()
        };
        let a = advise(&n, &i).unwrap();
        assert!(
            matches!(a.strategy, Strategy::Batch | Strategy::Hybrid),
            "{a:?}"
        );
        assert!(
            a.reasons[0].contains("over the 100 ms budget"),
            "{:?}",
            a.reasons
        );
        // 24 h between runs + 100 s for the run itself.
        assert!((a.batch_max_age_secs - 86_500.0).abs() < 1e-6);
        assert!(a.config.contains("max_staleness = \"2d\""), "{}", a.config);
        assert!(a.config.contains("batch = \"49h\""), "{}", a.config);
    }

    #[test]
    fn fresh_need_and_fast_model_is_realtime_when_cheaper() {
        let n = Needs {
            freshness: Duration::from_secs(60),
            ..needs()
        };
        // Lookups cost as much as compute: hybrid saves nothing.
        let a = advise(&n, &inputs()).unwrap();
        assert_eq!(a.strategy, Strategy::Realtime, "{a:?}");
        assert!(a.reasons[1].contains("past the freshness need of 1 min"));
    }

    #[test]
    fn conflict_is_hybrid_with_a_warning_and_waste_is_counted() {
        let n = Needs {
            freshness: Duration::from_secs(600),
            model_ms: 400.0,
            requested_share: 0.05,
            ..needs()
        };
        let a = advise(&n, &inputs()).unwrap();
        assert_eq!(a.strategy, Strategy::Hybrid);
        assert!(
            a.warnings[0].contains("neither alone fits"),
            "{:?}",
            a.warnings
        );
        assert!((a.batch_waste - 0.95).abs() < 1e-12);
        assert!(a.reasons.iter().any(|r| r.contains("wastes 95 %")));
    }

    #[test]
    fn config_durations_parse_back() {
        for (secs, want) in [
            (86_400.0, "1d"),
            (90_000.0, "25h"),
            (900.0, "15m"),
            (45.0, "45s"),
            (601.0, "11m"),
        ] {
            let d = config_duration(secs);
            assert_eq!(d, want);
            assert!(crate::parse_duration(&d).unwrap().as_secs_f64() >= secs);
        }
    }

    #[test]
    fn bad_needs_name_the_field() {
        let e = advise(
            &Needs {
                requested_share: 2.0,
                ..needs()
            },
            &inputs(),
        )
        .unwrap_err();
        assert!(e.contains("requested_share"));
    }
}
