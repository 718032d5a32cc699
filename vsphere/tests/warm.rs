//! The calls of Forklift's warm itinerary (snapshots, tasks, power) against the fake
//! vCenter, in process: CreateInitialSnapshot → WaitForInitialSnapshot →
//! StoreInitialSnapshotDeltas → … RemovePreviousSnapshot → … PowerOffSource →
//! WaitForPowerOff.

use std::time::Duration;

use fake_vcenter::{FakeVcenter, FaultSpec, Inventory, Options, TaskInfoQuirk};
use ferry_vsphere::{
    Client, ClientOptions, CutoverPowerOff, Error, PowerOffStarted, PowerState, ProxyConfig,
    TaskKind, TaskRef, TaskState, TlsPolicy, Vm,
};

const PRECOPY: &str = "forklift-migration-precopy";
const PRECOPY_DESC: &str = "Forklift Operator warm migration precopy";
const POLL: Duration = Duration::from_millis(50);
const LONG: Duration = Duration::from_secs(20);

fn inventory() -> Inventory {
    serde_json::from_value(serde_json::json!({
        "user": "administrator@vsphere.local",
        "password": "s3cr&t<pw>",
        "datacenters": [{"name": "dc1", "vms": [
            {"moref": "vm-123", "name": "vm1",
             "instance_uuid": "5012aaaa-0000-0000-0000-000000000001",
             "bios_uuid": "4212bbbb-0000-0000-0000-000000000001",
             "power_state": "poweredOn", "host": "esx12.example",
             "disks": [
                 {"key": 2000, "file_name": "[ds1] vm1/vm1.vmdk", "capacity_bytes": 10737418240u64,
                  "change_id": "52 de c0 11 22 33 44 55-66 77 88 99 aa bb 63/81"},
                 {"key": 2001, "file_name": "[ds2] vm1/data.vmdk", "capacity_bytes": 1073741824u64}
             ]},
            {"moref": "vm-200", "name": "notools",
             "instance_uuid": "5012aaaa-0000-0000-0000-000000000200",
             "power_state": "poweredOn", "host": "esx12.example", "tools_running": false,
             "disks": []}
        ]}]
    }))
    .unwrap()
}

async fn start(inv: Inventory) -> FakeVcenter {
    let opts = Options {
        quiet: true,
        ..Default::default()
    };
    FakeVcenter::start(inv, "127.0.0.1:0", opts).await.unwrap()
}

async fn login(fake: &FakeVcenter) -> Client {
    let inv = inventory();
    let tls = TlsPolicy {
        thumbprint: Some(fake.thumbprint().to_string()),
        ..Default::default()
    };
    let opts = ClientOptions {
        proxy: ProxyConfig::default(),
        ..Default::default()
    };
    Client::login_with_options(&fake.endpoint(), &inv.user, &inv.password, &tls, opts)
        .await
        .unwrap()
}

async fn vm1(c: &Client) -> Vm {
    c.find_vm("5012aaaa-0000-0000-0000-000000000001")
        .await
        .unwrap()
}

