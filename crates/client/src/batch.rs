//! Building a batch: its parts, their ids, the headers they all get.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{Bytes, BytesMut};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri};

use super::ClientError;
use batchgate_wire::{ContentId, EmbeddedRequest, write_close, write_request_part};

/// The parts of one batch, in order.
///
/// Each part is an `http::Request<Bytes>`: any method, its headers, its body (sent with a `Content-Length`).
/// Its URI is the part's target: a path and query (`/mail/v1/messages/1?format=full`), or an absolute URL,
/// which batchgate routes by its authority.
///
/// **Ids.** A part pushed with [`push_with_id`](Self::push_with_id) carries `Content-ID: <id>`, and its reply
/// part is matched to it by that id; ids must be unique within the batch. A part without an id is matched by
/// its position in the reply (batchgate and Google answer in request order).
///
/// **Default headers** ([`default_header`](Self::default_header)) are written into every part that does not
/// set that header itself. They go into the parts, not onto the batch request, so that they reach every part
/// exactly as given whatever the batch endpoint's inheritance rules are (batchgate, for one, never passes the
/// batch's `Content-*` or `Accept-Encoding` headers on to parts). Headers meant for the batch request itself,
/// authorization for instance, are set on the [`BatchClient`](super::BatchClient); batchgate and Google pass
/// those on to every part.
///
/// **Format.** A batch is `multipart/mixed` unless [`format`](Self::format) says [`Format::Json`]: then it
/// is a JSON batch (`{"requests":[...]}`, Microsoft Graph and OData 4.01), whose requests all carry an `id`
/// (a part pushed without one gets its position, counted from 1).
#[derive(Debug)]
pub struct BatchBuilder {
    format: Format,
    boundary: String,
    parts: Vec<Part>,
    /// Content-ID (without brackets) to part index.
    ids: HashMap<String, usize>,
    defaults: HeaderMap,
}

/// The wire format of a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// `multipart/mixed` of `application/http` parts (Google's batch format): the default.
    #[default]
    Multipart,
    /// JSON (`{"requests":[{"id","method","url","headers","body"}]}`, Microsoft Graph and OData 4.01). Bodies
    /// are written by their `Content-Type`: a JSON value, a string for `text/*`, base64url otherwise.
    Json,
}

#[derive(Debug)]
struct Part {
    id: Option<ContentId>,
    request: EmbeddedRequest,
}

/// A batch as it goes on the wire, and what the reader needs to match replies to parts.
#[derive(Debug)]
pub(crate) struct Rendered {
    pub content_type: String,
    pub body: Bytes,
    pub ids: HashMap<String, usize>,
    pub parts: usize,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder::new()
    }
}

impl BatchBuilder {
    /// An empty batch with a random boundary (32 alphanumerics): no body can contain it by accident.
    pub fn new() -> BatchBuilder {
        use rand::Rng;
        let token: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        BatchBuilder::with_boundary(&format!("batch_{token}"))
    }

    /// An empty batch with this boundary (tests, byte-exact fixtures).
    pub fn with_boundary(boundary: &str) -> BatchBuilder {
        BatchBuilder {
            format: Format::Multipart,
            boundary: boundary.to_owned(),
            parts: Vec::new(),
            ids: HashMap::new(),
            defaults: HeaderMap::new(),
        }
    }

    /// The batch's wire format ([`Format::Multipart`] unless set).
    pub fn format(&mut self, format: Format) -> &mut Self {
        self.format = format;
        self
    }

    /// A header every part gets unless it sets that header itself (all values of a repeated one).
    pub fn default_header(&mut self, name: HeaderName, value: HeaderValue) -> &mut Self {
        self.defaults.append(name, value);
        self
    }

    /// Adds a part without a `Content-ID`; returns its index. Its reply is matched by position.
    pub fn push(&mut self, request: Request<Bytes>) -> usize {
        self.push_part(None, embedded(request))
    }

