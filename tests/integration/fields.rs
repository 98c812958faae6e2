//! Field masks end to end: a route with `fields = true` cuts its JSON answers down to the part's `fields=`
//! (or the batch's `X-Fields`), sends the target upstream without it, and refuses a malformed mask as a 400
//! part; a route without it passes the parameter through.

use crate::support::*;
use batchgate_wire::ReplyPart;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;

const LIST: &str = r#"{"kind":"list","nextPageToken":"p2","items":[{"id":"1","etag":"e1","snippet":{"title":"Hello","body":"long"}},{"id":"2","etag":"e2","snippet":{"title":"Again","body":"longer"}}]}"#;

/// An upstream answering every path with [`LIST`] as JSON with a strong ETag, except `/api/page` (the same
/// bytes as `text/html`) and `/api/missing` (a JSON 404).
async fn list_upstream() -> Upstream {
    upstream(|seen| async move {
        let (status, content_type) = match seen.uri.path() {
            "/api/page" => (StatusCode::OK, "text/html"),
            "/api/missing" => (StatusCode::NOT_FOUND, "application/json"),
            _ => (StatusCode::OK, "application/json; charset=utf-8"),
        };
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("etag", "\"v7\"")
            .body(Full::new(Bytes::from_static(LIST.as_bytes())))
            .unwrap()
    })
    .await
}

/// A gateway with `/api/` (fields on) and `/raw/` (fields off) to the same upstream.
async fn gateway_to(up: &Upstream) -> TestGateway {
    gateway(&format!(
        "[[routes]]\nprefix = \"/api/\"\nupstream = \"http://{0}\"\nfields = true\n\
         [[routes]]\nprefix = \"/raw/\"\nupstream = \"http://{0}\"\n",
        up.addr
    ))
    .await
}

/// The part's body as JSON, after checking its framing says its length.
fn json(part: &ReplyPart) -> serde_json::Value {
    assert_eq!(
        part.headers["content-length"].to_str().unwrap(),
        part.body.len().to_string(),
        "the Content-Length is the cut body's"
    );
    serde_json::from_slice(&part.body).unwrap()
}

/// The targets the upstream received, sorted.
fn targets(up: &Upstream) -> Vec<String> {
    let mut seen: Vec<String> = up.seen().iter().map(|s| s.uri.to_string()).collect();
    seen.sort();
    seen
}

#[tokio::test]
async fn masks_cut_json_answers_and_never_reach_the_upstream() {
    let up = list_upstream().await;
    let gw = gateway_to(&up).await;
    let parts = gw
        .send_parts(&[
            get_part(
                "a",
                "/api/list?fields=items(id,snippet/title),nextPageToken&q=x%2Fy&&z",
            ),
            get_part("b", "/api/one?fields=kind,items/snippet(title)"),
            get_part("c", "/api/star?fields=items/*/title"),
            get_part("d", "/api/esc?max=2&fields=items%28id%29"),
        ])
        .await;
    assert_eq!(statuses(&parts), [200, 200, 200, 200]);
    assert_eq!(
        json(&parts[0]),
        serde_json::json!({"nextPageToken":"p2","items":[
            {"id":"1","snippet":{"title":"Hello"}},{"id":"2","snippet":{"title":"Again"}}]})
    );
    assert_eq!(
        json(&parts[1]),
        serde_json::json!({"kind":"list","items":[
            {"snippet":{"title":"Hello"}},{"snippet":{"title":"Again"}}]})
    );
    assert_eq!(
        json(&parts[2]),
        serde_json::json!({"items":[{"snippet":{"title":"Hello"}},{"snippet":{"title":"Again"}}]})
    );
    assert_eq!(
        json(&parts[3]),
        serde_json::json!({"items":[{"id":"1"},{"id":"2"}]})
    );
    assert!(parts.iter().all(|p| p.headers["etag"] == "W/\"v7\""));
    assert_eq!(
        targets(&up),
        [
            "/api/esc?max=2",
            "/api/list?q=x%2Fy&&z",
            "/api/one",
            "/api/star"
        ],
        "the fields parameter comes off, the rest of the target byte for byte"
    );
    gw.stop().await;
}

