//! Properties of the wire format: what the writers produce, the readers give back unchanged, however the
//! bytes are chunked on the way.

use batchgate_client::parse_reply;
use batchgate_wire::{
    ContentId, EmbeddedRequest, Framing, FramingError, PartLimits, PartSplitter, parse_part,
    write_close, write_reply, write_reply_part, write_request_part,
};
use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use proptest::prelude::*;

const LIMITS: PartLimits = PartLimits {
    max_headers: 16,
    max_header_bytes: 16 << 10,
};

/// RFC 2046 `bchars` but space (so the boundary is also a valid unquoted parameter value).
fn boundary() -> impl Strategy<Value = String> {
    "[A-Za-z0-9'()+_,./:=?-]{1,24}"
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::PATCH),
        Just(Method::DELETE),
        Just(Method::HEAD),
        Just(Method::OPTIONS),
        Just(Method::from_bytes(b"PROPFIND").unwrap()),
    ]
}

/// Origin-form targets from unreserved, sub-delim and path characters.
fn target() -> impl Strategy<Value = String> {
    "/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,40}"
}

/// Token names that start with a letter (a line starting with `-` could pose as a delimiter), values of
/// visible ASCII with inner spaces; never the framing headers the writers set themselves.
fn headers() -> impl Strategy<Value = HeaderMap> {
    let name = "[a-zA-Z][a-zA-Z0-9!#$%&'*+.^_`|~-]{0,19}".prop_filter("framing header", |n| {
        !n.eq_ignore_ascii_case("content-length") && !n.eq_ignore_ascii_case("transfer-encoding")
    });
    let value = "([!-~]([ !-~]{0,30}[!-~])?)?";
    proptest::collection::vec((name, value), 0..6).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(&value).unwrap(),
            );
        }
        map
    })
}

fn content_id() -> impl Strategy<Value = Option<ContentId>> {
    let id = "[A-Za-z0-9._+@-]([A-Za-z0-9._+@ -]{0,18}[A-Za-z0-9._+@-])?";
    proptest::option::of(
        (id, any::<bool>()).prop_map(|(id, bracketed)| ContentId::new(id, bracketed)),
    )
}

/// Binary bytes, line breaks, and near misses of the delimiter: the boundary after a line break followed by
/// other text, its prefixes, its `--` without a line break.
fn tricky_bytes(boundary: String) -> impl Strategy<Value = Vec<u8>> {
    let b = boundary.into_bytes();
    let near_miss = (0..b.len(), 0..6usize).prop_map(move |(cut, suffix)| {
        let suffix: &[u8] = [&b"x"[..], b"-x", b"_", b" x", b"\t-y", b"0"][suffix];
        [&b"\r\n--"[..], &b[..=cut], suffix].concat()
    });
    let segment = prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..24),
        2 => near_miss,
        1 => Just(b"\r\n".to_vec()),
        1 => Just(b"\n".to_vec()),
        1 => Just(b"\r".to_vec()),
        1 => Just(b"--".to_vec()),
        1 => Just(b" \t".to_vec()),
    ];
    proptest::collection::vec(segment, 0..12).prop_map(|s| s.concat())
}

/// Whether `body`, written between the line break ending a head and the one before the next delimiter,
/// would itself hold a delimiter line (which the writers cannot prevent: the boundary must not occur).
fn holds_delimiter(body: &[u8], boundary: &str) -> bool {
    let text = [b"\r\n", body, b"\r\n--", boundary.as_bytes(), b"--"].concat();
    let needle = [b"\n--", boundary.as_bytes()].concat();
    let last = text.len() - needle.len() - 2;
    (0..last).any(|at| {
        if !text[at..].starts_with(&needle) {
            return false;
        }
        let after = &text[at + needle.len()..];
        after.starts_with(b"--")
            || after
                .iter()
                .take(64)
                .find(|b| !matches!(b, b' ' | b'\t' | b'\r'))
                == Some(&b'\n')
    })
}

/// A boundary and bodies that do not contain it as a delimiter.
fn boundary_and_bodies(n: std::ops::Range<usize>) -> impl Strategy<Value = (String, Vec<Bytes>)> {
    boundary().prop_flat_map(move |boundary| {
        let b = boundary.clone();
        let body = tricky_bytes(boundary.clone())
            .prop_filter("the body holds the delimiter", move |body| {
                !holds_delimiter(body, &b)
            })
            .prop_map(Bytes::from);
        (Just(boundary), proptest::collection::vec(body, n.clone()))
    })
}

/// Pushes `body` cut at `cuts` (any order, taken modulo the length), pulling parts after each push.
fn split(
    body: &[u8],
    boundary: &str,
    max: u64,
    cuts: &[usize],
) -> (Vec<Bytes>, Result<(), FramingError>) {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    cuts.push(body.len());
    cuts.sort_unstable();
    let mut splitter = PartSplitter::new(boundary, max);
    let mut parts = Vec::new();
    let mut from = 0;
    for to in cuts {
        splitter.push(&body[from..to]);
        from = to;
        loop {
            match splitter.next_part() {
                Ok(Some(part)) => parts.push(part),
                Ok(None) => break,
                Err(e) => return (parts, Err(e)),
            }
        }
    }
    (parts, splitter.finish())
}

type RequestPart = (Option<ContentId>, EmbeddedRequest);

