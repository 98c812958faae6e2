//! The workers: up to `jobs.workers` partitions at once, each claimed with a lease kept by a heartbeat; a
//! partition whose lease runs out (its instance died) is claimed again, here or by another instance.
//!
//! A partition's parts go through their route's stack as a batch's parts do (rate limit, policy, timeouts,
//! retries, limits), a few at once (`limits.concurrency`), each first taking one of the jobs' share of the
//! in-flight permits ([`super::Jobs`]), so that synchronous batches are never starved.
//!
//! Nothing lost, nothing run twice: an answer is committed to the store before its part counts as done.
//! Answers are committed in groups (the [`committer`]): each part waits for its group's commit, so the rule
//! holds while the store sees one commit per group rather than one per answer. A
//! part that must not run twice (unsafe, without an `Idempotency-Key`) is marked `sent` before it is sent;
//! found so when its partition is claimed again (after a crash), it is answered 500 saying it may or may not
//! have run. Every other part without an answer runs (again).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

use super::status::{JobStatus, PartState};
use super::store::{Answered, Claim, Origin, PartToRun, StoredAnswer, failed};
use super::tuning::{self, JobTag, TuningRow};
use super::{JobError, Jobs, callback};
use crate::error::{PartError, error_body};
use crate::gateway::Gateway;
use crate::observe::trace::TraceContext;
use crate::stack::{BatchScope, PartRequest, ResponseBudget};

/// The message of a part found in flight after a crash that must not be sent twice.
pub(crate) const MAY_HAVE_RUN: &str = "the gateway stopped while this request was in flight; it was not \
     sent again because it is not safe to repeat and has no Idempotency-Key: it may or may not have run";

/// Most answers committed in one transaction.
const MAX_GROUP: usize = 256;

/// How long a running partition goes on from its job's status as last read from the store, when no job was
/// stopped on this instance meanwhile: a pause or cancel answered by another instance sharing the store stops
/// this one's parts within it. (Reading it before every part queued each start behind the group commits.)
const STATUS_FRESH: std::time::Duration = std::time::Duration::from_millis(100);

/// An answer waiting for its group's commit, and the part to tell once it is committed (or failed).
type Waiting = (Answered, oneshot::Sender<Result<(), String>>);

/// Where a part sends its answer to be committed.
type Commits = mpsc::Sender<Waiting>;

/// Claims partitions and runs them until the server is gone; `tuned` is where their parts' limit changes
/// wait to be written.
pub(crate) async fn run(jobs: Arc<Jobs>, tuned: mpsc::Receiver<TuningRow>) {
    let (commits, waiting) = mpsc::channel(MAX_GROUP);
    tokio::spawn(committer(jobs.clone(), waiting, tuned));
    let slots = Arc::new(tokio::sync::Semaphore::new(jobs.config.workers));
    let lease_ms = lease_ms(&jobs);
    // Idle, look again this often: another instance's jobs, and leases that ran out, wake no one here.
    let poll = jobs.config.lease / 3;
    let mut sweep_at = Instant::now();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        if jobs.live.strong_count() == 0 {
            return;
        }
        if Instant::now() >= sweep_at {
            sweep_at = Instant::now() + poll;
            // An upload still being read is younger than `limits.upload_timeout`.
            let abandoned = jobs.gateway().map_or(jobs.config.lease, |g| {
                g.config.limits.upload_timeout + jobs.config.lease
            });
            if let Err(e) = jobs.store.sweep(abandoned).await {
                tracing::warn!("jobs: sweeping expired jobs failed: {e}");
            }
            count_jobs(&jobs).await;
            callback::deliver_due(&jobs).await;
        }
        // Registered before looking, so that a submission between the look and the wait is not missed.
        let wake = jobs.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        match jobs.store.claim(&jobs.worker_id, lease_ms).await {
            Ok(Some(claim)) => {
                let (jobs, commits) = (jobs.clone(), commits.clone());
                tokio::spawn(async move {
                    if let Err(e) = partition(&jobs, &claim, commits).await {
                        tracing::warn!(job = %claim.job_id, partition = claim.idx, "jobs: {e}");
                    }
                    jobs.wake.notify_one();
                    drop(slot);
                });
            }
            Ok(None) => {
                drop(slot);
                let _ = tokio::time::timeout(poll, wake).await;
            }
            Err(e) => {
                drop(slot);
                tracing::warn!("jobs: claiming a partition failed: {e}");
                tokio::time::sleep(poll).await;
            }
        }
    }
}

