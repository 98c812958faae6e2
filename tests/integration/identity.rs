//! Who a part counts as, and what it is known by upstream: the rate limit keys a part by the credential it is
//! sent with, by the client a trusted proxy names in any address form, and an IPv6 client by its network; a
//! batch's `Idempotency-Key` is never copied into its parts.

use crate::support::*;
use http::{Method, StatusCode};

/// A rate limit that refills one token in 1000 s: within a test, a spent bucket stays spent.
fn limited(extra: &str, up: std::net::SocketAddr) -> String {
    format!(
        "{extra}\n[rate_limit]\nparts_per_second = 0.001\nburst = 1\n{}",
        routes(&[("/up/", up)])
    )
}

/// One batch of raw parts (`application/http` bodies) with these outer headers; the statuses of its parts.
async fn batch_statuses(gw: &TestGateway, outer: &[(&str, &str)], parts: &[&str]) -> Vec<u16> {
    let parts: Vec<String> = parts
        .iter()
        .enumerate()
        .map(|(i, request)| part(&format!("p{i}"), request))
        .collect();
    let mut headers = vec![("content-type", MP)];
    headers.extend_from_slice(outer);
    let reply = gw
        .request(Method::POST, "/batch", &headers, batch(&parts).into())
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    statuses(&reply.parts())
}

const GET: &str = "GET /up/x HTTP/1.1\r\n\r\n";

fn get_with(auth: &str) -> String {
    format!("GET /up/x HTTP/1.1\r\nAuthorization: {auth}\r\n\r\n")
}

/// `key = "authorization"`: rotating the batch's header is no way around the limit when every part carries
/// the same token; parts that inherit the batch's header are keyed by it; a part sent without any
/// credential is keyed by its client's address.
#[tokio::test]
async fn parts_are_limited_by_the_credential_they_are_sent_with() {
    let up = echo_upstream(std::time::Duration::ZERO).await;
    let gw = gateway(
        &limited("", up.addr).replace("[rate_limit]\n", "[rate_limit]\nkey = \"authorization\"\n"),
    )
    .await;
    let token = get_with("Bearer the-real-one");
    let rotated = |n: usize| format!("Bearer decoy-{n}");
    let run = |outer: String, parts: Vec<String>| {
        let gw = &gw;
        async move {
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
            batch_statuses(gw, &[("authorization", &outer)], &parts).await
        }
    };
    assert_eq!(run(rotated(1), vec![token.clone()]).await, [200]);
    assert_eq!(
        run(rotated(2), vec![token.clone()]).await,
        [429],
        "a new outer header, the same token upstream"
    );
    // Parts without their own header are sent with the batch's, and keyed by it: a new one, a new bucket.
    assert_eq!(
        run(rotated(3), vec![GET.to_owned(), token]).await,
        [200, 429]
    );
    assert_eq!(run(rotated(3), vec![GET.to_owned()]).await, [429]);
    // Sent without any credential: the client's address, one bucket for all such parts.
    let statuses_plain = batch_statuses(&gw, &[], &[GET, GET]).await;
    assert_eq!(statuses_plain, [200, 429]);
    let tokens: Vec<String> = up
        .seen()
        .iter()
        .map(|s| {
            s.headers
                .get("authorization")
                .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        tokens,
        ["Bearer the-real-one", "Bearer decoy-3", "none"],
        "only parts within their key's limit reach the upstream"
    );
}

/// A 429 part says the wait its `Retry-After` header says, in whole seconds.
#[tokio::test]
async fn a_limited_part_says_the_wait_its_header_says() {
    let up = echo_upstream(std::time::Duration::ZERO).await;
    let gw = gateway(&limited("", up.addr)).await;
    let reply = gw
        .post(MP, get_batch("b", &["/up/1".into(), "/up/2".into()]))
        .await;
    let parts = reply.parts();
    assert_eq!(parts[1].status, StatusCode::TOO_MANY_REQUESTS);
    let header = parts[1].headers["retry-after"].to_str().unwrap();
    let message = part_error(&parts[1]);
    assert!(
        message.contains(&format!("retry after {header}s")),
        "Retry-After: {header}, yet: {message}"
    );
}

/// Behind a trusted proxy that writes `ip:port`, `[v6]:port` or `unknown`, the client is the hop the proxy
/// names, or the proxy itself; never an entry left of it, which the client writes as it likes.
#[tokio::test]
async fn a_proxys_hop_in_any_form_names_the_client() {
    let up = echo_upstream(std::time::Duration::ZERO).await;
    let gw = gateway(&limited("trusted_proxies = [\"127.0.0.0/8\"]", up.addr)).await;
    let from = |chain: String| {
        let gw = &gw;
        async move { batch_statuses(gw, &[("x-forwarded-for", &chain)], &[GET]).await[0] }
    };
    let mut decoy = 0;
    let mut forged = |proxy_hop: &str| {
        decoy += 1;
        format!("198.51.100.{decoy}, {proxy_hop}")
    };
    for hop in ["203.0.113.9:4711", "[2001:db8::1]:443", "unknown"] {
        assert_eq!(from(forged(hop)).await, 200, "{hop}: the first batch");
        assert_eq!(
            from(forged(hop)).await,
            429,
            "{hop}: another forged entry left of it is the same client"
        );
    }
    // `unknown` made the proxy (this test's 127.0.0.1) the client: it is now limited, whatever it names.
    assert_eq!(from("203.0.113.77".to_owned()).await, 200);
    assert_eq!(from(forged("garbage!")).await, 429);
    assert_eq!(batch_statuses(&gw, &[], &[GET]).await, [429]);
}

/// IPv6 clients are limited per network: by /64 by default, per address with `ipv6_prefix = 128`.
#[tokio::test]
async fn ipv6_clients_share_their_networks_bucket() {
    let up = echo_upstream(std::time::Duration::ZERO).await;
    for (prefix, second_in_network) in [("", 429), ("ipv6_prefix = 128", 200)] {
        let gw = gateway(
            &limited("trusted_proxies = [\"127.0.0.0/8\"]", up.addr)
                .replace("[rate_limit]\n", &format!("[rate_limit]\n{prefix}\n")),
        )
        .await;
        let from = |client: &'static str| {
            let gw = &gw;
            async move { batch_statuses(gw, &[("x-forwarded-for", client)], &[GET]).await[0] }
        };
        assert_eq!(from("2001:db8:1:2::a").await, 200);
        assert_eq!(
            from("2001:db8:1:2:ffff::b").await,
            second_in_network,
            "{prefix:?}"
        );
        assert_eq!(from("2001:db8:1:3::a").await, 200, "another /64");
        assert_eq!(from("2001:db8:1:2::a").await, 429);
        gw.stop().await;
    }
}