fn with(inv: Inventory, f: impl FnOnce(&mut serde_json::Value)) -> Inventory {
    let mut v = serde_json::to_value(inv).unwrap();
    f(&mut v);
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn a_precopy_round_creates_reads_and_removes_snapshots() {
    let fake = start(inventory()).await;
    let c = login(&fake).await;
    let vm = vm1(&c).await;

    // CreateInitialSnapshot → WaitForInitialSnapshot.
    let t1 = c
        .create_snapshot(&vm, PRECOPY, PRECOPY_DESC, false, true)
        .await
        .unwrap();
    let s1 = c.wait_snapshot_created(&t1, POLL, LONG).await.unwrap();
    let info = c.task_info(&t1).await.unwrap();
    assert_eq!(info.state, TaskState::Success);
    assert_eq!(
        info.name.as_deref(),
        Some("vim.VirtualMachine.createSnapshot")
    );
    assert_eq!(
        info.entity.as_ref().map(|e| e.value.as_str()),
        Some("vm-123")
    );
    assert_eq!(info.result.as_ref().unwrap().kind, "VirtualMachineSnapshot");
    assert_eq!(c.find_snapshot(&vm, PRECOPY).await.unwrap(), s1);

    // StoreInitialSnapshotDeltas: every disk, named by its base disk.
    let d1 = c.snapshot_change_ids(&vm, &s1).await.unwrap();
    assert_eq!(d1.len(), 2);
    assert_eq!(
        (
            d1[0].backing_file.as_str(),
            d1[0].snapshot_file.as_str(),
            d1[0].device_key
        ),
        ("[ds1] vm1/vm1.vmdk", "[ds1] vm1/vm1.vmdk", 2000)
    );
    let c1 = d1[0].change_id.clone().unwrap();
    assert!(
        c1.starts_with("52 de c0 11 22 33 44 55-66 77 88 99 aa bb 63/"),
        "{c1}"
    );
    assert_ne!(c1, "52 de c0 11 22 33 44 55-66 77 88 99 aa bb 63/81");
    assert_eq!(d1[1].backing_file, "[ds2] vm1/data.vmdk");
    assert!(d1[1].change_id.is_some());

    // The VM now runs on deltas; the disk list names them and their base.
    let disks = c.vm_disks(&vm).await.unwrap();
    assert_eq!(disks.len(), 2);
    assert_eq!(disks[0].file_name, "[ds1] vm1/vm1-000001.vmdk");
    assert_eq!(disks[0].base_file_name(), "[ds1] vm1/vm1.vmdk");
    assert_eq!(
        (disks[0].datastore.as_deref(), disks[0].capacity_bytes),
        (Some("ds1"), 10 << 30)
    );
    assert_eq!(disks[1].datastore.as_deref(), Some("ds2"));

    // Next round: the second snapshot, a child of the first, with fresh change IDs.
    let t2 = c
        .create_snapshot(&vm, PRECOPY, PRECOPY_DESC, false, true)
        .await
        .unwrap();
    let s2 = c.wait_snapshot_created(&t2, POLL, LONG).await.unwrap();
    assert_ne!(s1, s2);
    let d2 = c.snapshot_change_ids(&vm, &s2).await.unwrap();
    assert_eq!(d2[0].backing_file, "[ds1] vm1/vm1.vmdk");
    assert_eq!(d2[0].snapshot_file, "[ds1] vm1/vm1-000001.vmdk");
    assert_ne!(d2[0].change_id, d1[0].change_id);
    // The change ID stored in round 1 is what round 2's changed areas are relative to.
    let page = c
        .query_changed_disk_areas(&vm, &s2, 2000, 0, &c1)
        .await
        .unwrap();
    assert_eq!(page.length, 10 << 30);
    assert_eq!(
        fake.snapshot_tree("vm-123"),
        vec![
            (s1.clone(), PRECOPY.to_string(), 0),
            (s2.clone(), PRECOPY.to_string(), 1)
        ]
    );
    // Two snapshots of one name: by name it is ambiguous, by moref it is not.
    assert!(matches!(
        c.find_snapshot(&vm, PRECOPY).await,
        Err(Error::Ambiguous { .. })
    ));

    // RemovePreviousSnapshot → WaitForPreviousSnapshotRemoval.
    let r = c.remove_snapshot(&s1, false, true).await.unwrap();
    let info = c.wait_task(&r, POLL, LONG).await.unwrap();
    assert_eq!(info.name.as_deref(), Some("vim.vm.Snapshot.remove"));
    assert_eq!(info.result, None);
    let e = c.find_snapshot(&vm, &s1).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    assert_eq!(c.find_snapshot(&vm, &s2).await.unwrap(), s2);
    assert_eq!(
        fake.snapshot_tree("vm-123"),
        vec![(s2.clone(), PRECOPY.to_string(), 0)]
    );
    // The removed snapshot's change IDs are no longer readable.
    let e = c.snapshot_change_ids(&vm, &s1).await.unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { what } if what.contains(&s1)),
        "{e:?}"
    );

    // RemoveFinalSnapshot: the tree is empty again.
    let r = c.remove_snapshot(&s2, false, true).await.unwrap();
    c.wait_task(&r, POLL, LONG).await.unwrap();
    assert!(fake.snapshot_tree("vm-123").is_empty());
    let e = c.find_snapshot(&vm, &s2).await.unwrap_err();
    assert!(e.to_string().contains("has no snapshots"), "{e}");

    let calls = fake.calls();
    assert!(
        calls.contains(&format!(
            "CreateSnapshot_Task vm=vm-123 name={PRECOPY} memory=false quiesce=true"
        )),
        "{calls:#?}"
    );
    assert!(
        calls.contains(&format!(
            "RemoveSnapshot_Task snapshot={s1} removeChildren=false consolidate=true"
        )),
        "{calls:#?}"
    );
}

