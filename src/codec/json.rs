//! JSON batches, as Microsoft Graph and OData 4.01 send them: `{"requests":[{"id","method","url",
//! "headers"?,"body"?,"dependsOn"?}]}` in, `{"responses":[{"id","status","headers","body"?}]}` out.
//!
//! The reader cuts the `requests` array element by element as the body streams in: a small scanner follows
//! strings, escapes and nesting, so only the element being read is buffered, never the whole body. Each
//! element is then deserialised on its own, borrowing from its bytes, so a JSON body goes upstream as the
//! bytes it was (a slice of the element, not a copy).
//!
//! Bodies are encoded by their content type, both ways: a JSON value for a JSON type, a string for `text/*`,
//! base64url for anything else (standard base64 and padding are accepted on the way in).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Part, Rendered};
use crate::error::PartError;
use crate::stack::UpstreamResponse;
use batchgate_wire::{ContentId, EmbeddedRequest, PartLimits, RequestError};

/// Nesting the scanner follows; serde_json refuses deeper elements on its own (its recursion limit is 128).
const MAX_DEPTH: usize = 128;

/// A body at least this large goes out as its upstream sent it, rather than copied into its reply element.
const ZERO_COPY_BODY: usize = 16 * 1024;

/// Why a JSON batch is refused as a whole; the error body names the byte offset or the JSON path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JsonError {
    /// Not JSON, or not the shape of a batch, at this byte of the body.
    #[error("malformed JSON batch at byte {offset}: {reason}")]
    Syntax { offset: u64, reason: String },
    /// A field of a request has the wrong type or value.
    #[error("{path}: {reason}")]
    Field { path: String, reason: String },
    /// The body is a JSON object without a `requests` array.
    #[error("the JSON batch has no \"requests\" array; send {{\"requests\": [...]}}")]
    NoRequests,
    /// An element of `requests` (or a value skipped beside it) is larger than `limits.max_part_bytes`.
    #[error("{path} is larger than the limit max_part_bytes = {limit} bytes")]
    PartTooLarge { path: String, limit: u64 },
}

impl JsonError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            JsonError::PartTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Where in the body the fault is, for the error body: `("offset", 123)` or `("path", "requests[3].id")`.
    pub(crate) fn location(&self) -> Option<(&'static str, serde_json::Value)> {
        match self {
            JsonError::Syntax { offset, .. } => Some(("offset", (*offset).into())),
            JsonError::Field { path, .. } | JsonError::PartTooLarge { path, .. } => {
                Some(("path", path.as_str().into()))
            }
            JsonError::NoRequests => None,
        }
    }

    fn field(path: String, reason: impl Into<String>) -> JsonError {
        JsonError::Field {
            path,
            reason: reason.into(),
        }
    }
}

/// Where the scanner is in the batch's outer object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the opening `{`.
    Start,
    /// Before a member's key (`first`: right after `{`, where `}` may close an empty object).
    Key { first: bool },
    /// After a key, before its `:`; `requests` says whether the key was `requests`.
    Colon { requests: bool },
    /// Before a member's value.
    Value { requests: bool },
    /// Inside `requests`, before an element (`first`: right after `[`).
    Element { first: bool },
    /// After an element, before `,` or `]`.
    AfterElement,
    /// After a member's value, before `,` or `}`.
    AfterMember,
    /// After the closing `}`.
    Closed,
}

/// How far the scanner has followed the value at the front of the buffer.
#[derive(Debug, Default, Clone, Copy)]
struct Cut {
    /// Bytes of the value scanned so far.
    scanned: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

/// Reads requests out of a JSON batch body as its bytes arrive.
#[derive(Debug)]
pub(crate) struct PartReader {
    state: State,
    /// Bytes not consumed yet: at most one element (bounded by `max_part_bytes`) and what follows it.
    buf: BytesMut,
    /// The body offset of `buf[0]`.
    offset: u64,
    cut: Cut,
    /// Whether the `requests` member was seen.
    requests: bool,
    /// Elements read so far.
    index: usize,
    /// Each id read so far (lower-cased: Graph compares ids without letter case), to its index.
    ids: HashMap<String, usize>,
    max_part_bytes: u64,
    limits: PartLimits,
}

impl PartReader {
    pub(crate) fn new(max_part_bytes: u64, limits: PartLimits) -> PartReader {
        PartReader {
            state: State::Start,
            buf: BytesMut::new(),
            offset: 0,
            cut: Cut::default(),
            requests: false,
            index: 0,
            ids: HashMap::new(),
            max_part_bytes,
            limits,
        }
    }

