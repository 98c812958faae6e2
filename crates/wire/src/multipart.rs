//! RFC 2046 multipart framing: the boundary parameter, and a streaming splitter that cuts a body into parts
//! as its bytes arrive.
//!
//! We do not use multer here: it rejects `multipart/mixed` boundaries, cannot frame LF-only bodies (which
//! google-api-python-client sends) and fails on parts without headers. The splitter below accepts CRLF, LF and
//! mixed line endings, and scans with `memchr::memmem`, so every byte is looked at about once.

use bytes::{Buf, Bytes, BytesMut};
use memchr::memmem;

/// Longest boundary accepted. RFC 2046 allows 70; some clients exceed it, so we are generous.
const MAX_BOUNDARY_LEN: usize = 200;

/// Bytes tolerated between a boundary and the end of its line (RFC 2046 transport padding).
const MAX_DELIMITER_LINE_PADDING: usize = 64;

/// Why a `Content-Type` does not describe a usable multipart body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentTypeError {
    /// Any type but `multipart/mixed` (the value as sent); the gateway answers 415.
    #[error(
        "Content-Type {0:?} is not multipart/mixed; a batch is multipart/mixed or application/json (form-data and text types, which \
         browsers send cross-site without a CORS preflight, are refused)"
    )]
    NotMultipart(String),
    /// `multipart/mixed` without a `boundary` parameter (the value as sent).
    #[error("Content-Type {0:?} has no boundary parameter")]
    NoBoundary(String),
    /// An empty, over-long (more than 200), unterminated-quote, or line-breaking boundary.
    #[error(
        "boundary {0:?} is invalid: it must be 1 to 200 characters without line breaks or quotes"
    )]
    BadBoundary(String),
}

/// Extracts the boundary from a `multipart/mixed` content type. Only that type is a batch: a browser sends
/// `multipart/form-data` or `text/plain` cross-site, with cookies and without a preflight, so accepting them
/// would let any page run batches as its visitor. Liberal in the parameters: quoted or token values, `=` inside
/// quoted values, empty parameters (`;;`), any letter case.
pub fn boundary_from_content_type(content_type: &str) -> Result<String, ContentTypeError> {
    let (mime, params) = content_type.split_once(';').unwrap_or((content_type, ""));
    let mime = mime.trim();
    if !mime.eq_ignore_ascii_case("multipart/mixed") {
        return Err(ContentTypeError::NotMultipart(content_type.to_owned()));
    }
    let mut rest = params;
    while !rest.is_empty() {
        rest = rest.trim_start_matches(|c: char| c == ';' || c.is_ascii_whitespace());
        // A parameter without a value (`charset;`) is skipped, as are empty ones (`;;`).
        match (rest.find('='), rest.find(';')) {
            (None, _) => break,
            (Some(eq), Some(semi)) if semi < eq => {
                rest = &rest[semi..];
                continue;
            }
            _ => {}
        }
        let (name, after) = rest.split_once('=').unwrap_or((rest, ""));
        let name = name.trim();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted
                .find('"')
                .ok_or_else(|| ContentTypeError::BadBoundary(after.to_owned()))?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(';').unwrap_or(after.len());
            (after[..end].trim_end(), &after[end..])
        };
        if name.eq_ignore_ascii_case("boundary") {
            let valid = !value.is_empty()
                && value.len() <= MAX_BOUNDARY_LEN
                && !value.bytes().any(|b| matches!(b, b'\r' | b'\n' | b'"' | 0));
            return if valid {
                Ok(value.to_owned())
            } else {
                Err(ContentTypeError::BadBoundary(value.to_owned()))
            };
        }
        rest = next;
    }
    Err(ContentTypeError::NoBoundary(content_type.to_owned()))
}

