//! The upload server: the pod side of an upload, as KubeVirt CDI's `cdi-uploadserver`
//! (`pkg/uploadserver/uploadserver.go`) and Deckhouse's uploader serve it.
//!
//! - Paths: CDI's `/v1beta1/upload`, `/v1beta1/upload-async`, `/v1beta1/upload-form`,
//!   `/v1beta1/upload-form-async` and their `v1alpha1` aliases ([`CDI_PATHS`]), and
//!   Deckhouse's `/upload` and `/upload/<token>`. `POST` or `PUT` of the raw body, or of
//!   a `multipart/form-data` body on the form paths (part `file`, [`multipart`]).
//!   `GET /upload` answers 200 (an ingress's readiness check), `HEAD` on the async paths
//!   200 (as CDI), `/healthz` `OK`, `/metrics` the progress ([`crate::report::metrics`]).
//! - The token: `Authorization: Bearer TOKEN`, or the last path segment of
//!   `/upload/<token>`; compared in constant time. None → 401, a wrong one → 403.
//! - One upload: a second while one runs → 503, any after one completed → 409 (as CDI).
//! - The body is the input of one job ([`crate::job::run`]), exactly as `ferry copy -`
//!   reads standard input: the format layer looks at its first bytes, decompresses
//!   gzip/xz/zstd, reads a VMDK stream, and stages an image that needs random access
//!   (qcow2, …) to the scratch directory when there is one. A body that stops early
//!   fails the copy; the target is never reported complete.
//! - The synchronous paths answer once the disk is durable on the target (200), or with
//!   the failure (CDI's words: 400 "Saving stream failed: effective image size is larger
//!   than the reported available storage: …" for a target too small, else 500 "Saving
//!   stream failed: …"); the async paths answer 200 once every byte has arrived, and
//!   the copy goes on.
//!
//! [`UploadServer::finished`] yields the outcome of the one upload, after which the
//! caller writes the termination message and stops the server (CDI's uploadserver
//! exits after one upload).

pub mod body;
pub mod multipart;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::{mpsc, oneshot};

use crate::engine::IoEngine;
use crate::error::{Error, TargetProblem};
use crate::http_server::{self, Limits, Running};
use crate::progress::Progress;
use crate::report::metrics::Metrics;
use crate::source::Input;

/// The port CDI's upload server listens on (its Service's target port).
pub const DEFAULT_UPLOAD_PORT: u16 = 8443;
/// Deckhouse's upload path (`https://…/upload/<secret>`).
pub const UPLOAD_PATH: &str = "/upload";
/// The readiness path CDI's upload pod is probed on.
pub const HEALTHZ_PATH: &str = "/healthz";
/// CDI's paths (`pkg/common/common.go`): (path, multipart form, async).
pub const CDI_PATHS: [(&str, bool, bool); 8] = [
    ("/v1beta1/upload", false, false),
    ("/v1alpha1/upload", false, false),
    ("/v1beta1/upload-async", false, true),
    ("/v1alpha1/upload-async", false, true),
    ("/v1beta1/upload-form", true, false),
    ("/v1alpha1/upload-form", true, false),
    ("/v1beta1/upload-form-async", true, true),
    ("/v1alpha1/upload-form-async", true, true),
];
/// Longest token accepted (in a header or a path).
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Longest wait for the next bytes of an upload's body (CDI's HTTP importer gives up
/// after 10 minutes without new bytes).
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Time allowed for a request's headers (CDI's `ReadHeaderTimeout`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// hyper's read buffer: the most one read of a body takes.
pub const READ_BUFFER_BYTES: usize = 1 << 20;
/// How long stopping waits for the last answer to be sent.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The mode a finished image file is left with (as CDI: group-writable for the pod's
/// fsGroup).
pub const IMAGE_MODE: u32 = 0o660;

