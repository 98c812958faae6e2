//! The `/jobs` endpoints, on the public listener. A job is its creator's: every URL of it answers 404 to
//! anyone else, as for a job that does not exist.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderValue, LOCATION, RETRY_AFTER};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, StreamBody};
use tokio::time::Instant;

use super::status::JobStatus;
use super::store::{JobRow, NewPart, Origin, PartContent, Performance, ResultRow, StoredRequest};
use super::workers::part_error;
use super::{JobError, Jobs, callback, owner, random_id};
use crate::batch::read::next_data;
use crate::codec::multipart::{self, ReplyWriter};
use crate::codec::{self, Part, Rendered};
use crate::error::{BatchError, PartError};
use crate::gateway::Gateway;
use crate::response::{BoxError, Chunk, ReplyBody, full, json_error};
use crate::stack::UpstreamResponse;
use batchgate_wire::{ContentId, Framing};

/// The header on a results reply that says whether every part has its answer (`false` while the job runs).
pub(crate) const COMPLETE_HEADER: &str = "batchgate-job-complete";
/// Answers read from the store at a time while streaming results.
const RESULTS_PAGE: i64 = 100;
/// Jobs per page of `GET /jobs`, unless `limit` says fewer (at most [`MAX_LIST`]).
const DEFAULT_LIST: i64 = 20;
const MAX_LIST: i64 = 100;

/// Whether a request to the batch endpoint asks to become a job (`Prefer: respond-async`, RFC 7240).
pub(crate) fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::HeaderName::from_static("prefer"))
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| {
            token
                .split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("respond-async"))
        })
}

/// Whether `path` is one of the jobs URLs.
pub(crate) fn is_jobs_path(path: &str) -> bool {
    path == "/jobs" || path.starts_with("/jobs/")
}

/// Answers one request under `/jobs`.
pub(crate) async fn serve<B>(
    jobs: &Arc<Jobs>,
    gateway: &Arc<Gateway>,
    request: Request<B>,
    peer: IpAddr,
    tls: bool,
    respond_async: bool,
) -> Response<ReplyBody>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let path = request.uri().path().to_owned();
    let result = if respond_async {
        submit(jobs, gateway, request, peer, tls).await
    } else {
        route(jobs, gateway, request, peer, tls, &path).await
    };
    match result {
        Ok(response) => response,
        Err(error) => refuse(&error, peer, &path),
    }
}

/// The JSON error answer for a refused jobs request, logged.
fn refuse(error: &JobError, peer: IpAddr, path: &str) -> Response<ReplyBody> {
    let status = error.status();
    if status.is_server_error() {
        tracing::warn!(%peer, path, status = status.as_u16(), "jobs: {error}");
    } else {
        tracing::info!(%peer, path, status = status.as_u16(), "jobs: {error}");
    }
    let mut response = json_error(status, &error.to_string());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("5"));
    }
    if let JobError::MethodNotAllowed { allow, .. } = error {
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    }
    response
}

async fn route<B>(
    jobs: &Arc<Jobs>,
    gateway: &Arc<Gateway>,
    request: Request<B>,
    peer: IpAddr,
    tls: bool,
    path: &str,
) -> Result<Response<ReplyBody>, JobError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let client = gateway.headers.client(request.headers(), peer);
    let caller = owner(request.headers(), client);
    let method = request.method().clone();
    let not_allowed = |allow| JobError::MethodNotAllowed {
        method: method.clone(),
        path: path.to_owned(),
        allow,
    };
    let rest = path.strip_prefix("/jobs").unwrap_or_default();
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [] if method == Method::POST => submit(jobs, gateway, request, peer, tls).await,
        [] if method == Method::GET => list(jobs, &caller, request.uri().query()).await,
        [] => Err(not_allowed("GET, POST")),
        [id, tail @ ..] => {
            let job = visible(jobs, id, &caller).await?;
            match (tail, &method) {
                ([], &Method::GET) => Ok(json(StatusCode::OK, status_json(jobs, &job).await?)),
                ([], &Method::DELETE) => {
                    jobs.store.delete(&job.id).await?;
                    jobs.stopped();
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                (["partitions"], &Method::GET) => partitions(jobs, &job).await,
                (["results"], &Method::GET) => results(jobs, &job, request.headers()),
                (["tuning"], &Method::GET) => tuning(jobs, &job).await,
                (["partitions" | "results" | "tuning"], _) => Err(not_allowed("GET")),
                ([action], &Method::POST) => act(jobs, &job, action).await,
                ([], _) => Err(not_allowed("GET, DELETE")),
                (["pause" | "resume" | "cancel" | "retry"], _) => Err(not_allowed("POST")),
                _ => Err(JobError::NotFound(path.to_owned())),
            }
        }
    }
}

