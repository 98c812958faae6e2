//! What operators see and set: the per-client rate limit, `/admin/stats` figures and bottlenecks, the access
//! log's figures and exact metrics after a known workload.

use std::time::Duration;

use crate::support::*;
use http::StatusCode;

/// Three batches of 50 parts against 100 parts/s with a burst of 100: exactly the 50 parts past the burst
/// are 429 parts, with Retry-After; the clock is paused, so no token trickles in meanwhile.
#[tokio::test(start_paused = true)]
async fn a_batch_is_no_way_around_the_rate_limit() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&format!(
        "[rate_limit]\nparts_per_second = 100.0\nburst = 100\n[compression]\nflush_delay = \"0ms\"\n{}",
        routes(&[("/up/", up.addr)])
    ))
    .await;
    let targets: Vec<String> = (0..50).map(|i| format!("/up/{i}")).collect();
    let mut limited = Vec::new();
    for _ in 0..3 {
        let parts = gw
            .post("multipart/mixed; boundary=b", get_batch("b", &targets))
            .await
            .parts();
        assert_eq!(parts.len(), 50);
        let over: Vec<_> = parts
            .iter()
            .filter(|p| p.status == StatusCode::TOO_MANY_REQUESTS)
            .collect();
        for part in &over {
            assert_eq!(part.headers["retry-after"], "1");
            assert!(part_error(part).contains("rate limit"));
        }
        limited.push(over.len());
    }
    assert_eq!(limited, [0, 0, 50]);
    assert_eq!(up.seen().len(), 100, "parts over the limit reach nothing");

    let text = gw
        .request(http::Method::GET, "/metrics", &[], bytes::Bytes::new())
        .await;
    let text = String::from_utf8(text.body.to_vec()).unwrap();
    assert_eq!(
        metric(
            &text,
            "batchgate_parts_total",
            &[("route", "/up/"), ("outcome", "rate_limited")]
        ),
        50
    );
}

/// The upstream sees the batch's trace: every part carries the caller's trace id with a span id of its own.
#[tokio::test]
async fn parts_carry_the_batchs_trace_id_with_their_own_span_ids() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let reply = gw
        .request(
            http::Method::POST,
            "/batch",
            &[
                ("content-type", "multipart/mixed; boundary=b"),
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                ("tracestate", "congo=t61rcWkgMzE"),
            ],
            bytes::Bytes::from(get_batch(
                "b",
                &["/up/1".to_owned(), "/up/2".to_owned(), "/up/3".to_owned()],
            )),
        )
        .await;
    assert_eq!(reply.parts().len(), 3);
    let mut spans = std::collections::HashSet::new();
    for seen in up.seen() {
        let value = seen.headers["traceparent"].to_str().unwrap().to_owned();
        let fields: Vec<&str> = value.split('-').collect();
        assert_eq!(fields[0], "00");
        assert_eq!(fields[1], "4bf92f3577b34da6a3ce929d0e0e4736", "{value}");
        assert_eq!(fields[3], "01");
        assert_ne!(
            fields[2], "00f067aa0ba902b7",
            "the part is a span of its own"
        );
        assert!(
            spans.insert(fields[2].to_owned()),
            "span ids are not shared"
        );
        assert_eq!(seen.headers["tracestate"], "congo=t61rcWkgMzE");
    }
    // Without a traceparent, the batch starts a trace of its own, still one trace for all its parts.
    gw.post(
        "multipart/mixed; boundary=b",
        get_batch("b", &["/up/4".to_owned(), "/up/5".to_owned()]),
    )
    .await;
    let traces: std::collections::HashSet<String> = up.seen()[3..]
        .iter()
        .map(|s| s.headers["traceparent"].to_str().unwrap()[3..35].to_owned())
        .collect();
    assert_eq!(traces.len(), 1);
    assert!(!traces.contains("4bf92f3577b34da6a3ce929d0e0e4736"));
}

