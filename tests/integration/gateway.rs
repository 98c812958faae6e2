//! The core gateway over real HTTP: ordering, Content-ID echo, header rules, bodies, per-part and whole-batch
//! errors, the concurrency cap, cancellation, pooling and streaming. Every server is real and bound on port 0.

use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A raw `POST /batch` with a Content-Length, `extra` header lines (each ending in CRLF) and `body`.
fn raw_post(extra: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST /batch HTTP/1.1\r\nHost: gateway.test\r\nContent-Type: {MP}\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// One chunk of a chunked request body.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).map(|v| v.to_str().unwrap())
}

/// The request an upstream saw for `path`.
fn seen_at(up: &Upstream, path: &str) -> Seen {
    let seen = up.seen();
    let found: Vec<Seen> = seen.into_iter().filter(|s| s.uri.path() == path).collect();
    assert_eq!(found.len(), 1, "requests for {path}");
    found.into_iter().next().unwrap()
}

// ---------------------------------------------------------------------------------------------------------
// Ordering and Content-ID

#[tokio::test]
async fn replies_come_in_request_order_when_parts_finish_in_reverse() {
    const N: usize = 6;
    // Part i is answered only once part i+1 has been: the upstream finishes them last to first.
    let (up, finished) =
        reverse_order_upstream(N, |i| text(StatusCode::OK, format!("answer {i}"))).await;
    let gw = gateway(&routes(&[("/r/", up.addr)])).await;
    let targets: Vec<String> = (0..N).map(|i| format!("/r/{i}")).collect();
    let reply = within(10, "the batch", gw.post(MP, get_batch("b", &targets))).await;

    let parts = reply.parts();
    assert_eq!(
        *finished.lock().unwrap(),
        (0..N).rev().collect::<Vec<_>>(),
        "the upstream finished the parts last to first"
    );
    assert_eq!(parts.len(), N);
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p.status, StatusCode::OK);
        assert_eq!(p.content_id.as_ref().unwrap().id(), format!("i{i}"));
        assert_eq!(p.body, format!("answer {i}"));
    }
    gw.stop().await;
}

