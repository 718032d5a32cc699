//! ferry-vsphere against the fake vCenter, in process.

use std::time::{Duration, Instant};

use fake_vcenter::{Behavior, FakeVcenter, Inventory, Options};
use ferry_vsphere::{Client, ClientOptions, Disk, Error, ProxyConfig, TlsPolicy};

const BASE: &str = "[ds1] vm1/vm1.vmdk";

fn inventory() -> Inventory {
    serde_json::from_value(serde_json::json!({
        "user": "administrator@vsphere.local",
        "password": "s3cr&t<pw>",
        "datacenters": [
            {"name": "dc1", "vms": [
                {"moref": "vm-123", "name": "vm1",
                 "instance_uuid": "5012aaaa-0000-0000-0000-000000000001",
                 "bios_uuid": "4212bbbb-0000-0000-0000-000000000001",
                 "power_state": "poweredOn", "host": "esx12.example",
                 "disks": [
                     {"key": 2000, "file_name": "[ds1] vm1/vm1-000002.vmdk", "capacity_bytes": 10737418240u64,
                      "change_id": "52 de c0 11 22 33 44 55-66 77 88 99 aa bb 63/81",
                      "parents": ["[ds1] vm1/vm1-000001.vmdk", BASE]},
                     {"key": 2001, "file_name": "[ds2] vm1/data.vmdk", "capacity_bytes": 1073741824u64}
                 ],
                 "snapshots": [
                     {"moref": "snapshot-7", "name": "s1",
                      "disks": [{"key": 2000, "file_name": "[ds1] vm1/vm1-000001.vmdk", "capacity_bytes": 10737418240u64,
                                 "change_id": "52 de c0 11 22 33 44 55-66 77 88 99 aa bb 63/70"},
                                {"key": 2001, "file_name": "[ds2] vm1/data.vmdk", "capacity_bytes": 1073741824u64}],
                      "children": [
                          {"moref": "snapshot-8", "name": "s2",
                           "disks": [{"key": 2000, "file_name": "[ds1] vm1/vm1-000002.vmdk", "capacity_bytes": 10737418240u64},
                                     {"key": 2002, "file_name": "[ds3] vm1/removed.vmdk", "capacity_bytes": 4096}],
                           "children": []}
                      ]}
                 ]},
                {"moref": "vm-200", "name": "clone-a",
                 "instance_uuid": "5012aaaa-0000-0000-0000-000000000200",
                 "bios_uuid": "4212dddd-0000-0000-0000-00000000dupe",
                 "power_state": "poweredOff", "disks": []}
            ]},
            {"name": "dc2", "vms": [
                {"moref": "vm-300", "name": "vm3",
                 "instance_uuid": "5012aaaa-0000-0000-0000-000000000300",
                 "bios_uuid": "4212cccc-0000-0000-0000-000000000300",
                 "host": "esx30.example", "disks": []},
                {"moref": "vm-201", "name": "clone-b",
                 "instance_uuid": "5012aaaa-0000-0000-0000-000000000201",
                 "bios_uuid": "4212dddd-0000-0000-0000-00000000dupe", "disks": []}
            ]}
        ],
        "session_ttl_calls": null
    }))
    .unwrap()
}

async fn start(inv: Inventory) -> FakeVcenter {
    start_with(inv, Behavior::Normal).await
}

async fn start_with(inv: Inventory, behavior: Behavior) -> FakeVcenter {
    let opts = Options {
        behavior,
        quiet: true,
        ..Default::default()
    };
    FakeVcenter::start(inv, "127.0.0.1:0", opts).await.unwrap()
}

fn pinned(fake: &FakeVcenter) -> TlsPolicy {
    TlsPolicy {
        thumbprint: Some(fake.thumbprint().to_lowercase()),
        ..Default::default()
    }
}

fn opts() -> ClientOptions {
    ClientOptions {
        proxy: ProxyConfig::default(),
        ..Default::default()
    }
}

