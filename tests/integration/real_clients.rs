//! What real clients send, byte for byte, and what each of them needs back.
//!
//! The fixtures below were captured off the wire from the real libraries (see each one's note). Each is sent
//! to a gateway as it is, and the reply is read back the way that client's own parser reads it: a reply that
//! one of these checks refuses is a reply that client cannot use.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;
use batchgate::demo;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;

/// google-api-python-client 2.202.0 (`BatchHttpRequest`, httplib2 0.32.1, Python 3.11), as captured off the
/// wire: a batch built from a discovery document for the demo mail API with OAuth credentials. Outer head
/// CRLF (httplib2), body LF only; quoted boundary with `=`; `Content-ID: <uuid + n>`, the last one folded by
/// the email generator because its request id is long; `HTTP/1.1` request lines, `MIME-Version`, a `Host`
/// naming the gateway, `accept-encoding: gzip, deflate` and the `authorization` repeated inside every part.
/// No line break after the close delimiter. Only the random boundary digits were replaced (same length).
const GOOGLE_API_PYTHON_CLIENT: &[u8] = concat!(
    "POST /batch HTTP/1.1\r\n",
    "Host: 127.0.0.1:18080\r\n",
    "Content-Length: 1999\r\n",
    "content-type: multipart/mixed; boundary=\"===============7330845974216740156==\"\r\n",
    "x-goog-api-client: cred-type/u\r\n",
    "authorization: Bearer ya29.a0AfH6SMBfixture\r\n",
    "user-agent: Python-httplib2/0.32.1 (gzip)\r\n",
    "accept-encoding: gzip, deflate\r\n",
    "\r\n",
    "--===============7330845974216740156==\n",
    "Content-Type: application/http\n",
    "MIME-Version: 1.0\n",
    "Content-Transfer-Encoding: binary\n",
    "Content-ID: <8f2a61c4-3b7e-4d59-9a0e-5c1d7b3e2f90 + 1>\n",
    "\n",
    "GET /mail/v1/messages/1?alt=json HTTP/1.1\n",
    "Content-Type: application/json\n",
    "MIME-Version: 1.0\n",
    "accept: application/json\n",
    "accept-encoding: gzip, deflate\n",
    "user-agent: (gzip)\n",
    "x-goog-api-client: gdcl/2.202.0 gl-python/3.11.7\n",
    "authorization: Bearer ya29.a0AfH6SMBfixture\n",
    "Host: 127.0.0.1:18080\n",
    "\n",
    "\n",
    "--===============7330845974216740156==\n",
    "Content-Type: application/http\n",
    "MIME-Version: 1.0\n",
    "Content-Transfer-Encoding: binary\n",
    "Content-ID: <8f2a61c4-3b7e-4d59-9a0e-5c1d7b3e2f90 + 2>\n",
    "\n",
    "GET /mail/v1/messages/2?alt=json HTTP/1.1\n",
    "Content-Type: application/json\n",
    "MIME-Version: 1.0\n",
    "accept: application/json\n",
    "accept-encoding: gzip, deflate\n",
    "user-agent: (gzip)\n",
    "x-goog-api-client: gdcl/2.202.0 gl-python/3.11.7\n",
    "authorization: Bearer ya29.a0AfH6SMBfixture\n",
    "Host: 127.0.0.1:18080\n",
    "\n",
    "\n",
    "--===============7330845974216740156==\n",
    "Content-Type: application/http\n",
    "MIME-Version: 1.0\n",
    "Content-Transfer-Encoding: binary\n",
    "Content-ID: <8f2a61c4-3b7e-4d59-9a0e-5c1d7b3e2f90 + 3>\n",
    "\n",
    "POST /mail/v1/messages?alt=json HTTP/1.1\n",
    "Content-Type: application/json\n",
    "MIME-Version: 1.0\n",
    "accept: application/json\n",
    "accept-encoding: gzip, deflate\n",
    "user-agent: (gzip)\n",
    "x-goog-api-client: gdcl/2.202.0 gl-python/3.11.7\n",
    "authorization: Bearer ya29.a0AfH6SMBfixture\n",
    "Host: 127.0.0.1:18080\n",
    "content-length: 45\n",
    "\n",
    "{\"subject\": \"lunch\", \"to\": \"bob@example.com\"}\n",
    "--===============7330845974216740156==\n",
    "Content-Type: application/http\n",
    "MIME-Version: 1.0\n",
    "Content-Transfer-Encoding: binary\n",
    "Content-ID: <8f2a61c4-3b7e-4d59-9a0e-5c1d7b3e2f90 +\n",
    " message-lookup-for-the-quarterly-report-thread>\n",
    "\n",
    "GET /mail/v1/messages/999999?alt=json HTTP/1.1\n",
    "Content-Type: application/json\n",
    "MIME-Version: 1.0\n",
    "accept: application/json\n",
    "accept-encoding: gzip, deflate\n",
    "user-agent: (gzip)\n",
    "x-goog-api-client: gdcl/2.202.0 gl-python/3.11.7\n",
    "authorization: Bearer ya29.a0AfH6SMBfixture\n",
    "Host: 127.0.0.1:18080\n",
    "\n",
    "\n",
    "--===============7330845974216740156==--\n",
)
.as_bytes();
/// google-cloud-storage 3.17.1 (`Batch`, requests 2.34, Python 3.11), as captured off the wire: two deletes
/// and a metadata patch. The library joins each embedded request with CRLF, but `email.generator` rewrites
/// every line ending to LF, so the body is LF only. No Content-ID; absolute-form targets naming
/// storage.googleapis.com; object names with `/` sent as `%2F`; the PATCH body has no Content-Length.
const GOOGLE_CLOUD_STORAGE: &[u8] = concat!(
    "POST /batch/storage/v1 HTTP/1.1\r\n",
    "Host: 127.0.0.1:18080\r\n",
    "User-Agent: gcloud-python/3.17.1  gl-python/3.11.7 gax/2.44.0 gccl/3.17.1\r\n",
    "Accept-Encoding: gzip\r\n",
    "Accept: */*\r\n",
    "Connection: keep-alive\r\n",
    "Content-Type: multipart/mixed; boundary=\"===============0891926584230573872==\"\r\n",
    "MIME-Version: 1.0\r\n",
    "x-goog-api-client: gcloud-python/3.17.1  gl-python/3.11.7 gax/2.44.0 gccl/3.17.1\r\n",
    "Content-Length: 1392\r\n",
    "\r\n",
    "--===============0891926584230573872==\n",
    "Content-Type: application/http\n",
    "MIME-Version: 1.0\n",
    "\n",
    "DELETE https://storage.googleapis.com/storage/v1/b/photos/o/2024%2Fa.jpg?prettyPrint=false HTTP/1.1\n",
    "Accept-Encoding: gzip\n",
    "User-Agent: gcloud-python/3.17.1  gl-python/3.11.7 gax/2.44.0 gccl/3.17.1\n",
    "x-goog-api-client: gcloud-python/3.17.1  gl-python/3.11.7 gax/2.44.0 gccl/3.17.1 gccl-invocation-id/6340dffb-d0dc-4f4e-b84c-ef86e8513a6b\n",
    "\n",
    "\n",
    "--===============0891926584230573872==\n",
    "Content-Type: application/http\n",
    "MIME-Version: 1.0\n",
    "\n",
    "PATCH https://storage.googleapis.com/storage/v1/b/photos/o/2024%2Fb.jpg?projection=full&prettyPrint=false HTTP/1.1\n",
    "Accept-Encoding: gzip\n",
    "Content-Type: application/json\n",
    "User-Agent: gcloud-python/3.17.1  gl-python/3.11.7 gax/2.44.0 gccl/3.17.1\n",
    "x-goog-api-client: gcloud-python/3.17.1  gl-python/3.11.7 gax/2.44.0 gccl/3.17.1 gccl-invocation-id/cae46b15-5154-475f-bf9b-d74e5769d503\n",
    "\n",
    "{\"metadata\": {\"album\": \"summer\"}}\n",
    "--===============0891926584230573872==\n",
    "Content-Type: application/http\n",
    "MIME-Version: 1.0\n",
    "\n",
    "DELETE https://storage.googleapis.com/storage/v1/b/photos/o/2024%2Fc.jpg?prettyPrint=false HTTP/1.1\n",
    "Accept-Encoding: gzip\n",
    "User-Agent: gcloud-python/3.17.1  gl-python/3.11.7 gax/2.44.0 gccl/3.17.1\n",
    "x-goog-api-client: gcloud-python/3.17.1  gl-python/3.11.7 gax/2.44.0 gccl/3.17.1 gccl-invocation-id/aac9bc3e-52ab-42cc-abb3-38cc1c7236e5\n",
    "\n",
    "\n",
    "--===============0891926584230573872==--\n",
).as_bytes();
/// batchelor 2.0.2 (npm, through `request`'s multipart, Node 20), as captured off the wire: `multipart/mixed;;
/// boundary=<uuid>`, CRLF framing, `Content-ID: Batchelor_<hex>` without brackets, GET parts as `GET /path\n`
/// with no blank line (one with its own `Authorization`), a POST whose body (after LF headers) has no
/// Content-Length, and no line break after the close delimiter.
const BATCHELOR: &[u8] = concat!(
    "POST /batch HTTP/1.1\r\n",
    "Content-Type: multipart/mixed;; boundary=ca2d5f26-c06f-4046-bb7d-a6cecd445ff0\r\n",
    "host: 127.0.0.1:18080\r\n",
    "authorization: Bearer ya29.batchelor-outer\r\n",
    "content-length: 785\r\n",
    "Connection: keep-alive\r\n",
    "\r\n",
    "--ca2d5f26-c06f-4046-bb7d-a6cecd445ff0\r\n",
    "Content-Type: application/http\r\n",
    "Content-ID: Batchelor_9f9b792a25a6af34d0fca66a035763df\r\n",
    "\r\n",
    "GET /mail/v1/messages/1\n",
    "\r\n",
    "--ca2d5f26-c06f-4046-bb7d-a6cecd445ff0\r\n",
    "Content-Type: application/http\r\n",
    "Content-ID: Batchelor_4390d1db6e8ac9a7a0daa612381d1be0\r\n",
    "\r\n",
    "GET /mail/v1/messages/2\n",
    "Authorization: Bearer ya29.part-own-token\n",
    "\r\n",
    "--ca2d5f26-c06f-4046-bb7d-a6cecd445ff0\r\n",
    "Content-Type: application/http\r\n",
    "Content-ID: Batchelor_b182851e857f8573a74594caf428d143\r\n",
    "\r\n",
    "POST /mail/v1/messages\n",
    "Content-Type: application/json;\n",
    "\n",
    "{\"subject\":\"lunch\",\"to\":\"bob@example.com\"}\r\n",
    "--ca2d5f26-c06f-4046-bb7d-a6cecd445ff0\r\n",
    "Content-Type: application/http\r\n",
    "Content-ID: Batchelor_3441b968ca05bc4acce5eedcf5f3edfa\r\n",
    "\r\n",
    "GET /mail/v1/messages/999999\n",
    "\r\n",
    "--ca2d5f26-c06f-4046-bb7d-a6cecd445ff0--",
)
.as_bytes();

