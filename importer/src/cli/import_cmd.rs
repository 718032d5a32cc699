//! `ferry import`: the pod entrypoint. Reads KubeVirt CDI's importer environment (each
//! variable also a flag; flags win), serves progress on :8443/metrics, copies, and writes
//! the termination message.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use ferry::import::config::{self, ImportConfig, RawInputs, SourceKind};
use ferry::import::run::{ImportTuning, Outcome};
use ferry::progress::Progress;
use ferry::report::termination::{self, TerminationMessage, VddkInfo};
use ferry::sink::DirectMode;
use ferry::source::vddk::options::Compression;

use super::{DEFAULT_BUF_COUNT, DEFAULT_BUF_SIZE_IN_64K, DEFAULT_VDDK_BUF_COUNT};

/// Arguments of `ferry import` (every one also read from its environment variable).
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// Source kind: vddk or nbd.
    #[arg(long, env = ferry_contract::env::IMPORTER_SOURCE)]
    pub source: Option<String>,
    /// vCenter/ESXi URL (vddk) or NBD URI (nbd).
    #[arg(long, env = ferry_contract::env::IMPORTER_ENDPOINT)]
    pub endpoint: Option<String>,
    /// vSphere user.
    #[arg(long, env = ferry_contract::env::IMPORTER_ACCESS_KEY_ID)]
    pub user: Option<String>,
    /// vSphere password (prefer --password-file; the variable is how CDI passes it).
    #[arg(long, env = ferry_contract::env::IMPORTER_SECRET_KEY, hide_env_values = true)]
    pub password: Option<String>,
    /// File holding the vSphere password (first line); wins over IMPORTER_SECRET_KEY.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// VM instance UUID (BIOS UUID accepted as a fallback).
    #[arg(long, env = ferry_contract::env::IMPORTER_UUID)]
    pub uuid: Option<String>,
    /// Datastore path of the base disk ("[ds1] vm/vm.vmdk").
    #[arg(long, env = ferry_contract::env::IMPORTER_BACKING_FILE)]
    pub backing_file: Option<String>,
    /// SHA-1 thumbprint of the vSphere endpoint's certificate.
    #[arg(long, env = ferry_contract::env::IMPORTER_THUMBPRINT)]
    pub thumbprint: Option<String>,
    /// Checksum of the downloaded bytes (http sources), `md5|sha1|sha256|sha512:HEX`.
    #[arg(long, env = ferry_contract::env::IMPORTER_CHECKSUM)]
    pub checksum: Option<String>,
    /// The architecture to take from a multi-architecture image (registry sources),
    /// which the image must then say it is.
    #[arg(long, env = ferry_contract::env::IMPORTER_REGISTRY_IMAGE_ARCHITECTURE)]
    pub registry_image_architecture: Option<String>,
    /// Snapshot to copy (snapshot-123).
    #[arg(long, env = ferry_contract::env::IMPORTER_CURRENT_CHECKPOINT)]
    pub current_checkpoint: Option<String>,
    /// Previous snapshot or change ID (warm-migration delta).
    #[arg(long, env = ferry_contract::env::IMPORTER_PREVIOUS_CHECKPOINT)]
    pub previous_checkpoint: Option<String>,
    /// Last round of a warm migration (true/false).
    #[arg(long, env = ferry_contract::env::IMPORTER_FINAL_CHECKPOINT)]
    pub final_checkpoint: Option<String>,
    /// The DataVolume's UID: the label of the progress metric.
    #[arg(long, env = ferry_contract::env::OWNER_UID)]
    pub owner_uid: Option<String>,
    /// Preallocate the target (true/false).
    #[arg(long, env = ferry_contract::env::PREALLOCATION)]
    pub preallocation: Option<String>,
    /// Fraction of a filesystem volume kept for the filesystem (e.g. 0.055).
    #[arg(long, env = ferry_contract::env::FILESYSTEM_OVERHEAD)]
    pub filesystem_overhead: Option<String>,
    /// Requested size of the volume (bytes or a quantity like 10Gi).
    #[arg(long, env = ferry_contract::env::IMPORTER_IMAGE_SIZE)]
    pub image_size: Option<String>,
    /// Accept a vSphere API certificate without verification when no CA applies.
    #[arg(long, env = ferry_contract::env::INSECURE_TLS)]
    pub insecure_tls: Option<String>,
    /// What the volume holds: `kubevirt` (a disk image; the only kind Ferry writes).
    #[arg(long, env = ferry_contract::env::IMPORTER_CONTENTTYPE)]
    pub content_type: Option<String>,
    /// Directory of CA certificates for the vSphere API.
    #[arg(long, env = ferry_contract::env::IMPORTER_CERT_DIR)]
    pub cert_dir: Option<String>,
    /// Directory of CA certificates for an https:// proxy [default: /proxycerts/].
    #[arg(long, env = ferry_contract::env::IMPORTER_PROXY_CERT_DIR)]
    pub proxy_cert_dir: Option<String>,
    /// The VDDK distribution directory.
    #[arg(long, env = ferry_contract::env::VDDK_LIBDIR)]
    pub vddk_libdir: Option<String>,
    /// Extra VDDK config file [default: /vddk-args/vddk-config-file when present].
    #[arg(long, env = ferry_contract::env::VDDK_CONFIG_FILE)]
    pub vddk_config: Option<String>,
    /// Where to write the termination message.
    #[arg(long, env = ferry_contract::env::TERMINATION_LOG)]
    pub termination_log: Option<String>,
    /// Resume journal [default: DIR/disk.img.ferry-journal in filesystem mode; block mode
    /// resumes only with a path in a volume that outlives the container].
    #[arg(long, env = ferry_contract::env::FERRY_JOURNAL)]
    pub journal: Option<String>,
    /// The block-mode target; its presence selects block mode.
    #[arg(long, env = ferry_contract::env::FERRY_BLOCK_DEVICE, default_value = config::DEFAULT_BLOCK_DEVICE)]
    pub block_device: PathBuf,
    /// The filesystem-mode volume (the image is DIR/disk.img).
    #[arg(long, env = ferry_contract::env::FERRY_DATA_DIR, default_value = config::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Where an image that needs random access but arrives as a stream (a server
    /// without Range support) is staged, when the directory exists (CDI mounts its
    /// scratch volume there); without it the import ends asking CDI for scratch space.
    #[arg(long, env = ferry_contract::env::FERRY_SCRATCH_DIR, default_value = ferry_contract::env::DEFAULT_SCRATCH_DIR)]
    pub scratch_dir: PathBuf,
    /// Address of the HTTPS metrics endpoint ("off" to disable); the default takes IPv6
    /// and IPv4 (IPv4 only on a host without IPv6), like CDI's importer on ":8443".
    #[arg(long, env = ferry_contract::env::FERRY_METRICS_ADDR, default_value = "[::]:8443")]
    pub metrics_addr: String,
    /// Buffer size in 64 KiB units; also VDDK's NFC AIO buffer size when given (0: not
    /// set) [default: the VDDK config file's vixDiskLib.nfcAio.Session.BufSizeIn64KB,
    /// else 16].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=super::MAX_BUF_SIZE_IN_64K))]
    pub buf_size_in_64k: Option<u64>,
    /// Buffers in flight; also VDDK's NFC AIO buffer count when given (0: not set)
    /// [default: the VDDK config file's …BufCount, else 4 for vddk; 32 for nbd].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=super::MAX_BUF_COUNT))]
    pub buf_count: Option<u64>,
    /// The NFC AIO settings VDDK is given by the flags (set by `prepare`).
    #[arg(skip)]
    pub nfc: ferry::source::vddk::config::NfcAio,
    /// I/O engine for the target.
    #[arg(long, value_enum, default_value_t = ferry::engine::EngineChoice::Auto)]
    pub io_engine: ferry::engine::EngineChoice,
    /// O_DIRECT on the target.
    #[arg(long, value_enum, default_value_t = DirectMode::Auto)]
    pub direct: DirectMode,
    /// NBD connections (multi-conn servers).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=super::MAX_CONNECTIONS))]
    pub connections: u64,
    /// Seconds to wait for any one read.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// What the import proves of what it wrote: `digest` builds the disk's digest as read
    /// (BLAKE3, `blake3-64k`) and puts it in the termination message; `verify` also
    /// reads the target back after the final flush and fails naming the first
    /// difference.
    #[arg(long, env = ferry_contract::env::FERRY_VERIFY, value_enum, default_value_t = ferry::import::run::Verify::Off)]
    pub verify: ferry::import::run::Verify,
    /// Transient source failures retried in a row without progress (reads read again,
    /// a lost connection opened again from the durable watermark); 0 turns them off.
    #[arg(long, env = ferry_contract::env::FERRY_RETRIES, default_value_t = ferry::retry::DEFAULT_RETRIES, value_parser = clap::value_parser!(u32).range(0..=ferry::retry::MAX_RETRIES as i64))]
    pub retries: u32,
    /// VDDK transports [default: file:nbdssl:nbd].
    #[arg(long)]
    pub transports: Option<String>,
    /// Open the VDDK disk unbuffered.
    #[arg(long)]
    pub unbuffered: bool,
    /// VDDK wire compression.
    #[arg(long, value_enum, default_value_t = Compression::None)]
    pub compression: Compression,
    /// The validated configuration (set by `prepare`, before the runtime starts).
    #[arg(skip)]
    pub resolved: Option<ImportConfig>,
}

