//! Hostile batches and parts, end to end over loopback: what each one makes the gateway send upstream (read
//! off recording upstreams, byte for byte where it matters) and what the client gets back.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Opens a `POST /batch` with a chunked body; the test writes the body's pieces when it chooses.
async fn open_upload(addr: SocketAddr) -> TcpStream {
    let mut client = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /batch HTTP/1.1\r\nHost: gw\r\nContent-Type: {MP}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client
}

/// Writes one chunk of the body.
async fn send_chunk(client: &mut TcpStream, data: &str) {
    let chunk = format!("{:x}\r\n{data}\r\n", data.len());
    client.write_all(chunk.as_bytes()).await.unwrap();
}

/// Ends the chunked body.
async fn end_body(client: &mut TcpStream) {
    client.write_all(b"0\r\n\r\n").await.unwrap();
}

/// Parts counted with this outcome, over every route.
fn outcome(text: &str, outcome: &str) -> u64 {
    metric(text, "batchgate_parts_total", &[("outcome", outcome)])
}

async fn scrape(gw: &TestGateway) -> String {
    let reply = gw.request(Method::GET, "/metrics", &[], Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::OK);
    String::from_utf8(reply.body.to_vec()).unwrap()
}

/// A batch's parts with side effects first, then a safe one. The last is complete only once the next
/// delimiter line follows it, which the tests add.
fn side_effects_then_a_read() -> Vec<String> {
    vec![
        part(
            "w0",
            "POST /up/create HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        ),
        part(
            "w1",
            "PUT /up/replace HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
        ),
        part("w2", "DELETE /up/remove"),
        part(
            "w3",
            "PATCH /up/change HTTP/1.1\r\nContent-Length: 1\r\n\r\ny",
        ),
        part("r4", "GET /up/read"),
    ]
}

/// How a batch gets refused after its first parts are in, and what the client must get.
struct Refusal {
    name: &'static str,
    limits: &'static str,
    /// The rest of the body after the first write (which ends with an opening delimiter line), then the
    /// body's end; `None`: the client sends nothing more and keeps the connection open.
    rest: Option<String>,
    status: u16,
    message: &'static str,
}

/// A refused batch has run nothing with side effects: whatever refuses it after its first parts are in, the
/// upstream received no POST/PUT/DELETE/PATCH, only (maybe) the GET.
#[tokio::test]
async fn a_refused_batch_has_run_nothing_with_side_effects() {
    let next_part = |id: &str, request: &str| {
        format!(
            "Content-Type: application/http\r\nContent-ID: <{id}>\r\n\r\n{request}\r\n--b--\r\n"
        )
    };
    let refusals = [
        Refusal {
            name: "truncated (no close delimiter)",
            limits: "",
            rest: Some(String::new()),
            status: 400,
            message: "without the closing delimiter",
        },
        Refusal {
            name: "duplicate Content-ID",
            limits: "",
            rest: Some(next_part("w0", "GET /up/again")),
            status: 400,
            message: "duplicate Content-ID",
        },
        Refusal {
            name: "one part too many",
            limits: "max_parts = 5",
            rest: Some(next_part("x5", "GET /up/six")),
            status: 413,
            message: "limits.max_parts",
        },
        Refusal {
            name: "over max_batch_bytes",
            limits: "max_batch_bytes = 2048",
            rest: Some(next_part(
                "x5",
                &format!(
                    "POST /up/big HTTP/1.1\r\nContent-Length: 3000\r\n\r\n{}",
                    "z".repeat(3000)
                ),
            )),
            status: 413,
            message: "limits.max_batch_bytes",
        },
        Refusal {
            name: "stalled body",
            limits: "body_read_timeout = \"300ms\"",
            rest: None,
            status: 408,
            message: "body_read_timeout",
        },
    ];
    for refusal in refusals {
        let name = refusal.name;
        let up = echo_upstream(Duration::ZERO).await;
        let gw = gateway(&format!(
            "[limits]\n{}\n{}",
            refusal.limits,
            routes(&[("/up/", up.addr)])
        ))
        .await;
        let mut client = open_upload(gw.addr).await;
        let first = side_effects_then_a_read().concat() + "--b\r\n";
        send_chunk(&mut client, &first).await;
        // The GET is complete, so the read stage has handed every part to the scheduler: the unsafe ones
        // are there too, waiting for the commit.
        eventually(&format!("the GET reached the upstream ({name})"), || {
            up.seen().iter().any(|s| s.uri.path() == "/up/read")
        })
        .await;
        if let Some(rest) = &refusal.rest {
            if !rest.is_empty() {
                send_chunk(&mut client, rest).await;
            }
            end_body(&mut client).await;
        }
        let reply = within(10, name, read_response(&mut client)).await.reply();
        assert_eq!(reply.status.as_u16(), refusal.status, "{name}");
        let message = reply.error_message();
        assert!(message.contains(refusal.message), "{name}: {message}");
        drop(client);

        // Then a batch through the same gateway and pools: an unsafe part the refused batch had wrongly
        // started (alongside the GET, which came after it) has had its time to arrive.
        let after = gw
            .post(MP, batch(&[part("a", "GET /up/after")]))
            .await
            .parts();
        assert_eq!(after[0].body, "/up/after", "{name}");
        let seen: Vec<(Method, String)> = up
            .seen()
            .into_iter()
            .map(|s| (s.method, s.uri.path().to_owned()))
            .collect();
        assert!(
            seen.iter().all(|(m, _)| m == Method::GET),
            "{name}: an unsafe part of the refused batch ran: {seen:?}"
        );
        assert_eq!(
            seen,
            [
                (Method::GET, "/up/read".to_owned()),
                (Method::GET, "/up/after".to_owned())
            ],
            "{name}"
        );
        nothing_in_flight(&gw).await;
    }
}

/// Safe parts start while the body is still arriving; a POST waits for the close delimiter: the upstream
/// sees the GET after the first write, and the POST only after the second.
#[tokio::test]
async fn safe_parts_start_early_and_unsafe_ones_wait_for_the_close_delimiter() {
    let up = echo_upstream(Duration::ZERO).await;
    // One sub-request at a time, in request order: a POST started early would be the first to reach the
    // upstream, before the GET behind it.
    let gw = gateway(&format!(
        "[limits]\nconcurrency = 1\n{}",
        routes(&[("/up/", up.addr)])
    ))
    .await;
    let mut client = open_upload(gw.addr).await;
    let first = part(
        "w",
        "POST /up/create HTTP/1.1\r\nContent-Length: 7\r\n\r\ncreated",
    ) + &part("r", "GET /up/read")
        + "--b\r\n";
    send_chunk(&mut client, &first).await;
    eventually("the GET reached the upstream before the body ended", || {
        !up.seen().is_empty()
    })
    .await;
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "only the GET ran so far: {seen:?}");
    assert_eq!(seen[0].method, Method::GET);
    assert_eq!(seen[0].uri.path(), "/up/read");

    send_chunk(
        &mut client,
        "Content-Type: application/http\r\nContent-ID: <l>\r\n\r\nGET /up/last\r\n--b--\r\n",
    )
    .await;
    end_body(&mut client).await;
    let reply = within(10, "the reply", read_response(&mut client))
        .await
        .reply();
    let parts = reply.parts();
    let bodies: Vec<&[u8]> = parts.iter().map(|p| &p.body[..]).collect();
    assert_eq!(bodies, [&b"/up/create"[..], b"/up/read", b"/up/last"]);
    let post: Vec<Seen> = up
        .seen()
        .into_iter()
        .filter(|s| s.method == Method::POST)
        .collect();
    assert_eq!(post.len(), 1, "the POST ran once the batch was whole");
    assert_eq!(post[0].body, "created");
}