/// After a known workload, the metrics are exact: parts by route and outcome, latency histogram counts,
/// upstream errors by kind, batch sizes.
#[tokio::test]
async fn metrics_are_exact_after_a_known_workload() {
    let ok = echo_upstream(Duration::ZERO).await;
    let failing = upstream(|seen| async move {
        let status = if seen.uri.path().ends_with("/missing") {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        text(status, "no")
    })
    .await;
    let dead = dead_addr().await;
    let gw = gateway(&format!(
        "[limits]\npart_timeout = \"200ms\"\n{}",
        routes(&[("/ok/", ok.addr), ("/bad/", failing.addr), ("/dead/", dead)])
    ))
    .await;
    let mut targets: Vec<String> = (0..7).map(|i| format!("/ok/{i}")).collect();
    targets.extend([
        "/bad/x".to_owned(),
        "/bad/missing".to_owned(),
        "/dead/x".to_owned(),
        "/nowhere".to_owned(),
    ]);
    for _ in 0..2 {
        let parts = gw
            .post("multipart/mixed; boundary=b", get_batch("b", &targets))
            .await
            .parts();
        assert_eq!(parts.len(), 11);
    }
    let text = String::from_utf8(
        gw.request(http::Method::GET, "/metrics", &[], bytes::Bytes::new())
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    let parts = |route: &str, outcome: &str| {
        metric(
            &text,
            "batchgate_parts_total",
            &[("route", route), ("outcome", outcome)],
        )
    };
    assert_eq!(parts("/ok/", "2xx"), 14);
    assert_eq!(parts("/bad/", "5xx"), 2);
    assert_eq!(parts("/bad/", "4xx"), 2);
    assert_eq!(parts("/dead/", "connect"), 2);
    assert_eq!(parts("", "no_route"), 2);
    assert_eq!(metric(&text, "batchgate_parts_total", &[]), 22);
    assert_eq!(
        metric(
            &text,
            "batchgate_part_duration_seconds_count",
            &[("route", "/ok/"), ("status", "2xx")]
        ),
        14
    );
    assert_eq!(
        metric(
            &text,
            "batchgate_part_duration_seconds_count",
            &[("route", "/dead/"), ("status", "5xx")]
        ),
        2
    );
    assert_eq!(
        metric(
            &text,
            "batchgate_upstream_errors_total",
            &[("route", "/bad/"), ("kind", "5xx")]
        ),
        2
    );
    assert_eq!(
        metric(
            &text,
            "batchgate_upstream_errors_total",
            &[("route", "/dead/"), ("kind", "connect")]
        ),
        2
    );
    assert_eq!(
        metric(
            &text,
            "batchgate_queue_wait_seconds_count",
            &[("route", "/ok/")]
        ),
        14
    );
    assert_eq!(metric(&text, "batchgate_batch_parts_count", &[]), 2);
    assert_eq!(metric(&text, "batchgate_batch_parts_sum", &[]), 22);
    assert_eq!(metric(&text, "batchgate_batches_served_total", &[]), 2);
    assert_eq!(metric(&text, "batchgate_upstream_requests_total", &[]), 20);
    assert_eq!(metric(&text, "batchgate_sub_requests_in_flight", &[]), 0);
    assert_eq!(
        metric(&text, "batchgate_concurrency_limit", &[("route", "/ok/")]),
        256
    );
}

/// `/admin/stats`' bottleneck detection on live figures: parts queueing for a route's few permits are
/// reported with a recommendation; a healthy route reports none.
#[tokio::test]
async fn a_route_whose_parts_queue_for_permits_is_reported_as_the_bottleneck() {
    let slow = echo_upstream(Duration::from_millis(20)).await;
    let fast = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&format!(
        "[limits]\nmax_inflight_per_upstream = 2\nconcurrency = 16\n{}",
        routes(&[("/slow/", slow.addr), ("/fast/", fast.addr)])
    ))
    .await;
    let slow_parts: Vec<String> = (0..24).map(|i| format!("/slow/{i}")).collect();
    // The healthy route never has more parts at once than its limit: 12 batches of 2.
    for i in 0..12 {
        let pair = [format!("/fast/{i}a"), format!("/fast/{i}b")];
        gw.post("multipart/mixed; boundary=b", get_batch("b", &pair))
            .await;
    }
    gw.post("multipart/mixed; boundary=b", get_batch("b", &slow_parts))
        .await;
    let stats = gw.gateway.stats_json();
    let route = |name: &str| {
        stats["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == name)
            .unwrap()
            .clone()
    };
    let slow = route("/slow/");
    assert_eq!(slow["requests"], 24);
    assert_eq!(slow["bottleneck"]["kind"], "queueing", "{slow}");
    let detail = slow["bottleneck"]["detail"].as_str().unwrap();
    assert!(detail.contains("waited for a permit"), "{detail}");
    assert!(
        slow["bottleneck"]["recommendation"]
            .as_str()
            .unwrap()
            .contains("adaptive_concurrency")
    );
    assert_eq!(route("/fast/")["bottleneck"], serde_json::Value::Null);
    // The last batch's timeline: every part went through every stage, in order.
    let batch = &stats["batches"][0];
    assert_eq!(batch["parts"].as_array().unwrap().len(), 24);
    for part in batch["parts"].as_array().unwrap() {
        let at = |k: &str| part[k].as_f64().unwrap();
        assert!(
            at("queued") <= at("sent") && at("sent") <= at("first_byte"),
            "{part}"
        );
        assert!(
            at("first_byte") <= at("done") && at("done") <= at("written"),
            "{part}"
        );
        assert_eq!(part["status"], 200);
    }
}

/// Retries and ejections are counted per route: a GET to a route whose first upstream answers 503 is retried
/// once on the other, and the failing upstream is ejected after its one failure.
#[tokio::test]
async fn retries_and_ejections_are_counted_by_route() {
    let sick = upstream(|_| async { text(StatusCode::SERVICE_UNAVAILABLE, "down") }).await;
    let good = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&format!(
        "[upstream]\neject_after = 1\n[[routes]]\nprefix = \"/up/\"\n\
         upstreams = [\"http://{}\", \"http://{}\"]\nbalance = \"round_robin\"\nretries = 1\n",
        sick.addr, good.addr
    ))
    .await;
    let parts = gw
        .post(
            "multipart/mixed; boundary=b",
            get_batch("b", &["/up/x".to_owned()]),
        )
        .await
        .parts();
    assert_eq!(parts[0].status, StatusCode::OK);
    assert_eq!(sick.seen().len(), 1, "round robin starts with the sick one");
    let text = String::from_utf8(
        gw.request(http::Method::GET, "/metrics", &[], bytes::Bytes::new())
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    assert_eq!(
        metric(&text, "batchgate_retries_total", &[("route", "/up/")]),
        1
    );
    assert_eq!(
        metric(&text, "batchgate_ejections_total", &[("route", "/up/")]),
        1
    );
}
