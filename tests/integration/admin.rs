//! The admin listener (`[admin]`) over real sockets: `/admin/stats` after a known workload, the dashboard page
//! (self-contained), `POST /admin/reload` (a good file, bad ones, no file, another origin), 404s and 405s, its
//! bounds (bodies, silent and idle connections, the connection cap), and the real binary: the admin listener
//! started from `[admin]`, and `log_format` (JSON lines; no colour codes when stderr is not a terminal).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use batchgate::server::admin::{Admin, AdminLimits, DASHBOARD_HTML};
use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The JSON error of an admin answer: `{"error":{"code":..,"message":..}}`, its code the status.
fn admin_error(reply: &Reply) -> String {
    assert_eq!(reply.headers["content-type"], "application/json");
    reply.error_message()
}

/// An upstream that answers 404 for `/svc/missing`, else 200 with the path.
async fn svc_upstream() -> Upstream {
    upstream(|seen| async move {
        if seen.uri.path() == "/svc/missing" {
            text(StatusCode::NOT_FOUND, "no such thing")
        } else {
            text(StatusCode::OK, seen.uri.path().to_owned())
        }
    })
    .await
}

const MULTIPART: &str = "multipart/mixed; boundary=b";

/// Two batches of 10 parts to one route, one part answered 404 by the upstream: the route's figures count
/// exactly 20 parts and no errors (a 404 is the upstream's answer, not a failure), and the newest batch's
/// timeline has its 10 parts, each with its marks in order and the status the client got.
#[tokio::test]
async fn stats_after_a_known_workload() {
    let up = svc_upstream().await;
    let (gw, live) = live_gateway(&routes(&[("/svc/", up.addr)])).await;
    let admin = start_admin(Admin::new(live)).await;

    let first: Vec<String> = (0..10).map(|i| format!("/svc/a{i}")).collect();
    let mut second: Vec<String> = (0..10).map(|i| format!("/svc/b{i}")).collect();
    second[3] = "/svc/missing".to_owned();
    gw.post(MULTIPART, get_batch("b", &first)).await.parts();
    let parts = gw.post(MULTIPART, get_batch("b", &second)).await.parts();
    let statuses = statuses(&parts);
    assert_eq!(statuses[3], 404);
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 9);

    let stats = admin.stats().await;
    let routes = stats["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 1, "{stats}");
    let route = &routes[0];
    assert_eq!(route["route"], "/svc/");
    assert_eq!(route["requests"], 20, "{route}");
    assert_eq!(route["error_rate"], 0.0, "{route}");
    assert!(route["p50_ms"].as_f64().unwrap() > 0.0, "{route}");
    assert!(route["p99_ms"].as_f64().unwrap() >= route["p50_ms"].as_f64().unwrap());
    assert_eq!(route["recent"]["parts"], 20, "{route}");
    assert!(
        route["bottleneck"].is_null(),
        "too few parts to tell: {route}"
    );
    let series = route["series"].as_array().unwrap();
    assert_eq!(series.len(), 120);
    let sum = |key: &str| series.iter().map(|p| p[key].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("parts"), 20);
    assert_eq!(sum("errors"), 0);
    assert_eq!(series.last().unwrap()["ago"], 0, "oldest first");
    assert_eq!(
        stats["tuning"].as_array().unwrap().len(),
        0,
        "a fixed limit"
    );

    let batches = stats["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 2, "{stats}");
    assert!(
        batches[0]["id"].as_u64() > batches[1]["id"].as_u64(),
        "newest first"
    );
    for batch in batches {
        assert_eq!(batch["status"], 200, "{batch}");
        assert_eq!(batch["peer"], "127.0.0.1");
        assert!(batch["arrived_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
    }
    let newest = &batches[0];
    let duration = newest["duration_ms"].as_f64().unwrap();
    let timeline = newest["parts"].as_array().unwrap();
    assert_eq!(timeline.len(), 10, "{newest}");
    for (i, part) in timeline.iter().enumerate() {
        assert_eq!(part["index"], i);
        assert_eq!(part["route"], "/svc/");
        assert_eq!(part["method"], "GET");
        assert_eq!(part["status"], statuses[i], "{part}");
        let marks: Vec<f64> = ["queued", "sent", "first_byte", "done", "written"]
            .iter()
            .map(|m| {
                part[m]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{m} not set: {part}"))
            })
            .collect();
        assert!(marks.is_sorted(), "marks in order: {part}");
        assert!(marks[4] <= duration, "written before the end: {part}");
    }

    // The admin /metrics is the main listener's.
    let on_admin = admin.get("/metrics").await;
    assert_eq!(on_admin.status, StatusCode::OK);
    assert!(
        on_admin.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let on_main = gw.request(Method::GET, "/metrics", &[], Bytes::new()).await;
    for reply in [&on_admin, &on_main] {
        let text = std::str::from_utf8(&reply.body).unwrap();
        assert_eq!(
            metric(text, "batchgate_parts_total", &[("route", "/svc/")]),
            20,
            "{text}"
        );
        assert_eq!(metric(text, "batchgate_batches_served_total", &[]), 2);
    }
    admin.stop().await;
    gw.stop().await;
}

/// The dashboard: one HTML page, inline script and styles, nothing loaded from anywhere (a CSP says so too),
/// with the elements it fills in.
#[tokio::test]
async fn the_dashboard_is_one_self_contained_page() {
    let (gw, live) = live_gateway("").await;
    let admin = start_admin(Admin::new(live)).await;
    let reply = admin.get("/admin/dashboard").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(reply.headers["cache-control"], "no-store");
    let csp = reply.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none';"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let html = std::str::from_utf8(&reply.body).unwrap();
    assert_eq!(html, DASHBOARD_HTML);
    let on_disk = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/server/dashboard.html"
    ))
    .unwrap();
    assert_eq!(html, on_disk);
    assert!(html.starts_with("<!doctype html>"));
    for id in [
        "id=\"routes\"",
        "id=\"bottlenecks\"",
        "id=\"tuning\"",
        "id=\"batch-select\"",
        "id=\"waterfall\"",
        "id=\"legend\"",
        "fetch(STATS_URL",
        "const STATS_URL = \"/admin/stats\"",
    ] {
        assert!(html.contains(id), "{id}");
    }

    // Every reference to something to load is local: no other host, no protocol-relative URL.
    let lower = html.to_ascii_lowercase();
    for attribute in ["src=", "href=", "url(", "@import", "action=", "srcset="] {
        for (at, _) in lower.match_indices(attribute) {
            let value = lower[at + attribute.len()..]
                .trim_start_matches(['"', '\'', ' '])
                .to_owned();
            assert!(
                value.starts_with("data:")
                    || value.starts_with('#')
                    || (value.starts_with('/') && !value.starts_with("//")),
                "{attribute} pointing outside: {}",
                &html[at..(at + 60).min(html.len())]
            );
        }
    }
    for scheme in ["http://", "https://", "ws://", "wss://", "//cdn", "//fonts"] {
        let outside: Vec<&str> = lower
            .match_indices(scheme)
            .map(|(at, _)| &html[at..(at + 40).min(html.len())])
            .filter(|s| !s.starts_with("http://www.w3.org/2000/svg\""))
            .collect();
        assert!(outside.is_empty(), "{scheme}: {outside:?}");
    }
    for tag in ["<script src", "<link rel=\"stylesheet\"", "<iframe", "<img"] {
        assert!(!lower.contains(tag), "{tag}");
    }
    admin.stop().await;
    gw.stop().await;
}

fn svc_file(upstream: SocketAddr, extra: &str) -> String {
    format!("{extra}\n[[routes]]\nprefix = \"/svc/\"\nupstream = \"http://{upstream}\"\n")
}

/// `POST /admin/reload` re-reads the config file (with the command line's overrides applied): 200 saying what
/// it did, and the next batch goes to the new upstream. A file that does not parse or validate is 422, one
/// that turns TLS on is 409, and the previous config stays; a POST from another origin is 403 and reloads
/// nothing.
#[tokio::test]
async fn reload_through_the_admin_listener() {
    let first = echo_upstream(Duration::ZERO).await;
    let second = echo_upstream(Duration::ZERO).await;
    let dir = TempDir::new("admin-reload");
    let path = dir.join("gateway.toml");
    std::fs::write(&path, svc_file(first.addr, "")).unwrap();
    let (gw, live) = live_gateway(&std::fs::read_to_string(&path).unwrap()).await;
    // The overrides: what --listen or --demo would change in the file, here a limit that shows.
    let admin = start_admin(
        Admin::new(live.clone()).config_file(&path, |config| config.limits.max_parts = 5),
    )
    .await;
    let batch = |n: usize| {
        let targets: Vec<String> = (0..n).map(|i| format!("/svc/{i}")).collect();
        gw.post(MULTIPART, get_batch("b", &targets))
    };
    let reload = |origin: Option<String>| {
        let admin = &admin;
        async move {
            let headers: Vec<(&str, &str)> =
                origin.iter().map(|o| ("origin", o.as_str())).collect();
            admin
                .request(Method::POST, "/admin/reload", &headers, Bytes::new())
                .await
        }
    };

    assert_eq!(batch(6).await.parts().len(), 6);
    assert_eq!(first.seen().len(), 6);

    std::fs::write(&path, svc_file(second.addr, "")).unwrap();
    let reply = reload(None).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["status"], "reloaded");
    assert_eq!(body["path"], path.to_str().unwrap());
    assert_eq!(body["routes"], serde_json::json!(["/svc/"]));
    assert_eq!(body["needs_restart"], serde_json::json!([]));
    assert_eq!(batch(5).await.parts().len(), 5);
    assert_eq!(second.seen().len(), 5);
    assert_eq!(first.seen().len(), 6);
    let refused = batch(6).await;
    assert_eq!(
        refused.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "the override"
    );

    // Not TOML; TOML that does not validate; TLS turned on: refused, the second upstream still serves.
    for (text, status, says) in [
        ("[[routes]\n".to_owned(), 422, path.to_str().unwrap()),
        (
            "[[routes]]\nprefix = \"/svc/\"\nupstream = \"ftp://127.0.0.1:21\"\n".to_owned(),
            422,
            "routes[0]",
        ),
        (
            svc_file(
                first.addr,
                "[tls]\ncert = \"missing.pem\"\nkey = \"missing.key\"",
            ),
            409,
            "[tls] cannot be turned on",
        ),
    ] {
        std::fs::write(&path, &text).unwrap();
        let reply = reload(None).await;
        assert_eq!(reply.status.as_u16(), status, "{text}");
        let message = admin_error(&reply);
        assert!(
            message.contains("still serving the previous config"),
            "{message}"
        );
        assert!(message.contains(says), "{message}");
        assert_eq!(batch(1).await.parts()[0].body, "/svc/0");
        assert_eq!(first.seen().len(), 6, "{text}");
    }

    // From a page on another origin: refused before reading anything. From the dashboard's own: reloaded.
    std::fs::write(&path, svc_file(first.addr, "listen = \"127.0.0.1:1\"")).unwrap();
    let reply = reload(Some("http://evil.example".into())).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(admin_error(&reply).contains("another origin"));
    batch(1).await.parts();
    assert_eq!(first.seen().len(), 6);
    let reply = reload(Some(format!("http://{}", admin.addr))).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    let notes = body["needs_restart"].as_array().unwrap();
    assert_eq!(notes.len(), 1, "{body}");
    assert!(
        notes[0]
            .as_str()
            .unwrap()
            .starts_with("listen changed to 127.0.0.1:1"),
        "{body}"
    );
    batch(1).await.parts();
    assert_eq!(first.seen().len(), 7);

    // Only POST.
    let reply = admin.get("/admin/reload").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers["allow"], "POST");
    admin_error(&reply);
    admin.stop().await;
    gw.stop().await;
}

