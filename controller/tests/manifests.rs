//! The generated manifests are committed fresh, and they, the example plans and every
//! kind of import pod validate against the official Kubernetes schemas
//! (`kubernetes-validate --strict`) for two minor versions.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_controller::crd::{
    Checkpoint, DiskImport, DiskImportSpec, DiskSource, FerryPlan, PodSettings, PvcTarget,
    TransferNetwork, VddkDisk, VolumeMode,
};
use ferry_controller::planner::disk::Round;
use ferry_controller::pod::{PodDefaults, import_pod, import_pvc};

/// The Kubernetes versions validated against (the oldest k8s-openapi feature we build
/// for, and the newest schema the tool ships).
const VERSIONS: [&str; 2] = ["1.33.0", "1.37.0"];

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/controller")
}

#[test]
fn the_committed_manifests_are_the_generated_ones() {
    for (name, text) in ferry_controller::manifests::all() {
        let path = deploy().join(name);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "{} is stale: run `cargo run -p ferry-controller -- manifests --out deploy/controller`",
            path.display()
        );
    }
}

#[test]
fn the_example_plans_parse_as_ferry_plans() {
    for f in ["plan-warm.yaml", "plan-cold-nbd.yaml"] {
        let text = std::fs::read_to_string(deploy().join("examples").join(f)).unwrap();
        let plan: FerryPlan = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(!plan.spec.vms.is_empty(), "{f}");
    }
}

fn disk_import(vddk: bool, mode: VolumeMode, network: Option<&str>) -> DiskImport {
    let source = if vddk {
        DiskSource {
            vddk: Some(VddkDisk {
                url: "https://vc.example.com/sdk".into(),
                uuid: "42125a6b-7f0c-4c6e-9a3e-3f2d1c0b9a8e".into(),
                backing_file: "[ds1] web/web.vmdk".into(),
                thumbprint: Some("AA:BB".into()),
                secret_ref: "vc-creds".into(),
                cert_config_map: Some("vc-ca".into()),
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
    let mut placement = ferry_controller::crd::Placement::default();
    placement
        .node_selector
        .insert("node-role.kubernetes.io/migration".into(), "".into());
    placement.priority_class_name = Some("migration".into());
    let mut d = DiskImport::new(
        "web-disk-0",
        DiskImportSpec {
            plan: "p1".into(),
            source,
            source_key: "esx1.example.com".into(),
            pvc: PvcTarget {
                name: "web-disk-0".into(),
                volume_mode: mode,
                storage_class: Some("fast".into()),
                ..Default::default()
            },
            capacity: 10 << 30,
            pod: PodSettings {
                placement,
                transfer_network: network.map(|r| TransferNetwork {
                    name: "nfc".into(),
                    namespace: None,
                    route: Some(r.into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    d.metadata.namespace = Some("vms".into());
    d.metadata.uid = Some("0b8e0c4e-2b7e-4d0e-9a57-3f6a0f1f2c11".into());
    d
}

#[test]
fn manifests_and_every_kind_of_import_pod_pass_the_official_schemas_strictly() {
    if !ferry_test_kit::require_in("controller", &["kubernetes-validate"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let defaults = PodDefaults {
        image: "registry.example.com/ferry:v0.1".into(),
        verbosity: 1,
        pull_policy: "IfNotPresent".into(),
    };
    let warm = Round {
        index: 2,
        checkpoint: Some(Checkpoint {
            previous: "52 aa-bb/1".into(),
            current: "snapshot-2".into(),
        }),
        last: true,
    };
    let cold = Round {
        index: 1,
        checkpoint: None,
        last: true,
    };
    let mut files: Vec<PathBuf> = ferry_controller::manifests::FILES
        .iter()
        .map(|f| deploy().join(f))
        .collect();
    let cases = [
        (
            "pod-vddk-block-warm",
            disk_import(true, VolumeMode::Block, Some("10.1.0.1")),
            &warm,
        ),
        (
            "pod-vddk-fs-cold",
            disk_import(true, VolumeMode::Filesystem, None),
            &cold,
        ),
        (
            "pod-nbd-fs",
            disk_import(false, VolumeMode::Filesystem, Some("none")),
            &cold,
        ),
        (
            "pod-nbd-block",
            disk_import(false, VolumeMode::Block, None),
            &cold,
        ),
    ];
    for (name, di, round) in cases {
        let pod = import_pod(&di, round, &defaults).unwrap();
        let mut v = serde_json::to_value(&pod).unwrap();
        v["apiVersion"] = "v1".into();
        v["kind"] = "Pod".into();
        let p = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&p, serde_yaml::to_string(&v).unwrap()).unwrap();
        files.push(p);
        let mut pvc = serde_json::to_value(import_pvc(&di).unwrap()).unwrap();
        pvc["apiVersion"] = "v1".into();
        pvc["kind"] = "PersistentVolumeClaim".into();
        let p = dir.path().join(format!("{name}-pvc.yaml"));
        std::fs::write(&p, serde_yaml::to_string(&pvc).unwrap()).unwrap();
        files.push(p);
    }
    for version in VERSIONS {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", version])
            .args(&files)
            .output()
            .expect("run kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("ERROR"),
            "Kubernetes {version}:\n{text}"
        );
    }
    // The check is real: an unknown field fails strict validation.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers: [{name: c, image: i, bogus: 1}]\n").unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", VERSIONS[0]])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "strict validation let an unknown field through"
    );
}