/// Why a body could not be framed into parts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The body ended before any delimiter line.
    #[error("the body has no delimiter line --{boundary}: no part found")]
    NoParts {
        /// The boundary looked for, so the client can compare it with what it sent.
        boundary: String,
    },
    /// The body ended without the close delimiter.
    #[error("the body ended inside part {part} without the closing delimiter --{boundary}--")]
    Truncated {
        /// The part being read when the body ended, counted from 0.
        part: usize,
        /// The boundary whose close delimiter was missing.
        boundary: String,
    },
    /// A part's bytes exceed the splitter's `max_part_bytes`; the gateway answers 413.
    #[error("part {part} is larger than the limit max_part_bytes = {limit} bytes")]
    PartTooLarge {
        /// The offending part, counted from 0.
        part: usize,
        /// The limit in bytes.
        limit: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first delimiter.
    Preamble,
    /// After a delimiter line; `buf[0]` is the `\n` that ended it.
    InPart,
    /// After a part cut by its length ([`PartSplitter::next_part_with`]), before the next delimiter line.
    Between,
    /// After the close delimiter; the epilogue is ignored.
    Closed,
}

/// Cuts a multipart body into parts as its bytes arrive. Push bytes, then pull parts until `None`.
#[derive(Debug)]
pub struct PartSplitter {
    boundary: String,
    /// `\n--boundary`: a delimiter always starts a line.
    finder: memmem::Finder<'static>,
    buf: BytesMut,
    /// Where the next search may start: everything before it is known to hold no delimiter.
    scan_from: usize,
    state: State,
    max_part_bytes: u64,
    /// Parts yielded so far.
    parts: usize,
    /// Bytes removed from the front of `buf` so far, the virtual line break included: `buf[i]` is byte
    /// `dropped + i - 1` of the body.
    dropped: u64,
    /// Where in the body the last part yielded began.
    part_offset: u64,
}

impl PartSplitter {
    /// A splitter for `boundary` (as from [`boundary_from_content_type`]) that refuses a part of more than
    /// `max_part_bytes`, however the body is chunked.
    pub fn new(boundary: &str, max_part_bytes: u64) -> PartSplitter {
        let needle = format!("\n--{boundary}").into_bytes();
        // Sized by what arrives, not up front: most batches are a few KiB, and each batch in flight holds one.
        let mut buf = BytesMut::new();
        // A body may open with the delimiter itself; a virtual line break before it lets one search serve.
        buf.extend_from_slice(b"\n");
        PartSplitter {
            boundary: boundary.to_owned(),
            finder: memmem::Finder::new(&needle).into_owned(),
            buf,
            scan_from: 0,
            state: State::Preamble,
            max_part_bytes,
            parts: 0,
            dropped: 0,
            part_offset: 0,
        }
    }

