//! HTTPS POST of SOAP envelopes: endpoint parsing, an optional `CONNECT` tunnel through an
//! `http://` or `https://` proxy, rustls,
//! one kept-alive hyper HTTP/1.1 connection, timeouts and a response size cap.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proxy::{ProxyConfig, ProxyScheme};
use crate::{Error, MAX_RESPONSE_BYTES};

/// What the TLS session to the server runs over: TCP, or TLS to an `https://` proxy.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// Time allowed to open a connection: DNS, TCP, proxy tunnel, TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for one SOAP call, from sending the request to the last byte of the reply.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest proxy reply header accepted for a CONNECT.
const MAX_PROXY_REPLY: usize = 16 * 1024;

/// Where the vSphere API is: `host` (IPv6 without brackets) and `port`; the path is
/// always `/sdk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP address.
    pub host: String,
    /// TCP port (443 unless given).
    pub port: u16,
}

impl Endpoint {
    /// Parse `https://vc.example/sdk`, `vc.example`, `vc.example:8443`, `[fd00::1]:443`,
    /// `https://user@vc.example/anything` (user info and path are dropped: the path is
    /// always `/sdk`, as CDI does). `http://` is refused.
    pub fn parse(s: &str) -> Result<Endpoint, Error> {
        let s = s.trim();
        let rest = if let Some(r) = s.strip_prefix("https://") {
            r
        } else if s.contains("://") {
            return Err(Error::Config(format!(
                "endpoint {s:?}: only https:// is supported"
            )));
        } else {
            s
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let authority = authority.rsplit('@').next().unwrap_or_default();
        let (host, port) = if let Some(r) = authority.strip_prefix('[') {
            let (h, tail) = r
                .split_once(']')
                .ok_or_else(|| Error::Config(format!("endpoint {s:?}: unclosed '['")))?;
            let port = match tail.strip_prefix(':') {
                Some(p) => Some(p),
                None if tail.is_empty() => None,
                None => return Err(Error::Config(format!("endpoint {s:?}: junk after ']'"))),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(Error::Config(format!("endpoint {s:?}: no host")));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| Error::Config(format!("endpoint {s:?}: bad port {p:?}")))?,
            None => 443,
        };
        Ok(Endpoint { host, port })
    }

    /// `host:port`, with brackets around an IPv6 address.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// Bounds and settings of a [`crate::Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// See [`CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`CALL_TIMEOUT`].
    pub call_timeout: Duration,
    /// See [`MAX_RESPONSE_BYTES`].
    pub max_response_bytes: usize,
    /// Proxy settings (none by default; [`ClientOptions::from_env`] reads the environment).
    pub proxy: ProxyConfig,
    /// Directories of PEM certificates trusted, beside the system roots, for the TLS
    /// connection to an `https://` proxy (CDI's `/proxycerts/` and `/certs`).
    pub proxy_ca_dirs: Vec<PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: CONNECT_TIMEOUT,
            call_timeout: CALL_TIMEOUT,
            max_response_bytes: MAX_RESPONSE_BYTES,
            proxy: ProxyConfig::default(),
            proxy_ca_dirs: Vec::new(),
        }
    }
}

impl ClientOptions {
    /// The defaults, with the proxy taken from the environment as Go reads it.
    pub fn from_env() -> Self {
        ClientOptions {
            proxy: ProxyConfig::from_env(),
            ..Default::default()
        }
    }
}

/// A response: status, the `vmware_soap_session` cookie if set, and the body.
#[derive(Debug)]
pub(crate) struct HttpResponse {
    pub status: u16,
    pub session_cookie: Option<String>,
    pub body: String,
}

type Sender = SendRequest<Full<Bytes>>;

pub(crate) struct Transport {
    pub endpoint: Endpoint,
    tls: Arc<ClientConfig>,
    pub opts: ClientOptions,
    conn: tokio::sync::Mutex<Option<Sender>>,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("endpoint", &self.endpoint)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

fn tls_error(e: &std::io::Error) -> Option<String> {
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match inner {
        rustls::Error::General(m) => m.clone(),
        other => match crate::tls::handshake_failure_hint(other) {
            Some(hint) => hint,
            None => other.to_string(),
        },
    })
}

