//! A job's tuning history: the changes of adaptive concurrency's limit that the job's own parts made, kept in
//! the store with the job (`GET /jobs/{id}/tuning`).
//!
//! A change is the job's when the part whose answer completed the limiter's sample window is one of the
//! job's: each change is recorded once, with the job that triggered it. A job's parts carry a [`JobTag`] in
//! their [`BatchScope`](crate::stack::BatchScope); a synchronous batch's carry none, so batches, routes
//! without adaptive concurrency and gateways without `[jobs]` do nothing for it.
//!
//! Off the hot path: the limiter queues the change on a bounded channel without waiting (a full queue drops
//! it and counts it in `batchgate_job_tuning_dropped_total`); the committer writes the queued changes in the
//! transaction of its next group of answers. A change is queued before the part that made it answers, so it
//! is in the store by the time that part's answer is, and by the time its job has ended.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::store::Clock;
use crate::metrics::Metrics;

/// Most limit changes kept per job: the first ones (a change comes at most once per sample window per
/// route, so a long job on a busy route could otherwise grow its history without end).
pub(crate) const MAX_TUNING_ROWS: i64 = 1000;

/// Changes waiting for the next group commit, across jobs; beyond it they are dropped and counted.
pub(crate) const QUEUE: usize = 1024;

/// One change of a route's limit, made by a job's part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TuningRow {
    pub job_id: String,
    pub route: Arc<str>,
    pub from: usize,
    pub to: usize,
    /// Why it changed, as `/admin/stats` says it.
    pub reason: String,
    /// When, in store milliseconds.
    pub at: i64,
}

/// What a job's parts carry into their route's stack, for adaptive concurrency to note a change with the job.
#[derive(Debug)]
pub(crate) struct JobTag {
    job_id: String,
    queue: mpsc::Sender<TuningRow>,
    clock: Arc<Clock>,
    metrics: Arc<Metrics>,
}

impl JobTag {
    pub(crate) fn new(
        job_id: String,
        queue: mpsc::Sender<TuningRow>,
        clock: Arc<Clock>,
        metrics: Arc<Metrics>,
    ) -> JobTag {
        JobTag {
            job_id,
            queue,
            clock,
            metrics,
        }
    }

    /// Queues a change of `route`'s limit that one of this job's parts made; never waits.
    pub(crate) fn tuned(&self, route: &Arc<str>, from: usize, to: usize, reason: &str) {
        let row = TuningRow {
            job_id: self.job_id.clone(),
            route: route.clone(),
            from,
            to,
            reason: reason.to_owned(),
            at: self.clock.now(),
        };
        if self.queue.try_send(row).is_err() {
            self.metrics.job_tuning_dropped();
        }
    }
}

/// The changes queued so far, at most [`QUEUE`] of them, without waiting.
pub(crate) fn queued(queue: &mut mpsc::Receiver<TuningRow>) -> Vec<TuningRow> {
    let mut rows = Vec::new();
    while rows.len() < QUEUE
        && let Ok(row) = queue.try_recv()
    {
        rows.push(row);
    }
    rows
}
