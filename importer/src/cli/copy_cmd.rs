//! `ferry copy SRC DST`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use ferry::copy::{Changes, CopyStats};
use ferry::error::UsageError;
use ferry::progress::Progress;

use super::Tuning;
use super::vddk_args::VddkArgs;

/// Arguments of `ferry copy`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Source: an NBD URI (nbd://host[:port]/export, nbd+unix:///export?socket=PATH), a
    /// VDDK URI (vddk://USER@HOST/?vm=moref=vm-1&file=[ds] vm/vm.vmdk&thumbprint=…), an
    /// http:// or https:// URL, a container image holding a disk under /disk/
    /// (docker://REGISTRY/REPO:TAG or @sha256:…), a path, or - for standard input (read
    /// in order: no --journal, no delta).
    pub src: String,
    /// Target: a block device (at least the source's size), a file (created sparse if
    /// missing), or `null:` to read the source and discard the data (benchmarks).
    pub dst: PathBuf,
    #[command(flatten)]
    pub tuning: Tuning,
    #[command(flatten)]
    pub vddk: VddkArgs,
    #[command(flatten)]
    pub http: super::http_args::HttpArgs,
    #[command(flatten)]
    pub registry: super::http_args::RegistryArgs,
    /// VDDK options resolved (and the library initialised) before the runtime started.
    #[arg(skip)]
    pub vddk_resolved: Option<ferry::source::VddkOptions>,
    /// Delta: copy only what the NBD source's qemu:dirty-bitmap:NAME marks as changed,
    /// onto the target holding the previous round.
    #[arg(long, value_name = "NAME", conflicts_with = "changed_extents")]
    pub dirty_bitmap: Option<String>,
    /// Delta: copy only the areas listed in FILE (JSON [{"offset":N,"length":N},…]),
    /// onto the target holding the previous round.
    #[arg(long, value_name = "FILE")]
    pub changed_extents: Option<PathBuf>,
    /// Delta (VDDK sources): copy only what vCenter's changed block tracking says changed
    /// in --snapshot since CHANGE_ID (or since a previous snapshot's moref).
    #[arg(long, value_name = "CHANGE_ID", conflicts_with_all = ["dirty_bitmap", "changed_extents"])]
    pub changed_since: Option<String>,
    /// Resume journal: records durable progress; a restarted copy with the same journal
    /// resumes where it stopped. Removed when the copy completes.
    #[arg(long, value_name = "PATH")]
    pub journal: Option<PathBuf>,
    /// The checksum of the source's bytes as read (before decompression or decoding),
    /// `md5|sha1|sha256|sha512:HEX`; a mismatch fails the copy (the target is left
    /// incomplete).
    #[arg(long, value_name = "ALG:HEX")]
    pub checksum: Option<ferry::checksum::Checksum>,
    /// The disk to copy from an archive source (an OVA, a tar): a member's name, or
    /// its last component. Without it an archive must hold exactly one disk image.
    #[arg(long, value_name = "NAME")]
    pub member: Option<String>,
    /// A directory where an image that needs random access (qcow2, a VMDK that is not a
    /// stream) but arrives as a stream (a server without Range support, a compressed
    /// image, standard input) is staged, zero runs as holes, and read from there; it
    /// needs room for the whole image. Without it such an image is refused.
    #[arg(long, value_name = "DIR")]
    pub scratch: Option<PathBuf>,
    /// After the final flush, read the target back and compare its digest with the
    /// source's as read during the copy (a resumed copy takes up the digest groups its
    /// journal kept; the source is read again only for a delta, or a resume without
    /// them): a mismatch fails naming the first differing 64 KiB. Implies --digest.
    #[arg(long)]
    pub verify: bool,
    /// Print one JSON summary object on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// What the source holds. `auto` looks at its first bytes (and, at any offset, its
    /// last sector): compressed files are decompressed, images read through their maps,
    /// archives opened, anything else refused. `raw` copies the bytes as they are (a
    /// raw disk whose first bytes happen to look like an image). An image format reads
    /// the source as that format, whatever its bytes look like. VDDK sources are
    /// always disks.
    #[arg(long, value_enum, default_value = "auto")]
    pub format: SourceFormat,
}

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceFormat {
    /// What the first bytes say.
    Auto,
    /// The bytes as they are.
    Raw,
    /// A qcow2 image.
    Qcow2,
    /// A VMDK image (monolithicSparse, streamOptimized).
    Vmdk,
    /// A VHD image (fixed or dynamic), qemu's `vpc`.
    #[value(alias = "vpc")]
    Vhd,
    /// A VHDX image.
    Vhdx,
    /// A VDI image.
    Vdi,
}

