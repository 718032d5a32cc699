//! ferry-vsphere against govmomi's vCenter simulator (vcsim, from Debian's
//! golang-github-vmware-govmomi-dev 0.24): an independent implementation of the calls
//! Ferry makes. This vcsim has no `FindAllByUuid`, so every UUID lookup goes through the
//! `FindByUuid` fallback older vCenter and ESXi need; and its own certificate has an RSA
//! 1024 key, as older ESXi hosts do.

mod support;

use ferry_vsphere::{Client, ClientOptions, Error, TlsPolicy};
use support::vcsim::{Vcsim, available};

/// The login tests/vcsim sets.
const USER: &str = "administrator@vsphere.local";
const PASSWORD: &str = "s3cr&t<pw>";

fn pinned(thumbprint: &str) -> TlsPolicy {
    TlsPolicy {
        thumbprint: Some(thumbprint.to_string()),
        ..Default::default()
    }
}

async fn login(sim: &Vcsim, password: &str) -> Result<Client, Error> {
    Client::login_with_options(
        &sim.get("url"),
        USER,
        password,
        &pinned(&sim.get("thumbprint")),
        ClientOptions::default(),
    )
    .await
}

#[tokio::test]
async fn lookups_match_what_govmomi_reports() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sim = Vcsim::start(dir.path(), false);
    let c = login(&sim, PASSWORD).await.unwrap();
    // Instance UUID, then BIOS UUID, both through the FindByUuid fallback.
    for uuid in [sim.get("instance_uuid"), sim.get("bios_uuid")] {
        let vm = c
            .find_vm(&uuid)
            .await
            .unwrap_or_else(|e| panic!("{uuid}: {e}"));
        assert_eq!(vm.moref, sim.get("vm"), "{uuid}");
        assert_eq!(vm.name, sim.get("vm_name"));
        assert_eq!(vm.host.as_deref(), Some(sim.get("host").as_str()));
    }
    let vm = c.find_vm(&sim.get("instance_uuid")).await.unwrap();
    let disk = c.find_disk(&vm, &sim.get("disk")).await.unwrap();
    assert_eq!(disk.capacity_bytes, sim.info["capacity"].as_u64().unwrap());
    // The checkpoint by moref and by name, as govmomi's FindSnapshot resolves it.
    for reference in [sim.get("snapshot"), sim.get("snapshot_name")] {
        let s = c.find_snapshot(&vm, &reference).await.unwrap();
        assert_eq!(s, sim.get("snapshot"), "{reference}");
    }
    let snap = c
        .snapshot_disk(&vm, &sim.get("snapshot"), &disk)
        .await
        .unwrap();
    assert_eq!(snap.file_name, sim.get("snapshot_disk"));
    // By name, through the inventory walk (root folder → datacenters → VM folders).
    let (by_name, uuid) = c.find_vm_by_name(&sim.get("vm_name")).await.unwrap();
    assert_eq!(by_name.moref, sim.get("vm"));
    assert_eq!(uuid, sim.get("instance_uuid"));
    let err = c.find_vm_by_name("no-such-vm").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    // What does not exist is NotFound, not a protocol error.
    let err = c
        .find_vm("00000000-0000-0000-0000-000000000000")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    let err = c.find_disk(&vm, "[nope] x.vmdk").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    let err = c.find_snapshot(&vm, "no-such-snapshot").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    c.logout().await;
}

#[tokio::test]
async fn a_wrong_password_or_thumbprint_is_refused_by_kind() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sim = Vcsim::start(dir.path(), false);
    let err = login(&sim, "wrong").await.unwrap_err();
    assert!(matches!(err, Error::Authentication { .. }), "{err:?}");
    let other = "11:22:33:44:55:66:77:88:99:00:AA:BB:CC:DD:EE:FF:11:22:33:44";
    let err = Client::login_with_options(
        &sim.get("url"),
        USER,
        PASSWORD,
        &pinned(other),
        ClientOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("thumbprint mismatch"), "{err}");
}

#[tokio::test]
async fn vcsims_own_rsa_1024_certificate_is_named() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sim = Vcsim::start(dir.path(), true);
    let err = login(&sim, PASSWORD).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    assert!(msg.contains("RSA 1024-bit key"), "{msg}");
}

const POLL: std::time::Duration = std::time::Duration::from_millis(50);
const LONG: std::time::Duration = std::time::Duration::from_secs(30);

