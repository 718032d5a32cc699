//! What a VDDK source needs: the library directory, the vSphere identity, the disk, and
//! how to open it. Built from a `vddk://` URI and/or flags (flags win).
//!
//! `vddk://USER@HOST[:PORT]/?vm=moref=vm-123&file=[ds] vm/vm.vmdk&thumbprint=AA:…&snapshot=snapshot-7&transports=nbdssl:nbd`
//!
//! The password never appears in a URI or on the command line: it comes from a file
//! (`--password-file`) or the environment (`FERRY_VDDK_PASSWORD`), and is never logged.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use percent_encoding::percent_decode_str;

use super::config;
use super::error::VddkError;

/// Where CDI and Forklift mount the VDDK distribution.
pub const DEFAULT_LIBDIR: &str = ferry_contract::env::DEFAULT_VDDK_LIBDIR;
/// Transports tried in order unless told otherwise (never SAN unless asked).
pub const DEFAULT_TRANSPORTS: &str = "file:nbdssl:nbd";
/// Cap on a `vddk://` URI.
pub const MAX_VDDK_URI_LEN: usize = 8192;
/// Cap on a password file.
pub const MAX_PASSWORD_LEN: usize = 4096;
/// Environment variable holding the password when no file is given.
pub const PASSWORD_ENV: &str = "FERRY_VDDK_PASSWORD";

/// A secret string: never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    /// The secret itself (only to hand to the library).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// NBD wire compression (VDDK open flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Compression {
    /// No compression.
    #[default]
    None,
    /// zlib.
    Zlib,
    /// FastLZ.
    Fastlz,
    /// Skip runs of zeroes.
    Skipz,
}

/// Everything needed to open one VDDK disk.
#[derive(Debug, Clone)]
pub struct VddkOptions {
    /// The VDDK distribution directory (holding lib64/).
    pub libdir: PathBuf,
    /// vCenter or ESXi host.
    pub server: String,
    /// HTTPS port (0 = 443).
    pub port: u32,
    /// User.
    pub user: String,
    /// Password.
    pub password: Secret,
    /// SHA-1 thumbprint, `AA:BB:…` (20 pairs).
    pub thumbprint: String,
    /// VM managed object reference, e.g. `vm-123`.
    pub vm_moref: String,
    /// Disk path, e.g. `[datastore1] vm/vm.vmdk`.
    pub disk: String,
    /// Snapshot moref to read from.
    pub snapshot: Option<String>,
    /// Colon-separated transport list.
    pub transports: String,
    /// Open with VIXDISKLIB_FLAG_OPEN_UNBUFFERED.
    pub unbuffered: bool,
    /// Wire compression.
    pub compression: Compression,
    /// Operator's extra VDDK config file.
    pub config_file: Option<PathBuf>,
    /// Ferry's pool buffer size (64 KiB units; also the largest read).
    pub buf_size_in_64k: u64,
    /// Ferry's pool buffer count (reads in flight).
    pub buf_count: u64,
    /// What VDDK is told for its NFC AIO session buffers.
    pub nfc: config::NfcAio,
    /// Bound on any one read.
    pub read_timeout: Duration,
}

/// The parts of a `vddk://` URI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VddkUri {
    /// User (from USER@).
    pub user: Option<String>,
    /// Host.
    pub server: Option<String>,
    /// Port.
    pub port: Option<u32>,
    /// `vm=` (with or without the `moref=` prefix).
    pub vm: Option<String>,
    /// `file=`.
    pub file: Option<String>,
    /// `thumbprint=`.
    pub thumbprint: Option<String>,
    /// `snapshot=`.
    pub snapshot: Option<String>,
    /// `transports=`.
    pub transports: Option<String>,
    /// `libdir=`.
    pub libdir: Option<String>,
}

fn bad(reason: impl fmt::Display) -> VddkError {
    VddkError::Uri {
        reason: reason.to_string(),
    }
}

fn decode(s: &str, what: &str) -> Result<String, VddkError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| bad(format!("{what} is not UTF-8")))
}

/// Whether a source string is a VDDK source.
pub fn is_vddk_uri(s: &str) -> bool {
    s.starts_with("vddk://") || s == "vddk:" || s == "vddk"
}