impl ImportArgs {
    /// Every contract input that is set, with its variable and flag names.
    fn raw(&self) -> Result<RawInputs, config::ConfigError> {
        let mut v: Vec<(&'static str, &'static str, String)> = Vec::new();
        let mut put = |var: &'static str, flag: &'static str, val: &Option<String>| {
            if let Some(s) = val {
                v.push((var, flag, s.clone()));
            }
        };
        put(ferry_contract::env::IMPORTER_SOURCE, "source", &self.source);
        put(
            ferry_contract::env::IMPORTER_ENDPOINT,
            "endpoint",
            &self.endpoint,
        );
        put(
            ferry_contract::env::IMPORTER_ACCESS_KEY_ID,
            "user",
            &self.user,
        );
        put(
            ferry_contract::env::IMPORTER_SECRET_KEY,
            "password",
            &self.password,
        );
        put(ferry_contract::env::IMPORTER_UUID, "uuid", &self.uuid);
        put(
            ferry_contract::env::IMPORTER_BACKING_FILE,
            "backing-file",
            &self.backing_file,
        );
        put(
            ferry_contract::env::IMPORTER_THUMBPRINT,
            "thumbprint",
            &self.thumbprint,
        );
        put(
            ferry_contract::env::IMPORTER_CHECKSUM,
            "checksum",
            &self.checksum,
        );
        put(
            ferry_contract::env::IMPORTER_REGISTRY_IMAGE_ARCHITECTURE,
            "registry-image-architecture",
            &self.registry_image_architecture,
        );
        put(
            ferry_contract::env::IMPORTER_CURRENT_CHECKPOINT,
            "current-checkpoint",
            &self.current_checkpoint,
        );
        put(
            ferry_contract::env::IMPORTER_PREVIOUS_CHECKPOINT,
            "previous-checkpoint",
            &self.previous_checkpoint,
        );
        put(
            ferry_contract::env::IMPORTER_FINAL_CHECKPOINT,
            "final-checkpoint",
            &self.final_checkpoint,
        );
        put(ferry_contract::env::OWNER_UID, "owner-uid", &self.owner_uid);
        put(
            ferry_contract::env::PREALLOCATION,
            "preallocation",
            &self.preallocation,
        );
        put(
            ferry_contract::env::FILESYSTEM_OVERHEAD,
            "filesystem-overhead",
            &self.filesystem_overhead,
        );
        put(
            ferry_contract::env::IMPORTER_IMAGE_SIZE,
            "image-size",
            &self.image_size,
        );
        put(
            ferry_contract::env::INSECURE_TLS,
            "insecure-tls",
            &self.insecure_tls,
        );
        put(
            ferry_contract::env::IMPORTER_CONTENTTYPE,
            "content-type",
            &self.content_type,
        );
        put(
            ferry_contract::env::IMPORTER_CERT_DIR,
            "cert-dir",
            &self.cert_dir,
        );
        put(
            ferry_contract::env::IMPORTER_PROXY_CERT_DIR,
            "proxy-cert-dir",
            &self.proxy_cert_dir,
        );
        put(
            ferry_contract::env::VDDK_LIBDIR,
            "vddk-libdir",
            &self.vddk_libdir,
        );
        put(
            ferry_contract::env::VDDK_CONFIG_FILE,
            "vddk-config",
            &self.vddk_config,
        );
        put(
            ferry_contract::env::TERMINATION_LOG,
            "termination-log",
            &self.termination_log,
        );
        put(ferry_contract::env::FERRY_JOURNAL, "journal", &self.journal);
        if let Some(f) = &self.password_file {
            let pw = ferry::source::vddk::options::read_password(Some(f)).map_err(|e| {
                config::ConfigError {
                    var: format!(
                        "{} (--password-file)",
                        ferry_contract::env::IMPORTER_SECRET_KEY
                    ),
                    reason: e.to_string(),
                }
            })?;
            v.push((
                ferry_contract::env::IMPORTER_SECRET_KEY,
                "password-file",
                pw.expose().to_string(),
            ));
        }
        Ok(RawInputs { values: v })
    }

