//! Upstreams started in-process on port 0: a hyper server that records what it was sent, a raw one that
//! records bytes, one that sends canned bytes, the demo mail service, and an address nothing listens on.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

/// A request as an upstream received it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A running upstream and what it has seen.
#[derive(Clone)]
pub(crate) struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
}

impl Upstream {
    /// Requests received so far.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    /// Most requests ever being handled at once.
    pub(crate) fn peak_concurrency(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
    /// TCP connections accepted so far.
    pub(crate) fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Starts an upstream whose answers come from `handler`.
pub(crate) async fn upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Seen) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = Upstream {
        addr: listener.local_addr().unwrap(),
        seen: Arc::default(),
        in_flight: Arc::default(),
        peak: Arc::default(),
        connections: Arc::default(),
    };
    let handler = Arc::new(handler);
    let state = up.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            state.connections.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    let state = state.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let seen = Seen {
                            method: parts.method,
                            uri: parts.uri,
                            headers: parts.headers,
                            body,
                        };
                        state.seen.lock().unwrap().push(seen.clone());
                        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        state.peak.fetch_max(now, Ordering::SeqCst);
                        let _guard = Decrement(state.in_flight.clone());
                        Ok::<_, Infallible>(handler(seen).await)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    up
}

struct Decrement(Arc<AtomicUsize>);
impl Drop for Decrement {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An upstream that answers 200 with `path` echoed as the body after `delay`.
pub(crate) async fn echo_upstream(delay: Duration) -> Upstream {
    upstream(move |seen| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        text(StatusCode::OK, seen.uri.path().to_owned())
    })
    .await
}

/// The demo mail service on a free port.
pub(crate) async fn demo_upstream(latency: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(batchgate::demo::serve(listener, latency));
    addr
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "text/plain".parse().unwrap());
    r
}

/// An address nothing listens on (bound, then released): connecting to it is refused.
pub(crate) async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Sends on its channel when dropped: tells a test that an upstream handler's future was cancelled.
pub(crate) struct SignalOnDrop(pub tokio::sync::mpsc::UnboundedSender<()>);

impl Drop for SignalOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// A request exactly as a [`RecordingUpstream`] read it off its socket.
#[derive(Debug, Clone)]
pub(crate) struct RawRequest {
    /// The request's bytes as received: head and body.
    pub bytes: Bytes,
    /// `METHOD target HTTP/1.1`, as sent.
    pub request_line: String,
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A raw TCP upstream: it frames each request itself (head, then `Content-Length` bytes), records it byte
/// for byte, and writes back whatever bytes its answer function returns, on a keep-alive connection.
#[derive(Clone)]
pub(crate) struct RecordingUpstream {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<RawRequest>>>,
    received: Arc<Mutex<Vec<u8>>>,
}

impl RecordingUpstream {
    /// The requests framed so far, in arrival order.
    pub(crate) fn requests(&self) -> Vec<RawRequest> {
        self.requests.lock().unwrap().clone()
    }
    /// Every byte read from any connection, in arrival order, whether or not it made a whole request.
    pub(crate) fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }
    /// The request lines received so far, sorted (parts run concurrently, so arrival order varies).
    pub(crate) fn request_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .requests()
            .into_iter()
            .map(|r| r.request_line)
            .collect();
        lines.sort();
        lines
    }
}

/// Starts a [`RecordingUpstream`] that answers each request with the bytes `answer` returns for it.
pub(crate) async fn recording_upstream<F>(answer: F) -> RecordingUpstream
where
    F: Fn(&RawRequest) -> Vec<u8> + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = RecordingUpstream {
        addr: listener.local_addr().unwrap(),
        requests: Arc::default(),
        received: Arc::default(),
    };
    let answer = Arc::new(answer);
    let state = up.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve_recorded(stream, state.clone(), answer.clone()));
        }
    });
    up
}

