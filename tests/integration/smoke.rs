//! The smallest end-to-end check: the demo mail service behind the gateway, one batch of three GETs.

use crate::support::*;
use std::time::Duration;

#[tokio::test]
async fn demo_batch_round_trip() {
    let up = demo_upstream(Duration::ZERO).await;
    let gw = gateway(&routes(&[("/mail/", up)])).await;
    let targets: Vec<String> = (1..=3).map(|i| format!("/mail/v1/messages/{i}")).collect();
    let reply = gw
        .post("multipart/mixed; boundary=b", get_batch("b", &targets))
        .await;
    let parts = reply.parts();
    assert_eq!(parts.len(), 3);
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p.status, 200);
        assert_eq!(p.content_id.as_ref().unwrap().id(), format!("i{i}"));
        let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["id"], (i + 1).to_string());
    }
    gw.stop().await;
}