/// The job, when it exists and is the caller's; `NotFound` otherwise (the same answer either way).
async fn visible(jobs: &Jobs, id: &str, caller: &str) -> Result<JobRow, JobError> {
    match jobs.store.job(id).await? {
        Some(job) if job.owner == caller && job.status != JobStatus::Receiving => {
            Ok(expire(jobs, job))
        }
        _ => Err(JobError::NotFound(id.to_owned())),
    }
}

/// A job past its expiry is `expired`, whether or not the sweep has reached it yet.
fn expire(jobs: &Jobs, mut job: JobRow) -> JobRow {
    if job
        .expires_at
        .is_some_and(|at| at <= jobs.store.clock.now())
    {
        job.status = JobStatus::Expired;
    }
    job
}

/// `POST /jobs` (and `POST /batch` with `Prefer: respond-async`): reads the batch into the store part by
/// part, never holding it whole, then queues it.
async fn submit<B>(
    jobs: &Arc<Jobs>,
    gateway: &Arc<Gateway>,
    request: Request<B>,
    peer: IpAddr,
    tls: bool,
) -> Result<Response<ReplyBody>, JobError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let arrival = Instant::now();
    let (head, body) = request.into_parts();
    let limits = &gateway.config.limits;
    let content_type = head
        .headers
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().map_err(|_| BatchError::NoContentType))
        .transpose()?;
    let (reader, _) = codec::open(
        content_type,
        None,
        limits.max_part_bytes,
        gateway.part_limits,
    )?;
    let callback = callback::requested(&jobs.config, &head.headers)?;
    let open = jobs.store.open_jobs().await?;
    if open >= jobs.config.max_jobs as i64 {
        return Err(JobError::TooManyJobs(jobs.config.max_jobs));
    }
    let id = random_id();
    let client = gateway.headers.client(&head.headers, peer);
    let mut kept = head.headers.clone();
    kept.remove(CONTENT_TYPE);
    kept.remove(http::header::CONTENT_LENGTH);
    kept.remove(callback::HEADER);
    let origin = Origin {
        headers: kept,
        peer,
        tls,
    };
    jobs.store
        .create(
            &id,
            &owner(&head.headers, client),
            &origin,
            callback.as_deref(),
        )
        .await?;
    let read = Intake {
        jobs,
        gateway,
        id: &id,
    }
    .read(reader, body, arrival)
    .await;
    let total = match read {
        Ok(total) => total,
        Err(error) => {
            if let Err(e) = jobs.store.delete(&id).await {
                tracing::warn!(job = %id, "jobs: dropping a refused job failed: {e}");
            }
            return Err(error);
        }
    };
    let partition_size = jobs.config.partition_size as i64;
    jobs.store.seal(&id, total, partition_size).await?;
    jobs.wake.notify_waiters();
    tracing::info!(job = %id, parts = total, %peer, "job accepted");
    let job = jobs
        .store
        .job(&id)
        .await?
        .ok_or_else(|| JobError::NotFound(id.clone()))?;
    let mut response = json(StatusCode::ACCEPTED, status_json(jobs, &job).await?);
    let headers = response.headers_mut();
    headers.insert(
        LOCATION,
        HeaderValue::from_str(&format!("/jobs/{id}")).expect("hex digits"),
    );
    headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    Ok(response)
}

/// Reading one job's body into the store.
struct Intake<'a> {
    jobs: &'a Jobs,
    gateway: &'a Gateway,
    id: &'a str,
}

