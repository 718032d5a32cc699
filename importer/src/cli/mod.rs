//! Command-line interface: `ferry copy`, `ferry bench`.

mod bench;
mod copy_cmd;
mod http_args;
mod import_cmd;
mod inspect_cmd;
mod upload_cmd;
mod upload_server_cmd;
mod vddk_args;
mod verify_cmd;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ferry::engine::EngineChoice;
use ferry::sink::DirectMode;
use ferry::source::NbdSourceOptions;

/// Largest `--buf-size-in-64k` (64 MiB buffers: the largest NBD request nbdkit takes).
pub const MAX_BUF_SIZE_IN_64K: u64 = 1024;
/// `--buf-size-in-64k` when neither a flag nor the VDDK config file says (1 MiB buffers).
pub const DEFAULT_BUF_SIZE_IN_64K: u64 = 16;
/// Largest `--buf-count`.
pub const MAX_BUF_COUNT: u64 = 1024;
/// Largest pool (`buf-size × buf-count`).
pub const MAX_POOL_BYTES: u64 = 4 << 30;
/// `--buf-count` for NBD and local sources (measured fastest within a 64 MiB pool).
pub const DEFAULT_BUF_COUNT: u64 = 32;
/// `--buf-count` for VDDK sources: the NFC AIO setting tested in the field (Forklift).
pub const DEFAULT_VDDK_BUF_COUNT: u64 = 4;
/// Largest `--connections`.
pub const MAX_CONNECTIONS: u64 = 16;

/// Ferry moves virtual disks into Kubernetes volumes, fast.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, propagate_version = true)]
pub struct Cli {
    /// More log output (-v debug, -vv trace; default info). FERRY_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Worker threads of the async runtime [default: the cgroup's CPU quota rounded up,
    /// at most the CPUs allowed and 2].
    #[arg(long, global = true, env = ferry_contract::env::FERRY_THREADS, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=ferry::cpu::MAX_THREADS as i64))]
    pub threads: Option<u16>,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy a disk (NBD URI or local path) to a block device or file.
    Copy(Box<copy_cmd::CopyArgs>),
    /// Measure copy speed (a built-in synthetic disk, or SRC DST against peers).
    Bench(bench::BenchArgs),
    /// The import pod's entrypoint: KubeVirt CDI's importer contract (environment
    /// variables, /metrics on :8443, termination message).
    Import(Box<import_cmd::ImportArgs>),
    /// The upload pod's entrypoint: serve one upload over HTTPS (KubeVirt CDI's upload
    /// server contract, Deckhouse's `/upload/<token>` URL) into a file or block device.
    UploadServer(Box<upload_server_cmd::UploadServerArgs>),
    /// Send a disk image to an upload server, with a progress bar.
    Upload(upload_cmd::UploadArgs),
    /// Compare two disks by their digests (BLAKE3 over 64 KiB leaves): exit 0 when
    /// identical, 1 naming the first differing range.
    Verify(Box<verify_cmd::VerifyArgs>),
    /// Preflight: would a migration of this source onto this target work? (SRC, or the
    /// import's IMPORTER_* environment, or --vddk-libdir DIR alone.)
    Inspect(Box<inspect_cmd::InspectArgs>),
    /// Internal: run a command and report its wall time, CPU time and peak RSS.
    #[command(name = "__measure", hide = true)]
    Measure(bench::MeasureArgs),
}

/// Largest klog verbosity accepted (`-v=N`); klog itself takes any int32, and nothing
/// past trace level adds output here.
pub const MAX_KLOG_VERBOSITY: u32 = 1000;

