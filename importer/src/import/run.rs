//! The import itself: vSphere lookup → source → target checks → copy → resize → done.

use std::sync::Arc;
use std::time::Duration;

use super::config::{ImportConfig, SourceKind, Target, endpoint_host};
use ferry_cbt::{Extent, ExtentKind, ExtentMap};

use crate::copy::CopyStats;
use crate::engine::IoEngine;
use crate::error::Error;
use crate::progress::Progress;
use crate::sink::{DirectMode, Sink};
use crate::source::vddk::options::{Compression, DEFAULT_TRANSPORTS, VddkOptions};
use crate::source::{NbdSourceOptions, Source};

pub use ferry_contract::round::{
    BLOCK_JOURNAL_NAME, BLOCK_STATE_DIR, DISK_IMG_MODE, JOURNAL_NAME, MAX_ROUND_MARKER_BYTES,
    ROUND_MARKER_NAME, Round, USABLE_ALIGN,
};

/// Tunables that are not part of CDI's contract.
#[derive(Debug, Clone)]
pub struct ImportTuning {
    /// Buffer size in 64 KiB units (also VDDK's NFC AIO buffer size).
    pub buf_size_in_64k: u64,
    /// Buffers in flight (also VDDK's NFC AIO buffer count).
    pub buf_count: u64,
    /// What VDDK is told for its NFC AIO buffers (flags only; the operator's file has
    /// the rest).
    pub nfc: crate::source::vddk::config::NfcAio,
    /// O_DIRECT policy.
    pub direct: DirectMode,
    /// NBD connections (multi-conn servers).
    pub connections: u64,
    /// Bound on one read / NBD reply.
    pub timeout: Duration,
    /// VDDK transports.
    pub transports: Option<String>,
    /// VDDK unbuffered open.
    pub unbuffered: bool,
    /// VDDK wire compression.
    pub compression: Compression,
    /// How transient source failures are retried.
    pub retry: crate::retry::RetryPolicy,
    /// The scratch directory, when one is mounted.
    pub scratch_dir: Option<std::path::PathBuf>,
    /// Build the disk's digest, and read the target back ([`Verify`]).
    pub verify: Verify,
}

impl ImportTuning {
    /// The pool: bytes per buffer and buffers.
    pub fn pool(&self) -> (usize, usize) {
        (
            crate::num::usize_of(self.buf_size_in_64k * 64 * 1024),
            crate::num::usize_of(self.buf_count),
        )
    }
}

/// What an import proves of what it wrote (`FERRY_VERIFY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Verify {
    /// Neither (CDI's importer does neither).
    #[default]
    Off,
    /// The digest of the disk as read, in the termination message (a delta round has
    /// none: it reads only what changed).
    Digest,
    /// The digest, and the target read back after the final flush and compared (a delta
    /// round reads the whole source again for it).
    Verify,
}

/// What the import did, for the termination message.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Copy statistics.
    pub stats: CopyStats,
    /// Preallocation really happened.
    pub preallocation_applied: bool,
    /// VDDK library version, when VDDK was used.
    pub vddk_version: Option<String>,
    /// ESX host serving the VM, when known.
    pub esx_host: Option<String>,
    /// A registry image's labels (CDI's termination message `labels`).
    pub labels: std::collections::BTreeMap<String, String>,
    /// The target was read back and has the digest in `stats.digest`.
    pub verified: bool,
}

/// What the vSphere lookup found.
#[derive(Debug, Clone)]
pub struct VsphereDisk {
    /// VM moref.
    pub vm_moref: String,
    /// Disk file to open (the snapshot's, for a checkpoint).
    pub file: String,
    /// Snapshot to read from.
    pub snapshot: Option<String>,
    /// ESX host.
    pub host: Option<String>,
    /// Disk capacity in bytes, as vSphere reports it.
    pub capacity: u64,
    /// For a delta: the change ID it starts from and the changed areas (Data extents).
    pub changed: Option<(String, ExtentMap)>,
    /// The change ID of the disk in the snapshot being copied (this round), when known.
    pub round_change_id: Option<String>,
}

/// Log in to the vSphere endpoint as the import is configured: the thumbprint or CA
/// directory, the credentials, and Go's proxy choice with the proxy's CA directories.
async fn login(cfg: &ImportConfig) -> Result<ferry_vsphere::Client, ferry_vsphere::Error> {
    let tls = ferry_vsphere::TlsPolicy {
        thumbprint: cfg.thumbprint.clone(),
        ca_dir: cfg.cert_dir.clone(),
        insecure: cfg.insecure_tls,
        system_roots: false,
    };
    let user = cfg.user.as_deref().unwrap_or_default();
    let password = cfg.password.as_ref().map_or("", |p| p.expose());
    let mut options = ferry_vsphere::ClientOptions::from_env();
    options.proxy_ca_dirs = std::iter::once(cfg.proxy_cert_dir.clone())
        .chain(cfg.cert_dir.clone())
        .collect();
    ferry_vsphere::Client::login_with_options(&cfg.endpoint, user, password, &tls, options).await
}