impl Intake<'_> {
    /// Reads the body, writing its parts a partition at a time; returns how many there were.
    async fn read<B>(
        &self,
        mut reader: codec::PartReader,
        mut body: B,
        arrival: Instant,
    ) -> Result<i64, JobError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let limits = &self.gateway.config.limits;
        let config = &self.jobs.config;
        let partition_size = config.partition_size as i64;
        let deadline = arrival + limits.upload_timeout;
        let mut pending = Vec::with_capacity(config.partition_size);
        let (mut received, mut parts) = (0u64, 0usize);
        while let Some(data) = next_data(&mut body, limits, deadline).await? {
            received += data.len() as u64;
            if received > config.max_job_bytes {
                return Err(JobError::TooLarge {
                    received,
                    limit: config.max_job_bytes,
                });
            }
            reader.push(&data);
            while let Some(part) = reader.next_part()? {
                parts += 1;
                if parts > config.max_parts {
                    continue;
                }
                pending.push(self.part(parts - 1, part)?);
                if pending.len() == config.partition_size {
                    let first = (parts - pending.len()) as i64;
                    self.jobs
                        .store
                        .add_parts(self.id, first, partition_size, &pending)
                        .await?;
                    pending.clear();
                }
            }
            if reader.is_closed() {
                break;
            }
        }
        reader.finish()?;
        if parts > config.max_parts {
            return Err(JobError::TooManyParts {
                received: parts,
                limit: config.max_parts,
            });
        }
        if !pending.is_empty() {
            let first = (parts - pending.len()) as i64;
            self.jobs
                .store
                .add_parts(self.id, first, partition_size, &pending)
                .await?;
        }
        Ok(parts as i64)
    }

    /// One part as stored: its request once it routes, or the answer a part refused now gets. (The codec
    /// refuses a duplicated Content-ID or JSON id.)
    fn part(&self, index: usize, part: Part) -> Result<NewPart, JobError> {
        if !part.depends_on.is_empty() {
            return Err(JobError::DependsOn { index });
        }
        let content_id = part.content_id.as_ref().map(ContentId::header_value);
        let content = match self.request(index, part.request) {
            Ok(request) => PartContent::Request(request),
            Err(error) => PartContent::Answered(part_error(&error)),
        };
        let once = matches!(&content, PartContent::Request(r)
            if !matches!(r.method.as_str(), "GET" | "HEAD" | "OPTIONS")
                && !r.headers.contains_key("idempotency-key"));
        Ok(NewPart {
            content_id,
            content,
            once,
        })
    }

    fn request(
        &self,
        index: usize,
        request: Result<batchgate_wire::EmbeddedRequest, batchgate_wire::RequestError>,
    ) -> Result<StoredRequest, PartError> {
        let request = request.map_err(|source| PartError::Request { index, source })?;
        self.gateway
            .router
            .route(&request.target, None)
            .map_err(|source| PartError::Route { index, source })?;
        crate::batch::read::refuse_nested(index, &request.headers)?;
        Ok(StoredRequest {
            method: request.method.as_str().to_owned(),
            target: request.target,
            headers: request.headers,
            body: request.body,
        })
    }
}

/// `GET /jobs/{id}`'s document.
pub(crate) async fn status_json(jobs: &Jobs, job: &JobRow) -> Result<serde_json::Value, JobError> {
    let counts = jobs.store.counts(&job.id).await?;
    let (total, done, failed) = jobs.store.partition_counts(&job.id).await?;
    Ok(serde_json::json!({
        "id": job.id,
        "status": job.status.as_str(),
        "request_counts": {
            "total": job.total,
            "succeeded": counts.succeeded,
            "failed": counts.failed,
            "cancelled": counts.cancelled,
            "pending": counts.pending,
        },
        "partitions": { "total": total, "done": done, "failed": failed },
        "created_at": seconds(Some(job.created_at)),
        "started_at": seconds(job.started_at),
        "ended_at": seconds(job.ended_at),
        "expires_at": seconds(job.expires_at),
        "performance": performance(&job.performance),
    }))
}

/// An ended job's figures: answers per second from its start to its end, and its parts' upstream latency
/// percentiles; `null` until it ends.
fn performance(figures: &Performance) -> serde_json::Value {
    match figures.parts_per_second {
        None => serde_json::Value::Null,
        Some(rate) => serde_json::json!({
            "parts_per_second": (rate * 10.0).round() / 10.0,
            "latency_ms": { "p50": figures.p50_ms, "p90": figures.p90_ms, "p99": figures.p99_ms },
        }),
    }
}

/// A store time (milliseconds) as Unix seconds, as OpenAI's and Anthropic's batch APIs give them.
fn seconds(ms: Option<i64>) -> serde_json::Value {
    ms.map_or(serde_json::Value::Null, |ms| (ms / 1000).into())
}

