//! The Rust client: build batches, send them to batchgate or any Google-style batch endpoint, read the
//! replies as they stream in, and a micro-batcher that turns concurrent single calls into batches.
//!
//! A crate of its own, which needs none of the gateway's dependencies: `batchgate-client = "0.1"`.
//!
//! - [`BatchBuilder`]: the parts of one batch, each an `http::Request<Bytes>` of any method with its headers and
//!   body, with an optional `Content-ID` (duplicates are refused) and default headers every part inherits.
//! - [`Format`]: a batch is `multipart/mixed` (Google's format) unless [`BatchBuilder::format`] makes it JSON
//!   (Microsoft Graph, OData 4.01); a JSON reply is read whole, then handed over part by part, matched by id.
//! - [`BatchClient`]: one batch URL (`http://` or `https://`, rustls with the system's roots plus any extra CA),
//!   the headers every batch carries (authorization), the connect and whole-batch timeouts, a keep-alive pool.
//!   [`BatchClient::send_stream`] yields each [`PartResponse`] as soon as it has arrived; [`BatchClient::send`]
//!   collects them in request order.
//! - [`Batcher`]: `batcher.call(request).await` from as many tasks as you like; calls are sent together, up to
//!   `max_size` a batch and after at most `max_wait`, with at most `max_in_flight` batches at once.
//! - [`ClientError`] says what failed (connect, TLS, timeout, a refused batch with the server's JSON error, a
//!   malformed reply with the byte offset, a reply that broke off); [`CallError`] is what a batcher call gets.
//!
//! ```no_run
//! use batchgate_client::{BatchBuilder, BatchClient, Batcher};
//! use bytes::Bytes;
//! use std::time::Duration;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = BatchClient::builder("https://gateway.example/batch")
//!     .bearer_auth("token")
//!     .timeout(Duration::from_secs(30))
//!     .build()?;
//!
//! // One batch, built by hand.
//! let mut batch = BatchBuilder::new();
//! batch.default_header(http::header::ACCEPT, "application/json".parse()?);
//! batch.push_with_id("list", http::Request::get("/mail/v1/messages/unread").body(Bytes::new())?)?;
//! batch.push_with_id(
//!     "new",
//!     http::Request::post("/mail/v1/messages")
//!         .header("content-type", "application/json")
//!         .body(Bytes::from_static(br#"{"title":"hi"}"#))?,
//! )?;
//! for part in client.send(batch).await? {
//!     println!("{} {:?}: {}", part.index, part.content_id, part.status);
//! }
//!
//! // Or single calls, batched behind the scenes.
//! let batcher = Batcher::builder(client).max_size(100).max_wait(Duration::from_millis(5)).build();
//! let response = batcher.call(http::Request::get("/mail/v1/messages/1").body(Bytes::new())?).await?;
//! println!("{}", response.status());
//! batcher.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod batch;
mod batch_client;
mod batcher;
mod connect;
mod error;
mod json;

pub use batch::{BatchBuilder, Format};
pub use batch_client::{BatchClient, BatchClientBuilder, PartResponse, ReplyStream};
pub use batcher::{Batcher, BatcherBuilder, BatcherStats};
pub use error::{CallError, ClientError, MAX_ERROR_BODY};

use batchgate_wire::{PartSplitter, boundary_from_content_type};

/// Splits a whole batch reply, already read, into its parts in the order they came (no correlation: see
/// [`BatchClient::send`] for that).
pub fn parse_reply(
    content_type: &str,
    body: &[u8],
) -> Result<Vec<batchgate_wire::ReplyPart>, ClientError> {
    let boundary =
        boundary_from_content_type(content_type).map_err(|e| ClientError::MalformedReply {
            offset: 0,
            reason: format!("the reply's Content-Type: {e}"),
        })?;
    let mut splitter = PartSplitter::new(&boundary, u64::MAX);
    splitter.push(body);
    let mut parts = Vec::new();
    let end = body.len() as u64;
    while let Some(raw) = splitter
        .next_part()
        .map_err(|e| ClientError::MalformedReply {
            offset: end,
            reason: e.to_string(),
        })?
    {
        let part = batchgate_wire::ReplyPart::parse(&raw, parts.len()).map_err(|e| {
            ClientError::MalformedReply {
                offset: splitter.part_offset(),
                reason: e.to_string(),
            }
        })?;
        parts.push(part);
    }
    splitter.finish().map_err(|e| ClientError::MalformedReply {
        offset: end,
        reason: e.to_string(),
    })?;
    Ok(parts)
}
