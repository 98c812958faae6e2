//! The demo mail service on its own, to put a gateway (or curl) in front of.
//!
//! ```text
//! cargo run --example mail_upstream -- [ADDR] [--latency 50ms]
//! ```
//!
//! It serves `GET /mail/v1/messages/unread`, `GET /mail/v1/messages/{id}` and `POST /mail/v1/messages`
//! (see `batchgate::demo`), answering every request after `--latency`, which stands in for the work a real
//! service does per request: the cost a batch pays once per `concurrency` parts instead of once per part.

use std::net::SocketAddr;
use std::time::Duration;

use batchgate::config::parse_duration;
use clap::Parser;
use tokio::net::TcpListener;

/// Runs the demo mail service standalone.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on (127.0.0.1:0 picks a free port).
    #[arg(default_value = "127.0.0.1:9001")]
    addr: SocketAddr,
    /// Time taken per request, e.g. 50ms.
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    latency: Duration,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();

    // 1. Bind first, so that a busy port is reported here rather than as a gateway's 502 later.
    let listener = match TcpListener::bind(args.addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("mail_upstream: cannot listen on {}: {e}", args.addr);
            return std::process::ExitCode::from(2);
        }
    };
    // 2. Print the address actually bound (it differs from the argument when the port was 0).
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    println!(
        "demo mail service listening on http://{addr} (latency {:?} per request)",
        args.latency
    );
    println!("  try: curl http://{addr}/mail/v1/messages/unread?max=5");
    println!(
        "  route a gateway to it with: [[routes]] prefix = \"/mail/\" upstream = \"http://{addr}\""
    );

    // 3. Serve until Ctrl-C. `serve` never returns on its own.
    tokio::select! {
        () = batchgate::demo::serve(listener, args.latency) => {}
        _ = tokio::signal::ctrl_c() => println!("stopped"),
    }
    std::process::ExitCode::SUCCESS
}
