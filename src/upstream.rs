//! The shared, pooled connections to upstreams: one HTTP/1.1 keep-alive pool and one HTTP/2 pool for routes
//! that ask for it. Every part of every batch goes through these, so connections are reused across batches.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamSettings;
use crate::headers::strip_hop_by_hop;
use crate::metrics::Metrics;
use tower_service::Service;

/// Read buffer of each upstream connection. A fixed size keeps pooled connections from each growing theirs
/// to the largest body they ever read; body pieces are copied out once, into the reply part.
const READ_BUF: usize = 16 * 1024;

/// An upstream's complete answer.
#[derive(Debug)]
pub struct UpstreamReply {
    pub status: StatusCode,
    /// Without hop-by-hop headers and without `Content-Length` (the reply part sets its own).
    pub headers: HeaderMap,
    /// The body as it arrived, piece by piece: it is copied once, into the reply part.
    pub body: Vec<Bytes>,
    pub body_len: u64,
}

/// Why an exchange failed, before it is attributed to a part.
#[derive(Debug)]
pub enum ExchangeError {
    /// No connection could be made.
    Connect(String),
    /// The connection broke, or the upstream spoke something that is not HTTP.
    Broken(String),
    /// The body passed the size limit.
    TooLarge,
}

/// The pools.
#[derive(Debug, Clone)]
pub struct Upstreams {
    http1: Client<CountingConnector, Full<Bytes>>,
    http2: Client<CountingConnector, Full<Bytes>>,
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

impl Upstreams {
    pub fn new(settings: &UpstreamSettings, metrics: Arc<Metrics>) -> Upstreams {
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
        Upstreams {
            http1: build(false),
            http2: build(true),
        }
    }

    /// Sends one request and reads the whole response, at most `limit` body bytes.
    pub async fn exchange(
        &self,
        http2: bool,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
        limit: u64,
    ) -> Result<UpstreamReply, ExchangeError> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let client = if http2 { &self.http2 } else { &self.http1 };
        let response = client.request(request).await.map_err(|e| {
            let reason = reason(&e);
            if e.is_connect() {
                ExchangeError::Connect(reason)
            } else {
                ExchangeError::Broken(reason)
            }
        })?;
        let (parts, mut body) = response.into_parts();
        let mut pieces = Vec::new();
        let mut body_len = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ExchangeError::Broken(format!("reading the response body: {}", reason(&e)))
            })?;
            if let Ok(data) = frame.into_data() {
                body_len += data.len() as u64;
                if body_len > limit {
                    return Err(ExchangeError::TooLarge);
                }
                pieces.push(data);
            }
        }
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        headers.remove(http::header::CONTENT_LENGTH);
        Ok(UpstreamReply {
            status: parts.status,
            headers,
            body: pieces,
            body_len,
        })
    }
}

/// The innermost cause, which is the one a user can act on ("Connection refused", "connection reset").
fn reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    let mut text = e.to_string();
    while let Some(next) = cause.source() {
        text = next.to_string();
        cause = next;
    }
    text
}
