//! The HTTP cache and coalescing, one layer between `fields` and `timeout`, built only on routes with
//! `cache = true` or `coalesce = true` (the default): a route with both off pays nothing.
//!
//! - **Cache** (`cache = true`): RFC 9111's shared-cache rules through [`CachePolicy`] (freshness, `Age`,
//!   `Vary`, the Authorization rule, never `private` or `no-store`), for GET and HEAD parts (a HEAD is answered
//!   from a GET's entry, and a 200 to a HEAD updates it). The rules see the headers as RFC 9111 parses them
//!   (`parse.rs`), not as the crate would. A stale entry is revalidated with its validators and a 304 refreshes
//!   it, and it answers instead when the upstream fails and it allows that (`stale-if-error`, or an upstream
//!   that cannot be reached); `only-if-cached` gets a 504 when nothing stored fits; a client's own
//!   conditional part is answered 304 from a usable entry; a successful unsafe part drops its target and its
//!   same-origin `Location` and `Content-Location`. Every answer through the route carries `Cache-Status`
//!   (RFC 9211). Entries are kept by [`Store`], under the client-facing target (the route prefix and what
//!   follows it, with the query): the layer sits below `rewrite`, so the upstream's path is mapped back, and
//!   `POST /admin/cache/purge` and invalidation match what clients send.
//! - **Coalescing** (`coalesce`): identical GETs in flight (same method, target, body and every header sent
//!   upstream but the gateway's own trace headers) share one upstream call, within a batch and across
//!   batches. The first leads; the others wait for its answer and each is charged its own batch's response
//!   budget. A leader that fails shares nothing (each follower is sent on its own); a leader dropped before it
//!   is answered (its batch went away) hands the call over to one of its followers.
//!
//! Freshness is judged on the cache's clock, which follows tokio's, so tests on a paused clock can age
//! entries.
//!
//! The layer's future is boxed on the paths that use the store or follow another part's call (their awaits are
//! many and nested). On a route without a cache, a GET that leads its call costs one walk over what it sends
//! (its digest) and a map insert and removal under one of [`SHARDS`] locks, no allocation: it gets the inner
//! future with its seat beside it; anything else gets the inner future as is.

use std::collections::{HashMap, hash_map};
use std::future::Future;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hash, Hasher, RandomState};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{
    AGE, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED, LOCATION,
};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use http_cache_semantics::{
    AfterResponse, BeforeRequest, CacheOptions, CachePolicy, RequestLike, ResponseLike,
};
use tokio::sync::watch;
use tower::{Layer, Service};

mod parse;

use super::rewrite::Mapping;
use super::rules::unaccepted_coding;
use super::{BatchScope, PartRequest, UpstreamResponse};
use crate::cache::{CacheHandle, Entry, StoreError};
use crate::error::PartError;
use crate::metrics::{CacheEvent, Metrics};
use crate::observe::timeline::Mark;
use crate::observe::trace::{TRACEPARENT, TRACESTATE};
use batchgate_wire::Framing;

/// `Cache-Status` (RFC 9211).
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// How long an entry is kept beyond its freshness: to be revalidated rather than fetched again, or served
/// to a part that accepts it stale.
const STALE_KEPT: Duration = Duration::from_secs(3600);

/// What the route's cache layer shares between its clones.
#[derive(Debug)]
struct State {
    /// The route's prefix: its name in metrics.
    route: Arc<str>,
    /// Maps upstream paths back to the client's (the cache key) and tells same-origin locations.
    mapping: Arc<Mapping>,
    cache: Option<CacheHandle>,
    /// Calls in flight that identical GETs may join; `None` with `coalesce = false`.
    flights: Option<Arc<Flights>>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Clone)]
pub(crate) struct CacheLayer {
    state: Arc<State>,
}

impl CacheLayer {
    /// The layer for `route`: with a store when `cache` is given, coalescing when `coalesce`.
    pub(crate) fn new(
        route: Arc<str>,
        mapping: Arc<Mapping>,
        cache: Option<CacheHandle>,
        coalesce: bool,
        metrics: Arc<Metrics>,
    ) -> CacheLayer {
        CacheLayer {
            state: Arc::new(State {
                route,
                mapping,
                cache,
                flights: coalesce.then(Arc::default),
                metrics,
            }),
        }
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> CacheService<S> {
        CacheService {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CacheService<S> {
    inner: S,
    state: Arc<State>,
}

type Answer = Result<UpstreamResponse, PartError>;
type BoxedAnswer = Pin<Box<dyn Future<Output = Answer> + Send>>;

impl<S> Service<PartRequest> for CacheService<S>
where
    S: Service<PartRequest, Response = UpstreamResponse, Error = PartError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = UpstreamResponse;
    type Error = PartError;
    type Future = CacheFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PartError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: PartRequest) -> Self::Future {
        if self.state.cache.is_some() {
            let (state, inner) = self.take_ready();
            return CacheFuture::Boxed {
                call: Box::pin(async move { serve(&state, inner, request).await }),
            };
        }
        let Some(flights) = flights_for(&self.state, &request) else {
            return CacheFuture::Pass {
                call: self.inner.call(request),
            };
        };
        let digest = flights.digest(&request);
        match flights.role(digest) {
            // The common case, nobody to join: the inner call as is, the seat given up when it ends.
            Role::Lead(lead) => CacheFuture::Lead {
                call: self.inner.call(request),
                lead: Some(lead),
            },
            Role::Follow(receiver) => {
                let (state, inner) = self.take_ready();
                CacheFuture::Boxed {
                    call: Box::pin(async move {
                        let role = Role::Follow(receiver);
                        Ok(coalesced(&state, inner, request, digest, role).await?.0)
                    }),
                }
            }
        }
    }
}

impl<S: Clone> CacheService<S> {
    /// The inner service, ready, for a call made later; a clone goes on in its place (tower's rule: call the
    /// instance polled ready).
    fn take_ready(&mut self) -> (Arc<State>, S) {
        let ready = self.inner.clone();
        (
            self.state.clone(),
            std::mem::replace(&mut self.inner, ready),
        )
    }
}

/// The route's calls in flight, if `request` may join one (a GET on a route that coalesces).
fn flights_for<'a>(state: &'a State, request: &PartRequest) -> Option<&'a Arc<Flights>> {
    state
        .flights
        .as_ref()
        .filter(|_| request.method == Method::GET)
}

pin_project_lite::pin_project! {
    /// The inner call as it is, the inner call of a part that leads its call in flight (its followers get
    /// its answer when it ends), or the cache's and coalescing's work around it.
    #[project = CacheProjection]
    pub(crate) enum CacheFuture<F> {
        Pass { #[pin] call: F },
        Lead { #[pin] call: F, lead: Option<Lead> },
        Boxed { call: BoxedAnswer },
    }
}

impl<F> Future for CacheFuture<F>
where
    F: Future<Output = Answer>,
{
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        match self.project() {
            CacheProjection::Pass { call } => call.poll(cx),
            CacheProjection::Lead { call, lead } => {
                let answer = std::task::ready!(call.poll(cx));
                if let Some(lead) = lead.take() {
                    lead.finish_with(&answer);
                }
                Poll::Ready(answer)
            }
            CacheProjection::Boxed { call } => call.as_mut().poll(cx),
        }
    }
}

/// What the cache did for a part, as `Cache-Status` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fwd {
    /// Served from a fresh entry.
    Hit,
    /// No entry under the target.
    UriMiss,
    /// An entry, but for other values of the headers its `Vary` names (or for another method).
    VaryMiss,
    /// A stale entry, revalidated; `fwd-status` says what the upstream answered.
    Stale,
    /// A usable entry, but the request's own `Cache-Control` or `Pragma` asked for the upstream.
    Request,
    /// An unsafe method, sent on (and invalidating on success).
    Method,
}

/// Whether the answer a part got was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    /// Not stored: not storable, already stored by the part whose call it shared, or a hit.
    No,
    Stored,
    /// Storable, but larger than `cache.max_entry_bytes`.
    TooLarge,
    /// Not asked for: the upstream failed and the stale entry answered instead.
    ServedStale,
}

impl From<bool> for Kept {
    fn from(stored: bool) -> Kept {
        if stored { Kept::Stored } else { Kept::No }
    }
}

