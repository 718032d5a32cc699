//! ferry-vsphere against independent peers: tinyproxy as the `CONNECT` proxy, socat's
//! OpenSSL listener in front of it as an `https://` proxy, and `openssl s_server` holding
//! the weak certificate keys old ESXi hosts still have.
//!
//! The proxied endpoint is the machine's own host name: Go (and so CDI and Ferry) never
//! proxies `localhost` or a loopback address literal, but a name is proxied whatever it
//! resolves to.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use support::proxy_peers::*;

use fake_vcenter::{FakeVcenter, Inventory, Options};
use ferry_vsphere::tls::{KeyKind, describe_key};
use ferry_vsphere::{Client, ClientOptions, Error, ProxyConfig, TlsPolicy};

fn inventory() -> Inventory {
    serde_json::from_value(serde_json::json!({
        "user": "administrator@vsphere.local",
        "password": "pw",
        "datacenters": [{"name": "dc1", "vms": [
            {"moref": "vm-1", "name": "vm1",
             "instance_uuid": "5012aaaa-0000-0000-0000-000000000001",
             "bios_uuid": "4212bbbb-0000-0000-0000-000000000001",
             "disks": [{"key": 2000, "file_name": "[ds1] vm1/vm1.vmdk", "capacity_bytes": 1048576}]}
        ]}]
    }))
    .unwrap()
}

fn proxies(https_proxy: &str, no_proxy: &str) -> ClientOptions {
    ClientOptions {
        proxy: ProxyConfig {
            http_proxy: None,
            https_proxy: Some(https_proxy.to_string()),
            no_proxy: (!no_proxy.is_empty()).then(|| no_proxy.to_string()),
        },
        ..Default::default()
    }
}

/// The fake vCenter on the address the host name resolves to, and `name:port`.
async fn vcenter() -> (FakeVcenter, String) {
    let (name, ip) = machine_host();
    let opts = Options {
        quiet: true,
        ..Default::default()
    };
    let listen = std::net::SocketAddr::new(ip, 0).to_string();
    let fake = FakeVcenter::start(inventory(), &listen, opts)
        .await
        .unwrap();
    let endpoint = format!("{name}:{}", fake.port());
    (fake, endpoint)
}

fn pinned(fake: &FakeVcenter) -> TlsPolicy {
    TlsPolicy {
        thumbprint: Some(fake.thumbprint().to_string()),
        ..Default::default()
    }
}

async fn login(endpoint: &str, tls: &TlsPolicy, o: ClientOptions) -> Result<Client, Error> {
    let inv = inventory();
    Client::login_with_options(endpoint, &inv.user, &inv.password, tls, o).await
}

#[tokio::test]
async fn http_proxy_tinyproxy_tunnels_and_checks_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, endpoint) = vcenter().await;
    let (_proxy, port) = tinyproxy(dir.path(), "BasicAuth ferry s3cret");
    // Percent-encoded credentials, as in a URL; tinyproxy compares the decoded ones.
    let c = login(
        &endpoint,
        &pinned(&fake),
        proxies(&format!("http://f%65rry:s3cr%65t@127.0.0.1:{port}"), ""),
    )
    .await
    .unwrap();
    let vm = c.find_vm("5012aaaa-0000-0000-0000-000000000001").await;
    c.logout().await;
    assert_eq!(vm.unwrap().moref, "vm-1");
    let seen = connects_logged(dir.path());
    assert!(
        seen.iter().any(|l| l.contains(&endpoint)),
        "tinyproxy saw no CONNECT {endpoint}: {seen:#?}"
    );
    // Without credentials tinyproxy answers 407, and the error says so.
    let err = login(
        &endpoint,
        &pinned(&fake),
        proxies(&format!("127.0.0.1:{port}"), ""),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("407"), "{err}");
    assert!(
        err.to_string().contains(&format!("proxy 127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test]
async fn no_proxy_and_loopback_bypass_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, endpoint) = vcenter().await;
    let (name, _) = machine_host();
    // A proxy that refuses everything: only a bypass can log in.
    let (_proxy, port) = tinyproxy(dir.path(), "ConnectPort 1");
    let https_proxy = format!("http://127.0.0.1:{port}");
    let err = login(&endpoint, &pinned(&fake), proxies(&https_proxy, ""))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CONNECT"), "{err}");
    for no_proxy in [name.clone(), format!("{name}:{}", fake.port()), "*".into()] {
        let c = login(&endpoint, &pinned(&fake), proxies(&https_proxy, &no_proxy))
            .await
            .unwrap_or_else(|e| panic!("no_proxy={no_proxy}: {e}"));
        c.logout().await;
    }
    // A no_proxy entry for another port does not bypass.
    let err = login(
        &endpoint,
        &pinned(&fake),
        proxies(&https_proxy, &format!("{name}:1")),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("CONNECT"), "{err}");
    // A loopback literal is never proxied (the fake listens where the name resolves).
    let (_, ip) = machine_host();
    if ip.is_loopback() {
        let c = login(&fake.endpoint(), &pinned(&fake), proxies(&https_proxy, ""))
            .await
            .unwrap();
        c.logout().await;
    }
    let before = connects_logged(dir.path()).len();
    assert_eq!(before, 2, "{:#?}", connects_logged(dir.path()));
}

#[tokio::test]
async fn https_proxy_is_verified_with_the_proxy_ca_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, endpoint) = vcenter().await;
    let (_proxy, upstream) = tinyproxy(dir.path(), "");
    let (ca, cert, key) = ca_and_server_cert(dir.path());
    let (_tls, port) = socat_tls(dir.path(), &cert, &key, upstream);
    let cas = dir.path().join("proxycerts");
    std::fs::create_dir(&cas).unwrap();
    std::fs::copy(&ca, cas.join("ca.crt")).unwrap();
    let mut o = proxies(&format!("https://127.0.0.1:{port}"), "");
    o.proxy_ca_dirs = vec![dir.path().join("missing"), cas.clone()];
    let c = login(&endpoint, &pinned(&fake), o).await.unwrap();
    c.logout().await;
    assert!(
        connects_logged(dir.path())
            .iter()
            .any(|l| l.contains(&endpoint)),
        "{:#?}",
        connects_logged(dir.path())
    );
    // Without the proxy's CA, the proxy's certificate is refused, naming the proxy.
    let err = login(
        &endpoint,
        &pinned(&fake),
        proxies(&format!("https://127.0.0.1:{port}"), ""),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(msg.contains(&format!("proxy 127.0.0.1:{port}")), "{msg}");
    assert!(msg.contains("TLS to the proxy"), "{msg}");
}

