//! What operators see: `/metrics` counts batches, parts by outcome, and how well upstream connections are
//! reused; `batch_timeout` bounds a whole batch.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use support::*;

/// The value of one sample line, e.g. `batchgate_parts_total{outcome="ok"}`.
fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

#[tokio::test]
async fn metrics_count_batches_parts_and_connection_reuse() {
    let up = echo_upstream(Duration::from_millis(5)).await;
    let gw = gateway(&format!(
        "[limits]\nconcurrency = 4\n{}",
        routes(&[("/up/", up.addr)])
    ))
    .await;
    let mut targets: Vec<String> = (0..20).map(|i| format!("/up/{i}")).collect();
    for _ in 0..2 {
        assert_eq!(
            gw.post("multipart/mixed; boundary=b", get_batch("b", &targets))
                .await
                .parts()
                .len(),
            20
        );
    }
    targets.push("/nowhere".into());
    let parts = gw
        .post("multipart/mixed; boundary=b", get_batch("b", &targets))
        .await
        .parts();
    assert_eq!(parts.last().unwrap().status, StatusCode::NOT_FOUND);
    assert_eq!(
        gw.post("text/plain", "x").await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );

    let reply = gw.request(Method::GET, "/metrics", &[], Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    assert_eq!(sample(&text, "batchgate_batches_served_total"), 3);
    assert_eq!(
        sample(&text, "batchgate_batches_refused_total{status=\"415\"}"),
        1
    );
    assert_eq!(sample(&text, "batchgate_parts_total{outcome=\"ok\"}"), 60);
    assert_eq!(
        sample(&text, "batchgate_parts_total{outcome=\"no_route\"}"),
        1
    );
    assert_eq!(sample(&text, "batchgate_upstream_requests_total"), 60);
    let connects = sample(&text, "batchgate_upstream_connects_total");
    assert_eq!(
        connects as usize,
        up.connection_count(),
        "every connection the upstream saw is counted"
    );
    assert!(
        connects <= 12,
        "60 requests over at most 12 connections, got {connects}"
    );
    assert_eq!(sample(&text, "batchgate_sub_requests_in_flight"), 0);
}

#[tokio::test]
async fn batch_timeout_answers_what_is_late_with_504_parts() {
    let fast = echo_upstream(Duration::ZERO).await;
    let slow = echo_upstream(Duration::from_secs(30)).await;
    let config = format!(
        "[limits]\nbatch_timeout = \"300ms\"\npart_timeout = \"60s\"\n{}",
        routes(&[("/fast/", fast.addr), ("/slow/", slow.addr)])
    );
    let gw = gateway(&config).await;
    let targets = ["/fast/1", "/slow/2", "/fast/3"].map(String::from);
    let parts = gw
        .post("multipart/mixed; boundary=b", get_batch("b", &targets))
        .await
        .parts();
    let statuses: Vec<u16> = parts.iter().map(|p| p.status.as_u16()).collect();
    assert_eq!(statuses, [200, 504, 200]);
    assert!(
        part_error(&parts[1]).contains("batch_timeout"),
        "{}",
        part_error(&parts[1])
    );
}
