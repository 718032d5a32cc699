//! The objects a DiskImport gets: its PVC and one import pod per round, built as CDI
//! builds them (`pkg/controller/import-controller.go` `makeImporterPodSpec`,
//! `makeImportEnv`), so the same image serves under CDI and under this controller.
//!
//! Differences from CDI's pod, each on purpose:
//! - the owner is the DiskImport (CDI: the PVC), so deleting the import deletes its pods
//!   and never the volume;
//! - `FERRY_EXIT_CODES=kinds`, so a failure a restart cannot mend is told apart;
//! - the buffer pool's flags, and memory requests = limits sized from that pool;
//! - the `/opt` emptyDir is there for NBD sources too: block mode's resume journal
//!   lives there, and it outlives container restarts;
//! - a soft spread of import pods across nodes.

use std::collections::BTreeMap;

use ferry_contract::env as cdi;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, ResourceRequirements,
    SeccompProfile, SecretKeySelector, SecurityContext, TopologySpreadConstraint, Volume,
    VolumeDevice, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};

use crate::crd::{DiskImport, TransferNetwork, VolumeMode};
use crate::names::label_value;
use crate::planner::disk::Round;

/// The uid CDI's importer runs as (qemu).
pub const IMPORTER_UID: i64 = 107;
/// Container names, as CDI's.
pub const IMPORTER_CONTAINER: &str = crate::planner::observe::IMPORTER_CONTAINER;
/// The VDDK init container.
pub const VDDK_INIT_CONTAINER: &str = "vddk-side-car";
/// Volume names, as CDI's.
pub const DATA_VOLUME: &str = "cdi-data-vol";
/// The `/opt` emptyDir.
pub const VDDK_VOLUME: &str = "vddk-vol-mount";
/// The VDDK extra-args ConfigMap volume.
pub const VDDK_ARGS_VOLUME: &str = "vddk-extra-args";
/// The CA ConfigMap volume.
pub const CERT_VOLUME: &str = "cdi-cert-vol";
/// Where the CA ConfigMap is mounted (CDI's `ImporterCertDir`).
pub const CERT_DIR: &str = "/certs";
/// Where the VDDK extra-args ConfigMap is mounted.
pub const VDDK_ARGS_DIR: &str = "/vddk-args";
/// Memory for Ferry and VDDK besides the buffers.
pub const BASE_MEMORY: u64 = 256 << 20;
/// CPU request and limit when the plan sets none (CDI's default limit).
pub const DEFAULT_CPU: &str = "750m";
/// Default buffer size in 64 KiB units (VDDK's default NFC AIO buffer).
pub const DEFAULT_BUF_SIZE_IN_64K: u32 = 16;
/// Default buffer count for VDDK (VDDK's default NFC AIO count).
pub const DEFAULT_VDDK_BUF_COUNT: u32 = 4;
/// Default buffer count for NBD.
pub const DEFAULT_NBD_BUF_COUNT: u32 = 32;
/// Largest buffer size in 64 KiB units (`ferry import`'s cap).
pub const MAX_BUF_SIZE_IN_64K: u32 = 1024;
/// Largest buffer count (`ferry import`'s cap).
pub const MAX_BUF_COUNT: u32 = 1024;
/// CDI's filesystem overhead default (`0.055`).
pub const DEFAULT_FILESYSTEM_OVERHEAD: &str = "0.055";
/// PVC sizes are rounded up to this (CDI's `DefaultAlignBlockSize`).
pub const PVC_ALIGN: u64 = 1 << 20;

/// Labels every import pod carries.
pub mod labels {
    /// CDI's app label.
    pub const CDI_APP: (&str, &str) = ("app", "containerized-data-importer");
    /// CDI's component label.
    pub const CDI_COMPONENT: (&str, &str) = ("cdi.kubevirt.io", "importer");
    /// CDI's "scrape me" label.
    pub const CDI_PROMETHEUS: (&str, &str) = ("prometheus.cdi.kubevirt.io", "true");
    /// The name the spread constraint and the controller's pod watch select on.
    pub const NAME: (&str, &str) = ("app.kubernetes.io/name", "ferry-importer");
    /// Who made it.
    pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "ferry-controller");
    /// The DiskImport.
    pub const DISK_IMPORT: &str = "ferry.dev/disk-import";
    /// The plan.
    pub const PLAN: &str = "ferry.dev/plan";
    /// The plan's namespace (DiskImports may live in another one, the target's).
    pub const PLAN_NAMESPACE: &str = "ferry.dev/plan-namespace";
    /// The plan's uid.
    pub const PLAN_UID: &str = "ferry.dev/plan-uid";
    /// The per-host limit's key.
    pub const SOURCE_KEY: &str = "ferry.dev/source-key";
    /// The round.
    pub const ROUND: &str = "ferry.dev/round";
}

