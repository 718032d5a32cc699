//! The import itself: vSphere lookup → source → target checks → copy → resize → done.

use std::sync::Arc;
use std::time::Duration;

use super::config::{ImportConfig, SourceKind, Target, endpoint_host};
use ferry_cbt::{Extent, ExtentKind, ExtentMap};

use crate::copy::{CopyOptions, CopyStats};
use crate::engine::IoEngine;
use crate::error::Error;
use crate::progress::Progress;
use crate::sink::{DirectMode, Sink};
use crate::source::vddk::options::{Compression, DEFAULT_TRANSPORTS, VddkOptions};
use crate::source::{NbdSourceOptions, Source};

/// The resume journal's name beside disk.img.
pub const JOURNAL_NAME: &str = "disk.img.ferry-journal";

/// Mode of a finished disk.img (CDI chmods it to 0660).
pub const DISK_IMG_MODE: u32 = 0o660;

/// Tunables that are not part of CDI's contract.
#[derive(Debug, Clone)]
pub struct ImportTuning {
    /// Buffer size in 64 KiB units (also VDDK's NFC AIO buffer size).
    pub buf_size_in_64k: u64,
    /// Buffers in flight (also VDDK's NFC AIO buffer count).
    pub buf_count: u64,
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
}

/// Find the VM and the disk in vSphere (instance UUID, then BIOS UUID; the backing file
/// through the snapshot tree and parent chain; the checkpoint's disk file), then log out.
pub async fn lookup(cfg: &ImportConfig) -> Result<VsphereDisk, Error> {
    let tls = ferry_vsphere::TlsPolicy {
        thumbprint: cfg.thumbprint.clone(),
        ca_dir: cfg.cert_dir.clone(),
        insecure: cfg.insecure_tls,
    };
    let user = cfg.user.as_deref().unwrap_or_default();
    let password = cfg.password.as_ref().map_or("", |p| p.expose());
    let client = ferry_vsphere::Client::login(&cfg.endpoint, user, password, &tls)
        .await
        .map_err(Error::Vsphere)?;
    let found = async {
        let uuid = cfg.uuid.as_deref().unwrap_or_default();
        let vm = client.find_vm(uuid).await?;
        tracing::info!(vm = %vm.name, moref = %vm.moref, power_state = %vm.power_state, host = vm.host.as_deref().unwrap_or("-"), "found the VM");
        let backing = cfg.backing_file.as_deref().unwrap_or_default();
        let disk = client.find_disk(&vm, backing).await?;
        let (file, snapshot) = match &cfg.current_checkpoint {
            Some(s) => (client.snapshot_disk(&vm, s, &disk).await?.file_name, Some(s.clone())),
            None => (disk.file_name.clone(), None),
        };
        tracing::info!(disk = %file, snapshot = snapshot.as_deref().unwrap_or("-"), capacity = disk.capacity_bytes, "found the disk");
        let changed = match (&cfg.previous_checkpoint, &snapshot) {
            (Some(prev), Some(snap)) => Some(changed_areas(&client, &vm, snap, &disk, prev).await?),
            _ => None,
        };
        Ok::<_, ferry_vsphere::Error>(VsphereDisk {
            vm_moref: vm.moref,
            file,
            snapshot,
            host: vm.host,
            capacity: disk.capacity_bytes,
            changed,
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
    let change_id = if super::config::is_change_id(prev) {
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
        read_timeout: t.timeout,
    }
}

/// Usable bytes of a filesystem volume after the filesystem overhead.
pub fn usable_bytes(dir: &std::path::Path, overhead: f64) -> Result<u64, Error> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| {
        Error::Target(format!(
            "cannot inspect the volume at {}: {e}",
            dir.display()
        ))
    })?;
    let total = st.blocks() as u64 * st.fragment_size() as u64;
    Ok((total as f64 * (1.0 - overhead)) as u64)
}

/// A delta goes onto the target holding the previous round, at the disk's current size;
/// anything else (a missing target, a disk that grew or shrank — vSphere resets CBT then)
/// needs a full copy.
fn check_delta_target(target: &std::path::Path, size: u64, change_id: &str) -> Result<(), Error> {
    use std::os::unix::fs::FileTypeExt;
    let full = format!("a full copy is needed (delta from change ID {change_id})");
    let meta = std::fs::metadata(target).map_err(|e| {
        Error::Target(format!(
            "the previous round's target {} is not usable ({e}): {full}",
            target.display()
        ))
    })?;
    if meta.file_type().is_file() && meta.len() < size {
        return Err(Error::Target(format!(
            "{} is {} bytes but the disk is now {size}: the disk changed size since the previous round, {full}",
            target.display(),
            meta.len()
        )));
    }
    if !meta.file_type().is_file() && !meta.file_type().is_block_device() {
        return Err(Error::Target(format!(
            "{} is not a file or block device: {full}",
            target.display()
        )));
    }
    Ok(())
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

/// Run the import: open the source (VDDK after the vSphere lookup, or NBD), check and
/// open the target, copy, grow a disk.img to the requested size, flush.
pub async fn run(
    cfg: &ImportConfig,
    t: &ImportTuning,
    engine: Arc<dyn IoEngine>,
    progress: Arc<Progress>,
) -> Result<Outcome, Error> {
    if cfg.previous_checkpoint.is_some() && cfg.source != SourceKind::Vddk {
        return Err(Error::Usage(
            "IMPORTER_PREVIOUS_CHECKPOINT: delta copies need IMPORTER_SOURCE=vddk".into(),
        ));
    }
    progress.set_phase("connecting");
    let mut esx_host = None;
    let mut vddk_version_found = None;
    let mut changed = None;
    let source: Arc<dyn Source> = match cfg.source {
        SourceKind::Vddk => {
            let disk = lookup(cfg).await?;
            esx_host = disk.host.clone();
            changed = disk.changed.clone();
            let opts = vddk_options(cfg, &disk, t);
            let src = crate::source::VddkSource::open(&opts)
                .await
                .map_err(Error::Vddk)?;
            vddk_version_found = Some(vddk_version(src.library_path()));
            Arc::new(src)
        }
        SourceKind::Nbd => {
            let nbd = NbdSourceOptions {
                connections: t.connections as usize,
                connect_timeout: t.timeout.min(Duration::from_secs(30)),
                request_timeout: t.timeout,
                extents: true,
                dirty_bitmap: None,
            };
            crate::source::open(&cfg.endpoint, &nbd, None, engine.clone()).await?
        }
    };
    let size = source.size();
    let target = cfg.target.path();
    let mut usable = None;
    if let Target::Filesystem { dir } = &cfg.target {
        let u = usable_bytes(dir, cfg.filesystem_overhead)?;
        if size > u {
            return Err(Error::Target(format!(
                "target too small: the disk is {size} bytes but {} has {u} usable bytes (FILESYSTEM_OVERHEAD={})",
                dir.display(),
                cfg.filesystem_overhead
            )));
        }
        usable = Some(u);
    }
    if let Some((change_id, _)) = &changed {
        check_delta_target(&target, size, change_id)?;
    }
    let sink = Arc::new(Sink::open(&target, size, t.direct, engine)?);
    let preallocation_applied = if cfg.preallocation {
        sink.preallocate().await?
    } else {
        false
    };
    let journal_path = cfg.journal.clone().or_else(|| match &cfg.target {
        Target::Filesystem { dir } => Some(dir.join(JOURNAL_NAME)),
        Target::Block(_) => None,
    });
    let (journal, start_at) = match journal_path {
        None => (None, 0),
        Some(p) => {
            let identity = crate::journal::JournalIdentity {
                source: source.describe(),
                size,
                plan: changed
                    .as_ref()
                    .map_or_else(|| "full".to_string(), |(id, _)| format!("delta:{id}")),
                target: target.display().to_string(),
            };
            let (j, start) = crate::journal::JournalFile::open(&p, identity);
            (Some(Arc::new(j)), start)
        }
    };
    let opts = CopyOptions {
        buf_size: (t.buf_size_in_64k * 64 * 1024) as usize,
        buf_count: t.buf_count as usize,
        use_extents: true,
        detect_zeroes: true,
        changes: changed.map(|(_, m)| crate::copy::Changes::Map(Arc::new(m))),
        start_at,
        journal,
    };
    progress.set_phase("copying");
    let stats = crate::copy::copy(source.clone(), sink.clone(), &opts, progress.clone()).await;
    let stats = match stats {
        Ok(s) => s,
        Err(e) => {
            let _ = tokio::time::timeout(Duration::from_secs(5), source.close()).await;
            return Err(e);
        }
    };
    if let (Some(want), Some(u)) = (cfg.image_size, usable) {
        let len = want.min(u);
        if len > size {
            tracing::info!(
                from = size,
                to = len,
                "growing disk.img to the volume's requested size"
            );
            sink.extend(len, cfg.preallocation).await?;
            sink.flush().await?;
        }
    }
    if matches!(cfg.target, Target::Filesystem { .. }) {
        // As CDI leaves it: group-writable for the pod's fsGroup (the VM's virt-launcher).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(DISK_IMG_MODE)).map_err(
            |e| Error::Target(format!("cannot set the mode of {}: {e}", target.display())),
        )?;
    }
    progress.set_phase("done");
    Ok(Outcome {
        stats,
        preallocation_applied,
        vddk_version: vddk_version_found,
        esx_host,
    })
}
