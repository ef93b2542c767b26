//! The per-row rules every batch job applies: ids must be present and
//! unique; missing or non-numeric features and NaN take the fill value and
//! are counted; `--strict` turns any of it into an error naming the row.

use std::collections::{BTreeMap, HashSet};
use std::hash::BuildHasherDefault;

use datafusion::arrow::array::{Array, ArrayRef, Float32Array, Float64Array};
use datafusion::arrow::buffer::NullBuffer;

use crate::digest::id_hash;
use crate::error::BatchError;
use crate::index::{KeyHasher, mix};

/// A feature column as [`crate::plan::scoring_query`] gives it: FLOAT (f32,
/// what the model takes) as it is, any other type `TRY_CAST` to DOUBLE.
/// Reading FLOAT columns without the round trip through DOUBLE saves a
/// cast and 8 bytes a value per column and batch.
pub(crate) enum FeatureColumn {
    F32(Float32Array),
    F64(Float64Array),
}

impl FeatureColumn {
    /// The column at `col` of a scan.
    pub(crate) fn of(col: &ArrayRef) -> Result<FeatureColumn, BatchError> {
        match col.as_any().downcast_ref::<Float32Array>() {
            Some(c) => Ok(FeatureColumn::F32(c.clone())),
            None => crate::job::doubles(col).map(FeatureColumn::F64),
        }
    }

    /// Row `r` in f32, as `predict` feeds it to the model before the fill
    /// (`None`: null; NaN stays NaN).
    #[inline]
    pub(crate) fn get(&self, r: usize) -> Option<f32> {
        match self {
            FeatureColumn::F32(c) => c.is_valid(r).then(|| c.value(r)),
            FeatureColumn::F64(c) => c.is_valid(r).then(|| c.value(r) as f32),
        }
    }

    /// Row `r` in f64 (a FLOAT widened exactly; `None`: null).
    #[inline]
    pub(crate) fn get_f64(&self, r: usize) -> Option<f64> {
        match self {
            FeatureColumn::F32(c) => c.is_valid(r).then(|| f64::from(c.value(r))),
            FeatureColumn::F64(c) => c.is_valid(r).then(|| c.value(r)),
        }
    }

    /// Row `r` as the model gets it (null or NaN: `fill`).
    #[inline]
    pub(crate) fn value(&self, r: usize, fill: f32) -> f32 {
        match self.get(r) {
            Some(v) if !v.is_nan() => v,
            _ => fill,
        }
    }

    /// Marks the rows where this column is null in `missing` and those
    /// where it is NaN in `nan` (a null slot's value does not count).
    pub(crate) fn flag_rows(&self, missing: &mut [bool], nan: &mut [bool]) {
        fn flag<T: Copy>(
            values: &[T],
            nulls: Option<&NullBuffer>,
            is_nan: impl Fn(T) -> bool,
            missing: &mut [bool],
            nan: &mut [bool],
        ) {
            match nulls {
                None => {
                    for (n, v) in nan.iter_mut().zip(values) {
                        *n |= is_nan(*v);
                    }
                }
                Some(nulls) => {
                    for (r, v) in values.iter().enumerate().take(nan.len()) {
                        if nulls.is_null(r) {
                            missing[r] = true;
                        } else {
                            nan[r] |= is_nan(*v);
                        }
                    }
                }
            }
        }
        match self {
            FeatureColumn::F32(c) => flag(c.values(), c.nulls(), f32::is_nan, missing, nan),
            FeatureColumn::F64(c) => flag(c.values(), c.nulls(), f64::is_nan, missing, nan),
        }
    }

    /// Mixes every row's value, as the model gets it, into its digest
    /// index hash ([`crate::index::row_hash`], one column at a time).
    pub(crate) fn hash_into(&self, h: &mut [u64], fill: f32) {
        let pick = |v: f32| if v.is_nan() { fill } else { v };
        match self {
            FeatureColumn::F32(c) if c.null_count() == 0 => {
                for (hr, v) in h.iter_mut().zip(c.values().iter()) {
                    *hr = mix(*hr, pick(*v).to_bits());
                }
            }
            FeatureColumn::F64(c) if c.null_count() == 0 => {
                for (hr, v) in h.iter_mut().zip(c.values().iter()) {
                    *hr = mix(*hr, pick(*v as f32).to_bits());
                }
            }
            _ => {
                for (r, hr) in h.iter_mut().enumerate() {
                    *hr = mix(*hr, self.value(r, fill).to_bits());
                }
            }
        }
    }
}