/// Take the klog verbosity forms CDI's controller and other Kubernetes launchers append
/// (`-v=N`, `--v=N`, `-v N`, `--v N`, N a non-negative integer) out of the command line,
/// wherever they stand, leaving Ferry's own `-v`/`-vv` counts as they are. Returns the
/// remaining arguments and the highest N seen, mapped to Ferry's levels: klog's default
/// levels 0–2 (CDI passes 1) are info, 3–4 debug, 5 and up trace.
pub fn take_klog_verbosity(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<(Vec<std::ffi::OsString>, Option<u8>), String> {
    let level = |v: &str| -> Result<u8, String> {
        let n: u32 = v
            .parse()
            .ok()
            .filter(|n| *n <= MAX_KLOG_VERBOSITY)
            .ok_or_else(|| {
                format!(
                    "invalid klog verbosity -v={v:?}: expected an integer from 0 to {MAX_KLOG_VERBOSITY}"
                )
            })?;
        Ok(match n {
            0..=2 => 0,
            3 | 4 => 1,
            _ => 2,
        })
    };
    let is_number = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    let mut out = Vec::new();
    let mut found: Option<u8> = None;
    let mut it = args.into_iter().peekable();
    while let Some(a) = it.next() {
        let text = a.to_str().unwrap_or_default();
        let value = if let Some(v) = text
            .strip_prefix("-v=")
            .or_else(|| text.strip_prefix("--v="))
        {
            Some(v.to_string())
        } else if (text == "-v" || text == "--v")
            && it.peek().and_then(|n| n.to_str()).is_some_and(is_number)
        {
            it.next().and_then(|n| n.into_string().ok())
        } else {
            None
        };
        match value {
            Some(v) => found = Some(found.unwrap_or(0).max(level(&v)?)),
            None => out.push(a),
        }
    }
    Ok((out, found))
}

/// Tuning shared by copy and bench.
#[derive(Debug, Clone, Args)]
pub struct Tuning {
    /// Pool buffer size in units of 64 KiB (also the largest request); for VDDK sources
    /// also the NFC AIO buffer size when given (0: not set, VDDK's default) [default: 16].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=MAX_BUF_SIZE_IN_64K))]
    pub buf_size_in_64k: Option<u64>,
    /// Number of pool buffers (= requests in flight); for VDDK sources also the NFC AIO
    /// buffer count when given (0: not set) [default: 32; 4 for VDDK sources].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=MAX_BUF_COUNT))]
    pub buf_count: Option<u64>,
    /// I/O engine for the target.
    #[arg(long, value_enum, default_value_t = EngineChoice::Auto)]
    pub io_engine: EngineChoice,
    /// O_DIRECT on the target.
    #[arg(long, value_enum, default_value_t = DirectMode::Auto)]
    pub direct: DirectMode,
    /// For an nbds:// source: the directory with `ca-cert.pem` (and optionally
    /// `client-cert.pem`, `client-key.pem`), as the URI's `tls-certificates`.
    #[arg(long, value_name = "DIR")]
    pub tls_certificates: Option<std::path::PathBuf>,
    /// For an nbds:// source: the name the server's certificate must carry, as the
    /// URI's `tls-hostname` [default: the URI's host].
    #[arg(long, value_name = "NAME")]
    pub tls_hostname: Option<String>,
    /// For an nbds:// source: check the server's certificate (false: accept any), as the
    /// URI's `tls-verify-peer` [default: true].
    #[arg(long, value_name = "BOOL")]
    pub tls_verify_peer: Option<bool>,
    /// NBD connections when the server allows multi-conn.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=MAX_CONNECTIONS))]
    pub connections: u64,
    /// Read every byte instead of trusting the source's allocation (extents).
    #[arg(long)]
    pub no_extents: bool,
    /// Write all-zero data buffers to a new file instead of leaving them as holes.
    #[arg(long)]
    pub no_zero_detect: bool,
    /// Compute the disk's digest as it is read (BLAKE3 over 64 KiB leaves, as
    /// `ferry verify`) and report it (`digest` in --json).
    #[arg(long)]
    pub digest: bool,
    /// Seconds to wait for any one NBD reply (and for connect + handshake).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// Transient source failures retried in a row without progress before giving up
    /// (a read read again; a lost connection opened again, going on from the durable
    /// watermark); 0 turns retries off.
    #[arg(long, default_value_t = ferry::retry::DEFAULT_RETRIES, value_parser = clap::value_parser!(u32).range(0..=ferry::retry::MAX_RETRIES as i64))]
    pub retries: u32,
}

impl Tuning {
    /// Pool buffer count (the NBD/local default unless set).
    pub fn count(&self) -> u64 {
        self.buf_count
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_BUF_COUNT)
    }

    /// Pool buffer size in 64 KiB units (16 unless set).
    pub fn size_in_64k(&self) -> u64 {
        self.buf_size_in_64k
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_BUF_SIZE_IN_64K)
    }

    /// Pool buffer size in bytes.
    pub fn buf_size(&self) -> usize {
        (self.size_in_64k() * 64 * 1024) as usize
    }

    /// Check the pool bound.
    pub fn validate(&self) -> Result<(), ferry::Error> {
        let pool = self.size_in_64k() * 64 * 1024 * self.count();
        if pool > MAX_POOL_BYTES {
            return Err(ferry::error::UsageError::PoolTooLarge {
                mib: pool >> 20,
                limit_mib: MAX_POOL_BYTES >> 20,
            }
            .into());
        }
        Ok(())
    }

    /// Shrink the buffer count to fit the cgroup's memory limit (see [`ferry::memory`]).
    pub fn fit_memory(&mut self, vddk: bool) -> Result<(), ferry::Error> {
        let n = ferry::memory::fit_to_cgroup(self.buf_size() as u64, self.count(), vddk)
            .map_err(|e| ferry::Error::from(ferry::error::UsageError::from(e)))?;
        if n != self.count() {
            self.buf_count = Some(n);
        }
        Ok(())
    }

    /// The retry policy.
    pub fn retry(&self) -> ferry::retry::RetryPolicy {
        ferry::retry::RetryPolicy {
            retries: self.retries,
            ..Default::default()
        }
    }

    /// NBD source options.
    pub fn nbd(&self) -> NbdSourceOptions {
        let mut o = NbdSourceOptions::new(
            self.connections as usize,
            Duration::from_secs(self.timeout),
            !self.no_extents,
        );
        o.tls = ferry_nbd::tls::TlsSettings {
            certificates: self.tls_certificates.clone(),
            verify_peer: self.tls_verify_peer,
            hostname: self.tls_hostname.clone(),
            psk_file: None,
        };
        o
    }

    /// The flags that reproduce this tuning on another `ferry` command line.
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            format!("--buf-size-in-64k={}", self.size_in_64k()),
            format!("--buf-count={}", self.count()),
            format!("--connections={}", self.connections),
            format!("--timeout={}", self.timeout),
            format!("--retries={}", self.retries),
            format!(
                "--io-engine={}",
                clap::ValueEnum::to_possible_value(&self.io_engine)
                    .map(|v| v.get_name().to_string())
                    .unwrap_or_default()
            ),
            format!(
                "--direct={}",
                clap::ValueEnum::to_possible_value(&self.direct)
                    .map(|v| v.get_name().to_string())
                    .unwrap_or_default()
            ),
        ];
        if self.no_extents {
            v.push("--no-extents".into());
        }
        if self.no_zero_detect {
            v.push("--no-zero-detect".into());
        }
        if self.digest {
            v.push("--digest".into());
        }
        if let Some(d) = &self.tls_certificates {
            v.push(format!("--tls-certificates={}", d.display()));
        }
        if let Some(h) = &self.tls_hostname {
            v.push(format!("--tls-hostname={h}"));
        }
        if let Some(b) = self.tls_verify_peer {
            v.push(format!("--tls-verify-peer={b}"));
        }
        v
    }
}

