//! HTTP semantics of an upstream's answer, kept as the client would have seen them talking to the upstream
//! directly:
//! - a 1xx (101 Switching Protocols) as the final answer cannot be embedded: a 502 part;
//! - a 204 carries no `Content-Length`;
//! - HEAD and 304 answers keep the upstream's `Content-Length` (the length of the body they do not carry);
//! - a body the upstream compressed although it was not asked to (the gateway never forwards
//!   `Accept-Encoding`) is decoded, unless the part's own `Accept-Encoding` accepts that coding: clients such
//!   as google-api-python-client cannot decode a compressed part.

use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tower::{Layer, Service};

use super::{BatchScope, PartRequest, UpstreamResponse};
use crate::compress::quality;
use crate::error::PartError;
use batchgate_wire::Framing;

#[derive(Debug, Clone)]
pub(crate) struct RulesLayer {
    upstream: Arc<str>,
    max_response_bytes: u64,
}

impl RulesLayer {
    pub(crate) fn new(upstream: Arc<str>, max_response_bytes: u64) -> RulesLayer {
        RulesLayer {
            upstream,
            max_response_bytes,
        }
    }
}

impl<S> Layer<S> for RulesLayer {
    type Service = Rules<S>;

    fn layer(&self, inner: S) -> Rules<S> {
        Rules {
            inner,
            upstream: self.upstream.clone(),
            max_response_bytes: self.max_response_bytes,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Rules<S> {
    inner: S,
    upstream: Arc<str>,
    max_response_bytes: u64,
}

impl<S> Service<PartRequest> for Rules<S>
where
    S: Service<PartRequest, Response = UpstreamResponse, Error = PartError>,
{
    type Response = UpstreamResponse;
    type Error = PartError;
    type Future = RulesFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PartError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: PartRequest) -> Self::Future {
        let check = Check {
            index: request.index,
            head: request.method == Method::HEAD,
            accepts: request.accepts.clone(),
            batch: request.batch.clone(),
            upstream: self.upstream.clone(),
            limit: self.max_response_bytes,
        };
        RulesFuture {
            call: self.inner.call(request),
            check: Some(check),
            decoding: None,
        }
    }
}

type Answer = Result<UpstreamResponse, PartError>;

pin_project_lite::pin_project! {
    /// The inner call, then the rules applied to its answer. Only decoding an unrequested coding, which runs
    /// on the blocking pool, is a future of its own.
    pub(crate) struct RulesFuture<F> {
        #[pin]
        call: F,
        check: Option<Check>,
        decoding: Option<BoxFuture<'static, Answer>>,
    }
}

impl<F> Future for RulesFuture<F>
where
    F: Future<Output = Answer>,
{
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        let this = self.project();
        if let Some(decoding) = this.decoding {
            return decoding.as_mut().poll(cx);
        }
        let answer = ready!(this.call.poll(cx));
        let check = this
            .check
            .take()
            .expect("RulesFuture polled after it completed");
        match check.apply(answer) {
            Ok(answer) => Poll::Ready(answer),
            Err(mut decoding) => {
                let poll = decoding.as_mut().poll(cx);
                *this.decoding = Some(decoding);
                poll
            }
        }
    }
}

/// What the rules need to know of the part.
struct Check {
    index: usize,
    head: bool,
    accepts: Option<HeaderValue>,
    batch: Arc<BatchScope>,
    upstream: Arc<str>,
    limit: u64,
}

impl Check {
    /// The answer as the client gets it, or (`Err`) the decoding that makes it.
    fn apply(self, answer: Answer) -> Result<Answer, BoxFuture<'static, Answer>> {
        let mut response = match answer {
            Ok(response) => response,
            Err(error) => return Ok(Err(error)),
        };
        let index = self.index;
        if response.status.is_informational() {
            return Ok(Err(PartError::Informational {
                index,
                upstream: self.upstream.to_string(),
                status: response.status,
            }));
        }
        if response.status == StatusCode::NO_CONTENT {
            response.headers.remove(CONTENT_LENGTH);
            response.framing = Framing::AsIs;
        } else if self.head || response.status == StatusCode::NOT_MODIFIED {
            response.framing = Framing::AsIs;
        } else if let Some(codings) = unrequested_coding(&response, self.accepts.as_ref()) {
            return Err(Box::pin(async move {
                let encoded = response.body_len;
                let decoded = decode(codings, std::mem::take(&mut response.body), self.limit)
                    .await
                    .map_err(|reason| PartError::Decode {
                        index,
                        upstream: self.upstream.to_string(),
                        reason,
                    })?;
                let grown = (decoded.len() as u64).saturating_sub(encoded);
                if !self.batch.budget.take(grown) {
                    return Err(PartError::BatchResponseBudget {
                        index,
                        limit: self.batch.budget.limit(),
                    });
                }
                response.headers.remove(CONTENT_ENCODING);
                response.body_len = decoded.len() as u64;
                response.body = vec![decoded];
                Ok(response)
            }));
        }
        Ok(Ok(response))
    }
}