async fn login(fake: &FakeVcenter) -> Client {
    let inv = inventory();
    Client::login_with_options(
        &fake.endpoint(),
        &inv.user,
        &inv.password,
        &pinned(fake),
        opts(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn login_with_pinned_thumbprint_and_logout() {
    let fake = start(inventory()).await;
    let inv = inventory();
    let url = format!("https://{}/sdk", fake.endpoint());
    let c = Client::login_with_options(&url, &inv.user, &inv.password, &pinned(&fake), opts())
        .await
        .unwrap();
    assert_eq!(c.soap_action(), "urn:vim25/8.0.3.0");
    assert!(c.is_vcenter());
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("s3cr"), "{dbg}");
    assert!(!dbg.contains("fake"), "session cookie leaked: {dbg}");
    c.logout().await;
    assert_eq!(
        fake.calls(),
        vec![
            "RetrieveServiceContent".to_string(),
            "Login user=administrator@vsphere.local".into(),
            "Logout".into()
        ]
    );
}

#[tokio::test]
async fn bad_password_is_authentication_error() {
    let fake = start(inventory()).await;
    let err = Client::login_with_options(
        &fake.endpoint(),
        "administrator@vsphere.local",
        "nope",
        &pinned(&fake),
        opts(),
    )
    .await
    .unwrap_err();
    match &err {
        Error::Authentication { user, message } => {
            assert_eq!(user, "administrator@vsphere.local");
            assert!(
                message.contains("incorrect user name or password"),
                "{message}"
            );
        }
        other => panic!("expected Authentication, got {other:?}"),
    }
    assert!(!err.to_string().contains("nope"));
}

#[tokio::test]
async fn wrong_thumbprint_is_tls_error_naming_both() {
    let fake = start(inventory()).await;
    let wrong = "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33";
    let tls = TlsPolicy {
        thumbprint: Some(wrong.into()),
        ..Default::default()
    };
    let err = Client::login_with_options(&fake.endpoint(), "u", "p", &tls, opts())
        .await
        .unwrap_err();
    let Error::Tls { message } = &err else {
        panic!("expected Tls, got {err:?}")
    };
    assert!(message.contains("thumbprint mismatch"), "{message}");
    assert!(message.contains(fake.thumbprint()), "{message}");
    assert!(message.contains(wrong), "{message}");
    assert!(
        fake.calls().is_empty(),
        "no SOAP call may reach an unverified server"
    );
}

#[tokio::test]
async fn ca_dir_verifies_chain_and_host_name() {
    let fake = start(inventory()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vcenter.pem"), fake.cert_pem()).unwrap();
    let tls = TlsPolicy {
        ca_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let inv = inventory();
    for host in ["localhost", "127.0.0.1"] {
        let ep = format!("https://{host}:{}/sdk", fake.port());
        let c = Client::login_with_options(&ep, &inv.user, &inv.password, &tls, opts())
            .await
            .unwrap();
        c.logout().await;
    }
    // Another server's certificate in the CA directory: refused.
    let other = start(inventory()).await;
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::write(dir2.path().join("ca.crt"), other.cert_pem()).unwrap();
    let tls = TlsPolicy {
        ca_dir: Some(dir2.path().to_path_buf()),
        ..Default::default()
    };
    let err = Client::login_with_options(&fake.endpoint(), &inv.user, &inv.password, &tls, opts())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    // An empty CA directory is a configuration error.
    let empty = tempfile::tempdir().unwrap();
    let tls = TlsPolicy {
        ca_dir: Some(empty.path().to_path_buf()),
        ..Default::default()
    };
    let err = Client::login_with_options(&fake.endpoint(), "u", "p", &tls, opts())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
}

#[tokio::test]
async fn no_identity_check_is_refused_insecure_is_allowed() {
    let fake = start(inventory()).await;
    let inv = inventory();
    let err = Client::login_with_options(
        &fake.endpoint(),
        &inv.user,
        &inv.password,
        &TlsPolicy::default(),
        opts(),
    )
    .await
    .unwrap_err();
    let Error::Tls { message } = &err else {
        panic!("expected Tls, got {err:?}")
    };
    assert!(message.contains("refusing"), "{message}");
    assert!(fake.calls().is_empty());
    let tls = TlsPolicy {
        insecure: true,
        ..Default::default()
    };
    let c = Client::login_with_options(&fake.endpoint(), &inv.user, &inv.password, &tls, opts())
        .await
        .unwrap();
    c.logout().await;
}

#[tokio::test]
async fn finds_vm_by_instance_uuid_first() {
    let fake = start(inventory()).await;
    let c = login(&fake).await;
    let vm = c
        .find_vm("5012aaaa-0000-0000-0000-000000000300")
        .await
        .unwrap();
    assert_eq!(vm.moref, "vm-300");
    assert_eq!(vm.name, "vm3");
    assert_eq!(vm.power_state, "poweredOn");
    assert_eq!(vm.host.as_deref(), Some("esx30.example"));
    let calls = fake.calls();
    assert!(
        calls.contains(
            &"FindByUuid uuid=5012aaaa-0000-0000-0000-000000000300 instance=true dc=datacenter-2"
                .to_string()
        ),
        "{calls:#?}"
    );
    assert!(
        !calls.iter().any(|c| c.starts_with("FindAllByUuid")),
        "{calls:#?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("RetrievePropertiesEx obj=host-")),
        "{calls:#?}"
    );
}

#[tokio::test]
async fn falls_back_to_bios_uuid() {
    let fake = start(inventory()).await;
    let c = login(&fake).await;
    let vm = c
        .find_vm("4212bbbb-0000-0000-0000-000000000001")
        .await
        .unwrap();
    assert_eq!(vm.moref, "vm-123");
    assert_eq!(vm.host.as_deref(), Some("esx12.example"));
    let calls = fake.calls();
    let inst = calls
        .iter()
        .position(|c| c.contains("instance=true dc=datacenter-2"))
        .unwrap();
    let bios = calls
        .iter()
        .position(|c| c.starts_with("FindAllByUuid") && c.contains("instance=false"))
        .unwrap();
    assert!(
        inst < bios,
        "instance UUID must be tried in every datacenter first: {calls:#?}"
    );
}

#[tokio::test]
async fn shared_bios_uuid_is_ambiguous() {
    let fake = start(inventory()).await;
    let c = login(&fake).await;
    let err = c
        .find_vm("4212dddd-0000-0000-0000-00000000dupe")
        .await
        .unwrap_err();
    match err {
        Error::Ambiguous { candidates, .. } => assert_eq!(candidates, vec!["vm-200", "vm-201"]),
        other => panic!("expected Ambiguous, got {other:?}"),
    }
    // Same datacenter: two clones sharing a BIOS UUID.
    let mut inv = inventory();
    inv.datacenters[0].vms[1].bios_uuid = "4212bbbb-0000-0000-0000-000000000001".into();
    let fake = start(inv).await;
    let c = login(&fake).await;
    let err = c
        .find_vm("4212bbbb-0000-0000-0000-000000000001")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Ambiguous { candidates, .. } if candidates.len() == 2),
        "{err:?}"
    );
    // The instance UUID still picks exactly one.
    let vm = c
        .find_vm("5012aaaa-0000-0000-0000-000000000001")
        .await
        .unwrap();
    assert_eq!(vm.moref, "vm-123");
}

#[tokio::test]
async fn unknown_uuid_is_not_found() {
    let fake = start(inventory()).await;
    let c = login(&fake).await;
    let err = c
        .find_vm("ffffffff-0000-0000-0000-000000000000")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { what } if what.contains("ffffffff")),
        "{err:?}"
    );
}

