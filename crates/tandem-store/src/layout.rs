//! Key layout and value encoding (protocols.md section 3).
//!
//! Predictions live under `{namespace}pred:{entity}` as the reference
//! design's JSON (`{"prediction": .., "timestamp": .., ...}`), features under
//! `{namespace}features:{entity}` as a JSON object of numbers, and activity
//! counts in hashes `{{namespace}activity}:c:{bucket}` (entity -> requests;
//! the braces are a Redis Cluster hash tag keeping every bucket of one
//! namespace in one slot).

use std::sync::Arc;

use tandem_core::{FeatureRow, PredictionRecord};

use crate::error::StoreError;

/// Key prefixes; several models and environments share one Redis by giving
/// each its own namespace (for example `churn:prod:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    /// Prepended to every key (default empty).
    pub namespace: String,
    /// Prediction key prefix after the namespace (default `pred:`).
    pub prediction_prefix: String,
    /// Feature key prefix after the namespace (default `features:`).
    pub feature_prefix: String,
    /// Activity key stem (default `activity`).
    pub activity_stem: String,
}

impl Default for KeyLayout {
    fn default() -> Self {
        KeyLayout {
            namespace: String::new(),
            prediction_prefix: "pred:".into(),
            feature_prefix: "features:".into(),
            activity_stem: "activity".into(),
        }
    }
}

impl KeyLayout {
    /// The key of an entity's prediction.
    pub fn prediction_key(&self, entity: &str) -> String {
        concat3(&self.namespace, &self.prediction_prefix, entity)
    }

    /// The key of an entity's features.
    pub fn feature_key(&self, entity: &str) -> String {
        concat3(&self.namespace, &self.feature_prefix, entity)
    }

    /// The hash tag shared by every activity key of this namespace.
    pub fn activity_tag(&self) -> String {
        format!("{{{}{}}}", self.namespace, self.activity_stem)
    }

    /// The hash counting requests per entity in one time bucket. (`c:`
    /// keeps these apart from the sorted sets earlier versions wrote under
    /// `{tag}:{bucket}`, which age out after the retention.)
    pub fn activity_key(&self, bucket: u64) -> String {
        format!("{}:c:{bucket}", self.activity_tag())
    }
}

fn concat3(a: &str, b: &str, c: &str) -> String {
    let mut s = String::with_capacity(a.len() + b.len() + c.len());
    s.push_str(a);
    s.push_str(b);
    s.push_str(c);
    s
}

/// Encodes a prediction record as JSON.
pub fn encode_prediction(record: &PredictionRecord) -> Vec<u8> {
    // One allocation of about the record's size, not a doubling series
    // from empty (a batch record with its inputs is ~280 bytes).
    let strings = [&record.run_id, &record.digest, &record.inputs]
        .iter()
        .map(|s| s.as_deref().map_or(0, str::len))
        .sum::<usize>();
    let mut out = Vec::with_capacity(
        160 + record.model.len() + strings + record.values.as_ref().map_or(0, |v| v.len() * 24),
    );
    // Serializing a struct of numbers and strings into memory cannot fail.
    let _ = serde_json::to_writer(&mut out, record);
    out
}

/// Writes the records of one batch run straight into a buffer, byte for
/// byte as [`encode_prediction`] writes the same record: a run's records
/// share their timestamp, model, version, source and run id, so that part
/// is written (and its strings escaped) once, and each record adds only its
/// prediction, the digest of its inputs and the inputs packed
/// ([`tandem_core::record::pack_inputs`]). A batch run writes a million
/// records; this allocates nothing per record.
#[derive(Debug, Clone)]
pub struct RecordEncoder {
    /// `,"timestamp":..,"model":..,"version":..,"source":..,"run_id":..,"digest":"`.
    middle: Vec<u8>,
}

/// How every record starts.
const RECORD_HEAD: &[u8] = b"{\"prediction\":";
/// Between the digest and the packed inputs.
const RECORD_INPUTS: &[u8] = b"\",\"inputs\":\"";

impl RecordEncoder {
    /// An encoder for records with the fields of `template` other than its
    /// prediction, digest and inputs (those come with each record);
    /// `None` when `template` has `values` (a vector output, written by
    /// [`encode_prediction`]).
    pub fn new(template: &PredictionRecord) -> Option<Self> {
        if template.values.is_some() {
            return None;
        }
        // The template written with an empty digest and inputs: the middle
        // is what lies between its prediction and its digest's text.
        let probe = PredictionRecord {
            prediction: 0.0,
            digest: Some("".into()),
            inputs: Some("".into()),
            ..template.clone()
        };
        let full = encode_prediction(&probe);
        let head = [RECORD_HEAD, b"0.0"].concat();
        let tail = [RECORD_INPUTS, b"\"}"].concat();
        let middle = full.strip_prefix(head.as_slice())?;
        let middle = middle.strip_suffix(tail.as_slice())?;
        Some(RecordEncoder {
            middle: middle.to_vec(),
        })
    }

