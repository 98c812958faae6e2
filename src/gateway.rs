//! The batch endpoint: reads a batch as it streams in, starts each part as soon as it is parsed, and answers
//! with the ordered multipart reply once the request body is complete.
//!
//! The reply's `200` is committed only after the closing delimiter has arrived, so that a truncated, oversized
//! or over-long batch can still get its 400/413. Parts do not wait for that: they run while the rest of the
//! body is still arriving.

use std::collections::HashSet;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{
    ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue, VARY,
};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::error::{BatchError, PartError};
use crate::fanout::{BatchCtx, Fanout, Forward, Job};
use crate::headers::HeaderRules;
use crate::metrics::Metrics;
use crate::route::Router;
use crate::upstream::Upstreams;
use crate::wire::{ContentId, PartLimits, PartSplitter, boundary_from_content_type, parse_part};

/// Body of every response the gateway writes.
pub type ReplyBody = UnsyncBoxBody<Bytes, Infallible>;

/// Everything the gateway shares across connections and batches.
#[derive(Debug)]
pub struct Gateway {
    pub config: Config,
    pub router: Router,
    pub upstreams: Upstreams,
    pub metrics: Arc<Metrics>,
    header_rules: HeaderRules,
    part_limits: PartLimits,
    /// Sub-requests in flight across all batches.
    pub inflight: Arc<Semaphore>,
    /// Batches being served; a batch over the limit is refused at once with 503.
    batches: Arc<Semaphore>,
    /// Secret keys for reply boundaries: a boundary is a keyed hash of the batch, so the same batch gets the
    /// same reply bytes, yet an upstream cannot predict it to forge parts inside its body.
    boundary_keys: [RandomState; 2],
}

impl Gateway {
    /// Builds the gateway from a validated config.
    pub fn new(config: Config) -> Gateway {
        let limits = &config.limits;
        let metrics = Arc::new(Metrics::default());
        Gateway {
            router: Router::new(&config),
            upstreams: Upstreams::new(&config.upstream, metrics.clone()),
            metrics,
            header_rules: HeaderRules::new(&config),
            part_limits: PartLimits {
                max_headers: limits.max_part_headers,
                max_header_bytes: usize::try_from(limits.max_part_header_bytes)
                    .unwrap_or(usize::MAX),
            },
            inflight: Arc::new(Semaphore::new(limits.max_inflight)),
            batches: Arc::new(Semaphore::new(limits.max_batches)),
            boundary_keys: [RandomState::new(), RandomState::new()],
            config,
        }
    }

    /// Sub-requests in flight right now, across all batches.
    pub fn sub_requests_in_flight(&self) -> usize {
        self.config.limits.max_inflight - self.inflight.available_permits()
    }

    /// Batches being served right now (from arrival until the last reply byte is out or the client is gone).
    pub fn batches_in_flight(&self) -> usize {
        self.config.limits.max_batches - self.batches.available_permits()
    }

