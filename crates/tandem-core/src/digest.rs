//! Stable hashes: the digest of a feature vector kept in every prediction
//! record, and the shard of an entity id. Both FNV-1a 64: tiny, fast, and
//! the same on every machine and build (unlike std's hasher).

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes
        .into_iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// Digest of the exact f32 values a prediction was computed from, as 16
/// lower-case hex digits.
pub fn feature_digest(features: &[f32]) -> String {
    format!("{:016x}", feature_digest_u64(features))
}

/// [`feature_digest`] as a number (the digest index keeps it so).
pub fn feature_digest_u64(features: &[f32]) -> u64 {
    let mut h = OFFSET;
    for v in features {
        for b in v.to_bits().to_le_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(PRIME);
        }
    }
    h
}

/// A 64-bit hash of an entity id.
pub fn id_hash(id: &str) -> u64 {
    fnv1a(id.bytes())
}

/// The shard `0..n` of an entity id.
pub fn shard_of(id: &str, n: u32) -> u32 {
    u32::try_from(fnv1a(id.bytes()) % u64::from(n.max(1))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(*b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(*b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a(*b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn digests_tell_values_apart_and_are_stable() {
        assert_eq!(feature_digest(&[1.0, 2.0]), feature_digest(&[1.0, 2.0]));
        assert_ne!(feature_digest(&[1.0, 2.0]), feature_digest(&[2.0, 1.0]));
        assert_eq!(feature_digest(&[]).len(), 16);
    }

    #[test]
    fn shards_cover_every_id_once() {
        let n = 4;
        let mut counts = [0usize; 4];
        for i in 0..10_000 {
            counts[shard_of(&format!("user-{i}"), n) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 2_000), "{counts:?}");
    }
}
