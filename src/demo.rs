//! A small "mail" service to batch against: the upstream behind `batchgate --demo`, the examples and the
//! tests. It is a real HTTP/1.1 server, so everything between the gateway and it is real.
//!
//! - `GET /mail/v1/messages/unread` -> `{"ids":["1",...]}` (`?max=N`, default 100)
//! - `GET /mail/v1/messages/{id}` -> the message as JSON, or 404
//! - `POST /mail/v1/messages` -> 201 with the new message's id

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, LOCATION};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Largest message body the demo accepts on POST.
const MAX_POST_BYTES: usize = 1 << 20;

/// Serves the mail API on `listener` forever, answering each request after `latency`.
pub async fn serve(listener: TcpListener, latency: Duration) {
    let next_id = Arc::new(AtomicU64::new(100_001));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let next_id = next_id.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let next_id = next_id.clone();
                async move {
                    if !latency.is_zero() {
                        tokio::time::sleep(latency).await;
                    }
                    Ok::<_, Infallible>(answer(request, &next_id).await)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(request: Request<Incoming>, next_id: &AtomicU64) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let Some(rest) = path.strip_prefix("/mail/v1/messages") else {
        return json(StatusCode::NOT_FOUND, error("no such endpoint", &path));
    };
    match (request.method().clone(), rest) {
        (Method::GET, "/unread") => {
            let max = request
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("max=")))
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(100)
                .min(1000);
            let ids: Vec<String> = (1..=max).map(|i| i.to_string()).collect();
            json(
                StatusCode::OK,
                serde_json::json!({ "ids": ids }).to_string(),
            )
        }
        (Method::GET, id) => match id.strip_prefix('/').and_then(|id| id.parse::<u64>().ok()) {
            Some(id) if (1..=100_000).contains(&id) => json(StatusCode::OK, message(id)),
            _ => json(StatusCode::NOT_FOUND, error("no such message", &path)),
        },
        (Method::POST, "" | "/") => {
            let body = match Limited::new(request.into_body(), MAX_POST_BYTES)
                .collect()
                .await
            {
                Ok(body) => body.to_bytes(),
                Err(e) => return json(StatusCode::BAD_REQUEST, error(&e.to_string(), &path)),
            };
            let Ok(draft) = serde_json::from_slice::<serde_json::Value>(&body) else {
                return json(StatusCode::BAD_REQUEST, error("body is not JSON", &path));
            };
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            let mut response = json(
                StatusCode::CREATED,
                serde_json::json!({ "id": id.to_string(), "draft": draft }).to_string(),
            );
            let location = format!("/mail/v1/messages/{id}");
            response
                .headers_mut()
                .insert(LOCATION, HeaderValue::from_str(&location).expect("ascii"));
            response
        }
        _ => json(
            StatusCode::METHOD_NOT_ALLOWED,
            error("method not allowed", &path),
        ),
    }
}

/// A deterministic message: the same id always reads the same.
pub fn message(id: u64) -> String {
    const SENDERS: [&str; 6] = ["alice", "bob", "carol", "dmitri", "eve", "farah"];
    const WORDS: [&str; 12] = [
        "quarterly",
        "report",
        "lunch",
        "meeting",
        "invoice",
        "draft",
        "review",
        "travel",
        "budget",
        "launch",
        "notes",
        "schedule",
    ];
    let word =
        |k: u64| WORDS[(id.wrapping_mul(31).wrapping_add(k * 7) % WORDS.len() as u64) as usize];
    let sender = SENDERS[(id % SENDERS.len() as u64) as usize];
    serde_json::json!({
        "id": id.to_string(),
        "threadId": format!("t{}", id / 3),
        "labelIds": ["INBOX", "UNREAD"],
        "from": format!("{sender}@example.com"),
        "subject": format!("{} {} {}", word(1), word(2), word(3)),
        "snippet": format!("About the {} {}: see the {} before the {}.", word(4), word(5), word(6), word(7)),
    })
    .to_string()
}

fn error(message: &str, path: &str) -> String {
    serde_json::json!({ "error": { "message": message, "path": path } }).to_string()
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