/// Every row's digest index hash ([`crate::index::row_hash`]) of `cols`
/// mixed into `h`. Plain FLOAT columns (no nulls) go four at a time, each
/// row's hash staying in a register across them instead of being loaded
/// and stored once per column; the mixing order, and so the hash, is the
/// same as one column at a time.
pub(crate) fn hash_rows(cols: &[FeatureColumn], h: &mut [u64], fill: f32) {
    fn plain(c: &FeatureColumn, n: usize) -> Option<&[f32]> {
        match c {
            FeatureColumn::F32(c) if c.null_count() == 0 && c.len() >= n => Some(&c.values()[..n]),
            _ => None,
        }
    }
    let pick = |v: f32| (if v.is_nan() { fill } else { v }).to_bits();
    let n = h.len();
    let mut i = 0;
    while i < cols.len() {
        if let Some([a, b, c, d]) = cols.get(i..i + 4).and_then(|four| {
            Some([
                plain(&four[0], n)?,
                plain(&four[1], n)?,
                plain(&four[2], n)?,
                plain(&four[3], n)?,
            ])
        }) {
            for (r, hr) in h.iter_mut().enumerate() {
                let mut x = *hr;
                x = mix(x, pick(a[r]));
                x = mix(x, pick(b[r]));
                x = mix(x, pick(c[r]));
                x = mix(x, pick(d[r]));
                *hr = x;
            }
            i += 4;
        } else {
            cols[i].hash_into(h, fill);
            i += 1;
        }
    }
}

/// Why a row was skipped or a value filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// The entity id is null (skipped).
    NullId,
    /// The entity id was seen before in this run (skipped; the first wins).
    DuplicateId,
    /// A feature is null or not a number (filled).
    MissingFeature,
    /// A feature is NaN (filled).
    NanFeature,
    /// The model gave a non-finite prediction (skipped).
    NonFinitePrediction,
}

impl Reason {
    /// The name used in summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NullId => "null_id",
            Reason::DuplicateId => "duplicate_id",
            Reason::MissingFeature => "missing_feature",
            Reason::NanFeature => "nan_feature",
            Reason::NonFinitePrediction => "non_finite_prediction",
        }
    }
}

/// Counts and checks rows in scan order.
#[derive(Debug)]
pub struct RowRules {
    strict: bool,
    /// 64-bit hashes of the ids seen (8 bytes per id; two distinct ids
    /// collide with probability ~n^2 / 2^65, about 3e-6 for 10M ids).
    seen: HashSet<u64, BuildHasherDefault<KeyHasher>>,
    rows: u64,
    skipped: BTreeMap<&'static str, u64>,
    filled: BTreeMap<&'static str, u64>,
}

impl RowRules {
    /// Rules for a run; `strict` fails on the first bad row.
    pub fn new(strict: bool) -> Self {
        RowRules {
            strict,
            seen: HashSet::default(),
            rows: 0,
            skipped: BTreeMap::new(),
            filled: BTreeMap::new(),
        }
    }

    /// Makes room for the ids of `rows` rows up front (the input's row
    /// count, when known), so that the duplicate check does not rehash as
    /// it grows.
    pub fn reserve(&mut self, rows: usize) {
        self.seen.reserve(rows);
    }