    /// Adds a part with `Content-ID: <id>`; returns its index. Refuses an id another part already has, an
    /// empty one, and one with control characters.
    pub fn push_with_id(
        &mut self,
        id: &str,
        request: Request<Bytes>,
    ) -> Result<usize, ClientError> {
        self.push_embedded(Some(id), embedded(request))
    }

    /// Adds a part given as the wire type, with an optional id (see [`push_with_id`](Self::push_with_id)).
    pub fn push_embedded(
        &mut self,
        id: Option<&str>,
        request: EmbeddedRequest,
    ) -> Result<usize, ClientError> {
        let id = match id {
            None => None,
            Some(id) => {
                if id.is_empty() || id.chars().any(char::is_control) {
                    return Err(ClientError::InvalidBatch(format!(
                        "Content-ID {id:?} must be non-empty and without control characters"
                    )));
                }
                if let Some(&first) = self.ids.get(id) {
                    return Err(ClientError::DuplicateId {
                        id: id.to_owned(),
                        first,
                    });
                }
                self.ids.insert(id.to_owned(), self.parts.len());
                Some(ContentId::new(id, true))
            }
        };
        Ok(self.push_part(id, request))
    }

    /// Adds a `GET` of `target` with the id `id`.
    pub fn get(&mut self, id: &str, target: &str) -> Result<usize, ClientError> {
        let uri: Uri = target
            .parse()
            .map_err(|e| ClientError::InvalidBatch(format!("target {target:?}: {e}")))?;
        let mut request = Request::new(Bytes::new());
        *request.uri_mut() = uri;
        self.push_with_id(id, request)
    }

    fn push_part(&mut self, id: Option<ContentId>, request: EmbeddedRequest) -> usize {
        self.parts.push(Part { id, request });
        self.parts.len() - 1
    }

    /// Parts so far.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// No parts yet: such a batch cannot be sent.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The boundary the body will use.
    pub fn boundary(&self) -> &str {
        &self.boundary
    }

    /// The `Content-Type` and body of the batch request, to send it some other way.
    pub fn finish(self) -> (String, Bytes) {
        let rendered = self.render();
        (rendered.content_type, rendered.body)
    }

    pub(crate) fn render(self) -> Rendered {
        if self.format == Format::Json {
            return self.render_json();
        }
        let size: usize = self
            .parts
            .iter()
            .map(|p| p.request.body.len() + p.request.target.len() + 256)
            .sum();
        let mut body = BytesMut::with_capacity(size + 64);
        let parts = self.parts.len();
        for mut part in self.parts {
            for name in self.defaults.keys() {
                if !part.request.headers.contains_key(name) {
                    for value in self.defaults.get_all(name) {
                        part.request.headers.append(name.clone(), value.clone());
                    }
                }
            }
            write_request_part(&mut body, &self.boundary, part.id.as_ref(), &part.request);
        }
        write_close(&mut body, &self.boundary);
        Rendered {
            content_type: format!("multipart/mixed; boundary={}", self.boundary),
            body: body.freeze(),
            ids: self.ids,
            parts,
        }
    }
}

impl BatchBuilder {
    /// `{"requests":[...]}`: each part with its id (its position from 1 when it has none), method, url, the
    /// headers it has after the defaults, and its body encoded by its content type.
    fn render_json(mut self) -> Rendered {
        let mut out =
            Vec::with_capacity(self.parts.iter().map(|p| p.request.body.len() + 128).sum());
        out.extend_from_slice(b"{\"requests\":[");
        let parts = self.parts.len();
        for (index, mut part) in std::mem::take(&mut self.parts).into_iter().enumerate() {
            for name in self.defaults.keys() {
                if !part.request.headers.contains_key(name) {
                    for value in self.defaults.get_all(name) {
                        part.request.headers.append(name.clone(), value.clone());
                    }
                }
            }
            let id = match part.id {
                Some(id) => id.id().to_owned(),
                None => {
                    let mut id = (index + 1).to_string();
                    while self.ids.contains_key(&id) {
                        id.push('_');
                    }
                    self.ids.insert(id.clone(), index);
                    id
                }
            };
            if index > 0 {
                out.push(b',');
            }
            write_json_request(&mut out, &id, part.request);
        }
        out.extend_from_slice(b"]}");
        Rendered {
            content_type: "application/json".to_owned(),
            body: Bytes::from(out),
            ids: self.ids,
            parts,
        }
    }
}

