//! Reply parts: the gateway writes them, the client library reads them.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, StatusCode};

use super::ContentId;
use super::request::{RequestError, split_mime_headers};

/// How a reply part states its body's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` is the body's exact length; any the headers carry is replaced.
    Exact,
    /// The headers already say it: a HEAD or 304 answer keeps the upstream's `Content-Length` (the length of
    /// the body it did not send), a 204 has none.
    AsIs,
}

/// Writes one reply part with a body given as `Bytes`-like pieces: delimiter, part headers, status line with
/// reason phrase, headers (with the `Content-Length` that `framing` says), body, and the line break that
/// precedes the next delimiter. Each piece is copied once.
pub fn write_reply<'a>(
    out: &mut BytesMut,
    boundary: &str,
    content_id: Option<&ContentId>,
    status: StatusCode,
    headers: &HeaderMap,
    body: impl IntoIterator<Item = &'a [u8]> + Clone,
    framing: Framing,
) {
    let body_len: usize = body.clone().into_iter().map(<[u8]>::len).sum();
    out.reserve(head_len(boundary, content_id, headers) + body_len + 2);
    write_reply_head(
        out, boundary, content_id, status, headers, body_len, framing,
    );
    for piece in body {
        out.put_slice(piece);
    }
    out.put_slice(PART_END);
}

/// What follows a reply part's body: the line break before the next delimiter.
pub const PART_END: &[u8] = b"\r\n";

/// Writes what precedes a reply part's `body_len` bytes of body (delimiter, part headers, status line,
/// headers), for a writer that sends the body without copying it; [`PART_END`] follows the body.
pub fn write_reply_head(
    out: &mut BytesMut,
    boundary: &str,
    content_id: Option<&ContentId>,
    status: StatusCode,
    headers: &HeaderMap,
    body_len: usize,
    framing: Framing,
) {
    out.reserve(head_len(boundary, content_id, headers));
    out.put_slice(b"--");
    out.put_slice(boundary.as_bytes());
    out.put_slice(b"\r\n");
    write_entity_head(out, content_id, status, headers, body_len, framing);
}

/// A generous estimate of what [`write_reply_head`] writes, to size buffers once.
fn head_len(boundary: &str, content_id: Option<&ContentId>, headers: &HeaderMap) -> usize {
    6 + boundary.len() + entity_head_len(content_id, headers)
}

/// [`write_reply`] for a body in one piece, with an exact `Content-Length`.
pub fn write_reply_part(
    out: &mut BytesMut,
    boundary: &str,
    content_id: Option<&ContentId>,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) {
    write_reply(
        out,
        boundary,
        content_id,
        status,
        headers,
        [body],
        Framing::Exact,
    );
}

/// Writes the close delimiter that ends the reply.
pub fn write_close(out: &mut BytesMut, boundary: &str) {
    out.put_slice(b"--");
    out.put_slice(boundary.as_bytes());
    out.put_slice(b"--\r\n");
}

/// A generous estimate of what `write_entity_head` writes, to size buffers once.
fn entity_head_len(content_id: Option<&ContentId>, headers: &HeaderMap) -> usize {
    let headers: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    96 + content_id.map_or(0, |id| id.id().len() + 32) + headers
}

