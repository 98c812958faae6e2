//! CORS on the batch endpoint (`[cors]`), over real loopback sockets: preflights and actual requests from
//! allowed and other origins, wildcard, credentials, errors, and nothing at all without `[cors]`.

use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

const APP: &str = "https://app.example.com";

fn body() -> String {
    get_batch("b", &["/up/a".to_owned(), "/up/b".to_owned()])
}

fn cors_headers(h: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = h
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect();
    names.sort();
    names
}

fn vary(h: &HeaderMap) -> Vec<String> {
    h.get_all("vary")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .collect()
}

async fn preflight(gw: &TestGateway, origin: &str, requested: &str) -> Reply {
    gw.request(
        Method::OPTIONS,
        "/batch",
        &[
            ("origin", origin),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", requested),
        ],
        Bytes::new(),
    )
    .await
}

async fn post_from(gw: &TestGateway, origin: Option<&str>, content_type: &str) -> Reply {
    let mut headers = vec![("content-type", content_type)];
    if let Some(origin) = origin {
        headers.push(("origin", origin));
    }
    gw.request(Method::POST, "/batch", &headers, Bytes::from(body()))
        .await
}

const CREDENTIALED: &str = "[cors]\nallow_origins = [\"https://app.example.com\", \"http://127.0.0.1:8080\"]\n\
allow_credentials = true\nallow_headers = [\"content-type\", \"authorization\"]\n\
expose_headers = [\"x-request-id\", \"retry-after\"]\nmax_age = \"1h\"\n";

#[tokio::test]
async fn an_allowed_origin_gets_its_preflight_and_its_replies_decorated() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&format!("{CREDENTIALED}{}", routes(&[("/up/", up.addr)]))).await;

    let r = preflight(&gw, APP, "content-type,x-not-allowed").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    let h = &r.headers;
    assert_eq!(h["access-control-allow-origin"], APP);
    assert_eq!(h["access-control-allow-methods"], "POST");
    assert_eq!(
        h["access-control-allow-headers"],
        "content-type, authorization"
    );
    assert_eq!(h["access-control-max-age"], "3600");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(
        vary(h),
        [
            "origin",
            "access-control-request-method",
            "access-control-request-headers"
        ]
    );
    assert!(r.body.is_empty());
    assert!(up.seen().is_empty(), "a preflight reaches no upstream");

    // The other allowed origin, written with its port.
    let r = preflight(&gw, "http://127.0.0.1:8080", "content-type").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "http://127.0.0.1:8080"
    );

    // The POST itself.
    let r = post_from(&gw, Some(APP), MP).await;
    assert_eq!(r.parts().len(), 2);
    assert_eq!(r.headers["access-control-allow-origin"], APP);
    assert_eq!(r.headers["access-control-allow-credentials"], "true");
    assert_eq!(
        r.headers["access-control-expose-headers"],
        "x-request-id, retry-after"
    );
    assert!(vary(&r.headers).contains(&"origin".to_owned()));
    assert!(!r.headers.contains_key("access-control-allow-methods"));

    // A refused batch is decorated too, so the page can read the error.
    let r = post_from(&gw, Some(APP), "text/plain").await;
    assert!(r.status.is_client_error(), "{}", r.status);
    r.error_message();
    assert_eq!(r.headers["access-control-allow-origin"], APP);
    assert_eq!(r.headers["access-control-allow-credentials"], "true");
    // And so is a GET, refused with 405.
    let r = gw
        .request(Method::GET, "/batch", &[("origin", APP)], Bytes::new())
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers["access-control-allow-origin"], APP);
    gw.stop().await;
}

