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
//! Entries keep the order in which the run met the entities, which is the
//! input's order (up to the interleaving of parallel batches). Tomorrow's
//! snapshot of the same table usually comes in the same order, so refresh
//! looks entities up with a [`Cursor`]: the entry after the previous hit is
//! tried first, and only a miss goes to a hash map (built on the first
//! miss). Walking the index in step with the input costs no random memory
//! access; a hash lookup per entity costs one or two cache misses, which
//! was most of a no-op refresh.
//!
//! File layout (little endian): magic `TNDMIDX2`, model name length (u32)
//! and bytes, version (u64), entry count (u64), then the entries in that
//! order: id hash (u64), digest (u64, [`row_hash`]),
//! computed_at (u32 unix seconds), expires_at (u32 unix seconds). Written
//! to a temporary file and renamed, so a reader never sees half an index.
//!
//! A refresh changes a few percent of the entries, so rather than
//! rewriting the whole file (24 MB for 1M entities) it appends a *journal
//! segment* with what changed: magic `TNDMJRN1`, record count (u64), the
//! records (position u64, id hash u64, then the entry's 16 bytes as above;
//! a position equal to the entry count so far appends a new entity), and a
//! checksum (u64) of the count and records. A reader applies the segments
//! in order after the entries. A segment cut short (the process killed
//! mid-append), with a bad checksum, or naming a position whose key does
//! not match is ignored together with everything after it, and the next
//! append starts where the valid part ends: losing a segment only makes
//! the next refresh read those entities' records from the store (their
//! indexed digests are the older ones). Once the journal holds more than
//! a quarter as many records as the index has entries, the next save
//! rewrites the whole file without a journal (compaction).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

use crate::error::BatchError;

const MAGIC: &[u8; 8] = b"TNDMIDX2";
const JOURNAL_MAGIC: &[u8; 8] = b"TNDMJRN1";
/// Bytes of one journal record.
const RECORD: usize = 32;

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

/// Hasher for keys that are already 64-bit hashes: one xor-shift and
/// multiply (hashbrown takes its buckets from the low bits and its tags
/// from the high ones; both then depend on every bit of the key).
#[derive(Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01B3);
        }
    }

    fn write_u64(&mut self, k: u64) {
        self.0 = (k ^ (k >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    }
}

type KeyMap = HashMap<u64, u32, BuildHasherDefault<KeyHasher>>;

/// Entities by id hash ([`tandem_core::digest::id_hash`]), in the order
/// the run met them.
#[derive(Debug, Default)]
pub struct DigestIndex {
    /// Model name of the records.
    pub model: String,
    /// Model version of the records.
    pub version: u64,
    keys: Vec<u64>,
    entries: Vec<IndexEntry>,
    /// Position by key, built on the first lookup that misses the cursor.
    map: OnceLock<KeyMap>,
    /// The file this index was read from or last saved to, while memory
    /// and file agree up to `dirty`.
    disk: Option<OnDisk>,
}

/// A journal record: position, id hash, entry.
type JournalRecord = (usize, u64, IndexEntry);

/// What [`DigestIndex::save`] needs to append instead of rewriting.
#[derive(Debug)]
struct OnDisk {
    path: PathBuf,
    /// Bytes of the file that hold the index (a torn segment after them
    /// is cut off by the next append).
    valid_len: u64,
    /// Records in the file's journal.
    journaled: usize,
    /// Positions changed or appended since, in order.
    dirty: Vec<u32>,
    /// The file as this process left it.
    stamp: Option<Stamp>,
}

/// Looks keys up in input order (see the module doc). A scan of several
/// partitions interleaves their batches, so the cursor remembers where the
/// last few runs stopped ([`Cursor::RUNS`]) and tries each, then the keys
/// a little ahead of each ([`Cursor::AHEAD`]: the index was written with
/// another interleaving), before the hash map: two row groups read in
/// parallel cost a few comparisons per batch, not a map.
#[derive(Debug)]
pub struct Cursor<'a> {
    index: &'a DigestIndex,
    next: usize,
    /// Where other runs would continue (`usize::MAX`: none).
    others: [usize; Cursor::RUNS],
    /// The slot of `others` to replace next.
    oldest: usize,
    /// Misses resolved by a linear scan so far.
    scans: usize,
}