async fn serve_recorded<F>(mut stream: TcpStream, state: RecordingUpstream, answer: Arc<F>)
where
    F: Fn(&RawRequest) -> Vec<u8> + Send + Sync + 'static,
{
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    // Reads more bytes into `buf`, recording them; false once the peer is gone.
    macro_rules! more {
        () => {{
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => false,
                Ok(n) => {
                    state
                        .received
                        .lock()
                        .unwrap()
                        .extend_from_slice(&chunk[..n]);
                    buf.extend_from_slice(&chunk[..n]);
                    true
                }
            }
        }};
    }
    loop {
        let head_len = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !more!() {
                return;
            }
        };
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut slots);
        assert!(
            parsed.parse(&buf[..head_len]).unwrap().is_complete(),
            "the upstream got a malformed head: {:?}",
            String::from_utf8_lossy(&buf[..head_len])
        );
        let target = parsed.path.unwrap().to_owned();
        let mut headers = HeaderMap::new();
        for h in parsed.headers.iter() {
            headers.append(
                http::HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(h.value).unwrap(),
            );
        }
        let line_end = buf.windows(2).position(|w| w == b"\r\n").unwrap();
        let request_line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let length = headers
            .get("content-length")
            .map_or(0, |v| v.to_str().unwrap().parse::<usize>().unwrap());
        while buf.len() < head_len + length {
            if !more!() {
                return;
            }
        }
        let bytes: Vec<u8> = buf.drain(..head_len + length).collect();
        let request = RawRequest {
            body: Bytes::copy_from_slice(&bytes[head_len..]),
            bytes: Bytes::from(bytes),
            request_line,
            target,
            headers,
        };
        let reply = answer(&request);
        state.requests.lock().unwrap().push(request);
        if stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// A raw HTTP/1.1 server that answers every request (its head, then `Content-Length` body bytes) with
/// exactly `reply`, then closes the connection: for replies no real server would send.
pub(crate) async fn canned_server(reply: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let head_len = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let mut slots = [httparse::EMPTY_HEADER; 64];
                let mut request = httparse::Request::new(&mut slots);
                let _ = request.parse(&buf[..head_len]);
                let length = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| {
                        std::str::from_utf8(h.value)
                            .ok()?
                            .trim()
                            .parse::<usize>()
                            .ok()
                    })
                    .unwrap_or(0);
                while buf.len() < head_len + length {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = stream.write_all(&reply).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// An upstream that answers 200 with the request's path, holding each request whose path contains `held`
/// until the test releases it.
pub(crate) struct HeldUpstream {
    pub upstream: Upstream,
    /// One permit lets one held request through.
    pub release: Arc<Semaphore>,
    /// One message per held request, as it arrives.
    pub arrivals: mpsc::UnboundedReceiver<()>,
}

/// Starts a [`HeldUpstream`] holding the requests whose path contains `held`.
pub(crate) async fn held_upstream(held: &'static str) -> HeldUpstream {
    let release = Arc::new(Semaphore::new(0));
    let (arrived, arrivals) = mpsc::unbounded_channel();
    let gate = release.clone();
    let upstream = upstream(move |seen| {
        let (arrived, gate) = (arrived.clone(), gate.clone());
        async move {
            if seen.uri.path().contains(held) {
                let _ = arrived.send(());
                gate.acquire().await.unwrap().forget();
            }
            text(StatusCode::OK, seen.uri.path().to_owned())
        }
    })
    .await;
    HeldUpstream {
        upstream,
        release,
        arrivals,
    }
}

/// An upstream that answers `/.../i` (i < `n`) only once `/.../i+1` has been answered, so that concurrent
/// requests finish last to first; `answer(i)` is the answer. The second value records the order they finished in.
pub(crate) async fn reverse_order_upstream(
    n: usize,
    answer: fn(usize) -> Response<Full<Bytes>>,
) -> (Upstream, Arc<Mutex<Vec<usize>>>) {
    let gates: Arc<Vec<tokio::sync::Notify>> =
        Arc::new((0..n).map(|_| tokio::sync::Notify::new()).collect());
    let finished = Arc::new(Mutex::new(Vec::new()));
    let order = finished.clone();
    let up = upstream(move |seen| {
        let (gates, finished) = (gates.clone(), finished.clone());
        async move {
            let i: usize = seen.uri.path().rsplit('/').next().unwrap().parse().unwrap();
            if i + 1 < n {
                gates[i].notified().await;
            }
            finished.lock().unwrap().push(i);
            if i > 0 {
                gates[i - 1].notify_one();
            }
            answer(i)
        }
    })
    .await;
    (up, order)
}
