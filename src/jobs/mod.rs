//! Batch jobs that outlive their connection (`[jobs]`, `docs/jobs.md`): a batch submitted with
//! `POST /jobs` (or `POST /batch` with `Prefer: respond-async`) is streamed into a store, answered `202`, and
//! run later by workers, partition by partition, through the same per-route stacks as synchronous batches.
//!
//! - [`api`]: the `/jobs` endpoints (submit, status, list, partitions, results, pause, resume, cancel, retry,
//!   delete), each job visible to its creator only;
//! - [`store`]: the tables, on SQLite or Postgres through one query layer;
//! - [`workers`]: claiming partitions with a lease and a heartbeat, running their parts at a lower priority
//!   than batches, committing each answer, and the crash rule for parts found in flight;
//! - [`callback`]: the signed POST of a job's final status to the URL it was submitted with;
//! - [`tuning`]: adaptive concurrency's limit changes that a job's parts made, kept with the job;
//! - [`status`]: the statuses of jobs and parts.

pub(crate) mod api;
pub(crate) mod callback;
pub(crate) mod status;
pub(crate) mod store;
pub(crate) mod tuning;
pub(crate) mod workers;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use http::StatusCode;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc};

use crate::config::JobsConfig;
use crate::gateway::Gateway;
use crate::server::Live;
use crate::stack::limit::Capacity;
use store::Store;
use tuning::TuningRow;

/// Why a job request failed; each maps to one status and a message a user can act on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    /// No such job, or not the caller's (the same answer, so that ids cannot be probed).
    #[error("no job {0}")]
    NotFound(String),
    /// The job's retention has passed: its answers are gone.
    #[error("job {0} has expired: its answers were kept for jobs.retention after it ended")]
    Expired(String),
    /// The job is not in a status the action applies to.
    #[error("job {id} is {status}: {action} applies only to a job that is {allowed}")]
    Conflict {
        id: String,
        status: &'static str,
        action: &'static str,
        allowed: &'static str,
    },
    /// `jobs.max_jobs` jobs are not yet ended.
    #[error("{0} jobs are not yet ended (jobs.max_jobs); submit again once some have")]
    TooManyJobs(usize),
    /// The body is over `jobs.max_job_bytes`.
    #[error(
        "the job's body is over {limit} bytes (jobs.max_job_bytes); received at least {received}"
    )]
    TooLarge { received: u64, limit: u64 },
    /// More than `jobs.max_parts` parts.
    #[error("too many parts in the job. Received: {received}, Limit: {limit} (jobs.max_parts)")]
    TooManyParts { received: usize, limit: usize },
    /// The body was refused as a batch's would be (framing, content type, duplicate Content-ID, timeouts).
    #[error(transparent)]
    Batch(#[from] crate::error::BatchError),
    /// A method the URL does not take; `allow` lists those it does (the 405's `Allow` header).
    #[error("{method} is not allowed on {path}; it takes {allow}")]
    MethodNotAllowed {
        method: http::Method,
        path: String,
        allow: &'static str,
    },
    /// A `batchgate-callback` that cannot be used, or a callback that could not be delivered.
    #[error("callback: {0}")]
    Callback(String),
    /// A query parameter that cannot be used.
    #[error("bad query parameter {0}")]
    BadQuery(String),

    #[error(
        "part {index} names dependsOn: a job's parts run in partitions independently of each other, so \
         dependencies are refused; send dependent requests as a synchronous batch"
    )]
    DependsOn { index: usize },
    /// A job's stored parts or origin cannot be read back (a damaged store): the job cannot run, and fails.
    #[error("jobs store: the job's stored parts cannot be read: {0}")]
    Unreadable(String),
    /// The store failed (or could not be opened).
    #[error("jobs store: {0}")]
    Store(String),
}