#[tokio::test]
async fn finds_disks_in_config_snapshots_and_parent_chain() {
    let fake = start(inventory()).await;
    let c = login(&fake).await;
    let vm = c
        .find_vm("5012aaaa-0000-0000-0000-000000000001")
        .await
        .unwrap();

    let d = c.find_disk(&vm, "[ds2] vm1/data.vmdk").await.unwrap();
    assert_eq!(
        d,
        Disk {
            key: 2001,
            file_name: "[ds2] vm1/data.vmdk".into(),
            capacity_bytes: 1 << 30,
            change_id: None,
            datastore: Some("ds2".into()),
            backing: Some("VirtualDiskFlatVer2BackingInfo".into()),
        }
    );
    assert!(
        !fake.calls().iter().any(|c| c.contains("snapshot-7")),
        "current config suffices"
    );

    let d = c.find_disk(&vm, "[ds3] vm1/removed.vmdk").await.unwrap();
    assert_eq!((d.key, d.capacity_bytes), (2002, 4096));
    assert!(
        fake.calls()
            .iter()
            .any(|c| c.contains("obj=snapshot-7,snapshot-8")),
        "{:#?}",
        fake.calls()
    );

    let d = c.find_disk(&vm, "[ds1] vm1/vm1-000001.vmdk").await.unwrap();
    assert_eq!(d.key, 2000);
    assert_eq!(
        d.change_id.as_deref(),
        Some("52 de c0 11 22 33 44 55-66 77 88 99 aa bb 63/70")
    );

    // Only in the parent-backing chain of the current disk.
    let d = c.find_disk(&vm, BASE).await.unwrap();
    assert_eq!(
        (d.key, d.file_name.as_str(), d.capacity_bytes),
        (2000, BASE, 10 << 30)
    );

    let err = c.find_disk(&vm, "[ds1] vm1/nope.vmdk").await.unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { what } if what.contains("[ds1] vm1/nope.vmdk")),
        "{err:?}"
    );
}

