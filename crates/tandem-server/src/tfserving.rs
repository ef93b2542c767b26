//! TensorFlow Serving's REST API (protocols.md section 1):
//! `/v1/models/{m}[/versions/{v}|/labels/{l}]` status, `/metadata`, and
//! `:predict` (`:classify` and `:regress` answer 501).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tandem_core::FeatureBatch;
use tandem_engine::{EngineError, Model, OutputTensor, VersionSpec};

use crate::AppState;
use crate::error::{ApiError, Protocol};
use crate::json::{parse_relaxed, to_body};
use crate::metrics::SourceLabel;
use crate::tensors::{flatten, nested};

const P: Protocol = Protocol::TfServing;

/// What a `/v1/models/...` path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Model name.
    pub model: String,
    /// Version or label.
    pub version: VersionSpec,
    /// The verb after `:` or the `/metadata` suffix.
    pub action: Action,
}

/// The operation a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `GET` model status.
    Status,
    /// `GET .../metadata`.
    Metadata,
    /// `POST ...:predict`.
    Predict,
    /// `POST ...:classify`.
    Classify,
    /// `POST ...:regress`.
    Regress,
}

/// Parses the part of the path after `/v1/models/` (keywords are
/// case-insensitive, as in TF Serving).
pub fn parse_path(rest: &str) -> Result<Target, String> {
    let (path, verb) = match rest.rsplit_once(':') {
        Some((p, v)) => (p, Some(v.to_ascii_lowercase())),
        None => (rest, None),
    };
    let mut parts: Vec<&str> = path.split('/').collect();
    if parts.last() == Some(&"") {
        parts.pop();
    }
    let mut action = match verb.as_deref() {
        None => Action::Status,
        Some("predict") => Action::Predict,
        Some("classify") => Action::Classify,
        Some("regress") => Action::Regress,
        Some(other) => return Err(format!("unknown method ':{other}'")),
    };
    if verb.is_none() && parts.len() > 1 && parts[parts.len() - 1].eq_ignore_ascii_case("metadata")
    {
        parts.pop();
        action = Action::Metadata;
    }
    let model = match parts.first() {
        Some(m) if !m.is_empty() => (*m).to_string(),
        _ => return Err("Missing model name in request.".into()),
    };
    let version = match &parts[1..] {
        [] => VersionSpec::Latest,
        [kind, v] if kind.eq_ignore_ascii_case("versions") => VersionSpec::Number(
            v.parse()
                .map_err(|_| format!("version '{v}' is not a non-negative integer"))?,
        ),
        [kind, l] if kind.eq_ignore_ascii_case("labels") => {
            if l.is_empty() || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("label '{l}' must match [a-zA-Z0-9_]+"));
            }
            VersionSpec::Label((*l).to_string())
        }
        _ => return Err(format!("malformed request path: /v1/models/{rest}")),
    };
    Ok(Target {
        model,
        version,
        action,
    })
}

/// `GET /v1/models` and `/v1/models/`.
pub async fn missing_name() -> ApiError {
    ApiError::invalid(P, "Missing model name in request.")
}

/// Every `/v1/models/{*rest}` request.
pub async fn dispatch(
    State(state): State<AppState>,
    method: Method,
    Path(rest): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let target = parse_path(&rest).map_err(|e| ApiError::invalid(P, e))?;
    match (method.clone(), target.action) {
        (Method::GET, Action::Status) => status(&state, &target),
        (Method::GET, Action::Metadata) => metadata(&state, &target),
        (Method::POST, Action::Predict) => predict(&state, &target, &body).await,
        (Method::POST, Action::Classify | Action::Regress) => Ok((
            StatusCode::NOT_IMPLEMENTED,
            axum::Json(
                json!({"error": "only :predict is implemented; :classify and :regress are not"}),
            ),
        )
            .into_response()),
        (m, a) => Ok((
            StatusCode::METHOD_NOT_ALLOWED,
            axum::Json(json!({"error": format!("{m} is not allowed for {a:?}")})),
        )
            .into_response()),
    }
}

fn resolve(state: &AppState, t: &Target) -> Result<std::sync::Arc<Model>, ApiError> {
    state
        .engine
        .models()
        .repository()
        .get(&t.model, &t.version)
        .map_err(|e| ApiError::new(P, EngineError::from(e)))
}

fn status(state: &AppState, t: &Target) -> Result<Response, ApiError> {
    let served = state
        .engine
        .models()
        .served(&t.model)
        .map_err(|e| ApiError::new(P, e))?;
    let versions: Vec<u64> = match &t.version {
        VersionSpec::Latest => served.versions.keys().rev().copied().collect(),
        _ => vec![resolve(state, t)?.version()],
    };
    let list: Vec<Value> = versions
        .iter()
        .map(|v| {
            json!({
                "version": v.to_string(),
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""}
            })
        })
        .collect();
    Ok(axum::Json(json!({ "model_version_status": list })).into_response())
}

fn tensor_info(info: &tandem_engine::TensorInfo) -> Value {
    let dims: Vec<Value> = info
        .shape
        .iter()
        .map(|d| json!({"size": d.map_or(-1, |d| d as i64).to_string(), "name": ""}))
        .collect();
    json!({
        "dtype": info.dtype.tf_name(),
        "tensor_shape": {"dim": dims, "unknown_rank": false},
        "name": info.name,
    })
}

