//! The HTTPS `/metrics` endpoint, as CDI's importer serves it: a self-signed certificate
//! made at start-up (the controller scrapes with `InsecureSkipVerify` and a 2 s timeout),
//! `GET /metrics`, 404 elsewhere.
//!
//! The body is OpenMetrics text (`application/openmetrics-text; version=1.0.0`), which
//! carries the CDI series byte for byte as the Prometheus text format would. Requests
//! are bounded ([`crate::http_server`]): at most [`MAX_CONNECTIONS`] connections, a TLS
//! handshake and request headers must arrive within [`HANDSHAKE_TIMEOUT`] /
//! [`HEADER_READ_TIMEOUT`], headers are capped at [`MAX_HEADER_BYTES`], request bodies
//! are never read, and a connection lives at most [`CONNECTION_LIFETIME`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use super::ReportError;
use super::metrics::Metrics;
use crate::http_server::{self, Limits, Running};

/// The port CDI's importer serves metrics on (container port named `metrics`).
pub const DEFAULT_METRICS_PORT: u16 = 8443;
/// The path.
pub const METRICS_PATH: &str = "/metrics";
/// Content type of the body (prometheus-client's OpenMetrics text).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Time allowed for the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a request's headers to arrive.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Longest a (keep-alive) connection is served.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// How long shutdown waits for requests being answered.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Names in the self-signed certificate.
pub const CERT_NAMES: [&str; 2] = ["ferry-importer", "localhost"];
/// Backlog of the metrics listener.
pub const LISTEN_BACKLOG: i32 = http_server::LISTEN_BACKLOG;

/// The metrics endpoint's bounds.
pub const LIMITS: Limits = Limits {
    max_connections: MAX_CONNECTIONS,
    handshake_timeout: HANDSHAKE_TIMEOUT,
    header_read_timeout: HEADER_READ_TIMEOUT,
    max_header_bytes: MAX_HEADER_BYTES,
    read_buffer_bytes: MAX_HEADER_BYTES,
    connection_lifetime: Some(CONNECTION_LIFETIME),
    shutdown_grace: SHUTDOWN_GRACE,
};

/// A running metrics endpoint. Dropping it stops accepting connections; call
/// [`MetricsServer::shutdown`] to also wait for requests being answered.
#[derive(Debug)]
pub struct MetricsServer {
    running: Running,
    certificate: CertificateDer<'static>,
}

/// Serve `metrics` over HTTPS on `addr` (in a pod `[::]:8443`: IPv6 and IPv4) with a
/// certificate generated now. Needs a Tokio runtime.
pub async fn serve_metrics(
    addr: SocketAddr,
    metrics: Metrics,
) -> Result<MetricsServer, ReportError> {
    let (config, certificate) = tls_config()?;
    let listener = http_server::bind(addr).map_err(|error| ReportError::Bind { addr, error })?;
    let handler: http_server::Handler = Arc::new(move |req: Request<Incoming>| {
        let answer = respond(&metrics, &req);
        Box::pin(async move { answer })
    });
    let running = http_server::spawn(
        listener,
        Some(TlsAcceptor::from(Arc::new(config))),
        LIMITS,
        handler,
        "metrics",
    )
    .map_err(|error| ReportError::Bind { addr, error })?;
    let local_addr = running.local_addr();
    tracing::info!(addr = %local_addr, "serving metrics on https://{local_addr}{METRICS_PATH}");
    Ok(MetricsServer {
        running,
        certificate,
    })
}

impl MetricsServer {
    /// The address bound (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.running.local_addr()
    }

    /// The self-signed certificate (DER) the endpoint presents.
    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// Stop accepting, let requests being answered finish (at most [`SHUTDOWN_GRACE`]),
    /// then close every connection.
    pub async fn shutdown(self) {
        self.running.shutdown().await;
    }
}

