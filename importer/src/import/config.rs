//! The import pod's configuration: KubeVirt CDI's importer environment contract
//! (reference/cdi-contract.md §b), each variable also settable by a flag (flags win).
//! Everything is validated before any connection; an invalid value stops the import with
//! one line that names the variable.

use std::path::{Path, PathBuf};

use crate::source::vddk::options::{Secret, validate_thumbprint};

/// Where CDI mounts a block-mode target.
pub const DEFAULT_BLOCK_DEVICE: &str = "/dev/cdi-block-volume";
/// Where CDI mounts a filesystem-mode target's volume.
pub const DEFAULT_DATA_DIR: &str = "/data";
/// The image file name in filesystem mode.
pub const DISK_IMG: &str = "disk.img";
/// Where CDI mounts extra VDDK arguments.
pub const DEFAULT_VDDK_CONFIG: &str = "/vddk-args/vddk-config-file";
/// Where the kubelet reads the termination message.
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";
/// Where CDI mounts the proxy's CA ConfigMap (`common.ImporterProxyCertDir`; CDI's own
/// importer reads this path and never the `IMPORTER_PROXY_CERT_DIR` it sets to it).
pub const DEFAULT_PROXY_CERT_DIR: &str = "/proxycerts/";
/// Cap on any one variable's value.
pub const MAX_VALUE_LEN: usize = 8192;
/// Cap on a Kubernetes quantity's digits.
pub const MAX_QUANTITY_LEN: usize = 64;

/// An invalid variable or flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    /// The variable (and flag) at fault, e.g. `PREALLOCATION (--preallocation)`.
    pub var: String,
    /// What is wrong.
    pub reason: String,
}

/// What to read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// vSphere through VDDK.
    Vddk,
    /// Any NBD server (`IMPORTER_ENDPOINT` is an NBD URI).
    Nbd,
    /// A blank image (`none`): Forklift's disks that virt-v2v fills afterwards.
    Blank,
}

/// Where to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Block mode: the device CDI maps into the pod.
    Block(PathBuf),
    /// Filesystem mode: `<dir>/disk.img`.
    Filesystem {
        /// The volume's mount point.
        dir: PathBuf,
    },
}

impl Target {
    /// The path written to.
    pub fn path(&self) -> PathBuf {
        match self {
            Target::Block(p) => p.clone(),
            Target::Filesystem { dir } => dir.join(DISK_IMG),
        }
    }
}

/// The raw inputs, as strings: from the environment, overridden by flags.
#[derive(Debug, Clone, Default)]
pub struct RawInputs {
    /// (variable, flag, value) for every input that was set.
    pub values: Vec<(&'static str, &'static str, String)>,
}

impl RawInputs {
    fn get(&self, var: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(v, _, _)| *v == var)
            .map(|(_, _, s)| s.as_str())
            .filter(|s| !s.is_empty())
    }
    fn flag(&self, var: &str) -> String {
        let f = self
            .values
            .iter()
            .find(|(v, _, _)| *v == var)
            .map_or("", |(_, f, _)| *f);
        if f.is_empty() {
            var.to_string()
        } else {
            format!("{var} (--{f})")
        }
    }
}

/// A validated import configuration.
#[derive(Debug, Clone)]
pub struct ImportConfig {
    /// Source kind.
    pub source: SourceKind,
    /// vCenter/ESXi URL (vddk) or NBD URI (nbd).
    pub endpoint: String,
    /// vSphere user.
    pub user: Option<String>,
    /// vSphere password.
    pub password: Option<Secret>,
    /// VM UUID (instance UUID preferred, BIOS UUID fallback).
    pub uuid: Option<String>,
    /// Datastore path of the base disk.
    pub backing_file: Option<String>,
    /// SHA-1 thumbprint of the vSphere endpoint.
    pub thumbprint: Option<String>,
    /// Snapshot to copy.
    pub current_checkpoint: Option<String>,
    /// Previous snapshot or change ID (warm deltas).
    pub previous_checkpoint: Option<String>,
    /// Last round of a warm migration.
    pub final_checkpoint: bool,
    /// The owner's UID: the progress metric's label.
    pub owner_uid: String,
    /// Preallocate the target.
    pub preallocation: bool,
    /// Fraction of a filesystem volume reserved for the filesystem.
    pub filesystem_overhead: f64,
    /// Requested size of the volume, in bytes.
    pub image_size: Option<u64>,
    /// Skip vSphere API certificate verification when no thumbprint/CA applies.
    pub insecure_tls: bool,
    /// CA certificates for the vSphere API.
    pub cert_dir: Option<PathBuf>,
    /// CA certificates for an `https://` proxy (CDI mounts them at `/proxycerts/`).
    pub proxy_cert_dir: PathBuf,
    /// Where the target is.
    pub target: Target,
    /// The VDDK distribution.
    pub libdir: PathBuf,
    /// Extra VDDK config file, when present.
    pub vddk_config: Option<PathBuf>,
    /// Termination message path.
    pub termination_log: PathBuf,
    /// Resume journal (default: beside disk.img in filesystem mode; none in block mode).
    pub journal: Option<PathBuf>,
}

