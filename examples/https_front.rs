//! batchgate in front of two HTTPS instances of the mail service, and a browser page on another origin that
//! batches through it.
//!
//! ```text
//! cargo run --example https_front                      # prints the page's URL; runs until Ctrl-C
//! cargo run --example https_front -- --latency 50ms    # slower mail services
//! cargo run --example https_front -- --check           # sends one batch itself, checks, exits 0 or 1
//! ```
//!
//! What runs, all in this process, each on a free loopback port:
//! - a certificate authority made up at start (rcgen), and a certificate for `localhost` it signs; the CA's
//!   PEM goes to a temporary directory, removed at exit;
//! - two instances of the demo mail service over HTTPS with that certificate, named `mail-a` and `mail-b`:
//!   each answer says which one it came from (`X-Served-By`);
//! - the gateway, plain HTTP, routing `/mail/` to `https://localhost:A` and `https://localhost:B`
//!   round-robin, trusting the CA through the route's `ca_file`, and letting the page's origin call it
//!   (`[cors]`);
//! - a page server on another port: its page loads the browser client (`/batchgate.js`, served by the page
//!   server itself), sends 20 mails as ONE batch to the gateway across origins (the browser sends a CORS
//!   preflight first) and shows which instance answered each.
//!
//! `--check` does what the page does without a browser: the preflight the browser would send, then one
//! batch of 20 through `batchgate_client`, and checks that every part is the right mail and that both
//! instances answered.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use batchgate::config::parse_duration;
use batchgate::demo::{self, DemoOptions};
use batchgate::{Config, Gateway, server};
use batchgate_client::{BatchBuilder, BatchClient};
use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, StatusCode};
use http_body_util::{Empty, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// batchgate in front of two HTTPS mail services, with a page on another origin batching through it.
#[derive(Debug, Parser)]
struct Args {
    /// Send one batch without a browser, check that both instances answered, and exit (0 when all is well).
    #[arg(long)]
    check: bool,
    /// Time each mail service instance takes per request.
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    latency: Duration,
}

/// How many mails the page (and `--check`) batches.
const MAILS: u64 = 20;

/// The instances' names, as they say them in `X-Served-By`.
const INSTANCES: [&str; 2] = ["mail-a", "mail-b"];

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let dir = TempDir::new();
    match run(args, &dir).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("https_front: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, dir: &TempDir) -> Result<(), String> {
    // 1. A CA and a certificate for localhost, made now. Only the CA's certificate goes to disk: the
    //    gateway reads it through its route's `ca_file`, as it would a company CA.
    let (ca_pem, leaf_der, key_der) = certificates()?;
    let ca_file = dir.path.join("ca.pem");
    std::fs::write(&ca_file, ca_pem).map_err(|e| format!("writing {}: {e}", ca_file.display()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(batchgate_transport::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![leaf_der], key_der)
        .map_err(|e| e.to_string())?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    // 2. Two HTTPS instances of the mail service.
    let mut upstreams = Vec::new();
    for name in INSTANCES {
        let port = https_instance(name, &acceptor, args.latency).await?;
        upstreams.push(format!("https://localhost:{port}"));
    }

    // 3. The page server's port first: its origin goes into the gateway's CORS rules.
    let page_listener = bind("127.0.0.1:0").await?;
    let page_port = local(&page_listener)?.port();
    let page_origins = [
        format!("http://127.0.0.1:{page_port}"),
        format!("http://localhost:{page_port}"),
    ];

    // 4. The gateway: /mail/ to both instances round-robin, trusting the CA; the page's origin allowed.
    let toml = format!(
        "[cors]\nallow_origins = {origins:?}\n\n\
         [[routes]]\nprefix = \"/mail/\"\nupstreams = {upstreams:?}\nbalance = \"round_robin\"\nca_file = {ca:?}\n",
        origins = page_origins,
        ca = ca_file.to_str().ok_or("the temp dir's path is not UTF-8")?,
    );
    let config = Config::from_toml(&toml).map_err(|e| e.to_string())?;
    let gateway = Arc::new(Gateway::new(config).map_err(|e| e.to_string())?);
    let gateway_listener = bind("127.0.0.1:0").await?;
    let gateway_addr = local(&gateway_listener)?;
    let gateway_url = format!("http://{gateway_addr}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server::run(gateway_listener, gateway, async move {
        let _ = stopped.await;
    }));

    // 5. The page server.
    tokio::spawn(serve_page(page_listener, page(&gateway_url, &upstreams)));

    println!(
        "mail services: {} (mail-a), {} (mail-b), HTTPS",
        upstreams[0], upstreams[1]
    );
    println!("CA:            {}", ca_file.display());
    println!("gateway:       {gateway_url}/batch (routes /mail/ round-robin to both)");
    println!("page:          {}/", page_origins[0]);
    let outcome = if args.check {
        check(&gateway_url, &page_origins[0]).await
    } else {
        println!("Open the page in a browser; Ctrl-C stops.");
        tokio::signal::ctrl_c().await.map_err(|e| e.to_string())
    };
    let _ = stop.send(());
    let _ = serving.await;
    outcome
}

/// A CA's certificate (PEM), and a `localhost` certificate (DER) it signed with its key (PKCS#8 DER).
fn certificates() -> Result<(String, CertificateDer<'static>, PrivateKeyDer<'static>), String> {
    let fail = |e: rcgen::Error| e.to_string();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "batchgate https_front example CA",
    );
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().map_err(fail)?)
        .map_err(fail)?;
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).map_err(fail)?;
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let leaf = params.signed_by(&key, &ca).map_err(fail)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((ca.pem(), leaf.der().clone(), key))
}

