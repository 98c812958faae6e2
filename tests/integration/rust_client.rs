//! The Rust client (`batchgate_client`) against a real gateway started in-process, and against raw fake
//! servers for replies no gateway sends: any-method batches, default and authorization headers as the upstream
//! sees them, duplicate ids, every error kind, replies streamed part by part, and a reply that breaks off.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use batchgate_client::{BatchBuilder, BatchClient, ClientError, PartResponse};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, StatusCode};
use tokio::sync::Semaphore;

fn client(gw: &TestGateway) -> BatchClient {
    BatchClient::new(gw.url("/batch")).unwrap()
}

fn req(method: &str, target: &str, body: &'static str) -> Request<Bytes> {
    Request::builder()
        .method(method)
        .uri(target)
        .body(Bytes::from_static(body.as_bytes()))
        .unwrap()
}

/// An upstream that answers `METHOD target body`, 201 for a POST, with the `x-echo` header it got echoed.
async fn echo_method_upstream() -> Upstream {
    upstream(|seen| async move {
        let status = if seen.method == http::Method::POST {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        let mut r = text(
            status,
            format!(
                "{} {} {}",
                seen.method,
                seen.uri,
                String::from_utf8_lossy(&seen.body)
            ),
        );
        if let Some(v) = seen.headers.get("x-echo") {
            r.headers_mut().insert("x-echo", v.clone());
        }
        r
    })
    .await
}

#[tokio::test]
async fn any_method_with_headers_and_body_comes_back_in_request_order() {
    let up = echo_method_upstream().await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let mut batch = BatchBuilder::new();
    batch
        .push_with_id("g", req("GET", "/up/a?x=1", ""))
        .unwrap();
    batch
        .push_with_id(
            "p",
            Request::post("/up/b")
                .header("content-type", "application/json")
                .header("x-echo", "posted")
                .body(Bytes::from_static(b"{\"n\":1}"))
                .unwrap(),
        )
        .unwrap();
    batch
        .push_with_id("u", req("PUT", "/up/c", "put body"))
        .unwrap();
    batch.push(req("PATCH", "/up/d", "patch body"));
    batch.push_with_id("d", req("DELETE", "/up/e", "")).unwrap();
    let parts = within(10, "the batch", client(&gw).send(batch))
        .await
        .unwrap();
    let summary: Vec<(usize, u16, String)> = parts
        .iter()
        .map(|p| {
            (
                p.index,
                p.status.as_u16(),
                String::from_utf8_lossy(&p.body).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, 200, "GET /up/a?x=1 ".to_owned()),
            (1, 201, "POST /up/b {\"n\":1}".to_owned()),
            (2, 200, "PUT /up/c put body".to_owned()),
            (3, 200, "PATCH /up/d patch body".to_owned()),
            (4, 200, "DELETE /up/e ".to_owned()),
        ]
    );
    assert_eq!(parts[1].headers["x-echo"], "posted");
    assert_eq!(parts[1].content_id.as_ref().unwrap().id(), "p");
    assert_eq!(parts[1].raw_content_id.as_deref(), Some("<response-p>"));
    assert_eq!(parts[3].content_id, None, "a part without an id");
    assert_eq!(parts[3].raw_content_id, None);
    let seen = up.seen();
    let post = seen
        .iter()
        .find(|s| s.method == http::Method::POST)
        .unwrap();
    assert_eq!(post.headers["content-type"], "application/json");
    let response = parts[1].clone().into_response();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.body(), "POST /up/b {\"n\":1}");
}

