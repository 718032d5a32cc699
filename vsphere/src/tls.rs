//! Server identity: thumbprint pinning, CA verification, or (loudly) none.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::Error;

/// Most certificate files read from a CA directory.
pub const MAX_CA_FILES: usize = 1024;

/// How the vSphere server's certificate is checked.
///
/// Exactly one mode applies, in this order:
/// 1. `thumbprint`: the SHA-1 of the server's leaf certificate must equal it; the chain
///    and the host name are not checked (this is the identity VDDK uses too).
/// 2. `ca_dir`: the chain must lead to one of the PEM certificates in that directory and
///    the certificate must be valid for the host name.
/// 3. `insecure`: anything is accepted, with a loud warning naming the presented
///    thumbprint.
///
/// With none of them, [`crate::Client::login`] refuses to connect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsPolicy {
    /// `AA:BB:…` (20 bytes, colon-separated, any case) SHA-1 of the leaf certificate.
    pub thumbprint: Option<String>,
    /// A directory of PEM certificate files to trust.
    pub ca_dir: Option<PathBuf>,
    /// Accept any certificate (logged as a warning).
    pub insecure: bool,
}

/// The SHA-1 thumbprint of a DER certificate, as `AA:BB:…` in upper case.
pub fn thumbprint_of(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
    let mut s = String::with_capacity(59);
    for (i, b) in digest.as_ref().iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        let _ = write!(s, "{b:02X}");
    }
    s
}

/// Normalise a user-supplied thumbprint to `AA:BB:…` upper case. Accepts colons, spaces
/// or nothing between the bytes.
pub fn normalize_thumbprint(t: &str) -> Result<String, Error> {
    let hex: String = t
        .chars()
        .filter(|c| !matches!(c, ':' | ' ' | '-'))
        .collect();
    if hex.len() != 40 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::Config(format!(
            "thumbprint {t:?} is not a SHA-1 fingerprint (20 hex bytes, e.g. AA:BB:…)"
        )));
    }
    let up = hex.to_ascii_uppercase();
    let bytes: Vec<&str> = (0..20).map(|i| &up[2 * i..2 * i + 2]).collect();
    Ok(bytes.join(":"))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts a certificate by its pinned SHA-1 thumbprint (or anything when `expected` is
/// `None`, the insecure mode), and still checks the handshake signatures against the
/// presented certificate's key, so the peer must hold the private key.
#[derive(Debug)]
struct PinnedVerifier {
    expected: Option<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = thumbprint_of(end_entity.as_ref());
        match &self.expected {
            Some(expected) if *expected == presented => Ok(ServerCertVerified::assertion()),
            Some(expected) => Err(rustls::Error::General(format!(
                "thumbprint mismatch: server presented {presented} expected {expected}"
            ))),
            None => {
                tracing::warn!(
                    thumbprint = %presented,
                    "INSECURE: accepting the vSphere server certificate without any check \
                     (no thumbprint and no CA directory given); anyone on the path can \
                     impersonate the server"
                );
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn load_ca_dir(dir: &Path) -> Result<RootCertStore, Error> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::Config(format!("cannot read CA directory {}: {e}", dir.display())))?;
    let mut paths: Vec<PathBuf> = Vec::new();
    for e in entries {
        let e = e.map_err(|e| Error::Config(format!("CA directory {}: {e}", dir.display())))?;
        let p = e.path();
        // Kubernetes ConfigMap mounts hold `..data` symlinks; skip hidden entries.
        if e.file_name().to_string_lossy().starts_with('.') || !p.is_file() {
            continue;
        }
        paths.push(p);
        if paths.len() > MAX_CA_FILES {
            return Err(Error::Config(format!(
                "CA directory {} has more than {MAX_CA_FILES} files",
                dir.display()
            )));
        }
    }
    paths.sort();
    let mut roots = RootCertStore::empty();
    for p in &paths {
        let data = std::fs::read(p)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", p.display())))?;
        for cert in CertificateDer::pem_slice_iter(&data) {
            match cert {
                Ok(c) => {
                    if let Err(e) = roots.add(c) {
                        tracing::warn!(file = %p.display(), error = %e, "skipping unusable CA certificate");
                    }
                }
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "skipping unreadable PEM data");
                    break;
                }
            }
        }
    }
    if roots.is_empty() {
        return Err(Error::Config(format!(
            "CA directory {} holds no PEM certificate",
            dir.display()
        )));
    }
    Ok(roots)
}

/// Build the rustls client configuration for a policy (ring provider, TLS 1.2 and 1.3).
pub fn client_config(policy: &TlsPolicy) -> Result<Arc<ClientConfig>, Error> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls {
            message: e.to_string(),
        })?;
    let config = if let Some(t) = &policy.thumbprint {
        let expected = normalize_thumbprint(t)?;
        if policy.ca_dir.is_some() {
            tracing::debug!("thumbprint given: the CA directory is not used for the API");
        }
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                expected: Some(expected),
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth()
    } else if let Some(dir) = &policy.ca_dir {
        let roots = load_ca_dir(dir)?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| Error::Tls {
                message: format!("CA verifier: {e}"),
            })?;
        builder.with_webpki_verifier(verifier).with_no_client_auth()
    } else if policy.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                expected: None,
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth()
    } else {
        return Err(Error::Tls {
            message: "refusing to connect: no thumbprint to pin, no CA directory, and \
                      insecure mode not requested"
                .into(),
        });
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_normalise() {
        let t = "aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd";
        assert_eq!(
            normalize_thumbprint(t).unwrap(),
            "AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD"
        );
        assert_eq!(
            normalize_thumbprint("AABBCCDDEEFF00112233445566778899AABBCCDD").unwrap(),
            normalize_thumbprint(t).unwrap()
        );
        assert!(normalize_thumbprint("AA:BB").is_err());
        assert!(normalize_thumbprint(&"ZZ:".repeat(20)).is_err());
    }

    #[test]
    fn sha1_thumbprint_of_known_input() {
        // SHA-1("abc") = a9993e36 4706816a ba3e2571 7850c26c 9cd0d89d
        assert_eq!(
            thumbprint_of(b"abc"),
            "A9:99:3E:36:47:06:81:6A:BA:3E:25:71:78:50:C2:6C:9C:D0:D8:9D"
        );
    }

    #[test]
    fn no_policy_is_refused() {
        let err = client_config(&TlsPolicy::default()).unwrap_err();
        assert!(matches!(err, Error::Tls { .. }), "{err}");
    }
}
