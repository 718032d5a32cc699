//! Manifests, image indexes and image configs, sans-IO: the OCI image spec's
//! (`application/vnd.oci.image.*`) and Docker's schema 2
//! (`application/vnd.docker.distribution.manifest.*`), read from their JSON with every
//! size capped ([`MAX_MANIFEST_BYTES`], [`MAX_LAYERS`], [`MAX_INDEX_ENTRIES`],
//! [`MAX_CONFIG_BYTES`]), and the platform picked from an index as containers/image
//! picks it (OS, then architecture, then variant).

use serde::Deserialize;

/// Largest manifest or index read (containers/image's `maxManifestBodySize`).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Largest image config read (containers/image's `maxConfigBodySize`).
pub const MAX_CONFIG_BYTES: usize = 4 << 20;
/// Most layers of one image.
pub const MAX_LAYERS: usize = 256;
/// Most manifests an index may list.
pub const MAX_INDEX_ENTRIES: usize = 1024;
/// Indexes followed inside indexes before giving up.
pub const MAX_INDEX_DEPTH: usize = 4;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 1 (signed), which Ferry does not read.
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Every manifest type asked for, in `Accept`.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// How a layer's tar is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The layer media types Ferry reads (OCI's, its non-distributable ones, Docker's).
    pub fn of_layer(media_type: &str) -> Option<Compression> {
        let t = media_type.trim();
        Some(match t {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
            _ => return None,
        })
    }
}

/// A content descriptor: what a manifest says of a blob or of another manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Its media type.
    #[serde(default)]
    pub media_type: String,
    /// Its digest (`sha256:…`).
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// Where else it may be fetched (foreign layers): never followed.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Its platform (index entries).
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// An index entry's platform.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    /// `amd64`, `arm64`, …
    #[serde(default)]
    pub architecture: String,
    /// `linux`, …
    #[serde(default)]
    pub os: String,
    /// `v8`, …
    #[serde(default)]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Json {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    fs_layers: Option<serde_json::Value>,
}

/// An image manifest or an index of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// One image: its config and its layers, bottom first.
    Image {
        /// The config blob.
        config: Descriptor,
        /// The layers, bottom first.
        layers: Vec<Descriptor>,
    },
    /// Manifests for several platforms.
    Index(Vec<Descriptor>),
}

/// A manifest that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(pub String);

fn bad(s: impl Into<String>) -> ManifestError {
    ManifestError(s.into())
}

fn check_descriptor(d: &Descriptor, what: &str) -> Result<(), ManifestError> {
    if !super::reference::is_digest(&d.digest) {
        return Err(bad(format!(
            "{what} has digest {:?}: expected sha256: and 64 lower-case hex digits",
            d.digest.chars().take(80).collect::<String>()
        )));
    }
    Ok(())
}

impl Manifest {
    /// Parse `body`, served as `content_type` (the `Content-Type` header; its
    /// `mediaType` field decides when the header is missing or generic).
    pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(bad(format!(
                "the manifest is larger than {MAX_MANIFEST_BYTES} bytes"
            )));
        }
        let j: Json = serde_json::from_slice(body)
            .map_err(|e| bad(format!("the manifest is not manifest JSON: {e}")))?;
        let header = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim())
            .filter(|c| !c.is_empty() && *c != "application/json" && *c != "text/plain");
        let kind = header.or(j.media_type.as_deref()).unwrap_or("");
        if kind == DOCKER_SCHEMA1
            || kind.starts_with("application/vnd.docker.distribution.manifest.v1")
            || j.fs_layers.is_some()
        {
            return Err(bad(
                "the image has a Docker schema 1 manifest, which Ferry does not read: push it again with a current tool (skopeo, docker, buildah)",
            ));
        }
        if let Some(v) = j.schema_version
            && v != 2
        {
            return Err(bad(format!("manifest schemaVersion {v}: only 2 is read")));
        }
        let is_index = match kind {
            OCI_INDEX | DOCKER_LIST => true,
            OCI_MANIFEST | DOCKER_MANIFEST => false,
            "" => j.manifests.is_some(),
            other => {
                return Err(bad(format!(
                    "the manifest's media type {:?} is not an image manifest or index",
                    other.chars().take(120).collect::<String>()
                )));
            }
        };
        if is_index {
            let m = j
                .manifests
                .ok_or_else(|| bad("an image index without manifests"))?;
            if m.len() > MAX_INDEX_ENTRIES {
                return Err(bad(format!(
                    "the index lists more than {MAX_INDEX_ENTRIES} manifests"
                )));
            }
            for d in &m {
                check_descriptor(d, "an index entry")?;
            }
            return Ok(Manifest::Index(m));
        }
        let config = j
            .config
            .ok_or_else(|| bad("an image manifest without a config"))?;
        check_descriptor(&config, "the config")?;
        let layers = j
            .layers
            .ok_or_else(|| bad("an image manifest without layers"))?;
        if layers.len() > MAX_LAYERS {
            return Err(bad(format!("the image has more than {MAX_LAYERS} layers")));
        }
        for (i, l) in layers.iter().enumerate() {
            check_descriptor(l, &format!("layer {i}"))?;
        }
        Ok(Manifest::Image { config, layers })
    }
}