/// The group commit: commits the answers that are ready in one transaction, then tells their parts. A group
/// is what arrived while the commit before it ran (at most [`MAX_GROUP`]): no answer waits for a timer, only
/// for the commit ahead of it, so a lone answer is committed at once and a busy store takes many per commit.
/// The limit changes queued by then go in the same transaction: a change is queued before the answer of the
/// part that made it, so it is committed no later than that answer. Ends once every part and worker is gone.
async fn committer(
    jobs: Arc<Jobs>,
    mut waiting: mpsc::Receiver<Waiting>,
    mut tuned: mpsc::Receiver<TuningRow>,
) {
    while let Some(group) = next_group(&mut waiting).await {
        let (answers, parts): (Vec<Answered>, Vec<_>) = group.into_iter().unzip();
        let tuning = tuning::queued(&mut tuned);
        let result = jobs
            .store
            .answers(&answers, &tuning)
            .await
            .map_err(|e| match e {
                JobError::Store(message) => message,
                other => other.to_string(),
            });
        for part in parts {
            let _ = part.send(result.clone());
        }
    }
}

/// The next group: waits for one answer, then takes those already waiting behind it, up to [`MAX_GROUP`].
async fn next_group(waiting: &mut mpsc::Receiver<Waiting>) -> Option<Vec<Waiting>> {
    let mut group = Vec::new();
    (waiting.recv_many(&mut group, MAX_GROUP).await > 0).then_some(group)
}

/// Sets the jobs-by-status gauges from the store.
async fn count_jobs(jobs: &Jobs) {
    let (Some(gateway), Ok(counts)) = (jobs.gateway(), jobs.store.by_status().await) else {
        return;
    };
    for (status, count) in counts {
        gateway.metrics.jobs_in(status.as_str(), count);
    }
    let [(_, queued), (_, running), (_, paused)] = counts;
    gateway.observer.jobs(|view| {
        view.queued = queued;
        view.running = running;
        view.paused = paused;
    });
}

fn lease_ms(jobs: &Jobs) -> i64 {
    i64::try_from(jobs.config.lease.as_millis()).unwrap_or(i64::MAX)
}

/// Runs one claimed partition, holding its lease, then gives it back.
async fn partition(jobs: &Arc<Jobs>, claim: &Claim, commits: Commits) -> Result<(), JobError> {
    let Some(gateway) = jobs.gateway() else {
        return Ok(());
    };
    // The heartbeat: `lost` turns true once the lease is another instance's; no part starts after that.
    let (lost, lease_lost) = watch::channel(false);
    let beat = {
        let jobs = jobs.clone();
        let claim = claim.clone();
        tokio::spawn(async move {
            let every = jobs.config.lease / 3;
            loop {
                tokio::time::sleep(every).await;
                match jobs
                    .store
                    .heartbeat(&claim, &jobs.worker_id, lease_ms(&jobs))
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = lost.send(true);
                        return;
                    }
                    Err(e) => tracing::warn!(job = %claim.job_id, "jobs: heartbeat failed: {e}"),
                }
            }
        })
    };
    gateway.observer.job_running(&claim.job_id, true);
    let result = run_parts(jobs, &gateway, claim, lease_lost, commits).await;
    gateway.observer.job_running(&claim.job_id, false);
    beat.abort();
    if let Err(JobError::Unreadable(reason)) = &result {
        // Not a passing fault: claimed again, it would fail again. The job itself cannot run.
        tracing::warn!(job = %claim.job_id, partition = claim.idx, "jobs: the job failed: its stored parts cannot be read: {reason}");
        jobs.store.fail(&claim.job_id).await?;
        jobs.stopped();
        callback::deliver_due(jobs).await;
        return Ok(());
    }
    result?;
    if jobs.store.release(claim, &jobs.worker_id).await? {
        gateway.metrics.job_partition_done();
        gateway.observer.jobs(|view| view.partitions_done += 1);
        callback::deliver_due(jobs).await;
    }
    Ok(())
}

