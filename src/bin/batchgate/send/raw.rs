//! A batch request of given bytes, and its reply read as bytes: for a raw multipart input, which goes out
//! exactly as it was read, and for `--raw`, which prints the reply exactly as it came. HTTP/1.1 on a
//! connection of its own (TLS offering only `http/1.1` in ALPN). Failures are the client library's
//! [`ClientError`]s, worded as `batchgate_client` words them.

use std::sync::Arc;
use std::time::Duration;

use batchgate_client::ClientError;
use batchgate_transport::{CONNECT_TIMEOUT, MaybeTlsStream, TlsTarget, connect};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::client::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::time::Instant;

/// Where batches go.
#[derive(Debug)]
pub(super) struct Endpoint {
    uri: Uri,
    url: String,
    host: String,
    port: u16,
    /// The `Host` header.
    authority: String,
    tls: Option<Arc<ClientConfig>>,
}

impl Endpoint {
    /// An `http://` or `https://` batch URL; for https, the system's roots and `extra_roots` are trusted.
    pub(super) fn new(
        url: &str,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<Endpoint, ClientError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| ClientError::Config(format!("the batch URL does not parse: {e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(ClientError::Config(format!(
                    "the batch URL {uri} must start with http:// or https://"
                )));
            }
        };
        let Some(authority) = uri.authority() else {
            return Err(ClientError::Config(format!(
                "the batch URL {uri} has no host"
            )));
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = authority
            .as_str()
            .rsplit('@')
            .next()
            .unwrap_or_default()
            .to_owned();
        let tls = if https {
            Some(tls_config(extra_roots).map_err(ClientError::Config)?)
        } else {
            None
        };
        Ok(Endpoint {
            url: uri.to_string(),
            uri,
            host,
            port,
            authority,
            tls,
        })
    }

    /// POSTs `body` as it is, with these headers and `content_type`, within `timeout` if any (from now until
    /// the last byte of the reply). A status other than 200 is [`ClientError::Status`], with the JSON error's
    /// code and message.
    pub(super) async fn post(
        &self,
        headers: &HeaderMap,
        content_type: &str,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Reply, ClientError> {
        let deadline = timeout.map(|limit| Instant::now() + limit);
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut request = Request::post(path)
            .header(CONTENT_LENGTH, body.len())
            .body(Full::new(body))
            .map_err(|e| ClientError::InvalidBatch(e.to_string()))?;
        for (name, value) in headers {
            request.headers_mut().append(name, value.clone());
        }
        if !headers.contains_key(HOST) {
            let host = HeaderValue::from_str(&self.authority)
                .map_err(|e| ClientError::Config(format!("the batch URL's host: {e}")))?;
            request.headers_mut().insert(HOST, host);
        }
        let content_type = HeaderValue::from_str(content_type)
            .map_err(|e| ClientError::InvalidBatch(format!("Content-Type: {e}")))?;
        request.headers_mut().insert(CONTENT_TYPE, content_type);
        let exchange = async {
            let tls = match &self.tls {
                None => None,
                Some(config) => Some(TlsTarget {
                    config: config.clone(),
                    server_name: ServerName::try_from(self.host.clone()).map_err(|e| {
                        ClientError::Tls {
                            url: self.url.clone(),
                            reason: format!("{:?} is not a server name: {e}", self.host),
                        }
                    })?,
                }),
            };
            let io = connect((self.host.as_str(), self.port), tls, CONNECT_TIMEOUT)
                .await
                .map_err(|e| ClientError::connect_failed(self.url.clone(), &e))?;
            self.send(io, request).await
        };
        let response = match deadline {
            None => exchange.await?,
            Some(at) => tokio::time::timeout_at(at, exchange).await.map_err(|_| {
                ClientError::timed_out(self.url.clone(), timeout, "the response head")
            })??,
        };
        let (head, body) = response.into_parts();
        let reply = Reply {
            url: self.url.clone(),
            headers: head.headers,
            body,
            deadline,
            timeout,
            received: 0,
        };
        if head.status != StatusCode::OK {
            return Err(reply.refused(head.status).await);
        }
        Ok(reply)
    }

    /// Sends the request on a new HTTP/1.1 connection over `io` and returns the response head.
    async fn send(
        &self,
        io: MaybeTlsStream,
        request: Request<Full<Bytes>>,
    ) -> Result<http::Response<Incoming>, ClientError> {
        let failed = |e: hyper::Error| ClientError::Transport {
            url: self.url.clone(),
            reason: e.to_string(),
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(failed)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        sender.send_request(request).await.map_err(failed)
    }
}

/// The system's roots and `extra`, ALPN `http/1.1` only (this connection speaks HTTP/1.1).
fn tls_config(extra: &[CertificateDer<'static>]) -> Result<Arc<ClientConfig>, String> {
    batchgate_transport::client_config(extra, &[b"http/1.1"])
}

/// A 200 reply whose body is being read.
#[derive(Debug)]
pub(super) struct Reply {
    url: String,
    pub headers: HeaderMap,
    body: Incoming,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    /// Body bytes read so far.
    pub received: u64,
}

impl Reply {
    /// The next bytes of the body, `None` at its end. A failure on the connection is
    /// [`ClientError::BrokenOff`] after `parts` complete parts.
    pub(super) async fn chunk(&mut self, parts: usize) -> Result<Option<Bytes>, ClientError> {
        loop {
            let frame = match self.deadline {
                None => self.body.frame().await,
                Some(at) => tokio::time::timeout_at(at, self.body.frame())
                    .await
                    .map_err(|_| {
                        ClientError::timed_out(
                            self.url.clone(),
                            self.timeout,
                            &format!("the reply ({parts} parts in)"),
                        )
                    })?,
            };
            match frame {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(ClientError::BrokenOff {
                        parts,
                        offset: self.received,
                        reason: format!("reading the reply failed: {e}"),
                    });
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.received += data.len() as u64;
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// The error for a refused batch: the JSON error's code and message when the body has one.
    async fn refused(self, status: StatusCode) -> ClientError {
        let limited = Limited::new(self.body, batchgate_client::MAX_ERROR_BODY).collect();
        let body = match self.deadline {
            None => limited.await.ok(),
            Some(at) => tokio::time::timeout_at(at, limited)
                .await
                .ok()
                .and_then(Result::ok),
        }
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
        ClientError::refusal(self.url, status, body)
    }
}
