//! The problem batchgate exists for: an inbox client that must fetch 100 unread messages.
//!
//! ```text
//! cargo run --release --example inbox                        # everything in-process
//! cargo run --release --example inbox -- --latency 50ms      # a slower mail service
//! cargo run --release --example inbox -- --gateway http://127.0.0.1:8080 --upstream http://127.0.0.1:9001
//! ```
//!
//! It lists the unread ids, then fetches every message twice and times both:
//! - through the gateway with `batchgate_client::Batcher`: one `batcher.call(request)` per message, all
//!   concurrent, as a client without batching would write them; the batcher sends them as ONE batch, which
//!   the gateway runs `concurrency` parts at a time over pooled upstream connections;
//! - one request per id, sequentially over a single keep-alive connection straight to the upstream, the
//!   way a client without batching does it.
//!
//! Every reply is checked (status 200, the message asked for), so a fast wrong answer cannot win.

use std::sync::Arc;
use std::time::{Duration, Instant};

use batchgate::config::{RouteConfig, parse_duration};
use batchgate::{Config, Gateway, demo, server};
use batchgate_client::{BatchClient, Batcher};
use bytes::Bytes;
use clap::Parser;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// Fetches an inbox one batch at a time versus one request at a time.
#[derive(Debug, Parser)]
struct Args {
    /// A running gateway (its batch URL, or its origin, to which /batch is added). Needs --upstream.
    #[arg(long, requires = "upstream")]
    gateway: Option<Uri>,
    /// The mail service behind that gateway, for the one-by-one requests. Needs --gateway.
    #[arg(long, requires = "gateway")]
    upstream: Option<Uri>,
    /// Time the in-process mail service takes per request (ignored with --gateway).
    #[arg(long, value_parser = parse_duration, default_value = "20ms")]
    latency: Duration,
    /// How many unread messages to fetch (the gateway's max_parts must allow it).
    #[arg(long, default_value_t = 100)]
    count: u32,
}