fn metadata(state: &AppState, t: &Target) -> Result<Response, ApiError> {
    let model = resolve(state, t)?;
    let meta = model.metadata();
    let map = |infos: &[tandem_engine::TensorInfo]| -> Map<String, Value> {
        infos
            .iter()
            .map(|i| (i.name.clone(), tensor_info(i)))
            .collect()
    };
    Ok(axum::Json(json!({
        "model_spec": {
            "name": model.name(),
            "signature_name": "",
            "version": model.version().to_string(),
        },
        "metadata": {"signature_def": {
            "signature_def": {"serving_default": {
                "inputs": map(&meta.inputs),
                "outputs": map(&meta.outputs),
                "method_name": "tensorflow/serving/predict",
            }},
        }},
    }))
    .into_response())
}

/// Row (`instances`) or columnar (`inputs`) request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Row,
    Columnar,
}

fn input_rows(v: &Value, model: &Model) -> Result<(FeatureBatch, Format), String> {
    let obj = v
        .as_object()
        .ok_or("the request body must be a JSON object")?;
    if let Some(sig) = obj.get("signature_name") {
        match sig.as_str() {
            Some("" | "serving_default") => {}
            _ => {
                return Err(format!(
                    "Serving signature name: {sig} not found in signature def"
                ));
            }
        }
    }
    let input_name = &model.metadata().inputs[0].name;
    let width = model.width();
    let (tensor, format) = match (obj.get("instances"), obj.get("inputs")) {
        (Some(_), Some(_)) => {
            return Err(
                "use either 'instances' (row format) or 'inputs' (columnar), not both".into(),
            );
        }
        (None, None) => return Err("Missing 'inputs' or 'instances' key".into()),
        (Some(instances), None) => {
            let items = instances.as_array().ok_or("'instances' must be a list")?;
            let rows: Vec<Value> = items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::Object(named) => named
                        .get(input_name)
                        .cloned()
                        .filter(|_| named.len() == 1)
                        .ok_or_else(|| {
                            format!("instance {i} must name the one input '{input_name}'")
                        }),
                    Value::Array(_) => Ok(item.clone()),
                    scalar if width == 1 => Ok(Value::Array(vec![scalar.clone()])),
                    other => Err(format!(
                        "instance {i} is {other}, not a list of {width} numbers"
                    )),
                })
                .collect::<Result<_, _>>()?;
            (Value::Array(rows), Format::Row)
        }
        (None, Some(inputs)) => match inputs {
            Value::Object(named) => (
                named
                    .get(input_name)
                    .cloned()
                    .filter(|_| named.len() == 1)
                    .ok_or_else(|| format!("'inputs' must name the one input '{input_name}'"))?,
                Format::Columnar,
            ),
            other => (other.clone(), Format::Columnar),
        },
    };
    let mut values = Vec::new();
    let shape = flatten(&tensor, &mut values).map_err(|e| format!("input{e}"))?;
    let rows_width = match shape.as_slice() {
        [n, w] => (*n, *w),
        [w] if format == Format::Columnar => (1, *w),
        _ => {
            return Err(format!(
                "input has shape {shape:?}; the model takes rows of {width} numbers ([N, {width}])"
            ));
        }
    };
    if rows_width.1 != width {
        return Err(format!(
            "each row must have {width} numbers; got {}",
            rows_width.1
        ));
    }
    let batch = FeatureBatch::new(values, width).map_err(|e| e.to_string())?;
    Ok((batch, format))
}

async fn predict(state: &AppState, t: &Target, body: &[u8]) -> Result<Response, ApiError> {
    let v = parse_relaxed(body).map_err(|e| ApiError::invalid(P, e))?;
    let model = resolve(state, t)?;
    let (batch, format) = input_rows(&v, &model).map_err(|e| ApiError::invalid(P, e))?;
    let rows = batch.rows();
    let inferred = state
        .engine
        .infer_with(model.clone(), batch, None)
        .await
        .map_err(|e| ApiError::new(P, e))?;
    let outputs: &[OutputTensor] = &inferred.outputs;
    let out = match format {
        Format::Row => {
            let preds: Vec<Value> = (0..rows)
                .map(|r| match outputs {
                    [one] => nested(one, Some(r)),
                    many => Value::Object(
                        many.iter()
                            .map(|o| (o.name.clone(), nested(o, Some(r))))
                            .collect(),
                    ),
                })
                .collect();
            json!({ "predictions": preds })
        }
        Format::Columnar => match outputs {
            [one] => json!({ "outputs": nested(one, None) }),
            many => json!({ "outputs": Value::Object(
                many.iter().map(|o| (o.name.clone(), nested(o, None))).collect()
            )}),
        },
    };
    let mut r = ([(header::CONTENT_TYPE, "application/json")], to_body(&out)).into_response();
    r.extensions_mut().insert(SourceLabel("realtime"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_like_tf_serving() {
        let t = parse_path("iris/versions/3:predict").unwrap();
        assert_eq!(t.model, "iris");
        assert_eq!(t.version, VersionSpec::Number(3));
        assert_eq!(t.action, Action::Predict);
        let t = parse_path("iris/LABELS/stable/Metadata").unwrap();
        assert_eq!(t.version, VersionSpec::Label("stable".into()));
        assert_eq!(t.action, Action::Metadata);
        assert_eq!(parse_path("iris").unwrap().action, Action::Status);
        assert_eq!(parse_path("iris:PREDICT").unwrap().action, Action::Predict);
        assert_eq!(parse_path("iris:regress").unwrap().action, Action::Regress);
        assert!(parse_path("iris/labels/bad-label").is_err());
        assert!(parse_path("iris/versions/x").is_err());
        assert!(parse_path("iris:explain").is_err());
        assert_eq!(
            parse_path("").unwrap_err(),
            "Missing model name in request."
        );
    }
}