#[tokio::test]
async fn a_task_goes_queued_running_then_success() {
    let inv = with(inventory(), |v| {
        v["task_queue_ms"] = 300.into();
        v["task_run_ms"] = 600.into();
    });
    let fake = start(inv).await;
    let c = login(&fake).await;
    let vm = vm1(&c).await;
    let t = c
        .create_snapshot(&vm, PRECOPY, PRECOPY_DESC, false, true)
        .await
        .unwrap();
    let first = c.task_info(&t).await.unwrap();
    assert_eq!(first.state, TaskState::Queued);
    assert_eq!((first.result, first.progress), (None, None));
    let mut seen = vec![first.state];
    let mut progress = Vec::new();
    loop {
        let i = c.task_info(&t).await.unwrap();
        if seen.last() != Some(&i.state) {
            seen.push(i.state);
        }
        if let Some(p) = i.progress {
            progress.push(p);
        }
        if i.state.is_done() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(
        seen,
        [TaskState::Queued, TaskState::Running, TaskState::Success]
    );
    assert!(!progress.is_empty() && progress.is_sorted(), "{progress:?}");
    assert!(progress.iter().all(|p| *p < 100));
}

#[tokio::test]
async fn a_running_create_snapshot_task_is_found_for_reuse() {
    let inv = with(inventory(), |v| v["task_run_ms"] = 1500.into());
    let fake = start(inv).await;
    let c = login(&fake).await;
    let vm = vm1(&c).await;
    assert_eq!(
        c.running_task(&vm, TaskKind::CreateSnapshot).await.unwrap(),
        None
    );
    let t = c
        .create_snapshot(&vm, PRECOPY, PRECOPY_DESC, false, true)
        .await
        .unwrap();
    // A power task in between is not a snapshot task.
    let p = c.power_off(&vm).await.unwrap();
    // After a controller restart: the running task is found instead of a second one.
    let c2 = login(&fake).await;
    let found = c2
        .running_task(&vm, TaskKind::CreateSnapshot)
        .await
        .unwrap();
    assert_eq!(found, Some(t.clone()));
    assert_eq!(
        c2.running_task(&vm, TaskKind::RemoveSnapshot)
            .await
            .unwrap(),
        None
    );
    let s = c2.wait_snapshot_created(&t, POLL, LONG).await.unwrap();
    c2.wait_task(&p, POLL, LONG).await.unwrap();
    // Done tasks are not reused.
    assert_eq!(
        c2.running_task(&vm, TaskKind::CreateSnapshot)
            .await
            .unwrap(),
        None
    );
    let r = c2.remove_snapshot(&s, false, true).await.unwrap();
    assert_eq!(
        c2.running_task(&vm, TaskKind::RemoveSnapshot)
            .await
            .unwrap(),
        Some(r.clone())
    );
    c2.wait_task(&r, POLL, LONG).await.unwrap();
    assert_eq!(fake.snapshot_tree("vm-123").len(), 0);
    let snaps = fake
        .calls()
        .iter()
        .filter(|l| l.starts_with("CreateSnapshot_Task"))
        .count();
    assert_eq!(snaps, 1);
}

#[tokio::test]
async fn a_create_snapshot_that_fails_with_file_fault_names_the_fault() {
    let inv = with(inventory(), |v| {
        v["faults"] = serde_json::json!([{"method": "CreateSnapshot_Task", "fault": "FileFault",
            "message": "An error occurred while saving the snapshot: Error caused by file [ds1] vm1/vm1-000001.vmdk",
            "times": 1}]);
    });
    let fake = start(inv).await;
    let c = login(&fake).await;
    let vm = vm1(&c).await;
    let t = c
        .create_snapshot(&vm, PRECOPY, PRECOPY_DESC, false, true)
        .await
        .unwrap();
    let e = c.wait_snapshot_created(&t, POLL, LONG).await.unwrap_err();
    match &e {
        Error::TaskFailed {
            task,
            operation,
            fault,
            message,
        } => {
            assert_eq!(task, &t.moref);
            assert_eq!(operation, "vim.VirtualMachine.createSnapshot");
            assert_eq!(fault, "FileFault");
            assert!(message.contains("Error caused by file"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.fault_name(), Some("FileFault"));
    assert!(!e.is_transient());
    let i = c.task_info(&t).await.unwrap();
    assert_eq!(i.state, TaskState::Error);
    assert_eq!(i.error.unwrap().name, "FileFault");
    assert!(
        fake.snapshot_tree("vm-123").is_empty(),
        "no snapshot was taken"
    );
    // Only once: the next one succeeds.
    let t = c
        .create_snapshot(&vm, PRECOPY, PRECOPY_DESC, false, true)
        .await
        .unwrap();
    c.wait_snapshot_created(&t, POLL, LONG).await.unwrap();
}

#[tokio::test]
async fn an_immediate_fault_on_a_task_method_is_a_fault() {
    let fake = start(inventory()).await;
    let c = login(&fake).await;
    let vm = vm1(&c).await;
    fake.inject_fault(FaultSpec {
        method: "CreateSnapshot_Task".into(),
        fault: "SnapshotDisabled".into(),
        immediate: true,
        times: Some(1),
        ..Default::default()
    });
    let e = c
        .create_snapshot(&vm, PRECOPY, PRECOPY_DESC, false, true)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Fault { name, operation, .. } if name == "SnapshotDisabled" && operation == "CreateSnapshot_Task"),
        "{e:?}"
    );
}

#[tokio::test]
async fn removing_a_missing_snapshot_is_not_found() {
    let fake = start(inventory()).await;
    let c = login(&fake).await;
    let e = c
        .remove_snapshot("snapshot-404", false, true)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { what } if what.contains("snapshot-404")),
        "{e:?}"
    );
    // A snapshot removed by someone else after the task was started: the task fails.
    let vm = vm1(&c).await;
    let t = c
        .create_snapshot(&vm, PRECOPY, PRECOPY_DESC, false, true)
        .await
        .unwrap();
    let s = c.wait_snapshot_created(&t, POLL, LONG).await.unwrap();
    let r1 = c.remove_snapshot(&s, false, true).await.unwrap();
    let r2 = c.remove_snapshot(&s, false, true).await;
    c.wait_task(&r1, POLL, LONG).await.unwrap();
    match r2 {
        Err(Error::NotFound { .. }) => {}
        Ok(r2) => {
            let e = c.wait_task(&r2, POLL, LONG).await.unwrap_err();
            assert_eq!(e.fault_name(), Some("ManagedObjectNotFound"), "{e:?}");
        }
        Err(e) => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn an_unknown_task_or_vm_is_not_found() {
    let fake = start(inventory()).await;
    let c = login(&fake).await;
    let e = c.task_info(&TaskRef::new("task-999")).await.unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { what } if what.contains("task-999")),
        "{e:?}"
    );
    let ghost = Vm {
        moref: "vm-999".into(),
        name: String::new(),
        power_state: String::new(),
        host: None,
    };
    for e in [
        c.create_snapshot(&ghost, "x", "", false, false)
            .await
            .unwrap_err(),
        c.power_off(&ghost).await.unwrap_err(),
        c.shutdown_guest(&ghost).await.unwrap_err(),
        c.power_state(&ghost).await.unwrap_err(),
        c.vm_disks(&ghost).await.unwrap_err(),
        c.current_host(&ghost).await.unwrap_err(),
        c.running_task(&ghost, TaskKind::CreateSnapshot)
            .await
            .unwrap_err(),
    ] {
        assert!(
            matches!(&e, Error::NotFound { what } if what.contains("vm-999")),
            "{e:?}"
        );
    }
}