/// Sub-requests of one batch the in-process gateway runs at once.
const CONCURRENCY: usize = 16;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("inbox: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    // 1. Find (or start) the mail service and the gateway in front of it.
    let (batch_url, upstream) = match (args.gateway, args.upstream) {
        (Some(gateway), Some(upstream)) => {
            println!("gateway:    {gateway} (running)\nupstream:   {upstream} (running)");
            (batch_endpoint(gateway)?, upstream)
        }
        _ => start_in_process(args.latency).await?,
    };
    let client = BatchClient::new(batch_url).map_err(|e| e.to_string())?;
    // Calls made within 5 ms of each other travel together, up to 100 (the gateway's default max_parts).
    let batcher = Batcher::builder(client)
        .max_size(100)
        .max_wait(Duration::from_millis(5))
        .build();

    // 2. List the unread ids: a single call, which the batcher sends as a 1-part batch after max_wait.
    let started = Instant::now();
    let listing = batcher
        .call(get(&format!(
            "/mail/v1/messages/unread?max={}",
            args.count
        ))?)
        .await
        .map_err(|e| e.to_string())?;
    let ids = unread_ids(listing.status(), listing.body())?;
    println!(
        "unread:     {} ids, listed through a 1-part batch in {:.1} ms",
        ids.len(),
        ms(started.elapsed())
    );

    // 3. One call per message, all at once: the batcher turns them into as few batches as max_size allows
    //    (one for 100), and hands each caller its own response, checked below against the id it asked for.
    let started = Instant::now();
    let before = batcher.stats().batches;
    let calls = ids.iter().map(|id| {
        let batcher = &batcher;
        async move {
            let response = batcher
                .call(get(&format!("/mail/v1/messages/{id}"))?)
                .await
                .map_err(|e| format!("message {id}: {e}"))?;
            check_message(id, response.status(), response.body())
        }
    });
    futures_util::future::try_join_all(calls).await?;
    let batched = started.elapsed();
    let batches = batcher.stats().batches - before;
    println!(
        "batcher:    {:>4} concurrent calls in {batches} batch{}, through the gateway {:>8.1} ms  (every reply 200, right id)",
        ids.len(),
        if batches == 1 { "" } else { "es" },
        ms(batched)
    );
    batcher.shutdown().await;

    // 4. The same messages one request at a time, on one keep-alive connection straight to the upstream.
    //    `hyper::client::conn` gives exactly one connection, so nothing runs in parallel behind our back.
    let authority = upstream
        .authority()
        .ok_or_else(|| format!("--upstream {upstream} has no host:port"))?
        .clone();
    let stream = TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| format!("connecting to the upstream {authority}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("upstream handshake: {e}"))?;
    tokio::spawn(connection);
    let started = Instant::now();
    for id in &ids {
        let request = Request::get(format!("/mail/v1/messages/{id}"))
            .header(http::header::HOST, authority.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        sender.ready().await.map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("GET message {id}: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("GET message {id}: {e}"))?
            .to_bytes();
        check_message(id, status, &body)?;
    }
    let one_by_one = started.elapsed();
    println!(
        "one-by-one: {:>4} requests in sequence, straight to upstream {:>8.1} ms  (every reply 200, right id)",
        ids.len(),
        ms(one_by_one)
    );

    // 5. The point of it all.
    println!(
        "ratio:      one-by-one / batch = {:.1}x",
        one_by_one.as_secs_f64() / batched.as_secs_f64()
    );
    Ok(())
}

/// Starts the demo mail service and a gateway routing `/mail/` to it, both on free loopback ports.
async fn start_in_process(latency: Duration) -> Result<(Uri, Uri), String> {
    let upstream = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let upstream_addr = upstream.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(demo::serve(upstream, latency));

    let mut config = Config::default();
    config.limits.concurrency = CONCURRENCY;
    config.put_route(RouteConfig::to("/mail/", format!("http://{upstream_addr}")));
    config.validate().map_err(|e| e.to_string())?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let gateway_addr = listener.local_addr().map_err(|e| e.to_string())?;
    // The process exits when the comparison is done, so the gateway never needs to be told to stop.
    tokio::spawn(server::run(
        listener,
        Arc::new(Gateway::new(config).map_err(|e| e.to_string())?),
        std::future::pending(),
    ));

    println!(
        "upstream:   http://{upstream_addr} (in-process demo mail service, {latency:?} per request)"
    );
    println!("gateway:    http://{gateway_addr}/batch (in-process, concurrency {CONCURRENCY})");
    let batch_url = format!("http://{gateway_addr}/batch");
    let upstream_url = format!("http://{upstream_addr}");
    Ok((
        batch_url.parse().map_err(|e| format!("{e}"))?,
        upstream_url.parse().map_err(|e| format!("{e}"))?,
    ))
}

/// `http://host:port` becomes `http://host:port/batch`; a URL with a path is used as given.
fn batch_endpoint(gateway: Uri) -> Result<Uri, String> {
    if matches!(gateway.path(), "" | "/") {
        format!("{}/batch", gateway.to_string().trim_end_matches('/'))
            .parse()
            .map_err(|e| format!("--gateway {gateway}: {e}"))
    } else {
        Ok(gateway)
    }
}

/// A GET of `target` for the batcher.
fn get(target: &str) -> Result<Request<Bytes>, String> {
    Request::get(target)
        .body(Bytes::new())
        .map_err(|e| format!("{target}: {e}"))
}

/// The ids in the reply to `GET /mail/v1/messages/unread`.
fn unread_ids(status: StatusCode, body: &[u8]) -> Result<Vec<String>, String> {
    if status != StatusCode::OK {
        return Err(format!(
            "listing unread messages: {status} {}",
            String::from_utf8_lossy(body)
        ));
    }
    let listing: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("unread listing: {e}"))?;
    listing["ids"]
        .as_array()
        .ok_or("the unread listing has no \"ids\" array")?
        .iter()
        .map(|id| {
            id.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("unread id {id} is not a string"))
        })
        .collect()
}

/// A message reply must be a 200 whose JSON names the id that was asked for.
fn check_message(id: &str, status: StatusCode, body: &[u8]) -> Result<(), String> {
    if status != StatusCode::OK {
        return Err(format!(
            "message {id}: {status} {}",
            String::from_utf8_lossy(body)
        ));
    }
    let message: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("message {id}: {e}"))?;
    if message["id"] != id {
        return Err(format!("asked for message {id}, got {}", message["id"]));
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
