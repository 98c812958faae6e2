//! The per-part call: one tower `Service` stack per route, from a routed part to its upstream's complete
//! answer or a typed [`PartError`].
//!
//! Each concern is a layer of its own, outermost first:
//! - [`policy`]: the headers the upstream sees (inherited from the batch, forwarding headers, cookies);
//! - [`ratelimit`]: the per-client limit, a token per part (below the policy: a part is keyed by the
//!   credential it is sent with);
//! - [`rewrite`]: the route's path mapping, and `Location` answers mapped back;
//! - [`prune`]: on routes with `prune_headers = true`, answer headers that say nothing to a part's reader
//!   dropped (above the cache, which needs them);
//! - [`fields`]: on routes with `fields = true`, the part's field mask taken off its target and applied to
//!   its JSON answer (above the cache: a cache holds whole answers);
//! - [`cache`]: on routes with `cache = true` or `coalesce = true` (the default), the HTTP cache (RFC 9111,
//!   over `crate::cache`'s store) and identical GETs in flight sharing one call;
//! - [`timeout`]: the route's time limit for the part, all its tries included (each try gets a share);
//! - [`retry`]: idempotent parts tried again elsewhere, within a budget;
//! - [`adaptive`]: on routes with a tuned limit, sub-requests in flight to the route, then (with [`limit`])
//!   across the gateway; on the others the scheduler takes both permits before the part enters the stack;
//! - [`rules`]: HTTP semantics of the answer (1xx, 204, HEAD and 304 lengths, unrequested compression);
//! - [`balance`]: which upstream address takes the part, and their passive health;
//! - [`pool`]: one address's keep-alive pool ([`connect`]: TCP, TLS), and the response size limits; an
//!   address that speaks only HTTP/1.1 is sent to by our own client ([`h1`]: the request written and the answer
//!   read on the part's own task), one that may speak HTTP/2 by hyper's.
//!
//! [`RouteStack`] builds a route's stack from its `[[routes]]` entry, layers in the order above, and holds it
//! with its balancer and in-flight limit as one handle (`build.rs`).
//!
//! A layer's future is a type of its own rather than a boxed one: a part's call is boxed once, where the
//! route's stack is type-erased (and once more in the balancer, which awaits in a loop).
//!
//! The scheduler knows nothing of HTTP beyond calling a route's [`PartService`].

pub(crate) mod adaptive;
pub(crate) mod balance;
mod build;
pub(crate) mod cache;
pub(crate) mod connect;
pub(crate) mod fields;
mod h1;
pub(crate) mod limit;
pub(crate) mod policy;
pub(crate) mod pool;
pub(crate) mod prune;
pub(crate) mod ratelimit;
pub(crate) mod retry;
pub(crate) mod rewrite;
pub(crate) mod rules;
pub(crate) mod timeout;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tower::util::BoxCloneSyncService;

use crate::error::PartError;
use crate::headers::BatchHeaders;
use crate::observe::timeline::PartTimeline;
use crate::observe::trace::TraceContext;
use balance::Tried;
use batchgate_wire::Framing;
pub(crate) use build::{RouteStack, Shared};
use ratelimit::ClientKey;
use timeout::Deadline;

/// A route's whole stack, type-erased so that every route's can be held and called alike.
pub(crate) type PartService = BoxCloneSyncService<PartRequest, UpstreamResponse, PartError>;

/// One routed part on its way upstream.
#[derive(Debug)]
pub(crate) struct PartRequest {
    /// The part's position in its batch: every error names it.
    pub index: usize,
    pub method: Method,
    /// Path and query; the upstream's scheme and authority come from the pool that takes it.
    pub path: PathAndQuery,
    /// The part's own headers; the policy layer turns them into what the upstream sees.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// What the parts of one batch share.
    pub batch: Arc<BatchScope>,
    /// The codings the client said it can decode in this part's body (the part's own `Accept-Encoding`, which
    /// is not forwarded). Set by the policy layer.
    pub accepts: Option<HeaderValue>,
    /// Where earlier tries of this part went, when it may be tried again.
    pub tried: Option<Arc<Tried>>,
    /// When this try's time is up: set by the timeout layer, a try's share of it set by the retry layer.
    pub deadline: Option<Deadline>,
    /// Where the part's marks go (sent, first byte), for the batch's timeline.
    pub timeline: Option<Arc<PartTimeline>>,
    /// The part's span, disabled unless part spans are on (`batchgate=debug`).
    pub span: tracing::Span,
}

impl PartRequest {
    /// A routed request as it enters its route's stack: nothing tried, timed or traced yet.
    pub(crate) fn new(
        index: usize,
        method: Method,
        path: PathAndQuery,
        headers: HeaderMap,
        body: Bytes,
        batch: Arc<BatchScope>,
    ) -> PartRequest {
        PartRequest {
            index,
            method,
            path,
            headers,
            body,
            batch,
            accepts: None,
            tried: None,
            deadline: None,
            timeline: None,
            span: tracing::Span::none(),
        }
    }

    /// A copy for another try.
    fn try_clone(&self) -> PartRequest {
        PartRequest {
            index: self.index,
            method: self.method.clone(),
            path: self.path.clone(),
            headers: self.headers.clone(),
            body: self.body.clone(),
            batch: self.batch.clone(),
            accepts: self.accepts.clone(),
            tried: self.tried.clone(),
            deadline: self.deadline.clone(),
            timeline: self.timeline.clone(),
            span: self.span.clone(),
        }
    }

    /// Safe methods (RFC 9110 9.2.1) may run before the whole batch is in: if the batch is then refused,
    /// nothing they did can have changed anything.
    pub(crate) fn is_safe(&self) -> bool {
        matches!(self.method, Method::GET | Method::HEAD | Method::OPTIONS)
    }