#[tokio::test]
async fn a_task_that_does_not_end_in_time_is_a_timeout() {
    let inv = with(inventory(), |v| v["task_run_ms"] = 60_000.into());
    let fake = start(inv).await;
    let c = login(&fake).await;
    let vm = vm1(&c).await;
    let t = c
        .create_snapshot(&vm, PRECOPY, PRECOPY_DESC, false, true)
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let e = c
        .wait_task(&t, Duration::from_millis(1), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(5));
    match &e {
        Error::Timeout { operation, after } => {
            assert_eq!(*after, Duration::from_millis(300));
            assert!(operation.contains(&t.moref), "{operation}");
            assert!(operation.contains("running"), "{operation}");
        }
        other => panic!("{other:?}"),
    }
    // The interval is raised to MIN_POLL_INTERVAL: a handful of polls, not hundreds.
    let polls = fake
        .calls()
        .iter()
        .filter(|l| l.contains(&format!("obj={} props=info", t.moref)))
        .count();
    assert!(polls <= 8, "{polls} polls");
}

#[tokio::test]
async fn power_off_on_round_trip() {
    let fake = start(inventory()).await;
    let c = login(&fake).await;
    let vm = vm1(&c).await;
    assert_eq!(c.power_state(&vm).await.unwrap(), PowerState::PoweredOn);
    let t = c.power_off(&vm).await.unwrap();
    let i = c.wait_task(&t, POLL, LONG).await.unwrap();
    assert_eq!(i.name.as_deref(), Some("vim.VirtualMachine.powerOff"));
    assert_eq!(c.power_state(&vm).await.unwrap(), PowerState::PoweredOff);
    // Powering off what is off fails in the task, as on vCenter.
    let t = c.power_off(&vm).await.unwrap();
    let e = c.wait_task(&t, POLL, LONG).await.unwrap_err();
    assert!(
        matches!(&e, Error::TaskFailed { fault, message, .. } if fault == "InvalidPowerState" && message.contains("poweredOff")),
        "{e:?}"
    );
    let t = c.power_on(&vm).await.unwrap();
    c.wait_task(&t, POLL, LONG).await.unwrap();
    assert_eq!(c.power_state(&vm).await.unwrap(), PowerState::PoweredOn);
    assert_eq!(fake.power_state("vm-123").as_deref(), Some("poweredOn"));
}

