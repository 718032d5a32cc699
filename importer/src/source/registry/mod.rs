//! `docker://` sources: a disk image inside a container image (KubeVirt's containerDisk,
//! built `FROM scratch` with `COPY disk.img /disk/`), pulled with the registry v2 API on
//! the shared HTTP client, as CDI's `registry` source pulls it.
//!
//! - **Reference** ([`reference`]): `docker://HOST[:PORT]/REPO[:TAG][@sha256:…]`.
//! - **Auth** ([`auth`]): `GET /v2/` first; a `401` names Basic (the credentials on every
//!   request) or Bearer (a token from the challenge's realm, asked with the credentials
//!   when there are any, anonymously otherwise, for `repository:REPO:pull`).
//! - **Manifests** ([`manifest`]): OCI and Docker schema 2 manifests and indexes; an
//!   index's entry is picked for linux and the architecture asked for (the host's by
//!   default); every manifest's digest is checked (against the reference's digest, the
//!   index entry's, or the registry's `Docker-Content-Digest`), and the config's.
//!   With an architecture asked for, the image's config must say it (as CDI).
//! - **Insecure registries** ([`RegistryOptions::insecure`]): HTTPS without certificate
//!   checks, then plain HTTP if the registry does not speak TLS (containers/image's
//!   order).
//! - **The disk** ([`disk`]): the one regular file under `/disk/` in any layer; none or
//!   several is an error listing them; a whiteout, link or directory under `/disk/`
//!   is refused. When every layer is an uncompressed tar and the registry answers
//!   Range requests, the disk is read in place, at any offset, through its own map (a
//!   qcow2 in parallel ranged reads). Otherwise the layers are streamed in order,
//!   decompressed (gzip, zstd) and walked as they arrive, the disk decoded as it
//!   streams by (or staged to `--scratch` when it needs random access) and every byte
//!   after it read too. Every layer's digest is checked before the copy completes.

pub mod auth;
pub mod disk;
pub mod manifest;
pub mod reference;

use std::sync::Arc;

use ferry_http::{Client, HeaderMap, Request, StatusCode, header};

use self::manifest::{Compression, Descriptor, ImageConfig, Manifest};
pub use self::reference::{Reference, is_registry_ref};
use super::Input;
use super::http::{self as h, HttpOptions};
use crate::error::Error;
use crate::source::vddk::options::Secret;

/// Labels that mark a bootable-container (bootc/ostree) image, which CDI refuses: it
/// holds an OS tree, not a disk.
pub const BOOTC_LABELS: [&str; 2] = ["containers.bootc", "ostree.bootable"];

/// How a registry is reached.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// TLS (a CA directory), proxies, timeouts, the download counter.
    pub http: HttpOptions,
    /// The user, for Basic auth or a token server.
    pub user: Option<String>,
    /// The password.
    pub password: Option<Secret>,
    /// HTTPS without certificate checks, or plain HTTP (CDI's insecure registries).
    pub insecure: bool,
    /// The architecture to pick from an index, and that the image must say it is
    /// (CDI's `IMPORTER_REGISTRY_IMAGE_ARCHITECTURE`); None: the host's, unchecked.
    pub architecture: Option<String>,
    /// Where the labels of the image's environment are left ([`manifest::env_labels`]),
    /// for the termination message.
    pub labels: ImageLabels,
}

/// The labels an image's environment gives, filled when it is opened.
#[derive(Debug, Clone, Default)]
pub struct ImageLabels(Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>);

impl ImageLabels {
    /// The labels found (empty before the image was read, or when it has none).
    pub fn get(&self) -> std::collections::BTreeMap<String, String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
    fn set(&self, l: std::collections::BTreeMap<String, String>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = l;
    }
}