/// Settings of the controller that every pod shares.
#[derive(Debug, Clone)]
pub struct PodDefaults {
    /// The importer image when the plan names none.
    pub image: String,
    /// klog-style verbosity (`-v=N`).
    pub verbosity: u8,
    /// Pull policy.
    pub pull_policy: String,
}

/// Why a pod or PVC could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A DiskImport without name, namespace or uid (not from the API server).
    #[error("the DiskImport has no {0}")]
    Metadata(&'static str),
    /// Neither or both sources.
    #[error("the DiskImport must name exactly one source (vddk or nbd)")]
    Source,
    /// A value out of range.
    #[error("{0}")]
    Invalid(String),
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
    }
}

/// Buffer size (64 KiB units) and count of a disk's pods.
pub fn buffers(di: &DiskImport) -> (u32, u32) {
    let p = &di.spec.pod.importer;
    let size = p
        .buf_size_in_64k
        .unwrap_or(DEFAULT_BUF_SIZE_IN_64K)
        .clamp(1, MAX_BUF_SIZE_IN_64K);
    let default_count = if di.spec.source.vddk.is_some() {
        DEFAULT_VDDK_BUF_COUNT
    } else {
        DEFAULT_NBD_BUF_COUNT
    };
    (
        size,
        p.buf_count.unwrap_or(default_count).clamp(1, MAX_BUF_COUNT),
    )
}

/// Memory request and limit: the pool twice (Ferry's buffers and VDDK's NFC AIO
/// buffers of the same size) plus [`BASE_MEMORY`], in MiB.
pub fn memory_for(buf_size_in_64k: u32, buf_count: u32) -> Quantity {
    let pool = u64::from(buf_size_in_64k) * 65_536 * u64::from(buf_count);
    let bytes = BASE_MEMORY + 2 * pool;
    Quantity(format!("{}Mi", bytes.div_ceil(1 << 20)))
}

/// CDI's `GetRequiredSpace`: a filesystem volume holds the disk plus its overhead
/// (`ceil(size / (1 - overhead))`), block volumes the disk; both rounded up to 1 MiB.
pub fn pvc_size(capacity: u64, mode: VolumeMode, overhead: &str) -> Result<u64, BuildError> {
    let aligned = |n: u64| n.div_ceil(PVC_ALIGN).saturating_mul(PVC_ALIGN);
    if mode == VolumeMode::Block {
        return Ok(aligned(capacity));
    }
    let o: f64 = overhead
        .parse()
        .ok()
        .filter(|o: &f64| (0.0..1.0).contains(o))
        .ok_or_else(|| {
            BuildError::Invalid(format!(
                "filesystem overhead {overhead:?} is not a number in [0, 1)"
            ))
        })?;
    // Sizes below 2^53 are exact; the ceil keeps the division from rounding down.
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let with = ((capacity as f64) / (1.0 - o)).ceil() as u64;
    Ok(aligned(with))
}

fn meta_of(di: &DiskImport) -> Result<(&str, &str, &str), BuildError> {
    let name = di
        .metadata
        .name
        .as_deref()
        .ok_or(BuildError::Metadata("name"))?;
    let ns = di
        .metadata
        .namespace
        .as_deref()
        .ok_or(BuildError::Metadata("namespace"))?;
    let uid = di
        .metadata
        .uid
        .as_deref()
        .ok_or(BuildError::Metadata("uid"))?;
    Ok((name, ns, uid))
}

