//! The one error type of the web API: every failure becomes an HTTP status and a JSON body
//! `{"error": "…"}`, worded as the CLI words it.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use br_store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    /// What the store said: unknown session or task (404), refused transition or retry (409),
    /// busy (503)…
    Store(StoreError),
    /// The request itself is wrong (a bad query parameter).
    BadRequest(String),
    /// No such endpoint.
    NotFound(String),
    /// The request does not carry the server's token.
    Unauthorized(String),
    /// The request may not be made this way (cross-site, or for a host this server does not
    /// answer).
    Forbidden(String),
    /// The server is at a limit it keeps on purpose (too many live streams).
    Unavailable(String),
    /// The server could not do its job for a reason that is not the store's.
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Store(e) => match e {
                StoreError::NoSuchSession(_)
                | StoreError::NoSuchTask { .. }
                | StoreError::NoSuchWorker(_) => StatusCode::NOT_FOUND,
                StoreError::AmbiguousSession { .. } => StatusCode::BAD_REQUEST,
                StoreError::Transition(_) | StoreError::Retry(_) => StatusCode::CONFLICT,
                StoreError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message, with the store error's causes as the CLI's `caused by:` lines would give
    /// them.
    pub fn message(&self) -> String {
        match self {
            ApiError::Store(e) => {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(e);
                while let Some(cause) = source {
                    text.push_str(": ");
                    text.push_str(&cause.to_string());
                    source = cause.source();
                }
                text
            }
            ApiError::BadRequest(m)
            | ApiError::NotFound(m)
            | ApiError::Unauthorized(m)
            | ApiError::Unavailable(m)
            | ApiError::Forbidden(m)
            | ApiError::Internal(m) => m.clone(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::Store(e)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status(),
            Json(serde_json::json!({ "error": self.message() })),
        )
            .into_response();
        if matches!(self, ApiError::Unauthorized(_)) {
            // What RFC 6750 asks of a 401: say which scheme would do.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
