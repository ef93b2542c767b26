//! The digest index: for every entity a batch run (or a refresh) wrote,
//! what its record was made from: the 64-bit digest of its input features,
//! the inputs themselves as half floats (the same values the record keeps,
//! [`tandem_core::record::half_bytes`]), when it was computed and when it
//! expires, plus the model name and version of the run. 24 bytes per
//! entity plus 2 per feature, in a local file.
//!
//! `tandem refresh --index PATH` reads it to tell, from the input alone,
//! which entities cannot need a rescore (same features, same model, not
//! too old, not expired), and, with `--changed-threshold`, how far the
//! others' features moved since their record was made: it reads the stored
//! records of none of them, and writes the ones that need it. The index
//! trusts that records live until their TTL; a store that evicts early
//! (Redis `maxmemory` with an eviction policy) can lose records the index
//! still lists, so refresh without `--index` now and then finds those as
//! `missing`.
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
//! File layout (little endian): magic `TNDMIDX3`, model name length (u32)
//! and bytes, version (u64), entry count (u64), width (u32: features kept
//! per entity, 0 for none), then the entries in that order: id hash (u64),
//! digest (u64, [`row_hash`]), computed_at (u32 unix seconds), expires_at
//! (u32 unix seconds); then every entry's inputs in the same order, `2 x
//! width` bytes each (IEEE half floats; all bits set where they are not
//! known). The inputs stay in a read-only map of the file: a refresh reads
//! the pages of the entities it looks at, not 64 MB for 1M entities of 32
//! features. Written to a temporary file and renamed, so a reader never
//! sees half an index. An index written before the inputs were kept
//! (`TNDMIDX2`: the same without the width and the inputs) is read as one
//! of width 0 and rewritten whole by its next save.
//!
//! A refresh changes a few percent of the entries, so rather than
//! rewriting the whole file it appends a *journal segment* with what
//! changed: magic `TNDMJRN2`, record count (u64), the records (position
//! u64, id hash u64, the entry's 16 bytes as above, then its inputs; a
//! position equal to the entry count so far appends a new entity), and a
//! checksum (u64) of the count and records. A reader applies the segments
//! in order after the entries. A segment cut short (the process killed
//! mid-append), with a bad checksum, or naming a position whose key does
//! not match is ignored together with everything after it, and the next
//! append starts where the valid part ends: losing a segment only makes
//! the next refresh judge those entities by their older entries (their
//! digests differ from the input's, so they are looked at again). Once the
//! journal holds more than a quarter as many records as the index has
//! entries, the next save rewrites the whole file without a journal
//! (compaction).
//!
//! The file is mapped, so it must not be truncated in place while a
//! process reads it; tandem only ever replaces it (a rename) or appends to
//! it, and cuts off only a torn tail that no reader uses.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

use crate::error::BatchError;

const MAGIC: &[u8; 8] = b"TNDMIDX3";
const JOURNAL_MAGIC: &[u8; 8] = b"TNDMJRN2";
/// The layout before inputs were kept (read, never written).
const MAGIC_V2: &[u8; 8] = b"TNDMIDX2";
const JOURNAL_MAGIC_V1: &[u8; 8] = b"TNDMJRN1";
/// Bytes of one journal record without its inputs.
const RECORD: usize = 32;
/// A half float with all bits set (a NaN): an input not known.
const UNKNOWN: u8 = 0xff;

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
    /// Each entity's inputs as half floats.
    inputs: Inputs,
    /// Position by key, built on the first lookup that misses the cursor.
    map: OnceLock<KeyMap>,
    /// The file this index was read from or last saved to, while memory
    /// and file agree up to `dirty`.
    disk: Option<OnDisk>,
}