/// Find the VM and the disk in vSphere (instance UUID, then BIOS UUID; the backing file
/// through the snapshot tree and parent chain; the checkpoint's disk file), then log out.
pub async fn lookup(cfg: &ImportConfig) -> Result<VsphereDisk, Error> {
    let client = login(cfg).await.map_err(Error::Vsphere)?;
    let found = async {
        let uuid = cfg.uuid.as_deref().unwrap_or_default();
        let vm = client.find_vm(uuid).await?;
        tracing::info!(vm = %vm.name, moref = %vm.moref, power_state = %vm.power_state, host = vm.host.as_deref().unwrap_or("-"), "found the VM");
        let backing = cfg.backing_file.as_deref().unwrap_or_default();
        let disk = client.find_disk(&vm, backing).await?;
        let (file, snapshot) = match &cfg.current_checkpoint {
            Some(reference) => {
                let s = client.find_snapshot(&vm, reference).await?;
                if &s != reference {
                    tracing::info!(checkpoint = %reference, snapshot = %s, "resolved the checkpoint's snapshot by name");
                }
                (client.snapshot_disk(&vm, &s, &disk).await?.file_name, Some(s))
            }
            None => (disk.file_name.clone(), None),
        };
        tracing::info!(disk = %file, snapshot = snapshot.as_deref().unwrap_or("-"), capacity = disk.capacity_bytes, "found the disk");
        let changed = match (&cfg.previous_checkpoint, &snapshot) {
            (Some(prev), Some(snap)) => Some(changed_areas(&client, &vm, snap, &disk, prev).await?),
            _ => None,
        };
        let round_change_id = match &snapshot {
            Some(snap) => client.snapshot_change_id(&vm, snap, disk.key).await.ok(),
            None => disk.change_id.clone(),
        };
        Ok::<_, ferry_vsphere::Error>(VsphereDisk {
            vm_moref: vm.moref,
            file,
            snapshot,
            host: vm.host,
            capacity: disk.capacity_bytes,
            changed,
            round_change_id,
        })
    }
    .await;
    client.logout().await;
    found.map_err(Error::Vsphere)
}

/// The areas of `disk` in snapshot `snap` that changed since `prev` (a change ID, or a
/// previous snapshot resolved to its change ID), page by page from vCenter, merged into
/// one map of at most [`crate::delta::MAX_CHANGED_EXTENTS`] areas.
pub async fn changed_areas(
    client: &ferry_vsphere::Client,
    vm: &ferry_vsphere::Vm,
    snap: &str,
    disk: &ferry_vsphere::Disk,
    prev: &str,
) -> Result<(String, ExtentMap), ferry_vsphere::Error> {
    // `*`: every allocated area (a first copy through CBT).
    let change_id = if prev == "*" || super::config::is_change_id(prev) {
        prev.to_string()
    } else {
        client.snapshot_change_id(vm, prev, disk.key).await?
    };
    let mut map = ExtentMap::new();
    let mut areas = 0usize;
    let total = ferry_vsphere::for_each_changed_area_page(
        client,
        vm,
        snap,
        disk.key,
        disk.capacity_bytes,
        &change_id,
        |page| {
            for a in &page.areas {
                areas += 1;
                if areas > crate::delta::MAX_CHANGED_EXTENTS {
                    return Err(ferry_vsphere::Error::Protocol(format!(
                        "more than {} changed areas; a full copy is cheaper",
                        crate::delta::MAX_CHANGED_EXTENTS
                    )));
                }
                map.push(Extent::new(a.start, a.length, ExtentKind::Data))
                    .map_err(|e| ferry_vsphere::Error::Protocol(format!("changed areas: {e}")))?;
            }
            Ok(())
        },
    )
    .await?;
    tracing::info!(change_id = %change_id, areas, changed_bytes = total, "changed areas since the previous checkpoint");
    Ok((change_id, map))
}

/// The VDDK options for a found disk.
pub fn vddk_options(cfg: &ImportConfig, disk: &VsphereDisk, t: &ImportTuning) -> VddkOptions {
    let (server, port) = endpoint_host(&cfg.endpoint);
    VddkOptions {
        libdir: cfg.libdir.clone(),
        server,
        port: port.map_or(0, u32::from),
        user: cfg.user.clone().unwrap_or_default(),
        password: cfg.password.clone().unwrap_or_default(),
        thumbprint: cfg.thumbprint.clone().unwrap_or_default(),
        vm_moref: disk.vm_moref.clone(),
        disk: disk.file.clone(),
        snapshot: disk.snapshot.clone(),
        transports: t
            .transports
            .clone()
            .unwrap_or_else(|| DEFAULT_TRANSPORTS.into()),
        unbuffered: t.unbuffered,
        compression: t.compression,
        config_file: cfg.vddk_config.clone(),
        buf_size_in_64k: t.buf_size_in_64k,
        buf_count: t.buf_count,
        nfc: t.nfc,
        read_timeout: t.timeout,
    }
}

/// Free bytes of the volume at `dir` for an unprivileged writer, as CDI's
/// `GetAvailableSpace` counts them: f_bavail × f_bsize.
pub fn available_bytes(dir: &std::path::Path) -> Result<u64, Error> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| Error::TargetOs {
        op: "inspect the volume of",
        path: dir.to_owned(),
        error: e.into(),
    })?;
    Ok((st.blocks_available() as u64).saturating_mul(st.block_size() as u64))
}

/// CDI's usable size of a filesystem volume: the target is the smaller of the available
/// space and the requested image size (when given), then the filesystem overhead is
/// taken off as CDI inflated the request with it — ceil(target ÷ (1 + overhead)) —
/// rounded down to 1 MiB (`pkg/util/util.go` `GetUsableSpace`,
/// `pkg/importer/data-processor.go` `calculateTargetSize`).
pub fn usable_space(available: u64, image_size: Option<u64>, overhead: f64) -> u64 {
    let target = image_size.map_or(available, |r| r.min(available));
    let usable = crate::num::u64_ceil(target as f64 / (1.0 + overhead));
    usable / USABLE_ALIGN * USABLE_ALIGN
}