async fn run_parts(
    jobs: &Arc<Jobs>,
    gateway: &Arc<Gateway>,
    claim: &Claim,
    lost: watch::Receiver<bool>,
    commits: Commits,
) -> Result<(), JobError> {
    let parts = jobs.store.parts_to_run(claim).await?;
    let origin = jobs.store.origin(&claim.job_id).await?;
    let limits = &gateway.config.limits;
    let scope = Arc::new(scope(jobs, gateway, claim, &origin));
    // Each part on a task of its own, so that it goes on (and gives its store connection back) while this
    // loop waits for the store or for another part.
    let mut running = JoinSet::new();
    let mut parts = parts.into_iter();
    // The job's status as last read, with `Jobs::stops` then and when: read again before a part starts once a
    // job was stopped here since (so that once a pause or cancel is answered here, no part of the job starts),
    // or once it is older than `STATUS_FRESH` (stopped by another instance).
    let mut read: Option<(u64, Instant)> = None;
    let mut runs = true;
    loop {
        let mut started = false;
        if runs && running.len() < limits.concurrency && !*lost.borrow() {
            let stops = jobs.stops();
            if read.is_none_or(|(seen, at)| seen != stops || at.elapsed() >= STATUS_FRESH) {
                runs = jobs
                    .store
                    .status(&claim.job_id)
                    .await?
                    .is_some_and(JobStatus::runs);
                read = Some((stops, Instant::now()));
            }
            if runs && let Some(part) = parts.next() {
                let (jobs, gateway, claim, scope, commits) = (
                    jobs.clone(),
                    gateway.clone(),
                    claim.clone(),
                    scope.clone(),
                    commits.clone(),
                );
                running.spawn(
                    async move { one(&jobs, &gateway, &claim, &scope, &commits, part).await },
                );
                started = true;
            }
        }
        if !started {
            match running.join_next().await {
                Some(done) => {
                    done.map_err(|e| JobError::Store(format!("a part's task: {e}")))??
                }
                None => return Ok(()),
            }
        }
    }
}

/// What a job's parts share upstream: the submitting request's headers, client and trace; and the job, for
/// its tuning history.
fn scope(jobs: &Jobs, gateway: &Gateway, claim: &Claim, origin: &Origin) -> BatchScope {
    BatchScope {
        headers: gateway
            .headers
            .batch(&origin.headers, origin.peer, origin.tls),
        budget: ResponseBudget::new(gateway.config.limits.max_batch_response_bytes),
        client: gateway.client_key(&origin.headers, origin.peer),
        trace: TraceContext::from_headers(&origin.headers),
        job: Some(Arc::new(JobTag::new(
            claim.job_id.clone(),
            jobs.tuning.clone(),
            jobs.store.clock.clone(),
            gateway.metrics.clone(),
        ))),
    }
}

/// Runs one part and has its answer committed; it counts as done once its group's commit is.
async fn one(
    jobs: &Jobs,
    gateway: &Arc<Gateway>,
    claim: &Claim,
    scope: &Arc<BatchScope>,
    commits: &Commits,
    part: PartToRun,
) -> Result<(), JobError> {
    let part_idx = part.idx;
    let index = usize::try_from(part_idx).unwrap_or(usize::MAX);
    let (answer, elapsed) = if part.state == PartState::Sent {
        let answer = gateway_answer(StatusCode::INTERNAL_SERVER_ERROR, MAY_HAVE_RUN, index);
        (answer, None)
    } else {
        if part.once {
            jobs.store.mark_sent(&claim.job_id, part.idx).await?;
        }
        let started = Instant::now();
        let (route, result) = send(jobs, gateway, scope, index, part).await;
        let elapsed = started.elapsed();
        let answer = match result {
            Ok(response) => {
                gateway
                    .metrics
                    .part_answered(&route, response.status, elapsed);
                let mut body = BytesMut::with_capacity(response.body_len as usize);
                for piece in &response.body {
                    body.extend_from_slice(piece);
                }
                let mut headers = response.headers;
                headers.remove(http::header::CONTENT_LENGTH);
                StoredAnswer {
                    status: response.status.as_u16(),
                    headers,
                    body: body.freeze(),
                }
            }
            Err(error) => {
                gateway.metrics.part_failed(&route, &error, elapsed);
                part_error(&error)
            }
        };
        (answer, Some(elapsed))
    };
    let failed = failed(answer.status);
    let answered = Answered {
        job_id: claim.job_id.clone(),
        idx: part_idx,
        answer,
        elapsed,
    };
    let (committed, done) = oneshot::channel();
    let gone = || JobError::Store("the committer stopped (the server is shutting down)".into());
    commits
        .send((answered, committed))
        .await
        .map_err(|_| gone())?;
    done.await.map_err(|_| gone())?.map_err(JobError::Store)?;
    gateway.metrics.job_part(failed);
    gateway.observer.jobs(|view| view.parts_done += 1);
    Ok(())
}

