//! The two error boundaries a client sees: the whole batch refused (`BatchError`, the outer status) and one
//! part failed (`PartError`, that part's status inside a 200). Each variant maps to one status and a message
//! a user can act on; both render as `{"error":{"code":..,"message":..}}` so that every client can read them.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, StatusCode};

use crate::codec::json::JsonError;
use crate::fields::MaskError;
use crate::route::RouteError;
use batchgate_wire::{ContentTypeError, FramingError, RequestError};

/// A part's field mask cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FieldsError {
    #[error(transparent)]
    Malformed(#[from] MaskError),
    #[error("the target names `fields` more than once; give one mask")]
    Repeated,
    #[error("the {0} is not UTF-8 once percent-decoded")]
    NotUtf8(&'static str),
}

/// Whose fault a failure was: decides how it is logged and counted, and whether a retry can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The batch or part as sent is wrong; sending it again will fail again.
    Client,
    /// The upstream failed or was too slow.
    Upstream,
    /// The gateway itself is out of capacity or broken.
    Gateway,
}

impl Fault {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Upstream => "upstream",
            Fault::Gateway => "gateway",
        }
    }
}

/// The whole batch is refused: the client gets this status instead of a multipart reply.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BatchError {
    #[error("no endpoint at {0:?}; the batch endpoint is {1:?}")]
    NotFound(String, String),
    #[error("method {0} is not allowed on the batch endpoint; use POST")]
    MethodNotAllowed(http::Method),
    #[error(
        "the batch has no Content-Type; send multipart/mixed; boundary=... or application/json"
    )]
    NoContentType,
    #[error(transparent)]
    ContentType(#[from] ContentTypeError),
    #[error(transparent)]
    Framing(#[from] FramingError),
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error("too many parts in the batch (limits.max_parts). Received: {received}, Limit: {limit}")]
    TooManyParts { received: usize, limit: usize },
    #[error(
        "the batch body is larger than limits.max_batch_bytes. Received: {received} bytes or more, Limit: {limit}"
    )]
    TooLarge { received: u64, limit: u64 },
    #[error("duplicate Content-ID {0:?} in the batch; each part needs its own id")]
    DuplicateContentId(String),
    #[error("reading the batch body failed: {0}")]
    BodyRead(String),
    #[error(
        "the client sent nothing for {0:?} in the middle of the body (limits.body_read_timeout)"
    )]
    SlowClient(Duration),
    #[error(
        "the batch body did not arrive within {0:?} (limits.upload_timeout); no part with side effects was run"
    )]
    UploadTimeout(Duration),
    #[error("the gateway is serving its limit of {0} batches (limits.max_batches); retry shortly")]
    Overloaded(usize),
}

impl BatchError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            BatchError::NotFound(..) => StatusCode::NOT_FOUND,
            BatchError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            BatchError::NoContentType
            | BatchError::ContentType(ContentTypeError::NotMultipart(_)) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            BatchError::ContentType(_) => StatusCode::BAD_REQUEST,
            BatchError::Framing(FramingError::PartTooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            BatchError::Framing(_) => StatusCode::BAD_REQUEST,
            BatchError::Json(error) => error.status(),
            BatchError::TooManyParts { .. } | BatchError::TooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            BatchError::DuplicateContentId(_) | BatchError::BodyRead(_) => StatusCode::BAD_REQUEST,
            BatchError::SlowClient(_) | BatchError::UploadTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            BatchError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The JSON error body: for a JSON batch's fault, also where it is (`"offset"` or `"path"`).
    pub(crate) fn body(&self) -> Bytes {
        let at = match self {
            BatchError::Json(error) => error.location(),
            _ => None,
        };
        error_body_at(self.status(), &self.to_string(), None, at)
    }

    pub(crate) fn fault(&self) -> Fault {
        match self {
            BatchError::Overloaded(_) => Fault::Gateway,
            _ => Fault::Client,
        }
    }
}

