//! The batch format behind one seam: reading parts from a request body, rendering reply parts. The stages
//! around it know parts and answers, not boundaries, brackets or delimiters.
//!
//! Two formats: `multipart/mixed` (the Google APIs batch format, [`multipart`]) and JSON (Microsoft Graph,
//! OData 4.01, [`json`]). [`open`] chooses the reader from the request's `Content-Type`, and the writer from
//! its `Accept` when that names the other format (else the reply has the request's format).

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzz;
pub(crate) mod json;
pub(crate) mod multipart;

use bytes::Bytes;
use http::header::HeaderValue;

use crate::error::{BatchError, PartError};
use crate::stack::UpstreamResponse;
use batchgate_wire::{ContentId, EmbeddedRequest, PartLimits, RequestError};

/// A batch format, as metrics and logs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Format {
    Multipart,
    Json,
}

impl Format {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Format::Multipart => "multipart",
            Format::Json => "json",
        }
    }

    /// The format whose media type `content_type` names, if any.
    fn of(media_type: &str) -> Option<Format> {
        let essence = media_type.split(';').next().unwrap_or_default().trim();
        if essence.eq_ignore_ascii_case("multipart/mixed") {
            Some(Format::Multipart)
        } else if essence.eq_ignore_ascii_case("application/json") {
            Some(Format::Json)
        } else {
            None
        }
    }

    /// The reply's format: the one `Accept` prefers among the two (by `q`), else the request's.
    fn reply(self, accept: Option<&str>) -> Format {
        let Some(accept) = accept else { return self };
        let mut best: Option<(Format, f32)> = None;
        for range in accept.split(',') {
            let Some(format) = Format::of(range) else {
                continue;
            };
            let q = range
                .split(';')
                .skip(1)
                .find_map(|p| p.trim().strip_prefix("q=")?.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let better = match best {
                None => true,
                Some((held, best_q)) => {
                    q > best_q || (q == best_q && format == self && held != self)
                }
            };
            if q > 0.0 && better {
                best = Some((format, q));
            }
        }
        best.map_or(self, |(format, _)| format)
    }
}

/// One request read out of a batch, whatever its format.
#[derive(Debug)]
pub(crate) struct Part {
    /// How the reply names it: the multipart Content-ID, or the JSON request's `id`.
    pub content_id: Option<ContentId>,
    /// The request, or why the part (only) is refused.
    pub request: Result<EmbeddedRequest, RequestError>,
    /// Indexes of earlier parts that must succeed before this one is sent (JSON `dependsOn`); empty in
    /// multipart, and then free.
    pub depends_on: Box<[usize]>,
}

/// Reads parts out of a request body as its bytes arrive.
// One per batch, held by the read stage: boxing the larger reader would cost every multipart batch an
// allocation to save a few hundred bytes for a moment.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum PartReader {
    Multipart(multipart::PartReader),
    Json(json::PartReader),
}

impl PartReader {
    pub(crate) fn format(&self) -> Format {
        match self {
            PartReader::Multipart(_) => Format::Multipart,
            PartReader::Json(_) => Format::Json,
        }
    }

    /// Whether parts of this format may depend on earlier ones (JSON `dependsOn`).
    pub(crate) fn has_dependencies(&self) -> bool {
        matches!(self, PartReader::Json(_))
    }

    /// Takes the next piece of the body.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        match self {
            PartReader::Multipart(reader) => reader.push(bytes),
            PartReader::Json(reader) => reader.push(bytes),
        }
    }

    /// The next complete part; `None` when more bytes are needed or the body is closed. An error refuses
    /// the whole batch.
    pub(crate) fn next_part(&mut self) -> Result<Option<Part>, BatchError> {
        match self {
            PartReader::Multipart(reader) => reader.next_part(),
            PartReader::Json(reader) => Ok(reader.next_part()?),
        }
    }

    /// Whether the batch's end has been read, so the rest of the body need not be. A JSON batch ends with
    /// its body: bytes after its closing brace are refused in whichever piece they arrive.
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            PartReader::Multipart(reader) => reader.is_closed(),
            PartReader::Json(_) => false,
        }
    }

    /// Checks that the body ended where a batch may end.
    pub(crate) fn finish(&self) -> Result<(), BatchError> {
        match self {
            PartReader::Multipart(reader) => Ok(reader.finish()?),
            PartReader::Json(reader) => Ok(reader.finish()?),
        }
    }
}

