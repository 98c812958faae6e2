//! Where each part of a recent batch spent its time: queued, sent, first byte, done and written, in
//! microseconds from the batch's arrival. The stages set their own mark; `/admin/stats` and the dashboard's
//! waterfall read them.
//!
//! A batch keeps the timelines of its first `admin.stats_parts_per_batch` parts only, so the recent batches
//! hold bounded memory and `/admin/stats` answers a bounded size whatever `limits.max_parts` is; the others
//! are counted, and their statuses still count in the access line.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use http::Method;
use serde::Serialize;
use tokio::time::Instant;

use crate::codec::Format;

/// A mark not set yet.
const UNSET: u32 = u32::MAX;

/// One part's marks.
#[derive(Debug)]
pub(crate) struct PartTimeline {
    arrival: Instant,
    route: Arc<str>,
    /// `None` for a part refused before its request was read.
    method: Option<Method>,
    queued: AtomicU32,
    sent: AtomicU32,
    first_byte: AtomicU32,
    done: AtomicU32,
    written: AtomicU32,
    status: AtomicU16,
    /// Microseconds spent waiting for permits (the batch's concurrency, the route's and the gateway's).
    waited: AtomicU32,
    /// The batch's count of parts by status class, which this part's status joins.
    statuses: Arc<StatusClasses>,
}

/// Parts answered, by status class (`[0]` unused, `[1]` 1xx ... `[5]` 5xx and above).
type StatusClasses = [AtomicU32; 6];

/// The stages a part goes through.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mark {
    /// Started: waiting for permits.
    Queued,
    /// Its request went to an upstream (the first try).
    Sent,
    /// The upstream's response head arrived.
    FirstByte,
    /// Answered (or failed).
    Done,
    /// Taken by the reply writer.
    Written,
}

impl PartTimeline {
    fn new(
        arrival: Instant,
        route: Arc<str>,
        method: Option<Method>,
        statuses: Arc<StatusClasses>,
    ) -> PartTimeline {
        PartTimeline {
            statuses,
            arrival,
            route,
            method,
            queued: AtomicU32::new(UNSET),
            sent: AtomicU32::new(UNSET),
            first_byte: AtomicU32::new(UNSET),
            done: AtomicU32::new(UNSET),
            written: AtomicU32::new(UNSET),
            status: AtomicU16::new(0),
            waited: AtomicU32::new(0),
        }
    }

    /// Sets `mark` to now, unless it is set already (a retry keeps the first `sent`).
    pub(crate) fn mark(&self, mark: Mark) {
        let micros = u32::try_from(self.arrival.elapsed().as_micros()).unwrap_or(UNSET - 1);
        let slot = match mark {
            Mark::Queued => &self.queued,
            Mark::Sent => &self.sent,
            Mark::FirstByte => &self.first_byte,
            Mark::Done => &self.done,
            Mark::Written => &self.written,
        };
        let _ = slot.compare_exchange(UNSET, micros, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The status the client got; set once, when the part is answered.
    pub(crate) fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
        let class = usize::from(status / 100).clamp(1, 5);
        self.statuses[class].fetch_add(1, Ordering::Relaxed);
    }

    /// The status the client got; 0 until the part is answered.
    pub(crate) fn status(&self) -> u16 {
        self.status.load(Ordering::Relaxed)
    }

    /// Time from the part's start (`Queued`) until now.
    pub(crate) fn elapsed_since_queued(&self) -> std::time::Duration {
        let queued = self.queued.load(Ordering::Relaxed);
        let start = if queued == UNSET { 0 } else { queued };
        self.arrival
            .elapsed()
            .saturating_sub(std::time::Duration::from_micros(u64::from(start)))
    }

    /// Adds time spent waiting for a permit.
    pub(crate) fn waited(&self, wait: std::time::Duration) {
        let micros = u32::try_from(wait.as_micros()).unwrap_or(u32::MAX);
        let _ = self
            .waited
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some(w.saturating_add(micros))
            });
    }

    /// Microseconds the part waited for permits.
    pub(crate) fn waited_micros(&self) -> u32 {
        self.waited.load(Ordering::Relaxed)
    }

    fn view(&self, index: usize) -> PartView {
        let ms = |a: &AtomicU32| {
            let v = a.load(Ordering::Relaxed);
            (v != UNSET).then(|| f64::from(v) / 1000.0)
        };
        let status = self.status.load(Ordering::Relaxed);
        PartView {
            index,
            route: self.route.to_string(),
            method: self
                .method
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            status: (status != 0).then_some(status),
            queued: ms(&self.queued),
            sent: ms(&self.sent),
            first_byte: ms(&self.first_byte),
            done: ms(&self.done),
            written: ms(&self.written),
        }
    }
}

/// One batch: who sent it, when, and its parts' timelines.
#[derive(Debug)]
pub(crate) struct BatchTimeline {
    pub id: u64,
    arrival: Instant,
    arrived_at: SystemTime,
    peer: IpAddr,
    /// The first `keep` parts' timelines.
    parts: Mutex<Vec<std::sync::Arc<PartTimeline>>>,
    keep: usize,
    /// Parts past `keep`: timed while they run, not kept.
    omitted: AtomicU32,
    statuses: Arc<StatusClasses>,
    /// Microseconds from arrival until the reply's last byte was handed over; 0 while in progress.
    finished: AtomicU64,
    /// The outer status: 200, or a refusal's.
    status: AtomicU16,
    /// The batch's format, once admitted.
    format: OnceLock<Format>,
}

