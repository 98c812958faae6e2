//! De-duplication inside a batch (`dedup = true` on a route): identical GET/HEAD parts make one upstream
//! call, and each is answered under its own Content-ID.

use std::time::Duration;

use crate::support::*;

/// A route `/mail/` to `upstream` with `dedup = true`.
fn deduped(upstream: std::net::SocketAddr) -> String {
    format!("[[routes]]\nprefix = \"/mail/\"\nupstream = \"http://{upstream}\"\ndedup = true\n")
}

/// 100 GET parts over 10 targets, `/mail/t0` .. `/mail/t9` in turn, ids `<i0>` .. `<i99>`.
fn hundred_over_ten() -> String {
    let targets: Vec<String> = (0..100).map(|i| format!("/mail/t{}", i % 10)).collect();
    get_batch("b", &targets)
}

#[tokio::test]
async fn a_batch_repeating_ten_targets_makes_ten_upstream_calls_and_answers_every_part_in_order() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&deduped(up.addr)).await;
    let parts = within(10, "the batch", gw.post(MP, hundred_over_ten()))
        .await
        .parts();
    assert_eq!(parts.len(), 100);
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(part.content_id.as_ref().unwrap().id(), format!("i{i}"));
        assert_eq!(part.status, 200);
        assert_eq!(part_body(part), format!("/mail/t{}", i % 10));
    }
    let mut seen: Vec<String> = up.seen().iter().map(|s| s.uri.to_string()).collect();
    seen.sort();
    let expected: Vec<String> = (0..10).map(|t| format!("/mail/t{t}")).collect();
    assert_eq!(seen, expected, "one upstream call per target");
    let text = gw.gateway.metrics_text();
    assert_eq!(
        metric(
            &text,
            "batchgate_parts_shared_total",
            &[("route", "/mail/")]
        ),
        90
    );
    assert_eq!(
        metric(
            &text,
            "batchgate_parts_total",
            &[("route", "/mail/"), ("outcome", "2xx")]
        ),
        100
    );
    gw.stop().await;
}

#[tokio::test]
async fn parts_whose_headers_differ_are_not_shared() {
    let up = upstream(|seen| async move {
        let who = seen
            .headers
            .get("authorization")
            .map_or("nobody", |v| v.to_str().unwrap())
            .to_owned();
        text(http::StatusCode::OK, who)
    })
    .await;
    let gw = gateway(&deduped(up.addr)).await;
    let get = |id: &str, auth: &str| {
        part(
            id,
            &format!("GET /mail/inbox HTTP/1.1\r\nAuthorization: {auth}\r\n"),
        )
    };
    let parts = gw
        .send_parts(&[
            get("a1", "Bearer alice"),
            get("b1", "Bearer bob"),
            get("a2", "Bearer alice"),
            get_part("n1", "/mail/inbox"),
        ])
        .await;
    let bodies: Vec<String> = parts.iter().map(part_body).collect();
    assert_eq!(
        bodies,
        ["Bearer alice", "Bearer bob", "Bearer alice", "nobody"]
    );
    assert_eq!(up.seen().len(), 3, "only the two alice parts share a call");
    gw.stop().await;
}

#[tokio::test]
async fn unsafe_parts_and_a_route_without_dedup_make_every_call() {
    let up = echo_upstream(Duration::ZERO).await;
    // Without coalescing too: identical GETs in flight would otherwise share one call.
    let config = format!(
        "{}{}coalesce = false\n",
        deduped(up.addr),
        routes(&[("/off/", up.addr)])
    );
    let gw = gateway(&config).await;
    let parts = gw
        .send_parts(&[
            part("p1", "POST /mail/x HTTP/1.1\r\nContent-Length: 1\r\n\r\na"),
            part("p2", "POST /mail/x HTTP/1.1\r\nContent-Length: 1\r\n\r\na"),
            get_part("o1", "/off/y"),
            get_part("o2", "/off/y"),
        ])
        .await;
    assert_eq!(statuses(&parts), [200, 200, 200, 200]);
    assert_eq!(up.seen().len(), 4);
    gw.stop().await;
}
