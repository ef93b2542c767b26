//! The native entity API: `GET /v1/predict/{entity_id}` and
//! `POST /v1/predict`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tandem_core::parse_duration;
use tandem_engine::{EntityQuery, Mode, PredictRequest, VersionSpec};

use crate::AppState;
use crate::error::{ApiError, Protocol};
use crate::metrics::SourceLabel;

const P: Protocol = Protocol::Native;

/// Query of `GET /v1/predict/{entity_id}`.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictQuery {
    model: Option<String>,
    version: Option<u64>,
    label: Option<String>,
    mode: Option<String>,
    max_staleness: Option<String>,
    deadline_ms: Option<u64>,
}

/// Body of `POST /v1/predict`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictBody {
    model: Option<String>,
    version: Option<u64>,
    label: Option<String>,
    mode: Option<String>,
    max_staleness: Option<Value>,
    deadline_ms: Option<u64>,
    entities: Vec<EntityItem>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EntityItem {
    Id(String),
    WithContext {
        entity_id: String,
        #[serde(default)]
        context: Option<BTreeMap<String, Value>>,
    },
}

fn version_spec(version: Option<u64>, label: Option<String>) -> Result<VersionSpec, ApiError> {
    match (version, label) {
        (Some(_), Some(_)) => Err(ApiError::invalid(P, "give version or label, not both")),
        (Some(v), None) => Ok(VersionSpec::Number(v)),
        (None, Some(l)) => Ok(VersionSpec::Label(l)),
        (None, None) => Ok(VersionSpec::Latest),
    }
}

fn mode(m: Option<String>) -> Result<Option<Mode>, ApiError> {
    m.map(|m| m.parse::<Mode>().map_err(|e| ApiError::invalid(P, e)))
        .transpose()
}

fn staleness_text(s: &str) -> Result<Duration, ApiError> {
    parse_duration(s).map_err(|e| ApiError::invalid(P, format!("max_staleness: {e}")))
}

fn deadline(ms: Option<u64>) -> Result<Option<Duration>, ApiError> {
    match ms {
        Some(ms) if ms > 600_000 => Err(ApiError::invalid(
            P,
            "deadline_ms must be at most 600000 (10 minutes)",
        )),
        other => Ok(other.map(Duration::from_millis)),
    }
}

/// The query of a `GET /v1/predict/{entity_id}` as the `Query` extractor
/// reads it, without its decoding machinery when every pair is a known
/// key, given once, with a plain value (nothing to percent-decode); `None`
/// for anything else, which the extractor then reads (and refuses with its
/// own message when it must).
pub(crate) fn plain_query(query: Option<&str>) -> Option<PredictQuery> {
    let mut q = PredictQuery::default();
    let Some(query) = query.filter(|s| !s.is_empty()) else {
        return Some(q);
    };
    if query.contains(['%', '+']) {
        return None;
    }
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=')?;
        if value.is_empty() {
            return None;
        }
        let text = |slot: &mut Option<String>| slot.replace(value.to_owned()).is_none();
        let number = |slot: &mut Option<u64>| match value.parse() {
            Ok(n) => slot.replace(n).is_none(),
            Err(_) => false,
        };
        let first = match key {
            "model" => text(&mut q.model),
            "version" => number(&mut q.version),
            "label" => text(&mut q.label),
            "mode" => text(&mut q.mode),
            "max_staleness" => text(&mut q.max_staleness),
            "deadline_ms" => number(&mut q.deadline_ms),
            _ => false,
        };
        if !first {
            return None;
        }
    }
    Some(q)
}

/// `GET /v1/predict/{entity_id}`.
pub async fn get_one(
    State(state): State<AppState>,
    Path(entity): Path<String>,
    query: Result<Query<PredictQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(P, e.body_text()))?;
    let req = PredictRequest {
        model: q.model,
        version: version_spec(q.version, q.label)?,
        entities: vec![EntityQuery {
            entity,
            context: None,
        }],
        mode: mode(q.mode)?,
        max_staleness: q.max_staleness.as_deref().map(staleness_text).transpose()?,
        deadline: deadline(q.deadline_ms)?,
    };
    let mut answers = state
        .engine
        .predict(req)
        .await
        .map_err(|e| ApiError::new(P, e))?;
    match answers.pop() {
        Some(Ok(a)) => {
            let source = a.source.as_str();
            let mut r = one_answer(a);
            r.extensions_mut().insert(SourceLabel(source));
            Ok(r)
        }
        Some(Err(e)) => Err(ApiError::new(P, e)),
        None => Err(ApiError::invalid(P, "no answer")),
    }
}