/// Bytes the existing file at `p` holds on its volume (0 if none): a full copy
/// overwrites a disk.img left by an earlier attempt, so its blocks count as free.
fn allocated_bytes(p: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p)
        .ok()
        .filter(|m| m.file_type().is_file())
        .map_or(0, |m| m.blocks() * 512)
}

/// The volume's usable size for a new image at `image` in `dir`.
fn usable_for(
    dir: &std::path::Path,
    image: &std::path::Path,
    cfg: &ImportConfig,
) -> Result<u64, Error> {
    let available = available_bytes(dir)?.saturating_add(allocated_bytes(image));
    Ok(usable_space(
        available,
        cfg.image_size,
        cfg.filesystem_overhead,
    ))
}

/// `IMPORTER_SOURCE=none`: a blank image for a tool that fills it later (virt-v2v under
/// Forklift). Filesystem mode: a new sparse disk.img of the volume's usable size (an
/// earlier attempt's is replaced), allocated when PREALLOCATION, mode 0660. Block mode:
/// the device is left as it is, or zeroed whole when PREALLOCATION.
async fn blank(
    cfg: &ImportConfig,
    engine: Arc<dyn IoEngine>,
    progress: Arc<Progress>,
) -> Result<Outcome, Error> {
    progress.set_phase("creating a blank image");
    let path = cfg.target.path();
    let (size, preallocation_applied) = match &cfg.target {
        Target::Filesystem { dir } => {
            let size = usable_for(dir, &path, cfg)?;
            if size == 0 {
                return Err(crate::error::TargetProblem::VolumeTooSmall {
                    needed: cfg.image_size.unwrap_or(0),
                    usable: 0,
                    dir: dir.clone(),
                    overhead: None,
                }
                .into());
            }
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_file() => {
                    std::fs::remove_file(&path).map_err(|error| Error::TargetOs {
                        op: "replace",
                        path: path.clone(),
                        error,
                    })?;
                }
                _ => {}
            }
            let sink = Sink::open(&path, size, DirectMode::Off, engine)?;
            let applied = cfg.preallocation && sink.preallocate().await?;
            sink.flush().await?;
            crate::job::set_mode(&path, DISK_IMG_MODE)?;
            tracing::info!(path = %path.display(), size, preallocated = applied, "created a blank image");
            (size, applied)
        }
        Target::Block(dev) => {
            let size = device_size(dev)?;
            if cfg.preallocation {
                let sink = Sink::open(dev, size, DirectMode::Off, engine)?;
                sink.preallocate().await?;
                progress.set_total(size);
                sink.zero(0, size).await?;
                progress.add_zero(size);
                sink.flush().await?;
            }
            tracing::info!(device = %dev.display(), size, zeroed = cfg.preallocation, "blank block volume");
            (size, cfg.preallocation)
        }
    };
    progress.set_phase("done");
    Ok(Outcome {
        stats: CopyStats {
            size,
            ..Default::default()
        },
        preallocation_applied,
        vddk_version: None,
        esx_host: None,
        labels: Default::default(),
        verified: false,
    })
}

/// A block device's size in bytes.
fn device_size(dev: &std::path::Path) -> Result<u64, Error> {
    use std::io::Seek;
    std::fs::File::open(dev)
        .and_then(|mut f| f.seek(std::io::SeekFrom::End(0)))
        .map_err(|error| Error::TargetOs {
            op: "open",
            path: dev.to_owned(),
            error,
        })
}

/// Block mode's default journal: `<libdir's parent>/ferry-state/block.ferry-journal`,
/// when that directory can be made (`None`, logged, when it cannot).
fn block_state_journal(libdir: &std::path::Path) -> Option<std::path::PathBuf> {
    let dir = libdir.parent()?.join(BLOCK_STATE_DIR);
    match std::fs::create_dir_all(&dir) {
        Ok(()) => Some(dir.join(BLOCK_JOURNAL_NAME)),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "no writable space for block mode's journal");
            None
        }
    }
}

/// The VDDK library's version from its file name (libvixDiskLib.so.8.0.3 → 8.0.3).
pub fn vddk_version(path: &std::path::Path) -> String {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.split_once(".so.")
        .map_or(name.clone(), |(_, v)| v.to_string())
}

/// Where the import keeps its journal and round marker. Block mode keeps them where the
/// pod has writable space that outlives a container restart: FERRY_JOURNAL, or else the
/// emptyDir CDI mounts over the VDDK library's parent (/opt) for the VDDK init
/// container. Never on the device.
fn state_paths(cfg: &ImportConfig) -> (Option<std::path::PathBuf>, Option<std::path::PathBuf>) {
    let block_journal = match (&cfg.target, &cfg.journal, cfg.source) {
        (Target::Block(_), None, SourceKind::Vddk) => block_state_journal(&cfg.libdir),
        _ => None,
    };
    let journal_path = cfg
        .journal
        .clone()
        .or(block_journal)
        .or_else(|| match &cfg.target {
            Target::Filesystem { dir } => Some(dir.join(JOURNAL_NAME)),
            Target::Block(_) => None,
        });
    if journal_path.is_none() {
        tracing::warn!(
            "block mode without writable space beside the device (no FERRY_JOURNAL, no VDDK emptyDir): a restarted container copies from the start, and a delta cannot check which round the device holds"
        );
    }
    let marker = match &cfg.target {
        Target::Filesystem { dir } => Some(dir.join(ROUND_MARKER_NAME)),
        // Beside the journal, its name extended (never an extension replaced).
        Target::Block(_) => journal_path.as_ref().map(|j| {
            let mut name = j.clone().into_os_string();
            name.push(".round");
            std::path::PathBuf::from(name)
        }),
    };
    (journal_path, marker)
}