/// The upload server's bounds (no lifetime: an upload takes as long as it takes).
pub const LIMITS: Limits = Limits {
    max_connections: MAX_CONNECTIONS,
    handshake_timeout: HEADER_READ_TIMEOUT,
    header_read_timeout: HEADER_READ_TIMEOUT,
    max_header_bytes: MAX_HEADER_BYTES,
    read_buffer_bytes: READ_BUFFER_BYTES,
    connection_lifetime: None,
    shutdown_grace: SHUTDOWN_GRACE,
};

/// Errors starting the upload server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    /// A certificate or key file could not be read or used.
    #[error("{}: {message}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The TLS configuration was refused.
    #[error("cannot set up TLS for the upload server: {0}")]
    Tls(rustls::Error),
    /// The address could not be bound.
    #[error("cannot listen for uploads on {addr}: {error}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// No token was given.
    #[error("an upload token is required (--token or FERRY_UPLOAD_TOKEN)")]
    NoToken,
}

/// The server's TLS configuration from a PEM certificate chain and a PEM private key.
pub fn tls_from_pem(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, UploadError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem_err = |path: &Path, message: String| UploadError::Pem {
        path: path.to_path_buf(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_err(cert, "holds no PEM certificate".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e.to_string()))?;
    http_server::tls_config(chain, key_der).map_err(UploadError::Tls)
}

/// What one upload writes and how.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file (created or truncated, as `ferry copy`'s target) or block device.
    pub target: PathBuf,
    /// The secret a client must present.
    pub token: String,
    /// Where an image that needs random access is staged (CDI mounts `/scratch`).
    pub scratch: Option<PathBuf>,
    /// The requested size of the volume (`UPLOAD_IMAGE_SIZE`): a file target is grown
    /// to the volume's usable size within it, as CDI does.
    pub image_size: Option<u64>,
    /// Fraction of a filesystem volume kept for the filesystem (`FILESYSTEM_OVERHEAD`).
    pub filesystem_overhead: f64,
    /// Allocate the target first (`PREALLOCATION`).
    pub preallocation: bool,
    /// The pipeline's settings.
    pub tuning: crate::job::Tuning,
    /// Longest wait for the body's next bytes.
    pub body_idle: Duration,
}

/// What the one upload did.
#[derive(Debug)]
pub struct Finished {
    /// The job's outcome, or why it failed.
    pub result: Result<crate::job::Outcome, Error>,
    /// Bytes of the request body received.
    pub received: u64,
}

/// A running upload server.
pub struct UploadServer {
    running: Running,
    shared: Arc<Shared>,
    uploads: mpsc::Receiver<Pending>,
}

impl std::fmt::Debug for UploadServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadServer")
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

/// An upload accepted by a request handler, for [`UploadServer::serve_one`] to copy.
struct Pending {
    body: body::UploadBody<Incoming>,
    raw_len: Option<u64>,
    answer: oneshot::Sender<Response<Full<Bytes>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Uploading,
    Done,
    Failed,
}

struct Shared {
    settings: Settings,
    engine: Arc<dyn IoEngine>,
    progress: Arc<Progress>,
    metrics: Metrics,
    phase: Mutex<Phase>,
    uploads: mpsc::Sender<Pending>,
}

