//! Engine errors as HTTP answers: one status mapping, three body shapes
//! (the native API's, TF Serving's and KServe's).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tandem_engine::EngineError;

/// Which protocol's error body to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `{"error": ..., "error_type": ...}`.
    Native,
    /// TF Serving: `{"error": ...}`.
    TfServing,
    /// KServe V2: `{"error": ...}`.
    KServe,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// Body shape.
    pub protocol: Protocol,
    /// The error.
    pub error: EngineError,
}

impl ApiError {
    /// Wraps an engine error for `protocol`.
    pub fn new(protocol: Protocol, error: EngineError) -> ApiError {
        ApiError { protocol, error }
    }

    /// A 400 for a malformed request.
    pub fn invalid(protocol: Protocol, message: impl Into<String>) -> ApiError {
        ApiError::new(protocol, EngineError::InvalidInput(message.into()))
    }
}

/// The HTTP status of an engine error; the one place it is decided.
pub fn status_of(e: &EngineError) -> StatusCode {
    match e {
        EngineError::InvalidInput(_) | EngineError::NoSchema(_) => StatusCode::BAD_REQUEST,
        EngineError::UnknownModel(_)
        | EngineError::UnknownVersion(_)
        | EngineError::UnknownEntity(_) => StatusCode::NOT_FOUND,
        EngineError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
        EngineError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
        EngineError::Model(_) => StatusCode::INTERNAL_SERVER_ERROR,
        EngineError::StoreUnavailable(_)
        | EngineError::NoPrediction { .. }
        | EngineError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(&self.error);
        // Failures inside the engine are counted where they happen; the
        // caller's own mistakes are counted here.
        if let reason @ ("invalid_input" | "not_found") =
            tandem_engine::telemetry::reason(&self.error)
        {
            tandem_engine::telemetry::error(reason);
        }
        let message = self.error.to_string();
        let body = match self.protocol {
            Protocol::Native => json!({"error": message, "error_type": self.error.kind()}),
            Protocol::TfServing | Protocol::KServe => json!({"error": message}),
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if matches!(
            self.error,
            EngineError::Overloaded { .. } | EngineError::ShuttingDown
        ) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