/// A lost connection opens the same disk again (no new vSphere lookup: the snapshot
/// and file are fixed for this round).
fn reopener(
    cfg: &ImportConfig,
    vddk_opts: Option<VddkOptions>,
    http: Option<HttpReach>,
    nbd: NbdSourceOptions,
    engine: Arc<dyn IoEngine>,
) -> crate::retry::Reopen<'_> {
    Box::new(move || {
        let (vddk_opts, http, nbd, engine) =
            (vddk_opts.clone(), http.clone(), nbd.clone(), engine.clone());
        Box::pin(async move {
            match &vddk_opts {
                Some(o) => crate::source::VddkSource::open(o)
                    .await
                    .map(|s| Arc::new(s) as Arc<dyn Source>)
                    .map_err(Error::Vddk),
                None => {
                    let reach = crate::source::Reach {
                        nbd: &nbd,
                        vddk: None,
                        engine,
                        http: http.as_ref().map(|h| &h.options),
                        registry: http.as_ref().and_then(|h| h.registry.as_ref()),
                        checksum: http.as_ref().and_then(|h| h.checksum.clone()),
                        layering: Default::default(),
                    };
                    // An image over HTTP is reopened through its format layers.
                    crate::source::open(&cfg.endpoint, &reach, http.is_some()).await
                }
            }
        })
    })
}

/// How an http source is reached again (its options and the checksum it feeds).
#[derive(Debug, Clone)]
struct HttpReach {
    options: crate::source::http::HttpOptions,
    /// A registry source's options.
    registry: Option<crate::source::registry::RegistryOptions>,
    checksum: Option<Arc<crate::checksum::ChecksumState>>,
}

/// Most `IMPORTER_EXTRA_HEADER_*` variables and `/extraheaders` files read.
pub const MAX_EXTRA_HEADERS: usize = 64;
/// Where CDI mounts the secrets holding extra headers.
pub const SECRET_EXTRA_HEADERS_DIR: &str = "/extraheaders";
/// The prefix of CDI's extra header variables.
pub const EXTRA_HEADER_PREFIX: &str = "IMPORTER_EXTRA_HEADER_";

/// CDI's extra headers: the values of `IMPORTER_EXTRA_HEADER_*` and the files under
/// `/extraheaders/<n>/` (dot-named entries skipped, as Kubernetes' `..data` links), each
/// `Name: value`; a value without `:` is skipped, as CDI skips it.
fn extra_headers(
    secret_dir: &std::path::Path,
) -> Result<
    Vec<(
        ferry_http::header::HeaderName,
        ferry_http::header::HeaderValue,
    )>,
    Error,
> {
    let mut raw: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with(EXTRA_HEADER_PREFIX))
        .collect();
    raw.sort();
    let mut found: Vec<(String, String)> = raw;
    if let Ok(dirs) = std::fs::read_dir(secret_dir) {
        let mut dirs: Vec<_> = dirs.flatten().collect();
        dirs.sort_by_key(std::fs::DirEntry::file_name);
        for d in dirs {
            let name = d.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !d.path().is_dir() {
                continue;
            }
            let Ok(files) = std::fs::read_dir(d.path()) else {
                continue;
            };
            for f in files.flatten() {
                let fname = f.file_name().to_string_lossy().into_owned();
                if fname.starts_with('.') || !f.path().is_file() {
                    continue;
                }
                let meta = f.metadata().map(|m| m.len()).unwrap_or(0);
                if meta > crate::source::http::MAX_HEADER_BYTES as u64 {
                    return Err(crate::error::UsageError::Http {
                        what: f.path().display().to_string(),
                        message: "an extra header longer than the most accepted".into(),
                    }
                    .into());
                }
                let text = std::fs::read_to_string(f.path()).unwrap_or_default();
                found.push((f.path().display().to_string(), text));
            }
        }
    }
    let mut out = Vec::new();
    for (what, value) in found {
        if !value.contains(':') {
            continue;
        }
        if out.len() >= MAX_EXTRA_HEADERS {
            return Err(crate::error::UsageError::Http {
                what: EXTRA_HEADER_PREFIX.to_string() + "*",
                message: format!("more than {MAX_EXTRA_HEADERS} extra headers"),
            }
            .into());
        }
        let h = crate::source::http::parse_header(value.trim_end_matches(['\r', '\n']))
            .map_err(|message| crate::error::UsageError::Http { what, message })?;
        out.push(h);
    }
    Ok(out)
}

/// The HTTP options of an http import: the system roots plus `IMPORTER_CERT_DIR` (or
/// any certificate with `INSECURE_TLS`), the environment's proxy trusting
/// `/proxycerts/` and the cert directory, basic authorization from the access key and
/// secret when both are set, CDI's extra headers and user agent.
/// A registry source's options, as CDI's registry data source takes them: the access
/// key variables are the registry's user and password, `INSECURE_TLS` marks an
/// insecure registry (HTTPS unchecked, or plain HTTP), `IMPORTER_CERT_DIR` its CAs.
fn registry_options(
    cfg: &ImportConfig,
    http: &crate::source::http::HttpOptions,
) -> crate::source::registry::RegistryOptions {
    let mut http = http.clone();
    // The credentials are the registry's (Basic or a token server's), never a header
    // sent to every host.
    http.client
        .headers
        .retain(|(n, _)| *n != ferry_http::header::AUTHORIZATION);
    http.tls.insecure = false;
    crate::source::registry::RegistryOptions {
        http,
        user: cfg.user.clone().filter(|_| cfg.password.is_some()),
        password: cfg.password.clone(),
        insecure: cfg.insecure_tls,
        architecture: cfg.registry_architecture.clone(),
        labels: Default::default(),
    }
}

