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
    /// The change ID of the disk in the snapshot being copied (this round), when known.
    pub round_change_id: Option<String>,
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
    let mut options = ferry_vsphere::ClientOptions::from_env();
    options.proxy_ca_dirs = std::iter::once(cfg.proxy_cert_dir.clone())
        .chain(cfg.cert_dir.clone())
        .collect();
    let client =
        ferry_vsphere::Client::login_with_options(&cfg.endpoint, user, password, &tls, options)
            .await
            .map_err(Error::Vsphere)?;
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
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| {
        Error::Target(format!(
            "cannot inspect the volume at {}: {e}",
            dir.display()
        ))
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
                return Err(Error::Target(format!(
                    "{} ({} has no usable space)",
                    super::messages::too_small(cfg.image_size.unwrap_or(0), 0),
                    dir.display()
                )));
            }
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_file() => {
                    std::fs::remove_file(&path).map_err(|e| {
                        Error::Target(format!("cannot replace {}: {e}", path.display()))
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
    })
}

/// A block device's size in bytes.
fn device_size(dev: &std::path::Path) -> Result<u64, Error> {
    use std::io::Seek;
    std::fs::File::open(dev)
        .and_then(|mut f| f.seek(std::io::SeekFrom::End(0)))
        .map_err(|e| Error::Target(format!("cannot open target {}: {e}", dev.display())))
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

/// A delta must start from the round the target holds: the marker left by the last
/// completed round must name the same disk and the previous checkpoint (snapshot or
/// change ID). A missing marker (a previous round written by another importer) is only
/// warned about; an unreadable or mismatching one needs a full copy.
fn check_previous_round(
    marker: &std::path::Path,
    backing: &str,
    prev: &str,
    prev_change_id: &str,
    size: u64,
) -> Result<(), Error> {
    let full = |reason: String| Error::NeedsFullCopy {
        subject: format!("round marker {}", marker.display()),
        reason,
    };
    let bytes = match std::fs::metadata(marker) {
        Err(_) => {
            tracing::warn!(marker = %marker.display(), "no record of the previous round on this target; trusting it holds checkpoint {prev}");
            return Ok(());
        }
        Ok(m) if m.len() > MAX_ROUND_MARKER_BYTES => {
            return Err(full("too large to be a round marker".into()));
        }
        Ok(_) => std::fs::read(marker).map_err(|e| full(format!("cannot be read: {e}")))?,
    };
    let r = Round::decode(&bytes).map_err(|e| full(format!("corrupt ({e})")))?;
    let same_checkpoint =
        r.snapshot.as_deref() == Some(prev) || r.change_id.as_deref() == Some(prev_change_id);
    if r.backing_file != backing || r.size != size || !same_checkpoint {
        return Err(full(format!(
            "the target holds {} at {} ({} bytes), not the previous checkpoint {prev} of {backing}",
            r.backing_file,
            r.snapshot
                .as_deref()
                .or(r.change_id.as_deref())
                .unwrap_or("a full copy"),
            r.size
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
        return Err(Error::Usage(format!(
            "{}: delta copies need {}=vddk",
            ferry_contract::env::IMPORTER_PREVIOUS_CHECKPOINT,
            ferry_contract::env::IMPORTER_SOURCE
        )));
    }
    if cfg.source == SourceKind::Blank {
        return blank(cfg, engine, progress).await;
    }
    progress.set_phase("connecting");
    let mut esx_host = None;
    let mut vddk_version_found = None;
    let mut changed = None;
    let mut round = None;
    let mut vddk_opts = None;
    let nbd = NbdSourceOptions::new(crate::num::usize_of(t.connections), t.timeout, true);
    let source: Arc<dyn Source> = match cfg.source {
        SourceKind::Vddk => {
            let disk = lookup(cfg).await?;
            esx_host = disk.host.clone();
            changed = disk.changed.clone();
            round = Some(Round {
                backing_file: cfg.backing_file.clone().unwrap_or_default(),
                snapshot: disk.snapshot.clone(),
                change_id: disk.round_change_id.clone(),
                size: 0,
            });
            let opts = vddk_options(cfg, &disk, t);
            let src = crate::source::VddkSource::open(&opts)
                .await
                .map_err(Error::Vddk)?;
            vddk_version_found = Some(vddk_version(src.library_path()));
            vddk_opts = Some(opts);
            Arc::new(src)
        }
        SourceKind::Nbd => crate::source::open(&cfg.endpoint, &nbd, None, engine.clone()).await?,
        SourceKind::Blank => unreachable!("handled above"),
    };
    let size = source.size();
    let target = cfg.target.path();
    let mut usable = None;
    // A delta round writes onto the image the previous round left: no size check and no
    // resize (CDI never resizes a delta round).
    if let (Target::Filesystem { dir }, None) = (&cfg.target, &changed) {
        let u = usable_for(dir, &target, cfg)?;
        if size > u {
            return Err(Error::Target(format!(
                "{} ({} after FILESYSTEM_OVERHEAD={})",
                super::messages::too_small(size, u),
                dir.display(),
                cfg.filesystem_overhead
            )));
        }
        usable = Some(u);
    }
    // Block mode keeps its journal (and the round marker beside it) where the pod has
    // writable space that outlives a container restart: FERRY_JOURNAL, or else the
    // emptyDir CDI mounts over the VDDK library's parent (/opt) for the VDDK init
    // container. Never on the device.
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
    if let Some((change_id, _)) = &changed {
        crate::delta::check_target(
            &target,
            size,
            true,
            &format!("delta from change ID {change_id}"),
        )?;
        if let (Some(m), Some(prev)) = (&marker, &cfg.previous_checkpoint) {
            check_previous_round(
                m,
                cfg.backing_file.as_deref().unwrap_or_default(),
                prev,
                change_id,
                size,
            )?;
        }
    }
    if let Some(m) = &marker {
        // The target is about to change: until this round completes it holds no round.
        match std::fs::remove_file(m) {
            Ok(()) => {
                let dir = m.parent().unwrap_or(std::path::Path::new("."));
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| Error::Write {
                        op: "round marker",
                        offset: 0,
                        error: e,
                    })?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Write {
                    op: "round marker",
                    offset: 0,
                    error: e,
                });
            }
        }
    }
    // A lost connection opens the same disk again (no new vSphere lookup: the snapshot
    // and file are fixed for this round).
    let reopen: crate::retry::Reopen<'_> = {
        let (vddk_opts, nbd, engine) = (vddk_opts.clone(), nbd.clone(), engine.clone());
        Box::new(move || {
            let (vddk_opts, nbd, engine) = (vddk_opts.clone(), nbd.clone(), engine.clone());
            Box::pin(async move {
                match &vddk_opts {
                    Some(o) => crate::source::VddkSource::open(o)
                        .await
                        .map(|s| Arc::new(s) as Arc<dyn Source>)
                        .map_err(Error::Vddk),
                    None => crate::source::open(&cfg.endpoint, &nbd, None, engine).await,
                }
            })
        })
    };
    let plan = match changed {
        None => crate::job::Plan::full(),
        Some((id, m)) => crate::job::Plan {
            label: format!("delta:{id}"),
            delta_from: format!("delta from change ID {id}"),
            changes: Some(crate::copy::Changes::Map(Arc::new(m))),
        },
    };
    let keep_larger = plan.changes.is_some();
    let fs_mode = matches!(cfg.target, Target::Filesystem { .. });
    let job = crate::job::Job {
        source: crate::source::Input::Disk(source.clone()),
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
            buf_size: crate::num::usize_of(t.buf_size_in_64k * 64 * 1024),
            buf_count: crate::num::usize_of(t.buf_count),
            use_extents: true,
            detect_zeroes: true,
            direct: t.direct,
            retry: t.retry,
        },
        engine: engine.clone(),
        finish: crate::job::Finish {
            // As CDI's ResizeImage: grown to the usable size only when that is larger
            // (usable is already bounded by the requested size).
            grow_to: cfg.image_size.and(usable),
            round_marker: marker.clone().zip(round).map(|(m, mut r)| {
                r.size = size;
                (m, r)
            }),
            // As CDI leaves it: group-writable for the pod's fsGroup (virt-launcher).
            mode: fs_mode.then_some(DISK_IMG_MODE),
        },
    };
    let crate::job::Outcome {
        stats,
        preallocation_applied,
    } = crate::job::run(job, progress.clone()).await?;
    Ok(Outcome {
        stats,
        preallocation_applied,
        vddk_version: vddk_version_found,
        esx_host,
    })
}