/// The ids google-api-python-client gave its four requests, in order.
const PYTHON_IDS: [&str; 4] = [
    "1",
    "2",
    "3",
    "message-lookup-for-the-quarterly-report-thread",
];
const PYTHON_BASE_ID: &str = "8f2a61c4-3b7e-4d59-9a0e-5c1d7b3e2f90";

/// batchelor's Content-IDs, in order.
const BATCHELOR_IDS: [&str; 4] = [
    "Batchelor_9f9b792a25a6af34d0fca66a035763df",
    "Batchelor_4390d1db6e8ac9a7a0daa612381d1be0",
    "Batchelor_b182851e857f8573a74594caf428d143",
    "Batchelor_3441b968ca05bc4acce5eedcf5f3edfa",
];

// ---------------------------------------------------------------------------------------------------------
// Reading a reply the way the clients do

/// One reply part as a client sees it.
#[derive(Debug)]
struct ClientPart {
    /// The part's MIME headers, names lower-cased.
    mime: HashMap<String, String>,
    status: u16,
    reason: String,
    /// The inner response's headers, names lower-cased.
    headers: HashMap<String, String>,
    body: String,
}

/// The reply boundary the way batchelor extracts it:
/// `/^multipart\/.+?(?:; boundary=(?:(?:"(.+)")|(?:([^\s]+))))$/i`, and it uses the unquoted group only.
fn boundary_as_batchelor_reads_it(content_type: &str) -> String {
    assert!(
        content_type
            .to_ascii_lowercase()
            .starts_with("multipart/mixed;"),
        "{content_type}"
    );
    let (_, boundary) = content_type
        .split_once("; boundary=")
        .unwrap_or_else(|| panic!("no \"; boundary=\" (one space) in {content_type:?}"));
    assert!(
        !boundary.is_empty()
            && !boundary
                .chars()
                .any(|c| c.is_whitespace() || c == '"' || c == ';'),
        "the boundary must be an unquoted token and the last parameter: {content_type:?}"
    );
    boundary.to_owned()
}