/// Only multipart/mixed is a batch: form-data, text, urlencoded, multipart/related and no Content-Type are
/// 415 with a JSON error, and nothing reaches the upstream.
#[tokio::test]
async fn only_multipart_mixed_is_a_batch() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    // A well-formed batch under the boundary `x`: served as a batch, its GET would reach the upstream.
    let body = get_batch("x", &["/up/a".to_owned()]);
    for content_type in [
        Some("multipart/form-data; boundary=x"),
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/related; boundary=x"),
        None,
    ] {
        let headers: Vec<(&str, &str)> = content_type
            .map(|ct| ("content-type", ct))
            .into_iter()
            .collect();
        let reply = gw
            .request(Method::POST, "/batch", &headers, Bytes::from(body.clone()))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
        assert_eq!(reply.headers["content-type"], "application/json");
        let message = reply.error_message();
        assert!(message.contains("multipart/mixed"), "{message}");
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    // The same body as multipart/mixed is a batch: what was refused above was the type alone.
    let mixed = gw
        .post("multipart/mixed; boundary=x", body.clone())
        .await
        .parts();
    assert_eq!(mixed[0].body, "/up/a");
    assert_eq!(up.seen().len(), 1, "only the multipart/mixed batch ran");
}

/// No smuggled bodies: bytes after the head of a GET/HEAD/DELETE/OPTIONS without Content-Length make a 400
/// part and reach nothing, TRACE and CONNECT in any case are 400 parts, and a GET with a declared body works.
#[tokio::test]
async fn no_smuggled_bodies_or_forbidden_methods_reach_the_upstream() {
    let up =
        recording_upstream(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()).await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let smuggled = "POST /up/admin HTTP/1.1\r\nHost: internal\r\nContent-Length: 5\r\n\r\nhello";
    let refused = [
        format!("GET /up/a HTTP/1.1\r\n\r\n{smuggled}"),
        format!("HEAD /up/a HTTP/1.1\r\n\r\n{smuggled}"),
        format!("DELETE /up/a HTTP/1.1\r\n\r\n{smuggled}"),
        format!("OPTIONS /up/a HTTP/1.1\r\n\r\n{smuggled}"),
        format!("get /up/a HTTP/1.1\r\n\r\n{smuggled}"),
        "trace /up/a HTTP/1.1".to_owned(),
        "Trace /up/a HTTP/1.1".to_owned(),
        "TRACE /up/a HTTP/1.1".to_owned(),
        "CONNECT /up/a HTTP/1.1".to_owned(),
        "connect /up/a HTTP/1.1".to_owned(),
    ];
    let mut parts: Vec<String> = refused
        .iter()
        .enumerate()
        .map(|(i, r)| part(&format!("h{i}"), r))
        .collect();
    parts.push(part(
        "ok",
        "GET /up/ok HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd",
    ));
    let replies = gw.post(MP, batch(&parts)).await.parts();
    assert_eq!(replies.len(), refused.len() + 1);
    for (i, reply) in replies[..refused.len()].iter().enumerate() {
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", refused[i]);
        let message = part_error(reply);
        let expected = if i < 5 {
            "needs Content-Length"
        } else {
            "is not allowed in a batch part"
        };
        assert!(message.contains(expected), "{:?}: {message}", refused[i]);
    }
    let ok = replies.last().unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body, "ok");

    let requests = up.requests();
    assert_eq!(requests.len(), 1, "only the GET with a declared body");
    let request = &requests[0];
    assert_eq!(request.request_line, "GET /up/ok HTTP/1.1");
    assert_eq!(request.body, "abcd");
    assert_eq!(request.headers["content-length"], "4");
    // Every byte the upstream read belongs to that one request.
    assert_eq!(up.received(), request.bytes);
    let received: String = String::from_utf8_lossy(&request.bytes)
        .to_ascii_lowercase()
        .lines()
        // The gateway's own trace context header is no smuggled TRACE.
        .filter(|line| !line.starts_with("traceparent:"))
        .collect();
    for word in ["admin", "hello", "trace", "connect", "/up/a "] {
        assert!(!received.contains(word), "{word:?} reached the upstream");
    }
}

