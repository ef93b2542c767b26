//! An entity's stored features: names and values, with the list of names
//! shared between rows.
//!
//! Every entity of a feature table has the same columns, so the rows read
//! from a store carry one list of names between them (an `Arc`) and a
//! vector of values each: reading a row allocates that vector, not a
//! string per feature, and [`crate::FeatureSchema::assemble`] finds the
//! schema's features in a list of names once, not once per row.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// A sorted list of distinct feature names, shared by the rows that have
/// exactly these names.
pub type FeatureNames = Arc<[Box<str>]>;

/// An entity's stored features by name. Stored as a JSON object of numbers;
/// a `null` value is read as absent. A name may be present with no value
/// (`null`, or a non-finite value, which JSON cannot carry): it is written
/// back as `null` and [`FeatureRow::get`] gives `None` for it.
#[derive(Clone, Default)]
pub struct FeatureRow {
    names: FeatureNames,
    /// One per name; NaN: no value.
    values: Vec<f64>,
}

impl FeatureRow {
    /// An empty row.
    pub fn new() -> Self {
        FeatureRow::default()
    }

    /// A row of `values` for `names`, which must be sorted and distinct and
    /// as many as the values; `None` otherwise. A non-finite value means
    /// "no value".
    pub fn from_parts(names: FeatureNames, values: Vec<f64>) -> Option<Self> {
        let ordered = names.windows(2).all(|w| w[0] < w[1]);
        (ordered && names.len() == values.len()).then_some(FeatureRow { names, values })
    }

    /// A row with this row's names and `values` (as many as the names;
    /// `None` otherwise), sharing the list of names.
    pub fn sharing_names(&self, values: Vec<f64>) -> Option<Self> {
        (values.len() == self.names.len()).then(|| FeatureRow {
            names: self.names.clone(),
            values,
        })
    }

    /// The list of names (with or without values), sorted.
    pub fn names(&self) -> &FeatureNames {
        &self.names
    }

    /// The value of the `i`-th name of [`FeatureRow::names`], if it has one.
    pub fn value_at(&self, i: usize) -> Option<f64> {
        self.values.get(i).copied().filter(|v| v.is_finite())
    }

    /// The value of `name`, if the row has one.
    pub fn get(&self, name: &str) -> Option<f64> {
        let i = self.names.binary_search_by(|n| (**n).cmp(name)).ok()?;
        self.value_at(i)
    }

    /// Sets the value of `name` (a non-finite value: present without a
    /// value), returning the value it had.
    pub fn insert(&mut self, name: impl Into<String>, value: f64) -> Option<f64> {
        let name = name.into();
        match self.names.binary_search_by(|n| (**n).cmp(&name)) {
            Ok(i) => {
                let old = self.value_at(i);
                self.values[i] = value;
                old
            }
            Err(i) => {
                let mut names: Vec<Box<str>> = self.names.to_vec();
                names.insert(i, name.into_boxed_str());
                self.names = names.into();
                self.values.insert(i, value);
                None
            }
        }
    }

    /// Every name with a value, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> + '_ {
        self.entries().filter_map(|(n, v)| v.map(|v| (n, v)))
    }

    /// Every name, with its value if it has one, in name order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, Option<f64>)> + '_ {
        self.names
            .iter()
            .zip(&self.values)
            .map(|(n, v)| (&**n, Some(*v).filter(|v| v.is_finite())))
    }

    /// How many names have a value.
    pub fn len(&self) -> usize {
        self.values.iter().filter(|v| v.is_finite()).count()
    }

    /// Whether no name has a value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PartialEq for FeatureRow {
    /// Rows are equal when the same names have the same values.
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl fmt::Debug for FeatureRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Into<String>> FromIterator<(K, f64)> for FeatureRow {
    /// A row of these names and values; of a name given twice, the last
    /// value counts.
    fn from_iter<I: IntoIterator<Item = (K, f64)>>(iter: I) -> Self {
        let map: BTreeMap<String, f64> = iter.into_iter().map(|(k, v)| (k.into(), v)).collect();
        map.into()
    }
}

impl From<BTreeMap<String, f64>> for FeatureRow {
    fn from(map: BTreeMap<String, f64>) -> Self {
        let (names, values): (Vec<Box<str>>, Vec<f64>) = map
            .into_iter()
            .map(|(k, v)| (k.into_boxed_str(), v))
            .unzip();
        FeatureRow {
            names: names.into(),
            values,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_reads_like_a_map_of_present_values() {
        let mut row: FeatureRow = [("b", 2.0), ("a", 1.0), ("c", f64::NAN)]
            .into_iter()
            .collect();
        assert_eq!(row.get("a"), Some(1.0));
        assert_eq!(row.get("b"), Some(2.0));
        // Present without a value.
        assert_eq!(row.get("c"), None);
        assert_eq!(row.get("zz"), None);
        assert_eq!(row.len(), 2);
        assert_eq!(
            row.entries().collect::<Vec<_>>(),
            [("a", Some(1.0)), ("b", Some(2.0)), ("c", None)]
        );
        assert_eq!(row.insert("b", 5.0), Some(2.0));
        assert_eq!(row.insert("aa", 3.0), None);
        assert_eq!(row.insert("c", 4.0), None);
        assert_eq!(
            row.iter().collect::<Vec<_>>(),
            [("a", 1.0), ("aa", 3.0), ("b", 5.0), ("c", 4.0)]
        );
        assert_eq!(
            format!("{row:?}"),
            r#"{"a": 1.0, "aa": 3.0, "b": 5.0, "c": 4.0}"#
        );
        // Equality is by names with values, whatever the lists.
        let same: FeatureRow = [
            ("c", 4.0),
            ("b", 5.0),
            ("aa", 3.0),
            ("a", 1.0),
            ("d", f64::NAN),
        ]
        .into_iter()
        .collect();
        assert_eq!(row, same);
        assert_ne!(row, FeatureRow::new());
        assert!(FeatureRow::new().is_empty());
    }

    #[test]
    fn parts_must_be_sorted_distinct_and_as_many_as_the_values() {
        let names: FeatureNames = vec!["a".into(), "b".into()].into();
        let row = FeatureRow::from_parts(names.clone(), vec![1.0, 2.0]).unwrap();
        let other = row.sharing_names(vec![3.0, f64::NAN]).unwrap();
        assert!(Arc::ptr_eq(row.names(), other.names()));
        assert_eq!(other.iter().collect::<Vec<_>>(), [("a", 3.0)]);
        assert!(row.sharing_names(vec![1.0]).is_none());
        assert!(FeatureRow::from_parts(names, vec![1.0]).is_none());
        let unsorted: FeatureNames = vec!["b".into(), "a".into()].into();
        assert!(FeatureRow::from_parts(unsorted, vec![1.0, 2.0]).is_none());
        let twice: FeatureNames = vec!["a".into(), "a".into()].into();
        assert!(FeatureRow::from_parts(twice, vec![1.0, 2.0]).is_none());
    }
}
