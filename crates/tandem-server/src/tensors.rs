//! Nested JSON arrays to and from row-major tensors, shared by the TF
//! Serving and KServe adapters.

use serde_json::Value;
use tandem_engine::{OutputData, OutputTensor};

use crate::json::{as_f64, number};

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
                    Some(s) if *s == shape => {}
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
