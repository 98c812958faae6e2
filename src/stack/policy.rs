//! The header policy layer: the upstream sees the batch's inherited headers overridden by the part's own,
//! the gateway's forwarding headers, no cookies where the route strips them, and a `traceparent` naming the
//! part's own span in the batch's trace.

use std::task::{Context, Poll};

use http::header::ACCEPT_ENCODING;
use tower::{Layer, Service};

use super::{PartRequest, UpstreamResponse};
use crate::error::PartError;
use crate::observe::trace::{Hex, TRACEPARENT, TRACESTATE};

/// Applies the batch's [`BatchHeaders`](crate::headers::BatchHeaders) to each part.
#[derive(Debug, Clone)]
pub(crate) struct PolicyLayer {
    strip_cookies: bool,
}

impl PolicyLayer {
    pub(crate) fn new(strip_cookies: bool) -> PolicyLayer {
        PolicyLayer { strip_cookies }
    }
}

impl<S> Layer<S> for PolicyLayer {
    type Service = Policy<S>;

    fn layer(&self, inner: S) -> Policy<S> {
        Policy {
            inner,
            strip_cookies: self.strip_cookies,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Policy<S> {
    inner: S,
    strip_cookies: bool,
}

impl<S> Service<PartRequest> for Policy<S>
where
    S: Service<PartRequest, Response = UpstreamResponse, Error = PartError>,
{
    type Response = UpstreamResponse;
    type Error = PartError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PartError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: PartRequest) -> S::Future {
        // Taken before the merge drops it: it says what the client can decode, not what to ask for.
        request.accepts = request.headers.get(ACCEPT_ENCODING).cloned();
        let own = std::mem::take(&mut request.headers);
        request.headers = request.batch.headers.for_part(own, self.strip_cookies);
        // The part is a span of the batch's trace: its upstream's spans hang under it.
        let trace = &request.batch.trace;
        let part = (!request.span.is_disabled()).then_some(&request.span);
        #[cfg(feature = "otel")]
        let (span, traceparent) = match part.and_then(crate::otel::span_id) {
            Some(id) => (id, trace.traceparent(id)),
            None => trace.child(),
        };
        #[cfg(not(feature = "otel"))]
        let (span, traceparent) = trace.child();
        if let Some(part) = part {
            part.record("span_id", Hex::<16>::of(&span).as_str());
        }
        request.headers.insert(TRACEPARENT, traceparent);
        match &trace.state {
            Some(state) => request.headers.insert(TRACESTATE, state.clone()),
            None => request.headers.remove(TRACESTATE),
        };
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::{Arc, Mutex};

    use http::{HeaderMap, StatusCode};
    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::Config;
    use crate::headers::HeaderRules;
    use crate::observe::trace::TraceContext;
    use crate::stack::ratelimit::ClientKey;
    use crate::stack::tests::part_request;
    use crate::stack::{BatchScope, ResponseBudget};

    const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                )
            })
            .collect()
    }

    /// The request the upstream side gets for a part with `own` headers, of a batch sent from 192.0.2.7
    /// over plain HTTP with `outer` headers, through a policy that strips cookies or not.
    async fn through(
        outer: &[(&str, &str)],
        own: &[(&str, &str)],
        strip_cookies: bool,
    ) -> PartRequest {
        let outer = headers(outer);
        let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let part = PartRequest {
            headers: headers(own),
            batch: Arc::new(BatchScope {
                headers: HeaderRules::new(&Config::default()).batch(&outer, client, false),
                budget: ResponseBudget::new(u64::MAX),
                client: ClientKey::Ip(client),
                trace: TraceContext::from_headers(&outer),
                job: None,
            }),
            ..part_request(0)
        };
        let seen = Arc::new(Mutex::new(None));
        let keep = seen.clone();
        let inner = service_fn(move |request: PartRequest| {
            *keep.lock().unwrap() = Some(request);
            async { Ok::<_, PartError>(crate::stack::tests::answer(StatusCode::OK, b"")) }
        });
        PolicyLayer::new(strip_cookies)
            .layer(inner)
            .oneshot(part)
            .await
            .unwrap();
        seen.lock().unwrap().take().expect("the part went on")
    }

    /// The batch's headers are inherited, the part's own override them name by name, and the part cannot
    /// set the forwarding headers: the gateway sets them from the connection.
    #[tokio::test]
    async fn parts_inherit_the_batchs_headers_and_override_them() {
        let request = through(
            &[
                ("authorization", "Bearer batch"),
                ("x-tenant", "t1"),
                ("x-forwarded-for", "203.0.113.9"),
                ("host", "gw.example"),
            ],
            &[("x-tenant", "t2"), ("x-forwarded-for", "198.51.100.1")],
            false,
        )
        .await;
        let h = &request.headers;
        assert_eq!(h["authorization"], "Bearer batch");
        assert_eq!(h.get_all("x-tenant").iter().collect::<Vec<_>>(), ["t2"]);
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["192.0.2.7"],
            "neither the batch's nor the part's claim: the peer is no trusted proxy"
        );
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "gw.example");
        assert!(!h.contains_key("host"));
    }

    /// Cookies reach the upstream unless the route strips them.
    #[tokio::test]
    async fn cookies_are_stripped_only_where_the_route_says() {
        let outer = [("cookie", "session=batch")];
        let own = [("cookie", "session=part")];
        let kept = through(&outer, &own, false).await;
        assert_eq!(kept.headers["cookie"], "session=part");
        let inherited = through(&outer, &[], false).await;
        assert_eq!(inherited.headers["cookie"], "session=batch");
        for stripped in [
            through(&outer, &own, true).await,
            through(&outer, &[], true).await,
        ] {
            assert!(!stripped.headers.contains_key("cookie"));
        }
    }

    /// The part's `Accept-Encoding` says what its client decodes (kept for the rules layer) and is not
    /// forwarded: the upstream is never asked to compress.
    #[tokio::test]
    async fn accept_encoding_is_kept_for_the_answer_not_sent() {
        let request = through(
            &[("accept-encoding", "br")],
            &[("accept-encoding", "gzip")],
            false,
        )
        .await;
        assert_eq!(request.accepts.unwrap(), "gzip");
        assert!(!request.headers.contains_key("accept-encoding"));
        let request = through(&[("accept-encoding", "br")], &[], false).await;
        assert!(request.accepts.is_none(), "the batch's is not the part's");
    }

    /// Each part is a span of the batch's trace: the trace id is kept, the parent span is the part's own.
    #[tokio::test]
    async fn each_part_carries_the_batchs_trace_with_a_span_of_its_own() {
        let outer = [("traceparent", TRACE), ("tracestate", "vendor=1")];
        let first = through(
            &outer,
            &[(
                "traceparent",
                "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01",
            )],
            false,
        )
        .await;
        let second = through(&outer, &[], false).await;
        let ids: Vec<String> = [&first, &second]
            .iter()
            .map(|r| r.headers["traceparent"].to_str().unwrap().to_owned())
            .collect();
        for id in &ids {
            assert!(
                id.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{id}"
            );
            assert!(!id.contains("00f067aa0ba902b7"), "a span of its own: {id}");
        }
        assert_ne!(ids[0], ids[1]);
        assert_eq!(first.headers["tracestate"], "vendor=1");

        let untraced = through(&[], &[("tracestate", "forged=1")], false).await;
        assert!(untraced.headers.contains_key("traceparent"), "a new trace");
        assert!(!untraced.headers.contains_key("tracestate"));
    }
}