impl BatchTimeline {
    /// A batch that keeps the timelines of its first `keep` parts.
    pub(crate) fn new(id: u64, arrival: Instant, peer: IpAddr, keep: usize) -> BatchTimeline {
        BatchTimeline {
            id,
            arrival,
            arrived_at: SystemTime::now(),
            peer,
            parts: Mutex::new(Vec::new()),
            keep,
            omitted: AtomicU32::new(0),
            statuses: Arc::default(),
            finished: AtomicU64::new(0),
            status: AtomicU16::new(0),
            format: OnceLock::new(),
        }
    }

    /// A part's timeline, added in request order (kept among the batch's if there is room).
    pub(crate) fn part(
        &self,
        route: Arc<str>,
        method: Option<Method>,
    ) -> std::sync::Arc<PartTimeline> {
        let part = std::sync::Arc::new(PartTimeline::new(
            self.arrival,
            route,
            method,
            self.statuses.clone(),
        ));
        let mut parts = self.lock();
        if parts.len() < self.keep {
            parts.push(part.clone());
        } else {
            self.omitted.fetch_add(1, Ordering::Relaxed);
        }
        part
    }

    /// Marks the `index`th part (in request order).
    pub(crate) fn mark(&self, index: usize, mark: Mark) {
        if let Some(part) = self.lock().get(index) {
            part.mark(mark);
        }
    }

    pub(crate) fn finish(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
        let micros = u64::try_from(self.arrival.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.finished.store(micros.max(1), Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<std::sync::Arc<PartTimeline>>> {
        self.parts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The parts' statuses by class, as `2xx=18 4xx=2` (all parts, kept or not).
    pub(crate) fn status_counts(&self) -> StatusCounts {
        let mut counts = [0u32; 6];
        for (count, n) in counts.iter_mut().zip(self.statuses.iter()) {
            *count = n.load(Ordering::Relaxed);
        }
        let started = self.lock().len() as u32 + self.omitted.load(Ordering::Relaxed);
        counts[0] = started.saturating_sub(counts.iter().sum());
        StatusCounts(counts)
    }

    /// Milliseconds from arrival until the reply's last byte was handed over, once it has been.
    pub(crate) fn duration_ms(&self) -> Option<f64> {
        let finished = self.finished.load(Ordering::Relaxed);
        (finished != 0).then(|| finished as f64 / 1000.0)
    }

    /// The batch was admitted, in this format.
    pub(crate) fn set_format(&self, format: Format) {
        let _ = self.format.set(format);
    }

    pub(crate) fn view(&self) -> BatchView {
        let status = self.status.load(Ordering::Relaxed);
        BatchView {
            id: self.id,
            arrived_unix_ms: self
                .arrived_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            peer: self.peer.to_string(),
            format: self.format.get().map(|f| f.as_str()),
            parts_omitted: self.omitted.load(Ordering::Relaxed),
            status: (status != 0).then_some(status),
            duration_ms: self.duration_ms(),
            parts: self
                .lock()
                .iter()
                .enumerate()
                .map(|(i, p)| p.view(i))
                .collect(),
        }
    }
}

/// A batch's parts by status class, `[0]` those not answered: written into the access line as it is formatted,
/// without a string of its own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StatusCounts([u32; 6]);

impl std::fmt::Display for StatusCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (class, n) in self.0.iter().enumerate().skip(1).filter(|(_, n)| **n > 0) {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{class}xx={n}")?;
        }
        if self.0[0] > 0 {
            write!(f, " unanswered={}", self.0[0])?;
        }
        Ok(())
    }
}

/// A batch as `/admin/stats` shows it.
#[derive(Debug, Serialize)]
pub(crate) struct BatchView {
    pub id: u64,
    pub arrived_unix_ms: u64,
    pub peer: String,
    /// `multipart` or `json`; none for a batch refused before its format was known.
    pub format: Option<&'static str>,
    /// Parts past `admin.stats_parts_per_batch`, not in `parts`.
    pub parts_omitted: u32,
    pub status: Option<u16>,
    pub duration_ms: Option<f64>,
    pub parts: Vec<PartView>,
}

/// A part's marks, in milliseconds from its batch's arrival.
#[derive(Debug, Serialize)]
pub(crate) struct PartView {
    pub index: usize,
    pub route: String,
    pub method: String,
    pub status: Option<u16>,
    pub queued: Option<f64>,
    pub sent: Option<f64>,
    pub first_byte: Option<f64>,
    pub done: Option<f64>,
    pub written: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past `keep`, parts are timed but not kept: the view holds `keep` parts and counts the rest, and the
    /// access line's status counts still cover every part.
    #[tokio::test(start_paused = true)]
    async fn a_batch_keeps_its_first_parts_and_counts_the_rest() {
        let batch = BatchTimeline::new(1, Instant::now(), IpAddr::from([127, 0, 0, 1]), 2);
        let parts: Vec<_> = (0..5)
            .map(|_| batch.part(Arc::from("/a/"), Some(Method::GET)))
            .collect();
        for (part, status) in parts.iter().zip([200, 404, 200, 503]) {
            part.set_status(status);
        }
        let view = batch.view();
        assert_eq!(view.parts.len(), 2);
        assert_eq!(view.parts_omitted, 3);
        assert_eq!(
            batch.status_counts().to_string(),
            "2xx=2 4xx=1 5xx=1 unanswered=1"
        );
    }
}