    /// Takes the next piece of the body.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Checks that the body ended where a batch may end.
    pub(crate) fn finish(&self) -> Result<(), JsonError> {
        match self.state {
            State::Closed if self.requests => Ok(()),
            State::Closed => Err(JsonError::NoRequests),
            _ => Err(self.syntax(
                self.buf.len(),
                "the body ends before the batch's closing brace",
            )),
        }
    }

    /// The next complete request; `None` when more bytes are needed or the body is closed.
    pub(crate) fn next_part(&mut self) -> Result<Option<Part>, JsonError> {
        loop {
            // White space may come between any two tokens, and after the closing brace.
            self.skip_space();
            let Some(&byte) = self.buf.first() else {
                return Ok(None);
            };
            match self.state {
                State::Start => {
                    self.expect(byte, b'{', "a batch is a JSON object: expected `{`")?;
                    self.state = State::Key { first: true };
                }
                State::Key { first } => {
                    if first && byte == b'}' {
                        self.consume(1);
                        self.state = State::Closed;
                        continue;
                    }
                    if byte != b'"' {
                        return Err(self.syntax(0, "expected a member name in double quotes"));
                    }
                    let Some(key) = self.cut_value(|| "the batch's member name".to_owned())? else {
                        return Ok(None);
                    };
                    let start = self.offset - key.len() as u64;
                    let key: String = serde_json::from_str(utf8(&key, start)?)
                        .map_err(|e| syntax_in(start, &key, &e))?;
                    let requests = key == "requests";
                    if requests && self.requests {
                        return Err(JsonError::field(
                            "requests".to_owned(),
                            "appears twice; send one array",
                        ));
                    }
                    self.state = State::Colon { requests };
                }
                State::Colon { requests } => {
                    self.expect(byte, b':', "expected `:` after the member name")?;
                    self.state = State::Value { requests };
                }
                State::Value { requests: true } => {
                    if byte != b'[' {
                        return Err(JsonError::field(
                            "requests".to_owned(),
                            "must be an array of request objects",
                        ));
                    }
                    self.consume(1);
                    self.requests = true;
                    self.state = State::Element { first: true };
                }
                State::Value { requests: false } => {
                    // Members other than `requests` are not ours: checked as JSON, then let go.
                    let Some(value) = self.cut_value(|| "a member of the batch".to_owned())? else {
                        return Ok(None);
                    };
                    let start = self.offset - value.len() as u64;
                    serde_json::from_str::<serde::de::IgnoredAny>(utf8(&value, start)?)
                        .map_err(|e| syntax_in(start, &value, &e))?;
                    self.state = State::AfterMember;
                }
                State::Element { first } => {
                    if first && byte == b']' {
                        self.consume(1);
                        self.state = State::AfterMember;
                        continue;
                    }
                    if byte != b'{' {
                        return Err(JsonError::field(
                            format!("requests[{}]", self.index),
                            "must be an object",
                        ));
                    }
                    let index = self.index;
                    let Some(element) = self.cut_value(|| format!("requests[{index}]"))? else {
                        return Ok(None);
                    };
                    let start = self.offset - element.len() as u64;
                    let part = self.request(element, start)?;
                    self.index += 1;
                    self.state = State::AfterElement;
                    return Ok(Some(part));
                }
                State::AfterElement => match byte {
                    b',' => {
                        self.consume(1);
                        self.state = State::Element { first: false };
                    }
                    b']' => {
                        self.consume(1);
                        self.state = State::AfterMember;
                    }
                    _ => return Err(self.syntax(0, "expected `,` or `]` after a request")),
                },
                State::AfterMember => match byte {
                    b',' => {
                        self.consume(1);
                        self.state = State::Key { first: false };
                    }
                    b'}' => {
                        self.consume(1);
                        self.state = State::Closed;
                    }
                    _ => return Err(self.syntax(0, "expected `,` or `}` after a member")),
                },
                State::Closed => {
                    return Err(self.syntax(0, "bytes follow the batch's closing brace"));
                }
            }
        }
    }

    /// Drops white space at the front of the buffer.
    fn skip_space(&mut self) {
        let space = self
            .buf
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            .count();
        self.consume(space);
    }

    fn consume(&mut self, n: usize) {
        self.buf.advance(n);
        self.offset += n as u64;
    }

    fn expect(&mut self, byte: u8, wanted: u8, reason: &str) -> Result<(), JsonError> {
        if byte != wanted {
            return Err(self.syntax(0, reason));
        }
        self.consume(1);
        Ok(())
    }

