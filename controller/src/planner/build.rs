//! What a plan's VM becomes: its disks with their PVC names, and one DiskImport spec
//! per disk (source, limits, storage, pod settings).

use ferry_contract::env::{is_uuid, parse_quantity};

use super::plan::FoundDisk;
use crate::crd::{
    DiskImportSpec, DiskSource, FerryPlanSpec, PlanDisk, PodSettings, PvcTarget, StorageTarget,
    VddkDisk, VmDisk, VmStatus, VolumeMode,
};
use crate::names::{DEFAULT_PVC_TEMPLATE, TemplateVars, render_pvc_name};

/// Most disks one VM may have (vSphere allows 4 controllers × 15 SCSI + 4 × 30 SATA + NVMe).
pub const MAX_DISKS_PER_VM: usize = 256;

/// The datastore of a datastore path (`[ds1] vm/vm.vmdk` → `ds1`).
pub fn datastore_of(backing_file: &str) -> Option<&str> {
    let rest = backing_file.strip_prefix('[')?;
    rest.split_once(']').map(|(ds, _)| ds)
}

/// The disks of a VM: those found in vCenter with the spec's overrides (matched by
/// backing file, else by index), or the spec's own when nothing was looked up; each
/// named by the PVC template.
pub fn resolve_disks(
    plan: &str,
    spec: &FerryPlanSpec,
    v: &VmStatus,
    found: &[FoundDisk],
) -> Result<Vec<VmDisk>, String> {
    let pvm = spec.vms.iter().find(|x| super::plan::vm_key(x) == v.id);
    let overrides: &[PlanDisk] = pvm.map_or(&[], |p| p.disks.as_slice());
    let mut pairs: Vec<(String, u64, Option<&PlanDisk>)> = Vec::new();
    if found.is_empty() {
        for (i, d) in overrides.iter().enumerate() {
            let source = d
                .backing_file
                .clone()
                .or_else(|| d.nbd_uri.clone())
                .ok_or_else(|| format!("VM {}: disk {i} names no backingFile or nbdUri", v.id))?;
            let capacity = match &d.capacity {
                Some(c) => parse_quantity(c).ok_or_else(|| {
                    format!("VM {}: disk {i}: capacity {c:?} is not a quantity", v.id)
                })?,
                None => 0,
            };
            pairs.push((source, capacity, Some(d)));
        }
    } else {
        for (i, f) in found.iter().enumerate() {
            let o = overrides
                .iter()
                .find(|o| o.backing_file.as_deref() == Some(f.source.as_str()))
                .or_else(|| overrides.get(i).filter(|o| o.backing_file.is_none()));
            pairs.push((f.source.clone(), f.capacity, o));
        }
    }
    if pairs.is_empty() {
        return Err(format!("VM {} has no disks", v.id));
    }
    if pairs.len() > MAX_DISKS_PER_VM {
        return Err(format!(
            "VM {} has {} disks, more than {MAX_DISKS_PER_VM}",
            v.id,
            pairs.len()
        ));
    }
    let template = spec
        .pvc_name_template
        .as_deref()
        .unwrap_or(DEFAULT_PVC_TEMPLATE);
    let vm_name = if v.name.is_empty() {
        v.id.clone()
    } else {
        v.name.clone()
    };
    let mut out: Vec<VmDisk> = Vec::with_capacity(pairs.len());
    for (i, (source, capacity, o)) in pairs.into_iter().enumerate() {
        let pvc = match o.and_then(|o| o.pvc_name.clone()) {
            Some(n) => n,
            None => render_pvc_name(
                template,
                &TemplateVars {
                    plan_name: plan.to_string(),
                    vm_name: vm_name.clone(),
                    disk_index: u32::try_from(i).unwrap_or(u32::MAX),
                    shared: o.is_some_and(|o| o.shared),
                },
            )
            .map_err(|e| format!("VM {}: {e}", v.id))?,
        };
        if out.iter().any(|d| d.pvc == pvc) {
            return Err(format!(
                "VM {}: two disks would both use PVC {pvc}; give the template .DiskIndex",
                v.id
            ));
        }
        out.push(VmDisk {
            source,
            capacity,
            disk_import: pvc.clone(),
            pvc,
        });
    }
    Ok(out)
}

/// `host:port` of an NBD URI (the per-host limit's key), or the socket path for
/// `nbd+unix://`.
pub fn nbd_source_key(uri: &str) -> String {
    if let Some(q) = uri.split_once("socket=").map(|(_, s)| s) {
        return q.split('&').next().unwrap_or(q).to_string();
    }
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// The host of a URL (`https://vc.example.com:443/sdk` → `vc.example.com`).
pub fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, h)| h);
    if let Some(v6) = hostport.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6).to_string();
    }
    hostport.split(':').next().unwrap_or(hostport).to_string()
}