    /// Appends the record of `prediction` computed from `inputs` to `out`.
    pub fn write(&self, prediction: f64, inputs: &[f32], out: &mut Vec<u8>) {
        out.extend_from_slice(RECORD_HEAD);
        let mut number = zmij::Buffer::new();
        out.extend_from_slice(if prediction.is_finite() {
            number.format_finite(prediction).as_bytes()
        } else {
            b"null"
        });
        out.extend_from_slice(&self.middle);
        let digest = tandem_core::digest::feature_digest_u64(inputs);
        let mut hex = [0u8; 16];
        for (k, h) in hex.iter_mut().enumerate() {
            *h = b"0123456789abcdef"[((digest >> (60 - 4 * k)) & 0xf) as usize];
        }
        out.extend_from_slice(&hex);
        out.extend_from_slice(RECORD_INPUTS);
        tandem_core::record::pack_inputs_into(inputs, out);
        out.extend_from_slice(b"\"}");
    }
}

/// Decodes a prediction record, naming `key` when the bytes are not one.
pub fn decode_prediction(key: &str, bytes: &[u8]) -> Result<PredictionRecord, StoreError> {
    let record: PredictionRecord =
        serde_json::from_slice(bytes).map_err(|e| StoreError::corrupt(key, e))?;
    if !record.timestamp.is_finite() {
        return Err(StoreError::corrupt(key, "timestamp is not a finite number"));
    }
    Ok(record)
}

/// Encodes a feature row as a JSON object of numbers. Non-finite values,
/// which JSON cannot carry, are written as `null` (read back as absent).
pub fn encode_features(row: &FeatureRow) -> Vec<u8> {
    struct Row<'a>(&'a FeatureRow);
    impl serde::Serialize for Row<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.entries())
        }
    }
    let mut out = Vec::with_capacity(16 + row.names().len() * 24);
    // Writing numbers and strings into memory cannot fail.
    let _ = serde_json::to_writer(&mut out, &Row(row));
    out
}

/// Encodes feature rows of a fixed list of names straight from their
/// values, byte for byte as [`encode_features`] encodes the same row as a
/// map (names in sorted order, non-finite values as `null`), without
/// building the map: bulk loads (`tandem materialize`) encode a million
/// rows.
///
/// A feature read from a 32-bit float column may be marked single
/// precision ([`FeatureEncoder::with_single`]): its values are then written
/// as the shortest decimal that reads back as the same `f32` (`0.1`, where
/// the widened `f64` would be `0.10000000149011612`), which every reader
/// turns back into the same 32-bit input, in about two thirds of the bytes.
#[derive(Debug, Clone)]
pub struct FeatureEncoder {
    /// The features in name order.
    order: Vec<Encoded>,
    /// The most bytes a row can take.
    most: usize,
}

/// How one feature is written.
#[derive(Debug, Clone)]
struct Encoded {
    /// Index into the values.
    index: usize,
    /// `,"name":` (the first feature's without the comma), padded.
    prefix: [u8; PREFIX],
    /// Bytes of `prefix` in use; longer prefixes are in `long`.
    len: usize,
    long: Option<Box<[u8]>>,
    /// Written in single precision when the value is an `f32` widened.
    single: bool,
}

/// Prefixes up to this long are copied as one fixed-size block (no call
/// to `memcpy` for a few bytes, twice per value of a million rows).
const PREFIX: usize = 16;
/// The longest number `zmij` writes (`-1.2345678901234567e-308`).
const NUMBER: usize = 24;

impl FeatureEncoder {
    /// An encoder for rows whose values come in the order of `names`
    /// (distinct names).
    pub fn new(names: &[String]) -> Self {
        FeatureEncoder::with_single(names, &[])
    }