#[tokio::test]
async fn cutover_shuts_the_guest_down_and_waits_for_power_off() {
    let inv = with(inventory(), |v| v["guest_shutdown_ms"] = 300.into());
    let fake = start(inv).await;
    let c = login(&fake).await;
    let vm = vm1(&c).await;
    let r = c
        .power_off_for_cutover(&vm, CutoverPowerOff::GuestOnly)
        .await
        .unwrap();
    assert_eq!(r, PowerOffStarted::GuestShutdown);
    // Still on right after the request: the guest takes its time.
    assert_eq!(c.power_state(&vm).await.unwrap(), PowerState::PoweredOn);
    let e = c
        .wait_power_state(&vm, PowerState::PoweredOff, POLL, Duration::from_millis(60))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    c.wait_power_state(&vm, PowerState::PoweredOff, POLL, LONG)
        .await
        .unwrap();
    // Already off: nothing is sent (Forklift returns at once too).
    let before = fake.calls().len();
    let r = c
        .power_off_for_cutover(&vm, CutoverPowerOff::GuestThenHard)
        .await
        .unwrap();
    assert_eq!(r, PowerOffStarted::AlreadyOff);
    assert!(
        !fake.calls()[before..]
            .iter()
            .any(|l| l.starts_with("ShutdownGuest") || l.starts_with("PowerOff")),
        "{:#?}",
        fake.calls()
    );
    // ShutdownGuest on a VM that is off: InvalidPowerState.
    let e = c.shutdown_guest(&vm).await.unwrap_err();
    assert_eq!(e.fault_name(), Some("InvalidPowerState"), "{e:?}");
}

