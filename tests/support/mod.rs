//! In-process test servers: upstreams and the gateway, each started on `127.0.0.1:0` in one line.
//! Every test file uses a different subset.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchgate::{Config, Gateway, server};
use batchgate_client::parse_reply;
use batchgate_wire::ReplyPart;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A request as an upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A running upstream and what it has seen.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
}

impl Upstream {
    /// Requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    /// Most requests ever being handled at once.
    pub fn peak_concurrency(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
    /// TCP connections accepted so far.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Starts an upstream whose answers come from `handler`.
pub async fn upstream<F, Fut>(handler: F) -> Upstream
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
pub async fn echo_upstream(delay: Duration) -> Upstream {
    upstream(move |seen| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        text(StatusCode::OK, seen.uri.path().to_owned())
    })
    .await
}

/// The demo mail service on a free port.
pub async fn demo_upstream(latency: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(batchgate::demo::serve(listener, latency));
    addr
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "text/plain".parse().unwrap());
    r
}

/// A running gateway.
pub struct TestGateway {
    pub addr: SocketAddr,
    /// The running gateway, to check that nothing is left in flight.
    pub gateway: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// `[[routes]]` entries for `(prefix, upstream)` pairs.
pub fn routes(pairs: &[(&str, SocketAddr)]) -> String {
    pairs
        .iter()
        .map(|(prefix, addr)| {
            format!("[[routes]]\nprefix = \"{prefix}\"\nupstream = \"http://{addr}\"\n")
        })
        .collect()
}

/// Starts the gateway with this TOML config (listen is ignored: it binds a free port).
pub async fn gateway(toml: &str) -> TestGateway {
    gateway_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), toml).await
}

/// Starts the gateway with this TOML config on a listener the test set up (socket options, say: accepted
/// connections inherit the listener's buffer sizes).
pub async fn gateway_on(listener: TcpListener, toml: &str) -> TestGateway {
    let config = Config::from_toml(toml).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let gateway = Arc::new(Gateway::new(config).unwrap());
    let task = tokio::spawn(server::run(listener, gateway.clone(), async move {
        let _ = stopped.await;
    }));
    TestGateway {
        addr,
        gateway,
        stop: Some(stop),
        task,
    }
}

/// A reply as the client got it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The parts of a 200 multipart reply.
    pub fn parts(&self) -> Vec<ReplyPart> {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let ct = self.headers["content-type"].to_str().unwrap();
        parse_reply(ct, &self.body).unwrap()
    }
    /// The JSON error message of a refused batch.
    pub fn error_message(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        assert_eq!(v["error"]["code"], self.status.as_u16());
        v["error"]["message"].as_str().unwrap().to_owned()
    }
}

/// The JSON error message of an error part (checks the code matches the status).
pub fn part_error(part: &ReplyPart) -> String {
    let v: serde_json::Value = serde_json::from_slice(&part.body).unwrap();
    assert_eq!(v["error"]["code"], part.status.as_u16());
    v["error"]["message"].as_str().unwrap().to_owned()
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs a batch body with this content type (and extra headers) to /batch.
    pub async fn post(&self, content_type: &str, body: impl Into<Bytes>) -> Reply {
        self.request(
            Method::POST,
            "/batch",
            &[("content-type", content_type)],
            body.into(),
        )
        .await
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        http_request(&self.url(path), method, headers, body).await
    }

    /// Sends raw bytes and reads until the gateway closes the connection.
    pub async fn raw(&self, bytes: &[u8]) -> Vec<u8> {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        out
    }

    /// Signals shutdown and waits for the server to finish.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.task).await.unwrap();
    }
}

/// An address nothing listens on (bound, then released): connecting to it is refused.
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Sends on its channel when dropped: tells a test that an upstream handler's future was cancelled.
pub struct SignalOnDrop(pub tokio::sync::mpsc::UnboundedSender<()>);

