//! `multipart/mixed` batches: parts framed by a boundary, each an `application/http` request; the reply
//! the same way, under a boundary of its own.

use bytes::{Bytes, BytesMut};
use http::header::HeaderValue;
use rand::Rng;
use rand::distr::Alphanumeric;

use std::collections::HashSet;

use super::{Part, Rendered};
use crate::error::{BatchError, PartError};
use crate::stack::UpstreamResponse;
use batchgate_wire::{
    ContentId, Framing, FramingError, PART_END, PartLimits, PartSplitter,
    boundary_from_content_type, parse_part, write_close, write_reply, write_reply_head,
};

/// A body at least this large goes out as its upstream sent it, rather than copied into its part: a copy
/// would cost as much memory again for every such part in the window.
const ZERO_COPY_BODY: usize = 16 * 1024;

/// Reads parts out of a request body as its bytes arrive.
#[derive(Debug)]
pub(crate) struct PartReader {
    splitter: PartSplitter,
    limits: PartLimits,
    /// The Content-IDs read so far: a duplicate refuses the batch.
    ids: HashSet<ContentId>,
}

impl PartReader {
    /// A reader for a body of this `Content-Type`: `multipart/mixed` with a boundary, or the batch is refused.
    pub(crate) fn new(
        content_type: &str,
        max_part_bytes: u64,
        limits: PartLimits,
    ) -> Result<PartReader, BatchError> {
        let boundary = boundary_from_content_type(content_type)?;
        Ok(PartReader {
            splitter: PartSplitter::new(&boundary, max_part_bytes),
            limits,
            ids: HashSet::new(),
        })
    }

    /// Takes the next piece of the body.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.splitter.push(bytes);
    }

    /// The next complete part, parsed; `None` when more bytes are needed or the body is closed. A
    /// duplicate Content-ID refuses the whole batch.
    pub(crate) fn next_part(&mut self) -> Result<Option<Part>, BatchError> {
        let Some(raw) = self.splitter.next_part()? else {
            return Ok(None);
        };
        let part = parse_part(&raw, self.limits);
        if let Some(id) = &part.content_id
            && !self.ids.insert(id.clone())
        {
            return Err(BatchError::DuplicateContentId(id.header_value()));
        }
        Ok(Some(Part {
            content_id: part.content_id,
            request: part.request,
            depends_on: Box::default(),
        }))
    }

    /// Whether the body's end (the close delimiter) has been read.
    pub(crate) fn is_closed(&self) -> bool {
        self.splitter.is_closed()
    }

    /// Checks that the body ended where a batch may end.
    pub(crate) fn finish(&self) -> Result<(), FramingError> {
        self.splitter.finish()
    }
}

/// Renders reply parts under a boundary drawn at random for each reply (from the thread's CSPRNG, about
/// 190 bits), so that no upstream body can contain it and forge parts. The boundary is held inline: a batch's
/// writer is made, and cloned for its scheduler, without an allocation.
#[derive(Debug, Clone)]
pub(crate) struct ReplyWriter {
    /// Alphanumeric ASCII.
    boundary: [u8; BOUNDARY_LEN],
}

const BOUNDARY_LEN: usize = 32;

/// What the reply's `Content-Type` says before its boundary.
const CONTENT_TYPE_PREFIX: &[u8] = b"multipart/mixed; boundary=";

impl Default for ReplyWriter {
    fn default() -> Self {
        ReplyWriter::new()
    }
}

impl ReplyWriter {
    pub(crate) fn new() -> ReplyWriter {
        let mut boundary = [0; BOUNDARY_LEN];
        for (byte, drawn) in boundary
            .iter_mut()
            .zip(rand::rng().sample_iter(Alphanumeric))
        {
            *byte = drawn;
        }
        ReplyWriter { boundary }
    }

    fn boundary(&self) -> &str {
        std::str::from_utf8(&self.boundary).expect("an alphanumeric boundary")
    }

    /// The reply's `Content-Type`.
    pub(crate) fn content_type(&self) -> HeaderValue {
        let mut value = [0; CONTENT_TYPE_PREFIX.len() + BOUNDARY_LEN];
        value[..CONTENT_TYPE_PREFIX.len()].copy_from_slice(CONTENT_TYPE_PREFIX);
        value[CONTENT_TYPE_PREFIX.len()..].copy_from_slice(&self.boundary);
        HeaderValue::from_bytes(&value).expect("an alphanumeric boundary")
    }

    /// One part answered by its upstream.
    pub(crate) fn response(
        &self,
        content_id: Option<&ContentId>,
        response: &UpstreamResponse,
    ) -> Rendered {
        let body_len: usize = response.body.iter().map(Bytes::len).sum();
        let mut out = BytesMut::new();
        if body_len >= ZERO_COPY_BODY {
            write_reply_head(
                &mut out,
                self.boundary(),
                content_id,
                response.status,
                &response.headers,
                body_len,
                response.framing,
            );
            let mut pieces = Vec::with_capacity(response.body.len() + 2);
            pieces.push(out.freeze());
            pieces.extend(response.body.iter().cloned());
            pieces.push(Bytes::from_static(PART_END));
            return Rendered::Pieces(pieces);
        }
        write_reply(
            &mut out,
            self.boundary(),
            content_id,
            response.status,
            &response.headers,
            response.body.iter().map(|piece| &piece[..]),
            response.framing,
        );
        Rendered::Whole(out.freeze())
    }

    /// One failed part, with its JSON error body.
    pub(crate) fn error(&self, content_id: Option<&ContentId>, error: &PartError) -> Rendered {
        let headers = error.headers();
        let body = error.body();
        let mut out = BytesMut::new();
        write_reply(
            &mut out,
            self.boundary(),
            content_id,
            error.status(),
            &headers,
            [&body[..]],
            Framing::Exact,
        );
        Rendered::Whole(out.freeze())
    }

    /// What ends the reply.
    pub(crate) fn close(&self) -> Bytes {
        let mut out = BytesMut::new();
        write_close(&mut out, self.boundary());
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::ReplyWriter;

    #[test]
    fn a_reply_boundary_is_32_random_alphanumerics_named_in_the_content_type_and_the_close() {
        let (one, other) = (ReplyWriter::new(), ReplyWriter::new());
        let content_type = one.content_type();
        let boundary = content_type
            .to_str()
            .unwrap()
            .strip_prefix("multipart/mixed; boundary=")
            .unwrap();
        assert_eq!(boundary.len(), 32);
        assert!(boundary.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(other.content_type(), content_type);
        assert_eq!(&one.close()[..], format!("--{boundary}--\r\n").as_bytes());
    }
}
