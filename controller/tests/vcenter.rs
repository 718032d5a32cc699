//! A plan's itinerary through the real vSphere calls (`ferry_controller::vsphere::Vcenter`
//! on ferry-vsphere) against the fake vCenter: snapshots taken per round, change IDs
//! chained from round to round, every snapshot removed, the guest shut down at cutover,
//! power restored on cancel. The disks' copies are simulated (the planner only sees
//! their DiskImports' status); the pods' side is tested in the end-to-end suite.

use std::collections::BTreeMap;

use fake_vcenter::{FakeVcenter, Inventory, Options};
use ferry_controller::crd::{
    DiskPhase, FerryPlanSpec, FerryPlanStatus, PlanSource, PlanVm, VsphereSource,
};
use ferry_controller::planner::plan::{
    DiskView, PlanAction, PlanInput, Step, TaskView, plan_plan, record,
};
use ferry_controller::vsphere::{Call, Endpoint, Vcenter, VsphereOps};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

const UUID: &str = "5012aaaa-0000-0000-0000-000000000001";

fn inventory() -> Inventory {
    serde_json::from_value(serde_json::json!({
        "user": "administrator@vsphere.local",
        "password": "s3cr&t<pw>",
        "datacenters": [{"name": "dc1", "vms": [
            {"moref": "vm-123", "name": "web01", "instance_uuid": UUID,
             "power_state": "poweredOn", "host": "esx12.example",
             "disks": [
                 {"key": 2000, "file_name": "[ds1] web01/web01.vmdk", "capacity_bytes": 10737418240u64,
                  "change_id": "52 de c0 11 22 33 44 55-66 77 88 99 aa bb 63/81"},
                 {"key": 2001, "file_name": "[ds2] web01/data.vmdk", "capacity_bytes": 1073741824u64,
                  "change_id": "52 de c0 11 22 33 44 56-66 77 88 99 aa bb 64/9"}
             ]}
        ]}]
    }))
    .unwrap()
}

struct Run {
    fake: FakeVcenter,
    ops: Vcenter,
    at: Endpoint,
    spec: FerryPlanSpec,
    status: FerryPlanStatus,
    disks: Vec<DiskView>,
    now: Timestamp,
    checkpoints: Vec<String>,
}