/// Targets are normalised before routing: the upstream gets the normalised request line, without the
/// fragment; dot segments with parameters reach nothing; prefixes match on segment boundaries.
#[tokio::test]
async fn targets_are_normalised_before_routing() {
    let echo = |r: &RawRequest| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
            r.target.len(),
            r.target
        )
        .into_bytes()
    };
    let mail = recording_upstream(echo).await;
    let posts = recording_upstream(echo).await;
    let admin = recording_upstream(echo).await;
    let gw = gateway(&routes(&[
        ("/mail/", mail.addr),
        ("/posts", posts.addr),
        ("/admin/", admin.addr),
    ]))
    .await;
    let cases: [(&str, u16, &str); 9] = [
        ("/m%61il/x", 200, "/mail/x"),
        ("/mail/y#frag", 200, "/mail/y"),
        // The fragment goes before anything else is read: its dot segments climb nowhere.
        ("/mail/z#/../../admin/x", 200, "/mail/z"),
        ("/mail/..;/admin/x", 400, ""),
        ("/mail/%2e%2e;/x", 400, ""),
        ("/mail/é", 200, "/mail/%C3%A9"),
        ("/postsecret", 404, ""),
        ("/posts", 200, "/posts"),
        ("/posts/1", 200, "/posts/1"),
    ];
    let parts: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, (target, _, _))| part(&format!("t{i}"), &format!("GET {target} HTTP/1.1")))
        .collect();
    let replies = gw.post(MP, batch(&parts)).await.parts();
    for ((target, status, arrived), reply) in cases.iter().zip(&replies) {
        assert_eq!(reply.status.as_u16(), *status, "{target}");
        if *status == 200 {
            assert_eq!(reply.body, *arrived, "{target}");
        }
    }
    assert_eq!(
        mail.request_lines(),
        [
            "GET /mail/%C3%A9 HTTP/1.1",
            "GET /mail/x HTTP/1.1",
            "GET /mail/y HTTP/1.1",
            "GET /mail/z HTTP/1.1"
        ]
    );
    assert_eq!(
        posts.request_lines(),
        ["GET /posts HTTP/1.1", "GET /posts/1 HTTP/1.1"]
    );
    assert!(admin.requests().is_empty(), "{:?}", admin.request_lines());
    for up in [&mail, &posts, &admin] {
        let received = String::from_utf8_lossy(&up.received()).into_owned();
        assert!(
            !received.contains("..") && !received.contains("frag") && !received.contains("secret"),
            "{received}"
        );
    }
}