#[tokio::test]
async fn default_headers_reach_every_part_and_a_parts_own_header_wins() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let mut batch = BatchBuilder::new();
    batch.default_header(
        http::HeaderName::from_static("x-tenant"),
        http::HeaderValue::from_static("acme"),
    );
    batch.default_header(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    );
    batch.get("one", "/up/one").unwrap();
    batch
        .push_with_id(
            "two",
            Request::get("/up/two")
                .header("accept", "text/plain")
                .body(Bytes::new())
                .unwrap(),
        )
        .unwrap();
    let parts = client(&gw).send(batch).await.unwrap();
    assert_eq!(parts.len(), 2);
    let mut seen = up.seen();
    seen.sort_by_key(|s| s.uri.path().to_owned());
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.headers["x-tenant"], "acme", "{}", s.uri);
    }
    assert_eq!(seen[0].headers["accept"], "application/json");
    assert_eq!(seen[1].headers["accept"], "text/plain");
}

#[test]
fn duplicate_ids_are_refused_and_say_which_part_has_it() {
    let mut batch = BatchBuilder::new();
    batch.get("item", "/a").unwrap();
    batch.get("other", "/b").unwrap();
    let error = batch.get("item", "/c").unwrap_err();
    assert!(
        matches!(&error, ClientError::DuplicateId { id, first: 0 } if id == "item"),
        "{error:?}"
    );
    assert!(error.to_string().contains("part 0"), "{error}");
    assert_eq!(batch.len(), 2, "the refused part is not in the batch");
}

#[tokio::test]
async fn bearer_auth_and_client_headers_reach_the_upstream() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let client = BatchClient::builder(gw.url("/batch"))
        .bearer_auth("s3cret")
        .header("x-client", "rust")
        .build()
        .unwrap();
    let mut batch = BatchBuilder::new();
    batch.get("a", "/up/a").unwrap();
    batch.get("b", "/up/b").unwrap();
    client.send(batch).await.unwrap();
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    for s in seen {
        assert_eq!(s.headers["authorization"], "Bearer s3cret");
        assert_eq!(s.headers["x-client"], "rust");
    }
}