impl UploadServer {
    /// Listen on `addr` (over TLS when `tls` is given) and serve one upload into
    /// `settings.target`, counting progress in `progress` (whose samplers feed
    /// `metrics`, which `/metrics` serves).
    pub fn start(
        addr: SocketAddr,
        tls: Option<rustls::ServerConfig>,
        settings: Settings,
        engine: Arc<dyn IoEngine>,
        progress: Arc<Progress>,
        metrics: Metrics,
    ) -> Result<UploadServer, UploadError> {
        if settings.token.is_empty() {
            return Err(UploadError::NoToken);
        }
        let listener =
            http_server::bind(addr).map_err(|error| UploadError::Bind { addr, error })?;
        let (tx, uploads) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            settings,
            engine,
            progress,
            metrics,
            phase: Mutex::new(Phase::Idle),
            uploads: tx,
        });
        let for_handler = shared.clone();
        let handler: http_server::Handler = Arc::new(move |req: Request<Incoming>| {
            let shared = for_handler.clone();
            Box::pin(async move { answer(shared, req).await })
        });
        let tls = tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let running = http_server::spawn(listener, tls, LIMITS, handler, "upload")
            .map_err(|error| UploadError::Bind { addr, error })?;
        let local = running.local_addr();
        tracing::info!(addr = %local, "serving uploads on {scheme}://{local}{UPLOAD_PATH}");
        Ok(UploadServer {
            running,
            shared,
            uploads,
        })
    }

    /// The address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.running.local_addr()
    }

    /// Wait for the upload and copy it, in this task (a signal that ends the caller
    /// ends the copy); the client is answered as the path says.
    pub async fn serve_one(&mut self) -> Finished {
        let Some(p) = self.uploads.recv().await else {
            return Finished {
                result: Err(Error::Internal("the upload server stopped")),
                received: 0,
            };
        };
        let shared = &self.shared;
        let progress = shared.progress.clone();
        let result = copy_upload(shared, Box::new(p.body), p.raw_len).await;
        let received = progress.downloaded();
        let response = match &result {
            Ok(o) => {
                tracing::info!(
                    size = o.stats.size, received, bytes_written = o.stats.bytes_written,
                    bytes_zeroed = o.stats.bytes_zeroed, seconds = o.stats.seconds,
                    target = %shared.settings.target.display(),
                    "Upload Complete"
                );
                text(
                    StatusCode::OK,
                    format!(
                        "Upload Complete: {received} bytes received, a disk of {} bytes written\n",
                        o.stats.size
                    ),
                )
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), received, "the upload failed; the target is incomplete");
                failure_answer(e)
            }
        };
        *shared
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = if result.is_ok() {
            Phase::Done
        } else {
            Phase::Failed
        };
        let _ = p.answer.send(response);
        Finished { result, received }
    }

    /// Stop, letting the last answer be sent (at most [`SHUTDOWN_GRACE`]).
    pub async fn shutdown(self) {
        self.running.shutdown().await;
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Healthz,
    Metrics,
    /// `GET /upload`: ready.
    Ready,
    /// `HEAD` on an async path.
    AsyncProbe,
    Upload {
        form: bool,
        asynchronous: bool,
        path_token: Option<&'a str>,
    },
    WrongMethod,
    NotFound,
}

fn route<'a>(method: &Method, path: &'a str) -> Route<'a> {
    let upload_method = method == Method::POST || method == Method::PUT;
    if path == HEALTHZ_PATH {
        return Route::Healthz;
    }
    if path == crate::report::server::METRICS_PATH {
        return Route::Metrics;
    }
    let deckhouse = match path.strip_prefix(UPLOAD_PATH) {
        Some("" | "/") => Some(None),
        Some(rest) => rest
            .strip_prefix('/')
            .filter(|t| !t.contains('/'))
            .map(Some),
        None => None,
    };
    if let Some(path_token) = deckhouse {
        return match method {
            m if m == Method::GET || m == Method::HEAD => Route::Ready,
            _ if upload_method => Route::Upload {
                form: false,
                asynchronous: false,
                path_token,
            },
            _ => Route::WrongMethod,
        };
    }
    let Some((_, form, asynchronous)) = CDI_PATHS.iter().find(|(p, _, _)| *p == path) else {
        return Route::NotFound;
    };
    match method {
        m if m == Method::HEAD && *asynchronous => Route::AsyncProbe,
        _ if upload_method => Route::Upload {
            form: *form,
            asynchronous: *asynchronous,
            path_token: None,
        },
        _ => Route::WrongMethod,
    }
}

