//! The gateway's CPU per part for a JSON batch against a multipart one (issue 17: a 100-part JSON batch should
//! cost no more per part than a multipart batch).
//!
//! ```text
//! cargo run --release --example formats                      # 300 batches of 100 parts per round
//! cargo run --release --example formats -- --batches 1000 --parts 100 --rounds 3
//! ```
//!
//! The gateway runs in this process on a runtime of its own, on threads named `gw`, and only their CPU time is
//! counted (from `/proc/self/task/*/stat`, so Linux only); the upstream and the client run on other threads.
//! Each round sends the same requests in both formats, in alternating order, one batch at a time; every
//! answer is checked, so a fast wrong answer cannot win.

use std::time::Duration;

use batchgate::{Config, Gateway, server};
use batchgate_client::{BatchBuilder, BatchClient, Format};
use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Gateway CPU per part, JSON batches against multipart ones.
#[derive(Debug, Parser)]
struct Args {
    /// Batches per format per round.
    #[arg(long, default_value_t = 300)]
    batches: usize,
    /// Parts per batch.
    #[arg(long, default_value_t = 100)]
    parts: usize,
    /// Rounds, each running both formats (their order alternating).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

/// The gateway's threads: their name, as `/proc` shows it.
const GATEWAY_THREADS: &str = "gw";

fn main() {
    let args = Args::parse();
    let outside = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("load")
        .enable_all()
        .build()
        .unwrap();
    let gateway_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(GATEWAY_THREADS)
        .enable_all()
        .build()
        .unwrap();
    let upstream = outside.block_on(start_upstream());
    let listener = gateway_rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Config::from_toml(&format!(
        "[[routes]]\nprefix = \"/up/\"\nupstream = \"http://{upstream}\"\n"
    ))
    .unwrap();
    let gateway = std::sync::Arc::new(Gateway::new(config).unwrap());
    gateway_rt.spawn(server::run(listener, gateway, std::future::pending::<()>()));
    let client = BatchClient::new(format!("http://{addr}/batch")).unwrap();

    // A warm-up in each format: connections pooled, allocator arenas grown.
    outside.block_on(run(&client, Format::Multipart, 20, args.parts));
    outside.block_on(run(&client, Format::Json, 20, args.parts));

    let mut totals = [Duration::ZERO; 2];
    for round in 0..args.rounds {
        let order = if round % 2 == 0 {
            [Format::Json, Format::Multipart]
        } else {
            [Format::Multipart, Format::Json]
        };
        for format in order {
            let before = gateway_cpu();
            outside.block_on(run(&client, format, args.batches, args.parts));
            let spent = gateway_cpu() - before;
            totals[usize::from(format == Format::Json)] += spent;
            println!(
                "round {round}: {format:?}: {:.2} µs gateway CPU per part",
                per_part(spent, args.batches * args.parts)
            );
        }
    }
    let parts = args.rounds * args.batches * args.parts;
    let (multipart, json) = (per_part(totals[0], parts), per_part(totals[1], parts));
    println!(
        "all rounds: multipart {multipart:.2} µs, JSON {json:.2} µs per part; JSON / multipart = {:.3}",
        json / multipart
    );
}

fn per_part(spent: Duration, parts: usize) -> f64 {
    spent.as_secs_f64() * 1e6 / parts as f64
}

/// Sends `batches` batches of `parts` GETs, one at a time, and checks every answer.
async fn run(client: &BatchClient, format: Format, batches: usize, parts: usize) {
    for b in 0..batches {
        let mut batch = BatchBuilder::new();
        batch.format(format);
        for p in 0..parts {
            let request = Request::get(format!("/up/messages/{}", b * parts + p))
                .header("accept", "application/json")
                .body(Bytes::new())
                .unwrap();
            batch.push(request);
        }
        let answers = client.send(batch).await.unwrap();
        assert_eq!(answers.len(), parts);
        for (p, answer) in answers.iter().enumerate() {
            assert_eq!(answer.status, StatusCode::OK);
            let expected = format!("{{\"id\":\"{}\",\"subject\":\"hello\"}}", b * parts + p);
            assert_eq!(answer.body, expected.as_bytes());
        }
    }
}

/// The upstream: a small JSON message per id, as a mail service would answer.
async fn start_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|request: Request<hyper::body::Incoming>| {
                        let id = request
                            .uri()
                            .path()
                            .rsplit('/')
                            .next()
                            .unwrap_or("")
                            .to_owned();
                        async move {
                            let body = format!("{{\"id\":\"{id}\",\"subject\":\"hello\"}}");
                            let mut response = Response::new(Full::new(Bytes::from(body)));
                            response
                                .headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// CPU time (user + system) of this process's threads named [`GATEWAY_THREADS`], from `/proc`.
fn gateway_cpu() -> Duration {
    // Clock ticks per second: 100 on every Linux this runs on (`getconf CLK_TCK`).
    const TICKS: u64 = 100;
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").expect("Linux /proc") {
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: comm may hold spaces, so split after its closing parenthesis.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(GATEWAY_THREADS) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the state.
        ticks += fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    }
    Duration::from_millis(ticks * 1000 / TICKS)
}