    /// A syntax error `at` bytes into the buffer.
    fn syntax(&self, at: usize, reason: impl Into<String>) -> JsonError {
        JsonError::Syntax {
            offset: self.offset + at as u64,
            reason: reason.into(),
        }
    }

    /// The whole value at the front of the buffer, once all of it is in; `None` until then. Strings and
    /// containers are followed to their end; a bare scalar ends at the next delimiter.
    /// `path` names the value in an error.
    fn cut_value(&mut self, path: impl Fn() -> String) -> Result<Option<Bytes>, JsonError> {
        let mut cut = self.cut;
        let mut end = None;
        let bytes = &self.buf[..];
        let mut at = cut.scanned;
        let scalar = !matches!(bytes[0], b'{' | b'[' | b'"');
        while at < bytes.len() {
            let byte = bytes[at];
            if scalar && matches!(byte, b',' | b']' | b'}' | b' ' | b'\t' | b'\r' | b'\n') {
                end = Some(at);
                break;
            }
            // Checked byte by byte, so that the first fault in the value decides, whatever pieces it came in.
            if at as u64 >= self.max_part_bytes {
                return Err(JsonError::PartTooLarge {
                    path: path(),
                    limit: self.max_part_bytes,
                });
            }
            if scalar {
                at += 1;
                continue;
            }
            at += 1;
            if cut.in_string {
                if cut.escaped {
                    cut.escaped = false;
                } else if byte == b'\\' {
                    cut.escaped = true;
                } else if byte == b'"' {
                    cut.in_string = false;
                    if cut.depth == 0 {
                        end = Some(at);
                        break;
                    }
                }
                continue;
            }
            match byte {
                b'"' => cut.in_string = true,
                b'{' | b'[' => {
                    cut.depth += 1;
                    if cut.depth > MAX_DEPTH {
                        return Err(self.syntax(at - 1, format!("nested deeper than {MAX_DEPTH}")));
                    }
                }
                b'}' | b']' => {
                    // Which bracket closes which is serde_json's to check, once the value is cut.
                    cut.depth = cut.depth.saturating_sub(1);
                    if cut.depth == 0 {
                        end = Some(at);
                        break;
                    }
                }
                _ => {}
            }
        }
        match end {
            Some(end) => {
                self.cut = Cut::default();
                self.offset += end as u64;
                Ok(Some(self.buf.split_to(end).freeze()))
            }
            None => {
                cut.scanned = at;
                self.cut = cut;
                Ok(None)
            }
        }
    }

