//! What operators see and set: the per-client rate limit, `/admin/stats` figures and bottlenecks, the access
//! log's figures and exact metrics after a known workload.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;

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
