//! `[jobs]`: asynchronous batch jobs, kept in a store (SQLite or Postgres) and run by this instance's workers.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::check::{check_count, check_duration, check_size, invalid};
use super::units::{de_bytes, de_duration};

/// Longest `jobs.retention`: a year.
const MAX_RETENTION: Duration = Duration::from_secs(365 * 86_400);

/// `[jobs]`: batch jobs that outlive their connection (`POST /jobs`, `docs/jobs.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// `sqlite://FILE` (a relative file is taken from the config file's folder) or `postgres://...`, for
    /// several instances sharing the work.
    pub store: String,
    /// Parts per partition: the unit a worker claims, leases and reports on.
    pub partition_size: usize,
    /// Partitions this instance runs at once.
    pub workers: usize,
    /// How long a job's answers are kept after it ends; then its URLs answer 410.
    #[serde(deserialize_with = "de_duration")]
    pub retention: Duration,
    /// Parts per job (inclusive).
    pub max_parts: usize,
    /// A job's body, streamed into the store as it arrives.
    #[serde(deserialize_with = "de_bytes")]
    pub max_job_bytes: u64,
    /// Jobs not yet ended in the store; a submission past it is refused with 503.
    pub max_jobs: usize,
    /// How long a claimed partition stays its worker's without a heartbeat: after an instance dies, its
    /// partitions are taken over once this has passed. Heartbeats come three times per lease.
    #[serde(deserialize_with = "de_duration")]
    pub lease: Duration,
    /// The `host:port`s a job's `batchgate-callback` URL may name; none: callbacks are refused. The gateway
    /// POSTs there, so only hosts meant to be told belong here.
    pub callback_hosts: Vec<String>,
    /// The HMAC-SHA256 key of the callback's `batchgate-signature`; at least 16 bytes with `callback_hosts`.
    pub callback_secret: String,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            store: "sqlite://batchgate-jobs.db".to_owned(),
            partition_size: 100,
            workers: 4,
            retention: Duration::from_secs(7 * 86_400),
            max_parts: 100_000,
            max_job_bytes: 256 << 20,
            max_jobs: 1000,
            lease: Duration::from_secs(30),
            callback_hosts: Vec::new(),
            callback_secret: String::new(),
        }
    }
}

/// Where the jobs are kept, as `jobs.store` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A SQLite file, created when missing.
    Sqlite(std::path::PathBuf),
    /// A Postgres database (the URL as written).
    Postgres(String),
}

impl JobsConfig {
    /// The store `jobs.store` names.
    pub fn store_url(&self) -> Result<StoreUrl, ConfigError> {
        if let Some(file) = self.store.strip_prefix("sqlite://") {
            let file = file.split('?').next().unwrap_or_default();
            if file.is_empty() {
                return Err(invalid(format!(
                    "jobs.store {:?} names no file: write \"sqlite://batchgate-jobs.db\"",
                    self.store
                )));
            }
            return Ok(StoreUrl::Sqlite(file.into()));
        }
        if self.store.starts_with("postgres://") || self.store.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(self.store.clone()));
        }
        Err(invalid(format!(
            "jobs.store {:?} is neither \"sqlite://FILE\" nor \"postgres://USER:PASS@HOST/DB\"",
            self.store
        )))
    }

    /// Joins a relative SQLite file to `dir`, the config file's folder.
    pub(super) fn resolve_paths(&mut self, dir: &Path) {
        if let Ok(StoreUrl::Sqlite(file)) = self.store_url()
            && file.is_relative()
        {
            self.store = format!("sqlite://{}", dir.join(file).display());
        }
    }

    /// Checks this section's values; the error names the key at fault.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.store_url()?;
        check_count("jobs.partition_size", self.partition_size, 1, 10_000)?;
        check_count("jobs.workers", self.workers, 1, 1024)?;
        check_duration(
            "jobs.retention",
            self.retention,
            Duration::from_secs(1),
            MAX_RETENTION,
        )?;
        check_count("jobs.max_parts", self.max_parts, 1, 10_000_000)?;
        check_size("jobs.max_job_bytes", self.max_job_bytes, 64 << 30)?;
        check_count("jobs.max_jobs", self.max_jobs, 1, 1_000_000)?;
        check_duration(
            "jobs.lease",
            self.lease,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )?;
        for (i, host) in self.callback_hosts.iter().enumerate() {
            let authority: Result<http::uri::Authority, _> = host.parse();
            if !authority.is_ok_and(|a| a.port_u16().is_some() && a.as_str() == host) {
                return Err(invalid(format!(
                    "jobs.callback_hosts[{i}] = {host:?} is not a \"host:port\""
                )));
            }
        }
        if !self.callback_hosts.is_empty() && self.callback_secret.len() < 16 {
            return Err(invalid(
                "jobs.callback_secret must be at least 16 bytes when jobs.callback_hosts names hosts: \
                 receivers check the signature with it",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::refused;

    #[test]
    fn jobs_keys_are_range_checked_by_name() {
        let c = Config::from_toml("[jobs]\nretention = \"1s\"\nmax_job_bytes = \"1MiB\"").unwrap();
        let jobs = c.jobs.unwrap();
        assert_eq!(jobs.retention, Duration::from_secs(1));
        assert_eq!(jobs.max_job_bytes, 1 << 20);
        for (key, value) in [
            ("partition_size", "0"),
            ("workers", "0"),
            ("retention", "\"0s\""),
            ("retention", "\"366d\""),
            ("max_parts", "0"),
            ("max_job_bytes", "0"),
            ("max_jobs", "0"),
            ("lease", "\"2h\""),
            ("store", "\"mysql://x\""),
            ("store", "\"sqlite://\""),
            ("callback_hosts", "[\"hooks.example\"]"),
        ] {
            refused(
                &format!("[jobs]\n{key} = {value}"),
                &format!("jobs.{key}"),
                &[],
            );
        }
    }

    #[test]
    fn callbacks_need_a_secret() {
        refused(
            "[jobs]\ncallback_hosts = [\"hooks.example:443\"]\ncallback_secret = \"short\"",
            "jobs.callback_secret",
            &["16 bytes"],
        );
        Config::from_toml(
            "[jobs]\ncallback_hosts = [\"hooks.example:443\"]\ncallback_secret = \"0123456789abcdef\"",
        )
        .unwrap();
    }

    #[test]
    fn a_relative_sqlite_file_is_taken_from_the_config_files_folder() {
        let mut jobs = JobsConfig::default();
        jobs.resolve_paths(Path::new("/etc/batchgate"));
        assert_eq!(
            jobs.store_url().unwrap(),
            StoreUrl::Sqlite("/etc/batchgate/batchgate-jobs.db".into())
        );
        let mut pg = JobsConfig {
            store: "postgres://u:p@h/db".to_owned(),
            ..JobsConfig::default()
        };
        pg.resolve_paths(Path::new("/etc/batchgate"));
        assert_eq!(pg.store, "postgres://u:p@h/db");
    }
}