impl Drop for SignalOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// Waits until `condition` holds, checking every 10 ms, failing the test after 10 s.
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A request body of GET parts for these targets, CRLF, ids `<i0>`, `<i1>`, ...
pub fn get_batch(boundary: &str, targets: &[String]) -> String {
    let mut out = String::new();
    for (i, t) in targets.iter().enumerate() {
        out.push_str(&format!(
            "--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <i{i}>\r\n\r\nGET {t} HTTP/1.1\r\n\r\n"
        ));
    }
    out.push_str(&format!("--{boundary}--\r\n"));
    out
}

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawReply {
    pub status: StatusCode,
    /// The status line and header lines exactly as sent, blank line included.
    pub head: String,
    pub headers: HeaderMap,
    /// The body without its chunked framing, and gunzipped if it came `Content-Encoding: gzip`.
    pub body: Bytes,
}

impl RawReply {
    /// The same reply as a `Reply`, for `parts()` and `error_message()`.
    pub fn reply(&self) -> Reply {
        Reply {
            status: self.status,
            headers: self.headers.clone(),
            body: self.body.clone(),
        }
    }
}

/// Fails the test instead of hanging when `future` takes longer than `secs`.
pub async fn within<T>(secs: u64, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s waiting for {what}"))
}

/// Connects to `addr`, sends `bytes` as they are and reads one response. The connection is not half-closed:
/// a client that shuts its side down mid-batch is a client that went away.
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> RawReply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    within(10, "the response", read_response(&mut stream)).await
}

/// Reads one HTTP/1.1 response: its body framed by Content-Length, chunked, or by the connection closing.
pub async fn read_response(stream: &mut TcpStream) -> RawReply {
    async fn more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.unwrap();
        buf.extend_from_slice(&chunk[..n]);
        n
    }
    let mut buf = Vec::new();
    let head_len = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = more(stream, &mut buf).await;
        assert!(
            n > 0,
            "closed before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
    };
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut slots);
    assert!(response.parse(&buf[..head_len]).unwrap().is_complete());
    let status = StatusCode::from_u16(response.code.unwrap()).unwrap();
    let mut headers = HeaderMap::new();
    for h in response.headers.iter() {
        headers.append(
            http::HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(h.value).unwrap(),
        );
    }
    let head = String::from_utf8(buf[..head_len].to_vec()).unwrap();
    let mut rest = buf.split_off(head_len);
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    let length = headers
        .get("content-length")
        .map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
    let body = if chunked {
        let mut body = Vec::new();
        let mut pos = 0;
        loop {
            let line_end = loop {
                if let Some(i) = rest[pos..].windows(2).position(|w| w == b"\r\n") {
                    break pos + i;
                }
                assert!(
                    more(stream, &mut rest).await > 0,
                    "closed inside a chunk size line"
                );
            };
            let line = std::str::from_utf8(&rest[pos..line_end]).unwrap();
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
            // The data and its CRLF; after the last (empty) chunk, the CRLF that ends the (empty) trailers.
            let end = line_end + 2 + size + 2;
            while rest.len() < end {
                assert!(more(stream, &mut rest).await > 0, "closed inside a chunk");
            }
            if size == 0 {
                break;
            }
            body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            pos = end;
        }
        body
    } else if let Some(n) = length {
        while rest.len() < n {
            assert!(more(stream, &mut rest).await > 0, "closed inside the body");
        }
        rest.truncate(n);
        rest
    } else {
        while more(stream, &mut rest).await > 0 {}
        rest
    };
    let gzipped = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let body = if gzipped {
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain)
            .unwrap();
        plain
    } else {
        body
    };
    RawReply {
        status,
        head,
        headers,
        body: Bytes::from(body),
    }
}

/// A request exactly as a [`RecordingUpstream`] read it off its socket.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// The request's bytes as received: head and body.
    pub bytes: Bytes,
    /// `METHOD target HTTP/1.1`, as sent.
    pub request_line: String,
    pub method: String,
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A raw TCP upstream: it frames each request itself (head, then `Content-Length` bytes), records it byte
/// for byte, and writes back whatever bytes its answer function returns, on a keep-alive connection.
#[derive(Clone)]
pub struct RecordingUpstream {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<RawRequest>>>,
    received: Arc<Mutex<Vec<u8>>>,
}