/// The `Cache-Status` value for `fwd`.
fn cache_status(
    fwd: Fwd,
    upstream: Option<StatusCode>,
    kept: Kept,
    collapsed: bool,
) -> HeaderValue {
    let mut text = String::from("batchgate; ");
    text.push_str(match fwd {
        Fwd::Hit => "hit",
        Fwd::UriMiss => "fwd=uri-miss",
        Fwd::VaryMiss => "fwd=vary-miss",
        Fwd::Stale => "fwd=stale",
        Fwd::Request => "fwd=request",
        Fwd::Method => "fwd=method",
    });
    if let (Some(status), Fwd::Stale) = (upstream, fwd) {
        text.push_str(&format!("; fwd-status={}", status.as_u16()));
    }
    text.push_str(match kept {
        Kept::No => "",
        Kept::Stored => "; stored",
        Kept::TooLarge => "; detail=too-large",
        Kept::ServedStale => "; detail=stale-on-error",
    });
    if collapsed {
        text.push_str("; collapsed");
    }
    HeaderValue::try_from(text).expect("ASCII")
}

/// A part on a route with a cache: answered from the store, revalidated, or fetched (and stored).
async fn serve<S>(state: &State, inner: S, mut request: PartRequest) -> Answer
where
    S: Service<PartRequest, Response = UpstreamResponse, Error = PartError> + Clone,
{
    let cache = state.cache.as_ref().expect("only called with a cache");
    if !matches!(request.method, Method::GET | Method::HEAD) {
        let path = request.path.clone();
        let mut answer = inner_call(inner, request).await?;
        if answer.status.is_success() || answer.status.is_redirection() {
            invalidate(state, cache, &path, &answer).await;
        }
        answer.headers.insert(
            CACHE_STATUS,
            cache_status(Fwd::Method, None, Kept::No, false),
        );
        return Ok(answer);
    }
    let key = state.mapping.client_path(request.path.as_str());
    let now = cache.clock.now();
    let found = match cache.store.get(&key).await {
        Ok(found) => found,
        Err(error) => {
            store_failed(state, &error, "lookup failed; a miss");
            None
        }
    };
    let head = request.method == Method::HEAD;
    // The client's own validators, kept to answer it 304 when ours replace them upstream.
    let client = Conditions::of(&request.headers);
    let mut fwd = Fwd::UriMiss;
    let mut revalidating = None;
    // The GET entry a HEAD sent upstream could have been answered from: its 200 updates it.
    let mut head_of = None;
    // A stale entry, to answer with if the upstream fails and the entry allows it.
    let mut fallback = None;
    if let Some(entry) = found {
        // A HEAD is answered from a GET's entry: the rules are asked about the GET.
        let headers = parse::request(&request.headers);
        let view = View {
            method: &Method::GET,
            path: &request.path,
            headers: &headers,
        };
        // The entry's body may be compressed in a way this part does not accept (the rules layer below
        // decodes per part): then it is another variant, like one `Vary: Accept-Encoding` tells apart.
        let encoded = unaccepted_coding(
            &entry.headers,
            entry.body.len() as u64,
            request.accepts.as_ref(),
        );
        match entry.policy.before_request(&view, now) {
            _ if encoded.is_some() => fwd = Fwd::VaryMiss,
            BeforeRequest::Fresh(_) => {
                state.metrics.cache_event(&state.route, CacheEvent::Hit);
                let status = cache_status(Fwd::Hit, None, Kept::No, false);
                return answer_from(&entry, &request, &client, now, status);
            }
            BeforeRequest::Stale { matches: true, .. } => {
                let stale = entry.policy.is_stale(now);
                fwd = if stale { Fwd::Stale } else { Fwd::Request };
                if stale {
                    state.metrics.cache_event(&state.route, CacheEvent::Stale);
                    fallback = Some(entry.clone());
                }
                let validators = entry.validators();
                if !head && validators.is_some() {
                    // As the client sent it, should the upstream's 304 not fit the entry.
                    let unconditional = request.try_clone();
                    Conditions::remove_from(&mut request.headers);
                    validators.add_to(&mut request.headers);
                    revalidating = Some((entry, unconditional));
                } else if head {
                    head_of = Some(entry);
                }
            }
            BeforeRequest::Stale { matches: false, .. } => fwd = Fwd::VaryMiss,
        }
    }
    // A fresh entry the part's own `no-cache` passed over counts as a miss.
    if fwd != Fwd::Stale {
        state.metrics.cache_event(&state.route, CacheEvent::Miss);
    }
    if request.headers.contains_key(CACHE_CONTROL) && parse::only_if_cached(&request.headers) {
        // RFC 9111 section 5.2.1.7: nothing stored may answer it, and the upstream must not be asked.
        return Ok(not_cached(
            request.index,
            cache_status(fwd, None, Kept::No, false),
        ));
    }
    let asked = Asked::of(&request);
    let again = revalidating.as_ref().map(|_| inner.clone());
    let fetched = fetch(state, inner, request).await;
    let now = cache.clock.now();
    // RFC 9111 section 4.2.4 and RFC 5861 section 4: a stale entry may answer for an upstream that failed.
    let failed = match &fetched {
        // Unreachable, closed before answering, or too slow: disconnected.
        Err(error) => Some((
            matches!(
                error,
                PartError::Connect { .. }
                    | PartError::NoResponse { .. }
                    | PartError::Timeout { .. }
            ),
            None,
        )),
        // RFC 5861's errors: 500, 502, 503 and 504.
        Ok((answer, _)) if matches!(answer.status.as_u16(), 500 | 502..=504) => {
            Some((false, Some(answer.status)))
        }
        Ok(_) => None,
    };
    if let (Some(entry), Some((disconnected, upstream))) = (&fallback, failed)
        && stale_allowed(entry, &asked, disconnected, now)
    {
        let status = cache_status(Fwd::Stale, upstream, Kept::ServedStale, false);
        return answer_from(entry, &asked, &client, now, status);
    }
    let (mut answer, mut collapsed) = fetched?;
    if let Some((old, _)) = &revalidating
        && answer.status == StatusCode::NOT_MODIFIED
        && !answer.headers.contains_key(ETAG)
        && !answer.headers.contains_key(LAST_MODIFIED)
    {
        // A 304 to our own conditional that names no validator is about the one entry we asked with (RFC
        // 9111 section 4.3.4); the rules would otherwise call it a new answer, and pass the 304 to a client
        // that asked for none.
        let validators = old.validators();
        for (name, value) in [
            (ETAG, validators.if_none_match),
            (LAST_MODIFIED, validators.if_modified_since),
        ] {
            if let Some(value) = value {
                answer.headers.insert(name, value);
            }
        }
    }
    let revalidated = revalidating.and_then(|(old, unconditional)| {
        if answer.status != StatusCode::NOT_MODIFIED {
            return None;
        }
        match old
            .policy
            .after_response(&asked.view(), &Judged::of(&answer, now), now)
        {
            AfterResponse::NotModified(policy, _) => Some(Ok((old, policy))),
            // A 304 the entry cannot take (its strong ETag is another): the answer is fetched again
            // without our validators, never passed to a client that asked for no 304 (RFC 9111 4.3.3).
            AfterResponse::Modified(..) => Some(Err(unconditional)),
        }
    });
    if let Some(Err(unconditional)) = revalidated {
        let inner = again.expect("kept when revalidating");
        answer = tower::ServiceExt::oneshot(inner, unconditional).await?;
        collapsed = false;
    } else if let Some(Ok((old, policy))) = revalidated {
        state
            .metrics
            .cache_event(&state.route, CacheEvent::Revalidated);
        let entry = Arc::new(Entry {
            policy,
            status: old.status,
            headers: refreshed(&old.headers, &answer.headers),
            body: old.body.clone(),
        });
        let stored = !collapsed && store(state, cache, &key, &entry, now).await;
        let status = cache_status(fwd, Some(answer.status), stored.into(), collapsed);
        return answer_from(&entry, &asked, &client, now, status);
    }
    if let Some(old) = head_of
        && answer.status == StatusCode::OK
    {
        return head_update(state, &key, &old, &asked, &client, answer, fwd).await;
    }
    let mut kept = Kept::No;
    if !head && !collapsed {
        let policy =
            CachePolicy::new_options(&asked.view(), &Judged::of(&answer, now), now, options());
        if policy.is_storable() && answer.body_len > cache.max_entry_bytes {
            kept = Kept::TooLarge;
        } else if policy.is_storable() {
            let body = one_piece(&answer.body, answer.body_len);
            let mut headers = answer.headers.clone();
            headers.remove(CONTENT_LENGTH);
            let entry = Arc::new(Entry {
                policy,
                status: answer.status,
                headers,
                body: body.clone(),
            });
            kept = store(state, cache, &key, &entry, now).await.into();
            answer.body = vec![body];
            if kept == Kept::Stored && client.match_entry(&entry) {
                // The client's validators were replaced by the entry's, and they match what came back.
                let status = cache_status(fwd, Some(answer.status), kept, collapsed);
                return answer_from(&entry, &asked, &client, now, status);
            }
        }
    }
    answer.headers.insert(
        CACHE_STATUS,
        cache_status(fwd, Some(answer.status), kept, collapsed),
    );
    Ok(answer)
}

