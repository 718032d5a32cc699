//! Server identity: thumbprint pinning, CA verification, or (loudly) none; the trust for
//! an `https://` proxy; and a plain explanation when the server's certificate key is one
//! the TLS stack cannot use.
//!
//! The ring provider verifies RSA keys of 2048 to 8192 bits, ECDSA on P-256 and P-384,
//! and Ed25519. An older ESXi host with a 1024-bit RSA certificate fails the handshake
//! signature check; rustls reports that as `BadSignature`, which reads like tampering.
//! [`key_problem`] reads the key type and size from the certificate so the error says
//! "RSA 1024-bit key" instead.

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
/// Largest certificate whose key [`describe_key`] reads.
pub const MAX_CERT_BYTES: usize = 64 * 1024;

/// What the TLS stack supports, for messages.
const SUPPORTED_KEYS: &str = "RSA 2048 to 8192 bits, ECDSA P-256 or P-384, or Ed25519";

/// The public key of a certificate, as far as messages need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA with this many modulus bits.
    Rsa { bits: usize },
    /// ECDSA on a named curve (`P-256`, `P-384`, `P-521`, `secp256k1`, or the OID).
    Ec { curve: String },
    /// Ed25519.
    Ed25519,
    /// Ed448.
    Ed448,
    /// DSA with this many bits in p, when known.
    Dsa { bits: Option<usize> },
    /// Any other algorithm, by OID.
    Other { oid: String },
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyKind::Rsa { bits } => write!(f, "RSA {bits}-bit"),
            KeyKind::Ec { curve } => write!(f, "ECDSA {curve}"),
            KeyKind::Ed25519 => f.write_str("Ed25519"),
            KeyKind::Ed448 => f.write_str("Ed448"),
            KeyKind::Dsa { bits: Some(b) } => write!(f, "DSA {b}-bit"),
            KeyKind::Dsa { bits: None } => f.write_str("DSA"),
            KeyKind::Other { oid } => write!(f, "algorithm {oid}"),
        }
    }
}

impl KeyKind {
    /// Whether the ring provider can verify signatures made with this key.
    pub fn supported(&self) -> bool {
        match self {
            KeyKind::Rsa { bits } => (2048..=8192).contains(bits),
            KeyKind::Ec { curve } => curve == "P-256" || curve == "P-384",
            KeyKind::Ed25519 => true,
            _ => false,
        }
    }
}

/// One DER element: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

fn oid_text(oid: &[u8]) -> String {
    let mut parts: Vec<u64> = Vec::new();
    let mut v: u64 = 0;
    for &b in oid.iter().take(64) {
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if parts.is_empty() {
                let first = (v / 40).min(2);
                parts.push(first);
                parts.push(v - first * 40);
            } else {
                parts.push(v);
            }
            v = 0;
        }
    }
    parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

fn integer_bits(int: &[u8]) -> usize {
    let int = match int.iter().position(|b| *b != 0) {
        Some(i) => &int[i..],
        None => return 0,
    };
    int.len() * 8 - int[0].leading_zeros() as usize
}

/// The key type and size in a DER certificate, or `None` when it cannot be read.
pub fn describe_key(cert: &[u8]) -> Option<KeyKind> {
    const SEQ: u8 = 0x30;
    if cert.len() > MAX_CERT_BYTES {
        return None;
    }
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    // serial, signature, issuer, validity, subject, subjectPublicKeyInfo, … }, … }
    let (SEQ, cert, _) = der(cert)? else {
        return None;
    };
    let (SEQ, tbs, _) = der(cert)? else {
        return None;
    };
    let (mut tag, mut body, mut rest) = der(tbs)?;
    if tag == 0xa0 {
        (tag, body, rest) = der(rest)?;
    }
    // That was the serial; skip signature, issuer, validity and subject.
    for _ in 0..5 {
        (tag, body, rest) = der(rest)?;
    }
    let (SEQ, spki) = (tag, body) else {
        return None;
    };
    let (SEQ, alg, rest) = der(spki)? else {
        return None;
    };
    let (0x06, oid, params) = der(alg)? else {
        return None;
    };
    let (0x03, bits, _) = der(rest)? else {
        return None;
    };
    let key = bits.get(1..)?;
    Some(match oid {
        // rsaEncryption, RSASSA-PSS: RSAPublicKey ::= SEQUENCE { modulus INTEGER, … }
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01 | 0x0a] => {
            let (SEQ, body, _) = der(key)? else {
                return None;
            };
            let (0x02, n, _) = der(body)? else {
                return None;
            };
            KeyKind::Rsa {
                bits: integer_bits(n),
            }
        }
        // id-ecPublicKey, with the named curve as parameter.
        [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01] => {
            let curve = match der(params) {
                Some((0x06, c, _)) => c,
                _ => return None,
            };
            let curve = match curve {
                [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07] => "P-256".to_string(),
                [0x2b, 0x81, 0x04, 0x00, 0x22] => "P-384".to_string(),
                [0x2b, 0x81, 0x04, 0x00, 0x23] => "P-521".to_string(),
                [0x2b, 0x81, 0x04, 0x00, 0x0a] => "secp256k1".to_string(),
                other => format!("curve {}", oid_text(other)),
            };
            KeyKind::Ec { curve }
        }
        [0x2b, 0x65, 0x70] => KeyKind::Ed25519,
        [0x2b, 0x65, 0x71] => KeyKind::Ed448,
        // id-dsa, parameters SEQUENCE { p, q, g }.
        [0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01] => KeyKind::Dsa {
            bits: match der(params) {
                Some((SEQ, p, _)) => match der(p) {
                    Some((0x02, p, _)) => Some(integer_bits(p)),
                    _ => None,
                },
                _ => None,
            },
        },
        other => KeyKind::Other {
            oid: oid_text(other),
        },
    })
}

