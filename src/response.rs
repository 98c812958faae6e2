//! Responses the gateway writes itself: the reply body type, and JSON errors for refused batches.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use crate::error::BatchError;

/// Why a reply body broke off (the client sees a truncated reply, never a falsely complete one).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body of every response the gateway writes.
pub type ReplyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A JSON error response for a refused batch.
pub fn error_response(error: &BatchError) -> Response<ReplyBody> {
    let mut response = Response::new(full(error.body()));
    *response.status_mut() = error.status();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if matches!(error, BatchError::MethodNotAllowed(_)) {
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
    }
    if error.status() == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> ReplyBody {
    BodyExt::boxed_unsync(http_body_util::Full::new(bytes.into()).map_err(|never| match never {}))
}
