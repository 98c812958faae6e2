//! A small "mail" service to batch against: the upstream behind `batchgate --demo`, the examples and the
//! tests. It is a real HTTP/1.1 server (over TLS too: [`serve_tls`]), so everything between the gateway and
//! it is real.
//!
//! - `GET /mail/v1/messages/unread` -> `{"ids":["1",...]}` (`?max=N`, default 100)
//! - `GET /mail/v1/messages/{id}` -> the message as JSON, or 404
//! - `POST /mail/v1/messages` -> 201 with the new message's id
//!
//! [`DemoSite`] is the other half of `--demo`: the inbox page the gateway serves at `/`, which fetches the
//! unread mails through the gateway in one batch with the browser client (`/batchgate.js`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue, LOCATION};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::rt::{Read, Write};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Largest message body the demo accepts on POST.
const MAX_POST_BYTES: usize = 1 << 20;

/// The header a named instance ([`DemoOptions::name`]) puts on every answer.
pub const SERVED_BY: &str = "x-served-by";

/// How a demo service instance behaves. The default is what [`serve`] runs: no latency, no name, no CORS.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Time taken per request, to show what batching saves.
    pub latency: Duration,
    /// Names this instance: every answer carries `X-Served-By: <name>`, so a client behind a balancing gateway
    /// can tell which instance answered it. Must be a valid header value.
    pub name: Option<String>,
    /// `Access-Control-Allow-Origin` on every answer (with `Access-Control-Expose-Headers: X-Served-By`), so
    /// that a page on that origin (`"*"`: any) can read answers with a plain `fetch`: the mails are GETs
    /// without custom headers, which browsers send without a preflight.
    pub allow_origin: Option<String>,
    /// `Cache-Control` on every answer (e.g. `max-age=60`), to show what a route with `cache = true` saves;
    /// none by default. Must be a valid header value.
    pub cache_control: Option<String>,
}

/// What every connection of one instance shares.
#[derive(Debug)]
struct Instance {
    latency: Duration,
    /// Headers added to every answer (`X-Served-By`, CORS).
    extra: Vec<(HeaderName, HeaderValue)>,
    next_id: AtomicU64,
}

impl Instance {
    fn new(options: DemoOptions) -> Arc<Instance> {
        let value = |what: &str, text: String| {
            HeaderValue::try_from(text.as_str())
                .unwrap_or_else(|_| panic!("DemoOptions::{what} {text:?} is not a header value"))
        };
        let mut extra = Vec::new();
        if let Some(name) = options.name {
            extra.push((HeaderName::from_static(SERVED_BY), value("name", name)));
        }
        if let Some(origin) = options.allow_origin {
            extra.push((
                http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
                value("allow_origin", origin),
            ));
            extra.push((
                http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(SERVED_BY),
            ));
        }
        if let Some(directives) = options.cache_control {
            extra.push((
                http::header::CACHE_CONTROL,
                value("cache_control", directives),
            ));
        }
        Arc::new(Instance {
            latency: options.latency,
            extra,
            next_id: AtomicU64::new(100_001),
        })
    }
}

/// Serves the mail API on `listener` forever, answering each request after `latency`.
pub async fn serve(listener: TcpListener, latency: Duration) {
    serve_with(
        listener,
        DemoOptions {
            latency,
            ..DemoOptions::default()
        },
    )
    .await;
}

/// Serves the mail API on `listener` forever, as `options` say.
pub async fn serve_with(listener: TcpListener, options: DemoOptions) {
    let instance = Instance::new(options);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(TokioIo::new(stream), instance.clone()));
    }
}

/// Serves the mail API over HTTPS (HTTP/1.1) on `listener` forever, as `options` say: each connection's TLS
/// handshake with `acceptor` runs in its own task; a failed one closes that connection only.
pub async fn serve_tls(listener: TcpListener, acceptor: TlsAcceptor, options: DemoOptions) {
    let instance = Instance::new(options);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, instance) = (acceptor.clone(), instance.clone());
        tokio::spawn(async move {
            match acceptor.accept(stream).await {
                Ok(stream) => serve_connection(TokioIo::new(stream), instance).await,
                Err(e) => tracing::debug!("demo service: TLS handshake failed: {e}"),
            }
        });
    }
}

/// One HTTP/1.1 connection, until the client closes it.
async fn serve_connection<I>(io: I, instance: Arc<Instance>)
where
    I: Read + Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let instance = instance.clone();
        async move {
            if !instance.latency.is_zero() {
                tokio::time::sleep(instance.latency).await;
            }
            let mut response = answer(request, &instance.next_id).await;
            for (name, value) in &instance.extra {
                response.headers_mut().insert(name, value.clone());
            }
            Ok::<_, Infallible>(response)
        }
    });
    let _ = http1::Builder::new().serve_connection(io, service).await;
}

