//! The checks behind the fuzz targets (`fuzz/fuzz_targets/*.rs`) and their regression tests
//! (`tests/integration/fuzz_regressions.rs`): one function per target, taking the raw fuzzer input. Each decodes its
//! parameters from the first bytes, runs the wire code and panics when an invariant breaks. Plain std and
//! batchgate only, so `cargo test` runs them without any fuzzing dependency.

mod chunks;

use batchgate_wire::{
    ContentId, FramingError, PartLimits, PartSplitter, boundary_from_content_type, parse_part,
    write_close, write_request_part,
};
use bytes::BytesMut;
use http::Method;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};

use chunks::ChunkSizes;

/// `multipart`: `[boundary length][boundary][max_part_bytes][chunk seed: 2][body...]`.
///
/// Splits the body pushed whole, in chunks derived from the seed, and a byte at a time; all three must agree
/// with each other and with [`model_split`], and no part may exceed `max_part_bytes`.
pub(super) fn multipart(data: &[u8]) {
    let Some(input) = MultipartInput::decode(data) else {
        return;
    };
    let MultipartInput {
        boundary,
        max,
        seed,
        body,
    } = input;

    let whole = split(body, &boundary, max, std::iter::empty());
    for part in &whole.parts {
        assert!(
            part.len() as u64 <= max,
            "a part of {} bytes passed max_part_bytes = {max}",
            part.len()
        );
    }
    assert_eq!(
        whole.closed,
        whole.result.is_ok(),
        "is_closed disagrees with the result"
    );
    let chunked = split(body, &boundary, max, ChunkSizes::new(seed));
    assert_eq!(whole, chunked, "chunked push differs from one push");
    let bytewise = split(body, &boundary, max, std::iter::repeat(1));
    assert_eq!(whole, bytewise, "byte-at-a-time push differs from one push");
    let model = model_split(body, &boundary, max);
    assert_eq!(
        whole, model,
        "the splitter differs from the reference model"
    );
}

/// `embedded_request`: `[max_headers][max_header_bytes][part...]`.
///
/// Parses the part with small limits; a parsed request must respect them, carry no framing a proxy could
/// disagree on, and survive being written out and parsed again unchanged.
pub(super) fn embedded_request(data: &[u8]) {
    let [max_headers, max_header_bytes, part @ ..] = data else {
        return;
    };
    let limits = PartLimits {
        max_headers: usize::from(*max_headers % 8),
        max_header_bytes: usize::from(*max_header_bytes),
    };
    let parsed = parse_part(part, limits);
    if let Some(id) = &parsed.content_id {
        // Each U+FFFD (3 bytes) may stand for a single byte of invalid UTF-8.
        let value = id.header_value();
        let raw_bytes = value.len() - 2 * value.matches('\u{FFFD}').count();
        assert!(
            raw_bytes <= limits.max_header_bytes,
            "Content-ID of {raw_bytes} bytes passed max_header_bytes = {}",
            limits.max_header_bytes
        );
    }
    let Ok(request) = parsed.request else {
        return;
    };

    assert!(request.body.len() <= part.len());
    assert!(
        body_ends_part(part, &request.body),
        "the body is not at the end of the part"
    );
    assert!(
        request.headers.len() <= limits.max_headers,
        "{} headers passed max_headers = {}",
        request.headers.len(),
        limits.max_headers
    );
    let head_bytes: usize = request
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    assert!(
        head_bytes <= limits.max_header_bytes,
        "headers of {head_bytes} bytes passed max_header_bytes = {}",
        limits.max_header_bytes
    );
    assert!(
        request.method.as_str().len() + 1 + request.target.len() <= limits.max_header_bytes,
        "request line longer than max_header_bytes"
    );
    assert!(request.method != Method::CONNECT && request.method != Method::TRACE);
    assert!(!request.target.is_empty());
    assert!(
        !request
            .target
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' '),
        "target {:?} holds a control character or a space",
        request.target
    );
    assert!(!request.headers.contains_key(TRANSFER_ENCODING));
    for value in request.headers.get_all(CONTENT_LENGTH) {
        for item in value.to_str().unwrap().split(',') {
            assert_eq!(
                item.trim().parse::<usize>().ok(),
                Some(request.body.len()),
                "Content-Length {value:?} but a body of {}",
                request.body.len()
            );
        }
    }

    // Written back out (as the gateway's client library would) and parsed again, it is the same request.
    // The writer trusts its caller to pick a boundary that occurs nowhere else (a method or a body may
    // hold it); skip the inputs where this one does.
    const BOUNDARY: &str = "fuzz_rt_Zq9x";
    let mut out = BytesMut::new();
    write_request_part(&mut out, BOUNDARY, parsed.content_id.as_ref(), &request);
    write_close(&mut out, BOUNDARY);
    if count(&out, format!("--{BOUNDARY}").as_bytes()) != 2 {
        return;
    }
    let mut splitter = PartSplitter::new(BOUNDARY, u64::MAX);
    splitter.push(&out);
    let again = splitter.next_part().unwrap().expect("one part");
    assert_eq!(splitter.next_part(), Ok(None));
    splitter.finish().unwrap();
    let generous = PartLimits {
        max_headers: request.headers.len() + 1,
        max_header_bytes: usize::MAX,
    };
    let reparsed = parse_part(&again, generous);
    assert_eq!(reparsed.content_id, parsed.content_id);
    let mut reparsed = reparsed.request.expect("the written request parses");
    let mut request = request;
    reparsed.headers.remove(CONTENT_LENGTH);
    request.headers.remove(CONTENT_LENGTH);
    assert_eq!(reparsed, request, "write then parse changed the request");
}

