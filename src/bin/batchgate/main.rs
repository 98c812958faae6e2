//! The `batchgate` binary: a thin shell over the library (config, logging, signals, the admin listener),
//! `batchgate send`, a command-line batch client, and `batchgate demo-upstream`, the demo mail service alone.

mod pretty;
mod send;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use batchgate::config::{Config, ConfigError, LogFormat, RouteConfig, parse_duration};
use batchgate::server::Live;
use batchgate::server::admin::{self, Admin};
use batchgate::{Gateway, demo, server};
use clap::Parser;
use tokio::net::TcpListener;

/// A gateway allocates a little for every part (requests, headers, pooled buffers), and frees it on another
/// thread as often as not: mimalloc spends far less CPU on that than glibc's malloc (README, "Performance").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// HTTP batch gateway: POST /batch with a multipart/mixed body of embedded requests; get one ordered
/// multipart reply.
///
/// Without a command it runs the gateway (--config, --route or --demo).
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (TOML); see config.toml for every key and its default.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Route paths under PREFIX to the upstream URL, on top of the config file's routes (replacing one with
    /// the same prefix) or of the defaults without one; repeatable (e.g. --route /mail/=http://127.0.0.1:9001).
    #[arg(long = "route", value_name = "PREFIX=URL", value_parser = parse_route)]
    routes: Vec<RouteConfig>,
    /// Print the gateway's base URL (e.g. http://127.0.0.1:PORT; batches go to it plus the config's
    /// batch_path, /batch by default) as the one line on stdout once it listens; logs stay on stderr.
    #[arg(long)]
    print_address: bool,
    /// Address to listen on, overriding the config's `listen` (e.g. 127.0.0.1:0 for any free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Also run the built-in demo mail service and route /mail/ to it.
    #[arg(long)]
    demo: bool,
    /// Threads that serve client connections (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// How connections are spread over the threads: `per-core` serves each connection, and the upstream
    /// connections its requests make, on one thread's own runtime; `work-stealing` runs one tokio runtime
    /// whose threads share all tasks (docs/performance.md, "A runtime per core").
    #[arg(long, value_enum, default_value_t = RuntimeKind::PerCore)]
    runtime: RuntimeKind,
    /// Time the demo service takes per request, to show what batching saves (e.g. 50ms).
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    demo_latency: Duration,
}

/// `--runtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RuntimeKind {
    PerCore,
    WorkStealing,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Send requests (one a line, from a file or stdin) as one batch; print each reply part.
    Send(send::SendArgs),
    /// Run the demo mail service alone (GET /mail/v1/messages/unread, GET /mail/v1/messages/{id},
    /// POST /mail/v1/messages), for a gateway or a test to talk to, until SIGINT or SIGTERM.
    DemoUpstream(DemoUpstreamArgs),
}

#[derive(Debug, clap::Args)]
struct DemoUpstreamArgs {
    /// Address to listen on (127.0.0.1:0 for any free port).
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Print the service's URL (http://127.0.0.1:PORT) as the one line on stdout once it listens.
    #[arg(long)]
    print_address: bool,
    /// Time the service takes per request (e.g. 50ms).
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    latency: Duration,
}

