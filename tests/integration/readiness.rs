//! `/readyz`: ready while every route has an upstream that is not ejected; `/healthz` stays liveness.

use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Method, StatusCode};

async fn readyz(gw: &TestGateway, method: Method) -> Reply {
    gw.request(method, "/readyz", &[], Bytes::new()).await
}

fn json(reply: &Reply) -> serde_json::Value {
    assert_eq!(reply.headers["content-type"], "application/json");
    serde_json::from_slice(&reply.body).unwrap()
}

#[tokio::test]
async fn a_route_whose_only_upstream_is_ejected_makes_the_gateway_unready() {
    let live = echo_upstream(Duration::ZERO).await;
    let dead = dead_addr().await;
    let gw = gateway(&format!(
        "[upstream]\neject_after = 1\neject_for = \"60s\"\neject_max = \"60s\"\n{}",
        routes(&[("/live/", live.addr), ("/dead/", dead)])
    ))
    .await;
    let r = readyz(&gw, Method::GET).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(json(&r), serde_json::json!({ "status": "ready" }));

    // Parts to the live route keep it ready.
    let reply = gw
        .post(
            MP,
            get_batch("b", &["/live/1".to_owned(), "/live/2".to_owned()]),
        )
        .await;
    assert!(reply.parts().iter().all(|p| p.status == StatusCode::OK));
    assert_eq!(readyz(&gw, Method::GET).await.status, StatusCode::OK);

    // One failed part ejects the dead route's only upstream.
    let reply = gw.post(MP, get_batch("b", &["/dead/1".to_owned()])).await;
    assert_eq!(reply.parts()[0].status, StatusCode::BAD_GATEWAY);
    let r = readyz(&gw, Method::GET).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        json(&r),
        serde_json::json!({ "status": "unready", "routes": ["/dead/"] })
    );
    let head = readyz(&gw, Method::HEAD).await;
    assert_eq!(head.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(head.body.is_empty());

    // Liveness is another matter: the process is fine.
    let health = gw.request(Method::GET, "/healthz", &[], Bytes::new()).await;
    assert_eq!(health.status, StatusCode::OK);
    // And the live route still serves.
    let reply = gw.post(MP, get_batch("b", &["/live/3".to_owned()])).await;
    assert_eq!(reply.parts()[0].status, StatusCode::OK);
    gw.stop().await;
}

#[tokio::test]
async fn readyz_answers_only_get_and_head() {
    let gw = gateway("").await;
    let r = readyz(&gw, Method::GET).await;
    assert_eq!(r.status, StatusCode::OK, "no routes: nothing to wait for");
    let r = readyz(&gw, Method::POST).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    gw.stop().await;
}