impl JobError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            JobError::NotFound(_) => StatusCode::NOT_FOUND,
            JobError::Expired(_) => StatusCode::GONE,
            JobError::Conflict { .. } => StatusCode::CONFLICT,
            JobError::TooManyJobs(_) => StatusCode::SERVICE_UNAVAILABLE,
            JobError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            JobError::TooManyParts { .. }
            | JobError::BadQuery(_)
            | JobError::Callback(_)
            | JobError::DependsOn { .. } => StatusCode::BAD_REQUEST,
            JobError::Batch(e) => e.status(),
            JobError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            JobError::Store(_) | JobError::Unreadable(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The jobs of one instance: its store, its workers' shared state.
#[derive(Debug)]
pub(crate) struct Jobs {
    pub(crate) store: Store,
    pub(crate) config: JobsConfig,
    /// The gateway being served: workers send each partition's parts through the stacks current when it
    /// starts. Weak, so that the workers end with the server.
    live: Weak<Live>,
    /// Jobs' share of `limits.max_inflight` (half of it): a part of a job takes one of these before the
    /// gateway-wide permit, so batches always have the other half. A reload resizes it with the limit.
    share: Capacity,
    /// Wakes idle workers when there is something new to claim (a submission, a resume, a retry).
    wake: Notify,
    /// This instance's name on the leases it holds.
    worker_id: String,
    /// Where the limit changes its parts make wait for the committer (`tuning`).
    tuning: mpsc::Sender<TuningRow>,
    /// Counts the pauses, cancels, deletes and failures of jobs on this instance: a worker takes its job's
    /// status from the store again before its next part once this moved.
    stops: AtomicU64,
}

impl Jobs {
    /// Opens the store (creating and migrating it) and starts the workers.
    pub(crate) async fn start(
        config: &JobsConfig,
        live: &Arc<Live>,
    ) -> Result<Arc<Jobs>, JobError> {
        let store = Store::open(config).await?;
        let max_inflight = live.gateway().config.limits.max_inflight;
        let (tuning, tuned) = mpsc::channel(tuning::QUEUE);
        let jobs = Arc::new(Jobs {
            store,
            config: config.clone(),
            live: Arc::downgrade(live),
            share: Capacity::new(share_of(max_inflight)),
            wake: Notify::new(),
            worker_id: random_id(),
            tuning,
            stops: AtomicU64::new(0),
        });
        tokio::spawn(workers::run(jobs.clone(), tuned));
        Ok(jobs)
    }

    /// Follows a reload's `limits.max_inflight`: parts already in flight finish; the new share applies to
    /// those that start after.
    pub(crate) fn resize_share(&self, max_inflight: usize) {
        self.share.resize(share_of(max_inflight));
    }

    /// A job was paused, cancelled, deleted or failed here: no part of it starts after this returns.
    pub(crate) fn stopped(&self) {
        self.stops.fetch_add(1, Ordering::Release);
    }

    /// The count [`Jobs::stopped`] moves.
    pub(crate) fn stops(&self) -> u64 {
        self.stops.load(Ordering::Acquire)
    }

    /// The gateway being served, while the server runs.
    pub(crate) fn gateway(&self) -> Option<Arc<Gateway>> {
        self.live.upgrade().map(|live| live.gateway())
    }
}

/// Jobs' share of `limits.max_inflight`: half of it, at least one.
fn share_of(max_inflight: usize) -> usize {
    (max_inflight / 2).max(1)
}

/// 128 random bits, as 32 hex digits: a job's id, a worker's name.
pub(crate) fn random_id() -> String {
    let bits: u128 = rand::random();
    format!("{bits:032x}")
}

/// Who a job belongs to: a hash of the `Authorization` it came with, or of the client's address without one.
pub(crate) fn owner(headers: &http::HeaderMap, client: std::net::IpAddr) -> String {
    let mut hash = Sha256::new();
    match headers.get(http::header::AUTHORIZATION) {
        Some(credentials) => {
            hash.update(b"authorization\0");
            hash.update(credentials.as_bytes());
        }
        None => {
            hash.update(b"address\0");
            hash.update(client.to_string().as_bytes());
        }
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