fn err(inputs: &RawInputs, var: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        var: inputs.flag(var),
        reason: reason.into(),
    }
}

/// Parse `true`/`false` (as Go's strconv.ParseBool, which CDI uses).
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Parse a Kubernetes quantity (`10737418240`, `10Gi`, `500M`, `1.5Gi`) into bytes.
pub fn parse_quantity(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || s.len() > MAX_QUANTITY_LEN {
        return None;
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        _ => return None,
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut bytes = int.checked_mul(mult)?;
    if !frac.is_empty() {
        let digits = frac.len().min(18);
        let f: u64 = frac[..digits].parse().ok()?;
        let scale = 10u64.pow(u32::try_from(digits).ok()?);
        let part = u64::try_from(u128::from(f) * u128::from(mult) / u128::from(scale)).ok()?;
        bytes = bytes.checked_add(part)?;
    }
    Some(bytes)
}

/// A vSphere snapshot moref (`snapshot-123`).
pub fn is_snapshot_moref(s: &str) -> bool {
    s.strip_prefix("snapshot-")
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// A CBT change ID (`52 de c0 … 63/81`): CDI's pattern
/// `([0-9a-fA-F]{2}\s?)*-([0-9a-fA-F]{2}\s?)*/([0-9a-fA-F]*)`, matched in full.
pub fn is_change_id(s: &str) -> bool {
    fn pairs(p: &str) -> bool {
        let mut it = p.chars().peekable();
        while it.peek().is_some() {
            let (a, b) = (it.next(), it.next());
            if !matches!((a, b), (Some(a), Some(b)) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit())
            {
                return false;
            }
            if it.peek().is_some_and(|c| c.is_whitespace()) {
                it.next();
            }
        }
        true
    }
    let Some((head, seq)) = s.split_once('/') else {
        return false;
    };
    let Some((a, b)) = head.split_once('-') else {
        return false;
    };
    !a.is_empty() && pairs(a) && pairs(b) && seq.chars().all(|c| c.is_ascii_hexdigit())
}

/// A UUID in 8-4-4-4-12 hex form.
pub fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Validate the inputs. `block_device` and `data_dir` locate the target (block mode
/// when the device exists, as CDI decides).
pub fn validate(
    inputs: &RawInputs,
    block_device: &Path,
    data_dir: &Path,
) -> Result<ImportConfig, ConfigError> {
    for (var, _, v) in &inputs.values {
        if v.len() > MAX_VALUE_LEN {
            return Err(err(
                inputs,
                var,
                format!("value longer than {MAX_VALUE_LEN} bytes"),
            ));
        }
    }
    let source = match inputs.get("IMPORTER_SOURCE").unwrap_or("vddk") {
        "vddk" => SourceKind::Vddk,
        "nbd" => SourceKind::Nbd,
        "none" => SourceKind::Blank,
        other => {
            return Err(err(
                inputs,
                "IMPORTER_SOURCE",
                format!("unsupported source {other:?}: use vddk, nbd or none (a blank image)"),
            ));
        }
    };
    // CDI's `archive` content type unpacks a tar into the volume; Ferry writes disk
    // images only. CDI's own words for the blank case.
    match (source, inputs.get("IMPORTER_CONTENTTYPE")) {
        (_, None | Some("kubevirt")) => {}
        (SourceKind::Blank, Some(other)) => {
            return Err(err(
                inputs,
                "IMPORTER_CONTENTTYPE",
                format!("Cannot create empty disk with content type {other}"),
            ));
        }
        (_, Some(other)) => {
            return Err(err(
                inputs,
                "IMPORTER_CONTENTTYPE",
                format!(
                    "content type {other:?} is not supported: Ferry writes disk images (kubevirt)"
                ),
            ));
        }
    }
    let endpoint = match (source, inputs.get("IMPORTER_ENDPOINT")) {
        (SourceKind::Blank, e) => e.unwrap_or_default().to_string(),
        (_, Some(e)) => e.to_string(),
        (_, None) => {
            return Err(err(
                inputs,
                "IMPORTER_ENDPOINT",
                "required (the vCenter/ESXi URL, or an NBD URI)",
            ));
        }
    };
    let boolean = |var: &str, default: bool| -> Result<bool, ConfigError> {
        match inputs.get(var) {
            None => Ok(default),
            Some(v) => parse_bool(v).ok_or_else(|| {
                err(
                    inputs,
                    var,
                    format!("invalid boolean {v:?}: use true or false"),
                )
            }),
        }
    };
    let preallocation = boolean("PREALLOCATION", false)?;
    let insecure_tls = boolean("INSECURE_TLS", false)?;
    let final_checkpoint = boolean("IMPORTER_FINAL_CHECKPOINT", false)?;
    let filesystem_overhead = match inputs.get("FILESYSTEM_OVERHEAD") {
        None => 0.0,
        Some(v) => match v.parse::<f64>() {
            Ok(x) if (0.0..1.0).contains(&x) => x,
            _ => {
                return Err(err(
                    inputs,
                    "FILESYSTEM_OVERHEAD",
                    format!(
                        "invalid fraction {v:?}: expected a number from 0 to below 1, e.g. 0.055"
                    ),
                ));
            }
        },
    };
    let image_size = match inputs.get("IMPORTER_IMAGE_SIZE") {
        None => None,
        Some(v) => Some(parse_quantity(v).ok_or_else(|| {
            err(
                inputs,
                "IMPORTER_IMAGE_SIZE",
                format!("invalid size {v:?}: expected bytes or a quantity like 10Gi"),
            )
        })?),
    };
    let current_checkpoint = inputs
        .get("IMPORTER_CURRENT_CHECKPOINT")
        .map(str::to_string);
    let previous_checkpoint = inputs
        .get("IMPORTER_PREVIOUS_CHECKPOINT")
        .map(str::to_string);
    // A snapshot moref, name or path of names, resolved in the VM's snapshot tree as
    // govmomi's FindSnapshot does (CDI): only what cannot name a snapshot is refused.
    if let Some(c) = &current_checkpoint
        && (c.trim() != c || c.chars().any(char::is_control))
    {
        return Err(err(
            inputs,
            "IMPORTER_CURRENT_CHECKPOINT",
            format!(
                "invalid snapshot reference {c:?}: expected a snapshot moref (snapshot-7), name or path"
            ),
        ));
    }
    if let Some(p) = &previous_checkpoint {
        if current_checkpoint.is_none() {
            return Err(err(
                inputs,
                "IMPORTER_PREVIOUS_CHECKPOINT",
                "set without IMPORTER_CURRENT_CHECKPOINT: a delta needs the snapshot to copy",
            ));
        }
        if !is_snapshot_moref(p) && !is_change_id(p) {
            return Err(err(
                inputs,
                "IMPORTER_PREVIOUS_CHECKPOINT",
                format!(
                    "invalid checkpoint {p:?}: expected snapshot-<n> or a change ID like \"52 de … 63/81\""
                ),
            ));
        }
    }
    let thumbprint = match inputs.get("IMPORTER_THUMBPRINT") {
        None => None,
        Some(t) => Some(
            validate_thumbprint(t)
                .map_err(|e| err(inputs, "IMPORTER_THUMBPRINT", e.to_string()))?,
        ),
    };
    let uuid = inputs.get("IMPORTER_UUID").map(str::to_string);
    if let Some(u) = &uuid
        && !is_uuid(u)
    {
        return Err(err(
            inputs,
            "IMPORTER_UUID",
            format!("invalid UUID {u:?}: expected 8-4-4-4-12 hex digits"),
        ));
    }
    let user = inputs.get("IMPORTER_ACCESS_KEY_ID").map(str::to_string);
    let password = inputs
        .get("IMPORTER_SECRET_KEY")
        .map(|s| Secret::new(s.to_string()));
    let backing_file = inputs.get("IMPORTER_BACKING_FILE").map(str::to_string);
    if source == SourceKind::Vddk {
        for (var, present) in [
            ("IMPORTER_ACCESS_KEY_ID", user.is_some()),
            ("IMPORTER_SECRET_KEY", password.is_some()),
            ("IMPORTER_UUID", uuid.is_some()),
            ("IMPORTER_BACKING_FILE", backing_file.is_some()),
            ("IMPORTER_THUMBPRINT", thumbprint.is_some()),
        ] {
            if !present {
                return Err(err(inputs, var, "required for IMPORTER_SOURCE=vddk"));
            }
        }
    } else if source == SourceKind::Nbd && !ferry_nbd::Uri::is_nbd_uri(&endpoint) {
        return Err(err(
            inputs,
            "IMPORTER_ENDPOINT",
            format!("{endpoint:?} is not an NBD URI (nbd://… or nbd+unix://…)"),
        ));
    }
    let target = if block_device.exists() {
        Target::Block(block_device.to_owned())
    } else {
        Target::Filesystem {
            dir: data_dir.to_owned(),
        }
    };
    let vddk_config = inputs
        .get("VDDK_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| {
            Path::new(DEFAULT_VDDK_CONFIG)
                .exists()
                .then(|| PathBuf::from(DEFAULT_VDDK_CONFIG))
        });
    Ok(ImportConfig {
        source,
        endpoint,
        user,
        password,
        uuid,
        backing_file,
        thumbprint,
        current_checkpoint,
        previous_checkpoint,
        final_checkpoint,
        owner_uid: inputs.get("OWNER_UID").unwrap_or("").to_string(),
        preallocation,
        filesystem_overhead,
        image_size,
        insecure_tls,
        cert_dir: inputs.get("IMPORTER_CERT_DIR").map(PathBuf::from),
        proxy_cert_dir: PathBuf::from(
            inputs
                .get("IMPORTER_PROXY_CERT_DIR")
                .unwrap_or(DEFAULT_PROXY_CERT_DIR),
        ),
        target,
        libdir: inputs.get("VDDK_LIBDIR").map_or_else(
            || PathBuf::from(crate::source::vddk::options::DEFAULT_LIBDIR),
            PathBuf::from,
        ),
        vddk_config,
        termination_log: inputs
            .get("TERMINATION_LOG")
            .map_or_else(|| PathBuf::from(DEFAULT_TERMINATION_LOG), PathBuf::from),
        journal: inputs.get("FERRY_JOURNAL").map(PathBuf::from),
    })
}

/// The host part of a vSphere endpoint (`https://vc.example:443/sdk` → `vc.example`, port).
pub fn endpoint_host(endpoint: &str) -> (String, Option<u16>) {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6.split_once(']').unwrap_or((v6, ""));
        return (
            h.to_string(),
            p.strip_prefix(':').and_then(|p| p.parse().ok()),
        );
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty() => {
            (h.to_string(), p.parse().ok())
        }
        _ => (authority.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD";

    fn inputs(pairs: &[(&'static str, &str)]) -> RawInputs {
        RawInputs {
            values: pairs.iter().map(|(k, v)| (*k, "", v.to_string())).collect(),
        }
    }

    fn vddk_base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("IMPORTER_SOURCE", "vddk"),
            ("IMPORTER_ENDPOINT", "https://vc.example/sdk"),
            ("IMPORTER_ACCESS_KEY_ID", "admin"),
            ("IMPORTER_SECRET_KEY", "pw"),
            ("IMPORTER_UUID", "42125a6b-7f0c-4c6e-9a3e-3f2d1c0b9a8e"),
            ("IMPORTER_BACKING_FILE", "[ds1] vm/vm.vmdk"),
            ("IMPORTER_THUMBPRINT", TP),
        ]
    }

    fn check(pairs: &[(&'static str, &str)]) -> Result<ImportConfig, ConfigError> {
        validate(
            &inputs(pairs),
            Path::new("/nonexistent/block"),
            Path::new("/data"),
        )
    }

    #[test]
    fn a_complete_vddk_environment_validates() {
        let c = check(&vddk_base()).expect("valid");
        assert_eq!(c.source, SourceKind::Vddk);
        assert_eq!(
            c.target,
            Target::Filesystem {
                dir: PathBuf::from("/data")
            }
        );
    }

    #[test]
    fn preallocation_that_is_not_a_boolean_names_the_variable() {
        let mut p = vddk_base();
        p.push(("PREALLOCATION", "yes please"));
        let e = check(&p).expect_err("invalid");
        assert!(
            e.to_string().starts_with("PREALLOCATION: invalid boolean"),
            "{e}"
        );
    }

    #[test]
    fn previous_checkpoint_without_current_is_refused() {
        let mut p = vddk_base();
        p.push(("IMPORTER_PREVIOUS_CHECKPOINT", "snapshot-1"));
        let e = check(&p).expect_err("invalid");
        assert!(
            e.to_string()
                .starts_with("IMPORTER_PREVIOUS_CHECKPOINT: set without"),
            "{e}"
        );
    }

    #[test]
    fn malformed_change_id_is_refused_and_a_real_one_accepted() {
        let mut p = vddk_base();
        p.push(("IMPORTER_CURRENT_CHECKPOINT", "snapshot-2"));
        p.push(("IMPORTER_PREVIOUS_CHECKPOINT", "52 de c0 zz-77/81"));
        assert!(
            check(&p)
                .expect_err("invalid")
                .to_string()
                .starts_with("IMPORTER_PREVIOUS_CHECKPOINT: invalid checkpoint")
        );
        p.pop();
        p.push((
            "IMPORTER_PREVIOUS_CHECKPOINT",
            "52 de c0 3e 7b 4f 19 d6-a1 b2 c3 d4 e5 f6 07 18/81",
        ));
        assert!(check(&p).is_ok());
    }

    #[test]
    fn malformed_thumbprint_names_the_variable() {
        let mut p = vddk_base();
        p.retain(|(k, _)| *k != "IMPORTER_THUMBPRINT");
        p.push(("IMPORTER_THUMBPRINT", "AA:BB"));
        assert!(
            check(&p)
                .expect_err("invalid")
                .to_string()
                .starts_with("IMPORTER_THUMBPRINT: invalid thumbprint")
        );
    }

    #[test]
    fn missing_required_vddk_variable_is_named() {
        let mut p = vddk_base();
        p.retain(|(k, _)| *k != "IMPORTER_UUID");
        assert_eq!(
            check(&p).expect_err("invalid").to_string(),
            "IMPORTER_UUID: required for IMPORTER_SOURCE=vddk"
        );
    }

    #[test]
    fn nbd_source_needs_an_nbd_uri() {
        let e = check(&[
            ("IMPORTER_SOURCE", "nbd"),
            ("IMPORTER_ENDPOINT", "https://x"),
        ])
        .expect_err("invalid");
        assert!(e.to_string().starts_with("IMPORTER_ENDPOINT:"), "{e}");
        assert!(
            check(&[
                ("IMPORTER_SOURCE", "nbd"),
                ("IMPORTER_ENDPOINT", "nbd+unix:///?socket=/s")
            ])
            .is_ok()
        );
    }

    #[test]
    fn flag_names_appear_next_to_the_variable() {
        let r = RawInputs {
            values: vec![
                ("IMPORTER_ENDPOINT", "endpoint", "x".into()),
                ("PREALLOCATION", "preallocation", "maybe".into()),
            ],
        };
        let e = validate(&r, Path::new("/nonexistent"), Path::new("/data")).expect_err("invalid");
        assert_eq!(e.var, "PREALLOCATION (--preallocation)");
    }

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse_quantity("10Gi"), Some(10 << 30));
        assert_eq!(parse_quantity("500M"), Some(500_000_000));
        assert_eq!(parse_quantity("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_quantity("1024"), Some(1024));
        assert_eq!(parse_quantity("16Ei"), None);
        assert_eq!(parse_quantity("ten"), None);
        assert_eq!(parse_quantity(""), None);
    }

    #[test]
    fn filesystem_overhead_must_be_a_fraction() {
        let mut p = vddk_base();
        p.push(("FILESYSTEM_OVERHEAD", "6%"));
        assert!(
            check(&p)
                .expect_err("invalid")
                .to_string()
                .starts_with("FILESYSTEM_OVERHEAD")
        );
    }

    #[test]
    fn endpoint_host_strips_scheme_path_and_port() {
        assert_eq!(
            endpoint_host("https://vc.example:8443/sdk"),
            ("vc.example".into(), Some(8443))
        );
        assert_eq!(endpoint_host("vc.example"), ("vc.example".into(), None));
        assert_eq!(
            endpoint_host("https://[fd00::1]/sdk"),
            ("fd00::1".into(), None)
        );
    }

    #[test]
    fn block_mode_when_the_device_exists() {
        let dir = std::env::temp_dir();
        let c = validate(&inputs(&vddk_base()), &dir, Path::new("/data")).expect("valid");
        assert_eq!(c.target, Target::Block(dir));
    }
}
