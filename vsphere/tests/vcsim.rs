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
