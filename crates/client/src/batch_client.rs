//! Sending a batch and reading its reply as a stream of parts.

use std::collections::HashMap;
use std::fmt::Display;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use batchgate_transport::{CONNECT_TIMEOUT, ConnectError};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use tokio::time::Instant;

use super::ClientError;
use super::batch::{BatchBuilder, Rendered};
use super::connect::{UriConnector, tls_config};
use super::error::chain;
use batchgate_wire::request::split_mime_headers;
use batchgate_wire::{ContentId, FramingError, PartSplitter, boundary_from_content_type};

/// Bytes after the close delimiter read so that the connection can go back to the pool.
const MAX_EPILOGUE: u64 = 64 * 1024;

/// The response to one part of a batch: an embedded response of the reply, matched to the part it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartResponse {
    /// The index, in the batch, of the part this answers: found by `Content-ID`, else by position.
    pub index: usize,
    /// The request's id this reply names (the `response-` prefix removed), if it carried a `Content-ID`.
    pub content_id: Option<ContentId>,
    /// The reply's `Content-ID` header exactly as received (`<response-item1>`).
    pub raw_content_id: Option<String>,
    /// The embedded response's status: a failed part (a gateway's 502 or 504) is a status, not an error.
    pub status: StatusCode,
    /// The embedded response's headers.
    pub headers: HeaderMap,
    /// The embedded response's body.
    pub body: Bytes,
}

impl PartResponse {
    /// The embedded response as an `http::Response` (HTTP/1.1, its status, headers and body).
    pub fn into_response(self) -> Response<Bytes> {
        let mut response = Response::new(self.body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}

/// Sends batches to one batch URL over a keep-alive pool (HTTP/1.1, or HTTP/2 when an https server offers it
/// in ALPN). Cheap to clone: clones share the pool.
#[derive(Debug, Clone)]
pub struct BatchClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    url: Uri,
    url_text: String,
    headers: HeaderMap,
    timeout: Option<Duration>,
    http: Client<UriConnector, Full<Bytes>>,
}

/// Settings of a [`BatchClient`]; errors in them are reported by [`build`](Self::build).
#[derive(Debug)]
pub struct BatchClientBuilder {
    url: Result<Uri, String>,
    headers: HeaderMap,
    errors: Vec<String>,
    timeout: Option<Duration>,
    connect_timeout: Duration,
    roots: Vec<CertificateDer<'static>>,
}

impl BatchClientBuilder {
    /// A header every batch request carries (and batchgate passes on to every part, as Google does).
    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        K::Error: Display,
        V: TryInto<HeaderValue>,
        V::Error: Display,
    {
        match (name.try_into(), value.try_into()) {
            (Ok(name), Ok(value)) => {
                self.headers.append(name, value);
            }
            (Err(e), _) => self.errors.push(format!("header name: {e}")),
            (_, Err(e)) => self.errors.push(format!("header value: {e}")),
        }
        self
    }

    /// `Authorization: Bearer <token>` on every batch request (marked sensitive: never logged by hyper).
    pub fn bearer_auth(mut self, token: impl Display) -> Self {
        match HeaderValue::try_from(format!("Bearer {token}")) {
            Ok(mut value) => {
                value.set_sensitive(true);
                self.headers.insert(AUTHORIZATION, value);
            }
            Err(e) => self.errors.push(format!("bearer token: {e}")),
        }
        self
    }

    /// The longest a whole batch may take, from sending it until the last reply part (none by default).
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// The longest a new connection may take, TCP and TLS handshake (10 s by default).
    pub fn connect_timeout(mut self, limit: Duration) -> Self {
        self.connect_timeout = limit;
        self
    }

    /// Trusts this CA (DER) besides the system's roots, for https URLs.
    pub fn add_root_certificate(mut self, der: CertificateDer<'static>) -> Self {
        self.roots.push(der);
        self
    }

    /// The client; [`ClientError::Config`] names the first unusable setting (a URL that is not http or https
    /// or has no host, a bad header, an unusable CA).
    pub fn build(self) -> Result<BatchClient, ClientError> {
        if let Some(first) = self.errors.into_iter().next() {
            return Err(ClientError::Config(first));
        }
        let url = self.url.map_err(ClientError::Config)?;
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(ClientError::Config(format!(
                    "the batch URL {url} must start with http:// or https://"
                )));
            }
        };
        if url.host().is_none() {
            return Err(ClientError::Config(format!(
                "the batch URL {url} has no host"
            )));
        }
        let tls = if https {
            Some(tls_config(&self.roots).map_err(ClientError::Config)?)
        } else {
            None
        };
        let connector = UriConnector {
            tls,
            connect_timeout: self.connect_timeout,
        };
        let http = Client::builder(TokioExecutor::new()).build(connector);
        Ok(BatchClient {
            inner: Arc::new(Inner {
                url_text: url.to_string(),
                url,
                headers: self.headers,
                timeout: self.timeout,
                http,
            }),
        })
    }
}