    /// Idempotent methods (RFC 9110 9.2.2), or a part with its own `Idempotency-Key`: sending one again after a
    /// failure cannot do twice what once would.
    pub(crate) fn is_idempotent(&self) -> bool {
        matches!(
            self.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
        ) || self.headers.contains_key("idempotency-key")
    }
}

/// An upstream's complete answer to one part.
#[derive(Debug)]
pub(crate) struct UpstreamResponse {
    pub status: StatusCode,
    /// Without hop-by-hop headers. A `Content-Length` here is used only when `framing` is `AsIs`.
    pub headers: HeaderMap,
    /// The body as it arrived, piece by piece: it is copied once, into the reply part.
    pub body: Vec<Bytes>,
    pub body_len: u64,
    pub framing: Framing,
    /// The address that answered.
    pub peer: Option<SocketAddr>,
}

/// What every part of one batch shares on its way upstream.
#[derive(Debug)]
pub(crate) struct BatchScope {
    pub headers: BatchHeaders,
    pub budget: ResponseBudget,
    /// Who sent the batch, for the rate limit: its address key (a part sent with credentials may be keyed by
    /// them instead).
    pub client: ClientKey,
    /// The trace the batch belongs to; each part is a span of it.
    pub trace: TraceContext,
    /// A job's partition: the job, whose tuning history adaptive concurrency's changes go to. `None` for a
    /// batch.
    pub job: Option<Arc<crate::jobs::tuning::JobTag>>,
}

/// Response bytes one batch may still receive from upstreams (`limits.max_batch_response_bytes`).
#[derive(Debug)]
pub(crate) struct ResponseBudget {
    left: AtomicU64,
    limit: u64,
}

impl ResponseBudget {
    pub(crate) fn new(limit: u64) -> ResponseBudget {
        ResponseBudget {
            left: AtomicU64::new(limit),
            limit,
        }
    }

    pub(crate) fn left(&self) -> u64 {
        self.left.load(Ordering::Relaxed)
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Takes `n` bytes from the budget; false (and nothing taken) if fewer are left.
    pub(crate) fn take(&self, n: u64) -> bool {
        self.left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(n)
            })
            .is_ok()
    }
}

/// A route's in-flight limit: fixed (`limits.max_inflight_per_upstream`) or tuned from its latency. Either
/// is kept across a reload that keeps the route (prefix and upstreams), and takes the new config's size or
/// bounds.
#[derive(Debug, Clone)]
pub(crate) enum RouteLimit {
    Fixed(Arc<limit::Capacity>),
    Adaptive(Arc<adaptive::AdaptiveLimiter>),
}

/// The permits a part takes before it enters its route's stack, besides its batch's concurrency.
#[derive(Debug, Clone)]
pub(crate) enum Permits {
    /// The route's fixed limit, then the gateway-wide one.
    RouteAndGlobal(Arc<Semaphore>),
    /// The route's limit is tuned, in the stack, which also takes the gateway-wide one.
    InStack,
}

/// The route's and the gateway's permits, held while a request is upstream.
pub(crate) type HeldPermits = Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>;

impl Permits {
    /// Takes the route's permit, then the gateway's (`global`), in that order for every request, so that
    /// callers cannot deadlock each other and requests queued for a saturated route hold no gateway-wide
    /// permit. Nothing to take when the route's stack takes them itself.
    pub(crate) async fn acquire(
        self,
        global: &Arc<Semaphore>,
    ) -> Result<HeldPermits, AcquireError> {
        match self {
            Permits::RouteAndGlobal(route) => {
                let route = route.acquire_owned().await?;
                Ok(Some((route, global.clone().acquire_owned().await?)))
            }
            Permits::InStack => Ok(None),
        }
    }
}

impl RouteLimit {
    /// What the scheduler takes for a part of this route.
    pub(crate) fn permits(&self) -> Permits {
        match self {
            RouteLimit::Fixed(capacity) => Permits::RouteAndGlobal(capacity.permits().clone()),
            RouteLimit::Adaptive(_) => Permits::InStack,
        }
    }

    /// Sub-requests in flight under it, and the limit now.
    pub(crate) fn gauge(&self) -> (usize, usize) {
        match self {
            RouteLimit::Fixed(capacity) => (capacity.in_use(), capacity.size()),
            RouteLimit::Adaptive(limiter) => (limiter.in_flight(), limiter.limit()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::Config;
    use crate::headers::HeaderRules;

    /// A GET part of a batch from localhost, as the read stage would make it.
    pub(crate) fn part_request(index: usize) -> PartRequest {
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        PartRequest {
            index,
            method: Method::GET,
            path: format!("/p{index}").parse().expect("a path"),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            batch: Arc::new(BatchScope {
                headers: HeaderRules::new(&Config::default()).batch(
                    &HeaderMap::new(),
                    localhost,
                    false,
                ),
                budget: ResponseBudget::new(u64::MAX),
                client: ClientKey::Ip(localhost),
                trace: TraceContext::from_headers(&HeaderMap::new()),
                job: None,
            }),
            accepts: None,
            tried: None,
            deadline: None,
            timeline: None,
            span: tracing::Span::none(),
        }
    }

    /// An upstream's answer with `status`, no headers and `body` (one piece).
    pub(crate) fn answer(status: StatusCode, body: &'static [u8]) -> UpstreamResponse {
        UpstreamResponse {
            status,
            headers: HeaderMap::new(),
            body: vec![Bytes::from_static(body)],
            body_len: body.len() as u64,
            framing: Framing::Exact,
            peer: None,
        }
    }
}