/// A 200 to a HEAD, for the stale (or passed over) GET entry `old` (RFC 9111 section 4.3.5): when the two
/// agree on the validators and the length the HEAD's answer gives, its fields update the entry, which then
/// answers the HEAD; otherwise the entry is dropped, and the HEAD gets its answer as it came.
async fn head_update(
    state: &State,
    key: &str,
    old: &Entry,
    asked: &Asked,
    client: &Conditions,
    mut answer: UpstreamResponse,
    fwd: Fwd,
) -> Answer {
    let cache = state.cache.as_ref().expect("only called with a cache");
    let now = cache.clock.now();
    let same = |name: HeaderName| {
        let new = answer.headers.get(&name);
        new.is_none() || new == old.headers.get(&name)
    };
    let length = answer
        .headers
        .get(CONTENT_LENGTH)
        .is_none_or(|len| len.to_str().ok() == Some(old.body.len().to_string().as_str()));
    if same(ETAG) && same(LAST_MODIFIED) && length {
        let headers = refreshed(&old.headers, &answer.headers);
        let get = View {
            method: &Method::GET,
            ..asked.view()
        };
        let policy = CachePolicy::new_options(
            &get,
            &Judged::new(old.status, &headers, now),
            now,
            options(),
        );
        if policy.is_storable() {
            let entry = Arc::new(Entry {
                policy,
                status: old.status,
                headers,
                body: old.body.clone(),
            });
            let stored = store(state, cache, key, &entry, now).await;
            let status = cache_status(fwd, Some(answer.status), stored.into(), false);
            return answer_from(&entry, asked, client, now, status);
        }
    }
    if let Err(error) = cache.store.remove(key).await {
        store_failed(state, &error, "invalidation failed");
    }
    answer.headers.insert(
        CACHE_STATUS,
        cache_status(fwd, Some(answer.status), Kept::No, false),
    );
    Ok(answer)
}

/// Whether stale `entry` may answer `asked` for an upstream that failed: never when the entry says it must
/// be revalidated; within its `stale-if-error` when it has one; otherwise only when the upstream could not
/// be reached or did not answer (`disconnected`), not for an error it answered with.
fn stale_allowed(entry: &Entry, asked: &Asked, disconnected: bool, now: SystemTime) -> bool {
    let Some(window) = parse::stale_window(&entry.headers) else {
        return false;
    };
    if window.is_none() && !disconnected {
        return false;
    }
    // The rules judge staleness against a `max-stale` of the window (none: any), added to the part's own
    // directives: its `no-cache` or `max-age` still refuse a stale answer.
    let mut headers = asked.headers.clone();
    let max_stale = window.map_or_else(|| "max-stale".to_owned(), |s| format!("max-stale={s}"));
    headers.append(
        CACHE_CONTROL,
        HeaderValue::try_from(max_stale).expect("ASCII"),
    );
    let view = View {
        method: &Method::GET,
        headers: &headers,
        ..asked.view()
    };
    matches!(
        entry.policy.before_request(&view, now),
        BeforeRequest::Fresh(_)
    )
}

/// Stores `entry` under `key` for its freshness (plus [`STALE_KEPT`] when it has validators); false when it
/// would be of no use (neither fresh nor revalidatable) or the store failed.
async fn store(
    state: &State,
    cache: &CacheHandle,
    key: &str,
    entry: &Arc<Entry>,
    now: SystemTime,
) -> bool {
    let fresh = entry.policy.time_to_live(now);
    // Stale, it can still be revalidated, or serve a part that accepts it stale (`max-stale`).
    let ttl = if entry.validators().is_some() || !fresh.is_zero() {
        fresh + STALE_KEPT
    } else {
        Duration::ZERO
    };
    if ttl.is_zero() {
        return false;
    }
    match cache.store.put(key, entry.clone(), ttl).await {
        Ok(()) => {
            state
                .metrics
                .cache_stored(&state.route, key.len() as u64 + entry.weight());
            true
        }
        Err(error) => {
            store_failed(state, &error, "storing failed; served uncached");
            false
        }
    }
}

/// A store's failure: counted, never a failed part. The store logs it, throttled: a Redis that is down fails
/// every part's lookup, which must not become a line per part.
fn store_failed(state: &State, error: &StoreError, what: &str) {
    tracing::debug!(route = %state.route, %error, "cache {what}");
    state.metrics.cache_event(&state.route, CacheEvent::Error);
}

/// Drops the entries a successful unsafe part made stale: its target's, and its same-origin `Location`'s and
/// `Content-Location`'s (RFC 9111 section 4.4).
async fn invalidate(
    state: &State,
    cache: &CacheHandle,
    path: &PathAndQuery,
    answer: &UpstreamResponse,
) {
    let mut keys = vec![state.mapping.client_path(path.as_str())];
    for name in [LOCATION, CONTENT_LOCATION] {
        let value = answer.headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(back) = value.and_then(|v| state.mapping.back(v, answer.peer)) {
            keys.push(back);
        }
    }
    for key in keys {
        if let Err(error) = cache.store.remove(&key).await {
            store_failed(state, &error, "invalidation failed");
        }
    }
}

/// A part's answer from `entry`, charged to its batch's response budget: the stored answer with its `Age`,
/// or 304 when the client's own validators match it; a HEAD gets the headers alone.
fn answer_from(
    entry: &Entry,
    request: &impl Asking,
    client: &Conditions,
    now: SystemTime,
    cache_status: HeaderValue,
) -> Answer {
    let mut headers = entry.headers.clone();
    headers.insert(AGE, HeaderValue::from(entry.policy.age(now).as_secs()));
    headers.insert(CACHE_STATUS, cache_status);
    let not_modified = entry.status == StatusCode::OK && client.match_entry(entry);
    if not_modified || request.method() == Method::HEAD {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(entry.body.len() as u64));
        let status = if not_modified {
            StatusCode::NOT_MODIFIED
        } else {
            entry.status
        };
        return Ok(UpstreamResponse {
            status,
            headers,
            body: Vec::new(),
            body_len: 0,
            framing: Framing::AsIs,
            peer: None,
        });
    }
    let len = entry.body.len() as u64;
    let batch = request.batch();
    if !batch.budget.take(len) {
        return Err(PartError::BatchResponseBudget {
            index: request.index(),
            limit: batch.budget.limit(),
        });
    }
    Ok(UpstreamResponse {
        status: entry.status,
        headers,
        body: vec![entry.body.clone()],
        body_len: len,
        framing: Framing::Exact,
        peer: None,
    })
}

