//! The statuses a job and its parts go through, as stored and as the API names them.

/// A job's status (`GET /jobs/{id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobStatus {
    /// Its body is still arriving: no worker sees it, no API lists it.
    Receiving,
    Queued,
    Running,
    Paused,
    /// Parts in flight finish; nothing new starts.
    Cancelling,
    /// Every part has an answer, a failed one included.
    Completed,
    /// The job itself could not run.
    Failed,
    Cancelled,
    /// Past its retention: its answers are gone (410).
    Expired,
}

impl JobStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            JobStatus::Receiving => "receiving",
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Paused => "paused",
            JobStatus::Cancelling => "cancelling",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Expired => "expired",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<JobStatus> {
        Some(match text {
            "receiving" => JobStatus::Receiving,
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "paused" => JobStatus::Paused,
            "cancelling" => JobStatus::Cancelling,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            "expired" => JobStatus::Expired,
            _ => return None,
        })
    }

    /// Whether the job has ended (nothing of it runs or will run unless retried).
    pub(crate) fn ended(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled | JobStatus::Expired
        )
    }

    /// Whether its workers may start parts.
    pub(crate) fn runs(self) -> bool {
        matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

/// Where one part is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PartState {
    /// Not sent yet (or sent, if it may be sent again after a crash: those are not marked).
    Pending,
    /// Sent, and must never be sent again: unsafe without an `Idempotency-Key`.
    Sent,
    /// Its answer is committed.
    Done,
    /// The job was cancelled before it started.
    Cancelled,
}

impl PartState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PartState::Pending => "pending",
            PartState::Sent => "sent",
            PartState::Done => "done",
            PartState::Cancelled => "cancelled",
        }
    }

    /// A stored state; anything unknown is taken as pending (it runs, as a part that had not started).
    pub(crate) fn parse(text: &str) -> PartState {
        match text {
            "sent" => PartState::Sent,
            "done" => PartState::Done,
            "cancelled" => PartState::Cancelled,
            _ => PartState::Pending,
        }
    }
}
