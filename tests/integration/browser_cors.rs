//! A real browser calls the gateway across origins: Debian's headless Chromium loads a page from one origin
//! whose script POSTs a `multipart/mixed` batch of three GETs to the gateway (another origin: the browser sends
//! a CORS preflight first), parses the multipart reply in JavaScript and renders each part. The DOM Chromium
//! dumps shows what the page could read. A page from an origin not in `cors.allow_origins` must see its
//! `fetch` fail.
//!
//! Each page talks to the gateway through a small recording TCP relay, so the test also sees exactly what the
//! gateway answered the browser (and that no batch was sent after a refused preflight).
//!
//! Needs `chromium` on PATH (`.ci/run` installs it); without it the test says so and passes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The page: one `fetch` of a three-part batch, a small multipart parser, each part rendered as an `<li>`.
fn page(gateway: &str) -> String {
    const SCRIPT: &str = r#"
const CRLF = "\r\n";
function parseMultipart(contentType, text) {
  const m = /boundary="?([^";]+)"?/i.exec(contentType);
  if (!m) throw new Error("no boundary in " + contentType);
  const delimiter = "--" + m[1];
  const parts = [];
  for (const section of text.split(delimiter).slice(1)) {
    if (section.startsWith("--")) break;
    const outerEnd = section.indexOf(CRLF + CRLF);
    const outer = section.slice(0, outerEnd);
    const inner = section.slice(outerEnd + 4);
    const statusLine = inner.slice(0, inner.indexOf(CRLF));
    const headEnd = inner.indexOf(CRLF + CRLF);
    const id = (/content-id:\s*(\S+)/i.exec(outer) || [])[1] || "";
    parts.push({
      id: id,
      status: parseInt(statusLine.split(" ")[1], 10),
      body: inner.slice(headEnd + 4).trim(),
    });
  }
  return parts;
}
async function run() {
  const ids = [1, 2, 3];
  let body = "";
  for (const id of ids) {
    body += "--b" + CRLF + "Content-Type: application/http" + CRLF + "Content-ID: <m" + id + ">" + CRLF + CRLF +
      "GET /mail/v1/messages/" + id + " HTTP/1.1" + CRLF + CRLF;
  }
  body += "--b--" + CRLF;
  try {
    const response = await fetch(GATEWAY + "/batch", {
      method: "POST",
      headers: { "Content-Type": "multipart/mixed; boundary=b" },
      body: body,
    });
    const parts = parseMultipart(response.headers.get("content-type"), await response.text());
    const list = document.getElementById("parts");
    for (const part of parts) {
      const item = document.createElement("li");
      item.className = "part";
      item.dataset.status = String(part.status);
      let subject = "";
      try { subject = JSON.parse(part.body).subject || ""; } catch (e) { subject = "(not JSON)"; }
      item.dataset.subject = subject;
      item.textContent = part.id + " " + part.status + " " + subject;
      list.appendChild(item);
    }
    const done = document.createElement("p");
    done.id = "done";
    done.textContent = "outer " + response.status + ", " + parts.length + " parts";
    document.body.appendChild(done);
  } catch (e) {
    const error = document.createElement("p");
    error.id = "error";
    error.textContent = e.name + ": " + e.message;
    document.body.appendChild(error);
  }
}
run();
"#;
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>batch</title></head>\n<body>\n\
         <ul id=\"parts\"></ul>\n<script>\nconst GATEWAY = \"{gateway}\";\n{SCRIPT}</script>\n</body></html>\n"
    )
}

