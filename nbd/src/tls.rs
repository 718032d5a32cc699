//! NBD over TLS (`nbds://`, `nbds+unix://`): the client's x509 configuration, made the
//! way libnbd reads its URI parameters and nbdcopy passes them on.
//!
//! - `tls-certificates=DIR`: `DIR/ca-cert.pem` is the CA that must have signed the
//!   server's certificate; `DIR/client-cert.pem` and `DIR/client-key.pem`, when both are
//!   there, are the client's own certificate for servers that ask for one
//!   (`nbdkit --tls-verify-peer`). Without the parameter, libnbd's default directories
//!   are tried (`$HOME/.pki/libnbd`, then `/etc/pki/libnbd`), then the system's CAs.
//! - `tls-verify-peer=false`: accept any server certificate (the handshake still
//!   proves the server holds its key). Default true.
//! - `tls-hostname=NAME`: the name the certificate must carry; default the URI's host
//!   (`localhost` for a Unix socket, as libnbd).
//! - `tls-psk-file`: TLS-PSK is refused with a clear message: rustls implements no
//!   external pre-shared keys.
//!
//! The client fails closed: on an `nbds` URI a server that does not offer STARTTLS, or
//! whose certificate does not verify, ends the connection before any option is sent in
//! the clear.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::Error;

/// Largest PEM file read (a CA bundle, a certificate, a key).
pub const MAX_PEM_BYTES: u64 = 1 << 20;
/// Most certificates taken from one CA file.
pub const MAX_CA_CERTS: usize = 1024;

/// libnbd's default certificate directories, in the order it tries them (`~` is
/// `$HOME`).
pub const DEFAULT_CERT_DIRS: [&str; 2] = ["~/.pki/libnbd", "/etc/pki/libnbd"];

/// The TLS parameters of an `nbds` URI (or the equivalent flags).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    /// `tls-certificates=DIR`.
    pub certificates: Option<PathBuf>,
    /// `tls-verify-peer` (`None`: the default, true).
    pub verify_peer: Option<bool>,
    /// `tls-hostname=NAME`.
    pub hostname: Option<String>,
    /// `tls-psk-file=FILE` (refused at connect: see the module docs).
    pub psk_file: Option<PathBuf>,
}

impl TlsSettings {
    /// Whether the server's certificate is checked.
    pub fn verifies_peer(&self) -> bool {
        self.verify_peer.unwrap_or(true)
    }
}

fn tls_err(target: &str, message: impl Into<String>) -> Error {
    Error::Tls {
        target: target.to_string(),
        message: message.into(),
    }
}

/// A PEM file's bytes, bounded.
fn read_pem(target: &str, path: &Path) -> Result<Vec<u8>, Error> {
    use std::io::Read as _;
    let f = std::fs::File::open(path)
        .map_err(|e| tls_err(target, format!("cannot read {}: {e}", path.display())))?;
    let mut data = Vec::new();
    f.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| tls_err(target, format!("cannot read {}: {e}", path.display())))?;
    if data.len() as u64 > MAX_PEM_BYTES {
        return Err(tls_err(
            target,
            format!("{} is larger than {MAX_PEM_BYTES} bytes", path.display()),
        ));
    }
    Ok(data)
}

/// The certificate directory to use: the one given, or libnbd's first default that
/// exists.
fn cert_dir(s: &TlsSettings) -> Option<PathBuf> {
    if let Some(d) = &s.certificates {
        return Some(d.clone());
    }
    DEFAULT_CERT_DIRS.iter().find_map(|d| {
        let p = match d.strip_prefix("~/") {
            Some(rest) => PathBuf::from(std::env::var_os("HOME")?).join(rest),
            None => PathBuf::from(d),
        };
        p.is_dir().then_some(p)
    })
}