/// One part failed; the others are unaffected. The reply part carries this status and message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PartError {
    #[error("part {index}: {source}")]
    Request { index: usize, source: RequestError },
    #[error("part {index}: {source}")]
    Route { index: usize, source: RouteError },
    #[error("part {index}: its body is itself a multipart batch; batches do not nest")]
    NestedBody { index: usize },
    #[error("part {index}: upstream {upstream} is unreachable: {reason}")]
    Connect {
        index: usize,
        upstream: String,
        reason: String,
    },
    #[error("part {index}: upstream {upstream} closed the connection before answering: {reason}")]
    NoResponse {
        index: usize,
        upstream: String,
        reason: String,
    },
    #[error("part {index}: upstream {upstream} failed: {reason}")]
    Upstream {
        index: usize,
        upstream: String,
        reason: String,
    },
    #[error(
        "part {index}: upstream {upstream} answered {status} as a final response; a part cannot switch protocols"
    )]
    Informational {
        index: usize,
        upstream: String,
        status: StatusCode,
    },
    #[error("part {index}: upstream {upstream} sent a body the gateway cannot pass on: {reason}")]
    Decode {
        index: usize,
        upstream: String,
        reason: String,
    },
    #[error("part {index}: upstream {upstream} did not answer within {after:?} ({key})")]
    Timeout {
        index: usize,
        upstream: String,
        after: Duration,
        /// The key whose time ran out (`routes[2].timeout`, `limits.part_timeout`), or a try's share of it.
        key: String,
    },
    #[error(
        "part {index}: upstream {upstream} response is larger than limits.max_response_bytes = {limit}"
    )]
    ResponseTooLarge {
        index: usize,
        upstream: String,
        limit: u64,
    },
    #[error("part {index}: the batch's responses passed limits.max_batch_response_bytes = {limit}")]
    BatchResponseBudget { index: usize, limit: u64 },
    #[error("part {index}: the batch ran out of time (limits.batch_timeout = {after:?})")]
    BatchDeadline { index: usize, after: Duration },
    #[error(
        "part {index}: this client is over its rate limit (rate_limit.parts_per_second); retry after {retry_after:?}"
    )]
    RateLimited { index: usize, retry_after: Duration },
    #[error("part {index}: {source}")]
    Fields { index: usize, source: FieldsError },
    #[error(
        "part {index}: not sent: part {dependency}, which it depends on (dependsOn), answered {status}"
    )]
    FailedDependency {
        index: usize,
        dependency: usize,
        status: u16,
    },
    #[error("part {index}: internal error: {reason}")]
    Internal { index: usize, reason: String },
}

