//! Prediction records, feature rows, and the time rules around them (TTLs,
//! staleness).

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
    /// The input features themselves, compact ([`pack_inputs`]): what
    /// `tandem refresh --changed-threshold` measures drift against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Arc<str>>,
}

/// Packs input features for a record: IEEE half floats, little-endian,
/// base64 (2 bytes a feature, 44 characters for 16 features). Why not the
/// digest: a digest says "changed" but not by how much; why not f32 or
/// JSON: a record per entity for millions of entities, and a drift
/// threshold does not need more than the 3 significant digits of a half
/// float (the exact digest still says "unchanged" exactly).
pub fn pack_inputs(values: &[f32]) -> String {
    use base64::Engine as _;
    let mut bytes = Vec::with_capacity(2 * values.len());
    half_bytes(values, &mut bytes);
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

/// Appends [`pack_inputs`] of `values` to `out`, with no allocation: the
/// halves go through a stack block of 48 values (96 bytes, a whole number
/// of base64's 3-byte groups, so the text is the same as one encoding of
/// all of them).
pub fn pack_inputs_into(values: &[f32], out: &mut Vec<u8>) {
    use base64::Engine as _;
    const BLOCK: usize = 48;
    let mut halves = [0u8; 2 * BLOCK];
    let mut text = [0u8; 2 * BLOCK / 3 * 4];
    for block in values.chunks(BLOCK) {
        for (v, h) in block.iter().zip(halves.chunks_exact_mut(2)) {
            h.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
        }
        let n = base64::engine::general_purpose::STANDARD_NO_PAD
            .encode_slice(&halves[..2 * block.len()], &mut text)
            .unwrap_or(0);
        out.extend_from_slice(&text[..n]);
    }
}

/// Appends `values` as IEEE half floats, little-endian: the bytes that
/// [`pack_inputs`] encodes in base64 (and the digest index keeps as they
/// are).
pub fn half_bytes(values: &[f32], out: &mut Vec<u8>) {
    out.extend(
        values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes()),
    );
}

/// Appends the half-float bytes of a [`pack_inputs`] packing to `out`;
/// `false` (and `out` unchanged) when it is not such a packing.
pub fn unpack_inputs_into(packed: &str, out: &mut Vec<u8>) -> bool {
    use base64::Engine as _;
    let start = out.len();
    match base64::engine::general_purpose::STANDARD_NO_PAD.decode_vec(packed, out) {
        Ok(()) if (out.len() - start).is_multiple_of(2) => true,
        _ => {
            out.truncate(start);
            false
        }
    }
}

/// Unpacks [`pack_inputs`]; `None` when it is not such a packing.
pub fn unpack_inputs(packed: &str) -> Option<Vec<f32>> {
    let mut bytes = Vec::with_capacity(packed.len() * 3 / 4);
    unpack_inputs_into(packed, &mut bytes).then(|| {
        bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()
    })
}

/// [`l2_distance`] between inputs kept as half-float bytes ([`half_bytes`])
/// and `row`, computed exactly as on [`unpack_inputs`] of their packing;
/// `None` when the widths differ or a kept value is NaN (not a packing of
/// real inputs: the digest index marks unknown inputs so).
pub fn half_distance(halves: &[u8], row: &[f32]) -> Option<f64> {
    if halves.len() != 2 * row.len() {
        return None;
    }
    let mut sum = 0.0f64;
    for (b, y) in halves.chunks_exact(2).zip(row) {
        let x = half::f16::from_le_bytes([b[0], b[1]]);
        if x.is_nan() {
            return None;
        }
        sum += (f64::from(x.to_f32()) - f64::from(*y)).powi(2);
    }
    Some(sum.sqrt())
}

/// Euclidean distance between two feature vectors of the same width
/// (`None` when the widths differ).
pub fn l2_distance(a: &[f32], b: &[f32]) -> Option<f64> {
    (a.len() == b.len()).then(|| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
            .sum::<f64>()
            .sqrt()
    })
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
    #[test]
    fn packing_into_a_buffer_writes_what_pack_inputs_returns() {
        // Every width up to past three blocks, so that every tail length
        // of the last block is met, after text already in the buffer.
        for width in 0..150usize {
            let v: Vec<f32> = (0..width)
                .map(|i| ((i * 7919 + width) % 1000) as f32 * 0.37 - 150.0)
                .collect();
            let mut out = b"prefix".to_vec();
            super::pack_inputs_into(&v, &mut out);
            assert_eq!(&out[..6], b"prefix");
            assert_eq!(
                std::str::from_utf8(&out[6..]).unwrap(),
                super::pack_inputs(&v),
                "width {width}"
            );
        }
    }

    #[test]
    fn inputs_pack_to_half_floats_and_back() {
        let v = [0.0f32, 1.5, -2.25, 1000.0, 0.1];
        let packed = super::pack_inputs(&v);
        assert_eq!(packed.len(), 14, "{packed}");
        let back = super::unpack_inputs(&packed).unwrap();
        for (a, b) in v.iter().zip(&back) {
            assert!((a - b).abs() <= a.abs() * 1e-3 + 1e-4, "{a} {b}");
        }
        assert_eq!(super::unpack_inputs("not base64!"), None);
        assert_eq!(super::l2_distance(&[0.0, 3.0], &[4.0, 0.0]), Some(5.0));
        assert_eq!(super::l2_distance(&[0.0], &[4.0, 0.0]), None);
    }

    #[test]
    fn half_bytes_measure_drift_as_the_packing_does() {
        let old = [0.1f32, -3.3, 1234.5, 7.0];
        let new = [0.2f32, -3.0, 1200.0, 7.0];
        let mut bytes = vec![9u8];
        super::half_bytes(&old, &mut bytes);
        assert_eq!(bytes.len(), 1 + 8);
        let mut unpacked = vec![9u8];
        assert!(super::unpack_inputs_into(
            &super::pack_inputs(&old),
            &mut unpacked
        ));
        assert_eq!(unpacked, bytes, "appended, the same bytes");
        let via_record = super::l2_distance(
            &super::unpack_inputs(&super::pack_inputs(&old)).unwrap(),
            &new,
        );
        assert_eq!(super::half_distance(&bytes[1..], &new), via_record);
        assert!(via_record.unwrap() > 34.0);
        // Other widths, a NaN (unknown inputs), a bad packing.
        assert_eq!(super::half_distance(&bytes[1..], &new[..3]), None);
        assert_eq!(super::half_distance(&[0xff, 0xff], &[1.0]), None);
        let mut out = vec![1u8];
        assert!(!super::unpack_inputs_into("not base64!", &mut out));
        assert!(
            !super::unpack_inputs_into("AA", &mut out),
            "an odd byte count"
        );
        assert_eq!(out, [1u8]);
    }

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
            inputs: None,
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
