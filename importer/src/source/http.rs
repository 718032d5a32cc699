//! `http://` and `https://` sources, through the shared client ([`ferry_http`]: its
//! proxies, trust settings and bounds).
//!
//! Opening follows redirects (at most [`MAX_REDIRECTS`]) and then asks for the whole
//! body with `Range: bytes=0-`:
//! - a server that answers `206` with the total size serves ranges: the URL is a
//!   [`Source`] ([`HttpSource`]) read with ranged GETs on a pool of kept-alive
//!   connections, so an image's map is read first and its data fetched in parallel,
//!   each read resumed at the byte it got to when a connection drops;
//! - a server that answers `200` does not: the body already coming is the input, read
//!   once in order ([`HttpStream`]); a format that needs random access is then refused
//!   by the format layer.
//!
//! Every byte received is counted ([`Downloaded`]) for progress.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use ferry_cbt::{Extent, ExtentKind, ExtentMap};
use ferry_http::{
    BodyStream, Client, ClientOptions, Endpoint, HeaderMap, Request, Scheme, StatusCode, TlsPolicy,
    header,
};

use super::Source;
use super::stream::ReadStream;
use crate::buf::Buf;
use crate::engine::BoxFuture;
use crate::error::{Error, Retry};
pub use crate::progress::Downloaded;

/// Most redirects followed before the URL is given up on (Go's client stops at 10).
pub const MAX_REDIRECTS: usize = 10;
/// Ranged requests in flight at once on one URL (each on its own connection).
pub const DEFAULT_HTTP_CONNECTIONS: usize = 8;
/// Largest single ranged GET.
pub const HTTP_MAX_READ: u64 = 4 << 20;
/// Attempts at one ranged read before its failure is the copy's (each resumes where
/// the previous one stopped).
pub const HTTP_READ_ATTEMPTS: u32 = 5;
/// Longest `Location` header followed.
pub const MAX_LOCATION_BYTES: usize = 8192;

/// How an HTTP(S) source is reached.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// How the server's certificate is checked (`https://`).
    pub tls: TlsPolicy,
    /// Proxies, timeouts, extra headers.
    pub client: ClientOptions,
    /// Ranged requests in flight at once.
    pub connections: usize,
    /// Where the bytes received are counted.
    pub downloaded: Downloaded,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            tls: TlsPolicy {
                system_roots: true,
                ..Default::default()
            },
            client: ClientOptions::from_env(),
            connections: DEFAULT_HTTP_CONNECTIONS,
            downloaded: Downloaded::default(),
        }
    }
}

/// Whether `spec` is an `http://` or `https://` URL.
pub fn is_http_url(spec: &str) -> bool {
    let lower = spec.get(..8).unwrap_or(spec).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// The URL without credentials or query (which may carry a signature), for logs.
pub fn redact(url: &str) -> String {
    let cut = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..cut];
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s && !url[s + 3..at].contains('/') => {
            format!("{}://{}", &url[..s], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn http_err(url: &str, error: ferry_http::Error) -> Error {
    Error::Http {
        url: redact(url),
        error,
    }
}

fn status_err(url: &str, status: StatusCode, what: &str) -> Error {
    Error::HttpStatus {
        url: redact(url),
        status: status.as_u16(),
        message: what.to_string(),
    }
}

/// A client for `url` and the path (and query) to ask it for.
pub(crate) fn client_for(url: &str, opts: &HttpOptions) -> Result<(Client, String), Error> {
    let (ep, parsed) = Endpoint::parse(url, Scheme::Https).map_err(|m| {
        http_err(
            url,
            ferry_http::Error::Config(format!("invalid URL {:?}: {m}", redact(url))),
        )
    })?;
    let mut copts = opts.client.clone();
    if let Some(userinfo) = parsed.userinfo {
        let decoded = percent_encoding::percent_decode_str(&userinfo).decode_utf8_lossy();
        let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
        copts.headers.push((
            header::AUTHORIZATION,
            ferry_http::basic_auth(user, password),
        ));
    }
    let path = ep.path.clone();
    let c = Client::new(ep, &opts.tls, copts).map_err(|e| http_err(url, e))?;
    Ok((c, path))
}

/// Longest header value accepted (`--http-header`, `IMPORTER_EXTRA_HEADER_n`).
pub const MAX_HEADER_BYTES: usize = 8192;

/// `Name: value` as a header (CDI's extra headers are written so).
pub fn parse_header(s: &str) -> Result<(header::HeaderName, header::HeaderValue), String> {
    if s.len() > MAX_HEADER_BYTES {
        return Err(format!("longer than {MAX_HEADER_BYTES} bytes"));
    }
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| "expected \"Name: value\"".to_string())?;
    let name = header::HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{:?} is not a header name", name.trim()))?;
    let mut value = header::HeaderValue::from_str(value.trim())
        .map_err(|_| "the value holds characters a header cannot".to_string())?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// The URL a redirect's `Location` names, from the URL that answered.
pub(crate) fn resolve(base: &str, location: &str) -> String {
    if is_http_url(location) {
        return location.to_string();
    }
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| i + scheme_end);
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{}{rest}", &base[..scheme_end]);
    }
    if location.starts_with('/') {
        return format!("{}{location}", &base[..path_start]);
    }
    let path = &base[path_start..];
    let path = &path[..path.find(['?', '#']).unwrap_or(path.len())];
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    format!("{}{dir}{location}", &base[..path_start])
}

/// The `host[:port]` of a URL, lower-cased (for comparing redirect hops).
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, h)| h)
        .to_ascii_lowercase()
}

