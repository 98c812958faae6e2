//! The wire format's cost per batch, without any I/O: what the gateway spends reading a batch and writing
//! its reply, for 1, 100 (Gmail's limit) and 1000 (most Google APIs') parts.
//!
//! ```text
//! cargo bench --bench wire                 # full run
//! cargo bench --bench wire -- --quick      # a quick look
//! ```
//!
//! - `parse`: cut a request body into parts with `PartSplitter` (fed in 16 KiB chunks, as a socket delivers
//!   them) and `parse_part` every one, as the gateway does while the body streams in.
//! - `write`: `write_reply_part` for every part, each answering with ~500 bytes of JSON, then `write_close`.
//!
//! Each is reported twice: in bytes per second (`wire_bytes`) and in parts per second (`wire_parts`).

use std::hint::black_box;

use batchgate_wire::{
    ContentId, EmbeddedRequest, PartLimits, PartSplitter, parse_part, write_close,
    write_reply_part, write_request_part,
};
use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, VARY};
use http::{HeaderMap, Method, StatusCode};

const SIZES: [usize; 3] = [1, 100, 1000];
const REQUEST_BOUNDARY: &str = "batch_foobarbaz";
const REPLY_BOUNDARY: &str = "batch_x7GqA1b2C3d4E5f6G7h8I9j0";
/// About what a socket read hands the gateway at a time.
const CHUNK: usize = 16 * 1024;
/// The gateway's default limits.
const LIMITS: PartLimits = PartLimits {
    max_headers: 64,
    max_header_bytes: 16 << 10,
};
const MAX_PART_BYTES: u64 = 1 << 20;

/// A batch of `n` GET parts as in Google's Gmail example: `Content-ID: <itemN>`, an origin-form target, an
/// `Accept` header.
fn request_body(n: usize) -> Bytes {
    let mut headers = HeaderMap::new();
    headers.insert("accept", HeaderValue::from_static("application/json"));
    let mut body = BytesMut::new();
    for i in 1..=n {
        let request = EmbeddedRequest {
            method: Method::GET,
            target: format!("/gmail/v1/users/me/messages/{i}?format=metadata"),
            headers: headers.clone(),
            body: Bytes::new(),
        };
        let id = ContentId::new(format!("item{i}"), true);
        write_request_part(&mut body, REQUEST_BOUNDARY, Some(&id), &request);
    }
    write_close(&mut body, REQUEST_BOUNDARY);
    body.freeze()
}

/// What the gateway does with a request body: split it as it arrives, parse each part. Returns the number of
/// parts that parsed, so nothing can be optimised away.
fn parse(body: &[u8]) -> usize {
    let mut splitter = PartSplitter::new(REQUEST_BOUNDARY, MAX_PART_BYTES);
    let mut parsed = 0;
    for chunk in body.chunks(CHUNK) {
        splitter.push(chunk);
        while let Some(raw) = splitter.next_part().expect("well-formed") {
            let part = parse_part(&raw, LIMITS);
            parsed += usize::from(black_box(part).request.is_ok());
        }
    }
    splitter.finish().expect("closed");
    parsed
}

/// One upstream answer: a ~500-byte JSON message and the headers an API typically sends with it.
struct Answer {
    headers: HeaderMap,
    body: Bytes,
}

fn answer() -> Answer {
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    headers.insert(VARY, HeaderValue::from_static("Origin, X-Origin, Referer"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("private"));
    let snippet =
        "Quarterly report attached; please review the figures before the meeting on Thursday. ";
    let body = serde_json::json!({
        "id": "18c2f3a4b5d6e7f8",
        "threadId": "18c2f3a4b5d6e7f8",
        "labelIds": ["INBOX", "UNREAD", "CATEGORY_UPDATES"],
        "snippet": snippet.repeat(3),
        "historyId": "1234567",
        "internalDate": "1700000000000",
        "sizeEstimate": 4321,
        "payload": { "mimeType": "multipart/alternative", "headers": [
            { "name": "From", "value": "Alice Example <alice@example.com>" },
            { "name": "Subject", "value": "Quarterly report" }
        ]}
    })
    .to_string();
    Answer {
        headers,
        body: Bytes::from(body),
    }
}

/// What the gateway does for a reply: one part per answer, in order, then the close delimiter.
fn write(ids: &[ContentId], answer: &Answer) -> BytesMut {
    let mut out = BytesMut::new();
    for id in ids {
        write_reply_part(
            &mut out,
            REPLY_BOUNDARY,
            Some(id),
            StatusCode::OK,
            &answer.headers,
            &answer.body,
        );
    }
    write_close(&mut out, REPLY_BOUNDARY);
    out
}

fn benches(c: &mut Criterion) {
    let answer = answer();
    let cases: Vec<(usize, Bytes, Vec<ContentId>, usize)> = SIZES
        .iter()
        .map(|&n| {
            let body = request_body(n);
            // Checked once outside the timing: the bench measures the real thing, not an error path.
            assert_eq!(parse(&body), n, "every part parses");
            let ids: Vec<ContentId> = (1..=n)
                .map(|i| ContentId::new(format!("item{i}"), true))
                .collect();
            let reply_len = write(&ids, &answer).len();
            (n, body, ids, reply_len)
        })
        .collect();
    let (request_part, reply_part) = (cases[1].1.len() / 100, cases[1].3 / 100);
    println!("one request part is ~{request_part} bytes, one reply part ~{reply_part} bytes");

    for (group_name, in_bytes) in [("wire_bytes", true), ("wire_parts", false)] {
        let mut group = c.benchmark_group(group_name);
        for (n, body, ids, reply_len) in &cases {
            let throughput = |bytes: usize| {
                if in_bytes {
                    Throughput::Bytes(bytes as u64)
                } else {
                    Throughput::Elements(*n as u64)
                }
            };
            group.throughput(throughput(body.len()));
            group.bench_with_input(BenchmarkId::new("parse", n), body, |b, body| {
                b.iter(|| parse(black_box(body)))
            });
            group.throughput(throughput(*reply_len));
            group.bench_with_input(BenchmarkId::new("write", n), ids, |b, ids| {
                b.iter(|| write(black_box(ids), &answer))
            });
        }
        group.finish();
    }
}

criterion_group!(wire, benches);
criterion_main!(wire);
