//! JSON batches (Microsoft Graph, OData 4.01) over real sockets: order, ids, `dependsOn` and 424 chains,
//! refusals with their offset or path, body encodings both ways, streaming, and `Accept` choosing the
//! reply's format.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::support::*;

const JSON: &str = "application/json";

/// POSTs a JSON batch (and extra headers).
async fn post_json(gw: &TestGateway, body: impl Into<Bytes>, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("content-type", JSON)];
    all.extend_from_slice(headers);
    within(
        10,
        "the batch",
        gw.request(Method::POST, "/batch", &all, body.into()),
    )
    .await
}

/// The `responses` of a 200 JSON reply.
fn responses(reply: &Reply) -> Vec<Value> {
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.headers["content-type"], JSON);
    let v: Value = serde_json::from_slice(&reply.body).unwrap();
    v["responses"].as_array().unwrap().clone()
}

/// A refused batch's JSON error.
fn refusal(reply: &Reply, status: StatusCode) -> Value {
    assert_eq!(
        reply.status,
        status,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let v: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(v["error"]["code"], status.as_u16());
    v["error"].clone()
}

fn ids(responses: &[Value]) -> Vec<String> {
    responses
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn statuses(responses: &[Value]) -> Vec<u64> {
    responses
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect()
}

fn paths(up: &Upstream) -> Vec<String> {
    up.seen().iter().map(|s| s.uri.path().to_owned()).collect()
}

/// An upstream that answers each request with its own body and content type; `/status/N` answers N.
async fn mirror() -> Upstream {
    upstream(|seen| async move {
        let status = seen
            .uri
            .path()
            .strip_prefix("/up/status/")
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        let mut response = http::Response::new(Full::new(seen.body.clone()));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(ct) = seen.headers.get("content-type") {
            response.headers_mut().insert("content-type", ct.clone());
        }
        response
            .headers_mut()
            .insert("X-Seen-Path", seen.uri.path().parse().unwrap());
        response
    })
    .await
}

#[tokio::test]
async fn answers_come_in_request_order_with_ids_statuses_and_lower_case_headers() {
    const N: usize = 3;
    // Request i is answered only once request i+1 has been: the upstream finishes them last to first.
    let (up, finished) = reverse_order_upstream(N, |i| {
        let mut response = text(StatusCode::OK, format!("{{\"n\":{i}}}"));
        response
            .headers_mut()
            .insert("Content-Type", "application/json".parse().unwrap());
        response
    })
    .await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let body = json!({"requests": [
        {"id": "a", "method": "get", "url": "/up/0"},
        {"id": "b", "method": "GET", "url": "/up/1"},
        {"id": "c", "method": "Get", "url": "up/2"},
    ]});
    let responses = responses(&post_json(&gw, body.to_string(), &[]).await);
    assert_eq!(
        *finished.lock().unwrap(),
        [2, 1, 0],
        "finished last to first"
    );
    assert_eq!(ids(&responses), ["a", "b", "c"]);
    assert_eq!(statuses(&responses), [200, 200, 200]);
    for (n, response) in responses.iter().enumerate() {
        assert_eq!(
            response["body"],
            json!({ "n": n }),
            "a JSON body is a JSON value"
        );
        let headers = response["headers"].as_object().unwrap();
        assert_eq!(headers["content-type"], JSON);
        assert!(
            headers.keys().all(|k| k == &k.to_lowercase()),
            "{headers:?}"
        );
        assert!(!headers.contains_key("content-length"));
    }
}

#[tokio::test]
async fn a_dependent_request_is_sent_only_after_its_dependency_succeeded() {
    let HeldUpstream {
        upstream: up,
        release,
        mut arrivals,
    } = held_upstream("/held/").await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let body = json!({"requests": [
        {"id": "1", "method": "POST", "url": "/up/held/create", "body": {"subject": "hi"}},
        {"id": "2", "method": "GET", "url": "/up/after", "dependsOn": ["1"]},
        {"id": "3", "method": "GET", "url": "/up/free"},
    ]});
    let addr = gw.addr;
    let reply = tokio::spawn(async move {
        http_request(
            &format!("http://{addr}/batch"),
            Method::POST,
            &[("content-type", JSON)],
            body.to_string().into(),
        )
        .await
    });
    within(10, "the held request", arrivals.recv())
        .await
        .unwrap();
    eventually("the independent request ran meanwhile", || {
        paths(&up).contains(&"/up/free".to_owned())
    })
    .await;
    assert!(
        !paths(&up).contains(&"/up/after".to_owned()),
        "the dependent waits"
    );
    release.add_permits(1);
    let responses = responses(&within(10, "the reply", reply).await.unwrap());
    assert_eq!(statuses(&responses), [200, 200, 200]);
    assert_eq!(
        paths(&up).last().unwrap(),
        "/up/after",
        "sent last, after its dependency"
    );
}

#[tokio::test]
async fn a_failed_dependency_answers_424_down_the_chain_and_nothing_of_it_is_sent() {
    let up = mirror().await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let body = json!({"requests": [
        {"id": "1", "method": "GET", "url": "/up/status/404"},
        {"id": "2", "method": "DELETE", "url": "/up/two", "dependsOn": ["1"]},
        {"id": "3", "method": "GET", "url": "/up/three", "dependsOn": ["2"]},
        {"id": "4", "method": "GET", "url": "/up/four"},
        {"id": "5", "method": "GET", "url": "/up/five", "dependsOn": ["4", "3"]},
        {"id": "6", "method": "GET", "url": "/up/six", "dependsOn": ["4"]},
    ]});
    let responses = responses(&post_json(&gw, body.to_string(), &[]).await);
    assert_eq!(statuses(&responses), [404, 424, 424, 200, 424, 200]);
    assert_eq!(responses[1]["headers"]["content-type"], JSON);
    let message = responses[2]["body"]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("part 1") && message.contains("424"),
        "{message}"
    );
    let mut seen = paths(&up);
    seen.sort();
    assert_eq!(seen, ["/up/four", "/up/six", "/up/status/404"]);
}

#[tokio::test]
async fn forward_references_cycles_and_duplicate_ids_refuse_the_batch_naming_the_field() {
    let up = mirror().await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let cases = [
        (
            json!({"requests": [
                {"id": "1", "method": "POST", "url": "/up/a", "dependsOn": ["2"]},
                {"id": "2", "method": "POST", "url": "/up/b"},
            ]}),
            "requests[0].dependsOn[0]",
        ),
        (
            json!({"requests": [
                {"id": "1", "method": "POST", "url": "/up/a", "dependsOn": ["2"]},
                {"id": "2", "method": "POST", "url": "/up/b", "dependsOn": ["1"]},
            ]}),
            "requests[0].dependsOn[0]",
        ),
        (
            json!({"requests": [
                {"id": "1", "method": "POST", "url": "/up/a", "dependsOn": ["1"]},
            ]}),
            "requests[0].dependsOn[0]",
        ),
        (
            json!({"requests": [
                {"id": "Abc", "method": "POST", "url": "/up/a"},
                {"id": "aBC", "method": "POST", "url": "/up/b"},
            ]}),
            "requests[1].id",
        ),
    ];
    for (body, path) in cases {
        let error = refusal(
            &post_json(&gw, body.to_string(), &[]).await,
            StatusCode::BAD_REQUEST,
        );
        assert_eq!(error["path"], path, "{error}");
        assert!(
            error["message"].as_str().unwrap().starts_with(path),
            "{error}"
        );
    }
    assert!(
        up.seen().is_empty(),
        "a refused batch sends nothing with side effects"
    );
}

#[tokio::test]
async fn wrong_fields_are_refused_with_their_json_path_and_malformed_json_with_its_offset() {
    let up = mirror().await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let good = r#"{"id":"1","method":"POST","url":"/up/a"}"#;
    let cases = [
        (
            format!(r#"{{"requests":[{good},{{"id":"2","url":"/up/b"}}]}}"#),
            "requests[1].method",
        ),
        (
            format!(
                r#"{{"requests":[{good},{{"id":"2","method":"GET","url":"/up/b"}},{{"id":"3","method":7,"url":"/x"}}]}}"#
            ),
            "requests[2].method",
        ),
        (
            format!(r#"{{"requests":[{good},{{"id":2,"method":"GET","url":"/up/b"}}]}}"#),
            "requests[1].id",
        ),
        (
            format!(
                r#"{{"requests":[{good},{{"id":"2","method":"GET","url":"/up/b","headers":{{"x":1}}}}]}}"#
            ),
            "requests[1].headers.x",
        ),
        (
            format!(
                r#"{{"requests":[{good},{{"id":"2","method":"GET","url":"/up/b","atomicityGroup":"g"}}]}}"#
            ),
            "requests[1].atomicityGroup",
        ),
        (
            format!(
                r#"{{"requests":[{good},{{"id":"2","method":"GET","url":"/up/b","if":"$1"}}]}}"#
            ),
            "requests[1].if",
        ),
        (
            format!(
                r#"{{"requests":[{good},{{"id":"2","method":"PUT","url":"/up/b","headers":{{"content-type":"image/png"}},"body":"not base64!"}}]}}"#
            ),
            "requests[1].body",
        ),
        (format!(r#"{{"requests":[{good},3]}}"#), "requests[1]"),
        (r#"{"requests":{}}"#.to_owned(), "requests"),
    ];
    for (body, path) in cases {
        let error = refusal(
            &post_json(&gw, body.clone(), &[]).await,
            StatusCode::BAD_REQUEST,
        );
        assert_eq!(error["path"], path, "{body}: {error}");
    }
    let atomic = r#"{"requests":[{"id":"1","method":"GET","url":"/up/a","atomicityGroup":"g"}]}"#;
    let message = refusal(&post_json(&gw, atomic, &[]).await, StatusCode::BAD_REQUEST)["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("different upstreams"), "{message}");

    // Malformed JSON: the offset is the byte where it goes wrong, counted in the whole body.
    let prefix = format!(r#"{{"requests":[{good}, {{"id":"2","method":"GET","url":"/up/b","#);
    let bad = format!("{prefix}?}}]}}");
    let error = refusal(&post_json(&gw, bad, &[]).await, StatusCode::BAD_REQUEST);
    assert_eq!(error["offset"], prefix.len(), "{error}");
    let trailing = format!(r#"{{"requests":[{good}]}} x"#);
    let error = refusal(
        &post_json(&gw, trailing.clone(), &[]).await,
        StatusCode::BAD_REQUEST,
    );
    assert_eq!(error["offset"], trailing.len() - 1, "{error}");
    let missing = format!(r#"{{"requests":[{good}] "#);
    let error = refusal(
        &post_json(&gw, missing.clone(), &[]).await,
        StatusCode::BAD_REQUEST,
    );
    assert_eq!(error["offset"], missing.len(), "{error}");
    let no_requests = refusal(&post_json(&gw, "{}", &[]).await, StatusCode::BAD_REQUEST);
    assert!(
        no_requests["message"]
            .as_str()
            .unwrap()
            .contains("requests")
    );
    assert!(up.seen().is_empty(), "no POST of a refused batch ran");
}

#[tokio::test]
async fn a_batch_refused_at_its_end_has_run_no_request_with_side_effects() {
    let up = mirror().await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let body = r#"{"requests":[
        {"id":"1","method":"POST","url":"/up/create","body":{"a":1}},
        {"id":"2","method":"GET","url":"/up/read"},
        {"id":"3","method":"DELETE","url":"/up/remove"}
    ]"#;
    let error = refusal(&post_json(&gw, body, &[]).await, StatusCode::BAD_REQUEST);
    assert_eq!(error["offset"], body.len(), "{error}");
    assert!(
        up.seen().iter().all(|s| s.method == Method::GET),
        "only safe requests may have run: {:?}",
        paths(&up)
    );
}

#[tokio::test]
async fn every_body_encoding_goes_upstream_decoded_and_comes_back_encoded() {
    let up = mirror().await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let binary: Vec<u8> = (0..=255u8).rev().chain(0..=255u8).collect();
    // The JSON body keeps its own spacing: it goes upstream as the bytes it was.
    let raw_json = r#"{ "subject" : "hi",   "to": ["a@b", "c@d"], "n": 1.50 }"#;
    let body = format!(
        r#"{{"requests":[
        {{"id":"json","method":"POST","url":"/up/json","headers":{{"Content-Type":"application/json"}},"body":{raw_json}}},
        {{"id":"text","method":"PUT","url":"/up/text","headers":{{"content-type":"text/plain; charset=utf-8"}},"body":"héllo\nworld \"q\""}},
        {{"id":"binary","method":"PUT","url":"/up/binary","headers":{{"content-type":"application/octet-stream"}},"body":"{}"}},
        {{"id":"standard","method":"PUT","url":"/up/standard","headers":{{"content-type":"image/png"}},"body":"{}"}},
        {{"id":"implied","method":"PATCH","url":"/up/implied","body":[1,2]}},
        {{"id":"none","method":"GET","url":"/up/none"}}
    ]}}"#,
        URL_SAFE_NO_PAD.encode(&binary),
        base64::engine::general_purpose::STANDARD.encode(&binary),
    );
    let responses = responses(&post_json(&gw, body, &[]).await);
    let seen = up.seen();
    let at = |path: &str| seen.iter().find(|s| s.uri.path() == path).unwrap().clone();
    assert_eq!(at("/up/json").body, raw_json.as_bytes());
    assert_eq!(at("/up/text").body, "héllo\nworld \"q\"".as_bytes());
    assert_eq!(at("/up/binary").body, binary);
    assert_eq!(at("/up/standard").body, binary);
    assert_eq!(at("/up/implied").body, "[1,2]".as_bytes());
    assert_eq!(at("/up/implied").headers["content-type"], JSON);
    assert!(at("/up/none").body.is_empty());

    assert_eq!(
        responses[0]["body"],
        serde_json::from_str::<Value>(raw_json).unwrap()
    );
    assert_eq!(responses[1]["body"], "héllo\nworld \"q\"");
    for i in [2, 3] {
        let encoded = responses[i]["body"].as_str().unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(encoded).unwrap(),
            binary,
            "byte-exact"
        );
    }
    assert_eq!(responses[4]["body"], json!([1, 2]));
    assert!(
        responses[5].get("body").is_none(),
        "an empty body is left out"
    );
}

#[tokio::test]
async fn a_json_content_type_whose_body_is_not_json_comes_back_as_base64url() {
    let up = upstream(|_| async {
        let mut response = text(StatusCode::OK, "not { json");
        response
            .headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        response
    })
    .await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let body = json!({"requests": [{"id": "1", "method": "GET", "url": "/up/x"}]});
    let responses = responses(&post_json(&gw, body.to_string(), &[]).await);
    let encoded = responses[0]["body"].as_str().unwrap();
    assert_eq!(URL_SAFE_NO_PAD.decode(encoded).unwrap(), b"not { json");
}

#[tokio::test]
async fn a_large_json_body_comes_back_as_the_upstream_sent_it() {
    let big: String = serde_json::to_string(&vec!["0123456789abcdef"; 4096]).unwrap();
    let sent = big.clone();
    let up = upstream(move |_| {
        let big = sent.clone();
        async move {
            let mut response = text(StatusCode::OK, big);
            response
                .headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            response
        }
    })
    .await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let body = json!({"requests": [
        {"id": "1", "method": "GET", "url": "/up/big"},
        {"id": "2", "method": "GET", "url": "/up/big"},
    ]});
    let reply = post_json(&gw, body.to_string(), &[]).await;
    let responses = responses(&reply);
    assert_eq!(responses.len(), 2);
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    assert_eq!(
        text.matches(&big).count(),
        2,
        "inlined as sent, byte for byte"
    );
}

#[tokio::test]
async fn the_first_answer_reaches_the_client_before_a_slow_last_request_finishes() {
    let HeldUpstream {
        upstream: up,
        release,
        ..
    } = held_upstream("/held/").await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let body = json!({"requests": [
        {"id": "fast", "method": "GET", "url": "/up/fast"},
        {"id": "slow", "method": "GET", "url": "/up/held/slow"},
    ]});
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::post(gw.url("/batch"))
        .header("content-type", JSON)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = within(10, "the reply head", client.request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains(r#""id":"fast""#)
        || !String::from_utf8_lossy(&got).contains("/up/fast\"}")
    {
        let frame = within(10, "the first answer", body.frame())
            .await
            .expect("the reply goes on")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            got.extend_from_slice(&data);
        }
    }
    assert!(
        !String::from_utf8_lossy(&got).contains("slow\""),
        "the slow request is still held"
    );
    release.add_permits(1);
    let rest = within(10, "the rest", body.collect())
        .await
        .unwrap()
        .to_bytes();
    got.extend_from_slice(&rest);
    let v: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(ids(v["responses"].as_array().unwrap()), ["fast", "slow"]);
}

#[tokio::test]
async fn accept_chooses_the_reply_format_both_ways() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;

    // JSON in, multipart out: the ids become Content-IDs.
    let body = json!({"requests": [
        {"id": "one", "method": "GET", "url": "/up/1"},
        {"id": "two", "method": "GET", "url": "/up/2"},
    ]});
    let reply = post_json(&gw, body.to_string(), &[("accept", "multipart/mixed")]).await;
    let parts = reply.parts();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].content_id.as_ref().unwrap().id(), "one");
    assert_eq!(parts[1].body, "/up/2");

    // Multipart in, JSON out: the Content-IDs become ids; a part without one is named by its position.
    let multipart = format!(
        "{}--b\r\nContent-Type: application/http\r\n\r\nGET /up/2 HTTP/1.1\r\n\r\n--b--\r\n",
        part("first", "GET /up/1 HTTP/1.1\r\n"),
    );
    let reply = gw
        .request(
            Method::POST,
            "/batch",
            &[("content-type", MP), ("accept", "application/json")],
            multipart.clone().into(),
        )
        .await;
    let responses = responses(&reply);
    assert_eq!(ids(&responses), ["first", "2"]);
    assert_eq!(responses[1]["body"], "/up/2");

    // Without Accept, each gets its own format back.
    let reply = gw.post(MP, multipart).await;
    assert_eq!(reply.parts().len(), 2);
}

#[tokio::test]
async fn limits_apply_to_json_batches_as_to_multipart_ones() {
    let up = mirror().await;
    let toml = format!(
        "[limits]\nmax_parts = 2\nmax_part_bytes = 200\n{}",
        routes(&[("/up/", up.addr)])
    );
    let gw = gateway(&toml).await;
    let request = |i: usize| json!({"id": i.to_string(), "method": "GET", "url": "/up/x"});
    let three = json!({"requests": [request(1), request(2), request(3)]});
    let error_ = refusal(
        &post_json(&gw, three.to_string(), &[]).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    );
    assert!(
        error_["message"]
            .as_str()
            .unwrap()
            .contains("Received: 3, Limit: 2")
    );
    let two = json!({"requests": [request(1), request(2)]});
    assert_eq!(
        responses(&post_json(&gw, two.to_string(), &[]).await).len(),
        2
    );
    let large = json!({"requests": [request(1), {"id": "2", "method": "POST", "url": "/up/x",
        "body": {"text": "x".repeat(300)}}]});
    let error_ = refusal(
        &post_json(&gw, large.to_string(), &[]).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    );
    assert_eq!(error_["path"], "requests[1]");
    // A route refusal is the part's, not the batch's, as in multipart.
    let unrouted =
        json!({"requests": [request(1), {"id": "2", "method": "GET", "url": "/nowhere"}]});
    let responses = responses(&post_json(&gw, unrouted.to_string(), &[]).await);
    assert_eq!(statuses(&responses), [200, 404]);
}

#[tokio::test]
async fn metrics_count_batches_by_format() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let body = json!({"requests": [{"id": "1", "method": "GET", "url": "/up/1"}]});
    responses(&post_json(&gw, body.to_string(), &[]).await);
    post_json(&gw, body.to_string(), &[("accept", "multipart/mixed")])
        .await
        .parts();
    let text = gw.request(Method::GET, "/metrics", &[], Bytes::new()).await;
    let text = String::from_utf8(text.body.to_vec()).unwrap();
    let by = |format, reply| {
        metric(
            &text,
            "batchgate_batches_by_format_total",
            &[("format", format), ("reply", reply)],
        )
    };
    assert_eq!(by("json", "json"), 1);
    assert_eq!(by("json", "multipart"), 1);
    assert_eq!(metric(&text, "batchgate_batches_served_total", &[]), 2);
}

#[tokio::test]
async fn outer_headers_and_the_trace_reach_every_request_and_a_request_s_own_header_wins() {
    let up = mirror().await;
    let gw = gateway(&routes(&[("/up/", up.addr)])).await;
    let body = json!({"requests": [
        {"id": "1", "method": "GET", "url": "/up/outer"},
        {"id": "2", "method": "GET", "url": "/up/own", "headers": {"Authorization": "Bearer inner"}},
    ]});
    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    responses(
        &post_json(
            &gw,
            body.to_string(),
            &[("authorization", "Bearer outer"), ("traceparent", trace)],
        )
        .await,
    );
    let seen = up.seen();
    for (path, authorization) in [("/up/outer", "Bearer outer"), ("/up/own", "Bearer inner")] {
        let seen = seen.iter().find(|s| s.uri.path() == path).unwrap();
        let all: Vec<_> = seen.headers.get_all("authorization").iter().collect();
        assert_eq!(all, [authorization], "{path}");
        let traceparent = seen.headers["traceparent"].to_str().unwrap();
        assert!(
            traceparent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{traceparent}"
        );
    }
}

#[tokio::test]
async fn admin_stats_name_each_batch_s_format() {
    let up = echo_upstream(Duration::ZERO).await;
    let (gw, live) = live_gateway(&routes(&[("/up/", up.addr)])).await;
    let admin = start_admin(batchgate::server::admin::Admin::new(live)).await;
    let body = json!({"requests": [{"id": "1", "method": "GET", "url": "/up/1"}]});
    responses(&post_json(&gw, body.to_string(), &[]).await);
    gw.post(MP, get_batch("b", &["/up/2".to_owned()]))
        .await
        .parts();
    let stats = admin.stats().await;
    let mut formats: Vec<_> = stats["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["format"].as_str().unwrap().to_owned())
        .collect();
    formats.sort();
    assert_eq!(formats, ["json", "multipart"]);
}