impl Transport {
    pub fn new(endpoint: Endpoint, tls: Arc<ClientConfig>, opts: ClientOptions) -> Self {
        Transport {
            endpoint,
            tls,
            opts,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// A byte stream to the vSphere endpoint: direct TCP, or a `CONNECT` tunnel through
    /// the proxy [`ProxyConfig::proxy_for`] picks (over TLS for an `https://` proxy).
    async fn open_stream(&self) -> Result<Box<dyn Stream>, Error> {
        let target = self.endpoint.authority();
        let proxy = self
            .opts
            .proxy
            .proxy_for("https", &self.endpoint.host, self.endpoint.port)?;
        let Some(p) = proxy else {
            let s = TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
                .await
                .map_err(|e| Error::Connect {
                    address: target.clone(),
                    message: e.to_string(),
                })?;
            let _ = s.set_nodelay(true);
            return Ok(Box::new(s));
        };
        let paddr = format!("proxy {}", p.authority());
        let connect_err = |message: String| Error::Connect {
            address: paddr.clone(),
            message,
        };
        tracing::debug!(proxy = %p.authority(), scheme = ?p.scheme, %target, "connecting through a proxy");
        let tcp = TcpStream::connect((p.host.as_str(), p.port))
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let mut s: Box<dyn Stream> = match p.scheme {
            ProxyScheme::Http => Box::new(tcp),
            ProxyScheme::Https => {
                let config = crate::tls::proxy_client_config(&self.opts.proxy_ca_dirs)?;
                let name = ServerName::try_from(p.host.clone())
                    .map_err(|e| Error::Config(format!("proxy host {:?}: {e}", p.host)))?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| {
                        connect_err(match tls_error(&e) {
                            Some(m) => format!("TLS to the proxy: {m}"),
                            None => format!("TLS to the proxy: {e}"),
                        })
                    })?;
                Box::new(tls)
            }
        };
        let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(c) = &p.credentials {
            req.push_str(&format!(
                "Proxy-Authorization: Basic {}\r\n",
                base64(c.as_bytes())
            ));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        s.flush().await.map_err(|e| connect_err(e.to_string()))?;
        // Read the reply byte by byte so no tunnelled byte is consumed.
        let mut reply = Vec::new();
        while !reply.ends_with(b"\r\n\r\n") {
            if reply.len() >= MAX_PROXY_REPLY {
                return Err(connect_err("CONNECT reply too long".into()));
            }
            let b = s
                .read_u8()
                .await
                .map_err(|e| connect_err(format!("reading the CONNECT reply: {e}")))?;
            reply.push(b);
        }
        let text = String::from_utf8_lossy(&reply);
        let status = text.lines().next().unwrap_or_default();
        let code = status.split_whitespace().nth(1).unwrap_or_default();
        if code != "200" {
            return Err(connect_err(format!("CONNECT {target} refused: {status}")));
        }
        Ok(s)
    }

    async fn connect_inner(&self) -> Result<Sender, Error> {
        let stream = self.open_stream().await?;
        let name = ServerName::try_from(self.endpoint.host.clone())
            .map_err(|e| Error::Config(format!("host {:?}: {e}", self.endpoint.host)))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, stream)
            .await
            .map_err(|e| match tls_error(&e) {
                Some(message) => Error::Tls { message },
                None => Error::Connect {
                    address: self.endpoint.authority(),
                    message: format!("TLS handshake: {e}"),
                },
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| Error::Connect {
                address: self.endpoint.authority(),
                message: format!("HTTP handshake: {e}"),
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "vSphere connection closed");
            }
        });
        Ok(sender)
    }

