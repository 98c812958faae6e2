//! `[tls]`: the gateway's own certificate.

use std::path::PathBuf;

use serde::Deserialize;

/// `[tls]`: the gateway's own certificate. Both files are read at startup and again on every reload.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}
