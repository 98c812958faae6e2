//! One batch part: its MIME headers (Content-ID) and the embedded HTTP request inside it.
//!
//! Parsing is liberal where real clients differ (LF or CRLF, a missing HTTP version, a missing blank line
//! after the head, POST/PUT/PATCH bodies without Content-Length, folded Content-IDs) and strict where a
//! difference could smuggle something past the gateway (Transfer-Encoding, conflicting Content-Length, obs-fold
//! and control characters in the embedded request's headers, methods that are not tokens, bytes after the
//! head of a GET/HEAD/DELETE/OPTIONS without Content-Length, TRACE and CONNECT in any letter case).

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderName, HeaderValue, TRANSFER_ENCODING};
use http::{HeaderMap, Method};

use super::ContentId;

/// Bounds applied while parsing one part.
#[derive(Debug, Clone, Copy)]
pub struct PartLimits {
    /// Header lines in the embedded request.
    pub max_headers: usize,
    /// Bytes of the part's MIME header block, and of the embedded request's head.
    pub max_header_bytes: usize,
}

/// The request a part carries, parsed into types: nothing here can hold an invalid method or header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedRequest {
    /// Never CONNECT or TRACE, in any letter case.
    pub method: Method,
    /// The request target exactly as sent (origin-form or absolute-form); routing normalises it.
    pub target: String,
    /// The embedded request's headers, in order; never `Transfer-Encoding`.
    pub headers: HeaderMap,
    /// `Content-Length` bytes; without it, the rest of the part (always empty for GET/HEAD/DELETE/OPTIONS).
    pub body: Bytes,
}

/// Why a part's embedded request was refused. The part gets a 400; the batch goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Nothing but line breaks after the MIME headers.
    #[error("the part is empty: it carries no embedded request")]
    Empty,
    /// A Content-ID that would inject control characters into the reply's part headers.
    #[error("the part's Content-ID has control characters (CR, LF, NUL...)")]
    BadContentId,
    /// The part's MIME header block exceeds [`PartLimits::max_header_bytes`].
    #[error("the part's MIME headers are larger than max_part_header_bytes = {limit}")]
    MimeHeadersTooLarge {
        /// The limit in bytes, named in the message.
        limit: usize,
    },
    /// The part declares a Content-Type other than `application/http` (the value as sent).
    #[error("part Content-Type is {0:?}; parts must be application/http")]
    NotApplicationHttp(String),
    /// The request line is not `METHOD SP target [SP HTTP/1.x]`, or its target has control characters.
    #[error("request line {line:?} is malformed: expected METHOD SP target [SP HTTP/1.x]")]
    RequestLine {
        /// The offending line, lossily decoded.
        line: String,
    },
    /// The method is not an HTTP token.
    #[error("method {0:?} is not a valid HTTP method token")]
    BadMethod(String),
    /// CONNECT or TRACE, in any letter case: neither may be tunnelled through the gateway.
    #[error("method {0} is not allowed in a batch part")]
    MethodNotAllowed(Method),
    /// A version other than HTTP/1.1 or HTTP/1.0 on the request line.
    #[error("HTTP version {0:?} is not supported in a part; use HTTP/1.1 or leave it out")]
    BadVersion(String),
    /// More header lines than [`PartLimits::max_headers`].
    #[error("embedded request has more than max_part_headers = {limit} header lines")]
    TooManyHeaders {
        /// The limit in header lines, named in the message.
        limit: usize,
    },
    /// The request line and headers together exceed [`PartLimits::max_header_bytes`].
    #[error("embedded request head is larger than max_part_header_bytes = {limit}")]
    HeadTooLarge {
        /// The limit in bytes, named in the message.
        limit: usize,
    },
    /// A header that httparse or `http` refuses: folded lines, control characters, bad names.
    #[error(
        "embedded request headers are malformed ({0}); folded lines and control characters are refused"
    )]
    BadHeaders(String),
    /// Any `Transfer-Encoding`: chunked framing inside a part is a smuggling vector, so it is never read.
    #[error(
        "Transfer-Encoding is not accepted in a part; send Content-Length or let the part end the body"
    )]
    TransferEncoding,
    /// `Content-Length` values that are not plain digits or do not all agree.
    #[error("Content-Length values disagree or are not numbers: {0:?}")]
    BadContentLength(String),
    /// The part ends before the body `Content-Length` declares.
    #[error("Content-Length says {declared} bytes but the part holds only {available}")]
    ShortBody {
        /// Bytes `Content-Length` promised.
        declared: u64,
        /// Bytes the part holds after the head.
        available: usize,
    },
    /// Non-white-space bytes after the declared body (the count).
    #[error("{0} bytes follow the body that Content-Length declared")]
    TrailingBytes(usize),
    /// A body-less method with bytes after its head and no `Content-Length` to say they are a body.
    #[error(
        "{method} part has {bytes} bytes after its head but no Content-Length; a body on \
         GET/HEAD/DELETE/OPTIONS needs Content-Length (it is never forwarded as a guess)"
    )]
    BodyWithoutContentLength {
        /// GET, HEAD, DELETE or OPTIONS, as sent.
        method: Method,
        /// Bytes found after the head.
        bytes: usize,
    },
}

