//! The client side of the format: build a batch, send it, read the reply back into one response per part.

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::wire::reply::ReplyError;
use crate::wire::{
    ContentId, EmbeddedRequest, PartSplitter, ReplyPart, boundary_from_content_type, write_close,
    write_request_part,
};

/// Why a batch call failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("sending the batch failed: {0}")]
    Transport(String),
    #[error("the gateway refused the batch with {status}: {body}")]
    Refused { status: StatusCode, body: String },
    #[error("the reply is not a readable batch: {0}")]
    Reply(String),
}

impl From<ReplyError> for ClientError {
    fn from(e: ReplyError) -> Self {
        ClientError::Reply(e.to_string())
    }
}

/// Builds a batch request body.
#[derive(Debug)]
pub struct BatchBuilder {
    boundary: String,
    body: BytesMut,
    parts: usize,
}

impl Default for BatchBuilder {
    /// A builder with a random boundary: no body can contain it by accident.
    fn default() -> Self {
        use rand::Rng;
        let token: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        BatchBuilder::with_boundary(&format!("batch_{token}"))
    }
}

impl BatchBuilder {
    pub fn with_boundary(boundary: &str) -> BatchBuilder {
        BatchBuilder {
            boundary: boundary.to_owned(),
            body: BytesMut::with_capacity(4096),
            parts: 0,
        }
    }

    /// Adds a part; `content_id` is sent in angle brackets.
    pub fn request(&mut self, content_id: Option<&str>, request: &EmbeddedRequest) -> &mut Self {
        let id = content_id.map(|id| ContentId::new(id, true));
        write_request_part(&mut self.body, &self.boundary, id.as_ref(), request);
        self.parts += 1;
        self
    }

    /// Adds a `GET` part with no headers of its own.
    pub fn get(&mut self, content_id: &str, target: &str) -> &mut Self {
        let request = EmbeddedRequest {
            method: Method::GET,
            target: target.to_owned(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        };
        self.request(Some(content_id), &request)
    }

    pub fn len(&self) -> usize {
        self.parts
    }

    pub fn is_empty(&self) -> bool {
        self.parts == 0
    }

    /// The `Content-Type` and body of the batch request.
    pub fn finish(mut self) -> (String, Bytes) {
        write_close(&mut self.body, &self.boundary);
        (
            format!("multipart/mixed; boundary={}", self.boundary),
            self.body.freeze(),
        )
    }
}

/// Splits a batch reply into its parts, in order.
pub fn parse_reply(content_type: &str, body: &[u8]) -> Result<Vec<ReplyPart>, ClientError> {
    let boundary =
        boundary_from_content_type(content_type).map_err(|e| ClientError::Reply(e.to_string()))?;
    let mut splitter = PartSplitter::new(&boundary, u64::MAX);
    splitter.push(body);
    let mut parts = Vec::new();
    while let Some(raw) = splitter
        .next_part()
        .map_err(|e| ClientError::Reply(e.to_string()))?
    {
        parts.push(ReplyPart::parse(&raw, parts.len())?);
    }
    splitter
        .finish()
        .map_err(|e| ClientError::Reply(e.to_string()))?;
    Ok(parts)
}

/// Sends batches to one gateway endpoint over a keep-alive connection pool.
#[derive(Debug, Clone)]
pub struct BatchClient {
    endpoint: http::Uri,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl BatchClient {
    /// `endpoint` is the batch URL, e.g. `http://127.0.0.1:8080/batch`.
    pub fn new(endpoint: http::Uri) -> BatchClient {
        BatchClient {
            endpoint,
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends the batch and returns one reply per part, in request order.
    pub async fn send(&self, batch: BatchBuilder) -> Result<Vec<ReplyPart>, ClientError> {
        let (content_type, body) = batch.finish();
        let request = Request::post(self.endpoint.clone())
            .header(CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = response.status();
        let reply_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(ClientError::Refused {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        parse_reply(&reply_type, &body)
    }
}
