//! Batch jobs (`[jobs]`, `/jobs`): submitted, run by the workers through the routes, watched, steered and
//! read back, on a real SQLite store in a temp dir and real upstreams counting what they receive.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use batchgate::server::Live;
use batchgate::{Config, Gateway};
use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::sync::Semaphore;

use crate::support::*;

/// A gateway with `[jobs]` on a SQLite file in `dir`, plus `extra` keys for the section and `rest` (routes,
/// limits) after it.
async fn jobs_gateway(dir: &TempDir, extra: &str, rest: &str) -> (TestGateway, Arc<Live>) {
    let store = dir.join("jobs.db");
    live_gateway(&format!(
        "{rest}\n[jobs]\nstore = \"sqlite://{}\"\nlease = \"1s\"\n{extra}\n",
        store.display()
    ))
    .await
}

/// The usual gateway of a test: `[jobs]` (with `jobs` keys) on a SQLite store in a temp dir of its own named
/// `name`, `[limits]` with `limits` keys, and `/api/` routed to `up`. The dir goes when the test drops it.
async fn api_jobs(
    name: &str,
    up: &Upstream,
    jobs: &str,
    limits: &str,
) -> (TestGateway, Arc<Live>, TempDir) {
    let dir = TempDir::new(name);
    let rest = format!("[limits]\n{limits}\n{}", routes(&[("/api/", up.addr)]));
    let (gw, live) = jobs_gateway(&dir, jobs, &rest).await;
    (gw, live, dir)
}

/// `count` GET parts to `/api/{i}` (Content-ID `<p{i}>`).
fn gets(count: usize) -> Vec<String> {
    gets_to("api", "p", count)
}

/// `count` GET parts to `/{route}/{i}` (Content-ID `<{id}{i}>`).
fn gets_to(route: &str, id: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            part(
                &format!("{id}{i}"),
                &format!("GET /{route}/{i} HTTP/1.1\r\n"),
            )
        })
        .collect()
}

