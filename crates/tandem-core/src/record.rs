//! Prediction records, feature rows, and the time rules around them (TTLs,
//! staleness).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Where a prediction came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionSource {
    /// Scored by a batch run (`tandem batch`, `warm`, `refresh`); also what
    /// a record without a `source` field (written by another tool) is taken
    /// to be.
    #[default]
    Batch,
    /// Computed at request time by the real-time path.
    Realtime,
    /// The configured default prediction, used when nothing else could answer.
    Default,
}

impl PredictionSource {
    /// The lower-case name used on the wire and in stores.
    pub fn as_str(self) -> &'static str {
        match self {
            PredictionSource::Batch => "batch",
            PredictionSource::Realtime => "realtime",
            PredictionSource::Default => "default",
        }
    }
}

impl fmt::Display for PredictionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored prediction and its provenance.
///
/// Serialized as the reference design's JSON (`prediction` and `timestamp`
/// first, extra fields after), so applications that read `pred:{id}` from
/// Redis directly keep working. A record written by the reference design
/// itself (only `prediction` and `timestamp`) reads back with an empty model
/// name, version 0 and source `batch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionRecord {
    /// The prediction (for a vector output, its selected column).
    pub prediction: f64,
    /// When it was computed: Unix time in seconds (fractional).
    pub timestamp: f64,
    /// Every value of a multi-output prediction, when there is more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<f64>>,
    /// Model name (empty when unknown).
    #[serde(default)]
    pub model: Arc<str>,
    /// Model version (0 when unknown).
    #[serde(default)]
    pub version: u64,
    /// Which path produced it.
    #[serde(default)]
    pub source: PredictionSource,
    /// The batch run that produced it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<Arc<str>>,
    /// Digest of the input features it was computed from (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Arc<str>>,
}

impl PredictionRecord {
    /// Age of the record at `now` (zero if it claims to come from the future).
    pub fn age(&self, now: SystemTime) -> Duration {
        let now = unix_seconds(now);
        Duration::try_from_secs_f64((now - self.timestamp).max(0.0)).unwrap_or(Duration::ZERO)
    }

    /// Whether the record is older than `max_staleness` at `now`.
    pub fn is_stale(&self, now: SystemTime, max_staleness: Duration) -> bool {
        self.age(now) > max_staleness
    }
}

/// How long stored predictions live, by source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlPolicy {
    /// TTL of batch predictions (default 24 h).
    pub batch: Duration,
    /// TTL of real-time predictions (default 1 h).
    pub realtime: Duration,
}

impl Default for TtlPolicy {
    fn default() -> Self {
        TtlPolicy {
            batch: Duration::from_secs(24 * 3600),
            realtime: Duration::from_secs(3600),
        }
    }
}

impl TtlPolicy {
    /// The TTL for a record of `source` (default predictions are kept as
    /// long as real-time ones).
    pub fn for_source(&self, source: PredictionSource) -> Duration {
        match source {
            PredictionSource::Batch => self.batch,
            PredictionSource::Realtime | PredictionSource::Default => self.realtime,
        }
    }
}

/// An entity's stored features by name. Stored as a JSON object of numbers;
/// a `null` value is read as absent.
pub type FeatureRow = BTreeMap<String, f64>;

/// Unix time in fractional seconds.
pub fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Unix time in whole milliseconds (0 before the epoch).
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(timestamp: f64) -> PredictionRecord {
        PredictionRecord {
            prediction: 0.5,
            timestamp,
            values: None,
            model: "m".into(),
            version: 1,
            source: PredictionSource::Batch,
            run_id: None,
            digest: None,
        }
    }

    #[test]
    fn staleness_is_strictly_older_than_the_bound() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let r = record(900.0);
        assert_eq!(r.age(now), Duration::from_secs(100));
        assert!(!r.is_stale(now, Duration::from_secs(100)));
        assert!(r.is_stale(now, Duration::from_secs(99)));
    }

    #[test]
    fn a_record_from_the_future_has_age_zero() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(record(2000.0).age(now), Duration::ZERO);
    }

    #[test]
    fn ttl_by_source() {
        let p = TtlPolicy::default();
        assert_eq!(
            p.for_source(PredictionSource::Batch),
            Duration::from_secs(86400)
        );
        assert_eq!(
            p.for_source(PredictionSource::Realtime),
            Duration::from_secs(3600)
        );
    }
}