/// The codings to undo, in the order they were applied, if the body is encoded in a way the client did not
/// accept.
fn unrequested_coding(
    response: &UpstreamResponse,
    accepts: Option<&HeaderValue>,
) -> Option<String> {
    unaccepted_coding(&response.headers, response.body_len, accepts)
}

/// The codings of a body of `body_len` bytes with `headers` that `accepts` (a part's `Accept-Encoding`) does
/// not accept, if any: such a body is decoded for the part, and a cached one is not served to it.
pub(super) fn unaccepted_coding(
    headers: &HeaderMap,
    body_len: u64,
    accepts: Option<&HeaderValue>,
) -> Option<String> {
    let value = headers.get(CONTENT_ENCODING)?.to_str().ok()?;
    let codings = value.trim();
    if codings.is_empty() || codings.eq_ignore_ascii_case("identity") || body_len == 0 {
        return None;
    }
    let accepted = accepts
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| codings.split(',').all(|c| quality(a, c.trim()) > 0.0));
    (!accepted).then(|| codings.to_owned())
}

/// Undoes `codings` (`gzip`, `x-gzip`, `deflate`, `br`, `zstd`, comma-separated, last applied last) off the
/// reactor, producing at most `limit` bytes.
async fn decode(codings: String, body: Vec<Bytes>, limit: u64) -> Result<Bytes, String> {
    tokio::task::spawn_blocking(move || {
        let mut data: Vec<u8> = body.concat();
        for coding in codings.rsplit(',').map(str::trim) {
            data = decode_one(coding, &data, limit)?;
        }
        Ok(Bytes::from(data))
    })
    .await
    .map_err(|e| format!("decoding failed: {e}"))?
}