    /// Validate everything before any connection.
    pub fn config(&self) -> Result<ImportConfig, config::ConfigError> {
        config::validate(&self.raw()?, &self.block_device, &self.data_dir)
    }

    /// The termination message path, even when the rest is invalid.
    pub fn termination_log(&self) -> PathBuf {
        self.termination_log.as_deref().map_or_else(
            || PathBuf::from(config::DEFAULT_TERMINATION_LOG),
            PathBuf::from,
        )
    }

    /// The buffer count for this source.
    pub fn buf_count_for(&self, source: SourceKind) -> u64 {
        self.buf_count.unwrap_or(match source {
            SourceKind::Vddk => DEFAULT_VDDK_BUF_COUNT,
            SourceKind::Nbd | SourceKind::Blank | SourceKind::Http | SourceKind::Registry => {
                DEFAULT_BUF_COUNT
            }
        })
    }

    /// Shrink the buffer count to fit the cgroup's memory limit (see [`ferry::memory`]);
    /// VDDK is then told the same count for its NFC AIO buffers.
    pub fn fit_memory(&mut self, cfg: &ImportConfig) -> Result<(), ferry::memory::PoolDoesNotFit> {
        let vddk = cfg.source == SourceKind::Vddk;
        let asked = self.buf_count_for(cfg.source);
        let n = ferry::memory::fit_to_cgroup(self.buf_size() * 64 * 1024, asked, vddk)?;
        if n != asked {
            self.buf_count = Some(n);
            if vddk {
                self.nfc.buf_count = Some(n);
            }
        }
        Ok(())
    }