/// One element of `requests`.
fn write_json_request(out: &mut Vec<u8>, id: &str, mut request: EmbeddedRequest) {
    let string = |s: &str| serde_json::to_string(s).expect("a string serialises");
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(string(id).as_bytes());
    out.extend_from_slice(b",\"method\":");
    out.extend_from_slice(string(request.method.as_str()).as_bytes());
    out.extend_from_slice(b",\"url\":");
    out.extend_from_slice(string(&request.target).as_bytes());
    let body = if request.body.is_empty() {
        None
    } else {
        let content_type = request
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match content_type.as_deref().map(BodyEncoding::of) {
            Some(BodyEncoding::Json) | None
                if serde_json::from_slice::<serde::de::IgnoredAny>(&request.body).is_ok() =>
            {
                request
                    .headers
                    .entry(CONTENT_TYPE)
                    .or_insert(HeaderValue::from_static("application/json"));
                Some(request.body.to_vec())
            }
            Some(BodyEncoding::Text) if std::str::from_utf8(&request.body).is_ok() => {
                Some(string(std::str::from_utf8(&request.body).expect("checked")).into_bytes())
            }
            _ => {
                if content_type.is_none()
                    || content_type.as_deref().map(BodyEncoding::of) != Some(BodyEncoding::Base64)
                {
                    // A body its declared type cannot carry in JSON goes as bytes, and says so.
                    request.headers.insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                }
                Some(string(&URL_SAFE_NO_PAD.encode(&request.body)).into_bytes())
            }
        }
    };
    if !request.headers.is_empty() {
        out.extend_from_slice(b",\"headers\":{");
        for (i, name) in request.headers.keys().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let value: Vec<String> = request
                .headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            out.extend_from_slice(string(name.as_str()).as_bytes());
            out.push(b':');
            out.extend_from_slice(string(&value.join(", ")).as_bytes());
        }
        out.push(b'}');
    }
    if let Some(body) = body {
        out.extend_from_slice(b",\"body\":");
        out.extend_from_slice(&body);
    }
    out.push(b'}');
}

/// How a body is written in a JSON batch, by its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyEncoding {
    /// `application/json`, `*/*+json`: the JSON value.
    Json,
    /// `text/*`: a string.
    Text,
    /// Anything else: base64url.
    Base64,
}

impl BodyEncoding {
    pub(crate) fn of(content_type: &str) -> BodyEncoding {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if essence == "application/json" || essence.ends_with("+json") {
            BodyEncoding::Json
        } else if essence.starts_with("text/") {
            BodyEncoding::Text
        } else {
            BodyEncoding::Base64
        }
    }
}