/// Whether `given` is `expected`, in time that depends on neither (both are hashed
/// first, so not even the length shows).
pub fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    use sha2::Digest;
    let a = sha2::Sha256::digest(given);
    let b = sha2::Sha256::digest(expected);
    let diff = a.iter().zip(b.iter()).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The token a request presents: its Bearer authorization, else its path's.
fn presented<'a>(req: &'a Request<Incoming>, path_token: Option<&'a str>) -> Option<Vec<u8>> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let v = v.as_bytes();
        let token = v
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
            .map(|_| v[7..].trim_ascii());
        return Some(token.unwrap_or(b"").to_vec());
    }
    path_token.map(|t| percent_encoding::percent_decode_str(t).collect())
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if !status.is_success() {
        // The body may not have been read: this connection carries nothing more.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

async fn answer(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    match route(req.method(), &path) {
        Route::Healthz => text(StatusCode::OK, "OK"),
        Route::Metrics => {
            crate::report::server::respond_to(&shared.metrics, req.method(), METRICS_GET)
        }
        Route::Ready | Route::AsyncProbe => text(StatusCode::OK, ""),
        Route::WrongMethod => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use POST or PUT\n");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST, PUT"));
            r
        }
        Route::NotFound => text(StatusCode::NOT_FOUND, "not found\n"),
        Route::Upload {
            form,
            asynchronous,
            path_token,
        } => {
            let path_token = path_token.map(str::to_string);
            match refusal(&shared, &req, form, path_token.as_deref()) {
                Some(r) => {
                    // A client waiting for `100 Continue` is answered at once, its body
                    // never asked for; one already sending is read first, so the
                    // answer reaches it rather than a reset.
                    let waits = req
                        .headers()
                        .get(header::EXPECT)
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
                    if !waits {
                        body::drain(req.into_body()).await;
                    }
                    r
                }
                None => upload(shared, req, form, asynchronous).await,
            }
        }
    }
}

/// `/metrics`, for [`crate::report::server::respond_to`].
const METRICS_GET: &str = crate::report::server::METRICS_PATH;

/// Why this upload request is refused (auth, form, another upload), if it is; a
/// request that is not refused has claimed the one upload.
fn refusal(
    shared: &Shared,
    req: &Request<Incoming>,
    form: bool,
    path_token: Option<&str>,
) -> Option<Response<Full<Bytes>>> {
    match presented(req, path_token) {
        None => {
            tracing::warn!(path = req.uri().path(), "an upload without a token");
            return Some(text(
                StatusCode::UNAUTHORIZED,
                "an upload token is required: Authorization: Bearer TOKEN, or /upload/TOKEN\n",
            ));
        }
        Some(t)
            if t.len() > MAX_TOKEN_BYTES
                || !token_matches(&t, shared.settings.token.as_bytes()) =>
        {
            tracing::warn!(path = req.uri().path(), "an upload with a wrong token");
            return Some(text(StatusCode::FORBIDDEN, "the upload token is wrong\n"));
        }
        Some(_) => {}
    }
    if form && let Err(e) = multipart::boundary(content_type(req)) {
        return Some(text(StatusCode::BAD_REQUEST, format!("{e}\n")));
    }
    {
        let mut phase = shared
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *phase {
            Phase::Uploading => {
                tracing::warn!("an upload while one is in progress");
                return Some(text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "an upload is already in progress\n",
                ));
            }
            Phase::Done => {
                tracing::warn!("an upload after the upload completed");
                return Some(text(
                    StatusCode::CONFLICT,
                    "the upload is already complete\n",
                ));
            }
            Phase::Failed => {
                return Some(text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the upload failed; the server is stopping\n",
                ));
            }
            Phase::Idle => *phase = Phase::Uploading,
        }
    }
    None
}