/// `bytes START-END/TOTAL` → (START, END, TOTAL).
fn content_range(h: &HeaderMap) -> Option<(u64, u64, Option<u64>)> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let v = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = v.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?, total))
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Open `url`: a [`HttpSource`] when its server serves ranges, else the body as a
/// stream.
pub async fn open(url: &str, opts: &HttpOptions) -> Result<super::Input, Error> {
    let downloaded = &opts.downloaded;
    let mut url = url.to_string();
    let mut hop_opts: Option<HttpOptions> = None;
    for _ in 0..=MAX_REDIRECTS {
        let opts = hop_opts.as_ref().unwrap_or(opts);
        let (client, path) = client_for(&url, opts)?;
        let req = Request::get(path.as_str())
            .header(header::RANGE, "bytes=0-")
            .body(ferry_http::Full::new(ferry_http::Bytes::new()))
            .map_err(|_| Error::Internal("an HTTP request could not be built"))?;
        let (status, headers, body) = client
            .open("GET", req)
            .await
            .map_err(|e| http_err(&url, e))?;
        if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
            let loc = headers
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .filter(|l| !l.is_empty() && l.len() <= MAX_LOCATION_BYTES)
                .ok_or_else(|| status_err(&url, status, "a redirect without a usable Location"))?;
            let next = resolve(&url, loc);
            tracing::info!(from = %redact(&url), to = %redact(&next), status = status.as_u16(), "redirected");
            // As Go's client: credentials are not sent on to another host (a registry's
            // blob redirected to a signed storage URL would even be refused with them).
            if host_of(&next) != host_of(&url) {
                let mut o = opts.clone();
                o.client
                    .headers
                    .retain(|(n, _)| *n != header::AUTHORIZATION && *n != header::COOKIE);
                hop_opts = Some(o);
            }
            url = next;
            continue;
        }
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let Some((0, _, Some(total))) = content_range(&headers) else {
                    return Err(status_err(
                        &url,
                        status,
                        "a partial answer without the total size in Content-Range",
                    ));
                };
                drop(body);
                downloaded.set_size(total);
                let s = HttpSource::new(&url, client, path, total, opts, downloaded.clone())?;
                tracing::info!(url = %redact(&url), size = total, connections = s.s.clients.len(), "HTTP source serves ranges");
                return Ok(super::Input::Disk(Arc::new(s)));
            }
            StatusCode::OK => {
                let len = content_length(&headers);
                downloaded.set_size(len.unwrap_or(0));
                tracing::info!(url = %redact(&url), size = ?len, "HTTP source without ranges: read in order, once");
                let reader = HttpStream {
                    body,
                    len,
                    got: 0,
                    chunk: ferry_http::Bytes::new(),
                    handle: tokio::runtime::Handle::current(),
                    url: redact(&url),
                    downloaded: downloaded.clone(),
                };
                return Ok(super::Input::Stream(Box::new(ReadStream::new(
                    redact(&url),
                    len,
                    Box::new(reader),
                    None,
                ))));
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                // Only an empty body has no byte 0.
                if matches!(content_range_unsatisfied(&headers), Some(0)) {
                    let s = HttpSource::new(&url, client, path, 0, opts, downloaded.clone())?;
                    return Ok(super::Input::Disk(Arc::new(s)));
                }
                return Err(status_err(&url, status, "the server refused the range 0-"));
            }
            s => return Err(status_err(&url, s, s.canonical_reason().unwrap_or(""))),
        }
    }
    Err(status_err(
        &url,
        StatusCode::LOOP_DETECTED,
        &format!("more than {MAX_REDIRECTS} redirects"),
    ))
}