/// Without a config file (`--demo` alone) there is nothing to reload: 404, and the gateway is unchanged.
#[tokio::test]
async fn reload_without_a_config_file_is_404() {
    let (gw, live) = live_gateway("").await;
    let before = live.gateway();
    let admin = start_admin(Admin::new(live.clone())).await;
    let reply = admin
        .request(Method::POST, "/admin/reload", &[], Bytes::new())
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(admin_error(&reply).contains("without --config"));
    assert!(Arc::ptr_eq(&before, &live.gateway()));
    admin.stop().await;
    gw.stop().await;
}

/// What the admin listener does not serve: 404 JSON for any other path (the batch endpoint included), 405
/// with `Allow` for another method on its paths. `/healthz` answers; `HEAD` works where `GET` does.
#[tokio::test]
async fn unknown_paths_are_404_json_and_other_methods_405() {
    let (gw, live) = live_gateway("").await;
    let admin = start_admin(Admin::new(live)).await;
    for path in [
        "/",
        "/admin",
        "/admin/",
        "/admin/stats/",
        "/admin/statsx",
        "/batch",
        "/readyz",
        "/metrics/x",
        "/admin/dashboard.html",
    ] {
        let reply = admin.get(path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        let message = admin_error(&reply);
        assert!(message.contains(path), "{message}");
        assert!(message.contains("GET /admin/dashboard"), "{message}");
    }
    let reply = admin
        .request(
            Method::POST,
            "/batch",
            &[("content-type", MULTIPART)],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    for path in ["/admin/stats", "/admin/dashboard", "/metrics", "/healthz"] {
        for method in [Method::POST, Method::PUT, Method::DELETE] {
            let reply = admin.request(method.clone(), path, &[], Bytes::new()).await;
            assert_eq!(
                reply.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            assert_eq!(reply.headers["allow"], "GET, HEAD");
            admin_error(&reply);
        }
        let reply = admin.request(Method::HEAD, path, &[], Bytes::new()).await;
        assert_eq!(reply.status, StatusCode::OK, "HEAD {path}");
        assert!(reply.body.is_empty());
    }
    let reply = admin.get("/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(&reply.body[..], b"{\"status\":\"ok\"}");
    admin.stop().await;
    gw.stop().await;
}

/// Request bodies: up to 1 KiB is read (and ignored); more is 413, whether announced by Content-Length or
/// arriving chunked, and the connection is closed.
#[tokio::test]
async fn request_bodies_over_1_kib_are_refused() {
    let (gw, live) = live_gateway("").await;
    let admin = start_admin(Admin::new(live)).await;
    let reply = admin
        .request(Method::GET, "/healthz", &[], Bytes::from(vec![b'x'; 1024]))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    // Refused on its Content-Length alone (nothing of the body is sent here, nothing is waited for).
    let reply = send_raw(
        admin.addr,
        b"POST /admin/reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1025\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.headers["connection"], "close");
    assert!(admin_error(&reply.reply()).contains("1024 bytes"));

    // Chunked: refused once more than 1 KiB has come (the body's end never does).
    let mut chunked =
        b"POST /admin/reload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(b"200\r\n");
        chunked.extend_from_slice(&[b'y'; 0x200]);
        chunked.extend_from_slice(b"\r\n");
    }
    let reply = send_raw(admin.addr, &chunked).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.headers["connection"], "close");
    admin.stop().await;
    gw.stop().await;
}

/// A connection that sends no request head within `header_read_timeout` is closed, from its start and
/// between requests alike.
#[tokio::test(start_paused = true)]
async fn silent_and_idle_connections_are_closed() {
    let (gw, live) = live_gateway("").await;
    let timeout = Duration::from_millis(300);
    let admin = start_admin(Admin::new(live).limits(AdminLimits {
        header_read_timeout: timeout,
        ..AdminLimits::default()
    }))
    .await;
    let closed = |mut stream: TcpStream| async move {
        let started = tokio::time::Instant::now();
        let mut rest = Vec::new();
        within(10, "the connection to close", stream.read_to_end(&mut rest))
            .await
            .unwrap();
        (started.elapsed(), rest)
    };
    let silent = TcpStream::connect(admin.addr).await.unwrap();
    let (waited, rest) = closed(silent).await;
    assert!(
        rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"),
        "{rest:?}"
    );
    at_limit("the silent connection closed", waited, timeout);

    let mut idle = TcpStream::connect(admin.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let reply = within(10, "/healthz", read_response(&mut idle)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let (waited, rest) = closed(idle).await;
    at_limit("the idle connection closed", waited, timeout);
    assert!(
        rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"),
        "{rest:?}"
    );
    admin.stop().await;
    gw.stop().await;
}

/// Past `max_connections`, a new connection is answered 503 and closed at once; when one closes, the next
/// gets in.
#[tokio::test]
async fn connections_past_the_cap_get_503() {
    let (gw, live) = live_gateway("").await;
    let admin = start_admin(Admin::new(live).limits(AdminLimits {
        max_connections: 2,
        ..AdminLimits::default()
    }))
    .await;
    let one = TcpStream::connect(admin.addr).await.unwrap();
    let mut two = TcpStream::connect(admin.addr).await.unwrap();
    let mut three = TcpStream::connect(admin.addr).await.unwrap();
    let busy = within(10, "the 503", read_response(&mut three)).await;
    assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(busy.headers["retry-after"], "1");
    assert!(busy.reply().error_message().contains("connections busy"));
    let mut rest = Vec::new();
    three.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    // The two in are served as usual.
    two.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut two).await.status, StatusCode::OK);

    drop(one);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut next = TcpStream::connect(admin.addr).await.unwrap();
        next.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let reply = within(10, "an answer", read_response(&mut next)).await;
        if reply.status == StatusCode::OK {
            break;
        }
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed connection's slot never came free"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    admin.stop().await;
    gw.stop().await;
}

/// The real binary with `log_format = "json"` and `[admin]`: every stderr line is one JSON object (no colour
/// codes), the listening messages among them; the admin listener serves the stats and reloads the `--config`
/// file with the command line's `--listen` still applied (so nothing "needs a restart").
#[tokio::test]
async fn the_binary_logs_json_and_serves_admin() {
    let up = echo_upstream(Duration::ZERO).await;
    let dir = TempDir::new("admin-binary");
    let file = svc_file(
        up.addr,
        "log_format = \"json\"\naccess_log = \"parts\"\nlisten = \"127.0.0.1:9\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"",
    );
    let mut gw = binary_on(
        &dir,
        &file,
        &[
            ("BATCHGATE_LOG", Some("batchgate=info")),
            ("NO_COLOR", None),
        ],
    );
    let json = |line: &str| -> serde_json::Value {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"))
    };
    // A route's upstreams are a JSON array, not a string holding one.
    let route = json(&gw.log.wait_for("\"message\":\"route\"").await);
    assert_eq!(
        route["upstreams"],
        serde_json::json!([format!("http://{}", up.addr)]),
        "{route}"
    );
    let listening = json(&gw.log.wait_for("listening on http://").await);
    assert_eq!(listening["level"], "INFO");
    assert!(listening["timestamp"].is_string(), "{listening}");
    let message = listening["message"].as_str().unwrap();
    let (_, main) = listening_on(message).unwrap();
    let admin_line = json(&gw.log.wait_for("admin endpoints on http://").await);
    let admin: SocketAddr = admin_line["addr"].as_str().unwrap().parse().unwrap();
    assert_ne!(admin, main);
    let admin_url = |path: &str| format!("http://{admin}{path}");

    let batch = format!(
        "POST /batch HTTP/1.1\r\nHost: gw\r\nContent-Type: {MULTIPART}\r\nContent-Length: {}\r\n\r\n{}",
        get_batch("b", &["/svc/1".to_owned()]).len(),
        get_batch("b", &["/svc/1".to_owned()])
    );
    assert_eq!(
        send_raw(main, batch.as_bytes()).await.reply().parts()[0].body,
        "/svc/1"
    );
    // `access_log = "parts"`: a line for the part, then the batch's.
    let part = json(&gw.log.wait_for("\"message\":\"part\"").await);
    assert_eq!(part["target"], "batchgate::access", "{part}");
    assert_eq!(part["level"], "INFO");
    assert_eq!(part["index"], 0);
    assert_eq!(part["method"], "GET");
    assert_eq!(part["path"], "/svc/1");
    assert_eq!(part["route"], "/svc/");
    assert_eq!(part["upstream"], up.addr.to_string());
    assert_eq!(part["status"], 200);
    assert!(part["duration_ms"].as_f64().unwrap() > 0.0, "{part}");
    json(&gw.log.wait_for("\"message\":\"batch\"").await);
    // With [admin], the main listener keeps its metrics to itself.
    let metrics = http_request(
        &format!("http://{main}/metrics"),
        Method::GET,
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(metrics.status, StatusCode::NOT_FOUND);
    // A request naming another host is refused, and the refusal logged.
    let evil = http_request(
        &admin_url("/admin/stats"),
        Method::GET,
        &[("host", "evil.example")],
        Bytes::new(),
    )
    .await;
    assert_eq!(evil.status, StatusCode::MISDIRECTED_REQUEST);
    let refused = json(&gw.log.wait_for("admin: request refused").await);
    assert_eq!(refused["level"], "WARN");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("evil.example"),
        "{refused}"
    );
    let stats = http_request(&admin_url("/admin/stats"), Method::GET, &[], Bytes::new()).await;
    assert_eq!(stats.status, StatusCode::OK);
    let stats: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    assert_eq!(stats["routes"][0]["route"], "/svc/");
    assert_eq!(stats["routes"][0]["requests"], 1);
    let dashboard = http_request(
        &admin_url("/admin/dashboard"),
        Method::GET,
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(dashboard.status, StatusCode::OK);
    assert_eq!(&dashboard.body[..], DASHBOARD_HTML.as_bytes());

    let reloaded = http_request(&admin_url("/admin/reload"), Method::POST, &[], Bytes::new()).await;
    assert_eq!(reloaded.status, StatusCode::OK, "{:?}", reloaded.body);
    let reloaded: serde_json::Value = serde_json::from_slice(&reloaded.body).unwrap();
    assert_eq!(
        reloaded["needs_restart"],
        serde_json::json!([]),
        "--listen applies on reload too"
    );
    let reloaded = json(&gw.log.wait_for("config reloaded").await);
    assert_eq!(
        reloaded["routes"],
        serde_json::json!(["/svc/"]),
        "{reloaded}"
    );

    gw.signal("-TERM");
    let status = within(10, "the exit", gw.child.wait()).await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    gw.log.rest().await;
    assert!(gw.log.seen.len() >= 4, "{:#?}", gw.log.seen);
    for line in &gw.log.seen {
        assert!(!line.contains('\u{1b}'), "a colour code: {line:?}");
        assert!(json(line).is_object(), "{line}");
    }
}

/// `log_format = "pretty"` (the default) writes text for people, without colour codes when stderr is not a
/// terminal (here a pipe), `NO_COLOR` or not.
#[tokio::test]
async fn pretty_logs_have_no_colour_codes_on_a_pipe() {
    let mut gw = Binary::spawn(
        &["--demo", "--listen", "127.0.0.1:0"],
        &[
            ("BATCHGATE_LOG", Some("batchgate=info")),
            ("NO_COLOR", None),
        ],
    );
    let line = gw.log.wait_for("listening on http://").await;
    assert!(line.contains(" INFO "), "{line}");
    assert!(serde_json::from_str::<serde_json::Value>(&line).is_err());
    gw.signal("-TERM");
    within(10, "the exit", gw.child.wait()).await.unwrap();
    gw.log.rest().await;
    for line in &gw.log.seen {
        assert!(!line.contains('\u{1b}'), "a colour code: {line:?}");
    }
}

/// `[admin]` for a test gateway: a free port, and `extra` keys.
fn admin_section(extra: &str) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:0\"\n{extra}\n")
}

/// The admin listener answers only requests that name it: its own address, a loopback name (any port) or an
/// `allowed_hosts` entry (a name: any port; `name:port`: that port). Any other `Host` (a DNS-rebinding page's
/// name), an absolute-form target naming another host, or no `Host` at all gets a JSON 421, for every endpoint,
/// and the connection is closed; a refused `POST /admin/reload` reloads nothing.
#[tokio::test]
async fn requests_naming_another_host_are_refused() {
    let up = svc_upstream().await;
    let dir = TempDir::new("admin-hosts");
    let path = dir.join("gateway.toml");
    let file = format!(
        "{}{}",
        admin_section("allowed_hosts = [\"admin.internal\", \"ops.internal:9901\"]"),
        routes(&[("/svc/", up.addr)])
    );
    std::fs::write(&path, &file).unwrap();
    let (gw, live) = live_gateway(&file).await;
    let admin = start_admin(Admin::new(live.clone()).config_file(&path, |_| {})).await;
    let port = admin.addr.port();
    let request = |method: &str, target: &str, host: Option<&str>| {
        let host = host.map_or(String::new(), |h| format!("Host: {h}\r\n"));
        let length = if method == "POST" {
            "Content-Length: 0\r\n"
        } else {
            ""
        };
        format!("{method} {target} HTTP/1.1\r\n{host}{length}\r\n")
    };
    let endpoints = [
        ("GET", "/admin/stats"),
        ("GET", "/admin/dashboard"),
        ("GET", "/metrics"),
        ("POST", "/admin/reload"),
        ("GET", "/healthz"),
    ];
    let evil_absolute = format!("http://evil.example:{port}/admin/stats");
    for (method, target) in endpoints {
        for (target, host) in [
            (target, Some("evil.example".to_owned())),
            (target, Some(format!("evil.example:{port}"))),
            (target, Some("127.0.0.1.evil.example".to_owned())),
            (target, Some(format!("admin.internal.evil.example:{port}"))),
            (target, Some("ops.internal:9902".to_owned())),
            (target, Some(format!("10.9.9.9:{port}"))),
            (target, Some("user@127.0.0.1".to_owned())),
            (evil_absolute.as_str(), Some(format!("127.0.0.1:{port}"))),
            (target, None),
        ] {
            let reply = send_raw(
                admin.addr,
                request(method, target, host.as_deref()).as_bytes(),
            )
            .await;
            assert_eq!(
                reply.status,
                StatusCode::MISDIRECTED_REQUEST,
                "{method} {target} Host {host:?}: {}",
                reply.head
            );
            assert_eq!(reply.headers["connection"], "close");
            let message = admin_error(&reply.reply());
            assert!(message.contains("Host"), "{message}");
        }
    }
    assert_eq!(gw.gateway.config.routes.len(), 1);
    assert!(
        Arc::ptr_eq(&live.gateway(), &gw.gateway),
        "a refused reload reloaded"
    );

    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        "LocalHost:8080".to_owned(),
        format!("[::1]:{port}"),
        "[::1]".to_owned(),
        "admin.internal".to_owned(),
        "Admin.Internal:1234".to_owned(),
        "ops.internal:9901".to_owned(),
    ] {
        for (method, target) in endpoints {
            if method == "POST" {
                continue;
            }
            let reply = send_raw(admin.addr, request(method, target, Some(&host)).as_bytes()).await;
            assert_eq!(reply.status, StatusCode::OK, "{target} Host {host}");
        }
    }
    // A reload with an allowed name goes through.
    let reply = send_raw(
        admin.addr,
        request("POST", "/admin/reload", Some("admin.internal")).as_bytes(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert!(!Arc::ptr_eq(&live.gateway(), &gw.gateway));
    admin.stop().await;
    gw.stop().await;
}

/// With `[admin]`, `/metrics` is the admin listener's: the main listener answers it 404 (JSON), unless
/// `public_metrics = true`. Without `[admin]` the main listener serves it (`stats_after_a_known_workload`).
#[tokio::test]
async fn metrics_move_to_the_admin_listener_unless_public() {
    let up = svc_upstream().await;
    for public in [false, true] {
        let file = format!(
            "{}{}",
            admin_section(&format!("public_metrics = {public}")),
            routes(&[("/svc/", up.addr)])
        );
        let (gw, live) = live_gateway(&file).await;
        let admin = start_admin(Admin::new(live)).await;
        gw.post(MULTIPART, get_batch("b", &["/svc/1".to_owned()]))
            .await
            .parts();
        let on_admin = admin.get("/metrics").await;
        assert_eq!(on_admin.status, StatusCode::OK);
        let text = std::str::from_utf8(&on_admin.body).unwrap();
        assert_eq!(
            metric(text, "batchgate_parts_total", &[("route", "/svc/")]),
            1
        );
        let on_main = gw.request(Method::GET, "/metrics", &[], Bytes::new()).await;
        if public {
            assert_eq!(on_main.status, StatusCode::OK);
            assert_eq!(on_main.body, on_admin.body);
        } else {
            assert_eq!(on_main.status, StatusCode::NOT_FOUND);
            assert_eq!(on_main.headers["content-type"], "application/json");
            assert!(!on_main.body.windows(10).any(|w| w == b"batchgate_"));
        }
        admin.stop().await;
        gw.stop().await;
    }
}

/// A batch of 1000 parts keeps only `stats_parts_per_batch` part timelines: `/admin/stats` shows 10 and
/// counts the other 990 in `parts_omitted`, and its answer stays small (a few KiB, not one entry per part).
#[tokio::test]
async fn a_big_batchs_stats_stay_within_the_bound() {
    let up = svc_upstream().await;
    let file = format!(
        "[limits]\nmax_parts = 1000\nwindow = 1000\n{}{}",
        admin_section("stats_parts_per_batch = 10"),
        routes(&[("/svc/", up.addr)])
    );
    let (gw, live) = live_gateway(&file).await;
    let admin = start_admin(Admin::new(live)).await;
    let targets: Vec<String> = (0..1000).map(|i| format!("/svc/{i}")).collect();
    let parts = gw.post(MULTIPART, get_batch("b", &targets)).await.parts();
    assert_eq!(parts.len(), 1000);

    let reply = admin.get("/admin/stats").await;
    let stats: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    let batch = &stats["batches"][0];
    assert_eq!(batch["parts"].as_array().unwrap().len(), 10, "{batch}");
    assert_eq!(batch["parts_omitted"], 990);
    assert_eq!(batch["parts"][9]["index"], 9);
    assert_eq!(
        stats["routes"][0]["requests"], 1000,
        "every part still counts"
    );
    // The route's 120-second series is most of it; 1000 parts' timelines would be over 100 KiB.
    assert!(reply.body.len() < 24 * 1024, "{} bytes", reply.body.len());
    admin.stop().await;
    gw.stop().await;
}

/// `/admin/stats` shows each address of a route's upstreams: the one that refuses connections is ejected after
/// `eject_after` failures, with why and from when until when; the other stays healthy.
#[tokio::test]
async fn stats_show_which_address_is_ejected_and_why() {
    let up = svc_upstream().await;
    let dead = dead_addr().await;
    let file = format!(
        "[upstream]\neject_after = 2\neject_for = \"30s\"\neject_max = \"60s\"\n{}\
         [[routes]]\nprefix = \"/svc/\"\nupstreams = [\"http://{}\", \"http://{dead}\"]\n",
        admin_section(""),
        up.addr
    );
    let (gw, live) = live_gateway(&file).await;
    let admin = start_admin(Admin::new(live)).await;
    let upstreams = |stats: &serde_json::Value| stats["routes"][0]["upstreams"].clone();
    let before = upstreams(&admin.stats().await);
    assert_eq!(before.as_array().unwrap().len(), 2, "{before}");
    for address in before.as_array().unwrap() {
        assert_eq!(address["state"], "healthy", "{address}");
        assert!(address["reason"].is_null());
    }

    let targets: Vec<String> = (0..4).map(|i| format!("/svc/{i}")).collect();
    let statuses: Vec<u16> = gw
        .post(MULTIPART, get_batch("b", &targets))
        .await
        .parts()
        .iter()
        .map(|p| p.status.as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 502).count(),
        2,
        "{statuses:?}"
    );

    let after = upstreams(&admin.stats().await);
    let find = |addr: SocketAddr| {
        after
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["address"] == addr.to_string())
            .unwrap_or_else(|| panic!("{addr} not in {after}"))
            .clone()
    };
    let healthy = find(up.addr);
    assert_eq!(healthy["state"], "healthy", "{healthy}");
    assert_eq!(healthy["upstream"], up.addr.to_string());
    let ejected = find(dead);
    assert_eq!(ejected["state"], "ejected", "{ejected}");
    assert_eq!(ejected["ejections"], 1);
    let reason = ejected["reason"].as_str().unwrap();
    assert!(
        reason.contains("failed 2 times in a row") && reason.contains("30s"),
        "{reason}"
    );
    let since = ejected["since_unix_ms"].as_u64().unwrap();
    let until = ejected["until_unix_ms"].as_u64().unwrap();
    assert!((29_000..=31_000).contains(&(until - since)), "{ejected}");
    admin.stop().await;
    gw.stop().await;
}

/// A pretty log line with what changes from run to run (the timestamp, the trace's ids, durations, the
/// reply's size with its random boundary) masked.
fn masked(line: &str) -> String {
    let (_, line) = line.split_once(' ').unwrap();
    line.split(' ')
        .map(|word| match word.split_once('=') {
            Some((name @ ("trace_id" | "span_id" | "duration_ms" | "bytes_out"), _)) => {
                format!("{name}=*")
            }
            _ => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn the_binary_writes_the_pretty_access_lines() {
    let up = echo_upstream(Duration::ZERO).await;
    let dir = TempDir::new("pretty-binary");
    let file = svc_file(up.addr, "access_log = \"parts\"\nlisten = \"127.0.0.1:9\"");
    let mut gw = binary_on(&dir, &file, &[("BATCHGATE_LOG", Some("batchgate=info"))]);
    let (_, main) = gw.listening().await;
    let body = get_batch("b", &["/svc/1".to_owned()]);
    let batch = format!(
        "POST /batch HTTP/1.1\r\nHost: gw\r\nContent-Type: {MULTIPART}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len(),
    );
    assert_eq!(
        send_raw(main, batch.as_bytes()).await.reply().parts()[0].body,
        "/svc/1"
    );
    let part = gw.log.wait_for("batchgate::access: part").await;
    let batch_line = gw.log.wait_for("batchgate::access: batch").await;
    // The text of tracing_subscriber's full format, which the binary writes with its own formatter.
    let span = "batch{id=1 peer=127.0.0.1 trace_id=* span_id=* parts=1}:";
    assert_eq!(
        masked(&part),
        format!(
            " INFO {span} batchgate::access: part index=0 method=\"GET\" path=\"/svc/1\" route=\"/svc/\" \
             upstream=\"{}\" status=200 duration_ms=*",
            up.addr
        )
    );
    assert_eq!(
        masked(&batch_line),
        format!(
            " INFO {span} batchgate::access: batch id=1 peer=127.0.0.1 format=\"multipart\" \
             reply_format=\"multipart\" parts=1 statuses=2xx=1 bytes_in={} bytes_out=* duration_ms=* \
             complete=true",
            body.len()
        )
    );
}

/// The real binary with the config `file` (written into `dir`), listening on a free port, with `env` set.
fn binary_on(dir: &TempDir, file: &str, env: &[(&str, Option<&str>)]) -> Binary {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, file).unwrap();
    Binary::spawn(
        &[
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        env,
    )
}
