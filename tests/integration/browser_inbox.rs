//! The inbox demo in a real browser: the real binary (`batchgate --demo`) serves the inbox page at `/`, and
//! headless Chromium loads it. The page lists the demo service's 100 unread mails, fetched through the
//! browser client's batcher in ONE `POST /batch`, draws the batch's waterfall, and, when its button is
//! clicked, fetches the same 100 mails with one plain `fetch` each to compare.
//!
//! Chromium is driven over the DevTools protocol (a minimal WebSocket client below) rather than with
//! `--dump-dom --virtual-time-budget`: under virtual time the page's clocks are not wall clocks, and a
//! streamed `fetch` body (the batch reply, read part by part) does not hold the virtual clock, so the budget
//! runs out before the reply is read. Over DevTools the test waits for the page to say it is done (a
//! MutationObserver in the page, no polling), reads the DOM, clicks the button as a mouse would, and takes
//! the screenshot with real timings in it.
//!
//! `BATCHGATE_SCREENSHOT=docs/inbox.png cargo test --release --test browser_inbox` also writes the
//! screenshot there, with the demo service at 50 ms per request (5 ms otherwise).
//!
//! Needs `chromium` on PATH (`.ci/run` installs it); without it the browser test says so and passes.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The real binary with `--demo`, on a free port.
struct Demo {
    addr: SocketAddr,
    _gateway: Binary,
}