/// Every entity's inputs, `2 x width` bytes each: those of the entities
/// in the file read stay in its map until changed.
#[derive(Debug, Default)]
struct Inputs {
    /// Features kept per entity (0: none).
    width: usize,
    /// The file read, and where its inputs start.
    mapped: Option<(memmap2::Mmap, usize)>,
    /// Entities `0..mapped_len` have their inputs in `mapped`.
    mapped_len: usize,
    /// The inputs of entities `mapped_len..`, in order.
    owned: Vec<u8>,
    /// Mapped entities changed since: position to offset in `changed_bytes`.
    changed: HashMap<u32, usize, BuildHasherDefault<KeyHasher>>,
    changed_bytes: Vec<u8>,
}

impl Inputs {
    fn stride(&self) -> usize {
        2 * self.width
    }

    /// The inputs of entity `at`, when the index keeps inputs and has it.
    fn get(&self, at: usize) -> Option<&[u8]> {
        let n = self.stride();
        if n == 0 {
            return None;
        }
        if at < self.mapped_len {
            if let Some(&o) = u32::try_from(at).ok().and_then(|a| self.changed.get(&a)) {
                return self.changed_bytes.get(o..o + n);
            }
            let (map, start) = self.mapped.as_ref()?;
            let o = start + at * n;
            return map.get(o..o + n);
        }
        let o = (at - self.mapped_len) * n;
        self.owned.get(o..o + n)
    }

    /// Sets the inputs of entity `at` (one past the last appends); inputs
    /// of another width are kept as unknown.
    fn set(&mut self, at: usize, bytes: &[u8]) {
        let n = self.stride();
        if n == 0 {
            return;
        }
        let unknown = [UNKNOWN; 2];
        let put = |dst: &mut [u8]| {
            if bytes.len() == n {
                dst.copy_from_slice(bytes);
            } else {
                for pair in dst.chunks_exact_mut(2) {
                    pair.copy_from_slice(&unknown);
                }
            }
        };
        if at < self.mapped_len {
            let key = at as u32;
            let o = match self.changed.get(&key) {
                Some(&o) => o,
                None => {
                    let o = self.changed_bytes.len();
                    self.changed_bytes.resize(o + n, 0);
                    self.changed.insert(key, o);
                    o
                }
            };
            put(&mut self.changed_bytes[o..o + n]);
            return;
        }
        let o = (at - self.mapped_len) * n;
        if o + n > self.owned.len() {
            self.owned.resize(o + n, 0);
        }
        put(&mut self.owned[o..o + n]);
    }

    /// The inputs of entity `at` as the file keeps them (unknown ones with
    /// all bits set).
    fn write_to(&self, at: usize, w: &mut impl Write) -> std::io::Result<()> {
        match self.get(at) {
            Some(b) => w.write_all(b),
            None => {
                for _ in 0..self.stride() {
                    w.write_all(&[UNKNOWN])?;
                }
                Ok(())
            }
        }
    }
}