#[tokio::test]
async fn x_fields_applies_to_every_part_without_its_own_mask() {
    let up = list_upstream().await;
    let gw = gateway_to(&up).await;
    let body = batch(&[
        get_part("default", "/api/list"),
        get_part("own", "/api/list?fields=kind"),
        get_part("whole", "/api/list?fields="),
        get_part("off", "/raw/list"),
    ]);
    let reply = gw
        .request(
            Method::POST,
            "/batch",
            &[
                ("content-type", MP),
                ("x-fields", "nextPageToken,items(id)"),
            ],
            Bytes::from(body),
        )
        .await;
    let parts = reply.parts();
    assert_eq!(statuses(&parts), [200, 200, 200, 200]);
    assert_eq!(
        json(&parts[0]),
        serde_json::json!({"nextPageToken":"p2","items":[{"id":"1"},{"id":"2"}]})
    );
    assert_eq!(json(&parts[1]), serde_json::json!({"kind":"list"}));
    assert_eq!(part_body(&parts[2]), LIST, "an empty fields= asks for all");
    assert_eq!(
        part_body(&parts[3]),
        LIST,
        "a route without fields ignores it"
    );
    assert_eq!(parts[3].headers["etag"], "\"v7\"");
    let seen = up.seen();
    let header_of = |path: &str| {
        seen.iter()
            .find(|s| s.uri.path() == path)
            .map(|s| s.headers.get("x-fields").cloned())
            .unwrap()
    };
    assert_eq!(header_of("/api/list"), None, "consumed on a fields route");
    assert_eq!(
        header_of("/raw/list").unwrap(),
        "nextPageToken,items(id)",
        "inherited as any header elsewhere"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_malformed_mask_is_a_400_part_naming_the_position_and_nothing_goes_upstream() {
    let up = list_upstream().await;
    let gw = gateway_to(&up).await;
    let parts = gw
        .send_parts(&[
            get_part("bad", "/api/list?fields=items(id,,title)"),
            get_part("twice", "/api/list?fields=a&fields=b"),
            get_part("good", "/api/list?fields=kind"),
        ])
        .await;
    assert_eq!(statuses(&parts), [400, 400, 200]);
    assert_eq!(
        part_error(&parts[0]),
        "part 0: the field mask \"items(id,,title)\" is malformed at byte 9: expected a field name"
    );
    assert!(part_error(&parts[1]).contains("more than once"));
    assert_eq!(
        targets(&up),
        ["/api/list"],
        "only the good part went upstream"
    );

    let reply = gw
        .request(
            Method::POST,
            "/batch",
            &[("content-type", MP), ("x-fields", "a)")],
            Bytes::from(batch(&[get_part("h", "/api/list")])),
        )
        .await;
    let parts = reply.parts();
    assert_eq!(
        part_error(&parts[0]),
        "part 0: the field mask \"a)\" is malformed at byte 1: expected ',' or the end of the mask"
    );
    assert_eq!(up.seen().len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn non_json_and_unsuccessful_answers_pass_unchanged() {
    let up = list_upstream().await;
    let gw = gateway_to(&up).await;
    let parts = gw
        .send_parts(&[
            get_part("html", "/api/page?fields=kind"),
            get_part("404", "/api/missing?fields=kind"),
        ])
        .await;
    assert_eq!(statuses(&parts), [200, 404]);
    for part in &parts {
        assert_eq!(part_body(part), LIST);
        assert_eq!(part.headers["etag"], "\"v7\"");
    }
    assert_eq!(targets(&up), ["/api/missing", "/api/page"]);
    gw.stop().await;
}

#[tokio::test]
async fn a_route_without_fields_passes_the_parameter_through() {
    let up = list_upstream().await;
    let gw = gateway_to(&up).await;
    let parts = gw
        .send_parts(&[get_part("raw", "/raw/list?fields=items(id&x=1")])
        .await;
    assert_eq!(statuses(&parts), [200]);
    assert_eq!(part_body(&parts[0]), LIST);
    assert_eq!(parts[0].headers["etag"], "\"v7\"");
    assert_eq!(targets(&up), ["/raw/list?fields=items(id&x=1"]);
    gw.stop().await;
}

/// A direct request (a route with `direct = true` too) is cut like a part: by its `fields=`, else by its own
/// `X-Fields`, which never reaches the upstream.
#[tokio::test]
async fn direct_requests_are_cut_by_their_mask_or_their_x_fields() {
    let up = list_upstream().await;
    let gw = gateway(&format!(
        "[[routes]]\nprefix = \"/api/\"\nupstream = \"http://{}\"\nfields = true\ndirect = true\n",
        up.addr
    ))
    .await;
    let by_target = gw
        .request(
            Method::GET,
            "/api/list?fields=nextPageToken&page=2",
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(by_target.status, StatusCode::OK);
    assert_eq!(by_target.body, r#"{"nextPageToken":"p2"}"#);
    assert_eq!(by_target.headers["etag"], "W/\"v7\"");
    let by_header = gw
        .request(
            Method::GET,
            "/api/list",
            &[("x-fields", "items/id")],
            Bytes::new(),
        )
        .await;
    assert_eq!(by_header.status, StatusCode::OK);
    assert_eq!(by_header.body, r#"{"items":[{"id":"1"},{"id":"2"}]}"#);
    assert_eq!(targets(&up), ["/api/list", "/api/list?page=2"]);
    assert!(
        up.seen()
            .iter()
            .all(|s| !s.headers.contains_key("x-fields"))
    );
    gw.stop().await;
}