/// Starts one HTTPS instance of the mail service on a free port of `localhost`; returns the port.
async fn https_instance(
    name: &str,
    acceptor: &TlsAcceptor,
    latency: Duration,
) -> Result<u16, String> {
    let options = DemoOptions {
        latency,
        name: Some(name.to_owned()),
        allow_origin: None,
        cache_control: None,
    };
    let listener = bind("127.0.0.1:0").await?;
    let port = local(&listener)?.port();
    tokio::spawn(demo::serve_tls(listener, acceptor.clone(), options.clone()));
    // The gateway sends parts to every address `localhost` resolves to; on many systems that includes ::1.
    let v6 = ("localhost", port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving localhost: {e}"))?
        .any(|a| a.is_ipv6());
    if v6 {
        match TcpListener::bind(("::1", port)).await {
            Ok(listener) => {
                tokio::spawn(demo::serve_tls(listener, acceptor.clone(), options));
            }
            Err(e) => eprintln!(
                "warning: localhost resolves to ::1 too, but port {port} is not free there ({e}): parts the \
                 gateway sends to [::1]:{port} will fail"
            ),
        }
    }
    Ok(port)
}

/// The page: loads the browser client from its own server, batches the mails through the gateway, and
/// shows which instance answered each.
fn page(gateway: &str, upstreams: &[String]) -> String {
    const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>batchgate in front of two HTTPS mail services</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 24px 32px; color: #1d2433; background: #f4f6fa; }
  h1 { font-size: 20px; margin: 0 0 6px; }
  p { color: #5b6375; margin: 0 0 14px; max-width: 60em; line-height: 1.45; }
  code { background: #e9edf3; border-radius: 4px; padding: 1px 5px; font-size: 0.92em; }
  table { border-collapse: collapse; background: #fff; border-radius: 10px; overflow: hidden;
          box-shadow: 0 1px 3px rgba(0,0,0,.06); min-width: 640px; }
  th, td { text-align: left; padding: 6px 14px; border-bottom: 1px solid #eef0f4; font-size: 14px; }
  th { font-size: 12px; text-transform: uppercase; letter-spacing: .05em; color: #6b7385; }
  .by { font-weight: 600; border-radius: 6px; padding: 2px 8px; font-size: 12.5px; }
  .mail-a { background: #dbeafe; color: #1d4ed8; }
  .mail-b { background: #fde6d9; color: #c2410c; }
  #summary { margin: 12px 0; font-weight: 600; }
  #error { color: #b42318; font-weight: 600; }
  button { font: inherit; font-weight: 600; background: #0f9d6e; color: #fff; border: 0; border-radius: 8px;
           padding: 7px 12px; cursor: pointer; margin-bottom: 14px; }
</style>
</head>
<body data-state="loading">
<h1>batchgate in front of two HTTPS mail services</h1>
<p>This page's origin is not the gateway's: it sends one <code>POST __GATEWAY__/batch</code> of __MAILS__ mails
(after the browser's CORS preflight, which the gateway's <code>[cors]</code> allows for this origin). The gateway
spreads the parts round-robin over <code>__UPSTREAMS__</code>, over HTTPS, trusting the example's CA.
Each embedded response says which instance served it (<code>X-Served-By</code>).</p>
<button id="again">Send another batch</button>
<div id="summary"></div>
<div id="error"></div>
<table><thead><tr><th>#</th><th>subject</th><th>from</th><th>status</th><th>served by</th></tr></thead>
<tbody id="parts"></tbody></table>
<script type="module">
import { batch } from '/batchgate.js';
const GATEWAY = '__GATEWAY__';
const ids = Array.from({ length: __MAILS__ }, (_, i) => String(i + 1));
async function load() {
  document.body.dataset.state = 'loading';
  const started = performance.now();
  const responses = await batch(`${GATEWAY}/batch`, ids.map((id) => ({ url: `/mail/v1/messages/${id}` })));
  const elapsed = performance.now() - started;
  const rows = [];
  const counts = {};
  for (const [i, response] of responses.entries()) {
    const by = response.headers.get('x-served-by') ?? '?';
    counts[by] = (counts[by] ?? 0) + 1;
    const mail = await response.json();
    const row = document.createElement('tr');
    for (const text of [ids[i], mail.subject, mail.from, String(response.status)]) {
      const cell = document.createElement('td');
      cell.textContent = text;
      row.appendChild(cell);
    }
    const cell = document.createElement('td');
    const badge = document.createElement('span');
    badge.className = `by ${by}`;
    badge.textContent = by;
    cell.appendChild(badge);
    row.appendChild(cell);
    rows.push(row);
  }
  document.getElementById('parts').replaceChildren(...rows);
  document.getElementById('summary').textContent = `${responses.length} mails in one batch, ${elapsed.toFixed(0)} ms: ` +
    Object.entries(counts).map(([by, n]) => `${n} from ${by}`).join(', ');
  document.body.dataset.state = 'done';
}
const fail = (e) => {
  document.getElementById('error').textContent = `${e.name}: ${e.message}`;
  document.body.dataset.state = 'error';
};
document.getElementById('again').addEventListener('click', () => load().catch(fail));
load().catch(fail);
</script>
</body>
</html>
"#;
    PAGE.replace("__GATEWAY__", gateway)
        .replace("__MAILS__", &MAILS.to_string())
        .replace("__UPSTREAMS__", &upstreams.join("</code> and <code>"))
}

/// Serves the page at `/` and the browser client at `/batchgate.js`; anything else is a 404.
async fn serve_page(listener: TcpListener, html: String) {
    let html = Bytes::from(html);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let html = html.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let (status, content_type, body) = match request.uri().path() {
                    "/" => (StatusCode::OK, "text/html; charset=utf-8", html.clone()),
                    "/batchgate.js" => (
                        StatusCode::OK,
                        "text/javascript; charset=utf-8",
                        Bytes::from_static(demo::BROWSER_CLIENT.as_bytes()),
                    ),
                    _ => (
                        StatusCode::NOT_FOUND,
                        "text/plain",
                        Bytes::from_static(b"not found\n"),
                    ),
                };
                let response = http::Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, content_type)
                    .body(Full::new(body));
                async move { response }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// What the page does, without a browser: the preflight, then one batch; both instances must answer.
async fn check(gateway: &str, page_origin: &str) -> Result<(), String> {
    // The preflight the browser sends before the page's POST.
    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let preflight = Request::builder()
        .method(Method::OPTIONS)
        .uri(format!("{gateway}/batch"))
        .header(http::header::ORIGIN, page_origin)
        .header(http::header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(http::header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let answer = http
        .request(preflight)
        .await
        .map_err(|e| format!("preflight: {e}"))?;
    let allowed = answer
        .headers()
        .get(http::header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .and_then(|v| v.to_str().ok());
    if answer.status() != StatusCode::NO_CONTENT || allowed != Some(page_origin) {
        return Err(format!(
            "the preflight from {page_origin} got {} with Access-Control-Allow-Origin {allowed:?}",
            answer.status()
        ));
    }
    println!("preflight:     204, Access-Control-Allow-Origin: {page_origin}");

    // The batch.
    let client = BatchClient::new(format!("{gateway}/batch")).map_err(|e| e.to_string())?;
    let mut batch = BatchBuilder::default();
    for id in 1..=MAILS {
        batch
            .get(&format!("m{id}"), &format!("/mail/v1/messages/{id}"))
            .map_err(|e| e.to_string())?;
    }
    let parts = client.send(batch).await.map_err(|e| e.to_string())?;
    if parts.len() as u64 != MAILS {
        return Err(format!("{MAILS} parts sent, {} answered", parts.len()));
    }
    let mut served_by: BTreeMap<String, usize> = BTreeMap::new();
    for (id, part) in (1..=MAILS).zip(&parts) {
        let expected = demo::message(id);
        if part.status != StatusCode::OK || part.body != expected.as_bytes() {
            return Err(format!(
                "mail {id}: {} {}",
                part.status,
                String::from_utf8_lossy(&part.body)
            ));
        }
        let by = part
            .headers
            .get(demo::SERVED_BY)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("mail {id}: no X-Served-By"))?;
        *served_by.entry(by.to_owned()).or_default() += 1;
    }
    println!(
        "batch:         {MAILS} parts, every one 200 with the right mail; served by {served_by:?}"
    );
    for name in INSTANCES {
        if !served_by.contains_key(name) {
            return Err(format!("{name} answered no part: {served_by:?}"));
        }
    }
    println!("check passed: both HTTPS instances answered through the gateway");
    Ok(())
}

async fn bind(addr: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("binding {addr}: {e}"))
}

fn local(listener: &TcpListener) -> Result<SocketAddr, String> {
    listener.local_addr().map_err(|e| e.to_string())
}

/// A directory of our own under the system's temp dir, removed when dropped.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> TempDir {
        let path =
            std::env::temp_dir().join(format!("batchgate-https-front-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&path);
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
