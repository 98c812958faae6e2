//! The route's path mapping, both ways: a part's path under the route prefix is forwarded under `rewrite`
//! (`/mail/x` -> `/api/v1/x`), and a `Location` the upstream answers with, pointing at its own origin, is
//! turned back into the gateway's view (`https://mail-1.internal:8443/api/v1/x` -> `/mail/x`), so internal
//! addresses do not leak to clients.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::LOCATION;
use http::uri::PathAndQuery;
use http::{HeaderValue, Uri};
use tower::{Layer, Service};

use super::{PartRequest, UpstreamResponse};
use crate::config::Origin;
use crate::error::PartError;

/// The mapping of one route.
#[derive(Debug)]
pub(crate) struct Mapping {
    /// The route prefix, as the client sees paths.
    pub prefix: String,
    /// What replaces it upstream; `None` keeps paths as they are.
    pub rewrite: Option<String>,
    /// The upstreams' origins: a `Location` naming one of these points inside the route.
    pub origins: Vec<Origin>,
}

impl Mapping {
    /// The upstream's path for the client's.
    fn forward(&self, path: &PathAndQuery) -> Option<PathAndQuery> {
        let rewrite = self.rewrite.as_deref()?;
        swap_prefix(path.as_str(), &self.prefix, rewrite)?
            .parse()
            .ok()
    }

    /// The client's path for the upstream's (`/api/v1/x?q` -> `/mail/x?q`): the cache's key.
    pub(super) fn client_path(&self, path: &str) -> String {
        match &self.rewrite {
            Some(rewrite) => {
                swap_prefix(path, rewrite, &self.prefix).unwrap_or_else(|| path.to_owned())
            }
            None => path.to_owned(),
        }
    }

    /// The client's view of a `Location` value, if it points at an upstream of this route.
    pub(super) fn back(
        &self,
        location: &str,
        peer: Option<std::net::SocketAddr>,
    ) -> Option<String> {
        let uri: Uri = location.parse().ok()?;
        let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        if let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) {
            let tls = scheme == &http::uri::Scheme::HTTPS;
            let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
            let ours = self.origins.iter().any(|o| {
                o.is_tls() == tls
                    && o.port() == port
                    && o.authority.host().eq_ignore_ascii_case(authority.host())
            }) || peer.is_some_and(|p| {
                p.port() == port && authority.host().trim_matches(['[', ']']) == p.ip().to_string()
            });
            if !ours {
                return None;
            }
        } else if !location.starts_with('/') || location.starts_with("//") {
            // Relative references other than absolute paths are left to the client to resolve.
            return None;
        }
        Some(same_origin(self.client_path(path)))
    }
}

/// `path` made safe to send as a `Location` on the gateway's origin: a mapped value starting with `//` or `/\`
/// would be a scheme-relative URL to another host (browsers read `\\` as `/`), so the leading run of slashes
/// and backslashes becomes one `/`.
fn same_origin(path: String) -> String {
    let rest = path.trim_start_matches(['/', '\\']);
    if rest.len() + 1 >= path.len() {
        return path;
    }
    format!("/{rest}")
}

/// `path` with `from` (matched on a segment boundary; `/a/` also matches the bare `/a`) replaced by `to`.
fn swap_prefix(path: &str, from: &str, to: &str) -> Option<String> {
    let (path, query) = match path.find('?') {
        Some(at) => path.split_at(at),
        None => (path, ""),
    };
    let dir = from.ends_with('/');
    let joined = match path.strip_prefix(from) {
        Some(rest) if dir => format!("{}/{rest}", to.trim_end_matches('/')),
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            format!("{}{rest}", to.trim_end_matches('/'))
        }
        _ if dir && path == from.trim_end_matches('/') => to.trim_end_matches('/').to_owned(),
        _ => return None,
    };
    let joined = if joined.is_empty() {
        "/".to_owned()
    } else {
        joined
    };
    Some(joined + query)
}

#[derive(Debug, Clone)]
pub(crate) struct RewriteLayer {
    mapping: Arc<Mapping>,
}

impl RewriteLayer {
    pub(crate) fn new(mapping: Arc<Mapping>) -> RewriteLayer {
        RewriteLayer { mapping }
    }
}

impl<S> Layer<S> for RewriteLayer {
    type Service = Rewrite<S>;