/// The gateway's 504 to a part with `only-if-cached` that nothing stored can answer.
fn not_cached(index: usize, cache_status: HeaderValue) -> UpstreamResponse {
    let body = crate::error::error_body(
        StatusCode::GATEWAY_TIMEOUT,
        "the part asked only-if-cached and the cache holds no answer it can use",
        Some((index, crate::error::Fault::Client)),
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(CACHE_STATUS, cache_status);
    UpstreamResponse {
        status: StatusCode::GATEWAY_TIMEOUT,
        headers,
        body_len: body.len() as u64,
        body: vec![body],
        framing: Framing::Exact,
        peer: None,
    }
}

/// The stored headers, updated by a 304's (RFC 9111 section 3.2): each field the 304 carries replaces the
/// stored one, but those that describe the body the 304 did not send.
fn refreshed(stored: &HeaderMap, update: &HeaderMap) -> HeaderMap {
    /// Fields about the stored body's bytes, which a 304 does not send: the stored ones stay.
    const OF_THE_BODY: [&str; 5] = [
        "content-length",
        "content-encoding",
        "content-range",
        "content-md5",
        "transfer-encoding",
    ];
    let mut headers = stored.clone();
    for name in update.keys() {
        if OF_THE_BODY.contains(&name.as_str()) || *name == CACHE_STATUS {
            continue;
        }
        headers.remove(name);
        for value in update.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// The pieces of a body as one.
fn one_piece(pieces: &[Bytes], len: u64) -> Bytes {
    match pieces {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => {
            let mut body = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
            for piece in many {
                body.extend_from_slice(piece);
            }
            body.freeze()
        }
    }
}

fn options() -> CacheOptions {
    CacheOptions {
        shared: true,
        ..CacheOptions::default()
    }
}

async fn inner_call<S>(mut inner: S, request: PartRequest) -> Answer
where
    S: Service<PartRequest, Response = UpstreamResponse, Error = PartError>,
{
    inner.call(request).await
}

/// Validators: the entry's, to revalidate it, or a client's, to be answered 304.
#[derive(Debug, Default)]
struct Conditions {
    if_none_match: Option<HeaderValue>,
    if_modified_since: Option<HeaderValue>,
}

impl Conditions {
    fn of(headers: &HeaderMap) -> Conditions {
        Conditions {
            if_none_match: headers.get(IF_NONE_MATCH).cloned(),
            if_modified_since: headers.get(IF_MODIFIED_SINCE).cloned(),
        }
    }

    fn is_some(&self) -> bool {
        self.if_none_match.is_some() || self.if_modified_since.is_some()
    }

    fn remove_from(headers: &mut HeaderMap) {
        headers.remove(IF_NONE_MATCH);
        headers.remove(IF_MODIFIED_SINCE);
    }

    fn add_to(self, headers: &mut HeaderMap) {
        if let Some(value) = self.if_none_match {
            headers.insert(IF_NONE_MATCH, value);
        }
        if let Some(value) = self.if_modified_since {
            headers.insert(IF_MODIFIED_SINCE, value);
        }
    }

    /// Whether these (a client's) validators say it has `entry` already (RFC 9110 13.1.2 and 13.1.3: a weak
    /// comparison of entity tags; If-Modified-Since only without If-None-Match).
    fn match_entry(&self, entry: &Entry) -> bool {
        if let Some(tags) = &self.if_none_match {
            let Some(etag) = entry.headers.get(ETAG).and_then(|v| v.to_str().ok()) else {
                return false;
            };
            let weak = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
            let ours = weak(etag);
            return tags.to_str().is_ok_and(|list| {
                list.split(',')
                    .any(|tag| tag.trim() == "*" || weak(tag) == ours)
            });
        }
        let date = |value: Option<&HeaderValue>| {
            value
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok())
        };
        match (
            date(self.if_modified_since.as_ref()),
            date(entry.headers.get(LAST_MODIFIED)),
        ) {
            (Some(since), Some(modified)) => modified <= since,
            _ => false,
        }
    }
}

impl Entry {
    /// The validators to revalidate this entry with: its `ETag` and `Last-Modified`.
    fn validators(&self) -> Conditions {
        Conditions {
            if_none_match: self.headers.get(ETAG).cloned(),
            if_modified_since: self.headers.get(LAST_MODIFIED).cloned(),
        }
    }
}

/// A request as the rules see it, borrowed.
struct View<'a> {
    method: &'a Method,
    path: &'a PathAndQuery,
    headers: &'a HeaderMap,
}

impl RequestLike for View<'_> {
    fn uri(&self) -> Uri {
        Uri::from(self.path.clone())
    }

    fn is_same_uri(&self, other: &Uri) -> bool {
        other.path_and_query() == Some(self.path)
    }

    fn method(&self) -> &Method {
        self.method
    }

    fn headers(&self) -> &HeaderMap {
        self.headers
    }
}

/// An answer as the rules see it: its headers read as RFC 9111 says (`parse::response`).
struct Judged {
    status: StatusCode,
    headers: HeaderMap,
}

impl Judged {
    fn of(answer: &UpstreamResponse, received: SystemTime) -> Judged {
        Judged::new(answer.status, &answer.headers, received)
    }

    fn new(status: StatusCode, headers: &HeaderMap, received: SystemTime) -> Judged {
        let headers = parse::response(headers, received);
        // RFC 9111 section 3: any final status may be stored when the answer gives it explicit freshness
        // (heuristics stay with the statuses defined as heuristically cacheable). The rules store only the
        // statuses they list, so such an answer is put to them as a 200; the entry keeps its own status.
        // With `must-understand` (section 5.2.2.3) the status is put as it is: only the listed ones are
        // understood.
        let status = match status {
            StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED => status,
            status if status.is_informational() => status,
            _ if parse::explicit_freshness(&headers) && !parse::must_understand(&headers) => {
                StatusCode::OK
            }
            status => status,
        };
        Judged { status, headers }
    }
}

impl ResponseLike for Judged {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

/// What an answer from an entry needs of the part it answers.
trait Asking {
    fn method(&self) -> &Method;
    fn index(&self) -> usize;
    fn batch(&self) -> &BatchScope;
}

impl Asking for PartRequest {
    fn method(&self) -> &Method {
        &self.method
    }

    fn index(&self) -> usize {
        self.index
    }

    fn batch(&self) -> &BatchScope {
        &self.batch
    }
}

/// What a part asked upstream, kept to judge the answer by once the part itself has gone down the stack.
#[derive(Debug)]
struct Asked {
    index: usize,
    method: Method,
    path: PathAndQuery,
    headers: HeaderMap,
    batch: Arc<BatchScope>,
}

impl Asked {
    fn of(request: &PartRequest) -> Asked {
        Asked {
            index: request.index,
            method: request.method.clone(),
            path: request.path.clone(),
            headers: parse::request(&request.headers).into_owned(),
            batch: request.batch.clone(),
        }
    }

    fn view(&self) -> View<'_> {
        View {
            method: &self.method,
            path: &self.path,
            headers: &self.headers,
        }
    }
}

impl Asking for Asked {
    fn method(&self) -> &Method {
        &self.method
    }

    fn index(&self) -> usize {
        self.index
    }

    fn batch(&self) -> &BatchScope {
        &self.batch
    }
}

/// How many locks the route's calls in flight are spread over: parts running at once on several threads
/// seldom wait for each other's.
const SHARDS: usize = 16;

/// The route's calls in flight that identical GETs may join, by digest.
#[derive(Debug, Default)]
struct Flights {
    /// Two keys drawn for the route, so that no client can arrange two different requests to collide.
    keys: (RandomState, RandomState),
    /// Chosen by the digest's high half.
    shards: [Mutex<Calls>; SHARDS],
}

#[derive(Debug, Default)]
struct Calls {
    /// Keyed by a digest that is a keyed hash already: the map takes its low half as is, not hashed again.
    by_digest: HashMap<u128, Slot, BuildHasherDefault<DigestHasher>>,
    /// Tells a leader's slot from a later one of the same digest.
    next_seat: u64,
}

/// One call in flight. Its channel is made by the first follower: a call nobody joins allocates nothing.
#[derive(Debug)]
struct Slot {
    seat: u64,
    sender: Option<watch::Sender<Flight>>,
}

/// How a call in flight went, as its followers see it.
#[derive(Debug, Clone)]
enum Flight {
    Pending,
    Answered(Arc<UpstreamResponse>),
    /// The call failed: each follower is sent on its own.
    Failed,
}

/// The low half of a digest, as the calls' map's hash.
#[derive(Debug, Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only digests are hashed (by `write_u128`); any other key is folded in all the same.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u128(&mut self, digest: u128) {
        self.0 = digest as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The two keyed hashers of a digest, fed in one walk over a request. What they are fed is gathered first and
/// handed over in blocks: SipHash pays for every `write`, and a request is many short ones (each method, path,
/// header name and value, and each one's length or terminator), about 2% of a 1-part batch's instructions.
/// The hashers see the same bytes in the same order either way.
struct Both {
    hashers: (DefaultHasher, DefaultHasher),
    pending: [u8; DIGEST_BLOCK],
    len: usize,
}

/// Bytes gathered before the hashers take them.
const DIGEST_BLOCK: usize = 256;

impl Both {
    fn new(hashers: (DefaultHasher, DefaultHasher)) -> Both {
        Both {
            hashers,
            pending: [0; DIGEST_BLOCK],
            len: 0,
        }
    }

    fn hand_over(&mut self) {
        let pending = &self.pending[..self.len];
        self.hashers.0.write(pending);
        self.hashers.1.write(pending);
        self.len = 0;
    }

    fn digest(mut self) -> u128 {
        self.hand_over();
        (u128::from(self.hashers.0.finish()) << 64) | u128::from(self.hashers.1.finish())
    }
}