fn http_options(cfg: &ImportConfig) -> Result<crate::source::http::HttpOptions, Error> {
    let mut o = crate::source::http::HttpOptions::default();
    o.tls.ca_dir = cfg.cert_dir.clone();
    o.tls.insecure = cfg.insecure_tls;
    o.client.proxy_ca_dirs = std::iter::once(cfg.proxy_cert_dir.clone())
        .chain(cfg.cert_dir.clone())
        .collect();
    o.client.headers = extra_headers(std::path::Path::new(SECRET_EXTRA_HEADERS_DIR))?;
    if let (Some(u), Some(p)) = (&cfg.user, &cfg.password)
        && !u.is_empty()
        && !p.expose().is_empty()
    {
        o.client.headers.push((
            ferry_http::header::AUTHORIZATION,
            ferry_http::basic_auth(u, p.expose()),
        ));
    }
    Ok(o)
}

/// A filesystem volume's usable size for a full copy, checked to hold the disk. A delta
/// round writes onto the image the previous round left: no size check and no resize
/// (CDI never resizes a delta round).
fn check_usable(
    cfg: &ImportConfig,
    target: &std::path::Path,
    size: u64,
    delta: bool,
) -> Result<Option<u64>, Error> {
    let Target::Filesystem { dir } = &cfg.target else {
        return Ok(None);
    };
    if delta {
        return Ok(None);
    }
    let u = usable_for(dir, target, cfg)?;
    if size > u {
        return Err(crate::error::TargetProblem::VolumeTooSmall {
            needed: size,
            usable: u,
            dir: dir.clone(),
            overhead: Some(cfg.filesystem_overhead),
        }
        .into());
    }
    Ok(Some(u))
}

/// A full copy, or a delta from the change ID the lookup found, starting from the
/// previous checkpoint the target's round marker must name.
fn plan_for(cfg: &ImportConfig, changed: Option<(String, ExtentMap)>) -> crate::job::Plan {
    let Some((id, m)) = changed else {
        return crate::job::Plan::full();
    };
    crate::job::Plan {
        label: format!("delta:{id}"),
        delta_from: format!("delta from change ID {id}"),
        changes: Some(crate::copy::Changes::Map(Arc::new(m))),
        previous: cfg
            .previous_checkpoint
            .clone()
            .map(|checkpoint| crate::round::Previous {
                backing_file: cfg.backing_file.clone().unwrap_or_default(),
                checkpoint,
                change_id: id,
            }),
    }
}

/// What opening an import's source found.
struct Opened {
    source: crate::source::Input,
    /// An http source's options (a lost connection reopens with them).
    http: Option<HttpReach>,
    /// The options it was opened with (a lost connection reopens with them).
    vddk_opts: Option<VddkOptions>,
    /// A delta's change ID and changed areas.
    changed: Option<(String, ExtentMap)>,
    /// The round this import makes (its size set once known).
    round: Option<Round>,
    esx_host: Option<String>,
    vddk_version: Option<String>,
}

/// Open the source: VDDK after the vSphere lookup (which also finds a delta's changed
/// areas), or NBD.
async fn open_source(
    cfg: &ImportConfig,
    t: &ImportTuning,
    nbd: &NbdSourceOptions,
    engine: Arc<dyn IoEngine>,
    progress: &Progress,
) -> Result<Opened, Error> {
    if matches!(cfg.source, SourceKind::Http | SourceKind::Registry) {
        let mut options = http_options(cfg)?;
        options.downloaded = progress.downloaded_counter();
        let registry =
            (cfg.source == SourceKind::Registry).then(|| registry_options(cfg, &options));
        let h = HttpReach {
            registry,
            options,
            checksum: cfg.checksum.clone().map(|c| {
                crate::checksum::ChecksumState::new(c, crate::source::http::redact(&cfg.endpoint))
            }),
        };
        let reach = crate::source::Reach {
            nbd,
            vddk: None,
            engine,
            http: Some(&h.options),
            registry: h.registry.as_ref(),
            checksum: h.checksum.clone(),
            layering: Default::default(),
        };
        let input = crate::source::open_input(&cfg.endpoint, &reach).await?;
        let how = crate::source::layers::Layering {
            member: None,
            scratch: t
                .scratch_dir
                .as_deref()
                .map(|dir| crate::source::scratch::Scratch {
                    dir,
                    engine: reach.engine.clone(),
                }),
            forced: None,
        };
        let source = crate::source::layers::layer(input, &how).await?;
        return Ok(Opened {
            source,
            http: Some(h),
            vddk_opts: None,
            changed: None,
            round: None,
            esx_host: None,
            vddk_version: None,
        });
    }
    if cfg.source != SourceKind::Vddk {
        let reach = crate::source::Reach {
            nbd,
            vddk: None,
            engine,
            http: None,
            registry: None,
            checksum: None,
            layering: Default::default(),
        };
        let source = crate::source::open(&cfg.endpoint, &reach, false).await?;
        return Ok(Opened {
            source: crate::source::Input::Disk(source),
            http: None,
            vddk_opts: None,
            changed: None,
            round: None,
            esx_host: None,
            vddk_version: None,
        });
    }
    let disk = lookup(cfg).await?;
    let opts = vddk_options(cfg, &disk, t);
    let src = crate::source::VddkSource::open(&opts)
        .await
        .map_err(Error::Vddk)?;
    Ok(Opened {
        vddk_version: Some(vddk_version(src.library_path())),
        source: crate::source::Input::Disk(Arc::new(src)),
        http: None,
        vddk_opts: Some(opts),
        changed: disk.changed.clone(),
        round: Some(Round {
            backing_file: cfg.backing_file.clone().unwrap_or_default(),
            snapshot: disk.snapshot.clone(),
            change_id: disk.round_change_id.clone(),
            size: 0,
        }),
        esx_host: disk.host,
    })
}

