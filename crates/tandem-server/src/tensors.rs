//! Nested JSON arrays to and from row-major tensors, shared by the TF
//! Serving and KServe adapters.

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::Value;
use tandem_engine::{OutputData, OutputTensor};

use crate::json::{INF, NAN, NEG_INF, as_f64, number};

/// Flattens a (possibly nested) JSON array of numbers into `out`, returning
/// its shape. Ragged arrays and non-numbers are errors naming the position.
pub fn flatten(v: &Value, out: &mut Vec<f32>) -> Result<Vec<usize>, String> {
    match v {
        Value::Array(items) => {
            let mut inner: Option<Vec<usize>> = None;
            for (i, item) in items.iter().enumerate() {
                let shape = flatten(item, out).map_err(|e| format!("[{i}]{e}"))?;
                match &inner {
                    None => inner = Some(shape),
                    Some(s) if same_shape(s, &shape) => {}
                    Some(s) => {
                        return Err(format!("[{i}]: ragged array (shape {shape:?} after {s:?})"));
                    }
                }
            }
            let mut shape = vec![items.len()];
            shape.extend(inner.unwrap_or_default());
            Ok(shape)
        }
        other => match as_f64(other) {
            Some(x) => {
                out.push(x as f32);
                Ok(vec![])
            }
            None => Err(format!(": {other} is not a number")),
        },
    }
}

/// `a == b` for two shapes, without calling `memcmp` when both are empty
/// (every number's shape). An empty `Vec`'s pointer is dangling (`0x8`),
/// and glibc's AVX-512 `memcmp` reads it under an all-zero mask: legal, but
/// Intel cores then take a microcode assist for the masked read of an
/// unmapped page, hundreds of cycles. That was 9 % of the server's CPU
/// under KServe inference on an Intel Xeon (one comparison per number).
fn same_shape(a: &[usize], b: &[usize]) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

/// A (possibly nested) JSON array of numbers flattened while it is parsed,
/// without a [`Value`] per number: what [`flatten`] gives from the parsed
/// value, for the inputs it accepts. Anything it refuses (a ragged array,
/// a value that is not a number) fails to deserialize, so that the caller
/// can parse the request again as a value and report it as [`flatten`]
/// does.
#[derive(Debug, PartialEq)]
pub struct Flat(pub Vec<f32>);

impl<'de> Deserialize<'de> for Flat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = Vec::new();
        Level(&mut out).deserialize(d)?;
        Ok(Flat(out))
    }
}

/// One level of a nested array: its shape, its numbers appended.
struct Level<'a>(&'a mut Vec<f32>);