/// `content_type`: the input as a `Content-Type` value.
///
/// A boundary that is accepted is valid, and survives being written back in quoted (and, for a token,
/// unquoted) form.
pub(super) fn content_type(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(boundary) = boundary_from_content_type(text) else {
        return;
    };
    assert!(!boundary.is_empty() && boundary.len() <= 200);
    assert!(
        !boundary
            .bytes()
            .any(|b| matches!(b, b'\r' | b'\n' | b'"' | 0)),
        "boundary {boundary:?} holds a forbidden byte"
    );
    let quoted = format!("multipart/mixed; boundary=\"{boundary}\"");
    assert_eq!(
        boundary_from_content_type(&quoted).as_deref(),
        Ok(boundary.as_str())
    );
    if boundary.bytes().all(is_token_byte) {
        let bare = format!("multipart/mixed; boundary={boundary}");
        assert_eq!(
            boundary_from_content_type(&bare).as_deref(),
            Ok(boundary.as_str())
        );
    }
    let _ = ContentId::parse(text).response_id();
}

struct MultipartInput<'a> {
    boundary: String,
    max: u64,
    seed: u16,
    body: &'a [u8],
}

impl<'a> MultipartInput<'a> {
    fn decode(data: &'a [u8]) -> Option<MultipartInput<'a>> {
        let (&len, rest) = data.split_first()?;
        let len = 1 + usize::from(len % 16);
        if rest.len() < len + 3 {
            return None;
        }
        let (boundary, rest) = rest.split_at(len);
        // Printable ASCII but `"` (what boundary_from_content_type can return, and more collisions than
        // arbitrary bytes); anything else becomes `-`, to make prefix collisions with `--` likely.
        let boundary = boundary
            .iter()
            .map(|&b| {
                if (0x20..0x7f).contains(&b) && b != b'"' {
                    char::from(b)
                } else {
                    '-'
                }
            })
            .collect();
        let max = match rest[0] {
            255 => u64::MAX,
            m => u64::from(m),
        };
        let seed = u16::from_le_bytes([rest[1], rest[2]]);
        Some(MultipartInput {
            boundary,
            max,
            seed,
            body: &rest[3..],
        })
    }
}

/// What a splitter made of a body: the parts, then the error or the `finish()` result.
#[derive(Debug, PartialEq)]
pub(super) struct Split {
    pub parts: Vec<Vec<u8>>,
    pub result: Result<(), FramingError>,
    pub closed: bool,
}

/// Pushes `body` in chunks of the given sizes (the rest in one chunk once they run out), pulling every
/// part after each push, as the gateway does. Stops at the first error.
pub(super) fn split(
    body: &[u8],
    boundary: &str,
    max: u64,
    sizes: impl IntoIterator<Item = usize>,
) -> Split {
    let mut splitter = PartSplitter::new(boundary, max);
    let mut parts = Vec::new();
    let mut sizes = sizes.into_iter();
    let mut rest = body;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
        splitter.push(&rest[..n]);
        rest = &rest[n..];
        loop {
            match splitter.next_part() {
                Ok(Some(part)) => parts.push(part.to_vec()),
                Ok(None) => break,
                Err(e) => {
                    return Split {
                        parts,
                        result: Err(e),
                        closed: splitter.is_closed(),
                    };
                }
            }
        }
    }
    Split {
        parts,
        result: splitter.finish(),
        closed: splitter.is_closed(),
    }
}

