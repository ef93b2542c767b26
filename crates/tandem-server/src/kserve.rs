//! KServe V2 / Open Inference Protocol REST (protocols.md section 2),
//! including the binary tensor extension that `tritonclient` uses by
//! default.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tandem_core::FeatureBatch;
use tandem_engine::{EngineError, Model, OutputData, OutputTensor, VersionSpec};

use crate::AppState;
use crate::error::{ApiError, Protocol};
use crate::json::{parse_relaxed, to_body};
use crate::metrics::SourceLabel;
use crate::tensors::{Flat, flat};

const P: Protocol = Protocol::KServe;
const HEADER_LEN: &str = "inference-header-content-length";

/// `GET /v2`.
pub async fn server_metadata() -> Response {
    axum::Json(json!({
        "name": "tandem",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
    .into_response()
}

/// `GET /v2/health/live`.
pub async fn live() -> Response {
    axum::Json(json!({"live": true})).into_response()
}

/// `GET /v2/health/ready`.
pub async fn ready(State(state): State<AppState>) -> Response {
    match state.engine.ready(Duration::from_secs(1)).await {
        Ok(()) => axum::Json(json!({"ready": true})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"ready": false, "error": e})),
        )
            .into_response(),
    }
}

fn version_of(v: Option<&str>) -> Result<VersionSpec, ApiError> {
    match v {
        None => Ok(VersionSpec::Latest),
        Some(v) => v
            .parse()
            .map(VersionSpec::Number)
            .map_err(|_| ApiError::invalid(P, format!("version '{v}' is not a number"))),
    }
}

fn resolve(
    state: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<std::sync::Arc<Model>, ApiError> {
    let spec = version_of(version)?;
    state
        .engine
        .models()
        .repository()
        .get(model, &spec)
        .map_err(|e| ApiError::new(P, EngineError::from(e)))
}

fn dims(shape: &[Option<usize>]) -> Vec<i64> {
    shape.iter().map(|d| d.map_or(-1, |d| d as i64)).collect()
}

fn model_metadata(
    state: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<Response, ApiError> {
    let m = resolve(state, model, version)?;
    let served = state
        .engine
        .models()
        .served(model)
        .map_err(|e| ApiError::new(P, e))?;
    let meta = m.metadata();
    let tensors = |infos: &[tandem_engine::TensorInfo]| -> Vec<Value> {
        infos
            .iter()
            .map(|i| json!({"name": i.name, "datatype": i.dtype.kserve_name(), "shape": dims(&i.shape)}))
            .collect()
    };
    Ok(axum::Json(json!({
        "name": m.name(),
        "versions": served.versions.keys().map(u64::to_string).collect::<Vec<_>>(),
        "platform": "onnx_onnxv1",
        "inputs": tensors(&meta.inputs),
        "outputs": tensors(&meta.outputs),
    }))
    .into_response())
}

/// `GET /v2/models/{m}`.
pub async fn metadata(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    model_metadata(&state, &model, None)
}

/// `GET /v2/models/{m}/versions/{v}`.
pub async fn metadata_version(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    model_metadata(&state, &model, Some(&version))
}

/// `GET /v2/models/{m}/ready`.
pub async fn model_ready(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    resolve(&state, &model, None)?;
    Ok(axum::Json(json!({"name": model, "ready": true})).into_response())
}

/// `GET /v2/models/{m}/versions/{v}/ready`.
pub async fn model_version_ready(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    resolve(&state, &model, Some(&version))?;
    Ok(axum::Json(json!({"name": model, "ready": true})).into_response())
}

/// `POST /v2/models/{m}/infer`.
pub async fn infer(
    State(state): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    run_infer(&state, &model, None, &headers, &body).await
}

/// `POST /v2/models/{m}/versions/{v}/infer`.
pub async fn infer_version(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    run_infer(&state, &model, Some(&version), &headers, &body).await
}

/// Element size of a binary tensor of `datatype`, and how to read one
/// little-endian element as f32.
type ReadElement = fn(&[u8]) -> f32;

fn binary_reader(datatype: &str) -> Option<(usize, ReadElement)> {
    Some(match datatype {
        "FP32" => (4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        "FP64" => (8, |b| {
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }),
        "INT8" => (1, |b| f32::from(i8::from_le_bytes([b[0]]))),
        "UINT8" | "BOOL" => (1, |b| f32::from(b[0])),
        "INT16" => (2, |b| f32::from(i16::from_le_bytes([b[0], b[1]]))),
        "UINT16" => (2, |b| f32::from(u16::from_le_bytes([b[0], b[1]]))),
        "INT32" => (4, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32),
        "UINT32" => (4, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32),
        "INT64" => (8, |b| {
            i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }),
        "UINT64" => (8, |b| {
            u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }),
        _ => return None,
    })
}

/// An infer request as it is parsed on the fast path: the tensors' `data`
/// flattened straight into numbers ([`Flat`]), the other fields the
/// handler reads kept as values (present, even as `null`, or absent), and
/// fields it does not read skipped, as the value path ignores them.
#[derive(Deserialize)]
struct FastRequest {
    inputs: Vec<FastInput>,
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    outputs: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    parameters: Option<Value>,
}

#[derive(Deserialize)]
struct FastInput {
    #[serde(default)]
    data: Option<Flat>,
    #[serde(default, deserialize_with = "present")]
    name: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    datatype: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    shape: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    parameters: Option<Value>,
}

/// A field that is there, `null` included (`Option<Value>` alone reads
/// `null` as absent, where the value path sees `null`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// An object of the fields that are present.
fn object<const N: usize>(fields: [(&str, Option<Value>); N]) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v?)))
            .collect(),
    )
}