/// Part headers, then the embedded status line and headers, up to the body.
fn write_entity_head(
    out: &mut BytesMut,
    content_id: Option<&ContentId>,
    status: StatusCode,
    headers: &HeaderMap,
    body_len: usize,
    framing: Framing,
) {
    out.put_slice(b"Content-Type: application/http\r\n");
    if let Some(id) = content_id {
        // `ContentId::response_id`, written in place rather than formatted into a String per part.
        let (open, close): (&[u8], &[u8]) = if id.bracketed {
            (b"Content-ID: <response-", b">\r\n")
        } else {
            (b"Content-ID: response-", b"\r\n")
        };
        out.put_slice(open);
        out.put_slice(id.id.as_bytes());
        out.put_slice(close);
    }
    out.put_slice(b"\r\nHTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("Status").as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in headers {
        if framing == Framing::AsIs || name != CONTENT_LENGTH {
            out.put_slice(name.as_str().as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
    }
    if framing == Framing::Exact {
        out.put_slice(b"content-length: ");
        out.put_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

/// One embedded response, as the client library reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyPart {
    /// The request's id this reply answers (the `response-` prefix removed), if the reply carried one.
    pub content_id: Option<ContentId>,
    /// The embedded response's status.
    pub status: StatusCode,
    /// The embedded response's headers, as sent.
    pub headers: HeaderMap,
    /// `Content-Length` bytes, or everything up to the delimiter; empty for a HEAD or 304 answer.
    pub body: Bytes,
}

/// Why a reply part could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The part's headers, response head or body length cannot be read.
    #[error("reply part {index}: {reason}")]
    Malformed {
        /// The `index` given to [`ReplyPart::parse`].
        index: usize,
        /// What was wrong, for the message.
        reason: String,
    },
}

impl ReplyPart {
    /// The length of a reply part whose bytes so far are `part`, if they hold all of it: its part headers,
    /// a complete response head with a `Content-Length`, and that many body bytes. `None` when more bytes
    /// are needed or the head has no length (a 204; then the next delimiter ends the part). For
    /// [`PartSplitter::next_part_with`](super::PartSplitter::next_part_with): a HEAD or 304 answer keeps a
    /// `Content-Length` without a body, but its delimiter line then follows the head at once, which the
    /// splitter sees first.
    pub fn complete_len(part: &[u8]) -> Option<usize> {
        // The part headers: whole lines up to a blank one, or none when the part opens with the status line.
        let mut pos = 0;
        loop {
            let end = pos + memchr::memchr(b'\n', &part[pos..])?;
            let line = part[pos..end]
                .strip_suffix(b"\r")
                .unwrap_or(&part[pos..end]);
            if line.is_empty() {
                pos = end + 1;
                break;
            }
            if line.starts_with(b"HTTP/") {
                break;
            }
            pos = end + 1;
        }
        let content = &part[pos..];
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut response = httparse::Response::new(&mut slots);
        let head = match response.parse(content) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => return None,
        };
        let length = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })?;
        let total = pos.checked_add(head)?.checked_add(length)?;
        (total <= part.len()).then_some(total)
    }

    /// Parses one part as cut by the splitter. `index` is only used in error messages.
    pub fn parse(part: &[u8], index: usize) -> Result<ReplyPart, ReplyError> {
        let malformed = |reason: String| ReplyError::Malformed { index, reason };
        let (mime, content) = split_mime_headers(part, part.len())
            .map_err(|e: RequestError| malformed(e.to_string()))?;
        let content_id = mime
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-id"))
            .map(|(_, v)| ContentId::from_response(v).unwrap_or_else(|| ContentId::parse(v)));
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut response = httparse::Response::new(&mut slots);
        let head_len = match response.parse(content) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                return Err(malformed("incomplete response head".into()));
            }
            Err(e) => return Err(malformed(format!("response head: {e}"))),
        };
        let status = StatusCode::from_u16(response.code.unwrap_or(0))
            .map_err(|_| malformed("status code out of range".into()))?;
        let mut headers = HeaderMap::with_capacity(response.headers.len());
        for h in response.headers.iter() {
            let name = http::HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|e| malformed(e.to_string()))?;
            let value =
                http::HeaderValue::from_bytes(h.value).map_err(|e| malformed(e.to_string()))?;
            headers.append(name, value);
        }
        let rest = &content[head_len..];
        let body = match headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        {
            Some(n) if n <= rest.len() => &rest[..n],
            // A HEAD or 304 answer: its Content-Length is the length of the body it did not carry
            // (`Framing::AsIs`); the delimiter, not the length, ends the part.
            Some(_) if rest.is_empty() => rest,
            Some(n) => {
                return Err(malformed(format!(
                    "Content-Length {n} but only {} bytes",
                    rest.len()
                )));
            }
            None => rest,
        };
        Ok(ReplyPart {
            content_id,
            status,
            headers,
            body: Bytes::copy_from_slice(body),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EmbeddedRequest, PartLimits, PartSplitter, parse_part, write_request_part};
    use http::{HeaderValue, Method};

    fn split(body: &[u8], boundary: &str) -> Vec<Bytes> {
        let mut s = PartSplitter::new(boundary, 1 << 20);
        s.push(body);
        let mut parts = Vec::new();
        while let Some(p) = s.next_part().unwrap() {
            parts.push(p);
        }
        s.finish().unwrap();
        parts
    }

    #[test]
    fn reply_bytes_are_exact() {
        let mut out = BytesMut::new();
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let id = ContentId::parse("<item1>");
        write_reply_part(&mut out, "x", Some(&id), StatusCode::OK, &headers, b"{}");
        write_reply_part(
            &mut out,
            "x",
            None,
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            b"",
        );
        write_close(&mut out, "x");
        assert_eq!(
            &out[..],
            &b"--x\r\nContent-Type: application/http\r\nContent-ID: <response-item1>\r\n\r\n\
HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}\r\n\
--x\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n\r\n--x--\r\n"[..]
        );
    }

    #[test]
    fn reply_round_trip() {
        let mut out = BytesMut::new();
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        let ids = [
            Some(ContentId::parse("<a + 1>")),
            None,
            Some(ContentId::parse("plain")),
        ];
        for (i, id) in ids.iter().enumerate() {
            let body = format!("body {i}\r\n--not-a-delimiter");
            write_reply_part(
                &mut out,
                "bnd",
                id.as_ref(),
                StatusCode::from_u16(200 + i as u16).unwrap(),
                &headers,
                body.as_bytes(),
            );
        }
        write_close(&mut out, "bnd");
        let parts = split(&out, "bnd");
        assert_eq!(parts.len(), 3);
        for (i, raw) in parts.iter().enumerate() {
            let p = ReplyPart::parse(raw, i).unwrap();
            assert_eq!(p.content_id, ids[i]);
            assert_eq!(p.status.as_u16(), 200 + i as u16);
            assert_eq!(p.headers["x-a"], "1");
            assert_eq!(p.body, format!("body {i}\r\n--not-a-delimiter"));
        }
    }

    /// A reply with a part of every kind: Content-Length framed, a 204 without one, a HEAD answer that keeps
    /// its upstream's Content-Length without a body, one without part headers, and an empty body.
    fn mixed_reply() -> BytesMut {
        let mut out = BytesMut::new();
        let mut json = HeaderMap::new();
        json.insert("content-type", HeaderValue::from_static("application/json"));
        let id = ContentId::parse("<a>");
        write_reply_part(
            &mut out,
            "bnd",
            Some(&id),
            StatusCode::OK,
            &json,
            b"{\"x\":\"\r\n--bnd\"}",
        );
        write_reply(
            &mut out,
            "bnd",
            None,
            StatusCode::NO_CONTENT,
            &HeaderMap::new(),
            [],
            Framing::AsIs,
        );
        let mut head = HeaderMap::new();
        head.insert(CONTENT_LENGTH, HeaderValue::from_static("1234"));
        write_reply(
            &mut out,
            "bnd",
            None,
            StatusCode::OK,
            &head,
            [],
            Framing::AsIs,
        );
        write_reply_part(
            &mut out,
            "bnd",
            None,
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            b"",
        );
        out.extend_from_slice(b"--bnd\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc\r\n");
        write_close(&mut out, "bnd");
        out
    }

    #[test]
    fn parts_cut_by_length_are_the_parts_cut_by_delimiters_however_the_reply_is_chunked() {
        let reply = mixed_reply();
        let whole = split(&reply, "bnd");
        assert_eq!(whole.len(), 5);
        for chunk in 1..reply.len() {
            let mut s = PartSplitter::new("bnd", 1 << 20);
            let mut parts = Vec::new();
            let mut offsets = Vec::new();
            for piece in reply.chunks(chunk) {
                s.push(piece);
                while let Some(p) = s.next_part_with(ReplyPart::complete_len).unwrap() {
                    offsets.push(s.part_offset() as usize);
                    parts.push(p);
                }
            }
            s.finish().unwrap();
            assert_eq!(parts, whole, "chunk {chunk}");
            for (p, at) in parts.iter().zip(offsets) {
                assert_eq!(&reply[at..at + p.len()], &p[..], "chunk {chunk}");
            }
        }
    }

    #[test]
    fn a_part_with_a_length_is_cut_before_the_next_delimiter_arrives() {
        let reply = mixed_reply();
        let text = String::from_utf8_lossy(&reply).into_owned();
        // Everything up to the second delimiter, whose bytes have not come yet.
        let second = text.find("\r\n--bnd\r\n").unwrap();
        let mut s = PartSplitter::new("bnd", 1 << 20);
        s.push(&reply[..second + 2]);
        assert_eq!(
            s.next_part().unwrap(),
            None,
            "the delimiter alone cannot tell"
        );
        let first = s.next_part_with(ReplyPart::complete_len).unwrap().unwrap();
        assert_eq!(
            ReplyPart::parse(&first, 0).unwrap().body,
            "{\"x\":\"\r\n--bnd\"}"
        );
        // Without its line break the part may still go on.
        let mut s = PartSplitter::new("bnd", 1 << 20);
        s.push(&reply[..second]);
        assert_eq!(s.next_part_with(ReplyPart::complete_len).unwrap(), None);
        // Truncated after a part cut by length is still truncated.
        let mut s = PartSplitter::new("bnd", 1 << 20);
        s.push(&reply[..second + 2]);
        assert!(s.next_part_with(ReplyPart::complete_len).unwrap().is_some());
        assert!(matches!(
            s.finish(),
            Err(crate::FramingError::Truncated { part: 1, .. })
        ));
    }

    #[test]
    fn request_round_trip() {
        let limits = PartLimits {
            max_headers: 16,
            max_header_bytes: 4096,
        };
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer t"));
        let requests = [
            EmbeddedRequest {
                method: Method::GET,
                target: "/a?b=c".into(),
                headers: headers.clone(),
                body: Bytes::new(),
            },
            EmbeddedRequest {
                method: Method::POST,
                target: "/m".into(),
                headers,
                body: Bytes::from_static(b"{\"x\":\"\r\n\"}"),
            },
        ];
        let ids = [Some(ContentId::parse("<1>")), None];
        let mut out = BytesMut::new();
        for (r, id) in requests.iter().zip(&ids) {
            write_request_part(&mut out, "q", id.as_ref(), r);
        }
        write_close(&mut out, "q");
        let parts = split(&out, "q");
        for (i, raw) in parts.iter().enumerate() {
            let parsed = parse_part(raw, limits);
            assert_eq!(parsed.content_id, ids[i]);
            let mut got = parsed.request.unwrap();
            got.headers.remove(CONTENT_LENGTH);
            assert_eq!(got, requests[i]);
        }
    }
}
