//! The gateway (and its admin listener) started in-process on port 0, a client for it, and the batch
//! bodies and metrics tests read.

use std::net::SocketAddr;
use std::sync::Arc;

use batchgate::{Config, Gateway, server};
use batchgate_client::parse_reply;
use batchgate_wire::ReplyPart;
use batchgate_wire::boundary_from_content_type;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::within;

/// A running gateway.
pub(crate) struct TestGateway {
    pub addr: SocketAddr,
    /// The running gateway, to check that nothing is left in flight.
    pub gateway: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// `[[routes]]` entries for `(prefix, upstream)` pairs.
pub(crate) fn routes(pairs: &[(&str, SocketAddr)]) -> String {
    pairs
        .iter()
        .map(|(prefix, addr)| {
            format!("[[routes]]\nprefix = \"{prefix}\"\nupstream = \"http://{addr}\"\n")
        })
        .collect()
}

/// Starts the gateway with this TOML config (listen is ignored: it binds a free port).
pub(crate) async fn gateway(toml: &str) -> TestGateway {
    gateway_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), toml).await
}

/// Starts the gateway with this TOML config on a listener the test set up (socket options, say: accepted
/// connections inherit the listener's buffer sizes).
pub(crate) async fn gateway_on(listener: TcpListener, toml: &str) -> TestGateway {
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
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The parts of a 200 multipart reply.
    pub(crate) fn parts(&self) -> Vec<ReplyPart> {
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
    pub(crate) fn error_message(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        assert_eq!(v["error"]["code"], self.status.as_u16());
        v["error"]["message"].as_str().unwrap().to_owned()
    }
}

/// The JSON error message of an error part (checks the code matches the status).
pub(crate) fn part_error(part: &ReplyPart) -> String {
    let v: serde_json::Value = serde_json::from_slice(&part.body).unwrap();
    assert_eq!(v["error"]["code"], part.status.as_u16());
    v["error"]["message"].as_str().unwrap().to_owned()
}

impl TestGateway {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs a batch body with this content type (and extra headers) to /batch.
    pub(crate) async fn post(&self, content_type: &str, body: impl Into<Bytes>) -> Reply {
        self.request(
            Method::POST,
            "/batch",
            &[("content-type", content_type)],
            body.into(),
        )
        .await
    }

    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        http_request(&self.url(path), method, headers, body).await
    }

    /// Sends one batch of these parts (each with a Content-ID) and returns the reply's parts, in order.
    pub(crate) async fn send_parts(&self, parts: &[String]) -> Vec<ReplyPart> {
        let parts = within(10, "the batch", self.post(MP, batch(parts)))
            .await
            .parts();
        assert!(parts.iter().all(|p| p.content_id.is_some()));
        parts
    }

    /// Signals shutdown and waits for the server to finish.
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.task).await.unwrap();
    }
}

/// Starts the gateway through a [`server::Live`] handle, for tests that swap the gateway while it runs
/// (`TestGateway::gateway` stays the first one).
pub(crate) async fn live_gateway(toml: &str) -> (TestGateway, Arc<server::Live>) {
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
pub(crate) fn build_gateway(toml: &str) -> Gateway {
    Gateway::new(Config::from_toml(toml).unwrap()).unwrap()
}

/// Sends one request to `url` and reads the whole answer.
pub(crate) async fn http_request(
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
pub(crate) struct TestAdmin {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts `admin`'s listener on a free port.
pub(crate) async fn start_admin(admin: server::admin::Admin) -> TestAdmin {
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
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) async fn get(&self, path: &str) -> Reply {
        http_request(&self.url(path), Method::GET, &[], Bytes::new()).await
    }

    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        http_request(&self.url(path), method, headers, body).await
    }

    /// `GET /admin/stats`, checked to be JSON that is not cached.
    pub(crate) async fn stats(&self) -> serde_json::Value {
        let reply = self.get("/admin/stats").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.headers["content-type"], "application/json");
        assert_eq!(reply.headers["cache-control"], "no-store");
        serde_json::from_slice(&reply.body).unwrap()
    }

    /// Stops accepting and waits for the listener's task to end.
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.task).await.unwrap();
    }
}

