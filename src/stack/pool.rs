//! One upstream address: its own keep-alive pool (shared by every batch), its in-flight count for the
//! balancer, and its passive health.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::time::Instant;

use super::connect::{AddrConnector, TcpError, TlsTarget};
use super::h1::{Answer, H1Client, H1Error};
use super::{PartRequest, UpstreamResponse};
use crate::config::{Origin, UpstreamSettings};
use crate::error::PartError;
use crate::headers::strip_hop_by_hop;
use crate::metrics::Metrics;
use crate::observe::timeline::Mark;
use batchgate_wire::Framing;

/// Read buffer of each connection hyper's client makes (HTTP/1.1 chosen by ALPN): a fixed size keeps pooled
/// connections from each growing theirs to the largest body they ever read. Our own client sizes its own
/// (`h1.rs`).
const HYPER_READ_BUF: usize = 16 * 1024;

/// How requests reach the address.
#[derive(Debug)]
enum Client {
    /// It speaks only HTTP/1.1: our own client, each request on its part's task.
    Http1(H1Client),
    /// It may speak HTTP/2 (prior knowledge, or h2 offered over TLS): hyper-util's client, which multiplexes
    /// (boxed: it is large, and such pools are few).
    Hyper(Box<HyperClient>),
}

type HyperClient = hyper_util::client::legacy::Client<AddrConnector, Full<Bytes>>;

/// What every pool of a route is built with.
#[derive(Debug, Clone)]
pub(crate) struct PoolSettings {
    pub upstream: UpstreamSettings,
    /// Speak HTTP/2 with prior knowledge (plain http only; over TLS, ALPN decides).
    pub http2_prior_knowledge: bool,
    pub max_response_bytes: u64,
    pub metrics: Arc<Metrics>,
    /// The route's prefix, labelling its metrics.
    pub route: Arc<str>,
}

/// One address of one upstream: its keep-alive connection pool, in-flight count and passive health.
#[derive(Debug)]
pub(crate) struct Pool {
    pub origin: Origin,
    pub addr: SocketAddr,
    /// Named in errors and logs: `mail-1.internal:8443 (10.0.0.5:8443)`, or just the address.
    pub label: Arc<str>,
    /// Scheme and authority the requests name: the upstream's own, for `Host` and for its certificate.
    scheme: Scheme,
    authority: Authority,
    client: Client,
    max_response_bytes: u64,
    metrics: Arc<Metrics>,
    pub in_flight: AtomicUsize,
    health: Mutex<Health>,
    /// Its health is the default (no failure since the last success, not ejected), read without the lock:
    /// the common case, where a part neither checks nor records anything under it.
    clean: AtomicBool,
}

impl Pool {
    pub(crate) fn new(
        origin: &Origin,
        addr: SocketAddr,
        tls: Option<TlsTarget>,
        settings: &PoolSettings,
    ) -> Pool {
        let host = origin.authority.host();
        let label = if host.parse::<std::net::IpAddr>().is_ok()
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok()
        {
            origin.authority.to_string()
        } else {
            format!("{} ({addr})", origin.authority)
        };
        let authority = request_authority(origin);
        let up = &settings.upstream;
        // It may speak HTTP/2: prior knowledge, or h2 offered in ALPN.
        let http2 = settings.http2_prior_knowledge
            || tls
                .as_ref()
                .is_some_and(|t| t.config.alpn_protocols.iter().any(|p| p == b"h2"));
        let connector = AddrConnector {
            addr,
            connect_timeout: up.connect_timeout,
            tls,
            metrics: settings.metrics.clone(),
        };
        let client = if http2 {
            Client::Hyper(Box::new(
                hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(up.pool_idle_timeout)
                    .pool_max_idle_per_host(up.pool_max_idle_per_host)
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .http2_only(settings.http2_prior_knowledge && connector.tls.is_none())
                    .http1_read_buf_exact_size(HYPER_READ_BUF)
                    .build(connector),
            ))
        } else {
            // `Host` made once, rather than for every request.
            let host = HeaderValue::from_str(authority.as_str())
                .expect("an authority is a valid header value");
            Client::Http1(H1Client::new(
                connector,
                host,
                up.pool_max_idle_per_host,
                up.pool_idle_timeout,
            ))
        };
        Pool {
            origin: origin.clone(),
            addr,
            label: label.into(),
            scheme: origin.scheme.clone(),
            authority,
            client,
            max_response_bytes: settings.max_response_bytes,
            metrics: settings.metrics.clone(),
            in_flight: AtomicUsize::new(0),
            health: Mutex::new(Health::default()),
            clean: AtomicBool::new(true),
        }
    }

