//! The OpenAPI 3.1 document of every route, served at `/openapi.json`.

use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Every documented path template (also checked against the router by the
/// integration tests).
pub fn document_value() -> Value {
    let err = json!({"$ref": "#/components/responses/Error"});
    let answer = json!({"$ref": "#/components/schemas/Answer"});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tandem",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Batch and real-time ML predictions: a native entity API with the hybrid policy, TensorFlow Serving REST and KServe V2 REST."
        },
        "paths": {
            "/v1/predict/{entity_id}": {"get": {
                "summary": "Prediction for one entity under the hybrid policy",
                "parameters": [
                    {"name": "entity_id", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "model", "in": "query", "schema": {"type": "string"}},
                    {"name": "version", "in": "query", "schema": {"type": "integer"}},
                    {"name": "label", "in": "query", "schema": {"type": "string"}},
                    {"name": "mode", "in": "query", "schema": {"enum": ["hybrid", "batch_only", "realtime_only"]}},
                    {"name": "max_staleness", "in": "query", "schema": {"type": "string", "examples": ["10m", "3600"]}},
                    {"name": "deadline_ms", "in": "query", "schema": {"type": "integer"}}
                ],
                "responses": {"200": {"description": "The answer", "content": {"application/json": {"schema": answer}}},
                              "400": err, "404": err, "429": err, "503": err}
            }},
            "/v1/predict": {"post": {
                "summary": "Predictions for many entities, with optional context features",
                "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}}},
                "responses": {"200": {"description": "One item per entity: an answer or an error", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"predictions": {"type": "array", "items": {"oneOf": [answer, {"$ref": "#/components/schemas/EntityError"}]}}}}}}},
                              "400": err, "404": err, "413": {"description": "Body too large"}, "429": err}
            }},
            "/v1/models/{model}": {"get": {"summary": "TF Serving model status (also /versions/{v}, /labels/{l})", "parameters": [{"name": "model", "in": "path", "required": true, "schema": {"type": "string"}}], "responses": {"200": {"description": "model_version_status"}, "404": err}}},
            "/v1/models/{model}/metadata": {"get": {"summary": "TF Serving signature metadata", "parameters": [{"name": "model", "in": "path", "required": true, "schema": {"type": "string"}}], "responses": {"200": {"description": "model_spec and signature_def"}, "404": err}}},
            "/v1/models/{model}:predict": {"post": {"summary": "TF Serving predict (instances or inputs); also /versions/{v}:predict and /labels/{l}:predict", "parameters": [{"name": "model", "in": "path", "required": true, "schema": {"type": "string"}}], "responses": {"200": {"description": "predictions or outputs"}, "400": err, "404": err, "429": err}}},
            "/v2": {"get": {"summary": "KServe server metadata", "responses": {"200": {"description": "name, version, extensions"}}}},
            "/v2/health/live": {"get": {"summary": "KServe liveness", "responses": {"200": {"description": "live"}}}},
            "/v2/health/ready": {"get": {"summary": "KServe readiness", "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/v2/models/{model}": {"get": {"summary": "KServe model metadata", "parameters": [{"name": "model", "in": "path", "required": true, "schema": {"type": "string"}}], "responses": {"200": {"description": "metadata"}, "404": err}}},
            "/v2/models/{model}/ready": {"get": {"summary": "KServe model readiness", "parameters": [{"name": "model", "in": "path", "required": true, "schema": {"type": "string"}}], "responses": {"200": {"description": "ready"}, "404": err}}},
            "/v2/models/{model}/infer": {"post": {"summary": "KServe inference (JSON or the binary tensor extension)", "parameters": [{"name": "model", "in": "path", "required": true, "schema": {"type": "string"}}], "responses": {"200": {"description": "outputs"}, "400": err, "404": err, "429": err, "504": err}}},
            "/v2/models/{model}/versions/{version}": {"get": {"summary": "KServe model version metadata", "responses": {"200": {"description": "metadata"}, "404": err}}},
            "/v2/models/{model}/versions/{version}/ready": {"get": {"summary": "KServe model version readiness", "responses": {"200": {"description": "ready"}, "404": err}}},
            "/v2/models/{model}/versions/{version}/infer": {"post": {"summary": "KServe inference on a version", "responses": {"200": {"description": "outputs"}, "400": err, "404": err}}},
            "/livez": {"get": {"summary": "Liveness: 200 once started", "responses": {"200": {"description": "live"}}}},
            "/readyz": {"get": {"summary": "Readiness: models loaded and warmed, store answering", "responses": {"200": {"description": "ready"}, "503": {"description": "not ready, with the reason"}}}},
            "/v1/stats": {"get": {"summary": "Requests, latency percentiles (recent window and since start), error rate, throughput, source mix, hit rates per tier, health, queue, models", "responses": {"200": {"description": "stats"}}}},
            "/v1/sla": {"get": {"summary": "Each service-level target (p99 latency, availability, error rate), the actual value over the window, met or not, and the margin", "responses": {"200": {"description": "sla"}}}},
            "/metrics": {"get": {"summary": "Prometheus exposition (histograms with explicit buckets)", "responses": {"200": {"description": "text/plain; version=0.0.4"}}}},
            "/": {"get": {"summary": "The live dashboard (HTML, assets embedded)", "responses": {"200": {"description": "text/html"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}}
        },
        "components": {
            "responses": {"Error": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}, "error_type": {"type": "string"}}},
                "EntityError": {"type": "object", "properties": {"entity_id": {"type": "string"}, "error": {"type": "string"}, "error_type": {"type": "string"}}},
                "Answer": {"type": "object", "required": ["entity_id", "prediction", "source", "model", "version", "computed_at", "age_ms", "warnings"], "properties": {
                    "entity_id": {"type": "string"},
                    "prediction": {"type": "number"},
                    "values": {"type": "array", "items": {"type": "number"}},
                    "source": {"enum": ["memory", "store", "realtime", "stale", "default"]},
                    "model": {"type": "string"},
                    "version": {"type": "integer"},
                    "computed_at": {"type": "number", "description": "Unix seconds"},
                    "age_ms": {"type": "integer"},
                    "warnings": {"type": "array", "items": {"type": "string"}}
                }},
                "PredictRequest": {"type": "object", "required": ["entities"], "properties": {
                    "model": {"type": "string"}, "version": {"type": "integer"}, "label": {"type": "string"},
                    "mode": {"enum": ["hybrid", "batch_only", "realtime_only"]},
                    "max_staleness": {"oneOf": [{"type": "string"}, {"type": "number"}]},
                    "deadline_ms": {"type": "integer"},
                    "entities": {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "object", "required": ["entity_id"], "properties": {"entity_id": {"type": "string"}, "context": {"type": "object", "additionalProperties": {"type": "number"}}}}]}}
                }}
            }
        }
    })
}

/// `GET /openapi.json`.
pub async fn document() -> Response {
    axum::Json(document_value()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_api_lists_every_route() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/api.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let v = document_value();
        let mut missing = Vec::new();
        for (route, ops) in v["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                let heading = format!("### `{} {route}`", method.to_uppercase());
                let mut codes: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
                codes.sort();
                let statuses = format!(
                    "Statuses: {}.",
                    codes
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                // The heading, then (first thing after it) the statuses.
                let found = doc
                    .split("\n### ")
                    .find(|sec| sec.starts_with(&heading[4..]))
                    .is_some_and(|sec| sec.lines().nth(2) == Some(statuses.as_str()));
                if !found {
                    missing.push(format!("{heading} / {statuses}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "docs/api.md lacks:\n{}",
            missing.join("\n")
        );
    }
}