    /// Reads one element of `requests`, which starts at byte `start` of the body.
    fn request(&mut self, element: Bytes, start: u64) -> Result<Part, JsonError> {
        let index = self.index;
        let path = |field: &str| format!("requests[{index}].{field}");
        // Checked whole: serde_json does not check the strings it skips (unknown members) for UTF-8.
        let fields: Fields<'_> = serde_json::from_str(utf8(&element, start)?).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                syntax_in(start, &element, &e)
            } else {
                JsonError::field(format!("requests[{index}]"), strip_position(&e))
            }
        })?;
        if fields.atomicity_group.is_some() {
            return Err(JsonError::field(
                path("atomicityGroup"),
                "atomicity groups are not supported: a gateway cannot make requests to different \
                 upstreams all succeed or all fail",
            ));
        }
        if fields.condition.is_some() {
            return Err(JsonError::field(
                path("if"),
                "conditional requests (`if`) are not supported; use dependsOn",
            ));
        }
        let id = required(fields.id, || path("id"))?;
        if id.is_empty() || id.chars().any(char::is_control) {
            return Err(JsonError::field(
                path("id"),
                "must be a non-empty string without control characters",
            ));
        }
        let method = required(fields.method, || path("method"))?;
        let url = required(fields.url, || path("url"))?;
        if url.is_empty() || url.chars().any(char::is_control) {
            return Err(JsonError::field(
                path("url"),
                "must be a non-empty path without control characters",
            ));
        }
        let depends_on = match fields.depends_on {
            Some(raw) if raw.get() != "null" => self.depends_on(raw, &path("dependsOn"))?,
            _ => Box::default(),
        };
        if self.ids.insert(id.to_lowercase(), index).is_some() {
            return Err(JsonError::field(
                path("id"),
                format!(
                    "duplicate id {id:?} (ids are compared without letter case); each request needs \
                     its own id"
                ),
            ));
        }
        let request = match self.embedded(&element, fields, &method, url, &path) {
            Ok(request) => Ok(request),
            Err(Refusal::Batch(error)) => return Err(error),
            Err(Refusal::Part(error)) => Err(error),
        };
        Ok(Part {
            content_id: Some(ContentId::new(id.into_owned(), false)),
            request,
            depends_on,
        })
    }

    /// The request an element asks for: its method, target, headers and decoded body.
    fn embedded(
        &self,
        element: &Bytes,
        fields: Fields<'_>,
        method: &str,
        url: Cow<'_, str>,
        path: &dyn Fn(&str) -> String,
    ) -> Result<EmbeddedRequest, Refusal> {
        // Paths are made only for an error: on the way of every part, they would be an allocation each.
        let method = method_of(method, || path("method"))?;
        let mut headers = match fields.headers {
            Some(raw) if raw.get() != "null" => self.headers(element, raw, || path("headers"))?,
            _ => HeaderMap::new(),
        };
        let body = match fields.body {
            Some(raw) if raw.get() != "null" => body(element, raw, &mut headers, || path("body"))?,
            _ => Bytes::new(),
        };
        Ok(EmbeddedRequest {
            method,
            // OData urls may be relative to the service root, which is the gateway's `/`.
            target: if url.starts_with('/') || url.contains("://") {
                url.into_owned()
            } else {
                format!("/{url}")
            },
            headers,
            body,
        })
    }

    /// `dependsOn`: ids of earlier requests only, as their indexes.
    fn depends_on(&self, raw: &RawValue, path: &str) -> Result<Box<[usize]>, JsonError> {
        let ids: Vec<String> = serde_json::from_str(raw.get())
            .map_err(|_| JsonError::field(path.to_owned(), "must be an array of ids (strings)"))?;
        let mut indexes = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            let Some(&index) = self.ids.get(&id.to_lowercase()) else {
                return Err(JsonError::field(
                    format!("{path}[{i}]"),
                    format!(
                        "{id:?} is not the id of an earlier request; dependsOn may only name requests \
                         that come before it (no forward references, no cycles)"
                    ),
                ));
            };
            if !indexes.contains(&index) {
                indexes.push(index);
            }
        }
        Ok(indexes.into_boxed_slice())
    }

    /// `headers`: an object of strings. A header a part may not carry refuses the part, as in multipart. A
    /// value without escapes is a slice of the element, not a copy.
    fn headers(
        &self,
        element: &Bytes,
        raw: &RawValue,
        path: impl Fn() -> String,
    ) -> Result<HeaderMap, Refusal> {
        let pairs: BTreeMap<Name<'_>, &RawValue> = serde_json::from_str(raw.get())
            .map_err(|_| JsonError::field(path(), "must be an object of strings"))?;
        if pairs.len() > self.limits.max_headers {
            return Err(Refusal::Part(RequestError::TooManyHeaders {
                limit: self.limits.max_headers,
            }));
        }
        let mut headers = HeaderMap::with_capacity(pairs.len());
        let mut bytes = 0;
        for (Name(name), value) in pairs {
            let at = |reason: &str| JsonError::field(format!("{}.{name}", path()), reason);
            let value = text(value).map_err(|_| at("must be a string"))?;
            bytes += name.len() + value.len() + 4;
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| at("is not a valid header name"))?;
            let value = match value {
                Cow::Borrowed(value) => {
                    HeaderValue::from_maybe_shared(element.slice_ref(value.as_bytes()))
                }
                Cow::Owned(value) => HeaderValue::from_str(&value),
            }
            .map_err(|_| at("has characters a header value cannot hold"))?;
            if name == TRANSFER_ENCODING {
                return Err(Refusal::Part(RequestError::TransferEncoding));
            }
            headers.append(name, value);
        }
        if bytes > self.limits.max_header_bytes {
            return Err(Refusal::Part(RequestError::HeadTooLarge {
                limit: self.limits.max_header_bytes,
            }));
        }
        Ok(headers)
    }
}

/// The fields of one request, each kept as its JSON text so that a wrong one is reported by its path.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
    #[serde(borrow)]
    url: Option<&'a RawValue>,
    #[serde(borrow)]
    headers: Option<&'a RawValue>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
    #[serde(borrow, rename = "dependsOn")]
    depends_on: Option<&'a RawValue>,
    #[serde(borrow, rename = "atomicityGroup")]
    atomicity_group: Option<&'a RawValue>,
    #[serde(borrow, rename = "if")]
    condition: Option<&'a RawValue>,
}

/// A header's name in a request's `headers`: borrowed from the element unless it has escapes.
#[derive(Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct Name<'a>(#[serde(borrow)] Cow<'a, str>);