fn tls_config() -> Result<(ServerConfig, CertificateDer<'static>), ReportError> {
    let names: Vec<String> = CERT_NAMES.iter().map(|s| s.to_string()).collect();
    let key = rcgen::generate_simple_self_signed(names).map_err(ReportError::Certificate)?;
    let cert = key.cert.der().clone();
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let config = http_server::tls_config(vec![cert.clone()], private).map_err(ReportError::Tls)?;
    Ok((config, cert))
}

/// The answer of the metrics endpoint (also served by the upload server on its port).
pub fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    respond_to(metrics, req.method(), req.uri().path())
}

/// [`respond`] for a method and path.
pub fn respond_to(metrics: &Metrics, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (method, path) {
        (&Method::GET | &Method::HEAD, METRICS_PATH) => (
            StatusCode::OK,
            METRICS_CONTENT_TYPE,
            Bytes::from(metrics.encode()),
        ),
        (_, METRICS_PATH) => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"method not allowed\n"),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"not found\n"),
        ),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{ServerName, UnixTime};
    use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;

    use super::*;
    use crate::progress::Progress;
    use crate::report::{SamplerOptions, spawn_samplers_with};

    /// What CDI's controller does: `InsecureSkipVerify` (signatures are still checked).
    #[derive(Debug)]
    struct SkipVerify {
        provider: Arc<CryptoProvider>,
        seen: Mutex<Option<Vec<u8>>>,
    }

    impl ServerCertVerifier for SkipVerify {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            *self.seen.lock().unwrap() = Some(end_entity.to_vec());
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    struct Client {
        connector: TlsConnector,
        verifier: Arc<SkipVerify>,
    }

    impl Client {
        fn new() -> Self {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = Arc::new(SkipVerify {
                provider: provider.clone(),
                seen: Mutex::new(None),
            });
            let config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_no_client_auth();
            Client {
                connector: TlsConnector::from(Arc::new(config)),
                verifier,
            }
        }

        /// One request on its own connection; (status code, head, body).
        async fn request(
            &self,
            addr: SocketAddr,
            method: &str,
            path: &str,
        ) -> (u16, String, String) {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut tls = self.connector.connect(name, tcp).await.unwrap();
            let req =
                format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            tls.write_all(req.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            if let Err(e) = tls.read_to_end(&mut raw).await {
                assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
            }
            let raw = String::from_utf8(raw).unwrap();
            let (head, body) = raw.split_once("\r\n\r\n").unwrap();
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            (status, head.to_string(), body.to_string())
        }
    }

    /// CDI's controller regex (pkg/controller/common/util.go), value as a float.
    fn cdi_progress(body: &str, uid: &str) -> Option<f64> {
        let re = regex::Regex::new(&format!(
            r#"(kubevirt_cdi_import_progress_total|kubevirt_cdi_clone_progress_total)\{{ownerUID="{}"\}} (\d{{1,3}}\.?\d*)"#,
            regex::escape(uid)
        ))
        .unwrap();
        re.captures(body).map(|c| c[2].parse().unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scrape_while_progress_advances() {
        let uid = "0b7a3c52-6f0e-4a8e-9d2c-5f1e2d3c4b5a";
        let metrics = Metrics::new(uid);
        let progress = Arc::new(Progress::new());
        let samplers = spawn_samplers_with(
            progress.clone(),
            Some(metrics.clone()),
            SamplerOptions {
                interval: Duration::from_millis(10),
                log_progress: false,
            },
        );
        let server = serve_metrics("127.0.0.1:0".parse().unwrap(), metrics.clone())
            .await
            .unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let client = Client::new();

        let (status, head, body) = client.request(addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.to_ascii_lowercase().contains(
                "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"
            )
        );
        assert_eq!(cdi_progress(&body, uid), Some(0.0));
        assert_eq!(
            client.verifier.seen.lock().unwrap().as_deref(),
            Some(server.certificate_der().as_ref())
        );

        progress.set_total(1000);
        let mut last = 0.0;
        for step in 1..=10u64 {
            progress.add_data(100);
            let want = (step * 10) as f64;
            // The sampler catches up within a few periods.
            let mut got = 0.0;
            for _ in 0..200 {
                let (_, _, body) = client.request(addr, "GET", "/metrics").await;
                got = cdi_progress(&body, uid).expect("CDI regex matches");
                assert!(got >= last, "progress went back: {last} -> {got}");
                last = got;
                if got == want {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(got, want);
        }
        samplers.finish(&progress, true);
        let (_, _, body) = client.request(addr, "GET", "/metrics").await;
        assert_eq!(cdi_progress(&body, uid), Some(100.0));
        assert!(body.contains("ferry_import_read_bytes_total 1000\n"));
        // Another uid does not match.
        assert_eq!(cdi_progress(&body, "other"), None);

        server.shutdown().await;
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn other_paths_and_methods() {
        let server = serve_metrics("127.0.0.1:0".parse().unwrap(), Metrics::new("u"))
            .await
            .unwrap();
        let addr = server.local_addr();
        let client = Client::new();
        assert_eq!(client.request(addr, "GET", "/").await.0, 404);
        assert_eq!(client.request(addr, "GET", "/metricsx").await.0, 404);
        let (status, head, _) = client.request(addr, "POST", "/metrics").await;
        assert_eq!(status, 405);
        assert!(head.to_ascii_lowercase().contains("allow: get, head"));
        let (status, _, body) = client.request(addr, "HEAD", "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.is_empty());
        // Query strings are fine (the path is what counts).
        assert_eq!(client.request(addr, "GET", "/metrics?x=1").await.0, 200);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn plain_http_is_refused_without_harm() {
        let server = serve_metrics("127.0.0.1:0".parse().unwrap(), Metrics::new("u"))
            .await
            .unwrap();
        let addr = server.local_addr();
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
        assert!(!String::from_utf8_lossy(&buf).contains("kubevirt_cdi"));
        // The endpoint still serves TLS clients.
        assert_eq!(Client::new().request(addr, "GET", "/metrics").await.0, 200);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn connections_are_bounded() {
        let server = serve_metrics("127.0.0.1:0".parse().unwrap(), Metrics::new("u"))
            .await
            .unwrap();
        let addr = server.local_addr();
        let client = Client::new();
        // One idle connection does not hold up a scrape.
        let idle = TcpStream::connect(addr).await.unwrap();
        assert_eq!(client.request(addr, "GET", "/metrics").await.0, 200);
        // Every slot taken by idle clients: a new connection is closed at once.
        let mut idle = vec![idle];
        for _ in 1..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        assert!(client.connector.connect(name, tcp).await.is_err());
        // The idle clients leave; the slots come back.
        drop(idle);
        let mut ok = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            if client.connector.connect(name, tcp).await.is_ok() {
                ok = true;
                break;
            }
        }
        assert!(ok);
        assert_eq!(client.request(addr, "GET", "/metrics").await.0, 200);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn the_ipv6_wildcard_serves_ipv6_and_ipv4() {
        let server = serve_metrics("[::]:0".parse().unwrap(), Metrics::new("u"))
            .await
            .unwrap();
        let port = server.local_addr().port();
        let client = Client::new();
        for addr in [
            SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], port)),
            SocketAddr::from(([127, 0, 0, 1], port)),
        ] {
            let (status, _, body) = client.request(addr, "GET", "/metrics").await;
            assert_eq!(status, 200, "{addr}");
            assert!(
                body.contains("kubevirt_cdi_import_progress_total"),
                "{addr}: {body}"
            );
        }
        server.shutdown().await;
    }

    #[tokio::test]
    async fn bind_error_names_the_address() {
        let first = serve_metrics("127.0.0.1:0".parse().unwrap(), Metrics::new("u"))
            .await
            .unwrap();
        let addr = first.local_addr();
        let err = serve_metrics(addr, Metrics::new("u")).await.unwrap_err();
        assert!(matches!(err, ReportError::Bind { .. }));
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        first.shutdown().await;
    }
}