/// A request body of GET parts for these targets, CRLF, ids `<i0>`, `<i1>`, ...
pub(crate) fn get_batch(boundary: &str, targets: &[String]) -> String {
    let mut out = String::new();
    for (i, t) in targets.iter().enumerate() {
        out.push_str(&format!(
            "--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <i{i}>\r\n\r\nGET {t} HTTP/1.1\r\n\r\n"
        ));
    }
    out.push_str(&format!("--{boundary}--\r\n"));
    out
}

/// The content type of the batches tests send: boundary `b`.
pub(crate) const MP: &str = "multipart/mixed; boundary=b";

/// A CRLF part with `Content-ID: <id>` carrying `request` (request line, headers, blank line, body).
pub(crate) fn part(id: &str, request: &str) -> String {
    format!("--b\r\nContent-Type: application/http\r\nContent-ID: <{id}>\r\n\r\n{request}\r\n")
}

/// `parts` joined and closed: a batch body for [`MP`].
pub(crate) fn batch(parts: &[String]) -> String {
    let mut body = parts.concat();
    body.push_str("--b--\r\n");
    body
}

/// The sum of a metric's samples in `/metrics` text whose labels include every `key="value"` in `labels`
/// (0 when there is none: label sets appear once first used).
pub(crate) fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
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

/// A metric's value, summed over its label sets.
pub(crate) fn sample(text: &str, name: &str) -> u64 {
    metric(text, name, &[])
}

/// A CRLF part `GET target` with `Content-ID: <id>`.
pub(crate) fn get_part(id: &str, target: &str) -> String {
    part(id, &format!("GET {target} HTTP/1.1\r\n"))
}

/// The parts' statuses, in order.
pub(crate) fn statuses(parts: &[ReplyPart]) -> Vec<u16> {
    parts.iter().map(|p| p.status.as_u16()).collect()
}

/// A part's body as text.
pub(crate) fn part_body(part: &ReplyPart) -> String {
    String::from_utf8_lossy(&part.body).into_owned()
}

/// One reply part read without interpreting its framing: its bytes as sent, the embedded status, its header
/// lines as sent (`name: value`), and every byte up to the next delimiter.
#[derive(Debug)]
pub(crate) struct RawPart {
    /// Every byte between its delimiter and the next: the delimiter line's end, the part's own headers, the
    /// embedded response, and the line break before the next delimiter.
    pub raw: Bytes,
    pub status: u16,
    pub lines: Vec<String>,
    pub body: Bytes,
}

impl RawPart {
    /// The values of the header lines named `name` (any letter case), in order.
    pub(crate) fn values(&self, name: &str) -> Vec<String> {
        self.lines
            .iter()
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
            .collect()
    }

    /// [`RawPart::raw`] as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

/// The parts of a 200 multipart reply, cut at every `--BOUNDARY` as a client's multipart parser cuts them;
/// checks that the reply opens with a delimiter and ends with the close delimiter.
pub(crate) fn raw_parts(reply: &Reply) -> Vec<RawPart> {
    assert_eq!(reply.status, StatusCode::OK);
    let ct = reply.headers["content-type"].to_str().unwrap();
    let delimiter = format!("--{}", boundary_from_content_type(ct).unwrap());
    let mut pieces = Vec::new();
    let mut rest = &reply.body[..];
    while let Some(at) = rest
        .windows(delimiter.len())
        .position(|w| w == delimiter.as_bytes())
    {
        pieces.push(&rest[..at]);
        rest = &rest[at + delimiter.len()..];
    }
    assert_eq!(
        pieces.first(),
        Some(&&b""[..]),
        "the reply opens with a delimiter"
    );
    assert_eq!(rest, b"--\r\n", "the reply ends with the close delimiter");
    let blank = |b: &[u8]| b.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    pieces[1..]
        .iter()
        .map(|raw| {
            let content = &raw[blank(raw)..];
            let head_len = blank(content);
            let head = std::str::from_utf8(&content[..head_len - 4]).unwrap();
            let mut lines = head.split("\r\n").map(str::to_owned);
            let status = lines
                .next()
                .unwrap()
                .split(' ')
                .nth(1)
                .unwrap()
                .parse()
                .unwrap();
            let body = content[head_len..]
                .strip_suffix(b"\r\n")
                .expect("a line break before the next delimiter");
            RawPart {
                raw: Bytes::copy_from_slice(raw),
                status,
                lines: lines.collect(),
                body: Bytes::copy_from_slice(body),
            }
        })
        .collect()
}
