//! Direct mode (`direct = true` on a route): plain requests under the route's prefix are proxied through
//! its stack and answered as ordinary responses.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::support::*;

/// One route `/mail/` to `upstream`, rewritten to `/api/v1/`, with `direct` and the extra route keys given.
fn direct_route(upstream: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "[[routes]]\nprefix = \"/mail/\"\nupstream = \"http://{upstream}\"\nrewrite = \"/api/v1/\"\n\
         direct = true\n{extra}\n"
    )
}

/// The JSON error of a response the gateway wrote itself: its code matches the status.
fn error_of(reply: &Reply) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(v["error"]["code"], reply.status.as_u16(), "{v}");
    assert_eq!(reply.headers["content-type"], "application/json");
    v["error"].clone()
}

#[tokio::test]
async fn get_and_post_reach_the_upstream_rewritten_with_forwarding_headers() {
    let up = upstream(|seen| async move {
        let mut answer = text(StatusCode::CREATED, format!("{} {}", seen.method, seen.uri));
        answer
            .headers_mut()
            .insert("x-upstream", "yes".parse().unwrap());
        answer
    })
    .await;
    let gw = gateway(&direct_route(up.addr, "")).await;

    let get = within(
        10,
        "a direct GET",
        gw.request(
            Method::GET,
            "/mail/messages/./7?fields=id",
            &[
                ("authorization", "Bearer a"),
                ("x-forwarded-for", "6.6.6.6"),
            ],
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(get.status, StatusCode::CREATED);
    assert_eq!(get.body, "GET /api/v1/messages/7?fields=id");
    assert_eq!(get.headers["x-upstream"], "yes");
    assert_eq!(get.headers["content-length"], get.body.len().to_string());

    let post = within(
        10,
        "a direct POST",
        gw.request(
            Method::POST,
            "/mail/messages",
            &[("content-type", "application/json")],
            Bytes::from_static(b"{\"subject\":\"hi\"}"),
        ),
    )
    .await;
    assert_eq!(post.body, "POST /api/v1/messages");

    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].headers["authorization"], "Bearer a");
    // The client's own forwarding header is dropped; the gateway's view of the connection is sent.
    assert_eq!(seen[0].headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen[0].headers["x-forwarded-proto"], "http");
    assert_eq!(seen[0].headers["x-forwarded-host"], gw.addr.to_string());
    assert!(seen[0].headers.contains_key("traceparent"));
    assert_eq!(seen[1].body, "{\"subject\":\"hi\"}");
    assert_eq!(seen[1].headers["content-type"], "application/json");
    gw.stop().await;
}