impl BatchClient {
    /// Settings for a client of this batch URL (`http://127.0.0.1:8080/batch`,
    /// `https://www.googleapis.com/batch/...`).
    pub fn builder<U>(url: U) -> BatchClientBuilder
    where
        U: TryInto<Uri>,
        U::Error: Display,
    {
        BatchClientBuilder {
            url: url
                .try_into()
                .map_err(|e| format!("the batch URL does not parse: {e}")),
            headers: HeaderMap::new(),
            errors: Vec::new(),
            timeout: None,
            connect_timeout: CONNECT_TIMEOUT,
            roots: Vec::new(),
        }
    }

    /// A client of this batch URL with the default settings.
    pub fn new<U>(url: U) -> Result<BatchClient, ClientError>
    where
        U: TryInto<Uri>,
        U::Error: Display,
    {
        BatchClient::builder(url).build()
    }

    /// The batch URL.
    pub fn url(&self) -> &Uri {
        &self.inner.url
    }

    /// Sends the batch; yields each reply part as soon as it has arrived, in the order the reply carries
    /// them (request order for batchgate), each with the index of the part it answers. Nothing is sent until
    /// the stream is first polled. A reply that breaks off yields the parts read before, then the error; after
    /// an error the stream ends. The client's `timeout` runs from the first poll to the last part.
    pub fn send_stream(&self, batch: BatchBuilder) -> ReplyStream {
        let state = State::Start {
            inner: self.inner.clone(),
            batch,
        };
        let stream = futures_util::stream::unfold(state, |state| async move {
            match state {
                State::Done => None,
                State::Start { inner, batch } => match Reader::start(inner, batch).await {
                    Err(e) => Some((Err(e), State::Done)),
                    Ok(mut reader) => {
                        let item = reader.next().await?;
                        Some((item, State::Reading(reader)))
                    }
                },
                State::Reading(mut reader) => {
                    let item = reader.next().await?;
                    Some((item, State::Reading(reader)))
                }
            }
        });
        ReplyStream {
            inner: Box::pin(stream),
        }
    }

    /// Sends the batch and returns one reply part per part, in request order (`parts[i].index == i`).
    pub async fn send(&self, batch: BatchBuilder) -> Result<Vec<PartResponse>, ClientError> {
        let mut slots: Vec<Option<PartResponse>> = vec![None; batch.len()];
        let mut stream = self.send_stream(batch);
        while let Some(part) = stream.next().await {
            let part = part?;
            let index = part.index;
            slots[index] = Some(part);
        }
        // The stream ends without an error only once every part has been answered.
        Ok(slots.into_iter().flatten().collect())
    }
}

/// The reply parts of one batch as they arrive; see [`BatchClient::send_stream`].
pub struct ReplyStream {
    inner: Pin<Box<dyn Stream<Item = Result<PartResponse, ClientError>> + Send>>,
}

impl std::fmt::Debug for ReplyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplyStream")
    }
}

