//! The operators' listener (`[admin]`): plain HTTP/1.1 on an address of its own, apart from the batch
//! endpoint's, serving
//!
//! - `GET /metrics`: the OpenMetrics text (the main listener serves it too only without `[admin]`, or with
//!   `admin.public_metrics`);
//! - `GET /admin/stats`: the observations as JSON ([`Gateway::stats_json`](crate::Gateway::stats_json)) (per-route figures and series, each upstream
//!   address's health, bottlenecks, the tuning history, the last batches' timelines);
//! - `GET /admin/dashboard`: one self-contained HTML page that polls `/admin/stats` every second and draws it;
//! - `POST /admin/reload`: reloads the config file like SIGHUP does, and says what happened;
//! - `GET /healthz`: 200 while the process serves.
//!
//! Anything else is a JSON 404 (a known path with another method, 405). Every request reads the gateway
//! current then (a reload swaps it, the admin listener follows).
//!
//! A request must name this listener in its `Host`: the address the client connected to, a loopback name
//! (`localhost`, `127.0.0.1`, `[::1]`, any port) or one of `admin.allowed_hosts`; any other is answered 421
//! and logged. So a page under a DNS-rebinding name, which the browser sends as `Host`, cannot read the stats
//! or reload the gateway.
//!
//! It is small and bounded on purpose: [`AdminLimits`] caps connections (one over the cap gets a 503 and is
//! closed), the time to send a request head or body, the time a stalled write may take, and request bodies
//! (1 KiB: no admin endpoint takes one). Keep the address private all the same: the stats name routes,
//! upstream latencies and client addresses.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue, ORIGIN,
};
use http::uri::Authority;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::accept::Acceptor;
use super::endpoints;
use super::io::WriteDeadline;
use super::live::{Live, ReloadError};
use crate::config::Config;
use crate::error::error_body;
use crate::response::{ReplyBody, full, json_error};

/// The dashboard: one HTML file with its script and styles inline; it loads nothing from anywhere else.
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// What the dashboard may do in the browser: run its own inline script and styles, and fetch from this
/// listener. Nothing from other hosts, no frames, no forms.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The admin endpoints, for 404 and 405 answers.
const ENDPOINTS: &str = "GET /admin/dashboard, GET /admin/stats, GET /metrics, POST /admin/reload, POST /admin/cache/purge, \
     GET /healthz";

/// The admin listener's bounds.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// Connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Time to send a request head, from the connection's start or the end of the previous request (so it is
    /// also how long an idle keep-alive connection stays open).
    pub header_read_timeout: Duration,
    /// Time to send a request body.
    pub body_read_timeout: Duration,
    /// Time a write may make no progress (the client not reading) before the connection is closed.
    pub write_timeout: Duration,
    /// Largest request body taken; a larger one is answered 413.
    pub max_body_bytes: usize,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_body_bytes: 1024,
        }
    }
}

/// What `POST /admin/reload` applies to a freshly read config before validating it (the command line's
/// overrides, as for SIGHUP).
pub type Adjust = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// The config file `POST /admin/reload` re-reads.
struct ConfigFile {
    path: PathBuf,
    adjust: Adjust,
}

/// What the admin listener serves: the [`Live`] gateway, and the config file to reload, if any.
#[derive(Clone)]
pub struct Admin {
    live: Arc<Live>,
    config_file: Option<Arc<ConfigFile>>,
    limits: AdminLimits,
    /// One reload at a time through this listener; another one meanwhile is refused with 409.
    reloading: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("config_file", &self.config_file.as_ref().map(|c| &c.path))
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Serves `live`'s current gateway; `POST /admin/reload` answers 404 until [`Admin::config_file`] is set.
    pub fn new(live: Arc<Live>) -> Admin {
        Admin {
            live,
            config_file: None,
            limits: AdminLimits::default(),
            reloading: Arc::default(),
        }
    }

    /// `POST /admin/reload` re-reads `path`, lets `adjust` apply the command line's overrides, validates the
    /// result and swaps the new gateway in ([`Live::reload_file`]).
    pub fn config_file(
        mut self,
        path: impl Into<PathBuf>,
        adjust: impl Fn(&mut Config) + Send + Sync + 'static,
    ) -> Admin {
        self.config_file = Some(Arc::new(ConfigFile {
            path: path.into(),
            adjust: Arc::new(adjust),
        }));
        self
    }

