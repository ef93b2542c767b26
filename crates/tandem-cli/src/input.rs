//! Reading feature rows from CSV or JSON files for `tandem models predict`.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

/// Rows read from a file: an optional id per row (from an `entity_id` or
/// `id` column/key) and the feature values in model order.
#[derive(Debug, Default)]
pub struct Rows {
    pub ids: Vec<Option<String>>,
    pub values: Vec<Vec<f32>>,
}

const ID_KEYS: [&str; 2] = ["entity_id", "id"];

fn parse_number(s: &str) -> Option<f32> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("nan") || s.eq_ignore_ascii_case("null") {
        return Some(f32::NAN);
    }
    s.parse::<f32>().ok()
}

/// Reads CSV (with a header) or JSON, choosing by extension (`.json`,
/// `.jsonl`/`.ndjson`, anything else is CSV).
pub fn read(path: &Path, names: &[String], width: usize) -> anyhow::Result<Rows> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    match ext.as_str() {
        "json" => {
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", path.display()))?;
            let items = match v {
                Value::Array(a) => a,
                Value::Object(mut o) => match o.remove("instances") {
                    Some(Value::Array(a)) => a,
                    _ => bail!(
                        "{}: expected an array of rows or {{\"instances\": [...]}}",
                        path.display()
                    ),
                },
                _ => bail!("{}: expected an array of rows", path.display()),
            };
            json_rows(items.iter(), names, width)
        }
        "jsonl" | "ndjson" => {
            let items = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .enumerate()
                .map(|(i, l)| {
                    serde_json::from_str::<Value>(l)
                        .with_context(|| format!("line {}: invalid JSON", i + 1))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            json_rows(items.iter(), names, width)
        }
        _ => csv_rows(&text, names, width),
    }
}

fn json_value(v: &Value, row: usize, col: &str) -> anyhow::Result<f32> {
    match v {
        Value::Number(n) => Ok(n.as_f64().unwrap_or(f64::NAN) as f32),
        Value::Null => Ok(f32::NAN),
        Value::String(s) => {
            parse_number(s).with_context(|| format!("row {row}, {col}: '{s}' is not a number"))
        }
        other => bail!("row {row}, {col}: {other} is not a number"),
    }
}

fn json_rows<'a>(
    items: impl Iterator<Item = &'a Value>,
    names: &[String],
    width: usize,
) -> anyhow::Result<Rows> {
    let mut rows = Rows::default();
    for (i, item) in items.enumerate() {
        let row = i + 1;
        match item {
            Value::Array(a) => {
                if a.len() != width {
                    bail!("row {row} has {} values, the model takes {width}", a.len());
                }
                let vals = a
                    .iter()
                    .enumerate()
                    .map(|(j, v)| json_value(v, row, &format!("column {j}")))
                    .collect::<anyhow::Result<_>>()?;
                rows.ids.push(None);
                rows.values.push(vals);
            }
            Value::Object(o) => {
                if names.is_empty() {
                    bail!(
                        "row {row} is an object, but the model has no feature names (add [features] names to its sidecar, or send arrays)"
                    );
                }
                let vals = names
                    .iter()
                    .map(|n| match o.get(n) {
                        Some(v) => json_value(v, row, n),
                        None => bail!("row {row} has no feature '{n}'"),
                    })
                    .collect::<anyhow::Result<_>>()?;
                let id = ID_KEYS.iter().find_map(|k| o.get(*k)).map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
                rows.ids.push(id);
                rows.values.push(vals);
            }
            other => bail!("row {row}: expected an array or an object, got {other}"),
        }
    }
    Ok(rows)
}

fn csv_rows(text: &str, names: &[String], width: usize) -> anyhow::Result<Rows> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .context("cannot read the CSV header")?
        .iter()
        .map(str::to_string)
        .collect();
    let id_col = header.iter().position(|h| ID_KEYS.contains(&h.as_str()));
    let columns: Vec<usize> = if names.is_empty() {
        let cols: Vec<usize> = (0..header.len()).filter(|&c| Some(c) != id_col).collect();
        if cols.len() != width {
            bail!(
                "the CSV has {} feature columns ({}), the model takes {width}",
                cols.len(),
                cols.iter()
                    .map(|&c| header[c].as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        cols
    } else {
        names
            .iter()
            .map(|n| {
                header.iter().position(|h| h == n).with_context(|| {
                    format!(
                        "the CSV has no column '{n}' (columns: {})",
                        header.join(", ")
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut rows = Rows::default();
    for (i, record) in reader.records().enumerate() {
        let row = i + 1;
        let record = record.with_context(|| format!("CSV row {row}"))?;
        let vals = columns
            .iter()
            .map(|&c| {
                let cell = record.get(c).unwrap_or("");
                parse_number(cell).with_context(|| {
                    format!(
                        "row {row}, column '{}': '{cell}' is not a number",
                        header[c]
                    )
                })
            })
            .collect::<anyhow::Result<Vec<f32>>>()?;
        rows.ids
            .push(id_col.and_then(|c| record.get(c)).map(str::to_string));
        rows.values.push(vals);
    }
    Ok(rows)
}
