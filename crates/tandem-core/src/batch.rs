//! Row-major batches of model inputs and of predictions.

/// Why a batch could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    /// The number of values is not a whole number of rows.
    #[error("{values} values do not make rows of {width} features")]
    Ragged {
        /// Values given.
        values: usize,
        /// Features per row.
        width: usize,
    },
    /// A row has a different width from the first.
    #[error("row {row} has {got} features, expected {expected}")]
    RowWidth {
        /// Zero-based row index.
        row: usize,
        /// Width of the first row.
        expected: usize,
        /// Width of this row.
        got: usize,
    },
    /// Rows must have at least one feature.
    #[error("rows must have at least one feature")]
    ZeroWidth,
}

/// A batch of `rows` feature vectors of `width` f32 values each, stored
/// row-major as one contiguous block (the `[N, F]` tensor a model takes).
/// A single row is a batch of one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FeatureBatch {
    values: Vec<f32>,
    width: usize,
}

impl FeatureBatch {
    /// Wraps row-major values.
    pub fn new(values: Vec<f32>, width: usize) -> Result<Self, BatchError> {
        if width == 0 {
            return Err(BatchError::ZeroWidth);
        }
        if !values.len().is_multiple_of(width) {
            return Err(BatchError::Ragged {
                values: values.len(),
                width,
            });
        }
        Ok(FeatureBatch { values, width })
    }

    /// Builds a batch from rows, which must all have the same width.
    pub fn from_rows<R: AsRef<[f32]>>(rows: &[R]) -> Result<Self, BatchError> {
        let width = rows.first().map_or(0, |r| r.as_ref().len());
        let mut values = Vec::with_capacity(width * rows.len());
        for (row, r) in rows.iter().enumerate() {
            let r = r.as_ref();
            if r.len() != width {
                return Err(BatchError::RowWidth {
                    row,
                    expected: width,
                    got: r.len(),
                });
            }
            values.extend_from_slice(r);
        }
        FeatureBatch::new(values, width)
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.values.len() / self.width.max(1)
    }

    /// Features per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// All values, row-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// One row.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.width..(i + 1) * self.width]
    }

    /// Consumes the batch, returning its values.
    pub fn into_values(self) -> Vec<f32> {
        self.values
    }
}

/// What a model predicted for a batch: `width` values per row (1 for a
/// scalar prediction such as a regression value or one class probability).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Predictions {
    values: Vec<f32>,
    width: usize,
}

impl Predictions {
    /// Wraps row-major values.
    pub fn new(values: Vec<f32>, width: usize) -> Result<Self, BatchError> {
        if width == 0 {
            return Err(BatchError::ZeroWidth);
        }
        if !values.len().is_multiple_of(width) {
            return Err(BatchError::Ragged {
                values: values.len(),
                width,
            });
        }
        Ok(Predictions { values, width })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.values.len() / self.width.max(1)
    }

    /// Values per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The prediction of one row.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.width..(i + 1) * self.width]
    }

    /// All values, row-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Rows whose prediction holds a NaN or an infinity.
    pub fn non_finite_rows(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.rows()).filter(|&i| self.row(i).iter().any(|v| !v.is_finite()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ragged_and_uneven_rows_are_refused() {
        assert_eq!(
            FeatureBatch::new(vec![1.0; 5], 2),
            Err(BatchError::Ragged {
                values: 5,
                width: 2
            })
        );
        let rows: Vec<Vec<f32>> = vec![vec![1.0, 2.0], vec![3.0]];
        assert_eq!(
            FeatureBatch::from_rows(&rows),
            Err(BatchError::RowWidth {
                row: 1,
                expected: 2,
                got: 1
            })
        );
        assert_eq!(FeatureBatch::new(vec![], 0), Err(BatchError::ZeroWidth));
    }

    #[test]
    fn rows_are_contiguous_slices() {
        let b = FeatureBatch::from_rows(&[[1.0, 2.0], [3.0, 4.0]]).unwrap();
        assert_eq!((b.rows(), b.width()), (2, 2));
        assert_eq!(b.row(1), &[3.0, 4.0]);
    }

    #[test]
    fn non_finite_rows_are_reported() {
        let p = Predictions::new(vec![1.0, f32::NAN, 2.0, f32::INFINITY], 1).unwrap();
        assert_eq!(p.non_finite_rows().collect::<Vec<_>>(), vec![1, 3]);
    }
}