impl<'de> DeserializeSeed<'de> for Level<'_> {
    type Value = Vec<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<usize>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Level<'_> {
    type Value = Vec<usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a number or a nested array of numbers")
    }

    // The conversions of `as_f64`, then to f32, as `flatten` makes them.
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Vec<usize>, E> {
        self.0.push(f32::from(u8::from(v)));
        Ok(Vec::new())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Vec<usize>, E> {
        self.0.push(v as f64 as f32);
        Ok(Vec::new())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Vec<usize>, E> {
        self.0.push(v as f64 as f32);
        Ok(Vec::new())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Vec<usize>, E> {
        self.0.push(v as f32);
        Ok(Vec::new())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<usize>, E> {
        let x = match v {
            NAN => f32::NAN,
            INF => f32::INFINITY,
            NEG_INF => f32::NEG_INFINITY,
            _ => return Err(E::custom("not a number")),
        };
        self.0.push(x);
        Ok(Vec::new())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<usize>, A::Error> {
        let out = self.0;
        let mut inner: Option<Vec<usize>> = None;
        let mut n = 0usize;
        while let Some(shape) = seq.next_element_seed(Level(&mut *out))? {
            match &inner {
                None => inner = Some(shape),
                Some(s) if same_shape(s, &shape) => {}
                Some(_) => return Err(de::Error::custom("ragged array")),
            }
            n += 1;
        }
        let mut shape = vec![n];
        shape.extend(inner.unwrap_or_default());
        Ok(shape)
    }
}

/// The JSON value of `count` consecutive rows of `t` starting at `row`
/// (`None`: the whole tensor), nested by the tensor's shape.
pub fn nested(t: &OutputTensor, row: Option<usize>) -> Value {
    let (dims, start): (&[usize], usize) = match row {
        Some(r) => {
            let per: usize = t.shape.iter().skip(1).product();
            (&t.shape[t.shape.len().min(1)..], r * per)
        }
        None => (&t.shape[..], 0),
    };
    build(&t.data, dims, start).0
}

fn scalar(data: &OutputData, i: usize) -> Value {
    match data {
        OutputData::F32(v) => v.get(i).map_or(Value::Null, |x| number(short(*x))),
        OutputData::I64(v) => v.get(i).map_or(Value::Null, |x| Value::from(*x)),
        OutputData::String(v) => v.get(i).map_or(Value::Null, |x| Value::from(x.clone())),
    }
}

/// An f32 as the f64 with the same shortest decimal form (`0.1f32` is
/// written `0.1`, not `0.10000000149011612`).
pub fn short(x: f32) -> f64 {
    if !x.is_finite() {
        return f64::from(x);
    }
    x.to_string().parse().unwrap_or(f64::from(x))
}

fn build(data: &OutputData, dims: &[usize], at: usize) -> (Value, usize) {
    match dims.split_first() {
        None => (scalar(data, at), at + 1),
        Some((&n, rest)) => {
            let mut items = Vec::with_capacity(n);
            let mut at = at;
            for _ in 0..n {
                let (v, next) = build(data, rest, at);
                items.push(v);
                at = next;
            }
            (Value::Array(items), at)
        }
    }
}

/// Every value of a tensor as a flat JSON array.
pub fn flat(t: &OutputTensor) -> Value {
    let n = match &t.data {
        OutputData::F32(v) => v.len(),
        OutputData::I64(v) => v.len(),
        OutputData::String(v) => v.len(),
    };
    Value::Array((0..n).map(|i| scalar(&t.data, i)).collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn shapes_compare_as_slices_do() {
        let shapes: [&[usize]; 6] = [&[], &[0], &[1], &[2], &[2, 3], &[2, 4]];
        for a in shapes {
            for b in shapes {
                assert_eq!(same_shape(a, b), a == b, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn flatten_checks_shape_and_types() {
        let mut out = vec![];
        assert_eq!(
            flatten(&json!([[1, 2], [3, 4.5]]), &mut out).unwrap(),
            [2, 2]
        );
        assert_eq!(out, [1.0, 2.0, 3.0, 4.5]);
        assert!(
            flatten(&json!([[1, 2], [3]]), &mut vec![])
                .unwrap_err()
                .contains("ragged")
        );
        assert!(
            flatten(&json!([[1, "x"]]), &mut vec![])
                .unwrap_err()
                .contains("[0][1]")
        );
    }

    #[test]
    fn flat_parses_what_flatten_accepts_and_refuses_the_rest() {
        let accepted = [
            "[[1, 2], [3, 4.5]]",
            "[1, -2, 18446744073709551615, 0.1, true, false]",
            r#"["NaN", "Infinity", "-Infinity", 1e300]"#,
            "[[[1], [2]], [[3], [4]]]",
            "[]",
            "[[], []]",
            "7",
        ];
        for text in accepted {
            let value: Value = serde_json::from_str(text).unwrap();
            let mut want = vec![];
            flatten(&value, &mut want).unwrap();
            let Flat(got) = serde_json::from_str(text).unwrap();
            assert_eq!(got.len(), want.len(), "{text}");
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                    "{text}"
                );
            }
        }
        for text in [
            "[[1, 2], [3]]",
            r#"[[1, "x"]]"#,
            "[1, null]",
            "[[1], 2]",
            r#"{"a": 1}"#,
            "[1, [2]]",
        ] {
            let value: Value = serde_json::from_str(text).unwrap();
            assert!(flatten(&value, &mut vec![]).is_err(), "{text}");
            assert!(serde_json::from_str::<Flat>(text).is_err(), "{text}");
        }
    }

    #[test]
    fn nesting_follows_the_shape() {
        let t = OutputTensor {
            name: "p".into(),
            shape: vec![2, 2],
            data: OutputData::F32(vec![0.25, 0.75, 0.5, 0.5]),
        };
        assert_eq!(nested(&t, None), json!([[0.25, 0.75], [0.5, 0.5]]));
        assert_eq!(nested(&t, Some(1)), json!([0.5, 0.5]));
        let labels = OutputTensor {
            name: "l".into(),
            shape: vec![2],
            data: OutputData::I64(vec![1, 0]),
        };
        assert_eq!(nested(&labels, Some(1)), json!(0));
        assert_eq!(flat(&t), json!([0.25, 0.75, 0.5, 0.5]));
    }
}