impl Stream for ReplyStream {
    type Item = Result<PartResponse, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

enum State {
    Start {
        inner: Arc<Inner>,
        batch: BatchBuilder,
    },
    Reading(Box<Reader>),
    Done,
}

/// Reads one reply: frames from the body into the splitter, parts out of it, each matched to its request.
struct Reader {
    inner: Arc<Inner>,
    body: Incoming,
    splitter: PartSplitter,
    /// A JSON reply's parts, read whole (its format needs the complete document), not yet yielded.
    json: Option<std::collections::VecDeque<PartResponse>>,
    /// Body bytes received so far.
    received: u64,
    deadline: Option<Instant>,
    matcher: Matcher,
    done: bool,
}

impl Reader {
    /// Sends the batch and reads the response head.
    async fn start(inner: Arc<Inner>, batch: BatchBuilder) -> Result<Box<Reader>, ClientError> {
        if batch.is_empty() {
            return Err(ClientError::InvalidBatch(
                "a batch needs at least one part".to_owned(),
            ));
        }
        let Rendered {
            content_type,
            body,
            ids,
            parts,
        } = batch.render();
        let mut request = Request::post(inner.url.clone())
            .body(Full::new(body))
            .map_err(|e| ClientError::InvalidBatch(e.to_string()))?;
        let headers = request.headers_mut();
        for (name, value) in &inner.headers {
            headers.append(name, value.clone());
        }
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::try_from(content_type)
                .map_err(|e| ClientError::InvalidBatch(format!("boundary: {e}")))?,
        );
        let deadline = inner.timeout.map(|limit| Instant::now() + limit);
        let response = inner.http.request(request);
        let response = match within(deadline, response).await {
            None => return Err(timed_out(&inner, "the response head")),
            Some(Err(e)) => return Err(request_error(&inner, &e)),
            Some(Ok(response)) => response,
        };
        let (head, body) = response.into_parts();
        if head.status != StatusCode::OK {
            return Err(refused(&inner, head.status, body, deadline).await);
        }
        let content_type = head
            .headers
            .get(CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let mut matcher = Matcher {
            ids,
            answered: vec![false; parts],
            count: 0,
            seen: 0,
        };
        let (head, mut body) = (head, body);
        if crate::json::is_json(&content_type) {
            let mut whole = Vec::new();
            loop {
                match within(deadline, body.frame()).await {
                    None => return Err(timed_out(&inner, "the JSON reply")),
                    Some(None) => break,
                    Some(Some(Err(e))) => {
                        return Err(ClientError::BrokenOff {
                            parts: 0,
                            offset: whole.len() as u64,
                            reason: format!("reading the reply failed: {}", chain(&e)),
                        });
                    }
                    Some(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            whole.extend_from_slice(&data);
                        }
                    }
                }
            }
            let received = whole.len() as u64;
            let parts = crate::json::parse_reply(&whole, |id| matcher.place(id))?;
            if let Some(missing) = matcher.missing(received) {
                return Err(missing);
            }
            return Ok(Box::new(Reader {
                inner,
                body,
                splitter: PartSplitter::new("-", 0),
                json: Some(parts.into()),
                received,
                deadline,
                matcher,
                done: false,
            }));
        }
        let boundary =
            boundary_from_content_type(&content_type).map_err(|e| ClientError::MalformedReply {
                offset: 0,
                reason: format!("the reply is no batch reply: {e}"),
            })?;
        if let Some(coding) = head.headers.get(CONTENT_ENCODING)
            && !coding.as_bytes().eq_ignore_ascii_case(b"identity")
        {
            return Err(ClientError::MalformedReply {
                offset: 0,
                reason: format!(
                    "the reply is compressed ({}) although the client did not ask for it",
                    String::from_utf8_lossy(coding.as_bytes())
                ),
            });
        }
        Ok(Box::new(Reader {
            inner,
            body,
            splitter: PartSplitter::new(&boundary, u64::MAX),
            json: None,
            received: 0,
            deadline,
            matcher,
            done: false,
        }))
    }

    /// The next reply part, the error that ends the reply, or `None` after the last part.
    async fn next(&mut self) -> Option<Result<PartResponse, ClientError>> {
        if self.done {
            return None;
        }
        let item = self.read().await;
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }

    async fn read(&mut self) -> Option<Result<PartResponse, ClientError>> {
        if let Some(parts) = &mut self.json {
            return parts.pop_front().map(Ok);
        }
        loop {
            match self
                .splitter
                .next_part_with(batchgate_wire::ReplyPart::complete_len)
            {
                Err(e) => {
                    return Some(Err(ClientError::MalformedReply {
                        offset: self.received,
                        reason: e.to_string(),
                    }));
                }
                Ok(Some(raw)) => return Some(self.part(&raw)),
                Ok(None) if self.splitter.is_closed() => {
                    self.drain_epilogue().await;
                    return self.matcher.missing(self.received).map(Err);
                }
                Ok(None) => {}
            }
            let frame = match within(self.deadline, self.body.frame()).await {
                None => {
                    let what = format!(
                        "the reply ({} of {} parts in)",
                        self.matcher.count,
                        self.matcher.answered.len()
                    );
                    return Some(Err(timed_out(&self.inner, &what)));
                }
                Some(frame) => frame,
            };
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.received += data.len() as u64;
                        self.splitter.push(&data);
                    }
                }
                Some(Err(e)) => {
                    return Some(Err(ClientError::BrokenOff {
                        parts: self.matcher.count,
                        offset: self.received,
                        reason: format!("reading the reply failed: {}", chain(&e)),
                    }));
                }
                None => {
                    return Some(Err(match self.splitter.finish() {
                        Err(e @ FramingError::Truncated { .. }) => ClientError::BrokenOff {
                            parts: self.matcher.count,
                            offset: self.received,
                            reason: e.to_string(),
                        },
                        Err(e) => ClientError::MalformedReply {
                            offset: self.received,
                            reason: e.to_string(),
                        },
                        Ok(()) => ClientError::MalformedReply {
                            offset: self.received,
                            reason: "the reply ended unexpectedly".to_owned(),
                        },
                    }));
                }
            }
        }
    }

    /// Parses one raw part and matches it to its request.
    fn part(&mut self, raw: &[u8]) -> Result<PartResponse, ClientError> {
        let offset = self.splitter.part_offset();
        let malformed = |reason: String| ClientError::MalformedReply { offset, reason };
        let position = self.matcher.seen;
        let parsed = batchgate_wire::ReplyPart::parse(raw, position)
            .map_err(|e| malformed(e.to_string()))?;
        let raw_content_id = split_mime_headers(raw, raw.len())
            .ok()
            .and_then(|(mime, _)| {
                mime.into_iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-id"))
                    .map(|(_, v)| v)
            });
        let index = self
            .matcher
            .place(parsed.content_id.as_ref())
            .map_err(malformed)?;
        Ok(PartResponse {
            index,
            content_id: parsed.content_id,
            raw_content_id,
            status: parsed.status,
            headers: parsed.headers,
            body: parsed.body,
        })
    }

    /// Reads what follows the close delimiter (normally nothing), so that the connection can be reused.
    async fn drain_epilogue(&mut self) {
        let mut read = 0;
        while read < MAX_EPILOGUE {
            match within(self.deadline, self.body.frame()).await {
                Some(Some(Ok(frame))) => {
                    let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                    read += len;
                    self.received += len;
                }
                _ => return,
            }
        }
    }
}

