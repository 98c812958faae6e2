//! What the HTTP cache and coalescing save: an inbox of 100 messages loaded three times through the gateway
//! (the third time with `fields=id,subject,from,date`, as a list view asks), against the demo mail service
//! answering `Cache-Control: max-age=60`, once through a route without a cache and once through one with
//! `cache = true`; then a batch of 100 parts that repeats 10 targets, through a route with neither a cache nor
//! `dedup` (coalescing alone).
//!
//! ```text
//! cargo run --release --example cache_savings [-- --latency 5ms]
//! ```
//!
//! Per load it prints the upstream requests the gateway made (its `batchgate_upstream_requests_total`), the
//! reply's bytes and the wall time. Every reply part is checked (status 200, the message asked for).

use std::sync::Arc;
use std::time::{Duration, Instant};

use batchgate::config::parse_duration;
use batchgate::{Config, Gateway, demo, server};
use bytes::Bytes;
use clap::Parser;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

/// Loads an inbox three times with and without the cache.
#[derive(Debug, Parser)]
struct Args {
    /// Time the mail service takes per request.
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    latency: Duration,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    tokio::spawn(demo::serve_with(
        upstream,
        demo::DemoOptions {
            latency: args.latency,
            cache_control: Some("max-age=60".to_owned()),
            ..demo::DemoOptions::default()
        },
    ));
    // The gateway allows the whole batch in flight at once, so that repeats meet in flight.
    let limits = "[limits]\nconcurrency = 100\nwindow = 100\n";
    let route = |extra: &str| {
        format!(
            "[[routes]]\nprefix = \"/mail/\"\nupstream = \"http://{upstream_addr}\"\nfields = true\n{extra}\n"
        )
    };

    let inbox: Vec<String> = (1..=100)
        .map(|id| format!("/mail/v1/messages/{id}"))
        .collect();
    let list: Vec<String> = inbox
        .iter()
        .map(|t| format!("{t}?fields=id,subject,from,date"))
        .collect();
    println!(
        "{:<22} {:<10} {:>18} {:>12} {:>10}",
        "gateway", "load", "upstream requests", "reply bytes", "wall ms"
    );
    for (name, config) in [
        ("no cache", format!("{limits}{}", route("cache = false"))),
        (
            "cache = true",
            format!("{limits}[cache]\n{}", route("cache = true")),
        ),
    ] {
        let gateway = start(&config).await;
        for (load, targets) in [("first", &inbox), ("second", &inbox), ("fields=", &list)] {
            let figures = load_batch(&gateway, targets).await;
            println!(
                "{name:<22} {load:<10} {:>18} {:>12} {:>10.1}",
                figures.upstream_requests,
                figures.reply_bytes,
                figures.wall.as_secs_f64() * 1000.0
            );
        }
    }

    let repeats: Vec<String> = (0..100)
        .map(|i| format!("/mail/v1/messages/{}", i % 10 + 1))
        .collect();
    let gateway = start(&format!("{limits}{}", route(""))).await;
    let figures = load_batch(&gateway, &repeats).await;
    println!(
        "{:<22} {:<10} {:>18} {:>12} {:>10.1}",
        "coalesce (default)",
        "10 x 10",
        figures.upstream_requests,
        figures.reply_bytes,
        figures.wall.as_secs_f64() * 1000.0
    );
}

/// A gateway on a free port, serving `config`.
async fn start(config: &str) -> Started {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = Arc::new(Gateway::new(Config::from_toml(config).unwrap()).unwrap());
    tokio::spawn(server::run(
        listener,
        gateway.clone(),
        std::future::pending::<()>(),
    ));
    Started {
        url: format!("http://{addr}/batch"),
        gateway,
    }
}

struct Started {
    url: String,
    gateway: Arc<Gateway>,
}

struct Figures {
    upstream_requests: u64,
    reply_bytes: usize,
    wall: Duration,
}

/// Sends one batch of GETs for `targets` and checks every part: 200, the message asked for.
async fn load_batch(gateway: &Started, targets: &[String]) -> Figures {
    let mut body = String::new();
    for (i, target) in targets.iter().enumerate() {
        body.push_str(&format!(
            "--b\r\nContent-Type: application/http\r\nContent-ID: <{i}>\r\n\r\nGET {target} HTTP/1.1\r\n\r\n"
        ));
    }
    body.push_str("--b--\r\n");
    let before = upstream_requests(&gateway.gateway);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let started = Instant::now();
    let request = Request::post(&gateway.url)
        .header("content-type", "multipart/mixed; boundary=b")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let reply = response.into_body().collect().await.unwrap().to_bytes();
    let wall = started.elapsed();
    let parts = batchgate_client::parse_reply(&content_type, &reply).unwrap();
    assert_eq!(parts.len(), targets.len());
    for (part, target) in parts.iter().zip(targets) {
        assert_eq!(part.status, 200, "{target}");
        let message: serde_json::Value = serde_json::from_slice(&part.body).unwrap();
        let id = target
            .rsplit('/')
            .next()
            .unwrap()
            .split('?')
            .next()
            .unwrap();
        assert_eq!(message["id"], id, "{target}");
    }
    Figures {
        upstream_requests: upstream_requests(&gateway.gateway) - before,
        reply_bytes: reply.len(),
        wall,
    }
}

/// The gateway's `batchgate_upstream_requests_total`.
fn upstream_requests(gateway: &Gateway) -> u64 {
    gateway
        .metrics_text()
        .lines()
        .find_map(|line| line.strip_prefix("batchgate_upstream_requests_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}