/// A part split into what identifies it and what it asks for. The Content-ID survives a bad request so that
/// the error reply can still be matched by the client.
#[derive(Debug)]
pub struct ParsedPart {
    /// The part's Content-ID, if it sent one; `None` too when the MIME headers could not be read.
    pub content_id: Option<ContentId>,
    /// The embedded request, or why the part gets a 400.
    pub request: Result<EmbeddedRequest, RequestError>,
}

/// Parses one part as cut by the splitter.
pub fn parse_part(part: &[u8], limits: PartLimits) -> ParsedPart {
    let mut content_id = None;
    let mut content_type = None;
    let mut bad_content_id = false;
    let split = for_each_mime_header(part, limits.max_header_bytes, |name, value| {
        if name.eq_ignore_ascii_case("content-id") {
            // It would be echoed into the reply's part headers: refused rather than guessed at.
            bad_content_id |= value.chars().any(|c| c.is_control() && c != '\t');
            content_id = Some(ContentId::parse(&value));
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value);
        }
    });
    let content = match split {
        Ok(content) if !bad_content_id => content,
        Ok(_) => {
            return ParsedPart {
                content_id: None,
                request: Err(RequestError::BadContentId),
            };
        }
        Err(e) => {
            return ParsedPart {
                content_id: None,
                request: Err(e),
            };
        }
    };
    let request = match content_type {
        Some(ct) if !is_application_http(&ct) => {
            Err(RequestError::NotApplicationHttp(ct.into_owned()))
        }
        _ => parse_request(content, limits),
    };
    ParsedPart {
        content_id,
        request,
    }
}

fn is_application_http(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/http")
}

/// A part's MIME headers, unfolded, in order.
pub type MimeHeaders = Vec<(String, String)>;

/// Splits the part's MIME header block (unfolded, RFC 5322) from its content. A part whose first line is not
/// a header line has no header block at all.
pub fn split_mime_headers(part: &[u8], max: usize) -> Result<(MimeHeaders, &[u8]), RequestError> {
    let mut headers = Vec::new();
    let content = for_each_mime_header(part, max, |name, value| {
        headers.push((name.to_owned(), value.into_owned()));
    })?;
    Ok((headers, content))
}

/// [`split_mime_headers`] without copying: each header, unfolded, is handed to `each` in order, borrowed
/// from the part unless unfolding or a repaired encoding made a copy. Returns the part's content.
fn for_each_mime_header<'a>(
    part: &'a [u8],
    max: usize,
    mut each: impl FnMut(&'a str, Cow<'a, str>),
) -> Result<&'a [u8], RequestError> {
    // The header read last: continuation lines may still follow it.
    let mut last: Option<(&'a str, Cow<'a, str>)> = None;
    let mut pos = 0;
    let content = loop {
        let line_end = memchr::memchr(b'\n', &part[pos..]).map(|i| pos + i);
        let (line, next) = match line_end {
            Some(e) => (trim_cr(&part[pos..e]), e + 1),
            None => (trim_cr(&part[pos..]), part.len()),
        };
        if pos > max {
            return Err(RequestError::MimeHeadersTooLarge { limit: max });
        }
        if line.is_empty() {
            // The blank line ending the header block (or a part that opens with it).
            break &part[next.min(part.len())..];
        }
        if matches!(line[0], b' ' | b'\t')
            && let Some((_, value)) = &mut last
        {
            // Folded continuation: unfolding removes the line break and keeps the white space.
            value.to_mut().push_str(&String::from_utf8_lossy(line));
            pos = next;
            continue;
        }
        match header_line(line) {
            Some(header) => {
                if let Some((name, value)) = last.replace(header) {
                    each(name, value);
                }
            }
            // Not a header: the part has no header block, this is already the request line.
            None if last.is_none() => return Ok(part),
            None => break &part[pos..],
        }
        // After a last line without a line break, `next` is the end of the part: the next round checks the
        // size of the block and finds an empty line.
        pos = next;
    };
    if let Some((name, value)) = last {
        each(name, value);
    }
    Ok(content)
}