/// CDI's `archive` content type: the endpoint's tar unpacked into the filesystem
/// volume ([`super::unpack`]).
async fn unpack_archive(
    cfg: &ImportConfig,
    engine: Arc<dyn IoEngine>,
    progress: Arc<Progress>,
) -> Result<Outcome, Error> {
    let Target::Filesystem { dir } = &cfg.target else {
        return Err(crate::error::UsageError::ArchiveNeedsFilesystem.into());
    };
    let mut options = http_options(cfg)?;
    options.downloaded = progress.downloaded_counter();
    let nbd = NbdSourceOptions::new(1, std::time::Duration::from_secs(60), true);
    let reach = crate::source::Reach {
        nbd: &nbd,
        vddk: None,
        engine,
        http: Some(&options),
        registry: None,
        checksum: cfg.checksum.clone().map(|c| {
            crate::checksum::ChecksumState::new(c, crate::source::http::redact(&cfg.endpoint))
        }),
        layering: Default::default(),
    };
    let input = crate::source::open_input(&cfg.endpoint, &reach).await?;
    let stats = super::unpack::unpack(input, dir, progress).await?;
    Ok(Outcome {
        stats,
        preallocation_applied: false,
        vddk_version: None,
        esx_host: None,
        labels: Default::default(),
        verified: false,
    })
}

/// Run the import: open the source (VDDK after the vSphere lookup, or NBD), check the
/// volume's usable space, and run the job: copy, grow a disk.img to the requested size,
/// flush, write the round marker.
pub async fn run(
    cfg: &ImportConfig,
    t: &ImportTuning,
    engine: Arc<dyn IoEngine>,
    progress: Arc<Progress>,
) -> Result<Outcome, Error> {
    if cfg.previous_checkpoint.is_some() && cfg.source != SourceKind::Vddk {
        return Err(crate::error::UsageError::DeltaNeedsVddk.into());
    }
    if cfg.source == SourceKind::Blank {
        return blank(cfg, engine, progress).await;
    }
    progress.set_phase("connecting");
    if cfg.archive {
        return unpack_archive(cfg, engine, progress).await;
    }
    let nbd = NbdSourceOptions::new(crate::num::usize_of(t.connections), t.timeout, true);
    let Opened {
        mut source,
        http,
        vddk_opts,
        changed,
        round,
        esx_host,
        vddk_version: vddk_version_found,
    } = open_source(cfg, t, &nbd, engine.clone(), &progress).await?;
    // The disk's size, known before a byte is written (an image's virtual size from
    // its header); a compressed stream says it only at its end.
    let size = source.size();
    let target = cfg.target.path();
    let usable = match size.map(|s| check_usable(cfg, &target, s, changed.is_some())) {
        None => match &cfg.target {
            Target::Filesystem { dir } if changed.is_none() => {
                usable_for(dir, &target, cfg).map(Some)
            }
            _ => Ok(None),
        },
        Some(u) => u,
    };
    let usable = match usable {
        Ok(u) => u,
        Err(e) => {
            source.close().await;
            return Err(e);
        }
    };
    let (mut journal_path, marker) = state_paths(cfg);
    if matches!(source, crate::source::Input::Stream(_)) {
        // Read once in order: nothing to resume from.
        journal_path = None;
    }
    // The registry image's labels (filled when it was opened; a reopen sets the same).
    let labels = http
        .as_ref()
        .and_then(|h| h.registry.as_ref())
        .map(|r| r.labels.clone());
    let again = (t.verify == Verify::Verify).then(|| {
        reopener(
            cfg,
            vddk_opts.clone(),
            http.clone(),
            nbd.clone(),
            engine.clone(),
        )
    });
    let reopen = reopener(cfg, vddk_opts, http, nbd, engine.clone());
    let plan = plan_for(cfg, changed);
    let keep_larger = plan.changes.is_some();
    let fs_mode = matches!(cfg.target, Target::Filesystem { .. });
    let job = crate::job::Job {
        source,
        reopen: Some(reopen),
        target: &target,
        plan,
        // A delta leaves a disk.img grown by an earlier round at its size.
        keep_larger,
        journal: journal_path.as_deref(),
        protected: marker
            .as_deref()
            .map(|m| (m, "the round marker"))
            .into_iter()
            .collect(),
        preallocate: cfg.preallocation,
        tuning: crate::job::Tuning {
            buf_size: t.pool().0,
            buf_count: t.pool().1,
            use_extents: true,
            detect_zeroes: true,
            direct: t.direct,
            retry: t.retry,
            digest: t.verify != Verify::Off,
        },
        engine: engine.clone(),
        finish: crate::job::Finish {
            // As CDI's ResizeImage: grown to the usable size only when that is larger
            // (usable is already bounded by the requested size).
            grow_to: cfg.image_size.and(usable),
            round_marker: marker.clone().zip(round).map(|(m, mut r)| {
                r.size = size.unwrap_or_default();
                (m, r)
            }),
            // As CDI leaves it: group-writable for the pod's fsGroup (virt-launcher).
            mode: fs_mode.then_some(DISK_IMG_MODE),
        },
    };
    let crate::job::Outcome {
        mut stats,
        preallocation_applied,
    } = crate::job::run(job, progress.clone()).await?;
    let labels = labels.map(|l| l.get()).unwrap_or_default();
    let verified = match again {
        Some(mut again) => {
            progress.set_phase("verifying");
            let (buf_size, count) = t.pool();
            let digest = match stats.digest_full.clone() {
                Some(d) => d,
                None => {
                    tracing::info!(
                        "the copy did not read the whole source; reading it again to verify"
                    );
                    let s = again().await?;
                    Arc::new(
                        crate::digest::of_input(crate::source::Input::Disk(s), buf_size, count)
                            .await?,
                    )
                }
            };
            let back: Arc<dyn Source> =
                Arc::new(crate::source::LocalSource::open(&target, engine.clone())?);
            let checked =
                crate::digest::check_target(&digest, &back, again(), buf_size, count).await;
            back.close().await;
            checked?;
            tracing::info!(digest = %digest.text(), "verified: the target reads back as the source");
            stats.digest = Some(digest.text());
            true
        }
        None => false,
    };
    Ok(Outcome {
        stats,
        preallocation_applied,
        vddk_version: vddk_version_found,
        esx_host,
        labels,
        verified,
    })
}