/// The splitter's contract, written plainly over the whole body: no buffering, no resumable state.
pub(super) fn model_split(body: &[u8], boundary: &str, max: u64) -> Split {
    // A virtual line break lets a body open with its first delimiter.
    let text = [b"\n".as_slice(), body].concat();
    let needle = format!("\n--{boundary}").into_bytes();
    let n = needle.len();
    let too_large = |part| FramingError::PartTooLarge { part, limit: max };
    let mut parts = Vec::new();
    let mut search_from = 0;
    // Where the current part's content starts; `None` in the preamble.
    let mut content_start: Option<usize> = None;
    loop {
        let found = find(&text[search_from..], &needle).map(|i| i + search_from);
        let Some(start) = content_start else {
            let Some(at) = found else {
                return failed(
                    parts,
                    FramingError::NoParts {
                        boundary: boundary.into(),
                    },
                );
            };
            match classify(&text[at + n..]) {
                Line::Incomplete => {
                    return failed(
                        parts,
                        FramingError::NoParts {
                            boundary: boundary.into(),
                        },
                    );
                }
                Line::NotADelimiter => search_from = at + 1,
                Line::Close => return closed(parts),
                Line::Open(i) => {
                    // The line break ending a delimiter line may begin the next delimiter.
                    search_from = at + n + i;
                    content_start = Some(search_from + 1);
                }
            }
            continue;
        };
        let part = parts.len();
        let Some(at) = found else {
            // Only the last `n` bytes (a delimiter's start and the CR before it) might not be content.
            let certain = (text.len() - start).saturating_sub(n);
            return failed(
                parts,
                if certain as u64 > max {
                    too_large(part)
                } else {
                    FramingError::Truncated {
                        part,
                        boundary: boundary.into(),
                    }
                },
            );
        };
        // The line break before a delimiter belongs to it: CRLF or LF.
        let mut end = at.max(start);
        if end > start && text[end - 1] == b'\r' {
            end -= 1;
        }
        // Whatever follows, the part holds at least these bytes.
        if (end - start) as u64 > max {
            return failed(parts, too_large(part));
        }
        match classify(&text[at + n..]) {
            Line::Incomplete => {
                return failed(
                    parts,
                    FramingError::Truncated {
                        part,
                        boundary: boundary.into(),
                    },
                );
            }
            Line::NotADelimiter => search_from = at + 1,
            Line::Close => {
                parts.push(text[start..end].to_vec());
                return closed(parts);
            }
            Line::Open(i) => {
                parts.push(text[start..end].to_vec());
                search_from = at + n + i;
                content_start = Some(search_from + 1);
            }
        }
    }
}

fn failed(parts: Vec<Vec<u8>>, e: FramingError) -> Split {
    Split {
        parts,
        result: Err(e),
        closed: false,
    }
}

fn closed(parts: Vec<Vec<u8>>) -> Split {
    Split {
        parts,
        result: Ok(()),
        closed: true,
    }
}

enum Line {
    /// The body ends before the line can be told apart.
    Incomplete,
    NotADelimiter,
    Close,
    /// An opening delimiter whose line ends `i` bytes after the boundary.
    Open(usize),
}

/// What follows `--boundary`: `--`, or transport padding (up to 64 bytes of space, tab, CR) then LF.
fn classify(after: &[u8]) -> Line {
    if after.len() < 2 {
        return Line::Incomplete;
    }
    if after.starts_with(b"--") {
        return Line::Close;
    }
    match after
        .iter()
        .take(64)
        .position(|b| !matches!(b, b' ' | b'\t' | b'\r'))
    {
        Some(i) if after[i] == b'\n' => Line::Open(i),
        Some(_) => Line::NotADelimiter,
        None if after.len() >= 64 => Line::NotADelimiter,
        None => Line::Incomplete,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// The body is the end of the part, or (with a Content-Length) followed only by white space.
fn body_ends_part(part: &[u8], body: &[u8]) -> bool {
    let mut end = part.len();
    loop {
        if part[..end].ends_with(body) {
            return true;
        }
        if end == 0 || !part[end - 1].is_ascii_whitespace() {
            return false;
        }
        end -= 1;
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