/// Parse `vddk://USER@HOST[:PORT]/?key=value&…` (also bare `vddk:` when flags say all).
pub fn parse_uri(s: &str) -> Result<VddkUri, VddkError> {
    if s.len() > MAX_VDDK_URI_LEN {
        return Err(bad(format!("longer than {MAX_VDDK_URI_LEN} bytes")));
    }
    if s == "vddk:" || s == "vddk" {
        return Ok(VddkUri::default());
    }
    let rest = s
        .strip_prefix("vddk://")
        .ok_or_else(|| bad("must start with vddk://"))?;
    let (before, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = before.split_once('/').map_or(before, |(a, _)| a);
    let mut u = VddkUri::default();
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hp)) => {
            if userinfo.contains(':') {
                return Err(bad(format!(
                    "put the password in --password-file or ${PASSWORD_ENV}, never in the URI"
                )));
            }
            u.user = Some(decode(userinfo, "user")?).filter(|x| !x.is_empty());
            hp
        }
        None => authority,
    };
    if !hostport.is_empty() {
        let (h, p) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
            _ => (hostport, None),
        };
        u.server = Some(h.trim_start_matches('[').trim_end_matches(']').to_string());
        if let Some(p) = p {
            u.port = Some(p.parse().map_err(|_| bad(format!("invalid port {p:?}")))?);
        }
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| bad(format!("parameter {pair:?} has no value")))?;
        let v = Some(decode(&v.replace('+', " "), k)?);
        match k {
            "vm" => u.vm = v,
            "file" | "disk" => u.file = v,
            "thumbprint" => u.thumbprint = v,
            "snapshot" => u.snapshot = v,
            "transports" => u.transports = v,
            "libdir" => u.libdir = v,
            "password" => {
                return Err(bad(format!(
                    "put the password in --password-file or ${PASSWORD_ENV}"
                )));
            }
            other => return Err(bad(format!("unknown parameter {other:?}"))),
        }
    }
    Ok(u)
}

/// Check a SHA-1 thumbprint: 20 hex pairs separated by colons. Returns it upper-cased.
pub fn validate_thumbprint(t: &str) -> Result<String, VddkError> {
    let pairs: Vec<&str> = t.split(':').collect();
    let ok = pairs.len() == 20
        && pairs
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(t.to_ascii_uppercase())
    } else {
        Err(VddkError::BadThumbprint {
            given: t.chars().take(80).collect(),
        })
    }
}

/// Read the password from a file (first line, trailing newline removed) or, without a
/// file, from [`PASSWORD_ENV`].
pub fn read_password(file: Option<&std::path::Path>) -> Result<Secret, VddkError> {
    match file {
        Some(p) => {
            let unreadable = |error| VddkError::PasswordFile {
                path: p.to_owned(),
                error,
            };
            let meta = std::fs::metadata(p).map_err(unreadable)?;
            if meta.len() > MAX_PASSWORD_LEN as u64 {
                return Err(VddkError::PasswordTooLong {
                    from: format!("password file {}", p.display()),
                });
            }
            let s = std::fs::read_to_string(p).map_err(unreadable)?;
            Ok(Secret(s.lines().next().unwrap_or("").to_string()))
        }
        None => match std::env::var(PASSWORD_ENV) {
            Ok(v) if v.len() <= MAX_PASSWORD_LEN => Ok(Secret(v)),
            Ok(_) => Err(VddkError::PasswordTooLong {
                from: format!("${PASSWORD_ENV}"),
            }),
            Err(_) => Err(VddkError::NoPassword),
        },
    }
}

/// The `vmxSpec` for a VM moref (accepts `vm-123` or `moref=vm-123`).
pub fn vmx_spec(vm: &str) -> String {
    if vm.starts_with("moref=") {
        vm.to_string()
    } else {
        format!("moref={vm}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD";

    #[test]
    fn full_uri_parses() {
        let u = parse_uri(&format!(
            "vddk://admin%40vsphere.local@vc.example.com:8443/?vm=moref=vm-123&file=%5Bds1%5D%20vm/vm.vmdk&thumbprint={TP}&snapshot=snapshot-7&transports=nbdssl:nbd"
        ))
        .expect("parse");
        assert_eq!(u.user.as_deref(), Some("admin@vsphere.local"));
        assert_eq!(u.server.as_deref(), Some("vc.example.com"));
        assert_eq!(u.port, Some(8443));
        assert_eq!(u.vm.as_deref(), Some("moref=vm-123"));
        assert_eq!(u.file.as_deref(), Some("[ds1] vm/vm.vmdk"));
        assert_eq!(u.snapshot.as_deref(), Some("snapshot-7"));
        assert_eq!(u.transports.as_deref(), Some("nbdssl:nbd"));
    }

    #[test]
    fn file_with_raw_spaces_and_brackets_parses() {
        let u = parse_uri("vddk://u@h/?vm=vm-1&file=[ds] vm/vm.vmdk").expect("parse");
        assert_eq!(u.file.as_deref(), Some("[ds] vm/vm.vmdk"));
    }

    #[test]
    fn password_in_uri_is_refused() {
        let e = parse_uri("vddk://u:secret@h/").expect_err("refuse");
        assert!(e.to_string().contains("--password-file"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn unknown_parameter_is_refused() {
        assert!(
            parse_uri("vddk://h/?bogus=1")
                .expect_err("refuse")
                .to_string()
                .contains("unknown parameter")
        );
    }

    #[test]
    fn thumbprint_must_be_20_hex_pairs() {
        assert_eq!(validate_thumbprint(&TP.to_lowercase()).expect("ok"), TP);
        assert!(validate_thumbprint("AA:BB").is_err());
        assert!(validate_thumbprint(&TP.replace("AA:BB:CC", "AA:BB:CG")).is_err());
    }

    #[test]
    fn vmx_spec_adds_the_moref_prefix_once() {
        assert_eq!(vmx_spec("vm-1"), "moref=vm-1");
        assert_eq!(vmx_spec("moref=vm-1"), "moref=vm-1");
    }

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret::new("pw".into())), "<redacted>");
    }
}
