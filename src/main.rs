//! The `batchgate` binary: a thin shell over the library (config, logging, signals).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use batchgate::config::{Config, RouteConfig, parse_duration};
use batchgate::{Gateway, demo, server};
use clap::Parser;
use tokio::net::TcpListener;

/// HTTP batch gateway: POST /batch with a multipart/mixed body of embedded requests; get one ordered
/// multipart reply.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML); see config.toml for every key and its default.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on, overriding the config's `listen` (e.g. 127.0.0.1:0 for any free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Also run the built-in demo mail service and route /mail/ to it.
    #[arg(long)]
    demo: bool,
    /// Worker threads of the async runtime (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Time the demo service takes per request, to show what batching saves (e.g. 50ms).
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    demo_latency: Duration,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BATCHGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("batchgate=info")),
        )
        .init();
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime.enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("batchgate: {message}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    #[cfg(unix)]
    ignore_sighup()?;
    let mut config =
        match &args.config {
            Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
            None if args.demo => Config::default(),
            None => return Err(
                "give --config PATH (see config.toml), or --demo to try it with a built-in service"
                    .into(),
            ),
        };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if args.demo {
        let upstream = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("demo service: {e}"))?;
        let addr = upstream.local_addr().map_err(|e| e.to_string())?;
        tokio::spawn(demo::serve(upstream, args.demo_latency));
        config.routes.retain(|r| r.prefix != "/mail/");
        config.routes.push(RouteConfig {
            prefix: "/mail/".into(),
            upstream: Some(format!("http://{addr}")),
            ..RouteConfig::default()
        });
        config.validate().map_err(|e| e.to_string())?;
        tracing::info!(%addr, latency = ?args.demo_latency, "demo mail service running; /mail/ routes to it");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    for route in &config.routes {
        let upstreams: Vec<&String> = route.upstream.iter().chain(&route.upstreams).collect();
        tracing::info!(prefix = %route.prefix, ?upstreams, http2 = route.http2, "route");
    }
    tracing::info!(
        "batchgate listening on http://{local}{} (health: /healthz)",
        config.batch_path
    );
    if args.demo {
        println!("{}", demo_curl(local, &config.batch_path));
    }
    let gateway = Arc::new(Gateway::new(config).map_err(|e| e.to_string())?);
    server::run(listener, gateway, shutdown_signal()).await;
    Ok(())
}

/// A command that sends a real three-part batch to the demo.
fn demo_curl(addr: SocketAddr, path: &str) -> String {
    let body = "--b\\r\\nContent-Type: application/http\\r\\nContent-ID: <unread>\\r\\n\\r\\n\
GET /mail/v1/messages/unread?max=3\\r\\n\\r\\n\
--b\\r\\nContent-Type: application/http\\r\\nContent-ID: <m1>\\r\\n\\r\\nGET /mail/v1/messages/1\\r\\n\\r\\n\
--b\\r\\nContent-Type: application/http\\r\\nContent-ID: <new>\\r\\n\\r\\nPOST /mail/v1/messages HTTP/1.1\\r\\n\
Content-Type: application/json\\r\\nContent-Length: 17\\r\\n\\r\\n{\"title\":\"hello\"}\\r\\n--b--\\r\\n";
    format!(
        "Try it (bash):\n  curl -s http://{addr}{path} -H 'Content-Type: multipart/mixed; boundary=b' --data-binary $'{body}'"
    )
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("signal received");
}

/// SIGHUP's default action would terminate the process (as when its terminal closes, or when an operator
/// sends it expecting a reload). Handling it replaces that for the life of the process; each one is logged.
#[cfg(unix)]
fn ignore_sighup() -> Result<(), String> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP ignored: reload is not supported yet");
        }
    });
    Ok(())
}
