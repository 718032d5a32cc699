//! The importer pod's environment: the names CDI's controller sets
//! (`makeImportEnv`, pkg/controller/import-controller.go), the few Ferry adds to relocate
//! CDI's fixed paths, the paths themselves, and the parsers of their values. Parsers cap
//! what they read ([`MAX_QUANTITY_LEN`]) and never panic (fuzzed through `import_env`).

// --- Variable names -------------------------------------------------------------------

/// `vddk`, `none` (a blank image) or Ferry's `nbd`.
pub const IMPORTER_SOURCE: &str = "IMPORTER_SOURCE";
/// The vCenter/ESXi URL, or an NBD URI.
pub const IMPORTER_ENDPOINT: &str = "IMPORTER_ENDPOINT";
/// `kubevirt` (a disk image) or `archive`.
pub const IMPORTER_CONTENTTYPE: &str = "IMPORTER_CONTENTTYPE";
/// The PVC's storage request, a Kubernetes quantity.
pub const IMPORTER_IMAGE_SIZE: &str = "IMPORTER_IMAGE_SIZE";
/// The DataVolume's UID: the progress series' label.
pub const OWNER_UID: &str = "OWNER_UID";
/// The share of a filesystem volume kept for the filesystem (`0.06`).
pub const FILESYSTEM_OVERHEAD: &str = "FILESYSTEM_OVERHEAD";
/// `true` to skip certificate checks.
pub const INSECURE_TLS: &str = "INSECURE_TLS";
/// imageio's disk ID (unused for VDDK).
pub const IMPORTER_DISK_ID: &str = "IMPORTER_DISK_ID";
/// The VM's instance or BIOS UUID.
pub const IMPORTER_UUID: &str = "IMPORTER_UUID";
/// Registry pull method (unused for VDDK).
pub const IMPORTER_PULL_METHOD: &str = "IMPORTER_PULL_METHOD";
/// Registry node pull ready file (unused for VDDK).
pub const IMPORTER_READY_FILE: &str = "IMPORTER_READY_FILE";
/// Registry node pull done file (unused for VDDK).
pub const IMPORTER_DONE_FILE: &str = "IMPORTER_DONE_FILE";
/// The disk's base backing file, `[ds] vm/vm.vmdk`.
pub const IMPORTER_BACKING_FILE: &str = "IMPORTER_BACKING_FILE";
/// The SHA-1 thumbprint of the vCenter/ESXi certificate.
pub const IMPORTER_THUMBPRINT: &str = "IMPORTER_THUMBPRINT";
/// `http_proxy`, as CDI's controller names it.
pub const HTTP_PROXY_LOWER: &str = "http_proxy";
/// `https_proxy`, as CDI's controller names it.
pub const HTTPS_PROXY_LOWER: &str = "https_proxy";
/// `no_proxy`, as CDI's controller names it.
pub const NO_PROXY_LOWER: &str = "no_proxy";
/// The snapshot this round copies (moref, name or path).
pub const IMPORTER_CURRENT_CHECKPOINT: &str = "IMPORTER_CURRENT_CHECKPOINT";
/// The previous round's change ID or snapshot.
pub const IMPORTER_PREVIOUS_CHECKPOINT: &str = "IMPORTER_PREVIOUS_CHECKPOINT";
/// `true` on the cutover round.
pub const IMPORTER_FINAL_CHECKPOINT: &str = "IMPORTER_FINAL_CHECKPOINT";
/// `true` to allocate the whole target.
pub const PREALLOCATION: &str = "PREALLOCATION";
/// `TRYNONE` after an OOM kill (unused by Ferry).
pub const CACHE_MODE: &str = "CACHE_MODE";
/// Registry image architecture (unused for VDDK).
pub const IMPORTER_REGISTRY_IMAGE_ARCHITECTURE: &str = "IMPORTER_REGISTRY_IMAGE_ARCHITECTURE";
/// Expected image checksum (unused for VDDK).
pub const IMPORTER_CHECKSUM: &str = "IMPORTER_CHECKSUM";
/// The user name, from the secret's `accessKeyId`.
pub const IMPORTER_ACCESS_KEY_ID: &str = "IMPORTER_ACCESS_KEY_ID";
/// The password, from the secret's `secretKey`.
pub const IMPORTER_SECRET_KEY: &str = "IMPORTER_SECRET_KEY";
/// Directory of CA certificates (`/certs`).
pub const IMPORTER_CERT_DIR: &str = "IMPORTER_CERT_DIR";
/// Directory of the proxy's CA certificates (`/proxycerts/`).
pub const IMPORTER_PROXY_CERT_DIR: &str = "IMPORTER_PROXY_CERT_DIR";
/// Ferry: the filesystem target's directory instead of `/data`.
pub const FERRY_DATA_DIR: &str = "FERRY_DATA_DIR";
/// Ferry's override of the scratch directory (tests; CDI mounts `/scratch`).
pub const FERRY_SCRATCH_DIR: &str = "FERRY_SCRATCH_DIR";
/// Ferry: the block target instead of `/dev/cdi-block-volume`.
pub const FERRY_BLOCK_DEVICE: &str = "FERRY_BLOCK_DEVICE";
/// Ferry: the metrics listener instead of `[::]:8443` (`off` for none).
pub const FERRY_METRICS_ADDR: &str = "FERRY_METRICS_ADDR";
/// Ferry: the resume journal's path.
pub const FERRY_JOURNAL: &str = "FERRY_JOURNAL";
/// Ferry: retries in a row without progress (`--retries`).
pub const FERRY_RETRIES: &str = "FERRY_RETRIES";
/// Ferry: the async runtime's worker threads (`--threads`), instead of the cgroup's CPU
/// quota rounded up.
pub const FERRY_THREADS: &str = "FERRY_THREADS";
/// `ferry import` exits with the failure's kind (`ferry copy`'s exit statuses,
/// [`crate::exit::ErrorKind::exit_code`]) instead of 1 when this is `kinds`. CDI does not
/// set it (its controller only knows 0 and non-zero); ferry-controller sets it, so that it
/// fails a disk at once on a kind a restart cannot mend.
pub const FERRY_EXIT_CODES: &str = "FERRY_EXIT_CODES";
/// The value of [`FERRY_EXIT_CODES`] that asks for the kinds' exit statuses.
pub const EXIT_CODES_KINDS: &str = "kinds";
/// Ferry: `digest` builds the disk's digest as read and puts it in the termination
/// message; `verify` also reads the target back after the final flush and fails on a
/// difference (`ferry import --verify`); `off` (the default) does neither.
pub const FERRY_VERIFY: &str = "FERRY_VERIFY";
/// Ferry: the log filter (tracing `EnvFilter` syntax).
pub const FERRY_LOG: &str = "FERRY_LOG";
/// Ferry: the termination message's path instead of `/dev/termination-log`.
pub const TERMINATION_LOG: &str = "TERMINATION_LOG";
/// Ferry: the VDDK distribution instead of `/opt/vmware-vix-disklib-distrib`.
pub const VDDK_LIBDIR: &str = "VDDK_LIBDIR";
/// Ferry: the extra VDDK config file instead of `/vddk-args/vddk-config-file`.
pub const VDDK_CONFIG_FILE: &str = "VDDK_CONFIG_FILE";

