//! Errors as HTTP responses: the bus's stable code, a safe message, and the
//! status that fits.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bus_schema::{ErrorCode, WireError};

pub struct ApiError(pub WireError);

impl From<WireError> for ApiError {
    fn from(e: WireError) -> Self {
        Self(e)
    }
}

/// A query string that does not parse is the caller's error, in the same
/// JSON shape as every other (axum's own rejection is plain text).
impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        Self(WireError::new(ErrorCode::InvalidRequest, e.body_text()))
    }
}

pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Malformed
        | ErrorCode::InvalidRequest
        | ErrorCode::InvalidId
        | ErrorCode::InvalidDuration => StatusCode::BAD_REQUEST,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Ended => StatusCode::GONE,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::NoCapacity | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::SourceFailed => StatusCode::BAD_GATEWAY,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.0 });
        (status_of(self.0.code), Json(body)).into_response()
    }
}