impl Demo {
    async fn start(latency: &str) -> Demo {
        let mut gateway = Binary::spawn(
            &[
                "--demo",
                "--listen",
                "127.0.0.1:0",
                "--demo-latency",
                latency,
            ],
            &[("NO_COLOR", Some("1"))],
        );
        let (_, addr) = gateway.listening().await;
        Demo {
            addr,
            _gateway: gateway,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str, headers: &str) -> RawReply {
        get(self.addr, path, headers).await
    }

    /// The sum of a metric's samples in the gateway's `/metrics`.
    async fn metric(&self, name: &str) -> u64 {
        let text = self.get("/metrics", "").await;
        metric(&String::from_utf8_lossy(&text.body), name, &[])
    }
}

/// `GET path` on a connection of its own, with extra header lines (each ending in CRLF).
async fn get(addr: SocketAddr, path: &str, headers: &str) -> RawReply {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n");
    send_raw(addr, request.as_bytes()).await
}

fn body_text(reply: &RawReply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

#[tokio::test]
async fn only_the_demo_serves_the_inbox_page_and_the_browser_client() {
    let demo = Demo::start("0ms").await;

    let page = demo.get("/", "").await;
    assert_eq!(page.status, 200, "{}", body_text(&page));
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let html = body_text(&page);
    assert!(
        html.contains("import { createBatcher } from '/batchgate.js';"),
        "{html}"
    );
    assert!(!html.contains("__DEMO_SETTINGS__"), "settings filled in");

    let client = demo.get("/batchgate.js", "").await;
    assert_eq!(client.status, 200);
    assert_eq!(
        client.headers["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(
        body_text(&client),
        include_str!("../../clients/js/batchgate.js")
    );

    // The page's one-request-per-mail comparison goes straight to the demo service, from the gateway's
    // origin: the service lets any page read its answers.
    let settings = html
        .split("id=\"demo-settings\">")
        .nth(1)
        .and_then(|rest| rest.split("</script>").next())
        .unwrap();
    let settings: Value = serde_json::from_str(settings).unwrap();
    assert_eq!(settings["latencyMs"], 0.0);
    let mail: SocketAddr = settings["mailOrigin"]
        .as_str()
        .unwrap()
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap();
    let origin = format!("Origin: {}\r\n", demo.url(""));
    let message = get(mail, "/mail/v1/messages/7", &origin).await;
    assert_eq!(message.status, 200);
    assert_eq!(message.headers["access-control-allow-origin"], "*");
    assert_eq!(
        body_text(&message),
        batchgate::demo::message(7),
        "the same mail as through the gateway"
    );

    // Other paths and methods are still the gateway's 404.
    for path in ["/index.html", "/batchgate.js/", "/clients/js/batchgate.js"] {
        let reply = demo.get(path, "").await;
        assert_eq!(reply.status, 404, "{path}");
        assert_eq!(reply.headers["content-type"], "application/json", "{path}");
    }
    let post = send_raw(
        demo.addr,
        b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(post.status, 404);

    // Without --demo, / is a 404 like any path that is not an endpoint.
    let mail = demo_upstream(Duration::ZERO).await;
    let gw = gateway(&routes(&[("/mail/", mail)])).await;
    for path in ["/", "/batchgate.js"] {
        let reply = get(gw.addr, path, "").await;
        assert_eq!(reply.status, 404, "{path}");
        assert_eq!(reply.headers["content-type"], "application/json");
        let error: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(error["error"]["code"], 404, "{path}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn the_inbox_page_loads_100_mails_in_one_batch_then_compares_with_one_request_per_mail() {
    if !chromium_installed() {
        eprintln!("chromium not installed: browser test skipped; .ci/run installs it");
        return;
    }
    let screenshot_to = std::env::var_os("BATCHGATE_SCREENSHOT");
    let demo = Demo::start(if screenshot_to.is_some() {
        "50ms"
    } else {
        "5ms"
    })
    .await;
    let browser = Chromium::launch().await;
    let mut tab = browser.new_tab().await;
    within(120, "the inbox page", async {
        tab.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
        tab.call("Page.enable", json!({})).await;
        tab.call("Page.navigate", json!({ "url": demo.url("/") }))
            .await;
        tab.event("Page.loadEventFired").await;

        // 1. The batch: 100 mails listed, from one POST /batch of 100 parts.
        let state = tab.evaluate(&until_state(&["done", "error"])).await;
        let dom = tab.outer_html().await;
        assert_eq!(state, "done", "{}", text_of(&dom, "error"));
        let mails = elements(&dom, "<li class=\"mail\"");
        assert_eq!(mails.len(), 100, "{dom}");
        for (i, mail) in mails.iter().enumerate() {
            let id = i as u64 + 1;
            assert!(mail.contains(&format!("data-id=\"{id}\"")), "{mail}");
            let expected: Value = serde_json::from_str(&batchgate::demo::message(id)).unwrap();
            for field in ["subject", "from"] {
                let value = expected[field].as_str().unwrap();
                assert!(
                    mail.contains(&format!(">{value}<")),
                    "{field} of {id}: {mail}"
                );
            }
        }
        assert_eq!(
            text_of(&dom, "batches-sent"),
            "1",
            "one batch for the mails"
        );
        assert!(
            dom.contains("id=\"batches-sent\" data-parts=\"100\""),
            "{dom}"
        );
        assert_eq!(
            text_of(&dom, "posts-total"),
            "2",
            "and one for the unread list"
        );
        let batch_ms: f64 = text_of(&dom, "batch-time").parse().unwrap();
        assert!(batch_ms > 0.0, "{batch_ms}");
        assert_eq!(bars(&dom, "waterfall"), 100, "{dom}");
        assert_eq!(bars(&dom, "waterfall-plain"), 0);
        // What the gateway saw: two batches, 1 + 100 parts.
        assert_eq!(demo.metric("batchgate_batches_served_total").await, 2);
        assert_eq!(demo.metric("batchgate_parts_total").await, 101);

        // 2. A mouse click on the button: the same 100 mails, one plain fetch each, straight to the service.
        let button = tab
            .evaluate(
                "(() => { const r = document.getElementById('compare').getBoundingClientRect(); \
                 return { x: r.x + r.width / 2, y: r.y + r.height / 2 }; })()",
            )
            .await;
        for kind in ["mousePressed", "mouseReleased"] {
            let event = json!({ "type": kind, "x": button["x"], "y": button["y"],
                                "button": "left", "clickCount": 1 });
            tab.call("Input.dispatchMouseEvent", event).await;
        }
        let state = tab.evaluate(&until_state(&["compared", "error"])).await;
        let dom = tab.outer_html().await;
        assert_eq!(state, "compared", "{}", text_of(&dom, "error"));
        assert!(
            dom.contains("data-count=\"100\""),
            "100 plain fetches: {dom}"
        );
        let plain_ms: f64 = text_of(&dom, "plain-time").parse().unwrap();
        assert!(plain_ms > 0.0, "{plain_ms}");
        assert!(text_of(&dom, "ratio").ends_with('×'), "{dom}");
        assert_eq!(bars(&dom, "waterfall-plain"), 100, "{dom}");
        assert_eq!(bars(&dom, "waterfall"), 100, "redrawn on the common scale");
        assert_eq!(
            text_of(&dom, "batches-sent"),
            "1",
            "no batch for the comparison"
        );
        assert_eq!(demo.metric("batchgate_batches_served_total").await, 2);
        eprintln!("inbox page: one batch {batch_ms} ms, one request per mail {plain_ms} ms");

        // 3. The screenshot, as the README shows it.
        let shot = tab
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64_decode(shot["data"].as_str().unwrap());
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
        let size = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
        assert_eq!((size(16), size(20)), (1280, 1000), "IHDR width and height");
        let dir = TempDir::new("inbox-screenshot");
        std::fs::write(dir.join("inbox.png"), &png).unwrap();
        if let Some(path) = &screenshot_to {
            std::fs::write(path, &png).unwrap();
            eprintln!("screenshot written to {}", path.to_string_lossy());
        }
    })
    .await;
}

/// An expression that resolves to `document.body.dataset.state` once it is one of `states`.
fn until_state(states: &[&str]) -> String {
    format!(
        "new Promise((resolve) => {{
           const states = {states:?};
           const settled = () => states.includes(document.body.dataset.state);
           if (settled()) return resolve(document.body.dataset.state);
           new MutationObserver((_, observer) => {{
             if (settled()) {{ observer.disconnect(); resolve(document.body.dataset.state); }}
           }}).observe(document.body, {{ attributes: true }});
         }})"
    )
}

/// The text content of the element with this id (no markup inside it).
fn text_of(dom: &str, id: &str) -> String {
    let Some(start) = dom.find(&format!(" id=\"{id}\"")) else {
        return format!("(no #{id})");
    };
    let rest = &dom[start..];
    let rest = &rest[rest.find('>').unwrap() + 1..];
    rest[..rest.find('<').unwrap()].to_owned()
}

/// The start tags and contents of each element opening with `open` (up to the next such element).
fn elements<'a>(dom: &'a str, open: &str) -> Vec<&'a str> {
    dom.split(open).skip(1).collect()
}

/// The `<rect class="bar">`s in the SVG with this id.
fn bars(dom: &str, id: &str) -> usize {
    let start = dom.find(&format!("<svg id=\"{id}\"")).unwrap();
    let svg = &dom[start..];
    svg[..svg.find("</svg>").unwrap()]
        .matches("<rect class=\"bar\"")
        .count()
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0);
    for byte in text.bytes().filter(|b| *b != b'=') {
        let value = ALPHABET.iter().position(|a| *a == byte).unwrap() as u32;
        bits = bits << 6 | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}

/// Headless Chromium with its DevTools endpoint on a free port.
struct Chromium {
    child: Child,
    /// `127.0.0.1:port` of the DevTools HTTP and WebSocket endpoint.
    devtools: String,
    _profile: TempDir,
}

impl Chromium {
    async fn launch() -> Chromium {
        let profile = TempDir::new("chromium-devtools");
        let mut child = Command::new("chromium")
            .args(HEADLESS_CHROMIUM)
            .args([
                &format!("--user-data-dir={}", profile.path.display()),
                "--remote-debugging-port=0",
                "--window-size=1280,1000",
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let devtools = within(60, "chromium's DevTools address", async {
            loop {
                let Some(line) = log.next_line().await.unwrap() else {
                    panic!("chromium exited: {}", seen.join("\n"));
                };
                if let Some(rest) = line.split("DevTools listening on ws://").nth(1) {
                    break rest.split('/').next().unwrap().to_owned();
                }
                seen.push(line);
            }
        })
        .await;
        tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
        Chromium {
            child,
            devtools,
            _profile: profile,
        }
    }

    /// A new tab, and a DevTools connection to it.
    async fn new_tab(&self) -> DevTools {
        let addr: SocketAddr = self.devtools.parse().unwrap();
        let request = format!(
            "PUT /json/new?about:blank HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let reply = send_raw(addr, request.as_bytes()).await;
        assert_eq!(reply.status, 200, "{}", body_text(&reply));
        let target: Value = serde_json::from_slice(&reply.body).unwrap();
        let url = target["webSocketDebuggerUrl"].as_str().unwrap();
        DevTools {
            socket: WebSocket::connect(url).await,
            next_id: 0,
            events: Vec::new(),
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// One DevTools protocol session: commands and their results, events kept until asked for.
struct DevTools {
    socket: WebSocket,
    next_id: u64,
    events: Vec<Value>,
}

impl DevTools {
    /// Sends a command and returns its result (fails the test on a protocol error).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({ "id": id, "method": method, "params": params });
        self.socket.send(&command.to_string()).await;
        loop {
            let message = self.receive().await;
            if message["id"] == id {
                if let Some(error) = message.get("error") {
                    panic!("{method}: {error}");
                }
                return message["result"].clone();
            }
            if message.get("method").is_some() {
                self.events.push(message);
            }
        }
    }

    /// The next event named `method` (one that came already, or the next to come).
    async fn event(&mut self, method: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["method"] == method) {
            return self.events.remove(i);
        }
        loop {
            let message = self.receive().await;
            if message["method"] == method {
                return message;
            }
            if message.get("method").is_some() {
                self.events.push(message);
            }
        }
    }

    /// Evaluates `expression` in the page, awaiting it if it is a promise; its value as JSON.
    async fn evaluate(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    async fn outer_html(&mut self) -> String {
        self.evaluate("document.documentElement.outerHTML")
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn receive(&mut self) -> Value {
        serde_json::from_str(&self.socket.receive().await).unwrap()
    }
}

/// A WebSocket client (RFC 6455), as much of it as DevTools needs: masked text frames out, text frames in
/// (unmasked, maybe fragmented).
struct WebSocket {
    stream: BufReader<TcpStream>,
}

impl WebSocket {
    async fn connect(url: &str) -> WebSocket {
        let rest = url.strip_prefix("ws://").unwrap();
        let (authority, path) = rest.split_at(rest.find('/').unwrap());
        let mut stream = BufReader::new(TcpStream::connect(authority).await.unwrap());
        let handshake = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .get_mut()
            .write_all(handshake.as_bytes())
            .await
            .unwrap();
        let mut status = String::new();
        stream.read_line(&mut status).await.unwrap();
        assert!(status.starts_with("HTTP/1.1 101 "), "{status}");
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
        }
        WebSocket { stream }
    }

    async fn send(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mut frame = vec![0x81];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend((n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend((n as u64).to_be_bytes());
            }
        }
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        frame.extend(mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.get_mut().write_all(&frame).await.unwrap();
    }

    async fn receive(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.stream.read_exact(&mut head).await.unwrap();
            let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
            let length = match head[1] & 0x7f {
                126 => u64::from(self.stream.read_u16().await.unwrap()),
                127 => self.stream.read_u64().await.unwrap(),
                n => u64::from(n),
            };
            let mask = if head[1] & 0x80 != 0 {
                let mut mask = [0u8; 4];
                self.stream.read_exact(&mut mask).await.unwrap();
                Some(mask)
            } else {
                None
            };
            let mut payload = vec![0u8; usize::try_from(length).unwrap()];
            self.stream.read_exact(&mut payload).await.unwrap();
            if let Some(mask) = mask {
                for (i, byte) in payload.iter_mut().enumerate() {
                    *byte ^= mask[i % 4];
                }
            }
            match opcode {
                // Text, binary, continuation.
                0..=2 => {
                    message.extend(payload);
                    if fin {
                        return String::from_utf8(message).unwrap();
                    }
                }
                8 => panic!("DevTools closed the connection"),
                // Ping and pong between fragments: DevTools sends none; skipped.
                _ => {}
            }
        }
    }
}
