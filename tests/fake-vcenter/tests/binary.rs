//! The `fake-vcenter` binary: CLI, ready file, certificate file, call log.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_vsphere::{Client, ClientOptions, TlsPolicy};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const INVENTORY: &str = r#"{
  "user": "admin", "password": "pw",
  "datacenters": [{"name": "dc1", "vms": [{
    "moref": "vm-123", "name": "vm1",
    "instance_uuid": "5012aaaa-0000-0000-0000-000000000001",
    "bios_uuid": "4212bbbb-0000-0000-0000-000000000001",
    "power_state": "poweredOn", "host": "esx12.example",
    "disks": [{"key": 2000, "file_name": "[ds1] vm1/vm1.vmdk", "capacity_bytes": 1048576,
               "change_id": "52 de c0 11-22 33 63/81"}],
    "snapshots": [{"moref": "snapshot-7", "name": "s1",
                   "disks": [{"key": 2000, "file_name": "[ds1] vm1/vm1-000001.vmdk", "capacity_bytes": 1048576}],
                   "children": []}]
  }]}],
  "session_ttl_calls": 2
}"#;

#[tokio::test]
async fn binary_writes_ready_file_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inv.json");
    std::fs::write(&inv, INVENTORY).unwrap();
    let ready = dir.path().join("ready.json");
    let log = dir.path().join("calls.log");
    let _child = Kill(
        Command::new(env!("CARGO_BIN_EXE_fake-vcenter"))
            .arg("--inventory")
            .arg(&inv)
            .args(["--listen", "127.0.0.1:0", "--ready-file"])
            .arg(&ready)
            .arg("--call-log")
            .arg(&log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while !ready.exists() {
        assert!(t0.elapsed() < Duration::from_secs(20), "no ready file");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = std::fs::read_to_string(&ready).unwrap();
    assert_eq!(line.lines().count(), 1);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let port = v["port"].as_u64().unwrap();
    let thumbprint = v["thumbprint"].as_str().unwrap();
    let pem_path = std::path::Path::new(v["cert_pem_path"].as_str().unwrap());
    assert_eq!(
        pem_path.parent().unwrap(),
        std::fs::canonicalize(dir.path()).unwrap()
    );
    assert!(
        std::fs::read_to_string(pem_path)
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert_eq!(
        ferry_vsphere::normalize_thumbprint(thumbprint).unwrap(),
        thumbprint
    );

    let tls = TlsPolicy {
        thumbprint: Some(thumbprint.into()),
        ..Default::default()
    };
    let o = ClientOptions::default();
    let c = Client::login_with_options(&format!("localhost:{port}"), "admin", "pw", &tls, o)
        .await
        .unwrap();
    let vm = c
        .find_vm("4212bbbb-0000-0000-0000-000000000001")
        .await
        .unwrap();
    let d = c.find_disk(&vm, "[ds1] vm1/vm1.vmdk").await.unwrap();
    let s = c.snapshot_disk(&vm, "snapshot-7", &d).await.unwrap();
    assert_eq!(s.file_name, "[ds1] vm1/vm1-000001.vmdk");
    c.logout().await;

    let calls = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(lines[0], "RetrieveServiceContent");
    assert_eq!(lines[1], "Login user=admin");
    assert!(
        lines.contains(
            &"FindByUuid uuid=4212bbbb-0000-0000-0000-000000000001 instance=true dc=datacenter-1"
        ),
        "{calls}"
    );
    assert!(
        lines.iter().filter(|l| l.starts_with("Login ")).count() >= 2,
        "ttl 2 forces re-login: {calls}"
    );
    // Logout is not retried after expiry: the session is gone either way.
    assert!(lines.last().unwrap().starts_with("Logout"), "{calls}");
}

#[test]
fn bad_usage_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_fake-vcenter"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}
