//! QueryChangedDiskAreas (CBT) against the fake vCenter, in process.

use std::time::Duration;

use fake_vcenter::{Behavior, FakeVcenter, Inventory, Options};
use ferry_vsphere::{
    ChangedArea, ChangedAreasPage, Client, ClientOptions, Error, ProxyConfig, TlsPolicy, Vm,
    for_each_changed_area_page, for_each_changed_area_page_from,
};

const CAP: u64 = 10 << 30;
const CID_S7: &str = "52 de c0 11 22 33 44 55-66 77 88 99 aa bb 63/70";
const CID_S8: &str = "52 de c0 11 22 33 44 55-66 77 88 99 aa bb 63/81";
const N_AREAS: u64 = 5000;

/// Area `i`: every 2 MiB, 64 KiB × (1 + i % 4) long.
fn area(i: u64) -> ChangedArea {
    ChangedArea {
        start: i * (2 << 20),
        length: (64 << 10) * (1 + i % 4),
    }
}

fn changed_areas() -> Vec<serde_json::Value> {
    (0..N_AREAS)
        .map(|i| {
            let a = area(i);
            serde_json::json!({"start": a.start, "length": a.length})
        })
        .collect()
}

fn expected_total() -> u64 {
    (0..N_AREAS).map(|i| area(i).length).sum()
}

fn inventory() -> Inventory {
    serde_json::from_value(serde_json::json!({
        "user": "u", "password": "p",
        "page_areas": 2000,
        "datacenters": [{"name": "dc1", "vms": [
            {"moref": "vm-123", "name": "vm1",
             "instance_uuid": "5012aaaa-0000-0000-0000-000000000001",
             "bios_uuid": "4212bbbb-0000-0000-0000-000000000001",
             "disks": [{"key": 2000, "file_name": "[ds1] vm1/vm1-000002.vmdk", "capacity_bytes": CAP,
                        "parents": ["[ds1] vm1/vm1-000001.vmdk", "[ds1] vm1/vm1.vmdk"]}],
             "snapshots": [
                 {"moref": "snapshot-7", "name": "s1",
                  "disks": [{"key": 2000, "file_name": "[ds1] vm1/vm1-000001.vmdk", "capacity_bytes": CAP,
                             "change_id": CID_S7},
                            {"key": 2001, "file_name": "[ds2] vm1/data.vmdk", "capacity_bytes": 1048576}],
                  "children": [
                      {"moref": "snapshot-8", "name": "s2",
                       "disks": [{"key": 2000, "file_name": "[ds1] vm1/vm1-000002.vmdk", "capacity_bytes": CAP,
                                  "change_id": CID_S8,
                                  "previous_change_id": CID_S7,
                                  "changed_areas": changed_areas(),
                                  "allocated_areas": [{"start": 0, "length": 1048576},
                                                      {"start": 4194304, "length": 2097152}]}],
                       "children": []}
                  ]}
             ]},
            {"moref": "vm-200", "name": "other",
             "instance_uuid": "5012aaaa-0000-0000-0000-000000000200",
             "bios_uuid": "4212bbbb-0000-0000-0000-000000000200", "disks": []}
        ]}]
    }))
    .unwrap()
}

async fn start(inv: Inventory) -> FakeVcenter {
    let opts = Options {
        behavior: Behavior::Normal,
        quiet: true,
        ..Default::default()
    };
    FakeVcenter::start(inv, "127.0.0.1:0", opts).await.unwrap()
}

async fn login(fake: &FakeVcenter) -> (Client, Vm) {
    let tls = TlsPolicy {
        thumbprint: Some(fake.thumbprint().to_string()),
        ..Default::default()
    };
    let opts = ClientOptions {
        proxy: ProxyConfig::default(),
        ..Default::default()
    };
    let c = Client::login_with_options(&fake.endpoint(), "u", "p", &tls, opts)
        .await
        .unwrap();
    let vm = c
        .find_vm("5012aaaa-0000-0000-0000-000000000001")
        .await
        .unwrap();
    (c, vm)
}

fn queries(fake: &FakeVcenter) -> Vec<String> {
    fake.calls()
        .into_iter()
        .filter(|c| c.starts_with("QueryChangedDiskAreas "))
        .collect()
}