/// Routes and sends one part through its route's stack; returns the route's name (for metrics) too.
async fn send(
    jobs: &Jobs,
    gateway: &Gateway,
    scope: &Arc<BatchScope>,
    index: usize,
    part: PartToRun,
) -> (Arc<str>, Result<crate::stack::UpstreamResponse, PartError>) {
    let request = part.request;
    let Ok(method) = Method::from_bytes(request.method.as_bytes()) else {
        let reason = format!("stored method {:?} is not a method", request.method);
        return (Arc::from(""), Err(PartError::Internal { index, reason }));
    };
    let destination = match gateway.router.route(&request.target, None) {
        Ok(destination) => destination,
        Err(source) => return (Arc::from(""), Err(PartError::Route { index, source })),
    };
    let route = destination.route.name.clone();
    let service = gateway.service(&destination.route);
    let permits = gateway.permits(&destination.route);
    let global = gateway.global_inflight();
    let request = PartRequest::new(
        index,
        method,
        destination.path,
        request.headers,
        request.body,
        scope.clone(),
    );
    let internal = |e: tokio::sync::AcquireError| PartError::Internal {
        index,
        reason: e.to_string(),
    };
    let result = async {
        let _share = jobs.share.permits().acquire().await.map_err(internal)?;
        let _held = permits.acquire(&global).await.map_err(internal)?;
        service.oneshot(request).await
    }
    .await;
    (route, result)
}

/// A part's error as its stored answer: the status, headers and JSON body a batch's part would get.
pub(crate) fn part_error(error: &PartError) -> StoredAnswer {
    StoredAnswer {
        status: error.status().as_u16(),
        headers: error.headers(),
        body: error.body(),
    }
}

/// An answer the gateway gives a part itself, with the JSON error body.
fn gateway_answer(status: StatusCode, message: &str, index: usize) -> StoredAnswer {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let body: Bytes = error_body(status, message, Some((index, crate::error::Fault::Gateway)));
    StoredAnswer {
        status: status.as_u16(),
        headers,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(idx: i64) -> (Waiting, oneshot::Receiver<Result<(), String>>) {
        let (tell, told) = oneshot::channel();
        let answered = Answered {
            job_id: "job".into(),
            idx,
            answer: gateway_answer(StatusCode::OK, "ok", 0),
            elapsed: None,
        };
        ((answered, tell), told)
    }

    /// Answers that arrived while a commit ran go together into the next one, at most `MAX_GROUP`, in order;
    /// a lone answer is a group of its own at once.
    #[tokio::test]
    async fn answers_waiting_are_committed_together() {
        let (commits, mut queue) = mpsc::channel(MAX_GROUP * 2);
        for idx in 0..300 {
            commits.send(waiting(idx).0).await.unwrap();
        }
        let first = next_group(&mut queue).await.unwrap();
        assert_eq!(first.len(), MAX_GROUP);
        assert!(first.iter().map(|(a, _)| a.idx).eq(0..256));
        assert_eq!(next_group(&mut queue).await.unwrap().len(), 300 - MAX_GROUP);
        commits.send(waiting(300).0).await.unwrap();
        assert_eq!(next_group(&mut queue).await.unwrap().len(), 1);
        drop(commits);
        assert!(next_group(&mut queue).await.is_none());
    }
}