// --- CDI's fixed paths -----------------------------------------------------------------

/// Where CDI mounts a block-mode target.
pub const DEFAULT_BLOCK_DEVICE: &str = "/dev/cdi-block-volume";
/// Where CDI mounts a filesystem-mode target's volume.
pub const DEFAULT_DATA_DIR: &str = "/data";
/// CDI's scratch volume (`common.ScratchDataDir`), mounted only when the controller
/// restarted the pod after a termination message with `scratchSpaceRequired: true`.
pub const DEFAULT_SCRATCH_DIR: &str = "/scratch";
/// The image file name in filesystem mode.
pub const DISK_IMG: &str = "disk.img";
/// Where CDI mounts extra VDDK arguments.
pub const DEFAULT_VDDK_CONFIG: &str = "/vddk-args/vddk-config-file";
/// Where the kubelet reads the termination message.
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";
/// Where CDI mounts the proxy's CA ConfigMap (`common.ImporterProxyCertDir`; CDI's own
/// importer reads this path and never the `IMPORTER_PROXY_CERT_DIR` it sets to it).
pub const DEFAULT_PROXY_CERT_DIR: &str = "/proxycerts/";
/// Where the VDDK init container leaves the library (the `/opt` emptyDir).
pub const DEFAULT_VDDK_LIBDIR: &str = "/opt/vmware-vix-disklib-distrib";

// --- Source kinds ------------------------------------------------------------------------

/// `IMPORTER_SOURCE` for VDDK.
pub const SOURCE_VDDK: &str = "vddk";
/// `IMPORTER_SOURCE` for a blank image.
pub const SOURCE_NONE: &str = "none";
/// `IMPORTER_SOURCE` for an NBD server (Ferry's own).
pub const SOURCE_NBD: &str = "nbd";
/// `IMPORTER_CONTENTTYPE` of a disk image.
pub const CONTENT_KUBEVIRT: &str = "kubevirt";

// --- Values ------------------------------------------------------------------------------

/// Cap on a Kubernetes quantity's digits.
pub const MAX_QUANTITY_LEN: usize = 64;

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