/// `openssl s_server` with a certificate made by `keygen` (openssl req arguments).
fn s_server(dir: &Path, keygen: &[&str]) -> (Peer, u16, String) {
    let mut args = vec![
        "req", "-x509", "-nodes", "-keyout", "esx.key", "-out", "esx.crt",
    ];
    args.extend_from_slice(keygen);
    args.extend_from_slice(&["-subj", "/CN=esx.example", "-days", "2"]);
    openssl(dir, &args);
    let fp = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha1", "-in", "esx.crt"])
        .current_dir(dir)
        .output()
        .unwrap();
    let fp = String::from_utf8(fp.stdout).unwrap();
    let thumbprint = fp.trim().rsplit('=').next().unwrap().to_string();
    let port = free_port();
    let mut child = Command::new("openssl")
        .args([
            "s_server", "-quiet", "-www", "-cert", "esx.crt", "-key", "esx.key",
        ])
        .args(["-cipher", "DEFAULT:@SECLEVEL=0", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("s_server.stderr")).unwrap())
        .spawn()
        .expect("start openssl s_server");
    wait_for_port(port, &mut child, "openssl s_server");
    (Peer(child), port, thumbprint)
}

/// Log in to `openssl s_server` holding a certificate made by `keygen`, its thumbprint
/// pinned: the key as read from the certificate, and the TLS error's message.
async fn refused_key(keygen: &[&str]) -> (KeyKind, String) {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port, thumbprint) = s_server(dir.path(), keygen);
    let key = describe_key(&pem_to_der(&dir.path().join("esx.crt"))).expect("key read");
    let tls = TlsPolicy {
        thumbprint: Some(thumbprint),
        ..Default::default()
    };
    let err = login(&format!("127.0.0.1:{port}"), &tls, ClientOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    assert!(!key.supported(), "{key}");
    (key, err.to_string())
}

#[tokio::test]
async fn a_1024_bit_rsa_certificate_is_named_not_called_a_bad_signature() {
    let (key, msg) = refused_key(&["-newkey", "rsa:1024"]).await;
    assert_eq!(key, KeyKind::Rsa { bits: 1024 });
    assert!(msg.contains("RSA 1024-bit key"), "{msg}");
    assert!(msg.contains("2048 to 8192"), "{msg}");
    assert!(!msg.contains("BadSignature"), "{msg}");
}

#[tokio::test]
async fn a_p521_certificate_gets_the_key_hint() {
    let (key, msg) =
        refused_key(&["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp521r1"]).await;
    let p521 = KeyKind::Ec {
        curve: "P-521".into(),
    };
    assert_eq!(key, p521);
    assert!(msg.contains("ECDSA P-256 or P-384"), "{msg}");
}

#[test]
fn supported_keys_made_by_openssl_are_read() {
    let dir = tempfile::tempdir().unwrap();
    for (args, want) in [
        (vec!["-newkey", "rsa:3072"], KeyKind::Rsa { bits: 3072 }),
        (
            vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
            KeyKind::Ec {
                curve: "P-256".into(),
            },
        ),
        (
            vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp384r1"],
            KeyKind::Ec {
                curve: "P-384".into(),
            },
        ),
        (vec!["-newkey", "ed25519"], KeyKind::Ed25519),
    ] {
        let mut a = vec![
            "req", "-x509", "-nodes", "-keyout", "k.pem", "-out", "c.pem",
        ];
        a.extend_from_slice(&args);
        a.extend_from_slice(&["-subj", "/CN=x", "-days", "1"]);
        openssl(dir.path(), &a);
        let got = describe_key(&pem_to_der(&dir.path().join("c.pem")));
        assert_eq!(got.as_ref(), Some(&want), "{args:?}");
        assert!(want.supported(), "{want}");
    }
    // Truncations of a real certificate never panic and never claim a key.
    let der = pem_to_der(&dir.path().join("c.pem"));
    for n in 0..der.len() {
        let _ = describe_key(&der[..n]);
    }
}

fn pem_to_der(p: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(p)
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}
