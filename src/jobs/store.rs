//! The jobs store: one query layer (`sqlx::Any`) over SQLite and Postgres. Queries are written once, with
//! `$N` parameters (which both speak); only the schema's byte type and the claim's row lock differ, by
//! [`Backend`].
//!
//! Times are milliseconds since the Unix epoch, from the store's [`Clock`]; booleans are 0/1 integers, so
//! that every column has one type on both backends.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use super::JobError;
use super::status::{JobStatus, PartState};
use super::tuning::{MAX_TUNING_ROWS, TuningRow};
use crate::config::{JobsConfig, StoreUrl};

/// The schema version this gateway writes; an older store is migrated at startup, a newer one refused.
/// Version 2 added `job_tuning`, and `failed` to the index of parts by partition.
const SCHEMA_VERSION: i64 = 2;

/// Which database a store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// Where the store's time comes from: the wall clock, moved on by tests (`advance`) to pass a retention
/// without waiting for it.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    pub(crate) fn now(&self) -> i64 {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        wall + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Moves the store's time forward.
    pub(crate) fn advance(&self, by: std::time::Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

/// The open store.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    pool: AnyPool,
    backend: Backend,
    pub(crate) clock: Arc<Clock>,
    /// `jobs.retention`, in milliseconds.
    retention_ms: i64,
}

/// An ended job's performance figures (`None` for a job none of whose parts was sent).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Performance {
    pub parts_per_second: Option<f64>,
    pub p50_ms: Option<i64>,
    pub p90_ms: Option<i64>,
    pub p99_ms: Option<i64>,
}

/// A job's row, as `GET /jobs/{id}` shows it.
#[derive(Debug, Clone)]
pub(crate) struct JobRow {
    pub id: String,
    pub owner: String,
    pub status: JobStatus,
    pub total: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub performance: Performance,
}

/// What the submitting request leaves for its parts to inherit when they run.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub headers: HeaderMap,
    pub peer: std::net::IpAddr,
    pub tls: bool,
}

/// Counts of a job's parts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub total: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub pending: i64,
}

/// A partition's row with its counts.
#[derive(Debug, Clone)]
pub(crate) struct PartitionRow {
    pub idx: i64,
    pub status: String,
    pub parts: i64,
    pub done: i64,
    pub failed: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
}

/// One part as stored at submission: the request to send, or the answer it already has (a part refused
/// while reading, which never goes anywhere).
#[derive(Debug)]
pub(crate) struct NewPart {
    pub content_id: Option<String>,
    pub content: PartContent,
    /// Unsafe, without an `Idempotency-Key`: never sent twice (the crash rule).
    pub once: bool,
}

/// What a new part holds.
#[derive(Debug)]
pub(crate) enum PartContent {
    /// A request to send.
    Request(StoredRequest),
    /// The answer of a part refused as it was read (unparsable, no route): it is sent nowhere.
    Answered(StoredAnswer),
}

/// A part's request, as kept.
#[derive(Debug, Clone)]
pub(crate) struct StoredRequest {
    pub method: String,
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A part's answer, as kept.
#[derive(Debug, Clone)]
pub(crate) struct StoredAnswer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A part's answer on its way to the store.
#[derive(Debug)]
pub(crate) struct Answered {
    pub job_id: String,
    pub idx: i64,
    pub answer: StoredAnswer,
    /// How long the upstream took (none for an answer the gateway gave without sending it).
    pub elapsed: Option<std::time::Duration>,
}

/// A part claimed with its partition, to run.
#[derive(Debug)]
pub(crate) struct PartToRun {
    pub idx: i64,
    pub state: PartState,
    pub once: bool,
    pub request: StoredRequest,
}

/// A part as `GET /jobs/{id}/results` gives it.
#[derive(Debug)]
pub(crate) struct ResultRow {
    pub idx: i64,
    pub content_id: Option<String>,
    pub answer: Option<StoredAnswer>,
}

/// A claimed partition.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    pub job_id: String,
    pub idx: i64,
}

