//! The problem batchgate exists for: an inbox client that must fetch 100 unread messages.
//!
//! ```text
//! cargo run --release --example inbox                        # everything in-process
//! cargo run --release --example inbox -- --latency 50ms      # a slower mail service
//! cargo run --release --example inbox -- --gateway http://127.0.0.1:8080 --upstream http://127.0.0.1:9001
//! ```
//!
//! It lists the unread ids, then fetches every message twice and times both:
//! - in ONE batch through the gateway (`batchgate::client::BatchClient`), which runs the parts
//!   `concurrency` at a time over pooled upstream connections;
//! - one request per id, sequentially over a single keep-alive connection straight to the upstream, the
//!   way a client without batching does it.
//!
//! Every reply is checked (status 200, the message asked for), so a fast wrong answer cannot win.

use std::sync::Arc;
use std::time::{Duration, Instant};

use batchgate::client::{BatchBuilder, BatchClient};
use batchgate::config::{RouteConfig, parse_duration};
use batchgate::wire::ReplyPart;
use batchgate::{Config, Gateway, demo, server};
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
    let client = BatchClient::new(batch_url);

    // 2. List the unread ids, through a one-part batch like every other call this client makes.
    let started = Instant::now();
    let mut listing = BatchBuilder::default();
    listing.get(
        "unread",
        &format!("/mail/v1/messages/unread?max={}", args.count),
    );
    let reply = client.send(listing).await.map_err(|e| e.to_string())?;
    let ids = unread_ids(&reply)?;
    println!(
        "unread:     {} ids, listed through a 1-part batch in {:.1} ms",
        ids.len(),
        ms(started.elapsed())
    );

    // 3. All messages in ONE batch. Each part gets the id as its Content-ID, so the check below also
    //    proves the reply parts come back in request order with their ids echoed.
    let started = Instant::now();
    let mut batch = BatchBuilder::default();
    for id in &ids {
        batch.get(&format!("msg-{id}"), &format!("/mail/v1/messages/{id}"));
    }
    let parts = client.send(batch).await.map_err(|e| e.to_string())?;
    let batched = started.elapsed();
    if parts.len() != ids.len() {
        return Err(format!(
            "the batch of {} parts got {} reply parts",
            ids.len(),
            parts.len()
        ));
    }
    for (id, part) in ids.iter().zip(&parts) {
        let echoed = part.content_id.as_ref().map(|c| c.id().to_owned());
        if echoed.as_deref() != Some(format!("msg-{id}").as_str()) {
            return Err(format!(
                "the reply part for message {id} carries Content-ID {echoed:?}"
            ));
        }
        check_message(id, part.status, &part.body)?;
    }
    println!(
        "batch:      {:>4} messages in ONE batch, through the gateway {:>8.1} ms  (every part 200, right id)",
        ids.len(),
        ms(batched)
    );

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
    config.routes.push(RouteConfig {
        prefix: "/mail/".into(),
        upstream: Some(format!("http://{upstream_addr}")),
        ..RouteConfig::default()
    });
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

/// The ids in the reply to `GET /mail/v1/messages/unread`.
fn unread_ids(reply: &[ReplyPart]) -> Result<Vec<String>, String> {
    let [part] = reply else {
        return Err(format!("a 1-part batch got {} reply parts", reply.len()));
    };
    if part.status != StatusCode::OK {
        return Err(format!(
            "listing unread messages: {} {}",
            part.status,
            String::from_utf8_lossy(&part.body)
        ));
    }
    let listing: serde_json::Value =
        serde_json::from_slice(&part.body).map_err(|e| format!("unread listing: {e}"))?;
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