/// A batch's `Idempotency-Key` reaches no part: two POSTs under one key would be one request to an upstream
/// that honours it. A part's own key goes through, and makes the part retryable.
#[tokio::test]
async fn the_batchs_idempotency_key_is_not_copied_into_parts() {
    let unavailable =
        |_: &RawRequest| b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec();
    let (a, b) = (
        recording_upstream(unavailable).await,
        recording_upstream(unavailable).await,
    );
    let gw = gateway(&format!(
        "[[routes]]\nprefix = \"/up/\"\nupstreams = [\"http://{}\", \"http://{}\"]\nretries = 1\n",
        a.addr, b.addr
    ))
    .await;
    let statuses = batch_statuses(
        &gw,
        &[("idempotency-key", "batch-key")],
        &[
            "POST /up/first HTTP/1.1\r\nContent-Length: 1\r\n\r\n1",
            "POST /up/second HTTP/1.1\r\nIdempotency-Key: own-key\r\nContent-Length: 1\r\n\r\n2",
        ],
    )
    .await;
    assert_eq!(statuses, [503, 503]);
    let mut received: Vec<(String, Option<String>)> = a
        .requests()
        .into_iter()
        .chain(b.requests())
        .map(|r| {
            let key = r
                .headers
                .get("idempotency-key")
                .map(|v| v.to_str().unwrap().to_owned());
            (r.target, key)
        })
        .collect();
    received.sort();
    assert_eq!(
        received,
        [
            ("/up/first".to_owned(), None),
            ("/up/second".to_owned(), Some("own-key".to_owned())),
            ("/up/second".to_owned(), Some("own-key".to_owned())),
        ],
        "the keyless POST is sent once; the keyed one is tried on the other upstream"
    );
}
