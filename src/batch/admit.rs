//! The admit stage: whether a batch may be served at all, decided from its head alone, before any of its
//! body is read.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::request::Parts;
use tokio::sync::OwnedSemaphorePermit;

use crate::codec::{self, PartReader, ReplyWriter};
use crate::config::Coding;
use crate::error::BatchError;
use crate::gateway::Gateway;
use crate::observe::trace::TraceContext;
use crate::stack::{BatchScope, ResponseBudget};

/// A batch let in.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// One of `limits.max_batches`, held until the reply is out.
    pub permit: OwnedSemaphorePermit,
    pub reader: PartReader,
    pub writer: ReplyWriter,
    /// The reply's content coding, negotiated from `Accept-Encoding`.
    pub coding: Option<Coding>,
    /// What its parts share upstream.
    pub scope: Arc<BatchScope>,
    /// The batch's own `Host`: an absolute-form target naming it is the gateway, not an upstream.
    pub gateway_host: Option<String>,
}

pub(crate) fn admit(
    gateway: &Gateway,
    head: &Parts,
    peer: IpAddr,
    tls: bool,
    trace: TraceContext,
) -> Result<Admitted, BatchError> {
    let config = &gateway.config;
    let limits = &config.limits;
    let permit = gateway.admit_batch()?;
    let content_type = head
        .headers
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().map_err(|_| BatchError::NoContentType))
        .transpose()?;
    let accept = head.headers.get(ACCEPT).and_then(|v| v.to_str().ok());
    let (reader, writer) = codec::open(
        content_type,
        accept,
        limits.max_part_bytes,
        gateway.part_limits,
    )?;
    if let Some(declared) = head
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && declared > limits.max_batch_bytes
    {
        return Err(BatchError::TooLarge {
            received: declared,
            limit: limits.max_batch_bytes,
        });
    }
    let coding = config.compression.negotiate(
        head.headers
            .get(ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok()),
    );
    let gateway_host = head
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| head.uri.authority().map(|a| a.to_string()));
    let scope = Arc::new(BatchScope {
        headers: gateway.headers.batch(&head.headers, peer, tls),
        budget: ResponseBudget::new(limits.max_batch_response_bytes),
        client: gateway.client_key(&head.headers, peer),
        trace,
        job: None,
    });
    Ok(Admitted {
        permit,
        reader,
        writer,
        coding,
        scope,
        gateway_host,
    })
}
