//! The gateway's cost per batch and per part, end to end over loopback but with nothing else in the way: a
//! batch posted on a keep-alive connection, read, routed through its route's stack to an in-process upstream
//! that answers at once with a small JSON body, and its reply read back whole.
//!
//! ```text
//! cargo bench --bench gateway                 # full run
//! cargo bench --bench gateway -- --quick      # a quick look
//! ```
//!
//! - `batch/1`: a 1-part batch: the fixed cost of a batch (admission, scheduler, reply) plus one part.
//! - `batch/50`: a 50-part batch, reported per part: what a part costs on the route stack's path.
//! - `cached/50`: the same batch to a route with `cache = true` whose entries are all fresh: what a cache hit
//!   costs, to set beside a proxied part.
//! - `uncoalesced/1`, `uncoalesced/50`: the `batch` rows on a route with `coalesce = false` (no cache layer at
//!   all): set beside `batch/*`, what coalescing (on by default) costs a part nobody joins.
//!
//! The client, the gateway and the upstream share one runtime, so the figures are the whole round trip's CPU,
//! not the gateway's alone: compare runs of this bench with each other (a regression on the per-part path
//! shows here without the side-by-side benchmark), not with the side-by-side benchmark's figures.

use std::convert::Infallible;
use std::future::pending;
use std::net::SocketAddr;
use std::sync::Arc;

use batchgate::server::{self, Live};
use batchgate::{Config, Gateway};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const SIZES: [usize; 2] = [1, 50];
const BOUNDARY: &str = "batch_bench";
/// About what a mail message is.
const ANSWER: &str = r#"{"id":"7","threadId":"t2","labelIds":["INBOX","UNREAD"],"from":"bob@example.com","subject":"lunch meeting invoice","snippet":"About the draft review: see the travel before the budget."}"#;

/// Answers every request 200 with [`ANSWER`], with the headers nginx would send besides.
async fn upstream(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|_request| async {
                let mut response = Response::new(Full::new(Bytes::from_static(ANSWER.as_bytes())));
                let headers = response.headers_mut();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                // As nginx answers on a keep-alive connection: a hop-by-hop header to strip.
                headers.insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("keep-alive"),
                );
                // A shared cache may keep it for an hour: the `cached` rows are all hits.
                headers.insert(
                    http::header::CACHE_CONTROL,
                    http::HeaderValue::from_static("max-age=0, s-maxage=3600"),
                );
                Ok::<_, Infallible>(response)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Starts the upstream and a gateway routing `/mail/` to it, `/plain/` to it without coalescing, and `/cached/`
/// through a cache; the gateway's address.
async fn start() -> SocketAddr {
    let upstream_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream_listener.local_addr().unwrap();
    tokio::spawn(upstream(upstream_listener));
    let config = Config::from_toml(&format!(
        "[cache]\n[[routes]]\nprefix = \"/mail/\"\nupstream = \"http://{upstream_addr}\"\n\
         [[routes]]\nprefix = \"/plain/\"\nupstream = \"http://{upstream_addr}\"\ncoalesce = false\n\
         [[routes]]\nprefix = \"/cached/\"\nupstream = \"http://{upstream_addr}\"\ncache = true\n"
    ))
    .unwrap();
    let live = Live::new(Arc::new(Gateway::new(config).unwrap())).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve(listener, live, pending::<()>()));
    addr
}

/// A keep-alive connection to the gateway.
async fn connect(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// A batch of `n` GETs of distinct messages under `prefix`.
fn batch_body(prefix: &str, n: usize) -> Bytes {
    let mut body = String::new();
    for i in 0..n {
        body.push_str(&format!(
            "--{BOUNDARY}\r\nContent-Type: application/http\r\nContent-ID: <item{i}>\r\n\r\n\
             GET {prefix}v1/messages/{i} HTTP/1.1\r\nAccept: application/json\r\n\r\n"
        ));
    }
    body.push_str(&format!("--{BOUNDARY}--\r\n"));
    Bytes::from(body)
}

/// Posts `body` and reads the whole reply.
async fn post(sender: &mut SendRequest<Full<Bytes>>, addr: SocketAddr, body: Bytes) {
    sender.ready().await.unwrap();
    let request = Request::post("/batch")
        .header(http::header::HOST, addr.to_string())
        .header(
            http::header::CONTENT_TYPE,
            format!("multipart/mixed; boundary={BOUNDARY}"),
        )
        .body(Full::new(body))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let reply = response.into_body().collect().await.unwrap().to_bytes();
    assert!(!reply.is_empty());
}

fn gateway(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let addr = runtime.block_on(start());
    let mut sender = runtime.block_on(connect(addr));
    for (name, prefix) in [("batch", "/mail/"), ("uncoalesced", "/plain/")] {
        let mut group = c.benchmark_group(name);
        for n in SIZES {
            let body = batch_body(prefix, n);
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::from_parameter(n), &body, |b, body| {
                b.iter(|| runtime.block_on(post(&mut sender, addr, body.clone())));
            });
        }
        group.finish();
    }
    let mut group = c.benchmark_group("cached");
    let n = 50;
    let body = batch_body("/cached/", n);
    // Fills the cache: every later batch is answered from it.
    runtime.block_on(post(&mut sender, addr, body.clone()));
    group.throughput(Throughput::Elements(n as u64));
    group.bench_with_input(BenchmarkId::from_parameter(n), &body, |b, body| {
        b.iter(|| runtime.block_on(post(&mut sender, addr, body.clone())));
    });
    group.finish();
}

criterion_group!(benches, gateway);
criterion_main!(benches);
