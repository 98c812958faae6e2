//! What operators configure and see: `/metrics` (batches, parts by outcome, upstream connection reuse),
//! `batch_timeout`, HTTP/2 routes, header inheritance policy.

use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Method, StatusCode};

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
            .starts_with("application/openmetrics-text")
    );
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    assert_eq!(sample(&text, "batchgate_batches_served_total"), 3);
    assert_eq!(
        metric(
            &text,
            "batchgate_batches_refused_total",
            &[("status", "415")]
        ),
        1
    );
    assert_eq!(
        metric(
            &text,
            "batchgate_parts_total",
            &[("route", "/up/"), ("outcome", "2xx")]
        ),
        60
    );
    assert_eq!(
        metric(
            &text,
            "batchgate_parts_total",
            &[("route", ""), ("outcome", "no_route")]
        ),
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
    let statuses = statuses(&parts);
    assert_eq!(statuses, [200, 504, 200]);
    assert!(
        part_error(&parts[1]).contains("batch_timeout"),
        "{}",
        part_error(&parts[1])
    );
}

/// An HTTP/2-only upstream (prior knowledge): answers with the protocol version it saw.
async fn h2_upstream() -> std::net::SocketAddr {
    use hyper::server::conn::http2;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = format!("{:?} {}", req.version(), req.uri().path());
                        Ok::<_, std::convert::Infallible>(text(StatusCode::OK, body))
                    },
                );
                let _ = http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_route_can_speak_http2_to_its_upstream() {
    let up = h2_upstream().await;
    let gw = gateway(&format!(
        "{}http_version = \"2\"\n",
        routes(&[("/h2/", up)])
    ))
    .await;
    let targets: Vec<String> = (0..10).map(|i| format!("/h2/{i}")).collect();
    let parts = gw
        .post("multipart/mixed; boundary=b", get_batch("b", &targets))
        .await
        .parts();
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p.status, 200);
        assert_eq!(p.body, format!("HTTP/2.0 /h2/{i}"));
    }
    let text = String::from_utf8(
        gw.request(Method::GET, "/metrics", &[], Bytes::new())
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    assert_eq!(
        sample(&text, "batchgate_upstream_connects_total"),
        1,
        "one multiplexed connection"
    );
}

#[tokio::test]
async fn inheritance_policy_and_cookie_stripping_are_configurable() {
    let up = echo_upstream(Duration::ZERO).await;
    let config = format!(
        "[headers]\ninherit_only = [\"authorization\", \"cookie\"]\n{}strip_cookies = true\n{}",
        routes(&[("/private/", up.addr)]),
        routes(&[("/public/", up.addr)])
    );
    let gw = gateway(&config).await;
    let targets = ["/private/1", "/public/2"].map(String::from);
    let reply = gw
        .request(
            Method::POST,
            "/batch",
            &[
                ("content-type", "multipart/mixed; boundary=b"),
                ("authorization", "Bearer t"),
                ("cookie", "session=1"),
                ("x-trace", "abc"),
            ],
            Bytes::from(get_batch("b", &targets)),
        )
        .await;
    assert_eq!(reply.parts().len(), 2);
    let seen = up.seen();
    let by_path = |p: &str| {
        seen.iter()
            .find(|s| s.uri.path() == p)
            .unwrap()
            .headers
            .clone()
    };
    let private = by_path("/private/1");
    let public = by_path("/public/2");
    assert_eq!(private["authorization"], "Bearer t");
    assert!(
        private.get("cookie").is_none(),
        "strip_cookies route gets no Cookie"
    );
    assert_eq!(public["cookie"], "session=1");
    assert!(
        public.get("x-trace").is_none() && private.get("x-trace").is_none(),
        "not in inherit_only"
    );
}