/// What went wrong with a registry source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The reference cannot be read.
    #[error(transparent)]
    Reference(#[from] reference::ReferenceError),
    /// The registry or its token server refused us.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// A manifest, index or config that cannot be read.
    #[error("{0}")]
    Manifest(String),
    /// No manifest for the platform asked for, or the image is for another.
    #[error("{0}")]
    Platform(String),
    /// The image's layers hold no disk, several, or one that is refused.
    #[error("{0}")]
    Disk(String),
    /// Bytes that do not have the digest the manifest names.
    #[error("{what} has digest {got}, not the {want} its manifest names")]
    Digest {
        /// The manifest, config or layer.
        what: String,
        /// The digest named.
        want: String,
        /// The digest of the bytes served.
        got: String,
    },
    /// The registry has no such repository, tag or blob.
    #[error("{0}")]
    NotFound(String),
    /// Something Ferry does not read (a layer media type, a bootc image).
    #[error("{0}")]
    Unsupported(String),
}

impl RegistryError {
    /// The kind of failure.
    pub fn kind(&self) -> ferry_contract::exit::ErrorKind {
        use ferry_contract::exit::ErrorKind as K;
        match self {
            RegistryError::Reference(_)
            | RegistryError::Platform(_)
            | RegistryError::Disk(_)
            | RegistryError::Unsupported(_) => K::Usage,
            RegistryError::Auth(_) => K::Authentication,
            RegistryError::NotFound(_) => K::NotFound,
            RegistryError::Manifest(_) | RegistryError::Digest { .. } => K::SourceData,
        }
    }
}

impl From<manifest::ManifestError> for RegistryError {
    fn from(e: manifest::ManifestError) -> Self {
        RegistryError::Manifest(e.0)
    }
}

/// One registry repository, authenticated: manifests and blobs of `reference`.
#[derive(Debug)]
pub(crate) struct Api {
    pub(crate) reference: Reference,
    /// `https://host:port` (or `http://` for an insecure registry without TLS).
    base: String,
    client: Client,
    /// For blobs: the TLS and proxy settings the API is reached with.
    http: HttpOptions,
    creds: Option<(String, String)>,
    auth: std::sync::Mutex<Option<header::HeaderValue>>,
}

fn rerr(reference: &str, error: RegistryError) -> Error {
    Error::Registry {
        reference: reference.to_string(),
        error,
    }
}

/// The values of every `WWW-Authenticate` header.
fn challenges(h: &HeaderMap) -> Vec<String> {
    h.get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect()
}