/// The request as a value without its inputs' `data`, and each input's
/// numbers; `None` for anything but plain JSON whose inputs are objects
/// with numeric (possibly nested) `data` (the caller then parses it as a
/// value).
fn fast_request(json: &[u8]) -> Option<(Value, Vec<Option<Vec<f32>>>)> {
    let req: FastRequest = serde_json::from_slice(json).ok()?;
    let mut data = Vec::with_capacity(req.inputs.len());
    let inputs = req
        .inputs
        .into_iter()
        .map(|i| {
            data.push(i.data.map(|Flat(v)| v));
            object([
                ("name", i.name),
                ("datatype", i.datatype),
                ("shape", i.shape),
                ("parameters", i.parameters),
            ])
        })
        .collect();
    let req = object([
        ("inputs", Some(Value::Array(inputs))),
        ("id", req.id),
        ("outputs", req.outputs),
        ("parameters", req.parameters),
    ]);
    Some((req, data))
}

const NUMERIC: &[&str] = &[
    "FP16", "FP32", "FP64", "BF16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
    "UINT64", "BOOL",
];

pub(crate) async fn run_infer(
    state: &AppState,
    model_name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let (json_part, mut binary) = match headers.get(HEADER_LEN) {
        Some(len) => {
            let n: usize = len
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .filter(|&n| n <= body.len())
                .ok_or_else(|| {
                    ApiError::invalid(P, format!("{HEADER_LEN} is not a length within the body"))
                })?;
            (&body[..n], &body[n..])
        }
        None => (body, &[][..]),
    };
    // A well-formed request's tensors are flattened while it is parsed;
    // anything else is parsed again as a value, whose checks below say
    // what is wrong with it.
    let (req, mut parsed_data) = match fast_request(json_part) {
        Some(fast) => fast,
        None => (
            parse_relaxed(json_part).map_err(|e| ApiError::invalid(P, e))?,
            Vec::new(),
        ),
    };
    let req = req
        .as_object()
        .ok_or_else(|| ApiError::invalid(P, "the request body must be a JSON object"))?;
    let model = resolve(state, model_name, version)?;
    let id = req.get("id").cloned();
    if let Some(id) = &id
        && !id.is_string()
    {
        return Err(ApiError::invalid(P, "'id' must be a string"));
    }
    let inputs = req
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid(P, "'inputs' must be a list of tensors"))?;
    let [input] = inputs.as_slice() else {
        return Err(ApiError::invalid(
            P,
            format!(
                "model '{model_name}' has 1 input; the request has {}",
                inputs.len()
            ),
        ));
    };
    let input_name = &model.metadata().inputs[0].name;
    let name = input.get("name").and_then(Value::as_str).unwrap_or("");
    if name != input_name {
        return Err(ApiError::invalid(
            P,
            format!("unexpected input '{name}'; the model's input is '{input_name}'"),
        ));
    }
    let datatype = input.get("datatype").and_then(Value::as_str).unwrap_or("");
    if !NUMERIC.contains(&datatype) {
        return Err(ApiError::invalid(
            P,
            format!(
                "input datatype '{datatype}' is not supported; send FP32 (or another numeric type)"
            ),
        ));
    }
    let shape: Vec<usize> = input
        .get("shape")
        .and_then(Value::as_array)
        .and_then(|s| s.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
        .ok_or_else(|| ApiError::invalid(P, "'shape' must be a list of non-negative integers"))?;
    let count: usize = shape.iter().product();
    let binary_size = input
        .get("parameters")
        .and_then(|p| p.get("binary_data_size"))
        .and_then(Value::as_u64);
    let values: Vec<f32> = match binary_size {
        Some(size) => {
            let size = size as usize;
            let (elem, read) = binary_reader(datatype).ok_or_else(|| {
                ApiError::invalid(
                    P,
                    format!("binary data of datatype {datatype} is not supported"),
                )
            })?;
            if size > binary.len() || size != count * elem {
                return Err(ApiError::invalid(
                    P,
                    format!(
                        "binary_data_size {size} does not match shape {shape:?} of {datatype} (or the body is short)"
                    ),
                ));
            }
            let (mine, rest) = binary.split_at(size);
            binary = rest;
            mine.chunks_exact(elem).map(read).collect()
        }
        None => match parsed_data.first_mut().and_then(Option::take) {
            Some(values) => values,
            None => {
                let data = input
                    .get("data")
                    .ok_or_else(|| ApiError::invalid(P, "input has no 'data'"))?;
                let mut values = Vec::with_capacity(count);
                crate::tensors::flatten(data, &mut values)
                    .map_err(|e| ApiError::invalid(P, format!("data{e}")))?;
                values
            }
        },
    };
    let _ = binary;
    if values.len() != count {
        return Err(ApiError::invalid(
            P,
            format!(
                "shape {shape:?} needs {count} values; 'data' has {}",
                values.len()
            ),
        ));
    }
    let width = model.width();
    let rows_ok = match shape.as_slice() {
        [n, w] => *w == width && *n * width == count,
        [w] => *w == width,
        _ => false,
    };
    if !rows_ok {
        return Err(ApiError::invalid(
            P,
            format!("input shape {shape:?} does not fit the model's [-1, {width}]"),
        ));
    }
    let batch =
        FeatureBatch::new(values, width).map_err(|e| ApiError::invalid(P, e.to_string()))?;
    let params = req.get("parameters").and_then(Value::as_object);
    let deadline = params
        .and_then(|p| p.get("timeout"))
        .and_then(Value::as_u64)
        .map(Duration::from_micros);
    let binary_default = params
        .and_then(|p| p.get("binary_data_output"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // Which outputs, and which of them as binary.
    let wanted: Option<Vec<(String, bool)>> = match req.get("outputs") {
        None => None,
        Some(Value::Array(list)) => Some(
            list.iter()
                .map(|o| {
                    let name = o.get("name").and_then(Value::as_str).ok_or_else(|| {
                        ApiError::invalid(P, "each requested output needs a 'name'")
                    })?;
                    let binary = o
                        .get("parameters")
                        .and_then(|p| p.get("binary_data"))
                        .and_then(Value::as_bool)
                        .unwrap_or(binary_default);
                    Ok((name.to_string(), binary))
                })
                .collect::<Result<_, ApiError>>()?,
        ),
        Some(_) => return Err(ApiError::invalid(P, "'outputs' must be a list")),
    };
    if let Some(w) = &wanted {
        let names: Vec<&str> = model
            .metadata()
            .outputs
            .iter()
            .map(|o| o.name.as_str())
            .collect();
        if let Some((bad, _)) = w.iter().find(|(n, _)| !names.contains(&n.as_str())) {
            return Err(ApiError::invalid(
                P,
                format!("unknown output '{bad}'; outputs: {}", names.join(", ")),
            ));
        }
    }
    let inferred = state
        .engine
        .infer_with(model.clone(), batch, deadline)
        .await
        .map_err(|e| ApiError::new(P, e))?;
    let selected: Vec<(&OutputTensor, bool)> = match &wanted {
        None => inferred
            .outputs
            .iter()
            .map(|t| (t, binary_default))
            .collect(),
        Some(w) => w
            .iter()
            .filter_map(|(n, b)| {
                inferred
                    .outputs
                    .iter()
                    .find(|t| &t.name == n)
                    .map(|t| (t, *b))
            })
            .collect(),
    };
    let mut blobs: Vec<u8> = Vec::new();
    let outputs: Vec<Value> = selected
        .iter()
        .map(|(t, binary)| {
            let (datatype, bytes): (&str, Option<Vec<u8>>) = match &t.data {
                OutputData::F32(v) => (
                    "FP32",
                    binary.then(|| v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                ),
                OutputData::I64(v) => (
                    "INT64",
                    binary.then(|| v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                ),
                OutputData::String(v) => (
                    "BYTES",
                    binary.then(|| {
                        v.iter()
                            .flat_map(|s| {
                                let mut b = (s.len() as u32).to_le_bytes().to_vec();
                                b.extend_from_slice(s.as_bytes());
                                b
                            })
                            .collect()
                    }),
                ),
            };
            let mut o = Map::new();
            o.insert("name".into(), json!(t.name));
            o.insert("datatype".into(), json!(datatype));
            o.insert("shape".into(), json!(t.shape));
            match bytes {
                Some(b) => {
                    o.insert("parameters".into(), json!({"binary_data_size": b.len()}));
                    blobs.extend_from_slice(&b);
                }
                None => {
                    o.insert("data".into(), flat(t));
                }
            }
            Value::Object(o)
        })
        .collect();
    let mut resp = Map::new();
    resp.insert("model_name".into(), json!(model.name()));
    resp.insert("model_version".into(), json!(model.version().to_string()));
    if let Some(id) = id {
        resp.insert("id".into(), id);
    }
    resp.insert("outputs".into(), Value::Array(outputs));
    let header_json = to_body(&Value::Object(resp));
    if blobs.is_empty() {
        let mut r = ([(header::CONTENT_TYPE, "application/json")], header_json).into_response();
        r.extensions_mut().insert(SourceLabel("realtime"));
        return Ok(r);
    }
    let len = header_json.len();
    let mut full = header_json.into_bytes();
    full.extend_from_slice(&blobs);
    let mut r = ([(header::CONTENT_TYPE, "application/octet-stream")], full).into_response();
    r.extensions_mut().insert(SourceLabel("realtime"));
    r.headers_mut().insert(
        HEADER_LEN,
        HeaderValue::from_str(&len.to_string()).unwrap_or(HeaderValue::from_static("0")),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the handler reads of a request parsed as a value: the fields
    /// it looks at, each input without its `data`, and the inputs' numbers.
    fn read_fields(body: &str) -> (Value, Vec<Option<Vec<f32>>>) {
        let v = parse_relaxed(body.as_bytes()).unwrap();
        let keep = |o: &Map<String, Value>, keys: &[&str]| -> Map<String, Value> {
            o.iter()
                .filter(|(k, _)| keys.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let o = v.as_object().unwrap();
        let mut data = Vec::new();
        let mut out = keep(o, &["id", "outputs", "parameters"]);
        let inputs = o["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let i = i.as_object().unwrap();
                data.push(i.get("data").map(|d| {
                    let mut values = Vec::new();
                    crate::tensors::flatten(d, &mut values).unwrap();
                    values
                }));
                Value::Object(keep(i, &["name", "datatype", "shape", "parameters"]))
            })
            .collect();
        out.insert("inputs".into(), Value::Array(inputs));
        (Value::Object(out), data)
    }

    #[test]
    fn fast_parse_reads_what_the_value_parse_reads() {
        let accepted = [
            r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2.5,-3e-2]}]}"#,
            r#"{"id":"r1","inputs":[{"name":"input","shape":[2,2],"datatype":"FP64","data":[[1,2],[3,4]]}],"outputs":[{"name":"variable"}],"parameters":{"timeout":5}}"#,
            // `null` fields stay `null` (the handler refuses a `null` id).
            r#"{"id":null,"inputs":[{"name":null,"shape":null,"datatype":"FP32","data":[1]}],"parameters":null}"#,
            // Fields the handler does not read are dropped on both paths.
            r#"{"extra":{"a":[1,2]},"inputs":[{"name":"input","shape":[1],"datatype":"INT32","data":[7],"other":true}]}"#,
            // No data (binary tensors), and a wrongly typed id.
            r#"{"id":5,"inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#,
            r#"{"inputs":[]}"#,
        ];
        for body in accepted {
            let fast = fast_request(body.as_bytes()).unwrap_or_else(|| panic!("refused {body}"));
            assert_eq!(fast, read_fields(body), "{body}");
        }
        let refused = [
            r#"{"inputs":[{"name":"input","shape":[1],"datatype":"FP32","data":[NaN]}]}"#,
            r#"{"inputs":[{"name":"input","shape":[1],"datatype":"FP32","data":["x"]}]}"#,
            r#"{"inputs":[{"name":"input","shape":[2],"datatype":"FP32","data":[[1],2]}]}"#,
            r#"{"inputs":[5]}"#,
            r#"{"inputs":{"name":"input"}}"#,
            r#"{"id":"a","id":"b","inputs":[]}"#,
            r#"[1,2]"#,
            r#"{"inputs":[{"data":[1]}]"#,
        ];
        for body in refused {
            assert!(fast_request(body.as_bytes()).is_none(), "{body}");
        }
    }
}
