//! Entry points for the fuzz targets (`fuzz/fuzz_targets/controller_inputs.rs`) and the
//! corpus replay test: the controller's readers of outside bytes must never panic.

use jiff::Timestamp;

use crate::crd::{DiskImportSpec, DiskImportStatus, FerryPlanSpec, FerryPlanStatus};
use crate::planner::{disk, observe, plan};

/// The first byte picks the reader; the rest is its input:
/// 0: a pod's `/metrics` body; 1: a PVC name template; 2: a Go duration;
/// 3: a FerryPlan spec (JSON), planned from scratch; 4: a DiskImport spec and status
/// (JSON, two documents), planned with no pods; anything else: all of them.
pub fn inputs(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let now = Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
    let all = which > 4;
    if which == 0 || all {
        let _ = observe::parse_metrics(&text);
    }
    if which == 1 || all {
        let vars = crate::names::TemplateVars {
            plan_name: "p".into(),
            vm_name: text.to_string(),
            disk_index: 1,
            shared: true,
        };
        let _ = crate::names::render_pvc_name(&text, &vars);
        let _ = crate::names::dns_label(&text);
        let _ = crate::names::label_value(&text);
    }
    if which == 2 || all {
        let _ = plan::parse_duration(&text);
    }
    if (which == 3 || all)
        && let Ok(spec) = serde_json::from_slice::<FerryPlanSpec>(rest)
    {
        let mut status = FerryPlanStatus::default();
        let tasks = Default::default();
        for _ in 0..4 {
            let d = plan::plan_plan(&plan::PlanInput {
                name: "p",
                spec: &spec,
                status: &status,
                disks: &[],
                tasks: &tasks,
                now,
            });
            status = d.status;
            for (i, v) in status.vms.clone().iter().enumerate() {
                let _ = crate::planner::build::disk_import_spec("p", &spec, v, i);
            }
        }
    }
    if which == 4 || all {
        let mut docs = serde_json::Deserializer::from_slice(rest).into_iter::<serde_json::Value>();
        let spec = docs
            .next()
            .and_then(Result::ok)
            .and_then(|v| serde_json::from_value::<DiskImportSpec>(v).ok());
        let status = docs
            .next()
            .and_then(Result::ok)
            .and_then(|v| serde_json::from_value::<DiskImportStatus>(v).ok());
        if let Some(spec) = spec {
            let status = status.unwrap_or_default();
            let _ = disk::plan_disk(&disk::DiskInput {
                spec: &spec,
                status: &status,
                pods: &[],
                pvc_exists: true,
                admission: disk::Admission::Admitted,
                scrape: None,
                now,
            });
        }
    }
}