    /// Appends body bytes. Bytes after the close delimiter are dropped.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.state != State::Closed {
            self.buf.extend_from_slice(chunk);
        }
    }

    /// True once the close delimiter has been read.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The byte offset in the body at which the part most recently returned by [`next_part`] begins (its
    /// first header byte, just after its delimiter line); 0 before any part. For error messages that point
    /// into a body.
    ///
    /// [`next_part`]: PartSplitter::next_part
    pub fn part_offset(&self) -> u64 {
        self.part_offset
    }

    /// The next complete part's bytes (its headers and content, without the delimiter's line break), or
    /// `None` if more input is needed or the body is closed.
    pub fn next_part(&mut self) -> Result<Option<Bytes>, FramingError> {
        loop {
            match self.state {
                State::Closed => return Ok(None),
                State::Preamble | State::Between => {
                    let Some(at) = self.find_delimiter() else {
                        // Keep only what could be the start of a delimiter; the preamble is discarded.
                        let keep = self.finder.needle().len() - 1;
                        if self.buf.len() > keep {
                            let drop = self.buf.len() - keep;
                            self.buf.advance(drop);
                            self.dropped += drop as u64;
                        }
                        self.scan_from = 0;
                        return Ok(None);
                    };
                    match self.delimiter_line(at) {
                        Line::Incomplete => return Ok(None),
                        Line::NotADelimiter => self.scan_from = at + 1,
                        Line::Close => self.close(),
                        Line::Open(end) => self.enter_part(end),
                    }
                }
                State::InPart => {
                    // The limit must not depend on how the body was chunked: refuse a part only once the
                    // bytes certain to be its content exceed it.
                    let Some(at) = self.find_delimiter() else {
                        // A delimiter may still begin in the last `needle - 1` bytes, after a CR.
                        let content =
                            (self.buf.len() - 1).saturating_sub(self.finder.needle().len());
                        if content as u64 > self.max_part_bytes {
                            return Err(self.too_large());
                        }
                        return Ok(None);
                    };
                    // Content runs from after buf[0] (the `\n` ending the last delimiter line) to the line
                    // break before this delimiter, CR included; if this is no delimiter, the part is longer.
                    let mut end = at;
                    if end > 1 && self.buf[end - 1] == b'\r' {
                        end -= 1;
                    }
                    let end = end.max(1);
                    if (end - 1) as u64 > self.max_part_bytes {
                        return Err(self.too_large());
                    }
                    match self.delimiter_line(at) {
                        Line::Incomplete => return Ok(None),
                        Line::NotADelimiter => self.scan_from = at + 1,
                        line => {
                            // buf[0] is the `\n` before the part, at body offset `dropped - 1`.
                            self.part_offset = self.dropped;
                            let (part, consumed) = if end > 1 {
                                let mut taken = self.buf.split_to(end);
                                self.dropped += end as u64;
                                taken.advance(1);
                                (taken.freeze(), end)
                            } else {
                                (Bytes::new(), 0)
                            };
                            self.parts += 1;
                            match line {
                                Line::Close => self.close(),
                                Line::Open(line_end) => self.enter_part(line_end - consumed),
                                Line::Incomplete | Line::NotADelimiter => unreachable!(),
                            }
                            return Ok(Some(part));
                        }
                    }
                }
            }
        }
    }

    /// [`next_part`](Self::next_part), and also the part being read when its end is known before the next
    /// delimiter has arrived: `complete` gets the part's bytes so far and returns its length if they hold all
    /// of it (for a reply part, [`ReplyPart::complete_len`](super::ReplyPart::complete_len): its head and
    /// `Content-Length` bytes of body). The part is cut there only if a line break follows, as the next
    /// delimiter line begins with one; bytes between it and that delimiter are ignored.
    ///
    /// A reader of a streamed reply uses it to hand on each part as soon as its bytes are in, although the
    /// writer sends the next part's delimiter only with the next part.
    pub fn next_part_with(
        &mut self,
        complete: impl FnOnce(&[u8]) -> Option<usize>,
    ) -> Result<Option<Bytes>, FramingError> {
        if let Some(part) = self.next_part()? {
            return Ok(Some(part));
        }
        if self.state != State::InPart {
            return Ok(None);
        }
        // No delimiter in the buffer: the bytes after buf[0] are all this part's so far.
        let content = &self.buf[1..];
        let Some(n) = complete(content) else {
            return Ok(None);
        };
        let Some(rest) = content.get(n..) else {
            return Ok(None);
        };
        if !(rest.starts_with(b"\r\n") || rest.starts_with(b"\n")) {
            return Ok(None);
        }
        if n as u64 > self.max_part_bytes {
            return Err(self.too_large());
        }
        self.part_offset = self.dropped;
        let mut taken = self.buf.split_to(1 + n);
        self.dropped += 1 + n as u64;
        taken.advance(1);
        self.parts += 1;
        self.state = State::Between;
        self.scan_from = 0;
        Ok(Some(taken.freeze()))
    }

    /// Called at the end of the body: an error unless the close delimiter was seen.
    pub fn finish(&self) -> Result<(), FramingError> {
        match self.state {
            State::Closed => Ok(()),
            State::Preamble => Err(FramingError::NoParts {
                boundary: self.boundary.clone(),
            }),
            State::InPart | State::Between => Err(FramingError::Truncated {
                part: self.parts,
                boundary: self.boundary.clone(),
            }),
        }
    }

    fn find_delimiter(&mut self) -> Option<usize> {
        let found = self
            .finder
            .find(&self.buf[self.scan_from..])
            .map(|i| i + self.scan_from);
        if found.is_none() {
            let keep = self.finder.needle().len() - 1;
            self.scan_from = self.scan_from.max(self.buf.len().saturating_sub(keep));
        }
        found
    }

    /// Classifies what follows `\n--boundary` at `at`.
    fn delimiter_line(&self, at: usize) -> Line {
        let after = &self.buf[at + self.finder.needle().len()..];
        if after.len() < 2 {
            return Line::Incomplete;
        }
        if after.starts_with(b"--") {
            return Line::Close;
        }
        for (i, &b) in after.iter().enumerate().take(MAX_DELIMITER_LINE_PADDING) {
            match b {
                b'\n' => return Line::Open(at + self.finder.needle().len() + i),
                b' ' | b'\t' | b'\r' => {}
                _ => return Line::NotADelimiter,
            }
        }
        if after.len() >= MAX_DELIMITER_LINE_PADDING {
            Line::NotADelimiter
        } else {
            Line::Incomplete
        }
    }

    /// `line_end` is the index of the `\n` ending the delimiter line; it becomes `buf[0]`.
    fn enter_part(&mut self, line_end: usize) {
        self.buf.advance(line_end);
        self.dropped += line_end as u64;
        self.scan_from = 0;
        self.state = State::InPart;
    }

    fn too_large(&self) -> FramingError {
        FramingError::PartTooLarge {
            part: self.parts,
            limit: self.max_part_bytes,
        }
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.buf = BytesMut::new();
        self.scan_from = 0;
    }
}