/// Serves `html` at every path of `listener` (favicon requests included: they are harmless).
fn serve_page(listener: TcpListener, html: String) {
    let html = Bytes::from(html);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let html = html.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request| {
                    let mut response = Response::new(Full::new(html.clone()));
                    response
                        .headers_mut()
                        .insert("content-type", "text/html; charset=utf-8".parse().unwrap());
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// A TCP relay to `target` that records every byte each way.
#[derive(Clone, Default)]
struct Relay {
    to_gateway: Arc<Mutex<Vec<u8>>>,
    from_gateway: Arc<Mutex<Vec<u8>>>,
}

impl Relay {
    async fn start(target: SocketAddr) -> (SocketAddr, Relay) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let relay = Relay::default();
        let state = relay.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(target).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (up_read, up_write) = upstream.into_split();
                tokio::spawn(pipe(client_read, up_write, state.to_gateway.clone()));
                tokio::spawn(pipe(up_read, client_write, state.from_gateway.clone()));
            }
        });
        (addr, relay)
    }

    fn answered(&self) -> String {
        String::from_utf8_lossy(&self.from_gateway.lock().unwrap()).into_owned()
    }

    fn sent(&self) -> String {
        String::from_utf8_lossy(&self.to_gateway.lock().unwrap()).into_owned()
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    record: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                record.lock().unwrap().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// The `<li class="part">` elements of the dumped DOM: (status, subject) from their data attributes.
fn rendered_parts(dom: &str) -> Vec<(String, String)> {
    let attribute = |element: &str, name: &str| {
        let start = element.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        element[start..start + element[start..].find('"').unwrap()].to_owned()
    };
    dom.split("<li ")
        .skip(1)
        .map(|element| {
            let element = &element[..element.find('>').unwrap()];
            assert!(element.contains("class=\"part\""), "{element}");
            (
                attribute(element, "data-status"),
                attribute(element, "data-subject"),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_browser_page_from_an_allowed_origin_reads_the_batch_and_another_origin_cannot() {
    if !chromium_installed() {
        eprintln!("chromium not installed: browser test skipped; .ci/run installs it");
        return;
    }
    let mail = demo_upstream(Duration::ZERO).await;
    let allowed_page = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_page = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let allowed_origin = format!(
        "http://127.0.0.1:{}",
        allowed_page.local_addr().unwrap().port()
    );
    let other_origin = format!(
        "http://127.0.0.1:{}",
        other_page.local_addr().unwrap().port()
    );
    let gw = gateway(&format!(
        "[cors]\nallow_origins = [\"{allowed_origin}\"]\n{}",
        routes(&[("/mail/", mail)])
    ))
    .await;
    let (allowed_relay_addr, allowed_relay) = Relay::start(gw.addr).await;
    let (other_relay_addr, other_relay) = Relay::start(gw.addr).await;
    serve_page(allowed_page, page(&format!("http://{allowed_relay_addr}")));
    serve_page(other_page, page(&format!("http://{other_relay_addr}")));

    let (allowed_url, other_url) = (format!("{allowed_origin}/"), format!("{other_origin}/"));
    let (allowed_dom, other_dom) =
        tokio::join!(dump_dom(&allowed_url, 8000), dump_dom(&other_url, 8000));

    // The allowed page: three parts, each 200 with its message's subject, in order.
    assert!(
        allowed_dom.contains("id=\"done\">outer 200, 3 parts<"),
        "{allowed_dom}"
    );
    assert!(!allowed_dom.contains("id=\"error\""), "{allowed_dom}");
    let expected: Vec<(String, String)> = (1..=3)
        .map(|id| {
            let message: serde_json::Value =
                serde_json::from_str(&batchgate::demo::message(id)).unwrap();
            (
                "200".to_owned(),
                message["subject"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(rendered_parts(&allowed_dom), expected, "{allowed_dom}");
    let order: Vec<usize> = (1..=3)
        .map(|id| {
            allowed_dom
                .find(&format!("&lt;response-m{id}&gt; 200 "))
                .unwrap()
        })
        .collect();
    assert!(order.is_sorted(), "parts in request order: {allowed_dom}");
    let answered = allowed_relay.answered().to_ascii_lowercase();
    assert!(
        answered.contains(&format!("access-control-allow-origin: {allowed_origin}")),
        "{answered}"
    );
    let sent = allowed_relay.sent();
    assert!(
        sent.starts_with("OPTIONS /batch "),
        "a preflight first: {sent}"
    );
    assert!(sent.contains("POST /batch "), "{sent}");

    // The other page: the fetch failed, nothing rendered, no CORS header came back, no batch was sent.
    assert!(
        other_dom.contains("id=\"error\">TypeError: "),
        "{other_dom}"
    );
    assert_eq!(rendered_parts(&other_dom), Vec::new(), "{other_dom}");
    let answered = other_relay.answered();
    assert!(answered.starts_with("HTTP/1.1 403 "), "{answered}");
    assert!(
        !answered
            .lines()
            .any(|line| line.to_ascii_lowercase().starts_with("access-control-")),
        "no CORS header: {answered}"
    );
    let sent = other_relay.sent();
    assert!(sent.starts_with("OPTIONS /batch "), "{sent}");
    assert!(
        sent.contains(&format!("Origin: {other_origin}"))
            || sent.contains(&format!("origin: {other_origin}")),
        "{sent}"
    );
    assert!(!sent.contains("POST /batch"), "{sent}");
    gw.stop().await;
}