impl Store {
    /// Opens (creating a SQLite file when missing) and migrates the store.
    pub(crate) async fn open(config: &JobsConfig) -> Result<Store, JobError> {
        sqlx::any::install_default_drivers();
        let (url, backend) = match config
            .store_url()
            .map_err(|e| JobError::Store(e.to_string()))?
        {
            StoreUrl::Sqlite(file) => (
                format!("sqlite://{}?mode=rwc", file.display()),
                Backend::Sqlite,
            ),
            StoreUrl::Postgres(url) => (url, Backend::Postgres),
        };
        // SQLite has one writer at a time: one connection queues this instance's statements in order, where
        // several would only contend for the lock (and back off in its busy handler).
        let connections = match backend {
            Backend::Sqlite => 1,
            Backend::Postgres => u32::try_from(config.workers * 2 + 2).unwrap_or(32).min(32),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(connections)
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // In WAL mode, NORMAL loses no commit when the process is killed (only on power
                        // loss), and spares an fsync per answer; wait for the one writer rather than fail.
                        sqlx::Executor::execute(&mut *connection, "PRAGMA synchronous = NORMAL")
                            .await?;
                        sqlx::Executor::execute(&mut *connection, "PRAGMA busy_timeout = 10000")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| JobError::Store(format!("cannot open jobs.store: {e}")))?;
        let store = Store {
            pool,
            backend,
            clock: Arc::default(),
            retention_ms: i64::try_from(config.retention.as_millis()).unwrap_or(i64::MAX),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Creates the tables, or checks the version of those there are.
    async fn migrate(&self) -> Result<(), JobError> {
        let (bytes, serial) = match self.backend {
            Backend::Sqlite => ("BLOB", "INTEGER PRIMARY KEY"),
            Backend::Postgres => ("BYTEA", "BIGSERIAL PRIMARY KEY"),
        };
        if self.backend == Backend::Sqlite {
            // Readers go on while an answer is written.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&self.pool)
                .await?;
        }
        let statements = [
            "CREATE TABLE IF NOT EXISTS batchgate_schema (version BIGINT NOT NULL)".to_owned(),
            format!(
                "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, owner TEXT NOT NULL, \
                 status TEXT NOT NULL, total BIGINT NOT NULL, \
                 origin_headers {bytes} NOT NULL, peer TEXT NOT NULL, tls BIGINT NOT NULL, \
                 created_at BIGINT NOT NULL, started_at BIGINT, ended_at BIGINT, expires_at BIGINT, \
                 parts_per_second DOUBLE PRECISION, p50_ms BIGINT, p90_ms BIGINT, p99_ms BIGINT, \
                 callback TEXT, callback_sent BIGINT NOT NULL DEFAULT 0)"
            ),
            "CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created_at, id)".to_owned(),
            format!(
                "CREATE TABLE IF NOT EXISTS job_parts (job_id TEXT NOT NULL, idx BIGINT NOT NULL, \
                 partition_idx BIGINT NOT NULL, content_id TEXT, method TEXT NOT NULL, \
                 target TEXT NOT NULL, headers {bytes} NOT NULL, body {bytes} NOT NULL, \
                 once BIGINT NOT NULL, state TEXT NOT NULL, failed BIGINT NOT NULL, status BIGINT, \
                 answer_headers {bytes}, answer_body {bytes}, elapsed_ms BIGINT, PRIMARY KEY (job_id, idx))"
            ),
            "CREATE TABLE IF NOT EXISTS job_partitions (job_id TEXT NOT NULL, idx BIGINT NOT NULL, \
             status TEXT NOT NULL, lease_owner TEXT, lease_until BIGINT, started_at BIGINT, \
             ended_at BIGINT, PRIMARY KEY (job_id, idx))"
                .to_owned(),
            "CREATE INDEX IF NOT EXISTS job_partitions_by_status ON job_partitions (status, lease_until)"
                .to_owned(),
            // With `failed`, the counts of a job's parts (its status document, polled while it runs) read this
            // index alone, not the parts' rows with their requests and answers (version 1's index lacked it).
            "CREATE INDEX IF NOT EXISTS job_parts_by_partition_and_state \
             ON job_parts (job_id, partition_idx, state, failed)"
                .to_owned(),
            "DROP INDEX IF EXISTS job_parts_by_partition".to_owned(),
            // Version 2: the tuning history, in the order the limit changed (`id`).
            format!(
                "CREATE TABLE IF NOT EXISTS job_tuning (id {serial}, job_id TEXT NOT NULL, \
                 route TEXT NOT NULL, from_limit BIGINT NOT NULL, to_limit BIGINT NOT NULL, \
                 reason TEXT NOT NULL, changed_at BIGINT NOT NULL)"
            ),
            "CREATE INDEX IF NOT EXISTS job_tuning_by_job ON job_tuning (job_id, id)".to_owned(),
        ];
        for statement in &statements {
            sqlx::query(statement).execute(&self.pool).await?;
        }
        let version: Option<i64> = sqlx::query("SELECT MAX(version) FROM batchgate_schema")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        match version {
            // New, or older: the statements above created what was missing.
            None | Some(..SCHEMA_VERSION) => {
                sqlx::query("INSERT INTO batchgate_schema (version) VALUES ($1)")
                    .bind(SCHEMA_VERSION)
                    .execute(&self.pool)
                    .await?;
            }
            Some(v) if v > SCHEMA_VERSION => {
                return Err(JobError::Store(format!(
                    "jobs.store has schema version {v}, newer than this gateway's {SCHEMA_VERSION}: \
                     run a newer batchgate or use another store"
                )));
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Takes the callback of an ended job that has not been called back yet: one instance, once. Returns
    /// the job's id and the URL.
    pub(crate) async fn take_callback(&self) -> Result<Option<(String, String)>, JobError> {
        let row = sqlx::query(
            "UPDATE jobs SET callback_sent = 1 WHERE callback_sent = 0 AND id = (SELECT id FROM jobs \
             WHERE callback IS NOT NULL AND callback_sent = 0 \
             AND status IN ('completed', 'cancelled', 'failed') LIMIT 1) RETURNING id, callback",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .transpose()
    }

    /// Jobs not yet ended.
    pub(crate) async fn open_jobs(&self) -> Result<i64, JobError> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM jobs WHERE status IN ('receiving', 'queued', 'running', 'paused', \
             'cancelling')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// How many jobs are queued, running and paused.
    pub(crate) async fn by_status(&self) -> Result<[(JobStatus, i64); 3], JobError> {
        let row = sqlx::query(
            "SELECT COUNT(CASE WHEN status = 'queued' THEN 1 END), \
             COUNT(CASE WHEN status = 'running' THEN 1 END), \
             COUNT(CASE WHEN status = 'paused' THEN 1 END) FROM jobs",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok([
            (JobStatus::Queued, row.try_get(0)?),
            (JobStatus::Running, row.try_get(1)?),
            (JobStatus::Paused, row.try_get(2)?),
        ])
    }

    /// Starts a job whose parts are still arriving: no worker sees it until [`Store::seal`].
    pub(crate) async fn create(
        &self,
        id: &str,
        owner: &str,
        origin: &Origin,
        callback: Option<&str>,
    ) -> Result<(), JobError> {
        sqlx::query(
            "INSERT INTO jobs (id, owner, status, total, origin_headers, peer, tls, created_at, callback) \
             VALUES ($1, $2, 'receiving', 0, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(owner)
        .bind(encode_headers(&origin.headers))
        .bind(origin.peer.to_string())
        .bind(i64::from(origin.tls))
        .bind(self.clock.now())
        .bind(callback)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Writes parts `first..` of a job, in one transaction.
    pub(crate) async fn add_parts(
        &self,
        job_id: &str,
        first: i64,
        partition_size: i64,
        parts: &[NewPart],
    ) -> Result<(), JobError> {
        let mut tx = self.pool.begin().await?;
        for (i, part) in parts.iter().enumerate() {
            let idx = first + i as i64;
            let (method, target, headers, body, state, answer) = match &part.content {
                PartContent::Request(request) => (
                    request.method.as_str(),
                    request.target.as_str(),
                    encode_headers(&request.headers),
                    request.body.to_vec(),
                    PartState::Pending,
                    None,
                ),
                PartContent::Answered(answer) => (
                    "",
                    "",
                    Vec::new(),
                    Vec::new(),
                    PartState::Done,
                    Some(answer),
                ),
            };
            sqlx::query(
                "INSERT INTO job_parts (job_id, idx, partition_idx, content_id, method, target, headers, \
                 body, once, state, failed, status, answer_headers, answer_body) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            )
            .bind(job_id)
            .bind(idx)
            .bind(idx / partition_size)
            .bind(part.content_id.clone())
            .bind(method)
            .bind(target)
            .bind(headers)
            .bind(body)
            .bind(i64::from(part.once))
            .bind(state.as_str())
            .bind(i64::from(answer.is_some_and(|a| failed(a.status))))
            .bind(answer.map(|a| i64::from(a.status)))
            .bind(answer.map(|a| encode_headers(&a.headers)))
            .bind(answer.map(|a| a.body.to_vec()))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The whole body is in: the job's partitions are made and it is queued for the workers.
    pub(crate) async fn seal(
        &self,
        job_id: &str,
        total: i64,
        partition_size: i64,
    ) -> Result<(), JobError> {
        let partitions = (total + partition_size - 1) / partition_size;
        let mut tx = self.pool.begin().await?;
        for idx in 0..partitions {
            sqlx::query(
                "INSERT INTO job_partitions (job_id, idx, status) VALUES ($1, $2, 'pending')",
            )
            .bind(job_id)
            .bind(idx)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE jobs SET status = 'queued', total = $2 WHERE id = $1")
            .bind(job_id)
            .bind(total)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drops a job and everything it holds.
    pub(crate) async fn delete(&self, job_id: &str) -> Result<(), JobError> {
        let mut tx = self.pool.begin().await?;
        for table in [
            "DELETE FROM job_parts WHERE job_id = $1",
            "DELETE FROM job_partitions WHERE job_id = $1",
            "DELETE FROM job_tuning WHERE job_id = $1",
            "DELETE FROM jobs WHERE id = $1",
        ] {
            sqlx::query(table).bind(job_id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A job's row.
    pub(crate) async fn job(&self, id: &str) -> Result<Option<JobRow>, JobError> {
        let row = sqlx::query(
            "SELECT id, owner, status, total, created_at, started_at, ended_at, expires_at, \
             parts_per_second, p50_ms, p90_ms, p99_ms \
             FROM jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| job_row(&row)).transpose()
    }

    /// An owner's jobs, newest first: up to `limit` of them created before the cursor `(created_at, id)`.
    pub(crate) async fn jobs(
        &self,
        owner: &str,
        before: Option<(i64, &str)>,
        limit: i64,
    ) -> Result<Vec<JobRow>, JobError> {
        let (at, id) = before.unwrap_or((i64::MAX, ""));
        let rows = sqlx::query(
            "SELECT id, owner, status, total, created_at, started_at, ended_at, expires_at, \
             parts_per_second, p50_ms, p90_ms, p99_ms \
             FROM jobs WHERE owner = $1 AND status <> 'receiving' \
             AND (created_at < $2 OR (created_at = $2 AND id < $3) OR $4 = 1) \
             ORDER BY created_at DESC, id DESC LIMIT $5",
        )
        .bind(owner)
        .bind(at)
        .bind(id)
        .bind(i64::from(before.is_none()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_row).collect()
    }

    /// What a job's parts inherit from the request that submitted it.
    pub(crate) async fn origin(&self, job_id: &str) -> Result<Origin, JobError> {
        let row = sqlx::query("SELECT origin_headers, peer, tls FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_one(&self.pool)
            .await?;
        let headers: Vec<u8> = row.try_get(0)?;
        let peer: String = row.try_get(1)?;
        Ok(Origin {
            headers: decode_headers(&headers),
            peer: peer
                .parse()
                .map_err(|_| JobError::Store(format!("job {job_id}: bad peer {peer:?}")))?,
            tls: row.try_get::<i64, _>(2)? == 1,
        })
    }

    /// A job's status alone, `None` once it is gone.
    pub(crate) async fn status(&self, job_id: &str) -> Result<Option<JobStatus>, JobError> {
        let row = sqlx::query("SELECT status FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|row| row.try_get::<String, _>(0))
            .transpose()?
            .and_then(|s| JobStatus::parse(&s)))
    }

    /// A job's part counts.
    pub(crate) async fn counts(&self, job_id: &str) -> Result<Counts, JobError> {
        let row = sqlx::query(
            "SELECT COUNT(*), \
             COUNT(CASE WHEN state = 'done' AND failed = 0 THEN 1 END), \
             COUNT(CASE WHEN state = 'done' AND failed = 1 THEN 1 END), \
             COUNT(CASE WHEN state = 'cancelled' THEN 1 END) \
             FROM job_parts WHERE job_id = $1",
        )
        .bind(job_id)
        .fetch_one(&self.pool)
        .await?;
        let total: i64 = row.try_get(0)?;
        let succeeded: i64 = row.try_get(1)?;
        let failed: i64 = row.try_get(2)?;
        let cancelled: i64 = row.try_get(3)?;
        Ok(Counts {
            total,
            succeeded,
            failed,
            cancelled,
            pending: total - succeeded - failed - cancelled,
        })
    }

    /// A job's partitions, with their counts and timings.
    pub(crate) async fn partitions(&self, job_id: &str) -> Result<Vec<PartitionRow>, JobError> {
        let rows = sqlx::query(
            "SELECT p.idx, p.status, p.started_at, p.ended_at, \
             (SELECT COUNT(*) FROM job_parts q WHERE q.job_id = p.job_id AND q.partition_idx = p.idx), \
             (SELECT COUNT(*) FROM job_parts q WHERE q.job_id = p.job_id AND q.partition_idx = p.idx \
              AND q.state = 'done'), \
             (SELECT COUNT(*) FROM job_parts q WHERE q.job_id = p.job_id AND q.partition_idx = p.idx \
              AND q.failed = 1) \
             FROM job_partitions p WHERE p.job_id = $1 ORDER BY p.idx",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(PartitionRow {
                    idx: row.try_get(0)?,
                    status: row.try_get(1)?,
                    started_at: row.try_get(2)?,
                    ended_at: row.try_get(3)?,
                    parts: row.try_get(4)?,
                    done: row.try_get(5)?,
                    failed: row.try_get(6)?,
                })
            })
            .collect()
    }

    /// Partition counts: total, done, and those with a failed part.
    pub(crate) async fn partition_counts(&self, job_id: &str) -> Result<(i64, i64, i64), JobError> {
        let row = sqlx::query(
            "SELECT COUNT(*), COUNT(CASE WHEN status = 'done' THEN 1 END) \
             FROM job_partitions WHERE job_id = $1",
        )
        .bind(job_id)
        .fetch_one(&self.pool)
        .await?;
        let failed: i64 = sqlx::query(
            "SELECT COUNT(DISTINCT partition_idx) FROM job_parts WHERE job_id = $1 AND failed = 1",
        )
        .bind(job_id)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        Ok((row.try_get(0)?, row.try_get(1)?, failed))
    }

    /// Sets a job's status, when it is one of `from`; says whether it was.
    pub(crate) async fn transition(
        &self,
        job_id: &str,
        from: &[JobStatus],
        to: JobStatus,
    ) -> Result<bool, JobError> {
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        // Up to four statuses, bound one by one (a list parameter is not portable).
        let mut padded = from.clone();
        padded.resize(4, "");
        let result =
            sqlx::query("UPDATE jobs SET status = $2 WHERE id = $1 AND status IN ($3, $4, $5, $6)")
                .bind(job_id)
                .bind(to.as_str())
                .bind(padded[0])
                .bind(padded[1])
                .bind(padded[2])
                .bind(padded[3])
                .execute(&self.pool)
                .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Claims the next partition to run (pending, or leased by another instance whose lease has run out: this
    /// instance's own are still running here, their heartbeat late) of a queued or running job, oldest job
    /// first. On Postgres the candidate row is locked `FOR UPDATE SKIP
    /// LOCKED`, so instances never claim the same one; SQLite has one writer at a time.
    pub(crate) async fn claim(
        &self,
        worker: &str,
        lease_ms: i64,
    ) -> Result<Option<Claim>, JobError> {
        let now = self.clock.now();
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE OF p SKIP LOCKED",
        };
        let query = format!(
            "UPDATE job_partitions SET status = 'running', lease_owner = $1, lease_until = $2, \
             started_at = COALESCE(started_at, $3) \
             WHERE (job_id, idx) = (SELECT p.job_id, p.idx FROM job_partitions p JOIN jobs j ON j.id = p.job_id \
             WHERE j.status IN ('queued', 'running') \
             AND (p.status = 'pending' OR (p.status = 'running' AND p.lease_until < $3 \
             AND p.lease_owner <> $1)) \
             ORDER BY j.created_at, p.job_id, p.idx LIMIT 1{lock}) \
             RETURNING job_id, idx"
        );
        let row = sqlx::query(&query)
            .bind(worker)
            .bind(now + lease_ms)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let claim = Claim {
            job_id: row.try_get(0)?,
            idx: row.try_get(1)?,
        };
        sqlx::query(
            "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, $2) \
             WHERE id = $1 AND status = 'queued'",
        )
        .bind(&claim.job_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(Some(claim))
    }

    /// Extends a lease; `false` when it is no longer this worker's (it ran out and was taken over).
    pub(crate) async fn heartbeat(
        &self,
        claim: &Claim,
        worker: &str,
        lease_ms: i64,
    ) -> Result<bool, JobError> {
        let result = sqlx::query(
            "UPDATE job_partitions SET lease_until = $4 \
             WHERE job_id = $1 AND idx = $2 AND lease_owner = $3 AND status = 'running'",
        )
        .bind(&claim.job_id)
        .bind(claim.idx)
        .bind(worker)
        .bind(self.clock.now() + lease_ms)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// The parts of a claimed partition that have no answer yet, in order. Sorted here: asked to sort them,
    /// SQLite walked every part of the job in its primary key's order (the whole job's rows, for each
    /// partition) rather than the partition's entries in `job_parts_by_partition_and_state`.
    pub(crate) async fn parts_to_run(&self, claim: &Claim) -> Result<Vec<PartToRun>, JobError> {
        let rows = sqlx::query(
            "SELECT idx, state, once, method, target, headers, body FROM job_parts \
             WHERE job_id = $1 AND partition_idx = $2 AND state IN ('pending', 'sent')",
        )
        .bind(&claim.job_id)
        .bind(claim.idx)
        .fetch_all(&self.pool)
        .await?;
        let unreadable = |e: sqlx::Error| JobError::Unreadable(e.to_string());
        let mut parts: Vec<PartToRun> = rows
            .iter()
            .map(|row| {
                let state: String = row.try_get(1)?;
                let headers: Vec<u8> = row.try_get(5)?;
                let body: Vec<u8> = row.try_get(6)?;
                Ok(PartToRun {
                    idx: row.try_get(0)?,
                    state: PartState::parse(&state),
                    once: row.try_get::<i64, _>(2)? == 1,
                    request: StoredRequest {
                        method: row.try_get(3)?,
                        target: row.try_get(4)?,
                        headers: decode_headers(&headers),
                        body: Bytes::from(body),
                    },
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(unreadable)?;
        parts.sort_unstable_by_key(|part| part.idx);
        Ok(parts)
    }

    /// Ends a job that cannot run (`failed`), unless it has ended already. Its unfinished partitions are left
    /// pending, unleased: no worker claims a failed job's, and a retry runs them (and fails again if they still
    /// cannot be read).
    pub(crate) async fn fail(&self, job_id: &str) -> Result<(), JobError> {
        let ends = self
            .status(job_id)
            .await?
            .is_some_and(|status| !status.ended());
        if ends {
            sqlx::query(
                "UPDATE job_partitions SET status = 'pending', lease_owner = NULL, lease_until = NULL \
                 WHERE job_id = $1 AND status = 'running'",
            )
            .bind(job_id)
            .execute(&self.pool)
            .await?;
            self.end(job_id, JobStatus::Failed, self.clock.now())
                .await?;
        }
        Ok(())
    }

    /// Records that a part that must not run twice is about to be sent: after a crash it is answered 500
    /// instead of being sent again.
    pub(crate) async fn mark_sent(&self, job_id: &str, idx: i64) -> Result<(), JobError> {
        sqlx::query("UPDATE job_parts SET state = 'sent' WHERE job_id = $1 AND idx = $2")
            .bind(job_id)
            .bind(idx)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Commits a group of answers in one transaction (one commit, where a commit per answer was the jobs'
    /// bottleneck); only then do its parts count as done. All or none: an error leaves every part of the
    /// group without its answer, to run again. The limit changes noted since the last group go with it: a
    /// job's first [`MAX_TUNING_ROWS`] are kept, none for a job that is gone.
    pub(crate) async fn answers(
        &self,
        group: &[Answered],
        tuning: &[TuningRow],
    ) -> Result<(), JobError> {
        let mut tx = self.pool.begin().await?;
        for change in tuning {
            sqlx::query(
                "INSERT INTO job_tuning (job_id, route, from_limit, to_limit, reason, changed_at) \
                 SELECT $1, $2, $3, $4, $5, $6 \
                 WHERE (SELECT COUNT(*) FROM job_tuning WHERE job_id = $1) < $7 \
                 AND EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND status <> 'expired')",
            )
            .bind(change.job_id.as_str())
            .bind(&*change.route)
            .bind(i64::try_from(change.from).unwrap_or(i64::MAX))
            .bind(i64::try_from(change.to).unwrap_or(i64::MAX))
            .bind(change.reason.as_str())
            .bind(change.at)
            .bind(MAX_TUNING_ROWS)
            .execute(&mut *tx)
            .await?;
        }
        for answered in group {
            let answer = &answered.answer;
            sqlx::query(
                "UPDATE job_parts SET state = 'done', failed = $3, status = $4, answer_headers = $5, \
                 answer_body = $6, elapsed_ms = $7 WHERE job_id = $1 AND idx = $2",
            )
            .bind(&answered.job_id)
            .bind(answered.idx)
            .bind(i64::from(failed(answer.status)))
            .bind(i64::from(answer.status))
            .bind(encode_headers(&answer.headers))
            .bind(answer.body.to_vec())
            .bind(
                answered
                    .elapsed
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Gives a partition back: done when every part has an answer, else pending again (paused, cancelled).
    /// Then ends the job when nothing of it is left to run. Says whether the partition is done.
    pub(crate) async fn release(&self, claim: &Claim, worker: &str) -> Result<bool, JobError> {
        let now = self.clock.now();
        let left: i64 = sqlx::query(
            "SELECT COUNT(*) FROM job_parts WHERE job_id = $1 AND partition_idx = $2 \
             AND state IN ('pending', 'sent')",
        )
        .bind(&claim.job_id)
        .bind(claim.idx)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        let (status, ended) = if left == 0 {
            ("done", Some(now))
        } else {
            ("pending", None)
        };
        sqlx::query(
            "UPDATE job_partitions SET status = $4, lease_owner = NULL, lease_until = NULL, ended_at = $5 \
             WHERE job_id = $1 AND idx = $2 AND lease_owner = $3",
        )
        .bind(&claim.job_id)
        .bind(claim.idx)
        .bind(worker)
        .bind(status)
        .bind(ended)
        .execute(&self.pool)
        .await?;
        self.settle(&claim.job_id).await?;
        Ok(left == 0)
    }

    /// Ends a job once no partition is left to run: `completed` (or `cancelled` when it was cancelling,
    /// its unstarted parts marked so), with its expiry.
    pub(crate) async fn settle(&self, job_id: &str) -> Result<(), JobError> {
        let Some(job) = self.job(job_id).await? else {
            return Ok(());
        };
        let now = self.clock.now();
        match job.status {
            JobStatus::Cancelling => {
                let running: i64 = sqlx::query(
                    "SELECT COUNT(*) FROM job_partitions WHERE job_id = $1 AND status = 'running'",
                )
                .bind(job_id)
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?;
                if running == 0 {
                    sqlx::query(
                        "UPDATE job_parts SET state = 'cancelled' WHERE job_id = $1 AND state = 'pending'",
                    )
                    .bind(job_id)
                    .execute(&self.pool)
                    .await?;
                    self.end(job_id, JobStatus::Cancelled, now).await?;
                }
            }
            JobStatus::Running | JobStatus::Queued => {
                let open: i64 = sqlx::query(
                    "SELECT COUNT(*) FROM job_partitions WHERE job_id = $1 AND status <> 'done'",
                )
                .bind(job_id)
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?;
                if open == 0 {
                    self.end(job_id, JobStatus::Completed, now).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Ends a job: its final status, when it ended and when its answers go.
    /// Ends a job: its final status, when it ended and when its answers go, and its performance figures.
    async fn end(&self, job_id: &str, status: JobStatus, now: i64) -> Result<(), JobError> {
        let figures = self.performance(job_id, now).await?;
        sqlx::query(
            "UPDATE jobs SET status = $2, ended_at = $3, expires_at = $4, parts_per_second = $5, \
             p50_ms = $6, p90_ms = $7, p99_ms = $8 WHERE id = $1",
        )
        .bind(job_id)
        .bind(status.as_str())
        .bind(now)
        .bind(now.saturating_add(self.retention_ms))
        .bind(figures.parts_per_second)
        .bind(figures.p50_ms)
        .bind(figures.p90_ms)
        .bind(figures.p99_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A job's throughput (answers per second from its start to `now`) and its parts' upstream latency
    /// percentiles.
    async fn performance(&self, job_id: &str, now: i64) -> Result<Performance, JobError> {
        let row = sqlx::query(
            "SELECT COUNT(*), MIN(j.started_at) FROM job_parts p JOIN jobs j ON j.id = p.job_id \
             WHERE p.job_id = $1 AND p.state = 'done' AND p.elapsed_ms IS NOT NULL",
        )
        .bind(job_id)
        .fetch_one(&self.pool)
        .await?;
        let timed: i64 = row.try_get(0)?;
        let started: Option<i64> = row.try_get(1)?;
        let mut percentiles = [None; 3];
        for (slot, pct) in percentiles.iter_mut().zip([50, 90, 99]) {
            if timed == 0 {
                break;
            }
            // The nearest-rank percentile.
            let rank = ((timed * pct + 99) / 100).max(1) - 1;
            let value: i64 = sqlx::query(
                "SELECT elapsed_ms FROM job_parts WHERE job_id = $1 AND state = 'done' \
                 AND elapsed_ms IS NOT NULL ORDER BY elapsed_ms LIMIT 1 OFFSET $2",
            )
            .bind(job_id)
            .bind(rank)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
            *slot = Some(value);
        }
        let seconds = started.map(|at| (now - at).max(1) as f64 / 1000.0);
        Ok(Performance {
            parts_per_second: seconds.map(|s| timed as f64 / s),
            p50_ms: percentiles[0],
            p90_ms: percentiles[1],
            p99_ms: percentiles[2],
        })
    }

    /// `POST /jobs/{id}/retry`: the failed parts get no answer again, their partitions run again, and the
    /// job is queued. Returns how many parts will run again.
    pub(crate) async fn retry(&self, job_id: &str) -> Result<i64, JobError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE job_partitions SET status = 'pending', ended_at = NULL WHERE job_id = $1 AND idx IN \
             (SELECT partition_idx FROM job_parts WHERE job_id = $1 AND failed = 1 AND method <> '')",
        )
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
        let again = sqlx::query(
            "UPDATE job_parts SET state = 'pending', failed = 0, status = NULL, answer_headers = NULL, \
             answer_body = NULL WHERE job_id = $1 AND failed = 1 AND method <> ''",
        )
        .bind(job_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if again > 0 {
            sqlx::query(
                "UPDATE jobs SET status = 'queued', ended_at = NULL, expires_at = NULL WHERE id = $1",
            )
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(i64::try_from(again).unwrap_or(i64::MAX))
    }

    /// A job's tuning history, in the order the limit changed.
    pub(crate) async fn tuning(&self, job_id: &str) -> Result<Vec<TuningRow>, JobError> {
        let rows = sqlx::query(
            "SELECT route, from_limit, to_limit, reason, changed_at FROM job_tuning WHERE job_id = $1 \
             ORDER BY id",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let route: String = row.try_get(0)?;
                let (from, to): (i64, i64) = (row.try_get(1)?, row.try_get(2)?);
                Ok(TuningRow {
                    job_id: job_id.to_owned(),
                    route: Arc::from(route),
                    from: usize::try_from(from).unwrap_or(0),
                    to: usize::try_from(to).unwrap_or(0),
                    reason: row.try_get(3)?,
                    at: row.try_get(4)?,
                })
            })
            .collect()
    }

    /// Answers in request order, `limit` of them from part `from` on.
    pub(crate) async fn results(
        &self,
        job_id: &str,
        from: i64,
        limit: i64,
    ) -> Result<Vec<ResultRow>, JobError> {
        let rows = sqlx::query(
            "SELECT idx, content_id, state, status, answer_headers, answer_body FROM job_parts \
             WHERE job_id = $1 AND idx >= $2 ORDER BY idx LIMIT $3",
        )
        .bind(job_id)
        .bind(from)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get(2)?;
                let answer = if PartState::parse(&state) == PartState::Done {
                    let status: i64 = row.try_get(3)?;
                    let headers: Vec<u8> = row.try_get(4)?;
                    let body: Vec<u8> = row.try_get(5)?;
                    Some(StoredAnswer {
                        status: u16::try_from(status).unwrap_or(500),
                        headers: decode_headers(&headers),
                        body: Bytes::from(body),
                    })
                } else {
                    None
                };
                Ok(ResultRow {
                    idx: row.try_get(0)?,
                    content_id: row.try_get(1)?,
                    answer,
                })
            })
            .collect()
    }

    /// Past their retention, jobs become `expired` and their parts and partitions are dropped; a retention
    /// later still, their row goes too (until then their URLs answer 410). Returns how many jobs expired.
    ///
    /// Jobs still `receiving` after `abandoned` (their upload broke off with the instance that read it) are
    /// dropped.
    pub(crate) async fn sweep(&self, abandoned: std::time::Duration) -> Result<u64, JobError> {
        let now = self.clock.now();
        let abandoned_ms = i64::try_from(abandoned.as_millis()).unwrap_or(i64::MAX);
        let stale: Vec<String> = sqlx::query(
            "SELECT id FROM jobs WHERE status = 'receiving' AND created_at < $1 LIMIT 100",
        )
        .bind(now.saturating_sub(abandoned_ms))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
        for id in &stale {
            self.delete(id).await?;
        }
        let expired: Vec<String> = sqlx::query(
            "SELECT id FROM jobs WHERE expires_at < $1 AND status <> 'expired' LIMIT 100",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
        for id in &expired {
            let mut tx = self.pool.begin().await?;
            sqlx::query("DELETE FROM job_parts WHERE job_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM job_partitions WHERE job_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM job_tuning WHERE job_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE jobs SET status = 'expired' WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        sqlx::query("DELETE FROM jobs WHERE status = 'expired' AND expires_at < $1")
            .bind(now.saturating_sub(self.retention_ms))
            .execute(&self.pool)
            .await?;
        Ok(expired.len() as u64)
    }
}

/// Whether an answer counts as failed: an error status, the upstream's or the gateway's.
pub(crate) fn failed(status: u16) -> bool {
    status >= 400
}

fn job_row(row: &AnyRow) -> Result<JobRow, JobError> {
    let status: String = row.try_get(2)?;
    Ok(JobRow {
        id: row.try_get(0)?,
        owner: row.try_get(1)?,
        status: JobStatus::parse(&status)
            .ok_or_else(|| JobError::Store(format!("unknown job status {status:?}")))?,
        total: row.try_get(3)?,
        created_at: row.try_get(4)?,
        started_at: row.try_get(5)?,
        ended_at: row.try_get(6)?,
        expires_at: row.try_get(7)?,
        performance: Performance {
            parts_per_second: row.try_get(8)?,
            p50_ms: row.try_get(9)?,
            p90_ms: row.try_get(10)?,
            p99_ms: row.try_get(11)?,
        },
    })
}

/// Headers as kept: `name: value\r\n` lines (a header value never holds CR or LF).
pub(crate) fn encode_headers(headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The headers [`encode_headers`] wrote (a line that is not a header, which it never writes, is skipped).
pub(crate) fn decode_headers(bytes: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in bytes.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = line[colon + 1..]
            .strip_prefix(b" ")
            .unwrap_or(&line[colon + 1..]);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    headers
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> JobError {
        JobError::Store(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store on a SQLite file in a directory of its own (removed by the test), and the config it opened.
    async fn sqlite_store() -> (std::path::PathBuf, JobsConfig, Store) {
        let dir =
            std::env::temp_dir().join(format!("batchgate-store-{}", super::super::random_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = JobsConfig {
            store: format!("sqlite://{}", dir.join("jobs.db").display()),
            ..JobsConfig::default()
        };
        let store = Store::open(&config).await.unwrap();
        (dir, config, store)
    }

    /// A job whose upload broke off with its instance (left `receiving`) is dropped by the sweep once it is
    /// older than an upload can be, and stops counting against `jobs.max_jobs`.
    #[tokio::test]
    async fn an_abandoned_upload_is_swept() {
        let (dir, config, store) = sqlite_store().await;
        let origin = Origin {
            headers: HeaderMap::new(),
            peer: std::net::Ipv4Addr::LOCALHOST.into(),
            tls: false,
        };
        store.create("abc", "owner", &origin, None).await.unwrap();
        assert_eq!(store.open_jobs().await.unwrap(), 1);
        store
            .sweep(std::time::Duration::from_secs(60))
            .await
            .unwrap();
        assert!(store.job("abc").await.unwrap().is_some(), "still young");
        store.clock.advance(std::time::Duration::from_secs(61));
        store
            .sweep(std::time::Duration::from_secs(60))
            .await
            .unwrap();
        assert!(store.job("abc").await.unwrap().is_none());
        assert_eq!(store.open_jobs().await.unwrap(), 0);
        // Opening it again finds the schema in place.
        drop(store);
        Store::open(&config).await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn change(job_id: &str, n: usize) -> TuningRow {
        TuningRow {
            job_id: job_id.to_owned(),
            route: Arc::from("/api/"),
            from: n,
            to: n + 1,
            reason: format!("change {n}"),
            at: n as i64,
        }
    }

    /// A job's tuning history: its first `MAX_TUNING_ROWS` changes in order, none for a job that is not in
    /// the store, gone with the job. A version 1 store (before the history) is migrated when opened.
    #[tokio::test]
    async fn the_tuning_history_is_capped_kept_in_order_and_goes_with_its_job() {
        let (dir, config, store) = sqlite_store().await;
        // Back to version 1, as a gateway before the history left it.
        for statement in [
            "DROP TABLE job_tuning",
            "DELETE FROM batchgate_schema",
            "INSERT INTO batchgate_schema (version) VALUES (1)",
        ] {
            sqlx::query(statement).execute(&store.pool).await.unwrap();
        }
        drop(store);
        let store = Store::open(&config).await.unwrap();
        let origin = Origin {
            headers: HeaderMap::new(),
            peer: std::net::Ipv4Addr::LOCALHOST.into(),
            tls: false,
        };
        store.create("job", "owner", &origin, None).await.unwrap();
        let cap = usize::try_from(MAX_TUNING_ROWS).unwrap();
        let changes: Vec<TuningRow> = (0..cap + 5).map(|n| change("job", n)).collect();
        let stray = [change("no-such-job", 0)];
        store.answers(&[], &changes[..10]).await.unwrap();
        store.answers(&[], &changes[10..]).await.unwrap();
        store.answers(&[], &stray).await.unwrap();
        assert_eq!(store.tuning("job").await.unwrap(), changes[..cap]);
        assert!(store.tuning("no-such-job").await.unwrap().is_empty());
        store.delete("job").await.unwrap();
        assert!(store.tuning("job").await.unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn headers_survive_the_store_in_order() {
        let mut headers = HeaderMap::new();
        headers.append("a", HeaderValue::from_static("1"));
        headers.append("set-cookie", HeaderValue::from_static("x=1; Path=/"));
        headers.append("set-cookie", HeaderValue::from_static("y=2"));
        headers.append("empty", HeaderValue::from_static(""));
        assert_eq!(decode_headers(&encode_headers(&headers)), headers);
    }
}