/// POSTs a job of these parts with these headers; asserts the 202 and returns the job's id.
async fn submit(gw: &TestGateway, parts: &[String], headers: &[(&str, &str)]) -> String {
    let mut all = vec![("content-type", MP)];
    all.extend_from_slice(headers);
    let reply = within(
        60,
        "the submission",
        post_jobs(gw, &all, Bytes::from(batch(parts))),
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let status: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    let id = status["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32, "128 bits in hex");
    assert_eq!(reply.headers["location"], format!("/jobs/{id}").as_str());
    assert!(reply.headers.contains_key("retry-after"));
    assert_eq!(status["request_counts"]["total"], parts.len());
    id
}

/// `GET path` with these headers, its status and JSON body.
async fn get_json(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, serde_json::Value) {
    let reply = gw.request(Method::GET, path, headers, Bytes::new()).await;
    let value = serde_json::from_slice(&reply.body).unwrap_or(serde_json::Value::Null);
    (reply.status, value)
}

/// `GET url`'s JSON body.
async fn json_from(url: &str) -> serde_json::Value {
    let reply = http_request(url, Method::GET, &[], Bytes::new()).await;
    serde_json::from_slice(&reply.body).unwrap()
}

/// A JSON lines reply's objects.
fn json_lines(reply: &Reply) -> Vec<serde_json::Value> {
    std::str::from_utf8(&reply.body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The id in a `202`'s status document.
fn job_id(reply: &Reply) -> String {
    let status: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    status["id"].as_str().unwrap().to_owned()
}

/// `POST /jobs` with these headers and body.
async fn post_jobs(gw: &TestGateway, headers: &[(&str, &str)], body: Bytes) -> Reply {
    gw.request(Method::POST, "/jobs", headers, body).await
}

/// `GET /jobs/{id}/results` with these headers (`Accept`).
async fn results(gw: &TestGateway, id: &str, headers: &[(&str, &str)]) -> Reply {
    gw.request(
        Method::GET,
        &format!("/jobs/{id}/results"),
        headers,
        Bytes::new(),
    )
    .await
}

/// `DELETE /jobs/{id}`, answered 204.
async fn delete_job(gw: &TestGateway, id: &str) {
    let reply = gw
        .request(Method::DELETE, &format!("/jobs/{id}"), &[], Bytes::new())
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
}

/// `POST /jobs/{id}/{action}`: its status and JSON body.
async fn act(gw: &TestGateway, id: &str, action: &str) -> (StatusCode, serde_json::Value) {
    let reply = gw
        .request(
            Method::POST,
            &format!("/jobs/{id}/{action}"),
            &[],
            Bytes::new(),
        )
        .await;
    let value = serde_json::from_slice(&reply.body).unwrap_or(serde_json::Value::Null);
    (reply.status, value)
}

/// Waits until the job's status document satisfies `done`; returns it.
async fn wait_for(
    gw: &TestGateway,
    id: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_as(gw, id, &[], what, done).await
}

/// [`wait_for`], asking with these headers (the job's creator's credential).
async fn wait_as(
    gw: &TestGateway,
    id: &str,
    headers: &[(&str, &str)],
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    within(120, what, async {
        loop {
            let (status, value) = get_json(gw, &format!("/jobs/{id}"), headers).await;
            assert_eq!(status, StatusCode::OK, "{value}");
            if done(&value) {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

async fn wait_status(gw: &TestGateway, id: &str, want: &str) -> serde_json::Value {
    wait_for(gw, id, want, |v| v["status"] == want).await
}

/// How many times the upstream saw each path.
fn counts(up: &Upstream) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for seen in up.seen() {
        *counts.entry(seen.uri.path().to_owned()).or_insert(0) += 1;
    }
    counts
}

async fn counting_upstream() -> Upstream {
    upstream(|seen| async move { text(StatusCode::OK, seen.uri.path().to_owned()) }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_10000_parts_runs_every_part_once_and_answers_in_order() {
    let up = counting_upstream().await;
    let (gw, _live, _dir) = api_jobs("jobs-10k", &up, "", "").await;
    let id = submit(&gw, &gets(10_000), &[]).await;
    let done = wait_status(&gw, &id, "completed").await;
    assert_eq!(done["request_counts"]["succeeded"], 10_000, "{done}");
    assert_eq!(done["request_counts"]["pending"], 0);
    assert_eq!(done["partitions"]["total"], 100);
    assert_eq!(done["partitions"]["done"], 100);
    assert!(done["ended_at"].is_i64() && done["expires_at"].is_i64());
    let performance = &done["performance"];
    assert!(
        performance["parts_per_second"].as_f64().unwrap() > 0.0,
        "{done}"
    );
    let latency = &performance["latency_ms"];
    assert!(latency["p50"].as_i64().unwrap() <= latency["p90"].as_i64().unwrap());
    assert!(latency["p90"].as_i64().unwrap() <= latency["p99"].as_i64().unwrap());
    let seen = counts(&up);
    assert_eq!(seen.len(), 10_000);
    assert!(seen.values().all(|&n| n == 1), "a part was sent twice");
    let text = gw.gateway.metrics_text();
    assert_eq!(
        metric(&text, "batchgate_job_parts_total", &[("job", "succeeded")]),
        10_000
    );
    assert_eq!(
        metric(&text, "batchgate_job_partitions_done_total", &[]),
        100
    );
    // The same on /admin/stats (and its dashboard).
    let stats = gw.gateway.stats_json();
    assert_eq!(stats["jobs"]["parts_done"], 10_000, "{}", stats["jobs"]);
    assert_eq!(stats["jobs"]["partitions_done"], 100);

    let reply = results(&gw, &id, &[]).await;
    assert_eq!(reply.headers["batchgate-job-complete"], "true");
    let parts = reply.parts();
    assert_eq!(parts.len(), 10_000);
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(part.status, StatusCode::OK);
        assert_eq!(part.body, format!("/api/{i}").as_bytes());
        assert_eq!(part.content_id.as_ref().unwrap().id(), format!("p{i}"));
    }
    let (status, partitions) = get_json(&gw, &format!("/jobs/{id}/partitions"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let partitions = partitions["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 100);
    assert!(
        partitions
            .iter()
            .all(|p| p["status"] == "done" && p["parts"] == 100 && p["done"] == 100)
    );
    gw.stop().await;
}

#[tokio::test]
async fn results_stream_in_request_order_as_multipart_or_json_lines() {
    let up = upstream(|seen| async move {
        match seen.uri.path() {
            "/api/missing" => text(StatusCode::NOT_FOUND, "{\"gone\":true}"),
            path => text(StatusCode::OK, path.to_owned()),
        }
    })
    .await;
    let (gw, _live, _dir) = api_jobs("jobs-results", &up, "partition_size = 2", "").await;
    let mut parts = gets(5);
    parts.push(part("missing", "GET /api/missing HTTP/1.1\r\n"));
    parts.push(part("nowhere", "GET /elsewhere HTTP/1.1\r\n"));
    let id = submit(&gw, &parts, &[]).await;
    let done = wait_status(&gw, &id, "completed").await;
    assert_eq!(done["request_counts"]["succeeded"], 5, "{done}");
    assert_eq!(done["request_counts"]["failed"], 2, "{done}");
    assert_eq!(done["partitions"]["failed"], 2, "{done}");

    let multipart = results(&gw, &id, &[("accept", "multipart/mixed")])
        .await
        .parts();
    let statuses: Vec<u16> = multipart.iter().map(|p| p.status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 404, 404]);
    assert!(part_error(&multipart[6]).contains("/elsewhere"));

    for accept in ["application/jsonl", "application/x-ndjson"] {
        let reply = results(&gw, &id, &[("accept", accept)]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.headers["content-type"], "application/jsonl");
        let lines = json_lines(&reply);
        assert_eq!(lines.len(), 7);
        for (i, line) in lines.iter().take(5).enumerate() {
            assert_eq!(line["index"], i);
            assert_eq!(line["id"], format!("p{i}"));
            assert_eq!(line["status"], 200);
            assert_eq!(line["body"], format!("/api/{i}"));
        }
        assert_eq!(lines[5]["body"], serde_json::json!({"gone": true}));
        assert_eq!(lines[6]["status"], 404);
        assert_eq!(lines[6]["body"]["error"]["code"], 404);
    }
    gw.stop().await;
}

/// An upstream that holds every request until the test adds permits to the gate it comes with.
async fn gated_upstream() -> (Arc<Semaphore>, Upstream) {
    let gate = Arc::new(Semaphore::new(0));
    let held = gate.clone();
    let up = upstream(move |seen| {
        let gate = held.clone();
        async move {
            gate.acquire().await.unwrap().forget();
            text(StatusCode::OK, seen.uri.path().to_owned())
        }
    })
    .await;
    (gate, up)
}

/// A job of 20 parts against a gated upstream, on a gateway that runs one partition of 5 at a time, 2 parts
/// at once: given once its first two parts are held in flight.
struct Held {
    gate: Arc<Semaphore>,
    up: Upstream,
    gw: TestGateway,
    id: String,
    _live: Arc<Live>,
    _dir: TempDir,
}

async fn held_job(name: &str) -> Held {
    let (gate, up) = gated_upstream().await;
    let (gw, _live, _dir) = api_jobs(
        name,
        &up,
        "partition_size = 5\nworkers = 1",
        "concurrency = 2",
    )
    .await;
    let id = submit(&gw, &gets(20), &[]).await;
    eventually("two parts in flight", || up.seen().len() == 2).await;
    Held {
        gate,
        up,
        gw,
        id,
        _live,
        _dir,
    }
}

#[tokio::test]
async fn a_job_is_paused_resumed_cancelled_and_deleted() {
    let Held {
        gate,
        up,
        gw,
        id,
        _live,
        _dir,
    } = held_job("jobs-steer").await;
    let (status, paused) = act(&gw, &id, "pause").await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused["status"], "paused");
    // The two in flight finish; nothing new starts.
    gate.add_permits(100);
    let held = wait_for(&gw, &id, "the running partition to be given back", |v| {
        v["request_counts"]["succeeded"] == 2
    })
    .await;
    assert_eq!(held["status"], "paused");
    let (status, again) = act(&gw, &id, "pause").await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert!(
        again["error"]["message"]
            .as_str()
            .unwrap()
            .contains("paused")
    );
    assert_eq!(up.seen().len(), 2);

    let (status, resumed) = act(&gw, &id, "resume").await;
    assert_eq!(status, StatusCode::OK);
    assert!(resumed["status"] == "queued" || resumed["status"] == "running");
    let done = wait_status(&gw, &id, "completed").await;
    assert_eq!(done["request_counts"]["succeeded"], 20);
    assert!(counts(&up).values().all(|&n| n == 1));

    // Cancelled while its parts are held: those in flight finish, the rest never start.
    let Held {
        gate: gate2,
        up: up2,
        gw: gw2,
        id: id2,
        _live: _live2,
        _dir: _dir2,
    } = held_job("jobs-cancel").await;
    let (status, cancelling) = act(&gw2, &id2, "cancel").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cancelling["status"], "cancelling");
    gate2.add_permits(100);
    let cancelled = wait_status(&gw2, &id2, "cancelled").await;
    assert_eq!(cancelled["request_counts"]["succeeded"], 2, "{cancelled}");
    assert_eq!(cancelled["request_counts"]["cancelled"], 18, "{cancelled}");
    assert_eq!(up2.seen().len(), 2);
    let reply = results(&gw2, &id2, &[]).await;
    assert_eq!(reply.parts().len(), 2, "the answers are kept");

    // Deleted: its answers are dropped and it is gone.
    delete_job(&gw2, &id2).await;
    let (status, _) = get_json(&gw2, &format!("/jobs/{id2}"), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    gw.stop().await;
    gw2.stop().await;
}

#[tokio::test]
async fn retry_runs_the_failed_parts_again_and_only_those() {
    // Paths with "flaky" fail the first time they are seen.
    let failed_once = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let up = upstream(move |seen| {
        let failed_once = failed_once.clone();
        async move {
            let path = seen.uri.path().to_owned();
            if path.contains("flaky") && failed_once.lock().unwrap().insert(path.clone()) {
                text(StatusCode::SERVICE_UNAVAILABLE, "later")
            } else {
                text(StatusCode::OK, path)
            }
        }
    })
    .await;
    let (gw, _live, _dir) = api_jobs("jobs-retry", &up, "partition_size = 3", "").await;
    let mut parts = gets(6);
    parts.push(part("f1", "GET /api/flaky/1 HTTP/1.1\r\n"));
    parts.push(part("f2", "GET /api/flaky/2 HTTP/1.1\r\n"));
    let id = submit(&gw, &parts, &[]).await;
    let done = wait_status(&gw, &id, "completed").await;
    assert_eq!(done["request_counts"]["failed"], 2, "{done}");
    let (status, retried) = act(&gw, &id, "retry").await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(retried["request_counts"]["pending"], 2, "{retried}");
    let done = wait_for(&gw, &id, "the retried job to complete", |v| {
        v["status"] == "completed" && v["request_counts"]["pending"] == 0
    })
    .await;
    assert_eq!(done["request_counts"]["succeeded"], 8, "{done}");
    assert_eq!(done["request_counts"]["failed"], 0, "{done}");
    let seen = counts(&up);
    assert_eq!(seen["/api/flaky/1"], 2);
    assert_eq!(seen["/api/flaky/2"], 2);
    assert!((0..6).all(|i| seen[&format!("/api/{i}")] == 1), "{seen:?}");
    gw.stop().await;
}

#[tokio::test]
async fn another_credential_gets_404_for_every_job_url() {
    let up = counting_upstream().await;
    let (gw, _live, _dir) = api_jobs("jobs-owner", &up, "", "").await;
    let mine = [("authorization", "Bearer alice")];
    let id = submit(&gw, &gets(3), &mine).await;
    let reply = gw
        .request(Method::GET, &format!("/jobs/{id}"), &mine, Bytes::new())
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    for other in [&[("authorization", "Bearer mallory")][..], &[]] {
        for (method, path) in [
            (Method::GET, format!("/jobs/{id}")),
            (Method::GET, format!("/jobs/{id}/results")),
            (Method::GET, format!("/jobs/{id}/partitions")),
            (Method::POST, format!("/jobs/{id}/cancel")),
            (Method::DELETE, format!("/jobs/{id}")),
        ] {
            let reply = gw.request(method.clone(), &path, other, Bytes::new()).await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {path}");
            assert!(reply.error_message().contains("no job"));
        }
        let (_, list) = get_json(&gw, "/jobs", other).await;
        assert_eq!(list["jobs"].as_array().unwrap().len(), 0, "{list}");
    }
    let (_, list) = get_json(&gw, "/jobs", &mine).await;
    assert_eq!(list["jobs"][0]["id"], id.as_str());
    // The parts went upstream with the creator's credential.
    wait_as(&gw, &id, &mine, "completed", |v| v["status"] == "completed").await;
    assert!(
        up.seen()
            .iter()
            .all(|s| s.headers["authorization"] == "Bearer alice")
    );
    gw.stop().await;
}

#[tokio::test]
async fn jobs_are_listed_newest_first_a_page_at_a_time() {
    let up = counting_upstream().await;
    let (gw, _live, _dir) = api_jobs("jobs-list", &up, "", "").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(submit(&gw, &gets(1), &[]).await);
    }
    let mut listed = Vec::new();
    let mut path = "/jobs?limit=2".to_owned();
    loop {
        let (status, page) = get_json(&gw, &path, &[]).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let jobs = page["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 2);
        listed.extend(jobs.iter().map(|j| j["id"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(next) => path = format!("/jobs?limit=2&after={next}"),
            None => break,
        }
    }
    // Newest first; jobs created in the same millisecond are ordered by id.
    assert_eq!(listed.len(), 5);
    let mut sorted = listed.clone();
    sorted.sort();
    ids.sort();
    assert_eq!(sorted, ids);
    for bad in [
        "/jobs?limit=0",
        "/jobs?limit=101",
        "/jobs?after=x",
        "/jobs?color=red",
    ] {
        let reply = gw.request(Method::GET, bad, &[], Bytes::new()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        reply.error_message();
    }
    gw.stop().await;
}

#[tokio::test]
async fn past_its_retention_a_job_answers_410() {
    let up = counting_upstream().await;
    let (gw, live, _dir) = api_jobs("jobs-retention", &up, "retention = \"1s\"", "").await;
    let id = submit(&gw, &gets(3), &[]).await;
    let done = wait_status(&gw, &id, "completed").await;
    assert_eq!(
        done["expires_at"].as_i64().unwrap() - done["ended_at"].as_i64().unwrap(),
        1
    );
    let reply = results(&gw, &id, &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    // The store's clock, not the test's: no waiting.
    live.advance_job_clock(Duration::from_secs(2));
    let reply = results(&gw, &id, &[]).await;
    assert_eq!(reply.status, StatusCode::GONE);
    assert!(reply.error_message().contains("expired"));
    let (status, expired) = get_json(&gw, &format!("/jobs/{id}"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(expired["status"], "expired");
    gw.stop().await;
}

#[tokio::test]
async fn limits_refuse_a_job_with_the_json_error() {
    let (gate, up) = gated_upstream().await;
    let (gw, _live, _dir) = api_jobs(
        "jobs-limits",
        &up,
        "max_parts = 3\nmax_job_bytes = 2000\nmax_jobs = 1",
        "",
    )
    .await;
    let url = gw.url("/jobs");
    let post = |content_type: &'static str, body: String| {
        let url = url.clone();
        async move {
            http_request(
                &url,
                Method::POST,
                &[("content-type", content_type)],
                Bytes::from(body),
            )
            .await
        }
    };
    let reply = post(MP, batch(&gets(4))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.error_message().contains("Received: 4, Limit: 3"));
    let big = part(
        "big",
        &format!(
            "POST /api/x HTTP/1.1\r\nContent-Length: 3000\r\n\r\n{}",
            "x".repeat(3000)
        ),
    );
    let reply = post(MP, batch(&[big])).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.error_message().contains("jobs.max_job_bytes"));
    let reply = post("text/plain", "x".to_owned()).await;
    assert_eq!(reply.status.as_u16() / 100, 4);
    reply.error_message();
    // Refused jobs leave nothing behind, and nothing went upstream.
    let (_, list) = get_json(&gw, "/jobs", &[]).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0, "{list}");
    // One job not yet ended is all jobs.max_jobs = 1 allows.
    let id = submit(&gw, &gets(1), &[]).await;
    let reply = post(MP, batch(&gets(1))).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.headers.contains_key("retry-after"));
    assert!(reply.error_message().contains("jobs.max_jobs"));
    gate.add_permits(10);
    wait_status(&gw, &id, "completed").await;
    submit(&gw, &gets(1), &[]).await;
    gw.stop().await;
}

#[tokio::test]
async fn prefer_respond_async_turns_a_batch_into_a_job() {
    let up = counting_upstream().await;
    let dir = TempDir::new("jobs-prefer");
    let cors = "[cors]\nallow_origins = [\"https://app.example\"]\n";
    let rest = format!("{cors}{}", routes(&[("/api/", up.addr)]));
    let (gw, _live) = jobs_gateway(&dir, "", &rest).await;
    let reply = gw
        .request(
            Method::POST,
            "/batch",
            &[
                ("content-type", MP),
                ("prefer", "wait=10, respond-async"),
                ("origin", "https://app.example"),
            ],
            Bytes::from(batch(&gets(3))),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    // A browser submitting this way may read the answer, as for a batch.
    assert_eq!(
        reply.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let location = reply.headers["location"].to_str().unwrap().to_owned();
    let id = location.strip_prefix("/jobs/").unwrap();
    wait_status(&gw, id, "completed").await;
    // Without the preference the batch is answered as ever.
    let parts = gw.send_parts(&gets(2)).await;
    assert_eq!(parts.len(), 2);
    gw.stop().await;
}

/// A method a jobs URL does not take is answered 405 with the methods it does take in `Allow`.
#[tokio::test]
async fn a_405_on_a_jobs_url_says_what_is_allowed() {
    let up = counting_upstream().await;
    let (gw, _live, _dir) = api_jobs("jobs-405", &up, "", "").await;
    let id = submit(&gw, &gets(1), &[]).await;
    let cases = [
        (Method::PUT, "/jobs".to_owned(), "GET, POST"),
        (Method::POST, format!("/jobs/{id}"), "GET, DELETE"),
        (Method::POST, format!("/jobs/{id}/partitions"), "GET"),
        (Method::DELETE, format!("/jobs/{id}/results"), "GET"),
        (Method::GET, format!("/jobs/{id}/cancel"), "POST"),
    ];
    for (method, path, allow) in cases {
        let reply = gw.request(method.clone(), &path, &[], Bytes::new()).await;
        assert_eq!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(reply.headers["allow"], allow, "{method} {path}");
    }
    wait_status(&gw, &id, "completed").await;
    gw.stop().await;
}

#[tokio::test]
async fn a_batch_is_served_while_a_job_holds_its_share_of_the_permits() {
    // The job's parts are held upstream; the batch's are answered at once.
    let (gate, slow) = gated_upstream().await;
    let fast = counting_upstream().await;
    let dir = TempDir::new("jobs-priority");
    let (gw, _live) = jobs_gateway(
        &dir,
        "partition_size = 10\nworkers = 4",
        &format!(
            "[limits]\nmax_inflight = 4\nconcurrency = 4\nwindow = 4\n{}",
            routes(&[("/slow/", slow.addr), ("/api/", fast.addr)])
        ),
    )
    .await;
    let parts = gets_to("slow", "s", 40);
    let id = submit(&gw, &parts, &[]).await;
    // Jobs take at most half of limits.max_inflight.
    eventually("the job's share in flight", || slow.seen().len() == 2).await;
    // The job's parts are held upstream for good: a batch starved by them would never be answered, so its
    // answer proves the priority; the bound only guards against that hang.
    let answered = within(60, "the batch beside the job", gw.send_parts(&gets(8))).await;
    assert!(answered.iter().all(|p| p.status == StatusCode::OK));
    assert_eq!(slow.seen().len(), 2, "the job took no more than its share");
    assert_eq!(slow.peak_concurrency(), 2);
    gate.add_permits(1000);
    wait_status(&gw, &id, "completed").await;
    assert_eq!(slow.peak_concurrency(), 2);
    gw.stop().await;
}

/// A reload that changes `limits.max_inflight` resizes the jobs' share (half of it) for the parts that start
/// after it.
#[tokio::test]
async fn a_reload_of_max_inflight_resizes_the_jobs_share() {
    let (gate, slow) = gated_upstream().await;
    let dir = TempDir::new("jobs-share-reload");
    let config = |max_inflight: usize| {
        format!(
            "[limits]\nmax_inflight = {max_inflight}\nconcurrency = 8\nwindow = 8\n{}",
            routes(&[("/slow/", slow.addr)])
        )
    };
    let extra = "partition_size = 20\nworkers = 2";
    let (gw, live) = jobs_gateway(&dir, extra, &config(4)).await;
    let parts = gets_to("slow", "s", 40);
    let id = submit(&gw, &parts, &[]).await;
    eventually("the job's share of 4 in flight", || slow.seen().len() == 2).await;
    let store = dir.join("jobs.db");
    let toml = format!(
        "{}\n[jobs]\nstore = \"sqlite://{}\"\nlease = \"1s\"\n{extra}\n",
        config(12),
        store.display()
    );
    let next = Gateway::new(Config::from_toml(&toml).unwrap()).unwrap();
    live.replace(next).unwrap();
    // More than the old share's 2 are now in flight: the share grew with the reload. (How many more depends on
    // how the two running partitions hand out their parts, so it is not pinned to 6.)
    eventually("more in flight than the old share", || {
        slow.seen().len() > 2
    })
    .await;
    gate.add_permits(1000);
    wait_status(&gw, &id, "completed").await;
    assert!(slow.peak_concurrency() <= 6, "never more than the share");
    gw.stop().await;
}

/// A job whose stored parts cannot be read back (a damaged store) cannot run: it ends `failed`, and is not
/// claimed again and again.
#[tokio::test]
async fn a_job_whose_stored_parts_cannot_be_read_fails() {
    let (gate, slow) = gated_upstream().await;
    let dir = TempDir::new("jobs-failed");
    let extra = "partition_size = 1\nworkers = 1";
    let rest = format!(
        "[limits]\nconcurrency = 1\n{}",
        routes(&[("/slow/", slow.addr)])
    );
    let (gw, _live) = jobs_gateway(&dir, extra, &rest).await;
    let parts = gets_to("slow", "s", 3);
    let id = submit(&gw, &parts, &[]).await;
    eventually("the first part in flight", || slow.seen().len() == 1).await;
    // Damage the next partition's part: its method is no longer text.
    sqlx::any::install_default_drivers();
    let store = sqlx::AnyPool::connect(&format!("sqlite://{}", dir.join("jobs.db").display()))
        .await
        .unwrap();
    sqlx::query("UPDATE job_parts SET method = X'FF' WHERE job_id = $1 AND idx = 1")
        .bind(&id)
        .execute(&store)
        .await
        .unwrap();
    store.close().await;
    gate.add_permits(1000);
    let job = wait_status(&gw, &id, "failed").await;
    assert!(job["ended_at"].is_number(), "{job}");
    assert_eq!(slow.seen().len(), 1, "nothing after the damaged part ran");
    gw.stop().await;
}

/// The real binary, killed with SIGKILL while a job runs and started again on the same SQLite store: the job
/// completes; a part that had not started runs once; a safe or keyed part in flight at the kill runs again;
/// an unsafe part in flight without a key is never sent twice and is answered 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_the_job_completes_on_restart_and_no_unsafe_part_runs_twice() {
    // Parts 0-29 are answered at once, the later ones wait for the gate: partitions run in order, so when
    // the gateway is killed, parts 30-33 and 40-43 (four at once in each of the two partitions) are in flight.
    let gate = Arc::new(Semaphore::new(0));
    let answered = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let up = {
        let (gate, answered) = (gate.clone(), answered.clone());
        upstream(move |seen| {
            let (gate, answered) = (gate.clone(), answered.clone());
            async move {
                let path = seen.uri.path().to_owned();
                let index: usize = path.rsplit('/').next().unwrap().parse().unwrap();
                if index >= 30 {
                    gate.acquire().await.unwrap().forget();
                }
                answered.lock().unwrap().push(path.clone());
                text(StatusCode::OK, path)
            }
        })
        .await
    };
    let dir = TempDir::new("jobs-crash");
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n[limits]\nconcurrency = 4\n{}\n[jobs]\nstore = \"sqlite://jobs.db\"\n\
             partition_size = 10\nworkers = 2\nlease = \"1s\"\n",
            routes(&[("/api/", up.addr)])
        ),
    )
    .unwrap();
    let start = || Binary::spawn(&["--config", config.to_str().unwrap()], &[]);
    let mut first = start();
    let (_, addr) = first.listening().await;
    let url = |path: &str| format!("http://{addr}{path}");
    // Parts by kind: a GET, a POST without a key, a POST with an Idempotency-Key.
    let parts: Vec<String> = (0..60)
        .map(|i| match i % 3 {
            0 => part(&format!("p{i}"), &format!("GET /api/get/{i} HTTP/1.1\r\n")),
            1 => part(
                &format!("p{i}"),
                &format!("POST /api/once/{i} HTTP/1.1\r\n\r\nx"),
            ),
            _ => part(
                &format!("p{i}"),
                &format!("POST /api/keyed/{i} HTTP/1.1\r\nIdempotency-Key: k{i}\r\n\r\nx"),
            ),
        })
        .collect();
    let reply = http_request(
        &url("/jobs"),
        Method::POST,
        &[("content-type", MP)],
        Bytes::from(batch(&parts)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let id = job_id(&reply);
    // 30 answers committed, and the 8 parts the two partitions run at once held upstream.
    within(30, "30 answers committed and 8 parts in flight", async {
        loop {
            let now = json_from(&url(&format!("/jobs/{id}"))).await;
            if now["request_counts"]["succeeded"] == 30 && up.seen().len() == 38 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    first.signal("-KILL");
    first.child.wait().await.unwrap();
    let done_before: Vec<String> = answered.lock().unwrap().clone();
    let in_flight: Vec<String> = up
        .seen()
        .iter()
        .map(|s| s.uri.path().to_owned())
        .filter(|p| !done_before.contains(p))
        .collect();
    assert_eq!(in_flight.len(), 8);
    assert!(
        in_flight.iter().any(|p| p.contains("/once/")),
        "{in_flight:?}"
    );
    assert!(
        in_flight.iter().any(|p| !p.contains("/once/")),
        "{in_flight:?}"
    );
    gate.add_permits(1000);

    let mut second = start();
    let (_, addr) = second.listening().await;
    let url = |path: &str| format!("http://{addr}{path}");
    let done = within(60, "the job to complete after the restart", async {
        loop {
            let now = json_from(&url(&format!("/jobs/{id}"))).await;
            if now["status"] == "completed" {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let once_in_flight = in_flight.iter().filter(|p| p.contains("/once/")).count();
    assert_eq!(done["request_counts"]["failed"], once_in_flight, "{done}");
    assert_eq!(
        done["request_counts"]["succeeded"],
        60 - once_in_flight,
        "{done}"
    );

    let seen = counts(&up);
    for i in 0..60 {
        let path = match i % 3 {
            0 => format!("/api/get/{i}"),
            1 => format!("/api/once/{i}"),
            _ => format!("/api/keyed/{i}"),
        };
        let was_in_flight = in_flight.contains(&path);
        let expected = if was_in_flight && i % 3 != 1 { 2 } else { 1 };
        assert_eq!(seen.get(&path), Some(&expected), "{path}");
    }
    let reply = http_request(
        &url(&format!("/jobs/{id}/results")),
        Method::GET,
        &[("accept", "application/jsonl")],
        Bytes::new(),
    )
    .await;
    let lines = json_lines(&reply);
    assert_eq!(lines.len(), 60);
    for line in &lines {
        let i = line["index"].as_u64().unwrap();
        let path = format!("/api/once/{i}");
        if in_flight.contains(&path) {
            assert_eq!(line["status"], 500, "{line}");
            let message = line["body"]["error"]["message"].as_str().unwrap();
            assert!(message.contains("may or may not have run"), "{message}");
        } else {
            assert_eq!(line["status"], 200, "{line}");
        }
    }
    second.signal("-TERM");
    second.child.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_on_postgres() {
    let pg = Postgres::start();
    let up = counting_upstream().await;
    let (gw, _live) = live_gateway(&format!(
        "{}\n[jobs]\nstore = \"{}\"\npartition_size = 10\n",
        routes(&[("/api/", up.addr)]),
        pg.url
    ))
    .await;
    let id = submit(&gw, &gets(500), &[]).await;
    let done = wait_status(&gw, &id, "completed").await;
    assert_eq!(done["request_counts"]["succeeded"], 500, "{done}");
    assert!(counts(&up).values().all(|&n| n == 1));
    let lines = results(&gw, &id, &[("accept", "application/x-ndjson")]).await;
    for (i, line) in json_lines(&lines).iter().enumerate() {
        assert_eq!(line["index"], i);
    }
    gw.stop().await;
}

/// Two gateway processes share one Postgres store and one job; one is killed with SIGKILL; the other takes
/// its partitions over once their lease runs out and finishes the job. No partition is claimed by both:
/// only the parts in flight in the killed one are sent twice (they are GETs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_a_job_on_postgres_and_one_finishes_it_after_the_other_is_killed() {
    let pg = Postgres::start();
    let (gate, up) = gated_upstream().await;
    let dir = TempDir::new("jobs-two");
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n[limits]\nconcurrency = 2\n{}\n[jobs]\nstore = \"{}\"\n\
             partition_size = 5\nworkers = 1\nlease = \"1s\"\n",
            routes(&[("/api/", up.addr)]),
            pg.url
        ),
    )
    .unwrap();
    let start = || Binary::spawn(&["--config", config.to_str().unwrap()], &[]);
    let mut a = start();
    let (_, addr_a) = a.listening().await;
    let mut b = start();
    let (_, addr_b) = b.listening().await;
    let reply = http_request(
        &format!("http://{addr_a}/jobs"),
        Method::POST,
        &[("content-type", MP)],
        Bytes::from(batch(&gets(40))),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let id = job_id(&reply);
    // Each instance holds one partition, two parts of it in flight.
    within(30, "both instances running a partition", async {
        loop {
            let doc = json_from(&format!("http://{addr_b}/jobs/{id}/partitions")).await;
            let running = doc["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["status"] == "running")
                .count();
            if running == 2 && up.seen().len() == 4 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let in_flight: Vec<String> = up.seen().iter().map(|s| s.uri.path().to_owned()).collect();
    a.signal("-KILL");
    a.child.wait().await.unwrap();
    gate.add_permits(1000);
    let done = within(60, "the job to complete on the instance left", async {
        loop {
            let doc = json_from(&format!("http://{addr_b}/jobs/{id}")).await;
            if doc["status"] == "completed" {
                return doc;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(done["request_counts"]["succeeded"], 40, "{done}");
    let seen = counts(&up);
    assert_eq!(seen.len(), 40);
    let twice: Vec<&String> = seen
        .iter()
        .filter(|(_, n)| **n == 2)
        .map(|(p, _)| p)
        .collect();
    assert!(seen.values().all(|&n| n <= 2), "{seen:?}");
    // The killed instance's two parts in flight ran again; nothing else did.
    assert_eq!(twice.len(), 2, "{seen:?}");
    assert!(
        twice.iter().all(|p| in_flight.contains(p)),
        "{twice:?} {in_flight:?}"
    );
    b.signal("-TERM");
    b.child.wait().await.unwrap();
}

#[tokio::test]
async fn an_ended_job_is_called_back_once_signed_and_retried_after_a_failure() {
    let up = counting_upstream().await;
    // The receiver fails the first try.
    let tries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let receiver = {
        let tries = tries.clone();
        upstream(move |_| {
            let first = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            async move {
                if first {
                    text(StatusCode::SERVICE_UNAVAILABLE, "later")
                } else {
                    text(StatusCode::NO_CONTENT, "")
                }
            }
        })
        .await
    };
    let secret = "a secret of sixteen bytes or more";
    let (gw, _live, _dir) = api_jobs(
        "jobs-callback",
        &up,
        &format!(
            "callback_hosts = [\"{}\"]\ncallback_secret = \"{secret}\"",
            receiver.addr
        ),
        "",
    )
    .await;
    // A URL outside callback_hosts refuses the job.
    let reply = post_jobs(
        &gw,
        &[
            ("content-type", MP),
            ("batchgate-callback", "http://127.0.0.1:9/elsewhere"),
        ],
        Bytes::from(batch(&gets(1))),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.error_message().contains("jobs.callback_hosts"));

    let url = format!("http://{}/done?job=1", receiver.addr);
    let id = submit(&gw, &gets(3), &[("batchgate-callback", url.as_str())]).await;
    wait_status(&gw, &id, "completed").await;
    eventually("the callback, tried twice", || receiver.seen().len() == 2).await;
    for call in receiver.seen() {
        assert_eq!(call.method, Method::POST);
        assert_eq!(call.uri.to_string(), "/done?job=1");
        assert_eq!(call.headers["batchgate-job"], id.as_str());
        let status: serde_json::Value = serde_json::from_slice(&call.body).unwrap();
        assert_eq!(status["id"], id.as_str());
        assert_eq!(status["status"], "completed");
        // t=SECONDS,v1=HEX with HEX = HMAC-SHA256(secret, "SECONDS.BODY").
        let signed = call.headers["batchgate-signature"].to_str().unwrap();
        let (time, hex) = signed
            .strip_prefix("t=")
            .and_then(|rest| rest.split_once(",v1="))
            .unwrap();
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{time}.").as_bytes());
        mac.update(&call.body);
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, expected);
    }
    gw.stop().await;
}

/// A JSON batch (Graph/OData) is a job as a multipart one is: read by the same codec, answered by id; a
/// request naming `dependsOn` is refused, since a job's partitions run independently.
#[tokio::test]
async fn a_json_batch_is_a_job_and_depends_on_is_refused() {
    let up = counting_upstream().await;
    let (gw, _live, _dir) = api_jobs("jobs-json", &up, "", "").await;
    let body = serde_json::json!({"requests": [
        {"id": "a", "method": "GET", "url": "/api/1"},
        {"id": "b", "method": "get", "url": "/api/2"},
    ]})
    .to_string();
    let reply = post_jobs(
        &gw,
        &[("content-type", "application/json")],
        Bytes::from(body),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let location = reply.headers["location"].to_str().unwrap().to_owned();
    let id = location.strip_prefix("/jobs/").unwrap();
    wait_status(&gw, id, "completed").await;
    let reply = results(&gw, id, &[("accept", "application/jsonl")]).await;
    let lines = json_lines(&reply);
    let answered: Vec<(&str, u64, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap(),
                l["status"].as_u64().unwrap(),
                l["body"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(answered, [("a", 200, "/api/1"), ("b", 200, "/api/2")]);

    let dependent = serde_json::json!({"requests": [
        {"id": "a", "method": "POST", "url": "/api/1", "body": "x", "headers": {"content-type": "text/plain"}},
        {"id": "b", "method": "GET", "url": "/api/2", "dependsOn": ["a"]},
    ]})
    .to_string();
    let reply = post_jobs(
        &gw,
        &[("content-type", "application/json")],
        Bytes::from(dependent),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let error: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("dependsOn"),
        "{error}"
    );
    // Refused as a whole: the POST was never sent.
    assert_eq!(counts(&up).get("/api/1"), Some(&1));
    gw.stop().await;
}

/// An upstream that answers after 5 ms: a route with adaptive concurrency starting at a limit of 1 sees its
/// latency hold, so its limit rises once two sample windows (at least 100 ms and 16 parts each) are in.
async fn five_ms_upstream() -> Upstream {
    upstream(|seen| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        text(StatusCode::OK, seen.uri.path().to_owned())
    })
    .await
}

/// `/api/` with adaptive concurrency from 1 to 4 in front of `up`.
fn adaptive_route(up: &Upstream) -> String {
    format!(
        "{}adaptive_concurrency = {{ min = 1, max = 4 }}\n",
        routes(&[("/api/", up.addr)])
    )
}

/// `GET /jobs/{id}/tuning`'s changes, checked to be one history: each a change of `/api/`'s limit with its
/// reason, the first from the limit's start (1), each from where the one before went, in time order.
async fn tuning_history(gw: &TestGateway, id: &str) -> Vec<serde_json::Value> {
    let (status, doc) = get_json(gw, &format!("/jobs/{id}/tuning"), &[]).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["truncated"], false);
    let changes = doc["tuning"].as_array().unwrap().clone();
    assert!(
        !changes.is_empty(),
        "200 parts of 5 ms at a limit of 1 to 4 moved the limit: {doc}"
    );
    assert_eq!(changes[0]["from"], 1, "{doc}");
    for change in &changes {
        assert_eq!(change["route"], "/api/");
        assert_ne!(change["from"], change["to"]);
        assert!(!change["reason"].as_str().unwrap().is_empty());
    }
    for pair in changes.windows(2) {
        assert_eq!(pair[0]["to"], pair[1]["from"], "{doc}");
        assert!(pair[0]["at"].as_i64() <= pair[1]["at"].as_i64(), "{doc}");
    }
    changes
}

/// The tuning history: the limit changes a job's parts made on a route with adaptive concurrency are kept
/// with the job, in order, and are still there after the gateway restarts on the same store; a job on a
/// route without adaptive concurrency has none; a deleted job's are gone with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_limit_changes_are_kept_in_order_across_a_restart() {
    let up = five_ms_upstream().await;
    let plain = counting_upstream().await;
    let dir = TempDir::new("jobs-tuning");
    let config = format!(
        "{}{}",
        adaptive_route(&up),
        routes(&[("/plain/", plain.addr)])
    );
    let (gw, _live) = jobs_gateway(&dir, "", &config).await;
    let id = submit(&gw, &gets(200), &[]).await;
    let plain_id = submit(&gw, &gets_to("plain", "q", 50), &[]).await;
    wait_status(&gw, &id, "completed").await;
    wait_status(&gw, &plain_id, "completed").await;
    let before = tuning_history(&gw, &id).await;
    let (status, none) = get_json(&gw, &format!("/jobs/{plain_id}/tuning"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(none["tuning"], serde_json::json!([]), "{none}");
    let reply = gw
        .request(
            Method::POST,
            &format!("/jobs/{id}/tuning"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    gw.stop().await;

    let (gw, _live) = jobs_gateway(&dir, "", &config).await;
    assert_eq!(tuning_history(&gw, &id).await, before);
    delete_job(&gw, &id).await;
    let (status, _) = get_json(&gw, &format!("/jobs/{id}/tuning"), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    gw.stop().await;
}

/// The same history on Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_limit_changes_are_kept_on_postgres() {
    let pg = Postgres::start();
    let up = five_ms_upstream().await;
    let (gw, _live) = live_gateway(&format!(
        "{}\n[jobs]\nstore = \"{}\"\n",
        adaptive_route(&up),
        pg.url
    ))
    .await;
    let id = submit(&gw, &gets(200), &[]).await;
    wait_status(&gw, &id, "completed").await;
    tuning_history(&gw, &id).await;
    gw.stop().await;
}