/// Splits a reply the way a strict RFC 2046 reader (batchelor's dicer) does, then checks what every client
/// here needs of each inner response: CRLF throughout, a status line with its reason phrase, at least one
/// header line, the head ended by CRLF CRLF, and a Content-Length that matches the body.
fn read_reply(reply: &RawReply) -> Vec<ClientPart> {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.head);
    let boundary = boundary_as_batchelor_reads_it(reply.headers["content-type"].to_str().unwrap());
    let body = std::str::from_utf8(&reply.body).unwrap();
    let rest = body
        .strip_prefix(&format!("--{boundary}\r\n"))
        .unwrap_or_else(|| panic!("the reply must open with --boundary CRLF: {body:?}"));
    let (inner, epilogue) = rest
        .split_once(&format!("\r\n--{boundary}--"))
        .unwrap_or_else(|| panic!("no CRLF --boundary-- in {body:?}"));
    assert!(matches!(epilogue, "" | "\r\n"), "epilogue {epilogue:?}");
    inner
        .split(&format!("\r\n--{boundary}\r\n"))
        .map(|raw| {
            let (mime, response) = raw
                .split_once("\r\n\r\n")
                .unwrap_or_else(|| panic!("part headers must end with CRLF CRLF: {raw:?}"));
            let (head, body) = response
                .split_once("\r\n\r\n")
                .unwrap_or_else(|| panic!("inner head must end with CRLF CRLF: {response:?}"));
            assert!(
                !head.replace("\r\n", "").contains('\n'),
                "bare LF in {head:?}"
            );
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap();
            let fields: Vec<&str> = status_line.splitn(3, ' ').collect();
            assert_eq!(
                fields.len(),
                3,
                "status line without reason: {status_line:?}"
            );
            assert_eq!(fields[0], "HTTP/1.1");
            let status: u16 = fields[1].parse().unwrap();
            let reason = fields[2].to_owned();
            assert_eq!(
                Some(reason.as_str()),
                StatusCode::from_u16(status).unwrap().canonical_reason(),
                "{status_line:?}"
            );
            let headers = header_lines(lines);
            assert!(!headers.is_empty(), "no header line in {response:?}");
            // Exact wherever there is a body; a 204 has none, and says no length (RFC 9110 8.6).
            let expected = (status != 204).then(|| body.len().to_string());
            assert_eq!(
                headers.get("content-length"),
                expected.as_ref(),
                "{response:?}"
            );
            ClientPart {
                mime: header_lines(mime.split("\r\n")),
                status,
                reason,
                headers,
                body: body.to_owned(),
            }
        })
        .collect()
}

