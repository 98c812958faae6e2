//! JSON batch replies (`{"responses":[{"id","status","headers","body"}]}`, Microsoft Graph and OData 4.01):
//! each response's body decoded by its content type (a JSON value, a string for `text/*`, base64url or
//! base64 otherwise).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::ClientError;
use super::PartResponse;
use super::batch::BodyEncoding;
use batchgate_wire::ContentId;

/// Whether a reply's `Content-Type` is JSON.
pub(crate) fn is_json(content_type: &str) -> bool {
    BodyEncoding::of(content_type) == BodyEncoding::Json
}

#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(borrow)]
    responses: Vec<Response<'a>>,
}

#[derive(Deserialize)]
struct Response<'a> {
    id: String,
    status: u16,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    #[serde(borrow, default)]
    body: Option<&'a RawValue>,
}

/// The parts of a whole JSON reply, each placed by `place` (from its id) among the batch's requests.
pub(crate) fn parse_reply(
    body: &[u8],
    mut place: impl FnMut(Option<&ContentId>) -> Result<usize, String>,
) -> Result<Vec<PartResponse>, ClientError> {
    let malformed = |offset: u64, reason: String| ClientError::MalformedReply { offset, reason };
    let reply: Reply<'_> = serde_json::from_slice(body).map_err(|e| {
        let offset = offset_of(body, e.line(), e.column());
        malformed(offset, format!("the JSON reply: {e}"))
    })?;
    let end = body.len() as u64;
    let mut parts = Vec::with_capacity(reply.responses.len());
    for (position, response) in reply.responses.into_iter().enumerate() {
        let at = |reason: String| malformed(end, format!("responses[{position}]: {reason}"));
        let status = StatusCode::from_u16(response.status).map_err(|e| at(e.to_string()))?;
        let mut headers = HeaderMap::with_capacity(response.headers.len());
        for (name, value) in &response.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| at(e.to_string()))?;
            let value = HeaderValue::from_str(value).map_err(|e| at(e.to_string()))?;
            headers.append(name, value);
        }
        let body = match response.body {
            None => Bytes::new(),
            Some(raw) => decode_body(raw, &headers).map_err(at)?,
        };
        let id = ContentId::new(response.id, false);
        let index = place(Some(&id)).map_err(|reason| malformed(end, reason))?;
        parts.push(PartResponse {
            index,
            content_id: Some(id),
            raw_content_id: None,
            status,
            headers,
            body,
        });
    }
    Ok(parts)
}

fn decode_body(raw: &RawValue, headers: &HeaderMap) -> Result<Bytes, String> {
    if raw.get() == "null" {
        return Ok(Bytes::new());
    }
    let encoding = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map_or(BodyEncoding::Base64, BodyEncoding::of);
    let text = serde_json::from_str::<String>(raw.get());
    match (encoding, text) {
        // A JSON value, as the bytes it was written with.
        (BodyEncoding::Json, _) => Ok(Bytes::copy_from_slice(raw.get().as_bytes())),
        (BodyEncoding::Text, Ok(text)) => Ok(Bytes::from(text)),
        (_, Ok(text)) => {
            let text = text.trim_end_matches('=');
            URL_SAFE_NO_PAD
                .decode(text)
                .or_else(|_| STANDARD_NO_PAD.decode(text))
                .map(Bytes::from)
                .map_err(|e| format!("the body is not base64url: {e}"))
        }
        // Not a string where one was due (a JSON value without a JSON type): its text.
        (_, Err(_)) => Ok(Bytes::copy_from_slice(raw.get().as_bytes())),
    }
}

/// The byte offset of serde_json's 1-based line and column.
fn offset_of(body: &[u8], line: usize, column: usize) -> u64 {
    let mut at = 0usize;
    for _ in 1..line {
        match body[at..].iter().position(|&b| b == b'\n') {
            Some(newline) => at += newline + 1,
            None => break,
        }
    }
    (at + column.saturating_sub(1)).min(body.len()) as u64
}