fn query_escape(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl Api {
    fn what(&self) -> String {
        self.reference.to_string()
    }

    fn err(&self, e: RegistryError) -> Error {
        rerr(&self.what(), e)
    }

    /// Reach the registry of `reference` and learn how it authenticates (`GET /v2/`).
    pub(crate) async fn connect(
        reference: Reference,
        opts: &RegistryOptions,
    ) -> Result<Api, Error> {
        let mut http = opts.http.clone();
        if opts.insecure {
            http.tls.insecure = true;
        }
        let creds = match (&opts.user, &opts.password) {
            (Some(u), p) if !u.is_empty() => Some((
                u.clone(),
                p.as_ref()
                    .map(|p| p.expose().to_string())
                    .unwrap_or_default(),
            )),
            _ => None,
        };
        let schemes: &[&str] = if opts.insecure {
            &["https", "http"]
        } else {
            &["https"]
        };
        let mut last = None;
        for scheme in schemes {
            let base = format!("{scheme}://{}", reference.api_host());
            let (client, _) = h::client_for(&format!("{base}/v2/"), &http)?;
            let api = Api {
                reference: reference.clone(),
                base,
                client,
                http: http.clone(),
                creds: creds.clone(),
                auth: std::sync::Mutex::new(None),
            };
            match api.ping().await {
                Ok(()) => return Ok(api),
                Err(e @ Error::Http { .. }) if *scheme == "https" && opts.insecure => {
                    tracing::info!(registry = %reference.registry, error = %e, "insecure registry: HTTPS failed, trying plain HTTP");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(Error::Internal("no scheme was tried")))
    }

    fn current_auth(&self) -> Option<header::HeaderValue> {
        self.auth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_auth(&self, v: header::HeaderValue) {
        *self
            .auth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(v);
    }

    async fn ping(&self) -> Result<(), Error> {
        let url = format!("{}/v2/", self.base);
        let r = self
            .client
            .get("GET /v2/", "/v2/", None)
            .await
            .map_err(|e| Error::Http {
                url: url.clone(),
                error: e,
            })?;
        match r.status {
            StatusCode::OK => Ok(()),
            StatusCode::UNAUTHORIZED => self.authenticate(&r.headers).await,
            StatusCode::NOT_FOUND => Err(self.err(RegistryError::NotFound(format!(
                "{url} answered 404: {} is not a registry (no v2 API)",
                self.reference.registry
            )))),
            s => Err(Error::HttpStatus {
                url,
                status: s.as_u16(),
                message: s.canonical_reason().unwrap_or("").to_string(),
            }),
        }
    }

    /// Answer the challenge of a `401` with `headers`.
    async fn authenticate(&self, headers: &HeaderMap) -> Result<(), Error> {
        let list = challenges(headers);
        let challenge = auth::parse_challenges(list.iter().map(String::as_str))
            .map_err(|e| self.err(RegistryError::Auth(e.0)))?;
        match challenge {
            None => Err(self.err(RegistryError::Auth(format!(
                "the registry answered 401 without a Basic or Bearer challenge ({})",
                list.first()
                    .map_or("no WWW-Authenticate header", String::as_str)
            )))),
            Some(auth::Challenge::Basic) => match &self.creds {
                Some((u, p)) => {
                    self.set_auth(ferry_http::basic_auth(u, p));
                    Ok(())
                }
                None => Err(self.err(RegistryError::Auth(
                    "the registry asks for a user and password (Basic) and none were given".into(),
                ))),
            },
            Some(auth::Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let scope = scope
                    .unwrap_or_else(|| format!("repository:{}:pull", self.reference.repository));
                let mut url = realm.clone();
                url.push(if realm.contains('?') { '&' } else { '?' });
                if let Some(s) = &service {
                    url.push_str(&format!("service={}&", query_escape(s)));
                }
                url.push_str(&format!("scope={}", query_escape(&scope)));
                let mut o = self.http.clone();
                if let Some((u, p)) = &self.creds {
                    o.client
                        .headers
                        .push((header::AUTHORIZATION, ferry_http::basic_auth(u, p)));
                }
                let (client, path) = h::client_for(&url, &o)?;
                let r = client
                    .get("GET token", &path, None)
                    .await
                    .map_err(|e| Error::Http {
                        url: h::redact(&realm),
                        error: e,
                    })?;
                if r.status == StatusCode::UNAUTHORIZED || r.status == StatusCode::FORBIDDEN {
                    return Err(self.err(RegistryError::Auth(format!(
                        "the token server {} answered {} for {scope}{}",
                        h::redact(&realm),
                        r.status,
                        if self.creds.is_some() {
                            ""
                        } else {
                            " (no credentials were given)"
                        }
                    ))));
                }
                if r.status != StatusCode::OK {
                    return Err(Error::HttpStatus {
                        url: h::redact(&realm),
                        status: r.status.as_u16(),
                        message: "from the token server".into(),
                    });
                }
                let t =
                    auth::parse_token(&r.body).map_err(|e| self.err(RegistryError::Auth(e.0)))?;
                tracing::debug!(expires_in = t.expires_in, %scope, "registry token obtained");
                let mut v = header::HeaderValue::from_str(&format!("Bearer {}", t.token))
                    .map_err(|_| self.err(RegistryError::Auth("an unusable token".into())))?;
                v.set_sensitive(true);
                self.set_auth(v);
                Ok(())
            }
        }
    }

    /// `GET path` on the API with `accept`, authenticating again once on a `401`.
    async fn get(&self, op: &str, path: &str, accept: &str) -> Result<ferry_http::Response, Error> {
        let url = format!("{}{path}", self.base);
        for attempt in 0..2 {
            let mut req = Request::get(path).header(header::ACCEPT, accept);
            if let Some(a) = self.current_auth() {
                req = req.header(header::AUTHORIZATION, a);
            }
            let req = req
                .body(ferry_http::Full::new(ferry_http::Bytes::new()))
                .map_err(|_| Error::Internal("a registry request could not be built"))?;
            let r = self.client.send(op, req).await.map_err(|e| Error::Http {
                url: url.clone(),
                error: e,
            })?;
            if r.status == StatusCode::UNAUTHORIZED && attempt == 0 {
                self.authenticate(&r.headers).await?;
                continue;
            }
            if r.status == StatusCode::UNAUTHORIZED || r.status == StatusCode::FORBIDDEN {
                return Err(self.err(RegistryError::Auth(format!(
                    "{url} answered {} with the credentials given",
                    r.status
                ))));
            }
            return Ok(r);
        }
        Err(Error::Internal("the registry request loop ended"))
    }

    fn blob_url(&self, digest: &str) -> String {
        format!(
            "{}/v2/{}/blobs/{digest}",
            self.base, self.reference.repository
        )
    }

    /// HTTP options for a blob: the API's, with its authorization (dropped by the HTTP
    /// source if the registry redirects to another host).
    fn blob_options(&self) -> HttpOptions {
        let mut o = self.http.clone();
        if let Some(a) = self.current_auth() {
            o.client.headers.push((header::AUTHORIZATION, a));
        }
        o
    }

    /// A small blob (the config) whole, its digest checked.
    async fn small_blob(&self, d: &Descriptor, cap: usize, what: &str) -> Result<Vec<u8>, Error> {
        if usize::try_from(d.size).map_or(true, |s| s > cap) {
            return Err(self.err(RegistryError::Manifest(format!(
                "the {what} is {} bytes, more than the {cap} read",
                d.size
            ))));
        }
        let input = h::open(&self.blob_url(&d.digest), &self.blob_options()).await?;
        let bytes = read_input(input, cap).await?;
        let got = manifest::digest_of(&bytes, &d.digest);
        if got != d.digest {
            return Err(self.err(RegistryError::Digest {
                what: format!("the {what}"),
                want: d.digest.clone(),
                got,
            }));
        }
        Ok(bytes)
    }

    /// Open a layer's blob: a random-access source when the registry answers Range
    /// requests, else its body as a stream. Its length must be the manifest's.
    pub(crate) async fn open_layer(
        &self,
        d: &Descriptor,
        downloaded: &h::Downloaded,
        total: u64,
    ) -> Result<Input, Error> {
        let mut o = self.blob_options();
        o.downloaded = downloaded.clone();
        let input = h::open(&self.blob_url(&d.digest), &o).await?;
        downloaded.set_size(total);
        if let Some(n) = input.size()
            && n != d.size
        {
            let mut input = input;
            input.close().await;
            return Err(self.err(RegistryError::Digest {
                what: format!("layer {}", short(&d.digest)),
                want: format!("{} ({} bytes)", d.digest, d.size),
                got: format!("a blob of {n} bytes"),
            }));
        }
        Ok(input)
    }

    /// The image for the platform asked for: its config and layers.
    async fn resolve(
        &self,
        opts: &RegistryOptions,
    ) -> Result<(String, ImageConfig, Vec<Descriptor>), Error> {
        let arch = opts
            .architecture
            .clone()
            .unwrap_or_else(|| manifest::host_architecture().to_string());
        let mut want = self.reference.manifest_ref().to_string();
        for _ in 0..=manifest::MAX_INDEX_DEPTH {
            let path = format!("/v2/{}/manifests/{want}", self.reference.repository);
            let r = self.get("GET manifest", &path, manifest::ACCEPT).await?;
            match r.status {
                StatusCode::OK => {}
                StatusCode::NOT_FOUND => {
                    return Err(self.err(RegistryError::NotFound(format!(
                        "the registry has no manifest {want} in {}",
                        self.reference.repository
                    ))));
                }
                s => {
                    return Err(Error::HttpStatus {
                        url: format!("{}{path}", self.base),
                        status: s.as_u16(),
                        message: "for the manifest".into(),
                    });
                }
            }
            let is_digest = reference::is_digest(&want);
            let got = manifest::digest_of(&r.body, if is_digest { &want } else { "sha256:" });
            let served = r
                .headers
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .filter(|d| reference::is_digest(d) && d.starts_with("sha256:"));
            let expected = if is_digest {
                Some(want.as_str())
            } else {
                served
            };
            if let Some(e) = expected
                && e != got
            {
                return Err(self.err(RegistryError::Digest {
                    what: format!("the manifest {want}"),
                    want: e.to_string(),
                    got,
                }));
            }
            let ct = r
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            match Manifest::parse(&r.body, ct).map_err(|e| self.err(e.into()))? {
                Manifest::Index(entries) => {
                    let d = manifest::pick_platform(&entries, &arch, None)
                        .map_err(|e| self.err(RegistryError::Platform(e.0)))?;
                    tracing::info!(platform = %d.platform.as_ref().map(ToString::to_string).unwrap_or_default(), manifest = %d.digest, "image index: manifest picked");
                    want = d.digest.clone();
                }
                Manifest::Image { config, layers } => {
                    let body = self
                        .small_blob(&config, manifest::MAX_CONFIG_BYTES, "image config")
                        .await?;
                    let c = ImageConfig::parse(&body).map_err(|e| self.err(e.into()))?;
                    if opts.architecture.is_some() && c.architecture != arch {
                        return Err(self.err(RegistryError::Platform(format!(
                            "the image's architecture is {:?}, not the {arch:?} asked for",
                            c.architecture
                        ))));
                    }
                    if let Some(l) = BOOTC_LABELS.iter().find(|l| c.label(l) == Some("1")) {
                        return Err(self.err(RegistryError::Unsupported(format!(
                            "the image is a bootable container (label {l}=1): it holds an OS tree, not a disk under /disk/"
                        ))));
                    }
                    for (i, l) in layers.iter().enumerate() {
                        if Compression::of_layer(&l.media_type).is_none() {
                            return Err(self.err(RegistryError::Unsupported(format!(
                                "layer {i} has media type {:?}; Ferry reads tar layers, uncompressed, gzip or zstd",
                                l.media_type
                            ))));
                        }
                    }
                    return Ok((got, c, layers));
                }
            }
        }
        Err(self.err(RegistryError::Manifest(format!(
            "image indexes nested more than {} deep",
            manifest::MAX_INDEX_DEPTH
        ))))
    }
}

/// `sha256:0123456789ab` (the first 12 hex digits), for messages.
pub fn short(digest: &str) -> String {
    let (alg, hex) = digest.split_once(':').unwrap_or(("", digest));
    format!("{alg}:{}", &hex[..hex.len().min(12)])
}

/// Every byte of a small input, up to `cap`.
async fn read_input(input: Input, cap: usize) -> Result<Vec<u8>, Error> {
    match input {
        Input::Disk(s) => {
            let n = s.size();
            let out = if n == 0 {
                Vec::new()
            } else {
                super::image::read_bytes(s.as_ref(), 0, n.min(cap as u64)).await?
            };
            s.close().await;
            Ok(out)
        }
        Input::Stream(s) => {
            let what = s.describe();
            match s.into_bytes() {
                Ok((_, reader, under, _)) => {
                    let r = tokio::task::spawn_blocking(move || {
                        let mut v = Vec::new();
                        std::io::Read::read_to_end(
                            &mut std::io::Read::take(reader, cap as u64 + 1),
                            &mut v,
                        )
                        .map(|_| v)
                    })
                    .await
                    .map_err(|_| Error::Internal("a blocking read failed"))?;
                    if let Some(u) = under {
                        u.close().await;
                    }
                    r.map_err(|e| Error::Read {
                        offset: 0,
                        message: format!("{what}: {e}"),
                        retry: crate::error::Retry::Never,
                    })
                }
                Err(mut s) => {
                    s.close().await;
                    Err(Error::Internal("a fresh stream was already read"))
                }
            }
        }
    }
}

/// Open `spec` (`docker://…`): the disk inside the image, as [`disk`] finds it.
pub async fn open(spec: &str, opts: &RegistryOptions) -> Result<Input, Error> {
    let reference = Reference::parse(spec).map_err(|e| rerr(spec, e.into()))?;
    tracing::info!(image = %reference, "pulling from the registry");
    let api = Api::connect(reference, opts).await?;
    let (digest, config, layers) = api.resolve(opts).await?;
    let env = config
        .config
        .as_ref()
        .and_then(|c| c.env.clone())
        .unwrap_or_default();
    opts.labels.set(manifest::env_labels(&env));
    tracing::info!(image = %api.what(), manifest = %digest, layers = layers.len(), architecture = %config.architecture, "image manifest read");
    disk::open(Arc::new(api), layers, opts.http.downloaded.clone()).await
}
