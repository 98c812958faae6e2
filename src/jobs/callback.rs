//! The completion callback: a job submitted with `batchgate-callback: URL` gets its final status document
//! POSTed there once it ends, signed with `jobs.callback_secret`, tried up to [`ATTEMPTS`] times with a
//! doubling pause. Only URLs whose `host:port` is in `jobs.callback_hosts` are accepted.
//!
//! The signature: `batchgate-signature: t=UNIX_SECONDS,v1=HEX`, where `HEX` is the HMAC-SHA256, under the
//! secret, of the text `UNIX_SECONDS.BODY`. A receiver recomputes it, compares in constant time, and refuses
//! a `t` too far from its clock.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sha2::Sha256;

use super::{JobError, Jobs, api};
use crate::config::JobsConfig;

/// The request header naming a job's callback URL.
pub(crate) const HEADER: &str = "batchgate-callback";
/// Tries of one callback; the pause before each doubles from [`FIRST_PAUSE`].
pub(crate) const ATTEMPTS: u32 = 5;
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// Connecting and the whole exchange, per try.
const TRY_LIMIT: Duration = Duration::from_secs(10);

/// Where a callback goes.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    uri: Uri,
    tls: bool,
    authority: String,
}

/// The callback a submission asks for, if any; an unusable one refuses the job.
pub(crate) fn requested(
    config: &JobsConfig,
    headers: &HeaderMap,
) -> Result<Option<String>, JobError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| JobError::Callback("the URL is not ASCII".to_owned()))?;
    target(config, text)?;
    Ok(Some(text.to_owned()))
}

/// Checks a callback URL against `jobs.callback_hosts`.
fn target(config: &JobsConfig, text: &str) -> Result<Target, JobError> {
    let uri: Uri = text
        .parse()
        .map_err(|_| JobError::Callback(format!("{text:?} is not a URL")))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(JobError::Callback(format!("{text:?} is not http or https"))),
    };
    let Some(authority) = uri.authority() else {
        return Err(JobError::Callback(format!("{text:?} names no host")));
    };
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let authority = format!("{}:{port}", authority.host());
    if !config.callback_hosts.contains(&authority) {
        return Err(JobError::Callback(format!(
            "{authority} is not in jobs.callback_hosts"
        )));
    }
    Ok(Target {
        uri,
        tls,
        authority,
    })
}

/// The `batchgate-signature` value for `body` at `time` (Unix seconds).
pub(crate) fn signature(secret: &[u8], time: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(time.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={time},v1={hex}")
}

/// Calls back every ended job not called back yet (each taken in the store, so only once across instances).
pub(crate) async fn deliver_due(jobs: &Arc<Jobs>) {
    loop {
        let (id, url) = match jobs.store.take_callback().await {
            Ok(Some(due)) => due,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("jobs: taking a callback failed: {e}");
                return;
            }
        };
        let jobs = jobs.clone();
        tokio::spawn(async move {
            if let Err(e) = deliver(&jobs, &id, &url).await {
                tracing::warn!(job = %id, "jobs: callback to {url} failed: {e}");
            }
        });
    }
}

async fn deliver(jobs: &Jobs, id: &str, url: &str) -> Result<(), JobError> {
    let target = target(&jobs.config, url)?;
    let job = jobs
        .store
        .job(id)
        .await?
        .ok_or_else(|| JobError::NotFound(id.to_owned()))?;
    let body = Bytes::from(api::status_json(jobs, &job).await?.to_string());
    let mut pause = FIRST_PAUSE;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signed = signature(jobs.config.callback_secret.as_bytes(), time, &body);
        match tokio::time::timeout(TRY_LIMIT, post(&target, id, &signed, body.clone())).await {
            Ok(Ok(status)) if status.is_success() => {
                tracing::info!(job = %id, attempt, "jobs: callback delivered");
                return Ok(());
            }
            Ok(Ok(status)) => last = format!("answered {status}"),
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("no answer within {TRY_LIMIT:?}"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    Err(JobError::Callback(format!(
        "{ATTEMPTS} tries, the last {last}"
    )))
}

/// One POST of the status document.
async fn post(
    target: &Target,
    id: &str,
    signed: &str,
    body: Bytes,
) -> Result<http::StatusCode, String> {
    let tls = if target.tls {
        let server_name = target
            .uri
            .host()
            .unwrap_or_default()
            .to_owned()
            .try_into()
            .map_err(|e| format!("bad TLS name: {e}"))?;
        Some(batchgate_transport::TlsTarget {
            config: batchgate_transport::client_config(&[], &[b"http/1.1"])?,
            server_name,
        })
    } else {
        None
    };
    let stream = batchgate_transport::connect(target.authority.as_str(), tls, TRY_LIMIT)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let path = target.uri.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::post(path)
        .header(HOST, target.uri.authority().map_or("", |a| a.as_str()))
        .header(CONTENT_TYPE, "application/json")
        .header("batchgate-job", id)
        .header("batchgate-signature", signed)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    // Read (and drop) the body so the exchange is complete.
    let _ = response.into_body().collect().await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_of_time_dot_body() {
        // Computed apart: HMAC-SHA256(key "0123456789abcdef", "1700000000.{}").
        assert_eq!(
            signature(b"0123456789abcdef", 1_700_000_000, b"{}"),
            "t=1700000000,v1=e4f8e2ecae2295b2ddb2f0b5584c8275e226c0ebe9b3b819e70156bb67122e3e"
        );
    }

    #[test]
    fn only_the_configured_hosts_are_called_back() {
        let config = JobsConfig {
            callback_hosts: vec!["hooks.example:443".to_owned(), "127.0.0.1:8000".to_owned()],
            ..JobsConfig::default()
        };
        assert!(target(&config, "https://hooks.example/done").is_ok());
        assert!(target(&config, "http://127.0.0.1:8000/x?y=1").is_ok());
        for bad in [
            "http://hooks.example/done",
            "https://evil.example/",
            "ftp://hooks.example:443/",
            "/relative",
            "https://127.0.0.1:8001/",
        ] {
            assert!(target(&config, bad).is_err(), "{bad}");
        }
    }
}