/// Work that must happen on the main thread before the async runtime starts: for a
/// VDDK source, make sure `<libdir>/lib64` is on LD_LIBRARY_PATH (glibc reads it only at
/// process start, so re-exec once if needed), then load the library and call InitEx
/// here, before any other thread exists, as VMware advises.
pub fn prepare(cli: &mut Cli) -> anyhow::Result<()> {
    if let Command::Import(a) = &mut cli.command {
        return prepare_import(a);
    }
    if let Command::Inspect(a) = &mut cli.command {
        return prepare_inspect(a);
    }
    let Command::Copy(a) = &mut cli.command else {
        return Ok(());
    };
    let vddk = ferry::source::vddk::options::is_vddk_uri(&a.src);
    a.tuning.fit_memory(vddk)?;
    if !vddk {
        return Ok(());
    }
    let opts = a
        .vddk
        .resolve(&a.src, &mut a.tuning)
        .map_err(ferry::Error::Vddk)?;
    reexec_with_library_path(&opts.libdir);
    ferry::source::vddk::init(&opts.libdir, opts.nfc, opts.config_file.as_deref())
        .map_err(ferry::Error::Vddk)?;
    a.vddk_resolved = Some(opts);
    Ok(())
}

fn prepare_import(a: &mut import_cmd::ImportArgs) -> anyhow::Result<()> {
    a.take_nfc_flags();
    let cfg = match a.config() {
        Ok(c) => c,
        Err(e) => {
            import_cmd::fail(&a.termination_log(), &e.to_string());
            return Err(ferry::Error::Config(e).into());
        }
    };
    let vddk = cfg.source == ferry::import::config::SourceKind::Vddk;
    if vddk {
        reexec_with_library_path(&cfg.libdir);
        a.adopt_vddk_config(&cfg);
    }
    if let Err(e) = a.fit_memory(&cfg) {
        import_cmd::fail(&cfg.termination_log, &e.to_string());
        return Err(ferry::Error::from(ferry::error::UsageError::from(e)).into());
    }
    if vddk
        && let Err(e) = ferry::source::vddk::init(&cfg.libdir, a.nfc, cfg.vddk_config.as_deref())
    {
        import_cmd::fail(&cfg.termination_log, &e.to_string());
        return Err(ferry::Error::Vddk(e).into());
    }
    a.resolved = Some(cfg);
    Ok(())
}

