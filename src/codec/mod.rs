//! The batch format behind one seam: reading parts from a request body, rendering reply parts. The stages
//! around it know parts and answers, not boundaries or delimiters.
//!
//! `multipart/mixed` (the Google APIs batch format) is the one format today; a JSON batch format will be a
//! second module here, chosen by [`open`] from the request's `Content-Type`.

pub(crate) mod multipart;

use bytes::Bytes;

use crate::error::BatchError;
use batchgate_wire::PartLimits;

pub(crate) use multipart::{PartReader, ReplyWriter};

/// The reader and writer for a batch whose `Content-Type` is `content_type`.
pub(crate) fn open(
    content_type: Option<&str>,
    max_part_bytes: u64,
    part_limits: PartLimits,
) -> Result<(PartReader, ReplyWriter), BatchError> {
    let content_type = content_type.ok_or(BatchError::NoContentType)?;
    let reader = PartReader::new(content_type, max_part_bytes, part_limits)?;
    Ok((reader, ReplyWriter::new()))
}

/// A rendered reply part, in the order its bytes go out.
#[derive(Debug)]
pub(crate) enum Rendered {
    /// In one buffer.
    Whole(Bytes),
    /// A large body as its upstream sent it, not copied: the part's head, the body's pieces, the part's end.
    Pieces(Vec<Bytes>),
}