fn request_batch() -> impl Strategy<Value = (String, Vec<RequestPart>)> {
    boundary_and_bodies(1..6).prop_flat_map(|(boundary, bodies)| {
        let parts: Vec<_> = bodies
            .into_iter()
            .map(|body| {
                (content_id(), method(), target(), headers()).prop_map(
                    move |(id, method, target, headers)| {
                        let request = EmbeddedRequest {
                            method,
                            target,
                            headers,
                            body: body.clone(),
                        };
                        (id, request)
                    },
                )
            })
            .collect();
        (Just(boundary), parts)
    })
}

type Reply = (Option<ContentId>, StatusCode, HeaderMap, Bytes);

fn reply_batch() -> impl Strategy<Value = (String, Vec<Reply>)> {
    boundary_and_bodies(1..6).prop_flat_map(|(boundary, bodies)| {
        let parts: Vec<_> = bodies
            .into_iter()
            .map(|body| {
                let status = (100u16..1000).prop_map(|c| StatusCode::from_u16(c).unwrap());
                (content_id(), status, headers())
                    .prop_map(move |(id, status, headers)| (id, status, headers, body.clone()))
            })
            .collect();
        (Just(boundary), parts)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn written_requests_parse_back_unchanged(
        (boundary, parts) in request_batch(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut out = BytesMut::new();
        for (id, request) in &parts {
            write_request_part(&mut out, &boundary, id.as_ref(), request);
        }
        write_close(&mut out, &boundary);

        let (raw, result) = split(&out, &boundary, 1 << 20, &cuts);
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(raw.len(), parts.len());
        for ((id, request), raw) in parts.iter().zip(&raw) {
            let parsed = parse_part(raw, LIMITS);
            prop_assert_eq!(&parsed.content_id, id);
            let mut got = parsed.request.unwrap();
            let length = got.headers.remove(CONTENT_LENGTH);
            prop_assert_eq!(&got, request);
            let expected = (!request.body.is_empty()).then(|| request.body.len().to_string());
            prop_assert_eq!(length.map(|v| v.to_str().unwrap().to_owned()), expected);
        }
    }

    #[test]
    fn written_replies_read_back_unchanged((boundary, replies) in reply_batch()) {
        let mut out = BytesMut::new();
        for (id, status, headers, body) in &replies {
            write_reply_part(&mut out, &boundary, id.as_ref(), *status, headers, body);
        }
        write_close(&mut out, &boundary);

        let read = parse_reply(&format!("multipart/mixed; boundary={boundary}"), &out).unwrap();
        prop_assert_eq!(read.len(), replies.len());
        for ((id, status, headers, body), mut got) in replies.into_iter().zip(read) {
            prop_assert_eq!(got.content_id, id);
            prop_assert_eq!(got.status, status);
            let length = got.headers.remove(CONTENT_LENGTH).unwrap();
            prop_assert_eq!(length.to_str().unwrap(), body.len().to_string());
            prop_assert_eq!(got.headers, headers);
            prop_assert_eq!(got.body, body);
        }
    }

    #[test]
    fn a_body_in_pieces_is_written_as_the_whole(
        (id, status, headers, body) in reply_batch().prop_map(|(_, mut replies)| replies.remove(0)),
        boundary in proptest::string::string_regex("[A-Za-z0-9]{1,70}").unwrap(),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut written = BytesMut::new();
        write_reply_part(&mut written, &boundary, id.as_ref(), status, &headers, &body);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        cuts.extend([0, body.len()]);
        cuts.sort_unstable();
        let pieces: Vec<&[u8]> = cuts.windows(2).map(|w| &body[w[0]..w[1]]).collect();
        let mut pieced = BytesMut::new();
        write_reply(&mut pieced, &boundary, id.as_ref(), status, &headers, pieces.iter().copied(), Framing::Exact);
        prop_assert_eq!(pieced.freeze(), written.freeze());
    }

    #[test]
    fn splitting_does_not_depend_on_chunking(
        (boundary, bodies) in boundary_and_bodies(1..4),
        glue in proptest::collection::vec(0..6usize, 1..4),
        max in prop_oneof![0..48u64, Just(u64::MAX)],
        cuts in proptest::collection::vec(any::<usize>(), 1..12),
    ) {
        // Bodies are joined by delimiter lines in every form the splitter accepts (and some it refuses).
        let mut body = b"preamble".to_vec();
        for (i, piece) in bodies.iter().enumerate() {
            let line: &[u8] = [&b"\r\n"[..], b"\n", b" \t\r\n", b"\r\r\n", b" x\r\n", b"-\n"]
                [glue[i % glue.len()]];
            body.extend_from_slice(b"\r\n--");
            body.extend_from_slice(boundary.as_bytes());
            body.extend_from_slice(line);
            body.extend_from_slice(piece);
        }
        body.extend_from_slice(format!("\r\n--{boundary}--\r\nepilogue").as_bytes());

        let whole = split(&body, &boundary, max, &[]);
        let chunked = split(&body, &boundary, max, &cuts);
        prop_assert_eq!(&whole, &chunked);
        let bytewise: Vec<usize> = (0..body.len()).collect();
        prop_assert_eq!(&whole, &split(&body, &boundary, max, &bytewise));
        for part in &whole.0 {
            prop_assert!(part.len() as u64 <= max);
        }
        if max == u64::MAX {
            prop_assert_eq!(whole.1, Ok(()));
        }
    }
}