/// `ferry inspect` in its environment form: as [`prepare_import`], but a VDDK that does
/// not initialise is a finding of the report, not the end of it.
fn prepare_inspect(a: &mut inspect_cmd::InspectArgs) -> anyhow::Result<()> {
    if !a.env_form() {
        return Ok(());
    }
    a.import.take_nfc_flags();
    let cfg = a.import.config().map_err(ferry::Error::Config)?;
    if cfg.source == ferry::import::config::SourceKind::Vddk {
        let found = vddk_sys::candidates(&cfg.libdir)
            .iter()
            .any(|(_, p)| p.exists());
        if found {
            reexec_with_library_path(&cfg.libdir);
        }
        a.import.adopt_vddk_config(&cfg);
        let _ = a.import.fit_memory(&cfg);
        a.vddk_init = Some(if found {
            ferry::source::vddk::init(&cfg.libdir, a.import.nfc, cfg.vddk_config.as_deref())
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            Err("no VDDK library".into())
        });
    }
    a.import.resolved = Some(cfg);
    Ok(())
}

/// Marker set on the re-executed process so it never loops.
const REEXEC_MARK: &str = "FERRY_VDDK_REEXECED";

fn reexec_with_library_path(libdir: &std::path::Path) {
    let lib64 = libdir.join("lib64");
    if !lib64.is_dir() || std::env::var_os(REEXEC_MARK).is_some() {
        return;
    }
    let current = std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default();
    if std::env::split_paths(&current).any(|p| p == lib64) {
        return;
    }
    let mut paths = vec![lib64.clone()];
    paths.extend(std::env::split_paths(&current));
    let Ok(joined) = std::env::join_paths(paths) else {
        return;
    };
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    tracing::debug!(lib64 = %lib64.display(), "re-executing with the VDDK libraries on LD_LIBRARY_PATH");
    let err = std::os::unix::process::CommandExt::exec(
        std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("LD_LIBRARY_PATH", joined)
            .env(REEXEC_MARK, "1"),
    );
    tracing::warn!(error = %err, "could not re-execute with LD_LIBRARY_PATH; VDDK's own libraries may not load");
}