    /// The name an https upstream's certificate must carry.
    pub(crate) fn server_name(origin: &Origin) -> Result<ServerName<'static>, String> {
        let host = origin.authority.host().trim_matches(['[', ']']);
        ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?}: {e}"))
    }

    /// Sends one part and reads its whole answer, at most `max_response_bytes` and what is left of the
    /// batch's response budget.
    /// The part is lent, not given: it stays the balancer's, to send again (see [`Resend`]).
    pub(crate) async fn send(&self, part: &PartRequest) -> Result<UpstreamResponse, SendError> {
        let limit = self.max_response_bytes.min(part.batch.budget.left());
        let (index, batch) = (part.index, &part.batch);
        self.metrics.upstream_request();
        let answer = match &self.client {
            Client::Http1(client) => {
                let sent = client
                    .send(
                        &part.method,
                        &part.path,
                        &part.headers,
                        &part.body,
                        limit,
                        part.timeline.as_deref(),
                    )
                    .await;
                sent.map_err(|e| self.h1_error(part, limit, e))?
            }
            Client::Hyper(client) => self.send_hyper(client, part, limit).await?,
        };
        if !batch.budget.take(answer.body_len) {
            return Err(SendError::from(PartError::BatchResponseBudget {
                index,
                limit: batch.budget.limit(),
            }));
        }
        let mut headers = answer.headers;
        strip_hop_by_hop(&mut headers);
        Ok(UpstreamResponse {
            status: answer.status,
            headers,
            body: answer.body,
            body_len: answer.body_len,
            framing: Framing::Exact,
            peer: Some(self.addr),
        })
    }

    /// An answer over `limit`: over `max_response_bytes`, or over what was left of the batch's response budget
    /// when it was the smaller, naming that limit.
    fn over_limit(&self, part: &PartRequest, limit: u64) -> SendError {
        SendError::from(if limit < self.max_response_bytes {
            PartError::BatchResponseBudget {
                index: part.index,
                limit: part.batch.budget.limit(),
            }
        } else {
            PartError::ResponseTooLarge {
                index: part.index,
                upstream: self.label.to_string(),
                limit: self.max_response_bytes,
            }
        })
    }

    /// No connection: certainly nothing ran, and another address may take the part if TCP failed (not TLS).
    fn connect_error(&self, index: usize, e: &(dyn std::error::Error + 'static)) -> SendError {
        SendError {
            resend: cause::<TcpError>(e)
                .is_some()
                .then_some(Resend::NoConnection),
            error: PartError::Connect {
                index,
                upstream: self.label.to_string(),
                reason: innermost(e),
            },
        }
    }

    /// What an HTTP/1.1 exchange's failure means for the part (the same as hyper's would, see
    /// [`Pool::send_hyper`]).
    fn h1_error(&self, part: &PartRequest, limit: u64, e: H1Error) -> SendError {
        let (index, upstream) = (part.index, self.label.to_string());
        match e {
            H1Error::Connect(e) => self.connect_error(index, &*e),
            H1Error::Closed(reason) => SendError {
                resend: Some(Resend::Closed),
                error: closed_error(index, upstream, &reason),
            },
            H1Error::Broken(reason) => SendError::from(PartError::NoResponse {
                index,
                upstream,
                reason,
            }),
            e @ H1Error::Body(_) => SendError::from(PartError::Upstream {
                index,
                upstream,
                reason: e.to_string(),
            }),
            H1Error::TooLarge => self.over_limit(part, limit),
        }
    }

    /// The part through hyper-util's client (a copy of it: hyper takes its request), the body read until it is
    /// over `limit`.
    async fn send_hyper(
        &self,
        client: &HyperClient,
        part: &PartRequest,
        limit: u64,
    ) -> Result<Answer, SendError> {
        let (index, timeline) = (part.index, &part.timeline);
        let upstream = || self.label.to_string();
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(part.path.clone())
            .build()
            .map_err(|e| PartError::Internal {
                index,
                reason: e.to_string(),
            })?;
        let mut request = Request::new(Full::new(part.body.clone()));
        *request.method_mut() = part.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = part.headers.clone();
        if let Some(t) = &timeline {
            t.mark(Mark::Sent);
        }
        let response = client.request(request).await.map_err(|e| {
            let reason = innermost(&e);
            if e.is_connect() {
                self.connect_error(index, &e)
            } else if refused(&e) {
                SendError {
                    resend: Some(Resend::Refused),
                    error: PartError::NoResponse {
                        index,
                        upstream: upstream(),
                        reason: format!("the upstream refused the stream unprocessed: {reason}"),
                    },
                }
            } else if closed_unanswered(&e) {
                SendError {
                    resend: Some(Resend::Closed),
                    error: closed_error(index, upstream(), &reason),
                }
            } else {
                SendError::from(PartError::NoResponse {
                    index,
                    upstream: upstream(),
                    reason,
                })
            }
        })?;
        if let Some(t) = &timeline {
            t.mark(Mark::FirstByte);
        }
        let (parts, mut body) = response.into_parts();
        let mut answer = Answer {
            status: parts.status,
            headers: parts.headers,
            body: Vec::new(),
            body_len: 0,
        };
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| PartError::Upstream {
                index,
                upstream: upstream(),
                reason: format!("reading the response body: {}", innermost(&e)),
            })?;
            if let Ok(data) = frame.into_data() {
                answer.body_len += data.len() as u64;
                answer.body.push(data);
                if answer.body_len > limit {
                    return Err(self.over_limit(part, limit));
                }
            }
        }
        Ok(answer)
    }

    /// Whether the balancer may send here now: not ejected, or its ejection is over (then the next part is
    /// the probe that lets it back in, or ejects it again for longer).
    pub(crate) fn available(&self, now: Instant) -> bool {
        self.is_clean() || self.health().ejected_until.is_none_or(|until| until <= now)
    }

    /// Claims this pool for a part the balancer chose among the available ones. One whose ejection is
    /// over takes a single part, the probe: until its outcome is recorded, or `hold` passes without one (the
    /// probe was cancelled), it stays out for the others. False if another part took the probe first.
    pub(crate) fn claim(&self, now: Instant, hold: Duration) -> bool {
        if self.is_clean() {
            return true;
        }
        let mut health = self.health();
        match health.ejected_until {
            None => true,
            Some(until) if until <= now => {
                health.ejected_until = Some(now + hold);
                health.probing = true;
                true
            }
            Some(_) => false,
        }
    }

    /// Notes how a part went; returns how long the pool is now ejected for, if this ejected it.
    pub(crate) fn record(&self, failed: bool, settings: &UpstreamSettings) -> Option<Duration> {
        if !failed && self.is_clean() {
            return None;
        }
        let mut health = self.health();
        if !failed {
            *health = Health::default();
            self.clean.store(true, Ordering::Release);
            return None;
        }
        if !health.probing
            && health
                .ejected_until
                .is_some_and(|until| until > Instant::now())
        {
            // A part sent before the ejection, failing after it: the ejection already counts it.
            return None;
        }
        health.failures += 1;
        self.clean.store(false, Ordering::Release);
        // One that was ejected and let back in fails its probe: out again at once, for longer.
        if health.failures < settings.eject_after && health.ejections == 0 {
            return None;
        }
        let factor = 1u32 << health.ejections.min(16);
        let period = settings
            .eject_for
            .saturating_mul(factor)
            .min(settings.eject_max);
        health.failures = 0;
        health.ejections += 1;
        health.ejected_until = Some(Instant::now() + period);
        health.probing = false;
        Some(period)
    }

    /// Takes over `previous`'s passive health: the same address in the config before a reload.
    pub(crate) fn carry_health(&self, previous: &Pool) {
        let health = previous.health().clone();
        let mut mine = self.health();
        *mine = health;
        self.clean.store(
            mine.failures == 0 && mine.ejections == 0 && mine.ejected_until.is_none(),
            Ordering::Release,
        );
    }

    /// Whether its health is the default: no failure since the last success, not ejected.
    pub(crate) fn is_clean(&self) -> bool {
        self.clean.load(Ordering::Acquire)
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Passive health: failures in a row, and the ejection they led to.
#[derive(Debug, Default, Clone)]
struct Health {
    failures: u32,
    /// Ejections in a row without a success in between: each doubles the next one's length.
    ejections: u32,
    ejected_until: Option<Instant>,
    /// A part probes it after its ejection: until that part's outcome, it stays out.
    probing: bool,
}

/// The authority requests name (their URI, and `Host`): the origin's, its port left out when it is the
/// scheme's default, as a browser (and hyper-util's client) would write it.
fn request_authority(origin: &Origin) -> Authority {
    let default_port = if origin.is_tls() { 443 } else { 80 };
    if origin.port() == default_port {
        origin
            .authority
            .host()
            .parse()
            .unwrap_or_else(|_| origin.authority.clone())
    } else {
        origin.authority.clone()
    }
}

/// A part this address did not answer, and whether it may go again without being a retry.
#[derive(Debug)]
pub(crate) struct SendError {
    pub error: PartError,
    /// Set when it may be sent again without counting as a retry (see [`Resend`]).
    pub resend: Option<Resend>,
}

/// Why a part may be sent again at once, without being a retry (no budget, no backoff).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resend {
    /// No TCP connection could be made (refused, unreachable, not within `connect_timeout`): nothing ran, and
    /// another address of the same upstream may take the part, whatever its method.
    NoConnection,
    /// An HTTP/2 upstream closed the stream without processing it: above the last stream id of its GOAWAY
    /// (it is closing the connection, after `keepalive_requests` say), or reset with REFUSED_STREAM (RFC 9113
    /// 6.8, 8.7). Nothing ran; the address is fine; the part goes again, whatever its method, on another
    /// connection.
    Refused,
    /// The upstream closed the connection before the head of an answer. Most often it was a kept-alive one that
    /// the upstream closed for idleness just as the request arrived (Node's and Apache's 5 s, say), so it
    /// never read it; but it may have. So only an idempotent part goes again, once, on another connection
    /// (RFC 9112 9.3.1); any other is answered 502 saying it may or may not have run.
    Closed,
}