/// What a bad field costs: the whole batch, or only its part (as the same fault would in multipart).
enum Refusal {
    Batch(JsonError),
    Part(RequestError),
}

impl From<JsonError> for Refusal {
    fn from(error: JsonError) -> Refusal {
        Refusal::Batch(error)
    }
}

/// A required string field's text.
fn required<'a>(
    raw: Option<&'a RawValue>,
    path: impl Fn() -> String,
) -> Result<Cow<'a, str>, JsonError> {
    let raw = raw.ok_or_else(|| JsonError::field(path(), "is required"))?;
    text(raw).map_err(|_| JsonError::field(path(), "must be a string"))
}

/// A JSON string's text: borrowed from the element when it has no escapes (nearly always), unescaped into
/// its own string otherwise.
fn text(raw: &RawValue) -> serde_json::Result<Cow<'_, str>> {
    match serde_json::from_str::<&str>(raw.get()) {
        Ok(text) => Ok(Cow::Borrowed(text)),
        Err(_) => serde_json::from_str::<String>(raw.get()).map(Cow::Owned),
    }
}

/// `method`, in any letter case; CONNECT and TRACE are refused for the part, as in multipart.
fn method_of(method: &str, path: impl Fn() -> String) -> Result<Method, Refusal> {
    // Upper-cased into a copy only when it has lower case.
    let upper = if method.bytes().any(|b| b.is_ascii_lowercase()) {
        Cow::Owned(method.to_ascii_uppercase())
    } else {
        Cow::Borrowed(method)
    };
    let method = Method::from_bytes(upper.as_bytes())
        .map_err(|_| JsonError::field(path(), format!("{method:?} is not an HTTP method")))?;
    if method == Method::CONNECT || method == Method::TRACE {
        return Err(Refusal::Part(RequestError::MethodNotAllowed(method)));
    }
    Ok(method)
}

/// A request's `body`, decoded by its content type. Without a content type the body is JSON, and says so.
fn body(
    element: &Bytes,
    raw: &RawValue,
    headers: &mut HeaderMap,
    path: impl Fn() -> String,
) -> Result<Bytes, JsonError> {
    let kind = headers
        .get(CONTENT_TYPE)
        .map(|v| Encoding::of(v.to_str().unwrap_or_default()));
    match kind {
        None | Some(Encoding::Json) => {
            if kind.is_none() {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            // The value's own bytes, as a slice of the element: not re-serialised, not copied.
            Ok(element.slice_ref(raw.get().as_bytes()))
        }
        Some(Encoding::Text) => {
            let text: String = serde_json::from_str(raw.get()).map_err(|_| {
                JsonError::field(path(), "must be a string for a text/* content type")
            })?;
            Ok(Bytes::from(text))
        }
        Some(Encoding::Base64) => {
            let text: String = serde_json::from_str(raw.get()).map_err(|_| {
                JsonError::field(
                    path(),
                    "must be a base64url string for a content type that is neither JSON nor text/*",
                )
            })?;
            decode_base64(&text).map(Bytes::from).ok_or_else(|| {
                JsonError::field(
                    path(),
                    "is not base64url (or base64) for its non-JSON, non-text content type",
                )
            })
        }
    }
}

/// base64url or standard base64, padded or not.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(text)
        .or_else(|_| STANDARD_NO_PAD.decode(text))
        .ok()
}

/// How a body is written inside a JSON batch, by its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// `application/json`, `*/*+json`: the JSON value itself.
    Json,
    /// `text/*`: a string.
    Text,
    /// Anything else: base64url.
    Base64,
}

impl Encoding {
    /// Compared without letter case, in place (on every answer's way).
    fn of(content_type: &str) -> Encoding {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .as_bytes();
        let ends_with = |suffix: &[u8]| {
            essence.len() >= suffix.len()
                && essence[essence.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        };
        if essence.eq_ignore_ascii_case(b"application/json") || ends_with(b"+json") {
            Encoding::Json
        } else if essence.len() >= 5 && essence[..5].eq_ignore_ascii_case(b"text/") {
            Encoding::Text
        } else {
            Encoding::Base64
        }
    }
}

/// A value's bytes as text: JSON is UTF-8 throughout, skipped strings included.
fn utf8(value: &[u8], start: u64) -> Result<&str, JsonError> {
    std::str::from_utf8(value).map_err(|e| JsonError::Syntax {
        offset: start + e.valid_up_to() as u64,
        reason: "the body is not UTF-8".to_owned(),
    })
}

/// A serde_json error inside a value that starts at byte `start` of the body, as a syntax error there.
fn syntax_in(start: u64, value: &[u8], error: &serde_json::Error) -> JsonError {
    // serde_json counts lines and columns (1-based, in bytes); the body's offset is counted from them.
    let mut at = 0usize;
    for _ in 1..error.line() {
        match value[at..].iter().position(|&b| b == b'\n') {
            Some(newline) => at += newline + 1,
            None => break,
        }
    }
    at = (at + error.column().saturating_sub(1)).min(value.len());
    JsonError::Syntax {
        offset: start + at as u64,
        reason: strip_position(error),
    }
}

/// serde_json's message without its "at line L column C", which counts from the element, not the body.
fn strip_position(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message,
    }
}