/// Run a parsed command line.
///
/// SIGINT and SIGTERM cancel the whole command — connecting and negotiating included —
/// and it ends with `Error::Cancelled` (the target is then reported incomplete).
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Import(mut a) = cli.command {
        // The import handles signals itself, so that a cancellation still writes the
        // termination message.
        let cfg = match a.resolved.take() {
            Some(c) => c,
            None => a.config().map_err(ferry::Error::Config)?,
        };
        return import_cmd::run(*a, cfg).await;
    }
    if let Command::UploadServer(a) = cli.command {
        // Signals end it through its own select, so the termination message is written.
        return upload_server_cmd::run(*a).await;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|error| ferry::Error::Signals {
            signal: "SIGTERM",
            error,
        })?;
    let work = async {
        match cli.command {
            Command::Copy(a) => copy_cmd::run(*a).await,
            Command::Bench(a) => bench::run(a, cli.threads).await,
            Command::Measure(a) => bench::measure(a),
            Command::Upload(a) => upload_cmd::run(a).await,
            Command::Verify(a) => verify_cmd::run(*a).await,
            Command::Inspect(a) => inspect_cmd::run(*a).await,
            Command::Import(_) | Command::UploadServer(_) => unreachable!("handled above"),
        }
    };
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Err(ferry::Error::Cancelled("SIGINT").into()),
        _ = term.recv() => Err(ferry::Error::Cancelled("SIGTERM").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(args: &[&str]) -> Result<(Vec<String>, Option<u8>), String> {
        take_klog_verbosity(args.iter().map(std::ffi::OsString::from)).map(|(a, v)| {
            (
                a.into_iter()
                    .map(|s| s.into_string().expect("utf-8"))
                    .collect(),
                v,
            )
        })
    }

    #[test]
    fn klog_verbosity_forms_are_taken_out_wherever_they_stand() {
        for (args, left, level) in [
            (
                &["ferry", "import", "-v=1"][..],
                &["ferry", "import"][..],
                Some(0),
            ),
            (&["ferry", "import", "--v=3"], &["ferry", "import"], Some(1)),
            (
                &["ferry", "-v", "5", "import"],
                &["ferry", "import"],
                Some(2),
            ),
            (
                &["ferry", "import", "--v", "0"],
                &["ferry", "import"],
                Some(0),
            ),
            (
                &["ferry", "-v=2", "import", "-v=4"],
                &["ferry", "import"],
                Some(1),
            ),
        ] {
            assert_eq!(
                take(args).expect("accepted"),
                (left.iter().map(|s| s.to_string()).collect(), level),
                "{args:?}"
            );
        }
    }

    #[test]
    fn ferrys_own_count_flags_are_left_alone() {
        for args in [
            &["ferry", "-v", "copy", "a", "b"][..],
            &["ferry", "-vv", "import"],
            &["ferry", "copy", "-v", "nbd://h/x", "t.img"],
        ] {
            let (left, level) = take(args).expect("accepted");
            assert_eq!(left, args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(level, None);
        }
        let cli = Cli::try_parse_from(["ferry", "-vv", "bench"]).expect("parse");
        assert_eq!(cli.verbose, 2);
    }

    #[test]
    fn a_bad_klog_verbosity_is_one_clear_error() {
        for bad in ["-v=", "-v=x", "--v=-1", "-v=1001", "-v=99999999999"] {
            let e = take(&["ferry", "import", bad]).expect_err(bad);
            assert!(e.contains("invalid klog verbosity"), "{e}");
        }
    }

    #[test]
    fn cdis_command_line_parses() {
        let (argv, level) = take(&["ferry", "import", "-v=1"]).expect("accepted");
        let cli = Cli::try_parse_from(argv).expect("CDI's args parse");
        assert!(matches!(cli.command, Command::Import(_)));
        assert_eq!(level, Some(0));
    }
}