/// Accepts any server certificate (`tls-verify-peer=false`), still checking that the
/// server signed the handshake with the certificate's key.
#[derive(Debug)]
struct AnyServer(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The rustls client configuration for `s`; `target` names the server in errors.
pub fn client_config(target: &str, s: &TlsSettings) -> Result<Arc<ClientConfig>, Error> {
    if let Some(p) = &s.psk_file {
        return Err(tls_err(
            target,
            format!(
                "tls-psk-file={}: TLS-PSK is not supported (rustls implements no external \
                 pre-shared keys); give the server x509 certificates and use tls-certificates=DIR",
                p.display()
            ),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(target, e.to_string()))?;
    let dir = cert_dir(s);
    let builder = if s.verifies_peer() {
        let mut roots = RootCertStore::empty();
        match &dir {
            Some(d) => {
                let ca = d.join("ca-cert.pem");
                let data = read_pem(target, &ca)?;
                for (i, c) in CertificateDer::pem_slice_iter(&data).enumerate() {
                    if i >= MAX_CA_CERTS {
                        return Err(tls_err(
                            target,
                            format!(
                                "{} holds more than {MAX_CA_CERTS} certificates",
                                ca.display()
                            ),
                        ));
                    }
                    let c = c.map_err(|e| tls_err(target, format!("{}: {e}", ca.display())))?;
                    roots
                        .add(c)
                        .map_err(|e| tls_err(target, format!("{}: {e}", ca.display())))?;
                }
                if roots.is_empty() {
                    return Err(tls_err(
                        target,
                        format!("{} holds no certificate", ca.display()),
                    ));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    return Err(tls_err(
                        target,
                        "no CA to verify the server with: give tls-certificates=DIR (holding \
                         ca-cert.pem), or tls-verify-peer=false",
                    ));
                }
            }
        }
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| tls_err(target, e.to_string()))?;
        builder.with_webpki_verifier(verifier)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(
                provider.signature_verification_algorithms,
            )))
    };
    // The client's own certificate, when the directory has one.
    let client = dir.as_ref().and_then(|d| {
        let (c, k) = (d.join("client-cert.pem"), d.join("client-key.pem"));
        (c.is_file() && k.is_file()).then_some((c, k))
    });
    let config = match client {
        Some((cert, key)) => {
            let data = read_pem(target, &cert)?;
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&data)
                .take(MAX_CA_CERTS)
                .collect::<Result<_, _>>()
                .map_err(|e| tls_err(target, format!("{}: {e}", cert.display())))?;
            let key_data = read_pem(target, &key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&key_data)
                .map_err(|e| tls_err(target, format!("{}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| tls_err(target, format!("{}: {e}", cert.display())))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name the server's certificate must carry.
pub fn server_name(
    target: &str,
    s: &TlsSettings,
    host: Option<&str>,
) -> Result<ServerName<'static>, Error> {
    let name = s
        .hostname
        .clone()
        .or_else(|| host.map(str::to_string))
        .unwrap_or_else(|| "localhost".to_string());
    ServerName::try_from(name.clone())
        .map_err(|e| tls_err(target, format!("tls-hostname {name:?}: {e}")))
}

/// A handshake failure in words an operator can act on.
pub fn explain(e: &std::io::Error) -> String {
    use rustls::CertificateError as C;
    let hint = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            C::UnknownIssuer | C::BadSignature => {
                ": the server's certificate is not signed by the CA in tls-certificates (ca-cert.pem)"
            }
            C::Expired | C::ExpiredContext { .. } => ": the server's certificate has expired",
            C::NotValidYet | C::NotValidYetContext { .. } => {
                ": the server's certificate is not valid yet (check the clocks)"
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                ": the server's certificate is not valid for this host name (see tls-hostname)"
            }
            _ => "",
        },
        Some(rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired))
        | Some(rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure)) => {
            ": the server may want a client certificate (client-cert.pem and client-key.pem in tls-certificates)"
        }
        _ => "",
    };
    format!("TLS handshake failed: {e}{hint}")
}