/// Matches reply parts to requests: by `Content-ID` when the reply names a request's id, else by position.
struct Matcher {
    ids: HashMap<String, usize>,
    answered: Vec<bool>,
    /// Requests answered so far.
    count: usize,
    /// Reply parts read so far.
    seen: usize,
}

impl Matcher {
    /// The index of the request a reply part answers (the next reply part read).
    pub(crate) fn place(&mut self, id: Option<&ContentId>) -> Result<usize, String> {
        let position = self.seen;
        self.seen += 1;
        let index = id
            .and_then(|id| self.ids.get(id.id()).copied())
            .unwrap_or(position);
        let total = self.answered.len();
        match self.answered.get_mut(index) {
            None => Err(format!(
                "reply part {position} is one too many: the batch has {total} parts"
            )),
            Some(true) => Err(format!(
                "reply part {position} answers part {index}{}, which an earlier reply part already answered",
                id.map(|id| format!(" (Content-ID {id})"))
                    .unwrap_or_default()
            )),
            Some(answered) => {
                *answered = true;
                self.count += 1;
                Ok(index)
            }
        }
    }

    /// The error for a reply that closed without answering every part.
    fn missing(&self, offset: u64) -> Option<ClientError> {
        if self.count == self.answered.len() {
            return None;
        }
        let missing: Vec<String> = self
            .answered
            .iter()
            .enumerate()
            .filter(|(_, answered)| !**answered)
            .map(|(i, _)| i.to_string())
            .take(10)
            .collect();
        Some(ClientError::MalformedReply {
            offset,
            reason: format!(
                "the reply closed after {} parts but the batch has {}: no answer for part(s) {}{}",
                self.count,
                self.answered.len(),
                missing.join(", "),
                if self.answered.len() - self.count > missing.len() {
                    ", ..."
                } else {
                    ""
                }
            ),
        })
    }
}

/// Runs `future` until the deadline, if any: `None` if it passed.
async fn within<F: std::future::Future>(deadline: Option<Instant>, future: F) -> Option<F::Output> {
    match deadline {
        None => Some(future.await),
        Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
    }
}

fn timed_out(inner: &Inner, what: &str) -> ClientError {
    ClientError::timed_out(inner.url_text.clone(), inner.timeout, what)
}

/// What a failed request was: connect, TLS, connect timeout, or a failure on the connection.
fn request_error(inner: &Inner, error: &hyper_util::client::legacy::Error) -> ClientError {
    let url = inner.url_text.clone();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(failure) = e.downcast_ref::<ConnectError>() {
            return ClientError::connect_failed(url, failure);
        }
        source = e.source();
    }
    if error.is_connect() {
        ClientError::Connect {
            url,
            reason: chain(error),
        }
    } else {
        ClientError::Transport {
            url,
            reason: chain(error),
        }
    }
}

/// The error for a non-200 answer: its JSON error's code and message when it has one.
async fn refused(
    inner: &Inner,
    status: StatusCode,
    body: Incoming,
    deadline: Option<Instant>,
) -> ClientError {
    let limited = http_body_util::Limited::new(body, super::MAX_ERROR_BODY);
    let body = match within(deadline, limited.collect()).await {
        Some(Ok(collected)) => collected.to_bytes(),
        _ => Bytes::new(),
    };
    ClientError::refusal(inner.url_text.clone(), status, body)
}