#[tokio::test]
async fn snapshot_disk_returns_the_snapshots_file() {
    let fake = start(inventory()).await;
    let c = login(&fake).await;
    let vm = c
        .find_vm("5012aaaa-0000-0000-0000-000000000001")
        .await
        .unwrap();
    let base = c.find_disk(&vm, BASE).await.unwrap();
    let s = c.snapshot_disk(&vm, "snapshot-7", &base).await.unwrap();
    assert_eq!(s.key, 2000);
    assert_eq!(s.file_name, "[ds1] vm1/vm1-000001.vmdk");
    assert_eq!(
        s.change_id.as_deref(),
        Some("52 de c0 11 22 33 44 55-66 77 88 99 aa bb 63/70")
    );
    let s = c.snapshot_disk(&vm, "snapshot-8", &base).await.unwrap();
    assert_eq!(s.file_name, "[ds1] vm1/vm1-000002.vmdk");

    let err = c
        .snapshot_disk(&vm, "snapshot-99", &base)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { what } if what.contains("snapshot-99")),
        "{err:?}"
    );
    // A disk that is not in that snapshot.
    let data = Disk {
        key: 2001,
        ..base.clone()
    };
    let err = c.snapshot_disk(&vm, "snapshot-8", &data).await.unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { what } if what.contains("2001")),
        "{err:?}"
    );
    // A snapshot of another VM is not this VM's snapshot.
    let other = c
        .find_vm("5012aaaa-0000-0000-0000-000000000300")
        .await
        .unwrap();
    let err = c
        .snapshot_disk(&other, "snapshot-7", &base)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn expired_session_is_renewed_transparently() {
    let mut inv = inventory();
    inv.session_ttl_calls = Some(3);
    let fake = start(inv).await;
    let c = login(&fake).await;
    let vm = c
        .find_vm("4212bbbb-0000-0000-0000-000000000001")
        .await
        .unwrap();
    assert_eq!(
        (vm.moref.as_str(), vm.host.as_deref()),
        ("vm-123", Some("esx12.example"))
    );
    let base = c.find_disk(&vm, BASE).await.unwrap();
    let s = c.snapshot_disk(&vm, "snapshot-7", &base).await.unwrap();
    assert_eq!(s.file_name, "[ds1] vm1/vm1-000001.vmdk");
    let calls = fake.calls();
    let logins = calls.iter().filter(|c| c.starts_with("Login ")).count();
    let expired = calls
        .iter()
        .filter(|c| c.ends_with("fault=NotAuthenticated"))
        .count();
    assert!(logins >= 3, "{calls:#?}");
    assert_eq!(logins, expired + 1, "one re-login per expiry: {calls:#?}");
    // Every expired call was repeated right after the re-login.
    for (i, line) in calls.iter().enumerate() {
        if let Some(orig) = line.strip_suffix(" fault=NotAuthenticated") {
            assert!(calls[i + 1].starts_with("Login "), "{calls:#?}");
            assert_eq!(calls[i + 2], orig, "{calls:#?}");
        }
    }

    // A server-side expiry between calls.
    let fake = start(inventory()).await;
    let c = login(&fake).await;
    fake.expire_sessions();
    let vm = c
        .find_vm("5012aaaa-0000-0000-0000-000000000300")
        .await
        .unwrap();
    assert_eq!(vm.moref, "vm-300");
    assert_eq!(
        fake.calls()
            .iter()
            .filter(|c| c.starts_with("Login "))
            .count(),
        2
    );
}