fn content_type(req: &Request<Incoming>) -> &str {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The upload claimed by [`refusal`]: its body handed to [`UploadServer::serve_one`].
async fn upload(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    form: bool,
    asynchronous: bool,
) -> Response<Full<Bytes>> {
    let multipart = if form {
        multipart::boundary(content_type(&req))
            .ok()
            .map(|b| multipart::Multipart::new(&b))
    } else {
        None
    };
    let len = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    tracing::info!(
        path = req.uri().path(),
        method = %req.method(),
        content_length = ?len,
        form,
        asynchronous,
        "upload started"
    );
    let (received_tx, received) = oneshot::channel();
    let (drained_tx, drained) = oneshot::channel();
    let (answer_tx, answer_rx) = oneshot::channel();
    let downloaded = shared.progress.downloaded_counter();
    let body = body::UploadBody::new(
        req.into_body(),
        len,
        multipart,
        shared.settings.body_idle,
        downloaded,
        received_tx,
    )
    .drained(drained_tx);
    let raw_len = if form { None } else { len };
    // The copy runs in the server's owner ([`UploadServer::serve_one`]): a client that
    // goes away ends the body, not the copy.
    let pending = Pending {
        body,
        raw_len,
        answer: answer_tx,
    };
    if shared.uploads.send(pending).await.is_err() {
        return internal();
    }
    if asynchronous {
        tokio::select! {
            Ok(()) = received => {
                tracing::info!("every byte received; answering the async upload while the copy goes on");
                return text(StatusCode::OK, "Upload received; writing the disk goes on\n");
            }
            a = answer_rx => return after_drain(a.unwrap_or_else(|_| internal()), drained).await,
        }
    }
    after_drain(answer_rx.await.unwrap_or_else(|_| internal()), drained).await
}

/// A failure is answered once the rest of the body has been read (bounded by
/// [`body::DRAIN_TIME`]): closing a connection with unread bytes resets it, and a
/// client still sending would lose the answer.
async fn after_drain(
    r: Response<Full<Bytes>>,
    drained: oneshot::Receiver<()>,
) -> Response<Full<Bytes>> {
    if !r.status().is_success() {
        let _ = tokio::time::timeout(body::DRAIN_TIME + Duration::from_secs(1), drained).await;
    }
    r
}

fn internal() -> Response<Full<Bytes>> {
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Saving stream failed: the copy ended without a result",
    )
}

/// CDI's answer to a failed upload (`handleStreamError`).
fn failure_answer(e: &Error) -> Response<Full<Bytes>> {
    let no_room = matches!(
        e,
        Error::TargetUnusable(
            TargetProblem::TooSmall { .. }
                | TargetProblem::StreamTooLarge { .. }
                | TargetProblem::VolumeTooSmall { .. }
        )
    );
    let line = format!("{e:#}").replace('\n', " ");
    if no_room {
        text(
            StatusCode::BAD_REQUEST,
            format!(
                "Saving stream failed: effective image size is larger than the reported available storage: {line}\n"
            ),
        )
    } else {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Saving stream failed: {line}\n"),
        )
    }
}

/// The description of the upload's bytes (the format layer appends what it peels).
const WHAT: &str = "the upload";

/// Bytes an existing regular file holds on its volume (0 if none): a new upload
/// replaces it, so its blocks count as free.
fn allocated_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p)
        .ok()
        .filter(|m| m.file_type().is_file())
        .map_or(0, |m| m.blocks() * 512)
}

/// Whether `p` is a block device.
fn is_block_device(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device())
}