/// `Name: value` with a token name, or `None`.
fn header_line(line: &[u8]) -> Option<(&str, Cow<'_, str>)> {
    let colon = memchr::memchr(b':', line)?;
    let name = std::str::from_utf8(&line[..colon]).ok()?;
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return None;
    }
    let value = match String::from_utf8_lossy(&line[colon + 1..]) {
        Cow::Borrowed(value) => Cow::Borrowed(value.trim()),
        Cow::Owned(value) => Cow::Owned(value.trim().to_owned()),
    };
    Some((name, value))
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses the embedded request: request line by hand (httparse refuses a missing version), headers with
/// `httparse::parse_headers`, body by Content-Length or to the end of the part.
pub fn parse_request(content: &[u8], limits: PartLimits) -> Result<EmbeddedRequest, RequestError> {
    // Blank lines before the request line are tolerated (RFC 9112 2.2).
    let start = content
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .ok_or(RequestError::Empty)?;
    let content = &content[start..];
    let line_end = memchr::memchr(b'\n', content);
    let line = trim_cr(&content[..line_end.unwrap_or(content.len())]);
    let rest = line_end.map_or(&content[content.len()..], |e| &content[e + 1..]);
    if line.len() > limits.max_header_bytes {
        return Err(RequestError::HeadTooLarge {
            limit: limits.max_header_bytes,
        });
    }
    let (method, target) = parse_request_line(line)?;

    // The request line and the header block share one budget.
    let head_limits = PartLimits {
        max_header_bytes: limits.max_header_bytes - line.len(),
        ..limits
    };
    let (headers, body_start) = parse_headers(rest, head_limits).map_err(|e| match e {
        RequestError::HeadTooLarge { .. } => RequestError::HeadTooLarge {
            limit: limits.max_header_bytes,
        },
        other => other,
    })?;
    let body = body(&rest[body_start..], &headers, &method)?;
    Ok(EmbeddedRequest {
        method,
        target,
        headers,
        body: Bytes::copy_from_slice(body),
    })
}

fn parse_request_line(line: &[u8]) -> Result<(Method, String), RequestError> {
    let bad = || RequestError::RequestLine {
        line: String::from_utf8_lossy(line).into_owned(),
    };
    let text = std::str::from_utf8(line).map_err(|_| bad())?;
    let mut words = text.split([' ', '\t']).filter(|w| !w.is_empty());
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return Err(bad());
    };
    if let Some(version) = words.next()
        && !matches!(version, "HTTP/1.1" | "HTTP/1.0")
    {
        return Err(RequestError::BadVersion(version.to_owned()));
    }
    if words.next().is_some() {
        return Err(bad());
    }
    if !method.bytes().all(is_token_byte) {
        return Err(RequestError::BadMethod(method.to_owned()));
    }
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| RequestError::BadMethod(method.to_owned()))?;
    // Any letter case: an upstream that folds the case of methods would otherwise run `trace` as TRACE.
    if ["CONNECT", "TRACE"]
        .iter()
        .any(|m| method.as_str().eq_ignore_ascii_case(m))
    {
        return Err(RequestError::MethodNotAllowed(method));
    }
    if target.bytes().any(|b| b.is_ascii_control()) {
        return Err(bad());
    }
    Ok((method, target.to_owned()))
}