    /// The buffer size in 64 KiB units.
    pub fn buf_size(&self) -> u64 {
        self.buf_size_in_64k.unwrap_or(DEFAULT_BUF_SIZE_IN_64K)
    }

    /// 0 is "not set" (VDDK's default), as in Forklift's provider settings. What the
    /// flags set is what VDDK is told, whatever the pool adopts from the config file.
    pub fn take_nfc_flags(&mut self) {
        self.buf_size_in_64k = self.buf_size_in_64k.filter(|n| *n > 0);
        self.buf_count = self.buf_count.filter(|n| *n > 0);
        self.nfc =
            ferry::source::vddk::config::NfcAio::from_flags(self.buf_size_in_64k, self.buf_count);
    }

    /// In a CDI pod the NFC AIO sizes come from the operator's VDDK config file (Forklift
    /// writes them there): adopt them for both VDDK and Ferry's pool unless flags say
    /// otherwise.
    pub fn adopt_vddk_config(&mut self, cfg: &ImportConfig) {
        let Some(path) = &cfg.vddk_config else { return };
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if meta.len() > ferry::source::vddk::config::MAX_CONFIG_BYTES as u64 {
            return;
        }
        let Ok(settings) =
            std::fs::read_to_string(path).map(|t| ferry::source::vddk::config::parse(&t))
        else {
            return;
        };
        for s in settings.unwrap_or_default() {
            let n = s.value.trim().parse::<u64>().ok();
            if s.key
                .eq_ignore_ascii_case(ferry::source::vddk::config::KEY_BUF_SIZE)
                && self.buf_size_in_64k.is_none()
            {
                self.buf_size_in_64k = n.filter(|n| (1..=super::MAX_BUF_SIZE_IN_64K).contains(n));
            } else if s
                .key
                .eq_ignore_ascii_case(ferry::source::vddk::config::KEY_BUF_COUNT)
                && self.buf_count.is_none()
            {
                self.buf_count = n.filter(|n| (1..=super::MAX_BUF_COUNT).contains(n));
            }
        }
    }

    pub fn tuning(&self, cfg: &ImportConfig) -> ImportTuning {
        ImportTuning {
            buf_size_in_64k: self.buf_size(),
            buf_count: self.buf_count_for(cfg.source),
            nfc: self.nfc,
            retry: ferry::retry::RetryPolicy {
                retries: self.retries,
                ..Default::default()
            },
            direct: self.direct,
            connections: self.connections,
            timeout: Duration::from_secs(self.timeout),
            transports: self.transports.clone(),
            unbuffered: self.unbuffered,
            compression: self.compression,
            scratch_dir: self.scratch_dir.is_dir().then(|| self.scratch_dir.clone()),
            verify: self.verify,
        }
    }
}