/// The storage a disk goes to: its override, else its datastore's mapping, else the
/// default.
fn storage_for(spec: &FerryPlanSpec, source: &str, o: Option<&PlanDisk>) -> StorageTarget {
    let m = &spec.storage;
    let ds = datastore_of(source);
    let base = ds
        .and_then(|ds| m.datastores.iter().find(|x| x.datastore == ds))
        .map_or(&m.default, |x| &x.target);
    StorageTarget {
        storage_class: o
            .and_then(|o| o.storage_class.clone())
            .or_else(|| base.storage_class.clone())
            .or_else(|| m.default.storage_class.clone()),
        volume_mode: o
            .and_then(|o| o.volume_mode)
            .or(base.volume_mode)
            .or(m.default.volume_mode),
        access_mode: o
            .and_then(|o| o.access_mode.clone())
            .or_else(|| base.access_mode.clone())
            .or_else(|| m.default.access_mode.clone()),
    }
}

/// The DiskImport spec of disk `index` of VM `v`.
pub fn disk_import_spec(
    plan: &str,
    spec: &FerryPlanSpec,
    v: &VmStatus,
    index: usize,
) -> Result<DiskImportSpec, String> {
    let d = v
        .disks
        .get(index)
        .ok_or_else(|| format!("VM {} has no disk {index}", v.id))?;
    let pvm = spec.vms.iter().find(|x| super::plan::vm_key(x) == v.id);
    let o = pvm.and_then(|p| {
        p.disks
            .iter()
            .find(|o| {
                o.backing_file.as_deref() == Some(d.source.as_str())
                    || o.nbd_uri.as_deref() == Some(d.source.as_str())
            })
            .or_else(|| {
                p.disks
                    .get(index)
                    .filter(|o| o.backing_file.is_none() && o.nbd_uri.is_none())
            })
    });
    let storage = storage_for(spec, &d.source, o);
    let (source, source_key, vcenter_key) = if let Some(vs) = &spec.source.vsphere {
        let uuid = v.uuid.clone().or_else(|| is_uuid(&v.id).then(|| v.id.clone())).ok_or_else(|| {
            format!("VM {}: no instance UUID known (give vms[].id, or let the controller look the VM up)", v.id)
        })?;
        let host = v.host.clone().unwrap_or_else(|| url_host(&vs.url));
        let vcenter = (vs.is_vcenter != Some(false)).then(|| url_host(&vs.url));
        (
            DiskSource {
                vddk: Some(VddkDisk {
                    url: vs.url.clone(),
                    uuid,
                    backing_file: d.source.clone(),
                    thumbprint: vs.thumbprint.clone(),
                    secret_ref: vs.secret_ref.clone(),
                    cert_config_map: vs.cert_config_map.clone(),
                    init_image_url: vs.vddk_image.clone(),
                    extra_args: vs.vddk_config_map.clone(),
                }),
                nbd: None,
            },
            host,
            vcenter,
        )
    } else {
        let key = v.host.clone().unwrap_or_else(|| nbd_source_key(&d.source));
        (
            DiskSource {
                vddk: None,
                nbd: Some(d.source.clone()),
            },
            key,
            None,
        )
    };
    let imp = &spec.importer;
    Ok(DiskImportSpec {
        plan: plan.to_string(),
        vm: v.id.clone(),
        disk_index: u32::try_from(index).unwrap_or(u32::MAX),
        source,
        source_key,
        vcenter_key,
        per_host_limit: spec.limits.per_host_disks,
        per_vcenter_limit: spec.limits.per_vcenter_disks,
        pvc: PvcTarget {
            name: d.pvc.clone(),
            volume_mode: storage.volume_mode.unwrap_or(VolumeMode::Block),
            storage_class: storage.storage_class,
            access_mode: storage.access_mode,
            size: None,
            filesystem_overhead: spec.storage.filesystem_overhead.clone(),
        },
        capacity: d.capacity,
        checkpoints: Vec::new(),
        final_checkpoint: false,
        cancel: false,
        pod: PodSettings {
            importer: crate::crd::ImporterSettings {
                retain_pods: imp.retain_pods && !spec.archived,
                ..imp.clone()
            },
            placement: spec.placement.clone(),
            transfer_network: spec.transfer_network.clone(),
        },
    })
}
