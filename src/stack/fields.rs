//! Field masks on a route's answers (`fields = true`): the part's `fields=` parameter, or else the batch's
//! `X-Fields` header, is taken off what goes upstream, and the JSON answer is cut down to what it selects
//! (`crate::fields`). Sits above where a cache goes, so that a cache holds whole answers and each caller gets
//! its own cut; built only on routes that enable it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, ETAG};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tower::{Layer, Service};

use super::{PartRequest, UpstreamResponse};
use crate::error::{FieldsError, PartError};
use crate::fields::{Mask, filter};
use crate::headers::X_FIELDS;
use batchgate_wire::Framing;

/// Digests of the body as the upstream sent it: wrong once it is cut, so they go.
const BODY_DIGESTS: [HeaderName; 4] = [
    HeaderName::from_static("content-digest"),
    HeaderName::from_static("repr-digest"),
    HeaderName::from_static("digest"),
    HeaderName::from_static("content-md5"),
];

#[derive(Debug, Clone)]
pub(crate) struct FieldsLayer;

impl<S> Layer<S> for FieldsLayer {
    type Service = Fields<S>;

    fn layer(&self, inner: S) -> Fields<S> {
        Fields { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Fields<S> {
    inner: S,
}

impl<S> Service<PartRequest> for Fields<S>
where
    S: Service<PartRequest, Response = UpstreamResponse, Error = PartError>,
{
    type Response = UpstreamResponse;
    type Error = PartError;
    type Future = FieldsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PartError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: PartRequest) -> Self::Future {
        match take_mask(&mut request) {
            Ok(mask) => FieldsFuture::Call {
                call: self.inner.call(request),
                mask,
            },
            Err(source) => FieldsFuture::Refused {
                error: Some(PartError::Fields {
                    index: request.index,
                    source,
                }),
            },
        }
    }
}

/// The part's mask, taken off the request: its target's `fields=` (the rest of the target kept byte for
/// byte), else the batch's `X-Fields`; `None` when neither names one (or the one named is empty).
fn take_mask(request: &mut PartRequest) -> Result<Option<Mask>, FieldsError> {
    // Inherited from the batch (or the part's own): the gateway's header, not the upstream's.
    request.headers.remove(X_FIELDS);
    let text = match strip_fields(request.path.as_str())? {
        Some((value, path)) => {
            let text = percent_decode(value).ok_or(FieldsError::NotUtf8("fields parameter"));
            if let Ok(path) = path.parse() {
                request.path = path;
            }
            text?
        }
        None => match request.batch.headers.fields() {
            Some(value) => std::str::from_utf8(value.as_bytes())
                .map_err(|_| FieldsError::NotUtf8("X-Fields header"))?
                .to_owned(),
            None => return Ok(None),
        },
    };
    Ok(Mask::parse(&text)?)
}

/// The raw value of the target's one `fields` parameter and the target without it, or `None` if it has none.
fn strip_fields(target: &str) -> Result<Option<(&str, String)>, FieldsError> {
    let Some((path, query)) = target.split_once('?') else {
        return Ok(None);
    };
    let mut value = None;
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("fields", _) if value.is_some() => return Err(FieldsError::Repeated),
            ("fields", found) => value = Some(found),
            _ => kept.push(pair),
        }
    }
    Ok(value.map(|value| {
        let rest = kept.join("&");
        let target = if rest.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{rest}")
        };
        (value, target)
    }))
}

