//! The innermost service: the shared keep-alive pools (one HTTP/1.1, one HTTP/2 prior knowledge), shared by
//! every route and batch so that connections are reused across batches, and the response size limits.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::Service;

use super::{PartRequest, UpstreamResponse};
use crate::config::UpstreamSettings;
use crate::error::PartError;
use crate::headers::strip_hop_by_hop;
use crate::metrics::Metrics;
use crate::wire::Framing;

/// Read buffer of each upstream connection. A fixed size keeps pooled connections from each growing theirs
/// to the largest body they ever read; body pieces are copied out once, into the reply part.
const READ_BUF: usize = 16 * 1024;

type HttpClient = Client<CountingConnector, Full<Bytes>>;

/// The pools.
#[derive(Debug, Clone)]
pub struct Pools {
    http1: HttpClient,
    http2: HttpClient,
    metrics: Arc<Metrics>,
}

impl Pools {
    pub fn new(settings: &UpstreamSettings, metrics: Arc<Metrics>) -> Pools {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let build = |http2: bool| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(settings.pool_idle_timeout)
                .pool_max_idle_per_host(settings.pool_max_idle_per_host)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .http2_only(http2)
                .http1_read_buf_exact_size(READ_BUF)
                .build(CountingConnector {
                    inner: connector.clone(),
                    metrics: metrics.clone(),
                })
        };
        Pools {
            http1: build(false),
            http2: build(true),
            metrics,
        }
    }

    /// The service sending a route's parts to `upstream` over the pool of its protocol.
    pub fn service(&self, http2: bool, upstream: Arc<str>, max_response_bytes: u64) -> Pool {
        Pool {
            client: if http2 { &self.http2 } else { &self.http1 }.clone(),
            metrics: self.metrics.clone(),
            upstream,
            max_response_bytes,
        }
    }
}

/// Sends one part and reads its whole answer, at most `max_response_bytes` and what is left of the batch's
/// response budget.
#[derive(Debug, Clone)]
pub struct Pool {
    client: HttpClient,
    metrics: Arc<Metrics>,
    upstream: Arc<str>,
    max_response_bytes: u64,
}

impl Service<PartRequest> for Pool {
    type Response = UpstreamResponse;
    type Error = PartError;
    type Future = BoxFuture<'static, Result<UpstreamResponse, PartError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), PartError>> {
        // The legacy client is always ready: it queues for a connection inside the request future.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, part: PartRequest) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.exchange(part).await })
    }
}

impl Pool {
    async fn exchange(self, part: PartRequest) -> Result<UpstreamResponse, PartError> {
        let PartRequest {
            index,
            method,
            uri,
            headers,
            body,
            batch,
            ..
        } = part;
        let upstream = || self.upstream.to_string();
        let budget = batch.budget.left();
        let limit = self.max_response_bytes.min(budget);
        let too_large = || {
            if limit < self.max_response_bytes {
                PartError::BatchResponseBudget {
                    index,
                    limit: batch.budget.limit(),
                }
            } else {
                PartError::ResponseTooLarge {
                    index,
                    upstream: upstream(),
                    limit: self.max_response_bytes,
                }
            }
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        self.metrics.upstream_request();
        let response = self.client.request(request).await.map_err(|e| {
            let reason = innermost(&e);
            if e.is_connect() {
                PartError::Connect {
                    index,
                    upstream: upstream(),
                    reason,
                }
            } else {
                PartError::Upstream {
                    index,
                    upstream: upstream(),
                    reason,
                }
            }
        })?;
        let (parts, mut body) = response.into_parts();
        let mut pieces = Vec::new();
        let mut body_len = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| PartError::Upstream {
                index,
                upstream: upstream(),
                reason: format!("reading the response body: {}", innermost(&e)),
            })?;
            if let Ok(data) = frame.into_data() {
                body_len += data.len() as u64;
                if body_len > limit {
                    return Err(too_large());
                }
                pieces.push(data);
            }
        }
        if !batch.budget.take(body_len) {
            return Err(PartError::BatchResponseBudget {
                index,
                limit: batch.budget.limit(),
            });
        }
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        Ok(UpstreamResponse {
            status: parts.status,
            headers,
            body: pieces,
            body_len,
            framing: Framing::Exact,
        })
    }
}

/// The TCP connector, counting the connections it opens.
#[derive(Debug, Clone)]
pub struct CountingConnector {
    inner: HttpConnector,
    metrics: Arc<Metrics>,
}

impl Service<Uri> for CountingConnector {
    type Response = <HttpConnector as Service<Uri>>::Response;
    type Error = <HttpConnector as Service<Uri>>::Error;
    type Future = <HttpConnector as Service<Uri>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        self.metrics.upstream_connect();
        self.inner.call(uri)
    }
}

/// The innermost cause, which is the one a user can act on ("Connection refused", "connection reset").
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    let mut text = e.to_string();
    while let Some(next) = cause.source() {
        text = next.to_string();
        cause = next;
    }
    text
}