fn header_lines<'a>(lines: impl Iterator<Item = &'a str>) -> HashMap<String, String> {
    lines
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("not a header line: {line:?}"));
            (name.to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect()
}

/// google-api-python-client's `_header_to_id`: `<base + id>` in, `id` out (anything else raises).
fn python_request_id(part: &ClientPart) -> String {
    let value = &part.mime["content-id"];
    let inner = value
        .strip_prefix('<')
        .and_then(|v| v.strip_suffix('>'))
        .unwrap_or_else(|| panic!("Content-ID without brackets: {value:?}"));
    let (_, id) = inner
        .split_once(" + ")
        .unwrap_or_else(|| panic!("Content-ID without \" + \": {value:?}"));
    id.to_owned()
}

/// batchelor's lookup: the Content-ID with `response-` removed must be the id it sent.
fn batchelor_request_id(part: &ClientPart) -> String {
    part.mime["content-id"].replacen("response-", "", 1)
}

/// batchelor runs `JSON.parse` on every non-empty body.
fn json(part: &ClientPart) -> serde_json::Value {
    serde_json::from_str(&part.body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", part.body))
}

/// A gateway error part: JSON naming its own status.
fn assert_gateway_error(part: &ClientPart, status: u16) {
    assert_eq!(part.status, status);
    assert_eq!(part.headers["content-type"], "application/json");
    let v = json(part);
    assert_eq!(v["error"]["code"], status);
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

// ---------------------------------------------------------------------------------------------------------
// Gateways and upstreams for the fixtures

/// A gateway with `/mail/` routed to `mail`.
async fn mail_gateway(mail: SocketAddr) -> TestGateway {
    gateway(&routes(&[("/mail/", mail)])).await
}

/// A gateway where google-cloud-storage's batches land, its absolute-form host mapped to `storage`. The
/// client writes `https://` targets; this plain-http upstream accepts them only because the route says so.
async fn storage_gateway(storage: SocketAddr) -> TestGateway {
    gateway(&format!(
        "batch_path = \"/batch/storage/v1\"\n[[routes]]\nprefix = \"/storage/v1/\"\n\
         upstream = \"http://{storage}\"\nhosts = [\"storage.googleapis.com\"]\n\
         accept_https_targets = true\n"
    ))
    .await
}

/// Enough of the storage JSON API for the fixture: DELETE answers 204 (404 for `2024/c.jpg`, which does not
/// exist), PATCH echoes what it was sent.
async fn storage_upstream() -> Upstream {
    upstream(|seen| async move {
        let path = seen.uri.path();
        let (status, body) = if seen.method == Method::DELETE && path.ends_with("%2Fc.jpg") {
            let error = serde_json::json!({"error": {"code": 404, "message": "No such object: photos/2024/c.jpg"}});
            (StatusCode::NOT_FOUND, error.to_string())
        } else if seen.method == Method::DELETE {
            (StatusCode::NO_CONTENT, String::new())
        } else {
            let patch: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
            let object = serde_json::json!({ "path": path, "metadata": patch["metadata"] });
            (StatusCode::OK, object.to_string())
        };
        let mut response = Response::new(Full::new(Bytes::from(body.clone())));
        *response.status_mut() = status;
        if !body.is_empty() {
            response
                .headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
        }
        response
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------
// google-api-python-client

#[tokio::test]
async fn google_api_python_client_reads_every_reply_by_its_content_id() {
    let gw = mail_gateway(demo_upstream(Duration::ZERO).await).await;
    let reply = send_raw(gw.addr, GOOGLE_API_PYTHON_CLIENT).await;
    // It accepts gzip, so the reply may come compressed; httplib2 undoes that, as `send_raw` does.
    let parts = read_reply(&reply);

    assert_eq!(parts.len(), 4);
    for (part, id) in parts.iter().zip(PYTHON_IDS) {
        assert_eq!(
            part.mime["content-id"],
            format!("<response-{PYTHON_BASE_ID} + {id}>")
        );
        assert_eq!(python_request_id(part), id);
    }
    assert_eq!((parts[0].status, parts[0].reason.as_str()), (200, "OK"));
    assert_eq!(parts[0].body, demo::message(1));
    assert_eq!(parts[1].body, demo::message(2));
    assert_eq!(
        (parts[2].status, parts[2].reason.as_str()),
        (201, "Created")
    );
    assert!(
        parts[2].headers["location"].starts_with("/mail/v1/messages/"),
        "{:?}",
        parts[2].headers
    );
    assert_eq!(
        json(&parts[2])["draft"],
        serde_json::json!({"subject": "lunch", "to": "bob@example.com"})
    );
    assert_eq!(
        (parts[3].status, parts[3].reason.as_str()),
        (404, "Not Found")
    );
    gw.stop().await;
}

#[tokio::test]
async fn google_api_python_client_parts_reach_the_upstream_with_one_authorization() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = mail_gateway(up.addr).await;
    let parts = read_reply(&send_raw(gw.addr, GOOGLE_API_PYTHON_CLIENT).await);
    assert!(parts.iter().all(|p| p.status == 200));

    let seen = up.seen();
    assert_eq!(seen.len(), 4);
    for s in &seen {
        let authorization: Vec<_> = s.headers.get_all("authorization").iter().collect();
        assert_eq!(authorization, ["Bearer ya29.a0AfH6SMBfixture"], "{}", s.uri);
        assert_eq!(s.headers["host"], up.addr.to_string());
        assert_eq!(s.uri.query(), Some("alt=json"));
        assert!(s.headers.get("mime-version").is_some());
    }
    gw.stop().await;
}

#[tokio::test]
async fn google_api_python_client_error_parts_keep_their_content_id() {
    let gw = mail_gateway(dead_addr().await).await;
    let parts = read_reply(&send_raw(gw.addr, GOOGLE_API_PYTHON_CLIENT).await);
    assert_eq!(parts.len(), 4);
    for (part, id) in parts.iter().zip(PYTHON_IDS) {
        assert_eq!(python_request_id(part), id);
        assert_eq!(part.reason, "Bad Gateway");
        assert_gateway_error(part, 502);
    }
    gw.stop().await;
}

#[tokio::test]
async fn google_api_python_client_gets_part_bodies_it_need_not_decompress() {
    // An upstream that compresses whenever the request allows it, as most do.
    let up = upstream(|seen| async move {
        let body = demo::message(1);
        let gzip = seen
            .headers
            .get_all("accept-encoding")
            .iter()
            .any(|v| v.to_str().unwrap().contains("gzip"));
        let mut response = text(StatusCode::OK, body.clone());
        if gzip {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(body.as_bytes()).unwrap();
            *response.body_mut() = Full::new(Bytes::from(encoder.finish().unwrap()));
            response
                .headers_mut()
                .insert("content-encoding", "gzip".parse().unwrap());
        }
        response
    })
    .await;
    let gw = mail_gateway(up.addr).await;
    let reply = send_raw(gw.addr, GOOGLE_API_PYTHON_CLIENT).await;
    // The client decodes the whole reply as UTF-8 and hands each part's bytes on as they are.
    let parts = read_reply(&reply);
    for part in &parts {
        assert_eq!(part.headers.get("content-encoding"), None);
        assert_eq!(part.body, demo::message(1));
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------------------
// google-cloud-storage

#[tokio::test]
async fn google_cloud_storage_gets_one_reply_per_part_in_request_order() {
    let up = storage_upstream().await;
    let gw = storage_gateway(up.addr).await;
    let parts = read_reply(&send_raw(gw.addr, GOOGLE_CLOUD_STORAGE).await);

    assert_eq!(parts.len(), 3);
    assert!(parts.iter().all(|p| !p.mime.contains_key("content-id")));
    let statuses: Vec<(u16, &str)> = parts
        .iter()
        .map(|p| (p.status, p.reason.as_str()))
        .collect();
    assert_eq!(
        statuses,
        [(204, "No Content"), (200, "OK"), (404, "Not Found")]
    );
    assert_eq!(parts[0].body, "");
    assert_eq!(
        json(&parts[1]),
        serde_json::json!({
            "path": "/storage/v1/b/photos/o/2024%2Fb.jpg",
            "metadata": {"album": "summer"}
        })
    );
    assert_eq!(
        json(&parts[2])["error"]["message"],
        "No such object: photos/2024/c.jpg"
    );

    let mut seen: Vec<String> = up
        .seen()
        .iter()
        .map(|s| format!("{} {}", s.method, s.uri))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "DELETE /storage/v1/b/photos/o/2024%2Fa.jpg?prettyPrint=false",
            "DELETE /storage/v1/b/photos/o/2024%2Fc.jpg?prettyPrint=false",
            "PATCH /storage/v1/b/photos/o/2024%2Fb.jpg?projection=full&prettyPrint=false",
        ]
    );
    let patch = up
        .seen()
        .into_iter()
        .find(|s| s.method == Method::PATCH)
        .unwrap();
    assert_eq!(&patch.body[..], br#"{"metadata": {"album": "summer"}}"#);
    gw.stop().await;
}

#[tokio::test]
async fn google_cloud_storage_error_parts_come_back_in_order() {
    let gw = storage_gateway(dead_addr().await).await;
    let parts = read_reply(&send_raw(gw.addr, GOOGLE_CLOUD_STORAGE).await);
    assert_eq!(parts.len(), 3);
    for part in &parts {
        assert!(!part.mime.contains_key("content-id"));
        assert_gateway_error(part, 502);
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------------------
// batchelor

#[tokio::test]
async fn batchelor_reads_every_reply_by_its_content_id() {
    let gw = mail_gateway(demo_upstream(Duration::ZERO).await).await;
    let reply = send_raw(gw.addr, BATCHELOR).await;
    assert!(reply.headers.get("content-encoding").is_none());
    let parts = read_reply(&reply);

    assert_eq!(parts.len(), 4);
    for (part, id) in parts.iter().zip(BATCHELOR_IDS) {
        assert_eq!(part.mime["content-id"], format!("response-{id}"));
        assert_eq!(batchelor_request_id(part), id);
    }
    let statuses: Vec<u16> = parts.iter().map(|p| p.status).collect();
    assert_eq!(statuses, [200, 200, 201, 404]);
    assert_eq!(parts[0].body, demo::message(1));
    assert_eq!(parts[1].body, demo::message(2));
    assert_eq!(
        json(&parts[2])["draft"],
        serde_json::json!({"subject": "lunch", "to": "bob@example.com"})
    );
    assert_eq!(json(&parts[3])["error"]["message"], "no such message");
    gw.stop().await;
}

#[tokio::test]
async fn batchelor_parts_carry_their_own_authorization_and_whole_bodies() {
    let up = echo_upstream(Duration::ZERO).await;
    let gw = mail_gateway(up.addr).await;
    let parts = read_reply(&send_raw(gw.addr, BATCHELOR).await);
    assert!(parts.iter().all(|p| p.status == 200));

    let by_path = |path: &str| {
        up.seen()
            .into_iter()
            .find(|s| s.uri.path() == path)
            .unwrap_or_else(|| panic!("nothing for {path}"))
    };
    for (path, authorization) in [
        ("/mail/v1/messages/1", "Bearer ya29.batchelor-outer"),
        ("/mail/v1/messages/2", "Bearer ya29.part-own-token"),
        ("/mail/v1/messages/999999", "Bearer ya29.batchelor-outer"),
    ] {
        let seen = by_path(path);
        let all: Vec<_> = seen.headers.get_all("authorization").iter().collect();
        assert_eq!(all, [authorization], "{path}");
        assert!(seen.body.is_empty());
    }
    let post = by_path("/mail/v1/messages");
    assert_eq!(post.method, Method::POST);
    assert_eq!(post.headers["content-type"], "application/json;");
    assert_eq!(
        &post.body[..],
        br#"{"subject":"lunch","to":"bob@example.com"}"#
    );
    gw.stop().await;
}

#[tokio::test]
async fn batchelor_can_json_parse_every_error_part() {
    let gw = gateway(&routes(&[("/elsewhere/", dead_addr().await)])).await;
    let parts = read_reply(&send_raw(gw.addr, BATCHELOR).await);
    assert_eq!(parts.len(), 4);
    for (part, id) in parts.iter().zip(BATCHELOR_IDS) {
        assert_eq!(batchelor_request_id(part), id);
        assert_eq!(part.reason, "Not Found");
        assert_gateway_error(part, 404);
    }
    gw.stop().await;
}