/// The platform this machine runs (Go's `GOARCH` names), for an index when no
/// architecture is asked for.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// The index entry for `architecture` (and `variant`, when given) on linux: an exact
/// variant first, then any; an error listing the platforms offered when none fits.
pub fn pick_platform<'a>(
    entries: &'a [Descriptor],
    architecture: &str,
    variant: Option<&str>,
) -> Result<&'a Descriptor, ManifestError> {
    let fits = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == architecture)
    };
    let exact = entries.iter().filter(fits).find(|d| {
        variant.is_none_or(|v| d.platform.as_ref().and_then(|p| p.variant.as_deref()) == Some(v))
    });
    if let Some(d) = exact.or_else(|| entries.iter().find(fits)) {
        return Ok(d);
    }
    let offered: Vec<String> = entries
        .iter()
        .take(16)
        .map(|d| {
            d.platform
                .as_ref()
                .map_or_else(|| "unknown".to_string(), Platform::to_string)
        })
        .collect();
    Err(bad(format!(
        "the image index has no manifest for linux/{architecture}{} (it offers {})",
        variant.map(|v| format!("/{v}")).unwrap_or_default(),
        if offered.is_empty() {
            "none".to_string()
        } else {
            offered.join(", ")
        }
    )))
}

/// What Ferry reads of an image's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ImageConfig {
    /// `amd64`, …
    #[serde(default)]
    pub architecture: String,
    /// `linux`, …
    #[serde(default)]
    pub os: String,
    /// The runtime config (its environment and labels).
    #[serde(default)]
    pub config: Option<RuntimeConfig>,
}

/// The image config's `config` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RuntimeConfig {
    /// `KEY=value` lines.
    #[serde(default, rename = "Env")]
    pub env: Option<Vec<String>>,
    /// Labels.
    #[serde(default, rename = "Labels")]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
}

impl ImageConfig {
    /// Parse an image config blob.
    pub fn parse(body: &[u8]) -> Result<ImageConfig, ManifestError> {
        if body.len() > MAX_CONFIG_BYTES {
            return Err(bad(format!(
                "the image config is larger than {MAX_CONFIG_BYTES} bytes"
            )));
        }
        serde_json::from_slice(body)
            .map_err(|e| bad(format!("the image config is not config JSON: {e}")))
    }

    /// A label's value.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.config
            .as_ref()?
            .labels
            .as_ref()?
            .get(name)
            .map(String::as_str)
    }
}

/// Most labels taken from an image's environment.
pub const MAX_ENV_LABELS: usize = 32;
/// Longest label name or value taken.
pub const MAX_ENV_LABEL_BYTES: usize = 256;
/// What marks an environment variable as a label (CDI's `kubevirtEnvPrefix`).
pub const KUBEVIRT_ENV_PREFIX: &str = "KUBEVIRT_IO_";

/// CDI's `envsToLabels`: each `KEY=value` of the image config's environment whose key
/// holds `KUBEVIRT_IO_` becomes a label: the part before it (`_` → `.`) and
/// `kubevirt.io/`, then the part after it (`_` → `-`), lower-cased —
/// `INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE=u1.medium` is
/// `instancetype.kubevirt.io/default-instancetype: u1.medium`. At most
/// [`MAX_ENV_LABELS`], each name and value at most [`MAX_ENV_LABEL_BYTES`].
pub fn env_labels(env: &[String]) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for e in env {
        let Some((k, v)) = e.split_once('=') else {
            continue;
        };
        let Some((before, after)) = k.split_once(KUBEVIRT_ENV_PREFIX) else {
            continue;
        };
        let mut label = String::new();
        let before = before.strip_suffix('_').unwrap_or(before);
        if !before.is_empty() {
            label.push_str(&before.split('_').collect::<Vec<_>>().join("."));
            label.push('.');
        }
        label.push_str("kubevirt.io/");
        label.push_str(&after.split('_').collect::<Vec<_>>().join("-"));
        let label = label.to_lowercase();
        if label.len() > MAX_ENV_LABEL_BYTES || v.len() > MAX_ENV_LABEL_BYTES {
            continue;
        }
        if out.len() >= MAX_ENV_LABELS {
            break;
        }
        out.insert(label, v.to_string());
    }
    out
}

