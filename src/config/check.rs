//! The range and shape checks every section's validation uses; each error names the key at fault.

use std::time::Duration;

use super::ConfigError;

/// Longest any duration may be: one day. Far below what `Instant + duration` could overflow on.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(86_400);
/// Shortest timeout: a zero timeout would expire before anything could happen.
pub(super) const MIN_TIMEOUT: Duration = Duration::from_millis(1);
/// Most parts per batch, and most parts of one batch started but not yet written (`window`).
pub(super) const MAX_PARTS: usize = 10_000;
/// Most permits of the gateway-wide semaphores (sub-requests, batches, connections).
pub(super) const MAX_PERMITS: usize = 1_000_000;

pub(super) fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

pub(super) fn check_count(
    key: &str,
    value: usize,
    min: usize,
    max: usize,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{key} is {value}; it must be {min} to {max}"
        )))
    }
}

pub(super) fn check_size(key: &str, value: u64, max: u64) -> Result<(), ConfigError> {
    if (1..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{key} is {value} bytes; it must be 1 to {max} bytes ({})",
            show_size(max)
        )))
    }
}

fn show_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b => format!("{b}B"),
    }
}

pub(super) fn check_duration(
    key: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{key} is {value:?}; it must be {min:?} to {max:?}"
        )))
    }
}

/// Checks a path the gateway compares normalised request paths with (`batch_path`, a route's `prefix`): one
/// that could never equal a normalised path, or means something else once decoded, is refused.
pub(super) fn check_path(key: &str, path: &str) -> Result<(), ConfigError> {
    let refuse = |why: &str| Err(invalid(format!("{key} {path:?} {why}")));
    if !path.starts_with('/') {
        return refuse("must start with '/'");
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return refuse("must be printable ASCII without white space");
    }
    if let Some(c) = path.chars().find(|c| matches!(c, '?' | '#' | '%' | '\\')) {
        return refuse(&format!(
            "must not contain {c:?}: request paths are compared after normalising, so it would never match \
             what it seems to"
        ));
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        if matches!(*segment, "." | "..") {
            return refuse("must not have '.' or '..' segments");
        }
        if segment.is_empty() && i + 1 < segments.len() {
            return refuse("must not contain '//': request paths are normalised to single slashes");
        }
    }
    Ok(())
}
