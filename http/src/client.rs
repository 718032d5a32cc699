//! One kept-alive HTTP/1.1 connection to one server, over TLS for `https://`, directly or
//! through the proxy [`ProxyConfig::proxy_for`] picks, with every request bounded in time
//! and every response body in size. All framing is hyper's, including the `CONNECT`
//! tunnel.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::Error;
use crate::endpoint::{Endpoint, Scheme};
use crate::proxy::{Proxy, ProxyConfig};
use crate::tls::{self, TlsPolicy};

/// Time allowed to open a connection: DNS, TCP, proxy tunnel, TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for one request, from sending it to the last byte of the response.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest response body accepted unless [`ClientOptions::max_body_bytes`] says otherwise.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Bounds and settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// See [`CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`CALL_TIMEOUT`].
    pub call_timeout: Duration,
    /// Largest response body; a larger one is [`Error::TooLarge`].
    pub max_body_bytes: usize,
    /// Proxy settings (none by default; [`ClientOptions::from_env`] reads the environment).
    pub proxy: ProxyConfig,
    /// Directories of PEM certificates trusted, beside the system roots, for the TLS
    /// connection to an `https://` proxy (CDI's `/proxycerts/` and `/certs`).
    pub proxy_ca_dirs: Vec<PathBuf>,
    /// The `User-Agent` header (also sent on `CONNECT`).
    pub user_agent: String,
    /// Headers sent with every request to the server (CDI's extra headers, basic
    /// authorization), unless the request sets the same name.
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: CONNECT_TIMEOUT,
            call_timeout: CALL_TIMEOUT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            proxy: ProxyConfig::default(),
            proxy_ca_dirs: Vec::new(),
            user_agent: concat!("ferry/", env!("CARGO_PKG_VERSION")).to_string(),
            headers: Vec::new(),
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

/// A response, its body read whole (within the cap).
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// What a connection runs over: TCP, or TLS to an `https://` proxy.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

type Sender = SendRequest<Full<Bytes>>;

/// A client for one server. Requests take turns on one kept-alive connection; a
/// kept-alive connection that turns out to be closed is replaced once.
pub struct Client {
    endpoint: Endpoint,
    /// TLS to the server (`https://` endpoints only).
    tls: Option<Arc<ClientConfig>>,
    opts: ClientOptions,
    /// The proxy chosen for this endpoint, once, when the client was made.
    proxy: Option<Proxy>,
    conn: tokio::sync::Mutex<Option<Sender>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("proxy", &self.proxy)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// The text of a rustls error inside an I/O error, if that is what it is.
fn tls_error(e: &std::io::Error) -> Option<String> {
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match inner {
        rustls::Error::General(m) => m.clone(),
        other => tls::handshake_failure_hint(other).unwrap_or_else(|| other.to_string()),
    })
}