impl SourceFormat {
    /// The format it forces (None: `auto`, or `raw`, which takes no layers at all).
    fn forced(self) -> Option<ferry::source::format::Format> {
        use ferry::source::format::Format;
        match self {
            SourceFormat::Auto | SourceFormat::Raw => None,
            SourceFormat::Qcow2 => Some(Format::Qcow2),
            SourceFormat::Vmdk => Some(Format::Vmdk),
            SourceFormat::Vhd => Some(Format::Vhd),
            SourceFormat::Vhdx => Some(Format::Vhdx),
            SourceFormat::Vdi => Some(Format::Vdi),
        }
    }
}

/// What a copy does beyond a plain full copy.
#[derive(Default)]
pub struct CopyExtras<'a> {
    /// Copy only these changed areas (a delta).
    pub changes: Option<Changes>,
    /// Resume journal.
    pub journal: Option<&'a std::path::Path>,
    /// Opens the source again after a lost connection (none: such a failure ends the
    /// copy).
    pub reopen: Option<ferry::retry::Reopen<'a>>,
    /// Build the digest (for `--verify`) even without `--digest`.
    pub verify: bool,
}

/// Copy `src` onto `dst` through the job runner ([`ferry::job::run`]).
pub async fn copy_once<'a>(
    src: ferry::source::Input,
    dst: &'a std::path::Path,
    tuning: &Tuning,
    engine: Arc<dyn ferry::engine::IoEngine>,
    progress: Arc<Progress>,
    extras: CopyExtras<'a>,
) -> Result<CopyStats, ferry::Error> {
    let CopyExtras {
        changes,
        journal,
        reopen,
        verify,
    } = extras;
    let label = match &changes {
        None => "full".to_string(),
        Some(Changes::FromSource) => "changes-from-source".to_string(),
        Some(Changes::Map(m)) => format!("changed-extents:{}:{}", m.len(), m.covered_bytes()),
    };
    let job = ferry::job::Job {
        source: src,
        reopen,
        target: dst,
        plan: ferry::job::Plan {
            changes,
            label,
            delta_from: "delta onto the previous round".into(),
            previous: None,
        },
        keep_larger: false,
        journal,
        protected: Vec::new(),
        preallocate: false,
        tuning: ferry::job::Tuning {
            buf_size: tuning.buf_size(),
            buf_count: ferry::num::usize_of(tuning.count()),
            use_extents: !tuning.no_extents,
            detect_zeroes: !tuning.no_zero_detect,
            direct: tuning.direct,
            retry: tuning.retry(),
            digest: tuning.digest || verify,
        },
        engine,
        finish: ferry::job::Finish::default(),
    };
    Ok(ferry::job::run(job, progress).await?.stats)
}