async fn answer(request: Request<Incoming>, next_id: &AtomicU64) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let Some(rest) = path.strip_prefix("/mail/v1/messages") else {
        return json(StatusCode::NOT_FOUND, error("no such endpoint", &path));
    };
    match (request.method().clone(), rest) {
        (Method::GET, "/unread") => {
            let max = request
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("max=")))
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(100)
                .min(1000);
            let ids: Vec<String> = (1..=max).map(|i| i.to_string()).collect();
            json(
                StatusCode::OK,
                serde_json::json!({ "ids": ids }).to_string(),
            )
        }
        (Method::GET, id) => match id.strip_prefix('/').and_then(|id| id.parse::<u64>().ok()) {
            Some(id) if (1..=100_000).contains(&id) => json(StatusCode::OK, message(id)),
            _ => json(StatusCode::NOT_FOUND, error("no such message", &path)),
        },
        (Method::POST, "" | "/") => {
            let body = match Limited::new(request.into_body(), MAX_POST_BYTES)
                .collect()
                .await
            {
                Ok(body) => body.to_bytes(),
                Err(e) => return json(StatusCode::BAD_REQUEST, error(&e.to_string(), &path)),
            };
            let Ok(draft) = serde_json::from_slice::<serde_json::Value>(&body) else {
                return json(StatusCode::BAD_REQUEST, error("body is not JSON", &path));
            };
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            let mut response = json(
                StatusCode::CREATED,
                serde_json::json!({ "id": id.to_string(), "draft": draft }).to_string(),
            );
            let location = format!("/mail/v1/messages/{id}");
            response
                .headers_mut()
                .insert(LOCATION, HeaderValue::from_str(&location).expect("ascii"));
            response
        }
        _ => json(
            StatusCode::METHOD_NOT_ALLOWED,
            error("method not allowed", &path),
        ),
    }
}

/// A deterministic message: the same id always reads the same.
pub fn message(id: u64) -> String {
    const SENDERS: [&str; 6] = ["alice", "bob", "carol", "dmitri", "eve", "farah"];
    const WORDS: [&str; 12] = [
        "quarterly",
        "report",
        "lunch",
        "meeting",
        "invoice",
        "draft",
        "review",
        "travel",
        "budget",
        "launch",
        "notes",
        "schedule",
    ];
    let word =
        |k: u64| WORDS[(id.wrapping_mul(31).wrapping_add(k * 7) % WORDS.len() as u64) as usize];
    let sender = SENDERS[(id % SENDERS.len() as u64) as usize];
    serde_json::json!({
        "id": id.to_string(),
        "threadId": format!("t{}", id / 3),
        "labelIds": ["INBOX", "UNREAD"],
        "from": format!("{sender}@example.com"),
        "subject": format!("{} {} {}", word(1), word(2), word(3)),
        "snippet": format!("About the {} {}: see the {} before the {}.", word(4), word(5), word(6), word(7)),
    })
    .to_string()
}

fn error(message: &str, path: &str) -> String {
    serde_json::json!({ "error": { "message": message, "path": path } }).to_string()
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The browser client (`clients/js/batchgate.js`), as `--demo` serves it at `/batchgate.js`.
pub const BROWSER_CLIENT: &str = include_str!("../clients/js/batchgate.js");

/// The inbox page; `__DEMO_SETTINGS__` is replaced by [`DemoSite::new`].
const INBOX_PAGE: &str = include_str!("demo/inbox.html");

/// What `batchgate --demo` serves besides its own endpoints: the inbox page at `GET /`, which loads the
/// unread mails through the gateway in one batch and compares that with one plain `fetch` per mail straight
/// to the demo service, and the browser client it uses at `GET /batchgate.js`.
#[derive(Debug, Clone)]
pub struct DemoSite {
    page: Bytes,
}

impl DemoSite {
    /// The site for a demo service at `mail_origin` (`http://127.0.0.1:9001`), which the page's
    /// one-request-per-mail comparison calls directly (so the service must allow the gateway's origin:
    /// [`DemoOptions::allow_origin`]), taking `latency` per request.
    pub fn new(mail_origin: &str, latency: Duration) -> DemoSite {
        let settings = serde_json::json!({
            "mailOrigin": mail_origin,
            "latencyMs": latency.as_secs_f64() * 1000.0,
        })
        .to_string()
        // Inside a <script> element: no "</script>" can end it early.
        .replace('<', "\\u003c");
        DemoSite {
            page: Bytes::from(INBOX_PAGE.replace("__DEMO_SETTINGS__", &settings)),
        }
    }

    /// The answer to a request for one of the site's pages, or `None` when it is not one (any method but
    /// GET and HEAD, any other path).
    pub fn answer(&self, method: &Method, path: &str) -> Option<Response<Bytes>> {
        if !matches!(*method, Method::GET | Method::HEAD) {
            return None;
        }
        let (content_type, body) = match path {
            "/" => ("text/html; charset=utf-8", self.page.clone()),
            "/batchgate.js" => (
                "text/javascript; charset=utf-8",
                Bytes::from_static(BROWSER_CLIENT.as_bytes()),
            ),
            _ => return None,
        };
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Some(response)
    }
}