/// One answer as JSON, written into a buffer of about its size (axum's
/// `Json` starts at 128 bytes and grows, which most answers outgrow).
fn one_answer(a: tandem_engine::Answer) -> Response {
    let mut body = Vec::with_capacity(256);
    match serde_json::to_writer(&mut body, &a) {
        Ok(()) => (
            [(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(_) => Json(a).into_response(),
    }
}

/// `POST /v1/predict`.
pub async fn post_many(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let body: PredictBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(P, format!("invalid request body: {e}")))?;
    let max_staleness = match &body.max_staleness {
        None => None,
        Some(Value::String(s)) => Some(staleness_text(s)?),
        Some(Value::Number(n)) => Some(
            n.as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or_else(|| {
                    ApiError::invalid(P, "max_staleness: must be a non-negative number of seconds")
                })?,
        ),
        Some(_) => {
            return Err(ApiError::invalid(
                P,
                "max_staleness: give seconds or a duration such as \"10m\"",
            ));
        }
    };
    let mut entities = Vec::with_capacity(body.entities.len());
    for item in body.entities {
        entities.push(match item {
            EntityItem::Id(entity) => EntityQuery {
                entity,
                context: None,
            },
            EntityItem::WithContext { entity_id, context } => {
                let context = context
                    .map(|c| {
                        c.into_iter()
                            .map(|(k, v)| match v {
                                Value::Number(n) => n.as_f64().map(|f| (k.clone(), f)).ok_or(k),
                                _ => Err(k),
                            })
                            .collect::<Result<BTreeMap<String, f64>, String>>()
                    })
                    .transpose()
                    .map_err(|k| {
                        ApiError::invalid(
                            P,
                            format!(
                                "context feature '{k}' of entity '{entity_id}' is not a number"
                            ),
                        )
                    })?;
                EntityQuery {
                    entity: entity_id,
                    context,
                }
            }
        });
    }
    let req = PredictRequest {
        model: body.model,
        version: version_spec(body.version, body.label)?,
        entities,
        mode: mode(body.mode)?,
        max_staleness,
        deadline: deadline(body.deadline_ms)?,
    };
    let ids: Vec<String> = req.entities.iter().map(|e| e.entity.clone()).collect();
    let answers = state
        .engine
        .predict(req)
        .await
        .map_err(|e| ApiError::new(P, e))?;
    let mut sources = answers
        .iter()
        .filter_map(|a| a.as_ref().ok().map(|a| a.source));
    let label = match sources.next() {
        None => "none",
        Some(first) if sources.all(|s| s == first) => first.as_str(),
        Some(_) => "mixed",
    };
    let items: Vec<Value> = answers
        .into_iter()
        .zip(ids)
        .map(|(a, id)| match a {
            Ok(a) => serde_json::to_value(a).unwrap_or(Value::Null),
            Err(e) => json!({"entity_id": id, "error": e.to_string(), "error_type": e.kind()}),
        })
        .collect();
    let mut r = Json(json!({ "predictions": items })).into_response();
    r.extensions_mut().insert(SourceLabel(label));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extractor(query: &str) -> Result<PredictQuery, String> {
        let uri: axum::http::Uri = format!("/v1/predict/e1?{query}").parse().unwrap();
        Query::<PredictQuery>::try_from_uri(&uri)
            .map(|Query(q)| q)
            .map_err(|e| e.body_text())
    }

    #[test]
    fn a_plain_query_reads_as_the_extractor_reads_it() {
        let plain = [
            "",
            "mode=realtime_only",
            "model=churn&version=3&deadline_ms=250",
            "label=stable&max_staleness=10m&mode=hybrid",
            "version=007",
            "model=a=b",
        ];
        for q in plain {
            let fast = plain_query(Some(q)).unwrap_or_else(|| panic!("{q:?} is plain"));
            assert_eq!(Ok(fast), extractor(q), "{q:?}");
        }
        assert_eq!(plain_query(None), Some(PredictQuery::default()));
        // Left to the extractor: decoding, repeats, unknown keys, values
        // that are not numbers, empty values and pairs without a value.
        let others = [
            "model=my%20model",
            "model=a+b",
            "mode=hybrid&mode=batch_only",
            "colour=red",
            "version=-1",
            "deadline_ms=1e3",
            "mode=",
            "mode",
            "mode=hybrid&&model=x",
        ];
        for q in others {
            assert_eq!(plain_query(Some(q)), None, "{q:?}");
        }
        assert_eq!(
            extractor("model=my%20model").unwrap().model.as_deref(),
            Some("my model")
        );
        assert!(extractor("mode=hybrid&mode=batch_only").is_err());
        assert!(extractor("colour=red").is_err());
    }
}