    /// Checks a row's id; `Ok(None)` means skip the row.
    pub fn check_id<'a>(&mut self, id: Option<&'a str>) -> Result<Option<&'a str>, BatchError> {
        let row = self.rows;
        self.rows += 1;
        let Some(id) = id else {
            return self.skip(row, None, Reason::NullId).map(|()| None);
        };
        if !self.seen.insert(id_hash(id)) {
            return self.skip(row, Some(id), Reason::DuplicateId).map(|()| None);
        }
        Ok(Some(id))
    }

    /// Records that a value of the current row was filled.
    pub fn filled(&mut self, id: &str, reason: Reason) -> Result<(), BatchError> {
        self.filled_at(self.rows - 1, id, reason)
    }

    /// Records that a value of row `row` (counted from 0 in the run) was
    /// filled, for callers that check the ids of many rows first.
    pub fn filled_at(&mut self, row: u64, id: &str, reason: Reason) -> Result<(), BatchError> {
        if self.strict {
            return Err(BatchError::BadRow {
                row,
                entity: Some(id.to_owned()),
                reason: format!("{} (--strict)", reason.as_str()),
            });
        }
        *self.filled.entry(reason.as_str()).or_default() += 1;
        Ok(())
    }

    /// Skips the current row (after its id was accepted).
    pub fn skip_current(&mut self, id: &str, reason: Reason) -> Result<(), BatchError> {
        self.skip(self.rows - 1, Some(id), reason)
    }

    fn skip(&mut self, row: u64, id: Option<&str>, reason: Reason) -> Result<(), BatchError> {
        if self.strict {
            return Err(BatchError::BadRow {
                row,
                entity: id.map(str::to_owned),
                reason: format!("{} (--strict)", reason.as_str()),
            });
        }
        *self.skipped.entry(reason.as_str()).or_default() += 1;
        Ok(())
    }

    /// Rows seen.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Skipped rows by reason.
    pub fn skipped(&self) -> BTreeMap<String, u64> {
        self.skipped
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect()
    }

    /// Rows with filled values, by reason (a row counts once per reason).
    pub fn filled_counts(&self) -> BTreeMap<String, u64> {
        self.filled
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_null_ids_are_skipped_and_counted() {
        let mut r = RowRules::new(false);
        assert_eq!(r.check_id(Some("a")).unwrap(), Some("a"));
        assert_eq!(r.check_id(Some("a")).unwrap(), None);
        assert_eq!(r.check_id(None).unwrap(), None);
        assert_eq!(r.check_id(Some("b")).unwrap(), Some("b"));
        r.filled("b", Reason::NanFeature).unwrap();
        assert_eq!(r.skipped()["duplicate_id"], 1);
        assert_eq!(r.skipped()["null_id"], 1);
        assert_eq!(r.filled_counts()["nan_feature"], 1);
        assert_eq!(r.rows(), 4);
    }

    #[test]
    fn strict_names_the_row() {
        let mut r = RowRules::new(true);
        r.check_id(Some("a")).unwrap();
        let err = r.check_id(Some("a")).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"row 1 (entity Some("a")): duplicate_id (--strict)"#
        );
        r.check_id(Some("b")).unwrap();
        let err = r.filled("b", Reason::MissingFeature).unwrap_err();
        assert!(err.to_string().contains("row 2"), "{err}");
    }

    #[test]
    fn rows_hash_four_columns_at_a_time_as_one_at_a_time() {
        let n = 37;
        let plain = |k: usize| {
            FeatureColumn::F32(Float32Array::from(
                (0..n).map(|r| (r * 7 + k) as f32 * 0.5).collect::<Vec<_>>(),
            ))
        };
        // Plain FLOAT columns in runs of five and three, split by a column
        // with nulls, a DOUBLE one and one with a NaN.
        let mut cols: Vec<FeatureColumn> = (0..5).map(plain).collect();
        cols.push(FeatureColumn::F32(Float32Array::from(
            (0..n)
                .map(|r| (r % 3 != 0).then_some(r as f32))
                .collect::<Vec<_>>(),
        )));
        cols.push(FeatureColumn::F64(Float64Array::from(
            (0..n).map(|r| r as f64 / 3.0).collect::<Vec<_>>(),
        )));
        cols.extend((5..8).map(plain));
        cols.push(FeatureColumn::F32(Float32Array::from(
            (0..n)
                .map(|r| if r == 4 { f32::NAN } else { 1.0 })
                .collect::<Vec<_>>(),
        )));
        cols.extend((8..12).map(plain));
        let fill = -1.0;
        let mut h = vec![crate::index::HASH_SEED; n];
        hash_rows(&cols, &mut h, fill);
        for (r, got) in h.iter().enumerate() {
            let row: Vec<f32> = cols.iter().map(|c| c.value(r, fill)).collect();
            assert_eq!(*got, crate::index::row_hash(&row), "row {r}");
        }
        let mut one = vec![crate::index::HASH_SEED; n];
        for c in &cols {
            c.hash_into(&mut one, fill);
        }
        assert_eq!(h, one);
    }
}