#[tokio::test]
async fn a_dead_address_is_a_connect_error_naming_the_url() {
    let dead = dead_addr().await;
    let client = BatchClient::new(format!("http://{dead}/batch")).unwrap();
    let mut batch = BatchBuilder::new();
    batch.get("a", "/x").unwrap();
    let error = within(10, "the connect error", client.send(batch))
        .await
        .unwrap_err();
    match &error {
        ClientError::Connect { url, reason } => {
            assert!(url.contains(&dead.to_string()), "{url}");
            assert!(reason.to_lowercase().contains("refused"), "{reason}");
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert!(error.to_string().starts_with("cannot connect to http://"));
}

#[tokio::test(start_paused = true)]
async fn a_hanging_upstream_runs_into_the_batch_timeout() {
    let up = upstream(|_| std::future::pending()).await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let client = BatchClient::builder(gw.url("/batch"))
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut batch = BatchBuilder::new();
    batch.get("a", "/up/hang").unwrap();
    let started = tokio::time::Instant::now();
    let error = within(10, "the timeout", client.send(batch))
        .await
        .unwrap_err();
    match &error {
        ClientError::Timeout { limit, setting, .. } => {
            assert_eq!(*limit, Duration::from_millis(300));
            assert_eq!(*setting, "timeout");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    at_limit("the timeout", started.elapsed(), Duration::from_millis(300));
    assert!(error.to_string().contains("(timeout)"), "{error}");
}

#[tokio::test]
async fn a_batch_refused_with_413_carries_the_gateways_json_error() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&format!(
        "[limits]\nmax_parts = 2\n{}",
        routes(&[("/up/", up.addr)])
    ))
    .await;
    let mut batch = BatchBuilder::new();
    for i in 0..3 {
        batch.get(&format!("i{i}"), &format!("/up/{i}")).unwrap();
    }
    let error = client(&gw).send(batch).await.unwrap_err();
    match &error {
        ClientError::Status {
            status,
            code,
            message,
            ..
        } => {
            assert_eq!(*status, StatusCode::PAYLOAD_TOO_LARGE);
            assert_eq!(*code, Some(413));
            assert!(message.contains("Limit: 2"), "{message}");
        }
        other => panic!("expected a 413, got {other:?}"),
    }
    assert!(error.to_string().contains("413"), "{error}");
    assert!(up.seen().is_empty());
}

/// A reply head for a canned multipart body with boundary `r`.
fn canned(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: multipart/mixed; boundary=r\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn reply_part(id: Option<&str>, status: &str, body: &str) -> String {
    let id = id.map_or(String::new(), |id| format!("Content-ID: {id}\r\n"));
    format!(
        "--r\r\nContent-Type: application/http\r\n{id}\r\nHTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}\r\n",
        body.len()
    )
}

fn two_parts() -> BatchBuilder {
    let mut batch = BatchBuilder::new();
    batch.get("a", "/a").unwrap();
    batch.get("b", "/b").unwrap();
    batch
}

#[tokio::test]
async fn a_malformed_reply_part_is_reported_with_its_byte_offset() {
    let good = reply_part(Some("<response-a>"), "200 OK", "fine");
    let bad_part = "Content-Type: application/http\r\nContent-ID: <response-b>\r\n\r\nHTTP/1.1 two hundred\r\n\r\n";
    let body = format!("{good}--r\r\n{bad_part}\r\n--r--\r\n");
    let offset = body.find(bad_part).unwrap() as u64;
    let addr = canned_server(canned(&body)).await;
    let client = BatchClient::new(format!("http://{addr}/batch")).unwrap();
    let mut stream = client.send_stream(two_parts());
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!((first.index, &first.body[..]), (0, &b"fine"[..]));
    let error = stream.next().await.unwrap().unwrap_err();
    match &error {
        ClientError::MalformedReply { offset: at, reason } => {
            assert_eq!(*at, offset, "{reason}");
            assert!(reason.contains("reply part 1"), "{reason}");
        }
        other => panic!("expected a malformed reply, got {other:?}"),
    }
    assert!(
        error.to_string().contains(&format!("at byte {offset}")),
        "{error}"
    );
    assert!(
        stream.next().await.is_none(),
        "the stream ends after an error"
    );
}

#[tokio::test]
async fn replies_are_matched_by_content_id_then_by_position() {
    // Answered out of order: `c` first, then a part without an id (position 1: part `b`), then `a`.
    let body = format!(
        "{}{}{}--r--\r\n",
        reply_part(Some("<response-c>"), "200 OK", "C"),
        reply_part(None, "404 Not Found", "B"),
        reply_part(Some("response-a"), "201 Created", "A"),
    );
    let addr = canned_server(canned(&body)).await;
    let client = BatchClient::new(format!("http://{addr}/batch")).unwrap();
    let mut batch = two_parts();
    batch.get("c", "/c").unwrap();
    let streamed: Vec<PartResponse> = client
        .send_stream(batch)
        .map(Result::unwrap)
        .collect()
        .await;
    let order: Vec<usize> = streamed.iter().map(|p| p.index).collect();
    assert_eq!(order, vec![2, 1, 0], "as they came, each with its index");
    assert_eq!(streamed[2].raw_content_id.as_deref(), Some("response-a"));

    let mut batch = two_parts();
    batch.get("c", "/c").unwrap();
    let parts = client.send(batch).await.unwrap();
    let got: Vec<(usize, u16, &[u8])> = parts
        .iter()
        .map(|p| (p.index, p.status.as_u16(), &p.body[..]))
        .collect();
    assert_eq!(
        got,
        vec![(0, 201, &b"A"[..]), (1, 404, b"B"), (2, 200, b"C")]
    );
}

#[tokio::test]
async fn a_reply_closed_before_answering_every_part_is_an_error() {
    let body = format!(
        "{}--r--\r\n",
        reply_part(Some("<response-a>"), "200 OK", "A")
    );
    let addr = canned_server(canned(&body)).await;
    let client = BatchClient::new(format!("http://{addr}/batch")).unwrap();
    let error = client.send(two_parts()).await.unwrap_err();
    assert!(
        matches!(&error, ClientError::MalformedReply { offset, reason }
            if *offset == body.len() as u64 && reason.contains("no answer for part(s) 1")),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_reply_that_breaks_off_yields_the_parts_read_then_the_error() {
    // Chunked: two whole parts and the start of a third, then the connection closes without the last chunk.
    let parts = format!(
        "{}{}--r\r\nContent-Type: appli",
        reply_part(Some("<response-a>"), "200 OK", "A"),
        reply_part(Some("<response-b>"), "200 OK", "B")
    );
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: multipart/mixed; boundary=r\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{parts}\r\n",
        parts.len()
    );
    let addr = canned_server(reply.into_bytes()).await;
    let client = BatchClient::new(format!("http://{addr}/batch")).unwrap();
    let mut batch = two_parts();
    batch.get("c", "/c").unwrap();
    let items: Vec<Result<PartResponse, ClientError>> =
        within(10, "the stream", client.send_stream(batch).collect()).await;
    assert_eq!(items.len(), 3, "{items:?}");
    assert_eq!(items[0].as_ref().unwrap().body, "A");
    assert_eq!(items[1].as_ref().unwrap().index, 1);
    match &items[2] {
        Err(ClientError::BrokenOff {
            parts: 2, offset, ..
        }) => assert_eq!(*offset, parts.len() as u64),
        other => panic!("expected the reply to break off after 2 parts, got {other:?}"),
    }
}

#[tokio::test]
async fn parts_are_yielded_before_a_slow_last_part_has_been_answered() {
    let release = Arc::new(Semaphore::new(0));
    let gate = release.clone();
    let up = upstream(move |seen| {
        let gate = gate.clone();
        async move {
            if seen.uri.path() == "/up/slow" {
                let _permit = gate.acquire().await.unwrap();
            }
            text(StatusCode::OK, seen.uri.path().to_owned())
        }
    })
    .await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let mut batch = BatchBuilder::new();
    batch.get("fast", "/up/fast").unwrap();
    batch.get("slow", "/up/slow").unwrap();
    let mut stream = client(&gw).send_stream(batch);
    let first = within(10, "the first part", stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.index, &first.body[..]), (0, &b"/up/fast"[..]));
    // The slow part's upstream has its request and has not answered: it cannot until released.
    assert_eq!(release.available_permits(), 0);
    assert!(up.seen().iter().any(|s| s.uri.path() == "/up/slow"));
    release.add_permits(1);
    let second = within(10, "the second part", stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((second.index, &second.body[..]), (1, &b"/up/slow"[..]));
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn https_with_an_unknown_ca_fails_as_tls_and_works_once_the_ca_is_trusted() {
    let up = echo_upstream(Duration::ZERO).await;
    let ca = TestCa::new();
    let dir = TempDir::new("client-tls");
    ca.leaf("gateway")
        .write(&dir.join("cert.pem"), &dir.join("key.pem"));
    let gw = gateway(&format!(
        "{}{}",
        tls_section(&dir.join("cert.pem"), &dir.join("key.pem")),
        routes(&[("/up/", up.addr)])
    ))
    .await;
    let url = format!("https://127.0.0.1:{}/batch", gw.addr.port());

    let untrusting = BatchClient::new(url.as_str()).unwrap();
    let mut batch = BatchBuilder::new();
    batch.get("a", "/up/a").unwrap();
    let error = within(10, "the TLS error", untrusting.send(batch))
        .await
        .unwrap_err();
    match &error {
        ClientError::Tls { reason, .. } => {
            assert!(reason.contains("UnknownIssuer"), "{reason}")
        }
        other => panic!("expected a TLS error, got {other:?}"),
    }
    assert!(up.seen().is_empty());

    let trusting = BatchClient::builder(url.as_str())
        .add_root_certificate(ca.ca_der())
        .build()
        .unwrap();
    let mut batch = BatchBuilder::new();
    batch.get("a", "/up/a").unwrap();
    batch.get("b", "/up/b").unwrap();
    let parts = within(10, "the batch over https", trusting.send(batch))
        .await
        .unwrap();
    assert_eq!(parts[0].body, "/up/a");
    assert_eq!(parts[1].body, "/up/b");
}

#[tokio::test]
async fn unusable_settings_are_refused_at_build() {
    assert!(matches!(
        BatchClient::new("ftp://example/batch"),
        Err(ClientError::Config(_))
    ));
    assert!(matches!(
        BatchClient::builder("http://127.0.0.1:1/batch")
            .header("bad header", "x")
            .build(),
        Err(ClientError::Config(_))
    ));
    let client = BatchClient::new("http://127.0.0.1:1/batch").unwrap();
    assert!(matches!(
        client.send(BatchBuilder::new()).await,
        Err(ClientError::InvalidBatch(_))
    ));
}

/// An upstream that answers each request with its own body and content type.
async fn mirror_upstream() -> Upstream {
    upstream(|seen| async move {
        let mut response = http::Response::new(http_body_util::Full::new(seen.body.clone()));
        if let Some(ct) = seen.headers.get("content-type") {
            response.headers_mut().insert("content-type", ct.clone());
        }
        response
    })
    .await
}

#[tokio::test]
async fn a_json_batch_carries_every_body_encoding_both_ways_and_matches_replies_by_id() {
    let up = mirror_upstream().await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let binary: Vec<u8> = (0..=255u8).collect();
    let with_type = |method: &str, target: &str, ct: &str, body: Vec<u8>| {
        Request::builder()
            .method(method)
            .uri(target)
            .header("content-type", ct)
            .body(Bytes::from(body))
            .unwrap()
    };
    let mut batch = BatchBuilder::new();
    batch.format(batchgate_client::Format::Json);
    batch
        .push_with_id(
            "json",
            with_type(
                "POST",
                "/up/j",
                "application/json",
                br#"{"a": [1, 2]}"#.to_vec(),
            ),
        )
        .unwrap();
    batch
        .push_with_id(
            "text",
            with_type(
                "PUT",
                "/up/t",
                "text/plain",
                "héllo \"x\"".as_bytes().to_vec(),
            ),
        )
        .unwrap();
    batch.push(with_type(
        "PUT",
        "/up/b",
        "application/octet-stream",
        binary.clone(),
    ));
    batch.push(req("GET", "/up/none", ""));
    let parts = within(10, "the batch", client(&gw).send(batch))
        .await
        .unwrap();
    assert_eq!(parts.len(), 4);
    assert_eq!(
        &parts[0].body[..],
        br#"{"a": [1, 2]}"#,
        "as the upstream sent it"
    );
    assert_eq!(parts[0].content_id.as_ref().unwrap().id(), "json");
    assert_eq!(&parts[1].body[..], "héllo \"x\"".as_bytes());
    assert_eq!(&parts[2].body[..], &binary[..], "byte-exact");
    assert_eq!(parts[2].content_id.as_ref().unwrap().id(), "3");
    assert!(parts[3].body.is_empty());
    assert!(parts.iter().enumerate().all(|(i, p)| p.index == i));
    let seen = up.seen();
    let at = |path: &str| seen.iter().find(|s| s.uri.path() == path).unwrap().clone();
    assert_eq!(&at("/up/b").body[..], &binary[..]);
    assert_eq!(&at("/up/j").body[..], br#"{"a": [1, 2]}"#);
}

#[tokio::test]
async fn a_json_batch_s_unrouted_part_is_a_404_with_the_gateway_s_json_error() {
    let gw = gateway("").await;
    let mut batch = BatchBuilder::new();
    batch.format(batchgate_client::Format::Json);
    batch.push(req("GET", "/nowhere", ""));
    // The gateway routes nothing here: the part is a 404, the batch itself is served.
    let parts = within(10, "the batch", client(&gw).send(batch))
        .await
        .unwrap();
    assert_eq!(parts[0].status, StatusCode::NOT_FOUND);
    let error: serde_json::Value = serde_json::from_slice(&parts[0].body).unwrap();
    assert_eq!(error["error"]["code"], 404);
}