/// Forwarding headers, spelled as a client might send them, with these values.
fn spoofs<'a>(xff: &'a str, proto: &'a str, host: &'a str) -> [(&'a str, &'a str); 7] {
    [
        ("X-Forwarded-For", xff),
        ("X-Forwarded-Proto", proto),
        ("X-Forwarded-Host", host),
        ("Forwarded", "for=6.6.6.6;proto=https"),
        ("X-Real-IP", "6.6.6.6"),
        ("X-Original-URL", "/admin"),
        ("X-Rewrite-URL", "/admin"),
    ]
}

/// Sends a batch whose outer headers and whose first part's headers carry forwarding headers; returns what
/// the upstream saw for the spoofing part and for a plain one.
async fn forwarded(toml: &str, outer: [(&str, &str); 7], inner: [(&str, &str); 7]) -> Vec<Seen> {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&format!("{toml}{}", routes(&[("/up/", up.addr)]))).await;
    let own: String = inner.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
    let body = batch(&[
        part("spoof", &format!("GET /up/spoof HTTP/1.1\r\n{own}")),
        part("plain", "GET /up/plain HTTP/1.1"),
    ]);
    let mut headers = vec![("content-type", MP)];
    headers.extend(outer);
    let reply = gw
        .request(Method::POST, "/batch", &headers, Bytes::from(body))
        .await;
    assert!(reply.parts().iter().all(|p| p.status == StatusCode::OK));
    let mut seen = up.seen();
    seen.sort_by_key(|s| s.uri.path().to_owned());
    assert_eq!(seen.len(), 2);
    seen
}