/// Ask vCenter which areas of the disk changed in `--snapshot` since `since` (a change
/// ID, or a previous snapshot's moref), page by page.
async fn vsphere_changes(
    v: &ferry::source::VddkOptions,
    since: &str,
) -> Result<ferry_cbt::ExtentMap, ferry::Error> {
    use ferry::import::config::{is_change_id, is_snapshot_moref};
    if since != "*" && !is_change_id(since) && !is_snapshot_moref(since) {
        return Err(UsageError::ChangedSince {
            since: since.to_string(),
        }
        .into());
    }
    let snapshot = v
        .snapshot
        .as_deref()
        .ok_or_else(|| ferry::Error::from(UsageError::ChangedSinceNeedsSnapshot))?;
    let host = if v.server.contains(':') {
        format!("[{}]", v.server)
    } else {
        v.server.clone()
    };
    let endpoint = if v.port == 0 {
        format!("https://{host}/sdk")
    } else {
        format!("https://{host}:{}/sdk", v.port)
    };
    let tls = ferry_vsphere::TlsPolicy {
        thumbprint: Some(v.thumbprint.clone()),
        ca_dir: None,
        insecure: false,
        system_roots: false,
    };
    let client = ferry_vsphere::Client::login(&endpoint, &v.user, v.password.expose(), &tls)
        .await
        .map_err(ferry::Error::Vsphere)?;
    let vm = ferry_vsphere::Vm {
        moref: v.vm_moref.trim_start_matches("moref=").to_string(),
        name: String::new(),
        power_state: String::new(),
        host: None,
    };
    let found = async {
        let disk = client.find_disk(&vm, &v.disk).await?;
        ferry::import::run::changed_areas(&client, &vm, snapshot, &disk, since).await
    }
    .await;
    client.logout().await;
    found.map(|(_, map)| map).map_err(ferry::Error::Vsphere)
}

/// Run `ferry copy`.
pub async fn run(mut a: CopyArgs) -> anyhow::Result<()> {
    if a.verify && a.dst.as_os_str() == ferry::sink::NULL_TARGET {
        return Err(ferry::Error::from(UsageError::VerifyNullTarget).into());
    }
    let vddk = match a.vddk_resolved.take() {
        Some(v) => Some(v),
        None if ferry::source::vddk::options::is_vddk_uri(&a.src) => Some(
            a.vddk
                .resolve(&a.src, &mut a.tuning)
                .map_err(ferry::Error::Vddk)?,
        ),
        None => None,
    };
    a.tuning.validate()?;
    if let Some(dir) = a.scratch.as_ref().filter(|d| !d.is_dir()) {
        return Err(
            ferry::Error::from(UsageError::ScratchNotADirectory { dir: dir.clone() }).into(),
        );
    }
    let engine = ferry::engine::select(a.tuning.io_engine, (a.tuning.count() * 2 + 16) as u32)?;
    let mut nbd = a.tuning.nbd();
    nbd.dirty_bitmap = a.dirty_bitmap.clone();
    let progress = Arc::new(Progress::new());
    let mut http = a.http.options()?;
    http.downloaded = progress.downloaded_counter();
    let registry = a.registry.options(&http)?;
    let reach = ferry::source::Reach {
        nbd: &nbd,
        vddk: vddk.as_ref(),
        engine: engine.clone(),
        http: Some(&http),
        registry: Some(&registry),
        checksum: a
            .checksum
            .clone()
            .map(|c| ferry::checksum::ChecksumState::new(c, a.src.clone())),
        layering: ferry::source::layers::Layering {
            member: a.member.as_deref(),
            scratch: a
                .scratch
                .as_deref()
                .map(|dir| ferry::source::scratch::Scratch {
                    dir,
                    engine: engine.clone(),
                }),
            forced: a.format.forced(),
        },
    };
    let src = ferry::source::open_input(&a.src, &reach).await?;
    // What the bytes hold: a raw disk as it is, a compressed one decompressed, an image
    // read through its map, anything else refused (VDDK sources are always disks).
    let layered = a.format != SourceFormat::Raw && vddk.is_none();
    let src = if layered {
        ferry::source::layers::layer(src, &reach.layering).await?
    } else {
        src
    };
    let bar =
        (!a.no_progress && std::io::stderr().is_terminal()).then(|| spawn_bar(progress.clone()));
    let changes = match (&a.dirty_bitmap, &a.changed_extents, &a.changed_since) {
        (Some(_), _, _) => Some(Changes::FromSource),
        (None, Some(f), _) => Some(Changes::Map(Arc::new(ferry::delta::load_extents_file(
            f,
            src.size()
                .unwrap_or(ferry::source::stream::MAX_STREAM_BYTES),
        )?))),
        (None, None, Some(since)) => {
            let v = vddk
                .as_ref()
                .ok_or_else(|| ferry::Error::from(UsageError::ChangedSinceNeedsVddk))?;
            Some(Changes::Map(Arc::new(vsphere_changes(v, since).await?)))
        }
        (None, None, None) => None,
    };
    // A lost connection opens the same source again, with the same layers.
    let (spec, reach) = (&a.src, &reach);
    let reopen: ferry::retry::Reopen<'_> =
        Box::new(move || Box::pin(ferry::source::open(spec, reach, layered)));
    let r = copy_once(
        src,
        &a.dst,
        &a.tuning,
        engine,
        progress,
        CopyExtras {
            changes,
            journal: a.journal.as_deref(),
            reopen: Some(reopen),
            verify: a.verify,
        },
    )
    .await;
    if let Some(b) = bar {
        b.abort();
        eprintln!();
    }
    let mut stats = r?;
    if a.verify {
        verify_target(&a, reach, layered, &mut stats).await?;
    }
    if a.json {
        println!("{}", serde_json::to_string(&stats)?);
    } else {
        let mbps = stats.bytes_written as f64 / stats.seconds.max(1e-9) / 1e6;
        eprintln!(
            "copied {} bytes in {:.2}s: {} data ({mbps:.0} MB/s), {} zeroed, {} skipped; engine {}, O_DIRECT {}",
            stats.size,
            stats.seconds,
            stats.bytes_written,
            stats.bytes_zeroed,
            stats.bytes_skipped,
            stats.engine,
            stats.direct
        );
    }
    Ok(())
}

