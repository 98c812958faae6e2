//! TLS material: PEM certificates and keys read from files, the client configuration for https upstreams,
//! and the server configuration of the gateway's own HTTPS listener (`[tls]`). One crypto provider, `ring`,
//! installed explicitly so that no other can be picked at run time.

use std::path::Path;
use std::sync::Arc;

use rustls::client::ClientConfig;
use rustls::server::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ConfigError, HttpVersion, TlsConfig};
use batchgate_transport::system_roots;

pub(crate) use batchgate_transport::provider;

/// Reads a PEM certificate chain; `key` names the config key in errors.
pub(crate) fn load_certs(
    key: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bad = |why: String| ConfigError::Invalid(format!("{key} {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no CERTIFICATE block".to_owned()));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn load_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let bad = |why: String| ConfigError::Invalid(format!("{key} {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| bad(format!("holds no usable private key: {e}")))
}

/// What a route's https upstreams are trusted with and asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientTls<'a> {
    /// For error messages: `routes[2]`.
    pub key: &'a str,
    pub ca_file: Option<&'a Path>,
    pub client_cert: Option<(&'a Path, &'a Path)>,
    /// What ALPN offers: h2, http/1.1, or both with the upstream choosing.
    pub http_version: HttpVersion,
}

impl ClientTls<'_> {
    /// The client configuration: the system roots plus `ca_file`, ALPN, and the client certificate.
    pub(crate) fn config(&self) -> Result<Arc<ClientConfig>, ConfigError> {
        let mut roots = system_roots().clone();
        if let Some(path) = self.ca_file {
            let key = format!("{}.ca_file", self.key);
            for cert in load_certs(&key, path)? {
                roots
                    .add(cert)
                    .map_err(|e| ConfigError::Invalid(format!("{key} {}: {e}", path.display())))?;
            }
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::Invalid(format!("{}: TLS: {e}", self.key)))?
            .with_root_certificates(roots);
        let mut config = match self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    load_certs(&format!("{}.client_cert", self.key), cert)?,
                    load_key(&format!("{}.client_key", self.key), key)?,
                )
                .map_err(|e| {
                    ConfigError::Invalid(format!("{}.client_cert and client_key: {e}", self.key))
                })?,
        };
        config.alpn_protocols = match self.http_version {
            HttpVersion::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            HttpVersion::Http1 => vec![b"http/1.1".to_vec()],
            HttpVersion::Http2 => vec![b"h2".to_vec()],
        };
        Ok(Arc::new(config))
    }
}

/// The ALPN protocols the HTTPS listener offers, preferred first: the connection serves whichever the client
/// picks (hyper-util's auto builder serves both).
pub(crate) const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The HTTPS listener's configuration: `[tls] cert` and `key`, read now (errors name `tls.cert` or
/// `tls.key`), ALPN `h2` and `http/1.1`, no client certificates.
pub(crate) fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, ConfigError> {
    let certs = load_certs("tls.cert", &tls.cert)?;
    let key = load_key("tls.key", &tls.key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Invalid(format!("tls: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            ConfigError::Invalid(format!(
                "tls.cert {} and tls.key {}: {e}",
                tls.cert.display(),
                tls.key.display()
            ))
        })?;
    config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