    fn layer(&self, inner: S) -> Rewrite<S> {
        Rewrite {
            inner,
            mapping: self.mapping.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Rewrite<S> {
    inner: S,
    mapping: Arc<Mapping>,
}

impl<S> Service<PartRequest> for Rewrite<S>
where
    S: Service<PartRequest, Response = UpstreamResponse, Error = PartError>,
{
    type Response = UpstreamResponse;
    type Error = PartError;
    type Future = RewriteFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PartError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: PartRequest) -> Self::Future {
        if let Some(path) = self.mapping.forward(&request.path) {
            request.path = path;
        }
        RewriteFuture {
            call: self.inner.call(request),
            mapping: self.mapping.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner call, its `Location` mapped back.
    pub(crate) struct RewriteFuture<F> {
        #[pin]
        call: F,
        mapping: Arc<Mapping>,
    }
}

impl<F> Future for RewriteFuture<F>
where
    F: Future<Output = Result<UpstreamResponse, PartError>>,
{
    type Output = Result<UpstreamResponse, PartError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.call.poll(cx))?;
        let location = response.headers.get(LOCATION).and_then(|v| v.to_str().ok());
        if let Some(back) = location.and_then(|l| this.mapping.back(l, response.peer))
            && let Ok(value) = HeaderValue::from_str(&back)
        {
            response.headers.insert(LOCATION, value);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(prefix: &str, rewrite: Option<&str>) -> Mapping {
        Mapping {
            prefix: prefix.to_owned(),
            rewrite: rewrite.map(str::to_owned),
            origins: vec![Origin {
                scheme: http::uri::Scheme::HTTPS,
                authority: "mail-1.internal:8443".parse().unwrap(),
            }],
        }
    }

    #[test]
    fn paths_go_under_the_rewrite_and_come_back_under_the_prefix() {
        let m = mapping("/mail/", Some("/api/v1/"));
        let fwd = |p: &str| m.forward(&p.parse().unwrap()).unwrap().to_string();
        assert_eq!(fwd("/mail/messages/1?x=1"), "/api/v1/messages/1?x=1");
        assert_eq!(fwd("/mail"), "/api/v1");
        assert_eq!(
            m.back("https://mail-1.internal:8443/api/v1/messages/7", None)
                .unwrap(),
            "/mail/messages/7"
        );
        assert_eq!(
            m.back("/api/v1/messages/7?a", None).unwrap(),
            "/mail/messages/7?a"
        );
        assert_eq!(m.back("https://elsewhere.example/x", None), None);
        assert_eq!(
            m.back("https://mail-1.internal/api/v1/x", None),
            None,
            "port 443 is another origin"
        );
        assert_eq!(
            m.back(
                "https://10.0.0.5:8443/api/v1/x",
                Some("10.0.0.5:8443".parse().unwrap())
            )
            .unwrap(),
            "/mail/x"
        );
        let plain = mapping("/posts", Some("/v2/posts"));
        assert_eq!(
            plain.forward(&"/posts/1".parse().unwrap()).unwrap(),
            "/v2/posts/1"
        );
        assert_eq!(
            plain.forward(&"/posts".parse().unwrap()).unwrap(),
            "/v2/posts"
        );
        let kept = mapping("/mail/", None);
        for (upstream_sent, mapped) in [
            (
                "https://mail-1.internal:8443//evil.example/x",
                "/evil.example/x",
            ),
            (
                "https://mail-1.internal:8443///evil.example",
                "/evil.example",
            ),
            (
                "https://mail-1.internal:8443/\\evil.example",
                "/evil.example",
            ),
            (
                "https://mail-1.internal:8443/%5Cevil.example",
                "/%5Cevil.example",
            ),
            ("/\\evil.example", "/evil.example"),
        ] {
            assert_eq!(
                kept.back(upstream_sent, None).as_deref(),
                Some(mapped),
                "{upstream_sent}"
            );
        }
        assert_eq!(
            m.back("https://mail-1.internal:8443/api/v1//evil.example", None)
                .unwrap(),
            "/mail//evil.example",
            "doubled slashes inside the path are not scheme-relative"
        );
        assert!(kept.forward(&"/mail/x".parse().unwrap()).is_none());
        assert_eq!(
            kept.back("https://mail-1.internal:8443/mail/x", None)
                .unwrap(),
            "/mail/x"
        );
    }
}