fn all(seen: &Seen, name: &str) -> Vec<String> {
    seen.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// The gateway owns the forwarding headers: a client's copies (outer and in parts) never reach the upstream;
/// a trusted proxy's outer chain and proto are kept and extended, but a part's own copies are still removed.
#[tokio::test]
async fn the_gateway_owns_forwarding_headers() {
    let gone = ["forwarded", "x-real-ip", "x-original-url", "x-rewrite-url"];
    let evil = spoofs("6.6.6.6", "https", "evil");
    for seen in forwarded("", evil, evil).await {
        let path = seen.uri.path();
        assert_eq!(all(&seen, "x-forwarded-for"), ["127.0.0.1"], "{path}");
        assert_eq!(all(&seen, "x-forwarded-proto"), ["http"], "{path}");
        assert_ne!(all(&seen, "x-forwarded-host"), ["evil"], "{path}");
        for name in gone {
            assert!(seen.headers.get(name).is_none(), "{path}: {name}");
        }
        for (name, value) in &seen.headers {
            let value = value.to_str().unwrap();
            assert!(
                !value.contains("6.6.6.6") && !value.contains("evil") && !value.contains("/admin"),
                "{path}: {name}: {value}"
            );
        }
    }

    // Behind a trusted proxy: the outer chain, proto and host are the proxy's word; the part's are not.
    let part_spoofs = spoofs("7.7.7.7", "ftp", "part.evil");
    let trusted = "trusted_proxies = [\"127.0.0.1/32\"]\n";
    for seen in forwarded(trusted, evil, part_spoofs).await {
        let path = seen.uri.path();
        assert_eq!(
            all(&seen, "x-forwarded-for"),
            ["6.6.6.6, 127.0.0.1"],
            "{path}"
        );
        assert_eq!(all(&seen, "x-forwarded-proto"), ["https"], "{path}");
        assert_eq!(all(&seen, "x-forwarded-host"), ["evil"], "{path}");
        for name in gone {
            assert!(seen.headers.get(name).is_none(), "{path}: {name}");
        }
        for (name, value) in &seen.headers {
            let value = value.to_str().unwrap();
            assert!(
                !value.contains("7.7.7.7")
                    && !value.contains("ftp")
                    && !value.contains("part.evil"),
                "{path}: {name}: {value}"
            );
        }
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

const PLAIN: &str = "a body the upstream compressed although nobody asked it to, repeated; \
                     a body the upstream compressed although nobody asked it to, repeated";

/// Upstream answers keep HTTP semantics in the reply part: a final 101 is a 502 naming it, a 204 has no
/// Content-Length, HEAD and 304 keep the upstream's, unrequested gzip is decoded (kept when the part accepts
/// it), a corrupt gzip body is a 502.
#[tokio::test]
async fn upstream_answers_keep_http_semantics() {
    let compressed = gzip(PLAIN.as_bytes());
    let answers = compressed.clone();
    let up = recording_upstream(move |r| {
        let gzipped = |body: &[u8]| {
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            out.extend_from_slice(body);
            out
        };
        match r.target.as_str() {
            "/h/switch" => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_vec(),
            "/h/no-content" => b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-Done: yes\r\n\r\n".to_vec(),
            "/h/head" => b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n".to_vec(),
            "/h/not-modified" => b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 1234\r\n\r\n".to_vec(),
            "/h/not-modified-bare" => b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n".to_vec(),
            "/h/gzip" => gzipped(&answers),
            "/h/corrupt" => gzipped(b"\x1f\x8b\x08\x00this is not deflate data at all"),
            other => panic!("unexpected target {other}"),
        }
    })
    .await;
    let gw = gateway(&routes(&[("/h/", up.addr)])).await;
    let body = batch(&[
        part("switch", "GET /h/switch"),
        part("no-content", "DELETE /h/no-content"),
        part("head", "HEAD /h/head"),
        part(
            "not-modified",
            "GET /h/not-modified HTTP/1.1\r\nIf-None-Match: \"v1\"",
        ),
        part("not-modified-bare", "GET /h/not-modified-bare"),
        part("gzip", "GET /h/gzip"),
        part(
            "gzip-accepted",
            "GET /h/gzip HTTP/1.1\r\nAccept-Encoding: gzip",
        ),
        part("corrupt", "GET /h/corrupt"),
    ]);
    let reply = gw.post(MP, body).await;
    let parts = raw_parts(&reply);
    let statuses: Vec<u16> = parts.iter().map(|p| p.status).collect();
    assert_eq!(statuses, [502, 204, 200, 304, 304, 200, 200, 502]);

    // The crate's own client reads the same reply, bodiless answers included.
    let read = reply.parts();
    assert_eq!(read.len(), parts.len());

    let message = part_error(&read[0]);
    assert!(message.contains("101 Switching Protocols"), "{message}");

    assert!(parts[1].values("content-length").is_empty(), "{parts:?}");
    assert_eq!(parts[1].values("x-done"), ["yes"]);
    assert!(parts[1].body.is_empty());

    assert_eq!(parts[2].values("content-length"), ["1234"]);
    assert!(parts[2].body.is_empty());
    assert!(read[2].body.is_empty());

    assert_eq!(parts[3].values("content-length"), ["1234"]);
    assert_eq!(parts[3].values("etag"), ["\"v1\""]);
    assert!(parts[3].body.is_empty());
    assert!(parts[4].values("content-length").is_empty(), "{parts:?}");
    assert!(parts[4].body.is_empty());

    assert!(parts[5].values("content-encoding").is_empty());
    assert_eq!(parts[5].body, PLAIN);
    assert_eq!(parts[5].values("content-length"), [PLAIN.len().to_string()]);

    assert_eq!(parts[6].values("content-encoding"), ["gzip"]);
    assert_eq!(parts[6].body, compressed);
    assert_eq!(
        parts[6].values("content-length"),
        [compressed.len().to_string()]
    );

    let message = part_error(&read[7]);
    assert!(message.contains("corrupt"), "{message}");

    // The gateway never asked for compression, and HEAD went upstream as HEAD.
    for request in up.requests() {
        assert!(request.headers.get("accept-encoding").is_none());
    }
    assert!(
        up.request_lines()
            .contains(&"HEAD /h/head HTTP/1.1".to_owned())
    );
}

/// Metrics add up: an upstream's 503 is a `5xx` part and its 404 a `4xx`; parts of a batch whose client
/// went away mid-run are `cancelled`, and no sub-request stays in flight.
#[tokio::test]
async fn metrics_count_upstream_statuses_and_cancelled_parts() {
    let unavailable = upstream(|_| async { text(StatusCode::SERVICE_UNAVAILABLE, "down") }).await;
    let missing = upstream(|_| async { text(StatusCode::NOT_FOUND, "no such thing") }).await;
    let ok = echo_upstream(Duration::ZERO).await;
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let slow = upstream(move |_| {
        let arrived_tx = arrived_tx.clone();
        async move {
            let _ = arrived_tx.send(());
            std::future::pending::<Response<Full<Bytes>>>().await
        }
    })
    .await;
    let gw = gateway(&routes(&[
        ("/unavailable/", unavailable.addr),
        ("/missing/", missing.addr),
        ("/ok/", ok.addr),
        ("/slow/", slow.addr),
    ]))
    .await;

    let parts = gw
        .post(
            MP,
            batch(&[
                part("a", "GET /unavailable/x"),
                part("b", "GET /missing/x"),
                part("c", "GET /ok/x"),
                part("d", "GET /nowhere/x"),
            ]),
        )
        .await
        .parts();
    let statuses = statuses(&parts);
    assert_eq!(statuses, [503, 404, 200, 404]);
    let text = scrape(&gw).await;
    assert_eq!(outcome(&text, "5xx"), 1, "{text}");
    assert_eq!(outcome(&text, "4xx"), 1, "{text}");
    assert_eq!(outcome(&text, "2xx"), 1, "{text}");
    assert_eq!(outcome(&text, "no_route"), 1, "{text}");
    assert_eq!(outcome(&text, "cancelled"), 0, "{text}");

    // A batch whose three parts are held by the slow upstream, and a client that goes away.
    let body = batch(&[
        part("s0", "GET /slow/0"),
        part("s1", "GET /slow/1"),
        part("s2", "GET /slow/2"),
    ]);
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /batch HTTP/1.1\r\nHost: gw\r\nContent-Type: {MP}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(body.as_bytes()).await.unwrap();
    for _ in 0..3 {
        within(10, "a slow part to arrive", arrived.recv())
            .await
            .unwrap();
    }
    let text = scrape(&gw).await;
    assert_eq!(sample(&text, "batchgate_sub_requests_in_flight"), 3);
    drop(client);

    let gateway = gw.gateway.clone();
    eventually("the client's parts are counted as cancelled", || {
        outcome(&gateway.metrics_text(), "cancelled") == 3
    })
    .await;
    nothing_in_flight(&gw).await;
    let text = scrape(&gw).await;
    assert_eq!(outcome(&text, "cancelled"), 3, "{text}");
    assert_eq!(sample(&text, "batchgate_sub_requests_in_flight"), 0);
    assert_eq!(sample(&text, "batchgate_batches_in_flight"), 0);
    for settled in ["2xx", "4xx", "5xx", "timeout", "upstream"] {
        let expected = u64::from(matches!(settled, "2xx" | "4xx" | "5xx"));
        assert_eq!(outcome(&text, settled), expected, "{settled}: {text}");
    }
}

/// No batch and no sub-request is left in flight.
async fn nothing_in_flight(gw: &TestGateway) {
    eventually("nothing is in flight", || {
        gw.gateway.sub_requests_in_flight() == 0 && gw.gateway.batches_in_flight() == 0
    })
    .await;
}