/// What `ferry inspect` in its `IMPORTER_*` form is asked.
#[derive(Debug, Clone)]
pub struct InspectOptions {
    /// How long the sample read runs.
    pub sample: Duration,
    /// A warm migration is planned: CBT must be on.
    pub warm: bool,
    /// How VDDK's initialisation went (done on the main thread before the runtime).
    pub vddk_init: Option<Result<(), String>>,
}

/// Preflight of an import as configured (`ferry inspect` with `IMPORTER_*`): for VDDK
/// the distribution, then vSphere (reachable, thumbprint, credentials, VM, disk, CBT,
/// checkpoint) and the disk through VDDK; for the other sources the endpoint; then the
/// disk's size, allocation and read rate, and the target's fit. Nothing is written.
pub async fn inspect(
    cfg: &ImportConfig,
    t: &ImportTuning,
    engine: Arc<dyn IoEngine>,
    o: &InspectOptions,
) -> crate::inspect::Report {
    use crate::inspect::{Report, Status};
    let mut r = Report::new(crate::source::http::redact(&cfg.endpoint));
    let (buf_size, count) = t.pool();
    match cfg.source {
        SourceKind::Vddk => {
            if let Some(s) = inspect_vsphere(cfg, t, o, &mut r).await {
                crate::inspect::disk(&mut r, &s, o.sample, buf_size, count).await;
                s.close().await;
            }
        }
        SourceKind::Blank => r.push("source", Status::Ok, "blank: nothing to read"),
        _ => {
            let progress = Progress::new();
            let nbd = NbdSourceOptions::new(crate::num::usize_of(t.connections), t.timeout, true);
            let opened = open_source(cfg, t, &nbd, engine.clone(), &progress)
                .await
                .map(|o| o.source);
            crate::inspect::input(&mut r, opened, o.sample, buf_size, count).await;
        }
    }
    if let Some(size) = r.size {
        let target = cfg.target.path();
        match &cfg.target {
            Target::Filesystem { .. } => {
                match check_usable(cfg, &target, size, cfg.previous_checkpoint.is_some()) {
                    Ok(Some(u)) => r.push(
                        "target",
                        Status::Ok,
                        format!(
                            "{} usable in {} for a disk of {}",
                            crate::inspect::human(u),
                            target.display(),
                            crate::inspect::human(size)
                        ),
                    ),
                    Ok(None) => r.push(
                        "target",
                        Status::Ok,
                        "a delta round: the disk.img is already there",
                    ),
                    Err(e) => r.fail_with("target", &e),
                }
            }
            Target::Block { .. } => crate::inspect::target_fit(&mut r, &target, size, engine),
        }
    } else if !r.fails() && cfg.source != SourceKind::Blank {
        r.push("target", Status::Skipped, "the disk's size is not known");
    }
    r
}