impl PartError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            PartError::Request { .. } | PartError::NestedBody { .. } | PartError::Fields { .. } => {
                StatusCode::BAD_REQUEST
            }
            PartError::Route {
                source: RouteError::NoRoute(_),
                ..
            } => StatusCode::NOT_FOUND,
            PartError::Route { .. } => StatusCode::BAD_REQUEST,
            PartError::Connect { .. }
            | PartError::NoResponse { .. }
            | PartError::Upstream { .. }
            | PartError::Informational { .. }
            | PartError::Decode { .. }
            | PartError::ResponseTooLarge { .. }
            | PartError::BatchResponseBudget { .. } => StatusCode::BAD_GATEWAY,
            PartError::Timeout { .. } | PartError::BatchDeadline { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            PartError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            PartError::FailedDependency { .. } => StatusCode::FAILED_DEPENDENCY,
            PartError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(crate) fn fault(&self) -> Fault {
        match self {
            PartError::Request { .. }
            | PartError::Route { .. }
            | PartError::NestedBody { .. }
            | PartError::Fields { .. }
            | PartError::RateLimited { .. }
            | PartError::FailedDependency { .. } => Fault::Client,
            PartError::Connect { .. }
            | PartError::NoResponse { .. }
            | PartError::Upstream { .. }
            | PartError::Informational { .. }
            | PartError::Decode { .. }
            | PartError::Timeout { .. }
            | PartError::ResponseTooLarge { .. } => Fault::Upstream,
            PartError::BatchResponseBudget { .. }
            | PartError::BatchDeadline { .. }
            | PartError::Internal { .. } => Fault::Gateway,
        }
    }

    /// Whether sending the same part again might succeed.
    pub(crate) fn retryable(&self) -> bool {
        matches!(
            self,
            PartError::Connect { .. }
                | PartError::NoResponse { .. }
                | PartError::Timeout { .. }
                | PartError::BatchDeadline { .. }
        )
    }

    /// How long the client should wait before sending the part again, when the gateway knows.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            PartError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// A short name for logs and metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            PartError::Request { .. } => "bad_request",
            PartError::Route {
                source: RouteError::NoRoute(_),
                ..
            } => "no_route",
            PartError::Route { .. } => "refused_target",
            PartError::NestedBody { .. } => "nested_batch",
            PartError::Connect { .. } => "connect",
            PartError::NoResponse { .. } => "reset",
            PartError::Upstream { .. } => "upstream",
            PartError::Informational { .. } => "informational",
            PartError::Decode { .. } => "decode",
            PartError::Timeout { .. } => "timeout",
            PartError::ResponseTooLarge { .. } => "response_too_large",
            PartError::BatchResponseBudget { .. } => "batch_response_budget",
            PartError::BatchDeadline { .. } => "batch_deadline",
            PartError::RateLimited { .. } => "rate_limited",
            PartError::Fields { .. } => "bad_fields",
            PartError::FailedDependency { .. } => "failed_dependency",
            PartError::Internal { .. } => "internal",
        }
    }

    fn index(&self) -> usize {
        match self {
            PartError::Request { index, .. }
            | PartError::Route { index, .. }
            | PartError::NestedBody { index }
            | PartError::Connect { index, .. }
            | PartError::NoResponse { index, .. }
            | PartError::Upstream { index, .. }
            | PartError::Informational { index, .. }
            | PartError::Decode { index, .. }
            | PartError::Timeout { index, .. }
            | PartError::ResponseTooLarge { index, .. }
            | PartError::BatchResponseBudget { index, .. }
            | PartError::BatchDeadline { index, .. }
            | PartError::RateLimited { index, .. }
            | PartError::Fields { index, .. }
            | PartError::FailedDependency { index, .. }
            | PartError::Internal { index, .. } => *index,
        }
    }

    /// The headers of the error's answer: its JSON type, and `Retry-After` when the gateway knows when.
    pub(crate) fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(2);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(wait) = self.retry_after() {
            // Whole seconds, rounded up: Retry-After has no fractions.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        headers
    }

    /// The JSON body of the error part.
    pub(crate) fn body(&self) -> Bytes {
        error_body(
            self.status(),
            &self.to_string(),
            Some((self.index(), self.fault())),
        )
    }
}

/// The body of every error the gateway answers itself: `{"error":{"code":N,"message":"..."}}`, with
/// `"part":i,"fault":"..."` for a part's error.
pub(crate) fn error_body(status: StatusCode, message: &str, part: Option<(usize, Fault)>) -> Bytes {
    error_body_at(status, message, part, None)
}

/// [`error_body`], with where in the batch's body the fault is.
fn error_body_at(
    status: StatusCode,
    message: &str,
    part: Option<(usize, Fault)>,
    at: Option<(&'static str, serde_json::Value)>,
) -> Bytes {
    let mut error = serde_json::json!({ "code": status.as_u16(), "message": message });
    if let Some((index, fault)) = part {
        error["part"] = index.into();
        error["fault"] = fault.as_str().into();
    }
    if let Some((key, value)) = at {
        error[key] = value;
    }
    Bytes::from(serde_json::json!({ "error": error }).to_string())
}