fn decode_one(coding: &str, data: &[u8], limit: u64) -> Result<Vec<u8>, String> {
    let lower = coding.to_ascii_lowercase();
    let reader: Box<dyn Read + '_> = match lower.as_str() {
        "identity" => return Ok(data.to_vec()),
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(data)),
        "deflate" => Box::new(flate2::read::ZlibDecoder::new(data)),
        "br" => Box::new(brotli::Decompressor::new(data, 4096)),
        "zstd" => Box::new(
            zstd::stream::read::Decoder::new(data)
                .map_err(|e| format!("its zstd body cannot be read: {e}"))?,
        ),
        other => {
            return Err(format!(
                "it compressed the body as {other:?}, which the gateway cannot decode and the part did not accept"
            ));
        }
    };
    let mut out = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("its {coding} body is corrupt: {e}"))?;
    if out.len() as u64 > limit {
        return Err(format!(
            "its {coding} body decodes to more than limits.max_response_bytes = {limit}"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use http::HeaderMap;
    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::stack::tests::part_request;

    /// The upstream's answer: `status`, `headers` (name, value), `body` as one piece.
    fn answer(status: u16, headers: &[(&str, &str)], body: &[u8]) -> UpstreamResponse {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        UpstreamResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: vec![Bytes::copy_from_slice(body)],
            body_len: body.len() as u64,
            framing: Framing::Exact,
            peer: None,
        }
    }

    /// `request` through the rules (at most `limit` decoded bytes) over an upstream that answers `response`.
    async fn apply(request: PartRequest, response: UpstreamResponse, limit: u64) -> Answer {
        let response = std::sync::Mutex::new(Some(response));
        let inner = service_fn(move |_: PartRequest| {
            let response = response.lock().unwrap().take().expect("called once");
            async move { Ok::<_, PartError>(response) }
        });
        RulesLayer::new(Arc::from("up:80"), limit)
            .layer(inner)
            .oneshot(request)
            .await
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[tokio::test]
    async fn a_204_loses_its_content_length() {
        let response = answer(204, &[("content-length", "0"), ("x-done", "yes")], b"");
        let out = apply(part_request(0), response, 1 << 20).await.unwrap();
        assert!(!out.headers.contains_key(CONTENT_LENGTH));
        assert_eq!(out.headers["x-done"], "yes");
        assert_eq!(out.framing, Framing::AsIs);
    }

    /// HEAD and 304 answers keep the length of the body they do not carry.
    #[tokio::test]
    async fn head_and_304_answers_keep_their_content_length() {
        let head = PartRequest {
            method: Method::HEAD,
            ..part_request(0)
        };
        let out = apply(
            head,
            answer(200, &[("content-length", "1234")], b""),
            1 << 20,
        )
        .await;
        let out = out.unwrap();
        assert_eq!(
            (out.headers[CONTENT_LENGTH].as_bytes(), out.framing),
            (&b"1234"[..], Framing::AsIs)
        );

        let response = answer(304, &[("content-length", "1234"), ("etag", "\"v1\"")], b"");
        let out = apply(part_request(0), response, 1 << 20).await.unwrap();
        assert_eq!(
            (out.headers[CONTENT_LENGTH].as_bytes(), out.framing),
            (&b"1234"[..], Framing::AsIs)
        );

        let out = apply(
            part_request(0),
            answer(200, &[("content-length", "2")], b"ok"),
            1 << 20,
        )
        .await;
        assert_eq!(
            out.unwrap().framing,
            Framing::Exact,
            "a plain 200 is framed anew"
        );
    }

    #[tokio::test]
    async fn a_1xx_final_answer_is_an_error_naming_it() {
        let error = apply(
            part_request(3),
            answer(101, &[("upgrade", "websocket")], b""),
            1 << 20,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(error, PartError::Informational { index: 3, .. }),
            "{error:?}"
        );
        assert!(
            error.to_string().contains("101 Switching Protocols"),
            "{error}"
        );
        assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
    }

    /// A body compressed although the part did not ask for it is decoded; one the part accepts is kept.
    #[tokio::test]
    async fn unrequested_compression_is_decoded_and_accepted_compression_kept() {
        let plain = b"a body the upstream compressed although nobody asked it to".repeat(20);
        let zipped = gzip(&plain);
        let gzipped = || answer(200, &[("content-encoding", "gzip")], &zipped);

        let out = apply(part_request(0), gzipped(), 1 << 20).await.unwrap();
        assert!(!out.headers.contains_key(CONTENT_ENCODING));
        assert_eq!(out.body.concat(), plain);
        assert_eq!(out.body_len, plain.len() as u64);

        let accepting = PartRequest {
            accepts: Some(HeaderValue::from_static("gzip, br")),
            ..part_request(0)
        };
        let out = apply(accepting, gzipped(), 1 << 20).await.unwrap();
        assert_eq!(out.headers[CONTENT_ENCODING], "gzip");
        assert_eq!(out.body.concat(), zipped);
    }

    /// Decoding is bounded by `max_response_bytes`; a coding the gateway cannot undo, or a corrupt body, is a
    /// 502 part saying so.
    #[tokio::test]
    async fn a_body_that_cannot_be_decoded_within_the_limit_is_an_error() {
        let zipped = gzip(&[b'x'; 10_000]);
        let too_big = answer(200, &[("content-encoding", "gzip")], &zipped);
        let error = apply(part_request(1), too_big, 9_999).await.unwrap_err();
        assert!(
            error
                .to_string()
                .contains("limits.max_response_bytes = 9999"),
            "{error}"
        );

        let unknown = answer(200, &[("content-encoding", "compress")], b"data");
        let error = apply(part_request(1), unknown, 1 << 20).await.unwrap_err();
        assert!(
            matches!(error, PartError::Decode { index: 1, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("\"compress\""), "{error}");

        let corrupt = answer(200, &[("content-encoding", "gzip")], b"not gzip");
        let error = apply(part_request(1), corrupt, 1 << 20).await.unwrap_err();
        assert!(error.to_string().contains("corrupt"), "{error}");
        assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
    }
}