/// `%XX` escapes decoded (a `%` not followed by two hex digits is kept as it is); `None` if not UTF-8.
pub(crate) fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) if hex(hi).is_some() && hex(lo).is_some() => {
                out.push((hex(hi)? * 16 + hex(lo)?) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

pin_project_lite::pin_project! {
    /// The inner call, its answer cut down to the mask; or the part's refusal, for a mask that cannot be used.
    #[project = FieldsProjection]
    pub(crate) enum FieldsFuture<F> {
        Refused { error: Option<PartError> },
        Call {
            #[pin]
            call: F,
            mask: Option<Mask>,
        },
    }
}

impl<F> Future for FieldsFuture<F>
where
    F: Future<Output = Result<UpstreamResponse, PartError>>,
{
    type Output = Result<UpstreamResponse, PartError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            FieldsProjection::Refused { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
            FieldsProjection::Call { call, mask } => {
                let mut response = ready!(call.poll(cx))?;
                if let Some(mask) = mask {
                    cut(&mut response, mask);
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}

/// Cuts a successful JSON answer down to `mask`; any other answer is left as it is.
fn cut(response: &mut UpstreamResponse, mask: &Mask) {
    let encoded = response
        .headers
        .get(CONTENT_ENCODING)
        .is_some_and(|coding| !coding.as_bytes().eq_ignore_ascii_case(b"identity"));
    if !response.status.is_success()
        || response.status == StatusCode::PARTIAL_CONTENT
        || response.framing != Framing::Exact
        || encoded
        || !is_json(&response.headers)
    {
        return;
    }
    let body = match response.body.as_slice() {
        [one] => one.clone(),
        pieces => {
            let mut whole = BytesMut::with_capacity(pieces.iter().map(Bytes::len).sum());
            for piece in pieces {
                whole.extend_from_slice(piece);
            }
            whole.freeze()
        }
    };
    let Some(cut) = filter(&body, mask) else {
        return;
    };
    response.body_len = cut.len() as u64;
    response.body = vec![Bytes::from(cut)];
    for digest in &BODY_DIGESTS {
        response.headers.remove(digest);
    }
    // Another body, the same resource: a strong validator would promise byte equality with the whole one.
    if let Some(etag) = response.headers.get(ETAG)
        && !etag.as_bytes().starts_with(b"W/")
    {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(etag.as_bytes());
        if let Ok(weak) = HeaderValue::from_bytes(&weak) {
            response.headers.insert(ETAG, weak);
        }
    }
}

/// `application/json` or any `+json` type, whatever its parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence.split_once('/').is_some_and(|(_, sub)| {
            sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case("+json")
        })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::stack::tests::{answer, part_request};

    #[test]
    fn the_fields_parameter_comes_off_and_the_rest_stays_byte_for_byte() {
        let strip = |t| strip_fields(t).unwrap();
        assert_eq!(strip("/a?fields=x"), Some(("x", "/a".to_owned())));
        assert_eq!(
            strip("/a?b=1&fields=items(id)&c=%2F&&d"),
            Some(("items(id)", "/a?b=1&c=%2F&&d".to_owned()))
        );
        assert_eq!(strip("/a?fields=&b"), Some(("", "/a?b".to_owned())));
        assert_eq!(strip("/a?fields"), Some(("", "/a".to_owned())));
        assert_eq!(strip("/a?myfields=1&fieldsx=2"), None);
        assert_eq!(strip("/a"), None);
        assert!(matches!(
            strip_fields("/a?fields=a&fields=b"),
            Err(FieldsError::Repeated)
        ));
        assert_eq!(percent_decode("a%28b%2Cc%29%2x%").unwrap(), "a(b,c)%2x%");
        assert_eq!(percent_decode("%C3%A9").unwrap(), "é");
        assert_eq!(percent_decode("%FF"), None);
    }

    #[test]
    fn json_types() {
        let with = |ct: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, ct.parse().unwrap());
            is_json(&headers)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/problem+json"));
        assert!(!with("text/html"));
        assert!(!with("application/jsonp"));
        assert!(!with("+json"));
        assert!(!is_json(&HeaderMap::new()));
    }

    /// What the upstream saw and what came back, for `path` answered with `body` as `content_type`.
    async fn through(
        path: &str,
        content_type: &str,
        etag: Option<&str>,
        body: &'static [u8],
    ) -> (String, Result<UpstreamResponse, PartError>) {
        let seen = Arc::new(Mutex::new(String::new()));
        let keep = seen.clone();
        let content_type = HeaderValue::from_str(content_type).unwrap();
        let etag = etag.map(|e| HeaderValue::from_str(e).unwrap());
        let inner = service_fn(move |request: PartRequest| {
            *keep.lock().unwrap() = request.path.to_string();
            let mut response = answer(StatusCode::OK, body);
            response.headers.insert(CONTENT_TYPE, content_type.clone());
            if let Some(etag) = &etag {
                response.headers.insert(ETAG, etag.clone());
            }
            async { Ok::<_, PartError>(response) }
        });
        let request = PartRequest {
            path: path.parse().unwrap(),
            ..part_request(3)
        };
        let result = FieldsLayer.layer(inner).oneshot(request).await;
        let seen = seen.lock().unwrap().clone();
        (seen, result)
    }

    #[tokio::test]
    async fn a_json_answer_is_cut_and_its_etag_weakened() {
        let (seen, result) = through(
            "/m?fields=a(b)&x=1",
            "application/json",
            Some("\"v1\""),
            b"{\"a\":{\"b\":1,\"c\":2},\"d\":3}",
        )
        .await;
        assert_eq!(seen, "/m?x=1");
        let response = result.unwrap();
        assert_eq!(
            response.body,
            vec![Bytes::from_static(b"{\"a\":{\"b\":1}}")]
        );
        assert_eq!(response.body_len, 13);
        assert_eq!(response.headers[ETAG], "W/\"v1\"");
    }

    #[tokio::test]
    async fn other_answers_pass_as_they_are() {
        let (_, result) = through("/m?fields=a", "text/plain", Some("\"v1\""), b"{\"b\":1}").await;
        let response = result.unwrap();
        assert_eq!(response.body, vec![Bytes::from_static(b"{\"b\":1}")]);
        assert_eq!(response.headers[ETAG], "\"v1\"");
        let (_, result) = through("/m?fields=a", "application/json", None, b"not json").await;
        assert_eq!(result.unwrap().body, vec![Bytes::from_static(b"not json")]);
    }

    #[tokio::test]
    async fn a_malformed_mask_is_refused_before_the_upstream() {
        let (seen, result) = through("/m?fields=a(b", "application/json", None, b"{}").await;
        assert_eq!(seen, "", "nothing went upstream");
        let error = result.unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            error.to_string(),
            "part 3: the field mask \"a(b\" is malformed at byte 3: expected ')' to close the '(' opened before it"
        );
    }
}
