//! VDDK source flags, merged with a `vddk://` URI (flags win).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ferry::source::vddk::VddkError;
use ferry::source::vddk::options::{
    self, Compression, DEFAULT_LIBDIR, DEFAULT_TRANSPORTS, VddkOptions,
};

use super::{DEFAULT_VDDK_BUF_COUNT, Tuning};

/// Flags for a VDDK source (`ferry copy vddk://… DST` or `ferry copy vddk: DST --server …`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "VDDK source")]
pub struct VddkArgs {
    /// The VDDK distribution directory (with lib64/libvixDiskLib.so.N).
    #[arg(long, value_name = "DIR")]
    pub vddk_libdir: Option<PathBuf>,
    /// vCenter or ESXi host.
    #[arg(long)]
    pub server: Option<String>,
    /// vSphere user.
    #[arg(long)]
    pub user: Option<String>,
    /// File holding the password (first line); otherwise $FERRY_VDDK_PASSWORD.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// SHA-1 thumbprint of the server certificate (AA:BB:…, 20 pairs).
    #[arg(long)]
    pub thumbprint: Option<String>,
    /// VM managed object reference (vm-123).
    #[arg(long)]
    pub vm_moref: Option<String>,
    /// Disk path as vSphere names it ("[datastore1] vm/vm.vmdk").
    #[arg(long)]
    pub disk: Option<String>,
    /// Snapshot moref to read from (snapshot-7).
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Transport modes to try in order [default: file:nbdssl:nbd].
    #[arg(long)]
    pub transports: Option<String>,
    /// Extra VDDK config file for InitEx (merged; the NFC AIO keys come from
    /// --buf-size-in-64k/--buf-count).
    #[arg(long, value_name = "FILE")]
    pub vddk_config: Option<PathBuf>,
    /// Open the disk unbuffered (VIXDISKLIB_FLAG_OPEN_UNBUFFERED).
    #[arg(long)]
    pub unbuffered: bool,
    /// NBD wire compression.
    #[arg(long, value_enum, default_value_t = Compression::None)]
    pub compression: Compression,
}

fn need(v: Option<String>, flag: &'static str) -> Result<String, VddkError> {
    v.filter(|s| !s.is_empty())
        .ok_or(VddkError::Missing { flag })
}

impl VddkArgs {
    /// Build the options for `src` (a `vddk://` URI); the tuning's buffer count defaults
    /// to the VDDK value when unset.
    pub fn resolve(&self, src: &str, tuning: &mut Tuning) -> Result<VddkOptions, VddkError> {
        let u = options::parse_uri(src)?;
        let thumbprint = options::validate_thumbprint(&need(
            self.thumbprint.clone().or(u.thumbprint),
            "--thumbprint",
        )?)?;
        let transports = self
            .transports
            .clone()
            .or(u.transports)
            .unwrap_or_else(|| DEFAULT_TRANSPORTS.into());
        if transports
            .split(':')
            .any(|t| !matches!(t, "file" | "san" | "hotadd" | "nbdssl" | "nbd"))
        {
            return Err(VddkError::Transports {
                given: transports.to_string(),
            });
        }
        // What the flags set is what VDDK is told (0 or absent: the config file's value,
        // or VDDK's default); the pool has its own defaults either way.
        let nfc = ferry::source::vddk::config::NfcAio::from_flags(
            tuning.buf_size_in_64k,
            tuning.buf_count,
        );
        let buf_count = match tuning.buf_count {
            Some(n) if n > 0 => n,
            _ => *tuning.buf_count.insert(DEFAULT_VDDK_BUF_COUNT),
        };
        Ok(VddkOptions {
            libdir: self
                .vddk_libdir
                .clone()
                .or(u.libdir.map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_LIBDIR)),
            server: need(self.server.clone().or(u.server), "--server")?,
            port: u.port.unwrap_or(0),
            user: need(self.user.clone().or(u.user), "--user")?,
            password: options::read_password(self.password_file.as_deref())?,
            thumbprint,
            vm_moref: need(self.vm_moref.clone().or(u.vm), "--vm-moref")?,
            disk: need(self.disk.clone().or(u.file), "--disk")?,
            snapshot: self.snapshot.clone().or(u.snapshot),
            transports,
            unbuffered: self.unbuffered,
            compression: self.compression,
            config_file: self.vddk_config.clone(),
            buf_size_in_64k: tuning.size_in_64k(),
            buf_count,
            nfc,
            read_timeout: Duration::from_secs(tuning.timeout),
        })
    }
}
