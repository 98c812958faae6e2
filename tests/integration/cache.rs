//! The HTTP cache (`cache = true` on a route, with `[cache]`) and coalescing (`coalesce`, on by default),
//! over real sockets: a counting upstream behind the gateway, batches and direct requests in front.

use std::net::SocketAddr;
use std::time::Duration;

use batchgate::server::admin::Admin;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;

use crate::support::*;

/// `[cache]` and a route `/mail/` to `upstream` with `cache = true` and the `extra` keys.
fn cached(upstream: SocketAddr, extra: &str) -> String {
    format!(
        "[cache]\n[[routes]]\nprefix = \"/mail/\"\nupstream = \"http://{upstream}\"\ncache = true\n{extra}\n"
    )
}

/// An upstream answering every GET with `body` (the path) and `headers`, and anything else 201 with them.
async fn answering(headers: &'static [(&'static str, &'static str)]) -> Upstream {
    upstream(move |seen| async move {
        let status = if seen.method == Method::GET || seen.method == Method::HEAD {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        let mut response = Response::builder().status(status);
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        response
            .body(Full::new(Bytes::from(seen.uri.path().to_owned())))
            .unwrap()
    })
    .await
}

fn cache_status(part: &batchgate_wire::ReplyPart) -> &str {
    part.headers
        .get("cache-status")
        .map_or("", |v| v.to_str().unwrap())
}

/// The one part of a batch of `request`.
async fn one(gw: &TestGateway, request: &str) -> batchgate_wire::ReplyPart {
    gw.send_parts(&[part("p", request)]).await.remove(0)
}

#[tokio::test(start_paused = true)]
async fn repeats_are_served_from_the_cache_with_a_growing_age_then_revalidated() {
    let up = upstream(|seen| async move {
        let matched = seen
            .headers
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"");
        Response::builder()
            .status(if matched { 304 } else { 200 })
            .header("cache-control", "max-age=60")
            .header("etag", "\"v1\"")
            .body(Full::new(Bytes::from_static(if matched {
                b""
            } else {
                b"inbox"
            })))
            .unwrap()
    })
    .await;
    let gw = gateway(&cached(up.addr, "")).await;
    let first = one(&gw, "GET /mail/inbox HTTP/1.1\r\n").await;
    assert_eq!(cache_status(&first), "batchgate; fwd=uri-miss; stored");
    tokio::time::advance(Duration::from_secs(7)).await;
    let hit = one(&gw, "GET /mail/inbox HTTP/1.1\r\n").await;
    assert_eq!(cache_status(&hit), "batchgate; hit");
    assert_eq!(hit.headers["age"], "7");
    assert_eq!(part_body(&hit), "inbox");
    assert_eq!(up.seen().len(), 1);

    tokio::time::advance(Duration::from_secs(60)).await;
    let stale = one(&gw, "GET /mail/inbox HTTP/1.1\r\n").await;
    assert_eq!(
        cache_status(&stale),
        "batchgate; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(
        (stale.status.as_u16(), part_body(&stale)),
        (200, "inbox".to_owned())
    );
    assert_eq!(up.seen()[1].headers["if-none-match"], "\"v1\"");
    let again = one(&gw, "GET /mail/inbox HTTP/1.1\r\n").await;
    assert_eq!(cache_status(&again), "batchgate; hit");
    assert_eq!(up.seen().len(), 2);

    let text = gw.gateway.metrics_text();
    for (outcome, n) in [("hit", 2), ("miss", 1), ("stale", 1), ("revalidated", 1)] {
        assert_eq!(
            metric(
                &text,
                "batchgate_cache_total",
                &[("route", "/mail/"), ("outcome", outcome)]
            ),
            n,
            "{outcome}"
        );
    }
    assert_eq!(
        metric(
            &text,
            "batchgate_cache_stored_entries_total",
            &[("route", "/mail/")]
        ),
        2
    );
    // The refreshed entry replaced the first: one held now.
    assert_eq!(sample(&text, "batchgate_cache_entries"), 1);
    assert!(sample(&text, "batchgate_cache_bytes") > "/mail/inbox".len() as u64 + 5);
    gw.stop().await;
}

