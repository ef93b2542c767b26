//! From aggregated tree scores to the operator's outputs: base values, post
//! transforms, and the classifier's label and binary layouts, following
//! onnxruntime (the reference implementation users compare against) where
//! the ONNX specification leaves the details open.

use super::compiled::RawScores;
use super::spec::{Aggregate, PostTransform};

/// Logistic function, computed as onnxruntime does (stable for large |x|).
pub fn logistic(x: f32) -> f32 {
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 { 1.0 - v } else { v }
}

/// `erf⁻¹`, with the closed-form approximation onnxruntime uses (Winitzki,
/// a = 0.147), so that PROBIT outputs match it.
fn erf_inv(x: f32) -> f32 {
    let sgn = if x < 0.0 { -1.0f32 } else { 1.0 };
    let y = (1.0 - x) * (1.0 + x);
    let log = y.ln();
    let v = 2.0 / (std::f32::consts::PI * 0.147) + 0.5 * log;
    let v2 = 1.0 / 0.147 * log;
    let v3 = -v + (v * v - v2).sqrt();
    sgn * v3.sqrt()
}

/// Probit: `√2 · erf⁻¹(2p − 1)`.
pub fn probit(p: f32) -> f32 {
    std::f32::consts::SQRT_2 * erf_inv(2.0 * p - 1.0)
}

fn softmax(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    v.iter_mut().for_each(|x| *x /= sum);
}

fn softmax_zero(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::MIN, f32::max);
    let exp_neg_max = (-max).exp();
    let mut sum = 0.0;
    for x in v.iter_mut() {
        if x.abs() > 1e-7 {
            *x = (*x - max).exp();
            sum += *x;
        } else {
            *x *= exp_neg_max;
        }
    }
    v.iter_mut().for_each(|x| *x /= sum);
}

/// Applies a post transform to every score of one row.
pub fn transform_row(post: PostTransform, v: &mut [f32]) {
    match post {
        PostTransform::None => {}
        PostTransform::Logistic => v.iter_mut().for_each(|x| *x = logistic(*x)),
        PostTransform::Probit => v.iter_mut().for_each(|x| *x = probit(*x)),
        PostTransform::Softmax => softmax(v),
        PostTransform::SoftmaxZero => softmax_zero(v),
    }
}

/// Regressor outputs `[rows, n_targets]`.
pub fn regressor(
    raw: &RawScores,
    n_targets: usize,
    aggregate: Aggregate,
    base_values: &[f32],
    post: PostTransform,
) -> Vec<f32> {
    let rows = raw.scores.len() / n_targets.max(1);
    let mut out = vec![0f32; raw.scores.len()];
    let use_base = base_values.len() == n_targets;
    for r in 0..rows {
        let row = &mut out[r * n_targets..(r + 1) * n_targets];
        for (t, cell) in row.iter_mut().enumerate() {
            let i = r * n_targets + t;
            let score = match aggregate {
                // Sum and average start from 0; min and max have no score
                // until a leaf reaches the target.
                Aggregate::Sum | Aggregate::Average => raw.scores[i],
                Aggregate::Min | Aggregate::Max if raw.has[i] => raw.scores[i],
                Aggregate::Min | Aggregate::Max => 0.0,
            };
            let base = if use_base {
                f64::from(base_values[t])
            } else {
                0.0
            };
            *cell = (score + base) as f32;
        }
        if n_targets == 1 {
            // One target: onnxruntime applies PROBIT only.
            if post == PostTransform::Probit {
                row[0] = probit(row[0]);
            }
        } else {
            transform_row(post, row);
        }
    }
    out
}

/// A classifier's label for one row: an index into the class labels, or (a
/// corner of onnxruntime's binary handling) the literal 0/1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// Index into the class labels.
    Index(usize),
    /// The literal positive (1) or negative (0) label.
    Literal(i64),
}

/// What the classifier finaliser needs to know about the ensemble.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierShape {
    /// Number of class labels.
    pub n_classes: usize,
    /// `base_values`, possibly empty.
    pub base_values: Vec<f32>,
    /// Post transform.
    pub post: PostTransform,
    /// Two labels and every leaf weight votes for the same class id.
    pub binary_case: bool,
    /// No leaf weight is negative.
    pub weights_all_positive: bool,
}