/// The VDDK and vSphere steps of [`inspect`]; the disk opened through VDDK.
async fn inspect_vsphere(
    cfg: &ImportConfig,
    t: &ImportTuning,
    o: &InspectOptions,
    r: &mut crate::inspect::Report,
) -> Option<Arc<dyn Source>> {
    use crate::inspect::Status;
    use ferry_contract::exit::ErrorKind;
    use ferry_vsphere::Error as S;
    let version = crate::inspect::vddk_libdir(r, &cfg.libdir);
    let pool = format!(
        "Ferry's pool {} × 64 KiB × {}",
        t.buf_size_in_64k, t.buf_count
    );
    let nfc = match (t.nfc.buf_size_in_64k, t.nfc.buf_count) {
        (None, None) => format!("not set: VDDK keeps its own NFC AIO defaults ({pool})"),
        (size, count) => format!(
            "vixDiskLib.nfcAio.Session.BufSizeIn64KB={} BufCount={} ({pool})",
            size.map_or("default".into(), |n| n.to_string()),
            count.map_or("default".into(), |n| n.to_string()),
        ),
    };
    r.nfc_aio = Some(nfc.clone());
    r.push("nfc-aio", Status::Ok, nfc);
    let client = match login(cfg).await {
        Ok(c) => {
            r.push("reachable", Status::Ok, cfg.endpoint.clone());
            r.push(
                "thumbprint",
                Status::Ok,
                match &cfg.thumbprint {
                    Some(t) => format!("the server's certificate has SHA-1 {t}"),
                    None => "verified against the CA certificates".into(),
                },
            );
            r.push(
                "credentials",
                Status::Ok,
                format!("logged in as {}", cfg.user.as_deref().unwrap_or_default()),
            );
            c
        }
        Err(e) => {
            // The step the failure belongs to; those before it passed.
            let failed = match &e {
                S::Tls { .. } => "thumbprint",
                S::Authentication { .. } => "credentials",
                _ => "reachable",
            };
            if failed != "reachable" {
                r.push("reachable", Status::Ok, cfg.endpoint.clone());
            }
            if failed == "credentials" {
                r.push(
                    "thumbprint",
                    Status::Ok,
                    "the server's identity checked out",
                );
            }
            r.fail_with(failed, &Error::Vsphere(e));
            r.skip_missing(&AFTER_LOGIN, "not tried: an earlier step failed");
            return None;
        }
    };
    let found = async {
        let uuid = cfg.uuid.as_deref().unwrap_or_default();
        let vm = match client.find_vm(uuid).await {
            Ok(vm) => {
                r.push("vm", Status::Ok, format!("{} ({}, {}, host {})", vm.name, vm.moref, vm.power_state, vm.host.as_deref().unwrap_or("-")));
                vm
            }
            Err(e) => {
                r.fail_with("vm", &Error::Vsphere(e));
                return None;
            }
        };
        let backing = cfg.backing_file.as_deref().unwrap_or_default();
        let disk = match client.find_disk(&vm, backing).await {
            Ok(d) => {
                r.push("disk", Status::Ok, format!("{} ({}, key {})", d.file_name, crate::inspect::human(d.capacity_bytes), d.key));
                d
            }
            Err(e) => {
                r.fail_with("disk", &Error::Vsphere(e));
                return None;
            }
        };
        let warm = o.warm || cfg.previous_checkpoint.is_some();
        match (&disk.change_id, warm) {
            (Some(id), _) => r.push("cbt", Status::Ok, format!("enabled (change ID {id})")),
            (None, true) => r.fail("cbt", ErrorKind::NeedsFullCopy, "changed block tracking is off on this disk: a warm migration needs it (ctkEnabled)"),
            (None, false) => r.push("cbt", Status::Warn, "changed block tracking is off: a cold copy works, a warm migration would not"),
        }
        let file = match &cfg.current_checkpoint {
            Some(reference) => match client.find_snapshot(&vm, reference).await {
                Ok(s) => match client.snapshot_disk(&vm, &s, &disk).await {
                    Ok(d) => {
                        r.push("checkpoint", Status::Ok, format!("snapshot {s}: {}", d.file_name));
                        Some((d.file_name, Some(s)))
                    }
                    Err(e) => {
                        r.fail_with("checkpoint", &Error::Vsphere(e));
                        None
                    }
                },
                Err(e) => {
                    r.fail_with("checkpoint", &Error::Vsphere(e));
                    None
                }
            },
            None => {
                r.push("checkpoint", Status::Skipped, "none asked: the running disk is read (a cold copy of a powered-off VM)");
                Some((disk.file_name.clone(), None))
            }
        }?;
        Some(VsphereDisk {
            vm_moref: vm.moref,
            file: file.0,
            snapshot: file.1,
            host: vm.host,
            capacity: disk.capacity_bytes,
            changed: None,
            round_change_id: None,
        })
    }
    .await;
    client.logout().await;
    let Some(disk) = found else {
        r.skip_missing(&AFTER_LOGIN, "not tried: an earlier step failed");
        return None;
    };
    match &o.vddk_init {
        Some(Err(e)) => {
            r.fail(
                "vddk-open",
                ErrorKind::Usage,
                format!("VDDK did not initialise: {e}"),
            );
            return None;
        }
        None if version.is_none() => {
            r.push("vddk-open", Status::Skipped, "no VDDK library");
            return None;
        }
        _ => {}
    }
    let opts = vddk_options(cfg, &disk, t);
    match crate::source::VddkSource::open(&opts).await {
        Ok(s) => {
            let opened = format!(
                "{} through VDDK {}",
                disk.file,
                vddk_version(s.library_path())
            );
            if s.size() == disk.capacity {
                r.push("vddk-open", Status::Ok, opened);
            } else {
                let sizes = format!("VDDK reports {} bytes, vSphere {}", s.size(), disk.capacity);
                r.push("vddk-open", Status::Warn, format!("{opened}; {sizes}"));
            }
            Some(Arc::new(s))
        }
        Err(e) => {
            r.fail_with("vddk-open", &Error::Vddk(e));
            None
        }
    }
}

/// The vSphere steps of [`inspect`] after connecting, skipped when one fails.
const AFTER_LOGIN: [&str; 7] = [
    "thumbprint",
    "credentials",
    "vm",
    "disk",
    "cbt",
    "checkpoint",
    "vddk-open",
];