    /// Serves one `POST` to the batch endpoint.
    pub async fn batch<B>(
        self: &Arc<Self>,
        request: Request<B>,
        peer: IpAddr,
    ) -> Result<Response<ReplyBody>, BatchError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let limits = &self.config.limits;
        let permit = self
            .batches
            .clone()
            .try_acquire_owned()
            .map_err(|_| BatchError::Overloaded(limits.max_batches))?;
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .ok_or(BatchError::NoContentType)?
            .to_str()
            .map_err(|_| BatchError::NoContentType)?;
        let boundary = boundary_from_content_type(content_type)?;
        if let Some(declared) = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            && declared > limits.max_batch_bytes
        {
            return Err(BatchError::TooLarge {
                received: declared,
                limit: limits.max_batch_bytes,
            });
        }
        let coding = self.config.compression.negotiate(
            request
                .headers()
                .get(ACCEPT_ENCODING)
                .and_then(|v| v.to_str().ok()),
        );
        let gateway_host = request
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned);
        // No TLS on client connections yet.
        let headers = self.header_rules.batch(request.headers(), peer, false);
        let ctx = Arc::new(BatchCtx::new(self.clone(), headers, peer, permit));

        let mut fanout = Some(Fanout::new(ctx.clone()));
        let mut splitter = PartSplitter::new(&boundary, limits.max_part_bytes);
        let mut ids = HashSet::new();
        let mut hashers = self.boundary_keys.each_ref().map(BuildHasher::build_hasher);
        let mut received = 0u64;
        let mut parts = 0usize;
        let mut body = request.into_body();
        let idle = tokio::time::sleep(limits.body_read_timeout);
        tokio::pin!(idle);
        loop {
            // Parts already started make progress while the rest of the body arrives.
            let running = fanout.as_ref().is_some_and(Fanout::is_running);
            let frame = tokio::select! {
                frame = body.frame() => frame,
                () = &mut idle => return Err(BatchError::SlowClient(limits.body_read_timeout)),
                () = async { fanout.as_mut().expect("running").progress().await }, if running => continue,
            };
            let frame = match frame {
                None => break,
                Some(Err(e)) => return Err(BatchError::BodyRead(e.to_string())),
                Some(Ok(frame)) => frame,
            };
            idle.as_mut()
                .reset(tokio::time::Instant::now() + limits.body_read_timeout);
            let Ok(data) = frame.into_data() else {
                continue;
            };
            received += data.len() as u64;
            if received > limits.max_batch_bytes {
                return Err(BatchError::TooLarge {
                    received,
                    limit: limits.max_batch_bytes,
                });
            }
            splitter.push(&data);
            for h in &mut hashers {
                h.write(&data);
            }
            while let Some(raw) = splitter.next_part()? {
                parts += 1;
                if parts > limits.max_parts {
                    // Keep framing only to report how many parts there were; nothing more runs.
                    fanout = None;
                    continue;
                }
                if let Some(fanout) = fanout.as_mut() {
                    let job = self.job(&ctx, parts - 1, &raw, gateway_host.as_deref(), &mut ids)?;
                    fanout.push(job);
                }
            }
            if splitter.is_closed() {
                break;
            }
        }
        splitter.finish()?;
        let Some(fanout) = fanout else {
            return Err(BatchError::TooManyParts {
                received: parts,
                limit: limits.max_parts,
            });
        };
        tracing::debug!(parts, bytes = received, %peer, "batch accepted");
        let [a, b] = hashers.map(|h| h.finish());
        let reply_boundary = format!("{a:016x}{b:016x}");
        let encoder = coding.map(|c| self.config.compression.encoder(c));
        let stream = fanout
            .into_stream(reply_boundary.clone(), encoder)
            .map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)));
        let content_type = format!("multipart/mixed; boundary={reply_boundary}");
        let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_str(&content_type).expect("token boundary"),
        );
        if self.config.compression.enabled {
            response
                .headers_mut()
                .insert(VARY, HeaderValue::from_static("accept-encoding"));
        }
        if let Some(coding) = coding {
            response
                .headers_mut()
                .insert(CONTENT_ENCODING, HeaderValue::from_static(coding.as_str()));
        }
        Ok(response)
    }

    /// Parses and routes one part into a job; duplicate Content-IDs refuse the whole batch.
    fn job(
        &self,
        ctx: &BatchCtx,
        index: usize,
        raw: &[u8],
        gateway_host: Option<&str>,
        ids: &mut HashSet<ContentId>,
    ) -> Result<Job, BatchError> {
        let parsed = parse_part(raw, self.part_limits);
        if let Some(id) = &parsed.content_id
            && !ids.insert(id.clone())
        {
            return Err(BatchError::DuplicateContentId(id.header_value()));
        }
        let answered =
            |error: PartError| Job::Answered(ctx.error_part(parsed.content_id.as_ref(), &error));
        let request = match parsed.request {
            Ok(request) => request,
            Err(source) => return Ok(answered(PartError::Request { index, source })),
        };
        let destination = match self.router.route(&request.target, gateway_host) {
            Ok(d) => d,
            Err(source) => return Ok(answered(PartError::Route { index, source })),
        };
        let nested = request
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("multipart/")
            });
        if nested {
            return Ok(answered(PartError::NestedBody { index }));
        }
        Ok(Job::Forward(Box::new(Forward {
            index,
            content_id: parsed.content_id,
            request,
            destination,
        })))
    }
}

/// A JSON error response for a refused batch.
pub fn error_response(error: &BatchError) -> Response<ReplyBody> {
    let mut response = Response::new(full(error.body()));
    *response.status_mut() = error.status();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if matches!(error, BatchError::MethodNotAllowed(_)) {
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
    }
    if error.status() == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> ReplyBody {
    BodyExt::boxed_unsync(http_body_util::Full::new(bytes.into()))
}