/// When `cert`'s key is one the TLS stack cannot verify, the sentence that says so.
pub fn key_problem(cert: &[u8]) -> Option<String> {
    let key = describe_key(cert)?;
    (!key.supported()).then(|| {
        format!(
            "the server certificate has a {key} key, which this TLS stack does not accept \
             (it accepts {SUPPORTED_KEYS}); replace the host's certificate"
        )
    })
}

/// Replace a signature error caused by an unusable key with [`key_problem`]'s sentence.
fn explain(err: rustls::Error, cert: &[u8]) -> rustls::Error {
    match &err {
        rustls::Error::InvalidCertificate(_) | rustls::Error::PeerMisbehaved(_) => {
            match key_problem(cert) {
                Some(m) => rustls::Error::General(m),
                None => err,
            }
        }
        _ => err,
    }
}

/// The hint for a handshake the server broke off, which happens when no signature scheme
/// we offer fits its key (e.g. ECDSA P-521).
pub(crate) fn handshake_failure_hint(err: &rustls::Error) -> Option<String> {
    matches!(
        err,
        rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure)
    )
    .then(|| {
        format!(
            "the server ended the TLS handshake (handshake_failure); this happens when its \
             certificate key is one this TLS stack cannot verify (it accepts {SUPPORTED_KEYS})"
        )
    })
}

/// How the server's certificate is checked.
///
/// Exactly one mode applies, in this order:
/// 1. `thumbprint`: the SHA-1 of the server's leaf certificate must equal it; the chain
///    and the host name are not checked (this is the identity VDDK uses too).
/// 2. `system_roots` (unless `insecure`): the chain must lead to a system root or to a
///    certificate in `ca_dir` (when given), valid for the host name, as CDI's HTTP
///    source trusts the system pool plus its cert directory.
/// 3. `ca_dir`: the chain must lead to one of the PEM certificates in that directory and
///    the certificate must be valid for the host name.
/// 4. `insecure`: anything is accepted, with a loud warning naming the presented
///    thumbprint.
///
/// With none of them, [`client_config`] (and so [`crate::Client::new`]) refuses to connect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsPolicy {
    /// `AA:BB:…` (20 bytes, colon-separated, any case) SHA-1 of the leaf certificate.
    pub thumbprint: Option<String>,
    /// A directory of PEM certificate files to trust.
    pub ca_dir: Option<PathBuf>,
    /// Accept any certificate (logged as a warning).
    pub insecure: bool,
    /// Trust the system roots as well as `ca_dir` (image servers on the internet).
    pub system_roots: bool,
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
            .map_err(|e| explain(e, cert))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
            .map_err(|e| explain(e, cert))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The CA-checking verifier, with [`explain`] applied to its errors.
#[derive(Debug)]
struct ExplainingVerifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ExplainingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| explain(e, end_entity))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .verify_tls12_signature(message, cert, dss)
            .map_err(|e| explain(e, cert))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .verify_tls13_signature(message, cert, dss)
            .map_err(|e| explain(e, cert))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Add the PEM certificates of the regular, non-hidden files in `dir` to `roots`;
/// returns how many were added.
fn add_pem_dir(roots: &mut RootCertStore, dir: &Path) -> Result<usize, Error> {
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
    let before = roots.len();
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
    Ok(roots.len() - before)
}

fn load_ca_dir(dir: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    if add_pem_dir(&mut roots, dir)? == 0 {
        return Err(Error::Config(format!(
            "CA directory {} holds no PEM certificate",
            dir.display()
        )));
    }
    Ok(roots)
}

/// The client configuration for the TLS connection to an `https://` proxy: the system
/// roots (as `SSL_CERT_FILE`, `SSL_CERT_DIR` and the distribution's bundle give them)
/// plus the certificates in `dirs`, as CDI's `createCertPool` trusts the system pool,
/// `/proxycerts/` and the cert directory. A directory that does not exist is skipped.
pub fn proxy_client_config(dirs: &[PathBuf]) -> Result<Arc<ClientConfig>, Error> {
    web_client_config(dirs, "the https:// proxy")
}

/// The system roots plus the certificates in `dirs` (skipped when missing), for the TLS
/// connection to `what`.
fn web_client_config(dirs: &[PathBuf], what: &str) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "reading the system certificates");
    }
    let (added, _) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(system_roots = added, what, "trust");
    for dir in dirs {
        if dir.is_dir() {
            add_pem_dir(&mut roots, dir)?;
        }
    }
    if roots.is_empty() {
        return Err(Error::Tls {
            message: format!(
                "no certificate to verify {what} with: no system roots and no CA directory"
            ),
        });
    }
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::Tls {
            message: format!("proxy CA verifier: {e}"),
        })?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls {
            message: e.to_string(),
        })?
        .with_webpki_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
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
    } else if policy.system_roots && !policy.insecure {
        let dirs: Vec<PathBuf> = policy.ca_dir.iter().cloned().collect();
        return web_client_config(&dirs, "the server");
    } else if let Some(dir) = policy.ca_dir.as_ref().filter(|_| !policy.system_roots) {
        let roots = load_ca_dir(dir)?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| Error::Tls {
                message: format!("CA verifier: {e}"),
            })?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ExplainingVerifier(verifier)))
            .with_no_client_auth()
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