/// Classifier outputs: labels `[rows]` and scores `[rows, n_classes]`.
pub fn classifier(raw: &RawScores, c: &ClassifierShape) -> (Vec<Label>, Vec<f32>) {
    let n = c.n_classes;
    let rows = raw.scores.len() / n.max(1);
    let mut labels = Vec::with_capacity(rows);
    let mut out = vec![0f32; rows * n];
    let mut scores: Vec<f32> = Vec::with_capacity(n);
    let mut has: Vec<bool> = Vec::with_capacity(n);
    for r in 0..rows {
        scores.clear();
        has.clear();
        scores.extend(raw.scores[r * n..(r + 1) * n].iter().map(|&s| s as f32));
        has.extend_from_slice(&raw.has[r * n..(r + 1) * n]);
        let row = &mut out[r * n..(r + 1) * n];
        if n > 2 {
            for (k, &b) in c.base_values.iter().enumerate().take(n) {
                if has[k] {
                    scores[k] += b;
                } else {
                    scores[k] = b;
                    has[k] = true;
                }
            }
            let mut best: Option<usize> = None;
            for k in 0..n {
                if has[k] && best.is_none_or(|b| scores[k] > scores[b]) {
                    best = Some(k);
                }
            }
            labels.push(Label::Index(best.unwrap_or(0)));
            transform_row(c.post, &mut scores);
            row.copy_from_slice(&scores);
            continue;
        }
        // Two classes.
        let mut second_class = -1;
        match c.base_values.len() {
            2 => {
                // Both columns are written; a base value is added only to a
                // class that some leaf voted for.
                for k in 0..2 {
                    if has[k] {
                        scores[k] += c.base_values[k];
                    }
                }
            }
            1 => {
                scores[0] += c.base_values[0];
                if !has[1] {
                    scores.truncate(1);
                }
            }
            _ => {
                second_class = 3;
                if !has[1] {
                    scores.truncate(1);
                }
            }
        }
        let pos_weight = if scores.len() == 2 && has[1] {
            scores[1]
        } else if has[0] {
            scores[0]
        } else {
            0.0
        };
        let label = if c.binary_case {
            let (positive, case) = if c.weights_all_positive {
                if pos_weight > 0.5 {
                    (true, 0)
                } else {
                    (false, 1)
                }
            } else if pos_weight > 0.0 {
                (true, 2)
            } else {
                (false, 3)
            };
            second_class = case;
            Label::Index(usize::from(positive))
        } else {
            Label::Literal(i64::from(pos_weight > 0.0))
        };
        labels.push(label);
        if scores.len() == 2 {
            transform_row(c.post, &mut scores);
            row.copy_from_slice(&scores);
        } else {
            let s = scores[0];
            match (c.post, second_class) {
                (PostTransform::Probit, _) => row[0] = probit(s),
                (_, 0 | 1) => {
                    let mut pair = [1.0 - s, s];
                    transform_row(c.post, &mut pair);
                    row.copy_from_slice(&pair);
                }
                (PostTransform::Logistic, 2 | 3) => {
                    row[0] = logistic(-s);
                    row[1] = logistic(s);
                }
                (_, 2 | 3) => {
                    let mut pair = [-s, s];
                    transform_row(c.post, &mut pair);
                    row.copy_from_slice(&pair);
                }
                _ => row[0] = s,
            }
        }
    }
    (labels, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_is_symmetric_and_bounded() {
        for x in [-100.0f32, -3.0, -0.5, 0.0, 0.5, 3.0, 100.0] {
            let (a, b) = (logistic(x), logistic(-x));
            assert!((a + b - 1.0).abs() < 1e-6, "{x}");
            assert!((0.0..=1.0).contains(&a));
        }
        assert_eq!(logistic(0.0), 0.5);
    }

    #[test]
    fn probit_inverts_the_normal_cdf_closely() {
        // Φ⁻¹(0.975) = 1.95996; the approximation is within 2e-3.
        assert!((probit(0.975) - 1.959_964).abs() < 2e-3);
        assert!(probit(0.5).abs() < 1e-6);
        assert!((probit(0.1) + probit(0.9)).abs() < 1e-5);
    }

    #[test]
    fn softmax_zero_keeps_zeros_at_zero() {
        let mut v = [1.0, 0.0, 2.0];
        softmax_zero(&mut v);
        assert_eq!(v[1], 0.0);
        assert!((v[0] + v[2] - 1.0).abs() < 1e-6);
    }
}