fn owner(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: crate::crd::API_VERSION.into(),
        kind: "DiskImport".into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Multus annotations for a transfer network (Forklift's `setTransferNetwork`).
pub fn network_annotations(net: &TransferNetwork, default_ns: &str) -> BTreeMap<String, String> {
    let ns = net.namespace.as_deref().unwrap_or(default_ns);
    let mut a = BTreeMap::new();
    match net.route.as_deref() {
        None => {
            a.insert(
                "v1.multus-cni.io/default-network".into(),
                format!("{ns}/{}", net.name),
            );
        }
        Some("none") => {
            let v = serde_json::json!([{ "name": net.name, "namespace": ns }]);
            a.insert("k8s.v1.cni.cncf.io/networks".into(), v.to_string());
        }
        Some(gw) => {
            let v =
                serde_json::json!([{ "name": net.name, "namespace": ns, "default-route": [gw] }]);
            a.insert("k8s.v1.cni.cncf.io/networks".into(), v.to_string());
        }
    }
    a
}

fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        run_as_non_root: Some(true),
        run_as_user: Some(IMPORTER_UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// The import pod of `round` for a DiskImport.
pub fn import_pod(
    di: &DiskImport,
    round: &Round,
    defaults: &PodDefaults,
) -> Result<Pod, BuildError> {
    let (name, ns, uid) = meta_of(di)?;
    let spec = &di.spec;
    let pvc = &spec.pvc;
    let pod_name = round.pod_name(&pvc.name);
    let (vddk, nbd) = match (&spec.source.vddk, &spec.source.nbd) {
        (Some(v), None) => (Some(v), None),
        (None, Some(n)) => (None, Some(n)),
        _ => return Err(BuildError::Source),
    };
    let block = pvc.volume_mode == VolumeMode::Block;
    let overhead = pvc
        .filesystem_overhead
        .as_deref()
        .unwrap_or(DEFAULT_FILESYSTEM_OVERHEAD);
    let size = pvc_size(spec.capacity, pvc.volume_mode, overhead)?;
    let (current, previous) = round
        .checkpoint
        .as_ref()
        .map_or((String::new(), String::new()), |c| {
            (c.current.clone(), c.previous.clone())
        });
    let vddk_or = |f: &dyn Fn(&crate::crd::VddkDisk) -> String| vddk.map(f).unwrap_or_default();

    // makeImportEnv, in its order; every variable present.
    let mut envs = vec![
        env(
            cdi::IMPORTER_SOURCE,
            if vddk.is_some() {
                cdi::SOURCE_VDDK
            } else {
                cdi::SOURCE_NBD
            },
        ),
        env(
            cdi::IMPORTER_ENDPOINT,
            vddk.map_or_else(|| nbd.cloned().unwrap_or_default(), |v| v.url.clone()),
        ),
        env(cdi::IMPORTER_CONTENTTYPE, cdi::CONTENT_KUBEVIRT),
        env(cdi::IMPORTER_IMAGE_SIZE, size.to_string()),
        env(cdi::OWNER_UID, uid),
        env(cdi::FILESYSTEM_OVERHEAD, if block { "0" } else { overhead }),
        env(cdi::INSECURE_TLS, "false"),
        env(cdi::IMPORTER_DISK_ID, ""),
        env(cdi::IMPORTER_UUID, vddk_or(&|v| v.uuid.clone())),
        env(cdi::IMPORTER_PULL_METHOD, ""),
        env(cdi::IMPORTER_READY_FILE, ""),
        env(cdi::IMPORTER_DONE_FILE, ""),
        env(
            cdi::IMPORTER_BACKING_FILE,
            vddk_or(&|v| v.backing_file.clone()),
        ),
        env(
            cdi::IMPORTER_THUMBPRINT,
            vddk_or(&|v| v.thumbprint.clone().unwrap_or_default()),
        ),
        env(cdi::HTTP_PROXY_LOWER, ""),
        env(cdi::HTTPS_PROXY_LOWER, ""),
        env(cdi::NO_PROXY_LOWER, ""),
        env(cdi::IMPORTER_CURRENT_CHECKPOINT, current),
        env(cdi::IMPORTER_PREVIOUS_CHECKPOINT, previous),
        env(
            cdi::IMPORTER_FINAL_CHECKPOINT,
            if round.checkpoint.is_some() {
                round.last.to_string()
            } else {
                String::new()
            },
        ),
        env(cdi::PREALLOCATION, "false"),
        env(cdi::CACHE_MODE, ""),
        env(cdi::IMPORTER_REGISTRY_IMAGE_ARCHITECTURE, ""),
        env(cdi::IMPORTER_CHECKSUM, ""),
    ];
    if let Some(v) = vddk {
        envs.push(secret_env(
            cdi::IMPORTER_ACCESS_KEY_ID,
            &v.secret_ref,
            "accessKeyId",
        ));
        envs.push(secret_env(
            cdi::IMPORTER_SECRET_KEY,
            &v.secret_ref,
            "secretKey",
        ));
        if v.cert_config_map.is_some() {
            envs.push(env(cdi::IMPORTER_CERT_DIR, CERT_DIR));
        }
    }
    envs.push(env(cdi::FERRY_EXIT_CODES, cdi::EXIT_CODES_KINDS));
    if let Some(v) = spec
        .pod
        .importer
        .verify
        .filter(|v| *v != crate::crd::VerifyMode::Off)
    {
        envs.push(env(cdi::FERRY_VERIFY, v.as_str()));
    }

    let (buf_size, buf_count) = buffers(di);
    let memory = memory_for(buf_size, buf_count);
    let cpu = Quantity(
        spec.pod
            .importer
            .cpu
            .clone()
            .unwrap_or_else(|| DEFAULT_CPU.into()),
    );
    let resources = ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), cpu.clone()),
            ("memory".into(), memory.clone()),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".into(), cpu),
            ("memory".into(), memory),
        ])),
        ..Default::default()
    };

    let mut mounts = vec![VolumeMount {
        name: VDDK_VOLUME.into(),
        mount_path: "/opt".into(),
        ..Default::default()
    }];
    let mut volumes = vec![
        Volume {
            name: DATA_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc.name.clone(),
                read_only: None,
            }),
            ..Default::default()
        },
        Volume {
            name: VDDK_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ];
    let devices = if block {
        Some(vec![VolumeDevice {
            name: DATA_VOLUME.into(),
            device_path: cdi::DEFAULT_BLOCK_DEVICE.into(),
        }])
    } else {
        mounts.insert(
            0,
            VolumeMount {
                name: DATA_VOLUME.into(),
                mount_path: cdi::DEFAULT_DATA_DIR.into(),
                ..Default::default()
            },
        );
        None
    };
    let mut init = Vec::new();
    if let Some(v) = vddk {
        init.push(Container {
            name: VDDK_INIT_CONTAINER.into(),
            image: Some(v.init_image_url.clone()),
            image_pull_policy: Some(defaults.pull_policy.clone()),
            volume_mounts: Some(vec![VolumeMount {
                name: VDDK_VOLUME.into(),
                mount_path: "/opt".into(),
                ..Default::default()
            }]),
            resources: Some(resources.clone()),
            security_context: Some(restricted()),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Default::default()
        });
        // ConfigMaps mounted read-only: VDDK's extra configuration, the CA certificates.
        for (volume, cm, dir) in [
            (VDDK_ARGS_VOLUME, &v.extra_args, VDDK_ARGS_DIR),
            (CERT_VOLUME, &v.cert_config_map, CERT_DIR),
        ] {
            let Some(cm) = cm else { continue };
            volumes.push(Volume {
                name: volume.into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: cm.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            });
            mounts.push(VolumeMount {
                name: volume.into(),
                mount_path: dir.into(),
                read_only: Some(true),
                ..Default::default()
            });
        }
    }

    let importer = Container {
        name: IMPORTER_CONTAINER.into(),
        image: Some(
            spec.pod
                .importer
                .image
                .clone()
                .unwrap_or_else(|| defaults.image.clone()),
        ),
        image_pull_policy: Some(defaults.pull_policy.clone()),
        args: Some(vec![
            format!("-v={}", defaults.verbosity),
            format!("--buf-size-in-64k={buf_size}"),
            format!("--buf-count={buf_count}"),
        ]),
        env: Some(envs),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: i32::from(ferry_contract::metrics::METRICS_PORT),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(resources),
        security_context: Some(restricted()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(mounts),
        volume_devices: devices,
        ..Default::default()
    };

    let mut pod_labels = BTreeMap::new();
    for (k, v) in [
        labels::CDI_APP,
        labels::CDI_COMPONENT,
        labels::CDI_PROMETHEUS,
        labels::NAME,
        labels::MANAGED_BY,
    ] {
        pod_labels.insert(k.to_string(), v.to_string());
    }
    pod_labels.insert(labels::DISK_IMPORT.into(), label_value(name));
    if !spec.plan.is_empty() {
        pod_labels.insert(labels::PLAN.into(), label_value(&spec.plan));
    }
    pod_labels.insert(labels::SOURCE_KEY.into(), label_value(&spec.source_key));
    pod_labels.insert(labels::ROUND.into(), round.index.to_string());
    let mut annotations = BTreeMap::from([
        (
            "cdi.kubevirt.io/storage.createdBy".to_string(),
            "ferry-controller".to_string(),
        ),
        ("sidecar.istio.io/inject".to_string(), "false".to_string()),
        ("linkerd.io/inject".to_string(), "disabled".to_string()),
    ]);
    if let Some(net) = &spec.pod.transfer_network {
        annotations.extend(network_annotations(net, ns));
    }
    let placement = &spec.pod.placement;
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(pod_name),
            namespace: Some(ns.into()),
            labels: Some(pod_labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner(name, uid)]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("OnFailure".into()),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                fs_group: Some(IMPORTER_UID),
                run_as_non_root: Some(true),
                run_as_user: Some(IMPORTER_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..Default::default()
            }),
            init_containers: (!init.is_empty()).then_some(init),
            containers: vec![importer],
            volumes: Some(volumes),
            node_selector: (!placement.node_selector.is_empty())
                .then(|| placement.node_selector.clone()),
            affinity: placement.affinity.clone(),
            tolerations: (!placement.tolerations.is_empty()).then(|| placement.tolerations.clone()),
            priority_class_name: placement.priority_class_name.clone(),
            topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                max_skew: 1,
                topology_key: "kubernetes.io/hostname".into(),
                when_unsatisfiable: "ScheduleAnyway".into(),
                label_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        labels::NAME.0.to_string(),
                        labels::NAME.1.to_string(),
                    )])),
                    match_expressions: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    })
}