impl RecordingUpstream {
    /// The requests framed so far, in arrival order.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.requests.lock().unwrap().clone()
    }
    /// Every byte read from any connection, in arrival order, whether or not it made a whole request.
    pub fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }
    /// The request lines received so far, sorted (parts run concurrently, so arrival order varies).
    pub fn request_lines(&self) -> Vec<String> {
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
pub async fn recording_upstream<F>(answer: F) -> RecordingUpstream
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
        let method = parsed.method.unwrap().to_owned();
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
            method,
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

/// The sum of a metric's samples in `/metrics` text whose labels include every `key="value"` in `labels`
/// (0 when there is none: label sets appear once first used).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (set, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|(k, v)| set.split(',').any(|pair| pair == format!("{k}=\"{v}\"")))
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum::<f64>() as u64
}

/// A directory of its own under the system's temp dir, removed when dropped.
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "batchgate-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }

    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A certificate authority made up for one test: it signs server certificates for `localhost` and
/// `127.0.0.1`, and clients that trust it.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A server certificate and its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: rustls::pki_types::CertificateDer<'static>,
}

impl Leaf {
    /// Writes the PEM certificate and key where `[tls] cert` and `key` point.
    pub fn write(&self, cert: &std::path::Path, key: &std::path::Path) {
        std::fs::write(cert, &self.cert_pem).unwrap();
        std::fs::write(key, &self.key_pem).unwrap();
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "batchgate test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// A new server certificate for `localhost` and `127.0.0.1`, with `name` as its common name.
    pub fn leaf(&self, name: &str) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// The CA's own certificate, for clients to trust.
    pub fn ca_der(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// The CA's own certificate as PEM, for clients that read a file (`batchgate send --cacert`).
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A client configuration that trusts this CA only and offers `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(batchgate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// `[tls]` for a certificate and key at these paths.
pub fn tls_section(cert: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n",
        cert.to_str().unwrap(),
        key.to_str().unwrap()
    )
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One HTTPS client connection to the gateway (HTTP/2 when ALPN picked `h2`, else HTTP/1.1).
pub struct HttpsConn {
    sender: Sender,
    authority: String,
    /// The protocol ALPN picked.
    pub alpn: Option<Vec<u8>>,
    /// The certificate the gateway presented.
    pub peer_cert: rustls::pki_types::CertificateDer<'static>,
}

/// Connects to `addr` over TLS as `localhost`, trusting `ca`, offering `alpn`.
pub async fn https_connect(addr: SocketAddr, ca: &TestCa, alpn: &[&[u8]]) -> HttpsConn {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(ca.client_config(alpn));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (_, session) = tls.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let peer_cert = session.peer_certificates().unwrap()[0].clone();
    let io = TokioIo::new(tls);
    let sender = if alpn.as_deref() == Some(b"h2") {
        let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(connection);
        Sender::Http2(sender)
    } else {
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        Sender::Http1(sender)
    };
    HttpsConn {
        sender,
        authority: format!("localhost:{}", addr.port()),
        alpn,
        peer_cert,
    }
}

impl HttpsConn {
    /// Sends one request on this connection and reads the whole response.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> (http::Version, Reply) {
        let uri = match self.sender {
            Sender::Http1(_) => path.to_owned(),
            Sender::Http2(_) => format!("https://{}{path}", self.authority),
        };
        let mut request = Request::builder().method(method).uri(uri);
        if let Sender::Http1(_) = self.sender {
            request = request.header("host", &self.authority);
        }
        for (n, v) in headers {
            request = request.header(*n, *v);
        }
        let request = request.body(Full::new(body.into())).unwrap();
        let response = match &mut self.sender {
            Sender::Http1(s) => {
                s.ready().await.unwrap();
                s.send_request(request).await.unwrap()
            }
            Sender::Http2(s) => {
                s.ready().await.unwrap();
                s.send_request(request).await.unwrap()
            }
        };
        let version = response.version();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            version,
            Reply {
                status,
                headers,
                body,
            },
        )
    }

    /// POSTs a batch to /batch on this connection.
    pub async fn post(&mut self, content_type: &str, body: impl Into<Bytes>) -> Reply {
        self.request(
            Method::POST,
            "/batch",
            &[("content-type", content_type)],
            body,
        )
        .await
        .1
    }
}

/// Starts the gateway through a [`server::Live`] handle, for tests that swap the gateway while it runs
/// (`TestGateway::gateway` stays the first one).
pub async fn live_gateway(toml: &str) -> (TestGateway, Arc<server::Live>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = Config::from_toml(toml).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let gateway = Arc::new(Gateway::new(config).unwrap());
    let live = server::Live::new(gateway.clone()).unwrap();
    let task = tokio::spawn(server::serve(listener, live.clone(), async move {
        let _ = stopped.await;
    }));
    (
        TestGateway {
            addr,
            gateway,
            stop: Some(stop),
            task,
        },
        live,
    )
}

/// A gateway built from this TOML, for [`server::Live::replace`].
pub fn build_gateway(toml: &str) -> Gateway {
    Gateway::new(Config::from_toml(toml).unwrap()).unwrap()
}

/// Flags for a headless Chromium that talks to nothing but the pages it is given.
pub const HEADLESS_CHROMIUM: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// Whether `chromium` is on PATH (browser tests skip, saying so, when it is not).
pub fn chromium_installed() -> bool {
    std::process::Command::new("sh")
        .args(["-c", "command -v chromium"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs headless Chromium on `url` with `args` besides the usual ones (no sandbox, GPU, QUIC or background
/// traffic; a fresh profile), failing the test if it does not succeed within 90 s. Returns its stdout.
pub async fn chromium(url: &str, args: &[String]) -> String {
    let profile = TempDir::new("chromium");
    let mut command = tokio::process::Command::new("chromium");
    command
        .args(HEADLESS_CHROMIUM)
        .arg("--hide-scrollbars")
        .arg(format!("--user-data-dir={}", profile.path.display()))
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let output = within(90, "chromium", command.output()).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "chromium failed ({:?}); stdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The DOM of `url` once its scripts have had `virtual_ms` of (virtual) time: timers fire, fetches complete.
pub async fn dump_dom(url: &str, virtual_ms: u64) -> String {
    let dom = chromium(
        url,
        &[
            format!("--virtual-time-budget={virtual_ms}"),
            "--dump-dom".to_owned(),
        ],
    )
    .await;
    assert!(dom.contains("</html>"), "no DOM dumped: {dom}");
    dom
}

/// A PNG of `url` in a `width` x `height` window, after `virtual_ms` of (virtual) time.
pub async fn screenshot(url: &str, path: &std::path::Path, size: (u32, u32), virtual_ms: u64) {
    chromium(
        url,
        &[
            format!("--virtual-time-budget={virtual_ms}"),
            format!("--window-size={},{}", size.0, size.1),
            format!("--screenshot={}", path.display()),
        ],
    )
    .await;
    let png = std::fs::read(path).unwrap_or_else(|e| panic!("no screenshot at {path:?}: {e}"));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG: {path:?}");
}

/// Sends one request to `url` and reads the whole answer.
pub async fn http_request(
    url: &str,
    method: Method,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder().method(method).uri(url);
    for (n, v) in headers {
        request = request.header(*n, *v);
    }
    let response = client
        .request(request.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

/// A running admin listener ([`server::admin::serve`]).
pub struct TestAdmin {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts `admin`'s listener on a free port.
pub async fn start_admin(admin: server::admin::Admin) -> TestAdmin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server::admin::serve(listener, admin, async move {
        let _ = stopped.await;
    }));
    TestAdmin {
        addr,
        stop: Some(stop),
        task,
    }
}

impl TestAdmin {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> Reply {
        http_request(&self.url(path), Method::GET, &[], Bytes::new()).await
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        http_request(&self.url(path), method, headers, body).await
    }

    /// `GET /admin/stats`, checked to be JSON that is not cached.
    pub async fn stats(&self) -> serde_json::Value {
        let reply = self.get("/admin/stats").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.headers["content-type"], "application/json");
        assert_eq!(reply.headers["cache-control"], "no-store");
        serde_json::from_slice(&reply.body).unwrap()
    }

    /// Stops accepting and waits for the listener's task to end.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.task).await.unwrap();
    }
}

/// A raw HTTP/1.1 server that answers every request (its head, then `Content-Length` body bytes) with
/// exactly `reply`, then closes the connection: for replies no real server would send.
pub async fn canned_server(reply: Vec<u8>) -> SocketAddr {
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

/// The content type of the batches tests send: boundary `b`.
pub const MP: &str = "multipart/mixed; boundary=b";

/// A CRLF part with `Content-ID: <id>` carrying `request` (request line, headers, blank line, body).
pub fn part(id: &str, request: &str) -> String {
    format!("--b\r\nContent-Type: application/http\r\nContent-ID: <{id}>\r\n\r\n{request}\r\n")
}

/// `parts` joined and closed: a batch body for [`MP`].
pub fn batch(parts: &[String]) -> String {
    let mut body = parts.concat();
    body.push_str("--b--\r\n");
    body
}

// ---------------------------------------------------------------------------------------------------------
// The real binary

/// `batchgate` run as a child process (killed when dropped), and its log.
pub struct Binary {
    pub child: tokio::process::Child,
    pub log: BinaryLog,
}

impl Binary {
    /// `batchgate ARGS`, its stderr read line by line as it comes (so it never blocks on a full pipe), with the
    /// environment variables `env` set (`Some`) or removed (`None`).
    pub fn spawn(args: &[&str], env: &[(&str, Option<&str>)]) -> Binary {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_batchgate"));
        command
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let mut child = command.spawn().unwrap();
        let log = BinaryLog::of(&mut child);
        Binary { child, log }
    }

    /// Waits for the gateway's "listening on SCHEME://ADDR/" line.
    pub async fn listening(&mut self) -> (&'static str, SocketAddr) {
        let line = self.log.wait_for("listening on ").await;
        listening_on(&line).unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    /// Sends the process `signal` (`"-TERM"`, `"-HUP"`) with `kill`.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().unwrap().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}");
    }
}

/// The scheme and address of a "listening on SCHEME://ADDR/" log line (plain or JSON).
pub fn listening_on(line: &str) -> Option<(&'static str, SocketAddr)> {
    ["http", "https"].into_iter().find_map(|scheme| {
        let rest = line.split(&format!("listening on {scheme}://")).nth(1)?;
        Some((scheme, rest.split('/').next()?.parse().ok()?))
    })
}

/// The binary's stderr, line by line.
pub struct BinaryLog {
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    pub seen: Vec<String>,
}

impl BinaryLog {
    fn of(child: &mut tokio::process::Child) -> BinaryLog {
        use tokio::io::AsyncBufReadExt;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                let _ = tx.send(line);
            }
        });
        BinaryLog {
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `text`; returns it.
    pub async fn wait_for(&mut self, text: &str) -> String {
        within(20, text, async {
            loop {
                let line =
                    self.lines.recv().await.unwrap_or_else(|| {
                        panic!("stderr ended before {text:?}: {:#?}", self.seen)
                    });
                self.seen.push(line.clone());
                if line.contains(text) {
                    return line;
                }
            }
        })
        .await
    }

    /// Every line until the process closes stderr.
    pub async fn rest(&mut self) {
        within(20, "stderr to end", async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line);
            }
        })
        .await;
    }
}
