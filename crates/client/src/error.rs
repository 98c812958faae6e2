//! What can go wrong, said so that the reader knows what to change.

use std::sync::Arc;
use std::time::Duration;

use batchgate_transport::ConnectError;
use bytes::Bytes;
use http::StatusCode;

/// Why building, sending or reading a batch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The batch cannot be built or sent as it is (no parts, an id with control characters).
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// Two parts of one batch have the same `Content-ID`: the reply could not tell them apart.
    #[error(
        "Content-ID {id:?} is already the id of part {first} of this batch; each part needs its own id"
    )]
    DuplicateId {
        /// The id given twice.
        id: String,
        /// The position (from 0) of the part that has it already.
        first: usize,
    },
    /// The client's own settings are unusable (a URL that is not http or https, a bad header or CA).
    #[error("invalid client setting: {0}")]
    Config(String),
    /// No TCP connection to the batch URL's host.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The batch URL.
        url: String,
        /// The cause as the OS words it ("Connection refused (os error 111)").
        reason: String,
    },
    /// The TLS handshake failed, most often over the server's certificate.
    #[error(
        "TLS handshake with {url} failed: {reason} (if the certificate is signed by a private CA, \
         trust it with BatchClientBuilder::add_root_certificate)"
    )]
    Tls {
        /// The batch URL.
        url: String,
        /// The cause as rustls words it ("invalid peer certificate: UnknownIssuer").
        reason: String,
    },
    /// A time limit ran out: `setting` names the one (`connect_timeout` or `timeout`).
    #[error("{url}: {what} took longer than {limit:?} ({setting})")]
    Timeout {
        /// The batch URL.
        url: String,
        /// What was under way ("connecting (TCP and TLS)", or what the batch was waiting for).
        what: String,
        /// The limit that ran out.
        limit: Duration,
        /// The builder setting that sets `limit`.
        setting: &'static str,
    },
    /// The batch endpoint refused the batch as a whole: any status but 200. `code` and `message` come from a
    /// JSON error body (`{"error":{"code":413,"message":"..."}}`, what batchgate and Google send); without
    /// one, `message` is the start of the body.
    #[error("{url} refused the batch with {status}: {message}")]
    Status {
        /// The batch URL.
        url: String,
        /// The HTTP status of the answer.
        status: StatusCode,
        /// `error.code` of the JSON body, if it had one.
        code: Option<u16>,
        /// `error.message` of the JSON body, else the body's first 500 characters, or "(no body)".
        message: String,
        /// The body as received, at most [`MAX_ERROR_BODY`] bytes.
        body: Bytes,
    },
    /// Sending the batch or reading the response head failed after the connection was made.
    #[error("sending the batch to {url} failed: {reason}")]
    Transport {
        /// The batch URL.
        url: String,
        /// The failure and its causes, `a: b: c`.
        reason: String,
    },
    /// The reply is not a batch reply this client can read; `offset` is where in the reply body (for a part:
    /// where the part begins).
    #[error("the batch reply is malformed at byte {offset} of its body: {reason}")]
    MalformedReply {
        /// Bytes of the reply body before the fault.
        offset: u64,
        /// What is wrong with the reply.
        reason: String,
    },
    /// The reply ended, or its connection failed, before the closing delimiter: the `parts` before it were
    /// delivered.
    #[error(
        "the batch reply broke off after {parts} complete parts, at byte {offset} of its body: {reason}"
    )]
    BrokenOff {
        /// Parts read whole before the break.
        parts: usize,
        /// Bytes of the reply body received before the break.
        offset: u64,
        /// Why the reply stopped (a read failure, or the missing close delimiter).
        reason: String,
    },
}

/// Why a [`Batcher`](super::Batcher) call got no response of its own. A part that failed (a 404, a
/// gateway's 502 or 504 part) is not an error here: it is the caller's `Response`, with that status and the
/// JSON error body, as a direct call would have been.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The batch carrying this call failed as a whole; every call in it still waiting gets this.
    #[error("the batch carrying this call failed: {0}")]
    Batch(Arc<ClientError>),
    /// The batcher was shut down, or all its handles dropped, before the call could be queued.
    #[error("the batcher is shut down: the call was not sent")]
    Shutdown,
    /// The batch ended without an answer for this call (its task was cancelled or panicked).
    #[error("the batch carrying this call ended without an answer for it")]
    NoAnswer,
}

/// The messages of an error and of its sources, `a: b: c`, without repeats.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

impl ClientError {
    /// The error for a connection to `url` that could not be made: [`Connect`](Self::Connect),
    /// [`Tls`](Self::Tls), or a [`Timeout`](Self::Timeout) of `connect_timeout`.
    pub fn connect_failed(url: String, failure: &ConnectError) -> ClientError {
        match failure {
            ConnectError::Tcp(e) => ClientError::Connect {
                url,
                reason: e.to_string(),
            },
            ConnectError::Tls(e) => ClientError::Tls {
                url,
                reason: chain(e),
            },
            ConnectError::TcpTimeout(limit) | ConnectError::TlsTimeout(limit) => {
                ClientError::Timeout {
                    url,
                    what: "connecting (TCP and TLS)".to_owned(),
                    limit: *limit,
                    setting: "connect_timeout",
                }
            }
        }
    }

    /// The error for a batch to `url` whose `timeout` (if any: else zero) ran out while waiting for `what`
    /// ("the response head").
    pub fn timed_out(url: String, limit: Option<Duration>, what: &str) -> ClientError {
        ClientError::Timeout {
            url,
            what: format!("the batch, waiting for {what},"),
            limit: limit.unwrap_or_default(),
            setting: "timeout",
        }
    }

    /// The error for a batch refused with `status` and this (at most [`MAX_ERROR_BODY`]) body: the JSON
    /// error's code and message when the body has one (`{"error":{"code":..,"message":..}}`), else its start.
    pub fn refusal(url: String, status: StatusCode, body: Bytes) -> ClientError {
        let json = serde_json::from_slice::<serde_json::Value>(&body).ok();
        let error = json.as_ref().map(|v| &v["error"]);
        let code = error
            .and_then(|e| e["code"].as_u64())
            .and_then(|c| u16::try_from(c).ok());
        let message = match error.and_then(|e| e["message"].as_str()) {
            Some(message) => message.to_owned(),
            None if body.is_empty() => "(no body)".to_owned(),
            None => {
                let text = String::from_utf8_lossy(&body);
                let mut cut: String = text.chars().take(500).collect();
                if cut.len() < text.len() {
                    cut.push_str("...");
                }
                cut
            }
        };
        ClientError::Status {
            url,
            status,
            code,
            message,
            body,
        }
    }
}

/// The longest body of a refused batch that is read for its error, and kept in [`ClientError::Status`].
pub const MAX_ERROR_BODY: usize = 64 * 1024;