/// Write the failure message for the kubelet (plain text, first line).
pub fn fail(termination_log: &std::path::Path, error: &str) {
    if let Err(e) = termination::write_failure(
        termination_log,
        &format!(
            "{}{}",
            ferry_contract::termination::FAILURE_PREFIX,
            ferry::import::messages::with_go_errno_text(error)
        ),
    ) {
        tracing::warn!(path = %termination_log.display(), error = %e, "cannot write the termination message");
    }
}

/// Run `ferry import` (the configuration was validated and VDDK initialised in
/// `prepare`). SIGTERM/SIGINT cancel the copy, close the VDDK disk and connection, and
/// end with "cancelled" within the teardown bound.
pub async fn run(a: ImportArgs, cfg: ImportConfig) -> anyhow::Result<()> {
    let termination_log = cfg.termination_log.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|error| ferry::Error::Signals {
            signal: "SIGTERM",
            error,
        })?;
    let progress = Arc::new(Progress::new());
    let metrics = ferry::report::metrics::Metrics::new(&cfg.owner_uid);
    let server = match a.metrics_addr.as_str() {
        "off" | "none" | "" => None,
        addr => {
            let addr: SocketAddr = addr.parse().map_err(|_| {
                ferry::Error::from(ferry::error::UsageError::MetricsAddr {
                    addr: addr.to_string(),
                })
            })?;
            Some(
                ferry::report::metrics::serve_metrics(addr, metrics.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            )
        }
    };
    let samplers = ferry::report::spawn_samplers(progress.clone(), metrics.clone());
    let tuning = a.tuning(&cfg);
    let scratch_dir = tuning.scratch_dir.clone();
    let work = async {
        let engine =
            ferry::engine::select(a.io_engine, (a.buf_count_for(cfg.source) * 2 + 16) as u32)?;
        ferry::import::run::run(&cfg, &tuning, engine, progress.clone())
            .await
            .map_err(anyhow::Error::from)
    };
    let result: anyhow::Result<Outcome> = tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Err(ferry::Error::Cancelled("SIGINT").into()),
        _ = term.recv() => Err(ferry::Error::Cancelled("SIGTERM").into()),
    };
    samplers.finish(&progress, result.is_ok());
    if let Some(s) = server {
        s.shutdown().await;
    }
    match result {
        Ok(o) => {
            metrics.finish(&o.stats);
            let msg = TerminationMessage {
                preallocation_applied: o.preallocation_applied,
                vddk_info: o.vddk_version.map(|version| VddkInfo {
                    version,
                    host: o.esx_host.unwrap_or_default(),
                }),
                labels: o.labels,
                message: complete_message(o.stats.digest.as_deref(), o.verified),
                ..TerminationMessage::default()
            };
            termination::write_success(&termination_log, &msg)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            tracing::info!(
                size = o.stats.size, bytes_read = o.stats.bytes_read, bytes_written = o.stats.bytes_written,
                bytes_zeroed = o.stats.bytes_zeroed, bytes_skipped = o.stats.bytes_skipped,
                retries = o.stats.retries, seconds = o.stats.seconds, engine = %o.stats.engine,
                "Import Complete"
            );
            Ok(())
        }
        Err(e)
            if scratch_dir.is_none()
                && matches!(
                    e.downcast_ref::<ferry::Error>(),
                    Some(ferry::Error::NeedsRandomAccess { .. })
                ) =>
        {
            // CDI's contract: exit 0 with scratchSpaceRequired, and its controller
            // starts the pod again with a scratch volume at /scratch.
            tracing::warn!(error = %format!("{e:#}"), "scratch space required: ending so that CDI mounts a scratch volume");
            let msg = TerminationMessage {
                scratch_space_required: true,
                ..TerminationMessage::default()
            };
            termination::write_success(&termination_log, &msg)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(())
        }
        Err(e) => {
            fail(&termination_log, &format!("{e:#}"));
            Err(e)
        }
    }
}

/// CDI's "Import Complete", followed by the disk's digest when one was built: "Import
/// Complete; digest blake3-64k:…", or "; verified blake3-64k:…" once the target read back
/// the same. (CDI's controller copies the message to the PVC's running-condition
/// annotation and compares it with nothing.)
fn complete_message(digest: Option<&str>, verified: bool) -> String {
    match digest {
        None => ferry::report::termination::IMPORT_COMPLETE.to_string(),
        Some(d) => format!(
            "{}; {} {d}",
            ferry::report::termination::IMPORT_COMPLETE,
            if verified { "verified" } else { "digest" }
        ),
    }
}