    /// As [`FeatureEncoder::new`], with the names whose `single` flag is
    /// set (same order; missing flags are unset) written in single
    /// precision when their value is an `f32` widened.
    pub fn with_single(names: &[String], single: &[bool]) -> Self {
        let mut order: Vec<(usize, &String)> = names.iter().enumerate().collect();
        order.sort_by(|a, b| a.1.cmp(b.1));
        let order: Vec<Encoded> = order
            .into_iter()
            .enumerate()
            .map(|(k, (index, name))| {
                let mut bytes = if k == 0 { Vec::new() } else { vec![b','] };
                // Writing a string into memory cannot fail.
                let _ = serde_json::to_writer(&mut bytes, name);
                bytes.push(b':');
                let mut prefix = [0u8; PREFIX];
                let len = bytes.len();
                let long = if len <= PREFIX {
                    prefix[..len].copy_from_slice(&bytes);
                    None
                } else {
                    Some(bytes.into_boxed_slice())
                };
                Encoded {
                    index,
                    prefix,
                    len,
                    long,
                    single: single.get(index).copied().unwrap_or(false),
                }
            })
            .collect();
        let most = 2 + order.iter().map(|e| e.len + NUMBER).sum::<usize>();
        FeatureEncoder { order, most }
    }

    /// Encodes one row (`values` in the order of the names given to
    /// [`FeatureEncoder::new`]).
    pub fn encode(&self, values: &[f64]) -> Vec<u8> {
        let mut out = vec![0; self.room()];
        let n = self.write(values, &mut out);
        out.truncate(n);
        out
    }

    /// Bytes [`FeatureEncoder::write`] needs to write any row.
    pub fn room(&self) -> usize {
        self.most + PREFIX
    }

    /// Writes one row at the start of `out`, which must hold at least
    /// [`FeatureEncoder::room`] bytes, and returns its length. Every prefix
    /// is one fixed-size copy into the spare room.
    ///
    /// # Panics
    ///
    /// If `out` is shorter than [`FeatureEncoder::room`].
    pub fn write(&self, values: &[f64], out: &mut [u8]) -> usize {
        let out = &mut out[..self.room()];
        out[0] = b'{';
        let mut at = 1;
        for e in &self.order {
            match &e.long {
                None => out[at..at + PREFIX].copy_from_slice(&e.prefix),
                Some(long) => out[at..at + e.len].copy_from_slice(long),
            }
            at += e.len;
            let mut number = zmij::Buffer::new();
            let text: &[u8] = match values.get(e.index) {
                Some(&v) if e.single && v.is_finite() && f64::from(v as f32) == v => {
                    number.format_finite(v as f32).as_bytes()
                }
                Some(&v) if v.is_finite() => number.format_finite(v).as_bytes(),
                _ => b"null",
            };
            out[at..at + text.len()].copy_from_slice(text);
            at += text.len();
        }
        out[at] = b'}';
        at + 1
    }
}

/// Feature rows encoded by a [`FeatureEncoder`], with their entity ids, back
/// to back in two buffers: a bulk load of a million rows allocates no
/// string or buffer per row.
#[derive(Debug, Clone, Default)]
pub struct EncodedRows {
    ids: String,
    id_ends: Vec<usize>,
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// Where a row is written before it is appended (zeroed once).
    scratch: Vec<u8>,
}

impl EncodedRows {
    /// Room for `rows` rows of about `row_bytes` bytes each.
    pub fn with_capacity(rows: usize, row_bytes: usize) -> Self {
        EncodedRows {
            ids: String::with_capacity(rows * 16),
            id_ends: Vec::with_capacity(rows),
            bytes: Vec::with_capacity(rows * row_bytes),
            ends: Vec::with_capacity(rows),
            scratch: Vec::new(),
        }
    }

    /// Encodes and appends the row of `entity`.
    pub fn push(&mut self, entity: &str, encoder: &FeatureEncoder, values: &[f64]) {
        if self.scratch.len() < encoder.room() {
            self.scratch.resize(encoder.room(), 0);
        }
        let n = encoder.write(values, &mut self.scratch);
        self.bytes.extend_from_slice(&self.scratch[..n]);
        self.close(entity);
    }

    /// Appends a row encoded elsewhere.
    pub fn push_encoded(&mut self, entity: &str, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
        self.close(entity);
    }

