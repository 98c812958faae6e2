//! On routes with `prune_headers = true`: answer headers that say nothing to a client reading a part are
//! dropped, so a reply of many small parts stays within fewer TCP segments (with compression, ideally TCP's
//! first flight). Above the cache, which keeps whole answers (it needs their `Date`).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::HeaderName;
use http::header::{ACCEPT_RANGES, ALT_SVC, DATE, SERVER, STRICT_TRANSPORT_SECURITY, VIA};
use tower::{Layer, Service};

use super::{PartRequest, UpstreamResponse};
use crate::error::PartError;

/// What is dropped, and why each says nothing to the reader of a part: the reply has its own `Date`; the
/// upstream's software banners; the proxies it passed (`Via`); byte ranges it would serve to a direct client
/// (`Accept-Ranges`, an offer, unlike `Content-Range`); and policies for the upstream's own origin, which the
/// client never connects to (`Alt-Svc`, HSTS, reporting).
pub(crate) const PRUNED: [HeaderName; 12] = [
    DATE,
    SERVER,
    HeaderName::from_static("x-powered-by"),
    HeaderName::from_static("x-aspnet-version"),
    HeaderName::from_static("x-aspnetmvc-version"),
    VIA,
    ACCEPT_RANGES,
    ALT_SVC,
    STRICT_TRANSPORT_SECURITY,
    HeaderName::from_static("nel"),
    HeaderName::from_static("report-to"),
    HeaderName::from_static("expect-ct"),
];

/// Drops [`PRUNED`] headers from a route's answers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PruneLayer;

impl<S> Layer<S> for PruneLayer {
    type Service = Prune<S>;

    fn layer(&self, inner: S) -> Prune<S> {
        Prune { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Prune<S> {
    inner: S,
}

impl<S> Service<PartRequest> for Prune<S>
where
    S: Service<PartRequest, Response = UpstreamResponse, Error = PartError>,
{
    type Response = UpstreamResponse;
    type Error = PartError;
    type Future = PruneFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PartError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: PartRequest) -> Self::Future {
        PruneFuture {
            call: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner call, its answer pruned.
    pub(crate) struct PruneFuture<F> {
        #[pin]
        call: F,
    }
}

impl<F> Future for PruneFuture<F>
where
    F: Future<Output = Result<UpstreamResponse, PartError>>,
{
    type Output = Result<UpstreamResponse, PartError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = ready!(self.project().call.poll(cx))?;
        for name in &PRUNED {
            response.headers.remove(name);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, StatusCode};
    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::stack::tests::{answer, part_request};

    #[tokio::test]
    async fn drops_what_says_nothing_to_the_reader_and_keeps_the_rest() {
        let inner = service_fn(|_: PartRequest| async {
            let mut response = answer(StatusCode::OK, b"{}");
            for (name, value) in [
                ("date", "Mon, 07 Dec 2026 13:36:29 GMT"),
                ("server", "nginx/1.22.1"),
                ("x-powered-by", "Express"),
                ("accept-ranges", "bytes"),
                ("strict-transport-security", "max-age=63072000"),
                ("content-type", "application/json"),
                ("etag", "\"6b16b658-1f3\""),
                ("last-modified", "Mon, 07 Dec 2026 13:36:24 GMT"),
                ("cache-control", "max-age=60"),
                ("location", "/mail/1"),
            ] {
                response
                    .headers
                    .append(name, HeaderValue::from_static(value));
            }
            Ok::<_, PartError>(response)
        });
        let response = PruneLayer
            .layer(inner)
            .oneshot(part_request(0))
            .await
            .unwrap();
        let mut left: Vec<&str> = response.headers.keys().map(|n| n.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "cache-control",
                "content-type",
                "etag",
                "last-modified",
                "location"
            ]
        );
        assert_eq!(response.body, [bytes::Bytes::from_static(b"{}")]);
    }

    #[tokio::test]
    async fn an_error_passes_through() {
        let inner = service_fn(|request: PartRequest| async move {
            Err::<UpstreamResponse, _>(PartError::Internal {
                index: request.index,
                reason: "inner".to_owned(),
            })
        });
        let error = PruneLayer.layer(inner).oneshot(part_request(3)).await;
        assert!(matches!(error, Err(PartError::Internal { index: 3, .. })));
    }
}