/// Walk every page, checking each area against the expected sequence.
async fn walk(
    c: &Client,
    vm: &Vm,
    mut on_page: impl FnMut(&ChangedAreasPage),
) -> Result<(u64, Vec<(u64, u64, usize)>, u64), Error> {
    let mut next = 0u64;
    let mut pages = Vec::new();
    let total = for_each_changed_area_page(c, vm, "snapshot-8", 2000, CAP, CID_S7, |p| {
        for a in &p.areas {
            assert_eq!(*a, area(next), "area {next}");
            next += 1;
        }
        pages.push((p.start_offset, p.length, p.areas.len()));
        on_page(p);
        Ok(())
    })
    .await?;
    Ok((total, pages, next))
}

fn end_of(i: u64) -> u64 {
    area(i).start + area(i).length
}

#[tokio::test]
async fn five_thousand_areas_in_three_pages() {
    let fake = start(inventory()).await;
    let (c, vm) = login(&fake).await;
    let (total, pages, seen) = walk(&c, &vm, |_| {}).await.unwrap();
    assert_eq!(seen, N_AREAS, "every area seen");
    assert_eq!(total, expected_total());
    let (e1, e2) = (end_of(1999), end_of(3999));
    assert_eq!(
        pages,
        vec![(0, e1, 2000), (e1, e2 - e1, 2000), (e2, CAP - e2, 1000)]
    );
    assert_eq!(
        queries(&fake),
        [0, e1, e2]
            .iter()
            .map(|s| format!(
                "QueryChangedDiskAreas vm=vm-123 snapshot=snapshot-8 key=2000 start={s} changeId={CID_S7}"
            ))
            .collect::<Vec<_>>()
    );

    // Resuming from the second page's start reads only the last two pages.
    let mut n = 0;
    let rest = for_each_changed_area_page_from(&c, &vm, "snapshot-8", 2000, CAP, CID_S7, e1, |p| {
        n += p.areas.len();
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(n, 3000);
    assert_eq!(rest, (2000..N_AREAS).map(|i| area(i).length).sum::<u64>());
    // Starting at the end reads nothing; past the end is refused.
    let none =
        for_each_changed_area_page_from(&c, &vm, "snapshot-8", 2000, CAP, CID_S7, CAP, |_| {
            panic!("no page expected")
        })
        .await
        .unwrap();
    assert_eq!(none, 0);
    let err =
        for_each_changed_area_page_from(&c, &vm, "snapshot-8", 2000, CAP, CID_S7, CAP + 1, |_| {
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");

    // A single page, as vCenter returns it.
    let p = c
        .query_changed_disk_areas(&vm, "snapshot-8", 2000, e2, CID_S7)
        .await
        .unwrap();
    assert_eq!(
        (p.start_offset, p.length, p.areas.len()),
        (e2, CAP - e2, 1000)
    );
    assert_eq!(p.areas[0], area(4000));
}

#[tokio::test]
async fn callback_error_stops_the_walk() {
    let fake = start(inventory()).await;
    let (c, vm) = login(&fake).await;
    let err = for_each_changed_area_page(&c, &vm, "snapshot-8", 2000, CAP, CID_S7, |_| {
        Err(Error::Protocol("sink full".into()))
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("sink full"), "{err}");
    assert_eq!(queries(&fake).len(), 1);
}

#[tokio::test]
async fn star_returns_all_allocated_areas() {
    let fake = start(inventory()).await;
    let (c, vm) = login(&fake).await;
    let mut areas = Vec::new();
    let total = for_each_changed_area_page(&c, &vm, "snapshot-8", 2000, CAP, "*", |p| {
        areas.extend_from_slice(&p.areas);
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        areas,
        vec![
            ChangedArea {
                start: 0,
                length: 1 << 20
            },
            ChangedArea {
                start: 4 << 20,
                length: 2 << 20
            }
        ]
    );
    assert_eq!(total, 3 << 20);
    // Without an allocated_areas list the whole disk is allocated.
    let total = for_each_changed_area_page(&c, &vm, "snapshot-7", 2000, CAP, "*", |p| {
        assert_eq!(
            p.areas,
            vec![ChangedArea {
                start: 0,
                length: CAP
            }]
        );
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(total, CAP);
    assert!(
        queries(&fake)
            .iter()
            .all(|q| q.ends_with("start=0 changeId=*")),
        "{:?}",
        queries(&fake)
    );
}

#[tokio::test]
async fn cbt_reset_needs_a_full_copy() {
    let fake = start(inventory()).await;
    let (c, vm) = login(&fake).await;
    let stale = "52 de c0 11 22 33 44 55-66 77 88 99 aa bb 00/12";
    let err = for_each_changed_area_page(&c, &vm, "snapshot-8", 2000, CAP, stale, |_| {
        panic!("no page expected")
    })
    .await
    .unwrap_err();
    match &err {
        Error::ChangeIdInvalid { change_id, message } => {
            assert_eq!(change_id, stale);
            assert!(message.contains("full copy"), "{message}");
            assert!(message.contains("FileFault"), "{message}");
        }
        other => panic!("expected ChangeIdInvalid, got {other:?}"),
    }
    assert!(err.to_string().contains("full copy"), "{err}");
    assert!(!err.is_transient());
    assert_eq!(
        queries(&fake),
        vec![format!(
            "QueryChangedDiskAreas vm=vm-123 snapshot=snapshot-8 key=2000 start=0 changeId={stale} fault=FileFault"
        )]
    );
    // An empty change ID is refused before any call.
    let err = c
        .query_changed_disk_areas(&vm, "snapshot-8", 2000, 0, " ")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
}

#[tokio::test]
async fn non_advancing_empty_page_is_an_error() {
    let mut inv = inventory();
    inv.buggy_empty_pages = true;
    let fake = start(inv).await;
    let (c, vm) = login(&fake).await;
    let mut pages = 0;
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        for_each_changed_area_page(&c, &vm, "snapshot-8", 2000, CAP, CID_S7, |_| {
            pages += 1;
            Ok(())
        }),
    )
    .await
    .expect("the walk must not loop forever");
    let err = res.unwrap_err();
    match &err {
        Error::Protocol(m) => assert!(m.contains("does not advance"), "{m}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert_eq!(pages, 1, "only the good first page reaches the callback");
    assert_eq!(queries(&fake).len(), 2);
}

#[tokio::test]
async fn session_expiry_mid_paging_relogs_and_continues() {
    let fake = start(inventory()).await;
    let (c, vm) = login(&fake).await;
    let mut n = 0;
    let (total, pages, seen) = walk(&c, &vm, |_| {
        n += 1;
        if n == 1 {
            fake.expire_sessions();
        }
    })
    .await
    .unwrap();
    assert_eq!((seen, pages.len()), (N_AREAS, 3));
    assert_eq!(total, expected_total());
    let calls = fake.calls();
    let expired: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, l)| l.ends_with(" fault=NotAuthenticated"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(expired.len(), 1, "{calls:#?}");
    let i = expired[0];
    let orig = calls[i].strip_suffix(" fault=NotAuthenticated").unwrap();
    assert!(orig.contains(&format!("start={}", end_of(1999))), "{orig}");
    assert!(calls[i + 1].starts_with("Login "), "{calls:#?}");
    assert_eq!(calls[i + 2], orig, "{calls:#?}");
}

#[tokio::test]
async fn snapshot_change_ids() {
    let fake = start(inventory()).await;
    let (c, vm) = login(&fake).await;
    assert_eq!(
        c.snapshot_change_id(&vm, "snapshot-8", 2000).await.unwrap(),
        CID_S8
    );
    assert_eq!(
        c.snapshot_change_id(&vm, "snapshot-7", 2000).await.unwrap(),
        CID_S7
    );
    // The change ID read from the previous snapshot drives the delta of the next one.
    let prev = c.snapshot_change_id(&vm, "snapshot-7", 2000).await.unwrap();
    let p = c
        .query_changed_disk_areas(&vm, "snapshot-8", 2000, 0, &prev)
        .await
        .unwrap();
    assert_eq!(p.areas.len(), 2000);
    for (snap, key) in [
        ("snapshot-7", 2001),
        ("snapshot-7", 2999),
        ("snapshot-99", 2000),
    ] {
        let err = c.snapshot_change_id(&vm, snap, key).await.unwrap_err();
        assert!(
            matches!(err, Error::NotFound { .. }),
            "{snap} {key}: {err:?}"
        );
    }
}

#[tokio::test]
async fn unknown_snapshot_is_not_found() {
    let fake = start(inventory()).await;
    let (c, vm) = login(&fake).await;
    let err = c
        .query_changed_disk_areas(&vm, "snapshot-99", 2000, 0, CID_S7)
        .await
        .unwrap_err();
    match &err {
        Error::NotFound { what } => assert!(what.contains("snapshot-99"), "{what}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // A snapshot of another VM is not found for this one.
    let other = Vm {
        moref: "vm-200".into(),
        ..vm.clone()
    };
    let err = for_each_changed_area_page(&c, &other, "snapshot-8", 2000, CAP, "*", |_| Ok(()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert!(
        queries(&fake)
            .iter()
            .all(|q| q.ends_with("fault=ManagedObjectNotFound")),
        "{:?}",
        queries(&fake)
    );
}
