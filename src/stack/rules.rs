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
use http::{HeaderValue, Method, StatusCode};
use tower::{Layer, Service};

use super::{BatchScope, PartRequest, UpstreamResponse};
use crate::compress::quality;
use crate::error::PartError;
use batchgate_wire::Framing;

#[derive(Debug, Clone)]
pub struct RulesLayer {
    upstream: Arc<str>,
    max_response_bytes: u64,
}

impl RulesLayer {
    pub fn new(upstream: Arc<str>, max_response_bytes: u64) -> RulesLayer {
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
pub struct Rules<S> {
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
    pub struct RulesFuture<F> {
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
    let value = response.headers.get(CONTENT_ENCODING)?.to_str().ok()?;
    let codings = value.trim();
    if codings.is_empty() || codings.eq_ignore_ascii_case("identity") || response.body_len == 0 {
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
