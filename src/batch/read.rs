//! The read stage: the batch body, part by part as it streams in. Each part is parsed, checked, routed and
//! handed to the scheduler at once, so safe parts start while the rest of the body is still arriving.

use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::run::{Feed, Forward, Job, Work};
use crate::codec::{Part, PartReader};
use crate::config::Limits;
use crate::error::{BatchError, PartError};
use crate::gateway::Gateway;
use crate::stack::{BatchScope, PartRequest};

/// What reading one batch's body needs.
#[derive(Debug)]
pub(crate) struct Read<'a> {
    pub gateway: &'a Gateway,
    pub scope: &'a Arc<BatchScope>,
    pub gateway_host: Option<&'a str>,
    pub feed: &'a Feed,
}

impl Read<'_> {
    /// Reads the whole body; returns how many parts and bytes it held. Bounded in bytes (`max_batch_bytes`), in parts
    /// (`max_parts`), in pauses (`body_read_timeout`) and in total time (`upload_timeout`).
    pub(crate) async fn body<B>(
        &self,
        mut reader: PartReader,
        mut body: B,
        arrival: Instant,
    ) -> Result<(usize, u64), BatchError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let limits = &self.gateway.config.limits;
        let upload_deadline = arrival + limits.upload_timeout;
        let mut received = 0u64;
        let mut parts = 0usize;
        while let Some(data) = next_data(&mut body, limits, upload_deadline).await? {
            received += data.len() as u64;
            if received > limits.max_batch_bytes {
                return Err(BatchError::TooLarge {
                    received,
                    limit: limits.max_batch_bytes,
                });
            }
            reader.push(&data);
            while let Some(part) = reader.next_part()? {
                parts += 1;
                // Past the limit, parts are only framed, to report how many there were; nothing more runs.
                if parts <= limits.max_parts {
                    self.feed.push(self.job(parts - 1, part));
                }
            }
            if reader.is_closed() {
                break;
            }
        }
        reader.finish()?;
        if parts > limits.max_parts {
            return Err(BatchError::TooManyParts {
                received: parts,
                limit: limits.max_parts,
            });
        }
        Ok((parts, received))
    }

    /// Routes one part.
    fn job(&self, index: usize, part: Part) -> Job {
        let (route, work) = match self.work(index, part.request) {
            Ok((route, work)) => (route, work),
            Err(error) => (Arc::from(""), Work::Refused(error)),
        };
        Job {
            index,
            content_id: part.content_id,
            route,
            work,
            depends_on: part.depends_on,
        }
    }

    fn work(
        &self,
        index: usize,
        request: Result<batchgate_wire::EmbeddedRequest, batchgate_wire::RequestError>,
    ) -> Result<(Arc<str>, Work), PartError> {
        let request = request.map_err(|source| PartError::Request { index, source })?;
        let destination = self
            .gateway
            .router
            .route(&request.target, self.gateway_host)
            .map_err(|source| PartError::Route { index, source })?;
        refuse_nested(index, &request.headers)?;
        Ok((
            destination.route.name.clone(),
            Work::Forward(Forward {
                service: self.gateway.shared_service(&destination.route),
                permits: self.gateway.permits(&destination.route),
                dedup: destination.route.dedup,
                request: Box::new(PartRequest::new(
                    index,
                    request.method,
                    destination.path,
                    request.headers,
                    request.body,
                    self.scope.clone(),
                )),
            }),
        ))
    }
}

/// The request body's next data frame (trailers skipped), or `None` at its end: a pause longer than
/// `body_read_timeout` is a [`BatchError::SlowClient`], the whole upload past `upload_deadline` a
/// [`BatchError::UploadTimeout`]. A batch's body and a direct request's are read alike.
pub(crate) async fn next_data<B>(
    body: &mut B,
    limits: &Limits,
    upload_deadline: Instant,
) -> Result<Option<Bytes>, BatchError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    loop {
        let pause = Instant::now() + limits.body_read_timeout;
        // The body first: a frame already there is taken without the timer ever entering the wheel.
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            () = tokio::time::sleep_until(pause.min(upload_deadline)) => {
                return Err(if pause < upload_deadline {
                    BatchError::SlowClient(limits.body_read_timeout)
                } else {
                    BatchError::UploadTimeout(limits.upload_timeout)
                });
            }
        };
        match frame {
            None => return Ok(None),
            Some(Err(e)) => return Err(BatchError::BodyRead(e.to_string())),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// A part whose body is itself multipart is refused (400, that part only): batches do not nest. Checked where a
/// batch's parts are read and where a job's are stored.
pub(crate) fn refuse_nested(index: usize, headers: &http::HeaderMap) -> Result<(), PartError> {
    let nested = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .get(..10)
                .is_some_and(|t| t.eq_ignore_ascii_case("multipart/"))
        });
    if nested {
        return Err(PartError::NestedBody { index });
    }
    Ok(())
}
