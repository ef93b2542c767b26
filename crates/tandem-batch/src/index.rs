//! The digest index: for every entity a batch run (or a refresh) wrote,
//! what its record was made from: the 64-bit digest of its input features,
//! when it was computed and when it expires, plus the model name and
//! version of the run. 24 bytes per entity in a local file.
//!
//! `tandem refresh --index PATH` reads it to tell, from the input alone,
//! which entities cannot need a rescore (same features, same model, not
//! too old, not expired), and reads the stored records of the others only:
//! on a typical day, a few percent. The index trusts that records live
//! until their TTL; a store that evicts early (Redis `maxmemory` with an
//! eviction policy) can lose records the index still lists, so refresh
//! without `--index` now and then finds those as `missing`.
//!
//! File layout (little endian): magic `TNDMIDX2`, model name length (u32)
//! and bytes, version (u64), entry count (u64), then the entries, in no
//! particular order: id hash (u64), digest (u64, [`row_hash`]),
//! computed_at (u32 unix seconds), expires_at (u32 unix seconds). Written
//! to a temporary file and renamed, so a reader never sees half an index.

use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::BatchError;

const MAGIC: &[u8; 8] = b"TNDMIDX2";

/// The index's hash of one row of inputs: the f32 bits mixed in feature
/// order (one multiply per feature, so that refresh can hash a batch
/// column by column). Not the records' `digest` (FNV-1a over bytes, a
/// stable published format); the index is its own format.
pub fn row_hash(row: &[f32]) -> u64 {
    row.iter().fold(HASH_SEED, |h, v| mix(h, v.to_bits()))
}

/// The starting value of [`row_hash`].
pub const HASH_SEED: u64 = 0x243F_6A88_85A3_08D3;

/// One step of [`row_hash`].
#[inline]
pub fn mix(h: u64, bits: u32) -> u64 {
    (h ^ u64::from(bits))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(29)
}

/// What the index knows about one entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// [`row_hash`] of the inputs.
    pub digest: u64,
    /// When the prediction was computed (unix seconds).
    pub computed_at: u32,
    /// When the record expires (unix seconds).
    pub expires_at: u32,
}

/// Entities by id hash ([`tandem_core::digest::id_hash`]).
#[derive(Debug, Clone, Default)]
pub struct DigestIndex {
    /// Model name of the records.
    pub model: String,
    /// Model version of the records.
    pub version: u64,
    /// Entries by id hash.
    pub entries: HashMap<u64, IndexEntry>,
}

fn err(path: &Path, detail: impl std::fmt::Display) -> BatchError {
    BatchError::Index {
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

/// Seconds since the epoch as the index stores them (saturating).
pub fn secs(t: f64) -> u32 {
    if t.is_finite() && t > 0.0 {
        t.min(f64::from(u32::MAX)) as u32
    } else {
        0
    }
}

impl DigestIndex {
    /// An empty index for `model` version `version`.
    pub fn new(model: &str, version: u64) -> Self {
        DigestIndex {
            model: model.to_owned(),
            version,
            entries: HashMap::new(),
        }
    }

    /// Reads an index file.
    pub fn read(path: &Path) -> Result<DigestIndex, BatchError> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| err(path, e))?;
        let corrupt = || err(path, "not a tandem digest index (or truncated)");
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], BatchError> {
            let s = bytes.get(at..at + n).ok_or_else(corrupt)?;
            at += n;
            Ok(s)
        };
        if take(8)? != MAGIC {
            return Err(corrupt());
        }
        let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or([0; 4]));
        let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        let name_len = u32_at(take(4)?) as usize;
        let model = String::from_utf8(take(name_len)?.to_vec()).map_err(|_| corrupt())?;
        let version = u64_at(take(8)?);
        let count = usize::try_from(u64_at(take(8)?)).map_err(|_| corrupt())?;
        let body = take(count.checked_mul(24).ok_or_else(corrupt)?)?;
        let mut entries = HashMap::with_capacity(count);
        for e in body.chunks_exact(24) {
            entries.insert(
                u64_at(&e[0..8]),
                IndexEntry {
                    digest: u64_at(&e[8..16]),
                    computed_at: u32_at(&e[16..20]),
                    expires_at: u32_at(&e[20..24]),
                },
            );
        }
        Ok(DigestIndex {
            model,
            version,
            entries,
        })
    }

    /// Writes the index to `path` (through a temporary file and a rename).
    pub fn write(&self, path: &Path) -> Result<(), BatchError> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .ok_or_else(|| err(path, "not a file path"))?
            .to_string_lossy();
        let temp: PathBuf = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let result = (|| -> std::io::Result<()> {
            let mut w = BufWriter::new(std::fs::File::create(&temp)?);
            w.write_all(MAGIC)?;
            let name = self.model.as_bytes();
            w.write_all(&u32::try_from(name.len()).unwrap_or(0).to_le_bytes())?;
            w.write_all(name)?;
            w.write_all(&self.version.to_le_bytes())?;
            w.write_all(&(self.entries.len() as u64).to_le_bytes())?;
            for (k, e) in &self.entries {
                w.write_all(&k.to_le_bytes())?;
                w.write_all(&e.digest.to_le_bytes())?;
                w.write_all(&e.computed_at.to_le_bytes())?;
                w.write_all(&e.expires_at.to_le_bytes())?;
            }
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&temp, path)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&temp);
            return Err(err(path, e));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_hashes_tell_rows_apart() {
        assert_eq!(row_hash(&[1.0, 2.0]), row_hash(&[1.0, 2.0]));
        assert_ne!(row_hash(&[1.0, 2.0]), row_hash(&[2.0, 1.0]));
        assert_ne!(row_hash(&[0.0]), row_hash(&[-0.0]));
        assert_ne!(row_hash(&[]), row_hash(&[0.0]));
    }

    #[test]
    fn an_index_round_trips_and_a_bad_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("churn.idx");
        let mut index = DigestIndex::new("churn", 3);
        for i in 0..1000u64 {
            index.entries.insert(
                i * 7919,
                IndexEntry {
                    digest: i ^ 0xdead_beef,
                    computed_at: 1_700_000_000 + i as u32,
                    expires_at: 1_800_000_000,
                },
            );
        }
        index.write(&path).unwrap();
        let back = DigestIndex::read(&path).unwrap();
        assert_eq!(back.model, "churn");
        assert_eq!(back.version, 3);
        assert_eq!(back.entries, index.entries);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left");

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let e = DigestIndex::read(&path).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        std::fs::write(&path, b"hello").unwrap();
        assert!(DigestIndex::read(&path).is_err());
        let e = DigestIndex::read(&dir.path().join("none.idx"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.idx"), "{e}");
    }
}