#[tokio::test]
async fn a_guest_without_tools_fails_like_forklift_or_falls_back_to_hard_power_off() {
    let fake = start(inventory()).await;
    let c = login(&fake).await;
    let vm = c
        .find_vm("5012aaaa-0000-0000-0000-000000000200")
        .await
        .unwrap();
    // Forklift's behaviour: the ToolsUnavailable fault, the VM stays on.
    let e = c
        .power_off_for_cutover(&vm, CutoverPowerOff::GuestOnly)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Fault { name, operation, message } if name == "ToolsUnavailable" && operation == "ShutdownGuest" && message.contains("VMware Tools")),
        "{e:?}"
    );
    assert_eq!(c.power_state(&vm).await.unwrap(), PowerState::PoweredOn);
    // The fallback: a hard power-off task.
    let r = c
        .power_off_for_cutover(&vm, CutoverPowerOff::GuestThenHard)
        .await
        .unwrap();
    let PowerOffStarted::HardPowerOff { task, guest_fault } = r else {
        panic!("{r:?}");
    };
    assert_eq!(guest_fault, "ToolsUnavailable");
    c.wait_task(&task, POLL, LONG).await.unwrap();
    assert_eq!(c.power_state(&vm).await.unwrap(), PowerState::PoweredOff);
    // With tools running again, the guest is asked.
    fake.set_tools_running("vm-200", true);
    let t = c.power_on(&vm).await.unwrap();
    c.wait_task(&t, POLL, LONG).await.unwrap();
    let r = c
        .power_off_for_cutover(&vm, CutoverPowerOff::GuestThenHard)
        .await
        .unwrap();
    assert_eq!(r, PowerOffStarted::GuestShutdown);
}

#[tokio::test]
async fn the_current_host_is_read_again_after_drs_moves_the_vm() {
    let fake = start(inventory()).await;
    let c = login(&fake).await;
    let vm = vm1(&c).await;
    assert_eq!(vm.host.as_deref(), Some("esx12.example"));
    assert_eq!(
        c.current_host(&vm).await.unwrap().as_deref(),
        Some("esx12.example")
    );
    fake.move_vm("vm-123", "esx14.example");
    assert_eq!(
        c.current_host(&vm).await.unwrap().as_deref(),
        Some("esx14.example")
    );
    let calls = fake.calls();
    assert!(
        calls
            .iter()
            .any(|l| l == "RetrievePropertiesEx obj=vm-123 props=runtime.host"),
        "{calls:#?}"
    );
}

#[tokio::test]
async fn task_calls_renew_an_expired_session_once() {
    let fake = start(inventory()).await;
    let c = login(&fake).await;
    let vm = vm1(&c).await;
    fake.expire_sessions();
    let t = c
        .create_snapshot(&vm, PRECOPY, PRECOPY_DESC, false, true)
        .await
        .unwrap();
    fake.expire_sessions();
    c.wait_snapshot_created(&t, POLL, LONG).await.unwrap();
    fake.expire_sessions();
    assert_eq!(c.power_state(&vm).await.unwrap(), PowerState::PoweredOn);
    let logins = fake
        .calls()
        .iter()
        .filter(|l| l.starts_with("Login"))
        .count();
    assert_eq!(logins, 4);
    // Exactly one snapshot: the create call was not sent twice.
    assert_eq!(fake.snapshot_tree("vm-123").len(), 1);
}

async fn malformed(quirk: TaskInfoQuirk) -> Error {
    let inv = with(inventory(), |v| {
        v["task_info_quirk"] = serde_json::to_value(quirk).unwrap();
    });
    let fake = start(inv).await;
    let c = login(&fake).await;
    let vm = vm1(&c).await;
    let t = c
        .create_snapshot(&vm, PRECOPY, PRECOPY_DESC, false, true)
        .await
        .unwrap();
    let e = c.wait_snapshot_created(&t, POLL, LONG).await.unwrap_err();
    // The running-task lookup reads info.state alone and is not thrown by it.
    let _ = c.running_task(&vm, TaskKind::CreateSnapshot).await;
    assert!(matches!(e, Error::Protocol(_)), "{e:?}");
    assert!(e.to_string().contains(&t.moref), "{e}");
    e
}