    fn close(&mut self, entity: &str) {
        self.ends.push(self.bytes.len());
        self.ids.push_str(entity);
        self.id_ends.push(self.ids.len());
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of the encoded rows.
    pub fn bytes_len(&self) -> usize {
        self.bytes.len()
    }

    /// Row `i`: its entity and encoded bytes.
    pub fn get(&self, i: usize) -> (&str, &[u8]) {
        let id_start = if i == 0 { 0 } else { self.id_ends[i - 1] };
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        (
            &self.ids[id_start..self.id_ends[i]],
            &self.bytes[start..self.ends[i]],
        )
    }

    /// The rows in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// Decodes a feature row: a JSON object whose values are numbers or `null`
/// (absent). Anything else is corrupt. Of a name given twice, the last
/// value counts.
///
/// The rows of one feature table have the same names, so each thread keeps
/// the list of names of the last row it decoded and a row with the same
/// names shares it: decoding such a row allocates only its values.
pub fn decode_features(key: &str, bytes: &[u8]) -> Result<FeatureRow, StoreError> {
    thread_local! {
        static LAST: std::cell::RefCell<FeatureRow> = std::cell::RefCell::new(FeatureRow::new());
    }
    LAST.with(|last| {
        let row = {
            let previous = last.borrow();
            if let Some(row) = same_names(&previous, bytes) {
                return Ok(row);
            }
            let mut de = serde_json::Deserializer::from_slice(bytes);
            serde::de::DeserializeSeed::deserialize(RowSeed(&previous), &mut de)
                .and_then(|row| de.end().map(|()| row))
                .map_err(|e| StoreError::corrupt(key, e))?
        };
        if !Arc::ptr_eq(row.names(), last.borrow().names()) {
            *last.borrow_mut() = row.clone();
        }
        Ok(row)
    })
}

/// The common case, read without a JSON parser: `bytes` is exactly the
/// compact object the encoders write, `{"name":value,...}` with the names
/// of `previous` in its order, no whitespace, no escapes, and each value a
/// JSON number or `null`. Anything else (`None`) takes the general path,
/// which reads any JSON and names what is wrong. Numbers are read by
/// `lexical-core`, correctly rounded as `serde_json` reads them with
/// `float_roundtrip`: both give the same `f64`.
fn same_names(previous: &FeatureRow, bytes: &[u8]) -> Option<FeatureRow> {
    let names = previous.names();
    if names.is_empty() {
        return None;
    }
    let mut values = Vec::with_capacity(names.len());
    let mut at = 0;
    for (k, name) in names.iter().enumerate() {
        let open = if k == 0 { b'{' } else { b',' };
        let name = name.as_bytes();
        let head = bytes.get(at..at + name.len() + 4)?;
        // A byte loop: names are short, and a `memcmp` call costs more.
        let same = head[2..2 + name.len()]
            .iter()
            .zip(name)
            .all(|(a, b)| a == b);
        if head[0] != open || head[1] != b'"' || !same || head[head.len() - 2..] != *b"\":" {
            return None;
        }
        at += head.len();
        let rest = &bytes[at..];
        let len = if rest.starts_with(b"null") {
            values.push(f64::NAN);
            4
        } else {
            let len = json_number_len(rest)?;
            let v: f64 = lexical_core::parse(&rest[..len]).ok()?;
            values.push(v.is_finite().then_some(v)?);
            len
        };
        at += len;
        if !matches!(bytes.get(at), Some(b',' | b'}')) {
            return None;
        }
    }
    (at + 1 == bytes.len()).then(|| previous.sharing_names(values))?
}

/// The length of the JSON number at the start of `s`
/// (`-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`); `None` if there is
/// none.
fn json_number_len(s: &[u8]) -> Option<usize> {
    let digits = |from: usize| {
        s.get(from..)
            .map_or(0, |t| t.iter().take_while(|b| b.is_ascii_digit()).count())
    };
    let mut i = usize::from(s.first() == Some(&b'-'));
    let int = digits(i);
    if int == 0 || (int > 1 && s[i] == b'0') {
        return None;
    }
    i += int;
    if s.get(i) == Some(&b'.') {
        let frac = digits(i + 1);
        if frac == 0 {
            return None;
        }
        i += 1 + frac;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp = digits(i);
        if exp == 0 {
            return None;
        }
        i += exp;
    }
    Some(i)
}

/// Decodes a feature object against the names of the previous row.
struct RowSeed<'a>(&'a FeatureRow);

impl<'de> serde::de::DeserializeSeed<'de> for RowSeed<'_> {
    type Value = FeatureRow;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<FeatureRow, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RowSeed<'_> {
    type Value = FeatureRow;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object of numbers or null")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FeatureRow, A::Error> {
        let previous = self.0;
        let last = previous.names();
        let mut values: Vec<f64> = Vec::with_capacity(last.len());
        // Once a name differs from the previous row's, every pair is kept.
        let mut own: Option<Vec<(Box<str>, f64)>> = None;
        while let Some(name) = map.next_key_seed(NameSeed)? {
            let value = map.next_value::<Option<f64>>()?.unwrap_or(f64::NAN);
            match &mut own {
                None if last.get(values.len()).is_some_and(|n| **n == *name) => {
                    values.push(value);
                }
                None => {
                    let mut pairs: Vec<(Box<str>, f64)> = last[..values.len()]
                        .iter()
                        .cloned()
                        .zip(values.drain(..))
                        .collect();
                    pairs.push((name.into(), value));
                    own = Some(pairs);
                }
                Some(pairs) => pairs.push((name.into(), value)),
            }
        }
        let pairs = match own {
            None if values.len() == last.len() => {
                return previous
                    .sharing_names(values)
                    .ok_or_else(|| serde::de::Error::custom("one value per name"));
            }
            // A prefix of the previous row's names.
            None => last[..values.len()].iter().cloned().zip(values).collect(),
            Some(pairs) => pairs,
        };
        // Sorted by name, the last of equal names kept (a stable sort keeps
        // their order).
        let mut pairs = pairs;
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(Box<str>, f64)> = Vec::with_capacity(pairs.len());
        for (name, value) in pairs {
            match kept.last_mut() {
                Some(prev) if prev.0 == name => prev.1 = value,
                _ => kept.push((name, value)),
            }
        }
        let (names, values): (Vec<Box<str>>, Vec<f64>) = kept.into_iter().unzip();
        FeatureRow::from_parts(names.into(), values)
            .ok_or_else(|| serde::de::Error::custom("names sorted and distinct"))
    }
}

