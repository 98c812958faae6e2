//! A test of another crate against batchgate: the example mail upstream and a gateway routed to it, both
//! in-process on free ports, and real batches through them with batchgate's Rust client.

use batchgate::testing::{MailUpstream, TestGateway};
use batchgate_client::{BatchBuilder, BatchClient};
use http::StatusCode;

#[tokio::test]
async fn a_batch_reaches_the_mail_upstream_through_the_gateway() {
    let mail = MailUpstream::start().await;
    let gateway = TestGateway::builder()
        .route("/mail/", mail.url())
        .start()
        .await;

    let client = BatchClient::builder(gateway.batch_url()).build().unwrap();
    let mut batch = BatchBuilder::new();
    batch
        .get("unread", "/mail/v1/messages/unread?max=2")
        .unwrap();
    batch.get("m7", "/mail/v1/messages/7").unwrap();
    batch.get("other", "/elsewhere/1").unwrap();
    let parts = client.send(batch).await.unwrap();

    assert_eq!(parts[0].status, StatusCode::OK);
    assert_eq!(&parts[0].body[..], br#"{"ids":["1","2"]}"#);
    assert_eq!(parts[1].status, StatusCode::OK);
    assert!(
        std::str::from_utf8(&parts[1].body)
            .unwrap()
            .contains(r#""id":"7""#)
    );
    // No route for it: the gateway answers that part itself.
    assert_eq!(parts[2].status, StatusCode::NOT_FOUND);
    // Only the two routed parts reached the mail upstream.
    assert_eq!(mail.requests(), 2);
}

#[tokio::test]
async fn a_config_and_a_route_to_any_url() {
    let mail = MailUpstream::start().await;
    let gateway = TestGateway::builder()
        .config_toml("batch_path = \"/api/batch\"\n")
        .route("/inbox/", mail.url())
        .start()
        .await;
    assert_eq!(
        gateway.batch_url(),
        format!("http://{}/api/batch", gateway.addr())
    );

    // The route sends the path as it is: the mail upstream knows no /inbox/ and says so.
    let client = BatchClient::builder(gateway.batch_url()).build().unwrap();
    let mut batch = BatchBuilder::new();
    batch.get("one", "/inbox/1").unwrap();
    let parts = client.send(batch).await.unwrap();
    assert_eq!(parts[0].status, StatusCode::NOT_FOUND);
    assert!(
        std::str::from_utf8(&parts[0].body)
            .unwrap()
            .contains("no such endpoint")
    );
}

#[tokio::test]
async fn stop_closes_both_listeners() {
    let mail = MailUpstream::start().await;
    let gateway = TestGateway::builder()
        .route("/mail/", mail.url())
        .start()
        .await;
    let (gateway_addr, mail_addr) = (gateway.addr(), mail.addr());

    gateway.stop().await;
    mail.stop().await;
    for addr in [gateway_addr, mail_addr] {
        let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{addr}"
        );
    }
}