enum Line {
    Incomplete,
    NotADelimiter,
    Close,
    /// An opening delimiter whose line ends with the `\n` at this index.
    Open(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(body: &[u8], boundary: &str, chunk: usize) -> Result<Vec<Vec<u8>>, FramingError> {
        let mut s = PartSplitter::new(boundary, 1 << 20);
        let mut parts = Vec::new();
        for piece in body.chunks(chunk.max(1)) {
            s.push(piece);
            while let Some(p) = s.next_part()? {
                parts.push(p.to_vec());
            }
        }
        s.finish()?;
        Ok(parts)
    }

    #[test]
    fn boundaries_real_clients_send() {
        let b = boundary_from_content_type;
        assert_eq!(b("multipart/mixed; boundary=b1").unwrap(), "b1");
        assert_eq!(
            b("multipart/mixed; boundary=\"===============123==\"").unwrap(),
            "===============123=="
        );
        assert_eq!(b("multipart/mixed;; boundary=abc").unwrap(), "abc");
        assert_eq!(b("multipart/mixed; charset; boundary=x").unwrap(), "x");
        assert_eq!(
            b("multipart/mixed; a=\"q;boundary=no\"; boundary=yes").unwrap(),
            "yes"
        );
        assert_eq!(
            b("Multipart/Mixed; charset=utf-8; BOUNDARY=x;").unwrap(),
            "x"
        );
        for refused in [
            "application/json",
            "multipart/form-data; boundary=x",
            "text/plain",
            "multipart/related; boundary=x",
            "multipart/mixedx; boundary=x",
        ] {
            assert!(
                matches!(b(refused), Err(ContentTypeError::NotMultipart(_))),
                "{refused}"
            );
        }
        assert!(matches!(
            b("multipart/mixed"),
            Err(ContentTypeError::NoBoundary(_))
        ));
        assert!(matches!(
            b("multipart/mixed; boundary="),
            Err(ContentTypeError::BadBoundary(_))
        ));
        assert!(matches!(
            b("multipart/mixed; boundary=\"abc"),
            Err(ContentTypeError::BadBoundary(_))
        ));
    }

    #[test]
    fn crlf_lf_and_every_chunking_agree() {
        let crlf =
            b"preamble\r\n--b\r\nA: 1\r\n\r\nhello\r\n--b\r\n\r\nsecond\r\n--b--\r\nepilogue";
        let lf = b"--b\nA: 1\n\nhello\n--b\n\nsecond\n--b--";
        for chunk in 1..crlf.len() {
            let parts = split_all(crlf, "b", chunk).unwrap();
            assert_eq!(
                parts,
                vec![b"A: 1\r\n\r\nhello".to_vec(), b"\r\nsecond".to_vec()]
            );
        }
        for chunk in 1..lf.len() {
            let parts = split_all(lf, "b", chunk).unwrap();
            assert_eq!(parts, vec![b"A: 1\n\nhello".to_vec(), b"\nsecond".to_vec()]);
        }
    }

    #[test]
    fn a_longer_token_is_not_a_delimiter() {
        let body = b"--b\r\n\r\nx\r\n--bb is text\r\n--b--\r\n";
        assert_eq!(
            split_all(body, "b", 3).unwrap(),
            vec![b"\r\nx\r\n--bb is text".to_vec()]
        );
    }

    #[test]
    fn empty_parts_and_padding() {
        let body = b"--b  \r\n--b\t\r\n\r\n\r\n--b--";
        assert_eq!(
            split_all(body, "b", 1).unwrap(),
            vec![b"".to_vec(), b"\r\n".to_vec()]
        );
    }

    #[test]
    fn truncated_and_missing() {
        assert!(matches!(
            split_all(b"--b\r\n\r\nGET / HTTP/1.1\r\n", "b", 4),
            Err(FramingError::Truncated { part: 0, .. })
        ));
        assert!(matches!(
            split_all(b"no delimiter here", "b", 4),
            Err(FramingError::NoParts { .. })
        ));
        assert!(matches!(
            split_all(b"", "b", 4),
            Err(FramingError::NoParts { .. })
        ));
    }

    #[test]
    fn the_limit_does_not_depend_on_chunking() {
        // Found by fuzz/multipart: with the delimiter's CRLF or start in the buffer, a part of exactly the
        // limit used to be refused when the body arrived in small chunks.
        let body = b"--b\r\n0123456789\r\n--b--";
        for chunk in 1..body.len() {
            let mut s = PartSplitter::new("b", 10);
            let mut parts = Vec::new();
            for piece in body.chunks(chunk) {
                s.push(piece);
                while let Some(p) = s.next_part().unwrap() {
                    parts.push(p);
                }
            }
            assert_eq!(
                parts,
                vec![Bytes::from_static(b"0123456789")],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn part_offsets_point_into_the_body_however_it_is_chunked() {
        let body = b"preamble\r\n--b\r\nA: 1\r\n\r\nhello\r\n--b\r\n\r\nsecond\r\n--b\n\n--b--\r\n";
        let text = std::str::from_utf8(body).unwrap();
        let first = text.find("A: 1").unwrap() as u64;
        let second = text.find("\r\nsecond").unwrap() as u64;
        let third = text.rfind("\n--b--").unwrap() as u64;
        for chunk in 1..body.len() {
            let mut s = PartSplitter::new("b", 1 << 20);
            let mut offsets = Vec::new();
            for piece in body.chunks(chunk) {
                s.push(piece);
                while let Some(p) = s.next_part().unwrap() {
                    let at = s.part_offset() as usize;
                    assert_eq!(&body[at..at + p.len()], &p[..], "chunk {chunk}");
                    offsets.push(s.part_offset());
                }
            }
            assert_eq!(offsets, vec![first, second, third], "chunk {chunk}");
        }
    }

    #[test]
    fn a_part_over_the_limit_is_refused_while_streaming() {
        let mut s = PartSplitter::new("b", 10);
        s.push(b"--b\r\n");
        assert_eq!(s.next_part(), Ok(None));
        s.push(&[b'x'; 64]);
        assert!(matches!(
            s.next_part(),
            Err(FramingError::PartTooLarge { part: 0, limit: 10 })
        ));
    }
}
