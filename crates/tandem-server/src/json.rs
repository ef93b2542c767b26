//! JSON in and out, the way TF Serving clients write it: bare `NaN`,
//! `Infinity` and `-Infinity` are accepted in requests and written in
//! responses.

use serde_json::Value;

/// Marker strings standing for non-finite numbers inside a [`Value`].
pub const NAN: &str = "NaN";
/// See [`NAN`].
pub const INF: &str = "Infinity";
/// See [`NAN`].
pub const NEG_INF: &str = "-Infinity";

/// Parses a request body, turning bare `NaN`/`Infinity`/`-Infinity` tokens
/// (outside strings) into the strings `"NaN"`, ... which [`as_f64`] reads
/// back as numbers.
pub fn parse_relaxed(body: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
    let parsed = if text.contains("NaN") || text.contains("Infinity") {
        serde_json::from_str(&quote_non_finite(text))
    } else {
        serde_json::from_str(text)
    };
    parsed.map_err(|e| format!("malformed JSON: {e}"))
}

fn quote_non_finite(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 16);
    let mut i = 0;
    let mut in_string = false;
    let mut start = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        let rest = &text[i..];
        let token = [NEG_INF, INF, NAN]
            .into_iter()
            .find(|t| rest.starts_with(t));
        if let Some(t) = token {
            out.push_str(&text[start..i]);
            out.push('"');
            out.push_str(t);
            out.push('"');
            i += t.len();
            start = i;
            continue;
        }
        i += 1;
    }
    out.push_str(&text[start..]);
    out
}

/// A number of a request: a JSON number or one of the non-finite markers.
pub fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if s == NAN => Some(f64::NAN),
        Value::String(s) if s == INF => Some(f64::INFINITY),
        Value::String(s) if s == NEG_INF => Some(f64::NEG_INFINITY),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// A float for a response: a number, or a non-finite marker that
/// [`to_body`] writes as a bare token.
pub fn number(v: f64) -> Value {
    if v.is_finite() {
        serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
    } else if v.is_nan() {
        Value::String(format!("\u{1}{NAN}"))
    } else if v > 0.0 {
        Value::String(format!("\u{1}{INF}"))
    } else {
        Value::String(format!("\u{1}{NEG_INF}"))
    }
}

/// Serializes a response, writing the markers of [`number`] as bare
/// `NaN`/`Infinity`/`-Infinity`.
pub fn to_body(v: &Value) -> String {
    // Into a byte buffer, not through `Display`'s formatter adapter.
    let text = serde_json::to_string(v).unwrap_or_default();
    if !text.contains("\\u0001") {
        return text;
    }
    text.replace("\"\\u0001NaN\"", "NaN")
        .replace("\"\\u0001-Infinity\"", "-Infinity")
        .replace("\"\\u0001Infinity\"", "Infinity")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_tokens_round_trip_but_strings_stay_strings() {
        let v = parse_relaxed(
            br#"{"instances": [[NaN, Infinity, -Infinity, 1.5]], "s": "NaN is Infinity"}"#,
        )
        .unwrap();
        let row: Vec<f64> = v["instances"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| as_f64(x).unwrap())
            .collect();
        assert!(row[0].is_nan());
        assert_eq!(&row[1..], [f64::INFINITY, f64::NEG_INFINITY, 1.5]);
        assert_eq!(v["s"], "NaN is Infinity");
        let out = serde_json::json!({"p": [number(f64::NAN), number(f64::NEG_INFINITY), number(2.0)], "s": "NaN"});
        assert_eq!(to_body(&out), r#"{"p":[NaN,-Infinity,2.0],"s":"NaN"}"#);
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        assert!(parse_relaxed(b"{\"instances\": [").is_err());
        assert!(parse_relaxed(b"\xff\xfe").is_err());
        assert!(parse_relaxed(b"NaN").is_ok());
    }
}