#[tokio::test]
async fn private_no_store_and_other_users_answers_are_never_served_from_the_cache() {
    let up = upstream(|seen| async move {
        let cc = match seen.uri.path() {
            "/mail/private" => "private, max-age=60",
            "/mail/nostore" => "no-store",
            "/mail/public" => "public, max-age=60",
            _ => "max-age=60",
        };
        let who = seen
            .headers
            .get("authorization")
            .map_or("nobody", |v| v.to_str().unwrap())
            .to_owned();
        Response::builder()
            .header("cache-control", cc)
            .header("vary", "accept-language")
            .body(Full::new(Bytes::from(who)))
            .unwrap()
    })
    .await;
    let gw = gateway(&cached(up.addr, "coalesce = false")).await;
    let get = |path: &str, auth: &str| format!("GET {path} HTTP/1.1\r\nAuthorization: {auth}\r\n");
    for request in [
        "GET /mail/private HTTP/1.1\r\n".to_owned(),
        "GET /mail/nostore HTTP/1.1\r\n".to_owned(),
        get("/mail/inbox", "Bearer alice"),
    ] {
        for _ in 0..2 {
            let answer = one(&gw, &request).await;
            assert_eq!(
                cache_status(&answer),
                "batchgate; fwd=uri-miss",
                "{request}"
            );
        }
    }
    assert_eq!(up.seen().len(), 6);
    // Bob never gets Alice's answer.
    assert_eq!(
        part_body(&one(&gw, &get("/mail/inbox", "Bearer bob")).await),
        "Bearer bob"
    );
    // `public` allows storing what an Authorization asked for.
    one(&gw, &get("/mail/public", "Bearer alice")).await;
    let hit = one(&gw, &get("/mail/public", "Bearer alice")).await;
    assert_eq!(cache_status(&hit), "batchgate; hit");
    // Vary: another Accept-Language is another answer.
    let french = one(
        &gw,
        "GET /mail/public HTTP/1.1\r\nAuthorization: Bearer alice\r\nAccept-Language: fr\r\n",
    )
    .await;
    assert_eq!(cache_status(&french), "batchgate; fwd=vary-miss; stored");
    assert_eq!(up.seen().len(), 9);
    gw.stop().await;
}