    async fn connect(&self) -> Result<Sender, Error> {
        let after = self.opts.connect_timeout;
        tokio::time::timeout(after, self.connect_inner())
            .await
            .map_err(|_| Error::Timeout {
                operation: format!("connect to {}", self.endpoint.authority()),
                after,
            })?
    }

    async fn exchange(
        &self,
        sender: &mut Sender,
        operation: &str,
        soap_action: &str,
        body: &str,
        cookie: Option<&str>,
    ) -> Result<HttpResponse, Error> {
        let transport_err = |message: String| Error::Transport {
            address: self.endpoint.authority(),
            operation: operation.to_string(),
            message,
        };
        sender
            .ready()
            .await
            .map_err(|e| transport_err(e.to_string()))?;
        let mut req = Request::post("/sdk")
            .header(header::HOST, self.endpoint.authority())
            .header(header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .header("SOAPAction", soap_action)
            .header(
                header::USER_AGENT,
                concat!("ferry-vsphere/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, format!("{}={c}", crate::SESSION_COOKIE));
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| Error::Protocol(format!("cannot build request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| transport_err(e.to_string()))?;
        let status = resp.status().as_u16();
        let max = self.opts.max_response_bytes;
        if let Some(len) = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && len > max as u64
        {
            return Err(Error::Protocol(format!(
                "{operation}: response of {len} bytes exceeds the {max}-byte limit"
            )));
        }
        let session_cookie = resp
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| {
                let first = v.split(';').next()?.trim();
                let (name, value) = first.split_once('=')?;
                (name.trim() == crate::SESSION_COOKIE).then(|| value.trim().to_string())
            });
        let bytes = Limited::new(resp.into_body(), max)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    Error::Protocol(format!(
                        "{operation}: response exceeds the {max}-byte limit"
                    ))
                } else {
                    transport_err(e.to_string())
                }
            })?;
        let body = String::from_utf8(bytes.to_bytes().to_vec())
            .map_err(|_| Error::Protocol(format!("{operation}: response is not UTF-8")))?;
        Ok(HttpResponse {
            status,
            session_cookie,
            body,
        })
    }

    /// POST one envelope to `/sdk`, bounded by the call timeout. A kept-alive connection
    /// that turns out to be closed is replaced once.
    pub async fn post(
        &self,
        operation: &str,
        soap_action: &str,
        body: &str,
        cookie: Option<&str>,
    ) -> Result<HttpResponse, Error> {
        let mut guard = self.conn.lock().await;
        let reused = match guard.take() {
            Some(s) if !s.is_closed() => Some(s),
            _ => None,
        };
        let was_reused = reused.is_some();
        let mut sender = match reused {
            Some(s) => s,
            None => self.connect().await?,
        };
        let after = self.opts.call_timeout;
        let timeout_err = || Error::Timeout {
            operation: format!("{operation} on {}", self.endpoint.authority()),
            after,
        };
        let mut result = tokio::time::timeout(
            after,
            self.exchange(&mut sender, operation, soap_action, body, cookie),
        )
        .await
        .map_err(|_| timeout_err())?;
        if was_reused && matches!(result, Err(Error::Transport { .. })) {
            tracing::debug!(operation, "kept-alive connection failed; reconnecting once");
            sender = self.connect().await?;
            result = tokio::time::timeout(
                after,
                self.exchange(&mut sender, operation, soap_action, body, cookie),
            )
            .await
            .map_err(|_| timeout_err())?;
        }
        if result.is_ok() {
            *guard = Some(sender);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("https://vc.example/sdk").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("vc.example", 443));
        let e = Endpoint::parse("vc.example:8443").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("vc.example", 8443));
        let e = Endpoint::parse("https://admin@[fd00::1]:444/foo").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("fd00::1", 444));
        assert_eq!(e.authority(), "[fd00::1]:444");
        assert!(Endpoint::parse("http://vc.example").is_err());
        assert!(Endpoint::parse("https://").is_err());
        assert!(Endpoint::parse("vc:0").is_err());
        assert!(Endpoint::parse("vc:99999").is_err());
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