/// The copy of one upload: the body through the format layer into one job.
async fn copy_upload(
    shared: &Shared,
    reader: Box<dyn std::io::Read + Send>,
    raw_len: Option<u64>,
) -> Result<crate::job::Outcome, Error> {
    let s = &shared.settings;
    let input = Input::Stream(Box::new(crate::source::stream::ReadStream::new(
        WHAT.into(),
        raw_len,
        reader,
        None,
    )));
    let layering = crate::source::layers::Layering {
        member: None,
        scratch: s
            .scratch
            .as_deref()
            .map(|dir| crate::source::scratch::Scratch {
                dir,
                engine: shared.engine.clone(),
            }),
        forced: None,
    };
    let input = crate::source::layers::layer(input, &layering).await?;
    // A raw body is the disk as it is: its size is the Content-Length.
    let mut input = match input {
        Input::Stream(st) if raw_len.is_some() && st.describe() == WHAT => match st.into_bytes() {
            Ok((what, reader, under, _)) => Input::Stream(Box::new(
                crate::source::stream::ReadStream::new(what, raw_len, reader, under),
            )),
            Err(st) => Input::Stream(st),
        },
        other => other,
    };
    let size = input.size();
    let file_target = !is_block_device(&s.target);
    let usable = if file_target {
        let dir = s
            .target
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let available = crate::import::run::available_bytes(dir)
            .map(|a| a.saturating_add(allocated_bytes(&s.target)));
        match available {
            Ok(a) => {
                let usable =
                    crate::import::run::usable_space(a, s.image_size, s.filesystem_overhead);
                if let Some(size) = size
                    && size > usable
                {
                    input.close().await;
                    return Err(TargetProblem::VolumeTooSmall {
                        needed: size,
                        usable,
                        dir: dir.to_path_buf(),
                        overhead: Some(s.filesystem_overhead),
                    }
                    .into());
                }
                Some(usable)
            }
            Err(e) => {
                input.close().await;
                return Err(e);
            }
        }
    } else {
        None
    };
    tracing::info!(source = %input.describe(), size = ?size, target = %s.target.display(), "writing the upload");
    let job = crate::job::Job {
        source: input,
        reopen: None,
        target: &s.target,
        plan: crate::job::Plan::full(),
        keep_larger: false,
        journal: None,
        protected: Vec::new(),
        preallocate: s.preallocation,
        tuning: s.tuning.clone(),
        engine: shared.engine.clone(),
        finish: crate::job::Finish {
            // As CDI's ResizeImage: a file grown to the usable size within the request.
            grow_to: s.image_size.and(usable),
            round_marker: None,
            mode: file_target.then_some(IMAGE_MODE),
        },
    };
    crate::job::run(job, shared.progress.clone()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_cdis_and_deckhouses() {
        let post = Method::POST;
        assert_eq!(
            route(&post, "/v1beta1/upload-form-async"),
            Route::Upload {
                form: true,
                asynchronous: true,
                path_token: None
            }
        );
        assert_eq!(
            route(&Method::PUT, "/upload/s3cr3t"),
            Route::Upload {
                form: false,
                asynchronous: false,
                path_token: Some("s3cr3t")
            }
        );
        assert_eq!(
            route(&post, "/upload"),
            Route::Upload {
                form: false,
                asynchronous: false,
                path_token: None
            }
        );
        assert_eq!(route(&Method::GET, "/upload"), Route::Ready);
        assert_eq!(route(&Method::GET, "/upload/x"), Route::Ready);
        assert_eq!(
            route(&Method::HEAD, "/v1alpha1/upload-async"),
            Route::AsyncProbe
        );
        assert_eq!(route(&Method::HEAD, "/v1beta1/upload"), Route::WrongMethod);
        assert_eq!(route(&Method::GET, "/v1beta1/upload"), Route::WrongMethod);
        assert_eq!(route(&post, "/upload/a/b"), Route::NotFound);
        assert_eq!(route(&post, "/uploadx"), Route::NotFound);
        assert_eq!(route(&post, "/v1beta1/upload-archive"), Route::NotFound);
        assert_eq!(route(&Method::GET, "/healthz"), Route::Healthz);
        assert_eq!(route(&Method::GET, "/metrics"), Route::Metrics);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abd", b"abc"));
        assert!(!token_matches(b"ab", b"abc"));
        assert!(!token_matches(b"", b"abc"));
    }
}