/// The PVC of a DiskImport, when the controller creates it: not owned (the volume
/// outlives the import and its plan), labelled with both.
pub fn import_pvc(di: &DiskImport) -> Result<PersistentVolumeClaim, BuildError> {
    let (name, ns, _) = meta_of(di)?;
    let pvc = &di.spec.pvc;
    let overhead = pvc
        .filesystem_overhead
        .as_deref()
        .unwrap_or(DEFAULT_FILESYSTEM_OVERHEAD);
    let size = match pvc.size {
        Some(s) => s,
        None => pvc_size(di.spec.capacity, pvc.volume_mode, overhead)?,
    };
    if size == 0 {
        return Err(BuildError::Invalid(format!(
            "PVC {}: the disk's capacity is not known; give vms[].disks[].capacity or create the PVC",
            pvc.name
        )));
    }
    let mut labels = BTreeMap::from([
        (labels::DISK_IMPORT.to_string(), label_value(name)),
        (
            labels::MANAGED_BY.0.to_string(),
            labels::MANAGED_BY.1.to_string(),
        ),
    ]);
    if !di.spec.plan.is_empty() {
        labels.insert(labels::PLAN.into(), label_value(&di.spec.plan));
    }
    Ok(PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(pvc.name.clone()),
            namespace: Some(ns.into()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![
                pvc.access_mode
                    .clone()
                    .unwrap_or_else(|| "ReadWriteOnce".into()),
            ]),
            volume_mode: Some(pvc.volume_mode.as_str().into()),
            storage_class_name: pvc.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".into(),
                    Quantity(size.to_string()),
                )])),
                limits: None,
            }),
            ..Default::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Checkpoint, DiskImportSpec, DiskSource, PvcTarget, VddkDisk};

    fn di(vddk: bool, mode: VolumeMode) -> DiskImport {
        let source = if vddk {
            DiskSource {
                vddk: Some(VddkDisk {
                    url: "https://vc.example.com/sdk".into(),
                    uuid: "42125a6b-7f0c-4c6e-9a3e-3f2d1c0b9a8e".into(),
                    backing_file: "[ds1] web/web.vmdk".into(),
                    thumbprint: Some("AA:BB".into()),
                    secret_ref: "vc-creds".into(),
                    cert_config_map: None,
                    init_image_url: "registry.example.com/vddk:8".into(),
                    extra_args: Some("vddk-args".into()),
                }),
                nbd: None,
            }
        } else {
            DiskSource {
                vddk: None,
                nbd: Some("nbd://10.0.0.5/a".into()),
            }
        };
        let mut d = DiskImport::new(
            "web-disk-0",
            DiskImportSpec {
                plan: "p1".into(),
                source,
                source_key: "esx1.example.com".into(),
                pvc: PvcTarget {
                    name: "web-disk-0".into(),
                    volume_mode: mode,
                    ..Default::default()
                },
                capacity: 1 << 30,
                ..Default::default()
            },
        );
        d.metadata.namespace = Some("vms".into());
        d.metadata.uid = Some("uid-1".into());
        d
    }

    fn defaults() -> PodDefaults {
        PodDefaults {
            image: "registry.example.com/ferry:v0.1".into(),
            verbosity: 1,
            pull_policy: "IfNotPresent".into(),
        }
    }

    fn env_of(p: &Pod) -> Vec<(String, String)> {
        p.spec.as_ref().unwrap().containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| {
                let v = e.value.clone().unwrap_or_else(|| {
                    let r = e
                        .value_from
                        .as_ref()
                        .unwrap()
                        .secret_key_ref
                        .as_ref()
                        .unwrap();
                    format!("secret:{}/{}", r.name, r.key)
                });
                (e.name.clone(), v)
            })
            .collect()
    }

    #[test]
    fn a_warm_vddk_pod_has_cdis_environment_in_cdis_order() {
        let round = Round {
            index: 2,
            checkpoint: Some(Checkpoint {
                previous: "52 aa-bb/1".into(),
                current: "snapshot-2".into(),
            }),
            last: false,
        };
        let p = import_pod(&di(true, VolumeMode::Block), &round, &defaults()).unwrap();
        let names: Vec<String> = env_of(&p).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "IMPORTER_SOURCE",
                "IMPORTER_ENDPOINT",
                "IMPORTER_CONTENTTYPE",
                "IMPORTER_IMAGE_SIZE",
                "OWNER_UID",
                "FILESYSTEM_OVERHEAD",
                "INSECURE_TLS",
                "IMPORTER_DISK_ID",
                "IMPORTER_UUID",
                "IMPORTER_PULL_METHOD",
                "IMPORTER_READY_FILE",
                "IMPORTER_DONE_FILE",
                "IMPORTER_BACKING_FILE",
                "IMPORTER_THUMBPRINT",
                "http_proxy",
                "https_proxy",
                "no_proxy",
                "IMPORTER_CURRENT_CHECKPOINT",
                "IMPORTER_PREVIOUS_CHECKPOINT",
                "IMPORTER_FINAL_CHECKPOINT",
                "PREALLOCATION",
                "CACHE_MODE",
                "IMPORTER_REGISTRY_IMAGE_ARCHITECTURE",
                "IMPORTER_CHECKSUM",
                "IMPORTER_ACCESS_KEY_ID",
                "IMPORTER_SECRET_KEY",
                "FERRY_EXIT_CODES",
            ]
        );
        let e: BTreeMap<String, String> = env_of(&p).into_iter().collect();
        assert_eq!(e["IMPORTER_CURRENT_CHECKPOINT"], "snapshot-2");
        assert_eq!(e["IMPORTER_PREVIOUS_CHECKPOINT"], "52 aa-bb/1");
        assert_eq!(e["IMPORTER_FINAL_CHECKPOINT"], "false");
        assert_eq!(e["IMPORTER_ACCESS_KEY_ID"], "secret:vc-creds/accessKeyId");
        assert_eq!(e["FILESYSTEM_OVERHEAD"], "0");
        assert_eq!(e["IMPORTER_IMAGE_SIZE"], (1u64 << 30).to_string());
        assert_eq!(e["OWNER_UID"], "uid-1");

        let spec = p.spec.as_ref().unwrap();
        assert_eq!(
            p.metadata.name.as_deref(),
            Some("importer-web-disk-0-checkpoint-snapshot-2")
        );
        assert_eq!(spec.restart_policy.as_deref(), Some("OnFailure"));
        assert_eq!(spec.enable_service_links, Some(false));
        let init = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(
            (
                init.name.as_str(),
                init.image.as_deref(),
                init.command.as_ref()
            ),
            (
                VDDK_INIT_CONTAINER,
                Some("registry.example.com/vddk:8"),
                None
            )
        );
        let c = &spec.containers[0];
        assert_eq!(
            c.volume_devices.as_ref().unwrap()[0].device_path,
            "/dev/cdi-block-volume"
        );
        let mounts: Vec<&str> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, ["/opt", "/vddk-args"]);
        assert_eq!(
            c.args.as_ref().unwrap(),
            &["-v=1", "--buf-size-in-64k=16", "--buf-count=4"]
        );
        let r = c.resources.as_ref().unwrap();
        assert_eq!(r.requests, r.limits);
        assert_eq!(
            r.limits.as_ref().unwrap()["memory"],
            Quantity("264Mi".into())
        );
        assert_eq!(r.limits.as_ref().unwrap()["cpu"], Quantity("750m".into()));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
            &["ALL"]
        );
        assert_eq!(
            (sc.run_as_user, sc.allow_privilege_escalation),
            (Some(107), Some(false))
        );
        let a = p.metadata.annotations.as_ref().unwrap();
        assert_eq!(a["sidecar.istio.io/inject"], "false");
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("DiskImport", Some(true))
        );
    }

    #[test]
    fn a_cold_nbd_pod_to_a_filesystem_volume_mounts_data_and_has_no_init_container() {
        let round = Round {
            index: 1,
            checkpoint: None,
            last: true,
        };
        let p = import_pod(&di(false, VolumeMode::Filesystem), &round, &defaults()).unwrap();
        let e: BTreeMap<String, String> = env_of(&p).into_iter().collect();
        assert_eq!(e["IMPORTER_SOURCE"], "nbd");
        assert_eq!(e["IMPORTER_ENDPOINT"], "nbd://10.0.0.5/a");
        assert_eq!(e["IMPORTER_UUID"], "");
        assert_eq!(e["IMPORTER_FINAL_CHECKPOINT"], "");
        assert_eq!(e["FILESYSTEM_OVERHEAD"], "0.055");
        assert!(!e.contains_key("IMPORTER_ACCESS_KEY_ID"));
        let spec = p.spec.as_ref().unwrap();
        assert!(spec.init_containers.is_none());
        let c = &spec.containers[0];
        assert!(c.volume_devices.is_none());
        let mounts: Vec<&str> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, ["/data", "/opt"]);
        assert_eq!(c.args.as_ref().unwrap()[2], "--buf-count=32");
        assert_eq!(p.metadata.name.as_deref(), Some("importer-web-disk-0"));
        assert!(!e.contains_key("FERRY_VERIFY"), "off unless the plan asks");
        // The plan asks for the read-back check.
        let mut d = di(false, VolumeMode::Filesystem);
        d.spec.pod.importer.verify = Some(crate::crd::VerifyMode::Verify);
        let p = import_pod(&d, &round, &defaults()).unwrap();
        let e: BTreeMap<String, String> = env_of(&p).into_iter().collect();
        assert_eq!(e["FERRY_VERIFY"], "verify");
    }

    #[test]
    fn volumes_are_sized_as_cdis_get_required_space() {
        assert_eq!(
            pvc_size(1 << 30, VolumeMode::Block, "0.055").unwrap(),
            1 << 30
        );
        assert_eq!(
            pvc_size(1 << 30, VolumeMode::Filesystem, "0.055").unwrap(),
            1084 << 20
        );
        assert_eq!(pvc_size(1, VolumeMode::Block, "0").unwrap(), 1 << 20);
        assert!(pvc_size(1, VolumeMode::Filesystem, "1.5").is_err());
        let pvc = import_pvc(&di(true, VolumeMode::Filesystem)).unwrap();
        let spec = pvc.spec.unwrap();
        assert_eq!(
            spec.resources.unwrap().requests.unwrap()["storage"],
            Quantity((1084u64 << 20).to_string())
        );
        assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));
        assert!(
            pvc.metadata.owner_references.is_none(),
            "a volume outlives its import"
        );
        assert_eq!(memory_for(512, 32).0, "2304Mi");
    }

    #[test]
    fn transfer_networks_become_multus_annotations_as_forklift_sets_them() {
        let net = |route: Option<&str>| TransferNetwork {
            name: "nfc".into(),
            namespace: None,
            route: route.map(Into::into),
        };
        assert_eq!(
            network_annotations(&net(None), "vms")["v1.multus-cni.io/default-network"],
            "vms/nfc"
        );
        assert_eq!(
            network_annotations(&net(Some("none")), "vms")["k8s.v1.cni.cncf.io/networks"],
            r#"[{"name":"nfc","namespace":"vms"}]"#
        );
        assert_eq!(
            network_annotations(&net(Some("10.1.0.1")), "vms")["k8s.v1.cni.cncf.io/networks"],
            r#"[{"default-route":["10.1.0.1"],"name":"nfc","namespace":"vms"}]"#
        );
    }
}