/// `GET /jobs?limit=N&after=CURSOR`: the caller's jobs, newest first.
async fn list(
    jobs: &Jobs,
    caller: &str,
    query: Option<&str>,
) -> Result<Response<ReplyBody>, JobError> {
    let mut limit = DEFAULT_LIST;
    let mut after: Option<(i64, String)> = None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIST).contains(n))
                    .ok_or_else(|| {
                        JobError::BadQuery(format!("limit={value}: it must be 1 to {MAX_LIST}"))
                    })?;
            }
            "after" => {
                let cursor = value.split_once('.').and_then(|(at, id)| {
                    Some((at.parse().ok()?, id.to_owned()))
                        .filter(|_| id.bytes().all(|b| b.is_ascii_hexdigit()))
                });
                after = Some(cursor.ok_or_else(|| {
                    JobError::BadQuery(format!("after={value}: give the `next` of the page before"))
                })?);
            }
            _ => {
                return Err(JobError::BadQuery(format!(
                    "{key}: GET /jobs takes limit and after"
                )));
            }
        }
    }
    let rows = jobs
        .store
        .jobs(
            caller,
            after.as_ref().map(|(at, id)| (*at, id.as_str())),
            limit + 1,
        )
        .await?;
    let more = rows.len() as i64 > limit;
    let mut listed = Vec::new();
    for job in rows.into_iter().take(limit as usize) {
        listed.push(expire(jobs, job));
    }
    let next = listed
        .last()
        .filter(|_| more)
        .map(|job| format!("{}.{}", job.created_at, job.id));
    let mut documents = Vec::with_capacity(listed.len());
    for job in &listed {
        documents.push(status_json(jobs, job).await?);
    }
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "jobs": documents, "next": next }),
    ))
}

/// `GET /jobs/{id}/partitions`: each partition's status, counts and timings.
async fn partitions(jobs: &Jobs, job: &JobRow) -> Result<Response<ReplyBody>, JobError> {
    if job.status == JobStatus::Expired {
        return Err(JobError::Expired(job.id.clone()));
    }
    let rows = jobs.store.partitions(&job.id).await?;
    let list: Vec<serde_json::Value> = rows
        .iter()
        .map(|p| {
            serde_json::json!({
                "index": p.idx,
                "status": p.status,
                "parts": p.parts,
                "done": p.done,
                "failed": p.failed,
                "started_at": seconds(p.started_at),
                "ended_at": seconds(p.ended_at),
            })
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "id": job.id, "partitions": list }),
    ))
}

/// `GET /jobs/{id}/tuning`: the limit changes the job's parts made, in order (`super::tuning`), shaped as
/// `/admin/stats`' tuning events; `truncated` once the job has its most.
async fn tuning(jobs: &Jobs, job: &JobRow) -> Result<Response<ReplyBody>, JobError> {
    if job.status == JobStatus::Expired {
        return Err(JobError::Expired(job.id.clone()));
    }
    let rows = jobs.store.tuning(&job.id).await?;
    let truncated = rows.len() as i64 >= super::tuning::MAX_TUNING_ROWS;
    let list: Vec<serde_json::Value> = rows
        .iter()
        .map(|change| {
            serde_json::json!({
                "at": change.at,
                "route": &*change.route,
                "from": change.from,
                "to": change.to,
                "reason": change.reason,
            })
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "id": job.id, "tuning": list, "truncated": truncated }),
    ))
}

/// `POST /jobs/{id}/pause | resume | cancel | retry`: the job's status after it.
async fn act(jobs: &Jobs, job: &JobRow, action: &str) -> Result<Response<ReplyBody>, JobError> {
    use JobStatus::{Cancelled, Cancelling, Completed, Paused, Queued, Running};
    let conflict = |allowed| JobError::Conflict {
        id: job.id.clone(),
        status: job.status.as_str(),
        action: match action {
            "pause" => "pause",
            "resume" => "resume",
            "cancel" => "cancel",
            _ => "retry",
        },
        allowed,
    };
    if job.status == JobStatus::Expired {
        return Err(JobError::Expired(job.id.clone()));
    }
    match action {
        "pause" => {
            if !jobs
                .store
                .transition(&job.id, &[Queued, Running], Paused)
                .await?
            {
                return Err(conflict("queued or running"));
            }
            jobs.stopped();
        }
        "resume" => {
            if !jobs.store.transition(&job.id, &[Paused], Queued).await? {
                return Err(conflict("paused"));
            }
            jobs.wake.notify_waiters();
        }
        "cancel" => {
            if !jobs
                .store
                .transition(&job.id, &[Queued, Running, Paused], Cancelling)
                .await?
            {
                return Err(conflict("queued, running or paused"));
            }
            jobs.stopped();
            jobs.store.settle(&job.id).await?;
        }
        "retry" => {
            if !matches!(job.status, Completed | Cancelled | JobStatus::Failed) {
                return Err(conflict("completed, cancelled or failed"));
            }
            jobs.store.retry(&job.id).await?;
            jobs.wake.notify_waiters();
        }
        _ => return Err(JobError::NotFound(format!("/jobs/{}/{action}", job.id))),
    }
    let job = jobs
        .store
        .job(&job.id)
        .await?
        .ok_or_else(|| JobError::NotFound(job.id.clone()))?;
    Ok(json(StatusCode::OK, status_json(jobs, &job).await?))
}