/// Forklift's warm snapshot calls against govmomi's own implementation of them. vcsim
/// 0.24 runs a task within the call that starts it (it is `success` or `error` at the
/// first read), names it `CreateSnapshot` (vCenter: `vim.VirtualMachine.createSnapshot`),
/// keeps no `recentTask` on the VM, takes a snapshot without a delta disk or change IDs,
/// and puts the Go type of a fault in `localizedMessage`.
#[tokio::test]
async fn snapshots_tasks_and_change_ids_against_vcsim() {
    use ferry_vsphere::{TaskKind, TaskState};
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sim = Vcsim::start(dir.path(), false);
    let c = login(&sim, PASSWORD).await.unwrap();
    let vm = c.find_vm(&sim.get("instance_uuid")).await.unwrap();
    assert_eq!(
        c.running_task(&vm, TaskKind::CreateSnapshot).await.unwrap(),
        None
    );
    let t = c
        .create_snapshot(
            &vm,
            "forklift-migration-precopy",
            "Forklift Operator warm migration precopy",
            false,
            true,
        )
        .await
        .unwrap();
    let info = c.task_info(&t).await.unwrap();
    assert_eq!(info.state, TaskState::Success, "{info:?}");
    assert_eq!(info.name.as_deref(), Some("CreateSnapshot"), "{info:?}");
    assert_eq!(
        info.description_id.as_deref(),
        Some("VirtualMachine.createSnapshot")
    );
    assert!(TaskKind::CreateSnapshot.matches(info.name.as_deref(), info.description_id.as_deref()));
    assert_eq!(info.entity.as_ref().unwrap().value, vm.moref);
    let s = c.wait_snapshot_created(&t, POLL, LONG).await.unwrap();
    assert_ne!(s, sim.get("snapshot"));
    // A child of the snapshot tests/vcsim took, found by moref and by path.
    assert_eq!(c.find_snapshot(&vm, &s).await.unwrap(), s);
    assert_eq!(
        c.find_snapshot(
            &vm,
            &format!("{}/forklift-migration-precopy", sim.get("snapshot_name"))
        )
        .await
        .unwrap(),
        s
    );
    // Every disk of the snapshot: vcsim copies the VM's config (no delta file, no CBT).
    let ids = c.snapshot_change_ids(&vm, &s).await.unwrap();
    let disks = c.vm_disks(&vm).await.unwrap();
    assert_eq!(ids.len(), disks.len());
    assert!(!ids.is_empty());
    assert_eq!(ids[0].backing_file, sim.get("disk"));
    assert_eq!(ids[0].device_key, disks[0].key);
    assert_eq!(ids[0].change_id, None);
    assert_eq!(disks[0].file_name, sim.get("disk"));
    assert_eq!(
        disks[0].capacity_bytes,
        sim.info["capacity"].as_u64().unwrap()
    );
    assert!(disks[0].datastore.is_some());
    assert_eq!(
        c.current_host(&vm).await.unwrap().as_deref(),
        Some(sim.get("host").as_str())
    );
    // Remove it: gone from the tree, the first snapshot stays.
    let r = c.remove_snapshot(&s, false, true).await.unwrap();
    let info = c.wait_task(&r, POLL, LONG).await.unwrap();
    assert_eq!(
        info.description_id.as_deref(),
        Some("VirtualMachineSnapshot.removeSnapshot")
    );
    let e = c.find_snapshot(&vm, &s).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    assert_eq!(
        c.find_snapshot(&vm, &sim.get("snapshot")).await.unwrap(),
        sim.get("snapshot")
    );
    let e = c.snapshot_change_ids(&vm, &s).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    // Removing it again: vcsim answers ManagedObjectNotFound on the call, as vCenter.
    let e = c.remove_snapshot(&s, false, true).await.unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { what } if what.contains(&s)),
        "{e:?}"
    );
    c.logout().await;
}

#[tokio::test]
async fn power_round_trip_and_task_errors_against_vcsim() {
    use ferry_vsphere::{CutoverPowerOff, PowerOffStarted, PowerState};
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sim = Vcsim::start(dir.path(), false);
    let c = login(&sim, PASSWORD).await.unwrap();
    let vm = c.find_vm(&sim.get("instance_uuid")).await.unwrap();
    assert_eq!(c.power_state(&vm).await.unwrap(), PowerState::PoweredOn);
    let t = c.power_off(&vm).await.unwrap();
    let info = c.wait_task(&t, POLL, LONG).await.unwrap();
    assert_eq!(info.result, None);
    assert_eq!(c.power_state(&vm).await.unwrap(), PowerState::PoweredOff);
    // A task error: powering off what is off.
    let t = c.power_off(&vm).await.unwrap();
    let e = c.wait_task(&t, POLL, LONG).await.unwrap_err();
    match &e {
        Error::TaskFailed { fault, message, .. } => {
            assert_eq!(fault, "InvalidPowerState");
            assert_eq!(message, "*types.InvalidPowerState");
        }
        other => panic!("{other:?}"),
    }
    // ShutdownGuest of a VM that is off: the call's own fault.
    let e = c.shutdown_guest(&vm).await.unwrap_err();
    assert_eq!(e.fault_name(), Some("InvalidPowerState"), "{e:?}");
    assert_eq!(
        c.power_off_for_cutover(&vm, CutoverPowerOff::GuestOnly)
            .await
            .unwrap(),
        PowerOffStarted::AlreadyOff
    );
    let t = c.power_on(&vm).await.unwrap();
    c.wait_task(&t, POLL, LONG).await.unwrap();
    assert_eq!(c.power_state(&vm).await.unwrap(), PowerState::PoweredOn);
    // The cutover: vcsim 0.24 shuts any guest down at once (no VMware Tools check).
    assert_eq!(
        c.power_off_for_cutover(&vm, CutoverPowerOff::GuestOnly)
            .await
            .unwrap(),
        PowerOffStarted::GuestShutdown
    );
    c.wait_power_state(&vm, PowerState::PoweredOff, POLL, LONG)
        .await
        .unwrap();
    c.logout().await;
}