/// Parses the header block after the request line; returns the headers and where the body starts.
fn parse_headers(rest: &[u8], limits: PartLimits) -> Result<(HeaderMap, usize), RequestError> {
    let only_space = |b: &[u8]| b.iter().all(|c| c.is_ascii_whitespace());
    if only_space(rest) {
        return Ok((HeaderMap::new(), rest.len()));
    }
    let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
    match httparse::parse_headers(rest, &mut slots) {
        Ok(httparse::Status::Complete((head_len, parsed))) => {
            if head_len > limits.max_header_bytes {
                return Err(RequestError::HeadTooLarge {
                    limit: limits.max_header_bytes,
                });
            }
            Ok((to_header_map(parsed)?, head_len))
        }
        Ok(httparse::Status::Partial) => {
            // The part ended inside the head: the client left out the blank line (the delimiter's line break
            // took it). Only then is the whole remainder the head.
            if rest.len() > limits.max_header_bytes {
                return Err(RequestError::HeadTooLarge {
                    limit: limits.max_header_bytes,
                });
            }
            let mut closed = Vec::with_capacity(rest.len() + 4);
            closed.extend_from_slice(rest);
            closed.extend_from_slice(if rest.ends_with(b"\n") {
                &b"\r\n"[..]
            } else {
                b"\r\n\r\n"
            });
            let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
            match httparse::parse_headers(&closed, &mut slots) {
                Ok(httparse::Status::Complete((_, parsed))) => {
                    Ok((to_header_map(parsed)?, rest.len()))
                }
                Ok(httparse::Status::Partial) => {
                    Err(RequestError::BadHeaders("incomplete head".into()))
                }
                Err(e) => Err(header_error(e, limits)),
            }
        }
        Err(e) => Err(header_error(e, limits)),
    }
}

fn header_error(e: httparse::Error, limits: PartLimits) -> RequestError {
    match e {
        httparse::Error::TooManyHeaders => RequestError::TooManyHeaders {
            limit: limits.max_headers,
        },
        other => RequestError::BadHeaders(other.to_string()),
    }
}

fn to_header_map(parsed: &[httparse::Header<'_>]) -> Result<HeaderMap, RequestError> {
    let mut map = HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| RequestError::BadHeaders(format!("header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| RequestError::BadHeaders(format!("value of {}", h.name)))?;
        map.append(name, value);
    }
    Ok(map)
}

/// The body: `Content-Length` bytes if declared (white space after it is the part's padding), else the rest
/// of the part. A body-less method (GET, HEAD, DELETE, OPTIONS, TRACE) without `Content-Length` has an empty
/// body if only white space is left, and is refused otherwise: what follows its head is never guessed to be
/// a body.
fn body<'a>(
    rest: &'a [u8],
    headers: &HeaderMap,
    method: &Method,
) -> Result<&'a [u8], RequestError> {
    if headers.contains_key(TRANSFER_ENCODING) {
        return Err(RequestError::TransferEncoding);
    }
    let mut declared: Option<u64> = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let text = value.to_str().unwrap_or("");
        for item in text.split(',') {
            let item = item.trim();
            let n = item
                .parse::<u64>()
                .ok()
                .filter(|_| !item.is_empty() && item.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| RequestError::BadContentLength(text.to_owned()))?;
            if declared.is_some_and(|d| d != n) {
                return Err(RequestError::BadContentLength(list_values(headers)));
            }
            declared = Some(n);
        }
    }
    match declared {
        Some(n) => {
            let n_usize = usize::try_from(n).unwrap_or(usize::MAX);
            if n_usize > rest.len() {
                return Err(RequestError::ShortBody {
                    declared: n,
                    available: rest.len(),
                });
            }
            let trailing = &rest[n_usize..];
            if !trailing.iter().all(|b| b.is_ascii_whitespace()) {
                return Err(RequestError::TrailingBytes(trailing.len()));
            }
            Ok(&rest[..n_usize])
        }
        None if allows_body(method) => Ok(rest),
        None if rest.iter().all(|b| b.is_ascii_whitespace()) => Ok(&[]),
        None => Err(RequestError::BodyWithoutContentLength {
            method: method.clone(),
            bytes: rest.len(),
        }),
    }
}

/// Whether a body may be taken from the rest of the part without `Content-Length`. Compared in any letter
/// case, so that `get` cannot carry what `GET` may not.
fn allows_body(method: &Method) -> bool {
    !["GET", "HEAD", "DELETE", "OPTIONS", "TRACE"]
        .iter()
        .any(|m| method.as_str().eq_ignore_ascii_case(m))
}