#[tokio::test]
async fn task_info_without_state_is_refused() {
    let e = malformed(TaskInfoQuirk::MissingState).await;
    assert!(e.to_string().ends_with("TaskInfo without state"), "{e}");
}

#[tokio::test]
async fn task_info_with_unknown_state_is_refused() {
    let e = malformed(TaskInfoQuirk::UnknownState).await;
    assert!(
        e.to_string()
            .ends_with("TaskInfo: state \"done\" is not queued, running, success or error"),
        "{e}"
    );
}

#[tokio::test]
async fn task_info_whose_result_is_not_a_moref_is_refused() {
    let e = malformed(TaskInfoQuirk::ResultNotMoref).await;
    assert!(
        e.to_string()
            .ends_with("TaskInfo: result \"string\" is not a ManagedObjectReference"),
        "{e}"
    );
}

#[tokio::test]
async fn change_ids_are_read_from_the_backings_forklift_reads() {
    let inv = with(inventory(), |v| {
        v["datacenters"][0]["vms"][0]["disks"] = serde_json::json!([
            {"key": 2000, "file_name": "[ds1] vm1/vm1.vmdk", "capacity_bytes": 4096,
             "change_id": "52 a/1"},
            {"key": 2001, "file_name": "[ds1] vm1/sparse.vmdk", "capacity_bytes": 4096,
             "change_id": "52 b/1", "backing": "VirtualDiskSparseVer2BackingInfo"},
            {"key": 2002, "file_name": "[ds1] vm1/rdm.vmdk", "capacity_bytes": 4096,
             "change_id": "52 c/1", "backing": "VirtualDiskRawDiskMappingVer1BackingInfo"},
            {"key": 2003, "file_name": "[ds1] vm1/raw.vmdk", "capacity_bytes": 4096,
             "change_id": "52 d/1", "backing": "VirtualDiskRawDiskVer2BackingInfo"},
            {"key": 2004, "file_name": "[ds1] vm1/se.vmdk", "capacity_bytes": 4096,
             "change_id": "52 e/1", "backing": "VirtualDiskSeSparseBackingInfo"}
        ]);
    });
    let fake = start(inv).await;
    let c = login(&fake).await;
    let vm = vm1(&c).await;
    for _ in 0..2 {
        let t = c
            .create_snapshot(&vm, PRECOPY, PRECOPY_DESC, false, true)
            .await
            .unwrap();
        c.wait_snapshot_created(&t, POLL, LONG).await.unwrap();
    }
    let s = c
        .find_snapshot(&vm, &format!("{PRECOPY}/{PRECOPY}"))
        .await
        .unwrap();
    let ids = c.snapshot_change_ids(&vm, &s).await.unwrap();
    // SeSparse is skipped, as Forklift's GetSnapshotDeltas skips it; RawDiskVer2 is named
    // by its descriptorFileName; every one by its base disk.
    let got: Vec<(i32, &str, &str, bool)> = ids
        .iter()
        .map(|d| {
            (
                d.device_key,
                d.backing_file.as_str(),
                d.snapshot_file.as_str(),
                d.change_id.is_some(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                2000,
                "[ds1] vm1/vm1.vmdk",
                "[ds1] vm1/vm1-000001.vmdk",
                true
            ),
            (
                2001,
                "[ds1] vm1/sparse.vmdk",
                "[ds1] vm1/sparse-000001.vmdk",
                true
            ),
            (
                2002,
                "[ds1] vm1/rdm.vmdk",
                "[ds1] vm1/rdm-000001.vmdk",
                true
            ),
            (
                2003,
                "[ds1] vm1/raw.vmdk",
                "[ds1] vm1/raw-000001.vmdk",
                true
            ),
        ]
    );
    let disks = c.vm_disks(&vm).await.unwrap();
    assert_eq!(disks.len(), 5);
    assert_eq!(disks[3].file_name, "[ds1] vm1/raw-000002.vmdk");
    assert_eq!(
        disks[4].backing.as_deref(),
        Some("VirtualDiskSeSparseBackingInfo")
    );
}