#[tokio::test]
async fn silent_server_times_out_within_bound() {
    let bound = Duration::from_millis(300);
    // Accepts TCP, never starts TLS.
    let fake = start_with(inventory(), Behavior::HangOnAccept).await;
    let o = ClientOptions {
        connect_timeout: bound,
        ..opts()
    };
    let t0 = Instant::now();
    let err = Client::login_with_options(&fake.endpoint(), "u", "p", &pinned(&fake), o)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(t0.elapsed() < bound * 5, "{:?}", t0.elapsed());
    // TLS is fine, the reply never comes.
    let fake = start_with(inventory(), Behavior::HangOnRequest).await;
    let o = ClientOptions {
        call_timeout: bound,
        ..opts()
    };
    let t0 = Instant::now();
    let err = Client::login_with_options(&fake.endpoint(), "u", "p", &pinned(&fake), o)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Timeout { operation, after } if operation.contains("RetrieveServiceContent") && *after == bound),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(t0.elapsed() < bound * 5, "{:?}", t0.elapsed());
}

#[tokio::test]
async fn oversized_or_malformed_responses_are_protocol_errors() {
    let raw = |status: u16, body: Vec<u8>| Behavior::Raw { status, body };
    // Bigger than the default 16 MiB cap.
    let big = vec![b' '; ferry_vsphere::MAX_RESPONSE_BYTES + 1];
    let fake = start_with(inventory(), raw(200, big)).await;
    let err = Client::login_with_options(&fake.endpoint(), "u", "p", &pinned(&fake), opts())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Protocol(m) if m.contains("limit")),
        "{err:?}"
    );
    // A configured smaller cap.
    let fake = start_with(inventory(), raw(200, vec![b'x'; 4096])).await;
    let o = ClientOptions {
        max_body_bytes: 1024,
        ..opts()
    };
    let err = Client::login_with_options(&fake.endpoint(), "u", "p", &pinned(&fake), o)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Protocol(m) if m.contains("1024")),
        "{err:?}"
    );
    // Not XML.
    let fake = start_with(
        inventory(),
        raw(200, b"<soapenv:Envelope><Body><unclosed>".to_vec()),
    )
    .await;
    let err = Client::login_with_options(&fake.endpoint(), "u", "p", &pinned(&fake), opts())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err:?}");
    // XML, but no ServiceContent.
    let body = b"<Envelope><Body><RetrieveServiceContentResponse/></Body></Envelope>".to_vec();
    let fake = start_with(inventory(), raw(200, body)).await;
    let err = Client::login_with_options(&fake.endpoint(), "u", "p", &pinned(&fake), opts())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err:?}");
    // A proxy error page.
    let fake = start_with(inventory(), raw(503, b"<html>busy</html>".to_vec())).await;
    let err = Client::login_with_options(&fake.endpoint(), "u", "p", &pinned(&fake), opts())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Http { status: 503, .. }), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn paged_results_and_nested_datacenters() {
    let mut inv = inventory();
    for i in 0..4 {
        inv.datacenters.insert(
            0,
            fake_vcenter::Datacenter {
                name: format!("empty{i}"),
                moref: Some(format!("datacenter-e{i}")),
                vms: vec![],
            },
        );
    }
    inv.page_size = Some(2);
    let fake = start(inv).await;
    let c = login(&fake).await;
    let vm = c
        .find_vm("5012aaaa-0000-0000-0000-000000000300")
        .await
        .unwrap();
    assert_eq!(vm.moref, "vm-300");
    assert!(
        fake.calls()
            .iter()
            .any(|c| c.starts_with("ContinueRetrievePropertiesEx token=")),
        "{:#?}",
        fake.calls()
    );
}