/// `bytes */TOTAL` of a 416 answer.
fn content_range_unsatisfied(h: &HeaderMap) -> Option<u64> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    v.trim().strip_prefix("bytes */")?.trim().parse().ok()
}

/// A URL whose server serves byte ranges.
#[derive(Debug, Clone)]
pub struct HttpSource {
    s: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    url: String,
    path: String,
    size: u64,
    clients: Vec<Client>,
    free: std::sync::Mutex<Vec<usize>>,
    permits: tokio::sync::Semaphore,
    downloaded: Downloaded,
}

impl HttpSource {
    fn new(
        url: &str,
        first: Client,
        path: String,
        size: u64,
        opts: &HttpOptions,
        downloaded: Downloaded,
    ) -> Result<HttpSource, Error> {
        let n = opts.connections.clamp(1, 64);
        let mut clients = vec![first];
        for _ in 1..n {
            clients.push(client_for(url, opts)?.0);
        }
        Ok(HttpSource {
            s: Arc::new(Shared {
                url: redact(url),
                path,
                size,
                free: std::sync::Mutex::new((0..n).collect()),
                permits: tokio::sync::Semaphore::new(n),
                clients,
                downloaded,
            }),
        })
    }
}

impl Shared {
    fn take(&self) -> usize {
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
            .unwrap_or(0)
    }
    fn give(&self, i: usize) {
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(i);
    }

    /// `dst` from `offset`, resumed where a dropped connection stopped.
    async fn read_into(&self, c: &Client, offset: u64, dst: &mut [u8]) -> Result<(), Error> {
        let mut filled = 0usize;
        let mut attempt = 0u32;
        let read_err = |message: String, retry: Retry| Error::Read {
            offset,
            message: format!("{}: {message}", self.url),
            retry,
        };
        while filled < dst.len() {
            let at = offset + filled as u64;
            let problem = match c
                .get_range_into("GET", &self.path, at, &mut dst[filled..])
                .await
            {
                Ok(r) if r.status == StatusCode::PARTIAL_CONTENT => {
                    match content_range(&r.headers) {
                        Some((start, _, _)) if start == at => {}
                        _ => {
                            return Err(read_err(
                                format!(
                                    "the server answered the range from {at} with another range"
                                ),
                                Retry::Never,
                            ));
                        }
                    }
                    self.downloaded.add(r.filled as u64);
                    filled += r.filled;
                    if filled < dst.len() && r.filled == 0 {
                        return Err(read_err(
                            format!(
                                "the body ended at {at}, before the {} bytes the disk has",
                                self.size
                            ),
                            Retry::Never,
                        ));
                    }
                    continue;
                }
                Ok(r)
                    if r.status.is_server_error() || r.status == StatusCode::TOO_MANY_REQUESTS =>
                {
                    format!("the server answered {}", r.status)
                }
                // The URL answered when it was opened: a refusal now is most likely a
                // registry token or a signed URL that expired. Opening the source again
                // (the job's reconnect, bounded by its retries) asks for fresh ones.
                Ok(r)
                    if r.status == StatusCode::UNAUTHORIZED
                        || r.status == StatusCode::FORBIDDEN =>
                {
                    return Err(read_err(
                        format!(
                            "the server answered {} to a ranged GET at {at} (an expired token or signed URL?)",
                            r.status
                        ),
                        Retry::Reconnect,
                    ));
                }
                Ok(r) => {
                    return Err(read_err(
                        format!("the server answered {} to a ranged GET at {at}", r.status),
                        Retry::Never,
                    ));
                }
                Err((n, e)) => {
                    self.downloaded.add(n as u64);
                    filled += n;
                    if !e.is_transient() {
                        return Err(http_err(&self.url, e));
                    }
                    e.to_string()
                }
            };
            attempt += 1;
            if attempt >= HTTP_READ_ATTEMPTS {
                return Err(read_err(
                    format!("{problem} ({attempt} attempts)"),
                    Retry::Read,
                ));
            }
            let wait = Duration::from_millis(100 << attempt.min(6));
            tracing::debug!(url = %self.url, at, %problem, ?wait, "ranged GET failed; resuming");
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }
}

impl Source for HttpSource {
    fn describe(&self) -> String {
        self.s.url.clone()
    }