#[tokio::test]
async fn a_route_without_direct_stays_404_and_the_gateways_own_paths_keep_precedence() {
    let up = echo_upstream(Duration::ZERO).await;
    let config = format!(
        "{}[[routes]]\nprefix = \"/\"\nupstream = \"http://{}\"\ndirect = true\n",
        routes(&[("/files/", up.addr)]),
        up.addr
    );
    let gw = gateway(&config).await;
    let files = gw.request(Method::GET, "/files/a", &[], Bytes::new()).await;
    assert_eq!(files.status, StatusCode::NOT_FOUND, "/files/ is not direct");
    assert!(
        files
            .error_message()
            .contains("no endpoint at \"/files/a\"")
    );
    for path in ["/healthz", "/readyz"] {
        let own = gw.request(Method::GET, path, &[], Bytes::new()).await;
        assert_eq!(own.status, StatusCode::OK, "{path}");
        assert!(
            own.body.starts_with(b"{\"status\""),
            "{path} is the gateway's"
        );
    }
    let batch = gw.request(Method::GET, "/batch", &[], Bytes::new()).await;
    assert_eq!(batch.status, StatusCode::METHOD_NOT_ALLOWED);
    let other = gw.request(Method::GET, "/x", &[], Bytes::new()).await;
    assert_eq!(
        other.body, "/x",
        "the direct catch-all route takes the rest"
    );
    assert_eq!(up.seen().len(), 1, "only /x reached the upstream");
    gw.stop().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let up = upstream(|_| async {
        let mut answer = text(StatusCode::OK, "ok");
        let h = answer.headers_mut();
        h.insert("connection", "x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-authenticate", "Basic".parse().unwrap());
        answer
    })
    .await;
    let gw = gateway(&direct_route(up.addr, "")).await;
    let reply = gw
        .request(
            Method::GET,
            "/mail/x",
            &[
                ("connection", "x-client-hop"),
                ("x-client-hop", "1"),
                ("proxy-authorization", "Basic eA=="),
                ("te", "trailers"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    for name in ["x-secret-hop", "keep-alive", "proxy-authenticate"] {
        assert!(
            !reply.headers.contains_key(name),
            "{name} reached the client"
        );
    }
    let seen = &up.seen()[0];
    for name in ["x-client-hop", "proxy-authorization", "te"] {
        assert!(
            !seen.headers.contains_key(name),
            "{name} reached the upstream"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn an_upstream_down_is_a_502_with_the_part_errors_json() {
    let gw = gateway(&direct_route(dead_addr().await, "")).await;
    let reply = within(
        10,
        "a direct GET",
        gw.request(Method::GET, "/mail/x", &[], Bytes::new()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let error = error_of(&reply);
    assert!(
        error["message"].as_str().unwrap().contains("unreachable"),
        "{error}"
    );
    assert_eq!(error["fault"], "upstream");
    gw.stop().await;
}

#[tokio::test]
async fn an_upstream_past_the_routes_timeout_is_a_504() {
    let hang = upstream(|_| std::future::pending()).await;
    let gw = gateway(&direct_route(hang.addr, "timeout = \"200ms\"")).await;
    let reply = within(
        10,
        "a direct GET",
        gw.request(Method::GET, "/mail/x", &[], Bytes::new()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    let message = error_of(&reply)["message"].as_str().unwrap().to_owned();
    assert!(message.contains("did not answer within 200ms"), "{message}");
    assert!(message.contains("routes[0].timeout"), "{message}");
    gw.stop().await;
}

#[tokio::test]
async fn the_rate_limit_applies_to_direct_requests() {
    let up = echo_upstream(Duration::ZERO).await;
    let config = format!(
        "[rate_limit]\nparts_per_second = 0.001\nburst = 1\n{}",
        direct_route(up.addr, "")
    );
    let gw = gateway(&config).await;
    let first = gw.request(Method::GET, "/mail/a", &[], Bytes::new()).await;
    assert_eq!(first.status, StatusCode::OK);
    let second = gw.request(Method::GET, "/mail/b", &[], Bytes::new()).await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(second.headers.contains_key("retry-after"));
    assert!(
        error_of(&second)["message"]
            .as_str()
            .unwrap()
            .contains("rate_limit.parts_per_second")
    );
    assert_eq!(up.seen().len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_body_over_max_part_bytes_is_refused_with_413() {
    let up = echo_upstream(Duration::ZERO).await;
    let config = format!(
        "[limits]\nmax_part_bytes = 1024\n{}",
        direct_route(up.addr, "")
    );
    let gw = gateway(&config).await;
    let reply = gw
        .request(Method::PUT, "/mail/x", &[], Bytes::from(vec![b'a'; 2000]))
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.error_message().contains("max_part_bytes = 1024"));
    assert!(up.seen().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn direct_requests_are_counted_as_parts_of_their_route_and_on_their_own() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&direct_route(up.addr, "")).await;
    for _ in 0..3 {
        let reply = gw.request(Method::GET, "/mail/x", &[], Bytes::new()).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let text = gw.gateway.metrics_text();
    assert_eq!(
        metric(
            &text,
            "batchgate_direct_requests_total",
            &[("route", "/mail/")]
        ),
        3
    );
    assert_eq!(
        metric(
            &text,
            "batchgate_parts_total",
            &[("route", "/mail/"), ("outcome", "2xx")]
        ),
        3
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_head_keeps_the_upstreams_content_length() {
    let up = upstream(|_| async { text(StatusCode::OK, "hello") }).await;
    let gw = gateway(&direct_route(up.addr, "")).await;
    let reply = gw.request(Method::HEAD, "/mail/x", &[], Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-length"], "5");
    assert!(reply.body.is_empty());
    assert_eq!(up.seen()[0].method, Method::HEAD);
    gw.stop().await;
}