    /// Other bounds than [`AdminLimits::default`].
    pub fn limits(mut self, limits: AdminLimits) -> Admin {
        self.limits = limits;
        self
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` resolves; then stops accepting, lets each open
/// connection finish the request it is serving (within `write_timeout`) and returns.
pub async fn serve(listener: TcpListener, admin: Admin, shutdown: impl Future<Output = ()>) {
    let limits = admin.limits;
    let mut acceptor = Acceptor::new(listener, shutdown, limits.max_connections, "admin: ");
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(16 * 1024);
    let builder = Arc::new(builder);
    let (stopping, stop) = watch::channel(false);
    while let Some((mut stream, peer)) = acceptor.next().await {
        let Some(slot) = acceptor.try_slot() else {
            tracing::warn!(%peer, max = limits.max_connections, "admin: connection refused, all slots taken");
            // Turned away with a 503, each given a moment to read it, a few at a time.
            if let Some(refusal) = acceptor.refusal() {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        stream.write_all(&busy()).await?;
                        stream.shutdown().await
                    })
                    .await;
                    drop(refusal);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        // The address this client reached: the listener's own, even when it is bound to 0.0.0.0.
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let io = TokioIo::new(WriteDeadline::new(stream, limits.write_timeout));
        let builder = builder.clone();
        let admin = admin.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(request, peer, local).await) }
            });
            let connection = builder.serve_connection(io, service);
            tokio::pin!(connection);
            let stopped = async move {
                let _ = stop.wait_for(|stopping| *stopping).await;
            };
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = stopped => {
                    connection.as_mut().graceful_shutdown();
                    tokio::time::timeout(limits.write_timeout, connection)
                        .await
                        .unwrap_or(Ok(()))
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, "admin connection ended: {e}");
            }
            drop(slot);
        });
    }
    let _ = stopping.send(true);
}

/// The answer to a connection over [`AdminLimits::max_connections`], written before its request is read.
fn busy() -> Vec<u8> {
    let status = StatusCode::SERVICE_UNAVAILABLE;
    let body = error_body(
        status,
        "the admin listener has all its connections busy; retry",
        None,
    );
    let mut answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    answer
}

impl Admin {
    async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Response<ReplyBody> {
        let (head, body) = request.into_parts();
        let gateway = self.live.gateway();
        let allowed: &[String] = gateway
            .config
            .admin
            .as_ref()
            .map_or(&[], |admin| &admin.allowed_hosts);
        if let Err(refused) = check_host(&head, local, allowed) {
            tracing::warn!(%peer, path = head.uri.path(), "admin: request refused: {refused}");
            return closing(error(StatusCode::MISDIRECTED_REQUEST, refused));
        }
        drop(gateway);
        // Only the purge takes a body; the others' is read (within bounds) so the connection can be reused.
        let max = self.limits.max_body_bytes;
        let declared = head
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return closing(too_large(max));
        }
        let read = tokio::time::timeout(
            self.limits.body_read_timeout,
            Limited::new(body, max).collect(),
        )
        .await;
        let body = match read {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<LengthLimitError>() => return closing(too_large(max)),
            Ok(Err(e)) => {
                return closing(error(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body failed: {e}"),
                ));
            }
            Err(_) => {
                return closing(error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body took longer than {:?}",
                        self.limits.body_read_timeout
                    ),
                ));
            }
        };
        let path = head.uri.path();
        let method = &head.method;
        let get = matches!(*method, Method::GET | Method::HEAD);
        match path {
            "/metrics" if get => endpoints::metrics(&self.live.gateway()),
            "/admin/stats" if get => self.stats(),
            "/admin/dashboard" if get => dashboard(),
            "/healthz" if get => json(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
            "/admin/reload" if *method == Method::POST => self.reload(&head.headers).await,
            "/admin/cache/purge" if *method == Method::POST => {
                self.purge(&head.headers, head.uri.query(), &body).await
            }
            "/metrics" | "/admin/stats" | "/admin/dashboard" | "/healthz" => {
                not_allowed(method, path, "GET, HEAD")
            }
            "/admin/reload" | "/admin/cache/purge" => not_allowed(method, path, "POST"),
            _ => error(
                StatusCode::NOT_FOUND,
                format!("no admin endpoint at {path}; there are: {ENDPOINTS}"),
            ),
        }
    }

    fn stats(&self) -> Response<ReplyBody> {
        let stats = self.live.gateway().stats();
        match serde_json::to_vec(&stats) {
            Ok(body) => {
                let mut response = Response::new(full(body));
                let headers = response.headers_mut();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            }
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the stats could not be written as JSON: {e}"),
            ),
        }
    }

    /// `POST /admin/cache/purge`: drops the cache's entries whose client-facing target starts with the prefix
    /// given as `{"prefix": "/mail/"}` or `?prefix=/mail/`; answers `{"purged": n}`.
    async fn purge(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        body: &Bytes,
    ) -> Response<ReplyBody> {
        if let Some(refused) = cross_origin(headers) {
            return refused;
        }
        let prefix = match purge_prefix(query, body) {
            Ok(prefix) => prefix,
            Err(why) => return error(StatusCode::BAD_REQUEST, why),
        };
        let gateway = self.live.gateway();
        let Some(cache) = &gateway.cache else {
            return error(
                StatusCode::NOT_FOUND,
                "no [cache] is configured: there is nothing to purge".to_owned(),
            );
        };
        match cache.store.purge(&prefix).await {
            Ok(purged) => {
                tracing::info!(%prefix, purged, "POST /admin/cache/purge");
                json(StatusCode::OK, &serde_json::json!({ "purged": purged }))
            }
            Err(e) => {
                tracing::error!(%prefix, "cache purge failed: {e}");
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the cache store failed to purge: {e}"),
                )
            }
        }
    }

    async fn reload(&self, headers: &HeaderMap) -> Response<ReplyBody> {
        if let Some(refused) = cross_origin(headers) {
            return refused;
        }
        let Some(file) = &self.config_file else {
            return error(
                StatusCode::NOT_FOUND,
                "no config file to reload: the gateway was started without --config".to_owned(),
            );
        };
        let Ok(_one_at_a_time) = self.reloading.try_lock() else {
            return error(
                StatusCode::CONFLICT,
                "a reload is already in progress; try again when it is done".to_owned(),
            );
        };
        let path = file.path.display().to_string();
        tracing::info!(%path, "POST /admin/reload: reloading the config");
        let adjust = file.adjust.clone();
        match self
            .live
            .reload_file(&file.path, move |config| adjust(config))
            .await
        {
            Ok(replaced) => {
                let gateway = self.live.gateway();
                let routes: Vec<&str> = gateway
                    .config
                    .routes
                    .iter()
                    .map(|r| r.prefix.as_str())
                    .collect();
                tracing::info!(
                    %path,
                    routes = %serde_json::to_string(&routes).unwrap_or_default(),
                    "config reloaded: new batches and connections use it; batches in flight finish as they began"
                );
                json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "status": "reloaded",
                        "path": path,
                        "routes": routes,
                        "needs_restart": replaced.needs_restart,
                    }),
                )
            }
            Err(e) => {
                tracing::error!(
                    %path,
                    "config reload refused, still serving the previous config: {e}"
                );
                let status = match e {
                    ReloadError::Config(_) => StatusCode::UNPROCESSABLE_ENTITY,
                    ReloadError::TlsToggled(_) => StatusCode::CONFLICT,
                    ReloadError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
                };
                error(
                    status,
                    format!("config reload refused, still serving the previous config: {e}"),
                )
            }
        }
    }
}

/// The prefix a purge names: the body's `{"prefix": "..."}`, or else the query's `prefix=` (percent-decoded);
/// a path, starting with `/`.
fn purge_prefix(query: Option<&str>, body: &Bytes) -> Result<String, String> {
    let prefix = if body.is_empty() {
        let value = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|pair| pair.strip_prefix("prefix="))
            .ok_or("give the prefix to purge as a JSON body {\"prefix\": \"/mail/\"} or as ?prefix=/mail/")?;
        crate::stack::fields::percent_decode(value)
            .ok_or("the query's prefix= is not UTF-8 once percent-decoded")?
    } else {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Purge {
            prefix: String,
        }
        let purge: Purge = serde_json::from_slice(body)
            .map_err(|e| format!("the body must be JSON like {{\"prefix\": \"/mail/\"}}: {e}"))?;
        purge.prefix
    };
    if !prefix.starts_with('/') {
        return Err(format!(
            "prefix {prefix:?} must be a path starting with '/', as clients send it (e.g. \"/mail/\")"
        ));
    }
    Ok(prefix)
}

/// Checks the names a request gives for this listener (its `Host`, and the authority of an absolute-form
/// target): each must be the address the client connected to, a loopback name, or in `allowed`
/// (`admin.allowed_hosts`). A DNS-rebinding page reaches the listener under a name of its own, which the
/// browser sends as `Host`: refusing it keeps that page from reading the stats or reloading.
fn check_host(
    head: &http::request::Parts,
    local: SocketAddr,
    allowed: &[String],
) -> Result<(), String> {
    let Some(host) = head.headers.get(HOST) else {
        return Err("a Host header is required".to_owned());
    };
    let host = host.to_str().ok().and_then(|h| h.parse::<Authority>().ok());
    let Some(host) = host.filter(|h| !h.as_str().contains('@')) else {
        return Err(format!(
            "Host {:?} is not a host name",
            String::from_utf8_lossy(head.headers[HOST].as_bytes())
        ));
    };
    for name in std::iter::once(&host).chain(head.uri.authority()) {
        if !host_allowed(name, local, allowed) {
            return Err(format!(
                "Host {name} is not this admin listener's address, a loopback name or one of \
                 admin.allowed_hosts"
            ));
        }
    }
    Ok(())
}

fn host_allowed(name: &Authority, local: SocketAddr, allowed: &[String]) -> bool {
    let host = name.host();
    let ip = host
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .ok();
    if host.eq_ignore_ascii_case("localhost") || ip.is_some_and(|ip| ip.is_loopback()) {
        return true;
    }
    if ip == Some(local.ip()) && name.port_u16().is_none_or(|port| port == local.port()) {
        return true;
    }
    allowed.iter().any(|entry| {
        entry.parse::<Authority>().is_ok_and(|entry| {
            entry.host().eq_ignore_ascii_case(host)
                && entry
                    .port_u16()
                    .is_none_or(|port| name.port_u16() == Some(port))
        })
    })
}

/// A `POST` a page on another origin made the browser send (a form, a `fetch` in `no-cors` mode): refused
/// with 403, so visiting a hostile page cannot make an operator's browser reload the gateway.
fn cross_origin(headers: &HeaderMap) -> Option<Response<ReplyBody>> {
    let origin = headers.get(ORIGIN)?;
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    let same = origin
        .to_str()
        .ok()
        .and_then(|o| o.strip_prefix("http://"))
        .is_some_and(|o| Some(o) == host);
    (!same).then(|| {
        error(
            StatusCode::FORBIDDEN,
            format!(
                "POST /admin/reload from another origin ({}) refused",
                String::from_utf8_lossy(origin.as_bytes())
            ),
        )
    })
}

fn dashboard() -> Response<ReplyBody> {
    let mut response = Response::new(full(Bytes::from_static(DASHBOARD_HTML.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(DASHBOARD_CSP),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<ReplyBody> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `{"error":{"code":..,"message":..}}`, like the gateway's own errors, not to be cached.
fn error(status: StatusCode, message: String) -> Response<ReplyBody> {
    let mut response = json_error(status, &message);
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn not_allowed(method: &Method, path: &str, allow: &'static str) -> Response<ReplyBody> {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} {path}: allowed: {allow}"),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

fn too_large(max: usize) -> Response<ReplyBody> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("admin requests take no body over {max} bytes"),
    )
}

/// Closes the connection after this answer: the request's body was not read to its end.
fn closing(mut response: Response<ReplyBody>) -> Response<ReplyBody> {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_answer_is_well_formed() {
        let busy = busy();
        let text = std::str::from_utf8(&busy).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), length);
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], 503);
    }

    #[test]
    fn only_same_origin_posts_reload() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.insert(*k, HeaderValue::from_static(v));
            }
            map
        };
        assert!(cross_origin(&headers(&[("host", "127.0.0.1:9901")])).is_none());
        assert!(
            cross_origin(&headers(&[
                ("host", "127.0.0.1:9901"),
                ("origin", "http://127.0.0.1:9901")
            ]))
            .is_none()
        );
        for origin in [
            "http://evil.example",
            "null",
            "https://127.0.0.1:9901",
            "http://127.0.0.1:9902",
        ] {
            let refused = cross_origin(&headers(&[("host", "127.0.0.1:9901"), ("origin", origin)]));
            assert_eq!(refused.unwrap().status(), StatusCode::FORBIDDEN, "{origin}");
        }
    }
}
