//! Batch jobs against synchronous batches: the same parts sent as one job (`POST /jobs`) and as
//! synchronous batches of 100, against the demo mail service, everything in this process on loopback.
//!
//! ```text
//! cargo run --release --example jobs_bench                  # 100,000 parts
//! cargo run --release --example jobs_bench -- --parts 20000
//! ```
//!
//! It reports parts per second each way, the SQLite store's size once the job is done, and the resident set
//! sampled while the job runs, at 10%, 50% and 90% of its parts answered (it stays flat: the body is streamed
//! into the store, the answers out of it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use batchgate::{Config, Gateway, server};
use bytes::Bytes;
use clap::Parser;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

#[derive(Parser)]
struct Args {
    /// Parts in the job, and in the synchronous batches together.
    #[arg(long, default_value_t = 100_000)]
    parts: usize,
    /// Parts per synchronous batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    // 1. The demo mail service, and a gateway in front of it with a SQLite jobs store in a temp dir.
    let mail = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mail_addr = mail.local_addr().unwrap();
    tokio::spawn(batchgate::demo::serve(mail, Duration::ZERO));
    let dir = std::env::temp_dir().join(format!("batchgate-jobs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("jobs.db");
    let config = Config::from_toml(&format!(
        "[[routes]]\nprefix = \"/mail/\"\nupstream = \"http://{mail_addr}\"\n\
         [limits]\nmax_parts = {}\n[jobs]\nstore = \"sqlite://{}\"\nmax_parts = {}\n\
         max_job_bytes = \"1GiB\"\n",
        args.batch.max(1),
        store.display(),
        args.parts
    ))
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway_addr = listener.local_addr().unwrap();
    let gateway = Arc::new(Gateway::new(config).unwrap());
    tokio::spawn(server::run(listener, gateway, std::future::pending()));
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    // 2. The job: submitted whole, then watched until it completes, the resident set sampled meanwhile.
    let body = batch_body(0..args.parts);
    let started = Instant::now();
    let (status, text) = send(&client, gateway_addr, Method::POST, "/jobs", Some(body)).await;
    assert_eq!(status, 202, "{text}");
    let submitted = started.elapsed();
    let id = serde_json::from_str::<serde_json::Value>(&text).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // (share of the parts answered, resident set in MiB), every 250 ms.
    let mut rss: Vec<(f64, f64)> = Vec::new();
    let done = loop {
        let (_, text) = send(
            &client,
            gateway_addr,
            Method::GET,
            &format!("/jobs/{id}"),
            None,
        )
        .await;
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let counts = &doc["request_counts"];
        let answered =
            counts["succeeded"].as_u64().unwrap_or(0) + counts["failed"].as_u64().unwrap_or(0);
        rss.push((answered as f64 / args.parts as f64, rss_mib()));
        if doc["status"] == "completed" {
            break doc;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let job_time = started.elapsed();
    assert_eq!(done["request_counts"]["succeeded"], args.parts, "{done}");
    let store_bytes: u64 = ["jobs.db", "jobs.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum();

    // 3. The same parts as synchronous batches, one after another on one client.
    let started = Instant::now();
    for first in (0..args.parts).step_by(args.batch.max(1)) {
        let body = batch_body(first..(first + args.batch).min(args.parts));
        let (status, _) = send(&client, gateway_addr, Method::POST, "/batch", Some(body)).await;
        assert_eq!(status, 200);
    }
    let sync_time = started.elapsed();

    let rate = |d: Duration| args.parts as f64 / d.as_secs_f64();
    // The first sample at or past each share of the job.
    let at = |share: f64| {
        rss.iter()
            .find(|(done, _)| *done >= share)
            .map_or(0.0, |(_, mib)| *mib)
    };
    let peak = rss.iter().map(|(_, mib)| *mib).fold(0.0, f64::max);
    println!("parts: {}", args.parts);
    println!(
        "job: {:.0} parts/s ({:.1}s, of which {:.1}s to submit), performance {}",
        rate(job_time),
        job_time.as_secs_f64(),
        submitted.as_secs_f64(),
        done["performance"]
    );
    println!(
        "synchronous batches of {}: {:.0} parts/s ({:.1}s)",
        args.batch,
        rate(sync_time),
        sync_time.as_secs_f64()
    );
    println!("store: {:.1} MiB", store_bytes as f64 / (1 << 20) as f64);
    println!(
        "resident set while the job ran ({} samples): at 10% of the parts {:.1} MiB, at 50% {:.1} MiB, \
         at 90% {:.1} MiB, highest {peak:.1} MiB",
        rss.len(),
        at(0.1),
        at(0.5),
        at(0.9)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A multipart batch of GETs of the demo's messages, one part per index.
fn batch_body(indices: std::ops::Range<usize>) -> Bytes {
    let mut body = String::new();
    for i in indices {
        body.push_str(&format!(
            "--b\r\nContent-Type: application/http\r\nContent-ID: <{i}>\r\n\r\nGET /mail/v1/messages/{} HTTP/1.1\r\n\r\n",
            i % 5 + 1
        ));
    }
    body.push_str("--b--\r\n");
    Bytes::from(body)
}

async fn send(
    client: &HttpClient,
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> (u16, String) {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "multipart/mixed; boundary=b")
        .body(Full::new(body.unwrap_or_default()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// This process's resident set (`VmRSS`), in MiB; 0 where `/proc` has none.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
