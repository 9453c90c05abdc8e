//! TLS towards the backends: PostgreSQL (`sslmode=require|verify-ca|verify-full` in the URL),
//! Redis (`rediss://`) and NATS (`tls://`), all with rustls. The system's trusted roots are
//! used by default; a private CA (what managed services and internal PKIs hand out) is added
//! once per process with [`use_private_ca`] (`--tls-ca-file`) and applies to all three.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static PRIVATE_CA: OnceLock<(PathBuf, Vec<u8>)> = OnceLock::new();

/// Trusts the CA certificate(s) in the PEM file `path` for every backend connection this
/// process opens from now on. Call once, at start, before connecting.
pub fn use_private_ca(path: &Path) -> Result<(), String> {
    let pem = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    let _ = PRIVATE_CA.set((path.to_path_buf(), pem));
    Ok(())
}

/// Installs rustls' process-wide crypto provider (ring), which the Redis and PostgreSQL
/// clients build their TLS configurations on. Idempotent.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The private CA's PEM, for clients other than the backends' (the JWKS URL).
pub fn private_ca_pem() -> Option<Vec<u8>> {
    PRIVATE_CA.get().map(|(_, pem)| pem.clone())
}

pub(crate) fn private_ca() -> Option<&'static (PathBuf, Vec<u8>)> {
    PRIVATE_CA.get()
}

/// A Redis client for `url`: over TLS for `rediss://`, trusting the private CA when one is set.
pub(crate) fn redis_client(url: &str) -> redis::RedisResult<redis::Client> {
    install_crypto();
    match private_ca() {
        Some((_, pem)) if url.starts_with("rediss://") => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            },
        ),
        _ => redis::Client::open(url),
    }
}

/// A PostgreSQL URL with the private CA as its `sslrootcert`, unless it names one itself.
pub(crate) fn postgres_url(url: &str) -> String {
    match private_ca() {
        Some((path, _)) if !url.contains("sslrootcert=") => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}sslrootcert={}", path.display())
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_a_certificate_is_refused() {
        let path = std::env::temp_dir().join(format!("gs-not-a-ca-{}", std::process::id()));
        std::fs::write(&path, "hello").unwrap();
        assert!(use_private_ca(&path).unwrap_err().contains("no PEM"));
        assert!(use_private_ca(Path::new("/nonexistent/ca.pem"))
            .unwrap_err()
            .contains("reading"));
        let _ = std::fs::remove_file(path);
    }
}
