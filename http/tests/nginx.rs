//! ferry-http against nginx, an independent HTTP server: whole and ranged GETs over plain
//! HTTP and HTTPS (thumbprint pinned, CA directory), through tinyproxy for both (an
//! absolute-form request for http://, a CONNECT tunnel for https://), and the body cap.

#[path = "../../vsphere/tests/support/proxy_peers.rs"]
mod proxy_peers;

use std::process::Command;

use ferry_http::{
    Client, ClientOptions, Endpoint, Error, ProxyConfig, Scheme, StatusCode, TlsPolicy,
};
use proxy_peers::*;

/// 1 MiB + 17 bytes of a pattern no two offsets of which are alike within 251 bytes.
fn content() -> Vec<u8> {
    (0..(1 << 20) + 17).map(|i: u32| (i % 251) as u8).collect()
}

struct Site {
    _dir: tempfile::TempDir,
    _nginx: Peer,
    http: u16,
    https: u16,
    thumbprint: String,
    ca_dir: std::path::PathBuf,
    data: Vec<u8>,
    dir: std::path::PathBuf,
}

fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir(&root).unwrap();
    let data = content();
    std::fs::write(root.join("disk.raw"), &data).unwrap();
    let (ca, cert, key) = ca_and_server_cert(dir.path());
    let ca_dir = dir.path().join("cas");
    std::fs::create_dir(&ca_dir).unwrap();
    std::fs::copy(&ca, ca_dir.join("ca.crt")).unwrap();
    let der = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&cert)
        .output()
        .unwrap()
        .stdout;
    let thumbprint = ferry_http::thumbprint_of(&der);
    let (nginx, http, https) = nginx(dir.path(), &root, &cert, &key, "");
    Site {
        dir: dir.path().to_path_buf(),
        _dir: dir,
        _nginx: nginx,
        http,
        https,
        thumbprint,
        ca_dir,
        data,
    }
}

fn client(url: &str, tls: &TlsPolicy, opts: ClientOptions) -> Client {
    let (ep, _) = Endpoint::parse(url, Scheme::Https).unwrap();
    Client::new(ep, tls, opts).unwrap()
}

fn pinned(tp: &str) -> TlsPolicy {
    TlsPolicy {
        thumbprint: Some(tp.to_string()),
        ..Default::default()
    }
}

async fn check_gets(c: &Client, data: &[u8], what: &str) {
    let r = c.get("GET", "/disk.raw", None).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "[{what}]");
    assert_eq!(r.body.as_ref(), data, "[{what}] whole body");
    // Ranges inside, at the end, and a single byte; the same connection is kept.
    let n = data.len() as u64;
    for range in [4096..70_000, n - 17..n, 251..252] {
        let r = c
            .get("GET", "/disk.raw", Some(range.clone()))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "[{what}] {range:?}");
        let want = &data[range.start as usize..range.end as usize];
        assert_eq!(r.body.as_ref(), want, "[{what}] {range:?}");
        let cr = r.headers.get("content-range").unwrap().to_str().unwrap();
        assert_eq!(
            cr,
            format!("bytes {}-{}/{n}", range.start, range.end - 1),
            "[{what}]"
        );
    }
    let r = c.get("GET", "/missing", None).await.unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND, "[{what}]");
}

#[tokio::test]
async fn whole_and_ranged_gets_over_http_and_https() {
    let s = site();
    let plain = client(
        &format!("http://127.0.0.1:{}", s.http),
        &TlsPolicy::default(),
        ClientOptions::default(),
    );
    check_gets(&plain, &s.data, "http").await;
    let url = format!("https://127.0.0.1:{}", s.https);
    check_gets(
        &client(&url, &pinned(&s.thumbprint), ClientOptions::default()),
        &s.data,
        "https pinned",
    )
    .await;
    let by_ca = TlsPolicy {
        ca_dir: Some(s.ca_dir.clone()),
        ..Default::default()
    };
    check_gets(
        &client(&url, &by_ca, ClientOptions::default()),
        &s.data,
        "https CA",
    )
    .await;
    // Another thumbprint is refused by kind.
    let other = "11:22:33:44:55:66:77:88:99:00:AA:BB:CC:DD:EE:FF:11:22:33:44";
    let err = client(&url, &pinned(other), ClientOptions::default())
        .get("GET", "/disk.raw", None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
}

#[tokio::test]
async fn bodies_over_the_cap_are_refused() {
    let s = site();
    let opts = ClientOptions {
        max_body_bytes: 4096,
        ..Default::default()
    };
    let c = client(
        &format!("http://127.0.0.1:{}", s.http),
        &TlsPolicy::default(),
        opts,
    );
    let err = c.get("GET", "/disk.raw", None).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                declared: Some(_),
                limit: 4096,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("exceeds the 4096-byte limit"),
        "{err}"
    );
    // A range within the cap is fine.
    let r = c.get("GET", "/disk.raw", Some(0..4096)).await.unwrap();
    assert_eq!(r.body.len(), 4096);
}

#[tokio::test]
async fn gets_through_tinyproxy() {
    let s = site();
    let pdir = s.dir.join("tinyproxy");
    std::fs::create_dir(&pdir).unwrap();
    let (_proxy, port) = tinyproxy(&pdir, "");
    let (host, ip) = machine_host();
    // nginx listens on 127.0.0.1 only; the proxy reaches it by the machine's name.
    assert!(
        ip.is_loopback(),
        "{host} resolves to {ip}: this test needs a loopback address"
    );
    let proxy = ProxyConfig {
        http_proxy: Some(format!("http://127.0.0.1:{port}")),
        https_proxy: Some(format!("http://127.0.0.1:{port}")),
        no_proxy: None,
    };
    let opts = ClientOptions {
        proxy,
        ..Default::default()
    };
    // The machine's name, not a loopback literal: those are never proxied.
    let plain = client(
        &format!("http://{host}:{}", s.http),
        &TlsPolicy::default(),
        opts.clone(),
    );
    check_gets(&plain, &s.data, "http via proxy").await;
    let tls = client(
        &format!("https://{host}:{}", s.https),
        &pinned(&s.thumbprint),
        opts,
    );
    check_gets(&tls, &s.data, "https via proxy").await;
    let log = std::fs::read_to_string(pdir.join("tinyproxy.log")).unwrap_or_default();
    assert!(
        log.contains(&format!("GET http://{host}:{}/disk.raw", s.http)),
        "{log}"
    );
    assert!(
        log.contains(&format!("CONNECT {host}:{}", s.https)),
        "{log}"
    );
}