impl Client {
    /// A client for `endpoint`, its identity checked by `policy` (for `https://`), through
    /// the proxy `opts.proxy` picks for it.
    pub fn new(
        endpoint: Endpoint,
        policy: &TlsPolicy,
        opts: ClientOptions,
    ) -> Result<Client, Error> {
        let tls = match endpoint.scheme {
            Scheme::Https => Some(tls::client_config(policy)?),
            Scheme::Http => None,
        };
        let proxy =
            opts.proxy
                .proxy_for(endpoint.scheme.as_str(), &endpoint.host, endpoint.port)?;
        Ok(Client {
            endpoint,
            tls,
            opts,
            proxy,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    /// The server.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The options.
    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    fn connect_err(address: &str, message: String) -> Error {
        Error::Connect {
            address: address.to_string(),
            message,
        }
    }

    /// TCP to `host:port`, named `address` in errors.
    async fn tcp(host: &str, port: u16, address: &str) -> Result<TcpStream, Error> {
        let s = TcpStream::connect((host, port))
            .await
            .map_err(|e| Self::connect_err(address, e.to_string()))?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }

    /// The proxy's `Proxy-Authorization` value, if it has credentials.
    fn proxy_auth(p: &Proxy) -> Option<HeaderValue> {
        let c = p.credentials.as_ref()?;
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(c)
        );
        HeaderValue::from_str(&v).ok()
    }

    /// A stream to the proxy: TCP, then TLS for an `https://` proxy.
    async fn to_proxy(&self, p: &Proxy, address: &str) -> Result<Box<dyn Stream>, Error> {
        let tcp = Self::tcp(&p.host, p.port, address).await?;
        match p.scheme {
            Scheme::Http => Ok(Box::new(tcp)),
            Scheme::Https => {
                let config = tls::proxy_client_config(&self.opts.proxy_ca_dirs)?;
                let name = ServerName::try_from(p.host.clone())
                    .map_err(|e| Error::Config(format!("proxy host {:?}: {e}", p.host)))?;
                let s = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| {
                        let m = tls_error(&e).unwrap_or_else(|| e.to_string());
                        Self::connect_err(address, format!("TLS to the proxy: {m}"))
                    })?;
                Ok(Box::new(s))
            }
        }
    }

    /// A `CONNECT` tunnel to the endpoint through `p`, made with hyper.
    async fn tunnel(&self, p: &Proxy) -> Result<Box<dyn Stream>, Error> {
        let address = format!("proxy {}", p.authority());
        let target = self.endpoint.authority();
        tracing::debug!(proxy = %p.authority(), scheme = ?p.scheme, %target, "connecting through a proxy");
        let stream = self.to_proxy(p, &address).await?;
        let err = |m: String| Self::connect_err(&address, m);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| err(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "proxy connection closed");
            }
        });
        let uri: Uri = target
            .parse()
            .map_err(|e| Error::Config(format!("CONNECT target {target:?}: {e}")))?;
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(uri)
            .header(header::HOST, &target)
            .header(header::USER_AGENT, &self.opts.user_agent);
        if let Some(v) = Self::proxy_auth(p) {
            req = req.header(header::PROXY_AUTHORIZATION, v);
        }
        let req = req.body(Empty::new()).map_err(|e| err(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| err(e.to_string()))?;
        if resp.status() != StatusCode::OK {
            return Err(err(format!(
                "CONNECT {target} refused: {:?} {}",
                resp.version(),
                resp.status()
            )));
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| err(format!("CONNECT {target}: {e}")))?;
        Ok(Box::new(TokioIo::new(upgraded)))
    }

    async fn connect_inner<B>(&self) -> Result<SendRequest<B>, Error>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let address = self.endpoint.authority();
        let stream: Box<dyn Stream> = match (&self.proxy, self.endpoint.scheme) {
            (None, _) => {
                Box::new(Self::tcp(&self.endpoint.host, self.endpoint.port, &address).await?)
            }
            // Go sends plain-HTTP requests to the proxy itself, in absolute form.
            (Some(p), Scheme::Http) => {
                self.to_proxy(p, &format!("proxy {}", p.authority()))
                    .await?
            }
            (Some(p), Scheme::Https) => self.tunnel(p).await?,
        };
        let stream: Box<dyn Stream> = match &self.tls {
            None => stream,
            Some(config) => {
                let name = ServerName::try_from(self.endpoint.host.clone())
                    .map_err(|e| Error::Config(format!("host {:?}: {e}", self.endpoint.host)))?;
                let s = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|e| match tls_error(&e) {
                        Some(message) => Error::Tls { message },
                        None => Self::connect_err(&address, format!("TLS handshake: {e}")),
                    })?;
                Box::new(s)
            }
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Self::connect_err(&address, format!("HTTP handshake: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection closed");
            }
        });
        Ok(sender)
    }

    async fn connect<B>(&self) -> Result<SendRequest<B>, Error>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let after = self.opts.connect_timeout;
        tokio::time::timeout(after, self.connect_inner())
            .await
            .map_err(|_| Error::Timeout {
                operation: format!("connect to {}", self.endpoint.authority()),
                after,
            })?
    }

    /// The request with what every request carries: the URI in the form the connection
    /// needs (absolute through a plain-HTTP proxy), `Host`, `User-Agent`, and
    /// `Proxy-Authorization` for a plain-HTTP proxy.
    fn prepare<B>(&self, operation: &str, mut req: Request<B>) -> Result<Request<B>, Error> {
        let bad = |message: String| Error::Request {
            operation: operation.to_string(),
            message,
        };
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        if let (Some(p), Scheme::Http) = (&self.proxy, self.endpoint.scheme) {
            let abs = format!("http://{}{path}", self.endpoint.authority());
            *req.uri_mut() = abs.parse().map_err(|e| bad(format!("{abs}: {e}")))?;
            if let Some(v) = Self::proxy_auth(p) {
                req.headers_mut().insert(header::PROXY_AUTHORIZATION, v);
            }
        }
        let h = req.headers_mut();
        if !h.contains_key(header::HOST) {
            let v = HeaderValue::from_str(&self.endpoint.authority())
                .map_err(|e| bad(e.to_string()))?;
            h.insert(header::HOST, v);
        }
        if !h.contains_key(header::USER_AGENT) {
            let v = HeaderValue::from_str(&self.opts.user_agent).map_err(|e| bad(e.to_string()))?;
            h.insert(header::USER_AGENT, v);
        }
        for (name, value) in &self.opts.headers {
            if !h.contains_key(name) {
                h.insert(name.clone(), value.clone());
            }
        }
        Ok(req)
    }

    async fn exchange<B>(
        &self,
        sender: &mut SendRequest<B>,
        operation: &str,
        req: Request<B>,
    ) -> Result<Response, Error>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let transport_err = |message: String| Error::Transport {
            address: self.endpoint.authority(),
            operation: operation.to_string(),
            message,
        };
        sender
            .ready()
            .await
            .map_err(|e| transport_err(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| transport_err(e.to_string()))?;
        let limit = self.opts.max_body_bytes;
        let too_large = |declared| Error::TooLarge {
            operation: operation.to_string(),
            limit,
            declared,
        };
        if let Some(len) = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && len > limit as u64
        {
            return Err(too_large(Some(len)));
        }
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, limit).collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large(None)
            } else {
                transport_err(e.to_string())
            }
        })?;
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body: body.to_bytes(),
        })
    }

    /// Send `req` (its URI a path, e.g. `/sdk`) and read the whole response, within the
    /// call timeout and the body cap. `operation` names the request in errors.
    pub async fn send(
        &self,
        operation: &str,
        req: Request<Full<Bytes>>,
    ) -> Result<Response, Error> {
        let req = self.prepare(operation, req)?;
        let mut guard = self.conn.lock().await;
        let reused = guard.take().filter(|s| !s.is_closed());
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
        // Kept for the one retry on a fresh connection (the body is cheap to clone).
        let again = was_reused.then(|| clone_request(&req));
        let mut result = tokio::time::timeout(after, self.exchange(&mut sender, operation, req))
            .await
            .map_err(|_| timeout_err())?;
        if let (Some(req), Err(Error::Transport { .. })) = (again, &result) {
            tracing::debug!(operation, "kept-alive connection failed; reconnecting once");
            sender = self.connect().await?;
            result = tokio::time::timeout(after, self.exchange(&mut sender, operation, req))
                .await
                .map_err(|_| timeout_err())?;
        }
        if result.is_ok() {
            *guard = Some(sender);
        }
        result
    }

    /// Send `req` with a body produced as it is sent (an upload: chunks read from a
    /// file) on a connection of its own, and read the whole response within the body
    /// cap. The connection is bounded by the connect timeout; the request by nothing
    /// but the body's own pace (the caller bounds it), since an upload takes as long
    /// as its bytes take. A streamed body cannot be sent again: there is no retry.
    pub async fn send_streaming<B>(
        &self,
        operation: &str,
        req: Request<B>,
    ) -> Result<Response, Error>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let req = self.prepare(operation, req)?;
        let mut sender = self.connect::<B>().await?;
        self.exchange(&mut sender, operation, req).await
    }

    /// `GET path`, optionally of the bytes `range` only (`Range: bytes=start-(end-1)`).
    /// The caller checks for `206 Partial Content` (a server without Range support
    /// answers `200` with the whole body).
    pub async fn get(
        &self,
        operation: &str,
        path: &str,
        range: Option<Range<u64>>,
    ) -> Result<Response, Error> {
        let mut req = Request::get(path);
        if let Some(r) = range {
            if r.is_empty() {
                return Err(Error::Request {
                    operation: operation.to_string(),
                    message: format!("empty range {r:?}"),
                });
            }
            req = req.header(header::RANGE, format!("bytes={}-{}", r.start, r.end - 1));
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| Error::Request {
                operation: operation.to_string(),
                message: e.to_string(),
            })?;
        self.send(operation, req).await
    }
}