/// An origin not listed gets no CORS headers: its preflight is refused with 403 and a JSON error, and a POST
/// it sends anyway is served as a same-origin request would be.
#[tokio::test]
async fn another_origin_gets_no_cors_headers() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&format!("{CREDENTIALED}{}", routes(&[("/up/", up.addr)]))).await;
    for origin in [
        "https://evil.example",
        "http://app.example.com",
        "https://app.example.com:8443",
        "http://127.0.0.1:8081",
        "null",
    ] {
        let r = preflight(&gw, origin, "content-type").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{origin}");
        assert_eq!(cors_headers(&r.headers), Vec::<String>::new(), "{origin}");
        assert!(r.error_message().contains("cors.allow_origins"), "{origin}");

        let r = post_from(&gw, Some(origin), MP).await;
        let parts = r.parts();
        assert_eq!(parts.len(), 2, "{origin}: served as a same-origin request");
        assert_eq!(parts[0].body, "/up/a");
        assert_eq!(cors_headers(&r.headers), Vec::<String>::new(), "{origin}");
    }
    // Without Origin (not a browser's cross-origin request): no CORS headers either.
    let r = post_from(&gw, None, MP).await;
    assert_eq!(r.parts().len(), 2);
    assert_eq!(cors_headers(&r.headers), Vec::<String>::new());
    // An OPTIONS that is not a preflight is not allowed, as before.
    let r = gw
        .request(Method::OPTIONS, "/batch", &[("origin", APP)], Bytes::new())
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    // Other endpoints get no CORS headers.
    let r = gw
        .request(Method::GET, "/healthz", &[("origin", APP)], Bytes::new())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(cors_headers(&r.headers), Vec::<String>::new());
    gw.stop().await;
}

#[tokio::test]
async fn a_wildcard_without_credentials_allows_every_origin_with_a_star() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&format!(
        "[cors]\nallow_origins = [\"*\"]\n{}",
        routes(&[("/up/", up.addr)])
    ))
    .await;
    let r = preflight(&gw, "https://anyone.example", "content-type").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.headers["access-control-allow-origin"], "*");
    // The defaults: the headers pages usually set, and 10 minutes.
    assert_eq!(
        r.headers["access-control-allow-headers"],
        "authorization, content-type"
    );
    assert_eq!(r.headers["access-control-max-age"], "600");
    assert!(!r.headers.contains_key("access-control-allow-credentials"));
    let r = post_from(&gw, Some("https://anyone.example"), MP).await;
    assert_eq!(r.parts().len(), 2);
    assert_eq!(r.headers["access-control-allow-origin"], "*");
    assert_eq!(
        cors_headers(&r.headers),
        ["access-control-allow-origin"],
        "no expose or credentials headers unless configured"
    );
    gw.stop().await;
}

/// Without `[cors]` nothing changes: a preflight is an OPTIONS, refused with 405, and no reply says CORS.
#[tokio::test]
async fn without_cors_nothing_changes() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let r = preflight(&gw, APP, "content-type").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers["allow"], "POST");
    assert_eq!(cors_headers(&r.headers), Vec::<String>::new());
    let r = post_from(&gw, Some(APP), MP).await;
    assert_eq!(r.parts().len(), 2);
    assert_eq!(cors_headers(&r.headers), Vec::<String>::new());
    assert!(!vary(&r.headers).contains(&"origin".to_owned()));
    gw.stop().await;
}

/// The CORS rules follow a reload.
#[tokio::test]
async fn a_reload_changes_the_allowed_origins() {
    let up = echo_upstream(Duration::ZERO).await;
    let config = |origin: &str| {
        format!(
            "[cors]\nallow_origins = [\"{origin}\"]\n{}",
            routes(&[("/up/", up.addr)])
        )
    };
    let (gw, live) = live_gateway(&config(APP)).await;
    let other = "https://other.example";
    assert_eq!(
        preflight(&gw, other, "content-type").await.status,
        StatusCode::FORBIDDEN
    );
    live.replace(build_gateway(&config(other))).unwrap();
    let r = preflight(&gw, other, "content-type").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.headers["access-control-allow-origin"], other);
    assert_eq!(
        preflight(&gw, APP, "content-type").await.status,
        StatusCode::FORBIDDEN
    );
    gw.stop().await;
}