/// An `http::Request` as a part: its target is the path and query, or the whole URI if it is absolute.
pub(crate) fn embedded(request: Request<Bytes>) -> EmbeddedRequest {
    let (head, body) = request.into_parts();
    let target = if head.uri.scheme().is_some() {
        head.uri.to_string()
    } else {
        head.uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned())
    };
    EmbeddedRequest {
        method: head.method,
        target,
        headers: head.headers,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchgate_wire::{PartLimits, PartSplitter, parse_part};
    use http::Method;

    fn parts_of(batch: BatchBuilder) -> Vec<batchgate_wire::ParsedPart> {
        let (content_type, body) = batch.finish();
        let boundary = batchgate_wire::boundary_from_content_type(&content_type).unwrap();
        let mut splitter = PartSplitter::new(&boundary, u64::MAX);
        splitter.push(&body);
        let mut out = Vec::new();
        while let Some(raw) = splitter.next_part().unwrap() {
            out.push(parse_part(
                &raw,
                PartLimits {
                    max_headers: 64,
                    max_header_bytes: 8192,
                },
            ));
        }
        splitter.finish().unwrap();
        out
    }

    #[test]
    fn any_method_headers_body_and_defaults() {
        let mut batch = BatchBuilder::with_boundary("b");
        batch.default_header(
            HeaderName::from_static("x-tenant"),
            HeaderValue::from_static("t1"),
        );
        batch.default_header(
            HeaderName::from_static("accept"),
            HeaderValue::from_static("a/b"),
        );
        batch
            .push_with_id(
                "p",
                Request::patch("/r/1?x=y")
                    .header("accept", "text/plain")
                    .body(Bytes::from_static(b"{\"a\":1}"))
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(
            batch.push(
                Request::delete("http://api.example/r/2")
                    .body(Bytes::new())
                    .unwrap()
            ),
            1
        );
        let parts = parts_of(batch);
        let first = parts[0].request.as_ref().unwrap();
        assert_eq!(parts[0].content_id, Some(ContentId::parse("<p>")));
        assert_eq!(first.method, Method::PATCH);
        assert_eq!(first.target, "/r/1?x=y");
        assert_eq!(first.headers["accept"], "text/plain", "the part's own wins");
        assert_eq!(first.headers["x-tenant"], "t1");
        assert_eq!(&first.body[..], b"{\"a\":1}");
        let second = parts[1].request.as_ref().unwrap();
        assert_eq!(parts[1].content_id, None);
        assert_eq!(second.method, Method::DELETE);
        assert_eq!(second.target, "http://api.example/r/2");
        assert_eq!(second.headers["accept"], "a/b");
    }

    #[test]
    fn duplicate_and_bad_ids_are_refused() {
        let mut batch = BatchBuilder::new();
        assert_eq!(batch.get("a", "/1").unwrap(), 0);
        match batch.get("a", "/2") {
            Err(ClientError::DuplicateId { id, first }) => {
                assert_eq!((id.as_str(), first), ("a", 0))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            batch.get("x\r\ny", "/3"),
            Err(ClientError::InvalidBatch(_))
        ));
        assert_eq!(batch.len(), 1);
    }

    #[test]
    fn a_json_batch_names_every_request_and_encodes_bodies_by_type() {
        let mut batch = BatchBuilder::new();
        batch.format(Format::Json);
        // A part without an id gets its position, unless a named part took it.
        batch.push_with_id("2", req_with(None, b"")).unwrap();
        batch.push(req_with(Some("text/plain"), "h\u{e9}".as_bytes()));
        batch.push(req_with(None, &[0xff, 0x00]));
        batch.push(req_with(None, br#"{"a": 1}"#));
        let (content_type, body) = batch.finish();
        assert_eq!(content_type, "application/json");
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let requests = value["requests"].as_array().unwrap();
        let ids: Vec<&str> = requests.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["2", "2_", "3", "4"]);
        assert!(requests[0].get("body").is_none());
        assert_eq!(requests[1]["body"], "h\u{e9}");
        assert_eq!(requests[2]["body"], "_wA");
        assert_eq!(
            requests[2]["headers"]["content-type"],
            "application/octet-stream"
        );
        assert_eq!(requests[3]["body"], serde_json::json!({"a": 1}));
        assert_eq!(requests[3]["headers"]["content-type"], "application/json");
        assert!(
            body.windows(8).any(|w| w == br#"{"a": 1}"#),
            "the JSON body as written"
        );
    }

    fn req_with(content_type: Option<&str>, body: &[u8]) -> Request<Bytes> {
        let mut request = Request::post("/r");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.body(Bytes::copy_from_slice(body)).unwrap()
    }
}