#[tokio::test]
async fn a_clients_conditional_part_and_a_head_are_answered_from_the_cache() {
    let up = answering(&[("cache-control", "max-age=60"), ("etag", "W/\"7\"")]).await;
    let gw = gateway(&cached(up.addr, "")).await;
    one(&gw, "GET /mail/m/1 HTTP/1.1\r\n").await;
    let parts = gw
        .send_parts(&[
            part(
                "c",
                "GET /mail/m/1 HTTP/1.1\r\nIf-None-Match: \"1\", W/\"7\"\r\n",
            ),
            part("o", "GET /mail/m/1 HTTP/1.1\r\nIf-None-Match: \"8\"\r\n"),
            part("h", "HEAD /mail/m/1 HTTP/1.1\r\n"),
        ])
        .await;
    assert_eq!(statuses(&parts), [304, 200, 200]);
    assert!(parts[0].body.is_empty() && parts[2].body.is_empty());
    assert_eq!(part_body(&parts[1]), "/mail/m/1");
    assert_eq!(parts[2].headers["content-length"], "9");
    assert!(parts.iter().all(|p| cache_status(p) == "batchgate; hit"));
    assert_eq!(up.seen().len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_successful_unsafe_part_invalidates_its_target_location_and_content_location() {
    let up = upstream(|seen| async move {
        let mut response = Response::builder().header("cache-control", "max-age=60");
        if seen.method == Method::POST {
            // The upstream's own view of paths (the route rewrites /mail/ to /api/).
            response = response
                .status(201)
                .header("location", "/api/items/7")
                .header("content-location", "/api/list");
        }
        response
            .body(Full::new(Bytes::from(seen.uri.path().to_owned())))
            .unwrap()
    })
    .await;
    let gw = gateway(&cached(up.addr, "rewrite = \"/api/\"")).await;
    let targets = ["/mail/items", "/mail/items/7", "/mail/list", "/mail/other"];
    for target in targets {
        one(&gw, &format!("GET {target} HTTP/1.1\r\n")).await;
    }
    let posted = one(
        &gw,
        "POST /mail/items HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
    )
    .await;
    assert_eq!(posted.status, 201);
    assert_eq!(cache_status(&posted), "batchgate; fwd=method");
    let mut after = Vec::new();
    for target in targets {
        after.push(cache_status(&one(&gw, &format!("GET {target} HTTP/1.1\r\n")).await).to_owned());
    }
    assert_eq!(
        after,
        [
            "batchgate; fwd=uri-miss; stored",
            "batchgate; fwd=uri-miss; stored",
            "batchgate; fwd=uri-miss; stored",
            "batchgate; hit"
        ]
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_admin_purge_drops_entries_by_client_facing_prefix() {
    let up = answering(&[("cache-control", "max-age=60")]).await;
    let (gw, live) = live_gateway(&cached(up.addr, "rewrite = \"/v1/\"")).await;
    let admin = start_admin(Admin::new(live)).await;
    for target in ["/mail/a/1", "/mail/a/2", "/mail/b/1"] {
        one(&gw, &format!("GET {target} HTTP/1.1\r\n")).await;
    }
    let purge = |body: &'static str, query: &'static str| {
        admin.request(
            Method::POST,
            query,
            &[("content-type", "application/json")],
            Bytes::from_static(body.as_bytes()),
        )
    };
    let reply = purge(r#"{"prefix": "/mail/a/"}"#, "/admin/cache/purge").await;
    assert_eq!(reply.status, 200);
    let purged: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(purged, serde_json::json!({ "purged": 2 }));
    let reply = purge("", "/admin/cache/purge?prefix=%2Fmail%2Fb").await;
    assert_eq!(reply.body, r#"{"purged":1}"#);
    for (body, query, why) in [
        ("{\"prefix\": 3}", "/admin/cache/purge", "JSON"),
        ("{\"prefix\": \"mail\"}", "/admin/cache/purge", "'/'"),
        ("", "/admin/cache/purge", "prefix"),
    ] {
        let reply = purge(body, query).await;
        assert_eq!(reply.status, 400, "{body}");
        assert!(
            reply.error_message().contains(why),
            "{}",
            reply.error_message()
        );
    }
    let again = one(&gw, "GET /mail/a/1 HTTP/1.1\r\n").await;
    assert_eq!(cache_status(&again), "batchgate; fwd=uri-miss; stored");
    let kept_none = one(&gw, "GET /mail/b/1 HTTP/1.1\r\n").await;
    assert_eq!(cache_status(&kept_none), "batchgate; fwd=uri-miss; stored");
    assert_eq!(up.seen().len(), 5);
    one(&gw, "GET /mail/a/1 HTTP/1.1\r\n").await;
    let stats = admin.stats().await;
    let cache = &stats["routes"][0]["cache"];
    assert_eq!(
        (cache["lookups"].as_u64(), cache["hits"].as_u64()),
        (Some(6), Some(1))
    );
    assert!((cache["hit_ratio"].as_f64().unwrap() - 1.0 / 6.0).abs() < 1e-9);
    admin.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn a_direct_request_is_served_from_the_cache() {
    let up = answering(&[("cache-control", "max-age=60")]).await;
    let gw = gateway(&cached(up.addr, "direct = true")).await;
    let first = gw
        .request(Method::GET, "/mail/inbox", &[], Bytes::new())
        .await;
    assert_eq!(
        first.headers["cache-status"],
        "batchgate; fwd=uri-miss; stored"
    );
    let second = gw
        .request(Method::GET, "/mail/inbox", &[], Bytes::new())
        .await;
    assert_eq!(second.status, 200);
    assert_eq!(second.headers["cache-status"], "batchgate; hit");
    assert_eq!(second.body, "/mail/inbox");
    // And a batch part of the same target shares the entry.
    let part = one(&gw, "GET /mail/inbox HTTP/1.1\r\n").await;
    assert_eq!(cache_status(&part), "batchgate; hit");
    assert_eq!(up.seen().len(), 1);
    gw.stop().await;
}

/// 100 parts over 10 targets, all in flight together, make 10 upstream calls without `dedup` or a cache:
/// the upstream holds its answers until all 10 have arrived.
#[tokio::test]
async fn a_batch_repeating_ten_targets_makes_ten_upstream_calls_by_coalescing() {
    let mut held = held_upstream("/t").await;
    // All 100 in flight before any answer: room in bytes for them (a fresh gateway's default `window_bytes`
    // starts 8 parts before the batch's first answer says how large answers are).
    let config = format!(
        "[limits]\nconcurrency = 100\nwindow = 100\nwindow_bytes = \"16MiB\"\n{}",
        routes(&[("/mail/", held.upstream.addr)])
    );
    let gw = gateway(&config).await;
    let targets: Vec<String> = (0..100).map(|i| format!("/mail/t{}", i % 10)).collect();
    let reply = tokio::spawn({
        let url = gw.url("/batch");
        let body = get_batch("b", &targets);
        async move { http_request(&url, Method::POST, &[("content-type", MP)], body.into()).await }
    });
    for _ in 0..10 {
        within(10, "the ten calls", held.arrivals.recv()).await;
    }
    held.release.add_permits(100);
    let parts = within(10, "the batch", reply).await.unwrap().parts();
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(part_body(part), format!("/mail/t{}", i % 10));
    }
    assert_eq!(held.upstream.seen().len(), 10);
    let text = gw.gateway.metrics_text();
    assert_eq!(
        metric(
            &text,
            "batchgate_parts_shared_total",
            &[("route", "/mail/")]
        ),
        90
    );
    gw.stop().await;
}

/// Two batches in flight at once share the call of their common target; another user's does not.
#[tokio::test]
async fn concurrent_batches_share_a_call_but_never_across_authorizations() {
    let mut held = held_upstream("/inbox").await;
    let gw = gateway(&routes(&[("/mail/", held.upstream.addr)])).await;
    let send = |auth: &'static str| {
        let url = gw.url("/batch");
        let body = batch(&[part(
            "i",
            &format!("GET /mail/inbox HTTP/1.1\r\nAuthorization: {auth}\r\n"),
        )]);
        tokio::spawn(async move {
            http_request(&url, Method::POST, &[("content-type", MP)], body.into()).await
        })
    };
    let alice = send("Bearer alice");
    within(10, "alice's call", held.arrivals.recv()).await;
    let alice_again = send("Bearer alice");
    let bob = send("Bearer bob");
    within(10, "bob's call", held.arrivals.recv()).await;
    // Alice's second batch is in flight too: its part waits on the first one's call.
    eventually("alice's second batch to wait", || {
        gw.gateway.sub_requests_in_flight() >= 3
    })
    .await;
    held.release.add_permits(2);
    for reply in [alice, alice_again, bob] {
        let parts = within(10, "a batch", reply).await.unwrap().parts();
        assert_eq!(parts[0].status, 200);
    }
    let seen = held.upstream.seen();
    assert_eq!(seen.len(), 2, "alice's two batches shared one call");
    let mut who: Vec<&str> = seen
        .iter()
        .map(|s| s.headers["authorization"].to_str().unwrap())
        .collect();
    who.sort();
    assert_eq!(who, ["Bearer alice", "Bearer bob"]);
    gw.stop().await;
}

#[tokio::test]
async fn a_route_with_coalesce_off_sends_every_call() {
    let mut held = held_upstream("/inbox").await;
    let config = format!(
        "{}coalesce = false\n",
        routes(&[("/mail/", held.upstream.addr)])
    );
    let gw = gateway(&config).await;
    let reply = tokio::spawn({
        let url = gw.url("/batch");
        let body = get_batch("b", &["/mail/inbox".to_owned(), "/mail/inbox".to_owned()]);
        async move { http_request(&url, Method::POST, &[("content-type", MP)], body.into()).await }
    });
    for _ in 0..2 {
        within(10, "both calls", held.arrivals.recv()).await;
    }
    held.release.add_permits(2);
    assert_eq!(
        statuses(&within(10, "the batch", reply).await.unwrap().parts()),
        [200, 200]
    );
    assert_eq!(held.upstream.seen().len(), 2);
    gw.stop().await;
}

/// A reload that keeps `[cache]` as it was keeps the entries; one that changes it starts an empty cache.
#[tokio::test]
async fn a_reload_keeps_the_cache_unless_its_section_changed() {
    let up = answering(&[("cache-control", "max-age=60")]).await;
    let toml = cached(up.addr, "");
    let (gw, live) = live_gateway(&toml).await;
    let succeed = |toml: &str| {
        let next = batchgate::Gateway::succeeding(
            batchgate::Config::from_toml(toml).unwrap(),
            &live.gateway(),
        )
        .unwrap();
        live.replace(next).unwrap();
    };
    one(&gw, "GET /mail/x HTTP/1.1\r\n").await;
    succeed(&format!("{toml}timeout = \"5s\"\n"));
    assert_eq!(
        cache_status(&one(&gw, "GET /mail/x HTTP/1.1\r\n").await),
        "batchgate; hit"
    );
    succeed(&toml.replace("[cache]\n", "[cache]\nmax_bytes = \"8MiB\"\n"));
    assert_eq!(
        cache_status(&one(&gw, "GET /mail/x HTTP/1.1\r\n").await),
        "batchgate; fwd=uri-miss; stored"
    );
    assert_eq!(up.seen().len(), 2);
    gw.stop().await;
}
