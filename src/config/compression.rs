//! `[compression]`: how replies are compressed (the compressor itself is [`crate::compress`]).

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::check::{check_duration, invalid};
use super::units::de_duration;

/// Longest `compression.flush_delay`: it holds finished parts back, so it must stay short.
const MAX_FLUSH_DELAY: Duration = Duration::from_secs(1);
/// Highest compression settings: above these, a level costs many times the CPU for a few percent fewer bytes,
/// and a client could make the gateway spend a core per reply.
const MAX_GZIP_LEVEL: u32 = 9;
const MAX_ZSTD_LEVEL: i32 = 15;
const MAX_BROTLI_QUALITY: u32 = 9;

/// A content coding the gateway can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Coding {
    /// `zstd`: the best ratio for its CPU.
    Zstd,
    /// `br` (brotli).
    Br,
    /// `gzip`, which every client reads.
    Gzip,
}

impl Coding {
    /// The coding's token, as in `Accept-Encoding`, `Content-Encoding` and `compression.order`.
    pub fn as_str(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }
}

/// `[compression]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// Compress the reply when the client's Accept-Encoding allows (default true).
    pub enabled: bool,
    /// Preference among codings the client accepts with equal q-value.
    pub order: Vec<Coding>,
    /// 0-9, default 6.
    pub gzip_level: u32,
    /// 1-15, default 6: higher levels cost many times the CPU for a few percent fewer bytes.
    pub zstd_level: i32,
    /// 0-9, default 6: brotli 11 is about 100 times slower than 6.
    pub brotli_quality: u32,
    /// How long the compressed stream waits for the next part before flushing what it has.
    #[serde(deserialize_with = "de_duration")]
    pub flush_delay: Duration,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            enabled: true,
            order: vec![Coding::Zstd, Coding::Br, Coding::Gzip],
            gzip_level: 6,
            zstd_level: 6,
            brotli_quality: 6,
            flush_delay: Duration::from_millis(2),
        }
    }
}

impl CompressionConfig {
    /// Checks this section's values; the error names the key at fault.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let c = self;
        let slow = "higher levels cost many times the CPU per reply for a few percent fewer bytes";
        if c.gzip_level > MAX_GZIP_LEVEL {
            return Err(invalid(format!(
                "compression.gzip_level is {}; it must be 0 to {MAX_GZIP_LEVEL}",
                c.gzip_level
            )));
        }
        if !(1..=MAX_ZSTD_LEVEL).contains(&c.zstd_level) {
            return Err(invalid(format!(
                "compression.zstd_level is {}; it must be 1 to {MAX_ZSTD_LEVEL} ({slow})",
                c.zstd_level
            )));
        }
        if c.brotli_quality > MAX_BROTLI_QUALITY {
            return Err(invalid(format!(
                "compression.brotli_quality is {}; it must be 0 to {MAX_BROTLI_QUALITY} ({slow})",
                c.brotli_quality
            )));
        }
        check_duration(
            "compression.flush_delay",
            c.flush_delay,
            Duration::ZERO,
            MAX_FLUSH_DELAY,
        )?;
        if c.enabled && c.order.is_empty() {
            return Err(invalid(
                "compression.order is empty while compression.enabled = true: list the codings to offer, \
                 or set enabled = false",
            ));
        }
        for (i, coding) in c.order.iter().enumerate() {
            if c.order[..i].contains(coding) {
                return Err(invalid(format!(
                    "compression.order names {:?} twice",
                    coding.as_str()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::tests::refused;

    #[test]
    fn compression_levels_are_capped() {
        refused(
            "[compression]\ngzip_level = 10",
            "compression.gzip_level",
            &[],
        );
        refused(
            "[compression]\nzstd_level = 16",
            "compression.zstd_level",
            &["CPU"],
        );
        refused(
            "[compression]\nzstd_level = 0",
            "compression.zstd_level",
            &[],
        );
        refused(
            "[compression]\nbrotli_quality = 10",
            "compression.brotli_quality",
            &["CPU"],
        );
        Config::from_toml("[compression]\ngzip_level = 9\nzstd_level = 15\nbrotli_quality = 9")
            .unwrap();
        Config::from_toml("[compression]\ngzip_level = 0\nzstd_level = 1\nbrotli_quality = 0")
            .unwrap();
        refused("[compression]\norder = []", "compression.order", &["empty"]);
        Config::from_toml("[compression]\nenabled = false\norder = []").unwrap();
        refused(
            "[compression]\norder = [\"gzip\", \"br\", \"gzip\"]",
            "compression.order",
            &["gzip", "twice"],
        );
    }
}