impl From<PartError> for SendError {
    fn from(error: PartError) -> SendError {
        SendError {
            error,
            resend: None,
        }
    }
}

/// A part the upstream did not answer before closing its connection (see [`Resend::Closed`]).
fn closed_error(index: usize, upstream: String, reason: &str) -> PartError {
    PartError::NoResponse {
        index,
        upstream,
        reason: format!(
            "the upstream closed the connection before answering ({reason}); \
             the part may or may not have run there"
        ),
    }
}

/// Whether the upstream closed this request's HTTP/2 stream unprocessed (see [`Resend::Refused`]). hyper
/// reports it as the stream's `h2::Error`; it does not send such requests again itself (hyper-util's
/// `retry_canceled_requests` covers only requests never handed to a connection).
fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    cause::<h2::Error>(e).is_some_and(|h2| {
        h2.is_remote() && (h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM))
    })
}

/// Whether the upstream closed the connection before this request's answer head (hyper's "connection
/// closed before message completed" while waiting for the head): see [`Resend::Closed`].
fn closed_unanswered(e: &(dyn std::error::Error + 'static)) -> bool {
    cause::<hyper::Error>(e).is_some_and(hyper::Error::is_incomplete_message)
}

/// The first `E` among the causes of `e`, `e` included.
fn cause<'a, E: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(found) = c.downcast_ref::<E>() {
            return Some(found);
        }
        cause = c.source();
    }
    None
}