    fn size(&self) -> u64 {
        self.s.size
    }

    fn block_size(&self) -> u64 {
        1
    }

    fn max_read(&self) -> u64 {
        HTTP_MAX_READ
    }

    fn extents(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ExtentMap, Error>> {
        Box::pin(async move {
            let mut m = ExtentMap::new();
            let len = len.min(self.s.size.saturating_sub(offset));
            if len > 0 {
                m.push(Extent::new(offset, len, ExtentKind::Data))?;
            }
            Ok(m)
        })
    }

    fn read(&self, offset: u64, mut buf: Buf) -> BoxFuture<'static, Result<Buf, Error>> {
        let s = self.s.clone();
        Box::pin(async move {
            let end = offset.saturating_add(buf.len() as u64);
            if end > s.size {
                return Err(Error::Read {
                    offset,
                    message: format!("{}: a read past the end ({} bytes)", s.url, s.size),
                    retry: Retry::Never,
                });
            }
            let _permit = s
                .permits
                .acquire()
                .await
                .map_err(|_| Error::Internal("the HTTP connection pool was closed"))?;
            let i = s.take();
            let r = s.read_into(&s.clients[i], offset, buf.as_mut_slice()).await;
            s.give(i);
            r.map(|()| buf)
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The body of a URL whose server does not serve ranges, read in order on a blocking
/// thread (the format layer's decoders are blocking readers).
struct HttpStream {
    body: BodyStream,
    len: Option<u64>,
    got: u64,
    chunk: ferry_http::Bytes,
    handle: tokio::runtime::Handle,
    url: String,
    downloaded: Downloaded,
}

impl Read for HttpStream {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.chunk.is_empty() {
            match self.handle.block_on(self.body.chunk()) {
                Ok(Some(c)) => {
                    self.downloaded.add(c.len() as u64);
                    self.got += c.len() as u64;
                    self.chunk = c;
                }
                Ok(None) => {
                    if let Some(len) = self.len
                        && self.got != len
                    {
                        return Err(std::io::Error::other(format!(
                            "{}: the body ended after {} of its {len} bytes",
                            self.url, self.got
                        )));
                    }
                    return Ok(0);
                }
                Err(e) => {
                    return Err(std::io::Error::other(format!(
                        "{}: {e} after {} bytes (the server does not serve ranges, so the download cannot resume)",
                        self.url, self.got
                    )));
                }
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_against_the_url_that_answered() {
        let base = "http://h:8080/a/b/disk.img?sig=1";
        assert_eq!(resolve(base, "https://o/x"), "https://o/x");
        assert_eq!(resolve(base, "/x/y"), "http://h:8080/x/y");
        assert_eq!(resolve(base, "c.img"), "http://h:8080/a/b/c.img");
        assert_eq!(resolve(base, "//o:1/z"), "http://o:1/z");
        assert_eq!(resolve("http://h", "c.img"), "http://h/c.img");
    }

    #[test]
    fn urls_are_logged_without_credentials_or_query() {
        assert_eq!(redact("https://u:p@h/x?sig=abc"), "https://h/x");
        assert_eq!(redact("http://h/a@b"), "http://h/a@b");
    }

    #[test]
    fn content_range_is_read_strictly() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_RANGE, "bytes 0-99/1000".parse().unwrap());
        assert_eq!(content_range(&h), Some((0, 99, Some(1000))));
        h.insert(header::CONTENT_RANGE, "bytes 5-9/*".parse().unwrap());
        assert_eq!(content_range(&h), Some((5, 9, None)));
        h.insert(header::CONTENT_RANGE, "items 0-1/2".parse().unwrap());
        assert_eq!(content_range(&h), None);
    }
}