/// `--verify`: the target read back must have the source's digest.
async fn verify_target(
    a: &CopyArgs,
    reach: &ferry::source::Reach<'_>,
    layered: bool,
    stats: &mut CopyStats,
) -> Result<(), ferry::Error> {
    let (buf_size, count) = (a.tuning.buf_size(), ferry::num::usize_of(a.tuning.count()));
    let start = std::time::Instant::now();
    let source = match &stats.digest_full {
        Some(d) => d.clone(),
        None => {
            // Resumed or delta: the bytes before were read by another run.
            tracing::info!("the copy did not read the whole source; reading it again for --verify");
            let s = ferry::source::open(&a.src, reach, layered).await?;
            Arc::new(ferry::digest::of_input(ferry::source::Input::Disk(s), buf_size, count).await?)
        }
    };
    let target_spec = a.dst.display().to_string();
    // Read once, over the disk's size: a target larger than the disk (a block device,
    // a grown image) is compared over that size; a shorter one differs at its end.
    let target = ferry::source::open(&target_spec, reach, false).await?;
    let t = ferry::digest::check_target(
        &source,
        &target,
        ferry::source::open(&a.src, reach, layered),
        buf_size,
        count,
    )
    .await;
    target.close().await;
    let t = t?;
    tracing::info!(digest = %t.text(), seconds = start.elapsed().as_secs_f64(), "verified: the target reads back as the source");
    stats.digest = Some(source.text());
    Ok(())
}

fn spawn_bar(p: Arc<Progress>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let bar = indicatif::ProgressBar::new(p.total().max(1));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        loop {
            bar.set_length(p.total().max(1));
            bar.set_position(p.done());
            let s = p.snapshot();
            bar.set_message(download_message(s.phase, s.downloaded, s.download_size));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// The bar's message: the phase, and for an HTTP source the bytes downloaded (of how
/// many, when known).
fn download_message(phase: &str, downloaded: u64, size: u64) -> String {
    let mib = |n: u64| n as f64 / f64::from(1u32 << 20);
    match (downloaded, size) {
        (0, 0) => phase.to_string(),
        (d, 0) => format!("{phase}, {:.1} MiB downloaded", mib(d)),
        (d, n) => format!("{phase}, {:.1}/{:.1} MiB downloaded", mib(d), mib(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::download_message;

    #[test]
    fn the_bar_names_the_download_only_for_http_sources() {
        assert_eq!(download_message("copying", 0, 0), "copying");
        assert_eq!(
            download_message("copying", 3 << 20, 0),
            "copying, 3.0 MiB downloaded"
        );
        assert_eq!(
            download_message("flushing", 1 << 19, 4 << 20),
            "flushing, 0.5/4.0 MiB downloaded"
        );
    }
}
