//! W3C Trace Context: a batch joins the trace its `traceparent` names, or starts one; each part is a span of
//! its own in that trace, and its upstream gets a `traceparent` naming that span, so the upstream's spans
//! hang under the part that caused them.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use rand::Rng;

pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The trace a batch belongs to.
#[derive(Debug, Clone)]
pub(crate) struct TraceContext {
    pub trace_id: [u8; 16],
    /// The batch's own span.
    pub span_id: [u8; 8],
    /// The caller's span, when the batch joined a trace: the exported batch span's parent.
    #[cfg_attr(
        not(feature = "otel"),
        allow(dead_code, reason = "read by the OTLP exporter (the otel feature)")
    )]
    pub parent: Option<[u8; 8]>,
    pub flags: u8,
    /// The caller's `tracestate`, passed on as it came.
    pub state: Option<HeaderValue>,
}

impl TraceContext {
    /// Joins the trace of a valid `traceparent` among `headers`, or starts a new, sampled one.
    pub(crate) fn from_headers(headers: &HeaderMap) -> TraceContext {
        let mut rng = rand::rng();
        let span_id = nonzero(|| rng.random());
        let joined = headers
            .get(&TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse);
        match joined {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                span_id,
                parent: Some(parent),
                flags,
                state: headers.get(&TRACESTATE).cloned(),
            },
            None => TraceContext {
                trace_id: nonzero(|| rng.random()),
                span_id,
                parent: None,
                flags: 0x01,
                state: None,
            },
        }
    }

    /// The trace id as log fields show it, written on the stack.
    pub(crate) fn trace_id_hex(&self) -> Hex<32> {
        Hex::of(&self.trace_id)
    }

    pub(crate) fn span_id_hex(&self) -> Hex<16> {
        Hex::of(&self.span_id)
    }

    /// A new span of the trace for one part, and the `traceparent` its upstream gets.
    pub(crate) fn child(&self) -> ([u8; 8], HeaderValue) {
        let span: [u8; 8] = nonzero(|| rand::rng().random());
        (span, self.traceparent(span))
    }

    /// The `traceparent` naming `span` in this trace.
    pub(crate) fn traceparent(&self, span: [u8; 8]) -> HeaderValue {
        // Written in place, once per part: no formatting machinery, no intermediate strings.
        let mut value = *b"00-________________________________-________________-__";
        hex_into(&mut value[3..35], &self.trace_id);
        hex_into(&mut value[36..52], &span);
        hex_into(&mut value[53..55], &[self.flags]);
        HeaderValue::from_bytes(&value).expect("hex digits")
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero (W3C Trace Context, version 00; later versions are read
/// by the same prefix).
fn parse(value: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut fields = value.trim().split('-');
    let version = fields.next()?;
    let (trace, parent, flags) = (fields.next()?, fields.next()?, fields.next()?);
    if version.len() != 2 || version == "ff" || (version == "00" && fields.next().is_some()) {
        return None;
    }
    let trace: [u8; 16] = unhex(trace)?;
    let parent: [u8; 8] = unhex(parent)?;
    let [flags]: [u8; 1] = unhex(flags)?;
    let valid = trace.iter().any(|&b| b != 0) && parent.iter().any(|&b| b != 0);
    valid.then_some((trace, parent, flags))
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// `N` lower-case hex digits, held inline: ids go into spans without a heap string each.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hex<const N: usize>([u8; N]);

impl<const N: usize> Hex<N> {
    pub(crate) fn of(bytes: &[u8]) -> Hex<N> {
        debug_assert_eq!(bytes.len() * 2, N);
        let mut out = [0; N];
        hex_into(&mut out, bytes);
        Hex(out)
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits")
    }
}

/// Lower-case hex of `bytes` into `out`, two digits a byte.
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

fn nonzero<const N: usize>(mut draw: impl FnMut() -> [u8; N]) -> [u8; N] {
    loop {
        let id = draw();
        if id.iter().any(|&b| b != 0) {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_joins_the_callers_trace_and_parts_get_spans_of_their_own() {
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        headers.insert(TRACESTATE, "congo=t61rcWkgMzE".parse().unwrap());
        let batch = TraceContext::from_headers(&headers);
        assert_eq!(
            batch.trace_id_hex().as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            batch.parent.map(|p| Hex::<16>::of(&p)).unwrap().as_str(),
            "00f067aa0ba902b7"
        );
        let (span, value) = batch.child();
        let value = value.to_str().unwrap().to_owned();
        assert_eq!(
            value,
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
                Hex::<16>::of(&span).as_str()
            )
        );
        assert_ne!(batch.child().0, span, "each part has its own span");
    }

    #[test]
    fn an_invalid_traceparent_starts_a_new_trace() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(TRACEPARENT, bad.parse().unwrap());
            let batch = TraceContext::from_headers(&headers);
            assert!(batch.parent.is_none(), "{bad}");
            assert_ne!(
                batch.trace_id_hex().as_str(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
        }
    }
}
