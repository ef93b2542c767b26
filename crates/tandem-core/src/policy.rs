//! The hybrid policy a request is answered under, and where an answer came
//! from.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Parses `250ms`, `90s`, `15m`, `24h`, `7d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (use 250ms, 30s, 15m, 24h, 7d)"))?;
    let per = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s, m, h, d)")),
    };
    n.checked_mul(per)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration {s:?} is too long"))
}

/// Which paths may answer a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Fresh stored prediction, else real-time compute, else stale, else
    /// default.
    #[default]
    Hybrid,
    /// Stored predictions only (fresh, else stale), else default; never
    /// computes.
    BatchOnly,
    /// Always computes; when computing fails, stale then default.
    RealtimeOnly,
}

impl Mode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Hybrid => "hybrid",
            Mode::BatchOnly => "batch_only",
            Mode::RealtimeOnly => "realtime_only",
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hybrid" => Ok(Mode::Hybrid),
            "batch_only" => Ok(Mode::BatchOnly),
            "realtime_only" => Ok(Mode::RealtimeOnly),
            other => Err(format!(
                "mode '{other}' is not one of hybrid, batch_only, realtime_only"
            )),
        }
    }
}

/// How one request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HybridPolicy {
    /// Which paths may answer.
    pub mode: Mode,
    /// A stored prediction older than this is stale.
    pub max_staleness: Duration,
    /// Time allowed for the real-time path (feature fetch, queue, model).
    pub deadline: Duration,
}

impl Default for HybridPolicy {
    fn default() -> Self {
        HybridPolicy {
            mode: Mode::Hybrid,
            max_staleness: Duration::from_secs(3600),
            deadline: Duration::from_millis(50),
        }
    }
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerSource {
    /// A fresh prediction from the in-process memory tier.
    Memory,
    /// A fresh prediction from the shared store.
    Store,
    /// Computed for this request.
    Realtime,
    /// A stored prediction older than `max_staleness` (degraded).
    Stale,
    /// The configured default prediction (degraded).
    Default,
}

impl AnswerSource {
    /// Every source, in chain order.
    pub const ALL: [AnswerSource; 5] = [
        AnswerSource::Memory,
        AnswerSource::Store,
        AnswerSource::Realtime,
        AnswerSource::Stale,
        AnswerSource::Default,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerSource::Memory => "memory",
            AnswerSource::Store => "store",
            AnswerSource::Realtime => "realtime",
            AnswerSource::Stale => "stale",
            AnswerSource::Default => "default",
        }
    }

    /// Whether the answer is a fallback (stale or default).
    pub fn is_degraded(self) -> bool {
        matches!(self, AnswerSource::Stale | AnswerSource::Default)
    }
}

impl fmt::Display for AnswerSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Health of the service, judged from the recent mix of answer sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Fallbacks below the degraded threshold.
    Healthy,
    /// Fallbacks at or above the degraded threshold.
    Degraded,
    /// Fallbacks at or above the critical threshold.
    Critical,
}

/// When the recent share of fallback answers makes the service degraded or
/// critical.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthThresholds {
    /// Share of stale + default answers (0..=1) from which the service is
    /// degraded (default 0.05).
    pub degraded: f64,
    /// Share of stale + default answers from which it is critical (default
    /// 0.25).
    pub critical: f64,
    /// Share of default answers alone from which it is critical (default
    /// 0.10).
    pub critical_default: f64,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        HealthThresholds {
            degraded: 0.05,
            critical: 0.25,
            critical_default: 0.10,
        }
    }
}

impl HealthThresholds {
    /// The status for `degraded` fallback answers (stale + default), of which
    /// `defaults` were defaults, out of `total`, with the reason.
    pub fn judge(&self, total: u64, degraded: u64, defaults: u64) -> (Health, String) {
        if total == 0 {
            return (Health::Healthy, "no recent requests".into());
        }
        let share = degraded as f64 / total as f64;
        let default_share = defaults as f64 / total as f64;
        let pct = |x: f64| format!("{:.1}%", x * 100.0);
        if default_share >= self.critical_default {
            (
                Health::Critical,
                format!(
                    "{} of recent answers were default predictions (critical at {})",
                    pct(default_share),
                    pct(self.critical_default)
                ),
            )
        } else if share >= self.critical {
            (
                Health::Critical,
                format!(
                    "{} of recent answers were stale or default (critical at {})",
                    pct(share),
                    pct(self.critical)
                ),
            )
        } else if share >= self.degraded {
            (
                Health::Degraded,
                format!(
                    "{} of recent answers were stale or default (degraded at {})",
                    pct(share),
                    pct(self.degraded)
                ),
            )
        } else {
            (
                Health::Healthy,
                format!("{} of recent answers were stale or default", pct(share)),
            )
        }
    }

    /// Checks that the thresholds are shares in order.
    pub fn validate(&self) -> Result<(), String> {
        for (k, v) in [
            ("degraded", self.degraded),
            ("critical", self.critical),
            ("critical_default", self.critical_default),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{k} must be between 0 and 1, got {v}"));
            }
        }
        if self.degraded > self.critical {
            return Err(format!(
                "degraded ({}) must not exceed critical ({})",
                self.degraded, self.critical
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_thresholds() {
        let t = HealthThresholds::default();
        assert_eq!(t.judge(0, 0, 0).0, Health::Healthy);
        assert_eq!(t.judge(100, 4, 0).0, Health::Healthy);
        assert_eq!(t.judge(100, 5, 0).0, Health::Degraded);
        assert_eq!(t.judge(100, 25, 0).0, Health::Critical);
        assert_eq!(t.judge(100, 10, 10).0, Health::Critical);
        assert!(t.judge(100, 5, 0).1.contains("5.0%"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("99999999999999999d").is_err());
    }

    #[test]
    fn modes_parse() {
        assert_eq!("batch_only".parse::<Mode>(), Ok(Mode::BatchOnly));
        assert!("fast".parse::<Mode>().unwrap_err().contains("fast"));
    }
}
