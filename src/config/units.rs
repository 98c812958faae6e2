//! Durations (`250ms`, `10s`) and sizes (`8MiB`) as config files write them.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses `250ms`, `10s`, `2m`, `1h` (or a bare number of seconds). Never panics: a value too large for a
/// `Duration` is an error (ranges are checked by [`Config::validate`](super::Config::validate)).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like \"250ms\" or \"10s\""))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?} (use ms, s, m, h or d)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("duration {text:?} is out of range"))
}

/// Parses `8MiB`, `64KiB`, `1GiB`, `500kB`, `2MB` (or a bare number of bytes).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like \"8MiB\" or \"64KiB\""))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?} (use B, KiB, MiB, GiB)"
            ));
        }
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A TOML value that is either a string with a unit or a bare number.
#[derive(Deserialize)]
#[serde(untagged)]
enum TextOrNumber {
    Text(String),
    Integer(i64),
    Float(f64),
}

pub(super) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let duration = match TextOrNumber::deserialize(d)? {
        TextOrNumber::Text(s) => parse_duration(&s),
        TextOrNumber::Integer(n) => u64::try_from(n)
            .map(Duration::from_secs)
            .map_err(|_| format!("duration {n} must not be negative")),
        TextOrNumber::Float(x) => {
            Duration::try_from_secs_f64(x).map_err(|_| format!("duration {x} is out of range"))
        }
    };
    duration.map_err(serde::de::Error::custom)
}

pub(super) fn de_opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

pub(super) fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let bytes = match TextOrNumber::deserialize(d)? {
        TextOrNumber::Text(s) => parse_bytes(&s),
        TextOrNumber::Integer(n) => {
            u64::try_from(n).map_err(|_| format!("size {n} must not be negative"))
        }
        TextOrNumber::Float(x) => Err(format!("size {x} must be a whole number of bytes")),
    };
    bytes.map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_bytes("64KiB").unwrap(), 65536);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("8 parsecs").unwrap_err().contains("parsecs"));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn no_duration_text_panics_and_out_of_range_ones_name_their_key() {
        let nasty = [
            "1e30s",
            "99999999999999999999h",
            "18446744073709551616s",
            "1.8446744073709552e19s",
            "5124095576030431h",
            "307445734561825861m",
            &"9".repeat(400),
            &format!("{}ms", "9".repeat(400)),
            "-1s",
            "NaN",
            "nans",
            "inf",
            "infs",
            "-0s",
            ".",
            ".s",
            "1..2s",
            "",
            " ",
            "ms",
            "0.0000000001ms",
            "1e-30s",
            "\u{0}",
            "١s",
        ];
        for text in nasty {
            // Ok or Err, never a panic.
            let _ = parse_duration(text);
            for key in ["part_timeout", "idle_timeout", "shutdown_grace"] {
                let toml = format!("[limits]\n{key} = {:?}", text);
                if let Err(e) = Config::from_toml(&toml) {
                    assert!(e.to_string().contains(key), "{toml:?}: {e}");
                }
            }
        }
        for number in [
            "-1",
            "1e300",
            "-0.5",
            "1.7976931348623157e308",
            "nan",
            "inf",
        ] {
            let toml = format!("[limits]\npart_timeout = {number}");
            if let Err(e) = Config::from_toml(&toml) {
                assert!(e.to_string().contains("part_timeout"), "{toml:?}: {e}");
            }
        }
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration(&"9".repeat(400)).is_err());
    }
}
