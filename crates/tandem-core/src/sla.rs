//! Service-level targets and the check of observed figures against them,
//! shared by the live server (`/v1/sla`) and offline load-test results.

use serde::{Deserialize, Serialize};

/// The targets (defaults: p99 latency 100 ms, availability 99.9 %, error
/// rate 0.1 %).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlaTargets {
    /// Highest acceptable p99 latency of prediction requests, in ms.
    pub p99_ms: f64,
    /// Lowest acceptable share of prediction requests answered (neither
    /// refused with 429 nor failed with 5xx).
    pub availability: f64,
    /// Highest acceptable share of prediction requests failed with 5xx.
    pub error_rate: f64,
}

impl Default for SlaTargets {
    fn default() -> Self {
        SlaTargets {
            p99_ms: 100.0,
            availability: 0.999,
            error_rate: 0.001,
        }
    }
}

impl SlaTargets {
    /// Checks the targets are in range, naming the bad key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.p99_ms.is_finite() && self.p99_ms > 0.0) {
            return Err(format!(
                "p99_ms must be a positive number of milliseconds, got {}",
                self.p99_ms
            ));
        }
        for (k, v) in [
            ("availability", self.availability),
            ("error_rate", self.error_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{k} must be between 0 and 1, got {v}"));
            }
        }
        Ok(())
    }
}

/// Figures observed over some period.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    /// Prediction requests in the period.
    pub requests: u64,
    /// Their p99 latency in ms (`None` without requests).
    pub p99_ms: Option<f64>,
    /// Requests refused (429).
    pub refused: u64,
    /// Requests failed (5xx).
    pub failed: u64,
}

/// One target checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlaResult {
    /// `p99_latency_ms`, `availability` or `error_rate`.
    pub name: String,
    /// The target.
    pub target: f64,
    /// The observed value (`None` without requests).
    pub actual: Option<f64>,
    /// Whether the target holds (`true` without requests: nothing broke it).
    pub met: bool,
    /// How far inside the target the actual value is (negative: missed by
    /// that much), in the target's unit.
    pub margin: Option<f64>,
}

/// Checks `observed` against `targets`.
pub fn check(targets: &SlaTargets, observed: &Observed) -> Vec<SlaResult> {
    let n = observed.requests;
    let share = |x: u64| (n > 0).then(|| x as f64 / n as f64);
    let availability = share(n.saturating_sub(observed.refused + observed.failed));
    let error_rate = share(observed.failed);
    let p99 = if n > 0 { observed.p99_ms } else { None };
    let result = |name: &str, target: f64, actual: Option<f64>, margin: Option<f64>| SlaResult {
        name: name.to_string(),
        target,
        actual,
        met: margin.is_none_or(|m| m >= 0.0),
        margin,
    };
    vec![
        result(
            "p99_latency_ms",
            targets.p99_ms,
            p99,
            p99.map(|a| targets.p99_ms - a),
        ),
        result(
            "availability",
            targets.availability,
            availability,
            availability.map(|a| a - targets.availability),
        ),
        result(
            "error_rate",
            targets.error_rate,
            error_rate,
            error_rate.map(|a| targets.error_rate - a),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked_with_margins() {
        let t = SlaTargets::default();
        let ok = check(
            &t,
            &Observed {
                requests: 10_000,
                p99_ms: Some(40.0),
                refused: 5,
                failed: 0,
            },
        );
        assert!(ok.iter().all(|r| r.met), "{ok:?}");
        assert_eq!(ok[0].margin, Some(60.0));
        assert!((ok[1].actual.unwrap() - 0.9995).abs() < 1e-12);
        let bad = check(
            &t,
            &Observed {
                requests: 1000,
                p99_ms: Some(150.0),
                refused: 0,
                failed: 2,
            },
        );
        assert!(!bad[0].met && bad[0].margin == Some(-50.0));
        assert!(!bad[1].met, "{bad:?}");
        assert!(!bad[2].met, "{bad:?}");
        let idle = check(
            &t,
            &Observed {
                requests: 0,
                p99_ms: None,
                refused: 0,
                failed: 0,
            },
        );
        assert!(idle.iter().all(|r| r.met && r.actual.is_none()));
    }
}