fn list_values(headers: &HeaderMap) -> String {
    headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes one request part of a batch (the client side of the format), CRLF throughout. A body gets a
/// `Content-Length`.
pub fn write_request_part(
    out: &mut bytes::BytesMut,
    boundary: &str,
    content_id: Option<&ContentId>,
    request: &EmbeddedRequest,
) {
    use std::fmt::Write as _;
    let mut head = String::with_capacity(128);
    let _ = write!(head, "--{boundary}\r\nContent-Type: application/http\r\n");
    if let Some(id) = content_id {
        let _ = write!(head, "Content-ID: {id}\r\n");
    }
    let _ = write!(
        head,
        "\r\n{} {} HTTP/1.1\r\n",
        request.method, request.target
    );
    out.extend_from_slice(head.as_bytes());
    for (name, value) in &request.headers {
        if name != CONTENT_LENGTH {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    if !request.body.is_empty() {
        out.extend_from_slice(format!("Content-Length: {}\r\n", request.body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&request.body);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PartLimits = PartLimits {
        max_headers: 8,
        max_header_bytes: 1024,
    };

    fn req(part: &str) -> ParsedPart {
        parse_part(part.as_bytes(), LIMITS)
    }

    #[test]
    fn google_style_part() {
        let p = req(
            "Content-Type: application/http\r\nContent-ID: <item1>\r\n\r\nGET /mail/v1/messages/1\r\nAccept: application/json\r\n",
        );
        let cid = p.content_id.unwrap();
        assert_eq!(cid.response_id(), "<response-item1>");
        let r = p.request.unwrap();
        assert_eq!(r.method, Method::GET);
        assert_eq!(r.target, "/mail/v1/messages/1");
        assert_eq!(r.headers["accept"], "application/json");
        assert!(r.body.is_empty());
    }

    #[test]
    fn post_with_content_length_and_padding() {
        let p = req(
            "Content-Type: application/http\n\nPOST /m HTTP/1.1\nContent-Length: 5\n\nhello\r\n",
        );
        assert_eq!(&p.request.unwrap().body[..], b"hello");
    }

    #[test]
    fn body_without_content_length_is_the_rest() {
        let p = req(
            "Content-Type: application/http\n\nPOST /m\nContent-Type: application/json\n\n{\"a\":1}",
        );
        assert_eq!(&p.request.unwrap().body[..], b"{\"a\":1}");
    }

    #[test]
    fn no_headers_no_blank_line() {
        let p = req("Content-Type: application/http\nContent-ID: Batchelor_ab\n\nGET /path\n");
        assert_eq!(p.content_id.unwrap().response_id(), "response-Batchelor_ab");
        assert_eq!(p.request.unwrap().target, "/path");
        let p = req("GET /bare HTTP/1.1\r\nHost: x\r\n");
        assert!(p.content_id.is_none());
        assert_eq!(p.request.unwrap().headers["host"], "x");
    }

    #[test]
    fn folded_content_id_is_unfolded() {
        let p =
            req("Content-Type: application/http\nContent-ID: <abc +\n 12>\n\nGET /x HTTP/1.1\n\n");
        assert_eq!(p.content_id.unwrap().response_id(), "<response-abc + 12>");
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let bad = |s: &str| req(s).request.unwrap_err();
        assert_eq!(
            bad("\nPOST /m HTTP/1.1\nTransfer-Encoding: chunked\nContent-Length: 3\n\nabc"),
            RequestError::TransferEncoding
        );
        assert!(matches!(
            bad("\nPOST /m HTTP/1.1\nContent-Length: 3\nContent-Length: 4\n\nabcd"),
            RequestError::BadContentLength(_)
        ));
        assert!(matches!(
            bad("\nGET /m HTTP/1.1\nA: b\n c\n\n"),
            RequestError::BadHeaders(_)
        ));
        assert!(matches!(
            bad("\nG(T /m HTTP/1.1\n\n"),
            RequestError::BadMethod(_)
        ));
        assert!(matches!(
            bad("\nCONNECT x:1 HTTP/1.1\n\n"),
            RequestError::MethodNotAllowed(_)
        ));
        assert!(matches!(
            bad("\nGET /m HTTP/2\n\n"),
            RequestError::BadVersion(_)
        ));
        assert!(matches!(
            bad("\nPOST /m\nContent-Length: 10\n\nabc"),
            RequestError::ShortBody {
                declared: 10,
                available: 3
            }
        ));
        assert!(matches!(
            bad("\nPOST /m\nContent-Length: 1\n\nabc"),
            RequestError::TrailingBytes(2)
        ));
        assert!(matches!(
            bad("Content-Type: text/plain\n\nGET /m\n"),
            RequestError::NotApplicationHttp(_)
        ));
        assert_eq!(
            bad("Content-Type: application/http\n\n\r\n"),
            RequestError::Empty
        );
    }

    #[test]
    fn bodyless_methods_need_content_length_for_a_body() {
        let bad = |s: &str| req(s).request.unwrap_err();
        assert_eq!(
            bad("\nGET /m\nAccept: */*\n\n  body  "),
            RequestError::BodyWithoutContentLength {
                method: Method::GET,
                bytes: 8
            }
        );
        assert_eq!(
            bad("\nGET /m HTTP/1.1\r\n\r\nsmuggled=1\r\n").to_string(),
            "GET part has 12 bytes after its head but no Content-Length; a body on GET/HEAD/DELETE/OPTIONS \
             needs Content-Length (it is never forwarded as a guess)"
        );
        for method in ["HEAD", "DELETE", "OPTIONS", "get", "Delete"] {
            let e = bad(&format!("\n{method} /m\n\nx"));
            assert!(
                matches!(&e, RequestError::BodyWithoutContentLength { method: m, bytes: 1 } if m.as_str() == method),
                "{method}: {e:?}"
            );
        }
        // A request line then straight to the body, no header block at all.
        assert!(matches!(
            bad("\nDELETE /m\n\n{\"a\":1}"),
            RequestError::BodyWithoutContentLength { .. }
        ));
    }

    #[test]
    fn bodyless_methods_keep_explicit_bodies_and_padding() {
        // With Content-Length, as before: the declared bytes are the body.
        let p = req("\nGET /m\nContent-Length: 4\n\nbody\r\n");
        assert_eq!(&p.request.unwrap().body[..], b"body");
        let p = req("\nDELETE /m\nContent-Length: 0\n\n\r\n");
        assert!(p.request.unwrap().body.is_empty());
        // White space after the head is padding, not a body (LF-only and CRLF clients).
        for part in [
            "Content-Type: application/http\n\nGET /m\n\n\n",
            "\nHEAD /m HTTP/1.1\r\nAccept: */*\r\n\r\n \t\r\n",
            "\nOPTIONS /m\n",
        ] {
            assert!(req(part).request.unwrap().body.is_empty(), "{part:?}");
        }
        // Methods that take a body still take the rest of the part without Content-Length.
        let p = req("\nPATCH /m\n\n{\"a\":1}");
        assert_eq!(&p.request.unwrap().body[..], b"{\"a\":1}");
    }

    #[test]
    fn trace_and_connect_are_refused_in_any_case() {
        for method in ["TRACE", "trace", "Trace", "CONNECT", "connect", "Connect"] {
            let e = req(&format!("\n{method} /m HTTP/1.1\n\n"))
                .request
                .unwrap_err();
            assert!(
                matches!(&e, RequestError::MethodNotAllowed(m) if m.as_str() == method),
                "{method}: {e:?}"
            );
        }
    }

    #[test]
    fn mime_header_limit_holds_without_a_final_line_break() {
        let long = format!("Content-ID: <{}>", "a".repeat(2000));
        let p = req(&long);
        assert!(p.content_id.is_none());
        assert_eq!(
            p.request.unwrap_err(),
            RequestError::MimeHeadersTooLarge { limit: 1024 }
        );
    }

    #[test]
    fn a_content_id_with_a_bare_cr_is_refused_not_echoed() {
        let p = req("Content-Type: application/http\nContent-ID: <a\rb>\n\nGET /m\n");
        assert!(p.content_id.is_none());
        assert_eq!(p.request.unwrap_err(), RequestError::BadContentId);
    }

    #[test]
    fn request_line_and_headers_share_the_head_budget() {
        let long_target = format!("/{}", "a".repeat(600));
        let headers = format!("X-A: {}\n", "b".repeat(500));
        let e = req(&format!("\nGET {long_target}\n{headers}\n"))
            .request
            .unwrap_err();
        assert_eq!(e, RequestError::HeadTooLarge { limit: 1024 });
    }

    #[test]
    fn header_count_limit_names_the_limit() {
        let many: String = (0..9).map(|i| format!("H{i}: v\n")).collect();
        let e = req(&format!("\nGET /m\n{many}\n")).request.unwrap_err();
        assert_eq!(e, RequestError::TooManyHeaders { limit: 8 });
    }
}
