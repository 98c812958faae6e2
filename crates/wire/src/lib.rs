//! The batch wire format (RFC 2046 `multipart/mixed` of `application/http` parts, as Google's batch APIs
//! use it): framing, embedded requests, embedded responses. Pure functions over bytes; no I/O.
//!
//! Parse liberally, write strictly: CRLF everywhere, a token boundary, a reason phrase on every status line,
//! `Content-ID` echoed as `response-` + the original inside the original brackets.

pub mod multipart;
pub mod reply;
pub mod request;

pub use multipart::{ContentTypeError, FramingError, PartSplitter, boundary_from_content_type};
pub use reply::{
    Framing, PART_END, ReplyPart, write_close, write_reply, write_reply_head, write_reply_part,
};
pub use request::{
    EmbeddedRequest, ParsedPart, PartLimits, RequestError, parse_part, write_request_part,
};

/// A part's `Content-ID` as the client sent it, so the reply can echo it in the same form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContentId {
    /// The id without angle brackets.
    id: String,
    /// Whether the client wrapped it in `<...>`.
    bracketed: bool,
}

impl ContentId {
    /// Reads a header value: `<item1>` or `Batchelor_1f`.
    pub fn parse(value: &str) -> ContentId {
        let value = value.trim();
        match value.strip_prefix('<').and_then(|v| v.strip_suffix('>')) {
            Some(inner) => ContentId {
                id: inner.to_owned(),
                bracketed: true,
            },
            None => ContentId {
                id: value.to_owned(),
                bracketed: false,
            },
        }
    }

    /// An id without brackets, and whether the header value wraps it in `<...>`.
    pub fn new(id: impl Into<String>, bracketed: bool) -> ContentId {
        ContentId {
            id: id.into(),
            bracketed,
        }
    }

    /// The id without brackets.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The header value as sent.
    pub fn header_value(&self) -> String {
        if self.bracketed {
            format!("<{}>", self.id)
        } else {
            self.id.clone()
        }
    }

    /// The `Content-ID` of the matching reply part.
    pub fn response_id(&self) -> String {
        if self.bracketed {
            format!("<response-{}>", self.id)
        } else {
            format!("response-{}", self.id)
        }
    }

    /// The request's id for a reply's `Content-ID`, if it has the `response-` form.
    pub fn from_response(value: &str) -> Option<ContentId> {
        let reply = ContentId::parse(value);
        let id = reply.id.strip_prefix("response-")?.to_owned();
        Some(ContentId {
            id,
            bracketed: reply.bracketed,
        })
    }
}

impl std::fmt::Display for ContentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.header_value())
    }
}
