//! Responses the gateway writes itself: the reply body type, and JSON errors for refused batches.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use crate::error::{BatchError, error_body};

/// Why a reply body broke off (the client sees a truncated reply, never a falsely complete one).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body of every response the gateway writes.
pub(crate) type ReplyBody = UnsyncBoxBody<Chunk, BoxError>;

/// What a response body hands the connection at once: one buffer, or pieces that go out together (one
/// HTTP/1.1 chunk, one vectored write) without being copied into one, such as large upstream bodies.
#[derive(Debug)]
pub enum Chunk {
    One(Bytes),
    Many {
        /// Front first, none empty.
        pieces: VecDeque<Bytes>,
        remaining: usize,
    },
}

impl Chunk {
    /// Pieces to send together; empty ones are left out.
    pub fn many(pieces: impl IntoIterator<Item = Bytes>) -> Chunk {
        let pieces: VecDeque<Bytes> = pieces.into_iter().filter(|p| !p.is_empty()).collect();
        let remaining = pieces.iter().map(Bytes::len).sum();
        Chunk::Many { pieces, remaining }
    }
}

impl From<Bytes> for Chunk {
    fn from(bytes: Bytes) -> Chunk {
        Chunk::One(bytes)
    }
}

impl Buf for Chunk {
    fn remaining(&self) -> usize {
        match self {
            Chunk::One(bytes) => bytes.len(),
            Chunk::Many { remaining, .. } => *remaining,
        }
    }

    fn chunk(&self) -> &[u8] {
        match self {
            Chunk::One(bytes) => bytes,
            Chunk::Many { pieces, .. } => pieces.front().map_or(&[], |p| &p[..]),
        }
    }

    fn advance(&mut self, mut cnt: usize) {
        match self {
            Chunk::One(bytes) => bytes.advance(cnt),
            Chunk::Many { pieces, remaining } => {
                assert!(cnt <= *remaining, "advanced past the end of a chunk");
                *remaining -= cnt;
                while cnt > 0 {
                    let front = pieces.front_mut().expect("pieces hold `remaining` bytes");
                    if cnt < front.len() {
                        front.advance(cnt);
                        return;
                    }
                    cnt -= front.len();
                    pieces.pop_front();
                }
            }
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        match self {
            Chunk::One(bytes) if !bytes.is_empty() && !dst.is_empty() => {
                dst[0] = IoSlice::new(bytes);
                1
            }
            Chunk::One(_) => 0,
            Chunk::Many { pieces, .. } => {
                let n = pieces.len().min(dst.len());
                for (slot, piece) in dst.iter_mut().zip(pieces) {
                    *slot = IoSlice::new(piece);
                }
                n
            }
        }
    }
}

/// A JSON error response ([`error_body`]) the gateway writes itself.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response<ReplyBody> {
    let mut response = Response::new(full(error_body(status, message, None)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A JSON error response for a refused batch.
pub(crate) fn error_response(error: &BatchError) -> Response<ReplyBody> {
    let mut response = Response::new(full(error.body()));
    *response.status_mut() = error.status();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if matches!(error, BatchError::MethodNotAllowed(_)) {
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
    }
    if error.status() == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// A complete body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> ReplyBody {
    let chunk = Chunk::One(bytes.into());
    BodyExt::boxed_unsync(http_body_util::Full::new(chunk).map_err(|never| match never {}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_of_pieces_reads_as_their_concatenation_however_it_is_advanced() {
        let pieces =
            ["head ", "", "first piece, ", "second"].map(|s| Bytes::from_static(s.as_bytes()));
        let whole = b"head first piece, second";
        for step in 1..=whole.len() {
            let mut chunk = Chunk::many(pieces.clone());
            let mut read = Vec::new();
            while chunk.has_remaining() {
                assert_eq!(chunk.remaining(), whole.len() - read.len());
                let n = step.min(chunk.chunk().len());
                read.extend_from_slice(&chunk.chunk()[..n]);
                chunk.advance(n);
            }
            assert_eq!(read, whole, "in steps of {step}");
        }
        let chunk = Chunk::many(pieces);
        let mut slices = [IoSlice::new(&[]); 2];
        assert_eq!(chunk.chunks_vectored(&mut slices), 2, "as many as fit");
        assert_eq!(&*slices[1], b"first piece, ");
    }
}