#[tokio::test]
async fn refused_port_is_connect_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let tls = TlsPolicy {
        insecure: true,
        ..Default::default()
    };
    let err = Client::login_with_options(&format!("127.0.0.1:{port}"), "u", "p", &tls, opts())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Connect { address, .. } if address.ends_with(&port.to_string())),
        "{err:?}"
    );
    assert!(err.is_transient());
    let err = Client::login_with_options("http://vc.example/sdk", "u", "p", &tls, opts())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
}

#[tokio::test]
async fn a_server_without_find_all_by_uuid_falls_back_to_find_by_uuid() {
    // Older vCenter/ESXi answer MethodNotFound for FindAllByUuid.
    let mut inv = inventory();
    inv.missing_methods = vec!["FindAllByUuid".into()];
    let fake = start(inv).await;
    let c = login(&fake).await;
    let vm = c
        .find_vm("4212bbbb-0000-0000-0000-000000000001")
        .await
        .unwrap();
    assert_eq!(vm.moref, "vm-123");
    let calls = fake.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("FindAllByUuid") && c.contains("fault=MethodNotFound")),
        "{calls:#?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("FindByUuid") && c.contains("instance=false")),
        "{calls:#?}"
    );
    // A BIOS UUID found in two datacenters is still ambiguous.
    let err = c
        .find_vm("4212dddd-0000-0000-0000-00000000dupe")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Ambiguous { candidates, .. } if candidates.len() == 2),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_vm_is_found_by_name_in_any_datacenter_and_a_shared_name_is_ambiguous() {
    let mut inv = inventory();
    // A second "vm1" in another datacenter makes that name ambiguous; "vm3" stays unique.
    let mut twin = inv.datacenters[0].vms[1].clone();
    twin.moref = "vm-400".into();
    twin.name = "clone-a".into();
    twin.instance_uuid = "5012aaaa-0000-0000-0000-000000000400".into();
    inv.datacenters[1].vms.push(twin);
    let fake = start(inv).await;
    let c = login(&fake).await;
    let (vm, uuid) = c.find_vm_by_name("vm3").await.unwrap();
    assert_eq!(
        (vm.moref.as_str(), uuid.as_str()),
        ("vm-300", "5012aaaa-0000-0000-0000-000000000300")
    );
    assert_eq!(vm.host.as_deref(), Some("esx30.example"));
    let (vm, _) = c.find_vm_by_name("vm1").await.unwrap();
    assert_eq!(vm.moref, "vm-123");
    let err = c.find_vm_by_name("clone-a").await.unwrap_err();
    match &err {
        Error::Ambiguous { candidates, .. } => {
            assert_eq!(candidates, &["vm-200".to_string(), "vm-400".to_string()])
        }
        other => panic!("not ambiguous: {other:?}"),
    }
    assert!(err.to_string().contains("instance UUID"), "{err}");
    let err = c.find_vm_by_name("nope").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert_eq!(err.to_string(), "not found: VM named \"nope\"");
}