/// Renders reply elements of `{"responses":[...]}`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReplyWriter;

impl ReplyWriter {
    pub(crate) fn content_type(&self) -> HeaderValue {
        HeaderValue::from_static("application/json")
    }

    /// What starts the reply.
    pub(crate) fn open(&self) -> Bytes {
        Bytes::from_static(b"{\"responses\":[")
    }

    /// What ends the reply.
    pub(crate) fn close(&self) -> Bytes {
        Bytes::from_static(b"]}")
    }

    /// One request answered by its upstream. `index` places the separator; the id is the request's, or
    /// for a multipart batch its Content-ID, or its position counted from 1.
    pub(crate) fn response(
        &self,
        index: usize,
        content_id: Option<&ContentId>,
        response: &UpstreamResponse,
    ) -> Rendered {
        element(
            index,
            content_id,
            response.status,
            &response.headers,
            &response.body,
        )
    }

    /// One failed request, with the gateway's JSON error body.
    pub(crate) fn error(
        &self,
        index: usize,
        content_id: Option<&ContentId>,
        error: &PartError,
    ) -> Rendered {
        element(
            index,
            content_id,
            error.status(),
            &error.headers(),
            &[error.body()],
        )
    }
}

/// One element of `responses`, with the `,` before it unless it is the first.
fn element(
    index: usize,
    content_id: Option<&ContentId>,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[Bytes],
) -> Rendered {
    let body_len: usize = body.iter().map(Bytes::len).sum();
    let mut head = Vec::with_capacity(128 + headers.len() * 48);
    if index > 0 {
        head.push(b',');
    }
    head.extend_from_slice(b"{\"id\":");
    match content_id {
        Some(id) => json_string(&mut head, id.id()),
        None => json_string(&mut head, &(index + 1).to_string()),
    }
    let _ = write!(head, ",\"status\":{},\"headers\":", status.as_u16());
    write_headers(&mut head, headers);
    if body_len == 0 {
        head.push(b'}');
        return Rendered::Whole(Bytes::from(head));
    }
    head.extend_from_slice(b",\"body\":");
    let encoding = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map_or(Encoding::Base64, Encoding::of);
    let encoding = match encoding {
        Encoding::Json if !is_json(body) => Encoding::Base64,
        Encoding::Text if !is_utf8(body) => Encoding::Base64,
        other => other,
    };
    match encoding {
        Encoding::Json if body_len >= ZERO_COPY_BODY => {
            let mut pieces = Vec::with_capacity(body.len() + 2);
            pieces.push(Bytes::from(head));
            pieces.extend(body.iter().cloned());
            pieces.push(Bytes::from_static(b"}"));
            return Rendered::Pieces(pieces);
        }
        Encoding::Json => body.iter().for_each(|piece| head.extend_from_slice(piece)),
        Encoding::Text => {
            let text = concat(body);
            json_string(
                &mut head,
                std::str::from_utf8(&text).expect("checked UTF-8"),
            );
        }
        Encoding::Base64 => {
            head.push(b'"');
            head.extend_from_slice(URL_SAFE_NO_PAD.encode(concat(body)).as_bytes());
            head.push(b'"');
        }
    }
    head.push(b'}');
    Rendered::Whole(Bytes::from(head))
}

/// Headers as a JSON object, names lower-case (as `http` keeps them); repeated names joined by `, `. The
/// framing headers describe the HTTP message, not the JSON element, and are left out.
fn write_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    out.push(b'{');
    let mut first = true;
    for name in headers.keys() {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        json_string(out, name.as_str());
        out.push(b':');
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(one), None) => json_string(out, &String::from_utf8_lossy(one.as_bytes())),
            _ => {
                let joined: Vec<_> = headers
                    .get_all(name)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()))
                    .collect();
                json_string(out, &joined.join(", "));
            }
        }
    }
    out.push(b'}');
}