/// Renders the reply: its opening, each part (in request order, by index), its end.
#[derive(Debug, Clone)]
pub(crate) enum ReplyWriter {
    Multipart(multipart::ReplyWriter),
    Json(json::ReplyWriter),
}

impl ReplyWriter {
    pub(crate) fn format(&self) -> Format {
        match self {
            ReplyWriter::Multipart(_) => Format::Multipart,
            ReplyWriter::Json(_) => Format::Json,
        }
    }

    /// The reply's `Content-Type`.
    pub(crate) fn content_type(&self) -> HeaderValue {
        match self {
            ReplyWriter::Multipart(writer) => writer.content_type(),
            ReplyWriter::Json(writer) => writer.content_type(),
        }
    }

    /// What starts the reply, before the first part (nothing for multipart).
    pub(crate) fn open(&self) -> Option<Bytes> {
        match self {
            ReplyWriter::Multipart(_) => None,
            ReplyWriter::Json(writer) => Some(writer.open()),
        }
    }

    /// The part at `index` answered by its upstream.
    pub(crate) fn response(
        &self,
        index: usize,
        content_id: Option<&ContentId>,
        response: &UpstreamResponse,
    ) -> Rendered {
        match self {
            ReplyWriter::Multipart(writer) => writer.response(content_id, response),
            ReplyWriter::Json(writer) => writer.response(index, content_id, response),
        }
    }

    /// The part at `index` failed, with its JSON error body.
    pub(crate) fn error(
        &self,
        index: usize,
        content_id: Option<&ContentId>,
        error: &PartError,
    ) -> Rendered {
        match self {
            ReplyWriter::Multipart(writer) => writer.error(content_id, error),
            ReplyWriter::Json(writer) => writer.error(index, content_id, error),
        }
    }

    /// What ends the reply.
    pub(crate) fn close(&self) -> Bytes {
        match self {
            ReplyWriter::Multipart(writer) => writer.close(),
            ReplyWriter::Json(writer) => writer.close(),
        }
    }
}

/// The reader for a batch whose `Content-Type` is `content_type`, and the writer for a reply the client
/// `accept`s.
pub(crate) fn open(
    content_type: Option<&str>,
    accept: Option<&str>,
    max_part_bytes: u64,
    part_limits: PartLimits,
) -> Result<(PartReader, ReplyWriter), BatchError> {
    let content_type = content_type.ok_or(BatchError::NoContentType)?;
    let reader = match Format::of(content_type) {
        Some(Format::Json) => PartReader::Json(json::PartReader::new(max_part_bytes, part_limits)),
        // Anything else is multipart's to accept or refuse, with its own message.
        _ => PartReader::Multipart(multipart::PartReader::new(
            content_type,
            max_part_bytes,
            part_limits,
        )?),
    };
    let writer = match reader.format().reply(accept) {
        Format::Multipart => ReplyWriter::Multipart(multipart::ReplyWriter::new()),
        Format::Json => ReplyWriter::Json(json::ReplyWriter),
    };
    Ok((reader, writer))
}

/// A rendered reply part, in the order its bytes go out.
#[derive(Debug)]
pub(crate) enum Rendered {
    /// In one buffer.
    Whole(Bytes),
    /// A large body as its upstream sent it, not copied: the part's head, the body's pieces, the part's end.
    Pieces(Vec<Bytes>),
}

impl Rendered {
    /// Its bytes, all pieces together.
    pub(crate) fn len(&self) -> usize {
        match self {
            Rendered::Whole(bytes) => bytes.len(),
            Rendered::Pieces(pieces) => pieces.iter().map(Bytes::len).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Format;

    #[test]
    fn accept_picks_the_reply_format_else_the_request_decides() {
        let cases = [
            (Format::Json, None, Format::Json),
            (Format::Json, Some("*/*"), Format::Json),
            (Format::Json, Some("multipart/mixed"), Format::Multipart),
            (Format::Multipart, Some("application/json"), Format::Json),
            (
                Format::Multipart,
                Some("Application/JSON; charset=utf-8"),
                Format::Json,
            ),
            (
                Format::Multipart,
                Some("application/json, multipart/mixed"),
                Format::Multipart,
            ),
            (
                Format::Multipart,
                Some("application/json;q=0.5, multipart/mixed;q=0.4"),
                Format::Json,
            ),
            (Format::Json, Some("application/json;q=0"), Format::Json),
            (Format::Json, Some("multipart/mixed;q=0"), Format::Json),
        ];
        for (request, accept, reply) in cases {
            assert_eq!(request.reply(accept), reply, "{request:?} {accept:?}");
        }
    }
}