/// A feature name, borrowed from the input when it has no escapes.
struct NameSeed;

impl<'de> serde::de::DeserializeSeed<'de> for NameSeed {
    type Value = std::borrow::Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for NameSeed {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a feature name")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.to_string()))
    }
}

/// The Redis Cluster hash slot of a key (CRC16/XMODEM of the key, or of its
/// first non-empty `{...}` hash tag, modulo 16384).
pub fn hash_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16_xmodem(hashed) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::PredictionSource;

    #[test]
    fn default_keys_match_the_reference_layout() {
        let l = KeyLayout::default();
        assert_eq!(l.prediction_key("u1"), "pred:u1");
        assert_eq!(l.feature_key("u1"), "features:u1");
        assert_eq!(l.activity_key(7), "{activity}:c:7");
        let l = KeyLayout {
            namespace: "churn:prod:".into(),
            ..KeyLayout::default()
        };
        assert_eq!(l.prediction_key("u1"), "churn:prod:pred:u1");
        assert_eq!(l.activity_key(7), "{churn:prod:activity}:c:7");
    }

    #[test]
    fn hash_slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` and the Redis Cluster specification.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(hash_slot(b"foo"), 12182);
        assert_eq!(hash_slot(b"{user1000}.following"), hash_slot(b"user1000"));
        assert_eq!(hash_slot(b"foo{}{bar}"), hash_slot(b"foo{}{bar}"));
        assert_ne!(hash_slot(b"foo{}{bar}"), hash_slot(b"bar"));
        assert_eq!(hash_slot(b"foo{{bar}}zap"), hash_slot(b"{bar"));
    }

    #[test]
    fn prediction_json_keeps_the_reference_fields_first() {
        let r = PredictionRecord {
            prediction: 0.25,
            timestamp: 1700000000.5,
            values: None,
            model: "churn".into(),
            version: 3,
            source: PredictionSource::Batch,
            run_id: Some("run-1".into()),
            digest: None,
            inputs: None,
        };
        let json = String::from_utf8(encode_prediction(&r)).unwrap();
        assert!(
            json.starts_with(r#"{"prediction":0.25,"timestamp":1700000000.5,"#),
            "{json}"
        );
        assert_eq!(decode_prediction("k", json.as_bytes()).unwrap(), r);
    }

    #[test]
    fn the_record_encoder_writes_the_bytes_encode_prediction_writes() {
        let templates = [
            PredictionRecord {
                prediction: 0.0,
                timestamp: 1_796_053_305.603_724_7,
                values: None,
                model: Arc::from("xgboost_200x6"),
                version: 3,
                source: tandem_core::PredictionSource::Batch,
                run_id: Some("run-1796053305-13111".into()),
                digest: None,
                inputs: None,
            },
            // Names that need escaping, a whole-second timestamp, no run.
            PredictionRecord {
                prediction: 0.0,
                timestamp: 1_700_000_000.0,
                values: None,
                model: Arc::from("m\"odel\\ \u{e9}\u{1}"),
                version: 0,
                source: tandem_core::PredictionSource::Realtime,
                run_id: None,
                digest: None,
                inputs: None,
            },
        ];
        let predictions = [
            0.0,
            -0.0,
            1.0,
            -7.311_684_608_459_473,
            1e-300,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::NAN,
            f64::INFINITY,
        ];
        let rows: [&[f32]; 4] = [&[], &[1.5], &[0.1, -2.0, 3.25], &[0.3; 49]];
        for template in &templates {
            let encoder = RecordEncoder::new(template).expect("a scalar record");
            for &prediction in &predictions {
                for inputs in rows {
                    let record = PredictionRecord {
                        prediction,
                        digest: Some(tandem_core::digest::feature_digest(inputs).into()),
                        inputs: Some(tandem_core::record::pack_inputs(inputs).into()),
                        ..template.clone()
                    };
                    let mut out = b"before".to_vec();
                    encoder.write(prediction, inputs, &mut out);
                    assert_eq!(
                        String::from_utf8_lossy(&out[6..]),
                        String::from_utf8_lossy(&encode_prediction(&record)),
                    );
                }
            }
        }
        let vector = PredictionRecord {
            values: Some(vec![1.0, 2.0]),
            ..templates[0].clone()
        };
        assert!(RecordEncoder::new(&vector).is_none());
    }

    #[test]
    fn a_record_written_by_the_reference_design_decodes() {
        let r = decode_prediction("pred:1", br#"{"prediction":1.0,"timestamp":5.0}"#).unwrap();
        assert_eq!((r.prediction, r.timestamp, r.version), (1.0, 5.0, 0));
        assert_eq!(&*r.model, "");
        assert_eq!(r.source, PredictionSource::Batch);
    }

    #[test]
    fn corrupt_values_are_errors() {
        for bad in [&b"not json"[..], b"{\"prediction\":\"x\"}", b"[]", b""] {
            assert!(matches!(
                decode_prediction("pred:x", bad),
                Err(StoreError::Corrupt { .. })
            ));
        }
        assert!(matches!(
            decode_features("features:x", br#"{"a":"text"}"#),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn the_encoder_writes_the_bytes_encode_features_writes() {
        // Names past the fixed-size prefix block too, and the longest
        // numbers there are.
        let names: Vec<String> = [
            "zeta",
            "a\"quoted\"",
            "f10",
            "f2",
            "é",
            "a_name_longer_than_sixteen_bytes",
            "exactly_12ch",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let encoder = FeatureEncoder::new(&names);
        let rows = [
            vec![1.0, -0.5, 1e-300, 123456789.125, 0.1, 7.0, 8.0],
            vec![f64::NAN, f64::INFINITY, 0.0, -0.0, 3.0, f64::MIN, 5e-324],
            vec![
                -1.2345678901234567e-308,
                f64::MAX,
                -f64::MIN_POSITIVE,
                f64::EPSILON,
                -1e22,
                -2.2250738585072014e-308,
                f64::NEG_INFINITY,
            ],
        ];
        for values in rows {
            let row: FeatureRow = names.iter().cloned().zip(values.iter().copied()).collect();
            assert_eq!(
                String::from_utf8(encoder.encode(&values)).unwrap(),
                String::from_utf8(encode_features(&row)).unwrap()
            );
        }
        // Too few values: the rest are null (absent when read).
        let back = decode_features("k", &encoder.encode(&[1.0])).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back.get("zeta"), Some(1.0));
        // No names at all.
        assert_eq!(FeatureEncoder::new(&[]).encode(&[]), b"{}");
    }

    #[test]
    fn encoded_rows_hold_each_row_whole_with_its_entity() {
        let names: Vec<String> = (0..40).map(|i| format!("feature_{i}")).collect();
        let encoder = FeatureEncoder::with_single(&names, &[true; 40]);
        let mut rows = EncodedRows::with_capacity(2, 16);
        assert!(rows.is_empty());
        let values: Vec<Vec<f64>> = (0..50)
            .map(|r| {
                (0..40)
                    .map(|f| f64::from((r * 40 + f) as f32 * -0.37f32))
                    .collect()
            })
            .collect();
        for (r, v) in values.iter().enumerate() {
            if r % 7 == 3 {
                rows.push_encoded(&format!("id-{r}"), &encoder.encode(v));
            } else {
                rows.push(&format!("id-{r}"), &encoder, v);
            }
        }
        assert_eq!(rows.len(), 50);
        assert_eq!(
            rows.bytes_len(),
            values
                .iter()
                .map(|v| encoder.encode(v).len())
                .sum::<usize>()
        );
        for (r, (entity, bytes)) in rows.iter().enumerate() {
            assert_eq!(entity, format!("id-{r}"));
            assert_eq!(bytes, encoder.encode(&values[r]).as_slice());
            let back = decode_features(entity, bytes).unwrap();
            for (f, name) in names.iter().enumerate() {
                // Written in single precision: the same f32 reads back.
                let got = back.get(name).map(|x| x as f32);
                assert_eq!(got, Some(values[r][f] as f32), "{entity} {name}");
            }
        }
    }

    #[test]
    fn features_round_trip_and_null_is_absent() {
        let mut row = FeatureRow::new();
        row.insert("a", 1.5);
        row.insert("b", f64::NAN);
        let bytes = encode_features(&row);
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"a":1.5,"b":null}"#
        );
        let back = decode_features("k", &bytes).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back.get("a"), Some(1.5));
    }

    #[test]
    fn rows_decode_as_maps_and_share_the_names_of_the_row_before() {
        // What a map of the same JSON holds (the last of a repeated name).
        let reference = |bytes: &[u8]| -> Vec<(String, f64)> {
            let map: std::collections::BTreeMap<String, Option<f64>> =
                serde_json::from_slice(bytes).unwrap();
            map.into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect()
        };
        let docs: [&[u8]; 10] = [
            br#"{"a":1,"b":2.5,"c":-3e2}"#,
            br#"{"a":4,"b":5,"c":6}"#,
            // Fewer names, then more, then another order.
            br#"{"a":7,"b":8}"#,
            br#"{"a":1,"b":2,"c":3,"d":4}"#,
            br#"{"c":1,"a":2,"b":3}"#,
            // A name given twice, a null, an escaped name, an empty object.
            br#"{"a":1,"b":2,"a":9}"#,
            br#"{"a":null,"b":2,"c":3}"#,
            br#"{"a\u0062":1,"b":2,"c":3}"#,
            br#"{}"#,
            br#"{"a":1,"b":2.5,"c":-3e2}"#,
        ];
        let mut before: Option<FeatureRow> = None;
        for doc in docs {
            let row = decode_features("k", doc).unwrap();
            let got: Vec<(String, f64)> = row.iter().map(|(k, v)| (k.to_string(), v)).collect();
            assert_eq!(got, reference(doc), "{}", String::from_utf8_lossy(doc));
            if let Some(before) = &before {
                let same_names = before.names()[..] == row.names()[..];
                assert_eq!(
                    Arc::ptr_eq(before.names(), row.names()),
                    same_names,
                    "{}",
                    String::from_utf8_lossy(doc)
                );
            }
            before = Some(row);
        }
        // Rows of one table: one list of names between them.
        let encoder = FeatureEncoder::new(&["x".to_string(), "y".to_string()]);
        let rows: Vec<FeatureRow> = (0..3)
            .map(|i| decode_features("k", &encoder.encode(&[f64::from(i), 1.0])).unwrap())
            .collect();
        assert!(
            rows.windows(2)
                .all(|w| Arc::ptr_eq(w[0].names(), w[1].names()))
        );
        assert_eq!(rows[2].get("x"), Some(2.0));
        // A bad row after a good one is still an error, and the next good
        // row is still right.
        for bad in [
            &br#"{"x":1,"y":"s"}"#[..],
            br#"{"x":1,"y":2"#,
            br#"{"x":1}x"#,
            b"[1]",
        ] {
            assert!(matches!(
                decode_features("k", bad),
                Err(StoreError::Corrupt { .. })
            ));
        }
        let after = decode_features("k", &encoder.encode(&[5.0, 6.0])).unwrap();
        assert_eq!(after.iter().collect::<Vec<_>>(), [("x", 5.0), ("y", 6.0)]);
    }

    #[test]
    fn the_fast_path_reads_what_the_json_parser_reads_and_refuses_the_rest() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|n| n.to_string()).collect();
        let encoder = FeatureEncoder::new(&names);
        let previous = decode_features("k", &encoder.encode(&[1.0, 2.0, 3.0])).unwrap();
        // What serde_json (float_roundtrip) reads, bit for bit.
        let reference = |bytes: &[u8]| -> Option<Vec<u64>> {
            let map: std::collections::BTreeMap<String, Option<f64>> =
                serde_json::from_slice(bytes).ok()?;
            Some(
                map.values()
                    .map(|v| v.unwrap_or(f64::NAN).to_bits())
                    .collect(),
            )
        };
        let fast = |bytes: &[u8]| {
            same_names(&previous, bytes).map(|r| {
                assert!(Arc::ptr_eq(r.names(), previous.names()));
                (0..3)
                    .map(|i| r.value_at(i).unwrap_or(f64::NAN).to_bits())
                    .collect::<Vec<u64>>()
            })
        };
        // Encoded rows: random bit patterns, f32 values widened, integers,
        // the extremes and subnormals.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut specials = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            5e-324,
            -2.2250738585072e-308,
            1e22,
            1e23,
            9007199254740993.0,
            0.1,
            f64::NAN,
        ];
        for _ in 0..3000 {
            let bits = f64::from_bits(next());
            let single = f64::from(f32::from_bits(next() as u32));
            let int = (next() % 2_000_001) as f64 - 1e6;
            specials.extend([bits, single, int]);
        }
        for row in specials.chunks(3) {
            let bytes = encoder.encode(row);
            let want = reference(&bytes).unwrap();
            assert_eq!(
                fast(&bytes),
                Some(want.clone()),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
            assert_eq!(
                decode_features("k", &bytes)
                    .unwrap()
                    .iter()
                    .map(|(_, v)| v.to_bits())
                    .collect::<Vec<_>>(),
                want.iter()
                    .copied()
                    .filter(|b| f64::from_bits(*b).is_finite())
                    .collect::<Vec<_>>()
            );
        }
        // Number forms JSON allows that no encoder here writes.
        for token in [
            "0",
            "-0",
            "1E5",
            "1e+5",
            "2.5e-3",
            "-12.75E+2",
            "1e-400",
            "123456789012345678901234567890",
            "0.000000000000000000000000000001",
        ] {
            let doc = format!(r#"{{"a":{token},"b":null,"c":7}}"#);
            let want = reference(doc.as_bytes()).unwrap();
            assert_eq!(fast(doc.as_bytes()), Some(want), "{doc}");
        }
        // Anything else goes to the JSON parser: an error where JSON has
        // one, the same row where it has none.
        for token in [
            "01", "1.", ".5", "+1", "1e", "1e+", "--1", "-", "nan", "NaN", "Infinity", "1e400",
            "0x10", "1_0", "\"1\"", "true", "",
        ] {
            let doc = format!(r#"{{"a":{token},"b":2,"c":3}}"#);
            assert_eq!(fast(doc.as_bytes()), None, "{doc}");
            assert!(
                matches!(
                    decode_features("k", doc.as_bytes()),
                    Err(StoreError::Corrupt { .. })
                ),
                "{doc}"
            );
        }
        for (doc, a) in [
            (r#"{"a": 1,"b":2,"c":3}"#, 1.0),
            (r#"{"a":1,"b":2,"c":3 }"#, 1.0),
            (r#"{"\u0061":4,"b":2,"c":3}"#, 4.0),
            (r#"{"a":1,"b":2,"c":3,"a":5}"#, 5.0),
        ] {
            assert_eq!(fast(doc.as_bytes()), None, "{doc}");
            assert_eq!(
                decode_features("k", doc.as_bytes()).unwrap().get("a"),
                Some(a)
            );
        }
        for doc in [
            r#"{"a":1,"b":2}"#,
            r#"{"a":1,"b":2,"d":3}"#,
            r#"{"a":1,"b":2,"c":3}x"#,
        ] {
            assert_eq!(fast(doc.as_bytes()), None, "{doc}");
        }
    }

    #[test]
    fn single_precision_features_are_written_short_and_read_back_the_same() {
        let names: Vec<String> = ["b", "a", "c"].iter().map(|n| n.to_string()).collect();
        // "b" and "a" single, "c" double.
        let encoder = FeatureEncoder::with_single(&names, &[true, true, false]);
        let third = f64::from(0.3f32);
        let bytes = encoder.encode(&[third, 0.1, third]);
        // 0.1 is no f32 widened: written in full.
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"a":0.1,"b":0.3,"c":0.30000001192092896}"#
        );
        let mut x: u32 = 0x1234_5678;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let v = f32::from_bits(x);
            let row = decode_features("k", &encoder.encode(&[f64::from(v), 0.0, 0.0])).unwrap();
            match row.get("b") {
                Some(back) => assert_eq!((back as f32).to_bits(), v.to_bits(), "{v:e}"),
                None => assert!(!v.is_finite()),
            }
        }
    }
}