/// The digest of `bytes` in `alg:hex` form, with the algorithm of `like`.
pub fn digest_of(bytes: &[u8], like: &str) -> String {
    use sha2::Digest as _;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    if like.starts_with("sha512:") {
        format!("sha512:{}", hex(&sha2::Sha512::digest(bytes)))
    } else {
        format!("sha256:{}", hex(&sha2::Sha256::digest(bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image(media: &str, layer: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":10}},"layers":[{{"mediaType":"{layer}","digest":"{D2}","size":20}}]}}"#
        )
    }

    #[test]
    fn oci_and_docker_manifests_are_read() {
        for (m, l, c) in [
            (
                OCI_MANIFEST,
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Gzip,
            ),
            (
                OCI_MANIFEST,
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::Zstd,
            ),
            (
                OCI_MANIFEST,
                "application/vnd.oci.image.layer.v1.tar",
                Compression::None,
            ),
            (
                DOCKER_MANIFEST,
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Compression::Gzip,
            ),
        ] {
            let parsed = Manifest::parse(image(m, l).as_bytes(), Some(m)).unwrap();
            let Manifest::Image { config, layers } = parsed else {
                panic!("{m}")
            };
            assert_eq!(config.digest, D1);
            assert_eq!(layers.len(), 1);
            assert_eq!(layers[0].size, 20);
            assert_eq!(Compression::of_layer(&layers[0].media_type), Some(c));
        }
        // No header: the mediaType field decides.
        assert!(matches!(
            Manifest::parse(
                image(OCI_MANIFEST, "x").as_bytes(),
                Some("application/json")
            )
            .unwrap(),
            Manifest::Image { .. }
        ));
        assert_eq!(
            Compression::of_layer("application/vnd.oci.image.layer.v1.tar+bzip2"),
            None
        );
    }

    #[test]
    fn indexes_are_read_and_platforms_picked() {
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{D2}","size":2,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}]}}"#
        );
        let Manifest::Index(m) = Manifest::parse(idx.as_bytes(), None).unwrap() else {
            panic!()
        };
        assert_eq!(pick_platform(&m, "amd64", None).unwrap().digest, D1);
        assert_eq!(pick_platform(&m, "arm64", None).unwrap().digest, D2);
        assert_eq!(pick_platform(&m, "arm64", Some("v8")).unwrap().digest, D2);
        let e = pick_platform(&m, "s390x", None).unwrap_err();
        assert!(
            e.0.contains("linux/s390x") && e.0.contains("linux/amd64, linux/arm64/v8"),
            "{e}"
        );
    }

    #[test]
    fn malformed_manifests_are_refused_by_reason() {
        let schema1 = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        for (body, ct, why) in [
            (&schema1[..], None, "schema 1"),
            (&b"{}"[..], Some(DOCKER_SCHEMA1), "schema 1"),
            (&b"not json"[..], None, "not manifest JSON"),
            (
                &br#"{"schemaVersion":3,"layers":[]}"#[..],
                None,
                "schemaVersion 3",
            ),
            (
                &br#"{"schemaVersion":2,"mediaType":"text/html"}"#[..],
                None,
                "not an image manifest",
            ),
            (
                &br#"{"schemaVersion":2,"layers":[]}"#[..],
                None,
                "without a config",
            ),
            (
                &br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#[..],
                None,
                "without manifests",
            ),
        ] {
            let e = Manifest::parse(body, ct).expect_err(why);
            assert!(e.0.contains(why), "{why}: {e}");
        }
        let bad_digest = image(OCI_MANIFEST, "x").replace(D2, "sha256:XYZ");
        assert!(
            Manifest::parse(bad_digest.as_bytes(), None)
                .unwrap_err()
                .0
                .contains("layer 0 has digest")
        );
        let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(
            Manifest::parse(&big, None)
                .unwrap_err()
                .0
                .contains("larger than")
        );
        let layers = (0..=MAX_LAYERS)
            .map(|_| format!(r#"{{"mediaType":"x","digest":"{D2}","size":1}}"#))
            .collect::<Vec<_>>()
            .join(",");
        let many = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{D1}","size":1}},"layers":[{layers}]}}"#
        );
        assert!(
            Manifest::parse(many.as_bytes(), Some(OCI_MANIFEST))
                .unwrap_err()
                .0
                .contains("more than 256 layers")
        );
    }

    #[test]
    fn kubevirt_env_becomes_labels_as_cdi_names_them() {
        let env: Vec<String> = [
            "PATH=/usr/bin",
            "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE=u1.medium",
            "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE=fedora",
            "KUBEVIRT_IO_OS=linux",
            "NOEQUALS_KUBEVIRT_IO_X",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let l = env_labels(&env);
        assert_eq!(l.len(), 3, "{l:?}");
        assert_eq!(
            l["instancetype.kubevirt.io/default-instancetype"],
            "u1.medium"
        );
        assert_eq!(l["instancetype.kubevirt.io/default-preference"], "fedora");
        assert_eq!(l["kubevirt.io/os"], "linux");
        let many: Vec<String> = (0..100).map(|i| format!("A{i}_KUBEVIRT_IO_B=c")).collect();
        assert_eq!(env_labels(&many).len(), MAX_ENV_LABELS);
    }

    #[test]
    fn configs_give_architecture_env_and_labels() {
        let c = ImageConfig::parse(
            br#"{"architecture":"arm64","os":"linux","config":{"Env":["A=b"],"Labels":{"containers.bootc":"1"}}}"#,
        )
        .unwrap();
        assert_eq!(c.architecture, "arm64");
        assert_eq!(c.label("containers.bootc"), Some("1"));
        assert_eq!(c.config.unwrap().env.unwrap(), vec!["A=b".to_string()]);
        assert!(ImageConfig::parse(b"[").is_err());
        assert_eq!(
            digest_of(b"", "sha256:"),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