fn main() -> std::process::ExitCode {
    let mut args = Args::parse();
    let demo_upstream_args = match args.command.take() {
        Some(Command::Send(send)) => return send::main(send),
        Some(Command::DemoUpstream(demo)) => Some(demo),
        None => None,
    };
    // Read before logging starts: it says how log lines look. An unreadable file is reported by `run`.
    let file = args.config.as_deref().map(Config::from_file);
    let (log_format, otlp_endpoint) = match &file {
        Some(Ok(config)) => (config.log_format, config.tracing.otlp_endpoint.clone()),
        _ => (LogFormat::default(), String::new()),
    };
    let threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        usize::from,
    );
    // Per core: this thread runs the accept loop, signals, the admin listener, reloads and jobs on a runtime
    // of its own, and the workers serve the connections. They start before any gateway is built: its
    // upstream clients keep an idle list per worker.
    let per_core = args.runtime == RuntimeKind::PerCore && demo_upstream_args.is_none();
    let (runtime, workers) = if per_core {
        let workers = match server::Workers::start(threads) {
            Ok(workers) => workers,
            Err(e) => {
                eprintln!("batchgate: cannot start {threads} worker threads: {e}");
                return std::process::ExitCode::from(2);
            }
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        (runtime, Some(workers))
    } else {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build();
        (runtime, None)
    };
    let runtime = runtime.expect("tokio runtime");
    // The span exporter, if any, runs on the runtime.
    let exporter = {
        let _runtime = runtime.enter();
        match init_logging(log_format, &otlp_endpoint) {
            Ok(exporter) => exporter,
            Err(message) => {
                eprintln!("batchgate: {message}");
                return std::process::ExitCode::from(2);
            }
        }
    };
    let outcome = runtime.block_on(async {
        match demo_upstream_args {
            Some(demo) => demo_upstream(demo).await,
            None => run(args, file, workers.as_ref()).await,
        }
    });
    // Stops the workers: the server has drained their connections, or its grace period is over.
    drop(workers);
    exporter.flush();
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("batchgate: {message}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Spans on their way to an OTLP collector (with the `otel` feature and `[tracing] otlp_endpoint`).
struct Exporter {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Exporter {
    /// Sends what is left before the process exits.
    fn flush(self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider {
            let _ = provider.shutdown();
        }
    }
}

/// Log lines on stderr, filtered by `BATCHGATE_LOG` (default `batchgate=info`): one JSON object per line for
/// `log_format = "json"` (never colour codes), else text for people, coloured only when stderr is a terminal
/// (and `NO_COLOR` is not set).
fn init_logging(format: LogFormat, otlp_endpoint: &str) -> Result<Exporter, String> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATCHGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("batchgate=info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Json => logs
            .event_format(ListFields(
                tracing_subscriber::fmt::format().json().flatten_event(true),
            ))
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .with_ansi(false)
            .boxed(),
        LogFormat::Pretty => {
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            logs.fmt_fields(pretty::PrettyFields::default())
                .event_format(pretty::PrettyLines::default())
                .with_ansi(colour)
                .boxed()
        }
    };
    let registry = tracing_subscriber::registry().with(filter).with(logs);
    #[cfg(feature = "otel")]
    if !otlp_endpoint.is_empty() {
        let (spans, provider) = batchgate::otel::layer(otlp_endpoint)?;
        registry.with(spans).init();
        return Ok(Exporter {
            provider: Some(provider),
        });
    }
    // Without the feature, validation has already refused a non-empty endpoint.
    let _ = otlp_endpoint;
    registry.init();
    Ok(Exporter {
        #[cfg(feature = "otel")]
        provider: None,
    })
}

async fn run(
    args: Args,
    file: Option<Result<Config, ConfigError>>,
    workers: Option<&server::Workers>,
) -> Result<(), String> {
    // Handled from the start, so that a SIGHUP during startup neither kills the process nor goes unseen.
    #[cfg(unix)]
    let hangups = hangups()?;
    let shutdown = shutdown_signal()?;
    let mut config =
        match file {
            Some(config) => config.map_err(|e| e.to_string())?,
            None if args.demo || !args.routes.is_empty() => Config::default(),
            None => return Err(
                "give --config PATH (see config.toml), --route PREFIX=URL, or --demo to try it with a built-in service"
                    .into(),
            ),
        };
    let mut demo_addr = None;
    let mut demo_site = None;
    if args.demo {
        let upstream = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("demo service: {e}"))?;
        let addr = upstream.local_addr().map_err(|e| e.to_string())?;
        // The inbox page at / compares one batch with one plain fetch per mail straight to the service,
        // from the gateway's origin: the service lets any origin read its answers.
        tokio::spawn(demo::serve_with(
            upstream,
            demo::DemoOptions {
                latency: args.demo_latency,
                allow_origin: Some("*".into()),
                ..demo::DemoOptions::default()
            },
        ));
        demo_addr = Some(addr);
        demo_site = Some(Arc::new(demo::DemoSite::new(
            &format!("http://{addr}"),
            args.demo_latency,
        )));
        tracing::info!(%addr, latency = ?args.demo_latency, "demo mail service running; /mail/ routes to it");
    }
    let overrides = Overrides {
        listen: args.listen,
        demo: demo_addr,
        routes: args.routes.clone(),
    };
    overrides.apply(&mut config);
    config.validate().map_err(|e| e.to_string())?;
    log_routes(&config);
    let batch_path = config.batch_path.clone();
    let listen = config.listen;
    let admin_listen = config.admin.as_ref().map(|admin| admin.listen);
    let gateway = Arc::new(Gateway::new(config).map_err(|e| e.to_string())?);
    // Reads `[tls]`'s certificate and key: a bad file is a startup error naming tls.cert or tls.key.
    let live = Live::with_demo_site(gateway, demo_site).map_err(|e| e.to_string())?;
    // `[jobs]`: a store that cannot be opened is a startup error.
    live.start_jobs().await?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let scheme = if live.is_tls() { "https" } else { "http" };
    tracing::info!(
        "batchgate listening on {scheme}://{local}{batch_path} (liveness: /healthz, readiness: /readyz)"
    );
    if let Some(admin_listen) = admin_listen {
        let listener = TcpListener::bind(admin_listen)
            .await
            .map_err(|e| format!("cannot listen on {admin_listen} (admin.listen): {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let mut admin = Admin::new(live.clone());
        if let Some(path) = &args.config {
            let overrides = overrides.clone();
            admin = admin.config_file(path.clone(), move |config| overrides.apply(config));
        }
        tracing::info!(
            %addr,
            "admin endpoints on http://{addr}: /admin/dashboard, /admin/stats, /metrics, POST /admin/reload"
        );
        // Serves until the process exits, through the main listener's shutdown grace.
        tokio::spawn(admin::serve(listener, admin, std::future::pending()));
    }
    if args.demo {
        tracing::info!("inbox demo page: {scheme}://{local}/");
        let hint = format!(
            "Open {scheme}://{local}/ for the inbox demo in a browser.\n{}",
            demo_curl(scheme, local, &batch_path)
        );
        // With --print-address, stdout holds the address alone.
        if args.print_address {
            eprintln!("{hint}");
        } else {
            println!("{hint}");
        }
    }
    #[cfg(unix)]
    tokio::spawn(reload_on_sighup(
        hangups,
        live.clone(),
        args.config.clone(),
        overrides,
    ));
    // Last, once nothing else can fail: a reader of stdout may take the line as "it is up".
    if args.print_address {
        print_address(&format!("{scheme}://{local}"))?;
    }
    match workers {
        Some(workers) => server::serve_on(workers, listener, live, shutdown).await,
        None => server::serve(listener, live, shutdown).await,
    }
    Ok(())
}

/// `batchgate demo-upstream`: the demo mail service alone, until SIGINT or SIGTERM.
async fn demo_upstream(args: DemoUpstreamArgs) -> Result<(), String> {
    let shutdown = shutdown_signal()?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(latency = ?args.latency, "demo mail service listening on http://{addr}");
    if args.print_address {
        print_address(&format!("http://{addr}"))?;
    }
    tokio::select! {
        () = demo::serve(listener, args.latency) => {}
        () = shutdown => {}
    }
    Ok(())
}

/// `--print-address`: the URL as one line on stdout, flushed at once (a test or script reads it from a pipe).
fn print_address(url: &str) -> Result<(), String> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{url}")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("--print-address: cannot write to stdout: {e}"))
}

/// One `--route PREFIX=URL`, checked as the config checks a `[[routes]]` entry.
fn parse_route(text: &str) -> Result<RouteConfig, String> {
    let (prefix, url) = text
        .split_once('=')
        .ok_or("expected PREFIX=URL, as in /mail/=http://127.0.0.1:9001")?;
    let route = RouteConfig::to(prefix, url);
    let alone = Config {
        routes: vec![route.clone()],
        ..Config::default()
    };
    match alone.validate() {
        Ok(()) => Ok(route),
        // The message names `routes[0].prefix` or `routes[0].upstream`: the flag's PREFIX or URL.
        Err(ConfigError::Invalid(why)) => {
            Err(why.strip_prefix("routes[0].").unwrap_or(&why).to_owned())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// What the command line changes in the config file, at startup and on every reload.
#[derive(Debug, Clone)]
struct Overrides {
    /// `--listen`.
    listen: Option<SocketAddr>,
    /// `--demo`: the demo service's address, which `/mail/` routes to.
    demo: Option<SocketAddr>,
    /// `--route`s, applied after `--demo`'s: the command line's explicit routes win.
    routes: Vec<RouteConfig>,
}

impl Overrides {
    fn apply(&self, config: &mut Config) {
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        let demo = self
            .demo
            .map(|addr| RouteConfig::to("/mail/", format!("http://{addr}")));
        for route in demo.iter().chain(&self.routes) {
            config.put_route(route.clone());
        }
    }
}

fn log_routes(config: &Config) {
    for route in &config.routes {
        let upstreams: Vec<&String> = route.upstream.iter().chain(&route.upstreams).collect();
        let upstreams = serde_json::to_string(&upstreams).unwrap_or_default();
        tracing::info!(prefix = %route.prefix, %upstreams, http_version = ?route.http_version, "route");
    }
}

/// Log fields that hold a list, written as JSON text (`%serde_json::to_string(..)`): a JSON log line has
/// them as arrays. tracing records a field as a string or a number, never a list.
const LIST_FIELDS: [&str; 2] = ["upstreams", "routes"];

/// The JSON event format, with the [`LIST_FIELDS`] of an event turned from strings into arrays.
struct ListFields<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for ListFields<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let fields = event.metadata().fields();
        if !LIST_FIELDS.iter().any(|name| fields.field(name).is_some()) {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.0.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        let Ok(mut object) =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&line)
        else {
            return writer.write_str(&line);
        };
        for name in LIST_FIELDS {
            if let Some(serde_json::Value::String(text)) = object.get(name)
                && let Ok(list @ serde_json::Value::Array(_)) = serde_json::from_str(text)
            {
                object.insert(name.to_owned(), list);
            }
        }
        writeln!(writer, "{}", serde_json::Value::Object(object))
    }
}

/// A command that sends a real three-part batch to the demo.
fn demo_curl(scheme: &str, addr: SocketAddr, path: &str) -> String {
    let body = "--b\\r\\nContent-Type: application/http\\r\\nContent-ID: <unread>\\r\\n\\r\\n\
GET /mail/v1/messages/unread?max=3\\r\\n\\r\\n\
--b\\r\\nContent-Type: application/http\\r\\nContent-ID: <m1>\\r\\n\\r\\nGET /mail/v1/messages/1\\r\\n\\r\\n\
--b\\r\\nContent-Type: application/http\\r\\nContent-ID: <new>\\r\\n\\r\\nPOST /mail/v1/messages HTTP/1.1\\r\\n\
Content-Type: application/json\\r\\nContent-Length: 17\\r\\n\\r\\n{\"title\":\"hello\"}\\r\\n--b--\\r\\n";
    format!(
        "Try it (bash):\n  curl -s {scheme}://{addr}{path} -H 'Content-Type: multipart/mixed; boundary=b' --data-binary $'{body}'"
    )
}

/// Handles SIGINT (Ctrl-C) and SIGTERM from now on, and resolves on the first of them. The handlers are in place
/// when this returns, before the gateway says it listens: a signal sent as soon as it does drains it rather than
/// killing it.
fn shutdown_signal() -> Result<impl Future<Output = ()>, String> {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        let handle = |kind, name| signal(kind).map_err(|e| format!("cannot handle {name}: {e}"));
        (
            handle(SignalKind::interrupt(), "SIGINT")?,
            handle(SignalKind::terminate(), "SIGTERM")?,
        )
    };
    Ok(async move {
        #[cfg(unix)]
        {
            let (mut interrupt, mut term) = signals;
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("signal received");
    })
}

/// SIGHUP's default action would terminate the process (as when its terminal closes). Handling it replaces
/// that for the life of the process; each one reloads the config (see [`reload_on_sighup`]).
#[cfg(unix)]
fn hangups() -> Result<tokio::signal::unix::Signal, String> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot handle SIGHUP: {e}"))
}

/// On each SIGHUP: re-reads the `--config` file, applies the command line's overrides, validates it, builds a
/// new gateway and swaps it in for new batches and connections. A file that fails is logged and the previous
/// gateway stays; the process lives on whatever happens.
#[cfg(unix)]
async fn reload_on_sighup(
    mut hangups: tokio::signal::unix::Signal,
    live: Arc<Live>,
    path: Option<PathBuf>,
    overrides: Overrides,
) {
    while hangups.recv().await.is_some() {
        let Some(path) = &path else {
            tracing::info!(
                "SIGHUP ignored: no --config file to reload (--demo and --route run on built-in defaults)"
            );
            continue;
        };
        tracing::info!(path = %path.display(), "SIGHUP: reloading the config");
        let overrides = overrides.clone();
        match live
            .reload_file(path, move |config| overrides.apply(config))
            .await
        {
            Ok(_) => {
                let gateway = live.gateway();
                log_routes(&gateway.config);
                tracing::info!(
                    path = %path.display(),
                    "config reloaded: new batches and connections use it; batches in flight finish as they began"
                );
            }
            Err(e) => tracing::error!(
                path = %path.display(),
                "config reload refused, still serving the previous config: {e}"
            ),
        }
    }
}