/// `text` as a JSON string, escaped straight into `out`.
fn json_string(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(out, text).expect("writing to a Vec cannot fail");
}

fn concat(body: &[Bytes]) -> Vec<u8> {
    body.concat()
}

/// Whether the body's pieces together are UTF-8, checked where they lie: a character split between two
/// pieces is completed from the next.
fn is_utf8(body: &[Bytes]) -> bool {
    let mut carry: Vec<u8> = Vec::new();
    for piece in body {
        let mut piece: &[u8] = piece;
        while !carry.is_empty() {
            let Some((&first, rest)) = piece.split_first() else {
                break;
            };
            carry.push(first);
            piece = rest;
            match std::str::from_utf8(&carry) {
                Ok(_) => carry.clear(),
                Err(e) if e.error_len().is_some() => return false,
                Err(_) => {}
            }
        }
        match std::str::from_utf8(piece) {
            Ok(_) => {}
            Err(e) if e.error_len().is_none() => carry.extend_from_slice(&piece[e.valid_up_to()..]),
            Err(_) => return false,
        }
    }
    carry.is_empty()
}

/// Whether the body is one JSON value, read where it lies (a large body is in several pieces). UTF-8 is
/// checked first: serde_json does not check the strings it skips.
fn is_json(body: &[Bytes]) -> bool {
    if !is_utf8(body) {
        return false;
    }
    match body {
        [one] => serde_json::from_slice::<serde::de::IgnoredAny>(one).is_ok(),
        _ => {
            let reader = PiecesReader {
                pieces: body.iter().cloned().collect(),
            };
            serde_json::from_reader::<_, serde::de::IgnoredAny>(reader).is_ok()
        }
    }
}

/// Reads a body's pieces in order without joining them.
struct PiecesReader {
    pieces: std::collections::VecDeque<Bytes>,
}

impl Read for PiecesReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while let Some(front) = self.pieces.front_mut() {
            if front.is_empty() {
                self.pieces.pop_front();
                continue;
            }
            let n = out.len().min(front.len());
            out[..n].copy_from_slice(&front[..n]);
            front.advance(n);
            return Ok(n);
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PartLimits = PartLimits {
        max_headers: 8,
        max_header_bytes: 1024,
    };

    /// Every part of `body` fed `step` bytes at a time, or the error that refused it.
    fn read(body: &[u8], step: usize) -> Result<Vec<Part>, JsonError> {
        let mut reader = PartReader::new(4096, LIMITS);
        let mut parts = Vec::new();
        for chunk in body.chunks(step) {
            reader.push(chunk);
            while let Some(part) = reader.next_part()? {
                parts.push(part);
            }
        }
        reader.finish()?;
        Ok(parts)
    }

