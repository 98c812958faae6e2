//! The checks behind the `json` fuzz target (`fuzz/fuzz_targets/json.rs`), shared with the replay of its saved
//! inputs (`tests/fixtures/fuzz/json/`, the test below): the JSON batch reader never panics, reads the same
//! whatever pieces the body comes in, keeps its bounds, accepts only JSON, and what it accepts goes back out
//! through the reply writer as valid JSON carrying the same ids and bodies.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;

use super::json::{JsonError, PartReader, ReplyWriter};
#[path = "../../tests/fuzz_checks/chunks.rs"]
mod chunks;
use super::{Part, Rendered};
use crate::stack::UpstreamResponse;
use batchgate_wire::{Framing, PartLimits};
use chunks::ChunkSizes;

const LIMITS: PartLimits = PartLimits {
    max_headers: 16,
    max_header_bytes: 512,
};

/// `json`: `[max_part_bytes: 2][chunk seed: 2][body...]`.
///
/// Panics when:
/// - the body read whole, in pieces derived from the seed, or a byte at a time gives different parts or a
///   different result;
/// - a part depends on itself or a later part, two ids are equal without letter case, or a body is larger
///   than `max_part_bytes`;
/// - a syntax error's offset lies past the body;
/// - an accepted body is not JSON, or its `requests` array has another number of elements than were read;
/// - the reply rendered for the parts (each answered with its own headers and body) is not JSON, names
///   another id, or carries another body.
pub(crate) fn json(data: &[u8]) {
    let [m0, m1, s0, s1, body @ ..] = data else {
        return;
    };
    let max = u64::from(u16::from_le_bytes([*m0, *m1]));
    let seed = u16::from_le_bytes([*s0, *s1]);

    let whole = read(body, max, std::iter::empty());
    assert_eq!(
        whole,
        read(body, max, ChunkSizes::new(seed)),
        "pieces from seed {seed} read differently"
    );
    assert_eq!(
        whole,
        read(body, max, std::iter::repeat(1)),
        "a byte at a time reads differently"
    );
    let Read { parts, result } = whole;

    let mut ids = std::collections::HashSet::new();
    for (index, (id, request, depends_on)) in parts.iter().enumerate() {
        let id = id.as_deref().expect("a JSON request has an id");
        assert!(ids.insert(id.to_lowercase()), "duplicate id {id:?}");
        assert!(
            depends_on.iter().all(|&d| d < index),
            "part {index} depends on {depends_on:?}"
        );
        if let Ok(request) = request {
            assert!(
                request.body.len() as u64 <= max,
                "a body past max_part_bytes"
            );
        }
    }
    match &result {
        Err(JsonError::Syntax { offset, .. }) => {
            assert!(
                *offset <= body.len() as u64,
                "offset {offset} past the body"
            );
        }
        Err(_) => {}
        Ok(()) => match serde_json::from_slice::<Value>(body) {
            Ok(value) => assert_eq!(
                value["requests"].as_array().map(Vec::len),
                Some(parts.len()),
                "requests read"
            ),
            Err(e) => assert!(
                e.to_string().contains("recursion limit"),
                "accepted a body that is not JSON: {e}"
            ),
        },
    }
    round_trip(&parts);
}

/// What reading a body gave: each part as `(id, request, dependsOn)`, then the error or `finish()`'s result.
#[derive(Debug, PartialEq)]
struct Read {
    parts: Vec<Summary>,
    result: Result<(), JsonError>,
}

type Summary = (
    Option<String>,
    Result<batchgate_wire::EmbeddedRequest, batchgate_wire::RequestError>,
    Vec<usize>,
);

/// Pushes `body` in pieces of the given sizes (the rest at once when they run out), pulling every part after
/// each push, as the read stage does. Stops at the first error.
fn read(body: &[u8], max: u64, sizes: impl IntoIterator<Item = usize>) -> Read {
    let mut reader = PartReader::new(max, LIMITS);
    let mut parts = Vec::new();
    let mut sizes = sizes.into_iter();
    let mut rest = body;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
        reader.push(&rest[..n]);
        rest = &rest[n..];
        loop {
            match reader.next_part() {
                Ok(Some(part)) => parts.push(summary(part)),
                Ok(None) => break,
                Err(error) => {
                    return Read {
                        parts,
                        result: Err(error),
                    };
                }
            }
        }
    }
    Read {
        parts,
        result: reader.finish(),
    }
}

fn summary(part: Part) -> Summary {
    (
        part.content_id.map(|id| id.id().to_owned()),
        part.request,
        part.depends_on.into_vec(),
    )
}

/// Renders each readable part answered with its own headers and body, and reads the reply back.
fn round_trip(parts: &[Summary]) {
    let writer = ReplyWriter;
    let mut reply = writer.open().to_vec();
    let mut sent = Vec::new();
    for (index, (id, request, _)) in parts.iter().enumerate() {
        let Ok(request) = request else { continue };
        let at = sent.len();
        let response = UpstreamResponse {
            status: StatusCode::OK,
            headers: request.headers.clone(),
            body: vec![request.body.clone()],
            body_len: request.body.len() as u64,
            framing: Framing::Exact,
            peer: None,
        };
        let id = id
            .as_ref()
            .map(|id| batchgate_wire::ContentId::new(id.clone(), false));
        match writer.response(at, id.as_ref(), &response) {
            Rendered::Whole(bytes) => reply.extend_from_slice(&bytes),
            Rendered::Pieces(pieces) => pieces.iter().for_each(|p| reply.extend_from_slice(p)),
        }
        sent.push((index, request.body.clone()));
    }
    reply.extend_from_slice(&writer.close());
    let value: Value = match serde_json::from_slice(&reply) {
        Ok(value) => value,
        Err(e) if e.to_string().contains("recursion limit") => return,
        Err(e) => panic!(
            "the reply is not JSON ({e}): {}",
            String::from_utf8_lossy(&reply)
        ),
    };
    let responses = value["responses"].as_array().expect("a responses array");
    assert_eq!(responses.len(), sent.len());
    for (response, (index, body)) in responses.iter().zip(sent) {
        assert_eq!(
            response["id"].as_str(),
            parts[index].0.as_deref(),
            "the id of part {index}"
        );
        assert!(
            response["headers"]
                .as_object()
                .expect("headers")
                .keys()
                .all(|k| *k == k.to_lowercase())
        );
        assert!(
            carries(&response["body"], &body),
            "part {index}'s body: {response}"
        );
    }
}

/// Whether a reply element's body is what was sent: nothing for nothing; a string as the text itself, as
/// base64url, or as the JSON string sent; any other value as the JSON value sent.
fn carries(body: &Value, sent: &Bytes) -> bool {
    if sent.is_empty() {
        return body.is_null();
    }
    let as_json = serde_json::from_slice::<Value>(sent).ok();
    match body {
        Value::String(text) => {
            text.as_bytes() == &sent[..]
                || URL_SAFE_NO_PAD.decode(text).ok().as_deref() == Some(&sent[..])
                || as_json.as_ref() == Some(body)
        }
        value => as_json.as_ref() == Some(value),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn saved_inputs_pass_the_json_checks() {
        crate::fuzz_inputs::replay("json", 8, super::json);
    }
}