/// The innermost cause, which is the one a user can act on ("Connection refused", "invalid peer
/// certificate: UnknownIssuer").
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    let mut text = e.to_string();
    while let Some(next) = cause.source() {
        text = next.to_string();
        cause = next;
    }
    text
}

impl Pool {
    /// A copy of its passive health now, for `/admin/stats` (read-only).
    pub(crate) fn health_view(&self) -> crate::observe::health::HealthView {
        let health = self.health();
        crate::observe::health::HealthView {
            failures: health.failures,
            ejections: health.ejections,
            ejected_until: health.ejected_until,
            probing: health.probing,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::header::HOST;
    use http::{Response, StatusCode};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;
    use crate::stack::ResponseBudget;
    use crate::stack::tests::part_request;

    /// A real HTTP/1.1 server on port 0 that answers `GET /N` with N bytes, a `Connection`-listed header and
    /// the request's `Host` as `X-Host`.
    async fn sized_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let service =
                        service_fn(|request: Request<hyper::body::Incoming>| async move {
                            let size: usize = request.uri().path()[1..].parse().unwrap();
                            let host = request.headers()[HOST].clone();
                            let response = Response::builder()
                                .header("x-host", host)
                                .header("connection", "x-hop")
                                .header("x-hop", "per connection")
                                .header("x-end", "kept")
                                .body(Full::new(Bytes::from(vec![b'x'; size])))
                                .unwrap();
                            Ok::<_, Infallible>(response)
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    /// The pool for `addr`, plain http, with responses limited to `max_response_bytes`.
    fn pool(addr: SocketAddr, max_response_bytes: u64) -> Pool {
        let origin = Origin {
            scheme: Scheme::HTTP,
            authority: addr.to_string().parse().unwrap(),
        };
        let settings = PoolSettings {
            upstream: UpstreamSettings::default(),
            http2_prior_knowledge: false,
            max_response_bytes,
            metrics: Arc::new(Metrics::default()),
            route: Arc::from("/"),
        };
        Pool::new(&origin, addr, None, &settings)
    }

    /// `GET /size` for a batch with `budget` response bytes left.
    fn get(size: usize, budget: u64) -> PartRequest {
        let mut part = part_request(2);
        part.path = format!("/{size}").parse().unwrap();
        let scope = Arc::get_mut(&mut part.batch).expect("the part's own scope");
        scope.budget = ResponseBudget::new(budget);
        part
    }

    /// An answer of exactly `max_response_bytes` is read whole (without hop-by-hop headers) and taken from
    /// the batch's budget; one byte more is refused naming the limit.
    #[tokio::test]
    async fn an_answer_over_max_response_bytes_is_refused_naming_the_limit() {
        let pool = pool(sized_server().await, 100);
        let part = get(100, u64::MAX);
        let batch = part.batch.clone();
        let answer = pool.send(&part).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!((answer.body_len, answer.body.concat().len()), (100, 100));
        assert_eq!(answer.headers["x-end"], "kept");
        // The port is not the scheme's default: `Host` names it.
        assert_eq!(answer.headers["x-host"], pool.addr.to_string());
        assert!(
            !answer.headers.contains_key("x-hop") && !answer.headers.contains_key("connection")
        );
        assert_eq!(answer.peer, Some(pool.addr));
        assert_eq!(batch.budget.left(), u64::MAX - 100);

        let error = pool.send(&get(101, u64::MAX)).await.unwrap_err();
        assert!(error.resend.is_none());
        assert!(
            matches!(
                error.error,
                PartError::ResponseTooLarge {
                    index: 2,
                    limit: 100,
                    ..
                }
            ),
            "{:?}",
            error.error
        );
        assert_eq!(error.error.status(), StatusCode::BAD_GATEWAY);
    }

    /// The authority requests name (and `Host`, as hyper-util's client would write it): the port only when it
    /// is not the scheme's default.
    #[test]
    fn the_host_header_names_only_a_port_that_is_not_the_default() {
        let host = |authority: &str, tls: bool| {
            let origin = Origin {
                scheme: if tls { Scheme::HTTPS } else { Scheme::HTTP },
                authority: authority.parse().unwrap(),
            };
            request_authority(&origin).to_string()
        };
        assert_eq!(host("mail.internal:80", false), "mail.internal");
        assert_eq!(host("mail.internal:443", true), "mail.internal");
        assert_eq!(host("mail.internal:443", false), "mail.internal:443");
        assert_eq!(host("[::1]:8443", true), "[::1]:8443");
        assert_eq!(host("10.0.0.5", false), "10.0.0.5");
    }

    /// What is left of the batch's response budget bounds an answer below `max_response_bytes`, and the
    /// error then names the batch's limit.
    #[tokio::test]
    async fn the_batchs_response_budget_bounds_each_answer() {
        let pool = pool(sized_server().await, 1000);
        let error = pool.send(&get(60, 50)).await.unwrap_err();
        assert!(
            matches!(
                error.error,
                PartError::BatchResponseBudget {
                    index: 2,
                    limit: 50
                }
            ),
            "{:?}",
            error.error
        );
        assert_eq!(pool.send(&get(50, 50)).await.unwrap().body_len, 50);
    }

    /// An address nothing listens on: a connect error, and the part certainly did not run there.
    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error_to_resend() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let error = pool(dead, 100).send(&get(1, u64::MAX)).await.unwrap_err();
        assert_eq!(error.resend, Some(Resend::NoConnection));
        assert!(
            matches!(error.error, PartError::Connect { index: 2, .. }),
            "{:?}",
            error.error
        );
    }
}