/// An `Authorization: Basic` value for `user` and `password`.
pub fn basic_auth(user: &str, password: &str) -> HeaderValue {
    let v = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    let mut v = HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    v.set_sensitive(true);
    v
}

/// A response whose body is read as it arrives ([`Client::open`]).
pub struct BodyStream {
    body: hyper::body::Incoming,
    /// Longest wait for the next bytes.
    idle: Duration,
    address: String,
    operation: String,
}

impl fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyStream")
            .field("address", &self.address)
            .field("operation", &self.operation)
            .finish_non_exhaustive()
    }
}

impl BodyStream {
    /// The next bytes of the body (None at its end). A body cut short of its declared
    /// length, or silent for longer than the idle bound, is an error.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            let frame = tokio::time::timeout(self.idle, self.body.frame())
                .await
                .map_err(|_| Error::Timeout {
                    operation: format!("{} on {} (no bytes)", self.operation, self.address),
                    after: self.idle,
                })?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(Error::Transport {
                        address: self.address.clone(),
                        operation: self.operation.clone(),
                        message: e.to_string(),
                    });
                }
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data()
                        && !data.is_empty()
                    {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

/// What [`Client::get_range_into`] got.
#[derive(Debug)]
pub struct RangeRead {
    /// The response status (`206` when the range came).
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// Bytes of the destination filled (all of it on success).
    pub filled: usize,
}

impl Client {
    /// Send `req` on a connection of its own and return the response with its body not
    /// yet read: for bodies read as they arrive (a whole image). The wait for each part
    /// of the body is bounded by the call timeout, not the whole response.
    pub async fn open(
        &self,
        operation: &str,
        req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, HeaderMap, BodyStream), Error> {
        let req = self.prepare(operation, req)?;
        let mut sender = self.connect().await?;
        let after = self.opts.call_timeout;
        let address = self.endpoint.authority();
        let transport_err = |message: String| Error::Transport {
            address: address.clone(),
            operation: operation.to_string(),
            message,
        };
        let resp = tokio::time::timeout(after, async {
            sender
                .ready()
                .await
                .map_err(|e| transport_err(e.to_string()))?;
            sender
                .send_request(req)
                .await
                .map_err(|e| transport_err(e.to_string()))
        })
        .await
        .map_err(|_| Error::Timeout {
            operation: format!("{operation} on {address}"),
            after,
        })??;
        let (parts, body) = resp.into_parts();
        Ok((
            parts.status,
            parts.headers,
            BodyStream {
                body,
                idle: after,
                address,
                operation: operation.to_string(),
            },
        ))
    }

    /// `GET path` of the bytes `start .. start + dst.len()`, read straight into `dst`
    /// on the kept-alive connection. On `206 Partial Content` the body fills `dst`
    /// ([`RangeRead::filled`] says how far it got when the connection failed, so the
    /// caller can ask for the rest); any other status is returned with nothing read. A
    /// body longer than asked is an error.
    pub async fn get_range_into(
        &self,
        operation: &str,
        path: &str,
        start: u64,
        dst: &mut [u8],
    ) -> Result<RangeRead, (usize, Error)> {
        if dst.is_empty() {
            return Err((
                0,
                Error::Request {
                    operation: operation.to_string(),
                    message: "an empty range".to_string(),
                },
            ));
        }
        let end = start + dst.len() as u64 - 1;
        let req = Request::get(path)
            .header(header::RANGE, format!("bytes={start}-{end}"))
            .body(Full::new(Bytes::new()))
            .map_err(|e| {
                (
                    0,
                    Error::Request {
                        operation: operation.to_string(),
                        message: e.to_string(),
                    },
                )
            })?;
        let req = self.prepare(operation, req).map_err(|e| (0, e))?;
        let mut guard = self.conn.lock().await;
        let mut sender = match guard.take().filter(|s| !s.is_closed()) {
            Some(s) => s,
            None => self.connect().await.map_err(|e| (0, e))?,
        };
        let after = self.opts.call_timeout;
        let address = self.endpoint.authority();
        let mut filled = 0usize;
        let result = tokio::time::timeout(after, async {
            let transport_err = |message: String| Error::Transport {
                address: address.clone(),
                operation: operation.to_string(),
                message,
            };
            sender
                .ready()
                .await
                .map_err(|e| transport_err(e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| transport_err(e.to_string()))?;
            let (parts, mut body) = resp.into_parts();
            if parts.status != StatusCode::PARTIAL_CONTENT {
                return Ok((parts, false));
            }
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| transport_err(e.to_string()))?;
                if let Ok(data) = frame.into_data() {
                    let room = dst.len() - filled;
                    if data.len() > room {
                        return Err(transport_err(format!(
                            "the server sent more than the {} bytes asked for",
                            dst.len()
                        )));
                    }
                    dst[filled..filled + data.len()].copy_from_slice(&data);
                    filled += data.len();
                }
            }
            Ok((parts, true))
        })
        .await;
        match result {
            Err(_) => Err((
                filled,
                Error::Timeout {
                    operation: format!("{operation} on {address}"),
                    after,
                },
            )),
            Ok(Err(e)) => Err((filled, e)),
            Ok(Ok((parts, whole))) => {
                // A connection whose body was read to its end can carry the next request.
                if whole {
                    *guard = Some(sender);
                }
                Ok(RangeRead {
                    status: parts.status,
                    headers: parts.headers,
                    filled,
                })
            }
        }
    }
}

fn clone_request(req: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut r = Request::new(req.body().clone());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    r
}