impl Hasher for Both {
    fn write(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > DIGEST_BLOCK {
            self.hand_over();
        }
        if bytes.len() > DIGEST_BLOCK {
            self.hashers.0.write(bytes);
            self.hashers.1.write(bytes);
            return;
        }
        self.pending[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// The first half alone; the digest is [`Both::digest`].
    fn finish(&self) -> u64 {
        let mut first = self.hashers.0.clone();
        first.write(&self.pending[..self.len]);
        first.finish()
    }
}

/// A part's role for one call in flight.
enum Role {
    Lead(Lead),
    Follow(watch::Receiver<Flight>),
}

/// A leader's seat: given up when the call ends, or when the leader is dropped first (its followers then see
/// the channel closed and one of them leads in its place).
#[derive(Debug)]
pub(crate) struct Lead {
    flights: Arc<Flights>,
    digest: u128,
    seat: u64,
}

impl Lead {
    /// Ends the call: later parts start their own, and the followers get `flight` (made only if there are
    /// any, so that a call nobody joined copies nothing).
    fn finish(self, flight: impl FnOnce() -> Flight) {
        if let Some(sender) = self.leave() {
            sender.send_replace(flight());
        }
    }

    /// Ends the call with its outcome: the answer shared, or a failure (each follower is sent on its own).
    fn finish_with(self, answer: &Answer) {
        match answer {
            Ok(answer) => self.finish(|| Flight::Answered(Arc::new(copy(answer)))),
            Err(_) => self.finish(|| Flight::Failed),
        }
    }

    /// Takes the slot out of the map, if it is still this leader's; its followers' channel, if any.
    fn leave(&self) -> Option<watch::Sender<Flight>> {
        let mut calls = self
            .flights
            .shard(self.digest)
            .lock()
            .expect("not poisoned");
        match calls.by_digest.entry(self.digest) {
            hash_map::Entry::Occupied(slot) if slot.get().seat == self.seat => slot.remove().sender,
            _ => None,
        }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        self.leave();
    }
}

impl Flights {
    fn digest(&self, request: &PartRequest) -> u128 {
        let mut both = Both::new((self.keys.0.build_hasher(), self.keys.1.build_hasher()));
        feed(&mut both, request);
        both.digest()
    }

    fn shard(&self, digest: u128) -> &Mutex<Calls> {
        &self.shards[(digest >> 64) as usize % SHARDS]
    }

    /// Leads the call of `digest`, or follows the one in flight.
    fn role(self: &Arc<Self>, digest: u128) -> Role {
        let mut calls = self.shard(digest).lock().expect("not poisoned");
        let seat = calls.next_seat;
        match calls.by_digest.entry(digest) {
            hash_map::Entry::Occupied(mut slot) => {
                let sender = slot
                    .get_mut()
                    .sender
                    .get_or_insert_with(|| watch::channel(Flight::Pending).0);
                Role::Follow(sender.subscribe())
            }
            hash_map::Entry::Vacant(slot) => {
                slot.insert(Slot { seat, sender: None });
                calls.next_seat += 1;
                Role::Lead(Lead {
                    flights: self.clone(),
                    digest,
                    seat,
                })
            }
        }
    }
}

/// Everything that makes two requests' upstream calls (or their answers) differ, but the gateway's own trace
/// headers (a new span per part).
fn feed<H: Hasher>(h: &mut H, request: &PartRequest) {
    request.method.as_str().hash(h);
    request.path.as_str().hash(h);
    for (name, value) in &request.headers {
        if name == TRACEPARENT || name == TRACESTATE {
            continue;
        }
        name.as_str().hash(h);
        value.as_bytes().hash(h);
    }
    request.body.hash(h);
    // Not sent, but the rules layer decodes the answer by it.
    request.accepts.as_ref().map(HeaderValue::as_bytes).hash(h);
}

/// The part's upstream answer, through the route's coalescing when it has it (GET only): the answer, and
/// whether it was another part's (collapsed).
async fn fetch<S>(
    state: &State,
    inner: S,
    request: PartRequest,
) -> Result<(UpstreamResponse, bool), PartError>
where
    S: Service<PartRequest, Response = UpstreamResponse, Error = PartError>,
{
    let Some(flights) = flights_for(state, &request) else {
        return Ok((inner_call(inner, request).await?, false));
    };
    let digest = flights.digest(&request);
    let role = flights.role(digest);
    coalesced(state, inner, request, digest, role).await
}

/// The part's upstream answer as `role` says: its own call, led, or another part's, followed (and, if that
/// one's leader is dropped, led or followed again).
async fn coalesced<S>(
    state: &State,
    inner: S,
    request: PartRequest,
    digest: u128,
    mut role: Role,
) -> Result<(UpstreamResponse, bool), PartError>
where
    S: Service<PartRequest, Response = UpstreamResponse, Error = PartError>,
{
    loop {
        match role {
            Role::Lead(lead) => {
                let answer = inner_call(inner, request).await;
                lead.finish_with(&answer);
                return Ok((answer?, false));
            }
            Role::Follow(mut receiver) => {
                // On the batch's timeline, the shared call is this part's time upstream.
                if let Some(t) = &request.timeline {
                    t.mark(Mark::Sent);
                }
                let outcome = receiver
                    .wait_for(|f| !matches!(f, Flight::Pending))
                    .await
                    .map(|f| f.clone());
                match outcome {
                    Ok(Flight::Answered(answer)) => {
                        if let Some(t) = &request.timeline {
                            t.mark(Mark::FirstByte);
                        }
                        if !request.batch.budget.take(answer.body_len) {
                            return Err(PartError::BatchResponseBudget {
                                index: request.index,
                                limit: request.batch.budget.limit(),
                            });
                        }
                        state.metrics.part_shared(&state.route);
                        return Ok((copy(&answer), true));
                    }
                    Ok(_) => return Ok((inner_call(inner, request).await?, false)),
                    // The leader was dropped before its answer: lead in its place, or follow who does.
                    Err(_) => {
                        let flights =
                            flights_for(state, &request).expect("a GET on a route that coalesces");
                        role = flights.role(digest);
                    }
                }
            }
        }
    }
}

/// A copy of an answer for another part: its body's pieces are shared, not copied.
fn copy(answer: &UpstreamResponse) -> UpstreamResponse {
    UpstreamResponse {
        status: answer.status,
        headers: answer.headers.clone(),
        body: answer.body.clone(),
        body_len: answer.body_len,
        framing: answer.framing,
        peer: answer.peer,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::config::{CacheConfig, Origin};
    use crate::stack::tests::{answer, part_request};

    #[test]
    fn a_digest_is_the_hashers_fed_the_same_bytes_directly() {
        let keys = (std::hash::RandomState::new(), std::hash::RandomState::new());
        let writes: Vec<Vec<u8>> = [3, 300, 1, 255, 256, 0, 1000, 2, 254]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|b| (b * 7 + i) as u8).collect())
            .collect();
        let mut both = Both::new((keys.0.build_hasher(), keys.1.build_hasher()));
        let (mut first, mut second) = (keys.0.build_hasher(), keys.1.build_hasher());
        for bytes in &writes {
            both.write(bytes);
            first.write(bytes);
            second.write(bytes);
            assert_eq!(both.finish(), first.finish());
        }
        let direct = (u128::from(first.finish()) << 64) | u128::from(second.finish());
        assert_eq!(both.digest(), direct);
    }

    /// What the upstream behind the layer saw: each request's method, path and headers.
    type Seen = Arc<Mutex<Vec<(Method, String, HeaderMap)>>>;

    /// A cache layer on `/a/` (forwarded as is) over an upstream that answers `respond(request)` and records
    /// what it saw.
    fn cached(
        coalesce: bool,
        respond: impl Fn(&PartRequest) -> UpstreamResponse + Clone + Send + Sync + 'static,
    ) -> (PartService, Seen) {
        let seen: Seen = Arc::default();
        let log = seen.clone();
        let upstream = service_fn(move |request: PartRequest| {
            let answer = respond(&request);
            log.lock().unwrap().push((
                request.method.clone(),
                request.path.to_string(),
                request.headers.clone(),
            ));
            async move { Ok::<_, PartError>(answer) }
        });
        let layer = CacheLayer::new(
            Arc::from("/a/"),
            Arc::new(mapping()),
            Some(CacheHandle::open(&CacheConfig::default())),
            coalesce,
            Arc::default(),
        );
        (
            tower::util::BoxCloneSyncService::new(layer.layer(upstream)),
            seen,
        )
    }

    fn mapping() -> Mapping {
        Mapping {
            prefix: "/a/".to_owned(),
            rewrite: None,
            origins: vec![Origin {
                scheme: http::uri::Scheme::HTTP,
                authority: "up.internal:80".parse().unwrap(),
            }],
        }
    }

    type PartService = tower::util::BoxCloneSyncService<PartRequest, UpstreamResponse, PartError>;

    fn get(path: &str, headers: &[(&'static str, &str)]) -> PartRequest {
        let mut request = part_request(0);
        request.path = path.parse().unwrap();
        for (name, value) in headers {
            request
                .headers
                .append(*name, HeaderValue::from_str(value).unwrap());
        }
        request
    }

    fn with(mut response: UpstreamResponse, headers: &[(&'static str, &str)]) -> UpstreamResponse {
        for (name, value) in headers {
            response
                .headers
                .append(*name, HeaderValue::from_str(value).unwrap());
        }
        response
    }

    async fn call(service: &PartService, request: PartRequest) -> UpstreamResponse {
        service.clone().oneshot(request).await.unwrap()
    }

    fn header<'a>(response: &'a UpstreamResponse, name: &str) -> &'a str {
        response
            .headers
            .get(name)
            .map_or("", |v| v.to_str().unwrap())
    }

    fn body(response: &UpstreamResponse) -> Vec<u8> {
        response.body.concat()
    }

    /// A 304's fields replace the stored ones, but those that describe the stored body's bytes.
    #[test]
    fn a_304_does_not_update_the_fields_of_the_body() {
        let mut stored = HeaderMap::new();
        for (name, value) in [
            ("content-md5", "old"),
            ("content-range", "bytes 0-1/2"),
            ("content-encoding", "gzip"),
            ("x-kept", "old"),
            ("x-updated", "old"),
        ] {
            stored.insert(name, HeaderValue::from_static(value));
        }
        let mut update = HeaderMap::new();
        for name in [
            "content-md5",
            "content-range",
            "content-encoding",
            "x-updated",
        ] {
            update.insert(name, HeaderValue::from_static("new"));
        }
        let headers = refreshed(&stored, &update);
        assert_eq!(headers["content-md5"], "old");
        assert_eq!(headers["content-range"], "bytes 0-1/2");
        assert_eq!(headers["content-encoding"], "gzip");
        assert_eq!(headers["x-kept"], "old");
        assert_eq!(headers["x-updated"], "new");
    }

    /// A 304 that names no validator, answering the layer's own conditional, refreshes the entry asked with:
    /// the client, which sent no conditional, gets the stored 200, not the 304.
    #[tokio::test(start_paused = true)]
    async fn a_304_naming_no_validator_refreshes_the_entry_asked_with() {
        let (service, seen) = cached(false, |request| {
            if request.headers.contains_key(IF_NONE_MATCH) {
                answer(StatusCode::NOT_MODIFIED, b"")
            } else {
                with(
                    answer(StatusCode::OK, b"one"),
                    &[("cache-control", "no-cache"), ("etag", "\"v1\"")],
                )
            }
        });
        call(&service, get("/a/x", &[])).await;
        let again = call(&service, get("/a/x", &[])).await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(body(&again), b"one");
        assert_eq!(header(&again, "etag"), "\"v1\"");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].2[IF_NONE_MATCH], "\"v1\"");
    }

    /// A 304 whose strong ETag is not the entry's cannot refresh it: the part is fetched again without the
    /// layer's validators and gets the new answer, not a 304 it never asked for.
    #[tokio::test(start_paused = true)]
    async fn a_304_the_entry_cannot_take_is_fetched_again_unconditionally() {
        let (service, seen) = cached(false, |request| {
            if request.headers.contains_key(IF_NONE_MATCH) {
                with(answer(StatusCode::NOT_MODIFIED, b""), &[("etag", "\"v2\"")])
            } else {
                with(
                    answer(StatusCode::OK, b"new"),
                    &[("cache-control", "max-age=1"), ("etag", "\"v1\"")],
                )
            }
        });
        call(&service, get("/a/x", &[])).await;
        tokio::time::advance(Duration::from_secs(2)).await;
        let again = call(&service, get("/a/x", &[])).await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(body(&again), b"new");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[1].2[IF_NONE_MATCH], "\"v1\"");
        assert!(!seen[2].2.contains_key(IF_NONE_MATCH));
    }

