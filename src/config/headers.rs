//! `[headers]`: which of the batch's headers its parts inherit.

use http::HeaderName;
use serde::Deserialize;

use super::ConfigError;
use super::check::invalid;

/// Which outer (batch) headers every part inherits. Hop-by-hop headers, `Content-*`, `Host`, `Expect`,
/// `Accept-Encoding` and the forwarding headers are never inherited, whatever these lists say.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeaderPolicy {
    /// If not empty, only these outer headers are inherited.
    pub inherit_only: Vec<String>,
    /// Outer headers never inherited.
    pub inherit_deny: Vec<String>,
}

impl HeaderPolicy {
    /// Checks this section's values; the error names the key at fault.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, names) in [
            ("headers.inherit_only", &self.inherit_only),
            ("headers.inherit_deny", &self.inherit_deny),
        ] {
            for (i, name) in names.iter().enumerate() {
                if HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(invalid(format!(
                        "{key}[{i}] {name:?} is not a valid header name"
                    )));
                }
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
    fn inheritance_lists_refuse_bad_header_names() {
        refused(
            "[headers]\ninherit_only = [\"authorization\", \"bad header\"]",
            "headers.inherit_only[1]",
            &["bad header"],
        );
        refused(
            "[headers]\ninherit_deny = [\"\"]",
            "headers.inherit_deny[0]",
            &[],
        );
        refused(
            "[headers]\ninherit_deny = [\"x-a:\"]",
            "headers.inherit_deny[0]",
            &["x-a:"],
        );
        Config::from_toml("[headers]\ninherit_only = [\"Authorization\", \"X-Trace\"]").unwrap();
    }
}