impl Cursor<'_> {
    /// Runs remembered besides the current one.
    pub const RUNS: usize = 8;
    /// Misses resolved by a linear scan before the map is built.
    pub const SCANS: usize = 16;
    /// Keys searched ahead of each run's stop before a linear scan (512
    /// KiB: a few batches of another partition).
    pub const AHEAD: usize = 1 << 16;

    /// The position of `key`, trying the entry after the last hit first,
    /// then where the other recent runs stopped, then the map.
    pub fn find(&mut self, key: u64) -> Option<usize> {
        let keys = &self.index.keys;
        if keys.get(self.next) == Some(&key) {
            self.next += 1;
            return Some(self.next - 1);
        }
        if let Some(slot) = self.others.iter().position(|&o| keys.get(o) == Some(&key)) {
            let at = self.others[slot];
            self.others[slot] = self.next;
            self.next = at + 1;
            return Some(at);
        }
        let at = if let Some(map) = self.index.map.get() {
            map.get(&key).map(|at| *at as usize)
        } else if let Some(at) = self.ahead(key) {
            Some(at)
        } else if self.scans < Self::SCANS {
            // A new run (another partition's first batch) or a new entity:
            // the first few are found by a linear scan of the keys (8 bytes
            // an entity, sequential), cheaper than building the map.
            self.scans += 1;
            keys.iter().position(|&k| k == key)
        } else {
            self.index.position(key)
        }?;
        self.others[self.oldest] = self.next;
        self.oldest = (self.oldest + 1) % Self::RUNS;
        self.next = at + 1;
        Some(at)
    }

    /// `key` a little ahead of where a run stopped: the run's rows go on
    /// after a batch that another partition wrote in between (the run that
    /// wrote the index interleaved its partitions' batches differently).
    fn ahead(&self, key: u64) -> Option<usize> {
        let keys = &self.index.keys;
        std::iter::once(self.next)
            .chain(self.others)
            .filter(|&from| from < keys.len())
            .find_map(|from| {
                let to = keys.len().min(from + Self::AHEAD);
                keys[from..to]
                    .iter()
                    .position(|&k| k == key)
                    .map(|i| from + i)
            })
    }
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
            ..DigestIndex::default()
        }
    }

    /// Entities in the index.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The index holds no entity.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn map(&self) -> &KeyMap {
        self.map.get_or_init(|| {
            let mut map = KeyMap::with_capacity_and_hasher(self.keys.len(), Default::default());
            for (at, k) in self.keys.iter().enumerate() {
                // A key met twice (a 64-bit collision): the later entry wins.
                map.insert(*k, at as u32);
            }
            map
        })
    }

    /// The position of `key`.
    pub fn position(&self, key: u64) -> Option<usize> {
        self.map().get(&key).map(|at| *at as usize)
    }

    /// The entry of `key`.
    pub fn get(&self, key: u64) -> Option<&IndexEntry> {
        self.position(key).map(|at| &self.entries[at])
    }

    /// The entry at `at` (from [`DigestIndex::position`] or a [`Cursor`]).
    pub fn entry(&self, at: usize) -> Option<&IndexEntry> {
        self.entries.get(at)
    }

    /// A cursor at the first entry.
    pub fn cursor(&self) -> Cursor<'_> {
        Cursor {
            index: self,
            next: 0,
            others: [usize::MAX; Cursor::RUNS],
            oldest: 0,
            scans: 0,
        }
    }

    /// Appends an entity the index does not hold yet (a batch run meets
    /// each id once).
    pub fn push(&mut self, key: u64, entry: IndexEntry) {
        let at = self.keys.len() as u32;
        if let Some(map) = self.map.get_mut() {
            map.insert(key, at);
        }
        self.keys.push(key);
        self.entries.push(entry);
        self.touch(at as usize);
    }

    /// Replaces the entry at `at`, if there is one.
    pub fn set(&mut self, at: usize, entry: IndexEntry) {
        if let Some(e) = self.entries.get_mut(at) {
            *e = entry;
            self.touch(at);
        }
    }

    /// Sets the entry of `key`, appending it when it is new.
    pub fn upsert(&mut self, key: u64, entry: IndexEntry) {
        match self.position(key) {
            Some(at) => self.set(at, entry),
            None => self.push(key, entry),
        }
    }

    /// Notes a change for the next journal segment.
    fn touch(&mut self, at: usize) {
        if let Some(disk) = &mut self.disk {
            disk.dirty.push(at as u32);
        }
    }

    /// Every (key, entry), in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &IndexEntry)> {
        self.keys.iter().copied().zip(&self.entries)
    }

    /// Reads an index file and applies its journal (see the module doc).
    pub fn read(path: &Path) -> Result<DigestIndex, BatchError> {
        let mut bytes = Vec::new();
        let mut file = std::fs::File::open(path).map_err(|e| err(path, e))?;
        file.read_to_end(&mut bytes).map_err(|e| err(path, e))?;
        let stamp = Stamp::of(&file);
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
        let name_len = u32_at(take(4)?) as usize;
        let model = String::from_utf8(take(name_len)?.to_vec()).map_err(|_| corrupt())?;
        let version = u64_at(take(8)?);
        let count = usize::try_from(u64_at(take(8)?)).map_err(|_| corrupt())?;
        let body = take(count.checked_mul(24).ok_or_else(corrupt)?)?;
        let mut keys = Vec::with_capacity(count);
        let mut entries = Vec::with_capacity(count);
        for e in body.chunks_exact(24) {
            keys.push(u64_at(&e[0..8]));
            entries.push(entry_at(&e[8..24]));
        }
        let mut index = DigestIndex {
            model,
            version,
            keys,
            entries,
            map: OnceLock::new(),
            disk: None,
        };
        let mut valid = at;
        let mut journaled = 0usize;
        while let Some((len, records)) = index.segment(&bytes[valid..]) {
            for (pos, key, entry) in &records {
                if *pos == index.keys.len() {
                    index.keys.push(*key);
                    index.entries.push(*entry);
                } else {
                    index.entries[*pos] = *entry;
                }
            }
            valid += len;
            journaled += records.len();
        }
        index.disk = Some(OnDisk {
            path: path.to_owned(),
            valid_len: valid as u64,
            journaled,
            dirty: Vec::new(),
            stamp,
        });
        Ok(index)
    }

    /// The journal segment at the start of `rest`, when it is whole and
    /// fits this index: its length in bytes and its records (position,
    /// key, entry), checked but not applied.
    fn segment(&self, rest: &[u8]) -> Option<(usize, Vec<JournalRecord>)> {
        if rest.get(..8)? != JOURNAL_MAGIC {
            return None;
        }
        let n = usize::try_from(u64_at(rest.get(8..16)?)).ok()?;
        let body_end = n.checked_mul(RECORD)?.checked_add(16)?;
        let body = rest.get(8..body_end)?;
        if u64_at(rest.get(body_end..body_end + 8)?) != checksum(body) {
            return None;
        }
        let mut added: Vec<u64> = Vec::new();
        let mut records = Vec::with_capacity(n);
        for r in rest[16..body_end].chunks_exact(RECORD) {
            let pos = usize::try_from(u64_at(&r[0..8])).ok()?;
            let key = u64_at(&r[8..16]);
            let len = self.keys.len() + added.len();
            if pos == len {
                added.push(key);
            } else {
                let known = match pos.checked_sub(self.keys.len()) {
                    None => self.keys[pos],
                    Some(i) => *added.get(i)?,
                };
                if known != key {
                    return None;
                }
            }
            records.push((pos, key, entry_at(&r[16..32])));
        }
        Some((body_end + 8, records))
    }

    /// Saves the changes since the index was read or last saved: a journal
    /// segment appended to `path` when the index came from that file, it
    /// has not changed since, and the journal stays under a quarter of the
    /// entries; otherwise the whole index is written ([`Self::write`]).
    pub fn save(&mut self, path: &Path) -> Result<(), BatchError> {
        let limit = self.keys.len() / 4;
        let Some(disk) = self.disk.as_mut().filter(|d| {
            d.path == path
                && d.journaled + d.dirty.len() <= limit
                && std::fs::File::open(path).is_ok_and(|f| Stamp::of(&f) == d.stamp)
        }) else {
            return self.write(path);
        };
        if disk.dirty.is_empty() {
            return Ok(());
        }
        let mut segment = Vec::with_capacity(24 + disk.dirty.len() * RECORD);
        segment.extend_from_slice(JOURNAL_MAGIC);
        segment.extend_from_slice(&(disk.dirty.len() as u64).to_le_bytes());
        for at in &disk.dirty {
            let at = *at as usize;
            let e = &self.entries[at];
            segment.extend_from_slice(&(at as u64).to_le_bytes());
            segment.extend_from_slice(&self.keys[at].to_le_bytes());
            segment.extend_from_slice(&e.digest.to_le_bytes());
            segment.extend_from_slice(&e.computed_at.to_le_bytes());
            segment.extend_from_slice(&e.expires_at.to_le_bytes());
        }
        let sum = checksum(&segment[8..]);
        segment.extend_from_slice(&sum.to_le_bytes());
        let stamp = (|| -> std::io::Result<Option<Stamp>> {
            let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
            // Cut a torn segment off, then append after the valid part.
            f.set_len(disk.valid_len)?;
            f.seek(SeekFrom::Start(disk.valid_len))?;
            f.write_all(&segment)?;
            f.sync_data()?;
            Ok(Stamp::of(&f))
        })()
        .map_err(|e| err(path, e))?;
        disk.valid_len += segment.len() as u64;
        disk.journaled += disk.dirty.len();
        disk.dirty.clear();
        disk.stamp = stamp;
        Ok(())
    }

    /// Writes the whole index to `path` (through a temporary file and a
    /// rename), without a journal.
    pub fn write(&mut self, path: &Path) -> Result<(), BatchError> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .ok_or_else(|| err(path, "not a file path"))?
            .to_string_lossy();
        let temp: PathBuf = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let result = (|| -> std::io::Result<(u64, Option<Stamp>)> {
            let mut w = BufWriter::new(std::fs::File::create(&temp)?);
            w.write_all(MAGIC)?;
            let name = self.model.as_bytes();
            w.write_all(&u32::try_from(name.len()).unwrap_or(0).to_le_bytes())?;
            w.write_all(name)?;
            w.write_all(&self.version.to_le_bytes())?;
            w.write_all(&(self.keys.len() as u64).to_le_bytes())?;
            for (k, e) in self.iter() {
                w.write_all(&k.to_le_bytes())?;
                w.write_all(&e.digest.to_le_bytes())?;
                w.write_all(&e.computed_at.to_le_bytes())?;
                w.write_all(&e.expires_at.to_le_bytes())?;
            }
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            let len = f.metadata()?.len();
            std::fs::rename(&temp, path)?;
            Ok((len, Stamp::of(&f)))
        })();
        match result {
            Ok((len, stamp)) => {
                self.disk = Some(OnDisk {
                    path: path.to_owned(),
                    valid_len: len,
                    journaled: 0,
                    dirty: Vec::new(),
                    stamp,
                });
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                Err(err(path, e))
            }
        }
    }
}

