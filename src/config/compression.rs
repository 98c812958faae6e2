//! `[compression]`: how replies are compressed (the compressor itself is [`crate::compress`]).

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::check::{check_duration, check_size, invalid};
use super::units::{de_bytes, de_duration};

/// Longest `compression.flush_delay`: it holds finished parts back, so it must stay short.
const MAX_FLUSH_DELAY: Duration = Duration::from_secs(1);
/// Longest `compression.first_flight_hold`: it holds a reply's first bytes back.
const MAX_FIRST_FLIGHT_HOLD: Duration = Duration::from_secs(1);
/// Largest `compression.first_flight_max_input`: it bounds the CPU one reply may cost twice over.
const MAX_FIRST_FLIGHT_INPUT: u64 = 16 << 20;
/// Highest compression settings: above these, a level costs many times the CPU for a few percent fewer bytes,
/// and a client could make the gateway spend a core per reply. A reply compressed again to fit TCP's first
/// flight uses them.
pub(crate) const MAX_GZIP_LEVEL: u32 = 9;
pub(crate) const MAX_ZSTD_LEVEL: i32 = 15;
pub(crate) const MAX_BROTLI_QUALITY: u32 = 9;

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
    /// Longest a compressed reply's first write waits to gather what TCP's first flight can carry, and never
    /// more than half the client's round trip (so, on a LAN, no wait at all). 0 turns the first flight off.
    #[serde(deserialize_with = "de_duration")]
    pub first_flight_hold: Duration,
    /// Largest reply (uncompressed) that is compressed again at the coding's highest level when that makes it
    /// fit TCP's first flight: it bounds the CPU a round trip saved may cost.
    #[serde(deserialize_with = "de_bytes")]
    pub first_flight_max_input: u64,
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
            first_flight_hold: Duration::from_millis(20),
            first_flight_max_input: 128 << 10,
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
        check_duration(
            "compression.first_flight_hold",
            c.first_flight_hold,
            Duration::ZERO,
            MAX_FIRST_FLIGHT_HOLD,
        )?;
        check_size(
            "compression.first_flight_max_input",
            c.first_flight_max_input,
            MAX_FIRST_FLIGHT_INPUT,
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
        refused(
            "[compression]\nfirst_flight_hold = \"2s\"",
            "compression.first_flight_hold",
            &[],
        );
        refused(
            "[compression]\nfirst_flight_max_input = \"17MiB\"",
            "compression.first_flight_max_input",
            &["16MiB"],
        );
        refused(
            "[compression]\nfirst_flight_max_input = 0",
            "compression.first_flight_max_input",
            &[],
        );
        Config::from_toml(
            "[compression]\nfirst_flight_hold = \"0s\"\nfirst_flight_max_input = \"16MiB\"",
        )
        .unwrap();
        Config::from_toml("[compression]\nenabled = false\norder = []").unwrap();
        refused(
            "[compression]\norder = [\"gzip\", \"br\", \"gzip\"]",
            "compression.order",
            &["gzip", "twice"],
        );
    }
}