impl Run {
    async fn new(warm: bool) -> Run {
        let fake = FakeVcenter::start(
            inventory(),
            "127.0.0.1:0",
            Options {
                quiet: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let at = Endpoint {
            url: fake.endpoint(),
            user: "administrator@vsphere.local".into(),
            password: "s3cr&t<pw>".into(),
            thumbprint: Some(fake.thumbprint().to_string()),
        };
        let spec = FerryPlanSpec {
            source: PlanSource {
                vsphere: Some(VsphereSource {
                    url: at.url.clone(),
                    secret_ref: "s".into(),
                    vddk_image: "vddk".into(),
                    ..Default::default()
                }),
                nbd: None,
            },
            vms: vec![PlanVm {
                id: Some(UUID.into()),
                ..Default::default()
            }],
            warm,
            precopy_interval: Some("10s".into()),
            start: true,
            ..Default::default()
        };
        Run {
            fake,
            ops: Vcenter::default(),
            at,
            spec,
            status: FerryPlanStatus::default(),
            disks: Vec::new(),
            now: Timestamp::now(),
            checkpoints: Vec::new(),
        }
    }

    fn step_of(&self) -> Step {
        self.status
            .vms
            .first()
            .map_or(Step::Pending, |v| Step::parse(&v.step))
    }

    /// One reconcile, as `reconcile::plan` does it, with the real vSphere calls.
    async fn pass(&mut self) {
        let mut tasks = BTreeMap::new();
        for t in self.status.vms.iter().filter_map(|v| v.task.clone()) {
            tasks.insert(
                t.clone(),
                self.ops
                    .task(&self.at, &t)
                    .await
                    .unwrap_or_else(TaskView::Error),
            );
        }
        let d = plan_plan(&PlanInput {
            name: "p",
            spec: &self.spec,
            status: &self.status,
            disks: &self.disks,
            tasks: &tasks,
            now: self.now,
        });
        self.status = d.status;
        for a in d.actions {
            let (vm, call) = match a {
                PlanAction::FindVm { vm } => (vm, Call::FindVm),
                PlanAction::ReadPowerState { vm } => (vm, Call::PowerState),
                PlanAction::PowerOff { vm } => (vm, Call::PowerOff),
                PlanAction::PowerOn { vm } => (vm, Call::PowerOn),
                PlanAction::CreateSnapshot { vm, name } => (vm, Call::CreateSnapshot(name)),
                PlanAction::RemoveSnapshot { vm, snapshot } => (vm, Call::RemoveSnapshot(snapshot)),
                PlanAction::ReadChangeIds { vm, snapshot } => (vm, Call::ChangeIds(snapshot)),
                PlanAction::SetCheckpoints {
                    vm,
                    checkpoints,
                    last,
                } => {
                    for (name, cp) in checkpoints {
                        let c = cp
                            .clone()
                            .map(|c| format!("{:?}->{}", c.previous, c.current))
                            .unwrap_or_else(|| "cold".into());
                        self.checkpoints
                            .push(format!("{name}: {c}{}", if last { " final" } else { "" }));
                        let d = match self.disks.iter_mut().find(|d| d.name == name) {
                            Some(d) => d,
                            None => {
                                self.disks.push(DiskView {
                                    name: name.clone(),
                                    vm: vm.clone(),
                                    phase: DiskPhase::Running,
                                    checkpoints: vec![],
                                    final_checkpoint: false,
                                    copied: vec![],
                                    cancel: false,
                                    retain: false,
                                    bytes_done: 0,
                                    bytes_total: 0,
                                    message: String::new(),
                                });
                                self.disks.last_mut().unwrap()
                            }
                        };
                        if let Some(c) = cp {
                            d.checkpoints.push(c.current);
                        }
                        d.final_checkpoint = last;
                        d.phase = DiskPhase::Running;
                    }
                    continue;
                }
                PlanAction::CancelDisk(n) => {
                    self.disks.iter_mut().find(|d| d.name == n).unwrap().phase =
                        DiskPhase::Canceled;
                    continue;
                }
                _ => continue,
            };
            let target = self.status.vms[0].uuid.clone().unwrap_or(vm.clone());
            let outcome = self.ops.call(&self.at, &target, call.clone()).await;
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => Some(ferry_controller::planner::plan::Outcome::Failed(e)),
            };
            if let Some(o) = outcome {
                record("p", &self.spec, &mut self.status, &vm, o, self.now);
            }
        }
    }

    /// Pass until the VM reaches `step` (vSphere tasks take real time on the fake).
    async fn until(&mut self, step: Step) {
        for _ in 0..400 {
            if self.step_of() == step {
                return;
            }
            self.pass().await;
            if self.step_of() != step {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        panic!(
            "never reached {step:?}: at {:?}, {:?}; calls {:?}",
            self.step_of(),
            self.status.vms.first().map(|v| &v.message),
            self.fake.calls()
        );
    }

    fn copy_all(&mut self) {
        for d in &mut self.disks {
            d.copied
                .push(d.checkpoints.last().cloned().unwrap_or_default());
            d.phase = if d.final_checkpoint {
                DiskPhase::Succeeded
            } else {
                DiskPhase::Paused
            };
        }
    }
}

#[tokio::test]
async fn a_warm_plan_takes_chains_and_removes_real_snapshots_then_shuts_the_guest_down() {
    let mut r = Run::new(true).await;
    r.until(Step::CopyDisks).await;
    assert_eq!(
        r.fake.snapshot_tree("vm-123").len(),
        1,
        "one snapshot for round 1"
    );
    r.copy_all();
    r.until(Step::Paused).await;
    r.now = r.now.checked_add(SignedDuration::from_secs(11)).unwrap();
    r.until(Step::CopyDisks).await;
    assert_eq!(
        r.fake.snapshot_tree("vm-123").len(),
        1,
        "round 1's snapshot removed before round 2's"
    );
    r.copy_all();
    r.until(Step::Paused).await;
    r.spec.cutover = Some(Time(r.now));
    r.until(Step::CopyDisks).await;
    assert_eq!(r.fake.power_state("vm-123").as_deref(), Some("poweredOff"));
    r.copy_all();
    r.until(Step::Completed).await;
    assert!(
        r.fake.snapshot_tree("vm-123").is_empty(),
        "every snapshot removed: {:?}",
        r.fake.snapshot_tree("vm-123")
    );
    // Three rounds per disk; each delta names the change ID its disk had in the
    // previous round's snapshot.
    let disk0: Vec<&String> = r
        .checkpoints
        .iter()
        .filter(|c| c.starts_with("p-web01-disk-0:"))
        .collect();
    assert_eq!(disk0.len(), 3, "{:?}", r.checkpoints);
    assert!(disk0[0].contains("\"\"->snapshot-"), "{disk0:?}");
    assert!(
        !disk0[1].contains("\"\"->"),
        "round 2 is a delta: {disk0:?}"
    );
    assert!(disk0[2].ends_with(" final"), "{disk0:?}");
    let (v1, v2) = (&r.status.vms[0].precopies[0], &r.status.vms[0].precopies[1]);
    assert!(
        disk0[1].contains(&format!("{:?}", v1.change_ids["[ds1] web01/web01.vmdk"])),
        "{disk0:?} {v1:?}"
    );
    assert!(
        disk0[2].contains(&format!("{:?}", v2.change_ids["[ds1] web01/web01.vmdk"])),
        "{disk0:?} {v2:?}"
    );
}

#[tokio::test]
async fn a_canceled_cold_plan_powers_the_vm_on_again() {
    let mut r = Run::new(false).await;
    r.until(Step::CopyDisks).await;
    assert_eq!(r.fake.power_state("vm-123").as_deref(), Some("poweredOff"));
    r.spec.cancel = vec![UUID.into()];
    r.until(Step::Canceled).await;
    for _ in 0..100 {
        if r.fake.power_state("vm-123").as_deref() == Some("poweredOn") {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("power not restored: {:?}", r.fake.power_state("vm-123"));
}