    const BATCH: &str = r#" { "other": {"x": [1, "]}\"" ]}, "requests" : [
        {"id": "1", "method": "post", "url": "/a", "body": {"s": "}]\\\"{"}},
        {"id": "2", "method": "GET", "url": "b?q=1", "dependsOn": ["1"], "unknown": null}
    ] , "more": true } "#;

    #[test]
    fn a_batch_reads_the_same_whatever_pieces_its_body_arrives_in() {
        for step in [1, 2, 3, 7, BATCH.len()] {
            let parts = read(BATCH.as_bytes(), step).unwrap();
            assert_eq!(parts.len(), 2, "step {step}");
            let first = parts[0].request.as_ref().unwrap();
            assert_eq!(first.method, Method::POST);
            assert_eq!(&first.body[..], br#"{"s": "}]\\\"{"}"#);
            assert_eq!(first.headers[CONTENT_TYPE], "application/json");
            let second = parts[1].request.as_ref().unwrap();
            assert_eq!(second.target, "/b?q=1");
            assert_eq!(&*parts[1].depends_on, &[0]);
            assert_eq!(parts[1].content_id.as_ref().unwrap().id(), "2");
        }
    }

    #[test]
    fn the_reader_holds_one_element_not_the_body() {
        let element = r#"{"id":"ID","method":"GET","url":"/a"}"#;
        let mut reader = PartReader::new(4096, LIMITS);
        reader.push(b"{\"requests\":[");
        let mut most = 0;
        for i in 0..1000 {
            let separator = if i == 0 { "" } else { "," };
            reader.push(format!("{separator}{}", element.replace("ID", &i.to_string())).as_bytes());
            while reader.next_part().unwrap().is_some() {}
            most = most.max(reader.buf.len());
        }
        reader.push(b"]}");
        assert!(reader.next_part().unwrap().is_none());
        reader.finish().unwrap();
        assert!(most <= element.len() + 4, "held {most} bytes");
    }

    #[test]
    fn malformed_json_is_refused_at_its_offset_in_any_pieces() {
        let cases: [(&str, u64); 8] = [
            ("[]", 0),
            (r#"{"requests":[] x"#, 15),
            (
                r#"{"requests":[{"id":"1","method":"GET","url":"/a",}]}"#,
                49,
            ),
            (r#"{"requests":[{"id":"1","method":"GET","url":"/a"} {"#, 50),
            (r#"{"requests":[{"id":"1","method":"GET","url":"/a"}]"#, 50),
            (r#"{"requests" 1}"#, 12),
            (r#"{"other": tru, "requests": []}"#, 12),
            (
                "{\"requests\":[{\"id\":\"1\",\n\"method\":\"GET\",\n  \"url\": x}]}",
                49,
            ),
        ];
        for (body, offset) in cases {
            for step in [1, 5, body.len()] {
                match read(body.as_bytes(), step) {
                    Err(JsonError::Syntax { offset: at, .. }) => {
                        assert_eq!(at, offset, "{body} in steps of {step}")
                    }
                    other => panic!("{body}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_scanner_nesting_too_deep_stops_at_the_limit() {
        let body = format!("{{\"requests\":[{}", "[".repeat(10_000));
        let error = read(body.as_bytes(), 64).err().unwrap();
        assert!(
            matches!(error, JsonError::Field { .. } | JsonError::Syntax { .. }),
            "{error:?}"
        );
        let body = format!("{{\"x\":{}", "[".repeat(10_000));
        let error = read(body.as_bytes(), 64).err().unwrap();
        assert!(matches!(error, JsonError::Syntax { .. }), "{error:?}");
    }

    #[test]
    fn connect_trace_and_transfer_encoding_refuse_the_part_not_the_batch() {
        let body = r#"{"requests":[{"id":"1","method":"trace","url":"/a"},
            {"id":"2","method":"POST","url":"/a","headers":{"transfer-encoding":"chunked"}}]}"#;
        let parts = read(body.as_bytes(), 9).unwrap();
        assert!(matches!(
            parts[0].request,
            Err(RequestError::MethodNotAllowed(_))
        ));
        assert_eq!(parts[1].request, Err(RequestError::TransferEncoding));
    }

    #[test]
    fn reply_elements_are_separated_and_encoded_by_content_type() {
        let writer = ReplyWriter;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("2"));
        let text = |r: Rendered| match r {
            Rendered::Whole(b) => String::from_utf8(b.to_vec()).unwrap(),
            Rendered::Pieces(p) => String::from_utf8(p.concat()).unwrap(),
        };
        let id = ContentId::new("x\"y", false);
        let first = element(
            0,
            Some(&id),
            StatusCode::OK,
            &headers,
            &[Bytes::from("h\u{e9}")],
        );
        assert_eq!(
            text(first),
            r#"{"id":"x\"y","status":200,"headers":{"content-type":"text/plain"},"body":"hé"}"#
        );
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let second = element(
            1,
            None,
            StatusCode::OK,
            &headers,
            &[Bytes::from_static(&[0xff, 0])],
        );
        assert_eq!(
            text(second),
            r#",{"id":"2","status":200,"headers":{"content-type":"application/octet-stream"},"body":"_wA"}"#
        );
        let whole = [writer.open(), writer.close()].concat();
        assert_eq!(whole, b"{\"responses\":[]}");
    }

    #[test]
    fn utf8_is_checked_across_pieces_and_a_json_type_that_is_not_utf8_goes_as_base64url() {
        let e_acute = "\u{e9}".as_bytes();
        let split = [
            Bytes::from_static(b"\"a"),
            Bytes::copy_from_slice(&e_acute[..1]),
            Bytes::copy_from_slice(&e_acute[1..]),
            Bytes::from_static(b"\""),
        ];
        assert!(is_utf8(&split) && is_json(&split));
        let cut = [
            Bytes::from_static(b"\"a"),
            Bytes::copy_from_slice(&e_acute[..1]),
        ];
        assert!(!is_utf8(&cut));
        // Invalid UTF-8 inside a string serde_json would only skip.
        let hidden = [Bytes::from_static(b"{\"k\":\"\xff\"}")];
        assert!(!is_json(&hidden));
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let Rendered::Whole(reply) = element(0, None, StatusCode::OK, &headers, &hidden) else {
            panic!("a small reply is whole")
        };
        let value: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(value["body"], "eyJrIjoi_yJ9");
    }
}
