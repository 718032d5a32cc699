//! The import pod's configuration: KubeVirt CDI's importer environment contract
//! (reference/cdi-contract.md §b), each variable also settable by a flag (flags win).
//! Everything is validated before any connection; an invalid value stops the import with
//! one line that names the variable.

use std::path::{Path, PathBuf};

use crate::source::vddk::options::{Secret, validate_thumbprint};

pub use ferry_contract::env::{
    DEFAULT_BLOCK_DEVICE, DEFAULT_DATA_DIR, DEFAULT_PROXY_CERT_DIR, DEFAULT_TERMINATION_LOG,
    DEFAULT_VDDK_CONFIG, DISK_IMG, MAX_QUANTITY_LEN, is_change_id, is_snapshot_moref, is_uuid,
    parse_bool, parse_quantity,
};
/// Cap on any one variable's value.
pub const MAX_VALUE_LEN: usize = 8192;

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
    /// An image at an `http://` or `https://` URL (CDI's `http` source).
    Http,
    /// A container image holding the disk under `/disk/` (CDI's `registry` source,
    /// `docker://…`).
    Registry,
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
    /// The downloaded bytes' checksum (http sources).
    pub checksum: Option<crate::checksum::Checksum>,
    /// The architecture a registry image must be (CDI's
    /// `IMPORTER_REGISTRY_IMAGE_ARCHITECTURE`).
    pub registry_architecture: Option<String>,
    /// CDI's `archive` content type: the source is a tar unpacked into the volume.
    pub archive: bool,
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
    let source = match inputs
        .get(ferry_contract::env::IMPORTER_SOURCE)
        .unwrap_or("vddk")
    {
        "vddk" => SourceKind::Vddk,
        "nbd" => SourceKind::Nbd,
        "none" => SourceKind::Blank,
        "http" => SourceKind::Http,
        "registry" => SourceKind::Registry,
        other => {
            return Err(err(
                inputs,
                ferry_contract::env::IMPORTER_SOURCE,
                format!(
                    "unsupported source {other:?}: use vddk, nbd, http, registry or none (a blank image)"
                ),
            ));
        }
    };
    // CDI's `archive` content type unpacks a tar into the volume (http sources here).
    // CDI's own words for the blank case.
    let archive = match (
        source,
        inputs.get(ferry_contract::env::IMPORTER_CONTENTTYPE),
    ) {
        (_, None | Some("kubevirt")) => false,
        (SourceKind::Http, Some("archive")) => true,
        (SourceKind::Blank, Some(other)) => {
            return Err(err(
                inputs,
                ferry_contract::env::IMPORTER_CONTENTTYPE,
                format!("Cannot create empty disk with content type {other}"),
            ));
        }
        (_, Some(other)) => {
            return Err(err(
                inputs,
                ferry_contract::env::IMPORTER_CONTENTTYPE,
                format!(
                    "content type {other:?} is not supported here: Ferry writes disk images (kubevirt), and unpacks archives from http sources"
                ),
            ));
        }
    };
    let endpoint = match (source, inputs.get(ferry_contract::env::IMPORTER_ENDPOINT)) {
        (SourceKind::Blank, e) => e.unwrap_or_default().to_string(),
        (_, Some(e)) => e.to_string(),
        (_, None) => {
            return Err(err(
                inputs,
                ferry_contract::env::IMPORTER_ENDPOINT,
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
    let preallocation = boolean(ferry_contract::env::PREALLOCATION, false)?;
    let insecure_tls = boolean(ferry_contract::env::INSECURE_TLS, false)?;
    let final_checkpoint = boolean(ferry_contract::env::IMPORTER_FINAL_CHECKPOINT, false)?;
    let filesystem_overhead = match inputs.get(ferry_contract::env::FILESYSTEM_OVERHEAD) {
        None => 0.0,
        Some(v) => match v.parse::<f64>() {
            Ok(x) if (0.0..1.0).contains(&x) => x,
            _ => {
                return Err(err(
                    inputs,
                    ferry_contract::env::FILESYSTEM_OVERHEAD,
                    format!(
                        "invalid fraction {v:?}: expected a number from 0 to below 1, e.g. 0.055"
                    ),
                ));
            }
        },
    };
    let image_size = match inputs.get(ferry_contract::env::IMPORTER_IMAGE_SIZE) {
        None => None,
        Some(v) => Some(parse_quantity(v).ok_or_else(|| {
            err(
                inputs,
                ferry_contract::env::IMPORTER_IMAGE_SIZE,
                format!("invalid size {v:?}: expected bytes or a quantity like 10Gi"),
            )
        })?),
    };
    let current_checkpoint = inputs
        .get(ferry_contract::env::IMPORTER_CURRENT_CHECKPOINT)
        .map(str::to_string);
    let previous_checkpoint = inputs
        .get(ferry_contract::env::IMPORTER_PREVIOUS_CHECKPOINT)
        .map(str::to_string);
    // A snapshot moref, name or path of names, resolved in the VM's snapshot tree as
    // govmomi's FindSnapshot does (CDI): only what cannot name a snapshot is refused.
    if let Some(c) = &current_checkpoint
        && (c.trim() != c || c.chars().any(char::is_control))
    {
        return Err(err(
            inputs,
            ferry_contract::env::IMPORTER_CURRENT_CHECKPOINT,
            format!(
                "invalid snapshot reference {c:?}: expected a snapshot moref (snapshot-7), name or path"
            ),
        ));
    }
    if let Some(p) = &previous_checkpoint {
        if current_checkpoint.is_none() {
            return Err(err(
                inputs,
                ferry_contract::env::IMPORTER_PREVIOUS_CHECKPOINT,
                format!(
                    "set without {}: a delta needs the snapshot to copy",
                    ferry_contract::env::IMPORTER_CURRENT_CHECKPOINT
                ),
            ));
        }
        if !is_snapshot_moref(p) && !is_change_id(p) {
            return Err(err(
                inputs,
                ferry_contract::env::IMPORTER_PREVIOUS_CHECKPOINT,
                format!(
                    "invalid checkpoint {p:?}: expected snapshot-<n> or a change ID like \"52 de … 63/81\""
                ),
            ));
        }
    }
    let thumbprint = match inputs.get(ferry_contract::env::IMPORTER_THUMBPRINT) {
        None => None,
        Some(t) => Some(validate_thumbprint(t).map_err(|e| {
            err(
                inputs,
                ferry_contract::env::IMPORTER_THUMBPRINT,
                e.to_string(),
            )
        })?),
    };
    let uuid = inputs
        .get(ferry_contract::env::IMPORTER_UUID)
        .map(str::to_string);
    if let Some(u) = &uuid
        && !is_uuid(u)
    {
        return Err(err(
            inputs,
            ferry_contract::env::IMPORTER_UUID,
            format!("invalid UUID {u:?}: expected 8-4-4-4-12 hex digits"),
        ));
    }
    let user = inputs
        .get(ferry_contract::env::IMPORTER_ACCESS_KEY_ID)
        .map(str::to_string);
    let password = inputs
        .get(ferry_contract::env::IMPORTER_SECRET_KEY)
        .map(|s| Secret::new(s.to_string()));
    let backing_file = inputs
        .get(ferry_contract::env::IMPORTER_BACKING_FILE)
        .map(str::to_string);
    if source == SourceKind::Vddk {
        for (var, present) in [
            (ferry_contract::env::IMPORTER_ACCESS_KEY_ID, user.is_some()),
            (ferry_contract::env::IMPORTER_SECRET_KEY, password.is_some()),
            (ferry_contract::env::IMPORTER_UUID, uuid.is_some()),
            (
                ferry_contract::env::IMPORTER_BACKING_FILE,
                backing_file.is_some(),
            ),
            (
                ferry_contract::env::IMPORTER_THUMBPRINT,
                thumbprint.is_some(),
            ),
        ] {
            if !present {
                return Err(err(
                    inputs,
                    var,
                    format!("required for {}=vddk", ferry_contract::env::IMPORTER_SOURCE),
                ));
            }
        }
    } else if source == SourceKind::Nbd && !ferry_nbd::Uri::is_nbd_uri(&endpoint) {
        return Err(err(
            inputs,
            ferry_contract::env::IMPORTER_ENDPOINT,
            format!("{endpoint:?} is not an NBD URI (nbd://… or nbd+unix://…)"),
        ));
    } else if source == SourceKind::Registry && !crate::source::registry::is_registry_ref(&endpoint)
    {
        return Err(err(
            inputs,
            ferry_contract::env::IMPORTER_ENDPOINT,
            format!("{endpoint:?} is not a docker:// image reference (docker://REGISTRY/REPO:TAG)"),
        ));
    } else if source == SourceKind::Http && !crate::source::http::is_http_url(&endpoint) {
        return Err(err(
            inputs,
            ferry_contract::env::IMPORTER_ENDPOINT,
            format!(
                "{:?} is not an http:// or https:// URL",
                crate::source::http::redact(&endpoint)
            ),
        ));
    }
    // As CDI: a checksum applies to http sources, and must parse wherever it is given.
    let checksum = match inputs.get(ferry_contract::env::IMPORTER_CHECKSUM) {
        None => None,
        Some(c) => Some(
            c.parse::<crate::checksum::Checksum>()
                .map_err(|e| err(inputs, ferry_contract::env::IMPORTER_CHECKSUM, e))?,
        ),
    };
    if checksum.is_some() && source != SourceKind::Http {
        tracing::warn!("IMPORTER_CHECKSUM applies to http sources only; ignored");
    }
    let target = if block_device.exists() {
        Target::Block(block_device.to_owned())
    } else {
        Target::Filesystem {
            dir: data_dir.to_owned(),
        }
    };
    let vddk_config = inputs
        .get(ferry_contract::env::VDDK_CONFIG_FILE)
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
        owner_uid: inputs
            .get(ferry_contract::env::OWNER_UID)
            .unwrap_or("")
            .to_string(),
        preallocation,
        filesystem_overhead,
        image_size,
        insecure_tls,
        cert_dir: inputs
            .get(ferry_contract::env::IMPORTER_CERT_DIR)
            .map(PathBuf::from),
        proxy_cert_dir: PathBuf::from(
            inputs
                .get(ferry_contract::env::IMPORTER_PROXY_CERT_DIR)
                .unwrap_or(DEFAULT_PROXY_CERT_DIR),
        ),
        target,
        libdir: inputs.get(ferry_contract::env::VDDK_LIBDIR).map_or_else(
            || PathBuf::from(crate::source::vddk::options::DEFAULT_LIBDIR),
            PathBuf::from,
        ),
        vddk_config,
        termination_log: inputs
            .get(ferry_contract::env::TERMINATION_LOG)
            .map_or_else(|| PathBuf::from(DEFAULT_TERMINATION_LOG), PathBuf::from),
        journal: inputs
            .get(ferry_contract::env::FERRY_JOURNAL)
            .map(PathBuf::from),
        checksum: checksum.filter(|_| source == SourceKind::Http),
        registry_architecture: inputs
            .get(ferry_contract::env::IMPORTER_REGISTRY_IMAGE_ARCHITECTURE)
            .filter(|_| source == SourceKind::Registry)
            .map(str::to_string),
        archive,
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
            (ferry_contract::env::IMPORTER_SOURCE, "vddk"),
            (
                ferry_contract::env::IMPORTER_ENDPOINT,
                "https://vc.example/sdk",
            ),
            (ferry_contract::env::IMPORTER_ACCESS_KEY_ID, "admin"),
            (ferry_contract::env::IMPORTER_SECRET_KEY, "pw"),
            (
                ferry_contract::env::IMPORTER_UUID,
                "42125a6b-7f0c-4c6e-9a3e-3f2d1c0b9a8e",
            ),
            (
                ferry_contract::env::IMPORTER_BACKING_FILE,
                "[ds1] vm/vm.vmdk",
            ),
            (ferry_contract::env::IMPORTER_THUMBPRINT, TP),
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
        p.push((ferry_contract::env::PREALLOCATION, "yes please"));
        let e = check(&p).expect_err("invalid");
        assert!(
            e.to_string().starts_with("PREALLOCATION: invalid boolean"),
            "{e}"
        );
    }

    #[test]
    fn previous_checkpoint_without_current_is_refused() {
        let mut p = vddk_base();
        p.push((
            ferry_contract::env::IMPORTER_PREVIOUS_CHECKPOINT,
            "snapshot-1",
        ));
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
        p.push((
            ferry_contract::env::IMPORTER_CURRENT_CHECKPOINT,
            "snapshot-2",
        ));
        p.push((
            ferry_contract::env::IMPORTER_PREVIOUS_CHECKPOINT,
            "52 de c0 zz-77/81",
        ));
        assert!(
            check(&p)
                .expect_err("invalid")
                .to_string()
                .starts_with("IMPORTER_PREVIOUS_CHECKPOINT: invalid checkpoint")
        );
        p.pop();
        p.push((
            ferry_contract::env::IMPORTER_PREVIOUS_CHECKPOINT,
            "52 de c0 3e 7b 4f 19 d6-a1 b2 c3 d4 e5 f6 07 18/81",
        ));
        assert!(check(&p).is_ok());
    }

    #[test]
    fn malformed_thumbprint_names_the_variable() {
        let mut p = vddk_base();
        p.retain(|(k, _)| *k != ferry_contract::env::IMPORTER_THUMBPRINT);
        p.push((ferry_contract::env::IMPORTER_THUMBPRINT, "AA:BB"));
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
        p.retain(|(k, _)| *k != ferry_contract::env::IMPORTER_UUID);
        assert_eq!(
            check(&p).expect_err("invalid").to_string(),
            "IMPORTER_UUID: required for IMPORTER_SOURCE=vddk"
        );
    }

    #[test]
    fn nbd_source_needs_an_nbd_uri() {
        let e = check(&[
            (ferry_contract::env::IMPORTER_SOURCE, "nbd"),
            (ferry_contract::env::IMPORTER_ENDPOINT, "https://x"),
        ])
        .expect_err("invalid");
        assert!(e.to_string().starts_with("IMPORTER_ENDPOINT:"), "{e}");
        assert!(
            check(&[
                (ferry_contract::env::IMPORTER_SOURCE, "nbd"),
                (
                    ferry_contract::env::IMPORTER_ENDPOINT,
                    "nbd+unix:///?socket=/s"
                )
            ])
            .is_ok()
        );
    }

    #[test]
    fn flag_names_appear_next_to_the_variable() {
        let r = RawInputs {
            values: vec![
                (
                    ferry_contract::env::IMPORTER_ENDPOINT,
                    "endpoint",
                    "x".into(),
                ),
                (
                    ferry_contract::env::PREALLOCATION,
                    "preallocation",
                    "maybe".into(),
                ),
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
        p.push((ferry_contract::env::FILESYSTEM_OVERHEAD, "6%"));
        assert!(
            check(&p)
                .expect_err("invalid")
                .to_string()
                .starts_with(ferry_contract::env::FILESYSTEM_OVERHEAD)
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