/// A journal record: position, id hash, entry, and where its inputs are
/// in the segment.
type JournalRecord = (usize, u64, IndexEntry, Range<usize>);

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
    /// An empty index for `model` version `version`, keeping `width`
    /// features of inputs per entity.
    pub fn new(model: &str, version: u64, width: usize) -> Self {
        DigestIndex {
            model: model.to_owned(),
            version,
            inputs: Inputs {
                width,
                ..Inputs::default()
            },
            ..DigestIndex::default()
        }
    }

    /// Features of inputs kept per entity (0: none, an index written
    /// before inputs were kept).
    pub fn width(&self) -> usize {
        self.inputs.width
    }

    /// The inputs of the entity at `at` as half floats
    /// ([`tandem_core::record::half_bytes`]; a NaN where not known).
    pub fn inputs(&self, at: usize) -> Option<&[u8]> {
        self.inputs.get(at)
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
    /// each id once), with its inputs as half floats (kept as unknown when
    /// they are not `width` features).
    pub fn push(&mut self, key: u64, entry: IndexEntry, inputs: &[u8]) {
        let at = self.keys.len();
        if let Some(map) = self.map.get_mut() {
            map.insert(key, at as u32);
        }
        self.keys.push(key);
        self.entries.push(entry);
        self.inputs.set(at, inputs);
        self.touch(at);
    }

    /// Replaces the entry and inputs at `at`, if there is one.
    pub fn set(&mut self, at: usize, entry: IndexEntry, inputs: &[u8]) {
        if let Some(e) = self.entries.get_mut(at) {
            *e = entry;
            self.inputs.set(at, inputs);
            self.touch(at);
        }
    }

    /// Sets the entry of `key`, appending it when it is new.
    pub fn upsert(&mut self, key: u64, entry: IndexEntry, inputs: &[u8]) {
        match self.position(key) {
            Some(at) => self.set(at, entry, inputs),
            None => self.push(key, entry, inputs),
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
        let file = std::fs::File::open(path).map_err(|e| err(path, e))?;
        let stamp = Stamp::of(&file);
        let corrupt = || err(path, "not a tandem digest index (or truncated)");
        if file.metadata().map_err(|e| err(path, e))?.len() == 0 {
            return Err(corrupt());
        }
        // SAFETY: a read-only private map, only read through `bytes` and
        // `Inputs::get` within the length mapped. tandem never truncates
        // an index in place below what a reader uses (module doc).
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(path, e))?;
        let bytes: &[u8] = &map;
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<(usize, &[u8]), BatchError> {
            let start = at;
            let s = bytes
                .get(start..start.checked_add(n).ok_or_else(corrupt)?)
                .ok_or_else(corrupt)?;
            at += n;
            Ok((start, s))
        };
        let current = match take(8)?.1 {
            m if m == MAGIC => true,
            m if m == MAGIC_V2 => false,
            _ => return Err(corrupt()),
        };
        let name_len = u32_at(take(4)?.1) as usize;
        let model = String::from_utf8(take(name_len)?.1.to_vec()).map_err(|_| corrupt())?;
        let version = u64_at(take(8)?.1);
        let count = usize::try_from(u64_at(take(8)?.1)).map_err(|_| corrupt())?;
        let width = if current {
            u32_at(take(4)?.1) as usize
        } else {
            0
        };
        let body = take(count.checked_mul(24).ok_or_else(corrupt)?)?.1;
        let mut keys = Vec::with_capacity(count);
        let mut entries = Vec::with_capacity(count);
        for e in body.chunks_exact(24) {
            keys.push(u64_at(&e[0..8]));
            entries.push(entry_at(&e[8..24]));
        }
        let (inputs_at, inputs) = take(count.checked_mul(2 * width).ok_or_else(corrupt)?)?;
        let mut valid = inputs_at + inputs.len();
        let mut index = DigestIndex {
            model,
            version,
            keys,
            entries,
            inputs: Inputs {
                width,
                mapped_len: count,
                ..Inputs::default()
            },
            map: OnceLock::new(),
            disk: None,
        };
        let mut journaled = 0usize;
        let journal = if current {
            JOURNAL_MAGIC
        } else {
            JOURNAL_MAGIC_V1
        };
        while let Some((len, records)) = index.segment(&map[valid..], journal) {
            journaled += records.len();
            for (pos, key, entry, inputs) in records {
                let inputs = &map[valid + inputs.start..valid + inputs.end];
                if pos == index.keys.len() {
                    index.keys.push(key);
                    index.entries.push(entry);
                } else {
                    index.entries[pos] = entry;
                }
                index.inputs.set(pos, inputs);
            }
            valid += len;
        }
        if width > 0 {
            index.inputs.mapped = Some((map, inputs_at));
        }
        // An index of the layout before inputs is rewritten by its next
        // save, not appended to.
        index.disk = current.then(|| OnDisk {
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
    /// key, entry, where its inputs are in `rest`), checked but not
    /// applied.
    fn segment(&self, rest: &[u8], magic: &[u8; 8]) -> Option<(usize, Vec<JournalRecord>)> {
        if rest.get(..8)? != magic {
            return None;
        }
        let record = RECORD + self.inputs.stride();
        let n = usize::try_from(u64_at(rest.get(8..16)?)).ok()?;
        let body_end = n.checked_mul(record)?.checked_add(16)?;
        let body = rest.get(8..body_end)?;
        if u64_at(rest.get(body_end..body_end + 8)?) != checksum(body) {
            return None;
        }
        let mut added: Vec<u64> = Vec::new();
        let mut records = Vec::with_capacity(n);
        for (i, r) in rest[16..body_end].chunks_exact(record).enumerate() {
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
            let start = 16 + i * record + RECORD;
            records.push((
                pos,
                key,
                entry_at(&r[16..32]),
                start..start + record - RECORD,
            ));
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
        let record = RECORD + self.inputs.stride();
        let mut segment = Vec::with_capacity(24 + disk.dirty.len() * record);
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
            self.inputs
                .write_to(at, &mut segment)
                .map_err(|e| err(path, e))?;
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
        let temp = temp_beside(path, "tmp")?;
        let result = (|| -> std::io::Result<(u64, Option<Stamp>)> {
            let mut w = BufWriter::new(std::fs::File::create(&temp)?);
            write_header(
                &mut w,
                &self.model,
                self.version,
                self.keys.len() as u64,
                self.inputs.width,
            )?;
            for (k, e) in self.iter() {
                w.write_all(&k.to_le_bytes())?;
                w.write_all(&e.digest.to_le_bytes())?;
                w.write_all(&e.computed_at.to_le_bytes())?;
                w.write_all(&e.expires_at.to_le_bytes())?;
            }
            for at in 0..self.keys.len() {
                self.inputs.write_to(at, &mut w)?;
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

/// Writes a new index as a batch run meets its entities, without holding
/// it in memory: entries and inputs go to two temporary files beside the
/// index, and [`IndexWriter::finish`] puts the header and both sections
/// together into the index (a temporary file renamed into place). A
/// writer dropped without `finish` (the run failed) removes its files and
/// leaves any existing index as it was.
#[derive(Debug)]
pub struct IndexWriter {
    model: String,
    version: u64,
    width: usize,
    count: u64,
    entries: BufWriter<std::fs::File>,
    inputs: BufWriter<std::fs::File>,
    /// The two temporary files (entries, inputs).
    parts: [PathBuf; 2],
    path: PathBuf,
}

/// A temporary file's path beside `path`, marked with the process id and
/// `what`.
fn temp_beside(path: &Path, what: &str) -> Result<PathBuf, BatchError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| err(path, "not a file path"))?
        .to_string_lossy();
    Ok(dir.join(format!(".{name}.{}.{what}.tmp", std::process::id())))
}

/// The header of an index file (everything before the entries).
fn write_header(
    w: &mut impl Write,
    model: &str,
    version: u64,
    count: u64,
    width: usize,
) -> std::io::Result<()> {
    w.write_all(MAGIC)?;
    let name = model.as_bytes();
    w.write_all(&u32::try_from(name.len()).unwrap_or(0).to_le_bytes())?;
    w.write_all(name)?;
    w.write_all(&version.to_le_bytes())?;
    w.write_all(&count.to_le_bytes())?;
    w.write_all(&u32::try_from(width).unwrap_or(0).to_le_bytes())
}

impl IndexWriter {
    /// A writer of the index at `path` for `model` version `version`,
    /// keeping `width` features of inputs per entity.
    pub fn create(
        path: &Path,
        model: &str,
        version: u64,
        width: usize,
    ) -> Result<Self, BatchError> {
        let parts = [temp_beside(path, "entries")?, temp_beside(path, "inputs")?];
        let open = |p: &Path| {
            std::fs::File::create(p)
                .map(BufWriter::new)
                .map_err(|e| err(p, e))
        };
        let entries = open(&parts[0])?;
        let inputs = match open(&parts[1]) {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&parts[0]);
                return Err(e);
            }
        };
        Ok(IndexWriter {
            model: model.to_owned(),
            version,
            width,
            count: 0,
            entries,
            inputs,
            parts,
            path: path.to_owned(),
        })
    }

    /// Entities written so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// No entity written yet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds an entity (a batch run meets each id once) with its inputs as
    /// half floats (kept as unknown when they are not `width` features).
    pub fn push(&mut self, key: u64, entry: IndexEntry, inputs: &[u8]) -> Result<(), BatchError> {
        let n = 2 * self.width;
        let result = (|| -> std::io::Result<()> {
            self.entries.write_all(&key.to_le_bytes())?;
            self.entries.write_all(&entry.digest.to_le_bytes())?;
            self.entries.write_all(&entry.computed_at.to_le_bytes())?;
            self.entries.write_all(&entry.expires_at.to_le_bytes())?;
            if inputs.len() == n {
                self.inputs.write_all(inputs)
            } else {
                for _ in 0..n {
                    self.inputs.write_all(&[UNKNOWN])?;
                }
                Ok(())
            }
        })();
        result.map_err(|e| err(&self.path, e))?;
        self.count += 1;
        Ok(())
    }

    /// Writes the index: header, entries, inputs, synced, then renamed
    /// over `path`.
    pub fn finish(mut self) -> Result<(), BatchError> {
        let path = self.path.clone();
        let temp = temp_beside(&path, "tmp")?;
        let result = (|| -> std::io::Result<()> {
            self.entries.flush()?;
            self.inputs.flush()?;
            let mut w = BufWriter::new(std::fs::File::create(&temp)?);
            write_header(&mut w, &self.model, self.version, self.count, self.width)?;
            for part in &self.parts {
                std::io::copy(&mut std::fs::File::open(part)?, &mut w)?;
            }
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            std::fs::rename(&temp, &path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result.map_err(|e| err(&path, e))
    }
}

impl Drop for IndexWriter {
    fn drop(&mut self) {
        for part in &self.parts {
            let _ = std::fs::remove_file(part);
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
        let mut index = DigestIndex::new("m", 1, 0);
        for k in 0..100u64 {
            index.push(k * 31 + 7, entry(k), &[]);
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
        index.upsert(5 * 31 + 7, entry(500), &[]);
        index.upsert(777_777, entry(7), &[]);
        assert_eq!(index.get(5 * 31 + 7), Some(&entry(500)));
        assert_eq!(index.position(777_777), Some(100));
        index.set(0, entry(42), &[]);

        // Two runs interleaved batch by batch (two partitions of a scan):
        // the cursor follows both without building the map.
        let mut two = DigestIndex::new("m", 1, 0);
        for k in 0..4000u64 {
            two.push(k * 7 + 1, entry(k), &[]);
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
        let mut woven = DigestIndex::new("m", 1, 0);
        let half = 1000u64;
        for batch in 0..10u64 {
            for start in [0, half] {
                for k in 0..100 {
                    let i = start + batch * 100 + k;
                    woven.push(i * 13 + 5, entry(i), &[]);
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

    fn halves(values: &[f32]) -> Vec<u8> {
        let mut b = Vec::new();
        tandem_core::record::half_bytes(values, &mut b);
        b
    }

    #[test]
    fn an_index_round_trips_and_a_bad_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("churn.idx");
        let mut index = DigestIndex::new("churn", 3, 3);
        let row = |i: u64| halves(&[i as f32, -(i as f32), 0.5]);
        let entry = |i: u64| IndexEntry {
            digest: i ^ 0xdead_beef,
            computed_at: 1_700_000_000 + i as u32,
            expires_at: 1_800_000_000,
        };
        for i in 0..1000u64 {
            index.push(i * 7919, entry(i), &row(i));
        }
        // Inputs of another width are kept as unknown.
        index.push(1, entry(1000), &[1, 2]);
        index.write(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            8 + 4 + 5 + 8 + 8 + 4 + 1001 * (24 + 6)
        );
        let back = DigestIndex::read(&path).unwrap();
        assert_eq!(back.model, "churn");
        assert_eq!(back.version, 3);
        assert_eq!(back.width(), 3);
        assert!(back.iter().eq(index.iter()), "same entries, same order");
        for i in 0..1000u64 {
            assert_eq!(back.inputs(i as usize), Some(&row(i)[..]), "{i}");
        }
        assert_eq!(back.inputs(1000), Some(&[UNKNOWN; 6][..]));
        assert_eq!(back.inputs(1001), None);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left");
        drop(back);

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
        // One feature of inputs per entity: the entry's digest as a half.
        let one = |d: u64| halves(&[d as f32]);
        let mut index = DigestIndex::new("m", 1, 1);
        for k in 0..1000u64 {
            index.push(k * 13 + 1, entry(k), &one(k));
        }
        index.write(&path).unwrap();
        let base = size();

        // Changes, a new entity, and the new entity changed again.
        let mut ix = DigestIndex::read(&path).unwrap();
        ix.set(5, entry(5000), &one(5000));
        ix.upsert(99 * 13 + 1, entry(9900), &one(9900));
        ix.upsert(424_242, entry(1), &one(1));
        ix.upsert(424_242, entry(2), &one(2));
        ix.save(&path).unwrap();
        let first = size();
        assert_eq!(
            first,
            base + 24 + 4 * (32 + 2),
            "one segment of four records"
        );
        let back = DigestIndex::read(&path).unwrap();
        assert!(back.iter().eq(ix.iter()), "the journal reads back");
        assert_eq!(back.len(), 1001);
        assert_eq!(back.get(424_242), Some(&entry(2)));
        assert_eq!(back.entry(99), Some(&entry(9900)));
        for (at, d) in [(5, 5000), (99, 9900), (1000, 2), (6, 6)] {
            assert_eq!(back.inputs(at), Some(&one(d)[..]), "inputs at {at}");
        }

        // Nothing changed: nothing written.
        let mut same = DigestIndex::read(&path).unwrap();
        same.save(&path).unwrap();
        assert_eq!(size(), first);

        // A second segment, then cut short as by a kill mid-append.
        let mut ix = back;
        ix.set(7, entry(7000), &one(7000));
        ix.save(&path).unwrap();
        let second = size();
        assert_eq!(second, first + 24 + 34);
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
        assert_eq!(torn.inputs(7), Some(&one(7)[..]));
        // The next append replaces the torn tail.
        torn.set(8, entry(8000), &one(8000));
        torn.save(&path).unwrap();
        assert_eq!(size(), first + 24 + 34);
        let again = DigestIndex::read(&path).unwrap();
        assert_eq!(again.entry(8), Some(&entry(8000)));
        assert_eq!(again.inputs(8), Some(&one(8000)[..]));
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
        let mut fresh = DigestIndex::new("m", 1, 1);
        for k in 0..1000u64 {
            fresh.push(k * 13 + 1, entry(k), &one(k));
        }
        fresh.write(&path).unwrap();
        let mut ix = DigestIndex::read(&path).unwrap();
        ix.set(3, entry(33), &one(33));
        ix.save(&path).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let key_at = base as usize + 16 + 8;
        bytes[key_at..key_at + 8].copy_from_slice(&77u64.to_le_bytes());
        let body_end = base as usize + 16 + 34;
        let sum = checksum(&bytes[base as usize + 8..body_end]);
        bytes[body_end..body_end + 8].copy_from_slice(&sum.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(DigestIndex::read(&path).unwrap().entry(3), Some(&entry(3)));

        // Past a quarter of the entries the save rewrites (compaction).
        let mut big = DigestIndex::read(&path).unwrap();
        for k in 0..300 {
            big.set(k, entry(1), &one(1));
        }
        big.save(&path).unwrap();
        assert_eq!(size(), base, "rewritten without a journal");
        assert!(DigestIndex::read(&path).unwrap().iter().eq(big.iter()));

        // A file another process replaced since is rewritten, not appended to.
        let mut stale = DigestIndex::read(&path).unwrap();
        let mut other = DigestIndex::read(&path).unwrap();
        other.set(1, entry(11), &one(11));
        other.write(&path).unwrap();
        stale.set(2, entry(22), &one(22));
        stale.save(&path).unwrap();
        assert_eq!(size(), base, "the last writer wins whole");
        let last = DigestIndex::read(&path).unwrap();
        assert_eq!(last.entry(2), Some(&entry(22)));
        assert_eq!(last.entry(1), Some(&entry(1)));
        assert_eq!(last.inputs(2), Some(&one(22)[..]));
    }

    #[test]
    fn a_writer_streams_the_same_index_and_a_dropped_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.idx");
        let entry = |d: u64| IndexEntry {
            digest: d,
            computed_at: 10 + d as u32,
            expires_at: 20,
        };
        let row = |k: u64| halves(&[k as f32, 1.0]);
        let mut whole = DigestIndex::new("m", 2, 2);
        let mut w = IndexWriter::create(&path, "m", 2, 2).unwrap();
        assert!(w.is_empty());
        for k in 0..1000u64 {
            whole.push(k * 3 + 1, entry(k), &row(k));
            w.push(k * 3 + 1, entry(k), &row(k)).unwrap();
        }
        whole.push(5, entry(5), &[9]);
        w.push(5, entry(5), &[9]).unwrap();
        assert_eq!(w.len(), 1001);
        // Only the two parts exist until the writer finishes.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        assert!(!path.exists());
        w.finish().unwrap();
        let streamed = std::fs::read(&path).unwrap();
        let other = dir.path().join("whole.idx");
        whole.write(&other).unwrap();
        assert_eq!(streamed, std::fs::read(&other).unwrap(), "byte for byte");
        let back = DigestIndex::read(&path).unwrap();
        assert_eq!(back.inputs(7), Some(&row(7)[..]));
        assert_eq!(back.inputs(1000), Some(&[UNKNOWN; 4][..]));
        drop(back);
        std::fs::remove_file(&other).unwrap();

        // A run that fails drops its writer: the index it had stays, and
        // no temporary file is left.
        let mut w = IndexWriter::create(&path, "m", 3, 2).unwrap();
        w.push(1, entry(1), &row(1)).unwrap();
        drop(w);
        assert_eq!(std::fs::read(&path).unwrap(), streamed);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A directory that does not exist fails at once, naming the path.
        let e = IndexWriter::create(&dir.path().join("no/such.idx"), "m", 1, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("such.idx"), "{e}");
    }

    #[test]
    fn an_index_of_the_layout_before_inputs_reads_and_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.idx");
        let entry = |d: u64| IndexEntry {
            digest: d,
            computed_at: 10,
            expires_at: 20,
        };
        let raw = |b: &mut Vec<u8>, key: u64, e: IndexEntry| {
            b.extend_from_slice(&key.to_le_bytes());
            b.extend_from_slice(&e.digest.to_le_bytes());
            b.extend_from_slice(&e.computed_at.to_le_bytes());
            b.extend_from_slice(&e.expires_at.to_le_bytes());
        };
        // TNDMIDX2: three entries, then a TNDMJRN1 segment changing one.
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC_V2);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(b"m");
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(&3u64.to_le_bytes());
        for k in 0..3u64 {
            raw(&mut b, 100 + k, entry(k));
        }
        let start = b.len();
        b.extend_from_slice(JOURNAL_MAGIC_V1);
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        raw(&mut b, 101, entry(77));
        let sum = checksum(&b[start + 8..]);
        b.extend_from_slice(&sum.to_le_bytes());
        std::fs::write(&path, &b).unwrap();

        let mut old = DigestIndex::read(&path).unwrap();
        assert_eq!((old.model.as_str(), old.version), ("m", 4));
        assert_eq!(old.width(), 0);
        assert_eq!(old.len(), 3);
        assert_eq!(old.entry(1), Some(&entry(77)), "its journal applies");
        assert_eq!(old.inputs(1), None, "no inputs kept");
        old.set(2, entry(88), &halves(&[1.0]));
        old.save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], MAGIC, "rewritten whole in the current layout");
        let back = DigestIndex::read(&path).unwrap();
        assert!(back.iter().eq(old.iter()));
        assert_eq!(back.width(), 0);
        assert_eq!(back.entry(2), Some(&entry(88)));
    }
}
