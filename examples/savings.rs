//! What a batch costs its upstream and its client with batchgate's cache and field masks on, and without.
//!
//! ```text
//! cargo run --release --features testing --example savings
//! cargo run --release --features testing --example savings -- --latency 50ms
//! ```
//!
//! Everything runs in-process over loopback: the example mail service (which answers messages with
//! `s-maxage=60` and an `ETag`, and counts what reaches it) and, one after the other, two gateways in front of
//! it: one whose `/mail/` route has `fields = true` only, one with `cache = true` as well. Against each, an
//! inbox of 100 unread messages is loaded three times: the unread list (a 1-part batch), then every message
//! (a 100-part batch); the third load asks each message for `fields=id,subject,from,date` only. Per load it
//! prints the requests that reached the mail service, the reply bytes the client received (both batches'
//! bodies, as sent), and the wall time.
//!
//! Then one batch of 100 parts that names only 10 distinct messages, against fresh gateways: coalescing alone
//! (the default), in-batch `dedup = true`, and the cache.
//!
//! Every reply is checked (every part 200, the message asked for), so a fast wrong answer cannot win.

use std::time::{Duration, Instant};

use batchgate::config::parse_duration;
use batchgate::demo::DemoOptions;
use batchgate::testing::{MailUpstream, TestGateway};
use batchgate_client::{BatchBuilder, parse_reply};
use bytes::Bytes;
use clap::Parser;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Loads an inbox three times through a gateway with and without its cache.
#[derive(Debug, Parser)]
struct Args {
    /// Time the mail service takes per request.
    #[arg(long, value_parser = parse_duration, default_value = "20ms")]
    latency: Duration,
}

/// Messages in the inbox.
const INBOX: u32 = 100;
/// What the third load asks of each message.
const MASK: &str = "id,subject,from,date";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("savings: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    println!(
        "An inbox of {INBOX} messages loaded three times (the third with fields={MASK}); mail service latency {} ms",
        args.latency.as_millis()
    );
    println!(
        "{:<10} {:>4}  {:>17}  {:>12}  {:>10}",
        "gateway", "load", "upstream requests", "reply bytes", "wall ms"
    );
    for (name, keys) in [
        ("no cache", "fields = true"),
        ("cache", "fields = true\ncache = true"),
    ] {
        let mail = MailUpstream::start_with(DemoOptions {
            latency: args.latency,
            ..DemoOptions::default()
        })
        .await;
        let gateway = gateway(&mail, keys).await;
        for load in 1..=3 {
            let mask = (load == 3).then_some(MASK);
            let before = mail.requests();
            let started = Instant::now();
            let bytes = load_inbox(&gateway, mask).await?;
            println!(
                "{name:<10} {load:>4}  {:>17}  {bytes:>12}  {:>10.1}",
                mail.requests() - before,
                started.elapsed().as_secs_f64() * 1000.0
            );
        }
        gateway.stop().await;
    }

    println!("\nOne batch of 100 parts naming 10 distinct messages:");
    println!("{:<28} {:>17}", "gateway", "upstream requests");
    for (name, keys) in [
        ("coalescing only (default)", ""),
        ("dedup = true", "dedup = true"),
        ("cache = true", "cache = true"),
    ] {
        let mail = MailUpstream::start_with(DemoOptions {
            latency: args.latency,
            ..DemoOptions::default()
        })
        .await;
        let gateway = gateway(&mail, keys).await;
        let ids: Vec<String> = (0..100).map(|i| (i % 10 + 1).to_string()).collect();
        send(&gateway, &ids, None).await?;
        println!("{name:<28} {:>17}", mail.requests());
        gateway.stop().await;
    }
    Ok(())
}

/// A gateway whose `/mail/` route goes to `mail` with the route keys `keys`, a cache of 64 MiB configured.
async fn gateway(mail: &MailUpstream, keys: &str) -> TestGateway {
    TestGateway::builder()
        .config_toml(format!(
            "[cache]\nmax_bytes = \"64MiB\"\n\n[limits]\nconcurrency = 100\nwindow = 100\n\n\
             [[routes]]\nprefix = \"/mail/\"\nupstream = \"{}\"\n{keys}\n",
            mail.url()
        ))
        .start()
        .await
}

/// Lists the unread messages and fetches them all (asking each for `mask` when given): the reply bytes of both
/// batches.
async fn load_inbox(gateway: &TestGateway, mask: Option<&str>) -> Result<usize, String> {
    let mut batch = BatchBuilder::new();
    batch
        .get("unread", &format!("/mail/v1/messages/unread?max={INBOX}"))
        .map_err(|e| e.to_string())?;
    let (listing, listing_bytes) = post(gateway, batch).await?;
    let ids: Vec<String> = match listing.first() {
        Some(part) if part.status == StatusCode::OK => {
            let value: serde_json::Value =
                serde_json::from_slice(&part.body).map_err(|e| format!("the unread list: {e}"))?;
            serde_json::from_value(value["ids"].clone())
                .map_err(|e| format!("the unread list: {e}"))?
        }
        other => return Err(format!("the unread list: {other:?}")),
    };
    let message_bytes = send(gateway, &ids, mask).await?;
    Ok(listing_bytes + message_bytes)
}

/// Fetches the messages `ids` in one batch and checks every answer: the reply's bytes.
async fn send(gateway: &TestGateway, ids: &[String], mask: Option<&str>) -> Result<usize, String> {
    let mut batch = BatchBuilder::new();
    for (i, id) in ids.iter().enumerate() {
        let target = match mask {
            Some(mask) => format!("/mail/v1/messages/{id}?fields={mask}"),
            None => format!("/mail/v1/messages/{id}"),
        };
        batch
            .get(&format!("m{i}"), &target)
            .map_err(|e| e.to_string())?;
    }
    let (parts, bytes) = post(gateway, batch).await?;
    if parts.len() != ids.len() {
        return Err(format!("{} answers to {} parts", parts.len(), ids.len()));
    }
    for (part, id) in parts.iter().zip(ids) {
        let value: serde_json::Value = serde_json::from_slice(&part.body)
            .map_err(|e| format!("message {id}: {} {e}", part.status))?;
        if part.status != StatusCode::OK || value["id"] != id.as_str() {
            return Err(format!("message {id}: {} {value}", part.status));
        }
        if mask.is_some() && value.get("snippet").is_some() {
            return Err(format!(
                "message {id}: the field mask was not applied: {value}"
            ));
        }
    }
    Ok(bytes)
}

/// Posts `batch` on a connection of its own: its reply's parts, and the reply body's length as received.
async fn post(
    gateway: &TestGateway,
    batch: BatchBuilder,
) -> Result<(Vec<batchgate_wire::ReplyPart>, usize), String> {
    let (content_type, body) = batch.finish();
    let stream = TcpStream::connect(gateway.addr())
        .await
        .map_err(|e| format!("connecting to the gateway: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = Request::post(gateway.batch_url())
        .header(http::header::HOST, gateway.addr().to_string())
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != StatusCode::OK {
        return Err(format!("the batch was answered {}", response.status()));
    }
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let parts = parse_reply(&content_type, &body).map_err(|e| e.to_string())?;
    Ok((parts, body.len()))
}