    /// `only-if-cached` (RFC 9111 5.2.1.7): a 504 without asking the upstream when nothing stored can
    /// answer, the entry when one can.
    #[tokio::test(start_paused = true)]
    async fn only_if_cached_is_answered_504_when_nothing_stored_can_answer() {
        let (service, seen) = cached(false, |_| {
            with(
                answer(StatusCode::OK, b"x"),
                &[("cache-control", "max-age=60")],
            )
        });
        let refused = call(
            &service,
            get("/a/x", &[("cache-control", "Only-If-Cached")]),
        )
        .await;
        assert_eq!(refused.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(header(&refused, "cache-status"), "batchgate; fwd=uri-miss");
        assert!(
            String::from_utf8(body(&refused))
                .unwrap()
                .contains("only-if-cached")
        );
        assert!(seen.lock().unwrap().is_empty());
        call(&service, get("/a/x", &[])).await;
        let hit = call(
            &service,
            get("/a/x", &[("cache-control", "only-if-cached")]),
        )
        .await;
        assert_eq!(header(&hit, "cache-status"), "batchgate; hit");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    /// A stale entry (without validators) is kept to serve a part with `max-stale`; `Pragma: no-cache` on a
    /// request (deprecated by RFC 9111 5.4) does not pass over a fresh entry.
    #[tokio::test(start_paused = true)]
    async fn max_stale_is_served_a_stale_entry_and_request_pragma_is_ignored() {
        let (service, seen) = cached(false, |_| {
            with(
                answer(StatusCode::OK, b"x"),
                &[("cache-control", "max-age=10")],
            )
        });
        call(&service, get("/a/x", &[])).await;
        let pragma = call(&service, get("/a/x", &[("pragma", "no-cache")])).await;
        assert_eq!(header(&pragma, "cache-status"), "batchgate; hit");
        tokio::time::advance(Duration::from_secs(30)).await;
        let stale = call(
            &service,
            get("/a/x", &[("cache-control", "max-stale=1000")]),
        )
        .await;
        assert_eq!(header(&stale, "cache-status"), "batchgate; hit");
        assert_eq!(header(&stale, "age"), "30");
        let too_stale = call(&service, get("/a/x", &[("cache-control", "max-stale=5")])).await;
        assert_eq!(
            header(&too_stale, "cache-status"),
            "batchgate; fwd=stale; fwd-status=200; stored"
        );
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    /// The rules read the upstream's headers as RFC 9111 writes them: directive names in any case, `Age`'s
    /// first member, the apparent age from `Date`, `Expires` in the obsolete date formats.
    #[tokio::test(start_paused = true)]
    async fn directives_age_date_and_expires_are_read_as_rfc_9111_says() {
        let two_hours_ago = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(7200));
        let (service, seen) = cached(false, move |request| {
            let headers: &[(&'static str, &str)] = match request.path.path() {
                "/a/no-store" => &[("cache-control", "max-age=60, No-Store")],
                "/a/age" => &[("cache-control", "max-age=3600"), ("age", "7200, 0")],
                "/a/date" => &[("cache-control", "max-age=3600"), ("date", &two_hours_ago)],
                "/a/rfc850" => &[("expires", "Thursday, 18-Aug-50 02:01:18 GMT")],
                "/a/asctime" => &[("expires", "Thu Aug 18 02:01:18 2050")],
                _ => &[("cache-control", "MAX-AGE=60")],
            };
            with(answer(StatusCode::OK, b"x"), headers)
        });
        for (path, second) in [
            ("/a/no-store", "batchgate; fwd=uri-miss"),
            ("/a/age", "batchgate; fwd=uri-miss"),
            ("/a/date", "batchgate; fwd=uri-miss"),
            ("/a/rfc850", "batchgate; hit"),
            ("/a/asctime", "batchgate; hit"),
            ("/a/upper", "batchgate; hit"),
        ] {
            call(&service, get(path, &[])).await;
            let again = call(&service, get(path, &[])).await;
            assert_eq!(header(&again, "cache-status"), second, "{path}");
        }
        // What the client gets is the upstream's headers as they came.
        let upper = call(&service, get("/a/upper", &[])).await;
        assert_eq!(header(&upper, "cache-control"), "MAX-AGE=60");
        assert_eq!(seen.lock().unwrap().len(), 9);
    }

    /// RFC 9111 section 3: any final status with explicit freshness is stored, with its own status;
    /// heuristic freshness only for the statuses defined as heuristically cacheable, and an unknown status
    /// with `must-understand` never.
    #[tokio::test(start_paused = true)]
    async fn any_final_status_with_explicit_freshness_is_stored() {
        let (service, seen) = cached(false, |request| match request.path.path() {
            "/a/503" => with(
                answer(StatusCode::SERVICE_UNAVAILABLE, b"busy"),
                &[("cache-control", "max-age=60")],
            ),
            "/a/599" => with(
                answer(StatusCode::from_u16(599).unwrap(), b"odd"),
                &[(
                    "expires",
                    &httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60)),
                )],
            ),
            "/a/500" => answer(StatusCode::INTERNAL_SERVER_ERROR, b"broken"),
            "/a/understand" => with(
                answer(StatusCode::from_u16(599).unwrap(), b"odd"),
                &[("cache-control", "max-age=60, must-understand")],
            ),
            _ => with(
                answer(StatusCode::from_u16(599).unwrap(), b"odd"),
                &[("last-modified", "Mon, 01 Jan 2001 00:00:00 GMT")],
            ),
        });
        for (path, status, second) in [
            ("/a/503", 503, "batchgate; hit"),
            ("/a/599", 599, "batchgate; hit"),
            ("/a/500", 500, "batchgate; fwd=uri-miss"),
            ("/a/understand", 599, "batchgate; fwd=uri-miss"),
            ("/a/heuristic", 599, "batchgate; fwd=uri-miss"),
        ] {
            call(&service, get(path, &[])).await;
            let again = call(&service, get(path, &[])).await;
            assert_eq!(again.status.as_u16(), status, "{path}");
            assert_eq!(header(&again, "cache-status"), second, "{path}");
        }
        assert_eq!(seen.lock().unwrap().len(), 8);
    }

    /// RFC 9111 4.3.5: a 200 to a HEAD updates the stale GET entry whose validators and length it agrees
    /// with (keeping the fields it does not send), and drops one it disagrees with.
    #[tokio::test(start_paused = true)]
    async fn a_200_to_a_head_updates_the_get_entry_it_agrees_with() {
        let (service, seen) = cached(false, |request| {
            let tag = if request.path.path() == "/a/changed" {
                "\"v2\""
            } else {
                "\"v1\""
            };
            if request.method == Method::HEAD {
                with(
                    answer(StatusCode::OK, b""),
                    &[
                        ("etag", tag),
                        ("cache-control", "max-age=100"),
                        ("x-template", "2"),
                        ("content-length", "4"),
                    ],
                )
            } else {
                with(
                    answer(StatusCode::OK, b"body"),
                    &[
                        ("etag", "\"v1\""),
                        ("cache-control", "max-age=1"),
                        ("x-template", "1"),
                        ("x-kept", "yes"),
                    ],
                )
            }
        });
        let head = |path| {
            let mut request = get(path, &[]);
            request.method = Method::HEAD;
            request
        };
        for path in ["/a/same", "/a/changed"] {
            call(&service, get(path, &[])).await;
        }
        tokio::time::advance(Duration::from_secs(2)).await;

        let updated = call(&service, head("/a/same")).await;
        assert_eq!(
            header(&updated, "cache-status"),
            "batchgate; fwd=stale; fwd-status=200; stored"
        );
        assert_eq!(
            (header(&updated, "x-template"), header(&updated, "x-kept")),
            ("2", "yes")
        );
        let hit = call(&service, get("/a/same", &[])).await;
        assert_eq!(header(&hit, "cache-status"), "batchgate; hit");
        assert_eq!(
            (body(&hit), header(&hit, "x-template")),
            (b"body".to_vec(), "2")
        );

        let passed = call(&service, head("/a/changed")).await;
        assert_eq!(
            header(&passed, "cache-status"),
            "batchgate; fwd=stale; fwd-status=200"
        );
        assert_eq!(header(&passed, "x-kept"), "");
        let refetched = call(&service, get("/a/changed", &[])).await;
        assert_eq!(
            header(&refetched, "cache-status"),
            "batchgate; fwd=uri-miss; stored"
        );
        assert_eq!(seen.lock().unwrap().len(), 5);
    }

    /// RFC 9111 4.2.4 and RFC 5861: a stale entry answers for an upstream that cannot be reached, and for a
    /// 503 within `stale-if-error`; never when it must be revalidated.
    #[tokio::test(start_paused = true)]
    async fn a_stale_entry_answers_for_a_failed_upstream_when_it_allows() {
        let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counted = calls.clone();
        let upstream = service_fn(move |request: PartRequest| {
            let path = request.path.path().to_owned();
            let n = {
                let mut calls = counted.lock().unwrap();
                let n = calls.entry(path.clone()).or_default();
                *n += 1;
                *n
            };
            async move {
                let cc = match path.as_str() {
                    "/a/sie" => "max-age=1, stale-if-error=60",
                    "/a/must" => "max-age=1, must-revalidate",
                    _ => "max-age=1",
                };
                match (n, path.as_str()) {
                    (1, _) => Ok(with(
                        answer(StatusCode::OK, b"old"),
                        &[("cache-control", cc)],
                    )),
                    (_, "/a/sie" | "/a/plain-503") => {
                        Ok(answer(StatusCode::SERVICE_UNAVAILABLE, b""))
                    }
                    _ => Err(PartError::Connect {
                        index: 0,
                        upstream: "up.internal:80".to_owned(),
                        reason: "refused".to_owned(),
                    }),
                }
            }
        });
        let layer = CacheLayer::new(
            Arc::from("/a/"),
            Arc::new(mapping()),
            Some(CacheHandle::open(&CacheConfig::default())),
            false,
            Arc::default(),
        );
        let service: PartService = tower::util::BoxCloneSyncService::new(layer.layer(upstream));
        for path in ["/a/plain", "/a/sie", "/a/plain-503", "/a/must"] {
            call(&service, get(path, &[])).await;
        }
        tokio::time::advance(Duration::from_secs(5)).await;

        let unreachable = call(&service, get("/a/plain", &[])).await;
        assert_eq!(
            (unreachable.status, body(&unreachable)),
            (StatusCode::OK, b"old".to_vec())
        );
        assert_eq!(
            header(&unreachable, "cache-status"),
            "batchgate; fwd=stale; detail=stale-on-error"
        );
        let sie = call(&service, get("/a/sie", &[])).await;
        assert_eq!(
            (sie.status, header(&sie, "cache-status")),
            (
                StatusCode::OK,
                "batchgate; fwd=stale; fwd-status=503; detail=stale-on-error"
            )
        );
        let refused = service
            .clone()
            .oneshot(get("/a/plain", &[("cache-control", "no-cache")]))
            .await;
        assert!(
            matches!(refused, Err(PartError::Connect { .. })),
            "{refused:?}"
        );
        let answered = call(&service, get("/a/plain-503", &[])).await;
        assert_eq!(answered.status, StatusCode::SERVICE_UNAVAILABLE);
        let must = service.clone().oneshot(get("/a/must", &[])).await;
        assert!(matches!(must, Err(PartError::Connect { .. })), "{must:?}");

        tokio::time::advance(Duration::from_secs(60)).await;
        let too_stale = call(&service, get("/a/sie", &[])).await;
        assert_eq!(too_stale.status, StatusCode::SERVICE_UNAVAILABLE);
    }

    /// A fresh entry is served with a growing Age; once stale it is revalidated with its ETag and a 304
    /// refreshes it.
    #[tokio::test(start_paused = true)]
    async fn fresh_answers_are_served_with_their_age_and_stale_ones_revalidated() {
        let (service, seen) = cached(false, |request| {
            if request
                .headers
                .get("if-none-match")
                .is_some_and(|v| v == "\"v1\"")
            {
                with(
                    answer(StatusCode::NOT_MODIFIED, b""),
                    &[("etag", "\"v1\""), ("cache-control", "max-age=60")],
                )
            } else {
                with(
                    answer(StatusCode::OK, b"inbox"),
                    &[("etag", "\"v1\""), ("cache-control", "max-age=60")],
                )
            }
        });
        let first = call(&service, get("/a/inbox", &[])).await;
        assert_eq!(
            header(&first, "cache-status"),
            "batchgate; fwd=uri-miss; stored"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        let hit = call(&service, get("/a/inbox", &[])).await;
        assert_eq!(header(&hit, "cache-status"), "batchgate; hit");
        assert_eq!(header(&hit, "age"), "10");
        assert_eq!(body(&hit), b"inbox");
        assert_eq!(seen.lock().unwrap().len(), 1);

        tokio::time::advance(Duration::from_secs(60)).await;
        let revalidated = call(&service, get("/a/inbox", &[])).await;
        assert_eq!(
            header(&revalidated, "cache-status"),
            "batchgate; fwd=stale; fwd-status=304; stored"
        );
        assert_eq!(revalidated.status, StatusCode::OK);
        assert_eq!(body(&revalidated), b"inbox");
        assert_eq!(header(&revalidated, "age"), "0");
        assert_eq!(seen.lock().unwrap()[1].2["if-none-match"], "\"v1\"");
        let again = call(&service, get("/a/inbox", &[])).await;
        assert_eq!(header(&again, "cache-status"), "batchgate; hit");
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn private_no_store_and_authorized_answers_are_not_stored_unless_public() {
        let (service, seen) = cached(false, |request| {
            let cc = match request.path.path() {
                "/a/private" => "private, max-age=60",
                "/a/nostore" => "no-store",
                "/a/public" => "public, max-age=60",
                _ => "max-age=60",
            };
            with(answer(StatusCode::OK, b"x"), &[("cache-control", cc)])
        });
        for (path, auth) in [
            ("/a/private", None),
            ("/a/nostore", None),
            ("/a/plain", Some("Bearer a")),
        ] {
            for _ in 0..2 {
                let headers: Vec<(&'static str, &str)> =
                    auth.iter().map(|a| ("authorization", *a)).collect();
                let answer = call(&service, get(path, &headers)).await;
                assert_eq!(
                    header(&answer, "cache-status"),
                    "batchgate; fwd=uri-miss",
                    "{path}"
                );
            }
        }
        assert_eq!(seen.lock().unwrap().len(), 6);
        call(&service, get("/a/public", &[("authorization", "Bearer a")])).await;
        let hit = call(&service, get("/a/public", &[("authorization", "Bearer a")])).await;
        assert_eq!(header(&hit, "cache-status"), "batchgate; hit");
        assert_eq!(seen.lock().unwrap().len(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn vary_head_and_a_clients_own_conditional() {
        let (service, seen) = cached(false, |request| {
            let lang = request
                .headers
                .get("accept-language")
                .map_or("en", |v| v.to_str().unwrap())
                .to_owned();
            with(
                answer(StatusCode::OK, b"hello"),
                &[
                    ("cache-control", "max-age=60"),
                    ("vary", "accept-language"),
                    ("etag", &format!("\"{lang}\"")),
                ],
            )
        });
        call(&service, get("/a/x", &[("accept-language", "fr")])).await;
        let other = call(&service, get("/a/x", &[("accept-language", "de")])).await;
        assert_eq!(
            header(&other, "cache-status"),
            "batchgate; fwd=vary-miss; stored"
        );
        let hit = call(&service, get("/a/x", &[("accept-language", "de")])).await;
        assert_eq!(header(&hit, "cache-status"), "batchgate; hit");
        assert_eq!(seen.lock().unwrap().len(), 2);

        let mut head = get("/a/x", &[("accept-language", "de")]);
        head.method = Method::HEAD;
        let head = call(&service, head).await;
        assert_eq!(
            (head.status, head.body_len, head.framing),
            (StatusCode::OK, 0, Framing::AsIs)
        );
        assert_eq!(header(&head, "content-length"), "5");
        assert_eq!(header(&head, "cache-status"), "batchgate; hit");

        let conditional = call(
            &service,
            get(
                "/a/x",
                &[("accept-language", "de"), ("if-none-match", "W/\"de\"")],
            ),
        )
        .await;
        assert_eq!(conditional.status, StatusCode::NOT_MODIFIED);
        assert_eq!(header(&conditional, "cache-status"), "batchgate; hit");
        let changed = call(
            &service,
            get(
                "/a/x",
                &[("accept-language", "de"), ("if-none-match", "\"fr\"")],
            ),
        )
        .await;
        assert_eq!(changed.status, StatusCode::OK);
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_successful_unsafe_part_drops_its_target_and_location() {
        let (service, seen) = cached(false, |request| match request.method {
            Method::GET => with(
                answer(StatusCode::OK, b"x"),
                &[("cache-control", "max-age=60")],
            ),
            _ => with(
                answer(StatusCode::CREATED, b""),
                &[
                    ("location", "http://up.internal/a/items/7"),
                    ("content-location", "/a/list"),
                ],
            ),
        });
        for path in ["/a/items", "/a/items/7", "/a/list", "/a/other"] {
            call(&service, get(path, &[])).await;
        }
        let mut post = get("/a/items", &[]);
        post.method = Method::POST;
        let posted = call(&service, post).await;
        assert_eq!(header(&posted, "cache-status"), "batchgate; fwd=method");
        for (path, status) in [
            ("/a/items", "batchgate; fwd=uri-miss; stored"),
            ("/a/items/7", "batchgate; fwd=uri-miss; stored"),
            ("/a/list", "batchgate; fwd=uri-miss; stored"),
            ("/a/other", "batchgate; hit"),
        ] {
            assert_eq!(
                header(&call(&service, get(path, &[])).await, "cache-status"),
                status,
                "{path}"
            );
        }
        assert_eq!(seen.lock().unwrap().len(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_over_max_entry_bytes_pass_through_uncached() {
        let seen: Seen = Arc::default();
        let log = seen.clone();
        let upstream = service_fn(move |request: PartRequest| {
            log.lock().unwrap().push((
                request.method.clone(),
                request.path.to_string(),
                HeaderMap::new(),
            ));
            async move {
                Ok::<_, PartError>(with(
                    answer(StatusCode::OK, b"0123456789"),
                    &[("cache-control", "max-age=60")],
                ))
            }
        });
        let config = CacheConfig {
            max_entry_bytes: 9,
            ..CacheConfig::default()
        };
        let layer = CacheLayer::new(
            Arc::from("/a/"),
            Arc::new(mapping()),
            Some(CacheHandle::open(&config)),
            false,
            Arc::default(),
        );
        let service = tower::util::BoxCloneSyncService::new(layer.layer(upstream));
        for _ in 0..2 {
            let answer = call(&service, get("/a/big", &[])).await;
            assert_eq!(
                header(&answer, "cache-status"),
                "batchgate; fwd=uri-miss; detail=too-large"
            );
        }
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    /// A coalescing layer (no cache) over an upstream that holds every answer until `open` is released.
    fn held() -> (PartService, Arc<tokio::sync::Semaphore>, Seen) {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let seen: Seen = Arc::default();
        let (log, held) = (seen.clone(), gate.clone());
        let upstream = service_fn(move |request: PartRequest| {
            log.lock().unwrap().push((
                request.method.clone(),
                request.path.to_string(),
                request.headers.clone(),
            ));
            let held = held.clone();
            async move {
                held.acquire().await.unwrap().forget();
                Ok::<_, PartError>(answer(StatusCode::OK, b"shared"))
            }
        });
        let layer = CacheLayer::new(
            Arc::from("/a/"),
            Arc::new(mapping()),
            None,
            true,
            Arc::default(),
        );
        (
            tower::util::BoxCloneSyncService::new(layer.layer(upstream)),
            gate,
            seen,
        )
    }

    #[tokio::test]
    async fn identical_gets_in_flight_share_one_call_and_different_headers_never_do() {
        let (service, gate, seen) = held();
        let mut calls = tokio::task::JoinSet::new();
        for auth in ["Bearer a", "Bearer a", "Bearer a", "Bearer b"] {
            let service = service.clone();
            calls.spawn(
                async move { call(&service, get("/a/x", &[("authorization", auth)])).await },
            );
        }
        while seen.lock().unwrap().len() < 2 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(2);
        let answers = calls.join_all().await;
        assert!(answers.iter().all(|a| body(a) == b"shared"));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "one call per Authorization");
    }

    #[tokio::test]
    async fn a_dropped_leader_hands_its_call_to_a_follower() {
        let (service, gate, seen) = held();
        let leader = tokio::spawn({
            let service = service.clone();
            async move { call(&service, get("/a/x", &[])).await }
        });
        while seen.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let follower = tokio::spawn({
            let service = service.clone();
            async move { call(&service, get("/a/x", &[])).await }
        });
        tokio::task::yield_now().await;
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        while seen.lock().unwrap().len() < 2 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(1);
        assert_eq!(body(&follower.await.unwrap()), b"shared");
        assert_eq!(
            seen.lock().unwrap().len(),
            2,
            "the follower sent the call itself"
        );
    }

    /// An entry stored compressed (for a part that accepted the coding) is not served to a part that does
    /// not accept it: the rules layer would have decoded the answer for that part.
    #[tokio::test(start_paused = true)]
    async fn a_compressed_entry_is_served_only_to_parts_that_accept_its_coding() {
        let (service, seen) = cached(false, |_| {
            with(
                answer(StatusCode::OK, b"\x1f\x8b..."),
                &[
                    ("cache-control", "max-age=60"),
                    ("content-encoding", "gzip"),
                ],
            )
        });
        let accepting = || {
            let mut request = get("/a/z", &[]);
            request.accepts = Some(HeaderValue::from_static("gzip, br"));
            request
        };
        call(&service, accepting()).await;
        let hit = call(&service, accepting()).await;
        assert_eq!(header(&hit, "cache-status"), "batchgate; hit");
        let plain = call(&service, get("/a/z", &[])).await;
        assert_eq!(
            header(&plain, "cache-status"),
            "batchgate; fwd=vary-miss; stored"
        );
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    /// A follower's answer is charged to its own batch's response budget: a batch with none left gets its
    /// part refused, the leader's batch its answer.
    #[tokio::test]
    async fn each_follower_is_charged_its_own_batchs_response_budget() {
        let (service, gate, seen) = held();
        let leader = tokio::spawn({
            let service = service.clone();
            async move { service.oneshot(get("/a/x", &[])).await }
        });
        while seen.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let mut poor = get("/a/x", &[]);
        let scope = &poor.batch;
        poor.batch = Arc::new(BatchScope {
            headers: scope.headers.clone(),
            budget: crate::stack::ResponseBudget::new(3),
            client: scope.client,
            trace: scope.trace.clone(),
            job: None,
        });
        let follower = tokio::spawn({
            let service = service.clone();
            async move { service.oneshot(poor).await }
        });
        tokio::task::yield_now().await;
        gate.add_permits(1);
        assert_eq!(body(&leader.await.unwrap().unwrap()), b"shared");
        let refused = follower.await.unwrap().unwrap_err();
        assert!(
            matches!(refused, PartError::BatchResponseBudget { limit: 3, .. }),
            "{refused}"
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}