/// The reply formats of `GET /jobs/{id}/results`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Multipart,
    JsonLines,
}

/// `GET /jobs/{id}/results`: the answers so far, in request order, streamed from the store a page at a
/// time; `batchgate-job-complete: false` while parts are still without one.
fn results(
    jobs: &Arc<Jobs>,
    job: &JobRow,
    headers: &HeaderMap,
) -> Result<Response<ReplyBody>, JobError> {
    if job.status == JobStatus::Expired {
        return Err(JobError::Expired(job.id.clone()));
    }
    let accept = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let format = if accept.contains("application/jsonl") || accept.contains("application/x-ndjson")
    {
        Format::JsonLines
    } else {
        Format::Multipart
    };
    let writer = multipart::ReplyWriter::new();
    let content_type = match format {
        Format::Multipart => writer.content_type(),
        Format::JsonLines => HeaderValue::from_static("application/jsonl"),
    };
    let complete = job.status.ended();
    let stream = futures_util::stream::unfold(
        (jobs.clone(), job.id.clone(), 0i64, false),
        move |(jobs, id, from, closed)| {
            let writer = writer.clone();
            async move {
                if closed {
                    return None;
                }
                let rows = match jobs.store.results(&id, from, RESULTS_PAGE).await {
                    Ok(rows) => rows,
                    Err(e) => {
                        tracing::warn!(job = %id, "jobs: reading results failed: {e}");
                        let error: BoxError = e.to_string().into();
                        return Some((Err(error), (jobs, id, from, true)));
                    }
                };
                let Some(last) = rows.last().map(|r| r.idx) else {
                    let end = match format {
                        Format::Multipart => writer.close(),
                        Format::JsonLines => Bytes::new(),
                    };
                    return Some((Ok(Frame::data(Chunk::One(end))), (jobs, id, from, true)));
                };
                let pieces = rows.iter().filter_map(|row| render(&writer, format, row));
                let chunk = Chunk::many(pieces.flatten().collect::<Vec<_>>());
                Some((Ok(Frame::data(chunk)), (jobs, id, last + 1, false)))
            }
        },
    );
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(
        COMPLETE_HEADER,
        HeaderValue::from_static(if complete { "true" } else { "false" }),
    );
    Ok(response)
}

/// One answered part in the reply's format; `None` for a part without an answer yet.
fn render(writer: &ReplyWriter, format: Format, row: &ResultRow) -> Option<Vec<Bytes>> {
    let answer = row.answer.as_ref()?;
    let content_id = row.content_id.as_deref().map(ContentId::parse);
    match format {
        Format::Multipart => {
            let response = UpstreamResponse {
                status: StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY),
                headers: answer.headers.clone(),
                body: vec![answer.body.clone()],
                body_len: answer.body.len() as u64,
                framing: Framing::Exact,
                peer: None,
            };
            Some(match writer.response(content_id.as_ref(), &response) {
                Rendered::Whole(bytes) => vec![bytes],
                Rendered::Pieces(pieces) => pieces,
            })
        }
        Format::JsonLines => {
            let headers: serde_json::Map<String, serde_json::Value> = answer
                .headers
                .keys()
                .map(|name| {
                    let values: Vec<String> = answer
                        .headers
                        .get_all(name)
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect();
                    (name.as_str().to_owned(), values.join(", ").into())
                })
                .collect();
            let mut line = serde_json::json!({
                "index": row.idx,
                "id": content_id.as_ref().map(|c| c.id().to_owned()),
                "status": answer.status,
                "headers": headers,
            });
            match serde_json::from_slice::<serde_json::Value>(&answer.body) {
                Ok(value) if !answer.body.is_empty() => line["body"] = value,
                _ => match std::str::from_utf8(&answer.body) {
                    Ok(text) => line["body"] = text.into(),
                    Err(_) => {
                        use base64::Engine as _;
                        line["body_base64"] = base64::engine::general_purpose::STANDARD
                            .encode(&answer.body)
                            .into();
                    }
                },
            }
            let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
            bytes.push(b'\n');
            Some(vec![Bytes::from(bytes)])
        }
    }
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<ReplyBody> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn empty(status: StatusCode) -> Response<ReplyBody> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = status;
    response
}