#[tokio::test]
async fn content_ids_are_echoed_in_the_form_they_were_sent() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&routes(&[("/e/", up.addr)])).await;
    let body = concat!(
        "--b\r\nContent-Type: application/http\r\nContent-ID: <a>\r\n\r\nGET /e/0 HTTP/1.1\r\n\r\n\r\n",
        "--b\r\nContent-Type: application/http\r\nContent-ID: b\r\n\r\nGET /e/1 HTTP/1.1\r\n\r\n\r\n",
        "--b\r\nContent-Type: application/http\r\n\r\nGET /e/2 HTTP/1.1\r\n\r\n\r\n",
        "--b\r\nContent-Type: application/http\r\nContent-ID: <uuid +\r\n 12>\r\n\r\nGET /e/3 HTTP/1.1\r\n\r\n\r\n",
        "--b--\r\n",
    );
    let reply = gw.post(MP, body).await;

    let raw: Vec<String> = raw_parts(&reply).iter().map(RawPart::text).collect();
    assert_eq!(raw.len(), 4);
    let expected_heads = [
        "\r\nContent-Type: application/http\r\nContent-ID: <response-a>\r\n\r\nHTTP/1.1 200 OK\r\n",
        "\r\nContent-Type: application/http\r\nContent-ID: response-b\r\n\r\nHTTP/1.1 200 OK\r\n",
        "\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 200 OK\r\n",
        "\r\nContent-Type: application/http\r\nContent-ID: <response-uuid + 12>\r\n\r\nHTTP/1.1 200 OK\r\n",
    ];
    for (i, (part, head)) in raw.iter().zip(expected_heads).enumerate() {
        assert!(part.starts_with(head), "part {i}: {part:?}");
        assert!(
            part.ends_with(&format!("\r\n\r\n/e/{i}\r\n")),
            "part {i}: {part:?}"
        );
    }
    assert!(!raw[2].to_ascii_lowercase().contains("content-id"));

    let ids: Vec<Option<String>> = reply
        .parts()
        .iter()
        .map(|p| p.content_id.as_ref().map(|id| id.header_value()))
        .collect();
    assert_eq!(
        ids,
        [
            Some("<a>".to_owned()),
            Some("b".to_owned()),
            None,
            Some("<uuid + 12>".to_owned())
        ]
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------------------
// Headers

#[tokio::test]
async fn outer_headers_reach_every_part_unless_the_part_overrides_them() {
    let up = upstream(|_| async { text(StatusCode::OK, "ok") }).await;
    let gw = gateway(&routes(&[("/h/", up.addr)])).await;
    let body = batch(&[
        part("p0", "GET /h/0 HTTP/1.1\r\n\r\n"),
        part(
            "p1",
            "GET /h/1 HTTP/1.1\r\nAuthorization: Bearer part-1\r\nHost: evil.example\r\n\r\n",
        ),
        part("p2", "GET /h/2 HTTP/1.1\r\n\r\n"),
    ]);
    let reply = send_raw(
        gw.addr,
        &raw_post(
            "Authorization: Bearer outer\r\nX-Trace: t-1\r\n",
            body.as_bytes(),
        ),
    )
    .await;
    assert!(reply.reply().parts().iter().all(|p| p.status == 200));

    for (path, authorization) in [
        ("/h/0", "Bearer outer"),
        ("/h/1", "Bearer part-1"),
        ("/h/2", "Bearer outer"),
    ] {
        let seen = seen_at(&up, path);
        let all: Vec<_> = seen.headers.get_all("authorization").iter().collect();
        assert_eq!(all, [authorization], "{path}");
        assert_eq!(header(&seen, "x-trace"), Some("t-1"), "{path}");
        assert_eq!(
            header(&seen, "host"),
            Some(up.addr.to_string().as_str()),
            "{path}"
        );
        let xff = header(&seen, "x-forwarded-for").unwrap();
        assert!(xff.contains("127.0.0.1"), "{path}: {xff}");
        assert_eq!(header(&seen, "x-forwarded-proto"), Some("http"), "{path}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn framing_and_hop_by_hop_headers_are_not_forwarded() {
    let up = upstream(|_| async { text(StatusCode::OK, "ok") }).await;
    let gw = gateway(&routes(&[("/h/", up.addr)])).await;
    let body = batch(&[
        part("outer-only", "GET /h/0 HTTP/1.1\r\n\r\n"),
        part(
            "own",
            "GET /h/1 HTTP/1.1\r\nConnection: X-Inner-Secret\r\nX-Inner-Secret: 1\r\nKeep-Alive: timeout=1\r\n\
             TE: trailers\r\nUpgrade: websocket\r\nProxy-Authorization: Basic aW5uZXI=\r\n\
             Proxy-Connection: keep-alive\r\nX-Kept: inner\r\n\r\n",
        ),
    ]);
    let outer = "Connection: keep-alive, X-Outer-Secret\r\nX-Outer-Secret: s\r\nKeep-Alive: timeout=5\r\n\
                 TE: trailers\r\nUpgrade: websocket\r\nProxy-Authorization: Basic b3V0ZXI=\r\nX-Kept: outer\r\n";
    let reply = send_raw(gw.addr, &raw_post(outer, body.as_bytes())).await;
    assert!(reply.reply().parts().iter().all(|p| p.status == 200));

    for (path, kept) in [("/h/0", "outer"), ("/h/1", "inner")] {
        let seen = seen_at(&up, path);
        assert_eq!(header(&seen, "x-kept"), Some(kept), "{path}");
        for name in [
            "connection",
            "keep-alive",
            "te",
            "upgrade",
            "proxy-authorization",
            "proxy-connection",
            "x-outer-secret",
            "x-inner-secret",
            "content-type",
        ] {
            assert_eq!(header(&seen, name), None, "{path} got {name}");
        }
        // A GET part has no body: the batch's own length must not leak into it.
        let length = header(&seen, "content-length");
        assert!(matches!(length, None | Some("0")), "{path}: {length:?}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn hop_by_hop_headers_of_an_upstream_response_stay_out_of_the_reply_part() {
    let up = upstream(|_| async {
        let mut r = text(StatusCode::OK, "ok");
        for (name, value) in [
            ("connection", "x-resp-secret"),
            ("x-resp-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authenticate", "Basic realm=\"up\""),
            ("trailer", "x-checksum"),
            ("x-kept", "yes"),
        ] {
            r.headers_mut().insert(name, value.parse().unwrap());
        }
        r
    })
    .await;
    let gw = gateway(&routes(&[("/h/", up.addr)])).await;
    let reply = gw
        .post(MP, batch(&[part("p", "GET /h/x HTTP/1.1\r\n\r\n")]))
        .await;

    let parts = reply.parts();
    assert_eq!(parts[0].status, 200);
    assert_eq!(parts[0].headers["x-kept"], "yes");
    assert_eq!(parts[0].headers["content-type"], "text/plain");
    for name in [
        "connection",
        "x-resp-secret",
        "keep-alive",
        "proxy-authenticate",
        "trailer",
        "transfer-encoding",
    ] {
        assert!(
            parts[0].headers.get(name).is_none(),
            "reply part has {name}"
        );
    }
    gw.stop().await;
}

/// `prune_headers = true` drops the answer headers that say nothing to a part's reader, on that route only, and
/// above the cache: a cached answer (which needs its `Date`) is served pruned too.
#[tokio::test]
async fn prune_headers_drops_banners_and_dates_on_its_route_only() {
    let up = upstream(|_| async {
        let mut r = text(StatusCode::OK, "ok");
        for (name, value) in [
            ("server", "upstream/1.0"),
            ("x-powered-by", "Express"),
            ("accept-ranges", "bytes"),
            ("cache-control", "max-age=60"),
            ("etag", "\"v1\""),
        ] {
            r.headers_mut().insert(name, value.parse().unwrap());
        }
        r
    })
    .await;
    let toml = format!(
        "[cache]\n{}\nprune_headers = true\ncache = true\n{}",
        routes(&[("/pruned/", up.addr)]),
        routes(&[("/plain/", up.addr)])
    );
    let gw = gateway(&toml).await;
    let reply = gw
        .post(
            MP,
            batch(&[get_part("a", "/pruned/x"), get_part("b", "/plain/x")]),
        )
        .await;
    let again = gw.post(MP, batch(&[get_part("c", "/pruned/x")])).await;
    let parts = [reply.parts(), again.parts()].concat();
    assert_eq!(statuses(&parts), [200, 200, 200]);
    assert!(
        parts[2].headers["cache-status"]
            .to_str()
            .unwrap()
            .contains("hit"),
        "{:?}",
        parts[2].headers
    );
    for part in [&parts[0], &parts[2]] {
        for name in ["date", "server", "x-powered-by", "accept-ranges"] {
            assert!(part.headers.get(name).is_none(), "pruned part has {name}");
        }
        assert_eq!(part.headers["etag"], "\"v1\"");
        assert_eq!(part.headers["cache-control"], "max-age=60");
    }
    for name in ["date", "server", "x-powered-by", "accept-ranges"] {
        assert!(
            parts[1].headers.get(name).is_some(),
            "unpruned part lacks {name}"
        );
    }
    assert_eq!(
        up.seen().len(),
        2,
        "the second /pruned/x came from the cache"
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------------------
// Bodies

#[tokio::test]
async fn post_bodies_arrive_byte_exact_with_or_without_content_length() {
    let up = upstream(|seen| async move {
        let mut r = text(StatusCode::CREATED, format!("got {}", seen.body.len()));
        let location = format!("/things{}", seen.uri.path());
        r.headers_mut()
            .insert("location", location.parse().unwrap());
        r
    })
    .await;
    let gw = gateway(&routes(&[("/p/", up.addr)])).await;
    // Binary, CR and LF inside; the CRLF before the next delimiter is framing, not body.
    let exact: &[u8] = b"line one\r\nline two\n\x00\xff\xfe end";
    let rest_of_part: &[u8] = b"{\"a\":1}\r\n{\"b\":2}";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--b\r\nContent-Type: application/http\r\nContent-ID: <cl>\r\n\r\n\
             POST /p/with-length HTTP/1.1\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            exact.len()
        )
        .as_bytes(),
    );
    body.extend_from_slice(exact);
    body.extend_from_slice(
        b"\r\n--b\r\nContent-Type: application/http\r\nContent-ID: <rest>\r\n\r\n\
          POST /p/without-length\nContent-Type: application/x-ndjson\n\n",
    );
    body.extend_from_slice(rest_of_part);
    body.extend_from_slice(b"\r\n--b--\r\n");
    let reply = gw.post(MP, body).await;

    let with = seen_at(&up, "/p/with-length");
    assert_eq!(with.method, Method::POST);
    assert_eq!(&with.body[..], exact);
    assert_eq!(
        header(&with, "content-type"),
        Some("application/octet-stream")
    );
    let without = seen_at(&up, "/p/without-length");
    assert_eq!(&without.body[..], rest_of_part);
    assert_eq!(
        header(&without, "content-length"),
        Some(rest_of_part.len().to_string().as_str())
    );

    let parts = reply.parts();
    assert_eq!(parts.len(), 2);
    for (p, (path, len)) in parts.iter().zip([
        ("/p/with-length", exact.len()),
        ("/p/without-length", rest_of_part.len()),
    ]) {
        assert_eq!(p.status, StatusCode::CREATED);
        assert_eq!(p.headers["location"], format!("/things{path}"));
        assert_eq!(p.body, format!("got {len}"));
    }
    gw.stop().await;
}

/// A body of `len` bytes whose every position is told apart from its neighbours (so a piece out of place or
/// twice shows).
fn patterned(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn answer_bodies_of_every_size_arrive_byte_exact_plain_and_compressed() {
    // Small ones are copied into the reply; large ones go out as the upstream sent them, piece by piece.
    const SIZES: [usize; 6] = [0, 100, 4 * 1024, 16 * 1024 - 1, 16 * 1024, 300 * 1024 + 7];
    let up = upstream(|seen| async move {
        let len: usize = seen.uri.path().rsplit('/').next().unwrap().parse().unwrap();
        text(StatusCode::OK, patterned(len))
    })
    .await;
    let gw = gateway(&routes(&[("/r/", up.addr)])).await;
    let targets: Vec<String> = SIZES.iter().map(|n| format!("/r/{n}")).collect();
    let check = |reply: &Reply| {
        let parts = reply.parts();
        assert_eq!(parts.len(), SIZES.len());
        for (part, &len) in parts.iter().zip(&SIZES) {
            assert_eq!(part.status, StatusCode::OK);
            assert_eq!(part.headers["content-length"], len.to_string().as_str());
            assert!(
                part.body[..] == patterned(len)[..],
                "the {len}-byte body differs"
            );
        }
    };
    check(&gw.post(MP, get_batch("b", &targets)).await);

    let mut zstd = gw
        .request(
            Method::POST,
            "/batch",
            &[("content-type", MP), ("accept-encoding", "zstd")],
            get_batch("b", &targets).into(),
        )
        .await;
    assert_eq!(zstd.headers["content-encoding"], "zstd");
    zstd.body = zstd::stream::decode_all(&zstd.body[..]).unwrap().into();
    check(&zstd);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------------------
// Per-part errors: the part fails, the batch goes on.

/// Checks that part 1 of 3 failed with `status` and a message containing every one of `says`, and that
/// parts 0 and 2 were served.
fn assert_only_the_middle_part_failed(reply: &Reply, status: u16, says: &[&str]) {
    let parts = reply.parts();
    assert_eq!(parts.len(), 3);
    for i in [0, 2] {
        assert_eq!(parts[i].status, 200, "part {i}");
        assert_eq!(parts[i].body, format!("/ok/{i}"));
    }
    let failed = &parts[1];
    assert_eq!(failed.status, status);
    assert_eq!(failed.content_id.as_ref().unwrap().id(), "p1");
    assert_eq!(failed.headers["content-type"], "application/json");
    let message = part_error(failed);
    for s in says {
        assert!(message.contains(s), "{message:?} should mention {s:?}");
    }
}

fn three_parts(middle: &str) -> String {
    batch(&[
        part("p0", "GET /ok/0 HTTP/1.1\r\n\r\n"),
        part("p1", middle),
        part("p2", "GET /ok/2 HTTP/1.1\r\n\r\n"),
    ])
}

#[tokio::test]
async fn a_part_with_no_route_gets_404_and_nothing_is_sent_for_it() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&routes(&[("/ok/", up.addr)])).await;
    let reply = gw
        .post(MP, three_parts("GET /nowhere/x HTTP/1.1\r\n\r\n"))
        .await;
    assert_only_the_middle_part_failed(&reply, 404, &["part 1", "no route", "/nowhere/x"]);
    assert_eq!(up.seen().len(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn a_part_whose_upstream_is_unreachable_gets_502() {
    let up = echo_upstream(Duration::ZERO).await;
    let dead = dead_addr().await;
    let gw = gateway(&routes(&[("/ok/", up.addr), ("/dead/", dead)])).await;
    let reply = gw
        .post(MP, three_parts("GET /dead/x HTTP/1.1\r\n\r\n"))
        .await;
    assert_only_the_middle_part_failed(&reply, 502, &["part 1", "unreachable", &dead.to_string()]);
    gw.stop().await;
}

#[tokio::test]
async fn a_part_whose_upstream_hangs_past_part_timeout_gets_504() {
    let up = echo_upstream(Duration::ZERO).await;
    let hang = upstream(|_| std::future::pending()).await;
    let config = format!(
        "[limits]\npart_timeout = \"200ms\"\n{}",
        routes(&[("/ok/", up.addr), ("/hang/", hang.addr)])
    );
    let gw = gateway(&config).await;
    let reply = within(
        10,
        "the batch",
        gw.post(MP, three_parts("GET /hang/x HTTP/1.1\r\n\r\n")),
    )
    .await;
    assert_only_the_middle_part_failed(
        &reply,
        504,
        &[
            "part 1",
            &hang.addr.to_string(),
            "did not answer within 200ms",
            "part_timeout",
        ],
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_unparseable_part_gets_400_naming_the_fault() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&routes(&[("/ok/", up.addr)])).await;
    for (request, says) in [
        (
            "GET /ok/x HTTP/2\r\n\r\n",
            &["part 1", "HTTP/2", "not supported"][..],
        ),
        (
            "G(T /ok/x HTTP/1.1\r\n\r\n",
            &["part 1", "G(T", "method"][..],
        ),
        (
            "POST /ok/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            &["part 1", "Transfer-Encoding"][..],
        ),
        (
            "POST /ok/x HTTP/1.1\r\nContent-Length: 50\r\n\r\nshort",
            &["part 1", "Content-Length says 50", "only 5"][..],
        ),
    ] {
        let reply = gw.post(MP, three_parts(request)).await;
        assert_only_the_middle_part_failed(&reply, 400, says);
    }
    assert!(up.seen().iter().all(|s| s.uri.path() != "/ok/x"));
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------------------
// Whole-batch errors: the batch is refused with a JSON body.

#[tokio::test]
async fn a_body_that_is_not_multipart_is_415() {
    let gw = gateway("").await;
    // application/json is a batch too (json_batch.rs); text/xml is neither.
    let reply = gw.post("text/xml", "{}").await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(reply.error_message().contains("not multipart"));
    let reply = gw
        .request(Method::POST, "/batch", &[], Bytes::from_static(b"--b--"))
        .await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(reply.error_message().contains("no Content-Type"));
    gw.stop().await;
}

#[tokio::test]
async fn a_multipart_type_without_boundary_is_400() {
    let gw = gateway("").await;
    let reply = gw.post("multipart/mixed", "--b--\r\n").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.error_message().contains("no boundary parameter"));
    gw.stop().await;
}

#[tokio::test]
async fn a_truncated_body_is_400() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&routes(&[("/ok/", up.addr)])).await;
    let whole = batch(&[part("p0", "GET /ok/0 HTTP/1.1\r\n\r\n")]);
    let truncated = whole.strip_suffix("--b--\r\n").unwrap().to_owned();
    let reply = gw.post(MP, truncated).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply
            .error_message()
            .contains("without the closing delimiter --b--")
    );

    let reply = gw.post(MP, "no delimiter anywhere\r\n").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.error_message().contains("no delimiter line --b"));
    gw.stop().await;
}

#[tokio::test]
async fn more_parts_than_max_parts_is_413_and_exactly_max_parts_is_served() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&format!(
        "[limits]\nmax_parts = 3\n{}",
        routes(&[("/ok/", up.addr)])
    ))
    .await;
    let targets = |n: usize| (0..n).map(|i| format!("/ok/{i}")).collect::<Vec<_>>();

    let reply = gw.post(MP, get_batch("b", &targets(5))).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let message = reply.error_message();
    assert!(message.contains("Received: 5, Limit: 3"), "{message}");

    let parts = gw.post(MP, get_batch("b", &targets(3))).await.parts();
    assert_eq!(parts.len(), 3);
    assert!(parts.iter().all(|p| p.status == 200));
    gw.stop().await;
}

#[tokio::test]
async fn a_declared_content_length_over_max_batch_bytes_is_413_before_the_body() {
    let gw = gateway("[limits]\nmax_batch_bytes = \"1KiB\"\n").await;
    // Only the head is sent: the refusal cannot depend on the body.
    let head = format!(
        "POST /batch HTTP/1.1\r\nHost: gateway.test\r\nContent-Type: {MP}\r\nContent-Length: 2000\r\n\r\n"
    );
    let reply = send_raw(gw.addr, head.as_bytes()).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let message = reply.reply().error_message();
    assert!(message.contains("max_batch_bytes"), "{message}");
    assert!(message.contains("Received: 2000"), "{message}");
    assert!(message.contains("Limit: 1024"), "{message}");
    gw.stop().await;
}

#[tokio::test]
async fn a_chunked_body_growing_past_max_batch_bytes_is_413_while_it_streams() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&format!(
        "[limits]\nmax_batch_bytes = \"1KiB\"\n{}",
        routes(&[("/ok/", up.addr)])
    ))
    .await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /batch HTTP/1.1\r\nHost: gateway.test\r\nContent-Type: {MP}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
        .write_all(&chunk(
            b"--b\r\nContent-Type: application/http\r\n\r\nPOST /ok/upload HTTP/1.1\r\n\r\n",
        ))
        .await
        .unwrap();
    for _ in 0..3 {
        stream.write_all(&chunk(&[b'x'; 512])).await.unwrap();
    }
    // The body is never finished: the answer must come while it is still streaming.
    let reply = within(10, "the 413", read_response(&mut stream)).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let message = reply.reply().error_message();
    assert!(message.contains("max_batch_bytes"), "{message}");
    assert!(message.contains("Limit: 1024"), "{message}");
    assert!(up.seen().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn get_on_the_batch_endpoint_is_405_with_allow_post() {
    let gw = gateway("").await;
    let reply = gw.request(Method::GET, "/batch", &[], Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers["allow"], "POST");
    assert!(reply.error_message().contains("use POST"));
    gw.stop().await;
}

#[tokio::test]
async fn an_unknown_path_is_404_naming_the_batch_endpoint() {
    let gw = gateway("").await;
    let reply = gw
        .request(Method::POST, "/nope", &[("content-type", MP)], Bytes::new())
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let message = reply.error_message();
    assert!(
        message.contains("\"/nope\"") && message.contains("\"/batch\""),
        "{message}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_duplicate_content_id_is_400_naming_it() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&routes(&[("/ok/", up.addr)])).await;
    let body = batch(&[
        part("same", "GET /ok/0 HTTP/1.1\r\n\r\n"),
        part("other", "GET /ok/1 HTTP/1.1\r\n\r\n"),
        part("same", "GET /ok/2 HTTP/1.1\r\n\r\n"),
    ]);
    let reply = gw.post(MP, body).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let message = reply.error_message();
    assert!(
        message.contains("duplicate Content-ID \"<same>\""),
        "{message}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn healthz_is_200() {
    let gw = gateway("").await;
    let reply = gw.request(Method::GET, "/healthz", &[], Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(v["status"], "ok");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------------------
// Concurrency, cancellation, pooling, streaming

#[tokio::test]
async fn the_upstream_never_sees_more_than_concurrency_parts_of_a_batch_at_once() {
    let up = echo_upstream(Duration::from_millis(20)).await;
    let gw = gateway(&format!(
        "[limits]\nconcurrency = 4\n{}",
        routes(&[("/c/", up.addr)])
    ))
    .await;
    let targets: Vec<String> = (0..40).map(|i| format!("/c/{i}")).collect();
    let parts = gw.post(MP, get_batch("b", &targets)).await.parts();
    assert_eq!(parts.len(), 40);
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p.status, 200);
        assert_eq!(p.body, targets[i]);
    }
    let peak = up.peak_concurrency();
    assert!(peak <= 4, "peak {peak} exceeds concurrency 4");
    assert!(peak >= 2, "peak {peak}: parts did not run in parallel");
    gw.stop().await;
}

/// On the paused clock: 100 parts of 50 ms, 16 at a time, take seven rounds (serially, 5 s).
#[tokio::test(start_paused = true)]
async fn a_hundred_parts_of_50ms_run_sixteen_at_a_time() {
    let up = echo_upstream(Duration::from_millis(50)).await;
    let gw = gateway(&format!(
        "[limits]\nconcurrency = 16\n{}",
        routes(&[("/mail/", up.addr)])
    ))
    .await;
    let targets: Vec<String> = (1..=100)
        .map(|i| format!("/mail/v1/messages/{i}"))
        .collect();
    let started = tokio::time::Instant::now();
    let reply = gw.post(MP, get_batch("b", &targets)).await;
    let elapsed = started.elapsed();

    let parts = reply.parts();
    assert_eq!(parts.len(), 100);
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p.status, 200);
        assert_eq!(p.body, targets[i]);
    }
    assert_eq!(up.peak_concurrency(), 16);
    assert_eq!(
        elapsed,
        Duration::from_millis(100_usize.div_ceil(16) as u64 * 50)
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_its_sub_requests() {
    let (started_tx, mut started) = mpsc::unbounded_channel::<String>();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel::<()>();
    let up = upstream(move |seen| {
        let guard = SignalOnDrop(dropped_tx.clone());
        let _ = started_tx.send(seen.uri.path().to_owned());
        async move {
            let _guard = guard;
            std::future::pending().await
        }
    })
    .await;
    // Timeouts far beyond the test's waits: only the disconnect can end these sub-requests.
    let gw = gateway(&format!(
        "[limits]\npart_timeout = \"60s\"\nbatch_timeout = \"120s\"\n{}",
        routes(&[("/hang/", up.addr)])
    ))
    .await;
    let body = batch(&[
        part("p0", "GET /hang/0 HTTP/1.1\r\n\r\n"),
        part("p1", "GET /hang/1 HTTP/1.1\r\n\r\n"),
    ]);
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    client
        .write_all(&raw_post("", body.as_bytes()))
        .await
        .unwrap();
    let mut paths = vec![
        within(5, "the first sub-request", started.recv())
            .await
            .unwrap(),
        within(5, "the second sub-request", started.recv())
            .await
            .unwrap(),
    ];
    paths.sort();
    assert_eq!(paths, ["/hang/0", "/hang/1"]);
    assert!(dropped.try_recv().is_err(), "nothing cancelled yet");

    drop(client);
    for _ in 0..2 {
        within(5, "the upstream handler to be dropped", dropped.recv())
            .await
            .unwrap();
    }
    gw.stop().await;
}

#[tokio::test]
async fn upstream_connections_are_reused_across_parts_and_batches() {
    let up = echo_upstream(Duration::from_millis(5)).await;
    let gw = gateway(&format!(
        "[limits]\nconcurrency = 4\n{}",
        routes(&[("/k/", up.addr)])
    ))
    .await;
    for round in 0..2 {
        let targets: Vec<String> = (0..20).map(|i| format!("/k/{round}/{i}")).collect();
        let parts = gw.post(MP, get_batch("b", &targets)).await.parts();
        assert_eq!(parts.len(), 20);
        assert!(parts.iter().all(|p| p.status == 200));
    }
    assert_eq!(up.seen().len(), 40);
    let connections = up.connection_count();
    assert!(
        connections <= 8,
        "{connections} connections for 40 requests, 4 at a time"
    );
    gw.stop().await;
}

#[tokio::test]
async fn parts_start_before_the_rest_of_the_body_has_arrived() {
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<String>();
    let up = upstream(move |seen| {
        let _ = arrived_tx.send(seen.uri.path().to_owned());
        async move { text(StatusCode::OK, format!("done {}", seen.uri.path())) }
    })
    .await;
    let gw = gateway(&routes(&[("/s/", up.addr)])).await;
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /batch HTTP/1.1\r\nHost: gateway.test\r\nContent-Type: {MP}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    client.write_all(head.as_bytes()).await.unwrap();
    // Part 0 and the delimiter line that ends it; part 1 and the close delimiter are held back.
    client
        .write_all(&chunk(
            b"--b\r\nContent-Type: application/http\r\nContent-ID: <p0>\r\n\r\nGET /s/0 HTTP/1.1\r\n\r\n\r\n--b\r\n",
        ))
        .await
        .unwrap();
    let first = within(5, "part 0 to reach the upstream", arrived.recv())
        .await
        .unwrap();
    assert_eq!(first, "/s/0");

    client
        .write_all(&chunk(
            b"Content-Type: application/http\r\nContent-ID: <p1>\r\n\r\nGET /s/1 HTTP/1.1\r\n\r\n\r\n--b--\r\n",
        ))
        .await
        .unwrap();
    client.write_all(b"0\r\n\r\n").await.unwrap();
    let reply = within(10, "the reply", read_response(&mut client)).await;
    let parts = reply.reply().parts();
    assert_eq!(parts.len(), 2);
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p.status, 200);
        assert_eq!(p.content_id.as_ref().unwrap().id(), format!("p{i}"));
        assert_eq!(p.body, format!("done /s/{i}"));
    }
    gw.stop().await;
}