/// A file's length and modification time: an index file that another
/// process rewrote since this one read it is not appended to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    /// The inode (a rename puts another file at the path).
    inode: u64,
}

impl Stamp {
    fn of(file: &std::fs::File) -> Option<Stamp> {
        let m = file.metadata().ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let inode = 0;
        Some(Stamp {
            len: m.len(),
            modified: m.modified().ok(),
            inode,
        })
    }
}

fn u32_at(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().unwrap_or([0; 4]))
}

fn u64_at(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
}

/// An entry from its 16 bytes (digest, computed_at, expires_at).
fn entry_at(b: &[u8]) -> IndexEntry {
    IndexEntry {
        digest: u64_at(&b[0..8]),
        computed_at: u32_at(&b[8..12]),
        expires_at: u32_at(&b[12..16]),
    }
}

/// A journal segment's checksum (its count and records, 8 bytes at a
/// time).
fn checksum(bytes: &[u8]) -> u64 {
    bytes
        .chunks(8)
        .fold(HASH_SEED ^ bytes.len() as u64, |h, c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            (h ^ u64::from_le_bytes(w))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(29)
        })
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
    fn a_cursor_walks_in_order_and_falls_back_to_the_map() {
        let entry = |d: u64| IndexEntry {
            digest: d,
            computed_at: 1,
            expires_at: 2,
        };
        let mut index = DigestIndex::new("m", 1);
        for k in 0..100u64 {
            index.push(k * 31 + 7, entry(k));
        }
        let mut c = index.cursor();
        // In order: every lookup is the next entry.
        for k in 0..50u64 {
            assert_eq!(c.find(k * 31 + 7), Some(k as usize));
        }
        // Out of order, absent, then in order again from the new place.
        assert_eq!(c.find(90 * 31 + 7), Some(90));
        assert_eq!(c.find(12345), None);
        assert_eq!(c.find(91 * 31 + 7), Some(91));
        assert_eq!(c.find(3 * 31 + 7), Some(3));
        assert_eq!(index.get(99 * 31 + 7), Some(&entry(99)));
        // Updates keep positions; new keys are found after the map exists.
        index.upsert(5 * 31 + 7, entry(500));
        index.upsert(777_777, entry(7));
        assert_eq!(index.get(5 * 31 + 7), Some(&entry(500)));
        assert_eq!(index.position(777_777), Some(100));
        index.set(0, entry(42));

        // Two runs interleaved batch by batch (two partitions of a scan):
        // the cursor follows both without building the map.
        let mut two = DigestIndex::new("m", 1);
        for k in 0..4000u64 {
            two.push(k * 7 + 1, entry(k));
        }
        let mut c = two.cursor();
        for batch in 0..10u64 {
            for half in [0u64, 2000] {
                for k in 0..100 {
                    let i = half + batch * 100 + k;
                    assert_eq!(c.find(i * 7 + 1), Some(i as usize));
                }
            }
        }
        assert_eq!(c.find(3), None, "absent");
        assert!(two.map.get().is_none(), "no map was built");

        // The index written with the two partitions' batches interleaved
        // (100 rows each), read back with other batch sizes (150 and 70
        // rows): each run goes on a batch of the other partition ahead.
        let mut woven = DigestIndex::new("m", 1);
        let half = 1000u64;
        for batch in 0..10u64 {
            for start in [0, half] {
                for k in 0..100 {
                    let i = start + batch * 100 + k;
                    woven.push(i * 13 + 5, entry(i));
                }
            }
        }
        let position = |i: u64| {
            let (part, k) = (i / half, i % half);
            ((k / 100) * 200 + part * 100 + k % 100) as usize
        };
        let mut w = woven.cursor();
        let (mut a, mut b) = (0u64, half);
        while a < half || b < 2 * half {
            for _ in 0..150 {
                if a < half {
                    assert_eq!(w.find(a * 13 + 5), Some(position(a)));
                    a += 1;
                }
            }
            for _ in 0..70 {
                if b < 2 * half {
                    assert_eq!(w.find(b * 13 + 5), Some(position(b)));
                    b += 1;
                }
            }
        }
        assert_eq!(w.scans, 0, "no linear scan of the whole index");
        assert!(woven.map.get().is_none(), "no map was built");
        // Past the linear scans, misses go to the map.
        for k in 0..Cursor::SCANS as u64 {
            assert_eq!(c.find(k * 7 + 2), None);
        }
        assert_eq!(c.find(3999 * 7 + 1), Some(3999));
        assert!(two.map.get().is_some());
    }

    #[test]
    fn an_index_round_trips_and_a_bad_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("churn.idx");
        let mut index = DigestIndex::new("churn", 3);
        for i in 0..1000u64 {
            index.push(
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
        assert!(back.iter().eq(index.iter()), "same entries, same order");
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

    #[test]
    fn a_save_appends_a_journal_that_reads_back_and_survives_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.idx");
        let size = || std::fs::metadata(&path).unwrap().len();
        let entry = |d: u64| IndexEntry {
            digest: d,
            computed_at: 10,
            expires_at: 20,
        };
        let mut index = DigestIndex::new("m", 1);
        for k in 0..1000u64 {
            index.push(k * 13 + 1, entry(k));
        }
        index.write(&path).unwrap();
        let base = size();

        // Changes, a new entity, and the new entity changed again.
        let mut ix = DigestIndex::read(&path).unwrap();
        ix.set(5, entry(5000));
        ix.upsert(99 * 13 + 1, entry(9900));
        ix.upsert(424_242, entry(1));
        ix.upsert(424_242, entry(2));
        ix.save(&path).unwrap();
        let first = size();
        assert_eq!(first, base + 24 + 4 * 32, "one segment of four records");
        let back = DigestIndex::read(&path).unwrap();
        assert!(back.iter().eq(ix.iter()), "the journal reads back");
        assert_eq!(back.len(), 1001);
        assert_eq!(back.get(424_242), Some(&entry(2)));
        assert_eq!(back.entry(99), Some(&entry(9900)));

        // Nothing changed: nothing written.
        let mut same = DigestIndex::read(&path).unwrap();
        same.save(&path).unwrap();
        assert_eq!(size(), first);

        // A second segment, then cut short as by a kill mid-append.
        let mut ix = back;
        ix.set(7, entry(7000));
        ix.save(&path).unwrap();
        let second = size();
        assert_eq!(second, first + 24 + 32);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(second - 5).unwrap();
        drop(f);
        let mut torn = DigestIndex::read(&path).unwrap();
        assert_eq!(
            torn.entry(7),
            Some(&entry(7)),
            "the torn segment is ignored"
        );
        assert_eq!(torn.entry(5), Some(&entry(5000)), "the whole one is kept");
        // The next append replaces the torn tail.
        torn.set(8, entry(8000));
        torn.save(&path).unwrap();
        assert_eq!(size(), first + 24 + 32);
        let again = DigestIndex::read(&path).unwrap();
        assert_eq!(again.entry(8), Some(&entry(8000)));
        assert_eq!(again.entry(7), Some(&entry(7)));

        // A bad checksum: that segment and all after it are ignored.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[base as usize + 20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let flipped = DigestIndex::read(&path).unwrap();
        assert_eq!(flipped.len(), 1000);
        assert_eq!(flipped.entry(5), Some(&entry(5)));
        assert_eq!(flipped.entry(8), Some(&entry(8)));

        // A segment naming a position whose key differs is refused.
        let mut fresh = DigestIndex::new("m", 1);
        for k in 0..1000u64 {
            fresh.push(k * 13 + 1, entry(k));
        }
        fresh.write(&path).unwrap();
        let mut ix = DigestIndex::read(&path).unwrap();
        ix.set(3, entry(33));
        ix.save(&path).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let key_at = base as usize + 16 + 8;
        bytes[key_at..key_at + 8].copy_from_slice(&77u64.to_le_bytes());
        let body_end = base as usize + 16 + 32;
        let sum = checksum(&bytes[base as usize + 8..body_end]);
        bytes[body_end..body_end + 8].copy_from_slice(&sum.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(DigestIndex::read(&path).unwrap().entry(3), Some(&entry(3)));

        // Past a quarter of the entries the save rewrites (compaction).
        let mut big = DigestIndex::read(&path).unwrap();
        for k in 0..300 {
            big.set(k, entry(1));
        }
        big.save(&path).unwrap();
        assert_eq!(size(), base, "rewritten without a journal");
        assert!(DigestIndex::read(&path).unwrap().iter().eq(big.iter()));

        // A file another process replaced since is rewritten, not appended to.
        let mut stale = DigestIndex::read(&path).unwrap();
        let mut other = DigestIndex::read(&path).unwrap();
        other.set(1, entry(11));
        other.write(&path).unwrap();
        stale.set(2, entry(22));
        stale.save(&path).unwrap();
        assert_eq!(size(), base, "the last writer wins whole");
        let last = DigestIndex::read(&path).unwrap();
        assert_eq!(last.entry(2), Some(&entry(22)));
        assert_eq!(last.entry(1), Some(&entry(1)));
    }
}
